/* routes_misc.c -- request routing, the small endpoints (/health, /v1/models,
 * /tokenize, /detokenize, /apply-template) and helpers shared by routes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "metrics.h"
#include "request.h"
#include "serve.h"
#include "webui.h"

static void reply_400(http_req *r, const char *param, const char *msg) {
    api_error e;
    api_error_set(&e, 400, NULL, param, "invalid_value", "%s", msg);
    http_reply_error(r, &e);
}

static int require_loaded(serve_app *a, http_req *r) {
    if (a->e) return 1;
    api_error e;
    api_error_set(&e, 503, NULL, NULL, "model_loading", "the model is still loading; retry shortly");
    http_reply_error(r, &e);
    return 0;
}

int routes_check_model(serve_app *a, http_req *r, const char *model) {
    if (!model || !strcmp(model, a->model_id)) return 1;
    api_error e;
    api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                  "the model '%.200s' does not exist; this server serves '%s'", model, a->model_id);
    http_reply_error(r, &e);
    return 0;
}

void routes_make_id(serve_app *a, const char *prefix, char *buf, size_t cap) {
    uint64_t x = uv_hrtime() ^ (++a->id_counter * 0x9E3779B97F4A7C15ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    snprintf(buf, cap, "%s-%016llx%04llx", prefix, (unsigned long long)x, (unsigned long long)(a->id_counter & 0xffff));
}

int32_t *routes_tokenize(serve_app *a, const char *text, size_t len, int parse_special, int add_bos,
                         int32_t *n_out, api_error *err) {
    int32_t bos = tokenizer_bos(a->tok);
    int want_bos = add_bos && bos >= 0 && tokenizer_add_bos(a->tok);
    int64_t cap = (int64_t)len + 8, n;
    int32_t *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!ids) goto oom;
    for (;;) {
        n = tokenizer_encode(a->tok, text, len, 0, parse_special, ids + 1, cap - 1);
        if (n < 0) {
            free(ids);
            api_error_set(err, 400, NULL, NULL, "invalid_value", "the text could not be tokenised (error %lld)", (long long)n);
            return NULL;
        }
        if (n <= cap - 1) break;
        cap = n + 1;
        int32_t *p = realloc(ids, (size_t)cap * sizeof(int32_t));
        if (!p) goto oom;
        ids = p;
    }
    if (want_bos && !(n > 0 && ids[1] == bos)) {
        ids[0] = bos;
        n++;
    } else {
        memmove(ids, ids + 1, (size_t)n * sizeof(int32_t));
    }
    *n_out = (int32_t)n;
    return ids;
oom:
    free(ids);
    api_error_set(err, 413, NULL, NULL, "request_too_large", "out of memory tokenising the prompt");
    return NULL;
}

char *routes_render_chat(serve_app *a, const json_t *messages, const json_t *tools, api_error *err) {
    return routes_render_chat_ex(a, messages, tools, NULL, err);
}

char *routes_render_chat_ex(serve_app *a, const json_t *messages, const json_t *tools,
                            const chat_render_opts *ro, api_error *err) {
    chat_template_opts o = {.bos_token = a->bos_text, .eos_token = a->eos_text,
                            .add_generation_prompt = ro ? ro->add_generation_prompt : 1,
                            .extra = ro ? ro->kwargs : NULL};
    const char *tail = NULL; /* content of the message to continue */
    if (ro && ro->continue_final_message) {
        size_t n = json_array_size(messages);
        json_t *last = n ? json_array_get(messages, n - 1) : NULL;
        const char *role = json_string_value(json_object_get(last, "role"));
        tail = json_string_value(json_object_get(last, "content"));
        if (!role || strcmp(role, "assistant") || !tail || !*tail) {
            api_error_set(err, 400, NULL, "continue_final_message", "invalid_value",
                          "'continue_final_message' needs a last message from the assistant with text content");
            return NULL;
        }
    }
    char *out = NULL, msg[400];
    if (chat_template_render(a->tmpl, messages, tools, &o, &out, msg, sizeof msg) < 0) {
        api_error_set(err, 500, "server_error", NULL, "template_error", "chat template error: %s", msg);
        return NULL;
    }
    if (tail) {
        /* The template closes the last turn (end-of-turn marker, newline):
         * cut right after its content so generation continues it. */
        char *at = NULL;
        for (char *p = strstr(out, tail); p; p = strstr(p + 1, tail)) at = p;
        if (!at) {
            free(out);
            api_error_set(err, 400, NULL, "continue_final_message", "invalid_value",
                          "'continue_final_message': the chat template does not print the last message verbatim");
            return NULL;
        }
        at[strlen(tail)] = '\0';
    }
    return out;
}

