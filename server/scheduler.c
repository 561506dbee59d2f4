/* scheduler.c -- FIFO admission, batched engine steps, sampling and stop
 * strings on the loop thread (see scheduler.h). */
#include "scheduler.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "grammar/grammar.h"
#include "metrics.h"
#include "tokenizer.h"
#include "nbce.h"

#define SCHED_TRIGGER_MAX 63
#define SCHED_NBCE_MAX 64 /* sequences of one NBCE job (contexts + 1) */

/* RECOMPUTE: a pre-empted choice rebuilding the KV of prompt + generated
 * tokens (all but `next`) before it decodes again. */
enum slot_state { SLOT_WAIT, SLOT_PREFILL, SLOT_DECODE, SLOT_DONE, SLOT_RECOMPUTE };

/* One choice of a generation (or one input of an embeddings job). */
typedef struct sched_slot {
    int32_t seq;             /* engine sequence, -1 when none */
    int32_t prompt;          /* index into the job's prompts */
    int32_t leader;          /* slot that prefills this prompt (itself for leaders) */
    enum slot_state state;
    int32_t n_fed;           /* leader: prompt tokens already in the KV (RECOMPUTE: hist tokens) */
    int32_t n_lp;            /* prompt log-probs reported up to this position (re-runs skip them) */
    int32_t n_attached;      /* leader: prompt tokens taken from the prefix cache */
    int prefix_waited;       /* leader: held back for another job's identical prefix */
    int lp_done;             /* on_prompt_done sent */
    int32_t *hist;           /* prompt + generated tokens, cap_hist entries */
    int64_t n_hist, cap_hist;
    int32_t n_gen;           /* generated tokens */
    int32_t eog;             /* 1 when the last one ended generation */
    int32_t next;            /* sampled token to feed in the next step */
    sampler *smp;
    tok_stream ts;
    char *held;              /* text not yet emitted: a possible stop-string prefix */
    size_t n_held, cap_held;
    grammar_matcher *gm;     /* structured output: NULL when unconstrained */
    int gm_on;               /* 0 while a lazy grammar waits for its trigger */
    char win[SCHED_TRIGGER_MAX]; /* lazy: the last output bytes (a possible trigger prefix) */
    size_t n_win;
    uint64_t t_last_ns;      /* uv_hrtime() of the last sampled token (metrics), 0 before */
} sched_slot;

struct sched_job {
    sched_job *next, *prev;
    enum sched_kind kind;
    sched_job_ops ops;
    void *user;
    int cancelled, finished, running;
    int32_t n_prompts;
    int32_t **prompts, *prompt_len;
    int32_t n, n_slots, n_done;
    sched_slot *slots;
    int32_t max_tokens;
    char *stop[4];
    size_t stop_len[4];
    int32_t n_stop;
    int logprobs, prompt_logprobs;
    int include_stop_str, render_special;
    int32_t n_top;           /* alternatives per prompt token */
    uint64_t deadline_ms;    /* uv_now() deadline, 0 = none */
    int32_t seqs_needed;     /* reserved at admission, returned at free */
    uint64_t arrival;        /* submit order: running jobs are kept sorted by it */
    int was_preempted;       /* back in the queue after losing its KV */
    int32_t embd_seq, embd_next;
    grammar *grammar, *lazy_grammar; /* own references */
    char trigger[SCHED_TRIGGER_MAX + 1];
    size_t trigger_len;
    uint64_t t_submit_ns;    /* uv_hrtime() at submit: time-to-first-token starts here */
    int has_attn;
    attn_params attn;        /* kind of every sequence (has_attn) */
    int nbce;                /* see sched_job_spec */
    float nbce_beta;
    int32_t nbce_pool, nbce_have; /* rows of this round in nbce_lp */
    float *nbce_lp;          /* [n_slots][n_vocab] log-softmax rows; then [n_vocab] combined */
};

typedef struct job_list { sched_job *head, *tail; int32_t n; } job_list;

struct sched {
    uv_loop_t *loop;
    engine *e;
    const tokenizer *tok;
    int32_t n_vocab, n_embd, n_ctx;
    int32_t max_seqs, batch_tokens, queue_len;
    int32_t max_running, prefill_chunk;
    int32_t free_seqs;
    uint64_t n_arrivals;
    uint64_t n_preemptions;
    metrics_model *mm;       /* metric hooks; NULL: off */
    job_list queued, running;
    /* The step in flight (read by the worker thread only while in_flight). */
    int in_flight;
    uv_work_t work;
    engine_item *items;
    sched_job **item_job;
    int32_t *item_slot, *item_chunk;
    int32_t n_items, cap_items;
    int step_rc;
    float *scratch;          /* n_vocab logits copy: the sampler modifies its input */
    float *lsm;              /* n_vocab log-softmax of one prompt row */
    char text[4096];         /* one token's text */
    char trig_scan[SCHED_TRIGGER_MAX + 4096]; /* lazy grammars: window + token text */
};

static void list_push(job_list *l, sched_job *j) {
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail) l->tail->next = j; else l->head = j;
    l->tail = j;
    l->n++;
}

static void list_push_front(job_list *l, sched_job *j) {
    j->prev = NULL;
    j->next = l->head;
    if (l->head) l->head->prev = j; else l->tail = j;
    l->head = j;
    l->n++;
}

/* Insert keeping the list sorted by arrival (re-admitted jobs go back to
 * their place, so "most recently admitted" means latest arrival). */
static void list_insert_sorted(job_list *l, sched_job *j) {
    sched_job *after = l->tail;
    while (after && after->arrival > j->arrival) after = after->prev;
    if (!after) {
        list_push_front(l, j);
        return;
    }
    j->prev = after;
    j->next = after->next;
    if (after->next) after->next->prev = j; else l->tail = j;
    after->next = j;
    l->n++;
}

static void list_remove(job_list *l, sched_job *j) {
    if (j->prev) j->prev->next = j->next; else l->head = j->next;
    if (j->next) j->next->prev = j->prev; else l->tail = j->prev;
    j->next = j->prev = NULL;
    l->n--;
}

