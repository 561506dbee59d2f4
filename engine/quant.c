/* quant.c -- type traits, fp16/bf16 conversion, and the scalar reference
 * (de)quantisers and dot products for the ggml weight types.
 *
 * The scalar code here is the reference the SIMD kernels (quant_avx2.c,
 * quant_avx512.c) are tested against, so it is written to be obviously right
 * rather than fast. Block layouts follow ggml byte for byte (see
 * quant_internal.h). */
#include "quant.h"
#include "quant_internal.h"

#include <cpuid.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Kernel tables (filled by quant_init; see the dispatch section). */
static quant__kernels kernels_scalar;
static quant__kernels kernels_simd;
static const quant__kernels *kernels_active; /* NULL until quant_init ran */

static inline const quant__kernels *kernels_get(void)
{
    const quant__kernels *k = __atomic_load_n(&kernels_active, __ATOMIC_ACQUIRE);
    if (k == NULL) { /* quant_init not called yet */
        quant_init();
        k = __atomic_load_n(&kernels_active, __ATOMIC_ACQUIRE);
    }
    return k;
}

/* ---- traits ------------------------------------------------------------ */

static const qk_type_traits type_traits[QK_TYPE_MAX] = {
    [QK_F32]  = { "f32",  1,     4,   1, QK_F32 },
    [QK_F16]  = { "f16",  1,     2,   1, QK_F32 },
    [QK_Q4_0] = { "q4_0", QK4_0, 18,  1, QK_Q8_0 },
    [QK_Q4_1] = { "q4_1", QK4_1, 20,  1, QK_Q8_1 },
    [QK_Q5_0] = { "q5_0", QK5_0, 22,  1, QK_Q8_0 },
    [QK_Q5_1] = { "q5_1", QK5_1, 24,  1, QK_Q8_1 },
    [QK_Q8_0] = { "q8_0", QK8_0, 34,  1, QK_Q8_0 },
    [QK_Q8_1] = { "q8_1", QK8_1, 36,  0, QK_Q8_1 },
    [QK_Q2_K] = { "q2_K", QK_K,  84,  0, QK_Q8_K },
    [QK_Q3_K] = { "q3_K", QK_K,  110, 0, QK_Q8_K },
    [QK_Q4_K] = { "q4_K", QK_K,  144, 1, QK_Q8_K },
    [QK_Q5_K] = { "q5_K", QK_K,  176, 1, QK_Q8_K },
    [QK_Q6_K] = { "q6_K", QK_K,  210, 1, QK_Q8_K },
    [QK_Q8_K] = { "q8_K", QK_K,  292, 0, QK_Q8_K },
    [QK_BF16] = { "bf16", 1,     2,   1, QK_F32 },
};

_Static_assert(sizeof(block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(block_q8_K) == 292, "q8_K layout");

const qk_type_traits *quant_traits(uint32_t t)
{
    if (t >= QK_TYPE_MAX || type_traits[t].name == NULL)
        return NULL;
    return &type_traits[t];
}

const char *quant_type_name(uint32_t t)
{
    const qk_type_traits *tr = quant_traits(t);
    return tr ? tr->name : "unknown";
}

int quant_type_from_name(const char *name)
{
    if (name == NULL)
        return -1;
    for (int t = 0; t < QK_TYPE_MAX; t++)
        if (type_traits[t].name && strcasecmp(type_traits[t].name, name) == 0)
            return t;
    return -1;
}

size_t quant_row_size(enum qk_type t, int64_t n)
{
    const qk_type_traits *tr = quant_traits((uint32_t)t);
    if (tr == NULL || n < 0 || n % tr->block_size != 0)
        return 0;
    return (size_t)(n / tr->block_size) * tr->type_size;
}

/* ---- fp16 / bf16 ------------------------------------------------------- */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float quant_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t quant_fp32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) {
        if (x == 0x7f800000u)
            return sign | 0x7c00;
        /* NaN: keep it a (quiet) NaN with the top payload bits */
        return (uint16_t)(sign | 0x7e00 | ((x >> 13) & 0x3ff));
    }
    if (x >= 0x477ff000u) /* >= 65520 rounds to infinity under round-to-nearest-even */
        return sign | 0x7c00;
    if (x < 0x38800000u) {
        /* below the smallest normal (2^-14): round to a multiple of 2^-24.
         * Scaling by 2^24 is exact; nearbyintf rounds half to even. A result
         * of 1024 is correctly the smallest normal's encoding. */
        float v = nearbyintf(bits_f32(x) * 0x1p24f);
        return (uint16_t)(sign | (uint16_t)v);
    }
    /* normal: rebias the exponent, round the 13 dropped mantissa bits to
     * nearest even; a carry into the exponent is the right answer. */
    uint32_t r = (x - 0x38000000u + 0xfffu + ((x >> 13) & 1u)) >> 13;
    return (uint16_t)(sign | r);
}

