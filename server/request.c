/* request.c -- OpenAI request bodies -> gen_request / embd_request (see request.h). */
#include "request.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BAD(err, param, ...) api_error_set(err, 400, "invalid_request_error", param, "invalid_value", __VA_ARGS__)

json_t *request_parse_object(const char *body, size_t len, api_error *err) {
    json_error_t je;
    if (len == 0) {
        api_error_set(err, 400, NULL, NULL, "invalid_json", "request body is empty: expected a JSON object");
        return NULL;
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        api_error_set(err, 400, NULL, NULL, "invalid_json", "invalid JSON in request body: %s (line %d, column %d)",
                      je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(root)) {
        api_error_set(err, 400, NULL, NULL, "invalid_json", "request body must be a JSON object");
        json_decref(root);
        return NULL;
    }
    return root;
}

/* Field getters: 0 = absent or null (out untouched), 1 = set, -1 = error. */
static int get_number(const json_t *o, const char *key, double lo, double hi, double *out, api_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) { BAD(err, key, "'%s' must be a number", key); return -1; }
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) { BAD(err, key, "'%s' must be between %g and %g, got %g", key, lo, hi, d); return -1; }
    *out = d;
    return 1;
}

static int get_int(const json_t *o, const char *key, long long lo, long long hi, long long *out, api_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) x = json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
             fabs(json_real_value(v)) < 9e15) x = (long long)json_real_value(v);
    else { BAD(err, key, "'%s' must be an integer", key); return -1; }
    if (x < lo || x > hi) { BAD(err, key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x); return -1; }
    *out = x;
    return 1;
}

static int get_bool(const json_t *o, const char *key, int *out, api_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) { BAD(err, key, "'%s' must be a boolean", key); return -1; }
    *out = json_is_true(v);
    return 1;
}

static int get_string(const json_t *o, const char *key, char **out, api_error *err) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) { BAD(err, key, "'%s' must be a string", key); return -1; }
    char *s = strndup(json_string_value(v), json_string_length(v));
    if (!s) abort();
    free(*out);
    *out = s;
    return 1;
}

static void prompt_free(gen_prompt *p) {
    free(p->text);
    free(p->tokens);
}

/* Token array -> ids; -1 with err naming `param` on a bad element. */
static int tokens_parse(const json_t *arr, int32_t n_vocab, const char *param, gen_prompt *p, api_error *err) {
    size_t n = json_array_size(arr);
    p->tokens = malloc((n ? n : 1) * sizeof(int32_t));
    if (!p->tokens) { api_error_set(err, 413, NULL, param, NULL, "'%s' is too large", param); return -1; }
    p->n_tokens = (int32_t)n;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        if (!json_is_integer(t)) { BAD(err, param, "'%s' must contain only integer token ids (element %zu)", param, i); return -1; }
        long long id = json_integer_value(t);
        if (id < 0 || id > INT32_MAX || (n_vocab > 0 && id >= n_vocab)) {
            BAD(err, param, "'%s' element %zu: token id %lld is outside the vocabulary [0, %d)", param, i, id,
                (int)(n_vocab > 0 ? n_vocab : INT32_MAX));
            return -1;
        }
        p->tokens[i] = (int32_t)id;
    }
    return 0;
}

static int all_of(const json_t *arr, int (*pred)(const json_t *)) {
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (!pred(v)) return 0;
    return 1;
}
static int is_int(const json_t *v) { return json_is_integer(v); }
static int is_str(const json_t *v) { return json_is_string(v); }
static int is_tok_array(const json_t *v) { return json_is_array(v) && json_array_size(v) > 0 && all_of(v, is_int); }

