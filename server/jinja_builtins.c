/* jinja_builtins.c -- filters, tests, methods (str/list/dict) and global
 * functions (range, namespace, dict, raise_exception, strftime_now) of the
 * chat-template interpreter. Semantics follow Jinja2 / Python where chat
 * templates depend on them (e.g. tojson matches HF's json.dumps call with
 * ensure_ascii=False). */
#include "jinja.h"

#include <ctype.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wctype.h>

#define A (c->a)

static jv S(jctx *c, const char *s, size_t n) { return jv_str(A, s, n); }

static jstr *want_str(jctx *c, jv v, const char *what) {
    if (v.t != JV_STR) jctx_fail(c, "%s expects a string, got %s", what, jv_typename(v));
    return v.u.s;
}

/* Converting a double outside int64's range is undefined behaviour in C. */
static int fits_int64(double f) { return f > -9.2e18 && f < 9.2e18; }

static int64_t want_int(jctx *c, jv v, const char *what) {
    if (v.t == JV_INT || v.t == JV_BOOL) return v.u.i;
    if (v.t == JV_FLOAT && fits_int64(v.u.f)) return (int64_t)v.u.f;
    jctx_fail(c, "%s expects an integer, got %s", what, jv_typename(v));
}

/* ---- sorting (stable merge sort; a comparator may raise, so no qsort) ---- */

typedef struct sortkey { jv key; jv val; } sortkey;

static int key_less(jctx *c, jv a, jv b, int case_sensitive) {
    if (!case_sensitive && a.t == JV_STR && b.t == JV_STR) {
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        for (size_t i = 0; i < n; i++) {
            int x = tolower((unsigned char)a.u.s->s[i]), y = tolower((unsigned char)b.u.s->s[i]);
            if (x != y) return x < y;
        }
        return a.u.s->len < b.u.s->len;
    }
    int ok, r = jv_compare(a, b, &ok);
    if (!ok) jctx_fail(c, "cannot sort %s with %s", jv_typename(a), jv_typename(b));
    return r < 0;
}

static void msort(jctx *c, sortkey *v, sortkey *tmp, size_t n, int cs, int rev) {
    if (n < 2) return;
    size_t h = n / 2;
    msort(c, v, tmp, h, cs, rev);
    msort(c, v + h, tmp, n - h, cs, rev);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int take_right = rev ? key_less(c, v[i].key, v[j].key, cs) : key_less(c, v[j].key, v[i].key, cs);
        tmp[k++] = take_right ? v[j++] : v[i++];
    }
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

/* Looks up "a.b.0" in a value (dicts by key, lists by integer). */
static jv attr_path(jctx *c, jv v, jv path) {
    if (path.t == JV_INT) {
        if (v.t == JV_LIST && path.u.i >= 0 && (size_t)path.u.i < v.u.l->n) return v.u.l->v[path.u.i];
        return jv_undef();
    }
    if (path.t != JV_STR) return jv_undef();
    const char *p = path.u.s->s;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char *part = jarena__strndup(A, p, n);
        if (v.t == JV_DICT) {
            jv *x = jdict_gets(v.u.d, part);
            v = x ? *x : jv_undef();
        } else if (v.t == JV_LIST && n && isdigit((unsigned char)part[0])) {
            long i = strtol(part, NULL, 10);
            v = i >= 0 && (size_t)i < v.u.l->n ? v.u.l->v[i] : jv_undef();
        } else {
            return jv_undef();
        }
        if (!dot) return v;
        p = dot + 1;
    }
}

static jv sorted(jctx *c, jv list, int rev, int cs, jv attribute) {
    jlist *l = list.u.l;
    uint64_t lg = 1;
    while (((size_t)1 << lg) < l->n) lg++;
    jinja__charge(c, l->n * lg);
    sortkey *v = jarena__alloc(A, (l->n + 1) * sizeof *v), *tmp = jarena__alloc(A, (l->n + 1) * sizeof *v);
    for (size_t i = 0; i < l->n; i++) {
        v[i].val = l->v[i];
        v[i].key = attribute.t != JV_UNDEF && attribute.t != JV_NONE ? attr_path(c, l->v[i], attribute) : l->v[i];
    }
    msort(c, v, tmp, l->n, cs, rev);
    jv r = jv_newlist(A);
    for (size_t i = 0; i < l->n; i++) jlist_push(A, r.u.l, v[i].val);
    return r;
}

/* ---- string helpers ---- */

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v'; }

static jv strip(jctx *c, jv s, jv chars, int left, int right) {
    jstr *x = want_str(c, s, "strip");
    const char *set = NULL;
    size_t nset = 0;
    if (chars.t == JV_STR) { set = chars.u.s->s; nset = chars.u.s->len; }
    size_t b = 0, e = x->len;
#define STRIPPABLE(ch) (set ? memchr(set, (ch), nset) != NULL : is_space(ch))
    if (left) while (b < e && STRIPPABLE(x->s[b])) b++;
    if (right) while (e > b && STRIPPABLE(x->s[e - 1])) e--;
#undef STRIPPABLE
    return S(c, x->s + b, e - b);
}

static jv str_replace(jctx *c, jstr *s, jstr *old, jstr *new_, int64_t count) {
    jbuf b = {0};
    jbuf_put(A, &b, "", 0);
    if (!old->len) {
        /* Python inserts `new` between every character (and at both ends) */
        for (size_t i = 0; i <= s->len; i++) {
            if (count < 0 || (int64_t)i < count) jbuf_put(A, &b, new_->s, new_->len);
            if (i < s->len) jbuf_putc(A, &b, s->s[i]);
        }
        return S(c, b.p, b.n);
    }
    size_t i = 0;
    int64_t done = 0;
    while (i < s->len) {
        const char *hit = (count < 0 || done < count) ? memmem(s->s + i, s->len - i, old->s, old->len) : NULL;
        if (!hit) break;
        size_t at = (size_t)(hit - s->s);
        jbuf_put(A, &b, s->s + i, at - i);
        jbuf_put(A, &b, new_->s, new_->len);
        i = at + old->len;
        done++;
    }
    jbuf_put(A, &b, s->s + i, s->len - i);
    return S(c, b.p, b.n);
}

