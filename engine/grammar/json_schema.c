/* json_schema.c -- JSON Schema (draft 2020-12 subset) -> GBNF text -> grammar.
 *
 * Every schema node becomes a rule `sN`. Supported: type (string or array),
 * enum, const, properties, required, additionalProperties (bool or schema;
 * absent counts as false: only declared properties are generated, as in
 * OpenAI's strict mode), items, prefixItems, minItems, maxItems, minLength,
 * maxLength, pattern, format (date, time, date-time, email, uuid, ipv4, uri),
 * minimum/maximum/exclusiveMinimum/exclusiveMaximum (exact digit automata for
 * integers; integral bounds for numbers), anyOf, oneOf (as anyOf), allOf
 * (merged), $ref to "#..." JSON pointers ($defs/definitions; recursion
 * allowed). Annotations are ignored. Anything else is an error naming the
 * keyword and its JSON path, never silently unenforced.
 *
 * Properties are generated in `properties` order; required ones always,
 * optional ones may be skipped. The comma bookkeeping uses one rule per
 * "properties i.. remain" so each choice is decided by the key's literal. */
#include "grammar_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_LEN_BOUND 5000

typedef struct refent { char *ref; char name[24]; } refent;

typedef struct sctx {
    json_t *root;
    gstr out;
    int n_rule;
    int ws;
    const char *W; /* " " or " ws " between tokens */
    refent *refs; int n_refs, cap_refs;
    int depth;
    char *err; size_t errlen;
    int failed;
} sctx;

static void serr(sctx *c, const char *kw, const char *path, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void serr(sctx *c, const char *kw, const char *path, const char *fmt, ...) {
    if (c->failed) return;
    c->failed = 1;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->errlen) snprintf(c->err, c->errlen, "schema keyword '%s' at #%s: %s", kw, path, msg);
}

static const char *const annotations[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", NULL};
static const char *const supported[] = {
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf", "allOf",
    "$ref", NULL};

static int in_list(const char *k, const char *const *l) {
    for (; *l; l++) if (!strcmp(k, *l)) return 1;
    return 0;
}

static void new_name(sctx *c, char name[24]) { snprintf(name, 24, "s%d", c->n_rule++); }

static void emit_rule(sctx *c, const char *name, const gstr *body) {
    grammar__str_puts(&c->out, name);
    grammar__str_puts(&c->out, " ::= ");
    grammar__str_putn(&c->out, body->s ? body->s : "", body->n);
    grammar__str_puts(&c->out, "\n");
}

static int gen(sctx *c, json_t *s, const char *path, char name[24]);

/* ---- $ref ---- */

static json_t *resolve_ref(sctx *c, const char *ref, const char *path) {
    if (ref[0] != '#') { serr(c, "$ref", path, "only local references (\"#...\") are supported, got '%s'", ref); return NULL; }
    json_t *cur = c->root;
    const char *p = ref + 1;
    if (*p && *p != '/') { serr(c, "$ref", path, "unsupported reference '%s' (anchors are not supported)", ref); return NULL; }
    while (*p == '/') {
        p++;
        char tok[256];
        size_t n = 0;
        while (*p && *p != '/') {
            char ch = *p++;
            if (ch == '~' && *p == '1') { ch = '/'; p++; }
            else if (ch == '~' && *p == '0') { ch = '~'; p++; }
            if (n + 1 < sizeof tok) tok[n++] = ch;
        }
        tok[n] = 0;
        if (json_is_object(cur)) cur = json_object_get(cur, tok);
        else if (json_is_array(cur)) {
            char *e;
            long i = strtol(tok, &e, 10);
            cur = *e || i < 0 ? NULL : json_array_get(cur, (size_t)i);
        } else cur = NULL;
        if (!cur) { serr(c, "$ref", path, "reference '%s' does not resolve", ref); return NULL; }
    }
    return cur;
}

static int gen_ref(sctx *c, const char *ref, const char *path, char name[24]) {
    for (int i = 0; i < c->n_refs; i++)
        if (!strcmp(c->refs[i].ref, ref)) { memcpy(name, c->refs[i].name, 24); return 0; }
    json_t *t = resolve_ref(c, ref, path);
    if (!t) return -1;
    if (c->n_refs == c->cap_refs) {
        int nc = c->cap_refs ? c->cap_refs * 2 : 8;
        refent *nr = realloc(c->refs, (size_t)nc * sizeof *nr);
        if (!nr) { serr(c, "$ref", path, "out of memory"); return -1; }
        c->refs = nr;
        c->cap_refs = nc;
    }
    refent *e = &c->refs[c->n_refs++];
    e->ref = strdup(ref);
    new_name(c, e->name);
    memcpy(name, e->name, 24);
    char inner[24];
    char rpath[512];
    snprintf(rpath, sizeof rpath, "%s", ref + 1);
    if (!e->ref || gen(c, t, rpath, inner)) return -1;
    grammar__str_printf(&c->out, "%s ::= %s\n", name, inner);
    return 0;
}

/* ---- allOf merging ---- */

static json_t *deref(sctx *c, json_t *s, const char *path) {
    for (int i = 0; i < 32 && json_is_object(s) && json_object_get(s, "$ref"); i++) {
        json_t *r = json_object_get(s, "$ref");
        if (!json_is_string(r)) { serr(c, "$ref", path, "must be a string"); return NULL; }
        json_t *t = resolve_ref(c, json_string_value(r), path);
        if (!t) return NULL;
        if (json_object_size(s) == 1) { s = t; continue; }
        return s; /* $ref with siblings: handled by gen as allOf */
    }
    return s;
}

static json_t *merge(sctx *c, json_t *a, json_t *b, const char *path);

static json_t *as_type_array(json_t *t) {
    if (json_is_string(t)) { json_t *a = json_array(); json_array_append(a, t); return a; }
    return json_incref(t);
}

/* Merge b into a copy of a (allOf). NULL with an error on conflict. */
static json_t *merge(sctx *c, json_t *a, json_t *b, const char *path) {
    if (json_is_true(a) || (json_is_object(a) && json_object_size(a) == 0)) return json_deep_copy(b);
    if (json_is_true(b) || (json_is_object(b) && json_object_size(b) == 0)) return json_deep_copy(a);
    if (json_is_false(a) || json_is_false(b)) { serr(c, "allOf", path, "a member is false: unsatisfiable"); return NULL; }
    if (!json_is_object(a) || !json_is_object(b)) { serr(c, "allOf", path, "members must be schemas"); return NULL; }
    json_t *m = json_deep_copy(a);
    const char *k;
    json_t *vb;
    json_object_foreach(b, k, vb) {
        json_t *va = json_object_get(m, k);
        if (!va || in_list(k, annotations)) { if (!va) json_object_set(m, k, vb); continue; }
        if (json_equal(va, vb)) continue;
        if (!strcmp(k, "properties")) {
            json_t *np = json_deep_copy(va);
            const char *pk;
            json_t *pv;
            json_object_foreach(vb, pk, pv) {
                json_t *old = json_object_get(np, pk);
                if (!old) { json_object_set(np, pk, pv); continue; }
                json_t *both = json_pack("{s:[O,O]}", "allOf", old, pv);
                json_object_set_new(np, pk, both);
            }
            json_object_set_new(m, k, np);
        } else if (!strcmp(k, "required")) {
            json_t *u = json_deep_copy(va);
            size_t i;
            json_t *x;
            json_array_foreach(vb, i, x) {
                int have = 0;
                for (size_t j = 0; j < json_array_size(u); j++) have |= json_equal(json_array_get(u, j), x);
                if (!have) json_array_append(u, x);
            }
            json_object_set_new(m, k, u);
        } else if (!strcmp(k, "type")) {
            json_t *ta = as_type_array(va), *tb = as_type_array(vb), *r = json_array();
            size_t i, j;
            json_t *x, *y;
            json_array_foreach(ta, i, x) json_array_foreach(tb, j, y) {
                const char *sx = json_string_value(x), *sy = json_string_value(y);
                if (!sx || !sy) continue;
                if (!strcmp(sx, sy)) json_array_append(r, x);
                else if ((!strcmp(sx, "integer") && !strcmp(sy, "number")) || (!strcmp(sx, "number") && !strcmp(sy, "integer")))
                    json_array_append_new(r, json_string("integer"));
            }
            json_decref(ta); json_decref(tb);
            if (json_array_size(r) == 0) { json_decref(r); json_decref(m); serr(c, "type", path, "allOf members have no type in common: unsatisfiable"); return NULL; }
            json_object_set_new(m, k, r);
        } else if (!strcmp(k, "minimum") || !strcmp(k, "exclusiveMinimum") || !strcmp(k, "minLength") || !strcmp(k, "minItems")) {
            if (json_number_value(vb) > json_number_value(va)) json_object_set(m, k, vb);
        } else if (!strcmp(k, "maximum") || !strcmp(k, "exclusiveMaximum") || !strcmp(k, "maxLength") || !strcmp(k, "maxItems")) {
            if (json_number_value(vb) < json_number_value(va)) json_object_set(m, k, vb);
        } else if (!strcmp(k, "enum")) {
            json_t *r = json_array();
            size_t i;
            json_t *x;
            json_array_foreach(va, i, x)
                for (size_t j = 0; j < json_array_size(vb); j++)
                    if (json_equal(x, json_array_get(vb, j))) { json_array_append(r, x); break; }
            json_object_set_new(m, k, r);
        } else if (!strcmp(k, "items") || !strcmp(k, "additionalProperties")) {
            json_t *mm = merge(c, va, vb, path);
            if (!mm) { json_decref(m); return NULL; }
            json_object_set_new(m, k, mm);
        } else if (!strcmp(k, "allOf")) {
            json_t *u = json_deep_copy(va);
            json_array_extend(u, vb);
            json_object_set_new(m, k, u);
        } else {
            serr(c, k, path, "cannot combine two different '%s' values under allOf", k);
            json_decref(m);
            return NULL;
        }
    }
    return m;
}

/* ---- leaves ---- */

/* Literal of a JSON value in compact form. */
static void lit_value(sctx *c, gstr *b, json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) { b->oom = 1; return; }
    grammar__str_literal(b, s, strlen(s));
    free(s);
}

