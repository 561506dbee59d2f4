/* gemm_avx2.c -- many-token int8 GEMM for the 32-element block types
 * (Q8_0, Q4_0, Q5_0) against packed Q8_0 activations, and for Q4_K and
 * Q5_K against packed Q8_K activations.
 *
 * Used for batched decode (one token per sequence, many sequences) and for
 * prompt chunks; quant_pack_act lays the step's activations out once, every
 * weight row then streams over them. The kernels take one weight row and
 * up to four token groups in one pass over it: each weight block is decoded
 * once (the sign trick for Q8_0; Q4_0/Q5_0 nibbles, used unsigned, need no
 * sign) and dotted with every token while it is in registers; the row is
 * read once, in order, which the hardware prefetcher follows.
 *
 * Q8_0-type activations: records of eight tokens, four bytes of each token
 * at a time (gemm_pk8): a broadcast of four weight bytes against a record
 * vector gives each token's partial sum in its own lane, so a block's sums
 * need no cross-lane folding. Q8_K activations (Q4_K, Q5_K): records of
 * four tokens x 32 values (gemm_pk) whose per-token sums fold with unpacks
 * and adds (cheaper than vphaddd on Zen 3) once per 256-element block.
 *
 * Cache blocking: tokens are taken in chunks whose packed activations fit
 * in about half of L2, and every row of the caller's range is swept per
 * chunk; a row (K bytes or less) stays in L1 across the chunk's groups. */
#include "quant_internal.h"
#include "simd_avx2.h"

#include <stddef.h>
#include <string.h>

typedef struct {
    float d[8];     /* token scales: d[j] = d[j + 4] = scale of token j */
    int32_t s[8];   /* s[j] = sum of token j's 32 quants (j < 4); s[4..7] = 0 */
    int8_t q[4][32];
} gemm_pk; /* 192 bytes, 32-aligned in the packed buffer */

_Static_assert(sizeof(gemm_pk) == 192, "packed record layout");

/* Packed activations in bytes of L2 a token chunk may use. */
#define GEMM_CHUNK_BYTES (192 * 1024)

/* Pack ntok rows of Q8_K activations into four-token records: one scale
 * per 256 elements, so the eight records of a block share d, and s is two
 * of the block's 16-element bsums. Tokens past ntok in the last group are
 * zero. */
static void pack_q8_K(const void *act, size_t act_stride, int64_t n, int32_t ntok, void *dst)
{
    const int64_t nb = n / 32;
    const int32_t groups = (ntok + 3) / 4;
    gemm_pk *p = dst;
    for (int32_t g = 0; g < groups; g++) {
        for (int64_t i = 0; i < nb; i++, p++) {
            for (int j = 0; j < 4; j++) {
                int32_t t = 4 * g + j;
                __m256i q = _mm256_setzero_si256();
                float d = 0.0f;
                int32_t sum = 0;
                if (t < ntok) {
                    const block_q8_K *b = (const block_q8_K *)((const uint8_t *)act + (size_t)t * act_stride) + i / 8;
                    int sub = (int)(i % 8);
                    q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * sub));
                    d = b->d;
                    sum = b->bsums[2 * sub] + b->bsums[2 * sub + 1];
                }
                _mm256_store_si256((__m256i *)p->q[j], q);
                p->d[j] = p->d[j + 4] = d;
                p->s[j] = sum;
                p->s[j + 4] = 0;
            }
        }
    }
}

/* Four tokens' 8-lane int32 sums -> [t0 t1 t2 t3 | t0 t1 t2 t3] (partial
 * sums of the low and high 128-bit halves). */
static inline __m256i fold4(__m256i p0, __m256i p1, __m256i p2, __m256i p3)
{
    __m256i a = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
    __m256i b = _mm256_add_epi32(_mm256_unpacklo_epi32(p2, p3), _mm256_unpackhi_epi32(p2, p3));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}

/* ---- Q8_0, Q4_0 and Q5_0 weights against Q8_0 activations --------------
 *
 * Eight tokens per record, interleaved four bytes at a time: q[s][t] holds
 * elements 4s .. 4s+3 of token t's block. A weight block's four bytes of
 * sub-group s are broadcast to all eight lanes, so one maddubs + madd
 * gives every token's partial sum in its own 32-bit lane: the sums of a
 * block collect per lane with plain adds and need no fold. Four-token
 * records (as Q8_K's below) spent 36 of 103 vector operations per block
 * and 16 tokens on unpack folds: llvm-mca -mcpu=znver3 27.2 -> 24.1 cycles
 * per block and 16 tokens (what remains is the per-token vpsignb and the
 * multiplies, which share pipes 0/1 and 0/3). */
