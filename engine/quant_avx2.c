/* quant_avx2.c -- AVX2/FMA/F16C dot products and activation quantisers.
 *
 * Compiled with -mavx2 -mfma -mf16c; quant_init installs these only after
 * __builtin_cpu_supports saw all three. quant_avx512.c compiles this same
 * file again with QUANT_VNNI defined (and AVX-512 flags): the byte dot
 * products then use vpdpbusd, everything else is identical. Each kernel computes the same sum as
 * its scalar twin in quant.c (integer products per block, then one float
 * multiply-add per block), only the float summation order differs.
 *
 * Decode is memory-bound: each kernel streams its weight row once, keeps two
 * independent accumulator chains so FMA latency never stalls the loop, and
 * touches the activation row (hot in L1) freely. */
#include "quant_internal.h"
#include "simd_avx2.h"

#include <immintrin.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

/* Sum of products of unsigned bytes a and signed bytes b, 4 per int32 lane,
 * added to acc. With VNNI that is one vpdpbusd; on AVX2 maddubs + madd,
 * which cannot saturate here because every caller keeps
 * |a0*b0 + a1*b1| <= 2*128*127 < 32768. */
#ifdef QUANT_VNNI
static inline __m256i dpbusd(__m256i acc, __m256i a, __m256i b)
{
    return _mm256_dpbusd_epi32(acc, a, b);
}
#endif

static inline __m256i dot_us8(__m256i a, __m256i b)
{
#ifdef QUANT_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}

/* Signed x signed bytes: move x's sign onto y (maddubs wants one unsigned). */
static inline __m256i dot_ss8(__m256i x, __m256i y)
{
    return dot_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* ---- float weights ----------------------------------------------------- */

static float dot_f32(const void *w, const void *act, int64_t n)
{
    const float *x = w, *y = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += x[i] * y[i];
    return s;
}

static inline __m256 load_f16x8(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static float dot_f16(const void *w, const void *act, int64_t n)
{
    const uint16_t *x = w;
    const float *y = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16x8(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_f16x8(x + i), _mm256_loadu_ps(y + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += fp16_to_f32(x[i]) * y[i];
    return s;
}

static inline __m256 load_bf16x8(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_bf16(const void *w, const void *act, int64_t n)
{
    const uint16_t *x = w;
    const float *y = act;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16x8(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16x8(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16x8(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_bf16x8(x + i), _mm256_loadu_ps(y + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) {
        uint32_t u = (uint32_t)x[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        s += f * y[i];
    }
    return s;
}

/* ---- 32-element block types -------------------------------------------- */

/* Each block: integer dot as 8 int32 lanes -> float -> acc += d * that.
 * Two accumulators (even/odd blocks) hide the FMA latency. */

static float dot_q4_0(const void *w, const void *act, int64_t n)
{
    const block_q4_0 *x = w;
    const block_q8_0 *y = act;
    const int64_t nb = n / QK4_0;
    const __m256i off = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m256i qx0 = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        __m256i qx1 = _mm256_sub_epi8(nibbles_32(x[i + 1].qs), off);
        __m256i p0 = dot_ss8(qx0, _mm256_loadu_si256((const __m256i *)y[i].qs));
        __m256i p1 = dot_ss8(qx1, _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        __m256 d0 = _mm256_set1_ps(fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
        __m256 d1 = _mm256_set1_ps(fp16_to_f32(x[i + 1].d) * fp16_to_f32(y[i + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        __m256i qx = _mm256_sub_epi8(nibbles_32(x[i].qs), off);
        __m256i p = dot_ss8(qx, _mm256_loadu_si256((const __m256i *)y[i].qs));
        __m256 d = _mm256_set1_ps(fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
        acc0 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

static float dot_q8_0(const void *w, const void *act, int64_t n)
{
    const block_q8_0 *x = w;
    const block_q8_0 *y = act;
    const int64_t nb = n / QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        __m256i p0 = dot_ss8(_mm256_loadu_si256((const __m256i *)x[i].qs),
                             _mm256_loadu_si256((const __m256i *)y[i].qs));
        __m256i p1 = dot_ss8(_mm256_loadu_si256((const __m256i *)x[i + 1].qs),
                             _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        __m256 d0 = _mm256_set1_ps(fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
        __m256 d1 = _mm256_set1_ps(fp16_to_f32(x[i + 1].d) * fp16_to_f32(y[i + 1].d));
        acc0 = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        __m256i p = dot_ss8(_mm256_loadu_si256((const __m256i *)x[i].qs),
                            _mm256_loadu_si256((const __m256i *)y[i].qs));
        __m256 d = _mm256_set1_ps(fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
        acc0 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc0);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

static inline __m256 q4_1_block(const block_q4_1 *x, const block_q8_1 *y, __m256 acc)
{
    __m256i p = dot_us8(nibbles_32(x->qs), _mm256_loadu_si256((const __m256i *)y->qs));
    __m256 d = _mm256_set1_ps(fp16_to_f32(x->d) * fp16_to_f32(y->d));
    return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
}

static float dot_q4_1(const void *w, const void *act, int64_t n)
{
    const block_q4_1 *x = w;
    const block_q8_1 *y = act;
    const int64_t nb = n / QK4_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs = 0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = q4_1_block(&x[i], &y[i], acc0);
        acc1 = q4_1_block(&x[i + 1], &y[i + 1], acc1);
        summs += fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s) + fp16_to_f32(x[i + 1].m) * fp16_to_f32(y[i + 1].s);
    }
    for (; i < nb; i++) {
        acc0 = q4_1_block(&x[i], &y[i], acc0);
        summs += fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + summs;
}

static inline __m256 q5_0_block(const block_q5_0 *x, const block_q8_0 *y, __m256 acc)
{
    /* (nibble | bit << 4) - 16 == nibble | (bit ? 0 : 0xF0) as int8 */
    __m256i hi = _mm256_andnot_si256(bits_32(x->qh), _mm256_set1_epi8((char)0xF0));
    __m256i qx = _mm256_or_si256(nibbles_32(x->qs), hi);
    __m256i p = dot_ss8(qx, _mm256_loadu_si256((const __m256i *)y->qs));
    __m256 d = _mm256_set1_ps(fp16_to_f32(x->d) * fp16_to_f32(y->d));
    return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
}

static float dot_q5_0(const void *w, const void *act, int64_t n)
{
    const block_q5_0 *x = w;
    const block_q8_0 *y = act;
    const int64_t nb = n / QK5_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = q5_0_block(&x[i], &y[i], acc0);
        acc1 = q5_0_block(&x[i + 1], &y[i + 1], acc1);
    }
    for (; i < nb; i++)
        acc0 = q5_0_block(&x[i], &y[i], acc0);
    return hsum_ps(_mm256_add_ps(acc0, acc1));
}

static inline __m256 q5_1_block(const block_q5_1 *x, const block_q8_1 *y, __m256 acc)
{
    __m256i hi = _mm256_and_si256(bits_32(x->qh), _mm256_set1_epi8(0x10));
    __m256i qx = _mm256_or_si256(nibbles_32(x->qs), hi);
    __m256i p = dot_us8(qx, _mm256_loadu_si256((const __m256i *)y->qs));
    __m256 d = _mm256_set1_ps(fp16_to_f32(x->d) * fp16_to_f32(y->d));
    return _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
}

static float dot_q5_1(const void *w, const void *act, int64_t n)
{
    const block_q5_1 *x = w;
    const block_q8_1 *y = act;
    const int64_t nb = n / QK5_1;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs = 0;
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = q5_1_block(&x[i], &y[i], acc0);
        acc1 = q5_1_block(&x[i + 1], &y[i + 1], acc1);
        summs += fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s) + fp16_to_f32(x[i + 1].m) * fp16_to_f32(y[i + 1].s);
    }
    for (; i < nb; i++) {
        acc0 = q5_1_block(&x[i], &y[i], acc0);
        summs += fp16_to_f32(x[i].m) * fp16_to_f32(y[i].s);
    }
    return hsum_ps(_mm256_add_ps(acc0, acc1)) + summs;
}

/* ---- K types ----------------------------------------------------------- */

/* min term: sum_j m_j * (sum of the 32 activations of sub-block j) */
static inline __m128 k_min_term(__m256i mins_and_scales, const int16_t *bsums)
{
    __m256i q8sums = _mm256_loadu_si256((const __m256i *)bsums);
    __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256(q8sums, 1));
    __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
    return _mm_cvtepi32_ps(prod);
}

static float dot_q4_K(const void *w, const void *act, int64_t n)
{
    const block_q4_K *x = w;
    const block_q8_K *y = act;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = -y[i].d * fp16_to_f32(x[i].dmin);
        __m256i ms = k4_scales_mins(x[i].scales);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), k_min_term(ms, y[i].bsums), acc_m);
        __m256i sc = _mm256_permute2x128_si256(ms, ms, 0x00); /* scales in both halves */
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < QK_K / 64; j++, q4 += 32, q8 += 64) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)q4);
            __m256i lo = _mm256_and_si256(bits, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            pl = _mm256_madd_epi16(bcast16(sc, 2 * j), pl);
            ph = _mm256_madd_epi16(bcast16(sc, 2 * j + 1), ph);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    __m128 m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return hsum_ps(acc) + _mm_cvtss_f32(m);
}

static float dot_q5_K(const void *w, const void *act, int64_t n)
{
    const block_q5_K *x = w;
    const block_q8_K *y = act;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = -y[i].d * fp16_to_f32(x[i].dmin);
        __m256i ms = k4_scales_mins(x[i].scales);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), k_min_term(ms, y[i].bsums), acc_m);
        __m256i sc = _mm256_permute2x128_si256(ms, ms, 0x00);
        const uint8_t *q5 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].qh);
        __m256i hmask = _mm256_set1_epi8(1);
        __m256i sumi = _mm256_setzero_si256();
        int bit = 0;
#pragma GCC unroll 4
        for (int j = 0; j < QK_K / 64; j++, q5 += 32, q8 += 64) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)q5);
            /* isolate bit `bit` of each qh byte, move it to bit 4 */
            __m256i h0 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit), 4);
            hmask = _mm256_slli_epi16(hmask, 1);
            bit++;
            __m256i h1 = _mm256_slli_epi16(_mm256_srli_epi16(_mm256_and_si256(hbits, hmask), bit), 4);
            hmask = _mm256_slli_epi16(hmask, 1);
            bit++;
            __m256i lo = _mm256_add_epi8(_mm256_and_si256(bits, m4), h0);
            __m256i hi = _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), h1);
            __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)q8));
            __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            pl = _mm256_madd_epi16(bcast16(sc, 2 * j), pl);
            ph = _mm256_madd_epi16(bcast16(sc, 2 * j + 1), ph);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    __m128 m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return hsum_ps(acc) + _mm_cvtss_f32(m);
}

