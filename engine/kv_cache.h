/* kv_cache.h -- per-sequence key/value storage for attention.
 *
 * Every sequence owns a list of blocks; a block holds KV_BLOCK consecutive
 * positions for ALL layers, K and V, in f32:
 *     block = [n_layer][2 (K, V)][KV_BLOCK][kv_dim]
 * Blocks are allocated as a sequence grows (kv_cache_seq_reserve, called
 * before a step computes anything) so a long n_ctx costs memory only when it
 * is used. Attention reaches K/V only through kv_cache_span(), which returns
 * pointers to a run of contiguous positions: a paged, prefix-sharing pool can
 * replace this module without touching attention.
 *
 * Not thread-safe for writes; concurrent reads of spans during a step are fine. */
#ifndef QKVD_KV_CACHE_H
#define QKVD_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define KV_BLOCK 64 /* positions per block */

typedef struct kv_cache kv_cache; /* opaque */

/* Create storage for up to max_seqs sequences of at most n_ctx positions,
 * rows of kv_dim floats (n_head_kv * head_dim; K and V alike). NULL on OOM.
 * Owned by the caller: kv_cache_free. */
kv_cache *kv_cache_create(int32_t n_layer, int32_t kv_dim, int32_t n_ctx, int32_t max_seqs);
void kv_cache_free(kv_cache *kv); /* accepts NULL */

/* Bytes of one position (all layers, K and V). */
uint64_t kv_cache_bytes_per_token(const kv_cache *kv);
/* Bytes currently allocated for all sequences. */
uint64_t kv_cache_bytes_allocated(const kv_cache *kv);

/* Occupancy (see engine_kv_stats in engine.h for the meaning of each field). */
typedef struct kv_cache_stats {
    int32_t block_tokens;
    int64_t blocks_total, blocks_used, blocks_cached;
    uint64_t bytes_per_block, bytes_allocated, bytes_needed;
    uint64_t prefix_lookup_tokens, prefix_hit_tokens;
} kv_cache_stats;
void kv_cache_stats_get(const kv_cache *kv, kv_cache_stats *out);

/* A free sequence id >= 0 (length 0), or -1 when max_seqs are live. */
int32_t kv_cache_seq_create(kv_cache *kv);
/* Release the sequence and its blocks; ignores ids that are not live. */
void kv_cache_seq_free(kv_cache *kv, int32_t seq);
/* 1 if seq is a live sequence id. */
int kv_cache_seq_live(const kv_cache *kv, int32_t seq);
/* Positions stored (0 for an id that is not live). */
int32_t kv_cache_seq_len(const kv_cache *kv, int32_t seq);
/* Make room for positions [0, n): allocates blocks. 0, -ENOMEM, -ERANGE
 * (n > n_ctx) or -EINVAL (not live). The length does not change. */
int kv_cache_seq_reserve(kv_cache *kv, int32_t seq, int32_t n);
/* Set the length after a step wrote positions [len, n) (n <= reserved). */
void kv_cache_seq_set_len(kv_cache *kv, int32_t seq, int32_t n);
/* Drop positions >= n and the blocks no longer needed. */
void kv_cache_seq_truncate(kv_cache *kv, int32_t seq, int32_t n);
/* Make dst hold a copy of src's first n positions (dst's old content is
 * dropped). 0 or negative (-EINVAL bad ids / n > len(src), -ENOMEM). */
int kv_cache_seq_copy(kv_cache *kv, int32_t dst, int32_t src, int32_t n);

/* Pointers to the K and V rows of `layer` at position pos (which must be
 * reserved) and the number of positions from pos that are contiguous (rows
 * kv_dim floats apart) -- until the end of pos's block. */
int32_t kv_cache_span(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos,
                      float **k, float **v);

#endif
