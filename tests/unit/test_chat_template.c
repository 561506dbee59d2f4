/* test_chat_template.c -- the chat-template interpreter: every template in
 * $QKVD_SHARED/templates rendered against llama.cpp's reference renderings,
 * plus targeted tests of the Jinja language features and error paths. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#include "chat_template.h"

/* 2026-11-22 12:00 UTC: the date the references were rendered on. */
#define REF_NOW 1795348800LL

static const char *shared_dir(void) {
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) { b[n] = 0; if (len) *len = (size_t)n; }
    return b;
}

/* Renders src with messages given as JSON text; returns malloc'ed output or
 * NULL (error text in err). */
static char *render_ex(const char *src, const char *msgs_json, const char *extra_json, int agp,
                       char *err, size_t errlen) {
    chat_template *t = NULL;
    if (chat_template_compile(src, strlen(src), &t, err, errlen)) return NULL;
    json_error_t je;
    json_t *m = json_loads(msgs_json ? msgs_json : "[]", 0, &je);
    json_t *x = extra_json ? json_loads(extra_json, 0, &je) : NULL;
    assert_non_null(m);
    chat_template_opts o = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = agp,
                            .extra = x, .now = REF_NOW, .keep_bos = 1};
    char *out = NULL;
    int rc = chat_template_render(t, m, NULL, &o, &out, err, errlen);
    json_decref(m);
    json_decref(x);
    chat_template_free(t);
    return rc ? NULL : out;
}

static char *render(const char *src, const char *msgs_json) {
    char err[512];
    char *o = render_ex(src, msgs_json, NULL, 1, err, sizeof err);
    if (!o) fprintf(stderr, "render error: %s\n   template: %s\n", err, src);
    return o;
}

#define EXPECT(src, msgs, want) do { \
        char *o_ = render(src, msgs); \
        assert_non_null(o_); \
        if (strcmp(o_, want)) fprintf(stderr, "template: %s\n  got:  [%s]\n  want: [%s]\n", src, o_, want); \
        assert_string_equal(o_, want); \
        free(o_); \
    } while (0)

#define EXPECT_ERR(src, msgs, needle) do { \
        char e_[512] = ""; \
        char *o_ = render_ex(src, msgs, NULL, 1, e_, sizeof e_); \
        if (o_) fprintf(stderr, "expected an error for %s, got [%s]\n", src, o_); \
        assert_null(o_); \
        if (!strstr(e_, needle)) fprintf(stderr, "error [%s] lacks [%s]\n", e_, needle); \
        assert_non_null(strstr(e_, needle)); \
    } while (0)

/* ---- the reference renderings ---- */

