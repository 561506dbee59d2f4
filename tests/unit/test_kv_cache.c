/* test_kv_cache.c -- the paged pool: sequence lifecycle, block growth, spans,
 * truncate, sharing with copy-on-write, prefix cache (chain hash, attach,
 * LRU eviction, refcounts), window dropping, element types, statistics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kv_cache.h"

enum { NL = 3, DIM = 40, CTX = 200, BT = 16 };

static float val(int layer, int pos, int i, int kv) { return (float)(kv * 10000 + layer * 1000 + pos) + i * 0.01f; }

/* Write positions [from, to) of seq with val() and commit tokens pos*7. */
static void fill(kv_cache *kv, int32_t seq, int32_t from, int32_t to) {
    assert_int_equal(kv_cache_seq_len(kv, seq), from);
    assert_int_equal(kv_cache_seq_reserve(kv, seq, to), 0);
    float k[DIM], v[DIM];
    int32_t toks[CTX];
    for (int p = from; p < to; p++) {
        for (int l = 0; l < NL; l++) {
            for (int i = 0; i < DIM; i++) { k[i] = val(l, p, i, 0); v[i] = val(l, p, i, 1); }
            kv_cache_store(kv, seq, l, p, k, v);
        }
        toks[p - from] = p * 7;
    }
    kv_cache_seq_commit(kv, seq, toks, to - from);
}

/* Every held position reads back (within tol of) what fill() stored. */
static void check_range(const kv_cache *kv, int32_t seq, int32_t from, int32_t to, float tol) {
    float row[DIM];
    for (int l = 0; l < NL; l++)
        for (int p = from; p < to;) {
            kv_span sp;
            int32_t run = kv_cache_span_get(kv, seq, l, p, &sp);
            assert_true(run >= 1 && run <= BT);
            for (int r = 0; r < run && p + r < to; r++) {
                kv_span_rows_f32(&sp, sp.k + (size_t)r * sp.stride, 1, 0, DIM, row);
                for (int i = 0; i < DIM; i++) assert_true(fabsf(row[i] - val(l, p + r, i, 0)) <= tol * (fabsf(val(l, p + r, i, 0)) + 1.0f));
                kv_span_rows_f32(&sp, sp.v + (size_t)r * sp.stride, 1, 3, 5, row);
                for (int i = 0; i < 5; i++) assert_true(fabsf(row[i] - val(l, p + r, i + 3, 1)) <= tol * (fabsf(val(l, p + r, i + 3, 1)) + 1.0f));
            }
            p += run;
        }
}

static kv_cache *make(int32_t seqs, int64_t blocks, enum kv_type t) {
    kv_cache_params p;
    kv_cache_params_default(&p, NL, DIM, CTX, seqs);
    p.type = t;
    p.block_tokens = BT;
    size_t row = t == KV_F32 ? DIM * 4 : t == KV_F16 ? DIM * 2 : t == KV_Q8_0 ? 40 + 4 * 2 : 40 + 20 + 2 * 2;
    if (blocks > 0) p.memory_bytes = (uint64_t)blocks * NL * 2 * BT * row;
    char err[256];
    kv_cache *kv = kv_cache_create_params(&p, err, sizeof err);
    assert_non_null(kv);
    return kv;
}

