/* cli_bench.c -- `qkvd bench`: prompt processing and generation speed, in
 * the manner of llama-bench.
 *
 *   pp: a fixed pseudo-random prompt of -p tokens in steps of --batch tokens
 *       (logits of the last token only);
 *   tg: -n tokens generated one per step (greedy argmax, nothing else).
 * Each is run -r times after a short warm-up; mean +- stddev of tok/s.
 * --json prints exactly
 *   {"model": ..., "threads": T, "pp": {"n": P, "tok_s": X, "std": S},
 *    "tg": {"n": N, "tok_s": Y, "std": S}, ...extra fields}
 * which scripts depend on. */
#include "cli.h"
#include "cli_bench_schema.h"
#include "engine.h"
#include "gguf.h"
#include "vecmath.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Counts a -s list may hold. */
#define BENCH_MAX_SEQ_LIST 4

static void bench_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd bench -m MODEL.gguf [-p 512] [-n 128] [-r 3] [-t THREADS] [--batch 512] [--json]\n"
            "       qkvd bench --membw [-t THREADS] [--json]\n"
            "  -p N      prompt tokens for the pp test (0: skip)\n"
            "  -n N      tokens generated one by one for the tg test (0: skip)\n"
            "  -r REPS   repetitions of each test (default 3), after a warm-up\n"
            "  -s SEQS   sequences decoded together in each tg step (default 1, max 64);\n"
            "            tg tok/s then counts the tokens of all of them. A list (-s 1,16)\n"
            "            runs each count in turn within every repetition and prints each\n"
            "            one's rate against the first's (paired per repetition)\n"
            "  --batch N max tokens per forward step (default 512)\n"
            "  --kv-type T, --kv-block N  KV cache element type (f32, f16, q8_0, q12_0) and block size\n"
            "  --json    one JSON object instead of the table\n"
            "  --schema FILE  instead: -n greedy steps without and with FILE's JSON Schema mask;\n"
            "            compile time, tok/s both ways, mask time per token\n"
            "  --membw   measure the machine's read bandwidth with THREADS threads (no model);\n"
            "            with -m, a short probe runs anyway so tg bandwidth is given as a\n"
            "            fraction of it (--no-membw skips it)\n");
}

static double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Bytes of weights one decoded token reads: every layer matrix plus the
 * output matrix (token_embd only when it doubles as the output). */
static uint64_t bench_weight_bytes_per_token(const char *path) {
    gguf_file *f = NULL;
    char err[256];
    if (gguf_open(path, &f, err, sizeof err)) return 0;
    uint64_t sum = 0;
    int has_output = gguf_find_tensor(f, "output.weight") != NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        int is_embd = t->name.len == 17 && !memcmp(t->name.ptr, "token_embd.weight", 17);
        if (is_embd && has_output) continue;
        sum += t->size;
    }
    gguf_close(f);
    return sum;
}

/* ---- read-bandwidth probe ------------------------------------------------
 * T threads each stream their slice of a buffer far larger than the caches
 * (the way decode streams weights); a barrier starts every pass together,
 * the slowest thread ends it. Best of several passes, in GB/s (1e9 bytes). */
#define BENCH_MEMBW_BYTES ((size_t)512 << 20)
#define BENCH_MEMBW_PASSES 6

typedef struct bench_membw {
    unsigned char *buf;
    size_t slice;
    int32_t n_threads;
    pthread_barrier_t bar;
    double t_start[BENCH_MEMBW_PASSES], t_end[BENCH_MEMBW_PASSES];
    pthread_mutex_t mu;
    pthread_cond_t gate;
    int open, abort; /* under mu: every thread started / one could not start */
    uint64_t sink;
} bench_membw;

typedef struct bench_membw_arg {
    bench_membw *b;
    int32_t index;
} bench_membw_arg;

