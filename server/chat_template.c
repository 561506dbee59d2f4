/* chat_template.c -- public entry points of the chat-template interpreter:
 * compile (parse into an AST owned by the template's arena) and render (one
 * arena per call, dropped at the end). */
#include "chat_template.h"
#include "jinja.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct chat_template {
    jarena arena;   /* owns the AST and literal values */
    jnode *root;
    int no_system;  /* the template rejects or drops system messages */
    int typed_only; /* content must stay an array of parts (string content is dropped) */
    int object_args; /* tool-call arguments must be objects (a JSON string would be re-encoded) */
};

/* Memory one render may use before it is stopped: far above any real chat
 * (a render is typically tens of KiB), low enough to protect the daemon. */
#define RENDER_MEM_LIMIT ((size_t)512 << 20)

static int render_limited(const chat_template *t, const json_t *messages, const json_t *tools,
                          const chat_template_opts *o, uint64_t step_limit, char **out, char *err, size_t errlen);

/* Steps a probe render may take: real templates need a few thousand. */
#define PROBE_STEPS 200000

/* Renders a tiny conversation to learn whether the template keeps a system
 * message. It does not when rendering with one fails (Gemma 2 raises) or
 * drops its text, while the same conversation without it renders fine. */
static int probe_no_system(chat_template *t) {
    json_t *with = json_pack("[{s:s,s:s},{s:s,s:s}]", "role", "system", "content", "<<qkvd-system-probe>>",
                             "role", "user", "content", "hi");
    json_t *without = json_pack("[{s:s,s:s}]", "role", "user", "content", "hi");
    char *text = NULL, err[256];
    chat_template_opts po = {.add_generation_prompt = 1, .now = 1};
    int no_system = 0;
    if (with && without) {
        int rc = render_limited(t, with, NULL, &po, PROBE_STEPS, &text, err, sizeof err);
        int kept = rc == 0 && strstr(text, "<<qkvd-system-probe>>") != NULL;
        free(text);
        text = NULL;
        if (!kept && render_limited(t, without, NULL, &po, PROBE_STEPS, &text, err, sizeof err) == 0) no_system = 1;
        free(text);
    }
    json_decref(with);
    json_decref(without);
    return no_system;
}

static int probe_shows(chat_template *t, json_t *msgs, const char *needle) {
    char *text = NULL, err[256];
    chat_template_opts po = {.add_generation_prompt = 1, .now = 1};
    int shown = msgs && render_limited(t, msgs, NULL, &po, PROBE_STEPS, &text, err, sizeof err) == 0 && strstr(text, needle);
    free(text);
    json_decref(msgs);
    return shown;
}

/* A template needs typed content when a plain string content does not show
 * up in its output but the same text as a [{type: text}] part does. */
static int probe_typed_only(chat_template *t) {
    const char *needle = "<<qkvd-content-probe>>";
    if (probe_shows(t, json_pack("[{s:s,s:s}]", "role", "user", "content", needle), needle)) return 0;
    return probe_shows(t, json_pack("[{s:s,s:[{s:s,s:s}]}]", "role", "user", "content", "type", "text", "text", needle),
                       needle);
}

/* Whether tool-call arguments given as `args` show up as plain JSON (the
 * key present, not backslash-escaped inside a re-encoded string). */
static int probe_args_render(chat_template *t, json_t *args) {
    json_t *msgs = json_pack("[{s:s,s:s},{s:s,s:s,s:[{s:s,s:s,s:{s:s,s:o}}]},{s:s,s:s,s:s},{s:s,s:s}]",
                             "role", "user", "content", "hi",
                             "role", "assistant", "content", "",
                             "tool_calls", "id", "123456789", "type", "function", "function", "name", "qkvd_probe_fn",
                             "arguments", args,
                             "role", "tool", "tool_call_id", "123456789", "content", "ok",
                             "role", "user", "content", "bye");
    char *text = NULL, err[256];
    chat_template_opts po = {.add_generation_prompt = 1, .now = 1};
    int ok = msgs && render_limited(t, msgs, NULL, &po, PROBE_STEPS, &text, err, sizeof err) == 0 &&
             strstr(text, "qkvd_arg_needle") && !strstr(text, "\\\"qkvd_arg_needle");
    free(text);
    json_decref(msgs);
    return ok;
}

