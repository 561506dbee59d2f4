/* kv_cache.c -- paged block pool with reference counts, copy-on-write,
 * a chain-hashed prefix cache with LRU eviction, and window/sink dropping
 * (see kv_cache.h). */
#include "kv_cache.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>
#include "quant.h"

typedef struct kv_blk {
    int32_t ref;             /* sequences whose table holds it */
    int32_t lru_prev, lru_next; /* cached (ref 0, registered) blocks, oldest first */
    int32_t hnext;           /* next block in its hash bucket */
    uint8_t registered;      /* in the hash table */
    uint8_t in_lru;
    uint64_t parent;         /* chain hash of the tokens before this block */
    uint64_t hash;           /* chain hash up to this block's end (valid once full) */
} kv_blk;

typedef struct kv_seq {
    int live;
    int tracked;             /* tokens of every position known (blocks may register) */
    int32_t len;             /* next position */
    int32_t n_blocks;        /* logical blocks in the table (dropped ones are -1) */
    int32_t cap;             /* table capacity */
    int32_t *table;
    int32_t n_dropped;       /* WINDOW: blocks freed in the middle */
    int32_t drop_next;       /* WINDOW: next logical block that may be dropped */
    uint64_t salt, chain;    /* chain: hash of every token of the full blocks */
    kv_policy_cfg pol;
} kv_seq;

struct kv_cache {
    int32_t n_layer, kv_dim, n_ctx, max_seqs, bt;
    int32_t group;           /* q8_0: values per scale */
    enum kv_type type;
    int prefix_cache;
    kv_policy_cfg def_pol;
    size_t row_bytes, block_bytes, map_bytes;
    int64_t n_blocks;
    uint8_t *base;           /* mapped pool, n_blocks * block_bytes */
    kv_blk *blk;
    int32_t *toks;           /* [n_blocks][bt] tokens written into each block */
    int32_t *free_stack;     /* free block ids */
    int64_t n_free;
    int32_t lru_head, lru_tail;
    int64_t n_cached;
    int32_t *buckets;        /* hash table heads, n_buckets (power of 2) */
    uint64_t bucket_mask;
    kv_seq *seqs;
    uint64_t lookup_tokens, hit_tokens;
    size_t page;
};

static const char *const type_names[] = {"f32", "f16", "q8_0", "q12_0"};
#define KV_N_TYPES 4
static const char *const policy_names[] = {"full", "window"};

const char *kv_type_name(enum kv_type t) { return (unsigned)t < KV_N_TYPES ? type_names[t] : NULL; }
const char *kv_policy_name(enum kv_policy p) { return (unsigned)p < 2 ? policy_names[p] : NULL; }

int kv_type_from_name(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < KV_N_TYPES; i++)
        if (!strcasecmp(s, type_names[i])) return i;
    if (!strcasecmp(s, "q8")) return KV_Q8_0;
    if (!strcasecmp(s, "q12")) return KV_Q12_0;
    return -1;
}

int kv_policy_from_name(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < 2; i++)
        if (!strcasecmp(s, policy_names[i])) return i;
    return -1;
}

void kv_cache_params_default(kv_cache_params *p, int32_t n_layer, int32_t kv_dim, int32_t n_ctx,
                             int32_t max_seqs) {
    memset(p, 0, sizeof *p);
    p->n_layer = n_layer;
    p->kv_dim = kv_dim;
    p->n_ctx = n_ctx;
    p->max_seqs = max_seqs;
    p->block_tokens = KV_BLOCK;
    p->type = KV_F32;
    p->policy.kind = KV_POLICY_FULL;
    p->prefix_cache = 1;
}

/* Quantised rows: kv_dim int8 values (q8_0: the value; q12_0: its high 8
 * bits), padded to 4 bytes; q12_0 then kv_dim low nibbles (two per byte),
 * padded to 4 bytes; then one scale per group: f32 for q8_0, f16 for q12_0
 * (whose scales would otherwise cost a third of a row for 8-wide heads). */
static size_t kv_pad4(size_t n) { return (n + 3) & ~(size_t)3; }
static size_t kv_lo_off(int32_t kv_dim) { return kv_pad4((size_t)kv_dim); }
static size_t kv_scale_off(enum kv_type t, int32_t kv_dim) {
    return t == KV_Q12_0 ? kv_lo_off(kv_dim) + kv_pad4(((size_t)kv_dim + 1) / 2) : kv_pad4((size_t)kv_dim);
}

static size_t kv_row_bytes(enum kv_type t, int32_t kv_dim, int32_t group) {
    switch (t) {
    case KV_F32: return (size_t)kv_dim * 4;
    case KV_F16: return (size_t)kv_dim * 2;
    case KV_Q8_0: return kv_scale_off(t, kv_dim) + 4 * (size_t)((kv_dim + group - 1) / group);
    case KV_Q12_0: return kv_pad4(kv_scale_off(t, kv_dim) + 2 * (size_t)((kv_dim + group - 1) / group));
    }
    return 0;
}

