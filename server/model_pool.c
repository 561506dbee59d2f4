/* model_pool.c -- many models on demand (see model_pool.h). */
#include "model_pool.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include "load_progress.h"
#include "log.h"
#include "metrics.h"

typedef struct pool_model {
    serve_app app;          /* what the routes see for this model */
    pool_entry ent;
    struct model_pool *pool;
    int loading;            /* engine_load running on a worker */
    int want_load;          /* requests wait, but no slot is free yet */
    uv_work_t work;
    engine_params ep;
    engine *loaded;         /* result of the worker */
    char err[512];
    uint64_t t_load_ms;
    load_progress *progress; /* progress line on a terminal while loading */
    uint64_t last_used;     /* LRU clock value of the last request */
    http_req **waiters;     /* parked requests, in arrival order */
    int n_waiters, cap_waiters;
} pool_model;

struct model_pool {
    serve_app *front;
    pool_model *m;
    int n;
    int max_loaded;
    int dflt;               /* model for requests without "model" */
    uint64_t clock;
    uv_timer_t slot_timer;  /* retries loads that wait for an idle model */
    int timer_on, stopped;
    char *template_src;     /* --chat-template-file contents, or NULL */
};

/* ---- directory and aliases ---- */

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const pool_entry *)a)->stem, ((const pool_entry *)b)->stem);
}

int model_pool_scan(const char *dir, const char *aliases, pool_entry **out, int *n_out, char *err, size_t errlen) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "--models-dir %s: %s", dir, strerror(errno));
        return -1;
    }
    pool_entry *v = NULL;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l <= 5 || strcmp(de->d_name + l - 5, ".gguf") || de->d_name[0] == '.' || l - 5 >= sizeof v->stem) continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= sizeof path) continue;
        struct stat st;
        if (stat(path, &st) || !S_ISREG(st.st_mode)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = realloc(v, (size_t)cap * sizeof *v);
            if (!v) abort();
        }
        memset(&v[n], 0, sizeof v[n]);
        memcpy(v[n].stem, de->d_name, l - 5);
        snprintf(v[n].id, sizeof v[n].id, "%s", v[n].stem);
        snprintf(v[n].path, sizeof v[n].path, "%s", path);
        n++;
    }
    closedir(d);
    if (n == 0) {
        snprintf(err, errlen, "--models-dir %s: no .gguf files in it", dir);
        free(v);
        return -1;
    }
    qsort(v, (size_t)n, sizeof *v, entry_cmp);
    /* aliases: "alias=target,alias2=target2"; target is a stem or file name */
    const char *p = aliases ? aliases : "";
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char item[600];
        if (len >= sizeof item) len = sizeof item - 1;
        memcpy(item, p, len);
        item[len] = 0;
        p = end ? end + 1 : p + strlen(p);
        char *s = item;
        while (*s == ' ') s++;
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq || eq == s || !eq[1]) {
            snprintf(err, errlen, "--model-aliases: '%s' is not ALIAS=MODEL", s);
            free(v);
            return -1;
        }
        *eq = 0;
        char *target = eq + 1;
        size_t tl = strlen(target);
        if (tl > 5 && !strcmp(target + tl - 5, ".gguf")) target[tl - 5] = 0;
        int hit = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(v[i].stem, target)) hit = i;
        if (hit < 0 || strlen(s) >= sizeof v->id) {
            snprintf(err, errlen, "--model-aliases: '%s' names no .gguf file in %s", target, dir);
            free(v);
            return -1;
        }
        snprintf(v[hit].id, sizeof v[hit].id, "%s", s);
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            if (i != j && (!strcmp(v[i].id, v[j].id) || !strcmp(v[i].id, v[j].stem))) {
                snprintf(err, errlen, "--model-aliases: id '%s' is used twice", v[i].id);
                free(v);
                return -1;
            }
    *out = v;
    *n_out = n;
    return 0;
}

int model_pool_pick_victim(const int *loaded, const int *busy, const uint64_t *last_used, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (loaded[i] && !busy[i] && (best < 0 || last_used[i] < last_used[best])) best = i;
    return best;
}

/* ---- loading and unloading ---- */

