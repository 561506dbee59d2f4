/* test_model.c -- the forward pass against the exact references in
 * ../shared/reference/model-outputs.json, decode == batch equivalence,
 * multi-sequence steps, and clear errors for broken model files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "engine.h"
#include "gguf.h"
#include "model.h"

static const char *shared_dir(void) {
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

static json_t *load_reference(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/reference/model-outputs.json", shared_dir());
    json_error_t jerr;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!j) printf("cannot parse %s: %s\n", path, jerr.text);
    return j;
}

static engine *open_engine(const char *file, int32_t max_batch) {
    char path[1024], err[512] = "";
    snprintf(path, sizeof path, "%s/models/%s", shared_dir(), file);
    engine_params p;
    engine_params_default(&p);
    p.model_path = path;
    p.n_threads = 2;
    p.n_ctx = 256;
    p.max_batch_tokens = max_batch;
    p.max_seqs = 4;
    engine *e = NULL;
    int rc = engine_load(&p, &e, err, sizeof err);
    if (rc) fprintf(stderr, "engine_load %s: %s\n", file, err);
    assert_int_equal(rc, 0);
    return e;
}

static void log_softmax(const float *x, int32_t n, double *out) {
    double mx = x[0];
    for (int32_t i = 1; i < n; i++) if (x[i] > mx) mx = x[i];
    double s = 0;
    for (int32_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    double l = mx + log(s);
    for (int32_t i = 0; i < n; i++) out[i] = (double)x[i] - l;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

typedef struct tol { const char *type; double max_err, margin, min_agree; } tol;
static const tol tolerances[] = {
    {"f32", 1e-3, 0.0, 1.0},   {"f16", 2e-2, 0.05, 1.0},  {"bf16", 1e-1, 0.2, 1.0},
    {"q8_0", 0.5, -1, 0.85},   {"q6_k", 0.5, -1, 0.85},   {"q4_k_m", 0.5, -1, 0.85},
    {"q4_0", 0.5, -1, 0.85},
};

static const tol *tol_for(const char *type) {
    for (size_t i = 0; i < sizeof tolerances / sizeof tolerances[0]; i++)
        if (!strcmp(tolerances[i].type, type)) return &tolerances[i];
    return NULL;
}

/* Compare one step's logits with the reference step. Updates max error and
 * agreement counters. margin < 0: argmax counted, not required. */
static void check_step(const float *logits, int32_t V, json_t *step, const tol *t, double *lp,
                       double *max_err, int *agree, int *counted, int *required_fail) {
    log_softmax(logits, V, lp);
    json_t *top = json_object_get(step, "top"), *at = json_object_get(step, "exact_at_top");
    json_t *etop = json_object_get(step, "exact_top");
    for (size_t i = 0; i < json_array_size(top); i++) {
        int32_t id = (int32_t)json_integer_value(json_array_get(json_array_get(top, i), 0));
        double want = json_number_value(json_array_get(at, i));
        double d = fabs(lp[id] - want);
        if (d > *max_err) *max_err = d;
    }
    int32_t best = (int32_t)json_integer_value(json_array_get(json_array_get(etop, 0), 0));
    double m0 = json_number_value(json_array_get(json_array_get(etop, 0), 1));
    double m1 = json_number_value(json_array_get(json_array_get(etop, 1), 1));
    int ok = argmax(logits, V) == best;
    (*counted)++;
    *agree += ok;
    if (t->margin >= 0 && m0 - m1 > t->margin && !ok) (*required_fail)++;
}

/* Every model, every case: teacher forcing as one batch (ENGINE_OUT_ALL)
 * and as incremental decode, against the exact log-probs. */
