/* bpe_train.c -- byte-level BPE training (see bpe_train.h).
 *
 * Classic BPE over a table of unique pre-tokenised words with counts:
 * repeatedly merge the most frequent adjacent symbol pair. To stay fast for
 * tens of thousands of merges, pair counts are kept incrementally: each pair
 * has a count and a posting list of the words that (may) contain it, and a
 * max-heap with lazy invalidation picks the next pair (a popped entry whose
 * count no longer matches is pushed back with the current count). Merging a
 * pair only rewrites the words on its posting list.
 *
 * Symbols are internal ids: 0..255 are raw bytes, 256.. are merge results.
 * Two different merges can produce the same byte string ("ab"+"c" and
 * "a"+"bc"); such a merge is recorded but reuses the existing symbol, so
 * token strings stay unique. */
#include "bpe_train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bookkeeping allocations: abort on OOM (sizes are bounded by the text). */
static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) { fprintf(stderr, "bpe_train: out of memory\n"); abort(); }
    return q;
}

#define VEC_PUSH(arr, n, cap, val) do { \
    if ((n) == (cap)) { (cap) = (cap) ? 2 * (cap) : 16; (arr) = xrealloc((arr), (cap) * sizeof *(arr)); } \
    (arr)[(n)++] = (val); } while (0)

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 1099511628211ull; }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

/* ---- GPT-2 byte alphabet --------------------------------------------- */

/* Bytes GPT-2 maps to themselves: '!'..'~', 0xA1..0xAC, 0xAE..0xFF. The rest
 * map to 256, 257, ... in increasing byte order. */
static int byte_is_direct(int b)
{
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

uint32_t bpe_byte_to_codepoint(uint8_t b)
{
    if (byte_is_direct(b)) return b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++) n += !byte_is_direct(i);
    return 256 + n;
}

/* GPT-2 token id of byte b: direct bytes first in byte order, then the rest. */
static int byte_token_id(int b)
{
    int id = 0;
    if (byte_is_direct(b)) {
        for (int i = 0; i < b; i++) id += byte_is_direct(i);
        return id;
    }
    for (int i = 0; i < 256; i++) id += byte_is_direct(i);
    for (int i = 0; i < b; i++) id += !byte_is_direct(i);
    return id;
}

static size_t utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* ---- pre-tokenisation: unique words with counts ----------------------- */

typedef struct word_tab {
    uint64_t cap, n;          /* open addressing over (ptr, len) */
    const char **ptr; uint32_t *len; int64_t *count;
} word_tab;

static void words_add(word_tab *t, const char *p, uint32_t len);

static void words_grow(word_tab *t)
{
    word_tab o = *t;
    t->cap = o.cap ? o.cap * 2 : 1 << 14;
    t->n = 0;
    t->ptr = xrealloc(NULL, t->cap * sizeof *t->ptr);
    t->len = xrealloc(NULL, t->cap * sizeof *t->len);
    t->count = xrealloc(NULL, t->cap * sizeof *t->count);
    memset(t->ptr, 0, t->cap * sizeof *t->ptr);
    for (uint64_t i = 0; i < o.cap; i++)
        if (o.ptr[i]) {
            words_add(t, o.ptr[i], o.len[i]);
            /* words_add counted 1; restore the real count */
            uint64_t h = hash_bytes(o.ptr[i], o.len[i]) & (t->cap - 1);
            while (t->ptr[h] != o.ptr[i]) h = (h + 1) & (t->cap - 1);
            t->count[h] = o.count[i];
        }
    free(o.ptr); free(o.len); free(o.count);
}

static void words_add(word_tab *t, const char *p, uint32_t len)
{
    if (len == 0) return;
    if (2 * (t->n + 1) > t->cap) words_grow(t);
    uint64_t h = hash_bytes(p, len) & (t->cap - 1);
    while (t->ptr[h]) {
        if (t->len[h] == len && memcmp(t->ptr[h], p, len) == 0) { t->count[h]++; return; }
        h = (h + 1) & (t->cap - 1);
    }
    t->ptr[h] = p; t->len[h] = len; t->count[h] = 1;
    t->n++;
}

enum { C_SPACE, C_LETTER, C_DIGIT, C_OTHER };

static int byte_class(uint8_t c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') return C_SPACE;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return C_LETTER;
    if (c >= '0' && c <= '9') return C_DIGIT;
    return C_OTHER;
}

