/* vecmath.h -- vectorised element-wise math for the forward pass (exp in
 * softmax, SiLU). AVX2+FMA kernels when the CPU has them (checked once),
 * scalar otherwise; both agree to ~2 ulp of expf. */
#ifndef QKVD_VECMATH_H
#define QKVD_VECMATH_H

#include <stddef.h>
#include <stdint.h>

/* x[i] = exp(x[i] - mx) for i < n; returns the sum of the results. */
float vec_exp_shift_sum(float *x, size_t n, float mx);

/* The largest of x[0..n) (-INFINITY for n = 0; NaNs are skipped). */
float vec_max(const float *x, size_t n);

/* x[i] *= s for i < n. */
void vec_scale(float *x, size_t n, float s);

/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n. */
void vec_silu_mul(float *g, const float *u, size_t n);

/* out[i] = scale * dot(q, rows + i * stride, n) for i < n_rows (attention
 * scores of one query against a run of keys). */
void vec_dot_rows(const float *q, const float *rows, size_t stride, size_t n_rows, size_t n,
                  float scale, float *out);

/* out[j] += sum_i w[i] * rows[i * stride + j] for j < n, i < n_rows
 * (probability-weighted sum of a run of values). */
void vec_axpy_rows(float *out, const float *rows, size_t stride, size_t n_rows, size_t n,
                   const float *w);

/* Read every byte of p[0..bytes) with the widest loads available and return
 * a checksum of it (so the reads cannot be optimised away). For the
 * memory-bandwidth probe of `qkvd bench --membw`; p need not be aligned. */
uint64_t vec_read_bytes(const void *p, size_t bytes);

/* Internal: the AVX2 kernels (vecmath_avx2.c), called only after a CPU check. */
float vec__exp_shift_sum_avx2(float *x, size_t n, float mx);
void vec__silu_mul_avx2(float *g, const float *u, size_t n);
float vec__max_avx2(const float *x, size_t n);
void vec__scale_avx2(float *x, size_t n, float s);
void vec__dot_rows_avx2(const float *q, const float *rows, size_t stride, size_t n_rows, size_t n,
                        float scale, float *out);
void vec__axpy_rows_avx2(float *out, const float *rows, size_t stride, size_t n_rows, size_t n,
                         const float *w);
uint64_t vec__read_bytes_avx2(const void *p, size_t bytes);

#endif