static void test_reference_templates(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/templates/reference.json", shared_dir());
    json_error_t je;
    json_t *ref = json_load_file(path, 0, &je);
    if (!ref) {
        printf("skipping: %s not found (set QKVD_SHARED)\n", path);
        skip();
    }
    json_t *tpls = json_object_get(ref, "templates");
    assert_non_null(tpls);
    const char *bos = json_string_value(json_object_get(ref, "bos_token"));
    const char *eos = json_string_value(json_object_get(ref, "eos_token"));
    const char *name;
    json_t *cases;
    int n_tpl = 0, n_ok = 0, n_conv = 0, n_conv_ok = 0;
    double total_us = 0, compile_us = 0;
    json_object_foreach(tpls, name, cases) {
        n_tpl++;
        snprintf(path, sizeof path, "%s/templates/%s", shared_dir(), name);
        size_t len = 0;
        char *src = slurp(path, &len);
        assert_non_null(src);
        char err[512];
        chat_template *t = NULL;
        int all = 1;
        struct timespec c0, c1;
        clock_gettime(CLOCK_MONOTONIC, &c0);
        int crc = chat_template_compile(src, len, &t, err, sizeof err);
        clock_gettime(CLOCK_MONOTONIC, &c1);
        compile_us += (c1.tv_sec - c0.tv_sec) * 1e6 + (c1.tv_nsec - c0.tv_nsec) / 1e3;
        if (crc) {
            printf("  FAIL %-55s compile: %s\n", name, err);
            free(src);
            n_conv += (int)json_array_size(cases);
            continue;
        }
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *cs = json_array_get(cases, i);
            const char *want = json_string_value(json_object_get(cs, "prompt"));
            chat_template_opts o = {.bos_token = bos, .eos_token = eos,
                                    .add_generation_prompt = json_is_true(json_object_get(cs, "add_generation_prompt")),
                                    .now = REF_NOW};
            char *out = NULL;
            n_conv++;
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            int rc = chat_template_render(t, json_object_get(cs, "messages"), json_object_get(cs, "tools"), &o,
                                          &out, err, sizeof err);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            total_us += (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
            if (rc) {
                printf("  FAIL %-55s conv %zu: render error: %s\n", name, i, err);
                all = 0;
                continue;
            }
            if (strcmp(out, want)) {
                size_t p = 0;
                while (out[p] && out[p] == want[p]) p++;
                size_t from = p > 30 ? p - 30 : 0;
                printf("  FAIL %-55s conv %zu: differs at byte %zu\n     got:  %.60s\n     want: %.60s\n", name, i,
                       p, out + from, want + from);
                all = 0;
            } else {
                n_conv_ok++;
            }
            free(out);
        }
        chat_template_free(t);
        free(src);
        if (all) n_ok++;
    }
    printf("reference templates: %d/%d fully exact, %d/%d conversations exact, mean compile %.1f us, mean render %.1f us\n",
           n_ok, n_tpl, n_conv_ok, n_conv, n_tpl ? compile_us / n_tpl : 0, n_conv ? total_us / n_conv : 0);
    json_decref(ref);
    assert_true(n_tpl >= 40);
    assert_true(n_ok >= 38);
}

/* ---- language ---- */

static void test_output_and_literals(void **state) {
    (void)state;
    EXPECT("{{ 'a' ~ 1 ~ none ~ true }}", NULL, "a1NoneTrue");
    EXPECT("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ -7 % 3 }}|{{ 2 ** 10 }}", NULL, "7|3|-4|1|2|1024");
    EXPECT("{{ 1 / 2 }}|{{ 4 / 2 }}|{{ 0.1 + 0.2 }}|{{ 1e20 }}", NULL, "0.5|2.0|0.30000000000000004|1e+20");
    EXPECT("{{ [1, 'a', none, true] }}|{{ {'k': 'v'} }}", NULL, "[1, 'a', None, True]|{'k': 'v'}");
    EXPECT("{{ \"a\\n\\tb\" }}{{ 'it''s' }}", NULL, "a\n\tbits");
    EXPECT("{{ undefined_thing }}|{{ undefined_thing is defined }}|{{ x.y is defined }}", NULL, "|False|False");
    EXPECT("{{ 'abc'[::-1] }}|{{ [1,2,3,4][1:3] }}|{{ 'hello'[1] }}|{{ [1,2,3][-1] }}", NULL, "cba|[2, 3]|e|3");
    EXPECT("{{ 'x' if false else 'y' }}{{ 'z' if true }}{{ 'w' if false }}", NULL, "yz");
    EXPECT("{{ 3 in [1,2,3] }}{{ 'b' in 'abc' }}{{ 'k' not in {'k':1} }}", NULL, "TrueTrueFalse");
    EXPECT("{{ not 1 == 2 and (1 < 2 or x) }}", NULL, "True");
}

static void test_whitespace_control(void **state) {
    (void)state;
    /* trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it */
    EXPECT("a\n  {% if true %}\n  b\n  {% endif %}\nc", NULL, "a\n  b\nc");
    EXPECT("a  {%- if true -%}  b  {%- endif -%}  c", NULL, "abc");
    EXPECT("{{ 'a' }}\n{{- 'b' }}  {{- 'c' -}}  \n d", NULL, "abcd");
    EXPECT("x {# comment #}\ny", NULL, "x y");
    EXPECT("  {# c #}\nz", NULL, "z");
    EXPECT("{% raw %}{{ not parsed }}{% endraw %}", NULL, "{{ not parsed }}");
    EXPECT("line\n", NULL, "line");  /* one trailing newline is dropped */
}

