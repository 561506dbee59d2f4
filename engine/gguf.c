/* gguf.c -- the GGUF v2/v3 reader: mmap, validate everything, then hand out
 * pointers into the mapping.
 *
 * Layout (little-endian):
 *   u32 magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset },
 *   padding to general.alignment (default 32), tensor data.
 * A string is u64 length + bytes; an array value is u32 element type, u64
 * count, elements.
 *
 * Every count read from the file is checked against the bytes that remain
 * before anything is allocated from it, so a hostile header can make us
 * allocate at most a small multiple of the file size. The writer lives in
 * gguf_write.c. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_E_FORMAT (-1)
#define GGUF_E_IO     (-2)
#define GGUF_E_NOMEM  (-3)

/* Smallest encodings, used to bound counts by the bytes that remain. A key
 * or tensor name is never empty. */
#define KV_MIN_BYTES     (8 + 1 + 4 + 1)          /* key, type, 1-byte value */
#define TENSOR_MIN_BYTES (8 + 1 + 4 + 8 + 4 + 8)  /* name, n_dims, ne[0], type, offset */

/* Reader state: a cursor over the image plus the error sink. */
typedef struct rd {
    const uint8_t *b;
    uint64_t size, pos;
    char *err; size_t errlen;
} rd;

static int fail(rd *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(rd *r, const char *fmt, ...)
{
    if (r->err && r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errlen, fmt, ap);
        va_end(ap);
    }
    return GGUF_E_FORMAT;
}

/* Render a name from the file for an error message: printable ASCII as is,
 * anything else as \xNN, cut at 64 source bytes. */
static const char *shown(char out[300], const char *p, uint64_t len)
{
    size_t o = 0;
    uint64_t n = len < 64 ? len : 64;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    }
    if (len > n) { memcpy(out + o, "...", 3); o += 3; }
    out[o] = 0;
    return out;
}

static uint64_t remaining(const rd *r) { return r->size - r->pos; }

/* Check that n more bytes exist; `what` names what was being read. */
static int need(rd *r, uint64_t n, const char *what)
{
    if (n > remaining(r))
        return fail(r, "truncated file: %s needs %llu bytes at offset %llu, but the file "
                    "has only %llu bytes", what, (unsigned long long)n,
                    (unsigned long long)r->pos, (unsigned long long)r->size);
    return 0;
}

static uint32_t ld_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t ld_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int read_u32(rd *r, uint32_t *v, const char *what)
{
    if (need(r, 4, what)) return GGUF_E_FORMAT;
    *v = ld_u32(r->b + r->pos);
    r->pos += 4;
    return 0;
}

static int read_u64(rd *r, uint64_t *v, const char *what)
{
    if (need(r, 8, what)) return GGUF_E_FORMAT;
    *v = ld_u64(r->b + r->pos);
    r->pos += 8;
    return 0;
}

static int read_str(rd *r, gguf_str *s, const char *what)
{
    uint64_t len;
    if (read_u64(r, &len, what)) return GGUF_E_FORMAT;
    if (len > remaining(r))
        return fail(r, "%s: string length %llu at offset %llu extends past end of file "
                    "(size %llu)", what, (unsigned long long)len,
                    (unsigned long long)(r->pos - 8), (unsigned long long)r->size);
    s->ptr = (const char *)r->b + r->pos;
    s->len = len;
    r->pos += len;
    return 0;
}

