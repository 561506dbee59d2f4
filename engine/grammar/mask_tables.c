/* mask_tables.c -- per-position mask tables, built lazily and kept in the
 * grammar.
 *
 * For a BYTES element p, one pruned walk of the vocabulary trie runs the
 * grammar from the single stack (p, static frames, BOTTOM), BOTTOM standing
 * for whatever the real stack holds below. A token is
 *   accepted  if some path consumes all its bytes without needing to read
 *             past BOTTOM (it is then valid on top of any stack),
 *   rejected  if every path dies without reaching BOTTOM,
 *   uncertain otherwise: it must be checked against the real stack.
 * A subtree whose prefix is dead is skipped whole. The walk steps through
 * the grammar's lazy DFA (grammar_dfa.c): one array load per trie node.
 * Positions whose table leaves many tokens uncertain get tables keyed by
 * the top few real stack positions instead (deep keys). */
#include "grammar_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


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

/* Portable popcount (the default x86-64 target has no POPCNT instruction
 * and the builtin becomes a library call). */
static inline int popcount32(uint32_t x) {
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    return (int)((x * 0x01010101u) >> 24);
}


/* Uncertain tokens above which a deeper key is tried. */
#define DEEP_THRESHOLD 4096

/* ---- per-position precomputation ---- */

typedef struct gprecomp {
    int32_t *state;   /* per depth: the DFA state after the trie path */
    uint64_t *boff;   /* per depth: the offsets so far where the known frames could end (uoff's form) */
    int32_t depth_cap;
    int32_t *ubuf; int32_t ucap;
    uint64_t *obuf;   /* the uncertain tokens' offsets, beside ubuf */
} gprecomp;

static void free_pm(gpos_mask *pm);

static void precomp_free(gprecomp *pc) {
    if (!pc) return;
    free(pc->state); free(pc->boff); free(pc->ubuf); free(pc->obuf);
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
    free(g->rep_canon);
    free(g->rep_level);
    grammar__state_cache_free(g->sc);
    g->sc = NULL;
    g->rep_canon = NULL;
    g->rep_level = NULL;
}

/* Room for n uncertain tokens (and their offsets) in pc's buffers. */
static int ubuf_reserve(gprecomp *pc, int32_t n) {
    if (n <= pc->ucap) return 0;
    int32_t nc = pc->ucap ? pc->ucap : 256;
    while (nc < n) nc *= 2;
    int32_t *nb = realloc(pc->ubuf, (size_t)nc * sizeof *nb);
    if (!nb) return -1;
    pc->ubuf = nb;
    uint64_t *no = realloc(pc->obuf, (size_t)nc * sizeof *no);
    if (!no) return -1;
    pc->obuf = no;
    pc->ucap = nc;
    return 0;
}

static int push_uncertain(gprecomp *pc, int32_t *n, int32_t id, uint64_t off) {
    if (*n == pc->ucap && ubuf_reserve(pc, *n + 1)) return -1;
    pc->obuf[*n] = off;
    pc->ubuf[(*n)++] = id;
    return 0;
}

/* The frames below a frame of rule r that are statically known because
 * each rule on the way has one call site, then BOTTOM (or COMPLETE below a
 * root nobody calls). */
static uint32_t static_below(const grammar *g, gmachine *m, int32_t r, int32_t *n_frames) {
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
    *n_frames = n;
    uint32_t x = bottom;
    while (n > 0 && x != UINT32_MAX) x = grammar__machine_node(m, chain[--n], x);
    return x;
}


/* The stack to precompute from: the key's frames, then the static frames;
 * *n_frames the stack nodes above the unknown rest (BOTTOM). */
static uint32_t start_node(const grammar *g, gmachine *m, const uint32_t *key, int n, int32_t *n_frames) {
    uint32_t x;
    int32_t ns = 0;
    if (key[n - 1] >= KEY_SENT) { x = key[n - 1] - KEY_SENT; n--; }
    else x = static_below(g, m, g->elem_rule[key[n - 1]], &ns);
    *n_frames = n + ns;
    while (n > 0 && x != UINT32_MAX) x = grammar__machine_node(m, key[--n], x);
    return x;
}

static int precomp_init(grammar *g, const grammar_vocab *v) {
    if (!g->pre) {
        gprecomp *pc = calloc(1, sizeof *pc);
        if (!pc) return -1;
        pc->depth_cap = v->max_len + 1;
        pc->state = calloc((size_t)pc->depth_cap, sizeof *pc->state);
        pc->boff = calloc((size_t)pc->depth_cap, sizeof *pc->boff);
        if (!pc->state || !pc->boff) { precomp_free(pc); return -1; }
        g->pre = pc;
    }
    return grammar__dfa_trim(&g->dfa, g);
}

/* Fill pm's uncertain list from ids[0..nu) (trie order) and pick the
 * accepted set's form. 0 or -1 on OOM (pm then freed by the caller). */
