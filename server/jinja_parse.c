/* jinja_parse.c -- lexer and parser for the chat-template Jinja subset.
 *
 * The lexer applies Jinja's whitespace rules the way Hugging Face configures
 * the environment (trim_blocks=True, lstrip_blocks=True, a single trailing
 * newline of the template dropped) plus the explicit {%- -%} / {%+ controls.
 * The parser follows Jinja2's grammar and precedence:
 *   condexpr: or ['if' or ['else' condexpr]]
 *   or/and/not, compare (== != < > <= >= in, not in), + -, ~, * / // %, **,
 *   unary - +, primary with postfix . [] (), then | filters and `is` tests.
 * Errors longjmp back to jinja__parse with "line:col: message".
 */
#include "jinja.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    T_TEXT, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP, T_EOF
} ttype;

typedef struct tok {
    ttype t;
    const char *s;  /* NAME/OP text; STR decoded; TEXT text */
    size_t n;
    int64_t i;
    double f;
    int line, col;
} tok;

typedef struct parser {
    jarena *a;
    const char *src;
    size_t len;
    tok *toks;
    size_t ntok, cap, pos;
    jmp_buf jb;
    char *err;
    size_t errlen;
    int depth;
} parser;

#define MAX_DEPTH 200

static void perr(parser *P, int line, int col, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
static void perr(parser *P, int line, int col, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(P->err, P->errlen, "%d:%d: %s", line, col, msg);
    longjmp(P->jb, 1);
}

/* ---- lexer ---- */

static void pos_of(parser *P, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && i < P->len; i++) {
        if (P->src[i] == '\n') { l++; c = 1; } else c++;
    }
    *line = l;
    *col = c;
}

