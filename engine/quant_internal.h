/* quant_internal.h -- private to quant*.c: ggml block layouts and the kernel
 * dispatch table that the SIMD files fill in.
 *
 * Block structs mirror ggml's byte layouts exactly (fp16 fields are raw
 * uint16_t). GGUF tensor data is 32-byte aligned and every block size is a
 * multiple of the alignment of its widest field, so these structs may be
 * used in place over mapped data. */
#ifndef QKVD_QUANT_INTERNAL_H
#define QKVD_QUANT_INTERNAL_H

#include <stdint.h>
#include <stddef.h>
#include "quant.h"

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

typedef struct { uint16_t d; uint8_t qs[QK4_0 / 2]; } block_q4_0;                 /* 18 */
typedef struct { uint16_t d, m; uint8_t qs[QK4_1 / 2]; } block_q4_1;              /* 20 */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;  /* 22 */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1; /* 24 */
typedef struct { uint16_t d; int8_t qs[QK8_0]; } block_q8_0;                      /* 34 */
/* s = d * sum(qs), precomputed so Q4_1/Q5_1 dots can add the min term cheaply */
typedef struct { uint16_t d, s; int8_t qs[QK8_1]; } block_q8_1;                   /* 36 */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; } block_q2_K; /* 84 */
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; } block_q3_K; /* 110 */
typedef struct { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K; /* 144 */
typedef struct { uint16_t d, dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K; /* 176 */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K; /* 210 */
/* Activation type of the K quants; bsums[j] = sum of qs[16j..16j+15]. */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K; /* 292 */

/* w: one weight row; act: the activation row in the type's vec_dot_type. */
typedef float (*quant__dot_fn)(const void *w, const void *act, int64_t n);
/* nrows consecutive rows starting at W, each row_bytes long. */
typedef void (*quant__gemv_fn)(const void *W, size_t row_bytes, const void *act,
                               float *y, int64_t n, int64_t nrows);
/* Several tokens at once: y[t * y_stride + r] = dot(row r, act + t * act_stride)
 * for r < nrows, t < ntok. Weights are read once per group of tokens. */
typedef void (*quant__gemm_fn)(const void *W, size_t row_bytes, const void *act, size_t act_stride,
                               float *y, size_t y_stride, int64_t n, int64_t nrows, int32_t ntok);
/* Quantise n floats into an activation type (Q8_0, Q8_1, Q8_K). */
typedef void (*quant__act_fn)(const float *x, void *dst, int64_t n);
/* Packed activations for the many-token GEMM (see gemm_avx2.c): pack ntok
 * rows of vec_dot_type activations (act_stride bytes apart) into dst. */
typedef void (*quant__pack_fn)(const void *act, size_t act_stride, int64_t n, int32_t ntok, void *dst);
/* y[t * y_stride + r] = dot(row r, token t) for r < nrows, t < ntok, from
 * packed activations. */
typedef void (*quant__gemmp_fn)(const void *W, size_t row_bytes, const void *packed, float *y,
                                size_t y_stride, int64_t n, int64_t nrows, int32_t ntok);
/* Dequantise n elements (a multiple of the block size) of one type. */
typedef void (*quant__dequant_fn)(const void *src, float *dst, int64_t n);

typedef struct quant__kernels {
    const char *name;
    quant__dot_fn dot[QK_TYPE_MAX];   /* by weight type */
    quant__gemv_fn gemv[QK_TYPE_MAX]; /* by weight type; NULL: loop over dot */
    quant__gemm_fn gemm[QK_TYPE_MAX]; /* by weight type; NULL: gemv per token */
    quant__act_fn act[QK_TYPE_MAX];   /* by activation type */
    quant__dequant_fn dequant[QK_TYPE_MAX]; /* optional; NULL: the scalar code */
    quant__pack_fn pack[QK_TYPE_MAX];   /* by weight type; NULL: no packed GEMM */
    quant__gemmp_fn gemmp[QK_TYPE_MAX]; /* by weight type, set with pack[] */
} quant__kernels;

/* Fill in the kernels the SIMD file provides, leaving other entries alone. */
void quant__avx2_fill(quant__kernels *k);
void quant__avx512_fill(quant__kernels *k);
void quant__avx2_gemm_fill(quant__kernels *k); /* gemm_avx2.c */

/* 6-bit scale j and min j of a Q4_K/Q5_K scales[12] array. */
static inline void quant__get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

#endif
