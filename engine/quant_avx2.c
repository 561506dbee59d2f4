/* quant_avx2.c -- AVX2/FMA/F16C kernels (compiled with those flags; only
 * called after quant_init saw the CPU support them). */
#include "quant_internal.h"

#include <immintrin.h>

void quant__avx2_fill(quant__kernels *k)
{
    k->name = "avx2";
}