static tok *push_tok(parser *P, ttype t, size_t off) {
    if (P->ntok == P->cap) {
        size_t cap = P->cap ? P->cap * 2 : 256;
        tok *nt = jarena__alloc(P->a, cap * sizeof(tok));
        if (P->ntok) memcpy(nt, P->toks, P->ntok * sizeof(tok));
        P->toks = nt;
        P->cap = cap;
    }
    tok *k = &P->toks[P->ntok++];
    memset(k, 0, sizeof *k);
    k->t = t;
    k->line = (int)off;  /* offset for now; converted to line:col at the end */
    return k;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Lexes a string literal starting at the quote; returns the offset after it. */
static size_t lex_string(parser *P, size_t i, tok *k) {
    char q = P->src[i++];
    jbuf b = {0};
    jbuf_put(P->a, &b, "", 0);
    while (i < P->len && P->src[i] != q) {
        char c = P->src[i];
        if (c == '\\' && i + 1 < P->len) {
            char e = P->src[i + 1];
            i += 2;
            switch (e) {
            case 'n': jbuf_putc(P->a, &b, '\n'); break;
            case 't': jbuf_putc(P->a, &b, '\t'); break;
            case 'r': jbuf_putc(P->a, &b, '\r'); break;
            case 'b': jbuf_putc(P->a, &b, '\b'); break;
            case 'f': jbuf_putc(P->a, &b, '\f'); break;
            case '0': jbuf_putc(P->a, &b, '\0'); break;
            case '\\': case '\'': case '"': jbuf_putc(P->a, &b, e); break;
            case '\n': break;
            case 'x': case 'u': case 'U': {
                int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                uint32_t cp = 0;
                int ok = 1;
                for (int d = 0; d < nd; d++) {
                    int h = i + d < P->len ? hexval((unsigned char)P->src[i + d]) : -1;
                    if (h < 0) { ok = 0; break; }
                    cp = cp * 16 + (uint32_t)h;
                }
                if (ok && cp <= 0x10FFFF) { jutf8_put(P->a, &b, cp); i += nd; }
                else { jbuf_putc(P->a, &b, '\\'); jbuf_putc(P->a, &b, e); }
                break;
            }
            default: jbuf_putc(P->a, &b, '\\'); jbuf_putc(P->a, &b, e); break;
            }
            continue;
        }
        jbuf_putc(P->a, &b, c);
        i++;
    }
    if (i >= P->len) {
        int l, c;
        pos_of(P, i, &l, &c);
        perr(P, l, c, "unterminated string literal");
    }
    k->s = b.p;
    k->n = b.n;
    return i + 1;
}

/* Lexes the inside of a {{ }} or {% %} tag from offset i; returns the offset
 * after the closing delimiter and whether it was "-x}" (strip after). */
static size_t lex_tag(parser *P, size_t i, int is_block, int *strip_after) {
    char close = is_block ? '%' : '}';
    int balance = 0;
    size_t start = i;
    for (;;) {
        while (i < P->len && isspace((unsigned char)P->src[i])) i++;
        if (i >= P->len) {
            int l, c;
            pos_of(P, start, &l, &c);
            perr(P, l, c, "unclosed %s tag", is_block ? "{%" : "{{");
        }
        const char *s = P->src + i;
        size_t left = P->len - i;
        if (balance == 0) {
            if (left >= 3 && s[0] == '-' && s[1] == close && s[2] == '}') {
                *strip_after = 1;
                push_tok(P, is_block ? T_BEND : T_VEND, i);
                return i + 3;
            }
            if (left >= 3 && s[0] == '+' && s[1] == close && s[2] == '}' && is_block) {
                *strip_after = 2;  /* '+': keep the newline (no trim_blocks) */
                push_tok(P, T_BEND, i);
                return i + 3;
            }
            if (left >= 2 && s[0] == close && s[1] == '}') {
                *strip_after = 0;
                push_tok(P, is_block ? T_BEND : T_VEND, i);
                return i + 2;
            }
        }
        char c = s[0];
        if (c == '"' || c == '\'') {
            tok *k = push_tok(P, T_STR, i);
            i = lex_string(P, i, k);
        } else if (isdigit((unsigned char)c)) {
            size_t j = i;
            while (j < P->len && (isdigit((unsigned char)P->src[j]) || P->src[j] == '_')) j++;
            int isf = 0;
            if (j + 1 < P->len && P->src[j] == '.' && isdigit((unsigned char)P->src[j + 1])) {
                isf = 1;
                j++;
                while (j < P->len && isdigit((unsigned char)P->src[j])) j++;
            }
            if (j < P->len && (P->src[j] == 'e' || P->src[j] == 'E')) {
                size_t e = j + 1;
                if (e < P->len && (P->src[e] == '+' || P->src[e] == '-')) e++;
                if (e < P->len && isdigit((unsigned char)P->src[e])) {
                    isf = 1;
                    j = e;
                    while (j < P->len && isdigit((unsigned char)P->src[j])) j++;
                }
            }
            char tmp[64];
            size_t n = 0;
            for (size_t q = i; q < j && n < sizeof tmp - 1; q++)
                if (P->src[q] != '_') tmp[n++] = P->src[q];
            tmp[n] = 0;
            tok *k = push_tok(P, isf ? T_FLOAT : T_INT, i);
            if (isf) k->f = strtod(tmp, NULL);
            else k->i = strtoll(tmp, NULL, 10);
            i = j;
        } else if (isalpha((unsigned char)c) || c == '_') {
            size_t j = i;
            while (j < P->len && (isalnum((unsigned char)P->src[j]) || P->src[j] == '_')) j++;
            tok *k = push_tok(P, T_NAME, i);
            k->s = jarena__strndup(P->a, s, j - i);
            k->n = j - i;
            i = j;
        } else {
            static const char *two[] = {"**", "//", "==", "!=", "<=", ">=", NULL};
            size_t n = 0;
            for (int q = 0; two[q]; q++)
                if (left >= 2 && s[0] == two[q][0] && s[1] == two[q][1]) n = 2;
            if (!n) {
                if (!strchr("+-*/%~<>=()[]{},.:|!", c)) {
                    int l, cc;
                    pos_of(P, i, &l, &cc);
                    perr(P, l, cc, "unexpected character '%c' in tag", c);
                }
                n = 1;
                if (c == '(' || c == '[' || c == '{') balance++;
                if ((c == ')' || c == ']' || c == '}') && balance > 0) balance--;
            }
            tok *k = push_tok(P, T_OP, i);
            k->s = jarena__strndup(P->a, s, n);
            k->n = n;
            i += n;
        }
    }
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

static void lex(parser *P) {
    size_t i = 0, len = P->len;
    /* Jinja drops one trailing newline of the template (keep_trailing_newline=False). */
    if (len && P->src[len - 1] == '\n') {
        len--;
        if (len && P->src[len - 1] == '\r') len--;
    }
    int strip_next = 0;     /* previous tag ended with '-' */
    int line_starting = 1;  /* the previous tag's match ended with a newline */
    while (i < len) {
        /* find the next tag start */
        size_t j = i;
        int kind = 0;  /* '{', '%', '#' */
        while (j + 1 < len) {
            if (P->src[j] == '{' && (P->src[j + 1] == '{' || P->src[j + 1] == '%' || P->src[j + 1] == '#')) {
                kind = P->src[j + 1];
                break;
            }
            j++;
        }
        if (!kind) j = len;
        size_t ts = i, te = j;
        if (strip_next)
            while (ts < te && is_ws(P->src[ts])) ts++;
        char mod = kind && j + 2 < len ? P->src[j + 2] : 0;
        if (kind && mod == '-') {
            while (te > ts && is_ws(P->src[te - 1])) te--;
        } else if (kind && kind != '{' && mod != '+') {
            /* lstrip_blocks: blank from the line start up to a block/comment tag */
            size_t k = te;
            while (k > ts && (P->src[k - 1] == ' ' || P->src[k - 1] == '\t')) k--;
            if ((k > ts && P->src[k - 1] == '\n') || (k == ts && (ts > i || line_starting || ts == 0)))
                te = k;
        }
        if (te > ts) {
            tok *k = push_tok(P, T_TEXT, ts);
            k->s = P->src + ts;
            k->n = te - ts;
        }
        if (!kind) break;
        size_t p = j + 2;
        if (mod == '-' || mod == '+') p++;
        int sa = 0;
        if (kind == '#') {
            size_t q = p;
            while (q + 1 < len && !(P->src[q] == '#' && P->src[q + 1] == '}')) q++;
            if (q + 1 >= len) {
                int l, c;
                pos_of(P, j, &l, &c);
                perr(P, l, c, "unclosed comment");
            }
            sa = q > p && P->src[q - 1] == '-' ? 1 : 0;
            if (q > p && P->src[q - 1] == '+') sa = 2;
            i = q + 2;
        } else {
            push_tok(P, kind == '%' ? T_BBEGIN : T_VBEGIN, j);
            i = lex_tag(P, p, kind == '%', &sa);
        }
        strip_next = sa == 1;
        line_starting = 0;
        if (sa == 0 && kind != '{' && i < len && P->src[i] == '\n') {
            i++;  /* trim_blocks */
            line_starting = 1;
        } else if (sa == 0 && kind != '{' && i + 1 < len && P->src[i] == '\r' && P->src[i + 1] == '\n') {
            i += 2;
            line_starting = 1;
        }
        if (strip_next) {
            size_t q = i;
            while (q < len && is_ws(P->src[q])) q++;
            line_starting = q > i && P->src[q - 1] == '\n';
        }
        /* {% raw %}: the text up to {% endraw %} is literal */
        if (kind == '%' && P->ntok >= 3 && P->toks[P->ntok - 2].t == T_NAME &&
            P->toks[P->ntok - 3].t == T_BBEGIN && !strcmp(P->toks[P->ntok - 2].s, "raw")) {
            P->ntok -= 3;
            size_t q = i;
            for (;; q++) {
                if (q + 1 >= len) {
                    int l, c;
                    pos_of(P, j, &l, &c);
                    perr(P, l, c, "unclosed raw block");
                }
                if (P->src[q] == '{' && P->src[q + 1] == '%') {
                    size_t r = q + 2;
                    if (r < len && (P->src[r] == '-' || P->src[r] == '+')) r++;
                    while (r < len && is_ws(P->src[r])) r++;
                    if (r + 6 <= len && !memcmp(P->src + r, "endraw", 6)) break;
                }
            }
            size_t ts2 = i, te2 = q;
            if (strip_next) while (ts2 < te2 && is_ws(P->src[ts2])) ts2++;
            if (q + 2 < len && P->src[q + 2] == '-') while (te2 > ts2 && is_ws(P->src[te2 - 1])) te2--;
            if (te2 > ts2) {
                tok *k = push_tok(P, T_TEXT, ts2);
                k->s = P->src + ts2;
                k->n = te2 - ts2;
            }
            size_t r = q + 2;
            if (P->src[r] == '-' || P->src[r] == '+') r++;
            size_t ntok = P->ntok;
            int sa2 = 0;
            i = lex_tag(P, r, 1, &sa2);
            P->ntok = ntok;  /* drop the endraw tokens */
            strip_next = sa2 == 1;
            line_starting = 0;
            if (sa2 == 0 && i < len && P->src[i] == '\n') {
                i++;
                line_starting = 1;
            }
            if (strip_next) {
                size_t q2 = i;
                while (q2 < len && is_ws(P->src[q2])) q2++;
                line_starting = q2 > i && P->src[q2 - 1] == '\n';
            }
        }
    }
    push_tok(P, T_EOF, len);
    /* convert offsets to line:col in one pass */
    int line = 1, col = 1;
    size_t off = 0;
    for (size_t t = 0; t < P->ntok; t++) {
        size_t target = (size_t)P->toks[t].line;
        while (off < target && off < P->len) {
            if (P->src[off] == '\n') { line++; col = 1; } else col++;
            off++;
        }
        P->toks[t].line = line;
        P->toks[t].col = col;
    }
}

/* ---- parser helpers ---- */

static tok *peek(parser *P) { return &P->toks[P->pos]; }
static tok *peekn(parser *P, size_t k) {
    return P->pos + k < P->ntok ? &P->toks[P->pos + k] : &P->toks[P->ntok - 1];
}
static tok *next(parser *P) {
    tok *t = &P->toks[P->pos];
    if (t->t != T_EOF) P->pos++;
    return t;
}
static int is_op(tok *t, const char *op) { return t->t == T_OP && !strcmp(t->s, op); }
static int is_name(tok *t, const char *n) { return t->t == T_NAME && !strcmp(t->s, n); }

static const char *tok_desc(tok *t) {
    switch (t->t) {
    case T_TEXT: return "text";
    case T_VBEGIN: return "'{{'";
    case T_VEND: return "'}}'";
    case T_BBEGIN: return "'{%'";
    case T_BEND: return "'%}'";
    case T_STR: return "string";
    case T_INT: case T_FLOAT: return "number";
    case T_EOF: return "end of template";
    default: return t->s;
    }
}

static void expect_op(parser *P, const char *op) {
    tok *t = next(P);
    if (!is_op(t, op)) perr(P, t->line, t->col, "expected '%s', got %s", op, tok_desc(t));
}

static const char *expect_name(parser *P) {
    tok *t = next(P);
    if (t->t != T_NAME) perr(P, t->line, t->col, "expected a name, got %s", tok_desc(t));
    return t->s;
}

static void expect_t(parser *P, ttype ty, const char *what) {
    tok *t = next(P);
    if (t->t != ty) perr(P, t->line, t->col, "expected %s, got %s", what, tok_desc(t));
}

static jnode *mk(parser *P, jn_kind k, tok *at) {
    jnode *n = jarena__alloc(P->a, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = at->line;
    n->col = at->col;
    return n;
}

static void nodes_push(parser *P, jnodes *ns, jnode *n) {
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 4;
        jnode **v = jarena__alloc(P->a, cap * sizeof *v);
        if (ns->n) memcpy(v, ns->v, ns->n * sizeof *v);
        ns->v = v;
        ns->cap = cap;
    }
    ns->v[ns->n++] = n;
}

/* ---- expressions ---- */

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, int with_filter);
static jnode *parse_primary(parser *P);
static jnode *parse_postfix(parser *P, jnode *n);

static void enter(parser *P) {
    if (++P->depth > MAX_DEPTH) {
        tok *t = peek(P);
        perr(P, t->line, t->col, "expression nested too deeply");
    }
}

/* Parses "(a, b, k=v)" after the '(' was seen; fills args and kwargs. */
static void parse_call_args(parser *P, jnode *n) {
    jnodes kv = {0};
    const char **names = NULL;
    size_t nn = 0, cap = 0;
    while (!is_op(peek(P), ")")) {
        if (n->args.n || kv.n) expect_op(P, ",");
        if (is_op(peek(P), ")")) break;  /* trailing comma */
        if (peek(P)->t == T_NAME && is_op(peekn(P, 1), "=")) {
            const char *name = next(P)->s;
            next(P);
            if (nn == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nw = jarena__alloc(P->a, cap * sizeof *nw);
                if (nn) memcpy(nw, names, nn * sizeof *nw);
                names = nw;
            }
            names[nn++] = name;
            nodes_push(P, &kv, parse_expr(P));
        } else {
            if (kv.n) {
                tok *t = peek(P);
                perr(P, t->line, t->col, "positional argument after keyword argument");
            }
            nodes_push(P, &n->args, parse_expr(P));
        }
    }
    expect_op(P, ")");
    n->kwnames_vals = kv;
    n->kwnames = names;
}

static jnode *parse_filter(parser *P, jnode *target) {
    tok *at = peek(P);
    jnode *f = mk(P, JN_FILTER, at);
    f->name = expect_name(P);
    while (is_op(peek(P), ".")) {  /* dotted filter names: keep the last part */
        next(P);
        f->name = expect_name(P);
    }
    f->a = target;
    if (is_op(peek(P), "(")) {
        next(P);
        parse_call_args(P, f);
    }
    return f;
}

static jnode *parse_filter_expr(parser *P, jnode *n) {
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, "|")) {
            next(P);
            n = parse_filter(P, n);
        } else if (is_name(t, "is")) {
            next(P);
            jnode *x = mk(P, JN_TEST, t);
            if (is_name(peek(P), "not")) { next(P); x->neg = 1; }
            tok *nt = peek(P);
            /* `is none`, `is true` etc. arrive as names */
            x->name = expect_name(P);
            (void)nt;
            x->a = n;
            tok *u = peek(P);
            if (is_op(u, "(")) {
                next(P);
                parse_call_args(P, x);
            } else if ((u->t == T_STR || u->t == T_INT || u->t == T_FLOAT || is_op(u, "[") ||
                        is_op(u, "{") ||
                        (u->t == T_NAME && strcmp(u->s, "else") && strcmp(u->s, "or") &&
                         strcmp(u->s, "and") && strcmp(u->s, "if") && strcmp(u->s, "in") &&
                         strcmp(u->s, "is") && strcmp(u->s, "not")))) {
                nodes_push(P, &x->args, parse_postfix(P, parse_primary(P)));
            }
            n = x;
        } else if (is_op(t, "(")) {
            n = parse_postfix(P, n);
        } else {
            return n;
        }
    }
}

