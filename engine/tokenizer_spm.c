/* tokenizer_spm.c -- SentencePiece-style tokenisation (tokenizer.ggml.model
 * = "llama"): spaces become U+2581, then adjacent symbols are merged, always
 * taking the pair whose concatenation is the vocabulary entry with the highest
 * score (leftmost on ties), until no pair is in the vocabulary. Whatever is
 * left that is not a token falls back to <0xXX> byte tokens, else <unk>. */
#include <stdlib.h>
#include <string.h>
#include "tokenizer_internal.h"

typedef struct sym {
    int32_t prev, next;
    uint32_t off, n;  /* bytes of the escaped text */
} sym;

/* Heap entries are one integer, (~order(score) << 32) | left: the smallest
 * is the best merge (highest score, then leftmost), and 8-byte entries keep
 * the heap of a long text cache-friendly. The right symbol is left's current
 * neighbour; an entry whose pair no longer scores the same is stale. (A stale
 * entry with an equal score has the same key as the fresh entry for the
 * current pair, so taking it merges the same pair at the same point.) */
static uint64_t score_key(float score, int32_t left) {
    uint32_t u;
    if (score == 0.0f) score = 0.0f; /* -0 and +0 tie, as floats compare */
    memcpy(&u, &score, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* ascending with the float */
    return ((uint64_t)~u << 32) | (uint32_t)left;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = l;
        if (l >= *n) break;
        if (l + 1 < *n && h[l + 1] < h[l]) m = l + 1;
        if (h[m] >= v) break;
        h[i] = h[m];
        i = m;
    }
    if (*n > 0) h[i] = v;
    return top;
}

/* Token id of the pair (l, l's neighbour r), or -1. */
static int32_t pair_id(const struct tokenizer *t, const char *text, const sym *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return -1;
    return tok__find(t, text + s[l].off, s[l].n + s[r].n);
}

static void try_pair(const struct tokenizer *t, const char *text, const sym *s, int32_t l, int32_t r,
                     uint64_t *h, size_t *hn) {
    int32_t id = pair_id(t, text, s, l, r);
    if (id >= 0) heap_push(h, hn, score_key(t->score[id], l));
}

static int is_space(const char *text, const sym *s) {
    const unsigned char *p = (const unsigned char *)text + s->off;
    return s->n == 3 && p[0] == 0xE2 && p[1] == 0x96 && p[2] == 0x81;
}

static void emit_bytes(const struct tokenizer *t, const char *p, uint32_t n, tok__out *out) {
    for (uint32_t j = 0; j < n; j++) {
        int32_t id = t->byte_id[(unsigned char)p[j]];
        if (id < 0) id = t->unk;
        if (id >= 0) tok__out_push(out, id);
    }
}

int tok__spm_encode(const struct tokenizer *t, const char *raw, size_t rawlen, tok__out *out) {
    if (rawlen == 0) return 0;
    /* Escape spaces: ' ' -> U+2581 (3 bytes). */
    size_t spaces = 0;
    for (size_t i = 0; i < rawlen; i++) spaces += raw[i] == ' ';
    size_t n = rawlen + 2 * spaces;
    if (n > UINT32_MAX / 4) return -2;
    char *text = malloc(n);
    sym *s = malloc(n * sizeof *s);
    uint64_t *h = malloc(3 * n * sizeof *h + sizeof *h);
    if (!text || !s || !h) { free(text); free(s); free(h); return -2; }
    size_t k = 0;
    for (size_t i = 0; i < rawlen; i++) {
        if (raw[i] == ' ') { text[k++] = (char)0xE2; text[k++] = (char)0x96; text[k++] = (char)0x81; }
        else text[k++] = raw[i];
    }

    /* One symbol per UTF-8 character (by lead byte, clipped at the end). */
    int32_t ns = 0;
    for (size_t off = 0; off < n;) {
        size_t l = (size_t)tok__utf8_len((unsigned char)text[off]);
        if (l > n - off) l = n - off;
        s[ns] = (sym){ns - 1, -1, (uint32_t)off, (uint32_t)l};
        if (ns > 0) s[ns - 1].next = ns;
        ns++;
        off += l;
    }

    /* Merge word by word when the vocabulary allows it (no token has U+2581
     * after another character, so no merge can cross a word start): the
     * result is the same as merging the whole text, and far faster. */
    int32_t start = 0;
    while (start < ns) {
        int32_t end = ns;
        if (t->spm_words) {
            for (int32_t i = start + 1; i < ns; i++) {
                if (is_space(text, &s[i]) && !is_space(text, &s[i - 1])) { end = i; break; }
            }
            s[start].prev = -1;
            s[end - 1].next = -1;
        }
        size_t hn = 0;
        for (int32_t i = start + 1; i < end; i++) try_pair(t, text, s, i - 1, i, h, &hn);
        while (hn > 0) {
            uint64_t e = heap_pop(h, &hn);
            int32_t li = (int32_t)(uint32_t)e;
            sym *L = &s[li];
            if (L->n == 0 || L->next < 0) continue;
            int32_t ri = L->next, id = pair_id(t, text, s, li, ri);
            if (id < 0 || score_key(t->score[id], li) != e) continue; /* stale */
            sym *R = &s[ri];
            L->n += R->n;
            R->n = 0;
            L->next = R->next;
            if (R->next >= 0) s[R->next].prev = li;
            try_pair(t, text, s, L->prev, li, h, &hn);
            try_pair(t, text, s, li, L->next, h, &hn);
        }
        for (int32_t i = start; i != -1; i = s[i].next) {
            int32_t id = tok__find(t, text + s[i].off, s[i].n);
            if (id >= 0) tok__out_push(out, id);
            else emit_bytes(t, text + s[i].off, s[i].n, out);
        }
        start = end;
    }
    free(text); free(s); free(h);
    return 0;
}
