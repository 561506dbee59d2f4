/* test_scheduler.c -- the scheduler on a real libuv loop with the real engine
 * (stories260K from ../shared; skipped when absent): batched choices sharing
 * a prompt, chunked prefill, stop strings held back, FIFO queue and its limit,
 * cancellation, embeddings. Callbacks are counted and every test checks that
 * the loop ends clean. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "grammar/grammar.h"
#include "scheduler.h"
#include "sse.h"

static engine *eng;
static int32_t ref_prompt[64], ref_prompt_len;
static char ref_text[512];
static int32_t ref2_prompt[64], ref2_prompt_len;
static char ref2_text[512];

typedef struct run {
    sse_buf text[8];
    const char *finish[8];
    int32_t n_tokens[8];
    int n_text_calls, n_token_calls, n_finish, n_done, n_embd;
    int err_status;
    float embd[2][512];
    int32_t embd_n;
} run;

static void on_token(void *u, int32_t c, int32_t tok, const sampler_result *r) { ((run *)u)->n_token_calls++; }
static void on_text(void *u, int32_t c, const char *t, size_t n) {
    run *r = u;
    r->n_text_calls++;
    sse_buf_append(&r->text[c], t, n);
}
static void on_finish(void *u, int32_t c, const char *reason, int32_t n) {
    run *r = u;
    r->finish[c] = reason;
    r->n_tokens[c] = n;
    r->n_finish++;
}
static void on_done(void *u, const api_error *e) {
    run *r = u;
    r->n_done++;
    r->err_status = e ? e->status : 0;
}
static void on_embd(void *u, int32_t i, const float *v, int32_t n) {
    run *r = u;
    r->n_embd++;
    if (i < 2) memcpy(r->embd[i], v, (size_t)n * sizeof(float));
    r->embd_n = n;
}
static const sched_job_ops ops = {.on_token = on_token, .on_text = on_text, .on_finish = on_finish, .on_embd = on_embd, .on_done = on_done};

static void run_free(run *r) {
    for (int i = 0; i < 8; i++) sse_buf_free(&r->text[i]);
}

static int32_t *dup_tokens(const int32_t *t, int32_t n) {
    int32_t *p = malloc((size_t)n * sizeof(int32_t));
    memcpy(p, t, (size_t)n * sizeof(int32_t));
    return p;
}

static sched_job_spec greedy_spec(const int32_t *prompt, int32_t len, int32_t n, int32_t max_tokens,
                                  int32_t **slot, int32_t *lenslot) {
    sched_job_spec s;
    memset(&s, 0, sizeof s);
    s.kind = SCHED_GENERATE;
    s.n_prompts = 1;
    *slot = dup_tokens(prompt, len);
    *lenslot = len;
    s.prompts = slot;
    s.prompt_len = lenslot;
    s.n = n;
    s.max_tokens = max_tokens;
    sampler_params_default(&s.sp);
    s.sp.temperature = 0;
    return s;
}

static int load_ref(void) {
    const char *shared = getenv("QKVD_SHARED") ? getenv("QKVD_SHARED") : "../shared";
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/model-outputs.json", shared);
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, NULL);
    if (!root) return -1;
    json_t *cases = json_object_get(json_object_get(root, "models"), "stories260K.gguf");
    for (int k = 0; k < 2; k++) {
        json_t *c = json_array_get(cases, (size_t)k);
        json_t *pt = json_object_get(c, "prompt_tokens");
        int32_t *dst = k ? ref2_prompt : ref_prompt;
        for (size_t i = 0; i < json_array_size(pt) && i < 64; i++) dst[i] = (int32_t)json_integer_value(json_array_get(pt, i));
        if (k) ref2_prompt_len = (int32_t)json_array_size(pt); else ref_prompt_len = (int32_t)json_array_size(pt);
        snprintf(k ? ref2_text : ref_text, 512, "%s", json_string_value(json_object_get(c, "text")));
    }
    json_decref(root);
    return 0;
}

static int setup(void **state) {
    const char *shared = getenv("QKVD_SHARED") ? getenv("QKVD_SHARED") : "../shared";
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared);
    if (access(path, R_OK) || load_ref()) {
        printf("skip: %s or its reference outputs not found\n", path);
        return 0;
    }
    engine_params p;
    engine_params_default(&p);
    p.model_path = path;
    p.n_threads = 1;
    p.max_seqs = 4;
    p.max_batch_tokens = 64;
    if (engine_load(&p, &eng, err, sizeof err) < 0) {
        printf("engine_load: %s\n", err);
        eng = NULL;
    }
    return 0;
}

static int teardown(void **state) {
    engine_free(eng);
    return 0;
}

static void loop_finish(uv_loop_t *loop, sched *s) {
    uv_run(loop, UV_RUN_DEFAULT);
    assert_false(sched_busy(s));
    sched_destroy(s);
    assert_int_equal(uv_loop_close(loop), 0);
}

/* n = 3 greedy choices share one prefill; all equal the reference text. */
static void test_n_choices_greedy(void **state) {
    if (!eng) skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 64, 4);
    sched_set_engine(s, eng);
    run r = {0};
    int32_t *slot, len;
    sched_job_spec spec = greedy_spec(ref_prompt, ref_prompt_len, 3, 12, &slot, &len);
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &spec, &ops, &r, &j, &e), 0);
    loop_finish(&loop, s);
    assert_int_equal(r.n_done, 1);
    assert_int_equal(r.err_status, 0);
    assert_int_equal(r.n_finish, 3);
    assert_int_equal(r.n_token_calls, 3 * 12);
    for (int c = 0; c < 3; c++) {
        assert_string_equal(r.finish[c], "length");
        assert_int_equal(r.n_tokens[c], 12);
        assert_true(r.text[c].len > 10);
        assert_memory_equal(r.text[c].data, ref_text, r.text[c].len);
    }
    run_free(&r);
}

