/* routes_generate.c -- POST /v1/chat/completions and POST /v1/completions:
 * validate, build the prompt, submit to the scheduler, and turn its
 * callbacks into OpenAI JSON (one response) or SSE chunks (stream). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "grammar/grammar.h"
#include "log.h"
#include "request.h"
#include "serve.h"
#include "nbce.h"
#include "tool_calls.h"

struct gen_ctx;

typedef struct gen_choice {
    sse_buf text;          /* non-stream: the whole text */
    const char *finish;    /* NULL until finished */
    int32_t n_tokens;
    json_t *lp;            /* chat: logprob entries (stream: not yet sent) */
    json_t *lp_tokens, *lp_logprobs, *lp_top, *lp_offset; /* completions format */
    size_t lp_off;         /* text offset of the next token (completions) */
    /* tool calls (chat with tools): the output goes through the parser */
    struct gen_ctx *c;
    int32_t idx;
    tool_parser tp;
    json_t *calls;         /* non-stream: [{id, type, function: {name, arguments}}] */
    sse_buf args;          /* non-stream: arguments of the last call so far */
} gen_choice;

typedef struct gen_ctx {
    serve_app *a;
    http_req *r;
    sched_job *job;
    enum gen_kind kind;
    int stream, include_usage, logprobs;
    int32_t n_choices, n;
    gen_choice *ch;
    char id[64];
    int64_t created;
    int64_t prompt_tokens, completion_tokens;
    sse_buf *out;
    /* echo (+ logprobs): per prompt */
    int32_t n_prompts;
    char **echo;             /* owned copies of the echoed prompt text */
    size_t *echo_len;
    json_t **p_tokens, **p_logprobs, **p_top, **p_offset; /* prompt token log-probs */
    size_t *p_off;           /* text offset of the next prompt token */
    size_t *p_strip;         /* bytes the first piece has beyond its decoded text (SPM space) */
    int tools;               /* parse tool calls out of the output */
    const tool_syntax *sx;
    uint64_t id_state;       /* PRNG for call ids */
} gen_ctx;

/* A JSON string from bytes that may not be valid UTF-8. */
static json_t *jstr(const char *s, size_t n) {
    if (sse_utf8_valid_prefix(s, n) == n) return json_stringn(s, n);
    sse_buf b;
    sse_buf_init(&b);
    sse_buf_append_utf8(&b, s, n);
    json_t *v = json_stringn(b.data, b.len);
    sse_buf_free(&b);
    return v;
}

static void choice_lp_reset(gen_ctx *c, gen_choice *ch) {
    if (!c->logprobs) return;
    if (c->kind == GEN_CHAT) {
        json_decref(ch->lp);
        ch->lp = json_array();
    } else {
        json_decref(ch->lp_tokens);
        json_decref(ch->lp_logprobs);
        json_decref(ch->lp_top);
        json_decref(ch->lp_offset);
        ch->lp_tokens = json_array();
        ch->lp_logprobs = json_array();
        ch->lp_top = json_array();
        ch->lp_offset = json_array();
    }
}

static void gen_ctx_free(gen_ctx *c) {
    for (int32_t p = 0; p < c->n_prompts; p++) {
        if (c->echo) free(c->echo[p]);
        if (c->p_tokens) {
            json_decref(c->p_tokens[p]);
            json_decref(c->p_logprobs[p]);
            json_decref(c->p_top[p]);
            json_decref(c->p_offset[p]);
        }
    }
    free(c->echo);
    free(c->echo_len);
    free(c->p_tokens);
    free(c->p_logprobs);
    free(c->p_top);
    free(c->p_offset);
    free(c->p_off);
    free(c->p_strip);
    for (int32_t i = 0; c->ch && i < c->n_choices; i++) {
        gen_choice *ch = &c->ch[i];
        sse_buf_free(&ch->text);
        json_decref(ch->lp);
        json_decref(ch->lp_tokens);
        json_decref(ch->lp_logprobs);
        json_decref(ch->lp_top);
        json_decref(ch->lp_offset);
        json_decref(ch->calls);
        sse_buf_free(&ch->args);
    }
    free(c->ch);
    free(c);
}

/* The logprobs value of a choice (ownership to the caller), or null. */
static json_t *choice_lp_json(gen_ctx *c, gen_choice *ch) {
    if (!c->logprobs) return json_null();
    json_t *o = json_object();
    if (c->kind == GEN_CHAT) {
        json_object_set(o, "content", ch->lp);
        json_object_set_new(o, "refusal", json_null());
    } else {
        json_object_set(o, "tokens", ch->lp_tokens);
        json_object_set(o, "token_logprobs", ch->lp_logprobs);
        json_object_set(o, "top_logprobs", ch->lp_top);
        json_object_set(o, "text_offset", ch->lp_offset);
    }
    return o;
}

static json_t *chunk_new(gen_ctx *c) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(c->id));
    json_object_set_new(o, "object", json_string(c->kind == GEN_CHAT ? "chat.completion.chunk" : "text_completion"));
    json_object_set_new(o, "created", json_integer(c->created));
    json_object_set_new(o, "model", json_string(c->a->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("qkvd"));
    return o;
}

