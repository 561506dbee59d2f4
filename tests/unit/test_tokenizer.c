/* test_tokenizer.c -- the tokenizer against llama.cpp's reference vectors
 * (../shared/vocab), the prompts of ../shared/reference/model-outputs.json,
 * special-token parsing, BOS/EOS, round trips, streaming, load errors and a
 * large input. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "tokenizer.h"

/* ---- helpers ----------------------------------------------------------- */

static const char *shared_dir(void) {
    const char *s = getenv("QKVD_SHARED");
    return s && *s ? s : "../shared";
}

/* CPU time of this process: the budgets below are about the tokenizer's own
 * cost, not about how busy a shared build machine is. */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; *len = (size_t)n; }
    return buf;
}

/* Open a GGUF from ../shared and load its tokenizer; NULL (and a skip
 * message) when the file is absent. */
static tokenizer *load_shared(const char *rel, double *load_ms) {
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/%s", shared_dir(), rel);
    if (access(path, R_OK) != 0) return NULL;
    gguf_file *f = NULL;
    if (gguf_open(path, &f, err, sizeof err) != 0) fail_msg("gguf_open %s: %s", path, err);
    tokenizer *t = NULL;
    double t0 = now_s();
    int rc = tokenizer_load(f, &t, err, sizeof err);
    if (load_ms) *load_ms = (now_s() - t0) * 1e3;
    gguf_close(f);
    if (rc != 0) fail_msg("tokenizer_load %s: %s", path, err);
    return t;
}

static int64_t enc(const tokenizer *t, const char *s, size_t n, int add_special, int parse_special,
                   int32_t *ids, int64_t cap) {
    int64_t r = tokenizer_encode(t, s, n, add_special, parse_special, ids, cap);
    assert_true(r >= 0);
    assert_true(r <= cap);
    return r;
}

static void print_ids(const char *label, const int32_t *ids, int64_t n) {
    printf("    %s:", label);
    for (int64_t i = 0; i < n; i++) printf(" %d", ids[i]);
    printf("\n");
}

/* ---- reference vectors ------------------------------------------------- */

/* .inp: strings each followed by "\n__ggml_vocab_test__\n"; .out: one line
 * of ids per string (no BOS). Every string is checked; the first mismatch is
 * printed with input, expected and got. */
static void check_vocab(const char *name) {
    char rel[256], path[1024];
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", name);
    double load_ms = 0;
    tokenizer *t = load_shared(rel, &load_ms);
    if (!t) { printf("skip: %s/%s absent\n", shared_dir(), rel); skip(); }
    size_t inl, outl;
    snprintf(path, sizeof path, "%s/%s.inp", shared_dir(), rel);
    char *inp = read_file(path, &inl);
    snprintf(path, sizeof path, "%s/%s.out", shared_dir(), rel);
    char *out = read_file(path, &outl);
    assert_non_null(inp);
    assert_non_null(out);

    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t sepl = sizeof sep - 1;
    char *ip = inp, *op = out;
    int n_cases = 0, n_bad = 0;
    int32_t *got = malloc(65536 * sizeof *got);
    while (ip < inp + inl) {
        char *e = memmem(ip, (size_t)(inp + inl - ip), sep, sepl);
        size_t slen = e ? (size_t)(e - ip) : (size_t)(inp + inl - ip);
        if (!e && slen == 0) break;
        /* expected ids */
        char *nl = strchr(op, '\n');
        assert_non_null(nl);
        *nl = 0;
        int32_t want[4096];
        int nw = 0;
        for (char *p = op; *p;) {
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p) break;
            want[nw++] = (int32_t)v;
            p = q;
        }
        op = nl + 1;
        int64_t n = enc(t, ip, slen, 0, 0, got, 65536);
        int same = n == nw;
        for (int i = 0; same && i < nw; i++) same = got[i] == want[i];
        if (!same) {
            if (n_bad == 0) {
                printf("  %s: first mismatch, case %d, input '%.*s' (%zu bytes)\n", name, n_cases,
                       (int)slen, ip, slen);
                print_ids("expected", want, nw);
                print_ids("got     ", got, n);
            }
            n_bad++;
        }
        n_cases++;
        ip = e ? e + sepl : inp + inl;
    }
    printf("  %s: %d/%d cases match (load %.1f ms)\n", name, n_cases - n_bad, n_cases, load_ms);
    free(got);
    free(inp);
    free(out);
    tokenizer_free(t);
    assert_true(n_cases >= 40);
    assert_int_equal(n_bad, 0);
}

static void test_vocab_llama_spm(void **state) { (void)state; check_vocab("llama-spm"); }
static void test_vocab_phi_3(void **state) { (void)state; check_vocab("phi-3"); }
static void test_vocab_gpt_2(void **state) { (void)state; check_vocab("gpt-2"); }
static void test_vocab_starcoder(void **state) { (void)state; check_vocab("starcoder"); }
static void test_vocab_mpt(void **state) { (void)state; check_vocab("mpt"); }
static void test_vocab_refact(void **state) { (void)state; check_vocab("refact"); }