static void *bench_membw_thread(void *p) {
    bench_membw_arg *a = p;
    bench_membw *b = a->b;
    const unsigned char *mine = b->buf + (size_t)a->index * b->slice;
    uint64_t sink = 0;
    /* Nobody enters the barrier before every thread exists: a failed start
     * must not leave the others waiting in it forever. */
    pthread_mutex_lock(&b->mu);
    while (!b->open && !b->abort) pthread_cond_wait(&b->gate, &b->mu);
    int quit = b->abort;
    pthread_mutex_unlock(&b->mu);
    if (quit) return NULL;
    for (int pass = 0; pass < BENCH_MEMBW_PASSES; pass++) {
        pthread_barrier_wait(&b->bar);
        if (a->index == 0) b->t_start[pass] = bench_now();
        sink ^= vec_read_bytes(mine, b->slice);
        pthread_barrier_wait(&b->bar);
        if (a->index == 0) b->t_end[pass] = bench_now();
    }
    pthread_mutex_lock(&b->mu);
    b->sink ^= sink;
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* GB/s, or < 0 if memory or threads are not available. */
static double bench_membw_probe(int32_t n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    bench_membw b;
    memset(&b, 0, sizeof b);
    b.n_threads = n_threads;
    b.slice = (BENCH_MEMBW_BYTES / (size_t)n_threads) & ~(size_t)127;
    b.buf = aligned_alloc(4096, b.slice * (size_t)n_threads);
    if (!b.buf) return -1;
    /* Touch every page (non-zero, so no shared zero page is read). */
    memset(b.buf, 0x5a, b.slice * (size_t)n_threads);
    pthread_barrier_init(&b.bar, NULL, (unsigned)n_threads);
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.gate, NULL);
    pthread_t th[64];
    bench_membw_arg args[64];
    int32_t started = 0;
    for (int32_t i = 1; i < n_threads; i++) {
        args[i] = (bench_membw_arg){&b, i};
        if (pthread_create(&th[i], NULL, bench_membw_thread, &args[i]) != 0) break;
        started++;
    }
    double best = -1;
    pthread_mutex_lock(&b.mu);
    if (started == n_threads - 1) b.open = 1; else b.abort = 1;
    pthread_cond_broadcast(&b.gate);
    pthread_mutex_unlock(&b.mu);
    if (b.open) {
        args[0] = (bench_membw_arg){&b, 0};
        bench_membw_thread(&args[0]);
        /* Pass 0 warms the TLB and the page tables: not counted. */
        for (int pass = 1; pass < BENCH_MEMBW_PASSES; pass++) {
            double dt = b.t_end[pass] - b.t_start[pass];
            double gbs = dt > 0 ? (double)b.slice * n_threads / dt / 1e9 : -1;
            if (gbs > best) best = gbs;
        }
    }
    for (int32_t i = 1; i <= started; i++) pthread_join(th[i], NULL);
    pthread_cond_destroy(&b.gate);
    pthread_mutex_destroy(&b.mu);
    pthread_barrier_destroy(&b.bar);
    free(b.buf);
    return best;
}

/* Greedy pick: the maximum in a vectorisable pass, then its first index
 * (a one-pass compare-and-track loop cost ~2% of a 135m decode step). */
static int32_t bench_argmax(const float *x, int32_t n) {
    float m[8] = {x[0], x[0], x[0], x[0], x[0], x[0], x[0], x[0]};
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    float mx = m[0];
    for (int k = 1; k < 8; k++) mx = m[k] > mx ? m[k] : mx;
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (i = 0; i < n; i++)
        if (x[i] == mx) return i;
    return 0;
}

/* One pp run over toks[0..n); seconds, or < 0 on error. */
static double bench_pp(engine *e, const int32_t *toks, int32_t n, int32_t batch) {
    int32_t seq = engine_seq_create(e);
    if (seq < 0) return -1;
    double t0 = bench_now();
    for (int32_t off = 0; off < n;) {
        int32_t c = n - off > batch ? batch : n - off;
        engine_item it = {seq, toks + off, c, off + c == n ? ENGINE_OUT_LAST : ENGINE_OUT_NONE, NULL};
        if (engine_step(e, &it, 1)) { engine_seq_free(e, seq); return -1; }
        off += c;
    }
    double dt = bench_now() - t0;
    engine_seq_free(e, seq);
    return dt;
}

