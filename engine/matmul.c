/* matmul.c -- threaded GEMV/GEMM over quantized weights (see matmul.h). */
#include "matmul.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* Rows per decode task: enough to amortise the task claim, small enough that
 * the two cores finish together. Rounded to a multiple of 16. */
#define MM_GEMV_ROWS_MIN 16
/* Weight rows per dequantized f32 tile. Every sgemm call packs all of x
 * again, a cost ~1/rows of the multiply: measured 27% of a 1B-shape prompt
 * at 32 rows, so tiles are tall (256 rows x K floats per thread). */
#define MM_TILE_ROWS 256
/* Weight bytes of a multi-token GEMV sub-block (half of a 32 KiB L1D). */
#define MM_L1_BYTES (16 * 1024)

/* Packed activation buffers: one per activation slot of a call, for the
 * first two slots (a call's matrices have at most two packable
 * vec_dot_types: Q8_0 for the 32-element types, Q8_K for Q4_K, as in a
 * Q4_K_M model whose narrow matrices fall back to Q5_0). */
#define MM_PACKED_SLOTS 2

/* How one matrix of a call is multiplied. */
enum mm_mode {
    MM_GEMV,   /* per-token GEMV, or quant_gemm_rows for a few tokens */
    MM_PACKED, /* int8 GEMM on packed activations (quant_gemm_packed) */
    MM_SGEMM,  /* dequantised tiles + OpenBLAS sgemm */
};

struct matmul {
    threadpool *tp;
    int32_t n_threads;
    int64_t max_cols;
    int32_t max_tok;
    int32_t gemm_threshold;   /* n_tok >= this: dequantize + sgemm (types without a packed GEMM) */
    int32_t packed_min_tok;   /* n_tok >= this: packed int8 GEMM where the type has one */
    int32_t gemv_max_tok;     /* activation buffers hold this many tokens */
    size_t act_stride;        /* bytes per token in act buffers */
    uint8_t *act[MM_MAX_MATS];/* quantised activations per distinct vec_dot_type */
    uint8_t *packed[MM_PACKED_SLOTS]; /* packed activations of act slots 0 and 1 */
    size_t packed_bytes;
    float *tiles;             /* [n_threads][tile_floats] */
    size_t tile_floats;
    /* The current job. */
    int32_t n_mats;
    const mm_matrix *W[MM_MAX_MATS];
    const uint8_t *act_of[MM_MAX_MATS];
    enum mm_mode mode[MM_MAX_MATS];
    float *y[MM_MAX_MATS];
    const float *x;
    int32_t n_tok;
    int64_t rows_per_task[MM_MAX_MATS];
    int32_t task_start[MM_MAX_MATS + 1];
    /* Activation preparation of the current job: per distinct
     * vec_dot_type, the matrix whose type quantises it and whether the
     * result is also packed. */
    int n_prep;
    int prep_mat[MM_MAX_MATS];
    int prep_packed[MM_MAX_MATS];
};

/* Tokens per activation-preparation task (a multiple of the packed GEMM's
 * four-token group), and the token count from which preparation runs on
 * the pool: a 512-token prompt chunk spends a few percent of a step
 * quantising, which one thread alone would leave the other core idle for;
 * a 16-sequence decode step splits its 16 rows in two (see
 * FWD_ROWS_PER_TASK in forward.c for the measurement). */
#define MM_PREP_TOKENS 8
#define MM_PREP_PAR_MIN 16

static int32_t env_tokens(const char *name, int32_t dflt) {
    const char *env = getenv(name);
    return env && atoi(env) > 0 ? atoi(env) : dflt;
}

matmul *matmul_create(threadpool *tp, int64_t max_cols, int32_t max_tok) {
    matmul *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->tp = tp;
    m->n_threads = threadpool_n_threads(tp);
    m->max_cols = max_cols;
    m->max_tok = max_tok > 0 ? max_tok : 1;
    /* Types without a packed GEMM (F16, Q6_K, ...): per-token GEMV wins
     * below ~32 tokens (measured, q4_0, 135m shape, before the packed
     * kernels existed). The types with one use it at every size from
     * packed_min_tok: it beats dequantise + sgemm on prompts too (1 thread,
     * min of many runs, multiply-adds per TSC cycle, 128 tokens of a
     * 1536x576 matrix: Q8_0 12.6 vs 11.8, Q4_0 16.2 vs 15.0, Q5_0 15.1 vs
     * 14.8; 64 tokens of 2048x2048: Q8_0 13.5 vs 10.2, Q4_0 15.3 vs 7.5,
     * Q4_K 13.7 vs 10.6). */
    m->gemm_threshold = env_tokens("QKVD_GEMM_MIN_TOK", 32);
    /* The packed kernel pads to groups of four tokens; below four the
     * per-token GEMV reads the same weights at no padding cost. */
    m->packed_min_tok = env_tokens("QKVD_PACKED_MIN_TOK", 4);
    m->gemv_max_tok = m->max_tok;
    /* The widest activation row: f32 (float weights) is the largest format. */
    m->act_stride = ((size_t)max_cols * sizeof(float) + 63) & ~(size_t)63;
    for (int i = 0; i < MM_MAX_MATS; i++) {
        m->act[i] = aligned_alloc(64, m->act_stride * (size_t)m->gemv_max_tok);
        if (!m->act[i]) { matmul_free(m); return NULL; }
    }
    /* The larger of the Q8_0 records (1.25 bytes per element) and the Q8_K
     * ones (1.5); 0 when the active kernels have no packed GEMM (scalar) or
     * the width is not a multiple of 32. */
    m->packed_bytes = quant_packed_act_size(QK_Q8_0, max_cols, m->max_tok);
    size_t k_bytes = quant_packed_act_size(QK_Q4_K, (max_cols + 255) / 256 * 256, m->max_tok);
    if (m->packed_bytes && k_bytes > m->packed_bytes) m->packed_bytes = k_bytes;
    for (int i = 0; m->packed_bytes && i < MM_PACKED_SLOTS; i++) {
        m->packed[i] = aligned_alloc(64, (m->packed_bytes + 63) & ~(size_t)63);
        if (!m->packed[i]) { matmul_free(m); return NULL; }
    }
    m->tile_floats = (size_t)MM_TILE_ROWS * (size_t)max_cols;
    m->tiles = aligned_alloc(64, m->tile_floats * sizeof(float) * (size_t)m->n_threads);
    if (!m->tiles) { matmul_free(m); return NULL; }
    return m;
}