/* Send one chunk for choice idx: text (may be NULL), delta role, finish
 * reason, and (chat) one tool-call delta (reference stolen; may be NULL). */
static void chunk_send_ex(gen_ctx *c, int32_t idx, const char *text, size_t len, int role, const char *finish,
                          json_t *tool_call) {
    gen_choice *ch = &c->ch[idx];
    json_t *o = chunk_new(c), *choices = json_array(), *chc = json_object();
    json_object_set_new(chc, "index", json_integer(idx));
    int has_lp = c->logprobs && (c->kind == GEN_CHAT ? json_array_size(ch->lp) : json_array_size(ch->lp_tokens));
    if (c->kind == GEN_CHAT) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (text) json_object_set_new(delta, "content", jstr(text, len));
        if (tool_call) {
            json_t *arr = json_array();
            json_array_append_new(arr, tool_call);
            json_object_set_new(delta, "tool_calls", arr);
        }
        json_object_set_new(chc, "delta", delta);
    } else {
        json_object_set_new(chc, "text", text ? jstr(text, len) : json_string(""));
    }
    json_object_set_new(chc, "logprobs", has_lp ? choice_lp_json(c, ch) : json_null());
    json_object_set_new(chc, "finish_reason", finish ? json_string(finish) : json_null());
    json_array_append_new(choices, chc);
    json_object_set_new(o, "choices", choices);
    if (c->include_usage) json_object_set_new(o, "usage", json_null());
    sse_buf_event_json(c->out, o);
    json_decref(o);
    if (has_lp) choice_lp_reset(c, ch);
    http_stream_flush(c->r);
}

static void chunk_send(gen_ctx *c, int32_t idx, const char *text, size_t len, int role, const char *finish) {
    chunk_send_ex(c, idx, text, len, role, finish, NULL);
}

/* ---- tool-call parser events ---- */
static void tc_content(void *user, const char *s, size_t n) {
    gen_choice *ch = user;
    if (ch->c->stream) chunk_send(ch->c, ch->idx, s, n, 0, NULL);
    else sse_buf_append(&ch->text, s, n);
}

static void tc_close_args(gen_choice *ch) {
    size_t k = json_array_size(ch->calls);
    if (!k) return;
    json_t *f = json_object_get(json_array_get(ch->calls, k - 1), "function");
    json_object_set_new(f, "arguments", jstr(ch->args.data ? ch->args.data : "", ch->args.len));
    ch->args.len = 0;
}

static void tc_start(void *user, int32_t index, const char *name) {
    gen_choice *ch = user;
    gen_ctx *c = ch->c;
    char id[32];
    tool_call_id(&c->id_state, c->sx, id, sizeof id);
    json_t *call = json_pack("{s:s, s:s, s:{s:s, s:s}}", "id", id, "type", "function", "function", "name", name,
                             "arguments", "");
    if (c->stream) {
        json_object_set_new(call, "index", json_integer(index));
        chunk_send_ex(c, ch->idx, NULL, 0, 0, NULL, call);
        return;
    }
    tc_close_args(ch);
    json_array_append_new(ch->calls, call);
}

static void tc_args(void *user, int32_t index, const char *s, size_t n) {
    gen_choice *ch = user;
    if (ch->c->stream) {
        json_t *d = json_pack("{s:i, s:{s:s%}}", "index", (int)index, "function", "arguments", s, n);
        chunk_send_ex(ch->c, ch->idx, NULL, 0, 0, NULL, d);
    } else {
        sse_buf_append(&ch->args, s, n);
    }
}

static const tool_parser_ops tc_ops = {.content = tc_content, .call_start = tc_start, .args = tc_args};

static json_t *usage_json(gen_ctx *c) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(c->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(c->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(c->prompt_tokens + c->completion_tokens));
    return u;
}

/* ---- scheduler callbacks ---- */
static json_t *token_text_json_r(serve_app *a, int32_t id, int render_special, json_t **bytes_out, size_t *len_out) {
    char buf[512];
    int64_t n = tokenizer_token_to_bytes(a->tok, id, render_special, buf, sizeof buf);
    if (n < 0) n = 0;
    if (n > (int64_t)sizeof buf) n = sizeof buf;
    if (bytes_out) {
        json_t *b = json_array();
        for (int64_t i = 0; i < n; i++) json_array_append_new(b, json_integer((unsigned char)buf[i]));
        *bytes_out = b;
    }
    if (len_out) *len_out = (size_t)n;
    return jstr(buf, (size_t)n);
}

static json_t *token_text_json(serve_app *a, int32_t id, json_t **bytes_out, size_t *len_out) {
    return token_text_json_r(a, id, 1, bytes_out, len_out);
}

/* Completions-format top_logprobs object {piece: logprob}. */
static json_t *top_object(serve_app *a, const sampler_result *res, int render_special) {
    json_t *top = json_object();
    for (int32_t k = 0; k < res->n_top && k < 20; k++) {
        json_t *p = token_text_json_r(a, res->top_ids[k], render_special, NULL, NULL);
        const char *key = json_string_value(p);
        if (key && !json_object_get(top, key)) json_object_set_new(top, key, json_real(res->top_logprobs[k]));
        json_decref(p);
    }
    return top;
}

