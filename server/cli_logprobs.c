/* cli_logprobs.c -- `qkvd logprobs`: teacher-forced next-token log-probs.
 *
 * Output (scripts depend on it exactly): one JSON object
 *   {"logprobs": [[[id, logprob], ... K pairs best first], ...]}
 * with one entry per input position i: the distribution of the token after
 * tokens 0..i, log-softmax over the whole vocabulary. */
#include "cli.h"
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void logprobs_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd logprobs -m MODEL.gguf --tokens 1,2,3 [--top K] [-t THREADS] [--ctx N] [--kv-type T]\n"
            "  prints {\"logprobs\": [[[id, logprob], ...], ...]}: for every input position, the\n"
            "  top K (default 5) next-token log-probs (log-softmax over the whole vocabulary)\n"
            "  --kv-type T     KV cache element type: f32 (default), f16, q8_0 or q12_0\n");
}

/* Parse "1,2,3" into a malloc'ed array (owned by the caller); -1 on bad input. */
static int logprobs_parse_tokens(const char *s, int32_t **out, int64_t *n) {
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return -1;
    int64_t k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            return -1;
        }
        v[k++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    if (k == 0) { free(v); return -1; }
    *out = v;
    *n = k;
    return 0;
}

int cli_logprobs(int argc, char **argv) {
    const char *model = NULL, *tokens = NULL;
    int kv_type = ENGINE_KV_F32;
    long top = 5, threads = 0, ctx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { logprobs_usage(stdout); return 0; }
        if (i + 1 >= argc) {
            fprintf(stderr, "qkvd logprobs: unknown or incomplete option '%s'\n", a);
            logprobs_usage(stderr);
            return 2;
        }
        const char *val = argv[++i];
        char *end = NULL;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--tokens")) tokens = val;
        else if (!strcmp(a, "--top")) top = strtol(val, &end, 10);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = strtol(val, &end, 10);
        else if (!strcmp(a, "--ctx")) ctx = strtol(val, &end, 10);
        else if (!strcmp(a, "--kv-type")) {
            kv_type = engine_kv_type_from_name(val);
            if (kv_type < 0) {
                fprintf(stderr, "qkvd logprobs: --kv-type must be f32, f16, q8_0 or q12_0, got '%s'\n", val);
                return 2;
            }
        } else {
            fprintf(stderr, "qkvd logprobs: unknown option '%s'\n", a);
            logprobs_usage(stderr);
            return 2;
        }
        if (end && (*end || end == val)) {
            fprintf(stderr, "qkvd logprobs: %s expects an integer, got '%s'\n", a, val);
            return 2;
        }
    }
    if (!model || !tokens) {
        fprintf(stderr, "qkvd logprobs: -m MODEL and --tokens are required\n");
        logprobs_usage(stderr);
        return 2;
    }
    int32_t *ids = NULL;
    int64_t n = 0;
    if (logprobs_parse_tokens(tokens, &ids, &n)) {
        fprintf(stderr, "qkvd logprobs: --tokens expects comma-separated token ids, got '%s'\n", tokens);
        return 2;
    }
    if (top < 1) top = 1;
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = model;
    ep.n_threads = (int32_t)threads;
    ep.n_ctx = ctx > 0 ? (int32_t)ctx : (n > 0 ? (int32_t)n : 1);
    ep.max_seqs = 1;
    ep.max_batch_tokens = 256;
    ep.kv_type = kv_type;
    char err[512];
    engine *e = NULL;
    if (engine_load(&ep, &e, err, sizeof err)) {
        fprintf(stderr, "qkvd logprobs: %s\n", err);
        free(ids);
        return 1;
    }
    const engine_info *info = engine_get_info(e);
    int32_t V = info->n_vocab;
    if (top > V) top = V;
    int rc = 0;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] >= V) {
            fprintf(stderr, "qkvd logprobs: token %d is outside the vocabulary (%d)\n", ids[i], V);
            rc = 1;
        }
    if (n > info->n_ctx) {
        fprintf(stderr, "qkvd logprobs: %lld tokens exceed the context (%d)\n", (long long)n, info->n_ctx);
        rc = 1;
    }
    int32_t *best = malloc((size_t)top * sizeof *best);
    if (!best) rc = 1;
    int32_t seq = rc ? -1 : engine_seq_create(e);
    if (!rc) printf("{\"logprobs\": [");
    for (int64_t off = 0; !rc && off < n;) {
        int32_t cnt = n - off > ep.max_batch_tokens ? ep.max_batch_tokens : (int32_t)(n - off);
        engine_item it = {seq, ids + off, cnt, ENGINE_OUT_ALL, NULL};
        int s = engine_step(e, &it, 1);
        if (s) {
            fprintf(stderr, "qkvd logprobs: forward step failed (%s)\n", strerror(-s));
            rc = 1;
            break;
        }
        for (int32_t r = 0; r < cnt; r++) {
            const float *lg = it.logits + (size_t)r * V;
            double mx = lg[0], sum = 0;
            for (int32_t j = 1; j < V; j++) if (lg[j] > mx) mx = lg[j];
            for (int32_t j = 0; j < V; j++) sum += exp((double)lg[j] - mx);
            double lse = mx + log(sum);
            /* Top K by insertion into a small sorted list (K is small). */
            int32_t nb = 0;
            for (int32_t j = 0; j < V; j++) {
                if (nb == top && lg[j] <= lg[best[nb - 1]]) continue;
                int32_t k = nb < top ? nb++ : nb - 1;
                while (k > 0 && lg[best[k - 1]] < lg[j]) { best[k] = best[k - 1]; k--; }
                best[k] = j;
            }
            printf("%s[", off + r ? ", " : "");
            for (int32_t k = 0; k < nb; k++)
                printf("%s[%d, %.6f]", k ? ", " : "", best[k], (double)lg[best[k]] - lse);
            printf("]");
        }
        off += cnt;
    }
    if (!rc) printf("]}\n");
    free(best);
    free(ids);
    engine_free(e);
    return rc;
}
