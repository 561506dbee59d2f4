/* test_kv_engine.c -- the paged KV cache under the real engine (models from
 * ../shared; skipped when absent): batch invariance (one sequence alone vs
 * batched with 15 others) and prefix cache on vs off on every cache type,
 * f16 / q8_0 / q12_0 caches vs f32 on teacher-forced log-probs, the window
 * policy's bounded memory, memory accounting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "engine.h"

static const char *shared_dir(void) { return getenv("QKVD_SHARED") ? getenv("QKVD_SHARED") : "../shared"; }

typedef struct ref_case {
    int32_t prompt[128], n_prompt;
    int32_t tokens[64], n_tokens;
} ref_case;

/* The 4 reference cases of model `file` (prompt tokens + greedy tokens). */
static int load_cases(const char *file, ref_case *cases) {
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/model-outputs.json", shared_dir());
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, NULL);
    if (!root) return -1;
    json_t *arr = json_object_get(json_object_get(root, "models"), file);
    int n = 0;
    for (size_t k = 0; k < json_array_size(arr) && k < 4; k++, n++) {
        json_t *c = json_array_get(arr, k);
        json_t *pt = json_object_get(c, "prompt_tokens"), *tt = json_object_get(c, "tokens");
        cases[k].n_prompt = (int32_t)(json_array_size(pt) < 128 ? json_array_size(pt) : 128);
        for (int32_t i = 0; i < cases[k].n_prompt; i++) cases[k].prompt[i] = (int32_t)json_integer_value(json_array_get(pt, (size_t)i));
        cases[k].n_tokens = (int32_t)(json_array_size(tt) < 64 ? json_array_size(tt) : 64);
        for (int32_t i = 0; i < cases[k].n_tokens; i++) cases[k].tokens[i] = (int32_t)json_integer_value(json_array_get(tt, (size_t)i));
    }
    json_decref(root);
    return n;
}

static engine *load(const char *file, int32_t seqs, int kv_type, int prefix, uint64_t kv_bytes) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/models/%s", shared_dir(), file);
    if (access(path, R_OK)) return NULL;
    engine_params p;
    engine_params_default(&p);
    p.model_path = path;
    p.n_threads = 2;
    p.max_seqs = seqs;
    p.max_batch_tokens = 512;
    p.kv_type = kv_type;
    p.kv_no_prefix_cache = !prefix;
    p.kv_memory_bytes = kv_bytes;
    engine *e = NULL;
    if (engine_load(&p, &e, err, sizeof err) < 0) {
        print_message("engine_load: %s\n", err);
        return NULL;
    }
    return e;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy: feed tokens[0..n) into seq (from its current length), then
 * generate n_gen tokens into out. */
static void greedy(engine *e, int32_t seq, const int32_t *tokens, int32_t n, int32_t n_gen, int32_t *out) {
    int32_t V = engine_get_info(e)->n_vocab;
    engine_item it = {.seq = seq, .tokens = tokens, .n_tokens = n, .out = ENGINE_OUT_LAST};
    assert_int_equal(engine_step(e, &it, 1), 0);
    for (int32_t g = 0; g < n_gen; g++) {
        out[g] = argmax(it.logits, V);
        it = (engine_item){.seq = seq, .tokens = &out[g], .n_tokens = 1, .out = ENGINE_OUT_LAST};
        if (g + 1 < n_gen) assert_int_equal(engine_step(e, &it, 1), 0);
    }
}

/* A sequence's greedy tokens are the same alone and in a batch of 16 whose
 * other members are at other positions (prefill chunks mixed with decode),
 * on every cache element type (f32: also the reference tokens). */
