/* test_quant.c -- traits, fp16/bf16, quantise/dequantise round trips, SIMD
 * against scalar, gemv, and dequantisation of llama.cpp-made GGUF tensors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* ---- helpers ----------------------------------------------------------- */

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float rng_uniform(void) { return (rng_u32() >> 8) * (1.0f / 16777216.0f); }
/* Standard normal (Box-Muller): weights of trained models look like this. */
static float rng_normal(void)
{
    float u1 = rng_uniform() + 1e-7f, u2 = rng_uniform();
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}
static void fill_normal(float *x, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) x[i] = rng_normal() * scale;
}

static double rel_rms(const float *ref, const float *got, int64_t n)
{
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)ref[i] - got[i];
        e += d * d;
        s += (double)ref[i] * ref[i];
    }
    return s > 0 ? sqrt(e / s) : sqrt(e);
}

static const enum qk_type supported_types[] = {
    QK_F32, QK_F16, QK_BF16, QK_Q4_0, QK_Q4_1, QK_Q5_0, QK_Q5_1, QK_Q8_0,
    QK_Q4_K, QK_Q5_K, QK_Q6_K,
};
#define N_SUPPORTED (sizeof(supported_types) / sizeof(supported_types[0]))

/* ---- traits ------------------------------------------------------------ */

static void test_traits(void **state)
{
    (void)state;
    static const struct { enum qk_type t; const char *name; uint32_t bs, ts; int sup; enum qk_type vdt; } want[] = {
        { QK_F32, "f32", 1, 4, 1, QK_F32 },      { QK_F16, "f16", 1, 2, 1, QK_F32 },
        { QK_Q4_0, "q4_0", 32, 18, 1, QK_Q8_0 }, { QK_Q4_1, "q4_1", 32, 20, 1, QK_Q8_1 },
        { QK_Q5_0, "q5_0", 32, 22, 1, QK_Q8_0 }, { QK_Q5_1, "q5_1", 32, 24, 1, QK_Q8_1 },
        { QK_Q8_0, "q8_0", 32, 34, 1, QK_Q8_0 }, { QK_Q8_1, "q8_1", 32, 36, 0, QK_Q8_1 },
        { QK_Q2_K, "q2_K", 256, 84, 0, QK_Q8_K }, { QK_Q3_K, "q3_K", 256, 110, 0, QK_Q8_K },
        { QK_Q4_K, "q4_K", 256, 144, 1, QK_Q8_K }, { QK_Q5_K, "q5_K", 256, 176, 1, QK_Q8_K },
        { QK_Q6_K, "q6_K", 256, 210, 1, QK_Q8_K }, { QK_Q8_K, "q8_K", 256, 292, 0, QK_Q8_K },
        { QK_BF16, "bf16", 1, 2, 1, QK_F32 },
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const qk_type_traits *tr = quant_traits(want[i].t);
        assert_non_null(tr);
        assert_string_equal(tr->name, want[i].name);
        assert_int_equal(tr->block_size, want[i].bs);
        assert_int_equal(tr->type_size, want[i].ts);
        assert_int_equal(tr->supported, want[i].sup);
        assert_int_equal(tr->vec_dot_type, want[i].vdt);
        assert_string_equal(quant_type_name(want[i].t), want[i].name);
        assert_int_equal(quant_type_from_name(want[i].name), want[i].t);
        assert_int_equal(quant_row_size(want[i].t, 4096), (size_t)4096 / want[i].bs * want[i].ts);
        if (want[i].bs > 1)
            assert_int_equal(quant_row_size(want[i].t, 4096 + 16), 0);
    }
    assert_null(quant_traits(4));
    assert_null(quant_traits(5));
    assert_null(quant_traits(QK_TYPE_MAX));
    assert_null(quant_traits(1000));
    assert_string_equal(quant_type_name(4), "unknown");
    assert_int_equal(quant_type_from_name("Q4_0"), QK_Q4_0);
    assert_int_equal(quant_type_from_name("Q4_K"), QK_Q4_K);
    assert_int_equal(quant_type_from_name("q6_k"), QK_Q6_K);
    assert_int_equal(quant_type_from_name("F16"), QK_F16);
    assert_int_equal(quant_type_from_name("q4_2"), -1);
    assert_int_equal(quant_type_from_name(""), -1);
    assert_int_equal(quant_type_from_name(NULL), -1);
    assert_int_equal(quant_row_size(QK_F16, 7), 14);
    assert_int_equal(quant_row_size(QK_Q4_0, 0), 0);
}

/* ---- fp16 / bf16 ------------------------------------------------------- */

