/* engine.c -- engine.h on top of model, forward, kv_cache and the pool. */
#include "engine.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "forward.h"
#include "kv_cache.h"
#include "model.h"
#include "threadpool.h"

/* OpenBLAS (pthreads build) entry point; declared here because cblas.h does
 * not always carry it. Our pool owns the cores: BLAS runs single-threaded
 * inside each task. */
extern void openblas_set_num_threads(int num_threads);

struct engine {
    engine_params params;
    engine_info info;
    model *m;
    tokenizer *tok;
    threadpool *tp;
    kv_cache *kv;
    forward *fwd;
    char *chat_template;
    char *model_path;
    double last_step_s;
    uint8_t *in_step;  /* [max_seqs] marks for duplicate detection */
};

void engine_params_default(engine_params *p) {
    memset(p, 0, sizeof *p);
    p->n_threads = 0;
    p->n_ctx = 0;
    p->max_seqs = 16;
    p->max_batch_tokens = 512;
}

static double engine_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void engine_free(engine *e) {
    if (!e) return;
    forward_free(e->fwd);
    kv_cache_free(e->kv);
    threadpool_free(e->tp);
    tokenizer_free(e->tok);
    model_free(e->m);
    free(e->chat_template);
    free(e->model_path);
    free(e->in_step);
    free(e);
}

static void engine_fill_info(engine *e) {
    engine_info *in = &e->info;
    const model *m = e->m;
    const model_hparams *hp = &m->hp;
    snprintf(in->arch, sizeof in->arch, "%s", m->arch->name);
    if (gguf_get_str(m->gguf, "general.name", in->name, sizeof in->name) != 0 || !in->name[0]) {
        const char *base = strrchr(e->model_path, '/');
        base = base ? base + 1 : e->model_path;
        snprintf(in->name, sizeof in->name, "%s", base);
        char *dot = strrchr(in->name, '.');
        if (dot && !strcmp(dot, ".gguf")) *dot = 0;
    }
    in->model_path = e->model_path;
    in->n_vocab = hp->n_vocab;
    in->n_ctx_train = hp->n_ctx_train;
    in->n_ctx = e->params.n_ctx;
    in->n_embd = hp->n_embd;
    in->n_layer = hp->n_layer;
    in->n_head = hp->n_head;
    in->n_head_kv = hp->n_head_kv;
    in->head_dim = hp->head_dim;
    in->n_ff = hp->n_ff;
    in->rope_base = hp->rope_base;
    in->norm_eps = hp->norm_eps;
    in->n_params = m->n_params;
    in->weight_bytes = m->weight_bytes;
    in->kv_bytes_per_token = kv_cache_bytes_per_token(e->kv);
    in->chat_template = e->chat_template;
    in->weight_type = model_weight_type_name(m);
}

int engine_load(const engine_params *p, engine **out, char *err, size_t errlen) {
    *out = NULL;
    if (!p || !p->model_path) {
        snprintf(err, errlen, "no model path given");
        return -EINVAL;
    }
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    e->params = *p;
    e->model_path = strdup(p->model_path);
    if (!e->model_path) goto oom;
    e->params.model_path = e->model_path;
    if (e->params.max_seqs <= 0) e->params.max_seqs = 16;
    if (e->params.max_batch_tokens <= 0) e->params.max_batch_tokens = 512;
    int rc = model_load(p->model_path, &e->m, err, errlen);
    if (rc) { engine_free(e); return rc; }
    char terr[256] = "";
    rc = tokenizer_load(e->m->gguf, &e->tok, terr, sizeof terr);
    if (rc) {
        snprintf(err, errlen, "%s: tokenizer: %s", p->model_path, terr);
        engine_free(e);
        return rc < 0 ? rc : -EINVAL;
    }
    const model_hparams *hp = &e->m->hp;
    if (tokenizer_n_vocab(e->tok) > hp->n_vocab) {
        snprintf(err, errlen, "%s: tokenizer has %d tokens but token_embd.weight only %d rows",
                 p->model_path, tokenizer_n_vocab(e->tok), hp->n_vocab);
        engine_free(e);
        return -EINVAL;
    }
    if (e->params.n_ctx <= 0) e->params.n_ctx = hp->n_ctx_train;
    gguf_str tmpl;
    if (gguf_get_strv(e->m->gguf, "tokenizer.chat_template", &tmpl) == 0) {
        e->chat_template = malloc(tmpl.len + 1);
        if (!e->chat_template) goto oom;
        memcpy(e->chat_template, tmpl.ptr, tmpl.len);
        e->chat_template[tmpl.len] = 0;
    }
    openblas_set_num_threads(1);
    e->tp = threadpool_create(p->n_threads);
    if (!e->tp) {
        snprintf(err, errlen, "cannot start %d threads", p->n_threads);
        engine_free(e);
        return -EAGAIN;
    }
    e->params.n_threads = threadpool_n_threads(e->tp);
    e->kv = kv_cache_create(hp->n_layer, hp->n_head_kv * hp->head_dim, e->params.n_ctx,
                            e->params.max_seqs);
    e->in_step = calloc((size_t)e->params.max_seqs, 1);
    if (!e->kv || !e->in_step) goto oom;
    e->fwd = forward_create(e->m, e->tp, e->params.max_batch_tokens, e->params.n_ctx, err, errlen);
    if (!e->fwd) { engine_free(e); return -ENOMEM; }
    engine_fill_info(e);
    *out = e;
    return 0;
oom:
    snprintf(err, errlen, "out of memory loading %s", p->model_path);
    engine_free(e);
    return -ENOMEM;
}

