/* tokenizer.c -- loading the tokenizer.* metadata of a GGUF, special-token
 * partitioning, encode dispatch, decoding and streaming detokenisation.
 *
 * The models themselves live in tokenizer_spm.c (SentencePiece-style score
 * merges) and tokenizer_bpe.c (byte-level BPE with regex pre-tokenizers).
 * Behaviour follows llama.cpp's tokenizer so that token ids agree with the
 * reference vectors in ../shared/vocab. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer_internal.h"

/* ---- small helpers -------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Word-at-a-time multiply-xor hash with a murmur-style finish, so the low
 * bits (the table index) depend on every byte. Tokens are short; this is the
 * hot part of loading a 150k vocabulary. */
uint64_t tok__hash(const char *s, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94d049bb133111ebull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static int32_t find_hashed(const struct tokenizer *t, uint64_t hash, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash & t->map.mask, tag = (uint32_t)(hash >> 32);
    for (;;) {
        const tok__strslot *sl = &t->map.slots[i];
        if (sl->id < 0) return -1;
        if (sl->tag == tag && t->len[sl->id] == n && memcmp(t->blob + t->off[sl->id], s, n) == 0)
            return sl->id;
        i = (i + 1) & t->map.mask;
    }
}

int32_t tok__find(const struct tokenizer *t, const char *s, size_t n) {
    if (n == 0 || n > t->max_piece_len) return -1; /* no piece is empty */
    return find_hashed(t, tok__hash(s, n), s, n);
}

int32_t tok__find2(const struct tokenizer *t, const char *a, size_t na, const char *b, size_t nb) {
    size_t n = na + nb;
    if (n == 0 || n > t->max_piece_len) return -1;
    char stackbuf[512];
    char *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
    if (!buf) return -1;
    if (na) memcpy(buf, a, na);
    if (nb) memcpy(buf + na, b, nb);
    int32_t id = find_hashed(t, tok__hash(buf, n), buf, n);
    if (buf != stackbuf) free(buf);
    return id;
}

void tok__out_push(tok__out *o, int32_t id) {
    if (o->oom) return;
    if (o->n == o->cap) {
        int64_t nc = o->cap ? o->cap * 2 : 256;
        int32_t *p = realloc(o->ids, (size_t)nc * sizeof *p);
        if (!p) { o->oom = 1; return; }
        o->ids = p;
        o->cap = nc;
    }
    o->ids[o->n++] = id;
}

/* ---- loading ---------------------------------------------------------------- */

static const gguf_kv *find_array(const gguf_file *f, const char *key, enum gguf_vtype want1,
                                 enum gguf_vtype want2, char *err, size_t errlen, int *bad) {
    const gguf_kv *kv = gguf_find(f, key);
    *bad = 0;
    if (!kv) return NULL;
    if (kv->type != GGUF_ARRAY || (kv->arr_type != want1 && kv->arr_type != want2)) {
        set_err(err, errlen, "tokenizer: %s has type %s, expected an array of %s", key,
                kv->type == GGUF_ARRAY ? gguf_vtype_name(kv->arr_type) : gguf_vtype_name(kv->type),
                gguf_vtype_name(want1));
        *bad = 1;
        return NULL;
    }
    return kv;
}

static int build_vocab(struct tokenizer *t, const gguf_kv *tokens, const gguf_kv *scores,
                       const gguf_kv *types, char *err, size_t errlen) {
    int32_t n = t->n_vocab;
    size_t nz = (uint32_t)n;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        uint64_t l = tokens->arr_strs[i].len;
        total += l ? l : 24; /* room for "[EMPTY_<i>]" */
    }
    t->blob = malloc(total ? total : 1);
    t->off = malloc(nz * sizeof *t->off);
    t->len = malloc(nz * sizeof *t->len);
    t->score = malloc(nz * sizeof *t->score);
    t->attr = malloc(nz * sizeof *t->attr);
    t->eog = calloc(nz, 1);
    if (!t->blob || !t->off || !t->len || !t->score || !t->attr || !t->eog) {
        set_err(err, errlen, "tokenizer: out of memory for %d tokens", n);
        return -1;
    }
    uint64_t pos = 0;
    for (int32_t i = 0; i < n; i++) {
        const gguf_str *s = &tokens->arr_strs[i];
        if (s->len > UINT32_MAX / 2) {
            set_err(err, errlen, "tokenizer: token %d is too long (%llu bytes)", i,
                    (unsigned long long)s->len);
            return -1;
        }
        t->off[i] = pos;
        if (s->len == 0) {
            /* An empty piece could never be matched; llama.cpp gives it a
             * placeholder name, and so do we, so lookups stay well-defined. */
            int k = snprintf(t->blob + pos, 24, "[EMPTY_%d]", i);
            t->len[i] = (uint32_t)k;
        } else {
            memcpy(t->blob + pos, s->ptr, s->len);
            t->len[i] = (uint32_t)s->len;
        }
        pos += t->len[i];
        if (t->len[i] > t->max_piece_len) t->max_piece_len = t->len[i];
        t->score[i] = scores ? (float)gguf_arr_f64(scores, (uint64_t)i) : 0.0f;
        uint32_t a = TOK_ATTR_NORMAL;
        if (types) {
            switch (gguf_arr_i64(types, (uint64_t)i)) {
            case 1: a = TOK_ATTR_NORMAL; break;
            case 2: a = TOK_ATTR_UNKNOWN; break;
            case 3: a = TOK_ATTR_CONTROL; break;
            case 4: a = TOK_ATTR_USER_DEFINED; break;
            case 5: a = TOK_ATTR_UNUSED; break;
            case 6: a = TOK_ATTR_BYTE; break;
            default: a = 0; break; /* undefined: rendered as nothing */
            }
        }
        t->attr[i] = a;
    }

    /* Hash table at most half full. */
    uint32_t size = 16;
    while (size < (uint32_t)n * 2u) size <<= 1;
    t->map.mask = size - 1;
    t->map.slots = malloc((size_t)size * sizeof *t->map.slots);
    if (!t->map.slots) {
        set_err(err, errlen, "tokenizer: out of memory for the vocabulary index");
        return -1;
    }
    memset(t->map.slots, 0xff, (size_t)size * sizeof *t->map.slots);
    for (int32_t i = 0; i < n; i++) {
        const char *p = t->blob + t->off[i];
        uint64_t hash = tok__hash(p, t->len[i]);
        uint32_t h = (uint32_t)hash & t->map.mask, tag = (uint32_t)(hash >> 32);
        int dup = 0;
        for (;;) {
            const tok__strslot *sl = &t->map.slots[h];
            if (sl->id < 0) break;
            if (sl->tag == tag && t->len[sl->id] == t->len[i] && !memcmp(t->blob + t->off[sl->id], p, t->len[i])) {
                dup = 1; /* keep the first id for a duplicated piece */
                break;
            }
            h = (h + 1) & t->map.mask;
        }
        if (!dup) t->map.slots[h] = (tok__strslot){tag, i};
    }
    return 0;
}