static void check_batch_invariance(int kv_type) {
    ref_case cases[4];
    engine *e = load("stories260K.gguf", 16, kv_type, 1, 0);
    if (!e || load_cases("stories260K.gguf", cases) < 4) {
        engine_free(e);
        skip();
    }
    int32_t V = engine_get_info(e)->n_vocab;
    enum { G = 32 };
    int32_t alone[G], batched[16][G];
    int32_t s0 = engine_seq_create(e);
    greedy(e, s0, cases[0].prompt, cases[0].n_prompt, G, alone);
    engine_seq_free(e, s0);
    if (kv_type == ENGINE_KV_F32) assert_memory_equal(alone, cases[0].tokens, sizeof alone); /* the reference */

    int32_t seq[16];
    for (int i = 0; i < 16; i++) seq[i] = engine_seq_create(e);
    engine_item items[16];
    /* Step 1: prompts of sequences 1..15 (varied, some truncated). */
    int n = 0;
    int32_t last[16];
    for (int i = 1; i < 16; i++) {
        const ref_case *c = &cases[i % 4];
        items[n++] = (engine_item){.seq = seq[i], .tokens = c->prompt, .n_tokens = c->n_prompt - (i % 3), .out = ENGINE_OUT_LAST};
    }
    assert_int_equal(engine_step(e, items, n), 0);
    for (int i = 1; i < 16; i++) last[i] = argmax(items[i - 1].logits, V);
    /* Then sequence 0's prompt joins while the others decode; everybody
     * decodes together from there. */
    int32_t pos0 = -1;
    for (int32_t step = 0; pos0 < G; step++) {
        n = 0;
        if (step == 3) items[n++] = (engine_item){.seq = seq[0], .tokens = cases[0].prompt, .n_tokens = cases[0].n_prompt, .out = ENGINE_OUT_LAST};
        else if (pos0 >= 0) items[n++] = (engine_item){.seq = seq[0], .tokens = &batched[0][pos0], .n_tokens = 1, .out = ENGINE_OUT_LAST};
        for (int i = 1; i < 16; i++) items[n++] = (engine_item){.seq = seq[i], .tokens = &last[i], .n_tokens = 1, .out = ENGINE_OUT_LAST};
        assert_int_equal(engine_step(e, items, n), 0);
        int k = 0;
        if (step >= 3) {
            pos0++;
            if (pos0 < G) batched[0][pos0] = argmax(items[k].logits, V);
            k++;
        }
        for (int i = 1; i < 16; i++, k++) last[i] = argmax(items[k].logits, V);
    }
    assert_memory_equal(alone, batched[0], sizeof alone);
    for (int i = 0; i < 16; i++) engine_seq_free(e, seq[i]);
    engine_free(e);
}

static void test_batch_invariance(void **state) {
    const int types[4] = {ENGINE_KV_F32, ENGINE_KV_F16, ENGINE_KV_Q8_0, ENGINE_KV_Q12_0};
    for (int i = 0; i < 4; i++) check_batch_invariance(types[i]);
}

/* Generating with a cached prefix gives the same tokens as without, and the
 * cache reports the reuse: on every cache element type (quantised rows are
 * a function of the f32 ones, which chunking does not change). */
static void check_prefix_on_off(int kv_type) {
    ref_case cases[4];
    if (load_cases("stories260K.gguf", cases) < 4) skip();
    int32_t out[2][2][24];
    for (int on = 0; on < 2; on++) {
        engine *e = load("stories260K.gguf", 2, kv_type, on, 0);
        if (!e) skip();
        /* A first request: prompt + 40 generated tokens. */
        int32_t hist[256], gen[40];
        int32_t n = cases[1].n_prompt;
        memcpy(hist, cases[1].prompt, (size_t)n * sizeof(int32_t));
        int32_t a = engine_seq_create(e);
        greedy(e, a, hist, n, 40, gen);
        engine_seq_free(e, a);
        memcpy(hist + n, gen, sizeof gen);
        n += 40;
        /* A follow-up that starts with all of it (a multi-turn chat), and
         * one that shares only the prompt. */
        for (int k = 0; k < 2; k++) {
            int32_t len = k == 0 ? n : cases[1].n_prompt;
            int32_t b = engine_seq_create(e);
            int32_t reused = engine_seq_attach_prefix(e, b, hist, len);
            if (!on) assert_int_equal(reused, 0);
            else assert_int_equal(reused, k == 0 ? (len - 1) / 16 * 16 : (len - 1) / 16 * 16);
            assert_int_equal(engine_seq_len(e, b), reused);
            greedy(e, b, hist + reused, len - reused, 24, out[on][k]);
            engine_seq_free(e, b);
        }
        engine_kv_stats st;
        engine_kv_stats_get(e, &st);
        if (on) assert_true(st.prefix_hit_tokens > 0);
        else assert_int_equal(st.prefix_hit_tokens, 0);
        assert_int_equal(st.blocks_used, 0);
        engine_free(e);
    }
    assert_memory_equal(out[0], out[1], sizeof out[0]);
}

