/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: an API-key file (`auth[].api_key.keys`), the whole input
 * being the file: src/auth's own text checks, then libfyaml behind the crash
 * guard (core/yaml_guard.h), then the entries and the digest table. A file
 * that loads answers lookups (the seeds' first key is "test"); a refused one
 * says why. Nothing may crash, leak or read out of bounds (the input is copied
 * without a NUL after it).
 *
 * Every input forks the guard's child, so this target runs at tens to hundreds
 * of executions a second; it was split from fuzz_jwt so that the token and
 * JWKS fuzzing there keeps its speed.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/auth.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    int rc = 0;
    char *copy = malloc(size ? size : 1);

    if (!copy)
        return 0;
    memcpy(copy, data, size);
    err[0] = '\0';
    struct tp_apikeys *t = tp_apikeys_load_mem(copy, size, err, sizeof(err), &rc);
    free(copy); /* the table must not point into the file */
    if (!t) {
        if (rc == 0 || !err[0] || !memchr(err, '\0', sizeof(err)))
            __builtin_trap(); /* a refused file must say why */
        return 0;
    }
    static const char *const keys[] = {"test", "alpha", "", "x"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const struct tp_apikey *k = tp_apikeys_lookup(t, keys[i], strlen(keys[i]));
        if (k && !tp_apikey_name(k))
            __builtin_trap();
    }
    tp_apikeys_destroy(t);
    return 0;
}
