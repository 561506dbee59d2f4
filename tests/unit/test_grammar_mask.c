/* Unit tests for engine/grammar/token_mask.c: random walks under the mask
 * with the GPT-2 (50k byte-level BPE) and stories260K (SentencePiece)
 * vocabularies. At every step the mask must be non-empty, must agree with
 * running each token directly on the stacks (grammar_matcher_token_allowed,
 * which does not use the precomputed tables), and must allow EOS exactly
 * when the output is complete. Every walk that ends with EOS must parse as
 * JSON and validate against its schema with the small independent validator
 * below (patterns checked with PCRE2). Prints the mean mask time. */
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
#include <jansson.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "gguf.h"
#include "grammar/grammar.h"
#include "tokenizer.h"

static const char *shared_dir(void) {
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

static tokenizer *load_tok(const char *rel) {
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/%s", shared_dir(), rel);
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, sizeof err) != 0) return NULL;
    tokenizer *t = NULL;
    if (tokenizer_load(f, &t, err, sizeof err) != 0) t = NULL;
    gguf_close(f);
    return t;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

/* ---- a small JSON Schema validator for the test schemas ---- */

static size_t utf8_len(const char *s) {
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static int valid(json_t *x, json_t *s, json_t *root);

static int type_ok(json_t *x, const char *t) {
    if (!strcmp(t, "object")) return json_is_object(x);
    if (!strcmp(t, "array")) return json_is_array(x);
    if (!strcmp(t, "string")) return json_is_string(x);
    if (!strcmp(t, "number")) return json_is_number(x);
    if (!strcmp(t, "integer")) return json_is_integer(x) || (json_is_real(x) && floor(json_real_value(x)) == json_real_value(x));
    if (!strcmp(t, "boolean")) return json_is_boolean(x);
    return json_is_null(x);
}

static int regex_ok(const char *pat, const char *str) {
    int e;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &e, &eo, NULL);
    if (!re) return 0;
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)str, strlen(str), 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static int valid(json_t *x, json_t *s, json_t *root) {
    if (json_is_true(s)) return 1;
    json_t *v;
    if ((v = json_object_get(s, "$ref"))) {
        const char *r = json_string_value(v);
        json_t *t = root;
        if (strncmp(r, "#/$defs/", 8) == 0) t = json_object_get(json_object_get(root, "$defs"), r + 8);
        if (!valid(x, t, root)) return 0;
    }
    if ((v = json_object_get(s, "type"))) {
        int ok = 0;
        if (json_is_string(v)) ok = type_ok(x, json_string_value(v));
        else for (size_t i = 0; i < json_array_size(v); i++) ok |= type_ok(x, json_string_value(json_array_get(v, i)));
        if (!ok) return 0;
    }
    if ((v = json_object_get(s, "enum"))) {
        int ok = 0;
        for (size_t i = 0; i < json_array_size(v); i++) ok |= json_equal(x, json_array_get(v, i));
        if (!ok) return 0;
    }
    if ((v = json_object_get(s, "const")) && !json_equal(x, v)) return 0;
    if ((v = json_object_get(s, "anyOf")) || (v = json_object_get(s, "oneOf"))) {
        int n = 0;
        for (size_t i = 0; i < json_array_size(v); i++) n += valid(x, json_array_get(v, i), root);
        if (json_object_get(s, "oneOf") ? n != 1 : n == 0) return 0;
    }
    if ((v = json_object_get(s, "allOf")))
        for (size_t i = 0; i < json_array_size(v); i++) if (!valid(x, json_array_get(v, i), root)) return 0;
    if (json_is_object(x)) {
        json_t *props = json_object_get(s, "properties"), *ap = json_object_get(s, "additionalProperties");
        json_t *req = json_object_get(s, "required");
        for (size_t i = 0; i < json_array_size(req); i++)
            if (!json_object_get(x, json_string_value(json_array_get(req, i)))) return 0;
        const char *k;
        json_t *xv;
        json_object_foreach(x, k, xv) {
            json_t *ps = json_object_get(props, k);
            if (ps) { if (!valid(xv, ps, root)) return 0; }
            else if (ap && !json_is_true(ap)) { if (json_is_false(ap) || !valid(xv, ap, root)) return 0; }
        }
    }
    if (json_is_array(x)) {
        json_t *pre = json_object_get(s, "prefixItems"), *it = json_object_get(s, "items");
        size_t n = json_array_size(x);
        if ((v = json_object_get(s, "minItems")) && n < (size_t)json_integer_value(v)) return 0;
        if ((v = json_object_get(s, "maxItems")) && n > (size_t)json_integer_value(v)) return 0;
        for (size_t i = 0; i < n; i++) {
            json_t *is = i < json_array_size(pre) ? json_array_get(pre, i) : it;
            if (is && (json_is_false(is) || !valid(json_array_get(x, i), is, root))) return 0;
        }
    }
    if (json_is_string(x)) {
        size_t n = utf8_len(json_string_value(x));
        if ((v = json_object_get(s, "minLength")) && n < (size_t)json_integer_value(v)) return 0;
        if ((v = json_object_get(s, "maxLength")) && n > (size_t)json_integer_value(v)) return 0;
        if ((v = json_object_get(s, "pattern")) && !regex_ok(json_string_value(v), json_string_value(x))) return 0;
        if ((v = json_object_get(s, "format")) && !strcmp(json_string_value(v), "date")) {
            int y, m, d;
            char tail;
            static const int days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
            if (sscanf(json_string_value(x), "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3) return 0;
            if (m < 1 || m > 12 || d < 1 || d > days[m - 1]) return 0;
        }
    }
    if (json_is_number(x)) {
        double d = json_number_value(x);
        if ((v = json_object_get(s, "minimum")) && d < json_number_value(v)) return 0;
        if ((v = json_object_get(s, "maximum")) && d > json_number_value(v)) return 0;
        if ((v = json_object_get(s, "exclusiveMinimum")) && d <= json_number_value(v)) return 0;
        if ((v = json_object_get(s, "exclusiveMaximum")) && d >= json_number_value(v)) return 0;
    }
    return 1;
}

/* ---- walks ---- */

static const char *const walk_schemas[] = {
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":8},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":120},\"ok\":{\"type\":\"boolean\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"x\",\"y z\"]},\"maxItems\":3}},\"required\":[\"name\",\"age\"]}",
    "{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"minimum\":-50,\"maximum\":5000},\"minItems\":1,\"maxItems\":4}",
    "{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":9},"
    "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"},\"maxItems\":2}},\"required\":[\"v\"]}},"
    "\"$ref\":\"#/$defs/node\"}",
    "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\",\"pattern\":\"^[a-f0-9]{4}-[A-Z]{2}$\"},"
    "\"when\":{\"type\":\"string\",\"format\":\"date\"},\"v\":{\"oneOf\":[{\"type\":\"null\"},"
    "{\"type\":\"string\",\"enum\":[\"a\",\"b\"]},{\"type\":\"integer\",\"minimum\":-3,\"maximum\":3}]}},"
    "\"required\":[\"id\",\"when\",\"v\"]}",
    "{\"type\":\"object\",\"properties\":{\"k\":{\"const\":1}},\"additionalProperties\":{\"type\":\"boolean\"}}",
    "{\"type\":\"array\",\"prefixItems\":[{\"type\":\"boolean\"},{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}],"
    "\"items\":{\"type\":\"number\",\"minimum\":0,\"exclusiveMaximum\":1},\"maxItems\":3}",
};

