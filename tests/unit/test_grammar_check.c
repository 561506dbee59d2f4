/* Unit tests for server/cli_grammar_check.c: the keyword-by-keyword case
 * table of grammar_cases.h run through `qkvd grammar-check` (tokenized
 * with stories260K's SentencePiece vocabulary, a subset with GPT-2's), so
 * the token path agrees with the byte-level one: exit 0 for accepted
 * instances, 1 for rejected ones, 2 for a bad schema; plus GBNF and
 * json_object inputs and the reported byte position. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli.h"
#include "grammar_cases.h"

static const char *shared_dir(void) {
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

static char dir[64];

static void write_file(const char *name, const char *text, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(text, 1, strlen(text), f);
    fclose(f);
}

/* Run grammar-check with stdout captured into out (cap bytes). */
static int run_check(const char *model, const char *flag, const char *spec, const char *text, char *out, size_t cap) {
    char sp[128], tp[128], op[128];
    write_file("spec", spec ? spec : "", sp, sizeof sp);
    write_file("text", text, tp, sizeof tp);
    snprintf(op, sizeof op, "%s/out", dir);
    char *argv[] = {"grammar-check", "-m", (char *)model, (char *)flag, sp, "--text", tp, NULL};
    int argc = 7;
    if (!strcmp(flag, "--json-object")) {
        argv[4] = "--text"; argv[5] = tp; argv[6] = NULL; argc = 6;
    }
    fflush(stdout);
    int saved = dup(1);
    FILE *o = fopen(op, "wb");
    assert_non_null(o);
    dup2(fileno(o), 1);
    int rc = cli_grammar_check(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(o);
    FILE *r = fopen(op, "rb");
    size_t n = r ? fread(out, 1, cap - 1, r) : 0;
    if (r) fclose(r);
    out[n] = 0;
    return rc;
}

static int have(const char *path) { return access(path, R_OK) == 0; }

static int setup(void **st) {
    (void)st;
    snprintf(dir, sizeof dir, "/tmp/qkvd-gcheck-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **st) {
    (void)st;
    char p[128];
    const char *names[] = {"spec", "text", "out"};
    for (int i = 0; i < 3; i++) { snprintf(p, sizeof p, "%s/%s", dir, names[i]); unlink(p); }
    rmdir(dir);
    return 0;
}

static void run_table(const char *model, size_t stride) {
    char out[256];
    size_t n = sizeof grammar_cases / sizeof grammar_cases[0], ran = 0;
    for (size_t i = 0; i < n; i += stride) {
        int rc = run_check(model, "--schema", grammar_cases[i].schema, grammar_cases[i].instance, out, sizeof out);
        int want = grammar_cases[i].ok ? 0 : 1;
        if (rc != want)
            fail_msg("%s case %zu: schema %s instance %s: exit %d (%s), expected %d", model, i, grammar_cases[i].schema,
                     grammar_cases[i].instance, rc, out, want);
        assert_true(want ? !strncmp(out, "rejected at byte ", 17) : !strcmp(out, "accepted\n"));
        ran++;
    }
    printf("%s: %zu grammar-check cases\n", model, ran);
}

static void test_table_spm(void **st) {
    (void)st;
    char model[512];
    snprintf(model, sizeof model, "%s/models/stories260K.gguf", shared_dir());
    if (!have(model)) { printf("skip: %s absent\n", model); skip(); }
    run_table(model, 1);
}

static void test_table_gpt2(void **st) {
    (void)st;
    char model[512];
    snprintf(model, sizeof model, "%s/vocab/ggml-vocab-gpt-2.gguf", shared_dir());
    if (!have(model)) { printf("skip: %s absent\n", model); skip(); }
    run_table(model, 7);
}

static void test_positions_and_modes(void **st) {
    (void)st;
    char model[512], out[256];
    snprintf(model, sizeof model, "%s/models/stories260K.gguf", shared_dir());
    if (!have(model)) { printf("skip: %s absent\n", model); skip(); }
    const char *tool = "{\"type\":\"object\",\"properties\":{\"unit\":{\"enum\":[\"celsius\",\"fahrenheit\"]}},\"required\":[\"unit\"]}";
    assert_int_equal(run_check(model, "--schema", tool, "{\"unit\":\"kelvin\"}", out, sizeof out), 1);
    assert_string_equal(out, "rejected at byte 9\n");
    assert_int_equal(run_check(model, "--schema", tool, "{\"unit\":\"celsius\"", out, sizeof out), 1);
    assert_string_equal(out, "rejected at byte 17\n"); /* incomplete (17 bytes): EOS not allowed at the end */
    assert_int_equal(run_check(model, "--grammar", "root ::= \"yes\" | \"no\"\n", "no", out, sizeof out), 0);
    assert_int_equal(run_check(model, "--grammar", "root ::= \"yes\" | \"no\"\n", "nope", out, sizeof out), 1);
    assert_string_equal(out, "rejected at byte 2\n");
    assert_int_equal(run_check(model, "--json-object", NULL, "{\"a\":[1,{\"b\":null}]}", out, sizeof out), 0);
    assert_int_equal(run_check(model, "--json-object", NULL, "[1]", out, sizeof out), 1);
    assert_int_equal(run_check(model, "--schema", "{\"type\":\"object\",\"not\":{}}", "{}", out, sizeof out), 2);
    assert_int_equal(run_check(model, "--grammar", "root ::= undefined\n", "x", out, sizeof out), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_spm),
        cmocka_unit_test(test_table_gpt2),
        cmocka_unit_test(test_positions_and_modes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
