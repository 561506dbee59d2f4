/* fuzz_request.c -- libFuzzer target: parse the input as an OpenAI request
 * body (chat, completions, embeddings; the first byte picks which) and, when
 * it validates, check the invariants the rest of the server relies on. Any
 * crash, leak or sanitizer report is a bug: bad bodies must become a 400
 * naming the field. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    api_error e;
    memset(&e, 0, sizeof e);
    switch (data[0] % 3) {
    case 0:
    case 1: {
        gen_request r;
        enum gen_kind k = data[0] % 3 == 0 ? GEN_CHAT : GEN_COMPLETION;
        if (request_parse_generation(k, body, len, 512, &r, &e) == 0) {
            if (r.n < 1 || r.n > GEN_MAX_N || r.n_stop > GEN_MAX_STOP) abort();
            if (k == GEN_CHAT && (!json_is_array(r.messages) || !json_array_size(r.messages))) abort();
            if (k == GEN_COMPLETION && (r.n_prompts < 1 || r.n_prompts > GEN_MAX_PROMPTS)) abort();
            for (int32_t i = 0; i < r.n_prompts; i++)
                for (int32_t t = 0; r.prompts[i].tokens && t < r.prompts[i].n_tokens; t++)
                    if (r.prompts[i].tokens[t] < 0 || r.prompts[i].tokens[t] >= 512) abort();
            for (int32_t i = 0; i < r.sp.n_bias; i++)
                if (r.sp.bias_ids[i] < 0 || r.sp.bias_ids[i] >= 512) abort();
            /* normalised messages must serialise (valid UTF-8 strings only) */
            if (r.messages) {
                char *s = json_dumps(r.messages, JSON_COMPACT);
                if (!s) abort();
                free(s);
            }
            gen_request_free(&r);
        } else if (e.status != 400 && e.status != 413) {
            abort();
        }
        break;
    }
    default: {
        embd_request r;
        if (request_parse_embeddings(body, len, 512, &r, &e) == 0) {
            if (r.n_inputs < 1) abort();
            embd_request_free(&r);
        } else if (e.status != 400 && e.status != 413) {
            abort();
        }
        break;
    }
    }
    /* the error envelope is always valid JSON */
    if (e.status) {
        char *s = api_error_json(&e, NULL);
        json_t *j = json_loads(s, 0, NULL);
        if (!j) abort();
        json_decref(j);
        free(s);
    }
    return 0;
}
