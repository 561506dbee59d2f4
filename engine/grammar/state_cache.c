/* state_cache.c -- matcher states shared by every matcher of a grammar.
 *
 * A matcher's state is its set of stacks. The same sets come back again
 * and again: every character of a free-text string at one nesting depth
 * leaves the stacks as they were, every element of an array of objects
 * walks the same sets, and a cached schema used by many requests walks its
 * structure each time. Each set met is interned here (its stacks written
 * top to bottom, canonically ordered) with, once computed, its final mask
 * and its successor after each token taken from it. A matcher in a known
 * state then masks by reading the stored mask and advances by one hash
 * lookup, touching a few cache lines instead of the stack machine's arenas
 * and the vocabulary (which the forward pass has evicted by then); it
 * rebuilds its real stacks from the stored ones only on a miss.
 *
 * States and masks are never freed while the grammar lives (matchers hold
 * state ids and mask pointers without the lock); past GSC_MAX_BYTES the
 * cache stops growing and new sets are simply not interned. Everything is
 * under g->lock. */
#include "grammar_internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Memory bound per grammar: states, stacks, masks and transitions. */
#define GSC_MAX_BYTES ((size_t)4 << 20)
/* A stack set written with more words than this is not cached. */
#define GSC_MAX_WORDS 4096

typedef struct gsc_state {
    uint64_t hash;
    uint32_t off, len;     /* its stacks in words[off .. off+len) */
    int32_t complete;
    int32_t count;         /* allowed tokens; -1 while the mask is not stored */
    uint32_t *bits;        /* the mask (n_words), or NULL when ids lists it */
    int32_t *ids;
} gsc_state;

typedef struct gsc_edge { int64_t key; int32_t next; } gsc_edge; /* key state << 32 | token; -1 empty */

/* Masks live in chunks carved by a bump pointer (they are only freed with
 * the cache), mapped with their pages populated. A first run stores a new
 * 6 KB mask (50k vocabulary) at most steps: in fresh pages that was two
 * page faults per step, about 2.7 us each on this kind of machine. The
 * first chunk (1 MB, ~170 masks) is mapped when the tables are built
 * ahead (grammar__state_cache_reserve), later ones (1 MB) when needed:
 * populating costs about as much per page, but in one go and mostly
 * outside the decode steps. (Transparent huge pages were tried: with the
 * kernel's default defrag=madvise one fault could compact memory for
 * milliseconds.) */
typedef struct gsc_chunk { struct gsc_chunk *next; size_t used, cap, maplen; } gsc_chunk;
#define GSC_CHUNK_FIRST ((size_t)1 << 20)
#define GSC_CHUNK ((size_t)1 << 20)

struct gstate_cache {
    gsc_state *st; int32_t n, cap;
    int32_t *htab; uint32_t hcap;       /* state ids by hash, -1 empty */
    uint32_t *words; uint32_t nwords, capwords;
    gsc_edge *edges; uint32_t nedges, capedges;
    gsc_chunk *chunks;     /* newest first */
    size_t bytes;
    int full;
};

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33; h *= 0xff51afd7ed558ccdull; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ull; h ^= h >> 33;
    return h;
}

void grammar__state_cache_free(struct gstate_cache *c) {
    if (!c) return;
    for (gsc_chunk *k = c->chunks, *nx; k; k = nx) { nx = k->next; munmap(k, k->maplen); }
    free(c->st); free(c->htab); free(c->words); free(c->edges);
    free(c);
}

static struct gstate_cache *cache_get(grammar *g) {
    if (!g->sc) {
        struct gstate_cache *c = calloc(1, sizeof *c);
        if (!c) return NULL;
        c->hcap = 256;
        c->htab = malloc(c->hcap * sizeof *c->htab);
        c->capedges = 1024;
        c->edges = malloc(c->capedges * sizeof *c->edges);
        if (!c->htab || !c->edges) { grammar__state_cache_free(c); return NULL; }
        memset(c->htab, 0xFF, c->hcap * sizeof *c->htab);
        for (uint32_t i = 0; i < c->capedges; i++) c->edges[i].key = -1;
        c->bytes = c->hcap * sizeof *c->htab + c->capedges * sizeof *c->edges;
        g->sc = c;
    }
    return g->sc;
}

/* A new chunk with room for at least sz bytes after its header, counted
 * against the bound; NULL when the bound is reached or on OOM. */
