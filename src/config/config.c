/* SPDX-License-Identifier: MIT */
/*
 * Configuration loader: YAML tree (yaml.c) -> validated struct tp_config.
 *
 * The walk follows docs/reference.md's schema section by section. Every check that
 * fails records a positioned message and the walk goes on, so one run shows
 * every mistake of a file; the messages are sorted by position at the end
 * (diag.c). A value that failed keeps its default, which is harmless because
 * a config with any error is thrown away as a whole.
 *
 * Where messages point: at the offending value, or at the key when the key
 * itself is wrong (unknown, duplicate, not supported yet, not allowed next to
 * another key). Message text: "<key path>: <what is wrong> (<what is
 * expected>)", all lower case; the key path uses the concrete indices
 * ("routes[2].upstream").
 *
 * Called by the control thread at startup and on SIGHUP, and by `turnpike -t`.
 * [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/evp.h>

#include <turnpike/err.h>
#include <turnpike/tls.h>

#include "config/config_int.h"

/*
 * Keys of the schema that parse but whose feature is not built yet: using one
 * is an error at the key ("listeners[0].tls is not supported yet"), never a
 * silent no-op. Paths are schema paths: "[]" stands for any list index. Trim
 * this table as the features land (and parse the section then).
 */
static const char *const unsupported_keys[] = {
    NULL, /* nothing left: every key of docs/reference.md is implemented */
};

/* Headers that carry the message framing or are hop-by-hop: turnpike owns
 * them on both sides (docs/reference.md "What the gateway adds and removes"), so a
 * rewrite may neither set nor remove them. */
static const char *const managed_headers[] = {
    "content-length", "transfer-encoding", "connection",       "keep-alive", "te",
    "trailer",        "upgrade",           "proxy-connection",
};

#define PATH_MAX_LEN 320 /* a key path in a message; longer ones are cut */
#define QUOTE_LEN    200 /* a quoted value in a message */
#define MAX_FIELDS   12  /* keys of the largest section */
#define NAME_MAX_LEN 128
#define BODY_MAX_LEN (1u << 20)

#define MS_PER_S   1000ull
#define MS_PER_MIN (60 * MS_PER_S)
#define MS_PER_H   (60 * MS_PER_MIN)

struct cctx {
    const char *name; /* file name for messages */
    struct tp_cfg_errs errs;
    struct tp_cfg_errs warns; /* valid but without effect: reported, the file is still accepted */
    struct tp_cfg_arena *a;   /* the config's arena */
    struct tp_config *cfg;
    /* false when `upstreams` was unusable as a whole: route references are
     * then not checked, or every route would repeat that one mistake. */
    bool upstreams_ok;
};

/* The keys of one mapping, by index into the caller's key list. */
struct fields {
    struct tp_ynode *key[MAX_FIELDS]; /* the key node, also for "not supported yet" keys */
    struct tp_ynode *val[MAX_FIELDS]; /* NULL when absent or not supported */
};

/* ---- messages ---- */

static void err(struct cctx *c, const struct tp_ynode *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void err(struct cctx *c, const struct tp_ynode *n, const char *fmt, ...)
{
    va_list ap;
    uint32_t line = n && n->line ? n->line : 1, col = n && n->line ? n->col : 1;

    va_start(ap, fmt);
    tp_cfg_errs_vadd(&c->errs, line, col, fmt, ap);
    va_end(ap);
}

/* A key that is valid but has no effect where it stands: said with its
 * position ("warning: ..."), and the file is accepted. */
static void warn(struct cctx *c, const struct tp_ynode *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn(struct cctx *c, const struct tp_ynode *n, const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    uint32_t line = n && n->line ? n->line : 1, col = n && n->line ? n->col : 1;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    tp_cfg_errs_add(&c->warns, line, col, "warning: %s", msg);
}

static const char *kpath(char *buf, const char *parent, const char *key)
{
    if (parent && *parent)
        snprintf(buf, PATH_MAX_LEN, "%.200s.%.100s", parent, key);
    else
        snprintf(buf, PATH_MAX_LEN, "%.100s", key);
    return buf;
}

static const char *ipath(char *buf, const char *parent, size_t i)
{
    snprintf(buf, PATH_MAX_LEN, "%.280s[%zu]", parent, i);
    return buf;
}

static const char *quote(char *buf, const struct tp_ynode *n)
{
    tp_cfg_quote(buf, QUOTE_LEN, n->str ? n->str : "", n->len);
    return buf;
}

/* "a mapping", "null", "\"text\"": what a node is, for type errors. */
static const char *describe(char *buf, const struct tp_ynode *n)
{
    char q[QUOTE_LEN];

    switch (n->kind) {
    case TP_Y_MAP:
        return "a mapping";
    case TP_Y_SEQ:
        return "a list";
    default:
        if (n->null)
            return "null";
        snprintf(buf, QUOTE_LEN + 2, "\"%s\"", quote(q, n));
        return buf;
    }
}

static void type_err(struct cctx *c, const struct tp_ynode *n, const char *path, const char *want)
{
    char d[QUOTE_LEN + 2];
    err(c, n, "%s: expected %s, got %s", path, want, describe(d, n));
}

static bool pos_before(const struct tp_ynode *a, const struct tp_ynode *b)
{
    return a->line < b->line || (a->line == b->line && a->col < b->col);
}

static bool text_is(const struct tp_ynode *n, const char *s)
{
    return n->kind == TP_Y_SCALAR && !n->null && n->len == strlen(s) && memcmp(n->str, s, n->len) == 0;
}

/* ---- the mapping walk ---- */

static bool is_unsupported(const char *schema, const char *key)
{
    char p[PATH_MAX_LEN];
    kpath(p, schema, key);
    for (size_t i = 0; i < TP_ARRAY_SIZE(unsupported_keys); i++)
        if (unsupported_keys[i] && strcmp(unsupported_keys[i], p) == 0)
            return true;
    return false;
}

/*
 * Checks that <n> is a mapping whose keys are all in <keys> (each at most
 * once) and fills <f>. <path> is the concrete key path of <n> for messages,
 * <schema> the same with "[]" for list indices (for unsupported_keys).
 * Returns false when <n> is not a mapping.
 */
static bool walk_map(struct cctx *c, const struct tp_ynode *n, const char *path, const char *schema,
                     const char *const *keys, size_t n_keys, struct fields *f)
{
    char p[PATH_MAX_LEN], q[QUOTE_LEN];

    memset(f, 0, sizeof(*f));
    if (n->kind != TP_Y_MAP) {
        char d[QUOTE_LEN + 2];
        if (*path)
            type_err(c, n, path, "a mapping");
        else
            err(c, n, "expected a mapping at the top level, got %s", describe(d, n));
        return false;
    }
    for (size_t i = 0; i < n->n; i++) {
        const struct tp_ynode *k = n->pairs[i].key;
        size_t j;

        if (k->kind != TP_Y_SCALAR || k->null) {
            char d[QUOTE_LEN + 2];
            if (*path)
                err(c, k, "%s: keys must be strings, got %s", path, describe(d, k));
            else
                err(c, k, "keys must be strings, got %s", describe(d, k));
            continue;
        }
        for (j = 0; j < n_keys; j++)
            if (strlen(keys[j]) == k->len && memcmp(keys[j], k->str, k->len) == 0)
                break;
        if (j == n_keys) {
            err(c, k, "%s: unknown key", kpath(p, path, quote(q, k)));
            continue;
        }
        if (f->key[j]) {
            err(c, k, "%s: duplicate key", kpath(p, path, keys[j]));
            continue;
        }
        f->key[j] = n->pairs[i].key;
        if (is_unsupported(schema, keys[j])) {
            err(c, k, "%s is not supported yet", kpath(p, path, keys[j]));
            continue;
        }
        f->val[j] = n->pairs[i].val;
    }
    return true;
}

static void missing(struct cctx *c, const struct tp_ynode *map, const char *path, const char *key)
{
    if (*path)
        err(c, map, "%s: missing required key \"%s\"", path, key);
    else
        err(c, map, "missing required key \"%s\"", key);
}

/* Of the keys <idx> present in <f>, allows one: every further one (in file
 * order) is an error at its key. Returns how many were present. */
static int only_one_of(struct cctx *c, const struct fields *f, const char *path, const char *const *keys,
                       const int *idx, size_t n_idx, const char *what)
{
    const struct tp_ynode *first = NULL;
    char p[PATH_MAX_LEN];
    int count = 0;

    for (size_t i = 0; i < n_idx; i++) {
        const struct tp_ynode *k = f->key[idx[i]];
        if (k && (!first || pos_before(k, first)))
            first = k;
    }
    for (size_t i = 0; i < n_idx; i++) {
        const struct tp_ynode *k = f->key[idx[i]];
        if (!k)
            continue;
        count++;
        if (k != first)
            err(c, k, "%s: only one of %s is allowed", kpath(p, path, keys[idx[i]]), what);
    }
    return count;
}

/* ---- scalars ---- */

/* The text of a scalar usable as a C string, or NULL after an error. */
static const char *scalar(struct cctx *c, const struct tp_ynode *n, const char *path, const char *want)
{
    if (n->kind != TP_Y_SCALAR || n->null) {
        type_err(c, n, path, want);
        return NULL;
    }
    if (memchr(n->str, '\0', n->len)) {
        err(c, n, "%s: NUL characters are not allowed", path);
        return NULL;
    }
    return n->str;
}

/* A decimal integer in [lo, hi]. A leading '-' parses, to say "out of range"
 * rather than "invalid" for a negative number. */
static bool get_uint(struct cctx *c, const struct tp_ynode *n, const char *path, uint64_t lo, uint64_t hi,
                     uint64_t *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "an integer");
    const char *d;
    bool neg = false, over = false;
    uint64_t v = 0;

    if (!s)
        return false;
    d = s;
    if (*d == '-') {
        neg = true;
        d++;
    }
    if (!*d)
        goto invalid;
    for (const char *p = d; *p; p++) {
        if (*p < '0' || *p > '9')
            goto invalid;
        unsigned x = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - x) / 10)
            over = true;
        else
            v = v * 10 + x;
    }
    if (over || (neg && v != 0) || v < lo || v > hi) {
        err(c, n, "%s: %s is out of range (%" PRIu64 "..%" PRIu64 ")", path, quote(q, n), lo, hi);
        return false;
    }
    *out = v;
    return true;
