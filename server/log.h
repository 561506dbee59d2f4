/* log.h -- server logs on stderr: start-up/shutdown messages and one line per
 * request (method, path, status, tokens, milliseconds), as text or JSON. */
#ifndef QKVD_LOG_H
#define QKVD_LOG_H

#include <stdint.h>

/* json != 0: every line is one JSON object. Set once at start-up. */
void log_set_json(int json);
/* A free-form message (level "info", "warn", "error"). */
void log_msg(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The access-log line of one finished request. */
void log_request(const char *method, const char *path, int status, int64_t prompt_tokens,
                 int64_t completion_tokens, double ms, const char *note);

#endif