/* A prompt longer than the step budget is prefilled in chunks, side by side
 * with another job's decode steps, and both still match the reference. */
static void test_chunked_prefill_and_batching(void **state) {
    if (!eng) skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 4, 4); /* 4 tokens per step */
    sched_set_engine(s, eng);
    run r1 = {0}, r2 = {0};
    int32_t *slot1, len1, *slot2, len2;
    sched_job_spec a = greedy_spec(ref_prompt, ref_prompt_len, 1, 10, &slot1, &len1);
    sched_job_spec b = greedy_spec(ref2_prompt, ref2_prompt_len, 1, 10, &slot2, &len2);
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &a, &ops, &r1, &j, &e), 0);
    assert_int_equal(sched_submit(s, &b, &ops, &r2, &j, &e), 0);
    loop_finish(&loop, s);
    assert_int_equal(r1.n_done + r2.n_done, 2);
    assert_memory_equal(r1.text[0].data, ref_text, r1.text[0].len);
    assert_memory_equal(r2.text[0].data, ref2_text, r2.text[0].len);
    assert_true(r2.text[0].len > 10);
    run_free(&r1);
    run_free(&r2);
}

/* Stop strings: the text ends right before the first match, even when the
 * match spans tokens; nothing of it is ever emitted. */
static void test_stop_string(void **state) {
    if (!eng) skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 64, 4);
    sched_set_engine(s, eng);
    run r = {0};
    int32_t *slot, len;
    sched_job_spec spec = greedy_spec(ref_prompt, ref_prompt_len, 1, 30, &slot, &len);
    const char *stops[2] = {"zzz", "le gir"};
    size_t stop_len[2] = {3, 6};
    spec.n_stop = 2;
    spec.stop = stops;
    spec.stop_len = stop_len;
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &spec, &ops, &r, &j, &e), 0);
    loop_finish(&loop, s);
    const char *want = ", there was a litt";
    assert_int_equal(r.text[0].len, strlen(want));
    assert_memory_equal(r.text[0].data, want, strlen(want));
    assert_string_equal(r.finish[0], "stop");
    run_free(&r);
}

/* Grammar hooks: a whole-output grammar (n = 2, every choice its own
 * matcher) ends with "stop" as soon as nothing more is allowed; a lazy
 * grammar takes over after its trigger appears in the free output. */