/* Scales of 16-element sub-blocks 2k and 2k+1 as int16: 8 lanes each. */
static inline __m256i q6_scale_pair(__m128i scales, int k)
{
    const __m128i shuf = _mm_set_epi64x(0x0101010101010101ll * (2 * k + 1), 0x0101010101010101ll * (2 * k));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuf));
}

/* The 128 six-bit quants of one half of a Q6_K block (64 bytes of low
 * nibbles at ql, 32 bytes of high bit pairs at qh) as 4 x 32 unsigned bytes
 * 0..63, in the order the block's scales run. Shared by every Q6_K kernel
 * in this file. m4 = 0x0f bytes, m2 = 0x03 bytes. */
static inline void q6k_unpack(const uint8_t *ql, const uint8_t *qh, __m256i m4, __m256i m2, __m256i q[4]) {
    __m256i b1 = _mm256_loadu_si256((const __m256i *)ql);
    __m256i b2 = _mm256_loadu_si256((const __m256i *)(ql + 32));
    __m256i bh = _mm256_loadu_si256((const __m256i *)qh);
    /* Bit pair p of each qh byte lands in bits 4-5 with one shift and one
     * AND by 0x30 (bits a 16-bit shift carries in from the neighbouring
     * byte fall outside the mask): 4 fewer operations than shifting the
     * pair down, masking by 3 and shifting it up. */
    const __m256i m30 = _mm256_slli_epi16(m2, 4);
    q[0] = _mm256_or_si256(_mm256_and_si256(b1, m4), _mm256_and_si256(_mm256_slli_epi16(bh, 4), m30));
    q[1] = _mm256_or_si256(_mm256_and_si256(b2, m4), _mm256_and_si256(_mm256_slli_epi16(bh, 2), m30));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), _mm256_and_si256(bh, m30));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(bh, 2), m30));
}

static float dot_q6_K(const void *w, const void *act, int64_t n)
{
    const block_q6_K *x = w;
    const block_q8_K *y = act;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16_to_f32(x[i].d);
        const __m128i scales = _mm_loadu_si128((const __m128i *)x[i].scales);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int j = 0; j < 2; j++, ql += 64, qh += 32, q8 += 128) {
            __m256i q[4];
            q6k_unpack(ql, qh, m4, m2, q);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                __m256i a = _mm256_loadu_si256((const __m256i *)(q8 + 32 * k));
                /* (q - 32) * a  ==  q * a - 32 * a, both without saturation */
                __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], a), _mm256_maddubs_epi16(m32, a));
                p = _mm256_madd_epi16(q6_scale_pair(scales, 4 * j + k), p);
                sumi = _mm256_add_epi32(sumi, p);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}


/* ---- multi-row gemv ---------------------------------------------------- */

/* Four rows of a 32-element 4/5-bit type against one Q8_0/Q8_1 activation
 * row, two blocks per step. A ymm holds the 16 packed bytes of block i (low
 * lane) and i+1 (high lane), so one AND gives both blocks' low nibbles and
 * one shift+AND their high nibbles; the activations are permuted once to
 * match. The quants are used unsigned (0..15 or 0..31), so maddubs needs no
 * sign juggling; Q4_0/Q5_0's offset becomes -off * sum(qy), computed once
 * for the four rows, as are the activation loads and scales, and the
 * eight weight scales of a step are converted together. Q4_1/Q5_1 add
 * m * s per block. Four independent accumulators hide the FMA latency.
 *
 * The layouts differ only in field offsets, so one always-inline body is
 * specialised per type by constant arguments. */
