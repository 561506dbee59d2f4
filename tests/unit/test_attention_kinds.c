/* test_attention_kinds.c -- every attention kind against a direct O(n^2)
 * reference in double on small random inputs; the equalities between kinds
 * (window / rerope / leaky-rerope == softmax when the window covers the
 * sequence, logn == softmax up to the trained length); linear attention's
 * recurrent form == its chunked-parallel form == the formula; and through
 * the engine on stories260K (skipped when absent): kinds agree with softmax
 * where they should, prefill == decode, mixed-kind batches == alone, and
 * linear holds no KV. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "attention_kinds.h"
#include "engine.h"
#include "gguf.h"
#include "linear_attention.h"
#include <unistd.h>

enum { NL = 2, NH = 4, NKV = 2, HD = 16, NROT = 16, N = 40, LTRAIN = 16, QD = NH * HD, KD = NKV * HD };
static const double BASE = 10000.0;

static float Q[N][QD], K[N][KD], V[N][KD];

static uint64_t rng = 88172645463325252ull;
static float frand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* Base of the rotations below (dynamic-ntk raises it per query). */
static double rot_base = 10000.0;

/* x (one head, adjacent pairs) rotated by position pos, in double. */
static void rot_d(double *out, const float *x, double pos) {
    for (int d = 0; d < HD; d++) out[d] = x[d];
    for (int m = 0; m < NROT / 2; m++) {
        double a = pos * pow(rot_base, -2.0 * m / NROT), c = cos(a), s = sin(a);
        double x0 = x[2 * m], x1 = x[2 * m + 1];
        out[2 * m] = x0 * c - x1 * s;
        out[2 * m + 1] = x0 * s + x1 * c;
    }
}

/* Direct reference: output of query i, head h, layer `layer` under p. */
static void reference(const attn_params *p, int layer, int i, int h, double *out) {
    int kvh = h / (NH / NKV);
    double sc[N], qr[HD], kr[HD];
    double scale = 1.0 / sqrt((double)HD);
    if (p->logn || p->kind == ATTN_LOGN) {
        double f = log(i + 1.0) / log((double)LTRAIN);
        if (f > 1) scale *= f;
    }
    int windowed = p->kind == ATTN_WINDOW || (p->kind == ATTN_HWFA && layer < NL - 1);
    int dyn = p->rope_set && p->rope.type == ROPE_SCALING_DYNAMIC_NTK;
    int rr = p->kind == ATTN_REROPE || p->kind == ATTN_LEAKY_REROPE || dyn;
    rot_base = BASE;
    if (dyn && i + 1 > LTRAIN) rot_base = BASE * pow((i + 1.0) / LTRAIN, (double)NROT / (NROT - 2));
    double mx = -INFINITY;
    for (int j = 0; j <= i; j++) {
        sc[j] = -INFINITY;
        if (windowed && !(j < p->sinks || i - j < p->window)) continue;
        int r = i - j;
        double dot = 0;
        if (rr) {
            double rho = dyn || r < p->window ? r
                         : p->kind == ATTN_REROPE ? p->window
                                                  : p->window + (double)(r - p->window) / p->leak;
            rot_d(qr, &Q[i][h * HD], rho);
            for (int d = 0; d < HD; d++) dot += qr[d] * K[j][kvh * HD + d];
        } else {
            /* Window sinks sit at their cache position: the query at
             * S + W - 1 once the window has moved past them. */
            int sink_shift = windowed && j < p->sinks && i > p->sinks + p->window - 1;
            rot_d(qr, &Q[i][h * HD], sink_shift ? p->sinks + p->window - 1 : i);
            rot_d(kr, &K[j][kvh * HD], j);
            for (int d = 0; d < HD; d++) dot += qr[d] * kr[d];
        }
        sc[j] = dot * scale;
        if (sc[j] > mx) mx = sc[j];
    }
    double sum = 0;
    for (int j = 0; j <= i; j++) { sc[j] = isinf(sc[j]) ? 0 : exp(sc[j] - mx); sum += sc[j]; }
    for (int d = 0; d < HD; d++) out[d] = 0;
    for (int j = 0; j <= i; j++)
        for (int d = 0; d < HD; d++) out[d] += sc[j] / sum * V[j][kvh * HD + d];
}

