/* test_make_model.c -- `qkvd make-model` end to end (through cli_make_model)
 * and the byte-level BPE trainer behind its learned vocabularies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe_train.h"
#include "cli.h"
#include "engine.h"
#include "gguf.h"
#include "quant.h"
#include "tokenizer.h"

static const char *repo_root(void)
{
    const char *r = getenv("QKVD_ROOT");
    return r && *r ? r : ".";
}

/* Run make-model with a NULL-terminated argument list; returns its exit code. */
static int make_model(const char *first, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)"make-model";
    argv[argc++] = (char *)"-q";
    argv[argc++] = (char *)"--corpus";
    argv[argc++] = (char *)repo_root();
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    fflush(stdout);
    return cli_make_model(argc, argv);
}

static gguf_file *open_ok(const char *path)
{
    gguf_file *f;
    char err[512];
    if (gguf_open(path, &f, err, sizeof err) != 0) fail_msg("%s", err);
    return f;
}

static uint32_t get_u32(const gguf_file *f, const char *key)
{
    uint32_t v = 0;
    if (gguf_get_u32(f, key, &v) != 0) fail_msg("missing u32 key %s", key);
    return v;
}

static const gguf_tensor *tensor(const gguf_file *f, const char *name)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) fail_msg("missing tensor %s", name);
    return t;
}

static void check_shape(const gguf_file *f, const char *name, uint64_t ne0, uint64_t ne1, enum qk_type type)
{
    const gguf_tensor *t = tensor(f, name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->type != type)
        fail_msg("%s: got [%llu, %llu] %s, want [%llu, %llu] %s", name, (unsigned long long)t->ne[0],
                 (unsigned long long)t->ne[1], quant_type_name(t->type), (unsigned long long)ne0,
                 (unsigned long long)ne1, quant_type_name(type));
}

/* Mean and standard deviation of a tensor, dequantised. */
static void tensor_stats(const gguf_tensor *t, double *mean, double *sd)
{
    int64_t n = (int64_t)t->ne[0];
    size_t rb = quant_row_size(t->type, n);
    float *row = malloc((size_t)n * sizeof *row);
    double s = 0, s2 = 0;
    uint64_t cnt = 0;
    for (uint64_t r = 0; r < t->ne[1]; r++) {
        quant_dequantize_row(t->type, (const uint8_t *)t->data + r * rb, row, n);
        for (int64_t i = 0; i < n; i++) { s += row[i]; s2 += (double)row[i] * row[i]; cnt++; }
    }
    free(row);
    *mean = s / (double)cnt;
    *sd = sqrt(s2 / (double)cnt - *mean * *mean);
}

/* Per-process paths: several builds may run this test at the same time. */
static char tmp_path[64];

