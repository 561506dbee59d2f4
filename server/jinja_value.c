/* jinja_value.c -- arena, values, printing (str/repr/JSON) and comparisons for
 * the chat-template interpreter. See jinja.h for the memory model. */
#include "jinja.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

struct jarena_chunk {
    jarena_chunk *next;
    size_t used, cap;
    _Alignas(16) char data[];
};

#define JARENA_CHUNK (64 * 1024)

void *jarena__alloc(jarena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (a->limit && a->used_total + n > a->limit) {
        if (a->fail) {
            if (a->errbuf)
                snprintf(a->errbuf, a->errlen, "template used more than %zu MiB of memory",
                         a->limit >> 20);
            longjmp(*a->fail, 1);
        }
        abort();
    }
    jarena_chunk *h = a->head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > JARENA_CHUNK / 4 ? n : JARENA_CHUNK;
        jarena_chunk *c = malloc(sizeof *c + cap);
        if (!c) {
            if (a->fail) {
                if (a->errbuf) snprintf(a->errbuf, a->errlen, "out of memory rendering template");
                longjmp(*a->fail, 1);
            }
            abort();
        }
        c->used = 0;
        c->cap = cap;
        if (cap > JARENA_CHUNK && h) {
            /* A big one-off block goes behind the current chunk so the
             * current chunk's free space stays usable. */
            c->next = h->next;
            h->next = c;
        } else {
            c->next = h;
            a->head = c;
        }
        h = c;
    }
    void *p = h->data + h->used;
    h->used += n;
    a->used_total += n;
    return p;
}

