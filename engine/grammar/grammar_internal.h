/* grammar_internal.h -- shared between the grammar modules: the rule IR the
 * GBNF parser builds, the flattened automaton, the stack machine, and the
 * GBNF generators (schema, regex, integer ranges). Not a public API. */
#ifndef QKVD_GRAMMAR_INTERNAL_H
#define QKVD_GRAMMAR_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include "grammar.h"

/* Element kinds. An alternative is a run of BYTES/REF elements closed by END;
 * a rule is its alternatives back to back. */
enum { GE_BYTES = 0, GE_REF = 1, GE_END = 2 };

typedef struct gelem {
    uint32_t kind : 2;
    uint32_t arg : 30; /* BYTES: byte-set index; REF: rule index */
} gelem;

typedef struct gbyteset { uint64_t w[4]; } gbyteset;

static inline int gbyteset_has(const gbyteset *s, unsigned b) { return (int)((s->w[b >> 6] >> (b & 63)) & 1); }

/* A growable string (GBNF generation). */
typedef struct gstr { char *s; size_t n, cap; int oom; } gstr;
void grammar__str_putn(gstr *b, const char *s, size_t n);
void grammar__str_puts(gstr *b, const char *s);
void grammar__str_printf(gstr *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a GBNF string literal "..." (escaping quotes, backslashes and
 * control bytes; other bytes raw). */
void grammar__str_literal(gstr *b, const char *s, size_t n);

/* Maximum rules / elements in one grammar (bounds compile time and memory). */
#define GRAMMAR_MAX_RULES 200000
#define GRAMMAR_MAX_ELEMS 2000000

/* Lazily computed per-position mask table. */
typedef struct gpos_mask {
    uint32_t *accepted;   /* n_vocab bits, or NULL when acc_ids lists them */
    int32_t w_lo, w_hi;   /* accepted words outside [w_lo, w_hi) are zero */
    int32_t *acc_ids;     /* the accepted tokens when there are few */
    int32_t n_acc;        /* their count (with a bitset: only some count over 512) */
    int32_t *uncertain;   /* token ids in trie order */
    uint16_t *ulcp;       /* bytes shared with the previous uncertain token */
    uint64_t *uoff;       /* per uncertain token: bit i set when the known frames can end after
                             its first i bytes (i < 63); bit 63: also at some later offset */
    uint8_t *ubytes;      /* the uncertain tokens' bytes back to back (the check reads them in order) */
    uint16_t *ulen;       /* their lengths */
    int32_t n_uncertain;
    int32_t n_frames;     /* stack nodes the table knows (top, key frames, static frames) */
    int32_t partial;      /* the walk stopped at too many uncertain tokens: no data, use a deeper key */
} gpos_mask;

struct grammar {
    int refs; /* atomic */
    gelem *elems; int32_t n_elems;
    gbyteset *sets; int32_t n_sets;
    int32_t n_rules;
    int32_t *alt_off;   /* rule r's alternatives start at alt_start[alt_off[r] .. alt_off[r+1]) */
    int32_t *alt_start; /* element index of each alternative's first element */
    int32_t root;
    int32_t *elem_rule; /* element -> its rule */
    int32_t *site;      /* rule -> its only call site (element index; self tail calls
                           excluded), -1 when called from several sites, -2 never */
    /* mask tables, bound to one vocabulary on first use */
    pthread_mutex_t lock;
    const grammar_vocab *vocab;
    gpos_mask **pm;     /* per element index; NULL until computed */
    struct gprecomp *pre; /* scratch for the precomputation (under lock) */
    struct gdeep_map *deep; /* tables keyed by several stack positions (token_mask.c) */
    struct gdfa *dfa;   /* sets of stacks met by the trie walks (grammar_dfa.c), under lock */
    int32_t *rep_canon; /* per element: the same place in its bounded repetition's top level, or -1 */
    int32_t *rep_level; /* per element: its repetition level (atoms it can still take) */
    struct gstate_cache *sc; /* matcher states met, their masks and successors (state_cache.c) */
    int tables_done;    /* grammar_precompute_budget built every table it builds (atomic) */
    /* while grammar_precompute_budget builds a table (under lock): the walks
     * stop at build_deadline and set build_aborted */
    int has_deadline, build_aborted;
    uint32_t n_built;   /* tables built so far (under lock) */
    struct timespec build_deadline;
};

/* Free g's mask tables and precomputation scratch (token_mask.c). */
void grammar__mask_free(grammar *g);

/* Parse GBNF into a compiled grammar (gbnf.c). */
int grammar__parse_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen);

/* Regex (JSON Schema `pattern` subset) -> a GBNF expression matching the
 * JSON-escaped string content (regex.c). 0 or -1 with a message. */
int grammar__regex_to_gbnf(const char *re, size_t len, gstr *out, char *err, size_t errlen);

/* GBNF expression for the decimal integers in [lo, hi]; has_lo/has_hi 0
 * means unbounded on that side (json_schema.c). */
void grammar__int_range(gstr *out, int has_lo, int64_t lo, int has_hi, int64_t hi);