static inline __m256i load_2x16(const uint8_t *a, const uint8_t *b)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
                                   _mm_loadu_si128((const __m128i *)b), 1);
}


/* The four rows of a group are contiguous, so the group is a linear run of
 * 4*rb bytes read through four interleaved pointers. The hardware
 * prefetcher does not follow that well (576- to 4096-column Q4_0/Q8_0
 * matrices streamed 1.5-3x slower from L3/DRAM than a row-by-row loop), so
 * the kernels prefetch the next group linearly, `bytes` per step, at the
 * rate the current group is consumed; with it the 4-row kernels beat the
 * row loop at every shape measured. Prefetches never fault, so running past
 * the end of the matrix is harmless. Inline asm because GCC 12 deleted the
 * _mm_prefetch calls inside the always-inline kernel below. */
static inline void prefetch_run(const uint8_t *p, int bytes)
{
    for (int o = 0; o < bytes; o += 64)
        __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)(p + o)));
}

/* Where the prefetch of a 4-row group starts: whole groups ahead, at least
 * ~3 KiB, so that enough lines are in flight to cover the memory latency
 * at a core's share of the bandwidth. One group (1.3 KiB for a 576-column
 * Q4_0 row) was too close: 2-3 groups read 576-column Q4_0 10-15% faster
 * from DRAM with 2 threads (noisy shared machine, best of 5). */
static inline const uint8_t *prefetch_start(const uint8_t *W, size_t rb)
{
    return W + 4 * rb * (1 + 3072 / (4 * rb));
}

/* The scales of blocks i and i+1 of the four rows, times the activation
 * scales: [r0b0 r0b1 r1b0 r1b1 r2b0 r2b1 r3b0 r3b1]. One fp16 convert and
 * one multiply for all eight; row k's pair is then one permute (d_row).
 * Per row that is 2 uops where converting each pair apart took 7. */
static inline __m256 d_rows4(const uint8_t *W, size_t rb, size_t bs, int64_t i, __m256 dy8)
{
    const uint8_t *b = W + (size_t)i * bs;
    __m128i h = _mm_cvtsi32_si128(ld16(b));
    h = _mm_insert_epi16(h, ld16(b + bs), 1);
    h = _mm_insert_epi16(h, ld16(b + rb), 2);
    h = _mm_insert_epi16(h, ld16(b + rb + bs), 3);
    h = _mm_insert_epi16(h, ld16(b + 2 * rb), 4);
    h = _mm_insert_epi16(h, ld16(b + 2 * rb + bs), 5);
    h = _mm_insert_epi16(h, ld16(b + 3 * rb), 6);
    h = _mm_insert_epi16(h, ld16(b + 3 * rb + bs), 7);
    return _mm256_mul_ps(_mm256_cvtph_ps(h), dy8);
}

/* Row k's two block scales from d_rows4: block i in the low lane, i+1 in the high. */
static inline __m256 d_row(__m256 d8, int k)
{
    return _mm256_permutevar8x32_ps(d8, _mm256_setr_epi32(2 * k, 2 * k, 2 * k, 2 * k, 2 * k + 1, 2 * k + 1,
                                                          2 * k + 1, 2 * k + 1));
}

/* The 5th bits of two Q5 blocks (qh words h0, h1) as 0x10 bytes, in the
 * lane layout of gemv4_small: *lo gets elements 0..15 of block i (low lane)
 * and of block i+1 (high lane), *hi elements 16..31. The 64 bits are
 * broadcast once and each half is one byte shuffle + test (13 uops for the
 * pair, against 20 expanding each 32-bit word apart). */
static inline void q5_hbits2(uint32_t h0, uint32_t h1, __m256i *lo, __m256i *hi)
{
    const __m256i v = _mm256_broadcastq_epi64(_mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1));
    const __m256i bm = _mm256_set1_epi64x(0x8040201008040201ll), b4 = _mm256_set1_epi8(0x10);
    const __m256i cl = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                        4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5);
    const __m256i ch = _mm256_setr_epi8(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
                                        6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7);
    __m256i l = _mm256_and_si256(_mm256_shuffle_epi8(v, cl), bm);
    __m256i h = _mm256_and_si256(_mm256_shuffle_epi8(v, ch), bm);
    *lo = _mm256_and_si256(_mm256_cmpeq_epi8(l, bm), b4);
    *hi = _mm256_and_si256(_mm256_cmpeq_epi8(h, bm), b4);
}

/* The quants of two Q4_0 (qh_off < 0) or Q5_0 blocks b0, b1 as unsigned
 * bytes in gemv4_small's lane layout: *lo elements 0..15 of b0 (low lane)
 * and b1 (high lane), *hi elements 16..31. */
static inline __attribute__((always_inline)) void q45_quants2(const uint8_t *b0, const uint8_t *b1, int qs_off, int qh_off, __m256i *lo,
                               __m256i *hi)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i v = load_2x16(b0 + qs_off, b1 + qs_off);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (qh_off >= 0) {
        __m256i hl, hh;
        q5_hbits2(ld32(b0 + qh_off), ld32(b1 + qh_off), &hl, &hh);
        *lo = _mm256_or_si256(*lo, hl);
        *hi = _mm256_or_si256(*hi, hh);
    }
}

/* bs: block bytes; qs_off/qh_off (-1: none)/m_off (-1: none): field offsets;
 * off: the type's zero point (8, 16 or 0); ybs/yqs_off: activation block.
 * Every type has its fp16 scale d first. */
