/* serve.c -- `qkvd serve`: configuration, the loop, model loading off the
 * loop, signals and graceful drain. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "cli.h"
#include "load_progress.h"
#include "log.h"
#include "metrics.h"
#include "model_pool.h"
#include "serve.h"

typedef struct serve_state {
    serve_app a;
    uv_work_t load_work;
    engine_params ep;
    engine *loaded;
    char load_err[512];
    char *template_src;       /* --chat-template-file contents */
    uv_signal_t sig_int, sig_term;
    uv_timer_t drain_timer;
    uint64_t drain_deadline;
    int cancelled_all, stopped, exit_code;
    model_pool *pool;         /* --models-dir: models on demand (NULL: one --model) */
    load_progress *progress;  /* progress line on a terminal while the model loads */
} serve_state;

static void serve_stop(serve_state *st) {
    if (st->stopped) return;
    st->stopped = 1;
    sched_cancel_all(st->a.sched);
    model_pool_stop(st->pool);
    http_server_stop(st->a.http);
    st->a.http = NULL;
    uv_close((uv_handle_t *)&st->sig_int, NULL);
    uv_close((uv_handle_t *)&st->sig_term, NULL);
    uv_close((uv_handle_t *)&st->drain_timer, NULL);
}

/* While draining: exit once nothing runs; at the deadline, end what is left. */
static void serve_drain_tick(uv_timer_t *t) {
    serve_state *st = t->data;
    int busy = sched_busy(st->a.sched) || http_server_active(st->a.http) > 0 || (st->pool && model_pool_busy(st->pool));
    if (!busy) {
        log_msg("info", "drained; exiting");
        serve_stop(st);
        return;
    }
    uint64_t now = uv_now(t->loop);
    if (now >= st->drain_deadline && !st->cancelled_all) {
        log_msg("warn", "grace period over: ending %d running and %d queued requests",
                (int)sched_n_running(st->a.sched), (int)sched_n_queued(st->a.sched));
        st->cancelled_all = 1;
        sched_cancel_all(st->a.sched);
        if (st->pool) model_pool_cancel_all(st->pool);
    } else if (now >= st->drain_deadline + 2000) {
        /* Clients that do not read their last bytes do not hold the exit. */
        serve_stop(st);
    }
}

static void serve_signal_cb(uv_signal_t *s, int signum) {
    serve_state *st = s->data;
    if (st->a.draining) {
        log_msg("warn", "second signal: stopping now");
        serve_stop(st);
        return;
    }
    st->a.draining = 1;
    log_msg("info", "%s: no new connections; giving running requests %.1fs to finish",
            signum == SIGINT ? "SIGINT" : "SIGTERM", st->a.cfg.grace_period);
    http_server_quiesce(st->a.http);
    st->drain_deadline = uv_now(s->loop) + (uint64_t)(st->a.cfg.grace_period * 1000.0);
    uv_timer_start(&st->drain_timer, serve_drain_tick, 0, 50);
}

/* HTTP dispatch: one model (routes), or --models-dir (the pool picks the model). */
static void serve_dispatch(void *app, http_req *r) {
    serve_state *st = app;
    if (st->pool) model_pool_dispatch(st->pool, r);
    else routes_dispatch(&st->a, r);
}