/* ---- stack machine (grammar_compile.c) ---- */

/* Node ids 0 and 1 are sentinels: COMPLETE (the root returned) and BOTTOM
 * (the unknown rest of the stack, for per-position precomputation). */
#define GNODE_COMPLETE 0u
#define GNODE_BOTTOM 1u

typedef struct gmachine {
    const grammar *g;
    /* node arena with hash-consing; append-only with rollback */
    uint32_t *pos, *parent, *hnext, *stamp_set, *stamp_work;
    uint32_t n, cap;
    uint32_t *bucket; uint32_t nbucket; /* power of two */
    uint32_t gen;
    /* work list */
    uint32_t *work; uint32_t nwork, capwork;
    int oom;
} gmachine;

int grammar__machine_init(gmachine *m, const grammar *g);
void grammar__machine_free(gmachine *m);
/* Forget every node but the sentinels. */
void grammar__machine_clear(gmachine *m);
/* Roll the arena back to n nodes (n >= 2). */
void grammar__machine_rollback(gmachine *m, uint32_t n);
/* Intern (pos, parent); returns the node id or UINT32_MAX on OOM. */
uint32_t grammar__machine_node(gmachine *m, uint32_t pos, uint32_t parent);

/* A set of stacks is a list of node ids in a caller-provided growable
 * buffer. */
typedef struct gset { uint32_t *v; uint32_t n, cap; } gset;
int grammar__set_push(gset *s, uint32_t x);

/* Start a new output set (dedupe generation). */
void grammar__machine_begin(gmachine *m);
/* Expand "continue at pos with return node parent" into stacks whose top is
 * a BYTES element (or a sentinel), appended to out. 0 or -1 on OOM. */
int grammar__machine_expand(gmachine *m, uint32_t pos, uint32_t parent, gset *out);
/* The start set of the root rule (parent COMPLETE) or of a position with
 * parent BOTTOM. */
int grammar__machine_start(gmachine *m, gset *out);
/* Consume byte b from every stack of in, appending the successors to out
 * (call machine_begin first). *hit_bottom set when a BOTTOM stack met a
 * byte. 0 or -1 on OOM. */
int grammar__machine_consume(gmachine *m, const gset *in, unsigned b, gset *out, int *hit_bottom);

/* Compact: copy the stacks of in into m2 (cleared first), writing the new
 * ids to out. */
int grammar__machine_copy(gmachine *dst, const gmachine *src, const gset *in, gset *out);

/* ---- vocabulary (token_mask.c) ---- */

struct grammar_vocab {
    const tokenizer *t;
    int32_t n_vocab, n_words;
    char *bytes;        /* all token bytes back to back */
    uint32_t *off;      /* token id -> offset in bytes */
    uint16_t *len;      /* token id -> byte count (0: never allowed by a grammar) */
    uint8_t *eog;       /* token id -> ends generation */
    int32_t *sorted;    /* tokens with bytes, lexicographic */
    int32_t n_sorted;
    /* trie in preorder; depth = bytes from the root (1 for first bytes) */
    uint8_t *tn_byte;
    uint16_t *tn_depth;
    int32_t *tn_end;      /* preorder index just past the subtree */
    int32_t *tn_first;    /* sorted index of the first token in the subtree */
    int32_t *tn_ntok;     /* tokens ending exactly here: sorted[tn_first .. +tn_ntok) */
    int32_t n_nodes;
    int32_t max_len;
    uint16_t *tn_maxlen;  /* longest token (bytes) in the subtree */
    struct gtnode *tn;    /* the same trie packed for the walks (mask_tables.c) */
    int32_t *rank;        /* token id -> index in sorted, -1 without bytes */
    int32_t *bylen;       /* tokens with bytes, longest first */
    int32_t *n_ge;        /* [L] tokens of at least L bytes (L <= max_len + 1): bylen[0 .. n_ge[L]) */
    uint32_t *shorter;    /* [(k - 2) * n_words ..]: the tokens of 1 .. k-1 bytes, for 2 <= k < n_shorter + 2 */
    int32_t n_shorter;
};


/* One trie node as the table walks read it: one 16-byte load per node. */
typedef struct gtnode {
    uint8_t byte;
    uint8_t pad;
    uint16_t depth;   /* bytes from the root */
    uint16_t maxlen;  /* longest token in the subtree */
    uint16_t ntok;    /* tokens ending here: sorted[first .. first + ntok) */
    int32_t end;      /* preorder index past the subtree */
    int32_t first;
    int32_t tok;      /* the first token ending here, or n_words * 32 (a dummy bit past the vocabulary) */
    int32_t pad2;
} gtnode;

/* ---- mask tables (mask_tables.c) ---- */

/* Bind g's tables to v (under g->lock): GRAMMAR_ERR_VOCAB when bound to another. */
int grammar__bind_vocab(grammar *g, const grammar_vocab *v);
/* The most specific table for the stack x of machine mc (built on first
 * use, kept in g); NULL on OOM. */
gpos_mask *grammar__table_for_stack(grammar *g, const grammar_vocab *v, const gmachine *mc, uint32_t x);