static void test_reference_outputs(void **state) {
    (void)state;
    json_t *ref = load_reference();
    if (!ref) { printf("skip: %s/reference/model-outputs.json not found\n", shared_dir()); skip(); }
    json_t *models = json_object_get(ref, "models");
    const char *file;
    json_t *cases;
    int n_models = 0;
    json_object_foreach(models, file, cases) {
        engine *e = open_engine(file, 64);
        const engine_info *in = engine_get_info(e);
        const tol *t = tol_for(in->weight_type);
        if (!t) fail_msg("%s: no tolerance for weight type %s", file, in->weight_type);
        int32_t V = in->n_vocab;
        double *lp = malloc((size_t)V * sizeof(double));
        double err_batch = 0, err_dec = 0;
        int agree_b = 0, agree_d = 0, cnt_b = 0, cnt_d = 0, fail_b = 0, fail_d = 0;
        for (size_t c = 0; c < json_array_size(cases); c++) {
            json_t *cs = json_array_get(cases, c);
            json_t *pt = json_object_get(cs, "prompt_tokens"), *gt = json_object_get(cs, "tokens");
            json_t *steps = json_object_get(cs, "steps");
            int32_t np = (int32_t)json_array_size(pt), ng = (int32_t)json_array_size(gt);
            int32_t toks[256], n = 0;
            for (int32_t i = 0; i < np; i++) toks[n++] = (int32_t)json_integer_value(json_array_get(pt, i));
            for (int32_t i = 0; i < ng; i++) toks[n++] = (int32_t)json_integer_value(json_array_get(gt, i));
            /* Batch: prompt + all but the last generated token. */
            int32_t seq = engine_seq_create(e);
            assert_true(seq >= 0);
            engine_item it = {seq, toks, n - 1, ENGINE_OUT_ALL, NULL};
            assert_int_equal(engine_step(e, &it, 1), 0);
            for (int32_t s = 0; s < ng; s++)
                check_step(it.logits + (size_t)(np - 1 + s) * V, V, json_array_get(steps, s), t,
                           lp, &err_batch, &agree_b, &cnt_b, &fail_b);
            engine_seq_free(e, seq);
            /* Incremental: the prompt as one item, then one token per step. */
            seq = engine_seq_create(e);
            engine_item pi = {seq, toks, np, ENGINE_OUT_LAST, NULL};
            assert_int_equal(engine_step(e, &pi, 1), 0);
            check_step(pi.logits, V, json_array_get(steps, 0), t, lp, &err_dec, &agree_d, &cnt_d, &fail_d);
            for (int32_t s = 1; s < ng; s++) {
                engine_item di = {seq, toks + np + s - 1, 1, ENGINE_OUT_LAST, NULL};
                assert_int_equal(engine_step(e, &di, 1), 0);
                check_step(di.logits, V, json_array_get(steps, s), t, lp, &err_dec, &agree_d, &cnt_d, &fail_d);
            }
            assert_int_equal(engine_seq_len(e, seq), n - 1);
            engine_seq_free(e, seq);
        }
        printf("%-28s %-6s batch: max err %.2e argmax %d/%d | decode: max err %.2e argmax %d/%d\n",
               file, in->weight_type, err_batch, agree_b, cnt_b, err_dec, agree_d, cnt_d);
        assert_true(err_batch <= t->max_err);
        assert_true(err_dec <= t->max_err);
        assert_int_equal(fail_b, 0);
        assert_int_equal(fail_d, 0);
        assert_true(agree_b >= t->min_agree * cnt_b);
        assert_true(agree_d >= t->min_agree * cnt_d);
        free(lp);
        engine_free(e);
        n_models++;
    }
    assert_true(n_models >= 1);
    json_decref(ref);
}

/* stories260K, greedy: the reference text exactly. */
static void test_stories_greedy_text(void **state) {
    (void)state;
    json_t *ref = load_reference();
    if (!ref) { printf("skip: reference not found\n"); skip(); }
    json_t *cases = json_object_get(json_object_get(ref, "models"), "stories260K.gguf");
    assert_non_null(cases);
    engine *e = open_engine("stories260K.gguf", 64);
    const tokenizer *tk = engine_tokenizer(e);
    int32_t V = engine_get_info(e)->n_vocab;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *cs = json_array_get(cases, c);
        json_t *pt = json_object_get(cs, "prompt_tokens");
        int32_t toks[256], np = (int32_t)json_array_size(pt), gen[64], ng = 0;
        for (int32_t i = 0; i < np; i++) toks[i] = (int32_t)json_integer_value(json_array_get(pt, i));
        int32_t seq = engine_seq_create(e);
        engine_item it = {seq, toks, np, ENGINE_OUT_LAST, NULL};
        int32_t want = (int32_t)json_array_size(json_object_get(cs, "tokens"));
        while (ng < want) {
            assert_int_equal(engine_step(e, &it, 1), 0);
            gen[ng] = argmax(it.logits, V);
            if (tokenizer_is_eog(tk, gen[ng])) break;
            it.tokens = &gen[ng];
            it.n_tokens = 1;
            ng++;
        }
        char text[2048];
        /* The generated pieces as they stream (no leading-space stripping:
         * the text continues the prompt). */
        int64_t len = 0;
        for (int32_t i = 0; i < ng; i++) {
            int64_t n = tokenizer_token_to_bytes(tk, gen[i], 0, text + len, (int64_t)sizeof text - 1 - len);
            assert_true(n >= 0 && len + n < (int64_t)sizeof text);
            len += n;
        }
        text[len] = 0;
        const char *expect = json_string_value(json_object_get(cs, "text"));
        if (strcmp(text, expect)) fail_msg("case %zu: got '%s' want '%s'", c, text, expect);
        engine_seq_free(e, seq);
    }
    engine_free(e);
    json_decref(ref);
}

