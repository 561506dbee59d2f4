/* sampler.h -- turn a row of logits into the next token.
 *
 * Order (as llama.cpp's default chain): logit bias -> repetition / presence /
 * frequency penalties over the recent history -> (optional grammar mask,
 * applied by the caller as -INFINITY before calling) -> if temperature <= 0:
 * greedy; else top-k -> top-p -> min-p -> temperature -> sample with the
 * sampler's own seeded PRNG (same seed, same output).
 * Log-probs are reported from the distribution before truncation/temperature
 * (log-softmax of the penalised, biased logits), like OpenAI's.
 *
 * Per-token path allocates nothing: scratch is sized at create time. */
#ifndef QKVD_SAMPLER_H
#define QKVD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct sampler_params {
    float temperature;      /* <= 0: greedy. default 1 (OpenAI) */
    float top_p;            /* 1 = off */
    int32_t top_k;          /* <= 0 = off */
    float min_p;            /* 0 = off */
    float repetition_penalty; /* 1 = off (CTRL-style divide/multiply) */
    float presence_penalty;   /* 0 = off (OpenAI) */
    float frequency_penalty;  /* 0 = off (OpenAI) */
    int32_t penalty_last_n;   /* history window for penalties; -1 = whole history */
    uint64_t seed;            /* PRNG seed */
    int32_t n_bias; const int32_t *bias_ids; const float *bias_vals; /* copied at create */
    int32_t n_top_logprobs;   /* 0..20: how many alternatives to report */
} sampler_params;

/* Fill p with the defaults: temperature 1, top_p 1, top_k 0, min_p 0,
 * repetition_penalty 1, presence/frequency 0, penalty_last_n 64, seed 0, no
 * bias, no top logprobs. Callers set a random seed when the user gives none. */
void sampler_params_default(sampler_params *p);

/* Check p against a vocabulary of n_vocab: every field in range, bias ids in
 * [0, n_vocab), bias values finite. Returns 0 when valid, else -1 with a
 * message naming the offending field written to err (err_len bytes, may be 0).
 * sampler_create does not fail on invalid values: it clamps them (top_p into
 * [0,1], n_top_logprobs into [0,20], ...) and drops out-of-range bias ids, so
 * request parsers should call this first to turn bad input into a 400. */
int sampler_params_check(const sampler_params *p, int32_t n_vocab, char *err, size_t err_len);

typedef struct sampler sampler; /* opaque */

/* Create for a vocabulary of n_vocab. Copies p (including the bias arrays),
 * seeds the sampler's own PRNG from p->seed and sizes all scratch (about
 * 16 bytes per vocabulary entry). Returns NULL on OOM or n_vocab <= 0; the
 * caller owns the result and frees it with sampler_free. */
sampler *sampler_create(const sampler_params *p, int32_t n_vocab);
void sampler_free(sampler *s); /* accepts NULL */

typedef struct sampler_result {
    int32_t token;
    float logprob;               /* log-prob of token */
    int32_t n_top;               /* = n_top_logprobs, fewer only when fewer tokens
                                    have a finite logit */
    int32_t top_ids[20];
    float top_logprobs[20];      /* best first */
} sampler_result;

/* Sample from logits[n_vocab] (modified in place: bias and penalties are
 * applied to it). history: the sequence's tokens so far (prompt + generated)
 * for penalties (ids outside [0, n_vocab) are ignored; may be NULL when
 * n_history is 0). out may be NULL when no log-probs are wanted (saves one
 * pass over the vocabulary). Returns the token, or -1 when no token is allowed
 * (every logit is -inf or NaN). */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int64_t n_history,
                       sampler_result *out);

/* Log-softmax of logits into out (n entries); helper for logprobs/ppl.
 * Numerically stable (max subtracted, double accumulation). -inf entries give
 * -inf; when every entry is -inf, every output is -inf. out may equal logits. */
void sampler_log_softmax(const float *logits, float *out, int32_t n);

#endif
