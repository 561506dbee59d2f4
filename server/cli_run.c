/* cli_run.c -- `qkvd run`: one-shot generation from a prompt, streamed to
 * stdout, with prompt/generation speed on stderr.
 *
 * Sampling defaults to greedy (temperature 0): a one-shot run is mostly used
 * to check a model, and identical output on every run makes that easy. Pass
 * --temp 0.8 (with --top-k/--top-p/--min-p) for llama.cpp-like sampling. */
#include "cli.h"
#include "engine.h"
#include "sampler.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void run_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd run -m MODEL.gguf -p PROMPT [-n N] [options]\n"
            "  -n N                 tokens to generate (default 128); stops early at end-of-generation tokens\n"
            "  --temp T             temperature (default 0: greedy, deterministic)\n"
            "  --top-k K            (default 0: off)      --top-p P  (default 1: off)\n"
            "  --min-p M            (default 0: off)      --seed S   (default 0)\n"
            "  --repeat-penalty R   (default 1: off)      --repeat-last-n N (default 64)\n"
            "  --presence-penalty X --frequency-penalty X (default 0: off)\n"
            "  -t THREADS           (default: online CPUs)  --ctx N  context size (default: the model's)\n"
            "  --batch N            max tokens per forward step (default 512)\n"
            "  --no-special         do not parse special-token text in the prompt\n"
            "prints the generated text to stdout as it is produced; speed figures to stderr\n");
}