/* Run the kernels over the whole sequence (as prefill chunks of 32 and as
 * decode rows) on a cache of element type `type` and return the largest
 * difference to the reference. */
static double run_kind_type(const attn_params *p, enum kv_type type) {
    int rr = p->kind == ATTN_REROPE || p->kind == ATTN_LEAKY_REROPE ||
             (p->rope_set && p->rope.type == ROPE_SCALING_DYNAMIC_NTK);
    rot_base = BASE;
    kv_cache_params kp;
    kv_cache_params_default(&kp, NL, KD, N, 1);
    kp.type = type;
    kp.head_dim = HD;
    kv_cache *kv = kv_cache_create_params(&kp, NULL, 0);
    assert_non_null(kv);
    int32_t seq = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_reserve(kv, seq, N), 0);
    static float q_in[N][QD];
    for (int l = 0; l < NL; l++)
        for (int j = 0; j < N; j++) {
            float krow[KD];
            for (int h = 0; h < NKV; h++) {
                double kr[HD];
                rot_d(kr, &K[j][h * HD], rr ? 0 : j);
                for (int d = 0; d < HD; d++) krow[h * HD + d] = (float)kr[d];
            }
            kv_cache_store(kv, seq, l, j, krow, V[j]);
        }
    for (int i = 0; i < N; i++)
        for (int h = 0; h < NH; h++) {
            double qr[HD];
            rot_d(qr, &Q[i][h * HD], rr ? 0 : i);
            for (int d = 0; d < HD; d++) q_in[i][h * HD + d] = (float)qr[d];
        }
    kv_cache_seq_set_len(kv, seq, N);
    attn_shape sh = {NH, NKV, HD, 1.0f / sqrtf((float)HD)};
    attn_model_info mi = {.n_layer = NL, .n_ctx_train = LTRAIN, .n_rot = NROT, .neox = 0,
                          .rope_base = (float)BASE, .freq_div = NULL};
    rope_params_default(&mi.rope);
    size_t sf = attention_kind_scratch_floats(ATTN_Q_CHUNK, N, HD);
    float *scratch = malloc(sf * sizeof(float));
    static float out[N][QD];
    double worst = 0, ref[HD];
    for (int mode = 0; mode < 2; mode++) {
        for (int l = 0; l < NL; l++) {
            memset(out, 0, sizeof out);
            for (int h = 0; h < NH; h++) {
                int step = mode == 0 ? ATTN_Q_CHUNK : 1;
                for (int i0 = 0; i0 < N; i0 += step) {
                    int n = N - i0 < step ? N - i0 : step;
                    attention_kind_rows(kv, seq, l, &sh, &mi, p, h, &q_in[i0][h * HD], QD, n, i0,
                                        &out[i0][h * HD], QD, scratch);
                }
            }
            for (int i = 0; i < N; i++)
                for (int h = 0; h < NH; h++) {
                    reference(p, l, i, h, ref);
                    for (int d = 0; d < HD; d++) {
                        double e = fabs(out[i][h * HD + d] - ref[d]);
                        if (e > worst) worst = e;
                    }
                }
        }
    }
    free(scratch);
    kv_cache_free(kv);
    return worst;
}

static double run_kind(const attn_params *p) { return run_kind_type(p, KV_F32); }

static attn_params kind(enum attn_kind k, int32_t w, int32_t s, float leak) {
    attn_params p;
    attn_params_default(&p);
    p.kind = k;
    p.window = w;
    p.sinks = s;
    p.leak = leak;
    if (k == ATTN_LOGN) p.logn = 1;
    return p;
}

