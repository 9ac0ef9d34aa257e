/* SPDX-License-Identifier: MIT */
/*
 * API keys: a YAML file listing {name, sha256, tenant} -> a table keyed by
 * the SHA-256 digest of each key.
 *
 * The file holds digests, never keys, so it can be deployed and read like
 * any configuration file. A lookup hashes the presented key and compares
 * digests with CRYPTO_memcmp. The table is open addressing over the digests'
 * first bytes (SHA-256 output is uniform; nobody can choose the digests of
 * the stored keys), immutable once loaded and read by every shard at once.
 *
 * The YAML is read with libfyaml's document API: the file is small and flat,
 * and scalars carry their positions for messages. libfyaml 0.7.12 loops or
 * corrupts its heap on some text that is not UTF-8 or holds control
 * characters, so such text is refused before the parser sees it; it crashes
 * on some other malformed text (found by tests/fuzz/fuzz_jwt), so a child
 * process parses the file first (core/yaml_guard.h), as for the configuration.
 * Loading runs on the control thread; lookups are [any].
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libfyaml.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "auth/auth_int.h"
#include "core/yaml_guard.h"
#include "core/yaml_text.h"

#define MAX_KEYS (1u << 20)

struct tp_apikey {
    unsigned char digest[32]; /* SHA-256 of the key */
    char *name;
    char *tenant; /* NULL when absent */
};

struct tp_apikeys {
    size_t n;
    struct tp_apikey *keys;
    uint32_t *slots; /* index + 1 into keys; 0 = empty. A power of two, at least 2n */
    size_t mask;
};

struct akload {
    char *errbuf;
    size_t errlen;
    const char *in; /* the file's text */
    size_t in_len;
};

/* The text of scalar node <n> (core/yaml_text.h), valid until *<own> is freed. */
static const char *scalar(const struct akload *l, struct fy_node *n, size_t *len, char **own)
{
    struct fy_token *t = fy_node_get_scalar_token(n);

    *own = NULL;
    return t ? tp_yaml_text(t, l->in, l->in_len, len, own) : NULL;
}

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

/* 1-based line and column of a node, 0 when unknown. Only scalars carry a
 * position in libfyaml 0.7's document API, so a mapping or a sequence is
 * placed at its first scalar. */
static void node_pos(struct fy_node *n, int *line, int *col)
{
    struct fy_token *t = NULL;
    const struct fy_mark *m;
    void *it = NULL;

    for (int depth = 0; n && !t && depth < 8; depth++) {
        if (fy_node_is_scalar(n)) {
            t = fy_node_get_scalar_token(n);
        } else if (fy_node_is_mapping(n)) {
            struct fy_node_pair *p = fy_node_mapping_iterate(n, &it);
            n = p ? fy_node_pair_key(p) : NULL;
        } else {
            n = fy_node_sequence_iterate(n, &it);
        }
        it = NULL;
    }
    m = t ? fy_token_start_mark(t) : NULL;
    *line = m ? m->line + 1 : 0;
    *col = m ? m->column + 1 : 0;
}

static int fail_at(struct akload *l, struct fy_node *n, size_t entry, const char *what)
{
    int line, col;

    node_pos(n, &line, &col);
    if (line)
        auth_msg(l->errbuf, l->errlen, "line %d, column %d: entry %zu: %s", line, col, entry + 1, what);
    else
        auth_msg(l->errbuf, l->errlen, "entry %zu: %s", entry + 1, what);
    return -EINVAL;
}

/*
 * Refuses what libfyaml must not see and what a name or tenant must not hold:
 * bytes that are not UTF-8, and control characters other than tab and line
 * breaks. Returns the 1-based line of the first bad byte, or 0.
 */
static int bad_text_line(const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    int line = 1;

    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > len)
            return line;
        if (n == 1 && ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f))
            return line;
        uint32_t cp = n == 1 ? c : c & (0x7f >> n);
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return line;
            cp = cp << 6 | (p[i + k] & 0x3f);
        }
        /* overlong forms, UTF-16 surrogates, beyond U+10FFFF, C1 controls */
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || (cp >= 0x80 && cp <= 0x9f))
            return line;
        if (c == '\n')
            line++;
        i += n;
    }
    return 0;
}

