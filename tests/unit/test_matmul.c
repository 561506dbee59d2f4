/* test_matmul.c -- the matmul strategies (per-token GEMV on quantised
 * activations, packed int8 GEMM, dequantize + sgemm) against a
 * double-precision product of the dequantized weights, for every weight
 * type, on 1 and 2 threads; and the packed GEMM against the scalar GEMV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "matmul.h"
#include "threadpool.h"

extern void openblas_set_num_threads(int num_threads);

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) / 16777216.0f) * 2.0f - 1.0f;
}

static void check_type(threadpool *tp, enum qk_type t, int64_t K, int64_t N) {
    size_t rb = quant_row_size(t, K);
    uint8_t *W = malloc(rb * (size_t)N);
    float *row = malloc((size_t)K * sizeof(float)), *deq = malloc((size_t)K * N * sizeof(float));
    uint32_t s = 7;
    for (int64_t r = 0; r < N; r++) {
        for (int64_t c = 0; c < K; c++) row[c] = frand(&s);
        quant_quantize_row(t, row, W + (size_t)r * rb, K);
        quant_dequantize_row(t, W + (size_t)r * rb, deq + (size_t)r * K, K);
    }
    mm_matrix m = {t, W, K, N, rb};
    const mm_matrix *mp[2] = {&m, &m};
    matmul *mm = matmul_create(tp, K, 70);
    assert_non_null(mm);
    int32_t counts[] = {1, 5, 37, 70};
    for (int ci = 0; ci < 4; ci++) {
        int32_t T = counts[ci];
        float *x = malloc((size_t)T * K * sizeof(float));
        float *y0 = malloc((size_t)T * N * sizeof(float)), *y1 = malloc((size_t)T * N * sizeof(float));
        for (int64_t i = 0; i < T * K; i++) x[i] = frand(&s);
        float *ys[2] = {y0, y1};
        matmul_run(mm, 2, mp, x, T, ys);
        double max_rel = 0;
        for (int32_t tt = 0; tt < T; tt++)
            for (int64_t r = 0; r < N; r++) {
                double ref = 0, mag = 0;
                for (int64_t c = 0; c < K; c++) {
                    ref += (double)deq[(size_t)r * K + c] * x[(size_t)tt * K + c];
                    mag += fabs((double)deq[(size_t)r * K + c] * x[(size_t)tt * K + c]);
                }
                double e0 = fabs(y0[(size_t)tt * N + r] - ref) / (mag + 1e-9);
                double e1 = fabs(y1[(size_t)tt * N + r] - ref) / (mag + 1e-9);
                if (e0 > max_rel) max_rel = e0;
                if (e1 > max_rel) max_rel = e1;
            }
        /* Float types and the sgemm path: float rounding only. Quantised
         * activations (GEMV and packed int8 GEMM paths of block types):
         * 8-bit error. */
        int float_w = t == QK_F32 || t == QK_F16 || t == QK_BF16;
        /* (matmul keeps Q6_K on its int8 tile kernel at every size) */
        int sgemm = T >= 32 && quant_packed_act_size(t, K, T) == 0 && t != QK_Q6_K;
        double tol = (float_w || sgemm) ? 1e-5 : 2e-2;
        if (max_rel > tol) fail_msg("%s T=%d: relative error %.3g > %.3g", quant_type_name(t), T, max_rel, tol);
        free(x); free(y0); free(y1);
    }
    matmul_free(mm);
    free(W); free(row); free(deq);
}

/* The packed int8 GEMM does the same integer products as the scalar
 * per-token GEMV: results agree to float summation order, for token counts
 * that are and are not multiples of the four- and eight-token groups and row counts
 * that leave a tail after the four-row tiles. */
static void check_packed_matches_scalar(int64_t K) {
    enum qk_type types[] = {QK_Q8_0, QK_Q4_0, QK_Q5_0, QK_Q4_K, QK_Q5_K};
    const int64_t N = 23;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        enum qk_type t = types[ti];
        if (quant_packed_act_size(t, K, 4) == 0) {
            print_message("skip: no packed GEMM for %s with kernels %s\n", quant_type_name(t), quant_kernel_name());
            continue;
        }
        size_t rb = quant_row_size(t, K), as = quant_row_size(quant_traits(t)->vec_dot_type, K);
        uint8_t *W = malloc(rb * (size_t)N);
        float *row = malloc((size_t)K * sizeof(float));
        uint32_t s = 11;
        for (int64_t r = 0; r < N; r++) {
            for (int64_t c = 0; c < K; c++) row[c] = frand(&s) * (1 + r % 3);
            quant_quantize_row(t, row, W + (size_t)r * rb, K);
        }
        int32_t counts[] = {1, 3, 4, 6, 8, 9, 16, 32, 37};
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            int32_t T = counts[ci];
            uint8_t *act = malloc(as * (size_t)T);
            for (int32_t tt = 0; tt < T; tt++) {
                for (int64_t c = 0; c < K; c++) row[c] = frand(&s) * (tt == 2 ? 0.0f : 1.0f);
                quant_prepare_act(t, row, act + (size_t)tt * as, K);
            }
            size_t pb = quant_packed_act_size(t, K, T);
            void *pk = aligned_alloc(64, (pb + 63) & ~(size_t)63);
            float *y = malloc((size_t)T * N * sizeof(float)), *ref = malloc((size_t)T * N * sizeof(float));
            quant_pack_act(t, act, as, K, T, pk);
            /* two row ranges: the split must not matter */
            quant_gemm_packed(t, W, pk, y, (size_t)N, K, 0, 9, T);
            quant_gemm_packed(t, W, pk, y, (size_t)N, K, 9, N, T);
            quant_force_scalar(1);
            for (int32_t tt = 0; tt < T; tt++)
                quant_gemv_rows(t, W, act + (size_t)tt * as, ref + (size_t)tt * N, K, 0, N);
            quant_force_scalar(0);
            for (int64_t i = 0; i < (int64_t)T * N; i++) {
                /* both sum K / 32 block products in float, in different orders */
                double tol = 1e-5 * (fabs(ref[i]) + 1.0) * (double)K / 512;
                if (fabs(y[i] - ref[i]) > tol)
                    fail_msg("%s T=%d index %ld: packed %g vs scalar %g", quant_type_name(t), T, (long)i, y[i],
                             ref[i]);
            }
            free(act); free(pk); free(y); free(ref);
        }
        free(W); free(row);
    }
}

