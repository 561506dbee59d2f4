/* token_mask.c -- vocabulary trie, per-position mask tables and the
 * per-sequence matcher.
 *
 * Per-position tables. For a BYTES element p, one pruned walk of the trie
 * runs the stack machine from the single stack (p, BOTTOM), BOTTOM standing
 * for whatever the real stack holds below. A token is
 *   accepted  if some path consumes all its bytes without needing to read
 *             past BOTTOM (it is then valid on top of any stack),
 *   rejected  if every path dies without reaching BOTTOM,
 *   uncertain otherwise: it must be checked against the real stack.
 * A subtree whose prefix is dead is skipped whole. At run time fill_mask ORs
 * the accepted bitsets of the current stack tops and runs only the
 * uncertain tokens (in trie order, reusing shared prefixes) on the real
 * stacks, so its cost is a few thousand word ORs plus the uncertain tokens.
 * The tables are computed on first use and kept in the grammar. */
#include "grammar_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keys of the mask tables: the top positions of a stack (key[0] the BYTES
 * element on top), a sentinel ending it if the stack ends there. */
#define KEY_MAX 6
#define KEY_SENT 0xFFFFFFF0u

typedef struct gdeep {
    uint32_t key[KEY_MAX];
    int32_t n;
    gpos_mask *pm;
} gdeep;

struct gdeep_map { gdeep *e; uint32_t cap, n; };

struct grammar_vocab {
    const tokenizer *t;
    int32_t n_vocab, n_words;
    char *bytes;        /* all token bytes back to back */
    uint32_t *off;      /* token id -> offset in bytes */
    uint16_t *len;      /* token id -> byte count (0: never allowed by a grammar) */
    uint8_t *eog;       /* token id -> ends generation */
    int32_t *sorted;    /* tokens with bytes, lexicographic */
    int32_t n_sorted;
    /* trie in preorder; depth = bytes from the root (1 for first bytes) */
    uint8_t *tn_byte;
    uint16_t *tn_depth;
    int32_t *tn_end;      /* preorder index just past the subtree */
    int32_t *tn_first;    /* sorted index of the first token in the subtree */
    int32_t *tn_ntok;     /* tokens ending exactly here: sorted[tn_first .. +tn_ntok) */
    int32_t n_nodes;
    int32_t max_len;
};

/* Portable popcount (the default x86-64 target has no POPCNT instruction
 * and the builtin becomes a library call). */
static inline int popcount32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}

/* dst |= src over n words (vectorised: the arrays never overlap). */
static void or_words(uint32_t *restrict dst, const uint32_t *restrict src, int32_t n) {
    for (int32_t i = 0; i < n; i++) dst[i] |= src[i];
}

/* ---- vocabulary ---- */

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
    return v;
fail:
    grammar_vocab_free(v);
    return NULL;
}

/* ---- per-position precomputation ---- */

typedef struct gprecomp {
    int32_t *state;   /* per depth: the DFA state after the trie path */
    uint8_t *ctx;     /* per depth: some path read past BOTTOM */
    int32_t depth_cap;
    int32_t *ubuf; int32_t ucap;
} gprecomp;

static void free_pm(gpos_mask *pm);

static void precomp_free(gprecomp *pc) {
    if (!pc) return;
    free(pc->state); free(pc->ctx); free(pc->ubuf);
    free(pc);
}

void grammar__mask_free(grammar *g) {
    if (g->pm)
        for (int32_t i = 0; i <= g->n_elems; i++) free_pm(g->pm[i]);
    if (g->deep) {
        for (uint32_t i = 0; i < g->deep->cap; i++) free_pm(g->deep->e[i].pm);
        free(g->deep->e);
        free(g->deep);
        g->deep = NULL;
    }
    precomp_free(g->pre);
    g->pre = NULL;
    grammar__dfa_free(g->dfa);
    g->dfa = NULL;
}

static int push_uncertain(gprecomp *pc, int32_t *n, int32_t id) {
    if (*n == pc->ucap) {
        int32_t nc = pc->ucap ? pc->ucap * 2 : 256;
        int32_t *nb = realloc(pc->ubuf, (size_t)nc * sizeof *nb);
        if (!nb) return -1;
        pc->ubuf = nb;
        pc->ucap = nc;
    }
    pc->ubuf[(*n)++] = id;
    return 0;
}

/* The frames below a frame of rule r that are statically known because
 * each rule on the way has one call site, then BOTTOM (or COMPLETE below a
 * root nobody calls). */
