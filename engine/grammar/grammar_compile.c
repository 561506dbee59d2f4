/* grammar_compile.c -- the stack machine that runs a compiled grammar over
 * bytes, and the grammar object's lifetime.
 *
 * A stack is a chain of nodes (pos, parent): pos is the element to match
 * next (a BYTES element at the top; a return position below), parent the
 * node under it. Nodes are hash-consed, so equal stacks have equal ids and a
 * set of stacks dedupes by id; stacks share their tails (a graph-structured
 * stack). The arena only grows while a step runs and is rolled back (LIFO)
 * by the trie walks, or compacted into a fresh arena after a token is
 * accepted. Expansion follows rule references until every stack's top is a
 * BYTES element; a reference in tail position returns straight to its
 * caller's parent, so repetition loops keep stacks flat. */
#include "grammar_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX
#define MAX_NODES (1u << 26)

static inline uint32_t node_hash(uint32_t pos, uint32_t parent) {
    uint64_t h = ((uint64_t)pos << 32 | parent) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32);
}

int grammar__machine_init(gmachine *m, const grammar *g) {
    memset(m, 0, sizeof *m);
    m->g = g;
    m->cap = 1024;
    m->pos = malloc(m->cap * sizeof *m->pos);
    m->parent = malloc(m->cap * sizeof *m->parent);
    m->hnext = malloc(m->cap * sizeof *m->hnext);
    m->stamp_set = calloc(m->cap, sizeof *m->stamp_set);
    m->stamp_work = calloc(m->cap, sizeof *m->stamp_work);
    m->nbucket = 1024;
    m->bucket = malloc(m->nbucket * sizeof *m->bucket);
    m->capwork = 256;
    m->work = malloc(m->capwork * sizeof *m->work);
    if (!m->pos || !m->parent || !m->hnext || !m->stamp_set || !m->stamp_work || !m->bucket || !m->work) {
        grammar__machine_free(m);
        return -1;
    }
    m->gen = 1;
    grammar__machine_clear(m);
    return 0;
}

void grammar__machine_free(gmachine *m) {
    if (!m) return;
    free(m->pos); free(m->parent); free(m->hnext); free(m->stamp_set); free(m->stamp_work);
    free(m->bucket); free(m->work);
    memset(m, 0, sizeof *m);
}

void grammar__machine_clear(gmachine *m) {
    for (uint32_t i = 0; i < m->nbucket; i++) m->bucket[i] = NONE;
    for (uint32_t i = 0; i < 2; i++) {
        m->pos[i] = NONE; m->parent[i] = NONE; m->hnext[i] = NONE;
        m->stamp_set[i] = 0; m->stamp_work[i] = 0;
    }
    m->n = 2;
    m->oom = 0;
}

void grammar__machine_rollback(gmachine *m, uint32_t n) {
    while (m->n > n) {
        uint32_t i = --m->n;
        m->bucket[node_hash(m->pos[i], m->parent[i]) & (m->nbucket - 1)] = m->hnext[i];
    }
}

static int machine_grow(gmachine *m) {
    if (m->cap >= MAX_NODES) return -1;
    uint32_t nc = m->cap * 2;
    uint32_t *a = realloc(m->pos, nc * sizeof *a); if (!a) return -1; m->pos = a;
    a = realloc(m->parent, nc * sizeof *a); if (!a) return -1; m->parent = a;
    a = realloc(m->hnext, nc * sizeof *a); if (!a) return -1; m->hnext = a;
    a = realloc(m->stamp_set, nc * sizeof *a); if (!a) return -1; m->stamp_set = a;
    a = realloc(m->stamp_work, nc * sizeof *a); if (!a) return -1; m->stamp_work = a;
    m->cap = nc;
    if (m->cap > m->nbucket) {
        /* rehash in creation order so every chain stays newest-first (rollback relies on it) */
        uint32_t nb = m->nbucket * 4;
        uint32_t *b = realloc(m->bucket, nb * sizeof *b);
        if (!b) return -1;
        m->bucket = b;
        m->nbucket = nb;
        for (uint32_t i = 0; i < nb; i++) b[i] = NONE;
        for (uint32_t i = 2; i < m->n; i++) {
            uint32_t h = node_hash(m->pos[i], m->parent[i]) & (nb - 1);
            m->hnext[i] = b[h];
            b[h] = i;
        }
    }
    return 0;
}

uint32_t grammar__machine_node(gmachine *m, uint32_t pos, uint32_t parent) {
    uint32_t h = node_hash(pos, parent) & (m->nbucket - 1);
    for (uint32_t i = m->bucket[h]; i != NONE; i = m->hnext[i])
        if (m->pos[i] == pos && m->parent[i] == parent) return i;
    if (m->n == m->cap) {
        if (machine_grow(m)) { m->oom = 1; return NONE; }
        h = node_hash(pos, parent) & (m->nbucket - 1);
    }
    uint32_t i = m->n++;
    m->pos[i] = pos;
    m->parent[i] = parent;
    m->hnext[i] = m->bucket[h];
    m->bucket[h] = i;
    m->stamp_set[i] = 0;
    m->stamp_work[i] = 0;
    return i;
}

int grammar__set_push(gset *s, uint32_t x) {
    if (s->n == s->cap) {
        uint32_t nc = s->cap ? s->cap * 2 : 16;
        uint32_t *nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) return -1;
        s->v = nv;
        s->cap = nc;
    }
    s->v[s->n++] = x;
    return 0;
}

void grammar__machine_begin(gmachine *m) {
    if (++m->gen == 0) {
        memset(m->stamp_set, 0, m->cap * sizeof *m->stamp_set);
        memset(m->stamp_work, 0, m->cap * sizeof *m->stamp_work);
        m->gen = 1;
    }
}

