/* sse.c -- growable byte buffers and SSE framing (see sse.h). */
#include "sse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sse_buf_init(sse_buf *b) {
    b->data = NULL;
    b->len = b->off = b->cap = 0;
}

void sse_buf_free(sse_buf *b) {
    if (!b) return;
    free(b->data);
    sse_buf_init(b);
}

static void sse_buf_reserve(sse_buf *b, size_t extra) {
    /* Compact first when more than half of the buffer is already consumed:
     * a stream then reuses its memory instead of growing forever. */
    if (b->off > 0 && b->off * 2 >= b->len) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) abort();
    b->data = p;
    b->cap = cap;
}

void sse_buf_append(sse_buf *b, const void *p, size_t n) {
    sse_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

void sse_buf_appendf(sse_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    sse_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static int sse_dump_cb(const char *buf, size_t size, void *data) {
    sse_buf_append((sse_buf *)data, buf, size);
    return 0;
}

void sse_buf_event_json(sse_buf *b, const json_t *j) {
    sse_buf_append(b, "data: ", 6);
    json_dump_callback(j, sse_dump_cb, b, JSON_COMPACT);
    sse_buf_append(b, "\n\n", 2);
}

void sse_buf_event_done(sse_buf *b) {
    sse_buf_append(b, "data: [DONE]\n\n", 14);
}

size_t sse_buf_pending(const sse_buf *b) {
    return b->len - b->off;
}

size_t sse_buf_read(sse_buf *b, char *dst, size_t max) {
    size_t n = b->len - b->off;
    if (n > max) n = max;
    if (n == 0) return 0;
    memcpy(dst, b->data + b->off, n);
    b->off += n;
    if (b->off == b->len) b->off = b->len = 0;
    return n;
}

/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 if invalid or
 * truncated. Rejects overlongs, surrogates and code points above U+10FFFF. */
static size_t utf8_seq_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t need;
    unsigned min;
    if ((c & 0xE0) == 0xC0) { need = 2; min = 0x80; c &= 0x1F; }
    else if ((c & 0xF0) == 0xE0) { need = 3; min = 0x800; c &= 0x0F; }
    else if ((c & 0xF8) == 0xF0) { need = 4; min = 0x10000; c &= 0x07; }
    else return 0;
    if (n < need) return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    return need;
}

size_t sse_utf8_valid_prefix(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_seq_len((const unsigned char *)s + i, n - i);
        if (!l) break;
        i += l;
    }
    return i;
}

void sse_buf_append_utf8(sse_buf *b, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t ok = sse_utf8_valid_prefix(s + i, n - i);
        sse_buf_append(b, s + i, ok);
        i += ok;
        if (i < n) {
            sse_buf_append(b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
}