static uint32_t static_below(const grammar *g, gmachine *m, int32_t r) {
    uint32_t chain[64];
    int n = 0;
    uint32_t bottom = GNODE_BOTTOM;
    while (n < 64) {
        int32_t s = g->site[r];
        if (s == -2) { if (r == g->root) bottom = GNODE_COMPLETE; break; }
        if (s < 0) break;
        if (g->elems[s + 1].kind != GE_END) chain[n++] = (uint32_t)s + 1;
        r = g->elem_rule[s];
    }
    if (n == 64) { n = 0; bottom = GNODE_BOTTOM; }
    uint32_t x = bottom;
    while (n > 0 && x != UINT32_MAX) x = grammar__machine_node(m, chain[--n], x);
    return x;
}


/* The stack to precompute from: the key's frames, then the static frames. */
static uint32_t start_node(const grammar *g, gmachine *m, const uint32_t *key, int n) {
    uint32_t x;
    if (key[n - 1] >= KEY_SENT) { x = key[n - 1] - KEY_SENT; n--; }
    else x = static_below(g, m, g->elem_rule[key[n - 1]]);
    while (n > 0 && x != UINT32_MAX) x = grammar__machine_node(m, key[--n], x);
    return x;
}

/* The table of a key (under g->lock). NULL on OOM. */
static gpos_mask *precompute(grammar *g, const grammar_vocab *v, const uint32_t *key, int keylen) {
    gprecomp *pc = g->pre;
    if (!pc) {
        pc = calloc(1, sizeof *pc);
        if (!pc) return NULL;
        pc->depth_cap = v->max_len + 1;
        pc->state = calloc((size_t)pc->depth_cap, sizeof *pc->state);
        pc->ctx = calloc((size_t)pc->depth_cap, 1);
        if (!pc->state || !pc->ctx) { precomp_free(pc); return NULL; }
        g->pre = pc;
    }
    if (grammar__dfa_trim(&g->dfa, g)) return NULL;
    gdfa *dfa = g->dfa;
    gpos_mask *pm = calloc(1, sizeof *pm);
    if (!pm) return NULL;
    pm->accepted = calloc((size_t)v->n_words, sizeof *pm->accepted);
    if (!pm->accepted) { free(pm); return NULL; }
    int32_t s0 = grammar__dfa_state(dfa, start_node(g, &dfa->m, key, keylen));
    if (s0 < 0) goto oom;
    pc->state[0] = s0;
    pc->ctx[0] = 0;
    int32_t nu = 0;
    const uint8_t *tbyte = v->tn_byte;
    const uint16_t *tdepth = v->tn_depth;
    for (int32_t k = 0; k < v->n_nodes;) {
        int32_t d = tdepth[k];
        int32_t s = pc->state[d - 1];
        int ctx = pc->ctx[d - 1] | (dfa->flags[s] & GDFA_HAS_BOTTOM);
        int32_t t = grammar__dfa_step(dfa, s, tbyte[k]);
        if (t == GDFA_OOM) goto oom;
        if (t == GDFA_DEAD) {
            /* dead prefix: the whole subtree is rejected, or uncertain when a path left the frame */
            int32_t lo = v->tn_first[k];
            int32_t hi = v->tn_end[k] < v->n_nodes ? v->tn_first[v->tn_end[k]] : v->n_sorted;
            if (ctx)
                for (int32_t i = lo; i < hi; i++)
                    if (push_uncertain(pc, &nu, v->sorted[i])) goto oom;
            k = v->tn_end[k];
            continue;
        }
        pc->state[d] = t;
        pc->ctx[d] = (uint8_t)(ctx != 0);
        for (int32_t i = v->tn_first[k]; i < v->tn_first[k] + v->tn_ntok[k]; i++) {
            int32_t id = v->sorted[i];
            pm->accepted[id >> 5] |= 1u << (id & 31);
        }
        k++;
    }
    if (nu) {
        pm->uncertain = malloc((size_t)nu * sizeof *pm->uncertain);
        pm->ulcp = malloc((size_t)nu * sizeof *pm->ulcp);
        if (!pm->uncertain || !pm->ulcp) goto oom;
        for (int32_t i = 0; i < nu; i++) {
            int32_t id = pc->ubuf[i];
            pm->uncertain[i] = id;
            uint16_t l = 0;
            if (i) {
                int32_t pid = pc->ubuf[i - 1];
                const char *a = v->bytes + v->off[pid], *b = v->bytes + v->off[id];
                uint16_t la = v->len[pid], lb = v->len[id];
                while (l < la && l < lb && a[l] == b[l]) l++;
            }
            pm->ulcp[i] = l;
        }
    }
    pm->n_uncertain = nu;
    /* few accepted tokens: a list is cheaper to apply than a bitset */
    int32_t na = 0;
    pm->w_lo = v->n_words;
    pm->w_hi = 0;
    for (int32_t w = 0; w < v->n_words; w++)
        if (pm->accepted[w]) {
            na += popcount32(pm->accepted[w]);
            if (w < pm->w_lo) pm->w_lo = w;
            pm->w_hi = w + 1;
        }
    pm->n_acc = na;
    if (na <= 512) {
        pm->acc_ids = malloc((size_t)(na ? na : 1) * sizeof *pm->acc_ids);
        if (!pm->acc_ids) goto oom;
        int32_t k = 0;
        for (int32_t w = pm->w_lo; w < pm->w_hi; w++)
            for (uint32_t bits = pm->accepted[w]; bits; bits &= bits - 1) pm->acc_ids[k++] = w * 32 + __builtin_ctz(bits);
        free(pm->accepted);
        pm->accepted = NULL;
    }
    return pm;
oom:
    free(pm->accepted); free(pm->uncertain); free(pm->ulcp); free(pm->acc_ids); free(pm);
    return NULL;
}