static void test_prefix_on_off(void **state) {
    const int types[4] = {ENGINE_KV_F32, ENGINE_KV_F16, ENGINE_KV_Q8_0, ENGINE_KV_Q12_0};
    for (int i = 0; i < 4; i++) check_prefix_on_off(types[i]);
}

/* Teacher-forced log-probs of the f16 / q8_0 / q12_0 caches against the f32 cache:
 * of the next token at every step of every case (mean and max), and of the
 * f32 cache's top-5 ids (max, reported). */
static void check_cache_type(const char *file, int kv_type, double bound_mean, double bound_max) {
    ref_case cases[4];
    int nc = load_cases(file, cases);
    engine *ref = load(file, 1, ENGINE_KV_F32, 0, 0), *q = load(file, 1, kv_type, 0, 0);
    if (!ref || !q || nc < 1) {
        print_message("skip %s: model or reference missing\n", file);
        engine_free(ref);
        engine_free(q);
        return;
    }
    int32_t V = engine_get_info(ref)->n_vocab;
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)V * sizeof(float));
    double worst = 0, worst_tf = 0, sum_tf = 0;
    int64_t n_tf = 0;
    for (int c = 0; c < nc; c++) {
        int32_t toks[192], n = cases[c].n_prompt;
        memcpy(toks, cases[c].prompt, (size_t)n * sizeof(int32_t));
        memcpy(toks + n, cases[c].tokens, (size_t)cases[c].n_tokens * sizeof(int32_t));
        n += cases[c].n_tokens;
        engine *es[2] = {ref, q};
        const float *lg[2];
        for (int k = 0; k < 2; k++) {
            int32_t s = engine_seq_create(es[k]);
            engine_item it = {.seq = s, .tokens = toks, .n_tokens = n, .out = ENGINE_OUT_ALL};
            assert_int_equal(engine_step(es[k], &it, 1), 0);
            lg[k] = it.logits;
            engine_seq_free(es[k], s);
        }
        for (int32_t t = 0; t < n; t++) {
            sampler_log_softmax(lg[0] + (size_t)t * V, la, V);
            sampler_log_softmax(lg[1] + (size_t)t * V, lb, V);
            /* The 5 most likely ids under the f32 cache. */
            int32_t top[5] = {-1, -1, -1, -1, -1};
            for (int32_t v = 0; v < V; v++) {
                int k = 5;
                while (k > 0 && (top[k - 1] < 0 || la[v] > la[top[k - 1]])) k--;
                if (k >= 5) continue;
                memmove(top + k + 1, top + k, (size_t)(4 - k) * sizeof(int32_t));
                top[k] = v;
            }
            if (t + 1 < n) {
                double d = fabs((double)la[toks[t + 1]] - lb[toks[t + 1]]);
                if (d > worst_tf) worst_tf = d;
                sum_tf += d;
                n_tf++;
            }
            for (int k = 0; k < 5; k++) {
                double d = fabs((double)la[top[k]] - lb[top[k]]);
                if (d > worst) worst = d;
            }
        }
    }
    print_message("%s: %s cache vs f32 cache, |logprob| difference: next token mean %.5f max %.5f; top-5 max %.5f\n",
                  file, engine_kv_type_name(kv_type), sum_tf / (double)(n_tf ? n_tf : 1), worst_tf, worst);
    assert_true(sum_tf / (double)(n_tf ? n_tf : 1) < bound_mean);
    assert_true(worst_tf < bound_max);
    free(la);
    free(lb);
    engine_free(ref);
    engine_free(q);
}

static void test_q8_f16_logprobs(void **state) {
    const char *models[3] = {"stories260K.gguf", "tiny-llama-gqa-f32.gguf", "tiny-qwen2-f16.gguf"};
    char path[1024];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared_dir());
    if (access(path, R_OK)) {
        print_message("skip test_q8_f16_logprobs: %s not found (../shared absent)\n", path);
        skip();
    }
    for (int m = 0; m < 3; m++) {
        /* Bounds from measurement with margin (docs/kv-cache.md has the
         * figures): f16 and q12_0 are within 0.05 at every step of every
         * model; q8_0's mean is within 0.05, its worst step on these tiny,
         * sharp models is not (8 bits are too few: see the doc). */
        check_cache_type(models[m], ENGINE_KV_Q8_0, 0.05, 0.3);
        check_cache_type(models[m], ENGINE_KV_Q12_0, 0.01, 0.05);
        check_cache_type(models[m], ENGINE_KV_F16, 0.01, 0.05);
    }
}