static void test_loops(void **state) {
    (void)state;
    EXPECT("{% for x in [1,2,3] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }},{% endfor %}",
           NULL, "103TrueFalse3,212FalseFalse3,321FalseTrue3,");
    EXPECT("{% for x in [] %}a{% else %}empty{% endfor %}", NULL, "empty");
    EXPECT("{% for x in [1,2,3,4,5] if x is odd %}{{ x }}{{ '.' if not loop.last }}{% endfor %}", NULL, "1.3.5");
    EXPECT("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
           NULL, "013");
    EXPECT("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}", NULL, "a=1;b=2;");
    EXPECT("{% for x in [1,2,3] %}{{ loop.previtem }}-{{ loop.nextitem }} {% endfor %}", NULL, "-2 1-3 2- ");
    EXPECT("{% for i in range(3, 0, -1) %}{{ i }}{% endfor %}", NULL, "321");
    EXPECT("{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}", NULL, "aba");
    /* for-loop scope: a set inside the loop does not leak out */
    EXPECT("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", NULL, "1");
}

static void test_set_namespace_macro(void **state) {
    (void)state;
    EXPECT("{% set ns = namespace(n=0, l=[]) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% set _ = ns.l.append(i) %}{% endfor %}{{ ns.n }}{{ ns.l }}",
           NULL, "3[0, 1, 2]");
    EXPECT("{% set a, b = 1, 2 %}{{ a }}{{ b }}", NULL, "12");
    EXPECT("{% set blk %}hello {{ 'w' }}{% endset %}[{{ blk }}]", NULL, "[hello w]");
    EXPECT("{% set blk | upper %}abc{% endset %}{{ blk }}", NULL, "ABC");
    EXPECT("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', punct='?') }}",
           NULL, "Hi A! Hi B?");
    EXPECT("{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}in{% endcall %}", NULL, "<in>");
    EXPECT("{% filter upper %}abc{% endfilter %}", NULL, "ABC");
    EXPECT("{% set top = 'T' %}{% macro m() %}{{ top }}{% endmacro %}{{ m() }}", NULL, "T");
}

static void test_filters(void **state) {
    (void)state;
    EXPECT("{{ '  a b  '|trim }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }}", NULL,
           "a b|AB|ab|Hello World|Hello");
    EXPECT("{{ [3,1,2]|sort }}|{{ [3,1,2]|sort(reverse=true) }}|{{ [1,2,2,3]|unique|list }}|{{ [1,2]|reverse|list }}", NULL,
           "[1, 2, 3]|[3, 2, 1]|[1, 2, 3]|[2, 1]");
    EXPECT("{{ [1,2,3]|join(', ') }}|{{ [1,2,3]|first }}|{{ [1,2,3]|last }}|{{ [1,2,3]|length }}|{{ 'héllo'|length }}", NULL,
           "1, 2, 3|1|3|3|5");
    EXPECT("{{ x|default('d') }}|{{ ''|default('e', true) }}|{{ '5'|int + 1 }}|{{ '2.5'|float }}|{{ -3|abs }}|{{ 2.567|round(2) }}",
           NULL, "d|e|6|2.5|3|2.57");
    EXPECT("{{ 'a-b-c'|replace('-', '+') }}|{{ 'abc'|replace('b', '') }}", NULL, "a+b+c|ac");
    EXPECT("{{ [{'n':'a','k':1},{'n':'b','k':0}]|selectattr('k')|map(attribute='n')|list }}", NULL, "['a']");
    EXPECT("{{ [{'n':'a','r':'x'},{'n':'b','r':'y'}]|selectattr('r', 'equalto', 'y')|map(attribute='n')|join }}", NULL, "b");
    EXPECT("{{ [{'n':'a','r':'x'},{'n':'b','r':'y'}]|rejectattr('r', 'equalto', 'y')|map(attribute='n')|join }}", NULL, "a");
    EXPECT("{{ [1,2,3,4]|select('even')|list }}|{{ [1,2,3,4]|reject('even')|list }}|{{ ['a','B']|map('upper')|join }}", NULL,
           "[2, 4]|[1, 3]|AB");
    EXPECT("{{ {'b': 1, 'a': [1, 2.5, none, true]}|tojson }}", NULL, "{\"b\": 1, \"a\": [1, 2.5, null, true]}");
    EXPECT("{{ {'b': 1, 'a': 2}|tojson(indent=2, sort_keys=true) }}", NULL, "{\n  \"a\": 2,\n  \"b\": 1\n}");
    EXPECT("{{ 'é\"\\n'|tojson }}", NULL, "\"é\\\"\\n\"");
    EXPECT("{{ 'é😀'|tojson(ensure_ascii=true) }}", NULL, "\"\\u00e9\\ud83d\\ude00\"");
    EXPECT("{{ [1, {'a': 'b'}]|tojson(separators=(',', ':')) }}", NULL, "[1,{\"a\":\"b\"}]");
    EXPECT("{{ \"it's-a (test)\"|title }}|{{ \"it's\".title() }}", NULL, "It's-A (Test)|It'S");
    EXPECT("{{ {'a': 1}|items|list }}|{{ {'b': 2, 'a': 1}|dictsort }}", NULL, "[('a', 1)]|[('a', 1), ('b', 2)]");
    EXPECT("{{ 'a\nb'|indent(2) }}|{{ 'a\nb'|indent(2, first=true) }}", NULL, "a\n  b|  a\n  b");
    EXPECT("{{ [1,2,3]|sum }}|{{ [3,1,2]|min }}|{{ [3,1,2]|max }}|{{ 'one two'|wordcount }}|{{ [1,2,3]|batch(2)|list }}", NULL,
           "6|1|3|2|[[1, 2], [3]]");
    EXPECT("{{ 'héllo wörld'|upper }}|{{ 'ÀÉ'|lower }}|{{ 'élan vital'|title }}|{{ [1, 'a', 'A']|unique|list }}|{{ 2.675|round(2) }}|{{ 2.5|round }}",
           NULL, "HÉLLO WÖRLD|àé|Élan Vital|[1, 'a']|2.67|2.0");
    EXPECT("{{ '<a&b>'|escape }}|{{ 'ab'|center(6) }}|{{ 5|string ~ 'x' }}", NULL, "&lt;a&amp;b&gt;|  ab  |5x");
}

