/* token_mask.c -- the vocabulary trie and the per-sequence matcher.
 *
 * The matcher keeps the current set of stacks. fill_mask ORs the accepted
 * sets of the current stack tops' tables (mask_tables.c) and runs only their
 * uncertain tokens (in trie order, reusing shared prefixes) on the real
 * stacks, so its cost is a few thousand word ORs plus the uncertain tokens. */
#include "grammar_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Portable popcount (the default x86-64 target has no POPCNT instruction
 * and the builtin becomes a library call). */
static inline int popcount32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}

/* Set bits in w[0..n): with the POPCNT instruction when the CPU has it
 * (the default x86-64 target does not assume it; the portable count was
 * 20k instructions per new state's 50k-token mask). */
__attribute__((target("popcnt"))) static int32_t count_bits_popcnt(const uint32_t *w, int32_t n) {
    int32_t c = 0, i = 0;
    for (; i + 2 <= n; i += 2) {
        uint64_t x;
        memcpy(&x, w + i, sizeof x);
        c += __builtin_popcountll(x);
    }
    for (; i < n; i++) c += __builtin_popcount(w[i]);
    return c;
}

/* CPU features this file dispatches on, probed once: bit 0 = POPCNT, bit 1
 * = AVX2 (a racing first call stores the same value). */
static int cpu_flags(void) {
    static int cached = -1;
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        __builtin_cpu_init();
        c = (__builtin_cpu_supports("popcnt") != 0) | (__builtin_cpu_supports("avx2") != 0) << 1;
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return c;
}

static int32_t count_bits(const uint32_t *w, int32_t n) {
    if (cpu_flags() & 1) return count_bits_popcnt(w, n);
    int32_t c = 0;
    for (int32_t i = 0; i < n; i++) c += popcount32(w[i]);
    return c;
}

/* dst |= src over n words (vectorised: the arrays never overlap). */
static void or_words(uint32_t *restrict dst, const uint32_t *restrict src, int32_t n) {
    for (int32_t i = 0; i < n; i++) dst[i] |= src[i];
}

/* logits[0..n) = -inf, four floats per store (SSE2 is in every x86-64;
 * the plain loop is not vectorised at -O2). */
static void fill_neg_inf(float *logits, int32_t n) {
    int32_t i = 0;
#if defined(__SSE2__)
    const __m128 ninf = _mm_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) {
        _mm_storeu_ps(logits + i, ninf);
        _mm_storeu_ps(logits + i + 4, ninf);
        _mm_storeu_ps(logits + i + 8, ninf);
        _mm_storeu_ps(logits + i + 12, ninf);
    }
#endif
    for (; i < n; i++) logits[i] = -INFINITY;
}

/* logits[k] = -inf where bit k of bits is clear, for k < 32. */
static void mask_word(float *logits, uint32_t bits) {
#if defined(__SSE2__)
    static const uint32_t lanes[16][4] __attribute__((aligned(16))) = {
        {0, 0, 0, 0}, {~0u, 0, 0, 0}, {0, ~0u, 0, 0}, {~0u, ~0u, 0, 0},
        {0, 0, ~0u, 0}, {~0u, 0, ~0u, 0}, {0, ~0u, ~0u, 0}, {~0u, ~0u, ~0u, 0},
        {0, 0, 0, ~0u}, {~0u, 0, 0, ~0u}, {0, ~0u, 0, ~0u}, {~0u, ~0u, 0, ~0u},
        {0, 0, ~0u, ~0u}, {~0u, 0, ~0u, ~0u}, {0, ~0u, ~0u, ~0u}, {~0u, ~0u, ~0u, ~0u}};
    const __m128 ninf = _mm_set1_ps(-INFINITY);
    for (int q = 0; q < 8; q++, bits >>= 4) {
        unsigned nib = bits & 15;
        if (nib == 15) continue;
        __m128 keep = _mm_load_ps((const float *)lanes[nib]);
        __m128 x = _mm_loadu_ps(logits + 4 * q);
        _mm_storeu_ps(logits + 4 * q, _mm_or_ps(_mm_and_ps(keep, x), _mm_andnot_ps(keep, ninf)));
    }
#else
    for (uint32_t z = ~bits; z; z &= z - 1) logits[__builtin_ctz(z)] = -INFINITY;
#endif
}