static void test_lifecycle(void **state) {
    (void)state;
    kv_cache *kv = make(2, 0, KV_F32);
    assert_int_equal(kv_cache_bytes_per_token(kv), NL * 2 * DIM * sizeof(float));
    assert_int_equal(kv_cache_block_tokens(kv), BT);
    int32_t a = kv_cache_seq_create(kv), b = kv_cache_seq_create(kv);
    assert_true(a >= 0 && b >= 0 && a != b);
    assert_int_equal(kv_cache_seq_create(kv), -1);
    assert_int_equal(kv_cache_seq_reserve(kv, a, CTX + 1), -ERANGE);
    assert_int_equal(kv_cache_seq_reserve(kv, 7, 1), -EINVAL);
    fill(kv, a, 0, 150);
    assert_int_equal(kv_cache_seq_len(kv, a), 150);
    check_range(kv, a, 0, 150, 0);
    assert_int_equal(kv_cache_bytes_allocated(kv), 10 * (uint64_t)BT * NL * 2 * DIM * sizeof(float));
    /* Share a prefix, then truncate the original: the copy is independent. */
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 100), 0);
    assert_int_equal(kv_cache_seq_len(kv, b), 100);
    kv_cache_seq_truncate(kv, a, 10);
    assert_int_equal(kv_cache_seq_len(kv, a), 10);
    check_range(kv, b, 0, 100, 0);
    check_range(kv, a, 0, 10, 0);
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 11), -EINVAL); /* longer than src */
    /* Grow again after truncation (writes into a block b still shares). */
    fill(kv, a, 10, CTX);
    check_range(kv, a, 0, CTX, 0);
    check_range(kv, b, 0, 100, 0);
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.block_tokens, BT);
    assert_int_equal(st.bytes_per_block * (uint64_t)(st.blocks_used + st.blocks_cached), st.bytes_allocated);
    assert_int_equal(st.bytes_needed, (uint64_t)(CTX + 100) * kv_cache_bytes_per_token(kv));
    kv_cache_seq_free(kv, b);
    assert_int_equal(kv_cache_seq_len(kv, b), 0);
    assert_true(kv_cache_seq_create(kv) >= 0);
    kv_cache_free(kv);
    kv_cache_free(NULL);
}

/* n > 1: a shared partial last block is copied on the first write; each
 * side then holds its own data; refcounts return every block at the end. */
static void test_copy_on_write(void **state) {
    (void)state;
    kv_cache *kv = make(3, 0, KV_F32);
    int32_t a = kv_cache_seq_create(kv), b = kv_cache_seq_create(kv);
    fill(kv, a, 0, 40); /* 2 full blocks + 8 positions */
    kv_cache_stats st0, st1;
    kv_cache_stats_get(kv, &st0);
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 40), 0);
    kv_cache_stats_get(kv, &st1);
    assert_int_equal(st1.blocks_used, st0.blocks_used); /* shared, nothing copied yet */
    assert_int_equal(kv_cache_seq_blocks_needed(kv, b, 1), 1); /* the copy */
    assert_int_equal(kv_cache_seq_blocks_needed(kv, b, 9), 2); /* copy + a new block */
    /* b writes different values at 40..44: a must not see them. */
    assert_int_equal(kv_cache_seq_reserve(kv, b, 45), 0);
    float k[DIM], v[DIM];
    for (int p = 40; p < 45; p++)
        for (int l = 0; l < NL; l++) {
            for (int i = 0; i < DIM; i++) k[i] = v[i] = -1.0f;
            kv_cache_store(kv, b, l, p, k, v);
        }
    int32_t t5[5] = {1, 2, 3, 4, 5};
    kv_cache_seq_commit(kv, b, t5, 5);
    fill(kv, a, 40, 45);
    check_range(kv, a, 0, 45, 0);
    check_range(kv, b, 0, 40, 0);
    kv_span sp;
    kv_cache_span_get(kv, b, 1, 42, &sp);
    assert_true(((const float *)sp.k)[0] == -1.0f);
    kv_cache_stats_get(kv, &st1);
    assert_int_equal(st1.blocks_used, st0.blocks_used + 1);
    kv_cache_seq_free(kv, a);
    kv_cache_seq_free(kv, b);
    kv_cache_stats_get(kv, &st1);
    assert_int_equal(st1.blocks_used, 0);
    assert_int_equal(st1.blocks_cached, 2); /* the two full prompt blocks stay cached */
    kv_cache_free(kv);
}

/* Prefix cache: a new sequence with the same tokens reuses full blocks,
 * always leaving one token to compute; different tokens in an earlier block
 * break the chain; freed blocks stay cached until evicted LRU. */