/* 64-bit mixing (splitmix64 finaliser). */
static uint64_t kv_mix(uint64_t h) {
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

static uint64_t kv_hash_block(uint64_t parent, const int32_t *t, int32_t n) {
    uint64_t h = kv_mix(parent ^ 0x9e3779b97f4a7c15ULL);
    for (int32_t i = 0; i < n; i++) h = kv_mix(h ^ ((uint64_t)(uint32_t)t[i] + 0x632be59bd9b4e019ULL * (uint64_t)(i + 1)));
    return h;
}

/* WINDOW K/V differ from FULL ones past the window: their prefixes never mix. */
static uint64_t kv_policy_salt(const kv_policy_cfg *p) {
    if (p->kind == KV_POLICY_FULL) return 0;
    return kv_mix(((uint64_t)p->kind << 56) ^ ((uint64_t)(uint32_t)p->window << 24) ^ (uint64_t)(uint32_t)p->sinks);
}

static uint64_t kv_seed(uint64_t salt) { return kv_mix(salt + 0x51ed270b27a3f9c1ULL); }

static int32_t kv_q8_group(int32_t head_dim) {
    /* q8_0 scales never straddle two heads: heads narrower than 32 values
     * (whose magnitudes differ) get a scale each. */
    if (head_dim > 0 && head_dim < KV_Q8_GROUP && KV_Q8_GROUP % head_dim == 0) return head_dim;
    return KV_Q8_GROUP;
}

uint64_t kv_cache_plan_bytes_per_token(enum kv_type t, int32_t n_layer, int32_t kv_dim, int32_t head_dim) {
    return (uint64_t)n_layer * 2 * kv_row_bytes(t, kv_dim, kv_q8_group(head_dim));
}

static int kv_params_check(const kv_cache_params *p, char *err, size_t errlen) {
    if (p->n_layer <= 0 || p->kv_dim <= 0 || p->n_ctx <= 0 || p->max_seqs <= 0) {
        snprintf(err, errlen, "KV cache: bad shape (layers %d, kv_dim %d, ctx %d, seqs %d)", p->n_layer,
                 p->kv_dim, p->n_ctx, p->max_seqs);
        return -1;
    }
    if (p->block_tokens > KV_BLOCK_MAX) {
        snprintf(err, errlen, "KV cache: block size %d is above the maximum %d", p->block_tokens, KV_BLOCK_MAX);
        return -1;
    }
    if (!kv_type_name(p->type)) {
        snprintf(err, errlen, "KV cache: unknown element type %d", (int)p->type);
        return -1;
    }
    if (p->policy.kind == KV_POLICY_WINDOW &&
        (p->policy.window < 1 || p->policy.sinks < 0 || (int64_t)p->policy.window + p->policy.sinks > p->n_ctx)) {
        snprintf(err, errlen, "KV cache: window policy needs window >= 1, sinks >= 0 and window + sinks <= context %d (got %d + %d)",
                 p->n_ctx, p->policy.window, p->policy.sinks);
        return -1;
    }
    if (!kv_policy_name(p->policy.kind)) {
        snprintf(err, errlen, "KV cache: unknown policy %d", (int)p->policy.kind);
        return -1;
    }
    return 0;
}

kv_cache *kv_cache_create_params(const kv_cache_params *p, char *err, size_t errlen) {
    char dummy[8];
    if (!err) { err = dummy; errlen = sizeof dummy; }
    if (kv_params_check(p, err, errlen)) return NULL;
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) goto oom;
    kv->n_layer = p->n_layer;
    kv->kv_dim = p->kv_dim;
    kv->n_ctx = p->n_ctx;
    kv->max_seqs = p->max_seqs;
    kv->bt = p->block_tokens > 0 ? p->block_tokens : KV_BLOCK;
    kv->type = p->type;
    kv->prefix_cache = p->prefix_cache;
    kv->def_pol = p->policy;
    kv->group = kv_q8_group(p->head_dim);
    kv->row_bytes = kv_row_bytes(p->type, p->kv_dim, kv->group);
    kv->block_bytes = (size_t)kv->n_layer * 2 * (size_t)kv->bt * kv->row_bytes;
    long pg = sysconf(_SC_PAGESIZE);
    kv->page = pg > 0 ? (size_t)pg : 4096;
    uint64_t budget = p->memory_bytes;
    int64_t nb;
    if (budget == 0) {
        int64_t per_seq = (p->n_ctx + kv->bt - 1) / kv->bt;
        nb = per_seq * p->max_seqs + p->max_seqs; /* + one copy-on-write block per sequence */
    } else {
        nb = (int64_t)(budget / kv->block_bytes);
    }
    if (nb > INT32_MAX / 2) nb = INT32_MAX / 2;
    if (nb < 2) {
        snprintf(err, errlen, "KV cache: memory budget %llu bytes holds %lld blocks of %zu bytes (%d tokens); at least 2 are needed",
                 (unsigned long long)budget, (long long)nb, kv->block_bytes, kv->bt);
        free(kv);
        return NULL;
    }
    kv->n_blocks = nb;
    kv->map_bytes = (size_t)nb * kv->block_bytes;
    /* Reserved address space only: pages become memory when a block is
     * first written, and go back to the OS when it is freed. */
    void *m = mmap(NULL, kv->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "KV cache: cannot map %zu bytes for %lld blocks", kv->map_bytes, (long long)nb);
        free(kv);
        return NULL;
    }
    kv->base = m;
    kv->blk = calloc((size_t)nb, sizeof *kv->blk);
    kv->toks = calloc((size_t)nb * (size_t)kv->bt, sizeof(int32_t));
    kv->free_stack = malloc((size_t)nb * sizeof(int32_t));
    uint64_t nbk = 1;
    while (nbk < (uint64_t)nb) nbk <<= 1;
    kv->buckets = malloc(nbk * sizeof(int32_t));
    kv->bucket_mask = nbk - 1;
    kv->seqs = calloc((size_t)p->max_seqs, sizeof *kv->seqs);
    if (!kv->blk || !kv->toks || !kv->free_stack || !kv->buckets || !kv->seqs) {
        kv_cache_free(kv);
        goto oom;
    }
    for (uint64_t i = 0; i < nbk; i++) kv->buckets[i] = -1;
    /* Lowest ids on top: the pool fills from the start of the mapping. */
    for (int64_t i = 0; i < nb; i++) kv->free_stack[i] = (int32_t)(nb - 1 - i);
    kv->n_free = nb;
    kv->lru_head = kv->lru_tail = -1;
    return kv;