/* ---- prompts of the reference models ------------------------------------- */

static void check_model_prompts(const char *model) {
    char rel[256], path[1024];
    snprintf(rel, sizeof rel, "models/%s", model);
    tokenizer *t = load_shared(rel, NULL);
    if (!t) { printf("skip: %s/%s absent\n", shared_dir(), rel); skip(); }
    snprintf(path, sizeof path, "%s/reference/model-outputs.json", shared_dir());
    json_error_t je;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &je);
    if (!root) { tokenizer_free(t); printf("skip: %s: %s\n", path, je.text); skip(); }
    json_t *cases = json_object_get(json_object_get(root, "models"), model);
    assert_true(json_is_array(cases));
    size_t i;
    json_t *c;
    int checked = 0;
    json_array_foreach(cases, i, c) {
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        json_t *want = json_object_get(c, "prompt_tokens");
        assert_non_null(prompt);
        int32_t got[512];
        int64_t n = enc(t, prompt, strlen(prompt), 1, 0, got, 512);
        int same = (size_t)n == json_array_size(want);
        for (int64_t k = 0; same && k < n; k++)
            same = got[k] == json_integer_value(json_array_get(want, (size_t)k));
        if (!same) {
            printf("  %s: prompt '%s'\n", model, prompt);
            print_ids("got", got, n);
        }
        assert_true(same);
        /* and back: the decoded prompt is the prompt */
        char text[1024];
        int64_t m = tokenizer_decode(t, got, n, 0, text, sizeof text);
        assert_int_equal(m, (int64_t)strlen(prompt));
        assert_memory_equal(text, prompt, (size_t)m);
        checked++;
    }
    assert_true(checked >= 1);
    json_decref(root);
    tokenizer_free(t);
}

static void test_stories260k_prompts(void **state) { (void)state; check_model_prompts("stories260K.gguf"); }
static void test_tiny_qwen2_prompts(void **state) { (void)state; check_model_prompts("tiny-qwen2-f16.gguf"); }

/* ---- special tokens, BOS/EOS --------------------------------------------- */

static void test_special_parsing(void **state) {
    (void)state;
    tokenizer *g = load_shared("vocab/ggml-vocab-gpt-2.gguf", NULL);
    tokenizer *s = load_shared("vocab/ggml-vocab-llama-spm.gguf", NULL);
    if (!g || !s) { tokenizer_free(g); tokenizer_free(s); printf("skip: vocab files absent\n"); skip(); }
    int32_t ids[256];
    const char *txt = "Hi<|endoftext|>there";
    int64_t n = enc(g, txt, strlen(txt), 0, 1, ids, 256);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], 50256);
    assert_int_equal(tokenizer_find(g, "<|endoftext|>", 13), 50256);
    n = enc(g, txt, strlen(txt), 0, 0, ids, 256);
    assert_true(n > 3);
    for (int64_t i = 0; i < n; i++) assert_int_not_equal(ids[i], 50256);
    /* the text survives either way */
    char buf[256];
    int64_t m = tokenizer_decode(g, ids, n, 0, buf, sizeof buf);
    assert_int_equal(m, (int64_t)strlen(txt));
    assert_memory_equal(buf, txt, (size_t)m);

    /* SPM: "<s>" is BOS only with parse_special; the text after a special
     * token gets the leading space again (llama.cpp). */
    const char *st = "<s>Hello";
    n = enc(s, st, strlen(st), 0, 1, ids, 256);
    int32_t plain[64];
    int64_t pn = enc(s, "Hello", 5, 0, 0, plain, 64);
    assert_int_equal(n, pn + 1);
    assert_int_equal(ids[0], 1);
    assert_memory_equal(ids + 1, plain, (size_t)pn * sizeof *plain);
    n = enc(s, st, strlen(st), 0, 0, ids, 256);
    for (int64_t i = 0; i < n; i++) assert_int_not_equal(ids[i], 1);
    m = tokenizer_decode(s, ids, n, 0, buf, sizeof buf);
    assert_int_equal(m, (int64_t)strlen(st));
    assert_memory_equal(buf, st, (size_t)m);
    /* control tokens render only on request */
    assert_int_equal(tokenizer_token_to_bytes(s, 1, 0, buf, sizeof buf), 0);
    assert_int_equal(tokenizer_token_to_bytes(s, 1, 1, buf, sizeof buf), 3);
    assert_memory_equal(buf, "<s>", 3);
    tokenizer_free(g);
    tokenizer_free(s);
}

