/* gguf_write.c -- the GGUF v3 writer used by `qkvd make-model`.
 *
 * Key/values are serialised as they are set (type + value bytes), so a copied
 * kv stays byte-identical to its source. Tensors are either copied in
 * (gguf_writer_add_tensor) or produced at write time by a callback
 * (gguf_writer_add_tensor_fill), so a model of several GB never needs to be in
 * memory at once. Errors in the setters (a bad shape, a duplicate tensor) are
 * remembered and reported by gguf_writer_write, because the setters return
 * nothing. */
#include "gguf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITER_ALIGNMENT 32

typedef struct wbuf { uint8_t *p; size_t n, cap; } wbuf;

/* Bookkeeping allocations abort on OOM (see gguf.h). */
static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) { fprintf(stderr, "gguf writer: out of memory\n"); abort(); }
    return q;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = xrealloc(NULL, n);
    memcpy(d, s, n);
    return d;
}

static void wb_put(wbuf *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void wb_u32(wbuf *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_put(b, &v, 8); }
static void wb_str(wbuf *b, const char *s, uint64_t len) { wb_u64(b, len); wb_put(b, s, len); }

typedef struct wkv {
    char *key;
    wbuf val; /* u32 type + value bytes, exactly as they go into the file */
} wkv;

typedef struct wtensor {
    char *name;
    enum qk_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t size;
    uint64_t offset;
    void *data;               /* owned copy, or NULL when fill is set */
    gguf_tensor_fill_fn fill;
    void *ctx;
} wtensor;

struct gguf_writer {
    wkv *kv; size_t n_kv, cap_kv;
    wtensor *t; size_t n_t, cap_t;
    char error[256]; /* first error from a setter */
};

gguf_writer *gguf_writer_create(void)
{
    gguf_writer *w = xrealloc(NULL, sizeof *w);
    memset(w, 0, sizeof *w);
    return w;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val.p); }
    for (size_t i = 0; i < w->n_t; i++) { free(w->t[i].name); free(w->t[i].data); }
    free(w->kv);
    free(w->t);
    free(w);
}

/* The value buffer for key: emptied if the key exists (setting a key again
 * replaces its value, so presets can be overridden), else a new entry. */
static wbuf *kv_slot(gguf_writer *w, const char *key)
{
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) { w->kv[i].val.n = 0; return &w->kv[i].val; }
    if (w->n_kv == w->cap_kv) {
        w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 32;
        w->kv = xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
    }
    wkv *kv = &w->kv[w->n_kv++];
    kv->key = xstrdup(key);
    memset(&kv->val, 0, sizeof kv->val);
    return &kv->val;
}

void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_UINT32);
    wb_u32(b, v);
}

void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_INT32);
    wb_put(b, &v, 4);
}

void gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_FLOAT32);
    wb_put(b, &v, 4);
}

void gguf_writer_set_bool(gguf_writer *w, const char *key, int v)
{
    wbuf *b = kv_slot(w, key);
    uint8_t x = v ? 1 : 0;
    wb_u32(b, GGUF_BOOL);
    wb_put(b, &x, 1);
}

void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_STRING);
    wb_str(b, v, strlen(v));
}

void gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_ARRAY);
    wb_u32(b, GGUF_INT32);
    wb_u64(b, n);
    wb_put(b, v, (size_t)n * 4);
}

void gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_ARRAY);
    wb_u32(b, GGUF_FLOAT32);
    wb_u64(b, n);
    wb_put(b, v, (size_t)n * 4);
}

void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *v,
                             const uint64_t *lens, uint64_t n)
{
    wbuf *b = kv_slot(w, key);
    wb_u32(b, GGUF_ARRAY);
    wb_u32(b, GGUF_STRING);
    wb_u64(b, n);
    for (uint64_t i = 0; i < n; i++)
        wb_str(b, v[i], lens ? lens[i] : strlen(v[i]));
}

/* Bytes of one scalar of type t (STRING/ARRAY handled by the caller). */
static size_t vsize(enum gguf_vtype t)
{
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

/* Narrow a widened scalar back to its file encoding. */
static void put_scalar(wbuf *b, const gguf_kv *kv)
{
    uint8_t tmp[8];
    switch (kv->type) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: tmp[0] = (uint8_t)kv->v.u64; break;
    case GGUF_UINT16: case GGUF_INT16: { uint16_t x = (uint16_t)kv->v.u64; memcpy(tmp, &x, 2); break; }
    case GGUF_UINT32: case GGUF_INT32: { uint32_t x = (uint32_t)kv->v.u64; memcpy(tmp, &x, 4); break; }
    case GGUF_FLOAT32: { float x = (float)kv->v.f64; memcpy(tmp, &x, 4); break; }
    default: memcpy(tmp, &kv->v, 8); break; /* u64, i64, f64 are stored whole */
    }
    wb_put(b, tmp, vsize(kv->type));
}

void gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv)
{
    char key[4096];
    uint64_t n = kv->key.len < sizeof key - 1 ? kv->key.len : sizeof key - 1;
    memcpy(key, kv->key.ptr, n);
    key[n] = 0;
    wbuf *b = kv_slot(w, key);
    wb_u32(b, kv->type);
    if (kv->type == GGUF_STRING) {
        wb_str(b, kv->str.ptr, kv->str.len);
    } else if (kv->type == GGUF_ARRAY) {
        wb_u32(b, kv->arr_type);
        wb_u64(b, kv->arr_n);
        if (kv->arr_type == GGUF_STRING)
            for (uint64_t i = 0; i < kv->arr_n; i++)
                wb_str(b, kv->arr_strs[i].ptr, kv->arr_strs[i].len);
        else
            wb_put(b, kv->arr_data, (size_t)(kv->arr_n * vsize(kv->arr_type)));
    } else {
        put_scalar(b, kv);
    }
}