static void test_prefix_cache(void **state) {
    (void)state;
    kv_cache *kv = make(2, 8, KV_F32);
    int32_t toks[CTX];
    for (int p = 0; p < CTX; p++) toks[p] = p * 7; /* what fill() commits */
    int32_t a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, a, toks, 40), 0);
    fill(kv, a, 0, 40);
    kv_cache_seq_free(kv, a);
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.blocks_used, 0);
    assert_int_equal(st.blocks_cached, 2);
    assert_int_equal(st.bytes_allocated, 2 * st.bytes_per_block);
    int32_t b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, b, toks, 40), 32);
    assert_int_equal(kv_cache_seq_len(kv, b), 32);
    check_range(kv, b, 0, 32, 0);
    fill(kv, b, 32, 40);
    check_range(kv, b, 0, 40, 0);
    kv_cache_seq_free(kv, b);
    /* Exactly two blocks of prompt: the last token is recomputed, so 31 reused. */
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, b, toks, 32), 31);
    assert_int_equal(kv_cache_seq_blocks_needed(kv, b, 1), 0); /* sole owner: written in place */
    fill(kv, b, 31, 32);
    check_range(kv, b, 0, 32, 0);
    kv_cache_seq_free(kv, b);
    /* A different first block: no reuse at all (the hash chains all tokens). */
    int32_t other[40];
    memcpy(other, toks, sizeof other);
    other[3] = 99;
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, b, other, 40), 0);
    kv_cache_seq_free(kv, b);
    /* A different salt (attention variant) does not see these blocks. */
    b = kv_cache_seq_create(kv);
    kv_policy_cfg full = {.kind = KV_POLICY_FULL};
    assert_int_equal(kv_cache_seq_set_policy(kv, b, &full, 42), 0);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, b, toks, 40), 0);
    kv_cache_seq_free(kv, b);
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.prefix_hit_tokens, 32 + 31);
    assert_int_equal(st.prefix_lookup_tokens, 40 + 40 + 32 + 40 + 40);
    /* Eviction takes a chain's tail before its head: with 7 of 8 blocks
     * taken, the 2-block prefix loses its second block and keeps the first. */
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_reserve(kv, b, 7 * BT), 0);
    kv_cache_seq_free(kv, b);
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.blocks_cached, 1);
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, b, toks, 40), 16);
    kv_cache_seq_free(kv, b);
    /* Eviction: 8 blocks in the pool, 2 cached; a sequence needing all 8
     * evicts them (oldest first) instead of failing. */
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_blocks_available(kv), 8);
    assert_int_equal(kv_cache_seq_reserve(kv, b, 8 * BT), 0);
    assert_int_equal(kv_cache_seq_reserve(kv, b, 8 * BT + 1), -ENOMEM);
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.blocks_cached, 0);
    assert_int_equal(st.blocks_used, 8);
    kv_cache_seq_free(kv, b);
    a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, a, toks, 40), 0); /* evicted */
    kv_cache_seq_free(kv, a);
    kv_cache_free(kv);
}

/* LRU order: the least recently released cached block goes first. */
static void test_lru_order(void **state) {
    (void)state;
    kv_cache *kv = make(3, 4, KV_F32);
    int32_t t1[17], t2[17];
    for (int i = 0; i < 17; i++) { t1[i] = i * 7; t2[i] = 1000 + i; }
    int32_t a = kv_cache_seq_create(kv);
    fill(kv, a, 0, 16); /* tokens p*7 = t1 */
    kv_cache_seq_free(kv, a);
    int32_t b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_reserve(kv, b, 16), 0);
    kv_cache_seq_commit(kv, b, t2, 16);
    kv_cache_seq_free(kv, b);
    /* Touch t1 again: now t2's block is the oldest. */
    a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, a, t1, 17), 16);
    kv_cache_seq_free(kv, a);
    /* Take 3 blocks: 2 free ones and then the oldest cached (t2). */
    b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_reserve(kv, b, 3 * BT), 0);
    a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, a, t1, 17), 16);
    kv_cache_seq_free(kv, a);
    a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_attach_prefix(kv, a, t2, 17), 0);
    kv_cache_seq_free(kv, a);
    kv_cache_seq_free(kv, b);
    kv_cache_free(kv);
}

/* Window policy: only sink blocks and the last `window` positions' blocks
 * stay; memory is bounded however long the sequence grows. */