static void serve_load_work(uv_work_t *w) {
    serve_state *st = w->data;
    if (engine_load(&st->ep, &st->loaded, st->load_err, sizeof st->load_err) < 0) st->loaded = NULL;
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

static void serve_load_done(uv_work_t *w, int status) {
    serve_state *st = w->data;
    serve_app *a = &st->a;
    load_progress_stop(st->progress);
    st->progress = NULL;
    if (st->stopped) { /* shut down while loading */
        engine_free(st->loaded);
        return;
    }
    if (!st->loaded) {
        log_msg("error", "cannot load model: %s", st->load_err[0] ? st->load_err : "cancelled");
        st->exit_code = 1;
        serve_stop(st);
        return;
    }
    char err[512];
    const engine_info *info = engine_get_info(st->loaded);
    const char *src = st->template_src;
    if (!src && info->chat_template) {
        if (chat_template_compile(info->chat_template, strlen(info->chat_template), &a->tmpl, err, sizeof err) < 0) {
            log_msg("warn", "the model's chat template does not compile (%s); using ChatML", err);
            a->tmpl = NULL;
        }
    }
    if (src && chat_template_compile(src, strlen(src), &a->tmpl, err, sizeof err) < 0) {
        log_msg("error", "--chat-template-file %s: %s", a->cfg.chat_template_file, err);
        engine_free(st->loaded);
        st->exit_code = 1;
        serve_stop(st);
        return;
    }
    if (!a->tmpl) {
        const char *cm = chat_template_chatml();
        if (chat_template_compile(cm, strlen(cm), &a->tmpl, err, sizeof err) < 0) {
            log_msg("error", "built-in ChatML template: %s", err);
            engine_free(st->loaded);
            st->exit_code = 1;
            serve_stop(st);
            return;
        }
    }
    a->e = st->loaded;
    a->info = info;
    a->tok = engine_tokenizer(a->e);
    token_text(a->tok, tokenizer_bos(a->tok), a->bos_text, sizeof a->bos_text);
    token_text(a->tok, tokenizer_eos(a->tok), a->eos_text, sizeof a->eos_text);
    a->created = (int64_t)time(NULL);
    sched_set_engine(a->sched, a->e);
    metrics_model_attach(a->mm, a->sched, a->e);
    log_msg("info", "model '%s' loaded: %s, %s, ctx %d, vocab %d, template %s", a->model_id, info->arch,
            info->weight_type ? info->weight_type : "?", (int)info->n_ctx, (int)info->n_vocab,
            st->template_src ? "file" : info->chat_template ? "model" : "chatml");
    log_msg("info", "model '%s' memory plan: weights %.1f MiB; KV %s, %llu bytes/token, pool %lld blocks x %d tokens = %lld tokens, %.1f MiB (taken as used)",
            a->model_id, (double)info->weight_bytes / 1048576.0, info->kv_type, (unsigned long long)info->kv_bytes_per_token,
            (long long)info->kv_blocks, (int)info->kv_block_tokens, (long long)info->kv_tokens,
            (double)info->kv_pool_bytes / 1048576.0);
    if (a->draining) serve_drain_tick(&st->drain_timer);
}

static char *read_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) abort();
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        if (cap > (64u << 20)) {
            snprintf(err, errlen, "%s is larger than 64 MiB", path);
            free(buf);
            fclose(f);
            return NULL;
        }
        cap *= 2;
        buf = realloc(buf, cap);
    }
    buf[n] = 0;
    fclose(f);
    return buf;
}

