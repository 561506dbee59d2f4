/* http.c -- libmicrohttpd on a libuv loop (see http.h). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include "log.h"
#include "metrics.h"

#define HTTP_MAX_EXTRA_HEADERS 6

struct http_server {
    uv_loop_t *loop;
    struct MHD_Daemon *d;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t poke;     /* wakes parked connections now and then to notice closed sockets */
    http_options o;
    char *api_key, *cors;
    int port;
    int active;          /* open requests */
    int quiesced;
    int closing;         /* handles closing */
    int n_closed;
    http_req *reqs;      /* every open request (to wake them all at stop) */
};

struct http_req {
    http_server *h;
    http_req *next, *prev;
    struct MHD_Connection *conn;
    char method[16];
    char *path;
    char *body;
    size_t body_len, body_cap;
    int too_large, dispatched, in_handler, suspended, queued;
    /* prepared reply */
    int reply_ready, status;
    char *reply_body;
    size_t reply_len;
    char content_type[48];
    char *hdr_name[HTTP_MAX_EXTRA_HEADERS], *hdr_val[HTTP_MAX_EXTRA_HEADERS];
    int n_hdr;
    /* streaming */
    int streaming, stream_done;
    sse_buf stream;
    /* owner */
    void *user;
    void (*on_close)(http_req *r, void *user);
    int64_t prompt_tokens, completion_tokens;
    uint64_t start_ns;
};

static void http_run(http_server *h);

/* ---- request accessors ---- */
const char *http_req_method(const http_req *r) { return r->method; }
const char *http_req_path(const http_req *r) { return r->path; }
const char *http_req_body(const http_req *r, size_t *len) {
    if (len) *len = r->body_len;
    return r->body ? r->body : "";
}
const char *http_req_header(const http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}
void http_req_set_user(http_req *r, void *user, void (*on_close)(http_req *r, void *user)) {
    r->user = user;
    r->on_close = on_close;
}
void http_req_set_tokens(http_req *r, int64_t prompt, int64_t completion) {
    r->prompt_tokens = prompt;
    r->completion_tokens = completion;
}

static void http_timer_cb(uv_timer_t *t);

static void http_req_wake(http_req *r) {
    if (r->suspended) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
        /* MHD only picks resumed connections up inside MHD_run: run it on
         * the next loop iteration (once, however many were resumed). */
        if (!r->h->closing && r->h->d) uv_timer_start(&r->h->timer, http_timer_cb, 0, 0);
    }
}

void http_reply_header(http_req *r, const char *name, const char *value) {
    if (r->n_hdr >= HTTP_MAX_EXTRA_HEADERS) return;
    r->hdr_name[r->n_hdr] = strdup(name);
    r->hdr_val[r->n_hdr] = strdup(value);
    if (!r->hdr_name[r->n_hdr] || !r->hdr_val[r->n_hdr]) abort();
    r->n_hdr++;
}

void http_reply(http_req *r, int status, const char *content_type, const char *body, size_t len) {
    if (r->reply_ready || r->streaming) return;
    r->reply_body = malloc(len ? len : 1);
    if (!r->reply_body) abort();
    memcpy(r->reply_body, body, len);
    r->reply_len = len;
    r->status = status;
    snprintf(r->content_type, sizeof r->content_type, "%s", content_type);
    r->reply_ready = 1;
    if (!r->in_handler) http_req_wake(r);
}

void http_reply_json(http_req *r, int status, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) {
        api_error e;
        api_error_set(&e, 500, NULL, NULL, NULL, "could not encode the response as JSON");
        http_reply_error(r, &e);
        return;
    }
    http_reply(r, status, "application/json", s, strlen(s));
    free(s);
}

void http_reply_error(http_req *r, const api_error *e) {
    size_t len;
    char *s = api_error_json(e, &len);
    if (e->status == 503) http_reply_header(r, "Retry-After", "1");
    http_reply(r, e->status, "application/json", s, len);
    free(s);
}

sse_buf *http_stream_begin(http_req *r) {
    r->streaming = 1;
    r->status = 200;
    if (!r->in_handler) http_req_wake(r);
    return &r->stream;
}

void http_stream_flush(http_req *r) {
    if (r->streaming) http_req_wake(r);
}

void http_stream_end(http_req *r) {
    r->stream_done = 1;
    http_req_wake(r);
}

/* ---- MHD callbacks ---- */
static int http_cors_origin(const http_server *h, const char *origin, char *out, size_t cap) {
    if (!h->cors || !h->cors[0] || !origin) return 0;
    if (!strcmp(h->cors, "*")) {
        snprintf(out, cap, "*");
        return 1;
    }
    size_t ol = strlen(origin);
    for (const char *p = h->cors; *p;) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && t[-1] == ' ') t--;
        if ((size_t)(t - p) == ol && !memcmp(p, origin, ol)) {
            snprintf(out, cap, "%s", origin);
            return 1;
        }
        p = e;
    }
    return 0;
}