typedef struct walk_stats {
    int walks, completed, truncated, full_checks;
    double mask_s;
    long masks;
} walk_stats;

static void run_walks(tokenizer *t, grammar_vocab *v, grammar *g, json_t *schema, int n_walks, int max_steps,
                      int full_check_walks, walk_stats *ws) {
    int32_t nv = tokenizer_n_vocab(t);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * sizeof *mask);
    int32_t *allowed = malloc((size_t)nv * sizeof *allowed);
    char *out = malloc(65536);
    float *logits = malloc((size_t)nv * sizeof *logits);
    assert_non_null(mask);
    assert_non_null(logits);
    grammar_matcher *m = grammar_matcher_create(g, v, NULL);
    assert_non_null(m);
    for (int w = 0; w < n_walks; w++) {
        grammar_matcher_reset(m);
        size_t on = 0;
        int done = 0;
        for (int step = 0; step < max_steps && !done; step++) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            int32_t cnt = grammar_matcher_fill_mask(m, mask);
            clock_gettime(CLOCK_MONOTONIC, &b);
            ws->mask_s += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
            ws->masks++;
            if (cnt <= 0) fail_msg("dead end: empty mask at step %d after '%.*s'", step, (int)on, out);
            int complete = grammar_matcher_is_complete(m);
            int32_t na = 0;
            int full = w < full_check_walks && (step < 4 || step % 16 == 0);
            for (int32_t id = 0; id < nv; id++) {
                int bit = (mask[id >> 5] >> (id & 31)) & 1;
                if (bit) allowed[na++] = id;
                if (tokenizer_is_eog(t, id) && bit != complete)
                    fail_msg("EOS %s while complete=%d after '%.*s'", bit ? "allowed" : "refused", complete, (int)on, out);
                if (full || (rnd() & 63) == 0) {
                    int direct = grammar_matcher_token_allowed(m, id);
                    if (direct != bit) {
                        char tb[256];
                        int64_t tl = tokenizer_token_to_bytes(t, id, 0, tb, sizeof tb);
                        fail_msg("mask says %d, direct run says %d for token %d '%.*s' after '%.*s'", bit, direct, id,
                                 (int)(tl < 256 ? tl : 0), tb, (int)on, out);
                    }
                }
            }
            if (full) ws->full_checks++;
            assert_int_equal(na, cnt);
            /* apply writes -inf exactly where the mask is clear */
            for (int32_t id = 0; id < nv; id++) logits[id] = (float)(id & 7);
            assert_int_equal(grammar_matcher_apply(m, logits), cnt);
            for (int32_t id = 0; id < nv; id++) {
                int bit = (mask[id >> 5] >> (id & 31)) & 1;
                if (bit ? logits[id] != (float)(id & 7) : !(isinf(logits[id]) && logits[id] < 0))
                    fail_msg("apply: token %d has logit %g, mask bit %d", id, (double)logits[id], bit);
            }
            int32_t pick = -1;
            if (complete && (rnd() % 3 == 0)) {
                for (int32_t i = 0; i < na; i++) if (tokenizer_is_eog(t, allowed[i])) { pick = allowed[i]; break; }
            }
            if (pick < 0) pick = allowed[rnd() % (uint32_t)na];
            if (grammar_matcher_accept_token(m, pick)) fail_msg("token %d from the mask was not accepted", pick);
            if (tokenizer_is_eog(t, pick)) { done = 1; break; }
            int64_t l = tokenizer_token_to_bytes(t, pick, 0, out + on, (int64_t)(65535 - on));
            on += (size_t)l;
        }
        ws->walks++;
        if (!done) { ws->truncated++; continue; }
        ws->completed++;
        json_error_t je;
        json_t *inst = json_loadb(out, on, JSON_DECODE_ANY, &je);
        /* jansson refuses numbers beyond double range that JSON allows */
        if (!inst && !schema && strstr(je.text, "overflow")) continue;
        if (!inst) fail_msg("completed output is not JSON (%s): '%.*s'", je.text, (int)on, out);
        if (schema && !valid(inst, schema, schema)) fail_msg("completed output does not validate: '%.*s'", (int)on, out);
        if (!schema && !json_is_object(inst)) fail_msg("json_object mode produced a non-object: '%.*s'", (int)on, out);
        json_decref(inst);
    }
    grammar_matcher_free(m);
    free(mask); free(allowed); free(out); free(logits);
}

