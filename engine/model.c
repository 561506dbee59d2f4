/* model.c -- architecture table, hyperparameters, tensor binding and checks. */
#include "model.h"
#include "rope.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const model_arch model_archs[] = {
    /* name     rope style        qkv bias */
    {"llama", MODEL_ROPE_NORM, 0},
    {"qwen2", MODEL_ROPE_NEOX, 1},
};

const model_arch *model_arch_find(const char *name) {
    for (size_t i = 0; i < sizeof model_archs / sizeof model_archs[0]; i++)
        if (!strcmp(model_archs[i].name, name)) return &model_archs[i];
    return NULL;
}

/* Weight types the forward pass computes with (both matmul strategies). */
static int model_type_ok(enum qk_type t) {
    switch (t) {
    case QK_F32: case QK_F16: case QK_BF16: case QK_Q8_0: case QK_Q4_0: case QK_Q4_1:
    case QK_Q5_0: case QK_Q5_1: case QK_Q4_K: case QK_Q5_K: case QK_Q6_K: {
        const qk_type_traits *tr = quant_traits(t);
        return tr && tr->supported;
    }
    default:
        return 0;
    }
}

static void model_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void model_free(model *m) {
    if (!m) return;
    for (int32_t i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    gguf_close(m->gguf);
    free(m);
}

/* Read an integer hyperparameter "{arch}.{suffix}"; def < 0 means required. */
static int hp_int(const model *m, const char *suffix, int64_t def, int64_t lo, int64_t hi,
                  int32_t *out, char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch->name, suffix);
    int64_t v;
    if (gguf_get_i64(m->gguf, key, &v) != 0) {
        if (gguf_find(m->gguf, key)) {
            model_errf(err, errlen, "metadata %s is not an integer scalar", key);
            return -EINVAL;
        }
        if (def < 0) {
            model_errf(err, errlen, "metadata %s is missing", key);
            return -EINVAL;
        }
        v = def;
    }
    if (v < lo || v > hi) {
        model_errf(err, errlen, "metadata %s = %lld out of range [%lld, %lld]", key,
                   (long long)v, (long long)lo, (long long)hi);
        return -EINVAL;
    }
    *out = (int32_t)v;
    return 0;
}

static int hp_float(const model *m, const char *suffix, float def, float *out, char *err,
                    size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", m->arch->name, suffix);
    if (gguf_get_f32(m->gguf, key, out) != 0) {
        if (gguf_find(m->gguf, key)) {
            model_errf(err, errlen, "metadata %s is not a number", key);
            return -EINVAL;
        }
        *out = def;
    }
    if (!(*out == *out)) { /* NaN */
        model_errf(err, errlen, "metadata %s is NaN", key);
        return -EINVAL;
    }
    return 0;
}

