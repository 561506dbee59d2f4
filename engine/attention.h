/* attention.h -- causal softmax attention of query rows over a sequence's KV.
 *
 * The kernel reaches K/V only through the KV cache's span interface
 * (kv_cache_span_get: runs of contiguous rows with their element type, f32
 * read in place, f16 / q8_0 / q12_0 converted a run at a time into
 * scratch), and it honours the sequence's KV policy: under KV_POLICY_WINDOW
 * query i sees key j only when j < sinks or i - j < window (the positions
 * the cache keeps).
 * Later attention kinds (rerope, linear, ...) get their own entry points here
 * on top of the same span interface and attn_key_ranges(). */
#ifndef QKVD_ATTENTION_H
#define QKVD_ATTENTION_H

#include <stddef.h>
#include <stdint.h>
#include "kv_cache.h"

typedef struct attn_shape {
    int32_t n_head, n_head_kv, head_dim;
    float scale;   /* usually 1/sqrt(head_dim) */
} attn_shape;

/* Query rows for causal attention: rows per call (bounds the scratch). */
#define ATTN_Q_CHUNK 32

/* Floats of scratch one call needs for n_q query rows over n_keys keys
 * (f32 caches). */
static inline size_t attention_scratch_floats(int32_t n_q, int32_t n_keys) {
    return (size_t)n_q * (size_t)n_keys;
}

/* Floats of scratch for any cache type: scores plus K and V rows of one
 * block converted to floats (block_tokens x head_dim each). */
static inline size_t attention_scratch_floats_kv(int32_t n_q, int32_t n_keys, int32_t head_dim,
                                                 int32_t block_tokens) {
    return (size_t)n_q * (size_t)n_keys + 2 * (size_t)block_tokens * (size_t)head_dim;
}

/* The key positions a chunk of n_q queries at pos0 .. pos0+n_q-1 may see
 * under policy pol: up to two position ranges [lo, hi), laid out one after
 * the other in the score matrix (range r's keys start at column base[r]);
 * n: columns in all. FULL: [0, pos0+n_q). WINDOW: the sinks [0, min(sinks,
 * end)) and [max(sinks, pos0-window+1), end). */
typedef struct attn_keys {
    int32_t n_rng, n;
    int32_t lo[2], hi[2], base[2];
} attn_keys;
void attn_key_ranges(const kv_policy_cfg *pol, int32_t pos0, int32_t n_q, attn_keys *r);
/* Largest attn_keys.n for a chunk of n_q queries of a sequence of at most
 * n_ctx positions (size the scratch with it). */
static inline int32_t attention_max_keys(int32_t n_ctx, int32_t n_q) { return n_ctx + n_q; }

/* Head `head` of n_q consecutive queries at positions pos0 .. pos0+n_q-1 of
 * sequence seq: query t attends to the keys up to pos0+t of layer `layer`
 * that its policy lets it see (the cache must hold them). q points at the
 * head's first element of query 0, rows q_stride floats apart; the head's
 * output (head_dim floats) is written at out + t * out_stride. n_q <=
 * ATTN_Q_CHUNK; scratch holds attention_scratch_floats_kv(n_q, keys, head_dim,
 * block_tokens) floats, keys = attn_key_ranges(...).n. Uses (single-threaded)
 * BLAS; safe to run concurrently for different heads/rows. */
void attention_causal(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                      int32_t head, const float *q, size_t q_stride, int32_t n_q, int32_t pos0,
                      float *out, size_t out_stride, float *scratch);

/* attention_causal for n_heads query heads head0 .. head0 + n_heads - 1
 * that share one KV head (grouped-query attention): head g's query rows
 * start at q + g * head_dim and its output at out + g * head_dim (same
 * strides). Each block of the KV head's rows is read -- for f16 / q8_0 /
 * q12_0 caches, converted -- once for all of them; every head's result is
 * bit-identical to attention_causal's. scratch holds
 * attention_scratch_floats_kv(n_q * n_heads, keys, head_dim, block_tokens)
 * floats. */
void attention_causal_group(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                            int32_t head0, int32_t n_heads, const float *q, size_t q_stride, int32_t n_q,
                            int32_t pos0, float *out, size_t out_stride, float *scratch);

#endif