const engine_info *engine_get_info(const engine *e) { return &e->info; }
const tokenizer *engine_tokenizer(const engine *e) { return e->tok; }

int32_t engine_seq_create(engine *e) { return kv_cache_seq_create(e->kv); }
void engine_seq_free(engine *e, int32_t seq) { kv_cache_seq_free(e->kv, seq); }
int32_t engine_seq_len(const engine *e, int32_t seq) { return kv_cache_seq_len(e->kv, seq); }
void engine_seq_truncate(engine *e, int32_t seq, int32_t n) { kv_cache_seq_truncate(e->kv, seq, n); }

int engine_seq_copy(engine *e, int32_t dst, int32_t src, int32_t n) {
    return kv_cache_seq_copy(e->kv, dst, src, n);
}

int engine_step(engine *e, engine_item *items, int32_t n_items) {
    double t0 = engine_now();
    if (n_items <= 0 || !items) return -EINVAL;
    int64_t total = 0;
    int rc = 0;
    memset(e->in_step, 0, (size_t)e->params.max_seqs);
    for (int32_t i = 0; i < n_items; i++) {
        engine_item *it = &items[i];
        it->logits = NULL;
        if (!kv_cache_seq_live(e->kv, it->seq) || e->in_step[it->seq]) return -EINVAL;
        e->in_step[it->seq] = 1;
        if (it->n_tokens <= 0 || !it->tokens) return -EINVAL;
        if (it->out < ENGINE_OUT_NONE || it->out > ENGINE_OUT_EMBD) return -EINVAL;
        for (int32_t j = 0; j < it->n_tokens; j++)
            if (it->tokens[j] < 0 || it->tokens[j] >= e->info.n_vocab) return -EINVAL;
        total += it->n_tokens;
        if ((int64_t)kv_cache_seq_len(e->kv, it->seq) + it->n_tokens > e->params.n_ctx)
            return -ERANGE;
    }
    if (total > e->params.max_batch_tokens) return -E2BIG;
    for (int32_t i = 0; i < n_items; i++) {
        engine_item *it = &items[i];
        rc = kv_cache_seq_reserve(e->kv, it->seq, kv_cache_seq_len(e->kv, it->seq) + it->n_tokens);
        if (rc) return rc;
    }
    rc = forward_step(e->fwd, e->kv, items, n_items);
    if (rc) return rc;
    for (int32_t i = 0; i < n_items; i++)
        kv_cache_seq_set_len(e->kv, items[i].seq,
                             kv_cache_seq_len(e->kv, items[i].seq) + items[i].n_tokens);
    e->last_step_s = engine_now() - t0;
    return 0;
}

void engine_kv_stats_get(const engine *e, engine_kv_stats *out) {
    kv_cache_stats ks;
    kv_cache_stats_get(e->kv, &ks);
    out->block_tokens = ks.block_tokens;
    out->blocks_total = ks.blocks_total;
    out->blocks_used = ks.blocks_used;
    out->blocks_cached = ks.blocks_cached;
    out->bytes_per_block = ks.bytes_per_block;
    out->bytes_allocated = ks.bytes_allocated;
    out->bytes_needed = ks.bytes_needed;
    out->prefix_lookup_tokens = ks.prefix_lookup_tokens;
    out->prefix_hit_tokens = ks.prefix_hit_tokens;
}

double engine_last_step_seconds(const engine *e) { return e->last_step_s; }
