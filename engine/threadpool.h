/* threadpool.h -- a persistent pool of worker threads for the forward pass.
 *
 * threadpool_run() hands n_tasks independent tasks to the workers AND the
 * calling thread; tasks are claimed dynamically (an atomic counter), so a
 * slow core does not hold the others back. Workers spin briefly between jobs
 * (a decode step issues ~5 jobs per layer, microseconds apart) and then sleep
 * on a futex, so an idle engine costs no CPU. No thread is created per job.
 *
 * One thread at a time may call threadpool_run (the engine's worker thread). */
#ifndef QKVD_THREADPOOL_H
#define QKVD_THREADPOOL_H

#include <stdint.h>

typedef struct threadpool threadpool; /* opaque */

/* A task: `task` in [0, n_tasks), `thread` in [0, n_threads) identifies the
 * executing thread (index for per-thread scratch buffers). */
typedef void (*threadpool_fn)(void *ctx, int32_t task, int32_t thread);

/* Create a pool of n_threads threads in total, counting the caller (so
 * n_threads - 1 workers are started). n_threads <= 0: online CPUs. Returns
 * NULL if a thread cannot be started. Owned by the caller: threadpool_free. */
threadpool *threadpool_create(int32_t n_threads);
/* Stop and join the workers; accepts NULL. */
void threadpool_free(threadpool *tp);
int32_t threadpool_n_threads(const threadpool *tp);

/* Run fn(ctx, i, thread) for every i in [0, n_tasks) and return when all
 * have finished. The caller takes part. */
void threadpool_run(threadpool *tp, int32_t n_tasks, threadpool_fn fn, void *ctx);

#endif