oom:
    snprintf(err, errlen, "KV cache: out of memory");
    return NULL;
}

kv_cache *kv_cache_create(int32_t n_layer, int32_t kv_dim, int32_t n_ctx, int32_t max_seqs) {
    kv_cache_params p;
    kv_cache_params_default(&p, n_layer, kv_dim, n_ctx, max_seqs);
    return kv_cache_create_params(&p, NULL, 0);
}

void kv_cache_free(kv_cache *kv) {
    if (!kv) return;
    if (kv->seqs)
        for (int32_t i = 0; i < kv->max_seqs; i++) free(kv->seqs[i].table);
    free(kv->seqs);
    if (kv->base) munmap(kv->base, kv->map_bytes);
    free(kv->blk);
    free(kv->toks);
    free(kv->free_stack);
    free(kv->buckets);
    free(kv);
}

uint64_t kv_cache_bytes_per_token(const kv_cache *kv) {
    return (uint64_t)kv->n_layer * 2 * (uint64_t)kv->row_bytes;
}

uint64_t kv_cache_bytes_allocated(const kv_cache *kv) {
    return (uint64_t)(kv->n_blocks - kv->n_free) * kv->block_bytes;
}

/* Bytes of [s, e) of the pool the OS has backed with memory. */
static uint64_t kv_range_resident(const kv_cache *kv, size_t s, size_t e) {
    const size_t pg = kv->page, p0 = s / pg, p1 = (e + pg - 1) / pg;
    unsigned char vec[256];
    uint64_t bytes = 0;
    for (size_t p = p0; p < p1; p += sizeof vec) {
        size_t n = p1 - p < sizeof vec ? p1 - p : sizeof vec;
        if (mincore(kv->base + p * pg, n * pg, vec) != 0) return e - s; /* unknown: count it all */
        for (size_t k = 0; k < n; k++) {
            if (!(vec[k] & 1)) continue;
            size_t a = (p + k) * pg > s ? (p + k) * pg : s, b = (p + k + 1) * pg < e ? (p + k + 1) * pg : e;
            bytes += b - a;
        }
    }
    return bytes;
}

uint64_t kv_cache_bytes_resident(const kv_cache *kv) {
    /* Blocks every row of which a live sequence has written are resident
     * whole; only the others (each sequence's last, partly filled block)
     * are measured, so this stays a few syscalls per step. */
    uint8_t *full = calloc((size_t)kv->n_blocks, 1);
    if (!full) return kv_cache_bytes_allocated(kv);
    for (int32_t i = 0; i < kv->max_seqs; i++) {
        const kv_seq *q = &kv->seqs[i];
        if (!q->live) continue;
        for (int32_t b = 0; b < q->n_blocks && (int64_t)(b + 1) * kv->bt <= q->len; b++)
            if (q->table[b] >= 0) full[q->table[b]] = 1;
    }
    uint64_t bytes = 0;
    for (int64_t id = 0; id < kv->n_blocks; id++) {
        if (kv->blk[id].ref <= 0) continue;
        size_t s = (size_t)id * kv->block_bytes;
        bytes += full[id] ? kv->block_bytes : kv_range_resident(kv, s, s + kv->block_bytes);
    }
    free(full);
    return bytes;
}

int32_t kv_cache_block_tokens(const kv_cache *kv) { return kv->bt; }
enum kv_type kv_cache_type(const kv_cache *kv) { return kv->type; }
int64_t kv_cache_blocks_total(const kv_cache *kv) { return kv->n_blocks; }
int64_t kv_cache_blocks_available(const kv_cache *kv) { return kv->n_free + kv->n_cached; }