static int bind_vocab(grammar *g, const grammar_vocab *v) {
    if (g->vocab && g->vocab != v) return GRAMMAR_ERR_VOCAB;
    g->vocab = v;
    return 0;
}

static gpos_mask *get_pm(grammar *g, const grammar_vocab *v, uint32_t p) {
    gpos_mask *pm = __atomic_load_n(&g->pm[p], __ATOMIC_ACQUIRE);
    if (pm) return pm;
    pthread_mutex_lock(&g->lock);
    pm = g->pm[p];
    if (!pm) {
        pm = precompute(g, v, &p, 1);
        if (pm) __atomic_store_n(&g->pm[p], pm, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g->lock);
    return pm;
}

/* Tables of deeper keys, for positions whose one-position table leaves too
 * many tokens to the run-time check (a rule called from many sites, e.g.
 * each step of a bounded repetition): the real frames below the top make
 * more tokens decidable in advance. Open addressing, under g->lock. */

static uint32_t key_hash(const uint32_t *k, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ull;
    return (uint32_t)(h ^ (h >> 32));
}

static gpos_mask *get_pm_deep(grammar *g, const grammar_vocab *v, const uint32_t *key, int n) {
    pthread_mutex_lock(&g->lock);
    struct gdeep_map *dm = g->deep;
    gpos_mask *pm = NULL;
    if (!dm) {
        dm = calloc(1, sizeof *dm);
        if (!dm) goto out;
        g->deep = dm;
    }
    if (dm->n * 2 >= dm->cap) {
        uint32_t nc = dm->cap ? dm->cap * 2 : 64;
        gdeep *ne = calloc(nc, sizeof *ne);
        if (!ne) goto out;
        for (uint32_t i = 0; i < dm->cap; i++) {
            if (!dm->e[i].pm) continue;
            uint32_t h = key_hash(dm->e[i].key, dm->e[i].n) & (nc - 1);
            while (ne[h].pm) h = (h + 1) & (nc - 1);
            ne[h] = dm->e[i];
        }
        free(dm->e);
        dm->e = ne;
        dm->cap = nc;
    }
    uint32_t h = key_hash(key, n) & (dm->cap - 1);
    while (dm->e[h].pm) {
        if (dm->e[h].n == n && !memcmp(dm->e[h].key, key, (size_t)n * sizeof *key)) { pm = dm->e[h].pm; goto out; }
        h = (h + 1) & (dm->cap - 1);
    }
    pm = precompute(g, v, key, n);
    if (pm) {
        memcpy(dm->e[h].key, key, (size_t)n * sizeof *key);
        dm->e[h].n = n;
        dm->e[h].pm = pm;
        dm->n++;
    }
out:
    pthread_mutex_unlock(&g->lock);
    return pm;
}

static void free_pm(gpos_mask *pm) {
    if (!pm) return;
    free(pm->accepted); free(pm->uncertain); free(pm->ulcp); free(pm->acc_ids); free(pm);
}

/* Uncertain tokens above which a deeper key is tried. */
#define DEEP_THRESHOLD 4096

/* The most specific useful table for the stack x of machine mc. */
static gpos_mask *get_pm_stack(grammar *g, const grammar_vocab *v, const gmachine *mc, uint32_t x) {
    gpos_mask *pm = get_pm(g, v, mc->pos[x]);
    if (!pm || pm->n_uncertain <= DEEP_THRESHOLD) return pm;
    uint32_t key[KEY_MAX];
    int n = 0;
    key[n++] = mc->pos[x];
    uint32_t y = mc->parent[x];
    while (n < KEY_MAX) {
        key[n++] = y < 2 ? KEY_SENT + y : mc->pos[y];
        gpos_mask *d = get_pm_deep(g, v, key, n);
        if (!d) return NULL;
        pm = d;
        if (pm->n_uncertain <= DEEP_THRESHOLD || y < 2) break;
        y = mc->parent[y];
    }
    return pm;
}

int grammar_precompute(grammar *g, const grammar_vocab *v) {
    pthread_mutex_lock(&g->lock);
    int rc = bind_vocab(g, v);
    pthread_mutex_unlock(&g->lock);
    if (rc) return rc;
    for (int32_t p = 0; p < g->n_elems; p++)
        if (g->elems[p].kind == GE_BYTES && !get_pm(g, v, (uint32_t)p)) return GRAMMAR_ERR_NOMEM;
    return 0;
}

/* ---- matcher ---- */

struct grammar_matcher {
    grammar *g;
    const grammar_vocab *v;
    gmachine mach[2];
    int cur_m;
    gset cur;       /* stacks now, in mach[cur_m] */
    gset next;      /* scratch for accept */
    gset *dsets;    /* per depth, token checks */
    uint32_t *dmark;
    int32_t depth_cap;
    int terminated;
    int failed;     /* OOM happened: everything is rejected */
    uint32_t *maskbuf; /* n_words, for apply */
};

void grammar_matcher_free(grammar_matcher *m) {
    if (!m) return;
    grammar__machine_free(&m->mach[0]);
    grammar__machine_free(&m->mach[1]);
    free(m->cur.v); free(m->next.v);
    if (m->dsets) for (int32_t d = 0; d < m->depth_cap; d++) free(m->dsets[d].v);
    free(m->dsets); free(m->dmark); free(m->maskbuf);
    grammar_release(m->g);
    free(m);
}

void grammar_matcher_reset(grammar_matcher *m) {
    m->cur_m = 0;
    m->terminated = 0;
    grammar__machine_clear(&m->mach[0]);
    m->cur.n = 0;
    m->failed = grammar__machine_start(&m->mach[0], &m->cur) != 0 || m->mach[0].oom;
}

grammar_matcher *grammar_matcher_create(grammar *g, const grammar_vocab *v, int *rc) {
    int r = 0;
    if (v) {
        pthread_mutex_lock(&g->lock);
        r = bind_vocab(g, v);
        pthread_mutex_unlock(&g->lock);
    }
    if (r) { if (rc) *rc = r; return NULL; }
    grammar_matcher *m = calloc(1, sizeof *m);
    if (!m) { if (rc) *rc = GRAMMAR_ERR_NOMEM; return NULL; }
    grammar_retain(g);
    m->g = g;
    m->v = v;
    m->depth_cap = v ? v->max_len + 1 : 1;
    m->dsets = calloc((size_t)m->depth_cap, sizeof *m->dsets);
    m->dmark = calloc((size_t)m->depth_cap, sizeof *m->dmark);
    m->maskbuf = malloc((size_t)(v ? v->n_words : 1) * sizeof *m->maskbuf);
    if (!m->dsets || !m->dmark || !m->maskbuf || grammar__machine_init(&m->mach[0], g) || grammar__machine_init(&m->mach[1], g)) {
        grammar_matcher_free(m);
        if (rc) *rc = GRAMMAR_ERR_NOMEM;
        return NULL;
    }
    grammar_matcher_reset(m);
    if (m->failed) { grammar_matcher_free(m); if (rc) *rc = GRAMMAR_ERR_NOMEM; return NULL; }
    if (rc) *rc = 0;
    return m;
}

static int set_has_complete(const gset *s) {
    for (uint32_t i = 0; i < s->n; i++) if (s->v[i] == GNODE_COMPLETE) return 1;
    return 0;
}

int grammar_matcher_is_complete(const grammar_matcher *m) { return !m->failed && set_has_complete(&m->cur); }
int grammar_matcher_is_terminated(const grammar_matcher *m) { return m->terminated; }

/* Run the uncertain tokens of one stack top x on the real stack. */
static int check_uncertain(grammar_matcher *m, uint32_t x, const gpos_mask *pm, uint32_t *mask) {
    gmachine *mc = &m->mach[m->cur_m];
    const grammar_vocab *v = m->v;
    uint32_t base = mc->n;
    m->dsets[0].n = 0;
    if (grammar__set_push(&m->dsets[0], x)) return -1;
    m->dmark[0] = base;
    int32_t have = 0; /* dsets[0..have] are valid for the previous token */
    for (int32_t i = 0; i < pm->n_uncertain; i++) {
        int32_t id = pm->uncertain[i];
        int32_t l = pm->ulcp[i] < have ? pm->ulcp[i] : have;
        if (mask[id >> 5] >> (id & 31) & 1) { have = l; continue; }
        if (m->dsets[l].n == 0) { have = l; continue; } /* a dead prefix */
        const unsigned char *s = (const unsigned char *)v->bytes + v->off[id];
        int32_t len = v->len[id], d = l;
        while (d < len) {
            grammar__machine_rollback(mc, m->dmark[d]);
            gset *out = &m->dsets[d + 1];
            out->n = 0;
            int hit = 0;
            grammar__machine_begin(mc);
            if (grammar__machine_consume(mc, &m->dsets[d], s[d], out, &hit) || mc->oom) return -1;
            d++;
            m->dmark[d] = mc->n;
            if (out->n == 0) break;
        }
        have = d;
        if (d == len && m->dsets[d].n) mask[id >> 5] |= 1u << (id & 31);
    }
    grammar__machine_rollback(mc, base);
    return 0;
}

int32_t grammar_matcher_fill_mask(grammar_matcher *m, uint32_t *mask) {
    const grammar_vocab *v = m->v;
    if (!v) return 0;
    memset(mask, 0, (size_t)v->n_words * sizeof *mask);
    if (m->terminated || m->failed) return 0;
    int complete = 0;
    for (uint32_t i = 0; i < m->cur.n; i++) {
        uint32_t x = m->cur.v[i];
        if (x < 2) { complete |= x == GNODE_COMPLETE; continue; }
        gpos_mask *pm = get_pm_stack(m->g, v, &m->mach[m->cur_m], x);
        if (!pm) { m->failed = 1; memset(mask, 0, (size_t)v->n_words * sizeof *mask); return 0; }
        if (pm->accepted) or_words(mask + pm->w_lo, pm->accepted + pm->w_lo, pm->w_hi - pm->w_lo);
        else
            for (int32_t k = 0; k < pm->n_acc; k++) mask[pm->acc_ids[k] >> 5] |= 1u << (pm->acc_ids[k] & 31);
        if (pm->n_uncertain && check_uncertain(m, x, pm, mask)) {
            m->failed = 1;
            memset(mask, 0, (size_t)v->n_words * sizeof *mask);
            return 0;
        }
    }
    if (complete)
        for (int32_t id = 0; id < v->n_vocab; id++)
            if (v->eog[id]) mask[id >> 5] |= 1u << (id & 31);
    int32_t count = 0;
    for (int32_t w = 0; w < v->n_words; w++) count += popcount32(mask[w]);
    return count;
}

int32_t grammar_matcher_apply(grammar_matcher *m, float *logits) {
    const grammar_vocab *v = m->v;
    if (!v) return 0;
    uint32_t *buf = m->maskbuf;
    int32_t count = grammar_matcher_fill_mask(m, buf);
    for (int32_t w = 0; w < v->n_words; w++) {
        uint32_t bits = buf[w];
        if (bits == 0xFFFFFFFFu) continue;
        int32_t lo = w * 32, hi = lo + 32 < v->n_vocab ? lo + 32 : v->n_vocab;
        if (bits == 0 && hi - lo == 32) { /* the common case: a whole word masked (vectorised) */
            for (int32_t k = 0; k < 32; k++) logits[lo + k] = -INFINITY;
            continue;
        }
        /* Only the disallowed tokens of a mixed word (inside strings most are allowed). */
        uint32_t z = ~bits;
        if (hi - lo < 32) z &= (1u << (hi - lo)) - 1;
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
    /* ping-pong between m->next and dsets[0] */
    gset *in = &m->cur, *bufs[2] = {a, &m->dsets[0]};
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
        if (!set_has_complete(&m->cur)) return GRAMMAR_ERR_REJECTED;
        if (!dry_run) m->terminated = 1;
        return 0;
    }
    if (v->len[id] == 0) return GRAMMAR_ERR_REJECTED;
    return advance(m, (const unsigned char *)v->bytes + v->off[id], v->len[id], NULL, dry_run);
}

int grammar_matcher_accept_token(grammar_matcher *m, int32_t id) { return token_step(m, id, 0); }

int grammar_matcher_token_allowed(grammar_matcher *m, int32_t id) { return token_step(m, id, 1) == 0; }

int grammar_matcher_accept_bytes(grammar_matcher *m, const char *bytes, size_t n, size_t *bad_at) {
    if (bad_at) *bad_at = 0;
    if (m->terminated || m->failed) return GRAMMAR_ERR_REJECTED;
    return advance(m, (const unsigned char *)bytes, n, bad_at, 0);
}
