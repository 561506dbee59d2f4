/* webui.h -- the built-in chat page (server/webui/index.html), compiled into
 * the binary so `qkvd serve` needs no files beside the model. */
#ifndef QKVD_WEBUI_H
#define QKVD_WEBUI_H

#include <stddef.h>
#include "http.h"

/* The page's bytes (static storage, NUL-terminated) and length in *len. */
const char *webui_page(size_t *len);
/* Reply to r with the page: 200 text/html, not cached (a new binary serves a
 * new page), and a Content-Security-Policy that keeps it on this origin (no
 * external network even if the page were changed to ask for it). */
void webui_reply(http_req *r);

#endif