void jarena__free(jarena *a) {
    jarena_chunk *c = a->head;
    while (c) {
        jarena_chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->used_total = 0;
}

char *jarena__strndup(jarena *a, const char *s, size_t n) {
    char *p = jarena__alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- constructors ---- */

jv jv_undef(void) { jv v = {.t = JV_UNDEF}; return v; }
jv jv_none(void) { jv v = {.t = JV_NONE}; return v; }
jv jv_bool(int b) { jv v = {.t = JV_BOOL}; v.u.i = !!b; return v; }
jv jv_int(int64_t i) { jv v = {.t = JV_INT}; v.u.i = i; return v; }
jv jv_float(double f) { jv v = {.t = JV_FLOAT}; v.u.f = f; return v; }

jv jv_str(jarena *a, const char *s, size_t n) {
    jv v = {.t = JV_STR};
    jstr *js = jarena__alloc(a, sizeof *js + n + 1);
    js->len = n;
    if (n && s) memcpy(js->s, s, n);  /* s NULL: the caller fills the bytes */
    js->s[n] = 0;
    v.u.s = js;
    return v;
}

jv jv_cstr(jarena *a, const char *s) { return jv_str(a, s, strlen(s)); }

jv jv_newlist(jarena *a) {
    jv v = {.t = JV_LIST};
    v.u.l = jarena__alloc(a, sizeof(jlist));
    memset(v.u.l, 0, sizeof(jlist));
    return v;
}

jv jv_newdict(jarena *a) {
    jv v = {.t = JV_DICT};
    v.u.d = jarena__alloc(a, sizeof(jdict));
    memset(v.u.d, 0, sizeof(jdict));
    return v;
}

void jlist_push(jarena *a, jlist *l, jv v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *nv = jarena__alloc(a, cap * sizeof(jv));
        if (l->n) memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

/* Dicts stay plain arrays while small (scopes, messages); from 16 entries a
 * hash index keeps lookups O(1), so a template that fills a dict in a loop
 * stays linear. Keys equal under jv_equal hash the same (1 == 1.0 == true). */
#define JDICT_INDEX_MIN 16

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_int(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t jv_hash(jv k) {
    switch (k.t) {
    case JV_STR: return hash_bytes(k.u.s->s, k.u.s->len);
    case JV_INT: case JV_BOOL: return hash_int((uint64_t)k.u.i);
    case JV_FLOAT:
        if (k.u.f > -9.2e18 && k.u.f < 9.2e18 && k.u.f == (double)(int64_t)k.u.f)
            return hash_int((uint64_t)(int64_t)k.u.f);
        {
            uint64_t bits;
            memcpy(&bits, &k.u.f, sizeof bits);
            return hash_int(bits);
        }
    case JV_LIST: return hash_int(0x1157 + k.u.l->n);
    case JV_DICT: return hash_int(0xd1c7 + k.u.d->n);
    default: return hash_int((uint64_t)k.t);
    }
}

static void index_insert(jdict *d, size_t entry, uint64_t h) {
    size_t mask = d->idx_cap - 1, p = (size_t)h & mask;
    while (d->idx[p]) p = (p + 1) & mask;
    d->idx[p] = (uint32_t)(entry + 1);
}

static void jdict_reindex(jarena *a, jdict *d) {
    if (d->n < JDICT_INDEX_MIN || d->n > UINT32_MAX / 4) {
        d->idx = NULL;
        d->idx_cap = 0;
        return;
    }
    size_t cap = 64;
    while (cap < d->n * 4) cap *= 2;
    if (cap != d->idx_cap) {
        d->idx = jarena__alloc(a, cap * sizeof *d->idx);
        d->idx_cap = cap;
    }
    memset(d->idx, 0, cap * sizeof *d->idx);
    for (size_t i = 0; i < d->n; i++) index_insert(d, i, jv_hash(d->k[i]));
}

jv *jdict_get(const jdict *d, jv k) {
    if (d->idx) {
        size_t mask = d->idx_cap - 1, p = (size_t)jv_hash(k) & mask;
        for (; d->idx[p]; p = (p + 1) & mask)
            if (jv_equal(d->k[d->idx[p] - 1], k)) return &d->v[d->idx[p] - 1];
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->k[i], k)) return &d->v[i];
    return NULL;
}

jv *jdict_gets(const jdict *d, const char *k) {
    size_t n = strlen(k);
    if (d->idx) {
        size_t mask = d->idx_cap - 1, p = (size_t)hash_bytes(k, n) & mask;
        for (; d->idx[p]; p = (p + 1) & mask) {
            jv key = d->k[d->idx[p] - 1];
            if (key.t == JV_STR && key.u.s->len == n && !memcmp(key.u.s->s, k, n)) return &d->v[d->idx[p] - 1];
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s->len == n && !memcmp(d->k[i].u.s->s, k, n))
            return &d->v[i];
    return NULL;
}

void jdict_set(jarena *a, jdict *d, jv k, jv v) {
    jv *p = jdict_get(d, k);
    if (p) { *p = v; return; }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = jarena__alloc(a, cap * sizeof(jv)), *nv = jarena__alloc(a, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jv));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    if (d->n >= JDICT_INDEX_MIN && d->n * 2 > d->idx_cap) jdict_reindex(a, d);
    else if (d->idx) index_insert(d, d->n - 1, jv_hash(k));
}

void jdict_truncate(jarena *a, jdict *d, size_t n) {
    if (n >= d->n) return;
    d->n = n;
    if (d->idx) jdict_reindex(a, d);
}

void jdict_remove(jarena *a, jdict *d, size_t i) {
    if (i >= d->n) return;
    memmove(d->k + i, d->k + i + 1, (d->n - i - 1) * sizeof(jv));
    memmove(d->v + i, d->v + i + 1, (d->n - i - 1) * sizeof(jv));
    d->n--;
    if (d->idx) jdict_reindex(a, d);
}

/* ---- truth, equality, order ---- */

int jv_truthy(jv v) {
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: return 0;
    case JV_BOOL: case JV_INT: return v.u.i != 0;
    case JV_FLOAT: return v.u.f != 0.0;
    case JV_STR: return v.u.s->len != 0;
    case JV_LIST: return v.u.l->n != 0;
    case JV_DICT: return v.u.d->n != 0;
    case JV_FUNC: return 1;
    }
    return 0;
}

static int jv_isnum(jv v) { return v.t == JV_INT || v.t == JV_BOOL || v.t == JV_FLOAT; }
static double jv_num(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)v.u.i; }

/* Containers can nest without bound or even contain themselves (l.append(l)),
 * so every recursive walk stops at this depth instead of overflowing the stack. */
#define MAX_WALK 200

static int equal_d(jv a, jv b, int depth);

int jv_equal(jv a, jv b) { return equal_d(a, b, 0); }

static int equal_d(jv a, jv b, int depth) {
    if (depth > MAX_WALK) return 0;
    if (jv_isnum(a) && jv_isnum(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return a.u.i == b.u.i;
        return jv_num(a) == jv_num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case JV_UNDEF: case JV_NONE: return 1;
    case JV_STR: return a.u.s->len == b.u.s->len && !memcmp(a.u.s->s, b.u.s->s, a.u.s->len);
    case JV_LIST:
        if (a.u.l->n != b.u.l->n) return 0;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!equal_d(a.u.l->v[i], b.u.l->v[i], depth + 1)) return 0;
        return 1;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return 0;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv *o = jdict_get(b.u.d, a.u.d->k[i]);
            if (!o || !equal_d(a.u.d->v[i], *o, depth + 1)) return 0;
        }
        return 1;
    case JV_FUNC: return a.u.fn == b.u.fn;
    default: return 0;
    }
}