/* Special ids: defaults by model, then the metadata's value when it is in
 * range (llama.cpp ignores out-of-range ids such as 0xFFFFFFFF). */
static int32_t read_id(const gguf_file *f, const char *key, int32_t def, int32_t n) {
    uint32_t v;
    if (def >= n) def = -1;
    if (gguf_get_u32(f, key, &v) == 0 && v < (uint32_t)n) return (int32_t)v;
    int64_t w;
    if (gguf_get_i64(f, key, &w) == 0 && w >= 0 && w < n) return (int32_t)w;
    return def;
}

static int32_t find_first(const struct tokenizer *t, const char *const *list) {
    for (; *list; list++) {
        int32_t id = tok__find(t, *list, strlen(*list));
        if (id >= 0) return id;
    }
    return -1;
}

static void mark_control(struct tokenizer *t, int32_t id) {
    if (id >= 0) t->attr[id] |= TOK_ATTR_CONTROL;
}

/* End-of-generation tokens, detected by text as llama.cpp does (model files
 * rarely list them all in metadata). */
static void detect_eog(struct tokenizer *t) {
    static const char *const eot_names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
        "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
        "<end_of_utterance>", NULL};
    static const char *const fim_pad[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
    static const char *const fim_rep[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL};
    static const char *const fim_sep[] = {"<|file_sep|>", NULL};
    static const char *const eog_names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "[e~[", NULL};
    static const char *const eom_names[] = {"<|eom_id|>", NULL};

    if (t->eot < 0) { t->eot = find_first(t, eot_names); mark_control(t, t->eot); }
    if (t->eom < 0) { t->eom = find_first(t, eom_names); mark_control(t, t->eom); }
    int32_t ids[3] = {find_first(t, fim_pad), find_first(t, fim_rep), find_first(t, fim_sep)};
    for (int k = 0; k < 3; k++)
        if (ids[k] >= 0) { t->eog[ids[k]] = 1; mark_control(t, ids[k]); }

    for (const char *const *name = eog_names; *name; name++) {
        int32_t id = tok__find(t, *name, strlen(*name));
        if (id >= 0) { t->eog[id] = 1; mark_control(t, id); }
    }
    /* Control tokens named "unused" are placeholders. */
    for (int32_t id = 0; id < t->n_vocab; id++)
        if ((t->attr[id] & TOK_ATTR_CONTROL) && memmem(t->blob + t->off[id], t->len[id], "unused", 6))
            t->attr[id] |= TOK_ATTR_UNUSED;
    if (t->eos >= 0) t->eog[t->eos] = 1;
    if (t->eot >= 0) t->eog[t->eot] = 1;
    if (t->eom >= 0) t->eog[t->eom] = 1;

    /* gpt-oss style vocabularies: <|end|> ends a message, not generation. */
    int32_t ret = tok__find(t, "<|return|>", 10), call = tok__find(t, "<|call|>", 8);
    int32_t calls = tok__find(t, "<|calls|>", 9), flush = tok__find(t, "<|flush|>", 9);
    int32_t end = tok__find(t, "<|end|>", 7);
    if (end >= 0 && ((ret >= 0 && call >= 0) || (calls >= 0 && flush >= 0))) {
        t->eog[end] = 0;
        t->attr[end] = TOK_ATTR_USER_DEFINED;
    }
    /* gemma4: </s> is ordinary text there. */
    int32_t tr = tok__find(t, "<|tool_response>", 16), s = tok__find(t, "</s>", 4);
    if (tr >= 0 && s >= 0 && t->eog[s] && s != t->eos) {
        t->eog[s] = 0;
        t->attr[s] = TOK_ATTR_NORMAL;
    }
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const struct tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->len[x] != t->len[y]) return t->len[x] > t->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