static void test_fp16(void **state)
{
    (void)state;
    static const struct { float f; uint16_t h; } cases[] = {
        { 0.0f, 0x0000 }, { -0.0f, 0x8000 }, { 1.0f, 0x3c00 }, { -2.0f, 0xc000 },
        { 65504.0f, 0x7bff }, { 65519.99f, 0x7bff }, { 65520.0f, 0x7c00 }, { 1e6f, 0x7c00 },
        { -1e6f, 0xfc00 }, { 0x1p-14f, 0x0400 }, { 0x1p-24f, 0x0001 }, { 0x1p-25f, 0x0000 },
        { 0x1.8p-25f, 0x0001 }, { 0x1.8p-24f, 0x0002 } /* tie to even */, { 0x1.ff8p-15f, 0x03ff }, { 0x1.ffcp-15f, 0x0400 },
        { 0.1f, 0x2e66 }, { 1.0f + 0x1p-11f, 0x3c00 } /* tie to even (down) */,
        { 1.0f + 0x1.8p-10f, 0x3c02 } /* tie to even (up) */, { INFINITY, 0x7c00 }, { -INFINITY, 0xfc00 },
        { 0x1.ffep-15f, 0x0400 } /* subnormal rounding up into the smallest normal */,
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t h = quant_fp32_to_fp16(cases[i].f);
        if (h != cases[i].h)
            fail_msg("fp16(%a) = %04x, want %04x", (double)cases[i].f, h, cases[i].h);
    }
    assert_true(isnan(quant_fp16_to_fp32(quant_fp32_to_fp16(NAN))));
    assert_true(isinf(quant_fp16_to_fp32(0x7c00)) && quant_fp16_to_fp32(0x7c00) > 0);
    assert_true(isinf(quant_fp16_to_fp32(0xfc00)) && quant_fp16_to_fp32(0xfc00) < 0);
    assert_true(isnan(quant_fp16_to_fp32(0x7e00)));
    /* every finite half survives half -> float -> half unchanged */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00)
            continue;
        float f = quant_fp16_to_fp32((uint16_t)h);
        if (quant_fp32_to_fp16(f) != h)
            fail_msg("fp16 round trip %04x -> %a -> %04x", h, (double)f, quant_fp32_to_fp16(f));
    }
    assert_true(quant_fp16_to_fp32(0x0001) == 0x1p-24f);
    assert_true(quant_fp16_to_fp32(0x8400) == -0x1p-14f);
    assert_true(quant_fp16_to_fp32(0x3555) == 0x1.554p-2f);

    /* bf16 */
    assert_int_equal(quant_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(quant_fp32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(quant_fp32_to_bf16(1.0f + 0x1p-8f), 0x3f80);          /* tie -> even */
    assert_int_equal(quant_fp32_to_bf16(1.0f + 0x1.8p-7f), 0x3f82);        /* tie -> even */
    assert_int_equal(quant_fp32_to_bf16(1.0f + 0x1.2p-8f), 0x3f81);        /* above tie */
    assert_int_equal(quant_fp32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(quant_fp32_to_bf16(0x1.fffffep127f), 0x7f80);         /* rounds to inf */
    assert_true(isnan(quant_bf16_to_fp32(quant_fp32_to_bf16(NAN))));
    uint32_t snan_bits = 0x7f800001u; /* NaN whose payload is only in the low bits */
    float snan;
    memcpy(&snan, &snan_bits, 4);
    assert_true(isnan(quant_bf16_to_fp32(quant_fp32_to_bf16(snan))));
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7f80) == 0x7f80)
            continue;
        assert_int_equal(quant_fp32_to_bf16(quant_bf16_to_fp32((uint16_t)h)), h);
    }
}

/* ---- round trips ------------------------------------------------------- */

/* Relative RMS error of quantise -> dequantise on N(0,1) data (the shape of
 * real weights), 64 rows of 1024, seed 7. Measured with this implementation:
 * f16 2.08e-4, bf16 1.67e-3, q8_0 5.36e-3, q6_K 1.78e-2, q5_1 3.78e-2,
 * q5_0 4.26e-2, q5_K 3.61e-2, q4_1 7.80e-2, q4_0 8.61e-2, q4_K 7.14e-2.
 * These match theory (uniform rounding error step/sqrt(12), step = block
 * absmax / levels; e.g. q4_0: E|max of 32 normals| ~2.2 / 8 / 3.46 = 0.08).
 * Bounds sit ~10% above the measurements, so a layout or rounding bug that
 * loses even one bit shows up as a failure. */
static double roundtrip_bound(enum qk_type t)
{
    switch (t) {
    case QK_F32: return 0.0;
    case QK_F16: return 2.3e-4;
    case QK_BF16: return 1.85e-3;
    case QK_Q8_0: return 5.9e-3;
    case QK_Q6_K: return 1.96e-2;
    case QK_Q5_0: return 4.7e-2;
    case QK_Q5_1: return 4.2e-2;
    case QK_Q5_K: return 4.0e-2;
    case QK_Q4_0: return 9.5e-2;
    case QK_Q4_1: return 8.6e-2;
    case QK_Q4_K: return 7.9e-2;
    default: return 0.0;
    }
}

