/* metrics.c -- Prometheus registry and text exposition (see metrics.h).
 *
 * No locks: every caller runs on the libuv loop thread (MHD is driven by the
 * loop, the scheduler's completions run on it, /metrics is a route), so reads
 * and writes of the registry are never concurrent. The engine is the only
 * state another thread touches, and it is read only between steps. */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include "scheduler.h"
#include "sse.h"

/* Fixed bucket bounds (seconds). Chosen for CPU inference: a token every few
 * ms (small model, one stream) up to seconds (big model, full batch), a first
 * token within ms (cached prompt) up to a minute (long prompt behind a queue). */
static const double ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_le[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5};
static const double step_le[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
static const double dur_le[] = {0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
#define HISTO_MAX 16
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct histo {
    const double *le;           /* n upper bounds, ascending; +Inf is implicit */
    int n;
    uint64_t bucket[HISTO_MAX + 1]; /* per bucket (not cumulative); [n] is (le[n-1], +Inf) */
    uint64_t count;
    double sum;
} histo;

static void histo_init(histo *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n = n;
}

static void histo_observe(histo *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->bucket[i]++;
    h->count++;
    h->sum += v;
}

/* Endpoint labels: a fixed set, so a scanner probing random paths cannot
 * grow the registry. Index N_ENDPOINTS - 1 is "other". */
static const char *const endpoints[] = {
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/health", "/metrics",
    "/tokenize", "/detokenize", "/apply-template", "/", "other",
};
#define N_ENDPOINTS N_OF(endpoints)
#define N_STATUS 600 /* status codes 0..599 (0: no reply was sent) */

struct metrics_model {
    char *id;
    struct sched *s;            /* attached while loaded */
    const engine *e;
    const int *waiters;         /* --models-dir: requests parked while loading */
    int have_info;
    char arch[64], weight_type[32];
    int32_t n_ctx, n_vocab;
    uint64_t n_params;
    uint64_t prompt_tokens, gen_tokens, step_tokens;
    histo ttft, itl, step;
    engine_kv_stats kv;         /* last snapshot taken between steps */
    int have_kv;
    /* counters of engines and schedulers already unloaded */
    uint64_t carry_lookup, carry_hit, carry_preempt;
};

struct metrics {
    metrics_model **models;
    int n_models, cap_models;
    uint64_t req[N_ENDPOINTS][N_STATUS];
    histo dur[N_ENDPOINTS];
    double start_time;          /* unix seconds */
};

metrics *metrics_create(void) {
    metrics *m = calloc(1, sizeof *m);
    if (!m) abort();
    for (int i = 0; i < N_ENDPOINTS; i++) histo_init(&m->dur[i], dur_le, N_OF(dur_le));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    return m;
}

void metrics_free(metrics *m) {
    if (!m) return;
    for (int i = 0; i < m->n_models; i++) {
        free(m->models[i]->id);
        free(m->models[i]);
    }
    free(m->models);
    free(m);
}

metrics_model *metrics_model_get(metrics *m, const char *model_id) {
    if (!m) return NULL;
    for (int i = 0; i < m->n_models; i++)
        if (!strcmp(m->models[i]->id, model_id)) return m->models[i];
    if (m->n_models == m->cap_models) {
        m->cap_models = m->cap_models ? m->cap_models * 2 : 4;
        m->models = realloc(m->models, (size_t)m->cap_models * sizeof *m->models);
        if (!m->models) abort();
    }
    metrics_model *mm = calloc(1, sizeof *mm);
    if (!mm) abort();
    mm->id = strdup(model_id);
    if (!mm->id) abort();
    histo_init(&mm->ttft, ttft_le, N_OF(ttft_le));
    histo_init(&mm->itl, itl_le, N_OF(itl_le));
    histo_init(&mm->step, step_le, N_OF(step_le));
    m->models[m->n_models++] = mm;
    return mm;
}

void metrics_model_attach(metrics_model *mm, struct sched *s, const engine *e) {
    if (!mm) return;
    mm->s = s;
    mm->e = e;
    mm->have_kv = 0;
    if (s) sched_set_metrics(s, mm);
    if (!e) return;
    const engine_info *info = engine_get_info(e);
    snprintf(mm->arch, sizeof mm->arch, "%s", info->arch);
    snprintf(mm->weight_type, sizeof mm->weight_type, "%s", info->weight_type ? info->weight_type : "");
    mm->n_ctx = info->n_ctx;
    mm->n_vocab = info->n_vocab;
    mm->n_params = info->n_params;
    mm->have_info = 1;
}

void metrics_model_detach(metrics_model *mm) {
    if (!mm) return;
    if (mm->e) {
        engine_kv_stats ks;
        engine_kv_stats_get(mm->e, &ks);
        mm->carry_lookup += ks.prefix_lookup_tokens;
        mm->carry_hit += ks.prefix_hit_tokens;
    }
    if (mm->s) {
        mm->carry_preempt += sched_n_preemptions(mm->s);
        sched_set_metrics(mm->s, NULL);
    }
    mm->s = NULL;
    mm->e = NULL;
    mm->have_kv = 0;
}

void metrics_model_set_waiters(metrics_model *mm, const int *n_waiters) {
    if (mm) mm->waiters = n_waiters;
}

/* ---- hooks ---- */

const char *metrics_endpoint(const char *path) {
    if (!path) return endpoints[N_ENDPOINTS - 1];
    const char *p = path;
    if (!strncmp(p, "/v1/", 4) && strcmp(p, "/v1/")) p += 3; /* /v1/x and /x name the same endpoint */
    if (!strcmp(p, "/models") || !strncmp(p, "/models/", 8)) return "/v1/models";
    if (!strcmp(p, "/chat/completions")) return "/v1/chat/completions";
    if (!strcmp(p, "/completions")) return "/v1/completions";
    if (!strcmp(p, "/embeddings")) return "/v1/embeddings";
    if (p == path)
        for (int i = 4; i < N_ENDPOINTS - 1; i++)
            if (!strcmp(path, endpoints[i])) return endpoints[i];
    return endpoints[N_ENDPOINTS - 1];
}

static int endpoint_index(const char *path) {
    const char *ep = metrics_endpoint(path);
    for (int i = 0; i < N_ENDPOINTS; i++)
        if (ep == endpoints[i]) return i;
    return N_ENDPOINTS - 1;
}

void metrics_request(metrics *m, const char *path, int status, double seconds) {
    if (!m) return;
    int ep = endpoint_index(path);
    m->req[ep][status >= 0 && status < N_STATUS ? status : 0]++;
    histo_observe(&m->dur[ep], seconds);
}

void metrics_prompt_tokens(metrics_model *mm, int64_t n) {
    if (mm && n > 0) mm->prompt_tokens += (uint64_t)n;
}

void metrics_token(metrics_model *mm, uint64_t t_start_ns, uint64_t *t_last_ns, int counted) {
    if (!mm) return;
    uint64_t now = uv_hrtime();
    if (*t_last_ns == 0) histo_observe(&mm->ttft, (double)(now - t_start_ns) / 1e9);
    else histo_observe(&mm->itl, (double)(now - *t_last_ns) / 1e9);
    *t_last_ns = now;
    if (counted) mm->gen_tokens++;
}

void metrics_step(metrics_model *mm, double seconds, const engine_item *items, int32_t n_items) {
    if (!mm) return;
    histo_observe(&mm->step, seconds);
    for (int32_t i = 0; i < n_items; i++)
        if (items[i].n_tokens > 0) mm->step_tokens += (uint64_t)items[i].n_tokens;
}

void metrics_kv_snapshot(metrics_model *mm, const engine *e) {
    if (!mm || !e) return;
    engine_kv_stats_get(e, &mm->kv);
    mm->have_kv = 1;
}

/* ---- exposition ---- */

size_t metrics_escape_label(const char *s, char *dst, size_t cap) {
    size_t n = 0;
    for (const char *p = s; *p; p++) {
        const char *rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        size_t k = rep ? 2 : 1;
        if (n + k < cap) {
            if (rep) memcpy(dst + n, rep, 2);
            else dst[n] = *p;
        }
        n += k;
    }
    if (cap) dst[n < cap ? n : cap - 1] = 0;
    return n;
}

/* Append `key="escaped value"` (with a leading comma when not first). */
static void put_label(sse_buf *b, int first, const char *key, const char *val) {
    char tmp[1024];
    size_t need = metrics_escape_label(val, tmp, sizeof tmp);
    sse_buf_appendf(b, "%s%s=\"", first ? "" : ",", key);
    if (need < sizeof tmp) {
        sse_buf_append(b, tmp, need);
    } else {
        char *big = malloc(need + 1);
        if (!big) abort();
        metrics_escape_label(val, big, need + 1);
        sse_buf_append(b, big, need);
        free(big);
    }
    sse_buf_append(b, "\"", 1);
}

static void put_family(sse_buf *b, const char *name, const char *type, const char *help) {
    sse_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_model_sample(sse_buf *b, const char *name, const metrics_model *mm, double v) {
    sse_buf_appendf(b, "%s{", name);
    put_label(b, 1, "model", mm->id);
    sse_buf_appendf(b, "} %.17g\n", v);
}

static void put_model_counter(sse_buf *b, const char *name, const metrics_model *mm, uint64_t v) {
    sse_buf_appendf(b, "%s{", name);
    put_label(b, 1, "model", mm->id);
    sse_buf_appendf(b, "} %llu\n", (unsigned long long)v);
}

/* One histogram's series; label key/val identify it. */
static void put_histo(sse_buf *b, const char *name, const char *key, const char *val, const histo *h) {
    uint64_t cum = 0;
    for (int i = 0; i <= h->n; i++) {
        cum += h->bucket[i];
        sse_buf_appendf(b, "%s_bucket{", name);
        put_label(b, 1, key, val);
        if (i < h->n) sse_buf_appendf(b, ",le=\"%g\"} %llu\n", h->le[i], (unsigned long long)cum);
        else sse_buf_appendf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    sse_buf_appendf(b, "%s_sum{", name);
    put_label(b, 1, key, val);
    sse_buf_appendf(b, "} %.9g\n%s_count{", h->sum, name);
    put_label(b, 1, key, val);
    sse_buf_appendf(b, "} %llu\n", (unsigned long long)h->count);
}

/* Fresh KV statistics when no step can be running (the scheduler is idle),
 * else the snapshot from before the step in flight. 0 when none is known. */
static int model_kv(const metrics_model *mm, engine_kv_stats *out) {
    if (!mm->e) return 0;
    if (!mm->s || !sched_busy(mm->s)) {
        engine_kv_stats_get(mm->e, out);
        return 1;
    }
    if (!mm->have_kv) return 0;
    *out = mm->kv;
    return 1;
}

char *metrics_render(metrics *m, size_t *len) {
    sse_buf b;
    sse_buf_init(&b);
    put_family(&b, "qkvd_start_time_seconds", "gauge", "Unix time the server started.");
    sse_buf_appendf(&b, "qkvd_start_time_seconds %.3f\n", m->start_time);

    put_family(&b, "qkvd_requests_total", "counter",
               "HTTP requests answered, by endpoint and status code (0: the client left before any reply).");
    for (int e = 0; e < N_ENDPOINTS; e++)
        for (int s = 0; s < N_STATUS; s++)
            if (m->req[e][s]) {
                sse_buf_appendf(&b, "qkvd_requests_total{");
                put_label(&b, 1, "endpoint", endpoints[e]);
                sse_buf_appendf(&b, ",status=\"%d\"} %llu\n", s, (unsigned long long)m->req[e][s]);
            }
    put_family(&b, "qkvd_request_duration_seconds", "histogram",
               "Time from a request's arrival to the end of its response, by endpoint.");
    for (int e = 0; e < N_ENDPOINTS; e++)
        if (m->dur[e].count) put_histo(&b, "qkvd_request_duration_seconds", "endpoint", endpoints[e], &m->dur[e]);

    /* Per model. KV and info series are read once per model up front. */
    int n = m->n_models;
    engine_kv_stats *kv = calloc((size_t)(n ? n : 1), sizeof *kv);
    int *have = calloc((size_t)(n ? n : 1), sizeof *have);
    if (!kv || !have) abort();
    for (int i = 0; i < n; i++) have[i] = model_kv(m->models[i], &kv[i]);

    put_family(&b, "qkvd_model_info", "gauge", "The served model (value 1): architecture, weight type, context, vocabulary, parameters.");
    for (int i = 0; i < n; i++) {
        const metrics_model *mm = m->models[i];
        if (!mm->have_info) continue;
        char num[32];
        sse_buf_appendf(&b, "qkvd_model_info{");
        put_label(&b, 1, "model", mm->id);
        put_label(&b, 0, "arch", mm->arch);
        put_label(&b, 0, "weight_type", mm->weight_type);
        snprintf(num, sizeof num, "%d", (int)mm->n_ctx);
        put_label(&b, 0, "n_ctx", num);
        snprintf(num, sizeof num, "%d", (int)mm->n_vocab);
        put_label(&b, 0, "n_vocab", num);
        snprintf(num, sizeof num, "%llu", (unsigned long long)mm->n_params);
        put_label(&b, 0, "n_params", num);
        sse_buf_appendf(&b, "} 1\n");
    }
    put_family(&b, "qkvd_model_loaded", "gauge", "1 when the model is loaded and serving, 0 when not (--models-dir loads on demand).");
    for (int i = 0; i < n; i++) put_model_sample(&b, "qkvd_model_loaded", m->models[i], m->models[i]->e ? 1 : 0);

    put_family(&b, "qkvd_requests_running", "gauge", "Requests running (holding sequences and KV).");
    for (int i = 0; i < n; i++) {
        const metrics_model *mm = m->models[i];
        put_model_sample(&b, "qkvd_requests_running", mm, mm->s ? sched_n_running(mm->s) : 0);
    }
    put_family(&b, "qkvd_requests_waiting", "gauge",
               "Requests accepted but waiting for a free sequence (or for their model to load): the autoscaling signal.");
    for (int i = 0; i < n; i++) {
        const metrics_model *mm = m->models[i];
        double w = (mm->s ? sched_n_queued(mm->s) : 0) + (mm->waiters ? *mm->waiters : 0);
        put_model_sample(&b, "qkvd_requests_waiting", mm, w);
    }

    put_family(&b, "qkvd_kv_blocks", "gauge",
               "KV-cache blocks by state: used (held by live sequences), cached (kept for prefix reuse, evictable), free.");
    for (int i = 0; i < n; i++) {
        if (!have[i]) continue;
        const char *st[3] = {"used", "cached", "free"};
        int64_t free_b = kv[i].blocks_total - kv[i].blocks_used - kv[i].blocks_cached;
        int64_t v[3] = {kv[i].blocks_used, kv[i].blocks_cached, free_b > 0 ? free_b : 0};
        for (int k = 0; k < 3; k++) {
            sse_buf_appendf(&b, "qkvd_kv_blocks{");
            put_label(&b, 1, "model", m->models[i]->id);
            put_label(&b, 0, "state", st[k]);
            sse_buf_appendf(&b, "} %lld\n", (long long)v[k]);
        }
    }
    put_family(&b, "qkvd_kv_block_size_tokens", "gauge", "Token positions per KV-cache block.");
    for (int i = 0; i < n; i++)
        if (have[i]) put_model_sample(&b, "qkvd_kv_block_size_tokens", m->models[i], kv[i].block_tokens);
    put_family(&b, "qkvd_kv_block_bytes", "gauge", "Bytes of one KV-cache block (every layer's K and V).");
    for (int i = 0; i < n; i++)
        if (have[i]) put_model_sample(&b, "qkvd_kv_block_bytes", m->models[i], (double)kv[i].bytes_per_block);
    put_family(&b, "qkvd_kv_allocated_bytes", "gauge", "Memory the KV cache holds for blocks.");
    for (int i = 0; i < n; i++)
        if (have[i]) put_model_sample(&b, "qkvd_kv_allocated_bytes", m->models[i], (double)kv[i].bytes_allocated);
    put_family(&b, "qkvd_kv_needed_bytes", "gauge", "KV memory the live sequences' tokens occupy (tokens x bytes per token).");
    for (int i = 0; i < n; i++)
        if (have[i]) put_model_sample(&b, "qkvd_kv_needed_bytes", m->models[i], (double)kv[i].bytes_needed);
    put_family(&b, "qkvd_kv_resident_bytes", "gauge",
               "Memory the OS has backed for the KV blocks live sequences hold: pages of written rows (a partly filled last block costs only those).");
    for (int i = 0; i < n; i++)
        if (have[i]) put_model_sample(&b, "qkvd_kv_resident_bytes", m->models[i], (double)kv[i].bytes_resident);

    put_family(&b, "qkvd_prefix_cache_lookup_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.");
    for (int i = 0; i < n; i++)
        put_model_counter(&b, "qkvd_prefix_cache_lookup_tokens_total", m->models[i],
                          m->models[i]->carry_lookup + (have[i] ? kv[i].prefix_lookup_tokens : 0));
    put_family(&b, "qkvd_prefix_cache_hit_tokens_total", "counter",
               "Prompt tokens served from the prefix cache (not recomputed).");
    for (int i = 0; i < n; i++)
        put_model_counter(&b, "qkvd_prefix_cache_hit_tokens_total", m->models[i],
                          m->models[i]->carry_hit + (have[i] ? kv[i].prefix_hit_tokens : 0));
    put_family(&b, "qkvd_preemptions_total", "counter",
               "Running sequences pre-empted (KV freed, recomputed later) when KV blocks ran out.");
    for (int i = 0; i < n; i++) {
        const metrics_model *mm = m->models[i];
        put_model_counter(&b, "qkvd_preemptions_total", mm, mm->carry_preempt + (mm->s ? sched_n_preemptions(mm->s) : 0));
    }
    put_family(&b, "qkvd_prompt_tokens_total", "counter", "Prompt tokens of accepted generation requests (as usage.prompt_tokens).");
    for (int i = 0; i < n; i++) put_model_counter(&b, "qkvd_prompt_tokens_total", m->models[i], m->models[i]->prompt_tokens);
    put_family(&b, "qkvd_generation_tokens_total", "counter",
               "Tokens generated, end-of-generation tokens not counted (as usage.completion_tokens).");
    for (int i = 0; i < n; i++) put_model_counter(&b, "qkvd_generation_tokens_total", m->models[i], m->models[i]->gen_tokens);
    put_family(&b, "qkvd_step_tokens_total", "counter", "Tokens processed by engine steps (decode tokens plus prompt chunks).");
    for (int i = 0; i < n; i++) put_model_counter(&b, "qkvd_step_tokens_total", m->models[i], m->models[i]->step_tokens);

    put_family(&b, "qkvd_time_to_first_token_seconds", "histogram",
               "Time from a request being queued to the first token of each of its sequences.");
    for (int i = 0; i < n; i++) put_histo(&b, "qkvd_time_to_first_token_seconds", "model", m->models[i]->id, &m->models[i]->ttft);
    put_family(&b, "qkvd_inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a sequence.");
    for (int i = 0; i < n; i++) put_histo(&b, "qkvd_inter_token_latency_seconds", "model", m->models[i]->id, &m->models[i]->itl);
    put_family(&b, "qkvd_step_duration_seconds", "histogram", "Duration of one batched engine step (forward pass).");
    for (int i = 0; i < n; i++) put_histo(&b, "qkvd_step_duration_seconds", "model", m->models[i]->id, &m->models[i]->step);

    free(kv);
    free(have);
    if (len) *len = b.len;
    if (!b.data) sse_buf_append(&b, "", 0);
    return b.data;
}
