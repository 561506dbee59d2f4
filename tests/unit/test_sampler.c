/* Unit tests for engine/sampler.c: truncation sets, frequencies, penalties,
 * logprobs and determinism, all on hand-made or seeded-random logits. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "sampler.h"

/* ---- helpers ---- */

/* |a - b| <= tol in double (cmocka 1.1.5 only has a float version). */
#define assert_near(a, b, tol) assert_near_at((double)(a), (double)(b), (double)(tol), #a, __LINE__)
static void assert_near_at(double a, double b, double tol, const char *what, int line)
{
    if (!(fabs(a - b) <= tol))
        fail_msg("line %d: %s = %.9g, expected %.9g (tol %g)", line, what, a, b, tol);
}

static uint64_t g_rng = 0x243f6a8885a308d3ULL;

static double test_uniform(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * 0x1.0p-53;
}

static double test_gauss(void)
{
    double u = test_uniform() + 1e-300, v = test_uniform();
    return sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v);
}

/* One step on a private copy of base (sampling modifies logits in place). */
static int32_t sample_once(sampler *s, const float *base, float *work, int32_t n, sampler_result *out)
{
    memcpy(work, base, (size_t)n * sizeof *work);
    return sampler_sample(s, work, NULL, 0, out);
}

/* Draw n_seeds * per_seed tokens (a fresh sampler per seed) and count them. */
static void sample_counts(const sampler_params *p0, const float *base, int32_t n, int n_seeds,
                          int per_seed, int64_t *counts)
{
    float *work = malloc((size_t)n * sizeof *work);
    assert_non_null(work);
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int sd = 0; sd < n_seeds; sd++) {
        sampler_params p = *p0;
        p.seed = 1000 + (uint64_t)sd * 7919;
        sampler *s = sampler_create(&p, n);
        assert_non_null(s);
        for (int i = 0; i < per_seed; i++) {
            int32_t t = sample_once(s, base, work, n, NULL);
            assert_true(t >= 0 && t < n);
            counts[t]++;
        }
        sampler_free(s);
    }
    free(work);
}

/* Softmax of logits[i] / temp over the ids in keep[0..nk) (double). */
static void renorm(const float *logits, const int32_t *keep, int nk, double temp, double *prob)
{
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < nk; i++)
        if (logits[keep[i]] > mx)
            mx = logits[keep[i]];
    for (int i = 0; i < nk; i++) {
        prob[i] = exp((logits[keep[i]] - mx) / temp);
        z += prob[i];
    }
    for (int i = 0; i < nk; i++)
        prob[i] /= z;
}

/* Every counted token is in keep, and each kept token's frequency matches its
 * renormalised probability within tol. */
static void check_freqs(const int64_t *counts, int32_t n, const float *logits, const int32_t *keep,
                        int nk, double temp, double tol)
{
    double prob[64];
    assert_true(nk <= 64);
    renorm(logits, keep, nk, temp, prob);
    int64_t total = 0, in_keep = 0;
    for (int32_t i = 0; i < n; i++)
        total += counts[i];
    for (int k = 0; k < nk; k++) {
        double f = (double)counts[keep[k]] / (double)total;
        if (fabs(f - prob[k]) > tol)
            fail_msg("token %d: frequency %.4f, expected %.4f (tol %.3f)", keep[k], f, prob[k], tol);
        in_keep += counts[keep[k]];
    }
    if (in_keep != total)
        fail_msg("%lld of %lld samples fell outside the allowed set", (long long)(total - in_keep),
                 (long long)total);
}

static const float *g_sort_logits;

static int cmp_tok(const void *a, const void *b)
{
    int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
    float la = g_sort_logits[ia], lb = g_sort_logits[ib];
    if (la > lb)
        return -1;
    if (la < lb)
        return 1;
    return ia < ib ? -1 : ia > ib;
}

/* ids[0..n) sorted best first (logit desc, id asc), by a full qsort. */
static void brute_sort(const float *logits, int32_t n, int32_t *ids)
{
    for (int32_t i = 0; i < n; i++)
        ids[i] = i;
    g_sort_logits = logits;
    qsort(ids, (size_t)n, sizeof *ids, cmp_tok);
}

static float *logits_from_probs(const double *probs, int n)
{
    float *l = malloc((size_t)n * sizeof *l);
    assert_non_null(l);
    for (int i = 0; i < n; i++)
        l[i] = probs[i] > 0 ? (float)log(probs[i]) : -INFINITY;
    return l;
}

