/* tokenizer_internal.h -- what tokenizer.c, tokenizer_spm.c, tokenizer_bpe.c
 * and tokenizer_unicode.c share. Not part of the public interface: callers use
 * tokenizer.h only.
 *
 * A loaded tokenizer is immutable; every encode call keeps its scratch memory
 * in a tokenizer__out / local buffers, so concurrent calls never share state. */
#ifndef QKVD_TOKENIZER_INTERNAL_H
#define QKVD_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "tokenizer.h"

/* Internal attribute bits on top of enum tok_attr: strip whitespace next to a
 * special token when it is matched in text (llama.cpp's LSTRIP / RSTRIP). */
#define TOK__ATTR_LSTRIP 64u
#define TOK__ATTR_RSTRIP 128u
#define TOK__ATTR_PUBLIC 63u

/* Open-addressing hash set of byte strings -> token id. Keys point into the
 * tokenizer's piece blob. */
typedef struct tok__strslot {
    uint32_t tag;       /* high half of the key's hash: most misses end here */
    int32_t id;         /* token id, or -1 for an empty slot */
} tok__strslot;

typedef struct tok__strmap {
    uint32_t mask;      /* table size - 1 (power of two) */
    tok__strslot *slots;
} tok__strmap;

/* Merge table for byte-level BPE: (left id, right id) -> rank and result id. */
typedef struct tok__merge_slot {
    uint64_t key;       /* (left << 32) | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t result;     /* id of the concatenation */
} tok__merge_slot;

typedef struct tok__mergemap {
    uint32_t mask;
    tok__merge_slot *slots;
} tok__mergemap;

/* One compiled pre-tokenizer regex (pcre2_code *, kept opaque here so that
 * only tokenizer_bpe.c includes pcre2.h). */
typedef struct tok__regex {
    void *code;
    int jit;            /* JIT compilation succeeded */
} tok__regex;

#define TOK__MAX_REGEX 8

struct tokenizer {
    enum tok_kind kind;
    int32_t n_vocab;

    /* Vocabulary: piece i is blob[off[i] .. off[i]+len[i]) (raw, as stored). */
    char *blob;
    uint64_t *off;
    uint32_t *len;
    float *score;
    uint32_t *attr;
    tok__strmap map;
    uint32_t max_piece_len;

    /* Decoded text of every token (what token_to_bytes returns with
     * render_special): text[i] = dec_blob[dec_off[i] .. +dec_len[i]). */
    char *dec_blob;
    uint64_t *dec_off;
    uint32_t *dec_len;
    uint32_t max_dec_len;

    /* Special ids (-1 when absent). */
    int32_t bos, eos, eot, eom, unk, pad;
    int add_bos, add_eos, add_space_prefix;
    uint8_t *eog;        /* n_vocab flags */

    /* Tokens matched in raw text before normal tokenisation, longest first
     * (control, user-defined and unknown tokens). */
    int32_t *special;
    int32_t n_special;

    /* SPM: merges never cross a word start (checked at load). */
    int spm_words;
    /* SPM: byte fallback ids for bytes 0..255 (-1 when absent). */
    int32_t byte_id[256];

    /* BPE */
    tok__mergemap merges;
    int32_t n_merges;
    tok__regex regex[TOK__MAX_REGEX];
    int n_regex;
    int byte_encode;     /* GPT-2 byte-to-unicode (0: raw UTF-8, e.g. gemma4) */
    char byte_utf8[256][2];      /* GPT-2 mapping of each byte, as UTF-8 */
    uint8_t byte_utf8_len[256];
    int escape_spaces;   /* replace ' ' by U+2581 before BPE (gemma4) */
    int ignore_merges;   /* a whole pre-token that is in the vocab is one token */
    int newline_words;   /* gemma4: a word of only newlines that is a token stays whole */
    char pre_name[64];
};

/* Growable id output of one encode call. Fails softly (flag) on OOM. */
typedef struct tok__out {
    int32_t *ids;
    int64_t n, cap;
    int oom;
} tok__out;

void tok__out_push(tok__out *o, int32_t id);

/* ---- strings ---------------------------------------------------------- */
uint64_t tok__hash(const char *s, size_t n);
/* Token id of the piece s[0..n), or of the concatenation a||b; -1 if absent. */
int32_t tok__find(const struct tokenizer *t, const char *s, size_t n);
int32_t tok__find2(const struct tokenizer *t, const char *a, size_t na, const char *b, size_t nb);

/* ---- unicode (tokenizer_unicode.c) ------------------------------------- */
/* Byte length of the UTF-8 sequence that starts with lead byte c, as
 * llama.cpp's unicode_len_utf8 (continuation bytes count as 1). */
int tok__utf8_len(unsigned char c);
/* Decode one well-formed UTF-8 sequence at s (n bytes available). Returns the
 * sequence length and the code point in *cp, or 0 when s does not start a
 * valid, complete sequence (overlong, surrogate, > U+10FFFF, truncated). */
int tok__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
int tok__utf8_encode(uint32_t cp, char *out); /* 1..4 bytes */
/* Copy src to dst as valid UTF-8, as llama.cpp's unicode_cpts_from_utf8
 * reads it: overlong forms become their code point's canonical encoding,
 * every other invalid byte U+FFFD. dst needs 3*n bytes. Returns length. */
size_t tok__utf8_sanitize(const char *src, size_t n, char *dst);
/* Length of the longest prefix of s[0..n) that is a complete, valid UTF-8
 * text, and whether the rest could still become valid with more bytes. */
size_t tok__utf8_valid_prefix(const unsigned char *s, size_t n, int *tail_incomplete);
/* GPT-2 byte-level mapping: byte -> code point, and back (-1 if none). */
uint32_t tok__byte_to_cp(unsigned char b);
int tok__cp_to_byte(uint32_t cp);

/* ---- models ------------------------------------------------------------- */
/* Tokenise one raw text fragment (no special tokens inside) and append. */
int tok__spm_encode(const struct tokenizer *t, const char *text, size_t n, tok__out *out);
/* Scratch memory of one BPE encode call (owned by the caller, one per
 * thread/call; create returns NULL on OOM, free accepts NULL). */
typedef struct tok__bpe_scratch tok__bpe_scratch;
tok__bpe_scratch *tok__bpe_scratch_create(void);
void tok__bpe_scratch_free(tok__bpe_scratch *sc);
int tok__bpe_encode(const struct tokenizer *t, const char *text, size_t n, tok__out *out,
                    tok__bpe_scratch *sc);

/* BPE setup (tokenizer_bpe.c): pick and compile the pre-tokenizer regexes
 * for `pre` (NULL/"" = "default"), set the per-pre flags. 0 or -1 + err. */
int tok__bpe_setup(struct tokenizer *t, const char *pre, char *err, size_t errlen);
/* Load tokenizer.ggml.merges into t->merges. 0 or -1 + err. */
int tok__bpe_load_merges(struct tokenizer *t, const gguf_kv *kv, char *err, size_t errlen);
void tok__bpe_free(struct tokenizer *t);
/* Whether the pre-tokenizer turns on add_bos by default (llama3 family). */
int tok__bpe_pre_default_bos(const char *pre);

#endif