/* Every weight type on a llama shape whose rows fit every block size. */
static void test_llama_all_types(void **state)
{
    (void)state;
    static const struct { const char *type; enum qk_type base, high; uint32_t ftype; } cases[] = {
        { "f32", QK_F32, QK_F32, 0 }, { "f16", QK_F16, QK_F16, 1 }, { "bf16", QK_BF16, QK_BF16, 32 },
        { "q8_0", QK_Q8_0, QK_Q8_0, 7 }, { "q4_0", QK_Q4_0, QK_Q4_0, 2 }, { "q4_1", QK_Q4_1, QK_Q4_1, 3 },
        { "q5_0", QK_Q5_0, QK_Q5_0, 8 }, { "q5_1", QK_Q5_1, QK_Q5_1, 9 }, { "q4_k", QK_Q4_K, QK_Q4_K, 14 },
        { "q5_k", QK_Q5_K, QK_Q5_K, 16 }, { "q6_k", QK_Q6_K, QK_Q6_K, 18 },
        { "q4_k_m", QK_Q4_K, QK_Q6_K, 15 }, { "q5_k_m", QK_Q5_K, QK_Q6_K, 17 },
    };
    quant_init();
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        assert_int_equal(make_model("-o", tmp_path, "--dim", "256", "--layers", "8", "--heads", "4",
                                    "--kv-heads", "2", "--ffn", "512", "--vocab-size", "300",
                                    "--type", cases[c].type, "--seed", "7", NULL), 0);
        gguf_file *f = open_ok(tmp_path);
        char s[64];
        assert_int_equal(gguf_get_str(f, "general.architecture", s, sizeof s), 0);
        assert_string_equal(s, "llama");
        assert_int_equal(get_u32(f, "llama.embedding_length"), 256);
        assert_int_equal(get_u32(f, "llama.block_count"), 8);
        assert_int_equal(get_u32(f, "llama.feed_forward_length"), 512);
        assert_int_equal(get_u32(f, "llama.attention.head_count"), 4);
        assert_int_equal(get_u32(f, "llama.attention.head_count_kv"), 2);
        assert_int_equal(get_u32(f, "llama.rope.dimension_count"), 64);
        assert_int_equal(get_u32(f, "llama.context_length"), 2048);
        assert_int_equal(get_u32(f, "general.file_type"), cases[c].ftype);
        float fv;
        assert_int_equal(gguf_get_f32(f, "llama.rope.freq_base", &fv), 0);
        assert_true(fv == 10000.0f);
        assert_int_equal(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &fv), 0);
        assert_true(fabsf(fv - 1e-5f) < 1e-9f);
        assert_int_equal(f->n_tensors, 3 + 8 * 9);
        enum qk_type b = cases[c].base, h = cases[c].high;
        check_shape(f, "token_embd.weight", 256, 300, b);
        check_shape(f, "output.weight", 256, 300, h);
        check_shape(f, "output_norm.weight", 256, 1, QK_F32);
        for (int l = 0; l < 8; l++) {
            char n[64];
            /* llama.cpp's use_more_bits for 8 layers: 0, 7, and 1 + 3k + 2 = 3, 6. */
            int more = l == 0 || l == 7 || l == 3 || l == 6;
            snprintf(n, sizeof n, "blk.%d.attn_norm.weight", l); check_shape(f, n, 256, 1, QK_F32);
            snprintf(n, sizeof n, "blk.%d.ffn_norm.weight", l);  check_shape(f, n, 256, 1, QK_F32);
            snprintf(n, sizeof n, "blk.%d.attn_q.weight", l);    check_shape(f, n, 256, 256, b);
            snprintf(n, sizeof n, "blk.%d.attn_k.weight", l);    check_shape(f, n, 256, 128, b);
            snprintf(n, sizeof n, "blk.%d.attn_v.weight", l);    check_shape(f, n, 256, 128, more ? h : b);
            snprintf(n, sizeof n, "blk.%d.attn_output.weight", l); check_shape(f, n, 256, 256, b);
            snprintf(n, sizeof n, "blk.%d.ffn_gate.weight", l);  check_shape(f, n, 256, 512, b);
            snprintf(n, sizeof n, "blk.%d.ffn_up.weight", l);    check_shape(f, n, 256, 512, b);
            snprintf(n, sizeof n, "blk.%d.ffn_down.weight", l);  check_shape(f, n, 512, 256, more ? h : b);
        }
        /* Norms are exactly one; matrices are centred with std 2/sqrt(fan_in)
         * = 0.125 here, the embedding 0.3 (quantisation error included,
         * hence the loose bounds for 4-bit types). */
        const gguf_tensor *norm = tensor(f, "blk.3.ffn_norm.weight");
        for (int i = 0; i < 256; i++) assert_true(((const float *)norm->data)[i] == 1.0f);
        double mean, sd;
        tensor_stats(tensor(f, "blk.1.ffn_gate.weight"), &mean, &sd);
        if (fabs(mean) > 5e-3 || sd < 0.115 || sd > 0.135)
            fail_msg("%s: ffn_gate mean %g sd %g, want ~0 and ~0.125", cases[c].type, mean, sd);
        tensor_stats(tensor(f, "token_embd.weight"), &mean, &sd);
        if (fabs(mean) > 2e-2 || sd < 0.28 || sd > 0.32)
            fail_msg("%s: token_embd mean %g sd %g, want ~0 and ~0.3", cases[c].type, mean, sd);
        gguf_close(f);
    }
    unlink(tmp_path);
}

