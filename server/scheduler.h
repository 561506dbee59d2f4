/* scheduler.h -- between HTTP requests and engine steps.
 *
 * Jobs (a generation with n choices per prompt, or an embeddings batch) wait
 * in a FIFO queue until enough sequences are free, then run. Every step batches
 * what all running jobs need: one decode token per live choice plus prompt
 * chunks (prefill) up to the token budget, and runs ONE engine_step on a
 * worker thread (uv_queue_work). Its completion runs on the loop thread:
 * sampling, detokenising, stop strings, callbacks to the job's owner, then the
 * next step is planned. All scheduler state lives on the loop thread; the only
 * cross-thread data is the item array of the step in flight.
 *
 * n > 1: the prompt is prefilled once, then shared (engine_seq_copy: blocks
 * with reference counts, copy-on-write of the partial last block) with the
 * other choices' sequences; every choice samples with its own sampler.
 * Cancellation (client gone) takes effect at the next step boundary.
 *
 * KV memory: every prompt first attaches its longest cached prefix
 * (engine_seq_attach_prefix). Admission is in arrival order, bounded by free
 * sequences, the running limit and free KV blocks. When blocks run out
 * mid-run the most recently arrived running job is pre-empted: its
 * sequences are freed and it goes back to the head of the queue with its
 * tokens, samplers and stream state; re-admitted, it recomputes the KV of
 * prompt + generated tokens (mostly from the prefix cache) and continues
 * with output identical to an uninterrupted run. An admitted request is
 * never dropped; a request whose prompt alone exceeds the whole pool is
 * refused at submit (400). */
#ifndef QKVD_SCHEDULER_H
#define QKVD_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "engine.h"
#include "errors.h"
#include "sampler.h"

struct grammar;
struct grammar_vocab;

typedef struct sched sched;
typedef struct sched_job sched_job;

enum sched_kind { SCHED_GENERATE = 1, SCHED_EMBED = 2 };

/* Callbacks to the job's owner, always on the loop thread. `user` is the
 * owner's pointer given at submit. After on_done returns the job is freed:
 * the owner must forget it. None is called after sched_job_cancel. */
typedef struct sched_job_ops {
    /* Every sampled token of choice `choice` (only when logprobs were asked):
     * its id, and logprob/alternatives in r. Called before on_text for the
     * text it produced. */
    void (*on_token)(void *user, int32_t choice, int32_t token, const sampler_result *r);
    /* Text of choice `choice` ready to be sent (complete UTF-8, stop strings removed). */
    void (*on_text)(void *user, int32_t choice, const char *text, size_t len);
    /* Choice finished: reason "stop" or "length"; n_tokens generated (an
     * end-of-generation token is not counted). */
    void (*on_finish)(void *user, int32_t choice, const char *reason, int32_t n_tokens);
    /* Prompt log-probs (spec.prompt_logprobs): token `pos` (>= 1) of prompt
     * `prompt` given the tokens before it, in order; then on_prompt_done
     * once that prompt is in the KV, before its first sampled token. */
    void (*on_prompt_token)(void *user, int32_t prompt, int32_t pos, int32_t token, const sampler_result *r);
    void (*on_prompt_done)(void *user, int32_t prompt);
    /* Embedding of input `index` (n floats, valid during the call). */
    void (*on_embd)(void *user, int32_t index, const float *v, int32_t n);
    /* Everything finished (err NULL) or failed (err set; choices not yet
     * finished get no on_finish). */
    void (*on_done)(void *user, const api_error *err);
} sched_job_ops;