/* Templates that print arguments with |tojson or iterate them need objects;
 * like llama.cpp, such templates get string arguments parsed into objects. */
static int probe_object_args(chat_template *t) {
    if (probe_args_render(t, json_string("{\"qkvd_arg_needle\": \"x\"}"))) return 0;
    return probe_args_render(t, json_pack("{s:s}", "qkvd_arg_needle", "x"));
}

int chat_template_compile(const char *src, size_t len, chat_template **out, char *err, size_t errlen) {
    *out = NULL;
    if (!src) {
        snprintf(err, errlen, "no template source");
        return -1;
    }
    chat_template *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->arena.limit = RENDER_MEM_LIMIT;
    t->root = jinja__parse(&t->arena, src, len, err, errlen);
    if (!t->root) {
        chat_template_free(t);
        return -1;
    }
    t->arena.fail = NULL;
    /* Probes see the template raw (no adaptations), then each finding is
     * switched on in turn. */
    t->typed_only = 1;
    t->typed_only = probe_typed_only(t);
    t->no_system = probe_no_system(t);
    t->object_args = probe_object_args(t);
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t) {
    if (!t) return;
    jarena__free(&t->arena);
    free(t);
}

/* llama.cpp hands templates string content: the text parts of an array
 * content joined with "\n" (other part types dropped), unless the template
 * only understands typed parts; null content becomes "". Changes our copy; the caller's JSON is untouched. */
static jv flatten_content(jarena *a, jv msgs, int typed_only) {
    if (msgs.t != JV_LIST) return msgs;
    for (size_t i = 0; i < msgs.u.l->n; i++) {
        jv m = msgs.u.l->v[i];
        if (m.t != JV_DICT) continue;
        jv *content = jdict_gets(m.u.d, "content");
        if (!content || content->t == JV_NONE) {
            /* null or missing content (an assistant turn with only tool
             * calls) reaches templates as "", as llama.cpp stores it: many
             * templates concatenate content and would fail on None */
            jdict_set(a, m.u.d, jv_cstr(a, "content"), jv_cstr(a, ""));
            continue;
        }
        if (content->t != JV_LIST || typed_only) continue;
        jbuf text = {0};
        jbuf_put(a, &text, "", 0);
        int first = 1;
        for (size_t k = 0; k < content->u.l->n; k++) {
            jv part = content->u.l->v[k];
            jv *type = part.t == JV_DICT ? jdict_gets(part.u.d, "type") : NULL;
            jv *tx = part.t == JV_DICT ? jdict_gets(part.u.d, "text") : NULL;
            if (!type || type->t != JV_STR || strcmp(type->u.s->s, "text") || !tx || tx->t != JV_STR) continue;
            if (!first) jbuf_putc(a, &text, '\n');
            jbuf_put(a, &text, tx->u.s->s, tx->u.s->len);
            first = 0;
        }
        *content = jv_str(a, text.p, text.n);
    }
    return msgs;
}

/* Replaces string tool-call arguments that hold a JSON object by the object. */
static void parse_arguments(jarena *a, jv msgs) {
    if (msgs.t != JV_LIST) return;
    for (size_t i = 0; i < msgs.u.l->n; i++) {
        jv m = msgs.u.l->v[i];
        jv *calls = m.t == JV_DICT ? jdict_gets(m.u.d, "tool_calls") : NULL;
        if (!calls || calls->t != JV_LIST) continue;
        for (size_t k = 0; k < calls->u.l->n; k++) {
            jv tc = calls->u.l->v[k];
            jv *fn = tc.t == JV_DICT ? jdict_gets(tc.u.d, "function") : NULL;
            jv *args = fn && fn->t == JV_DICT ? jdict_gets(fn->u.d, "arguments") : NULL;
            if (!args || args->t != JV_STR) continue;
            json_t *j = json_loadb(args->u.s->s, args->u.s->len, JSON_DECODE_ANY, NULL);
            if (j && json_is_object(j)) *args = jv_from_json(a, j);
            json_decref(j);
        }
    }
}