static inline __attribute__((always_inline)) void
gemv4_small(const uint8_t *W, size_t rb, const uint8_t *y, float *out, int64_t nb,
            const int bs, const int qs_off, const int qh_off, const int m_off, const int off,
            const int ybs, const int yqs_off)
{
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    float summ[4] = { 0, 0, 0, 0 };
    int64_t i = 0;
    const uint8_t *next = prefetch_start(W, rb);
    for (; i + 2 <= nb; i += 2) {
        prefetch_run(next + 4 * bs * i, 8 * bs);
        const uint8_t *yb0 = y + i * ybs, *yb1 = yb0 + ybs;
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(yb0 + yqs_off));
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(yb1 + yqs_off));
        __m256i qyl = _mm256_permute2x128_si256(y0, y1, 0x20); /* elements 0..15 of both */
        __m256i qyh = _mm256_permute2x128_si256(y0, y1, 0x31); /* elements 16..31 of both */
        __m256i corr = _mm256_setzero_si256();
        if (off) {
            const __m256i vo = _mm256_set1_epi8((char)off);
#ifdef QUANT_VNNI
            corr = dpbusd(dot_us8(vo, qyl), vo, qyh);      /* int32 lanes */
#else
            corr = _mm256_add_epi16(_mm256_maddubs_epi16(vo, qyl), _mm256_maddubs_epi16(vo, qyh)); /* int16 */
#endif
        }
        /* [dy0 dy1] repeated for the four rows */
        __m128 dyp = _mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(ld16(yb0)), ld16(yb1), 1));
        __m256 d8 = d_rows4(W, rb, bs, i, _mm256_setr_m128(_mm_movelh_ps(dyp, dyp), _mm_movelh_ps(dyp, dyp)));
        float s0 = 0, s1 = 0;
        if (m_off >= 0) {
            s0 = fp16_to_f32(ld16(yb0 + 2));
            s1 = fp16_to_f32(ld16(yb1 + 2));
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const uint8_t *b0 = W + (size_t)k * rb + i * bs, *b1 = b0 + bs;
            __m256i lo, hi;
            q45_quants2(b0, b1, qs_off, qh_off, &lo, &hi);
#ifdef QUANT_VNNI
            __m256i p = dpbusd(dot_us8(lo, qyl), hi, qyh);
            if (off)
                p = _mm256_sub_epi32(p, corr);
#else
            /* int16 sums stay below 2 * 2*31*127 + 8128 < 32768 */
            __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, qyl), _mm256_maddubs_epi16(hi, qyh));
            if (off)
                p = _mm256_sub_epi16(p, corr);
            p = _mm256_madd_epi16(p, _mm256_set1_epi16(1));
#endif
            acc[k] = _mm256_fmadd_ps(d_row(d8, k), _mm256_cvtepi32_ps(p), acc[k]);
            if (m_off >= 0)
                summ[k] += fp16_to_f32(ld16(b0 + m_off)) * s0 + fp16_to_f32(ld16(b1 + m_off)) * s1;
        }
    }
    for (int k = 0; k < 4; k++)
        out[k] = hsum_ps(acc[k]) + summ[k];
}

#ifdef QUANT_VNNI
static void gemv4_q4_0(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb)
{
    gemv4_small(W, rb, y, out, nb, sizeof(block_q4_0), offsetof(block_q4_0, qs), -1, -1, 8,
                sizeof(block_q8_0), offsetof(block_q8_0, qs));
}
#else
/* Q4_0 and Q5_0 on AVX2: as gemv4_small, but the four rows' int16 sums
 * fold with three hadds before widening, so one madd, one convert and one
 * FMA serve the four rows (lanes r of the low half: row r's block i, of the
 * high half its block i+1) and one accumulator replaces four (1.1-1.2x
 * from L2). Bounds: Q4_0 folds the raw sums, 16 elements of 0..15 x |y| <=
 * 127 <= 30480, and subtracts the zero point (8 * sum(y), shared by the
 * rows) once after widening; Q5_0's raw sums could reach 63008, so each row
 * subtracts 16 * sum(y) first and 16 elements of |q - 16| <= 16 stay
 * <= 32512. (Activations are quantised to |y| <= 127.) */
static inline __attribute__((always_inline)) void
gemv4_fold(const uint8_t *W, size_t rb, const uint8_t *y, float *out, int64_t nb, const int bs, const int qs_off,
           const int qh_off, const int off)
{
    const size_t ybs = sizeof(block_q8_0);
    const __m256i ones = _mm256_set1_epi16(1), vo = _mm256_set1_epi8((char)off);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    const uint8_t *next = prefetch_start(W, rb);
    for (; i + 2 <= nb; i += 2) {
        prefetch_run(next + 4 * (size_t)bs * i, 8 * bs);
        const uint8_t *yb0 = y + i * ybs, *yb1 = yb0 + ybs;
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(yb0 + offsetof(block_q8_0, qs)));
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(yb1 + offsetof(block_q8_0, qs)));
        __m256i qyl = _mm256_permute2x128_si256(y0, y1, 0x20);
        __m256i qyh = _mm256_permute2x128_si256(y0, y1, 0x31);
        /* off * sum(y) per 4 elements (int16) */
        __m256i corr = _mm256_add_epi16(_mm256_maddubs_epi16(vo, qyl), _mm256_maddubs_epi16(vo, qyh));
        /* weight scales in the order [r0b0 r1b0 r2b0 r3b0 | r0b1 r1b1 r2b1 r3b1] */
        const uint8_t *b = W + (size_t)i * bs;
        __m128i h = _mm_cvtsi32_si128(ld16(b));
        h = _mm_insert_epi16(h, ld16(b + rb), 1);
        h = _mm_insert_epi16(h, ld16(b + 2 * rb), 2);
        h = _mm_insert_epi16(h, ld16(b + 3 * rb), 3);
        h = _mm_insert_epi16(h, ld16(b + bs), 4);
        h = _mm_insert_epi16(h, ld16(b + rb + bs), 5);
        h = _mm_insert_epi16(h, ld16(b + 2 * rb + bs), 6);
        h = _mm_insert_epi16(h, ld16(b + 3 * rb + bs), 7);
        __m256 dy = _mm256_setr_m128(_mm_set1_ps(fp16_to_f32(ld16(yb0))), _mm_set1_ps(fp16_to_f32(ld16(yb1))));
        __m256 d = _mm256_mul_ps(_mm256_cvtph_ps(h), dy);
        __m256i p[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const uint8_t *b0 = b + (size_t)k * rb, *b1 = b0 + bs;
            __m256i lo, hi;
            q45_quants2(b0, b1, qs_off, qh_off, &lo, &hi);
            p[k] = _mm256_add_epi16(_mm256_maddubs_epi16(lo, qyl), _mm256_maddubs_epi16(hi, qyh));
            if (qh_off >= 0)
                p[k] = _mm256_sub_epi16(p[k], corr);
        }
        __m256i sum = _mm256_madd_epi16(
            _mm256_hadd_epi16(_mm256_hadd_epi16(p[0], p[1]), _mm256_hadd_epi16(p[2], p[3])), ones);
        if (qh_off < 0) {
            /* the block's whole zero-point term in all four lanes of its half */
            __m256i c = _mm256_madd_epi16(corr, ones);
            c = _mm256_hadd_epi32(c, c);
            sum = _mm256_sub_epi32(sum, _mm256_hadd_epi32(c, c));
        }
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), acc);
    }
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

static void gemv4_q4_0(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb)
{
    gemv4_fold(W, rb, y, out, nb, sizeof(block_q4_0), offsetof(block_q4_0, qs), -1, 8);
}
#endif

static void gemv4_q4_1(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb)
{
    gemv4_small(W, rb, y, out, nb, sizeof(block_q4_1), offsetof(block_q4_1, qs), -1,
                offsetof(block_q4_1, m), 0, sizeof(block_q8_1), offsetof(block_q8_1, qs));
}

static void gemv4_q5_0(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb)
{
#ifdef QUANT_VNNI
    gemv4_small(W, rb, y, out, nb, sizeof(block_q5_0), offsetof(block_q5_0, qs),
                offsetof(block_q5_0, qh), -1, 16, sizeof(block_q8_0), offsetof(block_q8_0, qs));
#else
    gemv4_fold(W, rb, y, out, nb, sizeof(block_q5_0), offsetof(block_q5_0, qs), offsetof(block_q5_0, qh), 16);
#endif
}