static void walk_vocab(const char *rel, int n_walks, int full_walks) {
    tokenizer *t = load_tok(rel);
    if (!t) { printf("skip: %s/%s absent\n", shared_dir(), rel); skip(); }
    grammar_vocab *v = grammar_vocab_create(t);
    assert_non_null(v);
    walk_stats total = {0};
    int n = (int)(sizeof walk_schemas / sizeof walk_schemas[0]);
    for (int i = 0; i <= n; i++) {
        grammar *g = NULL;
        char err[256];
        json_t *schema = NULL;
        if (i < n) {
            assert_int_equal(grammar_compile_schema(walk_schemas[i], strlen(walk_schemas[i]), NULL, &g, err, sizeof err), 0);
            schema = json_loads(walk_schemas[i], 0, NULL);
        } else {
            assert_int_equal(grammar_compile_json_object(NULL, &g, err, sizeof err), 0);
        }
        /* every other grammar has all its tables built ahead (the one-position
         * tables and the deep keys grammar_precompute_budget adds), the rest
         * builds them on first use: both must agree with the direct runs */
        if (i % 2) assert_int_equal(grammar_precompute_budget(g, v, 600000.0), 0);
        walk_stats ws = {0};
        run_walks(t, v, g, schema, n_walks, 160, full_walks, &ws);
        printf("%s schema %d: %d walks, %d completed and valid, %d truncated, mean mask %.1f us\n", rel, i, ws.walks,
               ws.completed, ws.truncated, ws.mask_s / (double)ws.masks * 1e6);
        total.walks += ws.walks; total.completed += ws.completed; total.truncated += ws.truncated;
        total.mask_s += ws.mask_s; total.masks += ws.masks; total.full_checks += ws.full_checks;
        json_decref(schema);
        grammar_release(g);
    }
    printf("%s: %d walks, %d completed, %d truncated, %d full-vocabulary checks, mean mask %.1f us (incl. first-use tables)\n",
           rel, total.walks, total.completed, total.truncated, total.full_checks, total.mask_s / (double)total.masks * 1e6);
    assert_true(total.completed >= total.walks / 4);
    grammar_vocab_free(v);
    tokenizer_free(t);
}