/* For templates without a system role (Gemma 2 raises on one), fold each
 * system message into the next user message as "system\nuser", as
 * llama.cpp does. */
static jv merge_system(jarena *a, jv msgs) {
    jv out = jv_newlist(a);
    jbuf pending = {0};
    int have = 0;
    for (size_t i = 0; i < msgs.u.l->n; i++) {
        jv m = msgs.u.l->v[i];
        jv *role = m.t == JV_DICT ? jdict_gets(m.u.d, "role") : NULL;
        jv *content = m.t == JV_DICT ? jdict_gets(m.u.d, "content") : NULL;
        int is_sys = role && role->t == JV_STR && !strcmp(role->u.s->s, "system");
        int is_user = role && role->t == JV_STR && !strcmp(role->u.s->s, "user");
        if (is_sys && content && content->t == JV_STR) {
            if (have) jbuf_putc(a, &pending, '\n');
            jbuf_put(a, &pending, content->u.s->s, content->u.s->len);
            have = 1;
            continue;
        }
        if (is_user && have && content && content->t == JV_STR) {
            jv copy = jv_newdict(a);
            for (size_t k = 0; k < m.u.d->n; k++) jdict_set(a, copy.u.d, m.u.d->k[k], m.u.d->v[k]);
            jbuf merged = {0};
            jbuf_put(a, &merged, pending.p, pending.n);
            jbuf_putc(a, &merged, '\n');
            jbuf_put(a, &merged, content->u.s->s, content->u.s->len);
            jdict_set(a, copy.u.d, jv_cstr(a, "content"), jv_str(a, merged.p, merged.n));
            m = copy;
            have = 0;
            pending.n = 0;
        }
        jlist_push(a, out.u.l, m);
    }
    if (have) {
        jv u = jv_newdict(a);
        jdict_set(a, u.u.d, jv_cstr(a, "role"), jv_cstr(a, "user"));
        jdict_set(a, u.u.d, jv_cstr(a, "content"), jv_str(a, pending.p, pending.n));
        jlist_push(a, out.u.l, u);
    }
    return out;
}

static void set_global(jarena *a, jdict *g, const char *k, jv v) { jdict_set(a, g, jv_cstr(a, k), v); }

int chat_template_render(const chat_template *t, const json_t *messages, const json_t *tools,
                         const chat_template_opts *o, char **out, char *err, size_t errlen) {
    return render_limited(t, messages, tools, o, 0, out, err, errlen);
}

/* The render itself; step_limit 0 = the default. Compile-time probes pass a
 * small limit so a pathological template cannot make compiling slow. */