static void test_bos_eos(void **state) {
    (void)state;
    tokenizer *g = load_shared("vocab/ggml-vocab-gpt-2.gguf", NULL);
    tokenizer *s = load_shared("vocab/ggml-vocab-llama-spm.gguf", NULL);
    if (!g || !s) { tokenizer_free(g); tokenizer_free(s); printf("skip: vocab files absent\n"); skip(); }
    int32_t ids[64];
    assert_int_equal(tokenizer_kind(s), TOK_SPM);
    assert_int_equal(tokenizer_kind(g), TOK_BPE);
    assert_int_equal(tokenizer_bos(s), 1);
    assert_int_equal(tokenizer_eos(s), 2);
    assert_true(tokenizer_add_bos(s));
    assert_false(tokenizer_add_eos(s));
    int64_t n = enc(s, "Hello world", 11, 1, 0, ids, 64);
    assert_int_equal(ids[0], 1);
    assert_int_not_equal(ids[n - 1], 2);
    int64_t n0 = enc(s, "Hello world", 11, 0, 0, ids, 64);
    assert_int_equal(n, n0 + 1);
    /* empty text: just BOS, or nothing */
    assert_int_equal(enc(s, "", 0, 1, 0, ids, 64), 1);
    assert_int_equal(ids[0], 1);
    assert_int_equal(enc(s, "", 0, 0, 0, ids, 64), 0);
    /* gpt-2 adds nothing */
    assert_false(tokenizer_add_bos(g));
    n = enc(g, "Hello", 5, 1, 0, ids, 64);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 15496);
    assert_true(tokenizer_is_eog(g, 50256));
    assert_true(tokenizer_is_eog(s, 2));
    assert_false(tokenizer_is_eog(s, 1));
    /* the count is returned even when the buffer is too small */
    assert_int_equal(tokenizer_encode(s, "Hello world", 11, 1, 0, ids, 1), n0 + 1);
    assert_int_equal(ids[0], 1);
    tokenizer_free(g);
    tokenizer_free(s);
}

/* ---- tiny vocabularies built with the GGUF writer ------------------------ */

static char tmp_path[256];

static int write_tiny(const char *model, const char *pre, int add_eos) {
    const char *toks[] = {"<unk>", "<s>", "</s>", "a", "b", "ab", "\xc4\xa0", "\xc4\xa0" "a"};
    const char *merges[] = {"a b", "\xc4\xa0 a"};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1};
    float scores[] = {0, 0, 0, -1, -1, -0.5f, -1, -0.5f};
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_str(w, "tokenizer.ggml.model", model);
    if (pre) gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 8);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, 8);
    gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", scores, 8);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 2);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", add_eos);
    snprintf(tmp_path, sizeof tmp_path, "/tmp/qkvd-test-tok-%d.gguf", (int)getpid());
    char err[256];
    int rc = gguf_writer_write(w, tmp_path, err, sizeof err);
    gguf_writer_free(w);
    if (rc != 0) printf("gguf_writer_write: %s\n", err);
    return rc;
}

static int load_tmp(tokenizer **t, char *err, size_t errlen) {
    gguf_file *f = NULL;
    if (gguf_open(tmp_path, &f, err, errlen) != 0) fail_msg("gguf_open: %s", err);
    int rc = tokenizer_load(f, t, err, errlen);
    gguf_close(f);
    unlink(tmp_path);
    return rc;
}

static void test_unknown_pre_is_error(void **state) {
    (void)state;
    assert_int_equal(write_tiny("gpt2", "no-such-pre", 0), 0);
    tokenizer *t = NULL;
    char err[256] = "";
    assert_true(load_tmp(&t, err, sizeof err) < 0);
    assert_null(t);
    assert_non_null(strstr(err, "no-such-pre"));
    printf("  error: %s\n", err);

    assert_int_equal(write_tiny("wordpiece9", NULL, 0), 0);
    assert_true(load_tmp(&t, err, sizeof err) < 0);
    assert_non_null(strstr(err, "wordpiece9"));
}

static void test_tiny_bpe_and_eos(void **state) {
    (void)state;
    assert_int_equal(write_tiny("gpt2", "gpt-2", 1), 0);
    tokenizer *t = NULL;
    char err[256] = "";
    assert_int_equal(load_tmp(&t, err, sizeof err), 0);
    int32_t ids[16];
    /* "ab a" -> "ab" (merge a+b), " a" (merge Ġ+a), then EOS */
    int64_t n = enc(t, "ab a", 4, 1, 0, ids, 16);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 7);
    assert_int_equal(ids[2], 2);
    /* characters outside the vocabulary are dropped, never a crash */
    n = enc(t, "xyz\xff", 4, 0, 0, ids, 16);
    assert_int_equal(n, 0);
    tokenizer_free(t);

    assert_int_equal(write_tiny("llama", NULL, 0), 0);
    assert_int_equal(load_tmp(&t, err, sizeof err), 0);
    /* SPM: "ab" merges; the unknown 'x' has no byte token -> <unk> */
    n = enc(t, "abx", 3, 0, 0, ids, 16);
    assert_true(n >= 2);
    assert_int_equal(ids[n - 1], 0);
    tokenizer_free(t);
}