static json_t *model_object(serve_app *a) {
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(a->model_id));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(a->created));
    json_object_set_new(m, "owned_by", json_string("qkvd"));
    if (a->info) {
        json_t *meta = json_object();
        json_object_set_new(meta, "n_ctx", json_integer(a->info->n_ctx));
        json_object_set_new(meta, "n_ctx_train", json_integer(a->info->n_ctx_train));
        json_object_set_new(meta, "n_vocab", json_integer(a->info->n_vocab));
        json_object_set_new(meta, "n_embd", json_integer(a->info->n_embd));
        json_object_set_new(meta, "n_params", json_integer((json_int_t)a->info->n_params));
        json_object_set_new(meta, "arch", json_string(a->info->arch));
        json_object_set_new(meta, "weight_type", json_string(a->info->weight_type ? a->info->weight_type : ""));
        json_object_set_new(meta, "attention", routes_attention_json(a));
        json_object_set_new(m, "meta", meta);
    }
    return m;
}

static void route_health(serve_app *a, http_req *r) {
    json_t *o = json_object();
    if (!a->e) {
        json_object_set_new(o, "status", json_string("loading"));
        http_reply_header(r, "Retry-After", "1");
        http_reply_json(r, 503, o);
        return;
    }
    json_object_set_new(o, "status", json_string("ok"));
    http_reply_json(r, 200, o);
}

/* Prometheus text exposition of the whole process (every model's series);
 * open without the API key, like /health (see http.c). */
static void route_metrics(serve_app *a, http_req *r) {
    if (!a->metrics) {
        api_error e;
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "metrics are off (--no-metrics)");
        http_reply_error(r, &e);
        return;
    }
    size_t len;
    char *text = metrics_render(a->metrics, &len);
    http_reply(r, 200, METRICS_CONTENT_TYPE, text, len);
    free(text);
}

static void route_models(serve_app *a, http_req *r) {
    if (!require_loaded(a, r)) return;
    json_t *o = json_object(), *data = json_array();
    json_object_set_new(o, "object", json_string("list"));
    json_array_append_new(data, model_object(a));
    json_object_set_new(o, "data", data);
    http_reply_json(r, 200, o);
}

static void route_model(serve_app *a, http_req *r, const char *id) {
    if (!require_loaded(a, r)) return;
    if (strcmp(id, a->model_id)) {
        api_error e;
        api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                      "the model '%.200s' does not exist; this server serves '%s'", id, a->model_id);
        http_reply_error(r, &e);
        return;
    }
    http_reply_json(r, 200, model_object(a));
}

/* Token text as JSON: a string when it is valid UTF-8, else its byte values. */
static json_t *piece_json(serve_app *a, int32_t id) {
    char buf[512];
    int64_t n = tokenizer_token_to_bytes(a->tok, id, 1, buf, sizeof buf);
    if (n > (int64_t)sizeof buf) n = sizeof buf;
    if (n < 0) n = 0;
    if (sse_utf8_valid_prefix(buf, (size_t)n) == (size_t)n) return json_stringn(buf, (size_t)n);
    json_t *arr = json_array();
    for (int64_t i = 0; i < n; i++) json_array_append_new(arr, json_integer((unsigned char)buf[i]));
    return arr;
}

