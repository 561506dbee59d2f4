/* test_gguf.c -- the GGUF reader against the shared models, the writer by
 * round trip, and the validation by hand-built corrupt images. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "quant.h"

/* Per-process temp path: several builds may run this test at the same time. */
static const char *tmp(const char *tag)
{
    static char buf[4][96];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 96, "/tmp/qkvd_test_gguf_%s_%d.gguf", tag, (int)getpid());
    return b;
}

static const char *shared_dir(void)
{
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

/* ---- a tiny image builder for hand-made files ------------------------- */

typedef struct img { uint8_t *p; size_t n, cap; } img;

static void put(img *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u8(img *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(img *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(img *b, uint64_t v) { put(b, &v, 8); }
static void put_str(img *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void put_header(img *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put_u32(b, GGUF_MAGIC); put_u32(b, version); put_u64(b, n_tensors); put_u64(b, n_kv);
}
static void put_kv_u32(img *b, const char *key, uint32_t v) { put_str(b, key); put_u32(b, GGUF_UINT32); put_u32(b, v); }
static void put_kv_str(img *b, const char *key, const char *v) { put_str(b, key); put_u32(b, GGUF_STRING); put_str(b, v); }
static void put_tensor(img *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset)
{
    put_str(b, name); put_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) put_u64(b, ne[d]);
    put_u32(b, type); put_u64(b, offset);
}
static void put_pad(img *b, size_t a) { while (b->n % a) put_u8(b, 0); }
static void put_zeros(img *b, size_t n) { while (n--) put_u8(b, 0); }

/* Parse an image and expect failure with `want` in the message. */
static void expect_fail(const img *b, const char *want)
{
    gguf_file *f = (gguf_file *)0x1;
    char err[512] = "";
    int rc = gguf_parse(b->p, b->n, &f, err, sizeof err);
    if (rc == 0 || !strstr(err, want))
        fail_msg("expected an error containing '%s', got rc=%d '%s'", want, rc, err);
    assert_null(f);
}

/* A small valid file: 3 kvs (one string array) and 2 tensors. */
static img valid_image(void)
{
    img b = {0};
    put_header(&b, 3, 2, 3);
    put_kv_str(&b, "general.architecture", "llama");
    put_str(&b, "tokenizer.ggml.tokens"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_STRING);
    put_u64(&b, 3); put_str(&b, "a"); put_str(&b, "bc"); put_str(&b, "");
    put_kv_u32(&b, "llama.block_count", 2);
    uint64_t ne0[2] = {8, 2}, ne1[1] = {32};
    put_tensor(&b, "a.weight", 2, ne0, QK_F32, 0);
    put_tensor(&b, "b.weight", 1, ne1, QK_Q8_0, 64);
    put_pad(&b, 32);
    for (int i = 0; i < 16; i++) { float x = (float)i; put(&b, &x, 4); }
    put_zeros(&b, 34); /* one q8_0 block */
    return b;
}

/* ---- shared files ----------------------------------------------------- */

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static void check_model(const char *path, const char *name)
{
    gguf_file *f;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
    char arch[64];
    assert_int_equal(gguf_get_str(f, "general.architecture", arch, sizeof arch), 0);
    const char *want = strstr(name, "qwen2") ? "qwen2" : "llama";
    assert_string_equal(arch, want);
    char key[128];
    uint32_t blocks = 0, dim = 0, heads = 0;
    snprintf(key, sizeof key, "%s.block_count", arch);
    assert_int_equal(gguf_get_u32(f, key, &blocks), 0);
    snprintf(key, sizeof key, "%s.embedding_length", arch);
    assert_int_equal(gguf_get_u32(f, key, &dim), 0);
    snprintf(key, sizeof key, "%s.attention.head_count", arch);
    assert_int_equal(gguf_get_u32(f, key, &heads), 0);
    if (strstr(name, "tiny-llama-gqa")) { assert_int_equal(blocks, 4); assert_int_equal(dim, 256); assert_int_equal(heads, 8); }
    if (strstr(name, "tiny-qwen2")) { assert_int_equal(blocks, 2); assert_int_equal(dim, 64); }
    if (strstr(name, "stories260K")) { assert_int_equal(blocks, 5); assert_int_equal(dim, 64); }
    float eps = 0;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    assert_int_equal(gguf_get_f32(f, key, &eps), 0);
    assert_true(eps > 0 && eps < 1e-3);
    assert_true(f->n_tensors > 0);
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(emb);
    assert_int_equal(emb->ne[0], dim);
    const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
    assert_non_null(tok);
    assert_int_equal(tok->type, GGUF_ARRAY);
    assert_int_equal(tok->arr_type, GGUF_STRING);
    assert_int_equal(tok->arr_n, emb->ne[1]);
    /* Every tensor lies inside the mapping, aligned, with the size its type implies. */
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        const uint8_t *base = f->map;
        assert_true((const uint8_t *)t->data >= base + f->data_offset);
        assert_true((const uint8_t *)t->data + t->size <= base + f->map_size);
        assert_int_equal(t->offset % f->alignment, 0);
        assert_int_equal(t->size, quant_row_size(t->type, (int64_t)t->ne[0]) * t->ne[1] * t->ne[2] * t->ne[3]);
    }
    snprintf(key, sizeof key, "blk.%u.attn_q.weight", blocks - 1);
    assert_non_null(gguf_find_tensor(f, key));
    gguf_close(f);
}

static void test_shared_models(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models", shared_dir());
    DIR *d = opendir(dir);
    if (!d) { printf("skip: %s absent (set QKVD_SHARED)\n", dir); skip(); }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".gguf")) continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        check_model(path, e->d_name);
        n++;
    }
    closedir(d);
    assert_true(n >= 1);
}