static jnode *parse_primary(parser *P) {
    enter(P);
    tok *t = next(P);
    jnode *n;
    switch (t->t) {
    case T_NAME:
        n = mk(P, JN_LIT, t);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->lit = jv_bool(1);
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->lit = jv_bool(0);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->lit = jv_none();
        else { n->k = JN_NAME; n->name = t->s; }
        break;
    case T_STR: {
        /* adjacent string literals concatenate */
        jbuf b = {0};
        jbuf_put(P->a, &b, t->s, t->n);
        while (peek(P)->t == T_STR) {
            tok *u = next(P);
            jbuf_put(P->a, &b, u->s, u->n);
        }
        n = mk(P, JN_LIT, t);
        n->lit = jv_str(P->a, b.p, b.n);
        break;
    }
    case T_INT: n = mk(P, JN_LIT, t); n->lit = jv_int(t->i); break;
    case T_FLOAT: n = mk(P, JN_LIT, t); n->lit = jv_float(t->f); break;
    case T_OP:
        if (!strcmp(t->s, "(")) {
            if (is_op(peek(P), ")")) {
                next(P);
                n = mk(P, JN_TUPLE, t);
                break;
            }
            jnode *e = parse_expr(P);
            if (is_op(peek(P), ",")) {
                n = mk(P, JN_TUPLE, t);
                nodes_push(P, &n->args, e);
                while (is_op(peek(P), ",")) {
                    next(P);
                    if (is_op(peek(P), ")")) break;
                    nodes_push(P, &n->args, parse_expr(P));
                }
            } else {
                n = e;
            }
            expect_op(P, ")");
            break;
        }
        if (!strcmp(t->s, "[")) {
            n = mk(P, JN_LIST, t);
            while (!is_op(peek(P), "]")) {
                if (n->args.n) expect_op(P, ",");
                if (is_op(peek(P), "]")) break;
                nodes_push(P, &n->args, parse_expr(P));
            }
            expect_op(P, "]");
            break;
        }
        if (!strcmp(t->s, "{")) {
            n = mk(P, JN_DICT, t);
            while (!is_op(peek(P), "}")) {
                if (n->args.n) expect_op(P, ",");
                if (is_op(peek(P), "}")) break;
                nodes_push(P, &n->args, parse_expr(P));
                expect_op(P, ":");
                nodes_push(P, &n->kwnames_vals, parse_expr(P));
            }
            expect_op(P, "}");
            break;
        }
        /* fallthrough */
    default:
        perr(P, t->line, t->col, "unexpected %s", tok_desc(t));
    }
    P->depth--;
    return n;
}