typedef struct {
    int8_t q[8][8][4]; /* q[s][t][e] = element 4s + e of token t */
    float d[8];        /* token scales (0 past the last token) */
    int32_t s[8];      /* token quant sums (Q4_0 / Q5_0 zero points) */
} gemm_pk8;            /* 320 bytes, 32-aligned in the packed buffer */

_Static_assert(sizeof(gemm_pk8) == 320, "packed 8-token record layout");

static void pack_q8_0(const void *act, size_t act_stride, int64_t n, int32_t ntok, void *dst)
{
    const int64_t nb = n / 32;
    const int32_t groups = (ntok + 7) / 8;
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    gemm_pk8 *p = dst;
    for (int32_t g = 0; g < groups; g++) {
        for (int64_t i = 0; i < nb; i++, p++) {
            for (int t = 0; t < 8; t++) {
                int32_t tok = 8 * g + t;
                if (tok >= ntok) {
                    for (int k = 0; k < 8; k++) memset(p->q[k][t], 0, 4);
                    p->d[t] = 0.0f;
                    p->s[t] = 0;
                    continue;
                }
                const block_q8_0 *b = (const block_q8_0 *)((const uint8_t *)act + (size_t)tok * act_stride) + i;
                for (int k = 0; k < 8; k++) memcpy(p->q[k][t], b->qs + 4 * k, 4);
                p->d[t] = fp16_to_f32(b->d);
                /* maddubs(1, q) adds signed byte pairs */
                __m256i q = _mm256_loadu_si256((const __m256i *)b->qs);
                p->s[t] = hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16));
            }
        }
    }
}

enum { KIND_Q8_0, KIND_Q4_0, KIND_Q5_0 };

/* One row x G groups of eight tokens (G <= 4): each weight block is
 * decoded once and its sub-groups broadcast against every group. */
static inline __attribute__((always_inline)) void
gemm8_row(const uint8_t *W, const gemm_pk8 *pk, int64_t nb, float *y, size_t ys, int32_t ntok, const int G,
          const int kind)
{
    const size_t bs = kind == KIND_Q5_0 ? sizeof(block_q5_0)
                      : kind == KIND_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    _Alignas(32) uint8_t wu[32];
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = W + (size_t)i * bs;
        const uint8_t *wq = b + offsetof(block_q8_0, qs);
        if (kind != KIND_Q8_0) {
            /* 0..15 (Q4_0) or 0..31 (Q5_0) as unsigned bytes; the zero point
             * (8 or 16 times the token's quant sum) is subtracted below.
             * |w0*a0 + w1*a1| <= 2*31*127: maddubs cannot saturate. */
            __m256i w = kind == KIND_Q5_0 ? quants5_32(b + offsetof(block_q5_0, qs), b + offsetof(block_q5_0, qh))
                                          : nibbles_32(b + offsetof(block_q4_0, qs));
            _mm256_store_si256((__m256i *)wu, w);
            wq = wu;
        }
        __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                           _mm256_setzero_si256()};
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            int32_t w4;
            memcpy(&w4, wq + 4 * k, 4);
            const __m256i wb = _mm256_set1_epi32(w4);
            /* Q8_0: the sign trick (|w| unsigned, a with w's sign); |w| <= 128 */
            const __m256i wa = kind == KIND_Q8_0 ? _mm256_sign_epi8(wb, wb) : wb;
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                __m256i a = _mm256_load_si256((const __m256i *)pk[(size_t)g * nb + i].q[k]);
                if (kind == KIND_Q8_0) a = _mm256_sign_epi8(a, wb);
                isum[g] = _mm256_add_epi32(isum[g], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, a), ones));
            }
        }
        const __m256 dw = _mm256_set1_ps(fp16_to_f32(ld16(b)));
#pragma GCC unroll 4
        for (int g = 0; g < G; g++) {
            const gemm_pk8 *p = pk + (size_t)g * nb + i;
            __m256i h = isum[g];
            if (kind != KIND_Q8_0)
                h = _mm256_sub_epi32(h, _mm256_slli_epi32(_mm256_load_si256((const __m256i *)p->s),
                                                          kind == KIND_Q5_0 ? 4 : 3));
            acc[g] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_load_ps(p->d)), _mm256_cvtepi32_ps(h), acc[g]);
        }
    }
    for (int g = 0; g < G; g++) {
        float o[8];
        _mm256_storeu_ps(o, acc[g]);
        int nt = ntok - 8 * g < 8 ? ntok - 8 * g : 8;
        for (int t = 0; t < nt; t++) y[(size_t)(8 * g + t) * ys] = o[t];
    }
}