static int compare_d(jv a, jv b, int *ok, int depth);

int jv_compare(jv a, jv b, int *ok) { return compare_d(a, b, ok, 0); }

static int compare_d(jv a, jv b, int *ok, int depth) {
    *ok = depth <= MAX_WALK;
    if (!*ok) return 0;
    if (jv_isnum(a) && jv_isnum(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return (a.u.i > b.u.i) - (a.u.i < b.u.i);
        double x = jv_num(a), y = jv_num(b);
        return (x > y) - (x < y);
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int r = memcmp(a.u.s->s, b.u.s->s, n);
        if (r) return r < 0 ? -1 : 1;
        return (a.u.s->len > b.u.s->len) - (a.u.s->len < b.u.s->len);
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        size_t n = a.u.l->n < b.u.l->n ? a.u.l->n : b.u.l->n;
        for (size_t i = 0; i < n; i++) {
            int r = compare_d(a.u.l->v[i], b.u.l->v[i], ok, depth + 1);
            if (!*ok || r) return r;
        }
        return (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
    }
    *ok = 0;
    return 0;
}

const char *jv_typename(jv v) {
    static const char *names[] = {"undefined", "none", "boolean", "integer", "float",
                                  "string", "list", "dict", "function"};
    return names[v.t];
}

/* ---- JSON in ---- */

jv jv_from_json(jarena *a, const json_t *j) {
    if (!j) return jv_undef();
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        jv d = jv_newdict(a);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) jdict_set(a, d.u.d, jv_cstr(a, k), jv_from_json(a, v));
        return d;
    }
    case JSON_ARRAY: {
        jv l = jv_newlist(a);
        for (size_t i = 0; i < json_array_size(j); i++)
            jlist_push(a, l.u.l, jv_from_json(a, json_array_get(j, i)));
        return l;
    }
    case JSON_STRING: return jv_str(a, json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return jv_int(json_integer_value(j));
    case JSON_REAL: return jv_float(json_real_value(j));
    case JSON_TRUE: return jv_bool(1);
    case JSON_FALSE: return jv_bool(0);
    default: return jv_none();
    }
}

/* ---- buffers ---- */

void jbuf_put(jarena *a, jbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = jarena__alloc(a, cap);
        if (b->n) memcpy(p, b->p, b->n);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void jbuf_puts(jarena *a, jbuf *b, const char *s) { jbuf_put(a, b, s, strlen(s)); }
void jbuf_putc(jarena *a, jbuf *b, char c) { jbuf_put(a, b, &c, 1); }

/* ---- printing ---- */

/* Python repr() of a float: shortest digits that round-trip, always with a
 * '.0' or exponent so it reads as a float. */
void jv_format_float(char *out, size_t n, double f) {
    if (isnan(f)) { snprintf(out, n, "nan"); return; }
    if (isinf(f)) { snprintf(out, n, f < 0 ? "-inf" : "inf"); return; }
    char tmp[64];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, f);
        if (strtod(tmp, NULL) == f) break;
    }
    /* tmp holds d.ddde[+-]XX; rebuild in Python's style */
    char digits[32];
    int nd = 0, exp10;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9') digits[nd++] = *p;
    exp10 = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char *o = out;
    size_t left = n;
#define PUT(...) do { int w_ = snprintf(o, left, __VA_ARGS__); if (w_ < 0 || (size_t)w_ >= left) return; o += w_; left -= w_; } while (0)
    if (neg) PUT("-");
    if (exp10 >= 16 || exp10 < -4) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 >= 0) {
        for (int i = 0; i <= exp10; i++) PUT("%c", i < nd ? digits[i] : '0');
        PUT(".");
        if (nd > exp10 + 1) PUT("%s", digits + exp10 + 1);
        else PUT("0");
    } else {
        PUT("0.");
        for (int i = 0; i < -exp10 - 1; i++) PUT("0");
        PUT("%s", digits);
    }
#undef PUT
}