/* f32 weights: prefill as one batch == token by token within 1e-4, and two
 * sequences in one step == each alone. */
static void test_batch_equivalence(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/tiny-llama-gqa-f32.gguf", shared_dir());
    if (access(path, R_OK)) { printf("skip: %s not found\n", path); skip(); }
    engine *e = open_engine("tiny-llama-gqa-f32.gguf", 64);
    int32_t V = engine_get_info(e)->n_vocab;
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = 1 + (i * 37 + 11) % (V - 1);
    float *batch = malloc((size_t)40 * V * sizeof(float));
    int32_t s0 = engine_seq_create(e);
    engine_item it = {s0, toks, 40, ENGINE_OUT_ALL, NULL};
    assert_int_equal(engine_step(e, &it, 1), 0);
    memcpy(batch, it.logits, (size_t)40 * V * sizeof(float));
    engine_seq_free(e, s0);
    s0 = engine_seq_create(e);
    double maxd = 0;
    for (int i = 0; i < 40; i++) {
        engine_item d = {s0, toks + i, 1, ENGINE_OUT_LAST, NULL};
        assert_int_equal(engine_step(e, &d, 1), 0);
        for (int32_t j = 0; j < V; j++) {
            double x = fabs(d.logits[j] - batch[(size_t)i * V + j]);
            if (x > maxd) maxd = x;
        }
    }
    printf("prefill batch vs decode: max |dlogit| %.2e\n", maxd);
    assert_true(maxd < 1e-4);
    /* Chunked prefill: ENGINE_OUT_NONE then ENGINE_OUT_LAST (the last layer
     * then runs on the output row alone) == the whole batch. */
    int32_t s3 = engine_seq_create(e);
    engine_item p1 = {s3, toks, 20, ENGINE_OUT_NONE, NULL};
    assert_int_equal(engine_step(e, &p1, 1), 0);
    assert_null(p1.logits);
    engine_item p2 = {s3, toks + 20, 20, ENGINE_OUT_LAST, NULL};
    assert_int_equal(engine_step(e, &p2, 1), 0);
    double maxc = 0;
    for (int32_t j = 0; j < V; j++) maxc = fmax(maxc, fabs(p2.logits[j] - batch[(size_t)39 * V + j]));
    printf("chunked prefill vs batch: max |dlogit| %.2e\n", maxc);
    assert_true(maxc < 1e-4);
    engine_seq_free(e, s3);
    /* Two sequences in one step: s0 continues, s1 starts a different prompt. */
    int32_t s1 = engine_seq_create(e);
    engine_item two[2] = {{s0, toks + 5, 3, ENGINE_OUT_ALL, NULL}, {s1, toks + 20, 7, ENGINE_OUT_LAST, NULL}};
    assert_int_equal(engine_step(e, two, 2), 0);
    float *a = malloc((size_t)4 * V * sizeof(float));
    memcpy(a, two[0].logits, (size_t)3 * V * sizeof(float));
    memcpy(a + (size_t)3 * V, two[1].logits, (size_t)V * sizeof(float));
    /* Same work separately. */
    engine_seq_truncate(e, s0, 40);
    engine_seq_truncate(e, s1, 0);
    assert_int_equal(engine_seq_len(e, s0), 40);
    assert_int_equal(engine_seq_len(e, s1), 0);
    engine_item one = {s0, toks + 5, 3, ENGINE_OUT_ALL, NULL};
    assert_int_equal(engine_step(e, &one, 1), 0);
    maxd = 0;
    for (size_t j = 0; j < (size_t)3 * V; j++) maxd = fmax(maxd, fabs(one.logits[j] - a[j]));
    engine_item other = {s1, toks + 20, 7, ENGINE_OUT_LAST, NULL};
    assert_int_equal(engine_step(e, &other, 1), 0);
    for (int32_t j = 0; j < V; j++) maxd = fmax(maxd, fabs(other.logits[j] - a[(size_t)3 * V + j]));
    printf("two sequences in one step vs separately: max |dlogit| %.2e\n", maxd);
    assert_true(maxd < 1e-4);
    /* seq_copy: a copy continues exactly like the original. */
    int32_t s2 = engine_seq_create(e);
    assert_int_equal(engine_seq_copy(e, s2, s0, 20), 0);
    assert_int_equal(engine_seq_len(e, s2), 20);
    engine_seq_truncate(e, s0, 20);
    engine_item c0 = {s0, toks + 20, 2, ENGINE_OUT_ALL, NULL};
    assert_int_equal(engine_step(e, &c0, 1), 0);
    memcpy(a, c0.logits, (size_t)2 * V * sizeof(float));
    engine_item c2 = {s2, toks + 20, 2, ENGINE_OUT_ALL, NULL};
    assert_int_equal(engine_step(e, &c2, 1), 0);
    for (size_t j = 0; j < (size_t)2 * V; j++) assert_true(fabs(c2.logits[j] - a[j]) < 1e-5);
    /* Bad items fail without changing anything. */
    engine_item dup[2] = {{s0, toks, 1, ENGINE_OUT_LAST, NULL}, {s0, toks, 1, ENGINE_OUT_LAST, NULL}};
    assert_true(engine_step(e, dup, 2) < 0);
    int32_t bad_tok = V;
    engine_item bt = {s0, &bad_tok, 1, ENGINE_OUT_LAST, NULL};
    assert_true(engine_step(e, &bt, 1) < 0);
    assert_int_equal(engine_seq_len(e, s0), 22);
    free(a);
    free(batch);
    engine_free(e);
}

