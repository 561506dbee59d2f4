/* test_model_pool.c -- --models-dir bookkeeping: directory scan (only
 * regular *.gguf files, sorted), aliases and their errors, and the LRU
 * choice that never picks a busy model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "config.h"
#include "model_pool.h"

static char dir[256];

static void touch(const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("GGUF", f);
    fclose(f);
}

static int setup(void **state) {
    snprintf(dir, sizeof dir, "/tmp/qkvd-test-pool-%d", (int)getpid());
    mkdir(dir, 0755);
    touch("zeta.gguf");
    touch("alpha.gguf");
    touch("mid-7b.Q4_K_M.gguf");
    touch(".hidden.gguf");
    touch("notes.txt");
    touch("x.gguf.part");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/dir.gguf", dir);
    mkdir(sub, 0755);
    return 0;
}

static int teardown(void **state) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_scan_lists_gguf_sorted(void **state) {
    pool_entry *e;
    int n;
    char err[256];
    assert_int_equal(model_pool_scan(dir, "", &e, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(e[0].id, "alpha");
    assert_string_equal(e[1].id, "mid-7b.Q4_K_M");
    assert_string_equal(e[2].id, "zeta");
    char want[600];
    snprintf(want, sizeof want, "%s/alpha.gguf", dir);
    assert_string_equal(e[0].path, want);
    free(e);
}

static void test_aliases(void **state) {
    pool_entry *e;
    int n;
    char err[256];
    assert_int_equal(model_pool_scan(dir, "chat=mid-7b.Q4_K_M, small=zeta.gguf", &e, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(e[1].id, "chat");
    assert_string_equal(e[1].stem, "mid-7b.Q4_K_M");
    assert_string_equal(e[2].id, "small");
    free(e);
}

static void test_alias_errors(void **state) {
    pool_entry *e = NULL;
    int n;
    char err[256];
    assert_int_equal(model_pool_scan(dir, "chat=nope", &e, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "nope"));
    assert_null(e);
    assert_int_equal(model_pool_scan(dir, "justaname", &e, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "ALIAS=MODEL"));
    /* an alias equal to another model's name would make requests ambiguous */
    assert_int_equal(model_pool_scan(dir, "zeta=alpha", &e, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "twice"));
}

static void test_scan_errors(void **state) {
    pool_entry *e;
    int n;
    char err[256];
    assert_int_equal(model_pool_scan("/nonexistent/qkvd-models", "", &e, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/qkvd-models"));
    char empty[300];
    snprintf(empty, sizeof empty, "%s/dir.gguf", dir);
    assert_int_equal(model_pool_scan(empty, "", &e, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "no .gguf"));
}

static void test_lru_victim(void **state) {
    int loaded[4] = {1, 1, 0, 1}, busy[4] = {0, 1, 0, 0};
    uint64_t last[4] = {5, 1, 0, 3};
    assert_int_equal(model_pool_pick_victim(loaded, busy, last, 4), 3);  /* 1 is older but busy; 2 not loaded */
    busy[3] = 1;
    assert_int_equal(model_pool_pick_victim(loaded, busy, last, 4), 0);
    busy[0] = 1;
    assert_int_equal(model_pool_pick_victim(loaded, busy, last, 4), -1); /* all busy: wait */
    int none[4] = {0, 0, 0, 0};
    assert_int_equal(model_pool_pick_victim(none, none, last, 4), -1);
}

/* The options of this feature in the serve option table: --no-webui is a
 * switch taking no value on the command line; 1/0/true/false elsewhere. */
static const char *env_no_webui;
static const char *fake_env(const char *name) {
    return !strcmp(name, "QKVD_NO_WEBUI") ? env_no_webui : NULL;
}
static int parse_args(serve_config *c, char *err, int argc, char **argv) {
    FILE *devnull = fopen("/dev/null", "w");
    int rc = serve_config_parse(c, argc, argv, fake_env, err, 512, devnull);
    fclose(devnull);
    return rc;
}

static void test_options(void **state) {
    serve_config c;
    char err[512];
    env_no_webui = NULL;
    char *a1[] = {"serve", "--models-dir", "/m", "--no-webui", "--max-loaded-models", "3", "--model-aliases", "x=y"};
    assert_int_equal(parse_args(&c, err, 8, a1), 0);
    assert_string_equal(c.models_dir, "/m");
    assert_int_equal(c.no_webui, 1);
    assert_int_equal(c.max_loaded_models, 3);
    assert_string_equal(c.model_aliases, "x=y");
    serve_config_free(&c);
    char *a2[] = {"serve", "--no-webui=0"};
    env_no_webui = "yes"; /* the flag beats the environment */
    assert_int_equal(parse_args(&c, err, 2, a2), 0);
    assert_int_equal(c.no_webui, 0);
    assert_int_equal(c.max_loaded_models, 2); /* default */
    serve_config_free(&c);
    char *a3[] = {"serve"};
    assert_int_equal(parse_args(&c, err, 1, a3), 0);
    assert_int_equal(c.no_webui, 1);
    serve_config_free(&c);
    env_no_webui = "maybe";
    assert_int_equal(parse_args(&c, err, 1, a3), -1);
    assert_non_null(strstr(err, "QKVD_NO_WEBUI"));
    assert_non_null(strstr(err, "maybe"));
    serve_config_free(&c);
    env_no_webui = NULL;
    char *a4[] = {"serve", "--max-loaded-models", "0"};
    assert_int_equal(parse_args(&c, err, 3, a4), -1);
    assert_non_null(strstr(err, "--max-loaded-models"));
    serve_config_free(&c);
    /* config file: JSON booleans */
    char path[300];
    snprintf(path, sizeof path, "%s/cfg.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"no-webui\": true, \"models_dir\": \"/x\"}", f);
    fclose(f);
    char *a5[] = {"serve", "--config", path};
    assert_int_equal(parse_args(&c, err, 3, a5), 0);
    assert_int_equal(c.no_webui, 1);
    assert_string_equal(c.models_dir, "/x");
    serve_config_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_lists_gguf_sorted),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_alias_errors),
        cmocka_unit_test(test_scan_errors),
        cmocka_unit_test(test_lru_victim),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
