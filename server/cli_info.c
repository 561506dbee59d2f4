/* cli_info.c -- `qkvd info`: what a GGUF model is and what it will cost:
 * architecture, hyperparameters, tokenizer, tensor table and a memory plan
 * (weights, KV per token, KV at the context, tokens that fit a budget). */
#include "cli.h"
#include "gguf.h"
#include "kv_cache.h"
#include "model.h"
#include "rope.h"
#include "tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void info_usage(FILE *to) {
    fprintf(to,
            "usage: qkvd info -m MODEL.gguf [--ctx N] [--budget BYTES] [--no-tensors]\n"
            "                 [--kv-type T] [--kv-block N] [--kv-memory MIB] [--max-seqs N]\n"
            "  --ctx N         context for the KV estimate (default: the model's trained context)\n"
            "  --budget BYTES  memory budget, e.g. 8G, 512M, 1073741824: how many KV tokens fit\n"
            "                  after the weights\n"
            "  --kv-type T, --kv-block N, --kv-memory MIB, --max-seqs N: the KV pool `qkvd serve`\n"
            "                  would make with these options (defaults f32, 16, 0 = max-seqs x ctx, 16)\n");
}

/* "8G", "512M", "100k", "12345" -> bytes (binary units); -1 on bad input. */
static int64_t info_parse_bytes(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return -1;
    }
    if (toupper((unsigned char)*end) == 'I') end++;
    if (toupper((unsigned char)*end) == 'B') end++;
    if (*end) return -1;
    double b = v * mul;
    if (b > 9e18) return -1;
    return (int64_t)b;
}

static void info_human(double b, char *buf, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) { b /= 1024; i++; }
    snprintf(buf, n, "%.2f %s", b, u[i]);
}