/* `prompt` / `input`: string | [string...] | [int...] | [[int...]...]. */
static int prompts_parse(const json_t *v, const char *param, int32_t n_vocab, int allow_empty_text,
                         gen_prompt **out, int32_t *n_out, api_error *err) {
    *out = NULL;
    *n_out = 0;
    if (!v || json_is_null(v)) { BAD(err, param, "'%s' is required", param); return -1; }
    size_t n = 1;
    int shape; /* 0 string, 1 strings, 2 token array, 3 token arrays */
    if (json_is_string(v)) shape = 0;
    else if (json_is_array(v) && json_array_size(v) > 0) {
        n = json_array_size(v);
        if (all_of(v, is_str)) shape = 1;
        else if (all_of(v, is_int)) { shape = 2; n = 1; }
        else if (all_of(v, is_tok_array)) shape = 3;
        else {
            BAD(err, param, "'%s' must be a string, an array of strings, an array of token ids or an array of "
                "non-empty token arrays", param);
            return -1;
        }
    } else {
        BAD(err, param, "'%s' must be a non-empty string or array", param);
        return -1;
    }
    if (n > GEN_MAX_PROMPTS && shape != 2) { BAD(err, param, "'%s' has %zu entries; at most %d are allowed", param, n, GEN_MAX_PROMPTS); return -1; }
    gen_prompt *p = calloc(n, sizeof *p);
    if (!p) abort();
    *out = p;
    *n_out = (int32_t)n;
    for (size_t i = 0; i < n; i++) {
        const json_t *e = shape == 0 || shape == 2 ? v : json_array_get(v, i);
        if (shape <= 1) {
            if (!allow_empty_text && json_string_length(e) == 0) { BAD(err, param, "'%s' must not be empty", param); return -1; }
            p[i].text = strndup(json_string_value(e), json_string_length(e));
            if (!p[i].text) abort();
            p[i].text_len = json_string_length(e);
        } else if (tokens_parse(e, n_vocab, param, &p[i], err)) {
            return -1;
        }
    }
    return 0;
}

static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", NULL};

