/* load_progress.c -- see load_progress.h. */
#include "load_progress.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct load_progress {
    uv_timer_t timer;
    char id[256];
    void *map;              /* PROT_READ view of the file, never touched by us */
    size_t size;
    unsigned char *vec;     /* mincore result, one byte per page */
    size_t n_pages;
    uint64_t t0_ms;
    size_t first_resident;  /* pages already cached at the start */
    int drawn;
};

static size_t progress_resident(load_progress *p) {
    if (mincore(p->map, p->size, p->vec)) return 0;
    size_t n = 0;
    for (size_t i = 0; i < p->n_pages; i++) n += p->vec[i] & 1;
    return n;
}

static void progress_draw(load_progress *p, int final) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t res = progress_resident(p);
    double done = (double)res * (double)page, total = (double)p->size;
    if (done > total) done = total;
    double secs = (double)(uv_now(p->timer.loop) - p->t0_ms) / 1000.0;
    double rate = secs > 0 ? (double)(res - (res > p->first_resident ? p->first_resident : res)) * (double)page / secs : 0;
    char left[48] = "";
    if (!final && rate > 0 && done < total) {
        double l = (total - done) / rate;
        snprintf(left, sizeof left, l < 10 ? ", %.1f s left" : ", %.0f s left", l);
    }
    fprintf(stderr, "\rloading '%s': %3.0f%% %.1f/%.1f MiB, %.1f MiB/s%s\033[K%s", p->id, total > 0 ? 100.0 * done / total : 100.0,
            done / 1048576.0, total / 1048576.0, rate / 1048576.0, left, final ? "\n" : "");
    fflush(stderr);
    p->drawn = !final;
}

static void progress_tick(uv_timer_t *t) {
    progress_draw(t->data, 0);
}

load_progress *load_progress_start(uv_loop_t *loop, const char *id, const char *path, int json) {
    if (json || !isatty(STDERR_FILENO)) return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) || st.st_size <= 0) {
        close(fd);
        return NULL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return NULL;
    load_progress *p = calloc(1, sizeof *p);
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t n_pages = ((size_t)st.st_size + page - 1) / page;
    unsigned char *vec = malloc(n_pages);
    if (!p || !vec) {
        free(p);
        free(vec);
        munmap(map, (size_t)st.st_size);
        return NULL;
    }
    snprintf(p->id, sizeof p->id, "%s", id);
    p->map = map;
    p->size = (size_t)st.st_size;
    p->vec = vec;
    p->n_pages = n_pages;
    p->t0_ms = uv_now(loop);
    p->first_resident = progress_resident(p);
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, progress_tick, 250, 250);
    return p;
}

static void progress_free(uv_handle_t *h) {
    free(h->data);
}

void load_progress_stop(load_progress *p) {
    if (!p) return;
    uv_timer_stop(&p->timer);
    if (p->drawn) progress_draw(p, 1);
    munmap(p->map, p->size);
    free(p->vec);
    uv_close((uv_handle_t *)&p->timer, progress_free);
}
