/* threadpool.h -- a persistent pool of worker threads for the forward pass.
 *
 * threadpool_run() hands n_tasks independent tasks to the workers AND the
 * calling thread; tasks are claimed dynamically (an atomic counter), so a
 * slow core does not hold the others back. Workers spin briefly between jobs
 * (a multi-token step issues ~5 jobs per layer, microseconds apart) and then
 * sleep on a futex, so an idle engine costs no CPU. No thread is created per
 * job. threadpool_run_phased() runs a chain of dependent phases (a whole
 * single-token decode step) as one job.
 *
 * One thread at a time may call threadpool_run / threadpool_run_phased (the
 * engine's worker thread). */
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

/* A task of a phased job: task_in_phase in [0, tasks of that phase). */
typedef void (*threadpool_phase_fn)(void *ctx, int32_t phase, int32_t task_in_phase, int32_t thread);

/* Run a chain of dependent phases as ONE job: phase p has
 * phase_end[p] - phase_end[p - 1] tasks (phase_end[-1] = 0; phase_end
 * ascends, a phase may have one task for serial work), and no task of phase
 * p starts before every task of the phases before it has finished. Tasks are
 * claimed in order, so a thread that runs out of work in a phase moves on
 * and waits at the start of the next one: a barrier costs a few cache-line
 * transfers, not a job hand-off (a single-token decode step is ~11 phases
 * per layer). phase_end (not copied) must stay valid until the call
 * returns. The caller takes part. */
void threadpool_run_phased(threadpool *tp, int32_t n_phases, const int32_t *phase_end,
                           threadpool_phase_fn fn, void *ctx);

/* 1 if, within the last 200 ms, a thread of the pool saw itself descheduled
 * (a spin or yield that lost its CPU for over 40 us): the cores are shared
 * with other work. Phased jobs then lose to separate jobs, whose workers
 * sleep between them and rarely hold a task when preempted. */
int threadpool_contended(threadpool *tp);

#endif