static void test_qwen2_tied(void **state)
{
    (void)state;
    assert_int_equal(make_model("-o", tmp_path, "--arch", "qwen2", "--dim", "64", "--layers", "2",
                                "--heads", "4", "--kv-heads", "2", "--ffn", "192", "--vocab-size", "400",
                                "--ctx", "4096", "--tied", "--type", "q8_0", NULL), 0);
    gguf_file *f = open_ok(tmp_path);
    char s[64];
    assert_int_equal(gguf_get_str(f, "general.architecture", s, sizeof s), 0);
    assert_string_equal(s, "qwen2");
    assert_int_equal(get_u32(f, "qwen2.context_length"), 4096);
    assert_int_equal(get_u32(f, "qwen2.rope.dimension_count"), 16);
    float fv;
    assert_int_equal(gguf_get_f32(f, "qwen2.rope.freq_base", &fv), 0);
    assert_true(fv == 1000000.0f);
    assert_int_equal(f->n_tensors, 2 + 2 * 12);
    assert_null(gguf_find_tensor(f, "output.weight"));
    check_shape(f, "token_embd.weight", 64, 400, QK_Q8_0);
    check_shape(f, "blk.1.attn_q.bias", 64, 1, QK_F32);
    check_shape(f, "blk.1.attn_k.bias", 32, 1, QK_F32);
    check_shape(f, "blk.1.attn_v.bias", 32, 1, QK_F32);
    check_shape(f, "blk.0.attn_k.weight", 64, 32, QK_Q8_0);
    check_shape(f, "blk.0.ffn_down.weight", 192, 64, QK_Q8_0);
    const gguf_tensor *bias = tensor(f, "blk.0.attn_q.bias");
    double s1 = 0;
    for (int i = 0; i < 64; i++) s1 += fabsf(((const float *)bias->data)[i]);
    assert_true(s1 > 0.1 && s1 < 5.0); /* random, small, not zero */
    gguf_close(f);

    /* Tied q4_k_m: token_embd is the output too, so it gets Q6_K. */
    assert_int_equal(make_model("-o", tmp_path, "--arch", "qwen2", "--dim", "256", "--layers", "1",
                                "--heads", "4", "--ffn", "256", "--vocab-size", "300", "--tied",
                                "--type", "q4_k_m", NULL), 0);
    f = open_ok(tmp_path);
    check_shape(f, "token_embd.weight", 256, 300, QK_Q6_K);
    check_shape(f, "blk.0.attn_q.weight", 256, 256, QK_Q4_K);
    gguf_close(f);
    unlink(tmp_path);
}

/* Rows the type cannot hold fall back as llama.cpp does. */
static void test_block_fallbacks(void **state)
{
    (void)state;
    assert_int_equal(make_model("-o", tmp_path, "--dim", "96", "--layers", "1", "--heads", "2",
                                "--ffn", "512", "--vocab-size", "300", "--type", "q4_k", NULL), 0);
    gguf_file *f = open_ok(tmp_path);
    check_shape(f, "blk.0.attn_q.weight", 96, 96, QK_Q5_0);     /* 96 % 256 != 0 */
    check_shape(f, "blk.0.ffn_down.weight", 512, 96, QK_Q4_K);  /* 512 % 256 == 0 */
    gguf_close(f);
    assert_int_equal(make_model("-o", tmp_path, "--dim", "48", "--layers", "1", "--heads", "2",
                                "--ffn", "64", "--vocab-size", "300", "--type", "q6_k", NULL), 0);
    f = open_ok(tmp_path);
    check_shape(f, "blk.0.attn_q.weight", 48, 48, QK_F16);      /* 48 % 32 != 0 */
    check_shape(f, "blk.0.ffn_down.weight", 64, 48, QK_Q8_0);   /* Q6_K -> Q8_0 */
    gguf_close(f);
    unlink(tmp_path);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    rewind(fp);
    unsigned char *b = malloc((size_t)sz);
    assert_int_equal(fread(b, 1, (size_t)sz, fp), (size_t)sz);
    fclose(fp);
    *n = (size_t)sz;
    return b;
}

