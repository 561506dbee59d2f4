/* grammar.h -- structured output: JSON Schema / GBNF -> pushdown automaton
 * over bytes -> per-step vocabulary mask.
 *
 * Pipeline. A JSON Schema (or json_object mode) is translated into GBNF text
 * (llama.cpp's grammar format; `pattern` regexes and integer ranges become
 * GBNF too), GBNF is parsed into rules whose elements are byte sets and rule
 * references (code-point classes become UTF-8 byte-sequence alternatives),
 * and the rules are flattened into one element array. The run-time state is
 * a set of stacks of element positions (a graph-structured stack: stacks
 * share their tails), so recursion ($ref, nested values) and ambiguity are
 * both handled.
 *
 * Masks. A grammar_vocab holds the tokenizer's token bytes sorted into a
 * trie. For every top-of-stack position the first use computes, by one
 * pruned trie walk starting from that position alone, the tokens accepted
 * whatever lies below it on the stack (a bitset) and the few tokens whose
 * fate depends on the rest of the stack (a list). fill_mask ORs the bitsets
 * of the current stack tops and checks only the listed tokens against the
 * real stacks. These per-position tables live in the grammar (bound to one
 * vocabulary) and are shared by every matcher of it, under a mutex.
 *
 * Typical use (server loop thread, per request):
 *     grammar *g = grammar_cache_get_schema(cache, schema, len, &opt, err, n);
 *     grammar_matcher *m = grammar_matcher_create(g, vocab);   per sequence
 *     each step: grammar_matcher_apply(m, logits); sample;
 *                grammar_matcher_accept_token(m, id);
 *     grammar_matcher_free(m); grammar_release(g);
 *
 * Errors: negative return codes; compile functions write a message naming
 * the offending keyword and its JSON path (schemas) or line:column (GBNF).
 * Nothing here aborts on outside input. */
#ifndef QKVD_GRAMMAR_H
#define QKVD_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

struct json_t; /* jansson */

typedef struct grammar grammar;                 /* compiled, immutable but for the lazy mask tables */
typedef struct grammar_vocab grammar_vocab;     /* token bytes + trie of one tokenizer */
typedef struct grammar_matcher grammar_matcher; /* one sequence's position in a grammar */

enum {
    GRAMMAR_ERR_SYNTAX = -1,     /* bad GBNF / regex / JSON text */
    GRAMMAR_ERR_SCHEMA = -2,     /* unsupported keyword or unsatisfiable schema */
    GRAMMAR_ERR_REJECTED = -3,   /* token/bytes not allowed here */
    GRAMMAR_ERR_LIMIT = -4,      /* grammar too large / too deep */
    GRAMMAR_ERR_VOCAB = -5,      /* grammar already bound to another vocabulary */
    GRAMMAR_ERR_NOMEM = -6
};

typedef struct grammar_options {
    /* 0: compact JSON (no whitespace between tokens). N > 0: up to N
     * whitespace bytes (space, tab, newline) wherever JSON allows them. */
    int32_t ws_max;
} grammar_options;

/* Compile GBNF text (len bytes; rule `root` is the start). 0, or a negative
 * GRAMMAR_ERR_* with a message "line L col C: ..." in err. *out is owned by
 * the caller (grammar_release). */
int grammar_compile_gbnf(const char *text, size_t len, grammar **out, char *err, size_t errlen);

/* Compile a JSON Schema given as JSON text. opt may be NULL (compact).
 * Unsupported keywords and unsatisfiable schemas fail with
 * GRAMMAR_ERR_SCHEMA and a message naming the keyword and JSON path. */
int grammar_compile_schema(const char *json, size_t len, const grammar_options *opt,
                           grammar **out, char *err, size_t errlen);
/* Same from a parsed jansson value (not modified, not retained). */
int grammar_compile_schema_value(const struct json_t *schema, const grammar_options *opt,
                                 grammar **out, char *err, size_t errlen);
/* {"type":"json_object"} mode: any JSON object. */
int grammar_compile_json_object(const grammar_options *opt, grammar **out, char *err, size_t errlen);

/* The GBNF text a schema translates to (debugging, `grammar-check
 * --print-gbnf`). Returns a malloc'ed NUL-terminated string the caller
 * frees, or NULL with a message in err. */
char *grammar_schema_to_gbnf(const char *json, size_t len, const grammar_options *opt,
                             char *err, size_t errlen);

/* Reference counting: a compiled grammar starts with one reference. */
void grammar_retain(grammar *g);
void grammar_release(grammar *g); /* frees on the last reference; accepts NULL */

/* Numbers of rules / elements (tests, logs). */
int32_t grammar_n_rules(const grammar *g);
int32_t grammar_n_elements(const grammar *g);

/* Build the trie of t's vocabulary (about 20 bytes per token plus the
 * token bytes). t must outlive the vocab. NULL on OOM. */
grammar_vocab *grammar_vocab_create(const tokenizer *t);
void grammar_vocab_free(grammar_vocab *v); /* accepts NULL */
int32_t grammar_vocab_n_vocab(const grammar_vocab *v);

