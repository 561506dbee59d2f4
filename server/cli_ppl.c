/* cli_ppl.c -- `qkvd ppl`: perplexity of a text's first N tokens in one pass
 * under a chosen attention kind and RoPE scaling.
 *
 * The text is tokenised (BOS as the model's metadata says), cut to --ctx
 * tokens and fed as ONE sequence in prefill chunks (ENGINE_OUT_ALL), so
 * every token is predicted from everything before it in the same pass. The
 * predictions of positions 1 .. N-1 are averaged per bucket of positions
 * and overall. --json prints exactly (scripts depend on it)
 *   {"tokens": N, "ppl": X, "buckets": [{"from": a, "to": b, "ppl": y}, ...]}
 * where a bucket covers predicted positions [from, to). --stats adds one
 * line `stats: {...}` on stderr (KV bytes, prefill and decode tok/s). */
#include "cli.h"
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void ppl_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd ppl -m MODEL.gguf -f TEXT --ctx N [--attention KIND] [--window W] [--sinks S]\n"
            "                [--leak K] [--logn] [--rope-scaling TYPE --rope-factor F] [--json]\n"
            "  -f FILE            text to score (its first N tokens)\n"
            "  --ctx N            tokens in the pass (default: the model's trained context)\n"
            "  --attention KIND   softmax, window, rerope, leaky-rerope, logn, hwfa, linear\n"
            "  --window W         window (window, hwfa) or w (rerope kinds); default %d\n"
            "  --sinks S          first tokens always attended (window, hwfa); default %d\n"
            "  --leak K           leaky-rerope slope 1/K past the window; default %g\n"
            "  --logn             scale queries by log-length past the trained context\n"
            "  --rope-scaling T   none, linear, ntk, dynamic-ntk, yarn (default: the model's)\n"
            "  --rope-factor F    scaling factor s (default 1)\n"
            "  --rope-orig-ctx L  trained context for dynamic-ntk / yarn (default: the model's)\n"
            "  --buckets B        position buckets (default 8)\n"
            "  --batch N          tokens per forward step (default 256)\n"
            "  --decode N         after the pass, time N greedy decode steps (for --stats)\n"
            "  --stats            print `stats: {...}` (KV bytes, tok/s) on stderr\n"
            "  -t THREADS         engine threads\n"
            "  --json             {\"tokens\": N, \"ppl\": X, \"buckets\": [{\"from\": a, \"to\": b, \"ppl\": y}, ...]}\n",
            ATTN_DEFAULT_WINDOW, ATTN_DEFAULT_SINKS, (double)ATTN_DEFAULT_LEAK);
}

int cli_attn_flag(const char *flag, const char *val, attn_params *p, char *err, size_t errlen) {
    char *end = NULL;
    if (!strcmp(flag, "--attention")) {
        if (!val || attn_kind_parse(val, &p->kind)) {
            snprintf(err, errlen, "--attention: unknown kind '%s' (softmax, window, rerope, leaky-rerope, logn, hwfa, linear)",
                     val ? val : "");
            return -1;
        }
        if (p->kind == ATTN_LOGN) p->logn = 1;
        return 1;
    }
    if (!strcmp(flag, "--rope-scaling")) {
        if (!val || rope_scaling_parse(val, &p->rope.type)) {
            snprintf(err, errlen, "--rope-scaling: unknown type '%s' (none, linear, ntk, dynamic-ntk, yarn)",
                     val ? val : "");
            return -1;
        }
        p->rope_set = 1;
        return 1;
    }
    if (!strcmp(flag, "--window") || !strcmp(flag, "--sinks") || !strcmp(flag, "--rope-orig-ctx")) {
        long v = val ? strtol(val, &end, 10) : 0;
        if (!val || end == val || *end || v < 0 || v > (1 << 24)) {
            snprintf(err, errlen, "%s expects an integer in [0, %d], got '%s'", flag, 1 << 24, val ? val : "");
            return -1;
        }
        if (flag[2] == 'w') p->window = (int32_t)v;
        else if (flag[2] == 's') p->sinks = (int32_t)v;
        else { p->rope.orig_ctx = (int32_t)v; p->rope_set = 1; }
        return 1;
    }
    if (!strcmp(flag, "--leak") || !strcmp(flag, "--rope-factor")) {
        double v = val ? strtod(val, &end) : 0;
        if (!val || end == val || *end || !isfinite(v)) {
            snprintf(err, errlen, "%s expects a number, got '%s'", flag, val ? val : "");
            return -1;
        }
        if (flag[2] == 'l') p->leak = (float)v;
        else { p->rope.factor = (float)v; p->rope_set = 1; }
        return 1;
    }
    return 0;
}