static int model_loaded(const pool_model *m) { return m->app.e != NULL; }
static int model_busy(const pool_model *m) {
    return m->loading || (m->app.sched && sched_busy(m->app.sched));
}

static void token_text(const tokenizer *t, int32_t id, char *buf, size_t cap) {
    buf[0] = 0;
    size_t len;
    const char *p = id >= 0 ? tokenizer_piece(t, id, &len) : NULL;
    if (p && len < cap) {
        memcpy(buf, p, len);
        buf[len] = 0;
    }
}

static void model_unload(pool_model *m, const char *why) {
    if (!model_loaded(m)) return;
    metrics_model_detach(m->app.mm);
    sched_destroy(m->app.sched);
    m->app.sched = NULL;
    routes_structured_free(&m->app);
    chat_template_free(m->app.tmpl);
    m->app.tmpl = NULL;
    engine_free(m->app.e);
    m->app.e = NULL;
    m->app.tok = NULL;
    m->app.info = NULL;
    log_msg("info", "model '%s' unloaded (%s)", m->ent.id, why);
}

static void fail_waiters(pool_model *m, int status, const char *code, const char *msg) {
    for (int i = 0; i < m->n_waiters; i++) {
        http_req *r = m->waiters[i];
        http_req_set_user(r, NULL, NULL);
        api_error e;
        api_error_set(&e, status, status >= 500 ? "server_error" : "invalid_request_error", "model", code, "%s", msg);
        http_reply_error(r, &e);
    }
    m->n_waiters = 0;
}

static void load_work(uv_work_t *w) {
    pool_model *m = w->data;
    if (engine_load(&m->ep, &m->loaded, m->err, sizeof m->err) < 0) m->loaded = NULL;
}

static void load_done(uv_work_t *w, int status) {
    pool_model *m = w->data;
    model_pool *p = m->pool;
    serve_app *a = &m->app;
    m->loading = 0;
    load_progress_stop(m->progress);
    m->progress = NULL;
    if (p->stopped) { /* shut down while loading */
        engine_free(m->loaded);
        m->loaded = NULL;
        return;
    }
    if (!m->loaded) {
        char msg[1024];
        snprintf(msg, sizeof msg, "cannot load model '%s': %s", m->ent.id, m->err[0] ? m->err : "cancelled");
        log_msg("error", "%s", msg);
        fail_waiters(m, 500, "model_load_failed", msg);
        return;
    }
    const engine_info *info = engine_get_info(m->loaded);
    char err[512];
    a->tmpl = NULL;
    if (p->template_src) {
        if (chat_template_compile(p->template_src, strlen(p->template_src), &a->tmpl, err, sizeof err) < 0) a->tmpl = NULL;
    } else if (info->chat_template &&
               chat_template_compile(info->chat_template, strlen(info->chat_template), &a->tmpl, err, sizeof err) < 0) {
        log_msg("warn", "model '%s': its chat template does not compile (%s); using ChatML", m->ent.id, err);
        a->tmpl = NULL;
    }
    if (!a->tmpl) {
        const char *cm = chat_template_chatml();
        if (chat_template_compile(cm, strlen(cm), &a->tmpl, err, sizeof err) < 0) {
            log_msg("error", "model '%s': no usable chat template: %s", m->ent.id, err);
            engine_free(m->loaded);
            m->loaded = NULL;
            fail_waiters(m, 500, "template_error", "no usable chat template");
            return;
        }
    }
    a->sched = sched_create(a->loop, a->cfg.max_seqs, a->cfg.batch_tokens, a->cfg.queue_len);
    sched_set_limits(a->sched, a->cfg.max_running, a->cfg.prefill_chunk);
    a->e = m->loaded;
    m->loaded = NULL;
    a->info = info;
    a->tok = engine_tokenizer(a->e);
    token_text(a->tok, tokenizer_bos(a->tok), a->bos_text, sizeof a->bos_text);
    token_text(a->tok, tokenizer_eos(a->tok), a->eos_text, sizeof a->eos_text);
    a->created = (int64_t)time(NULL);
    sched_set_engine(a->sched, a->e);
    metrics_model_attach(a->mm, a->sched, a->e);
    log_msg("info", "model '%s' loaded in %.2fs: %s, %s, ctx %d, vocab %d (%d waiting requests)", m->ent.id,
            (double)(uv_now(a->loop) - m->t_load_ms) / 1000.0, info->arch, info->weight_type ? info->weight_type : "?",
            (int)info->n_ctx, (int)info->n_vocab, m->n_waiters);
    log_msg("info", "model '%s' memory plan: weights %.1f MiB; KV %s, %llu bytes/token, pool %lld blocks x %d tokens = %lld tokens, %.1f MiB (taken as used)",
            m->ent.id, (double)info->weight_bytes / 1048576.0, info->kv_type, (unsigned long long)info->kv_bytes_per_token,
            (long long)info->kv_blocks, (int)info->kv_block_tokens, (long long)info->kv_tokens,
            (double)info->kv_pool_bytes / 1048576.0);
    /* Serve the requests that waited, in order. */
    int n = m->n_waiters;
    http_req **w2 = m->waiters;
    m->waiters = NULL;
    m->n_waiters = m->cap_waiters = 0;
    m->last_used = ++p->clock;
    for (int i = 0; i < n; i++) {
        http_req_set_user(w2[i], NULL, NULL);
        routes_dispatch(a, w2[i]);
    }
    free(w2);
}

