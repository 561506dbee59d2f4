/* fuzz_grammar_common.h -- shared by fuzz_gbnf.c and fuzz_schema.c: drive a
 * compiled grammar with bytes and with tokens chosen from its masks. */
#ifndef FUZZ_GRAMMAR_COMMON_H
#define FUZZ_GRAMMAR_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "grammar/grammar.h"
#include "tokenizer.h"

static tokenizer *fuzz_tok;
static grammar_vocab *fuzz_vocab;
static int fuzz_loaded;

static void fuzz_load_vocab(void) {
    if (fuzz_loaded) return;
    fuzz_loaded = 1;
    const char *dir = getenv("QKVD_SHARED");
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", dir && *dir ? dir : "../shared");
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, sizeof err) != 0) return;
    if (tokenizer_load(f, &fuzz_tok, err, sizeof err) == 0) fuzz_vocab = grammar_vocab_create(fuzz_tok);
    gguf_close(f);
}

static void fuzz_grammar_exercise(grammar *g, const uint8_t *data, size_t size) {
    grammar_matcher *m = grammar_matcher_create(g, NULL, NULL);
    if (!m) return;
    size_t bad;
    grammar_matcher_accept_bytes(m, (const char *)data, size, &bad);
    for (size_t i = 0; i < size && i < 256; i++) grammar_matcher_accept_bytes(m, (const char *)data + i, 1, &bad);
    grammar_matcher_is_complete(m);
    grammar_matcher_free(m);

    fuzz_load_vocab();
    if (!fuzz_vocab) return;
    /* half the inputs build tables ahead (deep keys included), some within
     * a budget short enough to drop walks at the deadline */
    if (size && (data[0] & 1)) grammar_precompute_budget(g, fuzz_vocab, (data[0] & 2) ? 0.05 : 50.0);
    m = grammar_matcher_create(g, fuzz_vocab, NULL);
    if (!m) return;
    int32_t nv = grammar_vocab_n_vocab(fuzz_vocab);
    uint32_t *mask = malloc(((size_t)nv + 31) / 32 * sizeof *mask);
    float *logits = malloc((size_t)nv * sizeof *logits);
    for (size_t step = 0; mask && logits && step < 24; step++) {
        int32_t n = grammar_matcher_fill_mask(m, mask);
        if (n <= 0) break;
        for (int32_t t = 0; t < nv; t++) logits[t] = 0.0f;
        if (grammar_matcher_apply(m, logits) != n) abort();
        for (int32_t t = 0; t < nv; t++)
            if (((mask[t >> 5] >> (t & 31)) & 1) != (logits[t] == 0.0f)) abort();
        uint32_t pick = (uint32_t)(step < size ? data[step] : step) * 2654435761u % (uint32_t)n;
        int32_t id = -1;
        for (int32_t t = 0; t < nv; t++)
            if ((mask[t >> 5] >> (t & 31)) & 1) { if (pick-- == 0) { id = t; break; } }
        if (id < 0 || !grammar_matcher_token_allowed(m, id)) abort();
        if (grammar_matcher_accept_token(m, id) != 0) abort();
        if (grammar_matcher_is_terminated(m)) break;
    }
    free(mask);
    free(logits);
    grammar_matcher_free(m);
}

#endif