/* An ASCII approximation of GPT-2's pre-tokenizer regex
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (bytes >= 0x80 count as letters). */
static void pretokenize(word_tab *t, const char *text, size_t n)
{
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (i < n) {
        if (s[i] == '\'' && i + 1 < n) {
            size_t k = 0;
            if (strchr("stmd", s[i + 1])) k = 2;
            else if (i + 2 < n && ((s[i + 1] == 'r' && s[i + 2] == 'e') || (s[i + 1] == 'v' && s[i + 2] == 'e') ||
                                   (s[i + 1] == 'l' && s[i + 2] == 'l'))) k = 3;
            if (k) { words_add(t, text + i, (uint32_t)k); i += k; continue; }
        }
        size_t j = i;
        if (s[i] == ' ' && i + 1 < n && byte_class(s[i + 1]) != C_SPACE) j = i + 1;
        int cls = byte_class(s[j]);
        if (cls == C_SPACE) {
            size_t k = i;
            while (k < n && byte_class(s[k]) == C_SPACE) k++;
            /* Leave the last whitespace byte for the next word when one follows. */
            if (k < n && k - i > 1) k--;
            words_add(t, text + i, (uint32_t)(k - i));
            i = k;
            continue;
        }
        size_t k = j + 1;
        while (k < n && byte_class(s[k]) == cls && k - i < 256) k++;
        words_add(t, text + i, (uint32_t)(k - i));
        i = k;
    }
}

/* ---- pair statistics -------------------------------------------------- */

typedef struct pair_ent {
    uint64_t key;            /* (a << 32) | b, 0 = empty slot (a pair 0,0 is key 1 << 63 bit set) */
    int64_t count;
    int32_t *post; uint32_t n_post, cap_post;
} pair_ent;

typedef struct heap_ent { int64_t count; uint64_t key; } heap_ent;

typedef struct trainer {
    /* symbols */
    uint32_t n_sym, cap_sym;
    uint32_t *sym_off, *sym_len;  /* byte expansion in `bytes` */
    char *bytes; size_t n_bytes, cap_bytes;
    uint64_t str_cap; int32_t *str_slot; /* byte string -> symbol id, -1 empty */
    /* words */
    uint32_t n_words;
    int32_t **wsym; uint32_t *wlen; int64_t *wcount; int64_t *wstamp;
    /* pairs */
    uint64_t pcap, pn;
    pair_ent *pairs;
    heap_ent *heap; size_t hn, hcap;
} trainer;

#define PAIR_KEY(a, b) ((((uint64_t)(uint32_t)(a)) << 32) | (uint32_t)(b) | (1ull << 63))
#define PAIR_A(k) ((int32_t)(((k) >> 32) & 0x7fffffff))
#define PAIR_B(k) ((int32_t)((k) & 0xffffffff))

static pair_ent *pair_get(trainer *T, uint64_t key, int create);

static void pairs_grow(trainer *T)
{
    pair_ent *old = T->pairs;
    uint64_t ocap = T->pcap;
    T->pcap = ocap ? ocap * 2 : 1 << 16;
    T->pairs = xrealloc(NULL, T->pcap * sizeof *T->pairs);
    memset(T->pairs, 0, T->pcap * sizeof *T->pairs);
    T->pn = 0;
    for (uint64_t i = 0; i < ocap; i++)
        if (old[i].key) {
            pair_ent *e = pair_get(T, old[i].key, 1);
            *e = old[i];
        }
    free(old);
}

static pair_ent *pair_get(trainer *T, uint64_t key, int create)
{
    if (create && 2 * (T->pn + 1) > T->pcap) pairs_grow(T);
    if (!T->pcap) return NULL;
    uint64_t h = hash_u64(key) & (T->pcap - 1);
    while (T->pairs[h].key) {
        if (T->pairs[h].key == key) return &T->pairs[h];
        h = (h + 1) & (T->pcap - 1);
    }
    if (!create) return NULL;
    T->pairs[h].key = key;
    T->pn++;
    return &T->pairs[h];
}

static int heap_less(const heap_ent *x, const heap_ent *y) /* x ranks below y */
{
    if (x->count != y->count) return x->count < y->count;
    return x->key > y->key; /* smaller key wins ties */
}

