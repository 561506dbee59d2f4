/* http.h -- libmicrohttpd driven by a libuv loop.
 *
 * MHD runs without threads of its own (MHD_USE_EPOLL, external polling): its
 * epoll fd sits on a uv_poll_t and its timeout on a uv_timer_t, so every
 * callback runs on the loop thread. This module handles the HTTP mechanics
 * that are the same for every endpoint -- body accumulation and the size
 * limit (413), API-key check (401), CORS and preflight, suspending a
 * connection that waits, streaming bodies, the access log -- and hands each
 * complete request to one dispatch function (routes). */
#ifndef QKVD_HTTP_H
#define QKVD_HTTP_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "errors.h"
#include "sse.h"

typedef struct http_server http_server;
typedef struct http_req http_req;

typedef struct http_options {
    const char *host;
    int port;                 /* 0: ephemeral */
    long max_body;
    int conn_timeout;         /* seconds */
    const char *api_key;      /* NULL or "": no auth */
    const char *cors_origins; /* NULL or "": off */
    /* Called once per request when its body is complete and checks passed.
     * It must reply now or later (http_reply_*), or begin a stream. */
    void (*dispatch)(void *app, http_req *r);
    void *app;
    struct metrics *metrics;  /* requests counted by endpoint and status; NULL: off */
} http_options;

/* Bind and start serving on loop. 0, or -1 with a message in err. */
int http_server_start(uv_loop_t *loop, const http_options *o, http_server **out, char *err, size_t errlen);
/* The bound TCP port (useful with port 0). */
int http_server_port(const http_server *h);
/* Stop accepting new connections; existing ones continue; new requests on
 * kept-alive connections get 503. */
void http_server_quiesce(http_server *h);
/* Requests currently open (for drain). */
int http_server_active(const http_server *h);
/* Stop MHD (closing every connection) and close the loop handles; h is freed
 * once the handles are closed (the loop then has nothing left of it). */
void http_server_stop(http_server *h);

/* ---- per request ---- */
const char *http_req_method(const http_req *r);
const char *http_req_path(const http_req *r);
const char *http_req_body(const http_req *r, size_t *len);
/* Header value or NULL (case-insensitive name). */
const char *http_req_header(const http_req *r, const char *name);

/* Owner data for routes: `user` plus a close hook called exactly once when the
 * request ends for any reason (sent, client gone, server stopping). After it
 * the request is freed: drop every pointer to it there. */
void http_req_set_user(http_req *r, void *user, void (*on_close)(http_req *r, void *user));
/* Token counts for the access log. */
void http_req_set_tokens(http_req *r, int64_t prompt, int64_t completion);

/* Reply with a complete body (copied). Valid once per request, from dispatch
 * or later (a request that got no reply from dispatch is suspended). */
void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len);
/* JSON body; j is consumed (decref'd). */
void http_reply_json(http_req *r, int status, json_t *j);
/* OpenAI error envelope (adds Retry-After to 503). */
void http_reply_error(http_req *r, const api_error *e);
/* Add a response header to the reply about to be sent (before http_reply*). */
void http_reply_header(http_req *r, const char *name, const char *value);

/* Start a 200 text/event-stream response. Returns the buffer to append to;
 * call http_stream_flush after appending and http_stream_end at the end. */
sse_buf *http_stream_begin(http_req *r);
void http_stream_flush(http_req *r);
void http_stream_end(http_req *r);

#endif
