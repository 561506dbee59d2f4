/* test_sha256.c -- SHA-256 against the FIPS 180-4 / NIST example vectors,
 * and streaming in uneven pieces equals the one-shot digest. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>
#include "sha256.h"

static void check_hex(const void *data, size_t len, const char *want) {
    uint8_t d[32];
    char hex[65];
    sha256_buf(data, len, d);
    sha256_hex(d, hex);
    assert_string_equal(hex, want);
}

static void test_nist_vectors(void **state) {
    (void)state;
    check_hex("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    check_hex("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_hex(m448, strlen(m448), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    check_hex(m896, strlen(m896), "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

static void test_million_a(void **state) {
    (void)state;
    sha256_ctx c;
    uint8_t chunk[1000], d[32];
    char hex[65];
    memset(chunk, 'a', sizeof chunk);
    sha256_init(&c);
    for (int i = 0; i < 1000; i++) sha256_update(&c, chunk, sizeof chunk);
    sha256_final(&c, d);
    sha256_hex(d, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Lengths around the 55/56/64-byte padding edges, fed in pieces of 1, 7, 63,
 * 64 and 65 bytes, must give the one-shot digest. */
static void test_streaming_pieces(void **state) {
    (void)state;
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 131 + 7);
    const size_t lens[] = {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 300};
    const size_t pieces[] = {1, 7, 63, 64, 65};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        uint8_t want[32];
        sha256_buf(buf, lens[li], want);
        for (size_t pi = 0; pi < sizeof pieces / sizeof pieces[0]; pi++) {
            sha256_ctx c;
            uint8_t got[32];
            sha256_init(&c);
            for (size_t off = 0; off < lens[li]; off += pieces[pi]) {
                size_t n = lens[li] - off < pieces[pi] ? lens[li] - off : pieces[pi];
                sha256_update(&c, buf + off, n);
            }
            sha256_final(&c, got);
            assert_memory_equal(got, want, 32);
        }
    }
    /* 64 bytes of 0x00..0x3f differ from 63: padding is not sloppy. */
    uint8_t a[32], b[32];
    sha256_buf(buf, 63, a);
    sha256_buf(buf, 64, b);
    assert_memory_not_equal(a, b, 32);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nist_vectors),
        cmocka_unit_test(test_million_a),
        cmocka_unit_test(test_streaming_pieces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
