/* cli_make_model.c -- `qkvd make-model`: write a llama or qwen2 GGUF of any
 * shape and weight type with deterministic RANDOM weights, for tests,
 * benchmarks and demos.
 *
 * Tensor names, shapes and metadata keys are the ones llama.cpp writes (see
 * the GGUFs in ../shared/models). Weights are generated row by row from a seeded
 * counter-based PRNG (each row's stream depends only on --seed, the tensor
 * name and the row index), so output is identical for any thread count.
 * Tensors are produced at write time (gguf_writer_add_tensor_fill) and rows
 * are quantised in parallel, so a 1B-parameter model never sits in memory
 * whole.
 *
 * The tokenizer is either copied from another GGUF (--vocab-from: every
 * tokenizer.* key verbatim) or learned as a byte-level BPE from the text in
 * the qkvd source tree (engine/bpe_train.c). */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bpe_train.h"
#include "gguf.h"
#include "quant.h"

#define GPT2_VOCAB_SIZE 50257

/* ---- options ---------------------------------------------------------- */

/* The --type names and what llama.cpp calls the resulting file type
 * (general.file_type, llama_ftype). Plain K types have no exact llama.cpp
 * ftype: q4_k/q5_k use the _S ids, the nearest. */
typedef struct type_choice {
    const char *name;
    enum qk_type base;   /* most matrices */
    enum qk_type high;   /* mixes: output, tied token_embd, some attn_v/ffn_down */
    int mix;             /* 1 for the _m mixes */
    uint32_t ftype;
} type_choice;

static const type_choice type_choices[] = {
    { "f32",    QK_F32,  QK_F32,  0, 0 },
    { "f16",    QK_F16,  QK_F16,  0, 1 },
    { "bf16",   QK_BF16, QK_BF16, 0, 32 },
    { "q8_0",   QK_Q8_0, QK_Q8_0, 0, 7 },
    { "q4_0",   QK_Q4_0, QK_Q4_0, 0, 2 },
    { "q4_1",   QK_Q4_1, QK_Q4_1, 0, 3 },
    { "q5_0",   QK_Q5_0, QK_Q5_0, 0, 8 },
    { "q5_1",   QK_Q5_1, QK_Q5_1, 0, 9 },
    { "q4_k",   QK_Q4_K, QK_Q4_K, 0, 14 },
    { "q5_k",   QK_Q5_K, QK_Q5_K, 0, 16 },
    { "q6_k",   QK_Q6_K, QK_Q6_K, 0, 18 },
    { "q4_k_m", QK_Q4_K, QK_Q6_K, 1, 15 },
    { "q5_k_m", QK_Q5_K, QK_Q6_K, 1, 17 },
};

typedef struct mm_opts {
    const char *out, *arch, *type_name, *vocab_from, *corpus, *preset, *name;
    int64_t dim, layers, heads, kv_heads, ffn, ctx, vocab;
    double rope_base, eps;
    uint64_t seed;
    int tied, threads, quiet;
    int vocab_explicit; /* --vocab-size given on the command line */
} mm_opts;

static void usage(FILE *to)
{
    fprintf(to,
"usage: qkvd make-model -o FILE [options]\n"
"Write a GGUF model with deterministic RANDOM weights (for tests and benchmarks).\n"
"  -o FILE             output path (written atomically)\n"
"  --preset 135m|1b    135m: dim 576, 30 layers, 9/3 heads, ffn 1536, vocab 50257\n"
"                      1b:   dim 2048, 16 layers, 32/8 heads, ffn 8192, vocab 50257\n"
"                      (explicit flags override preset values; without\n"
"                      --vocab-from/--vocab-size a preset copies the GPT-2\n"
"                      vocabulary from $QKVD_SHARED or ../shared/vocab when\n"
"                      present, else learns one of 50257 tokens)\n"
"  --arch llama|qwen2  architecture (default llama; qwen2 adds q/k/v biases)\n"
"  --dim N --layers N --heads N --kv-heads N --ffn N\n"
"  --ctx N             context_length (default 2048)\n"
"  --vocab-size N      learn a byte-level BPE vocabulary of N tokens from the\n"
"                      qkvd source text (see --corpus)\n"
"  --vocab-from FILE   copy every tokenizer.* key from FILE (vocab size follows)\n"
"  --corpus DIR        source tree to learn the vocabulary from (default: the\n"
"                      qkvd tree holding this binary, $QKVD_ROOT, or .)\n"
"  --rope-base F       rope.freq_base (default llama 10000, qwen2 1000000)\n"
"  --eps F             attention.layer_norm_rms_epsilon (default 1e-5, qwen2 1e-6)\n"
"  --type T            f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k\n"
"                      q4_k_m q5_k_m (default f16)\n"
"  --seed N            PRNG seed (default 1)\n"
"  --tied              no output.weight (the output reuses token_embd)\n"
"  --name S            general.name\n"
"  --threads N         quantisation threads (default: online CPUs)\n"
"  -q                  print only the summary line\n");
}

