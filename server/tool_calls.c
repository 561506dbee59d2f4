/* tool_calls.c -- tool-call syntax families, call grammars, fallback
 * rendering and the output parser (see tool_calls.h). */
#include "tool_calls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "grammar/grammar.h"

static const tool_syntax syntaxes[TOOL_N_FAMILIES] = {
    [TOOL_GENERIC] = {"generic", "{\"tool_calls\": [", "{\"name\": \"", "\", \"arguments\": ", "}", ", ", "]}",
                      "{\"tool_calls\": [", 1},
    [TOOL_HERMES] = {"hermes", "<tool_call>\n", "{\"name\": \"", "\", \"arguments\": ", "}",
                     "\n</tool_call>\n<tool_call>\n", "\n</tool_call>", "<tool_call>", 1},
    [TOOL_LLAMA3] = {"llama3", "", "{\"name\": \"", "\", \"parameters\": ", "}", "", "", "{\"name\": \"", 0},
    [TOOL_MISTRAL] = {"mistral", "[TOOL_CALLS][", "{\"name\": \"", "\", \"arguments\": ", "}", ", ", "]",
                      "[TOOL_CALLS]", 1},
    [TOOL_MISTRAL11] = {"mistral11", "[TOOL_CALLS]", "", "[ARGS]", "", "[TOOL_CALLS]", "", "[TOOL_CALLS]", 1},
};

const tool_syntax *tool_syntax_get(int family) {
    return family > 0 && family < TOOL_N_FAMILIES ? &syntaxes[family] : &syntaxes[TOOL_GENERIC];
}

/* ---- growable string ---- */
typedef struct sbuf { char *p; size_t n, cap; } sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) abort();
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* ---- template probe ---- */
#define PROBE_FN "qkvd_probe_fn"

int tool_family_probe(const chat_template *t, int *renders_tools) {
    *renders_tools = 0;
    json_t *tools = json_pack("[{s:s, s:{s:s, s:s, s:{s:s, s:{s:{s:s}}}}}]", "type", "function", "function", "name",
                              PROBE_FN, "description", "probe", "parameters", "type", "object", "properties",
                              "qkvd_arg", "type", "integer");
    json_t *user = json_pack("[{s:s, s:s}]", "role", "user", "content", "hello");
    json_t *conv = json_pack("[{s:s, s:s}, {s:s, s:s, s:[{s:s, s:s, s:{s:s, s:s}}]}, {s:s, s:s, s:s}]", "role",
                             "user", "content", "hello", "role", "assistant", "content", "", "tool_calls", "id",
                             "call12345", "type", "function", "function", "name", PROBE_FN, "arguments",
                             "{\"qkvd_arg\": 1}", "role", "tool", "tool_call_id", "call12345", "content", "42");
    chat_template_opts o = {.bos_token = "", .eos_token = "", .add_generation_prompt = 1, .now = 1};
    char *out = NULL, err[256];
    int family = TOOL_GENERIC;
    if (tools && user && chat_template_render(t, user, tools, &o, &out, err, sizeof err) == 0) {
        *renders_tools = strstr(out, PROBE_FN) != NULL;
        free(out);
        out = NULL;
    }
    if (*renders_tools && conv && chat_template_render(t, conv, tools, &o, &out, err, sizeof err) == 0) {
        if (strstr(out, "[TOOL_CALLS]" PROBE_FN)) family = TOOL_MISTRAL11; /* name[CALL_ID]..[ARGS] or name[ARGS] */
        else if (strstr(out, "[TOOL_CALLS]")) family = TOOL_MISTRAL;
        else if (strstr(out, "<tool_call>")) family = TOOL_HERMES;
        else if (strstr(out, "\"name\": \"" PROBE_FN "\", \"parameters\"")) family = TOOL_LLAMA3;
        free(out);
    }
    json_decref(tools);
    json_decref(user);
    json_decref(conv);
    return family;
}