sched *sched_create(uv_loop_t *loop, int32_t max_seqs, int32_t batch_tokens, int32_t queue_len) {
    sched *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->loop = loop;
    s->max_seqs = max_seqs;
    s->batch_tokens = batch_tokens;
    s->queue_len = queue_len;
    s->free_seqs = max_seqs;
    s->max_running = max_seqs;
    s->prefill_chunk = batch_tokens;
    s->cap_items = 2 * max_seqs + 2;
    s->items = calloc((size_t)s->cap_items, sizeof *s->items);
    s->item_job = calloc((size_t)s->cap_items, sizeof *s->item_job);
    s->item_slot = calloc((size_t)s->cap_items, sizeof *s->item_slot);
    s->item_chunk = calloc((size_t)s->cap_items, sizeof *s->item_chunk);
    if (!s->items || !s->item_job || !s->item_slot || !s->item_chunk) abort();
    return s;
}

void sched_set_engine(sched *s, engine *e) {
    const engine_info *info = engine_get_info(e);
    s->e = e;
    s->tok = engine_tokenizer(e);
    s->n_vocab = info->n_vocab;
    s->n_embd = info->n_embd;
    s->n_ctx = info->n_ctx;
    free(s->scratch);
    s->scratch = malloc((size_t)s->n_vocab * sizeof(float));
    free(s->lsm);
    s->lsm = malloc((size_t)s->n_vocab * sizeof(float));
    if (!s->scratch || !s->lsm) abort();
}

static void job_free(sched *s, sched_job *j) {
    for (int32_t i = 0; i < j->n_slots; i++) {
        sched_slot *sl = &j->slots[i];
        if (sl->seq >= 0 && s->e) engine_seq_free(s->e, sl->seq);
        sampler_free(sl->smp);
        free(sl->hist);
        free(sl->held);
        grammar_matcher_free(sl->gm);
    }
    grammar_release(j->grammar);
    grammar_release(j->lazy_grammar);
    if (j->embd_seq >= 0 && s->e) engine_seq_free(s->e, j->embd_seq);
    if (j->running) s->free_seqs += j->seqs_needed;
    for (int32_t i = 0; i < j->n_prompts; i++) free(j->prompts[i]);
    free(j->prompts);
    free(j->prompt_len);
    for (int32_t i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->slots);
    free(j->nbce_lp);
    free(j);
}

void sched_destroy(sched *s) {
    if (!s) return;
    while (s->queued.head) { sched_job *j = s->queued.head; list_remove(&s->queued, j); job_free(s, j); }
    while (s->running.head) { sched_job *j = s->running.head; list_remove(&s->running, j); job_free(s, j); }
    free(s->items);
    free(s->item_job);
    free(s->item_slot);
    free(s->item_chunk);
    free(s->scratch);
    free(s->lsm);
    free(s);
}

/* All choices done or failed: tell the owner once; freed at the next cleanup. */
static void job_complete(sched_job *j, const api_error *err) {
    if (j->finished || j->cancelled) return;
    j->finished = 1;
    if (j->ops.on_done) j->ops.on_done(j->user, err);
    j->user = NULL;
}

static void job_fail(sched_job *j, int status, const char *fmt, const char *detail) {
    api_error e;
    api_error_set(&e, status, NULL, NULL, NULL, fmt, detail);
    job_complete(j, &e);
}

static void slot_emit(sched_job *j, int32_t idx, const char *p, size_t n) {
    if (n && j->ops.on_text && !j->finished && !j->cancelled) j->ops.on_text(j->user, idx, p, n);
}

static void slot_finish(sched *s, sched_job *j, int32_t idx, const char *reason, int flush) {
    sched_slot *sl = &j->slots[idx];
    if (sl->state == SLOT_DONE) return;
    if (flush) {
        int64_t n = tok_stream_flush(&sl->ts, s->text, (int64_t)sizeof s->text);
        if (sl->held) {
            slot_emit(j, idx, sl->held, sl->n_held);
            sl->n_held = 0;
        }
        slot_emit(j, idx, s->text, (size_t)n);
    }
    sl->state = SLOT_DONE;
    /* The KV goes back at once; followers already hold their own copy. */
    if (sl->seq >= 0) {
        engine_seq_free(s->e, sl->seq);
        sl->seq = -1;
    }
    /* NBCE: only choice 0 is the owner's; the others are its shadows. */
    if (j->ops.on_finish && !j->finished && !j->cancelled && !(j->nbce && idx > 0))
        j->ops.on_finish(j->user, idx, reason, sl->n_gen - sl->eog);
    if (++j->n_done == j->n_slots) job_complete(j, NULL);
    /* The output choice is done: its shadows have nothing left to do. */
    if (j->nbce && idx == 0)
        for (int32_t i = 1; i < j->n_slots; i++) slot_finish(s, j, i, reason, 0);
}

/* Look for stop strings in the held text. Emits what is certainly text and
 * keeps back a suffix that could still become a stop string. 1 = stopped. */
static int slot_stop_check(sched_job *j, int32_t idx) {
    sched_slot *sl = &j->slots[idx];
    size_t best = (size_t)-1, best_len = 0;
    for (int32_t k = 0; k < j->n_stop; k++) {
        const char *p = memmem(sl->held, sl->n_held, j->stop[k], j->stop_len[k]);
        if (p && (size_t)(p - sl->held) < best) {
            best = (size_t)(p - sl->held);
            best_len = j->stop_len[k];
        }
    }
    if (best != (size_t)-1) {
        slot_emit(j, idx, sl->held, best + (j->include_stop_str ? best_len : 0));
        sl->n_held = 0;
        return 1;
    }
    size_t keep = 0;
    for (int32_t k = 0; k < j->n_stop; k++) {
        size_t m = j->stop_len[k] - 1 < sl->n_held ? j->stop_len[k] - 1 : sl->n_held;
        for (; m > keep; m--)
            if (!memcmp(sl->held + sl->n_held - m, j->stop[k], m)) { keep = m; break; }
    }
    slot_emit(j, idx, sl->held, sl->n_held - keep);
    memmove(sl->held, sl->held + sl->n_held - keep, keep);
    sl->n_held = keep;
    return 0;
}