static int parse_i64(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "make-model: %s needs an integer in [%lld, %lld], got '%s'\n", flag,
                (long long)lo, (long long)hi, v ? v : "(nothing)");
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_f64(const char *flag, const char *v, double *out)
{
    char *end;
    double x = v ? strtod(v, &end) : 0;
    if (!v || *end || end == v || !(x > 0) || !isfinite(x)) {
        fprintf(stderr, "make-model: %s needs a positive number, got '%s'\n", flag, v ? v : "(nothing)");
        return -1;
    }
    *out = x;
    return 0;
}

/* ---- tensor type rules ------------------------------------------------ */

/* llama.cpp's use_more_bits(): the first and last eighth of the layers and
 * every third layer in between get more bits in the _M mixes. */
static int use_more_bits(int64_t layer, int64_t n_layers)
{
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

/* A row length the type cannot hold falls back the way llama.cpp does:
 * Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and anything whose row is not a
 * multiple of 32 -> F16. */
static enum qk_type fit_type(enum qk_type t, int64_t ne0)
{
    const qk_type_traits *tr = quant_traits((uint32_t)t);
    if (ne0 % tr->block_size == 0) return t;
    switch (t) {
    case QK_Q4_K: t = QK_Q5_0; break;
    case QK_Q5_K: t = QK_Q5_1; break;
    case QK_Q6_K: t = QK_Q8_0; break;
    default: break;
    }
    tr = quant_traits((uint32_t)t);
    return ne0 % tr->block_size == 0 ? t : QK_F16;
}

enum role { R_EMBD, R_OUTPUT, R_NORM, R_BIAS, R_ATTN_V, R_FFN_DOWN, R_MATRIX };

/* The type of a weight: norms and biases are F32; the _m mixes follow
 * llama.cpp's Q4_K_M/Q5_K_M rules (output -> Q6_K; token_embd -> base type,
 * or Q6_K when tied since it is then the output too; attn_v and ffn_down ->
 * Q6_K in use_more_bits layers). Plain types use the one type everywhere
 * (llama.cpp would also put output.weight at Q6_K for the quantised ones;
 * keeping it uniform makes these files exercise one kernel). */
static enum qk_type tensor_type(const type_choice *tc, enum role role, int64_t layer,
                                int64_t n_layers, int tied, int64_t ne0)
{
    enum qk_type t = tc->base;
    switch (role) {
    case R_NORM: case R_BIAS: return QK_F32;
    case R_OUTPUT: if (tc->mix) t = tc->high; break;
    case R_EMBD: if (tc->mix && tied) t = tc->high; break;
    case R_ATTN_V: case R_FFN_DOWN: if (tc->mix && use_more_bits(layer, n_layers)) t = tc->high; break;
    default: break;
    }
    return fit_type(t, ne0);
}

/* ---- random weights --------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(const char *s, uint64_t seed)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++) { h ^= (uint8_t)*s; h *= 1099511628211ull; }
    uint64_t st = h ^ (seed * 0x9e3779b97f4a7c15ull);
    return splitmix64(&st);
}

typedef struct tensor_spec {
    char name[96];
    enum role role;
    enum qk_type type;
    int64_t ne0, ne1;
    uint64_t seed;
    float stddev;
    int threads;
} tensor_spec;

/* Row r of a tensor: approximately normal values (Irwin-Hall sum of four
 * 16-bit uniforms, rescaled to unit variance) times stddev. Cheap enough for
 * a billion values, and bounded at +-3.5 sigma, which quantisers like. */
static void gen_row(const tensor_spec *ts, int64_t r, float *x)
{
    uint64_t st = ts->seed ^ ((uint64_t)r * 0xd1b54a32d192ed03ull);
    const float scale = ts->stddev * 1.7320508f / 65536.0f; /* sqrt(3) / 2^16 */
    for (int64_t i = 0; i < ts->ne0; i++) {
        uint64_t z = splitmix64(&st);
        uint32_t s = (uint32_t)(z & 0xffff) + (uint32_t)((z >> 16) & 0xffff) +
                     (uint32_t)((z >> 32) & 0xffff) + (uint32_t)(z >> 48);
        x[i] = ((float)s - 131070.0f) * scale;
    }
}

/* Standard deviation of a tensor's weights. A flat 0.02 everywhere (a
 * trained model's typical scale) makes a random model degenerate: uniform
 * attention averages the context, the tiny embedding barely matters, and
 * greedy decoding loops on one token ("qk qk qk ..."). Scaling matrices by
 * 2/sqrt(fan_in) (0.044 at dim 2048, 0.083 at 576) and giving the embedding
 * std 0.3 keeps activations O(1), lets attention and the FFN depend on the
 * current token, and gives varied greedy text for tied and untied outputs
 * alike (checked with `qkvd run` on llama/qwen2, 4 to 30 layers). */
static float role_std(enum role r, int64_t fan_in)
{
    switch (r) {
    case R_EMBD: return 0.3f;
    case R_BIAS: return 0.02f;
    case R_NORM: return 0.0f; /* norms are ones, not random */
    default: return 2.0f / sqrtf((float)fan_in);
    }
}

typedef struct fill_job {
    const tensor_spec *ts;
    uint8_t *dst;
    size_t row_bytes;
    int64_t r0, r1;
    int failed;
} fill_job;

static void *fill_worker(void *arg)
{
    fill_job *j = arg;
    float *x = malloc((size_t)j->ts->ne0 * sizeof *x);
    if (!x) { j->failed = 1; return NULL; }
    for (int64_t r = j->r0; r < j->r1; r++) {
        gen_row(j->ts, r, x);
        if (quant_quantize_row(j->ts->type, x, j->dst + (size_t)r * j->row_bytes, j->ts->ne0) != j->row_bytes) {
            j->failed = 1;
            break;
        }
    }
    free(x);
    return NULL;
}

/* gguf_tensor_fill_fn: norms are ones; everything else random rows,
 * quantised in parallel over contiguous row ranges. */
static int fill_tensor(void *ctx, void *dst, size_t size, char *err, size_t errlen)
{
    const tensor_spec *ts = ctx;
    if (ts->role == R_NORM) {
        float *x = dst;
        for (int64_t i = 0; i < ts->ne0; i++) x[i] = 1.0f;
        return 0;
    }
    size_t row_bytes = quant_row_size(ts->type, ts->ne0);
    if (row_bytes == 0 || row_bytes * (size_t)ts->ne1 != size) {
        snprintf(err, errlen, "internal size mismatch for type %s", quant_type_name(ts->type));
        return -1;
    }
    int nt = ts->threads;
    if (nt > ts->ne1) nt = (int)ts->ne1;
    if (nt < 1) nt = 1;
    fill_job jobs[64];
    pthread_t tid[64];
    int started[64] = {0};
    for (int i = 0; i < nt; i++) {
        jobs[i] = (fill_job){ ts, dst, row_bytes, ts->ne1 * i / nt, ts->ne1 * (i + 1) / nt, 0 };
        if (i > 0 && pthread_create(&tid[i], NULL, fill_worker, &jobs[i]) == 0) started[i] = 1;
    }
    fill_worker(&jobs[0]);
    for (int i = 1; i < nt; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else fill_worker(&jobs[i]); /* thread creation failed: do it here */
    }
    for (int i = 0; i < nt; i++)
        if (jobs[i].failed) {
            snprintf(err, errlen, "quantising to %s failed (out of memory or unsupported type)",
                     quant_type_name(ts->type));
            return -1;
        }
    return 0;
}

/* ---- vocabulary ------------------------------------------------------- */

typedef struct text_buf { char *p; size_t n, cap; } text_buf;

static int has_ext(const char *name, const char *const *exts)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (; *exts; exts++) if (!strcmp(dot, *exts)) return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Append every file of dir/sub with one of exts, in name order (so the
 * corpus, and the vocabulary, do not depend on readdir order). */
static void corpus_add_dir(text_buf *t, const char *dir, const char *sub, const char *const *exts,
                           size_t limit, int *n_files)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    DIR *d = opendir(path);
    if (!d) return;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !has_ext(e->d_name, exts)) continue;
        if (n == cap) {
            char **nn = realloc(names, (cap ? 2 * cap : 64) * sizeof *names);
            if (!nn) break; /* read what we have */
            names = nn;
            cap = cap ? 2 * cap : 64;
        }
        char *dup = strdup(e->d_name);
        if (!dup) break;
        names[n++] = dup;
    }
    closedir(d);
    if (names) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char fp[PATH_MAX * 2];
        snprintf(fp, sizeof fp, "%s/%s", path, names[i]);
        FILE *f = fopen(fp, "rb");
        free(names[i]);
        if (!f) continue;
        char buf[65536];
        size_t got;
        while (t->n < limit && (got = fread(buf, 1, sizeof buf, f)) > 0) {
            if (t->n + got > t->cap) {
                t->cap = (t->n + got) * 2;
                char *np = realloc(t->p, t->cap);
                if (!np) { fclose(f); free(names); return; }
                t->p = np;
            }
            memcpy(t->p + t->n, buf, got);
            t->n += got;
        }
        fclose(f);
        (*n_files)++;
    }
    free(names);
}