/* ---- fallback rendering ---- */
/* The generic-syntax text of an assistant message's tool_calls. */
static void calls_text(sbuf *b, const json_t *calls) {
    sb_str(b, syntaxes[TOOL_GENERIC].head);
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c) {
        json_t *f = json_object_get(c, "function");
        json_t *name = json_object_get(f, "name"), *args = json_object_get(f, "arguments");
        if (i) sb_str(b, ", ");
        sb_str(b, "{\"name\": ");
        char *n = json_is_string(name) ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
        sb_str(b, n ? n : "\"\"");
        free(n);
        sb_str(b, ", \"arguments\": ");
        if (json_is_string(args)) sb_add(b, json_string_value(args), json_string_length(args));
        else {
            char *a = args ? json_dumps(args, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
            sb_str(b, a ? a : "{}");
            free(a);
        }
        sb_str(b, "}");
    }
    sb_str(b, syntaxes[TOOL_GENERIC].tail);
}

json_t *tool_messages_fallback(const json_t *messages, const json_t *tools) {
    sbuf sys = {0};
    sb_str(&sys, "You can call the following tools (JSON descriptions, one per line):\n");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        char *s = json_dumps(json_object_get(t, "function"), JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s) sb_str(&sys, s);
        free(s);
        sb_str(&sys, "\n");
    }
    sb_str(&sys, "To call tools, reply with only this JSON and nothing else: "
                 "{\"tool_calls\": [{\"name\": \"<tool name>\", \"arguments\": {<arguments>}}]}");
    json_t *out = json_array();
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        if (i == 0 && role && !strcmp(role, "system")) {
            sb_str(&sys, "\n\n");
            if (json_is_string(content)) sb_add(&sys, json_string_value(content), json_string_length(content));
            continue;
        }
        json_t *c = json_deep_copy(m);
        json_t *calls = json_object_get(m, "tool_calls");
        if (role && !strcmp(role, "assistant") && json_is_array(calls) && json_array_size(calls)) {
            sbuf b = {0};
            if (json_is_string(content) && json_string_length(content)) {
                sb_add(&b, json_string_value(content), json_string_length(content));
                sb_str(&b, "\n");
            }
            calls_text(&b, calls);
            json_object_set_new(c, "content", json_stringn(b.p, b.n));
            json_object_del(c, "tool_calls");
            free(b.p);
        } else if (role && !strcmp(role, "tool")) {
            sbuf b = {0};
            json_t *id = json_object_get(m, "tool_call_id");
            sb_str(&b, "Tool result (");
            if (json_is_string(id)) sb_add(&b, json_string_value(id), json_string_length(id));
            sb_str(&b, "): ");
            if (json_is_string(content)) sb_add(&b, json_string_value(content), json_string_length(content));
            json_object_set_new(c, "role", json_string("user"));
            json_object_set_new(c, "content", json_stringn(b.p, b.n));
            json_object_del(c, "tool_call_id");
            free(b.p);
        }
        json_array_append_new(out, c);
    }
    json_t *sm = json_pack("{s:s, s:s%}", "role", "system", "content", sys.p, sys.n);
    json_array_insert_new(out, 0, sm);
    free(sys.p);
    return out;
}

/* ---- grammar ---- */
/* A GBNF string literal for s. */
static void gbnf_lit(sbuf *b, const char *s) {
    sb_str(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        if (*p == '"' || *p == '\\') { tmp[0] = '\\'; tmp[1] = (char)*p; sb_add(b, tmp, 2); }
        else if (*p == '\n') sb_str(b, "\\n");
        else if (*p < 0x20 || *p == 0x7f) { snprintf(tmp, sizeof tmp, "\\x%02X", *p); sb_str(b, tmp); }
        else sb_add(b, (const char *)p, 1);
    }
    sb_str(b, "\"");
}

static int gbnf_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Copy GBNF text g with every rule name prefixed by pfx (literals, classes,
 * repetition counts and comments are copied as they are). */
static void gbnf_prefix_rules(sbuf *b, const char *g, const char *pfx) {
    const char *p = g;
    while (*p) {
        const char *s = p;
        if (*p == '"' || *p == '[') {
            char close = *p == '"' ? '"' : ']';
            p++;
            while (*p && *p != close) p += p[0] == '\\' && p[1] ? 2 : 1;
            if (*p) p++;
        } else if (*p == '{') {
            while (*p && *p != '}') p++;
            if (*p) p++;
        } else if (*p == '#') {
            while (*p && *p != '\n') p++;
        } else if (gbnf_name_char(*p)) {
            sb_str(b, pfx);
            while (gbnf_name_char(*p)) p++;
        } else {
            p++;
        }
        sb_add(b, s, (size_t)(p - s));
    }
}