static void jv_print_inner(jarena *a, jbuf *b, jv v, int repr, int depth) {
    char tmp[64];
    if (depth > MAX_WALK && (v.t == JV_LIST || v.t == JV_DICT)) {
        jbuf_puts(a, b, v.t == JV_LIST ? "[...]" : "{...}");
        return;
    }
    switch (v.t) {
    case JV_UNDEF: if (repr) jbuf_puts(a, b, "Undefined"); break;
    case JV_NONE: jbuf_puts(a, b, "None"); break;
    case JV_BOOL: jbuf_puts(a, b, v.u.i ? "True" : "False"); break;
    case JV_INT: snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i); jbuf_puts(a, b, tmp); break;
    case JV_FLOAT: jv_format_float(tmp, sizeof tmp, v.u.f); jbuf_puts(a, b, tmp); break;
    case JV_STR:
        if (!repr) {
            jbuf_put(a, b, v.u.s->s, v.u.s->len);
        } else {
            char q = (memchr(v.u.s->s, '\'', v.u.s->len) && !memchr(v.u.s->s, '"', v.u.s->len)) ? '"' : '\'';
            jbuf_putc(a, b, q);
            for (size_t i = 0; i < v.u.s->len; i++) {
                char ch = v.u.s->s[i];
                if (ch == q || ch == '\\') { jbuf_putc(a, b, '\\'); jbuf_putc(a, b, ch); }
                else if (ch == '\n') jbuf_puts(a, b, "\\n");
                else if (ch == '\r') jbuf_puts(a, b, "\\r");
                else if (ch == '\t') jbuf_puts(a, b, "\\t");
                else if ((unsigned char)ch < 0x20 || ch == 0x7f) {
                    snprintf(tmp, sizeof tmp, "\\x%02x", (unsigned char)ch);
                    jbuf_puts(a, b, tmp);
                } else jbuf_putc(a, b, ch);
            }
            jbuf_putc(a, b, q);
        }
        break;
    case JV_LIST:
        jbuf_putc(a, b, v.u.l->tuple ? '(' : '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jbuf_puts(a, b, ", ");
            jv_print_inner(a, b, v.u.l->v[i], 1, depth + 1);
        }
        if (v.u.l->tuple && v.u.l->n == 1) jbuf_putc(a, b, ',');
        jbuf_putc(a, b, v.u.l->tuple ? ')' : ']');
        break;
    case JV_DICT:
        jbuf_putc(a, b, '{');
        for (size_t i = 0; i < v.u.d->n; i++) {
            if (i) jbuf_puts(a, b, ", ");
            jv_print_inner(a, b, v.u.d->k[i], 1, depth + 1);
            jbuf_puts(a, b, ": ");
            jv_print_inner(a, b, v.u.d->v[i], 1, depth + 1);
        }
        jbuf_putc(a, b, '}');
        break;
    case JV_FUNC: jbuf_puts(a, b, "<function>"); break;
    }
}

void jv_print(jarena *a, jbuf *b, jv v) { jv_print_inner(a, b, v, 0, 0); }
void jv_repr(jarena *a, jbuf *b, jv v) { jv_print_inner(a, b, v, 1, 0); }

jv jv_to_string(jarena *a, jv v) {
    if (v.t == JV_STR) return v;
    jbuf b = {0};
    jv_print(a, &b, v);
    return jv_str(a, b.p ? b.p : "", b.n);
}

/* Decodes one UTF-8 sequence at s[*i] (advancing *i); invalid bytes come
 * back as U+FFFD. */
uint32_t jutf8_next(const char *s, size_t n, size_t *i) {
    unsigned char c = (unsigned char)s[*i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!len || *i + (size_t)len > n) { (*i)++; return 0xFFFD; }
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; k++) {
        unsigned char d = (unsigned char)s[*i + (size_t)k];
        if ((d & 0xC0) != 0x80) { (*i)++; return 0xFFFD; }
        cp = cp << 6 | (d & 0x3F);
    }
    *i += (size_t)len;
    return cp;
}

static void json_put_string(jarena *a, jbuf *b, const char *s, size_t n, int ascii) {
    jbuf_putc(a, b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char tmp[16];
        if (ascii && ch >= 0x80) {
            /* ensure_ascii: \uXXXX, with a surrogate pair above the BMP */
            jbuf_put(a, b, s + i - run, run);
            run = 0;
            uint32_t cp = jutf8_next(s, n, &i);
            i--;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            }
            jbuf_puts(a, b, tmp);
            continue;
        }
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\u%04x", ch);
                esc = tmp;
            }
        }
        if (esc) {
            jbuf_put(a, b, s + i - run, run);
            run = 0;
            jbuf_puts(a, b, esc);
        } else {
            run++;
        }
    }
    jbuf_put(a, b, s + n - run, run);
    jbuf_putc(a, b, '"');
}