/* Window policy: a sequence runs past the context with memory bounded by
 * its sinks + window; its text is still produced; set per sequence. */
static void test_window_bounded(void **state) {
    engine *e = load("stories260K.gguf", 2, ENGINE_KV_F32, 1, 0);
    ref_case cases[4];
    if (!e || load_cases("stories260K.gguf", cases) < 1) {
        engine_free(e);
        skip();
    }
    int32_t s = engine_seq_create(e);
    assert_int_equal(engine_seq_set_kv_policy(e, s, ENGINE_KV_WINDOW, 64, 4, 0), 0);
    int32_t n_ctx = engine_get_info(e)->n_ctx;
    assert_true(engine_seq_max_len(e, s) > n_ctx);
    int32_t n_gen = n_ctx + 200;
    int32_t *out = malloc((size_t)n_gen * sizeof(int32_t));
    greedy(e, s, cases[0].prompt, cases[0].n_prompt, n_gen, out);
    engine_kv_stats st;
    engine_kv_stats_get(e, &st);
    /* sinks: 1 block; window 64 = 4 blocks + the one being filled. */
    assert_true(st.blocks_used <= 1 + 5);
    assert_true(engine_seq_len(e, s) > n_ctx);
    assert_true(st.bytes_needed <= (uint64_t)(16 + 64 + 16) * engine_get_info(e)->kv_bytes_per_token);
    /* The window's first tokens equal full attention's (nothing dropped yet). */
    assert_memory_equal(out, cases[0].tokens, 16 * sizeof(int32_t));
    assert_int_equal(engine_seq_set_kv_policy(e, s, ENGINE_KV_FULL, 0, 0, 0), -EBUSY);
    engine_seq_free(e, s);
    free(out);
    engine_free(e);
}

/* Memory accounting: allocated bytes follow the live sequences' tokens
 * (within one partial block each), and a small budget is honoured. */
static void test_memory_accounting(void **state) {
    engine *e = load("stories260K.gguf", 4, ENGINE_KV_Q8_0, 0, 64 * 1024);
    ref_case cases[4];
    if (!e || load_cases("stories260K.gguf", cases) < 4) {
        engine_free(e);
        skip();
    }
    const engine_info *in = engine_get_info(e);
    assert_string_equal(in->kv_type, "q8_0");
    assert_true(in->kv_pool_bytes <= 64 * 1024);
    assert_int_equal(in->kv_tokens, in->kv_blocks * in->kv_block_tokens);
    int32_t s[4];
    engine_item items[4];
    for (int i = 0; i < 4; i++) {
        s[i] = engine_seq_create(e);
        items[i] = (engine_item){.seq = s[i], .tokens = cases[i].prompt, .n_tokens = cases[i].n_prompt, .out = ENGINE_OUT_NONE};
    }
    int64_t need = 0;
    for (int i = 0; i < 4; i++) need += engine_seq_kv_blocks_needed(e, s[i], cases[i].n_prompt);
    assert_true(need <= engine_kv_blocks_available(e));
    assert_int_equal(engine_step(e, items, 4), 0);
    engine_kv_stats st;
    engine_kv_stats_get(e, &st);
    assert_int_equal(st.blocks_used, need);
    assert_true(st.bytes_allocated >= st.bytes_needed);
    assert_true(st.bytes_allocated - st.bytes_needed < 4 * st.bytes_per_block);
    for (int i = 0; i < 4; i++) engine_seq_free(e, s[i]);
    /* Asking for more than the pool holds fails cleanly. */
    int32_t big = engine_seq_create(e);
    int32_t *toks = calloc((size_t)in->kv_tokens + 16, sizeof(int32_t));
    engine_item it = {.seq = big, .tokens = toks, .n_tokens = (int32_t)(in->kv_tokens + 16 < 512 ? in->kv_tokens + 16 : 512), .out = ENGINE_OUT_NONE};
    if (in->kv_tokens + 16 <= 512 && in->kv_tokens + 16 <= in->n_ctx) assert_int_equal(engine_step(e, &it, 1), -ENOMEM);
    free(toks);
    engine_seq_free(e, big);
    engine_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_prefix_on_off),
        cmocka_unit_test(test_q8_f16_logprobs),
        cmocka_unit_test(test_window_bounded),
        cmocka_unit_test(test_memory_accounting),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
