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
};

/* Memory one render may use before it is stopped: far above any real chat
 * (a render is typically tens of KiB), low enough to protect the daemon. */
#define RENDER_MEM_LIMIT ((size_t)512 << 20)

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
        int rc = chat_template_render(t, with, NULL, &po, &text, err, sizeof err);
        int kept = rc == 0 && strstr(text, "<<qkvd-system-probe>>") != NULL;
        free(text);
        text = NULL;
        if (!kept && chat_template_render(t, without, NULL, &po, &text, err, sizeof err) == 0) no_system = 1;
        free(text);
    }
    json_decref(with);
    json_decref(without);
    return no_system;
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
    t->no_system = probe_no_system(t);
    *out = t;
    return 0;
}

void chat_template_free(chat_template *t) {
    if (!t) return;
    jarena__free(&t->arena);
    free(t);
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
    /* The globals are a copy of JSON the caller already holds in memory, so
     * building them runs without the limit; the render itself is limited. */
    jarena a = {0};
    long long now = opts->now ? opts->now : (long long)time(NULL);
    jdict *g = jv_newdict(&a).u.d;
    jv msgs = messages ? jv_from_json(&a, messages) : jv_newlist(&a);
    if (t->no_system) msgs = merge_system(&a, msgs);
    set_global(&a, g, "messages", msgs);
    if (tools && !json_is_null(tools)) set_global(&a, g, "tools", jv_from_json(&a, tools));
    set_global(&a, g, "add_generation_prompt", jv_bool(opts->add_generation_prompt));
    const char *bos = opts->bos_token ? opts->bos_token : "", *eos = opts->eos_token ? opts->eos_token : "";
    set_global(&a, g, "bos_token", jv_cstr(&a, bos));
    set_global(&a, g, "eos_token", jv_cstr(&a, eos));
    {
        /* llama.cpp passes today's date for templates (Llama 3.x) that print it */
        time_t tt = (time_t)now;
        struct tm tm;
        char ds[64];
        localtime_r(&tt, &tm);
        size_t n = strftime(ds, sizeof ds, "%d %b %Y", &tm);
        set_global(&a, g, "date_string", jv_str(&a, ds, n));
        n = strftime(ds, sizeof ds, "%b %d %Y", &tm);
        set_global(&a, g, "datetime", jv_str(&a, ds, n));
    }
    /* llama.cpp's default: reasoning on unless the request turns it off */
    set_global(&a, g, "enable_thinking", jv_bool(1));
    if (opts->extra) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)opts->extra, k, v) set_global(&a, g, k, jv_from_json(&a, v));
    }
    a.limit = a.used_total + RENDER_MEM_LIMIT;
    jrender_in in = {.root = t->root, .globals = g, .now = now};
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
    return "{%- for message in messages -%}\n"
           "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n"
           "{%- endfor -%}\n"
           "{%- if add_generation_prompt -%}\n"
           "{{- '<|im_start|>assistant\\n' -}}\n"
           "{%- endif -%}\n";
}
