/* tokenizer_bpe.c -- byte-level BPE (tokenizer.ggml.model = "gpt2"/"gemma4").
 *
 * Encoding a raw text fragment:
 *   1. invalid UTF-8 bytes become U+FFFD (so the regexes see valid text);
 *   2. the pre-tokenizer named by tokenizer.ggml.pre splits the text into
 *      words: a list of regexes applied in turn, each one splitting every
 *      piece from the previous step into its matches and the gaps between
 *      them (llama.cpp's unicode_regex_split semantics);
 *   3. each word's bytes are mapped to GPT-2's printable code points;
 *   4. adjacent symbols are merged, lowest merge rank first, leftmost on ties.
 *
 * Regexes run on PCRE2 (UTF + UCP, JIT when available). `\s` / `\S` are
 * rewritten to the Unicode White_Space set, which is what the reference
 * tokenizers mean by whitespace (PCRE2's own \s leaves out U+0085). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tokenizer_internal.h"

/* ---- pre-tokenizers ------------------------------------------------------ */

#define CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3 CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2 CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN35 CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_CJK_KOREAN "[\\x{4e00}-\\x{9fa5}\\x{800}-\\x{4e00}\\x{ac00}-\\x{d7ff}]+"
#define RE_CJK_KANA "[\\x{4e00}-\\x{9fa5}\\x{3040}-\\x{309f}\\x{30a0}-\\x{30ff}]+"
/* Letters with case, as listed by DeepSeek's tokenizer.json. */
#define RE_DEEPSEEK_LETTERS \
    "\\s?[A-Za-z\\x{b5}\\x{c0}-\\x{d6}\\x{d8}-\\x{f6}\\x{f8}-\\x{1ba}\\x{1bc}-\\x{1bf}\\x{1c4}-\\x{293}" \
    "\\x{295}-\\x{2af}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37b}-\\x{37d}\\x{37f}\\x{386}\\x{388}-\\x{38a}" \
    "\\x{38c}\\x{38e}-\\x{3a1}\\x{3a3}-\\x{3f5}\\x{3f7}-\\x{481}\\x{48a}-\\x{52f}\\x{531}-\\x{556}" \
    "\\x{10a0}-\\x{10c5}\\x{13a0}-\\x{13f5}\\x{13f8}-\\x{13fd}\\x{1c90}-\\x{1cba}\\x{1cbd}-\\x{1cbf}" \
    "\\x{1d00}-\\x{1d2b}\\x{1d6b}-\\x{1d77}\\x{1d79}-\\x{1d9a}\\x{1e00}-\\x{1f15}\\x{1f18}-\\x{1f1d}" \
    "\\x{1f20}-\\x{1f45}\\x{1f48}-\\x{1f4d}\\x{1f50}-\\x{1f57}\\x{1f59}\\x{1f5b}\\x{1f5d}\\x{1f5f}-\\x{1f7d}" \
    "\\x{1f80}-\\x{1fb4}\\x{1fb6}-\\x{1fbc}\\x{1fbe}\\x{1fc2}-\\x{1fc4}\\x{1fc6}-\\x{1fcc}\\x{1fd0}-\\x{1fd3}" \
    "\\x{1fd6}-\\x{1fdb}\\x{1fe0}-\\x{1fec}\\x{1ff2}-\\x{1ff4}\\x{1ff6}-\\x{1ffc}\\x{2102}\\x{2107}" \
    "\\x{210a}-\\x{2113}\\x{2115}\\x{2119}-\\x{211d}\\x{2124}\\x{2126}\\x{2128}\\x{212a}-\\x{212d}" \
    "\\x{212f}-\\x{2134}\\x{2139}\\x{213c}-\\x{213f}\\x{2145}-\\x{2149}\\x{214e}\\x{2183}\\x{2184}" \
    "\\x{2c00}-\\x{2c7b}\\x{2c7e}-\\x{2ce4}\\x{2ceb}-\\x{2cee}\\x{2cf2}\\x{2cf3}\\x{a640}-\\x{a66d}" \
    "\\x{a680}-\\x{a69b}\\x{a722}-\\x{a76f}\\x{a771}-\\x{a787}\\x{a78b}-\\x{a78e}\\x{ab70}-\\x{abbf}" \
    "\\x{fb00}-\\x{fb06}\\x{fb13}-\\x{fb17}\\x{ff21}-\\x{ff3a}\\x{ff41}-\\x{ff5a}\\x{10400}-\\x{1044f}" \
    "\\x{104b0}-\\x{104d3}\\x{104d8}-\\x{104fb}\\x{10c80}-\\x{10cb2}\\x{10cc0}-\\x{10cf2}" \
    "\\x{118a0}-\\x{118df}\\x{1e900}-\\x{1e943}]+"