static int model_read_hparams(model *m, char *err, size_t errlen) {
    model_hparams *hp = &m->hp;
    const int32_t big = 1 << 24;
    int rc;
    if ((rc = hp_int(m, "context_length", -1, 1, 1 << 30, &hp->n_ctx_train, err, errlen)) ||
        (rc = hp_int(m, "embedding_length", -1, 1, big, &hp->n_embd, err, errlen)) ||
        (rc = hp_int(m, "block_count", -1, 1, 4096, &hp->n_layer, err, errlen)) ||
        (rc = hp_int(m, "feed_forward_length", -1, 1, big, &hp->n_ff, err, errlen)) ||
        (rc = hp_int(m, "attention.head_count", -1, 1, 65536, &hp->n_head, err, errlen)) ||
        (rc = hp_int(m, "attention.head_count_kv", hp->n_head, 1, hp->n_head, &hp->n_head_kv,
                     err, errlen)))
        return rc;
    if (hp->n_head % hp->n_head_kv) {
        model_errf(err, errlen, "attention.head_count %d is not a multiple of head_count_kv %d",
                   hp->n_head, hp->n_head_kv);
        return -EINVAL;
    }
    int32_t hd_def = hp->n_embd / hp->n_head, hd_k, hd_v;
    if ((rc = hp_int(m, "attention.key_length", hd_def, 1, 65536, &hd_k, err, errlen)) ||
        (rc = hp_int(m, "attention.value_length", hd_def, 1, 65536, &hd_v, err, errlen)))
        return rc;
    if (hd_k != hd_v) {
        model_errf(err, errlen, "attention.key_length %d != value_length %d is not supported",
                   hd_k, hd_v);
        return -EINVAL;
    }
    if (hd_k % 2) {
        model_errf(err, errlen, "head dimension %d is odd", hd_k);
        return -EINVAL;
    }
    hp->head_dim = hd_k;
    if ((rc = hp_int(m, "rope.dimension_count", hp->head_dim, 2, hp->head_dim, &hp->n_rot, err,
                     errlen)))
        return rc;
    if (hp->n_rot % 2) {
        model_errf(err, errlen, "%s.rope.dimension_count %d is odd", m->arch->name, hp->n_rot);
        return -EINVAL;
    }
    if ((rc = hp_float(m, "rope.freq_base", 10000.0f, &hp->rope_base, err, errlen)) ||
        (rc = hp_float(m, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps, err, errlen)))
        return rc;
    if (hp->rope_base <= 0 || hp->norm_eps <= 0) {
        model_errf(err, errlen, "rope.freq_base (%g) and layer_norm_rms_epsilon (%g) must be > 0",
                   hp->rope_base, hp->norm_eps);
        return -EINVAL;
    }
    /* RoPE scaling (rope.h): none, linear, ntk, dynamic-ntk, yarn. */
    char key[128], type[32] = "";
    hp->rope_scaling = MODEL_ROPE_SCALING_NONE;
    hp->rope_scale_factor = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch->name);
    gguf_get_str(m->gguf, key, type, sizeof type);
    float factor = 0;
    if ((rc = hp_float(m, "rope.scaling.factor", 0.0f, &factor, err, errlen))) return rc;
    if (factor == 0) {
        float lin = 0; /* older files: {arch}.rope.scale_linear */
        if ((rc = hp_float(m, "rope.scale_linear", 0.0f, &lin, err, errlen))) return rc;
        if (lin != 0 && !type[0]) { strcpy(type, "linear"); factor = lin; }
    }
    if ((rc = hp_int(m, "rope.scaling.original_context_length", 0, 0, 1 << 30, &hp->rope_orig_ctx,
                     err, errlen)))
        return rc;
    enum rope_scaling rs = ROPE_SCALING_NONE;
    if (type[0] && rope_scaling_parse(type, &rs)) {
        model_errf(err, errlen,
                   "%s.rope.scaling.type '%s' is not supported (none, linear, ntk, dynamic-ntk, yarn)",
                   m->arch->name, type);
        return -EINVAL;
    }
    if (rs != ROPE_SCALING_NONE && rs != ROPE_SCALING_DYNAMIC_NTK) {
        if (!(factor > 0)) {
            model_errf(err, errlen, "%s.rope.scaling.type is %s but the factor is %g", m->arch->name,
                       rope_scaling_name(rs), factor);
            return -EINVAL;
        }
        hp->rope_scale_factor = factor;
    }
    hp->rope_scaling = (enum model_rope_scaling)rs;
    return 0;
}

static float *model_own(model *m, size_t n) {
    float *p = malloc(n * sizeof(float));
    if (!p) return NULL;
    float **o = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *o);
    if (!o) { free(p); return NULL; }
    m->owned = o;
    m->owned[m->n_owned++] = p;
    return p;
}

/* Find `name` and check its shape is exactly [ne0, ne1] (ne1 = 0: a vector)
 * and its type is computable. Returns 0 (and *out, NULL when absent and
 * optional) or -EINVAL with a message naming the tensor. */
static int model_find(const model *m, const char *name, int64_t ne0, int64_t ne1, int required,
                      const gguf_tensor **out, char *err, size_t errlen) {
    const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
    *out = t;
    if (!t) {
        if (!required) return 0;
        model_errf(err, errlen, "tensor %s is missing", name);
        return -EINVAL;
    }
    if (!model_type_ok(t->type)) {
        model_errf(err, errlen, "tensor %s has type %s (id %u), which qkvd does not support",
                   name, quant_type_name(t->type), (unsigned)t->type);
        return -EINVAL;
    }
    uint64_t want[GGUF_MAX_DIMS] = {(uint64_t)ne0, ne1 ? (uint64_t)ne1 : 1, 1, 1};
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (t->ne[d] == want[d]) continue;
        model_errf(err, errlen,
                   "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%lld, %lld]", name,
                   (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                   (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)ne0,
                   (long long)(ne1 ? ne1 : 1));
        return -EINVAL;
    }
    return 0;
}