static void gemv4_q5_1(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb)
{
    gemv4_small(W, rb, y, out, nb, sizeof(block_q5_1), offsetof(block_q5_1, qs),
                offsetof(block_q5_1, qh), offsetof(block_q5_1, m), 0,
                sizeof(block_q8_1), offsetof(block_q8_1, qs));
}

typedef void (*gemv4_fn)(const uint8_t *W, size_t rb, const void *y, float *out, int64_t nb);

/* Rows in fours through the 4-row kernel; an odd last block and leftover
 * rows go through the single-row dot (blk/ablk: weight/activation block
 * bytes, to find the last block). */
static inline void gemv_by4(gemv4_fn f4, quant__dot_fn dot, size_t blk, size_t ablk, const void *W,
                            size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    const uint8_t *w = W;
    const int64_t nb = n / 32;
    int64_t r = 0;
    for (; r + 4 <= nrows; r += 4) {
        f4(w + (size_t)r * rb, rb, act, y + r, nb);
        if (nb & 1)
            for (int k = 0; k < 4; k++)
                y[r + k] += dot(w + (size_t)(r + k) * rb + (size_t)(nb - 1) * blk,
                                (const uint8_t *)act + (size_t)(nb - 1) * ablk, 32);
    }
    for (; r < nrows; r++)
        y[r] = dot(w + (size_t)r * rb, act, n);
}

static void gemv_q4_0(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_by4(gemv4_q4_0, dot_q4_0, sizeof(block_q4_0), sizeof(block_q8_0), W, rb, act, y, n, nrows);
}

static void gemv_q4_1(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_by4(gemv4_q4_1, dot_q4_1, sizeof(block_q4_1), sizeof(block_q8_1), W, rb, act, y, n, nrows);
}

static void gemv_q5_0(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_by4(gemv4_q5_0, dot_q5_0, sizeof(block_q5_0), sizeof(block_q8_0), W, rb, act, y, n, nrows);
}

static void gemv_q5_1(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_by4(gemv4_q5_1, dot_q5_1, sizeof(block_q5_1), sizeof(block_q8_1), W, rb, act, y, n, nrows);
}

/* Rows in fours through a 4-row kernel that takes every block itself (nb
 * blocks per row), leftover rows through the single-row dot. */
static inline void gemv_rows4(gemv4_fn f4, quant__dot_fn dot, const void *W, size_t rb, const void *act, float *y,
                              int64_t nb, int64_t n, int64_t nrows)
{
    const uint8_t *w = W;
    int64_t r = 0;
    for (; r + 4 <= nrows; r += 4)
        f4(w + (size_t)r * rb, rb, act, y + r, nb);
    for (; r < nrows; r++)
        y[r] = dot(w + (size_t)r * rb, act, n);
}

/* Four Q8_0 rows, two blocks per step: per block, the four rows' 8-lane
 * integer sums fold into one vector with three hadds, so one convert and
 * one FMA serve the four rows (1.1x from L2 over folding per row). The
 * activation side is shared by the four rows: maddubs wants one
 * unsigned operand, so |y| is taken once and each row only moves y's sign
 * onto its quants (one vpsignb instead of two per block), and the eight
 * weight scales of a step are converted together (d_rows4). */
static void gemv4_q8_0(const uint8_t *W, size_t rb, const void *act, float *out, int64_t nb)
{
    const block_q8_0 *y = act;
    const size_t bs = sizeof(block_q8_0);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t i = 0;
    const uint8_t *next = prefetch_start(W, rb);
    for (; i + 2 <= nb; i += 2) {
        prefetch_run(next + 4 * bs * (size_t)i, 8 * (int)bs);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)y[i].qs);
        __m256i y1 = _mm256_loadu_si256((const __m256i *)y[i + 1].qs);
        __m256i u0 = _mm256_sign_epi8(y0, y0), u1 = _mm256_sign_epi8(y1, y1);
        __m128 dyp = _mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(y[i].d), y[i + 1].d, 1));
        __m256 d8 = d_rows4(W, rb, bs, i, _mm256_setr_m128(_mm_movelh_ps(dyp, dyp), _mm_movelh_ps(dyp, dyp)));
        /* Fold per block over the rows: hadd(hadd(r0, r1), hadd(r2, r3))
         * leaves row r's partial sums in lanes r and 4 + r. */
        __m256i p0[4], p1[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            const block_q8_0 *x = (const block_q8_0 *)(W + (size_t)k * rb) + i;
            __m256i x0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[0].qs), y0);
            __m256i x1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[1].qs), y1);
            p0[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(u0, x0), ones);
            p1[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(u1, x1), ones);
        }
        __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p0[0], p0[1]), _mm256_hadd_epi32(p0[2], p0[3]));
        __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p1[0], p1[1]), _mm256_hadd_epi32(p1[2], p1[3]));
        /* d8 is [r0b0 r0b1 r1b0 r1b1 ...]: rows' block-i scales, twice */
        __m256 dA = _mm256_permutevar8x32_ps(d8, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
        __m256 dB = _mm256_permutevar8x32_ps(d8, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7));
        a0 = _mm256_fmadd_ps(dA, _mm256_cvtepi32_ps(s0), a0);
        a1 = _mm256_fmadd_ps(dB, _mm256_cvtepi32_ps(s1), a1);
    }
    const block_q8_0 *x0 = (const block_q8_0 *)W, *x1 = (const block_q8_0 *)(W + rb);
    const block_q8_0 *x2 = (const block_q8_0 *)(W + 2 * rb), *x3 = (const block_q8_0 *)(W + 3 * rb);
    __m256 a = _mm256_add_ps(a0, a1);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)));
    if (i < nb) {
        out[0] += dot_q8_0(x0 + i, y + i, QK8_0);
        out[1] += dot_q8_0(x1 + i, y + i, QK8_0);
        out[2] += dot_q8_0(x2 + i, y + i, QK8_0);
        out[3] += dot_q8_0(x3 + i, y + i, QK8_0);
    }
}

static void gemv_q8_0(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_rows4(gemv4_q8_0, dot_q8_0, W, rb, act, y, n / QK8_0, n, nrows);
}



/* Q4_K scales[12] unpacked in vector registers: bytes 0..7 the eight 6-bit
 * scales, bytes 8..15 the eight mins (what quant__get_scale_min_k4 gives
 * for j = 0..7). s points at the 12 scale bytes; 16 are read, which stays
 * inside the block (the quants follow). */
