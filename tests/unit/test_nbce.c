/* test_nbce.c -- NBCE combination (one context == plain decoding, the
 * formula for several, pooling) and the request fields that select it and
 * the attention kind (400s naming the parameter). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>
#include "nbce.h"
#include "request.h"

enum { V = 6 };

static void log_softmax(const double *x, float *out) {
    double mx = x[0], s = 0;
    for (int i = 1; i < V; i++) if (x[i] > mx) mx = x[i];
    for (int i = 0; i < V; i++) s += exp(x[i] - mx);
    for (int i = 0; i < V; i++) out[i] = (float)(x[i] - mx - log(s));
}

static void test_one_context_is_plain(void **state) {
    (void)state;
    float l1[V], l0[V], out[V];
    double a[V] = {1, 2, 0.5, -1, 3, 0}, b[V] = {0, 0, 0, 4, 0, 0};
    log_softmax(a, l1);
    log_softmax(b, l0);
    const float *rows[1] = {l1};
    nbce_combine(rows, 1, l0, V, 0.25f, NBCE_POOL_MIN_ENTROPY, out);
    for (int i = 0; i < V; i++) assert_true(out[i] == l1[i]);
}

static void test_formula(void **state) {
    (void)state;
    float l1[V], l2[V], l0[V], out[V];
    double a[V] = {1, 2, 0.5, -1, 3, 0}, c[V] = {9, 0, 0, 0, 0, 0}, b[V] = {0, 1, 0, 4, 0, 0};
    log_softmax(a, l1);
    log_softmax(c, l2); /* sharper: lower entropy */
    log_softmax(b, l0);
    assert_true(nbce_entropy(l2, V) < nbce_entropy(l1, V));
    const float *rows[2] = {l1, l2};
    const float beta = 0.25f;
    for (int pool = 0; pool < 2; pool++) {
        nbce_combine(rows, 2, l0, V, beta, (enum nbce_pool)pool, out);
        double want[V], s = 0, mx = -INFINITY;
        for (int i = 0; i < V; i++) {
            double p = pool == NBCE_POOL_MEAN ? (l1[i] + l2[i]) / 2.0 : l2[i];
            want[i] = (beta + 1) * p - beta * l0[i];
            if (want[i] > mx) mx = want[i];
        }
        for (int i = 0; i < V; i++) s += exp(want[i] - mx);
        double total = 0;
        for (int i = 0; i < V; i++) {
            assert_true(fabs(out[i] - (want[i] - mx - log(s))) < 1e-5);
            total += exp(out[i]);
        }
        assert_true(fabs(total - 1.0) < 1e-5);
    }
    enum nbce_pool p;
    assert_int_equal(nbce_pool_parse("mean", &p), 0);
    assert_int_equal(p, NBCE_POOL_MEAN);
    assert_int_equal(nbce_pool_parse("max-sum", &p), -1);
}

static int parse(const char *body, gen_request *r, api_error *e) {
    return request_parse_generation(GEN_COMPLETION, body, strlen(body), 512, r, e);
}

static void test_request_fields(void **state) {
    (void)state;
    gen_request r;
    api_error e;
    attn_params def, out;
    attn_params_default(&def);
    def.window = 100;
    assert_int_equal(parse("{\"prompt\":\"x\",\"attention\":{\"kind\":\"rerope\",\"window\":512}}", &r, &e), 0);
    assert_int_equal(request_attention_resolve(&r, &def, &out, &e), 0);
    assert_int_equal(out.kind, ATTN_REROPE);
    assert_int_equal(out.window, 512);
    gen_request_free(&r);
    assert_int_equal(parse("{\"prompt\":\"x\",\"attention\":{\"kind\":\"window\",\"sinks\":2,"
                           "\"rope_scaling\":\"yarn\",\"rope_factor\":4}}", &r, &e), 0);
    assert_int_equal(request_attention_resolve(&r, &def, &out, &e), 0);
    assert_int_equal(out.window, 100); /* the server default */
    assert_int_equal(out.sinks, 2);
    assert_true(out.rope_set && out.rope.type == ROPE_SCALING_YARN && out.rope.factor == 4.0f);
    gen_request_free(&r);
    struct { const char *body, *param; } bad[] = {
        {"{\"prompt\":\"x\",\"attention\":\"window\"}", "attention"},
        {"{\"prompt\":\"x\",\"attention\":{\"kind\":\"flash\"}}", "attention.kind"},
        {"{\"prompt\":\"x\",\"attention\":{\"window\":-1}}", "attention.window"},
        {"{\"prompt\":\"x\",\"attention\":{\"leak\":1}}", "attention.leak"},
        {"{\"prompt\":\"x\",\"attention\":{\"rope_factor\":0.5}}", "attention.rope_factor"},
        {"{\"prompt\":\"x\",\"attention\":{\"rope_scaling\":\"su\"}}", "attention.rope_scaling"},
        {"{\"prompt\":\"x\",\"attention\":{\"wndow\":4}}", "attention.wndow"},
        {"{\"prompt\":\"x\",\"context_mode\":\"fancy\"}", "context_mode"},
        {"{\"prompt\":\"x\",\"contexts\":[\"a\"]}", "contexts"},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"contexts\":[1]}", "contexts"},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"nbce_beta\":-1}", "nbce_beta"},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"nbce_pool\":\"max\"}", NULL},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"nbce_pool\":\"sum\"}", "nbce_pool"},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"n\":2}", "n"},
        {"{\"prompt\":\"x\",\"context_mode\":\"nbce\",\"echo\":true}", "echo"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].body, &r, &e);
        if (!bad[i].param) {
            assert_int_equal(rc, 0);
            gen_request_free(&r);
            continue;
        }
        if (rc == 0) fail_msg("accepted: %s", bad[i].body);
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, bad[i].param);
    }
    assert_int_equal(parse("{\"prompt\":\"q\",\"context_mode\":\"nbce\",\"contexts\":[\"a\",\"b\"],\"nbce_beta\":0.5}", &r, &e), 0);
    assert_int_equal(r.nbce, 1);
    assert_int_equal(r.n_contexts, 2);
    assert_true(r.nbce_beta == 0.5f);
    gen_request_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_context_is_plain),
        cmocka_unit_test(test_formula),
        cmocka_unit_test(test_request_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
