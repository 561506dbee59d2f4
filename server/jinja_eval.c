/* jinja_eval.c -- tree-walking evaluator for the chat-template Jinja subset.
 *
 * Scoping follows Jinja2: a for-loop body and a macro body get their own
 * scope; if-blocks do not. Macros see their defining scope live (a closure),
 * which is how top-level variables set before a call are visible inside.
 * Every loop iteration and statement counts toward a step limit, every
 * recursion toward a depth limit, and the output toward a size limit, so no
 * template can hang or exhaust the process.
 */
#include "jinja.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct scope {
    jdict *vars;
    struct scope *parent;
} scope;

enum { FN_MACRO, FN_BUILTIN, FN_CALLER };

struct jfunc {
    int kind;
    const char *name;
    const jnode *node;   /* MACRO: the macro; CALLER: the call block */
    scope *closure;
    jv caller;           /* MACRO invoked from a call block: its caller() */
};

enum { FLOW_NORMAL, FLOW_BREAK, FLOW_CONTINUE };

#define BODY_VAR "\x01body"

void jctx_fail(jctx *c, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->cur) snprintf(c->err, c->errlen, "%d:%d: %s", c->cur->line, c->cur->col, msg);
    else snprintf(c->err, c->errlen, "%s", msg);
    longjmp(c->jb, 1);
}

static jv eval(jctx *c, scope *s, const jnode *n);
static int exec_body(jctx *c, scope *s, const jnodes *body);
static jv call_caller(jctx *c, jfunc *f, jargs *a);

static scope *scope_new(jctx *c, scope *parent) {
    scope *s = jarena__alloc(c->a, sizeof *s);
    s->vars = jv_newdict(c->a).u.d;
    s->parent = parent;
    return s;
}

/* Sets name in s; the key string is allocated only when name is new there,
 * so loop iterations that rebind the same names allocate nothing. */
static void dict_set_name(jctx *c, jdict *d, const char *name, jv v) {
    jv *slot = jdict_gets(d, name);
    if (slot) *slot = v;
    else jdict_set(c->a, d, jv_cstr(c->a, name), v);
}

static void scope_set(jctx *c, scope *s, const char *name, jv v) { dict_set_name(c, s->vars, name, v); }

static const char *const builtin_fns[] = {"range", "namespace", "dict", "raise_exception",
                                          "strftime_now", NULL};

static jv lookup(jctx *c, scope *s, const char *name) {
    for (scope *p = s; p; p = p->parent) {
        jv *v = jdict_gets(p->vars, name);
        if (v) return *v;
    }
    for (int i = 0; builtin_fns[i]; i++)
        if (!strcmp(builtin_fns[i], name)) {
            jfunc *f = jarena__alloc(c->a, sizeof *f);
            memset(f, 0, sizeof *f);
            f->kind = FN_BUILTIN;
            f->name = builtin_fns[i];
            jv v = {.t = JV_FUNC};
            v.u.fn = f;
            return v;
        }
    return jv_undef();
}

static void enter(jctx *c) {
    if (++c->depth > c->depth_limit) jctx_fail(c, "template recursion too deep");
}

void jinja__charge(jctx *c, uint64_t units) {
    c->steps += units;
    if (c->steps > c->step_limit)
        jctx_fail(c, "template exceeded %llu evaluation steps", (unsigned long long)c->step_limit);
}

static void step(jctx *c) {
    if (++c->steps > c->step_limit)
        jctx_fail(c, "template exceeded %llu evaluation steps", (unsigned long long)c->step_limit);
}

static void out_put(jctx *c, const char *s, size_t n) {
    if (c->out->n + n > c->out_limit) jctx_fail(c, "template output exceeds %zu bytes", c->out_limit);
    jbuf_put(c->a, c->out, s, n);
}

/* ---- arguments ---- */

static void eval_args(jctx *c, scope *s, const jnode *n, jargs *a, size_t extra_front) {
    a->n = n->args.n + extra_front;
    a->v = jarena__alloc(c->a, (a->n + 1) * sizeof(jv));
    for (size_t i = 0; i < n->args.n; i++) a->v[extra_front + i] = eval(c, s, n->args.v[i]);
    a->nk = n->kwnames_vals.n;
    a->kn = n->kwnames;
    a->kv = jarena__alloc(c->a, (a->nk + 1) * sizeof(jv));
    for (size_t i = 0; i < a->nk; i++) a->kv[i] = eval(c, s, n->kwnames_vals.v[i]);
}