static void route_tokenize(serve_app *a, http_req *r) {
    if (!require_loaded(a, r)) return;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_error e;
    json_t *o = request_parse_object(body, len, &e);
    if (!o) { http_reply_error(r, &e); return; }
    json_t *content = json_object_get(o, "content");
    json_t *add_special = json_object_get(o, "add_special");
    json_t *parse_special = json_object_get(o, "parse_special");
    json_t *with_pieces = json_object_get(o, "with_pieces");
    if (!json_is_string(content)) { json_decref(o); reply_400(r, "content", "'content' is required and must be a string"); return; }
    if (add_special && !json_is_boolean(add_special)) { json_decref(o); reply_400(r, "add_special", "'add_special' must be a boolean"); return; }
    if (parse_special && !json_is_boolean(parse_special)) { json_decref(o); reply_400(r, "parse_special", "'parse_special' must be a boolean"); return; }
    if (with_pieces && !json_is_boolean(with_pieces)) { json_decref(o); reply_400(r, "with_pieces", "'with_pieces' must be a boolean"); return; }
    int32_t n;
    int32_t *ids = routes_tokenize(a, json_string_value(content), json_string_length(content),
                                   parse_special ? json_is_true(parse_special) : 1, json_is_true(add_special), &n, &e);
    json_decref(o);
    if (!ids) { http_reply_error(r, &e); return; }
    json_t *toks = json_array();
    for (int32_t i = 0; i < n; i++) {
        if (json_is_true(with_pieces)) {
            json_t *t = json_object();
            json_object_set_new(t, "id", json_integer(ids[i]));
            json_object_set_new(t, "piece", piece_json(a, ids[i]));
            json_array_append_new(toks, t);
        } else {
            json_array_append_new(toks, json_integer(ids[i]));
        }
    }
    free(ids);
    json_t *out = json_object();
    json_object_set_new(out, "tokens", toks);
    http_reply_json(r, 200, out);
}

static void route_detokenize(serve_app *a, http_req *r) {
    if (!require_loaded(a, r)) return;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_error e;
    json_t *o = request_parse_object(body, len, &e);
    if (!o) { http_reply_error(r, &e); return; }
    json_t *tokens = json_object_get(o, "tokens");
    if (!json_is_array(tokens)) { json_decref(o); reply_400(r, "tokens", "'tokens' is required and must be an array of token ids"); return; }
    size_t n = json_array_size(tokens);
    int32_t *ids = malloc((n + 1) * sizeof(int32_t));
    if (!ids) abort();
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(tokens, i);
        json_int_t v = json_is_integer(t) ? json_integer_value(t) : -1;
        if (v < 0 || v >= a->info->n_vocab) {
            free(ids);
            json_decref(o);
            char msg[160];
            snprintf(msg, sizeof msg, "'tokens' element %zu is not a token id in [0, %d)", i, (int)a->info->n_vocab);
            reply_400(r, "tokens", msg);
            return;
        }
        ids[i] = (int32_t)v;
    }
    json_decref(o);
    int64_t need = tokenizer_decode(a->tok, ids, (int64_t)n, 0, NULL, 0);
    char *text = malloc((size_t)(need > 0 ? need : 0) + 1);
    if (!text) abort();
    int64_t got = need > 0 ? tokenizer_decode(a->tok, ids, (int64_t)n, 0, text, need) : 0;
    if (got < 0) got = 0;
    free(ids);
    sse_buf b;
    sse_buf_init(&b);
    sse_buf_append_utf8(&b, text, (size_t)(got < need ? got : need));
    free(text);
    json_t *out = json_object();
    json_object_set_new(out, "content", json_stringn(b.data ? b.data : "", b.len));
    sse_buf_free(&b);
    http_reply_json(r, 200, out);
}