/* Every pre-tokenizer name the loader knows compiles and splits text; the
 * gemma4 flavour (raw UTF-8, spaces as U+2581) merges across words. */
static void test_all_pretokenizers_load(void **state) {
    (void)state;
    static const char *const names[] = {
        "default", "gpt-2", "mpt", "starcoder", "refact", "command-r", "llama-bpe", "llama3",
        "qwen2", "qwen35", "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon", "tekken",
        "gpt-4o", "chameleon", "poro-chat", "viking", "bailingmoe", "seed-coder", "minicpm5",
        "smaug-bpe", "chatglm-bpe", "stablelm2", "olmo", "gemma4", "gemma-4"};
    const char *text = "Hello wORLD's 12345 \xe4\xbd\xa0\xe5\xa5\xbd!!\n\n  x\t\xf0\x9f\x98\x80 \xff";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        assert_int_equal(write_tiny("gpt2", names[i], 0), 0);
        tokenizer *t = NULL;
        char err[256] = "";
        if (load_tmp(&t, err, sizeof err) != 0) fail_msg("pre-tokenizer %s: %s", names[i], err);
        int32_t ids[256];
        int64_t n = tokenizer_encode(t, text, strlen(text), 1, 1, ids, 256);
        assert_true(n >= 0 && n <= 256);
        tokenizer_free(t);
    }
    /* gemma4: "ab ab\n\n" -> BOS "ab" "\u2581ab" "\n\n": the space is U+2581 and
     * merges run across it; a word of newlines that is a token stays whole */
    const char *toks[] = {"<unk>", "<s>", "</s>", "a", "b", "ab", "\xe2\x96\x81", "\xe2\x96\x81" "ab",
                          "\xe2\x96\x81" "a", "\n\n"};
    const char *merges[] = {"\xe2\x96\x81 a", "\xe2\x96\x81" "a b", "a b"};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1};
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gemma4");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 10);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, 10);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 3);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    char err[256];
    assert_int_equal(gguf_writer_write(w, tmp_path, err, sizeof err), 0);
    gguf_writer_free(w);
    tokenizer *t = NULL;
    assert_int_equal(load_tmp(&t, err, sizeof err), 0);
    int32_t ids[16];
    int64_t n = enc(t, "ab ab\n\n", 7, 1, 0, ids, 16);
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 1); /* gemma4 always adds BOS */
    assert_int_equal(ids[1], 5);
    assert_int_equal(ids[2], 7);
    assert_int_equal(ids[3], 9);
    char buf[32];
    int64_t m = tokenizer_decode(t, ids, n, 0, buf, sizeof buf);
    assert_int_equal(m, 7);
    assert_memory_equal(buf, "ab ab\n\n", 7);
    tokenizer_free(t);
}

/* Special tokens are matched longest first over the whole text (llama.cpp's
 * order), not leftmost: in "xabcd" the 4-byte "abcd" wins over "xab", even
 * though "xab" starts earlier. User-defined tokens match even without
 * parse_special; control tokens only with it. */
static void test_special_priority(void **state) {
    (void)state;
    const char *toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "\xe2\x96\x81x", "x", "c", "d", "abcd", "xab", "a", "b"};
    int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 4, 4, 1, 1};
    float scores[12] = {0};
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 12);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, 12);
    gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", scores, 12);
    snprintf(tmp_path, sizeof tmp_path, "/tmp/qkvd-test-tok-%d.gguf", (int)getpid());
    char err[256];
    assert_int_equal(gguf_writer_write(w, tmp_path, err, sizeof err), 0);
    gguf_writer_free(w);
    tokenizer *t = NULL;
    assert_int_equal(load_tmp(&t, err, sizeof err), 0);
    int32_t ids[32];
    int64_t n = enc(t, "xabcd", 5, 0, 0, ids, 32);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 4); /* "\u2581x": the leading-space rule */
    assert_int_equal(ids[1], 8); /* "abcd" */
    /* after a special token the text gets the leading space again */
    n = enc(t, "abcdx", 5, 0, 0, ids, 32);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 8);
    assert_int_equal(ids[1], 4);
    /* control tokens: text without parse_special, a token with it */
    n = enc(t, "</s>", 4, 0, 1, ids, 32);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 2);
    n = enc(t, "</s>", 4, 0, 0, ids, 32);
    assert_true(n > 1);
    for (int64_t i = 0; i < n; i++) assert_int_not_equal(ids[i], 2);
    tokenizer_free(t);
}

/* Llama 3 style pre-tokenizers take a whole word that is in the vocabulary
 * as one token without merging (llama.cpp's ignore_merges); GPT-2 merges. */