static int work_push(gmachine *m, uint32_t x) {
    if (x == NONE) return -1;
    if (m->stamp_work[x] == m->gen) return 0;
    m->stamp_work[x] = m->gen;
    if (m->nwork == m->capwork) {
        uint32_t nc = m->capwork * 2;
        uint32_t *nw = realloc(m->work, nc * sizeof *nw);
        if (!nw) return -1;
        m->work = nw;
        m->capwork = nc;
    }
    m->work[m->nwork++] = x;
    return 0;
}

static int out_push(gmachine *m, gset *out, uint32_t x) {
    if (m->stamp_set[x] == m->gen) return 0;
    m->stamp_set[x] = m->gen;
    return grammar__set_push(out, x);
}

int grammar__machine_expand(gmachine *m, uint32_t pos, uint32_t parent, gset *out) {
    const grammar *g = m->g;
    uint32_t start = g->elems[pos].kind == GE_END ? parent : grammar__machine_node(m, pos, parent);
    m->nwork = 0;
    if (work_push(m, start)) return -1;
    while (m->nwork) {
        uint32_t x = m->work[--m->nwork];
        if (x < 2) { if (out_push(m, out, x)) return -1; continue; }
        gelem e = g->elems[m->pos[x]];
        if (e.kind == GE_BYTES) {
            if (out_push(m, out, x)) return -1;
        } else if (e.kind == GE_END) {
            if (work_push(m, m->parent[x])) return -1;
        } else {
            uint32_t nxt = m->pos[x] + 1;
            uint32_t ret = g->elems[nxt].kind == GE_END ? m->parent[x] : grammar__machine_node(m, nxt, m->parent[x]);
            if (ret == NONE) return -1;
            for (int32_t a = g->alt_off[e.arg]; a < g->alt_off[e.arg + 1]; a++) {
                uint32_t s = (uint32_t)g->alt_start[a];
                uint32_t item = g->elems[s].kind == GE_END ? ret : grammar__machine_node(m, s, ret);
                if (work_push(m, item)) return -1;
            }
        }
    }
    return 0;
}

int grammar__machine_start(gmachine *m, gset *out) {
    const grammar *g = m->g;
    grammar__machine_begin(m);
    for (int32_t a = g->alt_off[g->root]; a < g->alt_off[g->root + 1]; a++)
        if (grammar__machine_expand(m, (uint32_t)g->alt_start[a], GNODE_COMPLETE, out)) return -1;
    return 0;
}

int grammar__machine_consume(gmachine *m, const gset *in, unsigned b, gset *out, int *hit_bottom) {
    const grammar *g = m->g;
    for (uint32_t i = 0; i < in->n; i++) {
        uint32_t x = in->v[i];
        if (x < 2) { if (x == GNODE_BOTTOM) *hit_bottom = 1; continue; }
        uint32_t p = m->pos[x];
        if (!gbyteset_has(&g->sets[g->elems[p].arg], b)) continue;
        if (grammar__machine_expand(m, p + 1, m->parent[x], out)) return -1;
    }
    return 0;
}

int grammar__machine_copy(gmachine *dst, const gmachine *src, const gset *in, gset *out) {
    grammar__machine_clear(dst);
    grammar__machine_begin(dst);
    out->n = 0;
    for (uint32_t i = 0; i < in->n; i++) {
        /* collect the chain top..bottom, then intern bottom-up */
        dst->nwork = 0;
        for (uint32_t x = in->v[i]; x >= 2; x = src->parent[x]) {
            if (dst->nwork == dst->capwork) {
                uint32_t nc = dst->capwork * 2;
                uint32_t *nw = realloc(dst->work, nc * sizeof *nw);
                if (!nw) return -1;
                dst->work = nw;
                dst->capwork = nc;
            }
            dst->work[dst->nwork++] = x;
            if (src->parent[x] < 2) break;
        }
        uint32_t id = in->v[i];
        if (id >= 2) {
            uint32_t bottom = dst->work[dst->nwork - 1];
            id = src->parent[bottom];
            for (uint32_t k = dst->nwork; k-- > 0;) {
                id = grammar__machine_node(dst, src->pos[dst->work[k]], id);
                if (id == NONE) return -1;
            }
        }
        if (out_push(dst, out, id)) return -1;
    }
    return 0;
}

/* ---- grammar object ---- */

void grammar_retain(grammar *g) {
    if (g) __atomic_add_fetch(&g->refs, 1, __ATOMIC_RELAXED);
}

void grammar_release(grammar *g) {
    if (!g || __atomic_sub_fetch(&g->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    grammar__mask_free(g);
    free(g->elems); free(g->sets); free(g->alt_off); free(g->alt_start); free(g->pm);
    free(g->elem_rule); free(g->site);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

int32_t grammar_n_rules(const grammar *g) { return g->n_rules; }
int32_t grammar_n_elements(const grammar *g) { return g->n_elems; }

/* ---- growable strings for the GBNF generators ---- */

void grammar__str_putn(gstr *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) { b->oom = 1; return; }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

void grammar__str_puts(gstr *b, const char *s) { grammar__str_putn(b, s, strlen(s)); }

void grammar__str_printf(gstr *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) { grammar__str_putn(b, tmp, (size_t)n); return; }
    char *big = malloc((size_t)n + 1);
    if (!big) { b->oom = 1; return; }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    grammar__str_putn(b, big, (size_t)n);
    free(big);
}

void grammar__str_literal(gstr *b, const char *s, size_t n) {
    grammar__str_putn(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; grammar__str_putn(b, e, 2); }
        else if (c < 0x20 || c == 0x7F) grammar__str_printf(b, "\\x%02X", c);
        else grammar__str_putn(b, (const char *)&s[i], 1);
    }
    grammar__str_putn(b, "\"", 1);
}