/* Append one prompt token's entry to prompt p's arrays (res NULL: the first
 * token, which has no log-prob). */
static void prompt_lp_add(gen_ctx *c, int32_t p, int32_t token, const sampler_result *res) {
    size_t plen;
    json_t *piece = token_text_json_r(c->a, token, 0, NULL, &plen);
    json_array_append_new(c->p_tokens[p], piece);
    json_array_append_new(c->p_logprobs[p], res ? json_real(res->logprob) : json_null());
    json_array_append_new(c->p_top[p], res ? top_object(c->a, res, 0) : json_null());
    size_t off = c->p_off[p] > c->p_strip[p] ? c->p_off[p] - c->p_strip[p] : 0;
    if (off > c->echo_len[p]) off = c->echo_len[p];
    json_array_append_new(c->p_offset[p], json_integer((json_int_t)off));
    c->p_off[p] += plen;
}

static void gen_on_prompt_token(void *user, int32_t p, int32_t pos, int32_t token, const sampler_result *res) {
    prompt_lp_add(user, p, token, res);
}

/* Prompt p is in the KV: its choices start with the prompt's log-probs (and,
 * streaming, the echoed text goes out now, with them). */
static void chunk_send(gen_ctx *c, int32_t idx, const char *text, size_t len, int role, const char *finish);
static void gen_on_prompt_done(void *user, int32_t p) {
    gen_ctx *c = user;
    for (int32_t i = p * c->n; i < (p + 1) * c->n; i++) {
        gen_choice *ch = &c->ch[i];
        json_array_extend(ch->lp_tokens, c->p_tokens[p]);
        json_array_extend(ch->lp_logprobs, c->p_logprobs[p]);
        json_array_extend(ch->lp_top, c->p_top[p]);
        json_array_extend(ch->lp_offset, c->p_offset[p]);
        if (c->stream) chunk_send(c, i, c->echo[p], c->echo_len[p], 0, NULL);
    }
}

static void gen_on_token(void *user, int32_t idx, int32_t token, const sampler_result *res) {
    gen_ctx *c = user;
    gen_choice *ch = &c->ch[idx];
    serve_app *a = c->a;
    if (c->kind == GEN_CHAT) {
        json_t *bytes, *e = json_object();
        json_object_set_new(e, "token", token_text_json(a, token, &bytes, NULL));
        json_object_set_new(e, "logprob", json_real(res->logprob));
        json_object_set_new(e, "bytes", bytes);
        json_t *top = json_array();
        for (int32_t k = 0; k < res->n_top && k < 20; k++) {
            json_t *t = json_object(), *tb;
            json_object_set_new(t, "token", token_text_json(a, res->top_ids[k], &tb, NULL));
            json_object_set_new(t, "logprob", json_real(res->top_logprobs[k]));
            json_object_set_new(t, "bytes", tb);
            json_array_append_new(top, t);
        }
        json_object_set_new(e, "top_logprobs", top);
        json_array_append_new(ch->lp, e);
    } else {
        size_t plen;
        json_t *piece = token_text_json(a, token, NULL, &plen);
        json_array_append(ch->lp_tokens, piece);
        json_decref(piece);
        json_array_append_new(ch->lp_logprobs, json_real(res->logprob));
        json_array_append_new(ch->lp_top, top_object(a, res, 1));
        json_array_append_new(ch->lp_offset, json_integer((json_int_t)ch->lp_off));
        ch->lp_off += plen;
    }
}

static void gen_on_text(void *user, int32_t idx, const char *text, size_t len) {
    gen_ctx *c = user;
    if (c->tools) tool_parser_feed(&c->ch[idx].tp, text, len, &tc_ops, &c->ch[idx]);
    else if (c->stream) chunk_send(c, idx, text, len, 0, NULL);
    else sse_buf_append(&c->ch[idx].text, text, len);
}

static void gen_on_finish(void *user, int32_t idx, const char *reason, int32_t n_tokens) {
    gen_ctx *c = user;
    gen_choice *ch = &c->ch[idx];
    if (c->tools) {
        tool_parser_finish(&ch->tp, &tc_ops, ch);
        if (!c->stream) tc_close_args(ch);
        if (ch->tp.n_calls && !strcmp(reason, "stop")) reason = "tool_calls";
    }
    ch->finish = reason;
    ch->n_tokens = n_tokens;
    c->completion_tokens += n_tokens;
    if (c->stream) {
        /* Logprobs of tokens whose text was held back (or empty) go out with the finish. */
        if (c->kind == GEN_CHAT) chunk_send(c, idx, NULL, 0, 0, reason);
        else chunk_send(c, idx, "", 0, 0, reason);
    }
}

