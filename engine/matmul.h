/* matmul.h -- y = W x for quantized weight matrices, on the thread pool.
 *
 * A matrix is row-major: n_rows rows of n_cols elements of one qk_type, used
 * in place (e.g. inside the mmapped GGUF). Activations x are n_tok rows of
 * n_cols floats; outputs y are n_tok rows of n_rows floats.
 *
 * Three strategies, chosen per matrix by the number of tokens and the type:
 *   - one or a few tokens (decode), and Q6_K at any count: activations are
 *     quantised once into the weight's vec_dot_type, then threads take row
 *     blocks and dot every token against each block while it is hot in
 *     cache (a multi-token tile kernel where the type has one) -- each
 *     weight byte is read from memory once per call;
 *   - four tokens or more, for Q8_0/Q4_0/Q5_0/Q4_K/Q5_K weights: the quantised
 *     activations are packed four tokens per record and threads run the
 *     int8 GEMM (gemm_avx2.c) over their row blocks -- batched decode and
 *     prompt chunks alike;
 *   - 32 tokens or more, other types (F16, BF16, ...): threads take row
 *     tiles, dequantize the tile to f32 in a per-thread buffer and multiply
 *     with cblas_sgemm (OpenBLAS kept single-threaded: our pool owns the
 *     cores).
 * Several matrices that share the same input (Q/K/V, gate/up) go in one call:
 * one pool job, one activation quantisation.
 *
 * No allocation per call: buffers are sized at create time. */
#ifndef QKVD_MATMUL_H
#define QKVD_MATMUL_H

#include <stddef.h>
#include <stdint.h>
#include "quant.h"
#include "threadpool.h"

typedef struct mm_matrix {
    enum qk_type type;
    const void *data;   /* n_rows * row_bytes bytes, not owned */
    int64_t n_cols;     /* elements per row (GGUF ne[0]) */
    int64_t n_rows;     /* GGUF ne[1] */
    size_t row_bytes;
} mm_matrix;

typedef struct matmul matmul; /* opaque */

#define MM_MAX_MATS 4

/* Create for inputs of at most max_cols columns and at most max_tok tokens
 * per call, running on tp (not owned). NULL on OOM. Owned by the caller. */
matmul *matmul_create(threadpool *tp, int64_t max_cols, int32_t max_tok);
void matmul_free(matmul *m); /* accepts NULL */

/* Token count from which the sgemm strategy is used for weight types without
 * a packed int8 GEMM (tunable for benches; env QKVD_GEMM_MIN_TOK). */
void matmul_set_gemm_threshold(matmul *m, int32_t n_tok);
/* Token count from which the packed int8 GEMM is used for the types that
 * have one (Q8_0, Q4_0, Q5_0, Q4_K, Q5_K with the AVX2 kernels; env
 * QKVD_PACKED_MIN_TOK). A value above max_tok turns it off. */
void matmul_set_packed_min_tok(matmul *m, int32_t n_tok);

/* For j in [0, n_mats): y[j][t][r] = sum_c W[j][r][c] * x[t][c], t < n_tok.
 * All matrices have the same n_cols (<= max_cols); n_tok <= max_tok;
 * n_mats <= MM_MAX_MATS. x is n_tok rows of n_cols floats, contiguous. */
void matmul_run(matmul *m, int32_t n_mats, const mm_matrix *const *W, const float *x,
                int32_t n_tok, float *const *y);

/* Bytes of matrix data a call reads (for bandwidth figures). */
static inline uint64_t mm_matrix_bytes(const mm_matrix *W) {
    return (uint64_t)W->n_rows * W->row_bytes;
}

#endif
