/* test_request.c -- OpenAI request parsing and validation, the error
 * envelope, and SSE/UTF-8 buffers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "errors.h"
#include "request.h"
#include "sse.h"

static int parse(enum gen_kind k, const char *body, gen_request *r, api_error *e) {
    return request_parse_generation(k, body, strlen(body), 1000, r, e);
}

static void test_chat_full(void **state) {
    gen_request r;
    api_error e;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                       "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},{\"role\":\"tool\",\"content\":\"t\",\"tool_call_id\":\"1\"}],"
                       "\"max_tokens\":5,\"max_completion_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,"
                       "\"n\":3,\"stop\":[\"x\",\"\",\"yy\"],\"seed\":-1,\"presence_penalty\":1,\"frequency_penalty\":-1,"
                       "\"repetition_penalty\":1.1,\"logit_bias\":{\"12\":-100,\"7\":3.5},\"logprobs\":true,\"top_logprobs\":4,"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u\",\"response_format\":{\"type\":\"text\"},"
                       "\"chat_template_kwargs\":{\"enable_thinking\":false},\"cache_prompt\":true}";
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_string_equal(r.model, "m");
    assert_int_equal(json_array_size(r.messages), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.messages, 1), "content")), "ab");
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.messages, 2), "content")), "");
    gen_request_free(&r);
    assert_int_equal(parse(GEN_CHAT, "{\"messages\":[{\"role\":\"developer\",\"content\":\"d\"}]}", &r, &e), 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(r.messages, 0), "role")), "system");
    gen_request_free(&r);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.sp.temperature == 0.5f && r.sp.top_p == 0.9f && r.sp.top_k == 40 && r.sp.min_p == 0.05f);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.n_stop, 2); /* the empty string is dropped */
    assert_string_equal(r.stop[1], "yy");
    assert_true(r.has_seed && r.sp.seed == UINT64_MAX);
    assert_true(r.sp.presence_penalty == 1 && r.sp.frequency_penalty == -1 && r.sp.repetition_penalty == 1.1f);
    assert_int_equal(r.sp.n_bias, 2);
    assert_true(r.logprobs && r.top_logprobs == 4 && r.sp.n_top_logprobs == 4);
    assert_true(r.stream && r.include_usage);
    assert_string_equal(r.user, "u");
    gen_request_free(&r);
}

