/* test_config.c -- the serve option table: defaults, flags, environment,
 * config file, their precedence, and errors that name the option. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "config.h"

static const char *fake_env[16][2];
static const char *env_get(const char *name) {
    for (int i = 0; i < 16 && fake_env[i][0]; i++)
        if (!strcmp(fake_env[i][0], name)) return fake_env[i][1];
    return NULL;
}
static void env_clear(void) { memset(fake_env, 0, sizeof fake_env); }

static int parse(serve_config *c, char *err, int argc, ...) {
    char *argv[32];
    va_list ap;
    va_start(ap, argc);
    argv[0] = "serve";
    for (int i = 1; i < argc; i++) argv[i] = va_arg(ap, char *);
    va_end(ap);
    FILE *devnull = fopen("/dev/null", "w");
    int rc = serve_config_parse(c, argc, argv, env_get, err, 512, devnull);
    fclose(devnull);
    return rc;
}

static void test_defaults(void **state) {
    serve_config c;
    char err[512];
    env_clear();
    assert_int_equal(parse(&c, err, 1), 0);
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_string_equal(c.model, "");
    assert_int_equal(c.max_seqs, 16);
    assert_int_equal(c.batch_tokens, 512);
    assert_int_equal(c.max_body, 4194304);
    assert_int_equal(c.queue_len, 64);
    assert_string_equal(c.cors_origins, "");
    assert_string_equal(c.log_format, "text");
    assert_true(c.grace_period == 30.0);
    serve_config_free(&c);
}

static void test_flags(void **state) {
    serve_config c;
    char err[512];
    env_clear();
    assert_int_equal(parse(&c, err, 9, "-m", "a.gguf", "--port=0", "--max-seqs", "3", "--grace-period", "1.5", "--log-format=json"), 0);
    assert_string_equal(c.model, "a.gguf");
    assert_int_equal(c.port, 0);
    assert_int_equal(c.max_seqs, 3);
    assert_true(c.grace_period == 1.5);
    assert_string_equal(c.log_format, "json");
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 2, "--help"), 1);
    serve_config_free(&c);
}

static void test_errors(void **state) {
    serve_config c;
    char err[512];
    env_clear();
    assert_int_equal(parse(&c, err, 3, "--port", "99999"), -1);
    assert_non_null(strstr(err, "--port"));
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 3, "--threads", "two"), -1);
    assert_non_null(strstr(err, "--threads"));
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 3, "--max-seqs", "1.5"), -1);
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 2, "--bogus"), -1);
    assert_non_null(strstr(err, "--bogus"));
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 2, "--port"), -1);
    serve_config_free(&c);
    assert_int_equal(parse(&c, err, 3, "--log-format", "xml"), -1);
    serve_config_free(&c);
    fake_env[0][0] = "QKVD_QUEUE_LEN";
    fake_env[0][1] = "-4";
    assert_int_equal(parse(&c, err, 1), -1);
    assert_non_null(strstr(err, "QKVD_QUEUE_LEN"));
    serve_config_free(&c);
    env_clear();
}

static void test_precedence(void **state) {
    char path[] = "/tmp/qkvd-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *json = "{\"_comment\":\"x\",\"model-alias\":\"file\",\"max_tokens\":11,\"port\":1,\"host\":\"0.0.0.0\",\"grace-period\":2.5}";
    assert_int_equal(write(fd, json, strlen(json)), (ssize_t)strlen(json));
    close(fd);
    serve_config c;
    char err[512];
    env_clear();
    fake_env[0][0] = "QKVD_MODEL_ALIAS";
    fake_env[0][1] = "env";
    fake_env[1][0] = "QKVD_PORT";
    fake_env[1][1] = "2";
    assert_int_equal(parse(&c, err, 5, "--config", path, "--port", "3"), 0);
    assert_string_equal(c.model_alias, "env");   /* env beats file */
    assert_int_equal(c.port, 3);                 /* flag beats env */
    assert_int_equal(c.max_tokens, 11);          /* file beats default */
    assert_string_equal(c.host, "0.0.0.0");
    assert_true(c.grace_period == 2.5);
    serve_config_free(&c);
    /* the config file can also be named by the environment */
    env_clear();
    fake_env[0][0] = "QKVD_CONFIG";
    fake_env[0][1] = path;
    assert_int_equal(parse(&c, err, 1), 0);
    assert_string_equal(c.model_alias, "file");
    serve_config_free(&c);
    env_clear();
    FILE *f = fopen(path, "w");
    fputs("{\"no-such-option\": 1}", f);
    fclose(f);
    assert_int_equal(parse(&c, err, 3, "--config", path), -1);
    assert_non_null(strstr(err, "no-such-option"));
    serve_config_free(&c);
    f = fopen(path, "w");
    fputs("{\"port\": ", f);
    fclose(f);
    assert_int_equal(parse(&c, err, 3, "--config", path), -1);
    assert_non_null(strstr(err, path));
    serve_config_free(&c);
    unlink(path);
}

/* config/qkvd.json documents every option with the built-in defaults. */
static void test_shipped_config(void **state) {
    serve_config c, d;
    char err[512];
    env_clear();
    if (access("config/qkvd.json", R_OK)) skip();
    assert_int_equal(parse(&c, err, 3, "--config", "config/qkvd.json"), 0);
    assert_int_equal(parse(&d, err, 1), 0);
    assert_int_equal(c.port, d.port);
    assert_int_equal(c.max_body, d.max_body);
    assert_int_equal(c.queue_len, d.queue_len);
    assert_int_equal(c.max_tokens, d.max_tokens);
    assert_true(c.request_timeout == d.request_timeout);
    assert_string_equal(c.host, d.host);
    serve_config_free(&c);
    serve_config_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_shipped_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