static jnode *parse_postfix(parser *P, jnode *n) {
    for (;;) {
        tok *t = peek(P);
        if (is_op(t, ".")) {
            next(P);
            tok *u = next(P);
            jnode *x;
            if (u->t == T_NAME) {
                x = mk(P, JN_ATTR, t);
                x->name = u->s;
            } else if (u->t == T_INT) {
                x = mk(P, JN_INDEX, t);
                x->b = mk(P, JN_LIT, u);
                x->b->lit = jv_int(u->i);
            } else {
                perr(P, u->line, u->col, "expected attribute name after '.'");
            }
            x->a = n;
            n = x;
        } else if (is_op(t, "[")) {
            next(P);
            jnode *parts[3] = {0};
            int colons = 0;
            for (;;) {
                tok *u = peek(P);
                if (is_op(u, "]")) break;
                if (is_op(u, ":")) {
                    next(P);
                    if (++colons > 2) perr(P, u->line, u->col, "too many ':' in slice");
                    continue;
                }
                if (parts[colons]) perr(P, u->line, u->col, "expected ']'");
                parts[colons] = parse_expr(P);
            }
            expect_op(P, "]");
            jnode *x;
            if (colons) {
                x = mk(P, JN_SLICE, t);
                x->b = parts[0];
                x->c = parts[1];
                if (parts[2]) nodes_push(P, &x->args, parts[2]);
            } else {
                if (!parts[0]) perr(P, t->line, t->col, "empty subscript");
                x = mk(P, JN_INDEX, t);
                x->b = parts[0];
            }
            x->a = n;
            n = x;
        } else if (is_op(t, "(")) {
            next(P);
            jnode *x = mk(P, JN_CALL, t);
            x->a = n;
            parse_call_args(P, x);
            n = x;
        } else {
            return n;
        }
    }
}

