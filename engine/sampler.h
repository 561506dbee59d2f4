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

void sampler_params_default(sampler_params *p);

typedef struct sampler sampler; /* opaque */

/* Create for a vocabulary of n_vocab. Returns NULL on OOM. */
sampler *sampler_create(const sampler_params *p, int32_t n_vocab);
void sampler_free(sampler *s); /* accepts NULL */

typedef struct sampler_result {
    int32_t token;
    float logprob;               /* log-prob of token */
    int32_t n_top;               /* = n_top_logprobs */
    int32_t top_ids[20];
    float top_logprobs[20];      /* best first */
} sampler_result;

/* Sample from logits[n_vocab] (modified in place). history: the sequence's
 * tokens so far (prompt + generated) for penalties. */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int64_t n_history,
                       sampler_result *out);

/* Log-softmax of logits into out (n entries); helper for logprobs/ppl. */
void sampler_log_softmax(const float *logits, float *out, int32_t n);

#endif