static void test_walks_gpt2(void **st) { (void)st; walk_vocab("vocab/ggml-vocab-gpt-2.gguf", 12, 1); }
static void test_walks_spm(void **st) { (void)st; walk_vocab("models/stories260K.gguf", 40, 40); }

/* A grammar bound to one vocabulary refuses a matcher for another. */
static void test_vocab_binding(void **st) {
    (void)st;
    tokenizer *a = load_tok("models/stories260K.gguf");
    if (!a) { printf("skip: stories260K absent\n"); skip(); }
    grammar_vocab *v1 = grammar_vocab_create(a), *v2 = grammar_vocab_create(a);
    grammar *g = NULL;
    char err[128];
    assert_int_equal(grammar_compile_gbnf("root ::= \"a\"+\n", 13, &g, err, sizeof err), 0);
    int rc = 0;
    grammar_matcher *m1 = grammar_matcher_create(g, v1, &rc);
    assert_non_null(m1);
    grammar_matcher *m2 = grammar_matcher_create(g, v2, &rc);
    assert_null(m2);
    assert_int_equal(rc, GRAMMAR_ERR_VOCAB);
    /* apply: disallowed logits become -inf */
    float *logits = malloc((size_t)tokenizer_n_vocab(a) * sizeof *logits);
    for (int32_t i = 0; i < tokenizer_n_vocab(a); i++) logits[i] = 1.0f;
    int32_t n = grammar_matcher_apply(m1, logits);
    int32_t finite = 0;
    for (int32_t i = 0; i < tokenizer_n_vocab(a); i++) finite += isfinite(logits[i]) != 0;
    assert_int_equal(n, finite);
    assert_true(n >= 1);
    free(logits);
    grammar_matcher_free(m1);
    grammar_release(g);
    grammar_vocab_free(v1);
    grammar_vocab_free(v2);
    tokenizer_free(a);
}