/* Lazy grammar: look for the trigger in the recent output plus this token's
 * text (n bytes in s->text). Once found, the grammar takes over after the
 * trigger; bytes of this token beyond it are fed to it at once (if it
 * rejects them, the choice goes on unconstrained: it did not write a call). */
static void slot_trigger_scan(sched *s, sched_job *j, sched_slot *sl, size_t n) {
    char *w = s->trig_scan;
    memcpy(w, sl->win, sl->n_win);
    memcpy(w + sl->n_win, s->text, n);
    size_t len = sl->n_win + n;
    const char *hit = memmem(w, len, j->trigger, j->trigger_len);
    if (hit) {
        size_t after = (size_t)(hit - w) + j->trigger_len, bad;
        sl->gm_on = 1;
        if (after < len && grammar_matcher_accept_bytes(sl->gm, w + after, len - after, &bad) < 0) {
            grammar_matcher_free(sl->gm);
            sl->gm = NULL;
        }
        return;
    }
    size_t keep = j->trigger_len - 1 < len ? j->trigger_len - 1 : len;
    memcpy(sl->win, w + len - keep, keep);
    sl->n_win = keep;
}

/* Sample the next token of a slot from logits (n_vocab floats, copied first). */
static void slot_sample(sched *s, sched_job *j, int32_t idx, const float *logits) {
    sched_slot *sl = &j->slots[idx];
    sampler_result r;
    memcpy(s->scratch, logits, (size_t)s->n_vocab * sizeof(float));
    int constrained = sl->gm && sl->gm_on;
    if (constrained && grammar_matcher_apply(sl->gm, s->scratch) == 0) {
        /* Only a user grammar with rules that cannot complete gets here. */
        if (grammar_matcher_is_complete(sl->gm)) slot_finish(s, j, idx, "stop", 1);
        else job_fail(j, 400, "the grammar allows no token after this output (%s)", "dead end: a rule that cannot complete");
        return;
    }
    /* Without log-probs the sampler skips its normalising exp pass over
     * the vocabulary (greedy on 50k ids: ~40 -> ~8 us per sequence and
     * step, on the loop thread while the engine's threads wait). */
    int32_t tok = sampler_sample(sl->smp, s->scratch, sl->hist, sl->n_hist, j->logprobs ? &r : NULL);
    if (tok < 0 || tok >= s->n_vocab) {
        job_fail(j, 500, "sampling failed (%s)", "no token");
        return;
    }
    if (constrained && !tokenizer_is_eog(s->tok, tok) && grammar_matcher_accept_token(sl->gm, tok) < 0) {
        job_fail(j, 500, "sampling failed (%s)", "the grammar rejected a token its mask allowed");
        return;
    }
    if (sl->n_hist < sl->cap_hist) sl->hist[sl->n_hist++] = tok;
    sl->n_gen++;
    metrics_token(s->mm, j->t_submit_ns, &sl->t_last_ns, !tokenizer_is_eog(s->tok, tok));
    if (tokenizer_is_eog(s->tok, tok)) {
        sl->eog = 1;
        slot_finish(s, j, idx, "stop", 1);
        return;
    }
    if (j->logprobs && j->ops.on_token && !j->finished) j->ops.on_token(j->user, idx, tok, &r);
    /* While a lazy grammar waits for its trigger, control tokens are text:
     * a trigger may be one (Mistral's [TOOL_CALLS]), and the owner parses it too. */
    int render = j->render_special || (sl->gm && !sl->gm_on);
    int64_t n = tok_stream_push(&sl->ts, s->tok, tok, render, s->text, (int64_t)sizeof s->text);
    if (n > (int64_t)sizeof s->text) n = (int64_t)sizeof s->text;
    if (sl->gm && !sl->gm_on && n > 0) slot_trigger_scan(s, j, sl, (size_t)n);
    if (sl->held) {
        if (sl->n_held + (size_t)n > sl->cap_held) {
            /* Cannot happen with the sizes chosen at submit; emit rather than lose text. */
            slot_emit(j, idx, sl->held, sl->n_held);
            sl->n_held = 0;
        }
        memcpy(sl->held + sl->n_held, s->text, (size_t)n);
        sl->n_held += (size_t)n;
        if (slot_stop_check(j, idx)) {
            slot_finish(s, j, idx, "stop", 0);
            return;
        }
    } else {
        slot_emit(j, idx, s->text, (size_t)n);
    }
    if (sl->gm && sl->gm_on && grammar_matcher_is_terminated(sl->gm)) {
        slot_finish(s, j, idx, "stop", 1);
        return;
    }
    if (sl->n_gen >= j->max_tokens || engine_seq_len(s->e, sl->seq) + 1 > s->n_ctx) {
        slot_finish(s, j, idx, "length", 1);
        return;
    }
    sl->next = tok;
    sl->state = SLOT_DECODE;
}

/* A leader's prompt is in its KV: share it with the followers, then every
 * choice of that prompt samples its first token from the same logits. */
static void nbce_collect(sched *s, sched_job *j, int32_t idx, const float *logits);

static void prefill_done(sched *s, sched_job *j, int32_t leader, const float *logits) {
    sched_slot *ld = &j->slots[leader];
    if (j->nbce && j->max_tokens > 0) {
        nbce_collect(s, j, leader, logits);
        return;
    }
    int32_t len = j->prompt_len[ld->prompt];
    for (int32_t i = 0; i < j->n_slots; i++) {
        sched_slot *sl = &j->slots[i];
        if (i == leader || sl->leader != leader) continue;
        if (engine_seq_copy(s->e, sl->seq, ld->seq, len) < 0) {
            job_fail(j, 503, "could not copy the prompt's KV cache (%s)", "engine_seq_copy failed");
            return;
        }
    }
    if (j->max_tokens == 0) {
        for (int32_t i = 0; i < j->n_slots; i++)
            if (j->slots[i].leader == leader) slot_finish(s, j, i, "length", 1);
        return;
    }
    for (int32_t i = 0; i < j->n_slots && !j->finished; i++)
        if (j->slots[i].leader == leader) slot_sample(s, j, i, logits);
}