static int build_specials(struct tokenizer *t, const gguf_file *f) {
    /* phi-3: whitespace after special tokens belongs to them (rstrip). */
    char name[128] = "";
    gguf_get_str(f, "general.name", name, sizeof name);
    for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
    int phi3 = strstr(name, "phi-3") || strstr(name, "phi3");

    int32_t n = 0;
    const uint32_t sp = TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & sp) n++;
    t->special = malloc((size_t)(n ? n : 1) * sizeof *t->special);
    if (!t->special) return -1;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & sp) t->special[n++] = id;
    t->n_special = n;
    qsort_r(t->special, (size_t)n, sizeof *t->special, cmp_special, t);
    if (phi3) {
        for (int32_t k = 0; k < n; k++) t->attr[t->special[k]] |= TOK__ATTR_RSTRIP;
        int32_t id = tok__find(t, "</s>", 4);
        if (id >= 0) t->attr[id] |= TOK__ATTR_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (int k = 0; k < 3; k++) {
            id = tok__find(t, keep[k], strlen(keep[k]));
            if (id >= 0) t->attr[id] &= ~TOK__ATTR_RSTRIP;
        }
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* "<0xAB>" -> 0xAB, or -1. */
static int piece_hex_byte(const char *p, uint32_t n) {
    if (n != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
    int h = hexval(p[3]), l = hexval(p[4]);
    return h < 0 || l < 0 ? -1 : h * 16 + l;
}

/* Decoded text of every token, computed once so that decoding is a copy. */
static int build_decoded(struct tokenizer *t) {
    int32_t n = t->n_vocab;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++) total += t->len[i];
    t->dec_blob = malloc(total ? total : 1);
    t->dec_off = malloc((size_t)n * sizeof *t->dec_off);
    t->dec_len = malloc((size_t)n * sizeof *t->dec_len);
    if (!t->dec_blob || !t->dec_off || !t->dec_len) return -1;
    uint64_t pos = 0;
    const uint32_t raw = TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN | TOK_ATTR_USER_DEFINED;
    for (int32_t i = 0; i < n; i++) {
        const char *p = t->blob + t->off[i];
        uint32_t l = t->len[i], a = t->attr[i];
        char *o = t->dec_blob + pos;
        uint32_t k = 0;
        if (a & raw) {
            memcpy(o, p, l);
            k = l;
        } else if (a & TOK_ATTR_NORMAL) {
            if (t->kind == TOK_SPM || t->escape_spaces) {
                for (uint32_t j = 0; j < l; j++) {
                    if (j + 2 < l && (unsigned char)p[j] == 0xE2 && (unsigned char)p[j + 1] == 0x96 &&
                        (unsigned char)p[j + 2] == 0x81) {
                        o[k++] = ' ';
                        j += 2;
                    } else {
                        o[k++] = p[j];
                    }
                }
            } else {
                /* Byte-level: each code point stands for one byte. A code
                 * point outside the mapping is kept as its UTF-8. */
                uint32_t j = 0;
                while (j < l) {
                    uint32_t cp;
                    int cl = tok__utf8_decode((const unsigned char *)p + j, l - j, &cp);
                    if (cl == 0) { o[k++] = p[j++]; continue; }
                    int b = tok__cp_to_byte(cp);
                    if (b >= 0) o[k++] = (char)b;
                    else { memcpy(o + k, p + j, (size_t)cl); k += (uint32_t)cl; }
                    j += (uint32_t)cl;
                }
            }
        } else if (a & TOK_ATTR_BYTE) {
            int b = piece_hex_byte(p, l);
            if (b >= 0) o[k++] = (char)b;
            else { memcpy(o, p, l); k = l; }
        }
        t->dec_off[i] = pos;
        t->dec_len[i] = k;
        if (k > t->max_dec_len) t->max_dec_len = k;
        pos += k;
    }
    return 0;
}

/* True when no piece has U+2581 right after a character other than U+2581:
 * then a merged SPM symbol never spans the start of a word. */
static int spm_words_independent(const struct tokenizer *t) {
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const unsigned char *p = (const unsigned char *)t->blob + t->off[id];
        uint32_t l = t->len[id];
        for (uint32_t k = 1; k + 2 < l; k++) {
            if (p[k] != 0xE2 || p[k + 1] != 0x96 || p[k + 2] != 0x81) continue;
            if (k < 3 || p[k - 3] != 0xE2 || p[k - 2] != 0x96 || p[k - 1] != 0x81) return 0;
        }
    }
    return 1;
}