typedef struct sched_job_spec {
    enum sched_kind kind;
    int32_t n_prompts;
    int32_t **prompts;        /* ownership passes to the job at submit (each malloc'd) */
    int32_t *prompt_len;      /* n_prompts entries (copied) */
    int32_t n;                /* choices per prompt (generate) */
    int32_t max_tokens;       /* per choice */
    sampler_params sp;        /* copied (bias arrays copied by the sampler) */
    int32_t n_stop;
    const char *const *stop;  /* copied */
    const size_t *stop_len;
    int strip_leading_space;  /* SPM: first piece's leading space is not text */
    int include_stop_str;     /* the matched stop string stays at the end of the text */
    int render_special;       /* emit the text of special (control) tokens too */
    int prompt_logprobs;      /* report log-probs of the prompt tokens (echo + logprobs) */
    double timeout_s;         /* 0: none */
    /* Structured output. Every choice gets its own matcher (kept with the
     * choice, so it survives anything done to its KV sequence): before each
     * sample the grammar's mask sets disallowed logits to -inf (logprobs are
     * then those of the masked distribution), after it the matcher advances;
     * a choice whose grammar can accept nothing more finishes with "stop".
     * `grammar` constrains from the first token. `lazy_grammar` starts only
     * once the output contains `trigger` (tool calls under tool_choice
     * "auto"): it constrains the output after the trigger's end. Both are
     * retained by the job; gvocab (the engine tokenizer's) must outlive it. */
    struct grammar *grammar;
    struct grammar *lazy_grammar;
    const char *trigger;      /* copied; at most 63 bytes */
    size_t trigger_len;
    const struct grammar_vocab *gvocab;
    /* Attention kind of every sequence of the job (copied); NULL: the
     * engine's default (softmax, the model's RoPE). */
    const attn_params *attn;
    /* NBCE (nbce.h; needs n == 1): prompts 0 .. n_prompts-2 are context +
     * question, the last is the question alone. They prefill as separate
     * sequences; every step combines their log-probs into ONE choice
     * (index 0, the only one the owner sees), whose token is appended to
     * all of them. */
    int nbce;
    float nbce_beta;
    int32_t nbce_pool;        /* enum nbce_pool */
} sched_job_spec;

/* Create a scheduler on loop. Engine set later (sched_set_engine) once loaded.
 * max_seqs / batch_tokens bound every step; queue_len bounds waiting jobs. */
sched *sched_create(uv_loop_t *loop, int32_t max_seqs, int32_t batch_tokens, int32_t queue_len);
/* Limits beside those of sched_create: sequences running at once (<= 0:
 * max_seqs) and the largest prompt chunk one step feeds for one sequence
 * (<= 0: batch_tokens), so a long prompt shares steps with other streams. */
void sched_set_limits(sched *s, int32_t max_running, int32_t prefill_chunk);
/* The engine (owned by the caller, must outlive the scheduler's use). */
void sched_set_engine(sched *s, engine *e);
/* Free everything; call only when idle (no step in flight). */
void sched_destroy(sched *s);

/* Submit a job. 0 with *out set (the job belongs to the scheduler), or -1 with
 * err (queue full -> 503, too many sequences -> 400, OOM -> 503); on error the
 * prompts are freed here. */
int sched_submit(sched *s, const sched_job_spec *spec, const sched_job_ops *ops, void *user,
                 sched_job **out, api_error *err);
/* The owner is gone: no more callbacks; resources go at the next step boundary. */
void sched_job_cancel(sched *s, sched_job *j);
/* End every job now (shutdown after the grace period): each gets on_done with a 503. */
void sched_cancel_all(sched *s);

/* Counts for /health, metrics and drain. */
int32_t sched_n_running(const sched *s);
int32_t sched_n_queued(const sched *s);
int sched_busy(const sched *s); /* a step is in flight or jobs exist */
/* Running sequences pre-empted (KV freed, recomputed later) since creation. */
uint64_t sched_n_preemptions(const sched *s);
/* Series for the scheduler's metric hooks (tokens, latencies, steps, KV
 * snapshots); NULL (the default) turns them off. Not owned. */
struct metrics_model;
void sched_set_metrics(sched *s, struct metrics_model *mm);

#endif