static int is_source_tree(const char *dir)
{
    char p[PATH_MAX + 16];
    struct stat st;
    snprintf(p, sizeof p, "%s/engine", dir);
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The tree to learn from: --corpus, $QKVD_ROOT, the tree this binary was
 * built in (ROOT/build-x/qkvd), or the current directory. */
static void corpus_root(const mm_opts *o, char *out, size_t len)
{
    if (o->corpus) { snprintf(out, len, "%s", o->corpus); return; }
    const char *env = getenv("QKVD_ROOT");
    if (env && *env && is_source_tree(env)) { snprintf(out, len, "%s", env); return; }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash) break;
            *slash = 0;
        }
        if (is_source_tree(exe)) { snprintf(out, len, "%s", exe); return; }
    }
    snprintf(out, len, ".");
}

static int corpus_collect(const mm_opts *o, text_buf *t, char *root, size_t rootlen, int *n_files)
{
    static const char *const docs[] = { ".md", NULL };
    static const char *const src[] = { ".c", ".h", NULL };
    static const char *const scripts[] = { ".sh", ".mjs", ".js", NULL };
    const size_t limit = 8u << 20; /* enough text; keeps training to a second or two */
    corpus_root(o, root, rootlen);
    *n_files = 0;
    corpus_add_dir(t, root, ".", docs, limit, n_files);
    corpus_add_dir(t, root, "docs", docs, limit, n_files);
    corpus_add_dir(t, root, "engine", src, limit, n_files);
    corpus_add_dir(t, root, "server", src, limit, n_files);
    corpus_add_dir(t, root, "tests/unit", src, limit, n_files);
    corpus_add_dir(t, root, "scripts", scripts, limit, n_files);
    return t->n > 0 ? 0 : -1;
}

