/* kv_cache.h -- paged, prefix-sharing key/value storage for attention.
 *
 * One pool of fixed-size blocks shared by all sequences. A block holds
 * block_tokens consecutive positions of ALL layers, K and V:
 *     block = [n_layer][2 (K, V)][block_tokens][row]
 * where a row is kv_dim values (n_head_kv * head_dim) in the cache's element
 * type: f32, f16, q8_0 (kv_dim int8 values, padded to 4 bytes, followed by
 * one f32 scale per 32 values -- per head when heads are narrower than 32),
 * or q12_0 (12-bit integers: kv_dim int8 high parts padded to 4 bytes, kv_dim
 * low nibbles padded to 4 bytes, then one f16 scale per group as q8_0's,
 * padded to 4 bytes). The pool's size is a memory budget; block
 * memory is mapped lazily and given back to the OS when a block is freed, so
 * the memory actually held follows what sequences use.
 *
 * Every sequence owns a block table (logical block -> pool block). Blocks
 * carry reference counts: n > 1 choices and prefix reuse share blocks, and the
 * first write into a shared block copies it (copy-on-write).
 *
 * Prefix cache: when a block fills, it is keyed by a chain hash of every token
 * up to its end, hash_b = H(hash_{b-1}, tokens of b) (seeded by the
 * sequence's salt, so K/V computed under different attention policies never
 * mix). A new sequence attaches the longest cached chain of blocks
 * (kv_cache_seq_attach_prefix). Blocks nobody references stay cached in an
 * LRU list and are evicted only when a block is needed and none is free.
 *
 * Policies per sequence: KV_POLICY_FULL keeps every position;
 * KV_POLICY_WINDOW keeps the blocks holding the first `sinks` positions and
 * those holding the last `window` positions and frees the middle blocks as
 * the sequence grows (memory stays bounded). Attention must then attend only
 * to positions j with j < sinks or i - j < window (see kv_cache_seq_policy).
 *
 * Attention reads K/V through kv_cache_span_get() (runs of contiguous rows
 * plus their element type) and kv_span_rows_f32() (typed rows -> floats);
 * the forward pass writes through kv_cache_store(), which converts on store.
 *
 * Not thread-safe for structural changes (create/free/reserve/commit/attach);
 * during a step, concurrent kv_cache_store() to distinct positions and
 * concurrent reads are fine. */
#ifndef QKVD_KV_CACHE_H
#define QKVD_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define KV_BLOCK 16         /* default positions per block */
#define KV_BLOCK_MAX 256    /* largest block size accepted */
#define KV_Q8_GROUP 32      /* q8_0: values per scale */

typedef struct kv_cache kv_cache; /* opaque */

enum kv_type { KV_F32 = 0, KV_F16 = 1, KV_Q8_0 = 2, KV_Q12_0 = 3 };
enum kv_policy { KV_POLICY_FULL = 0, KV_POLICY_WINDOW = 1 };

/* "f32", "f16", "q8_0", "q12_0" (NULL for an unknown value). */
const char *kv_type_name(enum kv_type t);
/* The type named s, or -1. */
int kv_type_from_name(const char *s);
/* "full", "window". */
const char *kv_policy_name(enum kv_policy p);
int kv_policy_from_name(const char *s);

typedef struct kv_policy_cfg {
    enum kv_policy kind;
    int32_t window;   /* WINDOW: last positions kept (>= 1) */
    int32_t sinks;    /* WINDOW: first positions kept (>= 0) */
} kv_policy_cfg;

typedef struct kv_cache_params {
    int32_t n_layer, kv_dim;
    int32_t head_dim;       /* 0: unknown; q8_0 scales then cover 32 values, else never two heads */
    int32_t n_ctx;          /* max positions of a FULL sequence */
    int32_t max_seqs;       /* live sequences at once */
    int32_t block_tokens;   /* <= 0: KV_BLOCK */
    enum kv_type type;
    uint64_t memory_bytes;  /* pool budget; 0: room for max_seqs * n_ctx positions */
    kv_policy_cfg policy;   /* default policy of new sequences */
    int prefix_cache;       /* 1: register full blocks and allow attach */
} kv_cache_params;