static const char *json_type_of(json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return floor(json_real_value(v)) == json_real_value(v) ? "integer" : "number";
    case JSON_TRUE: case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

static int type_allows(json_t *types, const char *t) {
    if (!types) return 1;
    json_t *a = as_type_array(types);
    int ok = 0;
    size_t i;
    json_t *x;
    json_array_foreach(a, i, x) {
        const char *s = json_string_value(x);
        if (s && (!strcmp(s, t) || (!strcmp(s, "number") && !strcmp(t, "integer")))) ok = 1;
    }
    json_decref(a);
    return ok;
}

#define JCHAR "( [^\"\\\\\\x7F\\x00-\\x1F] | \"\\\\\" ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4}) )"

static const char *const fmt_date =
    "[0-9]{4} \"-\" ( (\"0\" [13578] | \"1\" [02]) \"-\" (\"0\" [1-9] | [12] [0-9] | \"3\" [01]) | "
    "(\"0\" [469] | \"11\") \"-\" (\"0\" [1-9] | [12] [0-9] | \"30\") | \"02-\" (\"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8]) )";
static const char *const fmt_time =
    "([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9] \":\" [0-5] [0-9] (\".\" [0-9]{1,6})? "
    "(\"Z\" | [+-] ([01] [0-9] | \"2\" [0-3]) \":\" [0-5] [0-9])";

static int gen_format(sctx *c, const char *f, const char *path, gstr *b) {
    grammar__str_puts(b, "\"\\\"\" ");
    if (!strcmp(f, "date")) grammar__str_puts(b, fmt_date);
    else if (!strcmp(f, "time")) grammar__str_puts(b, fmt_time);
    else if (!strcmp(f, "date-time")) grammar__str_printf(b, "%s \"T\" %s", fmt_date, fmt_time);
    else if (!strcmp(f, "uuid"))
        grammar__str_puts(b, "[0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{12}");
    else if (!strcmp(f, "ipv4")) {
        const char *o = "(\"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9] [0-9] | [0-9])";
        grammar__str_printf(b, "%s \".\" %s \".\" %s \".\" %s", o, o, o, o);
    } else if (!strcmp(f, "email"))
        grammar__str_puts(b, "[a-zA-Z0-9_+-]{1,32} (\".\" [a-zA-Z0-9_+-]{1,32}){0,4} \"@\" "
                             "([a-zA-Z0-9] [a-zA-Z0-9-]{0,30} \".\"){1,4} [a-zA-Z]{2,10}");
    else if (!strcmp(f, "uri"))
        grammar__str_puts(b, "[a-zA-Z] [a-zA-Z0-9+.-]{0,15} \"://\" [a-zA-Z0-9-]{1,63} (\".\" [a-zA-Z0-9-]{1,63}){0,8} "
                             "(\"/\" [a-zA-Z0-9._~-]{0,64}){0,16}");
    else { serr(c, "format", path, "unsupported format '%s' (supported: date, time, date-time, email, uuid, ipv4, uri)", f); return -1; }
    grammar__str_puts(b, " \"\\\"\"");
    return 0;
}

static int get_count(sctx *c, json_t *s, const char *kw, const char *path, int64_t *v) {
    json_t *x = json_object_get(s, kw);
    if (!x) return 0;
    if (!json_is_integer(x) && !(json_is_real(x) && floor(json_real_value(x)) == json_real_value(x))) {
        serr(c, kw, path, "must be a non-negative integer");
        return -1;
    }
    double d = json_number_value(x);
    if (d < 0 || d > 1e9) { serr(c, kw, path, "must be a non-negative integer"); return -1; }
    *v = (int64_t)d;
    return 1;
}

static int gen_string(sctx *c, json_t *s, const char *path, gstr *b) {
    int64_t mn = 0, mx = -1;
    int hmin = get_count(c, s, "minLength", path, &mn), hmax = get_count(c, s, "maxLength", path, &mx);
    if (hmin < 0 || hmax < 0) return -1;
    json_t *fmt = json_object_get(s, "format"), *pat = json_object_get(s, "pattern");
    if (fmt) {
        if (!json_is_string(fmt)) { serr(c, "format", path, "must be a string"); return -1; }
        if (hmin || hmax || pat) { serr(c, "format", path, "format combined with minLength/maxLength/pattern is not supported"); return -1; }
        return gen_format(c, json_string_value(fmt), path, b);
    }
    if (pat) {
        if (!json_is_string(pat)) { serr(c, "pattern", path, "must be a string"); return -1; }
        if (hmin || hmax) { serr(c, "pattern", path, "pattern combined with minLength/maxLength is not supported"); return -1; }
        char e[200];
        grammar__str_puts(b, "\"\\\"\" ");
        if (grammar__regex_to_gbnf(json_string_value(pat), json_string_length(pat), b, e, sizeof e)) {
            serr(c, "pattern", path, "%s", e);
            return -1;
        }
        grammar__str_puts(b, " \"\\\"\"");
        return 0;
    }
    if (hmax && mx < mn) { serr(c, "maxLength", path, "maxLength %lld below minLength %lld: unsatisfiable", (long long)mx, (long long)mn); return -1; }
    if (mn > MAX_LEN_BOUND || mx > MAX_LEN_BOUND) {
        serr(c, mn > MAX_LEN_BOUND ? "minLength" : "maxLength", path, "over %d cannot be enforced", MAX_LEN_BOUND);
        return -1;
    }
    if (!hmin && !hmax) { grammar__str_puts(b, "jstr"); return 0; }
    if (hmax) grammar__str_printf(b, "\"\\\"\" " JCHAR "{%lld,%lld} \"\\\"\"", (long long)mn, (long long)mx);
    else grammar__str_printf(b, "\"\\\"\" " JCHAR "{%lld,} \"\\\"\"", (long long)mn);
    return 0;
}

/* ---- integers and numbers ---- */

static void u64_str(uint64_t v, char *s) { sprintf(s, "%llu", (unsigned long long)v); }

/* Equal-length decimal strings x <= y. */
static void same_len(gstr *b, const char *x, const char *y, int n) {
    if (n == 0) return;
    if (!memcmp(x, y, (size_t)n)) { grammar__str_literal(b, x, (size_t)n); return; }
    if (n == 1) { grammar__str_printf(b, "[%c-%c]", x[0], y[0]); return; }
    if (x[0] == y[0]) {
        grammar__str_printf(b, "\"%c\" ", x[0]);
        same_len(b, x + 1, y + 1, n - 1);
        return;
    }
    char nines[24], zeros[24];
    memset(nines, '9', sizeof nines);
    memset(zeros, '0', sizeof zeros);
    int x0 = !memcmp(x + 1, zeros, (size_t)n - 1), y9 = !memcmp(y + 1, nines, (size_t)n - 1);
    char lo = x0 ? x[0] : (char)(x[0] + 1), hi = y9 ? y[0] : (char)(y[0] - 1);
    int alts = 0;
    grammar__str_puts(b, "(");
    if (!x0) { grammar__str_printf(b, "\"%c\" ", x[0]); same_len(b, x + 1, nines, n - 1); alts++; }
    if (lo <= hi) { grammar__str_printf(b, "%s[%c-%c] [0-9]{%d}", alts++ ? " | " : "", lo, hi, n - 1); }
    if (!y9) { grammar__str_printf(b, "%s\"%c\" ", alts++ ? " | " : "", y[0]); same_len(b, zeros, y + 1, n - 1); }
    grammar__str_puts(b, ")");
}

/* Non-negative integers in [a, b] (inf: no upper bound), as an alternation. */
static void nat_range(gstr *b, uint64_t a, int inf, uint64_t hi) {
    char sa[24], sb[24];
    u64_str(a, sa);
    int la = (int)strlen(sa), lb = 19;
    if (!inf) { u64_str(hi, sb); lb = (int)strlen(sb); }
    grammar__str_puts(b, "(");
    int alts = 0;
    for (int L = la; L <= lb && L <= (inf ? la : lb); L++) {
        char lo_s[24], hi_s[24];
        if (L == la) memcpy(lo_s, sa, (size_t)L + 1);
        else { lo_s[0] = '1'; memset(lo_s + 1, '0', (size_t)L - 1); lo_s[L] = 0; }
        if (!inf && L == lb) memcpy(hi_s, sb, (size_t)L + 1);
        else { memset(hi_s, '9', (size_t)L); hi_s[L] = 0; }
        if (alts++) grammar__str_puts(b, " | ");
        same_len(b, lo_s, hi_s, L);
    }
    if (inf) grammar__str_printf(b, "%s[1-9] [0-9]{%d} [0-9]*", alts++ ? " | " : "", la);
    grammar__str_puts(b, ")");
}

void grammar__int_range(gstr *out, int has_lo, int64_t lo, int has_hi, int64_t hi) {
    int alts = 0;
    grammar__str_puts(out, "(");
    if (!has_lo || lo < 0) { /* negative part: magnitudes [c, d] */
        uint64_t cmag = has_hi && hi < 0 ? (uint64_t)(-(hi + 1)) + 1 : 1;
        grammar__str_puts(out, "\"-\" ");
        if (has_lo) nat_range(out, cmag, 0, (uint64_t)(-(lo + 1)) + 1);
        else nat_range(out, cmag, 1, 0);
        alts++;
    }
    if (!has_hi || hi >= 0) {
        uint64_t a = has_lo && lo > 0 ? (uint64_t)lo : 0;
        if (alts++) grammar__str_puts(out, " | ");
        nat_range(out, a, !has_hi, has_hi ? (uint64_t)hi : 0);
    }
    grammar__str_puts(out, ")");
}

/* Non-negative decimals x with L (<)= x (<)= H; appends alternatives
 * (prefix pre before each); returns how many. */
static int dec_part(gstr *b, const char *pre, int alts, uint64_t L, int exL, int hasH, uint64_t H, int exH) {
    const char *anyf = "(\".\" [0-9]+)?", *nzf = "\".\" [0-9]* [1-9] [0-9]*", *zf = "(\".\" \"0\"+)?";
    int n = 0;
    uint64_t a = L + (exL ? 1 : 0);
    if (!hasH || (H >= 1 && a <= H - 1)) {
        grammar__str_printf(b, "%s%s", alts + n++ ? " | " : "", pre);
        nat_range(b, a, !hasH, hasH ? H - 1 : 0);
        grammar__str_printf(b, " %s", anyf);
    }
    if (exL && (!hasH || L < H)) {
        grammar__str_printf(b, "%s%s", alts + n++ ? " | " : "", pre);
        nat_range(b, L, 0, L);
        grammar__str_printf(b, " %s", nzf);
    }
    if (hasH && !exH && (H > L || !exL)) {
        grammar__str_printf(b, "%s%s", alts + n++ ? " | " : "", pre);
        nat_range(b, H, 0, H);
        grammar__str_printf(b, " %s", zf);
    }
    return n;
}

typedef struct bound { int has, excl; double v; const char *kw; } bound;

static int get_bounds(sctx *c, json_t *s, const char *path, bound *lo, bound *hi) {
    memset(lo, 0, sizeof *lo);
    memset(hi, 0, sizeof *hi);
    static const char *const kws[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
    for (int i = 0; i < 4; i++) {
        json_t *x = json_object_get(s, kws[i]);
        if (!x) continue;
        if (!json_is_number(x)) { serr(c, kws[i], path, "must be a number (draft 2020-12)"); return -1; }
        double v = json_number_value(x);
        if (!(fabs(v) < 1e18)) { serr(c, kws[i], path, "bound %g is too large to enforce", v); return -1; }
        bound *bd = i < 2 ? lo : hi;
        int excl = i == 1 || i == 3;
        int tighter = !bd->has || (i < 2 ? (v > bd->v || (v == bd->v && excl)) : (v < bd->v || (v == bd->v && excl)));
        if (tighter) { bd->has = 1; bd->v = v; bd->excl = excl; bd->kw = kws[i]; }
    }
    return 0;
}

static int gen_integer(sctx *c, json_t *s, const char *path, gstr *b) {
    bound lo, hi;
    if (get_bounds(c, s, path, &lo, &hi)) return -1;
    if (!lo.has && !hi.has) { grammar__str_puts(b, "jint"); return 0; }
    int64_t l = 0, h = 0;
    if (lo.has) l = lo.excl ? (int64_t)floor(lo.v) + 1 : (int64_t)ceil(lo.v);
    if (hi.has) h = hi.excl ? (int64_t)ceil(hi.v) - 1 : (int64_t)floor(hi.v);
    if (lo.has && hi.has && l > h) { serr(c, hi.kw, path, "no integer satisfies the bounds: unsatisfiable"); return -1; }
    grammar__int_range(b, lo.has, l, hi.has, h);
    return 0;
}

static int gen_number(sctx *c, json_t *s, const char *path, gstr *b) {
    bound lo, hi;
    if (get_bounds(c, s, path, &lo, &hi)) return -1;
    if (!lo.has && !hi.has) { grammar__str_puts(b, "jnum"); return 0; }
    if (lo.has && floor(lo.v) != lo.v) { serr(c, lo.kw, path, "non-integral bounds on numbers cannot be enforced (use an integral bound or type integer)"); return -1; }
    if (hi.has && floor(hi.v) != hi.v) { serr(c, hi.kw, path, "non-integral bounds on numbers cannot be enforced (use an integral bound or type integer)"); return -1; }
    if (lo.has && hi.has && (lo.v > hi.v || (lo.v == hi.v && (lo.excl || hi.excl)))) { serr(c, hi.kw, path, "no number satisfies the bounds: unsatisfiable"); return -1; }
    int alts = 0;
    grammar__str_puts(b, "(");
    if (!lo.has || lo.v < 0) { /* x < 0: m = -x */
        uint64_t L = 0; int exL = 1;
        if (hi.has && hi.v < 0) { L = (uint64_t)(-hi.v); exL = hi.excl; }
        if (hi.has && hi.v < 0 && !exL && L == 0) exL = 1;
        alts += dec_part(b, "\"-\" ", alts, L, exL, lo.has, lo.has ? (uint64_t)(-lo.v) : 0, lo.excl);
    }
    if (!hi.has || hi.v > 0 || (hi.v == 0 && !hi.excl)) {
        uint64_t L = lo.has && lo.v >= 0 ? (uint64_t)lo.v : 0;
        int exL = lo.has && lo.v >= 0 ? lo.excl : 0;
        alts += dec_part(b, "", alts, L, exL, hi.has, hi.has ? (uint64_t)hi.v : 0, hi.excl);
    }
    grammar__str_puts(b, ")");
    if (!alts) { serr(c, hi.kw ? hi.kw : "minimum", path, "no number satisfies the bounds: unsatisfiable"); return -1; }
    return 0;
}

/* ---- objects ---- */

/* Keys made of printable ASCII (no escapes) that differ from every word in
 * words[0..n): one rule per trie node of the words. */
static void gen_key_not_in(sctx *c, const char **words, int n, size_t depth, const char *name) {
    gstr body = {0};
    int word_end = 0, nk = 0, alts = 0;
    char kids[128];
    for (int i = 0; i < n; i++) {
        size_t l = strlen(words[i]);
        if (l == depth) word_end = 1;
        else if (!memchr(kids, words[i][depth], (size_t)nk) && nk < 128) kids[nk++] = words[i][depth];
    }
    if (!word_end) { grammar__str_puts(&body, "\"\""); alts++; }
    /* a character no word continues with, then anything */
    gstr cls = {0};
    for (int ch = 0x20; ch < 0x7F; ch++)
        if (ch != '"' && ch != '\\' && !memchr(kids, ch, (size_t)nk)) grammar__str_printf(&cls, "\\x%02X", ch);
    if (cls.n) grammar__str_printf(&body, "%s[%s] [ !#-[\\]-~]*", alts++ ? " | " : "", cls.s);
    free(cls.s);
    for (int k = 0; k < nk; k++) {
        const char **sub = malloc((size_t)n * sizeof *sub);
        int ns = 0;
        for (int i = 0; sub && i < n; i++)
            if (strlen(words[i]) > depth && words[i][depth] == kids[k]) sub[ns++] = words[i];
        char cname[24];
        new_name(c, cname);
        gen_key_not_in(c, sub, ns, depth + 1, cname);
        free(sub);
        grammar__str_printf(&body, "%s\"\\x%02X\" %s", alts++ ? " | " : "", (unsigned char)kids[k], cname);
    }
    emit_rule(c, name, &body);
    free(body.s);
}

static void lit_key(gstr *b, const char *k) {
    json_t *s = json_string(k);
    char *d = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    if (d) grammar__str_literal(b, d, strlen(d));
    else b->oom = 1;
    free(d);
    json_decref(s);
}

static int gen_object(sctx *c, json_t *s, const char *path, gstr *b) {
    json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    json_t *addl = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props)) { serr(c, "properties", path, "must be an object"); return -1; }
    if (req && !json_is_array(req)) { serr(c, "required", path, "must be an array of strings"); return -1; }
    const char *W = c->W;
    /* property list: declared ones, then required names not declared */
    size_t np = json_object_size(props) + json_array_size(req);
    const char **keys = calloc(np + 1, sizeof *keys);
    char (*vrule)[24] = calloc(np + 1, sizeof *vrule);
    char *isreq = calloc(np + 1, 1);
    int rc = -1;
    if (!keys || !vrule || !isreq) { serr(c, "properties", path, "out of memory"); goto out; }
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(props, k, v) {
        char sub[512];
        snprintf(sub, sizeof sub, "%s/properties/%s", path, k);
        keys[n] = k;
        if (gen(c, v, sub, vrule[n])) goto out;
        n++;
    }
    size_t i;
    json_array_foreach(req, i, v) {
        if (!json_is_string(v)) { serr(c, "required", path, "must be an array of strings"); goto out; }
        const char *rk = json_string_value(v);
        size_t j;
        for (j = 0; j < n; j++) if (!strcmp(keys[j], rk)) break;
        if (j == n) {
            if (json_is_false(addl) || !addl) {
                serr(c, "required", path, "'%s' is required but not in properties (and additionalProperties is not allowed): unsatisfiable", rk);
                goto out;
            }
            keys[n] = rk;
            strcpy(vrule[n], "jval");
            if (json_is_object(addl)) { char sub[512]; snprintf(sub, sizeof sub, "%s/additionalProperties", path); if (gen(c, addl, sub, vrule[n])) goto out; }
            n++;
        }
        isreq[j] = 1;
    }
    /* extra properties */
    char extra[24] = "";
    if (addl && !json_is_false(addl)) {
        char vr[24] = "jval", kr[24];
        if (!json_is_true(addl)) {
            if (!json_is_object(addl)) { serr(c, "additionalProperties", path, "must be a boolean or a schema"); goto out; }
            char sub[512];
            snprintf(sub, sizeof sub, "%s/additionalProperties", path);
            if (gen(c, addl, sub, vr)) goto out;
        }
        new_name(c, kr);
        if (n) {
            const char **ascii = calloc(n, sizeof *ascii);
            int na = 0;
            for (size_t j = 0; j < n && ascii; j++) {
                int ok = strlen(keys[j]) <= 256; /* bounds the recursion of gen_key_not_in */
                if (!ok) {
                    serr(c, "additionalProperties", path, "extra properties next to property names over 256 bytes are not supported");
                    free(ascii);
                    goto out;
                }
                for (const char *q = keys[j]; *q; q++) ok &= *q >= 0x20 && *q < 0x7F && *q != '"' && *q != '\\';
                if (ok) ascii[na++] = keys[j];
            }
            gstr kb = {0};
            char inner[24];
            new_name(c, inner);
            gen_key_not_in(c, ascii ? ascii : keys, ascii ? na : 0, 0, inner);
            free(ascii);
            grammar__str_printf(&kb, "\"\\\"\" %s \"\\\"\"", inner);
            emit_rule(c, kr, &kb);
            free(kb.s);
        } else strcpy(kr, "jstr");
        new_name(c, extra);
        gstr eb = {0};
        grammar__str_printf(&eb, "%s%s\":\"%s%s", kr, W, W, vr);
        emit_rule(c, extra, &eb);
        free(eb.s);
    }
    /* rest_i: properties i.. remain, at least one emitted (comma first) */
    char (*rest)[24] = calloc(n + 1, sizeof *rest);
    if (!rest) { serr(c, "properties", path, "out of memory"); goto out; }
    for (size_t r = 0; r <= n; r++) new_name(c, rest[r]);
    for (size_t r = 0; r <= n; r++) {
        gstr rb = {0};
        int alts = 0;
        size_t j;
        for (j = r; j < n; j++) {
            grammar__str_printf(&rb, "%s%s\",\"%s", alts++ ? " | " : "", W, W);
            lit_key(&rb, keys[j]);
            grammar__str_printf(&rb, "%s\":\"%s%s %s", W, W, vrule[j], rest[j + 1]);
            if (isreq[j]) break;
        }
        if (j >= n) {
            if (extra[0]) grammar__str_printf(&rb, "%s(%s\",\"%s%s)*", alts++ ? " | " : "", W, W, extra);
            else grammar__str_printf(&rb, "%s\"\"", alts++ ? " | " : "");
        }
        emit_rule(c, rest[r], &rb);
        free(rb.s);
    }
    grammar__str_printf(b, "\"{\"%s(", W);
    int alts = 0;
    size_t j;
    for (j = 0; j < n; j++) {
        if (alts++) grammar__str_puts(b, " | ");
        lit_key(b, keys[j]);
        grammar__str_printf(b, "%s\":\"%s%s %s", W, W, vrule[j], rest[j + 1]);
        if (isreq[j]) break;
    }
    if (j >= n) {
        if (extra[0]) grammar__str_printf(b, "%s%s(%s\",\"%s%s)*", alts++ ? " | " : "", extra, W, W, extra);
        grammar__str_printf(b, "%s\"\"", alts++ ? " | " : "");
    }
    grammar__str_printf(b, ")%s\"}\"", W);
    free(rest);
    rc = 0;
out:
    free(keys); free(vrule); free(isreq);
    return rc;
}