static void gen_reply_full(gen_ctx *c) {
    json_t *o = json_object(), *choices = json_array();
    json_object_set_new(o, "id", json_string(c->id));
    json_object_set_new(o, "object", json_string(c->kind == GEN_CHAT ? "chat.completion" : "text_completion"));
    json_object_set_new(o, "created", json_integer(c->created));
    json_object_set_new(o, "model", json_string(c->a->model_id));
    json_object_set_new(o, "system_fingerprint", json_string("qkvd"));
    for (int32_t i = 0; i < c->n_choices; i++) {
        gen_choice *ch = &c->ch[i];
        json_t *chc = json_object();
        json_object_set_new(chc, "index", json_integer(i));
        json_t *text = jstr(ch->text.data ? ch->text.data : "", ch->text.len);
        if (c->kind == GEN_CHAT) {
            json_t *msg = json_object();
            json_object_set_new(msg, "role", json_string("assistant"));
            if (c->tools && json_array_size(ch->calls)) {
                if (!ch->text.len) {
                    json_decref(text);
                    text = json_null();
                }
                json_object_set_new(msg, "content", text);
                json_object_set(msg, "tool_calls", ch->calls);
            } else {
                json_object_set_new(msg, "content", text);
            }
            json_object_set_new(msg, "refusal", json_null());
            json_object_set_new(chc, "message", msg);
        } else {
            json_object_set_new(chc, "text", text);
        }
        json_object_set_new(chc, "logprobs", choice_lp_json(c, ch));
        json_object_set_new(chc, "finish_reason", json_string(ch->finish ? ch->finish : "stop"));
        json_array_append_new(choices, chc);
    }
    json_object_set_new(o, "choices", choices);
    json_object_set_new(o, "usage", usage_json(c));
    http_reply_json(c->r, 200, o);
}

static void gen_on_done(void *user, const api_error *err) {
    gen_ctx *c = user;
    c->job = NULL;
    http_req_set_tokens(c->r, c->prompt_tokens, c->completion_tokens);
    if (!c->stream) {
        if (err) http_reply_error(c->r, err);
        else gen_reply_full(c);
        return;
    }
    if (err) {
        size_t len;
        char *s = api_error_json(err, &len);
        sse_buf_append(c->out, "data: ", 6);
        sse_buf_append(c->out, s, len);
        sse_buf_append(c->out, "\n\n", 2);
        free(s);
    } else {
        if (c->include_usage) {
            json_t *o = chunk_new(c);
            json_object_set_new(o, "choices", json_array());
            json_object_set_new(o, "usage", usage_json(c));
            sse_buf_event_json(c->out, o);
            json_decref(o);
        }
        sse_buf_event_done(c->out);
    }
    http_stream_end(c->r);
}

static void gen_on_close(http_req *r, void *user) {
    gen_ctx *c = user;
    if (c->job) sched_job_cancel(c->a->sched, c->job);
    gen_ctx_free(c);
}

static const sched_job_ops gen_ops = {
    .on_token = gen_on_token, .on_text = gen_on_text, .on_finish = gen_on_finish, .on_done = gen_on_done,
};

/* ---- structured output setup ---- */
void routes_structured_free(serve_app *a) {
    grammar_release(a->gjson);
    a->gjson = NULL;
    grammar_cache_free(a->gcache);
    a->gcache = NULL;
    grammar_vocab_free(a->gvocab);
    a->gvocab = NULL;
    a->tool_family = 0;
    a->tool_renders = 0;
}

int routes_tool_family(serve_app *a) {
    if (!a->tool_family) {
        a->tool_family = tool_family_probe(a->tmpl, &a->tool_renders) + 1;
        log_msg("info", "chat template: tool-call syntax %s, %s", tool_syntax_get(a->tool_family - 1)->name,
                a->tool_renders ? "renders tools" : "no tools variable (fallback system prompt)");
    }
    return a->tool_family - 1;
}

char *routes_render_chat_tools(serve_app *a, const json_t *messages, const json_t *tools, const chat_render_opts *ro,
                               api_error *err) {
    if (!tools || !json_is_array(tools) || !json_array_size(tools)) return routes_render_chat_ex(a, messages, NULL, ro, err);
    routes_tool_family(a);
    if (a->tool_renders) return routes_render_chat_ex(a, messages, tools, ro, err);
    json_t *fb = tool_messages_fallback(messages, tools);
    char *out = routes_render_chat_ex(a, fb, NULL, ro, err);
    json_decref(fb);
    return out;
}

/* The grammar of req's output: *g constrains the whole output; *lazy (tool
 * calls under tool_choice auto) what follows sx->trigger. Both NULL when
 * the output is free. 0, or -1 with a 400 naming the field. */
