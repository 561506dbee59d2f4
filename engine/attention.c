/* attention.c -- causal softmax attention with BLAS kernels per KV span,
 * over any cache element type and the FULL / WINDOW policies. */
#include "attention.h"
#include "vecmath.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void attn_key_ranges(const kv_policy_cfg *pol, int32_t pos0, int32_t n_q, attn_keys *r) {
    int32_t end = pos0 + n_q;
    r->n_rng = 0;
    r->n = 0;
    if (pol->kind != KV_POLICY_WINDOW) {
        r->lo[0] = 0;
        r->hi[0] = end;
        r->base[0] = 0;
        r->n_rng = 1;
        r->n = end;
        return;
    }
    int32_t s_hi = pol->sinks < end ? pol->sinks : end;
    if (s_hi > 0) {
        r->lo[r->n_rng] = 0;
        r->hi[r->n_rng] = s_hi;
        r->base[r->n_rng++] = 0;
        r->n = s_hi;
    }
    int32_t w_lo = pos0 - pol->window + 1;
    if (w_lo < pol->sinks) w_lo = pol->sinks;
    if (w_lo < end) {
        r->lo[r->n_rng] = w_lo;
        r->hi[r->n_rng] = end;
        r->base[r->n_rng++] = r->n;
        r->n += end - w_lo;
    }
}

/* Softmax of one score row over the columns query position i may see;
 * every other column of the row becomes 0. */
static void attn_softmax_row(float *row, const attn_keys *r, const kv_policy_cfg *pol, int32_t i) {
    int32_t a[2], b[2], n = 0; /* visible column intervals [a, b) */
    for (int32_t k = 0; k < r->n_rng; k++) {
        int32_t lo = r->lo[k], hi = r->hi[k] < i + 1 ? r->hi[k] : i + 1;
        if (pol->kind == KV_POLICY_WINDOW && lo >= pol->sinks && lo < i - pol->window + 1) lo = i - pol->window + 1;
        if (hi <= lo) continue;
        a[n] = r->base[k] + lo - r->lo[k];
        b[n++] = r->base[k] + hi - r->lo[k];
    }
    float mx = -INFINITY;
    for (int32_t k = 0; k < n; k++) {
        float m = vec_max(row + a[k], (size_t)(b[k] - a[k]));
        if (m > mx) mx = m;
    }
    float sum = 0;
    for (int32_t k = 0; k < n; k++) sum += vec_exp_shift_sum(row + a[k], (size_t)(b[k] - a[k]), mx);
    float inv = sum > 0 ? 1.0f / sum : 0.0f;
    int32_t c = 0;
    for (int32_t k = 0; k < n; k++) {
        for (; c < a[k]; c++) row[c] = 0;
        vec_scale(row + a[k], (size_t)(b[k] - a[k]), inv);
        c = b[k];
    }
    for (; c < r->n; c++) row[c] = 0;
}

/* Rows of head kvh for a span: f32 in place, other types converted into
 * buf. Returns the first row; *ld its stride in floats. */
static const float *attn_rows(const kv_span *sp, const uint8_t *rows, int32_t n, int32_t kvh, int32_t hd,
                              float *buf, int *ld) {
    if (sp->type == KV_F32) {
        *ld = (int)(sp->stride / sizeof(float));
        return (const float *)rows + (size_t)kvh * hd;
    }
    kv_span_rows_f32(sp, rows, n, kvh * hd, hd, buf);
    *ld = hd;
    return buf;
}

void attention_causal_group(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                            int32_t head0, int32_t n_heads, const float *q, size_t q_stride, int32_t n_q,
                            int32_t pos0, float *out, size_t out_stride, float *scratch) {
    const int32_t hd = s->head_dim;
    const int32_t kvh = head0 / (s->n_head / s->n_head_kv);
    const kv_policy_cfg pol = kv_cache_seq_policy(kv, seq);
    attn_keys r;
    attn_key_ranges(&pol, pos0, n_q, &r);
    const int32_t n_keys = r.n;
    const size_t per_head = (size_t)n_q * n_keys;
    float *S = scratch; /* [n_heads][n_q][n_keys] scores, then probabilities */
    float *kbuf = scratch + (size_t)n_heads * per_head;
    float *vbuf = kbuf + (size_t)kv_cache_block_tokens(kv) * hd;
    kv_span sp;
    int ld;

    /* Scores, span by span (each span's K rows read, or converted, once for
     * all heads); query t only needs keys <= pos0 + t, so a span starting
     * at p skips rows t < p - pos0. Decode uses direct kernels: BLAS call
     * overhead would dominate these small products. */
    for (int32_t k = 0; k < r.n_rng; k++)
        for (int32_t p = r.lo[k]; p < r.hi[k];) {
            int32_t len = kv_cache_span_get(kv, seq, layer, p, &sp);
            if (len > r.hi[k] - p) len = r.hi[k] - p;
            const float *kr = attn_rows(&sp, sp.k, len, kvh, hd, kbuf, &ld);
            int32_t col = r.base[k] + p - r.lo[k];
            for (int32_t g = 0; g < n_heads; g++) {
                const float *qg = q + (size_t)g * hd;
                float *Sg = S + (size_t)g * per_head;
                if (n_q == 1) {
                    vec_dot_rows(qg, kr, (size_t)ld, (size_t)len, (size_t)hd, s->scale, Sg + col);
                } else {
                    int32_t t0 = p > pos0 ? p - pos0 : 0;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q - t0, len, hd, s->scale,
                                qg + (size_t)t0 * q_stride, (int)q_stride, kr, ld, 0.0f,
                                Sg + (size_t)t0 * n_keys + col, n_keys);
                }
            }
            p += len;
        }
    for (int32_t g = 0; g < n_heads; g++)
        for (int32_t t = 0; t < n_q; t++) {
            attn_softmax_row(S + (size_t)g * per_head + (size_t)t * n_keys, &r, &pol, pos0 + t);
            memset(out + (size_t)g * hd + (size_t)t * out_stride, 0, (size_t)hd * sizeof(float));
        }
    for (int32_t k = 0; k < r.n_rng; k++)
        for (int32_t p = r.lo[k]; p < r.hi[k];) {
            int32_t len = kv_cache_span_get(kv, seq, layer, p, &sp);
            if (len > r.hi[k] - p) len = r.hi[k] - p;
            const float *vr = attn_rows(&sp, sp.v, len, kvh, hd, vbuf, &ld);
            int32_t col = r.base[k] + p - r.lo[k];
            for (int32_t g = 0; g < n_heads; g++) {
                const float *Sg = S + (size_t)g * per_head;
                float *og = out + (size_t)g * hd;
                if (n_q == 1) {
                    vec_axpy_rows(og, vr, (size_t)ld, (size_t)len, (size_t)hd, Sg + col);
                } else {
                    int32_t t0 = p > pos0 ? p - pos0 : 0;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_q - t0, hd, len, 1.0f,
                                Sg + (size_t)t0 * n_keys + col, n_keys, vr, ld, 1.0f,
                                og + (size_t)t0 * out_stride, (int)out_stride);
                }
            }
            p += len;
        }
}

void attention_causal(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                      int32_t head, const float *q, size_t q_stride, int32_t n_q, int32_t pos0,
                      float *out, size_t out_stride, float *scratch) {
    attention_causal_group(kv, seq, layer, s, head, 1, q, q_stride, n_q, pos0, out, out_stride, scratch);
}