jv jargs_get(jargs *a, size_t pos, const char *kw, jv dflt) {
    if (kw)
        for (size_t i = 0; i < a->nk; i++)
            if (!strcmp(a->kn[i], kw)) return a->kv[i];
    if (pos < a->n) return a->v[pos];
    return dflt;
}

/* ---- macros ---- */

static jv call_macro(jctx *c, jfunc *f, jargs *a) {
    const jnode *m = f->node;
    enter(c);
    scope *s = scope_new(c, f->closure);
    size_t np = f->kind == FN_MACRO ? m->nparams : m->nparams;
    jv varargs = jv_newlist(c->a), kwargs = jv_newdict(c->a);
    varargs.u.l->tuple = 1;
    for (size_t i = np; i < a->n; i++) jlist_push(c->a, varargs.u.l, a->v[i]);
    for (size_t i = 0; i < np; i++) {
        jv v = {.t = JV_UNDEF};
        int have = 0;
        if (i < a->n) { v = a->v[i]; have = 1; }
        for (size_t k = 0; k < a->nk; k++)
            if (!strcmp(a->kn[k], m->params[i])) { v = a->kv[k]; have = 1; }
        if (!have && m->defaults[i]) v = eval(c, s, m->defaults[i]);
        scope_set(c, s, m->params[i], v);
    }
    for (size_t k = 0; k < a->nk; k++) {
        int known = 0;
        for (size_t i = 0; i < np; i++)
            if (!strcmp(a->kn[k], m->params[i])) known = 1;
        if (!known) jdict_set(c->a, kwargs.u.d, jv_cstr(c->a, a->kn[k]), a->kv[k]);
    }
    scope_set(c, s, "varargs", varargs);
    scope_set(c, s, "kwargs", kwargs);
    if (f->kind == FN_MACRO && f->caller.t == JV_FUNC) scope_set(c, s, "caller", f->caller);
    jbuf buf = {0}, *saved = c->out;
    jbuf_put(c->a, &buf, "", 0);
    c->out = &buf;
    exec_body(c, s, &m->body);
    c->out = saved;
    c->depth--;
    return jv_str(c->a, buf.p, buf.n);
}

jv jinja__call(jctx *c, jv fn, jargs *a) {
    if (fn.t != JV_FUNC) jctx_fail(c, "%s is not callable", jv_typename(fn));
    jfunc *f = fn.u.fn;
    if (f->kind == FN_BUILTIN) {
        jv r;
        if (!jinja__global_fn(c, f->name, a, &r)) jctx_fail(c, "unknown function '%s'", f->name);
        return r;
    }
    if (f->kind == FN_CALLER) return call_caller(c, f, a);
    return call_macro(c, f, a);
}

/* ---- expressions ---- */

jv jinja__iter_list(jctx *c, jv v) {
    if (v.t == JV_LIST) return v;
    jv l = jv_newlist(c->a);
    if (v.t == JV_DICT) {
        for (size_t i = 0; i < v.u.d->n; i++) jlist_push(c->a, l.u.l, v.u.d->k[i]);
    } else if (v.t == JV_STR) {
        const char *p = v.u.s->s, *e = p + v.u.s->len;
        while (p < e) {
            const char *q = p + 1;
            while (q < e && ((unsigned char)*q & 0xC0) == 0x80) q++;
            jlist_push(c->a, l.u.l, jv_str(c->a, p, (size_t)(q - p)));
            p = q;
        }
    } else if (v.t != JV_UNDEF && v.t != JV_NONE) {
        /* none iterates as empty, as in llama.cpp (functionary filters a
         * `tools = none`) */
        jctx_fail(c, "%s is not iterable", jv_typename(v));
    }
    return l;
}

