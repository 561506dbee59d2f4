/* fuzz_gbnf.c -- libFuzzer target: compile the input as a GBNF grammar; when
 * it compiles, walk bytes of the input through a byte-level matcher and a
 * token matcher over stories260K's vocabulary (when $QKVD_SHARED has it),
 * choosing tokens from the mask. Nothing may crash, leak or hang; every
 * token the mask allows must be accepted. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_grammar_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    grammar *g = NULL;
    char err[256];
    if (grammar_compile_gbnf((const char *)data, size, &g, err, sizeof err) != 0) {
        if (g || !err[0]) abort(); /* a failure always explains itself */
        return 0;
    }
    fuzz_grammar_exercise(g, data, size);
    grammar_release(g);
    return 0;
}