int cli_serve(int argc, char **argv) {
    serve_state *st = calloc(1, sizeof *st);
    if (!st) abort();
    serve_app *a = &st->a;
    char err[1024];
    int rc = serve_config_parse(&a->cfg, argc, argv, NULL, err, sizeof err, stdout);
    if (rc != 0) {
        if (rc < 0) fprintf(stderr, "qkvd serve: %s\n", err);
        serve_config_free(&a->cfg);
        free(st);
        return rc < 0 ? 2 : 0;
    }
    serve_config *cfg = &a->cfg;
    log_set_json(!strcmp(cfg->log_format, "json"));
    if (!cfg->model[0] && !cfg->models_dir[0]) {
        fprintf(stderr, "qkvd serve: no model given: use -m FILE.gguf or --models-dir DIR (or QKVD_MODEL / QKVD_MODELS_DIR, or \"model\" in --config)\n");
        serve_config_free(cfg);
        free(st);
        return 2;
    }
    if (cfg->model_alias[0]) {
        snprintf(a->model_id, sizeof a->model_id, "%s", cfg->model_alias);
    } else {
        const char *base = strrchr(cfg->model, '/');
        snprintf(a->model_id, sizeof a->model_id, "%s", base ? base + 1 : cfg->model);
        size_t l = strlen(a->model_id);
        if (l > 5 && !strcmp(a->model_id + l - 5, ".gguf")) a->model_id[l - 5] = 0;
    }
    if (cfg->chat_template_file[0]) {
        st->template_src = read_file(cfg->chat_template_file, err, sizeof err);
        if (!st->template_src) {
            fprintf(stderr, "qkvd serve: --chat-template-file: %s\n", err);
            serve_config_free(cfg);
            free(st);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    a->loop = loop;
    a->sched = sched_create(loop, cfg->max_seqs, cfg->batch_tokens, cfg->queue_len);
    a->metrics = cfg->no_metrics ? NULL : metrics_create();
    if (!cfg->models_dir[0]) a->mm = metrics_model_get(a->metrics, a->model_id);
    sched_set_limits(a->sched, cfg->max_running, cfg->prefill_chunk);
    http_options ho = {
        .host = cfg->host, .port = cfg->port, .max_body = cfg->max_body, .conn_timeout = cfg->conn_timeout,
        .api_key = cfg->api_key, .cors_origins = cfg->cors_origins, .dispatch = serve_dispatch, .app = st,
        .metrics = a->metrics,
    };
    if (http_server_start(loop, &ho, &a->http, err, sizeof err) < 0) {
        log_msg("error", "%s", err);
        metrics_free(a->metrics);
        sched_destroy(a->sched);
        free(st->template_src);
        serve_config_free(cfg);
        free(st);
        return 1;
    }
    int v6 = strchr(cfg->host, ':') != NULL;
    if (cfg->models_dir[0])
        log_msg("info", "listening on http://%s%s%s:%d (models of %s, loaded on demand)", v6 ? "[" : "", cfg->host,
                v6 ? "]" : "", http_server_port(a->http), cfg->models_dir);
    else
        log_msg("info", "listening on http://%s%s%s:%d (model %s loading)", v6 ? "[" : "", cfg->host, v6 ? "]" : "",
                http_server_port(a->http), cfg->model);
    uv_signal_init(loop, &st->sig_int);
    uv_signal_init(loop, &st->sig_term);
    st->sig_int.data = st->sig_term.data = st;
    uv_signal_start(&st->sig_int, serve_signal_cb, SIGINT);
    uv_signal_start(&st->sig_term, serve_signal_cb, SIGTERM);
    uv_timer_init(loop, &st->drain_timer);
    st->drain_timer.data = st;

    if (cfg->models_dir[0]) {
        st->pool = model_pool_create(a, err, sizeof err);
        if (!st->pool) {
            log_msg("error", "%s", err);
            st->exit_code = 1;
            serve_stop(st);
        }
        uv_run(loop, UV_RUN_DEFAULT);
        model_pool_destroy(st->pool);
        sched_destroy(a->sched);
        metrics_free(a->metrics);
        uv_loop_close(loop);
        int code = st->exit_code;
        free(st->template_src);
        serve_config_free(cfg);
        free(st);
        return code;
    }

    engine_params_default(&st->ep);
    st->ep.model_path = cfg->model;
    serve_config_engine_params(cfg, &st->ep);
    st->load_work.data = st;
    uv_queue_work(loop, &st->load_work, serve_load_work, serve_load_done);
    st->progress = load_progress_start(loop, a->model_id, cfg->model, !strcmp(cfg->log_format, "json"));

    uv_run(loop, UV_RUN_DEFAULT);

    sched_destroy(a->sched);
    routes_structured_free(a);
    chat_template_free(a->tmpl);
    engine_free(a->e);
    metrics_free(a->metrics);
    uv_loop_close(loop);
    int code = st->exit_code;
    free(st->template_src);
    serve_config_free(cfg);
    free(st);
    return code;
}
