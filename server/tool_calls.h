/* tool_calls.h -- OpenAI function calling on top of chat templates and
 * grammars: which tool-call syntax a template uses, the grammar a call is
 * generated under, rendering tools for templates that know none, and an
 * incremental parser that turns the generated text back into content and
 * tool calls (used for streaming deltas and whole responses alike).
 *
 * A call is written in the syntax of its family (detected by rendering a
 * probe conversation through the template):
 *   hermes    <tool_call>\n{"name": "F", "arguments": {...}}\n</tool_call>  (Qwen2.5/3, Hermes)
 *   llama3    {"name": "F", "parameters": {...}}                            (Llama 3.x; one call)
 *   mistral   [TOOL_CALLS][{"name": "F", "arguments": {...}}, ...]          (Mistral Nemo)
 *   mistral11 [TOOL_CALLS]F[ARGS]{...}                                      (Mistral Small 3.2, Devstral)
 *   generic   {"tool_calls": [{"name": "F", "arguments": {...}}, ...]}      (anything else)
 * Everything here is plain data and functions: no server state. */
#ifndef QKVD_TOOL_CALLS_H
#define QKVD_TOOL_CALLS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "chat_template.h"

enum tool_family { TOOL_GENERIC = 0, TOOL_HERMES, TOOL_LLAMA3, TOOL_MISTRAL, TOOL_MISTRAL11, TOOL_N_FAMILIES };

/* The text shape of a family's calls: HEAD CALL (SEP CALL)* TAIL with
 * CALL = CALL_PRE name NAME_POST arguments CALL_POST. `trigger` (a prefix
 * of HEAD CALL_PRE) is what marks the start of calls in free text. */
typedef struct tool_syntax {
    const char *name;
    const char *head, *call_pre, *name_post, *call_post, *sep, *tail;
    const char *trigger;
    int multi;                /* 0: one call per reply */
} tool_syntax;

/* The syntax of family f (a TOOL_* value; others give generic). Static. */
const tool_syntax *tool_syntax_get(int family);

/* Probe template t: which family its assistant tool calls render as, and
 * whether it renders the `tools` variable at all (*renders_tools). Never
 * fails: a template that errors on the probe is generic without tools. */
int tool_family_probe(const chat_template *t, int *renders_tools);

/* Messages for a template that does not render tools (documented fallback):
 * a system message describing the tools and the generic call syntax comes
 * first (merged into an existing leading system message), assistant
 * tool_calls become their generic-syntax text, and role "tool" messages
 * become user messages "Tool result (ID): ...". Returns a new array (caller
 * owns it). */
json_t *tool_messages_fallback(const json_t *messages, const json_t *tools);

/* The GBNF grammar for calls of the given tools in syntax sx: one tool
 * (only >= 0: an index into tools) or any of them; several calls when
 * multi (and the syntax allows it). lazy: the grammar of what follows
 * sx->trigger instead of the whole reply. Each tool's `parameters` schema
 * is compiled in; a schema error gives NULL with a message in err and the
 * failing tool's index in *bad_tool. Returns malloc'ed text. */
char *tool_grammar_build(const json_t *tools, int32_t only, const tool_syntax *sx, int multi, int lazy,
                         int32_t *bad_tool, char *err, size_t errlen);

/* A fresh call id into buf (>= 30 bytes): "call_" + 24 random
 * alphanumerics, or 9 alphanumerics for the Mistral families (their
 * templates refuse anything else). *state is the caller's PRNG state. */
void tool_call_id(uint64_t *state, const tool_syntax *sx, char *buf, size_t cap);

/* Incremental parser of generated text. */
typedef struct tool_parser_ops {
    void (*content)(void *user, const char *s, size_t n);          /* text outside calls */
    void (*call_start)(void *user, int32_t index, const char *name); /* a call's name is complete */
    void (*args)(void *user, int32_t index, const char *s, size_t n); /* a fragment of its arguments */
} tool_parser_ops;

typedef struct tool_parser {
    const tool_syntax *sx;
    int state;
    char buf[96];             /* held bytes: a possible trigger, or the text between calls */
    size_t n_buf;
    size_t skip;              /* literal bytes still to pass over */
    int depth, in_str, esc;   /* arguments JSON scanning */
    char name[72];
    size_t n_name;
    int32_t n_calls;          /* calls started */
    int32_t n_done;           /* calls whose arguments are complete */
} tool_parser;

void tool_parser_init(tool_parser *p, const tool_syntax *sx);
/* Feed n bytes of output; events go to ops (any may be NULL). */
void tool_parser_feed(tool_parser *p, const char *s, size_t n, const tool_parser_ops *ops, void *user);
/* End of output: held text that did not become a call is content. */
void tool_parser_finish(tool_parser *p, const tool_parser_ops *ops, void *user);

#endif