static void set_learned_vocab(gguf_writer *w, const bpe_vocab *v)
{
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, NULL,
                            (uint64_t)v->n_tokens);
    gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", v->token_types, (uint64_t)v->n_tokens);
    gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v->merges, NULL,
                            (uint64_t)v->n_merges);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->eos_id);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos_id);
}

/* Copy every tokenizer.* key of path; *n_vocab = its token count. */
static int copy_vocab(gguf_writer *w, const char *path, int64_t *n_vocab, char *err, size_t errlen)
{
    gguf_file *f;
    if (gguf_open(path, &f, err, errlen) != 0) return -1;
    const gguf_kv *tok = gguf_find(f, "tokenizer.ggml.tokens");
    if (!tok || tok->type != GGUF_ARRAY || tok->arr_type != GGUF_STRING || tok->arr_n == 0) {
        snprintf(err, errlen, "%.400s: no tokenizer.ggml.tokens string array", path);
        gguf_close(f);
        return -1;
    }
    *n_vocab = (int64_t)tok->arr_n;
    int copied = 0;
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (f->kv[i].key.len > 10 && !memcmp(f->kv[i].key.ptr, "tokenizer.", 10)) {
            gguf_writer_copy_kv(w, &f->kv[i]);
            copied++;
        }
    gguf_close(f);
    return copied;
}