static void test_deterministic(void **state)
{
    (void)state;
    char a[64], b[64];
    snprintf(a, sizeof a, "/tmp/qkvd_test_mm_a_%d.gguf", (int)getpid());
    snprintf(b, sizeof b, "/tmp/qkvd_test_mm_b_%d.gguf", (int)getpid());
    assert_int_equal(make_model("-o", a, "--dim", "256", "--layers", "2", "--heads", "4", "--ffn", "256",
                                "--vocab-size", "500", "--type", "q4_k_m", "--seed", "42",
                                "--threads", "1", NULL), 0);
    assert_int_equal(make_model("-o", b, "--dim", "256", "--layers", "2", "--heads", "4", "--ffn", "256",
                                "--vocab-size", "500", "--type", "q4_k_m", "--seed", "42",
                                "--threads", "3", NULL), 0);
    size_t na, nb;
    unsigned char *da = slurp(a, &na), *db = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(da, db, na); /* same seed, any thread count: same bytes */
    free(db);
    assert_int_equal(make_model("-o", b, "--dim", "256", "--layers", "2", "--heads", "4", "--ffn", "256",
                                "--vocab-size", "500", "--type", "q4_k_m", "--seed", "43", NULL), 0);
    db = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_true(memcmp(da, db, na) != 0);
    /* Only the weights differ: the metadata region is identical. */
    gguf_file *f = open_ok(a);
    assert_memory_equal(da, db, (size_t)f->data_offset);
    gguf_close(f);
    free(da);
    free(db);
    unlink(a);
    unlink(b);
}

static int32_t find_token(const gguf_kv *tok, const char *s, size_t len)
{
    for (uint64_t i = 0; i < tok->arr_n; i++)
        if (tok->arr_strs[i].len == len && !memcmp(tok->arr_strs[i].ptr, s, len)) return (int32_t)i;
    return -1;
}

