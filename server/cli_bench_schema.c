/* cli_bench_schema.c -- `qkvd bench --schema FILE`: what constraining
 * decoding to a JSON Schema costs.
 *
 * Measures, on the loaded model: schema compile time (median of several
 * uncached compiles), then -r repetitions of -n greedy decode steps, each
 * repetition once without and once with the schema's mask. With the
 * schema, every step applies the mask to the logits, takes the argmax and
 * advances the matcher; a finished document (end token chosen, or nothing
 * more allowed) restarts the matcher, so long runs keep measuring. The
 * grammar's mask tables are built on first use, as in the server: the
 * first repetition pays those first visits (a new schema's first request),
 * later ones reuse them (a schema already in the server's grammar cache).
 * Both are reported, and the mean over all repetitions. */
#include "cli_bench_schema.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "grammar/grammar.h"
#include "tokenizer.h"

static double bs_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int32_t bs_argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

static int bs_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* n greedy steps on a fresh sequence; m NULL: unconstrained. Returns the
 * seconds of the whole loop, *mask_s the part spent in mask + advance, and
 * *docs the documents completed. < 0 on error. */
static double bs_run(engine *e, grammar_matcher *m, const tokenizer *t, int32_t n, float *row, double *mask_s,
                     double *per_tok, int32_t *docs) {
    const engine_info *info = engine_get_info(e);
    int32_t V = info->n_vocab, seq = engine_seq_create(e);
    if (seq < 0) return -1;
    int32_t tok = tokenizer_bos(t) >= 0 ? tokenizer_bos(t) : 0;
    *mask_s = 0;
    *docs = 0;
    if (m) grammar_matcher_reset(m);
    double t0 = bs_now(), dt = -1;
    for (int32_t i = 0; i < n; i++) {
        engine_item it = {seq, &tok, 1, ENGINE_OUT_LAST, NULL};
        if (engine_step(e, &it, 1)) goto out;
        if (!m) {
            tok = bs_argmax(it.logits, V);
            continue;
        }
        memcpy(row, it.logits, (size_t)V * sizeof(float));
        double a = bs_now();
        int32_t allowed = grammar_matcher_apply(m, row);
        double spent = bs_now() - a;
        tok = allowed > 0 ? bs_argmax(row, V) : 0;
        a = bs_now();
        int end = allowed <= 0 || tokenizer_is_eog(t, tok) || grammar_matcher_accept_token(m, tok) < 0 ||
                  grammar_matcher_is_terminated(m);
        spent += bs_now() - a;
        *mask_s += spent;
        if (per_tok) per_tok[i] = spent;
        if (end) {
            (*docs)++;
            grammar_matcher_reset(m);
        }
    }
    dt = bs_now() - t0;
out:
    engine_seq_free(e, seq);
    return dt;
}

static char *bs_read(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    while (s) {
        size_t got = fread(s + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            char *q = realloc(s, cap * 2);
            if (!q) { free(s); s = NULL; break; }
            s = q;
            cap *= 2;
        }
    }
    fclose(f);
    *len = n;
    return s;
}