static int structured_setup(serve_app *a, const gen_request *req, grammar **g, grammar **lazy,
                            const tool_syntax **sx, api_error *e) {
    *g = *lazy = NULL;
    *sx = NULL;
    int want_tools = req->kind == GEN_CHAT && req->tools;
    if (want_tools) *sx = tool_syntax_get(routes_tool_family(a));
    if (req->format == GEN_FORMAT_TEXT && !(want_tools && req->tool_choice != GEN_TOOLS_NONE)) return 0;
    if (!a->gcache) a->gcache = grammar_cache_create(64);
    if (!a->gvocab) a->gvocab = grammar_vocab_create(a->tok);
    if (!a->gcache || !a->gvocab) {
        api_error_set(e, 503, NULL, NULL, "out_of_memory", "out of memory preparing the grammar");
        return -1;
    }
    char err[512] = "";
    int rc = 0;
    if (req->format == GEN_FORMAT_JSON_OBJECT) {
        if (!a->gjson && grammar_compile_json_object(NULL, &a->gjson, err, sizeof err) < 0) {
            api_error_set(e, 500, NULL, "response_format", "grammar_error", "json_object grammar: %s", err);
            return -1;
        }
        grammar_retain(a->gjson);
        *g = a->gjson;
        return 0;
    }
    if (req->format == GEN_FORMAT_JSON_SCHEMA) {
        char *txt = json_dumps(req->schema, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!txt) abort();
        *g = grammar_cache_get_schema(a->gcache, txt, strlen(txt), NULL, &rc, err, sizeof err);
        free(txt);
        if (!*g) {
            api_error_set(e, 400, "invalid_request_error", "response_format", "invalid_value",
                          "'response_format' JSON schema: %s", err);
            return -1;
        }
        return 0;
    }
    if (req->format == GEN_FORMAT_GBNF) {
        *g = grammar_cache_get_gbnf(a->gcache, req->grammar, req->grammar_len, &rc, err, sizeof err);
        if (!*g) {
            api_error_set(e, 400, "invalid_request_error", "grammar", "invalid_value", "'grammar': %s", err);
            return -1;
        }
        return 0;
    }
    int forced = req->tool_choice == GEN_TOOLS_REQUIRED || req->tool_choice == GEN_TOOLS_NAMED;
    int32_t bad = -1;
    char *text = tool_grammar_build(req->tools, req->tool_choice == GEN_TOOLS_NAMED ? req->tool_named : -1, *sx,
                                    req->parallel_tool_calls, !forced, &bad, err, sizeof err);
    grammar *tg = text ? grammar_cache_get_gbnf(a->gcache, text, strlen(text), &rc, err, sizeof err) : NULL;
    free(text);
    if (!tg) {
        char param[64];
        if (bad >= 0) snprintf(param, sizeof param, "tools[%d].function.parameters", (int)bad);
        else snprintf(param, sizeof param, "tools");
        api_error_set(e, 400, "invalid_request_error", param, "invalid_value", "'%s': %s", param, err);
        return -1;
    }
    if (forced) *g = tg;
    else *lazy = tg;
    return 0;
}

static void gen_run(serve_app *a, http_req *r, gen_request *req, grammar *gr, grammar *lazy, const tool_syntax *sx);

/* A request whose grammar still lacks mask tables, while a worker builds
 * them (gen_start). */
typedef struct gen_pending {
    uv_work_t work;
    serve_app *a;
    http_req *r;      /* NULL once the request closed */
    gen_request req;  /* owned */
    grammar *gr, *lazy;
    const tool_syntax *sx;
} gen_pending;

static void pending_on_close(http_req *r, void *user) {
    gen_pending *p = user;
    p->r = NULL;
}

static void pending_work(uv_work_t *w) {
    gen_pending *p = w->data;
    if (p->gr) grammar_precompute_budget(p->gr, p->a->gvocab, GRAMMAR_TABLES_BUDGET_MS);
    if (p->lazy) grammar_precompute_budget(p->lazy, p->a->gvocab, GRAMMAR_TABLES_BUDGET_MS);
}

static void pending_done(uv_work_t *w, int status) {
    gen_pending *p = w->data;
    (void)status;
    if (p->r) {
        http_req_set_user(p->r, NULL, NULL);
        gen_run(p->a, p->r, &p->req, p->gr, p->lazy, p->sx);
    } else {
        grammar_release(p->gr);
        grammar_release(p->lazy);
    }
    gen_request_free(&p->req);
    free(p);
}

/* Shared by both endpoints once the body is parsed into req. Returns 1
 * when it keeps req (the caller must not free it), else 0. */
static int gen_start(serve_app *a, http_req *r, gen_request *req) {
    api_error e;
    int32_t n_prompts = req->kind == GEN_CHAT ? 1 : req->n_prompts;
    if (req->n * n_prompts > a->cfg.max_seqs) {
        api_error_set(&e, 400, NULL, "n", "invalid_value",
                      "this request needs %d sequences (prompts x n) but the server runs at most %d (--max-seqs)",
                      (int)(req->n * n_prompts), a->cfg.max_seqs);
        http_reply_error(r, &e);
        return 0;
    }
    grammar *gr = NULL, *lazy = NULL;
    const tool_syntax *sx = NULL;
    if (structured_setup(a, req, &gr, &lazy, &sx, &e) < 0) {
        http_reply_error(r, &e);
        return 0;
    }
    /* Build the grammar's mask tables within a budget before the job is
     * queued, rather than on their first use inside decode steps: a new
     * schema's first run otherwise meets a new table at almost every step.
     * Grammars are cached, so this costs once per schema (a later request
     * finds them built: one atomic load). Up to GRAMMAR_TABLES_BUDGET_MS,
     * so on a worker of libuv's pool, not on the event loop; the request
     * waits parked and goes on from gen_run. */
    if (a->gvocab && ((gr && !grammar_tables_ready(gr)) || (lazy && !grammar_tables_ready(lazy)))) {
        gen_pending *p = calloc(1, sizeof *p);
        if (!p) abort();
        *p = (gen_pending){.a = a, .r = r, .req = *req, .gr = gr, .lazy = lazy, .sx = sx};
        p->work.data = p;
        http_req_set_user(r, p, pending_on_close);
        if (uv_queue_work(a->loop, &p->work, pending_work, pending_done) == 0) return 1;
        /* no worker: build here, as a last resort */
        http_req_set_user(r, NULL, NULL);
        free(p);
        if (gr) grammar_precompute_budget(gr, a->gvocab, GRAMMAR_TABLES_BUDGET_MS);
        if (lazy) grammar_precompute_budget(lazy, a->gvocab, GRAMMAR_TABLES_BUDGET_MS);
    }
    gen_run(a, r, req, gr, lazy, sx);
    return 0;
}