static void test_tests_and_methods(void **state) {
    (void)state;
    EXPECT("{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 1 is number }}{{ 1 is integer }}{{ 1.0 is float }}",
           NULL, "TrueTrueTrueTrueTrueTrueTrue");
    EXPECT("{{ true is boolean }}{{ false is false }}{{ 4 is divisibleby 2 }}{{ 3 is odd }}{{ 1 is eq 1 }}{{ 'b' is in 'abc' }}{{ x is undefined }}",
           NULL, "TrueTrueTrueTrueTrueTrueTrue");
    EXPECT("{{ '  a  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'a,b,c'.split(',') }}|{{ 'a b  c'.split() }}|{{ 'a,b,c'.split(',', 1) }}",
           NULL, "a|axx|['a', 'b', 'c']|['a', 'b', 'c']|['a', 'b,c']");
    EXPECT("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('bc') }}{{ 'abc'.upper() }}{{ 'a-b'.replace('-', '_') }}{{ 'abcb'.find('b') }}{{ 'abcb'.count('b') }}",
           NULL, "TrueTrueABCa_b12");
    EXPECT("{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 'd') }}{{ {'a': 1}.get('b') }}{{ {'a': 1}.keys()|list }}{{ {'a': 1}.values()|list }}",
           NULL, "1dNone['a'][1]");
    EXPECT("{% set l = [1,2,3] %}{{ l.pop() }}{{ l.pop(0) }}{{ l }}", NULL, "31[2]");
    EXPECT("{{ '-'.join(['a', 'b']) }}|{{ '{} and {}'.format(1, 2) }}", NULL, "a-b|1 and 2");
    EXPECT("{{ '%s=%d%%' % ('x', 5) }}|{{ 'v:%s' % 'one' }}|{{ '%s'|format([1]) }}", NULL, "x=5%|v:one|[1]");
    EXPECT("{{ strftime_now('%Y-%m-%d') }}|{{ date_string }}", NULL, "2026-11-22|22 Nov 2026");
}