void matmul_free(matmul *m) {
    if (!m) return;
    for (int i = 0; i < MM_MAX_MATS; i++) free(m->act[i]);
    for (int i = 0; i < MM_PACKED_SLOTS; i++) free(m->packed[i]);
    free(m->tiles);
    free(m);
}

void matmul_set_gemm_threshold(matmul *m, int32_t n_tok) {
    if (n_tok < 1) n_tok = 1;
    m->gemm_threshold = n_tok;
}

void matmul_set_packed_min_tok(matmul *m, int32_t n_tok) {
    m->packed_min_tok = n_tok;
}

/* Find the matrix a flat task index belongs to. */
static int mm_task_matrix(const matmul *m, int32_t task) {
    int j = 0;
    while (j + 1 < m->n_mats && task >= m->task_start[j + 1]) j++;
    return j;
}

static void mm_gemv_rows(matmul *m, int j, int64_t r0, int64_t r1) {
    const mm_matrix *W = m->W[j];
    if (m->n_tok == 1) {
        quant_gemv_rows(W->type, W->data, m->act_of[j], m->y[j], W->n_cols, r0, r1);
        return;
    }
    /* Several tokens: walk the block in sub-blocks small enough to stay in
     * L1 while every token is dotted against them, so weights come from
     * memory once and from L1 for the other tokens. */
    int64_t sub = (int64_t)(MM_L1_BYTES / W->row_bytes) & ~(int64_t)3;
    if (sub < 4) sub = 4;
    for (int64_t s0 = r0; s0 < r1; s0 += sub) {
        int64_t s1 = s0 + sub < r1 ? s0 + sub : r1;
        quant_gemm_rows(W->type, W->data, m->act_of[j], m->act_stride, m->y[j], (size_t)W->n_rows,
                        W->n_cols, s0, s1, m->n_tok);
    }
}

