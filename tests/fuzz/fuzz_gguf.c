/* fuzz_gguf.c -- libFuzzer target: parse any bytes as GGUF, then touch every
 * value and every tensor byte range the parser vouched for, so ASan catches
 * any pointer that escapes the buffer. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_file *f;
    char err[512];
    if (gguf_parse(data, size, &f, err, sizeof err) != 0) {
        if (err[0] == 0) __builtin_trap(); /* every rejection must say why */
        return 0;
    }
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->key.len) sink += (uint8_t)kv->key.ptr[kv->key.len - 1];
        char key[128];
        size_t n = kv->key.len < sizeof key - 1 ? (size_t)kv->key.len : sizeof key - 1;
        memcpy(key, kv->key.ptr, n);
        key[n] = 0;
        uint32_t u; int64_t i64; float fl; int b; char buf[32]; gguf_str s;
        sink += (uint64_t)gguf_get_u32(f, key, &u) + (uint64_t)gguf_get_i64(f, key, &i64) +
                (uint64_t)gguf_get_f32(f, key, &fl) + (uint64_t)gguf_get_bool(f, key, &b) +
                (uint64_t)gguf_get_str(f, key, buf, sizeof buf) + (uint64_t)gguf_get_strv(f, key, &s);
        if (kv->type == GGUF_STRING && kv->str.len) sink += (uint8_t)kv->str.ptr[kv->str.len - 1];
        if (kv->type == GGUF_ARRAY) {
            if (kv->arr_type == GGUF_STRING) {
                for (uint64_t j = 0; j < kv->arr_n; j++)
                    if (kv->arr_strs[j].len) sink += (uint8_t)kv->arr_strs[j].ptr[kv->arr_strs[j].len - 1];
            } else if (kv->arr_n) {
                sink += (uint64_t)gguf_arr_i64(kv, 0) + (uint64_t)gguf_arr_i64(kv, kv->arr_n - 1);
                sink += gguf_arr_f64(kv, kv->arr_n - 1) > 0.5; /* no float->int cast: values are arbitrary */
            }
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        const uint8_t *d = t->data;
        sink += d[0] + d[t->size - 1] + (uint8_t)t->name.ptr[t->name.len - 1];
        char name[128];
        size_t n = t->name.len < sizeof name - 1 ? (size_t)t->name.len : sizeof name - 1;
        memcpy(name, t->name.ptr, n);
        name[n] = 0;
        sink += gguf_find_tensor(f, name) != NULL;
    }
    (void)sink;
    gguf_close(f);
    return 0;
}
