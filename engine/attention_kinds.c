/* attention_kinds.c -- window / logn / hwfa (masked softmax over key
 * segments) and rerope / leaky-rerope (queries rotated by the clipped
 * relative position against unrotated keys). See attention_kinds.h. */
#include "attention_kinds.h"
#include "vecmath.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

int attn_dynamic_exact(const attn_params *p, const rope_params *model_rope) {
    const rope_params *rp = p->rope_set ? &p->rope : model_rope;
    return rp->type == ROPE_SCALING_DYNAMIC_NTK && (p->kind == ATTN_SOFTMAX || p->kind == ATTN_LOGN);
}

size_t attention_kind_scratch_floats(int32_t n_q, int32_t n_keys, int32_t head_dim) {
    /* scores, a rotated query, and one block's rows of a head as floats */
    return (size_t)n_q * (size_t)n_keys + 8 * (size_t)head_dim + 64 + (size_t)KV_BLOCK_MAX * (size_t)head_dim;
}

float attention_logn_factor(int32_t pos, int32_t n_ctx_train) {
    if (n_ctx_train < 2) return 1.0f;
    double f = log((double)pos + 1.0) / log((double)n_ctx_train);
    return f > 1.0 ? (float)f : 1.0f;
}

/* Rows of head kvh in a span (K when !v, else V): f32 rows in place, other
 * element types converted into buf (block_tokens x head_dim floats).
 * Returns the first row; *ld its stride in floats. */
static const float *kind_rows(const kv_span *sp, int v, int32_t kvh, int32_t hd, int32_t n, float *buf,
                              size_t *ld) {
    const uint8_t *rows = v ? sp->v : sp->k;
    if (sp->type == KV_F32) {
        *ld = sp->stride / sizeof(float);
        return (const float *)rows + (size_t)kvh * hd;
    }
    kv_span_rows_f32(sp, rows, n, kvh * hd, hd, buf);
    *ld = (size_t)hd;
    return buf;
}

/* The positions [a, b) of the cache in runs: BODY per contiguous span, with
 * rp the span's first row of head kvh (K when !v, else V), ld its stride in
 * floats, len the rows and span_pos the first position. */
#define SPANS(kv, seq, layer, a, b, v, kvh, hd, buf, rp, ld, len, BODY)         \
    for (int32_t _p = (a); _p < (b);) {                                        \
        kv_span _sp;                                                           \
        int32_t len = kv_cache_span_get((kv), (seq), (layer), _p, &_sp);       \
        if (len > (b) - _p) len = (b) - _p;                                    \
        size_t ld;                                                             \
        const float *rp = kind_rows(&_sp, (v), (kvh), (hd), len, (buf), &ld);  \
        int32_t span_pos = _p;                                                 \
        (void)span_pos;                                                        \
        BODY;                                                                  \
        _p += len;                                                             \
    }

/* Softmax over two valid column ranges [0, a1) and [b0, b1) of row[0..n);
 * the rest is zeroed. */
static void kind_softmax_segments(float *row, int32_t a1, int32_t b0, int32_t b1, int32_t n) {
    float mx = a1 > 0 ? vec_max(row, (size_t)a1) : -INFINITY;
    if (b1 > b0) {
        float m2 = vec_max(row + b0, (size_t)(b1 - b0));
        if (m2 > mx) mx = m2;
    }
    float sum = 0;
    if (a1 > 0) sum += vec_exp_shift_sum(row, (size_t)a1, mx);
    if (b1 > b0) sum += vec_exp_shift_sum(row + b0, (size_t)(b1 - b0), mx);
    float inv = sum > 0 ? 1.0f / sum : 0.0f;
    if (a1 > 0) vec_scale(row, (size_t)a1, inv);
    if (b1 > b0) vec_scale(row + b0, (size_t)(b1 - b0), inv);
    for (int32_t c = a1 > 0 ? a1 : 0; c < n; c++)
        if (c < b0 || c >= b1) row[c] = 0;
}

/* Masked softmax attention: row i sees sinks [0, min(S, i+1)) and the body
 * [max(S, i-W+1), i] (W = INT32_MAX, S = 0 for full layers), queries scaled
 * by the log-n factor when asked. Columns: ns sink keys, then the body keys
 * lo .. hi of the union over the chunk. */
