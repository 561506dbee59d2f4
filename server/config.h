/* config.h -- `qkvd serve` configuration: one table of options.
 *
 * Every option has a name (the long flag and the config-file key), an
 * environment variable QKVD_<NAME> (dashes as underscores, upper case), a
 * type, a default and a help line. Precedence: command-line flag > environment
 * > config file (--config FILE / QKVD_CONFIG, a flat JSON object whose keys
 * are option names with '-' or '_') > built-in default. */
#ifndef QKVD_CONFIG_H
#define QKVD_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef struct serve_config {
    char *host;              /* listen address */
    int port;                /* 0 = ephemeral (printed at start-up) */
    char *model;             /* GGUF path */
    char *model_alias;       /* id served in /v1/models; default: file stem */
    int threads;             /* engine threads; 0 = all CPUs */
    int ctx;                 /* context per sequence; 0 = model's trained context */
    int max_seqs;            /* live sequences (sum of n over running requests) */
    int batch_tokens;        /* max tokens in one engine step */
    char *api_key;           /* "" = no auth */
    long max_body;           /* request body limit, bytes */
    int max_tokens;          /* default and cap for max_tokens */
    int queue_len;           /* waiting requests before 503 */
    double request_timeout;  /* seconds a generation may run; 0 = none */
    int conn_timeout;        /* idle connection timeout, seconds */
    char *cors_origins;      /* "" = CORS off; "*" or comma list */
    double grace_period;     /* seconds to finish running requests on SIGTERM */
    char *chat_template_file;/* "" = the model's template (ChatML fallback) */
    char *log_format;        /* "text" or "json" */
    char *config;            /* config file path ("" = none) */
    char *models_dir;        /* "" = serve only --model; else every .gguf in it, on demand */
    int max_loaded_models;   /* --models-dir: models kept loaded (LRU unload of idle ones) */
    char *model_aliases;     /* --models-dir: "alias=file-stem,..." */
    int no_webui;            /* 1: GET / is 404 instead of the chat page */
    int no_metrics;          /* 1: GET /metrics is 404 and nothing is counted */
    int max_running;         /* sequences running at once; 0 = max_seqs */
    int prefill_chunk;       /* prompt tokens per sequence per step */
    long kv_memory;          /* KV pool, MiB; 0 = max_seqs x ctx tokens */
    char *kv_type;           /* "f32", "f16", "q8_0", "q12_0" */
    int kv_block;            /* tokens per KV block */
    char *kv_policy;         /* "full" or "window" */
    int kv_window, kv_sinks; /* window policy */
    int no_prefix_cache;     /* 1: no prefix reuse */
    /* Default attention of every request (docs/attention.md); a request's
     * "attention" object overrides it field by field. */
    char *attention;         /* kind: softmax, window, rerope, leaky-rerope, logn, hwfa, linear */
    int attention_window, attention_sinks;
    double attention_leak;
    int attention_logn;
    char *rope_scaling;      /* "" = the model's own (rope.scaling.* metadata) */
    double rope_factor;
    int rope_orig_ctx;
    double nbce_beta;        /* NBCE defaults (context_mode "nbce") */
    char *nbce_pool;
} serve_config;

/* Parse defaults, config file, environment (envp-style getter: NULL uses
 * getenv) and argv (argv[0] is the subcommand name, skipped). Returns 0 when
 * ready, 1 when --help was printed to `out`, or -1 with a message in err.
 * Strings in cfg are malloc'd: serve_config_free. */
int serve_config_parse(serve_config *cfg, int argc, char **argv,
                       const char *(*get_env)(const char *name),
                       char *err, size_t errlen, FILE *out);
void serve_config_free(serve_config *cfg); /* accepts a zeroed or half-built cfg */
/* The attention defaults of cfg as engine parameters (names were checked
 * when parsed, so this cannot fail on a parsed config; -1 otherwise). */
#include "attn_kind.h"
int serve_config_attention(const serve_config *cfg, attn_params *out);

/* Print the option table (flag, env, default, help). */
void serve_config_print_help(FILE *out);
struct engine_params;
/* Fill the engine parameters that come from options (threads, ctx, seqs,
 * batch, KV cache); model_path is left to the caller. */
void serve_config_engine_params(const serve_config *cfg, struct engine_params *ep);
/* Write every option with its effective value as a JSON object to out. */
void serve_config_dump(const serve_config *cfg, FILE *out);

#endif
