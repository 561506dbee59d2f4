/* engine.h -- the only interface server/ (and the CLI) use to compute.
 *
 * An engine owns one loaded model (mmapped GGUF, tokenizer, thread pool,
 * scratch buffers) and a set of sequences, each with its own KV state.
 * engine_step() runs ONE forward pass over a batch of (sequence, new tokens)
 * items -- decode tokens of many sequences and prompt chunks mixed -- and
 * returns logits. It is called from one thread at a time (the engine/worker
 * thread); everything else here is cheap and may be called from the loop
 * thread while no step is running.
 *
 * Errors: negative return codes; setup paths take a message buffer. */
#ifndef QKVD_ENGINE_H
#define QKVD_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"
#include "sampler.h"
#include "attn_kind.h"

typedef struct engine engine; /* opaque */

typedef struct engine_params {
    const char *model_path;
    int32_t n_threads;      /* <= 0: number of online CPUs */
    int32_t n_ctx;          /* max tokens per sequence; <= 0: the model's trained context */
    int32_t max_seqs;       /* max live sequences (KV states); default 16 */
    int32_t max_batch_tokens; /* max tokens in one engine_step; default 512 */
    /* KV cache (see docs/kv-cache.md). */
    int32_t kv_block_tokens;  /* positions per block; <= 0: 16 */
    int32_t kv_type;          /* enum engine_kv_type; default f32 */
    uint64_t kv_memory_bytes; /* pool budget; 0: room for max_seqs * n_ctx positions */
    int32_t kv_policy;        /* default policy of new sequences: enum engine_kv_policy */
    int32_t kv_window, kv_sinks; /* ENGINE_KV_WINDOW: last positions and first positions kept */
    int32_t kv_no_prefix_cache; /* 1: never reuse cached prefixes */
} engine_params;

/* KV element types and policies (same values as kv_cache.h's enums). */
enum engine_kv_type { ENGINE_KV_F32 = 0, ENGINE_KV_F16 = 1, ENGINE_KV_Q8_0 = 2, ENGINE_KV_Q12_0 = 3 };
enum engine_kv_policy { ENGINE_KV_FULL = 0, ENGINE_KV_WINDOW = 1 };
/* Name <-> value: "f32" "f16" "q8_0" "q12_0"; "full" "window". -1 / NULL when unknown. */
int engine_kv_type_from_name(const char *s);
const char *engine_kv_type_name(int t);
int engine_kv_policy_from_name(const char *s);
const char *engine_kv_policy_name(int p);

void engine_params_default(engine_params *p);

typedef struct engine_info {
    char arch[32];            /* "llama", "qwen2" */
    char name[128];           /* general.name or file stem */
    const char *model_path;
    int32_t n_vocab, n_ctx_train, n_ctx, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    float rope_base, norm_eps;
    uint64_t n_params;
    uint64_t weight_bytes;    /* bytes of all weight tensors */
    uint64_t kv_bytes_per_token; /* 2 * n_layer * n_head_kv * head_dim * sizeof(elem) */
    const char *chat_template; /* tokenizer.chat_template (NUL-terminated copy) or NULL */
    const char *weight_type;   /* dominant weight type name, e.g. "q4_0" */
    int32_t rope_scaling;      /* the model's enum rope_scaling (rope.scaling.type) */
    float rope_factor;         /* its factor (1 when none) */
    int32_t rope_orig_ctx;     /* rope.scaling.original_context_length or 0 */
    /* KV pool (the memory plan): */
    const char *kv_type;       /* "f32", "f16", "q8_0", "q12_0" */
    int32_t kv_block_tokens;
    int64_t kv_blocks;         /* blocks in the pool */
    uint64_t kv_bytes_per_block;
    uint64_t kv_pool_bytes;    /* kv_blocks * kv_bytes_per_block: the budget actually used */
    int64_t kv_tokens;         /* kv_blocks * kv_block_tokens */
} engine_info;

/* Load the model at p->model_path. 0 or negative with a message in err
 * (names the file and what is wrong). *out owned by the caller: engine_free. */
int engine_load(const engine_params *p, engine **out, char *err, size_t errlen);
void engine_free(engine *e); /* accepts NULL */

const engine_info *engine_get_info(const engine *e);
const tokenizer *engine_tokenizer(const engine *e);

/* Sequences. seq_create returns an id >= 0, or -1 when max_seqs are live. */
int32_t engine_seq_create(engine *e);
void engine_seq_free(engine *e, int32_t seq);          /* frees its KV */
int32_t engine_seq_len(const engine *e, int32_t seq);  /* tokens in its KV */
/* Drop the KV of positions >= n (rewind, e.g. to reuse a shared prefix). */
void engine_seq_truncate(engine *e, int32_t seq, int32_t n);
/* Make dst share src's first n positions (n > 1 sharing a prompt): blocks
 * are shared with reference counts, a shared partial block is copied on the
 * first write. 0 or negative. */