static void test_window(void **state) {
    (void)state;
    kv_cache_params p;
    kv_cache_params_default(&p, NL, DIM, CTX, 2);
    p.block_tokens = BT;
    p.policy.kind = KV_POLICY_WINDOW;
    p.policy.window = 40;
    p.policy.sinks = 4;
    p.memory_bytes = 8ull * NL * 2 * BT * DIM * 4;
    kv_cache *kv = kv_cache_create_params(&p, NULL, 0);
    assert_non_null(kv);
    int32_t a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_max_len(kv, a) > CTX, 1);
    float k[DIM], v[DIM];
    int64_t max_used = 0;
    for (int32_t pos = 0; pos < 1000; pos++) {
        assert_int_equal(kv_cache_seq_reserve(kv, a, pos + 1), 0);
        for (int l = 0; l < NL; l++) {
            for (int i = 0; i < DIM; i++) { k[i] = val(l, pos, i, 0); v[i] = val(l, pos, i, 1); }
            kv_cache_store(kv, a, l, pos, k, v);
        }
        int32_t t = pos;
        kv_cache_seq_commit(kv, a, &t, 1);
        kv_cache_stats st;
        kv_cache_stats_get(kv, &st);
        if (st.blocks_used > max_used) max_used = st.blocks_used;
    }
    /* 1 sink block + ceil(40/16)+1 window blocks. */
    assert_true(max_used <= 5);
    assert_int_equal(kv_cache_seq_len(kv, a), 1000);
    assert_true(kv_cache_seq_held(kv, a) <= 16 + 40 + 16);
    check_range(kv, a, 0, 4, 0);
    check_range(kv, a, 1000 - 40, 1000, 0);
    /* n > 1 on a window sequence: the copy shares what is held, dropped
     * blocks stay dropped; a shorter copy cannot exist. */
    int32_t b = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 999), -EINVAL);
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 1000), 0);
    assert_int_equal(kv_cache_seq_held(kv, b), kv_cache_seq_held(kv, a));
    check_range(kv, b, 1000 - 40, 1000, 0);
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    assert_true(st.blocks_used <= 5);
    /* Truncating into the dropped middle empties the sequence. */
    kv_cache_seq_truncate(kv, b, 500);
    assert_int_equal(kv_cache_seq_len(kv, b), 0);
    kv_cache_seq_truncate(kv, a, 999); /* every key query 999 sees is held */
    assert_int_equal(kv_cache_seq_len(kv, a), 999);
    check_range(kv, a, 999 - 39, 999, 0);
    kv_cache_seq_free(kv, b);
    kv_policy_cfg bad = {.kind = KV_POLICY_WINDOW, .window = 0, .sinks = 0};
    assert_int_equal(kv_cache_seq_set_policy(kv, a, &bad, 0), -EINVAL);
    kv_policy_cfg ok = {.kind = KV_POLICY_FULL};
    assert_int_equal(kv_cache_seq_set_policy(kv, a, &ok, 0), -EBUSY);
    kv_cache_seq_free(kv, a);
    kv_cache_free(kv);
}

/* f16, q8_0 and q12_0 rows read back within their precision. */
static void test_types(void **state) {
    (void)state;
    const enum kv_type types[3] = {KV_F16, KV_Q8_0, KV_Q12_0};
    const float tol[3] = {1e-3f, 1.0f / 100.0f, 1.0f / 1500.0f};
    for (int ti = 0; ti < 3; ti++) {
        kv_cache *kv = make(1, 0, types[ti]);
        assert_int_equal(kv_cache_type(kv), types[ti]);
        int32_t a = kv_cache_seq_create(kv);
        fill(kv, a, 0, 50);
        check_range(kv, a, 0, 50, tol[ti]);
        kv_cache_free(kv);
    }
    assert_int_equal(kv_type_from_name("q8_0"), KV_Q8_0);
    assert_int_equal(kv_type_from_name("q12_0"), KV_Q12_0);
    assert_string_equal(kv_type_name(KV_Q12_0), "q12_0");
    assert_int_equal(kv_type_from_name("f16"), KV_F16);
    assert_int_equal(kv_type_from_name("f64"), -1);
    assert_int_equal(kv_policy_from_name("window"), KV_POLICY_WINDOW);
    kv_cache_params p;
    kv_cache_params_default(&p, NL, DIM, CTX, 1);
    p.memory_bytes = 10; /* less than 2 blocks */
    char err[256] = "";
    assert_null(kv_cache_create_params(&p, err, sizeof err));
    assert_non_null(strstr(err, "budget"));
}

