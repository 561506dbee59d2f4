/* cli_template.c -- `qkvd template`: render a chat template from files, to
 * check a model's template or debug a conversation without the server. */
#include "chat_template.h"
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void template_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd template --chat-template-file F --messages FILE.json [--tools FILE.json]\n"
            "                     [--no-generation-prompt] [--bos S] [--eos S] [--keep-bos]\n"
            "                     [--now UNIXTIME] [--var JSON_OBJECT]\n"
            "  --messages: a JSON array of messages, or {\"messages\": [...], \"tools\": [...]}\n"
            "  --chat-template-file chatml: use the built-in ChatML template\n"
            "  --var: extra template variables, e.g. '{\"enable_thinking\": false}'\n"
            "  --bos/--eos: token texts the template sees (default <s> and </s>); a leading\n"
            "  BOS text is dropped from the output, as llama.cpp does, unless --keep-bos\n");
}

/* Reads a whole file; malloc'ed, NUL-terminated, owned by the caller. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

int cli_template(int argc, char **argv) {
    const char *tpl_path = NULL, *msg_path = NULL, *tools_path = NULL, *var_json = NULL;
    chat_template_opts o = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { template_usage(stdout); return 0; }
        else if (!strcmp(a, "--chat-template-file") && more) tpl_path = argv[++i];
        else if (!strcmp(a, "--messages") && more) msg_path = argv[++i];
        else if (!strcmp(a, "--tools") && more) tools_path = argv[++i];
        else if (!strcmp(a, "--bos") && more) o.bos_token = argv[++i];
        else if (!strcmp(a, "--eos") && more) o.eos_token = argv[++i];
        else if (!strcmp(a, "--now") && more) o.now = atoll(argv[++i]);
        else if (!strcmp(a, "--var") && more) var_json = argv[++i];
        else if (!strcmp(a, "--no-generation-prompt")) o.add_generation_prompt = 0;
        else if (!strcmp(a, "--keep-bos")) o.keep_bos = 1;
        else {
            fprintf(stderr, "qkvd template: unknown or incomplete option '%s'\n", a);
            template_usage(stderr);
            return 2;
        }
    }
    if (!tpl_path || !msg_path) {
        template_usage(stderr);
        return 2;
    }
    int rc = 1;
    char err[512] = "";
    char *src = NULL, *out = NULL;
    size_t srclen = 0;
    json_t *msgs = NULL, *tools = NULL, *vars = NULL, *doc = NULL;
    chat_template *t = NULL;
    json_error_t je;

    if (!strcmp(tpl_path, "chatml")) {
        src = strdup(chat_template_chatml());
        srclen = strlen(src);
    } else if (!(src = read_file(tpl_path, &srclen))) {
        fprintf(stderr, "qkvd template: cannot read %s\n", tpl_path);
        goto done;
    }
    if (!(doc = json_load_file(msg_path, 0, &je))) {
        fprintf(stderr, "qkvd template: %s:%d: %s\n", msg_path, je.line, je.text);
        goto done;
    }
    if (json_is_array(doc)) {
        msgs = json_incref(doc);
    } else if (json_is_object(doc) && json_is_array(json_object_get(doc, "messages"))) {
        msgs = json_incref(json_object_get(doc, "messages"));
        json_t *tl = json_object_get(doc, "tools");
        if (tl && !json_is_null(tl)) tools = json_incref(tl);
    } else {
        fprintf(stderr, "qkvd template: %s: expected an array of messages or {\"messages\": [...]}\n", msg_path);
        goto done;
    }
    if (tools_path) {
        json_decref(tools);
        if (!(tools = json_load_file(tools_path, 0, &je))) {
            fprintf(stderr, "qkvd template: %s:%d: %s\n", tools_path, je.line, je.text);
            goto done;
        }
    }
    if (var_json) {
        if (!(vars = json_loads(var_json, 0, &je)) || !json_is_object(vars)) {
            fprintf(stderr, "qkvd template: --var must be a JSON object\n");
            goto done;
        }
        o.extra = vars;
    }
    if (chat_template_compile(src, srclen, &t, err, sizeof err)) {
        fprintf(stderr, "qkvd template: %s: %s\n", tpl_path, err);
        goto done;
    }
    if (chat_template_render(t, msgs, tools, &o, &out, err, sizeof err)) {
        fprintf(stderr, "qkvd template: render failed: %s\n", err);
        goto done;
    }
    fputs(out, stdout);
    rc = 0;
done:
    free(out);
    chat_template_free(t);
    json_decref(doc);
    json_decref(msgs);
    json_decref(tools);
    json_decref(vars);
    free(src);
    return rc;
}