static int64_t norm_index(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

static jv do_index(jctx *c, jv obj, jv idx) {
    switch (obj.t) {
    case JV_DICT: {
        jv *r = jdict_get(obj.u.d, idx);
        return r ? *r : jv_undef();
    }
    case JV_LIST:
        if (idx.t == JV_INT || idx.t == JV_BOOL) {
            int64_t i = norm_index(idx.u.i, (int64_t)obj.u.l->n);
            if (i >= 0 && i < (int64_t)obj.u.l->n) return obj.u.l->v[i];
            return jv_undef();
        }
        return jv_undef();
    case JV_STR:
        if (idx.t == JV_INT) {
            size_t n = jutf8_len(obj.u.s->s, obj.u.s->len);
            int64_t i = norm_index(idx.u.i, (int64_t)n);
            if (i < 0 || i >= (int64_t)n) return jv_undef();
            size_t b = jutf8_offset(obj.u.s->s, obj.u.s->len, (size_t)i);
            size_t e = jutf8_offset(obj.u.s->s, obj.u.s->len, (size_t)i + 1);
            return jv_str(c->a, obj.u.s->s + b, e - b);
        }
        return jv_undef();
    default:
        return jv_undef();
    }
}

/* Python slice semantics over n elements. Fills the selected indices. */
static size_t slice_indices(jctx *c, int64_t n, jv start, jv stop, jv stepv, int64_t **out) {
    int64_t st = 1;
    if (stepv.t == JV_INT) st = stepv.u.i;
    if (st == 0) jctx_fail(c, "slice step cannot be zero");
    int64_t lo, hi;
    if (st > 0) {
        lo = start.t == JV_INT ? norm_index(start.u.i, n) : 0;
        hi = stop.t == JV_INT ? norm_index(stop.u.i, n) : n;
        if (lo < 0) lo = 0;
        if (hi > n) hi = n;
    } else {
        lo = start.t == JV_INT ? norm_index(start.u.i, n) : n - 1;
        hi = stop.t == JV_INT ? norm_index(stop.u.i, n) : -1;
        if (lo > n - 1) lo = n - 1;
        if (hi < -1) hi = -1;
    }
    size_t cnt = 0;
    int64_t *idx = jarena__alloc(c->a, (size_t)(n > 0 ? n : 1) * sizeof *idx);
    /* stepping stops before i + st could overflow */
    if (st > 0)
        for (int64_t i = lo; i < hi; i = hi - i > st ? i + st : hi) idx[cnt++] = i;
    else
        for (int64_t i = lo; i > hi; i = i - hi > -st ? i + st : hi) idx[cnt++] = i;
    *out = idx;
    return cnt;
}

static jv do_slice(jctx *c, jv obj, jv start, jv stop, jv stepv) {
    int64_t *idx;
    if (obj.t == JV_LIST) {
        size_t cnt = slice_indices(c, (int64_t)obj.u.l->n, start, stop, stepv, &idx);
        jv l = jv_newlist(c->a);
        for (size_t i = 0; i < cnt; i++) jlist_push(c->a, l.u.l, obj.u.l->v[idx[i]]);
        return l;
    }
    if (obj.t == JV_STR) {
        const char *s = obj.u.s->s;
        size_t len = obj.u.s->len, n = jutf8_len(s, len);
        size_t cnt = slice_indices(c, (int64_t)n, start, stop, stepv, &idx);
        jbuf b = {0};
        jbuf_put(c->a, &b, "", 0);
        if (n == len) {
            for (size_t i = 0; i < cnt; i++) jbuf_putc(c->a, &b, s[idx[i]]);
        } else {
            for (size_t i = 0; i < cnt; i++) {
                size_t bo = jutf8_offset(s, len, (size_t)idx[i]);
                size_t eo = jutf8_offset(s, len, (size_t)idx[i] + 1);
                jbuf_put(c->a, &b, s + bo, eo - bo);
            }
        }
        return jv_str(c->a, b.p, b.n);
    }
    /* like Jinja's getitem, a subscript that does not apply is undefined */
    (void)c;
    return jv_undef();
}

static int contains(jctx *c, jv hay, jv needle) {
    if (hay.t == JV_LIST) jinja__charge(c, hay.u.l->n);
    else if (hay.t == JV_STR) jinja__charge(c, hay.u.s->len >> 6);
    switch (hay.t) {
    case JV_STR:
        if (needle.t != JV_STR) jctx_fail(c, "'in <string>' requires a string, not %s", jv_typename(needle));
        if (!needle.u.s->len) return 1;
        return memmem(hay.u.s->s, hay.u.s->len, needle.u.s->s, needle.u.s->len) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_equal(hay.u.l->v[i], needle)) return 1;
        return 0;
    case JV_DICT: return jdict_get(hay.u.d, needle) != NULL;
    case JV_UNDEF: case JV_NONE: return 0;
    default: jctx_fail(c, "argument of type %s is not iterable", jv_typename(hay));
    }
}

