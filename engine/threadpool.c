/* threadpool.c -- persistent workers, dynamic task claiming, spin-then-futex. */
#include "threadpool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a worker spins for the next job before sleeping on the futex.
 * A decode step issues jobs a few microseconds apart, so on an idle machine
 * a short spin catches the next one without a futex wake-up (~5-50 us in a
 * VM). On an oversubscribed machine spinning is harmful: measured on the
 * shared 2-core VM (load 6-8), workers spinning ~1 ms burnt the CPU share
 * the scheduler then withheld from the thread doing the work: the caller
 * ran 85-97% of all tasks, and 2 threads decoded 135m Q4_0 at 17-24 tok/s
 * against 34-53 for 1 thread. So a worker stops spinning for a while once
 * it sees it was descheduled in the middle of a spin (a gap of more than
 * TP_PREEMPT_NS between two clock reads). QKVD_POOL_SPIN_US overrides the
 * budget (0: always sleep at once). */
#define TP_SPIN_US_DEFAULT 50
/* Pause iterations between clock reads while spinning (~1-2 us). */
#define TP_SPIN_CHECK 32
/* A gap this long between two clock reads of a spin means the thread lost
 * its CPU; it then sleeps at once between jobs for TP_CONTENDED_NS. */
#define TP_PREEMPT_NS 40000
#define TP_CONTENDED_NS 200000000
/* Pause iterations the caller spins waiting for a straggling task before it
 * yields its CPU (the straggler may be waiting for that very CPU). */
#define TP_WAIT_SPINS 256

struct threadpool {
    int32_t n_threads;
    pthread_t *threads;
    /* The current job, written by the caller before `claim` is published. */
    threadpool_fn fn;
    void *ctx;
    int32_t n_tasks;
    /* (generation << 32) | next unclaimed task. A worker claims a task with a
     * CAS that also checks the generation, so a worker that wakes late (the
     * 2 cores are shared) can never run a task of a job it did not see, and
     * the caller never waits for workers that have no task: it waits for the
     * TASKS to finish. */
    _Atomic uint64_t claim;
    _Atomic int32_t tasks_done;
    _Atomic uint32_t gen;     /* job generation: workers wait for it to change */
    _Atomic int32_t sleepers; /* workers blocked in futex_wait */
    _Atomic int32_t stop;
    int64_t spin_ns;          /* worker spin budget between jobs */
    /* Until when (CLOCK_MONOTONIC ns) some thread of the pool last saw
     * itself descheduled: the cores are shared with other work. */
    _Atomic int64_t contended_until;
    /* The current phased job (threadpool_run_phased), else unused. */
    threadpool_phase_fn phase_fn;
    void *phase_ctx;
    const int32_t *phase_end;
    int32_t n_phases;
};

typedef struct tp_worker_arg {
    threadpool *tp;
    int32_t index;
} tp_worker_arg;

static void tp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t tp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void tp_futex_wait(_Atomic uint32_t *addr, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void tp_futex_wake_all(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

/* Claim and run tasks of job generation g until none are left (or the job
 * is no longer current). */
static void tp_work(threadpool *tp, uint32_t g, int32_t thread) {
    uint64_t c = atomic_load_explicit(&tp->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(c >> 32) != g) return;
        /* Read the task count BEFORE claiming: once the claim makes index
         * c >= n_tasks, the job may end and the caller post the next one
         * (new n_tasks) -- reading it after the claim could then run a task
         * of the new job under the old claim, twice, and count it done
         * early. The caller changes the claim word before it rewrites
         * n_tasks (threadpool_run), so a successful CAS on c proves n
         * belongs to generation g. */
        int32_t n = tp->n_tasks;
        if (!atomic_compare_exchange_weak_explicit(&tp->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* Task (c & 0xffffffff) of job g is ours: the job cannot end before
         * we finish it, so its description is stable now. */
        int32_t i = (int32_t)(uint32_t)c;
        if (i >= n) return;
        tp->fn(tp->ctx, i, thread);
        atomic_fetch_add_explicit(&tp->tasks_done, 1, memory_order_release);
        c = atomic_load_explicit(&tp->claim, memory_order_acquire);
    }
}

static void *tp_worker_main(void *p) {
    tp_worker_arg *arg = p;
    threadpool *tp = arg->tp;
    int32_t index = arg->index;
    free(arg);
    uint32_t seen = 0; /* gen at creation: a job may be posted before this thread runs */
    int64_t contended_until = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        int64_t t0 = 0, last = 0;
        while ((g = atomic_load_explicit(&tp->gen, memory_order_acquire)) == seen) {
            if (++spins % TP_SPIN_CHECK != 0) { tp_cpu_relax(); continue; }
            int64_t now = tp_now_ns();
            if (t0 == 0) t0 = now;
            if (last && now - last > TP_PREEMPT_NS) {
                contended_until = now + TP_CONTENDED_NS;
                atomic_store_explicit(&tp->contended_until, contended_until, memory_order_relaxed);
            }
            last = now;
            if (now - t0 < tp->spin_ns && now >= contended_until) continue;
            atomic_fetch_add(&tp->sleepers, 1);
            /* Re-check after announcing ourselves: a bump between the load
             * and the wait makes futex_wait return at once. */
            if (atomic_load(&tp->gen) == seen) tp_futex_wait(&tp->gen, seen);
            atomic_fetch_sub(&tp->sleepers, 1);
            spins = 0;
            t0 = last = 0;
        }
        seen = g;
        if (atomic_load(&tp->stop)) break;
        tp_work(tp, g, index);
    }
    return NULL;
}

threadpool *threadpool_create(int32_t n_threads) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int32_t)n : 1;
    }
    if (n_threads > 256) n_threads = 256;
    threadpool *tp = calloc(1, sizeof *tp);
    if (!tp) return NULL;
    tp->n_threads = 1;
    tp->spin_ns = (int64_t)TP_SPIN_US_DEFAULT * 1000;
    const char *env = getenv("QKVD_POOL_SPIN_US");
    if (env && *env) {
        long us = strtol(env, NULL, 10);
        if (us >= 0 && us <= 1000000) tp->spin_ns = (int64_t)us * 1000;
    }
    tp->threads = calloc((size_t)n_threads, sizeof *tp->threads);
    if (!tp->threads) { free(tp); return NULL; }
    for (int32_t i = 1; i < n_threads; i++) {
        tp_worker_arg *arg = malloc(sizeof *arg);
        if (!arg) break;
        arg->tp = tp;
        arg->index = i;
        if (pthread_create(&tp->threads[i], NULL, tp_worker_main, arg) != 0) {
            free(arg);
            break;
        }
        tp->n_threads++;
    }
    if (tp->n_threads != n_threads) {
        threadpool_free(tp);
        return NULL;
    }
    return tp;
}

