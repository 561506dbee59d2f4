/* main.c -- `qkvd SUBCOMMAND ...`: dispatch to the subcommands in cli.h. */
#include <stdio.h>
#include <string.h>
#include "cli.h"

typedef struct subcommand {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} subcommand;

/* Subcommands register here as they land. */
static const subcommand commands[] = {
    {"template", cli_template, "render a chat template with messages (debugging)"},
    {"tokenize", cli_tokenize, "print the token ids of a text under a model's tokenizer"},
    {"serve", cli_serve, "serve the OpenAI-compatible HTTP API (qkvd serve --help)"},
    {"make-model", cli_make_model, "write a GGUF with RANDOM weights of any shape/type (tests, benchmarks)"},
    {"run", cli_run, "generate text from a prompt (one shot, streamed)"},
    {"ppl", cli_ppl, "perplexity of a text under an attention kind and RoPE scaling (--json)"},
    {"logprobs", cli_logprobs, "teacher-forced next-token log-probs as JSON"},
    {"bench", cli_bench, "prompt processing (pp) and generation (tg) speed, like llama-bench"},
    {"pull", cli_pull, "download a model over HTTP(S): progress, resume, --sha256 check"},
    {"info", cli_info, "architecture, hyperparameters, tensors and memory plan of a model"},
    {"grammar-check", cli_grammar_check, "walk a text through a JSON schema / GBNF token mask (accepted / rejected at byte N)"},
    {NULL, NULL, NULL}
};

static void usage(FILE *to) {
    fprintf(to, "usage: qkvd COMMAND [options]   (qkvd COMMAND --help for its options)\n\ncommands:\n");
    for (const subcommand *c = commands; c->name; c++)
        fprintf(to, "  %-12s %s\n", c->name, c->help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const subcommand *c = commands; c->name; c++)
        if (!strcmp(argv[1], c->name))
            return c->fn(argc - 1, argv + 1);
    fprintf(stderr, "qkvd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
