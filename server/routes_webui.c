/* routes_webui.c -- GET /: the chat page.
 *
 * The HTML is embedded with the assembler's .incbin at compile time, so the
 * repository holds it as a plain file (no generated C, no xxd) and the binary
 * carries it. The path is relative to the repository root, where the build
 * runs; the Makefile makes this object depend on the page. */
#include "webui.h"

__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        ".globl webui__index_html\n"
        ".type webui__index_html, @object\n"
        "webui__index_html:\n"
        ".incbin \"server/webui/index.html\"\n"
        ".globl webui__index_html_end\n"
        "webui__index_html_end:\n"
        ".byte 0\n"
        ".popsection\n");

extern const char webui__index_html[], webui__index_html_end[];

const char *webui_page(size_t *len) {
    *len = (size_t)(webui__index_html_end - webui__index_html);
    return webui__index_html;
}

void webui_reply(http_req *r) {
    size_t len;
    const char *page = webui_page(&len);
    http_reply_header(r, "Cache-Control", "no-cache");
    http_reply_header(r, "X-Content-Type-Options", "nosniff");
    http_reply_header(r, "Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                      "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'self'");
    http_reply(r, 200, "text/html; charset=utf-8", page, len);
}