invalid:
    err(c, n, "%s: invalid integer \"%s\" (expected %" PRIu64 "..%" PRIu64 ")", path, quote(q, n), lo, hi);
    return false;
}

static bool get_u32(struct cctx *c, const struct tp_ynode *n, const char *path, uint32_t lo, uint32_t hi,
                    uint32_t *out)
{
    uint64_t v;
    if (!get_uint(c, n, path, lo, hi, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool get_duration(struct cctx *c, const struct tp_ynode *n, const char *path, uint64_t lo_ms,
                         uint64_t hi_ms, const char *range, uint64_t *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a duration");
    uint64_t v;

    if (!s)
        return false;
    int r = tp_parse_duration_ms(s, &v);
    if (r == -EINVAL) {
        err(c, n, "%s: invalid duration \"%s\" (expected e.g. 250ms, 2s, 1m, 1h)", path, quote(q, n));
        return false;
    }
    if (r < 0 || v < lo_ms || v > hi_ms) {
        err(c, n, "%s: %s is out of range (%s)", path, quote(q, n), range);
        return false;
    }
    *out = v;
    return true;
}

static bool get_size(struct cctx *c, const struct tp_ynode *n, const char *path, uint64_t lo, uint64_t hi,
                     const char *range, uint64_t *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a size");
    uint64_t v;

    if (!s)
        return false;
    int r = tp_parse_size(s, &v);
    if (r == -EINVAL) {
        err(c, n, "%s: invalid size \"%s\" (expected e.g. 512, 16KiB, 10MiB)", path, quote(q, n));
        return false;
    }
    if (r < 0 || v < lo || v > hi) {
        err(c, n, "%s: %s is out of range (%s)", path, quote(q, n), range);
        return false;
    }
    *out = v;
    return true;
}

/* One of <names>; <expected> lists them for the message. */
static bool get_enum(struct cctx *c, const struct tp_ynode *n, const char *path, const char *const *names,
                     size_t n_names, const char *expected, int *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a string");

    if (!s)
        return false;
    for (size_t i = 0; i < n_names; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (int)i;
            return true;
        }
    }
    err(c, n, "%s: invalid value \"%s\" (expected %s)", path, quote(q, n), expected);
    return false;
}

static bool get_addr(struct cctx *c, const struct tp_ynode *n, const char *path, struct tp_addr *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "an address");

    if (!s)
        return false;
    int r = tp_parse_addr(s, out);
    if (r == -ERANGE) {
        err(c, n, "%s: invalid port in \"%s\" (expected 1..65535)", path, quote(q, n));
        return false;
    }
    if (r < 0) {
        err(c, n, "%s: invalid address \"%s\" (expected IPv4:port or [IPv6]:port)", path, quote(q, n));
        return false;
    }
    return true;
}

/* A YAML 1.2 core-schema float without exponent tricks: 0.5, 1, 1.0, .25 */
static bool get_ratio(struct cctx *c, const struct tp_ynode *n, const char *path, double *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a number");
    size_t digits = 0, dots = 0;
    bool other = false;

    if (!s)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p >= '0' && *p <= '9')
            digits++;
        else if (*p == '.')
            dots++;
        else
            other = true;
    }
    if (other || digits == 0 || dots > 1) {
        err(c, n, "%s: invalid number \"%s\" (expected a ratio above 0 and at most 1, e.g. 0.5)", path,
            quote(q, n));
        return false;
    }
    /* strtod follows LC_NUMERIC; turnpike never calls setlocale, so it is "C". */
    double v = strtod(s, NULL);
    if (!(v > 0.0 && v <= 1.0)) {
        err(c, n, "%s: %s is out of range (above 0, at most 1)", path, quote(q, n));
        return false;
    }
    *out = v;
    return true;
}

static char *get_name(struct cctx *c, const struct tp_ynode *n, const char *path)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a string");

    if (!s)
        return NULL;
    bool ok = n->len >= 1 && n->len <= NAME_MAX_LEN;
    for (size_t i = 0; ok && i < n->len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            ok = false;
    if (!ok) {
        err(c, n, "%s: invalid name \"%s\" (expected 1 to %d characters, no control characters)", path,
            quote(q, n), NAME_MAX_LEN);
        return NULL;
    }
    return tp_cfg_arena_strndup(c->a, s, n->len);
}

static bool is_seq(struct cctx *c, const struct tp_ynode *n, const char *path)
{
    if (n->kind != TP_Y_SEQ) {
        type_err(c, n, path, "a list");
        return false;
    }
    return true;
}

static bool addr_equal(const struct tp_addr *a, const struct tp_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static char *lower_dup(struct cctx *c, const char *s, size_t len)
{
    char *d = tp_cfg_arena_strndup(c->a, s, len);
    for (size_t i = 0; d && i < len; i++)
        if (d[i] >= 'A' && d[i] <= 'Z')
            d[i] = (char)(d[i] - 'A' + 'a');
    return d;
}

/* ---- keys: hash_key and rate_limit.key ---- */

enum key_use {
    KEY_FOR_HASH = 0,
    KEY_FOR_RATE,
};

static bool get_key(struct cctx *c, const struct tp_ynode *n, const char *path, enum key_use use,
                    struct tp_key *out)
{
    char q[QUOTE_LEN];
    const char *expected = use == KEY_FOR_HASH ? "header:NAME, cookie:NAME, client_ip or path"
                                               : "client_ip, header:NAME or route";
    const char *s = scalar(c, n, path, "a string");

    if (!s)
        return false;
    memset(out, 0, sizeof(*out));
    if (strcmp(s, "client_ip") == 0) {
        out->kind = TP_KEY_CLIENT_IP;
        return true;
    }
    if (use == KEY_FOR_HASH && strcmp(s, "path") == 0) {
        out->kind = TP_KEY_PATH;
        return true;
    }
    if (use == KEY_FOR_RATE && strcmp(s, "route") == 0) {
        out->kind = TP_KEY_ROUTE;
        return true;
    }
    bool header = strncmp(s, "header:", 7) == 0;
    bool cookie = use == KEY_FOR_HASH && strncmp(s, "cookie:", 7) == 0;
    if (header || cookie) {
        const char *name = s + 7;
        size_t len = n->len - 7;
        /* A cookie-name is a token too (RFC 6265 4.1.1). */
        if (!tp_cfg_is_token(name, len)) {
            err(c, n, "%s: invalid %s name in \"%s\" (expected letters, digits or !#$%%&'*+-.^_`|~)", path,
                header ? "header" : "cookie", quote(q, n));
            return false;
        }
        out->kind = header ? TP_KEY_HEADER : TP_KEY_COOKIE;
        out->name = header ? lower_dup(c, name, len) : tp_cfg_arena_strndup(c->a, name, len);
        out->name_len = len;
        return out->name != NULL;
    }
    err(c, n, "%s: invalid value \"%s\" (expected %s)", path, quote(q, n), expected);
    return false;
}

/* ---- top-level scalars and small sections ---- */

static void parse_workers(struct cctx *c, const struct tp_ynode *n)
{
    char q[QUOTE_LEN];
    uint64_t v;

    if (text_is(n, "auto")) {
        c->cfg->workers = 0;
        return;
    }
    if (n->kind != TP_Y_SCALAR || n->null) {
        type_err(c, n, "workers", "auto or an integer");
        return;
    }
    if (!n->len || strspn(n->str, "0123456789-") != n->len) {
        err(c, n, "workers: invalid value \"%s\" (expected auto or 1..1024)", quote(q, n));
        return;
    }
    if (get_uint(c, n, "workers", 1, 1024, &v))
        c->cfg->workers = (uint32_t)v;
}

/* Returns the node of a valid admin.address, for check_admin_address(). */
static const struct tp_ynode *parse_admin(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"address"};
    struct fields f;

    if (!walk_map(c, n, "admin", "admin", keys, TP_ARRAY_SIZE(keys), &f))
        return NULL;
    if (!f.val[0]) {
        if (!f.key[0])
            missing(c, n, "admin", "address");
        return NULL;
    }
    if (!get_addr(c, f.val[0], "admin.address", &c->cfg->admin))
        return NULL;
    c->cfg->has_admin = true;
    return f.val[0];
}

