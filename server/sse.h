/* sse.h -- growable byte buffers for response bodies and Server-Sent Events.
 *
 * A stream buffer is written on the loop thread (token events) and drained by
 * libmicrohttpd's content reader, also on the loop thread: no locking. Data
 * consumed by the reader is compacted away lazily so a long stream does not
 * grow without bound. */
#ifndef QKVD_SSE_H
#define QKVD_SSE_H

#include <stddef.h>
#include <jansson.h>

typedef struct sse_buf {
    char *data;   /* data[off .. len) is unread; NUL-terminated at len */
    size_t len, off, cap;
} sse_buf;

void sse_buf_init(sse_buf *b);
void sse_buf_free(sse_buf *b); /* releases data; the struct may be reused after init */
/* Append n bytes (aborts only on OOM for this small bookkeeping). */
void sse_buf_append(sse_buf *b, const void *p, size_t n);
void sse_buf_appendf(sse_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append one SSE event `data: <compact json>\n\n`. The JSON is not consumed. */
void sse_buf_event_json(sse_buf *b, const json_t *j);
/* Append the terminating `data: [DONE]\n\n`. */
void sse_buf_event_done(sse_buf *b);
/* Bytes waiting to be read. */
size_t sse_buf_pending(const sse_buf *b);
/* Move up to max unread bytes into dst; returns the count. */
size_t sse_buf_read(sse_buf *b, char *dst, size_t max);

/* Append s[0..n) to b as valid UTF-8: each invalid byte becomes U+FFFD, so the
 * result can always be given to jansson. */
void sse_buf_append_utf8(sse_buf *b, const char *s, size_t n);
/* Length of the longest prefix of s[0..n) that is complete, valid UTF-8. */
size_t sse_utf8_valid_prefix(const char *s, size_t n);

#endif