static jv split(jctx *c, jstr *s, jv sep, int64_t maxsplit) {
    jv r = jv_newlist(A);
    if (sep.t != JV_STR) {
        size_t i = 0;
        int64_t n = 0;
        while (i < s->len) {
            while (i < s->len && is_space(s->s[i])) i++;
            if (i >= s->len) break;
            if (maxsplit >= 0 && n >= maxsplit) {
                size_t e = s->len;
                while (e > i && is_space(s->s[e - 1])) e--;
                jlist_push(A, r.u.l, S(c, s->s + i, e - i));
                break;
            }
            size_t j = i;
            while (j < s->len && !is_space(s->s[j])) j++;
            jlist_push(A, r.u.l, S(c, s->s + i, j - i));
            n++;
            i = j;
        }
        return r;
    }
    jstr *d = sep.u.s;
    if (!d->len) jctx_fail(c, "empty separator");
    size_t i = 0;
    int64_t n = 0;
    for (;;) {
        const char *hit = (maxsplit < 0 || n < maxsplit) ? memmem(s->s + i, s->len - i, d->s, d->len) : NULL;
        if (!hit) {
            jlist_push(A, r.u.l, S(c, s->s + i, s->len - i));
            return r;
        }
        size_t at = (size_t)(hit - s->s);
        jlist_push(A, r.u.l, S(c, s->s + i, at - i));
        i = at + d->len;
        n++;
    }
}

/* Unicode case mapping needs a UTF-8 ctype locale; made once, shared by all
 * threads (a locale_t is read-only after creation). Without it, only ASCII
 * letters change case. */
static locale_t utf8_locale;
static pthread_once_t utf8_locale_once = PTHREAD_ONCE_INIT;
static void utf8_locale_init(void) { utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0); }

static jv case_map(jctx *c, jstr *s, int mode) {
    /* mode 0 lower, 1 upper, 2 capitalize, 3 str.title(), 4 Jinja's title
     * filter (words start after whitespace, '-', '(', '{', '[', '<') */
    pthread_once(&utf8_locale_once, utf8_locale_init);
    jbuf b = {0};
    jbuf_put(A, &b, "", 0);
    int prev_cased = 0;
    size_t i = 0;
    while (i < s->len) {
        size_t start = i;
        uint32_t cp = jutf8_next(s->s, s->len, &i);
        int up;
        if (mode == 0) up = 0;
        else if (mode == 1) up = 1;
        else if (mode == 2) up = start == 0;
        else if (mode == 3) up = !prev_cased;
        else up = start == 0 || strchr(" \t\n\r\f\v-({[<", s->s[start - 1]) != NULL;
        if (cp < 0x80) {
            jbuf_putc(A, &b, (char)(up ? toupper((int)cp) : tolower((int)cp)));
            prev_cased = isalpha((int)cp) != 0;
        } else if (cp == 0xFFFD || !utf8_locale) {
            jbuf_put(A, &b, s->s + start, i - start);  /* keep bytes as they were */
            prev_cased = 0;
        } else {
            wint_t m = up ? towupper_l((wint_t)cp, utf8_locale) : towlower_l((wint_t)cp, utf8_locale);
            jutf8_put(A, &b, (uint32_t)m);
            prev_cased = iswalpha_l((wint_t)cp, utf8_locale) != 0;
        }
    }
    return S(c, b.p, b.n);
}

static int starts_ends(jstr *s, jv x, int ends) {
    if (x.t == JV_LIST) {
        for (size_t i = 0; i < x.u.l->n; i++)
            if (starts_ends(s, x.u.l->v[i], ends)) return 1;
        return 0;
    }
    if (x.t != JV_STR || x.u.s->len > s->len) return 0;
    return !memcmp(ends ? s->s + s->len - x.u.s->len : s->s, x.u.s->s, x.u.s->len);
}

static jv to_int(jctx *c, jv x, jv dflt) {
    switch (x.t) {
    case JV_INT: return x;
    case JV_BOOL: return jv_int(x.u.i);
    case JV_FLOAT: return fits_int64(x.u.f) ? jv_int((int64_t)x.u.f) : dflt;
    case JV_STR: {
        char *end;
        const char *p = x.u.s->s;
        long long v = strtoll(p, &end, 10);
        while (is_space(*end)) end++;
        if (end != p && !*end) return jv_int(v);
        double f = strtod(p, &end);
        while (is_space(*end)) end++;
        if (end != p && !*end && fits_int64(f)) return jv_int((int64_t)f);
        return dflt;
    }
    default: return dflt;
    }
}

static jv to_float(jctx *c, jv x, jv dflt) {
    (void)c;
    switch (x.t) {
    case JV_INT: case JV_BOOL: return jv_float((double)x.u.i);
    case JV_FLOAT: return x;
    case JV_STR: {
        char *end;
        double f = strtod(x.u.s->s, &end);
        while (is_space(*end)) end++;
        if (end != x.u.s->s && !*end) return jv_float(f);
        return dflt;
    }
    default: return dflt;
    }
}

static jv py_format(jctx *c, jstr *fmt, jargs *args) {
    jbuf b = {0};
    jbuf_put(A, &b, "", 0);
    size_t ai = 0;
    for (size_t i = 0; i < fmt->len; i++) {
        char ch = fmt->s[i];
        if (ch != '%' || i + 1 >= fmt->len) { jbuf_putc(A, &b, ch); continue; }
        char spec = fmt->s[++i];
        if (spec == '%') { jbuf_putc(A, &b, '%'); continue; }
        if (ai >= args->n) jctx_fail(c, "not enough arguments for format string");
        jv v = args->v[ai++];
        if (spec == 's') jv_print(A, &b, v);
        else if (spec == 'r') jv_repr(A, &b, v);
        else if (spec == 'd' || spec == 'i') jv_print(A, &b, to_int(c, v, jv_int(0)));
        else if (spec == 'f') {
            char tmp[64];
            snprintf(tmp, sizeof tmp, "%f", to_float(c, v, jv_float(0)).u.f);
            jbuf_puts(A, &b, tmp);
        } else jctx_fail(c, "unsupported format character '%c'", spec);
    }
    return S(c, b.p, b.n);
}

