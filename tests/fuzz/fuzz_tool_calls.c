/* fuzz_tool_calls.c -- libFuzzer target for the tool-call layer. The input
 * is "BODY\0TEXT": BODY is a chat request; when it validates with tools,
 * their call grammar is built for the family picked by TEXT's first byte
 * (full and lazy, one and many calls), compiled, and the fallback messages
 * are rendered. TEXT (model output) is fed to the family's parser in
 * chunks whose sizes come from the text itself. Invariants: a built grammar
 * compiles; the parser never reports more finished calls than started
 * ones; nothing crashes or leaks. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar.h"
#include "request.h"
#include "tool_calls.h"

static void ev_content(void *u, const char *s, size_t n) { (void)s; *(size_t *)u += n; }
static void ev_start(void *u, int32_t i, const char *name) { (void)i; *(size_t *)u += strlen(name); }
static void ev_args(void *u, int32_t i, const char *s, size_t n) { (void)i; (void)s; *(size_t *)u += n; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t blen = nul ? (size_t)(nul - data) : size;
    const char *text = nul ? (const char *)nul + 1 : "";
    size_t tlen = nul ? size - blen - 1 : 0;
    int family = tlen ? (unsigned char)text[0] % TOOL_N_FAMILIES : 0;
    const tool_syntax *sx = tool_syntax_get(family);

    gen_request r;
    api_error e;
    if (request_parse_generation(GEN_CHAT, (const char *)data, blen, 512, &r, &e) == 0) {
        if (r.tools) {
            for (int k = 0; k < 4; k++) {
                char err[256];
                int32_t bad = -1;
                char *g = tool_grammar_build(r.tools, k & 1 ? (r.tool_choice == GEN_TOOLS_NAMED ? r.tool_named : 0) : -1, sx,
                                             k & 2, k & 1, &bad, err, sizeof err);
                if (g) {
                    grammar *gr = NULL;
                    int rc = grammar_compile_gbnf(g, strlen(g), &gr, err, sizeof err);
                    /* Only size limits may refuse a grammar we generated. */
                    if (rc && rc != GRAMMAR_ERR_LIMIT && rc != GRAMMAR_ERR_NOMEM) abort();
                    grammar_release(gr);
                    free(g);
                } else if (bad < 0) {
                    abort();
                }
            }
            json_t *fb = tool_messages_fallback(r.messages, r.tools);
            if (!json_is_array(fb) || json_array_size(fb) < 1) abort();
            json_decref(fb);
        }
        gen_request_free(&r);
    }

    tool_parser p;
    tool_parser_init(&p, sx);
    tool_parser_ops ops = {ev_content, ev_start, ev_args};
    size_t seen = 0;
    for (size_t off = 0; off < tlen;) {
        size_t chunk = 1 + (unsigned char)text[off] % 7;
        if (chunk > tlen - off) chunk = tlen - off;
        tool_parser_feed(&p, text + off, chunk, &ops, &seen);
        off += chunk;
    }
    tool_parser_finish(&p, &ops, &seen);
    if (p.n_done > p.n_calls || seen > tlen + (size_t)p.n_calls * 72) abort();
    return 0;
}