static void test_learned_vocab(void **state)
{
    (void)state;
    assert_int_equal(make_model("-o", tmp_path, "--dim", "64", "--layers", "1", "--heads", "2",
                                "--vocab-size", "1200", "--type", "f32", NULL), 0);
    gguf_file *f = open_ok(tmp_path);
    char s[32];
    assert_int_equal(gguf_get_str(f, "tokenizer.ggml.model", s, sizeof s), 0);
    assert_string_equal(s, "gpt2");
    assert_int_equal(gguf_get_str(f, "tokenizer.ggml.pre", s, sizeof s), 0);
    assert_string_equal(s, "gpt-2");
    const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
    const gguf_kv *tt = gguf_find(f, "tokenizer.ggml.token_type");
    const gguf_kv *mg = gguf_find(f, "tokenizer.ggml.merges");
    assert_non_null(tok); assert_non_null(tt); assert_non_null(mg);
    assert_int_equal(tok->arr_n, 1200);
    assert_int_equal(tt->arr_n, 1200);
    assert_int_equal(tensor(f, "token_embd.weight")->ne[1], 1200);
    assert_int_equal(get_u32(f, "tokenizer.ggml.eos_token_id"), 1199);
    assert_int_equal(get_u32(f, "tokenizer.ggml.bos_token_id"), 1199);
    assert_int_equal(tok->arr_strs[1199].len, 13);
    assert_memory_equal(tok->arr_strs[1199].ptr, "<|endoftext|>", 13);
    assert_int_equal(gguf_arr_i64(tt, 1199), 3);
    /* GPT-2's byte alphabet: '!' is id 0, the space byte (U+0120 'Ġ') id 220. */
    assert_int_equal(tok->arr_strs[0].len, 1);
    assert_int_equal(tok->arr_strs[0].ptr[0], '!');
    assert_int_equal(tok->arr_strs[220].len, 2);
    assert_memory_equal(tok->arr_strs[220].ptr, "\xc4\xa0", 2);
    /* Every merge is "left right" with both sides and their concatenation in the vocabulary. */
    assert_true(mg->arr_n >= 900);
    for (uint64_t m = 0; m < mg->arr_n; m++) {
        const char *p = mg->arr_strs[m].ptr;
        size_t len = (size_t)mg->arr_strs[m].len;
        const char *sp = memchr(p, ' ', len);
        assert_non_null(sp);
        size_t ll = (size_t)(sp - p), lr = len - ll - 1;
        assert_true(ll > 0 && lr > 0);
        assert_true(find_token(tok, p, ll) >= 0);
        assert_true(find_token(tok, sp + 1, lr) >= 0);
        char cat[256];
        assert_true(ll + lr < sizeof cat);
        memcpy(cat, p, ll);
        memcpy(cat + ll, sp + 1, lr);
        assert_true(find_token(tok, cat, ll + lr) >= 0);
    }
    /* Token strings are unique. */
    for (uint64_t i = 256; i < tok->arr_n; i += 37)
        assert_int_equal(find_token(tok, tok->arr_strs[i].ptr, (size_t)tok->arr_strs[i].len), (int32_t)i);

    /* The tokenizer round-trips text through the learned vocabulary, and
     * learned merges actually shorten it. */
    tokenizer *t;
    char err[256];
    if (tokenizer_load(f, &t, err, sizeof err) != 0) fail_msg("tokenizer_load: %s", err);
    assert_int_equal(tokenizer_n_vocab(t), 1200);
    assert_int_equal(tokenizer_eos(t), 1199);
    static const char *const texts[] = {
        "static int gguf_parse(const void *buf, size_t size) { return 0; }",
        "The reader validates everything before anything is used.\n\n  Tabs\tand  spaces ",
        "unicode: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 and bytes \x01\x7f",
    };
    for (size_t k = 0; k < sizeof texts / sizeof *texts; k++) {
        int32_t ids[512];
        size_t len = strlen(texts[k]);
        int64_t n = tokenizer_encode(t, texts[k], len, 0, 0, ids, 512);
        assert_true(n > 0 && n <= 512);
        if (k == 0) assert_true(n < (int64_t)len / 2); /* code-like text compresses */
        char out[1024];
        int64_t m = tokenizer_decode(t, ids, n, 0, out, sizeof out);
        assert_int_equal(m, (int64_t)len);
        assert_memory_equal(out, texts[k], len);
    }
    tokenizer_free(t);
    gguf_close(f);
    unlink(tmp_path);
}

static void test_vocab_from(void **state)
{
    (void)state;
    const char *sh = getenv("QKVD_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-gpt-2.gguf", sh && *sh ? sh : "../shared");
    if (access(path, R_OK) != 0) { printf("skip: %s absent (set QKVD_SHARED)\n", path); skip(); }
    assert_int_equal(make_model("-o", tmp_path, "--dim", "64", "--layers", "1", "--heads", "2",
                                "--vocab-from", path, "--type", "q8_0", NULL), 0);
    gguf_file *f = open_ok(tmp_path), *v = open_ok(path);
    check_shape(f, "token_embd.weight", 64, 50257, QK_Q8_0);
    check_shape(f, "output.weight", 64, 50257, QK_Q8_0);
    /* Every tokenizer.* key is copied verbatim. */
    int n = 0;
    for (uint64_t i = 0; i < v->n_kv; i++) {
        const gguf_kv *a = &v->kv[i];
        if (a->key.len < 10 || memcmp(a->key.ptr, "tokenizer.", 10)) continue;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)a->key.len, a->key.ptr);
        const gguf_kv *b = gguf_find(f, key);
        assert_non_null(b);
        assert_int_equal(a->type, b->type);
        if (a->type == GGUF_ARRAY) {
            assert_int_equal(a->arr_n, b->arr_n);
            if (a->arr_type == GGUF_STRING)
                for (uint64_t j = 0; j < a->arr_n; j += 101)
                    assert_memory_equal(a->arr_strs[j].ptr, b->arr_strs[j].ptr, a->arr_strs[j].len);
        }
        n++;
    }
    assert_true(n >= 6);
    assert_null(gguf_find(f, "gpt2.block_count")); /* only tokenizer.* keys come along */
    gguf_close(v);
    gguf_close(f);
    /* An explicit --vocab-size that disagrees with the file is an error. */
    assert_int_not_equal(make_model("-o", tmp_path, "--vocab-from", path, "--vocab-size", "1000", NULL), 0);
    unlink(tmp_path);
}