static void test_roundtrip(void **state)
{
    (void)state;
    const int64_t n = 1024, rows = 64;
    float *x = malloc(sizeof(float) * n * rows), *y = malloc(sizeof(float) * n * rows);
    float *y2 = malloc(sizeof(float) * n);
    uint8_t *q = malloc(quant_row_size(QK_F32, n) * rows), *q2 = malloc(quant_row_size(QK_F32, n));
    rng_seed(7);
    fill_normal(x, n * rows, 1.0f);
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        size_t rb = quant_row_size(t, n);
        for (int64_t r = 0; r < rows; r++) {
            assert_int_equal(quant_quantize_row(t, x + r * n, q + r * rb, n), rb);
            quant_dequantize_row(t, q + r * rb, y + r * n, n);
        }
        double e = rel_rms(x, y, n * rows);
        printf("  round trip %-5s rel rms %.3g (bound %.3g)\n", quant_type_name(t), e, roundtrip_bound(t));
        assert_true(e <= roundtrip_bound(t));
        /* Re-quantising dequantised data reproduces it exactly for the
         * symmetric/absmax types (the grid contains every value). */
        if (t == QK_F32 || t == QK_F16 || t == QK_BF16 || t == QK_Q8_0 || t == QK_Q4_0 || t == QK_Q5_0) {
            for (int64_t r = 0; r < 4; r++) {
                quant_quantize_row(t, y + r * n, q2, n);
                quant_dequantize_row(t, q2, y2, n);
                assert_memory_equal(y2, y + r * n, sizeof(float) * n);
            }
        }
    }
    /* zeros quantise to zeros everywhere, constant rows are handled */
    memset(x, 0, sizeof(float) * n);
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        quant_quantize_row(t, x, q, n);
        quant_dequantize_row(t, q, y, n);
        for (int64_t i = 0; i < n; i++) assert_true(y[i] == 0.0f);
    }
    for (int64_t i = 0; i < n; i++) x[i] = 0.75f;
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        quant_quantize_row(t, x, q, n);
        quant_dequantize_row(t, q, y, n);
        for (int64_t i = 0; i < n; i++)
            if (fabsf(y[i] - 0.75f) > 0.75f * 0.02f)
                fail_msg("%s constant row: y[%d] = %g", quant_type_name(t), (int)i, (double)y[i]);
    }
    assert_int_equal(quant_quantize_row(QK_Q4_0, x, q, 33), 0);
    free(x); free(y); free(y2); free(q); free(q2);
}

/* Q4_0 decoding of hand-built blocks (independent of the quantiser). */
static void test_known_blocks(void **state)
{
    (void)state;
    uint8_t b[34];
    float y[256];
    /* q4_0: d = 2.0, nibbles: element j = j & 15 (low half), element j+16 = 15 - (j & 15) */
    b[0] = 0x00; b[1] = 0x40; /* 2.0 */
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    quant_dequantize_row(QK_Q4_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        assert_true(y[j] == 2.0f * (j - 8));
        assert_true(y[j + 16] == 2.0f * (15 - j - 8));
    }
    /* q8_0: d = 0.5, qs[j] = j - 16 */
    b[0] = 0x00; b[1] = 0x38;
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(j - 16);
    quant_dequantize_row(QK_Q8_0, b, y, 32);
    for (int j = 0; j < 32; j++) assert_true(y[j] == 0.5f * (j - 16));
    /* q5_0: d = 1, qh bit 0 and bit 16 set -> element 0 = 16+q-16 = q, element 16 likewise */
    uint8_t b5[22] = { 0x00, 0x3c, 0x01, 0x00, 0x01, 0x00 };
    for (int j = 0; j < 16; j++) b5[6 + j] = 0x33;
    quant_dequantize_row(QK_Q5_0, b5, y, 32);
    assert_true(y[0] == 3.0f && y[16] == 3.0f && y[1] == -13.0f && y[17] == -13.0f);

    /* q2_K (read-only type): every scale byte 0x21 = scale 1, min 2; d = dmin
     * = 1; each qs byte 0xE4 holds levels 0,1,2,3 at shifts 0,2,4,6, which
     * cover 32 consecutive elements each within every 128. */
    uint8_t q2[84];
    memset(q2, 0x21, 16);
    memset(q2 + 16, 0xE4, 64);
    q2[80] = 0x00; q2[81] = 0x3c; q2[82] = 0x00; q2[83] = 0x3c;
    quant_dequantize_row(QK_Q2_K, q2, y, 256);
    for (int j = 0; j < 256; j++)
        if (y[j] != (float)((j % 128) / 32) - 2.0f)
            fail_msg("q2_K y[%d] = %g", j, (double)y[j]);
    /* q3_K: all 16 six-bit scales 33 (low nibbles 1, high bits 2) -> 1 after
     * the -32 bias; d = 0.5; hmask bits set for the first 128 elements'
     * groups (no -4) and clear for the second half (-4). */
    uint8_t q3[110];
    memset(q3, 0, sizeof(q3));
    memset(q3, 0x0F, 32);            /* hmask bits 0..3: the shifts of the first 128 */
    memset(q3 + 32, 0xE4, 64);       /* qs */
    memset(q3 + 96, 0x11, 8);        /* scales low nibbles */
    memset(q3 + 104, 0xAA, 4);       /* scales high bits */
    q3[108] = 0x00; q3[109] = 0x38;  /* d = 0.5 */
    quant_dequantize_row(QK_Q3_K, q3, y, 256);
    for (int j = 0; j < 256; j++) {
        float want = 0.5f * ((float)((j % 128) / 32) - (j < 128 ? 0.0f : 4.0f));
        if (y[j] != want)
            fail_msg("q3_K y[%d] = %g, want %g", j, (double)y[j], (double)want);
    }
}


