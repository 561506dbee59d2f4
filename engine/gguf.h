/* gguf.h -- read (mmap) and write GGUF v2/v3 files.
 *
 * The reader validates everything before anything is used: magic, version,
 * counts against the file size, string lengths, value types, array lengths,
 * tensor dims (and the overflow of their product), tensor types, alignment,
 * and every tensor's [offset, offset+size) inside the data section. A file that
 * fails any check is rejected with a message naming the problem and the key or
 * tensor; nothing in this module aborts or exits on bad input.
 *
 * Ownership: a gguf_file owns its mapping; every pointer handed out (strings,
 * array data, tensor data) points into the mapping or into the gguf_file and
 * lives until gguf_close(). Strings from the file are NOT NUL-terminated in
 * the mapping; gguf_str holds pointer + length. */
#ifndef QKVD_GGUF_H
#define QKVD_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "quant.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

enum gguf_vtype {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3,
    GGUF_UINT32 = 4, GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7,
    GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12,
    GGUF_VTYPE_COUNT
};

typedef struct gguf_str {
    const char *ptr; /* not NUL-terminated; points into the mapping */
    uint64_t len;
} gguf_str;

typedef struct gguf_kv {
    gguf_str key;
    enum gguf_vtype type;
    /* scalar value (type != STRING/ARRAY) */
    union {
        uint64_t u64; int64_t i64; double f64; /* widened copies of the scalar */
    } v;
    gguf_str str;              /* type == STRING */
    enum gguf_vtype arr_type;  /* type == ARRAY: element type */
    uint64_t arr_n;            /* type == ARRAY: element count */
    const void *arr_data;      /* type == ARRAY of scalars: raw little-endian elements in the mapping */
    gguf_str *arr_strs;        /* type == ARRAY of STRING: arr_n entries, owned by the gguf_file */
} gguf_kv;

typedef struct gguf_tensor {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length (contiguous); unused dims are 1 */
    enum qk_type type;
    uint64_t offset;            /* relative to the data section */
    uint64_t size;              /* bytes, from type and shape */
    const void *data;           /* inside the mapping */
} gguf_tensor;

typedef struct gguf_file {
    void *map; size_t map_size; int fd; /* gguf_parse: map = the caller's buffer, fd = -1 */
    uint32_t version;
    uint64_t n_kv; gguf_kv *kv;
    uint64_t n_tensors; gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;       /* start of the tensor data section in the file */
} gguf_file;

/* Open and validate `path`. On success returns 0 and *out owns the mapping.
 * On failure returns a negative code, writes a one-line message naming the
 * problem (and key or tensor) into err, and *out is NULL. */
int gguf_open(const char *path, gguf_file **out, char *err, size_t errlen);

/* Parse and validate an in-memory image (used by gguf_open and the fuzzer).
 * The buffer is not copied: it must outlive the result. */
int gguf_parse(const void *buf, size_t size, gguf_file **out, char *err, size_t errlen);

/* Free everything; accepts NULL. Unmaps the file if gguf_open mapped it. */
void gguf_close(gguf_file *f);

/* Lookups (NULL / -1 when absent). Keys compared exactly. */
const gguf_kv *gguf_find(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: 0 and *out set when the key exists and its value converts
 * losslessly (any integer type to the integer, any number to the float);
 * -1 when absent or of the wrong type. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
/* Copy a string value into buf (NUL-terminated, truncated to buflen-1); 0 or -1. */
int gguf_get_str(const gguf_file *f, const char *key, char *buf, size_t buflen);
/* The raw string (pointer + length into the mapping), or -1. */
int gguf_get_strv(const gguf_file *f, const char *key, gguf_str *out);

/* Scalar element i of an array kv, widened. */
int64_t gguf_arr_i64(const gguf_kv *kv, uint64_t i);
double  gguf_arr_f64(const gguf_kv *kv, uint64_t i);

const char *gguf_vtype_name(enum gguf_vtype t);

/* ---- writer (used by `qkvd make-model`) -------------------------------- */

typedef struct gguf_writer gguf_writer; /* opaque */

/* Create an empty writer (version 3, alignment 32). Never NULL (aborts on OOM:
 * bookkeeping only). */
gguf_writer *gguf_writer_create(void);
void gguf_writer_free(gguf_writer *w); /* accepts NULL */

/* Metadata setters; the key and values are copied. */
void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
void gguf_writer_set_bool(gguf_writer *w, const char *key, int v);
void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
void gguf_writer_set_arr_i32(gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
void gguf_writer_set_arr_f32(gguf_writer *w, const char *key, const float *v, uint64_t n);
/* Array of n strings; lens may be NULL (then each string is NUL-terminated). */
void gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *v,
                             const uint64_t *lens, uint64_t n);
/* Copy a key/value from an opened file verbatim (for --vocab-from). */
void gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv);

/* Add a tensor; `data` (gguf tensor bytes for that type and shape) is copied.
 * ne as in gguf_tensor, n_dims 1..4. */
void gguf_writer_add_tensor(gguf_writer *w, const char *name, enum qk_type type,
                            uint32_t n_dims, const uint64_t *ne, const void *data);

/* Producer of a tensor's bytes at write time (so a big model is never held
 * in memory whole): fill dst with exactly `size` bytes of gguf tensor data.
 * Returns 0, or negative with a message in err (the write then fails). */
typedef int (*gguf_tensor_fill_fn)(void *ctx, void *dst, size_t size, char *err, size_t errlen);

/* Add a tensor whose data comes from fill(ctx, ...) during gguf_writer_write.
 * ctx is not owned and must stay valid until the write returns. */
void gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, enum qk_type type,
                                 uint32_t n_dims, const uint64_t *ne,
                                 gguf_tensor_fill_fn fill, void *ctx);

/* Write the file (atomically: to path.tmp, then rename). 0 or negative with err. */
int gguf_writer_write(gguf_writer *w, const char *path, char *err, size_t errlen);

#endif