static double ppl_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Whole file into a NUL-terminated malloc'd buffer (owned by the caller). */
static char *ppl_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 4096 > cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    if (buf) { buf[n] = 0; *len = n; }
    return buf;
}

int cli_ppl(int argc, char **argv) {
    const char *model = NULL, *file = NULL;
    long ctx = 0, threads = 0, buckets = 8, batch = 256, decode = 0;
    int json = 0, stats = 0;
    attn_params ap;
    attn_params_default(&ap);
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { ppl_usage(stdout); return 0; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (!strcmp(a, "--stats")) { stats = 1; continue; }
        if (!strcmp(a, "--logn")) { ap.logn = 1; continue; }
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int r = cli_attn_flag(a, val, &ap, err, sizeof err);
        if (r < 0) { fprintf(stderr, "qkvd ppl: %s\n", err); return 2; }
        if (r > 0) { i++; continue; }
        if (!val) {
            fprintf(stderr, "qkvd ppl: unknown or incomplete option '%s'\n", a);
            ppl_usage(stderr);
            return 2;
        }
        i++;
        char *end = NULL;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = val;
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) ctx = strtol(val, &end, 10);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = strtol(val, &end, 10);
        else if (!strcmp(a, "--buckets")) buckets = strtol(val, &end, 10);
        else if (!strcmp(a, "--batch")) batch = strtol(val, &end, 10);
        else if (!strcmp(a, "--decode")) decode = strtol(val, &end, 10);
        else {
            fprintf(stderr, "qkvd ppl: unknown option '%s'\n", a);
            ppl_usage(stderr);
            return 2;
        }
        if (end && (*end || end == val)) {
            fprintf(stderr, "qkvd ppl: %s expects an integer, got '%s'\n", a, val);
            return 2;
        }
    }
    if (!model || !file) {
        fprintf(stderr, "qkvd ppl: -m MODEL and -f TEXT are required\n");
        ppl_usage(stderr);
        return 2;
    }
    const char *bad = NULL;
    if (ctx < 0 || ctx > (1 << 24)) bad = "--ctx";
    else if (buckets < 1 || buckets > 4096) bad = "--buckets";
    else if (batch < 1 || batch > 65536) bad = "--batch";
    else if (decode < 0 || decode > 1 << 20) bad = "--decode";
    if (bad) {
        fprintf(stderr, "qkvd ppl: %s is out of range\n", bad);
        return 2;
    }
    const char *param = NULL;
    if (attn_params_validate(&ap, &param, err, sizeof err)) {
        fprintf(stderr, "qkvd ppl: %s\n", err);
        return 2;
    }
    size_t text_len = 0;
    char *text = ppl_read_file(file, &text_len);
    if (!text) {
        fprintf(stderr, "qkvd ppl: cannot read %s: %s\n", file, strerror(errno));
        return 1;
    }
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = model;
    ep.n_threads = (int32_t)threads;
    ep.n_ctx = ctx > 0 ? (int32_t)(ctx + decode) : 0; /* 0: the trained context */
    ep.max_seqs = 1;
    ep.max_batch_tokens = (int32_t)batch;
    engine *e = NULL;
    if (engine_load(&ep, &e, err, sizeof err)) {
        fprintf(stderr, "qkvd ppl: %s\n", err);
        free(text);
        return 1;
    }
    const engine_info *info = engine_get_info(e);
    if (ctx == 0) ctx = info->n_ctx > decode + 2 ? info->n_ctx - decode : info->n_ctx;
    const tokenizer *tk = engine_tokenizer(e);
    int64_t n_all = tokenizer_encode(tk, text, text_len, 1, 0, NULL, 0);
    int32_t *ids = n_all > 0 ? malloc((size_t)n_all * sizeof(int32_t)) : NULL;
    int rc = 0;
    if (!ids || tokenizer_encode(tk, text, text_len, 1, 0, ids, n_all) != n_all) {
        fprintf(stderr, "qkvd ppl: cannot tokenise %s\n", file);
        rc = 1;
    }
    free(text);
    int64_t n = n_all < ctx ? n_all : ctx;
    if (!rc && n < 2) {
        fprintf(stderr, "qkvd ppl: %s has %lld tokens, need at least 2\n", file, (long long)n);
        rc = 1;
    }
    if (!rc && n < ctx)
        fprintf(stderr, "qkvd ppl: note: %s has only %lld tokens (--ctx %ld)\n", file, (long long)n, ctx);
    int32_t seq = -1;
    if (!rc) {
        seq = engine_seq_create(e);
        if (engine_seq_set_attention(e, seq, &ap, err, sizeof err)) {
            fprintf(stderr, "qkvd ppl: %s\n", err);
            rc = 1;
        }
    }
    int32_t V = info->n_vocab;
    double *nll = calloc((size_t)(n > 0 ? n : 1), sizeof(double)); /* nll[p]: -log p(token p | < p) */
    if (!nll) rc = 1;
    double t0 = ppl_now();
    for (int64_t off = 0; !rc && off < n;) {
        int32_t cnt = n - off > batch ? (int32_t)batch : (int32_t)(n - off);
        engine_item it = {seq, ids + off, cnt, ENGINE_OUT_ALL, NULL};
        int s = engine_step(e, &it, 1);
        if (s) {
            fprintf(stderr, "qkvd ppl: forward step failed at token %lld (%s)\n", (long long)off, strerror(-s));
            rc = 1;
            break;
        }
        for (int32_t r = 0; r < cnt && off + r + 1 < n; r++) {
            const float *lg = it.logits + (size_t)r * V;
            double mx = lg[0], sum = 0;
            for (int32_t j = 1; j < V; j++) if (lg[j] > mx) mx = lg[j];
            for (int32_t j = 0; j < V; j++) sum += exp((double)lg[j] - mx);
            nll[off + r + 1] = mx + log(sum) - lg[ids[off + r + 1]];
        }
        off += cnt;
    }
    double t_prefill = ppl_now() - t0;
    if (!rc) {
        double tot = 0;
        for (int64_t p = 1; p < n; p++) tot += nll[p];
        double ppl = exp(tot / (double)(n - 1));
        int64_t nb = buckets < n - 1 ? buckets : n - 1;
        if (json) printf("{\"tokens\": %lld, \"ppl\": %.6f, \"buckets\": [", (long long)n, ppl);
        else printf("%s: %lld tokens, attention %s, ppl %.4f\n", file, (long long)n, attn_kind_name(ap.kind), ppl);
        for (int64_t b = 0; b < nb; b++) {
            int64_t from = 1 + (n - 1) * b / nb, to = 1 + (n - 1) * (b + 1) / nb;
            double s = 0;
            for (int64_t p = from; p < to; p++) s += nll[p];
            double bp = exp(s / (double)(to - from));
            if (json) printf("%s{\"from\": %lld, \"to\": %lld, \"ppl\": %.6f}", b ? ", " : "", (long long)from, (long long)to, bp);
            else printf("  positions %7lld .. %7lld  ppl %.4f\n", (long long)from, (long long)to - 1, bp);
        }
        if (json) printf("]}\n");
    }
    if (!rc && stats) {
        /* Decode timing: greedy tokens appended one per step after the pass. */
        double td = 0;
        int32_t done = 0, tok = ids[n - 1];
        for (int32_t d = 0; d < decode; d++) {
            engine_item it = {seq, &tok, 1, ENGINE_OUT_LAST, NULL};
            double a = ppl_now();
            if (engine_step(e, &it, 1)) break;
            td += ppl_now() - a;
            int32_t best = 0;
            for (int32_t j = 1; j < V; j++) if (it.logits[j] > it.logits[best]) best = j;
            tok = best;
            done++;
        }
        fprintf(stderr,
                "stats: {\"kind\": \"%s\", \"tokens\": %lld, \"kv_bytes\": %llu, \"state_bytes\": %llu, "
                "\"kv_bytes_per_token\": %llu, \"prefill_tok_s\": %.2f, \"decode_tokens\": %d, \"decode_tok_s\": %.2f}\n",
                attn_kind_name(ap.kind), (long long)engine_seq_len(e, seq),
                (unsigned long long)engine_kv_bytes_allocated(e), (unsigned long long)engine_linear_state_bytes(e),
                (unsigned long long)info->kv_bytes_per_token, t_prefill > 0 ? n / t_prefill : 0.0, (int)done,
                td > 0 ? done / td : 0.0);
    }
    free(nll);
    free(ids);
    engine_free(e);
    return rc;
}