int tokenizer_load(const gguf_file *f, tokenizer **out, char *err, size_t errlen) {
    *out = NULL;
    if (!f) { set_err(err, errlen, "tokenizer: no GGUF file"); return -1; }
    char model[64] = "", pre[64] = "";
    if (gguf_get_str(f, "tokenizer.ggml.model", model, sizeof model) != 0) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.model is missing (no tokenizer in this file)");
        return -1;
    }
    int has_pre = gguf_get_str(f, "tokenizer.ggml.pre", pre, sizeof pre) == 0;

    struct tokenizer *t = calloc(1, sizeof *t);
    if (!t) { set_err(err, errlen, "tokenizer: out of memory"); return -1; }
    t->bos = t->eos = t->eot = t->eom = t->unk = t->pad = -1;
    if (!strcmp(model, "llama")) {
        t->kind = TOK_SPM;
    } else if (!strcmp(model, "gpt2")) {
        t->kind = TOK_BPE;
    } else if (!strcmp(model, "gemma4")) {
        t->kind = TOK_BPE;
        snprintf(pre, sizeof pre, "gemma4");
        has_pre = 1;
    } else {
        set_err(err, errlen, "tokenizer: unknown tokenizer model '%s' (tokenizer.ggml.model; "
                "supported: llama, gpt2, gemma4)", model);
        free(t);
        return -1;
    }

    int bad;
    const gguf_kv *tokens = find_array(f, "tokenizer.ggml.tokens", GGUF_STRING, GGUF_STRING, err, errlen, &bad);
    if (!tokens) {
        if (!bad) set_err(err, errlen, "tokenizer: tokenizer.ggml.tokens is missing");
        goto fail;
    }
    if (tokens->arr_n == 0 || tokens->arr_n > (1u << 30)) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.tokens has %llu entries",
                (unsigned long long)tokens->arr_n);
        goto fail;
    }
    t->n_vocab = (int32_t)tokens->arr_n;
    const gguf_kv *scores = find_array(f, "tokenizer.ggml.scores", GGUF_FLOAT32, GGUF_INT32, err, errlen, &bad);
    if (bad) goto fail;
    if (scores && scores->arr_n < tokens->arr_n) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.scores has %llu entries for %d tokens",
                (unsigned long long)scores->arr_n, t->n_vocab);
        goto fail;
    }
    const gguf_kv *types = find_array(f, "tokenizer.ggml.token_type", GGUF_INT32, GGUF_UINT32, err, errlen, &bad);
    if (bad) goto fail;
    if (types && types->arr_n < tokens->arr_n) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.token_type has %llu entries for %d tokens",
                (unsigned long long)types->arr_n, t->n_vocab);
        goto fail;
    }
    if (build_vocab(t, tokens, scores, types, err, errlen)) goto fail;

    for (int b = 0; b < 256; b++) {
        char u[4];
        int l = tok__utf8_encode(tok__byte_to_cp((unsigned char)b), u);
        memcpy(t->byte_utf8[b], u, (size_t)l);
        t->byte_utf8_len[b] = (uint8_t)l;
    }

    if (t->kind == TOK_SPM) {
        t->bos = 1; t->eos = 2; t->unk = 0;
        t->add_bos = 1;
        t->add_space_prefix = 1;
        snprintf(t->pre_name, sizeof t->pre_name, "%s", has_pre ? pre : "default");
    } else {
        if (tok__bpe_setup(t, has_pre ? pre : NULL, err, errlen)) goto fail;
        const gguf_kv *merges = find_array(f, "tokenizer.ggml.merges", GGUF_STRING, GGUF_STRING, err, errlen, &bad);
        if (!merges) {
            if (!bad) set_err(err, errlen, "tokenizer: tokenizer.ggml.merges is missing (needed by BPE)");
            goto fail;
        }
        if (tok__bpe_load_merges(t, merges, err, errlen)) goto fail;
        t->add_bos = tok__bpe_pre_default_bos(t->pre_name);
    }
    if (t->kind == TOK_SPM) t->spm_words = spm_words_independent(t);
    /* Byte fallback tokens <0xXX> (SPM, and BPE without byte encoding). */
    for (int b = 0; b < 256; b++) {
        static const char digits[] = "0123456789ABCDEF";
        char hx[6] = {'<', '0', 'x', digits[b >> 4], digits[b & 15], '>'};
        int32_t id = tok__find(t, hx, 6);
        if (id < 0 && t->kind == TOK_SPM) {
            char c = (char)b;
            id = tok__find(t, &c, 1);
        }
        t->byte_id[b] = id;
    }

    int32_t n = t->n_vocab;
    t->bos = read_id(f, "tokenizer.ggml.bos_token_id", t->bos, n);
    t->eos = read_id(f, "tokenizer.ggml.eos_token_id", t->eos, n);
    t->eot = read_id(f, "tokenizer.ggml.eot_token_id", t->eot, n);
    t->eom = read_id(f, "tokenizer.ggml.eom_token_id", t->eom, n);
    t->unk = read_id(f, "tokenizer.ggml.unknown_token_id", t->unk, n);
    t->pad = read_id(f, "tokenizer.ggml.padding_token_id", t->pad, n);
    int v;
    if (gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &v) == 0) t->add_bos = v != 0;
    if (gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &v) == 0) t->add_eos = v != 0;
    if (gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &v) == 0) t->add_space_prefix = v != 0;
    if (!strcmp(t->pre_name, "gemma4")) t->add_bos = 1;
    if (t->add_bos && t->bos < 0) {
        set_err(err, errlen, "tokenizer: add_bos_token is true but bos_token_id is not set");
        goto fail;
    }
    if (t->add_eos && t->eos < 0) {
        set_err(err, errlen, "tokenizer: add_eos_token is true but eos_token_id is not set");
        goto fail;
    }

    detect_eog(t);
    if (build_specials(t, f) || build_decoded(t)) {
        set_err(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    *out = t;
    return 0;
fail:
    tokenizer_free(t);
    return -1;
}

void tokenizer_free(tokenizer *t) {
    if (!t) return;
    tok__bpe_free(t);
    free(t->blob); free(t->off); free(t->len); free(t->score); free(t->attr); free(t->eog);
    free(t->map.slots); free(t->merges.slots);
    free(t->special);
    free(t->dec_blob); free(t->dec_off); free(t->dec_len);
    free(t);
}

/* ---- accessors ------------------------------------------------------------- */

enum tok_kind tokenizer_kind(const tokenizer *t) { return t->kind; }
int32_t tokenizer_n_vocab(const tokenizer *t) { return t->n_vocab; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
int tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }
int tokenizer_add_eos(const tokenizer *t) { return t->add_eos; }

int tokenizer_is_eog(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

uint32_t tokenizer_attr(const tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return 0;
    return t->attr[id] & TOK__ATTR_PUBLIC;
}

const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) { if (len) *len = 0; return NULL; }
    if (len) *len = t->len[id];
    return t->blob + t->off[id];
}