static void test_ignore_merges(void **state) {
    (void)state;
    const char *toks[] = {"<|begin_of_text|>", "a", "b", "c", "abc", "ab"};
    int32_t types[] = {3, 1, 1, 1, 1, 1};
    const char *merges[] = {"a b"}; /* no merge makes "abc" */
    const char *pres[] = {"llama-bpe", "gpt-2"};
    for (int k = 0; k < 2; k++) {
        gguf_writer *w = gguf_writer_create();
        gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
        gguf_writer_set_str(w, "tokenizer.ggml.pre", pres[k]);
        gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 6);
        gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, 6);
        gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, NULL, 1);
        gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0);
        snprintf(tmp_path, sizeof tmp_path, "/tmp/qkvd-test-tok-%d.gguf", (int)getpid());
        char err[256];
        assert_int_equal(gguf_writer_write(w, tmp_path, err, sizeof err), 0);
        gguf_writer_free(w);
        tokenizer *t = NULL;
        assert_int_equal(load_tmp(&t, err, sizeof err), 0);
        int32_t ids[8];
        int64_t n = enc(t, "abc", 3, 1, 0, ids, 8);
        if (k == 0) {
            /* llama-bpe: BOS by default, and "abc" whole */
            assert_int_equal(n, 2);
            assert_int_equal(ids[0], 0);
            assert_int_equal(ids[1], 4);
        } else {
            assert_int_equal(n, 2);
            assert_int_equal(ids[0], 5);
            assert_int_equal(ids[1], 3);
        }
        tokenizer_free(t);
    }
}

/* A loaded tokenizer is shared read-only: concurrent encodes agree. */
typedef struct enc_job {
    const tokenizer *t;
    const char *text;
    size_t len;
    int32_t *ids;
    int64_t n;
} enc_job;

static void *enc_thread(void *arg) {
    enc_job *j = arg;
    for (int r = 0; r < 4 && j->n >= 0; r++)
        j->n = tokenizer_encode(j->t, j->text, j->len, 1, 1, j->ids, 1 << 16);
    return NULL;
}

static void test_concurrent_encode(void **state) {
    (void)state;
    tokenizer *g = load_shared("vocab/ggml-vocab-gpt-2.gguf", NULL);
    if (!g) { printf("skip: vocab absent\n"); skip(); }
    size_t n = 1 << 15;
    char *text = malloc(n);
    const char *para = "Once upon a time, <|endoftext|> there were 12345 \xe4\xbd\xa0\xe5\xa5\xbd tokens!\n";
    for (size_t i = 0; i < n; i++) text[i] = para[i % strlen(para)];
    int32_t *ref = malloc((1 << 16) * sizeof *ref);
    int64_t nr = tokenizer_encode(g, text, n, 1, 1, ref, 1 << 16);
    assert_true(nr > 0 && nr <= (1 << 16));
    pthread_t th[4];
    enc_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (enc_job){g, text, n, malloc((1 << 16) * sizeof(int32_t)), 0};
        assert_int_equal(pthread_create(&th[i], NULL, enc_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].n, nr);
        assert_memory_equal(jobs[i].ids, ref, (size_t)nr * sizeof *ref);
        free(jobs[i].ids);
    }
    free(ref);
    free(text);
    tokenizer_free(g);
}

/* ---- differential: the merge loops against the textbook algorithm ------- */

/* Naive merging straight from the definitions: repeatedly merge the adjacent
 * pair with the best key (SPM: highest score of the concatenation; BPE: lowest
 * merge rank), leftmost on ties. Symbols are byte ranges of w. */
typedef struct nsym { int off, n; } nsym;

static int naive_merge(const tokenizer *t, const char *w, int n, const float *scores, json_t *ranks,
                       int32_t *out) {
    nsym s[256];
    int ns = 0;
    for (int off = 0; off < n;) {
        unsigned char c = (unsigned char)w[off];
        int l = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        if (l > n - off) l = n - off;
        s[ns].off = off;
        s[ns].n = l;
        ns++;
        off += l;
    }
    for (;;) {
        int best = -1;
        double bkey = 0;
        for (int i = 0; i + 1 < ns; i++) {
            double key;
            if (scores) {
                int32_t id = tokenizer_find(t, w + s[i].off, (size_t)(s[i].n + s[i + 1].n));
                if (id < 0) continue;
                key = -scores[id];
            } else {
                char k[512];
                snprintf(k, sizeof k, "%.*s %.*s", s[i].n, w + s[i].off, s[i + 1].n, w + s[i + 1].off);
                json_t *r = json_object_get(ranks, k);
                if (!r || tokenizer_find(t, w + s[i].off, (size_t)(s[i].n + s[i + 1].n)) < 0) continue;
                key = (double)json_integer_value(r);
            }
            if (best < 0 || key < bkey) { best = i; bkey = key; }
        }
        if (best < 0) break;
        s[best].n += s[best + 1].n;
        memmove(s + best + 1, s + best + 2, (size_t)(ns - best - 2) * sizeof *s);
        ns--;
    }
    for (int i = 0; i < ns; i++) out[i] = tokenizer_find(t, w + s[i].off, (size_t)s[i].n);
    return ns;
}

