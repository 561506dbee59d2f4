/* grammar_dfa.c -- a lazily built DFA over sets of stacks, for the trie
 * walks that build mask tables.
 *
 * A walk of the vocabulary trie runs the stack machine once per trie node:
 * consuming a byte expands rule references and interns nodes, some hundreds
 * of nanoseconds, and a string-content position keeps almost the whole trie
 * alive (150k+ nodes): tens of milliseconds per table. But the sets of
 * stacks met along those paths repeat: inside a string every character
 * leads back to the same few sets. Here each set of stacks met is interned
 * once as a DFA state (its node ids, sorted, in a machine that is never
 * rolled back, so equal stacks keep equal ids), and each (state, byte class)
 * transition is computed once by the stack machine and then read from an
 * array. A walk then costs one array load per trie node, and the states and
 * transitions are shared by every table of the grammar (walks from
 * neighbouring positions meet the same sets after a byte or two).
 *
 * Bytes are grouped into classes that no byte set of the grammar tells
 * apart (a JSON grammar has a few dozen), so a state's transitions are a
 * short array. The DFA grows with use; grammar__dfa_trim drops it whole when
 * it passes a size bound (the tables built from it stay valid). */
#include "grammar_internal.h"

#include <stdlib.h>
#include <string.h>

/* Sizes above which the DFA is dropped and rebuilt (checked between walks). */
#define DFA_MAX_STATES (1 << 16)
#define DFA_MAX_MACHINE_NODES (1u << 20)

/* Group the bytes that every byte set of g treats alike. */
static void byte_classes(const grammar *g, gdfa *d) {
    uint8_t cls[256] = {0};
    int n = 1;
    uint8_t map[256][2];
    for (int32_t s = 0; s < g->n_sets && n < 256; s++) {
        /* split every class by membership in set s */
        memset(map, 0xFF, sizeof map);
        int nn = 0;
        uint8_t ncls[256];
        for (int b = 0; b < 256; b++) {
            int in = gbyteset_has(&g->sets[s], (unsigned)b);
            if (map[cls[b]][in] == 0xFF) map[cls[b]][in] = (uint8_t)nn++;
            ncls[b] = map[cls[b]][in];
        }
        memcpy(cls, ncls, sizeof cls);
        n = nn;
    }
    memcpy(d->bclass, cls, sizeof cls);
    d->n_bclass = n;
    for (int b = 255; b >= 0; b--) d->brep[cls[b]] = (uint8_t)b;
}

static uint32_t set_hash(const uint32_t *v, uint32_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (uint32_t i = 0; i < n; i++) h = (h ^ v[i]) * 0x100000001B3ull;
    return (uint32_t)(h ^ (h >> 29));
}