static int setup(void **state) {
    (void)state;
    for (int i = 0; i < N; i++) {
        for (int d = 0; d < QD; d++) Q[i][d] = 2.0f * frand();
        for (int d = 0; d < KD; d++) { K[i][d] = 2.0f * frand(); V[i][d] = frand(); }
    }
    return 0;
}

#define TOL 2e-5

static void test_softmax_reference(void **state) {
    (void)state;
    attn_params p = kind(ATTN_SOFTMAX, 8, 0, 16);
    double e = run_kind(&p);
    printf("softmax vs reference: %.2e\n", e);
    assert_true(e < TOL);
}

static void test_window(void **state) {
    (void)state;
    /* Covering window == softmax (the reference of softmax is the same
     * computation with every key, so compare against it directly too). */
    attn_params full = kind(ATTN_WINDOW, N, 0, 16), soft = kind(ATTN_SOFTMAX, 1, 0, 16);
    assert_true(run_kind(&full) < TOL);
    attn_params p = kind(ATTN_WINDOW, 5, 2, 16);
    double e = run_kind(&p);
    printf("window 5 + 2 sinks vs reference: %.2e\n", e);
    assert_true(e < TOL);
    p = kind(ATTN_WINDOW, 7, 0, 16);
    assert_true(run_kind(&p) < TOL);
    (void)soft;
}

static void test_rerope(void **state) {
    (void)state;
    attn_params p = kind(ATTN_REROPE, N, 0, 16);
    double e = run_kind(&p);
    /* Window covers the sequence: the reference with rho = r is exactly
     * softmax (R_i q . R_j k = R_{i-j} q . k). */
    printf("rerope w >= n vs softmax: %.2e\n", e);
    assert_true(e < TOL);
    p = kind(ATTN_REROPE, 6, 0, 16);
    e = run_kind(&p);
    printf("rerope w 6 vs reference: %.2e\n", e);
    assert_true(e < TOL);
    p = kind(ATTN_LEAKY_REROPE, N, 0, 4);
    assert_true(run_kind(&p) < TOL);
    p = kind(ATTN_LEAKY_REROPE, 6, 0, 3.5f);
    e = run_kind(&p);
    printf("leaky-rerope w 6 k 3.5 vs reference: %.2e\n", e);
    assert_true(e < TOL);
}

static void test_logn_hwfa(void **state) {
    (void)state;
    /* The reference scales logits past LTRAIN only, so logn == softmax on
     * the first LTRAIN positions and the formula beyond. */
    attn_params p = kind(ATTN_LOGN, 8, 0, 16);
    double e = run_kind(&p);
    printf("logn vs reference: %.2e\n", e);
    assert_true(e < TOL);
    p = kind(ATTN_HWFA, 5, 1, 16);
    e = run_kind(&p);
    printf("hwfa vs reference: %.2e\n", e);
    assert_true(e < TOL);
    p = kind(ATTN_WINDOW, 9, 3, 16);
    p.logn = 1; /* logn combines with other kinds */
    assert_true(run_kind(&p) < TOL);
    p = kind(ATTN_REROPE, 9, 0, 16);
    p.logn = 1;
    assert_true(run_kind(&p) < TOL);
    /* dynamic-ntk runs exactly: every score with the query's own base. */
    p = kind(ATTN_SOFTMAX, 8, 0, 16);
    p.rope_set = 1;
    p.rope.type = ROPE_SCALING_DYNAMIC_NTK;
    e = run_kind(&p);
    printf("dynamic-ntk (exact) vs reference: %.2e\n", e);
    assert_true(e < TOL);
    assert_true(attention_logn_factor(LTRAIN - 1, LTRAIN) == 1.0f);
    assert_true(attention_logn_factor(LTRAIN * LTRAIN - 1, LTRAIN) > 1.99f);
}

