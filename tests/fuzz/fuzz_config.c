/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the configuration loader. Any bytes must give either a
 * config or positioned diagnostics, never a crash, a leak or a hang.
 */
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tp_diag diag = {0};
    struct tp_config *cfg = tp_config_parse("fuzz.yaml", (const char *)data, size, &diag);

    if (!cfg && diag.n == 0)
        __builtin_trap(); /* a refused file must say why */
    tp_config_destroy(cfg);
    tp_diag_dispose(&diag);
    return 0;
}