/* Sequences a job holds while running (for max_running). */
static int32_t job_live_seqs(const sched_job *j) {
    if (j->kind == SCHED_EMBED) return 1;
    int32_t n = 0;
    for (int32_t i = 0; i < j->n_slots; i++) n += j->slots[i].state != SLOT_DONE;
    return n;
}

static void job_release_seqs(sched *s, sched_job *j) {
    for (int32_t i = 0; i < j->n_slots; i++)
        if (j->slots[i].seq >= 0) { engine_seq_free(s->e, j->slots[i].seq); j->slots[i].seq = -1; }
    if (j->embd_seq >= 0) { engine_seq_free(s->e, j->embd_seq); j->embd_seq = -1; }
}

/* Create the job's sequences and attach cached prefixes: a leader's prompt
 * (unless prompt log-probs need every row), a pre-empted choice's prompt +
 * generated tokens. Returns KV blocks the job still needs to catch up
 * (prefill / recompute), -1 when sequences ran out, -2 when the attention
 * kind cannot be set (the job fails). */
static int64_t job_start(sched *s, sched_job *j) {
    if (j->kind == SCHED_EMBED) {
        j->embd_seq = engine_seq_create(s->e);
        return j->embd_seq >= 0 ? 0 : -1;
    }
    int64_t need = 0;
    for (int32_t i = 0; i < j->n_slots; i++) {
        sched_slot *sl = &j->slots[i];
        if (sl->state == SLOT_DONE) continue;
        sl->seq = engine_seq_create(s->e);
        if (sl->seq < 0) return -1;
        char aerr[160];
        /* Validated at submit (sched_submit, engine_attention_fits_kv): only
         * OOM (a linear state) fails here, and fails the job. */
        if (j->has_attn && engine_seq_set_attention(s->e, sl->seq, &j->attn, aerr, sizeof aerr)) return -2;
        if (sl->state == SLOT_DECODE || sl->state == SLOT_RECOMPUTE) {
            /* KV must hold hist[0 .. n_hist-1): `next` is fed by decode. */
            int32_t n = (int32_t)sl->n_hist;
            sl->n_fed = engine_seq_attach_prefix(s->e, sl->seq, sl->hist, n);
            sl->state = sl->n_fed == n - 1 ? SLOT_DECODE : SLOT_RECOMPUTE;
            need += engine_seq_kv_blocks_needed(s->e, sl->seq, n - 1 - sl->n_fed);
        } else if (sl->leader == i) {
            int32_t len = j->prompt_len[sl->prompt];
            sl->n_fed = j->prompt_logprobs ? 0 : engine_seq_attach_prefix(s->e, sl->seq, j->prompts[sl->prompt], len);
            sl->n_attached = sl->n_fed;
            sl->prefix_waited = 0;
            sl->state = SLOT_PREFILL;
            need += engine_seq_kv_blocks_needed(s->e, sl->seq, len - sl->n_fed);
        }
    }
    return need;
}

/* NBCE: slot idx's next-token logits of this round. When every sequence
 * has reported, combine (nbce.h), sample choice 0 from the combination and
 * feed its token to every sequence. */
static void nbce_collect(sched *s, sched_job *j, int32_t idx, const float *logits) {
    const int32_t V = s->n_vocab, n = j->n_slots;
    sampler_log_softmax(logits, j->nbce_lp + (size_t)idx * V, V);
    j->slots[idx].state = SLOT_WAIT;
    if (++j->nbce_have < n) return;
    j->nbce_have = 0;
    const float *rows[SCHED_NBCE_MAX];
    for (int32_t k = 0; k + 1 < n; k++) rows[k] = j->nbce_lp + (size_t)k * V;
    float *comb = j->nbce_lp + (size_t)n * V;
    nbce_combine(rows, n - 1, j->nbce_lp + (size_t)(n - 1) * V, V, j->nbce_beta, (enum nbce_pool)j->nbce_pool, comb);
    slot_sample(s, j, 0, comb);
    sched_slot *out = &j->slots[0];
    if (j->finished || out->state != SLOT_DECODE) return;
    for (int32_t k = 1; k < n; k++) {
        sched_slot *sl = &j->slots[k];
        if (sl->state == SLOT_DONE) continue;
        sl->next = out->next;
        sl->state = SLOT_DECODE;
        /* Its history too: a pre-empted shadow recomputes from it. */
        if (sl->n_hist < sl->cap_hist) sl->hist[sl->n_hist++] = out->next;
        sl->n_gen++;
    }
}

/* Admit queued jobs in arrival order while sequences, the running limit and
 * KV blocks allow (blocks: what the job needs to catch up, next to one block
 * per running decode; the first job is admitted whatever its needs, chunked
 * prefill and pre-emption make room as it goes). */
static void sched_admit(sched *s) {
    int32_t running_seqs = 0;
    int64_t decode_reserve = 0;
    for (sched_job *r = s->running.head; r; r = r->next) {
        running_seqs += job_live_seqs(r);
        if (r->kind == SCHED_GENERATE) decode_reserve += job_live_seqs(r);
    }
    while (s->queued.head) {
        sched_job *j = s->queued.head;
        int32_t live = job_live_seqs(j);
        if (j->seqs_needed > s->free_seqs) break;
        if (s->running.n && running_seqs + live > s->max_running) break;
        int64_t need = job_start(s, j);
        if (need == -2) {
            job_release_seqs(s, j);
            list_remove(&s->queued, j);
            job_fail(j, 503, "could not set up the request's attention (%s)", "out of memory");
            job_free(s, j);
            continue;
        }
        int64_t avail = engine_kv_blocks_available(s->e);
        if (need < 0 || (s->running.n && need + decode_reserve + live > avail)) {
            /* Undo: attached prefix blocks go back to the cache. */
            job_release_seqs(s, j);
            break;
        }
        list_remove(&s->queued, j);
        s->free_seqs -= j->seqs_needed;
        j->running = 1;
        running_seqs += live;
        if (j->kind == SCHED_GENERATE) decode_reserve += live;
        list_insert_sorted(&s->running, j);
    }
}

/* Running generations that are still going. */
static int32_t sched_n_generating(const sched *s) {
    int32_t n = 0;
    for (const sched_job *j = s->running.head; j; j = j->next)
        n += j->kind == SCHED_GENERATE && !j->finished && !j->cancelled;
    return n;
}