/* ---- vocabulary ---- */

/* Derived tables of levels up to this use a precomputed set of the
 * shorter tokens (a few KB each for a 50k vocabulary). */
#define VOCAB_SHORTER_MAX 24

static const grammar_vocab *sort_vocab;
static int cmp_tok(const void *a, const void *b) {
    const grammar_vocab *v = sort_vocab;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint16_t lx = v->len[x], ly = v->len[y];
    int c = memcmp(v->bytes + v->off[x], v->bytes + v->off[y], lx < ly ? lx : ly);
    if (c) return c;
    if (lx != ly) return lx < ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

void grammar_vocab_free(grammar_vocab *v) {
    if (!v) return;
    free(v->bytes); free(v->off); free(v->len); free(v->eog); free(v->sorted);
    free(v->tn_byte); free(v->tn_depth); free(v->tn_end); free(v->tn_first); free(v->tn_ntok);
    free(v->tn_maxlen); free(v->tn); free(v->rank); free(v->bylen); free(v->n_ge); free(v->shorter);
    free(v);
}

int32_t grammar_vocab_n_vocab(const grammar_vocab *v) { return v->n_vocab; }

grammar_vocab *grammar_vocab_create(const tokenizer *t) {
    static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;
    grammar_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->t = t;
    v->n_vocab = tokenizer_n_vocab(t);
    if (v->n_vocab <= 0) goto fail;
    v->n_words = (v->n_vocab + 31) / 32;
    v->off = malloc((size_t)v->n_vocab * sizeof *v->off);
    v->len = calloc((size_t)v->n_vocab, sizeof *v->len);
    v->eog = calloc((size_t)v->n_vocab, 1);
    v->sorted = malloc((size_t)v->n_vocab * sizeof *v->sorted);
    if (!v->off || !v->len || !v->eog || !v->sorted) goto fail;
    size_t cap = (size_t)v->n_vocab * 8 + 64, used = 0;
    v->bytes = malloc(cap);
    if (!v->bytes) goto fail;
    for (int32_t id = 0; id < v->n_vocab; id++) {
        v->eog[id] = (uint8_t)(tokenizer_is_eog(t, id) != 0);
        v->off[id] = (uint32_t)used;
        uint32_t attr = tokenizer_attr(t, id);
        if (v->eog[id] || (attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNUSED | TOK_ATTR_UNKNOWN))) continue;
        int64_t n = tokenizer_token_to_bytes(t, id, 0, NULL, 0);
        if (n <= 0 || n > 65535) continue;
        if (used + (size_t)n > cap) {
            while (used + (size_t)n > cap) cap *= 2;
            char *nb = realloc(v->bytes, cap);
            if (!nb) goto fail;
            v->bytes = nb;
        }
        tokenizer_token_to_bytes(t, id, 0, v->bytes + used, n);
        v->len[id] = (uint16_t)n;
        used += (size_t)n;
        v->sorted[v->n_sorted++] = id;
        if (n > v->max_len) v->max_len = (int32_t)n;
    }
    pthread_mutex_lock(&sort_lock);
    sort_vocab = v;
    qsort(v->sorted, (size_t)v->n_sorted, sizeof *v->sorted, cmp_tok);
    pthread_mutex_unlock(&sort_lock);
    /* trie: at most one node per token byte */
    size_t maxn = used + 1;
    v->tn_byte = malloc(maxn);
    v->tn_depth = malloc(maxn * sizeof *v->tn_depth);
    v->tn_end = malloc(maxn * sizeof *v->tn_end);
    v->tn_first = malloc(maxn * sizeof *v->tn_first);
    v->tn_ntok = calloc(maxn, sizeof *v->tn_ntok);
    int32_t *path = malloc(((size_t)v->max_len + 2) * sizeof *path);
    if (!v->tn_byte || !v->tn_depth || !v->tn_end || !v->tn_first || !v->tn_ntok || !path) { free(path); goto fail; }
    int32_t depth = 0; /* nodes on the current path */
    const char *prev = NULL;
    int32_t prevlen = 0;
    for (int32_t i = 0; i < v->n_sorted; i++) {
        int32_t id = v->sorted[i];
        const char *s = v->bytes + v->off[id];
        int32_t l = v->len[id], lcp = 0;
        while (prev && lcp < l && lcp < prevlen && s[lcp] == prev[lcp]) lcp++;
        while (depth > lcp) v->tn_end[path[--depth]] = v->n_nodes;
        for (int32_t d = lcp; d < l; d++) {
            int32_t k = v->n_nodes++;
            v->tn_byte[k] = (uint8_t)s[d];
            v->tn_depth[k] = (uint16_t)(d + 1);
            v->tn_first[k] = i;
            path[depth++] = k;
        }
        v->tn_ntok[path[l - 1]]++;
        prev = s;
        prevlen = l;
    }
    while (depth > 0) v->tn_end[path[--depth]] = v->n_nodes;
    free(path);
    /* for the length-aware tables: subtree maxima, ranks, tokens by length */
    v->tn_maxlen = calloc((size_t)v->n_nodes + 1, sizeof *v->tn_maxlen);
    v->rank = malloc((size_t)v->n_vocab * sizeof *v->rank);
    v->bylen = malloc(((size_t)v->n_sorted + 1) * sizeof *v->bylen);
    v->n_ge = calloc((size_t)v->max_len + 2, sizeof *v->n_ge);
    if (!v->tn_maxlen || !v->rank || !v->bylen || !v->n_ge) goto fail;
    for (int32_t k = v->n_nodes - 1; k >= 0; k--) {
        uint16_t mx = v->tn_ntok[k] ? v->tn_depth[k] : 0;
        for (int32_t c = k + 1; c < v->tn_end[k]; c = v->tn_end[c])
            if (v->tn_maxlen[c] > mx) mx = v->tn_maxlen[c];
        v->tn_maxlen[k] = mx;
    }
    v->tn = malloc(((size_t)v->n_nodes + 1) * sizeof *v->tn);
    if (!v->tn) goto fail;
    for (int32_t k = 0; k < v->n_nodes; k++)
        v->tn[k] = (gtnode){v->tn_byte[k], 0, v->tn_depth[k], v->tn_maxlen[k],
                            (uint16_t)(v->tn_ntok[k] < 65535 ? v->tn_ntok[k] : 65535), v->tn_end[k], v->tn_first[k],
                            v->tn_ntok[k] ? v->sorted[v->tn_first[k]] : v->n_words * 32, 0};
    for (int32_t id = 0; id < v->n_vocab; id++) v->rank[id] = -1;
    for (int32_t i = 0; i < v->n_sorted; i++) {
        v->rank[v->sorted[i]] = i;
        v->n_ge[v->len[v->sorted[i]]]++;
    }
    for (int32_t L = v->max_len; L >= 0; L--) v->n_ge[L] += v->n_ge[L + 1];
    {
        int32_t *at = calloc((size_t)v->max_len + 2, sizeof *at);
        if (!at) goto fail;
        for (int32_t i = 0; i < v->n_sorted; i++) {
            int32_t id = v->sorted[i], L = v->len[id];
            v->bylen[v->n_ge[L + 1] + at[L]++] = id;
        }
        free(at);
    }
    /* the sets of short tokens that derived tables keep from their base
     * (mask_tables.c): ANDed per word instead of clearing each long token */
    v->n_shorter = v->max_len < VOCAB_SHORTER_MAX ? v->max_len : VOCAB_SHORTER_MAX;
    if (v->n_shorter > 0) {
        v->shorter = calloc((size_t)v->n_shorter * (size_t)v->n_words, sizeof *v->shorter);
        if (!v->shorter) goto fail;
        for (int32_t k = 2; k < v->n_shorter + 2; k++) {
            uint32_t *b = v->shorter + (size_t)(k - 2) * (size_t)v->n_words;
            if (k > 2) memcpy(b, b - v->n_words, (size_t)v->n_words * sizeof *b);
            /* add the tokens of exactly k - 1 bytes: bylen[n_ge[k] .. n_ge[k - 1]) */
            for (int32_t i = v->n_ge[k]; i < v->n_ge[k - 1]; i++) b[v->bylen[i] >> 5] |= 1u << (v->bylen[i] & 31);
        }
    }
    return v;
fail:
    grammar_vocab_free(v);
    return NULL;
}