/* ---- arrays ---- */

static int gen_array(sctx *c, json_t *s, const char *path, gstr *b) {
    json_t *items = json_object_get(s, "items"), *pre = json_object_get(s, "prefixItems");
    if (pre && !json_is_array(pre)) { serr(c, "prefixItems", path, "must be an array of schemas"); return -1; }
    if (items && json_is_array(items)) { serr(c, "items", path, "an array of schemas is draft-07 tuple syntax: use prefixItems"); return -1; }
    int64_t mn = 0, mx = -1;
    int hmin = get_count(c, s, "minItems", path, &mn), hmax = get_count(c, s, "maxItems", path, &mx);
    if (hmin < 0 || hmax < 0) return -1;
    int64_t P = (int64_t)json_array_size(pre);
    if (json_is_false(items)) { if (!hmax || mx > P) { mx = P; hmax = 1; } }
    if (hmax && mx < mn) { serr(c, json_is_false(items) ? "items" : "maxItems", path, "at most %lld items but at least %lld required: unsatisfiable", (long long)mx, (long long)mn); return -1; }
    if (mn > MAX_LEN_BOUND || (P > MAX_LEN_BOUND)) { serr(c, "minItems", path, "over %d cannot be enforced", MAX_LEN_BOUND); return -1; }
    if (hmax && mx > MAX_LEN_BOUND) { serr(c, "maxItems", path, "over %d cannot be enforced", MAX_LEN_BOUND); return -1; }
    char it[24] = "jval";
    if (items && !json_is_false(items)) {
        char sub[512];
        snprintf(sub, sizeof sub, "%s/items", path);
        if (gen(c, items, sub, it)) return -1;
    }
    int64_t explicit_n = P > mn ? P : mn;
    if (hmax && explicit_n > mx) explicit_n = mx;
    char (*pr)[24] = calloc((size_t)(explicit_n + 1), sizeof *pr);
    char (*tail)[24] = calloc((size_t)(explicit_n + 2), sizeof *tail);
    if (!pr || !tail) { free(pr); free(tail); serr(c, "items", path, "out of memory"); return -1; }
    for (int64_t k = 0; k < explicit_n; k++) {
        if (k < P) {
            char sub[512];
            snprintf(sub, sizeof sub, "%s/prefixItems/%lld", path, (long long)k);
            if (gen(c, json_array_get(pre, (size_t)k), sub, pr[k])) { free(pr); free(tail); return -1; }
        } else strcpy(pr[k], it);
    }
    const char *W = c->W;
    /* tail_k: k items emitted, k >= 1 */
    for (int64_t k = 1; k <= explicit_n; k++) new_name(c, tail[k]);
    for (int64_t k = 1; k <= explicit_n; k++) {
        gstr tb = {0};
        if (k < explicit_n) {
            grammar__str_printf(&tb, "%s\",\"%s%s %s", W, W, pr[k], tail[k + 1]);
            if (k >= mn) grammar__str_puts(&tb, " | \"\"");
        } else if (hmax && k >= mx) {
            grammar__str_puts(&tb, "\"\"");
        } else if (items && json_is_false(items)) {
            grammar__str_puts(&tb, "\"\"");
        } else if (hmax) {
            grammar__str_printf(&tb, "(%s\",\"%s%s){0,%lld}", W, W, it, (long long)(mx - k));
        } else {
            grammar__str_printf(&tb, "(%s\",\"%s%s)*", W, W, it);
        }
        emit_rule(c, tail[k], &tb);
        free(tb.s);
    }
    grammar__str_printf(b, "\"[\"%s", W);
    if (hmax && mx == 0) {
        /* nothing */
    } else if (explicit_n >= 1) {
        grammar__str_printf(b, "(%s %s)%s", pr[0], tail[1], mn >= 1 ? "" : "?");
    } else if (items && json_is_false(items)) {
        /* no items allowed */
    } else if (hmax) {
        grammar__str_printf(b, "(%s (%s\",\"%s%s){0,%lld})?", it, W, W, it, (long long)(mx - 1));
    } else {
        grammar__str_printf(b, "(%s (%s\",\"%s%s)*)?", it, W, W, it);
    }
    grammar__str_printf(b, "%s\"]\"", W);
    free(pr);
    free(tail);
    return 0;
}