/* Out of KV blocks: the most recently arrived running generation gives its
 * blocks back and waits at the head of the queue; its choices keep their
 * tokens, samplers and text state and recompute their KV when re-admitted
 * (full blocks usually still in the prefix cache). 0, or -1 when no
 * generation runs. */
static int sched_preempt(sched *s) {
    sched_job *v = s->running.tail;
    while (v && (v->kind != SCHED_GENERATE || v->finished || v->cancelled)) v = v->prev;
    if (!v) return -1;
    for (int32_t i = 0; i < v->n_slots; i++) {
        sched_slot *sl = &v->slots[i];
        if (sl->seq >= 0) s->n_preemptions++;
        if (sl->state == SLOT_RECOMPUTE) sl->state = SLOT_DECODE;
    }
    job_release_seqs(s, v);
    list_remove(&s->running, v);
    v->running = 0;
    v->was_preempted = 1;
    s->free_seqs += v->seqs_needed;
    list_push_front(&s->queued, v);
    return 0;
}

/* Free finished and cancelled jobs (only between steps: their sequences
 * may be in the batch in flight), and end those past their deadline. */
static void sched_cleanup(sched *s) {
    uint64_t now = uv_now(s->loop);
    for (sched_job *j = s->running.head, *nx; j; j = nx) {
        nx = j->next;
        if (!j->finished && !j->cancelled && j->deadline_ms && now >= j->deadline_ms) {
            /* request-timeout: cut every unfinished choice as if max_tokens was reached */
            if (j->kind == SCHED_EMBED) job_fail(j, 503, "request timed out (%s)", "request-timeout");
            for (int32_t i = 0; i < j->n_slots && !j->finished; i++)
                if (j->slots[i].state != SLOT_DONE) slot_finish(s, j, i, "length", 1);
        }
        if (j->finished || j->cancelled) {
            list_remove(&s->running, j);
            job_free(s, j);
        }
    }
    for (sched_job *j = s->queued.head, *nx; j; j = nx) {
        nx = j->next;
        if (!j->cancelled && j->deadline_ms && now >= j->deadline_ms)
            job_fail(j, 503, "request timed out waiting for a free slot (%s)", "request-timeout");
        if (j->finished || j->cancelled) {
            list_remove(&s->queued, j);
            job_free(s, j);
        }
    }
}

static void sched_plan(sched *s);

/* Log-prob of `token` under one logits row, with the n_top best alternatives. */
static void row_logprob(sched *s, const float *row, int32_t token, int32_t n_top, sampler_result *r) {
    sampler_log_softmax(row, s->lsm, s->n_vocab);
    r->token = token;
    r->logprob = s->lsm[token];
    r->n_top = 0;
    for (int32_t v = 0; v < s->n_vocab; v++) {
        float x = s->lsm[v];
        if (r->n_top == n_top && (n_top == 0 || x <= r->top_logprobs[n_top - 1])) continue;
        int32_t k = r->n_top < n_top ? r->n_top++ : n_top - 1;
        while (k > 0 && r->top_logprobs[k - 1] < x) {
            r->top_logprobs[k] = r->top_logprobs[k - 1];
            r->top_ids[k] = r->top_ids[k - 1];
            k--;
        }
        r->top_logprobs[k] = x;
        r->top_ids[k] = v;
    }
}

static void sched_work_cb(uv_work_t *w) {
    sched *s = w->data;
    s->step_rc = engine_step(s->e, s->items, s->n_items);
}

static void sched_after_cb(uv_work_t *w, int status) {
    sched *s = w->data;
    s->in_flight = 0;
    if (s->step_rc < 0 || status < 0) {
        char why[64];
        snprintf(why, sizeof why, "engine_step returned %d", s->step_rc < 0 ? s->step_rc : status);
        for (int32_t i = 0; i < s->n_items; i++) job_fail(s->item_job[i], 500, "inference step failed (%s)", why);
    } else {
        metrics_step(s->mm, engine_last_step_seconds(s->e), s->items, s->n_items);
        for (int32_t i = 0; i < s->n_items; i++) {
            sched_job *j = s->item_job[i];
            if (j->finished || j->cancelled) continue;
            engine_item *it = &s->items[i];
            if (j->kind == SCHED_EMBED) {
                if (j->ops.on_embd) j->ops.on_embd(j->user, j->embd_next, it->logits, s->n_embd);
                engine_seq_truncate(s->e, j->embd_seq, 0);
                if (++j->embd_next == j->n_prompts) job_complete(j, NULL);
                continue;
            }
            int32_t idx = s->item_slot[i];
            sched_slot *sl = &j->slots[idx];
            if (sl->state == SLOT_PREFILL) {
                int32_t chunk = s->item_chunk[i], len = j->prompt_len[sl->prompt];
                const float *last = it->logits;
                if (j->prompt_logprobs) {
                    /* Row k holds the prediction for the token after position n_fed + k;
                     * positions reported before a pre-emption are not reported again. */
                    const int32_t *toks = j->prompts[sl->prompt];
                    for (int32_t k = 0; k < chunk && !j->finished; k++) {
                        int32_t pos = sl->n_fed + k + 1;
                        if (pos >= len) break;
                        if (pos <= sl->n_lp) continue;
                        sl->n_lp = pos;
                        sampler_result r;
                        row_logprob(s, it->logits + (size_t)k * s->n_vocab, toks[pos], j->n_top, &r);
                        if (j->ops.on_prompt_token) j->ops.on_prompt_token(j->user, sl->prompt, pos, toks[pos], &r);
                    }
                    last = it->logits + (size_t)(chunk - 1) * s->n_vocab;
                }
                sl->n_fed += chunk;
                if (sl->n_fed == len && !j->finished) {
                    sl->state = SLOT_WAIT;
                    if (j->prompt_logprobs && j->ops.on_prompt_done && !sl->lp_done) j->ops.on_prompt_done(j->user, sl->prompt);
                    sl->lp_done = 1;
                    prefill_done(s, j, idx, last);
                }
            } else if (sl->state == SLOT_RECOMPUTE) {
                sl->n_fed += s->item_chunk[i];
                if (sl->n_fed == (int32_t)sl->n_hist - 1) sl->state = SLOT_DECODE;
            } else if (sl->state == SLOT_DECODE) {
                if (j->nbce) nbce_collect(s, j, idx, it->logits);
                else slot_sample(s, j, idx, it->logits);
            }
        }
    }
    s->n_items = 0;
    sched_plan(s);
}

