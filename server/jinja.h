/* jinja.h -- internals of the chat-template interpreter (a Jinja2 subset).
 *
 * Not a public interface: only server/jinja_*.c and server/chat_template.c
 * include it. The pipeline is lex (jinja_lex.c) -> parse to an AST
 * (jinja_parse.c) -> tree-walking evaluation (jinja_eval.c) with values and
 * builtins in jinja_value.c / jinja_builtins.c.
 *
 * Memory: everything (AST, values, output buffers) lives in arenas. A compiled
 * template owns one arena; each render owns another that is dropped whole at
 * the end. That is what lets errors unwind with longjmp: nothing needs freeing
 * piecemeal, so a raise_exception or a type error deep in an expression simply
 * jumps back to chat_template_render, which frees the render arena.
 */
#ifndef QKVD_JINJA_H
#define QKVD_JINJA_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/* ---- arena ---- */
typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
    jarena_chunk *head;
    size_t used_total;  /* bytes handed out, for the limit */
    size_t limit;       /* 0 = no limit */
    jmp_buf *fail;      /* where to jump when the limit is hit (NULL: abort) */
    char *errbuf;       /* message buffer for that jump */
    size_t errlen;
} jarena;

void *jarena__alloc(jarena *a, size_t n);
void jarena__free(jarena *a);
char *jarena__strndup(jarena *a, const char *s, size_t n);

/* ---- values ---- */
typedef enum {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT, JV_FUNC
} jv_type;

typedef struct jstr { size_t len; char s[]; } jstr;  /* s is NUL-terminated */
typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct jfunc jfunc;

typedef struct jv {
    jv_type t;
    union { int64_t i; double f; jstr *s; jlist *l; jdict *d; jfunc *fn; } u;
} jv;

struct jlist { size_t n, cap; jv *v; int tuple; /* prints as (a, b) */ };
struct jdict {
    size_t n, cap; jv *k; jv *v; int is_ns;
    uint32_t *idx; size_t idx_cap;  /* hash index (entry+1, 0 = empty) once n >= 16 */
};
/* is_ns values: 0 plain dict, 1 namespace(), JDICT_LOOP a for-loop's `loop`
 * object (index0 is its second entry; it has a cycle() method). */
#define JDICT_LOOP 2

/* ---- string builder (arena-backed) ---- */
typedef struct jbuf { char *p; size_t n, cap; } jbuf;

/* ---- AST ---- */
typedef enum {
    /* expressions */
    JN_LIT, JN_NAME, JN_LIST, JN_TUPLE, JN_DICT, JN_ATTR, JN_INDEX, JN_SLICE, JN_CALL,
    JN_FILTER, JN_TEST, JN_NOT, JN_NEG, JN_POS, JN_BIN, JN_AND, JN_OR, JN_COND,
    /* statements */
    JN_TEXT, JN_OUT, JN_IF, JN_FOR, JN_SET, JN_SETBLOCK, JN_MACRO, JN_CALLBLOCK,
    JN_FILTERBLOCK, JN_BREAK, JN_CONTINUE, JN_DO, JN_BODY
} jn_kind;

typedef enum {
    JOP_ADD, JOP_SUB, JOP_MUL, JOP_DIV, JOP_FLOORDIV, JOP_MOD, JOP_POW, JOP_CONCAT,
    JOP_EQ, JOP_NE, JOP_LT, JOP_LE, JOP_GT, JOP_GE, JOP_IN, JOP_NOTIN
} jop;

typedef struct jnode jnode;
typedef struct jnodes { size_t n, cap; jnode **v; } jnodes;

struct jnode {
    jn_kind k;
    int line, col;
    jop op;
    int neg;              /* JN_TEST: `is not` */
    jv lit;               /* JN_LIT; JN_TEXT text */
    const char *name;     /* NAME, ATTR, FILTER, TEST, MACRO, SET target name */
    jnode *a, *b, *c;     /* operands; FOR: a=target b=iter c=cond; IF: a=cond */
    jnodes args;          /* call/filter/test args; list/tuple items; dict keys */
    jnodes kwnames_vals;  /* dict values; call kwargs values */
    const char **kwnames; /* call kwargs names (n = kwnames_vals.n) */
    jnodes body, orelse;  /* statement bodies */
    const char **params;  /* MACRO param names */
    jnode **defaults;     /* MACRO defaults (NULL entries = required) */
    size_t nparams;
};

/* ---- compile ---- */
/* Parses src into a JN_BODY node allocated in arena a; NULL on error with a
 * "line:col: message" in err. */
jnode *jinja__parse(jarena *a, const char *src, size_t len, char *err, size_t errlen);

/* ---- render ---- */
typedef struct jctx jctx;
typedef struct jrender_in {
    const jnode *root;
    jdict *globals;     /* top-level variables */
    long long now;      /* for strftime_now */
    uint64_t step_limit; /* 0 = default */
} jrender_in;