void threadpool_free(threadpool *tp) {
    if (!tp) return;
    atomic_store(&tp->stop, 1);
    atomic_fetch_add(&tp->gen, 1);
    tp_futex_wake_all(&tp->gen);
    for (int32_t i = 1; i < tp->n_threads; i++) pthread_join(tp->threads[i], NULL);
    free(tp->threads);
    free(tp);
}

int32_t threadpool_n_threads(const threadpool *tp) { return tp->n_threads; }

/* Wait until the first `n` tasks of the current job have finished: spin,
 * then yield (the thread running the last of them may need this CPU). */
static void tp_wait_done(threadpool *tp, int32_t n) {
    unsigned spins = 0;
    while (atomic_load_explicit(&tp->tasks_done, memory_order_acquire) < n) {
        if (++spins <= TP_WAIT_SPINS) {
            tp_cpu_relax();
            continue;
        }
        /* A yield that takes long means another process had this CPU. */
        int64_t t0 = tp_now_ns();
        sched_yield();
        int64_t t1 = tp_now_ns();
        if (t1 - t0 > TP_PREEMPT_NS)
            atomic_store_explicit(&tp->contended_until, t1 + TP_CONTENDED_NS, memory_order_relaxed);
    }
}

int threadpool_contended(threadpool *tp) {
    return tp_now_ns() < atomic_load_explicit(&tp->contended_until, memory_order_relaxed);
}

/* The task function of a phased job: find the task's phase, wait for the
 * phases before it, run it. Tasks of a phase can only finish after every
 * earlier phase has, so "tasks_done >= phase_end[p - 1]" means exactly
 * that the earlier phases are complete. */
static void tp_phase_task(void *ctx, int32_t task, int32_t thread) {
    threadpool *tp = ctx;
    const int32_t *end = tp->phase_end;
    int32_t lo = 0, hi = tp->n_phases - 1;
    while (lo < hi) { /* first phase whose end is beyond task */
        int32_t mid = (lo + hi) / 2;
        if (end[mid] > task) hi = mid; else lo = mid + 1;
    }
    int32_t start = lo > 0 ? end[lo - 1] : 0;
    if (start > 0) tp_wait_done(tp, start);
    tp->phase_fn(tp->phase_ctx, lo, task - start, thread);
}

void threadpool_run_phased(threadpool *tp, int32_t n_phases, const int32_t *phase_end,
                           threadpool_phase_fn fn, void *ctx) {
    if (n_phases <= 0 || phase_end[n_phases - 1] <= 0) return;
    if (tp->n_threads == 1) { /* in order, nothing to wait for */
        for (int32_t p = 0, t = 0; p < n_phases; p++)
            for (int32_t start = t; t < phase_end[p]; t++) fn(ctx, p, t - start, 0);
        return;
    }
    tp->phase_fn = fn;
    tp->phase_ctx = ctx;
    tp->phase_end = phase_end;
    tp->n_phases = n_phases;
    /* A worker reads these only inside the job, which it joins after the
     * release store of the claim word in threadpool_run. */
    threadpool_run(tp, phase_end[n_phases - 1], tp_phase_task, tp);
}

void threadpool_run(threadpool *tp, int32_t n_tasks, threadpool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (tp->n_threads == 1 || n_tasks == 1) {
        for (int32_t i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    uint32_t g = atomic_load_explicit(&tp->gen, memory_order_relaxed) + 1;
    /* Close the previous job's claim word BEFORE rewriting the job: a worker
     * that has just finished its last task may be between loading the old
     * claim and its CAS; it may read the new n_tasks, and without this its
     * CAS on the old word would still succeed and run task n_old of the new
     * job (twice, counted done early). With the word changed its CAS fails
     * and the generation check sends it away. Index UINT32_MAX is never
     * claimable: only workers of generation g could try, and they see g
     * only after the open word below is published. */
    atomic_store_explicit(&tp->claim, ((uint64_t)g << 32) | UINT32_MAX, memory_order_seq_cst);
    tp->fn = fn;
    tp->ctx = ctx;
    tp->n_tasks = n_tasks;
    atomic_store_explicit(&tp->tasks_done, 0, memory_order_relaxed);
    atomic_store_explicit(&tp->claim, (uint64_t)g << 32, memory_order_release);
    atomic_store_explicit(&tp->gen, g, memory_order_seq_cst);
    if (atomic_load(&tp->sleepers) > 0) tp_futex_wake_all(&tp->gen);
    tp_work(tp, g, 0);
    /* Only a task a worker is still running is waited for; if that worker
     * was descheduled, give it the core. */
    tp_wait_done(tp, n_tasks);
}