jv jinja__percent_format(jctx *c, jv fmt, jv values) {
    jargs a = {0};
    if (values.t == JV_LIST && values.u.l->tuple) {
        a.n = values.u.l->n;
        a.v = values.u.l->v;
    } else {
        a.n = 1;
        a.v = &values;
    }
    return py_format(c, fmt.u.s, &a);
}

/* ---- tests ---- */

int jinja__test(jctx *c, const char *name, jv x, jargs *args, int *res) {
    jv a0 = jargs_get(args, 0, NULL, jv_undef());
    if (!strcmp(name, "defined")) *res = x.t != JV_UNDEF;
    else if (!strcmp(name, "undefined")) *res = x.t == JV_UNDEF;
    else if (!strcmp(name, "none")) *res = x.t == JV_NONE;
    else if (!strcmp(name, "string")) *res = x.t == JV_STR;
    else if (!strcmp(name, "mapping")) *res = x.t == JV_DICT;
    else if (!strcmp(name, "iterable")) *res = x.t == JV_LIST || x.t == JV_DICT || x.t == JV_STR;
    else if (!strcmp(name, "sequence")) *res = x.t == JV_LIST || x.t == JV_DICT || x.t == JV_STR;
    else if (!strcmp(name, "number")) *res = x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL;
    else if (!strcmp(name, "integer")) *res = x.t == JV_INT;
    else if (!strcmp(name, "float")) *res = x.t == JV_FLOAT;
    else if (!strcmp(name, "boolean")) *res = x.t == JV_BOOL;
    else if (!strcmp(name, "true")) *res = x.t == JV_BOOL && x.u.i;
    else if (!strcmp(name, "false")) *res = x.t == JV_BOOL && !x.u.i;
    else if (!strcmp(name, "callable")) *res = x.t == JV_FUNC;
    else if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "==") || !strcmp(name, "sameas"))
        *res = jv_equal(x, a0);
    else if (!strcmp(name, "ne")) *res = !jv_equal(x, a0);
    else if (!strcmp(name, "lt") || !strcmp(name, "lessthan") || !strcmp(name, "le") ||
             !strcmp(name, "gt") || !strcmp(name, "greaterthan") || !strcmp(name, "ge")) {
        int ok, r = jv_compare(x, a0, &ok);
        if (!ok) jctx_fail(c, "cannot compare %s with %s", jv_typename(x), jv_typename(a0));
        if (name[0] == 'l') *res = name[1] == 'e' && name[2] == 0 ? r <= 0 : r < 0;
        else *res = name[1] == 'e' && name[2] == 0 ? r >= 0 : r > 0;
    } else if (!strcmp(name, "in")) {
        if (a0.t == JV_STR && x.t == JV_STR) *res = memmem(a0.u.s->s, a0.u.s->len, x.u.s->s, x.u.s->len) != NULL;
        else if (a0.t == JV_LIST || a0.t == JV_DICT) {
            jv l = jinja__iter_list(c, a0);
            *res = 0;
            for (size_t i = 0; i < l.u.l->n; i++)
                if (jv_equal(l.u.l->v[i], x)) *res = 1;
        } else *res = 0;
    } else if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        int64_t v = want_int(c, x, name);
        *res = (v % 2 != 0) == (name[0] == 'o');
    } else if (!strcmp(name, "divisibleby")) {
        int64_t d = want_int(c, a0, name);
        *res = d == -1 || (d != 0 && want_int(c, x, name) % d == 0);
    } else if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        *res = 0;
        if (x.t == JV_STR) {
            *res = 1;
            for (size_t i = 0; i < x.u.s->len; i++) {
                unsigned char ch = (unsigned char)x.u.s->s[i];
                if (name[0] == 'l' ? isupper(ch) : islower(ch)) *res = 0;
            }
        }
    } else if (!strcmp(name, "startingwith") || !strcmp(name, "startswith")) {
        *res = x.t == JV_STR && starts_ends(x.u.s, a0, 0);
    } else if (!strcmp(name, "endingwith") || !strcmp(name, "endswith")) {
        *res = x.t == JV_STR && starts_ends(x.u.s, a0, 1);
    } else if (!strcmp(name, "escaped")) {
        *res = 0;
    } else {
        return 0;
    }
    return 1;
}

/* ---- filters ---- */

static jv tojson(jctx *c, jv x, jargs *args) {
    jv ind = jargs_get(args, 0, "indent", jv_none());
    jv sk = jargs_get(args, (size_t)-1, "sort_keys", jv_bool(0));
    jv seps = jargs_get(args, (size_t)-1, "separators", jv_none());
    int ascii = jv_truthy(jargs_get(args, (size_t)-1, "ensure_ascii", jv_bool(0)));
    int indent = -1;
    if (ind.t == JV_INT) indent = ind.u.i < 0 ? 0 : ind.u.i > 64 ? 64 : (int)ind.u.i;
    const char *isep = indent >= 0 ? "," : ", ", *ksep = ": ";
    if (seps.t == JV_LIST && seps.u.l->n == 2 && seps.u.l->v[0].t == JV_STR && seps.u.l->v[1].t == JV_STR) {
        isep = seps.u.l->v[0].u.s->s;
        ksep = seps.u.l->v[1].u.s->s;
    }
    jbuf b = {0};
    jbuf_put(A, &b, "", 0);
    if (jv_tojson(A, &b, x, indent, jv_truthy(sk), ascii, isep, ksep, 0))
        jctx_fail(c, "value is not JSON serializable or nested too deeply");
    return S(c, b.p, b.n);
}

static int apply_test_by_name(jctx *c, jv item, jargs *args, size_t first) {
    jv tn = jargs_get(args, first, NULL, jv_undef());
    if (tn.t == JV_UNDEF) return jv_truthy(item);
    if (tn.t != JV_STR) jctx_fail(c, "test name must be a string");
    jargs ta = {0};
    ta.n = args->n > first + 1 ? args->n - first - 1 : 0;
    ta.v = args->v + first + 1;
    int r;
    if (!jinja__test(c, tn.u.s->s, item, &ta, &r)) jctx_fail(c, "unknown test '%s'", tn.u.s->s);
    return r;
}