int32_t tokenizer_find(const tokenizer *t, const char *piece, size_t len) {
    return tok__find(t, piece, len);
}

int64_t tokenizer_max_token_bytes(const tokenizer *t) {
    return t->max_dec_len;
}

/* ---- encoding ------------------------------------------------------------- */

/* A piece of the input: raw text (id < 0) or an already-matched special token. */
typedef struct frag {
    size_t off, len;
    int32_t id;
} frag;

typedef struct fragvec {
    frag *v;
    size_t n, cap;
} fragvec;

static int frag_push(fragvec *f, size_t off, size_t len, int32_t id) {
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 16;
        frag *p = realloc(f->v, nc * sizeof *p);
        if (!p) return -1;
        f->v = p;
        f->cap = nc;
    }
    f->v[f->n++] = (frag){off, len, id};
    return 0;
}

typedef struct match { size_t pos; int32_t id; } match;

static int cmp_match(const void *a, const void *b) {
    size_t x = ((const match *)a)->pos, y = ((const match *)b)->pos;
    return x < y ? -1 : x > y;
}

/* Find the special tokens in text, longest tokens first, as llama.cpp's
 * tokenizer_st_partition does with its fragment list: each token takes its
 * leftmost non-overlapping occurrences in what earlier (longer) tokens left
 * free, so a token found earlier in this order wins over a shorter one that
 * overlaps it. The free text is tracked with one byte per input byte
 * (0 free, 1 taken by a token, 2 dropped whitespace of an lstrip/rstrip
 * token), which keeps each token's pass one linear scan of the text.
 * Appends the text and token fragments in order to *out. */