/* Bytes of one scalar element; 0 for STRING/ARRAY/unknown. */
static uint32_t scalar_size(uint32_t t)
{
    switch (t) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

const char *gguf_vtype_name(enum gguf_vtype t)
{
    static const char *const names[GGUF_VTYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
        "u64", "i64", "f64",
    };
    return (unsigned)t < GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

static int is_signed_type(uint32_t t)
{
    return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64;
}

static int is_unsigned_type(uint32_t t)
{
    return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64;
}

/* Widen the scalar of type t at p into kv->v. */
static void widen(gguf_kv *kv, uint32_t t, const uint8_t *p)
{
    switch (t) {
    case GGUF_UINT8: case GGUF_BOOL: kv->v.u64 = p[0]; break;
    case GGUF_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case GGUF_UINT16: { uint16_t x; memcpy(&x, p, 2); kv->v.u64 = x; break; }
    case GGUF_INT16: { int16_t x; memcpy(&x, p, 2); kv->v.i64 = x; break; }
    case GGUF_UINT32: kv->v.u64 = ld_u32(p); break;
    case GGUF_INT32: { int32_t x; memcpy(&x, p, 4); kv->v.i64 = x; break; }
    case GGUF_FLOAT32: { float x; memcpy(&x, p, 4); kv->v.f64 = x; break; }
    case GGUF_UINT64: kv->v.u64 = ld_u64(p); break;
    case GGUF_INT64: { int64_t x; memcpy(&x, p, 8); kv->v.i64 = x; break; }
    case GGUF_FLOAT64: { double x; memcpy(&x, p, 8); kv->v.f64 = x; break; }
    default: break;
    }
}

/* ---- duplicate detection: open addressing over string hashes ---------- */

static uint64_t str_hash(const char *p, uint64_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < len; i++) { h ^= (uint8_t)p[i]; h *= 1099511628211ull; }
    return h;
}

static int str_eq(const gguf_str *a, const gguf_str *b)
{
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

/* Find the first pair of equal strings among n (each at base + i*stride).
 * Returns 1 and sets *i0,*i1 on a duplicate, 0 if none, -1 on OOM. */
static int find_duplicate(const void *base, size_t stride, uint64_t n, uint64_t *i0, uint64_t *i1)
{
    if (n < 2) return 0;
    uint64_t cap = 4;
    while (cap < 2 * n) cap <<= 1;
    uint64_t *slot = malloc(cap * sizeof *slot); /* index+1, 0 = empty */
    if (!slot) return -1;
    memset(slot, 0, cap * sizeof *slot);
    int found = 0;
    for (uint64_t i = 0; i < n && !found; i++) {
        const gguf_str *s = (const gguf_str *)((const char *)base + i * stride);
        uint64_t h = str_hash(s->ptr, s->len) & (cap - 1);
        for (;;) {
            if (!slot[h]) { slot[h] = i + 1; break; }
            const gguf_str *o = (const gguf_str *)((const char *)base + (slot[h] - 1) * stride);
            if (str_eq(s, o)) { *i0 = slot[h] - 1; *i1 = i; found = 1; break; }
            h = (h + 1) & (cap - 1);
        }
    }
    free(slot);
    return found;
}

/* ---- key/value section ------------------------------------------------ */

static int parse_kv(rd *r, gguf_file *f, uint64_t idx)
{
    gguf_kv *kv = &f->kv[idx];
    char what[400], nm[300];
    snprintf(what, sizeof what, "key/value #%llu key", (unsigned long long)idx);
    if (read_str(r, &kv->key, what)) return GGUF_E_FORMAT;
    if (kv->key.len == 0)
        return fail(r, "key/value #%llu: empty key", (unsigned long long)idx);
    shown(nm, kv->key.ptr, kv->key.len);
    snprintf(what, sizeof what, "key '%s'", nm);
    uint32_t type;
    if (read_u32(r, &type, what)) return GGUF_E_FORMAT;
    if (type >= GGUF_VTYPE_COUNT)
        return fail(r, "key '%s': unknown value type %u", nm, type);
    kv->type = (enum gguf_vtype)type;

    if (type == GGUF_STRING)
        return read_str(r, &kv->str, what);

    if (type != GGUF_ARRAY) {
        uint32_t sz = scalar_size(type);
        if (need(r, sz, what)) return GGUF_E_FORMAT;
        const uint8_t *p = r->b + r->pos;
        if (type == GGUF_BOOL && p[0] > 1)
            return fail(r, "key '%s': invalid bool value %u (must be 0 or 1)", nm, p[0]);
        widen(kv, type, p);
        r->pos += sz;
        return 0;
    }

    uint32_t et;
    uint64_t n;
    if (read_u32(r, &et, what) || read_u64(r, &n, what)) return GGUF_E_FORMAT;
    if (et == GGUF_ARRAY)
        return fail(r, "key '%s': arrays of arrays are not supported", nm);
    if (et >= GGUF_VTYPE_COUNT)
        return fail(r, "key '%s': unknown array element type %u", nm, et);
    kv->arr_type = (enum gguf_vtype)et;
    uint64_t min_elem = et == GGUF_STRING ? 8 : scalar_size(et);
    if (n > remaining(r) / min_elem)
        return fail(r, "key '%s': array of %llu %s elements cannot fit in the %llu bytes "
                    "left in the file", nm, (unsigned long long)n, gguf_vtype_name(et),
                    (unsigned long long)remaining(r));
    kv->arr_n = n;
    if (et != GGUF_STRING) {
        kv->arr_data = r->b + r->pos;
        r->pos += n * min_elem;
        return 0;
    }
    kv->arr_strs = malloc((n ? n : 1) * sizeof *kv->arr_strs);
    if (!kv->arr_strs)
        return fail(r, "key '%s': out of memory for %llu strings", nm, (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "key '%s' element %llu", nm, (unsigned long long)i);
        if (read_str(r, &kv->arr_strs[i], what)) return GGUF_E_FORMAT;
    }
    return 0;
}

/* ---- tensor infos ----------------------------------------------------- */

static int parse_tensor_info(rd *r, gguf_file *f, uint64_t idx)
{
    gguf_tensor *t = &f->tensors[idx];
    char what[400], nm[300];
    snprintf(what, sizeof what, "tensor #%llu name", (unsigned long long)idx);
    if (read_str(r, &t->name, what)) return GGUF_E_FORMAT;
    if (t->name.len == 0)
        return fail(r, "tensor #%llu: empty name", (unsigned long long)idx);
    shown(nm, t->name.ptr, t->name.len);
    snprintf(what, sizeof what, "tensor '%s' info", nm);
    if (read_u32(r, &t->n_dims, what)) return GGUF_E_FORMAT;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail(r, "tensor '%s': n_dims %u out of range 1..%d", nm, t->n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (read_u64(r, &t->ne[d], what)) return GGUF_E_FORMAT;
        if (t->ne[d] == 0)
            return fail(r, "tensor '%s': dimension %u is zero", nm, d);
        if (t->ne[d] > (uint64_t)INT64_MAX)
            return fail(r, "tensor '%s': dimension %u = %llu is too large", nm, d,
                        (unsigned long long)t->ne[d]);
    }
    uint32_t type;
    if (read_u32(r, &type, what) || read_u64(r, &t->offset, what)) return GGUF_E_FORMAT;
    const qk_type_traits *tr = quant_traits(type);
    if (!tr || tr->block_size == 0 || tr->type_size == 0)
        return fail(r, "tensor '%s': unknown tensor type id %u", nm, type);
    t->type = (enum qk_type)type;

    uint64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        if (__builtin_mul_overflow(nel, t->ne[d], &nel) || nel > (uint64_t)INT64_MAX)
            return fail(r, "tensor '%s': element count overflows (shape %llu x %llu x %llu x %llu)",
                        nm, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                        (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
    if (t->ne[0] % tr->block_size)
        return fail(r, "tensor '%s': ne[0] = %llu is not a multiple of the %s block size %u",
                    nm, (unsigned long long)t->ne[0], tr->name, tr->block_size);
    /* Bytes: blocks per row x block size x rows; each step overflow-checked. */
    uint64_t size = (t->ne[0] / tr->block_size);
    int ovf = __builtin_mul_overflow(size, (uint64_t)tr->type_size, &size);
    for (int d = 1; d < GGUF_MAX_DIMS; d++)
        ovf |= __builtin_mul_overflow(size, t->ne[d], &size);
    if (ovf)
        return fail(r, "tensor '%s': byte size overflows", nm);
    t->size = size;
    if (t->offset % f->alignment)
        return fail(r, "tensor '%s': offset %llu is not a multiple of the alignment %llu",
                    nm, (unsigned long long)t->offset, (unsigned long long)f->alignment);
    return 0;
}

/* ---- top level -------------------------------------------------------- */

static int parse_alignment(rd *r, gguf_file *f)
{
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find(f, "general.alignment");
    if (!kv) return 0;
    if (kv->type != GGUF_UINT32)
        return fail(r, "key 'general.alignment': must be u32, found %s", gguf_vtype_name(kv->type));
    uint64_t a = kv->v.u64;
    if (a == 0 || (a & (a - 1)))
        return fail(r, "key 'general.alignment': %llu is not a non-zero power of two",
                    (unsigned long long)a);
    f->alignment = a;
    return 0;
}

int gguf_parse(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen)
{
    rd r = { buf, size, 0, err, errlen };
    *out = NULL;
    if (err && errlen) err[0] = 0;
    if (!buf && size) return fail(&r, "no buffer");
    gguf_file *f = calloc(1, sizeof *f);
    if (!f) return fail(&r, "out of memory"), GGUF_E_NOMEM;
    f->fd = -1;
    f->map = (void *)buf;
    f->map_size = size;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    int rc = GGUF_E_FORMAT;
    char nm[300];

    uint32_t magic;
    if (read_u32(&r, &magic, "header magic")) goto bad;
    if (magic != GGUF_MAGIC) {
        fail(&r, "bad magic %s: not a GGUF file", shown(nm, (const char *)buf, 4));
        goto bad;
    }
    if (read_u32(&r, &f->version, "header version")) goto bad;
    if (f->version == 1) {
        fail(&r, "GGUF version 1 is not supported (v1 used 32-bit counts); re-convert the file to v3");
        goto bad;
    }
    if (f->version != 2 && f->version != 3) {
        if (f->version == 0x02000000u || f->version == 0x03000000u)
            fail(&r, "GGUF version %u looks byte-swapped: big-endian files are not supported",
                 f->version);
        else
            fail(&r, "unsupported GGUF version %u (expected 2 or 3)", f->version);
        goto bad;
    }
    if (read_u64(&r, &f->n_tensors, "header n_tensors") || read_u64(&r, &f->n_kv, "header n_kv"))
        goto bad;
    /* Counts bounded by the bytes left before any allocation depends on them. */
    if (f->n_kv > remaining(&r) / KV_MIN_BYTES) {
        fail(&r, "header: n_kv = %llu is impossible: only %llu bytes follow the header "
             "and each key/value takes at least %d", (unsigned long long)f->n_kv,
             (unsigned long long)remaining(&r), KV_MIN_BYTES);
        goto bad;
    }
    if (f->n_tensors > (remaining(&r) - f->n_kv * KV_MIN_BYTES) / TENSOR_MIN_BYTES) {
        fail(&r, "header: n_tensors = %llu is impossible: only %llu bytes follow the header "
             "and each tensor info takes at least %d", (unsigned long long)f->n_tensors,
             (unsigned long long)remaining(&r), TENSOR_MIN_BYTES);
        goto bad;
    }

    uint64_t n_kv = f->n_kv;
    f->n_kv = 0; /* counts what is allocated so gguf_close frees only that */
    f->kv = calloc(n_kv ? n_kv : 1, sizeof *f->kv);
    if (!f->kv) { fail(&r, "out of memory for %llu keys", (unsigned long long)n_kv); rc = GGUF_E_NOMEM; goto bad; }
    for (uint64_t i = 0; i < n_kv; i++) {
        f->n_kv = i + 1;
        if (parse_kv(&r, f, i)) goto bad;
    }
    uint64_t d0, d1;
    int dup = find_duplicate(f->kv, sizeof *f->kv, f->n_kv, &d0, &d1);
    if (dup < 0) { fail(&r, "out of memory"); rc = GGUF_E_NOMEM; goto bad; }
    if (dup) {
        fail(&r, "duplicate key '%s' (key/values #%llu and #%llu)",
             shown(nm, f->kv[d1].key.ptr, f->kv[d1].key.len), (unsigned long long)d0,
             (unsigned long long)d1);
        goto bad;
    }
    if (parse_alignment(&r, f)) goto bad;

    if (f->n_tensors > remaining(&r) / TENSOR_MIN_BYTES) {
        fail(&r, "header: n_tensors = %llu is impossible: only %llu bytes follow the "
             "key/values and each tensor info takes at least %d",
             (unsigned long long)f->n_tensors, (unsigned long long)remaining(&r), TENSOR_MIN_BYTES);
        goto bad;
    }
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    if (!f->tensors) { fail(&r, "out of memory for tensor infos"); rc = GGUF_E_NOMEM; goto bad; }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (parse_tensor_info(&r, f, i)) goto bad;
    dup = find_duplicate(&f->tensors[0].name, sizeof *f->tensors, f->n_tensors, &d0, &d1);
    if (dup < 0) { fail(&r, "out of memory"); rc = GGUF_E_NOMEM; goto bad; }
    if (dup) {
        fail(&r, "duplicate tensor name '%s' (tensors #%llu and #%llu)",
             shown(nm, f->tensors[d1].name.ptr, f->tensors[d1].name.len),
             (unsigned long long)d0, (unsigned long long)d1);
        goto bad;
    }

    /* The data section starts at the next multiple of the alignment. A file
     * without tensors (a vocabulary-only GGUF) may end before that point. */
    uint64_t a = f->alignment;
    f->data_offset = r.pos + (a - r.pos % a) % a;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        uint64_t avail = size > f->data_offset ? size - f->data_offset : 0;
        if (t->offset > avail || t->size > avail - t->offset) {
            fail(&r, "tensor '%s': data [offset %llu, size %llu) extends past end of file "
                 "(data section starts at %llu, file size %llu)",
                 shown(nm, t->name.ptr, t->name.len), (unsigned long long)t->offset,
                 (unsigned long long)t->size, (unsigned long long)f->data_offset,
                 (unsigned long long)size);
            goto bad;
        }
        t->data = (const uint8_t *)buf + f->data_offset + t->offset;
    }
    *out = f;
    return 0;
bad:
    f->map = NULL; /* the caller's buffer is not ours to release */
    gguf_close(f);
    return rc;
}

int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return GGUF_E_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return GGUF_E_IO;
    }
    if (st.st_size == 0) {
        snprintf(err, errlen, "%s: empty file", path);
        close(fd);
        return GGUF_E_FORMAT;
    }
    size_t sz = (size_t)st.st_size;
    void *map = mmap(NULL, sz, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: mmap failed: %s", path, strerror(errno));
        close(fd);
        return GGUF_E_IO;
    }
    char msg[512];
    gguf_file *f;
    int rc = gguf_parse(map, sz, &f, msg, sizeof msg);
    if (rc) {
        snprintf(err, errlen, "%s: %s", path, msg);
        munmap(map, sz);
        close(fd);
        return rc;
    }
    f->map = map;
    f->map_size = sz;
    f->fd = fd;
    *out = f;
    return 0;
}

void gguf_close(gguf_file *f)
{
    if (!f) return;
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++)
            free(f->kv[i].arr_strs);
    free(f->kv);
    free(f->tensors);
    if (f->fd >= 0) {
        if (f->map) munmap(f->map, f->map_size);
        close(f->fd);
    }
    free(f);
}

