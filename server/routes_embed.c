/* routes_embed.c -- POST /v1/embeddings: every input runs through the
 * scheduler as one ENGINE_OUT_EMBD item (mean-pooled, L2-normalised final
 * hidden state); the result is a float array or base64 of little-endian
 * float32, as OpenAI's encoding_format says. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "request.h"
#include "serve.h"

typedef struct embd_ctx {
    serve_app *a;
    http_req *r;
    sched_job *job;
    int base64;
    int32_t n_inputs;
    json_t *data;        /* array being filled in input order */
    int64_t prompt_tokens;
} embd_ctx;

static void b64_encode(const unsigned char *in, size_t n, sse_buf *out) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        q[0] = tbl[(v >> 18) & 63];
        q[1] = tbl[(v >> 12) & 63];
        q[2] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        q[3] = i + 2 < n ? tbl[v & 63] : '=';
        sse_buf_append(out, q, 4);
    }
}

static void embd_on_embd(void *user, int32_t index, const float *v, int32_t n) {
    embd_ctx *c = user;
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("embedding"));
    json_object_set_new(o, "index", json_integer(index));
    if (c->base64) {
        sse_buf b;
        sse_buf_init(&b);
        b64_encode((const unsigned char *)v, (size_t)n * sizeof(float), &b); /* x86: already little-endian */
        json_object_set_new(o, "embedding", json_stringn(b.data ? b.data : "", b.len));
        sse_buf_free(&b);
    } else {
        json_t *arr = json_array();
        for (int32_t i = 0; i < n; i++) json_array_append_new(arr, json_real(v[i]));
        json_object_set_new(o, "embedding", arr);
    }
    json_array_append_new(c->data, o);
}

static void embd_on_done(void *user, const api_error *err) {
    embd_ctx *c = user;
    c->job = NULL;
    http_req_set_tokens(c->r, c->prompt_tokens, 0);
    if (err) {
        http_reply_error(c->r, err);
        return;
    }
    json_t *o = json_object(), *u = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set(o, "data", c->data);
    json_object_set_new(o, "model", json_string(c->a->model_id));
    json_object_set_new(u, "prompt_tokens", json_integer(c->prompt_tokens));
    json_object_set_new(u, "total_tokens", json_integer(c->prompt_tokens));
    json_object_set_new(o, "usage", u);
    http_reply_json(c->r, 200, o);
}

static void embd_on_close(http_req *r, void *user) {
    embd_ctx *c = user;
    if (c->job) sched_job_cancel(c->a->sched, c->job);
    json_decref(c->data);
    free(c);
}

void routes_embeddings(serve_app *a, http_req *r) {
    api_error e;
    if (!a->e) {
        api_error_set(&e, 503, NULL, NULL, "model_loading", "the model is still loading; retry shortly");
        http_reply_error(r, &e);
        return;
    }
    size_t len;
    const char *body = http_req_body(r, &len);
    embd_request req;
    if (request_parse_embeddings(body, len, a->info->n_vocab, &req, &e) < 0) {
        http_reply_error(r, &e);
        return;
    }
    if (!routes_check_model(a, r, req.model)) {
        embd_request_free(&req);
        return;
    }
    if (req.dimensions && req.dimensions != a->info->n_embd) {
        api_error_set(&e, 400, NULL, "dimensions", "unsupported_parameter",
                      "'dimensions' must be %d (this model's embedding size) when given", (int)a->info->n_embd);
        embd_request_free(&req);
        http_reply_error(r, &e);
        return;
    }
    int32_t n = req.n_inputs;
    int32_t **toks = calloc((size_t)n, sizeof *toks), *lens = calloc((size_t)n, sizeof *lens);
    if (!toks || !lens) abort();
    int64_t total = 0;
    int ok = 1;
    for (int32_t i = 0; i < n && ok; i++) {
        gen_prompt *p = &req.inputs[i];
        if (p->text) {
            toks[i] = routes_tokenize(a, p->text, p->text_len, 0, 1, &lens[i], &e);
            ok = toks[i] != NULL;
        } else {
            toks[i] = malloc((size_t)p->n_tokens * sizeof(int32_t));
            if (!toks[i]) abort();
            memcpy(toks[i], p->tokens, (size_t)p->n_tokens * sizeof(int32_t));
            lens[i] = p->n_tokens;
        }
        if (ok && lens[i] == 0) {
            api_error_set(&e, 400, NULL, "input", "invalid_value", "input %d is empty after tokenisation", (int)i);
            ok = 0;
        }
        if (ok && (lens[i] > a->cfg.batch_tokens || lens[i] > a->info->n_ctx)) {
            api_error_set(&e, 400, NULL, "input", "context_length_exceeded",
                          "input %d has %d tokens; at most %d fit in one embedding pass (--batch-tokens / --ctx)",
                          (int)i, (int)lens[i], a->cfg.batch_tokens < a->info->n_ctx ? a->cfg.batch_tokens : a->info->n_ctx);
            ok = 0;
        }
        total += lens[i];
    }
    int b64 = req.base64;
    embd_request_free(&req);
    if (!ok) {
        for (int32_t i = 0; i < n; i++) free(toks[i]);
        free(toks);
        free(lens);
        http_reply_error(r, &e);
        return;
    }
    embd_ctx *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->a = a;
    c->r = r;
    c->base64 = b64;
    c->n_inputs = n;
    c->data = json_array();
    c->prompt_tokens = total;
    sched_job_spec spec = {.kind = SCHED_EMBED, .n_prompts = n, .prompts = toks, .prompt_len = lens, .n = 1,
                           .timeout_s = a->cfg.request_timeout};
    sampler_params_default(&spec.sp);
    static const sched_job_ops ops = {.on_embd = embd_on_embd, .on_done = embd_on_done};
    int rc = sched_submit(a->sched, &spec, &ops, c, &c->job, &e);
    free(toks);
    free(lens);
    if (rc < 0) {
        json_decref(c->data);
        free(c);
        http_reply_error(r, &e);
        return;
    }
    http_req_set_user(r, c, embd_on_close);
}