/* ---- main ------------------------------------------------------------- */

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void human_bytes(char *buf, size_t len, double b)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    snprintf(buf, len, i ? "%.2f %s" : "%.0f %s", b, u[i]);
}

static int parse_args(int argc, char **argv, mm_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int used = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 1; }
        else if (!strcmp(a, "-q")) { o->quiet = 1; used = 0; }
        else if (!strcmp(a, "--tied")) { o->tied = 1; used = 0; }
        else if (!v) { fprintf(stderr, "make-model: %s needs a value (or unknown option)\n", a); return -1; }
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->out = v;
        else if (!strcmp(a, "--arch")) o->arch = v;
        else if (!strcmp(a, "--type")) o->type_name = v;
        else if (!strcmp(a, "--vocab-from")) o->vocab_from = v;
        else if (!strcmp(a, "--corpus")) o->corpus = v;
        else if (!strcmp(a, "--preset")) o->preset = v;
        else if (!strcmp(a, "--name")) o->name = v;
        else if (!strcmp(a, "--dim")) { if (parse_i64(a, v, 1, 1 << 16, &o->dim)) return -1; }
        else if (!strcmp(a, "--layers")) { if (parse_i64(a, v, 1, 1024, &o->layers)) return -1; }
        else if (!strcmp(a, "--heads")) { if (parse_i64(a, v, 1, 1024, &o->heads)) return -1; }
        else if (!strcmp(a, "--kv-heads")) { if (parse_i64(a, v, 1, 1024, &o->kv_heads)) return -1; }
        else if (!strcmp(a, "--ffn")) { if (parse_i64(a, v, 1, 1 << 18, &o->ffn)) return -1; }
        else if (!strcmp(a, "--ctx")) { if (parse_i64(a, v, 1, 1 << 24, &o->ctx)) return -1; }
        else if (!strcmp(a, "--vocab-size")) {
            if (parse_i64(a, v, 1, 1 << 22, &o->vocab)) return -1;
            o->vocab_explicit = 1;
        }
        else if (!strcmp(a, "--rope-base")) { if (parse_f64(a, v, &o->rope_base)) return -1; }
        else if (!strcmp(a, "--eps")) { if (parse_f64(a, v, &o->eps)) return -1; }
        else if (!strcmp(a, "--seed")) {
            int64_t s;
            if (parse_i64(a, v, 0, INT64_MAX, &s)) return -1;
            o->seed = (uint64_t)s;
        }
        else if (!strcmp(a, "--threads")) {
            int64_t t;
            if (parse_i64(a, v, 1, 64, &t)) return -1;
            o->threads = (int)t;
        }
        else { fprintf(stderr, "make-model: unknown option '%s' (see --help)\n", a); return -1; }
        i += used;
    }
    return 0;
}

/* Fill unset shape fields from the preset, then from defaults. Returns 0 or -1. */
static int resolve_shape(mm_opts *o)
{
    int64_t pd = 64, pl = 2, ph = 4, pkv = -1, pf = -1, pv = 512;
    if (o->preset) {
        if (!strcmp(o->preset, "135m")) { pd = 576; pl = 30; ph = 9; pkv = 3; pf = 1536; pv = GPT2_VOCAB_SIZE; }
        else if (!strcmp(o->preset, "1b")) { pd = 2048; pl = 16; ph = 32; pkv = 8; pf = 8192; pv = GPT2_VOCAB_SIZE; }
        else { fprintf(stderr, "make-model: unknown preset '%s' (135m or 1b)\n", o->preset); return -1; }
    }
    if (!o->dim) o->dim = pd;
    if (!o->layers) o->layers = pl;
    if (!o->heads) o->heads = ph;
    if (!o->kv_heads) o->kv_heads = pkv > 0 ? pkv : o->heads;
    if (!o->ffn) o->ffn = pf > 0 ? pf : (o->dim * 8 / 3 + 31) / 32 * 32;
    if (!o->vocab) o->vocab = pv;
    if (!o->ctx) o->ctx = 2048;
    if (!o->arch) o->arch = "llama";
    if (strcmp(o->arch, "llama") && strcmp(o->arch, "qwen2")) {
        fprintf(stderr, "make-model: --arch must be llama or qwen2, got '%s'\n", o->arch);
        return -1;
    }
    int qwen = !strcmp(o->arch, "qwen2");
    if (o->rope_base == 0) o->rope_base = qwen ? 1000000.0 : 10000.0;
    if (o->eps == 0) o->eps = qwen ? 1e-6 : 1e-5;
    if (o->dim % o->heads) {
        fprintf(stderr, "make-model: --dim %lld is not a multiple of --heads %lld\n",
                (long long)o->dim, (long long)o->heads);
        return -1;
    }
    if ((o->dim / o->heads) % 2) {
        fprintf(stderr, "make-model: head size %lld (dim/heads) must be even for RoPE\n",
                (long long)(o->dim / o->heads));
        return -1;
    }
    if (o->heads % o->kv_heads) {
        fprintf(stderr, "make-model: --heads %lld is not a multiple of --kv-heads %lld\n",
                (long long)o->heads, (long long)o->kv_heads);
        return -1;
    }
    return 0;
}

