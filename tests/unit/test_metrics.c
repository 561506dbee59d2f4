/* test_metrics.c -- the Prometheus registry without a server: endpoint
 * labels, label escaping, counters, cumulative histogram buckets, models
 * without an engine, NULL registries (--no-metrics) and the shape of the
 * exposition (one HELP/TYPE per family, each family's samples together). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "metrics.h"

/* The value of the sample line that starts with `prefix` exactly (name and
 * labels), or -1 when there is none. */
static double sample(const char *text, const char *prefix) {
    size_t pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, prefix, pl) && p[pl] == ' ') return strtod(p + pl + 1, NULL);
    }
    return -1;
}

static int count_lines_with(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void test_endpoint_labels(void **state) {
    assert_string_equal(metrics_endpoint("/v1/chat/completions"), "/v1/chat/completions");
    assert_string_equal(metrics_endpoint("/chat/completions"), "/v1/chat/completions");
    assert_string_equal(metrics_endpoint("/completions"), "/v1/completions");
    assert_string_equal(metrics_endpoint("/v1/embeddings"), "/v1/embeddings");
    assert_string_equal(metrics_endpoint("/v1/models/abc"), "/v1/models");
    assert_string_equal(metrics_endpoint("/models"), "/v1/models");
    assert_string_equal(metrics_endpoint("/health"), "/health");
    assert_string_equal(metrics_endpoint("/metrics"), "/metrics");
    assert_string_equal(metrics_endpoint("/"), "/");
    assert_string_equal(metrics_endpoint("/tokenize"), "/tokenize");
    /* Unknown paths share one label: a scanner cannot grow the registry. */
    assert_string_equal(metrics_endpoint("/wp-admin"), "other");
    assert_string_equal(metrics_endpoint("/v1/health"), "other");
    assert_string_equal(metrics_endpoint("/v1/"), "other");
    assert_string_equal(metrics_endpoint(NULL), "other");
}

static void test_escape(void **state) {
    char buf[64];
    assert_int_equal(metrics_escape_label("plain", buf, sizeof buf), 5);
    assert_string_equal(buf, "plain");
    assert_int_equal(metrics_escape_label("a\"b\\c\nd", buf, sizeof buf), 10);
    assert_string_equal(buf, "a\\\"b\\\\c\\nd");
    /* Truncation reports the full length and stays NUL-terminated. */
    assert_int_equal(metrics_escape_label("\"\"\"\"", buf, 4), 8);
    assert_int_equal(strlen(buf), 3);
}

static void test_requests_and_durations(void **state) {
    metrics *m = metrics_create();
    metrics_request(m, "/v1/chat/completions", 200, 0.02);
    metrics_request(m, "/chat/completions", 200, 0.2);
    metrics_request(m, "/v1/chat/completions", 400, 0.001);
    metrics_request(m, "/nope", 404, 0.001);
    metrics_request(m, "/v1/completions", 0, 3.0);   /* client left before a reply */
    metrics_request(m, "/v1/completions", 1234, 0.1); /* out of range: counted as 0 */
    size_t len;
    char *t = metrics_render(m, &len);
    assert_int_equal(strlen(t), len);
    assert_true(sample(t, "qkvd_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}") == 2);
    assert_true(sample(t, "qkvd_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}") == 1);
    assert_true(sample(t, "qkvd_requests_total{endpoint=\"other\",status=\"404\"}") == 1);
    assert_true(sample(t, "qkvd_requests_total{endpoint=\"/v1/completions\",status=\"0\"}") == 2);
    /* Durations: 0.001 and 0.02 and 0.2 for chat: cumulative buckets. */
    assert_true(sample(t, "qkvd_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.005\"}") == 1);
    assert_true(sample(t, "qkvd_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.05\"}") == 2);
    assert_true(sample(t, "qkvd_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"0.25\"}") == 3);
    assert_true(sample(t, "qkvd_request_duration_seconds_bucket{endpoint=\"/v1/chat/completions\",le=\"+Inf\"}") == 3);
    assert_true(sample(t, "qkvd_request_duration_seconds_count{endpoint=\"/v1/chat/completions\"}") == 3);
    double sum = sample(t, "qkvd_request_duration_seconds_sum{endpoint=\"/v1/chat/completions\"}");
    assert_true(sum > 0.2209 && sum < 0.2211);
    /* Endpoints without requests have no histogram series. */
    assert_true(sample(t, "qkvd_request_duration_seconds_count{endpoint=\"/v1/embeddings\"}") < 0);
    free(t);
    metrics_free(m);
}

static void test_model_series(void **state) {
    metrics *m = metrics_create();
    metrics_model *a = metrics_model_get(m, "m-a");
    metrics_model *q = metrics_model_get(m, "we\"ird\\id");
    assert_ptr_equal(metrics_model_get(m, "m-a"), a);
    assert_ptr_not_equal(a, q);
    int waiters = 3;
    metrics_model_set_waiters(q, &waiters);
    metrics_prompt_tokens(a, 7);
    metrics_prompt_tokens(a, 5);
    /* Two sequences: first tokens are TTFT, later ones inter-token latency;
     * an end-of-generation token is timed but not counted as generated. */
    uint64_t t0 = 1, last1 = 0, last2 = 0;
    metrics_token(a, t0, &last1, 1);
    metrics_token(a, t0, &last1, 1);
    metrics_token(a, t0, &last1, 0);
    metrics_token(a, t0, &last2, 1);
    assert_true(last1 != 0 && last2 != 0);
    engine_item items[2] = {{.n_tokens = 3}, {.n_tokens = 1}};
    metrics_step(a, 0.0005, items, 2);
    metrics_step(a, 0.003, items, 1);
    metrics_step(a, 10.0, items, 0);
    char *t = metrics_render(m, NULL);
    assert_true(sample(t, "qkvd_prompt_tokens_total{model=\"m-a\"}") == 12);
    assert_true(sample(t, "qkvd_generation_tokens_total{model=\"m-a\"}") == 3);
    assert_true(sample(t, "qkvd_time_to_first_token_seconds_count{model=\"m-a\"}") == 2);
    assert_true(sample(t, "qkvd_inter_token_latency_seconds_count{model=\"m-a\"}") == 2);
    assert_true(sample(t, "qkvd_step_tokens_total{model=\"m-a\"}") == 7);
    assert_true(sample(t, "qkvd_step_duration_seconds_bucket{model=\"m-a\",le=\"0.001\"}") == 1);
    assert_true(sample(t, "qkvd_step_duration_seconds_bucket{model=\"m-a\",le=\"0.005\"}") == 2);
    assert_true(sample(t, "qkvd_step_duration_seconds_bucket{model=\"m-a\",le=\"5\"}") == 2);
    assert_true(sample(t, "qkvd_step_duration_seconds_bucket{model=\"m-a\",le=\"+Inf\"}") == 3);
    assert_true(sample(t, "qkvd_step_duration_seconds_count{model=\"m-a\"}") == 3);
    /* No engine attached: not loaded, no KV or info series, counters at 0. */
    assert_true(sample(t, "qkvd_model_loaded{model=\"m-a\"}") == 0);
    assert_null(strstr(t, "qkvd_kv_blocks{"));
    assert_null(strstr(t, "qkvd_model_info{"));
    assert_true(sample(t, "qkvd_prefix_cache_hit_tokens_total{model=\"m-a\"}") == 0);
    assert_true(sample(t, "qkvd_requests_running{model=\"m-a\"}") == 0);
    /* Parked requests of an unloaded model count as waiting; the label is escaped. */
    assert_true(sample(t, "qkvd_requests_waiting{model=\"we\\\"ird\\\\id\"}") == 3);
    assert_true(sample(t, "qkvd_requests_waiting{model=\"m-a\"}") == 0);
    free(t);
    metrics_free(m);
}

/* Every family has one HELP and one TYPE line, before its samples, and its
 * samples are contiguous (what the text format requires). */
static void test_exposition_shape(void **state) {
    metrics *m = metrics_create();
    metrics_model *a = metrics_model_get(m, "a"), *b = metrics_model_get(m, "b");
    uint64_t l = 0;
    metrics_token(a, 1, &l, 1);
    l = 0;
    metrics_token(b, 1, &l, 1);
    metrics_request(m, "/health", 200, 0.001);
    char *t = metrics_render(m, NULL);
    assert_int_equal(count_lines_with(t, "# TYPE qkvd_time_to_first_token_seconds histogram\n"), 1);
    assert_int_equal(count_lines_with(t, "# TYPE qkvd_requests_waiting gauge\n"), 1);
    assert_int_equal(count_lines_with(t, "# TYPE qkvd_prefix_cache_hit_tokens_total counter\n"), 1);
    char seen[64][96];
    int n_seen = 0;
    char cur[96] = "";
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        if (line[0] != '#') {
            char name[96];
            size_t k = strcspn(line, "{ ");
            assert_true(k < sizeof name);
            memcpy(name, line, k);
            name[k] = 0;
            /* histogram series belong to their base name */
            const char *suf[] = {"_bucket", "_sum", "_count"};
            for (int s = 0; s < 3; s++) {
                size_t sl = strlen(suf[s]);
                if (k > sl && !strcmp(name + k - sl, suf[s]) && strstr(name, "_seconds")) name[k - sl] = 0;
            }
            if (strcmp(name, cur)) {
                for (int i = 0; i < n_seen; i++) assert_string_not_equal(seen[i], name);
                snprintf(seen[n_seen++], sizeof seen[0], "%s", name);
                snprintf(cur, sizeof cur, "%s", name);
            }
        } else if (!strncmp(line, "# TYPE ", 7)) {
            assert_true(strncmp(line + 7, "qkvd_", 5) == 0);
        }
        line = nl + 1;
    }
    assert_true(n_seen > 10);
    free(t);
    metrics_free(m);
}

/* --no-metrics: every hook takes a NULL registry or model. */
static void test_null_registry(void **state) {
    metrics_model *mm = metrics_model_get(NULL, "x");
    assert_null(mm);
    uint64_t l = 0;
    metrics_token(NULL, 1, &l, 1);
    metrics_request(NULL, "/health", 200, 0.1);
    metrics_prompt_tokens(NULL, 4);
    metrics_step(NULL, 0.1, NULL, 0);
    metrics_kv_snapshot(NULL, NULL);
    metrics_model_attach(NULL, NULL, NULL);
    metrics_model_detach(NULL);
    metrics_model_set_waiters(NULL, NULL);
    metrics_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoint_labels),
        cmocka_unit_test(test_escape),
        cmocka_unit_test(test_requests_and_durations),
        cmocka_unit_test(test_model_series),
        cmocka_unit_test(test_exposition_shape),
        cmocka_unit_test(test_null_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