static jv indent_filter(jctx *c, jstr *s, jargs *args) {
    jv w = jargs_get(args, 0, "width", jv_int(4));
    int first = jv_truthy(jargs_get(args, 1, "first", jv_bool(0)));
    int blank = jv_truthy(jargs_get(args, 2, "blank", jv_bool(0)));
    jbuf pad = {0};
    jbuf_put(A, &pad, "", 0);
    if (w.t == JV_STR) jbuf_put(A, &pad, w.u.s->s, w.u.s->len);
    else for (int64_t i = 0, n = want_int(c, w, "indent"); i < n && i < 1024; i++) jbuf_putc(A, &pad, ' ');
    jbuf b = {0};
    jbuf_put(A, &b, "", 0);
    size_t i = 0;
    int line_no = 0;
    while (i <= s->len) {
        const char *nl = memchr(s->s + i, '\n', s->len - i);
        size_t e = nl ? (size_t)(nl - s->s) : s->len;
        int empty = e == i;
        if ((line_no > 0 || first) && (!empty || blank)) jbuf_put(A, &b, pad.p, pad.n);
        jbuf_put(A, &b, s->s + i, e - i);
        if (!nl) break;
        jbuf_putc(A, &b, '\n');
        i = e + 1;
        line_no++;
    }
    return S(c, b.p, b.n);
}

/* Work a builtin over x may do, charged before it runs. */
static void charge_for(jctx *c, jv x) {
    if (x.t == JV_LIST) jinja__charge(c, x.u.l->n + 1);
    else if (x.t == JV_DICT) jinja__charge(c, x.u.d->n + 1);
    else if (x.t == JV_STR) jinja__charge(c, (x.u.s->len >> 6) + 1);
}