static void pool_try_loads(model_pool *p);

static void slot_timer_cb(uv_timer_t *t) {
    pool_try_loads(t->data);
}

/* Start the load of m if a slot is free, unloading the least recently used
 * idle model if needed. 1 if the load started, 0 if it must wait. */
static int model_start_load(pool_model *m) {
    model_pool *p = m->pool;
    if (m->loading || model_loaded(m)) return 1;
    int resident = 0;
    for (int i = 0; i < p->n; i++) resident += model_loaded(&p->m[i]) || p->m[i].loading;
    if (resident >= p->max_loaded) {
        int loaded[p->n], busy[p->n];
        uint64_t last[p->n];
        for (int i = 0; i < p->n; i++) {
            loaded[i] = model_loaded(&p->m[i]);
            busy[i] = model_busy(&p->m[i]);
            last[i] = p->m[i].last_used;
        }
        int v = model_pool_pick_victim(loaded, busy, last, p->n);
        if (v < 0) return 0;
        char why[400];
        snprintf(why, sizeof why, "least recently used; making room for '%s'", m->ent.id);
        model_unload(&p->m[v], why);
    }
    struct stat st;
    double mib = stat(m->ent.path, &st) ? 0 : (double)st.st_size / (1024.0 * 1024.0);
    log_msg("info", "loading model '%s' from %s (%.1f MiB)", m->ent.id, m->ent.path, mib);
    engine_params_default(&m->ep);
    m->ep.model_path = m->ent.path;
    serve_config_engine_params(&m->app.cfg, &m->ep);
    m->err[0] = 0;
    m->loaded = NULL;
    m->loading = 1;
    m->want_load = 0;
    m->t_load_ms = uv_now(m->app.loop);
    m->work.data = m;
    uv_queue_work(m->app.loop, &m->work, load_work, load_done);
    m->progress = load_progress_start(m->app.loop, m->ent.id, m->ent.path, !strcmp(m->app.cfg.log_format, "json"));
    return 1;
}

static void pool_try_loads(model_pool *p) {
    if (p->stopped) return;
    int waiting = 0;
    for (int i = 0; i < p->n; i++)
        if (p->m[i].want_load && !model_start_load(&p->m[i])) waiting = 1;
    if (waiting && !p->timer_on) {
        uv_timer_start(&p->slot_timer, slot_timer_cb, 50, 50);
        p->timer_on = 1;
    } else if (!waiting && p->timer_on) {
        uv_timer_stop(&p->slot_timer);
        p->timer_on = 0;
    }
}

/* ---- requests ---- */

static void waiter_closed(http_req *r, void *user) {
    pool_model *m = user;
    for (int i = 0; i < m->n_waiters; i++)
        if (m->waiters[i] == r) {
            memmove(m->waiters + i, m->waiters + i + 1, (size_t)(m->n_waiters - i - 1) * sizeof *m->waiters);
            m->n_waiters--;
            break;
        }
}

