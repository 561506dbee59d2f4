/* forward.c -- llama-family forward pass: embeddings, attention blocks with
 * RoPE and GQA, SwiGLU FFN, final norm, logits / pooled embeddings.
 *
 * All tokens of all items of a step go through the matrix products together
 * (one weight pass per step); attention runs per item, since each item sees
 * only its own sequence's KV. Element-wise work is split over token rows on
 * the pool when the step is large, and done inline for decode. The last
 * layer, once every row's K/V is stored, runs only the rows that produce
 * output (a prompt chunk asking for its last logits computes one row). */
#include "forward.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "attention.h"
#include "attention_kinds.h"
#include "linear_attention.h"
#include "rope.h"
#include "vecmath.h"

/* Token rows per element-wise task: 8, so that a 16-sequence decode step
 * splits its norms, RoPE/KV stores and SwiGLU over two threads instead of
 * running them on one while the other spins (135m Q8_0, 16 sequences,
 * perf: the pool's idle-wait samples 3.7% -> 1.6% with the matmul
 * preparation split below it too). */
#define FWD_ROWS_PER_TASK 8

enum fwd_op {
    FWD_OP_EMBED,     /* x[t] = token_embd[token[t]] */
    FWD_OP_NORM,      /* xn[t] = rmsnorm(x[t]) * norm_w */
    FWD_OP_ADD_NORM,  /* x[t] += tmp[t]; xn[t] = rmsnorm(x[t]) * norm_w */
    FWD_OP_ADD,       /* x[t] += tmp[t] */
    FWD_OP_QKV_POST,  /* biases, RoPE, K/V into the cache */
    FWD_OP_SWIGLU     /* g[t] = silu(g[t]) * u[t] */
};

/* Per-token flags of a step. */
#define FWD_TOK_NOROT 1   /* rerope kinds: q and k stay unrotated */
#define FWD_TOK_LINEAR 2  /* linear attention: K/V feed the state, not the cache */
#define FWD_TOK_HWFA 4    /* hwfa: the last layer's K/V also go to the full side store */

/* A single-token decode step (one item, one token, logits out) runs as ONE
 * phased pool job (threadpool_run_phased) instead of ~5 jobs per layer: per
 * layer the phases below, in order, then FD_FINAL and FD_OUT. Serial phases
 * (norms, RoPE and the KV store, activation quantisation) run on whichever
 * thread gets there first while another prefetches the next matrices and
 * then waits at the next phase; a phase change costs a cache-line hand-off
 * instead of a job publish, a wake-up and a wait. Same kernels and
 * arithmetic as the general path. */
enum fd_phase_kind {
    FD_PRE,       /* serial: x += tmp, xn = norm (not layer 0); quantise xn for Q/K/V */
    FD_QKV,       /* GEMV rows of wq, wk, wv */
    FD_POST,      /* serial: biases, RoPE, K/V into the cache */
    FD_ATTN,      /* a contiguous run of heads per thread */
    FD_ATTQ,      /* serial: quantise att for wo */
    FD_WO,        /* GEMV rows of wo */
    FD_FFN_NORM,  /* serial: x += tmp, xn = norm; quantise for gate/up */
    FD_GU,        /* GEMV rows of gate, up */
    FD_SILU,      /* serial: g = silu(g) * u; quantise g for down */
    FD_DOWN,      /* GEMV rows of down */
    FD_PER_LAYER,
    FD_FINAL = FD_PER_LAYER, /* serial, after the last layer: final norm, quantise */
    FD_OUT                   /* GEMV rows of the output matrix */
};

/* Attention chunks in a step from which f32 caches also run attention per
 * KV head group (see fwd_attn_task). */
#define FWD_GROUP_MIN_CHUNKS 4

/* Matrix groups of the GEMV phases; their row split is the same in every layer. */
enum { FD_PLAN_QKV, FD_PLAN_WO, FD_PLAN_GU, FD_PLAN_DOWN, FD_PLAN_OUT, FD_N_PLANS };
/* GEMV tasks per thread and phase: a barrier waits on average half a task
 * for the slower thread, so tasks are small (1/16 of a phase with 2
 * threads); a claim is one CAS, cheap next to a 10-40 us phase. */
#define FD_TASKS_PER_THREAD 8

typedef struct fd_plan {
    int32_t n_mats;
    int64_t rows;                       /* per task, a multiple of 16 */
    int32_t task_start[MM_MAX_MATS + 1];
} fd_plan;

typedef struct fwd_chunk { /* ATTN_Q_CHUNK or fewer query rows of one item */
    int32_t seq, t0, n, pos0;
} fwd_chunk;

