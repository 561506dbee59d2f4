/* Unit tests for engine/grammar/json_schema.c and regex.c: a table of
 * {schema, instance, accepted} cases per keyword (JSON-Schema-Test-Suite
 * style; instances in the compact form the grammar generates), integer
 * ranges checked exhaustively around their bounds, the regex subset, and
 * the errors for unsupported keywords and unsatisfiable schemas, which must
 * name the keyword and its JSON path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "grammar/grammar.h"

static grammar *schema_ok(const char *schema, int ws) {
    grammar *g = NULL;
    char err[512];
    grammar_options opt = {ws};
    int rc = grammar_compile_schema(schema, strlen(schema), &opt, &g, err, sizeof err);
    if (rc) fail_msg("schema failed to compile: %s\n%s", err, schema);
    return g;
}

static int accepts(grammar *g, const char *s) {
    grammar_matcher *m = grammar_matcher_create(g, NULL, NULL);
    assert_non_null(m);
    size_t bad;
    int ok = grammar_matcher_accept_bytes(m, s, strlen(s), &bad) == 0 && grammar_matcher_is_complete(m);
    grammar_matcher_free(m);
    return ok;
}

#include "grammar_cases.h"

static void test_keyword_table(void **st) {
    (void)st;
    for (size_t i = 0; i < sizeof grammar_cases / sizeof grammar_cases[0]; i++) {
        grammar *g = schema_ok(grammar_cases[i].schema, 0);
        int got = accepts(g, grammar_cases[i].instance);
        if (got != grammar_cases[i].ok)
            fail_msg("case %zu: schema %s\ninstance %s: expected %s", i, grammar_cases[i].schema, grammar_cases[i].instance,
                     grammar_cases[i].ok ? "accepted" : "rejected");
        grammar_release(g);
    }
    printf("%zu schema/instance cases\n", sizeof grammar_cases / sizeof grammar_cases[0]);
}

static void test_whitespace_option(void **st) {
    (void)st;
    const char *s = "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}},\"required\":[\"a\"]}";
    grammar *compact = schema_ok(s, 0), *loose = schema_ok(s, 4);
    const char *pretty = "{\n  \"a\": [ 1, 2 ]\n}";
    assert_false(accepts(compact, pretty));
    assert_true(accepts(loose, pretty));
    assert_true(accepts(loose, "{\"a\":[1,2]}"));
    assert_false(accepts(loose, "{\"a\":      [1]}")); /* more than 4 bytes */
    grammar_release(compact);
    grammar_release(loose);
    grammar *obj = NULL;
    char err[128];
    assert_int_equal(grammar_compile_json_object(NULL, &obj, err, sizeof err), 0);
    assert_true(accepts(obj, "{\"a\":{\"b\":[1,2,{}]}}"));
    assert_false(accepts(obj, "[1]"));
    assert_false(accepts(obj, "\"x\""));
    grammar_release(obj);
}

/* Integers in [lo, hi] for several bound combinations, each checked on
 * every value near the bounds and around powers of ten. */