static void test_grammar_hooks(void **state) {
    if (!eng) skip();
    grammar_vocab *gv = grammar_vocab_create(engine_tokenizer(eng));
    assert_non_null(gv);
    grammar *g = NULL, *lazy = NULL;
    char err[256];
    const char *full = "root ::= (\"yes\" | \"no\") \"!\"";
    const char *rest = "root ::= \" BIG\" [a-z ]{0,12} \".\"";
    assert_int_equal(grammar_compile_gbnf(full, strlen(full), &g, err, sizeof err), 0);
    assert_int_equal(grammar_compile_gbnf(rest, strlen(rest), &lazy, err, sizeof err), 0);

    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 64, 4);
    sched_set_engine(s, eng);
    run r1 = {0}, r2 = {0};
    int32_t *slot1, len1, *slot2, len2;
    sched_job_spec a = greedy_spec(ref_prompt, ref_prompt_len, 2, 30, &slot1, &len1);
    a.sp.temperature = 1;
    a.sp.seed = 3;
    a.grammar = g;
    a.gvocab = gv;
    sched_job_spec b = greedy_spec(ref_prompt, ref_prompt_len, 1, 40, &slot2, &len2);
    b.lazy_grammar = lazy;
    b.trigger = "was";
    b.trigger_len = 3;
    b.gvocab = gv;
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &a, &ops, &r1, &j, &e), 0);
    assert_int_equal(sched_submit(s, &b, &ops, &r2, &j, &e), 0);
    grammar_release(g); /* the jobs hold their own references */
    grammar_release(lazy);
    loop_finish(&loop, s);
    for (int c = 0; c < 2; c++) {
        sse_buf_append(&r1.text[c], "", 1);
        assert_true(!strcmp(r1.text[c].data, "yes!") || !strcmp(r1.text[c].data, "no!"));
        assert_string_equal(r1.finish[c], "stop");
    }
    sse_buf_append(&r2.text[0], "", 1);
    const char *t = r2.text[0].data;
    /* greedy free text up to the trigger (the reference story), then the grammar */
    assert_memory_equal(t, ", there was BIG", strlen(", there was BIG"));
    assert_int_equal(t[strlen(t) - 1], '.');
    assert_string_equal(r2.finish[0], "stop");
    run_free(&r1);
    run_free(&r2);
    grammar_vocab_free(gv);
}

/* FIFO queue: jobs wait for sequences; beyond queue_len a 503; a cancelled
 * job gets no callbacks and returns its sequences. */
static void test_queue_and_cancel(void **state) {
    if (!eng) skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 64, 1);
    sched_set_engine(s, eng);
    run r1 = {0}, r2 = {0}, r3 = {0}, r4 = {0};
    int32_t *s1, l1, *s2, l2, *s3, l3, *s4, l4;
    sched_job_spec a = greedy_spec(ref_prompt, ref_prompt_len, 4, 6, &s1, &l1); /* all 4 sequences */
    sched_job_spec b = greedy_spec(ref_prompt, ref_prompt_len, 1, 6, &s2, &l2);
    sched_job_spec c = greedy_spec(ref_prompt, ref_prompt_len, 1, 6, &s3, &l3);
    sched_job_spec too_big = greedy_spec(ref_prompt, ref_prompt_len, 5, 6, &s4, &l4);
    sched_job *ja, *jb, *jc, *jd;
    api_error e;
    assert_int_equal(sched_submit(s, &too_big, &ops, &r4, &jd, &e), -1);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "n");
    assert_int_equal(sched_submit(s, &a, &ops, &r1, &ja, &e), 0);
    assert_int_equal(sched_submit(s, &b, &ops, &r2, &jb, &e), 0); /* waits */
    assert_int_equal(sched_submit(s, &c, &ops, &r3, &jc, &e), -1);
    assert_int_equal(e.status, 503);
    assert_string_equal(e.code, "queue_full");
    assert_int_equal(sched_n_queued(s), 1);
    sched_job_cancel(s, ja);                /* its step is in flight: freed after it */
    loop_finish(&loop, s);
    assert_int_equal(r1.n_done + r1.n_finish + r1.n_text_calls, 0);
    assert_int_equal(r2.n_done, 1);
    assert_memory_equal(r2.text[0].data, ref_text, r2.text[0].len);
    run_free(&r1);
    run_free(&r2);
}