static int pm_finish(gpos_mask *pm, const grammar_vocab *v, const int32_t *ids, const uint64_t *offs, int32_t nu) {
    if (nu) {
        pm->uncertain = malloc((size_t)nu * sizeof *pm->uncertain);
        pm->ulcp = malloc((size_t)nu * sizeof *pm->ulcp);
        pm->uoff = malloc((size_t)nu * sizeof *pm->uoff);
        pm->ulen = malloc((size_t)nu * sizeof *pm->ulen);
        size_t nbytes = 0;
        for (int32_t i = 0; i < nu; i++) nbytes += v->len[ids[i]];
        pm->ubytes = malloc(nbytes + 1);
        if (!pm->uncertain || !pm->ulcp || !pm->uoff || !pm->ulen || !pm->ubytes) return -1;
        memcpy(pm->uoff, offs, (size_t)nu * sizeof *offs);
        nbytes = 0;
        for (int32_t i = 0; i < nu; i++) {
            pm->ulen[i] = v->len[ids[i]];
            memcpy(pm->ubytes + nbytes, v->bytes + v->off[ids[i]], pm->ulen[i]);
            nbytes += pm->ulen[i];
        }
        for (int32_t i = 0; i < nu; i++) {
            int32_t id = ids[i];
            pm->uncertain[i] = id;
            uint16_t l = 0;
            if (i) {
                int32_t pid = ids[i - 1];
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
            if (na <= 512) na += popcount32(pm->accepted[w]); /* counted only as far as the choice needs */
            if (w < pm->w_lo) pm->w_lo = w;
            pm->w_hi = w + 1;
        }
    pm->n_acc = na; /* exact when at most 512 (the list's length), else only "more" */
    if (na <= 512) {
        pm->acc_ids = malloc((size_t)(na ? na : 1) * sizeof *pm->acc_ids);
        if (!pm->acc_ids) return -1;
        int32_t k = 0;
        for (int32_t w = pm->w_lo; w < pm->w_hi; w++)
            for (uint32_t bits = pm->accepted[w]; bits; bits &= bits - 1) pm->acc_ids[k++] = w * 32 + __builtin_ctz(bits);
        free(pm->accepted);
        pm->accepted = NULL;
    }
    return 0;
}

/* Walk the trie from the stack of key through the DFA, classifying the
 * tokens of at least min_len bytes (all of them when min_len <= 1): set
 * the accepted ones in acc, append the uncertain ones (trie order) to
 * pc->ubuf, *nu counting them. Subtrees without such tokens are skipped.
 * 0 or -1 on OOM. */
static int walk(grammar *g, const grammar_vocab *v, const uint32_t *key, int keylen, int32_t min_len, uint32_t *acc,
                int32_t *nu, int32_t max_uncertain, int32_t *n_frames) {
    gprecomp *pc = g->pre;
    gdfa *dfa = g->dfa;
    int32_t s0 = grammar__dfa_state(dfa, start_node(g, &dfa->m, key, keylen, n_frames));
    if (s0 < 0) return -1;
    /* locals the compiler may keep in registers (the stores into acc could
     * otherwise alias everything, -fno-strict-aliasing being on) */
    int32_t *restrict st = pc->state;
    uint64_t *restrict bo = pc->boff;
    uint32_t *restrict ac = acc;
    st[0] = s0;
    bo[0] = 0;
    const gtnode *restrict tn = v->tn;
    const int32_t *trans = dfa->trans;
    const uint8_t *bclass = dfa->bclass, *flags = dfa->flags;
    const size_t nb = (size_t)dfa->n_bclass;
    const int32_t dummy = v->n_words * 32, n_nodes = v->n_nodes;
    uint32_t tick = 0;
    for (int32_t k = 0; k < n_nodes;) {
        const gtnode *nd = &tn[k];
        if (__builtin_expect((++tick & 4095) == 0, 0) && g->has_deadline) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec > g->build_deadline.tv_sec ||
                (now.tv_sec == g->build_deadline.tv_sec && now.tv_nsec >= g->build_deadline.tv_nsec)) {
                g->build_aborted = 1;
                return 2;
            }
        }
        if (nd->maxlen < min_len) { k = nd->end; continue; }
        int32_t d = nd->depth;
        int32_t s = st[d - 1];
        /* the offsets where some path read past BOTTOM: d - 1 when the parent's set holds it */
        uint64_t ctx = bo[d - 1];
        if (__builtin_expect(flags[s] & GDFA_HAS_BOTTOM, 0)) ctx |= (uint64_t)1 << (d - 1 < 63 ? d - 1 : 63);
        int32_t t = trans[(size_t)s * nb + bclass[nd->byte]];
        if (__builtin_expect(t == GDFA_UNKNOWN, 0)) {
            t = grammar__dfa_step_slow(dfa, s, nd->byte);
            if (t == GDFA_OOM) return -1;
            trans = dfa->trans; /* the DFA may have grown */
            flags = dfa->flags;
        }
        if (t == GDFA_DEAD) {
            /* dead prefix: the whole subtree is rejected, or uncertain when a path left the frame */
            if (ctx) {
                int32_t hi = nd->end < n_nodes ? tn[nd->end].first : v->n_sorted;
                for (int32_t i = nd->first; i < hi; i++)
                    if (v->len[v->sorted[i]] >= min_len && push_uncertain(pc, nu, v->sorted[i], ctx)) return -1;
                if (*nu > max_uncertain) return 1;
            }
            k = nd->end;
            continue;
        }
        st[d] = t;
        bo[d] = ctx;
        /* the token ending here, without a branch (a node without one, or
         * a token too short for this walk, sets a bit in the dummy word) */
        int32_t id = d >= min_len ? nd->tok : dummy;
        ac[id >> 5] |= 1u << (id & 31);
        if (__builtin_expect(nd->ntok > 1, 0) && d >= min_len) /* several tokens with the same bytes */
            for (int32_t i = nd->first + 1; i < nd->first + nd->ntok; i++) {
                id = v->sorted[i];
                ac[id >> 5] |= 1u << (id & 31);
            }
        k++;
    }
    return 0;
}

