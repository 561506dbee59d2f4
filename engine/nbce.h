/* nbce.h -- Naive Bayes context extension (IDEAS.md section 3).
 *
 * A context too long for the model is split into chunks S_1..S_n; each chunk
 * followed by the same question runs as its own sequence, plus one sequence
 * with the question alone. Every step combines their next-token log-probs
 *
 *   log p(T | S_1..S_n) = (beta + 1) * pool_k(l_k) - beta * l_0
 *
 * (l_k = log p(T | S_k), l_0 = log p(T)); pool is the row of lowest entropy
 * (min-entropy: the context that knows best) or the mean of the rows. With a
 * single context there is nothing to pool and nothing to correct (Naive
 * Bayes with n = 1 is p(T | S_1)): the result is l_1, plain decoding. */
#ifndef QKVD_NBCE_H
#define QKVD_NBCE_H

#include <stdint.h>

enum nbce_pool { NBCE_POOL_MIN_ENTROPY = 0, NBCE_POOL_MEAN = 1 };

#define NBCE_DEFAULT_BETA 0.25f

/* "min-entropy" / "mean" -> pool: 0, or -1 when unknown. */
int nbce_pool_parse(const char *name, enum nbce_pool *out);
const char *nbce_pool_name(enum nbce_pool p);

/* lp[k] (k < n_ctx, n_ctx >= 1): log-softmax rows of the context sequences;
 * lp0: of the context-free one; all n_vocab floats. Writes the combined
 * log-probs (normalised) to out. Allocates nothing. */
void nbce_combine(const float *const *lp, int32_t n_ctx, const float *lp0, int32_t n_vocab, float beta,
                  enum nbce_pool pool, float *out);

/* Entropy (nats) of a log-softmax row. */
double nbce_entropy(const float *lp, int32_t n_vocab);

#endif