float quant_bf16_to_fp32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t quant_fp32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40); /* quiet NaN, never rounds to inf */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

#define FP16(h) quant_fp16_to_fp32(h)

/* ---- dequantisation ---------------------------------------------------- */

static void dequant_q4_0(const block_q4_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[i * QK4_0 + j] = ((b[i].qs[j] & 0xF) - 8) * d;
            y[i * QK4_0 + j + QK4_0 / 2] = ((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const block_q4_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d), m = FP16(b[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[i * QK4_1 + j] = (b[i].qs[j] & 0xF) * d + m;
            y[i * QK4_1 + j + QK4_1 / 2] = (b[i].qs[j] >> 4) * d + m;
        }
    }
}

/* The fifth bit of element j lives in bit j of the little-endian qh word. */
static inline uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static void dequant_q5_0(const block_q5_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            int x0 = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int x1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[i * QK5_0 + j] = (x0 - 16) * d;
            y[i * QK5_0 + j + QK5_0 / 2] = (x1 - 16) * d;
        }
    }
}

static void dequant_q5_1(const block_q5_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d), m = FP16(b[i].m);
        uint32_t qh = load_qh(b[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            int x0 = (b[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int x1 = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            y[i * QK5_1 + j] = x0 * d + m;
            y[i * QK5_1 + j + QK5_1 / 2] = x1 * d + m;
        }
    }
}

static void dequant_q8_0(const block_q8_0 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        for (int j = 0; j < QK8_0; j++)
            y[i * QK8_0 + j] = b[i].qs[j] * d;
    }
}

static void dequant_q8_1(const block_q8_1 *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        for (int j = 0; j < QK8_1; j++)
            y[i * QK8_1 + j] = b[i].qs[j] * d;
    }
}

static void dequant_q2_K(const block_q2_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d), dmin = FP16(b[i].dmin);
        const uint8_t *q = b[i].qs;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++) {
                    uint8_t sc = b[i].scales[is++];
                    float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
                }
            }
            q += 32;
        }
    }
}

/* Unpack Q3_K's twelve bytes into sixteen 6-bit scales (biased by 32). */
static void q3_K_scales(const uint8_t s[12], int8_t out[16])
{
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        int hi = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

static void dequant_q3_K(const block_q3_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        int8_t sc[16];
        q3_K_scales(b[i].scales, sc);
        const uint8_t *q = b[i].qs;
        uint8_t m = 1;
        int is = 0;
        for (int n = 0; n < QK_K; n += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++) {
                    float dl = d * sc[is++];
                    for (int l = 0; l < 16; l++) {
                        int k = l + 16 * half;
                        int v = ((q[k] >> shift) & 3) - ((b[i].hmask[k] & m) ? 0 : 4);
                        *y++ = dl * v;
                    }
                }
                m <<= 1;
            }
            q += 32;
        }
    }
}

static void dequant_q4_K(const block_q4_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d), dmin = FP16(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K / 64; j++) {
            uint8_t sc, m;
            quant__get_scale_min_k4(2 * j, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            quant__get_scale_min_k4(2 * j + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
        }
    }
}