/* n decode steps of n_seqs sequences at once (one token each per step);
 * seconds, or < 0 on error. */
static double bench_tg(engine *e, int32_t first, int32_t n, int32_t n_seqs, int32_t V) {
    int32_t seq[64], tok[64];
    engine_item it[64];
    for (int32_t s = 0; s < n_seqs; s++) {
        seq[s] = engine_seq_create(e);
        if (seq[s] < 0) {
            for (int32_t k = 0; k < s; k++) engine_seq_free(e, seq[k]);
            return -1;
        }
        tok[s] = (first + s) % V;
    }
    double t0 = bench_now(), dt = -1;
    for (int32_t i = 0; i < n; i++) {
        for (int32_t s = 0; s < n_seqs; s++)
            it[s] = (engine_item){seq[s], &tok[s], 1, ENGINE_OUT_LAST, NULL};
        if (engine_step(e, it, n_seqs)) goto out;
        for (int32_t s = 0; s < n_seqs; s++) tok[s] = bench_argmax(it[s].logits, V);
    }
    dt = bench_now() - t0;
out:
    for (int32_t s = 0; s < n_seqs; s++) engine_seq_free(e, seq[s]);
    return dt;
}

/* Mean, sample standard deviation and the best (largest) of n rates. On a
 * shared machine the mean carries the other tenants' load; the best
 * repetition is the closest to what the machine does alone. */
