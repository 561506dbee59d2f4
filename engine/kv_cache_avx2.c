/* kv_cache_avx2.c -- AVX2/F16C row conversions for f16, q8_0 and q12_0 cache rows
 * (called by kv_cache.c only after a CPU check; exact: same results as the
 * scalar loops). */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

void kv__f16_to_f32_avx2(const uint16_t *src, float *dst, int32_t n);
void kv__q8_to_f32_avx2(const int8_t *q, const float *d, int32_t group, int32_t col0, int32_t n, float *dst);
void kv__q12_to_f32_avx2(const int8_t *q, const uint8_t *lo, const uint16_t *d, int32_t group, int32_t col0,
                         int32_t n, float *dst);

void kv__f16_to_f32_avx2(const uint16_t *src, float *dst, int32_t n) {
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(src[i]);
}

/* dst[c] = q[col0 + c] * d[(col0 + c) / group]: 8 values at a time while
 * they share a scale (group and col0 multiples of 8 in practice). */
void kv__q8_to_f32_avx2(const int8_t *q, const float *d, int32_t group, int32_t col0, int32_t n, float *dst) {
    int32_t c = 0;
    while (c < n) {
        int32_t col = col0 + c;
        int32_t g = col / group, end = (g + 1) * group - col0;
        if (end > n) end = n;
        __m256 sc = _mm256_set1_ps(d[g]);
        for (; c + 8 <= end; c += 8) {
            __m128i b = _mm_loadl_epi64((const __m128i *)(q + col0 + c));
            __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            _mm256_storeu_ps(dst + c, _mm256_mul_ps(f, sc));
        }
        for (; c < end; c++) dst[c] = (float)q[col0 + c] * d[g];
    }
}

/* dst[c] = (q[i] * 16 + nibble i of lo) * d[i / group] (f16 scales),
 * i = col0 + c: 8
 * values at a time while they share a scale and start on a byte of
 * nibbles (col0 even). */
void kv__q12_to_f32_avx2(const int8_t *q, const uint8_t *lo, const uint16_t *d, int32_t group, int32_t col0,
                         int32_t n, float *dst) {
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), m4 = _mm256_set1_epi32(15);
    int32_t c = 0;
    while (c < n) {
        int32_t col = col0 + c;
        int32_t g = col / group, end = (g + 1) * group - col0;
        if (end > n) end = n;
        const float dg = _cvtsh_ss(d[g]);
        __m256 sc = _mm256_set1_ps(dg);
        for (; c + 8 <= end && (col0 + c) % 2 == 0; c += 8) {
            int32_t i = col0 + c;
            __m256i hi = _mm256_slli_epi32(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + i))), 4);
            int32_t w;
            memcpy(&w, lo + i / 2, sizeof w);
            __m256i l = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w), shifts), m4);
            __m256 f = _mm256_cvtepi32_ps(_mm256_add_epi32(hi, l));
            _mm256_storeu_ps(dst + c, _mm256_mul_ps(f, sc));
        }
        for (; c < end; c++) {
            int32_t i = col0 + c;
            dst[c] = (float)(q[i] * 16 + ((lo[i / 2] >> (4 * (i % 2))) & 15)) * dg;
        }
    }
}