static void json_newline(jarena *a, jbuf *b, int indent, int level) {
    jbuf_putc(a, b, '\n');
    for (int i = 0; i < indent * level; i++) jbuf_putc(a, b, ' ');
}

static int key_cmp(const void *x, const void *y) {
    const jv *a = *(const jv *const *)x, *b = *(const jv *const *)y;
    int ok;
    return jv_compare(a[0], b[0], &ok);
}

int jv_tojson(jarena *a, jbuf *b, jv v, int indent, int sort_keys, int ascii, const char *item_sep,
              const char *key_sep, int depth) {
    char tmp[64];
    if (depth > MAX_WALK) return -1;
    switch (v.t) {
    case JV_UNDEF: case JV_NONE: jbuf_puts(a, b, "null"); return 0;
    case JV_BOOL: jbuf_puts(a, b, v.u.i ? "true" : "false"); return 0;
    case JV_INT: snprintf(tmp, sizeof tmp, "%lld", (long long)v.u.i); jbuf_puts(a, b, tmp); return 0;
    case JV_FLOAT:
        if (isnan(v.u.f)) jbuf_puts(a, b, "NaN");
        else if (isinf(v.u.f)) jbuf_puts(a, b, v.u.f < 0 ? "-Infinity" : "Infinity");
        else { jv_format_float(tmp, sizeof tmp, v.u.f); jbuf_puts(a, b, tmp); }
        return 0;
    case JV_STR: json_put_string(a, b, v.u.s->s, v.u.s->len, ascii); return 0;
    case JV_LIST:
        if (!v.u.l->n) { jbuf_puts(a, b, "[]"); return 0; }
        jbuf_putc(a, b, '[');
        for (size_t i = 0; i < v.u.l->n; i++) {
            if (i) jbuf_puts(a, b, item_sep);
            if (indent >= 0) json_newline(a, b, indent, depth + 1);
            if (jv_tojson(a, b, v.u.l->v[i], indent, sort_keys, ascii, item_sep, key_sep, depth + 1)) return -1;
        }
        if (indent >= 0) json_newline(a, b, indent, depth);
        jbuf_putc(a, b, ']');
        return 0;
    case JV_DICT: {
        jdict *d = v.u.d;
        if (!d->n) { jbuf_puts(a, b, "{}"); return 0; }
        /* order[i] points at a (key, value) pair: either the dict's own
         * storage order or sorted by key. */
        jv **order = jarena__alloc(a, d->n * sizeof *order);
        jv *pairs = jarena__alloc(a, d->n * 2 * sizeof(jv));
        for (size_t i = 0; i < d->n; i++) {
            pairs[2 * i] = d->k[i];
            pairs[2 * i + 1] = d->v[i];
            order[i] = &pairs[2 * i];
        }
        if (sort_keys) qsort(order, d->n, sizeof *order, key_cmp);
        jbuf_putc(a, b, '{');
        for (size_t i = 0; i < d->n; i++) {
            if (i) jbuf_puts(a, b, item_sep);
            if (indent >= 0) json_newline(a, b, indent, depth + 1);
            jv k = order[i][0];
            if (k.t == JV_STR) json_put_string(a, b, k.u.s->s, k.u.s->len, ascii);
            else {
                jbuf s = {0};
                jv_tojson(a, &s, k, -1, 0, 0, ", ", ": ", depth + 1);
                json_put_string(a, b, s.p, s.n, ascii);
            }
            jbuf_puts(a, b, key_sep);
            if (jv_tojson(a, b, order[i][1], indent, sort_keys, ascii, item_sep, key_sep, depth + 1)) return -1;
        }
        if (indent >= 0) json_newline(a, b, indent, depth);
        jbuf_putc(a, b, '}');
        return 0;
    }
    case JV_FUNC: return -1;
    }
    return -1;
}

/* ---- UTF-8 ---- */

void jutf8_put(jarena *a, jbuf *b, uint32_t cp) {
    char o[4];
    size_t n;
    if (cp < 0x80) { o[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); n = 2; }
    else if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63));
        o[2] = (char)(0x80 | (cp & 63)); n = 3;
    } else {
        o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
        o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63)); n = 4;
    }
    jbuf_put(a, b, o, n);
}

size_t jutf8_len(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) c++;
    return c;
}

size_t jutf8_offset(const char *s, size_t n, size_t ci) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (c == ci) return i;
            c++;
        }
    }
    return n;
}
