/* attn_kind.h -- the switchable attention kinds and their parameters
 * (IDEAS.md section 1; docs/attention.md):
 *
 *   softmax       exact causal attention over every earlier key (default)
 *   window        keys j with i - j < window, plus the first `sinks` keys
 *   rerope        RoPE relative position clipped at `window`: min(i - j, w)
 *   leaky-rerope  i - j below w, w + (i - j - w) / leak beyond
 *   logn          softmax with queries scaled by max(1, ln(i + 1) / ln(L_train))
 *                 (L_train: rope.orig_ctx when set, else the model's context_length)
 *   hwfa          `window` attention in every layer but the last, which is full
 *   linear        phi(q)^T S / phi(q)^T z, phi = elu + 1: a constant-size
 *                 state per head instead of a KV cache
 *
 * `logn` is also a flag every other kind can carry, and RoPE scaling
 * (rope.h) combines with every kind. A kind also says what it needs from
 * the KV cache (attn_kv_need). Values here are plain data: the engine keeps
 * one attn_params per sequence. */
#ifndef QKVD_ATTN_KIND_H
#define QKVD_ATTN_KIND_H

#include <stddef.h>
#include <stdint.h>
#include "rope.h"

enum attn_kind {
    ATTN_SOFTMAX = 0,
    ATTN_WINDOW = 1,
    ATTN_REROPE = 2,
    ATTN_LEAKY_REROPE = 3,
    ATTN_LOGN = 4,
    ATTN_HWFA = 5,
    ATTN_LINEAR = 6
};
#define ATTN_KIND_COUNT 7

/* What a kind needs from the KV cache. */
enum attn_kv_need {
    ATTN_KV_FULL = 0,      /* every position, keys rotated */
    ATTN_KV_WINDOW = 1,    /* the first `sinks` and the last `window` positions */
    ATTN_KV_UNROTATED = 2, /* every position, keys stored before RoPE */
    ATTN_KV_NONE = 3       /* nothing: a recurrent state per head instead */
};

typedef struct attn_params {
    enum attn_kind kind;
    int32_t window;    /* W (window, hwfa) or w (rerope, leaky-rerope) */
    int32_t sinks;     /* S: first positions always attended (window, hwfa) */
    float leak;        /* k > 1 (leaky-rerope) */
    int logn;          /* 1: log-length query scaling (kind logn sets it) */
    int rope_set;      /* 0: the model's own RoPE scaling; 1: `rope` below */
    rope_params rope;
} attn_params;

#define ATTN_DEFAULT_WINDOW 256
#define ATTN_DEFAULT_SINKS 4
#define ATTN_DEFAULT_LEAK 16.0f

/* softmax, window 256, sinks 4, leak 16, model RoPE. */
void attn_params_default(attn_params *p);

/* "softmax", "window", "rerope", "leaky-rerope", "logn", "hwfa", "linear":
 * 0 or -1 when unknown. */
int attn_kind_parse(const char *name, enum attn_kind *out);
const char *attn_kind_name(enum attn_kind k); /* "softmax" for out-of-range values */

/* Check ranges. 0, or -1 with err naming the bad parameter ("window",
 * "sinks", "leak", "rope_factor", ...) in `param` (a static string) and a
 * sentence in err. */
int attn_params_validate(const attn_params *p, const char **param, char *err, size_t errlen);

/* What the kind needs from the KV cache. */
enum attn_kv_need attn_kv_need_of(const attn_params *p);

/* KV positions a sequence of `len` tokens keeps in `layer` of n_layer under
 * this kind (len for full kinds, min(len, sinks + window) for window
 * layers, 0 for linear): the bound docs/attention.md measures. */
int64_t attn_kv_positions(const attn_params *p, int32_t layer, int32_t n_layer, int64_t len);

/* 1 if layer `layer` of n_layer attends through a window under p. */
int attn_layer_windowed(const attn_params *p, int32_t layer, int32_t n_layer);

#endif