/* The table of a key, by a full walk (under g->lock). When more than
 * max_uncertain tokens turn out uncertain the walk stops: the table is
 * then only a marker (partial) that a deeper key is needed. NULL on OOM
 * (or past g's build deadline). */
static gpos_mask *precompute(grammar *g, const grammar_vocab *v, const uint32_t *key, int keylen, int32_t max_uncertain) {
    if (precomp_init(g, v)) return NULL;
    gpos_mask *pm = calloc(1, sizeof *pm);
    if (!pm) return NULL;
    pm->accepted = calloc((size_t)v->n_words + 1, sizeof *pm->accepted); /* + the walk's dummy word */
    int32_t nu = 0;
    int rc = pm->accepted ? walk(g, v, key, keylen, 0, pm->accepted, &nu, max_uncertain, &pm->n_frames) : -1;
    if (rc == 1) {
        free(pm->accepted);
        pm->accepted = NULL;
        pm->partial = 1;
        pm->n_uncertain = nu;
        return pm;
    }
    if (rc || pm_finish(pm, v, g->pre->ubuf, g->pre->obuf, nu)) { /* rc 2: past the deadline */
        free_pm(pm);
        return NULL;
    }
    return pm;
}

/* The table of key from the table base of a key that no token shorter
 * than k bytes tells apart from it (a bounded repetition at a higher
 * level): base's verdicts are kept for those tokens, and only the longer
 * ones are walked. Under g->lock; NULL on OOM. */
static gpos_mask *derive(grammar *g, const grammar_vocab *v, const gpos_mask *base, const uint32_t *key, int keylen,
                         int32_t k, int32_t max_uncertain) {
    if (precomp_init(g, v)) return NULL;
    gprecomp *pc = g->pre;
    gpos_mask *pm = calloc(1, sizeof *pm);
    if (!pm) return NULL;
    pm->accepted = calloc((size_t)v->n_words + 1, sizeof *pm->accepted); /* + the walk's dummy word */
    if (!pm->accepted) { free(pm); return NULL; }
    if (base->accepted) memcpy(pm->accepted, base->accepted, (size_t)v->n_words * sizeof *pm->accepted);
    else
        for (int32_t i = 0; i < base->n_acc; i++) pm->accepted[base->acc_ids[i] >> 5] |= 1u << (base->acc_ids[i] & 31);
    if (k >= 2 && k < v->n_shorter + 2) {
        const uint32_t *sh = v->shorter + (size_t)(k - 2) * (size_t)v->n_words;
        for (int32_t w = 0; w < v->n_words; w++) pm->accepted[w] &= sh[w];
    } else {
        int32_t nlong = k <= v->max_len ? v->n_ge[k] : 0;
        for (int32_t i = 0; i < nlong; i++) pm->accepted[v->bylen[i] >> 5] &= ~(1u << (v->bylen[i] & 31));
    }
    /* the long tokens' verdicts go to the front of ubuf, then base's short uncertain ones are merged in */
    int32_t nu = 0;
    int32_t nb = 0;
    for (int32_t i = 0; i < base->n_uncertain; i++) nb += v->len[base->uncertain[i]] < k;
    /* the key has the frames of base's (levels of the same repetitions, the
     * same static frames above them), so base's offsets hold here too */
    int rc = walk(g, v, key, keylen, k, pm->accepted, &nu, max_uncertain == INT32_MAX ? INT32_MAX : max_uncertain - nb,
                  &pm->n_frames);
    if (rc == 1) { /* as in precompute: only a marker */
        free(pm->accepted);
        pm->accepted = NULL;
        pm->partial = 1;
        pm->n_uncertain = nu + nb;
        return pm;
    }
    if (rc) { free_pm(pm); return NULL; }
    int32_t total = nu + nb;
    if (ubuf_reserve(pc, 2 * total + 1)) { free_pm(pm); return NULL; }
    int32_t *out = pc->ubuf + total, i = 0, j = 0, o = 0;
    uint64_t *oout = pc->obuf + total;
    while (i < nu || j < base->n_uncertain) {
        while (j < base->n_uncertain && v->len[base->uncertain[j]] >= k) j++;
        int32_t a = i < nu ? pc->ubuf[i] : -1;
        int32_t b = j < base->n_uncertain ? base->uncertain[j] : -1;
        if (a < 0 && b < 0) break;
        if (b < 0 || (a >= 0 && v->rank[a] < v->rank[b])) { oout[o] = pc->obuf[i]; out[o++] = a; i++; }
        else { oout[o] = base->uoff[j]; out[o++] = b; j++; }
    }
    if (pm_finish(pm, v, out, oout, o)) { free_pm(pm); return NULL; }
    return pm;
}