int bench_schema_run(engine *e, const char *model_name, const char *schema_path, int32_t n, int32_t reps, int json) {
    size_t len = 0;
    char *src = bs_read(schema_path, &len);
    if (!src) {
        fprintf(stderr, "qkvd bench: cannot read %s\n", schema_path);
        return 2;
    }
    char err[512];
    enum { N_COMPILE = 7 };
    double ct[N_COMPILE];
    grammar *g = NULL;
    const tokenizer *t = engine_tokenizer(e);
    int32_t V = engine_get_info(e)->n_vocab;
    double va = bs_now();
    grammar_vocab *v = grammar_vocab_create(t);
    double vocab_s = bs_now() - va;
    if (!v) {
        fprintf(stderr, "qkvd bench: out of memory\n");
        free(src);
        return 1;
    }
    for (int k = 0; k < N_COMPILE; k++) {
        grammar_release(g);
        g = NULL;
        double a = bs_now();
        if (grammar_compile_schema(src, len, NULL, &g, err, sizeof err) < 0) {
            fprintf(stderr, "qkvd bench: %s: %s\n", schema_path, err);
            free(src);
            grammar_vocab_free(v);
            return 2;
        }
        ct[k] = bs_now() - a;
    }
    /* What building every position's table up front (grammar_precompute)
     * would add to the compile, on a separate copy: the server does not do
     * it (tables are built on first use), so the decode runs below don't
     * either, and their first visits are in the figures. */
    double pre_s = -1;
    grammar *gp = NULL;
    if (grammar_compile_schema(src, len, NULL, &gp, err, sizeof err) == 0) {
        double a = bs_now();
        if (grammar_precompute(gp, v) == 0) pre_s = bs_now() - a;
        grammar_release(gp);
    }
    free(src);
    qsort(ct, N_COMPILE, sizeof ct[0], bs_cmp);
    int rc = 0;
    /* As the server does when a grammar is first used: the per-position
     * tables within GRAMMAR_TABLES_BUDGET_MS (part of the compile cost). */
    double tab_s = 0;
    int tab_rc = 0;
    if (v) {
        double a = bs_now();
        tab_rc = grammar_precompute_budget(g, v, GRAMMAR_TABLES_BUDGET_MS);
        tab_s = bs_now() - a;
    }
    grammar_matcher *m = v ? grammar_matcher_create(g, v, &rc) : NULL;
    float *row = malloc((size_t)V * sizeof(float));
    double *off = calloc((size_t)reps, sizeof(double)), *on = calloc((size_t)reps, sizeof(double));
    double *msk = calloc((size_t)reps, sizeof(double));
    double *per = calloc((size_t)reps * (size_t)n, sizeof(double));
    int32_t docs = 0, d;
    rc = 0;
    if (!m || !row || !off || !on || !msk || !per) {
        fprintf(stderr, "qkvd bench: out of memory (or grammar error %d)\n", rc);
        rc = 1;
        goto done;
    }
    double ms;
    if (bs_run(e, NULL, t, n < 8 ? n : 8, row, &ms, NULL, &d) < 0) rc = 1; /* warm-up */
    for (int32_t r = 0; !rc && r < reps; r++) {
        double a = bs_run(e, NULL, t, n, row, &ms, NULL, &d);
        double b = bs_run(e, m, t, n, row, &msk[r], per + (size_t)r * n, &d);
        if (a <= 0 || b <= 0) { rc = 1; break; }
        off[r] = a;
        on[r] = b;
        docs += d;
    }
    if (rc) {
        fprintf(stderr, "qkvd bench: a forward step failed\n");
        goto done;
    }
    /* Warm figures: repetitions after the first (all of them when only one). */
    int32_t w0 = reps > 1 ? 1 : 0, nw = reps - w0;
    double off_s = 0, on_s = 0, msk_s = 0;
    for (int32_t r = w0; r < reps; r++) { off_s += off[r]; on_s += on[r]; msk_s += msk[r]; }
    double tps_off = (double)n * nw / off_s, tps_on = (double)n * nw / on_s;
    double overhead = (on_s - off_s) / off_s * 100.0;
    double mask_us = msk_s / ((double)n * nw) * 1e6, cold_us = msk[0] / (double)n * 1e6;
    double mask_share = msk_s / on_s * 100.0;
    /* every step of every repetition, the first included: what requests pay */
    double all_s = 0;
    for (int32_t r = 0; r < reps; r++) all_s += msk[r];
    double all_us = all_s / ((double)n * reps) * 1e6;
    qsort(per + (size_t)w0 * n, (size_t)nw * n, sizeof(double), bs_cmp);
    double med_us = per[(size_t)w0 * n + (size_t)nw * n / 2] * 1e6, p99_us = per[(size_t)w0 * n + (size_t)nw * n * 99 / 100] * 1e6;
    if (json) {
        printf("{\"model\": \"%s\", \"schema\": \"%s\", \"n_vocab\": %d, \"n\": %d, \"reps\": %d, "
               "\"compile_ms\": %.3f, \"tables_ms\": %.3f, \"tables_complete\": %s, "
               "\"precompute_all_ms\": %.3f, \"vocab_trie_ms\": %.2f, "
               "\"tg_tok_s\": %.2f, \"tg_schema_tok_s\": %.2f, "
               "\"overhead_pct\": %.2f, \"mask_us_per_token\": %.2f, \"mask_share_pct\": %.2f, "
               "\"mask_median_us\": %.2f, \"mask_p99_us\": %.2f, \"mask_cold_us_per_token\": %.2f, "
               "\"mask_all_us_per_token\": %.2f, \"documents\": %d}\n",
               model_name, schema_path, V, n, reps, ct[N_COMPILE / 2] * 1e3, tab_s * 1e3,
               tab_rc == 0 ? "true" : "false", pre_s * 1e3, vocab_s * 1e3,
               tps_off, tps_on, overhead, mask_us, mask_share, med_us, p99_us, cold_us, all_us, docs);
    } else {
        printf("model: %s (vocab %d), schema %s\n", model_name, V, schema_path);
        printf("compile: %.3f ms (median of %d) + mask tables %.1f ms (%s, budget %.0f ms, as the server does on "
               "first use); vocabulary trie: %.1f ms (once per model); all tables on a fresh copy: %.1f ms\n",
               ct[N_COMPILE / 2] * 1e3, N_COMPILE, tab_s * 1e3, tab_rc == 0 ? "all built" : "budget reached",
               GRAMMAR_TABLES_BUDGET_MS, vocab_s * 1e3, pre_s * 1e3);
        printf("tg %d tokens x %d: %.2f tok/s without, %.2f tok/s with the schema (%+.2f%% time)\n", n, nw, tps_off,
               tps_on, overhead);
        printf("mask + advance: %.2f us/token over all runs; %.2f us/token after the first (%.2f%% of decode time; "
               "median %.2f, p99 %.2f us), %.2f us/token in the first run; %d documents completed\n", all_us, mask_us,
               mask_share, med_us, p99_us, cold_us, docs);
    }
done:
    free(row);
    free(off);
    free(on);
    free(msk);
    free(per);
    grammar_matcher_free(m);
    grammar_vocab_free(v);
    grammar_release(g);
    return rc;
}
