/* kv_cache.c -- block-list KV storage per sequence (see kv_cache.h). */
#include "kv_cache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct kv_seq {
    int live;
    int32_t len;       /* positions with valid K/V */
    int32_t n_blocks;  /* blocks allocated */
    float **blocks;    /* [max_blocks] */
} kv_seq;

struct kv_cache {
    int32_t n_layer, kv_dim, n_ctx, max_seqs, max_blocks;
    size_t block_floats; /* n_layer * 2 * KV_BLOCK * kv_dim */
    uint64_t n_blocks_total;
    kv_seq *seqs;
};

kv_cache *kv_cache_create(int32_t n_layer, int32_t kv_dim, int32_t n_ctx, int32_t max_seqs) {
    if (n_layer <= 0 || kv_dim <= 0 || n_ctx <= 0 || max_seqs <= 0) return NULL;
    kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return NULL;
    kv->n_layer = n_layer;
    kv->kv_dim = kv_dim;
    kv->n_ctx = n_ctx;
    kv->max_seqs = max_seqs;
    kv->max_blocks = (n_ctx + KV_BLOCK - 1) / KV_BLOCK;
    kv->block_floats = (size_t)n_layer * 2 * KV_BLOCK * (size_t)kv_dim;
    kv->seqs = calloc((size_t)max_seqs, sizeof *kv->seqs);
    if (!kv->seqs) { free(kv); return NULL; }
    for (int32_t i = 0; i < max_seqs; i++) {
        kv->seqs[i].blocks = calloc((size_t)kv->max_blocks, sizeof(float *));
        if (!kv->seqs[i].blocks) { kv_cache_free(kv); return NULL; }
    }
    return kv;
}

static void kv_seq_release_blocks(kv_cache *kv, kv_seq *s, int32_t keep) {
    for (int32_t b = keep; b < s->n_blocks; b++) {
        free(s->blocks[b]);
        s->blocks[b] = NULL;
        kv->n_blocks_total--;
    }
    if (s->n_blocks > keep) s->n_blocks = keep;
}

void kv_cache_free(kv_cache *kv) {
    if (!kv) return;
    if (kv->seqs) {
        for (int32_t i = 0; i < kv->max_seqs; i++) {
            if (!kv->seqs[i].blocks) continue;
            kv_seq_release_blocks(kv, &kv->seqs[i], 0);
            free(kv->seqs[i].blocks);
        }
        free(kv->seqs);
    }
    free(kv);
}

uint64_t kv_cache_bytes_per_token(const kv_cache *kv) {
    return (uint64_t)kv->n_layer * 2 * (uint64_t)kv->kv_dim * sizeof(float);
}

uint64_t kv_cache_bytes_allocated(const kv_cache *kv) {
    return kv->n_blocks_total * kv->block_floats * sizeof(float);
}

void kv_cache_stats_get(const kv_cache *kv, kv_cache_stats *out) {
    memset(out, 0, sizeof *out);
    out->block_tokens = KV_BLOCK;
    out->bytes_per_block = kv->block_floats * sizeof(float);
    out->blocks_total = (int64_t)kv->max_seqs * kv->max_blocks;
    out->blocks_used = (int64_t)kv->n_blocks_total;
    out->bytes_allocated = kv_cache_bytes_allocated(kv);
    for (int32_t i = 0; i < kv->max_seqs; i++)
        if (kv->seqs[i].live) out->bytes_needed += (uint64_t)kv->seqs[i].len * kv_cache_bytes_per_token(kv);
}

int32_t kv_cache_seq_create(kv_cache *kv) {
    for (int32_t i = 0; i < kv->max_seqs; i++) {
        if (kv->seqs[i].live) continue;
        kv->seqs[i].live = 1;
        kv->seqs[i].len = 0;
        return i;
    }
    return -1;
}

int kv_cache_seq_live(const kv_cache *kv, int32_t seq) {
    return seq >= 0 && seq < kv->max_seqs && kv->seqs[seq].live;
}

void kv_cache_seq_free(kv_cache *kv, int32_t seq) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    kv_seq_release_blocks(kv, s, 0);
    s->live = 0;
    s->len = 0;
}

int32_t kv_cache_seq_len(const kv_cache *kv, int32_t seq) {
    return kv_cache_seq_live(kv, seq) ? kv->seqs[seq].len : 0;
}

int kv_cache_seq_reserve(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return -EINVAL;
    if (n < 0 || n > kv->n_ctx) return -ERANGE;
    kv_seq *s = &kv->seqs[seq];
    int32_t need = (n + KV_BLOCK - 1) / KV_BLOCK;
    while (s->n_blocks < need) {
        float *b = malloc(kv->block_floats * sizeof(float));
        if (!b) return -ENOMEM;
        s->blocks[s->n_blocks++] = b;
        kv->n_blocks_total++;
    }
    return 0;
}

void kv_cache_seq_set_len(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    if (n < 0) n = 0;
    if (n > s->n_blocks * KV_BLOCK) n = s->n_blocks * KV_BLOCK;
    s->len = n;
}

void kv_cache_seq_truncate(kv_cache *kv, int32_t seq, int32_t n) {
    if (!kv_cache_seq_live(kv, seq)) return;
    kv_seq *s = &kv->seqs[seq];
    if (n < 0) n = 0;
    if (n >= s->len) return;
    s->len = n;
    kv_seq_release_blocks(kv, s, (n + KV_BLOCK - 1) / KV_BLOCK);
}

int kv_cache_seq_copy(kv_cache *kv, int32_t dst, int32_t src, int32_t n) {
    if (!kv_cache_seq_live(kv, dst) || !kv_cache_seq_live(kv, src)) return -EINVAL;
    if (n < 0 || n > kv->seqs[src].len) return -EINVAL;
    if (dst == src) {
        kv_cache_seq_truncate(kv, dst, n);
        return 0;
    }
    kv_seq *d = &kv->seqs[dst], *s = &kv->seqs[src];
    d->len = 0;
    int rc = kv_cache_seq_reserve(kv, dst, n);
    if (rc) return rc;
    int32_t nb = (n + KV_BLOCK - 1) / KV_BLOCK;
    /* Whole blocks are copied: positions past n inside the last block are
     * garbage either way and never read (len bounds every read). */
    for (int32_t b = 0; b < nb; b++)
        memcpy(d->blocks[b], s->blocks[b], kv->block_floats * sizeof(float));
    kv_seq_release_blocks(kv, d, nb);
    d->len = n;
    return 0;
}

int32_t kv_cache_span(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos,
                      float **k, float **v) {
    const kv_seq *s = &kv->seqs[seq];
    float *blk = s->blocks[pos / KV_BLOCK];
    int32_t off = pos % KV_BLOCK;
    size_t lk = ((size_t)layer * 2 * KV_BLOCK + (size_t)off) * (size_t)kv->kv_dim;
    *k = blk + lk;
    *v = blk + lk + (size_t)KV_BLOCK * (size_t)kv->kv_dim;
    return KV_BLOCK - off;
}
