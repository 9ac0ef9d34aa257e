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
 * through libfyaml's event parser and document builder in another process with a
 * deadline first (the kept helper of tp_yaml_guard_use_helper, else a fork of the
 * caller); the caller parses it in-process only when that came back clean. When
 * no check can be made the answer is TP_YAML_SURVIVED (parse as before). Blocks
 * up to 5 s. [control]
 */
enum tp_yaml_guard_rc tp_yaml_guard(const char *buf, size_t len);

/** argv[1] of a guard helper: the turnpike binary runs as one with it, and
 * TP_YAML_GUARD_PROG wants it (anything else is not a gateway starting it). */
#define TP_YAML_GUARD_ARG "--yaml-guard-helper"
/** The small helper program, installed next to the turnpike binary. */
#define TP_YAML_GUARD_PROG "turnpike-yaml-guard"
/** Texts larger than this are checked by a fork of the caller instead. */
#define TP_YAML_GUARD_MAX (64u << 20)

/**
 * From now on, checks run in a helper process (started once, and again if it
 * dies or after a text the parser refused) instead of a fork of the calling
 * process: run from <prog> (the TP_YAML_GUARD_PROG program), or, where that
 * cannot run one, from <self> (the turnpike binary, "/proc/self/exe"), with
 * argv[1] TP_YAML_GUARD_ARG. Either may be NULL; both must stay valid. Call it
 * from the thread that loads files (the helper dies with it). [main]
 */
void tp_yaml_guard_use_helper(const char *prog, const char *self);
/** The helper's main loop (descriptor 3 is its socket); returns its exit status.
 * Needs libc and libfyaml only (yaml_guard_helper.c). [helper] */
int tp_yaml_guard_helper_main(void);

/** The message a loader gives for a CRASHED or HUNG answer (a static string). [any] */
const char *tp_yaml_guard_msg(enum tp_yaml_guard_rc rc);
