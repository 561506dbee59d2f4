/* fuzz_template.c -- libFuzzer target: compile the input as a chat template
 * and render it against a small fixed conversation. Any crash, leak, hang or
 * sanitizer report is a bug: the interpreter bounds steps, recursion, memory
 * and output, and reports every bad template as an error. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "chat_template.h"

static json_t *messages, *tools;

static void setup(void) {
    messages = json_loads(
        "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"Hi \\\"there\\\" <b>\\u00e9</b>\"},"
        "{\"role\":\"assistant\",\"content\":\"Hello.\",\"reasoning_content\":\"think\","
        "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1,\"y\":[true,null,2.5]}}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"42\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part\"},{\"type\":\"image\"}]}]",
        0, NULL);
    tools = json_loads(
        "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},\"required\":[\"x\"]}}}]",
        0, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!messages) setup();
    if (size > 64 * 1024) return 0;
    char err[256];
    chat_template *t = NULL;
    if (chat_template_compile((const char *)data, size, &t, err, sizeof err) == 0) {
        chat_template_opts o = {.bos_token = "<s>", .eos_token = "</s>", .add_generation_prompt = 1,
                                .now = 1795348800};
        char *out = NULL;
        if (chat_template_render(t, messages, (size & 1) ? tools : NULL, &o, &out, err, sizeof err) == 0) free(out);
        chat_template_free(t);
    }
    return 0;
}