static void bench_stats(const double *tps, int n, double *mean, double *sd, double *best) {
    double s = 0, q = 0;
    *best = 0;
    for (int i = 0; i < n; i++) {
        s += tps[i];
        if (tps[i] > *best) *best = tps[i];
    }
    *mean = n ? s / n : 0;
    for (int i = 0; i < n; i++) q += (tps[i] - *mean) * (tps[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}

static int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The other counts of a -s list against the first: tg rate of each
 * (tps[k * reps + r]), ratio of the means, of the bests, and the median
 * and lowest of the per-repetition ratios (runs next to each other in
 * time). JSON: a "tg_seqs_compare" member for the object being printed. */
static void bench_seq_compare(const double *tps, int reps, const long *list, int n, int json) {
    double m0, s0, b0;
    bench_stats(tps, reps, &m0, &s0, &b0);
    if (json) printf(", \"tg_seqs_compare\": [");
    for (int k = 1; k < n; k++) {
        double m, sd, b, ratio[100];
        const double *t = tps + (size_t)k * reps;
        bench_stats(t, reps, &m, &sd, &b);
        for (int r = 0; r < reps; r++) ratio[r] = tps[r] > 0 ? t[r] / tps[r] : 0;
        qsort(ratio, (size_t)reps, sizeof ratio[0], bench_cmp_double);
        double med = reps % 2 ? ratio[reps / 2] : 0.5 * (ratio[reps / 2 - 1] + ratio[reps / 2]);
        if (json)
            printf("%s{\"seqs\": %ld, \"vs_seqs\": %ld, \"tok_s\": %.2f, \"std\": %.2f, \"best\": %.2f, "
                   "\"ratio_mean\": %.3f, \"ratio_best\": %.3f, \"ratio_paired_median\": %.3f, \"ratio_paired_min\": %.3f}",
                   k > 1 ? ", " : "", list[k], list[0], m, sd, b, m0 > 0 ? m / m0 : 0, b0 > 0 ? b / b0 : 0, med, ratio[0]);
        else
            printf("tg %ld seqs %8.2f +- %.2f (best %.2f) vs %ld: %.2fx (means), %.2fx (bests), "
                   "per repetition median %.2fx, lowest %.2fx\n",
                   list[k], m, sd, b, list[0], m0 > 0 ? m / m0 : 0, b0 > 0 ? b / b0 : 0, med, ratio[0]);
    }
    if (json) printf("]");
}

int cli_bench(int argc, char **argv) {
    const char *model = NULL, *schema = NULL;
    long pp = 512, tg = 128, reps = 3, threads = 0, batch = 512, seqs = 1, kv_block = 16;
    long seq_list[BENCH_MAX_SEQ_LIST] = {1};
    int n_seq_list = 1;
    int kv_type = ENGINE_KV_F32;
    int json = 0, membw_only = 0, membw_skip = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { bench_usage(stdout); return 0; }
        if (!strcmp(a, "--json")) { json = 1; continue; }
        if (!strcmp(a, "--membw")) { membw_only = 1; continue; }
        if (!strcmp(a, "--no-membw")) { membw_skip = 1; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "qkvd bench: unknown or incomplete option '%s'\n", a);
            bench_usage(stderr);
            return 2;
        }
        const char *val = argv[++i];
        char *end = NULL;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = val;
        else if (!strcmp(a, "--schema")) schema = val;
        else if (!strcmp(a, "-p")) pp = strtol(val, &end, 10);
        else if (!strcmp(a, "-n")) tg = strtol(val, &end, 10);
        else if (!strcmp(a, "-r")) reps = strtol(val, &end, 10);
        else if (!strcmp(a, "-s") || !strcmp(a, "--seqs")) {
            n_seq_list = 0;
            const char *q = val;
            for (;;) {
                if (n_seq_list == BENCH_MAX_SEQ_LIST) {
                    fprintf(stderr, "qkvd bench: -s takes at most %d counts\n", BENCH_MAX_SEQ_LIST);
                    return 2;
                }
                seq_list[n_seq_list++] = strtol(q, &end, 10);
                if (end == q || (*end && *end != ',')) break;
                if (!*end) break;
                q = end + 1;
            }
            seqs = 0;
            for (int k = 0; k < n_seq_list; k++)
                if (seq_list[k] < 1 || seq_list[k] > 64) seqs = -1;
                else if (seqs >= 0 && seq_list[k] > seqs) seqs = seq_list[k];
            val = q; /* the integer check below looks at the last count */
        }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) threads = strtol(val, &end, 10);
        else if (!strcmp(a, "--batch") || !strcmp(a, "-b")) batch = strtol(val, &end, 10);
        else if (!strcmp(a, "--kv-block")) kv_block = strtol(val, &end, 10);
        else if (!strcmp(a, "--kv-type")) {
            kv_type = engine_kv_type_from_name(val);
            if (kv_type < 0) {
                fprintf(stderr, "qkvd bench: --kv-type must be f32, f16, q8_0 or q12_0, got '%s'\n", val);
                return 2;
            }
        }
        else {
            fprintf(stderr, "qkvd bench: unknown option '%s'\n", a);
            bench_usage(stderr);
            return 2;
        }
        if (end && (*end || end == val)) {
            fprintf(stderr, "qkvd bench: %s expects an integer, got '%s'\n", a, val);
            return 2;
        }
    }
    if (membw_only && !model) {
        int32_t nt = (int32_t)threads;
        if (nt <= 0) {
            long c = sysconf(_SC_NPROCESSORS_ONLN);
            nt = c > 0 ? (int32_t)c : 1;
        }
        if (nt > 64) nt = 64;
        double gbs = bench_membw_probe(nt);
        if (gbs < 0) {
            fprintf(stderr, "qkvd bench: --membw could not allocate its buffer or start threads\n");
            return 1;
        }
        if (json) printf("{\"threads\": %d, \"membw_gb_s\": %.2f, \"bytes\": %zu}\n", nt, gbs, BENCH_MEMBW_BYTES);
        else printf("read bandwidth: %.2f GB/s (%d threads, %zu MiB buffer, best of %d passes)\n", gbs, nt,
                    BENCH_MEMBW_BYTES >> 20, BENCH_MEMBW_PASSES - 1);
        return 0;
    }
    if (!model) {
        fprintf(stderr, "qkvd bench: -m MODEL is required\n");
        bench_usage(stderr);
        return 2;
    }
    if (pp < 0 || tg < 0 || pp > 1 << 20 || tg > 1 << 20 || reps < 1 || reps > 100 || batch < 1 ||
        batch > 65536 || threads < 0 || threads > 1024 || seqs < 1 || seqs > 64 || seqs > batch) {
        fprintf(stderr, "qkvd bench: bad -p/-n/-r/-s/--batch/-t value\n");
        return 2;
    }
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = model;
    ep.n_threads = (int32_t)threads;
    ep.n_ctx = (int32_t)(pp > tg ? pp : tg) + 8;
    ep.max_seqs = (int32_t)seqs + 1;
    ep.max_batch_tokens = (int32_t)batch;
    ep.kv_type = kv_type;
    if (kv_block < 1 || kv_block > 256) {
        fprintf(stderr, "qkvd bench: --kv-block must be 1..256, got %ld\n", kv_block);
        return 2;
    }
    ep.kv_block_tokens = (int32_t)kv_block;
    char err[512];
    engine *e = NULL;
    if (engine_load(&ep, &e, err, sizeof err)) {
        fprintf(stderr, "qkvd bench: %s\n", err);
        return 1;
    }
    const engine_info *info = engine_get_info(e);
    int32_t V = info->n_vocab;
    int32_t n_threads = ep.n_threads;
    if (n_threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = c > 0 ? (int32_t)c : 1;
    }
    int32_t *toks = malloc((size_t)(pp > 0 ? pp : 1) * sizeof *toks);
    double *pp_tps = calloc((size_t)reps, sizeof(double));
    double *tg_tps = calloc((size_t)reps * BENCH_MAX_SEQ_LIST, sizeof(double));
    if (!toks || !pp_tps || !tg_tps) {
        fprintf(stderr, "qkvd bench: out of memory\n");
        engine_free(e);
        return 1;
    }
    /* Fixed pseudo-random prompt: speed does not depend on the ids. */
    uint32_t s = 12345;
    for (long i = 0; i < pp; i++) {
        s = s * 1664525u + 1013904223u;
        toks[i] = (int32_t)((s >> 8) % (uint32_t)V);
    }
    int32_t first = tokenizer_bos(engine_tokenizer(e));
    if (first < 0 || first >= V) first = 0;
    int rc = 0;
    if (schema) {
        const char *sb = strrchr(model, '/');
        rc = bench_schema_run(e, sb ? sb + 1 : model, schema, (int32_t)tg, (int32_t)reps, json);
        goto out;
    }
    /* Warm-up: fault the mapping in and settle the pool. */
    if (pp > 0 && bench_pp(e, toks, pp < 32 ? (int32_t)pp : 32, (int32_t)batch) < 0) rc = 1;
    for (int k = 0; !rc && tg > 0 && k < n_seq_list; k++)
        if (bench_tg(e, first, tg < 8 ? (int32_t)tg : 8, (int32_t)seq_list[k], V) < 0) rc = 1;
    for (long r = 0; !rc && r < reps; r++) {
        if (pp > 0) {
            double dt = bench_pp(e, toks, (int32_t)pp, (int32_t)batch);
            if (dt <= 0) rc = 1; else pp_tps[r] = pp / dt;
        }
        /* Each count of a -s list in turn: neighbours in time see the same
         * machine, so their ratio is steadier than one of separate runs. */
        for (int k = 0; !rc && tg > 0 && k < n_seq_list; k++) {
            double dt = bench_tg(e, first, (int32_t)tg, (int32_t)seq_list[k], V);
            if (dt <= 0) rc = 1; else tg_tps[k * reps + r] = (double)tg * seq_list[k] / dt;
        }
    }
    if (rc) {
        fprintf(stderr, "qkvd bench: a forward step failed\n");
        goto out;
    }
    double pp_m, pp_s, pp_b, tg_m, tg_s, tg_b;
    bench_stats(pp_tps, (int)reps, &pp_m, &pp_s, &pp_b);
    bench_stats(tg_tps, (int)reps, &tg_m, &tg_s, &tg_b);
    seqs = seq_list[0];
    uint64_t wbt = bench_weight_bytes_per_token(model);
    double gbs = tg_m / (double)seqs * (double)wbt / 1e9; /* one weight pass per step */
    /* The probe runs after the tests, so it does not warm or evict anything
     * they use. */
    double membw = tg > 0 && !membw_skip ? bench_membw_probe(n_threads > 64 ? 64 : n_threads) : -1;
    double frac = membw > 0 ? gbs / membw : 0;
    const char *base = strrchr(model, '/');
    base = base ? base + 1 : model;
    if (json) {
        printf("{\"model\": \"");
        for (const char *p = base; *p; p++) {
            if (*p == '"' || *p == '\\') printf("\\%c", *p);
            else if ((unsigned char)*p < 0x20) printf("\\u%04x", *p);
            else putchar(*p);
        }
        printf("\", \"threads\": %d, \"pp\": {\"n\": %ld, \"tok_s\": %.2f, \"std\": %.2f, \"best\": %.2f}, "
               "\"tg\": {\"n\": %ld, \"tok_s\": %.2f, \"std\": %.2f, \"best\": %.2f}, \"weight_type\": \"%s\", "
               "\"weight_bytes_per_token\": %llu, \"tg_gb_s\": %.2f, \"reps\": %ld, \"batch\": %ld, "
               "\"tg_seqs\": %ld, \"kernels\": \"%s\", \"membw_gb_s\": %.2f, \"tg_bw_frac\": %.3f, "
               "\"tg_ms_per_step\": %.3f",
               n_threads, pp, pp_m, pp_s, pp_b, tg, tg_m, tg_s, tg_b, info->weight_type,
               (unsigned long long)wbt, gbs, reps, batch, seqs, quant_kernel_name(),
               membw > 0 ? membw : 0, frac, tg_m > 0 ? 1000.0 * (double)seqs / tg_m : 0);
        if (n_seq_list > 1) bench_seq_compare(tg_tps, (int)reps, seq_list, n_seq_list, 1);
        printf("}\n");
    } else {
        printf("model: %s (%s, %s, %.1f M params), %d threads, kernels %s\n", base, info->arch,
               info->weight_type, info->n_params / 1e6, n_threads, quant_kernel_name());
        printf("%-8s %10s %14s\n", "test", "tokens", "tok/s");
        if (pp > 0) printf("%-8s %10ld %8.2f +- %.2f (best %.2f)\n", "pp", pp, pp_m, pp_s, pp_b);
        if (tg > 0) printf("%-8s %10ld %8.2f +- %.2f (best %.2f)%s\n", "tg", tg, tg_m, tg_s, tg_b,
                           seqs > 1 ? " (all sequences)" : "");
        if (tg > 0)
            printf("tg reads %.1f MB of weights per step (%ld sequence%s): %.2f GB/s\n", wbt / 1e6,
                   seqs, seqs > 1 ? "s" : "", gbs);
        if (membw > 0)
            printf("read bandwidth probe (%d threads): %.2f GB/s; tg reaches %.0f%% of it\n", n_threads,
                   membw, 100 * frac);
        if (n_seq_list > 1) bench_seq_compare(tg_tps, (int)reps, seq_list, n_seq_list, 0);
    }
out:
    free(toks);
    free(pp_tps);
    free(tg_tps);
    engine_free(e);
    return rc;
}
