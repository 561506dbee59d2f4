/* gbnf.c -- llama.cpp's GBNF grammar format -> the flattened rule automaton.
 *
 * Accepted syntax: `name ::= alternatives` rules (newline-terminated at top
 * level; newlines are free inside parentheses and after `::=` and `|`),
 * `|` alternatives, sequences, "literals" and [classes] / [^negated] with
 * escapes (\n \r \t \\ \" \[ \] \- \^ \/ \xHH \uHHHH \UHHHHHHHH), `.` (any
 * character), ( groups ), rule references, postfix * + ? {m} {m,} {m,n},
 * and # comments. Characters are Unicode code points: classes become
 * alternatives of UTF-8 byte-range sequences so the automaton runs on bytes.
 * The start rule is `root`. Errors carry line:column. */
#include "grammar_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REP_MAX 10000 /* largest m or n in {m,n} */

typedef struct brule {
    char *name;
    gelem *body; int32_t n, cap;
    int defined;
    size_t first_ref; /* offset of the first reference (undefined-rule errors) */
    int32_t n_sub;    /* generated sub-rules so far (naming) */
} brule;

typedef struct cls_cache { uint64_t hash; int32_t rule; } cls_cache;

typedef struct parser {
    const char *src, *p, *end;
    brule *rules; int32_t n_rules, cap_rules;
    gbyteset *sets; int32_t n_sets, cap_sets;
    int64_t total;
    cls_cache *cls; int32_t n_cls, cap_cls;
    int32_t any_rule;
    int depth; /* parenthesis nesting */
    char *err; size_t errlen;
    int failed;
} parser;

static void perr(parser *ps, const char *at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void perr(parser *ps, const char *at, const char *fmt, ...) {
    if (ps->failed) return;
    ps->failed = 1;
    int line = 1, col = 1;
    for (const char *q = ps->src; q < at && q < ps->end; q++) {
        if (*q == '\n') { line++; col = 1; } else col++;
    }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ps->errlen) snprintf(ps->err, ps->errlen, "grammar line %d col %d: %s", line, col, msg);
}

static void *grow(void *p, int32_t *cap, int32_t need, size_t elem) {
    if (need <= *cap) return p;
    int32_t nc = *cap ? *cap : 8;
    while (nc < need) nc *= 2;
    void *np = realloc(p, (size_t)nc * elem);
    if (!np) return NULL;
    *cap = nc;
    return np;
}

static int32_t rule_new(parser *ps, const char *name, size_t nlen) {
    if (ps->n_rules >= GRAMMAR_MAX_RULES) { perr(ps, ps->p, "too many rules (limit %d)", GRAMMAR_MAX_RULES); return -1; }
    brule *nr = grow(ps->rules, &ps->cap_rules, ps->n_rules + 1, sizeof *ps->rules);
    if (!nr) { perr(ps, ps->p, "out of memory"); return -1; }
    ps->rules = nr;
    brule *r = &ps->rules[ps->n_rules];
    memset(r, 0, sizeof *r);
    r->name = strndup(name, nlen);
    if (!r->name) { perr(ps, ps->p, "out of memory"); return -1; }
    r->first_ref = (size_t)(ps->p - ps->src);
    return ps->n_rules++;
}

static int32_t rule_find(parser *ps, const char *name, size_t nlen) {
    for (int32_t i = 0; i < ps->n_rules; i++)
        if (strlen(ps->rules[i].name) == nlen && !memcmp(ps->rules[i].name, name, nlen)) return i;
    return -1;
}

/* A generated rule named after its parent, defined. */
static int32_t rule_sub(parser *ps, int32_t parent) {
    char nm[160];
    snprintf(nm, sizeof nm, "%.120s_%d", ps->rules[parent].name, ps->rules[parent].n_sub++);
    int32_t r = rule_new(ps, nm, strlen(nm));
    if (r >= 0) ps->rules[r].defined = 1;
    return r;
}

static void emit(parser *ps, int32_t r, uint32_t kind, uint32_t arg) {
    if (ps->failed) return;
    if (++ps->total > GRAMMAR_MAX_ELEMS) { perr(ps, ps->p, "grammar too large (over %d elements)", GRAMMAR_MAX_ELEMS); return; }
    brule *b = &ps->rules[r];
    gelem *nb = grow(b->body, &b->cap, b->n + 1, sizeof *b->body);
    if (!nb) { perr(ps, ps->p, "out of memory"); return; }
    b->body = nb;
    b->body[b->n].kind = kind;
    b->body[b->n].arg = arg;
    b->n++;
}

