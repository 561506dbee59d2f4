/* forward.h -- the transformer forward pass over a batch of sequences.
 *
 * A forward context holds every activation buffer, sized once for
 * max_batch_tokens, so a step allocates nothing (except the logits buffer,
 * which grows the first time a step asks for more rows than before). */
#ifndef QKVD_FORWARD_H
#define QKVD_FORWARD_H

#include <stddef.h>
#include <stdint.h>
#include "engine.h"
#include "attention_kinds.h"
#include "kv_cache.h"
#include "model.h"
#include "threadpool.h"

typedef struct forward forward; /* opaque */

/* Create for model m (not owned; must outlive the context), running on tp
 * (not owned), for steps of at most max_tok tokens and sequences of at most
 * n_ctx positions. NULL with a message in err on OOM. */
forward *forward_create(const model *m, threadpool *tp, int32_t max_tok, int32_t n_ctx,
                        char *err, size_t errlen);
void forward_free(forward *f); /* accepts NULL */

/* Run one step. Items were validated by the caller (live distinct sequences,
 * tokens in range, total <= max_tok, KV reserved for every new position).
 * Writes K/V of the new positions into kv (the caller advances the lengths)
 * and sets items[i].logits (owned by f, valid until the next step).
 * 0 or -ENOMEM (logits buffer). */
int forward_step(forward *f, kv_cache *kv, engine_item *items, int32_t n_items);

/* Per-sequence attention kinds and linear states, indexed by sequence id
 * (owned by the caller, read during forward_step; NULL: softmax for all). */
void forward_set_seq_attn(forward *f, const attn_seq_state *states);

/* The context's matmul (to tune its strategy threshold in benchmarks). */
matmul *forward_matmul(forward *f);

#endif