json_t *request_messages_normalise(const json_t *messages, api_error *err) {
    if (!messages || json_is_null(messages)) { BAD(err, "messages", "'messages' is required"); return NULL; }
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        BAD(err, "messages", "'messages' must be a non-empty array of message objects");
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    json_t *m;
    char param[96];
    json_array_foreach(messages, i, m) {
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) { BAD(err, param, "'%s' must be an object", param); goto fail; }
        json_t *role = json_object_get(m, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!json_is_string(role)) { BAD(err, param, "'%s' is required and must be a string", param); goto fail; }
        int known = 0;
        for (int r = 0; roles[r]; r++) known |= !strcmp(json_string_value(role), roles[r]);
        if (!known) {
            BAD(err, param, "'%s' must be one of system, developer, user, assistant, tool; got '%s'", param,
                json_string_value(role));
            goto fail;
        }
        int is_assistant = !strcmp(json_string_value(role), "assistant");
        json_t *copy = json_deep_copy(m);
        /* OpenAI's "developer" is the newer name of "system"; chat templates
         * only know the latter. */
        if (!strcmp(json_string_value(role), "developer")) json_object_set_new(copy, "role", json_string("system"));
        json_t *content = json_object_get(m, "content");
        snprintf(param, sizeof param, "messages[%zu].content", i);
        if (!content || json_is_null(content)) {
            if (!is_assistant || !json_object_get(m, "tool_calls")) {
                if (!is_assistant) { json_decref(copy); BAD(err, param, "'%s' is required", param); goto fail; }
            }
            json_object_set_new(copy, "content", json_string(""));
        } else if (json_is_array(content)) {
            /* Array of text parts: join their text (templates expect a string). */
            size_t j;
            json_t *part;
            size_t total = 0;
            json_array_foreach(content, j, part) {
                char pp[136];
                snprintf(pp, sizeof pp, "%s[%zu]", param, j);
                json_t *type = json_is_object(part) ? json_object_get(part, "type") : NULL;
                if (!json_is_string(type)) { json_decref(copy); BAD(err, pp, "'%s' must be an object with a 'type'", pp); goto fail; }
                if (strcmp(json_string_value(type), "text")) {
                    json_decref(copy);
                    BAD(err, pp, "'%s': content part type '%s' is not supported (only 'text')", pp, json_string_value(type));
                    goto fail;
                }
                json_t *text = json_object_get(part, "text");
                if (!json_is_string(text)) { json_decref(copy); BAD(err, pp, "'%s.text' must be a string", pp); goto fail; }
                total += json_string_length(text);
            }
            char *buf = malloc(total + 1), *w = buf;
            if (!buf) abort();
            json_array_foreach(content, j, part) {
                json_t *text = json_object_get(part, "text");
                memcpy(w, json_string_value(text), json_string_length(text));
                w += json_string_length(text);
            }
            json_object_set_new(copy, "content", json_stringn(buf, total));
            free(buf);
        } else if (!json_is_string(content)) {
            json_decref(copy);
            BAD(err, param, "'%s' must be a string or an array of text parts", param);
            goto fail;
        }
        json_t *name = json_object_get(m, "name");
        if (name && !json_is_null(name) && !json_is_string(name)) {
            json_decref(copy);
            snprintf(param, sizeof param, "messages[%zu].name", i);
            BAD(err, param, "'%s' must be a string", param);
            goto fail;
        }
        json_t *tc = json_object_get(m, "tool_calls");
        if (tc && !json_is_null(tc) && !json_is_array(tc)) {
            json_decref(copy);
            snprintf(param, sizeof param, "messages[%zu].tool_calls", i);
            BAD(err, param, "'%s' must be an array", param);
            goto fail;
        }
        json_array_append_new(out, copy);
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

/* Fields that belong to later features: rejected so that nobody believes they
 * were honoured. */
static int reject_unsupported(const json_t *o, enum gen_kind kind, api_error *err) {
    static const char *const chat_rejects[] = {"functions", "function_call", "audio",
                                               "prediction", "web_search_options", NULL};
    if (kind == GEN_CHAT) {
        for (int i = 0; chat_rejects[i]; i++) {
            json_t *v = json_object_get(o, chat_rejects[i]);
            if (v && !json_is_null(v)) {
                api_error_set(err, 400, NULL, chat_rejects[i], "unsupported_parameter",
                              "'%s' is not supported by this server yet", chat_rejects[i]);
                return -1;
            }
        }
        json_t *mod = json_object_get(o, "modalities");
        if (mod && !json_is_null(mod)) {
            if (!json_is_array(mod) || !all_of(mod, is_str)) { BAD(err, "modalities", "'modalities' must be an array of strings"); return -1; }
            size_t i;
            json_t *x;
            json_array_foreach(mod, i, x) if (strcmp(json_string_value(x), "text")) {
                api_error_set(err, 400, NULL, "modalities", "unsupported_parameter", "only the 'text' modality is supported");
                return -1;
            }
        }
        int store = 0;
        if (get_bool(o, "store", &store, err) < 0) return -1;
        if (store) {
            api_error_set(err, 400, NULL, "store", "unsupported_parameter", "'store': true is not supported (nothing is stored)");
            return -1;
        }
    } else {
        json_t *sfx = json_object_get(o, "suffix");
        if (sfx && !json_is_null(sfx) && !(json_is_string(sfx) && json_string_length(sfx) == 0)) {
            api_error_set(err, 400, NULL, "suffix", "unsupported_parameter", "'suffix' (insertion) is not supported");
            return -1;
        }
    }
    return 0;
}

/* Vendor extensions (llama-server, vLLM). Those we implement are parsed into
 * r; those that would change the output but that this server lacks are rejected,
 * so that nobody believes they were applied (a value equal to the sampler's
 * neutral setting is accepted). Fields without any effect on output (slot
 * ids, timing hints) stay ignored, as docs/api.md lists. */
static int extensions_parse(const json_t *o, enum gen_kind kind, gen_request *r, api_error *err) {
    static const struct { const char *key; double neutral; } neutral_only[] = {
        {"typical_p", 1.0}, {"mirostat", 0.0}, {"mirostat_mode", 0.0}, {"tfs_z", 1.0},
        {"length_penalty", 1.0}, {"n_keep", 0.0}, {"n_probs", 0.0}, {"dry_multiplier", 0.0},
        {"xtc_probability", 0.0}, {NULL, 0}};
    for (int i = 0; neutral_only[i].key; i++) {
        json_t *v = json_object_get(o, neutral_only[i].key);
        if (!v || json_is_null(v)) continue;
        if (!json_is_number(v) || json_number_value(v) != neutral_only[i].neutral) {
            api_error_set(err, 400, NULL, neutral_only[i].key, "unsupported_parameter",
                          "'%s' is not supported by this server (only its neutral value %g is accepted)",
                          neutral_only[i].key, neutral_only[i].neutral);
            return -1;
        }
    }
    static const char *const rejects[] = {"samplers", "guided_json", "guided_regex", "guided_choice",
                                          "guided_grammar", "guided_decoding_backend",
                                          "guided_whitespace_pattern", "dry_sequence_breakers", NULL};
    for (int i = 0; rejects[i]; i++) {
        json_t *v = json_object_get(o, rejects[i]);
        if (v && !json_is_null(v)) {
            api_error_set(err, 400, NULL, rejects[i], "unsupported_parameter",
                          "'%s' is not supported by this server%s", rejects[i],
                          !strncmp(rejects[i], "guided_", 7) ? " (use 'response_format')" : "");
            return -1;
        }
    }
    int b = 0;
    if (get_bool(o, "use_beam_search", &b, err) < 0) return -1;
    if (b) {
        api_error_set(err, 400, NULL, "use_beam_search", "unsupported_parameter", "beam search is not supported");
        return -1;
    }
    json_t *re = json_object_get(o, "reasoning_effort");
    if (re && !json_is_null(re)) {
        api_error_set(err, 400, NULL, "reasoning_effort", "unsupported_parameter",
                      "'reasoning_effort' is not supported with this model");
        return -1;
    }
    json_t *tier = json_object_get(o, "service_tier");
    if (tier && !json_is_null(tier)) {
        if (!json_is_string(tier)) { BAD(err, "service_tier", "'service_tier' must be a string"); return -1; }
        const char *t = json_string_value(tier);
        if (strcmp(t, "auto") && strcmp(t, "default")) {
            api_error_set(err, 400, NULL, "service_tier", "unsupported_parameter",
                          "'service_tier' '%s' is not offered: this server has one tier ('auto' / 'default')", t);
            return -1;
        }
    }
    if (get_bool(o, "ignore_eos", &r->ignore_eos, err) < 0) return -1;
    if (get_bool(o, "include_stop_str_in_output", &r->include_stop_str, err) < 0) return -1;
    int skip_special = 1;
    if (get_bool(o, "skip_special_tokens", &skip_special, err) < 0) return -1;
    r->render_special = !skip_special;
    r->add_generation_prompt = 1;
    static const char *const chat_only[] = {"chat_template_kwargs", "add_generation_prompt",
                                            "continue_final_message", NULL};
    if (kind != GEN_CHAT) {
        for (int i = 0; chat_only[i]; i++) {
            json_t *v = json_object_get(o, chat_only[i]);
            if (v && !json_is_null(v)) {
                BAD(err, chat_only[i], "this field applies to /v1/chat/completions only");
                return -1;
            }
        }
        return 0;
    }
    json_t *bo = json_object_get(o, "best_of"); /* vLLM's chat extension; completions check it above */
    if (bo && !json_is_null(bo) && !(json_is_integer(bo) && json_integer_value(bo) == r->n)) {
        api_error_set(err, 400, NULL, "best_of", "unsupported_parameter",
                      "'best_of' is supported only when equal to 'n'");
        return -1;
    }
    if (get_bool(o, "add_generation_prompt", &r->add_generation_prompt, err) < 0) return -1;
    if (get_bool(o, "continue_final_message", &r->continue_final_message, err) < 0) return -1;
    if (r->continue_final_message) {
        json_t *ag = json_object_get(o, "add_generation_prompt");
        if (json_is_true(ag)) {
            BAD(err, "continue_final_message",
                "'continue_final_message' and 'add_generation_prompt' cannot both be true");
            return -1;
        }
        r->add_generation_prompt = 0;
    }
    json_t *kw = json_object_get(o, "chat_template_kwargs");
    if (kw && !json_is_null(kw)) {
        if (!json_is_object(kw)) { BAD(err, "chat_template_kwargs", "'chat_template_kwargs' must be an object"); return -1; }
        r->template_kwargs = json_deep_copy(kw);
        if (!r->template_kwargs) abort();
    }
    return 0;
}

static int stop_parse(const json_t *o, gen_request *r, api_error *err) {
    json_t *v = json_object_get(o, "stop");
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return 0;
        r->stop[0] = strndup(json_string_value(v), json_string_length(v));
        r->stop_len[0] = json_string_length(v);
        r->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v) || !all_of(v, is_str)) { BAD(err, "stop", "'stop' must be a string or an array of strings"); return -1; }
    if (json_array_size(v) > GEN_MAX_STOP) { BAD(err, "stop", "'stop' may hold at most %d strings", GEN_MAX_STOP); return -1; }
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (json_string_length(s) == 0) continue;
        r->stop[r->n_stop] = strndup(json_string_value(s), json_string_length(s));
        r->stop_len[r->n_stop++] = json_string_length(s);
    }
    return 0;
}