static void heap_push(trainer *T, int64_t count, uint64_t key)
{
    heap_ent e = { count, key };
    VEC_PUSH(T->heap, T->hn, T->hcap, e);
    size_t i = T->hn - 1;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&T->heap[p], &T->heap[i])) break;
        heap_ent t = T->heap[p]; T->heap[p] = T->heap[i]; T->heap[i] = t;
        i = p;
    }
}

static heap_ent heap_pop(trainer *T)
{
    heap_ent top = T->heap[0];
    T->heap[0] = T->heap[--T->hn];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < T->hn && heap_less(&T->heap[m], &T->heap[l])) m = l;
        if (r < T->hn && heap_less(&T->heap[m], &T->heap[r])) m = r;
        if (m == i) break;
        heap_ent t = T->heap[m]; T->heap[m] = T->heap[i]; T->heap[i] = t;
        i = m;
    }
    return top;
}

/* Add delta occurrences of pair (a,b) found in word w. */
static void pair_add(trainer *T, int32_t a, int32_t b, int64_t delta, int32_t w)
{
    uint64_t key = PAIR_KEY(a, b);
    pair_ent *e = pair_get(T, key, delta > 0);
    if (!e) return;
    e->count += delta;
    if (delta > 0) {
        if (e->n_post == 0 || e->post[e->n_post - 1] != w)
            VEC_PUSH(e->post, e->n_post, e->cap_post, w);
        heap_push(T, e->count, key);
    }
}

static void word_pairs(trainer *T, int32_t w, int sign)
{
    int32_t *s = T->wsym[w];
    for (uint32_t k = 0; k + 1 < T->wlen[w]; k++)
        pair_add(T, s[k], s[k + 1], sign * T->wcount[w], w);
}

/* ---- symbols ---------------------------------------------------------- */

static int32_t sym_find(trainer *T, const char *p, uint32_t len)
{
    uint64_t h = hash_bytes(p, len) & (T->str_cap - 1);
    while (T->str_slot[h] >= 0) {
        int32_t id = T->str_slot[h];
        if (T->sym_len[id] == len && memcmp(T->bytes + T->sym_off[id], p, len) == 0) return id;
        h = (h + 1) & (T->str_cap - 1);
    }
    return -1;
}

static void sym_index(trainer *T, int32_t id)
{
    uint64_t h = hash_bytes(T->bytes + T->sym_off[id], T->sym_len[id]) & (T->str_cap - 1);
    while (T->str_slot[h] >= 0) h = (h + 1) & (T->str_cap - 1);
    T->str_slot[h] = id;
}

static int32_t sym_add(trainer *T, const char *p, uint32_t len)
{
    if (T->n_sym == T->cap_sym) {
        T->cap_sym = T->cap_sym ? 2 * T->cap_sym : 1024;
        T->sym_off = xrealloc(T->sym_off, T->cap_sym * sizeof *T->sym_off);
        T->sym_len = xrealloc(T->sym_len, T->cap_sym * sizeof *T->sym_len);
    }
    if (T->n_bytes + len > T->cap_bytes) {
        while (T->n_bytes + len > T->cap_bytes) T->cap_bytes = T->cap_bytes ? 2 * T->cap_bytes : 1 << 16;
        T->bytes = xrealloc(T->bytes, T->cap_bytes);
    }
    /* p may point into T->bytes: copy before the arena moves is handled by
     * the caller building the string in a separate buffer. */
    memcpy(T->bytes + T->n_bytes, p, len);
    int32_t id = (int32_t)T->n_sym++;
    T->sym_off[id] = (uint32_t)T->n_bytes;
    T->sym_len[id] = len;
    T->n_bytes += len;
    sym_index(T, id);
    return id;
}

/* Token string (GPT-2 alphabet, NUL-terminated, malloc'd) of symbol id. */
static char *sym_string(const trainer *T, int32_t id)
{
    uint32_t len = T->sym_len[id];
    char *s = xrealloc(NULL, (size_t)len * 2 + 1); /* code points < 0x800: 2 bytes max */
    size_t o = 0;
    for (uint32_t i = 0; i < len; i++)
        o += utf8_put(s + o, bpe_byte_to_codepoint((uint8_t)T->bytes[T->sym_off[id] + i]));
    s[o] = 0;
    return s;
}