int cli_make_model(int argc, char **argv)
{
    mm_opts o;
    memset(&o, 0, sizeof o);
    o.seed = 1;
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc > 0 ? 0 : 2;
    if (!o.out) { fprintf(stderr, "make-model: -o FILE is required\n"); usage(stderr); return 2; }
    if (resolve_shape(&o)) return 2;
    if (!o.type_name) o.type_name = "f16";
    const type_choice *tc = NULL;
    for (size_t i = 0; i < sizeof type_choices / sizeof *type_choices; i++)
        if (!strcasecmp(type_choices[i].name, o.type_name)) tc = &type_choices[i];
    if (!tc) {
        fprintf(stderr, "make-model: unknown --type '%s' (f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 "
                "q4_k q5_k q6_k q4_k_m q5_k_m)\n", o.type_name);
        return 2;
    }
    if (o.threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.threads = n < 1 ? 1 : n > 64 ? 64 : (int)n;
    }
    quant_init();

    /* Presets with GPT-2's vocabulary size take GPT-2's real vocabulary when
     * it is at hand, which is better for benchmarks than a padded one. */
    char vocab_path[PATH_MAX] = "";
    if (o.vocab_from) snprintf(vocab_path, sizeof vocab_path, "%s", o.vocab_from);
    else if (o.preset && o.vocab == GPT2_VOCAB_SIZE && !o.vocab_explicit) {
        const char *sh = getenv("QKVD_SHARED");
        snprintf(vocab_path, sizeof vocab_path, "%s/vocab/ggml-vocab-gpt-2.gguf", sh && *sh ? sh : "../shared");
        if (!file_exists(vocab_path)) vocab_path[0] = 0;
    }

    gguf_writer *w = gguf_writer_create();
    char err[512], vocab_note[PATH_MAX + 128];
    const char *arch = o.arch;
    char key[128], name[160];
    if (o.name) snprintf(name, sizeof name, "%s", o.name);
    else if (o.preset) snprintf(name, sizeof name, "qkvd-random-%s-%s-%s", arch, o.preset, tc->name);
    else snprintf(name, sizeof name, "qkvd-random-%s-d%lld-l%lld-%s", arch, (long long)o.dim,
                  (long long)o.layers, tc->name);

    gguf_writer_set_str(w, "general.architecture", arch);
    gguf_writer_set_str(w, "general.name", name);
#define SETU(suffix, val) do { snprintf(key, sizeof key, "%s." suffix, arch); gguf_writer_set_u32(w, key, (uint32_t)(val)); } while (0)
#define SETF(suffix, val) do { snprintf(key, sizeof key, "%s." suffix, arch); gguf_writer_set_f32(w, key, (float)(val)); } while (0)
    SETU("context_length", o.ctx);
    SETU("embedding_length", o.dim);
    SETU("block_count", o.layers);
    SETU("feed_forward_length", o.ffn);
    SETU("attention.head_count", o.heads);
    SETU("attention.head_count_kv", o.kv_heads);
    SETF("rope.freq_base", o.rope_base);
    SETF("attention.layer_norm_rms_epsilon", o.eps);
    SETU("rope.dimension_count", o.dim / o.heads);
#undef SETU
#undef SETF
    gguf_writer_set_u32(w, "general.file_type", tc->ftype);
    if (tc->base != QK_F32 && tc->base != QK_F16 && tc->base != QK_BF16)
        gguf_writer_set_u32(w, "general.quantization_version", 2);

    int status = 1;
    tensor_spec *specs = NULL;
    if (vocab_path[0]) {
        int64_t nv = 0;
        int copied = copy_vocab(w, vocab_path, &nv, err, sizeof err);
        if (copied < 0) { fprintf(stderr, "make-model: --vocab-from: %s\n", err); goto out; }
        if (o.vocab_explicit && nv != o.vocab) {
            fprintf(stderr, "make-model: --vocab-size %lld conflicts with %s, which has %lld tokens\n",
                    (long long)o.vocab, vocab_path, (long long)nv);
            goto out;
        }
        o.vocab = nv;
        snprintf(vocab_note, sizeof vocab_note, "copied %d tokenizer keys from %s (%lld tokens)",
                 copied, vocab_path, (long long)nv);
    } else {
        text_buf t = {0};
        char root[PATH_MAX];
        int n_files = 0;
        if (corpus_collect(&o, &t, root, sizeof root, &n_files) != 0) {
            fprintf(stderr, "make-model: no text to learn a vocabulary from under '%s' (expected the "
                    "qkvd source tree); pass --corpus DIR or --vocab-from FILE\n", root);
            free(t.p);
            goto out;
        }
        bpe_vocab v;
        clock_t c0 = clock();
        if (bpe_train_learn(t.p, t.n, (int32_t)o.vocab, &v, err, sizeof err) != 0) {
            fprintf(stderr, "make-model: %s\n", err);
            free(t.p);
            goto out;
        }
        set_learned_vocab(w, &v);
        int n = snprintf(vocab_note, sizeof vocab_note,
                 "learned byte-level BPE (gpt2/gpt-2), %lld tokens: %d merges from %zu bytes of %d files "
                 "under %s (%.1fs)", (long long)o.vocab, (int)v.n_merges, t.n, n_files, root,
                 (double)(clock() - c0) / CLOCKS_PER_SEC);
        if (v.n_padding > 0 && n > 0 && (size_t)n < sizeof vocab_note)
            snprintf(vocab_note + n, sizeof vocab_note - (size_t)n,
                     "; the text ran out of pairs, so %d tokens are <|unused_N|> padding", v.n_padding);
        bpe_vocab_free(&v);
        free(t.p);
    }

    /* Tensors, in the order llama.cpp's converter writes them. */
    int qwen = !strcmp(arch, "qwen2");
    int64_t hd = o.dim / o.heads, kvd = hd * o.kv_heads;
    size_t n_specs = 3 + (size_t)o.layers * (qwen ? 12 : 9), ns = 0;
    specs = calloc(n_specs, sizeof *specs);
    if (!specs) { fprintf(stderr, "make-model: out of memory\n"); goto out; }
#define ADD(role_, layer_, ne0_, ne1_, ...) do { \
        tensor_spec *s_ = &specs[ns++]; \
        snprintf(s_->name, sizeof s_->name, __VA_ARGS__); \
        s_->role = role_; s_->ne0 = ne0_; s_->ne1 = ne1_; \
        s_->type = tensor_type(tc, role_, layer_, o.layers, o.tied, ne0_); \
        s_->seed = hash_name(s_->name, o.seed); s_->stddev = role_std(role_, ne0_); s_->threads = o.threads; \
    } while (0)
    ADD(R_EMBD, 0, o.dim, o.vocab, "token_embd.weight");
    for (int64_t l = 0; l < o.layers; l++) {
        ADD(R_NORM, l, o.dim, 1, "blk.%lld.attn_norm.weight", (long long)l);
        ADD(R_MATRIX, l, o.dim, o.dim, "blk.%lld.attn_q.weight", (long long)l);
        ADD(R_MATRIX, l, o.dim, kvd, "blk.%lld.attn_k.weight", (long long)l);
        ADD(R_ATTN_V, l, o.dim, kvd, "blk.%lld.attn_v.weight", (long long)l);
        if (qwen) {
            ADD(R_BIAS, l, o.dim, 1, "blk.%lld.attn_q.bias", (long long)l);
            ADD(R_BIAS, l, kvd, 1, "blk.%lld.attn_k.bias", (long long)l);
            ADD(R_BIAS, l, kvd, 1, "blk.%lld.attn_v.bias", (long long)l);
        }
        ADD(R_MATRIX, l, o.dim, o.dim, "blk.%lld.attn_output.weight", (long long)l);
        ADD(R_NORM, l, o.dim, 1, "blk.%lld.ffn_norm.weight", (long long)l);
        ADD(R_MATRIX, l, o.dim, o.ffn, "blk.%lld.ffn_gate.weight", (long long)l);
        ADD(R_MATRIX, l, o.dim, o.ffn, "blk.%lld.ffn_up.weight", (long long)l);
        ADD(R_FFN_DOWN, l, o.ffn, o.dim, "blk.%lld.ffn_down.weight", (long long)l);
    }
    ADD(R_NORM, 0, o.dim, 1, "output_norm.weight");
    if (!o.tied) ADD(R_OUTPUT, 0, o.dim, o.vocab, "output.weight");