static inline __m128i k4_scales_mins_v(const uint8_t *s)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)s);
    /* low bits: sc0-3 = s0-3 & 63, sc4-7 = s8-11 & 15, m0-3 = s4-7 & 63, m4-7 = s8-11 >> 4 */
    const __m128i a = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i lo = _mm_or_si128(
        _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
        _mm_and_si128(_mm_srli_epi16(a, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
    /* high bits 4-5 of sc4-7 / m4-7: the top two bits of s0-3 / s4-7 */
    const __m128i c = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    return _mm_or_si128(lo, _mm_and_si128(_mm_srli_epi16(c, 2), _mm_set1_epi8(0x30)));
}

/* Four Q4_K rows against one Q8_K activation row, one 256-element block per
 * step. The activation side (the 32-element sums for the min term, the
 * scale) is prepared once for the four rows; each row's integer sums and
 * min sums are folded into one vector with two hadds, so one convert and
 * one FMA per block serve all four rows (against two per row in dot_q4_K),
 * the rows' d/dmin are converted together and the scales are unpacked in
 * vector registers. The next group of rows is prefetched at the rate this
 * one is consumed (see prefetch_run). */
static void gemv4_q4_K(const uint8_t *W, size_t rb, const void *act, float *out, int64_t nb)
{
    const block_q8_K *y = act;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
    const size_t bs = sizeof(block_q4_K);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    const uint8_t *next = prefetch_start(W, rb);
    for (int64_t i = 0; i < nb; i++) {
        prefetch_run(next + 4 * bs * (size_t)i, 4 * (int)bs);
        const int8_t *q8 = y[i].qs;
        const __m256i bsum = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        const __m128i q8s = _mm_hadd_epi16(_mm256_castsi256_si128(bsum), _mm256_extracti128_si256(bsum, 1));
        __m256i s[4];
        __m128i mm[4];
        uint32_t dms[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const block_q4_K *x = (const block_q4_K *)(W + (size_t)r * rb) + i;
            dms[r] = ld32((const uint8_t *)&x->d);
            const __m128i ms8 = k4_scales_mins_v(x->scales);
            mm[r] = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(ms8, 8)), q8s);
            const __m256i sc = _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(ms8, ms8)); /* scales in both halves */
            __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int j = 0; j < QK_K / 64; j++) {
                __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * j));
                __m256i lo = _mm256_and_si256(bits, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                __m256i pl = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j)));
                __m256i ph = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(bcast16(sc, 2 * j), pl));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(bcast16(sc, 2 * j + 1), ph));
                /* Keep the sum a chain: GCC otherwise builds a tree of all
                 * eight products per row and spills it. */
                __asm__("" : "+x"(sumi));
            }
            s[r] = sumi;
        }
        /* lanes r (low half) and 4 + r (high half): row r's partial sums */
        __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
        __m128i mh = _mm_hadd_epi32(_mm_hadd_epi32(mm[0], mm[1]), _mm_hadd_epi32(mm[2], mm[3]));
        /* d and dmin are adjacent fp16s: [d0 m0 d1 m1 d2 m2 d3 m3] */
        __m256 dm = _mm256_cvtph_ps(_mm_setr_epi32((int)dms[0], (int)dms[1], (int)dms[2], (int)dms[3]));
        dm = _mm256_mul_ps(dm, _mm256_set1_ps(y[i].d));
        acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(dm, even), _mm256_cvtepi32_ps(h), acc);
        accm = _mm_fmadd_ps(_mm256_castps256_ps128(_mm256_permutevar8x32_ps(dm, odd)), _mm_cvtepi32_ps(mh), accm);
    }
    __m128 t = _mm_sub_ps(_mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)), accm);
    _mm_storeu_ps(out, t);
}

static void gemv_q4_K(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_rows4(gemv4_q4_K, dot_q4_K, W, rb, act, y, n / QK_K, n, nrows);
}

/* Four Q6_K rows against one Q8_K activation row. The quants are used
 * unsigned (0..63) and the -32 offset becomes -32 * sum(scale x 16-element
 * activation sum) from the Q8_K bsums: one madd per row and block instead
 * of a second maddubs per 32 elements. The 16 scales are widened to int16
 * once per row and block; each 32-element pair is then one in-lane
 * shuffle (q6_scale_pair needs two). Rows fold into one vector as in
 * gemv4_q4_K. */
static void gemv4_q6_K(const uint8_t *W, size_t rb, const void *act, float *out, int64_t nb)
{
    const block_q8_K *y = act;
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
    const size_t bs = sizeof(block_q6_K);
    __m256 acc = _mm256_setzero_ps();
    const uint8_t *next = prefetch_start(W, rb);
    for (int64_t i = 0; i < nb; i++) {
        prefetch_run(next + 4 * bs * (size_t)i, 4 * (int)bs);
        const block_q6_K *x[4];
        for (int r = 0; r < 4; r++) x[r] = (const block_q6_K *)(W + (size_t)r * rb) + i;
        const int8_t *q8 = y[i].qs;
        const __m256i bsum = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        __m256i s[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[r]->scales));
            /* [s0..s7 | s0..s7] and [s8..s15 | s8..s15] */
            const __m256i scl = _mm256_permute2x128_si256(sc16, sc16, 0x00);
            const __m256i sch = _mm256_permute2x128_si256(sc16, sc16, 0x11);
            __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsum), 5));
            const uint8_t *ql = x[r]->ql, *qh = x[r]->qh;
#pragma GCC unroll 2
            for (int j = 0; j < 2; j++) {
                __m256i q[4];
                q6k_unpack(ql + 64 * j, qh + 32 * j, m4, m2, q);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    /* sub-blocks 2k' and 2k'+1 (k' = 4j + k): int16 words
                     * 2k (low half) and 2k + 1 (high half) of scl/sch */
                    const __m256i ctl = _mm256_setr_epi8(
                        4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
                        4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1,
                        4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3,
                        4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3);
                    const __m256i sp = _mm256_shuffle_epi8(j ? sch : scl, ctl);
                    __m256i a = _mm256_loadu_si256((const __m256i *)(q8 + 128 * j + 32 * k));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sp, _mm256_maddubs_epi16(q[k], a)));
                    __asm__("" : "+x"(sumi)); /* a chain, not a spilled tree (see gemv4_q4_K) */
                }
            }
            s[r] = sumi;
        }
        __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
        __m128 d = _mm_cvtph_ps(_mm_setr_epi16((short)x[0]->d, (short)x[1]->d, (short)x[2]->d, (short)x[3]->d, 0, 0, 0, 0));
        d = _mm_mul_ps(d, _mm_set1_ps(y[i].d));
        acc = _mm256_fmadd_ps(_mm256_setr_m128(d, d), _mm256_cvtepi32_ps(h), acc);
    }
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)));
}

static void gemv_q6_K(const void *W, size_t rb, const void *act, float *y, int64_t n, int64_t nrows)
{
    gemv_rows4(gemv4_q6_K, dot_q6_K, W, rb, act, y, n / QK_K, n, nrows);
}

/* ---- batched decode: several tokens per weight pass --------------------- */

/* Q8_0, Q4_0, Q5_0 and Q4_K batches go through the packed GEMM
 * (gemm_avx2.c, via matmul); Q6_K keeps this tile: its packed form measured
 * slower than this one. */
#define GEMM_MAX_NB_K 128