static void kind_masked(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                        const attn_model_info *mi, const attn_params *p,
                        int32_t W, int32_t S, int logn, int32_t n_ctx_train, int32_t head,
                        const float *q, size_t q_stride, int32_t n_q, int32_t pos0, float *out,
                        size_t out_stride, float *scratch) {
    const int32_t hd = s->head_dim;
    const int32_t kvh = head / (s->n_head / s->n_head_kv);
    const int32_t hi = pos0 + n_q; /* exclusive */
    int32_t ns = S < hi ? S : hi;
    int64_t lo64 = (int64_t)pos0 - W + 1;
    int32_t lo = lo64 < ns ? ns : (int32_t)lo64;
    const int32_t n_cols = ns + (hi - lo);
    float *Sc = scratch; /* [n_q][n_cols] */
    float *buf = Sc + (size_t)n_q * n_cols; /* one block's rows of the head, converted */
    /* Key segment [a, b) lands in columns starting at col. */
    int32_t seg_a[2] = {0, lo}, seg_b[2] = {ns, hi}, seg_c[2] = {0, ns};
    for (int g = 0; g < 2; g++) {
        SPANS(kv, seq, layer, seg_a[g], seg_b[g], 0, kvh, hd, buf, kp, ld, len, {
            int32_t col = seg_c[g] + (span_pos - seg_a[g]);
            if (n_q == 1)
                vec_dot_rows(q, kp, ld, (size_t)len, (size_t)hd, s->scale, Sc + col);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q, len, hd, s->scale, q,
                            (int)q_stride, kp, (int)ld, 0.0f, Sc + col, n_cols);
        });
    }
    /* Sinks at their cache position (as StreamingLLM): once the window has
     * moved past them, the query sits at cache position S + W - 1 and sink
     * j at j, so the sink scores use the query rotated to S + W - 1 instead
     * of i (keys are stored rotated at j). Without this, sinks are scored at
     * distances the model never saw in training. */
    if (mi && ns > 0 && (int64_t)pos0 + n_q - 1 > (int64_t)S + W - 1) {
        const rope_params *rp = p->rope_set ? &p->rope : &mi->rope;
        double inv_freq[ATTN_MAX_ROT / 2];
        float c[ATTN_MAX_ROT / 2], sn[ATTN_MAX_ROT / 2], qs[ATTN_MAX_ROT > 1024 ? ATTN_MAX_ROT : 1024];
        for (int32_t t = 0; t < n_q && hd <= 1024; t++) {
            int32_t i = pos0 + t;
            int64_t a = (int64_t)S + W - 1;
            if (i <= a) continue;
            rope_freqs(rp, mi->n_rot, mi->rope_base, mi->freq_div, mi->n_ctx_train, i, inv_freq);
            for (int32_t m = 0; m < mi->n_rot / 2; m++) {
                double ang = (double)(a - i) * inv_freq[m];
                c[m] = (float)cos(ang);
                sn[m] = (float)sin(ang);
            }
            memcpy(qs, q + (size_t)t * q_stride, (size_t)hd * sizeof(float));
            rope_rotate(qs, 1, hd, mi->n_rot, mi->neox, c, sn);
            SPANS(kv, seq, layer, 0, ns, 0, kvh, hd, buf, kp, ld, len, {
                vec_dot_rows(qs, kp, ld, (size_t)len, (size_t)hd, s->scale,
                             Sc + (size_t)t * n_cols + span_pos);
            });
        }
    }
    for (int32_t t = 0; t < n_q; t++) {
        int32_t i = pos0 + t;
        float *row = Sc + (size_t)t * n_cols;
        if (logn) {
            float f = attention_logn_factor(i, n_ctx_train);
            if (f != 1.0f) for (int32_t c = 0; c < n_cols; c++) row[c] *= f;
        }
        int32_t a1 = ns < i + 1 ? ns : i + 1;
        int64_t blo = (int64_t)i - W + 1;
        if (blo < lo) blo = lo;
        int32_t b0 = ns + (int32_t)(blo - lo), b1 = ns + (i + 1 - lo);
        if (b1 < b0) b1 = b0;
        kind_softmax_segments(row, a1, b0, b1, n_cols);
    }
    for (int32_t t = 0; t < n_q; t++) memset(out + (size_t)t * out_stride, 0, (size_t)hd * sizeof(float));
    for (int g = 0; g < 2; g++) {
        SPANS(kv, seq, layer, seg_a[g], seg_b[g], 1, kvh, hd, buf, vp, ld, len, {
            int32_t col = seg_c[g] + (span_pos - seg_a[g]);
            if (n_q == 1)
                vec_axpy_rows(out, vp, ld, (size_t)len, (size_t)hd, Sc + col);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_q, hd, len, 1.0f, Sc + col, n_cols,
                            vp, (int)ld, 1.0f, out, (int)out_stride);
        });
    }
}