static int model_bind_matrix(model *m, const char *name, int64_t n_in, int64_t n_out,
                             int required, mm_matrix *out, char *err, size_t errlen) {
    const gguf_tensor *t;
    int rc = model_find(m, name, n_in, n_out, required, &t, err, errlen);
    if (rc || !t) return rc;
    size_t rb = quant_row_size(t->type, n_in);
    if (rb == 0) {
        model_errf(err, errlen, "tensor %s: row length %lld is not a multiple of the %s block",
                   name, (long long)n_in, quant_type_name(t->type));
        return -EINVAL;
    }
    out->type = t->type;
    out->data = t->data;
    out->n_cols = n_in;
    out->n_rows = n_out;
    out->row_bytes = rb;
    return 0;
}

/* A vector (norm weight, bias) converted to f32. */
static int model_bind_vector(model *m, const char *name, int64_t n, int required,
                             const float **out, char *err, size_t errlen) {
    const gguf_tensor *t;
    *out = NULL;
    int rc = model_find(m, name, n, 0, required, &t, err, errlen);
    if (rc || !t) return rc;
    if (quant_row_size(t->type, n) == 0) {
        model_errf(err, errlen, "tensor %s: length %lld does not fit type %s", name,
                   (long long)n, quant_type_name(t->type));
        return -EINVAL;
    }
    float *p = model_own(m, (size_t)n);
    if (!p) {
        model_errf(err, errlen, "out of memory converting %s", name);
        return -ENOMEM;
    }
    quant_dequantize_row(t->type, t->data, p, n);
    *out = p;
    return 0;
}

static int model_bind(model *m, char *err, size_t errlen) {
    model_hparams *hp = &m->hp;
    const gguf_tensor *te = gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!te) {
        model_errf(err, errlen, "tensor token_embd.weight is missing");
        return -EINVAL;
    }
    if (te->ne[1] < 1 || te->ne[1] > (1u << 24)) {
        model_errf(err, errlen, "tensor token_embd.weight has a bad vocabulary size %llu",
                   (unsigned long long)te->ne[1]);
        return -EINVAL;
    }
    hp->n_vocab = (int32_t)te->ne[1];
    int64_t E = hp->n_embd, V = hp->n_vocab, F = hp->n_ff;
    int64_t QD = (int64_t)hp->n_head * hp->head_dim, KD = (int64_t)hp->n_head_kv * hp->head_dim;
    int rc;
    if ((rc = model_bind_matrix(m, "token_embd.weight", E, V, 1, &m->tok_embd, err, errlen)) ||
        (rc = model_bind_vector(m, "output_norm.weight", E, 1, &m->output_norm, err, errlen)) ||
        (rc = model_bind_matrix(m, "output.weight", E, V, 0, &m->output, err, errlen)))
        return rc;
    m->tok_embd_t = te;
    if (!m->output.data) {
        m->output = m->tok_embd;
        m->tied_output = 1;
    }
    if ((rc = model_bind_vector(m, "rope_freqs.weight", hp->n_rot / 2, 0, &m->rope_freqs, err,
                                errlen)))
        return rc;
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        model_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int bias = m->arch->qkv_bias;
    for (int32_t il = 0; il < hp->n_layer; il++) {
        model_layer *L = &m->layers[il];
        char n[14][64];
        static const char *suffix[] = {"attn_norm.weight", "attn_q.weight", "attn_k.weight",
                                       "attn_v.weight", "attn_q.bias", "attn_k.bias",
                                       "attn_v.bias", "attn_output.weight", "ffn_norm.weight",
                                       "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"};
        for (int i = 0; i < 12; i++) snprintf(n[i], sizeof n[i], "blk.%d.%s", il, suffix[i]);
        if ((rc = model_bind_vector(m, n[0], E, 1, &L->attn_norm, err, errlen)) ||
            (rc = model_bind_matrix(m, n[1], E, QD, 1, &L->wq, err, errlen)) ||
            (rc = model_bind_matrix(m, n[2], E, KD, 1, &L->wk, err, errlen)) ||
            (rc = model_bind_matrix(m, n[3], E, KD, 1, &L->wv, err, errlen)) ||
            (rc = model_bind_vector(m, n[4], QD, bias, &L->bq, err, errlen)) ||
            (rc = model_bind_vector(m, n[5], KD, bias, &L->bk, err, errlen)) ||
            (rc = model_bind_vector(m, n[6], KD, bias, &L->bv, err, errlen)) ||
            (rc = model_bind_matrix(m, n[7], QD, E, 1, &L->wo, err, errlen)) ||
            (rc = model_bind_vector(m, n[8], E, 1, &L->ffn_norm, err, errlen)) ||
            (rc = model_bind_matrix(m, n[9], E, F, 1, &L->gate, err, errlen)) ||
            (rc = model_bind_matrix(m, n[10], E, F, 1, &L->up, err, errlen)) ||
            (rc = model_bind_matrix(m, n[11], F, E, 1, &L->down, err, errlen)))
            return rc;
    }
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const gguf_tensor *t = &m->gguf->tensors[i];
        m->weight_bytes += t->size;
        m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return 0;
}