static void parse_access_log(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"path", "format"};
    static const char *const formats[] = {"json", "combined"};
    struct fields f;
    int fmt;

    if (!walk_map(c, n, "access_log", "access_log", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    if (f.val[0]) {
        const char *s = scalar(c, f.val[0], "access_log.path", "a string");
        if (s && !*s)
            err(c, f.val[0], "access_log.path: must not be empty (\"-\" is stdout)");
        else if (s)
            c->cfg->access_log_path = tp_cfg_arena_strndup(c->a, s, f.val[0]->len);
    } else if (!f.key[0]) {
        missing(c, n, "access_log", "path");
    }
    if (f.val[1] &&
        get_enum(c, f.val[1], "access_log.format", formats, TP_ARRAY_SIZE(formats), "json or combined", &fmt))
        c->cfg->access_log_format = (enum tp_access_format)fmt;
}

static void parse_limits(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"max_connections", "max_header_bytes", "max_body_bytes"};
    struct fields f;
    struct tp_config *cfg = c->cfg;

    if (!walk_map(c, n, "limits", "limits", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    if (f.val[0])
        get_uint(c, f.val[0], "limits.max_connections", 1, 10000000, &cfg->max_connections);
    if (f.val[1])
        get_size(c, f.val[1], "limits.max_header_bytes", 1024, 1024 * 1024, "1KiB..1MiB",
                 &cfg->max_header_bytes);
    if (f.val[2])
        get_size(c, f.val[2], "limits.max_body_bytes", 0, 1ull << 40, "0..1TiB", &cfg->max_body_bytes);
}

static void parse_timeouts(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"client_header", "client_idle", "upstream_connect",
                                       "upstream_response"};
    uint64_t *dst[] = {&c->cfg->client_header_ms, &c->cfg->client_idle_ms, &c->cfg->upstream_connect_ms,
                       &c->cfg->upstream_response_ms};
    char p[PATH_MAX_LEN];
    struct fields f;

    if (!walk_map(c, n, "timeouts", "timeouts", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    for (size_t i = 0; i < TP_ARRAY_SIZE(keys); i++)
        if (f.val[i])
            get_duration(c, f.val[i], kpath(p, "timeouts", keys[i]), 1, 24 * MS_PER_H, "1ms..24h", dst[i]);
}

static void parse_shutdown(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"drain_timeout"};
    struct fields f;

    if (!walk_map(c, n, "shutdown", "shutdown", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    if (f.val[0])
        get_duration(c, f.val[0], "shutdown.drain_timeout", 0, 24 * MS_PER_H, "0s..24h",
                     &c->cfg->drain_timeout_ms);
}

/* ---- listeners ---- */

/* Names must be unique within listeners, upstreams and routes: the second
 * holder is the error. <names[i]> may be NULL (its own error was reported);
 * <where[i]> is the node to point at. */
static void check_unique_names(struct cctx *c, char **names, const struct tp_ynode **where, size_t n,
                               const char *list)
{
    char q[QUOTE_LEN], item[PATH_MAX_LEN], key[PATH_MAX_LEN], first[PATH_MAX_LEN];

    for (size_t i = 1; i < n; i++) {
        if (!names[i])
            continue;
        for (size_t j = 0; j < i; j++) {
            if (names[j] && strcmp(names[i], names[j]) == 0) {
                /* An unnamed item (default name) is pointed at as a whole. */
                ipath(item, list, i);
                tp_cfg_quote(q, sizeof(q), names[i], strlen(names[i]));
                err(c, where[i], "%s: duplicate name \"%s\" (already used by %s)",
                    where[i]->kind == TP_Y_SCALAR ? kpath(key, item, "name") : item, q,
                    ipath(first, list, j));
                break;
            }
        }
    }
}

/* ---- TLS ---- */

/* A file path that must name something readable; NULL after an error. */
static char *get_file(struct cctx *c, const struct tp_ynode *n, const char *path)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "a file path");

    if (!s)
        return NULL;
    if (n->len == 0) {
        err(c, n, "%s: must not be empty", path);
        return NULL;
    }
    if (access(s, R_OK) != 0) {
        err(c, n, "%s: cannot read \"%s\": %s", path, quote(q, n), strerror(errno));
        return NULL;
    }
    return tp_cfg_arena_strndup(c->a, s, n->len);
}

static bool get_bool(struct cctx *c, const struct tp_ynode *n, const char *path, bool *out)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "true or false");

    if (!s)
        return false;
    if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0) {
        *out = s[0] == 't';
        return true;
    }
    err(c, n, "%s: invalid value \"%s\" (expected true or false)", path, quote(q, n));
    return false;
}

/* listeners[i].tls: certificates (cert + key, first = default), protocols, alpn. */
static void parse_listener_tls(struct cctx *c, const struct tp_ynode *n, const char *lp,
                               struct tp_cfg_listener *l)
{
    static const char *const keys[] = {"certificates", "protocols", "alpn"};
    enum { K_CERTS = 0, K_PROTOS, K_ALPN };
    static const char *const cert_keys[] = {"cert", "key"};
    static const char *const protos[] = {"TLSv1.2", "TLSv1.3"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], ip[PATH_MAX_LEN], q[QUOTE_LEN];
    struct fields f;
    struct tp_cfg_tls_server *t;

