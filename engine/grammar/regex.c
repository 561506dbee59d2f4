/* regex.c -- the JSON Schema `pattern` subset -> a GBNF expression.
 *
 * Supported: literals, escapes (\. \\ \/ \n \t \r \f \xHH \uHHHH and the
 * escaped metacharacters), `.`, [classes] with ranges and negation, \d \w \s
 * \D \W \S, (groups), (?:groups), `|`, `*` `+` `?` `{m}` `{m,}` `{m,n}`
 * (lazy `?` suffixes are accepted and mean the same here), `^` at the start
 * and `$` at the end of a top-level alternative. The match is anchored: the
 * generated string matches the whole pattern, which also satisfies JSON
 * Schema's unanchored search. Anything else (backreferences, lookaround,
 * word boundaries, flags) is an error.
 *
 * The grammar describes the string's JSON text, so characters that JSON must
 * escape are generated escaped (`"` as \", `\` as \\, newline as \n, ...)
 * and other control characters are never generated. */
#include "grammar_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RE_REP_MAX 1000
#define RE_MAX_RANGES 512

typedef struct rparser {
    const char *p, *end, *start;
    gstr *out;
    char *err; size_t errlen;
    int failed;
    int depth;
} rparser;

typedef struct rrange { uint32_t lo, hi; } rrange;
typedef struct rclass { rrange r[RE_MAX_RANGES]; int n; } rclass;

static void rerr(rparser *rp, const char *msg) {
    if (rp->failed) return;
    rp->failed = 1;
    if (rp->errlen) snprintf(rp->err, rp->errlen, "regex at offset %d: %s", (int)(rp->p - rp->start), msg);
}

static void cls_add(rparser *rp, rclass *c, uint32_t lo, uint32_t hi) {
    if (c->n >= RE_MAX_RANGES) { rerr(rp, "character class too complex"); return; }
    c->r[c->n].lo = lo; c->r[c->n].hi = hi; c->n++;
}

static int cmp_rr(const void *a, const void *b) {
    const rrange *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static void cls_norm(rclass *c) {
    qsort(c->r, (size_t)c->n, sizeof c->r[0], cmp_rr);
    int o = 0;
    for (int i = 0; i < c->n; i++) {
        if (o && c->r[i].lo <= c->r[o - 1].hi + 1) { if (c->r[i].hi > c->r[o - 1].hi) c->r[o - 1].hi = c->r[i].hi; }
        else c->r[o++] = c->r[i];
    }
    c->n = o;
}

static void cls_negate(rparser *rp, rclass *c) {
    cls_norm(c);
    rclass t;
    t.n = 0;
    uint32_t next = 0;
    for (int i = 0; i < c->n; i++) {
        if (c->r[i].lo > next) cls_add(rp, &t, next, c->r[i].lo - 1);
        next = c->r[i].hi + 1;
    }
    if (next <= 0x10FFFF) cls_add(rp, &t, next, 0x10FFFF);
    *c = t;
}

static int cls_has(const rclass *c, uint32_t x) {
    for (int i = 0; i < c->n; i++) if (c->r[i].lo <= x && x <= c->r[i].hi) return 1;
    return 0;
}

/* \d \w \s and their negations into c. */
static int cls_shorthand(rparser *rp, rclass *c, char e) {
    rclass t;
    t.n = 0;
    char l = (char)(e | 0x20);
    if (l == 'd') cls_add(rp, &t, '0', '9');
    else if (l == 'w') { cls_add(rp, &t, '0', '9'); cls_add(rp, &t, 'A', 'Z'); cls_add(rp, &t, 'a', 'z'); cls_add(rp, &t, '_', '_'); }
    else if (l == 's') { cls_add(rp, &t, ' ', ' '); cls_add(rp, &t, '\t', '\r'); }
    else return 0;
    if (e != l) cls_negate(rp, &t);
    for (int i = 0; i < t.n; i++) cls_add(rp, c, t.r[i].lo, t.r[i].hi);
    return 1;
}

static int hexv(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A single-character escape (after the backslash); -1 on error. */
static int64_t re_escape(rparser *rp) {
    if (rp->p >= rp->end) { rerr(rp, "pattern ends with a backslash"); return -1; }
    char c = *rp->p++;
    switch (c) {
    case 'n': return '\n';
    case 't': return '\t';
    case 'r': return '\r';
    case 'f': return '\f';
    case 'v': return '\v';
    case '0': return 0;
    case 'x': case 'u': {
        int nd = c == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (int i = 0; i < nd; i++) {
            int h = rp->p < rp->end ? hexv(*rp->p) : -1;
            if (h < 0) { rerr(rp, "bad \\x or \\u escape"); return -1; }
            v = v * 16 + (uint32_t)h;
            rp->p++;
        }
        return v;
    }
    default:
        if (strchr(".\\/-[](){}*+?|^$ \"'#:,=!<>&%@~`;_", c)) return (unsigned char)c;
        if (c == 'b' || c == 'B') rerr(rp, "word boundaries (\\b) are not supported");
        else if (c >= '1' && c <= '9') rerr(rp, "backreferences are not supported");
        else rerr(rp, "unsupported escape");
        return -1;
    }
}

/* Decode one UTF-8 character from the pattern. */
static int64_t re_char(rparser *rp) {
    const unsigned char *s = (const unsigned char *)rp->p;
    unsigned c = s[0];
    int l = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (!l || rp->p + l > rp->end) { rerr(rp, "invalid UTF-8"); return -1; }
    uint32_t cp = l == 1 ? c : l == 2 ? (c & 31) : l == 3 ? (c & 15) : (c & 7);
    for (int i = 1; i < l; i++) {
        if ((s[i] & 0xC0) != 0x80) { rerr(rp, "invalid UTF-8"); return -1; }
        cp = cp << 6 | (s[i] & 63);
    }
    rp->p += l;
    return cp;
}

static int utf8_enc(uint32_t cp, char *o) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) { o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 63)); o[2] = (char)(0x80 | (cp & 63)); return 3; }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 63));
    o[2] = (char)(0x80 | ((cp >> 6) & 63)); o[3] = (char)(0x80 | (cp & 63));
    return 4;
}