/* ---- lookups ---------------------------------------------------------- */

static int str_is(const gguf_str *s, const char *z)
{
    size_t n = strlen(z);
    return s->len == n && memcmp(s->ptr, z, n) == 0;
}

const gguf_kv *gguf_find(const gguf_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (str_is(&f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    if (!f || !name || !f->tensors) return NULL;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (str_is(&f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return -1;
    if (is_unsigned_type(kv->type) && kv->v.u64 <= UINT32_MAX) { *out = (uint32_t)kv->v.u64; return 0; }
    if (is_signed_type(kv->type) && kv->v.i64 >= 0 && kv->v.i64 <= (int64_t)UINT32_MAX) {
        *out = (uint32_t)kv->v.i64;
        return 0;
    }
    return -1;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return -1;
    if (is_signed_type(kv->type)) { *out = kv->v.i64; return 0; }
    if (is_unsigned_type(kv->type) && kv->v.u64 <= (uint64_t)INT64_MAX) { *out = (int64_t)kv->v.u64; return 0; }
    return -1;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return -1;
    if (kv->type == GGUF_FLOAT32 || kv->type == GGUF_FLOAT64) { *out = (float)kv->v.f64; return 0; }
    if (is_signed_type(kv->type)) { *out = (float)kv->v.i64; return 0; }
    if (is_unsigned_type(kv->type)) { *out = (float)kv->v.u64; return 0; }
    return -1;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_BOOL) return -1;
    *out = kv->v.u64 != 0;
    return 0;
}

int gguf_get_strv(const gguf_file *f, const char *key, gguf_str *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_STRING) return -1;
    *out = kv->str;
    return 0;
}

int gguf_get_str(const gguf_file *f, const char *key, char *buf, size_t buflen)
{
    gguf_str s;
    if (gguf_get_strv(f, key, &s) || !buf || buflen == 0) return -1;
    size_t n = s.len < buflen - 1 ? (size_t)s.len : buflen - 1;
    memcpy(buf, s.ptr, n);
    buf[n] = 0;
    return 0;
}

/* Element i of a scalar array as raw bytes, or NULL when out of range. */
static const uint8_t *arr_elem(const gguf_kv *kv, uint64_t i, uint32_t *t)
{
    if (!kv || kv->type != GGUF_ARRAY || i >= kv->arr_n || !kv->arr_data) return NULL;
    uint32_t sz = scalar_size(kv->arr_type);
    if (!sz) return NULL;
    *t = kv->arr_type;
    return (const uint8_t *)kv->arr_data + i * sz;
}

int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i)
{
    uint32_t t;
    const uint8_t *p = arr_elem(kv, i, &t);
    if (!p) return 0;
    gguf_kv tmp;
    widen(&tmp, t, p);
    if (t == GGUF_FLOAT32 || t == GGUF_FLOAT64) {
        /* Out-of-range or NaN floats have no integer value: clamp instead of UB. */
        double d = tmp.v.f64;
        if (!(d > -9.2e18)) return d != d ? 0 : INT64_MIN;
        if (d > 9.2e18) return INT64_MAX;
        return (int64_t)d;
    }
    return is_unsigned_type(t) || t == GGUF_BOOL ? (int64_t)tmp.v.u64 : tmp.v.i64;
}

double gguf_arr_f64(const gguf_kv *kv, uint64_t i)
{
    uint32_t t;
    const uint8_t *p = arr_elem(kv, i, &t);
    if (!p) return 0;
    gguf_kv tmp;
    widen(&tmp, t, p);
    if (t == GGUF_FLOAT32 || t == GGUF_FLOAT64) return tmp.v.f64;
    return is_unsigned_type(t) || t == GGUF_BOOL ? (double)tmp.v.u64 : (double)tmp.v.i64;
}
