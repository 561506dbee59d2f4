/* mask_apply_avx2.c -- writing a token mask into the logits with AVX2
 * (compiled with AVX2 flags; token_mask.c calls it only after a CPU check).
 *
 * Most words of a mask are mixed (a string's content allows about every
 * other token), so the per-word blend is the loop that matters: a variable
 * shift moves each lane's bit into its sign bit and blendv keeps the logit
 * or writes -inf, eight floats per instruction. */
#include "grammar_internal.h"

#include <immintrin.h>
#include <math.h>

void grammar__apply_bits_avx2(float *logits, const uint32_t *bits, int32_t n_words) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i s0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i s1 = _mm256_sub_epi32(s0, _mm256_set1_epi32(8));
    const __m256i s2 = _mm256_sub_epi32(s0, _mm256_set1_epi32(16));
    const __m256i s3 = _mm256_sub_epi32(s0, _mm256_set1_epi32(24));
    for (int32_t w = 0; w < n_words; w++) {
        uint32_t b = bits[w];
        float *x = logits + (size_t)w * 32;
        if (b == 0xFFFFFFFFu) continue;
        if (b == 0) {
            _mm256_storeu_ps(x, ninf);
            _mm256_storeu_ps(x + 8, ninf);
            _mm256_storeu_ps(x + 16, ninf);
            _mm256_storeu_ps(x + 24, ninf);
            continue;
        }
        __m256i v = _mm256_set1_epi32((int)b);
        _mm256_storeu_ps(x, _mm256_blendv_ps(ninf, _mm256_loadu_ps(x), _mm256_castsi256_ps(_mm256_sllv_epi32(v, s0))));
        _mm256_storeu_ps(x + 8, _mm256_blendv_ps(ninf, _mm256_loadu_ps(x + 8), _mm256_castsi256_ps(_mm256_sllv_epi32(v, s1))));
        _mm256_storeu_ps(x + 16, _mm256_blendv_ps(ninf, _mm256_loadu_ps(x + 16), _mm256_castsi256_ps(_mm256_sllv_epi32(v, s2))));
        _mm256_storeu_ps(x + 24, _mm256_blendv_ps(ninf, _mm256_loadu_ps(x + 24), _mm256_castsi256_ps(_mm256_sllv_epi32(v, s3))));
    }
}
