/* attn_kind.c -- names, defaults and validation of attention kinds. */
#include "attn_kind.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const kind_names[ATTN_KIND_COUNT] = {"softmax", "window", "rerope", "leaky-rerope",
                                                         "logn",    "hwfa",   "linear"};

void attn_params_default(attn_params *p) {
    memset(p, 0, sizeof *p);
    p->kind = ATTN_SOFTMAX;
    p->window = ATTN_DEFAULT_WINDOW;
    p->sinks = ATTN_DEFAULT_SINKS;
    p->leak = ATTN_DEFAULT_LEAK;
    rope_params_default(&p->rope);
}

int attn_kind_parse(const char *name, enum attn_kind *out) {
    if (!name) return -1;
    for (int i = 0; i < ATTN_KIND_COUNT; i++)
        if (!strcmp(name, kind_names[i])) { *out = (enum attn_kind)i; return 0; }
    if (!strcmp(name, "leaky_rerope")) { *out = ATTN_LEAKY_REROPE; return 0; }
    return -1;
}

const char *attn_kind_name(enum attn_kind k) {
    return (int)k >= 0 && (int)k < ATTN_KIND_COUNT ? kind_names[k] : "softmax";
}

int attn_params_validate(const attn_params *p, const char **param, char *err, size_t errlen) {
    if ((int)p->kind < 0 || (int)p->kind >= ATTN_KIND_COUNT) {
        *param = "kind";
        snprintf(err, errlen, "unknown attention kind %d", (int)p->kind);
        return -1;
    }
    if (p->window < 1 || p->window > (1 << 24)) {
        *param = "window";
        snprintf(err, errlen, "attention window must be in [1, %d], got %d", 1 << 24, (int)p->window);
        return -1;
    }
    if (p->sinks < 0 || p->sinks > (1 << 24)) {
        *param = "sinks";
        snprintf(err, errlen, "attention sinks must be in [0, %d], got %d", 1 << 24, (int)p->sinks);
        return -1;
    }
    if (!(p->leak > 1.0f) || !isfinite(p->leak) || p->leak > 1e6f) {
        *param = "leak";
        snprintf(err, errlen, "leaky-rerope leak k must be > 1 (and <= 1e6), got %g", (double)p->leak);
        return -1;
    }
    if (p->rope_set) {
        if ((int)p->rope.type < 0 || (int)p->rope.type >= ROPE_SCALING_COUNT) {
            *param = "rope_scaling";
            snprintf(err, errlen, "unknown RoPE scaling %d", (int)p->rope.type);
            return -1;
        }
        if (!(p->rope.factor >= 1.0f) || !isfinite(p->rope.factor) || p->rope.factor > 1e4f) {
            *param = "rope_factor";
            snprintf(err, errlen, "RoPE scaling factor must be in [1, 10000], got %g", (double)p->rope.factor);
            return -1;
        }
        if (p->rope.orig_ctx < 0) {
            *param = "rope_orig_ctx";
            snprintf(err, errlen, "RoPE original context must be >= 0, got %d", (int)p->rope.orig_ctx);
            return -1;
        }
        if (!(p->rope.yarn_alpha > 0) || !(p->rope.yarn_beta > p->rope.yarn_alpha)) {
            *param = "yarn_beta";
            snprintf(err, errlen, "YaRN ramp needs 0 < alpha < beta, got %g, %g", (double)p->rope.yarn_alpha,
                     (double)p->rope.yarn_beta);
            return -1;
        }
    }
    return 0;
}

enum attn_kv_need attn_kv_need_of(const attn_params *p) {
    switch (p->kind) {
    case ATTN_WINDOW: return ATTN_KV_WINDOW;
    case ATTN_REROPE:
    case ATTN_LEAKY_REROPE: return ATTN_KV_UNROTATED;
    case ATTN_LINEAR: return ATTN_KV_NONE;
    default: return ATTN_KV_FULL;
    }
}

int attn_layer_windowed(const attn_params *p, int32_t layer, int32_t n_layer) {
    return p->kind == ATTN_WINDOW || (p->kind == ATTN_HWFA && layer < n_layer - 1);
}

int64_t attn_kv_positions(const attn_params *p, int32_t layer, int32_t n_layer, int64_t len) {
    if (p->kind == ATTN_LINEAR) return 0;
    if (attn_layer_windowed(p, layer, n_layer)) {
        int64_t cap = (int64_t)p->sinks + p->window;
        return len < cap ? len : cap;
    }
    return len;
}