char *tool_grammar_build(const json_t *tools, int32_t only, const tool_syntax *sx, int multi, int lazy,
                         int32_t *bad_tool, char *err, size_t errlen) {
    sbuf b = {0}, lead = {0};
    *bad_tool = -1;
    multi = multi && sx->multi;
    sb_str(&lead, sx->head);
    sb_str(&lead, sx->call_pre);
    size_t skip = lazy ? strlen(sx->trigger) : 0;
    if (skip > lead.n) skip = lead.n;
    sb_str(&b, "root ::= ");
    if (lead.n > skip) gbnf_lit(&b, lead.p + skip);
    sb_str(&b, " call");
    if (multi) {
        sb_str(&b, " (");
        sbuf sep = {0};
        sb_str(&sep, sx->sep);
        sb_str(&sep, sx->call_pre);
        gbnf_lit(&b, sep.p);
        free(sep.p);
        sb_str(&b, " call)*");
    }
    if (sx->tail[0]) { sb_str(&b, " "); gbnf_lit(&b, sx->tail); }
    sb_str(&b, "\ncall ::= (");
    free(lead.p);
    size_t i;
    json_t *t;
    int first = 1;
    json_array_foreach(tools, i, t) {
        if (only >= 0 && (int32_t)i != only) continue;
        json_t *f = json_object_get(t, "function");
        char nm[96];
        snprintf(nm, sizeof nm, "%s%s", json_string_value(json_object_get(f, "name")), sx->name_post);
        if (!first) sb_str(&b, " | ");
        first = 0;
        gbnf_lit(&b, nm);
        char ref[32];
        snprintf(ref, sizeof ref, " t%zu-root", i);
        sb_str(&b, ref);
    }
    sb_str(&b, ")");
    if (sx->call_post[0]) { sb_str(&b, " "); gbnf_lit(&b, sx->call_post); }
    sb_str(&b, "\n");
    json_array_foreach(tools, i, t) {
        if (only >= 0 && (int32_t)i != only) continue;
        json_t *params = json_object_get(json_object_get(t, "function"), "parameters");
        char *js = params && json_is_object(params) ? json_dumps(params, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                                     : strdup("{\"type\":\"object\",\"properties\":{}}");
        if (!js) abort();
        char *g = grammar_schema_to_gbnf(js, strlen(js), NULL, err, errlen);
        free(js);
        if (!g) {
            *bad_tool = (int32_t)i;
            free(b.p);
            return NULL;
        }
        char pfx[32];
        snprintf(pfx, sizeof pfx, "t%zu-", i);
        gbnf_prefix_rules(&b, g, pfx);
        sb_str(&b, "\n");
        free(g);
    }
    return b.p;
}

void tool_call_id(uint64_t *state, const tool_syntax *sx, char *buf, size_t cap) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    /* Mistral templates insist on 9 alphanumerics; everyone else gets OpenAI's shape. */
    int mistral = sx && !strncmp(sx->name, "mistral", 7);
    size_t pre = mistral ? 0 : 5, n = mistral ? 9 : 24;
    if (cap < pre + n + 1) { if (cap) buf[0] = 0; return; }
    memcpy(buf, "call_", pre);
    for (size_t k = 0; k < n; k++) {
        /* splitmix64 */
        uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        buf[pre + k] = al[z % (sizeof al - 1)];
    }
    buf[pre + n] = 0;
}

/* ---- parser ---- */
enum { P_TEXT, P_LEAD, P_NAME, P_NAMEPOST, P_ARGS, P_AFTER, P_DONE };

void tool_parser_init(tool_parser *p, const tool_syntax *sx) {
    memset(p, 0, sizeof *p);
    p->sx = sx;
    p->state = P_TEXT;
}

/* Emission runs: bytes of one kind are passed on in chunks. */
typedef struct run { char b[256]; size_t n; int kind; } run; /* kind 1 content, 2 args */

static void run_flush(run *r, tool_parser *p, const tool_parser_ops *ops, void *user) {
    if (!r->n) return;
    if (r->kind == 1 && ops->content) ops->content(user, r->b, r->n);
    if (r->kind == 2 && ops->args) ops->args(user, p->n_calls - 1, r->b, r->n);
    r->n = 0;
}