/* Embeddings: unit length, identical for identical inputs, different otherwise. */
static void test_embeddings(void **state) {
    if (!eng) skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 4, 64, 4);
    sched_set_engine(s, eng);
    run r = {0};
    int32_t *prompts[3] = {dup_tokens(ref_prompt, ref_prompt_len), dup_tokens(ref2_prompt, ref2_prompt_len),
                           dup_tokens(ref_prompt, ref_prompt_len)};
    int32_t lens[3] = {ref_prompt_len, ref2_prompt_len, ref_prompt_len};
    sched_job_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.kind = SCHED_EMBED;
    spec.n_prompts = 3;
    spec.prompts = prompts;
    spec.prompt_len = lens;
    spec.n = 1;
    sampler_params_default(&spec.sp);
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &spec, &ops, &r, &j, &e), 0);
    loop_finish(&loop, s);
    assert_int_equal(r.n_embd, 3);
    assert_int_equal(r.n_done, 1);
    double n0 = 0, dot = 0;
    for (int32_t i = 0; i < r.embd_n; i++) {
        n0 += (double)r.embd[0][i] * r.embd[0][i];
        dot += (double)r.embd[0][i] * r.embd[1][i];
    }
    assert_true(fabs(sqrt(n0) - 1.0) < 1e-4);
    assert_true(dot < 0.9999);
    run_free(&r);
}

static engine *load_budget_type(uint64_t kv_bytes, int prefix, int kv_type) {
    const char *shared = getenv("QKVD_SHARED") ? getenv("QKVD_SHARED") : "../shared";
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared);
    engine_params p;
    engine_params_default(&p);
    p.model_path = path;
    p.n_threads = 1;
    p.max_seqs = 8;
    p.max_batch_tokens = 64;
    p.kv_memory_bytes = kv_bytes;
    p.kv_no_prefix_cache = !prefix;
    p.kv_type = kv_type;
    engine *e = NULL;
    if (engine_load(&p, &e, err, sizeof err) < 0) print_message("engine_load: %s\n", err);
    return e;
}

static engine *load_budget(uint64_t kv_bytes, int prefix) { return load_budget_type(kv_bytes, prefix, ENGINE_KV_F32); }

/* Four jobs (one with n = 2) generating 80 tokens each on engine e;
 * texts go to r[0..3]. Returns the scheduler's pre-emption count. */
static uint64_t run_four(engine *e, run *r, int32_t prefill_chunk) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 8, 64, 8);
    sched_set_limits(s, 0, prefill_chunk);
    sched_set_engine(s, e);
    for (int k = 0; k < 4; k++) {
        int32_t *slot, len;
        sched_job_spec spec = k % 2 ? greedy_spec(ref2_prompt, ref2_prompt_len, k == 3 ? 2 : 1, 80, &slot, &len)
                                    : greedy_spec(ref_prompt, ref_prompt_len, 1, 80, &slot, &len);
        if (k == 2) { /* a sampled job: its RNG must survive pre-emption too */
            spec.sp.temperature = 0.9f;
            spec.sp.seed = 1234;
        }
        sched_job *j;
        api_error e2;
        assert_int_equal(sched_submit(s, &spec, &ops, &r[k], &j, &e2), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(sched_busy(s));
    uint64_t n = sched_n_preemptions(s);
    sched_destroy(s);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(r[k].n_done, 1);
        assert_int_equal(r[k].err_status, 0);
    }
    return n;
}

/* KV blocks run out mid-generation: the newest jobs are pre-empted and
 * recomputed, and every text (greedy and sampled, n = 2 included) equals a
 * run with plenty of memory; with and without the prefix cache, on every
 * cache element type (the recomputed rows are stored, rounded, again). */