static void item_add(sched *s, sched_job *j, int32_t slot, int32_t seq, const int32_t *toks, int32_t n,
                     enum engine_out out) {
    int32_t k = s->n_items++;
    s->items[k] = (engine_item){.seq = seq, .tokens = toks, .n_tokens = n, .out = out, .logits = NULL};
    s->item_job[k] = j;
    s->item_slot[k] = slot;
    s->item_chunk[k] = n;
}

/* Jobs whose sequences store the same K/V for the same tokens. */
static int same_kv(const sched_job *a, const sched_job *b) {
    if (a->has_attn != b->has_attn) return 0;
    return !a->has_attn || (a->attn.kind == b->attn.kind && a->attn.window == b->attn.window &&
                            a->attn.sinks == b->attn.sinks && a->attn.logn == b->attn.logn &&
                            a->attn.rope_set == b->attn.rope_set);
}

/* A leader that computed nothing of its own yet waits while an earlier
 * job is still prefilling a longer run of the same prompt tokens (16 users
 * arriving together with one system prompt compute it once, not 16 times):
 * 1 to wait. Once the other job's blocks are cached it re-attaches. */
static int slot_prefix_wait(const sched *s, const sched_job *j, const sched_slot *sl) {
    const int32_t *p = j->prompts[sl->prompt];
    int32_t len = j->prompt_len[sl->prompt], bt = engine_get_info(s->e)->kv_block_tokens;
    for (const sched_job *y = s->running.head; y && y != j; y = y->next) {
        if (y->kind != SCHED_GENERATE || y->finished || y->cancelled || y->prompt_logprobs || !same_kv(j, y)) continue;
        for (int32_t i = 0; i < y->n_slots; i++) {
            const sched_slot *ys = &y->slots[i];
            if (ys->leader != i || ys->state != SLOT_PREFILL) continue;
            const int32_t *q = y->prompts[ys->prompt];
            int32_t m = y->prompt_len[ys->prompt] < len - 1 ? y->prompt_len[ys->prompt] : len - 1, c = 0;
            while (c < m && p[c] == q[c]) c++;
            int32_t usable = c / bt * bt; /* full blocks this prompt could take from y's */
            if (usable > sl->n_fed && ys->n_fed < usable) return 1;
        }
    }
    return 0;
}

/* Largest n <= want whose KV blocks fit in avail. */
static int32_t fit_tokens(sched *s, int32_t seq, int32_t want, int64_t avail) {
    if (engine_seq_kv_blocks_needed(s->e, seq, want) <= avail) return want;
    int32_t lo = 0, hi = want; /* lo fits, hi does not */
    while (hi - lo > 1) {
        int32_t mid = lo + (hi - lo) / 2;
        if (engine_seq_kv_blocks_needed(s->e, seq, mid) <= avail) lo = mid; else hi = mid;
    }
    return lo;
}

/* Between steps: clean up, admit, and start the next step if there is work.
 * Decode tokens come first (they keep running streams moving), each with
 * the KV block it may need; when blocks run out the newest running job is
 * pre-empted and the plan starts over. Then prompt (and recompute) chunks in
 * arrival order, each at most prefill_chunk tokens and what the remaining
 * token budget and blocks allow. */
static void sched_plan(sched *s) {
    if (s->in_flight || !s->e) return;
    sched_cleanup(s);
    sched_admit(s);
restart:
    s->n_items = 0;
    int32_t budget = s->batch_tokens;
    int64_t avail = engine_kv_blocks_available(s->e);
    for (sched_job *j = s->running.head; j && budget > 0; j = j->next) {
        if (j->kind != SCHED_GENERATE || j->finished || j->cancelled) continue;
        if (j->nbce) {
            /* All of an NBCE job's sequences decode in the same step, or none. */
            int32_t nd = 0;
            for (int32_t i = 0; i < j->n_slots; i++) nd += j->slots[i].state == SLOT_DECODE;
            if (nd > budget || s->n_items + nd > s->cap_items) continue;
        }
        for (int32_t i = 0; i < j->n_slots && budget > 0 && s->n_items < s->cap_items; i++) {
            sched_slot *sl = &j->slots[i];
            if (sl->state != SLOT_DECODE) continue;
            int64_t need = engine_seq_kv_blocks_needed(s->e, sl->seq, 1);
            if (need > avail) {
                /* The newest generation yields (this one included); when
                 * it is the only one, the pool cannot hold it any longer:
                 * end this choice as a full context would. */
                if (sched_n_generating(s) > 1) sched_preempt(s);
                else slot_finish(s, j, i, "length", 1);
                goto restart;
            }
            avail -= need;
            item_add(s, j, i, sl->seq, &sl->next, 1, ENGINE_OUT_LAST);
            budget--;
        }
    }
    for (sched_job *j = s->running.head; j && budget > 0; j = j->next) {
        if (s->n_items >= s->cap_items) break;
        if (j->finished || j->cancelled) continue;
        if (j->kind == SCHED_EMBED) {
            int32_t len = j->prompt_len[j->embd_next];
            if (len > budget) continue;
            int64_t need = engine_seq_kv_blocks_needed(s->e, j->embd_seq, len);
            if (need > avail) continue;
            avail -= need;
            item_add(s, j, j->embd_next, j->embd_seq, j->prompts[j->embd_next], len, ENGINE_OUT_EMBD);
            budget -= len;
            continue;
        }
        for (int32_t i = 0; i < j->n_slots && budget > 0 && s->n_items < s->cap_items; i++) {
            sched_slot *sl = &j->slots[i];
            if (sl->state != SLOT_PREFILL && sl->state != SLOT_RECOMPUTE) continue;
            int recompute = sl->state == SLOT_RECOMPUTE;
            if (!recompute && !j->prompt_logprobs && sl->n_fed == sl->n_attached) {
                if (slot_prefix_wait(s, j, sl)) {
                    sl->prefix_waited = 1;
                    continue;
                }
                if (sl->prefix_waited) {
                    /* Take what the job waited for from the cache. */
                    sl->prefix_waited = 0;
                    engine_seq_truncate(s->e, sl->seq, 0);
                    sl->n_fed = sl->n_attached =
                        engine_seq_attach_prefix(s->e, sl->seq, j->prompts[sl->prompt], j->prompt_len[sl->prompt]);
                }
            }
            int32_t len = recompute ? (int32_t)sl->n_hist - 1 : j->prompt_len[sl->prompt], left = len - sl->n_fed;
            int32_t chunk = left < budget ? left : budget;
            if (chunk > s->prefill_chunk) chunk = s->prefill_chunk;
            chunk = fit_tokens(s, sl->seq, chunk, avail);
            if (chunk <= 0) continue;
            avail -= engine_seq_kv_blocks_needed(s->e, sl->seq, chunk);
            const int32_t *src = recompute ? sl->hist : j->prompts[sl->prompt];
            enum engine_out out = recompute ? ENGINE_OUT_NONE
                                  : j->prompt_logprobs ? ENGINE_OUT_ALL
                                  : chunk == left ? ENGINE_OUT_LAST : ENGINE_OUT_NONE;
            item_add(s, j, i, sl->seq, src + sl->n_fed, chunk, out);
            budget -= chunk;
        }
    }
    if (!s->n_items) {
        /* Jobs wait for blocks that only a running job can give back (two
         * prompts each holding half the pool): pre-empt the newest. */
        int pending = 0;
        for (sched_job *j = s->running.head; j; j = j->next)
            if (!j->finished && !j->cancelled) pending++;
        if (pending > 1 && sched_n_generating(s) > 0 && sched_preempt(s) == 0) goto restart;
        return;
    }
    metrics_kv_snapshot(s->mm, s->e); /* the last moment the engine is not in use */
    s->in_flight = 1;
    s->work.data = s;
    if (uv_queue_work(s->loop, &s->work, sched_work_cb, sched_after_cb) < 0) {
        s->in_flight = 0;
        for (int32_t i = 0; i < s->n_items; i++) job_fail(s->item_job[i], 503, "could not start a step (%s)", "uv_queue_work");
        s->n_items = 0;
    }
}

