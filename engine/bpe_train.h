/* bpe_train.h -- learn a GPT-2 style byte-level BPE vocabulary from text
 * (used by `qkvd make-model` when no --vocab-from file is given).
 *
 * The result is what a `tokenizer.ggml.model = gpt2`, `pre = gpt-2` GGUF
 * stores: token strings in GPT-2's byte-to-unicode alphabet, a ranked merge
 * list "left right", and token types. Layout of the ids:
 *   [0, 256)                 the 256 byte symbols, in GPT-2's order
 *   [256, 256 + n_learned)   one token per learned merge result
 *   then padding tokens "<|unused_N|>" (type unused) if the text ran out of
 *   pairs before vocab_size was reached, and last "<|endoftext|>" (control),
 *   which is both BOS and EOS. */
#ifndef QKVD_BPE_TRAIN_H
#define QKVD_BPE_TRAIN_H

#include <stddef.h>
#include <stdint.h>

typedef struct bpe_vocab {
    int32_t n_tokens;        /* == the requested vocab_size */
    char **tokens;           /* n_tokens NUL-terminated UTF-8 strings */
    int32_t *token_types;    /* llama.cpp token types: 1 normal, 3 control, 5 unused */
    int64_t n_merges;
    char **merges;           /* n_merges strings "left right", rank order */
    int32_t eos_id;          /* <|endoftext|> */
    int32_t n_learned;       /* tokens learned from the text */
    int32_t n_padding;       /* "<|unused_N|>" tokens added because the text ran out */
} bpe_vocab;

/* Learn merges from `text` (len bytes, any content) until vocab_size tokens
 * exist (vocab_size >= 257: the bytes plus <|endoftext|>). The text is
 * pre-split like GPT-2's pre-tokenizer (words with an optional leading space,
 * digit runs, punctuation runs, whitespace) so merges never cross word
 * boundaries. Deterministic: the same text and size give the same vocabulary
 * (ties broken by the smaller pair of ids).
 * Returns 0 and fills *out (owned by the caller: bpe_vocab_free), or negative
 * with a message in err. */
int bpe_train_learn(const char *text, size_t len, int32_t vocab_size, bpe_vocab *out,
                    char *err, size_t errlen);

/* Free what bpe_train_learn allocated; accepts a zeroed or NULL vocab. */
void bpe_vocab_free(bpe_vocab *v);

/* GPT-2's byte-to-unicode mapping: the code point that stands for byte b. */
uint32_t bpe_byte_to_codepoint(uint8_t b);

#endif
