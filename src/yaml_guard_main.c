/* SPDX-License-Identifier: MIT */
/*
 * turnpike-yaml-guard: the helper process of turnpike's YAML parser guard
 * (src/core/yaml_guard.c). The gateway starts it as
 *
 *   turnpike-yaml-guard --yaml-guard-helper     (descriptor 3: its socket)
 *
 * from the directory of its own binary. Built from this file and
 * src/core/yaml_guard_helper.c only, and linked with libc and libfyaml only,
 * so that the process costs little memory; the turnpike binary run with the
 * same argument does the same where this program is missing.
 */
#include <stdio.h>
#include <string.h>

#include "core/yaml_guard.h"

int main(int argc, char **argv)
{
    if (argc != 2 || strcmp(argv[1], TP_YAML_GUARD_ARG) != 0) {
        fprintf(stderr, "usage: " TP_YAML_GUARD_PROG " " TP_YAML_GUARD_ARG
                        "\n(started by turnpike, with its socket on descriptor 3; not to be run by hand)\n");
        return 2;
    }
    return tp_yaml_guard_helper_main();
}