static void http_add_common_headers(http_req *r, struct MHD_Response *resp) {
    char origin[512];
    if (http_cors_origin(r->h, http_req_header(r, "Origin"), origin, sizeof origin)) {
        MHD_add_response_header(resp, "Access-Control-Allow-Origin", origin);
        MHD_add_response_header(resp, "Vary", "Origin");
    }
    for (int i = 0; i < r->n_hdr; i++) MHD_add_response_header(resp, r->hdr_name[i], r->hdr_val[i]);
    if (r->h->quiesced) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

static ssize_t http_stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    http_req *r = cls;
    size_t n = sse_buf_read(&r->stream, buf, max);
    if (n) return (ssize_t)n;
    if (r->stream_done) return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing to send: sleep until the scheduler has tokens (no busy polling). */
    r->suspended = 1;
    MHD_suspend_connection(r->conn);
    return 0;
}

/* Constant-time comparison of the bearer token with the key. */
static int http_auth_ok(const http_server *h, const char *auth) {
    const char *k = h->api_key;
    size_t kl = strlen(k);
    if (!auth || strncasecmp(auth, "Bearer ", 7)) return 0;
    const char *t = auth + 7;
    while (*t == ' ') t++;
    size_t tl = strlen(t);
    unsigned char diff = (unsigned char)(tl != kl);
    for (size_t i = 0; i < kl; i++) diff |= (unsigned char)(k[i] ^ (i < tl ? t[i] : 0));
    return diff == 0;
}

static enum MHD_Result http_queue(http_req *r) {
    struct MHD_Response *resp;
    if (r->streaming) {
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, http_stream_reader, r, NULL);
        if (!resp) return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    } else {
        resp = MHD_create_response_from_buffer(r->reply_len, r->reply_body, MHD_RESPMEM_MUST_FREE);
        if (!resp) return MHD_NO;
        r->reply_body = NULL; /* now MHD's */
        if (r->content_type[0]) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    }
    http_add_common_headers(r, resp);
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    r->queued = 1;
    return rc;
}

static void http_preflight(http_req *r) {
    const char *req_hdrs = http_req_header(r, "Access-Control-Request-Headers");
    http_reply_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    http_reply_header(r, "Access-Control-Allow-Headers", req_hdrs ? req_hdrs : "Authorization, Content-Type");
    http_reply_header(r, "Access-Control-Max-Age", "600");
    http_reply(r, 204, "", "", 0);
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                   const char *version, const char *upload_data, size_t *upload_data_size,
                                   void **req_cls) {
    http_server *h = cls;
    http_req *r = *req_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->h = h;
        r->conn = conn;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->path = strdup(url);
        if (!r->path) abort();
        r->start_ns = uv_hrtime();
        sse_buf_init(&r->stream);
        h->active++;
        r->next = h->reqs;
        if (h->reqs) h->reqs->prev = r;
        h->reqs = r;
        *req_cls = r;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)h->o.max_body) r->too_large = 1;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large) return MHD_YES;
        if (r->body_len + n > (size_t)h->o.max_body) {
            r->too_large = 1;
            free(r->body);
            r->body = NULL;
            r->body_len = r->body_cap = 0;
            return MHD_YES;
        }
        if (r->body_len + n + 1 > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 1024;
            while (cap < r->body_len + n + 1) cap *= 2;
            char *p = realloc(r->body, cap);
            if (!p) { r->too_large = 1; return MHD_YES; }
            r->body = p;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        r->body[r->body_len] = 0;
        return MHD_YES;
    }
    if (!r->dispatched) {
        r->dispatched = 1;
        r->in_handler = 1;
        api_error e;
        char origin[8];
        if (!strcmp(method, "OPTIONS") && http_cors_origin(h, http_req_header(r, "Origin"), origin, sizeof origin)) {
            http_preflight(r);
        } else if (r->too_large) {
            api_error_set(&e, 413, NULL, NULL, "request_too_large", "request body is larger than the limit of %ld bytes (--max-body)",
                          h->o.max_body);
            http_reply_error(r, &e);
        } else if (h->api_key && h->api_key[0] && strcmp(r->path, "/health") && strcmp(r->path, "/") &&
                   strcmp(r->path, "/metrics") && /* open like /health: probes and scrapers carry no key */
                   !http_auth_ok(h, http_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION))) {
            api_error_set(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                          "missing or invalid API key: send 'Authorization: Bearer KEY'");
            http_reply_error(r, &e);
        } else if (h->quiesced) {
            api_error_set(&e, 503, NULL, NULL, "shutting_down", "the server is shutting down");
            http_reply_error(r, &e);
        } else {
            h->o.dispatch(h->o.app, r);
        }
        r->in_handler = 0;
    }
    if (!r->queued && (r->reply_ready || r->streaming)) return http_queue(r);
    if (!r->queued) {
        /* Waiting for the scheduler: park the connection until it replies. */
        r->suspended = 1;
        MHD_suspend_connection(conn);
    }
    return MHD_YES;
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                           enum MHD_RequestTerminationCode toe) {
    http_server *h = cls;
    http_req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    if (r->on_close) r->on_close(r, r->user);
    double ms = (double)(uv_hrtime() - r->start_ns) / 1e6;
    const char *note = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? ""
                       : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                       : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "client-abort"
                       : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown" : "error";
    if (r->dispatched) metrics_request(h->o.metrics, r->path, r->status, ms / 1e3);
    if (r->dispatched)
        log_request(r->method, r->path, r->status ? r->status : 0, r->prompt_tokens, r->completion_tokens, ms, note);
    free(r->path);
    free(r->body);
    free(r->reply_body);
    for (int i = 0; i < r->n_hdr; i++) { free(r->hdr_name[i]); free(r->hdr_val[i]); }
    sse_buf_free(&r->stream);
    if (r->prev) r->prev->next = r->next; else h->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    free(r);
    h->active--;
}