static uint8_t *kv_block_data(const kv_cache *kv, int32_t id) {
    return kv->base + (size_t)id * kv->block_bytes;
}

/* ---- hash table and LRU ---- */

static void kv_lru_remove(kv_cache *kv, int32_t id) {
    kv_blk *b = &kv->blk[id];
    if (!b->in_lru) return;
    if (b->lru_prev >= 0) kv->blk[b->lru_prev].lru_next = b->lru_next; else kv->lru_head = b->lru_next;
    if (b->lru_next >= 0) kv->blk[b->lru_next].lru_prev = b->lru_prev; else kv->lru_tail = b->lru_prev;
    b->in_lru = 0;
    kv->n_cached--;
}

static void kv_lru_push(kv_cache *kv, int32_t id) {
    kv_blk *b = &kv->blk[id];
    b->lru_prev = kv->lru_tail;
    b->lru_next = -1;
    if (kv->lru_tail >= 0) kv->blk[kv->lru_tail].lru_next = id; else kv->lru_head = id;
    kv->lru_tail = id;
    b->in_lru = 1;
    kv->n_cached++;
}

static void kv_unregister(kv_cache *kv, int32_t id) {
    kv_blk *b = &kv->blk[id];
    if (!b->registered) return;
    int32_t *pp = &kv->buckets[b->hash & kv->bucket_mask];
    while (*pp >= 0 && *pp != id) pp = &kv->blk[*pp].hnext;
    if (*pp == id) *pp = b->hnext;
    b->registered = 0;
    b->hnext = -1;
}

static int32_t kv_find(const kv_cache *kv, uint64_t hash, uint64_t parent, const int32_t *t) {
    for (int32_t id = kv->buckets[hash & kv->bucket_mask]; id >= 0; id = kv->blk[id].hnext) {
        const kv_blk *b = &kv->blk[id];
        if (b->hash == hash && b->parent == parent &&
            !memcmp(kv->toks + (size_t)id * kv->bt, t, (size_t)kv->bt * sizeof(int32_t)))
            return id;
    }
    return -1;
}

static void kv_register(kv_cache *kv, int32_t id) {
    kv_blk *b = &kv->blk[id];
    if (b->registered || !kv->prefix_cache) return;
    /* An identical block already cached (another sequence computed the same
     * prefix): keep that one; this one is freed with its sequence. */
    if (kv_find(kv, b->hash, b->parent, kv->toks + (size_t)id * kv->bt) >= 0) return;
    int32_t *head = &kv->buckets[b->hash & kv->bucket_mask];
    b->hnext = *head;
    *head = id;
    b->registered = 1;
}

/* ---- block allocation ---- */

static void kv_block_release_memory(kv_cache *kv, int32_t id) {
    uintptr_t s = (uintptr_t)kv_block_data(kv, id), e = s + kv->block_bytes;
    uintptr_t ps = (s + kv->page - 1) & ~(uintptr_t)(kv->page - 1), pe = e & ~(uintptr_t)(kv->page - 1);
    if (pe > ps) madvise((void *)ps, pe - ps, MADV_DONTNEED);
}

/* A block with ref 1, or -1 when the pool is exhausted. Evicts the least
 * recently used cached block when nothing is free. */
static int32_t kv_block_alloc(kv_cache *kv) {
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_stack[--kv->n_free];
    } else if (kv->lru_head >= 0) {
        id = kv->lru_head;
        kv_lru_remove(kv, id);
        kv_unregister(kv, id);
    } else {
        return -1;
    }
    kv_blk *b = &kv->blk[id];
    b->ref = 1;
    b->registered = 0;
    b->in_lru = 0;
    b->hnext = -1;
    b->parent = b->hash = 0;
    return id;
}

static void kv_block_ref(kv_cache *kv, int32_t id) {
    if (kv->blk[id].ref++ == 0) kv_lru_remove(kv, id);
}

static void kv_block_unref(kv_cache *kv, int32_t id) {
    kv_blk *b = &kv->blk[id];
    if (--b->ref > 0) return;
    if (b->registered) {
        kv_lru_push(kv, id); /* stays cached for prefix reuse */
    } else {
        kv_block_release_memory(kv, id);
        kv->free_stack[kv->n_free++] = id;
    }
}

/* ---- sequences ---- */

void kv_cache_stats_get(const kv_cache *kv, kv_cache_stats *out) {
    memset(out, 0, sizeof *out);
    out->block_tokens = kv->bt;
    out->bytes_per_block = kv->block_bytes;
    out->blocks_total = kv->n_blocks;
    out->blocks_cached = kv->n_cached;
    out->blocks_used = kv->n_blocks - kv->n_free - kv->n_cached;
    out->bytes_allocated = kv_cache_bytes_allocated(kv);
    out->bytes_resident = kv_cache_bytes_resident(kv);
    for (int32_t i = 0; i < kv->max_seqs; i++)
        if (kv->seqs[i].live) out->bytes_needed += (uint64_t)kv_cache_seq_held(kv, i) * kv_cache_bytes_per_token(kv);
    out->prefix_lookup_tokens = kv->lookup_tokens;
    out->prefix_hit_tokens = kv->hit_tokens;
}

