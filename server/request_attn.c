/* request_attn.c -- the qkvd extension fields of a generation request:
 * "attention" (kind and parameters) and NBCE ("context_mode", "contexts",
 * "nbce_beta", "nbce_pool"). See request.h and docs/attention.md. */
#include "request.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "nbce.h"

#define BAD(err, param, ...) api_error_set(err, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__)

static int attn_int(const json_t *v, const char *param, long long lo, long long hi, int32_t *out, api_error *err) {
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        BAD(err, param, "'%s' must be an integer in [%lld, %lld]", param, lo, hi);
        return -1;
    }
    *out = (int32_t)json_integer_value(v);
    return 0;
}

static int attn_num(const json_t *v, const char *param, double lo, double hi, float *out, api_error *err) {
    if (!json_is_number(v) || !(json_number_value(v) >= lo) || !(json_number_value(v) <= hi)) {
        BAD(err, param, "'%s' must be a number in [%g, %g]", param, lo, hi);
        return -1;
    }
    *out = (float)json_number_value(v);
    return 0;
}

static int attention_object_parse(const json_t *a, gen_request *r, api_error *err) {
    if (!json_is_object(a)) {
        BAD(err, "attention", "'attention' must be an object like {\"kind\": \"window\", \"window\": 512}");
        return -1;
    }
    attn_params_default(&r->attn);
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)a, key, v) {
        if (!strcmp(key, "kind")) {
            if (!json_is_string(v) || attn_kind_parse(json_string_value(v), &r->attn.kind)) {
                BAD(err, "attention.kind",
                    "'attention.kind' must be one of softmax, window, rerope, leaky-rerope, logn, hwfa, linear");
                return -1;
            }
            if (r->attn.kind == ATTN_LOGN) { r->attn.logn = 1; r->attn_given |= GEN_ATTN_LOGN; }
            r->attn_given |= GEN_ATTN_KIND;
        } else if (!strcmp(key, "window") || !strcmp(key, "w")) {
            if (attn_int(v, "attention.window", 1, 1 << 24, &r->attn.window, err)) return -1;
            r->attn_given |= GEN_ATTN_WINDOW;
        } else if (!strcmp(key, "sinks")) {
            if (attn_int(v, "attention.sinks", 0, 1 << 24, &r->attn.sinks, err)) return -1;
            r->attn_given |= GEN_ATTN_SINKS;
        } else if (!strcmp(key, "leak") || !strcmp(key, "k")) {
            if (attn_num(v, "attention.leak", 1.0, 1e6, &r->attn.leak, err)) return -1;
            if (!(r->attn.leak > 1.0f)) {
                BAD(err, "attention.leak", "'attention.leak' must be > 1");
                return -1;
            }
            r->attn_given |= GEN_ATTN_LEAK;
        } else if (!strcmp(key, "logn")) {
            if (!json_is_boolean(v)) { BAD(err, "attention.logn", "'attention.logn' must be a boolean"); return -1; }
            r->attn.logn = json_is_true(v) || r->attn.kind == ATTN_LOGN;
            r->attn_given |= GEN_ATTN_LOGN;
        } else if (!strcmp(key, "rope_scaling")) {
            if (!json_is_string(v) || rope_scaling_parse(json_string_value(v), &r->attn.rope.type)) {
                BAD(err, "attention.rope_scaling",
                    "'attention.rope_scaling' must be one of none, linear, ntk, dynamic-ntk, yarn");
                return -1;
            }
            r->attn_given |= GEN_ATTN_ROPE;
        } else if (!strcmp(key, "rope_factor")) {
            if (attn_num(v, "attention.rope_factor", 1.0, 1e4, &r->attn.rope.factor, err)) return -1;
            r->attn_given |= GEN_ATTN_ROPE_FACTOR;
        } else if (!strcmp(key, "rope_original_context") || !strcmp(key, "rope_orig_ctx")) {
            if (attn_int(v, "attention.rope_original_context", 0, 1 << 24, &r->attn.rope.orig_ctx, err)) return -1;
            r->attn_given |= GEN_ATTN_ROPE_ORIG;
        } else {
            char param[96];
            snprintf(param, sizeof param, "attention.%.80s", key);
            api_error_set(err, 400, "invalid_request_error", param, "unknown_parameter",
                          "unknown field '%s' in 'attention' (kind, window, sinks, leak, logn, rope_scaling, "
                          "rope_factor, rope_original_context)", param);
            return -1;
        }
    }
    return 0;
}

