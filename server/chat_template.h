/* chat_template.h -- render a model's chat template (tokenizer.chat_template)
 * into a prompt string, with our own interpreter for the Jinja2 subset that
 * Hugging Face chat templates use (HF environment settings: trim_blocks,
 * lstrip_blocks, loop controls), matching llama.cpp's renderings.
 *
 * Compile once per model, render per request; a compiled template is
 * read-only while rendering, so several threads may render it at once.
 * Rendering is bounded: loop
 * steps, recursion depth, memory and output size are limited, and any
 * template or input error becomes a message, never a crash.
 */
#ifndef QKVD_CHAT_TEMPLATE_H
#define QKVD_CHAT_TEMPLATE_H

#include <stddef.h>
#include <jansson.h>

typedef struct chat_template chat_template;

/* Compiles template source src (len bytes, need not be NUL-terminated).
 * On success *out owns the compiled template (free with chat_template_free)
 * and 0 is returned; on error a negative value and "line:col: message" in err
 * (errlen bytes). */
int chat_template_compile(const char *src, size_t len, chat_template **out, char *err, size_t errlen);

/* Frees a compiled template; NULL is fine. */
void chat_template_free(chat_template *t);

typedef struct chat_template_opts {
    const char *bos_token, *eos_token;  /* NULL = "" */
    int add_generation_prompt;
    const json_t *extra;  /* extra top-level variables (object) or NULL, e.g. enable_thinking */
    long long now;        /* unix time for strftime_now / date_string; 0 = time(NULL) */
    int keep_bos;         /* 0: drop a leading bos_token the template prints, as llama.cpp does
                             (the tokenizer adds BOS itself); 1: keep the text as rendered */
} chat_template_opts;

/* Renders t with messages (JSON array of message objects: role, content
 * (string or array of parts), tool_calls, name, tool_call_id,
 * reasoning_content...) and tools (array; NULL, null or [] for none). Variables seen
 * by the template: messages, tools (only when given), add_generation_prompt,
 * bos_token, eos_token, date_string ("22 Nov 2026"), datetime ("Nov 22 2026"),
 * enable_thinking, plus every key of
 * o->extra (which may override them; enable_thinking defaults to true). o
 * may be NULL (defaults). Like llama.cpp, the messages are adapted to what the
 * template understands (probed at compile time): array content becomes its
 * text parts joined by "\n" unless the template only reads parts; null or
 * missing content becomes ""; system
 * messages fold into the next user message for templates without a system
 * role; string tool-call arguments are parsed for templates that need
 * objects.
 * On success *out is a malloc'ed NUL-terminated string owned by the caller
 * and 0 is returned; on error a negative value and a message in err
 * (raise_exception text, or "line:col: what went wrong"). */
int chat_template_render(const chat_template *t, const json_t *messages, const json_t *tools,
                         const chat_template_opts *o, char **out, char *err, size_t errlen);

/* The ChatML template used when a model has no template of its own. Static
 * string; do not free. */
const char *chat_template_chatml(void);

#endif