static void check_preemption_same_output(int kv_type) {
    engine *big = load_budget_type(0, 1, kv_type);
    assert_non_null(big);
    run want[4];
    memset(want, 0, sizeof want);
    assert_int_equal(run_four(big, want, 64), 0);
    engine_kv_stats st;
    engine_kv_stats_get(big, &st);
    assert_int_equal(st.blocks_used, 0);
    /* 12 blocks of 16 tokens: 5 sequences of up to ~100 tokens need ~33. */
    uint64_t budget = 12 * st.bytes_per_block;
    engine_free(big);
    for (int prefix = 0; prefix < 2; prefix++) {
        engine *small = load_budget_type(budget, prefix, kv_type);
        assert_non_null(small);
        run got[4];
        memset(got, 0, sizeof got);
        uint64_t n = run_four(small, got, 8);
        print_message("%s cache, prefix cache %s: %llu pre-emptions\n", engine_kv_type_name(kv_type),
                      prefix ? "on" : "off", (unsigned long long)n);
        assert_true(n > 0);
        for (int k = 0; k < 4; k++)
            for (int c = 0; c < (k == 3 ? 2 : 1); c++) {
                assert_int_equal(got[k].text[c].len, want[k].text[c].len);
                assert_memory_equal(got[k].text[c].data, want[k].text[c].data, want[k].text[c].len);
                assert_int_equal(got[k].n_tokens[c], want[k].n_tokens[c]);
            }
        engine_kv_stats_get(small, &st);
        assert_int_equal(st.blocks_used, 0);
        for (int k = 0; k < 4; k++) run_free(&got[k]);
        engine_free(small);
    }
    for (int k = 0; k < 4; k++) run_free(&want[k]);
}

static void test_preemption_same_output(void **state) {
    if (!eng) skip();
    const int types[4] = {ENGINE_KV_F32, ENGINE_KV_F16, ENGINE_KV_Q8_0, ENGINE_KV_Q12_0};
    for (int i = 0; i < 4; i++) check_preemption_same_output(types[i]);
}

/* A prompt larger than the whole KV pool is refused at submit (400). */
static void test_prompt_exceeds_pool(void **state) {
    if (!eng) skip();
    engine *small = load_budget(3ull * 16 * 5 * 2 * 32 * 4, 1);
    assert_non_null(small);
    uv_loop_t loop;
    uv_loop_init(&loop);
    sched *s = sched_create(&loop, 8, 64, 8);
    sched_set_engine(s, small);
    int32_t toks[64];
    for (int i = 0; i < 64; i++) toks[i] = ref_prompt[i % ref_prompt_len];
    run r = {0};
    int32_t *slot, len;
    sched_job_spec spec = greedy_spec(toks, 64, 1, 4, &slot, &len);
    sched_job *j;
    api_error e;
    assert_int_equal(sched_submit(s, &spec, &ops, &r, &j, &e), -1);
    assert_int_equal(e.status, 400);
    assert_non_null(strstr(e.message, "KV"));
    loop_finish(&loop, s);
    engine_free(small);
}

/* Prompt log-probs recorded per position (each must come exactly once). */
static float lp_val[2][128];
static int lp_count[2][128];
static int lp_which;
static void on_prompt_token(void *u, int32_t prompt, int32_t pos, int32_t tok, const sampler_result *r) {
    if (pos < 128) {
        lp_val[lp_which][pos] = r->logprob;
        lp_count[lp_which][pos]++;
    }
}

/* Two long greedy jobs and a prompt-log-probs job arriving last on a pool
 * too small for all three, prompts fed 8 tokens per step, at most 2
 * running: the log-probs of every prompt position arrive exactly once and
 * equal those of a roomy run; the texts too. */
