/* serve.h -- state of a running `qkvd serve`, shared by the route modules.
 * Everything here is owned and touched by the loop thread only (the model is
 * loaded on a worker and handed over in the completion callback). */
#ifndef QKVD_SERVE_H
#define QKVD_SERVE_H

#include <stdint.h>
#include <uv.h>
#include "chat_template.h"
#include "config.h"
#include "engine.h"
#include "http.h"
#include "scheduler.h"

struct grammar;
struct grammar_cache;
struct grammar_vocab;

typedef struct serve_app {
    serve_config cfg;
    uv_loop_t *loop;
    http_server *http;
    sched *sched;
    engine *e;                 /* NULL while loading */
    const tokenizer *tok;
    const engine_info *info;
    chat_template *tmpl;       /* compiled chat template (model's, file's or ChatML) */
    char model_id[256];
    char bos_text[64], eos_text[64];
    int64_t created;           /* unix time the model finished loading */
    int draining;
    uint64_t id_counter;
    /* Structured output state of this model, made on first use
     * (routes_generate.c) and freed by routes_structured_free. */
    struct grammar_cache *gcache;
    struct grammar_vocab *gvocab;
    struct grammar *gjson;     /* json_object mode */
    int tool_family;           /* tool_calls.h family + 1; 0 = not probed yet */
    int tool_renders;          /* the template renders `tools` */
    struct metrics *metrics;   /* the process's registry (front app); NULL with --no-metrics */
    struct metrics_model *mm;  /* this model's series; NULL with --no-metrics */
} serve_app;

/* The HTTP dispatch function (routes_misc.c): routes by method and path. */
void routes_dispatch(void *app, http_req *r);
/* Endpoint handlers (routes_*.c). */
void routes_chat(serve_app *a, http_req *r);
void routes_completions(serve_app *a, http_req *r);
void routes_embeddings(serve_app *a, http_req *r);

/* Free a's structured-output state (before its engine and template go;
 * after its scheduler, whose jobs hold matchers of it). */
void routes_structured_free(serve_app *a);

/* Shared helpers (routes_misc.c). */
/* 1 if `model` (may be NULL) names the served model; else replies 404 and returns 0. */
int routes_check_model(serve_app *a, http_req *r, const char *model);
/* Tokenise text for generation: parse_special as given, BOS prepended when
 * the model adds one and the text does not already start with it. Returns a
 * malloc'd array (caller frees) and its length, or NULL with err. */
int32_t *routes_tokenize(serve_app *a, const char *text, size_t len, int parse_special, int add_bos,
                         int32_t *n_out, api_error *err);
/* A fresh response id "<prefix>-<hex>" in buf. */
void routes_make_id(serve_app *a, const char *prefix, char *buf, size_t cap);
/* Render messages with the chat template into a malloc'd prompt; NULL with a 500 err. */
char *routes_render_chat(serve_app *a, const json_t *messages, const json_t *tools, api_error *err);

/* Per-request rendering choices (chat_template_kwargs, add_generation_prompt,
 * continue_final_message). */
typedef struct chat_render_opts {
    int add_generation_prompt;
    int continue_final_message; /* the prompt ends right after the last message's content */
    const json_t *kwargs;       /* extra template variables (object) or NULL */
} chat_render_opts;
/* As routes_render_chat with options (NULL: generation prompt, no extras).
 * continue_final_message needs the last message to be an assistant's whose
 * content the template prints verbatim; otherwise a 400 in err. */
char *routes_render_chat_ex(serve_app *a, const json_t *messages, const json_t *tools,
                            const chat_render_opts *ro, api_error *err);
/* The tool-call syntax family of a's template (tool_calls.h), probed once
 * (routes_generate.c). */
int routes_tool_family(serve_app *a);
/* routes_render_chat_ex with tools: templates that render `tools` get
 * them, others the fallback messages of tool_messages_fallback. */
char *routes_render_chat_tools(serve_app *a, const json_t *messages, const json_t *tools,
                               const chat_render_opts *ro, api_error *err);
/* NBCE prompts (routes_nbce.c): one token array per context (context +
 * question), then the question alone (q_toks copied; for automatic splits
 * of a completion prompt, its last paragraph); reserve: tokens kept free
 * for the answer. 0 with toks_out / lens_out set (malloc'd, owned by the
 * caller) and n_out, or -1 with err. */
/* {"kinds": [...], "rope_scaling": [...], "default": {...}, "nbce": {...}}
 * for /v1/models (routes_nbce.c): available attention kinds and the
 * server's defaults. New reference owned by the caller. */
json_t *routes_attention_json(serve_app *a);
struct gen_request;
int routes_nbce_prompts(serve_app *a, const struct gen_request *req, const chat_render_opts *ro, int32_t reserve,
                        const int32_t *q_toks, int32_t q_len, int32_t ***toks_out, int32_t **lens_out,
                        int32_t *n_out, api_error *err);

#endif
