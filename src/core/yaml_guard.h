/* SPDX-License-Identifier: MIT */
/*
 * A crash and hang guard around libfyaml, for every loader that parses a file
 * an operator (or an attacker who can write one) hands to the gateway: the
 * configuration (src/config/yaml.c) and API-key files (src/auth/apikey.c).
 */
#pragma once

#include <stddef.h>

enum tp_yaml_guard_rc {
    TP_YAML_SURVIVED = 0, /* the parser finished (the YAML may still be invalid) */
    TP_YAML_CRASHED = -1, /* the parser crashed on it */
    TP_YAML_HUNG = -2,    /* the parser did not finish within 5 s */
};

/**
 * libfyaml 0.7.12 corrupts its heap or loops on some malformed inputs (found by
 * tests/fuzz/fuzz_config and fuzz_jwt), which would take down `turnpike -t`, a
 * start or, worst, a reload of a running gateway. So <buf> (<len> bytes) is run
 * through libfyaml's event parser and document builder in a child process with a
 * deadline first; the caller parses it in-process only when the child came back
 * clean. A fork per file costs a few milliseconds and happens on start, reload
 * and -t only. When fork fails the answer is TP_YAML_SURVIVED (parse as before).
 * Blocks up to 5 s. [control]
 */
enum tp_yaml_guard_rc tp_yaml_guard(const char *buf, size_t len);

/** The message a loader gives for a CRASHED or HUNG answer (a static string). [any] */
const char *tp_yaml_guard_msg(enum tp_yaml_guard_rc rc);