/* q8_0 / q12_0 rows of signed values of very different magnitudes per head
 * (head_dim 8: a scale each): every value within one step (amax / qmax: the
 * scale search may clip the largest by under a step) of its group, and reading from an odd column (the scalar path) gives
 * exactly what reading from column 0 (the vector path) gives. */
static void test_quant_rows(void **state) {
    (void)state;
    enum { QD = 72, QHD = 8 };
    const enum kv_type types[2] = {KV_Q8_0, KV_Q12_0};
    const float qmax[2] = {127.0f, 2047.0f};
    for (int ti = 0; ti < 2; ti++) {
        kv_cache_params p;
        kv_cache_params_default(&p, 1, QD, 32, 1);
        p.type = types[ti];
        p.head_dim = QHD;
        kv_cache *kv = kv_cache_create_params(&p, NULL, 0);
        assert_non_null(kv);
        int32_t a = kv_cache_seq_create(kv);
        assert_int_equal(kv_cache_seq_reserve(kv, a, 20), 0);
        float k[20][QD], v[QD] = {0};
        uint64_t r = 12345 + (uint64_t)ti;
        for (int pos = 0; pos < 20; pos++) {
            for (int i = 0; i < QD; i++) {
                r = r * 6364136223846793005ULL + 1442695040888963407ULL;
                float u = (float)(r >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
                k[pos][i] = u * powf(10.0f, (float)((i / QHD) % 5) - 2.0f); /* 1e-2 .. 1e2 per head */
            }
            kv_cache_store(kv, a, 0, pos, k[pos], v);
        }
        kv_cache_seq_set_len(kv, a, 20);
        float row[QD], row1[QD];
        for (int pos = 0; pos < 20; pos++) {
            kv_span sp;
            kv_cache_span_get(kv, a, 0, pos, &sp);
            kv_span_rows_f32(&sp, sp.k, 1, 0, QD, row);
            kv_span_rows_f32(&sp, sp.k, 1, 1, QD - 1, row1);
            for (int g = 0; g < QD / QHD; g++) {
                float amax = 0;
                for (int i = g * QHD; i < (g + 1) * QHD; i++) amax = fmaxf(amax, fabsf(k[pos][i]));
                for (int i = g * QHD; i < (g + 1) * QHD; i++) {
                    assert_true(fabsf(row[i] - k[pos][i]) <= amax / qmax[ti]);
                    if (i > 0) assert_true(row1[i - 1] == row[i]);
                }
            }
        }
        kv_cache_free(kv);
    }
}

/* Randomised: sequences grow from a few shared token stems (prefix hits),
 * are truncated, shared (n > 1) and freed on a 40-block pool (eviction);
 * every stored value is a function of the whole token prefix, so every
 * live sequence must read back exactly what its own tokens imply, and the
 * block counts must always add up. */
enum { RB = 4, RSEQ = 6, RMAX = 64 };
static float rval(const int32_t *toks, int32_t p, int layer, int i, int kv) {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t j = 0; j <= p; j++) h = (h ^ (uint64_t)(uint32_t)toks[j]) * 1099511628211ULL;
    return (float)((h >> 40) % 100000) + (float)(layer * 10 + kv) * 0.5f + (float)i * 0.001f;
}