static void set_error(gguf_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(gguf_writer *w, const char *fmt, ...)
{
    if (w->error[0]) return; /* the first error is the one worth reporting */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->error, sizeof w->error, fmt, ap);
    va_end(ap);
}

/* Shared by both add_tensor variants: validate the shape and record it. */
static wtensor *tensor_new(gguf_writer *w, const char *name, enum qk_type type,
                           uint32_t n_dims, const uint64_t *ne)
{
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) { set_error(w, "duplicate tensor '%s'", name); return NULL; }
    const qk_type_traits *tr = quant_traits((uint32_t)type);
    if (!tr) { set_error(w, "tensor '%s': unknown type %u", name, (unsigned)type); return NULL; }
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) { set_error(w, "tensor '%s': n_dims %u out of range", name, n_dims); return NULL; }
    if (ne[0] == 0 || ne[0] % tr->block_size) {
        set_error(w, "tensor '%s': ne[0] = %llu is not a positive multiple of the block size", name, (unsigned long long)ne[0]);
        return NULL;
    }
    uint64_t size = ne[0] / tr->block_size * tr->type_size;
    for (uint32_t d = 1; d < n_dims; d++) {
        if (ne[d] == 0 || __builtin_mul_overflow(size, ne[d], &size)) {
            set_error(w, "tensor '%s': dimension %u is zero or overflows", name, d);
            return NULL;
        }
    }
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 64;
        w->t = xrealloc(w->t, w->cap_t * sizeof *w->t);
    }
    wtensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name = xstrdup(name);
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = (uint32_t)d < n_dims ? ne[d] : 1;
    t->size = size;
    return t;
}

void gguf_writer_add_tensor(gguf_writer *w, const char *name, enum qk_type type,
                            uint32_t n_dims, const uint64_t *ne, const void *data)
{
    wtensor *t = tensor_new(w, name, type, n_dims, ne);
    if (!t) return;
    t->data = malloc(t->size ? t->size : 1);
    if (!t->data) {
        set_error(w, "tensor '%s': out of memory for %llu bytes", name, (unsigned long long)t->size);
        free(t->name);
        w->n_t--;
        return;
    }
    memcpy(t->data, data, t->size);
}

void gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, enum qk_type type,
                                 uint32_t n_dims, const uint64_t *ne,
                                 gguf_tensor_fill_fn fill, void *ctx)
{
    wtensor *t = tensor_new(w, name, type, n_dims, ne);
    if (!t) return;
    t->fill = fill;
    t->ctx = ctx;
}

static uint64_t pad_to(uint64_t x) { return (WRITER_ALIGNMENT - x % WRITER_ALIGNMENT) % WRITER_ALIGNMENT; }

static int put_all(FILE *fp, const void *p, size_t n)
{
    return fwrite(p, 1, n, fp) == n ? 0 : -1;
}

/* Everything before the tensor data: header, key/values, tensor infos, and
 * the padding to the data section. Assigns each tensor's offset. */
static void build_head(gguf_writer *w, wbuf *h)
{
    wb_u32(h, GGUF_MAGIC);
    wb_u32(h, 3);
    wb_u64(h, w->n_t);
    wb_u64(h, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        wb_str(h, w->kv[i].key, strlen(w->kv[i].key));
        wb_put(h, w->kv[i].val.p, w->kv[i].val.n);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        wb_str(h, t->name, strlen(t->name));
        wb_u32(h, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) wb_u64(h, t->ne[d]);
        wb_u32(h, (uint32_t)t->type);
        t->offset = off;
        wb_u64(h, off);
        off += t->size + pad_to(t->size);
    }
    static const uint8_t zeros[WRITER_ALIGNMENT];
    wb_put(h, zeros, pad_to(h->n));
}

int gguf_writer_write(gguf_writer *w, const char *path, char *err, size_t errlen)
{
    static const uint8_t zeros[WRITER_ALIGNMENT];
    if (w->error[0]) { snprintf(err, errlen, "%s", w->error); return -1; }
    size_t plen = strlen(path);
    char *tmp = xrealloc(NULL, plen + 5);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return -2;
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 20);
    wbuf h = {0};
    build_head(w, &h);
    int rc = put_all(fp, h.p, h.n);
    free(h.p);
    for (size_t i = 0; i < w->n_t && rc == 0; i++) {
        wtensor *t = &w->t[i];
        if (t->fill) {
            void *buf = malloc(t->size ? t->size : 1);
            if (!buf) {
                snprintf(err, errlen, "tensor '%s': out of memory for %llu bytes", t->name,
                         (unsigned long long)t->size);
                rc = -3;
                break;
            }
            char msg[256] = "";
            if (t->fill(t->ctx, buf, t->size, msg, sizeof msg) != 0) {
                snprintf(err, errlen, "tensor '%s': %s", t->name, msg);
                free(buf);
                rc = -1;
                break;
            }
            rc = put_all(fp, buf, t->size);
            free(buf);
        } else {
            rc = put_all(fp, t->data, t->size);
        }
        if (rc == 0) rc = put_all(fp, zeros, pad_to(t->size));
        if (rc) snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        if (rc == 0) { snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(errno)); rc = -2; }
    }
    if (fclose(fp) != 0 && rc == 0) {
        snprintf(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
        rc = -2;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        snprintf(err, errlen, "rename %s -> %s: %s", tmp, path, strerror(errno));
        rc = -2;
    }
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}