/* ---- matcher ---- */

struct grammar_matcher {
    grammar *g;
    const grammar_vocab *v;
    gmachine mach[2];
    int cur_m;
    gset cur;       /* stacks now, in mach[cur_m] */
    gset next;      /* scratch for accept */
    gset pong;      /* second scratch set for accept */
    int terminated;
    int failed;     /* OOM happened: everything is rejected */
    uint32_t *maskbuf; /* n_words, for apply */
    /* the shared state cache (state_cache.c) */
    int32_t state;  /* the current state's id, -1 when not cached */
    int stale;      /* cur/mach hold an earlier state's stacks: rebuild from state before use */
    int complete;   /* the current state holds a complete value */
    uint32_t *ser; uint32_t ser_cap; /* the current stacks written as words */
    uint32_t *span; uint32_t span_cap; /* per stack: offset and length in ser (canonical order) */
    float *saved;   /* allowed logits while apply fills the rest */
};

void grammar_matcher_free(grammar_matcher *m) {
    if (!m) return;
    grammar__machine_free(&m->mach[0]);
    grammar__machine_free(&m->mach[1]);
    free(m->cur.v); free(m->next.v);
    free(m->pong.v); free(m->maskbuf);
    free(m->ser); free(m->span); free(m->saved);
    grammar_release(m->g);
    free(m);
}

