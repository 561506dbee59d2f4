/* test_threadpool.c -- every task runs exactly once, on a valid thread index,
 * across many back-to-back jobs (the decode pattern) and after idle sleeps;
 * phased jobs never start a phase before the previous ones finished. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "threadpool.h"

typedef struct job {
    _Atomic int32_t *hits;
    int32_t n_threads;
    _Atomic int32_t bad_thread;
} job;

static void job_task(void *ctx, int32_t task, int32_t thread) {
    job *j = ctx;
    if (thread < 0 || thread >= j->n_threads) atomic_store(&j->bad_thread, 1);
    atomic_fetch_add(&j->hits[task], 1);
}

static void run_checked(threadpool *tp, int32_t n_tasks) {
    job j = {calloc((size_t)n_tasks, sizeof(_Atomic int32_t)), threadpool_n_threads(tp), 0};
    threadpool_run(tp, n_tasks, job_task, &j);
    for (int32_t i = 0; i < n_tasks; i++) assert_int_equal(atomic_load(&j.hits[i]), 1);
    assert_int_equal(atomic_load(&j.bad_thread), 0);
    free((void *)j.hits);
}

static void test_many_jobs(void **state) {
    (void)state;
    for (int32_t nt = 1; nt <= 4; nt++) {
        threadpool *tp = threadpool_create(nt);
        assert_non_null(tp);
        assert_int_equal(threadpool_n_threads(tp), nt);
        for (int rep = 0; rep < 3000; rep++) run_checked(tp, 1 + rep % 37);
        threadpool_free(tp);
    }
}

static void test_after_sleep(void **state) {
    (void)state;
    threadpool *tp = threadpool_create(3);
    assert_non_null(tp);
    for (int rep = 0; rep < 3; rep++) {
        usleep(20000); /* long enough for the workers to block on the futex */
        run_checked(tp, 100);
    }
    threadpool_run(tp, 0, job_task, NULL); /* no tasks: returns at once */
    threadpool_free(tp);
    threadpool_free(NULL);
}

static void test_default_threads(void **state) {
    (void)state;
    threadpool *tp = threadpool_create(0);
    assert_non_null(tp);
    assert_true(threadpool_n_threads(tp) >= 1);
    run_checked(tp, 1000);
    threadpool_free(tp);
}

#define PH_MAX 64

typedef struct phased {
    int32_t end[PH_MAX];
    _Atomic int32_t done[PH_MAX];   /* finished tasks per phase */
    _Atomic int32_t hits[PH_MAX * 8];
    _Atomic int32_t bad;            /* a phase started early, or a bad index */
    int32_t n_phases, n_threads;
} phased;

static void phased_task(void *ctx, int32_t phase, int32_t task, int32_t thread) {
    phased *j = ctx;
    int32_t start = phase > 0 ? j->end[phase - 1] : 0;
    if (phase < 0 || phase >= j->n_phases || task < 0 || start + task >= j->end[phase] || thread < 0 ||
        thread >= j->n_threads) {
        atomic_store(&j->bad, 1);
        return;
    }
    for (int32_t p = 0; p < phase; p++) /* every earlier phase complete */
        if (atomic_load(&j->done[p]) != j->end[p] - (p > 0 ? j->end[p - 1] : 0)) atomic_store(&j->bad, 1);
    if (atomic_load(&j->done[phase + 1 < PH_MAX ? phase + 1 : phase]) != 0 && phase + 1 < j->n_phases)
        atomic_store(&j->bad, 1); /* a later phase already ran */
    atomic_fetch_add(&j->hits[start + task], 1);
    atomic_fetch_add(&j->done[phase], 1);
}

static void test_phased(void **state) {
    (void)state;
    for (int32_t nt = 1; nt <= 3; nt++) {
        threadpool *tp = threadpool_create(nt);
        assert_non_null(tp);
        static phased j;
        for (int rep = 0; rep < 2000; rep++) {
            memset(&j, 0, sizeof j);
            j.n_threads = nt;
            j.n_phases = 1 + rep % 40;
            int32_t t = 0;
            for (int32_t p = 0; p < j.n_phases; p++) {
                t += 1 + (rep * 7 + p * 13) % 8; /* 1..8 tasks: serial phases too */
                j.end[p] = t;
            }
            threadpool_run_phased(tp, j.n_phases, j.end, phased_task, &j);
            assert_int_equal(atomic_load(&j.bad), 0);
            for (int32_t i = 0; i < t; i++) assert_int_equal(atomic_load(&j.hits[i]), 1);
            threadpool_run(tp, 5, job_task, &(job){(_Atomic int32_t[5]){0}, nt, 0}); /* plain jobs in between */
        }
        threadpool_free(tp);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_jobs),
        cmocka_unit_test(test_after_sleep),
        cmocka_unit_test(test_default_threads),
        cmocka_unit_test(test_phased),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