/* Every kind reads f16 and q8_0 caches too: the same kernels over rows
 * converted a block at a time, within the element type's precision of the
 * reference (a wrong row, column or scale would be off by ~1). */
static void test_kinds_typed_cache(void **state) {
    (void)state;
    attn_params ps[7] = {kind(ATTN_SOFTMAX, 8, 0, 16), kind(ATTN_WINDOW, 5, 2, 16), kind(ATTN_REROPE, 6, 0, 16),
                         kind(ATTN_LEAKY_REROPE, 6, 0, 3.5f), kind(ATTN_LOGN, 8, 0, 16), kind(ATTN_HWFA, 5, 1, 16),
                         kind(ATTN_SOFTMAX, 8, 0, 16)};
    ps[6].rope_set = 1;
    ps[6].rope.type = ROPE_SCALING_DYNAMIC_NTK;
    for (int i = 0; i < 7; i++) {
        double e16 = run_kind_type(&ps[i], KV_F16), e8 = run_kind_type(&ps[i], KV_Q8_0);
        printf("%s%s: f16 cache %.2e, q8_0 cache %.2e vs reference\n", attn_kind_name(ps[i].kind),
               i == 6 ? " (dynamic-ntk)" : "", e16, e8);
        assert_true(e16 < 5e-3);
        assert_true(e8 < 5e-2);
    }
}

/* attention_causal_group (the heads sharing a KV head at once, each block
 * of K/V converted once) gives every head bit for bit what
 * attention_causal gives it, on every cache type, for decode rows and
 * prefill chunks. */
static void test_causal_group(void **state) {
    (void)state;
    const enum kv_type types[4] = {KV_F32, KV_F16, KV_Q8_0, KV_Q12_0};
    const int group = NH / NKV;
    attn_shape sh = {NH, NKV, HD, 1.0f / sqrtf((float)HD)};
    size_t sf = attention_scratch_floats_kv(ATTN_Q_CHUNK * group, N, HD, KV_BLOCK_MAX);
    float *scratch = malloc(sf * sizeof(float));
    static float a[N][QD], b[N][QD];
    for (int ti = 0; ti < 4; ti++) {
        kv_cache_params kp;
        kv_cache_params_default(&kp, 1, KD, N, 1);
        kp.type = types[ti];
        kp.head_dim = HD;
        kp.block_tokens = 8;
        kv_cache *kv = kv_cache_create_params(&kp, NULL, 0);
        assert_non_null(kv);
        int32_t seq = kv_cache_seq_create(kv);
        assert_int_equal(kv_cache_seq_reserve(kv, seq, N), 0);
        for (int j = 0; j < N; j++) kv_cache_store(kv, seq, 0, j, K[j], V[j]);
        kv_cache_seq_set_len(kv, seq, N);
        const int steps[3] = {1, 5, ATTN_Q_CHUNK};
        for (int si = 0; si < 3; si++) {
            memset(a, 0, sizeof a);
            memset(b, 0, sizeof b);
            for (int i0 = 0; i0 < N; i0 += steps[si]) {
                int n = N - i0 < steps[si] ? N - i0 : steps[si];
                for (int h = 0; h < NH; h++)
                    attention_causal(kv, seq, 0, &sh, h, &Q[i0][h * HD], QD, n, i0, &a[i0][h * HD], QD, scratch);
                for (int h = 0; h < NH; h += group)
                    attention_causal_group(kv, seq, 0, &sh, h, group, &Q[i0][h * HD], QD, n, i0, &b[i0][h * HD], QD,
                                           scratch);
            }
            assert_memory_equal(a, b, sizeof a);
        }
        kv_cache_free(kv);
    }
    free(scratch);
}

