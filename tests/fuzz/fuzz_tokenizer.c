/* fuzz_tokenizer.c -- libFuzzer target: arbitrary bytes through the SPM and
 * byte-level BPE tokenizers (encode with and without special-token parsing,
 * whole-sequence decode, streaming decode). Nothing may crash, read out of
 * bounds or leak; encode must report a count it can reproduce.
 *
 * Vocabularies: ggml-vocab-gpt-2.gguf and ggml-vocab-llama-spm.gguf from
 * $QKVD_SHARED/vocab (default ../shared); when absent, tiny vocabularies are
 * built with the GGUF writer so the target still runs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"

static tokenizer *toks[2];

static tokenizer *load_path(const char *path) {
    char err[256];
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, sizeof err) != 0) return NULL;
    tokenizer *t = NULL;
    if (tokenizer_load(f, &t, err, sizeof err) != 0) t = NULL;
    gguf_close(f);
    return t;
}

/* A small vocabulary of the given model with bytes, a few merges and
 * special tokens, written to /tmp and loaded back. */
static tokenizer *load_tiny(const char *model) {
    static char pieces[300][16];
    const char *toks_arr[300];
    int32_t types[300];
    float scores[300];
    int n = 0;
    const char *specials[] = {"<unk>", "<s>", "</s>", "<|endoftext|>"};
    for (int i = 0; i < 4; i++) { snprintf(pieces[n], 16, "%s", specials[i]); types[n] = i ? 3 : 2; n++; }
    for (int b = 0; b < 256; b++) {
        if (!strcmp(model, "llama")) {
            snprintf(pieces[n], 16, "<0x%02X>", b);
            types[n] = 6;
        } else {
            /* GPT-2 byte-to-unicode */
            int pr = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            unsigned cp = (unsigned)b;
            if (!pr) {
                unsigned k = 0;
                for (int c = 0; c < b; c++)
                    if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE))) k++;
                cp = 256 + k;
            }
            if (cp < 0x80) { pieces[n][0] = (char)cp; pieces[n][1] = 0; }
            else { pieces[n][0] = (char)(0xC0 | (cp >> 6)); pieces[n][1] = (char)(0x80 | (cp & 0x3F)); pieces[n][2] = 0; }
            types[n] = 1;
        }
        n++;
    }
    const char *extra[] = {"he", "ll", "hell", "hello", "\xe2\x96\x81" "h", "\xc4\xa0" "h"};
    for (int i = 0; i < 6; i++) { snprintf(pieces[n], 16, "%s", extra[i]); types[n] = 1; n++; }
    for (int i = 0; i < n; i++) { toks_arr[i] = pieces[i]; scores[i] = -(float)i; }
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 h"};
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "tokenizer.ggml.model", model);
    if (strcmp(model, "llama")) gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks_arr, NULL, (uint64_t)n);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n);
    gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", scores, (uint64_t)n);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 5);
    char path[128], err[256];
    snprintf(path, sizeof path, "/tmp/qkvd-fuzz-tok-%s-%d.gguf", model, (int)getpid());
    tokenizer *t = NULL;
    if (gguf_writer_write(w, path, err, sizeof err) == 0) t = load_path(path);
    unlink(path);
    gguf_writer_free(w);
    return t;
}

static void setup(void) {
    const char *sh = getenv("QKVD_SHARED");
    if (!sh || !*sh) sh = "../shared";
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-gpt-2.gguf", sh);
    toks[0] = load_path(path);
    if (!toks[0]) toks[0] = load_tiny("gpt2");
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", sh);
    toks[1] = load_path(path);
    if (!toks[1]) toks[1] = load_tiny("llama");
    if (!toks[0] || !toks[1]) {
        fprintf(stderr, "fuzz_tokenizer: cannot load or build the vocabularies\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) { setup(); ready = 1; }
    if (size > 1 << 16) return 0;
    const char *text = (const char *)data;
    /* SPM byte fallback: a space becomes U+2581, i.e. up to 3 byte tokens. */
    int64_t cap = (int64_t)size * 3 + 8;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    char *out = malloc(size * 8 + 4096);
    if (!ids || !out) { free(ids); free(out); return 0; }
    for (int k = 0; k < 2; k++) {
        const tokenizer *t = toks[k];
        for (int ps = 0; ps <= 1; ps++) {
            int64_t n = tokenizer_encode(t, text, size, ps, ps, ids, cap);
            if (n < 0) continue;
            if (n > cap) abort();
            for (int64_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= tokenizer_n_vocab(t)) abort();
            int64_t m = tokenizer_decode(t, ids, n, ps, out, (int64_t)size * 8 + 4096);
            if (m < 0) abort();
            /* Byte-level BPE represents every byte: without special tokens
             * the text comes back exactly, invalid UTF-8 as U+FFFD. */
            if (k == 0 && !ps) {
                char *want = malloc(size * 3 + 1);
                if (!want) abort();
                size_t wl = tok__utf8_sanitize(text, size, want);
                if ((size_t)m != wl || memcmp(out, want, wl) != 0) abort();
                free(want);
            }
            tok_stream st;
            tok_stream_init(&st, t, 1);
            int64_t total = 0;
            char piece[4096];
            for (int64_t i = 0; i < n; i++) {
                int64_t w = tok_stream_push(&st, t, ids[i], ps, piece, sizeof piece);
                if (w < 0 || w > (int64_t)sizeof piece) abort();
                total += w;
            }
            total += tok_stream_flush(&st, piece, sizeof piece);
            (void)total;
            for (int64_t i = 0; i < n; i++) {
                size_t pl;
                if (!tokenizer_piece(t, ids[i], &pl)) abort();
            }
        }
    }
    free(ids);
    free(out);
    return 0;
}
