/* request.h -- parse and validate OpenAI request bodies (jansson) into plain
 * structs, on the loop thread. Every known field is type- and range-checked;
 * a bad one gives a 400 api_error whose `param` names it. Unknown fields are
 * ignored (vendor extras; docs/api.md lists the ones we know of). */
#ifndef QKVD_REQUEST_H
#define QKVD_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "errors.h"
#include "sampler.h"
#include "attn_kind.h"

#define GEN_MAX_STOP 4
#define GEN_MAX_N 128
#define GEN_MAX_PROMPTS 64

enum gen_kind { GEN_CHAT = 1, GEN_COMPLETION = 2 };

/* Output constraint asked for by response_format / grammar. */
enum gen_format { GEN_FORMAT_TEXT = 0, GEN_FORMAT_JSON_OBJECT, GEN_FORMAT_JSON_SCHEMA, GEN_FORMAT_GBNF };
/* tool_choice (GEN_TOOLS_AUTO when tools are given without one). */
enum gen_tool_choice { GEN_TOOLS_NONE = 0, GEN_TOOLS_AUTO, GEN_TOOLS_REQUIRED, GEN_TOOLS_NAMED };
#define GEN_MAX_TOOLS 128

/* One prompt: either text (tokenised later with the model) or token ids. */
typedef struct gen_prompt {
    char *text; size_t text_len;      /* owned; NULL when tokens are given */
    int32_t *tokens; int32_t n_tokens; /* owned; NULL when text is given */
} gen_prompt;

typedef struct gen_request {
    enum gen_kind kind;
    char *model;                /* requested model id, or NULL */
    json_t *messages;           /* chat: validated, normalised (text parts joined); own ref */
    gen_prompt *prompts;        /* completions: n_prompts entries */
    int32_t n_prompts;
    int32_t max_tokens;         /* -1: not given (server default applies) */
    int32_t n;                  /* choices per prompt */
    char *stop[GEN_MAX_STOP];   /* owned, non-empty */
    size_t stop_len[GEN_MAX_STOP];
    int32_t n_stop;
    sampler_params sp;          /* sp.bias_* point into bias_ids/bias_vals below */
    int has_seed;
    int32_t *bias_ids; float *bias_vals;
    int logprobs;               /* chat: logprobs true; completions: logprobs given */
    int32_t top_logprobs;       /* alternatives per token */
    int echo;                   /* completions: prepend the prompt */
    int stream, include_usage;
    char *user;                 /* owned or NULL */
    /* Structured output (docs/structured-output.md). Schemas are only
     * type-checked here; they are compiled (and their errors reported) when
     * the request starts, with the model's grammar cache. */
    enum gen_format format;
    json_t *schema;             /* JSON_SCHEMA (and JSON_OBJECT with a "schema"): own ref */
    char *grammar; size_t grammar_len; /* GBNF: owned */
    json_t *tools;              /* chat: validated tools array (own ref), NULL when none */
    enum gen_tool_choice tool_choice;
    int32_t tool_named;         /* GEN_TOOLS_NAMED: index into tools */
    int parallel_tool_calls;    /* default 1 */
    /* Extensions of llama-server / vLLM that are honoured (docs/api.md): */
    int ignore_eos;             /* end-of-generation tokens are banned: runs to max_tokens */
    int include_stop_str;       /* include_stop_str_in_output: the matched stop string ends the text */
    int render_special;         /* skip_special_tokens false: special tokens' text is emitted */
    int add_generation_prompt;  /* chat: default 1 */
    int continue_final_message; /* chat: continue the last (assistant) message instead of closing it */
    json_t *template_kwargs;    /* chat_template_kwargs: extra template variables (own ref) or NULL */
    /* qkvd extensions (docs/attention.md): "attention": {...} overrides the
     * server's attention kind field by field (attn_given: GEN_ATTN_* bits of
     * the fields given; attn holds them); "context_mode": "nbce" with
     * "contexts" (or the prompt split automatically). */
    uint32_t attn_given;
    attn_params attn;
    int nbce;
    char **contexts; size_t *context_len; int32_t n_contexts; /* owned */
    float nbce_beta; int nbce_beta_given;
    int32_t nbce_pool; int nbce_pool_given; /* enum nbce_pool */
} gen_request;

#define GEN_ATTN_KIND 1u
#define GEN_ATTN_WINDOW 2u
#define GEN_ATTN_SINKS 4u
#define GEN_ATTN_LEAK 8u
#define GEN_ATTN_LOGN 16u
#define GEN_ATTN_ROPE 32u       /* rope_scaling type given */
#define GEN_ATTN_ROPE_FACTOR 64u
#define GEN_ATTN_ROPE_ORIG 128u
#define GEN_MAX_CONTEXTS 32

/* The qkvd extension fields of a generation body (called by
 * request_parse_generation): "attention", "context_mode", "contexts",
 * "nbce_beta", "nbce_pool". 0 or -1 with err naming the bad field
 * ("attention.window", ...). Allocations are freed by gen_request_free. */
int request_attention_parse(const json_t *o, gen_request *r, api_error *err);
/* The request's attention: the server default `def` with the given fields
 * replaced; then validated (0, or -1 with a 400 naming the parameter). */
int request_attention_resolve(const gen_request *r, const attn_params *def, attn_params *out, api_error *err);
/* Frees what request_attention_parse allocated (called by gen_request_free). */
void request_attention_free(gen_request *r);

/* Parse a chat (kind GEN_CHAT) or completions body. n_vocab > 0 checks token
 * ids (prompt tokens, logit_bias keys) against it. 0 or -1 with err filled.
 * On success *out owns its allocations: gen_request_free. On failure *out is
 * left freed. */
int request_parse_generation(enum gen_kind kind, const char *body, size_t len, int32_t n_vocab,
                             gen_request *out, api_error *err);
void gen_request_free(gen_request *r); /* accepts a zeroed or half-built request */

typedef struct embd_request {
    char *model;
    gen_prompt *inputs; int32_t n_inputs;
    int base64;                 /* encoding_format "base64" */
    int32_t dimensions;         /* 0: not given */
} embd_request;

/* Parse an /v1/embeddings body. Same conventions as request_parse_generation. */
int request_parse_embeddings(const char *body, size_t len, int32_t n_vocab,
                             embd_request *out, api_error *err);
void embd_request_free(embd_request *r);

/* Parse body as a JSON object; 400 "invalid JSON" otherwise. Caller owns the result. */
json_t *request_parse_object(const char *body, size_t len, api_error *err);
/* Validate a chat `messages` value and return a normalised copy (content
 * arrays of text parts joined into one string). NULL with err on error. */
json_t *request_messages_normalise(const json_t *messages, api_error *err);

#endif