/* The JSON text of one character, as a GBNF literal. */
static void emit_char(rparser *rp, uint32_t cp) {
    char buf[8];
    int n;
    switch (cp) {
    case '"': n = 2; memcpy(buf, "\\\"", 2); break;
    case '\\': n = 2; memcpy(buf, "\\\\", 2); break;
    case '\n': n = 2; memcpy(buf, "\\n", 2); break;
    case '\t': n = 2; memcpy(buf, "\\t", 2); break;
    case '\r': n = 2; memcpy(buf, "\\r", 2); break;
    case '\f': n = 2; memcpy(buf, "\\f", 2); break;
    case '\b': n = 2; memcpy(buf, "\\b", 2); break;
    default:
        if (cp < 0x20) { n = snprintf(buf, sizeof buf, "\\u%04x", cp); break; }
        if (cp >= 0xD800 && cp <= 0xDFFF) { rerr(rp, "surrogate code point"); return; }
        n = utf8_enc(cp, buf);
    }
    grammar__str_literal(rp->out, buf, (size_t)n);
}

static void put_cp(gstr *o, uint32_t cp) {
    if (cp <= 0xFF) grammar__str_printf(o, "\\x%02X", cp);
    else if (cp <= 0xFFFF) grammar__str_printf(o, "\\u%04X", cp);
    else grammar__str_printf(o, "\\U%08X", cp);
}

/* A class as GBNF: raw characters JSON allows unescaped, plus the escaped
 * forms of '"', '\\' and the named control characters it contains. */