int engine_seq_copy(engine *e, int32_t dst, int32_t src, int32_t n);
/* Prefix cache: attach the longest cached prefix of tokens[0..n) to the
 * empty sequence seq, always leaving at least one token to compute. Returns
 * the tokens reused (the sequence's length becomes that; feed tokens from
 * there). 0 when nothing matched or the cache is off. */
int32_t engine_seq_attach_prefix(engine *e, int32_t seq, const int32_t *tokens, int32_t n);
/* Set an empty sequence's KV policy (enum engine_kv_policy; window and sinks
 * for ENGINE_KV_WINDOW) and the salt that keeps its cached prefixes apart
 * from other attention variants (0 for plain softmax attention; the engine
 * mixes in the policy). 0, -EINVAL (bad values or id), -EBUSY (not empty). */
int engine_seq_set_kv_policy(engine *e, int32_t seq, int policy, int32_t window, int32_t sinks, uint64_t salt);
/* Longest the sequence may grow: n_ctx (full) or unbounded-ish (window). */
int32_t engine_seq_max_len(const engine *e, int32_t seq);
/* KV blocks a step appending n_new tokens to seq would take from the pool. */
int64_t engine_seq_kv_blocks_needed(const engine *e, int32_t seq, int32_t n_new);
/* Blocks the pool can hand out now (free plus evictable cached ones). */
int64_t engine_kv_blocks_available(const engine *e);

/* Attention kind of a sequence (attn_kind.h), set while it is empty
 * (length 0): the kind decides what its KV holds. New and freed sequences
 * are softmax with the model's RoPE scaling. 0, -EINVAL (not live, or bad
 * parameters: err names them), -EBUSY (not empty), -ENOMEM (linear state).
 * p is copied. A linear sequence holds no KV blocks: a state per head. */
int engine_seq_set_attention(engine *e, int32_t seq, const attn_params *p, char *err, size_t errlen);
/* Whether kind p can run on this engine's KV cache (every kind reads every
 * element type; a window kind's window + sinks must fit the context): 0, or
 * -EINVAL with a sentence in err. engine_seq_set_attention fails the same
 * way. */
int engine_attention_fits_kv(const engine *e, const attn_params *p, char *err, size_t errlen);
/* The kind of a live sequence (softmax defaults for other ids). */
const attn_params *engine_seq_attention(const engine *e, int32_t seq);
/* Bytes of KV blocks live sequences hold now (cached prefix blocks nobody
 * uses are not counted: see engine_kv_stats), and of linear states. */
uint64_t engine_kv_bytes_allocated(const engine *e);
uint64_t engine_linear_state_bytes(const engine *e); /* + hwfa's full last-layer store */

enum engine_out {
    ENGINE_OUT_NONE = 0,   /* just extend the KV */
    ENGINE_OUT_LAST = 1,   /* logits of the last token of the item */
    ENGINE_OUT_ALL = 2,    /* logits of every token of the item (logprobs, echo, ppl) */
    ENGINE_OUT_EMBD = 3    /* mean-pooled, L2-normalised final hidden state of the item's tokens */
};

typedef struct engine_item {
    int32_t seq;
    const int32_t *tokens;  /* appended at positions seq_len .. seq_len + n_tokens - 1 */
    int32_t n_tokens;
    enum engine_out out;
    /* filled by engine_step: */
    float *logits;          /* ENGINE_OUT_LAST: n_vocab floats; ALL: n_tokens * n_vocab;
                               EMBD: n_embd floats. Owned by the engine, valid until the next step. */
} engine_item;

/* One forward pass over all items (total tokens <= max_batch_tokens; an item
 * whose sequence would pass its maximum length fails the step with -ERANGE,
 * nothing is changed; -ENOMEM when the KV pool cannot hold the new
 * positions: KV of earlier items may have been reserved, nothing is
 * computed -- check engine_seq_kv_blocks_needed first). Returns 0 or a
 * negative error code. */
int engine_step(engine *e, engine_item *items, int32_t n_items);

/* KV-cache occupancy for metrics and the memory plan. Blocks hold
 * block_tokens positions of every layer's K and V. blocks_used: referenced by
 * live sequences; blocks_cached: unreferenced but kept for prefix reuse
 * (evictable); bytes_allocated: memory the pool holds for blocks;
 * bytes_needed: what the live sequences' tokens occupy (tokens x bytes per
 * token). prefix_*: cumulative tokens looked up in / served from the prefix
 * cache. */
typedef struct engine_kv_stats {
    int32_t block_tokens;
    int64_t blocks_total, blocks_used, blocks_cached;
    uint64_t bytes_per_block, bytes_allocated, bytes_needed;
    uint64_t bytes_resident;  /* of blocks live sequences hold, the pages the OS backs (written rows) */
    uint64_t prefix_lookup_tokens, prefix_hit_tokens;
} engine_kv_stats;

/* Fill *out with the current KV statistics (cheap; loop thread, between steps). */
void engine_kv_stats_get(const engine *e, engine_kv_stats *out);

/* Tokens/s helpers for bench: time spent in the last step (seconds). */
double engine_last_step_seconds(const engine *e);

#endif