int kv_cache_seq_live(const kv_cache *kv, int32_t seq) {
    return seq >= 0 && seq < kv->max_seqs && kv->seqs[seq].live;
}

int32_t kv_cache_seq_create(kv_cache *kv) {
    for (int32_t i = 0; i < kv->max_seqs; i++) {
        kv_seq *s = &kv->seqs[i];
        if (s->live) continue;
        s->live = 1;
        s->tracked = 1;
        s->len = 0;
        s->n_blocks = 0;
        s->n_dropped = 0;
        s->drop_next = 0;
        s->pol = kv->def_pol;
        s->salt = kv_policy_salt(&kv->def_pol);
        s->chain = kv_seed(s->salt);
        return i;
    }
    return -1;
}

/* Drop the table entries from logical block `keep` on. Last block first:
 * cached blocks enter the LRU deepest first, so eviction takes the ends of
 * chains before the prefixes they hang from (a chain's head evicted first
 * would leave its tail unreachable). */
static void kv_seq_release(kv_cache *kv, kv_seq *s, int32_t keep) {
    for (int32_t b = s->n_blocks - 1; b >= keep; b--) {
        if (s->table[b] >= 0) kv_block_unref(kv, s->table[b]);
        else s->n_dropped--;
        s->table[b] = -1;
    }
    if (s->n_blocks > keep) s->n_blocks = keep;
    if (s->drop_next > keep) s->drop_next = keep;
}

void kv_cache_seq_free(kv_cache *kv, int32_t seq) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    kv_seq_release(kv, s, 0);
    s->n_dropped = 0;
    s->live = 0;
    s->len = 0;
}

int32_t kv_cache_seq_len(const kv_cache *kv, int32_t seq) {
    return kv_cache_seq_live(kv, seq) ? kv->seqs[seq].len : 0;
}

int32_t kv_cache_seq_held(const kv_cache *kv, int32_t seq) {
    if (!kv_cache_seq_live(kv, seq)) return 0;
    const kv_seq *s = &kv->seqs[seq];
    return s->len - s->n_dropped * kv->bt;
}

int kv_cache_seq_set_policy(kv_cache *kv, int32_t seq, const kv_policy_cfg *p, uint64_t salt) {
    if (!kv_cache_seq_live(kv, seq) || !p || !kv_policy_name(p->kind)) return -EINVAL;
    if (p->kind == KV_POLICY_WINDOW && (p->window < 1 || p->sinks < 0 || (int64_t)p->window + p->sinks > kv->n_ctx))
        return -EINVAL;
    kv_seq *s = &kv->seqs[seq];
    if (s->len || s->n_blocks) return -EBUSY;
    s->pol = *p;
    s->salt = salt ^ kv_policy_salt(p);
    s->chain = kv_seed(salt);
    return 0;
}

kv_policy_cfg kv_cache_seq_policy(const kv_cache *kv, int32_t seq) {
    return kv_cache_seq_live(kv, seq) ? kv->seqs[seq].pol : kv->def_pol;
}

int32_t kv_cache_seq_max_len(const kv_cache *kv, int32_t seq) {
    if (kv_cache_seq_live(kv, seq) && kv->seqs[seq].pol.kind == KV_POLICY_WINDOW) return INT32_MAX / 2;
    return kv->n_ctx;
}

static int kv_seq_grow_table(kv_seq *s, int32_t need) {
    if (need <= s->cap) return 0;
    int32_t cap = s->cap ? s->cap : 16;
    while (cap < need) cap = cap > INT32_MAX / 2 ? need : cap * 2;
    int32_t *t = realloc(s->table, (size_t)cap * sizeof(int32_t));
    if (!t) return -ENOMEM;
    for (int32_t i = s->cap; i < cap; i++) t[i] = -1;
    s->table = t;
    s->cap = cap;
    return 0;
}

static void kv_seq_drop_window(kv_cache *kv, kv_seq *s);

int32_t kv_cache_seq_attach_prefix(kv_cache *kv, int32_t seq, const int32_t *tokens, int32_t n) {
    if (!kv_cache_seq_live(kv, seq) || !tokens || n <= 0) return 0;
    kv_seq *s = &kv->seqs[seq];
    if (s->len || s->n_blocks || !s->tracked) return 0;
    kv->lookup_tokens += (uint64_t)n;
    if (!kv->prefix_cache) return 0;
    int32_t max_blocks = n / kv->bt;
    if (max_blocks > 0 && kv_seq_grow_table(s, max_blocks)) return 0;
    uint64_t chain = s->chain;
    int32_t nb = 0;
    for (; nb < max_blocks; nb++) {
        const int32_t *t = tokens + (size_t)nb * kv->bt;
        uint64_t h = kv_hash_block(chain, t, kv->bt);
        int32_t id = kv_find(kv, h, chain, t);
        if (id < 0) break;
        kv_block_ref(kv, id);
        s->table[nb] = id;
        chain = h;
    }
    if (nb == 0) return 0;
    s->n_blocks = nb;
    int32_t reused = nb * kv->bt;
    if (reused > n - 1) {
        /* Recompute the last token so its logits exist: the last block is
         * shared up to n - 1 and copied (or taken over) when written. */
        reused = n - 1;
        s->chain = kv->blk[s->table[nb - 1]].parent;
    } else {
        s->chain = chain;
    }
    s->len = reused;
    kv->hit_tokens += (uint64_t)reused;
    kv_seq_drop_window(kv, s); /* WINDOW: the attached middle is not needed */
    return reused;
}