int jinja__filter(jctx *c, const char *name, jv x, jargs *args, jv *res) {
    jv a0 = jargs_get(args, 0, NULL, jv_undef());
    charge_for(c, x);
    if (!strcmp(name, "trim")) { *res = strip(c, jv_to_string(A, x), jargs_get(args, 0, "chars", jv_none()), 1, 1); return 1; }
    if (!strcmp(name, "tojson")) { *res = tojson(c, x, args); return 1; }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (x.t == JV_STR) *res = jv_int((int64_t)jutf8_len(x.u.s->s, x.u.s->len));
        else if (x.t == JV_LIST) *res = jv_int((int64_t)x.u.l->n);
        else if (x.t == JV_DICT) *res = jv_int((int64_t)x.u.d->n);
        else if (x.t == JV_UNDEF) *res = jv_int(0);
        else jctx_fail(c, "object of type %s has no length", jv_typename(x));
        return 1;
    }
    if (!strcmp(name, "upper")) { *res = case_map(c, jv_to_string(A, x).u.s, 1); return 1; }
    if (!strcmp(name, "lower")) { *res = case_map(c, jv_to_string(A, x).u.s, 0); return 1; }
    if (!strcmp(name, "capitalize")) { *res = case_map(c, case_map(c, jv_to_string(A, x).u.s, 0).u.s, 2); return 1; }
    if (!strcmp(name, "title")) { *res = case_map(c, jv_to_string(A, x).u.s, 4); return 1; }
    if (!strcmp(name, "replace")) {
        jv s = jv_to_string(A, x);
        jv o = jv_to_string(A, a0), n = jv_to_string(A, jargs_get(args, 1, NULL, jv_cstr(A, "")));
        jv cnt = jargs_get(args, 2, "count", jv_none());
        *res = str_replace(c, s.u.s, o.u.s, n.u.s, cnt.t == JV_INT ? cnt.u.i : -1);
        return 1;
    }
    if (!strcmp(name, "join")) {
        jv l = jinja__iter_list(c, x);
        jv sep = jargs_get(args, 0, "d", jv_cstr(A, ""));
        jv at = jargs_get(args, 1, "attribute", jv_none());
        sep = jv_to_string(A, sep);
        jbuf b = {0};
        jbuf_put(A, &b, "", 0);
        for (size_t i = 0; i < l.u.l->n; i++) {
            if (i) jbuf_put(A, &b, sep.u.s->s, sep.u.s->len);
            jv it = at.t != JV_NONE ? attr_path(c, l.u.l->v[i], at) : l.u.l->v[i];
            jv_print(A, &b, it);
        }
        *res = S(c, b.p, b.n);
        return 1;
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        jv l = jinja__iter_list(c, x);
        *res = !l.u.l->n ? jv_undef() : l.u.l->v[name[0] == 'f' ? 0 : l.u.l->n - 1];
        return 1;
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        jv dflt = jargs_get(args, 0, "default_value", jv_cstr(A, ""));
        int boolean = jv_truthy(jargs_get(args, 1, "boolean", jv_bool(0)));
        *res = (x.t == JV_UNDEF || (boolean && !jv_truthy(x))) ? dflt : x;
        return 1;
    }
    if (!strcmp(name, "list")) {
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        for (size_t i = 0; i < l.u.l->n; i++) jlist_push(A, r.u.l, l.u.l->v[i]);
        *res = r;
        return 1;
    }
    if (!strcmp(name, "string")) { *res = jv_to_string(A, x); return 1; }
    if (!strcmp(name, "safe") || !strcmp(name, "forceescape_off")) { *res = x; return 1; }
    if (!strcmp(name, "int")) { *res = to_int(c, x, jargs_get(args, 0, "default", jv_int(0))); return 1; }
    if (!strcmp(name, "float")) { *res = to_float(c, x, jargs_get(args, 0, "default", jv_float(0))); return 1; }
    if (!strcmp(name, "abs")) {
        if (x.t == JV_INT && x.u.i == INT64_MIN) *res = jv_float(-(double)x.u.i);
        else if (x.t == JV_INT || x.t == JV_BOOL) *res = jv_int(x.u.i < 0 ? -x.u.i : x.u.i);
        else if (x.t == JV_FLOAT) *res = jv_float(fabs(x.u.f));
        else jctx_fail(c, "bad operand type for abs(): %s", jv_typename(x));
        return 1;
    }
    if (!strcmp(name, "round") && (x.t == JV_INT || x.t == JV_BOOL) &&
        !strcmp(jv_to_string(A, jargs_get(args, 1, "method", jv_cstr(A, "common"))).u.s->s, "common")) {
        *res = jv_int(x.u.i);  /* Python's round() of an int stays an int */
        return 1;
    }
    if (!strcmp(name, "round")) {
        int64_t prec = want_int(c, jargs_get(args, 0, "precision", jv_int(0)), "round");
        jv m = jargs_get(args, 1, "method", jv_cstr(A, "common"));
        double v = to_float(c, x, jv_float(0)).u.f, p = pow(10.0, (double)prec);
        const char *ms = m.t == JV_STR ? m.u.s->s : "common";
        double r;
        if (!strcmp(ms, "floor")) r = floor(v * p) / p;
        else if (!strcmp(ms, "ceil")) r = ceil(v * p) / p;
        else if (prec >= 0 && prec <= 30 && isfinite(v)) {
            /* Python's round works on the exact binary value (2.675 -> 2.67),
             * which is what printf's correctly rounded conversion gives */
            char tmp[400];
            snprintf(tmp, sizeof tmp, "%.*f", (int)prec, v);
            r = strtod(tmp, NULL);
        } else r = nearbyint(v * p) / p;
        *res = jv_float(r);
        return 1;
    }
    if (!strcmp(name, "items") || !strcmp(name, "dictsort")) {
        jv r = jv_newlist(A);
        if (x.t == JV_DICT) {
            for (size_t i = 0; i < x.u.d->n; i++) {
                jv pair = jv_newlist(A);
                pair.u.l->tuple = 1;
                jlist_push(A, pair.u.l, x.u.d->k[i]);
                jlist_push(A, pair.u.l, x.u.d->v[i]);
                jlist_push(A, r.u.l, pair);
            }
        } else if (x.t != JV_UNDEF) {
            jctx_fail(c, "%s filter expects a mapping, got %s", name, jv_typename(x));
        }
        if (name[0] == 'd') {
            int cs = jv_truthy(jargs_get(args, 0, "case_sensitive", jv_bool(0)));
            jv by = jargs_get(args, 1, "by", jv_cstr(A, "key"));
            int rev = jv_truthy(jargs_get(args, 2, "reverse", jv_bool(0)));
            int byv = by.t == JV_STR && !strcmp(by.u.s->s, "value");
            r = sorted(c, r, rev, cs, jv_int(byv ? 1 : 0));
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "keys") || !strcmp(name, "values")) {
        jv r = jv_newlist(A);
        if (x.t == JV_DICT)
            for (size_t i = 0; i < x.u.d->n; i++) jlist_push(A, r.u.l, name[0] == 'k' ? x.u.d->k[i] : x.u.d->v[i]);
        *res = r;
        return 1;
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr") || !strcmp(name, "select") ||
        !strcmp(name, "reject")) {
        int is_attr = strstr(name, "attr") != NULL, want = name[0] == 's';
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv it = l.u.l->v[i];
            jv probe = is_attr ? attr_path(c, it, a0) : it;
            int ok = apply_test_by_name(c, probe, args, is_attr ? 1 : 0);
            if (ok == want) jlist_push(A, r.u.l, it);
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "map")) {
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        jv at = jargs_get(args, (size_t)-1, "attribute", jv_undef());
        jv dflt = jargs_get(args, (size_t)-1, "default", jv_undef());
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv it = l.u.l->v[i], v;
            if (at.t != JV_UNDEF) {
                v = attr_path(c, it, at);
                if (v.t == JV_UNDEF) v = dflt;
            } else {
                if (a0.t != JV_STR) jctx_fail(c, "map needs a filter name or attribute=");
                jargs fa = {0};
                fa.n = args->n - 1;
                fa.v = args->v + 1;
                if (!jinja__filter(c, a0.u.s->s, it, &fa, &v)) jctx_fail(c, "unknown filter '%s'", a0.u.s->s);
            }
            jlist_push(A, r.u.l, v);
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "unique")) {
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        int cs = jv_truthy(jargs_get(args, 0, "case_sensitive", jv_bool(0)));
        jv at = jargs_get(args, 1, "attribute", jv_none());
        jdict *seen = jv_newdict(A).u.d;  /* used as a set: hashed, so linear overall */
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv k = at.t != JV_NONE ? attr_path(c, l.u.l->v[i], at) : l.u.l->v[i];
            if (!cs && k.t == JV_STR) k = case_map(c, k.u.s, 0);
            if (jdict_get(seen, k)) continue;
            jdict_set(A, seen, k, jv_none());
            jlist_push(A, r.u.l, l.u.l->v[i]);
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "sort")) {
        jv l = jinja__iter_list(c, x);
        int rev = jv_truthy(jargs_get(args, 0, "reverse", jv_bool(0)));
        int cs = jv_truthy(jargs_get(args, 1, "case_sensitive", jv_bool(0)));
        *res = sorted(c, l, rev, cs, jargs_get(args, 2, "attribute", jv_none()));
        return 1;
    }
    if (!strcmp(name, "reverse")) {
        if (x.t == JV_STR) {
            jv l = jinja__iter_list(c, x);
            jbuf b = {0};
            jbuf_put(A, &b, "", 0);
            for (size_t i = l.u.l->n; i-- > 0;) jbuf_put(A, &b, l.u.l->v[i].u.s->s, l.u.l->v[i].u.s->len);
            *res = S(c, b.p, b.n);
            return 1;
        }
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        for (size_t i = l.u.l->n; i-- > 0;) jlist_push(A, r.u.l, l.u.l->v[i]);
        *res = r;
        return 1;
    }
    if (!strcmp(name, "escape") || !strcmp(name, "e") || !strcmp(name, "forceescape")) {
        jv s = jv_to_string(A, x);
        jbuf b = {0};
        jbuf_put(A, &b, "", 0);
        for (size_t i = 0; i < s.u.s->len; i++) {
            char ch = s.u.s->s[i];
            if (ch == '&') jbuf_puts(A, &b, "&amp;");
            else if (ch == '<') jbuf_puts(A, &b, "&lt;");
            else if (ch == '>') jbuf_puts(A, &b, "&gt;");
            else if (ch == '"') jbuf_puts(A, &b, "&#34;");
            else if (ch == '\'') jbuf_puts(A, &b, "&#39;");
            else jbuf_putc(A, &b, ch);
        }
        *res = S(c, b.p, b.n);
        return 1;
    }
    if (!strcmp(name, "indent")) { *res = indent_filter(c, jv_to_string(A, x).u.s, args); return 1; }
    if (!strcmp(name, "center")) {
        jv s = jv_to_string(A, x);
        int64_t w = want_int(c, jargs_get(args, 0, "width", jv_int(80)), "center");
        int64_t n = (int64_t)jutf8_len(s.u.s->s, s.u.s->len);
        if (w > 100000) w = 100000;
        if (w <= n) { *res = s; return 1; }
        int64_t total = w - n, left = total / 2 + (total & w & 1);
        jbuf b = {0};
        jbuf_put(A, &b, "", 0);
        for (int64_t i = 0; i < left; i++) jbuf_putc(A, &b, ' ');
        jbuf_put(A, &b, s.u.s->s, s.u.s->len);
        for (int64_t i = 0; i < total - left; i++) jbuf_putc(A, &b, ' ');
        *res = S(c, b.p, b.n);
        return 1;
    }
    if (!strcmp(name, "wordcount")) {
        jv s = jv_to_string(A, x);
        int64_t n = 0;
        int in = 0;
        for (size_t i = 0; i < s.u.s->len; i++) {
            unsigned char ch = (unsigned char)s.u.s->s[i];
            int w = isalnum(ch) || ch == '_' || ch >= 0x80;
            if (w && !in) n++;
            in = w;
        }
        *res = jv_int(n);
        return 1;
    }
    if (!strcmp(name, "batch")) {
        jv l = jinja__iter_list(c, x), r = jv_newlist(A), cur = jv_newlist(A);
        int64_t n = want_int(c, a0, "batch");
        jv fill = jargs_get(args, 1, "fill_with", jv_undef());
        if (n <= 0) jctx_fail(c, "batch size must be positive");
        for (size_t i = 0; i < l.u.l->n; i++) {
            jlist_push(A, cur.u.l, l.u.l->v[i]);
            if ((int64_t)cur.u.l->n == n) { jlist_push(A, r.u.l, cur); cur = jv_newlist(A); }
        }
        if (cur.u.l->n) {
            if (fill.t != JV_UNDEF) while ((int64_t)cur.u.l->n < n) jlist_push(A, cur.u.l, fill);
            jlist_push(A, r.u.l, cur);
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "slice")) {
        jv l = jinja__iter_list(c, x), r = jv_newlist(A);
        int64_t n = want_int(c, a0, "slice");
        if (n <= 0 || n > 100000) jctx_fail(c, "bad slice count");
        size_t len = l.u.l->n, per = len / (size_t)n, extra = len % (size_t)n, off = 0;
        for (int64_t i = 0; i < n; i++) {
            size_t take = per + ((size_t)i < extra);
            jv part = jv_newlist(A);
            for (size_t k = 0; k < take; k++) jlist_push(A, part.u.l, l.u.l->v[off + k]);
            off += take;
            jlist_push(A, r.u.l, part);
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "sum")) {
        jv l = jinja__iter_list(c, x);
        jv at = jargs_get(args, 0, "attribute", jv_none());
        jv acc = jargs_get(args, 1, "start", jv_int(0));
        for (size_t i = 0; i < l.u.l->n; i++) {
            jv it = at.t != JV_NONE ? attr_path(c, l.u.l->v[i], at) : l.u.l->v[i];
            int64_t sum;
            if (acc.t == JV_INT && (it.t == JV_INT || it.t == JV_BOOL) && !__builtin_add_overflow(acc.u.i, it.u.i, &sum))
                acc = jv_int(sum);
            else if ((acc.t == JV_INT || acc.t == JV_FLOAT) && (it.t == JV_INT || it.t == JV_FLOAT || it.t == JV_BOOL))
                acc = jv_float((acc.t == JV_FLOAT ? acc.u.f : (double)acc.u.i) + (it.t == JV_FLOAT ? it.u.f : (double)it.u.i));
            else jctx_fail(c, "sum of %s", jv_typename(it));
        }
        *res = acc;
        return 1;
    }
    if (!strcmp(name, "min") || !strcmp(name, "max")) {
        jv l = jinja__iter_list(c, x);
        jv at = jargs_get(args, 1, "attribute", jv_none());
        int cs = jv_truthy(jargs_get(args, 0, "case_sensitive", jv_bool(0)));
        if (!l.u.l->n) { *res = jv_undef(); return 1; }
        jv best = l.u.l->v[0];
        for (size_t i = 1; i < l.u.l->n; i++) {
            jv a = at.t != JV_NONE ? attr_path(c, l.u.l->v[i], at) : l.u.l->v[i];
            jv b = at.t != JV_NONE ? attr_path(c, best, at) : best;
            if (name[1] == 'i' ? key_less(c, a, b, cs) : key_less(c, b, a, cs)) best = l.u.l->v[i];
        }
        *res = best;
        return 1;
    }
    if (!strcmp(name, "attr")) { *res = attr_path(c, x, a0); return 1; }
    if (!strcmp(name, "format")) { *res = py_format(c, want_str(c, x, "format"), args); return 1; }
    if (!strcmp(name, "bool")) { *res = jv_bool(jv_truthy(x)); return 1; }
    return 0;
}

