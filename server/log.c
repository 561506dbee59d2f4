/* log.c -- text or JSON log lines on stderr (see log.h). One fprintf per line
 * so lines from different threads never interleave mid-line. */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sse.h"

static int log_json;

void log_set_json(int json) { log_json = json; }

static void log_time(char *buf, size_t cap) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void log_emit_json(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) {
        fprintf(stderr, "%s\n", s);
        free(s);
    }
    json_decref(o);
}

/* jansson rejects invalid UTF-8: paths and messages come from outside. */
static json_t *log_str(const char *s) {
    sse_buf b;
    sse_buf_init(&b);
    sse_buf_append_utf8(&b, s, strlen(s));
    json_t *v = json_stringn(b.data ? b.data : "", b.len);
    sse_buf_free(&b);
    return v;
}

void log_msg(const char *level, const char *fmt, ...) {
    char msg[2048], ts[40];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_time(ts, sizeof ts);
    if (log_json) {
        json_t *o = json_object();
        json_object_set_new(o, "ts", json_string(ts));
        json_object_set_new(o, "level", json_string(level));
        json_object_set_new(o, "msg", log_str(msg));
        log_emit_json(o);
    } else {
        fprintf(stderr, "%s qkvd %s: %s\n", ts, level, msg);
    }
}

void log_request(const char *method, const char *path, int status, int64_t prompt_tokens,
                 int64_t completion_tokens, double ms, const char *note) {
    char ts[40];
    log_time(ts, sizeof ts);
    if (log_json) {
        json_t *o = json_object();
        json_object_set_new(o, "ts", json_string(ts));
        json_object_set_new(o, "method", log_str(method));
        json_object_set_new(o, "path", log_str(path));
        json_object_set_new(o, "status", json_integer(status));
        json_object_set_new(o, "prompt_tokens", json_integer(prompt_tokens));
        json_object_set_new(o, "completion_tokens", json_integer(completion_tokens));
        json_object_set_new(o, "ms", json_real((double)(int64_t)(ms * 1000) / 1000.0));
        if (note && note[0]) json_object_set_new(o, "note", log_str(note));
        log_emit_json(o);
    } else {
        fprintf(stderr, "%s %s %.200s %d prompt=%lld completion=%lld %.1fms%s%s\n", ts, method, path, status,
                (long long)prompt_tokens, (long long)completion_tokens, ms, note && note[0] ? " " : "",
                note ? note : "");
    }
}