#undef ADD

    uint64_t params = 0, bytes = 0;
    int n_fallback = 0, n_high = 0;
    int per_type[QK_TYPE_MAX] = {0};
    for (size_t i = 0; i < ns; i++) {
        tensor_spec *s = &specs[i];
        uint64_t ne[2] = { (uint64_t)s->ne0, (uint64_t)s->ne1 };
        uint32_t nd = s->role == R_NORM || s->role == R_BIAS ? 1 : 2;
        gguf_writer_add_tensor_fill(w, s->name, s->type, nd, ne, fill_tensor, s);
        params += (uint64_t)s->ne0 * (uint64_t)s->ne1;
        bytes += quant_row_size(s->type, s->ne0) * (uint64_t)s->ne1;
        per_type[s->type]++;
        if (nd == 2) {
            if (s->type != tc->base && s->type != tc->high) n_fallback++;
            else if (s->type != tc->base) n_high++;
        }
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (gguf_writer_write(w, o.out, err, sizeof err) != 0) {
        fprintf(stderr, "make-model: %s\n", err);
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    struct stat st;
    char hb[32], hp[32];
    human_bytes(hb, sizeof hb, stat(o.out, &st) == 0 ? (double)st.st_size : (double)bytes);
    snprintf(hp, sizeof hp, params >= 1000000 ? "%.1fM" : "%.1fK",
             params >= 1000000 ? (double)params / 1e6 : (double)params / 1e3);
    if (!o.quiet) {
        printf("vocabulary: %s\n", vocab_note);
        printf("%s: %s, dim %lld, %lld layers, %lld heads / %lld KV heads (head size %lld), ffn %lld, "
               "vocab %lld, ctx %lld, rope base %g%s\n", o.out, arch, (long long)o.dim,
               (long long)o.layers, (long long)o.heads, (long long)o.kv_heads, (long long)hd,
               (long long)o.ffn, (long long)o.vocab, (long long)o.ctx, o.rope_base,
               o.tied ? ", tied output" : "");
        printf("type %s: %s params, %s, %zu tensors (", tc->name, hp, hb, ns);
        const char *sep = "";
        for (int t = 0; t < QK_TYPE_MAX; t++)
            if (per_type[t]) { printf("%s%d %s", sep, per_type[t], quant_type_name((uint32_t)t)); sep = ", "; }
        printf("), seed %llu, %.1fs with %d threads\n", (unsigned long long)o.seed, secs, o.threads);
        if (n_high)
            printf("  %d matrices at %s by llama.cpp's %s rule (output; attn_v/ffn_down in "
                   "use_more_bits layers; token_embd when tied)\n", n_high, quant_type_name(tc->high),
                   tc->name);
        if (n_fallback)
            printf("  %d matrices whose row length is not a multiple of the %s block size use "
                   "llama.cpp's fallback type (q4_K->q5_0, q5_K->q5_1, q6_K->q8_0, else f16)\n",
                   n_fallback, quant_type_name(tc->base));
        printf("*** NOTE: the weights are RANDOM: this model computes noise, not language. ***\n");
    } else {
        printf("%s: %s %s %s params %s (RANDOM weights)\n", o.out, arch, tc->name, hp, hb);
    }
    status = 0;
out:
    gguf_writer_free(w);
    free(specs);
    return status;
}
