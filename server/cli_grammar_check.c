/* cli_grammar_check.c -- `qkvd grammar-check`: tokenize a text with a
 * model's vocabulary and walk it through the structured-output mask engine
 * token by token, checking that the mask allows every token (and EOS at the
 * end). Prints `accepted` or `rejected at byte N` (exit 0 / 1; 2 for usage,
 * file and schema errors). For tests and debugging of schemas/grammars. */
#include "cli.h"
#include "gguf.h"
#include "grammar/grammar.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void gc_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd grammar-check -m MODEL.gguf (--schema FILE | --grammar FILE | --json-object) --text FILE\n"
            "  walks the text's tokens through the grammar's token masks;\n"
            "  prints 'accepted' (exit 0) or 'rejected at byte N' (exit 1); errors exit 2\n"
            "  --ws N        allow up to N whitespace bytes between JSON tokens (schemas; default 0)\n"
            "  --print-gbnf  print the GBNF a schema translates to and exit\n"
            "  -v            print compile time, token count and mean mask time to stderr\n");
}

/* Whole file, malloc'ed (NUL-terminated) and owned by the caller; NULL on error. */
static char *gc_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad || !buf) { free(buf); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

static double gc_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int cli_grammar_check(int argc, char **argv) {
    const char *model = NULL, *schema = NULL, *gbnf = NULL, *textf = NULL;
    int json_object = 0, print = 0, verbose = 0;
    grammar_options opt = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { gc_usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && more) model = argv[++i];
        else if (!strcmp(a, "--schema") && more) schema = argv[++i];
        else if (!strcmp(a, "--grammar") && more) gbnf = argv[++i];
        else if (!strcmp(a, "--text") && more) textf = argv[++i];
        else if (!strcmp(a, "--ws") && more) opt.ws_max = atoi(argv[++i]);
        else if (!strcmp(a, "--json-object")) json_object = 1;
        else if (!strcmp(a, "--print-gbnf")) print = 1;
        else if (!strcmp(a, "-v")) verbose = 1;
        else { fprintf(stderr, "qkvd grammar-check: unknown or incomplete option '%s'\n", a); gc_usage(stderr); return 2; }
    }
    if ((!!schema + !!gbnf + json_object) != 1) {
        fprintf(stderr, "qkvd grammar-check: need exactly one of --schema, --grammar, --json-object\n");
        gc_usage(stderr);
        return 2;
    }
    char err[512];
    size_t slen = 0;
    char *src = NULL;
    if (schema || gbnf) {
        src = gc_slurp(schema ? schema : gbnf, &slen);
        if (!src) { fprintf(stderr, "qkvd grammar-check: cannot read %s\n", schema ? schema : gbnf); return 2; }
    }
    if (print) {
        if (!schema) { fprintf(stderr, "qkvd grammar-check: --print-gbnf needs --schema\n"); free(src); return 2; }
        char *g = grammar_schema_to_gbnf(src, slen, &opt, err, sizeof err);
        free(src);
        if (!g) { fprintf(stderr, "qkvd grammar-check: %s\n", err); return 2; }
        fputs(g, stdout);
        free(g);
        return 0;
    }
    if (!model || !textf) {
        fprintf(stderr, "qkvd grammar-check: need -m MODEL and --text FILE\n");
        free(src);
        gc_usage(stderr);
        return 2;
    }
    int rc = 2;
    grammar *g = NULL;
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    grammar_vocab *v = NULL;
    grammar_matcher *m = NULL;
    int32_t *ids = NULL;
    uint32_t *mask = NULL;
    size_t tlen = 0;
    char *text = gc_slurp(textf, &tlen);
    if (!text) { fprintf(stderr, "qkvd grammar-check: cannot read %s\n", textf); goto done; }
    double t0 = gc_now();
    int crc = schema ? grammar_compile_schema(src, slen, &opt, &g, err, sizeof err)
              : gbnf ? grammar_compile_gbnf(src, slen, &g, err, sizeof err)
                     : grammar_compile_json_object(&opt, &g, err, sizeof err);
    double t_compile = gc_now() - t0;
    if (crc) { fprintf(stderr, "qkvd grammar-check: %s\n", err); goto done; }
    if (gguf_open(model, &f, err, sizeof err) != 0) { fprintf(stderr, "qkvd grammar-check: %s\n", err); goto done; }
    if (tokenizer_load(f, &t, err, sizeof err) != 0) { fprintf(stderr, "qkvd grammar-check: %s: %s\n", model, err); goto done; }
    v = grammar_vocab_create(t);
    if (!v) { fprintf(stderr, "qkvd grammar-check: out of memory\n"); goto done; }
    m = grammar_matcher_create(g, v, NULL);
    if (!m) { fprintf(stderr, "qkvd grammar-check: out of memory\n"); goto done; }
    int64_t n = tokenizer_encode(t, text, tlen, 0, 0, NULL, 0);
    ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
    int32_t nv = tokenizer_n_vocab(t);
    mask = malloc(((size_t)nv + 31) / 32 * sizeof *mask);
    if (n < 0 || !ids || !mask || tokenizer_encode(t, text, tlen, 0, 0, ids, n) != n) {
        fprintf(stderr, "qkvd grammar-check: tokenization failed\n");
        goto done;
    }
    /* SentencePiece vocabularies prepend a space to the first piece: when
     * the text does not start with one, that space is not checked. */
    int skip = tlen == 0 || text[0] != ' ';
    size_t off = 0;
    double t_mask = 0;
    int64_t n_mask = 0;
    char buf[1024];
    rc = 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t bl = tokenizer_token_to_bytes(t, ids[i], 0, buf, sizeof buf);
        if (bl < 0 || bl > (int64_t)sizeof buf) { fprintf(stderr, "qkvd grammar-check: token too long\n"); rc = 2; goto done; }
        if (i == 0 && skip && bl > 0 && buf[0] == ' ') {
            /* the prefix space is not part of the text: check the rest by bytes */
            size_t bad = 0;
            if (grammar_matcher_accept_bytes(m, buf + 1, (size_t)bl - 1, &bad)) { printf("rejected at byte %zu\n", bad); goto done; }
            off += (size_t)bl - 1;
            continue;
        }
        double a = gc_now();
        grammar_matcher_fill_mask(m, mask);
        t_mask += gc_now() - a;
        n_mask++;
        int allowed = (mask[ids[i] >> 5] >> (ids[i] & 31)) & 1;
        size_t bad = 0;
        if (!allowed || grammar_matcher_accept_token(m, ids[i])) {
            /* locate the first byte the grammar refuses */
            if (grammar_matcher_accept_bytes(m, buf, (size_t)bl, &bad) == 0) bad = 0;
            printf("rejected at byte %zu\n", off + bad);
            goto done;
        }
        off += (size_t)bl;
    }
    grammar_matcher_fill_mask(m, mask);
    int32_t eos = tokenizer_eos(t);
    int eos_ok = grammar_matcher_is_complete(m) && (eos < 0 || ((mask[eos >> 5] >> (eos & 31)) & 1));
    if (!eos_ok) { printf("rejected at byte %zu\n", tlen); goto done; }
    printf("accepted\n");
    rc = 0;
    if (verbose)
        fprintf(stderr, "compile %.3f ms, %lld tokens, mean mask %.1f us (first masks include the per-position precomputation)\n",
                t_compile * 1e3, (long long)n, n_mask ? t_mask / (double)n_mask * 1e6 : 0.0);
done:
    grammar_matcher_free(m);
    grammar_vocab_free(v);
    grammar_release(g);
    tokenizer_free(t);
    if (f) gguf_close(f);
    free(ids); free(mask); free(text); free(src);
    return rc;
}