static int isnum(jv v) { return v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL; }
static double num(jv v) { return v.t == JV_FLOAT ? v.u.f : (double)v.u.i; }

static jv binop(jctx *c, jop op, jv l, jv r) {
    switch (op) {
    case JOP_CONCAT: {
        jv a = jv_to_string(c->a, l), b = jv_to_string(c->a, r);
        if (a.u.s->len + b.u.s->len > c->out_limit) jctx_fail(c, "string too large");
        jv res = jv_str(c->a, NULL, 0);
        jbuf buf = {0};
        jbuf_put(c->a, &buf, a.u.s->s, a.u.s->len);
        jbuf_put(c->a, &buf, b.u.s->s, b.u.s->len);
        res = jv_str(c->a, buf.p, buf.n);
        return res;
    }
    case JOP_EQ: case JOP_NE:
        if (l.t == JV_LIST && r.t == JV_LIST) jinja__charge(c, l.u.l->n);
        else if (l.t == JV_DICT && r.t == JV_DICT) jinja__charge(c, l.u.d->n);
        else if (l.t == JV_STR && r.t == JV_STR) jinja__charge(c, l.u.s->len >> 6);
        return jv_bool(jv_equal(l, r) == (op == JOP_EQ));
    case JOP_LT: case JOP_LE: case JOP_GT: case JOP_GE: {
        int ok, cmp = jv_compare(l, r, &ok);
        if (!ok) jctx_fail(c, "cannot compare %s with %s", jv_typename(l), jv_typename(r));
        return jv_bool(op == JOP_LT ? cmp < 0 : op == JOP_LE ? cmp <= 0 : op == JOP_GT ? cmp > 0 : cmp >= 0);
    }
    case JOP_IN: return jv_bool(contains(c, r, l));
    case JOP_NOTIN: return jv_bool(!contains(c, r, l));
    default: break;
    }
    if (op == JOP_ADD) {
        /* llama.cpp treats an undefined operand of string + as "" */
        if (l.t == JV_STR && r.t == JV_UNDEF) return l;
        if (l.t == JV_UNDEF && r.t == JV_STR) return r;
        if (l.t == JV_STR && r.t == JV_STR) {
            if (l.u.s->len + r.u.s->len > c->out_limit) jctx_fail(c, "string too large");
            jbuf buf = {0};
            jbuf_put(c->a, &buf, l.u.s->s, l.u.s->len);
            jbuf_put(c->a, &buf, r.u.s->s, r.u.s->len);
            return jv_str(c->a, buf.p, buf.n);
        }
        if (l.t == JV_LIST && r.t == JV_LIST) {
            jv res = jv_newlist(c->a);
            for (size_t i = 0; i < l.u.l->n; i++) jlist_push(c->a, res.u.l, l.u.l->v[i]);
            for (size_t i = 0; i < r.u.l->n; i++) jlist_push(c->a, res.u.l, r.u.l->v[i]);
            return res;
        }
    }
    if (op == JOP_MUL && (l.t == JV_INT || l.t == JV_BOOL) && (r.t == JV_STR || r.t == JV_LIST)) {
        jv t = l;  /* n * seq == seq * n */
        l = r;
        r = t;
    }
    if (op == JOP_MUL && ((l.t == JV_STR || l.t == JV_LIST) && (r.t == JV_INT || r.t == JV_BOOL))) {
        int64_t times = r.u.i < 0 ? 0 : r.u.i;
        size_t unit = l.t == JV_STR ? l.u.s->len : l.u.l->n * sizeof(jv);
        if (unit && (uint64_t)times > c->out_limit / unit) jctx_fail(c, "repetition result too large");
        if (l.t == JV_STR) {
            size_t len = l.u.s->len * (size_t)times;
            jv res = jv_str(c->a, NULL, len);
            for (int64_t i = 0; i < times; i++) memcpy(res.u.s->s + (size_t)i * l.u.s->len, l.u.s->s, l.u.s->len);
            return res;
        }
        jv res = jv_newlist(c->a);
        for (int64_t i = 0; i < times; i++)
            for (size_t k = 0; k < l.u.l->n; k++) jlist_push(c->a, res.u.l, l.u.l->v[k]);
        return res;
    }
    if (op == JOP_MOD && l.t == JV_STR) return jinja__percent_format(c, l, r);
    if (!isnum(l) || !isnum(r))
        jctx_fail(c, "unsupported operand types for arithmetic: %s and %s", jv_typename(l), jv_typename(r));
    int ints = l.t != JV_FLOAT && r.t != JV_FLOAT;
    int64_t a = l.u.i, b = r.u.i, res;
    double x = num(l), y = num(r);
    switch (op) {
    case JOP_ADD:
        if (ints && !__builtin_add_overflow(a, b, &res)) return jv_int(res);
        return jv_float(x + y);
    case JOP_SUB:
        if (ints && !__builtin_sub_overflow(a, b, &res)) return jv_int(res);
        return jv_float(x - y);
    case JOP_MUL:
        if (ints && !__builtin_mul_overflow(a, b, &res)) return jv_int(res);
        return jv_float(x * y);
    case JOP_DIV:
        if (y == 0) jctx_fail(c, "division by zero");
        return jv_float(x / y);
    case JOP_FLOORDIV:
        if (y == 0) jctx_fail(c, "division by zero");
        if (ints) {
            if (a == INT64_MIN && b == -1) return jv_float(-(double)INT64_MIN);
            int64_t q = a / b;
            if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
            return jv_int(q);
        }
        return jv_float(floor(x / y));
    case JOP_MOD:
        if (y == 0) jctx_fail(c, "modulo by zero");
        if (ints) {
            if (b == -1) return jv_int(0);
            int64_t m = a % b;
            if (m != 0 && ((m < 0) != (b < 0))) m += b;
            return jv_int(m);
        }
        {
            double m = fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return jv_float(m);
        }
    case JOP_POW:
        if (ints && b >= 0) {
            int64_t r2 = 1, base = a;
            int64_t e = b;
            int ovf = 0;
            while (e > 0 && !ovf) {
                if (e & 1) ovf |= __builtin_mul_overflow(r2, base, &r2);
                e >>= 1;
                if (e) ovf |= __builtin_mul_overflow(base, base, &base);
            }
            if (!ovf) return jv_int(r2);
        }
        return jv_float(pow(x, y));
    default: break;
    }
    jctx_fail(c, "bad operator");
}