static pool_model *pool_find(model_pool *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->m[i].ent.id, name))
            return &p->m[i];
    return NULL;
}

static json_t *pool_model_json(const pool_model *m) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(m->ent.id));
    json_object_set_new(o, "object", json_string("model"));
    json_object_set_new(o, "created", json_integer(m->app.created));
    json_object_set_new(o, "owned_by", json_string("qkvd"));
    json_t *meta = json_object();
    json_object_set_new(meta, "file", json_string(m->ent.path));
    json_object_set_new(meta, "loaded", json_boolean(model_loaded(m)));
    json_object_set_new(meta, "loading", json_boolean(m->loading));
    if (m->app.info) {
        json_object_set_new(meta, "n_ctx", json_integer(m->app.info->n_ctx));
        json_object_set_new(meta, "n_vocab", json_integer(m->app.info->n_vocab));
        json_object_set_new(meta, "arch", json_string(m->app.info->arch));
    }
    json_object_set_new(o, "meta", meta);
    return o;
}

static void reply_not_found(http_req *r, const char *name, model_pool *p) {
    api_error e;
    api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                  "the model '%.200s' does not exist; GET /v1/models lists the %d models of --models-dir", name, p->n);
    http_reply_error(r, &e);
}

void model_pool_dispatch(void *app, http_req *r) {
    model_pool *p = app;
    const char *path = http_req_path(r), *method = http_req_method(r);
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    const char *mp = !strncmp(path, "/v1/models", 10) ? path + 10 : !strncmp(path, "/models", 7) ? path + 7 : NULL;
    if (get && !strcmp(path, "/health")) {
        int loaded = 0;
        for (int i = 0; i < p->n; i++) loaded += model_loaded(&p->m[i]);
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("ok"));
        json_object_set_new(o, "models", json_integer(p->n));
        json_object_set_new(o, "loaded", json_integer(loaded));
        http_reply_json(r, 200, o);
        return;
    }
    if (get && mp && (!*mp || !strcmp(mp, "/"))) {
        json_t *o = json_object(), *data = json_array();
        json_object_set_new(o, "object", json_string("list"));
        for (int i = 0; i < p->n; i++) json_array_append_new(data, pool_model_json(&p->m[i]));
        json_object_set_new(o, "data", data);
        http_reply_json(r, 200, o);
        return;
    }
    if (get && mp && mp[0] == '/') {
        pool_model *m = pool_find(p, mp + 1);
        if (!m) reply_not_found(r, mp + 1, p);
        else http_reply_json(r, 200, pool_model_json(m));
        return;
    }
    /* The chat page and unknown GETs need no model: the front app answers
     * (without loading anything). */
    if (get) {
        routes_dispatch(p->front, r);
        return;
    }
    /* Everything else belongs to one model: the body's "model", else the default. */
    char name[256] = "";
    size_t len;
    const char *body = http_req_body(r, &len);
    if (body && len) {
        json_t *o = json_loadb(body, len, 0, NULL);
        json_t *mv = json_is_object(o) ? json_object_get(o, "model") : NULL;
        if (json_is_string(mv)) snprintf(name, sizeof name, "%s", json_string_value(mv));
        json_decref(o);
    }
    pool_model *m = name[0] ? pool_find(p, name) : &p->m[p->dflt];
    if (!m) {
        reply_not_found(r, name, p);
        return;
    }
    m->last_used = ++p->clock;
    if (model_loaded(m)) {
        routes_dispatch(&m->app, r);
        return;
    }
    if (p->front->draining) {
        api_error e;
        api_error_set(&e, 503, "server_error", NULL, "shutting_down", "the server is shutting down");
        http_reply_error(r, &e);
        return;
    }
    /* Park the request until the model is loaded (the connection stays
     * suspended; a client that leaves is removed by the close hook). */
    if (m->n_waiters == m->cap_waiters) {
        m->cap_waiters = m->cap_waiters ? m->cap_waiters * 2 : 8;
        m->waiters = realloc(m->waiters, (size_t)m->cap_waiters * sizeof *m->waiters);
        if (!m->waiters) abort();
    }
    m->waiters[m->n_waiters++] = r;
    http_req_set_user(r, m, waiter_closed);
    if (!m->loading) {
        m->want_load = 1;
        pool_try_loads(p);
        if (m->want_load)
            log_msg("info", "model '%s' waits for a loaded model to become idle (--max-loaded-models %d)", m->ent.id,
                    p->max_loaded);
    }
}

