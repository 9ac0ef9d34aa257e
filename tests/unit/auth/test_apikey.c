/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the API-key table (src/auth/apikey.c): loading the YAML key
 * file (every refusal with its position), lookups by SHA-256 of the presented
 * key, and a table large enough for probe chains.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <turnpike/auth.h>

#include "tap.h"

/* SHA-256 of "alpha-secret" and "beta-secret", in hex (computed by the test, below) */
static char alpha_hex[65], beta_hex[65];

static void sha256_hex(const char *s, char out[65])
{
    unsigned char d[32];
    unsigned int n = 0;

    EVP_Digest(s, strlen(s), d, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static struct tp_apikeys *load(const char *yaml, char *err, size_t errlen, int *e)
{
    return tp_apikeys_load_mem(yaml, strlen(yaml), err, errlen, e);
}

static void refused(const char *yaml, const char *needle, const char *what)
{
    char err[256] = "";
    int e = 0;
    struct tp_apikeys *t = load(yaml, err, sizeof(err), &e);

    ok(!t && e == -EINVAL && strstr(err, needle), "%s: \"%s\"", what, err);
    tp_apikeys_destroy(t);
}

static void test_load_and_lookup(void)
{
    char yaml[1024], err[256];
    struct tp_apikeys *t;
    const struct tp_apikey *k;

    snprintf(yaml, sizeof(yaml),
             "# partners\n"
             "- name: alpha\n"
             "  sha256: %s\n"
             "  tenant: acme\n"
             "- {name: beta, sha256: \"%s\"}\n",
             alpha_hex, beta_hex);
    t = load(yaml, err, sizeof(err), NULL);
    ok(t != NULL, "key file loads");
    if (!t) {
        tap_diag("%s", err);
        return;
    }
    is_int(tp_apikeys_count(t), 2, "two keys");
    k = tp_apikeys_lookup(t, "alpha-secret", 12);
    is_str(k ? tp_apikey_name(k) : NULL, "alpha", "alpha's key finds alpha");
    is_str(k ? tp_apikey_tenant(k) : NULL, "acme", "alpha's tenant");
    k = tp_apikeys_lookup(t, "beta-secret", 11);
    is_str(k ? tp_apikey_name(k) : NULL, "beta", "beta's key finds beta");
    ok(k && tp_apikey_tenant(k) == NULL, "beta has no tenant");
    ok(!tp_apikeys_lookup(t, "alpha-secre", 11), "a prefix of a key is not a key");
    ok(!tp_apikeys_lookup(t, "alpha-secret\n", 13), "a key with a newline is not the key");
    ok(!tp_apikeys_lookup(t, alpha_hex, 64), "the digest itself is not a key");
    ok(!tp_apikeys_lookup(t, "", 0), "the empty key");
    tp_apikeys_destroy(t);

    /* upper-case hex is the same digest */
    char up[65];
    for (int i = 0; i < 65; i++)
        up[i] = (char)(alpha_hex[i] >= 'a' && alpha_hex[i] <= 'f' ? alpha_hex[i] - 32 : alpha_hex[i]);
    snprintf(yaml, sizeof(yaml), "- name: alpha\n  sha256: %s\n", up);
    t = load(yaml, err, sizeof(err), NULL);
    ok(t && tp_apikeys_lookup(t, "alpha-secret", 12), "upper-case hex digest");
    tp_apikeys_destroy(t);

    t = load("[]\n", err, sizeof(err), NULL);
    ok(t && tp_apikeys_count(t) == 0 && !tp_apikeys_lookup(t, "x", 1), "an empty list admits nothing");
    tp_apikeys_destroy(t);
}

static void test_refusals(void)
{
    char yaml[1024];

    refused("", "empty", "empty file");
    refused("name: alpha\n", "YAML list", "a mapping instead of a list");
    refused("- [a, b]\n", "entry 1: each entry is a mapping", "a list entry");
    refused("- name: a\n", "line 1, column 3: entry 1: name and sha256 are required", "no sha256");
    snprintf(yaml, sizeof(yaml), "- sha256: %s\n", alpha_hex);
    refused(yaml, "name and sha256 are required", "no name");
    refused("- name: a\n  sha256: abc\n", "line 2, column 11: entry 1: sha256 must be 64 hex digits",
            "short digest");
    snprintf(yaml, sizeof(yaml), "- name: a\n  sha256: %.63sg\n", alpha_hex);
    refused(yaml, "sha256 must be 64 hex digits", "non-hex digit");
    snprintf(yaml, sizeof(yaml), "- name: a\n  sha256: %s\n  role: admin\n", alpha_hex);
    refused(yaml, "line 3, column 3: entry 1: unknown key", "unknown key");
    snprintf(yaml, sizeof(yaml), "- name: a\n  name: b\n  sha256: %s\n", alpha_hex);
    refused(yaml, "", "a key given twice");
    snprintf(yaml, sizeof(yaml), "- name: a\n  sha256: %s\n  tenant: [x]\n", alpha_hex);
    refused(yaml, "values are plain strings", "a list as tenant");
    snprintf(yaml, sizeof(yaml), "- name: &n a\n  sha256: %s\n- name: *n\n  sha256: %s\n", alpha_hex,
             beta_hex);
    refused(yaml, "entry 2: values are plain strings (no alias", "an alias");
    snprintf(yaml, sizeof(yaml), "- name: a\n  sha256: %s\n- name: b\n  sha256: %s\n", alpha_hex, alpha_hex);
    refused(yaml, "entries \"a\" and \"b\" have the same sha256", "the same digest twice");
    snprintf(yaml, sizeof(yaml), "- name: a\n  sha256: %s\n- name: a\n  sha256: %s\n", alpha_hex, beta_hex);
    refused(yaml, "entries 1 and 2 are both named \"a\"", "the same name twice");
    snprintf(yaml, sizeof(yaml), "- name: \"a\\nb\"\n  sha256: %s\n", alpha_hex);
    refused(yaml, "name must be a non-empty string without control characters", "a newline in a name");
    snprintf(yaml, sizeof(yaml), "- name: ''\n  sha256: %s\n", alpha_hex);
    refused(yaml, "name must be a non-empty string", "an empty name");
    refused("- name: caf\xe9\n", "line 1: not UTF-8", "Latin-1 text");
    refused("- name: a\x01\n", "line 1: not UTF-8 text, or a control character", "a control character");
    {
        const char nul[] = "- name: a\0b\n";
        char err[256] = "";
        struct tp_apikeys *t = tp_apikeys_load_mem(nul, sizeof(nul) - 1, err, sizeof(err), NULL);
        ok(!t && strstr(err, "control character"), "a NUL byte: \"%s\"", err);
    }
    refused("- name: a\n  sha256: [\n", "line", "broken YAML");
    refused("- ? a\n  \t? b\n", "", "the explicit-key input that upset libfyaml 0.7.12");
    /* crashed libfyaml 0.7.12 inside fy_document_build_from_string (tests/fuzz/fuzz_jwt); now a child
     * process meets it first (core/yaml_guard.h) and the file is refused */
    refused("- - ? ?  2:\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t?\t\t\t \t\t\t:\t",
            "the YAML parser failed on this file", "the input that crashed libfyaml (fuzz_jwt)");
}

static void test_large_and_files(void)
{
    /* 3000 keys: long probe chains in a table sized 2n..4n */
    size_t cap = 3000 * 120 + 16, off = 0;
    char *yaml = malloc(cap), key[32], hex[65], err[256];
    struct tp_apikeys *t;
    int found = 0;

    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        sha256_hex(key, hex);
        off += (size_t)snprintf(yaml + off, cap - off, "- {name: n%d, sha256: %s, tenant: t%d}\n", i, hex,
                                i % 7);
    }
    t = tp_apikeys_load_mem(yaml, off, err, sizeof(err), NULL);
    ok(t && tp_apikeys_count(t) == 3000, "3000 keys load");
    for (int i = 0; t && i < 3000; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        const struct tp_apikey *k = tp_apikeys_lookup(t, key, strlen(key));
        char want[16];
        snprintf(want, sizeof(want), "n%d", i);
        found += k && strcmp(tp_apikey_name(k), want) == 0;
    }
    is_int(found, 3000, "every key finds its own entry");
    ok(t && !tp_apikeys_lookup(t, "key-3000", 8), "an unknown key misses");
    tp_apikeys_destroy(t);

    char path[] = "/tmp/tp_apikeys_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) {
        ok(write(fd, yaml, off) == (ssize_t)off, "wrote a key file");
        close(fd);
        t = tp_apikeys_load_file(path, err, sizeof(err), NULL);
        ok(t && tp_apikeys_count(t) == 3000, "key file loads from disk");
        tp_apikeys_destroy(t);
        unlink(path);
    }
    t = tp_apikeys_load_file("/nonexistent/keys.yaml", err, sizeof(err), NULL);
    ok(!t && strstr(err, "/nonexistent/keys.yaml: "), "missing file: %s", err);
    free(yaml);
}

int main(void)
{
    sha256_hex("alpha-secret", alpha_hex);
    sha256_hex("beta-secret", beta_hex);
    test_load_and_lookup();
    test_refusals();
    test_large_and_files();
    return tap_done();
}