static uint32_t set_add(parser *ps, const gbyteset *s) {
    for (int32_t i = ps->n_sets - 1; i >= 0 && i >= ps->n_sets - 64; i--)
        if (!memcmp(&ps->sets[i], s, sizeof *s)) return (uint32_t)i;
    gbyteset *ns = grow(ps->sets, &ps->cap_sets, ps->n_sets + 1, sizeof *ps->sets);
    if (!ns) { perr(ps, ps->p, "out of memory"); return 0; }
    ps->sets = ns;
    ps->sets[ps->n_sets] = *s;
    return (uint32_t)ps->n_sets++;
}

static void emit_byte(parser *ps, int32_t r, unsigned b) {
    gbyteset s = {{0, 0, 0, 0}};
    s.w[b >> 6] |= 1ull << (b & 63);
    emit(ps, r, GE_BYTES, set_add(ps, &s));
}

static int utf8_encode(uint32_t cp, unsigned char *o) {
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = (unsigned char)(0xC0 | cp >> 6); o[1] = (unsigned char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12); o[1] = (unsigned char)(0x80 | ((cp >> 6) & 63));
        o[2] = (unsigned char)(0x80 | (cp & 63)); return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18); o[1] = (unsigned char)(0x80 | ((cp >> 12) & 63));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 63)); o[3] = (unsigned char)(0x80 | (cp & 63));
    return 4;
}