struct forward {
    const model *m;
    threadpool *tp;
    matmul *mm;
    kv_cache *kv;        /* of the current step */
    const attn_seq_state *seq_attn; /* [max_seqs] per-sequence kind (engine-owned) or NULL */
    attn_params attn_default;       /* for sequences without a state */
    attn_model_info ami;
    int32_t max_tok, n_ctx, n_threads;
    int32_t qd, kd;      /* n_head * head_dim, n_head_kv * head_dim */
    attn_shape shape;
    /* Activations, [max_tok][width]. */
    float *x, *xn, *q, *k, *v, *att, *tmp, *g, *u;
    float *rope_cos, *rope_sin;   /* [max_tok][n_rot/2] */
    double *inv_freq;             /* [n_rot/2] */
    int32_t *tok, *tok_seq, *tok_pos; /* [max_tok] */
    uint8_t *tok_flags;           /* [max_tok] FWD_TOK_* */
    int32_t *lin_items;           /* [max_tok] items with linear attention */
    int32_t *lin_t0;              /* [max_tok] their first token row */
    int32_t n_lin;
    const engine_item *step_items;
    fwd_chunk *chunks;            /* [max_tok] */
    int32_t n_chunks;
    float *attn_scratch;          /* [n_threads][attn_scratch_floats] */
    size_t attn_scratch_floats;
    int32_t *out_rows;            /* [max_tok] token index of each logits row */
    float *hid;                   /* [max_tok][n_embd] normed rows for the output matrix */
    float *embd;                  /* [max_tok][n_embd] pooled embeddings per item */
    float *logits;                /* [logits_cap][n_vocab] */
    int32_t logits_cap;
    /* The current element-wise job. */
    enum fwd_op op;
    int32_t n_tok, layer;
    const float *norm_w;
    /* Single-token decode as one phased pool job (fwd_decode1). */
    int decode1;                  /* enabled (env QKVD_DECODE_PHASED=0 turns it off) */
    fd_plan plan[FD_N_PLANS];     /* row split of each matrix group */
    int32_t *fd_end;              /* [n_layer * FD_PER_LAYER + 2] phase ends */
    int32_t fd_n_phases;
    int32_t fd_att_tasks;         /* attention phase tasks: runs of heads */
    uint8_t *dact[MM_MAX_MATS];   /* quantised activations per distinct vec_dot_type */
    const uint8_t *dact_of[MM_MAX_MATS]; /* of each matrix of the next GEMV phase */
};

static int fwd_decode1_init(forward *f, int64_t max_cols);

matmul *forward_matmul(forward *f) { return f->mm; }

void forward_set_seq_attn(forward *f, const attn_seq_state *states) { f->seq_attn = states; }

void forward_free(forward *f) {
    if (!f) return;
    matmul_free(f->mm);
    free(f->x); free(f->xn); free(f->q); free(f->k); free(f->v); free(f->att);
    free(f->tmp); free(f->g); free(f->u); free(f->rope_cos); free(f->rope_sin);
    free(f->inv_freq); free(f->tok_flags); free(f->lin_items); free(f->lin_t0); free(f->tok); free(f->tok_seq); free(f->tok_pos); free(f->chunks);
    free(f->attn_scratch); free(f->out_rows); free(f->hid); free(f->embd); free(f->logits);
    free(f->fd_end);
    for (int i = 0; i < MM_MAX_MATS; i++) free(f->dact[i]);
    free(f);
}

static float *fwd_alloc(size_t rows, size_t width) {
    return aligned_alloc(64, ((rows * width * sizeof(float)) + 63) & ~(size_t)63);
}

forward *forward_create(const model *m, threadpool *tp, int32_t max_tok, int32_t n_ctx,
                        char *err, size_t errlen) {
    const model_hparams *hp = &m->hp;
    forward *f = calloc(1, sizeof *f);
    if (!f) goto oom;
    f->m = m;
    f->tp = tp;
    f->max_tok = max_tok;
    f->n_ctx = n_ctx;
    f->n_threads = threadpool_n_threads(tp);
    f->qd = hp->n_head * hp->head_dim;
    f->kd = hp->n_head_kv * hp->head_dim;
    f->shape.n_head = hp->n_head;
    f->shape.n_head_kv = hp->n_head_kv;
    f->shape.head_dim = hp->head_dim;
    f->shape.scale = 1.0f / sqrtf((float)hp->head_dim);
    size_t T = (size_t)max_tok, E = (size_t)hp->n_embd, F = (size_t)hp->n_ff;
    int64_t max_cols = hp->n_embd;
    if (hp->n_ff > max_cols) max_cols = hp->n_ff;
    if (f->qd > max_cols) max_cols = f->qd;
    f->mm = matmul_create(tp, max_cols, max_tok);
    f->x = fwd_alloc(T, E);
    f->xn = fwd_alloc(T, E);
    f->tmp = fwd_alloc(T, E);
    f->q = fwd_alloc(T, (size_t)f->qd);
    f->att = fwd_alloc(T, (size_t)f->qd);
    f->k = fwd_alloc(T, (size_t)f->kd);
    f->v = fwd_alloc(T, (size_t)f->kd);
    f->g = fwd_alloc(T, F);
    f->u = fwd_alloc(T, F);
    f->rope_cos = fwd_alloc(T, (size_t)hp->n_rot / 2);
    f->rope_sin = fwd_alloc(T, (size_t)hp->n_rot / 2);
    f->inv_freq = calloc((size_t)hp->n_rot / 2, sizeof(double));
    f->tok = calloc(T, sizeof(int32_t));
    f->tok_seq = calloc(T, sizeof(int32_t));
    f->tok_pos = calloc(T, sizeof(int32_t));
    f->tok_flags = calloc(T, 1);
    f->lin_items = calloc(T, sizeof(int32_t));
    f->lin_t0 = calloc(T, sizeof(int32_t));
    f->chunks = calloc(T, sizeof(fwd_chunk));
    f->out_rows = calloc(T, sizeof(int32_t));
    f->hid = fwd_alloc(T, E);
    f->embd = fwd_alloc(T, E);
    /* Any cache type and block size (scores plus one converted block),
     * every attention kind, linear attention's state update. */
    f->attn_scratch_floats = attention_scratch_floats_kv(ATTN_Q_CHUNK, attention_max_keys(n_ctx, ATTN_Q_CHUNK),
                                                         hp->head_dim, KV_BLOCK_MAX);
    if (f->attn_scratch_floats < attention_kind_scratch_floats(ATTN_Q_CHUNK, n_ctx, hp->head_dim))
        f->attn_scratch_floats = attention_kind_scratch_floats(ATTN_Q_CHUNK, n_ctx, hp->head_dim);
    if (f->attn_scratch_floats < linear_scratch_floats(hp->head_dim))
        f->attn_scratch_floats = linear_scratch_floats(hp->head_dim);
    f->attn_scratch = fwd_alloc((size_t)f->n_threads, f->attn_scratch_floats);
    if (fwd_decode1_init(f, max_cols) != 0) goto oom;
    if (!f->mm || !f->x || !f->xn || !f->tmp || !f->q || !f->att || !f->k || !f->v || !f->g ||
        !f->u || !f->rope_cos || !f->rope_sin || !f->inv_freq || !f->tok || !f->tok_seq ||
        !f->tok_pos || !f->tok_flags || !f->lin_items || !f->lin_t0 || !f->chunks || !f->out_rows || !f->hid || !f->embd || !f->attn_scratch)
        goto oom;
    attn_params_default(&f->attn_default);
    f->ami.n_layer = hp->n_layer;
    f->ami.n_ctx_train = hp->n_ctx_train;
    f->ami.n_rot = hp->n_rot;
    f->ami.neox = m->arch->rope == MODEL_ROPE_NEOX;
    f->ami.rope_base = hp->rope_base;
    f->ami.freq_div = m->rope_freqs;
    rope_params_default(&f->ami.rope);
    f->ami.rope.type = (enum rope_scaling)hp->rope_scaling;
    f->ami.rope.factor = hp->rope_scale_factor;
    f->ami.rope.orig_ctx = hp->rope_orig_ctx;
    return f;
oom:
    snprintf(err, errlen, "out of memory allocating activation buffers for %d tokens", max_tok);
    forward_free(f);
    return NULL;
}

