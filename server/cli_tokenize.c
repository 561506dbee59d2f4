/* cli_tokenize.c -- `qkvd tokenize`: the token ids of a text under a model's
 * tokenizer (no weights are loaded), to check prompts and tokenizer support. */
#include "cli.h"
#include "gguf.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void tokenize_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd tokenize -m MODEL.gguf (-p TEXT | -f TEXTFILE) [--special] [--pieces]\n"
            "  prints the token ids space-separated on one line\n"
            "  --special  add BOS/EOS as the model's metadata says and parse special tokens\n"
            "  --pieces   print one \"id 'text'\" line per token instead\n");
}

/* Whole file, malloc'ed and owned by the caller; NULL on error. */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return NULL; }
    *len = n;
    return buf;
}

/* Print text quoted: printable characters as they are, escapes for quotes,
 * control characters and bytes that are not valid UTF-8 on their own. */
static void print_quoted(const char *s, int64_t n) {
    putchar('\'');
    for (int64_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') { fputs("\\n", stdout); i++; continue; }
        if (c == '\t') { fputs("\\t", stdout); i++; continue; }
        if (c == '\r') { fputs("\\r", stdout); i++; continue; }
        if (c == '\\' || c == '\'') { printf("\\%c", c); i++; continue; }
        if (c >= 0x20 && c < 0x7F) { putchar(c); i++; continue; }
        int l = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
        int ok = l > 0 && i + l <= n;
        for (int k = 1; ok && k < l; k++) ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
        if (ok) { fwrite(s + i, 1, (size_t)l, stdout); i += l; continue; }
        printf("\\x%02x", c);
        i++;
    }
    putchar('\'');
}

int cli_tokenize(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL;
    int special = 0, pieces = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { tokenize_usage(stdout); return 0; }
        else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && more) model = argv[++i];
        else if ((!strcmp(a, "-p") || !strcmp(a, "--prompt")) && more) prompt = argv[++i];
        else if ((!strcmp(a, "-f") || !strcmp(a, "--file")) && more) file = argv[++i];
        else if (!strcmp(a, "--special")) special = 1;
        else if (!strcmp(a, "--pieces")) pieces = 1;
        else {
            fprintf(stderr, "qkvd tokenize: unknown or incomplete option '%s'\n", a);
            tokenize_usage(stderr);
            return 1;
        }
    }
    if (!model || (!prompt == !file)) {
        fprintf(stderr, "qkvd tokenize: need -m MODEL and exactly one of -p TEXT / -f FILE\n");
        tokenize_usage(stderr);
        return 1;
    }

    char *text = NULL;
    size_t len;
    if (file) {
        text = slurp(file, &len);
        if (!text) {
            fprintf(stderr, "qkvd tokenize: cannot read %s\n", file);
            return 1;
        }
    } else {
        len = strlen(prompt);
    }

    char err[512];
    gguf_file *f = NULL;
    tokenizer *t = NULL;
    int32_t *ids = NULL;
    int rc = 1;
    if (gguf_open(model, &f, err, sizeof err) != 0) {
        fprintf(stderr, "qkvd tokenize: %s\n", err); /* names the file */
        goto done;
    }
    if (tokenizer_load(f, &t, err, sizeof err) != 0) {
        fprintf(stderr, "qkvd tokenize: %s: %s\n", model, err);
        goto done;
    }
    const char *src = file ? text : prompt;
    int64_t n = tokenizer_encode(t, src, len, special, special, NULL, 0);
    if (n < 0) {
        fprintf(stderr, "qkvd tokenize: encoding failed (out of memory)\n");
        goto done;
    }
    ids = malloc((size_t)(n ? n : 1) * sizeof *ids);
    if (!ids || tokenizer_encode(t, src, len, special, special, ids, n) != n) {
        fprintf(stderr, "qkvd tokenize: out of memory for %lld tokens\n", (long long)n);
        goto done;
    }
    if (pieces) {
        char *buf = malloc((size_t)tokenizer_max_token_bytes(t) + 1);
        if (!buf) goto done;
        for (int64_t i = 0; i < n; i++) {
            int64_t k = tokenizer_token_to_bytes(t, ids[i], 1, buf, tokenizer_max_token_bytes(t));
            printf("%d ", ids[i]);
            print_quoted(buf, k);
            putchar('\n');
        }
        free(buf);
    } else {
        for (int64_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(ids);
    tokenizer_free(t);
    gguf_close(f);
    free(text);
    return rc;
}
