/* attention.h -- causal softmax attention of query rows over a sequence's KV.
 *
 * The kernel reads K/V only through kv_cache_span(), so the storage behind
 * it (per-sequence blocks today, a paged shared pool later) can change
 * without touching this module. Later attention kinds (window, rerope,
 * linear) get their own entry points here. */
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

/* Floats of scratch one call needs for n_q query rows over n_keys keys. */
static inline size_t attention_scratch_floats(int32_t n_q, int32_t n_keys) {
    return (size_t)n_q * (size_t)n_keys;
}

/* Head `head` of n_q consecutive queries at positions pos0 .. pos0+n_q-1 of
 * sequence seq: query t attends to keys 0 .. pos0+t of layer `layer` (which
 * must already hold those positions). q points at the head's first element of
 * query 0, rows q_stride floats apart; the head's output (head_dim floats) is
 * written at out + t * out_stride. n_q <= ATTN_Q_CHUNK; scratch holds
 * attention_scratch_floats(n_q, pos0 + n_q) floats. Uses (single-threaded)
 * BLAS; safe to run concurrently for different heads/rows. */
void attention_causal(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                      int32_t head, const float *q, size_t q_stride, int32_t n_q, int32_t pos0,
                      float *out, size_t out_stride, float *scratch);

#endif