static void test_linear_forms(void **state) {
    (void)state;
    enum { T = 70, G = 2 };
    static float q[T][G * HD], k[T][HD], v[T][HD], o1[T][G * HD], o2[T][G * HD];
    for (int t = 0; t < T; t++) {
        for (int d = 0; d < G * HD; d++) q[t][d] = frand();
        for (int d = 0; d < HD; d++) { k[t][d] = frand(); v[t][d] = frand(); }
    }
    size_t sf = linear_state_floats(HD);
    float *s1 = calloc(sf, sizeof(float)), *s2 = calloc(sf, sizeof(float));
    float *scr = malloc(linear_scratch_floats(HD) * sizeof(float));
    float scale = 0.25f;
    /* Recurrent in uneven pieces (decode-like), parallel in one call. */
    int cuts[] = {0, 1, 2, 33, 34, 69, 70};
    for (int c = 0; c + 1 < 7; c++) {
        int a = cuts[c], n = cuts[c + 1] - a;
        linear_attention_run(s1, HD, G, q[a], G * HD, k[a], v[a], HD, n, scale, o1[a], G * HD, 0, scr);
    }
    linear_attention_run(s2, HD, G, q[0], G * HD, k[0], v[0], HD, 40, scale, o2[0], G * HD, 1, scr);
    linear_attention_run(s2, HD, G, q[40], G * HD, k[40], v[40], HD, 30, scale, o2[40], G * HD, 1, scr);
    double e = 0, er = 0;
    for (int t = 0; t < T; t++)
        for (int g = 0; g < G; g++) {
            /* Direct formula in double. */
            double num[HD] = {0}, den = 0;
            for (int j = 0; j <= t; j++) {
                double w = 0;
                for (int d = 0; d < HD; d++) {
                    double x = q[t][g * HD + d] * scale, y = k[j][d];
                    double fx = x > 0 ? x + 1 : exp(x), fy = y > 0 ? y + 1 : exp(y);
                    w += fx * fy;
                }
                den += w;
                for (int d = 0; d < HD; d++) num[d] += w * v[j][d];
            }
            for (int d = 0; d < HD; d++) {
                double a = fabs(o1[t][g * HD + d] - o2[t][g * HD + d]);
                double b = fabs(o1[t][g * HD + d] - num[d] / den);
                if (a > e) e = a;
                if (b > er) er = b;
            }
        }
    double es = 0;
    for (size_t i = 0; i < sf; i++) {
        double a = fabs(s1[i] - s2[i]) / (1 + fabs(s1[i]));
        if (a > es) es = a;
    }
    printf("linear: recurrent vs parallel %.2e, vs formula %.2e, states %.2e\n", e, er, es);
    assert_true(e < 1e-5 && er < 1e-5 && es < 1e-5);
    free(s1); free(s2); free(scr);
}

static void test_params(void **state) {
    (void)state;
    attn_params p;
    attn_params_default(&p);
    const char *param = NULL;
    char err[200];
    assert_int_equal(attn_params_validate(&p, &param, err, sizeof err), 0);
    p.window = 0;
    assert_int_equal(attn_params_validate(&p, &param, err, sizeof err), -1);
    assert_string_equal(param, "window");
    attn_params_default(&p);
    p.leak = 1.0f;
    assert_int_equal(attn_params_validate(&p, &param, err, sizeof err), -1);
    assert_string_equal(param, "leak");
    attn_params_default(&p);
    p.rope_set = 1;
    p.rope.factor = 0.5f;
    assert_int_equal(attn_params_validate(&p, &param, err, sizeof err), -1);
    assert_string_equal(param, "rope_factor");
    enum attn_kind k;
    for (int i = 0; i < ATTN_KIND_COUNT; i++) {
        assert_int_equal(attn_kind_parse(attn_kind_name((enum attn_kind)i), &k), 0);
        assert_int_equal(k, i);
    }
    assert_int_equal(attn_kind_parse("flash", &k), -1);
    attn_params_default(&p);
    p.kind = ATTN_HWFA;
    p.window = 100;
    p.sinks = 4;
    assert_int_equal(attn_kv_positions(&p, 0, 8, 16384), 104);
    assert_int_equal(attn_kv_positions(&p, 7, 8, 16384), 16384);
    p.kind = ATTN_LINEAR;
    assert_int_equal(attn_kv_positions(&p, 7, 8, 16384), 0);
}