/* ---- lifecycle ---- */

static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (64u << 20)) { free(buf); fclose(f); return NULL; }
            buf = realloc(buf, cap);
            if (!buf) abort();
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got < 4096) break;
    }
    fclose(f);
    buf[n] = 0;
    return buf;
}

model_pool *model_pool_create(serve_app *front, char *err, size_t errlen) {
    const serve_config *cfg = &front->cfg;
    pool_entry *ents;
    int n;
    if (model_pool_scan(cfg->models_dir, cfg->model_aliases, &ents, &n, err, errlen) < 0) return NULL;
    model_pool *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->front = front;
    p->n = n;
    p->max_loaded = cfg->max_loaded_models > 0 ? cfg->max_loaded_models : 1;
    p->m = calloc((size_t)n, sizeof *p->m);
    if (!p->m) abort();
    if (cfg->chat_template_file[0] && !(p->template_src = read_text_file(cfg->chat_template_file))) {
        snprintf(err, errlen, "--chat-template-file %s: cannot read it", cfg->chat_template_file);
        free(p->m);
        free(p);
        free(ents);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        pool_model *m = &p->m[i];
        m->ent = ents[i];
        m->pool = p;
        m->app.cfg = front->cfg; /* shared strings: owned by front */
        m->app.loop = front->loop;
        m->app.http = front->http;
        snprintf(m->app.model_id, sizeof m->app.model_id, "%s", m->ent.id);
        m->app.mm = metrics_model_get(front->metrics, m->ent.id);
        metrics_model_set_waiters(m->app.mm, &m->n_waiters);
    }
    free(ents);
    uv_timer_init(front->loop, &p->slot_timer);
    p->slot_timer.data = p;
    p->dflt = 0;
    if (cfg->model[0]) {
        pool_model *m = pool_find(p, cfg->model);
        for (int i = 0; !m && i < n; i++) /* --model may also be the file's path or name */
            if (!strcmp(p->m[i].ent.path, cfg->model) || !strcmp(p->m[i].ent.stem, cfg->model) ||
                !strcmp(strrchr(p->m[i].ent.path, '/') + 1, cfg->model))
                m = &p->m[i];
        if (!m) {
            snprintf(err, errlen, "--model %s is not one of the models in --models-dir %s", cfg->model, cfg->models_dir);
            p->stopped = 1;
            uv_close((uv_handle_t *)&p->slot_timer, NULL);
            uv_run(front->loop, UV_RUN_NOWAIT); /* let the handle close before freeing it */
            model_pool_destroy(p);
            return NULL;
        }
        p->dflt = (int)(m - p->m);
        m->want_load = 1;
        pool_try_loads(p);
    }
    log_msg("info", "--models-dir %s: %d models, at most %d loaded; default '%s'", cfg->models_dir, n, p->max_loaded,
            p->m[p->dflt].ent.id);
    return p;
}

int model_pool_busy(const model_pool *p) {
    for (int i = 0; i < p->n; i++)
        if (model_busy(&p->m[i]) || p->m[i].n_waiters) return 1;
    return 0;
}

void model_pool_cancel_all(model_pool *p) {
    for (int i = 0; i < p->n; i++) {
        if (p->m[i].app.sched) sched_cancel_all(p->m[i].app.sched);
        fail_waiters(&p->m[i], 503, "shutting_down", "the server is shutting down");
        p->m[i].want_load = 0;
    }
}

void model_pool_stop(model_pool *p) {
    if (!p || p->stopped) return;
    model_pool_cancel_all(p);
    p->stopped = 1;
    uv_timer_stop(&p->slot_timer);
    uv_close((uv_handle_t *)&p->slot_timer, NULL);
}

void model_pool_destroy(model_pool *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        model_unload(&p->m[i], "shutdown");
        free(p->m[i].waiters);
    }
    free(p->m);
    free(p->template_src);
    free(p);
}
