/* linear_attention.c -- recurrent and chunked-parallel linear attention
 * (see linear_attention.h). */
#include "linear_attention.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

size_t linear_state_floats(int32_t head_dim) {
    return (size_t)head_dim * (size_t)head_dim + (size_t)head_dim;
}

size_t linear_scratch_floats(int32_t head_dim) {
    /* phi(K) and V-less phi(Q) chunks, the C x C score block, denominators. */
    return 2 * (size_t)LINEAR_CHUNK * (size_t)head_dim + (size_t)LINEAR_CHUNK * LINEAR_CHUNK +
           (size_t)LINEAR_CHUNK + (size_t)head_dim;
}

/* phi(x) = elu(x) + 1 = x + 1 (x > 0) or exp(x) (x <= 0): always > 0. */
static void linear_phi(float *dst, const float *src, int32_t n, float scale) {
    for (int32_t i = 0; i < n; i++) {
        float x = src[i] * scale;
        dst[i] = x > 0 ? x + 1.0f : expf(x);
    }
}

static void linear_recurrent(float *state, int32_t hd, int32_t group, const float *q, size_t q_stride,
                             const float *k, const float *v, size_t kv_stride, int32_t n, float scale,
                             float *out, size_t out_stride, float *scratch) {
    float *S = state, *z = state + (size_t)hd * hd;
    float *fk = scratch, *fq = scratch + hd;
    for (int32_t t = 0; t < n; t++) {
        const float *kt = k + (size_t)t * kv_stride, *vt = v + (size_t)t * kv_stride;
        linear_phi(fk, kt, hd, 1.0f);
        for (int32_t a = 0; a < hd; a++) {
            float *Sa = S + (size_t)a * hd;
            for (int32_t b = 0; b < hd; b++) Sa[b] += fk[a] * vt[b];
            z[a] += fk[a];
        }
        for (int32_t g = 0; g < group; g++) {
            linear_phi(fq, q + (size_t)t * q_stride + (size_t)g * hd, hd, scale);
            float *o = out + (size_t)t * out_stride + (size_t)g * hd;
            double den = 0;
            for (int32_t a = 0; a < hd; a++) den += (double)fq[a] * z[a];
            memset(o, 0, (size_t)hd * sizeof(float));
            for (int32_t a = 0; a < hd; a++) {
                const float *Sa = S + (size_t)a * hd;
                for (int32_t b = 0; b < hd; b++) o[b] += fq[a] * Sa[b];
            }
            float inv = (float)(1.0 / den);
            for (int32_t b = 0; b < hd; b++) o[b] *= inv;
        }
    }
}

static void linear_chunked(float *state, int32_t hd, int32_t group, const float *q, size_t q_stride,
                           const float *k, const float *v, size_t kv_stride, int32_t n, float scale,
                           float *out, size_t out_stride, float *scratch) {
    float *S = state, *z = state + (size_t)hd * hd;
    float *FK = scratch;                                   /* [C][hd] phi(K) */
    float *FQ = FK + (size_t)LINEAR_CHUNK * hd;            /* [C][hd] phi(Q) of one head */
    float *A = FQ + (size_t)LINEAR_CHUNK * hd;             /* [C][C] masked scores */
    float *den = A + (size_t)LINEAR_CHUNK * LINEAR_CHUNK;  /* [C] */
    for (int32_t c0 = 0; c0 < n; c0 += LINEAR_CHUNK) {
        int32_t C = n - c0 < LINEAR_CHUNK ? n - c0 : LINEAR_CHUNK;
        for (int32_t t = 0; t < C; t++) linear_phi(FK + (size_t)t * hd, k + (size_t)(c0 + t) * kv_stride, hd, 1.0f);
        const float *V = v + (size_t)c0 * kv_stride;
        for (int32_t g = 0; g < group; g++) {
            for (int32_t t = 0; t < C; t++)
                linear_phi(FQ + (size_t)t * hd, q + (size_t)(c0 + t) * q_stride + (size_t)g * hd, hd, scale);
            float *O = out + (size_t)c0 * out_stride + (size_t)g * hd;
            /* A = FQ FK^T, causal (j <= t). */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, C, C, hd, 1.0f, FQ, hd, FK, hd, 0.0f, A,
                        LINEAR_CHUNK);
            for (int32_t t = 0; t < C; t++) {
                float *row = A + (size_t)t * LINEAR_CHUNK;
                double d = 0;
                for (int32_t j = t + 1; j < C; j++) row[j] = 0;
                for (int32_t j = 0; j <= t; j++) d += row[j];
                const float *fq = FQ + (size_t)t * hd;
                for (int32_t a = 0; a < hd; a++) d += (double)fq[a] * z[a];
                den[t] = (float)d;
            }
            /* O = FQ S (earlier chunks) + A V (this chunk). */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, hd, hd, 1.0f, FQ, hd, S, hd, 0.0f, O,
                        (int)out_stride);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, C, hd, C, 1.0f, A, LINEAR_CHUNK, V,
                        (int)kv_stride, 1.0f, O, (int)out_stride);
            for (int32_t t = 0; t < C; t++) {
                float inv = 1.0f / den[t], *o = O + (size_t)t * out_stride;
                for (int32_t b = 0; b < hd; b++) o[b] *= inv;
            }
        }
        /* S += FK^T V, z += column sums of FK. */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, hd, C, 1.0f, FK, hd, V, (int)kv_stride, 1.0f,
                    S, hd);
        for (int32_t t = 0; t < C; t++)
            for (int32_t a = 0; a < hd; a++) z[a] += FK[(size_t)t * hd + a];
    }
}

void linear_attention_run(float *state, int32_t head_dim, int32_t group, const float *q, size_t q_stride,
                          const float *k, const float *v, size_t kv_stride, int32_t n, float scale,
                          float *out, size_t out_stride, int parallel, float *scratch) {
    if (n <= 0) return;
    if (parallel)
        linear_chunked(state, head_dim, group, q, q_stride, k, v, kv_stride, n, scale, out, out_stride, scratch);
    else
        linear_recurrent(state, head_dim, group, q, q_stride, k, v, kv_stride, n, scale, out, out_stride,
                         scratch);
}