/* Defaults: f32, KV_BLOCK, budget for max_seqs * n_ctx, full policy, prefix cache on. */
void kv_cache_params_default(kv_cache_params *p, int32_t n_layer, int32_t kv_dim, int32_t n_ctx,
                             int32_t max_seqs);

/* Create the pool. NULL on bad parameters (err says which) or OOM.
 * Owned by the caller: kv_cache_free. */
kv_cache *kv_cache_create_params(const kv_cache_params *p, char *err, size_t errlen);
/* Shorthand: f32, default block size and budget, full policy, prefix cache on. */
kv_cache *kv_cache_create(int32_t n_layer, int32_t kv_dim, int32_t n_ctx, int32_t max_seqs);
void kv_cache_free(kv_cache *kv); /* accepts NULL */

/* Bytes of one position (all layers, K and V) a cache of this shape and
 * type would use, and of one block: for memory plans before any cache exists. */
uint64_t kv_cache_plan_bytes_per_token(enum kv_type t, int32_t n_layer, int32_t kv_dim, int32_t head_dim);

/* Bytes of one position (all layers, K and V, in the element type). */
uint64_t kv_cache_bytes_per_token(const kv_cache *kv);
/* Bytes of blocks that hold data (used by sequences or cached). */
uint64_t kv_cache_bytes_allocated(const kv_cache *kv);
/* Bytes of the blocks live sequences hold (ref > 0) that the OS has backed
 * with memory (mincore): the pool is reserved address space whose pages
 * become memory when first written and go back when a block is freed, so
 * a partly filled last block costs the pages its written rows touched, not
 * the whole block. Blocks whose rows are all written count whole; the
 * others (a sequence's last block) are measured: a few syscalls. */
uint64_t kv_cache_bytes_resident(const kv_cache *kv);
int32_t kv_cache_block_tokens(const kv_cache *kv);
enum kv_type kv_cache_type(const kv_cache *kv);
int64_t kv_cache_blocks_total(const kv_cache *kv);
/* Blocks that can be handed out now: free plus cached (evictable). */
int64_t kv_cache_blocks_available(const kv_cache *kv);

/* Occupancy (see engine_kv_stats in engine.h for the meaning of each field). */
typedef struct kv_cache_stats {
    int32_t block_tokens;
    int64_t blocks_total, blocks_used, blocks_cached;
    uint64_t bytes_per_block, bytes_allocated, bytes_needed;
    uint64_t bytes_resident;  /* kv_cache_bytes_resident */
    uint64_t prefix_lookup_tokens, prefix_hit_tokens;
} kv_cache_stats;
void kv_cache_stats_get(const kv_cache *kv, kv_cache_stats *out);

/* A free sequence id >= 0 (length 0, the default policy), or -1 when
 * max_seqs are live. */
int32_t kv_cache_seq_create(kv_cache *kv);
/* Release the sequence: its blocks lose a reference (full registered blocks
 * stay cached). Ignores ids that are not live. */
void kv_cache_seq_free(kv_cache *kv, int32_t seq);
/* 1 if seq is a live sequence id. */
int kv_cache_seq_live(const kv_cache *kv, int32_t seq);
/* Positions stored (the next position to write; 0 for an id that is not live). */
int32_t kv_cache_seq_len(const kv_cache *kv, int32_t seq);
/* Positions whose K/V the sequence actually holds (len minus dropped ones). */
int32_t kv_cache_seq_held(const kv_cache *kv, int32_t seq);

/* Set the sequence's policy (validated: window >= 1, sinks >= 0, window +
 * sinks <= n_ctx) and its prefix-hash salt (0 for plain softmax attention;
 * a different salt for every attention variant whose K/V differ; the policy
 * itself is mixed in here). Only while the sequence is empty: 0, -EINVAL,
 * -EBUSY. */
int kv_cache_seq_set_policy(kv_cache *kv, int32_t seq, const kv_policy_cfg *p, uint64_t salt);
/* The sequence's policy (the default one for ids that are not live). */
kv_policy_cfg kv_cache_seq_policy(const kv_cache *kv, int32_t seq);
/* Highest length the sequence may reach: n_ctx for FULL, INT32_MAX/2 for WINDOW. */
int32_t kv_cache_seq_max_len(const kv_cache *kv, int32_t seq);