static jv eval_call(jctx *c, scope *s, const jnode *n) {
    const jnode *callee = n->a;
    jargs a;
    if (callee->k == JN_ATTR) {
        jv self = eval(c, s, callee->a);
        if (self.t == JV_STR || self.t == JV_LIST || self.t == JV_DICT) {
            jv *field = self.t == JV_DICT ? jdict_gets(self.u.d, callee->name) : NULL;
            if (!field || field->t != JV_FUNC) {
                eval_args(c, s, n, &a, 0);
                const jnode *saved = c->cur;
                c->cur = n;
                jv r;
                if (jinja__method(c, self, callee->name, &a, &r)) {
                    c->cur = saved;
                    return r;
                }
                if (!field) jctx_fail(c, "%s has no method '%s'", jv_typename(self), callee->name);
            }
        }
    }
    jv fn = eval(c, s, callee);
    if (fn.t != JV_FUNC) {
        if (callee->k == JN_NAME) jctx_fail(c, "'%s' is undefined or not callable", callee->name);
        jctx_fail(c, "%s is not callable", jv_typename(fn));
    }
    eval_args(c, s, n, &a, 0);
    const jnode *saved = c->cur;
    c->cur = n;
    jv r = jinja__call(c, fn, &a);
    c->cur = saved;
    return r;
}