static int set_has_complete(const gset *s) {
    for (uint32_t i = 0; i < s->n; i++) if (s->v[i] == GNODE_COMPLETE) return 1;
    return 0;
}

static int grow_u32(uint32_t **p, uint32_t *cap, uint32_t need) {
    if (need <= *cap) return 0;
    uint32_t nc = *cap ? *cap : 256;
    while (nc < need) nc *= 2;
    uint32_t *np = realloc(*p, nc * sizeof *np);
    if (!np) return -1;
    *p = np;
    *cap = nc;
    return 0;
}

/* The stacks of cur as words (see grammar_internal.h), stacks sorted so
 * that equal sets write equal words. Returns the length, or 0 when the set
 * is too large to cache (or OOM). */
static uint32_t write_stacks(grammar_matcher *m) {
    const gmachine *mc = &m->mach[m->cur_m];
    uint32_t n = 0, ns = m->cur.n;
    if (ns > 256 || grow_u32(&m->span, &m->span_cap, 2 * ns)) return 0;
    for (uint32_t i = 0; i < ns; i++) {
        uint32_t x = m->cur.v[i], start = n;
        for (; x >= 2; x = mc->parent[x]) {
            if (n >= 4096 || grow_u32(&m->ser, &m->ser_cap, n + 2)) return 0;
            m->ser[n++] = mc->pos[x];
        }
        if (grow_u32(&m->ser, &m->ser_cap, n + 1)) return 0;
        m->ser[n++] = GSC_END + x;
        m->span[2 * i] = start;
        m->span[2 * i + 1] = n - start;
    }
    /* insertion sort of the spans by (length, words) */
    for (uint32_t i = 1; i < ns; i++) {
        uint32_t o = m->span[2 * i], l = m->span[2 * i + 1], j = i;
        while (j > 0) {
            uint32_t po = m->span[2 * (j - 1)], pl = m->span[2 * (j - 1) + 1];
            if (pl < l || (pl == l && memcmp(m->ser + po, m->ser + o, l * sizeof *m->ser) <= 0)) break;
            m->span[2 * j] = po;
            m->span[2 * j + 1] = pl;
            j--;
        }
        m->span[2 * j] = o;
        m->span[2 * j + 1] = l;
    }
    if (grow_u32(&m->ser, &m->ser_cap, 2 * n)) return 0;
    uint32_t k = n;
    for (uint32_t i = 0; i < ns; i++) {
        memcpy(m->ser + k, m->ser + m->span[2 * i], m->span[2 * i + 1] * sizeof *m->ser);
        k += m->span[2 * i + 1];
    }
    memmove(m->ser, m->ser + n, n * sizeof *m->ser);
    return n;
}