static bool has_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads one {name, sha256, tenant} mapping into <k>. */
static int load_entry(struct akload *l, struct fy_node *item, size_t idx, struct tp_apikey *k)
{
    struct fy_node *name = NULL, *sha = NULL, *tenant = NULL;
    struct fy_node_pair *pair;
    void *it = NULL;
    const char *s;
    size_t len;

    if (!fy_node_is_mapping(item))
        return fail_at(l, item, idx, "each entry is a mapping {name, sha256, tenant}");
    while ((pair = fy_node_mapping_iterate(item, &it)) != NULL) {
        struct fy_node *key = fy_node_pair_key(pair), *val = fy_node_pair_value(pair);
        char *own = NULL;
        const char *ks =
            key && fy_node_is_scalar(key) && !fy_node_is_alias(key) ? scalar(l, key, &len, &own) : NULL;
        struct fy_node **slot = NULL;
        if (ks && len == 4 && memcmp(ks, "name", 4) == 0)
            slot = &name;
        else if (ks && len == 6 && memcmp(ks, "sha256", 6) == 0)
            slot = &sha;
        else if (ks && len == 6 && memcmp(ks, "tenant", 6) == 0)
            slot = &tenant;
        free(own);
        if (!slot)
            return fail_at(l, key, idx, "unknown key (expected name, sha256, tenant)");
        if (*slot)
            return fail_at(l, key, idx, "key given twice");
        if (!val || !fy_node_is_scalar(val) || fy_node_is_alias(val))
            return fail_at(l, val ? val : key, idx, "values are plain strings (no alias, list or mapping)");
        *slot = val;
    }
    if (!name || !sha)
        return fail_at(l, item, idx, "name and sha256 are required");

    char *own;
    s = scalar(l, sha, &len, &own);
    bool hex = s && len == 64;
    for (size_t i = 0; hex && i < 32; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        hex = hi >= 0 && lo >= 0;
        if (hex)
            k->digest[i] = (unsigned char)(hi << 4 | lo);
    }
    free(own);
    if (!hex)
        return fail_at(l, sha, idx, "sha256 must be 64 hex digits (the SHA-256 of the key)");
    s = scalar(l, name, &len, &own);
    if (!s || len == 0 || has_control(s, len)) {
        free(own);
        return fail_at(l, name, idx, "name must be a non-empty string without control characters");
    }
    k->name = strndup(s, len);
    free(own);
    if (!k->name)
        return -ENOMEM;
    if (tenant) {
        s = scalar(l, tenant, &len, &own);
        if (!s || len == 0 || has_control(s, len)) {
            free(own);
            return fail_at(l, tenant, idx, "tenant must be a non-empty string without control characters");
        }
        k->tenant = strndup(s, len);
        free(own);
        if (!k->tenant)
            return -ENOMEM;
    }
    return 0;
}

static uint64_t digest_index(const unsigned char *d)
{
    uint64_t v;

    memcpy(&v, d, sizeof(v));
    return v;
}

/* Places every key in the slot table; refuses a name or digest given twice. */
static int build_table(struct akload *l, struct tp_apikeys *t)
{
    size_t cap = 8;

    while (cap < 2 * t->n)
        cap *= 2;
    t->slots = calloc(cap, sizeof(*t->slots));
    if (!t->slots)
        return -ENOMEM;
    t->mask = cap - 1;
    for (size_t i = 0; i < t->n; i++) {
        size_t s = digest_index(t->keys[i].digest) & t->mask;
        while (t->slots[s]) {
            if (memcmp(t->keys[t->slots[s] - 1].digest, t->keys[i].digest, 32) == 0) {
                auth_msg(l->errbuf, l->errlen, "entries \"%s\" and \"%s\" have the same sha256",
                         t->keys[t->slots[s] - 1].name, t->keys[i].name);
                return -EINVAL;
            }
            s = (s + 1) & t->mask;
        }
        t->slots[s] = (uint32_t)i + 1;
    }
    /* names are the access log's subject: two keys must not share one (n is small: at load only) */
    for (size_t i = 0; i < t->n; i++)
        for (size_t j = i + 1; j < t->n; j++)
            if (strcmp(t->keys[i].name, t->keys[j].name) == 0) {
                auth_msg(l->errbuf, l->errlen, "entries %zu and %zu are both named \"%s\"", i + 1, j + 1,
                         t->keys[i].name);
                return -EINVAL;
            }
    return 0;
}

struct tp_apikeys *tp_apikeys_load_mem(const char *yaml, size_t len, char *errbuf, size_t errlen, int *errp)
{
    struct akload l = {.errbuf = errbuf, .errlen = errlen, .in = yaml, .in_len = len};
    struct tp_apikeys *t = NULL;
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag = NULL;
    struct fy_document *fyd = NULL;
    struct fy_node *root, *item;
    void *it = NULL;
    int err = -ENOMEM, bad;

