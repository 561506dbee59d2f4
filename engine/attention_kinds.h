/* attention_kinds.h -- attention of query rows under a kind (attn_kind.h):
 * the kernels behind window, logn, hwfa, rerope and leaky-rerope, and the
 * dispatch that sends plain softmax to attention_causal (attention.h).
 * Linear attention has no KV and lives in linear_attention.h.
 *
 * Keys are read only through kv_cache_span_get() (any element type: f32
 * rows in place, f16 / q8_0 rows converted a block at a time into scratch)
 * and only at the positions the kind attends (window kinds never touch
 * positions outside sinks + window, so a cache may drop them). */
#ifndef QKVD_ATTENTION_KINDS_H
#define QKVD_ATTENTION_KINDS_H

#include <stddef.h>
#include <stdint.h>
#include "attention.h"
#include "attn_kind.h"

/* What the kernels need to know about the model's RoPE (rerope kinds rotate
 * queries themselves; logn needs the trained length). */
typedef struct attn_model_info {
    int32_t n_layer, n_ctx_train, n_rot;
    int neox;                  /* rotate (i, i + n_rot/2) instead of (2i, 2i+1) */
    float rope_base;
    const float *freq_div;     /* rope_freqs.weight or NULL */
    rope_params rope;          /* the model's own scaling (used when !p->rope_set) */
} attn_model_info;

/* Per-sequence attention state the engine keeps and the forward pass
 * reads: the kind and, for linear attention, the recurrent state (which
 * replaces the KV cache: [n_layer][n_head_kv][linear_state_floats]). */
typedef struct attn_seq_state {
    attn_params p;
    float *lin_state;   /* owned by the engine; NULL unless p.kind is linear */
    int32_t lin_len;    /* tokens fed into lin_state */
    /* hwfa: the last layer's K and V of every position, [hw_cap][2][kv_dim]
     * (f32, owned by the engine): the paged cache keeps only the window of
     * every layer, so memory is (n_layer - 1) windows + one full layer. */
    float *hw_kv;
    int32_t hw_cap;
} attn_seq_state;

/* Largest n_rot the rerope kernels rotate (stack buffers). */
#define ATTN_MAX_ROT 1024

/* 1 when kind p runs dynamic-ntk exactly: full attention (softmax or logn)
 * under dynamic-ntk scaling (p's, or the model's when p does not set one).
 * Its keys are then cached UNROTATED and every query re-rotates against
 * them with the base of its own position (the rerope kernel with an
 * unbounded window): rotating keys once at write time would mix bases. */
int attn_dynamic_exact(const attn_params *p, const rope_params *model_rope);

/* Floats of scratch attention_kind_rows needs for n_q rows over n_keys keys. */
size_t attention_kind_scratch_floats(int32_t n_q, int32_t n_keys, int32_t head_dim);

/* The log-n query factor max(1, ln(pos + 1) / ln(n_ctx_train)). */
float attention_logn_factor(int32_t pos, int32_t n_ctx_train);

/* 1 when attention_kind_rows runs kind p in layer `layer` as plain causal
 * softmax (attention_causal): callers may then use attention_causal_group. */
int attention_kind_plain(const attn_params *p, const attn_model_info *mi, int32_t layer);

/* Like attention_causal (same arguments and layout), under kind p in layer
 * `layer`. For rerope kinds q must be UNROTATED and the cache must hold
 * unrotated keys; for the others q and keys are rotated as usual. p->kind
 * must not be linear. scratch: attention_kind_scratch_floats(n_q, pos0+n_q,
 * head_dim) floats. Safe to run concurrently for different heads/rows. */
void attention_kind_rows(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                         const attn_model_info *mi, const attn_params *p, int32_t head,
                         const float *q, size_t q_stride, int32_t n_q, int32_t pos0, float *out,
                         size_t out_stride, float *scratch);

/* Causal softmax attention of n_q query rows over contiguous K/V rows:
 * key p at kv + p * row_stride, its value at kv + p * row_stride + v_off
 * (head offsets are added here). Same layout of q/out/scratch as
 * attention_kind_rows; logn: log-length scaling against n_ctx_train. */
void attention_contig_rows(const float *kv, size_t row_stride, size_t v_off, const attn_shape *s, int logn,
                           int32_t n_ctx_train, int32_t head, const float *q, size_t q_stride, int32_t n_q,
                           int32_t pos0, float *out, size_t out_stride, float *scratch);

#endif