int64_t kv_cache_seq_blocks_needed(const kv_cache *kv, int32_t seq, int32_t n_new) {
    if (!kv_cache_seq_live(kv, seq) || n_new <= 0) return 0;
    const kv_seq *s = &kv->seqs[seq];
    int64_t need = ((int64_t)s->len + n_new + kv->bt - 1) / kv->bt - s->n_blocks;
    if (need < 0) need = 0;
    if (s->len % kv->bt && s->len / kv->bt < s->n_blocks) {
        int32_t id = s->table[s->len / kv->bt];
        if (id >= 0 && kv->blk[id].ref > 1) need++;
    }
    return need;
}

int kv_cache_seq_reserve(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return -EINVAL;
    if (n < 0 || n > kv_cache_seq_max_len(kv, seq)) return -ERANGE;
    kv_seq *s = &kv->seqs[seq];
    int32_t need = (int32_t)(((int64_t)n + kv->bt - 1) / kv->bt);
    if (kv_seq_grow_table(s, need)) return -ENOMEM;
    if (n > s->len && s->len / kv->bt < s->n_blocks) {
        /* The block about to be written already exists (partial). */
        int32_t b = s->len / kv->bt, id = s->table[b];
        if (id >= 0 && kv->blk[id].ref > 1) {
            int32_t nid = kv_block_alloc(kv);
            if (nid < 0) return -ENOMEM;
            memcpy(kv_block_data(kv, nid), kv_block_data(kv, id), kv->block_bytes);
            memcpy(kv->toks + (size_t)nid * kv->bt, kv->toks + (size_t)id * kv->bt, (size_t)kv->bt * sizeof(int32_t));
            kv->blk[nid].parent = kv->blk[id].parent;
            kv_block_unref(kv, id);
            s->table[b] = nid;
        } else if (id >= 0) {
            /* Only we hold it: its cached content is about to change. */
            kv_unregister(kv, id);
        }
    }
    while (s->n_blocks < need) {
        int32_t id = kv_block_alloc(kv);
        if (id < 0) return -ENOMEM;
        s->table[s->n_blocks++] = id;
    }
    return 0;
}

/* WINDOW: free the blocks past the sinks that no query from len on can see
 * (every position p of the block has len - p >= window). */
static void kv_seq_drop_window(kv_cache *kv, kv_seq *s) {
    if (s->pol.kind != KV_POLICY_WINDOW) return;
    int32_t first = (s->pol.sinks + kv->bt - 1) / kv->bt;
    if (s->drop_next < first) s->drop_next = first;
    while (s->drop_next < s->n_blocks && (int64_t)(s->drop_next + 1) * kv->bt <= (int64_t)s->len - s->pol.window) {
        int32_t b = s->drop_next++;
        if (s->table[b] < 0) continue;
        kv_block_unref(kv, s->table[b]);
        s->table[b] = -1;
        s->n_dropped++;
    }
}

void kv_cache_seq_commit(kv_cache *kv, int32_t seq, const int32_t *tokens, int32_t n) {
    if (!kv_cache_seq_live(kv, seq) || n <= 0) return;
    kv_seq *s = &kv->seqs[seq];
    if ((int64_t)s->len + n > (int64_t)s->n_blocks * kv->bt) n = s->n_blocks * kv->bt - s->len;
    if (!tokens) s->tracked = 0;
    for (int32_t j = 0; j < n && s->tracked; j++) {
        int32_t p = s->len + j, b = p / kv->bt, off = p % kv->bt;
        int32_t id = s->table[b];
        if (id < 0) continue;
        if (off == 0) kv->blk[id].parent = s->chain;
        kv->toks[(size_t)id * kv->bt + off] = tokens[j];
        if (off == kv->bt - 1) {
            kv_blk *bk = &kv->blk[id];
            bk->hash = kv_hash_block(bk->parent, kv->toks + (size_t)id * kv->bt, kv->bt);
            s->chain = bk->hash;
            kv_register(kv, id);
        }
    }
    s->len += n;
    kv_seq_drop_window(kv, s);
}

void kv_cache_seq_set_len(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    if (n <= s->len) {
        kv_cache_seq_truncate(kv, seq, n);
        return;
    }
    kv_cache_seq_commit(kv, seq, NULL, n - s->len);
}