int model_load_gguf(gguf_file *f, model **out, char *err, size_t errlen) {
    *out = NULL;
    quant_init();
    model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        model_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    m->gguf = f;
    char arch[64] = "";
    if (gguf_get_str(f, "general.architecture", arch, sizeof arch) != 0) {
        model_errf(err, errlen, "metadata general.architecture is missing");
        model_free(m);
        return -EINVAL;
    }
    m->arch = model_arch_find(arch);
    if (!m->arch) {
        model_errf(err, errlen, "unknown architecture '%s' (supported: llama, qwen2)", arch);
        model_free(m);
        return -EINVAL;
    }
    int rc = model_read_hparams(m, err, errlen);
    if (!rc) rc = model_bind(m, err, errlen);
    if (rc) {
        model_free(m);
        return rc;
    }
    /* Decode streams every weight once per token: ask the kernel to start
     * reading the file now rather than fault page by page. */
    if (f->map && f->map_size) madvise(f->map, f->map_size, MADV_WILLNEED);
    *out = m;
    return 0;
}

int model_load(const char *path, model **out, char *err, size_t errlen) {
    *out = NULL;
    gguf_file *f = NULL;
    char gerr[256] = "";
    int rc = gguf_open(path, &f, gerr, sizeof gerr);
    if (rc) {
        /* The reader's message may already name the file. */
        if (strstr(gerr, path)) model_errf(err, errlen, "%s", gerr);
        else model_errf(err, errlen, "%s: %s", path, gerr);
        return rc < 0 ? rc : -EINVAL;
    }
    char merr[256] = "";
    rc = model_load_gguf(f, out, merr, sizeof merr);
    if (rc) model_errf(err, errlen, "%s: %s", path, merr);
    return rc;
}

const char *model_weight_type_name(const model *m) {
    static const struct { int ftype; const char *name; } ftypes[] = {
        {0, "f32"}, {1, "f16"}, {2, "q4_0"}, {3, "q4_1"}, {7, "q8_0"}, {8, "q5_0"},
        {9, "q5_1"}, {10, "q2_k"}, {11, "q3_k_s"}, {12, "q3_k_m"}, {13, "q3_k_l"},
        {14, "q4_k_s"}, {15, "q4_k_m"}, {16, "q5_k_s"}, {17, "q5_k_m"}, {18, "q6_k"},
        {32, "bf16"},
    };
    uint32_t ft;
    if (gguf_get_u32(m->gguf, "general.file_type", &ft) == 0)
        for (size_t i = 0; i < sizeof ftypes / sizeof ftypes[0]; i++)
            if ((uint32_t)ftypes[i].ftype == ft) return ftypes[i].name;
    uint64_t bytes[QK_TYPE_MAX] = {0};
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const gguf_tensor *t = &m->gguf->tensors[i];
        if (t->n_dims >= 2 && (unsigned)t->type < QK_TYPE_MAX) bytes[t->type] += t->size;
    }
    int best = 0;
    for (int t = 1; t < QK_TYPE_MAX; t++)
        if (bytes[t] > bytes[best]) best = t;
    return quant_type_name((uint32_t)best);
}
