/* quant_avx512.c -- the AVX2 kernels rebuilt for CPUs with AVX-512 F/BW/VL
 * and VNNI: byte dot products become one vpdpbusd (u8 x s8 -> s32 with
 * accumulate) instead of vpmaddubsw + vpmaddwd, and the compiler may use the
 * EVEX encodings. Compiled with AVX-512 flags by the Makefile; quant_init
 * installs quant__avx512_fill's kernels only when __builtin_cpu_supports
 * reports avx512f, avx512bw, avx512vl and avx512vnni. One source for both
 * keeps the two kernel sets from drifting apart. */
#define QUANT_VNNI 1
#include "quant_avx2.c"