/* Split n_mats matrices of the given row counts into tasks of a common
 * row count: FD_TASKS_PER_THREAD per thread over the group, but no task
 * over FD_TASK_MAX_BYTES of weights (row_bytes: the group's widest row),
 * so the slower thread's last task -- what a barrier waits for -- stays
 * short on big matrices too (a 1b gate/up task would be 1.2 MB). */
#define FD_TASK_MAX_BYTES (256 * 1024)

static void fd_plan_make(fd_plan *pl, int32_t n_threads, int32_t n_mats, const int64_t *rows, size_t row_bytes) {
    int64_t total = 0;
    for (int32_t j = 0; j < n_mats; j++) total += rows[j];
    int64_t r = total / ((int64_t)n_threads * FD_TASKS_PER_THREAD);
    if (row_bytes > 0 && r > (int64_t)(FD_TASK_MAX_BYTES / row_bytes)) r = (int64_t)(FD_TASK_MAX_BYTES / row_bytes);
    r = (r + 15) & ~(int64_t)15;
    if (r < 16) r = 16;
    pl->n_mats = n_mats;
    pl->rows = r;
    pl->task_start[0] = 0;
    for (int32_t j = 0; j < n_mats; j++)
        pl->task_start[j + 1] = pl->task_start[j] + (int32_t)((rows[j] + r - 1) / r);
}

static size_t fd_max_rb(size_t rb, const mm_matrix *W) { return W->row_bytes > rb ? W->row_bytes : rb; }

/* Plans, phase ends and activation buffers of the single-token decode job.
 * Returns -ENOMEM on allocation failure. */