/* ---- methods ---- */

int jinja__method(jctx *c, jv self, const char *name, jargs *args, jv *res) {
    jv a0 = jargs_get(args, 0, NULL, jv_undef());
    /* O(1) methods (hash lookups, appends) are not charged by size */
    if (strcmp(name, "append") && strcmp(name, "get") && strcmp(name, "pop") && strcmp(name, "cycle") &&
        strcmp(name, "update") && strcmp(name, "setdefault"))
        charge_for(c, self);
    if (self.t == JV_STR) {
        jstr *s = self.u.s;
        if (!strcmp(name, "strip")) { *res = strip(c, self, a0, 1, 1); return 1; }
        if (!strcmp(name, "lstrip")) { *res = strip(c, self, a0, 1, 0); return 1; }
        if (!strcmp(name, "rstrip")) { *res = strip(c, self, a0, 0, 1); return 1; }
        if (!strcmp(name, "split")) {
            jv ms = jargs_get(args, 1, "maxsplit", jv_int(-1));
            *res = split(c, s, jargs_get(args, 0, "sep", jv_none()), want_int(c, ms, "split"));
            return 1;
        }
        if (!strcmp(name, "startswith")) { *res = jv_bool(starts_ends(s, a0, 0)); return 1; }
        if (!strcmp(name, "endswith")) { *res = jv_bool(starts_ends(s, a0, 1)); return 1; }
        if (!strcmp(name, "upper")) { *res = case_map(c, s, 1); return 1; }
        if (!strcmp(name, "lower")) { *res = case_map(c, s, 0); return 1; }
        if (!strcmp(name, "title")) { *res = case_map(c, s, 3); return 1; }
        if (!strcmp(name, "capitalize")) { *res = case_map(c, case_map(c, s, 0).u.s, 2); return 1; }
        if (!strcmp(name, "replace")) {
            jv cnt = jargs_get(args, 2, "count", jv_int(-1));
            *res = str_replace(c, s, want_str(c, a0, "replace"),
                               want_str(c, jargs_get(args, 1, NULL, jv_undef()), "replace"),
                               want_int(c, cnt, "replace"));
            return 1;
        }
        if (!strcmp(name, "find") || !strcmp(name, "index") || !strcmp(name, "rfind")) {
            jstr *n = want_str(c, a0, name);
            int64_t pos = -1;
            if (name[0] == 'r') {
                for (size_t i = s->len + 1; i-- > 0;)
                    if (i + n->len <= s->len && !memcmp(s->s + i, n->s, n->len)) { pos = (int64_t)i; break; }
            } else {
                const char *h = n->len ? memmem(s->s, s->len, n->s, n->len) : s->s;
                if (h) pos = h - s->s;
            }
            if (pos >= 0) pos = (int64_t)jutf8_len(s->s, (size_t)pos);
            if (pos < 0 && name[0] == 'i') jctx_fail(c, "substring not found");
            *res = jv_int(pos);
            return 1;
        }
        if (!strcmp(name, "count")) {
            jstr *n = want_str(c, a0, "count");
            int64_t k = 0;
            if (!n->len) k = (int64_t)jutf8_len(s->s, s->len) + 1;
            else
                for (size_t i = 0; i + n->len <= s->len;) {
                    if (!memcmp(s->s + i, n->s, n->len)) { k++; i += n->len; } else i++;
                }
            *res = jv_int(k);
            return 1;
        }
        if (!strcmp(name, "join")) {
            jv l = jinja__iter_list(c, a0);
            jbuf b = {0};
            jbuf_put(A, &b, "", 0);
            for (size_t i = 0; i < l.u.l->n; i++) {
                if (i) jbuf_put(A, &b, s->s, s->len);
                jv_print(A, &b, l.u.l->v[i]);
            }
            *res = S(c, b.p, b.n);
            return 1;
        }
        if (!strcmp(name, "splitlines")) {
            jv r = jv_newlist(A);
            size_t i = 0;
            while (i < s->len) {
                size_t j = i;
                while (j < s->len && s->s[j] != '\n' && s->s[j] != '\r') j++;
                jlist_push(A, r.u.l, S(c, s->s + i, j - i));
                if (j < s->len && s->s[j] == '\r' && j + 1 < s->len && s->s[j + 1] == '\n') j++;
                i = j + 1;
            }
            *res = r;
            return 1;
        }
        if (!strcmp(name, "isdigit") || !strcmp(name, "isalpha") || !strcmp(name, "isalnum") ||
            !strcmp(name, "isspace") || !strcmp(name, "islower") || !strcmp(name, "isupper")) {
            int ok = s->len > 0, cased = 0;
            for (size_t i = 0; i < s->len; i++) {
                unsigned char ch = (unsigned char)s->s[i];
                switch (name[2]) {
                case 'd': ok &= isdigit(ch) != 0; break;
                case 'a': ok &= name[4] == 'p' ? isalpha(ch) != 0 : isalnum(ch) != 0; break;
                case 's': ok &= is_space((char)ch); break;
                case 'l': ok &= !isupper(ch); cased |= islower(ch) != 0; break;
                case 'u': ok &= !islower(ch); cased |= isupper(ch) != 0; break;
                }
            }
            if (name[2] == 'l' || name[2] == 'u') ok &= cased;
            *res = jv_bool(ok);
            return 1;
        }
        if (!strcmp(name, "format")) {
            /* str.format with positional {} / {0} and keyword {name} fields */
            jbuf b = {0};
            jbuf_put(A, &b, "", 0);
            size_t auto_i = 0;
            for (size_t i = 0; i < s->len; i++) {
                char ch = s->s[i];
                if (ch == '{' && i + 1 < s->len && s->s[i + 1] == '{') { jbuf_putc(A, &b, '{'); i++; continue; }
                if (ch == '}' && i + 1 < s->len && s->s[i + 1] == '}') { jbuf_putc(A, &b, '}'); i++; continue; }
                if (ch != '{') { jbuf_putc(A, &b, ch); continue; }
                const char *close = memchr(s->s + i, '}', s->len - i);
                if (!close) jctx_fail(c, "unmatched '{' in format string");
                size_t fl = (size_t)(close - (s->s + i + 1));
                char *field = jarena__strndup(A, s->s + i + 1, fl);
                jv v;
                if (!fl) v = jargs_get(args, auto_i++, NULL, jv_undef());
                else if (isdigit((unsigned char)field[0])) v = jargs_get(args, (size_t)atoi(field), NULL, jv_undef());
                else v = jargs_get(args, (size_t)-1, field, jv_undef());
                jv_print(A, &b, v);
                i += fl + 1;
            }
            *res = S(c, b.p, b.n);
            return 1;
        }
        return 0;
    }
    if (self.t == JV_LIST) {
        jlist *l = self.u.l;
        if (!strcmp(name, "append")) { jlist_push(A, l, a0); *res = jv_none(); return 1; }
        if (!strcmp(name, "extend")) {
            jv o = jinja__iter_list(c, a0);
            size_t n = o.u.l->n;
            for (size_t i = 0; i < n; i++) jlist_push(A, l, o.u.l->v[i]);
            *res = jv_none();
            return 1;
        }
        if (!strcmp(name, "pop")) {
            if (!l->n) jctx_fail(c, "pop from empty list");
            int64_t i = a0.t == JV_UNDEF ? (int64_t)l->n - 1 : want_int(c, a0, "pop");
            if (i < 0) i += (int64_t)l->n;
            if (i < 0 || i >= (int64_t)l->n) jctx_fail(c, "pop index out of range");
            *res = l->v[i];
            memmove(l->v + i, l->v + i + 1, (l->n - (size_t)i - 1) * sizeof(jv));
            l->n--;
            return 1;
        }
        if (!strcmp(name, "insert")) {
            int64_t i = want_int(c, a0, "insert");
            jv v = jargs_get(args, 1, NULL, jv_none());
            if (i < 0) i += (int64_t)l->n;
            if (i < 0) i = 0;
            if (i > (int64_t)l->n) i = (int64_t)l->n;
            jlist_push(A, l, v);
            memmove(l->v + i + 1, l->v + i, (l->n - 1 - (size_t)i) * sizeof(jv));
            l->v[i] = v;
            *res = jv_none();
            return 1;
        }
        if (!strcmp(name, "index") || !strcmp(name, "count")) {
            int64_t k = 0, pos = -1;
            for (size_t i = 0; i < l->n; i++)
                if (jv_equal(l->v[i], a0)) { k++; if (pos < 0) pos = (int64_t)i; }
            if (name[0] == 'i' && pos < 0) jctx_fail(c, "value is not in list");
            *res = jv_int(name[0] == 'i' ? pos : k);
            return 1;
        }
        if (!strcmp(name, "reverse")) {
            for (size_t i = 0; i < l->n / 2; i++) {
                jv t = l->v[i];
                l->v[i] = l->v[l->n - 1 - i];
                l->v[l->n - 1 - i] = t;
            }
            *res = jv_none();
            return 1;
        }
        if (!strcmp(name, "copy")) {
            jv r = jv_newlist(A);
            for (size_t i = 0; i < l->n; i++) jlist_push(A, r.u.l, l->v[i]);
            *res = r;
            return 1;
        }
        return 0;
    }
    if (self.t == JV_DICT) {
        jdict *d = self.u.d;
        if (!strcmp(name, "items") || !strcmp(name, "keys") || !strcmp(name, "values"))
            return jinja__filter(c, name, self, &(jargs){0}, res);
        if (d->is_ns == JDICT_LOOP && !strcmp(name, "cycle")) {
            if (!args->n) jctx_fail(c, "loop.cycle needs at least one value");
            *res = args->v[(size_t)d->v[1].u.i % args->n];
            return 1;
        }
        if (!strcmp(name, "get")) {
            jv *v = jdict_get(d, a0);
            *res = v ? *v : jargs_get(args, 1, "default", jv_none());
            return 1;
        }
        if (!strcmp(name, "pop")) {
            for (size_t i = 0; i < d->n; i++)
                if (jv_equal(d->k[i], a0)) {
                    *res = d->v[i];
                    jdict_remove(A, d, i);
                    return 1;
                }
            if (args->n < 2) jctx_fail(c, "key not found in pop");
            *res = args->v[1];
            return 1;
        }
        if (!strcmp(name, "setdefault")) {
            jv *v = jdict_get(d, a0);
            if (!v) {
                jdict_set(A, d, a0, jargs_get(args, 1, NULL, jv_none()));
                v = jdict_get(d, a0);
            }
            *res = *v;
            return 1;
        }
        if (!strcmp(name, "update")) {
            if (a0.t == JV_DICT)
                for (size_t i = 0; i < a0.u.d->n; i++) jdict_set(A, d, a0.u.d->k[i], a0.u.d->v[i]);
            for (size_t i = 0; i < args->nk; i++) jdict_set(A, d, jv_cstr(A, args->kn[i]), args->kv[i]);
            *res = jv_none();
            return 1;
        }
        if (!strcmp(name, "copy")) {
            jv r = jv_newdict(A);
            for (size_t i = 0; i < d->n; i++) jdict_set(A, r.u.d, d->k[i], d->v[i]);
            *res = r;
            return 1;
        }
        return 0;
    }
    return 0;
}