static void test_merges_match_naive(void **state) {
    (void)state;
    char path[1024], err[256];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", shared_dir());
    gguf_file *fs = NULL, *fg = NULL;
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", shared_dir());
    if (gguf_open(path, &fs, err, sizeof err) != 0) { printf("skip: %s\n", err); skip(); }
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-gpt-2.gguf", shared_dir());
    if (gguf_open(path, &fg, err, sizeof err) != 0) { gguf_close(fs); printf("skip: %s\n", err); skip(); }
    tokenizer *ts = NULL, *tg = NULL;
    assert_int_equal(tokenizer_load(fs, &ts, err, sizeof err), 0);
    assert_int_equal(tokenizer_load(fg, &tg, err, sizeof err), 0);
    const gguf_kv *sc = gguf_find(fs, "tokenizer.ggml.scores");
    assert_non_null(sc);
    float *scores = malloc(sc->arr_n * sizeof *scores);
    for (uint64_t i = 0; i < sc->arr_n; i++) scores[i] = (float)gguf_arr_f64(sc, i);
    const gguf_kv *mg = gguf_find(fg, "tokenizer.ggml.merges");
    assert_non_null(mg);
    json_t *ranks = json_object();
    for (uint64_t i = 0; i < mg->arr_n; i++) {
        char k[512];
        snprintf(k, sizeof k, "%.*s", (int)mg->arr_strs[i].len, mg->arr_strs[i].ptr);
        if (!json_object_get(ranks, k)) json_object_set_new(ranks, k, json_integer((json_int_t)i));
    }

    uint64_t x = 0x2545F4914F6CDD1Dull;
    const char *alpha = "aeinorst th";
    int checked = 0;
    for (int r = 0; r < 300; r++) {
        char w[64], esc[256];
        int n = 1 + (int)(x % 40);
        for (int i = 0; i < n; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            w[i] = alpha[x % 11];
        }
        int32_t want[256], got[256];
        /* SPM: the escaped text of " " + w as one fragment */
        int k = 0;
        esc[k++] = (char)0xE2; esc[k++] = (char)0x96; esc[k++] = (char)0x81;
        for (int i = 0; i < n; i++) {
            if (w[i] == ' ') { esc[k++] = (char)0xE2; esc[k++] = (char)0x96; esc[k++] = (char)0x81; }
            else esc[k++] = w[i];
        }
        int nw = naive_merge(ts, esc, k, scores, NULL, want);
        int64_t ng = tokenizer_encode(ts, w, (size_t)n, 0, 0, got, 256);
        assert_int_equal(ng, nw);
        assert_memory_equal(got, want, (size_t)nw * sizeof *got);
        /* BPE: one pre-token " " + letters (no spaces inside) */
        k = 0;
        esc[k++] = (char)0xC4; esc[k++] = (char)0xA0; /* U+0120 = byte-level space */
        char plain[64];
        int np = 0;
        plain[np++] = ' ';
        for (int i = 0; i < n; i++) if (w[i] != ' ') { esc[k++] = w[i]; plain[np++] = w[i]; }
        if (np < 2) continue;
        nw = naive_merge(tg, esc, k, NULL, ranks, want);
        ng = tokenizer_encode(tg, plain, (size_t)np, 0, 0, got, 256);
        assert_int_equal(ng, nw);
        assert_memory_equal(got, want, (size_t)nw * sizeof *got);
        checked++;
    }
    assert_true(checked > 200);
    json_decref(ranks);
    free(scores);
    tokenizer_free(ts);
    tokenizer_free(tg);
    gguf_close(fs);
    gguf_close(fg);
}

/* ---- round trips and streaming ------------------------------------------ */

static const char *const samples[] = {
    "Hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "emoji \xf0\x9f\xa6\x99 llama \xf0\x9f\x98\x80!",
    "CJK \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c and \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4",
    "accents: \xc3\xa9t\xc3\xa9, na\xc3\xafve, \xc3\x85ngstr\xc3\xb6m",
    "code: for (int i = 0; i < 10; i++) { x += 1234567; }",
    "'s 't 're 've 'm 'll 'd I'm can't",
    "<s> </s> <|endoftext|> <unk>",
};

static void roundtrip(const tokenizer *t, const char *s, size_t n) {
    int32_t ids[4096];
    char buf[8192];
    for (int add = 0; add <= 1; add++) {
        int64_t k = enc(t, s, n, add, 0, ids, 4096);
        int64_t m = tokenizer_decode(t, ids, k, 0, buf, sizeof buf);
        if (m != (int64_t)n || memcmp(buf, s, n) != 0)
            fail_msg("round trip of '%.*s' gave '%.*s'", (int)n, s, (int)m, buf);
    }
}