static int fwd_decode1_init(forward *f, int64_t max_cols) {
    const model_hparams *hp = &f->m->hp;
    const char *env = getenv("QKVD_DECODE_PHASED");
    f->decode1 = !(env && strcmp(env, "0") == 0);
    int64_t qkv[3] = {f->qd, f->kd, f->kd}, wo[1] = {hp->n_embd}, gu[2] = {hp->n_ff, hp->n_ff};
    int64_t out[1] = {hp->n_vocab};
    size_t rb_qkv = 0, rb_wo = 0, rb_gu = 0, rb_dn = 0;
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const model_layer *L = &f->m->layers[il];
        rb_qkv = fd_max_rb(fd_max_rb(fd_max_rb(rb_qkv, &L->wq), &L->wk), &L->wv);
        rb_wo = fd_max_rb(rb_wo, &L->wo);
        rb_gu = fd_max_rb(fd_max_rb(rb_gu, &L->gate), &L->up);
        rb_dn = fd_max_rb(rb_dn, &L->down);
    }
    fd_plan_make(&f->plan[FD_PLAN_QKV], f->n_threads, 3, qkv, rb_qkv);
    fd_plan_make(&f->plan[FD_PLAN_WO], f->n_threads, 1, wo, rb_wo);
    fd_plan_make(&f->plan[FD_PLAN_GU], f->n_threads, 2, gu, rb_gu);
    fd_plan_make(&f->plan[FD_PLAN_DOWN], f->n_threads, 1, wo, rb_dn);
    fd_plan_make(&f->plan[FD_PLAN_OUT], f->n_threads, 1, out, f->m->output.row_bytes);
    f->fd_att_tasks = f->n_threads < hp->n_head ? f->n_threads : hp->n_head;
    f->fd_n_phases = hp->n_layer * FD_PER_LAYER + 2;
    f->fd_end = calloc((size_t)f->fd_n_phases, sizeof(int32_t));
    if (!f->fd_end) return -ENOMEM;
    int32_t t = 0;
    for (int32_t p = 0; p < f->fd_n_phases; p++) {
        int32_t k = p >= hp->n_layer * FD_PER_LAYER ? FD_PER_LAYER + (p - hp->n_layer * FD_PER_LAYER) : p % FD_PER_LAYER;
        switch (k) {
        case FD_QKV: t += f->plan[FD_PLAN_QKV].task_start[3]; break;
        /* One task per thread, each a contiguous run of heads: the query
         * heads of a KV group then run back to back on one core and find
         * the group's K/V rows in its cache (with a task per head the two
         * cores interleave and each fetch the rows). */
        case FD_ATTN: t += f->fd_att_tasks; break;
        case FD_WO: t += f->plan[FD_PLAN_WO].task_start[1]; break;
        case FD_GU: t += f->plan[FD_PLAN_GU].task_start[2]; break;
        case FD_DOWN: t += f->plan[FD_PLAN_DOWN].task_start[1]; break;
        case FD_OUT: t += f->plan[FD_PLAN_OUT].task_start[1]; break;
        /* serial: the work, plus (2+ threads) a task that prefetches the
         * start of the next matrix group while the bus would idle */
        default: t += f->n_threads > 1 && k != FD_POST ? 2 : 1; break;
        }
        f->fd_end[p] = t;
    }
    /* f32 is the widest activation format */
    size_t bytes = ((size_t)max_cols * sizeof(float) + 64 + 63) & ~(size_t)63;
    for (int i = 0; i < MM_MAX_MATS; i++) {
        f->dact[i] = aligned_alloc(64, bytes);
        if (!f->dact[i]) return -ENOMEM;
    }
    return 0;
}

