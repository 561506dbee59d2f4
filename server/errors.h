/* errors.h -- the OpenAI error envelope used by every HTTP error response:
 *   {"error":{"message":..., "type":..., "param":..., "code":...}} */
#ifndef QKVD_ERRORS_H
#define QKVD_ERRORS_H

#include <stddef.h>

typedef struct api_error {
    int status;          /* HTTP status */
    char type[32];       /* "invalid_request_error", "server_error", ... */
    char param[96];      /* offending field ("messages[1].role") or "" (-> null) */
    char code[48];       /* machine code ("context_length_exceeded") or "" (-> null) */
    char message[512];
} api_error;

/* Fill e. type NULL picks the OpenAI type for the status; param/code may be NULL. */
void api_error_set(api_error *e, int status, const char *type, const char *param,
                   const char *code, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The envelope as compact JSON; malloc'd, NUL-terminated, caller frees. */
char *api_error_json(const api_error *e, size_t *len);
/* The OpenAI error type used for an HTTP status. */
const char *api_error_type_for(int status);

#endif
