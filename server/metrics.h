/* metrics.h -- the Prometheus registry of `qkvd serve` (GET /metrics).
 *
 * One registry per process. Process-wide series (requests by endpoint and
 * status, request duration) live in `metrics`; everything about one served
 * model lives in a `metrics_model` (label model="ID"): one for `--model`,
 * one per model of `--models-dir`, created up front so that a model that is
 * not loaded still shows up (qkvd_model_loaded 0) and its counters survive
 * an unload and a reload.
 *
 * Counters and histograms are pushed by one-line hooks (http.c, scheduler.c);
 * gauges (running and waiting requests, KV blocks and bytes) and the engine's
 * own cumulative counters (prefix-cache lookups and hits, pre-emptions) are
 * pulled from the attached scheduler and engine when /metrics is rendered.
 *
 * Threads: every function here runs on the loop thread (HTTP callbacks,
 * scheduler completions and route handlers all do), so the registry needs no
 * locks. The one thing another thread touches is the engine during a step:
 * its KV statistics are therefore read only between steps (metrics_kv_snapshot
 * from the scheduler before it starts a step, or at render time when the
 * scheduler is idle), never while a step may be running.
 *
 * Every hook accepts a NULL registry or model (--no-metrics): it does nothing. */
#ifndef QKVD_METRICS_H
#define QKVD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "engine.h"

struct sched;
typedef struct metrics metrics;
typedef struct metrics_model metrics_model;

/* A new empty registry (aborts on OOM: small bookkeeping). metrics_free
 * releases it and every metrics_model it handed out (accepts NULL). */
metrics *metrics_create(void);
void metrics_free(metrics *m);

/* The series of model `model_id` (copied), created on first use. NULL when m
 * is NULL. The pointer stays valid until metrics_free. */
metrics_model *metrics_model_get(metrics *m, const char *model_id);

/* The model is loaded: its scheduler and engine are read at render time and
 * the scheduler is given mm for its hooks (sched_set_metrics). Both must stay
 * alive until metrics_model_detach. Records the model-info labels. */
void metrics_model_attach(metrics_model *mm, struct sched *s, const engine *e);
/* The model is about to be unloaded (call before freeing its scheduler and
 * engine, with no step in flight): their cumulative counters are folded into
 * the model's series, so they keep growing after a reload. */
void metrics_model_detach(metrics_model *mm);
/* Requests parked while the model loads (--models-dir) count as waiting:
 * *n_waiters is read at render time; the int must outlive the registry. */
void metrics_model_set_waiters(metrics_model *mm, const int *n_waiters);

/* ---- hooks (loop thread) ---- */

/* A request ended: its path (mapped to a fixed set of endpoints, anything
 * else is "other"), HTTP status (0 when no reply was sent) and duration. */
void metrics_request(metrics *m, const char *path, int status, double seconds);
/* A generation job was accepted with these prompt tokens (each distinct
 * prompt once, as usage.prompt_tokens counts them). */
void metrics_prompt_tokens(metrics_model *mm, int64_t n);
/* A token was sampled for one sequence. t_start_ns: uv_hrtime() when its job
 * was submitted; *t_last_ns: the sequence's previous token time (0 before the
 * first; updated here). The first token observes time-to-first-token, later
 * ones inter-token latency. counted: 0 for an end-of-generation token (timed,
 * but not a generated token, as in usage.completion_tokens). */
void metrics_token(metrics_model *mm, uint64_t t_start_ns, uint64_t *t_last_ns, int counted);
/* An engine step finished: its duration (seconds) and its items (their
 * tokens are counted). */
void metrics_step(metrics_model *mm, double seconds, const engine_item *items, int32_t n_items);
/* Copy the engine's KV statistics; call only when no step is in flight. */
void metrics_kv_snapshot(metrics_model *mm, const engine *e);

/* ---- exposition ---- */

/* The whole registry in Prometheus text format 0.0.4: a malloc'd,
 * NUL-terminated string (caller frees), its length in *len. */
char *metrics_render(metrics *m, size_t *len);
/* The Content-Type of metrics_render's output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Label value escaping of the text format (backslash, double quote and
 * newline as \\, \" and \n) appended to dst[0..cap) with NUL; returns the
 * length it needs (like snprintf). Exposed for tests. */
size_t metrics_escape_label(const char *s, char *dst, size_t cap);
/* The endpoint label for a request path ("/v1/chat/completions", ... or
 * "other"). Exposed for tests. */
const char *metrics_endpoint(const char *path);

#endif