static void emit_class(rparser *rp, rclass *c) {
    cls_norm(c);
    static const uint32_t esc[] = {'"', '\\', '\n', '\t', '\r', '\f', '\b'};
    static const char *const esc_txt[] = {"\"\\\\\\\"\"", "\"\\\\\\\\\"", "\"\\\\n\"", "\"\\\\t\"", "\"\\\\r\"", "\"\\\\f\"", "\"\\\\b\""};
    gstr raw = {0};
    for (int i = 0; i < c->n; i++) {
        uint32_t lo = c->r[i].lo, hi = c->r[i].hi;
        /* cut out controls, '"', '\\' and surrogates */
        uint32_t cuts[][2] = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}};
        uint32_t segs[8][2];
        int ns = 1;
        segs[0][0] = lo; segs[0][1] = hi;
        for (int k = 0; k < 4; k++) {
            int nn = 0;
            uint32_t tmp[8][2];
            for (int s = 0; s < ns; s++) {
                uint32_t a = segs[s][0], b = segs[s][1];
                if (b < cuts[k][0] || a > cuts[k][1]) { tmp[nn][0] = a; tmp[nn][1] = b; nn++; continue; }
                if (a < cuts[k][0]) { tmp[nn][0] = a; tmp[nn][1] = cuts[k][0] - 1; nn++; }
                if (b > cuts[k][1]) { tmp[nn][0] = cuts[k][1] + 1; tmp[nn][1] = b; nn++; }
            }
            memcpy(segs, tmp, sizeof tmp);
            ns = nn;
        }
        for (int s = 0; s < ns; s++) {
            put_cp(&raw, segs[s][0]);
            if (segs[s][1] != segs[s][0]) { grammar__str_puts(&raw, "-"); put_cp(&raw, segs[s][1]); }
        }
    }
    int alts = 0;
    grammar__str_puts(rp->out, "(");
    if (raw.n) { grammar__str_printf(rp->out, "[%s]", raw.s); alts++; }
    for (int k = 0; k < 7; k++)
        if (cls_has(c, esc[k])) grammar__str_printf(rp->out, "%s%s", alts++ ? " | " : "", esc_txt[k]);
    grammar__str_puts(rp->out, ")");
    free(raw.s);
    if (!alts) rerr(rp, "character class matches no character JSON can carry");
}

static void parse_class(rparser *rp) {
    rp->p++; /* [ */
    rclass c;
    c.n = 0;
    int neg = 0;
    if (rp->p < rp->end && *rp->p == '^') { neg = 1; rp->p++; }
    int first = 1;
    while (!rp->failed) {
        if (rp->p >= rp->end) { rerr(rp, "unterminated character class"); return; }
        if (*rp->p == ']' && !first) { rp->p++; break; }
        first = 0;
        int64_t lo;
        if (*rp->p == '\\') {
            rp->p++;
            if (rp->p < rp->end && cls_shorthand(rp, &c, *rp->p)) { rp->p++; continue; }
            lo = re_escape(rp);
        } else if (*rp->p == '[' && rp->p + 1 < rp->end && rp->p[1] == ':') {
            rerr(rp, "POSIX classes ([:alpha:]) are not supported");
            return;
        } else lo = re_char(rp);
        if (lo < 0) return;
        int64_t hi = lo;
        if (rp->p + 1 < rp->end && *rp->p == '-' && rp->p[1] != ']') {
            rp->p++;
            if (*rp->p == '\\') { rp->p++; hi = re_escape(rp); }
            else hi = re_char(rp);
            if (hi < 0) return;
            if (hi < lo) { rerr(rp, "character range is backwards"); return; }
        }
        cls_add(rp, &c, (uint32_t)lo, (uint32_t)hi);
    }
    if (rp->failed) return;
    if (neg) cls_negate(rp, &c);
    emit_class(rp, &c);
}

static void parse_alt(rparser *rp);

static int parse_count(rparser *rp, int64_t *v) {
    const char *s = rp->p;
    *v = 0;
    while (rp->p < rp->end && *rp->p >= '0' && *rp->p <= '9') {
        *v = *v * 10 + (*rp->p++ - '0');
        if (*v > RE_REP_MAX) { rerr(rp, "repetition count over 1000"); return -1; }
    }
    return rp->p == s ? -1 : 0;
}