static void test_messages_and_globals(void **state) {
    (void)state;
    const char *msgs = "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"yo\"}]}]";
    EXPECT("{{ bos_token }}{% for m in messages %}{{ m.role }}:{% if m.content is string %}{{ m.content }}{% else %}{{ m.content[0].text }}{% endif %};{% endfor %}{% if add_generation_prompt %}A:{% endif %}",
           msgs, "<s>user:hi;assistant:yo;A:");
    char err[256];
    char *o = render_ex("{{ enable_thinking }}", "[]", "{\"enable_thinking\": false}", 1, err, sizeof err);
    assert_non_null(o);
    assert_string_equal(o, "False");
    free(o);

    /* the ChatML fallback, and llama.cpp's leading-BOS drop */
    chat_template *t = NULL;
    assert_int_equal(chat_template_compile(chat_template_chatml(), strlen(chat_template_chatml()), &t, err, sizeof err), 0);
    json_t *m = json_loads(msgs, 0, NULL);
    json_t *m1 = json_loads("[{\"role\":\"user\",\"content\":\"hi\"}]", 0, NULL);
    chat_template_opts opt = {.bos_token = "<s>", .add_generation_prompt = 1};
    assert_int_equal(chat_template_render(t, m1, NULL, &opt, &o, err, sizeof err), 0);
    assert_string_equal(o, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(o);
    json_t *m2 = json_loads("[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]},"
                            "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}]", 0, NULL);
    assert_int_equal(chat_template_render(t, m2, NULL, &opt, &o, err, sizeof err), 0);
    assert_string_equal(o, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n");
    free(o);
    json_decref(m2);
    chat_template_free(t);
    assert_int_equal(chat_template_compile("{{ bos_token }}x", 16, &t, err, sizeof err), 0);
    assert_int_equal(chat_template_render(t, m1, NULL, &opt, &o, err, sizeof err), 0);
    assert_string_equal(o, "x");
    free(o);
    chat_template_free(t);
    json_decref(m);
    json_decref(m1);
}

/* llama.cpp-style adaptation: string content parts are joined, and string
 * tool-call arguments are parsed for templates that re-encode them. */
static void test_polyfills(void **state) {
    (void)state;
    const char *parts = "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image\"},{\"type\":\"text\",\"text\":\"b\"}]}]";
    EXPECT("{% for m in messages %}[{{ m.content }}]{% endfor %}", parts, "[a\nb]");
    /* a template that only reads parts keeps them */
    EXPECT("{% for m in messages %}{% for p in m.content %}<{{ p.text }}>{% endfor %}{% endfor %}", parts, "<a><><b>");
    const char *call = "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"\","
                       "\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1}\"}}]}]";
    EXPECT("{% for m in messages %}{% for tc in m.tool_calls %}{{ tc.function.arguments|tojson }}{% endfor %}{% endfor %}", call,
           "{\"x\": 1}");
    EXPECT("{% for m in messages %}{% for tc in m.tool_calls %}{{ tc.function.arguments }}{% endfor %}{% endfor %}", call,
           "{\"x\": 1}");
}

static void test_errors(void **state) {
    (void)state;
    EXPECT_ERR("{{ raise_exception('Roles must alternate') }}", NULL, "Roles must alternate");
    EXPECT_ERR("{{ 'x'|no_such_filter }}", NULL, "unknown filter 'no_such_filter'");
    EXPECT_ERR("{{ 1 is no_such_test }}", NULL, "unknown test");
    EXPECT_ERR("{% if true %}open", NULL, "1:18: unexpected end of template, expected 'endif'");
    EXPECT_ERR("{% for x in y %}{% endif %}", NULL, "unexpected 'endif', expected 'endfor'");
    EXPECT_ERR("{{ 1 + }}", NULL, "1:");
    EXPECT_ERR("{{ unclosed", NULL, "unclosed");
    EXPECT_ERR("{% for %}", NULL, "expected a name");
    EXPECT_ERR("{% endfor %}", NULL, "unexpected 'endfor'");
    EXPECT_ERR("{{ 'a' + 1 }}", NULL, "unsupported operand");
    EXPECT_ERR("{{ 1 // 0 }}", NULL, "division by zero");
    EXPECT_ERR("{% include 'x' %}", NULL, "unsupported statement");
    /* runaway templates stop with an error instead of hanging or crashing */
    EXPECT_ERR("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, "too deep");
    EXPECT_ERR("{% set r = range(5000) %}{% for i in r %}{% for j in r %}{% for k in r %}{% endfor %}{% endfor %}{% endfor %}", NULL, "steps");
    EXPECT_ERR("{% set ns = namespace(s='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
               NULL, "too large");
    /* work hidden in builtins counts too: a linear scan per iteration is stopped */
    EXPECT_ERR("{% set r = range(100000) %}{% for i in r %}{{ i in r }}{% endfor %}", NULL, "steps");
    /* while hashed dicts keep big fills linear */
    EXPECT("{% set d = {} %}{% for i in range(50000) %}{% set _ = d.update({i: i * 2}) %}{% endfor %}{{ d|length }} {{ d[49999] }} {{ 123 in d }} {{ d.get(-1, 'none') }}",
           NULL, "50000 99998 True none");
    EXPECT("{{ range(100000)|unique|length }}", NULL, "100000");
    /* self-containing and very deep values print, compare and serialize
     * without overflowing the stack */
    EXPECT("{% set l = [] %}{% set _ = l.append(l) %}{{ (l|string)[:12] }}|{{ l == l }}", NULL, "[[[[[[[[[[[[|False");
    EXPECT_ERR("{% set l = [] %}{% set _ = l.append(l) %}{{ l|tojson }}", NULL, "nested too deeply");
    EXPECT("{% set ns = namespace(l=[]) %}{% for i in range(5000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ '[...]' in (ns.l|string) }}",
           NULL, "True");
    /* deep nesting in the source is a compile error, not a stack overflow */
    char *deep = malloc(20000);
    size_t n = 0;
    n += (size_t)sprintf(deep + n, "{{ ");
    for (int i = 0; i < 5000; i++) deep[n++] = '(';
    deep[n++] = '1';
    for (int i = 0; i < 5000; i++) deep[n++] = ')';
    n += (size_t)sprintf(deep + n, " }}");
    deep[n] = 0;
    EXPECT_ERR(deep, NULL, "nested too deeply");
    free(deep);
}

/* One compiled template rendered from several threads at once gives the
 * same text everywhere (renders share nothing mutable). */
typedef struct render_job { const chat_template *t; json_t *msgs; char *out[50]; int fails; } render_job;

static void *render_thread(void *arg) {
    render_job *j = arg;
    char err[256];
    chat_template_opts o = {.bos_token = "<s>", .add_generation_prompt = 1, .now = REF_NOW, .keep_bos = 1};
    for (int i = 0; i < 50; i++)
        if (chat_template_render(j->t, j->msgs, NULL, &o, &j->out[i], err, sizeof err)) j->fails++;
    return NULL;
}

static void test_concurrent_renders(void **state) {
    (void)state;
    const char *src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
                      "{{ m.role|upper }}:{{ m.content|title }}|{{ {'k': [m.content]}|tojson }}{% endfor %}{{ ns.n }}";
    chat_template *t = NULL;
    char err[256];
    assert_int_equal(chat_template_compile(src, strlen(src), &t, err, sizeof err), 0);
    json_t *msgs = json_loads("[{\"role\":\"user\",\"content\":\"héllo there\"},{\"role\":\"assistant\",\"content\":\"ok\"}]", 0, NULL);
    render_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].t = t;
        jobs[i].msgs = msgs;
        assert_int_equal(pthread_create(&th[i], NULL, render_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    const char *want = "USER:Héllo There|{\"k\": [\"héllo there\"]}ASSISTANT:Ok|{\"k\": [\"ok\"]}2";
    for (int i = 0; i < 4; i++) {
        assert_int_equal(jobs[i].fails, 0);
        for (int k = 0; k < 50; k++) {
            assert_string_equal(jobs[i].out[k], want);
            free(jobs[i].out[k]);
        }
    }
    json_decref(msgs);
    chat_template_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_output_and_literals),
        cmocka_unit_test(test_whitespace_control),
        cmocka_unit_test(test_loops),
        cmocka_unit_test(test_set_namespace_macro),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_tests_and_methods),
        cmocka_unit_test(test_messages_and_globals),
        cmocka_unit_test(test_polyfills),
        cmocka_unit_test(test_concurrent_renders),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_reference_templates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