    kpath(p, lp, "tls");
    if (!walk_map(c, n, p, "listeners[].tls", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    t = tp_cfg_arena_calloc(c->a, 1, sizeof(*t));
    if (!t) {
        c->errs.oom = true;
        return;
    }
    t->pos = (struct tp_pos){n->line, n->col};
    t->protocols = TP_TLS_V1_2 | TP_TLS_V1_3;
    l->tls = t;

    if (!f.val[K_CERTS]) {
        if (!f.key[K_CERTS])
            missing(c, n, p, "certificates");
    } else if (is_seq(c, f.val[K_CERTS], kpath(kp, p, "certificates"))) {
        const struct tp_ynode *cl = f.val[K_CERTS];
        if (cl->n == 0)
            err(c, cl, "%s: at least one certificate is required", kp);
        t->certs = tp_cfg_arena_calloc(c->a, cl->n ? cl->n : 1, sizeof(*t->certs));
        if (!t->certs) {
            c->errs.oom = true;
            return;
        }
        for (size_t i = 0; i < cl->n; i++) {
            struct fields cf;
            struct tp_cfg_cert *ce = &t->certs[i];
            ipath(ip, kp, i);
            ce->pos = (struct tp_pos){cl->items[i]->line, cl->items[i]->col};
            if (!walk_map(c, cl->items[i], ip, "listeners[].tls.certificates[]", cert_keys, 2, &cf))
                continue;
            char cp[PATH_MAX_LEN];
            if (cf.val[0])
                ce->cert = get_file(c, cf.val[0], kpath(cp, ip, "cert"));
            else if (!cf.key[0])
                missing(c, cl->items[i], ip, "cert");
            if (cf.val[1])
                ce->key = get_file(c, cf.val[1], kpath(cp, ip, "key"));
            else if (!cf.key[1])
                missing(c, cl->items[i], ip, "key");
            if (ce->cert && ce->key) {
                /* everything the file names is checked: the pair must load and match */
                char e[512];
                if (tp_tls_check_pair(ce->cert, ce->key, e, sizeof(e)) < 0)
                    err(c, cf.val[0], "%s: %s", kpath(cp, ip, "cert"), e);
            }
        }
        t->n_certs = cl->n;
    }
    if (f.val[K_PROTOS] && is_seq(c, f.val[K_PROTOS], kpath(kp, p, "protocols"))) {
        const struct tp_ynode *pl = f.val[K_PROTOS];
        t->protocols = 0;
        if (pl->n == 0)
            err(c, pl, "%s: at least one protocol is required (TLSv1.2, TLSv1.3)", kp);
        for (size_t i = 0; i < pl->n; i++) {
            int v;
            if (get_enum(c, pl->items[i], ipath(ip, kp, i), protos, 2, "TLSv1.2 or TLSv1.3", &v))
                t->protocols |= v == 0 ? TP_TLS_V1_2 : TP_TLS_V1_3;
        }
        if (!t->protocols)
            t->protocols = TP_TLS_V1_2 | TP_TLS_V1_3;
    }
    if (f.val[K_ALPN] && is_seq(c, f.val[K_ALPN], kpath(kp, p, "alpn"))) {
        const struct tp_ynode *al = f.val[K_ALPN];
        t->alpn = tp_cfg_arena_calloc(c->a, al->n ? al->n : 1, sizeof(*t->alpn));
        if (!t->alpn) {
            c->errs.oom = true;
            return;
        }
        for (size_t i = 0; i < al->n; i++) {
            const char *s = scalar(c, al->items[i], ipath(ip, kp, i), "a protocol id");
            if (!s)
                continue;
            /* turnpike speaks HTTP/1.x: announcing h2 would break every client that picks it */
            if (strcmp(s, "http/1.1") != 0 && strcmp(s, "http/1.0") != 0) {
                err(c, al->items[i],
                    "%s: invalid value \"%s\" (expected http/1.1 or http/1.0: turnpike speaks HTTP/1.x)", ip,
                    quote(q, al->items[i]));
                continue;
            }
            t->alpn[t->n_alpn++] = tp_cfg_arena_strndup(c->a, s, al->items[i]->len);
        }
    }
}

/* upstreams[i].tls: sni, verify (default true), ca. */
static void parse_upstream_tls(struct cctx *c, const struct tp_ynode *n, const char *up,
                               struct tp_cfg_upstream *u)
{
    static const char *const keys[] = {"sni", "verify", "ca"};
    enum { K_SNI = 0, K_VERIFY, K_CA };
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], q[QUOTE_LEN];
    struct fields f;
    struct tp_cfg_upstream_tls *t;

    kpath(p, up, "tls");
    if (!walk_map(c, n, p, "upstreams[].tls", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    t = tp_cfg_arena_calloc(c->a, 1, sizeof(*t));
    if (!t) {
        c->errs.oom = true;
        return;
    }
    t->pos = (struct tp_pos){n->line, n->col};
    t->verify = true;
    u->tls = t;
    if (f.val[K_SNI]) {
        const char *s = scalar(c, f.val[K_SNI], kpath(kp, p, "sni"), "a host name");
        const char *why = s ? tp_cfg_check_host(s, f.val[K_SNI]->len) : NULL;
        if (s && !why && s[0] == '*')
            why = "a name, not a wildcard";
        if (why)
            err(c, f.val[K_SNI], "%s: invalid host \"%s\" (%s)", kp, quote(q, f.val[K_SNI]), why);
        else if (s)
            t->sni = lower_dup(c, s, f.val[K_SNI]->len);
    }
    if (f.val[K_VERIFY])
        get_bool(c, f.val[K_VERIFY], kpath(kp, p, "verify"), &t->verify);
    if (f.val[K_CA]) {
        t->ca = get_file(c, f.val[K_CA], kpath(kp, p, "ca"));
        char e[512];
        if (t->ca && tp_tls_check_ca(t->ca, e, sizeof(e)) < 0)
            err(c, f.val[K_CA], "%s: %s", kp, e);
    }
}

static void parse_listeners(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"name", "address", "tls"};
    enum { K_NAME = 0, K_ADDRESS, K_TLS };
    struct tp_config *cfg = c->cfg;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    if (!is_seq(c, n, "listeners"))
        return;
    if (n->n == 0) {
        err(c, n, "listeners: at least one listener is required");
        return;
    }
    cfg->listeners = tp_cfg_arena_calloc(c->a, n->n, sizeof(*cfg->listeners));
    char **names = tp_cfg_arena_calloc(c->a, n->n, sizeof(*names));
    const struct tp_ynode **name_at = tp_cfg_arena_calloc(c->a, n->n, sizeof(*name_at));
    const struct tp_ynode **addr_at = tp_cfg_arena_calloc(c->a, n->n, sizeof(*addr_at));
    if (!cfg->listeners || !names || !name_at || !addr_at) {
        c->errs.oom = true;
        return;
    }
    cfg->n_listeners = n->n;

    for (size_t i = 0; i < n->n; i++) {
        struct tp_cfg_listener *l = &cfg->listeners[i];
        const struct tp_ynode *item = n->items[i];
        struct fields f;

        ipath(p, "listeners", i);
        l->pos = (struct tp_pos){item->line, item->col};
        name_at[i] = item;
        if (!walk_map(c, item, p, "listeners[]", keys, TP_ARRAY_SIZE(keys), &f))
            continue;
        if (f.val[K_NAME]) {
            name_at[i] = f.val[K_NAME];
            names[i] = get_name(c, f.val[K_NAME], kpath(kp, p, "name"));
        } else if (!f.key[K_NAME]) {
            names[i] = tp_cfg_arena_strndup(c->a, p, strlen(p));
        }
        l->name = names[i];
        if (f.val[K_ADDRESS]) {
            l->addr_pos = (struct tp_pos){f.val[K_ADDRESS]->line, f.val[K_ADDRESS]->col};
            if (get_addr(c, f.val[K_ADDRESS], kpath(kp, p, "address"), &l->addr))
                addr_at[i] = f.val[K_ADDRESS];
        } else if (!f.key[K_ADDRESS]) {
            missing(c, item, p, "address");
        }
        if (f.val[K_TLS])
            parse_listener_tls(c, f.val[K_TLS], p, l);
    }
    check_unique_names(c, names, name_at, n->n, "listeners");

    for (size_t i = 1; i < n->n; i++) {
        for (size_t j = 0; addr_at[i] && j < i; j++) {
            if (addr_at[j] && addr_equal(&cfg->listeners[i].addr, &cfg->listeners[j].addr)) {
                char first[PATH_MAX_LEN];
                err(c, addr_at[i], "%s: %s is already used by %s",
                    kpath(kp, ipath(p, "listeners", i), "address"), cfg->listeners[i].addr.text,
                    ipath(first, "listeners", j));
                break;
            }
        }
    }
}

/* The admin listener may share no address with a data listener: the second
 * in the file is the one in error. Runs once both sections are parsed. */
static void check_admin_address(struct cctx *c, const struct tp_ynode *admin_addr)
{
    struct tp_config *cfg = c->cfg;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    if (!cfg->has_admin || !admin_addr)
        return;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        struct tp_cfg_listener *l = &cfg->listeners[i];
        if (!l->addr.len || !addr_equal(&l->addr, &cfg->admin))
            continue;
        struct tp_ynode at = {.line = l->addr_pos.line, .col = l->addr_pos.col};
        if (pos_before(&at, admin_addr))
            err(c, admin_addr, "admin.address: %s is already used by %s", cfg->admin.text,
                ipath(p, "listeners", i));
        else
            err(c, &at, "%s: %s is already used by admin.address",
                kpath(kp, ipath(p, "listeners", i), "address"), l->addr.text);
        return; /* one message per clash is enough */
    }
}

/* ---- upstreams ---- */

static void parse_health_check(struct cctx *c, const struct tp_ynode *n, const char *up,
                               struct tp_cfg_upstream *u)
{
    static const char *const keys[] = {"path", "interval", "timeout", "healthy_after", "unhealthy_after"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], q[QUOTE_LEN];
    struct fields f;

