/* test_vecmath.c -- the vectorised exp/SiLU against libm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include "vecmath.h"

static void test_exp_shift_sum(void **state) {
    (void)state;
    enum { N = 1003 };
    float *x = malloc(N * sizeof(float));
    double want_sum = 0, max_rel = 0;
    for (int i = 0; i < N; i++) x[i] = -100.0f + 100.0f * i / N;
    x[5] = -INFINITY;
    float mx = 3.0f;
    float ref[N];
    for (int i = 0; i < N; i++) { ref[i] = expf(x[i] - mx); want_sum += ref[i]; }
    float s = vec_exp_shift_sum(x, N, mx);
    for (int i = 0; i < N; i++) {
        if (ref[i] < 1e-30f) { assert_true(x[i] < 1e-30f); continue; }
        double rel = fabs(x[i] - ref[i]) / ref[i];
        if (rel > max_rel) max_rel = rel;
    }
    assert_true(max_rel < 1e-6);
    assert_true(fabs(s - want_sum) / want_sum < 1e-5);
    free(x);
}

static void test_silu_mul(void **state) {
    (void)state;
    enum { N = 517 };
    float g[N], u[N], ref[N];
    for (int i = 0; i < N; i++) {
        g[i] = -30.0f + 60.0f * i / N;
        u[i] = 0.5f + 0.001f * i;
        ref[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
    vec_silu_mul(g, u, N);
    for (int i = 0; i < N; i++) assert_true(fabsf(g[i] - ref[i]) <= 1e-6f * (1.0f + fabsf(ref[i])));
}

static void test_rows_kernels(void **state) {
    (void)state;
    enum { R = 13, STRIDE = 200 };
    size_t dims[] = {8, 64, 72, 128, 5};
    float *rows = malloc(R * STRIDE * sizeof(float));
    for (int i = 0; i < R * STRIDE; i++) rows[i] = sinf(i * 0.37f);
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        size_t n = dims[di];
        float q[128], w[R], out[R], acc[128], ref[128];
        for (size_t j = 0; j < n; j++) { q[j] = cosf(j * 0.11f); acc[j] = ref[j] = 0.5f; }
        for (int i = 0; i < R; i++) w[i] = 0.1f * i;
        vec_dot_rows(q, rows, STRIDE, R, n, 0.25f, out);
        for (int i = 0; i < R; i++) {
            double s = 0;
            for (size_t j = 0; j < n; j++) s += (double)q[j] * rows[i * STRIDE + j];
            assert_true(fabs(out[i] - 0.25 * s) < 1e-5);
        }
        vec_axpy_rows(acc, rows, STRIDE, R, n, w);
        for (size_t j = 0; j < n; j++) {
            double s = ref[j];
            for (int i = 0; i < R; i++) s += (double)w[i] * rows[i * STRIDE + j];
            assert_true(fabs(acc[j] - s) < 1e-5);
        }
    }
    free(rows);
}

/* vec_max / vec_scale at lengths around the vector widths; NaNs are
 * skipped by the max, an empty range is -inf. */
static void test_max_scale(void **state) {
    (void)state;
    float x[41], y[41];
    for (size_t n = 0; n <= 41; n++) {
        for (size_t pos = 0; pos < (n ? n : 1); pos++) {
            float want = -INFINITY;
            for (size_t i = 0; i < n; i++) {
                x[i] = sinf((float)i * 1.7f) - 2.0f;
                if (i == pos) x[i] = 3.0f + (float)pos;
                if (i == (pos + 5) % (n ? n : 1) && i != pos) x[i] = NAN;
                if (!isnan(x[i]) && x[i] > want) want = x[i];
            }
            float got = vec_max(x, n);
            if (n == 0) assert_true(isinf(got) && got < 0);
            else assert_true(got == want);
        }
        for (size_t i = 0; i < n; i++) y[i] = x[i] = cosf((float)i);
        vec_scale(x, n, 0.37f);
        for (size_t i = 0; i < n; i++) assert_true(x[i] == y[i] * 0.37f);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_shift_sum),
        cmocka_unit_test(test_max_scale),
        cmocka_unit_test(test_silu_mul),
        cmocka_unit_test(test_rows_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