static void fwd_rmsnorm(float *out, const float *x, const float *w, int32_t n, float eps) {
    /* Four partial sums: one dependent chain of double adds made this
     * serial step (the other thread waits for it in decode) 4x longer. */
    double s4[4] = {0, 0, 0, 0};
    int32_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s4[k] += (double)x[i + k] * x[i + k];
    double ss = (s4[0] + s4[1]) + (s4[2] + s4[3]);
    for (; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + eps));
    for (int32_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

static void fwd_rows(forward *f, int32_t t0, int32_t t1) {
    const model *m = f->m;
    const model_hparams *hp = &m->hp;
    const int32_t E = hp->n_embd;
    switch (f->op) {
    case FWD_OP_EMBED:
        for (int32_t t = t0; t < t1; t++)
            quant_dequantize_row(m->tok_embd.type,
                                 (const uint8_t *)m->tok_embd.data +
                                     (size_t)f->tok[t] * m->tok_embd.row_bytes,
                                 f->x + (size_t)t * E, E);
        break;
    case FWD_OP_ADD_NORM:
    case FWD_OP_ADD:
        for (int32_t t = t0; t < t1; t++) {
            float *x = f->x + (size_t)t * E;
            const float *d = f->tmp + (size_t)t * E;
            for (int32_t i = 0; i < E; i++) x[i] += d[i];
        }
        if (f->op == FWD_OP_ADD) break;
        /* fall through */
    case FWD_OP_NORM:
        for (int32_t t = t0; t < t1; t++)
            fwd_rmsnorm(f->xn + (size_t)t * E, f->x + (size_t)t * E, f->norm_w, E, hp->norm_eps);
        break;
    case FWD_OP_QKV_POST: {
        const model_layer *L = &m->layers[f->layer];
        const int32_t half = hp->n_rot / 2;
        for (int32_t t = t0; t < t1; t++) {
            float *q = f->q + (size_t)t * f->qd;
            float *k = f->k + (size_t)t * f->kd;
            float *v = f->v + (size_t)t * f->kd;
            if (L->bq) for (int32_t i = 0; i < f->qd; i++) q[i] += L->bq[i];
            if (L->bk) for (int32_t i = 0; i < f->kd; i++) k[i] += L->bk[i];
            if (L->bv) for (int32_t i = 0; i < f->kd; i++) v[i] += L->bv[i];
            const float *c = f->rope_cos + (size_t)t * half, *s = f->rope_sin + (size_t)t * half;
            if (!(f->tok_flags[t] & FWD_TOK_NOROT)) {
                rope_rotate(q, hp->n_head, hp->head_dim, hp->n_rot, m->arch->rope == MODEL_ROPE_NEOX, c, s);
                rope_rotate(k, hp->n_head_kv, hp->head_dim, hp->n_rot, m->arch->rope == MODEL_ROPE_NEOX, c, s);
            }
            if (f->tok_flags[t] & FWD_TOK_LINEAR) continue; /* no KV: the state takes k, v */
            if ((f->tok_flags[t] & FWD_TOK_HWFA) && f->layer == hp->n_layer - 1) {
                float *row = f->seq_attn[f->tok_seq[t]].hw_kv + (size_t)f->tok_pos[t] * 2 * f->kd;
                memcpy(row, k, (size_t)f->kd * sizeof(float));
                memcpy(row + f->kd, v, (size_t)f->kd * sizeof(float));
            }
            /* Converted to the cache's element type on store. */
            kv_cache_store(f->kv, f->tok_seq[t], f->layer, f->tok_pos[t], k, v);
        }
        break;
    }
    case FWD_OP_SWIGLU: {
        const size_t F = (size_t)hp->n_ff;
        vec_silu_mul(f->g + (size_t)t0 * F, f->u + (size_t)t0 * F, (size_t)(t1 - t0) * F);
        break;
    }
    }
}

static void fwd_rows_task(void *ctx, int32_t task, int32_t thread) {
    (void)thread;
    forward *f = ctx;
    int32_t t0 = task * FWD_ROWS_PER_TASK, t1 = t0 + FWD_ROWS_PER_TASK;
    if (t1 > f->n_tok) t1 = f->n_tok;
    fwd_rows(f, t0, t1);
}

static void fwd_run_rows(forward *f, enum fwd_op op, int32_t n_tok, const float *norm_w) {
    f->op = op;
    f->n_tok = n_tok;
    f->norm_w = norm_w;
    int32_t tasks = (n_tok + FWD_ROWS_PER_TASK - 1) / FWD_ROWS_PER_TASK;
    if (tasks <= 1) fwd_rows(f, 0, n_tok);
    else threadpool_run(f->tp, tasks, fwd_rows_task, f);
}

static const attn_params *fwd_seq_params(const forward *f, int32_t seq) {
    return f->seq_attn ? &f->seq_attn[seq].p : &f->attn_default;
}

/* Tasks [0, n_chunks * n_head): softmax-family chunks per query head;
 * then one task per (linear item, KV head), which runs the item's tokens
 * in order through that head's state. */
static void fwd_attn_task(void *ctx, int32_t task, int32_t thread) {
    forward *f = ctx;
    int32_t n_head = f->shape.n_head, hd = f->shape.head_dim;
    float *scratch = f->attn_scratch + (size_t)thread * f->attn_scratch_floats;
    if (task >= f->n_chunks * n_head) {
        task -= f->n_chunks * n_head;
        int32_t nkv = f->shape.n_head_kv, group = n_head / nkv;
        int32_t li = task / nkv, kvh = task % nkv;
        const engine_item *it = &f->step_items[f->lin_items[li]];
        int32_t t0 = f->lin_t0[li];
        float *st = f->seq_attn[it->seq].lin_state +
                    ((size_t)f->layer * nkv + kvh) * linear_state_floats(hd);
        linear_attention_run(st, hd, group, f->q + (size_t)t0 * f->qd + (size_t)kvh * group * hd, (size_t)f->qd,
                             f->k + (size_t)t0 * f->kd + (size_t)kvh * hd,
                             f->v + (size_t)t0 * f->kd + (size_t)kvh * hd, (size_t)f->kd, it->n_tokens,
                             f->shape.scale, f->att + (size_t)t0 * f->qd + (size_t)kvh * group * hd,
                             (size_t)f->qd, it->n_tokens > 1, scratch);
        return;
    }
    const fwd_chunk *c = &f->chunks[task / n_head];
    int32_t h = task % n_head;
    const attn_params *ap = fwd_seq_params(f, c->seq);
    if (ap->kind == ATTN_HWFA && f->seq_attn && f->layer == f->ami.n_layer - 1) {
        /* hwfa's full last layer reads the side store (the cache holds windows). */
        int32_t L = ap->rope_set && ap->rope.orig_ctx > 0 ? ap->rope.orig_ctx : f->ami.n_ctx_train;
        attention_contig_rows(f->seq_attn[c->seq].hw_kv, 2 * (size_t)f->kd, (size_t)f->kd, &f->shape, ap->logn, L, h,
                              f->q + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, c->n, c->pos0,
                              f->att + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, scratch);
        return;
    }
    int32_t group = n_head / f->shape.n_head_kv;
    if (group > 1 && (kv_cache_type(f->kv) != KV_F32 || f->n_chunks >= FWD_GROUP_MIN_CHUNKS) &&
        c->n * group <= ATTN_Q_CHUNK && attention_kind_plain(ap, &f->ami, f->layer)) {
        /* Few query rows (decode): the group's first head's task runs all
         * heads of its KV head, so each block of K/V rows is converted
         * (f16/q8_0/q12_0) or read (f32) once instead of once per query
         * head (same results). An f32 cache takes this path only in a
         * batch of several sequences, where the KV heads' tasks still
         * outnumber the threads: in a 16-sequence step with ~160-token
         * contexts the per-head reads of f32 K/V rows were a quarter of
         * the server's time (perf, 135m, GQA 9/3). */
        if (h % group) return;
        attention_causal_group(f->kv, c->seq, f->layer, &f->shape, h, group,
                               f->q + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, c->n, c->pos0,
                               f->att + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, scratch);
        return;
    }
    attention_kind_rows(f->kv, c->seq, f->layer, &f->shape, &f->ami, fwd_seq_params(f, c->seq), h,
                        f->q + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, c->n, c->pos0,
                        f->att + (size_t)c->t0 * f->qd + (size_t)h * hd, (size_t)f->qd, scratch);
}

/* Attention chunks for the output rows only (last layer, compacted). */
static void fwd_out_chunks(forward *f, const engine_item *items, int32_t n_items) {
    int32_t T = 0;
    f->n_chunks = 0;
    for (int32_t i = 0; i < n_items; i++) {
        const engine_item *it = &items[i];
        int32_t pos0 = f->tok_pos[T];
        if (f->tok_flags[T] & FWD_TOK_LINEAR) {
            T += it->n_tokens;
            continue;
        }
        if (it->out == ENGINE_OUT_LAST) {
            fwd_chunk *c = &f->chunks[f->n_chunks++];
            c->seq = it->seq;
            c->t0 = T + it->n_tokens - 1;
            c->n = 1;
            c->pos0 = pos0 + it->n_tokens - 1;
        } else if (it->out == ENGINE_OUT_ALL) {
            for (int32_t j = 0; j < it->n_tokens; j += ATTN_Q_CHUNK) {
                fwd_chunk *c = &f->chunks[f->n_chunks++];
                c->seq = it->seq;
                c->t0 = T + j;
                c->n = it->n_tokens - j < ATTN_Q_CHUNK ? it->n_tokens - j : ATTN_Q_CHUNK;
                c->pos0 = pos0 + j;
            }
        }
        T += it->n_tokens;
    }
}

/* Quantise x once per distinct vec_dot_type of the n matrices W and point
 * dact_of at each matrix's copy (a serial phase: the GEMV phase after it
 * reads them). */
static void fd_quantise(forward *f, int32_t n, const mm_matrix *const *W, const float *x) {
    enum qk_type types[MM_MAX_MATS];
    int n_act = 0;
    for (int32_t j = 0; j < n; j++) {
        enum qk_type vt = quant_traits(W[j]->type)->vec_dot_type;
        int a = 0;
        while (a < n_act && types[a] != vt) a++;
        if (a == n_act) {
            types[n_act++] = vt;
            quant_prepare_act(W[j]->type, x, f->dact[a], W[j]->n_cols);
        }
        f->dact_of[j] = f->dact[a];
    }
}

/* One task of a GEMV phase: a row block of one matrix of the group. */
static void fd_gemv(forward *f, const fd_plan *pl, const mm_matrix *const *W, float *const *y, int32_t task) {
    int32_t j = 0;
    while (j + 1 < pl->n_mats && task >= pl->task_start[j + 1]) j++;
    int64_t r0 = (int64_t)(task - pl->task_start[j]) * pl->rows, r1 = r0 + pl->rows;
    if (r1 > W[j]->n_rows) r1 = W[j]->n_rows;
    quant_gemv_rows(W[j]->type, W[j]->data, f->dact_of[j], y[j], W[j]->n_cols, r0, r1);
}

/* Bytes of the next GEMV group a serial phase's helper task prefetches:
 * about what the bus moves during the serial step (a few microseconds). */
#define FD_PREFETCH_BYTES (32 * 1024)

static void fd_prefetch(const mm_matrix *W, size_t bytes) {
    size_t total = (size_t)W->n_rows * W->row_bytes;
    if (bytes > total) bytes = total;
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)W->data + o, 0, 3);
}