/* The template's variables, built in arena a (see chat_template_render). */
static jdict *build_globals(jarena *a, const chat_template *t, const json_t *messages, const json_t *tools,
                            const chat_template_opts *opts, long long now) {
    jdict *g = jv_newdict(a).u.d;
    jv msgs = messages ? jv_from_json(a, messages) : jv_newlist(a);
    msgs = flatten_content(a, msgs, t->typed_only);
    if (t->object_args) parse_arguments(a, msgs);
    if (t->no_system) msgs = merge_system(a, msgs);
    set_global(a, g, "messages", msgs);
    /* An empty tools array counts as no tools, as in llama.cpp: Llama 3.x and
     * Mistral templates would otherwise print an empty tool section. */
    if (tools && json_is_array(tools) && json_array_size(tools))
        set_global(a, g, "tools", jv_from_json(a, tools));
    set_global(a, g, "add_generation_prompt", jv_bool(opts->add_generation_prompt));
    const char *bos = opts->bos_token ? opts->bos_token : "", *eos = opts->eos_token ? opts->eos_token : "";
    set_global(a, g, "bos_token", jv_cstr(a, bos));
    set_global(a, g, "eos_token", jv_cstr(a, eos));
    {
        /* llama.cpp passes today's date for templates (Llama 3.x) that print it */
        time_t tt = (time_t)now;
        struct tm tm;
        char ds[64];
        localtime_r(&tt, &tm);
        size_t n = strftime(ds, sizeof ds, "%d %b %Y", &tm);
        set_global(a, g, "date_string", jv_str(a, ds, n));
        n = strftime(ds, sizeof ds, "%b %d %Y", &tm);
        set_global(a, g, "datetime", jv_str(a, ds, n));
    }
    /* llama.cpp's default: reasoning on unless the request turns it off */
    set_global(a, g, "enable_thinking", jv_bool(1));
    if (opts->extra) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)opts->extra, k, v) set_global(a, g, k, jv_from_json(a, v));
    }
    return g;
}

/* build_globals with allocation failure (or a copy past the memory limit:
 * huge messages) reported as an error instead of aborting. */
static jdict *build_globals_guarded(jarena *a, const chat_template *t, const json_t *messages,
                                    const json_t *tools, const chat_template_opts *opts, long long now,
                                    char *err, size_t errlen) {
    jmp_buf jb;
    a->fail = &jb;
    a->errbuf = err;
    a->errlen = errlen;
    a->limit = RENDER_MEM_LIMIT;
    if (setjmp(jb)) return NULL;
    jdict *g = build_globals(a, t, messages, tools, opts, now);
    a->fail = NULL;
    return g;
}

static int render_limited(const chat_template *t, const json_t *messages, const json_t *tools,
                          const chat_template_opts *o, uint64_t step_limit, char **out, char *err, size_t errlen) {
    static const chat_template_opts defaults = {0};
    *out = NULL;
    if (!t) {
        snprintf(err, errlen, "no template");
        return -1;
    }
    const chat_template_opts *opts = o ? o : &defaults;
    if (messages && !json_is_array(messages)) {
        snprintf(err, errlen, "messages must be a JSON array");
        return -1;
    }
    if (tools && !json_is_array(tools) && !json_is_null(tools)) {
        snprintf(err, errlen, "tools must be a JSON array");
        return -1;
    }
    if (opts->extra && !json_is_object(opts->extra)) {
        snprintf(err, errlen, "extra template variables must be a JSON object");
        return -1;
    }
    jarena a = {0};
    long long now = opts->now ? opts->now : (long long)time(NULL);
    jdict *g = build_globals_guarded(&a, t, messages, tools, opts, now, err, errlen);
    if (!g) {
        jarena__free(&a);
        return -1;
    }
    const char *bos = opts->bos_token ? opts->bos_token : "";
    a.limit = a.used_total + RENDER_MEM_LIMIT;
    jrender_in in = {.root = t->root, .globals = g, .now = now, .step_limit = step_limit};
    char *text = NULL;
    size_t n = 0;
    int rc = jinja__render(&in, &a, &text, &n, err, errlen);
    jarena__free(&a);
    if (rc) return rc;
    size_t bl = strlen(bos);
    if (!opts->keep_bos && bl && n >= bl && !memcmp(text, bos, bl)) memmove(text, text + bl, n - bl + 1);
    *out = text;
    return 0;
}

const char *chat_template_chatml(void) {
    /* Array content arrives flattened to text (see flatten_content); null
     * content (an assistant turn with only tool calls) prints nothing. */
    return "{%- for message in messages -%}\n"
           "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
           "{%- if message['content'] is string %}{{ message['content'] }}{% endif -%}\n"
           "{{- '<|im_end|>\\n' -}}\n"
           "{%- endfor -%}\n"
           "{%- if add_generation_prompt -%}\n"
           "{{- '<|im_start|>assistant\\n' -}}\n"
           "{%- endif -%}\n";
}
