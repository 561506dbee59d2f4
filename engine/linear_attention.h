/* linear_attention.h -- attention as an RNN (IDEAS.md section 1, `linear`):
 *
 *   o_i = phi(q_i)^T S_i / phi(q_i)^T z_i,
 *   S_i = sum_{j<=i} phi(k_j) v_j^T,  z_i = sum_{j<=i} phi(k_j),  phi(x) = elu(x) + 1
 *
 * The state of one (sequence, layer, KV head) is S [head_dim][head_dim]
 * (row = key dimension) followed by z [head_dim]: constant size however
 * long the sequence, no KV cache. Query heads sharing a KV head (GQA) share
 * its state. Two equivalent forms: recurrent (token by token, decode) and
 * chunked-parallel (a chunk's outputs from the state before it plus a
 * causal-masked phi(Q) phi(K)^T product, for prefill). */
#ifndef QKVD_LINEAR_ATTENTION_H
#define QKVD_LINEAR_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

/* Tokens per chunk of the parallel form (bounds its scratch). */
#define LINEAR_CHUNK 32

/* Floats of one (layer, KV head) state: head_dim^2 + head_dim. */
size_t linear_state_floats(int32_t head_dim);

/* Floats of scratch linear_attention_run needs. */
size_t linear_scratch_floats(int32_t head_dim);

/* Feed n tokens through one state. For token t: k + t*kv_stride and
 * v + t*kv_stride (head_dim floats, the KV head's key and value), and
 * `group` query heads at q + t*q_stride + g*head_dim; head g's output goes
 * to out + t*out_stride + g*head_dim. q/k are read, not modified. `state`
 * is updated in place (all zero for an empty sequence). scale multiplies
 * the queries before phi (1/sqrt(head_dim) keeps the model's logit scale).
 * parallel = 0: recurrent form; 1: chunked-parallel form. Allocates nothing. */
void linear_attention_run(float *state, int32_t head_dim, int32_t group, const float *q, size_t q_stride,
                          const float *k, const float *v, size_t kv_stride, int32_t n, float scale,
                          float *out, size_t out_stride, int parallel, float *scratch);

#endif