/* ---- dot products ------------------------------------------------------ */

/* The integer dot of a weight row with quantised activations must equal the
 * float dot of the two dequantised rows up to float rounding, and approach
 * the exact f32 dot within the quantisation error. Checks every supported
 * type on the kernels selected now (scalar or SIMD). */
static void check_dots(int force)
{
    const int64_t n = 2048;
    float *w = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n);
    float *wd = malloc(sizeof(float) * n), *xd = malloc(sizeof(float) * n);
    uint8_t *wq = malloc(n * 4), *aq = malloc(n * 4 + 64);
    quant_force_scalar(force);
    rng_seed(11);
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        enum qk_type vt = quant_traits(t)->vec_dot_type;
        for (int rep = 0; rep < 8; rep++) {
            fill_normal(w, n, 0.05f);
            fill_normal(x, n, rep == 0 ? 1.0f : 3.0f);
            if (rep == 1) /* an activation outlier, as real models have */
                x[rng_u32() % n] = 60.0f;
            quant_quantize_row(t, w, wq, n);
            quant_prepare_act(t, x, aq, n);
            quant_dequantize_row(t, wq, wd, n);
            quant_dequantize_row(vt, aq, xd, n);
            double ref = 0, mag = 0, exact = 0;
            for (int64_t i = 0; i < n; i++) {
                ref += (double)wd[i] * xd[i];
                mag += fabs((double)wd[i] * xd[i]);
                exact += (double)w[i] * x[i];
            }
            /* Q8_1 keeps s = d * sum(q) as fp16 (ggml's layout), so the min
             * term m * s carries s's rounding: 2^-11 relative per block,
             * where m is the block minimum of the dequantised weights. */
            double s_err = 0;
            if (vt == QK_Q8_1) {
                for (int64_t b = 0; b < n; b += 32) {
                    double m = wd[b], sx = 0;
                    for (int i = 0; i < 32; i++) {
                        m = wd[b + i] < m ? wd[b + i] : m;
                        sx += xd[b + i];
                    }
                    s_err += fabs(m * sx) * 0x1p-11;
                }
            }
            float got = quant_vec_dot(t, wq, aq, n);
            if (fabs(got - ref) > 2e-5 * mag + s_err)
                fail_msg("%s dot (%s): got %.7g, dequantised reference %.7g (mag %.4g)",
                         quant_type_name(t), quant_kernel_name(), (double)got, ref, mag);
            /* quantisation error of weights and activations: a few times the
             * round-trip rms error times the magnitude */
            double qerr = (roundtrip_bound(t) + (vt == QK_F32 ? 0 : 6e-3)) * 4 * mag / sqrt((double)n) + 1e-6 * mag;
            if (fabs(got - exact) > qerr)
                fail_msg("%s dot (%s): got %.7g, exact %.7g, allowed %.4g",
                         quant_type_name(t), quant_kernel_name(), (double)got, exact, qerr);
        }
    }
    quant_force_scalar(0);
    free(w); free(x); free(wd); free(xd); free(wq); free(aq);
}

static void test_dot_scalar(void **state) { (void)state; check_dots(1); }
static void test_dot_simd(void **state)
{
    (void)state;
    printf("  kernels: %s\n", quant_kernel_name());
    check_dots(0);
}

/* SIMD against scalar on the same quantised inputs, for odd lengths too
 * (float types have block size 1, so tails matter). The activation
 * quantisation itself is also compared (it may round ties differently). */
