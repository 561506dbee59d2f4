/* test_kv_cache.c -- sequence lifecycle, block growth, spans, truncate, copy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include "kv_cache.h"

enum { NL = 3, DIM = 8, CTX = 200 };

static float val(int layer, int pos, int i, int kv) { return (float)(kv * 100000 + layer * 1000 + pos) + i * 0.01f; }

static void fill(kv_cache *kv, int32_t seq, int32_t from, int32_t to) {
    for (int l = 0; l < NL; l++)
        for (int p = from; p < to; p++) {
            float *k, *v;
            int32_t n = kv_cache_span(kv, seq, l, p, &k, &v);
            assert_true(n >= 1 && n <= KV_BLOCK);
            for (int i = 0; i < DIM; i++) { k[i] = val(l, p, i, 0); v[i] = val(l, p, i, 1); }
        }
}

static void check(const kv_cache *kv, int32_t seq, int32_t n) {
    for (int l = 0; l < NL; l++)
        for (int p = 0; p < n;) {
            float *k, *v;
            int32_t run = kv_cache_span(kv, seq, l, p, &k, &v);
            for (int r = 0; r < run && p + r < n; r++)
                for (int i = 0; i < DIM; i++) {
                    assert_true(k[r * DIM + i] == val(l, p + r, i, 0));
                    assert_true(v[r * DIM + i] == val(l, p + r, i, 1));
                }
            p += run;
        }
}

static void test_lifecycle(void **state) {
    (void)state;
    kv_cache *kv = kv_cache_create(NL, DIM, CTX, 2);
    assert_non_null(kv);
    assert_int_equal(kv_cache_bytes_per_token(kv), NL * 2 * DIM * sizeof(float));
    int32_t a = kv_cache_seq_create(kv), b = kv_cache_seq_create(kv);
    assert_true(a >= 0 && b >= 0 && a != b);
    assert_int_equal(kv_cache_seq_create(kv), -1);
    assert_int_equal(kv_cache_seq_reserve(kv, a, CTX + 1), -ERANGE);
    assert_int_equal(kv_cache_seq_reserve(kv, 7, 1), -EINVAL);
    assert_int_equal(kv_cache_seq_reserve(kv, a, 150), 0);
    fill(kv, a, 0, 150);
    kv_cache_seq_set_len(kv, a, 150);
    assert_int_equal(kv_cache_seq_len(kv, a), 150);
    check(kv, a, 150);
    assert_int_equal(kv_cache_bytes_allocated(kv), 3 * (uint64_t)KV_BLOCK * NL * 2 * DIM * sizeof(float));
    /* Copy a prefix, then truncate the original: the copy is independent. */
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 100), 0);
    assert_int_equal(kv_cache_seq_len(kv, b), 100);
    kv_cache_seq_truncate(kv, a, 10);
    assert_int_equal(kv_cache_seq_len(kv, a), 10);
    check(kv, b, 100);
    check(kv, a, 10);
    assert_int_equal(kv_cache_seq_copy(kv, b, a, 11), -EINVAL); /* longer than src */
    /* Grow again after truncation. */
    assert_int_equal(kv_cache_seq_reserve(kv, a, CTX), 0);
    fill(kv, a, 10, CTX);
    kv_cache_seq_set_len(kv, a, CTX);
    check(kv, a, CTX);
    kv_cache_stats st;
    kv_cache_stats_get(kv, &st);
    assert_int_equal(st.block_tokens, KV_BLOCK);
    assert_int_equal(st.bytes_per_block * (uint64_t)st.blocks_used, st.bytes_allocated);
    assert_int_equal(st.bytes_needed, (uint64_t)(CTX + 100) * kv_cache_bytes_per_token(kv));
    kv_cache_seq_free(kv, b);
    assert_int_equal(kv_cache_seq_len(kv, b), 0);
    assert_true(kv_cache_seq_create(kv) >= 0);
    kv_cache_free(kv);
    kv_cache_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