static void test_shared_vocab(void **state)
{
    (void)state;
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/vocab", shared_dir());
    DIR *d = opendir(dir);
    if (!d) { printf("skip: %s absent (set QKVD_SHARED)\n", dir); skip(); }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!has_suffix(e->d_name, ".gguf")) continue;
        char path[2048], err[512], model[32];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        gguf_file *f;
        if (gguf_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(gguf_get_str(f, "tokenizer.ggml.model", model, sizeof model), 0);
        const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
        assert_non_null(tok);
        assert_true(tok->arr_n > 100);
        if (strstr(e->d_name, "gpt-2")) {
            assert_string_equal(model, "gpt2");
            assert_int_equal(tok->arr_n, 50257);
            const gguf_kv *m = gguf_find(f, "tokenizer.ggml.merges");
            assert_non_null(m);
            assert_int_equal(m->arr_type, GGUF_STRING);
            assert_int_equal(m->arr_n, 50000);
            /* The first GPT-2 merge is "Ġ t". */
            assert_int_equal(m->arr_strs[0].len, 4);
            assert_memory_equal(m->arr_strs[0].ptr, "\xc4\xa0 t", 4);
        }
        if (strstr(e->d_name, "llama-spm")) {
            int add_bos = 0;
            assert_string_equal(model, "llama");
            assert_int_equal(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos), 0);
            assert_int_equal(add_bos, 1);
            const gguf_kv *sc = gguf_find(f, "tokenizer.ggml.scores");
            assert_non_null(sc);
            assert_int_equal(sc->arr_type, GGUF_FLOAT32);
            assert_int_equal(sc->arr_n, tok->arr_n);
        }
        gguf_close(f);
        n++;
    }
    closedir(d);
    assert_true(n >= 1);
}

/* ---- writer round trip ------------------------------------------------ */

/* A source image holding every scalar type and arrays of several types, so
 * gguf_writer_copy_kv is exercised on all of them. */