static void test_simd_vs_scalar(void **state)
{
    (void)state;
    static const int64_t lens_f[] = { 1, 7, 8, 31, 33, 64, 100, 257, 1000, 4096 };
    static const int64_t lens_q[] = { 256, 512, 768, 2048, 4096, 11008 };
    const int64_t nmax = 11008;
    float *w = malloc(sizeof(float) * nmax), *x = malloc(sizeof(float) * nmax);
    float *xa = malloc(sizeof(float) * nmax), *xb = malloc(sizeof(float) * nmax);
    uint8_t *wq = malloc(nmax * 4), *aq = malloc(nmax * 4 + 64), *aq2 = malloc(nmax * 4 + 64);
    rng_seed(5);
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        enum qk_type vt = quant_traits(t)->vec_dot_type;
        int isf = quant_traits(t)->block_size == 1;
        size_t nl = isf ? sizeof(lens_f) / sizeof(lens_f[0]) : sizeof(lens_q) / sizeof(lens_q[0]);
        for (size_t li = 0; li < nl; li++) {
            int64_t n = isf ? lens_f[li] : lens_q[li];
            fill_normal(w, n, 0.1f);
            fill_normal(x, n, 2.0f);
            quant_quantize_row(t, w, wq, n);
            quant_force_scalar(1);
            quant_prepare_act(t, x, aq, n);
            quant_force_scalar(0);
            quant_prepare_act(t, x, aq2, n);
            quant_dequantize_row(vt, aq, xa, n);
            quant_dequantize_row(vt, aq2, xb, n);
            /* activations: SIMD and scalar quantisation agree to a rounding tie */
            double ae = rel_rms(xa, xb, n);
            if (ae > 1e-3)
                fail_msg("%s act %s n=%d: simd vs scalar rel rms %g", quant_type_name(t),
                         quant_type_name(vt), (int)n, ae);
            double mag = 0;
            for (int64_t i = 0; i < n; i++) mag += fabs((double)w[i] * xa[i]);
            quant_force_scalar(1);
            float ref = quant_vec_dot(t, wq, aq, n);
            quant_force_scalar(0);
            float got = quant_vec_dot(t, wq, aq, n);
            if (fabs((double)got - ref) > 1e-5 * mag + 1e-30)
                fail_msg("%s n=%d: %s dot %.8g, scalar %.8g (mag %.4g)", quant_type_name(t), (int)n,
                         quant_kernel_name(), (double)got, (double)ref, mag);
        }
    }
    free(w); free(x); free(xa); free(xb); free(wq); free(aq); free(aq2);
}

/* SIMD dequantisation agrees with the scalar reference (tiny rounding
 * differences allowed: the SIMD code may fuse multiply-adds). */
static void test_dequant_simd(void **state)
{
    (void)state;
    const int64_t n = 2048;
    float *x = malloc(sizeof(float) * n), *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    uint8_t *q = malloc(n * 4);
    rng_seed(9);
    for (size_t k = 0; k < N_SUPPORTED; k++) {
        enum qk_type t = supported_types[k];
        for (int rep = 0; rep < 3; rep++) {
            int64_t len = quant_traits(t)->block_size == 1 ? n - 3 * rep : n;
            fill_normal(x, len, rep == 2 ? 100.0f : 0.5f);
            quant_quantize_row(t, x, q, len);
            quant_force_scalar(1);
            quant_dequantize_row(t, q, a, len);
            quant_force_scalar(0);
            quant_dequantize_row(t, q, b, len);
            for (int64_t i = 0; i < len; i++)
                if (fabsf(a[i] - b[i]) > 1e-6f * (fabsf(a[i]) + 1e-3f * (rep == 2 ? 100.0f : 0.5f)))
                    fail_msg("%s dequant (%s) [%d]: %.9g vs scalar %.9g", quant_type_name(t),
                             quant_kernel_name(), (int)i, (double)b[i], (double)a[i]);
        }
    }
    free(x); free(a); free(b); free(q);
}

