/* config.c -- the option table and its four sources (see config.h). */
#include "config.h"
#include "engine.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* OPT_FLAG: an int 0/1; on the command line it takes no value (--no-webui),
 * elsewhere 1/0/true/false/yes/no (env) or a JSON boolean or number (file). */
enum opt_type { OPT_STR, OPT_INT, OPT_LONG, OPT_DBL, OPT_FLAG };

typedef struct opt_def {
    const char *name;    /* long flag without dashes; config key */
    char short_name;     /* 0 = none */
    enum opt_type type;
    size_t offset;       /* into serve_config */
    const char *def;     /* default, as text */
    double min, max;     /* numeric range */
    const char *help;
} opt_def;

#define OFF(f) offsetof(serve_config, f)
static const opt_def options[] = {
    {"host", 0, OPT_STR, OFF(host), "127.0.0.1", 0, 0, "address to listen on"},
    {"port", 0, OPT_INT, OFF(port), "8080", 0, 65535, "TCP port (0: pick a free port, printed at start-up)"},
    {"model", 'm', OPT_STR, OFF(model), "", 0, 0, "GGUF model file to serve (required)"},
    {"model-alias", 0, OPT_STR, OFF(model_alias), "", 0, 0, "model id shown in /v1/models (default: file name without .gguf)"},
    {"threads", 't', OPT_INT, OFF(threads), "0", 0, 1024, "engine threads (0: all online CPUs)"},
    {"ctx", 'c', OPT_INT, OFF(ctx), "0", 0, 1 << 24, "context length per sequence (0: the model's trained context)"},
    {"max-seqs", 0, OPT_INT, OFF(max_seqs), "16", 1, 4096, "live sequences at once (a request with n=k uses k)"},
    {"batch-tokens", 0, OPT_INT, OFF(batch_tokens), "512", 1, 1 << 20, "max tokens in one engine step (prompt chunk size)"},
    {"max-running", 0, OPT_INT, OFF(max_running), "0", 0, 4096, "sequences running at once (0: max-seqs); more wait in the queue"},
    {"prefill-chunk", 0, OPT_INT, OFF(prefill_chunk), "256", 1, 1 << 20, "largest prompt chunk one step feeds per sequence (decode tokens of others share the step)"},
    {"kv-memory", 0, OPT_LONG, OFF(kv_memory), "0", 0, 1 << 30, "KV cache pool in MiB (0: room for max-seqs x ctx tokens); memory is taken as blocks are used"},
    {"kv-type", 0, OPT_STR, OFF(kv_type), "f32", 0, 0, "KV cache element type: f32, f16, q8_0 (int8, a scale per 32 values) or q12_0 (12-bit, same scales)"},
    {"kv-block", 0, OPT_INT, OFF(kv_block), "16", 1, 256, "tokens per KV block (the unit of allocation and prefix sharing)"},
    {"kv-policy", 0, OPT_STR, OFF(kv_policy), "full", 0, 0, "default KV policy: full, or window (keep kv-sinks first + kv-window last tokens)"},
    {"kv-window", 0, OPT_INT, OFF(kv_window), "1024", 1, 1 << 24, "kv-policy window: last tokens every query sees"},
    {"kv-sinks", 0, OPT_INT, OFF(kv_sinks), "4", 0, 1 << 20, "kv-policy window: first tokens always kept (attention sinks)"},
    {"no-prefix-cache", 0, OPT_FLAG, OFF(no_prefix_cache), "0", 0, 1, "do not reuse the KV of cached prompt prefixes"},
    {"api-key", 0, OPT_STR, OFF(api_key), "", 0, 0, "require Authorization: Bearer KEY (empty: no auth)"},
    {"max-body", 0, OPT_LONG, OFF(max_body), "4194304", 64, 1073741824.0, "largest request body, bytes (413 above)"},
    {"max-tokens", 0, OPT_INT, OFF(max_tokens), "4096", 1, 1 << 24, "default and upper bound of max_tokens"},
    {"queue-len", 0, OPT_INT, OFF(queue_len), "64", 0, 1 << 20, "requests waiting for a slot before 503 + Retry-After"},
    {"request-timeout", 0, OPT_DBL, OFF(request_timeout), "600", 0, 1e9, "seconds one generation may run (0: unlimited)"},
    {"conn-timeout", 0, OPT_INT, OFF(conn_timeout), "30", 1, 86400, "seconds an idle or slow connection is kept"},
    {"cors-origins", 0, OPT_STR, OFF(cors_origins), "", 0, 0, "allowed CORS origins: '*' or comma list (empty: CORS off)"},
    {"grace-period", 0, OPT_DBL, OFF(grace_period), "30", 0, 86400, "seconds running requests get to finish after SIGINT/SIGTERM"},
    {"chat-template-file", 0, OPT_STR, OFF(chat_template_file), "", 0, 0, "Jinja chat template overriding the model's"},
    {"log-format", 0, OPT_STR, OFF(log_format), "text", 0, 0, "request log format: text or json"},
    {"config", 0, OPT_STR, OFF(config), "", 0, 0, "JSON config file (flat object of these options)"},
    {"models-dir", 0, OPT_STR, OFF(models_dir), "", 0, 0, "serve every .gguf in this directory, loaded on demand (instead of or besides --model, which becomes the default)"},
    {"max-loaded-models", 0, OPT_INT, OFF(max_loaded_models), "2", 1, 256, "--models-dir: models kept in memory (least recently used idle one unloaded)"},
    {"model-aliases", 0, OPT_STR, OFF(model_aliases), "", 0, 0, "--models-dir: ids for models, 'alias=file-stem,alias2=file.gguf'"},
    {"no-webui", 0, OPT_FLAG, OFF(no_webui), "0", 0, 1, "do not serve the built-in chat page at GET /"},
    {"no-metrics", 0, OPT_FLAG, OFF(no_metrics), "0", 0, 1, "do not serve Prometheus metrics at GET /metrics (nor count them)"},
    {"attention", 0, OPT_STR, OFF(attention), "softmax", 0, 0, "default attention kind: softmax, window, rerope, leaky-rerope, logn, hwfa, linear"},
    {"attention-window", 0, OPT_INT, OFF(attention_window), "256", 1, 1 << 24, "window W (window, hwfa) or w (rerope, leaky-rerope)"},
    {"attention-sinks", 0, OPT_INT, OFF(attention_sinks), "4", 0, 1 << 24, "first tokens always attended by window / hwfa"},
    {"attention-leak", 0, OPT_DBL, OFF(attention_leak), "16", 1.0001, 1e6, "leaky-rerope: relative positions past w grow by 1/leak"},
    {"attention-logn", 0, OPT_FLAG, OFF(attention_logn), "0", 0, 1, "scale queries by log-length past the trained context (any kind)"},
    {"rope-scaling", 0, OPT_STR, OFF(rope_scaling), "", 0, 0, "RoPE scaling: none, linear, ntk, dynamic-ntk, yarn (empty: the model's)"},
    {"rope-factor", 0, OPT_DBL, OFF(rope_factor), "1", 1, 1e4, "RoPE scaling factor s"},
    {"rope-orig-ctx", 0, OPT_INT, OFF(rope_orig_ctx), "0", 0, 1 << 24, "trained context for dynamic-ntk / yarn / logn (0: the model's)"},
    {"nbce-beta", 0, OPT_DBL, OFF(nbce_beta), "0.25", 0, 100, "NBCE: (beta+1)*pool(log p(T|S_k)) - beta*log p(T)"},
    {"nbce-pool", 0, OPT_STR, OFF(nbce_pool), "min-entropy", 0, 0, "NBCE pooling of the contexts: min-entropy or mean"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const opt_def *opt_find(const char *name, size_t len) {
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const char *o = options[i].name;
        if (strlen(o) != len) continue;
        size_t k = 0;
        for (; k < len; k++) {
            char c = name[k] == '_' ? '-' : name[k];
            if (c != o[k]) break;
        }
        if (k == len) return &options[i];
    }
    return NULL;
}

static void opt_env_name(const opt_def *o, char *buf, size_t cap) {
    size_t n = snprintf(buf, cap, "QKVD_");
    for (const char *p = o->name; *p && n + 1 < cap; p++)
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    buf[n] = 0;
}

/* Set one option from text; source names where the value came from. */
static int opt_set(serve_config *cfg, const opt_def *o, const char *val, const char *source,
                   char *err, size_t errlen) {
    char *base = (char *)cfg;
    if (o->type == OPT_FLAG) {
        int v = -1;
        if (!strcmp(val, "1") || !strcasecmp(val, "true") || !strcasecmp(val, "yes") || !strcasecmp(val, "on")) v = 1;
        if (!strcmp(val, "0") || !strcasecmp(val, "false") || !strcasecmp(val, "no") || !strcasecmp(val, "off")) v = 0;
        if (v < 0) {
            snprintf(err, errlen, "%s: --%s is a switch: 1/0, true/false, yes/no, got '%s'", source, o->name, val);
            return -1;
        }
        *(int *)(base + o->offset) = v;
        return 0;
    }
    if (o->type == OPT_STR) {
        char **slot = (char **)(base + o->offset);
        char *copy = strdup(val);
        if (!copy) abort();
        free(*slot);
        *slot = copy;
        enum attn_kind ak;
        enum rope_scaling rs;
        if (!strcmp(o->name, "attention") && attn_kind_parse(val, &ak)) {
            snprintf(err, errlen, "%s: --attention must be softmax, window, rerope, leaky-rerope, logn, hwfa or linear, got '%s'",
                     source, val);
            return -1;
        }
        if (!strcmp(o->name, "rope-scaling") && val[0] && rope_scaling_parse(val, &rs)) {
            snprintf(err, errlen, "%s: --rope-scaling must be none, linear, ntk, dynamic-ntk or yarn, got '%s'", source, val);
            return -1;
        }
        if (!strcmp(o->name, "nbce-pool") && strcmp(val, "min-entropy") && strcmp(val, "mean")) {
            snprintf(err, errlen, "%s: --nbce-pool must be 'min-entropy' or 'mean', got '%s'", source, val);
            return -1;
        }
        if (!strcmp(o->name, "log-format") && strcmp(val, "text") && strcmp(val, "json")) {
            snprintf(err, errlen, "%s: --log-format must be 'text' or 'json', got '%s'", source, val);
            return -1;
        }
        if (!strcmp(o->name, "kv-type") && engine_kv_type_from_name(val) < 0) {
            snprintf(err, errlen, "%s: --kv-type must be f32, f16, q8_0 or q12_0, got '%s'", source, val);
            return -1;
        }
        if (!strcmp(o->name, "kv-policy") && engine_kv_policy_from_name(val) < 0) {
            snprintf(err, errlen, "%s: --kv-policy must be full or window, got '%s'", source, val);
            return -1;
        }
        return 0;
    }
    char *end;
    errno = 0;
    double d = strtod(val, &end);
    while (*end && isspace((unsigned char)*end)) end++;
    if (!*val || *end || errno || !isfinite(d)) {
        snprintf(err, errlen, "%s: --%s expects a number, got '%s'", source, o->name, val);
        return -1;
    }
    if (o->type != OPT_DBL && d != floor(d)) {
        snprintf(err, errlen, "%s: --%s expects an integer, got '%s'", source, o->name, val);
        return -1;
    }
    if (d < o->min || d > o->max) {
        snprintf(err, errlen, "%s: --%s must be in [%g, %g], got '%s'", source, o->name, o->min, o->max, val);
        return -1;
    }
    if (o->type == OPT_INT) *(int *)(base + o->offset) = (int)d;
    else if (o->type == OPT_LONG) *(long *)(base + o->offset) = (long)d;
    else *(double *)(base + o->offset) = d;
    return 0;
}

static int config_load_file(serve_config *cfg, const char *path, const unsigned char *from_flag,
                            const unsigned char *from_env, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        snprintf(err, errlen, "config file %s: %s (line %d)", path, je.text, je.line);
        return -1;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "config file %s: top level must be a JSON object", path);
        json_decref(root);
        return -1;
    }
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v) {
        if (key[0] == '_' || key[0] == '#') continue; /* comments: "_comment", "#" */
        const opt_def *o = opt_find(key, strlen(key));
        if (!o) {
            snprintf(err, errlen, "config file %s: unknown option '%s'", path, key);
            rc = -1;
            break;
        }
        size_t idx = (size_t)(o - options);
        if (from_flag[idx] || from_env[idx] || !strcmp(o->name, "config")) continue;
        char buf[64], src[600];
        const char *text;
        if (json_is_boolean(v)) text = json_is_true(v) ? "1" : "0";
        else if (json_is_string(v)) text = json_string_value(v);
        else if (json_is_integer(v)) { snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v)); text = buf; }
        else if (json_is_real(v)) { snprintf(buf, sizeof buf, "%.17g", json_real_value(v)); text = buf; }
        else if (json_is_null(v)) continue;
        else {
            snprintf(err, errlen, "config file %s: option '%s' must be a string or number", path, key);
            rc = -1;
            break;
        }
        snprintf(src, sizeof src, "config file %s", path);
        if (opt_set(cfg, o, text, src, err, errlen)) { rc = -1; break; }
    }
    json_decref(root);
    return rc;
}