/* Value helpers shared by eval and builtins (jinja_value.c). */
jv jv_undef(void);
jv jv_none(void);
jv jv_bool(int b);
jv jv_int(int64_t i);
jv jv_float(double f);
jv jv_str(jarena *a, const char *s, size_t n);
jv jv_cstr(jarena *a, const char *s);
jv jv_newlist(jarena *a);
jv jv_newdict(jarena *a);
void jlist_push(jarena *a, jlist *l, jv v);
void jdict_set(jarena *a, jdict *d, jv k, jv v);
jv *jdict_get(const jdict *d, jv k);
jv *jdict_gets(const jdict *d, const char *k);
/* Keeps the first n entries (n <= d->n) and removes entry i, respectively;
 * both keep the hash index right. */
void jdict_truncate(jarena *a, jdict *d, size_t n);
void jdict_remove(jarena *a, jdict *d, size_t i);
int jv_truthy(jv v);
int jv_equal(jv a, jv b);
/* <0, 0, >0; sets *ok=0 when the types are not comparable. */
int jv_compare(jv a, jv b, int *ok);
const char *jv_typename(jv v);
jv jv_from_json(jarena *a, const json_t *j);

void jbuf_put(jarena *a, jbuf *b, const char *s, size_t n);
void jbuf_puts(jarena *a, jbuf *b, const char *s);
void jbuf_putc(jarena *a, jbuf *b, char c);
/* Appends the Jinja text form of v ({{ v }}). */
void jv_print(jarena *a, jbuf *b, jv v);
/* Appends the Python repr form of v (strings quoted), as inside a printed list. */
void jv_repr(jarena *a, jbuf *b, jv v);
/* Appends JSON like Python json.dumps(v, ensure_ascii=ascii, indent=indent
 * (<0: none), sort_keys=..., separators=(item_sep, key_sep)). depth starts
 * at 0; nesting beyond 200 returns -1. */
int jv_tojson(jarena *a, jbuf *b, jv v, int indent, int sort_keys, int ascii, const char *item_sep,
              const char *key_sep, int depth);
jv jv_to_string(jarena *a, jv v);
void jv_format_float(char *out, size_t n, double f);

/* Number of Unicode code points in UTF-8 text, and the byte offset of the
 * code point with index ci (clamped to len). */
size_t jutf8_len(const char *s, size_t n);
/* Decodes the code point at s[*i] and advances *i; an invalid byte gives
 * U+FFFD and advances by one. */
uint32_t jutf8_next(const char *s, size_t n, size_t *i);
void jutf8_put(jarena *a, jbuf *b, uint32_t cp);
size_t jutf8_offset(const char *s, size_t n, size_t ci);

/* The render context (jinja_eval.c); builtins receive it to allocate and to
 * raise errors. */
struct jctx {
    jarena *a;
    jmp_buf jb;
    char *err;
    size_t errlen;
    jbuf *out;
    size_t out_limit;
    uint64_t steps, step_limit;
    int depth, depth_limit;
    long long now;
    const jnode *cur;   /* node being evaluated, for error positions */
};

/* Counts units of work (list elements scanned, KiB of string processed)
 * toward the step limit, so builtins that hide loops stay bounded too. */
void jinja__charge(jctx *c, uint64_t units);

/* Raise a render error: formats into ctx->err and longjmps. */
void jctx_fail(jctx *c, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

/* Builtins (jinja_builtins.c). Return 1 when the name is known. */
typedef struct jargs {
    size_t n; jv *v;          /* positional */
    size_t nk; const char **kn; jv *kv;  /* keyword */
} jargs;
int jinja__filter(jctx *c, const char *name, jv x, jargs *args, jv *res);
int jinja__test(jctx *c, const char *name, jv x, jargs *args, int *res);
int jinja__method(jctx *c, jv self, const char *name, jargs *args, jv *res);
int jinja__global_fn(jctx *c, const char *name, jargs *args, jv *res);
jv jargs_get(jargs *a, size_t pos, const char *kw, jv dflt);
/* Python's `fmt % values` (a tuple supplies several values): %s %r %d %i %f %%. */
jv jinja__percent_format(jctx *c, jv fmt, jv values);

/* Calls a callable value (macro) from a builtin (e.g. map with a macro is not
 * supported, but caller() is); implemented in jinja_eval.c. */
jv jinja__call(jctx *c, jv fn, jargs *args);

/* The items a for loop would visit: list as is, dict keys, string code
 * points, undefined -> empty; anything else is a render error. */
jv jinja__iter_list(jctx *c, jv v);

/* Renders root into a malloc'ed string. 0 ok; negative with err set. */
int jinja__render(const jrender_in *in, jarena *a, char **out, size_t *outlen, char *err,
                  size_t errlen);

#endif