/* gemv over a row range equals the scalar per-row dot, and leaves other rows alone. */
static void test_gemv(void **state)
{
    (void)state;
    /* 544 = 17 blocks of 32: odd block counts take the kernels' tail paths */
    const int64_t nmax = 768, rows = 37;
    float *w = malloc(sizeof(float) * nmax * rows), *x = malloc(sizeof(float) * nmax);
    uint8_t *W = malloc((size_t)nmax * rows * 4), *aq = malloc(nmax * 4 + 64);
    float y[37], yref[37];
    rng_seed(3);
    fill_normal(w, nmax * rows, 0.1f);
    fill_normal(x, nmax, 1.0f);
    for (int pass = 0; pass < 6; pass++) {
        const int64_t n = (pass / 2) == 0 ? 512 : (pass / 2) == 1 ? 544 : 768;
        quant_force_scalar(pass & 1);
        for (size_t k = 0; k < N_SUPPORTED; k++) {
            enum qk_type t = supported_types[k];
            size_t rb = quant_row_size(t, n);
            if (rb == 0)
                continue; /* 544 is not a multiple of 256 */
            for (int64_t r = 0; r < rows; r++) quant_quantize_row(t, w + r * n, W + r * rb, n);
            quant_prepare_act(t, x, aq, n);
            /* the reference is always the scalar dot: the multi-row SIMD
             * kernels (4 rows at once) are checked against it directly */
            quant_force_scalar(1);
            for (int64_t r = 0; r < rows; r++) yref[r] = quant_vec_dot(t, W + r * rb, aq, n);
            quant_force_scalar(pass & 1);
            static const int64_t ranges[][2] = { { 0, 37 }, { 3, 4 }, { 5, 11 }, { 1, 36 }, { 30, 37 } };
            for (size_t ri = 0; ri < sizeof(ranges) / sizeof(ranges[0]); ri++) {
                for (int64_t r = 0; r < rows; r++) y[r] = -12345.0f;
                quant_gemv_rows(t, W, aq, y, n, ranges[ri][0], ranges[ri][1]);
                for (int64_t r = 0; r < rows; r++) {
                    if (r < ranges[ri][0] || r >= ranges[ri][1]) {
                        assert_true(y[r] == -12345.0f);
                        continue;
                    }
                    if (fabsf(y[r] - yref[r]) > 1e-5f * (1.0f + fabsf(yref[r])))
                        fail_msg("%s gemv row %d: %g vs dot %g", quant_type_name(t), (int)r,
                                 (double)y[r], (double)yref[r]);
                }
            }
        }
    }
    quant_force_scalar(0);
    free(w); free(x); free(W); free(aq);
}

/* gemv at the integer extremes: rows whose quants all sit at the bottom of
 * the range (constant -1) or at the top but one (-1 then +1s), against
 * activations of constant +-1 (quantised to +-127 everywhere). The 4-row
 * kernels fold int16 sums before widening; this is where they would
 * overflow. */
static void test_gemv_extremes(void **state)
{
    (void)state;
    const int64_t n = 512, rows = 8;
    float *w = malloc(sizeof(float) * n * rows), *x = malloc(sizeof(float) * n);
    uint8_t *W = malloc((size_t)n * rows * 4), *aq = malloc(n * 4 + 64);
    float y[8], yref[8];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++)
            w[r * n + i] = (r & 1) ? (i % 32 == 0 ? -1.0f : 1.0f) : -1.0f;
    for (int sign = -1; sign <= 1; sign += 2) {
        for (int64_t i = 0; i < n; i++) x[i] = (float)sign;
        for (size_t k = 0; k < N_SUPPORTED; k++) {
            enum qk_type t = supported_types[k];
            size_t rb = quant_row_size(t, n);
            for (int64_t r = 0; r < rows; r++) quant_quantize_row(t, w + r * n, W + r * rb, n);
            quant_prepare_act(t, x, aq, n);
            quant_force_scalar(1);
            for (int64_t r = 0; r < rows; r++) yref[r] = quant_vec_dot(t, W + r * rb, aq, n);
            quant_force_scalar(0);
            quant_gemv_rows(t, W, aq, y, n, 0, rows);
            for (int64_t r = 0; r < rows; r++)
                if (fabsf(y[r] - yref[r]) > 1e-4f * (1.0f + fabsf(yref[r])))
                    fail_msg("%s gemv extreme row %d sign %d: %g vs scalar %g", quant_type_name(t), (int)r, sign,
                             (double)y[r], (double)yref[r]);
        }
    }
    free(w); free(x); free(W); free(aq);
}

/* Batched decode: quant_gemm_rows over a row range and several tokens equals
 * the scalar per-token dot (SIMD tiles of 4 tokens and 4 rows, leftover
 * tokens and rows, odd block counts), and leaves other rows alone. */