/* After the real stacks changed: look the new set up in (or add it to) the
 * grammar's state cache. */
static void note_state(grammar_matcher *m) {
    m->stale = 0;
    m->complete = set_has_complete(&m->cur);
    uint32_t n = m->failed ? 0 : write_stacks(m);
    m->state = n ? grammar__state_intern(m->g, m->ser, n, grammar__state_hash(m->ser, n), m->complete) : -1;
}

/* Rebuild the real stacks of the current state when they are stale. */
static int ensure_stacks(grammar_matcher *m) {
    if (!m->stale) return 0;
    uint32_t n = 0;
    if (grow_u32(&m->ser, &m->ser_cap, 2 * 4096 + 2) || grammar__state_stacks(m->g, m->state, m->ser, m->ser_cap, &n)) {
        m->failed = 1;
        return -1;
    }
    m->cur_m = 0;
    gmachine *mc = &m->mach[0];
    grammar__machine_clear(mc);
    m->cur.n = 0;
    for (uint32_t i = 0; i < n;) {
        uint32_t e = i;
        while (m->ser[e] < GSC_END) e++;
        uint32_t x = m->ser[e] - GSC_END;
        for (uint32_t k = e; k-- > i && x != UINT32_MAX;) x = grammar__machine_node(mc, m->ser[k], x);
        if (x == UINT32_MAX || grammar__set_push(&m->cur, x)) { m->failed = 1; return -1; }
        i = e + 1;
    }
    m->stale = 0;
    return 0;
}

void grammar_matcher_reset(grammar_matcher *m) {
    m->cur_m = 0;
    m->terminated = 0;
    grammar__machine_clear(&m->mach[0]);
    m->cur.n = 0;
    m->failed = grammar__machine_start(&m->mach[0], &m->cur) != 0 || m->mach[0].oom;
    note_state(m);
}

grammar_matcher *grammar_matcher_create(grammar *g, const grammar_vocab *v, int *rc) {
    int r = 0;
    if (v) {
        pthread_mutex_lock(&g->lock);
        r = grammar__bind_vocab(g, v);
        pthread_mutex_unlock(&g->lock);
    }
    if (r) { if (rc) *rc = r; return NULL; }
    grammar_matcher *m = calloc(1, sizeof *m);
    if (!m) { if (rc) *rc = GRAMMAR_ERR_NOMEM; return NULL; }
    grammar_retain(g);
    m->g = g;
    m->v = v;
    m->maskbuf = malloc((size_t)(v ? v->n_words : 1) * sizeof *m->maskbuf);
    m->saved = malloc(((size_t)(v ? v->n_words : 1) / 4 + 1) * sizeof *m->saved);
    if (!m->maskbuf || !m->saved || grammar__machine_init(&m->mach[0], g) || grammar__machine_init(&m->mach[1], g)) {
        grammar_matcher_free(m);
        if (rc) *rc = GRAMMAR_ERR_NOMEM;
        return NULL;
    }
    grammar_matcher_reset(m);
    if (m->failed) { grammar_matcher_free(m); if (rc) *rc = GRAMMAR_ERR_NOMEM; return NULL; }
    if (rc) *rc = 0;
    return m;
}