/* ---- through the engine on the real model ---- */

static engine *open_stories(int32_t n_ctx, int32_t max_seqs) {
    const char *sh = getenv("QKVD_SHARED");
    char path[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", sh && *sh ? sh : "../shared");
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fclose(f);
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = path;
    ep.n_ctx = n_ctx;
    ep.max_seqs = max_seqs;
    ep.n_threads = 2;
    engine *e = NULL;
    char err[256];
    assert_int_equal(engine_load(&ep, &e, err, sizeof err), 0);
    return e;
}

enum { ET = 150 };
static int32_t etoks[ET];

/* Logits of every position of etoks under p: prefill chunks of `chunk`
 * tokens (ENGINE_OUT_ALL); returns a malloc'd [ET][V] array. */
static float *engine_logits(engine *e, const attn_params *p, int32_t chunk) {
    int32_t V = engine_get_info(e)->n_vocab;
    float *all = malloc((size_t)ET * V * sizeof(float));
    int32_t seq = engine_seq_create(e);
    assert_true(seq >= 0);
    char err[200];
    assert_int_equal(engine_seq_set_attention(e, seq, p, err, sizeof err), 0);
    for (int32_t i = 0; i < ET; i += chunk) {
        int32_t n = ET - i < chunk ? ET - i : chunk;
        engine_item it = {seq, etoks + i, n, ENGINE_OUT_ALL, NULL};
        assert_int_equal(engine_step(e, &it, 1), 0);
        memcpy(all + (size_t)i * V, it.logits, (size_t)n * V * sizeof(float));
    }
    assert_int_equal(engine_seq_len(e, seq), ET);
    if (p->kind == ATTN_LINEAR) assert_int_equal(engine_kv_bytes_allocated(e), 0);
    engine_seq_free(e, seq);
    return all;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m) m = d;
    }
    return m;
}