static jv eval(jctx *c, scope *s, const jnode *n) {
    enter(c);
    const jnode *saved = c->cur;
    c->cur = n;
    jv r;
    switch (n->k) {
    case JN_LIT: r = n->lit; break;
    case JN_NAME: r = lookup(c, s, n->name); break;
    case JN_LIST: case JN_TUPLE:
        r = jv_newlist(c->a);
        r.u.l->tuple = n->k == JN_TUPLE;
        for (size_t i = 0; i < n->args.n; i++) jlist_push(c->a, r.u.l, eval(c, s, n->args.v[i]));
        break;
    case JN_DICT:
        r = jv_newdict(c->a);
        for (size_t i = 0; i < n->args.n; i++) {
            jv k = eval(c, s, n->args.v[i]);
            jdict_set(c->a, r.u.d, k, eval(c, s, n->kwnames_vals.v[i]));
        }
        break;
    case JN_ATTR: {
        jv o = eval(c, s, n->a);
        if (o.t == JV_DICT) {
            jv *v = jdict_gets(o.u.d, n->name);
            r = v ? *v : jv_undef();
        } else {
            r = jv_undef();
        }
        break;
    }
    case JN_INDEX: {
        jv o = eval(c, s, n->a);
        r = do_index(c, o, eval(c, s, n->b));
        break;
    }
    case JN_SLICE: {
        jv o = eval(c, s, n->a);
        jv st = n->b ? eval(c, s, n->b) : jv_none();
        jv sp = n->c ? eval(c, s, n->c) : jv_none();
        jv stp = n->args.n ? eval(c, s, n->args.v[0]) : jv_none();
        r = do_slice(c, o, st, sp, stp);
        break;
    }
    case JN_CALL: r = eval_call(c, s, n); break;
    case JN_FILTER: {
        jv x = eval(c, s, n->a);
        jargs a;
        eval_args(c, s, n, &a, 0);
        c->cur = n;
        if (!jinja__filter(c, n->name, x, &a, &r)) jctx_fail(c, "unknown filter '%s'", n->name);
        break;
    }
    case JN_TEST: {
        jv x = eval(c, s, n->a);
        jargs a;
        eval_args(c, s, n, &a, 0);
        c->cur = n;
        int res;
        if (!jinja__test(c, n->name, x, &a, &res)) jctx_fail(c, "unknown test '%s'", n->name);
        r = jv_bool(n->neg ? !res : res);
        break;
    }
    case JN_NOT: r = jv_bool(!jv_truthy(eval(c, s, n->a))); break;
    case JN_NEG: case JN_POS: {
        jv x = eval(c, s, n->a);
        if (x.t == JV_INT || x.t == JV_BOOL) {
            if (n->k == JN_NEG && x.u.i == INT64_MIN) r = jv_float(-(double)x.u.i);  /* past int64 */
            else r = jv_int(n->k == JN_NEG ? -x.u.i : x.u.i);
        } else if (x.t == JV_FLOAT) {
            r = jv_float(n->k == JN_NEG ? -x.u.f : x.u.f);
        } else {
            jctx_fail(c, "bad operand type for unary %c: %s", n->k == JN_NEG ? '-' : '+', jv_typename(x));
        }
        break;
    }
    case JN_BIN: {
        jv l = eval(c, s, n->a);
        jv rr = eval(c, s, n->b);
        c->cur = n;
        r = binop(c, n->op, l, rr);
        break;
    }
    case JN_AND: {
        jv l = eval(c, s, n->a);
        r = jv_truthy(l) ? eval(c, s, n->b) : l;
        break;
    }
    case JN_OR: {
        jv l = eval(c, s, n->a);
        r = jv_truthy(l) ? l : eval(c, s, n->b);
        break;
    }
    case JN_COND:
        if (jv_truthy(eval(c, s, n->a))) r = eval(c, s, n->b);
        else r = n->c ? eval(c, s, n->c) : jv_undef();
        break;
    default:
        jctx_fail(c, "statement used as expression");
    }
    c->cur = saved;
    c->depth--;
    return r;
}

/* ---- statements ---- */

static void assign(jctx *c, scope *s, const jnode *target, jv v) {
    if (target->k == JN_NAME) {
        scope_set(c, s, target->name, v);
    } else if (target->k == JN_ATTR) {
        jv o = eval(c, s, target->a);
        if (o.t != JV_DICT) jctx_fail(c, "cannot set attribute '%s' on %s", target->name, jv_typename(o));
        jdict_set(c->a, o.u.d, jv_cstr(c->a, target->name), v);
    } else {  /* tuple unpacking */
        jv l = jinja__iter_list(c, v);
        if (l.u.l->n != target->args.n)
            jctx_fail(c, "cannot unpack %zu values into %zu names", l.u.l->n, target->args.n);
        for (size_t i = 0; i < target->args.n; i++) assign(c, s, target->args.v[i], l.u.l->v[i]);
    }
}