static int bias_parse(const json_t *o, int32_t n_vocab, gen_request *r, api_error *err) {
    json_t *v = json_object_get(o, "logit_bias");
    if (!v || json_is_null(v)) return 0;
    if (!json_is_object(v)) { BAD(err, "logit_bias", "'logit_bias' must be an object mapping token ids to numbers"); return -1; }
    size_t n = json_object_size(v);
    if (n > 1024) { BAD(err, "logit_bias", "'logit_bias' may hold at most 1024 entries"); return -1; }
    r->bias_ids = malloc((n + 1) * sizeof(int32_t));
    r->bias_vals = malloc((n + 1) * sizeof(float));
    if (!r->bias_ids || !r->bias_vals) abort();
    const char *key;
    json_t *val;
    int32_t k = 0;
    json_object_foreach((json_t *)v, key, val) {
        char *end;
        long id = strtol(key, &end, 10);
        if (!key[0] || *end || id < 0 || id > INT32_MAX || (n_vocab > 0 && id >= n_vocab)) {
            BAD(err, "logit_bias", "'logit_bias' key '%.40s' is not a token id in the vocabulary", key);
            return -1;
        }
        if (!json_is_number(val) || !(json_number_value(val) >= -100 && json_number_value(val) <= 100)) {
            BAD(err, "logit_bias", "'logit_bias' value for token %ld must be a number between -100 and 100", id);
            return -1;
        }
        r->bias_ids[k] = (int32_t)id;
        r->bias_vals[k++] = (float)json_number_value(val);
    }
    r->sp.n_bias = k;
    r->sp.bias_ids = r->bias_ids;
    r->sp.bias_vals = r->bias_vals;
    return 0;
}


