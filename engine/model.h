/* model.h -- a transformer's hyperparameters and weights, bound in place
 * from a GGUF file.
 *
 * Architectures are rows of a table (model.c: model_archs), not copies of
 * code: a row says the RoPE style, which bias tensors exist and the metadata
 * key prefix. model_load validates every hyperparameter and every tensor
 * (presence, type, shape) before anything computes; errors name the key or
 * tensor. Matrices point into the mmapped file (no copy); norm weights and
 * biases are converted to f32 once (they are tiny). */
#ifndef QKVD_MODEL_H
#define QKVD_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include "gguf.h"
#include "matmul.h"

enum model_rope_style {
    MODEL_ROPE_NORM = 0, /* rotate adjacent pairs (2i, 2i+1): llama */
    MODEL_ROPE_NEOX = 1  /* rotate (i, i + n_rot/2): qwen2, gpt-neox */
};

/* Same values as rope.h's enum rope_scaling. */
enum model_rope_scaling {
    MODEL_ROPE_SCALING_NONE = 0,
    MODEL_ROPE_SCALING_LINEAR = 1, /* positions divided by the factor */
    MODEL_ROPE_SCALING_NTK = 2,
    MODEL_ROPE_SCALING_DYNAMIC_NTK = 3,
    MODEL_ROPE_SCALING_YARN = 4
};

typedef struct model_arch {
    const char *name;          /* general.architecture value and key prefix */
    enum model_rope_style rope;
    int qkv_bias;              /* 1: blk.N.attn_{q,k,v}.bias exist (required) */
} model_arch;

typedef struct model_hparams {
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_ff;
    int32_t n_head, n_head_kv, head_dim; /* head_dim = key_length = value_length */
    int32_t n_rot;                       /* rope.dimension_count */
    float rope_base, norm_eps;
    enum model_rope_scaling rope_scaling;
    float rope_scale_factor;             /* 1 when not scaled */
    int32_t rope_orig_ctx;               /* rope.scaling.original_context_length or 0 */
} model_hparams;

typedef struct model_layer {
    const float *attn_norm;        /* [n_embd] */
    mm_matrix wq;                  /* [n_embd] -> [n_head * head_dim] */
    mm_matrix wk, wv;              /* [n_embd] -> [n_head_kv * head_dim] */
    const float *bq, *bk, *bv;     /* biases or NULL */
    mm_matrix wo;                  /* [n_head * head_dim] -> [n_embd] */
    const float *ffn_norm;         /* [n_embd] */
    mm_matrix gate, up;            /* [n_embd] -> [n_ff] */
    mm_matrix down;                /* [n_ff] -> [n_embd] */
} model_layer;

typedef struct model {
    gguf_file *gguf;               /* owned: the mapping the matrices point into */
    const model_arch *arch;
    model_hparams hp;
    const gguf_tensor *tok_embd_t; /* token_embd.weight, rows of n_embd */
    mm_matrix tok_embd;
    const float *output_norm;      /* [n_embd] */
    mm_matrix output;              /* [n_embd] -> [n_vocab]; token_embd when tied */
    int tied_output;
    const float *rope_freqs;       /* [n_rot/2] frequency divisors or NULL */
    model_layer *layers;           /* [n_layer] */
    uint64_t weight_bytes, n_params;
    float **owned;                 /* f32 copies (norms, biases) to free */
    int32_t n_owned;
} model;

/* The architecture row named `name`, or NULL when qkvd does not know it. */
const model_arch *model_arch_find(const char *name);

/* Open `path`, validate and bind. 0 and *out (owned by the caller:
 * model_free), or negative with a message naming the file and the problem. */
int model_load(const char *path, model **out, char *err, size_t errlen);

/* Bind an already opened file (takes ownership of f, also on failure). */
int model_load_gguf(gguf_file *f, model **out, char *err, size_t errlen);

void model_free(model *m); /* accepts NULL and half-built models */

/* The dominant weight type as a name ("q4_k_m", "q8_0", ...): from
 * general.file_type when present, else the type holding most bytes. */
const char *model_weight_type_name(const model *m);

#endif