/* A parked (suspended) connection is invisible to MHD, so a client that
 * hangs up while its request waits (queued, or a non-streaming generation)
 * would go unnoticed until the reply. Once a second every parked socket is
 * peeked at; on EOF the owner's close hook runs at once (cancelling the job
 * and freeing its sequences) and the connection is woken with a final reply
 * so that MHD closes it. */
static void http_poke_cb(uv_timer_t *t) {
    http_server *h = t->data;
    for (http_req *r = h->reqs; r; r = r->next) {
        if (!r->suspended || !r->on_close) continue;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci) continue;
        char c;
        ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))) continue;
        r->on_close(r, r->user);
        r->on_close = NULL;
        if (r->streaming) {
            r->stream_done = 1;
        } else if (!r->reply_ready) {
            api_error e;
            api_error_set(&e, 499, "invalid_request_error", NULL, "client_closed", "the client closed the connection");
            http_reply_error(r, &e); /* wakes it */
        }
        http_req_wake(r);
    }
}

/* ---- loop integration ---- */
static void http_timer_cb(uv_timer_t *t) {
    http_run(t->data);
}

static void http_poll_cb(uv_poll_t *p, int status, int events) {
    http_run(p->data);
}

static void http_run(http_server *h) {
    if (!h->d || h->closing) return;
    MHD_run(h->d);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(h->d, &ms) == MHD_YES) uv_timer_start(&h->timer, http_timer_cb, ms, 0);
    else uv_timer_stop(&h->timer);
}

int http_server_start(uv_loop_t *loop, const http_options *o, http_server **out, char *err, size_t errlen) {
    *out = NULL;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(o->host, NULL, &hints, &ai);
    if (gai || !ai) {
        snprintf(err, errlen, "cannot resolve listen address '%s': %s", o->host, gai_strerror(gai));
        return -1;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    int v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (v6) ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)o->port);
    else ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)o->port);

    http_server *h = calloc(1, sizeof *h);
    if (!h) abort();
    h->loop = loop;
    h->o = *o;
    h->api_key = strdup(o->api_key ? o->api_key : "");
    h->cors = strdup(o->cors_origins ? o->cors_origins : "");
    if (!h->api_key || !h->cors) abort();
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, http_access, h,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, http_completed, h,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)o->conn_timeout,
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int)1,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted?)", o->host, o->port);
        free(h->api_key);
        free(h->cors);
        free(h);
        return -1;
    }
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = pi ? pi->port : o->port;
    const union MHD_DaemonInfo *ei = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!ei || ei->epoll_fd < 0) {
        snprintf(err, errlen, "libmicrohttpd gave no epoll fd");
        MHD_stop_daemon(h->d);
        free(h->api_key);
        free(h->cors);
        free(h);
        return -1;
    }
    uv_poll_init(loop, &h->poll, ei->epoll_fd);
    h->poll.data = h;
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    uv_timer_init(loop, &h->poke);
    h->poke.data = h;
    uv_timer_start(&h->poke, http_poke_cb, 1000, 1000);
    uv_poll_start(&h->poll, UV_READABLE, http_poll_cb);
    http_run(h);
    *out = h;
    return 0;
}

int http_server_port(const http_server *h) { return h->port; }
int http_server_active(const http_server *h) { return h->active; }

void http_server_quiesce(http_server *h) {
    if (h->quiesced) return;
    h->quiesced = 1;
    MHD_socket fd = MHD_quiesce_daemon(h->d);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

static void http_handle_closed(uv_handle_t *hd) {
    http_server *h = hd->data;
    if (++h->n_closed == 3) {
        free(h->api_key);
        free(h->cors);
        free(h);
    }
}

void http_server_stop(http_server *h) {
    if (!h || h->closing) return;
    /* MHD refuses to stop with parked connections: end and wake them all. */
    for (http_req *r = h->reqs; r; r = r->next) {
        if (!r->suspended) continue;
        if (r->streaming) r->stream_done = 1;
        else if (!r->reply_ready) {
            api_error e;
            api_error_set(&e, 503, NULL, NULL, "shutting_down", "the server is shutting down");
            http_reply_error(r, &e);
        }
        http_req_wake(r);
    }
    MHD_stop_daemon(h->d);
    h->d = NULL;
    h->closing = 1;
    uv_poll_stop(&h->poll);
    uv_close((uv_handle_t *)&h->poll, http_handle_closed);
    uv_close((uv_handle_t *)&h->timer, http_handle_closed);
    uv_close((uv_handle_t *)&h->poke, http_handle_closed);
}