/* ---- dispatch ---- */

static int has_any(json_t *s, const char *const *kws) {
    for (; *kws; kws++) if (json_object_get(s, *kws)) return 1;
    return 0;
}

static int gen_types(sctx *c, json_t *s, const char *path, gstr *b) {
    static const char *const okw[] = {"properties", "required", "additionalProperties", NULL};
    static const char *const akw[] = {"items", "prefixItems", "minItems", "maxItems", NULL};
    static const char *const skw[] = {"minLength", "maxLength", "pattern", "format", NULL};
    static const char *const nkw[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", NULL};
    json_t *type = json_object_get(s, "type");
    const char *types[8];
    int nt = 0;
    if (type) {
        json_t *a = as_type_array(type);
        size_t i;
        json_t *x;
        json_array_foreach(a, i, x) {
            const char *t = json_string_value(x);
            static const char *const known[] = {"null", "boolean", "object", "array", "string", "number", "integer", NULL};
            int ok = 0;
            for (int k = 0; t && known[k]; k++) if (!strcmp(t, known[k])) { t = known[k]; ok = 1; }
            if (!ok) { json_decref(a); serr(c, "type", path, "unknown type"); return -1; }
            if (nt < 8) types[nt++] = t;
        }
        json_decref(a);
        if (nt == 0) { serr(c, "type", path, "empty type list: unsatisfiable"); return -1; }
    } else {
        if (has_any(s, okw)) types[nt++] = "object";
        if (has_any(s, akw)) types[nt++] = "array";
        if (has_any(s, skw)) types[nt++] = "string";
        if (has_any(s, nkw)) types[nt++] = "number";
        if (!nt) { grammar__str_puts(b, "jval"); return 0; }
    }
    int has_number = 0;
    for (int i = 0; i < nt; i++) has_number |= !strcmp(types[i], "number");
    int alts = 0;
    for (int i = 0; i < nt; i++) {
        const char *t = types[i];
        if (!strcmp(t, "integer") && has_number) continue;
        if (alts++) grammar__str_puts(b, " | ");
        int rc = 0;
        if (!strcmp(t, "null")) grammar__str_puts(b, "\"null\"");
        else if (!strcmp(t, "boolean")) grammar__str_puts(b, "(\"true\" | \"false\")");
        else if (!strcmp(t, "object")) rc = gen_object(c, s, path, b);
        else if (!strcmp(t, "array")) rc = gen_array(c, s, path, b);
        else if (!strcmp(t, "string")) rc = gen_string(c, s, path, b);
        else if (!strcmp(t, "number")) rc = gen_number(c, s, path, b);
        else rc = gen_integer(c, s, path, b);
        if (rc) return -1;
    }
    return 0;
}

static int gen_body(sctx *c, json_t *s, const char *path, gstr *b) {
    if (json_is_true(s)) { grammar__str_puts(b, "jval"); return 0; }
    if (json_is_false(s)) { serr(c, "false", path, "the schema false matches nothing: unsatisfiable"); return -1; }
    if (!json_is_object(s)) { serr(c, "(schema)", path, "a schema must be an object or a boolean"); return -1; }
    const char *k;
    json_t *v;
    json_object_foreach(s, k, v)
        if (!in_list(k, annotations) && !in_list(k, supported)) {
            serr(c, k, path, "unsupported keyword");
            return -1;
        }
    json_t *ref = json_object_get(s, "$ref"), *all = json_object_get(s, "allOf");
    json_t *any = json_object_get(s, "anyOf"), *one = json_object_get(s, "oneOf");
    if (ref && !json_is_string(ref)) { serr(c, "$ref", path, "must be a string"); return -1; }
    /* siblings other than annotations and $ref */
    int n_other = 0;
    json_object_foreach(s, k, v) if (!in_list(k, annotations) && strcmp(k, "$ref")) n_other++;
    if (ref && n_other == 0) {
        char nm[24];
        if (gen_ref(c, json_string_value(ref), path, nm)) return -1;
        grammar__str_puts(b, nm);
        return 0;
    }
    if (ref || all) {
        /* $ref with siblings and allOf: merge everything into one schema */
        json_t *m = json_deep_copy(s);
        json_object_del(m, "$ref");
        json_object_del(m, "allOf");
        if (ref) {
            json_t *t = resolve_ref(c, json_string_value(ref), path);
            json_t *d = t ? deref(c, t, path) : NULL;
            json_t *mm = d ? merge(c, m, d, path) : NULL;
            json_decref(m);
            if (!mm) return -1;
            m = mm;
        }
        if (all) {
            if (!json_is_array(all) || json_array_size(all) == 0) { json_decref(m); serr(c, "allOf", path, "must be a non-empty array of schemas"); return -1; }
            size_t i;
            json_array_foreach(all, i, v) {
                json_t *d = deref(c, v, path);
                json_t *mm = d ? merge(c, m, d, path) : NULL;
                json_decref(m);
                if (!mm) return -1;
                m = mm;
            }
        }
        if (++c->depth > MAX_DEPTH) { json_decref(m); serr(c, "allOf", path, "nesting deeper than %d", MAX_DEPTH); return -1; }
        int rc = gen_body(c, m, path, b);
        c->depth--;
        json_decref(m);
        return rc;
    }
    if (any || one) {
        if (any && one) { serr(c, "oneOf", path, "anyOf and oneOf together are not supported"); return -1; }
        json_t *alts = any ? any : one;
        const char *kw = any ? "anyOf" : "oneOf";
        if (!json_is_array(alts) || json_array_size(alts) == 0) { serr(c, kw, path, "must be a non-empty array of schemas"); return -1; }
        json_t *rest = json_deep_copy(s);
        json_object_del(rest, kw);
        int plain = n_other == 1;
        grammar__str_puts(b, "(");
        size_t i;
        json_array_foreach(alts, i, v) {
            char sub[512], nm[24];
            snprintf(sub, sizeof sub, "%s/%s/%zu", path, kw, i);
            int rc;
            if (plain) rc = gen(c, v, sub, nm);
            else {
                json_t *d = deref(c, v, sub);
                json_t *mm = d ? merge(c, rest, d, sub) : NULL;
                rc = mm ? gen(c, mm, sub, nm) : -1;
                json_decref(mm);
            }
            if (rc) { json_decref(rest); return -1; }
            grammar__str_printf(b, "%s%s", i ? " | " : "", nm);
        }
        grammar__str_puts(b, ")");
        json_decref(rest);
        return 0;
    }
    json_t *en = json_object_get(s, "enum"), *cn = json_object_get(s, "const");
    if (en || cn) {
        if (en && !json_is_array(en)) { serr(c, "enum", path, "must be an array"); return -1; }
        json_t *type = json_object_get(s, "type");
        int alts = 0;
        grammar__str_puts(b, "(");
        if (cn) {
            int in_enum = !en;
            for (size_t i = 0; en && i < json_array_size(en); i++) in_enum |= json_equal(json_array_get(en, i), cn);
            if (in_enum && type_allows(type, json_type_of(cn))) { lit_value(c, b, cn); alts++; }
        } else {
            size_t i;
            json_array_foreach(en, i, v) {
                if (!type_allows(type, json_type_of(v))) continue;
                if (alts++) grammar__str_puts(b, " | ");
                lit_value(c, b, v);
            }
        }
        grammar__str_puts(b, ")");
        if (!alts) { serr(c, cn ? "const" : "enum", path, "no allowed value (empty, or none of the given type): unsatisfiable"); return -1; }
        return 0;
    }
    return gen_types(c, s, path, b);
}

static int gen(sctx *c, json_t *s, const char *path, char name[24]) {
    if (c->failed) return -1;
    if (++c->depth > MAX_DEPTH) { serr(c, "(schema)", path, "nesting deeper than %d", MAX_DEPTH); return -1; }
    gstr body = {0};
    int rc = gen_body(c, s, path, &body);
    c->depth--;
    if (rc == 0) {
        new_name(c, name);
        emit_rule(c, name, &body);
    }
    free(body.s);
    return rc;
}

static void emit_prims(sctx *c) {
    const char *W = c->W;
    if (c->ws) grammar__str_printf(&c->out, "ws ::= [ \\t\\n]{0,%d}\n", c->ws);
    grammar__str_puts(&c->out, "jstr ::= \"\\\"\" " JCHAR "* \"\\\"\"\n");
    grammar__str_puts(&c->out, "jnum ::= \"-\"? (\"0\" | [1-9] [0-9]*) (\".\" [0-9]+)? ([eE] [-+]? [0-9]+)?\n");
    grammar__str_puts(&c->out, "jint ::= \"-\"? (\"0\" | [1-9] [0-9]*)\n");
    grammar__str_puts(&c->out, "jval ::= jobj | jarr | jstr | jnum | \"true\" | \"false\" | \"null\"\n");
    grammar__str_printf(&c->out, "jobj ::= \"{\"%s(jstr%s\":\"%sjval (%s\",\"%sjstr%s\":\"%sjval)*)?%s\"}\"\n", W, W, W, W, W, W, W, W);
    grammar__str_printf(&c->out, "jarr ::= \"[\"%s(jval (%s\",\"%sjval)*)?%s\"]\"\n", W, W, W, W);
}

static char *schema_to_gbnf(json_t *schema, const grammar_options *opt, int json_object_mode, char *err, size_t errlen) {
    sctx c;
    memset(&c, 0, sizeof c);
    c.root = schema;
    c.ws = opt && opt->ws_max > 0 ? (opt->ws_max > 64 ? 64 : opt->ws_max) : 0;
    c.W = c.ws ? " ws " : " ";
    c.err = err;
    c.errlen = errlen;
    if (errlen) err[0] = 0;
    char nm[24];
    if (json_object_mode) {
        grammar__str_puts(&c.out, "root ::= jobj\n");
    } else {
        if (gen(&c, schema, "", nm)) goto fail;
        grammar__str_printf(&c.out, "root ::= %s\n", nm);
    }
    emit_prims(&c);
    if (c.out.oom) { if (errlen) snprintf(err, errlen, "out of memory"); goto fail; }
    for (int i = 0; i < c.n_refs; i++) free(c.refs[i].ref);
    free(c.refs);
    return c.out.s;
fail:
    for (int i = 0; i < c.n_refs; i++) free(c.refs[i].ref);
    free(c.refs);
    free(c.out.s);
    return NULL;
}

static int compile_text(char *gbnf, grammar **out, char *err, size_t errlen) {
    if (!gbnf) return GRAMMAR_ERR_SCHEMA;
    char e2[256];
    int rc = grammar__parse_gbnf(gbnf, strlen(gbnf), out, e2, sizeof e2);
    if (rc && errlen) snprintf(err, errlen, "schema cannot be compiled: %s", e2);
    free(gbnf);
    return rc ? (rc == GRAMMAR_ERR_SYNTAX ? GRAMMAR_ERR_SCHEMA : rc) : 0;
}

int grammar_compile_schema_value(const json_t *schema, const grammar_options *opt, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    return compile_text(schema_to_gbnf((json_t *)schema, opt, 0, err, errlen), out, err, errlen);
}

static json_t *parse_json(const char *json, size_t len, char *err, size_t errlen) {
    json_error_t je;
    json_t *s = json_loadb(json, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!s && errlen) snprintf(err, errlen, "schema is not valid JSON: %s (line %d col %d)", je.text, je.line, je.column);
    return s;
}

int grammar_compile_schema(const char *json, size_t len, const grammar_options *opt, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    json_t *s = parse_json(json, len, err, errlen);
    if (!s) return GRAMMAR_ERR_SYNTAX;
    int rc = grammar_compile_schema_value(s, opt, out, err, errlen);
    json_decref(s);
    return rc;
}

char *grammar_schema_to_gbnf(const char *json, size_t len, const grammar_options *opt, char *err, size_t errlen) {
    json_t *s = parse_json(json, len, err, errlen);
    if (!s) return NULL;
    char *r = schema_to_gbnf(s, opt, 0, err, errlen);
    json_decref(s);
    return r;
}

int grammar_compile_json_object(const grammar_options *opt, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    return compile_text(schema_to_gbnf(NULL, opt, 1, err, errlen), out, err, errlen);
}