/* ---- global functions ---- */

int jinja__global_fn(jctx *c, const char *name, jargs *args, jv *res) {
    if (!strcmp(name, "raise_exception")) {
        jv m = jv_to_string(A, jargs_get(args, 0, "message", jv_cstr(A, "template raised an exception")));
        jctx_fail(c, "%s", m.u.s->s);
    }
    if (!strcmp(name, "range")) {
        int64_t start = 0, stop, stp = 1;
        if (args->n == 0) jctx_fail(c, "range expects at least 1 argument");
        if (args->n == 1) stop = want_int(c, args->v[0], "range");
        else {
            start = want_int(c, args->v[0], "range");
            stop = want_int(c, args->v[1], "range");
            if (args->n > 2) stp = want_int(c, args->v[2], "range");
        }
        if (stp == 0) jctx_fail(c, "range step must not be zero");
        jv r = jv_newlist(A);
        for (int64_t i = start, n = 0; stp > 0 ? i < stop : i > stop; n++) {
            if (n >= 1000000) jctx_fail(c, "range too large");
            jlist_push(A, r.u.l, jv_int(i));
            if (__builtin_add_overflow(i, stp, &i)) break;
        }
        *res = r;
        return 1;
    }
    if (!strcmp(name, "namespace") || !strcmp(name, "dict")) {
        jv d = jv_newdict(A);
        d.u.d->is_ns = name[0] == 'n';
        for (size_t i = 0; i < args->n; i++) {
            if (args->v[i].t == JV_DICT)
                for (size_t k = 0; k < args->v[i].u.d->n; k++)
                    jdict_set(A, d.u.d, args->v[i].u.d->k[k], args->v[i].u.d->v[k]);
        }
        for (size_t i = 0; i < args->nk; i++) jdict_set(A, d.u.d, jv_cstr(A, args->kn[i]), args->kv[i]);
        *res = d;
        return 1;
    }
    if (!strcmp(name, "strftime_now")) {
        jstr *f = want_str(c, jargs_get(args, 0, NULL, jv_undef()), "strftime_now");
        time_t t = (time_t)c->now;
        struct tm tm;
        localtime_r(&t, &tm);
        char buf[512];
        size_t n = f->len ? strftime(buf, sizeof buf, f->s, &tm) : 0;
        *res = S(c, buf, n);
        return 1;
    }
    return 0;
}