static void test_integer_ranges(void **st) {
    (void)st;
    struct { const char *bounds; int has_lo; long lo; int has_hi; long hi; } rs[] = {
        {"\"minimum\":0,\"maximum\":150", 1, 0, 1, 150},
        {"\"minimum\":-37,\"maximum\":1234", 1, -37, 1, 1234},
        {"\"minimum\":17", 1, 17, 0, 0},
        {"\"maximum\":-5", 0, 0, 1, -5},
        {"\"exclusiveMinimum\":9,\"exclusiveMaximum\":1000", 1, 10, 1, 999},
        {"\"minimum\":-1000,\"maximum\":-999", 1, -1000, 1, -999},
        {"\"minimum\":1.5,\"maximum\":99.9", 1, 2, 1, 99},
        {"\"minimum\":100,\"maximum\":100", 1, 100, 1, 100},
        {"\"minimum\":123456789,\"maximum\":987654321", 1, 123456789, 1, 987654321},
    };
    long probes[] = {0, 1, 9, 10, 11, 99, 100, 101, 150, 151, 999, 1000, 1001, 1234, 1235, 9999, 10000,
                     123456788, 123456789, 123456790, 987654320, 987654321, 987654322, 5000000000L};
    int checked = 0;
    for (size_t r = 0; r < sizeof rs / sizeof rs[0]; r++) {
        char schema[256];
        snprintf(schema, sizeof schema, "{\"type\":\"integer\",%s}", rs[r].bounds);
        grammar *g = schema_ok(schema, 0);
        long xs[2600 + 6 * 24];
        int nx = 0;
        for (long x = -1100; x <= 1300; x++) xs[nx++] = x;
        for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++)
            for (int d = -1; d <= 1; d++) { xs[nx++] = probes[k] + d; xs[nx++] = -probes[k] + d; }
        for (int i = 0; i < nx; i++) {
            long x = xs[i];
            char txt[32];
            snprintf(txt, sizeof txt, "%ld", x);
            int want = (!rs[r].has_lo || x >= rs[r].lo) && (!rs[r].has_hi || x <= rs[r].hi);
            if (accepts(g, txt) != want) fail_msg("%s: %ld expected %s", schema, x, want ? "accepted" : "rejected");
            checked++;
        }
        assert_false(accepts(g, "007"));
        assert_false(accepts(g, "-0"));
        grammar_release(g);
    }
    printf("%d integer checks\n", checked);
}

typedef struct rcase { const char *re; const char *inst; int ok; } rcase;

static void test_regex_subset(void **st) {
    (void)st;
    static const rcase rc[] = {
        {"^\\d{3}-\\d{4}$", "555-1234", 1}, {"^\\d{3}-\\d{4}$", "555-12345", 0},
        {"[a-c]+x?", "abcx", 1}, {"[a-c]+x?", "x", 0}, {"[^a-c]", "d", 1}, {"[^a-c]", "a", 0},
        {"(ab|cd){2}", "abcd", 1}, {"(ab|cd){2}", "ab", 0}, {"(?:x|y)*z", "xyxz", 1},
        {"\\w+@\\w+\\.com", "me@site.com", 1}, {"\\w+@\\w+\\.com", "me@site.org", 0},
        {"a\\s b", "a  b", 1}, {"a\\sb", "a\\tb", 1}, {"\\S+", "a b", 0},
        {"say \"hi\"", "say \\\"hi\\\"", 1}, {"x\\\\y", "x\\\\y", 1}, {"[\"]", "\\\"", 1},
        {"caf\xc3\xa9|na\xc3\xafve", "na\xc3\xafve", 1}, {".{2,3}", "\xe4\xb8\xad\xe6\x96\x87", 1},
        {"a{2,}", "aaaaa", 1}, {"a{2,}", "a", 0}, {"^(a|b)$", "b", 1}, {"ab+?c", "abbc", 1},
    };
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) {
        char schema[256], inst[128];
        /* the pattern as a JSON string: escape backslashes and quotes */
        char esc[128];
        size_t o = 0;
        for (const char *p = rc[i].re; *p && o + 2 < sizeof esc; p++) {
            if (*p == '\\' || *p == '"') esc[o++] = '\\';
            esc[o++] = *p;
        }
        esc[o] = 0;
        snprintf(schema, sizeof schema, "{\"type\":\"string\",\"pattern\":\"%s\"}", esc);
        snprintf(inst, sizeof inst, "\"%s\"", rc[i].inst);
        grammar *g = schema_ok(schema, 0);
        if (accepts(g, inst) != rc[i].ok)
            fail_msg("regex %s on %s: expected %s", rc[i].re, inst, rc[i].ok ? "accepted" : "rejected");
        grammar_release(g);
    }
}

typedef struct errcase { const char *schema; const char *needle; } errcase;