/* Steady-state mask time on the 50k vocabulary with warm tables. */
static void test_mask_speed(void **st) {
    (void)st;
    tokenizer *t = load_tok("vocab/ggml-vocab-gpt-2.gguf");
    if (!t) { printf("skip: GPT-2 vocab absent\n"); skip(); }
    grammar_vocab *v = grammar_vocab_create(t);
    grammar *g = NULL;
    char err[256];
    const char *s = walk_schemas[0];
    assert_int_equal(grammar_compile_schema(s, strlen(s), NULL, &g, err, sizeof err), 0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(grammar_precompute(g, v), 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double pre = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    /* time masks along a fixed valid text */
    const char *text = "{\"name\":\"Bob Lee\",\"age\":42,\"ok\":true,\"tags\":[\"x\",\"y z\"]}";
    int32_t ids[128];
    int64_t n = tokenizer_encode(t, text, strlen(text), 0, 0, ids, 128);
    grammar_matcher *m = grammar_matcher_create(g, v, NULL);
    uint32_t *mask = malloc(((size_t)tokenizer_n_vocab(t) + 31) / 32 * sizeof *mask);
    double total = 0;
    int reps = 20;
    for (int r = -1; r < reps; r++) { /* rep -1 warms the tables of deeper stack keys */
        grammar_matcher_reset(m);
        for (int64_t i = 0; i < n; i++) {
            clock_gettime(CLOCK_MONOTONIC, &a);
            grammar_matcher_fill_mask(m, mask);
            clock_gettime(CLOCK_MONOTONIC, &b);
            if (r >= 0) total += (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
            assert_true((mask[ids[i] >> 5] >> (ids[i] & 31)) & 1);
            assert_int_equal(grammar_matcher_accept_token(m, ids[i]), 0);
        }
        assert_true(grammar_matcher_is_complete(m));
    }
    double mean = total / (double)(reps * n) * 1e6;
    printf("GPT-2 vocab: precompute of all %d positions %.1f ms; mean mask %.1f us over %lld tokens\n",
           grammar_n_elements(g), pre * 1e3, mean, (long long)n);
    /* printed, not asserted: timing is for `qkvd bench --schema`, not unit tests */
    free(mask);
    grammar_matcher_free(m);
    grammar_release(g);
    grammar_vocab_free(v);
    tokenizer_free(t);
}

/* grammar_precompute_budget: a zero budget stops before building anything
 * (1), calls with tiny budgets (walks dropped at the deadline) end up with
 * every table built (0) and a later call finds them built (0 at once);
 * masks along a text are the same as a grammar whose tables are built on
 * first use. */
static void test_precompute_budget(void **st) {
    (void)st;
    tokenizer *t = load_tok("vocab/ggml-vocab-gpt-2.gguf");
    if (!t) { printf("skip: %s/vocab/ggml-vocab-gpt-2.gguf absent\n", shared_dir()); skip(); }
    grammar_vocab *v = grammar_vocab_create(t);
    assert_non_null(v);
    const char *s = walk_schemas[0];
    grammar *g = NULL, *h = NULL;
    char err[256];
    assert_int_equal(grammar_compile_schema(s, strlen(s), NULL, &g, err, sizeof err), 0);
    assert_int_equal(grammar_compile_schema(s, strlen(s), NULL, &h, err, sizeof err), 0);
    assert_int_equal(grammar_precompute_budget(g, v, 0.0), 1);
    assert_false(grammar_tables_ready(g));
    /* tiny budgets: each call finishes its first table and drops the walk
     * it is in when the budget ends; the calls still get everything built */
    int calls = 0, r;
    while ((r = grammar_precompute_budget(g, v, 0.05)) == 1) assert_true(++calls < 100000);
    assert_int_equal(r, 0);
    assert_true(calls > 1);
    assert_true(grammar_tables_ready(g));
    assert_int_equal(grammar_precompute_budget(g, v, 0.0), 0);
    const char *text = "{\"name\":\"Bob Lee\",\"age\":42,\"ok\":true,\"tags\":[\"x\",\"y z\"]}";
    int32_t ids[256];
    int64_t n = tokenizer_encode(t, text, strlen(text), 0, 0, ids, 256);
    assert_true(n > 0);
    size_t words = ((size_t)tokenizer_n_vocab(t) + 31) / 32;
    uint32_t *mg = malloc(words * sizeof *mg), *mh = malloc(words * sizeof *mh);
    grammar_matcher *a = grammar_matcher_create(g, v, NULL), *b = grammar_matcher_create(h, v, NULL);
    assert_non_null(a);
    assert_non_null(b);
    for (int64_t i = 0; i < n; i++) {
        grammar_matcher_fill_mask(a, mg);
        grammar_matcher_fill_mask(b, mh);
        assert_memory_equal(mg, mh, words * sizeof *mg);
        assert_int_equal(grammar_matcher_accept_token(a, ids[i]), 0);
        assert_int_equal(grammar_matcher_accept_token(b, ids[i]), 0);
    }
    assert_true(grammar_matcher_is_complete(a));
    free(mg); free(mh);
    grammar_matcher_free(a); grammar_matcher_free(b);
    grammar_release(g); grammar_release(h);
    grammar_vocab_free(v);
    tokenizer_free(t);
}

/* Bounded repetitions: tables of lower levels are derived from the top
 * level's (only tokens at least as long as the level are walked again), so
 * check the mask against direct runs for every token at every step of
 * walks that go deep into long bounded strings, nested repetitions and a
 * repetition of a multi-byte atom. */
static void test_bounded_repetitions(void **st) {
    (void)st;
    tokenizer *t = load_tok("vocab/ggml-vocab-gpt-2.gguf");
    if (!t) { printf("skip: GPT-2 vocab absent\n"); skip(); }
    grammar_vocab *v = grammar_vocab_create(t);
    assert_non_null(v);
    static const char *const gbnf[] = {
        "root ::= \"\\\"\" [a-z ]{2,40} \"\\\"\" ([0-9]{0,3} \"!\")?\n",
        "root ::= (\"ab\" [0-9]{0,6}){2,20} \".\"\n",
        "root ::= (\"x\" | \"yy\" | [A-Z]{1,5}){0,30} \"end\"\n",
    };
    static const char *const schemas[] = {
        "{\"type\":\"object\",\"properties\":{\"s\":{\"type\":\"string\",\"maxLength\":40},"
        "\"t\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"maxLength\":12},\"maxItems\":3}},"
        "\"required\":[\"s\",\"t\"]}",
        "{\"type\":\"string\",\"format\":\"email\"}",
    };
    int32_t nv = tokenizer_n_vocab(t);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * sizeof *mask);
    int32_t *allowed = malloc((size_t)nv * sizeof *allowed);
    assert_non_null(mask);
    int n_g = (int)(sizeof gbnf / sizeof gbnf[0]), n_s = (int)(sizeof schemas / sizeof schemas[0]);
    long checks = 0;
    /* the schemas a second time with every table built ahead (deep keys included) */
    for (int i = 0; i < n_g + 2 * n_s; i++) {
        grammar *g = NULL;
        char err[256];
        if (i < n_g) assert_int_equal(grammar_compile_gbnf(gbnf[i], strlen(gbnf[i]), &g, err, sizeof err), 0);
        else {
            const char *sc = schemas[(i - n_g) % n_s];
            assert_int_equal(grammar_compile_schema(sc, strlen(sc), NULL, &g, err, sizeof err), 0);
            if (i >= n_g + n_s) assert_int_equal(grammar_precompute_budget(g, v, 600000.0), 0);
        }
        grammar_matcher *m = grammar_matcher_create(g, v, NULL);
        assert_non_null(m);
        for (int w = 0; w < 3; w++) {
            grammar_matcher_reset(m);
            for (int step = 0; step < 40; step++) {
                int32_t cnt = grammar_matcher_fill_mask(m, mask);
                assert_true(cnt > 0);
                int32_t na = 0;
                for (int32_t id = 0; id < nv; id++) {
                    int bit = (mask[id >> 5] >> (id & 31)) & 1;
                    if (bit) allowed[na++] = id;
                    if ((w || (step & 7) != 5) && (rnd() & 31)) continue; /* all tokens every 8th step of the first walk, a 32nd otherwise */
                    int direct = tokenizer_is_eog(t, id) ? grammar_matcher_is_complete(m) : grammar_matcher_token_allowed(m, id);
                    checks++;
                    if (direct != bit) fail_msg("grammar %d step %d: mask says %d, direct run says %d for token %d", i, step, bit, direct, id);
                }
                assert_int_equal(na, cnt);
                /* prefer long tokens: they reach the lower levels of a repetition in few steps */
                int32_t pick = allowed[rnd() % (uint32_t)na];
                for (int k = 0; k < 3; k++) {
                    int32_t c = allowed[rnd() % (uint32_t)na];
                    if (tokenizer_token_to_bytes(t, c, 0, NULL, 0) > tokenizer_token_to_bytes(t, pick, 0, NULL, 0)) pick = c;
                }
                if (tokenizer_is_eog(t, pick)) break;
                assert_int_equal(grammar_matcher_accept_token(m, pick), 0);
                if (grammar_matcher_is_terminated(m)) break;
            }
        }
        grammar_matcher_free(m);
        grammar_release(g);
    }
    printf("bounded repetitions: %ld token checks agreed\n", checks);
    free(mask);
    free(allowed);
    grammar_vocab_free(v);
    tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounded_repetitions),
        cmocka_unit_test(test_precompute_budget),
        cmocka_unit_test(test_walks_spm),
        cmocka_unit_test(test_walks_gpt2),
        cmocka_unit_test(test_vocab_binding),
        cmocka_unit_test(test_mask_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