static void test_preset_override(void **state)
{
    (void)state;
    /* The 135m shape with fewer layers and a small vocabulary keeps it fast. */
    assert_int_equal(make_model("-o", tmp_path, "--preset", "135m", "--layers", "1", "--vocab-size", "400",
                                "--type", "q4_k", NULL), 0);
    gguf_file *f = open_ok(tmp_path);
    assert_int_equal(get_u32(f, "llama.embedding_length"), 576);
    assert_int_equal(get_u32(f, "llama.attention.head_count"), 9);
    assert_int_equal(get_u32(f, "llama.attention.head_count_kv"), 3);
    assert_int_equal(get_u32(f, "llama.feed_forward_length"), 1536);
    assert_int_equal(get_u32(f, "llama.block_count"), 1);
    check_shape(f, "blk.0.attn_k.weight", 576, 192, QK_Q5_0);   /* 576 % 256 != 0 */
    check_shape(f, "blk.0.ffn_down.weight", 1536, 576, QK_Q4_K);
    check_shape(f, "token_embd.weight", 576, 400, QK_Q5_0);
    gguf_close(f);
    unlink(tmp_path);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    assert_int_equal(make_model("--dim", "64", NULL), 2);                       /* no -o */
    assert_int_equal(make_model("-o", tmp_path, "--type", "q3_k", NULL), 2);    /* unknown type */
    assert_int_equal(make_model("-o", tmp_path, "--arch", "gpt2", NULL), 2);
    assert_int_equal(make_model("-o", tmp_path, "--dim", "100", "--heads", "3", NULL), 2);
    assert_int_equal(make_model("-o", tmp_path, "--heads", "4", "--kv-heads", "3", NULL), 2);
    assert_int_equal(make_model("-o", tmp_path, "--dim", "abc", NULL), 2);
    assert_int_equal(make_model("-o", tmp_path, "--preset", "7b", NULL), 2);
    assert_int_equal(make_model("-o", tmp_path, "--bogus", "1", NULL), 2);
    assert_int_not_equal(make_model("-o", tmp_path, "--vocab-size", "100", NULL), 0); /* < 257 */
    assert_int_not_equal(make_model("-o", tmp_path, "--vocab-from", "/nonexistent.gguf", NULL), 0);
    assert_int_not_equal(make_model("-o", "/nonexistent-dir/x.gguf", "--vocab-size", "300", NULL), 0);
    assert_int_equal(access(tmp_path, F_OK), -1);
}