static img all_types_image(void)
{
    img b = {0};
    put_header(&b, 2, 0, 14);
    put_str(&b, "t.u8");  put_u32(&b, GGUF_UINT8);  put_u8(&b, 200);
    put_str(&b, "t.i8");  put_u32(&b, GGUF_INT8);   put_u8(&b, 0x80);
    put_str(&b, "t.u16"); put_u32(&b, GGUF_UINT16); { uint16_t x = 65000; put(&b, &x, 2); }
    put_str(&b, "t.i16"); put_u32(&b, GGUF_INT16);  { int16_t x = -30000; put(&b, &x, 2); }
    put_str(&b, "t.u32"); put_u32(&b, GGUF_UINT32); put_u32(&b, 4000000000u);
    put_str(&b, "t.i32"); put_u32(&b, GGUF_INT32);  { int32_t x = -7; put(&b, &x, 4); }
    put_str(&b, "t.f32"); put_u32(&b, GGUF_FLOAT32); { float x = 1.5f; put(&b, &x, 4); }
    put_str(&b, "t.bool"); put_u32(&b, GGUF_BOOL);  put_u8(&b, 1);
    put_kv_str(&b, "t.str", "hello");
    put_str(&b, "t.u64"); put_u32(&b, GGUF_UINT64); put_u64(&b, 18000000000000000000ull);
    put_str(&b, "t.i64"); put_u32(&b, GGUF_INT64);  { int64_t x = -5000000000ll; put(&b, &x, 8); }
    put_str(&b, "t.f64"); put_u32(&b, GGUF_FLOAT64); { double x = 0.1; put(&b, &x, 8); }
    put_str(&b, "t.arr_u16"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_UINT16); put_u64(&b, 3);
    { uint16_t x[3] = {1, 2, 65535}; put(&b, x, 6); }
    put_str(&b, "t.arr_f64"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_FLOAT64); put_u64(&b, 2);
    { double x[2] = {-2.5, 1e300}; put(&b, x, 16); }
    return b;
}

typedef struct fill_ctx { int calls; float base; } fill_ctx;

static int fill_f32(void *ctx, void *dst, size_t size, char *err, size_t errlen)
{
    fill_ctx *c = ctx;
    c->calls++;
    float *x = dst;
    for (size_t i = 0; i < size / 4; i++) x[i] = c->base + (float)i;
    return 0;
}

static int fill_fails(void *ctx, void *dst, size_t size, char *err, size_t errlen)
{
    snprintf(err, errlen, "generator refused");
    return -1;
}

