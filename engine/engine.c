/* engine.c -- engine.h on top of model, forward, kv_cache and the pool. */
#include "engine.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "forward.h"
#include "linear_attention.h"
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
    attn_seq_state *attn; /* [max_seqs] attention kind per sequence */
    attn_params attn_default;
};

void engine_params_default(engine_params *p) {
    memset(p, 0, sizeof *p);
    p->n_threads = 0;
    p->n_ctx = 0;
    p->max_seqs = 16;
    p->max_batch_tokens = 512;
    p->kv_block_tokens = KV_BLOCK;
    p->kv_type = ENGINE_KV_F32;
    p->kv_policy = ENGINE_KV_FULL;
}

_Static_assert((int)ENGINE_KV_F32 == (int)KV_F32 && (int)ENGINE_KV_F16 == (int)KV_F16 &&
               (int)ENGINE_KV_Q8_0 == (int)KV_Q8_0 && (int)ENGINE_KV_Q12_0 == (int)KV_Q12_0,
               "engine_kv_type mirrors kv_type");
_Static_assert((int)ENGINE_KV_FULL == (int)KV_POLICY_FULL && (int)ENGINE_KV_WINDOW == (int)KV_POLICY_WINDOW,
               "engine_kv_policy mirrors kv_policy");

int engine_kv_type_from_name(const char *s) { return kv_type_from_name(s); }
const char *engine_kv_type_name(int t) { return kv_type_name((enum kv_type)t); }
int engine_kv_policy_from_name(const char *s) { return kv_policy_from_name(s); }
const char *engine_kv_policy_name(int p) { return kv_policy_name((enum kv_policy)p); }

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
    if (e->attn)
        for (int32_t i = 0; i < e->params.max_seqs; i++) {
            free(e->attn[i].lin_state);
            free(e->attn[i].hw_kv);
        }
    free(e->attn);
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
    in->kv_type = kv_type_name(kv_cache_type(e->kv));
    in->kv_block_tokens = kv_cache_block_tokens(e->kv);
    in->kv_blocks = kv_cache_blocks_total(e->kv);
    in->kv_bytes_per_block = kv_cache_bytes_per_token(e->kv) * (uint64_t)in->kv_block_tokens;
    in->kv_pool_bytes = in->kv_bytes_per_block * (uint64_t)in->kv_blocks;
    in->kv_tokens = in->kv_blocks * in->kv_block_tokens;
    in->chat_template = e->chat_template;
    in->weight_type = model_weight_type_name(m);
    in->rope_scaling = (int32_t)hp->rope_scaling;
    in->rope_factor = hp->rope_scale_factor;
    in->rope_orig_ctx = hp->rope_orig_ctx;
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
    kv_cache_params kp;
    kv_cache_params_default(&kp, hp->n_layer, hp->n_head_kv * hp->head_dim, e->params.n_ctx,
                            e->params.max_seqs);
    if (e->params.kv_block_tokens > 0) kp.block_tokens = e->params.kv_block_tokens;
    kp.head_dim = hp->head_dim;
    kp.type = (enum kv_type)e->params.kv_type;
    kp.memory_bytes = e->params.kv_memory_bytes;
    kp.policy.kind = (enum kv_policy)e->params.kv_policy;
    kp.policy.window = e->params.kv_window;
    kp.policy.sinks = e->params.kv_sinks;
    kp.prefix_cache = !e->params.kv_no_prefix_cache;
    char kerr[256] = "";
    e->kv = kv_cache_create_params(&kp, kerr, sizeof kerr);
    if (!e->kv) {
        snprintf(err, errlen, "%s: %s", p->model_path, kerr);
        engine_free(e);
        return -EINVAL;
    }
    e->in_step = calloc((size_t)e->params.max_seqs, 1);
    e->attn = calloc((size_t)e->params.max_seqs, sizeof *e->attn);
    if (!e->in_step || !e->attn) goto oom;
    attn_params_default(&e->attn_default);
    for (int32_t i = 0; i < e->params.max_seqs; i++) e->attn[i].p = e->attn_default;
    e->fwd = forward_create(e->m, e->tp, e->params.max_batch_tokens, e->params.n_ctx, err, errlen);
    if (!e->fwd) { engine_free(e); return -ENOMEM; }
    forward_set_seq_attn(e->fwd, e->attn);
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

static int engine_seq_is_linear(const engine *e, int32_t seq) {
    return kv_cache_seq_live(e->kv, seq) && e->attn[seq].p.kind == ATTN_LINEAR;
}