int request_attention_parse(const json_t *o, gen_request *r, api_error *err) {
    attn_params_default(&r->attn);
    r->nbce_beta = NBCE_DEFAULT_BETA;
    json_t *a = json_object_get(o, "attention");
    if (a && !json_is_null(a) && attention_object_parse(a, r, err)) return -1;
    json_t *cm = json_object_get(o, "context_mode");
    if (cm && !json_is_null(cm)) {
        if (!json_is_string(cm) || (strcmp(json_string_value(cm), "nbce") && strcmp(json_string_value(cm), "normal"))) {
            BAD(err, "context_mode", "'context_mode' must be \"nbce\" or \"normal\"");
            return -1;
        }
        r->nbce = !strcmp(json_string_value(cm), "nbce");
    }
    json_t *cs = json_object_get(o, "contexts");
    if (cs && !json_is_null(cs)) {
        if (!r->nbce) { BAD(err, "contexts", "'contexts' needs \"context_mode\": \"nbce\""); return -1; }
        if (!json_is_array(cs) || json_array_size(cs) == 0 || json_array_size(cs) > GEN_MAX_CONTEXTS) {
            BAD(err, "contexts", "'contexts' must be an array of 1 to %d strings", GEN_MAX_CONTEXTS);
            return -1;
        }
        size_t n = json_array_size(cs);
        r->contexts = calloc(n, sizeof *r->contexts);
        r->context_len = calloc(n, sizeof *r->context_len);
        if (!r->contexts || !r->context_len) abort();
        for (size_t i = 0; i < n; i++) {
            json_t *c = json_array_get(cs, i);
            if (!json_is_string(c) || json_string_length(c) == 0) {
                BAD(err, "contexts", "'contexts' element %zu must be a non-empty string", i);
                return -1;
            }
            r->contexts[i] = strndup(json_string_value(c), json_string_length(c));
            if (!r->contexts[i]) abort();
            r->context_len[i] = json_string_length(c);
            r->n_contexts = (int32_t)(i + 1);
        }
    }
    json_t *b = json_object_get(o, "nbce_beta");
    if (b && !json_is_null(b)) {
        if (!r->nbce) { BAD(err, "nbce_beta", "'nbce_beta' needs \"context_mode\": \"nbce\""); return -1; }
        if (attn_num(b, "nbce_beta", 0.0, 100.0, &r->nbce_beta, err)) return -1;
        r->nbce_beta_given = 1;
    }
    json_t *pl = json_object_get(o, "nbce_pool");
    if (pl && !json_is_null(pl)) {
        enum nbce_pool p;
        if (!r->nbce) { BAD(err, "nbce_pool", "'nbce_pool' needs \"context_mode\": \"nbce\""); return -1; }
        if (!json_is_string(pl) || nbce_pool_parse(json_string_value(pl), &p)) {
            BAD(err, "nbce_pool", "'nbce_pool' must be \"min-entropy\" or \"mean\"");
            return -1;
        }
        r->nbce_pool = (int32_t)p;
        r->nbce_pool_given = 1;
    }
    if (r->nbce && r->n > 1) {
        BAD(err, "n", "\"context_mode\": \"nbce\" produces one choice: 'n' must be 1");
        return -1;
    }
    if (r->nbce && r->echo) {
        BAD(err, "echo", "\"context_mode\": \"nbce\" cannot echo the prompt (there is one per context)");
        return -1;
    }
    if (r->nbce && r->tools) {
        BAD(err, "tools", "\"context_mode\": \"nbce\" cannot be combined with 'tools'");
        return -1;
    }
    if (r->nbce && r->kind == GEN_COMPLETION && r->n_prompts > 1) {
        BAD(err, "prompt", "\"context_mode\": \"nbce\" takes one prompt (the question)");
        return -1;
    }
    return 0;
}

int request_attention_resolve(const gen_request *r, const attn_params *def, attn_params *out, api_error *err) {
    *out = *def;
    uint32_t g = r->attn_given;
    if (g & GEN_ATTN_KIND) {
        out->kind = r->attn.kind;
        /* A different kind does not inherit the default's logn flag. */
        if (!(g & GEN_ATTN_LOGN)) out->logn = r->attn.kind == ATTN_LOGN;
    }
    if (g & GEN_ATTN_WINDOW) out->window = r->attn.window;
    if (g & GEN_ATTN_SINKS) out->sinks = r->attn.sinks;
    if (g & GEN_ATTN_LEAK) out->leak = r->attn.leak;
    if (g & GEN_ATTN_LOGN) out->logn = r->attn.logn;
    if (g & (GEN_ATTN_ROPE | GEN_ATTN_ROPE_FACTOR | GEN_ATTN_ROPE_ORIG)) {
        if (!out->rope_set) {
            /* From the model's scaling to an explicit one: start plain. */
            rope_params_default(&out->rope);
            out->rope_set = 1;
        }
        if (g & GEN_ATTN_ROPE) out->rope.type = r->attn.rope.type;
        if (g & GEN_ATTN_ROPE_FACTOR) out->rope.factor = r->attn.rope.factor;
        if (g & GEN_ATTN_ROPE_ORIG) out->rope.orig_ctx = r->attn.rope.orig_ctx;
    }
    const char *param = NULL;
    char msg[256];
    if (attn_params_validate(out, &param, msg, sizeof msg)) {
        char full[96];
        snprintf(full, sizeof full, "attention.%s", param);
        api_error_set(err, 400, "invalid_request_error", full, "invalid_value", "%s", msg);
        return -1;
    }
    return 0;
}

void request_attention_free(gen_request *r) {
    for (int32_t i = 0; i < r->n_contexts; i++) free(r->contexts[i]);
    free(r->contexts);
    free(r->context_len);
    r->contexts = NULL;
    r->context_len = NULL;
    r->n_contexts = 0;
}
