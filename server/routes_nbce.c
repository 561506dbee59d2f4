/* routes_nbce.c -- the prompts of an NBCE request ("context_mode": "nbce"):
 * one per context (context + question) and the question alone, last.
 *
 * chat:        each context becomes (or is prepended to) the system message
 *              and the conversation is rendered once per context;
 * completions: context + "\n\n" + prompt. Without "contexts", a completion
 *              prompt is split automatically: the text after its last blank
 *              line is the question, everything before it the context, cut
 *              into token chunks that each fit the context window together
 *              with the question and the room kept for the answer. */
#include "serve.h"
#include "request.h"

#include <stdlib.h>
#include <string.h>

/* text + "\n\n" + q as tokens (BOS as the model wants). */
static int32_t *nbce_join(serve_app *a, const char *ctx, size_t ctx_len, const char *q, size_t q_len, int32_t *n,
                          api_error *e) {
    char *t = malloc(ctx_len + q_len + 3);
    if (!t) abort();
    memcpy(t, ctx, ctx_len);
    memcpy(t + ctx_len, "\n\n", 2);
    memcpy(t + ctx_len + 2, q, q_len);
    t[ctx_len + 2 + q_len] = 0;
    int32_t *toks = routes_tokenize(a, t, ctx_len + 2 + q_len, 0, 1, n, e);
    free(t);
    return toks;
}

static int32_t *nbce_chat(serve_app *a, const gen_request *req, const chat_render_opts *ro, const char *ctx,
                          size_t ctx_len, int32_t *n, api_error *e) {
    json_t *msgs = json_deep_copy(req->messages);
    if (!msgs) abort();
    json_t *first = json_array_get(msgs, 0);
    json_t *role = json_object_get(first, "role");
    json_t *content = json_object_get(first, "content");
    if (role && json_is_string(role) && !strcmp(json_string_value(role), "system") && json_is_string(content)) {
        size_t cl = json_string_length(content);
        char *t = malloc(ctx_len + cl + 3);
        if (!t) abort();
        memcpy(t, ctx, ctx_len);
        memcpy(t + ctx_len, "\n\n", 2);
        memcpy(t + ctx_len + 2, json_string_value(content), cl);
        json_object_set_new(first, "content", json_stringn(t, ctx_len + 2 + cl));
        free(t);
    } else {
        json_t *sys = json_object();
        json_object_set_new(sys, "role", json_string("system"));
        json_object_set_new(sys, "content", json_stringn(ctx, ctx_len));
        json_array_insert_new(msgs, 0, sys);
    }
    char *prompt = routes_render_chat_ex(a, msgs, NULL, ro, e);
    json_decref(msgs);
    if (!prompt) return NULL;
    int32_t *toks = routes_tokenize(a, prompt, strlen(prompt), 1, 1, n, e);
    free(prompt);
    return toks;
}

