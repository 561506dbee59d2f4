/* sha256.h -- SHA-256 (FIPS 180-4), streaming, for checking downloaded
 * models (`qkvd pull --sha256`). Small and dependency-free so the binary
 * needs no crypto library for it. */
#ifndef QKVD_SHA256_H
#define QKVD_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256_ctx {
    uint32_t h[8];       /* chaining state */
    uint64_t n_bytes;    /* message length so far */
    uint8_t block[64];   /* partial block */
    size_t used;         /* bytes in block */
} sha256_ctx;

/* Start a new digest. */
void sha256_init(sha256_ctx *c);
/* Feed len bytes (len may be 0; data is not kept). */
void sha256_update(sha256_ctx *c, const void *data, size_t len);
/* Finish: 32-byte digest into out. c must be re-initialised before reuse. */
void sha256_final(sha256_ctx *c, uint8_t out[32]);
/* Digest as 64 lower-case hex characters plus NUL into hex. */
void sha256_hex(const uint8_t digest[32], char hex[65]);
/* One-shot digest of a buffer. */
void sha256_buf(const void *data, size_t len, uint8_t out[32]);

#endif