/* ENGINE_OUT_EMBD: unit length, identical for identical input. */
static void test_embeddings(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared_dir());
    if (access(path, R_OK)) { printf("skip: %s not found\n", path); skip(); }
    engine *e = open_engine("stories260K.gguf", 64);
    int32_t E = engine_get_info(e)->n_embd;
    int32_t toks[5] = {1, 403, 407, 261, 378};
    int32_t s = engine_seq_create(e);
    engine_item it = {s, toks, 5, ENGINE_OUT_EMBD, NULL};
    assert_int_equal(engine_step(e, &it, 1), 0);
    double nn = 0;
    for (int32_t i = 0; i < E; i++) nn += (double)it.logits[i] * it.logits[i];
    assert_true(fabs(nn - 1.0) < 1e-4);
    engine_free(e);
}

/* Broken model files: copy stories260K with one tensor dropped / reshaped /
 * retyped; the error must name the tensor. */
static void write_variant(const gguf_file *src, const char *out, const char *victim, int mode) {
    gguf_writer *w = gguf_writer_create();
    for (uint64_t i = 0; i < src->n_kv; i++) gguf_writer_copy_kv(w, &src->kv[i]);
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const gguf_tensor *t = &src->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        int hit = !strcmp(name, victim);
        if (hit && mode == 0) continue;
        uint64_t ne[GGUF_MAX_DIMS];
        memcpy(ne, t->ne, sizeof ne);
        enum qk_type type = t->type;
        const void *data = t->data;
        void *tmp = NULL;
        if (hit && mode == 1) {
            ne[1] = ne[1] / 2; /* fewer rows: a prefix of the same bytes */
        } else if (hit && mode == 2) {
            /* Same element count as Q8_1, a type qkvd does not compute with. */
            type = QK_Q8_1;
            size_t sz = quant_row_size(QK_Q8_1, (int64_t)ne[0]) * ne[1];
            tmp = calloc(1, sz);
            data = tmp;
        }
        gguf_writer_add_tensor(w, name, type, t->n_dims, ne, data);
        free(tmp);
    }
    char err[256];
    assert_int_equal(gguf_writer_write(w, out, err, sizeof err), 0);
    gguf_writer_free(w);
}

static void test_broken_models(void **state) {
    (void)state;
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared_dir());
    if (access(path, R_OK)) { printf("skip: %s not found\n", path); skip(); }
    gguf_file *src = NULL;
    assert_int_equal(gguf_open(path, &src, err, sizeof err), 0);
    char out[256];
    snprintf(out, sizeof out, "/tmp/qkvd-test-model-%d.gguf", (int)getpid());
    const char *expect[3] = {"missing", "shape", "type"};
    for (int mode = 0; mode < 3; mode++) {
        write_variant(src, out, "blk.1.attn_q.weight", mode);
        engine_params p;
        engine_params_default(&p);
        p.model_path = out;
        p.n_threads = 1;
        engine *e = NULL;
        err[0] = 0;
        int rc = engine_load(&p, &e, err, sizeof err);
        printf("mode %d: %s\n", mode, err);
        assert_true(rc < 0);
        assert_null(e);
        assert_non_null(strstr(err, "blk.1.attn_q.weight"));
        assert_non_null(strstr(err, expect[mode]));
    }
    /* Unknown architecture. */
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "mamba9");
    assert_int_equal(gguf_writer_write(w, out, err, sizeof err), 0);
    gguf_writer_free(w);
    model *m = NULL;
    assert_true(model_load(out, &m, err, sizeof err) < 0);
    assert_non_null(strstr(err, "mamba9"));
    unlink(out);
    gguf_close(src);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_outputs),
        cmocka_unit_test(test_stories_greedy_text),
        cmocka_unit_test(test_batch_equivalence),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_broken_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