/* response_format: text | json_object (optional "schema") | json_schema with
 * {name, schema, strict, description} or, as Dify sends it, the schema itself. */
static int response_format_parse(const json_t *o, gen_request *r, api_error *err) {
    json_t *rf = json_object_get(o, "response_format");
    if (!rf || json_is_null(rf)) return 0;
    if (!json_is_object(rf)) { BAD(err, "response_format", "'response_format' must be an object"); return -1; }
    json_t *t = json_object_get(rf, "type");
    if (!json_is_string(t)) { BAD(err, "response_format", "'response_format.type' is required and must be a string"); return -1; }
    const char *type = json_string_value(t);
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) {
        /* llama.cpp's extension: a schema inside json_object mode. */
        json_t *sc = json_object_get(rf, "schema");
        if (sc && !json_is_null(sc)) {
            if (!json_is_object(sc) && !json_is_boolean(sc)) {
                BAD(err, "response_format", "'response_format.schema' must be a JSON Schema object");
                return -1;
            }
            r->format = GEN_FORMAT_JSON_SCHEMA;
            r->schema = json_incref(sc);
        } else {
            r->format = GEN_FORMAT_JSON_OBJECT;
        }
        return 0;
    }
    if (strcmp(type, "json_schema")) {
        BAD(err, "response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema', got '%.60s'", type);
        return -1;
    }
    json_t *js = json_object_get(rf, "json_schema");
    if (!json_is_object(js)) {
        BAD(err, "response_format", "'response_format.json_schema' is required and must be an object");
        return -1;
    }
    json_t *sc = json_object_get(js, "schema");
    json_t *name = json_object_get(js, "name"), *strict = json_object_get(js, "strict"), *desc = json_object_get(js, "description");
    if (sc || (name && json_is_string(name)) || (strict && json_is_boolean(strict))) {
        /* The OpenAI wrapper. */
        if (name && !json_is_null(name) && !json_is_string(name)) { BAD(err, "response_format", "'response_format.json_schema.name' must be a string"); return -1; }
        if (strict && !json_is_null(strict) && !json_is_boolean(strict)) { BAD(err, "response_format", "'response_format.json_schema.strict' must be a boolean"); return -1; }
        if (desc && !json_is_null(desc) && !json_is_string(desc)) { BAD(err, "response_format", "'response_format.json_schema.description' must be a string"); return -1; }
        if (!sc || json_is_null(sc)) {
            /* OpenAI allows a missing schema: any JSON value is then fine; we ask for an object like json_object. */
            r->format = GEN_FORMAT_JSON_OBJECT;
            return 0;
        }
        if (!json_is_object(sc) && !json_is_boolean(sc)) {
            BAD(err, "response_format", "'response_format.json_schema.schema' must be a JSON Schema object");
            return -1;
        }
    } else {
        sc = js; /* Dify's bare form: json_schema is the schema */
    }
    r->format = GEN_FORMAT_JSON_SCHEMA;
    r->schema = json_incref(sc);
    return 0;
}