int routes_nbce_prompts(serve_app *a, const gen_request *req, const chat_render_opts *ro, int32_t reserve,
                        const int32_t *q_toks, int32_t q_len, int32_t ***toks_out, int32_t **lens_out,
                        int32_t *n_out, api_error *e) {
    int32_t cap = (req->n_contexts > 0 ? req->n_contexts : 64) + 1, n = 0;
    int32_t **toks = calloc((size_t)cap, sizeof *toks);
    int32_t *lens = calloc((size_t)cap, sizeof *lens);
    char *owned_q = NULL;
    int32_t *ctx_toks = NULL;
    if (!toks || !lens) abort();
    const char *qtext = NULL;
    size_t qlen = 0;
    if (req->kind == GEN_COMPLETION) {
        const gen_prompt *p = &req->prompts[0];
        if (p->text) {
            qtext = p->text;
            qlen = p->text_len;
        } else {
            int64_t need = tokenizer_decode(a->tok, p->tokens, p->n_tokens, 0, NULL, 0);
            owned_q = malloc((size_t)(need > 0 ? need : 0) + 1);
            if (!owned_q) abort();
            int64_t got = need > 0 ? tokenizer_decode(a->tok, p->tokens, p->n_tokens, 0, owned_q, need) : 0;
            qtext = owned_q;
            qlen = (size_t)(got < 0 ? 0 : got < need ? got : need);
        }
    }
    if (req->n_contexts > 0) {
        for (int32_t k = 0; k < req->n_contexts; k++) {
            toks[n] = req->kind == GEN_CHAT
                          ? nbce_chat(a, req, ro, req->contexts[k], req->context_len[k], &lens[n], e)
                          : nbce_join(a, req->contexts[k], req->context_len[k], qtext, qlen, &lens[n], e);
            if (!toks[n]) goto fail;
            n++;
        }
    } else {
        if (req->kind == GEN_CHAT) {
            api_error_set(e, 400, NULL, "contexts", "invalid_value",
                          "\"context_mode\": \"nbce\" on chat needs 'contexts' (automatic splitting is for completions)");
            goto fail;
        }
        /* The question is the last paragraph. */
        const char *sep = NULL;
        for (size_t i = qlen; i >= 2; i--)
            if (qtext[i - 1] == '\n' && qtext[i - 2] == '\n') { sep = qtext + i - 2; break; }
        if (!sep || sep == qtext || (size_t)(sep + 2 - qtext) >= qlen) {
            api_error_set(e, 400, NULL, "contexts", "invalid_value",
                          "NBCE without 'contexts' splits the prompt: end it with the question after a blank line");
            goto fail;
        }
        const char *q = sep + 2;
        size_t ql = qlen - (size_t)(q - qtext);
        int32_t nq = 0;
        int32_t *qt = routes_tokenize(a, q, ql, 0, 1, &nq, e);
        if (!qt) goto fail;
        free(qt);
        int32_t chunk = a->info->n_ctx - reserve - nq - 8;
        if (chunk < 16) {
            api_error_set(e, 400, NULL, "prompt", "context_length_exceeded",
                          "the question (%d tokens) and max_tokens leave no room for context chunks in %d tokens",
                          (int)nq, (int)a->info->n_ctx);
            goto fail;
        }
        int32_t nc = 0;
        ctx_toks = routes_tokenize(a, qtext, (size_t)(sep - qtext), 0, 0, &nc, e);
        if (!ctx_toks) goto fail;
        for (int32_t off = 0; off < nc; off += chunk) {
            if (n + 1 >= cap) {
                api_error_set(e, 400, NULL, "prompt", "context_length_exceeded",
                              "the prompt needs more than %d context chunks of %d tokens", (int)(cap - 1), (int)chunk);
                goto fail;
            }
            int32_t cnt = nc - off < chunk ? nc - off : chunk;
            int64_t need = tokenizer_decode(a->tok, ctx_toks + off, cnt, 0, NULL, 0);
            char *ct = malloc((size_t)(need > 0 ? need : 0) + 1);
            if (!ct) abort();
            int64_t got = need > 0 ? tokenizer_decode(a->tok, ctx_toks + off, cnt, 0, ct, need) : 0;
            toks[n] = nbce_join(a, ct, (size_t)(got < 0 ? 0 : got), q, ql, &lens[n], e);
            free(ct);
            if (!toks[n]) goto fail;
            n++;
        }
        free(ctx_toks);
        ctx_toks = NULL;
        if (n == 0) {
            api_error_set(e, 400, NULL, "prompt", "invalid_value", "no context before the question");
            goto fail;
        }
        /* The context-free sequence is the question alone, too. */
        int32_t nq2 = 0;
        int32_t *q2 = routes_tokenize(a, q, ql, 0, 1, &nq2, e);
        if (!q2) goto fail;
        toks[n] = q2;
        lens[n] = nq2;
        n++;
        free(owned_q);
        *toks_out = toks;
        *lens_out = lens;
        *n_out = n;
        return 0;
    }
    toks[n] = malloc((size_t)q_len * sizeof(int32_t));
    if (!toks[n]) abort();
    memcpy(toks[n], q_toks, (size_t)q_len * sizeof(int32_t));
    lens[n] = q_len;
    n++;
    free(owned_q);
    *toks_out = toks;
    *lens_out = lens;
    *n_out = n;
    return 0;
fail:
    for (int32_t i = 0; i < n; i++) free(toks[i]);
    free(toks);
    free(lens);
    free(owned_q);
    free(ctx_toks);
    return -1;
}

json_t *routes_attention_json(serve_app *a) {
    json_t *o = json_object(), *kinds = json_array(), *rs = json_array(), *def = json_object();
    for (int k = 0; k < ATTN_KIND_COUNT; k++) json_array_append_new(kinds, json_string(attn_kind_name((enum attn_kind)k)));
    for (int k = 0; k < ROPE_SCALING_COUNT; k++)
        json_array_append_new(rs, json_string(rope_scaling_name((enum rope_scaling)k)));
    attn_params p;
    serve_config_attention(&a->cfg, &p);
    json_object_set_new(def, "kind", json_string(attn_kind_name(p.kind)));
    json_object_set_new(def, "window", json_integer(p.window));
    json_object_set_new(def, "sinks", json_integer(p.sinks));
    json_object_set_new(def, "leak", json_real(p.leak));
    json_object_set_new(def, "logn", json_boolean(p.logn));
    if (p.rope_set) {
        json_object_set_new(def, "rope_scaling", json_string(rope_scaling_name(p.rope.type)));
        json_object_set_new(def, "rope_factor", json_real(p.rope.factor));
    } else if (a->info) {
        json_object_set_new(def, "rope_scaling", json_string(rope_scaling_name((enum rope_scaling)a->info->rope_scaling)));
        json_object_set_new(def, "rope_factor", json_real(a->info->rope_factor));
    }
    json_object_set_new(o, "kinds", kinds);
    json_object_set_new(o, "rope_scaling", rs);
    json_object_set_new(o, "default", def);
    json_t *nb = json_object();
    json_object_set_new(nb, "beta", json_real(a->cfg.nbce_beta));
    json_object_set_new(nb, "pool", json_string(a->cfg.nbce_pool ? a->cfg.nbce_pool : "min-entropy"));
    json_object_set_new(o, "nbce", nb);
    return o;
}