void kv_cache_seq_truncate(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    if (n < 0) n = 0;
    if (n >= s->len) return;
    /* WINDOW: a shorter sequence would see blocks already dropped again
     * (its window reaches further back): those are gone, start over. */
    for (int32_t b = 0; b < s->n_blocks && n > 0; b++)
        if (s->table[b] < 0 && (int64_t)(b + 1) * kv->bt > (int64_t)n - s->pol.window + 1) n = 0;
    kv_seq_release(kv, s, (n + kv->bt - 1) / kv->bt);
    s->len = n;
    if (n == 0) {
        s->tracked = 1;
        s->n_dropped = 0;
        s->drop_next = 0;
        s->chain = kv_seed(s->salt);
        return;
    }
    int32_t b = n / kv->bt;
    if (n % kv->bt) {
        if (s->table[b] >= 0) s->chain = kv->blk[s->table[b]].parent;
        else s->tracked = 0;
    } else if (s->table[b - 1] >= 0) {
        s->chain = kv->blk[s->table[b - 1]].hash;
    } else {
        s->tracked = 0;
    }
}

int kv_cache_seq_copy(kv_cache *kv, int32_t dst, int32_t src, int32_t n) {
    if (!kv_cache_seq_live(kv, dst) || !kv_cache_seq_live(kv, src)) return -EINVAL;
    kv_seq *s = &kv->seqs[src];
    if (n < 0 || n > s->len || (s->n_dropped && n != s->len)) return -EINVAL;
    if (dst == src) {
        kv_cache_seq_truncate(kv, dst, n);
        return 0;
    }
    kv_seq *d = &kv->seqs[dst];
    int32_t nb = (n + kv->bt - 1) / kv->bt;
    if (kv_seq_grow_table(d, nb)) return -ENOMEM;
    kv_seq_release(kv, d, 0);
    d->n_dropped = 0;
    d->drop_next = 0;
    for (int32_t b = 0; b < nb; b++) {
        d->table[b] = s->table[b];
        if (s->table[b] >= 0) kv_block_ref(kv, s->table[b]);
        else d->n_dropped++;
    }
    if (s->n_dropped) d->drop_next = s->drop_next;
    d->n_blocks = nb;
    d->len = n;
    d->pol = s->pol;
    d->salt = s->salt;
    d->tracked = s->tracked;
    if (n == 0) d->chain = kv_seed(d->salt);
    else if (n % kv->bt) d->chain = kv->blk[d->table[n / kv->bt]].parent;
    else d->chain = n == s->len ? s->chain : kv->blk[d->table[n / kv->bt - 1]].hash;
    return 0;
}

/* ---- element access ---- */

static uint8_t *kv_row(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, int vsel) {
    const kv_seq *s = &kv->seqs[seq];
    int32_t id = s->table[pos / kv->bt];
    size_t off = (((size_t)layer * 2 + (size_t)vsel) * (size_t)kv->bt + (size_t)(pos % kv->bt)) * kv->row_bytes;
    return kv_block_data(kv, id) + off;
}

int32_t kv_cache_span_get(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, kv_span *out) {
    out->type = kv->type;
    out->stride = kv->row_bytes;
    out->scale_off = kv_scale_off(kv->type, kv->kv_dim);
    out->lo_off = kv_lo_off(kv->kv_dim);
    out->group = kv->group;
    out->k = kv_row(kv, seq, layer, pos, 0);
    out->v = kv_row(kv, seq, layer, pos, 1);
    out->n = kv->bt - pos % kv->bt;
    return out->n;
}

int32_t kv_cache_span(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, float **k, float **v) {
    if (kv->type != KV_F32) return 0;
    kv_span sp;
    kv_cache_span_get(kv, seq, layer, pos, &sp);
    *k = (float *)sp.k;
    *v = (float *)sp.v;
    return sp.n;
}

/* q8_0 (qmax 127) and q12_0 (qmax 2047) rows: integers in [-qmax, qmax]
 * times a scale per group. q12_0 keeps the high 8 bits (arithmetic shift)
 * in the int8 plane and the low 4 bits in the nibble plane, so
 * value = (hi * 16 + lo) * scale. */
