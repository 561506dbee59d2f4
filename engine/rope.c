/* rope.c -- RoPE frequencies with scaling variants (see rope.h). */
#include "rope.h"

#include <math.h>
#include <string.h>

void rope_params_default(rope_params *p) {
    memset(p, 0, sizeof *p);
    p->type = ROPE_SCALING_NONE;
    p->factor = 1.0f;
    p->yarn_alpha = 1.0f;
    p->yarn_beta = 32.0f;
}

static const char *const rope_names[ROPE_SCALING_COUNT] = {"none", "linear", "ntk", "dynamic-ntk", "yarn"};

int rope_scaling_parse(const char *name, enum rope_scaling *out) {
    if (!name) return -1;
    for (int i = 0; i < ROPE_SCALING_COUNT; i++)
        if (!strcmp(name, rope_names[i])) { *out = (enum rope_scaling)i; return 0; }
    if (!strcmp(name, "dynamic")) { *out = ROPE_SCALING_DYNAMIC_NTK; return 0; }
    if (!strcmp(name, "ntk-aware")) { *out = ROPE_SCALING_NTK; return 0; }
    return -1;
}

const char *rope_scaling_name(enum rope_scaling t) {
    return (int)t >= 0 && (int)t < ROPE_SCALING_COUNT ? rope_names[t] : "none";
}

float rope_freqs(const rope_params *p, int32_t n_rot, float base, const float *freq_div,
                 int32_t n_ctx_train, int32_t pos, double *inv_freq) {
    const int32_t half = n_rot / 2;
    double b = base, s = p->factor > 1.0f ? p->factor : 1.0;
    int32_t L = p->orig_ctx > 0 ? p->orig_ctx : n_ctx_train;
    float mscale = 1.0f;
    if (p->type == ROPE_SCALING_DYNAMIC_NTK) {
        /* Scale grows with the sequence: 1 up to the trained context. */
        s = L > 0 && pos + 1 > L ? (double)(pos + 1) / L : 1.0;
    }
    if ((p->type == ROPE_SCALING_NTK || p->type == ROPE_SCALING_DYNAMIC_NTK) && s > 1.0 && n_rot > 2)
        b = base * pow(s, (double)n_rot / (n_rot - 2));
    for (int32_t i = 0; i < half; i++) {
        double th = pow(b, -2.0 * i / n_rot);
        if (freq_div) th /= (double)freq_div[i];
        if (p->type == ROPE_SCALING_LINEAR) th /= s;
        else if (p->type == ROPE_SCALING_YARN && s > 1.0) {
            /* r = rotations this frequency makes over the trained context:
             * many (high frequency) -> keep, few (low frequency) -> interpolate. */
            double r = L / (2.0 * M_PI / th);
            double a = p->yarn_alpha, be = p->yarn_beta > p->yarn_alpha ? p->yarn_beta : a + 1;
            double g = (r - a) / (be - a);
            if (g < 0) g = 0;
            if (g > 1) g = 1;
            th = (1.0 - g) * th / s + g * th;
        }
        inv_freq[i] = th;
    }
    if (p->type == ROPE_SCALING_YARN && s > 1.0) mscale = (float)(0.1 * log(s) + 1.0);
    return mscale;
}

void rope_rotate(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, int neox,
                 const float *c, const float *s) {
    const int32_t half = n_rot / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        if (neox) {
            for (int32_t i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = a * s[i] + b * c[i];
            }
        } else {
            for (int32_t i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}