static void route_apply_template(serve_app *a, http_req *r) {
    if (!require_loaded(a, r)) return;
    size_t len;
    const char *body = http_req_body(r, &len);
    api_error e;
    json_t *o = request_parse_object(body, len, &e);
    if (!o) { http_reply_error(r, &e); return; }
    json_t *msgs = request_messages_normalise(json_object_get(o, "messages"), &e);
    json_t *tools = json_object_get(o, "tools");
    if (!msgs) { json_decref(o); http_reply_error(r, &e); return; }
    if (tools && !json_is_null(tools) && !json_is_array(tools)) {
        json_decref(msgs);
        json_decref(o);
        reply_400(r, "tools", "'tools' must be an array");
        return;
    }
    char *prompt = routes_render_chat_tools(a, msgs, json_is_array(tools) ? tools : NULL, NULL, &e);
    json_decref(msgs);
    json_decref(o);
    if (!prompt) { http_reply_error(r, &e); return; }
    json_t *out = json_object();
    json_object_set_new(out, "prompt", json_string(prompt));
    free(prompt);
    http_reply_json(r, 200, out);
}

typedef struct route {
    const char *path;
    const char *method;
    int prefix; /* path is a prefix followed by an id */
} route;

static const route routes[] = {
    {"/", "GET", 0},
    {"/health", "GET", 0},
    {"/metrics", "GET", 0},
    {"/v1/models", "GET", 0},
    {"/v1/models/", "GET", 1},
    {"/v1/chat/completions", "POST", 0},
    {"/v1/completions", "POST", 0},
    {"/v1/embeddings", "POST", 0},
    {"/tokenize", "POST", 0},
    {"/detokenize", "POST", 0},
    {"/apply-template", "POST", 0},
    {NULL, NULL, 0},
};

void routes_dispatch(void *app, http_req *r) {
    serve_app *a = app;
    const char *path = http_req_path(r), *method = http_req_method(r);
    /* Clients configured with a base URL lacking /v1 call /chat/completions,
     * /completions, /embeddings, /models: serve those as their /v1 twins. */
    char alias[256];
    if (strncmp(path, "/v1/", 4) && (!strcmp(path, "/chat/completions") || !strcmp(path, "/completions") ||
                                     !strcmp(path, "/embeddings") || !strncmp(path, "/models", 7)) &&
        strlen(path) < sizeof alias - 3) {
        snprintf(alias, sizeof alias, "/v1%s", path);
        path = alias;
    }
    const route *hit = NULL;
    for (const route *rt = routes; rt->path; rt++) {
        size_t l = strlen(rt->path);
        if (rt->prefix ? (!strncmp(path, rt->path, l) && path[l] && !strchr(path + l, '/')) : !strcmp(path, rt->path)) {
            hit = rt;
            break;
        }
    }
    api_error e;
    if (!hit) {
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "unknown endpoint %.200s %.300s", method, path);
        http_reply_error(r, &e);
        return;
    }
    if (strcmp(method, hit->method) && !(!strcmp(method, "HEAD") && !strcmp(hit->method, "GET"))) {
        api_error_set(&e, 405, "invalid_request_error", NULL, "method_not_allowed", "%s does not accept %.20s (use %s)",
                      hit->path, method, hit->method);
        http_reply_header(r, "Allow", hit->method);
        http_reply_error(r, &e);
        return;
    }
    if (!strcmp(hit->path, "/") && a->cfg.no_webui) {
        api_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "the chat page is off (--no-webui)");
        http_reply_error(r, &e);
    } else if (!strcmp(hit->path, "/")) webui_reply(r);
    else if (!strcmp(hit->path, "/health")) route_health(a, r);
    else if (!strcmp(hit->path, "/metrics")) route_metrics(a, r);
    else if (!strcmp(hit->path, "/v1/models")) route_models(a, r);
    else if (hit->prefix) route_model(a, r, path + strlen(hit->path));
    else if (!strcmp(hit->path, "/v1/chat/completions")) routes_chat(a, r);
    else if (!strcmp(hit->path, "/v1/completions")) routes_completions(a, r);
    else if (!strcmp(hit->path, "/v1/embeddings")) routes_embeddings(a, r);
    else if (!strcmp(hit->path, "/tokenize")) route_tokenize(a, r);
    else if (!strcmp(hit->path, "/detokenize")) route_detokenize(a, r);
    else route_apply_template(a, r);
}