static const char *env_default(const char *name) {
    return getenv(name);
}

void serve_config_print_help(FILE *out) {
    fprintf(out, "usage: qkvd serve -m MODEL.gguf [options]\n\n"
                 "Precedence: flag > environment > config file > default.\n\noptions:\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const opt_def *o = &options[i];
        char flag[64], env[64];
        if (o->short_name) snprintf(flag, sizeof flag, "-%c, --%s", o->short_name, o->name);
        else snprintf(flag, sizeof flag, "    --%s", o->name);
        opt_env_name(o, env, sizeof env);
        fprintf(out, "  %-26s %s\n  %-26s env %s, default '%s'\n", flag, o->help, "", env, o->def);
    }
    fprintf(out, "  %-26s %s\n", "-h, --help", "show this help");
}

int serve_config_parse(serve_config *cfg, int argc, char **argv,
                       const char *(*get_env)(const char *name),
                       char *err, size_t errlen, FILE *out) {
    if (!get_env) get_env = env_default;
    memset(cfg, 0, sizeof *cfg);
    unsigned char from_flag[N_OPTIONS] = {0}, from_env[N_OPTIONS] = {0};
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (opt_set(cfg, &options[i], options[i].def, "default", err, errlen)) return -1;

    /* Flags first, remembering which options they set, so that the config
     * file (named by a flag or the environment) cannot override them. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            serve_config_print_help(out ? out : stdout);
            return 1;
        }
        const opt_def *o = NULL;
        const char *val = NULL;
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *name = a + 2, *eq = strchr(name, '=');
            o = opt_find(name, eq ? (size_t)(eq - name) : strlen(name));
            if (eq) val = eq + 1;
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (size_t k = 0; k < N_OPTIONS; k++)
                if (options[k].short_name == a[1]) o = &options[k];
        }
        if (!o) {
            snprintf(err, errlen, "unknown option '%s' (qkvd serve --help lists them)", a);
            return -1;
        }
        if (!val && o->type == OPT_FLAG) val = "1";
        if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '%s' needs a value", a);
                return -1;
            }
            val = argv[++i];
        }
        if (opt_set(cfg, o, val, "command line", err, errlen)) return -1;
        from_flag[o - options] = 1;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (from_flag[i]) continue;
        char env[64];
        opt_env_name(&options[i], env, sizeof env);
        const char *v = get_env(env);
        if (!v) continue;
        char src[96];
        snprintf(src, sizeof src, "environment %s", env);
        if (opt_set(cfg, &options[i], v, src, err, errlen)) return -1;
        from_env[i] = 1;
    }
    if (cfg->config && cfg->config[0])
        if (config_load_file(cfg, cfg->config, from_flag, from_env, err, errlen)) return -1;
    return 0;
}

int serve_config_attention(const serve_config *cfg, attn_params *out) {
    attn_params_default(out);
    if (cfg->attention && attn_kind_parse(cfg->attention, &out->kind)) return -1;
    out->window = cfg->attention_window;
    out->sinks = cfg->attention_sinks;
    out->leak = (float)cfg->attention_leak;
    out->logn = cfg->attention_logn || out->kind == ATTN_LOGN;
    if (cfg->rope_scaling && cfg->rope_scaling[0]) {
        if (rope_scaling_parse(cfg->rope_scaling, &out->rope.type)) return -1;
        out->rope_set = 1;
        out->rope.factor = (float)cfg->rope_factor;
        out->rope.orig_ctx = cfg->rope_orig_ctx;
    } else if (cfg->rope_orig_ctx > 0) {
        /* Only the trained length (for logn): keep RoPE plain. */
        out->rope_set = 1;
        out->rope.orig_ctx = cfg->rope_orig_ctx;
    }
    const char *param;
    char err[128];
    return attn_params_validate(out, &param, err, sizeof err) ? -1 : 0;
}