/* x += tmp; xn = rmsnorm(x) * w for the step's single row. */
static void fd_add_norm(forward *f, const float *w) {
    f->op = FWD_OP_ADD_NORM;
    f->norm_w = w;
    fwd_rows(f, 0, 1);
}

static void fd_phase(void *ctx, int32_t phase, int32_t task, int32_t thread) {
    forward *f = ctx;
    const model *m = f->m;
    const model_hparams *hp = &m->hp;
    int32_t il = phase / FD_PER_LAYER, k = phase % FD_PER_LAYER;
    if (il >= hp->n_layer) {
        il = hp->n_layer - 1;
        k = FD_PER_LAYER + (phase - hp->n_layer * FD_PER_LAYER);
    }
    const model_layer *L = &m->layers[il];
    const mm_matrix *qkv[3] = {&L->wq, &L->wk, &L->wv}, *wo[1] = {&L->wo}, *gu[2] = {&L->gate, &L->up};
    const mm_matrix *dn[1] = {&L->down}, *out[1] = {&m->output};
    if (task == 1) { /* the helper task of a serial phase */
        switch (k) {
        case FD_PRE: fd_prefetch(&L->wq, FD_PREFETCH_BYTES); break;
        case FD_ATTQ: fd_prefetch(&L->wo, FD_PREFETCH_BYTES); break;
        case FD_FFN_NORM: fd_prefetch(&L->gate, FD_PREFETCH_BYTES); break;
        case FD_SILU: fd_prefetch(&L->down, FD_PREFETCH_BYTES); break;
        case FD_FINAL: fd_prefetch(&m->output, FD_PREFETCH_BYTES); break;
        default: break;
        }
        if (k == FD_PRE || k == FD_ATTQ || k == FD_FFN_NORM || k == FD_SILU || k == FD_FINAL) return;
    }
    switch (k) {
    case FD_PRE:
        f->layer = il;
        if (il > 0) fd_add_norm(f, L->attn_norm);
        fd_quantise(f, 3, qkv, f->xn);
        break;
    case FD_QKV: {
        float *y[3] = {f->q, f->k, f->v};
        fd_gemv(f, &f->plan[FD_PLAN_QKV], qkv, y, task);
        break;
    }
    case FD_POST:
        f->op = FWD_OP_QKV_POST;
        fwd_rows(f, 0, 1);
        break;
    case FD_ATTN: { /* a contiguous run of heads per thread (see fwd_decode1_init) */
        int32_t h0 = (int32_t)((int64_t)task * hp->n_head / f->fd_att_tasks);
        int32_t h1 = (int32_t)((int64_t)(task + 1) * hp->n_head / f->fd_att_tasks);
        for (int32_t h = h0; h < h1; h++) fwd_attn_task(f, h, thread);
        break;
    }
    case FD_ATTQ: fd_quantise(f, 1, wo, f->att); break;
    case FD_WO: fd_gemv(f, &f->plan[FD_PLAN_WO], wo, &f->tmp, task); break;
    case FD_FFN_NORM:
        fd_add_norm(f, L->ffn_norm);
        fd_quantise(f, 2, gu, f->xn);
        break;
    case FD_GU: {
        float *y[2] = {f->g, f->u};
        fd_gemv(f, &f->plan[FD_PLAN_GU], gu, y, task);
        break;
    }
    case FD_SILU:
        vec_silu_mul(f->g, f->u, (size_t)hp->n_ff);
        fd_quantise(f, 1, dn, f->g);
        break;
    case FD_DOWN: fd_gemv(f, &f->plan[FD_PLAN_DOWN], dn, &f->tmp, task); break;
    case FD_FINAL:
        fd_add_norm(f, m->output_norm);
        fd_quantise(f, 1, out, f->xn);
        break;
    case FD_OUT: fd_gemv(f, &f->plan[FD_PLAN_OUT], out, &f->logits, task); break;
    }
}