static int32_t engine_kv_dim(const engine *e) { return e->m->hp.n_head_kv * e->m->hp.head_dim; }

static int engine_hw_reserve(engine *e, int32_t seq, int32_t n);

static size_t engine_lin_floats(const engine *e) {
    const model_hparams *hp = &e->m->hp;
    return (size_t)hp->n_layer * (size_t)hp->n_head_kv * linear_state_floats(hp->head_dim);
}

/* Back to the default kind, state dropped (the id is being freed). */
static void engine_seq_attn_reset(engine *e, int32_t seq) {
    if (seq < 0 || seq >= e->params.max_seqs) return;
    free(e->attn[seq].lin_state);
    e->attn[seq].lin_state = NULL;
    e->attn[seq].lin_len = 0;
    free(e->attn[seq].hw_kv);
    e->attn[seq].hw_kv = NULL;
    e->attn[seq].hw_cap = 0;
    e->attn[seq].p = e->attn_default;
}

void engine_seq_free(engine *e, int32_t seq) {
    if (!kv_cache_seq_live(e->kv, seq)) return;
    kv_cache_seq_free(e->kv, seq);
    engine_seq_attn_reset(e, seq);
}

int32_t engine_seq_len(const engine *e, int32_t seq) {
    if (engine_seq_is_linear(e, seq)) return e->attn[seq].lin_len;
    return kv_cache_seq_len(e->kv, seq);
}

void engine_seq_truncate(engine *e, int32_t seq, int32_t n) {
    if (engine_seq_is_linear(e, seq)) {
        /* A recurrent state cannot forget a suffix; it can only restart. */
        if (n <= 0) {
            memset(e->attn[seq].lin_state, 0, engine_lin_floats(e) * sizeof(float));
            e->attn[seq].lin_len = 0;
        }
        return;
    }
    kv_cache_seq_truncate(e->kv, seq, n);
}

int engine_seq_copy(engine *e, int32_t dst, int32_t src, int32_t n) {
    if (!kv_cache_seq_live(e->kv, dst) || !kv_cache_seq_live(e->kv, src)) return -EINVAL;
    if (dst == src) {
        engine_seq_truncate(e, dst, n);
        return 0;
    }
    if (engine_seq_is_linear(e, src)) {
        /* Only the whole state can be copied (it has no per-position parts). */
        if (n != e->attn[src].lin_len) return -EINVAL;
        kv_cache_seq_truncate(e->kv, dst, 0);
        if (!e->attn[dst].lin_state) {
            e->attn[dst].lin_state = malloc(engine_lin_floats(e) * sizeof(float));
            if (!e->attn[dst].lin_state) return -ENOMEM;
        }
        memcpy(e->attn[dst].lin_state, e->attn[src].lin_state, engine_lin_floats(e) * sizeof(float));
        e->attn[dst].lin_len = n;
        e->attn[dst].p = e->attn[src].p;
        return 0;
    }
    if (e->attn[src].p.kind == ATTN_HWFA) {
        int hr = engine_hw_reserve(e, dst, n);
        if (hr) return hr;
        if (n > 0) memcpy(e->attn[dst].hw_kv, e->attn[src].hw_kv, (size_t)n * 2 * (size_t)engine_kv_dim(e) * sizeof(float));
    }
    int rc = kv_cache_seq_copy(e->kv, dst, src, n);
    if (rc) return rc;
    free(e->attn[dst].lin_state);
    e->attn[dst].lin_state = NULL;
    e->attn[dst].lin_len = 0;
    e->attn[dst].p = e->attn[src].p;
    return 0;
}

/* Hash of everything in p that changes the K/V a kind stores. */
static uint64_t engine_attn_salt(const attn_params *p) {
    uint32_t leak, f, ya, yb;
    memcpy(&leak, &p->leak, 4);
    memcpy(&f, &p->rope.factor, 4);
    memcpy(&ya, &p->rope.yarn_alpha, 4);
    memcpy(&yb, &p->rope.yarn_beta, 4);
    uint64_t v[9] = {(uint64_t)p->kind + 1, (uint64_t)(uint32_t)p->window, (uint64_t)(uint32_t)p->sinks, leak,
                     (uint64_t)p->logn, (uint64_t)p->rope_set,
                     p->rope_set ? ((uint64_t)p->rope.type << 32 | f) : 0,
                     p->rope_set ? (uint64_t)(uint32_t)p->rope.orig_ctx : 0,
                     p->rope_set ? ((uint64_t)ya << 32 | yb) : 0};
    uint64_t h = 0x243f6a8885a308d3ULL;
    for (int i = 0; i < 9; i++) {
        h ^= v[i];
        h *= 0x100000001b3ULL;
        h ^= h >> 29;
    }
    return h;
}

