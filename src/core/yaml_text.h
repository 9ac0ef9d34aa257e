/* SPDX-License-Identifier: MIT */
/*
 * The text of a YAML scalar, for the loaders that read libfyaml tokens (the
 * configuration, the API-key file). [any]
 */
#ifndef TP_CORE_YAML_TEXT_H
#define TP_CORE_YAML_TEXT_H

#include <stddef.h>

#include <libfyaml.h>

/**
 * The text of scalar token <t> of a YAML stream parsed from <in> (<in_len>
 * bytes), its length in *<len>; NULL when libfyaml cannot give it (out of
 * memory). The text lies in <in>, in <t>, or in a block the caller frees
 * (*<own>, else NULL).
 *
 * A single-quoted scalar is read here, from <in> (its '' escapes and its
 * folding over lines): libfyaml 0.7.12 leaks the chunk array it builds for a
 * run of `''` escapes (512 bytes to 4 KiB per scalar and load; found by
 * fuzz_config). Every other scalar is fy_token_get_text()'s.
 */
const char *tp_yaml_text(struct fy_token *t, const char *in, size_t in_len, size_t *len, char **own);

#endif