/* The rest of gen_start, with the request's grammars (references it takes
 * over) and tool syntax. */
static void gen_run(serve_app *a, http_req *r, gen_request *req, grammar *gr, grammar *lazy, const tool_syntax *sx) {
    api_error e;
    int32_t n_prompts = req->kind == GEN_CHAT ? 1 : req->n_prompts;
    int32_t **toks = calloc((size_t)n_prompts, sizeof *toks);
    int32_t *lens = calloc((size_t)n_prompts, sizeof *lens);
    char **echo = calloc((size_t)n_prompts, sizeof *echo);
    size_t *echo_len = calloc((size_t)n_prompts, sizeof *echo_len);
    gen_ctx *c = calloc(1, sizeof *c);
    if (!toks || !lens || !echo || !echo_len || !c) abort();
    int ok = 1;
    if (ok && req->kind == GEN_CHAT) {
        chat_render_opts ro = {.add_generation_prompt = req->add_generation_prompt,
                               .continue_final_message = req->continue_final_message,
                               .kwargs = req->template_kwargs};
        char *prompt = routes_render_chat_tools(a, req->messages, req->tools, &ro, &e);
        if (!prompt) ok = 0;
        else {
            toks[0] = routes_tokenize(a, prompt, strlen(prompt), 1, 1, &lens[0], &e);
            free(prompt);
            ok = toks[0] != NULL;
        }
    }
    for (int32_t i = 0; ok && req->kind == GEN_COMPLETION && i < n_prompts; i++) {
        gen_prompt *p = &req->prompts[i];
        if (p->text) {
            toks[i] = routes_tokenize(a, p->text, p->text_len, 1, 1, &lens[i], &e);
            ok = toks[i] != NULL;
            if (ok && req->echo) { echo[i] = p->text; echo_len[i] = p->text_len; }
        } else {
            toks[i] = malloc((size_t)p->n_tokens * sizeof(int32_t));
            if (!toks[i]) abort();
            memcpy(toks[i], p->tokens, (size_t)p->n_tokens * sizeof(int32_t));
            lens[i] = p->n_tokens;
            if (req->echo) {
                int64_t need = tokenizer_decode(a->tok, p->tokens, p->n_tokens, 0, NULL, 0);
                echo[i] = malloc((size_t)(need > 0 ? need : 0) + 1);
                if (!echo[i]) abort();
                int64_t got = need > 0 ? tokenizer_decode(a->tok, p->tokens, p->n_tokens, 0, echo[i], need) : 0;
                echo_len[i] = (size_t)(got < 0 ? 0 : got < need ? got : need);
            }
        }
    }
    /* qkvd extensions: the attention kind (server default overridden by
     * the request's "attention") and NBCE's extra sequences. */
    attn_params attn, attn_def;
    serve_config_attention(&a->cfg, &attn_def);
    if (ok && request_attention_resolve(req, &attn_def, &attn, &e)) ok = 0;
    int32_t sched_n = n_prompts; /* sequences' prompts (NBCE: contexts + question) */
    if (ok && req->nbce) {
        int32_t mt = req->max_tokens >= 0 ? req->max_tokens : req->kind == GEN_CHAT ? a->cfg.max_tokens : 16;
        if (mt > a->cfg.max_tokens) mt = a->cfg.max_tokens;
        if (mt > a->info->n_ctx / 2) mt = a->info->n_ctx / 2;
        chat_render_opts ro = {.add_generation_prompt = req->add_generation_prompt,
                               .continue_final_message = req->continue_final_message,
                               .kwargs = req->template_kwargs};
        int32_t **nt = NULL, *nl = NULL, nn = 0;
        if (routes_nbce_prompts(a, req, &ro, mt, toks[0], lens[0], &nt, &nl, &nn, &e)) {
            ok = 0;
        } else if (req->n * nn > a->cfg.max_seqs) {
            api_error_set(&e, 400, NULL, "contexts", "invalid_value",
                          "NBCE needs %d sequences (contexts + 1) but the server runs at most %d (--max-seqs)", (int)nn,
                          a->cfg.max_seqs);
            for (int32_t i = 0; i < nn; i++) free(nt[i]);
            free(nt);
            free(nl);
            ok = 0;
        } else {
            free(toks[0]);
            free(toks);
            free(lens);
            toks = nt;
            lens = nl;
            sched_n = nn;
        }
    }
    int64_t prompt_total = 0;
    int32_t min_room = a->info->n_ctx;
    for (int32_t i = 0; ok && i < sched_n; i++) {
        if (lens[i] == 0) {
            api_error_set(&e, 400, NULL, req->kind == GEN_CHAT ? "messages" : "prompt", "invalid_value",
                          "the prompt is empty after tokenisation");
            ok = 0;
        } else if (lens[i] >= a->info->n_ctx) {
            api_error_set(&e, 400, NULL, req->kind == GEN_CHAT ? "messages" : "prompt", "context_length_exceeded",
                          "this model's maximum context length is %d tokens, but the prompt has %d tokens",
                          (int)a->info->n_ctx, (int)lens[i]);
            ok = 0;
        }
        prompt_total += lens[i];
        if (a->info->n_ctx - lens[i] < min_room) min_room = a->info->n_ctx - lens[i];
    }
    if (!ok) {
        for (int32_t i = 0; i < sched_n; i++) free(toks[i]);
        goto fail;
    }
    c->a = a;
    c->r = r;
    c->kind = req->kind;
    c->tools = req->kind == GEN_CHAT && req->tools && req->tool_choice != GEN_TOOLS_NONE;
    c->sx = sx;
    c->id_state = uv_hrtime() ^ (a->id_counter * 0xD1B54A32D192ED03ull) ^ (uint64_t)(uintptr_t)c;
    c->stream = req->stream;
    c->include_usage = req->include_usage;
    c->logprobs = req->logprobs;
    c->n = req->n;
    c->n_choices = req->n * n_prompts;
    c->created = (int64_t)time(NULL);
    c->prompt_tokens = prompt_total;
    routes_make_id(a, req->kind == GEN_CHAT ? "chatcmpl" : "cmpl", c->id, sizeof c->id);
    c->ch = calloc((size_t)c->n_choices, sizeof *c->ch);
    if (!c->ch) abort();
    for (int32_t i = 0; i < c->n_choices; i++) {
        sse_buf_init(&c->ch[i].text);
        sse_buf_init(&c->ch[i].args);
        choice_lp_reset(c, &c->ch[i]);
        c->ch[i].c = c;
        c->ch[i].idx = i;
        if (c->tools) {
            tool_parser_init(&c->ch[i].tp, sx);
            c->ch[i].calls = json_array();
        }
        if (echo[i / c->n]) c->ch[i].lp_off = echo_len[i / c->n]; /* generated text follows the echo */
    }
    int prompt_lp = req->echo && req->logprobs;
    c->n_prompts = n_prompts;
    c->echo = calloc((size_t)n_prompts, sizeof *c->echo);
    c->echo_len = calloc((size_t)n_prompts, sizeof *c->echo_len);
    if (!c->echo || !c->echo_len) abort();
    for (int32_t p = 0; p < n_prompts; p++) {
        if (!echo[p]) continue;
        c->echo[p] = malloc(echo_len[p] + 1);
        if (!c->echo[p]) abort();
        memcpy(c->echo[p], echo[p], echo_len[p]);
        c->echo_len[p] = echo_len[p];
    }
    if (prompt_lp) {
        c->p_tokens = calloc((size_t)n_prompts, sizeof(json_t *));
        c->p_logprobs = calloc((size_t)n_prompts, sizeof(json_t *));
        c->p_top = calloc((size_t)n_prompts, sizeof(json_t *));
        c->p_offset = calloc((size_t)n_prompts, sizeof(json_t *));
        c->p_off = calloc((size_t)n_prompts, sizeof(size_t));
        c->p_strip = calloc((size_t)n_prompts, sizeof(size_t));
        if (!c->p_tokens || !c->p_logprobs || !c->p_top || !c->p_offset || !c->p_off || !c->p_strip) abort();
        int32_t bos = tokenizer_bos(a->tok);
        for (int32_t p = 0; p < n_prompts; p++) {
            c->p_tokens[p] = json_array();
            c->p_logprobs[p] = json_array();
            c->p_top[p] = json_array();
            c->p_offset[p] = json_array();
            /* A BOS is not part of the echoed text: the first reported token is
             * the one after it (and gets a real log-prob). */
            int32_t start = toks[p][0] == bos && bos >= 0 ? 1 : 0;
            if (start < lens[p]) {
                char tmp[512];
                int64_t piece = tokenizer_token_to_bytes(a->tok, toks[p][start], 0, tmp, sizeof tmp);
                int64_t dec = tokenizer_decode(a->tok, toks[p], start + 1, 0, NULL, 0);
                c->p_strip[p] = piece > dec ? (size_t)(piece - dec) : 0;
            }
            if (start == 0) prompt_lp_add(c, p, toks[p][0], NULL);
        }
    }

    int32_t max_tokens = req->max_tokens >= 0 ? req->max_tokens : req->kind == GEN_CHAT ? a->cfg.max_tokens : 16;
    if (max_tokens > a->cfg.max_tokens) max_tokens = a->cfg.max_tokens;
    if (max_tokens > min_room) max_tokens = min_room;
    sched_job_spec spec = {
        .kind = SCHED_GENERATE, .n_prompts = sched_n, .prompts = toks, .prompt_len = lens, .n = req->n,
        .max_tokens = max_tokens, .sp = req->sp, .n_stop = req->n_stop, .stop = (const char *const *)req->stop,
        .stop_len = req->stop_len, .strip_leading_space = 0, .timeout_s = a->cfg.request_timeout,
        .grammar = gr, .lazy_grammar = lazy, .trigger = sx ? sx->trigger : NULL,
        .trigger_len = sx ? strlen(sx->trigger) : 0, .gvocab = a->gvocab,
        .include_stop_str = req->include_stop_str, .render_special = req->render_special,
        .attn = &attn, .nbce = req->nbce, .nbce_beta = req->nbce_beta_given ? req->nbce_beta : (float)a->cfg.nbce_beta,
    };
    if (req->nbce) {
        enum nbce_pool pool = NBCE_POOL_MIN_ENTROPY;
        if (req->nbce_pool_given) pool = (enum nbce_pool)req->nbce_pool;
        else nbce_pool_parse(a->cfg.nbce_pool, &pool);
        spec.nbce_pool = (int32_t)pool;
    }
    /* ignore_eos: every end-of-generation token is banned (the sampler copies
     * the bias arrays at submit, so these live only until then). */
    int32_t *eog_ids = NULL;
    float *eog_vals = NULL;
    if (req->ignore_eos) {
        int32_t n_eog = 0, nb = req->sp.n_bias;
        for (int32_t t = 0; t < a->info->n_vocab; t++) n_eog += tokenizer_is_eog(a->tok, t) != 0;
        eog_ids = malloc((size_t)(nb + n_eog + 1) * sizeof *eog_ids);
        eog_vals = malloc((size_t)(nb + n_eog + 1) * sizeof *eog_vals);
        if (!eog_ids || !eog_vals) abort();
        for (int32_t i = 0; i < nb; i++) { eog_ids[i] = req->sp.bias_ids[i]; eog_vals[i] = req->sp.bias_vals[i]; }
        for (int32_t t = 0; t < a->info->n_vocab; t++)
            if (tokenizer_is_eog(a->tok, t)) { eog_ids[nb] = t; eog_vals[nb++] = -INFINITY; }
        spec.sp.n_bias = nb;
        spec.sp.bias_ids = eog_ids;
        spec.sp.bias_vals = eog_vals;
    }
    if (!req->has_seed) spec.sp.seed = uv_hrtime() ^ (a->id_counter * 0x9E3779B97F4A7C15ull);
    sched_job_ops ops = gen_ops;
    if (!req->logprobs) ops.on_token = NULL;
    if (prompt_lp) {
        spec.prompt_logprobs = 1;
        ops.on_prompt_token = gen_on_prompt_token;
        ops.on_prompt_done = gen_on_prompt_done;
    }
    int src = sched_submit(a->sched, &spec, &ops, c, &c->job, &e);
    grammar_release(gr); /* the job holds its own references */
    grammar_release(lazy);
    gr = lazy = NULL;
    free(eog_ids);
    free(eog_vals);
    if (src < 0) {
        gen_ctx_free(c);
        c = NULL;
        goto fail_freed;
    }
    http_req_set_user(r, c, gen_on_close);
    if (c->stream) {
        c->out = http_stream_begin(r);
        for (int32_t i = 0; i < c->n_choices; i++) {
            const char *et = echo[i / c->n];
            if (c->kind == GEN_CHAT) chunk_send(c, i, "", 0, 1, NULL);
            else if (et && !prompt_lp) chunk_send(c, i, et, echo_len[i / c->n], 0, NULL); /* else with its log-probs */
        }
    } else {
        for (int32_t i = 0; i < c->n_choices; i++)
            if (echo[i / c->n]) sse_buf_append(&c->ch[i].text, echo[i / c->n], echo_len[i / c->n]);
    }
    for (int32_t i = 0; i < n_prompts; i++)
        if (req->kind == GEN_COMPLETION && !req->prompts[i].text) free(echo[i]);
    free(echo);
    free(echo_len);
    free(toks);
    free(lens);
    return;
fail:
    gen_ctx_free(c);
    grammar_release(gr);
    grammar_release(lazy);
fail_freed:
    for (int32_t i = 0; i < n_prompts; i++)
        if (req->kind == GEN_COMPLETION && !req->prompts[i].text) free(echo[i]);
    free(echo);
    free(echo_len);
    free(toks);
    free(lens);
    http_reply_error(r, &e);
}

static void gen_route(serve_app *a, http_req *r, enum gen_kind kind) {
    api_error e;
    if (!a->e) {
        api_error_set(&e, 503, NULL, NULL, "model_loading", "the model is still loading; retry shortly");
        http_reply_error(r, &e);
        return;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    gen_request req;
    if (request_parse_generation(kind, body, len, a->info->n_vocab, &req, &e) < 0) {
        http_reply_error(r, &e);
        return;
    }
    if (routes_check_model(a, r, req.model) && gen_start(a, r, &req)) return; /* req kept */
    gen_request_free(&req);
}

void routes_chat(serve_app *a, http_req *r) { gen_route(a, r, GEN_CHAT); }
void routes_completions(serve_app *a, http_req *r) { gen_route(a, r, GEN_COMPLETION); }