static int tool_name_ok(const char *s, size_t n) {
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* tools / tool_choice / parallel_tool_calls (chat only). */
static int tools_parse(const json_t *o, gen_request *r, api_error *err) {
    char param[96];
    json_t *tools = json_object_get(o, "tools");
    r->parallel_tool_calls = 1;
    if (get_bool(o, "parallel_tool_calls", &r->parallel_tool_calls, err) < 0) return -1;
    if (tools && !json_is_null(tools)) {
        if (!json_is_array(tools)) { BAD(err, "tools", "'tools' must be an array of tool objects"); return -1; }
        if (json_array_size(tools) > GEN_MAX_TOOLS) { BAD(err, "tools", "'tools' may hold at most %d tools", GEN_MAX_TOOLS); return -1; }
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t) {
            snprintf(param, sizeof param, "tools[%zu]", i);
            if (!json_is_object(t)) { BAD(err, param, "'%s' must be an object", param); return -1; }
            json_t *type = json_object_get(t, "type");
            snprintf(param, sizeof param, "tools[%zu].type", i);
            if (!json_is_string(type) || strcmp(json_string_value(type), "function")) {
                BAD(err, param, "'%s' must be 'function'", param);
                return -1;
            }
            json_t *f = json_object_get(t, "function");
            snprintf(param, sizeof param, "tools[%zu].function", i);
            if (!json_is_object(f)) { BAD(err, param, "'%s' is required and must be an object", param); return -1; }
            json_t *name = json_object_get(f, "name");
            snprintf(param, sizeof param, "tools[%zu].function.name", i);
            if (!json_is_string(name) || !tool_name_ok(json_string_value(name), json_string_length(name))) {
                BAD(err, param, "'%s' is required: 1 to 64 characters a-z, A-Z, 0-9, '_', '-', '.'", param);
                return -1;
            }
            for (size_t k = 0; k < i; k++) {
                json_t *prev = json_object_get(json_object_get(json_array_get(tools, k), "function"), "name");
                if (json_equal(prev, name)) { BAD(err, param, "'%s': the name '%s' is used by tools[%zu] too", param, json_string_value(name), k); return -1; }
            }
            json_t *desc = json_object_get(f, "description");
            snprintf(param, sizeof param, "tools[%zu].function.description", i);
            if (desc && !json_is_null(desc) && !json_is_string(desc)) { BAD(err, param, "'%s' must be a string", param); return -1; }
            json_t *params = json_object_get(f, "parameters");
            snprintf(param, sizeof param, "tools[%zu].function.parameters", i);
            if (params && !json_is_null(params) && !json_is_object(params)) { BAD(err, param, "'%s' must be a JSON Schema object", param); return -1; }
            json_t *strict = json_object_get(f, "strict");
            snprintf(param, sizeof param, "tools[%zu].function.strict", i);
            if (strict && !json_is_null(strict) && !json_is_boolean(strict)) { BAD(err, param, "'%s' must be a boolean", param); return -1; }
        }
        /* [] counts as no tools (as llama.cpp; several clients send it). */
        if (json_array_size(tools)) r->tools = json_incref(tools);
    }
    r->tool_choice = r->tools ? GEN_TOOLS_AUTO : GEN_TOOLS_NONE;
    json_t *tc = json_object_get(o, "tool_choice");
    if (!tc || json_is_null(tc)) return 0;
    if (json_is_string(tc)) {
        const char *v = json_string_value(tc);
        if (!strcmp(v, "none")) { r->tool_choice = GEN_TOOLS_NONE; return 0; }
        if (strcmp(v, "auto") && strcmp(v, "required")) {
            BAD(err, "tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}");
            return -1;
        }
        if (!r->tools) { BAD(err, "tool_choice", "'tool_choice' '%s' needs a non-empty 'tools'", v); return -1; }
        r->tool_choice = !strcmp(v, "auto") ? GEN_TOOLS_AUTO : GEN_TOOLS_REQUIRED;
        return 0;
    }
    json_t *type = json_is_object(tc) ? json_object_get(tc, "type") : NULL;
    json_t *fn = json_is_object(tc) ? json_object_get(tc, "function") : NULL;
    json_t *name = json_is_object(fn) ? json_object_get(fn, "name") : NULL;
    if (!json_is_string(type) || strcmp(json_string_value(type), "function") || !json_is_string(name)) {
        BAD(err, "tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}");
        return -1;
    }
    if (!r->tools) { BAD(err, "tool_choice", "'tool_choice' names a function but 'tools' is empty"); return -1; }
    size_t i;
    json_t *t;
    json_array_foreach(r->tools, i, t) {
        if (json_equal(json_object_get(json_object_get(t, "function"), "name"), name)) {
            r->tool_choice = GEN_TOOLS_NAMED;
            r->tool_named = (int32_t)i;
            return 0;
        }
    }
    BAD(err, "tool_choice", "'tool_choice' names the function '%.64s', which is not in 'tools'", json_string_value(name));
    return -1;
}

