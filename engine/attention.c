/* attention.c -- causal softmax attention with BLAS kernels per KV span. */
#include "attention.h"
#include "vecmath.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Softmax of row[0..lim] in place; row[lim+1 .. n) set to 0 (masked keys). */
static void attn_softmax_row(float *row, int32_t lim, int32_t n) {
    float mx = row[0];
    for (int32_t i = 1; i <= lim; i++)
        if (row[i] > mx) mx = row[i];
    float sum = vec_exp_shift_sum(row, (size_t)lim + 1, mx);
    float inv = 1.0f / sum;
    for (int32_t i = 0; i <= lim; i++) row[i] *= inv;
    for (int32_t i = lim + 1; i < n; i++) row[i] = 0;
}

void attention_causal(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                      int32_t head, const float *q, size_t q_stride, int32_t n_q, int32_t pos0,
                      float *out, size_t out_stride, float *scratch) {
    const int32_t hd = s->head_dim;
    const int32_t kv_dim = s->n_head_kv * hd;
    const int32_t kvh = head / (s->n_head / s->n_head_kv);
    const int32_t n_keys = pos0 + n_q;
    float *S = scratch; /* [n_q][n_keys] scores, then probabilities */
    float *kp, *vp;

    if (n_q == 1) {
        /* Decode: direct kernels per run of keys; BLAS call overhead would
         * dominate these 64 x head_dim products at long contexts. */
        for (int32_t p = 0; p < n_keys;) {
            int32_t len = kv_cache_span(kv, seq, layer, p, &kp, &vp);
            if (len > n_keys - p) len = n_keys - p;
            vec_dot_rows(q, kp + (size_t)kvh * hd, (size_t)kv_dim, (size_t)len, (size_t)hd,
                         s->scale, S + p);
            p += len;
        }
        attn_softmax_row(S, n_keys - 1, n_keys);
        memset(out, 0, (size_t)hd * sizeof(float));
        for (int32_t p = 0; p < n_keys;) {
            int32_t len = kv_cache_span(kv, seq, layer, p, &kp, &vp);
            if (len > n_keys - p) len = n_keys - p;
            vec_axpy_rows(out, vp + (size_t)kvh * hd, (size_t)kv_dim, (size_t)len, (size_t)hd, S + p);
            p += len;
        }
        return;
    }

    /* Several queries: S = scale * Q K^T span by span; query t only needs
     * keys <= pos0 + t, so a span starting at p skips rows t < p - pos0. */
    for (int32_t p = 0; p < n_keys;) {
        int32_t len = kv_cache_span(kv, seq, layer, p, &kp, &vp);
        if (len > n_keys - p) len = n_keys - p;
        int32_t t0 = p > pos0 ? p - pos0 : 0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q - t0, len, hd, s->scale,
                    q + (size_t)t0 * q_stride, (int)q_stride, kp + (size_t)kvh * hd, kv_dim,
                    0.0f, S + (size_t)t0 * n_keys + p, n_keys);
        p += len;
    }
    for (int32_t t = 0; t < n_q; t++) attn_softmax_row(S + (size_t)t * n_keys, pos0 + t, n_keys);
    for (int32_t t = 0; t < n_q; t++) memset(out + (size_t)t * out_stride, 0, (size_t)hd * sizeof(float));
    for (int32_t p = 0; p < n_keys;) {
        int32_t len = kv_cache_span(kv, seq, layer, p, &kp, &vp);
        if (len > n_keys - p) len = n_keys - p;
        int32_t t0 = p > pos0 ? p - pos0 : 0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_q - t0, hd, len, 1.0f,
                    S + (size_t)t0 * n_keys + p, n_keys, vp + (size_t)kvh * hd, kv_dim, 1.0f,
                    out + (size_t)t0 * out_stride, (int)out_stride);
        p += len;
    }
}