static void test_roundtrip(void **state) {
    (void)state;
    const char *names[] = {"llama-spm", "phi-3", "gpt-2", "starcoder", "mpt", "refact"};
    int any = 0;
    for (size_t v = 0; v < 6; v++) {
        char rel[128];
        snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", names[v]);
        tokenizer *t = load_shared(rel, NULL);
        if (!t) continue;
        any = 1;
        for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
            roundtrip(t, samples[i], strlen(samples[i]));
        /* SPM byte fallback keeps even invalid UTF-8 (a bad lead byte right
         * before a space swallows the escaped U+2581, as in llama.cpp, so
         * the bad bytes here are followed by letters) */
        if (tokenizer_kind(t) == TOK_SPM) {
            const char bad[] = "ok\xff\xfe" "end \xe2\x82xy \x80z end";
            roundtrip(t, bad, sizeof bad - 1);
        }
        tokenizer_free(t);
    }
    if (!any) { printf("skip: vocab files absent\n"); skip(); }
}

static void test_invalid_utf8_bpe(void **state) {
    (void)state;
    tokenizer *g = load_shared("vocab/ggml-vocab-gpt-2.gguf", NULL);
    if (!g) { printf("skip: vocab absent\n"); skip(); }
    /* invalid bytes become U+FFFD, as llama.cpp does */
    const char bad[] = "a\xff" "b";
    int32_t ids[32];
    int64_t n = enc(g, bad, 3, 0, 0, ids, 32);
    char buf[64];
    int64_t m = tokenizer_decode(g, ids, n, 0, buf, sizeof buf);
    assert_int_equal(m, 5);
    assert_memory_equal(buf, "a\xef\xbf\xbd" "b", 5);
    /* an overlong form reads as its code point: C1 81 is 'A' */
    int32_t ov[8], plain[8];
    int64_t no = enc(g, "x\xc1\x81", 3, 0, 0, ov, 8);
    int64_t np = enc(g, "xA", 2, 0, 0, plain, 8);
    assert_int_equal(no, np);
    assert_memory_equal(ov, plain, (size_t)np * sizeof *ov);
    /* random garbage never crashes */
    uint64_t x = 88172645463325252ull;
    char junk[512];
    int32_t big[2048];
    for (int r = 0; r < 50; r++) {
        for (size_t i = 0; i < sizeof junk; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            junk[i] = (char)(x >> 24);
        }
        int64_t k = tokenizer_encode(g, junk, sizeof junk, r & 1, r & 2, big, 2048);
        assert_true(k >= 0 && k <= 2048);
        char out[8192];
        tokenizer_decode(g, big, k, 1, out, sizeof out);
    }
    tokenizer_free(g);
}

/* An SPM vocabulary of <unk> <s> </s> "\u2581a" and the 256 byte tokens. */
static tokenizer *tiny_spm_with_bytes(void) {
    static char names[256][8];
    const char *toks[260];
    int32_t types[260];
    float scores[260] = {0};
    toks[0] = "<unk>"; toks[1] = "<s>"; toks[2] = "</s>"; toks[3] = "\xe2\x96\x81" "a";
    types[0] = 2; types[1] = 3; types[2] = 3; types[3] = 1;
    for (int b = 0; b < 256; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        toks[4 + b] = names[b];
        types[4 + b] = 6;
    }
    gguf_writer *w = gguf_writer_create();
    gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 260);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", types, 260);
    gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", scores, 260);
    snprintf(tmp_path, sizeof tmp_path, "/tmp/qkvd-test-tok-%d.gguf", (int)getpid());
    char err[256];
    assert_int_equal(gguf_writer_write(w, tmp_path, err, sizeof err), 0);
    gguf_writer_free(w);
    tokenizer *t = NULL;
    assert_int_equal(load_tmp(&t, err, sizeof err), 0);
    return t;
}