static int partition_specials(const struct tokenizer *t, const char *text, size_t len,
                              int parse_special, fragvec *out) {
    uint8_t *taken = NULL;
    match *m = NULL;
    size_t nm = 0, capm = 0;
    for (int32_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        uint32_t a = t->attr[id];
        if (!parse_special && (a & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) continue;
        const char *sp = t->blob + t->off[id];
        size_t sl = t->len[id], q = 0;
        while (q + sl <= len) {
            const char *hit = memmem(text + q, len - q, sp, sl);
            if (!hit) break;
            size_t p = (size_t)(hit - text);
            if (taken) {
                /* Occupied anywhere in [p, p+sl)? Restart after the last
                 * occupied byte: no occurrence before it can be free. */
                size_t j = p + sl;
                while (j > p && !taken[j - 1]) j--;
                if (j > p) { q = j; continue; }
            } else {
                taken = calloc(len, 1);
                if (!taken) goto oom;
            }
            memset(taken + p, 1, sl);
            if (a & TOK__ATTR_LSTRIP)
                for (size_t j = p; j > 0 && !taken[j - 1] && isspace((unsigned char)text[j - 1]); j--)
                    taken[j - 1] = 2;
            q = p + sl;
            if (a & TOK__ATTR_RSTRIP)
                while (q < len && !taken[q] && isspace((unsigned char)text[q])) taken[q++] = 2;
            if (nm == capm) {
                size_t nc = capm ? capm * 2 : 16;
                match *nmv = realloc(m, nc * sizeof *nmv);
                if (!nmv) goto oom;
                m = nmv;
                capm = nc;
            }
            m[nm++] = (match){p, id};
        }
    }
    if (nm == 0) {
        free(taken);
        return frag_push(out, 0, len, -1);
    }
    qsort(m, nm, sizeof *m, cmp_match);
    size_t pos = 0;
    for (size_t i = 0; i <= nm; i++) {
        size_t end = i < nm ? m[i].pos : len;
        /* free text between tokens, minus stripped whitespace */
        size_t r = pos;
        while (r < end) {
            while (r < end && taken[r]) r++;
            size_t st = r;
            while (r < end && !taken[r]) r++;
            if (r > st && frag_push(out, st, r - st, -1)) goto oom;
        }
        if (i == nm) break;
        if (frag_push(out, m[i].pos, t->len[m[i].id], m[i].id)) goto oom;
        pos = m[i].pos + t->len[m[i].id];
    }
    free(taken);
    free(m);
    return 0;
oom:
    free(taken);
    free(m);
    return -1;
}

int64_t tokenizer_encode(const tokenizer *t, const char *text, size_t len,
                         int add_special, int parse_special, int32_t *ids, int64_t cap) {
    if (!t || (!text && len)) return -1;
    tok__out out = {0};
    fragvec frags = {0};
    int rc = 0;
    if (len > 0) {
        if (partition_specials(t, text, len, parse_special, &frags)) {
            free(frags.v);
            return -2;
        }
    }
    if (add_special && t->add_bos) tok__out_push(&out, t->bos);
    if (t->kind == TOK_SPM) {
        /* The leading-space rule: a text fragment at the start or right after
         * a special token gets one space in front. */
        int prev_special = 1;
        char *buf = NULL;
        size_t bufcap = 0;
        for (size_t i = 0; i < frags.n && rc == 0; i++) {
            frag fr = frags.v[i];
            if (fr.id >= 0) { tok__out_push(&out, fr.id); prev_special = 1; continue; }
            size_t need = fr.len + 1;
            if (need > bufcap) {
                char *nb = realloc(buf, need);
                if (!nb) { rc = -2; break; }
                buf = nb;
                bufcap = need;
            }
            size_t n = 0;
            if (t->add_space_prefix && prev_special) buf[n++] = ' ';
            memcpy(buf + n, text + fr.off, fr.len);
            n += fr.len;
            rc = tok__spm_encode(t, buf, n, &out);
            prev_special = 0;
        }
        free(buf);
    } else {
        tok__bpe_scratch *sc = tok__bpe_scratch_create();
        if (!sc) rc = -2;
        for (size_t i = 0; i < frags.n && rc == 0; i++) {
            frag fr = frags.v[i];
            if (fr.id >= 0) tok__out_push(&out, fr.id);
            else rc = tok__bpe_encode(t, text + fr.off, fr.len, &out, sc);
        }
        tok__bpe_scratch_free(sc);
    }
    if (add_special && t->add_eos) tok__out_push(&out, t->eos);
    free(frags.v);
    if (rc == 0 && out.oom) rc = -2;
    if (rc != 0) { free(out.ids); return rc; }
    int64_t n = out.n;
    if (ids && cap > 0 && n > 0) memcpy(ids, out.ids, (size_t)(n < cap ? n : cap) * sizeof *ids);
    free(out.ids);
    return n;
}

/* ---- decoding ------------------------------------------------------------- */

/* The decoded bytes of id, or NULL/0 when nothing is rendered. */
static const char *token_text(const struct tokenizer *t, int32_t id, int render_special, uint32_t *n) {
    *n = 0;
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (!render_special && (t->attr[id] & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) return NULL;
    *n = t->dec_len[id];
    return t->dec_blob + t->dec_off[id];
}

int64_t tokenizer_token_to_bytes(const tokenizer *t, int32_t id, int render_special,
                                 char *buf, int64_t cap) {
    uint32_t n;
    const char *p = token_text(t, id, render_special, &n);
    if (n && buf && cap > 0) memcpy(buf, p, (size_t)((int64_t)n < cap ? n : cap));
    return n;
}

static int strips_space(const struct tokenizer *t) {
    return t->kind == TOK_SPM && t->add_space_prefix;
}

int64_t tokenizer_decode(const tokenizer *t, const int32_t *ids, int64_t n,
                         int render_special, char *buf, int64_t cap) {
    int64_t total = 0;
    /* The encoder put one space in front of the text: the first token after
     * an optional leading BOS loses it again. */
    int64_t strip_at = -1;
    if (strips_space(t) && n > 0) strip_at = (ids[0] == t->bos && n > 1) ? 1 : 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t l;
        const char *p = token_text(t, ids[i], render_special, &l);
        if (i == strip_at && l > 0 && p[0] == ' ') { p++; l--; }
        if (l && buf && total < cap) {
            int64_t k = cap - total < (int64_t)l ? cap - total : (int64_t)l;
            memcpy(buf + total, p, (size_t)k);
        }
        total += l;
    }
    return total;
}

/* ---- streaming ------------------------------------------------------------ */

void tok_stream_init(tok_stream *s, const tokenizer *t, int strip_leading_space) {
    memset(s, 0, sizeof *s);
    s->first = strip_leading_space && strips_space(t);
}

static int64_t put(char *out, int64_t cap, int64_t n, const char *p, int64_t k) {
    if (n + k <= cap) memcpy(out + n, p, (size_t)k);
    return n + k <= cap ? n + k : n;
}

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

/* Emit the complete characters of s->pending; keep an incomplete tail. */
static int64_t drain(tok_stream *s, char *out, int64_t cap, int64_t n) {
    while (s->n_pending > 0) {
        int incomplete;
        size_t ok = tok__utf8_valid_prefix((const unsigned char *)s->pending, (size_t)s->n_pending, &incomplete);
        if (ok > 0) {
            n = put(out, cap, n, s->pending, (int64_t)ok);
            memmove(s->pending, s->pending + ok, (size_t)s->n_pending - ok);
            s->n_pending -= (int)ok;
            continue;
        }
        if (incomplete) break;
        /* The first byte can never start a character: replace it. */
        n = put(out, cap, n, replacement, 3);
        memmove(s->pending, s->pending + 1, (size_t)s->n_pending - 1);
        s->n_pending--;
    }
    return n;
}

int64_t tok_stream_push(tok_stream *s, const tokenizer *t, int32_t id, int render_special,
                        char *out, int64_t cap) {
    uint32_t l;
    const char *p = token_text(t, id, render_special, &l);
    if (s->first && id != t->bos && l > 0) {
        if (p[0] == ' ') { p++; l--; }
        s->first = 0;
    }
    int64_t n = 0;
    /* Feed bytes through the small pending buffer; whole valid runs of the
     * piece go straight to out. */
    uint32_t i = 0;
    while (i < l) {
        if (s->n_pending == 0) {
            int incomplete;
            size_t ok = tok__utf8_valid_prefix((const unsigned char *)p + i, l - i, &incomplete);
            if (ok > 0) { n = put(out, cap, n, p + i, (int64_t)ok); i += (uint32_t)ok; continue; }
        }
        s->pending[s->n_pending++] = p[i++];
        n = drain(s, out, cap, n);
        if (s->n_pending >= 4) { /* cannot happen for a held tail; be safe */
            n = put(out, cap, n, replacement, 3);
            s->n_pending = 0;
        }
    }
    return n;
}

int64_t tok_stream_flush(tok_stream *s, char *out, int64_t cap) {
    int64_t n = 0;
    if (s->n_pending > 0) {
        /* An incomplete character at the end is one replacement character. */
        n = put(out, cap, n, replacement, 3);
        s->n_pending = 0;
    }
    return n;
}