static double run_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run_parse_num(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "qkvd run: %s expects a number in [%g, %g], got '%s'\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_run(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL;
    double n_gen = 128, threads = 0, ctx = 0, batch = 512, v;
    int parse_special = 1;
    sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = 0;
    sp.penalty_last_n = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        int rc = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { run_usage(stdout); return 0; }
        if (!strcmp(a, "--no-special")) { parse_special = 0; continue; }
        if (!val) {
            fprintf(stderr, "qkvd run: unknown or incomplete option '%s'\n", a);
            run_usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = val;
        else if (!strcmp(a, "-n")) rc = run_parse_num(a, val, 0, 1e9, &n_gen);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) rc = run_parse_num(a, val, 0, 1024, &threads);
        else if (!strcmp(a, "--ctx") || !strcmp(a, "-c")) rc = run_parse_num(a, val, 0, 1 << 30, &ctx);
        else if (!strcmp(a, "--batch") || !strcmp(a, "-b")) rc = run_parse_num(a, val, 1, 65536, &batch);
        else if (!strcmp(a, "--temp")) { rc = run_parse_num(a, val, 0, 100, &v); sp.temperature = (float)v; }
        else if (!strcmp(a, "--top-k")) { rc = run_parse_num(a, val, 0, 1e9, &v); sp.top_k = (int32_t)v; }
        else if (!strcmp(a, "--top-p")) { rc = run_parse_num(a, val, 0, 1, &v); sp.top_p = (float)v; }
        else if (!strcmp(a, "--min-p")) { rc = run_parse_num(a, val, 0, 1, &v); sp.min_p = (float)v; }
        else if (!strcmp(a, "--repeat-penalty")) { rc = run_parse_num(a, val, 0, 100, &v); sp.repetition_penalty = (float)v; }
        else if (!strcmp(a, "--repeat-last-n")) { rc = run_parse_num(a, val, -1, 1e9, &v); sp.penalty_last_n = (int32_t)v; }
        else if (!strcmp(a, "--presence-penalty")) { rc = run_parse_num(a, val, -2, 2, &v); sp.presence_penalty = (float)v; }
        else if (!strcmp(a, "--frequency-penalty")) { rc = run_parse_num(a, val, -2, 2, &v); sp.frequency_penalty = (float)v; }
        else if (!strcmp(a, "--seed") || !strcmp(a, "-s")) { rc = run_parse_num(a, val, 0, 1.8e19, &v); sp.seed = (uint64_t)v; }
        else {
            fprintf(stderr, "qkvd run: unknown option '%s'\n", a);
            run_usage(stderr);
            return 2;
        }
        if (rc) return 2;
    }
    if (!model || !prompt) {
        fprintf(stderr, "qkvd run: -m MODEL and -p PROMPT are required\n");
        run_usage(stderr);
        return 2;
    }
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = model;
    ep.n_threads = (int32_t)threads;
    ep.n_ctx = (int32_t)ctx;
    ep.max_seqs = 1;
    ep.max_batch_tokens = (int32_t)batch;
    char err[512];
    engine *e = NULL;
    if (engine_load(&ep, &e, err, sizeof err)) {
        fprintf(stderr, "qkvd run: %s\n", err);
        return 1;
    }
    const engine_info *info = engine_get_info(e);
    const tokenizer *tk = engine_tokenizer(e);
    int exit_code = 1;
    int32_t *hist = NULL;
    sampler *smp = NULL;
    size_t plen = strlen(prompt);
    int64_t np = tokenizer_encode(tk, prompt, plen, 1, parse_special, NULL, 0);
    if (np <= 0) {
        fprintf(stderr, "qkvd run: the prompt gives no tokens\n");
        goto out;
    }
    int64_t cap = np + (int64_t)n_gen + 1;
    hist = malloc((size_t)cap * sizeof *hist);
    smp = sampler_create(&sp, info->n_vocab);
    if (!hist || !smp) {
        fprintf(stderr, "qkvd run: out of memory\n");
        goto out;
    }
    tokenizer_encode(tk, prompt, plen, 1, parse_special, hist, np);
    if (np + 1 > info->n_ctx) {
        fprintf(stderr, "qkvd run: the prompt has %lld tokens, the context only %d\n",
                (long long)np, info->n_ctx);
        goto out;
    }
    int32_t seq = engine_seq_create(e);
    double t0 = run_now();
    engine_item it = {0};
    for (int64_t off = 0; off < np;) {
        int32_t n = np - off > ep.max_batch_tokens ? ep.max_batch_tokens : (int32_t)(np - off);
        it = (engine_item){seq, hist + off, n, off + n == np ? ENGINE_OUT_LAST : ENGINE_OUT_NONE, NULL};
        int rc = engine_step(e, &it, 1);
        if (rc) {
            fprintf(stderr, "qkvd run: forward step failed (%s)\n", strerror(-rc));
            goto out;
        }
        off += n;
    }
    double t_prompt = run_now() - t0;
    tok_stream ts;
    tok_stream_init(&ts, tk, 0);
    char buf[256];
    int64_t n_hist = np, n_done = 0;
    t0 = run_now();
    while (n_done < (int64_t)n_gen) {
        sampler_result res;
        int32_t id = sampler_sample(smp, it.logits, hist, n_hist, &res);
        if (id < 0) { /* every logit -inf or NaN (e.g. logit_bias banned all) */
            fprintf(stderr, "\nqkvd run: no token can be sampled (all logits are -inf or NaN)\n");
            goto out;
        }
        if (tokenizer_is_eog(tk, id)) break;
        hist[n_hist++] = id;
        n_done++;
        int64_t w = tok_stream_push(&ts, tk, id, 0, buf, sizeof buf);
        if (w > 0) { fwrite(buf, 1, (size_t)w, stdout); fflush(stdout); }
        if (n_done == (int64_t)n_gen || engine_seq_len(e, seq) + 1 > info->n_ctx) break;
        it = (engine_item){seq, &hist[n_hist - 1], 1, ENGINE_OUT_LAST, NULL};
        int rc = engine_step(e, &it, 1);
        if (rc) {
            fprintf(stderr, "\nqkvd run: forward step failed (%s)\n", strerror(-rc));
            goto out;
        }
    }
    double t_gen = run_now() - t0;
    int64_t w = tok_stream_flush(&ts, buf, sizeof buf);
    if (w > 0) fwrite(buf, 1, (size_t)w, stdout);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "prompt: %lld tokens in %.3f s (%.1f tok/s); generated: %lld tokens in %.3f s (%.1f tok/s); %d threads\n",
            (long long)np, t_prompt, t_prompt > 0 ? np / t_prompt : 0.0, (long long)n_done, t_gen,
            t_gen > 0 ? n_done / t_gen : 0.0, ep.n_threads > 0 ? ep.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN));
    exit_code = 0;
out:
    sampler_free(smp);
    free(hist);
    engine_free(e);
    return exit_code;
}