static void test_errors_name_keyword_and_path(void **st) {
    (void)st;
    static const errcase ec[] = {
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"not\":{}}}}", "keyword 'not' at #/properties/a"},
        {"{\"type\":\"string\",\"patternProperties\":{}}", "keyword 'patternProperties' at #"},
        {"{\"type\":\"array\",\"items\":{\"type\":\"integer\",\"multipleOf\":3}}", "keyword 'multipleOf' at #/items"},
        {"{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\",\"format\":\"hostname\"}}}", "keyword 'format' at #/properties/x"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "keyword 'maximum' at #: no integer"},
        {"{\"type\":\"number\",\"minimum\":0.5}", "keyword 'minimum' at #: non-integral"},
        {"{\"type\":\"string\",\"minLength\":5,\"maxLength\":2}", "keyword 'maxLength' at #"},
        {"{\"type\":\"array\",\"minItems\":3,\"maxItems\":1}", "keyword 'maxItems' at #"},
        {"{\"enum\":[]}", "keyword 'enum' at #"},
        {"{\"type\":\"integer\",\"enum\":[\"a\"]}", "keyword 'enum' at #"},
        {"{\"type\":\"object\",\"properties\":{\"a\":false}}", "keyword 'false' at #/properties/a"},
        {"{\"type\":\"object\",\"required\":[\"q\"],\"additionalProperties\":false}", "keyword 'required' at #"},
        {"{\"$ref\":\"#/$defs/missing\"}", "keyword '$ref' at #"},
        {"{\"$ref\":\"http://x/y.json\"}", "keyword '$ref' at #: only local"},
        {"{\"type\":\"string\",\"pattern\":\"(a\"}", "keyword 'pattern' at #"},
        {"{\"type\":\"string\",\"pattern\":\"\\\\bword\"}", "word boundaries"},
        {"{\"type\":\"string\",\"pattern\":\"a(?=b)\"}", "lookaround"},
        {"{\"type\":\"strin\"}", "keyword 'type' at #"},
        {"{\"allOf\":[{\"type\":\"string\"},{\"type\":\"integer\"}]}", "keyword 'type' at #"},
        {"{\"allOf\":[{\"pattern\":\"a\"},{\"pattern\":\"b\"}]}", "keyword 'pattern' at #"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"$dynamicRef\":\"#x\"}}}", "keyword '$dynamicRef' at #/properties/a"},
        {"{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}", "left recursion"},
        {"[1,2]", "a schema must be an object or a boolean"},
        {"{\"type\":\"string\",\"pattern\":\"((((((((((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))))))))))\"}", "nested deeper than 32"},
        {"{\"type\":", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof ec / sizeof ec[0]; i++) {
        grammar *g = NULL;
        char err[512] = "";
        int rc = grammar_compile_schema(ec[i].schema, strlen(ec[i].schema), NULL, &g, err, sizeof err);
        if (rc == 0) fail_msg("case %zu: %s compiled, expected an error", i, ec[i].schema);
        assert_null(g);
        if (!strstr(err, ec[i].needle)) fail_msg("case %zu: error '%s' lacks '%s'", i, err, ec[i].needle);
    }
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_compile_time(void **st) {
    (void)st;
    const char *s =
        "{\"type\":\"object\",\"properties\":{"
        "\"id\":{\"type\":\"string\",\"format\":\"uuid\"},"
        "\"name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":64},"
        "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":150},"
        "\"email\":{\"type\":\"string\",\"format\":\"email\"},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":10},"
        "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},\"city\":{\"type\":\"string\"},"
        "\"zip\":{\"type\":\"string\",\"pattern\":\"^\\\\d{5}$\"}},\"required\":[\"city\"]},"
        "\"role\":{\"enum\":[\"admin\",\"user\",\"guest\"]},"
        "\"created\":{\"type\":\"string\",\"format\":\"date-time\"}},"
        "\"required\":[\"id\",\"name\",\"role\"]}";
    double best = 1e9;
    for (int i = 0; i < 5; i++) {
        double t0 = now_s();
        grammar *g = schema_ok(s, 0);
        double dt = now_s() - t0;
        if (dt < best) best = dt;
        grammar_release(g);
    }
    printf("typical schema compile: %.3f ms\n", best * 1e3);
    /* printed, not asserted: timing is for benchmarks, not unit tests */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyword_table),
        cmocka_unit_test(test_whitespace_option),
        cmocka_unit_test(test_integer_ranges),
        cmocka_unit_test(test_regex_subset),
        cmocka_unit_test(test_errors_name_keyword_and_path),
        cmocka_unit_test(test_compile_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
