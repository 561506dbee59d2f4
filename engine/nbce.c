/* nbce.c -- NBCE log-prob combination (see nbce.h). */
#include "nbce.h"

#include <math.h>
#include <string.h>

int nbce_pool_parse(const char *name, enum nbce_pool *out) {
    if (!name) return -1;
    if (!strcmp(name, "min-entropy") || !strcmp(name, "max")) { *out = NBCE_POOL_MIN_ENTROPY; return 0; }
    if (!strcmp(name, "mean") || !strcmp(name, "average")) { *out = NBCE_POOL_MEAN; return 0; }
    return -1;
}

const char *nbce_pool_name(enum nbce_pool p) { return p == NBCE_POOL_MEAN ? "mean" : "min-entropy"; }

double nbce_entropy(const float *lp, int32_t n_vocab) {
    double h = 0;
    for (int32_t v = 0; v < n_vocab; v++)
        if (lp[v] > -INFINITY) h -= exp((double)lp[v]) * lp[v];
    return h;
}

void nbce_combine(const float *const *lp, int32_t n_ctx, const float *lp0, int32_t n_vocab, float beta,
                  enum nbce_pool pool, float *out) {
    if (n_ctx == 1) {
        memcpy(out, lp[0], (size_t)n_vocab * sizeof(float));
        return;
    }
    if (pool == NBCE_POOL_MEAN) {
        for (int32_t v = 0; v < n_vocab; v++) {
            double s = 0;
            for (int32_t k = 0; k < n_ctx; k++) s += lp[k][v];
            out[v] = (float)(s / n_ctx);
        }
    } else {
        int32_t best = 0;
        double hb = INFINITY;
        for (int32_t k = 0; k < n_ctx; k++) {
            double h = nbce_entropy(lp[k], n_vocab);
            if (h < hb) { hb = h; best = k; }
        }
        memcpy(out, lp[best], (size_t)n_vocab * sizeof(float));
    }
    /* (beta + 1) * pooled - beta * l0, then renormalised. A token impossible
     * without context (-inf in l0) keeps the pooled value's sign of -inf only
     * if pooled is -inf too; -inf * -beta would be +inf, so clamp l0. */
    float mx = -INFINITY;
    for (int32_t v = 0; v < n_vocab; v++) {
        float l0 = lp0[v] > -1e30f ? lp0[v] : -1e30f;
        float x = out[v] > -INFINITY ? (beta + 1.0f) * out[v] - beta * l0 : -INFINITY;
        out[v] = x;
        if (x > mx) mx = x;
    }
    double sum = 0;
    for (int32_t v = 0; v < n_vocab; v++) sum += out[v] > -INFINITY ? exp((double)out[v] - mx) : 0;
    float lse = mx + (float)log(sum);
    for (int32_t v = 0; v < n_vocab; v++) out[v] -= lse;
}