/* Q6_K rows against four tokens' Q8_K blocks: the 6-bit quants are unpacked
 * once per 128 elements and used unsigned (0..63); the -32 offset becomes
 * -32 * sum(scale x 16-element activation sum), from the Q8_K bsums. */
static void gemm_q6_K(const void *W, size_t rb, const void *act, size_t as, float *y, size_t ys,
                      int64_t n, int64_t nrows, int32_t ntok)
{
    const int64_t nb = n / QK_K;
    int32_t t = 0;
    if (nb <= GEMM_MAX_NB_K) {
        __m256 dq[GEMM_MAX_NB_K];
        const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
        for (; t + 4 <= ntok; t += 4) {
            const block_q8_K *ya[4];
            for (int j = 0; j < 4; j++) ya[j] = (const block_q8_K *)((const uint8_t *)act + (size_t)(t + j) * as);
            for (int64_t i = 0; i < nb; i++) {
                __m128 d = _mm_setr_ps(ya[0][i].d, ya[1][i].d, ya[2][i].d, ya[3][i].d);
                dq[i] = _mm256_setr_m128(d, d);
            }
            for (int64_t r = 0; r < nrows; r++) {
                const block_q6_K *x = (const block_q6_K *)((const uint8_t *)W + (size_t)r * rb);
                __m256 acc = _mm256_setzero_ps();
                for (int64_t i = 0; i < nb; i++) {
                    const __m128i scales = _mm_loadu_si128((const __m128i *)x[i].scales);
                    const __m256i sc16 = _mm256_cvtepi8_epi16(scales);
                    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
                    const uint8_t *ql = x[i].ql, *qh = x[i].qh;
#pragma GCC unroll 2
                    for (int j = 0; j < 2; j++, ql += 64, qh += 32) {
                        __m256i q[4];
                        q6k_unpack(ql, qh, m4, m2, q);
#pragma GCC unroll 4
                        for (int k = 0; k < 4; k++) {
                            const __m256i sp = q6_scale_pair(scales, 4 * j + k);
                            const size_t o = (size_t)(128 * j + 32 * k);
#define Q6K_TOK(tk, acc_)                                                                                 \
                            acc_ = _mm256_add_epi32(acc_, _mm256_madd_epi16(sp, _mm256_maddubs_epi16(     \
                                       q[k], _mm256_loadu_si256((const __m256i *)(ya[tk][i].qs + o)))))
                            Q6K_TOK(0, s0);
                            Q6K_TOK(1, s1);
                            Q6K_TOK(2, s2);
                            Q6K_TOK(3, s3);
#undef Q6K_TOK
                        }
                    }
#define Q6K_OFF(tk, acc_)                                                                                 \
                    acc_ = _mm256_sub_epi32(acc_, _mm256_slli_epi32(_mm256_madd_epi16(sc16,              \
                               _mm256_loadu_si256((const __m256i *)ya[tk][i].bsums)), 5))
                    Q6K_OFF(0, s0);
                    Q6K_OFF(1, s1);
                    Q6K_OFF(2, s2);
                    Q6K_OFF(3, s3);
#undef Q6K_OFF
                    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
                    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fp16_to_f32(x[i].d)), dq[i]),
                                          _mm256_cvtepi32_ps(h), acc);
                }
                __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                float o[4];
                _mm_storeu_ps(o, s);
                for (int j = 0; j < 4; j++) y[(size_t)(t + j) * ys + r] = o[j];
            }
        }
    }
    for (; t < ntok; t++) {
        const uint8_t *a = (const uint8_t *)act + (size_t)t * as;
        for (int64_t r = 0; r < nrows; r++)
            y[(size_t)t * ys + r] = dot_q6_K((const uint8_t *)W + (size_t)r * rb, a, n);
    }
}

/* ---- dequantisation (prompt processing feeds whole tiles to sgemm) ------ */

/* y[0..31] = q * d for 32 signed bytes q */
static inline void store_i8x32(__m256i q, __m256 d, float *y)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
    _mm256_storeu_ps(y + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
    _mm256_storeu_ps(y + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

/* y[0..31] = q * d - m for 32 signed bytes q (the K types' min term) */
static inline void store_i8x32_min(__m256i q, __m256 d, __m256 m, float *y)
{
    __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))), m));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))), m));
    _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))), m));
    _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))), m));
}

static void dequant_f16(const void *src, float *y, int64_t n)
{
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16x8(h + i));
    for (; i < n; i++) y[i] = fp16_to_f32(h[i]);
}

static void dequant_bf16(const void *src, float *y, int64_t n)
{
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_bf16x8(h + i));
    for (; i < n; i++) {
        uint32_t u = (uint32_t)h[i] << 16;
        memcpy(&y[i], &u, 4);
    }
}

static void dequant_q4_0(const void *src, float *y, int64_t n)
{
    const block_q4_0 *x = src;
    for (int64_t i = 0; i < n / QK4_0; i++, y += QK4_0)
        store_i8x32(_mm256_sub_epi8(nibbles_32(x[i].qs), _mm256_set1_epi8(8)), _mm256_set1_ps(fp16_to_f32(x[i].d)), y);
}

static void dequant_q4_1(const void *src, float *y, int64_t n)
{
    const block_q4_1 *x = src;
    for (int64_t i = 0; i < n / QK4_1; i++, y += QK4_1)
        store_i8x32_min(nibbles_32(x[i].qs), _mm256_set1_ps(fp16_to_f32(x[i].d)),
                        _mm256_set1_ps(-fp16_to_f32(x[i].m)), y);
}

static void dequant_q5_0(const void *src, float *y, int64_t n)
{
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < n / QK5_0; i++, y += QK5_0) {
        __m256i hi = _mm256_andnot_si256(bits_32(x[i].qh), _mm256_set1_epi8((char)0xF0));
        store_i8x32(_mm256_or_si256(nibbles_32(x[i].qs), hi), _mm256_set1_ps(fp16_to_f32(x[i].d)), y);
    }
}

static void dequant_q5_1(const void *src, float *y, int64_t n)
{
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < n / QK5_1; i++, y += QK5_1) {
        __m256i hi = _mm256_and_si256(bits_32(x[i].qh), _mm256_set1_epi8(0x10));
        store_i8x32_min(_mm256_or_si256(nibbles_32(x[i].qs), hi), _mm256_set1_ps(fp16_to_f32(x[i].d)),
                        _mm256_set1_ps(-fp16_to_f32(x[i].m)), y);
    }
}

static void dequant_q8_0(const void *src, float *y, int64_t n)
{
    const block_q8_0 *x = src;
    for (int64_t i = 0; i < n / QK8_0; i++, y += QK8_0)
        store_i8x32(_mm256_loadu_si256((const __m256i *)x[i].qs), _mm256_set1_ps(fp16_to_f32(x[i].d)), y);
}

