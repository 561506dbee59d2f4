/* model_pool.h -- `qkvd serve --models-dir DIR`: many models, loaded on demand.
 *
 * Every *.gguf in DIR is a model, listed by /v1/models under its file stem or
 * an alias (--model-aliases "alias=stem,..."). A request naming a model that
 * is not loaded waits (its connection parked) while the model loads on a
 * worker thread, with progress in the log; at most --max-loaded-models are
 * kept, unloading the least recently used one that is idle -- never one with
 * jobs queued or running. Each loaded model has its own engine, scheduler and
 * chat template inside its own serve_app, so the route modules serve it
 * unchanged: the pool only decides which serve_app a request goes to.
 * Everything here runs on the loop thread (loading runs on a worker and is
 * handed back in the completion callback). */
#ifndef QKVD_MODEL_POOL_H
#define QKVD_MODEL_POOL_H

#include <stddef.h>
#include <stdint.h>
#include "serve.h"

/* One model found in the directory. */
typedef struct pool_entry {
    char id[256];     /* served id: alias, else the file stem */
    char stem[256];   /* file name without .gguf */
    char path[4096];  /* DIR/FILE.gguf */
} pool_entry;

/* List DIR's *.gguf files (sorted by name) and apply aliases ("a=stem,b=x.gguf";
 * "" for none). 0 with a malloc'd array in *out (caller frees) and its length,
 * or -1 with a message (unreadable dir, no models, alias naming no file,
 * duplicate id). */
int model_pool_scan(const char *dir, const char *aliases, pool_entry **out, int *n_out, char *err, size_t errlen);

/* LRU choice among n models: the index of the loaded, idle model with the
 * smallest last_used, or -1 when every loaded model is busy (or none is loaded). */
int model_pool_pick_victim(const int *loaded, const int *busy, const uint64_t *last_used, int n);

typedef struct model_pool model_pool;

/* Scan front->cfg.models_dir and build the pool on front's loop. Nothing is
 * loaded yet; when front->cfg.model names one of the models (id, file name,
 * stem or path) it starts loading at once and is the default for requests
 * without a "model" (else the first model is). Requests name models by id.
 * NULL with a message on error. front must outlive the pool. */
model_pool *model_pool_create(serve_app *front, char *err, size_t errlen);
/* The HTTP dispatch function in --models-dir mode (app is the pool). */
void model_pool_dispatch(void *pool, http_req *r);
/* Any model has jobs or a load in flight (drain waits for it). */
int model_pool_busy(const model_pool *p);
/* End every job of every model (grace period over) and fail parked requests. */
void model_pool_cancel_all(model_pool *p);
/* Shutting down, on the loop: cancel everything, close the pool's handle;
 * a load still in flight is freed when it completes. */
void model_pool_stop(model_pool *p);
/* Free everything; after uv_run has returned (no step or load in flight). */
void model_pool_destroy(model_pool *p);

#endif