static jnode *parse_unary(parser *P, int with_filter) {
    enter(P);
    tok *t = peek(P);
    jnode *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next(P);
        n = mk(P, is_op(t, "-") ? JN_NEG : JN_POS, t);
        n->a = parse_unary(P, 0);
    } else {
        n = parse_postfix(P, parse_primary(P));
    }
    if (with_filter) n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static jnode *bin(parser *P, tok *at, jop op, jnode *l, jnode *r) {
    jnode *n = mk(P, JN_BIN, at);
    n->op = op;
    n->a = l;
    n->b = r;
    return n;
}

static jnode *parse_pow(parser *P) {
    jnode *l = parse_unary(P, 1);
    while (is_op(peek(P), "**")) {
        tok *t = next(P);
        l = bin(P, t, JOP_POW, l, parse_unary(P, 1));
    }
    return l;
}

static jnode *parse_math2(parser *P) {
    jnode *l = parse_pow(P);
    for (;;) {
        tok *t = peek(P);
        jop op;
        if (is_op(t, "*")) op = JOP_MUL;
        else if (is_op(t, "/")) op = JOP_DIV;
        else if (is_op(t, "//")) op = JOP_FLOORDIV;
        else if (is_op(t, "%")) op = JOP_MOD;
        else return l;
        next(P);
        l = bin(P, t, op, l, parse_pow(P));
    }
}