static void randomised(int window, uint64_t seed) {
    kv_cache_params p;
    kv_cache_params_default(&p, 2, 8, RMAX, RSEQ);
    p.block_tokens = RB;
    if (window) {
        p.policy.kind = KV_POLICY_WINDOW;
        p.policy.window = 10;
        p.policy.sinks = 3;
    }
    p.memory_bytes = 40ull * 2 * 2 * RB * 8 * 4;
    kv_cache *kv = kv_cache_create_params(&p, NULL, 0);
    assert_non_null(kv);
    int32_t toks[RSEQ][RMAX], len[RSEQ], live[RSEQ] = {0};
    uint64_t rng = seed;
#define RND(n) ((int32_t)((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 33) % (n))
    float k[8], v[8], row[8];
    for (int step = 0; step < 4000; step++) {
        int op = RND(10);
        int32_t id = RND(RSEQ);
        int32_t sid = -1;
        for (int32_t q = 0; q < RSEQ; q++) if (live[q] && q == id) sid = q;
        if (op < 2 && sid < 0) {
            /* New sequence: a stem (0..2) then random tokens; attach. */
            int32_t s = kv_cache_seq_create(kv);
            if (s < 0) continue;
            int32_t stem = RND(3), n = 1 + RND(RMAX - 1);
            for (int32_t j = 0; j < n; j++) toks[s][j] = j < 20 ? stem * 100 + j : RND(5);
            int32_t got = kv_cache_seq_attach_prefix(kv, s, toks[s], n);
            assert_true(got >= 0 && got <= n - 1 && (got % RB == 0 || got == n - 1));
            len[s] = got;
            live[s] = 1;
        } else if (op < 6 && sid >= 0) {
            /* Append up to 8 tokens (continuing the stem pattern or random). */
            int32_t n = 1 + RND(8);
            if (!window && len[sid] + n > RMAX) n = RMAX - len[sid];
            if (len[sid] + n > RMAX) continue; /* window: the token arrays end here */
            if (n <= 0) continue;
            for (int32_t j = len[sid]; j < len[sid] + n; j++)
                if (j >= kv_cache_seq_len(kv, sid)) toks[sid][j] = RND(2) ? toks[sid][j > 0 ? j - 1 : 0] + 1 : RND(5);
            int64_t need = kv_cache_seq_blocks_needed(kv, sid, n);
            int64_t avail = kv_cache_blocks_available(kv);
            int rc = kv_cache_seq_reserve(kv, sid, len[sid] + n);
            if (need > avail) { assert_int_equal(rc, -ENOMEM); continue; }
            assert_int_equal(rc, 0);
            for (int32_t pos = len[sid]; pos < len[sid] + n; pos++)
                for (int l = 0; l < 2; l++) {
                    for (int i = 0; i < 8; i++) { k[i] = rval(toks[sid], pos, l, i, 0); v[i] = rval(toks[sid], pos, l, i, 1); }
                    kv_cache_store(kv, sid, l, pos, k, v);
                }
            kv_cache_seq_commit(kv, sid, toks[sid] + len[sid], n);
            len[sid] += n;
        } else if (op == 6 && sid >= 0) {
            int32_t n = RND(len[sid] + 1);
            kv_cache_seq_truncate(kv, sid, n);
            len[sid] = kv_cache_seq_len(kv, sid); /* window: 0 when the middle is gone */
            assert_true(len[sid] == n || (window && len[sid] == 0));
        } else if (op == 7 && sid >= 0) {
            int32_t d = kv_cache_seq_create(kv);
            if (d < 0) continue;
            int32_t n = window ? len[sid] : RND(len[sid] + 1);
            assert_int_equal(kv_cache_seq_copy(kv, d, sid, n), 0);
            memcpy(toks[d], toks[sid], sizeof toks[d]);
            len[d] = n;
            live[d] = 1;
        } else if (op >= 8 && sid >= 0) {
            kv_cache_seq_free(kv, sid);
            live[sid] = 0;
        }
        /* Invariants. */
        kv_cache_stats st;
        kv_cache_stats_get(kv, &st);
        assert_true(st.blocks_used >= 0 && st.blocks_cached >= 0 && st.blocks_used + st.blocks_cached <= st.blocks_total);
        uint64_t needed = 0;
        for (int32_t q = 0; q < RSEQ; q++) {
            if (!live[q]) continue;
            assert_int_equal(kv_cache_seq_len(kv, q), len[q]);
            needed += (uint64_t)kv_cache_seq_held(kv, q) * kv_cache_bytes_per_token(kv);
            if (window) assert_true(kv_cache_seq_held(kv, q) <= 3 + 10 + 2 * RB);
            if (step % 7) continue; /* full read-back every 7th step */
            for (int32_t pos = 0; pos < len[q]; pos++)
                for (int l = 0; l < 2; l++) {
                    /* Held for sure: the sinks and what the next query sees (j > len - window). */
                    if (window && pos >= 3 && pos < len[q] - 10 + 1) continue;
                    kv_span sp;
                    kv_cache_span_get(kv, q, l, pos, &sp);
                    kv_span_rows_f32(&sp, sp.k, 1, 0, 8, row);
                    for (int i = 0; i < 8; i++) assert_true(row[i] == rval(toks[q], pos, l, i, 0));
                    kv_span_rows_f32(&sp, sp.v, 1, 0, 8, row);
                    for (int i = 0; i < 8; i++) assert_true(row[i] == rval(toks[q], pos, l, i, 1));
                }
        }
        assert_int_equal(st.bytes_needed, needed);
    }
#undef RND
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    print_message("randomised (%s): %llu of %llu looked-up tokens were prefix hits\n", window ? "window" : "full",
                  (unsigned long long)st.prefix_hit_tokens,
                  (unsigned long long)st.prefix_lookup_tokens);
    assert_true(st.prefix_hit_tokens > 0);
    for (int32_t q = 0; q < RSEQ; q++) kv_cache_seq_free(kv, q);
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.blocks_used, 0);
    kv_cache_free(kv);
}

