/* tokenizer_unicode.c -- the UTF-8 and GPT-2 byte-level helpers the tokenizer
 * needs. Every function here accepts arbitrary bytes and never reads past the
 * length it is given. */
#include <string.h>
#include "tokenizer_internal.h"

int tok__utf8_len(unsigned char c) {
    /* Indexed by the high nibble: ASCII and stray continuation bytes are one
     * byte, 110x two, 1110 three, 1111 four (llama.cpp's rule, so symbol
     * boundaries match its SPM/BPE tokenizers even on invalid input). */
    static const int lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

int tok__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned char c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int tok__utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* llama.cpp's decoder only checks the lead byte's length bits and the
 * continuation bytes, so it also reads overlong forms (C0 80 is U+0000).
 * Returns the sequence length and code point, or 0. */
static int decode_lenient(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    int len;
    uint32_t v;
    if (c >= 0xC0 && c <= 0xDF) { len = 2; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF7) { len = 4; v = c & 0x07; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

size_t tok__utf8_sanitize(const char *src, size_t n, char *dst) {
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;
    while (i < n) {
        if (s[i] < 0x80) { dst[o++] = (char)s[i++]; continue; }
        uint32_t cp;
        int l = tok__utf8_decode(s + i, n - i, &cp);
        if (l > 0) {
            memcpy(dst + o, s + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
            continue;
        }
        /* An overlong form stands for its code point (as in llama.cpp),
         * written canonically. */
        l = decode_lenient(s + i, n - i, &cp);
        if (l > 0 && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF)) {
            o += (size_t)tok__utf8_encode(cp, dst + o);
            i += (size_t)l;
            continue;
        }
        /* One replacement character per bad byte, then resynchronise on
         * the next byte (what llama.cpp does). */
        dst[o++] = (char)0xEF; dst[o++] = (char)0xBF; dst[o++] = (char)0xBD;
        i++;
    }
    return o;
}

size_t tok__utf8_valid_prefix(const unsigned char *s, size_t n, int *tail_incomplete) {
    size_t i = 0;
    *tail_incomplete = 0;
    while (i < n) {
        uint32_t cp;
        int l = tok__utf8_decode(s + i, n - i, &cp);
        if (l > 0) { i += (size_t)l; continue; }
        /* Invalid here: could it be the start of a character whose remaining
         * bytes have not arrived yet? Check the bytes we have against the
         * first bytes of a valid sequence. */
        int need = 0;
        unsigned char c = s[i];
        if (c >= 0xC2 && c <= 0xDF) need = 2;
        else if (c >= 0xE0 && c <= 0xEF) need = 3;
        else if (c >= 0xF0 && c <= 0xF4) need = 4;
        if (need && n - i < (size_t)need) {
            int ok = 1;
            for (size_t k = i + 1; k < n; k++)
                if ((s[k] & 0xC0) != 0x80) ok = 0;
            /* Second-byte ranges that exclude overlongs / surrogates. */
            if (ok && n - i >= 2) {
                unsigned char d = s[i + 1];
                if (c == 0xE0 && d < 0xA0) ok = 0;
                if (c == 0xED && d > 0x9F) ok = 0;
                if (c == 0xF0 && d < 0x90) ok = 0;
                if (c == 0xF4 && d > 0x8F) ok = 0;
            }
            if (ok) *tail_incomplete = 1;
        }
        return i;
    }
    return i;
}

/* GPT-2's table: printable Latin-1 bytes map to themselves, the other 68
 * bytes to U+0100.. in byte order, so every byte has a visible character. */
static int byte_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 non-printable bytes, in order, are 0x00-0x20, 0x7F-0xA0 and 0xAD. */
uint32_t tok__byte_to_cp(unsigned char b) {
    if (byte_printable(b)) return b;
    if (b <= 0x20) return 256u + b;
    if (b >= 0x7F && b <= 0xA0) return 256u + 33u + (b - 0x7Fu);
    return 256u + 67u; /* 0xAD */
}

int tok__cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68) return -1;
    uint32_t n = cp - 256;
    if (n <= 32) return (int)n;
    if (n <= 66) return (int)(0x7F + (n - 33));
    return 0xAD;
}