static void dequant_q5_K(const block_q5_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d), dmin = FP16(b[i].dmin);
        const uint8_t *ql = b[i].qs, *qh = b[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K / 64; j++) {
            uint8_t sc, m;
            quant__get_scale_min_k4(2 * j, b[i].scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            quant__get_scale_min_k4(2 * j + 1, b[i].scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

/* Q6_K element k of a 128-element half: 4 low bits from ql, 2 high from qh. */
static inline int q6_K_value(const uint8_t *ql, const uint8_t *qh, int k)
{
    int l = k % 32, part = k / 32; /* part 0..3 */
    int lo = (part & 1) ? ql[l + 32] : ql[l];
    lo = (part & 2) ? lo >> 4 : lo & 0xF;
    int hi = (qh[l] >> (2 * part)) & 3;
    return (lo | (hi << 4)) - 32;
}

static void dequant_q6_K(const block_q6_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = FP16(b[i].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b[i].ql + 64 * h, *qh = b[i].qh + 32 * h;
            for (int k = 0; k < 128; k++)
                *y++ = d * b[i].scales[8 * h + k / 16] * q6_K_value(ql, qh, k);
        }
    }
}

static void dequant_q8_K(const block_q8_K *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < QK_K; j++)
            *y++ = b[i].d * b[i].qs[j];
}

void quant_dequantize_row(enum qk_type t, const void *src, float *dst, int64_t n)
{
    const qk_type_traits *tr = quant_traits((uint32_t)t);
    if (tr == NULL || n <= 0 || n % tr->block_size != 0) {
        if (n > 0)
            memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    int64_t nb = n / tr->block_size;
    /* Prompt processing dequantises whole weight tiles: SIMD when present. */
    const quant__kernels *k = kernels_get();
    if (k->dequant[t]) {
        k->dequant[t](src, dst, n);
        return;
    }
    switch (t) {
    case QK_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case QK_F16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = quant_fp16_to_fp32(h[i]);
        break;
    }
    case QK_BF16: {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = quant_bf16_to_fp32(h[i]);
        break;
    }
    case QK_Q4_0: dequant_q4_0(src, dst, nb); break;
    case QK_Q4_1: dequant_q4_1(src, dst, nb); break;
    case QK_Q5_0: dequant_q5_0(src, dst, nb); break;
    case QK_Q5_1: dequant_q5_1(src, dst, nb); break;
    case QK_Q8_0: dequant_q8_0(src, dst, nb); break;
    case QK_Q8_1: dequant_q8_1(src, dst, nb); break;
    case QK_Q2_K: dequant_q2_K(src, dst, nb); break;
    case QK_Q3_K: dequant_q3_K(src, dst, nb); break;
    case QK_Q4_K: dequant_q4_K(src, dst, nb); break;
    case QK_Q5_K: dequant_q5_K(src, dst, nb); break;
    case QK_Q6_K: dequant_q6_K(src, dst, nb); break;
    case QK_Q8_K: dequant_q8_K(src, dst, nb); break;
    default: memset(dst, 0, (size_t)n * sizeof(float)); break;
    }
}

/* ---- quantisation (reference) ------------------------------------------ */

/* Round to nearest, ties to even, as ggml's nearest_int (for |x| < 2^22). */
static inline int nearest_int(float fval)
{
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static void quantize_q4_0(const float *x, block_q4_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_0) {
        /* scale from the signed value of largest magnitude, so it maps to -8 */
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        float d = max / -8, id = d ? 1.0f / d : 0.0f;
        b[i].d = quant_fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            int q0 = (int)(int8_t)(x[j] * id + 8.5f), q1 = (int)(int8_t)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, block_q4_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK4_1) {
        float min = x[0], max = x[0];
        for (int j = 1; j < QK4_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        b[i].d = quant_fp32_to_fp16(d);
        b[i].m = quant_fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; j++) {
            int q0 = (int)(int8_t)((x[j] - min) * id + 0.5f), q1 = (int)(int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            b[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void store_qh(uint8_t qh[4], uint32_t v)
{
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(v >> (8 * k));
}

static void quantize_q5_0(const float *x, block_q5_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        float d = max / -16, id = d ? 1.0f / d : 0.0f;
        b[i].d = quant_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            int q0 = (int)(int8_t)(x[j] * id + 16.5f), q1 = (int)(int8_t)(x[j + 16] * id + 16.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            b[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        store_qh(b[i].qh, qh);
    }
}

static void quantize_q5_1(const float *x, block_q5_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK5_1) {
        float min = x[0], max = x[0];
        for (int j = 1; j < QK5_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
        b[i].d = quant_fp32_to_fp16(d);
        b[i].m = quant_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            int q0 = (int)(int8_t)((x[j] - min) * id + 0.5f), q1 = (int)(int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 > 31 ? 31 : q0;
            q1 = q1 > 31 ? 31 : q1;
            b[i].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        store_qh(b[i].qh, qh);
    }
}

static void quantize_q8_0(const float *x, block_q8_0 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        b[i].d = quant_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++)
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quantize_q8_1(const float *x, block_q8_1 *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += b[i].qs[j];
        }
        b[i].d = quant_fp32_to_fp16(d);
        b[i].s = quant_fp32_to_fp16(sum * d);
    }
}

static void quantize_q8_K(const float *x, block_q8_K *b, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        if (amax == 0.0f) {
            memset(&b[i], 0, sizeof(b[i]));
            continue;
        }
        /* the extreme value maps to -127 exactly; the opposite side may reach 127 */
        float iscale = -127.f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            b[i].qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += b[i].qs[16 * j + l];
            b[i].bsums[j] = (int16_t)sum;
        }
        b[i].d = 1 / iscale;
    }
}

/* Fit x ~ scale * L + min (L in [0, nmax], min <= 0) minimising a weighted
 * squared error: start from the min/max grid, then try nstep+1 perturbed
 * grids and solve the 2x2 least-squares problem for each (ggml's
 * make_qkx2_quants). Returns the scale; *the_min receives -min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights,
                              uint8_t *L, float *the_min, uint8_t *Laux,
                              float rmin, float rdelta, int nstep)
{
    float min = x[0], max = x[0];
    float sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale;
    float best_err = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        best_err += weights[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                err += weights[i] * diff * diff;
            }
            if (err < best_err) {
                memcpy(L, Laux, (size_t)n);
                best_err = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Fit x ~ scale * (L - nmax) with L in [0, 2*nmax), weighting by x^2, trying
 * 19 grids around the absmax one (ggml's make_qx_quants, rmse_type 1). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < 1e-15f) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
                L[i] = (int8_t)(nmax + l);
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per 32-element sub-block
 * scale and min, stored as 6-bit multiples of the block's d and dmin; then
 * the levels are recomputed against those rounded scales. */
static void quantize_kx(const float *x, uint8_t L[QK_K], uint16_t *d_out, uint16_t *dmin_out,
                        uint8_t packed[K_SCALE_SIZE], int nmax)
{
    float mins[QK_K / 32], scales[QK_K / 32], weights[32];
    uint8_t Laux[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(xs[l]);
        if (nmax == 15)
            scales[j] = make_qkx2_quants(32, 15, xs, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20);
        else
            scales[j] = make_qkx2_quants(32, 31, xs, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(packed, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; j++) {
        int ls = nearest_int(inv_scale * scales[j]), lm = nearest_int(inv_min * mins[j]);
        ls = ls > 63 ? 63 : ls;
        lm = lm > 63 ? 63 : lm;
        if (j < 4) {
            packed[j] = (uint8_t)ls;
            packed[j + 4] = (uint8_t)lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = quant_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = quant_fp32_to_fp16(max_min / 63.f);
    float d = FP16(*d_out), dmin = FP16(*dmin_out);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        quant__get_scale_min_k4(j, packed, &sc, &m);
        float ds = d * sc;
        if (!ds) continue;
        float dm = dmin * m;
        for (int ii = 0; ii < 32; ii++) {
            int l = nearest_int((x[32 * j + ii] + dm) / ds);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        }
    }
}

static void quantize_q4_K(const float *x, block_q4_K *b, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_kx(x, L, &b[i].d, &b[i].dmin, b[i].scales, 15);
        uint8_t *q = b[i].qs;
        for (int j = 0; j < QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++)
                q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

static void quantize_q5_K(const float *x, block_q5_K *b, int64_t nb)
{
    uint8_t L[QK_K];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        quantize_kx(x, L, &b[i].d, &b[i].dmin, b[i].scales, 31);
        uint8_t *ql = b[i].qs, *qh = b[i].qh;
        memset(qh, 0, QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64, ql += 32) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

static void quantize_q6_K(const float *x, block_q6_K *b, int64_t nb)
{
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++) {
            scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < 1e-15f) {
            memset(&b[i], 0, sizeof(b[i]));
            continue;
        }
        float iscale = -128.f / max_scale;
        b[i].d = quant_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++) {
            int v = nearest_int(iscale * scales[ib]);
            b[i].scales[ib] = (int8_t)(v > 127 ? 127 : v);
        }
        float dd = FP16(b[i].d);
        for (int j = 0; j < QK_K / 16; j++) {
            float d = dd * b[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = l < -32 ? -32 : l > 31 ? 31 : l;
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        uint8_t *ql = b[i].ql, *qh = b[i].qh;
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                int q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

size_t quant_quantize_row(enum qk_type t, const float *src, void *dst, int64_t n)
{
    size_t bytes = quant_row_size(t, n);
    const qk_type_traits *tr = quant_traits((uint32_t)t);
    if (bytes == 0 || n <= 0)
        return 0;
    int64_t nb = n / tr->block_size;
    switch (t) {
    case QK_F32: memcpy(dst, src, (size_t)n * sizeof(float)); break;
    case QK_F16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = quant_fp32_to_fp16(src[i]);
        break;
    }
    case QK_BF16: {
        uint16_t *h = dst;
        for (int64_t i = 0; i < n; i++) h[i] = quant_fp32_to_bf16(src[i]);
        break;
    }
    case QK_Q4_0: quantize_q4_0(src, dst, nb); break;
    case QK_Q4_1: quantize_q4_1(src, dst, nb); break;
    case QK_Q5_0: quantize_q5_0(src, dst, nb); break;
    case QK_Q5_1: quantize_q5_1(src, dst, nb); break;
    case QK_Q8_0: quantize_q8_0(src, dst, nb); break;
    case QK_Q8_1: quantize_q8_1(src, dst, nb); break;
    case QK_Q4_K: quantize_q4_K(src, dst, nb); break;
    case QK_Q5_K: quantize_q5_K(src, dst, nb); break;
    case QK_Q6_K: quantize_q6_K(src, dst, nb); break;
    case QK_Q8_K: quantize_q8_K(src, dst, nb); break;
    default: return 0; /* Q2_K/Q3_K: read-only here */
    }
    return bytes;
}

/* ---- scalar dot products ----------------------------------------------- */

static float dot_f32(const void *w, const void *act, int64_t n)
{
    const float *x = w, *y = act;
    double sum = 0; /* reference: accumulate in double */
    for (int64_t i = 0; i < n; i++) sum += (double)x[i] * y[i];
    return (float)sum;
}

static float dot_f16(const void *w, const void *act, int64_t n)
{
    const uint16_t *x = w;
    const float *y = act;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)quant_fp16_to_fp32(x[i]) * y[i];
    return (float)sum;
}

static float dot_bf16(const void *w, const void *act, int64_t n)
{
    const uint16_t *x = w;
    const float *y = act;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)quant_bf16_to_fp32(x[i]) * y[i];
    return (float)sum;
}

static float dot_q4_0(const void *w, const void *act, int64_t n)
{
    const block_q4_0 *x = w;
    const block_q8_0 *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_0 / 2; j++)
            sumi += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
        sum += sumi * FP16(x[i].d) * FP16(y[i].d);
    }
    return sum;
}

static float dot_q4_1(const void *w, const void *act, int64_t n)
{
    const block_q4_1 *x = w;
    const block_q8_1 *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK4_1; i++) {
        int sumi = 0;
        for (int j = 0; j < QK4_1 / 2; j++)
            sumi += (x[i].qs[j] & 0xF) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16];
        /* sum_j (q_j d + m) y_j dy = d dy sumi + m * (dy sum_j y_j) = ... + m * s */
        sum += sumi * FP16(x[i].d) * FP16(y[i].d) + FP16(x[i].m) * FP16(y[i].s);
    }
    return sum;
}

static float dot_q5_0(const void *w, const void *act, int64_t n)
{
    const block_q5_0 *x = w;
    const block_q8_0 *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK5_0; i++) {
        uint32_t qh = load_qh(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            int x0 = ((x[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4)) - 16;
            int x1 = ((x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + 16];
        }
        sum += sumi * FP16(x[i].d) * FP16(y[i].d);
    }
    return sum;
}

static float dot_q5_1(const void *w, const void *act, int64_t n)
{
    const block_q5_1 *x = w;
    const block_q8_1 *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK5_1; i++) {
        uint32_t qh = load_qh(x[i].qh);
        int sumi = 0;
        for (int j = 0; j < QK5_1 / 2; j++) {
            int x0 = (x[i].qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
            int x1 = (x[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            sumi += x0 * y[i].qs[j] + x1 * y[i].qs[j + 16];
        }
        sum += sumi * FP16(x[i].d) * FP16(y[i].d) + FP16(x[i].m) * FP16(y[i].s);
    }
    return sum;
}

static float dot_q8_0(const void *w, const void *act, int64_t n)
{
    const block_q8_0 *x = w;
    const block_q8_0 *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int sumi = 0;
        for (int j = 0; j < QK8_0; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sum += sumi * FP16(x[i].d) * FP16(y[i].d);
    }
    return sum;
}

/* Q4_K/Q5_K: sum_sub (d sc_j sum q y - dmin m_j sum y) * dy, where sum y per
 * 32-element sub-block comes from the activation's bsums. */
static float dot_q4_K(const void *w, const void *act, int64_t n)
{
    const block_q4_K *x = w;
    const block_q8_K *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *q = x[i].qs;
        const int8_t *a = y[i].qs;
        int sumi = 0, summ = 0;
        for (int j = 0; j < QK_K / 64; j++, q += 32, a += 64) {
            uint8_t sc1, m1, sc2, m2;
            quant__get_scale_min_k4(2 * j, x[i].scales, &sc1, &m1);
            quant__get_scale_min_k4(2 * j + 1, x[i].scales, &sc2, &m2);
            int s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += (q[l] & 0xF) * a[l];
                s2 += (q[l] >> 4) * a[l + 32];
            }
            sumi += sc1 * s1 + sc2 * s2;
            summ += m1 * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) +
                    m2 * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
        }
        sum += y[i].d * (FP16(x[i].d) * sumi - FP16(x[i].dmin) * summ);
    }
    return sum;
}

static float dot_q5_K(const void *w, const void *act, int64_t n)
{
    const block_q5_K *x = w;
    const block_q8_K *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const int8_t *a = y[i].qs;
        int sumi = 0, summ = 0;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K / 64; j++, ql += 32, a += 64) {
            uint8_t sc1, m1, sc2, m2;
            quant__get_scale_min_k4(2 * j, x[i].scales, &sc1, &m1);
            quant__get_scale_min_k4(2 * j + 1, x[i].scales, &sc2, &m2);
            int s1 = 0, s2 = 0;
            for (int l = 0; l < 32; l++) {
                s1 += ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) * a[l];
                s2 += ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) * a[l + 32];
            }
            sumi += sc1 * s1 + sc2 * s2;
            summ += m1 * (y[i].bsums[4 * j] + y[i].bsums[4 * j + 1]) +
                    m2 * (y[i].bsums[4 * j + 2] + y[i].bsums[4 * j + 3]);
            u1 <<= 2;
            u2 <<= 2;
        }
        sum += y[i].d * (FP16(x[i].d) * sumi - FP16(x[i].dmin) * summ);
    }
    return sum;
}

