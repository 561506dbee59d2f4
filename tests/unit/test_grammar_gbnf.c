/* Unit tests for engine/grammar/gbnf.c and the byte-level stack machine:
 * grammars that must compile and the strings they accept or refuse, and
 * grammars that must fail with a message naming line:column and the cause. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grammar/grammar.h"

static grammar *compile_ok(const char *gbnf) {
    grammar *g = NULL;
    char err[256];
    int rc = grammar_compile_gbnf(gbnf, strlen(gbnf), &g, err, sizeof err);
    if (rc) fail_msg("grammar failed to compile: %s\n%s", err, gbnf);
    return g;
}

/* 1 when the whole of s is a complete sentence of g. */
static int full_match(grammar *g, const char *s) {
    grammar_matcher *m = grammar_matcher_create(g, NULL, NULL);
    assert_non_null(m);
    size_t bad;
    int ok = grammar_matcher_accept_bytes(m, s, strlen(s), &bad) == 0 && grammar_matcher_is_complete(m);
    grammar_matcher_free(m);
    return ok;
}

/* 1 when s is a prefix of some sentence. */
static int prefix_ok(grammar *g, const char *s) {
    grammar_matcher *m = grammar_matcher_create(g, NULL, NULL);
    assert_non_null(m);
    size_t bad;
    int ok = grammar_matcher_accept_bytes(m, s, strlen(s), &bad) == 0;
    grammar_matcher_free(m);
    return ok;
}

typedef struct mcase { const char *text; int full; } mcase;

static void check_cases(const char *gbnf, const mcase *cs, int n) {
    grammar *g = compile_ok(gbnf);
    for (int i = 0; i < n; i++) {
        int got = full_match(g, cs[i].text);
        if (got != cs[i].full)
            fail_msg("grammar:\n%s\ntext '%s': expected %s", gbnf, cs[i].text, cs[i].full ? "match" : "no match");
    }
    grammar_release(g);
}

static void test_literals_and_alternatives(void **st) {
    (void)st;
    static const mcase cs[] = {{"cat", 1}, {"dog", 1}, {"ca", 0}, {"cats", 0}, {"", 0}, {"a\"b\\c\n", 1}};
    check_cases("root ::= \"cat\" | \"dog\" | \"a\\\"b\\\\c\\n\"\n", cs, 6);
}

static void test_classes(void **st) {
    (void)st;
    static const mcase cs[] = {{"a1", 1}, {"z9", 1}, {"A1", 0}, {"a", 0}, {"-1", 1}, {"]x", 0}};
    check_cases("root ::= [a-z\\-] [0-9]\n", cs, 6);
    static const mcase neg[] = {{"x", 1}, {"\"", 0}, {"\\", 0}, {"\xc3\xa9", 1}, {"\xe2\x82\xac", 1},
                                {"\xf0\x9f\x98\x80", 1}, {"\xc3", 0}, {"\x80", 0}, {"ab", 0}};
    check_cases("root ::= [^\"\\\\]\n", neg, 9);
    /* a class of non-ASCII ranges */
    static const mcase uni[] = {{"\xc3\xa9", 1}, {"\xc3\xbf", 1}, {"\xc4\x80", 0}, {"e", 0}, {"\xce\xb1", 1}};
    check_cases("root ::= [\\u00E0-\\u00FF] | [α-ω]\n", uni, 5);
    static const mcase any[] = {{"x", 1}, {"\n", 1}, {"\xe4\xb8\xad", 1}, {"xy", 0}, {"\xed\xa0\x80", 0}};
    check_cases("root ::= .\n", any, 5);
}

static void test_repetition(void **st) {
    (void)st;
    static const mcase star[] = {{"", 1}, {"ab", 1}, {"ababab", 1}, {"aba", 0}};
    check_cases("root ::= (\"a\" \"b\")*\n", star, 4);
    static const mcase plus[] = {{"", 0}, {"x", 1}, {"xxxx", 1}};
    check_cases("root ::= \"x\"+\n", plus, 3);
    static const mcase opt[] = {{"ac", 1}, {"abc", 1}, {"abbc", 0}};
    check_cases("root ::= \"a\" \"b\"? \"c\"\n", opt, 3);
    static const mcase mn[] = {{"a", 0}, {"aa", 1}, {"aaa", 1}, {"aaaa", 1}, {"aaaaa", 0}};
    check_cases("root ::= \"a\"{2,4}\n", mn, 5);
    static const mcase exact[] = {{"12", 0}, {"123", 1}, {"1234", 0}};
    check_cases("root ::= [0-9]{3}\n", exact, 3);
    static const mcase open[] = {{"a", 0}, {"aa", 1}, {"aaaaaaaa", 1}};
    check_cases("root ::= \"a\"{2,}\n", open, 3);
    static const mcase lit[] = {{"", 1}, {"abab", 1}, {"abb", 0}};
    check_cases("root ::= \"ab\"*\n", lit, 3);
}