static void parse_concat(rparser *rp) {
    int n_atoms = 0;
    grammar__str_puts(rp->out, "(");
    while (!rp->failed && rp->p < rp->end && *rp->p != '|' && *rp->p != ')') {
        char c = *rp->p;
        if (c == '^') {
            if (n_atoms || rp->depth) { rerr(rp, "'^' is only supported at the start of the pattern"); return; }
            rp->p++;
            continue;
        }
        if (c == '$') {
            rp->p++;
            if (rp->depth || (rp->p < rp->end && *rp->p != '|')) { rerr(rp, "'$' is only supported at the end of the pattern"); return; }
            continue;
        }
        if (c == '*' || c == '+' || c == '?' || c == '{') { rerr(rp, "quantifier without anything to repeat"); return; }
        grammar__str_puts(rp->out, n_atoms ? " " : "");
        n_atoms++;
        if (c == '(') {
            if (rp->depth >= 32) { rerr(rp, "groups nested deeper than 32"); return; }
            rp->p++;
            if (rp->p < rp->end && *rp->p == '?') {
                if (rp->p + 1 < rp->end && rp->p[1] == ':') rp->p += 2;
                else { rerr(rp, "lookaround and named groups are not supported"); return; }
            }
            rp->depth++;
            parse_alt(rp);
            rp->depth--;
            if (rp->failed) return;
            if (rp->p >= rp->end || *rp->p != ')') { rerr(rp, "missing ')'"); return; }
            rp->p++;
        } else if (c == '[') {
            parse_class(rp);
        } else if (c == '.') {
            rp->p++;
            rclass cl;
            cl.n = 0;
            cls_add(rp, &cl, '\n', '\n');
            cls_negate(rp, &cl);
            emit_class(rp, &cl);
        } else if (c == '\\') {
            rp->p++;
            rclass cl;
            cl.n = 0;
            if (rp->p < rp->end && cls_shorthand(rp, &cl, *rp->p)) { rp->p++; emit_class(rp, &cl); }
            else { int64_t cp = re_escape(rp); if (cp >= 0) emit_char(rp, (uint32_t)cp); }
        } else {
            int64_t cp = re_char(rp);
            if (cp >= 0) emit_char(rp, (uint32_t)cp);
        }
        /* quantifiers */
        while (!rp->failed && rp->p < rp->end && strchr("*+?{", *rp->p)) {
            char q = *rp->p++;
            if (q == '{') {
                int64_t mn, mx;
                if (parse_count(rp, &mn)) { rerr(rp, "bad {m,n} quantifier"); return; }
                mx = mn;
                if (rp->p < rp->end && *rp->p == ',') {
                    rp->p++;
                    mx = -1;
                    if (rp->p < rp->end && *rp->p != '}' && parse_count(rp, &mx)) { rerr(rp, "bad {m,n} quantifier"); return; }
                }
                if (rp->p >= rp->end || *rp->p != '}') { rerr(rp, "bad {m,n} quantifier"); return; }
                rp->p++;
                if (mx >= 0 && mx < mn) { rerr(rp, "{m,n} with n < m"); return; }
                if (mx < 0) grammar__str_printf(rp->out, "{%lld,}", (long long)mn);
                else grammar__str_printf(rp->out, "{%lld,%lld}", (long long)mn, (long long)mx);
            } else {
                grammar__str_printf(rp->out, "%c", q);
            }
            if (rp->p < rp->end && *rp->p == '?') rp->p++; /* lazy: same language */
            if (rp->p < rp->end && strchr("*+?{", *rp->p)) {
                /* a quantified quantifier: wrap what we have so far is not possible in GBNF text */
                rerr(rp, "nested quantifiers need a group");
                return;
            }
        }
    }
    if (!n_atoms) grammar__str_puts(rp->out, "\"\"");
    grammar__str_puts(rp->out, ")");
}

static void parse_alt(rparser *rp) {
    grammar__str_puts(rp->out, "(");
    parse_concat(rp);
    while (!rp->failed && rp->p < rp->end && *rp->p == '|') {
        rp->p++;
        grammar__str_puts(rp->out, " | ");
        parse_concat(rp);
    }
    grammar__str_puts(rp->out, ")");
}

int grammar__regex_to_gbnf(const char *re, size_t len, gstr *out, char *err, size_t errlen) {
    rparser rp;
    memset(&rp, 0, sizeof rp);
    rp.p = rp.start = re;
    rp.end = re + len;
    rp.out = out;
    rp.err = err;
    rp.errlen = errlen;
    parse_alt(&rp);
    if (!rp.failed && rp.p < rp.end) rerr(&rp, "unbalanced ')'");
    return rp.failed ? -1 : 0;
}
