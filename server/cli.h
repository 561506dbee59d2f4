/* cli.h -- the qkvd subcommands. Each returns the process exit code. */
#ifndef QKVD_CLI_H
#define QKVD_CLI_H

int cli_run(int argc, char **argv);        /* qkvd run -m F -p P -n N */
int cli_info(int argc, char **argv);       /* qkvd info -m F */
int cli_tokenize(int argc, char **argv);   /* qkvd tokenize -m F -p TEXT */
int cli_logprobs(int argc, char **argv);   /* qkvd logprobs -m F --tokens 1,2,3 */
int cli_bench(int argc, char **argv);      /* qkvd bench -m F -p 512 -n 128 */
int cli_make_model(int argc, char **argv); /* qkvd make-model ... */
int cli_template(int argc, char **argv);   /* qkvd template --chat-template-file F --messages M */
int cli_serve(int argc, char **argv);      /* qkvd serve ... */
int cli_grammar_check(int argc, char **argv); /* qkvd grammar-check -m F --schema S --text T */
int cli_pull(int argc, char **argv);       /* qkvd pull URL [-o FILE] [--sha256 HEX] */

int cli_ppl(int argc, char **argv);        /* qkvd ppl -m F -f TEXT --ctx N --attention KIND */

/* Shared by subcommands taking attention options: if `flag` is one of
 * --attention --window --sinks --leak --rope-scaling --rope-factor
 * --rope-orig-ctx, apply val to *p and return 1 (val consumed); 0 when the
 * flag is not one of them; -1 with err on a bad value. */
#include "attn_kind.h"
#include <stddef.h>
int cli_attn_flag(const char *flag, const char *val, attn_params *p, char *err, size_t errlen);

#endif