static jv render_to_string(jctx *c, scope *s, const jnodes *body) {
    jbuf buf = {0}, *saved = c->out;
    jbuf_put(c->a, &buf, "", 0);
    c->out = &buf;
    exec_body(c, s, body);
    c->out = saved;
    return jv_str(c->a, buf.p, buf.n);
}

/* Fills the loop object for iteration i of n. Its 11 keys are created on
 * the first iteration and then updated in place by position. */
static void set_loop(jctx *c, jdict *d, size_t i, size_t n, jlist *items) {
    static const char *const keys[] = {"index", "index0", "revindex", "revindex0", "first", "last",
                                       "length", "previtem", "nextitem", "depth", "depth0"};
    jv vals[11] = {
        jv_int((int64_t)i + 1), jv_int((int64_t)i), jv_int((int64_t)(n - i)), jv_int((int64_t)(n - i - 1)),
        jv_bool(i == 0), jv_bool(i + 1 == n), jv_int((int64_t)n), i > 0 ? items->v[i - 1] : jv_undef(),
        i + 1 < n ? items->v[i + 1] : jv_undef(), jv_int(1), jv_int(0)};
    if (d->n == 11) {
        memcpy(d->v, vals, sizeof vals);
        return;
    }
    d->n = 0;
    d->is_ns = JDICT_LOOP;
    for (int k = 0; k < 11; k++) jdict_set(c->a, d, jv_cstr(c->a, keys[k]), vals[k]);
}

static void exec_for(jctx *c, scope *s, const jnode *n) {
    jv it = eval(c, s, n->b);
    c->cur = n;
    jv src = jinja__iter_list(c, it);
    jlist *items = src.u.l;
    if (n->c) {  /* `for x in xs if cond`: filter first so loop.* counts the kept items */
        jv kept = jv_newlist(c->a);
        scope *fs = scope_new(c, s);
        for (size_t i = 0; i < src.u.l->n; i++) {
            step(c);
            assign(c, fs, n->a, src.u.l->v[i]);
            if (jv_truthy(eval(c, fs, n->c))) jlist_push(c->a, kept.u.l, src.u.l->v[i]);
        }
        items = kept.u.l;
    }
    size_t cnt = items->n;
    if (!cnt) {
        exec_body(c, s, &n->orelse);
        return;
    }
    jv loop = jv_newdict(c->a);
    /* One scope serves every iteration: after the first, it is cut back to
     * the loop variables (always its first entries), so names set in an
     * iteration do not leak into the next and nothing is reallocated. */
    scope *ls = scope_new(c, s);
    size_t fixed = 0;
    for (size_t i = 0; i < cnt; i++) {
        step(c);
        if (i) jdict_truncate(c->a, ls->vars, fixed);
        set_loop(c, loop.u.d, i, cnt, items);
        scope_set(c, ls, "loop", loop);
        assign(c, ls, n->a, items->v[i]);
        if (!i) fixed = ls->vars->n;
        int f = exec_body(c, ls, &n->body);
        if (f == FLOW_BREAK) break;
    }
}