int grammar_matcher_is_complete(const grammar_matcher *m) { return !m->failed && m->complete; }
int grammar_matcher_is_terminated(const grammar_matcher *m) { return m->terminated; }

/* The mask computed from the real stacks (and stored with the state). */
static int32_t compute_mask(grammar_matcher *m, uint32_t *mask) {
    const grammar_vocab *v = m->v;
    memset(mask, 0, (size_t)v->n_words * sizeof *mask);
    if (ensure_stacks(m)) return 0;
    int complete = 0;
    for (uint32_t i = 0; i < m->cur.n; i++) {
        uint32_t x = m->cur.v[i];
        if (x < 2) { complete |= x == GNODE_COMPLETE; continue; }
        gpos_mask *pm = grammar__table_for_stack(m->g, v, &m->mach[m->cur_m], x);
        if (!pm) { m->failed = 1; memset(mask, 0, (size_t)v->n_words * sizeof *mask); return 0; }
        if (pm->accepted) or_words(mask + pm->w_lo, pm->accepted + pm->w_lo, pm->w_hi - pm->w_lo);
        else
            for (int32_t k = 0; k < pm->n_acc; k++) mask[pm->acc_ids[k] >> 5] |= 1u << (pm->acc_ids[k] & 31);
        if (pm->n_uncertain && grammar__check_uncertain(m->g, v, &m->mach[m->cur_m], x, pm, mask)) {
            m->failed = 1;
            memset(mask, 0, (size_t)v->n_words * sizeof *mask);
            return 0;
        }
    }
    if (complete)
        for (int32_t id = 0; id < v->n_vocab; id++)
            if (v->eog[id]) mask[id >> 5] |= 1u << (id & 31);
    int32_t count = count_bits(mask, v->n_words);
    if (m->state >= 0) grammar__state_set_mask(m->g, m->state, mask, v->n_words, count);
    return count;
}

int32_t grammar_matcher_fill_mask(grammar_matcher *m, uint32_t *mask) {
    const grammar_vocab *v = m->v;
    if (!v) return 0;
    if (m->terminated || m->failed) { memset(mask, 0, (size_t)v->n_words * sizeof *mask); return 0; }
    const uint32_t *bits = NULL;
    const int32_t *ids = NULL;
    int32_t count = m->state >= 0 ? grammar__state_mask(m->g, m->state, &bits, &ids) : -1;
    if (count < 0) return compute_mask(m, mask);
    if (bits) memcpy(mask, bits, (size_t)v->n_words * sizeof *mask);
    else {
        memset(mask, 0, (size_t)v->n_words * sizeof *mask);
        for (int32_t i = 0; i < count; i++) mask[ids[i] >> 5] |= 1u << (ids[i] & 31);
    }
    return count;
}

int32_t grammar_matcher_apply(grammar_matcher *m, float *logits) {
    const grammar_vocab *v = m->v;
    if (!v) return 0;
    const uint32_t *bits = NULL;
    const int32_t *ids = NULL;
    int32_t count = -1;
    if (!m->terminated && !m->failed && m->state >= 0) count = grammar__state_mask(m->g, m->state, &bits, &ids);
    if (count >= 0 && !bits) {
        /* a stored list of few tokens: keep their logits, mask everything, put them back */
        for (int32_t i = 0; i < count; i++) m->saved[i] = logits[ids[i]];
        fill_neg_inf(logits, v->n_vocab);
        for (int32_t i = 0; i < count; i++) logits[ids[i]] = m->saved[i];
        return count;
    }
    const uint32_t *buf = bits;
    if (count < 0) {
        count = grammar_matcher_fill_mask(m, m->maskbuf);
        buf = m->maskbuf;
    }
    int32_t w = 0;
    if (cpu_flags() & 2) { /* the whole words; the last, partial one below */
        w = v->n_vocab / 32;
        grammar__apply_bits_avx2(logits, buf, w);
    }
    for (; w < v->n_words; w++) {
        uint32_t bits = buf[w];
        if (bits == 0xFFFFFFFFu) continue;
        int32_t lo = w * 32, hi = lo + 32 < v->n_vocab ? lo + 32 : v->n_vocab;
        if (bits == 0 && hi - lo == 32) { /* the common case: a whole word masked */
            fill_neg_inf(logits + lo, 32);
            continue;
        }
        if (hi - lo == 32) { /* a mixed word: blend four lanes at a time */
            mask_word(logits + lo, bits);
            continue;
        }
        uint32_t z = ~bits & ((1u << (hi - lo)) - 1); /* the last, partial word */
        while (z) {
            logits[lo + __builtin_ctz(z)] = -INFINITY;
            z &= z - 1;
        }
    }
    return count;
}