static void sort_u32(uint32_t *v, uint32_t n) {
    for (uint32_t i = 1; i < n; i++) {
        uint32_t x = v[i], j = i;
        while (j > 0 && v[j - 1] > x) { v[j] = v[j - 1]; j--; }
        v[j] = x;
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

void grammar__dfa_free(gdfa *d) {
    if (!d) return;
    grammar__machine_free(&d->m);
    free(d->trans); free(d->set_off); free(d->flags); free(d->pool); free(d->htab); free(d->tmp.v); free(d->out.v);
    free(d);
}

gdfa *grammar__dfa_create(const grammar *g) {
    gdfa *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    if (grammar__machine_init(&d->m, g)) { free(d); return NULL; }
    byte_classes(g, d);
    d->hcap = 1024;
    d->htab = malloc(d->hcap * sizeof *d->htab);
    d->cap_states = 256;
    d->trans = malloc((size_t)d->cap_states * (size_t)d->n_bclass * sizeof *d->trans);
    d->set_off = malloc(((size_t)d->cap_states + 1) * sizeof *d->set_off);
    d->flags = malloc((size_t)d->cap_states);
    d->cap_pool = 4096;
    d->pool = malloc(d->cap_pool * sizeof *d->pool);
    if (!d->htab || !d->trans || !d->set_off || !d->flags || !d->pool) { grammar__dfa_free(d); return NULL; }
    memset(d->htab, 0xFF, d->hcap * sizeof *d->htab);
    d->set_off[0] = 0;
    return d;
}

int grammar__dfa_trim(gdfa **pd, const grammar *g) {
    gdfa *d = *pd;
    if (d && d->n_states < DFA_MAX_STATES && d->m.n < DFA_MAX_MACHINE_NODES) return 0;
    grammar__dfa_free(d);
    *pd = grammar__dfa_create(g);
    return *pd ? 0 : -1;
}

static int hash_grow(gdfa *d) {
    uint32_t nc = d->hcap * 2;
    int32_t *nh = malloc(nc * sizeof *nh);
    if (!nh) return -1;
    memset(nh, 0xFF, nc * sizeof *nh);
    for (int32_t s = 0; s < d->n_states; s++) {
        uint32_t h = set_hash(d->pool + d->set_off[s], d->set_off[s + 1] - d->set_off[s]) & (nc - 1);
        while (nh[h] >= 0) h = (h + 1) & (nc - 1);
        nh[h] = s;
    }
    free(d->htab);
    d->htab = nh;
    d->hcap = nc;
    return 0;
}

/* The state of the node set v[0..n) (sorted here, in place); n 0 is the dead
 * state GDFA_DEAD. GDFA_OOM when out of memory. */
static int32_t intern(gdfa *d, uint32_t *v, uint32_t n) {
    if (n == 0) return GDFA_DEAD;
    if (n < 24) sort_u32(v, n);
    else qsort(v, n, sizeof *v, cmp_u32);
    uint32_t h = set_hash(v, n);
    for (uint32_t i = h & (d->hcap - 1);; i = (i + 1) & (d->hcap - 1)) {
        int32_t s = d->htab[i];
        if (s < 0) break;
        uint32_t o = d->set_off[s];
        if (d->set_off[s + 1] - o == n && !memcmp(d->pool + o, v, n * sizeof *v)) return s;
    }
    if ((uint32_t)(d->n_states + 1) * 2 > d->hcap && hash_grow(d)) return GDFA_OOM;
    if (d->n_states == d->cap_states) {
        int32_t nc = d->cap_states * 2;
        int32_t *nt = realloc(d->trans, (size_t)nc * (size_t)d->n_bclass * sizeof *nt);
        if (!nt) return GDFA_OOM;
        d->trans = nt;
        uint32_t *no = realloc(d->set_off, ((size_t)nc + 1) * sizeof *no);
        if (!no) return GDFA_OOM;
        d->set_off = no;
        uint8_t *nf = realloc(d->flags, (size_t)nc);
        if (!nf) return GDFA_OOM;
        d->flags = nf;
        d->cap_states = nc;
    }
    uint32_t o = d->set_off[d->n_states];
    if (o + n > d->cap_pool) {
        uint32_t nc = d->cap_pool;
        while (o + n > nc) nc *= 2;
        uint32_t *np = realloc(d->pool, nc * sizeof *np);
        if (!np) return GDFA_OOM;
        d->pool = np;
        d->cap_pool = nc;
    }
    memcpy(d->pool + o, v, n * sizeof *v);
    int32_t s = d->n_states++;
    d->set_off[s + 1] = o + n;
    uint8_t f = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (v[i] == GNODE_BOTTOM) f |= GDFA_HAS_BOTTOM;
        if (v[i] == GNODE_COMPLETE) f |= GDFA_HAS_COMPLETE;
    }
    d->flags[s] = f;
    for (int32_t c = 0; c < d->n_bclass; c++) d->trans[(size_t)s * (size_t)d->n_bclass + (size_t)c] = GDFA_UNKNOWN;
    uint32_t h2 = set_hash(d->pool + o, n) & (d->hcap - 1);
    while (d->htab[h2] >= 0) h2 = (h2 + 1) & (d->hcap - 1);
    d->htab[h2] = s;
    return s;
}

int32_t grammar__dfa_state(gdfa *d, uint32_t node) {
    if (node == UINT32_MAX || d->m.oom) return GDFA_OOM;
    uint32_t v = node;
    return intern(d, &v, 1);
}

int32_t grammar__dfa_state_return(gdfa *d, uint32_t node) {
    if (node == UINT32_MAX || d->m.oom) return GDFA_OOM;
    if (node < 2) return intern(d, &node, 1);
    d->out.n = 0;
    grammar__machine_begin(&d->m);
    if (grammar__machine_expand(&d->m, d->m.pos[node], d->m.parent[node], &d->out) || d->m.oom) return GDFA_OOM;
    return intern(d, d->out.v, d->out.n);
}

int32_t grammar__dfa_step_slow(gdfa *d, int32_t s, unsigned b) {
    int c = d->bclass[b];
    /* consume from a copy: the pool may move while the successor is interned */
    uint32_t o = d->set_off[s], n = d->set_off[s + 1] - o;
    d->tmp.n = 0;
    for (uint32_t i = 0; i < n; i++)
        if (grammar__set_push(&d->tmp, d->pool[o + i])) return GDFA_OOM;
    d->out.n = 0;
    int hit = 0;
    grammar__machine_begin(&d->m);
    if (grammar__machine_consume(&d->m, &d->tmp, d->brep[c], &d->out, &hit) || d->m.oom) return GDFA_OOM;
    int32_t t = intern(d, d->out.v, d->out.n);
    if (t == GDFA_OOM) return t;
    d->trans[(size_t)s * (size_t)d->n_bclass + (size_t)c] = t;
    return t;
}