static inline __attribute__((always_inline)) void
gemm_packed(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n, int64_t nrows,
            int32_t ntok, const int kind)
{
    const int64_t nb = n / 32;
    const int32_t groups = (ntok + 7) / 8;
    int32_t chunk = (int32_t)(GEMM_CHUNK_BYTES / ((size_t)nb * sizeof(gemm_pk8)));
    chunk = chunk < 4 ? 4 : chunk & ~3;
    for (int32_t g0 = 0; g0 < groups; g0 += chunk) {
        int32_t g1 = g0 + chunk < groups ? g0 + chunk : groups;
        for (int64_t r = 0; r < nrows; r++) {
            const uint8_t *w = (const uint8_t *)W + (size_t)r * rb;
            for (int32_t g = g0; g < g1; g += 4) {
                const gemm_pk8 *pg = (const gemm_pk8 *)packed + (size_t)g * nb;
                float *yg = y + (size_t)(8 * g) * ys + r;
                int32_t nt = ntok - 8 * g;
                switch (g1 - g) {
                case 1: gemm8_row(w, pg, nb, yg, ys, nt, 1, kind); break;
                case 2: gemm8_row(w, pg, nb, yg, ys, nt, 2, kind); break;
                case 3: gemm8_row(w, pg, nb, yg, ys, nt, 3, kind); break;
                default: gemm8_row(w, pg, nb, yg, ys, nt, 4, kind); break;
                }
            }
        }
    }
}

static void gemmp_q8_0(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n,
                       int64_t nrows, int32_t ntok)
{
    gemm_packed(W, rb, packed, y, ys, n, nrows, ntok, KIND_Q8_0);
}

static void gemmp_q4_0(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n,
                       int64_t nrows, int32_t ntok)
{
    gemm_packed(W, rb, packed, y, ys, n, nrows, ntok, KIND_Q4_0);
}

static void gemmp_q5_0(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n,
                       int64_t nrows, int32_t ntok)
{
    gemm_packed(W, rb, packed, y, ys, n, nrows, ntok, KIND_Q5_0);
}

/* ---- Q4_K and Q5_K weights against Q8_K activations -------------------- */

/* A Q4_K row's per-block constants, unpacked once per row and token chunk:
 * the eight 6-bit sub-block scales as int16 (both halves), d, and the
 * eight mins times dmin. */
typedef struct {
    __m256i sc;
    float d;
    float m[8];
} q4k_rowblk;

/* Rows of at most this many Q4_K blocks (16384 columns) take the packed
 * path (quant_packed_act_size reports 0 for wider ones). */
#define Q4K_MAX_NB 64

/* One Q4_K row x one four-token group. Per 256-element block the eight
 * sub-blocks' products are scaled by their 6-bit scales inside madd and
 * summed as integers (the Q8_K activation scale is shared by the block),
 * so the fold and the float work happen once per block, not per
 * sub-block; the min term (dmin * m_j * sum of the sub-block's
 * activations) accumulates in float on the side. */