static gsc_chunk *chunk_new(struct gstate_cache *c, size_t sz) {
    size_t unit = c->chunks ? GSC_CHUNK : GSC_CHUNK_FIRST;
    size_t len = (sizeof(gsc_chunk) + 32 + sz + unit - 1) / unit * unit;
    if (c->bytes + len > GSC_MAX_BYTES) { c->full = 1; return NULL; }
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE;
#endif
    void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (a == MAP_FAILED) return NULL;
    gsc_chunk *k = (gsc_chunk *)a;
    k->used = 0;
    k->maplen = len;
    k->cap = len - ((sizeof(gsc_chunk) + 31) & ~(size_t)31);
    k->next = c->chunks;
    c->chunks = k;
    c->bytes += len;
    return k;
}

/* sz bytes (32-byte aligned) from c's chunks; NULL when the bound is
 * reached or on OOM. */
static void *chunk_alloc(struct gstate_cache *c, size_t sz) {
    sz = (sz + 31) & ~(size_t)31;
    gsc_chunk *k = c->chunks;
    if ((!k || k->used + sz > k->cap) && !(k = chunk_new(c, sz))) return NULL;
    void *p = (char *)k + ((sizeof(gsc_chunk) + 31) & ~(size_t)31) + k->used;
    k->used += sz;
    return p;
}

void grammar__state_cache_reserve(grammar *g) {
    pthread_mutex_lock(&g->lock);
    struct gstate_cache *c = cache_get(g);
    if (c && !c->chunks && !c->full) {
        chunk_new(c, 1);
    }
    pthread_mutex_unlock(&g->lock);
}

int32_t grammar__state_intern(grammar *g, const uint32_t *w, uint32_t len, uint64_t hash, int complete) {
    if (len > GSC_MAX_WORDS) return -1;
    pthread_mutex_lock(&g->lock);
    int32_t id = -1;
    struct gstate_cache *c = cache_get(g);
    if (!c) goto out;
    uint32_t h = (uint32_t)hash & (c->hcap - 1);
    for (int32_t s; (s = c->htab[h]) >= 0; h = (h + 1) & (c->hcap - 1))
        if (c->st[s].hash == hash && c->st[s].len == len && !memcmp(c->words + c->st[s].off, w, len * sizeof *w)) {
            id = s;
            goto out;
        }
    if (c->full || c->bytes + len * sizeof *w + sizeof(gsc_state) > GSC_MAX_BYTES) { c->full = 1; goto out; }
    if (c->n == c->cap) {
        int32_t nc = c->cap ? c->cap * 2 : 64;
        gsc_state *ns = realloc(c->st, (size_t)nc * sizeof *ns);
        if (!ns) goto out;
        c->st = ns;
        c->bytes += (size_t)(nc - c->cap) * sizeof *ns;
        c->cap = nc;
    }
    if ((uint32_t)(c->n + 1) * 2 > c->hcap) {
        uint32_t nc = c->hcap * 2;
        int32_t *nh = malloc(nc * sizeof *nh);
        if (!nh) goto out;
        memset(nh, 0xFF, nc * sizeof *nh);
        for (int32_t s = 0; s < c->n; s++) {
            uint32_t k = (uint32_t)c->st[s].hash & (nc - 1);
            while (nh[k] >= 0) k = (k + 1) & (nc - 1);
            nh[k] = s;
        }
        free(c->htab);
        c->bytes += (nc - c->hcap) * sizeof *nh;
        c->htab = nh;
        c->hcap = nc;
        h = (uint32_t)hash & (nc - 1);
        while (c->htab[h] >= 0) h = (h + 1) & (nc - 1);
    }
    if (c->nwords + len > c->capwords) {
        uint32_t nc = c->capwords ? c->capwords : 1024;
        while (c->nwords + len > nc) nc *= 2;
        uint32_t *nw = realloc(c->words, nc * sizeof *nw);
        if (!nw) goto out;
        c->bytes += (nc - c->capwords) * sizeof *nw;
        c->words = nw;
        c->capwords = nc;
    }
    memcpy(c->words + c->nwords, w, len * sizeof *w);
    id = c->n++;
    c->st[id] = (gsc_state){hash, c->nwords, len, complete, -1, NULL, NULL};
    c->nwords += len;
    c->htab[h] = id;
out:
    pthread_mutex_unlock(&g->lock);
    return id;
}

int grammar__state_stacks(grammar *g, int32_t s, uint32_t *buf, uint32_t cap, uint32_t *len) {
    pthread_mutex_lock(&g->lock);
    const struct gstate_cache *c = g->sc;
    int rc = -1;
    if (c && s >= 0 && s < c->n && c->st[s].len <= cap) {
        memcpy(buf, c->words + c->st[s].off, c->st[s].len * sizeof *buf);
        *len = c->st[s].len;
        rc = 0;
    }
    pthread_mutex_unlock(&g->lock);
    return rc;
}