    kpath(p, up, "health_check");
    if (!walk_map(c, n, p, "upstreams[].health_check", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    struct tp_cfg_health_check *h = tp_cfg_arena_alloc(c->a, sizeof(*h));
    if (!h) {
        c->errs.oom = true;
        return;
    }
    *h = (struct tp_cfg_health_check){
        .path = "/",
        .interval_ms = 2 * MS_PER_S,
        .timeout_ms = 1 * MS_PER_S,
        .healthy_after = 2,
        .unhealthy_after = 3,
    };
    u->health_check = h;
    if (f.val[0]) {
        const char *s = scalar(c, f.val[0], kpath(kp, p, "path"), "a string");
        const char *why = s ? tp_cfg_check_path(s, f.val[0]->len, true) : NULL;
        if (why)
            err(c, f.val[0], "%s: invalid path \"%s\" (%s)", kp, quote(q, f.val[0]), why);
        else if (s)
            h->path = tp_cfg_arena_strndup(c->a, s, f.val[0]->len);
    }
    if (f.val[1])
        get_duration(c, f.val[1], kpath(kp, p, "interval"), 10, MS_PER_H, "10ms..1h", &h->interval_ms);
    if (f.val[2])
        get_duration(c, f.val[2], kpath(kp, p, "timeout"), 1, MS_PER_H, "1ms..1h", &h->timeout_ms);
    if (f.val[3])
        get_u32(c, f.val[3], kpath(kp, p, "healthy_after"), 1, 100, &h->healthy_after);
    if (f.val[4])
        get_u32(c, f.val[4], kpath(kp, p, "unhealthy_after"), 1, 100, &h->unhealthy_after);
}

static void parse_breaker(struct cctx *c, const struct tp_ynode *n, const char *up, struct tp_cfg_upstream *u)
{
    static const char *const keys[] = {
        "consecutive_failures", "failure_ratio", "min_requests", "window", "open_for", "half_open_requests"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];
    struct fields f;

    kpath(p, up, "circuit_breaker");
    if (!walk_map(c, n, p, "upstreams[].circuit_breaker", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    struct tp_cfg_circuit_breaker *b = tp_cfg_arena_alloc(c->a, sizeof(*b));
    if (!b) {
        c->errs.oom = true;
        return;
    }
    *b = (struct tp_cfg_circuit_breaker){
        .consecutive_failures = 5,
        .failure_ratio = 0.5,
        .min_requests = 20,
        .window_ms = 10 * MS_PER_S,
        .open_for_ms = 10 * MS_PER_S,
        .half_open_requests = 3,
    };
    u->circuit_breaker = b;
    if (f.val[0])
        get_u32(c, f.val[0], kpath(kp, p, "consecutive_failures"), 1, 10000, &b->consecutive_failures);
    if (f.val[1])
        get_ratio(c, f.val[1], kpath(kp, p, "failure_ratio"), &b->failure_ratio);
    if (f.val[2])
        get_u32(c, f.val[2], kpath(kp, p, "min_requests"), 1, 1000000, &b->min_requests);
    if (f.val[3])
        get_duration(c, f.val[3], kpath(kp, p, "window"), MS_PER_S, MS_PER_H, "1s..1h", &b->window_ms);
    if (f.val[4])
        get_duration(c, f.val[4], kpath(kp, p, "open_for"), 1, 24 * MS_PER_H, "1ms..24h", &b->open_for_ms);
    if (f.val[5])
        get_u32(c, f.val[5], kpath(kp, p, "half_open_requests"), 1, 1000, &b->half_open_requests);
}

static void parse_retries(struct cctx *c, const struct tp_ynode *n, const char *up, struct tp_cfg_upstream *u)
{
    static const char *const keys[] = {"attempts", "on"};
    static const char *const conds[] = {"connect_failure", "reset", "502", "503", "504"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], ip[PATH_MAX_LEN];
    struct fields f;

    kpath(p, up, "retries");
    if (!walk_map(c, n, p, "upstreams[].retries", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    struct tp_cfg_retries *r = tp_cfg_arena_alloc(c->a, sizeof(*r));
    if (!r) {
        c->errs.oom = true;
        return;
    }
    r->attempts = 1;
    r->on = TP_RETRY_CONNECT_FAILURE | TP_RETRY_RESET;
    u->retries = r;
    if (f.val[0])
        get_u32(c, f.val[0], kpath(kp, p, "attempts"), 0, 10, &r->attempts);
    if (f.val[1] && is_seq(c, f.val[1], kpath(kp, p, "on"))) {
        /* The bit order of TP_RETRY_* follows conds[]. */
        r->on = 0;
        for (size_t i = 0; i < f.val[1]->n; i++) {
            int which;
            if (get_enum(c, f.val[1]->items[i], ipath(ip, kp, i), conds, TP_ARRAY_SIZE(conds),
                         "connect_failure, reset, 502, 503 or 504", &which))
                r->on |= 1u << which;
        }
    }
}

static void parse_endpoints(struct cctx *c, const struct tp_ynode *n, const char *up,
                            struct tp_cfg_upstream *u)
{
    static const char *const keys[] = {"address", "weight"};
    char p[PATH_MAX_LEN], ip[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    kpath(p, up, "endpoints");
    if (!is_seq(c, n, p))
        return;
    if (n->n == 0) {
        err(c, n, "%s: at least one endpoint is required", p);
        return;
    }
    u->endpoints = tp_cfg_arena_calloc(c->a, n->n, sizeof(*u->endpoints));
    const struct tp_ynode **addr_at = tp_cfg_arena_calloc(c->a, n->n, sizeof(*addr_at));
    if (!u->endpoints || !addr_at) {
        c->errs.oom = true;
        return;
    }
    u->n_endpoints = n->n;
    for (size_t i = 0; i < n->n; i++) {
        struct tp_cfg_endpoint *e = &u->endpoints[i];
        const struct tp_ynode *item = n->items[i];
        struct fields f;

        e->weight = 1;
        e->pos = (struct tp_pos){item->line, item->col};
        ipath(ip, p, i);
        if (!walk_map(c, item, ip, "upstreams[].endpoints[]", keys, TP_ARRAY_SIZE(keys), &f))
            continue;
        if (f.val[0]) {
            if (get_addr(c, f.val[0], kpath(kp, ip, "address"), &e->addr))
                addr_at[i] = f.val[0];
        } else if (!f.key[0]) {
            missing(c, item, ip, "address");
        }
        if (f.val[1])
            get_u32(c, f.val[1], kpath(kp, ip, "weight"), 1, 1000, &e->weight);
    }
    for (size_t i = 1; i < n->n; i++) {
        for (size_t j = 0; addr_at[i] && j < i; j++) {
            if (addr_at[j] && addr_equal(&u->endpoints[i].addr, &u->endpoints[j].addr)) {
                err(c, addr_at[i], "%s: %s is already listed as endpoints[%zu]",
                    kpath(kp, ipath(ip, p, i), "address"), u->endpoints[i].addr.text, j);
                break;
            }
        }
    }
}

static void parse_upstreams(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"name",         "endpoints",       "balance",
                                       "hash_key",     "keepalive",       "tls",
                                       "health_check", "circuit_breaker", "max_concurrent_requests",
                                       "retries"};
    enum {
        K_NAME = 0,
        K_ENDPOINTS,
        K_BALANCE,
        K_HASH_KEY,
        K_KEEPALIVE,
        K_TLS,
        K_HEALTH,
        K_BREAKER,
        K_MAXREQ,
        K_RETRIES,
    };
    static const char *const balances[] = {"round_robin", "least_request", "hash"};
    struct tp_config *cfg = c->cfg;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    if (!is_seq(c, n, "upstreams"))
        return;
    if (n->n == 0)
        return;
    cfg->upstreams = tp_cfg_arena_calloc(c->a, n->n, sizeof(*cfg->upstreams));
    char **names = tp_cfg_arena_calloc(c->a, n->n, sizeof(*names));
    const struct tp_ynode **name_at = tp_cfg_arena_calloc(c->a, n->n, sizeof(*name_at));
    if (!cfg->upstreams || !names || !name_at) {
        c->errs.oom = true;
        return;
    }
    cfg->n_upstreams = n->n;

    for (size_t i = 0; i < n->n; i++) {
        struct tp_cfg_upstream *u = &cfg->upstreams[i];
        const struct tp_ynode *item = n->items[i];
        struct fields f;
        int bal;

        u->balance = TP_BALANCE_ROUND_ROBIN;
        u->keepalive = 32;
        u->pos = (struct tp_pos){item->line, item->col};
        name_at[i] = item;
        ipath(p, "upstreams", i);
        if (!walk_map(c, item, p, "upstreams[]", keys, TP_ARRAY_SIZE(keys), &f))
            continue;

        if (f.val[K_NAME]) {
            name_at[i] = f.val[K_NAME];
            names[i] = u->name = get_name(c, f.val[K_NAME], kpath(kp, p, "name"));
        } else if (!f.key[K_NAME]) {
            missing(c, item, p, "name");
        }
        if (f.val[K_ENDPOINTS])
            parse_endpoints(c, f.val[K_ENDPOINTS], p, u);
        else if (!f.key[K_ENDPOINTS])
            missing(c, item, p, "endpoints");
        bool bal_ok = !f.val[K_BALANCE] ||
                      get_enum(c, f.val[K_BALANCE], kpath(kp, p, "balance"), balances,
                               TP_ARRAY_SIZE(balances), "round_robin, least_request or hash", &bal);
        if (f.val[K_BALANCE] && bal_ok)
            u->balance = (enum tp_balance)bal;
        if (f.val[K_HASH_KEY])
            get_key(c, f.val[K_HASH_KEY], kpath(kp, p, "hash_key"), KEY_FOR_HASH, &u->hash_key);
        /* hash_key and balance: hash go together; blame the one that is
         * there without the other (a broken hash_key was reported already). */
        if (bal_ok && u->balance == TP_BALANCE_HASH && !f.key[K_HASH_KEY])
            err(c, f.val[K_BALANCE], "%s: hash needs hash_key", kpath(kp, p, "balance"));
        if (bal_ok && u->balance != TP_BALANCE_HASH && f.key[K_HASH_KEY]) {
            warn(c, f.key[K_HASH_KEY], "%s: only used with balance: hash (ignored)",
                 kpath(kp, p, "hash_key"));
            memset(&u->hash_key, 0, sizeof(u->hash_key));
        }
        if (f.val[K_KEEPALIVE])
            get_u32(c, f.val[K_KEEPALIVE], kpath(kp, p, "keepalive"), 0, 10000, &u->keepalive);
        if (f.val[K_TLS])
            parse_upstream_tls(c, f.val[K_TLS], p, u);
        if (f.val[K_HEALTH])
            parse_health_check(c, f.val[K_HEALTH], p, u);
        if (f.val[K_BREAKER])
            parse_breaker(c, f.val[K_BREAKER], p, u);
        if (f.val[K_MAXREQ])
            get_u32(c, f.val[K_MAXREQ], kpath(kp, p, "max_concurrent_requests"), 1, 10000000,
                    &u->max_concurrent_requests);
        if (f.val[K_RETRIES])
            parse_retries(c, f.val[K_RETRIES], p, u);
    }
    check_unique_names(c, names, name_at, n->n, "upstreams");
}

/* ---- routes ---- */

/* Index of the upstream called <n>'s text, or TP_UPSTREAM_NONE after an
 * error (or silently when the upstreams section itself was unusable). */
static size_t resolve_upstream(struct cctx *c, const struct tp_ynode *n, const char *path)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, n, path, "an upstream name");

    if (!s)
        return TP_UPSTREAM_NONE;
    for (size_t i = 0; i < c->cfg->n_upstreams; i++)
        if (c->cfg->upstreams[i].name && strcmp(c->cfg->upstreams[i].name, s) == 0)
            return i;
    if (c->upstreams_ok)
        err(c, n, "%s: no upstream named \"%s\"", path, quote(q, n));
    return TP_UPSTREAM_NONE;
}

static void parse_split(struct cctx *c, const struct tp_ynode *n, const char *rp, struct tp_cfg_route *r)
{
    static const char *const keys[] = {"upstream", "weight"};
    char p[PATH_MAX_LEN], ip[PATH_MAX_LEN], kp[PATH_MAX_LEN];
    uint64_t sum = 0;
    bool all_ok = true;

    kpath(p, rp, "split");
    if (!is_seq(c, n, p))
        return;
    if (n->n == 0) {
        err(c, n, "%s: expected at least one upstream", p);
        return;
    }
    r->split = tp_cfg_arena_calloc(c->a, n->n, sizeof(*r->split));
    if (!r->split) {
        c->errs.oom = true;
        return;
    }
    r->n_split = n->n;
    for (size_t i = 0; i < n->n; i++) {
        struct tp_cfg_split *s = &r->split[i];
        const struct tp_ynode *item = n->items[i];
        struct fields f;

        s->upstream = TP_UPSTREAM_NONE;
        s->weight = 1;
        s->pos = (struct tp_pos){item->line, item->col};
        ipath(ip, p, i);
        if (!walk_map(c, item, ip, "routes[].split[]", keys, TP_ARRAY_SIZE(keys), &f)) {
            all_ok = false;
            continue;
        }
        if (f.val[0]) {
            s->upstream = resolve_upstream(c, f.val[0], kpath(kp, ip, "upstream"));
            for (size_t j = 0; s->upstream != TP_UPSTREAM_NONE && j < i; j++) {
                if (r->split[j].upstream == s->upstream) {
                    err(c, f.val[0], "%s: upstream \"%s\" is already in split[%zu]", kp,
                        c->cfg->upstreams[s->upstream].name, j);
                    break;
                }
            }
        } else if (!f.key[0]) {
            missing(c, item, ip, "upstream");
        }
        if (f.val[1] && !get_u32(c, f.val[1], kpath(kp, ip, "weight"), 0, 1000, &s->weight))
            all_ok = false;
        sum += s->weight;
    }
    if (all_ok && sum == 0)
        err(c, n, "%s: the weights add up to 0 (at least one must be above 0)", p);
}

static void parse_direct(struct cctx *c, const struct tp_ynode *n, const char *rp, struct tp_cfg_route *r)
{
    static const char *const keys[] = {"status", "body"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];
    struct fields f;
    uint64_t status;

    kpath(p, rp, "direct_response");
    if (!walk_map(c, n, p, "routes[].direct_response", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    struct tp_cfg_direct_response *d = tp_cfg_arena_alloc(c->a, sizeof(*d));
    if (!d) {
        c->errs.oom = true;
        return;
    }
    d->body = "";
    r->direct = d;
    if (f.val[0]) {
        if (get_uint(c, f.val[0], kpath(kp, p, "status"), 200, 599, &status))
            d->status = (uint16_t)status;
    } else if (!f.key[0]) {
        missing(c, n, p, "status");
    }
    if (f.val[1]) {
        /* The body is bytes with a length: NULs are fine here. */
        const struct tp_ynode *b = f.val[1];
        if (b->kind != TP_Y_SCALAR || b->null)
            type_err(c, b, kpath(kp, p, "body"), "a string");
        else if (b->len > BODY_MAX_LEN)
            err(c, b, "%s: too long (%zu bytes, at most 1MiB)", kpath(kp, p, "body"), b->len);
        else if (!(d->body = tp_cfg_arena_strndup(c->a, b->str, b->len)))
            c->errs.oom = true;
        else
            d->body_len = b->len;
    }
}

static void parse_rate_limit(struct cctx *c, const struct tp_ynode *n, const char *rp, struct tp_cfg_route *r)
{
    static const char *const keys[] = {"rate", "burst", "key"};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], q[QUOTE_LEN];
    struct fields f;

    kpath(p, rp, "rate_limit");
    if (!walk_map(c, n, p, "routes[].rate_limit", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    struct tp_cfg_rate_limit *rl = tp_cfg_arena_alloc(c->a, sizeof(*rl));
    if (!rl) {
        c->errs.oom = true;
        return;
    }
    rl->key.kind = TP_KEY_CLIENT_IP;
    r->rate_limit = rl;
    if (f.val[0]) {
        const char *s = scalar(c, f.val[0], kpath(kp, p, "rate"), "a rate");
        int rc = s ? tp_parse_rate(s, &rl->tokens, &rl->period_ms) : 0;
        if (rc == -EINVAL)
            err(c, f.val[0], "%s: invalid rate \"%s\" (expected e.g. 100/s, 6000/m, 50000/h)", kp,
                quote(q, f.val[0]));
        else if (rc < 0)
            err(c, f.val[0], "%s: %s is out of range (1..1000000000 per s, m or h)", kp, quote(q, f.val[0]));
    } else if (!f.key[0]) {
        missing(c, n, p, "rate");
    }
    /* The bucket holds one period's worth unless told otherwise. */
    rl->burst = rl->tokens;
    if (f.val[1])
        get_uint(c, f.val[1], kpath(kp, p, "burst"), 1, 1000000000, &rl->burst);
    if (f.val[2])
        get_key(c, f.val[2], kpath(kp, p, "key"), KEY_FOR_RATE, &rl->key);
}

static bool is_managed_header(const char *s, size_t len)
{
    for (size_t i = 0; i < TP_ARRAY_SIZE(managed_headers); i++)
        if (strlen(managed_headers[i]) == len && strncasecmp(managed_headers[i], s, len) == 0)
            return true;
    return false;
}

static bool name_is(const char *s, size_t len, const char *what)
{
    return strlen(what) == len && strncasecmp(s, what, len) == 0;
}

enum hdr_use {
    HDR_MATCH = 0,    /* match.headers */
    HDR_SET_REQUEST,  /* request_headers.set */
    HDR_SET_RESPONSE, /* response_headers.set */
};

/* A map header-name -> value (match.headers or a rewrite's `set`). Names are
 * unique case-insensitively; the second one is the error, at its key. */
static void parse_header_map(struct cctx *c, const struct tp_ynode *n, const char *path, enum hdr_use use,
                             struct tp_header_kv **out, size_t *n_out)
{
    char q[QUOTE_LEN], vp[PATH_MAX_LEN];

    if (n->kind != TP_Y_MAP) {
        type_err(c, n, path, "a mapping of header names to values");
        return;
    }
    struct tp_header_kv *kv = tp_cfg_arena_calloc(c->a, n->n ? n->n : 1, sizeof(*kv));
    if (!kv) {
        c->errs.oom = true;
        return;
    }
    *out = kv;
    *n_out = 0;
    for (size_t i = 0; i < n->n; i++) {
        const struct tp_ynode *k = n->pairs[i].key, *v = n->pairs[i].val;
        bool dup = false;

        if (k->kind != TP_Y_SCALAR || k->null || !tp_cfg_is_token(k->str, k->len)) {
            char d[QUOTE_LEN + 2];
            if (k->kind == TP_Y_SCALAR && !k->null)
                err(c, k, "%s: invalid header name \"%s\" (expected letters, digits or !#$%%&'*+-.^_`|~)",
                    path, quote(q, k));
            else
                err(c, k, "%s: expected a header name, got %s", path, describe(d, k));
            continue;
        }
        for (size_t j = 0; j < i && !dup; j++) {
            const struct tp_ynode *o = n->pairs[j].key;
            dup = o->kind == TP_Y_SCALAR && o->len == k->len && strncasecmp(o->str, k->str, k->len) == 0;
        }
        if (dup) {
            err(c, k, "%s: duplicate header \"%s\"", path, quote(q, k));
            continue;
        }
        if (use != HDR_MATCH && is_managed_header(k->str, k->len)) {
            err(c, k, "%s: %s cannot be set (framing and hop-by-hop headers are managed by turnpike)", path,
                quote(q, k));
            continue;
        }
        if (use == HDR_SET_RESPONSE && name_is(k->str, k->len, "host")) {
            err(c, k, "%s: host can only be set in request_headers", path);
            continue;
        }
        kpath(vp, path, quote(q, k));
        const char *s = scalar(c, v, vp, "a header value");
        if (!s)
            continue;
        const char *why = tp_cfg_check_header_value(s, v->len);
        if (why) {
            err(c, v, "%s: invalid header value \"%s\" (%s)", vp, quote(q, v), why);
            continue;
        }
        struct tp_header_kv *h = &kv[(*n_out)++];
        h->name = tp_cfg_arena_strndup(c->a, k->str, k->len);
        h->name_len = k->len;
        h->value = tp_cfg_arena_strndup(c->a, s, v->len);
        h->value_len = v->len;
        if (!h->name || !h->value)
            c->errs.oom = true;
    }
}

static void parse_rewrite(struct cctx *c, const struct tp_ynode *n, const char *rp, bool request,
                          struct tp_header_rewrite *rw)
{
    static const char *const keys[] = {"set", "remove"};
    const char *section = request ? "request_headers" : "response_headers";
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], ip[PATH_MAX_LEN], q[QUOTE_LEN];
    char schema[64];
    struct fields f;

    kpath(p, rp, section);
    snprintf(schema, sizeof(schema), "routes[].%s", section);
    if (!walk_map(c, n, p, schema, keys, TP_ARRAY_SIZE(keys), &f))
        return;
    if (f.val[0])
        parse_header_map(c, f.val[0], kpath(kp, p, "set"), request ? HDR_SET_REQUEST : HDR_SET_RESPONSE,
                         &rw->set, &rw->n_set);
    if (!f.val[1] || !is_seq(c, f.val[1], kpath(kp, p, "remove")))
        return;

    const struct tp_ynode *list = f.val[1];
    rw->remove = tp_cfg_arena_calloc(c->a, list->n ? list->n : 1, sizeof(*rw->remove));
    if (!rw->remove) {
        c->errs.oom = true;
        return;
    }
    for (size_t i = 0; i < list->n; i++) {
        const struct tp_ynode *it = list->items[i];
        const char *s = scalar(c, it, ipath(ip, kp, i), "a header name");
        bool bad = false;

        if (!s)
            continue;
        if (!tp_cfg_is_token(s, it->len)) {
            err(c, it, "%s: invalid header name \"%s\" (expected letters, digits or !#$%%&'*+-.^_`|~)", ip,
                quote(q, it));
            continue;
        }
        if (is_managed_header(s, it->len) || name_is(s, it->len, "host")) {
            err(c, it, "%s: %s cannot be removed (%s)", ip, quote(q, it),
                name_is(s, it->len, "host") ? "every HTTP/1.1 request needs it"
                                            : "framing and hop-by-hop headers are managed by turnpike");
            continue;
        }
        for (size_t j = 0; j < rw->n_remove && !bad; j++)
            bad = rw->remove[j].name_len == it->len && strncasecmp(rw->remove[j].name, s, it->len) == 0;
        if (bad) {
            err(c, it, "%s: duplicate header \"%s\"", ip, quote(q, it));
            continue;
        }
        for (size_t j = 0; j < rw->n_set && !bad; j++)
            bad = rw->set[j].name_len == it->len && strncasecmp(rw->set[j].name, s, it->len) == 0;
        if (bad) {
            err(c, it, "%s: %s is also in %s.set (set replaces it already)", ip, quote(q, it), section);
            continue;
        }
        struct tp_header_kv *h = &rw->remove[rw->n_remove++];
        h->name = tp_cfg_arena_strndup(c->a, s, it->len);
        h->name_len = it->len;
        if (!h->name)
            c->errs.oom = true;
    }
}

/* Parses match: into <r>. Clears *<path_ok> when r->path cannot be trusted
 * (invalid, or both path and path_prefix given), so that strip_prefix is not
 * checked against a path that is already reported. */
static void parse_match(struct cctx *c, const struct tp_ynode *n, const char *rp, struct tp_cfg_route *r,
                        bool *path_ok)
{
    static const char *const keys[] = {"host", "path", "path_prefix", "methods", "headers"};
    enum { K_HOST = 0, K_PATH, K_PREFIX, K_METHODS, K_HEADERS };
    static const int path_keys[] = {K_PATH, K_PREFIX};
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], ip[PATH_MAX_LEN], q[QUOTE_LEN];
    struct fields f;

    kpath(p, rp, "match");
    if (!walk_map(c, n, p, "routes[].match", keys, TP_ARRAY_SIZE(keys), &f)) {
        *path_ok = false;
        return;
    }
    if (f.val[K_HOST]) {
        const char *s = scalar(c, f.val[K_HOST], kpath(kp, p, "host"), "a host name");
        const char *why = s ? tp_cfg_check_host(s, f.val[K_HOST]->len) : NULL;
        if (why)
            err(c, f.val[K_HOST], "%s: invalid host \"%s\" (%s)", kp, quote(q, f.val[K_HOST]), why);
        else if (s)
            r->host = lower_dup(c, s, f.val[K_HOST]->len);
    }

    if (only_one_of(c, &f, p, keys, path_keys, 2, "path and path_prefix") > 1)
        *path_ok = false;
    for (int i = 0; i < 2; i++) {
        int k = path_keys[i];
        const struct tp_ynode *v = f.val[k];
        if (!v)
            continue;
        const char *s = scalar(c, v, kpath(kp, p, keys[k]), "a path");
        const char *why = s ? tp_cfg_check_path(s, v->len, false) : NULL;
        if (!s || why) {
            if (why)
                err(c, v, "%s: invalid path \"%s\" (%s)", kp, quote(q, v), why);
            *path_ok = false;
            continue;
        }
        if (*path_ok) {
            r->path = tp_cfg_arena_strndup(c->a, s, v->len);
            r->path_exact = k == K_PATH;
        }
    }

    if (f.val[K_METHODS] && is_seq(c, f.val[K_METHODS], kpath(kp, p, "methods"))) {
        const struct tp_ynode *list = f.val[K_METHODS];
        if (list->n == 0)
            err(c, list, "%s: expected at least one method (leave methods out to match any)", kp);
        for (size_t i = 0; i < list->n; i++) {
            const struct tp_ynode *it = list->items[i];
            const char *s = scalar(c, it, ipath(ip, kp, i), "a method");
            int m = s ? tp_cfg_method(s, it->len) : -1;
            if (s && m < 0)
                err(c, it, "%s: unknown method \"%s\" (expected an HTTP method in upper case, e.g. GET)", ip,
                    quote(q, it));
            else if (s)
                r->methods |= 1ull << m;
        }
    }
    if (f.val[K_HEADERS])
        parse_header_map(c, f.val[K_HEADERS], kpath(kp, p, "headers"), HDR_MATCH, &r->headers, &r->n_headers);
}

/* strip_prefix S fits match path P when every request path the route
 * matches starts with S at a segment boundary: S is "/" or P is S or P
 * continues with '/' after S. */
static bool segment_prefix(const char *s, const char *p)
{
    size_t n = strlen(s);
    if (strcmp(s, "/") == 0)
        return true;
    return strncmp(p, s, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

static void parse_routes(struct cctx *c, const struct tp_ynode *n)
{
    static const char *const keys[] = {"name",           "match",      "upstream",        "split",
                                       "strip_prefix",   "rate_limit", "request_headers", "response_headers",
                                       "direct_response"};
    enum {
        K_NAME = 0,
        K_MATCH,
        K_UPSTREAM,
        K_SPLIT,
        K_STRIP,
        K_RATE,
        K_REQ,
        K_RESP,
        K_DIRECT,
    };
    static const int target_keys[] = {K_UPSTREAM, K_SPLIT, K_DIRECT};
    struct tp_config *cfg = c->cfg;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], q[QUOTE_LEN];

    if (!is_seq(c, n, "routes") || n->n == 0)
        return;
    cfg->routes = tp_cfg_arena_calloc(c->a, n->n, sizeof(*cfg->routes));
    char **names = tp_cfg_arena_calloc(c->a, n->n, sizeof(*names));
    const struct tp_ynode **name_at = tp_cfg_arena_calloc(c->a, n->n, sizeof(*name_at));
    if (!cfg->routes || !names || !name_at) {
        c->errs.oom = true;
        return;
    }
    cfg->n_routes = n->n;

    for (size_t i = 0; i < n->n; i++) {
        struct tp_cfg_route *r = &cfg->routes[i];
        const struct tp_ynode *item = n->items[i];
        struct fields f;
        bool path_ok = true;

        r->path = "/";
        r->upstream = TP_UPSTREAM_NONE;
        r->pos = (struct tp_pos){item->line, item->col};
        name_at[i] = item;
        ipath(p, "routes", i);
        if (!walk_map(c, item, p, "routes[]", keys, TP_ARRAY_SIZE(keys), &f))
            continue;

        if (f.val[K_NAME]) {
            name_at[i] = f.val[K_NAME];
            names[i] = get_name(c, f.val[K_NAME], kpath(kp, p, "name"));
        } else if (!f.key[K_NAME]) {
            names[i] = tp_cfg_arena_strndup(c->a, p, strlen(p));
        }
        r->name = names[i];
        if (f.val[K_MATCH])
            parse_match(c, f.val[K_MATCH], p, r, &path_ok);
        else if (f.key[K_MATCH])
            path_ok = false;

        if (only_one_of(c, &f, p, keys, target_keys, TP_ARRAY_SIZE(target_keys),
                        "upstream, split and direct_response") == 0)
            err(c, item, "%s: needs one of upstream, split or direct_response", p);
        if (f.val[K_UPSTREAM])
            r->upstream = resolve_upstream(c, f.val[K_UPSTREAM], kpath(kp, p, "upstream"));
        if (f.val[K_SPLIT])
            parse_split(c, f.val[K_SPLIT], p, r);
        if (f.val[K_DIRECT])
            parse_direct(c, f.val[K_DIRECT], p, r);

        if (f.key[K_STRIP] && f.key[K_DIRECT]) {
            /* Nothing is forwarded, so there is nothing to rewrite. */
            err(c, f.key[K_STRIP], "%s: not allowed with direct_response", kpath(kp, p, "strip_prefix"));
        } else if (f.val[K_STRIP]) {
            const struct tp_ynode *v = f.val[K_STRIP];
            const char *s = scalar(c, v, kpath(kp, p, "strip_prefix"), "a path");
            const char *why = s ? tp_cfg_check_path(s, v->len, false) : NULL;
            if (!why && s && v->len > 1 && s[v->len - 1] == '/')
                why = "must not end with / (the rest of the path keeps its leading /)";
            if (why)
                err(c, v, "%s: invalid path \"%s\" (%s)", kp, quote(q, v), why);
            else if (s && path_ok && !segment_prefix(s, r->path))
                err(c, v, "%s: \"%s\" is not a whole-segment prefix of the match path \"%s\"", kp,
                    quote(q, v), r->path);
            else if (s)
                r->strip_prefix = tp_cfg_arena_strndup(c->a, s, v->len);
        }
        if (f.val[K_RATE])
            parse_rate_limit(c, f.val[K_RATE], p, r);
        if (f.val[K_REQ])
            parse_rewrite(c, f.val[K_REQ], p, true, &r->request_headers);
        if (f.val[K_RESP])
            parse_rewrite(c, f.val[K_RESP], p, false, &r->response_headers);
    }
    check_unique_names(c, names, name_at, n->n, "routes");
}

/* ---- the whole file ---- */

static void set_defaults(struct tp_config *cfg)
{
    cfg->workers = 0;
    cfg->access_log_format = TP_ACCESS_JSON;
    cfg->max_connections = 100000;
    cfg->max_header_bytes = 16 * 1024;
    cfg->max_body_bytes = 10 * 1024 * 1024;
    cfg->client_header_ms = 10 * MS_PER_S;
    cfg->client_idle_ms = 60 * MS_PER_S;
    cfg->upstream_connect_ms = 2 * MS_PER_S;
    cfg->upstream_response_ms = 30 * MS_PER_S;
    cfg->drain_timeout_ms = 30 * MS_PER_S;
}

static void parse_root(struct cctx *c, const struct tp_ynode *root)
{
    static const char *const keys[] = {"workers",  "listeners", "admin",     "access_log", "limits",
                                       "timeouts", "shutdown",  "upstreams", "routes"};
    enum {
        K_WORKERS = 0,
        K_LISTENERS,
        K_ADMIN,
        K_LOG,
        K_LIMITS,
        K_TIMEOUTS,
        K_SHUTDOWN,
        K_UPSTREAMS,
        K_ROUTES
    };
    struct fields f;

    if (!walk_map(c, root, "", "", keys, TP_ARRAY_SIZE(keys), &f))
        return;
    if (f.val[K_WORKERS])
        parse_workers(c, f.val[K_WORKERS]);
    if (f.val[K_LISTENERS])
        parse_listeners(c, f.val[K_LISTENERS]);
    else if (!f.key[K_LISTENERS])
        missing(c, root, "", "listeners");
    if (f.val[K_ADMIN])
        check_admin_address(c, parse_admin(c, f.val[K_ADMIN]));
    if (f.val[K_LOG])
        parse_access_log(c, f.val[K_LOG]);
    if (f.val[K_LIMITS])
        parse_limits(c, f.val[K_LIMITS]);
    if (f.val[K_TIMEOUTS])
        parse_timeouts(c, f.val[K_TIMEOUTS]);
    if (f.val[K_SHUTDOWN])
        parse_shutdown(c, f.val[K_SHUTDOWN]);
    /* Upstreams before routes whatever the file order: routes refer to them. */
    c->upstreams_ok = true;
    if (f.val[K_UPSTREAMS]) {
        c->upstreams_ok = f.val[K_UPSTREAMS]->kind == TP_Y_SEQ;
        parse_upstreams(c, f.val[K_UPSTREAMS]);
    } else if (f.key[K_UPSTREAMS]) {
        c->upstreams_ok = false;
    }
    if (f.val[K_ROUTES])
        parse_routes(c, f.val[K_ROUTES]);
}

struct tp_config *tp_config_parse(const char *name, const char *buf, size_t len, struct tp_diag *diag)
{
    struct cctx c = {.name = name};
    struct tp_cfg_arena *tree = NULL;
    struct tp_ynode *root;
    bool empty;

    c.a = tp_cfg_arena_create();
    tree = tp_cfg_arena_create();
    if (!c.a || !tree)
        goto oom;
    c.cfg = tp_cfg_arena_alloc(c.a, sizeof(*c.cfg));
    if (!c.cfg)
        goto oom;
    c.cfg->_arena = c.a;
    c.cfg->source = tp_cfg_arena_strndup(c.a, name, strlen(name));
    if (!c.cfg->source || !EVP_Digest(buf, len, c.cfg->sha256, NULL, EVP_sha256(), NULL))
        goto oom;
    set_defaults(c.cfg);

    root = tp_cfg_yaml_parse(buf, len, tree, &c.errs, &empty);
    if (root && root->kind == TP_Y_SCALAR && root->null) /* "---" alone, or "~" */
        empty = true;
    if (empty)
        tp_cfg_errs_add(&c.errs, 1, 1, "the file is empty (expected a mapping with at least \"listeners\")");
    else if (root)
        parse_root(&c, root);

    tp_cfg_arena_destroy(tree);
    if (c.errs.n || c.errs.oom) {
        tp_cfg_errs_flush(&c.errs, name, diag);
        tp_cfg_errs_flush(&c.warns, name, diag);
        tp_cfg_arena_destroy(c.a);
        return NULL;
    }
    tp_cfg_errs_flush(&c.errs, name, diag);
    tp_cfg_errs_flush(&c.warns, name, diag);
    return c.cfg;

oom:
    c.errs.oom = true;
    tp_cfg_errs_flush(&c.errs, name, diag);
    tp_cfg_errs_flush(&c.warns, name, diag);
    tp_cfg_arena_destroy(tree);
    tp_cfg_arena_destroy(c.a);
    return NULL;
}

/* Configuration files are small; this bounds what a mistaken path (a log
 * file, a device) can make us read. */
#define TP_CONFIG_MAX_BYTES (64u << 20)

struct tp_config *tp_config_load(const char *path, struct tp_diag *diag)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd == -1)
        goto fail;
    if (fstat(fd, &st) == -1)
        goto fail;
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        goto fail;
    }
    /* Read to EOF rather than trusting st_size: a pipe or /dev/stdin works too. */
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : (st.st_size > 0 ? (size_t)st.st_size + 1 : 4096);
            if (ncap > TP_CONFIG_MAX_BYTES + 1)
                ncap = TP_CONFIG_MAX_BYTES + 1;
            if (len == ncap) {
                errno = EFBIG;
                goto fail;
            }
            char *nb = realloc(buf, ncap);
            if (!nb)
                goto fail;
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r == -1) {
            if (errno == EINTR)
                continue;
            goto fail;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    struct tp_config *cfg = tp_config_parse(path, buf ? buf : "", len, diag);
    free(buf);
    return cfg;

fail:;
    int e = errno;
    if (fd != -1)
        close(fd);
    free(buf);
    if (diag)
        tp_diag_add(diag, "%s: %s", path, strerror(e));
    return NULL;
}

void tp_config_destroy(struct tp_config *cfg)
{
    if (cfg)
        tp_cfg_arena_destroy(cfg->_arena);
}
