/* errors.c -- OpenAI error envelopes (see errors.h). */
#include "errors.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sse.h"

const char *api_error_type_for(int status) {
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void api_error_set(api_error *e, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...) {
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", type ? type : api_error_type_for(status));
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *api_error_json(const api_error *e, size_t *len) {
    /* The message may quote request text cut at an arbitrary byte: make it
     * valid UTF-8 before handing it to jansson. */
    sse_buf m;
    sse_buf_init(&m);
    sse_buf_append_utf8(&m, e->message, strlen(e->message));
    json_t *err = json_object();
    json_object_set_new(err, "message", json_stringn(m.data ? m.data : "", m.len));
    json_object_set_new(err, "type", json_string(e->type));
    json_object_set_new(err, "param", e->param[0] ? json_string(e->param) : json_null());
    json_object_set_new(err, "code", e->code[0] ? json_string(e->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    sse_buf_free(&m);
    if (!s) abort();
    if (len) *len = strlen(s);
    return s;
}