static jnode *parse_concat(parser *P) {
    jnode *l = parse_math2(P);
    while (is_op(peek(P), "~")) {
        tok *t = next(P);
        l = bin(P, t, JOP_CONCAT, l, parse_math2(P));
    }
    return l;
}

static jnode *parse_math1(parser *P) {
    jnode *l = parse_concat(P);
    for (;;) {
        tok *t = peek(P);
        if (!is_op(t, "+") && !is_op(t, "-")) return l;
        next(P);
        l = bin(P, t, is_op(t, "+") ? JOP_ADD : JOP_SUB, l, parse_concat(P));
    }
}

static jnode *parse_compare(parser *P) {
    jnode *l = parse_math1(P);
    for (;;) {
        tok *t = peek(P);
        jop op;
        if (is_op(t, "==")) op = JOP_EQ;
        else if (is_op(t, "!=")) op = JOP_NE;
        else if (is_op(t, "<")) op = JOP_LT;
        else if (is_op(t, "<=")) op = JOP_LE;
        else if (is_op(t, ">")) op = JOP_GT;
        else if (is_op(t, ">=")) op = JOP_GE;
        else if (is_name(t, "in")) op = JOP_IN;
        else if (is_name(t, "not") && is_name(peekn(P, 1), "in")) { next(P); op = JOP_NOTIN; }
        else return l;
        next(P);
        l = bin(P, t, op, l, parse_math1(P));
    }
}

