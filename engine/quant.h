/* quant.h -- the ggml weight types: sizes, (de)quantisation, dot products.
 *
 * Block layouts are exactly ggml's (the bytes in GGUF files people download).
 * Every type has a scalar reference implementation; SIMD variants (AVX2,
 * AVX-512/VNNI) are selected once at start-up by CPU feature detection
 * (quant_init) and must agree with the scalar path within the tests' bounds.
 *
 * Decode path: activations are quantised once per matrix-vector product into
 * the type's "vec_dot_type" (Q8_0 for Q4_0/Q5_0/Q8_0; Q8_1, which also
 * carries d * sum(q) per block, for Q4_1/Q5_1; Q8_K for the K types; F32 for
 * float types; as in ggml), then each weight row is dotted with it straight
 * from the mapped blocks. */
#ifndef QKVD_QUANT_H
#define QKVD_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Values are ggml's type ids (they are what GGUF stores). */
enum qk_type {
    QK_F32 = 0, QK_F16 = 1, QK_Q4_0 = 2, QK_Q4_1 = 3,
    QK_Q5_0 = 6, QK_Q5_1 = 7, QK_Q8_0 = 8, QK_Q8_1 = 9,
    QK_Q2_K = 10, QK_Q3_K = 11, QK_Q4_K = 12, QK_Q5_K = 13, QK_Q6_K = 14, QK_Q8_K = 15,
    QK_BF16 = 30,
    QK_TYPE_MAX = 64
};

typedef struct qk_type_traits {
    const char *name;      /* "q4_0", NULL for ids qkvd does not know */
    uint32_t block_size;   /* elements per block (1 for float types) */
    uint32_t type_size;    /* bytes per block */
    int supported;         /* 1 if qkvd can compute with it */
    enum qk_type vec_dot_type; /* type activations are quantised to for dots */
} qk_type_traits;

/* Detect CPU features and pick kernels. Idempotent, thread-safe after the first call.
 * The environment variable QKVD_KERNELS=scalar|avx2 caps the kernel set. */
void quant_init(void);
/* "avx512vnni", "avx2", "scalar": the kernel set in use (for logs and bench). */
const char *quant_kernel_name(void);
/* Force the scalar kernels (tests compare SIMD against them). */
void quant_force_scalar(int on);

/* Traits of type t, or NULL for an unknown id. */
const qk_type_traits *quant_traits(uint32_t t);
const char *quant_type_name(uint32_t t);   /* "unknown" if unknown */
int quant_type_from_name(const char *name); /* -1 if unknown; accepts "q4_0", "Q4_0", "f16" */

/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t quant_row_size(enum qk_type t, int64_t n);

/* fp16 / bf16 <-> fp32 */
float quant_fp16_to_fp32(uint16_t h);
uint16_t quant_fp32_to_fp16(float f);
float quant_bf16_to_fp32(uint16_t h);
uint16_t quant_fp32_to_bf16(float f);

/* Dequantise n elements (a multiple of the block size) of type t at src into dst. */
void quant_dequantize_row(enum qk_type t, const void *src, float *dst, int64_t n);

/* Quantise n floats into type t (reference quantisers, as ggml's *_ref;
 * K types use ggml's make_qkx/make_qx searches). Returns bytes written. */
size_t quant_quantize_row(enum qk_type t, const float *src, void *dst, int64_t n);

/* Dot product of one weight row (type t, n elements) with the activation row
 * `act`, which is already in quant_traits(t)->vec_dot_type (n elements). */
float quant_vec_dot(enum qk_type t, const void *w_row, const void *act, int64_t n);

/* Quantise activations into the vec_dot_type of weight type t (for F32/F16/BF16
 * weights this is a copy as float). dst must hold quant_row_size(vec_dot_type, n). */
void quant_prepare_act(enum qk_type t, const float *x, void *dst, int64_t n);

/* Matrix-vector product over rows [r0, r1): y[r] = dot(W[r,:], act) for a
 * row-major weight matrix W of type t with n columns. act as above. */
void quant_gemv_rows(enum qk_type t, const void *W, const void *act, float *y,
                     int64_t n, int64_t r0, int64_t r1);

/* The same for ntok tokens at once (batched decode): for t < ntok and r in
 * [r0, r1), y[t * y_stride + r] = dot(W[r,:], act + t * act_stride). With a
 * SIMD kernel for the type, each weight block is decoded once and dotted
 * with a group of tokens while it is in registers; otherwise this is
 * quant_gemv_rows per token. Results equal the per-token ones up to float
 * summation order. */
void quant_gemm_rows(enum qk_type t, const void *W, const void *act, size_t act_stride, float *y,
                     size_t y_stride, int64_t n, int64_t r0, int64_t r1, int32_t ntok);

/* Many-token GEMM on packed activations (batched decode and prompt chunks;
 * faster than quant_gemm_rows from about four tokens on).
 * quant_packed_act_size: bytes the packed form of ntok activation rows of n
 * elements takes, or 0 when the active kernels have no packed GEMM for t
 * (callers then use quant_gemm_rows or dequantise + sgemm).
 * quant_pack_act: packs ntok rows already in t's vec_dot_type (from
 * quant_prepare_act, act_stride bytes apart) into dst, which must be
 * 32-byte aligned and hold quant_packed_act_size bytes.
 * quant_gemm_packed: for t < ntok and r in [r0, r1),
 * y[t * y_stride + r] = dot(W[r,:], token t); the same integer products as
 * quant_gemm_rows, only the float summation order differs. */
size_t quant_packed_act_size(enum qk_type t, int64_t n, int32_t ntok);
void quant_pack_act(enum qk_type t, const void *act, size_t act_stride, int64_t n, int32_t ntok, void *dst);
void quant_gemm_packed(enum qk_type t, const void *W, const void *packed, float *y, size_t y_stride,
                       int64_t n, int64_t r0, int64_t r1, int32_t ntok);

#endif