#define RE_PORO " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{ff0c}\\x{3001}\\x{964}\\x{6d4}\\x{60c})]+"
#define RE_UPPER_LOWER(suffix, digits) \
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+" suffix \
    "|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*" suffix \
    "|" digits "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

typedef struct pre_def {
    const char *names;          /* space-separated tokenizer.ggml.pre values */
    const char *re[TOK__MAX_REGEX];
    int ignore_merges, add_bos, raw_bytes;
} pre_def;

static const pre_def pre_defs[] = {
    {"default",
     {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"}, 0, 0, 0},
    {"llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
     {RE_LLAMA3}, 1, 1, 0},
    {"dbrx smaug-bpe glm4 chatglm-bpe", {RE_LLAMA3}, 0, 0, 0},
    {"deepseek-llm",
     {"[\\r\\n]", RE_DEEPSEEK_LETTERS,
      "\\s?[!-/:-~\\x{ff01}-\\x{ff0f}\\x{ff1a}-\\x{ff5e}\\x{2018}-\\x{201f}\\x{3000}-\\x{3002}]+",
      "\\s+$", RE_CJK_KOREAN, "\\p{N}+"}, 0, 0, 0},
    {"deepseek-coder",
     {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK_KOREAN, "\\p{N}"}, 0, 0, 0},
    {"deepseek-v3 hunyuan-dense joyai-llm hy_v4",
     {"\\p{N}{1,3}", RE_CJK_KANA,
      "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
      "| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 0, 0, 0},
    {"falcon", {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"}, 0, 0, 0},
    {"starcoder refact command-r smollm codeshell exaone minerva-7b mellum2",
     {"\\p{N}", RE_GPT2}, 0, 0, 0},
    {"gpt-2 mpt phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert "
     "jina-v1-en jina-v2-code roberta-bpe olmo jais trillion granite-docling exaone4",
     {RE_GPT2}, 0, 0, 0},
    {"qwen2 deepseek-r1-qwen kormo f2llmv2 stablelm2 hunyuan solar-open megrez grok-2",
     {RE_QWEN2}, 0, 0, 0},
    {"qwen35", {RE_QWEN35}, 0, 0, 0},
    {"poro-chat bloom gpt3-finnish", {RE_PORO}, 0, 0, 0},
    {"viking", {RE_PORO, "\\p{N}"}, 0, 0, 0},
    {"tekken", {RE_UPPER_LOWER("", "\\p{N}")}, 1, 1, 0},
    {"gpt-4o llama4 kanana2 talkie", {RE_UPPER_LOWER(CONTRACTIONS "?", "\\p{N}{1,3}")}, 0, 0, 0},
    {"bailingmoe bailingmoe2 llada-moe",
     {"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
      "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"}, 0, 0, 0},
    {"seed-coder",
     {CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+"
      "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 0, 0, 0},
    {"minicpm5",
     {"\\p{N}{1,3}", CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
      "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, 1, 0, 0},
    {"chameleon",
     {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
      "[\\p{P}!-/:-@\\[-`{-~]", RE_GPT2}, 0, 1, 0},
    /* SentencePiece-style BPE over raw UTF-8: spaces are U+2581, only
     * newlines split words. */
    {"gemma4 gemma-4 granite-embed-multi-311m", {"[^\\n]+|[\\n]+"}, 0, 1, 1},
};

static const pre_def *pre_lookup(const char *name) {
    size_t nl = strlen(name);
    for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++) {
        const char *p = pre_defs[i].names;
        while (*p) {
            const char *e = strchr(p, ' ');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (l == nl && !memcmp(p, name, nl)) return &pre_defs[i];
            p += l;
            while (*p == ' ') p++;
        }
    }
    return NULL;
}

int tok__bpe_pre_default_bos(const char *pre) {
    const pre_def *d = pre_lookup(pre);
    return d ? d->add_bos : 0;
}

#define WS_SET "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"

/* Rewrite \s and \S to the White_Space set, inside and outside classes.
 * Returns a malloc'd pattern or NULL on OOM. */
static char *rewrite_ws(const char *re) {
    size_t n = strlen(re), cap = n * 8 + 64 + n * sizeof WS_SET;
    char *o = malloc(cap);
    if (!o) return NULL;
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < n) {
            char d = re[i + 1];
            if (d == 's' || d == 'S') {
                const char *rep = in_class ? WS_SET : (d == 's' ? "[" WS_SET "]" : "[^" WS_SET "]");
                size_t rl = strlen(rep);
                memcpy(o + k, rep, rl);
                k += rl;
            } else {
                o[k++] = c;
                o[k++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) in_class = 1;
        else if (c == ']' && in_class) in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    return o;
}

int tok__bpe_setup(struct tokenizer *t, const char *pre, char *err, size_t errlen) {
    const char *name = pre && *pre ? pre : "default";
    const pre_def *d = pre_lookup(name);
    if (!d) {
        snprintf(err, errlen, "tokenizer: unknown pre-tokenizer '%s' (tokenizer.ggml.pre)", name);
        return -1;
    }
    snprintf(t->pre_name, sizeof t->pre_name, "%s", name);
    t->ignore_merges = d->ignore_merges;
    t->byte_encode = !d->raw_bytes;
    t->escape_spaces = d->raw_bytes;
    t->newline_words = d->raw_bytes;
    t->n_regex = 0;
    for (int i = 0; i < TOK__MAX_REGEX && d->re[i]; i++) {
        char *re = rewrite_ws(d->re[i]);
        if (!re) { snprintf(err, errlen, "tokenizer: out of memory"); return -1; }
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *code = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                                         PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_NO_UTF_CHECK,
                                         &ec, &eo, NULL);
        free(re);
        if (!code) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            snprintf(err, errlen, "tokenizer: pre-tokenizer '%s' regex %d does not compile: %s at %zu",
                     name, i, (const char *)msg, (size_t)eo);
            return -1;
        }
        t->regex[i].code = code;
        t->regex[i].jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
        t->n_regex = i + 1;
    }
    return 0;
}

void tok__bpe_free(struct tokenizer *t) {
    for (int i = 0; i < t->n_regex; i++) pcre2_code_free((pcre2_code *)t->regex[i].code);
    t->n_regex = 0;
}

/* ---- merges ------------------------------------------------------------ */

static uint32_t merge_hash(uint64_t key) {
    key ^= key >> 31;
    key *= 0x9e3779b97f4a7c15ull;
    key ^= key >> 29;
    return (uint32_t)key;
}

static const tok__merge_slot *merge_find(const struct tokenizer *t, int32_t l, int32_t r) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t i = merge_hash(key) & t->merges.mask;
    for (;;) {
        const tok__merge_slot *s = &t->merges.slots[i];
        if (s->key == UINT64_MAX) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & t->merges.mask;
    }
}

int tok__bpe_load_merges(struct tokenizer *t, const gguf_kv *kv, char *err, size_t errlen) {
    uint64_t n = kv->arr_n;
    if (n > (1u << 28)) {
        snprintf(err, errlen, "tokenizer: tokenizer.ggml.merges has %llu entries", (unsigned long long)n);
        return -1;
    }
    uint32_t size = 16;
    while (size < n * 2) size <<= 1;
    t->merges.mask = size - 1;
    t->merges.slots = malloc((size_t)size * sizeof *t->merges.slots);
    if (!t->merges.slots) { snprintf(err, errlen, "tokenizer: out of memory for merges"); return -1; }
    for (uint32_t i = 0; i < size; i++) t->merges.slots[i].key = UINT64_MAX;
    int32_t kept = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s = kv->arr_strs[i].ptr;
        size_t len = kv->arr_strs[i].len;
        /* "left right": split at the first space after the first byte (a
         * left part may itself be a space in raw-byte vocabularies). */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) continue;
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        int32_t l = tok__find(t, s, ll), r = tok__find(t, sp + 1, rl);
        int32_t res = tok__find2(t, s, ll, sp + 1, rl);
        /* A merge whose parts or result are not tokens can never apply. */
        if (l < 0 || r < 0 || res < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
        uint32_t h = merge_hash(key) & t->merges.mask;
        while (t->merges.slots[h].key != UINT64_MAX && t->merges.slots[h].key != key)
            h = (h + 1) & t->merges.mask;
        if (t->merges.slots[h].key == key) continue; /* first (best) rank wins */
        t->merges.slots[h] = (tok__merge_slot){key, (int32_t)i, res};
        kept++;
    }
    t->n_merges = kept;
    return 0;
}

/* ---- encoding ------------------------------------------------------------- */

typedef struct span { size_t off, len; } span;

typedef struct spanvec { span *v; size_t n, cap; int oom; } spanvec;

static void span_push(spanvec *s, size_t off, size_t len) {
    if (s->oom || len == 0) return;
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 64;
        span *p = realloc(s->v, nc * sizeof *p);
        if (!p) { s->oom = 1; return; }
        s->v = p;
        s->cap = nc;
    }
    s->v[s->n++] = (span){off, len};
}

/* Split every span of `in` by regex re: matches and the gaps between them
 * each become a span of `out`. The regex sees only the span (lookaheads stop
 * at its end), as in llama.cpp. */
static void split_regex(const tok__regex *re, const char *text, const spanvec *in, spanvec *out,
                        pcre2_match_data *md, pcre2_match_context *mctx) {
    const pcre2_code *code = re->code;
    for (size_t i = 0; i < in->n; i++) {
        const char *s = text + in->v[i].off;
        size_t len = in->v[i].len, start = 0, last = 0;
        while (start < len) {
            int rc = pcre2_match(code, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK, md, mctx);
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
                rc = pcre2_match(code, (PCRE2_SPTR)s, len, start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, mctx);
            if (rc < 0) break; /* no match (or a resource limit): the rest is one gap */
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me <= ms) {
                /* Empty match: step over one character. */
                if (ms >= len) break;
                start = ms + (size_t)tok__utf8_len((unsigned char)s[ms]);
                continue;
            }
            if (ms > last) span_push(out, in->v[i].off + last, ms - last);
            span_push(out, in->v[i].off + ms, me - ms);
            last = start = me;
        }
        if (last < len) span_push(out, in->v[i].off + last, len - last);
    }
}

typedef struct bsym {
    int32_t prev, next, id;
    uint32_t off, n;
} bsym;

/* Heap entries are one integer, (rank << 32) | left: the smallest is the
 * best merge (lowest rank, then leftmost), and 8-byte entries keep the heap
 * of a long word cache-friendly. The right symbol is left's current
 * neighbour; an entry is stale when that pair no longer has this rank (ranks
 * are unique per pair, so an equal rank means the very same pair). */
static void bheap_push(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t bheap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = l;
        if (l >= *n) break;
        if (l + 1 < *n && h[l + 1] < h[l]) m = l + 1;
        if (h[m] >= v) break;
        h[i] = h[m];
        i = m;
    }
    if (*n > 0) h[i] = v;
    return top;
}

static int32_t pair_rank(const struct tokenizer *t, const bsym *s, int32_t l, int32_t r,
                         const tok__merge_slot **slot) {
    if (l < 0 || r < 0 || s[l].id < 0 || s[r].id < 0) return -1;
    const tok__merge_slot *m = merge_find(t, s[l].id, s[r].id);
    if (slot) *slot = m;
    return m ? m->rank : -1;
}

static void add_pair(const struct tokenizer *t, const bsym *s, int32_t l, int32_t r, uint64_t *h, size_t *hn) {
    int32_t rank = pair_rank(t, s, l, r, NULL);
    if (rank >= 0) bheap_push(h, hn, ((uint64_t)(uint32_t)rank << 32) | (uint32_t)l);
}

/* BPE-merge one (already byte-encoded) word and append its ids. */
static void bpe_word(const struct tokenizer *t, const char *w, size_t n, bsym *s, uint64_t *h, tok__out *out) {
    if (n == 0) return;
    int whole = 0;
    if (t->ignore_merges) whole = 1;
    else if (t->newline_words) {
        whole = 1;
        for (size_t i = 0; i < n; i++) if (w[i] != '\n') whole = 0;
    }
    if (whole) {
        int32_t id = tok__find(t, w, n);
        if (id >= 0) { tok__out_push(out, id); return; }
    }
    int32_t ns = 0;
    for (size_t off = 0; off < n;) {
        size_t l = (size_t)tok__utf8_len((unsigned char)w[off]);
        if (l > n - off) l = n - off;
        s[ns] = (bsym){ns - 1, -1, tok__find(t, w + off, l), (uint32_t)off, (uint32_t)l};
        if (ns > 0) s[ns - 1].next = ns;
        ns++;
        off += l;
    }
    size_t hn = 0;
    for (int32_t i = 1; i < ns; i++) add_pair(t, s, i - 1, i, h, &hn);
    while (hn > 0) {
        uint64_t e = bheap_pop(h, &hn);
        int32_t li = (int32_t)(uint32_t)e, rank = (int32_t)(e >> 32);
        bsym *L = &s[li];
        if (L->n == 0) continue;
        const tok__merge_slot *m = NULL;
        int32_t ri = L->next;
        if (pair_rank(t, s, li, ri, &m) != rank) continue; /* stale */
        bsym *R = &s[ri];
        L->id = m->result;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s[R->next].prev = li;
        add_pair(t, s, L->prev, li, h, &hn);
        add_pair(t, s, li, L->next, h, &hn);
    }
    for (int32_t i = 0; i != -1; i = s[i].next) {
        if (s[i].id >= 0) { tok__out_push(out, s[i].id); continue; }
        /* A character that is not in the vocabulary: per-byte fallback. */
        for (uint32_t j = 0; j < s[i].n; j++) {
            unsigned char c = (unsigned char)w[s[i].off + j];
            int32_t id = t->byte_encode ? tok__find(t, (const char *)&c, 1) : t->byte_id[c];
            if (id >= 0) tok__out_push(out, id);
        }
    }
}

/* Buffers and PCRE2 state reused across the fragments of one encode call
 * (a prompt split by many special tokens would otherwise map a JIT stack
 * per fragment). */
struct tok__bpe_scratch {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *js;
    char *text, *esc, *enc;
    size_t text_cap, esc_cap, enc_cap;
    bsym *syms;
    size_t syms_cap;
    uint64_t *heap;
    size_t heap_cap;
    spanvec a, b;
};

tok__bpe_scratch *tok__bpe_scratch_create(void) {
    tok__bpe_scratch *sc = calloc(1, sizeof *sc);
    if (!sc) return NULL;
    sc->md = pcre2_match_data_create(4, NULL);
    sc->mctx = pcre2_match_context_create(NULL);
    if (!sc->md || !sc->mctx) { tok__bpe_scratch_free(sc); return NULL; }
    /* Without a JIT stack PCRE2 uses 32 KiB of machine stack and falls back
     * to the interpreter (split_regex) when that is not enough. */
    sc->js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    if (sc->js) pcre2_jit_stack_assign(sc->mctx, NULL, sc->js);
    return sc;
}

void tok__bpe_scratch_free(tok__bpe_scratch *sc) {
    if (!sc) return;
    pcre2_match_data_free(sc->md);
    pcre2_match_context_free(sc->mctx);
    pcre2_jit_stack_free(sc->js);
    free(sc->text); free(sc->esc); free(sc->enc); free(sc->syms); free(sc->heap);
    free(sc->a.v); free(sc->b.v);
    free(sc);
}

/* Make *p hold at least n elements of size el. 0, or -1 on OOM. */
static int reserve(void *pp, size_t *cap, size_t n, size_t el) {
    void **p = pp;
    if (n <= *cap) return 0;
    size_t nc = *cap ? *cap : 256;
    while (nc < n) nc *= 2;
    void *q = realloc(*p, nc * el);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

int tok__bpe_encode(const struct tokenizer *t, const char *raw, size_t rawlen, tok__out *out,
                    tok__bpe_scratch *sc) {
    if (rawlen == 0) return 0;
    if (rawlen > SIZE_MAX / 8) return -2;
    /* Valid UTF-8, spaces escaped for raw-byte vocabularies. */
    if (reserve(&sc->text, &sc->text_cap, rawlen * 3 + 1, 1)) return -2;
    char *text = sc->text;
    size_t n = tok__utf8_sanitize(raw, rawlen, text);
    if (t->escape_spaces) {
        size_t sp = 0;
        for (size_t i = 0; i < n; i++) sp += text[i] == ' ';
        if (sp) {
            if (reserve(&sc->esc, &sc->esc_cap, n + 2 * sp + 1, 1)) return -2;
            char *e = sc->esc;
            size_t k = 0;
            for (size_t i = 0; i < n; i++) {
                if (text[i] == ' ') { e[k++] = (char)0xE2; e[k++] = (char)0x96; e[k++] = (char)0x81; }
                else e[k++] = text[i];
            }
            text = e;
            n = k;
        }
    }

    spanvec *a = &sc->a, *b = &sc->b;
    a->n = 0;
    a->oom = b->oom = 0;
    span_push(a, 0, n);
    for (int r = 0; r < t->n_regex; r++) {
        b->n = 0;
        split_regex(&t->regex[r], text, a, b, sc->md, sc->mctx);
        if (b->oom) return -2;
        spanvec *tmp = a; a = b; b = tmp;
    }

    size_t maxw = 0;
    for (size_t i = 0; i < a->n; i++) if (a->v[i].len > maxw) maxw = a->v[i].len;
    if (reserve(&sc->enc, &sc->enc_cap, maxw * 2 + 1, 1) ||
        reserve(&sc->syms, &sc->syms_cap, maxw * 2 + 1, sizeof *sc->syms) ||
        reserve(&sc->heap, &sc->heap_cap, maxw * 6 + 1, sizeof *sc->heap))
        return -2;
    for (size_t i = 0; i < a->n; i++) {
        const char *w = text + a->v[i].off;
        size_t wl = a->v[i].len;
        if (t->byte_encode) {
            size_t k = 0;
            for (size_t j = 0; j < wl; j++) {
                unsigned char c = (unsigned char)w[j];
                memcpy(sc->enc + k, t->byte_utf8[c], t->byte_utf8_len[c]);
                k += t->byte_utf8_len[c];
            }
            bpe_word(t, sc->enc, k, sc->syms, sc->heap, out);
        } else {
            bpe_word(t, w, wl, sc->syms, sc->heap, out);
        }
    }
    return 0;
}