static void test_writer_roundtrip(void **state)
{
    (void)state;
    img src = all_types_image();
    gguf_file *s;
    char err[512];
    if (gguf_parse(src.p, src.n, &s, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(s->version, 2);

    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "qwen2");
    gguf_writer_set_u32(w, "w.u32", 123);
    gguf_writer_set_u32(w, "w.u32", 456); /* replaces, does not duplicate */
    gguf_writer_set_i32(w, "w.i32", -99);
    gguf_writer_set_f32(w, "w.f32", 0.25f);
    gguf_writer_set_bool(w, "w.bool", 1);
    int32_t ai[4] = {1, -2, 3, INT32_MIN};
    float af[3] = {0.5f, -1.0f, 3e30f};
    gguf_writer_set_arr_i32(w, "w.arr_i32", ai, 4);
    gguf_writer_set_arr_f32(w, "w.arr_f32", af, 3);
    const char *strs[3] = {"x", "a\0b", ""};
    uint64_t lens[3] = {1, 3, 0};
    gguf_writer_set_arr_str(w, "w.arr_str", strs, lens, 3);
    for (uint64_t i = 0; i < s->n_kv; i++) gguf_writer_copy_kv(w, &s->kv[i]);
    const char *gpt2_path_fmt = "%s/vocab/ggml-vocab-gpt-2.gguf";
    char vpath[1024];
    snprintf(vpath, sizeof vpath, gpt2_path_fmt, shared_dir());
    gguf_file *voc = NULL;
    if (gguf_open(vpath, &voc, err, sizeof err) == 0)
        gguf_writer_copy_kv(w, gguf_find(voc, "tokenizer.ggml.merges"));

    float t0[24];
    for (int i = 0; i < 24; i++) t0[i] = (float)i * 0.5f - 3;
    uint64_t ne0[2] = {8, 3};
    gguf_writer_add_tensor(w, "t0.weight", QK_F32, 2, ne0, t0);
    uint8_t q[2 * 34];
    float row[64];
    for (int i = 0; i < 64; i++) row[i] = sinf((float)i);
    assert_int_equal(quant_quantize_row(QK_Q8_0, row, q, 64), 68);
    uint64_t ne1[1] = {64};
    gguf_writer_add_tensor(w, "t1.weight", QK_Q8_0, 1, ne1, q);
    uint16_t h[5] = {1, 2, 3, 4, 5};
    uint64_t ne2[3] = {5, 1, 1};
    gguf_writer_add_tensor(w, "t2.weight", QK_F16, 3, ne2, h);
    fill_ctx fc = {0, 100.0f};
    uint64_t ne3[2] = {4, 2};
    gguf_writer_add_tensor_fill(w, "t3.weight", QK_F32, 2, ne3, fill_f32, &fc);

    const char *path = tmp("rt");
    char tmpname[128];
    snprintf(tmpname, sizeof tmpname, "%s.tmp", path);
    if (gguf_writer_write(w, path, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(fc.calls, 1);
    assert_int_equal(access(tmpname, F_OK), -1);
    gguf_writer_free(w);

    gguf_file *f;
    if (gguf_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(f->version, 3);
    assert_int_equal(f->alignment, 32);
    assert_int_equal(f->n_tensors, 4);
    assert_int_equal(f->n_kv, 8 + s->n_kv + (voc ? 1 : 0));
    char buf[64];
    assert_int_equal(gguf_get_str(f, "general.architecture", buf, sizeof buf), 0);
    assert_string_equal(buf, "qwen2");
    uint32_t u; int64_t i64; float fl; int bo;
    assert_int_equal(gguf_get_u32(f, "w.u32", &u), 0); assert_int_equal(u, 456);
    assert_int_equal(gguf_get_i64(f, "w.i32", &i64), 0); assert_int_equal(i64, -99);
    assert_int_equal(gguf_get_u32(f, "w.i32", &u), -1); /* negative does not convert */
    assert_int_equal(gguf_get_f32(f, "w.f32", &fl), 0); assert_true(fl == 0.25f);
    assert_int_equal(gguf_get_bool(f, "w.bool", &bo), 0); assert_int_equal(bo, 1);
    assert_int_equal(gguf_get_bool(f, "w.u32", &bo), -1);
    const gguf_kv *kv = gguf_find(f, "w.arr_i32");
    assert_non_null(kv);
    assert_int_equal(kv->arr_type, GGUF_INT32);
    for (int i = 0; i < 4; i++) assert_int_equal(gguf_arr_i64(kv, (uint64_t)i), ai[i]);
    assert_int_equal(gguf_arr_i64(kv, 4), 0); /* out of range */
    kv = gguf_find(f, "w.arr_f32");
    for (int i = 0; i < 3; i++) assert_true(gguf_arr_f64(kv, (uint64_t)i) == af[i]);
    kv = gguf_find(f, "w.arr_str");
    assert_int_equal(kv->arr_n, 3);
    assert_int_equal(kv->arr_strs[1].len, 3);
    assert_memory_equal(kv->arr_strs[1].ptr, "a\0b", 3);
    assert_int_equal(kv->arr_strs[2].len, 0);

    /* Copied kvs are identical to their source, type and value. */
    for (uint64_t i = 0; i < s->n_kv; i++) {
        const gguf_kv *a = &s->kv[i];
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)a->key.len, a->key.ptr);
        const gguf_kv *b = gguf_find(f, key);
        assert_non_null(b);
        assert_int_equal(a->type, b->type);
        if (a->type == GGUF_STRING) {
            assert_int_equal(a->str.len, b->str.len);
            assert_memory_equal(a->str.ptr, b->str.ptr, a->str.len);
        } else if (a->type == GGUF_ARRAY) {
            assert_int_equal(a->arr_type, b->arr_type);
            assert_int_equal(a->arr_n, b->arr_n);
            for (uint64_t j = 0; j < a->arr_n; j++)
                assert_true(gguf_arr_f64(a, j) == gguf_arr_f64(b, j));
        } else {
            assert_memory_equal(&a->v, &b->v, sizeof a->v);
        }
    }
    assert_int_equal(gguf_get_i64(f, "t.i8", &i64), 0); assert_int_equal(i64, -128);
    assert_int_equal(gguf_get_i64(f, "t.u64", &i64), -1); /* above INT64_MAX */
    assert_int_equal(gguf_get_u32(f, "t.u16", &u), 0); assert_int_equal(u, 65000);
    assert_int_equal(gguf_get_f32(f, "t.i16", &fl), 0); assert_true(fl == -30000.0f);
    assert_int_equal(gguf_get_str(f, "t.str", buf, 3), 0); assert_string_equal(buf, "he");
    assert_int_equal(gguf_get_str(f, "t.u8", buf, sizeof buf), -1);
    kv = gguf_find(f, "t.arr_u16");
    assert_int_equal(gguf_arr_i64(kv, 2), 65535);
    if (voc) {
        const gguf_kv *a = gguf_find(voc, "tokenizer.ggml.merges"), *b = gguf_find(f, "tokenizer.ggml.merges");
        assert_non_null(b);
        assert_int_equal(a->arr_n, b->arr_n);
        for (uint64_t j = 0; j < a->arr_n; j++) {
            assert_int_equal(a->arr_strs[j].len, b->arr_strs[j].len);
            assert_memory_equal(a->arr_strs[j].ptr, b->arr_strs[j].ptr, a->arr_strs[j].len);
        }
    }

    const gguf_tensor *t = gguf_find_tensor(f, "t0.weight");
    assert_non_null(t);
    assert_int_equal(t->type, QK_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 8); assert_int_equal(t->ne[1], 3); assert_int_equal(t->ne[2], 1);
    assert_memory_equal(t->data, t0, sizeof t0);
    t = gguf_find_tensor(f, "t1.weight");
    assert_int_equal(t->type, QK_Q8_0);
    assert_int_equal(t->size, 68);
    assert_memory_equal(t->data, q, 68);
    t = gguf_find_tensor(f, "t2.weight");
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->size, 10);
    assert_memory_equal(t->data, h, 10);
    t = gguf_find_tensor(f, "t3.weight");
    assert_int_equal(((const float *)t->data)[7], 107.0f);
    for (uint64_t i = 0; i < f->n_tensors; i++) assert_int_equal(f->tensors[i].offset % 32, 0);
    assert_int_equal(f->map_size % 32, 0); /* the last tensor is padded too */
    assert_null(gguf_find_tensor(f, "t4.weight"));
    assert_null(gguf_find(f, "nope"));
    gguf_close(f);
    gguf_close(voc);
    gguf_close(s);
    free(src.p);
    unlink(path);
}

static void test_writer_errors(void **state)
{
    (void)state;
    char err[256], badtmp[128];
    const char *bad = tmp("bad");
    snprintf(badtmp, sizeof badtmp, "%s.tmp", bad);
    float x[64] = {0};
    uint64_t ne[1] = {30};
    gguf_writer *w = gguf_writer_create();
    gguf_writer_add_tensor(w, "bad.weight", QK_Q8_0, 1, ne, x); /* 30 % 32 != 0 */
    assert_int_not_equal(gguf_writer_write(w, bad, err, sizeof err), 0);
    assert_non_null(strstr(err, "bad.weight"));
    assert_int_equal(access(bad, F_OK), -1);
    gguf_writer_free(w);

    w = gguf_writer_create();
    ne[0] = 4;
    gguf_writer_add_tensor(w, "a", QK_F32, 1, ne, x);
    gguf_writer_add_tensor(w, "a", QK_F32, 1, ne, x);
    assert_int_not_equal(gguf_writer_write(w, bad, err, sizeof err), 0);
    assert_non_null(strstr(err, "duplicate tensor 'a'"));
    gguf_writer_free(w);

    w = gguf_writer_create();
    gguf_writer_add_tensor_fill(w, "gen", QK_F32, 1, ne, fill_fails, NULL);
    assert_int_not_equal(gguf_writer_write(w, bad, err, sizeof err), 0);
    assert_non_null(strstr(err, "generator refused"));
    assert_int_equal(access(bad, F_OK), -1);
    assert_int_equal(access(badtmp, F_OK), -1);
    gguf_writer_free(w);

    w = gguf_writer_create();
    assert_int_not_equal(gguf_writer_write(w, "/nonexistent-dir/x.gguf", err, sizeof err), 0);
    assert_non_null(strstr(err, "cannot create"));
    gguf_writer_free(w);
    gguf_writer_free(NULL);
}

/* ---- corruption ------------------------------------------------------- */

static void test_valid_image_parses(void **state)
{
    (void)state;
    img b = valid_image();
    gguf_file *f;
    char err[256];
    if (gguf_parse(b.p, b.n, &f, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(f->n_tensors, 2);
    const gguf_tensor *t = gguf_find_tensor(f, "a.weight");
    assert_true(((const float *)t->data)[15] == 15.0f);
    const gguf_kv *kv = gguf_find(f, "tokenizer.ggml.tokens");
    assert_int_equal(kv->arr_n, 3);
    assert_int_equal(kv->arr_strs[1].len, 2);
    gguf_close(f);
    free(b.p);
}

static void test_truncated_everywhere(void **state)
{
    (void)state;
    img b = valid_image();
    /* Every cut in the header/metadata region and throughout the data must
     * fail cleanly with a message about the end of the file. */
    for (size_t cut = 0; cut < b.n; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size so ASan sees overreads */
        memcpy(copy, b.p, cut);
        gguf_file *f = NULL;
        char err[512] = "";
        int rc = gguf_parse(copy, cut, &f, err, sizeof err);
        if (rc == 0) fail_msg("cut at %zu parsed", cut);
        assert_null(f);
        if (!strstr(err, "truncated") && !strstr(err, "past end") && !strstr(err, "impossible") &&
            !strstr(err, "cannot fit"))
            fail_msg("cut at %zu: unclear message '%s'", cut, err);
        free(copy);
    }
    free(b.p);
}

static void test_bad_header(void **state)
{
    (void)state;
    img b = valid_image();
    b.p[0] = 'X';
    expect_fail(&b, "bad magic");
    b.p[0] = 'G';
    uint32_t v = 1;
    memcpy(b.p + 4, &v, 4);
    expect_fail(&b, "version 1 is not supported");
    v = 99;
    memcpy(b.p + 4, &v, 4);
    expect_fail(&b, "unsupported GGUF version 99");
    v = 0x03000000u;
    memcpy(b.p + 4, &v, 4);
    expect_fail(&b, "byte-swapped");
    v = 3;
    memcpy(b.p + 4, &v, 4);
    uint64_t n = UINT64_MAX;
    memcpy(b.p + 16, &n, 8);
    expect_fail(&b, "n_kv = 18446744073709551615 is impossible");
    n = 3;
    memcpy(b.p + 16, &n, 8);
    n = 1ull << 40;
    memcpy(b.p + 8, &n, 8);
    expect_fail(&b, "n_tensors = 1099511627776 is impossible");
    /* A count small enough to pass the size bound reads into the data and
     * fails there, naming the tensor entry. */
    n = 5;
    memcpy(b.p + 8, &n, 8);
    expect_fail(&b, "tensor #2");
    free(b.p);

    gguf_file *f = (gguf_file *)0x1;
    char err[256];
    assert_int_not_equal(gguf_parse(NULL, 0, &f, err, sizeof err), 0);
    assert_null(f);
    assert_int_not_equal(gguf_open("/nonexistent/x.gguf", &f, err, sizeof err), 0);
    assert_non_null(strstr(err, "cannot open"));
    const char *empty = tmp("empty");
    FILE *fp = fopen(empty, "wb");
    fclose(fp);
    assert_int_not_equal(gguf_open(empty, &f, err, sizeof err), 0);
    assert_non_null(strstr(err, "empty file"));
    unlink(empty);
    gguf_close(NULL);
}

static void test_bad_kv(void **state)
{
    (void)state;
    img b = {0};
    put_header(&b, 3, 0, 1);
    put_u64(&b, 1ull << 62); put_zeros(&b, 40);
    expect_fail(&b, "string length 4611686018427387904");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "big.array"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_UINT32);
    put_u64(&b, 1ull << 61); put_zeros(&b, 64);
    expect_fail(&b, "key 'big.array': array of 2305843009213693952 u32 elements cannot fit");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "big.strs"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_STRING);
    put_u64(&b, 1ull << 40); put_zeros(&b, 64);
    expect_fail(&b, "cannot fit");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "nested"); put_u32(&b, GGUF_ARRAY); put_u32(&b, GGUF_ARRAY);
    put_u64(&b, 1); put_zeros(&b, 64);
    expect_fail(&b, "key 'nested': arrays of arrays");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "odd.type"); put_u32(&b, 13); put_zeros(&b, 16);
    expect_fail(&b, "key 'odd.type': unknown value type 13");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "odd.elem"); put_u32(&b, GGUF_ARRAY); put_u32(&b, 77); put_u64(&b, 1); put_zeros(&b, 16);
    expect_fail(&b, "unknown array element type 77");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "flag"); put_u32(&b, GGUF_BOOL); put_u8(&b, 7); put_zeros(&b, 16);
    expect_fail(&b, "key 'flag': invalid bool");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 2);
    put_kv_u32(&b, "same.key", 1); put_kv_u32(&b, "same.key", 2);
    expect_fail(&b, "duplicate key 'same.key'");
    free(b.p);

    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, ""); put_u32(&b, GGUF_UINT32); put_u32(&b, 1); put_zeros(&b, 16);
    expect_fail(&b, "empty key");
    free(b.p);

    /* A non-printable key is shown escaped in the message. */
    b = (img){0};
    put_header(&b, 3, 0, 1);
    put_str(&b, "k\x01y"); put_u32(&b, 40); put_zeros(&b, 16);
    expect_fail(&b, "key 'k\\x01y'");
    free(b.p);
}