static void test_stream_split_character(void **state) {
    (void)state;
    tokenizer *s = load_shared("vocab/ggml-vocab-llama-spm.gguf", NULL);
    if (!s) s = tiny_spm_with_bytes(); /* the same checks without ../shared */
    /* U+1F999 as four byte tokens: nothing comes out until the last one. */
    int32_t ids[6];
    ids[0] = tokenizer_bos(s);
    ids[1] = tokenizer_find(s, "\xe2\x96\x81" "a", 4); /* " a" */
    const char *hx[] = {"<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"};
    for (int i = 0; i < 4; i++) {
        ids[2 + i] = tokenizer_find(s, hx[i], 6);
        assert_true(ids[2 + i] >= 0);
        assert_int_equal(tokenizer_attr(s, ids[2 + i]), TOK_ATTR_BYTE);
    }
    assert_true(ids[1] >= 0);
    tok_stream st;
    tok_stream_init(&st, s, 1);
    char out[64];
    assert_int_equal(tok_stream_push(&st, s, ids[0], 0, out, sizeof out), 0);
    /* the leading space of the first piece is dropped */
    assert_int_equal(tok_stream_push(&st, s, ids[1], 0, out, sizeof out), 1);
    assert_int_equal(out[0], 'a');
    for (int i = 2; i < 5; i++) assert_int_equal(tok_stream_push(&st, s, ids[i], 0, out, sizeof out), 0);
    assert_int_equal(tok_stream_push(&st, s, ids[5], 0, out, sizeof out), 4);
    assert_memory_equal(out, "\xf0\x9f\xa6\x99", 4);
    assert_int_equal(tok_stream_flush(&st, out, sizeof out), 0);
    /* the whole-sequence decoder agrees */
    char buf[64];
    int64_t m = tokenizer_decode(s, ids, 6, 0, buf, sizeof buf);
    assert_int_equal(m, 5);
    assert_memory_equal(buf, "a\xf0\x9f\xa6\x99", 5);

    /* an incomplete tail is flushed as U+FFFD; a stray byte too */
    tok_stream_init(&st, s, 0);
    assert_int_equal(tok_stream_push(&st, s, ids[2], 0, out, sizeof out), 0);
    assert_int_equal(tok_stream_push(&st, s, ids[3], 0, out, sizeof out), 0);
    assert_int_equal(tok_stream_flush(&st, out, sizeof out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    assert_int_equal(tok_stream_push(&st, s, ids[4], 0, out, sizeof out), 3);
    assert_memory_equal(out, "\xef\xbf\xbd", 3);
    /* incomplete lead followed by ASCII: replacement, then the letter */
    assert_int_equal(tok_stream_push(&st, s, ids[2], 0, out, sizeof out), 0);
    assert_int_equal(tok_stream_push(&st, s, ids[1], 0, out, sizeof out), 5);
    assert_memory_equal(out, "\xef\xbf\xbd a", 5);
    tokenizer_free(s);
}

/* ---- large input (figures printed for information) ---------------------- */

static void test_large_input(void **state) {
    (void)state;
    double load_ms = 0;
    tokenizer *g = load_shared("vocab/ggml-vocab-gpt-2.gguf", &load_ms);
    if (!g) { printf("skip: vocab absent\n"); skip(); }
    size_t n = 1 << 20;
    char *text = malloc(n);
    const char *para = "The quick brown fox jumps over the lazy dog; it's 1234 times faster! "
                       "\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80 naïve café\n";
    size_t pl = strlen(para);
    for (size_t i = 0; i < n; i++) text[i] = para[i % pl];
    double t0 = now_s();
    int64_t k = tokenizer_encode(g, text, n, 0, 0, NULL, 0);
    double enc_s = now_s() - t0;
    printf("  gpt-2: load %.1f ms, encode 1 MiB in %.3f s CPU (%lld tokens)\n", load_ms, enc_s, (long long)k);
    /* Figures are printed, not asserted: speed belongs to benchmarks, and a
     * shared machine makes timed assertions flaky. The behaviour checked is
     * that a 1 MiB input of mixed scripts encodes completely. */
    assert_true(k > 100000);
    tokenizer *s = load_shared("vocab/ggml-vocab-llama-spm.gguf", NULL);
    if (s) {
        t0 = now_s();
        k = tokenizer_encode(s, text, n, 0, 0, NULL, 0);
        enc_s = now_s() - t0;
        printf("  llama-spm: encode 1 MiB in %.3f s CPU (%lld tokens)\n", enc_s, (long long)k);
        assert_true(k > 100000);
        tokenizer_free(s);
    }
    free(text);
    tokenizer_free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_llama_spm),
        cmocka_unit_test(test_vocab_phi_3),
        cmocka_unit_test(test_vocab_gpt_2),
        cmocka_unit_test(test_vocab_starcoder),
        cmocka_unit_test(test_vocab_mpt),
        cmocka_unit_test(test_vocab_refact),
        cmocka_unit_test(test_stories260k_prompts),
        cmocka_unit_test(test_tiny_qwen2_prompts),
        cmocka_unit_test(test_special_parsing),
        cmocka_unit_test(test_special_priority),
        cmocka_unit_test(test_bos_eos),
        cmocka_unit_test(test_unknown_pre_is_error),
        cmocka_unit_test(test_tiny_bpe_and_eos),
        cmocka_unit_test(test_all_pretokenizers_load),
        cmocka_unit_test(test_merges_match_naive),
        cmocka_unit_test(test_ignore_merges),
        cmocka_unit_test(test_concurrent_encode),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_invalid_utf8_bpe),
        cmocka_unit_test(test_stream_split_character),
        cmocka_unit_test(test_large_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