/* K = 512, and 5632 (a 1b model's FFN width), whose packed activations of
 * 37 tokens exceed one cache-blocking chunk, so the rows are swept twice. */
static void test_packed_matches_scalar(void **state) {
    (void)state;
    quant_init();
    check_packed_matches_scalar(512);
    check_packed_matches_scalar(5632);
}

/* One call with matrices of three types (Q5_0 and Q4_K packed from two
 * activation types, Q6_K on the GEMV or sgemm path), as a Q4_K_M model's
 * Q/K/V can be: every output matches its own double-precision product. */
static void test_mixed_types_one_call(void **state) {
    (void)state;
    quant_init();
    const int64_t K = 512, N = 37;
    enum qk_type types[3] = {QK_Q5_0, QK_Q4_K, QK_Q6_K};
    uint8_t *W[3];
    float *deq[3];
    mm_matrix mats[3];
    const mm_matrix *mp[3];
    float *row = malloc((size_t)K * sizeof(float));
    uint32_t s = 5;
    for (int j = 0; j < 3; j++) {
        size_t rb = quant_row_size(types[j], K);
        W[j] = malloc(rb * (size_t)N);
        deq[j] = malloc((size_t)K * N * sizeof(float));
        for (int64_t r = 0; r < N; r++) {
            for (int64_t c = 0; c < K; c++) row[c] = frand(&s);
            quant_quantize_row(types[j], row, W[j] + (size_t)r * rb, K);
            quant_dequantize_row(types[j], W[j] + (size_t)r * rb, deq[j] + (size_t)r * K, K);
        }
        mats[j] = (mm_matrix){types[j], W[j], K, N, rb};
        mp[j] = &mats[j];
    }
    threadpool *tp = threadpool_create(2);
    assert_non_null(tp);
    matmul *mm = matmul_create(tp, K, 64);
    assert_non_null(mm);
    int32_t counts[] = {5, 40};
    for (int ci = 0; ci < 2; ci++) {
        int32_t T = counts[ci];
        float *x = malloc((size_t)T * K * sizeof(float)), *y[3];
        for (int64_t i = 0; i < T * K; i++) x[i] = frand(&s);
        for (int j = 0; j < 3; j++) y[j] = malloc((size_t)T * N * sizeof(float));
        matmul_run(mm, 3, mp, x, T, y);
        for (int j = 0; j < 3; j++)
            for (int32_t tt = 0; tt < T; tt++)
                for (int64_t r = 0; r < N; r++) {
                    double ref = 0, mag = 0;
                    for (int64_t c = 0; c < K; c++) {
                        ref += (double)deq[j][(size_t)r * K + c] * x[(size_t)tt * K + c];
                        mag += fabs((double)deq[j][(size_t)r * K + c] * x[(size_t)tt * K + c]);
                    }
                    double e = fabs(y[j][(size_t)tt * N + r] - ref) / (mag + 1e-9);
                    if (e > 2e-2)
                        fail_msg("%s in a mixed call, T=%d row %ld: relative error %.3g", quant_type_name(types[j]),
                                 T, (long)r, e);
                }
        free(x);
        for (int j = 0; j < 3; j++) free(y[j]);
    }
    matmul_free(mm);
    threadpool_free(tp);
    for (int j = 0; j < 3; j++) { free(W[j]); free(deq[j]); }
    free(row);
}

static void test_all_types(void **state) {
    (void)state;
    quant_init();
    openblas_set_num_threads(1);
    enum qk_type types[] = {QK_F32, QK_F16, QK_BF16, QK_Q8_0, QK_Q4_0, QK_Q4_1,
                            QK_Q5_0, QK_Q5_1, QK_Q4_K, QK_Q5_K, QK_Q6_K};
    for (int nt = 1; nt <= 2; nt++) {
        threadpool *tp = threadpool_create(nt);
        assert_non_null(tp);
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) check_type(tp, types[i], 512, 101);
        threadpool_free(tp);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_types),
        cmocka_unit_test(test_packed_matches_scalar),
        cmocka_unit_test(test_mixed_types_one_call),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