/* What kind p needs from the KV cache, for an empty sequence: the attention
 * kernels of the kinds read every element type; a window kind in every
 * layer lets the cache drop the middle (window policy); other kinds keep
 * everything, and
 * each kind's K/V get their own prefix-cache salt. Plain softmax keeps the
 * configured default policy. */
int engine_attention_fits_kv(const engine *e, const attn_params *p, char *err, size_t errlen) {
    if (p->kind == ATTN_LINEAR) return 0; /* no KV at all */
    if (p->kind == ATTN_WINDOW && (int64_t)p->window + p->sinks > e->params.n_ctx) {
        snprintf(err, errlen, "window %d + sinks %d do not fit the context %d", (int)p->window, (int)p->sinks,
                 (int)e->params.n_ctx);
        return -EINVAL;
    }
    return 0;
}

static int engine_seq_kv_for_kind(engine *e, int32_t seq, const attn_params *p, char *err, size_t errlen) {
    if (p->kind == ATTN_LINEAR) return 0; /* no KV at all */
    /* (A model whose own scaling is dynamic-ntk caches keys unrotated.) */
    int plain = p->kind == ATTN_SOFTMAX && !p->logn && !p->rope_set &&
                e->m->hp.rope_scaling != MODEL_ROPE_SCALING_DYNAMIC_NTK;
    int rc0 = engine_attention_fits_kv(e, p, err, errlen);
    if (rc0) return rc0;
    kv_policy_cfg pc = {.kind = KV_POLICY_FULL};
    if (plain) {
        pc.kind = (enum kv_policy)e->params.kv_policy;
        pc.window = e->params.kv_window;
        pc.sinks = e->params.kv_sinks;
    } else if ((p->kind == ATTN_WINDOW || p->kind == ATTN_HWFA) && (int64_t)p->window + p->sinks < e->params.n_ctx) {
        /* (A window covering the whole context needs no dropping.) */
        pc.kind = KV_POLICY_WINDOW;
        pc.window = p->window;
        pc.sinks = p->sinks;
    }
    int rc = kv_cache_seq_set_policy(e->kv, seq, &pc, plain ? 0 : engine_attn_salt(p));
    if (rc == -EINVAL) {
        snprintf(err, errlen, "window %d + sinks %d do not fit the context %d", (int)pc.window, (int)pc.sinks,
                 (int)e->params.n_ctx);
    } else if (rc) {
        snprintf(err, errlen, "the KV policy of sequence %d can only change while it is empty", (int)seq);
    }
    return rc;
}

int engine_seq_set_attention(engine *e, int32_t seq, const attn_params *p, char *err, size_t errlen) {
    if (!kv_cache_seq_live(e->kv, seq)) {
        snprintf(err, errlen, "sequence %d is not live", (int)seq);
        return -EINVAL;
    }
    const char *param = NULL;
    if (attn_params_validate(p, &param, err, errlen)) return -EINVAL;
    if ((p->kind == ATTN_REROPE || p->kind == ATTN_LEAKY_REROPE) && e->m->hp.n_rot > ATTN_MAX_ROT) {
        snprintf(err, errlen, "%s supports at most %d rotated dimensions (this model has %d)",
                 attn_kind_name(p->kind), ATTN_MAX_ROT, (int)e->m->hp.n_rot);
        return -EINVAL;
    }
    if (engine_seq_len(e, seq) != 0) {
        snprintf(err, errlen, "the attention kind of sequence %d can only change while it is empty", (int)seq);
        return -EBUSY;
    }
    attn_seq_state *st = &e->attn[seq];
    if (p->kind == ATTN_LINEAR) {
        if (!st->lin_state) {
            st->lin_state = malloc(engine_lin_floats(e) * sizeof(float));
            if (!st->lin_state) {
                snprintf(err, errlen, "out of memory for a linear attention state");
                return -ENOMEM;
            }
        }
        memset(st->lin_state, 0, engine_lin_floats(e) * sizeof(float));
    } else {
        free(st->lin_state);
        st->lin_state = NULL;
    }
    st->lin_len = 0;
    st->p = *p;
    if (st->p.kind == ATTN_LOGN) st->p.logn = 1;
    return engine_seq_kv_for_kind(e, seq, &st->p, err, errlen);
}

const attn_params *engine_seq_attention(const engine *e, int32_t seq) {
    if (!kv_cache_seq_live(e->kv, seq)) return &e->attn_default;
    return &e->attn[seq].p;
}