/* dst = R_rho src for one head (angles rho * inv_freq[m]). */
static void kind_rotate_exact(float *dst, const float *src, int32_t hd, int32_t n_rot, int neox,
                              const double *inv_freq, double rho) {
    float c[ATTN_MAX_ROT / 2], sn[ATTN_MAX_ROT / 2];
    for (int32_t m = 0; m < n_rot / 2; m++) {
        double a = rho * inv_freq[m];
        c[m] = (float)cos(a);
        sn[m] = (float)sin(a);
    }
    memcpy(dst, src, (size_t)hd * sizeof(float));
    rope_rotate(dst, 1, hd, n_rot, neox, c, sn);
}

/* Keys within this many steps of an exact rotation are reached by
 * repeated small rotations (cheap, drift far below float noise). */
#define REROPE_ANCHOR 16

/* rerope / leaky-rerope for one query at position i: the score of key j at
 * distance r = i - j is (R_rho(r) q) . k_j with rho(r) = r below w and w
 * (rerope) or w + (r - w) / leak (leaky) beyond; k_j unrotated. */
static void kind_rerope_row(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                            const attn_model_info *mi, const attn_params *p, int32_t kvh,
                            const float *q, int32_t i, float *out, float *scratch) {
    const int32_t hd = s->head_dim, half = mi->n_rot / 2;
    const int32_t n = i + 1, w = p->window;
    const int leaky = p->kind == ATTN_LEAKY_REROPE;
    const rope_params *rp = p->rope_set ? &p->rope : &mi->rope;
    double inv_freq[ATTN_MAX_ROT / 2];
    float mscale = rope_freqs(rp, mi->n_rot, mi->rope_base, mi->freq_div, mi->n_ctx_train, i, inv_freq);
    float scale = s->scale * mscale * mscale;
    if (p->logn) scale *= attention_logn_factor(i, rp->orig_ctx > 0 ? rp->orig_ctx : mi->n_ctx_train);
    float *sc = scratch;            /* [n] scores */
    float *qr = scratch + n;        /* [hd] rotated query */
    float *buf = qr + hd;           /* one block's rows of the head, converted */
    float c1[ATTN_MAX_ROT / 2], s1[ATTN_MAX_ROT / 2], ck[ATTN_MAX_ROT / 2], sk[ATTN_MAX_ROT / 2];
    for (int32_t m = 0; m < half; m++) {
        c1[m] = (float)cos(inv_freq[m]);
        s1[m] = (float)sin(inv_freq[m]);
        double a = inv_freq[m] / (leaky ? p->leak : 1.0f);
        ck[m] = (float)cos(a);
        sk[m] = (float)sin(a);
    }
    /* Near keys j in [near0, i]: rho = r = i - j, one step of R_1 per key. */
    int32_t near0 = i - w + 1 > 0 ? i - w + 1 : 0;
    for (int32_t j = i, step = 0; j >= near0; j--, step++) {
        int32_t r = i - j;
        if (step % REROPE_ANCHOR == 0) kind_rotate_exact(qr, q, hd, mi->n_rot, mi->neox, inv_freq, (double)r);
        else rope_rotate(qr, 1, hd, mi->n_rot, mi->neox, c1, s1);
        SPANS(kv, seq, layer, j, j + 1, 0, kvh, hd, buf, kp, ld, len, {
            vec_dot_rows(qr, kp, ld, 1, (size_t)hd, scale, sc + j);
        });
    }
    /* Far keys j in [0, near0): r >= w. */
    if (near0 > 0) {
        if (!leaky) {
            kind_rotate_exact(qr, q, hd, mi->n_rot, mi->neox, inv_freq, (double)w);
            SPANS(kv, seq, layer, 0, near0, 0, kvh, hd, buf, kp, ld, len, {
                vec_dot_rows(qr, kp, ld, (size_t)len, (size_t)hd, scale,
                             sc + span_pos);
            });
        } else {
            for (int32_t j = near0 - 1, step = 0; j >= 0; j--, step++) {
                int32_t r = i - j;
                if (step % REROPE_ANCHOR == 0)
                    kind_rotate_exact(qr, q, hd, mi->n_rot, mi->neox, inv_freq,
                                      (double)w + (double)(r - w) / p->leak);
                else rope_rotate(qr, 1, hd, mi->n_rot, mi->neox, ck, sk);
                SPANS(kv, seq, layer, j, j + 1, 0, kvh, hd, buf, kp, ld, len, {
                    vec_dot_rows(qr, kp, ld, 1, (size_t)hd, scale, sc + j);
                });
            }
        }
    }
    kind_softmax_segments(sc, n, n, n, n);
    memset(out, 0, (size_t)hd * sizeof(float));
    SPANS(kv, seq, layer, 0, n, 1, kvh, hd, buf, vp, ld, len, {
        vec_axpy_rows(out, vp, ld, (size_t)len, (size_t)hd, sc + span_pos);
    });
}