/* Set in mask the uncertain tokens of pm that the real stack x of mc
 * accepts, stepping them through the grammar's DFA (their common prefixes
 * and the sets they reach are shared with every earlier check). 0 or -1 on
 * OOM. */
int grammar__check_uncertain(grammar *g, const grammar_vocab *v, const gmachine *mc, uint32_t x, const gpos_mask *pm,
                             uint32_t *mask);

/* logits[32 w + i] = -inf where bit i of bits[w] is clear, for the first
 * n_words words (mask_apply_avx2.c; only on CPUs with AVX2). */
void grammar__apply_bits_avx2(float *logits, const uint32_t *bits, int32_t n_words);

/* ---- matcher states shared by a grammar's matchers (state_cache.c) ----
 * A state is a set of stacks written as words: per stack its positions top
 * to bottom then GSC_END + the sentinel below, stacks in canonical order.
 * All functions take g->lock. */

#define GSC_END 0xFFFFFFF0u

void grammar__state_cache_free(struct gstate_cache *c);
/* Map the first chunk for g's stored masks now, its pages populated,
 * rather than page by page in decode steps. */
void grammar__state_cache_reserve(grammar *g);
uint64_t grammar__state_hash(const uint32_t *w, uint32_t len);
/* The id of the state written in w[0..len) (interned if new), or -1 when it
 * is not cached (too large, cache full, OOM). */
int32_t grammar__state_intern(grammar *g, const uint32_t *w, uint32_t len, uint64_t hash, int complete);
/* Copy state s's words into buf (cap words): 0, or -1. */
int grammar__state_stacks(grammar *g, int32_t s, uint32_t *buf, uint32_t cap, uint32_t *len);
/* Whether state s holds a complete value. */
int grammar__state_complete(grammar *g, int32_t s);
/* State s's stored mask: its count (then *bits or *ids, which stay valid
 * while g lives) or -1 when not stored yet. */
int32_t grammar__state_mask(grammar *g, int32_t s, const uint32_t **bits, const int32_t **ids);
/* Store state s's mask (copied) once. */
void grammar__state_set_mask(grammar *g, int32_t s, const uint32_t *mask, int32_t n_words, int32_t count);
/* The state after token tok from s, or -1 when not known. */
int32_t grammar__state_next(grammar *g, int32_t s, int32_t tok);
void grammar__state_set_next(grammar *g, int32_t s, int32_t tok, int32_t next);

/* ---- lazy DFA over sets of stacks (grammar_dfa.c) ---- */

#define GDFA_DEAD (-1)    /* the empty set: every stack died */
#define GDFA_UNKNOWN (-2) /* transition not computed yet */
#define GDFA_OOM (-3)
#define GDFA_HAS_BOTTOM 1u   /* the set holds BOTTOM: a next byte would read past the known frames */
#define GDFA_HAS_COMPLETE 2u

typedef struct gdfa {
    gmachine m;              /* persistent arena (never rolled back): node ids are stable */
    uint8_t bclass[256];     /* byte -> class (bytes no byte set tells apart share one) */
    uint8_t brep[256];       /* class -> a byte of it */
    int32_t n_bclass;
    int32_t *trans;          /* [state * n_bclass + class] -> state, GDFA_DEAD or GDFA_UNKNOWN */
    uint32_t *set_off;       /* state s's sorted node ids: pool[set_off[s] .. set_off[s+1]) */
    uint32_t *pool; uint32_t cap_pool;
    uint8_t *flags;          /* per state: GDFA_HAS_* */
    int32_t n_states, cap_states;
    int32_t *htab; uint32_t hcap; /* interning: open addressing over state ids, -1 empty */
    gset tmp, out;           /* scratch for computing a transition */
} gdfa;

/* A new, empty DFA for g (NULL on OOM). Owned by the caller. */
gdfa *grammar__dfa_create(const grammar *g);
/* Free d (NULL accepted). */
void grammar__dfa_free(gdfa *d);
/* Replace *pd by a fresh DFA when it is missing or past its size bound
 * (state ids of the old one become invalid). 0, or -1 on OOM. */
int grammar__dfa_trim(gdfa **pd, const grammar *g);
/* The state {node} (node built in d->m); GDFA_OOM on OOM. */
int32_t grammar__dfa_state(gdfa *d, uint32_t node);
/* The state of the stacks that returning into node (built in d->m, its
 * top a return position) continues with; GDFA_OOM on OOM. */
int32_t grammar__dfa_state_return(gdfa *d, uint32_t node);
/* Compute, record and return the successor of state s on byte b. */
int32_t grammar__dfa_step_slow(gdfa *d, int32_t s, unsigned b);

/* The successor of state s on byte b: a state, GDFA_DEAD or GDFA_OOM. */
static inline int32_t grammar__dfa_step(gdfa *d, int32_t s, unsigned b) {
    int32_t t = d->trans[(size_t)s * (size_t)d->n_bclass + d->bclass[b]];
    return t != GDFA_UNKNOWN ? t : grammar__dfa_step_slow(d, s, b);
}

#endif