void serve_config_free(serve_config *cfg) {
    if (!cfg) return;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].type != OPT_STR) continue;
        char **slot = (char **)((char *)cfg + options[i].offset);
        free(*slot);
        *slot = NULL;
    }
}

void serve_config_dump(const serve_config *cfg, FILE *out) {
    json_t *o = json_object();
    const char *base = (const char *)cfg;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const opt_def *d = &options[i];
        json_t *v;
        if (d->type == OPT_STR) {
            const char *s = *(char *const *)(base + d->offset);
            v = json_string(s ? s : "");
        } else if (d->type == OPT_FLAG) v = json_boolean(*(const int *)(base + d->offset));
        else if (d->type == OPT_INT) v = json_integer(*(const int *)(base + d->offset));
        else if (d->type == OPT_LONG) v = json_integer(*(const long *)(base + d->offset));
        else v = json_real(*(const double *)(base + d->offset));
        json_object_set_new(o, d->name, v);
    }
    json_dumpf(o, out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', out);
    json_decref(o);
}

void serve_config_engine_params(const serve_config *cfg, engine_params *ep) {
    ep->n_threads = cfg->threads;
    ep->n_ctx = cfg->ctx;
    ep->max_seqs = cfg->max_seqs;
    ep->max_batch_tokens = cfg->batch_tokens;
    ep->kv_block_tokens = cfg->kv_block;
    ep->kv_type = cfg->kv_type ? engine_kv_type_from_name(cfg->kv_type) : ENGINE_KV_F32;
    if (ep->kv_type < 0) ep->kv_type = ENGINE_KV_F32;
    ep->kv_memory_bytes = (uint64_t)cfg->kv_memory << 20;
    ep->kv_policy = cfg->kv_policy ? engine_kv_policy_from_name(cfg->kv_policy) : ENGINE_KV_FULL;
    if (ep->kv_policy < 0) ep->kv_policy = ENGINE_KV_FULL;
    ep->kv_window = cfg->kv_window;
    ep->kv_sinks = cfg->kv_sinks;
    ep->kv_no_prefix_cache = cfg->no_prefix_cache;
}
