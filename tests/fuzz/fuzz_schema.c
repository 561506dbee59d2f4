/* fuzz_schema.c -- libFuzzer target: compile the input (after one option
 * byte: whitespace allowance) as a JSON Schema; when it compiles, walk the
 * same bytes and mask-chosen tokens through matchers as fuzz_gbnf does.
 * Unsupported or bad schemas must fail with a message, never crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_grammar_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    grammar_options opt = {data[0] % 4};
    grammar *g = NULL;
    char err[512];
    const char *json = (const char *)data + 1;
    if (grammar_compile_schema(json, size - 1, &opt, &g, err, sizeof err) != 0) {
        if (g || !err[0]) abort();
        return 0;
    }
    char *text = grammar_schema_to_gbnf(json, size - 1, &opt, err, sizeof err);
    if (!text) abort(); /* compiled once, must translate again */
    free(text);
    fuzz_grammar_exercise(g, data + 1, size - 1);
    grammar_release(g);
    return 0;
}