/* Decode one UTF-8 character at ps->p; -1 on invalid input. */
static int64_t utf8_decode(parser *ps) {
    const unsigned char *s = (const unsigned char *)ps->p;
    size_t left = (size_t)(ps->end - ps->p);
    unsigned c = s[0];
    int l = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!l || (size_t)l > left) return -1;
    uint32_t cp = l == 1 ? c : l == 2 ? (c & 31) : l == 3 ? (c & 15) : (c & 7);
    for (int i = 1; i < l; i++) {
        if ((s[i] & 0xC0) != 0x80) return -1;
        cp = cp << 6 | (s[i] & 63);
    }
    if ((l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    ps->p += l;
    return cp;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* An escape after a backslash (ps->p points past it). -1 on error. */
static int64_t parse_escape(parser *ps) {
    if (ps->p >= ps->end) { perr(ps, ps->p, "unfinished escape"); return -1; }
    char c = *ps->p++;
    int digits = 0;
    switch (c) {
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case '\\': case '"': case '[': case ']': case '-': case '^': case '/': case '\'': case '.': return (unsigned char)c;
    case 'x': digits = 2; break;
    case 'u': digits = 4; break;
    case 'U': digits = 8; break;
    default: perr(ps, ps->p - 1, "unknown escape '\\%c'", c); return -1;
    }
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        int h = ps->p < ps->end ? hexval(*ps->p) : -1;
        if (h < 0) { perr(ps, ps->p, "escape '\\%c' needs %d hex digits", c, digits); return -1; }
        v = v * 16 + (uint32_t)h;
        ps->p++;
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) { perr(ps, ps->p, "escape is not a Unicode scalar value"); return -1; }
    return v;
}

static void skip_space(parser *ps, int newline_ok) {
    while (ps->p < ps->end) {
        char c = *ps->p;
        if (c == ' ' || c == '\t' || c == '\r') ps->p++;
        else if (c == '#') { while (ps->p < ps->end && *ps->p != '\n') ps->p++; }
        else if (c == '\n' && newline_ok) ps->p++;
        else break;
    }
}

static int is_name(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* ---- character classes -> UTF-8 byte sequences ---- */

typedef struct cprange { uint32_t lo, hi; } cprange;

static int cmp_range(const void *a, const void *b) {
    const cprange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* Sort and merge ranges; returns the new count. */
static int ranges_norm(cprange *r, int n) {
    qsort(r, (size_t)n, sizeof *r, cmp_range);
    int o = 0;
    for (int i = 0; i < n; i++) {
        if (o && r[i].lo <= r[o - 1].hi + 1) { if (r[i].hi > r[o - 1].hi) r[o - 1].hi = r[i].hi; }
        else r[o++] = r[i];
    }
    return o;
}

typedef struct seqbuf { unsigned char lo[64][4], hi[64][4]; int len[64]; int n; int overflow; } seqbuf;

/* Split [lo, hi] (no surrogates inside) into ranges whose UTF-8 encodings
 * are products of byte ranges. */
static void utf8_split(seqbuf *sb, uint32_t lo, uint32_t hi) {
    static const uint32_t lim[] = {0x7F, 0x7FF, 0xFFFF};
    for (int i = 0; i < 3; i++)
        if (lo <= lim[i] && hi > lim[i]) { utf8_split(sb, lo, lim[i]); utf8_split(sb, lim[i] + 1, hi); return; }
    unsigned char a[4], b[4];
    int n = utf8_encode(lo, a);
    for (int i = 1; i < n; i++) {
        uint32_t m = (1u << (6 * i)) - 1;
        if ((lo & ~m) != (hi & ~m)) {
            if (lo & m) { utf8_split(sb, lo, lo | m); utf8_split(sb, (lo | m) + 1, hi); return; }
            if ((hi & m) != m) { utf8_split(sb, lo, (hi & ~m) - 1); utf8_split(sb, hi & ~m, hi); return; }
        }
    }
    utf8_encode(hi, b);
    if (sb->n >= 64) { sb->overflow = 1; return; }
    for (int i = 0; i < n; i++) { sb->lo[sb->n][i] = a[i]; sb->hi[sb->n][i] = b[i]; }
    sb->len[sb->n++] = n;
}

static void set_range(gbyteset *s, unsigned lo, unsigned hi) {
    for (unsigned b = lo; b <= hi; b++) s->w[b >> 6] |= 1ull << (b & 63);
}

/* Emit a class (normalized ranges) into rule r: one BYTES element for ASCII
 * only classes, else a REF to a (cached) rule of UTF-8 alternatives. */
static void emit_class(parser *ps, int32_t r, cprange *rg, int n) {
    if (n == 0) { perr(ps, ps->p, "empty character class matches nothing"); return; }
    if (rg[n - 1].hi < 0x80) {
        gbyteset s = {{0, 0, 0, 0}};
        for (int i = 0; i < n; i++) set_range(&s, rg[i].lo, rg[i].hi);
        emit(ps, r, GE_BYTES, set_add(ps, &s));
        return;
    }
    seqbuf sb;
    sb.n = 0; sb.overflow = 0;
    gbyteset ascii = {{0, 0, 0, 0}};
    int has_ascii = 0;
    for (int i = 0; i < n; i++) {
        uint32_t lo = rg[i].lo, hi = rg[i].hi;
        if (lo < 0x80) { set_range(&ascii, lo, hi < 0x80 ? hi : 0x7F); has_ascii = 1; if (hi < 0x80) continue; lo = 0x80; }
        if (lo <= 0xDFFF && hi >= 0xD800) {
            if (lo < 0xD800) utf8_split(&sb, lo, 0xD7FF);
            if (hi > 0xDFFF) utf8_split(&sb, 0xE000, hi);
        } else utf8_split(&sb, lo, hi);
    }
    if (sb.overflow) { perr(ps, ps->p, "character class too complex"); return; }
    int32_t cr = rule_sub(ps, r);
    if (cr < 0) return;
    if (has_ascii) { emit(ps, cr, GE_BYTES, set_add(ps, &ascii)); emit(ps, cr, GE_END, 0); }
    for (int i = 0; i < sb.n; i++) {
        for (int k = 0; k < sb.len[i]; k++) {
            gbyteset s = {{0, 0, 0, 0}};
            set_range(&s, sb.lo[i][k], sb.hi[i][k]);
            emit(ps, cr, GE_BYTES, set_add(ps, &s));
        }
        emit(ps, cr, GE_END, 0);
    }
    emit(ps, r, GE_REF, (uint32_t)cr);
}

static void parse_class(parser *ps, int32_t r) {
    const char *start = ps->p;
    ps->p++; /* [ */
    int neg = 0;
    if (ps->p < ps->end && *ps->p == '^') { neg = 1; ps->p++; }
    int cap = 16, n = 0;
    cprange *rg = malloc((size_t)cap * sizeof *rg);
    if (!rg) { perr(ps, start, "out of memory"); return; }
    while (!ps->failed) {
        if (ps->p >= ps->end) { perr(ps, start, "unterminated character class"); break; }
        if (*ps->p == ']') { ps->p++; break; }
        int64_t lo, hi;
        if (*ps->p == '\\') { ps->p++; lo = parse_escape(ps); }
        else { lo = utf8_decode(ps); if (lo < 0) perr(ps, ps->p, "invalid UTF-8 in character class"); }
        if (lo < 0) break;
        hi = lo;
        if (ps->p + 1 < ps->end && *ps->p == '-' && ps->p[1] != ']') {
            ps->p++;
            if (*ps->p == '\\') { ps->p++; hi = parse_escape(ps); }
            else { hi = utf8_decode(ps); if (hi < 0) perr(ps, ps->p, "invalid UTF-8 in character class"); }
            if (hi < 0) break;
            if (hi < lo) { perr(ps, ps->p, "character range is backwards"); break; }
        }
        if (n == cap) {
            cprange *nr = realloc(rg, (size_t)(cap *= 2) * sizeof *rg);
            if (!nr) { perr(ps, start, "out of memory"); break; }
            rg = nr;
        }
        rg[n].lo = (uint32_t)lo; rg[n].hi = (uint32_t)hi; n++;
    }
    if (!ps->failed) {
        n = ranges_norm(rg, n);
        if (neg) {
            cprange *cr = malloc((size_t)(n + 1) * sizeof *cr);
            if (!cr) { perr(ps, start, "out of memory"); free(rg); return; }
            int m = 0;
            uint32_t next = 0;
            for (int i = 0; i < n; i++) {
                if (rg[i].lo > next) { cr[m].lo = next; cr[m].hi = rg[i].lo - 1; m++; }
                next = rg[i].hi + 1;
            }
            if (next <= 0x10FFFF) { cr[m].lo = next; cr[m].hi = 0x10FFFF; m++; }
            free(rg);
            rg = cr;
            n = m;
        }
        emit_class(ps, r, rg, n);
    }
    free(rg);
}

static void parse_alternates(parser *ps, int32_t r, int nested);

/* Replace the atom body[at..] of rule r by its repetition {mn, mx}
 * (mx < 0: unbounded). */
static void repeat(parser *ps, int32_t r, int32_t at, int64_t mn, int64_t mx) {
    brule *b = &ps->rules[r];
    int32_t len = b->n - at;
    if (len <= 0) return; /* repeating nothing is nothing */
    gelem *atom = malloc((size_t)len * sizeof *atom);
    if (!atom) { perr(ps, ps->p, "out of memory"); return; }
    memcpy(atom, b->body + at, (size_t)len * sizeof *atom);
    ps->rules[r].n = at;
    ps->total -= len;
    for (int64_t i = 0; i < mn && !ps->failed; i++)
        for (int32_t k = 0; k < len; k++) emit(ps, r, atom[k].kind, atom[k].arg);
    if (mx < 0) {
        int32_t s = rule_sub(ps, r);
        if (s >= 0) {
            for (int32_t k = 0; k < len; k++) emit(ps, s, atom[k].kind, atom[k].arg);
            emit(ps, s, GE_REF, (uint32_t)s);
            emit(ps, s, GE_END, 0);
            emit(ps, s, GE_END, 0);
            emit(ps, r, GE_REF, (uint32_t)s);
        }
    } else if (mx > mn) {
        /* opt_1 ::= atom | ; opt_k ::= atom opt_{k-1} | */
        int32_t prev = -1;
        for (int64_t k = 0; k < mx - mn && !ps->failed; k++) {
            int32_t s = rule_sub(ps, r);
            if (s < 0) break;
            for (int32_t j = 0; j < len; j++) emit(ps, s, atom[j].kind, atom[j].arg);
            if (prev >= 0) emit(ps, s, GE_REF, (uint32_t)prev);
            emit(ps, s, GE_END, 0);
            emit(ps, s, GE_END, 0);
            prev = s;
        }
        if (prev >= 0) emit(ps, r, GE_REF, (uint32_t)prev);
    }
    free(atom);
}

static int64_t parse_int(parser *ps) {
    int64_t v = 0;
    const char *s = ps->p;
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
        v = v * 10 + (*ps->p - '0');
        if (v > REP_MAX) { perr(ps, s, "repetition count over %d", REP_MAX); return -1; }
        ps->p++;
    }
    if (ps->p == s) { perr(ps, s, "expected a number"); return -1; }
    return v;
}

static void parse_sequence(parser *ps, int32_t r, int nested) {
    int32_t last = -1;
    while (!ps->failed && ps->p < ps->end) {
        char c = *ps->p;
        int32_t here = ps->rules[r].n;
        if (c == '"') {
            const char *start = ps->p++;
            last = here;
            for (;;) {
                if (ps->p >= ps->end || *ps->p == '\n') { perr(ps, start, "unterminated string literal"); return; }
                if (*ps->p == '"') { ps->p++; break; }
                if (*ps->p == '\\') {
                    ps->p++;
                    int64_t cp = parse_escape(ps);
                    if (cp < 0) return;
                    unsigned char u[4];
                    int l = utf8_encode((uint32_t)cp, u);
                    for (int i = 0; i < l; i++) emit_byte(ps, r, u[i]);
                } else {
                    emit_byte(ps, r, (unsigned char)*ps->p++);
                }
            }
        } else if (c == '[') {
            last = here;
            parse_class(ps, r);
        } else if (c == '.') {
            last = here;
            ps->p++;
            cprange all = {0, 0x10FFFF};
            emit_class(ps, r, &all, 1);
        } else if (c == '(') {
            last = here;
            if (ps->depth >= 256) { perr(ps, ps->p, "parentheses nested deeper than 256"); return; }
            ps->p++;
            skip_space(ps, 1);
            int32_t s = rule_sub(ps, r);
            if (s < 0) return;
            ps->depth++;
            parse_alternates(ps, s, 1);
            ps->depth--;
            if (ps->failed) return;
            if (ps->p >= ps->end || *ps->p != ')') { perr(ps, ps->p, "expected ')'"); return; }
            ps->p++;
            emit(ps, r, GE_REF, (uint32_t)s);
        } else if (is_name(c)) {
            const char *nm = ps->p;
            while (ps->p < ps->end && is_name(*ps->p)) ps->p++;
            last = here;
            int32_t ref = rule_find(ps, nm, (size_t)(ps->p - nm));
            if (ref < 0) {
                const char *save = ps->p;
                ps->p = nm;
                ref = rule_new(ps, nm, (size_t)(save - nm));
                ps->p = save;
                if (ref < 0) return;
            }
            emit(ps, r, GE_REF, (uint32_t)ref);
        } else if (c == '*' || c == '+' || c == '?' || c == '{') {
            if (last < 0) { perr(ps, ps->p, "'%c' has nothing to repeat", c); return; }
            ps->p++;
            int64_t mn = 0, mx = -1;
            if (c == '+') mn = 1;
            else if (c == '?') mx = 1;
            else if (c == '{') {
                skip_space(ps, nested);
                mn = parse_int(ps);
                if (mn < 0) return;
                skip_space(ps, nested);
                mx = mn;
                if (ps->p < ps->end && *ps->p == ',') {
                    ps->p++;
                    skip_space(ps, nested);
                    mx = -1;
                    if (ps->p < ps->end && *ps->p != '}') { mx = parse_int(ps); if (mx < 0) return; }
                    skip_space(ps, nested);
                }
                if (ps->p >= ps->end || *ps->p != '}') { perr(ps, ps->p, "expected '}'"); return; }
                ps->p++;
                if (mx >= 0 && mx < mn) { perr(ps, ps->p, "repetition {%lld,%lld}: max below min", (long long)mn, (long long)mx); return; }
            }
            repeat(ps, r, last, mn, mx);
            last = -1;
        } else {
            break;
        }
        skip_space(ps, nested);
    }
}

static void parse_alternates(parser *ps, int32_t r, int nested) {
    parse_sequence(ps, r, nested);
    emit(ps, r, GE_END, 0);
    while (!ps->failed && ps->p < ps->end && *ps->p == '|') {
        ps->p++;
        skip_space(ps, 1);
        parse_sequence(ps, r, nested);
        emit(ps, r, GE_END, 0);
    }
}

static void parse_rules(parser *ps) {
    skip_space(ps, 1);
    while (!ps->failed && ps->p < ps->end) {
        const char *nm = ps->p;
        while (ps->p < ps->end && is_name(*ps->p)) ps->p++;
        if (ps->p == nm) { perr(ps, nm, "expected a rule name"); return; }
        size_t nlen = (size_t)(ps->p - nm);
        skip_space(ps, 0);
        if (ps->end - ps->p < 3 || memcmp(ps->p, "::=", 3) != 0) { perr(ps, ps->p, "expected '::=' after rule name"); return; }
        ps->p += 3;
        skip_space(ps, 1);
        int32_t r = rule_find(ps, nm, nlen);
        if (r >= 0 && ps->rules[r].defined) { perr(ps, nm, "rule '%.*s' defined twice", (int)nlen, nm); return; }
        if (r < 0) r = rule_new(ps, nm, nlen);
        if (r < 0) return;
        ps->rules[r].defined = 1;
        parse_alternates(ps, r, 0);
        if (ps->failed) return;
        if (ps->p < ps->end && *ps->p != '\n') { perr(ps, ps->p, "unexpected '%c'", *ps->p); return; }
        skip_space(ps, 1);
    }
}

/* Nullable rules, then a search for left recursion (a rule reaching itself
 * without consuming a byte), which the stack machine could not expand. */
static int check_left_recursion(parser *ps) {
    int32_t n = ps->n_rules;
    char *nullable = calloc((size_t)n, 1);
    char *color = calloc((size_t)n, 1);
    int32_t *stack = malloc((size_t)n * 2 * sizeof *stack + 1);
    int32_t *edges = NULL, n_edges = 0, cap_edges = 0;
    int rc = 0;
    if (!nullable || !color || !stack) { perr(ps, ps->src, "out of memory"); rc = -1; goto out; }
    for (int changed = 1; changed;) {
        changed = 0;
        for (int32_t r = 0; r < n; r++) {
            if (nullable[r]) continue;
            brule *b = &ps->rules[r];
            int ok = 1;
            for (int32_t i = 0; i < b->n; i++) {
                gelem e = b->body[i];
                if (e.kind == GE_END) { if (ok) { nullable[r] = 1; changed = 1; break; } ok = 1; }
                else if (e.kind == GE_BYTES || !nullable[e.arg]) ok = 0;
            }
        }
    }
    /* left-call edges r -> s: s is called before anything is consumed */
    for (int32_t r = 0; r < n; r++) {
        brule *b = &ps->rules[r];
        int blocked = 0;
        for (int32_t i = 0; i < b->n; i++) {
            gelem e = b->body[i];
            if (e.kind == GE_END) { blocked = 0; continue; }
            if (blocked) continue;
            if (e.kind == GE_BYTES) { blocked = 1; continue; }
            int32_t *ne = grow(edges, &cap_edges, n_edges + 2, sizeof *edges);
            if (!ne) { perr(ps, ps->src, "out of memory"); rc = -1; goto out; }
            edges = ne;
            edges[n_edges++] = r; edges[n_edges++] = (int32_t)e.arg;
            if (!nullable[e.arg]) blocked = 1;
        }
    }
    /* edges are grouped by source in rule order: index them */
    int32_t *first = calloc((size_t)n + 1, sizeof *first);
    if (!first) { perr(ps, ps->src, "out of memory"); rc = -1; goto out; }
    for (int32_t i = 0; i < n_edges; i += 2) first[edges[i] + 1]++;
    for (int32_t r = 0; r < n; r++) first[r + 1] += first[r];
    /* iterative DFS: stack of (rule, next edge) */
    for (int32_t s = 0; s < n && !rc; s++) {
        if (color[s]) continue;
        int32_t sp = 0;
        stack[sp++] = s; stack[sp++] = first[s];
        color[s] = 1;
        while (sp && !rc) {
            int32_t r = stack[sp - 2], k = stack[sp - 1];
            if (k >= first[r + 1]) { color[r] = 2; sp -= 2; continue; }
            stack[sp - 1] = k + 1;
            int32_t next = edges[2 * k + 1];
            if (color[next] == 1) {
                perr(ps, ps->src + ps->rules[next].first_ref,
                     "left recursion through rule '%s' (a rule, or a repetition of something that can be empty, "
                     "reaches itself without consuming input)", ps->rules[next].name);
                rc = -1;
            } else if (!color[next]) {
                color[next] = 1;
                stack[sp++] = next; stack[sp++] = first[next];
            }
        }
    }
    free(first);
out:
    free(nullable); free(color); free(stack); free(edges);
    return rc;
}

static int finish(parser *ps, grammar **out) {
    int32_t root = rule_find(ps, "root", 4);
    if (root < 0 || !ps->rules[root].defined) { perr(ps, ps->end, "no 'root' rule"); return GRAMMAR_ERR_SYNTAX; }
    for (int32_t i = 0; i < ps->n_rules; i++)
        if (!ps->rules[i].defined) {
            perr(ps, ps->src + ps->rules[i].first_ref, "undefined rule '%s'", ps->rules[i].name);
            return GRAMMAR_ERR_SYNTAX;
        }
    if (check_left_recursion(ps)) return GRAMMAR_ERR_SYNTAX;
    grammar *g = calloc(1, sizeof *g);
    if (!g) return GRAMMAR_ERR_NOMEM;
    pthread_mutex_init(&g->lock, NULL);
    g->refs = 1;
    g->n_rules = ps->n_rules;
    g->n_sets = ps->n_sets ? ps->n_sets : 1;
    g->root = root;
    int64_t n_alts = 0;
    for (int32_t r = 0; r < ps->n_rules; r++)
        for (int32_t i = 0; i < ps->rules[r].n; i++) n_alts += ps->rules[r].body[i].kind == GE_END;
    g->n_elems = (int32_t)ps->total;
    g->elems = malloc((size_t)(g->n_elems + 1) * sizeof *g->elems);
    g->sets = calloc((size_t)g->n_sets, sizeof *g->sets);
    g->alt_off = malloc((size_t)(g->n_rules + 1) * sizeof *g->alt_off);
    g->alt_start = malloc((size_t)(n_alts + 1) * sizeof *g->alt_start);
    g->pm = calloc((size_t)(g->n_elems + 1), sizeof *g->pm);
    if (!g->elems || !g->sets || !g->alt_off || !g->alt_start || !g->pm) { grammar_release(g); return GRAMMAR_ERR_NOMEM; }
    if (ps->n_sets) memcpy(g->sets, ps->sets, (size_t)ps->n_sets * sizeof *g->sets);
    int32_t e = 0, a = 0;
    for (int32_t r = 0; r < ps->n_rules; r++) {
        g->alt_off[r] = a;
        brule *b = &ps->rules[r];
        int at_start = 1;
        for (int32_t i = 0; i < b->n; i++) {
            if (at_start) { g->alt_start[a++] = e; at_start = 0; }
            g->elems[e++] = b->body[i];
            if (b->body[i].kind == GE_END) at_start = 1;
        }
    }
    g->alt_off[g->n_rules] = a;
    g->elem_rule = malloc((size_t)(e + 1) * sizeof *g->elem_rule);
    g->site = malloc((size_t)g->n_rules * sizeof *g->site);
    if (!g->elem_rule || !g->site) { grammar_release(g); return GRAMMAR_ERR_NOMEM; }
    for (int32_t r = 0; r < g->n_rules; r++) {
        g->site[r] = -2;
        for (int32_t i = g->alt_start[g->alt_off[r]]; r + 1 < g->n_rules ? i < g->alt_start[g->alt_off[r + 1]] : i < e; i++)
            g->elem_rule[i] = r;
    }
    g->elem_rule[e] = -1;
    for (int32_t i = 0; i < e; i++) {
        if (g->elems[i].kind != GE_REF) continue;
        int32_t callee = (int32_t)g->elems[i].arg;
        if (callee == g->elem_rule[i] && g->elems[i + 1].kind == GE_END) continue; /* keeps the parent */
        g->site[callee] = g->site[callee] == -2 ? i : -1;
    }
    g->elems[e].kind = GE_END; /* guard */
    g->elems[e].arg = 0;
    g->n_elems = e;
    *out = g;
    return 0;
}

int grammar__parse_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen) {
    *out = NULL;
    if (errlen) err[0] = 0;
    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.src = ps.p = text ? text : "";
    ps.end = ps.src + (text ? len : 0);
    ps.err = err; ps.errlen = errlen;
    ps.any_rule = -1;
    parse_rules(&ps);
    int rc = ps.failed ? GRAMMAR_ERR_SYNTAX : finish(&ps, out);
    if (rc == GRAMMAR_ERR_NOMEM && errlen) snprintf(err, errlen, "out of memory");
    if (ps.failed && rc == 0) rc = GRAMMAR_ERR_SYNTAX;
    if (ps.total > GRAMMAR_MAX_ELEMS && rc) rc = GRAMMAR_ERR_LIMIT;
    for (int32_t i = 0; i < ps.n_rules; i++) { free(ps.rules[i].name); free(ps.rules[i].body); }
    free(ps.rules); free(ps.sets); free(ps.cls);
    return rc;
}

int grammar_compile_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen) {
    return grammar__parse_gbnf(text, len, out, err, errlen);
}