void sched_set_limits(sched *s, int32_t max_running, int32_t prefill_chunk) {
    s->max_running = max_running > 0 ? max_running : s->max_seqs;
    s->prefill_chunk = prefill_chunk > 0 ? prefill_chunk : s->batch_tokens;
}

/* KV blocks a job needs at the least to make progress alone: each prompt
 * and its first token (choices share the prompt's full blocks). */
static int64_t sched_kv_blocks_min(const sched *s, const sched_job_spec *spec) {
    int32_t bt = engine_get_info(s->e)->kv_block_tokens;
    int64_t need = 0;
    for (int32_t i = 0; i < spec->n_prompts; i++) {
        int64_t b = ((int64_t)spec->prompt_len[i] + 1 + bt - 1) / bt;
        if (spec->kind == SCHED_EMBED) { if (b > need) need = b; }
        else need += b + (spec->n - 1);
    }
    return need;
}

int sched_submit(sched *s, const sched_job_spec *spec, const sched_job_ops *ops, void *user,
                 sched_job **out, api_error *err) {
    *out = NULL;
    int32_t n_slots = spec->kind == SCHED_EMBED ? spec->n_prompts : spec->n_prompts * spec->n;
    int32_t need = spec->kind == SCHED_EMBED ? 1 : n_slots;
    int32_t queue_need = 0;
    for (sched_job *q = s->queued.head; q; q = q->next) queue_need += q->seqs_needed;
    const char *fail = NULL;
    char aerr[200];
    if (!s->e) {
        api_error_set(err, 503, NULL, NULL, "model_loading", "the model is still loading");
        fail = "";
    } else if (need > s->max_seqs) {
        api_error_set(err, 400, NULL, "n", "invalid_value",
                      "this request needs %d sequences (prompts x n) but the server runs at most %d (--max-seqs)",
                      (int)need, (int)s->max_seqs);
        fail = "";
    } else if (sched_kv_blocks_min(s, spec) > engine_get_info(s->e)->kv_blocks) {
        const engine_info *in = engine_get_info(s->e);
        api_error_set(err, 400, NULL, NULL, "context_length_exceeded",
                      "this request needs %lld KV blocks of %d tokens for its prompt(s) but the KV cache holds %lld (--kv-memory)",
                      (long long)sched_kv_blocks_min(s, spec), (int)in->kv_block_tokens, (long long)in->kv_blocks);
        fail = "";
    } else if (spec->nbce && (spec->n != 1 || spec->n_prompts < 2 || spec->n_prompts > SCHED_NBCE_MAX)) {
        api_error_set(err, 400, NULL, "contexts", "invalid_value",
                      "NBCE needs n = 1 and 1 to %d contexts", SCHED_NBCE_MAX - 1);
        fail = "";
    } else if (spec->attn && engine_attention_fits_kv(s->e, spec->attn, aerr, sizeof aerr)) {
        api_error_set(err, 400, NULL, "attention", "invalid_value", "%s", aerr);
        fail = "";
    } else if (s->free_seqs < queue_need + need && s->queued.n >= s->queue_len) {
        api_error_set(err, 503, NULL, NULL, "queue_full", "server busy: %d requests are waiting; retry later",
                      (int)s->queued.n);
        fail = "";
    }
    if (fail) {
        for (int32_t i = 0; i < spec->n_prompts; i++) free(spec->prompts[i]);
        return -1;
    }
    sched_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->kind = spec->kind;
    j->ops = *ops;
    j->user = user;
    j->n_prompts = spec->n_prompts;
    j->prompts = malloc((size_t)spec->n_prompts * sizeof *j->prompts);
    j->prompt_len = malloc((size_t)spec->n_prompts * sizeof *j->prompt_len);
    if (!j->prompts || !j->prompt_len) abort();
    memcpy(j->prompts, spec->prompts, (size_t)spec->n_prompts * sizeof *j->prompts);
    memcpy(j->prompt_len, spec->prompt_len, (size_t)spec->n_prompts * sizeof *j->prompt_len);
    j->n = spec->n;
    if (spec->attn) {
        j->has_attn = 1;
        j->attn = *spec->attn;
    }
    if (spec->nbce) {
        j->nbce = 1;
        j->nbce_beta = spec->nbce_beta;
        j->nbce_pool = spec->nbce_pool;
        j->nbce_lp = malloc(((size_t)n_slots + 1) * (size_t)s->n_vocab * sizeof(float));
        if (!j->nbce_lp) abort();
    }
    j->n_slots = spec->kind == SCHED_EMBED ? 0 : n_slots;
    j->seqs_needed = need;
    j->max_tokens = spec->max_tokens;
    j->logprobs = spec->sp.n_top_logprobs >= 0 && ops->on_token;
    j->prompt_logprobs = spec->prompt_logprobs;
    j->include_stop_str = spec->include_stop_str;
    j->render_special = spec->render_special;
    j->n_top = spec->sp.n_top_logprobs < 0 ? 0 : spec->sp.n_top_logprobs > 20 ? 20 : spec->sp.n_top_logprobs;
    j->embd_seq = -1;
    j->arrival = ++s->n_arrivals;
    j->deadline_ms = spec->timeout_s > 0 ? uv_now(s->loop) + (uint64_t)(spec->timeout_s * 1000.0) : 0;
    size_t max_stop = 0;
    for (int32_t i = 0; i < spec->n_stop && i < 4; i++) {
        j->stop[i] = malloc(spec->stop_len[i] + 1);
        if (!j->stop[i]) abort();
        memcpy(j->stop[i], spec->stop[i], spec->stop_len[i]);
        j->stop[i][spec->stop_len[i]] = 0;
        j->stop_len[i] = spec->stop_len[i];
        if (spec->stop_len[i] > max_stop) max_stop = spec->stop_len[i];
        j->n_stop++;
    }
    if (spec->grammar) {
        grammar_retain(spec->grammar);
        j->grammar = spec->grammar;
    } else if (spec->lazy_grammar && spec->trigger_len && spec->trigger_len <= SCHED_TRIGGER_MAX) {
        grammar_retain(spec->lazy_grammar);
        j->lazy_grammar = spec->lazy_grammar;
        memcpy(j->trigger, spec->trigger, spec->trigger_len);
        j->trigger_len = spec->trigger_len;
    }
    if (j->n_slots) {
        j->slots = calloc((size_t)j->n_slots, sizeof *j->slots);
        if (!j->slots) abort();
    }
    for (int32_t i = 0; i < j->n_slots; i++) {
        sched_slot *sl = &j->slots[i];
        sl->seq = -1;
        sl->prompt = i / spec->n;
        sl->leader = sl->prompt * spec->n;
        sl->state = SLOT_WAIT;
        int32_t len = j->prompt_len[sl->prompt];
        int64_t cap = (int64_t)len + spec->max_tokens + 1;
        if (cap > (int64_t)s->n_ctx + 1) cap = (int64_t)s->n_ctx + 1;
        if (cap < len) cap = len;
        sl->cap_hist = cap;
        sl->hist = malloc((size_t)cap * sizeof(int32_t));
        sampler_params sp = spec->sp;
        sp.seed = spec->sp.seed + (uint64_t)i; /* distinct, reproducible streams per choice */
        if (sp.n_top_logprobs < 0) sp.n_top_logprobs = 0;
        sl->smp = sampler_create(&sp, s->n_vocab);
        if (j->n_stop) {
            sl->cap_held = max_stop + sizeof s->text + 16;
            sl->held = malloc(sl->cap_held);
        }
        if (j->grammar || j->lazy_grammar) {
            int grc = 0;
            sl->gm = grammar_matcher_create(j->grammar ? j->grammar : j->lazy_grammar, spec->gvocab, &grc);
            sl->gm_on = j->grammar != NULL;
            if (!sl->gm && grc != GRAMMAR_ERR_NOMEM) {
                api_error_set(err, 500, NULL, NULL, "grammar_error", "cannot start the grammar (error %d)", grc);
                job_free(s, j);
                return -1;
            }
        }
        if (!sl->hist || !sl->smp || (j->n_stop && !sl->held) || ((j->grammar || j->lazy_grammar) && !sl->gm)) {
            api_error_set(err, 503, NULL, NULL, "out_of_memory", "out of memory for this request");
            job_free(s, j);
            return -1;
        }
        memcpy(sl->hist, j->prompts[sl->prompt], (size_t)len * sizeof(int32_t));
        sl->n_hist = len;
        tok_stream_init(&sl->ts, s->tok, spec->strip_leading_space);
    }
    j->t_submit_ns = uv_hrtime();
    for (int32_t i = 0; spec->kind == SCHED_GENERATE && i < spec->n_prompts; i++) metrics_prompt_tokens(s->mm, spec->prompt_len[i]);
    list_push(&s->queued, j);
    *out = j;
    sched_plan(s);
    return 0;
}

void sched_job_cancel(sched *s, sched_job *j) {
    if (!j) return;
    j->cancelled = 1;
    j->user = NULL;
    if (!s->in_flight) sched_plan(s); /* frees it now and lets the queue move */
}

void sched_cancel_all(sched *s) {
    api_error e;
    api_error_set(&e, 503, NULL, NULL, "shutting_down", "the server is shutting down");
    for (sched_job *j = s->running.head; j; j = j->next) job_complete(j, &e);
    for (sched_job *j = s->queued.head; j; j = j->next) job_complete(j, &e);
    if (!s->in_flight) sched_cleanup(s);
}

int32_t sched_n_running(const sched *s) { return s->running.n; }
int32_t sched_n_queued(const sched *s) { return s->queued.n; }
int sched_busy(const sched *s) { return s->in_flight || s->running.n || s->queued.n; }
uint64_t sched_n_preemptions(const sched *s) { return s->n_preemptions; }
void sched_set_metrics(sched *s, metrics_model *mm) { s->mm = mm; }
