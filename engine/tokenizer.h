/* tokenizer.h -- text <-> token ids from a GGUF's tokenizer.* metadata.
 *
 * Models: SentencePiece-style (`tokenizer.ggml.model = llama`: scores, byte
 * fallback <0xXX>, the leading-space rule, U+2581 for spaces) and byte-level
 * BPE (`gpt2`: merges, GPT-2 byte-to-unicode mapping, a pre-tokenizer regex
 * chosen by `tokenizer.ggml.pre`). An unknown model or pre-tokenizer is an
 * error at load time, never a silent fallback.
 *
 * Thread safety: a loaded tokenizer is immutable; encode/decode may run on any
 * thread concurrently. */
#ifndef QKVD_TOKENIZER_H
#define QKVD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "gguf.h"

typedef struct tokenizer tokenizer; /* opaque */

enum tok_kind { TOK_SPM = 1, TOK_BPE = 2 };

/* Token attributes (bit flags), from tokenizer.ggml.token_type. */
enum tok_attr {
    TOK_ATTR_NORMAL = 1, TOK_ATTR_UNKNOWN = 2, TOK_ATTR_CONTROL = 4,
    TOK_ATTR_USER_DEFINED = 8, TOK_ATTR_UNUSED = 16, TOK_ATTR_BYTE = 32
};

/* Build from the GGUF's metadata. Copies what it needs: the gguf_file may be
 * closed afterwards. 0, or negative with a message in err. */
int tokenizer_load(const gguf_file *f, tokenizer **out, char *err, size_t errlen);
void tokenizer_free(tokenizer *t); /* accepts NULL */

enum tok_kind tokenizer_kind(const tokenizer *t);
int32_t tokenizer_n_vocab(const tokenizer *t);
int32_t tokenizer_bos(const tokenizer *t);   /* -1 if none */
int32_t tokenizer_eos(const tokenizer *t);   /* -1 if none */
int tokenizer_add_bos(const tokenizer *t);   /* tokenizer.ggml.add_bos_token (default: SPM 1, BPE 0) */
int tokenizer_add_eos(const tokenizer *t);
/* True for tokens that end generation: EOS, EOT (<|eot_id|>, <|im_end|>, <|end|>, ...). */
int tokenizer_is_eog(const tokenizer *t, int32_t id);
uint32_t tokenizer_attr(const tokenizer *t, int32_t id);
/* The raw vocabulary string of id (as stored, e.g. "▁the" or "Ġthe"); NULL if out of range. */
const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len);
/* Lookup an exact vocabulary string; -1 if absent. */
int32_t tokenizer_find(const tokenizer *t, const char *piece, size_t len);

/* Encode text (len bytes, any bytes; invalid UTF-8 is handled, never crashes).
 *   add_special:   prepend BOS / append EOS as the model's metadata says.
 *   parse_special: text spans equal to control/user-defined tokens become
 *                  those tokens (chat templates: yes; user content: no).
 * Writes up to cap ids; returns the total number of ids (may exceed cap: call
 * again with a larger buffer), or negative on error. */
int64_t tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                         int add_special, int parse_special, int32_t *ids, int64_t cap);

/* Bytes of one token as text (SPM: U+2581 -> space, <0xXX> -> byte;
 * BPE: byte-level unicode -> bytes). Control tokens give "" unless
 * render_special. Writes up to cap bytes; returns the byte count needed. */
int64_t tokenizer_token_to_bytes(const tokenizer *t, int32_t id, int render_special,
                                 char *buf, int64_t cap);

/* Detokenise a whole sequence (SPM: drops the one leading space after BOS
 * the encoder added). Returns bytes needed; writes up to cap. */
int64_t tokenizer_decode(const tokenizer *t, const int32_t *ids, int64_t n,
                         int render_special, char *buf, int64_t cap);

/* Streaming-safe detokenisation: feed tokens one by one, get only complete
 * UTF-8 characters out (a character split across tokens is held back until
 * its last byte arrives). State is small and caller-owned. */
typedef struct tok_stream {
    char pending[8]; int n_pending; /* incomplete UTF-8 tail */
    int first;                      /* SPM: strip the leading space of the first piece */
} tok_stream;
void tok_stream_init(tok_stream *s, const tokenizer *t, int strip_leading_space);
/* Append the text of `id` to out (up to cap bytes, complete characters only);
 * returns bytes written. */
int64_t tok_stream_push(tok_stream *s, const tokenizer *t, int32_t id, int render_special,
                        char *out, int64_t cap);
/* Whatever is still held (invalid/incomplete bytes, flushed as U+FFFD). */
int64_t tok_stream_flush(tok_stream *s, char *out, int64_t cap);

/* The longest decoded text of any one token, in bytes. A tok_stream_push
 * output buffer of 3 * (this + 4) bytes always suffices (output that does not
 * fit is dropped, never written past cap). */
int64_t tokenizer_max_token_bytes(const tokenizer *t);

#endif