static void mm_sgemm_rows(matmul *m, int j, int64_t r0, int64_t nr, int32_t thread) {
    const mm_matrix *W = m->W[j];
    int64_t K = W->n_cols;
    const float *wt;
    if (W->type == QK_F32) {
        wt = (const float *)((const uint8_t *)W->data + (size_t)r0 * W->row_bytes);
    } else {
        float *tile = m->tiles + (size_t)thread * m->tile_floats;
        const uint8_t *src = (const uint8_t *)W->data + (size_t)r0 * W->row_bytes;
        for (int64_t r = 0; r < nr; r++)
            quant_dequantize_row(W->type, src + (size_t)r * W->row_bytes, tile + (size_t)r * K, K);
        wt = tile;
    }
    /* Y[:, r0:r0+nr] = X (n_tok x K) * Wt^T (K x nr) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m->n_tok, (int)nr, (int)K,
                1.0f, m->x, (int)K, wt, (int)K, 0.0f, m->y[j] + r0, (int)W->n_rows);
}

static void mm_task(void *ctx, int32_t task, int32_t thread) {
    matmul *m = ctx;
    int j = mm_task_matrix(m, task);
    const mm_matrix *W = m->W[j];
    int64_t r0 = (int64_t)(task - m->task_start[j]) * m->rows_per_task[j];
    int64_t r1 = r0 + m->rows_per_task[j];
    if (r1 > W->n_rows) r1 = W->n_rows;
    switch (m->mode[j]) {
    case MM_GEMV: mm_gemv_rows(m, j, r0, r1); break;
    case MM_PACKED:
        quant_gemm_packed(W->type, W->data, m->act_of[j], m->y[j], (size_t)W->n_rows, W->n_cols, r0, r1,
                          m->n_tok);
        break;
    case MM_SGEMM: mm_sgemm_rows(m, j, r0, r1 - r0, thread); break;
    }
}

/* Types whose quant_gemm_rows tile kernel beats dequantise + sgemm at any
 * token count, so prompts use it too. Q6_K (1 thread, min of several runs,
 * multiply-adds per TSC cycle, 2048x2048): 64 tokens 7.0 vs 5.1, 128 tokens
 * 12.6 vs 11.2, 256 tokens 12.5 vs 11.9, 512 tokens 16.0 vs 11.0; F16's
 * tile lost (64 tokens 6.1 vs 7.0) and keeps sgemm. */
static int mm_tile_beats_sgemm(enum qk_type t) {
    return t == QK_Q6_K;
}

/* Quantise (and pack) tokens [t0, t1) for every prepared activation type;
 * t0 is a multiple of four. */
static void mm_prep_range(matmul *m, int32_t t0, int32_t t1) {
    for (int a = 0; a < m->n_prep; a++) {
        const mm_matrix *W = m->W[m->prep_mat[a]];
        int64_t K = W->n_cols;
        for (int32_t t = t0; t < t1; t++)
            quant_prepare_act(W->type, m->x + (size_t)t * (size_t)K, m->act[a] + (size_t)t * m->act_stride, K);
        if (m->prep_packed[a])
            quant_pack_act(W->type, m->act[a] + (size_t)t0 * m->act_stride, m->act_stride, K, t1 - t0,
                           m->packed[a] + (t0 ? quant_packed_act_size(W->type, K, t0) : 0));
    }
}

static void mm_prep_task(void *ctx, int32_t task, int32_t thread) {
    (void)thread;
    matmul *m = ctx;
    int32_t t0 = task * MM_PREP_TOKENS, t1 = t0 + MM_PREP_TOKENS;
    mm_prep_range(m, t0, t1 < m->n_tok ? t1 : m->n_tok);
}

void matmul_run(matmul *m, int32_t n_mats, const mm_matrix *const *W, const float *x,
                int32_t n_tok, float *const *y) {
    if (n_mats <= 0 || n_tok <= 0) return;
    if (n_mats > MM_MAX_MATS) n_mats = MM_MAX_MATS;
    m->n_mats = n_mats;
    m->x = x;
    m->n_tok = n_tok;
    int32_t tasks = 0;
    int n_act = 0;
    m->n_prep = 0;
    enum qk_type act_types[MM_MAX_MATS];
    for (int j = 0; j < n_mats; j++) {
        m->W[j] = W[j];
        m->y[j] = y[j];
        m->task_start[j] = tasks;
        enum qk_type vt = quant_traits(W[j]->type)->vec_dot_type;
        int a = 0;
        while (a < n_act && act_types[a] != vt) a++;
        enum mm_mode mode = n_tok >= m->gemm_threshold && !mm_tile_beats_sgemm(W[j]->type) ? MM_SGEMM : MM_GEMV;
        if (a < MM_PACKED_SLOTS && m->packed[a] && n_tok >= m->packed_min_tok &&
            quant_packed_act_size(W[j]->type, W[j]->n_cols, n_tok) > 0)
            mode = MM_PACKED;
        m->mode[j] = mode;
        int64_t rows;
        if (mode == MM_SGEMM) {
            /* Every sgemm call packs all of x again (cost ~1/rows of the
             * multiply), but keep at least two tiles per thread so the
             * cores finish together. */
            rows = MM_TILE_ROWS;
            int64_t bal = W[j]->n_rows / (2 * (int64_t)m->n_threads);
            if (rows > bal) rows = bal;
            rows &= ~(int64_t)15;
            if (rows < 16) rows = 16;
        } else {
            /* ~8 tasks per thread over all matrices, for balance. */
            int64_t total = 0;
            for (int i = 0; i < n_mats; i++) total += W[i]->n_rows;
            rows = total / ((int64_t)m->n_threads * 8);
            rows = (rows + 15) & ~(int64_t)15;
            if (rows < MM_GEMV_ROWS_MIN) rows = MM_GEMV_ROWS_MIN;
            /* Quantise the activations once per distinct vec_dot_type
             * (after the loop, see below). */
            if (a == n_act) {
                act_types[n_act++] = vt;
                m->prep_mat[a] = j;
                m->prep_packed[a] = 0;
            }
            m->act_of[j] = m->act[a];
            if (mode == MM_PACKED) {
                m->prep_packed[a] = 1;
                m->act_of[j] = m->packed[a];
            }
        }
        m->rows_per_task[j] = rows;
        tasks += (int32_t)((W[j]->n_rows + rows - 1) / rows);
    }
    m->task_start[n_mats] = tasks;
    m->n_prep = n_act;
    if (n_act > 0) {
        if (n_tok >= MM_PREP_PAR_MIN && m->n_threads > 1)
            threadpool_run(m->tp, (n_tok + MM_PREP_TOKENS - 1) / MM_PREP_TOKENS, mm_prep_task, m);
        else
            mm_prep_range(m, 0, n_tok);
    }
    threadpool_run(m->tp, tasks, mm_task, m);
}