/* ---- bounded repetitions ----
 * gbnf.c writes x{m,n} as m copies of x then opt_(n-m), where
 *   opt_1 ::= x | ""      opt_j ::= x opt_(j-1) | ""
 * A frame in opt_j can still take j atoms (j-1 after the current one), and
 * every atom consumes at least a byte once it is entered: so no token of
 * fewer than j bytes behaves differently in opt_j and in the same place of
 * a higher level opt_J (the language of continuations agrees on every
 * prefix that short). A string with maxLength 40 then needs one full walk
 * (the top level) plus, per lower level, a walk of only the tokens at least
 * that long (130 GPT-2 tokens have 16 bytes or more). The chains are found
 * by their shape, whatever wrote the GBNF. */

/* Rule r's shape "A [REF next] | <empty>": its first alternative's
 * elements before END start at *a0, *alen of them; *next the rule the last
 * one references, or -1. 0 when r is not of that shape. */
static int rep_shape(const grammar *g, int32_t r, int32_t *a0, int32_t *alen, int32_t *next) {
    if (g->alt_off[r + 1] - g->alt_off[r] != 2) return 0;
    int32_t s0 = g->alt_start[g->alt_off[r]], s1 = g->alt_start[g->alt_off[r] + 1];
    if (g->elems[s1].kind != GE_END || s1 - 1 <= s0) return 0;
    *a0 = s0;
    *alen = s1 - 1 - s0;
    *next = *alen >= 2 && g->elems[s1 - 2].kind == GE_REF && (int32_t)g->elems[s1 - 2].arg != r ? (int32_t)g->elems[s1 - 2].arg
                                                                                                  : -1;
    return 1;
}

/* Fill g->rep_canon / g->rep_level (per element: the same place in the
 * chain's top rule and this rule's level; -1 / 0 outside chains). 0 or -1
 * on OOM. */
static int rep_analyse(grammar *g) {
    int32_t nr = g->n_rules;
    int32_t *lvl = calloc((size_t)nr, sizeof *lvl), *atom = calloc((size_t)nr, sizeof *atom);
    int32_t *top = malloc((size_t)nr * sizeof *top), *path = malloc((size_t)nr * sizeof *path);
    uint8_t *st = calloc((size_t)nr, 1);
    g->rep_canon = malloc(((size_t)g->n_elems + 1) * sizeof *g->rep_canon);
    g->rep_level = calloc((size_t)g->n_elems + 1, sizeof *g->rep_level);
    int rc = -1;
    if (!lvl || !atom || !top || !path || !st || !g->rep_canon || !g->rep_level) goto out;
    /* levels: follow the next references down to an opt_1, then number back up */
    for (int32_t r = 0; r < nr; r++) {
        int32_t np = 0, x = r, a0, al, nx;
        while (x >= 0 && !st[x]) {
            st[x] = 1;
            path[np++] = x;
            x = rep_shape(g, x, &a0, &al, &nx) ? nx : -1;
        }
        while (np > 0) {
            int32_t y = path[--np];
            st[y] = 2;
            if (!rep_shape(g, y, &a0, &al, &nx)) continue;
            if (nx >= 0 && st[nx] == 2 && lvl[nx] >= 1 && atom[nx] == al - 1) {
                int32_t n0 = g->alt_start[g->alt_off[nx]];
                if (!memcmp(g->elems + a0, g->elems + n0, (size_t)(al - 1) * sizeof *g->elems)) {
                    lvl[y] = lvl[nx] + 1;
                    atom[y] = al - 1;
                    continue;
                }
            }
            lvl[y] = 1;
            atom[y] = al;
        }
    }
    /* the top of each chain: up through unique call sites from the level above */
    for (int32_t r = 0; r < nr; r++) top[r] = -1;
    for (int32_t r = 0; r < nr; r++) {
        int32_t np = 0, x = r;
        while (x >= 0 && top[x] < 0) {
            path[np++] = x;
            int32_t s = g->site[x], up = -1;
            if (lvl[x] >= 1 && s >= 0) {
                int32_t c = g->elem_rule[s];
                if (lvl[c] == lvl[x] + 1 && atom[c] == atom[x] && s == g->alt_start[g->alt_off[c]] + atom[c]) up = c;
            }
            if (up < 0) { top[x] = x; np--; break; }
            x = up;
        }
        int32_t t = x >= 0 ? top[x] : -1;
        while (np > 0) top[path[--np]] = t;
    }
    for (int32_t p = 0; p <= g->n_elems; p++) g->rep_canon[p] = -1;
    for (int32_t r = 0; r < nr; r++) {
        if (lvl[r] < 2 || top[r] == r || top[r] < 0) continue;
        int32_t s0 = g->alt_start[g->alt_off[r]], t0 = g->alt_start[g->alt_off[top[r]]];
        for (int32_t i = 0; i <= atom[r]; i++) { /* the atom and the REF to the next level */
            g->rep_canon[s0 + i] = t0 + i;
            g->rep_level[s0 + i] = lvl[r];
        }
    }
    rc = 0;
out:
    free(lvl); free(atom); free(top); free(path); free(st);
    return rc;
}