/* Consume bytes into m->next; commit on success unless dry_run. */
static int advance(grammar_matcher *m, const unsigned char *s, size_t n, size_t *bad_at, int dry_run) {
    gmachine *mc = &m->mach[m->cur_m];
    uint32_t base = mc->n;
    gset *a = &m->next;
    /* ping-pong between m->next and m->pong */
    gset *in = &m->cur, *bufs[2] = {a, &m->pong};
    for (size_t i = 0; i < n; i++) {
        gset *out = bufs[i & 1];
        out->n = 0;
        int hit = 0;
        grammar__machine_begin(mc);
        if (grammar__machine_consume(mc, in, s[i], out, &hit) || mc->oom) { m->failed = 1; return GRAMMAR_ERR_NOMEM; }
        if (out->n == 0) {
            grammar__machine_rollback(mc, base);
            if (bad_at) *bad_at = i;
            return GRAMMAR_ERR_REJECTED;
        }
        in = out;
    }
    if (n == 0) return 0;
    if (dry_run) { grammar__machine_rollback(mc, base); return 0; }
    /* compact the new stacks into the other arena */
    int o = 1 - m->cur_m;
    if (grammar__machine_copy(&m->mach[o], mc, in, &m->cur)) { m->failed = 1; return GRAMMAR_ERR_NOMEM; }
    m->cur_m = o;
    return 0;
}

static int token_step(grammar_matcher *m, int32_t id, int dry_run) {
    const grammar_vocab *v = m->v;
    if (!v || m->terminated || m->failed || id < 0 || id >= v->n_vocab) return GRAMMAR_ERR_REJECTED;
    if (v->eog[id]) {
        if (!m->complete) return GRAMMAR_ERR_REJECTED;
        if (!dry_run) m->terminated = 1;
        return 0;
    }
    if (v->len[id] == 0) return GRAMMAR_ERR_REJECTED;
    int32_t prev = m->state;
    if (!dry_run && prev >= 0) {
        int32_t nx = grammar__state_next(m->g, prev, id);
        if (nx >= 0) {
            m->state = nx;
            m->stale = 1;
            m->complete = grammar__state_complete(m->g, nx);
            return 0;
        }
    }
    if (ensure_stacks(m)) return GRAMMAR_ERR_NOMEM;
    int rc = advance(m, (const unsigned char *)v->bytes + v->off[id], v->len[id], NULL, dry_run);
    if (rc || dry_run) return rc;
    note_state(m);
    if (prev >= 0 && m->state >= 0) grammar__state_set_next(m->g, prev, id, m->state);
    return 0;
}

int grammar_matcher_accept_token(grammar_matcher *m, int32_t id) { return token_step(m, id, 0); }

int grammar_matcher_token_allowed(grammar_matcher *m, int32_t id) { return token_step(m, id, 1) == 0; }

int grammar_matcher_accept_bytes(grammar_matcher *m, const char *bytes, size_t n, size_t *bad_at) {
    if (bad_at) *bad_at = 0;
    if (m->terminated || m->failed) return GRAMMAR_ERR_REJECTED;
    if (ensure_stacks(m)) return GRAMMAR_ERR_NOMEM;
    int rc = advance(m, (const unsigned char *)bytes, n, bad_at, 0);
    if (rc == 0 && n) note_state(m);
    return rc;
}