static int32_t argmax_ref(const float *l, int32_t n)
{
    int32_t a = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[a])
            a = i;
    return a;
}

static double now_sec(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* ---- tests ---- */

static void test_defaults(void **state)
{
    (void)state;
    sampler_params p;
    memset(&p, 0x5a, sizeof p);
    sampler_params_default(&p);
    assert_true(p.temperature == 1.0f);
    assert_true(p.top_p == 1.0f);
    assert_int_equal(p.top_k, 0);
    assert_true(p.min_p == 0.0f);
    assert_true(p.repetition_penalty == 1.0f);
    assert_true(p.presence_penalty == 0.0f);
    assert_true(p.frequency_penalty == 0.0f);
    assert_int_equal(p.penalty_last_n, 64);
    assert_int_equal(p.n_bias, 0);
    assert_null(p.bias_ids);
    assert_null(p.bias_vals);
    assert_int_equal(p.n_top_logprobs, 0);
    char err[128];
    assert_int_equal(sampler_params_check(&p, 100, err, sizeof err), 0);
}

static void test_params_check(void **state)
{
    (void)state;
    char err[160];
    sampler_params p;
    sampler_params_default(&p);
    p.top_p = 1.5f;
    assert_int_equal(sampler_params_check(&p, 100, err, sizeof err), -1);
    assert_non_null(strstr(err, "top_p"));
    sampler_params_default(&p);
    p.n_top_logprobs = 21;
    assert_int_equal(sampler_params_check(&p, 100, err, sizeof err), -1);
    assert_non_null(strstr(err, "top_logprobs"));
    sampler_params_default(&p);
    p.repetition_penalty = 0.0f;
    assert_int_equal(sampler_params_check(&p, 100, err, sizeof err), -1);
    assert_non_null(strstr(err, "repetition_penalty"));
    int32_t ids[2] = {3, 100};
    float vals[2] = {1.0f, -1.0f};
    sampler_params_default(&p);
    p.n_bias = 2;
    p.bias_ids = ids;
    p.bias_vals = vals;
    assert_int_equal(sampler_params_check(&p, 100, err, sizeof err), -1);
    assert_non_null(strstr(err, "100"));
    assert_int_equal(sampler_params_check(&p, 101, err, sizeof err), 0);
    /* create clamps instead of failing, and drops the out-of-range bias id */
    sampler *s = sampler_create(&p, 100);
    assert_non_null(s);
    float l[100];
    for (int i = 0; i < 100; i++)
        l[i] = 0.0f;
    sampler_sample(s, l, NULL, 0, NULL);
    assert_true(l[3] == 1.0f);
    sampler_free(s);
    sampler_free(NULL);
    assert_null(sampler_create(&p, 0));
}

static void test_greedy_argmax(void **state)
{
    (void)state;
    const int32_t n = 1000;
    float base[1000], work[1000], lsm[1000];
    for (int row = 0; row < 20; row++) {
        for (int32_t i = 0; i < n; i++)
            base[i] = (float)(test_gauss() * 3.0);
        int32_t want = argmax_ref(base, n);
        float temps[2] = {0.0f, -1.0f};
        for (int t = 0; t < 2; t++) {
            sampler_params p;
            sampler_params_default(&p);
            p.temperature = temps[t];
            sampler *s = sampler_create(&p, n);
            assert_non_null(s);
            sampler_result r;
            assert_int_equal(sample_once(s, base, work, n, &r), want);
            assert_int_equal(r.token, want);
            sampler_log_softmax(base, lsm, n);
            assert_near(r.logprob, lsm[want], 1e-5);
            assert_int_equal(r.n_top, 0);
            sampler_free(s);
        }
    }
}

static void test_greedy_ties(void **state)
{
    (void)state;
    float l1[4] = {1.0f, 5.0f, 5.0f, 2.0f};
    float l2[3] = {3.0f, 3.0f, 3.0f};
    float w[4];
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;
    sampler *s = sampler_create(&p, 4);
    assert_int_equal(sample_once(s, l1, w, 4, NULL), 1);
    sampler_free(s);
    s = sampler_create(&p, 3);
    assert_int_equal(sample_once(s, l2, w, 3, NULL), 0);
    sampler_free(s);
    /* top_k = 1 breaks ties the same way at any temperature */
    p.temperature = 5.0f;
    p.top_k = 1;
    s = sampler_create(&p, 4);
    for (int i = 0; i < 50; i++)
        assert_int_equal(sample_once(s, l1, w, 4, NULL), 1);
    sampler_free(s);
}

static void test_top_k1_is_greedy(void **state)
{
    (void)state;
    const int32_t n = 3000;
    float *base = malloc(n * sizeof *base), *work = malloc(n * sizeof *work);
    float temps[4] = {0.3f, 1.0f, 3.0f, 50.0f};
    for (int row = 0; row < 10; row++) {
        for (int32_t i = 0; i < n; i++)
            base[i] = (float)(test_gauss() * 1.5);
        int32_t want = argmax_ref(base, n);
        for (int t = 0; t < 4; t++) {
            sampler_params p;
            sampler_params_default(&p);
            p.temperature = temps[t];
            p.top_k = 1;
            p.seed = (uint64_t)(row * 10 + t);
            sampler *s = sampler_create(&p, n);
            for (int k = 0; k < 20; k++)
                assert_int_equal(sample_once(s, base, work, n, NULL), want);
            sampler_free(s);
        }
    }
    free(base);
    free(work);
}

static void test_top_p_small(void **state)
{
    (void)state;
    /* Positions shuffled so order in the array does not matter. */
    double probs[6] = {0.05, 0.3, 0, 0.15, 0.5, 0};
    float *l = logits_from_probs(probs, 6);
    int64_t counts[6];
    sampler_params p;
    sampler_params_default(&p);
    p.top_p = 0.75f; /* 0.5 < 0.75 <= 0.8 -> {4, 1} */
    sample_counts(&p, l, 6, 20, 1000, counts);
    int32_t keep1[2] = {4, 1};
    check_freqs(counts, 6, l, keep1, 2, 1.0, 0.015);
    p.top_p = 0.9f; /* 0.8 < 0.9 <= 0.95 -> {4, 1, 3} */
    sample_counts(&p, l, 6, 20, 1000, counts);
    int32_t keep2[3] = {4, 1, 3};
    check_freqs(counts, 6, l, keep2, 3, 1.0, 0.015);
    p.top_p = 0.0f; /* keeps only the best */
    sample_counts(&p, l, 6, 5, 200, counts);
    assert_int_equal(counts[4], 1000);
    /* the same through the top-k path (top_k larger than the allowed set) */
    p.top_p = 0.75f;
    p.top_k = 5;
    sample_counts(&p, l, 6, 20, 1000, counts);
    check_freqs(counts, 6, l, keep1, 2, 1.0, 0.015);
    free(l);
}

static void test_top_p_large_vocab(void **state)
{
    (void)state;
    const int32_t n = 20000;
    float *l = malloc(n * sizeof *l);
    int32_t *ids = malloc(n * sizeof *ids);
    int64_t *counts = malloc(n * sizeof *counts);
    for (int32_t i = 0; i < n; i++)
        l[i] = (float)test_gauss();
    /* A few strong tokens scattered in the row; the bulk carries <1% mass. */
    const int32_t strong[8] = {19999, 17, 10011, 333, 14234, 7, 9999, 12345};
    const float sv[8] = {16.0f, 15.5f, 15.0f, 14.0f, 13.0f, 12.0f, 11.0f, 10.0f};
    for (int k = 0; k < 8; k++)
        l[strong[k]] = sv[k];
    brute_sort(l, n, ids);
    /* Brute-force nucleus for top_p = 0.9 in double. */
    double mx = l[ids[0]], z = 0;
    for (int32_t i = 0; i < n; i++)
        z += exp(l[i] - mx);
    double cum = 0;
    int nk = 0;
    while (cum < 0.9 * z) {
        double before = cum / z;
        cum += exp(l[ids[nk]] - mx);
        nk++;
        /* the boundary is not razor-close, so float rounding cannot move it */
        assert_true(cum / z < 0.9 - 1e-3 || before < 0.9 - 1e-3);
        assert_true(cum / z >= 0.9 + 1e-3 || cum / z < 0.9 - 1e-3);
    }
    assert_true(nk >= 3 && nk <= 8);
    sampler_params p;
    sampler_params_default(&p);
    p.top_p = 0.9f;
    sample_counts(&p, l, n, 20, 500, counts);
    check_freqs(counts, n, l, ids, nk, 1.0, 0.015);
    /* top-p chooses on the T=1 distribution; temperature then reshapes it */
    p.temperature = 2.0f;
    sample_counts(&p, l, n, 10, 500, counts);
    check_freqs(counts, n, l, ids, nk, 2.0, 0.02);
    /* with logprobs requested the same set is used (shared exp pass) */
    p.n_top_logprobs = 3;
    p.temperature = 1.0f;
    sample_counts(&p, l, n, 5, 500, counts);
    check_freqs(counts, n, l, ids, nk, 1.0, 0.025);
    free(l);
    free(ids);
    free(counts);
}

/* Cumulative softmax mass of the best-first order ids (double). */
static void cum_mass(const float *l, const int32_t *ids, int32_t n, double *cum)
{
    double mx = l[ids[0]], z = 0;
    for (int32_t i = 0; i < n; i++)
        z += exp(l[ids[i]] - mx);
    double c = 0;
    for (int32_t i = 0; i < n; i++) {
        c += exp(l[ids[i]] - mx);
        cum[i] = c / z;
    }
}

/* Samples land exactly in the best `keep` ranks of ids, each drawn at least once. */
static void check_exact_set(const int64_t *counts, const int32_t *ids, int32_t n, int32_t keep)
{
    for (int32_t r = 0; r < n; r++) {
        int64_t c = counts[ids[r]];
        if (r < keep && c == 0)
            fail_msg("rank %d (id %d) of a %d-token set never drawn", r, ids[r], keep);
        if (r >= keep && c != 0)
            fail_msg("rank %d (id %d) outside a %d-token set drawn %lld times", r, ids[r], keep,
                     (long long)c);
    }
}

/* Nuclei of hundreds of tokens, so the mass-weighted quickselect (not just its
 * small-range finish) decides the boundary, on the whole row and after top-k. */
static void test_top_p_wide_nucleus(void **state)
{
    (void)state;
    const int32_t n = 4000;
    float *l = malloc(n * sizeof *l);
    int32_t *ids = malloc(n * sizeof *ids);
    int64_t *counts = malloc(n * sizeof *counts);
    double *cum = malloc(n * sizeof *cum);
    for (int32_t i = 0; i < n; i++) /* distinct, smoothly decaying, scattered */
        l[(int32_t)(((int64_t)i * 2654435761u) % n)] = -0.004f * (float)i;
    brute_sort(l, n, ids);
    const int32_t want = 300;
    cum_mass(l, ids, n, cum);
    sampler_params p;
    sampler_params_default(&p);
    p.top_p = (float)((cum[want - 2] + cum[want - 1]) / 2);
    assert_true(cum[want - 2] < p.top_p - 1e-5 && cum[want - 1] > p.top_p + 1e-5);
    sample_counts(&p, l, n, 10, 1500, counts);
    check_exact_set(counts, ids, n, want);
    /* after top-k = 1000 (quickselect path), top-p on the renormalised set */
    cum_mass(l, ids, 1000, cum);
    p.top_k = 1000;
    p.top_p = (float)((cum[want - 2] + cum[want - 1]) / 2);
    assert_true(cum[want - 2] < p.top_p - 1e-5 && cum[want - 1] > p.top_p + 1e-5);
    sample_counts(&p, l, n, 10, 1500, counts);
    check_exact_set(counts, ids, n, want);
    /* Many boundaries, membership only: the quickselect can end on a pivot or
     * in its small-range finish, depending on where the boundary falls. */
    p.top_k = 0;
    cum_mass(l, ids, n, cum);
    for (int32_t w = 20; w <= 400; w += 9) {
        p.top_p = (float)((cum[w - 2] + cum[w - 1]) / 2);
        sample_counts(&p, l, n, 1, 300, counts);
        for (int32_t r = w; r < n; r++)
            if (counts[ids[r]] != 0)
                fail_msg("top_p for %d tokens: rank %d drawn", w, r);
    }
    free(l);
    free(ids);
    free(counts);
    free(cum);
}

static void test_top_k_sets(void **state)
{
    (void)state;
    const int32_t n = 5000;
    float *l = malloc(n * sizeof *l);
    int32_t *ids = malloc(n * sizeof *ids);
    int64_t *counts = malloc(n * sizeof *counts);
    for (int32_t i = 0; i < n; i++)
        l[i] = (float)test_gauss();
    l[100] = l[101] = l[102] = 5.0f; /* ties inside the kept set */
    brute_sort(l, n, ids);
    const int32_t ks[2] = {100, 300}; /* heap path and quickselect path */
    for (int t = 0; t < 2; t++) {
        int32_t k = ks[t];
        sampler_params p;
        sampler_params_default(&p);
        p.top_k = k;
        p.temperature = 1e6f; /* flat: every kept token equally likely */
        sample_counts(&p, l, n, 10, 3000, counts);
        for (int32_t r = 0; r < n; r++) {
            int64_t c = counts[ids[r]];
            if (r < k) {
                if (c == 0)
                    fail_msg("top_k=%d: rank %d (id %d) never drawn", k, r, ids[r]);
            } else if (c != 0) {
                fail_msg("top_k=%d: rank %d (id %d) drawn %lld times", k, r, ids[r], (long long)c);
            }
        }
    }
    /* top-k then top-p on the renormalised top-k mass */
    double probs[6] = {0.3, 0.25, 0.2, 0.15, 0.06, 0.04};
    float *l2 = logits_from_probs(probs, 6);
    int64_t c2[6];
    sampler_params p;
    sampler_params_default(&p);
    p.top_k = 3;    /* {0,1,2}, renormalised 0.4, 0.333, 0.267 */
    p.top_p = 0.6f; /* 0.4 < 0.6 <= 0.733 -> {0, 1} */
    sample_counts(&p, l2, 6, 20, 1000, c2);
    int32_t keep[2] = {0, 1};
    check_freqs(c2, 6, l2, keep, 2, 1.0, 0.015);
    free(l2);
    free(l);
    free(ids);
    free(counts);
}

static void test_min_p(void **state)
{
    (void)state;
    double probs[5] = {0.06, 0.3, 0.4, 0.04, 0.2};
    float *l = logits_from_probs(probs, 5);
    int64_t counts[5];
    int32_t keep[3] = {2, 1, 4}; /* p >= 0.2 * 0.4 = 0.08 */
    sampler_params p;
    sampler_params_default(&p);
    p.min_p = 0.2f;
    sample_counts(&p, l, 5, 20, 1000, counts);
    check_freqs(counts, 5, l, keep, 3, 1.0, 0.015);
    /* after top-p (which keeps everything here) and after top-k */
    p.top_p = 0.999f;
    sample_counts(&p, l, 5, 20, 1000, counts);
    check_freqs(counts, 5, l, keep, 3, 1.0, 0.015);
    p.top_p = 1.0f;
    p.top_k = 4;
    p.temperature = 0.7f;
    sample_counts(&p, l, 5, 20, 1000, counts);
    check_freqs(counts, 5, l, keep, 3, 0.7, 0.015);
    free(l);
}

static void test_temperature(void **state)
{
    (void)state;
    float l[4] = {1.0f, 1.5f, 0.8f, -0.5f};
    int64_t counts[4];
    int32_t all[4] = {0, 1, 2, 3};
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 2.0f;
    sample_counts(&p, l, 4, 20, 1000, counts);
    check_freqs(counts, 4, l, all, 4, 2.0, 0.015);
    p.temperature = 0.5f;
    sample_counts(&p, l, 4, 20, 1000, counts);
    check_freqs(counts, 4, l, all, 4, 0.5, 0.015);
    p.temperature = 1.0f; /* the untruncated T = 1 draw reuses the normaliser's weights */
    sample_counts(&p, l, 4, 20, 1000, counts);
    check_freqs(counts, 4, l, all, 4, 1.0, 0.015);
    /* the T -> 0 limit is greedy */
    float temps[3] = {1e-3f, 1e-20f, 1e-40f};
    for (int t = 0; t < 3; t++) {
        p.temperature = temps[t];
        sample_counts(&p, l, 4, 5, 400, counts);
        assert_int_equal(counts[1], 2000);
    }
}

static void test_seed_determinism(void **state)
{
    (void)state;
    const int32_t n = 200;
    float base[200], work[200];
    for (int32_t i = 0; i < n; i++)
        base[i] = (float)test_gauss();
    int32_t seq[3][100];
    uint64_t seeds[3] = {42, 42, 43};
    for (int k = 0; k < 3; k++) {
        sampler_params p;
        sampler_params_default(&p);
        p.seed = seeds[k];
        p.top_p = 0.95f;
        sampler *s = sampler_create(&p, n);
        for (int i = 0; i < 100; i++) {
            base[i % n] += 0.01f; /* a changing logits sequence */
            seq[k][i] = sample_once(s, base, work, n, NULL);
        }
        for (int i = 0; i < 100; i++)
            base[i % n] -= 0.01f;
        sampler_free(s);
    }
    assert_memory_equal(seq[0], seq[1], sizeof seq[0]);
    int diff = 0;
    for (int i = 0; i < 100; i++)
        diff += seq[0][i] != seq[2][i];
    assert_true(diff > 50);
}

static void test_logit_bias(void **state)
{
    (void)state;
    double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float *l = logits_from_probs(probs, 4);
    float w[4];
    int64_t counts[4];
    int32_t bid[2] = {0, 3};
    float bval[2] = {-100.0f, 0.0f};
    sampler_params p;
    sampler_params_default(&p);
    p.n_bias = 2;
    p.bias_ids = bid;
    p.bias_vals = bval;
    sample_counts(&p, l, 4, 10, 500, counts);
    assert_int_equal(counts[0], 0);
    assert_true(counts[1] > 0 && counts[2] > 0 && counts[3] > 0);
    p.temperature = 0.0f;
    sampler *s = sampler_create(&p, 4);
    assert_int_equal(sample_once(s, l, w, 4, NULL), 1);
    assert_near(w[0], l[0] - 100.0f, 1e-4); /* applied in place */
    sampler_free(s);
    bval[0] = 0.0f;
    bval[1] = 100.0f;
    p.temperature = 1.0f;
    sample_counts(&p, l, 4, 10, 500, counts);
    assert_int_equal(counts[3], 5000);
    /* the bias array was copied at create: changing it afterwards is harmless */
    s = sampler_create(&p, 4);
    bval[1] = -100.0f;
    assert_int_equal(sample_once(s, l, w, 4, NULL), 3);
    sampler_free(s);
    free(l);
}

static void test_repetition_penalty(void **state)
{
    (void)state;
    const float base[8] = {2.0f, -2.0f, 1.0f, -1.0f, 0.5f, 3.0f, -3.0f, 4.0f};
    const int32_t hist[7] = {5, 0, 1, 0, 1, 0, 7};
    float l[8];
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 2.0f;
    p.penalty_last_n = 6; /* window {0,1,0,1,0,7}: token 5 is outside it */
    sampler *s = sampler_create(&p, 8);
    memcpy(l, base, sizeof l);
    sampler_sample(s, l, hist, 7, NULL);
    const float want[8] = {1.0f, -4.0f, 1.0f, -1.0f, 0.5f, 3.0f, -3.0f, 2.0f};
    for (int i = 0; i < 8; i++)
        assert_true(l[i] == want[i]); /* once per token, not per occurrence */
    /* the same sampler again: its occurrence counts were reset */
    memcpy(l, base, sizeof l);
    sampler_sample(s, l, hist, 7, NULL);
    for (int i = 0; i < 8; i++)
        assert_true(l[i] == want[i]);
    sampler_free(s);
    p.penalty_last_n = -1; /* whole history: token 5 too */
    s = sampler_create(&p, 8);
    memcpy(l, base, sizeof l);
    int32_t t = sampler_sample(s, l, hist, 7, NULL);
    assert_true(l[5] == 1.5f);
    assert_int_equal(t, 7); /* 2 beats 1.5 */
    sampler_free(s);
    p.penalty_last_n = 0; /* off */
    s = sampler_create(&p, 8);
    memcpy(l, base, sizeof l);
    assert_int_equal(sampler_sample(s, l, hist, 7, NULL), 7);
    assert_memory_equal(l, base, sizeof l);
    sampler_free(s);
}

static void test_presence_frequency(void **state)
{
    (void)state;
    const int32_t hist[7] = {1, 1, 2, 1, 5, -3, 99}; /* -3, 99: outside the vocabulary */
    float l[6];
    sampler_params p;
    sampler_params_default(&p);
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.penalty_last_n = -1;
    sampler *s = sampler_create(&p, 6);
    for (int i = 0; i < 6; i++)
        l[i] = 1.0f;
    sampler_sample(s, l, hist, 7, NULL);
    const float want[6] = {1.0f, -0.75f, 0.25f, 1.0f, 1.0f, 0.25f};
    for (int i = 0; i < 6; i++)
        assert_true(l[i] == want[i]);
    sampler_free(s);
    /* repetition first, then presence/frequency (llama.cpp order) */
    p.repetition_penalty = 2.0f;
    p.penalty_last_n = 3; /* window {5, -3, 99}: only token 5 */
    s = sampler_create(&p, 6);
    for (int i = 0; i < 6; i++)
        l[i] = 3.0f;
    l[5] = -1.0f;
    sampler_sample(s, l, hist, 7, NULL);
    assert_true(l[5] == -1.0f * 2.0f - 0.5f - 0.25f);
    assert_true(l[1] == 3.0f);
    sampler_free(s);
    /* negative penalties (allowed by OpenAI) encourage repeats */
    sampler_params_default(&p);
    p.presence_penalty = -2.0f;
    p.penalty_last_n = -1;
    p.temperature = 0.0f;
    s = sampler_create(&p, 6);
    for (int i = 0; i < 6; i++)
        l[i] = (float)i;
    assert_int_equal(sampler_sample(s, l, hist, 5, NULL), 5);
    assert_true(l[5] == 7.0f && l[2] == 4.0f);
    sampler_free(s);
}

static void test_logprobs(void **state)
{
    (void)state;
    const int32_t n = 50000;
    float *base = malloc(n * sizeof *base), *work = malloc(n * sizeof *work);
    float *lsm = malloc(n * sizeof *lsm);
    int32_t *ids = malloc(n * sizeof *ids);
    for (int32_t i = 0; i < n; i++)
        base[i] = (float)(test_gauss() * 4.0);
    base[777] = base[778] = base[12] = 30.0f; /* a tie at the top of the list */
    base[40000] = -INFINITY;                  /* masked tokens never listed */
    brute_sort(base, n, ids);
    sampler_log_softmax(base, lsm, n);
    double mx = -INFINITY, z = 0;
    for (int32_t i = 0; i < n; i++)
        if (lsm[i] > mx)
            mx = lsm[i];
    for (int32_t i = 0; i < n; i++)
        z += exp((double)lsm[i] - mx);
    assert_near(mx + log(z), 0.0, 1e-6); /* logsumexp == 0 */
    float temps[3] = {0.0f, 1.0f, 0.7f};
    for (int t = 0; t < 3; t++) {
        sampler_params p;
        sampler_params_default(&p);
        p.n_top_logprobs = 20;
        p.temperature = temps[t];
        p.top_p = 0.9f;
        sampler *s = sampler_create(&p, n);
        sampler_result r;
        int32_t tok = sample_once(s, base, work, n, &r);
        assert_int_equal(r.token, tok);
        assert_near(r.logprob, lsm[tok], 1e-5);
        assert_int_equal(r.n_top, 20);
        for (int k = 0; k < 20; k++) {
            assert_int_equal(r.top_ids[k], ids[k]);
            assert_near(r.top_logprobs[k], lsm[ids[k]], 1e-5);
            if (k > 0)
                assert_true(r.top_logprobs[k] <= r.top_logprobs[k - 1]);
        }
        assert_int_equal(r.top_ids[0], 12); /* tie -> lowest id first */
        assert_int_equal(r.top_ids[1], 777);
        sampler_free(s);
    }
    /* fewer allowed tokens than requested alternatives */
    float small[5] = {0.0f, -INFINITY, 1.0f, -INFINITY, NAN};
    float w5[5];
    sampler_params p;
    sampler_params_default(&p);
    p.n_top_logprobs = 4;
    sampler *s = sampler_create(&p, 5);
    sampler_result r;
    int32_t tok = sample_once(s, small, w5, 5, &r);
    assert_true(tok == 0 || tok == 2);
    assert_int_equal(r.n_top, 2);
    assert_int_equal(r.top_ids[0], 2);
    assert_near(r.top_logprobs[0], -log1p(exp(-1.0)), 1e-6);
    sampler_free(s);
    free(base);
    free(work);
    free(lsm);
    free(ids);
}

static void test_log_softmax_extremes(void **state)
{
    (void)state;
    float a[3] = {1e30f, -1e30f, 0.0f}, o[3];
    sampler_log_softmax(a, o, 3);
    for (int i = 0; i < 3; i++)
        assert_true(isfinite(o[i]));
    assert_true(o[0] == 0.0f);
    assert_near(o[2], -1e30, 1e24);
    float b[2] = {1000.0f, 1001.0f};
    sampler_log_softmax(b, b, 2); /* in place */
    assert_near(b[0], -1.3132616875, 1e-6);
    assert_near(b[1], -0.3132616875, 1e-6);
    float c[3] = {-INFINITY, 5.0f, -INFINITY};
    sampler_log_softmax(c, o, 3);
    assert_true(o[0] == -INFINITY && o[2] == -INFINITY && o[1] == 0.0f);
    float d[2] = {-INFINITY, -INFINITY};
    sampler_log_softmax(d, o, 2);
    assert_true(o[0] == -INFINITY && o[1] == -INFINITY);
    /* many equal large logits: exactly -log(n) */
    enum { N = 1001 };
    static float e[N], oe[N];
    for (int i = 0; i < N; i++)
        e[i] = 3e4f;
    sampler_log_softmax(e, oe, N);
    for (int i = 0; i < N; i++)
        assert_near(oe[i], -log((double)N), 1e-5);
}

static void test_masked_and_degenerate(void **state)
{
    (void)state;
    enum { N = 10 };
    float l[N], w[N];
    for (int i = 0; i < N; i++)
        l[i] = -INFINITY;
    l[3] = 0.0f;
    l[7] = 0.5f;
    l[9] = NAN; /* treated as masked */
    int64_t counts[N];
    sampler_params p;
    sampler_params_default(&p);
    sample_counts(&p, l, N, 10, 500, counts);
    assert_int_equal(counts[3] + counts[7], 5000);
    assert_true(counts[3] > 1000 && counts[7] > 1000);
    p.top_p = 0.5f;
    p.top_k = 3;
    p.min_p = 0.1f;
    p.n_top_logprobs = 5;
    sample_counts(&p, l, N, 5, 200, counts);
    assert_int_equal(counts[7], 1000);
    /* nothing allowed */
    for (int i = 0; i < N; i++)
        l[i] = -INFINITY;
    sampler *s = sampler_create(&p, N);
    sampler_result r;
    assert_int_equal(sample_once(s, l, w, N, &r), -1);
    assert_int_equal(r.token, -1);
    assert_int_equal(r.n_top, 0);
    sampler_free(s);
    /* +inf forces (and does not poison the rest with NaN) */
    for (int i = 0; i < N; i++)
        l[i] = (float)i;
    l[2] = INFINITY;
    sampler_params_default(&p);
    p.n_top_logprobs = 2;
    s = sampler_create(&p, N);
    for (int k = 0; k < 20; k++) {
        assert_int_equal(sample_once(s, l, w, N, &r), 2);
        assert_true(r.logprob == 0.0f);
        assert_false(isnan(r.top_logprobs[1]));
    }
    sampler_free(s);
}

static void test_speed_152k(void **state)
{
    (void)state;
    const int32_t n = 152064;
    float *base = malloc(n * sizeof *base), *work = malloc(n * sizeof *work);
    for (int32_t i = 0; i < n; i++)
        base[i] = (float)(test_gauss() * 2.5);
    for (int k = 0; k < 30; k++)
        base[(int32_t)(test_uniform() * n)] = (float)(8.0 + 10.0 * test_uniform());
    int32_t hist[64];
    for (int k = 0; k < 64; k++)
        hist[k] = (int32_t)(test_uniform() * n);
    struct {
        const char *name;
        float temperature, top_p;
    } cases[2] = {{"greedy", 0.0f, 1.0f}, {"top_p=0.9", 1.0f, 0.9f}};
    for (int c = 0; c < 2; c++) {
        sampler_params p;
        sampler_params_default(&p);
        p.temperature = cases[c].temperature;
        p.top_p = cases[c].top_p;
        p.repetition_penalty = 1.1f;
        p.n_top_logprobs = 5;
        sampler *s = sampler_create(&p, n);
        sampler_result r;
        double best = 1e9;
        for (int rep = 0; rep < 20; rep++) {
            memcpy(work, base, (size_t)n * sizeof *work);
            double t0 = now_sec();
            sampler_sample(s, work, hist, 64, &r);
            double dt = now_sec() - t0;
            if (dt < best)
                best = dt;
        }
        printf("# 152k-vocab step, %s + 5 logprobs: %.3f ms (best of 20)\n", cases[c].name, best * 1e3);
        assert_true(best < 0.020); /* sanity bound only; expected far below */
        sampler_free(s);
    }
    free(base);
    free(work);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_params_check),
        cmocka_unit_test(test_greedy_argmax),
        cmocka_unit_test(test_greedy_ties),
        cmocka_unit_test(test_top_k1_is_greedy),
        cmocka_unit_test(test_top_p_small),
        cmocka_unit_test(test_top_p_large_vocab),
        cmocka_unit_test(test_top_p_wide_nucleus),
        cmocka_unit_test(test_top_k_sets),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_temperature),
        cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_presence_frequency),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_log_softmax_extremes),
        cmocka_unit_test(test_masked_and_degenerate),
        cmocka_unit_test(test_speed_152k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