int grammar__bind_vocab(grammar *g, const grammar_vocab *v) {
    if (g->vocab && g->vocab != v) return GRAMMAR_ERR_VOCAB;
    g->vocab = v;
    return 0;
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

static gpos_mask *deep_find(const grammar *g, const uint32_t *key, int n) {
    const struct gdeep_map *dm = g->deep;
    if (!dm || !dm->cap) return NULL;
    for (uint32_t h = key_hash(key, n) & (dm->cap - 1); dm->e[h].pm; h = (h + 1) & (dm->cap - 1))
        if (dm->e[h].n == n && !memcmp(dm->e[h].key, key, (size_t)n * sizeof *key)) return dm->e[h].pm;
    return NULL;
}

static int deep_insert(grammar *g, const uint32_t *key, int n, gpos_mask *pm) {
    struct gdeep_map *dm = g->deep;
    if (!dm) {
        dm = calloc(1, sizeof *dm);
        if (!dm) return -1;
        g->deep = dm;
    }
    if ((dm->n + 1) * 2 > dm->cap) {
        uint32_t nc = dm->cap ? dm->cap * 2 : 64;
        gdeep *ne = calloc(nc, sizeof *ne);
        if (!ne) return -1;
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
    while (dm->e[h].pm) h = (h + 1) & (dm->cap - 1);
    memcpy(dm->e[h].key, key, (size_t)n * sizeof *key);
    dm->e[h].n = n;
    dm->e[h].pm = pm;
    dm->n++;
    return 0;
}

/* The table of a key (one position: g->pm; more: the deep map), built if
 * missing. Under g->lock; NULL on OOM. */
static gpos_mask *table_locked(grammar *g, const grammar_vocab *v, const uint32_t *key, int n) {
    gpos_mask *pm = n == 1 ? g->pm[key[0]] : deep_find(g, key, n);
    if (pm) return pm;
    if (!g->rep_canon && rep_analyse(g)) return NULL;
    /* a key with frames in a bounded repetition: derive from the chain's top level */
    uint32_t ck[KEY_MAX];
    int32_t k = INT32_MAX;
    for (int i = 0; i < n; i++) {
        ck[i] = key[i];
        if (key[i] < KEY_SENT && g->rep_canon[key[i]] >= 0) {
            ck[i] = (uint32_t)g->rep_canon[key[i]];
            if (g->rep_level[key[i]] < k) k = g->rep_level[key[i]];
        }
    }
    if (k != INT32_MAX) {
        gpos_mask *base = table_locked(g, v, ck, n);
        if (!base) return NULL;
        if (base->partial) {
            /* no table there either: only the marker that a deeper key is needed */
            pm = calloc(1, sizeof *pm);
            if (pm) { pm->partial = 1; pm->n_uncertain = base->n_uncertain; }
        } else {
            pm = derive(g, v, base, key, n, k, n == 1 ? DEEP_THRESHOLD : INT32_MAX);
        }
    } else {
        /* a one-position table that would leave more than DEEP_THRESHOLD
         * tokens to the run-time check is never used: stop its walk there */
        pm = precompute(g, v, key, n, n == 1 ? DEEP_THRESHOLD : INT32_MAX);
    }
    if (!pm) return NULL;
    g->n_built++;
    if (n == 1) __atomic_store_n(&g->pm[key[0]], pm, __ATOMIC_RELEASE);
    else if (deep_insert(g, key, n, pm)) { free_pm(pm); return NULL; }
    return pm;
}

static gpos_mask *get_pm(grammar *g, const grammar_vocab *v, uint32_t p) {
    gpos_mask *pm = __atomic_load_n(&g->pm[p], __ATOMIC_ACQUIRE);
    if (pm) return pm;
    pthread_mutex_lock(&g->lock);
    pm = table_locked(g, v, &p, 1);
    pthread_mutex_unlock(&g->lock);
    return pm;
}

/* The table of key built before deadline (none: NULL): NULL with *aborted
 * set when the deadline came first (nothing is kept), NULL alone on OOM. */
static gpos_mask *get_pm_until(grammar *g, const grammar_vocab *v, const uint32_t *key, int n,
                               const struct timespec *deadline, int *aborted, int *built) {
    pthread_mutex_lock(&g->lock);
    uint32_t n0 = g->n_built;
    g->has_deadline = deadline != NULL;
    if (!deadline) {
        *aborted = 0;
        gpos_mask *pm = table_locked(g, v, key, n);
        *built |= g->n_built != n0;
        pthread_mutex_unlock(&g->lock);
        return pm;
    }
    g->build_deadline = *deadline;
    g->build_aborted = 0;
    gpos_mask *pm = table_locked(g, v, key, n);
    *aborted = g->build_aborted;
    *built |= g->n_built != n0;
    g->has_deadline = 0;
    pthread_mutex_unlock(&g->lock);
    return pm;
}

static gpos_mask *get_pm_deep(grammar *g, const grammar_vocab *v, const uint32_t *key, int n) {
    pthread_mutex_lock(&g->lock);
    gpos_mask *pm = table_locked(g, v, key, n);
    pthread_mutex_unlock(&g->lock);
    return pm;
}

static void free_pm(gpos_mask *pm) {
    if (!pm) return;
    free(pm->accepted); free(pm->uncertain); free(pm->ulcp); free(pm->uoff); free(pm->ulen); free(pm->ubytes); free(pm->acc_ids); free(pm);
}


/* The most specific useful table for the stack x of machine mc. */
gpos_mask *grammar__table_for_stack(grammar *g, const grammar_vocab *v, const gmachine *mc, uint32_t x) {
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

/* The DFA state of the stack x of mc (its nodes built in the DFA's machine):
 * returning into x when ret, else x itself. */
static int32_t real_state(gdfa *dfa, const gmachine *mc, uint32_t x, int ret) {
    /* collect the positions top to bottom, build the nodes bottom up */
    uint32_t n = 0, y;
    for (y = x; y >= 2; y = mc->parent[y]) {
        if (grammar__set_push(&dfa->tmp, 0)) return GDFA_OOM; /* grow */
        n++;
    }
    dfa->tmp.n = 0;
    for (y = x; y >= 2; y = mc->parent[y]) dfa->tmp.v[dfa->tmp.n++] = mc->pos[y];
    uint32_t node = y;
    for (uint32_t k = n; k-- > 0 && node != UINT32_MAX;) node = grammar__machine_node(&dfa->m, dfa->tmp.v[k], node);
    return ret ? grammar__dfa_state_return(dfa, node) : grammar__dfa_state(dfa, node);
}

/* Whether bytes b[0..len) survive from DFA state s. 1, 0, or -1 on OOM. */
static int run_bytes(gdfa *dfa, int32_t s, const unsigned char *b, int32_t len) {
    for (int32_t i = 0; i < len && s >= 0; i++) s = grammar__dfa_step(dfa, s, b[i]);
    return s == GDFA_OOM ? -1 : s >= 0;
}

/* An uncertain token is valid on the real stack exactly when, at one of
 * the offsets where the table's known frames can end (uoff), the rest of
 * its bytes is valid on the real stack below those frames. That lower
 * stack is the same for many stacks (the levels of a bounded string, the
 * steps of a repetition, every request), so its DFA states and transitions
 * are met again and are one array load per byte; the whole real stack,
 * new at each level, would cost a stack-machine step per byte instead. */
int grammar__check_uncertain(grammar *g, const grammar_vocab *v, const gmachine *mc, uint32_t x, const gpos_mask *pm,
                             uint32_t *mask) {
    pthread_mutex_lock(&g->lock);
    int rc = -1;
    if (precomp_init(g, v)) goto out;
    gdfa *dfa = g->dfa;
    gprecomp *pc = g->pre;
    /* the stack below the known frames */
    uint32_t y = x;
    for (int32_t i = 0; i < pm->n_frames && y >= 2; i++) y = mc->parent[y];
    int32_t low = GDFA_DEAD; /* y COMPLETE: nothing can follow the known frames */
    int by_offset = y != GNODE_BOTTOM; /* else a stack shorter than the table's frames: whole tokens */
    if (y >= 2) {
        low = real_state(dfa, mc, y, 1);
        if (low == GDFA_OOM) goto out;
    }
    int32_t whole = GDFA_UNKNOWN; /* the whole real stack's state, when needed */
    int32_t *st = pc->state;
    int32_t have = -1; /* st[0..have] hold the previous whole-stack token's prefix (GDFA_DEAD where it died) */
    const unsigned char *b = pm->ubytes;
    for (int32_t i = 0, len = 0; i < pm->n_uncertain; i++) {
        int32_t id = pm->uncertain[i];
        b += len; /* this token's bytes */
        len = pm->ulen[i];
        if (mask[id >> 5] >> (id & 31) & 1) { if (have > pm->ulcp[i]) have = pm->ulcp[i]; continue; }
        uint64_t off = pm->uoff[i];
        if (!(off >> 63) && by_offset) {
            int ok = 0;
            if (low >= 0)
                for (uint64_t o = off; o && !ok; o &= o - 1) {
                    int r = run_bytes(dfa, low, b + __builtin_ctzll(o), len - __builtin_ctzll(o));
                    if (r < 0) goto out;
                    ok = r;
                }
            if (ok) mask[id >> 5] |= 1u << (id & 31);
            if (have > pm->ulcp[i]) have = pm->ulcp[i];
            continue;
        }
        /* an offset past 62 bytes: the token from the whole real stack */
        if (whole == GDFA_UNKNOWN) {
            whole = real_state(dfa, mc, x, 0);
            if (whole < 0) goto out;
            st[0] = whole;
            have = 0;
        }
        int32_t d = pm->ulcp[i] < have ? pm->ulcp[i] : have;
        while (d < len && st[d] >= 0) {
            int32_t t = grammar__dfa_step(dfa, st[d], b[d]);
            if (t == GDFA_OOM) goto out;
            st[++d] = t;
        }
        have = d;
        if (d == len && st[d] >= 0) mask[id >> 5] |= 1u << (id & 31);
    }
    rc = 0;
out:
    pthread_mutex_unlock(&g->lock);
    return rc;
}

static double ms_since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

/* A time budget: tables are built until it ends, and a walk still running
 * then stops (its table is dropped), so a build does not run past it. The
 * first table of a call is built whatever it takes, so that calls always
 * make progress (a table longer than the budget would otherwise never be
 * built ahead, and every request would redo the dropped work). */
typedef struct gbudget { struct timespec t0, deadline; double max_ms; int built; } gbudget;

static void budget_start(gbudget *b, double max_ms) {
    clock_gettime(CLOCK_MONOTONIC, &b->t0);
    b->max_ms = max_ms;
    b->built = 0;
    double s = max_ms > 0 ? max_ms / 1e3 : 0;
    b->deadline = b->t0;
    b->deadline.tv_sec += (time_t)s;
    b->deadline.tv_nsec += (long)((s - (double)(time_t)s) * 1e9);
    if (b->deadline.tv_nsec >= 1000000000L) { b->deadline.tv_sec++; b->deadline.tv_nsec -= 1000000000L; }
}

static int budget_allows(const gbudget *b) { return ms_since(&b->t0) < b->max_ms; }

/* ---- deep keys built ahead ----
 * A position whose one-position table is partial (a rule called from many
 * sites: the character of a bounded string, a segment shared by the levels
 * of a repetition) gets, on first use, a table keyed by the frames below
 * it. Those frames are few and known from the grammar: a frame of rule r
 * lies on a frame after one of r's call sites (or, for a call in tail
 * position, on whatever lies below its caller). Building the tables of
 * these keys with the one-position tables takes them out of the first
 * request's decode steps (a new level of a bounded string at most steps). */

/* Rule -> its call sites (REF elements), as CSR arrays. */
typedef struct gsites { int32_t *off, *at; } gsites;

static int sites_build(const grammar *g, gsites *cs) {
    cs->off = calloc((size_t)g->n_rules + 1, sizeof *cs->off);
    int32_t nref = 0;
    for (int32_t e = 0; e < g->n_elems; e++) nref += g->elems[e].kind == GE_REF;
    cs->at = malloc((size_t)(nref ? nref : 1) * sizeof *cs->at);
    if (!cs->off || !cs->at) return -1;
    for (int32_t e = 0; e < g->n_elems; e++)
        if (g->elems[e].kind == GE_REF) cs->off[g->elems[e].arg + 1]++;
    for (int32_t r = 0; r < g->n_rules; r++) cs->off[r + 1] += cs->off[r];
    int32_t *fill = calloc((size_t)g->n_rules + 1, sizeof *fill);
    if (!fill) return -1;
    for (int32_t e = 0; e < g->n_elems; e++)
        if (g->elems[e].kind == GE_REF) {
            int32_t r = (int32_t)g->elems[e].arg;
            cs->at[cs->off[r] + fill[r]++] = e;
        }
    free(fill);
    return 0;
}

/* The frames that can lie right below a frame of rule r (return positions,
 * or KEY_SENT + GNODE_COMPLETE under the root), at most max into out; seen
 * is n_rules bytes of scratch, zeroed on return. Returns the count. */
static int below_frames(const grammar *g, const gsites *cs, int32_t r, uint8_t *seen, int32_t *pending, uint32_t *out,
                        int max) {
    int n = 0, nt = 0;
    pending[nt++] = r;
    seen[r] = 1;
    int32_t nvis = 0;
    while (nt > 0) {
        int32_t x = pending[--nt];
        pending[g->n_rules - 1 - nvis++] = x; /* remember to clear seen[x] (the tail of pending is free) */
        if (x == g->root && n < max) out[n++] = KEY_SENT + GNODE_COMPLETE;
        for (int32_t i = cs->off[x]; i < cs->off[x + 1]; i++) {
            int32_t site = cs->at[i];
            if (g->elems[site + 1].kind != GE_END) {
                uint32_t f = (uint32_t)site + 1;
                int dup = 0;
                for (int k = 0; k < n && !dup; k++) dup = out[k] == f;
                if (!dup && n < max) out[n++] = f;
            } else {
                int32_t c = g->elem_rule[site];
                if (!seen[c] && nt + nvis < g->n_rules) { seen[c] = 1; pending[nt++] = c; }
            }
        }
    }
    while (nvis > 0) seen[pending[g->n_rules - nvis--]] = 0;
    return n;
}

/* Earlier levels of a bounded repetition come first in the output (the top
 * level, then from the highest level down): the order a string is written. */
static int32_t frame_rank(const grammar *g, uint32_t f) {
    if (f >= KEY_SENT || g->rep_canon[f] < 0) return INT32_MAX;
    return g->rep_level[f];
}

typedef struct gdkey { uint32_t key[3]; int32_t n, rank; } gdkey;

static int cmp_dkey(const void *a, const void *b) {
    const gdkey *x = a, *y = b;
    if (x->rank != y->rank) return x->rank > y->rank ? -1 : 1;
    return memcmp(x->key, y->key, sizeof x->key);
}

/* Tables of the deep keys [p, f] (and [p, f, f2] when [p, f] is still
 * partial) of the positions with partial one-position tables, until the
 * budget ends. 0 done, 1 budget reached, < 0 error. */
#define DEEP_AHEAD_MAX 4096
static int precompute_deep(grammar *g, const grammar_vocab *v, gbudget *bud) {
    pthread_mutex_lock(&g->lock);
    int rc = (!g->rep_canon && rep_analyse(g)) ? GRAMMAR_ERR_NOMEM : 0;
    pthread_mutex_unlock(&g->lock);
    if (rc) return rc;
    gsites cs = {0};
    uint8_t *seen = calloc((size_t)g->n_rules, 1);
    int32_t *pending = malloc((size_t)g->n_rules * sizeof *pending);
    uint32_t fr[64];
    gdkey *keys = malloc(DEEP_AHEAD_MAX * sizeof *keys);
    int32_t nk = 0;
    rc = GRAMMAR_ERR_NOMEM;
    if (!seen || !pending || !keys || sites_build(g, &cs)) goto out;
    for (int32_t p = 0; p < g->n_elems; p++) {
        const gpos_mask *pm = g->elems[p].kind == GE_BYTES ? __atomic_load_n(&g->pm[p], __ATOMIC_ACQUIRE) : NULL;
        if (!pm || pm->n_uncertain <= DEEP_THRESHOLD) continue;
        int nf = below_frames(g, &cs, g->elem_rule[p], seen, pending, fr, 64);
        for (int i = 0; i < nf && nk < DEEP_AHEAD_MAX; i++)
            keys[nk++] = (gdkey){{(uint32_t)p, fr[i], 0}, 2, frame_rank(g, fr[i])};
    }
    qsort(keys, (size_t)nk, sizeof *keys, cmp_dkey);
    rc = 0;
    /* keys[i] may append deeper keys at the end (processed after the rest) */
    for (int32_t i = 0; i < nk; i++) {
        if (!budget_allows(bud)) { rc = 1; break; }
        int aborted = 0;
        gpos_mask *pm = get_pm_until(g, v, keys[i].key, keys[i].n, bud->built ? &bud->deadline : NULL, &aborted,
                                     &bud->built);
        if (!pm) { rc = aborted ? 1 : GRAMMAR_ERR_NOMEM; break; }
        if (pm->n_uncertain <= DEEP_THRESHOLD || keys[i].n == 3 || keys[i].key[1] >= KEY_SENT) continue;
        int nf = below_frames(g, &cs, g->elem_rule[keys[i].key[1]], seen, pending, fr, 64);
        for (int j = 0; j < nf && nk < DEEP_AHEAD_MAX; j++)
            keys[nk++] = (gdkey){{keys[i].key[0], keys[i].key[1], fr[j]}, 3, 0};
    }
out:
    free(cs.off); free(cs.at); free(seen); free(pending); free(keys);
    return rc;
}

int grammar_tables_ready(const grammar *g) { return __atomic_load_n(&g->tables_done, __ATOMIC_ACQUIRE); }

int grammar_precompute_budget(grammar *g, const grammar_vocab *v, double max_ms) {
    pthread_mutex_lock(&g->lock);
    int rc = grammar__bind_vocab(g, v);
    pthread_mutex_unlock(&g->lock);
    if (rc) return rc;
    if (__atomic_load_n(&g->tables_done, __ATOMIC_ACQUIRE)) return 0;
    gbudget bud;
    budget_start(&bud, max_ms);
    grammar__state_cache_reserve(g);
    for (int32_t p = 0; p < g->n_elems; p++) {
        if (g->elems[p].kind != GE_BYTES || __atomic_load_n(&g->pm[p], __ATOMIC_ACQUIRE))
            continue;
        if (!budget_allows(&bud)) return 1;
        int aborted = 0;
        uint32_t key = (uint32_t)p;
        if (!get_pm_until(g, v, &key, 1, bud.built ? &bud.deadline : NULL, &aborted, &bud.built))
            return aborted ? 1 : GRAMMAR_ERR_NOMEM;
    }
    rc = precompute_deep(g, v, &bud);
    if (rc == 0) __atomic_store_n(&g->tables_done, 1, __ATOMIC_RELEASE);
    return rc;
}

int grammar_precompute(grammar *g, const grammar_vocab *v) {
    pthread_mutex_lock(&g->lock);
    int rc = grammar__bind_vocab(g, v);
    pthread_mutex_unlock(&g->lock);
    if (rc) return rc;
    for (int32_t p = 0; p < g->n_elems; p++)
        if (g->elems[p].kind == GE_BYTES && !get_pm(g, v, (uint32_t)p)) return GRAMMAR_ERR_NOMEM;
    return 0;
}