static void test_gemm(void **state)
{
    (void)state;
    const int64_t nmax = 768, rows = 37;
    const int32_t tmax = 9;
    float *w = malloc(sizeof(float) * nmax * rows), *x = malloc(sizeof(float) * nmax * tmax);
    uint8_t *W = malloc((size_t)nmax * rows * 4);
    const size_t as = (size_t)nmax * 4 + 64;
    uint8_t *aq = malloc(as * tmax);
    float *y = malloc(sizeof(float) * rows * tmax), *yref = malloc(sizeof(float) * rows * tmax);
    rng_seed(5);
    fill_normal(w, nmax * rows, 0.1f);
    fill_normal(x, nmax * tmax, 1.0f);
    static const int64_t ns[] = { 512, 544, 768, 517 }; /* 517: float types only, a tail after the 8-wide chunks */
    static const int32_t toks[] = { 1, 2, 4, 5, 8, 9 };
    for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
        const int64_t n = ns[ni];
        for (size_t k = 0; k < N_SUPPORTED; k++) {
            enum qk_type t = supported_types[k];
            size_t rb = quant_row_size(t, n);
            if (rb == 0)
                continue;
            for (int64_t r = 0; r < rows; r++) quant_quantize_row(t, w + r * n, W + r * rb, n);
            for (int32_t j = 0; j < tmax; j++) quant_prepare_act(t, x + j * n, aq + j * as, n);
            quant_force_scalar(1);
            for (int32_t j = 0; j < tmax; j++)
                for (int64_t r = 0; r < rows; r++)
                    yref[j * rows + r] = quant_vec_dot(t, W + r * rb, aq + j * as, n);
            quant_force_scalar(0);
            for (size_t ti = 0; ti < sizeof(toks) / sizeof(toks[0]); ti++) {
                int32_t T = toks[ti];
                static const int64_t ranges[][2] = { { 0, 37 }, { 3, 4 }, { 5, 11 }, { 1, 36 } };
                for (size_t ri = 0; ri < sizeof(ranges) / sizeof(ranges[0]); ri++) {
                    for (int64_t i = 0; i < rows * tmax; i++) y[i] = -12345.0f;
                    quant_gemm_rows(t, W, aq, as, y, (size_t)rows, n, ranges[ri][0], ranges[ri][1], T);
                    for (int32_t j = 0; j < tmax; j++)
                        for (int64_t r = 0; r < rows; r++) {
                            float v = y[j * rows + r], ref = yref[j * rows + r];
                            if (j >= T || r < ranges[ri][0] || r >= ranges[ri][1]) {
                                assert_true(v == -12345.0f);
                                continue;
                            }
                            if (fabsf(v - ref) > 1e-4f * (1.0f + fabsf(ref)))
                                fail_msg("%s gemm n=%d T=%d token %d row %d: %g vs scalar %g",
                                         quant_type_name(t), (int)n, T, j, (int)r, (double)v, (double)ref);
                        }
                }
            }
        }
    }
    free(w); free(x); free(W); free(aq); free(y); free(yref);
}

/* ---- llama.cpp-made files ---------------------------------------------- */

/* Just enough GGUF to find tensors (the real reader lives in gguf.c; this
 * test stays independent of it). Whole file read into memory. */
typedef struct mini_tensor { char name[96]; uint32_t type; uint64_t ne[4]; uint64_t off; } mini_tensor;
typedef struct mini_gguf {
    uint8_t *buf; size_t size, pos; int bad;
    uint64_t n_tensors; mini_tensor *t; size_t data;
} mini_gguf;

static uint64_t mg_u(mini_gguf *g, int bytes)
{
    uint64_t v = 0;
    if (g->pos + (size_t)bytes > g->size) { g->bad = 1; return 0; }
    for (int i = 0; i < bytes; i++) v |= (uint64_t)g->buf[g->pos + i] << (8 * i);
    g->pos += (size_t)bytes;
    return v;
}

static void mg_skip_value(mini_gguf *g, uint32_t type)
{
    static const int sizes[13] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };
    if (type == 8) { uint64_t len = mg_u(g, 8); g->pos += len; if (g->pos > g->size) g->bad = 1; return; }
    if (type == 9) {
        uint32_t at = (uint32_t)mg_u(g, 4);
        uint64_t n = mg_u(g, 8);
        for (uint64_t i = 0; i < n && !g->bad; i++) mg_skip_value(g, at);
        return;
    }
    if (type > 12) { g->bad = 1; return; }
    g->pos += (size_t)sizes[type];
}

static int mg_open(const char *path, mini_gguf *g)
{
    memset(g, 0, sizeof(*g));
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    g->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc(g->size);
    if (fread(g->buf, 1, g->size, f) != g->size) g->bad = 1;
    fclose(f);
    uint64_t align = 32;
    if (mg_u(g, 4) != 0x46554747u) g->bad = 1;
    mg_u(g, 4);
    g->n_tensors = mg_u(g, 8);
    uint64_t n_kv = mg_u(g, 8);
    for (uint64_t i = 0; i < n_kv && !g->bad; i++) {
        uint64_t klen = mg_u(g, 8);
        int is_align = klen == 17 && g->pos + 17 <= g->size && memcmp(g->buf + g->pos, "general.alignment", 17) == 0;
        g->pos += klen;
        uint32_t type = (uint32_t)mg_u(g, 4);
        if (is_align && type == 4) align = mg_u(g, 4);
        else mg_skip_value(g, type);
    }
    g->t = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(mini_tensor));
    for (uint64_t i = 0; i < g->n_tensors && !g->bad; i++) {
        uint64_t len = mg_u(g, 8);
        if (len >= sizeof(g->t[i].name) || g->pos + len > g->size) { g->bad = 1; break; }
        memcpy(g->t[i].name, g->buf + g->pos, len);
        g->pos += len;
        uint32_t nd = (uint32_t)mg_u(g, 4);
        for (int d = 0; d < 4; d++) g->t[i].ne[d] = 1;
        for (uint32_t d = 0; d < nd && d < 4; d++) g->t[i].ne[d] = mg_u(g, 8);
        g->t[i].type = (uint32_t)mg_u(g, 4);
        g->t[i].off = mg_u(g, 8);
    }
    g->data = (g->pos + align - 1) / align * align;
    return g->bad ? -1 : 0;
}