    auth_msg(errbuf, errlen, "out of memory");
    if ((bad = bad_text_line(yaml, len)) != 0) {
        auth_msg(errbuf, errlen, "line %d: not UTF-8 text, or a control character", bad);
        err = -EINVAL;
        goto fail;
    }
    /* libfyaml crashes on some malformed files: a child parses it first (core/yaml_guard.h) */
    enum tp_yaml_guard_rc grc = tp_yaml_guard(yaml, len);
    if (grc != TP_YAML_SURVIVED) {
        auth_msg(errbuf, errlen, "%s", tp_yaml_guard_msg(grc));
        err = -EINVAL;
        goto fail;
    }
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL; /* never print: the caller owns stderr */
    dcfg.output_fn = discard_output;
    dcfg.colorize = false;
    diag = fy_diag_create(&dcfg);
    if (!diag)
        goto fail;
    fy_diag_set_collect_errors(diag, true);
    struct fy_parse_cfg pcfg = {.flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2, .diag = diag};
    fyd = fy_document_build_from_string(&pcfg, yaml, len);
    if (!fyd) {
        struct fy_diag_error *de;
        void *dit = NULL;
        /* no document and no error: nothing but blanks and comments */
        auth_msg(errbuf, errlen, "the file is empty; write [] for a provider without keys");
        while ((de = fy_diag_errors_iterate(diag, &dit)) != NULL)
            if (de->type >= FYET_ERROR) {
                auth_msg(errbuf, errlen, "line %d, column %d: %s", de->line, de->column,
                         de->msg ? de->msg : "invalid YAML");
                break;
            }
        err = -EINVAL;
        goto fail;
    }
    err = -EINVAL;
    root = fy_document_root(fyd);
    if (!root) {
        auth_msg(errbuf, errlen, "the file is empty; write [] for a provider without keys");
        goto fail;
    }
    if (!fy_node_is_sequence(root) || fy_node_is_alias(root)) {
        auth_msg(errbuf, errlen, "the file is a YAML list of {name, sha256, tenant}");
        goto fail;
    }
    if ((size_t)fy_node_sequence_item_count(root) > MAX_KEYS) {
        auth_msg(errbuf, errlen, "more than %u keys", MAX_KEYS);
        goto fail;
    }
    err = -ENOMEM;
    t = calloc(1, sizeof(*t));
    if (!t || !(t->keys = calloc((size_t)fy_node_sequence_item_count(root) + 1, sizeof(*t->keys))))
        goto fail;
    while ((item = fy_node_sequence_iterate(root, &it)) != NULL) {
        err = load_entry(&l, item, t->n, &t->keys[t->n]);
        t->n++; /* counted even when half-filled, so that destroy frees it */
        if (err < 0)
            goto fail;
    }
    if ((err = build_table(&l, t)) < 0)
        goto fail;
    fy_document_destroy(fyd);
    fy_diag_destroy(diag);
    return t;

fail:
    if (err == -ENOMEM)
        auth_msg(errbuf, errlen, "out of memory");
    tp_apikeys_destroy(t);
    if (fyd)
        fy_document_destroy(fyd);
    if (diag)
        fy_diag_destroy(diag);
    if (errp)
        *errp = err;
    return NULL;
}

struct tp_apikeys *tp_apikeys_load_file(const char *path, char *errbuf, size_t errlen, int *errp)
{
    char *buf = NULL, msg[512];
    size_t len = 0;
    int err = auth_read_file(path, &buf, &len);
    struct tp_apikeys *t;

    if (err < 0) {
        auth_msg(errbuf, errlen, "%s: %s", path, err == -EFBIG ? "larger than 4 MiB" : strerror(-err));
        if (errp)
            *errp = err;
        return NULL;
    }
    t = tp_apikeys_load_mem(buf, len, msg, sizeof(msg), errp);
    if (!t)
        auth_msg(errbuf, errlen, "%s: %s", path, msg);
    free(buf);
    return t;
}

void tp_apikeys_destroy(struct tp_apikeys *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        free(t->keys[i].name);
        free(t->keys[i].tenant);
    }
    free(t->keys);
    free(t->slots);
    free(t);
}

size_t tp_apikeys_count(const struct tp_apikeys *t)
{
    return t->n;
}

const struct tp_apikey *tp_apikeys_lookup(const struct tp_apikeys *t, const char *key, size_t len)
{
    unsigned char d[32];
    unsigned int dlen = 0;

    /* EVP_Digest with a pre-fetched method: no provider look-up per call (OpenSSL 3.0
     * still allocates the digest's context for each call) */
    if (t->n == 0 || EVP_Digest(key, len, d, &dlen, auth_sha256(), NULL) != 1 || dlen != 32)
        return NULL;
    for (size_t s = digest_index(d) & t->mask; t->slots[s]; s = (s + 1) & t->mask) {
        const struct tp_apikey *k = &t->keys[t->slots[s] - 1];
        if (CRYPTO_memcmp(k->digest, d, 32) == 0)
            return k;
    }
    return NULL;
}

const char *tp_apikey_name(const struct tp_apikey *k)
{
    return k->name;
}

const char *tp_apikey_tenant(const struct tp_apikey *k)
{
    return k->tenant;
}
