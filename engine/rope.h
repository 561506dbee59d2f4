/* rope.h -- rotary position embedding frequencies with the scaling variants
 * used to run a model past its trained context (IDEAS.md section 1):
 *
 *   none          theta_m = b^(-2m/d)                (d = n_rot, m = 0 .. d/2-1)
 *   linear        positions divided by s  (= theta_m / s)
 *   ntk           base raised: b' = b * s^(d/(d-2))
 *   dynamic-ntk   ntk with s = max(1, n / L_train), n = position + 1
 *   yarn          per frequency: r_m = L_train / lambda_m (lambda_m = 2 pi / theta_m),
 *                 gamma = clamp((r_m - alpha) / (beta - alpha), 0, 1),
 *                 theta'_m = (1 - gamma) theta_m / s + gamma theta_m,
 *                 and attention logits times mscale^2, mscale = 0.1 ln(s) + 1
 *
 * Every variant with s = 1 is plain RoPE. The rotation angle of pair m at
 * position p is p * inv_freq[m]; rope_freqs() returns inv_freq and the
 * factor cos/sin are multiplied by (mscale: applied to both q and k, it
 * scales the logits by mscale^2). */
#ifndef QKVD_ROPE_H
#define QKVD_ROPE_H

#include <stdint.h>

enum rope_scaling {
    ROPE_SCALING_NONE = 0,
    ROPE_SCALING_LINEAR = 1,
    ROPE_SCALING_NTK = 2,
    ROPE_SCALING_DYNAMIC_NTK = 3,
    ROPE_SCALING_YARN = 4
};
#define ROPE_SCALING_COUNT 5

typedef struct rope_params {
    enum rope_scaling type;
    float factor;        /* s >= 1 (ignored by none and dynamic-ntk) */
    int32_t orig_ctx;    /* L_train for dynamic-ntk and yarn; 0: the model's trained context */
    float yarn_alpha;    /* ramp start, in rotations per L_train (default 1) */
    float yarn_beta;     /* ramp end (default 32) */
} rope_params;

/* Parameters for "no scaling" (factor 1, YaRN ramp 1..32). */
void rope_params_default(rope_params *p);

/* Name -> type ("none", "linear", "ntk", "dynamic-ntk", "yarn"; also
 * "dynamic" and "ntk-aware"). 0 or -1 when unknown. */
int rope_scaling_parse(const char *name, enum rope_scaling *out);
/* Type -> its canonical name ("none" for out-of-range values). */
const char *rope_scaling_name(enum rope_scaling t);

/* Frequencies for a token at position pos (only dynamic-ntk depends on it).
 * n_rot: rotated dimensions (even); base: the model's rope.freq_base;
 * freq_div: per-pair divisors (rope_freqs.weight) or NULL; n_ctx_train: the
 * model's trained context, used when p->orig_ctx is 0. Writes n_rot/2 values
 * to inv_freq and returns the cos/sin multiplier (1 except for yarn). */
float rope_freqs(const rope_params *p, int32_t n_rot, float base, const float *freq_div,
                 int32_t n_ctx_train, int32_t pos, double *inv_freq);

/* Rotate n_heads vectors of head_dim floats in place: pairs (2i, 2i+1)
 * (neox = 0) or (i, i + n_rot/2) (neox = 1) by the angles whose cos and sin
 * are c[i], s[i] (n_rot/2 each). */
void rope_rotate(float *x, int32_t n_heads, int32_t head_dim, int32_t n_rot, int neox,
                 const float *c, const float *s);

#endif
