/* grammar_cache.c -- compiled grammars by hash of (kind, options, text).
 *
 * Requests repeat the same schema (a client's tool list, a fixed response
 * format); compiling once and sharing the grammar also shares its lazily
 * built mask tables, so later requests start with warm masks. Entries hold
 * one reference each; a hit hands the caller another. Least recently used
 * entries are dropped when the table is full. */
#include "grammar_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct centry {
    uint64_t hash;
    char *key; size_t klen; /* kind byte + options + text */
    grammar *g;
    uint64_t used;
} centry;

struct grammar_cache {
    pthread_mutex_t lock;
    centry *e;
    int32_t cap, n;
    uint64_t tick;
};

grammar_cache *grammar_cache_create(int32_t capacity) {
    grammar_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->cap = capacity > 0 ? capacity : 64;
    c->e = calloc((size_t)c->cap, sizeof *c->e);
    if (!c->e) { free(c); return NULL; }
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void grammar_cache_free(grammar_cache *c) {
    if (!c) return;
    for (int32_t i = 0; i < c->n; i++) { free(c->e[i].key); grammar_release(c->e[i].g); }
    free(c->e);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static grammar *cache_get(grammar_cache *c, char kind, const char *text, size_t len,
                          const grammar_options *opt, int *rc, char *err, size_t errlen) {
    int32_t ws = kind == 's' && opt ? opt->ws_max : 0;
    size_t klen = 1 + sizeof ws + len;
    char *key = malloc(klen);
    if (!key) { if (rc) *rc = GRAMMAR_ERR_NOMEM; return NULL; }
    key[0] = kind;
    memcpy(key + 1, &ws, sizeof ws);
    memcpy(key + 1 + sizeof ws, text, len);
    uint64_t h = fnv(key, klen);
    pthread_mutex_lock(&c->lock);
    for (int32_t i = 0; i < c->n; i++) {
        centry *e = &c->e[i];
        if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen)) {
            e->used = ++c->tick;
            grammar_retain(e->g);
            grammar *g = e->g;
            pthread_mutex_unlock(&c->lock);
            free(key);
            if (rc) *rc = 0;
            return g;
        }
    }
    pthread_mutex_unlock(&c->lock);
    /* compile outside the lock: it may take milliseconds */
    grammar *g = NULL;
    int r = kind == 's' ? grammar_compile_schema(text, len, opt, &g, err, errlen)
                        : grammar_compile_gbnf(text, len, &g, err, errlen);
    if (rc) *rc = r;
    if (r) { free(key); return NULL; }
    pthread_mutex_lock(&c->lock);
    int32_t slot;
    if (c->n < c->cap) slot = c->n++;
    else {
        slot = 0;
        for (int32_t i = 1; i < c->n; i++) if (c->e[i].used < c->e[slot].used) slot = i;
        free(c->e[slot].key);
        grammar_release(c->e[slot].g);
    }
    c->e[slot].hash = h;
    c->e[slot].key = key;
    c->e[slot].klen = klen;
    c->e[slot].g = g;
    c->e[slot].used = ++c->tick;
    grammar_retain(g);
    pthread_mutex_unlock(&c->lock);
    return g;
}

grammar *grammar_cache_get_schema(grammar_cache *c, const char *json, size_t len,
                                  const grammar_options *opt, int *rc, char *err, size_t errlen) {
    return cache_get(c, 's', json, len, opt, rc, err, errlen);
}

grammar *grammar_cache_get_gbnf(grammar_cache *c, const char *text, size_t len, int *rc, char *err, size_t errlen) {
    return cache_get(c, 'g', text, len, NULL, rc, err, errlen);
}