static float dot_q6_K(const void *w, const void *act, int64_t n)
{
    const block_q6_K *x = w;
    const block_q8_K *y = act;
    float sum = 0;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int sumi = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *a = y[i].qs + 128 * h;
            for (int s = 0; s < 8; s++) {
                int ss = 0;
                for (int k = 16 * s; k < 16 * s + 16; k++)
                    ss += q6_K_value(ql, qh, k) * a[k];
                sumi += x[i].scales[8 * h + s] * ss;
            }
        }
        sum += FP16(x[i].d) * y[i].d * sumi;
    }
    return sum;
}

/* Q2_K/Q3_K are not supported for compute: their entries stay NULL. */

static void act_q8_0(const float *x, void *dst, int64_t n) { quantize_q8_0(x, dst, n / QK8_0); }
static void act_q8_1(const float *x, void *dst, int64_t n) { quantize_q8_1(x, dst, n / QK8_1); }
static void act_q8_K(const float *x, void *dst, int64_t n) { quantize_q8_K(x, dst, n / QK_K); }

/* ---- dispatch ---------------------------------------------------------- */

static int force_scalar;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void fill_scalar(quant__kernels *k)
{
    memset(k, 0, sizeof(*k));
    k->name = "scalar";
    k->dot[QK_F32] = dot_f32;
    k->dot[QK_F16] = dot_f16;
    k->dot[QK_BF16] = dot_bf16;
    k->dot[QK_Q4_0] = dot_q4_0;
    k->dot[QK_Q4_1] = dot_q4_1;
    k->dot[QK_Q5_0] = dot_q5_0;
    k->dot[QK_Q5_1] = dot_q5_1;
    k->dot[QK_Q8_0] = dot_q8_0;
    k->dot[QK_Q4_K] = dot_q4_K;
    k->dot[QK_Q5_K] = dot_q5_K;
    k->dot[QK_Q6_K] = dot_q6_K;
    k->act[QK_Q8_0] = act_q8_0;
    k->act[QK_Q8_1] = act_q8_1;
    k->act[QK_Q8_K] = act_q8_K;
}