int forward_step(forward *f, kv_cache *kv, engine_item *items, int32_t n_items) {
    const model *m = f->m;
    const model_hparams *hp = &m->hp;
    const int32_t E = hp->n_embd, V = hp->n_vocab, half = hp->n_rot / 2;
    f->kv = kv;

    /* Lay the batch out: token rows, positions, attention chunks, output rows. */
    int32_t T = 0, n_out = 0;
    f->n_chunks = 0;
    f->n_lin = 0;
    f->step_items = items;
    for (int32_t i = 0; i < n_items; i++) {
        engine_item *it = &items[i];
        const attn_params *ap = fwd_seq_params(f, it->seq);
        int linear = ap->kind == ATTN_LINEAR && f->seq_attn;
        int32_t pos0 = linear ? f->seq_attn[it->seq].lin_len : kv_cache_seq_len(kv, it->seq);
        uint8_t flags = (uint8_t)((linear ? FWD_TOK_LINEAR : 0) |
                                  (ap->kind == ATTN_HWFA && f->seq_attn ? FWD_TOK_HWFA : 0) |
                                  (attn_kv_need_of(ap) == ATTN_KV_UNROTATED || attn_dynamic_exact(ap, &f->ami.rope)
                                       ? FWD_TOK_NOROT : 0));
        for (int32_t j = 0; j < it->n_tokens; j++) {
            f->tok[T + j] = it->tokens[j];
            f->tok_seq[T + j] = it->seq;
            f->tok_pos[T + j] = pos0 + j;
            f->tok_flags[T + j] = flags;
        }
        if (linear) {
            f->lin_items[f->n_lin] = i;
            f->lin_t0[f->n_lin++] = T;
        }
        for (int32_t j = 0; !linear && j < it->n_tokens; j += ATTN_Q_CHUNK) {
            fwd_chunk *c = &f->chunks[f->n_chunks++];
            c->seq = it->seq;
            c->t0 = T + j;
            c->n = it->n_tokens - j < ATTN_Q_CHUNK ? it->n_tokens - j : ATTN_Q_CHUNK;
            c->pos0 = pos0 + j;
        }
        if (it->out == ENGINE_OUT_LAST) f->out_rows[n_out++] = T + it->n_tokens - 1;
        else if (it->out == ENGINE_OUT_ALL)
            for (int32_t j = 0; j < it->n_tokens; j++) f->out_rows[n_out++] = T + j;
        T += it->n_tokens;
    }
    if (n_out > f->logits_cap) {
        free(f->logits);
        f->logits_cap = 0;
        f->logits = fwd_alloc((size_t)n_out, (size_t)V);
        if (!f->logits) return -ENOMEM;
        f->logits_cap = n_out;
    }

    /* cos/sin per token under its sequence's RoPE scaling (frequencies
     * once per item, per token only for dynamic-ntk; yarn's mscale is
     * folded into both q and k, i.e. mscale^2 on the logits). */
    for (int32_t i = 0, t = 0; i < n_items; t += items[i].n_tokens, i++) {
        const attn_params *ap = fwd_seq_params(f, items[i].seq);
        const rope_params *rp = ap->rope_set ? &ap->rope : &f->ami.rope;
        float msc = 1.0f;
        for (int32_t j = 0; j < items[i].n_tokens; j++) {
            int32_t tt = t + j;
            if (f->tok_flags[tt] & FWD_TOK_NOROT) continue;
            if (j == 0 || rp->type == ROPE_SCALING_DYNAMIC_NTK)
                msc = rope_freqs(rp, hp->n_rot, hp->rope_base, m->rope_freqs, hp->n_ctx_train, f->tok_pos[tt],
                                 f->inv_freq);
            double p = f->tok_pos[tt];
            for (int32_t d = 0; d < half; d++) {
                double th = p * f->inv_freq[d];
                f->rope_cos[(size_t)tt * half + d] = (float)cos(th) * msc;
                f->rope_sin[(size_t)tt * half + d] = (float)sin(th) * msc;
            }
        }
    }

    fwd_run_rows(f, FWD_OP_EMBED, T, NULL);
    fwd_run_rows(f, FWD_OP_NORM, T, m->layers[0].attn_norm);
    /* On a CPU shared with other work (threadpool_contended) a thread
     * preempted inside a phase stalls the other at the next barrier, and
     * one job per matrix group measured ~8% faster (135m Q4_0, load 6 on 2
     * CPUs); on free cores the phased job saves the hand-offs. */
    if (f->decode1 && n_items == 1 && T == 1 && items[0].out == ENGINE_OUT_LAST && f->n_lin == 0 &&
        f->n_chunks == 1 && !threadpool_contended(f->tp)) {
        threadpool_run_phased(f->tp, f->fd_n_phases, f->fd_end, fd_phase, f);
        items[0].logits = f->logits;
        return 0;
    }
    /* In the last layer only the rows that produce output matter once
     * their K/V are stored: attention, FFN and the final norm run on those
     * rows alone (a prompt chunk with ENGINE_OUT_LAST saves 1/n_layer of
     * its work). Embeddings pool every row, so they keep all. */
    int has_embd = 0;
    for (int32_t i = 0; i < n_items; i++) has_embd |= items[i].out == ENGINE_OUT_EMBD;
    int compact = 0;
    int32_t Tl = T; /* rows the rest of the current layer works on */
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const model_layer *L = &m->layers[il];
        f->layer = il;
        const mm_matrix *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_out[3] = {f->q, f->k, f->v};
        matmul_run(f->mm, 3, qkv, f->xn, T, qkv_out);
        fwd_run_rows(f, FWD_OP_QKV_POST, T, NULL);
        if (il == hp->n_layer - 1 && !has_embd && n_out < T) {
            compact = 1;
            Tl = n_out;
            fwd_out_chunks(f, items, n_items);
            if (n_out == 0) {
                /* Only the K/V were wanted -- and the linear states, which
                 * must take in every token of every layer. */
                if (f->n_lin) threadpool_run(f->tp, f->n_lin * hp->n_head_kv, fwd_attn_task, f);
                break;
            }
        }
        threadpool_run(f->tp, f->n_chunks * hp->n_head + f->n_lin * hp->n_head_kv, fwd_attn_task, f);
        if (compact) {
            /* Move the output rows to the front (out_rows ascend: r <= t). */
            for (int32_t r = 0; r < n_out; r++) {
                int32_t t = f->out_rows[r];
                if (t == r) continue;
                memcpy(f->att + (size_t)r * f->qd, f->att + (size_t)t * f->qd, (size_t)f->qd * sizeof(float));
                memcpy(f->x + (size_t)r * E, f->x + (size_t)t * E, (size_t)E * sizeof(float));
            }
        }
        const mm_matrix *wo[1] = {&L->wo};
        float *wo_out[1] = {f->tmp};
        matmul_run(f->mm, 1, wo, f->att, Tl, wo_out);
        fwd_run_rows(f, FWD_OP_ADD_NORM, Tl, L->ffn_norm);
        const mm_matrix *gu[2] = {&L->gate, &L->up};
        float *gu_out[2] = {f->g, f->u};
        matmul_run(f->mm, 2, gu, f->xn, Tl, gu_out);
        fwd_run_rows(f, FWD_OP_SWIGLU, Tl, NULL);
        const mm_matrix *dn[1] = {&L->down};
        float *dn_out[1] = {f->tmp};
        matmul_run(f->mm, 1, dn, f->g, Tl, dn_out);
        /* Fuse the residual with the next layer's attention norm (or the
         * final norm, which feeds the output rows). */
        const float *next = il + 1 < hp->n_layer ? m->layers[il + 1].attn_norm : m->output_norm;
        fwd_run_rows(f, FWD_OP_ADD_NORM, Tl, next);
    }

    /* xn holds the final-normed hidden states: of every token, or of the
     * output rows in order when the last layer was compacted. */
    for (int32_t r = 0; r < n_out; r++)
        memcpy(f->hid + (size_t)r * E, f->xn + (size_t)(compact ? r : f->out_rows[r]) * E,
               (size_t)E * sizeof(float));
    if (n_out > 0) {
        const mm_matrix *out[1] = {&m->output};
        float *lg[1] = {f->logits};
        matmul_run(f->mm, 1, out, f->hid, n_out, lg);
    }
    int32_t r = 0, t = 0;
    for (int32_t i = 0; i < n_items; i++) {
        engine_item *it = &items[i];
        it->logits = NULL;
        if (it->out == ENGINE_OUT_LAST) {
            it->logits = f->logits + (size_t)r++ * V;
        } else if (it->out == ENGINE_OUT_ALL) {
            it->logits = f->logits + (size_t)r * V;
            r += it->n_tokens;
        } else if (it->out == ENGINE_OUT_EMBD) {
            float *e = f->embd + (size_t)i * E;
            for (int32_t d = 0; d < E; d++) {
                double s = 0;
                for (int32_t j = 0; j < it->n_tokens; j++) s += f->xn[(size_t)(t + j) * E + d];
                e[d] = (float)(s / it->n_tokens);
            }
            double nn = 0;
            for (int32_t d = 0; d < E; d++) nn += (double)e[d] * e[d];
            float inv = nn > 0 ? (float)(1.0 / sqrt(nn)) : 0.0f;
            for (int32_t d = 0; d < E; d++) e[d] *= inv;
            it->logits = e;
        }
        t += it->n_tokens;
    }
    return 0;
}
