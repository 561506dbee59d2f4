/* load_progress.h -- a progress line while a model loads, on a terminal.
 *
 * The engine loads on a worker thread and reports nothing until it is done,
 * so progress is observed from outside: the model file is mapped a second
 * time (no extra memory: the page cache is shared) and mincore() tells how
 * much of it is resident, i.e. has been read or touched. Every 250 ms the
 * line "loading 'ID': 45% 120.0/270.0 MiB, 12.5 MiB/s, 11 s left" is redrawn
 * on stderr -- only when stderr is a terminal and logs are text, so log files
 * and JSON logs keep one line per event. Loop thread only. */
#ifndef QKVD_LOAD_PROGRESS_H
#define QKVD_LOAD_PROGRESS_H

#include <uv.h>

typedef struct load_progress load_progress;

/* Begin watching path for model `id` on loop. NULL when stderr is not a
 * terminal, json is set, or the file cannot be mapped (then nothing is
 * printed; that is not an error). */
load_progress *load_progress_start(uv_loop_t *loop, const char *id, const char *path, int json);
/* Stop, end the line, free (closing the timer handle). Accepts NULL. */
void load_progress_stop(load_progress *p);

#endif