static void test_engine_kinds(void **state) {
    (void)state;
    engine *e = open_stories(256, 6);
    if (!e) { printf("skip: stories260K.gguf not found (QKVD_SHARED)\n"); skip(); }
    const engine_info *in = engine_get_info(e);
    int32_t V = in->n_vocab;
    for (int i = 0; i < ET; i++) etoks[i] = 1 + (int32_t)((frand() + 1.0f) * 0.5f * (V - 2));
    size_t n = (size_t)ET * V;
    attn_params soft = kind(ATTN_SOFTMAX, 1, 0, 16);
    float *ref = engine_logits(e, &soft, 64);
    /* Kinds that equal softmax here: windows covering the sequence, logn
     * below the trained length (512 > ET). */
    attn_params same[] = {kind(ATTN_WINDOW, ET, 0, 16), kind(ATTN_REROPE, ET, 0, 16),
                          kind(ATTN_LEAKY_REROPE, ET, 0, 8), kind(ATTN_LOGN, 1, 0, 16),
                          kind(ATTN_HWFA, ET, 4, 16)};
    for (size_t k = 0; k < sizeof same / sizeof same[0]; k++) {
        float *got = engine_logits(e, &same[k], 64);
        double d = max_diff(ref, got, n);
        printf("engine %-12s == softmax: max |dlogit| %.2e\n", attn_kind_name(same[k].kind), d);
        assert_true(d < 2e-3);
        free(got);
    }
    /* Smaller windows: prefill in chunks == token-by-token decode. */
    attn_params small[] = {kind(ATTN_WINDOW, 20, 4, 16), kind(ATTN_REROPE, 16, 0, 16),
                           kind(ATTN_LEAKY_REROPE, 16, 0, 4), kind(ATTN_HWFA, 24, 2, 16),
                           kind(ATTN_LINEAR, 1, 0, 16)};
    for (size_t k = 0; k < sizeof small / sizeof small[0]; k++) {
        float *a = engine_logits(e, &small[k], 64), *b = engine_logits(e, &small[k], 1);
        double d = max_diff(a, b, n), dsoft = max_diff(a, ref, n);
        printf("engine %-12s prefill == decode: %.2e (differs from softmax by %.2e)\n",
               attn_kind_name(small[k].kind), d, dsoft);
        assert_true(d < 2e-3);
        assert_true(dsoft > 1e-3); /* the kind really changed something */
        free(a);
        free(b);
    }
    /* Mixed kinds in one batch == each alone. */
    int32_t seqs[5];
    engine_item items[5];
    char err[200];
    float *alone[5];
    for (int k = 0; k < 5; k++) alone[k] = engine_logits(e, &small[k], ET);
    for (int k = 0; k < 5; k++) {
        seqs[k] = engine_seq_create(e);
        assert_int_equal(engine_seq_set_attention(e, seqs[k], &small[k], err, sizeof err), 0);
    }
    float *mixed[5];
    for (int k = 0; k < 5; k++) mixed[k] = malloc(n * sizeof(float));
    /* Staggered: every step, item k feeds a chunk of a different size. */
    int32_t fed[5] = {0};
    for (int round = 0; round < ET; round++) {
        int m = 0;
        for (int k = 0; k < 5; k++) {
            int32_t want = 1 + (round + k * 7) % 13, left = ET - fed[k];
            if (left <= 0) continue;
            if (want > left) want = left;
            items[m] = (engine_item){seqs[k], etoks + fed[k], want, ENGINE_OUT_ALL, NULL};
            m++;
        }
        if (!m) break;
        assert_int_equal(engine_step(e, items, m), 0);
        for (int i = 0; i < m; i++) {
            int k = 0;
            while (seqs[k] != items[i].seq) k++;
            memcpy(mixed[k] + (size_t)fed[k] * V, items[i].logits, (size_t)items[i].n_tokens * V * sizeof(float));
            fed[k] += items[i].n_tokens;
        }
    }
    for (int k = 0; k < 5; k++) {
        double d = max_diff(mixed[k], alone[k], n);
        printf("mixed batch %-12s == alone: %.2e\n", attn_kind_name(small[k].kind), d);
        assert_true(d < 2e-3);
        engine_seq_free(e, seqs[k]);
        free(mixed[k]);
        free(alone[k]);
    }
    /* Kind changes only while empty. */
    int32_t s = engine_seq_create(e);
    engine_item it = {s, etoks, 3, ENGINE_OUT_NONE, NULL};
    assert_int_equal(engine_step(e, &it, 1), 0);
    assert_int_equal(engine_seq_set_attention(e, s, &small[0], err, sizeof err), -EBUSY);
    engine_seq_free(e, s);
    free(ref);
    engine_free(e);
}

/* stories260K with {arch}.rope.scaling.* keys added (type NULL: none). */
static int write_scaled(const char *src_path, const char *out, const char *type) {
    gguf_file *src = NULL;
    char err[256];
    if (gguf_open(src_path, &src, err, sizeof err)) return -1;
    gguf_writer *w = gguf_writer_create();
    for (uint64_t i = 0; i < src->n_kv; i++) gguf_writer_copy_kv(w, &src->kv[i]);
    if (type) {
        gguf_writer_set_str(w, "llama.rope.scaling.type", type);
        gguf_writer_set_f32(w, "llama.rope.scaling.factor", 4.0f);
        gguf_writer_set_u32(w, "llama.rope.scaling.original_context_length", 512);
    }
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const gguf_tensor *t = &src->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data);
    }
    int rc = gguf_writer_write(w, out, err, sizeof err);
    gguf_writer_free(w);
    gguf_close(src);
    return rc;
}

/* rope.scaling.* metadata is read and applied: a yarn model's default
 * attention equals the plain model with yarn asked per sequence. */