static void trainer_free(trainer *T)
{
    free(T->sym_off); free(T->sym_len); free(T->bytes); free(T->str_slot);
    for (uint32_t w = 0; w < T->n_words; w++) free(T->wsym[w]);
    free(T->wsym); free(T->wlen); free(T->wcount); free(T->wstamp);
    for (uint64_t i = 0; i < T->pcap; i++) free(T->pairs[i].post);
    free(T->pairs); free(T->heap);
}

/* A unique word of the text: where it first occurs, its length and count. */
typedef struct wrec { const char *p; uint32_t len; int64_t count; } wrec;

static int cmp_rec(const void *x, const void *y)
{
    const wrec *a = x, *b = y;
    return a->p < b->p ? -1 : a->p > b->p;
}

void bpe_vocab_free(bpe_vocab *v)
{
    if (!v) return;
    if (v->tokens) for (int32_t i = 0; i < v->n_tokens; i++) free(v->tokens[i]);
    if (v->merges) for (int64_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens); free(v->token_types); free(v->merges);
    memset(v, 0, sizeof *v);
}

int bpe_train_learn(const char *text, size_t len, int32_t vocab_size, bpe_vocab *out,
                    char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (vocab_size < 257) {
        snprintf(err, errlen, "vocabulary size %d is too small: byte-level BPE needs at least "
                 "257 tokens (256 bytes + <|endoftext|>)", vocab_size);
        return -1;
    }
    if (vocab_size > (1 << 24)) {
        snprintf(err, errlen, "vocabulary size %d is too large (max %d)", vocab_size, 1 << 24);
        return -1;
    }
    trainer T;
    memset(&T, 0, sizeof T);
    T.str_cap = 1;
    while (T.str_cap < 4 * (uint64_t)vocab_size) T.str_cap <<= 1;
    T.str_slot = xrealloc(NULL, T.str_cap * sizeof *T.str_slot);
    memset(T.str_slot, 0xff, T.str_cap * sizeof *T.str_slot);
    for (int b = 0; b < 256; b++) { char c = (char)b; sym_add(&T, &c, 1); }

    word_tab wt;
    memset(&wt, 0, sizeof wt);
    pretokenize(&wt, text, len);
    /* Words in a fixed order (by first byte position in the text) so the
     * result does not depend on hash table layout. */
    T.wsym = xrealloc(NULL, (wt.n ? wt.n : 1) * sizeof *T.wsym);
    T.wlen = xrealloc(NULL, (wt.n ? wt.n : 1) * sizeof *T.wlen);
    T.wcount = xrealloc(NULL, (wt.n ? wt.n : 1) * sizeof *T.wcount);
    T.wstamp = xrealloc(NULL, (wt.n ? wt.n : 1) * sizeof *T.wstamp);
    {
        wrec *recs = xrealloc(NULL, (wt.n ? wt.n : 1) * sizeof *recs);
        uint64_t nr = 0;
        for (uint64_t i = 0; i < wt.cap; i++)
            if (wt.ptr[i]) recs[nr++] = (wrec){ wt.ptr[i], wt.len[i], wt.count[i] };
        qsort(recs, nr, sizeof *recs, cmp_rec);
        for (uint64_t i = 0; i < nr; i++) {
            T.wsym[i] = xrealloc(NULL, recs[i].len * sizeof **T.wsym);
            for (uint32_t k = 0; k < recs[i].len; k++) T.wsym[i][k] = (uint8_t)recs[i].p[k];
            T.wlen[i] = recs[i].len;
            T.wcount[i] = recs[i].count;
            T.wstamp[i] = -1;
        }
        T.n_words = (uint32_t)nr;
        free(recs);
    }
    free(wt.ptr); free(wt.len); free(wt.count);

    for (uint32_t w = 0; w < T.n_words; w++) word_pairs(&T, (int32_t)w, +1);

    /* Merge until vocab_size - 1 tokens exist (the last id is <|endoftext|>). */
    int64_t cap_merges = 0;
    int64_t n_merges = 0;
    int32_t *merge_a = NULL, *merge_b = NULL;
    int64_t cap_b = 0, nb = 0;
    char *tmp = NULL;
    size_t tmp_cap = 0;
    int32_t *posts = NULL;
    size_t posts_cap = 0;
    while ((int32_t)T.n_sym < vocab_size - 1 && T.hn > 0) {
        heap_ent top = heap_pop(&T);
        pair_ent *e = pair_get(&T, top.key, 0);
        if (!e || e->count <= 0) continue;
        if (e->count != top.count) { heap_push(&T, e->count, top.key); continue; }
        int32_t a = PAIR_A(top.key), b = PAIR_B(top.key);
        uint32_t la = T.sym_len[a], lb = T.sym_len[b];
        if (la + lb > tmp_cap) { tmp_cap = (la + lb) * 2; tmp = xrealloc(tmp, tmp_cap); }
        memcpy(tmp, T.bytes + T.sym_off[a], la);
        memcpy(tmp + la, T.bytes + T.sym_off[b], lb);
        int32_t c = sym_find(&T, tmp, la + lb);
        if (c < 0) c = sym_add(&T, tmp, la + lb);
        VEC_PUSH(merge_a, n_merges, cap_merges, a);
        VEC_PUSH(merge_b, nb, cap_b, b);
        /* Copy the posting list: rewriting words adds pairs and may move e. */
        uint32_t np = e->n_post;
        if (np > posts_cap) { posts_cap = np; posts = xrealloc(posts, posts_cap * sizeof *posts); }
        memcpy(posts, e->post, np * sizeof *posts);
        for (uint32_t pi = 0; pi < np; pi++) {
            int32_t w = posts[pi];
            if (T.wstamp[w] == n_merges) continue;
            T.wstamp[w] = n_merges;
            int32_t *s = T.wsym[w];
            uint32_t L = T.wlen[w], k;
            for (k = 0; k + 1 < L; k++) if (s[k] == a && s[k + 1] == b) break;
            if (k + 1 >= L) continue;
            word_pairs(&T, w, -1);
            uint32_t o = 0;
            for (k = 0; k < L; k++) {
                if (k + 1 < L && s[k] == a && s[k + 1] == b) { s[o++] = c; k++; }
                else s[o++] = s[k];
            }
            T.wlen[w] = o;
            word_pairs(&T, w, +1);
        }
        e = pair_get(&T, top.key, 0);
        if (e) { free(e->post); e->post = NULL; e->n_post = e->cap_post = 0; }
    }
    free(tmp);
    free(posts);

    /* Assemble the vocabulary in GPT-2's id layout. */
    int32_t n_learned = (int32_t)T.n_sym - 256;
    out->n_tokens = vocab_size;
    out->n_learned = n_learned;
    out->n_padding = vocab_size - 1 - (int32_t)T.n_sym;
    out->eos_id = vocab_size - 1;
    out->tokens = xrealloc(NULL, (size_t)vocab_size * sizeof *out->tokens);
    out->token_types = xrealloc(NULL, (size_t)vocab_size * sizeof *out->token_types);
    int32_t *final_id = xrealloc(NULL, T.n_sym * sizeof *final_id);
    for (int b = 0; b < 256; b++) final_id[b] = byte_token_id(b);
    for (uint32_t s = 256; s < T.n_sym; s++) final_id[s] = (int32_t)s;
    for (uint32_t s = 0; s < T.n_sym; s++) {
        out->tokens[final_id[s]] = sym_string(&T, (int32_t)s);
        out->token_types[final_id[s]] = 1;
    }
    for (int32_t i = (int32_t)T.n_sym; i < vocab_size - 1; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "<|unused_%d|>", i - (int32_t)T.n_sym);
        out->tokens[i] = xrealloc(NULL, strlen(buf) + 1);
        strcpy(out->tokens[i], buf);
        out->token_types[i] = 5;
    }
    out->tokens[vocab_size - 1] = xrealloc(NULL, 14);
    strcpy(out->tokens[vocab_size - 1], "<|endoftext|>");
    out->token_types[vocab_size - 1] = 3;
    out->n_merges = n_merges;
    out->merges = xrealloc(NULL, (size_t)(n_merges ? n_merges : 1) * sizeof *out->merges);
    for (int64_t m = 0; m < n_merges; m++) {
        const char *l = out->tokens[final_id[merge_a[m]]], *r = out->tokens[final_id[merge_b[m]]];
        size_t ll = strlen(l), lr = strlen(r);
        char *s = xrealloc(NULL, ll + lr + 2);
        memcpy(s, l, ll); s[ll] = ' '; memcpy(s + ll + 1, r, lr + 1);
        out->merges[m] = s;
    }
    free(final_id);
    free(merge_a); free(merge_b);
    trainer_free(&T);
    return 0;
}