static void test_rules_recursion_comments(void **st) {
    (void)st;
    const char *gb =
        "# balanced parentheses and a list\n"
        "root ::= item (\",\" item)*   # trailing comment\n"
        "item ::= \"(\" item* \")\" | [a-z]+\n"
        "\n";
    static const mcase cs[] = {{"a", 1}, {"()", 1}, {"(())", 1}, {"(()())", 1}, {"(()", 0},
                               {"a,(b),((c)),x", 1}, {"a,", 0}, {"((((((((((((((((((((a))))))))))))))))))))", 1}};
    check_cases(gb, cs, 8);
    /* multi-line rule inside parentheses and after | */
    const char *ml =
        "root ::= (\n"
        "    \"x\" |\n"
        "    \"y\"\n"
        "  ) \"!\"\n";
    static const mcase m2[] = {{"x!", 1}, {"y!", 1}, {"z!", 0}};
    check_cases(ml, m2, 3);
}

static void test_prefixes_and_ambiguity(void **st) {
    (void)st;
    /* ambiguous: a* a* and a nullable middle */
    grammar *g = compile_ok("root ::= [a]* [a]* \"b\"? [a]{0,3} \"c\"\n");
    assert_true(full_match(g, "c"));
    assert_true(full_match(g, "aaaaaaac"));
    assert_true(full_match(g, "aabaaac"));
    assert_false(full_match(g, "aabaaaac"));
    assert_true(prefix_ok(g, "aab"));
    assert_false(prefix_ok(g, "aabb"));
    grammar_release(g);
}

typedef struct ecase { const char *gbnf; const char *needle; } ecase;

static void test_errors(void **st) {
    (void)st;
    static const ecase cs[] = {
        {"root ::= \"abc\n", "line 1 col 10: unterminated string literal"},
        {"root ::= foo\n", "undefined rule 'foo'"},
        {"foo ::= \"a\"\n", "no 'root' rule"},
        {"root ::= [ab", "unterminated character class"},
        {"root ::= [z-a]\n", "backwards"},
        {"root ::= \"a\"\nroot ::= \"b\"\n", "line 2 col 1: rule 'root' defined twice"},
        {"root ::= root \"a\" | \"b\"\n", "left recursion through rule 'root'"},
        {"root ::= x\nx ::= y \"a\"\ny ::= \"\" | x\n", "left recursion"},
        {"root ::= (\"a\"?)*\n", "left recursion"},
        {"root ::= \"a\" | *\n", "has nothing to repeat"},
        {"root ::= (\"a\"\n", "expected ')'"},
        {"root = \"a\"\n", "expected '::=' after rule name"},
        {"root ::= \"\\q\"\n", "unknown escape"},
        {"root ::= \"a\"{3,2}\n", "max below min"},
        {"root ::= \"a\"{99999}\n", "repetition count over"},
        {"root ::= \"a\" ) \n", "line 1 col 14: unexpected ')'"},
        {"root ::= [^\\x00-\\U0010FFFF]\n", "empty character class"},
        {"root ::= \"\\xZZ\"\n", "hex digits"},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        grammar *g = NULL;
        char err[256] = "";
        int rc = grammar_compile_gbnf(cs[i].gbnf, strlen(cs[i].gbnf), &g, err, sizeof err);
        if (rc == 0) fail_msg("case %zu compiled but should fail:\n%s", i, cs[i].gbnf);
        assert_null(g);
        if (!strstr(err, cs[i].needle)) fail_msg("case %zu: error '%s' lacks '%s'", i, err, cs[i].needle);
        if (!strstr(err, "line ")) fail_msg("case %zu: error '%s' has no position", i, err);
    }
}