static jnode *parse_not(parser *P) {
    tok *t = peek(P);
    if (is_name(t, "not")) {
        next(P);
        enter(P);
        jnode *n = mk(P, JN_NOT, t);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static jnode *parse_and(parser *P) {
    jnode *l = parse_not(P);
    while (is_name(peek(P), "and")) {
        tok *t = next(P);
        jnode *n = mk(P, JN_AND, t);
        n->a = l;
        n->b = parse_not(P);
        l = n;
    }
    return l;
}

static jnode *parse_or(parser *P) {
    jnode *l = parse_and(P);
    while (is_name(peek(P), "or")) {
        tok *t = next(P);
        jnode *n = mk(P, JN_OR, t);
        n->a = l;
        n->b = parse_and(P);
        l = n;
    }
    return l;
}

static jnode *parse_expr(parser *P) {
    enter(P);
    jnode *n = parse_or(P);
    while (is_name(peek(P), "if")) {
        tok *t = next(P);
        jnode *c = mk(P, JN_COND, t);
        c->a = parse_or(P);   /* condition */
        c->b = n;             /* value when true */
        if (is_name(peek(P), "else")) {
            next(P);
            c->c = parse_expr(P);
        }
        n = c;
    }
    P->depth--;
    return n;
}

/* expr or "a, b, c" (a tuple without parentheses) */
static jnode *parse_tuple_expr(parser *P, int no_cond) {
    tok *t = peek(P);
    jnode *e = no_cond ? parse_or(P) : parse_expr(P);
    if (!is_op(peek(P), ",")) return e;
    jnode *n = mk(P, JN_TUPLE, t);
    nodes_push(P, &n->args, e);
    while (is_op(peek(P), ",")) {
        next(P);
        tok *u = peek(P);
        if (u->t == T_BEND || u->t == T_VEND || is_op(u, "=") || is_name(u, "in")) break;
        nodes_push(P, &n->args, no_cond ? parse_or(P) : parse_expr(P));
    }
    return n;
}

/* ---- statements ---- */

static const char *parse_body(parser *P, jnodes *body, const char *const *ends);

static void end_tag(parser *P) { expect_t(P, T_BEND, "'%}'"); }

/* target: name | name.attr | name, name */
static jnode *parse_target(parser *P, int allow_attr) {
    tok *t = peek(P);
    const char *nm = expect_name(P);
    jnode *n = mk(P, JN_NAME, t);
    n->name = nm;
    if (allow_attr && is_op(peek(P), ".")) {
        next(P);
        jnode *x = mk(P, JN_ATTR, t);
        x->a = n;
        x->name = expect_name(P);
        return x;
    }
    if (is_op(peek(P), ",")) {
        jnode *tp = mk(P, JN_TUPLE, t);
        nodes_push(P, &tp->args, n);
        while (is_op(peek(P), ",")) {
            next(P);
            tok *u = peek(P);
            jnode *m = mk(P, JN_NAME, u);
            m->name = expect_name(P);
            nodes_push(P, &tp->args, m);
        }
        return tp;
    }
    return n;
}

static void parse_params(parser *P, jnode *n) {
    size_t cap = 0;
    expect_op(P, "(");
    while (!is_op(peek(P), ")")) {
        if (n->nparams) expect_op(P, ",");
        if (is_op(peek(P), ")")) break;
        const char *pn = expect_name(P);
        jnode *d = NULL;
        if (is_op(peek(P), "=")) {
            next(P);
            d = parse_expr(P);
        }
        if (n->nparams == cap) {
            cap = cap ? cap * 2 : 4;
            const char **np = jarena__alloc(P->a, cap * sizeof *np);
            jnode **nd = jarena__alloc(P->a, cap * sizeof *nd);
            if (n->nparams) {
                memcpy(np, n->params, n->nparams * sizeof *np);
                memcpy(nd, n->defaults, n->nparams * sizeof *nd);
            }
            n->params = np;
            n->defaults = nd;
        }
        n->params[n->nparams] = pn;
        n->defaults[n->nparams] = d;
        n->nparams++;
    }
    expect_op(P, ")");
}

/* Placeholder variable holding a block's rendered body in {% filter %} and
 * {% set x | f %}: a name no template can spell. */
#define BODY_VAR "\x01body"

static jnode *parse_stmt(parser *P, tok *at) {
    tok *kw = next(P);
    if (kw->t != T_NAME) perr(P, kw->line, kw->col, "expected a statement name, got %s", tok_desc(kw));
    const char *k = kw->s;
    jnode *n;
    if (!strcmp(k, "if")) {
        n = mk(P, JN_IF, at);
        n->a = parse_expr(P);
        end_tag(P);
        jnode *cur = n;
        for (;;) {
            static const char *const ends[] = {"elif", "else", "endif", NULL};
            const char *e = parse_body(P, &cur->body, ends);
            if (!strcmp(e, "elif")) {
                jnode *x = mk(P, JN_IF, peek(P));
                x->a = parse_expr(P);
                end_tag(P);
                nodes_push(P, &cur->orelse, x);
                cur = x;
            } else if (!strcmp(e, "else")) {
                end_tag(P);
                static const char *const ends2[] = {"endif", NULL};
                parse_body(P, &cur->orelse, ends2);
                end_tag(P);
                break;
            } else {
                end_tag(P);
                break;
            }
        }
        return n;
    }
    if (!strcmp(k, "for")) {
        n = mk(P, JN_FOR, at);
        n->a = parse_target(P, 0);
        tok *t = next(P);
        if (!is_name(t, "in")) perr(P, t->line, t->col, "expected 'in' in for loop");
        n->b = parse_tuple_expr(P, 1);
        if (is_name(peek(P), "if")) {
            next(P);
            n->c = parse_expr(P);
        }
        if (is_name(peek(P), "recursive")) {
            tok *r = peek(P);
            perr(P, r->line, r->col, "recursive loops are not supported");
        }
        end_tag(P);
        static const char *const ends[] = {"else", "endfor", NULL};
        const char *e = parse_body(P, &n->body, ends);
        end_tag(P);
        if (!strcmp(e, "else")) {
            static const char *const ends2[] = {"endfor", NULL};
            parse_body(P, &n->orelse, ends2);
            end_tag(P);
        }
        return n;
    }
    if (!strcmp(k, "set")) {
        jnode *target = parse_target(P, 1);
        if (is_op(peek(P), "=")) {
            next(P);
            n = mk(P, JN_SET, at);
            n->a = target;
            n->b = parse_tuple_expr(P, 0);
            end_tag(P);
            return n;
        }
        n = mk(P, JN_SETBLOCK, at);
        n->a = target;
        if (is_op(peek(P), "|")) {
            jnode *ph = mk(P, JN_NAME, at);
            ph->name = BODY_VAR;
            jnode *f = ph;
            while (is_op(peek(P), "|")) {
                next(P);
                f = parse_filter(P, f);
            }
            n->b = f;
        }
        end_tag(P);
        static const char *const ends[] = {"endset", NULL};
        parse_body(P, &n->body, ends);
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "macro")) {
        n = mk(P, JN_MACRO, at);
        n->name = expect_name(P);
        parse_params(P, n);
        end_tag(P);
        static const char *const ends[] = {"endmacro", NULL};
        parse_body(P, &n->body, ends);
        if (peek(P)->t == T_NAME) next(P);  /* {% endmacro name %} */
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "call")) {
        n = mk(P, JN_CALLBLOCK, at);
        if (is_op(peek(P), "(")) parse_params(P, n);
        n->a = parse_expr(P);
        if (n->a->k != JN_CALL) perr(P, n->line, n->col, "call block needs a macro call");
        end_tag(P);
        static const char *const ends[] = {"endcall", NULL};
        parse_body(P, &n->body, ends);
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "filter")) {
        n = mk(P, JN_FILTERBLOCK, at);
        jnode *ph = mk(P, JN_NAME, at);
        ph->name = BODY_VAR;
        jnode *f = parse_filter(P, ph);
        while (is_op(peek(P), "|")) {
            next(P);
            f = parse_filter(P, f);
        }
        n->a = f;
        end_tag(P);
        static const char *const ends[] = {"endfilter", NULL};
        parse_body(P, &n->body, ends);
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "generation")) {
        /* HF's assistant-mask marker: renders its body unchanged */
        n = mk(P, JN_BODY, at);
        end_tag(P);
        static const char *const ends[] = {"endgeneration", NULL};
        parse_body(P, &n->body, ends);
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "break") || !strcmp(k, "continue")) {
        n = mk(P, k[0] == 'b' ? JN_BREAK : JN_CONTINUE, at);
        end_tag(P);
        return n;
    }
    if (!strcmp(k, "do")) {
        n = mk(P, JN_DO, at);
        n->a = parse_tuple_expr(P, 0);
        end_tag(P);
        return n;
    }
    perr(P, kw->line, kw->col, "unknown or unsupported statement '%s'", k);
}