int attention_kind_plain(const attn_params *p, const attn_model_info *mi, int32_t layer) {
    if (attn_dynamic_exact(p, &mi->rope)) return 0;
    if (p->kind == ATTN_REROPE || p->kind == ATTN_LEAKY_REROPE) return 0;
    if ((p->kind == ATTN_WINDOW || p->kind == ATTN_HWFA) && attn_layer_windowed(p, layer, mi->n_layer)) return 0;
    return !(p->logn || p->kind == ATTN_LOGN);
}

void attention_kind_rows(const kv_cache *kv, int32_t seq, int32_t layer, const attn_shape *s,
                         const attn_model_info *mi, const attn_params *p, int32_t head,
                         const float *q, size_t q_stride, int32_t n_q, int32_t pos0, float *out,
                         size_t out_stride, float *scratch) {
    const int32_t kvh = head / (s->n_head / s->n_head_kv);
    /* The trained length logn measures against: the RoPE original context
     * when one is given (GGUF context_length is sometimes not the length
     * the model was trained at). */
    const int32_t L = p->rope_set && p->rope.orig_ctx > 0 ? p->rope.orig_ctx : mi->n_ctx_train;
    if (attn_dynamic_exact(p, &mi->rope)) {
        /* dynamic-ntk, exactly: keys are cached unrotated and every score
         * uses the query's current base (rerope with an unbounded window). */
        attn_params full = *p;
        full.kind = ATTN_REROPE;
        full.window = INT32_MAX;
        full.rope = p->rope_set ? p->rope : mi->rope;
        full.rope_set = 1;
        full.logn = p->logn || p->kind == ATTN_LOGN;
        for (int32_t t = 0; t < n_q; t++)
            kind_rerope_row(kv, seq, layer, s, mi, &full, kvh, q + (size_t)t * q_stride, pos0 + t,
                            out + (size_t)t * out_stride, scratch);
        return;
    }
    switch (p->kind) {
    case ATTN_REROPE:
    case ATTN_LEAKY_REROPE:
        for (int32_t t = 0; t < n_q; t++)
            kind_rerope_row(kv, seq, layer, s, mi, p, kvh, q + (size_t)t * q_stride, pos0 + t,
                            out + (size_t)t * out_stride, scratch);
        return;
    case ATTN_WINDOW:
    case ATTN_HWFA:
        if (attn_layer_windowed(p, layer, mi->n_layer)) {
            kind_masked(kv, seq, layer, s, mi, p, p->window, p->sinks, p->logn, L, head, q, q_stride,
                        n_q, pos0, out, out_stride, scratch);
            return;
        }
        break;
    default:
        break;
    }
    if (p->logn || p->kind == ATTN_LOGN) {
        kind_masked(kv, seq, layer, s, NULL, p, INT32_MAX, 0, 1, L, head, q, q_stride, n_q, pos0, out,
                    out_stride, scratch);
        return;
    }
    attention_causal(kv, seq, layer, s, head, q, q_stride, n_q, pos0, out, out_stride, scratch);
}

void attention_contig_rows(const float *kv, size_t row_stride, size_t v_off, const attn_shape *s, int logn,
                           int32_t n_ctx_train, int32_t head, const float *q, size_t q_stride, int32_t n_q,
                           int32_t pos0, float *out, size_t out_stride, float *scratch) {
    const int32_t hd = s->head_dim, kvh = head / (s->n_head / s->n_head_kv), n = pos0 + n_q;
    const float *K = kv + (size_t)kvh * hd, *V = kv + v_off + (size_t)kvh * hd;
    float *S = scratch; /* [n_q][n] */
    if (n_q == 1) vec_dot_rows(q, K, row_stride, (size_t)n, (size_t)hd, s->scale, S);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q, n, hd, s->scale, q, (int)q_stride, K,
                    (int)row_stride, 0.0f, S, n);
    for (int32_t t = 0; t < n_q; t++) {
        float *row = S + (size_t)t * n;
        if (logn) {
            float f = attention_logn_factor(pos0 + t, n_ctx_train);
            if (f != 1.0f) for (int32_t c = 0; c <= pos0 + t; c++) row[c] *= f;
        }
        kind_softmax_segments(row, 0, 0, pos0 + t + 1, n);
    }
    if (n_q == 1) {
        memset(out, 0, (size_t)hd * sizeof(float));
        vec_axpy_rows(out, V, row_stride, (size_t)n, (size_t)hd, S);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_q, hd, n, 1.0f, S, n, V, (int)row_stride, 0.0f,
                    out, (int)out_stride);
    }
}
