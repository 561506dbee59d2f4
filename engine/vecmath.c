/* vecmath.c -- dispatch between the AVX2 and scalar element-wise kernels. */
#include "vecmath.h"

#include <math.h>
#include <string.h>

static int vec_has_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        cached = 0;
#endif
    }
    return cached;
}

float vec_max(const float *x, size_t n) {
    if (vec_has_avx2()) return vec__max_avx2(x, n);
    float mx = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    return mx;
}

void vec_scale(float *x, size_t n, float s) {
    if (vec_has_avx2()) {
        vec__scale_avx2(x, n, s);
        return;
    }
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

float vec_exp_shift_sum(float *x, size_t n, float mx) {
    if (vec_has_avx2()) return vec__exp_shift_sum_avx2(x, n, mx);
    float s = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        s += x[i];
    }
    return s;
}

void vec_silu_mul(float *g, const float *u, size_t n) {
    if (vec_has_avx2()) {
        vec__silu_mul_avx2(g, u, n);
        return;
    }
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void vec_dot_rows(const float *q, const float *rows, size_t stride, size_t n_rows, size_t n,
                  float scale, float *out) {
    if (vec_has_avx2() && n % 8 == 0) {
        vec__dot_rows_avx2(q, rows, stride, n_rows, n, scale, out);
        return;
    }
    for (size_t i = 0; i < n_rows; i++) {
        const float *r = rows + i * stride;
        float s = 0;
        for (size_t j = 0; j < n; j++) s += q[j] * r[j];
        out[i] = s * scale;
    }
}

void vec_axpy_rows(float *out, const float *rows, size_t stride, size_t n_rows, size_t n,
                   const float *w) {
    if (vec_has_avx2() && n % 8 == 0) {
        vec__axpy_rows_avx2(out, rows, stride, n_rows, n, w);
        return;
    }
    for (size_t i = 0; i < n_rows; i++) {
        const float *r = rows + i * stride;
        for (size_t j = 0; j < n; j++) out[j] += w[i] * r[j];
    }
}

uint64_t vec_read_bytes(const void *p, size_t bytes) {
    if (vec_has_avx2()) return vec__read_bytes_avx2(p, bytes);
    const unsigned char *b = p;
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        s ^= v;
    }
    for (; i < bytes; i++) s += b[i];
    return s;
}