uint64_t engine_kv_bytes_allocated(const engine *e) {
    kv_cache_stats ks;
    kv_cache_stats_get(e->kv, &ks);
    return (uint64_t)ks.blocks_used * ks.bytes_per_block;
}

uint64_t engine_linear_state_bytes(const engine *e) {
    uint64_t n = 0;
    for (int32_t i = 0; i < e->params.max_seqs; i++) {
        if (e->attn[i].lin_state) n += engine_lin_floats(e) * sizeof(float);
        n += (uint64_t)e->attn[i].hw_cap * 2 * (uint64_t)engine_kv_dim(e) * sizeof(float);
    }
    return n;
}

/* hwfa: make the side store hold positions [0, n) (grows geometrically). */
static int engine_hw_reserve(engine *e, int32_t seq, int32_t n) {
    attn_seq_state *st = &e->attn[seq];
    if (n <= st->hw_cap) return 0;
    int64_t cap = st->hw_cap ? 2 * (int64_t)st->hw_cap : 256;
    if (cap < n) cap = n;
    if (cap > e->params.n_ctx) cap = e->params.n_ctx;
    if (cap < n) return -ERANGE;
    float *nb = realloc(st->hw_kv, (size_t)cap * 2 * (size_t)engine_kv_dim(e) * sizeof(float));
    if (!nb) return -ENOMEM;
    st->hw_kv = nb;
    st->hw_cap = (int32_t)cap;
    return 0;
}

int32_t engine_seq_attach_prefix(engine *e, int32_t seq, const int32_t *tokens, int32_t n) {
    if (engine_seq_is_linear(e, seq)) return 0; /* a recurrent state, no blocks to share */
    if (kv_cache_seq_live(e->kv, seq) && e->attn[seq].p.kind == ATTN_HWFA) return 0; /* side store not cached */
    return kv_cache_seq_attach_prefix(e->kv, seq, tokens, n);
}

int engine_seq_set_kv_policy(engine *e, int32_t seq, int policy, int32_t window, int32_t sinks, uint64_t salt) {
    if (!kv_policy_name((enum kv_policy)policy)) return -EINVAL;
    kv_policy_cfg pc = {.kind = (enum kv_policy)policy, .window = window, .sinks = sinks};
    return kv_cache_seq_set_policy(e->kv, seq, &pc, salt);
}

int32_t engine_seq_max_len(const engine *e, int32_t seq) { return kv_cache_seq_max_len(e->kv, seq); }

int64_t engine_seq_kv_blocks_needed(const engine *e, int32_t seq, int32_t n_new) {
    if (engine_seq_is_linear(e, seq)) return 0;
    return kv_cache_seq_blocks_needed(e->kv, seq, n_new);
}

int64_t engine_kv_blocks_available(const engine *e) { return kv_cache_blocks_available(e->kv); }

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
        if ((int64_t)engine_seq_len(e, it->seq) + it->n_tokens > engine_seq_max_len(e, it->seq))
            return -ERANGE;
    }
    if (total > e->params.max_batch_tokens) return -E2BIG;
    for (int32_t i = 0; i < n_items; i++) {
        engine_item *it = &items[i];
        if (engine_seq_is_linear(e, it->seq)) continue; /* no KV blocks */
        rc = kv_cache_seq_reserve(e->kv, it->seq, kv_cache_seq_len(e->kv, it->seq) + it->n_tokens);
        if (rc) return rc;
        if (e->attn[it->seq].p.kind == ATTN_HWFA) {
            rc = engine_hw_reserve(e, it->seq, kv_cache_seq_len(e->kv, it->seq) + it->n_tokens);
            if (rc) return rc;
        }
    }
    rc = forward_step(e->fwd, e->kv, items, n_items);
    if (rc) return rc;
    /* Advance the lengths; KV blocks that filled join the prefix cache. */
    for (int32_t i = 0; i < n_items; i++) {
        if (engine_seq_is_linear(e, items[i].seq)) {
            e->attn[items[i].seq].lin_len += items[i].n_tokens;
            continue;
        }
        kv_cache_seq_commit(e->kv, items[i].seq, items[i].tokens, items[i].n_tokens);
    }
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
    out->bytes_resident = ks.bytes_resident;
    out->prefix_lookup_tokens = ks.prefix_lookup_tokens;
    out->prefix_hit_tokens = ks.prefix_hit_tokens;
}

double engine_last_step_seconds(const engine *e) { return e->last_step_s; }