/* Attach the longest cached prefix of tokens[0..n) to an empty sequence,
 * leaving at least one token to compute (reused <= n - 1). Returns the
 * positions reused (0 when none, the sequence is not empty, or the prefix
 * cache is off); the sequence's length becomes that. Counts the lookup in
 * the prefix statistics. */
int32_t kv_cache_seq_attach_prefix(kv_cache *kv, int32_t seq, const int32_t *tokens, int32_t n);

/* Blocks kv_cache_seq_reserve(seq, len + n_new) would take from the pool
 * (new blocks plus a copy of a shared block about to be written). */
int64_t kv_cache_seq_blocks_needed(const kv_cache *kv, int32_t seq, int32_t n_new);
/* Make positions [len, n) writable: allocates blocks (evicting cached ones
 * when none is free) and copies a shared block about to be written. 0,
 * -ENOMEM (pool exhausted; what was allocated stays with the sequence),
 * -ERANGE (n > max len) or -EINVAL (not live). The length does not change. */
int kv_cache_seq_reserve(kv_cache *kv, int32_t seq, int32_t n);
/* A step wrote positions [len, len + n) of tokens[0..n): advance the length,
 * register blocks that became full in the prefix cache, and (WINDOW) free
 * blocks no future query can see. tokens may be NULL (unknown tokens: the
 * sequence stops registering blocks). */
void kv_cache_seq_commit(kv_cache *kv, int32_t seq, const int32_t *tokens, int32_t n);
/* Set the length to n (<= reserved) without tokens: as commit(NULL). */
void kv_cache_seq_set_len(kv_cache *kv, int32_t seq, int32_t n);
/* Drop positions >= n and the blocks no longer needed. A WINDOW sequence
 * whose shorter window would reach blocks it already dropped is emptied
 * (length 0) instead. */
void kv_cache_seq_truncate(kv_cache *kv, int32_t seq, int32_t n);
/* Make dst share src's first n positions (dst's old content is dropped):
 * blocks are shared, a partial last block is copied when either side writes
 * into it; a WINDOW src's dropped blocks stay dropped in dst. 0 or -EINVAL
 * (bad ids, n > len(src), n < len(src) for a WINDOW src that dropped
 * blocks). */
int kv_cache_seq_copy(kv_cache *kv, int32_t dst, int32_t src, int32_t n);

/* A run of contiguous rows of one layer: n positions from pos, K rows at k
 * and V rows at v, `stride` bytes apart, elements of type `type`. */
typedef struct kv_span {
    int32_t n;
    enum kv_type type;
    size_t stride;
    size_t scale_off;       /* q8_0 / q12_0: bytes from a row's start to its scales (f32 / f16) */
    int32_t group;          /* q8_0 / q12_0: values per scale */
    const uint8_t *k, *v;
    size_t lo_off;          /* q12_0: bytes from a row's start to its low nibbles */
} kv_span;

/* The span at position pos (which must be reserved and held) of `layer`:
 * runs until the end of pos's block. Returns out->n. */
int32_t kv_cache_span_get(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, kv_span *out);
/* Convert n_rows rows starting at `rows` (a span's k or v, or a row inside
 * it) into floats: columns [col0, col0 + n_cols) of each row, written to
 * dst[r * n_cols + c]. For f32 spans callers may read the rows directly. */
void kv_span_rows_f32(const kv_span *sp, const uint8_t *rows, int32_t n_rows, int32_t col0,
                      int32_t n_cols, float *dst);
/* Store the K and V rows (kv_dim floats each) of position pos (reserved) of
 * `layer`, converting to the element type. */
void kv_cache_store(kv_cache *kv, int32_t seq, int32_t layer, int32_t pos, const float *k,
                    const float *v);
/* f32 caches only: float pointers to the K/V rows at pos and the run length
 * (kv_dim floats apart) until the end of pos's block; 0 for other types. */
int32_t kv_cache_span(const kv_cache *kv, int32_t seq, int32_t layer, int32_t pos,
                      float **k, float **v);

#endif