/* Memory the OS backs for a sequence's blocks: only the pages its written
 * rows touched in a partly filled last block (rows of 1 KiB, each layer's
 * K and V region of a block 4 pages), whole blocks once full, pages of a
 * freed block given back before another sequence reuses it. */
static void resident_fill(kv_cache *kv, int32_t seq, int32_t to) {
    float k[256], v[256];
    for (int i = 0; i < 256; i++) k[i] = v[i] = (float)i;
    int32_t from = kv_cache_seq_len(kv, seq), toks[64];
    assert_int_equal(kv_cache_seq_reserve(kv, seq, to), 0);
    for (int32_t p = from; p < to; p++) {
        for (int l = 0; l < 2; l++) kv_cache_store(kv, seq, l, p, k, v);
        toks[p - from] = p;
    }
    kv_cache_seq_commit(kv, seq, toks, to - from);
}

static void test_resident(void **state) {
    (void)state;
    kv_cache_params p;
    kv_cache_params_default(&p, 2, 256, 64, 2);
    p.block_tokens = 16;
    p.prefix_cache = 0;
    kv_cache *kv = kv_cache_create_params(&p, NULL, 0);
    assert_non_null(kv);
    const uint64_t block = 2 * 2 * 16 * 256 * sizeof(float), quarter = block / 4;
    int32_t a = kv_cache_seq_create(kv);
    assert_int_equal(kv_cache_bytes_resident(kv), 0);
    resident_fill(kv, a, 1);
    assert_int_equal(kv_cache_bytes_resident(kv), quarter); /* one page of each of 4 regions */
    resident_fill(kv, a, 5);
    assert_int_equal(kv_cache_bytes_resident(kv), 2 * quarter);
    resident_fill(kv, a, 16);
    assert_int_equal(kv_cache_bytes_resident(kv), block);
    resident_fill(kv, a, 17);
    assert_int_equal(kv_cache_bytes_resident(kv), block + quarter);
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.bytes_resident, block + quarter);
    assert_int_equal(st.bytes_needed, 17 * kv_cache_bytes_per_token(kv));
    assert_int_equal(st.bytes_allocated, 2 * block);
    kv_cache_seq_free(kv, a);
    assert_int_equal(kv_cache_bytes_resident(kv), 0);
    /* The freed blocks' pages went back: a new sequence's first row costs a page per region again. */
    int32_t b = kv_cache_seq_create(kv);
    resident_fill(kv, b, 1);
    assert_int_equal(kv_cache_bytes_resident(kv), quarter);
    kv_cache_free(kv);
}

static void test_randomised(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        randomised(0, seed * 12345);
        randomised(1, seed * 12345);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),     cmocka_unit_test(test_copy_on_write),
        cmocka_unit_test(test_prefix_cache),  cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_window),        cmocka_unit_test(test_types),
        cmocka_unit_test(test_quant_rows),    cmocka_unit_test(test_resident),
        cmocka_unit_test(test_randomised),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