int grammar__state_complete(grammar *g, int32_t s) {
    pthread_mutex_lock(&g->lock);
    int r = g->sc && s >= 0 && s < g->sc->n ? g->sc->st[s].complete : 0;
    pthread_mutex_unlock(&g->lock);
    return r;
}

int32_t grammar__state_mask(grammar *g, int32_t s, const uint32_t **bits, const int32_t **ids) {
    pthread_mutex_lock(&g->lock);
    int32_t count = -1;
    const struct gstate_cache *c = g->sc;
    if (c && s >= 0 && s < c->n) {
        count = c->st[s].count;
        *bits = c->st[s].bits;
        *ids = c->st[s].ids;
    }
    pthread_mutex_unlock(&g->lock);
    return count;
}

void grammar__state_set_mask(grammar *g, int32_t s, const uint32_t *mask, int32_t n_words, int32_t count) {
    /* a list when it is smaller than the bitset */
    size_t sz = count * 4 < n_words ? (size_t)(count ? count : 1) * sizeof(int32_t) : (size_t)n_words * sizeof *mask;
    pthread_mutex_lock(&g->lock);
    struct gstate_cache *c = g->sc;
    if (!c || s < 0 || s >= c->n || c->st[s].count >= 0) goto out;
    if (count * 4 < n_words) {
        int32_t *ids = chunk_alloc(c, sz);
        if (!ids) goto out;
        int32_t k = 0;
        for (int32_t wi = 0; wi < n_words; wi++)
            for (uint32_t b = mask[wi]; b; b &= b - 1) ids[k++] = wi * 32 + __builtin_ctz(b);
        c->st[s].ids = ids;
    } else {
        uint32_t *bits = chunk_alloc(c, sz);
        if (!bits) goto out;
        memcpy(bits, mask, sz);
        c->st[s].bits = bits;
    }
    c->st[s].count = count;
out:
    pthread_mutex_unlock(&g->lock);
}

int32_t grammar__state_next(grammar *g, int32_t s, int32_t tok) {
    pthread_mutex_lock(&g->lock);
    int32_t r = -1;
    const struct gstate_cache *c = g->sc;
    if (c) {
        int64_t key = (int64_t)s << 32 | (uint32_t)tok;
        for (uint32_t h = (uint32_t)mix64((uint64_t)key) & (c->capedges - 1); c->edges[h].key >= 0; h = (h + 1) & (c->capedges - 1))
            if (c->edges[h].key == key) { r = c->edges[h].next; break; }
    }
    pthread_mutex_unlock(&g->lock);
    return r;
}

void grammar__state_set_next(grammar *g, int32_t s, int32_t tok, int32_t next) {
    pthread_mutex_lock(&g->lock);
    struct gstate_cache *c = g->sc;
    if (!c || s < 0 || next < 0) goto out;
    if ((c->nedges + 1) * 2 > c->capedges) {
        uint32_t nc = c->capedges * 2;
        if (c->bytes + (size_t)nc * sizeof(gsc_edge) > GSC_MAX_BYTES) { c->full = 1; goto out; }
        gsc_edge *ne = malloc(nc * sizeof *ne);
        if (!ne) goto out;
        for (uint32_t i = 0; i < nc; i++) ne[i].key = -1;
        for (uint32_t i = 0; i < c->capedges; i++) {
            if (c->edges[i].key < 0) continue;
            uint32_t h = (uint32_t)mix64((uint64_t)c->edges[i].key) & (nc - 1);
            while (ne[h].key >= 0) h = (h + 1) & (nc - 1);
            ne[h] = c->edges[i];
        }
        free(c->edges);
        c->bytes += (size_t)(nc - c->capedges) * sizeof *ne;
        c->edges = ne;
        c->capedges = nc;
    }
    int64_t key = (int64_t)s << 32 | (uint32_t)tok;
    uint32_t h = (uint32_t)mix64((uint64_t)key) & (c->capedges - 1);
    while (c->edges[h].key >= 0) {
        if (c->edges[h].key == key) goto out;
        h = (h + 1) & (c->capedges - 1);
    }
    c->edges[h].key = key;
    c->edges[h].next = next;
    c->nedges++;
out:
    pthread_mutex_unlock(&g->lock);
}

uint64_t grammar__state_hash(const uint32_t *w, uint32_t len) {
    uint64_t h = 0x2545F4914F6CDD1Dull ^ len;
    for (uint32_t i = 0; i < len; i++) h = mix64(h ^ w[i]) + i;
    return h;
}