/* response_format, grammar and tools together. */
static int structured_parse(const json_t *o, enum gen_kind kind, gen_request *r, api_error *err) {
    if (response_format_parse(o, r, err)) return -1;
    json_t *g = json_object_get(o, "grammar");
    if (g && !json_is_null(g)) {
        if (!json_is_string(g) || json_string_length(g) == 0) { BAD(err, "grammar", "'grammar' must be a non-empty string of GBNF rules"); return -1; }
        if (r->format != GEN_FORMAT_TEXT) { BAD(err, "grammar", "'grammar' and 'response_format' cannot be used together"); return -1; }
        r->grammar = strndup(json_string_value(g), json_string_length(g));
        if (!r->grammar) abort();
        r->grammar_len = json_string_length(g);
        r->format = GEN_FORMAT_GBNF;
    }
    if (kind != GEN_CHAT) return 0;
    if (tools_parse(o, r, err)) return -1;
    if (r->tool_choice != GEN_TOOLS_NONE && r->format != GEN_FORMAT_TEXT) {
        BAD(err, "tool_choice", "'tools' with tool_choice other than 'none' cannot be combined with '%s'",
            r->format == GEN_FORMAT_GBNF ? "grammar" : "response_format");
        return -1;
    }
    return 0;
}

int request_parse_generation(enum gen_kind kind, const char *body, size_t len, int32_t n_vocab,
                             gen_request *r, api_error *err) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    r->max_tokens = -1;
    r->n = 1;
    sampler_params_default(&r->sp);
    json_t *o = request_parse_object(body, len, err);
    if (!o) return -1;
    double d;
    long long x;
    int b;

    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model)) { BAD(err, "model", "'model' must be a string"); goto fail; }
    if (get_string(o, "model", &r->model, err) < 0) goto fail;
    if (reject_unsupported(o, kind, err)) goto fail;

    if (kind == GEN_CHAT) {
        if (json_object_get(o, "prompt") && !json_object_get(o, "messages")) {
            BAD(err, "messages", "'messages' is required (use /v1/completions for 'prompt')");
            goto fail;
        }
        r->messages = request_messages_normalise(json_object_get(o, "messages"), err);
        if (!r->messages) goto fail;
    } else {
        if (prompts_parse(json_object_get(o, "prompt"), "prompt", n_vocab, 1, &r->prompts, &r->n_prompts, err)) goto fail;
    }

    int rc = get_int(o, "max_tokens", kind == GEN_CHAT ? 1 : 0, INT32_MAX, &x, err);
    if (rc < 0) goto fail;
    if (rc) r->max_tokens = (int32_t)x;
    if (kind == GEN_CHAT) {
        rc = get_int(o, "max_completion_tokens", 1, INT32_MAX, &x, err);
        if (rc < 0) goto fail;
        if (rc) r->max_tokens = (int32_t)x;
    }
    if ((rc = get_number(o, "temperature", 0, 2, &d, err)) < 0) goto fail;
    if (rc) r->sp.temperature = (float)d;
    if ((rc = get_number(o, "top_p", 0, 1, &d, err)) < 0) goto fail;
    if (rc) r->sp.top_p = (float)d;
    if ((rc = get_int(o, "top_k", 0, INT32_MAX, &x, err)) < 0) goto fail;
    if (rc) r->sp.top_k = (int32_t)x;
    if ((rc = get_number(o, "min_p", 0, 1, &d, err)) < 0) goto fail;
    if (rc) r->sp.min_p = (float)d;
    if ((rc = get_number(o, "presence_penalty", -2, 2, &d, err)) < 0) goto fail;
    if (rc) r->sp.presence_penalty = (float)d;
    if ((rc = get_number(o, "frequency_penalty", -2, 2, &d, err)) < 0) goto fail;
    if (rc) r->sp.frequency_penalty = (float)d;
    if ((rc = get_number(o, "repetition_penalty", 1e-3, 100, &d, err)) < 0) goto fail;
    if (rc) r->sp.repetition_penalty = (float)d;
    if ((rc = get_int(o, "n", 1, GEN_MAX_N, &x, err)) < 0) goto fail;
    if (rc) r->n = (int32_t)x;
    if (kind == GEN_COMPLETION) {
        if ((rc = get_int(o, "best_of", 1, GEN_MAX_N, &x, err)) < 0) goto fail;
        if (rc && x != r->n) {
            api_error_set(err, 400, NULL, "best_of", "unsupported_parameter", "'best_of' different from 'n' is not supported");
            goto fail;
        }
    }
    if ((rc = get_int(o, "seed", INT64_MIN, INT64_MAX, &x, err)) < 0) goto fail;
    if (rc) { r->sp.seed = (uint64_t)x; r->has_seed = 1; }
    if (stop_parse(o, r, err)) goto fail;
    if (bias_parse(o, n_vocab, r, err)) goto fail;

    if (kind == GEN_CHAT) {
        b = 0;
        if (get_bool(o, "logprobs", &b, err) < 0) goto fail;
        r->logprobs = b;
        if ((rc = get_int(o, "top_logprobs", 0, 20, &x, err)) < 0) goto fail;
        if (rc) {
            if (!r->logprobs) { BAD(err, "top_logprobs", "'top_logprobs' requires 'logprobs': true"); goto fail; }
            r->top_logprobs = (int32_t)x;
        }
    } else {
        if ((rc = get_int(o, "logprobs", 0, 20, &x, err)) < 0) goto fail;
        if (rc) { r->logprobs = 1; r->top_logprobs = (int32_t)x; }
        b = 0;
        if (get_bool(o, "echo", &b, err) < 0) goto fail;
        r->echo = b;
    }
    r->sp.n_top_logprobs = r->top_logprobs;

    b = 0;
    if (get_bool(o, "stream", &b, err) < 0) goto fail;
    r->stream = b;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) { BAD(err, "stream_options", "'stream_options' must be an object"); goto fail; }
        if (!r->stream) { BAD(err, "stream_options", "'stream_options' is only allowed when 'stream' is true"); goto fail; }
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu)) {
            if (!json_is_boolean(iu)) { BAD(err, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean"); goto fail; }
            r->include_usage = json_is_true(iu);
        }
    }
    if (get_string(o, "user", &r->user, err) < 0) goto fail;
    if (structured_parse(o, kind, r, err)) goto fail;
    if (extensions_parse(o, kind, r, err)) goto fail;
    if (request_attention_parse(o, r, err)) goto fail;
    /* Accepted, typed, and without effect here (see docs/api.md). */
    json_t *meta = json_object_get(o, "metadata");
    if (meta && !json_is_null(meta) && !json_is_object(meta)) { BAD(err, "metadata", "'metadata' must be an object"); goto fail; }
    char *tmp = NULL;
    if (get_string(o, "prompt_cache_key", &tmp, err) < 0) goto fail;
    free(tmp);
    tmp = NULL;
    if (get_string(o, "safety_identifier", &tmp, err) < 0) goto fail;
    free(tmp);
    json_decref(o);
    return 0;
fail:
    json_decref(o);
    gen_request_free(r);
    return -1;
}