static void mg_close(mini_gguf *g) { free(g->buf); free(g->t); }

static const mini_tensor *mg_find(const mini_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->t[i].name, name) == 0) return &g->t[i];
    return NULL;
}

static const char *shared_dir(void)
{
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

/* Expected relative RMS error of llama.cpp's quantisation of the tiny
 * model's weights (random normal-ish) per type; see roundtrip_bound. */
static double file_bound(uint32_t t)
{
    return t == QK_F32 ? 0.0 : roundtrip_bound((enum qk_type)t) * 1.1;
}

/* Dequantise every tensor of each quantised file, compare with the f32
 * file's tensor, and check that re-quantising the f32 data with our
 * reference quantisers reproduces llama.cpp's bytes (its quantiser without
 * an importance matrix is the same deterministic algorithm). */
static void test_shared_models(void **state)
{
    (void)state;
    char path[1024];
    mini_gguf ref;
    snprintf(path, sizeof(path), "%s/models/tiny-llama-gqa-f32.gguf", shared_dir());
    if (mg_open(path, &ref) != 0) {
        mg_close(&ref);
        printf("  skip: %s not readable (set QKVD_SHARED)\n", path);
        skip();
    }
    static const char *files[] = { "q4_0", "q8_0", "q4_k_m", "q6_k", "f16", "bf16" };
    int types_seen[QK_TYPE_MAX] = { 0 };
    for (size_t fi = 0; fi < sizeof(files) / sizeof(files[0]); fi++) {
        mini_gguf g;
        snprintf(path, sizeof(path), "%s/models/tiny-llama-gqa-%s.gguf", shared_dir(), files[fi]);
        assert_int_equal(mg_open(path, &g), 0);
        size_t bytes_equal = 0, bytes_total = 0;
        int n_k[3] = { 0, 0, 0 };
        for (uint64_t i = 0; i < g.n_tensors; i++) {
            const mini_tensor *t = &g.t[i];
            const mini_tensor *r = mg_find(&ref, t->name);
            assert_non_null(r);
            assert_int_equal(r->type, QK_F32);
            int64_t n = (int64_t)t->ne[0], rows = (int64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
            size_t rb = quant_row_size((enum qk_type)t->type, n);
            assert_true(rb > 0);
            assert_true(g.data + t->off + rb * (size_t)rows <= g.size);
            const uint8_t *q = g.buf + g.data + t->off;
            const float *x = (const float *)(ref.buf + ref.data + r->off);
            float *y = malloc(sizeof(float) * (size_t)(n * rows));
            uint8_t *rq = malloc(rb);
            for (int64_t row = 0; row < rows; row++) {
                quant_dequantize_row((enum qk_type)t->type, q + (size_t)row * rb, y + row * n, n);
                quant_quantize_row((enum qk_type)t->type, x + row * n, rq, n);
                for (size_t b = 0; b < rb; b++) bytes_equal += rq[b] == q[(size_t)row * rb + b];
                bytes_total += rb;
            }
            double e = rel_rms(x, y, n * rows);
            types_seen[t->type] = 1;
            if (t->type >= QK_Q4_K && t->type <= QK_Q6_K) n_k[t->type - QK_Q4_K]++;
            if (e > file_bound(t->type))
                fail_msg("%s: tensor %s (%s) rel rms %.4g > %.4g", files[fi], t->name,
                         quant_type_name(t->type), e, file_bound(t->type));
            free(y);
            free(rq);
        }
        printf("  %-7s %d tensors (q4_K %d q5_K %d q6_K %d) dequantise within bounds; requantised bytes equal %.4f%%\n",
               files[fi], (int)g.n_tensors, n_k[0], n_k[1], n_k[2], 100.0 * (double)bytes_equal / (double)bytes_total);
        /* Float rounding order may differ from ggml's in rare ties. */
        assert_true((double)bytes_equal >= 0.999 * (double)bytes_total);
        mg_close(&g);
    }
    assert_true(types_seen[QK_Q4_0] && types_seen[QK_Q8_0] && types_seen[QK_Q4_K] && types_seen[QK_Q6_K]);
    mg_close(&ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_fp16),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_known_blocks),
        cmocka_unit_test(test_dot_scalar),
        cmocka_unit_test(test_dot_simd),
        cmocka_unit_test(test_simd_vs_scalar),
        cmocka_unit_test(test_dequant_simd),
        cmocka_unit_test(test_gemv),
        cmocka_unit_test(test_gemv_extremes),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_shared_models),
    };
    quant_init();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