static void test_bad_alignment(void **state)
{
    (void)state;
    uint32_t bad[3] = {0, 3, 48};
    for (int i = 0; i < 3; i++) {
        img b = {0};
        put_header(&b, 3, 0, 1);
        put_kv_u32(&b, "general.alignment", bad[i]);
        expect_fail(&b, "power of two");
        free(b.p);
    }
    img b = {0};
    put_header(&b, 3, 0, 1);
    put_kv_str(&b, "general.alignment", "32");
    expect_fail(&b, "general.alignment': must be u32");
    free(b.p);

    /* A valid non-default alignment moves the data section. */
    b = (img){0};
    put_header(&b, 3, 1, 1);
    put_kv_u32(&b, "general.alignment", 64);
    uint64_t ne[1] = {4};
    put_tensor(&b, "x", 1, ne, QK_F32, 0);
    put_pad(&b, 64);
    size_t start = b.n;
    float v[4] = {1, 2, 3, 4};
    put(&b, v, 16);
    gguf_file *f;
    char err[256];
    if (gguf_parse(b.p, b.n, &f, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(f->alignment, 64);
    assert_int_equal(f->data_offset, start);
    assert_true(((const float *)f->tensors[0].data)[3] == 4.0f);
    gguf_close(f);
    free(b.p);
}

/* One tensor info with the given fields, followed by plenty of zero data. */
static void expect_tensor_fail(const char *name, uint32_t n_dims, const uint64_t *ne,
                               uint32_t type, uint64_t offset, const char *want)
{
    img b = {0};
    put_header(&b, 3, 1, 0);
    put_tensor(&b, name, n_dims, ne, type, offset);
    put_pad(&b, 32);
    put_zeros(&b, 256);
    expect_fail(&b, want);
    free(b.p);
}

static void test_bad_tensors(void **state)
{
    (void)state;
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    uint64_t ne4[2] = {32, 4};
    expect_tensor_fail("blk.0.attn_q.weight", 2, ne4, QK_F32, 0,
                       "tensor 'blk.0.attn_q.weight': data [offset 0, size 512) extends past end of file");
    expect_tensor_fail("w", 2, ne, QK_F32, 1ull << 63, "extends past end of file");
    expect_tensor_fail("w", 2, ne, QK_F32, UINT64_MAX - 31, "offset 18446744073709551584");
    expect_tensor_fail("w", 2, ne, 77, 0, "tensor 'w': unknown tensor type id 77");
    expect_tensor_fail("w", 2, ne, 5, 0, "unknown tensor type id 5"); /* removed Q4_2 */
    expect_tensor_fail("w", 1, ne, QK_F32, 16, "offset 16 is not a multiple of the alignment 32");
    expect_tensor_fail("w", 5, ne, QK_F32, 0, "n_dims 5 out of range");
    expect_tensor_fail("w", 0, ne, QK_F32, 0, "n_dims 0 out of range");
    uint64_t zero[2] = {32, 0};
    expect_tensor_fail("w", 2, zero, QK_F32, 0, "tensor 'w': dimension 1 is zero");
    uint64_t huge[4] = {1ull << 32, 1ull << 32, 2, 1};
    expect_tensor_fail("w", 4, huge, QK_F32, 0, "tensor 'w': element count overflows");
    uint64_t big[2] = {1ull << 61, 2}; /* 2^62 elements fit, 2^64 bytes do not */
    expect_tensor_fail("w", 2, big, QK_F32, 0, "byte size overflows");
    uint64_t neg[1] = {1ull << 63};
    expect_tensor_fail("w", 1, neg, QK_F32, 0, "too large");
    uint64_t odd[2] = {40, 1};
    expect_tensor_fail("w", 2, odd, QK_Q4_K, 0, "ne[0] = 40 is not a multiple of the q4_K block size 256");
    expect_tensor_fail("", 1, ne, QK_F32, 0, "empty name");

    img b = {0};
    put_header(&b, 3, 2, 0);
    put_tensor(&b, "dup", 1, ne, QK_F32, 0);
    put_tensor(&b, "dup", 1, ne, QK_F32, 128);
    put_pad(&b, 32);
    put_zeros(&b, 512);
    expect_fail(&b, "duplicate tensor name 'dup'");
    free(b.p);

    /* A known type qkvd cannot compute with (q2_K) still parses: the model
     * loader is the one to refuse it, naming the tensor. */
    b = (img){0};
    uint64_t k[1] = {256};
    put_header(&b, 3, 1, 0);
    put_tensor(&b, "q2", 1, k, QK_Q2_K, 0);
    put_pad(&b, 32);
    put_zeros(&b, 84);
    gguf_file *f;
    char err[256];
    if (gguf_parse(b.p, b.n, &f, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(f->tensors[0].size, 84);
    gguf_close(f);
    free(b.p);
}

/* Flip bytes of a valid image at random: the parser must never crash, and
 * every rejection must come with a message. */
static void test_random_corruption(void **state)
{
    (void)state;
    img b = valid_image();
    uint64_t seed = 12345;
    uint8_t *copy = malloc(b.n);
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(copy, b.p, b.n);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (seed >> 33) % b.n;
            copy[pos] = (uint8_t)(seed >> 17);
        }
        gguf_file *f = NULL;
        char err[512] = "";
        if (gguf_parse(copy, b.n, &f, err, sizeof err) == 0) {
            for (uint64_t i = 0; i < f->n_tensors; i++) {
                const uint8_t *d = f->tensors[i].data;
                volatile uint8_t sink = d[f->tensors[i].size - 1];
                (void)sink;
            }
            gguf_close(f);
        } else {
            assert_true(err[0] != 0);
        }
    }
    free(copy);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_models),
        cmocka_unit_test(test_shared_vocab),
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_valid_image_parses),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_bad_header),
        cmocka_unit_test(test_bad_kv),
        cmocka_unit_test(test_bad_alignment),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_random_corruption),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