int cli_info(int argc, char **argv) {
    const char *path = NULL;
    int64_t ctx = 0, budget = -1, kv_block = KV_BLOCK, kv_mib = 0, max_seqs = 16;
    int tensors = 1, kv_type = KV_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { info_usage(stdout); return 0; }
        if (!strcmp(a, "--no-tensors")) { tensors = 0; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "qkvd info: unknown or incomplete option '%s'\n", a);
            info_usage(stderr);
            return 2;
        }
        const char *val = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) path = val;
        else if (!strcmp(a, "--ctx")) {
            char *end;
            ctx = strtoll(val, &end, 10);
            if (*end || end == val || ctx <= 0 || ctx > (1 << 30)) {
                fprintf(stderr, "qkvd info: --ctx expects a positive integer, got '%s'\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--kv-type")) {
            kv_type = kv_type_from_name(val);
            if (kv_type < 0) {
                fprintf(stderr, "qkvd info: --kv-type must be f32, f16, q8_0 or q12_0, got '%s'\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--kv-block") || !strcmp(a, "--kv-memory") || !strcmp(a, "--max-seqs")) {
            char *end;
            long long v = strtoll(val, &end, 10);
            int blk = !strcmp(a, "--kv-block");
            if (*end || end == val || v < (blk || a[2] == 'm' ? 1 : 0) || v > (blk ? KV_BLOCK_MAX : 1 << 30)) {
                fprintf(stderr, "qkvd info: %s expects a %s integer, got '%s'\n", a, blk ? "1..256" : "non-negative", val);
                return 2;
            }
            if (blk) kv_block = v; else if (a[2] == 'm') max_seqs = v; else kv_mib = v;
        } else if (!strcmp(a, "--budget")) {
            budget = info_parse_bytes(val);
            if (budget < 0) {
                fprintf(stderr, "qkvd info: --budget expects bytes like 8G or 512M, got '%s'\n", val);
                return 2;
            }
        } else {
            fprintf(stderr, "qkvd info: unknown option '%s'\n", a);
            info_usage(stderr);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "qkvd info: -m MODEL is required\n");
        info_usage(stderr);
        return 2;
    }
    char err[512];
    model *m = NULL;
    if (model_load(path, &m, err, sizeof err)) {
        fprintf(stderr, "qkvd info: %s\n", err);
        return 1;
    }
    const model_hparams *hp = &m->hp;
    char name[128] = "";
    gguf_get_str(m->gguf, "general.name", name, sizeof name);
    printf("file:          %s (GGUF v%u, %llu tensors, %llu metadata keys)\n", path,
           m->gguf->version, (unsigned long long)m->gguf->n_tensors, (unsigned long long)m->gguf->n_kv);
    printf("name:          %s\n", name[0] ? name : "(none)");
    printf("architecture:  %s (rope %s%s)\n", m->arch->name,
           m->arch->rope == MODEL_ROPE_NEOX ? "neox" : "normal", m->arch->qkv_bias ? ", qkv bias" : "");
    printf("weights:       %s, %.2f M params, output %s\n", model_weight_type_name(m),
           m->n_params / 1e6, m->tied_output ? "tied to token_embd" : "output.weight");
    printf("hparams:       n_vocab %d, n_ctx_train %d, n_embd %d, n_layer %d, n_ff %d\n", hp->n_vocab,
           hp->n_ctx_train, hp->n_embd, hp->n_layer, hp->n_ff);
    printf("attention:     n_head %d, n_head_kv %d, head_dim %d, n_rot %d, rope_base %g, norm_eps %g\n",
           hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_rot, hp->rope_base, hp->norm_eps);
    if (hp->rope_scaling != MODEL_ROPE_SCALING_NONE)
        printf("rope scaling:  %s, factor %g, original context %d\n",
               rope_scaling_name((enum rope_scaling)hp->rope_scaling), hp->rope_scale_factor, hp->rope_orig_ctx);
    tokenizer *tk = NULL;
    char terr[256] = "";
    if (tokenizer_load(m->gguf, &tk, terr, sizeof terr) == 0) {
        char tmodel[32] = "", pre[64] = "";
        gguf_get_str(m->gguf, "tokenizer.ggml.model", tmodel, sizeof tmodel);
        gguf_get_str(m->gguf, "tokenizer.ggml.pre", pre, sizeof pre);
        printf("tokenizer:     %s%s%s, %d tokens, bos %d, eos %d, add_bos %d\n", tmodel,
               pre[0] ? ", pre " : "", pre, tokenizer_n_vocab(tk), tokenizer_bos(tk),
               tokenizer_eos(tk), tokenizer_add_bos(tk));
        tokenizer_free(tk);
    } else {
        printf("tokenizer:     unusable: %s\n", terr);
    }
    gguf_str tmpl;
    printf("chat template: %s\n", gguf_get_strv(m->gguf, "tokenizer.chat_template", &tmpl) == 0 ? "yes" : "no");
    if (tensors) {
        printf("\n%-32s %-7s %-24s %12s\n", "tensor", "type", "shape", "bytes");
        for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
            const gguf_tensor *t = &m->gguf->tensors[i];
            char shape[64];
            int o = snprintf(shape, sizeof shape, "[");
            for (uint32_t d = 0; d < t->n_dims && o < (int)sizeof shape; d++)
                o += snprintf(shape + o, sizeof shape - (size_t)o, "%s%llu", d ? ", " : "",
                              (unsigned long long)t->ne[d]);
            if (o < (int)sizeof shape) snprintf(shape + o, sizeof shape - (size_t)o, "]");
            printf("%-32.*s %-7s %-24s %12llu\n", (int)t->name.len, t->name.ptr,
                   quant_type_name(t->type), shape, (unsigned long long)t->size);
        }
    }
    uint64_t kv_tok = kv_cache_plan_bytes_per_token((enum kv_type)kv_type, hp->n_layer, hp->n_head_kv * hp->head_dim,
                                                    hp->head_dim);
    if (ctx <= 0) ctx = hp->n_ctx_train;
    char b1[32], b2[32], b3[32];
    info_human((double)m->weight_bytes, b1, sizeof b1);
    info_human((double)kv_tok, b2, sizeof b2);
    info_human((double)kv_tok * (double)ctx, b3, sizeof b3);
    printf("\nmemory plan:\n");
    printf("  weights (mmapped)      %s (%llu bytes)\n", b1, (unsigned long long)m->weight_bytes);
    printf("  KV per token (%-4s)    %s (%llu bytes)\n", kv_type_name((enum kv_type)kv_type), b2, (unsigned long long)kv_tok);
    printf("  KV at context %-8lld %s\n", (long long)ctx, b3);
    {
        /* The pool serve would make (kv_cache_create_params' sizing). */
        uint64_t bb = kv_tok * (uint64_t)kv_block;
        int64_t nb = kv_mib > 0 ? (int64_t)(((uint64_t)kv_mib << 20) / bb)
                                : ((ctx + kv_block - 1) / kv_block) * max_seqs + max_seqs;
        char b5[32], b6[32];
        info_human((double)bb, b5, sizeof b5);
        info_human((double)bb * (double)nb, b6, sizeof b6);
        printf("  KV pool                %lld blocks x %lld tokens (%s each) = %lld tokens, %s\n", (long long)nb,
               (long long)kv_block, b5, (long long)(nb * kv_block), b6);
        printf("                         (%s; memory is taken block by block as sequences use it)\n",
               kv_mib > 0 ? "--kv-memory" : "--max-seqs x ctx");
    }
    if (budget >= 0) {
        char b4[32];
        info_human((double)budget, b4, sizeof b4);
        if ((uint64_t)budget <= m->weight_bytes) {
            printf("  budget %s: the weights alone do not fit\n", b4);
        } else {
            uint64_t fit = ((uint64_t)budget - m->weight_bytes) / kv_tok;
            printf("  budget %s: %llu KV tokens fit after the weights (%.1f sequences of %lld)\n", b4,
                   (unsigned long long)fit, (double)fit / (double)ctx, (long long)ctx);
        }
    }
    model_free(m);
    return 0;
}