static int exec_node(jctx *c, scope *s, const jnode *n) {
    step(c);
    c->cur = n;
    switch (n->k) {
    case JN_TEXT: out_put(c, n->lit.u.s->s, n->lit.u.s->len); return FLOW_NORMAL;
    case JN_OUT: {
        jv v = eval(c, s, n->a);
        if (v.t == JV_STR) {
            out_put(c, v.u.s->s, v.u.s->len);
        } else {
            jbuf b = {0};
            jv_print(c->a, &b, v);
            out_put(c, b.p ? b.p : "", b.n);
        }
        return FLOW_NORMAL;
    }
    case JN_IF:
        if (jv_truthy(eval(c, s, n->a))) return exec_body(c, s, &n->body);
        return exec_body(c, s, &n->orelse);
    case JN_FOR: exec_for(c, s, n); return FLOW_NORMAL;
    case JN_SET: assign(c, s, n->a, eval(c, s, n->b)); return FLOW_NORMAL;
    case JN_SETBLOCK: {
        jv v = render_to_string(c, s, &n->body);
        if (n->b) {
            scope *fs = scope_new(c, s);
            scope_set(c, fs, BODY_VAR, v);
            v = eval(c, fs, n->b);
        }
        assign(c, s, n->a, v);
        return FLOW_NORMAL;
    }
    case JN_MACRO: {
        jfunc *f = jarena__alloc(c->a, sizeof *f);
        memset(f, 0, sizeof *f);
        f->kind = FN_MACRO;
        f->name = n->name;
        f->node = n;
        f->closure = s;
        jv v = {.t = JV_FUNC};
        v.u.fn = f;
        scope_set(c, s, n->name, v);
        return FLOW_NORMAL;
    }
    case JN_CALLBLOCK: {
        const jnode *call = n->a;
        jv fn = eval(c, s, call->a);
        c->cur = n;
        if (fn.t != JV_FUNC || fn.u.fn->kind != FN_MACRO) jctx_fail(c, "call block target is not a macro");
        jfunc *caller = jarena__alloc(c->a, sizeof *caller);
        memset(caller, 0, sizeof *caller);
        caller->kind = FN_CALLER;
        caller->node = n;
        caller->closure = s;
        jfunc *bound = jarena__alloc(c->a, sizeof *bound);
        *bound = *fn.u.fn;
        bound->caller.t = JV_FUNC;
        bound->caller.u.fn = caller;
        jargs a;
        eval_args(c, s, call, &a, 0);
        jv r = call_macro(c, bound, &a);
        out_put(c, r.u.s->s, r.u.s->len);
        return FLOW_NORMAL;
    }
    case JN_FILTERBLOCK: {
        jv v = render_to_string(c, s, &n->body);
        scope *fs = scope_new(c, s);
        scope_set(c, fs, BODY_VAR, v);
        jv r = jv_to_string(c->a, eval(c, fs, n->a));
        out_put(c, r.u.s->s, r.u.s->len);
        return FLOW_NORMAL;
    }
    case JN_BODY: return exec_body(c, s, &n->body);
    case JN_BREAK: return FLOW_BREAK;
    case JN_CONTINUE: return FLOW_CONTINUE;
    case JN_DO: eval(c, s, n->a); return FLOW_NORMAL;
    default: jctx_fail(c, "expression used as statement");
    }
}

static int exec_body(jctx *c, scope *s, const jnodes *body) {
    enter(c);
    for (size_t i = 0; i < body->n; i++) {
        int f = exec_node(c, s, body->v[i]);
        if (f != FLOW_NORMAL) {
            c->depth--;
            return f;
        }
    }
    c->depth--;
    return FLOW_NORMAL;
}

int jinja__render(const jrender_in *in, jarena *a, char **out, size_t *outlen, char *err,
                  size_t errlen) {
    jctx *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->a = a;
    c->err = err;
    c->errlen = errlen;
    c->out_limit = 64u << 20;
    c->step_limit = in->step_limit ? in->step_limit : 5000000;
    c->depth_limit = 1500;
    c->now = in->now;
    jbuf result = {0};
    c->out = &result;
    if (setjmp(c->jb)) {
        a->fail = NULL;
        free(c);
        return -1;
    }
    a->fail = &c->jb;
    a->errbuf = err;
    a->errlen = errlen;
    jbuf_put(a, &result, "", 0);
    scope *globals = jarena__alloc(a, sizeof *globals);
    globals->vars = in->globals;
    globals->parent = NULL;
    scope *top = scope_new(c, globals);
    exec_body(c, top, &in->root->body);
    a->fail = NULL;
    char *o = malloc(result.n + 1);
    if (!o) {
        snprintf(err, errlen, "out of memory");
        free(c);
        return -1;
    }
    memcpy(o, result.p, result.n + 1);
    *out = o;
    if (outlen) *outlen = result.n;
    free(c);
    return 0;
}

/* Calls caller() from inside a macro invoked by a call block: the call
 * block's body rendered in its own scope with the caller's parameters. */
static jv call_caller(jctx *c, jfunc *f, jargs *a) {
    const jnode *n = f->node;
    enter(c);
    scope *s = scope_new(c, f->closure);
    for (size_t i = 0; i < n->nparams; i++) {
        jv v = i < a->n ? a->v[i] : (n->defaults[i] ? eval(c, s, n->defaults[i]) : jv_undef());
        scope_set(c, s, n->params[i], v);
    }
    jv r = render_to_string(c, s, &n->body);
    c->depth--;
    return r;
}