static void test_preemption_prompt_logprobs(void **state) {
    if (!eng) skip();
    int32_t longp[96];
    for (int i = 0; i < 96; i++) longp[i] = i < ref_prompt_len ? ref_prompt[i] : ref2_prompt[1 + i % (ref2_prompt_len - 1)];
    sched_job_ops lops = ops;
    lops.on_prompt_token = on_prompt_token;
    run want[3], got[3];
    memset(lp_count, 0, sizeof lp_count);
    for (int pass = 0; pass < 2; pass++) {
        run *r = pass ? got : want;
        memset(r, 0, 3 * sizeof *r);
        lp_which = pass;
        engine *e = load_budget(pass ? 14ull * 16 * 5 * 2 * 32 * 4 : 0, 1);
        assert_non_null(e);
        uv_loop_t loop;
        uv_loop_init(&loop);
        sched *s = sched_create(&loop, 8, 64, 8);
        sched_set_limits(s, pass ? 2 : 0, 8);
        sched_set_engine(s, e);
        for (int k = 0; k < 3; k++) {
            int32_t *slot, len;
            sched_job_spec spec = greedy_spec(longp, k == 2 ? 96 : 60 + k, 1, k == 2 ? 20 : 100, &slot, &len);
            spec.prompt_logprobs = k == 2;
            sched_job *j;
            api_error e2;
            assert_int_equal(sched_submit(s, &spec, k == 2 ? &lops : &ops, &r[k], &j, &e2), 0);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_false(sched_busy(s));
        if (pass) print_message("prompt log-probs under pressure: %llu pre-emptions\n", (unsigned long long)sched_n_preemptions(s));
        sched_destroy(s);
        assert_int_equal(uv_loop_close(&loop), 0);
        engine_free(e);
    }
    for (int pos = 1; pos < 96; pos++) {
        assert_int_equal(lp_count[0][pos], 1);
        assert_int_equal(lp_count[1][pos], 1);
        assert_true(fabsf(lp_val[0][pos] - lp_val[1][pos]) < 1e-4f);
    }
    for (int k = 0; k < 3; k++) {
        assert_int_equal(got[k].n_done, 1);
        assert_int_equal(got[k].text[0].len, want[k].text[0].len);
        assert_memory_equal(got[k].text[0].data, want[k].text[0].data, want[k].text[0].len);
        run_free(&got[k]);
        run_free(&want[k]);
    }
}

/* Four requests arriving together with one 80-token prompt: the first
 * computes it, the others wait and take its blocks from the prefix cache
 * (hits >= 3 x 64 tokens), and every output equals a run without the cache. */
static void test_concurrent_shared_prefix(void **state) {
    if (!eng) skip();
    int32_t longp[80];
    for (int i = 0; i < 80; i++) longp[i] = i < ref_prompt_len ? ref_prompt[i] : ref2_prompt[1 + i % (ref2_prompt_len - 1)];
    run r[2][4];
    uint64_t hits[2];
    for (int pc = 0; pc < 2; pc++) {
        memset(r[pc], 0, sizeof r[pc]);
        engine *e = load_budget(0, pc);
        assert_non_null(e);
        uv_loop_t loop;
        uv_loop_init(&loop);
        sched *s = sched_create(&loop, 8, 64, 8);
        sched_set_limits(s, 0, 16);
        sched_set_engine(s, e);
        for (int k = 0; k < 4; k++) {
            int32_t *slot, len;
            sched_job_spec spec = greedy_spec(longp, 80, 1, 20, &slot, &len);
            sched_job *j;
            api_error e2;
            assert_int_equal(sched_submit(s, &spec, &ops, &r[pc][k], &j, &e2), 0);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        sched_destroy(s);
        assert_int_equal(uv_loop_close(&loop), 0);
        engine_kv_stats st;
        engine_kv_stats_get(e, &st);
        hits[pc] = st.prefix_hit_tokens;
        engine_free(e);
    }
    print_message("prefix hits: cache off %llu, on %llu\n", (unsigned long long)hits[0], (unsigned long long)hits[1]);
    assert_int_equal(hits[0], 0);
    assert_true(hits[1] >= 3 * 64);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(r[1][k].n_done, 1);
        assert_int_equal(r[1][k].text[0].len, r[0][k].text[0].len);
        assert_memory_equal(r[1][k].text[0].data, r[0][k].text[0].data, r[0][k].text[0].len);
        assert_memory_equal(r[1][k].text[0].data, r[1][0].text[0].data, r[1][0].text[0].len);
        run_free(&r[0][k]);
        run_free(&r[1][k]);
    }
}

/* Randomised load on a pool too small for it: 8 jobs with varied prompts
 * (shared stems), n = 1 or 2, 10-60 tokens, two of them cancelled mid-run
 * by the "client"; every other output equals a roomy run, and the pool
 * ends with no block in use (ASan: nothing leaks). */
typedef struct cancel_ctx { sched *s; sched_job *j[8]; run *r; int cancel[8], done[8]; } cancel_ctx;
static void cancel_tick(uv_timer_t *t) {
    cancel_ctx *c = t->data;
    int busy = sched_busy(c->s);
    for (int k = 0; k < 8; k++)
        if (c->cancel[k] && !c->done[k] && c->r[k].n_done == 0 && c->r[k].n_text_calls >= 5) {
            sched_job_cancel(c->s, c->j[k]);
            c->done[k] = 1;
        }
    if (!busy) uv_timer_stop(t);
}

static void test_randomised_load(void **state) {
    if (!eng) skip();
    int32_t base[128];
    for (int i = 0; i < 128; i++) base[i] = i < ref_prompt_len ? ref_prompt[i] : ref2_prompt[1 + (i * 7) % (ref2_prompt_len - 1)];
    uint64_t rng = 99;
#define RND(n) ((int32_t)((rng = rng * 6364136223846793005ULL + 1442695040888963407ULL) >> 33) % (n))
    int32_t plen[8], pn[8], pmax[8], pstart[8];
    for (int k = 0; k < 8; k++) {
        plen[k] = 20 + RND(90);
        pn[k] = 1 + RND(2);
        pmax[k] = 10 + RND(50);
        pstart[k] = RND(3) ? 0 : 1 + RND(10);
    }
#undef RND
    run r[2][8];
    for (int pass = 0; pass < 2; pass++) {
        memset(r[pass], 0, sizeof r[pass]);
        engine *e = load_budget(pass ? 16ull * 16 * 5 * 2 * 32 * 4 : 0, 1);
        assert_non_null(e);
        uv_loop_t loop;
        uv_loop_init(&loop);
        sched *s = sched_create(&loop, 8, 64, 8);
        sched_set_limits(s, 0, 16);
        sched_set_engine(s, e);
        cancel_ctx c;
        memset(&c, 0, sizeof c);
        c.s = s;
        c.r = r[pass];
        for (int k = 0; k < 8; k++) {
            int32_t *slot, len;
            sched_job_spec spec = greedy_spec(base + pstart[k], plen[k], pn[k], pmax[k], &slot, &len);
            api_error e2;
            assert_int_equal(sched_submit(s, &spec, &ops, &r[pass][k], &c.j[k], &e2), 0);
            c.cancel[k] = pass && (k == 2 || k == 6);
        }
        uv_timer_t t;
        uv_timer_init(&loop, &t);
        t.data = &c;
        uv_timer_start(&t, cancel_tick, 1, 1);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_close((uv_handle_t *)&t, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        assert_false(sched_busy(s));
        if (pass) print_message("randomised load: %llu pre-emptions, %d jobs cancelled mid-run\n",
                                (unsigned long long)sched_n_preemptions(s), c.done[2] + c.done[6]);
        sched_destroy(s);
        assert_int_equal(uv_loop_close(&loop), 0);
        engine_kv_stats st;
        engine_kv_stats_get(e, &st);
        assert_int_equal(st.blocks_used, 0);
        engine_free(e);
    }
    for (int k = 0; k < 8; k++) {
        if (k != 2 && k != 6) {
            assert_int_equal(r[1][k].n_done, 1);
            assert_int_equal(r[1][k].err_status, 0);
            for (int ch = 0; ch < pn[k]; ch++) {
                assert_int_equal(r[1][k].text[ch].len, r[0][k].text[ch].len);
                assert_memory_equal(r[1][k].text[ch].data, r[0][k].text[ch].data, r[0][k].text[ch].len);
            }
        }
        run_free(&r[0][k]);
        run_free(&r[1][k]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_n_choices_greedy),
        cmocka_unit_test(test_chunked_prefill_and_batching),
        cmocka_unit_test(test_stop_string),
        cmocka_unit_test(test_grammar_hooks),
        cmocka_unit_test(test_queue_and_cancel),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_preemption_same_output),
        cmocka_unit_test(test_prompt_exceeds_pool),
        cmocka_unit_test(test_preemption_prompt_logprobs),
        cmocka_unit_test(test_concurrent_shared_prefix),
        cmocka_unit_test(test_randomised_load),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