static inline __attribute__((always_inline)) void
gemm_row_q4_K(const uint8_t *x, size_t bsz, const q4k_rowblk *rs, const gemm_pk *pk, float *y, size_t ys,
              int64_t nbk, int nt, const int five)
{
    const size_t qs_off = five ? offsetof(block_q5_K, qs) : offsetof(block_q4_K, qs);
    const __m256i one8 = _mm256_set1_epi8(1);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbk; b++) {
        const gemm_pk *p = pk + 8 * b;
        __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
        __m256 macc = _mm256_setzero_ps();
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const uint8_t *xb = x + (size_t)b * bsz;
            __m256i bits = _mm256_loadu_si256((const __m256i *)(xb + qs_off + 32 * (j / 2)));
            __m256i q = j % 2 ? _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4) : _mm256_and_si256(bits, m4);
            if (five) {
                /* Q5_K: bit j of qh[l] is bit 4 of element l of sub-block j
                 * (bits a 16-bit shift brings in from the next byte are
                 * masked off) */
                __m256i hb = _mm256_loadu_si256((const __m256i *)(xb + offsetof(block_q5_K, qh)));
                q = _mm256_or_si256(q, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, j), one8), 4));
            }
            __m256i sc = bcast16(rs[b].sc, j);
            const gemm_pk *pj = p + j;
            /* |q0*a0 + q1*a1| <= 2*15*127; times a scale <= 63, summed
             * over 8 sub-blocks: far inside int32 */
            i0 = _mm256_add_epi32(i0, _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_load_si256((const __m256i *)pj->q[0])), sc));
            i1 = _mm256_add_epi32(i1, _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_load_si256((const __m256i *)pj->q[1])), sc));
            i2 = _mm256_add_epi32(i2, _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_load_si256((const __m256i *)pj->q[2])), sc));
            i3 = _mm256_add_epi32(i3, _mm256_madd_epi16(_mm256_maddubs_epi16(q, _mm256_load_si256((const __m256i *)pj->q[3])), sc));
            macc = _mm256_fmadd_ps(_mm256_set1_ps(rs[b].m[j]),
                                   _mm256_cvtepi32_ps(_mm256_load_si256((const __m256i *)pj->s)), macc);
        }
        __m256 d4 = _mm256_load_ps(p->d);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(d4, _mm256_set1_ps(rs[b].d)), _mm256_cvtepi32_ps(fold4(i0, i1, i2, i3)),
                              acc);
        acc = _mm256_fnmadd_ps(d4, macc, acc);
    }
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    float o[4];
    _mm_storeu_ps(o, s);
    for (int j = 0; j < nt; j++) y[(size_t)j * ys] = o[j];
}

static inline __attribute__((always_inline)) void
gemmp_k45(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n, int64_t nrows,
          int32_t ntok, const int five)
{
    const int64_t nbk = n / QK_K, nb = n / 32;
    if (nbk > Q4K_MAX_NB)
        return; /* quant_packed_act_size keeps such widths off this path */
    /* Q4_K and Q5_K share d, dmin and scales[12] at the same offsets */
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const int32_t groups = (ntok + 3) / 4;
    int32_t chunk = (int32_t)(GEMM_CHUNK_BYTES / ((size_t)nb * sizeof(gemm_pk)));
    if (chunk < 1) chunk = 1;
    const gemm_pk *pk = packed;
    q4k_rowblk rs[Q4K_MAX_NB];
    for (int32_t g0 = 0; g0 < groups; g0 += chunk) {
        int32_t g1 = g0 + chunk < groups ? g0 + chunk : groups;
        for (int64_t r = 0; r < nrows; r++) {
            const uint8_t *x = (const uint8_t *)W + (size_t)r * rb;
            for (int64_t b = 0; b < nbk; b++) {
                const block_q4_K *h = (const block_q4_K *)(x + (size_t)b * bsz);
                __m256i ms = k4_scales_mins(h->scales);
                rs[b].sc = _mm256_permute2x128_si256(ms, ms, 0x00);
                rs[b].d = fp16_to_f32(h->d);
                __m256 mins = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(ms, 1)));
                _mm256_storeu_ps(rs[b].m, _mm256_mul_ps(mins, _mm256_set1_ps(fp16_to_f32(h->dmin))));
            }
            for (int32_t g = g0; g < g1; g++) {
                int nt = ntok - 4 * g < 4 ? ntok - 4 * g : 4;
                gemm_row_q4_K(x, bsz, rs, pk + (size_t)g * nb, y + (size_t)(4 * g) * ys + r, ys, nbk, nt, five);
            }
        }
    }
}

static void gemmp_q4_K(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n,
                       int64_t nrows, int32_t ntok)
{
    gemmp_k45(W, rb, packed, y, ys, n, nrows, ntok, 0);
}

static void gemmp_q5_K(const void *W, size_t rb, const void *packed, float *y, size_t ys, int64_t n,
                       int64_t nrows, int32_t ntok)
{
    gemmp_k45(W, rb, packed, y, ys, n, nrows, ntok, 1);
}

/* ---- F16 / BF16 weights against f32 activations ------------------------ */

/* Batches on 16-bit float weights (quant_gemm_rows; matmul's GEMV mode, below
 * the sgemm threshold): two rows x up to six tokens per pass, each 8-value
 * chunk of a row converted to f32 once and multiplied into six tokens,
 * instead of once per token as the per-token GEMV does. Two FMA chains per
 * loaded activation vector keep the two FMA pipes fed without exceeding
 * the two loads per cycle. */