/* Parses nodes until a {% name %} with name in ends (the name is consumed,
 * the rest of that tag is left for the caller); returns that name. ends NULL
 * means parse to the end of the template. */
static const char *parse_body(parser *P, jnodes *body, const char *const *ends) {
    enter(P);
    for (;;) {
        tok *t = next(P);
        switch (t->t) {
        case T_EOF:
            if (ends) {
                int last = 0;  /* the closing tag ("endif", not "elif") */
                while (ends[last + 1]) last++;
                perr(P, t->line, t->col, "unexpected end of template, expected '%s'", ends[last]);
            }
            P->depth--;
            return NULL;
        case T_TEXT: {
            jnode *n = mk(P, JN_TEXT, t);
            n->lit = jv_str(P->a, t->s, t->n);
            nodes_push(P, body, n);
            break;
        }
        case T_VBEGIN: {
            jnode *n = mk(P, JN_OUT, t);
            n->a = parse_tuple_expr(P, 0);
            expect_t(P, T_VEND, "'}}'");
            nodes_push(P, body, n);
            break;
        }
        case T_BBEGIN: {
            tok *kw = peek(P);
            if (kw->t == T_NAME && ends) {
                for (int i = 0; ends[i]; i++)
                    if (!strcmp(kw->s, ends[i])) {
                        next(P);
                        P->depth--;
                        return ends[i];
                    }
            }
            if (kw->t == T_NAME && (!strncmp(kw->s, "end", 3) || !strcmp(kw->s, "else") ||
                                    !strcmp(kw->s, "elif"))) {
                int last = 0;
                while (ends && ends[last + 1]) last++;
                if (ends) perr(P, kw->line, kw->col, "unexpected '%s', expected '%s'", kw->s, ends[last]);
                perr(P, kw->line, kw->col, "unexpected '%s'", kw->s);
            }
            nodes_push(P, body, parse_stmt(P, t));
            break;
        }
        default:
            perr(P, t->line, t->col, "unexpected %s", tok_desc(t));
        }
    }
}

jnode *jinja__parse(jarena *a, const char *src, size_t len, char *err, size_t errlen) {
    parser P;
    memset(&P, 0, sizeof P);
    P.a = a;
    P.err = err;
    P.errlen = errlen;
    jmp_buf *saved = a->fail;
    if (setjmp(P.jb)) {
        a->fail = saved;
        return NULL;
    }
    a->fail = &P.jb;
    a->errbuf = err;
    a->errlen = errlen;
    /* Jinja normalizes every newline (\r\n, \r) in the template to \n. */
    char *norm = jarena__alloc(a, len + 1);
    size_t nl = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            norm[nl++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            norm[nl++] = src[i];
        }
    }
    norm[nl] = 0;
    P.src = norm;
    P.len = nl;
    lex(&P);
    jnode *root = jarena__alloc(a, sizeof *root);
    memset(root, 0, sizeof *root);
    root->k = JN_BODY;
    root->line = root->col = 1;
    parse_body(&P, &root->body, NULL);
    a->fail = saved;
    return root;
}