void gen_request_free(gen_request *r) {
    if (!r) return;
    free(r->model);
    json_decref(r->messages);
    for (int32_t i = 0; i < r->n_prompts; i++) prompt_free(&r->prompts[i]);
    free(r->prompts);
    for (int32_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->bias_ids);
    free(r->bias_vals);
    free(r->user);
    json_decref(r->schema);
    free(r->grammar);
    json_decref(r->tools);
    json_decref(r->template_kwargs);
    request_attention_free(r);
    memset(r, 0, sizeof *r);
}

int request_parse_embeddings(const char *body, size_t len, int32_t n_vocab, embd_request *r, api_error *err) {
    memset(r, 0, sizeof *r);
    json_t *o = request_parse_object(body, len, err);
    if (!o) return -1;
    long long x;
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model) && !json_is_string(model)) { BAD(err, "model", "'model' must be a string"); goto fail; }
    if (get_string(o, "model", &r->model, err) < 0) goto fail;
    if (prompts_parse(json_object_get(o, "input"), "input", n_vocab, 0, &r->inputs, &r->n_inputs, err)) goto fail;
    json_t *ef = json_object_get(o, "encoding_format");
    if (ef && !json_is_null(ef)) {
        if (!json_is_string(ef) || (strcmp(json_string_value(ef), "float") && strcmp(json_string_value(ef), "base64"))) {
            BAD(err, "encoding_format", "'encoding_format' must be 'float' or 'base64'");
            goto fail;
        }
        r->base64 = !strcmp(json_string_value(ef), "base64");
    }
    int rc = get_int(o, "dimensions", 1, INT32_MAX, &x, err);
    if (rc < 0) goto fail;
    if (rc) r->dimensions = (int32_t)x;
    char *user = NULL;
    if (get_string(o, "user", &user, err) < 0) goto fail;
    free(user);
    json_decref(o);
    return 0;
fail:
    json_decref(o);
    embd_request_free(r);
    return -1;
}

void embd_request_free(embd_request *r) {
    if (!r) return;
    free(r->model);
    for (int32_t i = 0; i < r->n_inputs; i++) prompt_free(&r->inputs[i]);
    free(r->inputs);
    memset(r, 0, sizeof *r);
}