/* Compute the per-position mask tables of every position now instead of on
 * first use (benchmarks; caches that want flat per-token cost). Binds g to v. */
int grammar_precompute(grammar *g, const grammar_vocab *v);

/* The same within a time budget: builds the tables still missing, in
 * position order, then the tables of the deeper stack keys that positions
 * used from many places will need (the levels of a bounded string), and
 * maps the memory the first stored masks go to, for at most max_ms
 * milliseconds (a table still being built then is dropped, but the first
 * table of a call is always finished: calls make progress); the rest are
 * built on first use. 0: every table exists; 1: the budget ran out;
 * < 0: an error (GRAMMAR_ERR_*). Cheap once everything exists (one atomic
 * load), so callers may run it per request. Binds g to v. */
int grammar_precompute_budget(grammar *g, const grammar_vocab *v, double max_ms);

/* Whether grammar_precompute_budget has built every table it builds for
 * g (an atomic load: callers decide whether to run it at all). */
int grammar_tables_ready(const grammar *g);

/* The budget the server and `qkvd bench --schema` give it when a grammar
 * is first used: with compile (<= 0.5 ms for the bench schemas) inside the
 * 20 ms compile target. */
#define GRAMMAR_TABLES_BUDGET_MS 18.0

/* A matcher at the start of g for the vocabulary v; retains g. The first
 * matcher binds g's mask tables to v: a matcher of another vocabulary on
 * the same grammar is refused (NULL, *rc = GRAMMAR_ERR_VOCAB). rc may be
 * NULL. v may be NULL for a byte-level matcher (accept_bytes and
 * is_complete only; masks are empty). Free with grammar_matcher_free. */
grammar_matcher *grammar_matcher_create(grammar *g, const grammar_vocab *v, int *rc);
void grammar_matcher_free(grammar_matcher *m); /* accepts NULL */
/* Back to the start of the grammar (a new sequence with the same grammar). */
void grammar_matcher_reset(grammar_matcher *m);

/* A matcher belongs to one thread at a time; matchers of the same grammar
 * may run on different threads (the shared tables are built under the
 * grammar's mutex). fill_mask/apply/accept allocate nothing once their
 * buffers have grown to the grammar's needs. */

/* The allowed tokens now as a bitset: bit (id & 31) of word id >> 5, for
 * ceil(n_vocab / 32) words. End-of-generation tokens are allowed only when
 * the output so far is complete; control tokens and tokens without bytes
 * never otherwise. Returns the number of allowed tokens: 0 after the
 * matcher terminated or ran out of memory, or in a dead end of a grammar
 * with rules that cannot complete (the caller then ends the sequence with
 * an error; schema-generated grammars have no dead ends). The first visit of a grammar position builds its table (a trie
 * walk, up to tens of ms on a 50k vocabulary); later visits are cheap. */
int32_t grammar_matcher_fill_mask(grammar_matcher *m, uint32_t *bitmask);
/* Set the logit of every disallowed token to -INFINITY (logits has n_vocab
 * entries). Returns the number of allowed tokens. */
int32_t grammar_matcher_apply(grammar_matcher *m, float *logits);

/* Advance by one token. 0, or GRAMMAR_ERR_REJECTED (state unchanged) when
 * the token is not allowed. An end-of-generation token is accepted only when
 * complete, and then ends the matcher (nothing more is accepted). */
int grammar_matcher_accept_token(grammar_matcher *m, int32_t id);
/* 1 when accept_token(id) would succeed now, without changing the state.
 * Runs the token directly on the stacks, independently of the mask tables
 * (tests compare the two; servers may check a forced token). */
int grammar_matcher_token_allowed(grammar_matcher *m, int32_t id);
/* Advance by raw bytes (grammar-check, tests). 0, or GRAMMAR_ERR_REJECTED
 * with *bad_at = the index of the first byte not allowed (state unchanged). */
int grammar_matcher_accept_bytes(grammar_matcher *m, const char *bytes, size_t n, size_t *bad_at);
/* 1 when the output so far is a complete value (EOS allowed). */
int grammar_matcher_is_complete(const grammar_matcher *m);
/* 1 when the output is complete and nothing more may follow. */
int grammar_matcher_is_terminated(const grammar_matcher *m);

/* A small cache of compiled grammars keyed by a hash of (kind, options,
 * text), with full-text comparison; least recently used entries are
 * dropped. Thread-safe. */
typedef struct grammar_cache grammar_cache;
grammar_cache *grammar_cache_create(int32_t capacity);
void grammar_cache_free(grammar_cache *c); /* releases its references; accepts NULL */
/* Compile or find. The result carries a reference for the caller
 * (grammar_release). NULL with a message in err (and *rc when rc != NULL). */
grammar *grammar_cache_get_schema(grammar_cache *c, const char *json, size_t len,
                                  const grammar_options *opt, int *rc, char *err, size_t errlen);
grammar *grammar_cache_get_gbnf(grammar_cache *c, const char *text, size_t len,
                                int *rc, char *err, size_t errlen);

#endif