static void kv_q_store(uint8_t *row, const float *x, int32_t n, int32_t group, enum kv_type t) {
    const float qmax = t == KV_Q12_0 ? 2047.0f : 127.0f;
    int8_t *q = (int8_t *)row;
    uint8_t *lo = row + kv_lo_off(n);
    float *d = (float *)(row + kv_scale_off(t, n));
    uint16_t *d16 = (uint16_t *)(row + kv_scale_off(t, n));
    for (int32_t g = 0; g * group < n; g++) {
        int32_t i0 = g * group, i1 = i0 + group < n ? i0 + group : n;
        float amax = 0;
        for (int32_t i = i0; i < i1; i++) amax = fmaxf(amax, fabsf(x[i]));
        /* The scale with the least squared error among a few at or just
         * below amax / qmax (clipping the largest value by less than half a
         * step can pay off for the rest of the group). */
        float best_sc = amax / qmax, best_err = INFINITY;
        for (int32_t k = 0; k < 8 && amax > 0; k++) {
            float sc = amax / (qmax + 0.125f * (float)k), inv = 1.0f / sc, err = 0;
            for (int32_t i = i0; i < i1; i++) {
                float r = fminf(fmaxf(rintf(x[i] * inv), -qmax), qmax);
                float e = x[i] - r * sc;
                err += e * e;
            }
            if (err < best_err) { best_err = err; best_sc = sc; }
        }
        if (t == KV_Q12_0) {
            /* The values are quantised against the f16 scale actually
             * stored, rounded up (a smaller one would clip the largest
             * value by up to two steps). */
            uint16_t h = quant_fp32_to_fp16(best_sc);
            if (quant_fp16_to_fp32(h) < best_sc && h < 0x7bff) h++;
            d16[g] = h;
            best_sc = quant_fp16_to_fp32(h);
        } else {
            d[g] = best_sc;
        }
        float inv = best_sc > 0 ? 1.0f / best_sc : 0.0f;
        for (int32_t i = i0; i < i1; i++) {
            int32_t r = (int32_t)fminf(fmaxf(rintf(x[i] * inv), -qmax), qmax);
            if (t != KV_Q12_0) {
                q[i] = (int8_t)r;
                continue;
            }
            q[i] = (int8_t)(r >> 4); /* floor: r = q * 16 + (r & 15) */
            uint8_t nib = (uint8_t)(r & 15);
            lo[i / 2] = i % 2 ? (uint8_t)((lo[i / 2] & 0x0f) | nib << 4) : (uint8_t)((lo[i / 2] & 0xf0) | nib);
        }
    }
}

static void kv_store_row(const kv_cache *kv, uint8_t *row, const float *x) {
    switch (kv->type) {
    case KV_F32: memcpy(row, x, (size_t)kv->kv_dim * sizeof(float)); break;
    case KV_F16: {
        uint16_t *h = (uint16_t *)row;
        for (int32_t i = 0; i < kv->kv_dim; i++) h[i] = quant_fp32_to_fp16(x[i]);
        break;
    }
    case KV_Q8_0:
    case KV_Q12_0: kv_q_store(row, x, kv->kv_dim, kv->group, kv->type); break;
    }
}

void kv_cache_store(kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, const float *k, const float *v) {
    kv_store_row(kv, kv_row(kv, seq, layer, pos, 0), k);
    kv_store_row(kv, kv_row(kv, seq, layer, pos, 1), v);
}

/* AVX2/F16C conversions (kv_cache_avx2.c), used after a CPU check. */
void kv__f16_to_f32_avx2(const uint16_t *src, float *dst, int32_t n);
void kv__q8_to_f32_avx2(const int8_t *q, const float *d, int32_t group, int32_t col0, int32_t n, float *dst);
void kv__q12_to_f32_avx2(const int8_t *q, const uint8_t *lo, const uint16_t *d, int32_t group, int32_t col0,
                         int32_t n, float *dst);

static int kv_has_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
        cached = 0;
#endif
    }
    return cached;
}

void kv_span_rows_f32(const kv_span *sp, const uint8_t *rows, int32_t n_rows, int32_t col0, int32_t n_cols,
                      float *dst) {
    const int simd = kv_has_avx2();
    for (int32_t r = 0; r < n_rows; r++) {
        const uint8_t *row = rows + (size_t)r * sp->stride;
        float *o = dst + (size_t)r * n_cols;
        switch (sp->type) {
        case KV_F32: memcpy(o, (const float *)row + col0, (size_t)n_cols * sizeof(float)); break;
        case KV_F16:
            if (simd) kv__f16_to_f32_avx2((const uint16_t *)row + col0, o, n_cols);
            else
                for (int32_t c = 0; c < n_cols; c++) o[c] = quant_fp16_to_fp32(((const uint16_t *)row)[col0 + c]);
            break;
        case KV_Q8_0: {
            const int8_t *q = (const int8_t *)row;
            const float *d = (const float *)(row + sp->scale_off);
            if (simd) {
                kv__q8_to_f32_avx2(q, d, sp->group, col0, n_cols, o);
                break;
            }
            for (int32_t c = 0; c < n_cols; c++) o[c] = (float)q[col0 + c] * d[(col0 + c) / sp->group];
            break;
        }
        case KV_Q12_0: {
            const int8_t *q = (const int8_t *)row;
            const uint8_t *lo = row + sp->lo_off;
            const uint16_t *d = (const uint16_t *)(row + sp->scale_off);
            if (simd) {
                kv__q12_to_f32_avx2(q, lo, d, sp->group, col0, n_cols, o);
                break;
            }
            for (int32_t c = 0; c < n_cols; c++) {
                int32_t i = col0 + c;
                int32_t r = q[i] * 16 + ((lo[i / 2] >> (4 * (i % 2))) & 15);
                o[c] = (float)r * quant_fp16_to_fp32(d[i / sp->group]);
            }
            break;
        }
        }
    }
}