static void run_put(run *r, int kind, char c, tool_parser *p, const tool_parser_ops *ops, void *user) {
    if (r->kind != kind || r->n == sizeof r->b) run_flush(r, p, ops, user);
    r->kind = kind;
    r->b[r->n++] = c;
}

/* buf against the concatenation a b c: 2 equal, 1 proper prefix, 0 neither. */
static int cat_match(const char *buf, size_t n, const char *a, const char *b, const char *c) {
    const char *parts[3] = {a, b, c};
    size_t off = 0;
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(parts[k]);
        size_t m = n - off < l ? n - off : l;
        if (memcmp(buf + off, parts[k], m)) return 0;
        off += m;
        if (off == n) {
            int rest = m < l;
            for (int q = k + 1; q < 3; q++) rest |= parts[q][0] != 0;
            return rest ? 1 : 2;
        }
    }
    return 0; /* longer than the concatenation */
}

void tool_parser_feed(tool_parser *p, const char *s, size_t n, const tool_parser_ops *ops, void *user) {
    const tool_syntax *sx = p->sx;
    run r = {.n = 0, .kind = 0};
    size_t tlen = strlen(sx->trigger);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        switch (p->state) {
        case P_TEXT:
            p->buf[p->n_buf++] = c;
            while (p->n_buf && memcmp(p->buf, sx->trigger, p->n_buf < tlen ? p->n_buf : tlen)) {
                run_put(&r, 1, p->buf[0], p, ops, user);
                memmove(p->buf, p->buf + 1, --p->n_buf);
            }
            if (p->n_buf == tlen) {
                p->n_buf = 0;
                p->skip = strlen(sx->head) + strlen(sx->call_pre) - tlen;
                p->state = p->skip ? P_LEAD : P_NAME;
            }
            break;
        case P_LEAD:
            if (--p->skip == 0) p->state = P_NAME;
            break;
        case P_NAME:
            if (gbnf_name_char(c) || c == '.') {
                if (p->n_name < sizeof p->name - 1) p->name[p->n_name++] = c;
                break;
            }
            p->name[p->n_name] = 0;
            run_flush(&r, p, ops, user);
            p->n_calls++;
            if (ops->call_start) ops->call_start(user, p->n_calls - 1, p->name);
            p->n_name = 0;
            p->skip = strlen(sx->name_post);
            p->skip = p->skip ? p->skip - 1 : 0;
            p->depth = p->in_str = p->esc = 0;
            if (p->skip == 0) p->state = P_ARGS;
            else p->state = P_NAMEPOST;
            if (!sx->name_post[0]) { i--; } /* this byte starts the arguments */
            break;
        case P_NAMEPOST:
            if (--p->skip == 0) p->state = P_ARGS;
            break;
        case P_ARGS: {
            run_put(&r, 2, c, p, ops, user);
            int end = 0;
            if (p->in_str) {
                if (p->esc) p->esc = 0;
                else if (c == '\\') p->esc = 1;
                else if (c == '"') { p->in_str = 0; end = p->depth == 0; }
            } else if (c == '"') {
                p->in_str = 1;
            } else if (c == '{' || c == '[') {
                p->depth++;
            } else if (c == '}' || c == ']') {
                end = --p->depth <= 0;
            }
            if (end) {
                run_flush(&r, p, ops, user);
                p->n_done++;
                p->n_buf = 0;
                p->state = P_AFTER;
                if (!sx->call_post[0] && !sx->tail[0] && !(sx->multi && sx->sep[0])) p->state = P_DONE;
            }
            break;
        }
        case P_AFTER: {
            if (p->n_buf < sizeof p->buf) p->buf[p->n_buf++] = c;
            int more = sx->multi ? cat_match(p->buf, p->n_buf, sx->call_post, sx->sep, sx->call_pre) : 0;
            int done = cat_match(p->buf, p->n_buf, sx->call_post, sx->tail, "");
            if (more == 2) {
                p->n_buf = 0;
                p->state = P_NAME;
            } else if (!more && (done == 2 || !done)) {
                p->state = P_DONE;
            }
            break;
        }
        default:
            break;
        }
    }
    run_flush(&r, p, ops, user);
}

void tool_parser_finish(tool_parser *p, const tool_parser_ops *ops, void *user) {
    if (p->state == P_TEXT && p->n_buf && ops->content) ops->content(user, p->buf, p->n_buf);
    if (p->state == P_TEXT) p->n_buf = 0;
}