static void dequant_q4_K(const void *src, float *y, int64_t n)
{
    const block_q4_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_f32(x[i].d), dmin = fp16_to_f32(x[i].dmin);
        for (int j = 0; j < QK_K / 64; j++, y += 64) {
            uint8_t sc1, m1, sc2, m2;
            quant__get_scale_min_k4(2 * j, x[i].scales, &sc1, &m1);
            quant__get_scale_min_k4(2 * j + 1, x[i].scales, &sc2, &m2);
            __m256i b = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            store_i8x32_min(_mm256_and_si256(b, m4), _mm256_set1_ps(d * sc1), _mm256_set1_ps(dmin * m1), y);
            store_i8x32_min(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4), _mm256_set1_ps(d * sc2),
                            _mm256_set1_ps(dmin * m2), y + 32);
        }
    }
}

static void dequant_q5_K(const void *src, float *y, int64_t n)
{
    const block_q5_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_f32(x[i].d), dmin = fp16_to_f32(x[i].dmin);
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].qh);
        for (int j = 0; j < QK_K / 64; j++, y += 64) {
            uint8_t sc1, m1, sc2, m2;
            quant__get_scale_min_k4(2 * j, x[i].scales, &sc1, &m1);
            quant__get_scale_min_k4(2 * j + 1, x[i].scales, &sc2, &m2);
            __m256i b = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            /* bit 2j (2j+1) of each qh byte is the fifth bit of the low (high) nibbles */
            __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j), _mm256_set1_epi8(1));
            __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hbits, 2 * j + 1), _mm256_set1_epi8(1));
            __m256i lo = _mm256_or_si256(_mm256_and_si256(b, m4), _mm256_slli_epi16(h0, 4));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4), _mm256_slli_epi16(h1, 4));
            store_i8x32_min(lo, _mm256_set1_ps(d * sc1), _mm256_set1_ps(dmin * m1), y);
            store_i8x32_min(hi, _mm256_set1_ps(d * sc2), _mm256_set1_ps(dmin * m2), y + 32);
        }
    }
}

static void dequant_q6_K(const void *src, float *y, int64_t n)
{
    const block_q6_K *x = src;
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3), m32 = _mm256_set1_epi8(32);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float d = fp16_to_f32(x[i].d);
        for (int h = 0; h < 2; h++, y += 128) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            __m256i q[4];
            q6k_unpack(ql, qh, m4, m2, q);
            for (int k = 0; k < 4; k++) {
                /* 32 elements = two 16-element sub-blocks with their own scale */
                const int8_t *sc = x[i].scales + 8 * h + 2 * k;
                __m256 s = _mm256_set1_ps(d * sc[0]);
                __m256i v = _mm256_sub_epi8(q[k], m32);
                __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
                float *o = y + 32 * k;
                _mm256_storeu_ps(o, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
                _mm256_storeu_ps(o + 8, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
                s = _mm256_set1_ps(d * sc[1]);
                _mm256_storeu_ps(o + 16, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
                _mm256_storeu_ps(o + 24, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
            }
        }
    }
}

/* ---- activation quantisers --------------------------------------------- */

static inline float hmax_ps(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Round 32 floats * id to int8 in element order; returns their int sum. */
static inline int quant32(const float *x, __m256 id, int8_t *out)
{
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), id), _MM_FROUND_TO_NEAREST_INT));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8), id), _MM_FROUND_TO_NEAREST_INT));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16), id), _MM_FROUND_TO_NEAREST_INT));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 24), id), _MM_FROUND_TO_NEAREST_INT));
    int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    /* packs work per 128-bit lane; the permute restores element order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)out, p);
    return sum;
}

static inline float absmax32(const float *x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 16)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 24)));
    return hmax_ps(m);
}

static void act_q8_0(const float *x, void *dst, int64_t n)
{
    block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float amax = absmax32(x);
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        b[i].d = _cvtss_sh(d, 0);
        quant32(x, _mm256_set1_ps(id), b[i].qs);
    }
}

static void act_q8_1(const float *x, void *dst, int64_t n)
{
    block_q8_1 *b = dst;
    for (int64_t i = 0; i < n / QK8_1; i++, x += QK8_1) {
        float amax = absmax32(x);
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        b[i].d = _cvtss_sh(d, 0);
        int sum = quant32(x, _mm256_set1_ps(id), b[i].qs);
        b[i].s = _cvtss_sh(sum * d, 0);
    }
}

static void act_q8_K(const float *x, void *dst, int64_t n)
{
    block_q8_K *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 vmax = _mm256_loadu_ps(x), vmin = vmax;
        for (int j = 8; j < QK_K; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j);
            vmax = _mm256_max_ps(vmax, v);
            vmin = _mm256_min_ps(vmin, v);
        }
        float mx = hmax_ps(vmax), mn = -hmax_ps(_mm256_sub_ps(_mm256_setzero_ps(), vmin));
        /* the signed value of largest magnitude maps to -127 */
        float max = fabsf(mn) > fabsf(mx) ? mn : mx;
        if (max == 0.0f) {
            memset(&b[i], 0, sizeof(b[i]));
            continue;
        }
        float iscale = -127.f / max;
        __m256 vs = _mm256_set1_ps(iscale);
        for (int j = 0; j < QK_K; j += 32) {
            quant32(x + j, vs, b[i].qs + j);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            __m128i q = _mm_loadu_si128((const __m128i *)(b[i].qs + 16 * j));
            __m128i s = _mm_madd_epi16(_mm_maddubs_epi16(_mm_set1_epi8(1), q), _mm_set1_epi16(1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
            b[i].bsums[j] = (int16_t)_mm_cvtsi128_si32(s);
        }
        b[i].d = 1 / iscale;
    }
}

#ifdef QUANT_VNNI
void quant__avx512_fill(quant__kernels *k)
{
    k->name = "avx512vnni";
#else
void quant__avx2_fill(quant__kernels *k)
{
    k->name = "avx2";
#endif
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
    k->dequant[QK_F16] = dequant_f16;
    k->dequant[QK_BF16] = dequant_bf16;
    k->dequant[QK_Q4_0] = dequant_q4_0;
    k->dequant[QK_Q4_1] = dequant_q4_1;
    k->dequant[QK_Q5_0] = dequant_q5_0;
    k->dequant[QK_Q5_1] = dequant_q5_1;
    k->dequant[QK_Q8_0] = dequant_q8_0;
    k->dequant[QK_Q4_K] = dequant_q4_K;
    k->dequant[QK_Q5_K] = dequant_q5_K;
    k->dequant[QK_Q6_K] = dequant_q6_K;
    k->gemv[QK_Q4_0] = gemv_q4_0;
    k->gemv[QK_Q4_1] = gemv_q4_1;
    k->gemv[QK_Q5_0] = gemv_q5_0;
    k->gemv[QK_Q5_1] = gemv_q5_1;
    k->gemv[QK_Q8_0] = gemv_q8_0;
    k->gemv[QK_Q4_K] = gemv_q4_K;
    k->gemv[QK_Q6_K] = gemv_q6_K;
    k->gemm[QK_Q6_K] = gemm_q6_K;
    k->act[QK_Q8_1] = act_q8_1;
    k->act[QK_Q8_K] = act_q8_K;
}