static void test_structured(void **state) {
    gen_request r;
    api_error e;
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]";
    char body[1024];
    /* OpenAI wrapper */
    snprintf(body, sizeof body, "{%s,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"n\",\"strict\":true,\"schema\":{\"type\":\"integer\"}}}}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.format, GEN_FORMAT_JSON_SCHEMA);
    assert_string_equal(json_string_value(json_object_get(r.schema, "type")), "integer");
    gen_request_free(&r);
    /* Dify's bare form: json_schema is the schema */
    snprintf(body, sizeof body, "{%s,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"type\":\"object\",\"properties\":{}}}}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.format, GEN_FORMAT_JSON_SCHEMA);
    assert_string_equal(json_string_value(json_object_get(r.schema, "type")), "object");
    gen_request_free(&r);
    snprintf(body, sizeof body, "{%s,\"response_format\":{\"type\":\"json_object\"}}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.format, GEN_FORMAT_JSON_OBJECT);
    gen_request_free(&r);
    assert_int_equal(parse(GEN_COMPLETION, "{\"prompt\":\"a\",\"grammar\":\"root ::= [ab]+\"}", &r, &e), 0);
    assert_int_equal(r.format, GEN_FORMAT_GBNF);
    assert_string_equal(r.grammar, "root ::= [ab]+");
    gen_request_free(&r);
    /* tools: default auto, named choice, parallel flag, [] = none */
    snprintf(body, sizeof body, "{%s,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
             "{\"type\":\"function\",\"function\":{\"name\":\"g.x\",\"parameters\":{\"type\":\"object\"}}}]}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.tool_choice, GEN_TOOLS_AUTO);
    assert_int_equal(json_array_size(r.tools), 2);
    assert_true(r.parallel_tool_calls);
    gen_request_free(&r);
    snprintf(body, sizeof body, "{%s,\"parallel_tool_calls\":false,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}},"
             "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"g\"}}]}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_int_equal(r.tool_choice, GEN_TOOLS_NAMED);
    assert_int_equal(r.tool_named, 1);
    assert_false(r.parallel_tool_calls);
    gen_request_free(&r);
    snprintf(body, sizeof body, "{%s,\"tools\":[],\"tool_choice\":\"none\"}", m);
    assert_int_equal(parse(GEN_CHAT, body, &r, &e), 0);
    assert_null(r.tools);
    assert_int_equal(r.tool_choice, GEN_TOOLS_NONE);
    gen_request_free(&r);
}

static void test_defaults(void **state) {
    gen_request r;
    api_error e;
    assert_int_equal(parse(GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r, &e), 0);
    assert_int_equal(r.max_tokens, -1);
    assert_int_equal(r.n, 1);
    assert_null(r.model);
    assert_false(r.has_seed || r.stream || r.logprobs || r.n_stop);
    assert_true(r.sp.temperature == 1.0f);
    gen_request_free(&r);
}

typedef struct bad_case { enum gen_kind kind; const char *body; int status; const char *param; } bad_case;

static const bad_case bad_cases[] = {
    {GEN_CHAT, "", 400, ""},
    {GEN_CHAT, "{", 400, ""},
    {GEN_CHAT, "[]", 400, ""},
    {GEN_CHAT, "{\"messages\":[],\"a\":1}", 400, "messages"},
    {GEN_CHAT, "{\"messages\":\"hi\"}", 400, "messages"},
    {GEN_CHAT, "{\"messages\":[1]}", 400, "messages[0]"},
    {GEN_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", 400, "messages[0].role"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400, "messages[0].content[0]"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}", 400, "messages[0].content[0]"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"name\":3}]}", 400, "messages[0].name"},
    {GEN_CHAT, "{\"model\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "model"},
    {GEN_CHAT, "{\"temperature\":-0.1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "temperature"},
    {GEN_CHAT, "{\"top_p\":\"1\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "top_p"},
    {GEN_CHAT, "{\"top_k\":1.5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "top_k"},
    {GEN_CHAT, "{\"min_p\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "min_p"},
    {GEN_CHAT, "{\"n\":129,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "n"},
    {GEN_CHAT, "{\"max_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "max_tokens"},
    {GEN_CHAT, "{\"max_completion_tokens\":\"5\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "max_completion_tokens"},
    {GEN_CHAT, "{\"presence_penalty\":3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "presence_penalty"},
    {GEN_CHAT, "{\"frequency_penalty\":-3,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "frequency_penalty"},
    {GEN_CHAT, "{\"repetition_penalty\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "repetition_penalty"},
    {GEN_CHAT, "{\"stop\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "stop"},
    {GEN_CHAT, "{\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "stop"},
    {GEN_CHAT, "{\"seed\":1.5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "seed"},
    {GEN_CHAT, "{\"logit_bias\":{\"abc\":1},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "logit_bias"},
    {GEN_CHAT, "{\"logit_bias\":{\"1000\":1},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "logit_bias"},
    {GEN_CHAT, "{\"logit_bias\":{\"1\":101},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "logit_bias"},
    {GEN_CHAT, "{\"logprobs\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "logprobs"},
    {GEN_CHAT, "{\"logprobs\":true,\"top_logprobs\":21,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "top_logprobs"},
    {GEN_CHAT, "{\"top_logprobs\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "top_logprobs"},
    {GEN_CHAT, "{\"stream\":\"yes\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "stream"},
    {GEN_CHAT, "{\"stream_options\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "stream_options"},
    {GEN_CHAT, "{\"stream\":true,\"stream_options\":{\"include_usage\":1},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "stream_options.include_usage"},
    {GEN_CHAT, "{\"tools\":{},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tools"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tools[0].function.name"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tools[1].function.name"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":[]}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tools[0].function.parameters"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"fn\",\"function\":{\"name\":\"f\"}}],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tools[0].type"},
    {GEN_CHAT, "{\"tool_choice\":\"required\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tool_choice"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"g\"}},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tool_choice"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"always\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tool_choice"},
    {GEN_CHAT, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"response_format\":{\"type\":\"json_object\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "tool_choice"},
    {GEN_CHAT, "{\"parallel_tool_calls\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "parallel_tool_calls"},
    {GEN_CHAT, "{\"response_format\":{\"type\":\"xml\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "response_format"},
    {GEN_CHAT, "{\"response_format\":\"json\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "response_format"},
    {GEN_CHAT, "{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":5}},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "response_format"},
    {GEN_CHAT, "{\"grammar\":\"\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "grammar"},
    {GEN_CHAT, "{\"grammar\":\"root ::= \\\"a\\\"\",\"response_format\":{\"type\":\"json_object\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "grammar"},
    {GEN_CHAT, "{\"functions\":[],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "functions"},
    {GEN_CHAT, "{\"response_format\":{\"type\":\"json_schema\"},\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "response_format"},
    {GEN_CHAT, "{\"store\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "store"},
    {GEN_CHAT, "{\"user\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "user"},
    {GEN_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"messages\":[]}", 400, ""},
    {GEN_COMPLETION, "{}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":[]}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":[\"a\",1]}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":[[1],[]]}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":[1,1000]}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":[1,-1]}", 400, "prompt"},
    {GEN_COMPLETION, "{\"prompt\":\"a\",\"logprobs\":true}", 400, "logprobs"},
    {GEN_COMPLETION, "{\"prompt\":\"a\",\"echo\":1}", 400, "echo"},
    {GEN_COMPLETION, "{\"prompt\":\"a\",\"suffix\":\"b\"}", 400, "suffix"},
    {GEN_COMPLETION, "{\"prompt\":\"a\",\"best_of\":3}", 400, "best_of"},
    {GEN_COMPLETION, "{\"prompt\":\"a\",\"max_tokens\":-1}", 400, "max_tokens"},
};

static void test_bad_fields(void **state) {
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        gen_request r;
        api_error e;
        memset(&e, 0, sizeof e);
        int rc = parse(c->kind, c->body, &r, &e);
        if (rc != -1 || e.status != c->status || strcmp(e.param, c->param)) {
            print_error("case %zu %s: rc %d status %d param '%s' (%s)\n", i, c->body, rc, e.status, e.param, e.message);
            fail();
        }
        assert_true(strlen(e.message) > 0);
        assert_string_equal(e.type, "invalid_request_error");
    }
}

static void test_prompt_shapes(void **state) {
    gen_request r;
    api_error e;
    assert_int_equal(parse(GEN_COMPLETION, "{\"prompt\":\"hello\",\"echo\":true,\"logprobs\":3,\"max_tokens\":0}", &r, &e), 0);
    assert_int_equal(r.n_prompts, 1);
    assert_string_equal(r.prompts[0].text, "hello");
    assert_true(r.echo && r.logprobs && r.top_logprobs == 3 && r.max_tokens == 0);
    gen_request_free(&r);
    assert_int_equal(parse(GEN_COMPLETION, "{\"prompt\":[\"a\",\"\",\"c\"]}", &r, &e), 0);
    assert_int_equal(r.n_prompts, 3);
    assert_int_equal(r.prompts[1].text_len, 0);
    gen_request_free(&r);
    assert_int_equal(parse(GEN_COMPLETION, "{\"prompt\":[1,2,999]}", &r, &e), 0);
    assert_int_equal(r.n_prompts, 1);
    assert_int_equal(r.prompts[0].n_tokens, 3);
    assert_int_equal(r.prompts[0].tokens[2], 999);
    gen_request_free(&r);
    assert_int_equal(parse(GEN_COMPLETION, "{\"prompt\":[[1,2],[3]],\"best_of\":1}", &r, &e), 0);
    assert_int_equal(r.n_prompts, 2);
    assert_int_equal(r.prompts[1].tokens[0], 3);
    gen_request_free(&r);
}

static void test_embeddings(void **state) {
    embd_request r;
    api_error e;
    const char *b = "{\"input\":[\"a\",\"bb\"],\"model\":\"m\",\"encoding_format\":\"base64\",\"dimensions\":64,\"user\":\"x\"}";
    assert_int_equal(request_parse_embeddings(b, strlen(b), 100, &r, &e), 0);
    assert_int_equal(r.n_inputs, 2);
    assert_true(r.base64);
    assert_int_equal(r.dimensions, 64);
    embd_request_free(&r);
    b = "{\"input\":\"\"}";
    assert_int_equal(request_parse_embeddings(b, strlen(b), 100, &r, &e), -1);
    assert_string_equal(e.param, "input");
    b = "{\"input\":\"a\",\"encoding_format\":\"int8\"}";
    assert_int_equal(request_parse_embeddings(b, strlen(b), 100, &r, &e), -1);
    assert_string_equal(e.param, "encoding_format");
}

static void test_error_json(void **state) {
    api_error e;
    api_error_set(&e, 503, NULL, NULL, "queue_full", "busy \xff\xfe %d", 3);
    size_t len;
    char *s = api_error_json(&e, &len);
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    assert_non_null(j);
    json_t *err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "server_error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "queue_full");
    assert_true(json_is_null(json_object_get(err, "param")));
    assert_string_equal(json_string_value(json_object_get(err, "message")), "busy \xEF\xBF\xBD\xEF\xBF\xBD 3");
    assert_int_equal(strlen(s), len);
    json_decref(j);
    free(s);
}

static void test_sse_buf(void **state) {
    sse_buf b;
    sse_buf_init(&b);
    json_t *o = json_pack("{s:i}", "a", 1);
    sse_buf_event_json(&b, o);
    sse_buf_event_done(&b);
    json_decref(o);
    assert_string_equal(b.data, "data: {\"a\":1}\n\ndata: [DONE]\n\n");
    char out[8];
    assert_int_equal(sse_buf_read(&b, out, 6), 6);
    assert_memory_equal(out, "data: ", 6);
    assert_int_equal(sse_buf_pending(&b), strlen("{\"a\":1}\n\ndata: [DONE]\n\n"));
    /* Appending after partial reads keeps the unread data in order. */
    for (int i = 0; i < 1000; i++) sse_buf_append(&b, "x", 1);
    char big[2048];
    size_t n = sse_buf_read(&b, big, sizeof big);
    assert_int_equal(n, strlen("{\"a\":1}\n\ndata: [DONE]\n\n") + 1000);
    assert_memory_equal(big, "{\"a\":1}", 7);
    assert_int_equal(sse_buf_pending(&b), 0);
    sse_buf_free(&b);
    /* UTF-8: valid prefix stops before a truncated character; invalid bytes become U+FFFD. */
    assert_int_equal(sse_utf8_valid_prefix("ab\xC3\xA9\xE2\x82", 6), 4);
    assert_int_equal(sse_utf8_valid_prefix("\xED\xA0\x80", 3), 0); /* surrogate */
    assert_int_equal(sse_utf8_valid_prefix("\xC0\xAF", 2), 0);     /* overlong */
    sse_buf_append_utf8(&b, "a\xFF" "b", 3);
    assert_string_equal(b.data, "a\xEF\xBF\xBD" "b");
    sse_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_full),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_structured),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_prompt_shapes),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_sse_buf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