static void test_rope_metadata(void **state) {
    (void)state;
    const char *sh = getenv("QKVD_SHARED");
    char src[512], out[256], err[256];
    snprintf(src, sizeof src, "%s/models/stories260K.gguf", sh && *sh ? sh : "../shared");
    if (access(src, R_OK)) { printf("skip: stories260K.gguf not found (QKVD_SHARED)\n"); skip(); }
    snprintf(out, sizeof out, "/tmp/qkvd-test-rope-%d.gguf", (int)getpid());
    assert_int_equal(write_scaled(src, out, "yarn"), 0);
    engine_params ep;
    engine_params_default(&ep);
    ep.model_path = out;
    ep.n_ctx = 1024;
    ep.max_seqs = 2;
    ep.n_threads = 1;
    engine *ey = NULL, *e = open_stories(1024, 2);
    assert_int_equal(engine_load(&ep, &ey, err, sizeof err), 0);
    const engine_info *in = engine_get_info(ey);
    assert_int_equal(in->rope_scaling, ROPE_SCALING_YARN);
    assert_true(in->rope_factor == 4.0f);
    assert_int_equal(in->rope_orig_ctx, 512);
    int32_t toks[700];
    for (int i = 0; i < 700; i++) toks[i] = 1 + (i * 37) % 500;
    attn_params yarn = kind(ATTN_SOFTMAX, 1, 0, 16), plain = kind(ATTN_SOFTMAX, 1, 0, 16);
    yarn.rope_set = 1;
    yarn.rope.type = ROPE_SCALING_YARN;
    yarn.rope.factor = 4.0f;
    yarn.rope.orig_ctx = 512;
    int32_t a = engine_seq_create(ey), b = engine_seq_create(e), c = engine_seq_create(e);
    assert_int_equal(engine_seq_set_attention(e, b, &yarn, err, sizeof err), 0);
    assert_int_equal(engine_seq_set_attention(e, c, &plain, err, sizeof err), 0);
    int32_t V = in->n_vocab;
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    for (int off = 0; off < 700; off += 350) {
        engine_item ia = {a, toks + off, 350, ENGINE_OUT_LAST, NULL}, ib = {b, toks + off, 350, ENGINE_OUT_LAST, NULL};
        assert_int_equal(engine_step(ey, &ia, 1), 0);
        memcpy(la, ia.logits, (size_t)V * sizeof(float));
        assert_int_equal(engine_step(e, &ib, 1), 0);
        memcpy(lb, ib.logits, (size_t)V * sizeof(float));
    }
    engine_item ic = {c, toks, 350, ENGINE_OUT_NONE, NULL};
    assert_int_equal(engine_step(e, &ic, 1), 0);
    ic.tokens = toks + 350;
    ic.out = ENGINE_OUT_LAST;
    assert_int_equal(engine_step(e, &ic, 1), 0);
    double d = max_diff(la, lb, (size_t)V), dp = max_diff(la, ic.logits, (size_t)V);
    printf("yarn from metadata vs per-sequence yarn: %.2e (vs no scaling %.2e)\n", d, dp);
    assert_true(d < 1e-4);
    assert_true(dp > 1e-3);
    free(la);
    free(lb);
    engine_free(ey);
    engine_free(e);
    /* An unknown type is a load error naming the key. */
    assert_int_equal(write_scaled(src, out, "su-scaled"), 0);
    ey = NULL;
    assert_true(engine_load(&ep, &ey, err, sizeof err) < 0);
    assert_non_null(strstr(err, "rope.scaling.type"));
    unlink(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_softmax_reference),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_rerope),
        cmocka_unit_test(test_logn_hwfa),
        cmocka_unit_test(test_kinds_typed_cache),
        cmocka_unit_test(test_causal_group),
        cmocka_unit_test(test_linear_forms),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_engine_kinds),
        cmocka_unit_test(test_rope_metadata),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