static inline __m256 ld16x8(const uint16_t *p, const int bf)
{
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

static inline float w16_scalar(uint16_t h, const int bf)
{
    if (!bf)
        return fp16_to_f32(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline __attribute__((always_inline)) void
gemm_w16_tile(const uint16_t *w0, const uint16_t *w1, const float *x, size_t xs, float *y, size_t ys, int64_t n,
              const int R, const int T, const int bf)
{
    __m256 a[2][6];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 6; t++) a[r][t] = _mm256_setzero_ps();
    const int64_t n8 = n & ~(int64_t)7;
    for (int64_t i = 0; i < n8; i += 8) {
        __m256 v0 = ld16x8(w0 + i, bf), v1 = R > 1 ? ld16x8(w1 + i, bf) : v0;
#pragma GCC unroll 6
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x + (size_t)t * xs + i);
            a[0][t] = _mm256_fmadd_ps(v0, xv, a[0][t]);
            if (R > 1) a[1][t] = _mm256_fmadd_ps(v1, xv, a[1][t]);
        }
    }
    for (int r = 0; r < R; r++) {
        const uint16_t *w = r ? w1 : w0;
        for (int t = 0; t < T; t++) {
            float sum = hsum_ps(a[r][t]);
            for (int64_t i = n8; i < n; i++) sum += w16_scalar(w[i], bf) * x[(size_t)t * xs + i];
            y[(size_t)t * ys + r] = sum;
        }
    }
}

#define W16_TILE(R_, T_) gemm_w16_tile(w0, w1, xt, xs, yt, ys, n, R_, T_, bf)

static inline __attribute__((always_inline)) void
gemm_w16(const void *W, size_t rb, const void *act, size_t as, float *y, size_t ys, int64_t n, int64_t nrows,
         int32_t ntok, const int bf)
{
    const size_t xs = as / sizeof(float);
    for (int64_t r = 0; r < nrows; r += 2) {
        const uint16_t *w0 = (const uint16_t *)((const uint8_t *)W + (size_t)r * rb);
        const uint16_t *w1 = (const uint16_t *)((const uint8_t *)w0 + rb);
        const int two = r + 1 < nrows;
        for (int32_t t0 = 0; t0 < ntok; t0 += 6) {
            const float *xt = (const float *)act + (size_t)t0 * xs;
            float *yt = y + (size_t)t0 * ys + r;
            switch ((ntok - t0 < 6 ? ntok - t0 : 6) * 2 + two) {
            case 2: W16_TILE(1, 1); break;
            case 3: W16_TILE(2, 1); break;
            case 4: W16_TILE(1, 2); break;
            case 5: W16_TILE(2, 2); break;
            case 6: W16_TILE(1, 3); break;
            case 7: W16_TILE(2, 3); break;
            case 8: W16_TILE(1, 4); break;
            case 9: W16_TILE(2, 4); break;
            case 10: W16_TILE(1, 5); break;
            case 11: W16_TILE(2, 5); break;
            case 12: W16_TILE(1, 6); break;
            default: W16_TILE(2, 6); break;
            }
        }
    }
}

static void gemm_f16(const void *W, size_t rb, const void *act, size_t as, float *y, size_t ys, int64_t n,
                     int64_t nrows, int32_t ntok)
{
    gemm_w16(W, rb, act, as, y, ys, n, nrows, ntok, 0);
}

static void gemm_bf16(const void *W, size_t rb, const void *act, size_t as, float *y, size_t ys, int64_t n,
                      int64_t nrows, int32_t ntok)
{
    gemm_w16(W, rb, act, as, y, ys, n, nrows, ntok, 1);
}

void quant__avx2_gemm_fill(quant__kernels *k)
{
    k->pack[QK_Q8_0] = k->pack[QK_Q4_0] = k->pack[QK_Q5_0] = pack_q8_0;
    k->gemmp[QK_Q8_0] = gemmp_q8_0;
    k->gemmp[QK_Q4_0] = gemmp_q4_0;
    k->gemmp[QK_Q5_0] = gemmp_q5_0;
    k->pack[QK_Q4_K] = pack_q8_K;
    k->gemmp[QK_Q4_K] = gemmp_q4_K;
    k->pack[QK_Q5_K] = pack_q8_K;
    k->gemmp[QK_Q5_K] = gemmp_q5_K;
    k->gemm[QK_F16] = gemm_f16;
    k->gemm[QK_BF16] = gemm_bf16;
}