/* The trainer alone: exact merges on a tiny text, padding when it runs out. */
static void test_bpe_train_small(void **state)
{
    (void)state;
    const char *text = "low low low low lower lower newest newest newest widest";
    bpe_vocab v;
    char err[128];
    assert_int_equal(bpe_train_learn(text, strlen(text), 300, &v, err, sizeof err), 0);
    assert_int_equal(v.n_tokens, 300);
    assert_true(v.n_learned > 5);
    assert_int_equal(v.n_learned + v.n_padding + 257, 300);
    assert_true(v.n_padding > 0); /* this text cannot supply 43 merges */
    /* "l o" and "o w" both occur 6 times ("low" 4x, "lower" 2x); the tie
     * goes to the smaller pair of ids, 'l' < 'o'. */
    assert_string_equal(v.merges[0], "l o");
    assert_string_equal(v.tokens[256], "lo");
    assert_string_equal(v.tokens[299], "<|endoftext|>");
    assert_int_equal(v.token_types[299], 3);
    assert_int_equal(v.token_types[298], 5);
    assert_string_equal(v.tokens[256 + v.n_learned], "<|unused_0|>");
    bpe_vocab_free(&v);
    assert_int_not_equal(bpe_train_learn(text, strlen(text), 256, &v, err, sizeof err), 0);
    assert_non_null(strstr(err, "too small"));
    assert_int_equal(bpe_byte_to_codepoint(' '), 0x120);
    assert_int_equal(bpe_byte_to_codepoint('A'), 'A');
    assert_int_equal(bpe_byte_to_codepoint(0xad), 0x143);
}

/* The point of the weight scales: greedy decoding of a random model gives
 * varied tokens rather than one token repeated. Also checks that the engine
 * loads what make-model writes. */
static void greedy_check(const char *arch, int tied)
{
    assert_int_equal(make_model("-o", tmp_path, "--arch", arch, "--dim", "128", "--layers", "4",
                                "--heads", "4", "--kv-heads", "2", "--ffn", "384", "--vocab-size", "1000",
                                "--type", "q8_0", tied ? "--tied" : NULL, NULL), 0);
    engine_params p;
    engine_params_default(&p);
    p.model_path = tmp_path;
    p.n_threads = 1;
    p.n_ctx = 256;
    engine *e;
    char err[512];
    if (engine_load(&p, &e, err, sizeof err) != 0) fail_msg("engine_load: %s", err);
    const engine_info *info = engine_get_info(e);
    assert_string_equal(info->arch, arch);
    assert_int_equal(info->n_vocab, 1000);
    assert_int_equal(info->n_embd, 128);
    assert_int_equal(info->n_layer, 4);
    int32_t seq = engine_seq_create(e);
    assert_true(seq >= 0);
    int32_t tok[64] = { 1, 2, 3 }, n = 3;
    engine_item it = { seq, tok, 3, ENGINE_OUT_LAST, NULL };
    int distinct = 0, longest_run = 1, run = 1;
    static unsigned char seen[1000];
    memset(seen, 0, sizeof seen);
    while (n < 64) {
        if (engine_step(e, &it, 1) != 0) fail_msg("engine_step failed at %d", n);
        int32_t best = 0;
        for (int32_t v = 1; v < 1000; v++) if (it.logits[v] > it.logits[best]) best = v;
        assert_true(isfinite(it.logits[best]));
        if (!seen[best]) { seen[best] = 1; distinct++; }
        run = best == tok[n - 1] ? run + 1 : 1;
        if (run > longest_run) longest_run = run;
        tok[n] = best;
        it.tokens = &tok[n];
        it.n_tokens = 1;
        n++;
    }
    if (distinct < 20 || longest_run > 3)
        fail_msg("%s%s: greedy text is degenerate: %d distinct of 61 tokens, longest repeat %d",
                 arch, tied ? " tied" : "", distinct, longest_run);
    engine_free(e);
    unlink(tmp_path);
}

static void test_greedy_text_varied(void **state)
{
    (void)state;
    greedy_check("llama", 0);
    greedy_check("llama", 1);
    greedy_check("qwen2", 1);
}

int main(void)
{
    snprintf(tmp_path, sizeof tmp_path, "/tmp/qkvd_test_make_model_%d.gguf", (int)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_train_small),
        cmocka_unit_test(test_llama_all_types),
        cmocka_unit_test(test_qwen2_tied),
        cmocka_unit_test(test_block_fallbacks),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_learned_vocab),
        cmocka_unit_test(test_vocab_from),
        cmocka_unit_test(test_preset_override),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_greedy_text_varied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