/* Deep nesting is refused with a message, not a stack overflow. */
static void test_nesting_limit(void **st) {
    (void)st;
    size_t n = 3000;
    char *gb = malloc(2 * n + 32);
    assert_non_null(gb);
    strcpy(gb, "root ::= ");
    size_t o = strlen(gb);
    for (size_t i = 0; i < n; i++) gb[o++] = '(';
    gb[o++] = '"'; gb[o++] = 'a'; gb[o++] = '"';
    for (size_t i = 0; i < n; i++) gb[o++] = ')';
    gb[o++] = '\n';
    grammar *g = NULL;
    char err[256];
    assert_int_equal(grammar_compile_gbnf(gb, o, &g, err, sizeof err), GRAMMAR_ERR_SYNTAX);
    assert_non_null(strstr(err, "nested deeper than 256"));
    free(gb);
}

static void test_bytes_position(void **st) {
    (void)st;
    grammar *g = compile_ok("root ::= \"{\" [0-9]+ \"}\"\n");
    grammar_matcher *m = grammar_matcher_create(g, NULL, NULL);
    size_t bad = 99;
    assert_int_equal(grammar_matcher_accept_bytes(m, "{12x}", 5, &bad), GRAMMAR_ERR_REJECTED);
    assert_int_equal(bad, 3);
    /* state unchanged after a rejection */
    assert_int_equal(grammar_matcher_accept_bytes(m, "{1", 2, &bad), 0);
    assert_false(grammar_matcher_is_complete(m));
    assert_int_equal(grammar_matcher_accept_bytes(m, "}", 1, &bad), 0);
    assert_true(grammar_matcher_is_complete(m));
    assert_int_equal(grammar_matcher_accept_bytes(m, "}", 1, &bad), GRAMMAR_ERR_REJECTED);
    grammar_matcher_reset(m);
    assert_false(grammar_matcher_is_complete(m));
    assert_int_equal(grammar_matcher_accept_bytes(m, "{7}", 3, &bad), 0);
    assert_true(grammar_matcher_is_complete(m));
    grammar_matcher_free(m);
    grammar_release(g);
}

static void test_deep_nesting(void **st) {
    (void)st;
    grammar *g = compile_ok("root ::= \"[\" (root (\",\" root)*)? \"]\"\n");
    char buf[4001];
    int d = 2000;
    for (int i = 0; i < d; i++) buf[i] = '[';
    for (int i = 0; i < d; i++) buf[d + i] = ']';
    buf[2 * d] = 0;
    assert_true(full_match(g, buf));
    buf[2 * d - 1] = 0;
    assert_false(full_match(g, buf));
    assert_true(prefix_ok(g, buf));
    grammar_release(g);
}

static void test_cache(void **st) {
    (void)st;
    grammar_cache *c = grammar_cache_create(2);
    char err[128];
    int rc;
    const char *a = "root ::= \"a\"\n", *b = "root ::= \"b\"\n", *x = "root ::= \"x\"\n";
    grammar *g1 = grammar_cache_get_gbnf(c, a, strlen(a), &rc, err, sizeof err);
    grammar *g2 = grammar_cache_get_gbnf(c, a, strlen(a), &rc, err, sizeof err);
    assert_non_null(g1);
    assert_ptr_equal(g1, g2);
    grammar *g3 = grammar_cache_get_gbnf(c, b, strlen(b), &rc, err, sizeof err);
    grammar *g4 = grammar_cache_get_gbnf(c, x, strlen(x), &rc, err, sizeof err); /* evicts one */
    assert_non_null(g3);
    assert_non_null(g4);
    assert_true(full_match(g1, "a"));
    grammar *bad = grammar_cache_get_gbnf(c, "root ::= q\n", 10, &rc, err, sizeof err);
    assert_null(bad);
    assert_int_equal(rc, GRAMMAR_ERR_SYNTAX);
    grammar_release(g1); grammar_release(g2); grammar_release(g3); grammar_release(g4);
    grammar_cache_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literals_and_alternatives),
        cmocka_unit_test(test_classes),
        cmocka_unit_test(test_repetition),
        cmocka_unit_test(test_rules_recursion_comments),
        cmocka_unit_test(test_prefixes_and_ambiguity),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_bytes_position),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