static void init_kernels(void)
{
    fill_scalar(&kernels_scalar);
    kernels_simd = kernels_scalar;
    __builtin_cpu_init();
    /* F16C is CPUID.1:ECX bit 29 (clang's __builtin_cpu_supports lacks it);
     * "avx2" also covers the OS saving the ymm state. */
    unsigned int eax, ebx, ecx = 0, edx;
    int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
    /* QKVD_KERNELS=scalar|avx2 caps the kernel set (to rule a SIMD path in
     * or out when results look wrong on some machine, and for benchmarks). */
    const char *cap = getenv("QKVD_KERNELS");
    int max_level = 2; /* 0 scalar, 1 avx2, 2 avx512vnni */
    if (cap && strcmp(cap, "scalar") == 0)
        max_level = 0;
    else if (cap && strcmp(cap, "avx2") == 0)
        max_level = 1;
    if (max_level >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) {
        quant__avx2_fill(&kernels_simd);
        quant__avx2_gemm_fill(&kernels_simd);
        if (max_level >= 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            quant__avx512_fill(&kernels_simd);
    }
    __atomic_store_n(&kernels_active, force_scalar ? &kernels_scalar : &kernels_simd,
                     __ATOMIC_RELEASE);
}

void quant_init(void)
{
    pthread_once(&init_once, init_kernels);
}

const char *quant_kernel_name(void)
{
    quant_init();
    return __atomic_load_n(&kernels_active, __ATOMIC_ACQUIRE)->name;
}

void quant_force_scalar(int on)
{
    quant_init();
    force_scalar = on != 0;
    __atomic_store_n(&kernels_active, force_scalar ? &kernels_scalar : &kernels_simd,
                     __ATOMIC_RELEASE);
}

float quant_vec_dot(enum qk_type t, const void *w_row, const void *act, int64_t n)
{
    if ((uint32_t)t >= QK_TYPE_MAX || n <= 0 || quant_row_size(t, n) == 0)
        return 0.0f;
    quant__dot_fn f = kernels_get()->dot[t];
    return f ? f(w_row, act, n) : 0.0f;
}

void quant_prepare_act(enum qk_type t, const float *x, void *dst, int64_t n)
{
    const qk_type_traits *tr = quant_traits((uint32_t)t);
    if (tr == NULL || n <= 0 || quant_row_size(tr->vec_dot_type, n) == 0)
        return;
    if (tr->vec_dot_type == QK_F32) {
        if (dst != x)
            memcpy(dst, x, (size_t)n * sizeof(float));
        return;
    }
    quant__act_fn f = kernels_get()->act[tr->vec_dot_type];
    if (f)
        f(x, dst, n);
}

void quant_gemv_rows(enum qk_type t, const void *W, const void *act, float *y,
                     int64_t n, int64_t r0, int64_t r1)
{
    size_t rb = quant_row_size(t, n);
    if ((uint32_t)t >= QK_TYPE_MAX || rb == 0 || r1 <= r0 || r0 < 0)
        return;
    const quant__kernels *k = kernels_get();
    const uint8_t *base = (const uint8_t *)W + (size_t)r0 * rb;
    if (k->gemv[t]) {
        k->gemv[t](base, rb, act, y + r0, n, r1 - r0);
        return;
    }
    quant__dot_fn f = k->dot[t];
    for (int64_t r = r0; r < r1; r++, base += rb)
        y[r] = f ? f(base, act, n) : 0.0f;
}

void quant_gemm_rows(enum qk_type t, const void *W, const void *act, size_t act_stride, float *y,
                     size_t y_stride, int64_t n, int64_t r0, int64_t r1, int32_t ntok)
{
    size_t rb = quant_row_size(t, n);
    if ((uint32_t)t >= QK_TYPE_MAX || rb == 0 || r1 <= r0 || r0 < 0 || ntok <= 0)
        return;
    const quant__kernels *k = kernels_get();
    if (k->gemm[t] && ntok > 1) {
        k->gemm[t]((const uint8_t *)W + (size_t)r0 * rb, rb, act, act_stride, y + r0, y_stride, n,
                   r1 - r0, ntok);
        return;
    }
    for (int32_t i = 0; i < ntok; i++)
        quant_gemv_rows(t, W, (const uint8_t *)act + (size_t)i * act_stride, y + (size_t)i * y_stride,
                        n, r0, r1);
}

size_t quant_packed_act_size(enum qk_type t, int64_t n, int32_t ntok)
{
    const quant__kernels *k = kernels_get();
    if ((uint32_t)t >= QK_TYPE_MAX || !k->pack[t] || n <= 0 || n % 32 || ntok <= 0)
        return 0;
    /* the Q4_K/Q5_K kernel unpacks a row's block constants on the stack */
    if ((t == QK_Q4_K || t == QK_Q5_K) && (n % QK_K || n / QK_K > 64))
        return 0;
    /* Q8_K activations (Q4_K, Q5_K): a 192-byte record per group of four
     * tokens and 32-element block; Q8_0 (Q8_0, Q4_0, Q5_0): 320 bytes per
     * group of eight (gemm_avx2.c) */
    if (t == QK_Q4_K || t == QK_Q5_K)
        return (size_t)((ntok + 3) / 4) * (size_t)(n / 32) * 192;
    return (size_t)((ntok + 7) / 8) * (size_t)(n / 32) * 320;
}

void quant_pack_act(enum qk_type t, const void *act, size_t act_stride, int64_t n, int32_t ntok, void *dst)
{
    if (quant_packed_act_size(t, n, ntok) == 0)
        return;
    kernels_get()->pack[t](act, act_stride, n, ntok, dst);
}

void quant_gemm_packed(enum qk_type t, const void *W, const void *packed, float *y, size_t y_stride,
                       int64_t n, int64_t r0, int64_t r1, int32_t ntok)
{
    if (quant_packed_act_size(t, n, ntok) == 0 || r1 <= r0 || r0 < 0)
        return;
    size_t rb = quant_row_size(t, n);
    kernels_get()->gemmp[t]((const uint8_t *)W + (size_t)r0 * rb, rb, packed, y + r0, y_stride, n, r1 - r0,
                            ntok);
}
