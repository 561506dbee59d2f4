/* test_rope.c -- RoPE scaling variants against their direct formulas; every
 * variant with factor 1 is plain RoPE. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>
#include "rope.h"

enum { NROT = 64, HALF = NROT / 2, LTRAIN = 512 };
static const float BASE = 10000.0f;

static double plain(int i) { return pow((double)BASE, -2.0 * i / NROT); }

static rope_params rp(enum rope_scaling t, float factor) {
    rope_params p;
    rope_params_default(&p);
    p.type = t;
    p.factor = factor;
    return p;
}

static void test_factor_one_is_plain(void **state) {
    (void)state;
    double f[HALF];
    for (int t = 0; t < ROPE_SCALING_COUNT; t++) {
        rope_params p = rp((enum rope_scaling)t, 1.0f);
        for (int pos = 0; pos < 3000; pos += 511) {
            if (t == ROPE_SCALING_DYNAMIC_NTK && pos >= LTRAIN) continue; /* grows by itself */
            float ms = rope_freqs(&p, NROT, BASE, NULL, LTRAIN, pos, f);
            assert_true(ms == 1.0f);
            for (int i = 0; i < HALF; i++) assert_true(fabs(f[i] - plain(i)) <= 1e-15 * (1 + plain(i)));
        }
    }
}

static void test_linear_and_ntk(void **state) {
    (void)state;
    double f[HALF];
    rope_params p = rp(ROPE_SCALING_LINEAR, 4.0f);
    rope_freqs(&p, NROT, BASE, NULL, LTRAIN, 100, f);
    for (int i = 0; i < HALF; i++) assert_true(fabs(f[i] - plain(i) / 4.0) < 1e-15);
    p = rp(ROPE_SCALING_NTK, 4.0f);
    rope_freqs(&p, NROT, BASE, NULL, LTRAIN, 100, f);
    double b2 = BASE * pow(4.0, (double)NROT / (NROT - 2));
    for (int i = 0; i < HALF; i++) assert_true(fabs(f[i] - pow(b2, -2.0 * i / NROT)) < 1e-15);
    /* ntk keeps the highest frequency and divides the lowest by ~s. */
    assert_true(fabs(f[0] - 1.0) < 1e-15);
    /* dynamic-ntk: plain up to L_train, then ntk with s = (pos+1)/L_train. */
    p = rp(ROPE_SCALING_DYNAMIC_NTK, 1.0f);
    rope_freqs(&p, NROT, BASE, NULL, LTRAIN, LTRAIN - 1, f);
    for (int i = 0; i < HALF; i++) assert_true(fabs(f[i] - plain(i)) < 1e-15);
    rope_freqs(&p, NROT, BASE, NULL, LTRAIN, 4 * LTRAIN - 1, f);
    for (int i = 0; i < HALF; i++) assert_true(fabs(f[i] - pow(b2, -2.0 * i / NROT)) < 1e-12);
}

static void test_yarn(void **state) {
    (void)state;
    double f[HALF];
    const double s = 8.0;
    rope_params p = rp(ROPE_SCALING_YARN, (float)s);
    float ms = rope_freqs(&p, NROT, BASE, NULL, LTRAIN, 0, f);
    assert_true(fabs(ms - (0.1 * log(s) + 1.0)) < 1e-6);
    int kept = 0, interp = 0, ramp = 0;
    for (int i = 0; i < HALF; i++) {
        double th = plain(i), r = LTRAIN * th / (2 * M_PI);
        double g = r < 1 ? 0 : r > 32 ? 1 : (r - 1) / 31.0;
        double want = (1 - g) * th / s + g * th;
        assert_true(fabs(f[i] - want) <= 1e-12 * th);
        kept += g == 1;
        interp += g == 0;
        ramp += g > 0 && g < 1;
    }
    /* With base 1e4, d 64, L 512 all three regions exist. */
    assert_true(kept > 0 && interp > 0 && ramp > 0);
}

static void test_rotate_and_names(void **state) {
    (void)state;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, c[2] = {0, 1}, s[2] = {1, 0};
    rope_rotate(x, 1, 8, 4, 0, c, s); /* pair 0 by 90 degrees, pair 1 unchanged */
    assert_true(x[0] == -2 && x[1] == 1 && x[2] == 3 && x[3] == 4 && x[4] == 5);
    float y[4] = {1, 2, 3, 4};
    rope_rotate(y, 1, 4, 4, 1, c, s); /* neox: pairs (0,2), (1,3) */
    assert_true(y[0] == -3 && y[2] == 1 && y[1] == 2 && y[3] == 4);
    enum rope_scaling t;
    for (int i = 0; i < ROPE_SCALING_COUNT; i++) {
        assert_int_equal(rope_scaling_parse(rope_scaling_name((enum rope_scaling)i), &t), 0);
        assert_int_equal(t, i);
    }
    assert_int_equal(rope_scaling_parse("su", &t), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_factor_one_is_plain),
        cmocka_unit_test(test_linear_and_ntk),
        cmocka_unit_test(test_yarn),
        cmocka_unit_test(test_rotate_and_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
