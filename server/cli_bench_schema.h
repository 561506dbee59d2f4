/* cli_bench_schema.h -- `qkvd bench --schema FILE` (see cli_bench_schema.c). */
#ifndef QKVD_CLI_BENCH_SCHEMA_H
#define QKVD_CLI_BENCH_SCHEMA_H

#include <stdint.h>
#include "engine.h"

/* Compile the JSON Schema in schema_path (timed), then reps x n greedy
 * decode steps on e without and with its mask; prints compile time,
 * tok/s both ways, and the mean mask + advance time per token (one JSON
 * object with json). e must allow one sequence of n + 1 tokens. Returns a
 * process exit code (0 ok, 1 engine/memory failure, 2 bad schema/file). */
int bench_schema_run(engine *e, const char *model_name, const char *schema_path, int32_t n, int32_t reps, int json);

#endif
