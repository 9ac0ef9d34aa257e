/* SPDX-License-Identifier: MIT */
/*
 * Configuration loader: YAML tree (yaml.c) -> validated struct tp_config.
 *
 * The schema of docs/reference.md is data: one table per YAML mapping (the top level,
 * a listener, an upstream's health_check, a route's match, ...), one line per
 * key giving its name, type, place in the target struct, range and default.
 * A single walker reads any mapping with its table: it refuses unknown and
 * duplicate keys, reports missing required ones, applies the defaults and
 * converts each value by its type. The few checks that involve more than one
 * key (routes naming upstreams, unique names, balance vs hash_key) run as
 * hooks of the table they belong to, after its keys were read. Adding a key
 * is adding a line to its table, plus a parser function when its type is new.
 *
 * Every check that fails records a positioned message and the walk goes on,
 * so one run shows every mistake of a file; the messages are sorted by
 * position at the end (diag.c). A value that failed keeps its default, which
 * is harmless because a config with any error is thrown away as a whole.
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
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
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

/* Headers that carry the message framing or are hop-by-hop: turnpike owns
 * them on both sides (docs/reference.md "What the gateway adds and removes"), so a
 * rewrite may neither set nor remove them. */
static const char *const managed_headers[] = {
    "content-length", "transfer-encoding", "connection",       "keep-alive", "te",
    "trailer",        "upgrade",           "proxy-connection",
};

#define PATH_MAX_LEN 320 /* a key path in a message; longer ones are cut */
#define QUOTE_LEN    200 /* a quoted value in a message */
#define MAX_FIELDS   32  /* keys of one table; the walk keeps a bit per key */
#define MAX_GROUPS   4   /* "only one of" groups of one table, numbered from 1 */
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
    struct tp_cfg_arena *tmp; /* scratch, freed with the YAML tree at the end of the load */
    struct tp_config *cfg;
    /* false when `upstreams` was unusable as a whole: route references are
     * then not checked, or every route would repeat that one mistake. */
    bool upstreams_ok;
    bool store_declared; /* rate_limit_store is in the file (maybe broken): scope: global may refer to it */
    bool auth_ok;        /* the same for `auth` and routes[].auth.provider */
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

static void oom(struct cctx *c)
{
    c->errs.oom = true;
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

static void missing(struct cctx *c, const struct tp_ynode *map, const char *path, const char *key)
{
    if (*path)
        err(c, map, "%s: missing required key \"%s\"", path, key);
    else
        err(c, map, "missing required key \"%s\"", key);
}

/* "a, b or c" (<last> = "or") from <n> names, for messages; cut to <sz>. */
static const char *join_names(char *buf, size_t sz, const char *const *names, size_t n, const char *last)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        int r;
        if (i == 0)
            r = snprintf(buf + o, sz - o, "%s", names[i]);
        else if (i + 1 == n)
            r = snprintf(buf + o, sz - o, " %s %s", last, names[i]);
        else
            r = snprintf(buf + o, sz - o, ", %s", names[i]);
        if (r < 0 || (size_t)r >= sz - o)
            break;
        o += (size_t)r;
    }
    return buf;
}

/* A range bound in the unit an operator would write: 0s, 250ms, 2s, 1m, 24h. */
static const char *ms_text(char *buf, size_t sz, uint64_t ms)
{
    if (ms == 0)
        snprintf(buf, sz, "0s");
    else if (ms % MS_PER_H == 0)
        snprintf(buf, sz, "%" PRIu64 "h", (uint64_t)(ms / MS_PER_H));
    else if (ms % MS_PER_MIN == 0)
        snprintf(buf, sz, "%" PRIu64 "m", (uint64_t)(ms / MS_PER_MIN));
    else if (ms % MS_PER_S == 0)
        snprintf(buf, sz, "%" PRIu64 "s", (uint64_t)(ms / MS_PER_S));
    else
        snprintf(buf, sz, "%" PRIu64 "ms", ms);
    return buf;
}

/* A size bound the same way: 0, 512, 1KiB, 1MiB, 1TiB. */
static const char *size_text(char *buf, size_t sz, uint64_t b)
{
    static const char *const units[] = {"TiB", "GiB", "MiB", "KiB"};

    for (size_t i = 0; b && i < TP_ARRAY_SIZE(units); i++) {
        uint64_t m = 1ull << (10 * (TP_ARRAY_SIZE(units) - i));
        if (b % m == 0) {
            snprintf(buf, sz, "%" PRIu64 "%s", b / m, units[i]);
            return buf;
        }
    }
    snprintf(buf, sz, "%" PRIu64, b);
    return buf;
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
    const char *expected = use == KEY_FOR_HASH ? "header:NAME, cookie:NAME, claim:NAME, client_ip or path"
                                               : "client_ip, header:NAME, claim:NAME or route";
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
    /* claim:NAME: a claim of the request's credential, so it only means
     * something on routes with auth (route_end checks rate_limit.key). A
     * claim name is JSON member text: anything but empty is a name. */
    if (strncmp(s, "claim:", 6) == 0) {
        if (n->len == 6) {
            err(c, n, "%s: invalid claim name in \"%s\" (expected a name after claim:)", path, quote(q, n));
            return false;
        }
        out->kind = TP_KEY_CLAIM;
        out->name = tp_cfg_arena_strndup(c->a, s + 6, n->len - 6);
        out->name_len = n->len - 6;
        return out->name != NULL;
    }
    err(c, n, "%s: invalid value \"%s\" (expected %s)", path, quote(q, n), expected);
    return false;
}

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

/* ---- the schema: what a table says about each key ---- */

/*
 * How a value is read and where it goes. The target of a field is the member
 * at <off> (of <size> bytes) in the struct its table fills.
 */
enum field_type {
    T_UINT = 0, /* decimal integer in lo..hi -> unsigned integer of <size> bytes */
    T_DURATION, /* "250ms", "2s", "1m", "1h" in lo..hi milliseconds -> uint64_t [ms] */
    T_SIZE,     /* "512", "16KiB" in lo..hi bytes -> uint64_t */
    T_RATIO,    /* 0 < x <= 1 -> double */
    T_BOOL,     /* true | false -> bool */
    T_ENUM,     /* one of <names> -> its index (names follow the C enum) */
    T_FLAGS,    /* list of <names> -> OR of 1 << index (names follow the bit order) */
    T_NAME,     /* listener, upstream or route name -> char * */
    T_ADDR,     /* IPv4:port or [IPv6]:port -> struct tp_addr */
    T_FILE,     /* path of a readable file -> char * */
    T_MAP,      /* nested mapping read with <sub>, embedded: <sub>'s offsets start at <off> */
    T_OBJ,      /* nested mapping read with <sub> into a struct allocated when the key is present;
                   the pointer is at <off>, absent = NULL */
    T_LIST,     /* list of mappings read with <sub>: array pointer at <off>, size_t count at
                   <count_off>; an empty list is refused with <empty> unless that is NULL */
    T_CUSTOM,   /* <parse> does everything, for the types no other key shares */
    T_TYPE_COUNT
};

#define F_REQUIRED     (1u << 0) /* absent: "missing required key" at the mapping */
#define F_UNSUPPORTED  (1u << 1) /* parses, but the feature is not built: an error at the key */
#define F_DEFAULT_PATH (1u << 2) /* absent: the value is the item's own path, "routes[3]" */

enum default_kind { D_NONE = 0, D_UINT, D_DOUBLE, D_STR };

struct field_default {
    enum default_kind kind;
    uint64_t u; /* stored in <size> bytes: integers, enums, flags, bool */
    double d;
    const char *s; /* stored as char * (the tables' strings are never written to) */
};

struct field;
struct table;
struct walk;

/* Reads <v> (the value of <fd> at key path <path>) into the struct <obj> the
 * table fills. Returns false after an error. */
typedef bool (*field_parse_fn)(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                               const char *path, void *obj, struct walk *w);
/* Runs on a mapping's walk: begin after its keys were checked, end after its values were read. */
typedef void (*table_hook_fn)(struct cctx *c, struct walk *w);

/* What a list walk knows of each item, for the checks across items. */
struct item_state {
    bool map;        /* the item was a mapping (its keys were read) */
    uint64_t failed; /* bit i: the value of field i was refused */
};
/* Runs after every item of a list of <sub> mappings: <items> is the array it filled. */
typedef void (*list_hook_fn)(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                             const struct item_state *st);

struct field {
    const char *name;
    enum field_type type;
    size_t off;  /* of the target member in the table's struct */
    size_t size; /* of the target member (integers, enums, flags) */
    unsigned flags;
    unsigned group;           /* 1..MAX_GROUPS-1: at most one key of the group; 0 = none */
    uint64_t lo, hi;          /* range of T_UINT, T_DURATION, T_SIZE */
    struct field_default def; /* applied when the struct is created */
    const char *const *names; /* T_ENUM, T_FLAGS */
    size_t n_names;           /* T_ENUM, T_FLAGS */
    const struct table *sub;  /* T_MAP, T_OBJ, T_LIST */
    size_t count_off;         /* T_LIST (count), and custom types with a length or count */
    const char *empty;        /* T_LIST, T_FLAGS: message for an empty list; NULL = may be empty */
    field_parse_fn parse;     /* T_CUSTOM */
    const void *arg;          /* T_CUSTOM: the parser's own parameter */
};

struct table {
    const struct field *fields;
    size_t n;
    size_t size;  /* of the struct: T_OBJ allocates it, T_LIST an array of them */
    bool has_pos; /* the struct has a struct tp_pos at <pos_off>: the mapping's position */
    size_t pos_off;
    unsigned required_groups; /* bit g: one key of group g is required */
    table_hook_fn begin, end;
    list_hook_fn list_end; /* when the table describes list items */
};

/* The state of one mapping's walk, which hooks and custom parsers read. */
struct walk {
    const struct table *t;
    const struct tp_ynode *map;
    const char *path;                       /* key path of the mapping, "" at the top level */
    void *obj;                              /* the struct being filled */
    const struct tp_ynode *key[MAX_FIELDS]; /* first occurrence of each key, also when unsupported */
    const struct tp_ynode *val[MAX_FIELDS]; /* its value; NULL when absent or not supported */
    uint64_t failed;                        /* bit i: the value of field i was refused */
    unsigned group_n[MAX_GROUPS];           /* keys present per group */
};

/* Shorthands for table lines. AT() names the target member; the rest set
 * one property each, so a table line reads like the schema. */
#define AT(type, member)  .off = offsetof(type, member), .size = sizeof(((type *)0)->member)
#define COUNT(type, m)    .count_off = offsetof(type, m)
#define RANGE(l, h)       .lo = (l), .hi = (h)
#define DEF_U(v)          .def = {.kind = D_UINT, .u = (uint64_t)(v)}
#define DEF_D(v)          .def = {.kind = D_DOUBLE, .d = (v)}
#define DEF_S(v)          .def = {.kind = D_STR, .s = (v)}
#define NAMES(a)          .names = (a), .n_names = TP_ARRAY_SIZE(a)
#define SUB(t)            .sub = &(t)
#define CUSTOM(fn)        .parse = (fn)
#define POS(type, member) .has_pos = true, .pos_off = offsetof(type, member)
/* The number of fields of a table, refused at compile time above MAX_FIELDS. */
#define FIELDS(f)                                                                                            \
    .fields = (f), .n = TP_ARRAY_SIZE(f) + 0 * sizeof(char[TP_ARRAY_SIZE(f) <= MAX_FIELDS ? 1 : -1])

/* Index of the field called <name> in <t>; a name that is not there is a bug in this file. */
static size_t fidx(const struct table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->fields[i].name, name) == 0)
            return i;
    TP_BUG_ON(!"no such field");
    return 0;
}

static const struct tp_ynode *wkey(const struct walk *w, const char *name)
{
    return w->key[fidx(w->t, name)];
}

static const struct tp_ynode *wval(const struct walk *w, const char *name)
{
    return w->val[fidx(w->t, name)];
}

/* The key of the field <fd> in this walk (custom parsers point warnings and
 * "not allowed" errors at it). */
static const struct tp_ynode *own_key(const struct walk *w, const struct field *fd)
{
    return w->key[(size_t)(fd - w->t->fields)];
}

/* Value of key <name> in mapping <map> (its first occurrence, like the walk), or NULL. */
static const struct tp_ynode *map_get(const struct tp_ynode *map, const char *name)
{
    size_t len = strlen(name);

    if (map->kind != TP_Y_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++) {
        const struct tp_ynode *k = map->pairs[i].key;
        if (k->kind == TP_Y_SCALAR && !k->null && k->len == len && memcmp(k->str, name, len) == 0)
            return map->pairs[i].val;
    }
    return NULL;
}

/* The value of <name> in list item <item> when it was read without error, else NULL. */
static const struct tp_ynode *item_val(const struct table *t, const struct tp_ynode *item,
                                       const struct item_state *st, const char *name)
{
    if (!st->map || st->failed & (1ull << fidx(t, name)))
        return NULL;
    return map_get(item, name);
}

static void store_uint(void *p, size_t size, uint64_t v)
{
    switch (size) {
    case 1: {
        uint8_t x = (uint8_t)v;
        memcpy(p, &x, 1);
        break;
    }
    case 2: {
        uint16_t x = (uint16_t)v;
        memcpy(p, &x, 2);
        break;
    }
    case 4: {
        uint32_t x = (uint32_t)v;
        memcpy(p, &x, 4);
        break;
    }
    case 8:
        memcpy(p, &v, 8);
        break;
    default:
        TP_BUG_ON(!"integer field of an unexpected size");
    }
}

/* Writes the defaults of <t> (and of the mappings embedded in it) into <obj>. */
static void apply_defaults(const struct table *t, void *obj)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct field *fd = &t->fields[i];
        char *at = (char *)obj + fd->off;

        switch (fd->def.kind) {
        case D_UINT:
            store_uint(at, fd->size, fd->def.u);
            break;
        case D_DOUBLE:
            *(double *)at = fd->def.d;
            break;
        case D_STR:
            *(char **)at = (char *)fd->def.s;
            break;
        default:
            break;
        }
        if (fd->type == T_MAP)
            apply_defaults(fd->sub, at);
    }
}

/* ---- custom value types ---- */

/* workers: auto (stored as 0) or 1..1024 */
static bool parse_workers(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                          void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    uint64_t n;

    (void)w;
    if (text_is(v, "auto")) {
        store_uint((char *)obj + fd->off, fd->size, 0);
        return true;
    }
    if (v->kind != TP_Y_SCALAR || v->null) {
        type_err(c, v, path, "auto or an integer");
        return false;
    }
    if (!v->len || strspn(v->str, "0123456789-") != v->len) {
        err(c, v, "%s: invalid value \"%s\" (expected auto or 1..1024)", path, quote(q, v));
        return false;
    }
    if (!get_uint(c, v, path, 1, 1024, &n))
        return false;
    store_uint((char *)obj + fd->off, fd->size, n);
    return true;
}

static bool parse_log_path(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                           void *obj, struct walk *w)
{
    const char *s = scalar(c, v, path, "a string");

    (void)w;
    if (!s)
        return false;
    if (!*s) {
        err(c, v, "%s: must not be empty (\"-\" is stdout)", path);
        return false;
    }
    return (*(char **)((char *)obj + fd->off) = tp_cfg_arena_strndup(c->a, s, v->len)) != NULL;
}

/* A host name, lowercased: match.host (a wildcard is fine) and tls.sni (<arg> set: a name only). */
static bool parse_host(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                       void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "a host name");
    const char *why = s ? tp_cfg_check_host(s, v->len) : NULL;

    (void)w;
    if (s && !why && fd->arg && s[0] == '*')
        why = "a name, not a wildcard";
    if (why)
        err(c, v, "%s: invalid host \"%s\" (%s)", path, quote(q, v), why);
    if (!s || why)
        return false;
    return (*(char **)((char *)obj + fd->off) = lower_dup(c, s, v->len)) != NULL;
}

/* resolver.servers: a list of addresses (DNS servers, port included). */
static bool parse_servers(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                          void *obj, struct walk *w)
{
    char ip[PATH_MAX_LEN];
    struct tp_addr *a;
    bool ok = true;

    (void)w;
    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0) {
        err(c, v, "%s: at least one server is required (leave the key out to use /etc/resolv.conf)", path);
        return false;
    }
    if (!(a = tp_cfg_arena_calloc(c->a, v->n, sizeof(*a)))) {
        oom(c);
        return false;
    }
    for (size_t i = 0; i < v->n; i++)
        ok &= get_addr(c, v->items[i], ipath(ip, path, i), &a[i]);
    *(struct tp_addr **)((char *)obj + fd->off) = a;
    *(size_t *)((char *)obj + fd->count_off) = v->n;
    return ok;
}

/* health_check.path: a request target, query string allowed. */
static bool parse_target(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                         void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "a string");
    const char *why = s ? tp_cfg_check_path(s, v->len, true) : NULL;

    (void)w;
    if (why)
        err(c, v, "%s: invalid path \"%s\" (%s)", path, quote(q, v), why);
    if (!s || why)
        return false;
    return (*(char **)((char *)obj + fd->off) = tp_cfg_arena_strndup(c->a, s, v->len)) != NULL;
}

/* upstreams[].tls.ca: a readable file that loads as a CA bundle. */
static bool parse_ca(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                     void *obj, struct walk *w)
{
    char e[512];
    char *ca = get_file(c, v, path);

    (void)w;
    if (!ca)
        return false;
    *(char **)((char *)obj + fd->off) = ca;
    if (tp_tls_check_ca(ca, e, sizeof(e)) < 0) {
        err(c, v, "%s: %s", path, e);
        return false;
    }
    return true;
}

/* listeners[].tls.alpn: protocol ids into a char * array at <off>, count at <count_off>. */
static bool parse_alpn(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                       void *obj, struct walk *w)
{
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    bool ok = true;

    (void)w;
    if (!is_seq(c, v, path))
        return false;
    char **alpn = tp_cfg_arena_calloc(c->a, v->n ? v->n : 1, sizeof(*alpn));
    size_t *n = (size_t *)((char *)obj + fd->count_off);
    if (!alpn) {
        oom(c);
        return false;
    }
    *(char ***)((char *)obj + fd->off) = alpn;
    for (size_t i = 0; i < v->n; i++) {
        const struct tp_ynode *it = v->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "a protocol id");
        if (!s) {
            ok = false;
            continue;
        }
        /* the protocols turnpike speaks to clients; h2c is never negotiated by ALPN (RFC 9113 3.2) */
        if (strcmp(s, "h2") != 0 && strcmp(s, "http/1.1") != 0 && strcmp(s, "http/1.0") != 0) {
            err(c, it, "%s: invalid value \"%s\" (expected h2, http/1.1 or http/1.0)", ip, quote(q, it));
            ok = false;
            continue;
        }
        alpn[(*n)++] = tp_cfg_arena_strndup(c->a, s, it->len);
    }
    return ok;
}

/* hash_key and rate_limit.key: <arg> points at the enum key_use. */
static bool parse_key(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                      void *obj, struct walk *w)
{
    (void)w;
    return get_key(c, v, path, *(const enum key_use *)fd->arg, (struct tp_key *)((char *)obj + fd->off));
}

static const enum key_use key_for_hash = KEY_FOR_HASH, key_for_rate = KEY_FOR_RATE;

/* routes[].upstream and routes[].split[].upstream: the index of the upstream
 * named by the value, or TP_UPSTREAM_NONE after an error (or silently when the
 * upstreams section itself was unusable). Upstreams are read before routes. */
static bool parse_upstream_ref(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                               const char *path, void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "an upstream name");

    (void)w;
    if (!s)
        return false;
    for (size_t i = 0; i < c->cfg->n_upstreams; i++) {
        if (c->cfg->upstreams[i].name && strcmp(c->cfg->upstreams[i].name, s) == 0) {
            store_uint((char *)obj + fd->off, fd->size, i);
            return true;
        }
    }
    if (c->upstreams_ok)
        err(c, v, "%s: no upstream named \"%s\"", path, quote(q, v));
    return false;
}

/* match.path (<arg> true: exact) and match.path_prefix, into the route. When
 * both are given neither is used, and r->path becomes NULL: strip_prefix is
 * then not checked against a path that is already reported. */
static bool parse_match_path(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                             const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_route *r = obj;
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "a path");
    const char *why = s ? tp_cfg_check_path(s, v->len, false) : NULL;

    if (!s || why) {
        if (why)
            err(c, v, "%s: invalid path \"%s\" (%s)", path, quote(q, v), why);
        r->path = NULL;
        return false;
    }
    if (w->group_n[fd->group] > 1) {
        r->path = NULL;
        return true;
    }
    r->path = tp_cfg_arena_strndup(c->a, s, v->len);
    r->path_exact = *(const bool *)fd->arg;
    return r->path != NULL;
}

static const bool match_exact = true, match_prefix = false;

static bool parse_methods(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                          void *obj, struct walk *w)
{
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    uint64_t bits = 0;
    bool ok = true;

    (void)w;
    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0) {
        err(c, v, "%s: expected at least one method (leave methods out to match any)", path);
        ok = false;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct tp_ynode *it = v->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "a method");
        int m = s ? tp_cfg_method(s, it->len) : -1;
        if (s && m < 0)
            err(c, it, "%s: unknown method \"%s\" (expected an HTTP method in upper case, e.g. GET)", ip,
                quote(q, it));
        if (m < 0)
            ok = false;
        else
            bits |= 1ull << m;
    }
    store_uint((char *)obj + fd->off, fd->size, bits);
    return ok;
}

/* routes[].upgrade: Upgrade tokens tunnelled on the route, compared without case. */
static bool parse_upgrade(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                          void *obj, struct walk *w)
{
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    char **toks;
    size_t n = 0;
    bool ok = true;

    (void)w;
    if (!is_seq(c, v, path))
        return false;
    toks = tp_cfg_arena_calloc(c->a, v->n ? v->n : 1, sizeof(*toks));
    if (!toks) {
        oom(c);
        return false;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct tp_ynode *it = v->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "an upgrade token");
        bool dup = false;

        if (!s) {
            ok = false;
            continue;
        }
        /* protocol-name ["/" protocol-version], both tokens (RFC 9110 7.8) */
        const char *slash = memchr(s, '/', it->len);
        size_t nl = slash ? (size_t)(slash - s) : it->len;
        if (!tp_cfg_is_token(s, nl) || (slash && !tp_cfg_is_token(slash + 1, it->len - nl - 1))) {
            err(c, it, "%s: invalid upgrade token \"%s\" (expected a protocol name such as websocket)", ip,
                quote(q, it));
            ok = false;
            continue;
        }
        for (size_t j = 0; j < n && !dup; j++)
            dup = strlen(toks[j]) == it->len && strncasecmp(toks[j], s, it->len) == 0;
        if (dup) {
            err(c, it, "%s: duplicate upgrade token \"%s\"", ip, quote(q, it));
            ok = false;
            continue;
        }
        if (it->len == 3 && strncasecmp(s, "h2c", 3) == 0) {
            warn(c, it, "%s: h2c is never tunnelled (ignored)", ip);
            continue;
        }
        if (!(toks[n++] = lower_dup(c, s, it->len)))
            return false;
    }
    *(char ***)((char *)obj + fd->off) = toks;
    store_uint((char *)obj + fd->count_off, sizeof(size_t), n);
    return ok;
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

static const enum hdr_use hdr_match = HDR_MATCH, hdr_set_request = HDR_SET_REQUEST,
                          hdr_set_response = HDR_SET_RESPONSE;

/* A map header-name -> value (match.headers or a rewrite's `set`, <arg> says
 * which) into a struct tp_header_kv array at <off>, count at <count_off>.
 * Names are unique case-insensitively; the second one is the error, at its key. */
static bool parse_header_map(struct cctx *c, const struct field *fd, const struct tp_ynode *n,
                             const char *path, void *obj, struct walk *w)
{
    enum hdr_use use = *(const enum hdr_use *)fd->arg;
    char q[QUOTE_LEN], vp[PATH_MAX_LEN];
    size_t *n_out = (size_t *)((char *)obj + fd->count_off);
    size_t errs_before = c->errs.n; /* any error below refuses the map */

    (void)w;
    if (n->kind != TP_Y_MAP) {
        type_err(c, n, path, "a mapping of header names to values");
        return false;
    }
    struct tp_header_kv *kv = tp_cfg_arena_calloc(c->a, n->n ? n->n : 1, sizeof(*kv));
    if (!kv) {
        oom(c);
        return false;
    }
    *(struct tp_header_kv **)((char *)obj + fd->off) = kv;
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
            oom(c);
    }
    return c->errs.n == errs_before;
}

/* A rewrite's `remove` list, in the struct tp_header_rewrite; <arg> is the
 * section's name ("request_headers") for messages. Read after `set`. */
static bool parse_header_remove(struct cctx *c, const struct field *fd, const struct tp_ynode *list,
                                const char *path, void *obj, struct walk *w)
{
    struct tp_header_rewrite *rw = obj;
    const char *section = fd->arg;
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    bool ok = true;

    (void)w;
    if (!is_seq(c, list, path))
        return false;
    rw->remove = tp_cfg_arena_calloc(c->a, list->n ? list->n : 1, sizeof(*rw->remove));
    if (!rw->remove) {
        oom(c);
        return false;
    }
    for (size_t i = 0; i < list->n; i++) {
        const struct tp_ynode *it = list->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "a header name");
        bool bad = false;

        if (!s) {
            ok = false;
            continue;
        }
        if (!tp_cfg_is_token(s, it->len)) {
            err(c, it, "%s: invalid header name \"%s\" (expected letters, digits or !#$%%&'*+-.^_`|~)", ip,
                quote(q, it));
            ok = false;
            continue;
        }
        if (is_managed_header(s, it->len) || name_is(s, it->len, "host")) {
            err(c, it, "%s: %s cannot be removed (%s)", ip, quote(q, it),
                name_is(s, it->len, "host") ? "every HTTP/1.1 request needs it"
                                            : "framing and hop-by-hop headers are managed by turnpike");
            ok = false;
            continue;
        }
        for (size_t j = 0; j < rw->n_remove && !bad; j++)
            bad = rw->remove[j].name_len == it->len && strncasecmp(rw->remove[j].name, s, it->len) == 0;
        if (bad) {
            err(c, it, "%s: duplicate header \"%s\"", ip, quote(q, it));
            ok = false;
            continue;
        }
        for (size_t j = 0; j < rw->n_set && !bad; j++)
            bad = rw->set[j].name_len == it->len && strncasecmp(rw->set[j].name, s, it->len) == 0;
        if (bad) {
            err(c, it, "%s: %s is also in %s.set (set replaces it already)", ip, quote(q, it), section);
            ok = false;
            continue;
        }
        struct tp_header_kv *h = &rw->remove[rw->n_remove++];
        h->name = tp_cfg_arena_strndup(c->a, s, it->len);
        h->name_len = it->len;
        if (!h->name)
            oom(c);
    }
    return ok;
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

/* routes[].strip_prefix: read after match and direct_response. */
static bool parse_strip_prefix(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                               const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_route *r = obj;
    char q[QUOTE_LEN];

    if (wkey(w, "direct_response")) {
        /* Nothing is forwarded, so there is nothing to rewrite. */
        err(c, own_key(w, fd), "%s: not allowed with direct_response", path);
        return false;
    }
    /* The match path is known only when match was a mapping with a usable path. */
    const struct tp_ynode *m = wval(w, "match");
    bool path_ok = r->path && (!wkey(w, "match") || (m && m->kind == TP_Y_MAP));
    const char *s = scalar(c, v, path, "a path");
    const char *why = s ? tp_cfg_check_path(s, v->len, false) : NULL;
    if (!why && s && v->len > 1 && s[v->len - 1] == '/')
        why = "must not end with / (the rest of the path keeps its leading /)";
    if (why)
        err(c, v, "%s: invalid path \"%s\" (%s)", path, quote(q, v), why);
    if (!s || why)
        return false;
    if (path_ok && !segment_prefix(s, r->path)) {
        err(c, v, "%s: \"%s\" is not a whole-segment prefix of the match path \"%s\"", path, quote(q, v),
            r->path);
        return false;
    }
    return (r->strip_prefix = tp_cfg_arena_strndup(c->a, s, v->len)) != NULL;
}

/* rate_limit.rate: "100/s" -> tokens and period_ms of the struct tp_cfg_rate_limit. */
static bool parse_rate(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                       void *obj, struct walk *w)
{
    struct tp_cfg_rate_limit *rl = obj;
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "a rate");

    (void)fd, (void)w;
    if (!s)
        return false;
    int rc = tp_parse_rate(s, &rl->tokens, &rl->period_ms);
    if (rc == -EINVAL)
        err(c, v, "%s: invalid rate \"%s\" (expected e.g. 100/s, 6000/m, 50000/h)", path, quote(q, v));
    else if (rc < 0)
        err(c, v, "%s: %s is out of range (1..1000000000 per s, m or h)", path, quote(q, v));
    return rc == 0;
}

/* direct_response.body: bytes with a length (at <count_off>), so NULs are fine here. */
static bool parse_body(struct cctx *c, const struct field *fd, const struct tp_ynode *b, const char *path,
                       void *obj, struct walk *w)
{
    char *body;

    (void)w;
    if (b->kind != TP_Y_SCALAR || b->null) {
        type_err(c, b, path, "a string");
        return false;
    }
    if (b->len > BODY_MAX_LEN) {
        err(c, b, "%s: too long (%zu bytes, at most 1MiB)", path, b->len);
        return false;
    }
    if (!(body = tp_cfg_arena_strndup(c->a, b->str, b->len))) {
        oom(c);
        return false;
    }
    *(char **)((char *)obj + fd->off) = body;
    *(size_t *)((char *)obj + fd->count_off) = b->len;
    return true;
}

/* ---- authentication: auth[] providers and routes[].auth ---- */

/* Why a header may not receive a claim (forward_claims), or NULL. Besides
 * the framing and hop-by-hop headers, turnpike writes or forwards these on
 * every request itself: a claim copied into them would be a second voice. */
static const char *claim_header_refusal(const char *s, size_t len)
{
    if (is_managed_header(s, len))
        return "framing and hop-by-hop headers are managed by turnpike";
    if (name_is(s, len, "host") || name_is(s, len, "x-request-id") || name_is(s, len, "traceparent") ||
        (len >= 12 && strncasecmp(s, "x-forwarded-", 12) == 0))
        return "host, x-request-id, x-forwarded-* and traceparent are managed by turnpike";
    return NULL;
}

/* A non-empty string stored as written: jwt.keys and api_key.keys (paths the
 * runtime reads at load and on every reload, so only the text is checked
 * here) and jwt.issuer. <arg> is what the message calls the value. */
static bool parse_text(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                       void *obj, struct walk *w)
{
    const char *s = scalar(c, v, path, fd->arg);

    (void)w;
    if (!s)
        return false;
    if (v->len == 0) {
        err(c, v, "%s: must not be empty", path);
        return false;
    }
    return (*(char **)((char *)obj + fd->off) = tp_cfg_arena_strndup(c->a, s, v->len)) != NULL;
}

/* jwt.audiences: non-empty strings into a char * array at <off>, count at <count_off>. */
static bool parse_audiences(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                            const char *path, void *obj, struct walk *w)
{
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    size_t n = 0;
    bool ok = true;

    (void)w;
    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0) {
        err(c, v, "%s: expected at least one audience (leave audiences out to accept any)", path);
        return false;
    }
    char **aud = tp_cfg_arena_calloc(c->a, v->n, sizeof(*aud));
    if (!aud) {
        oom(c);
        return false;
    }
    for (size_t i = 0; i < v->n; i++) {
        const struct tp_ynode *it = v->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "a string");
        bool dup = false;

        if (!s) {
            ok = false;
            continue;
        }
        if (it->len == 0) {
            err(c, it, "%s: must not be empty", ip);
            ok = false;
            continue;
        }
        for (size_t j = 0; j < n && !dup; j++)
            dup = strlen(aud[j]) == it->len && memcmp(aud[j], s, it->len) == 0;
        if (dup) {
            err(c, it, "%s: duplicate audience \"%s\"", ip, quote(q, it));
            ok = false;
            continue;
        }
        if (!(aud[n++] = tp_cfg_arena_strndup(c->a, s, it->len))) {
            oom(c);
            return false;
        }
    }
    *(char ***)((char *)obj + fd->off) = aud;
    store_uint((char *)obj + fd->count_off, sizeof(size_t), n);
    return ok;
}

/* A query parameter name, compared raw: visible ASCII without the bytes
 * that end a name in a query string. */
static bool is_query_name(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '&' || ch == '=' || ch == '#')
            return false;
    }
    return true;
}

/* The characters of a token, for "expected ..." in a format string. */
#define TOKEN_CHARS "letters, digits or !#$%%&'*+-.^_`|~"

/* jwt.from: where the token is looked for, in order, into the struct tp_cfg_jwt. */
static bool parse_cred_from(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                            const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_jwt *j = obj;
    char ip[PATH_MAX_LEN], q[QUOTE_LEN];
    bool ok = true;

    (void)fd, (void)w;
    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0) {
        err(c, v, "%s: expected at least one source (leave from out for header:authorization)", path);
        return false;
    }
    if (!(j->from = tp_cfg_arena_calloc(c->a, v->n, sizeof(*j->from)))) {
        oom(c);
        return false;
    }
    j->n_from = 0;
    for (size_t i = 0; i < v->n; i++) {
        const struct tp_ynode *it = v->items[i];
        const char *s = scalar(c, it, ipath(ip, path, i), "a string");
        struct tp_cfg_cred_source src = {0};
        size_t plen;
        bool dup = false;

        if (!s) {
            ok = false;
            continue;
        }
        if (strncmp(s, "header:", 7) == 0) {
            src.kind = TP_FROM_HEADER, plen = 7;
        } else if (strncmp(s, "cookie:", 7) == 0) {
            src.kind = TP_FROM_COOKIE, plen = 7;
        } else if (strncmp(s, "query:", 6) == 0) {
            src.kind = TP_FROM_QUERY, plen = 6;
        } else {
            err(c, it,
                "%s: invalid value \"%s\" (expected header:authorization, header:NAME, cookie:NAME or "
                "query:NAME)",
                ip, quote(q, it));
            ok = false;
            continue;
        }
        const char *name = s + plen;
        size_t len = it->len - plen;
        if (src.kind == TP_FROM_QUERY ? !is_query_name(name, len) : !tp_cfg_is_token(name, len)) {
            if (src.kind == TP_FROM_QUERY)
                err(c, it,
                    "%s: invalid query parameter name in \"%s\" (expected visible ASCII without &, = or #)",
                    ip, quote(q, it));
            else
                err(c, it, "%s: invalid %s name in \"%s\" (expected " TOKEN_CHARS ")", ip,
                    src.kind == TP_FROM_HEADER ? "header" : "cookie", quote(q, it));
            ok = false;
            continue;
        }
        if (src.kind == TP_FROM_HEADER && is_managed_header(name, len)) {
            tp_cfg_quote(q, sizeof(q), name, len);
            err(c, it,
                "%s: %s cannot carry a credential (framing and hop-by-hop headers are managed by turnpike)",
                ip, q);
            ok = false;
            continue;
        }
        if (src.kind == TP_FROM_HEADER && name_is(name, len, "authorization")) {
            src.kind = TP_FROM_BEARER;
        } else {
            src.name =
                src.kind == TP_FROM_HEADER ? lower_dup(c, name, len) : tp_cfg_arena_strndup(c->a, name, len);
            src.name_len = len;
            if (!src.name) {
                oom(c);
                return false;
            }
        }
        /* header names are stored lowercased; cookie and query names are case-sensitive */
        for (size_t k = 0; k < j->n_from && !dup; k++) {
            const struct tp_cfg_cred_source *o = &j->from[k];
            dup = o->kind == src.kind && o->name_len == src.name_len &&
                  (src.kind == TP_FROM_BEARER || memcmp(o->name, src.name, src.name_len) == 0);
        }
        if (dup) {
            err(c, it, "%s: duplicate source \"%s\"", ip, quote(q, it));
            ok = false;
            continue;
        }
        j->from[j->n_from++] = src;
    }
    return ok;
}

/* A key of require_claims or forward_claims: a claim name, which is JSON
 * member text, so any non-empty string. */
static bool claim_key(struct cctx *c, const struct tp_ynode *k, const char *path)
{
    char d[QUOTE_LEN + 2], q[QUOTE_LEN];

    if (k->kind != TP_Y_SCALAR || k->null) {
        err(c, k, "%s: expected a claim name, got %s", path, describe(d, k));
        return false;
    }
    if (k->len == 0 || memchr(k->str, '\0', k->len)) {
        err(c, k, "%s: invalid claim name \"%s\" (%s)", path, quote(q, k),
            k->len ? "NUL characters are not allowed" : "must not be empty");
        return false;
    }
    return true;
}

/* The second of two equal claim names in map <n> (pairs before <i>) is an error at its key. */
static bool claim_dup(struct cctx *c, const struct tp_ynode *n, size_t i, const char *path)
{
    const struct tp_ynode *k = n->pairs[i].key;
    char q[QUOTE_LEN];

    for (size_t j = 0; j < i; j++) {
        const struct tp_ynode *o = n->pairs[j].key;
        if (o->kind == TP_Y_SCALAR && !o->null && o->len == k->len && memcmp(o->str, k->str, k->len) == 0) {
            err(c, k, "%s: duplicate claim \"%s\"", path, quote(q, k));
            return true;
        }
    }
    return false;
}

/* jwt.forward_claims: claim -> header name, into the struct tp_cfg_jwt. */
static bool parse_forward_claims(struct cctx *c, const struct field *fd, const struct tp_ynode *n,
                                 const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_jwt *j = obj;
    char q[QUOTE_LEN], vp[PATH_MAX_LEN];
    size_t errs_before = c->errs.n;

    (void)fd, (void)w;
    if (n->kind != TP_Y_MAP) {
        type_err(c, n, path, "a mapping of claim names to header names");
        return false;
    }
    if (n->n == 0) {
        err(c, n, "%s: expected at least one claim (leave forward_claims out to forward none)", path);
        return false;
    }
    if (!(j->forward_claims = tp_cfg_arena_calloc(c->a, n->n, sizeof(*j->forward_claims)))) {
        oom(c);
        return false;
    }
    j->n_forward_claims = 0;
    for (size_t i = 0; i < n->n; i++) {
        const struct tp_ynode *k = n->pairs[i].key, *v = n->pairs[i].val;
        bool dup = false;

        if (!claim_key(c, k, path) || claim_dup(c, n, i, path))
            continue;
        kpath(vp, path, quote(q, k));
        const char *s = scalar(c, v, vp, "a header name");
        if (!s)
            continue;
        if (!tp_cfg_is_token(s, v->len)) {
            err(c, v, "%s: invalid header name \"%s\" (expected " TOKEN_CHARS ")", vp, quote(q, v));
            continue;
        }
        const char *why = claim_header_refusal(s, v->len);
        if (why) {
            err(c, v, "%s: %s cannot be set (%s)", vp, quote(q, v), why);
            continue;
        }
        for (size_t h = 0; h < j->n_forward_claims && !dup; h++)
            dup = j->forward_claims[h].header_len == v->len &&
                  strncasecmp(j->forward_claims[h].header, s, v->len) == 0;
        if (dup) {
            err(c, v, "%s: duplicate header \"%s\"", vp, quote(q, v));
            continue;
        }
        struct tp_cfg_claim_header *ch = &j->forward_claims[j->n_forward_claims++];
        ch->claim = tp_cfg_arena_strndup(c->a, k->str, k->len);
        ch->header = lower_dup(c, s, v->len);
        ch->header_len = v->len;
        if (!ch->claim || !ch->header)
            oom(c);
    }
    return c->errs.n == errs_before;
}

/* api_key.header: where the key is read; lowercased, length at <count_off>. */
static bool parse_cred_header(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                              const char *path, void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "a header name");

    (void)w;
    if (!s)
        return false;
    if (!tp_cfg_is_token(s, v->len)) {
        err(c, v, "%s: invalid header name \"%s\" (expected " TOKEN_CHARS ")", path, quote(q, v));
        return false;
    }
    if (is_managed_header(s, v->len)) {
        err(c, v, "%s: %s cannot carry a credential (framing and hop-by-hop headers are managed by turnpike)",
            path, quote(q, v));
        return false;
    }
    if (!(*(char **)((char *)obj + fd->off) = lower_dup(c, s, v->len))) {
        oom(c);
        return false;
    }
    store_uint((char *)obj + fd->count_off, sizeof(size_t), v->len);
    return true;
}

/* routes[].auth.provider: the index of the provider named by the value. Like
 * parse_upstream_ref, silent when the auth section itself was unusable.
 * Providers are read before routes. */
static bool parse_auth_ref(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                           void *obj, struct walk *w)
{
    char q[QUOTE_LEN];
    const char *s = scalar(c, v, path, "an auth provider name");

    (void)w;
    if (!s)
        return false;
    for (size_t i = 0; i < c->cfg->n_auth; i++) {
        if (c->cfg->auth[i].name && strcmp(c->cfg->auth[i].name, s) == 0) {
            store_uint((char *)obj + fd->off, fd->size, i);
            return true;
        }
    }
    if (c->auth_ok)
        err(c, v, "%s: unknown auth provider \"%s\"", path, quote(q, v));
    return false;
}

/* routes[].auth.require_claims: claim -> value. A value is any scalar kept as
 * its text (a number or true/false as written, quoted or not); the runtime
 * decides how a claim compares with it. */
static bool parse_require_claims(struct cctx *c, const struct field *fd, const struct tp_ynode *n,
                                 const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_route_auth *ra = obj;
    char q[QUOTE_LEN], vp[PATH_MAX_LEN];
    size_t errs_before = c->errs.n;

    (void)fd, (void)w;
    if (n->kind != TP_Y_MAP) {
        type_err(c, n, path, "a mapping of claim names to values");
        return false;
    }
    if (n->n == 0) {
        err(c, n, "%s: expected at least one claim (leave require_claims out to require none)", path);
        return false;
    }
    if (!(ra->require_claims = tp_cfg_arena_calloc(c->a, n->n, sizeof(*ra->require_claims)))) {
        oom(c);
        return false;
    }
    ra->n_require_claims = 0;
    for (size_t i = 0; i < n->n; i++) {
        const struct tp_ynode *k = n->pairs[i].key, *v = n->pairs[i].val;

        if (!claim_key(c, k, path) || claim_dup(c, n, i, path))
            continue;
        kpath(vp, path, quote(q, k));
        const char *s = scalar(c, v, vp, "a string, number or boolean");
        if (!s)
            continue;
        struct tp_header_kv *kv = &ra->require_claims[ra->n_require_claims++];
        kv->name = tp_cfg_arena_strndup(c->a, k->str, k->len);
        kv->name_len = k->len;
        kv->value = tp_cfg_arena_strndup(c->a, s, v->len);
        kv->value_len = v->len;
        if (!kv->name || !kv->value)
            oom(c);
    }
    return c->errs.n == errs_before;
}

/* ---- checks across keys: hooks of the tables below ---- */

/* Names must be unique within listeners, upstreams and routes: the second
 * holder is the error. Items without a name (their own error was reported)
 * are skipped; an item with a default name is pointed at as a whole. */
static void check_unique_names(struct cctx *c, const struct table *t, const struct tp_ynode *list,
                               const char *path, const char *items, size_t name_off,
                               const struct item_state *st)
{
    char q[QUOTE_LEN], item[PATH_MAX_LEN], key[PATH_MAX_LEN], first[PATH_MAX_LEN];

    for (size_t i = 1; i < list->n; i++) {
        const char *name = *(char *const *)(items + i * t->size + name_off);
        if (!name)
            continue;
        for (size_t j = 0; j < i; j++) {
            const char *other = *(char *const *)(items + j * t->size + name_off);
            if (!other || strcmp(name, other) != 0)
                continue;
            const struct tp_ynode *at = item_val(t, list->items[i], &st[i], "name");
            ipath(item, path, i);
            tp_cfg_quote(q, sizeof(q), name, strlen(name));
            err(c, at ? at : list->items[i], "%s: duplicate name \"%s\" (already used by %s)",
                at ? kpath(key, item, "name") : item, q, ipath(first, path, j));
            break;
        }
    }
}

static bool addr_set(const struct tp_addr *a)
{
    return a->len != 0;
}

static void listener_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_listener *l = w->obj;
    const struct tp_ynode *a = wval(w, "address");
    const struct tp_ynode *h2c = wval(w, "h2c");

    if (a)
        l->addr_pos = (struct tp_pos){a->line, a->col};
    if (h2c && l->h2c && l->tls) {
        /* a TLS client asks for HTTP/2 by ALPN; "h2" in tls.alpn is what turns it on */
        char p[PATH_MAX_LEN];
        warn(c, h2c, "%s: has no effect on a TLS listener (list h2 in tls.alpn)", kpath(p, w->path, "h2c"));
        l->h2c = false;
    }
}

static const struct table listener_table;

static void listeners_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                          const struct item_state *st)
{
    struct tp_cfg_listener *l = items;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], first[PATH_MAX_LEN];

    check_unique_names(c, &listener_table, list, path, items, offsetof(struct tp_cfg_listener, name), st);
    for (size_t i = 1; i < list->n; i++) {
        const struct tp_ynode *at = item_val(&listener_table, list->items[i], &st[i], "address");
        for (size_t j = 0; at && j < i; j++) {
            if (item_val(&listener_table, list->items[j], &st[j], "address") &&
                addr_equal(&l[i].addr, &l[j].addr)) {
                err(c, at, "%s: %s is already used by %s", kpath(kp, ipath(p, path, i), "address"),
                    l[i].addr.text, ipath(first, path, j));
                break;
            }
        }
    }
}

/* Every pair of files a listener names is loaded: the key must match the certificate. */
static void cert_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_cert *ce = w->obj;
    char p[PATH_MAX_LEN], e[512];

    if (ce->cert && ce->key && tp_tls_check_pair(ce->cert, ce->key, e, sizeof(e)) < 0)
        err(c, wval(w, "cert"), "%s: %s", kpath(p, w->path, "cert"), e);
}

/*
 * endpoints[].address: IPv4:port, [IPv6]:port, or host:port with a DNS name,
 * which the control thread resolves at run time (src/upstream/dns.c). Only
 * the syntax of a name is checked here: `-t` sends no DNS query. A host whose
 * last label is all digits is a broken IPv4 address, not a name.
 */
static bool parse_endpoint_addr(struct cctx *c, const struct field *fd, const struct tp_ynode *v,
                                const char *path, void *obj, struct walk *w)
{
    struct tp_cfg_endpoint *e = obj;
    char q[QUOTE_LEN], hq[QUOTE_LEN];
    const char *s = scalar(c, v, path, "an address");
    const char *colon, *why, *last;
    size_t hlen;
    uint32_t port = 0;

    (void)fd;
    (void)w;
    if (!s)
        return false;
    int r = tp_parse_addr(s, &e->addr);
    if (r == 0)
        return true;
    if (r == -ERANGE) {
        err(c, v, "%s: invalid port in \"%s\" (expected 1..65535)", path, quote(q, v));
        return false;
    }
    colon = memrchr(s, ':', v->len);
    if (s[0] == '[' || !colon || colon == s || memchr(s, ':', (size_t)(colon - s)))
        goto bad;
    hlen = (size_t)(colon - s);
    for (last = colon; last > s && last[-1] != '.'; last--)
        ;
    if (strspn(last, "0123456789") == (size_t)(colon - last))
        goto bad; /* 10.0.0.300, 1.2.3 */
    why = s[0] == '*' ? "a name, not a wildcard" : tp_cfg_check_host(s, hlen);
    if (why) {
        snprintf(hq, sizeof(hq), "%.*s", (int)(hlen < 64 ? hlen : 64), s);
        err(c, v, "%s: invalid host \"%s\" in \"%s\" (%s)", path, hq, quote(q, v), why);
        return false;
    }
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") != pl)
        goto bad;
    for (size_t i = 0; i < pl; i++)
        port = port * 10 + (uint32_t)(ps[i] - '0');
    if (port == 0 || port > 65535) {
        err(c, v, "%s: invalid port in \"%s\" (expected 1..65535)", path, quote(q, v));
        return false;
    }
    e->port = (uint16_t)port;
    if (!(e->name = tp_cfg_arena_strndup(c->a, s, v->len)) || !(e->host = lower_dup(c, s, hlen))) {
        oom(c);
        return false;
    }
    for (char *p = e->name; p < e->name + hlen; p++)
        *p = (char)tolower((unsigned char)*p);
    return true;
bad:
    err(c, v, "%s: invalid address \"%s\" (expected IPv4:port, [IPv6]:port or host:port)", path, quote(q, v));
    return false;
}

/* The same endpoint twice: equal addresses, or equal names (case-insensitive). */
static bool endpoint_equal(const struct tp_cfg_endpoint *a, const struct tp_cfg_endpoint *b)
{
    if (a->name || b->name)
        return a->name && b->name && strcmp(a->name, b->name) == 0;
    return addr_equal(&a->addr, &b->addr);
}

static const struct table endpoint_table;

static void endpoints_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                          const struct item_state *st)
{
    struct tp_cfg_endpoint *e = items;
    char ip[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    for (size_t i = 1; i < list->n; i++) {
        const struct tp_ynode *at = item_val(&endpoint_table, list->items[i], &st[i], "address");
        for (size_t j = 0; at && j < i; j++) {
            if (item_val(&endpoint_table, list->items[j], &st[j], "address") &&
                endpoint_equal(&e[i], &e[j])) {
                err(c, at, "%s: %s is already listed as endpoints[%zu]",
                    kpath(kp, ipath(ip, path, i), "address"), e[i].name ? e[i].name : e[i].addr.text, j);
                break;
            }
        }
    }
}

/* protocol: h2c is clear text, so `tls` contradicts it; h2 is TLS, with
 * the default client settings (verify, system CAs) when `tls` is absent, and
 * offers only "h2" by ALPN. */
static void upstream_protocol_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_upstream *u = w->obj;
    const struct tp_ynode *proto = wval(w, "protocol");
    char kp[PATH_MAX_LEN];

    if (w->failed & (1ull << fidx(w->t, "protocol")))
        return;
    if (u->protocol == TP_UPROTO_H2C && u->tls) {
        err(c, wkey(w, "tls"), "%s: h2c is HTTP/2 in clear text; use protocol: h2 for HTTP/2 over TLS",
            kpath(kp, w->path, "tls"));
        return;
    }
    if (u->protocol != TP_UPROTO_H2)
        return;
    if (!u->tls) {
        if (!(u->tls = tp_cfg_arena_calloc(c->a, 1, sizeof(*u->tls)))) {
            err(c, proto, "out of memory");
            return;
        }
        u->tls->verify = true;
        u->tls->pos = u->pos;
    }
    u->tls->alpn_h2 = true;
}

/* balance: hash and hash_key go together; blame the one that is there
 * without the other (a broken hash_key or balance was reported already). */
static void upstream_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_upstream *u = w->obj;
    size_t bal = fidx(w->t, "balance");
    const struct tp_ynode *hash_key = wkey(w, "hash_key");
    char kp[PATH_MAX_LEN];

    if (w->failed & (1ull << bal))
        return;
    if (u->balance == TP_BALANCE_HASH && !hash_key)
        err(c, w->val[bal], "%s: hash needs hash_key", kpath(kp, w->path, "balance"));
    if (u->balance != TP_BALANCE_HASH && hash_key) {
        warn(c, hash_key, "%s: only used with balance: hash (ignored)", kpath(kp, w->path, "hash_key"));
        memset(&u->hash_key, 0, sizeof(u->hash_key));
    }
    upstream_protocol_end(c, w);
}

static const struct table upstream_table;

static void upstreams_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                          const struct item_state *st)
{
    check_unique_names(c, &upstream_table, list, path, items, offsetof(struct tp_cfg_upstream, name), st);
}

static const struct table split_table;

/* An upstream appears once per split, and the weights must not all be 0
 * (unless some weight was refused already: then the sum means nothing). */
static void split_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                      const struct item_state *st)
{
    struct tp_cfg_split *s = items;
    size_t weight = fidx(&split_table, "weight");
    char ip[PATH_MAX_LEN], kp[PATH_MAX_LEN];
    uint64_t sum = 0;
    bool all_ok = true;

    for (size_t i = 0; i < list->n; i++) {
        sum += s[i].weight;
        if (!st[i].map || st[i].failed & (1ull << weight))
            all_ok = false;
        for (size_t j = 0; s[i].upstream != TP_UPSTREAM_NONE && j < i; j++) {
            if (s[j].upstream == s[i].upstream) {
                err(c, item_val(&split_table, list->items[i], &st[i], "upstream"),
                    "%s: upstream \"%s\" is already in split[%zu]", kpath(kp, ipath(ip, path, i), "upstream"),
                    c->cfg->upstreams[s[i].upstream].name, j);
                break;
            }
        }
    }
    if (all_ok && sum == 0)
        err(c, list, "%s: the weights add up to 0 (at least one must be above 0)", path);
}

/* The bucket holds one period's worth unless told otherwise. */
static void rate_limit_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_rate_limit *rl = w->obj;

    (void)c;
    if (!wval(w, "burst"))
        rl->burst = rl->tokens;
}

static const struct table route_table;

static void routes_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                       const struct item_state *st)
{
    check_unique_names(c, &route_table, list, path, items, offsetof(struct tp_cfg_route, name), st);
}

/* A route's rate_limit.key: claim:NAME needs a credential to take the claim
 * from, that is auth on the same route (a broken auth was reported already). */
static void route_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_route *r = w->obj;
    const struct tp_ynode *rl = wval(w, "rate_limit");
    const struct tp_ynode *key = rl ? map_get(rl, "key") : NULL;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN], q[QUOTE_LEN];

    if (key && r->rate_limit && r->rate_limit->key.kind == TP_KEY_CLAIM && !wkey(w, "auth"))
        err(c, key, "%s: %s needs auth on the route (without a credential there are no claims to key on)",
            kpath(kp, kpath(p, w->path, "rate_limit"), "key"), quote(q, key));
    /* a global bucket lives in the store: without one there is nowhere to share it */
    if (r->rate_limit && r->rate_limit->global && !c->store_declared) {
        const struct tp_ynode *scope = map_get(rl, "scope");
        err(c, scope, "%s: global needs a rate_limit_store (where the instances share the bucket)",
            kpath(kp, kpath(p, w->path, "rate_limit"), "scope"));
    }
}

/* The key files' positions, for the runtime's messages about their contents;
 * `from` defaults to the Authorization bearer token; clock_skew counts in
 * whole seconds, like the time claims it is compared with. */
static void jwt_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_jwt *j = w->obj;
    const struct tp_ynode *keys = wval(w, "keys");
    size_t skew = fidx(w->t, "clock_skew");
    char kp[PATH_MAX_LEN], q[QUOTE_LEN], t[32];

    if (keys)
        j->keys_pos = (struct tp_pos){keys->line, keys->col};
    if (!wkey(w, "from")) {
        if (!(j->from = tp_cfg_arena_calloc(c->a, 1, sizeof(*j->from)))) {
            oom(c);
            return;
        }
        j->from[0].kind = TP_FROM_BEARER;
        j->n_from = 1;
    }
    if (w->val[skew] && !(w->failed & (1ull << skew)) && j->clock_skew_ms % MS_PER_S)
        warn(c, w->val[skew], "%s: only whole seconds are used (%s counts as %s)",
             kpath(kp, w->path, "clock_skew"), quote(q, w->val[skew]),
             ms_text(t, sizeof(t), j->clock_skew_ms / MS_PER_S * MS_PER_S));
}

static void api_key_end(struct cctx *c, struct walk *w)
{
    struct tp_cfg_api_key *ak = w->obj;
    const struct tp_ynode *keys = wval(w, "keys");

    (void)c;
    if (keys)
        ak->keys_pos = (struct tp_pos){keys->line, keys->col};
    if (!wkey(w, "header"))
        ak->header_len = strlen(ak->header);
}

static const struct table auth_table;

static void auths_end(struct cctx *c, const struct tp_ynode *list, const char *path, void *items,
                      const struct item_state *st)
{
    check_unique_names(c, &auth_table, list, path, items, offsetof(struct tp_cfg_auth, name), st);
}

/* A provider no route names does nothing: said as a warning, only for a file
 * without errors (after an error the references are not all known). */
static void check_auth_used(struct cctx *c)
{
    const struct tp_config *cfg = c->cfg;
    char p[PATH_MAX_LEN], q[QUOTE_LEN];

    if (c->errs.n)
        return;
    for (size_t i = 0; i < cfg->n_auth; i++) {
        bool used = false;
        for (size_t r = 0; r < cfg->n_routes && !used; r++)
            used = cfg->routes[r].auth && cfg->routes[r].auth->provider == i;
        if (used)
            continue;
        struct tp_ynode at = {.line = cfg->auth[i].pos.line, .col = cfg->auth[i].pos.col};
        tp_cfg_quote(q, sizeof(q), cfg->auth[i].name, strlen(cfg->auth[i].name));
        warn(c, &at, "%s: provider \"%s\" is not used by any route", ipath(p, "auth", i), q);
    }
}

static void admin_end(struct cctx *c, struct walk *w)
{
    size_t i = fidx(w->t, "address");

    if (w->val[i] && !(w->failed & (1ull << i)))
        c->cfg->has_admin = true;
}

/* Routes refer to upstreams; when `upstreams` is there but unusable, the
 * references are not checked (see struct cctx). */
static void root_begin(struct cctx *c, struct walk *w)
{
    const struct tp_ynode *v = wval(w, "upstreams");

    c->upstreams_ok = v ? v->kind == TP_Y_SEQ : !wkey(w, "upstreams");
    v = wval(w, "auth");
    c->auth_ok = v ? v->kind == TP_Y_SEQ : !wkey(w, "auth");
    c->store_declared = wkey(w, "rate_limit_store") != NULL;
}

/* The admin listener may share no address with a data listener: the second
 * in the file is the one in error. Then the auth providers no route uses. */
static void root_end(struct cctx *c, struct walk *w)
{
    struct tp_config *cfg = c->cfg;
    const struct tp_ynode *admin = wval(w, "admin");
    const struct tp_ynode *admin_addr = cfg->has_admin && admin ? map_get(admin, "address") : NULL;
    char p[PATH_MAX_LEN], kp[PATH_MAX_LEN];

    check_auth_used(c);
    if (!admin_addr)
        return;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        struct tp_cfg_listener *l = &cfg->listeners[i];
        if (!addr_set(&l->addr) || !addr_equal(&l->addr, &cfg->admin))
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

/* ---- the schema: one table per mapping of docs/reference.md ----
 *
 * Table order is the order the values are read in (not the file's): upstreams
 * and auth before routes because routes name them, match and direct_response before
 * strip_prefix because it depends on them, `set` before `remove`. Names of
 * enums and flags are listed in the order of the C enum or bits they map to. */

#define LISTENER   struct tp_cfg_listener
#define TLS_SERVER struct tp_cfg_tls_server
#define CERT       struct tp_cfg_cert
#define UPSTREAM   struct tp_cfg_upstream
#define ENDPOINT   struct tp_cfg_endpoint
#define UP_TLS     struct tp_cfg_upstream_tls
#define HEALTH     struct tp_cfg_health_check
#define BREAKER    struct tp_cfg_circuit_breaker
#define RETRIES    struct tp_cfg_retries
#define ROUTE      struct tp_cfg_route
#define SPLIT      struct tp_cfg_split
#define DIRECT     struct tp_cfg_direct_response
#define RATE       struct tp_cfg_rate_limit
#define REWRITE    struct tp_header_rewrite
#define AUTH       struct tp_cfg_auth
#define JWT        struct tp_cfg_jwt
#define API_KEY    struct tp_cfg_api_key
#define ROUTE_AUTH struct tp_cfg_route_auth
#define CONFIG     struct tp_config
#define RL_STORE   struct tp_cfg_rl_store

_Static_assert(offsetof(struct tp_key, kind) == 0, "rate_limit.key's default is written at the key");

static const char *const tls_protocols[] = {"TLSv1.2", "TLSv1.3"};
_Static_assert(TP_TLS_V1_2 == 1u << 0 && TP_TLS_V1_3 == 1u << 1, "tls_protocols follows enum tp_tls_proto");

static const char *const balances[] = {"round_robin", "least_request", "hash"};
_Static_assert(TP_BALANCE_HASH == 2 && TP_BALANCE_COUNT == 3, "balances follows enum tp_balance");

static const char *const protocols[] = {"http1", "h2c", "h2"};
_Static_assert(TP_UPROTO_H2 == 2 && TP_UPROTO_COUNT == 3, "protocols follows enum tp_upstream_protocol");

static const char *const retry_conditions[] = {"connect_failure", "reset", "502", "503", "504"};
_Static_assert(TP_RETRY_CONNECT_FAILURE == 1u << 0 && TP_RETRY_504 == 1u << 4,
               "retry_conditions follows enum tp_retry_on");

static const char *const rl_scopes[] = {"local", "global"};

static const char *const store_failures[] = {"local", "allow"};
_Static_assert(TP_STORE_FAIL_ALLOW == 1 && TP_STORE_FAIL_COUNT == 2,
               "store_failures follows enum tp_store_failure");

static const char *const access_formats[] = {"json", "combined"};
_Static_assert(TP_ACCESS_COMBINED == 1 && TP_ACCESS_FORMAT_COUNT == 2,
               "access_formats follows enum tp_access_format");

/* listeners[].tls.certificates[] */
static const struct field cert_fields[] = {
    {"cert", T_FILE, AT(CERT, cert), .flags = F_REQUIRED},
    {"key", T_FILE, AT(CERT, key), .flags = F_REQUIRED},
};
static const struct table cert_table = {FIELDS(cert_fields), .size = sizeof(CERT), POS(CERT, pos),
                                        .end = cert_end};

/* listeners[].tls */
static const struct field listener_tls_fields[] = {
    {"certificates", T_LIST, AT(TLS_SERVER, certs), COUNT(TLS_SERVER, n_certs), SUB(cert_table),
     .flags = F_REQUIRED, .empty = "at least one certificate is required"},
    {"protocols", T_FLAGS, AT(TLS_SERVER, protocols), NAMES(tls_protocols), DEF_U(TP_TLS_V1_2 | TP_TLS_V1_3),
     .empty = "at least one protocol is required (TLSv1.2, TLSv1.3)"},
    {"alpn", T_CUSTOM, AT(TLS_SERVER, alpn), COUNT(TLS_SERVER, n_alpn), CUSTOM(parse_alpn)},
};
static const struct table listener_tls_table = {FIELDS(listener_tls_fields), .size = sizeof(TLS_SERVER),
                                                POS(TLS_SERVER, pos)};

/* listeners[] */
static const struct field listener_fields[] = {
    {"name", T_NAME, AT(LISTENER, name), .flags = F_DEFAULT_PATH},
    {"address", T_ADDR, AT(LISTENER, addr), .flags = F_REQUIRED},
    {"tls", T_OBJ, AT(LISTENER, tls), SUB(listener_tls_table)},
    {"h2c", T_BOOL, AT(LISTENER, h2c), DEF_U(false)},
};
static const struct table listener_table = {FIELDS(listener_fields), .size = sizeof(LISTENER),
                                            POS(LISTENER, pos), .end = listener_end,
                                            .list_end = listeners_end};

/* upstreams[].endpoints[] */
static const struct field endpoint_fields[] = {
    {"address", T_CUSTOM, AT(ENDPOINT, addr), CUSTOM(parse_endpoint_addr), .flags = F_REQUIRED},
    {"weight", T_UINT, AT(ENDPOINT, weight), RANGE(1, 1000), DEF_U(1)},
};
static const struct table endpoint_table = {FIELDS(endpoint_fields), .size = sizeof(ENDPOINT),
                                            POS(ENDPOINT, pos), .list_end = endpoints_end};

/* upstreams[].tls */
static const bool sni_no_wildcard = true;
static const struct field upstream_tls_fields[] = {
    {"sni", T_CUSTOM, AT(UP_TLS, sni), CUSTOM(parse_host), .arg = &sni_no_wildcard},
    {"verify", T_BOOL, AT(UP_TLS, verify), DEF_U(true)},
    {"ca", T_CUSTOM, AT(UP_TLS, ca), CUSTOM(parse_ca)},
};
static const struct table upstream_tls_table = {FIELDS(upstream_tls_fields), .size = sizeof(UP_TLS),
                                                POS(UP_TLS, pos)};

/* upstreams[].health_check */
static const struct field health_check_fields[] = {
    {"path", T_CUSTOM, AT(HEALTH, path), CUSTOM(parse_target), DEF_S("/")},
    {"interval", T_DURATION, AT(HEALTH, interval_ms), RANGE(10, MS_PER_H), DEF_U(2 * MS_PER_S)},
    {"timeout", T_DURATION, AT(HEALTH, timeout_ms), RANGE(1, MS_PER_H), DEF_U(1 * MS_PER_S)},
    {"healthy_after", T_UINT, AT(HEALTH, healthy_after), RANGE(1, 100), DEF_U(2)},
    {"unhealthy_after", T_UINT, AT(HEALTH, unhealthy_after), RANGE(1, 100), DEF_U(3)},
};
static const struct table health_check_table = {FIELDS(health_check_fields), .size = sizeof(HEALTH)};

/* upstreams[].circuit_breaker */
static const struct field breaker_fields[] = {
    {"consecutive_failures", T_UINT, AT(BREAKER, consecutive_failures), RANGE(1, 10000), DEF_U(5)},
    {"failure_ratio", T_RATIO, AT(BREAKER, failure_ratio), DEF_D(0.5)},
    {"min_requests", T_UINT, AT(BREAKER, min_requests), RANGE(1, 1000000), DEF_U(20)},
    {"window", T_DURATION, AT(BREAKER, window_ms), RANGE(MS_PER_S, MS_PER_H), DEF_U(10 * MS_PER_S)},
    {"open_for", T_DURATION, AT(BREAKER, open_for_ms), RANGE(1, 24 * MS_PER_H), DEF_U(10 * MS_PER_S)},
    {"half_open_requests", T_UINT, AT(BREAKER, half_open_requests), RANGE(1, 1000), DEF_U(3)},
};
static const struct table breaker_table = {FIELDS(breaker_fields), .size = sizeof(BREAKER)};

/* upstreams[].retries */
static const struct field retries_fields[] = {
    {"attempts", T_UINT, AT(RETRIES, attempts), RANGE(0, 10), DEF_U(1)},
    {"on", T_FLAGS, AT(RETRIES, on), NAMES(retry_conditions),
     DEF_U(TP_RETRY_CONNECT_FAILURE | TP_RETRY_RESET)},
};
static const struct table retries_table = {FIELDS(retries_fields), .size = sizeof(RETRIES)};

/* upstreams[] */
static const struct field upstream_fields[] = {
    {"name", T_NAME, AT(UPSTREAM, name), .flags = F_REQUIRED},
    {"endpoints", T_LIST, AT(UPSTREAM, endpoints), COUNT(UPSTREAM, n_endpoints), SUB(endpoint_table),
     .flags = F_REQUIRED, .empty = "at least one endpoint is required"},
    {"balance", T_ENUM, AT(UPSTREAM, balance), NAMES(balances), DEF_U(TP_BALANCE_ROUND_ROBIN)},
    {"protocol", T_ENUM, AT(UPSTREAM, protocol), NAMES(protocols), DEF_U(TP_UPROTO_HTTP1)},
    {"hash_key", T_CUSTOM, AT(UPSTREAM, hash_key), CUSTOM(parse_key), .arg = &key_for_hash},
    {"keepalive", T_UINT, AT(UPSTREAM, keepalive), RANGE(0, 10000), DEF_U(32)},
    {"tls", T_OBJ, AT(UPSTREAM, tls), SUB(upstream_tls_table)},
    {"health_check", T_OBJ, AT(UPSTREAM, health_check), SUB(health_check_table)},
    {"circuit_breaker", T_OBJ, AT(UPSTREAM, circuit_breaker), SUB(breaker_table)},
    {"max_concurrent_requests", T_UINT, AT(UPSTREAM, max_concurrent_requests), RANGE(1, 10000000)},
    {"retries", T_OBJ, AT(UPSTREAM, retries), SUB(retries_table)},
    {"resolve_every", T_DURATION, AT(UPSTREAM, resolve_every_ms), RANGE(100, 24 * MS_PER_H),
     DEF_U(30 * MS_PER_S)},
};
static const struct table upstream_table = {FIELDS(upstream_fields), .size = sizeof(UPSTREAM),
                                            POS(UPSTREAM, pos), .end = upstream_end,
                                            .list_end = upstreams_end};

/* routes[].match: embedded in the route (its keys fill route members) */
static const struct field match_fields[] = {
    {"host", T_CUSTOM, AT(ROUTE, host), CUSTOM(parse_host)},
    {"path", T_CUSTOM, AT(ROUTE, path), CUSTOM(parse_match_path), .arg = &match_exact, .group = 1},
    {"path_prefix", T_CUSTOM, AT(ROUTE, path), CUSTOM(parse_match_path), .arg = &match_prefix, .group = 1,
     DEF_S("/")},
    {"methods", T_CUSTOM, AT(ROUTE, methods), CUSTOM(parse_methods)},
    {"headers", T_CUSTOM, AT(ROUTE, headers), COUNT(ROUTE, n_headers), CUSTOM(parse_header_map),
     .arg = &hdr_match},
};
static const struct table match_table = {FIELDS(match_fields)};

/* routes[].split[] */
static const struct field split_fields[] = {
    {"upstream", T_CUSTOM, AT(SPLIT, upstream), CUSTOM(parse_upstream_ref), .flags = F_REQUIRED,
     DEF_U(TP_UPSTREAM_NONE)},
    {"weight", T_UINT, AT(SPLIT, weight), RANGE(0, 1000), DEF_U(1)},
};
static const struct table split_table = {FIELDS(split_fields), .size = sizeof(SPLIT), POS(SPLIT, pos),
                                         .list_end = split_end};

/* routes[].direct_response */
static const struct field direct_fields[] = {
    {"status", T_UINT, AT(DIRECT, status), RANGE(200, 599), .flags = F_REQUIRED},
    {"body", T_CUSTOM, AT(DIRECT, body), COUNT(DIRECT, body_len), CUSTOM(parse_body), DEF_S("")},
};
static const struct table direct_table = {FIELDS(direct_fields), .size = sizeof(DIRECT)};

/* routes[].rate_limit (burst defaults to the rate's count: rate_limit_end) */
static const struct field rate_limit_fields[] = {
    {"rate", T_CUSTOM, AT(RATE, tokens), CUSTOM(parse_rate), .flags = F_REQUIRED},
    {"burst", T_UINT, AT(RATE, burst), RANGE(1, 1000000000)},
    /* the default is the key's kind, its first member; the parser fills the whole struct tp_key */
    {"key", T_CUSTOM, AT(RATE, key.kind), CUSTOM(parse_key), .arg = &key_for_rate, DEF_U(TP_KEY_CLIENT_IP)},
    {"scope", T_ENUM, AT(RATE, global), NAMES(rl_scopes), DEF_U(false)},
};
static const struct table rate_limit_table = {FIELDS(rate_limit_fields), .size = sizeof(RATE),
                                              .end = rate_limit_end};

/* routes[].request_headers and routes[].response_headers */
static const struct field request_headers_fields[] = {
    {"set", T_CUSTOM, AT(REWRITE, set), COUNT(REWRITE, n_set), CUSTOM(parse_header_map),
     .arg = &hdr_set_request},
    {"remove", T_CUSTOM, AT(REWRITE, remove), CUSTOM(parse_header_remove), .arg = "request_headers"},
};
static const struct table request_headers_table = {FIELDS(request_headers_fields)};
static const struct field response_headers_fields[] = {
    {"set", T_CUSTOM, AT(REWRITE, set), COUNT(REWRITE, n_set), CUSTOM(parse_header_map),
     .arg = &hdr_set_response},
    {"remove", T_CUSTOM, AT(REWRITE, remove), CUSTOM(parse_header_remove), .arg = "response_headers"},
};
static const struct table response_headers_table = {FIELDS(response_headers_fields)};

/* routes[].auth */
static const struct field route_auth_fields[] = {
    {"provider", T_CUSTOM, AT(ROUTE_AUTH, provider), CUSTOM(parse_auth_ref), .flags = F_REQUIRED},
    {"require_claims", T_CUSTOM, AT(ROUTE_AUTH, require_claims), COUNT(ROUTE_AUTH, n_require_claims),
     CUSTOM(parse_require_claims)},
    {"forward_credential", T_BOOL, AT(ROUTE_AUTH, forward_credential), DEF_U(false)},
};
static const struct table route_auth_table = {FIELDS(route_auth_fields), .size = sizeof(ROUTE_AUTH)};

/* routes[]: exactly one of upstream, split and direct_response (group 1) */
static const struct field route_fields[] = {
    {"name", T_NAME, AT(ROUTE, name), .flags = F_DEFAULT_PATH},
    {"match", T_MAP, .off = 0, SUB(match_table)},
    {"upstream", T_CUSTOM, AT(ROUTE, upstream), CUSTOM(parse_upstream_ref), .group = 1,
     DEF_U(TP_UPSTREAM_NONE)},
    {"split", T_LIST, AT(ROUTE, split), COUNT(ROUTE, n_split), SUB(split_table), .group = 1,
     .empty = "expected at least one upstream"},
    {"direct_response", T_OBJ, AT(ROUTE, direct), SUB(direct_table), .group = 1},
    {"strip_prefix", T_CUSTOM, AT(ROUTE, strip_prefix), CUSTOM(parse_strip_prefix)},
    {"rate_limit", T_OBJ, AT(ROUTE, rate_limit), SUB(rate_limit_table)},
    {"request_headers", T_MAP, AT(ROUTE, request_headers), SUB(request_headers_table)},
    {"response_headers", T_MAP, AT(ROUTE, response_headers), SUB(response_headers_table)},
    {"upgrade", T_CUSTOM, AT(ROUTE, upgrade), COUNT(ROUTE, n_upgrade), CUSTOM(parse_upgrade)},
    {"auth", T_OBJ, AT(ROUTE, auth), SUB(route_auth_table)},
};
static const struct table route_table = {FIELDS(route_fields), .size = sizeof(ROUTE),
                                         POS(ROUTE, pos),      .required_groups = 1u << 1,
                                         .end = route_end,     .list_end = routes_end};

/* auth[].jwt (`from` defaults to the bearer token: jwt_end) */
static const struct field jwt_fields[] = {
    {"keys", T_CUSTOM, AT(JWT, keys), CUSTOM(parse_text), .arg = "a file path", .flags = F_REQUIRED},
    {"issuer", T_CUSTOM, AT(JWT, issuer), CUSTOM(parse_text), .arg = "a string"},
    {"audiences", T_CUSTOM, AT(JWT, audiences), COUNT(JWT, n_audiences), CUSTOM(parse_audiences)},
    {"from", T_CUSTOM, AT(JWT, from), COUNT(JWT, n_from), CUSTOM(parse_cred_from)},
    {"clock_skew", T_DURATION, AT(JWT, clock_skew_ms), RANGE(0, MS_PER_H), DEF_U(30 * MS_PER_S)},
    {"forward_claims", T_CUSTOM, AT(JWT, forward_claims), COUNT(JWT, n_forward_claims),
     CUSTOM(parse_forward_claims)},
};
static const struct table jwt_table = {FIELDS(jwt_fields), .size = sizeof(JWT), .end = jwt_end};

/* auth[].api_key (header_len of the default: api_key_end) */
static const struct field api_key_fields[] = {
    {"header", T_CUSTOM, AT(API_KEY, header), COUNT(API_KEY, header_len), CUSTOM(parse_cred_header),
     DEF_S("x-api-key")},
    {"keys", T_CUSTOM, AT(API_KEY, keys), CUSTOM(parse_text), .arg = "a file path", .flags = F_REQUIRED},
};
static const struct table api_key_table = {FIELDS(api_key_fields), .size = sizeof(API_KEY),
                                           .end = api_key_end};

/* auth[]: exactly one of jwt and api_key (group 1) */
static const struct field auth_fields[] = {
    {"name", T_NAME, AT(AUTH, name), .flags = F_REQUIRED},
    {"jwt", T_OBJ, AT(AUTH, jwt), SUB(jwt_table), .group = 1},
    {"api_key", T_OBJ, AT(AUTH, api_key), SUB(api_key_table), .group = 1},
};
static const struct table auth_table = {FIELDS(auth_fields), .size = sizeof(AUTH), POS(AUTH, pos),
                                        .required_groups = 1u << 1, .list_end = auths_end};

/* rate_limit_store: where scope: global buckets live */
static const struct field rl_store_fields[] = {
    {"redis", T_ADDR, AT(RL_STORE, redis), .flags = F_REQUIRED},
    {"timeout", T_DURATION, AT(RL_STORE, timeout_ms), RANGE(1, 10 * MS_PER_S), DEF_U(5)},
    {"on_failure", T_ENUM, AT(RL_STORE, on_failure), NAMES(store_failures), DEF_U(TP_STORE_FAIL_LOCAL)},
    {"prefix", T_CUSTOM, AT(RL_STORE, prefix), CUSTOM(parse_text), .arg = "a string", DEF_S("turnpike:rl:")},
};
static const struct table rl_store_table = {FIELDS(rl_store_fields), .size = sizeof(RL_STORE),
                                            POS(RL_STORE, pos)};

/* admin, access_log, limits, timeouts, shutdown: embedded in struct tp_config */
static const struct field admin_fields[] = {
    {"address", T_ADDR, AT(CONFIG, admin), .flags = F_REQUIRED},
};
static const struct table admin_table = {FIELDS(admin_fields), .end = admin_end};

static const struct field access_log_fields[] = {
    {"path", T_CUSTOM, AT(CONFIG, access_log_path), CUSTOM(parse_log_path), .flags = F_REQUIRED},
    {"format", T_ENUM, AT(CONFIG, access_log_format), NAMES(access_formats), DEF_U(TP_ACCESS_JSON)},
};
static const struct table access_log_table = {FIELDS(access_log_fields)};

static const struct field limits_fields[] = {
    {"max_connections", T_UINT, AT(CONFIG, max_connections), RANGE(1, 10000000), DEF_U(100000)},
    {"max_header_bytes", T_SIZE, AT(CONFIG, max_header_bytes), RANGE(1024, 1024 * 1024), DEF_U(16 * 1024)},
    {"max_body_bytes", T_SIZE, AT(CONFIG, max_body_bytes), RANGE(0, 1ull << 40), DEF_U(10 * 1024 * 1024)},
    {"max_unsent_bytes", T_SIZE, AT(CONFIG, max_unsent_bytes), RANGE(0, 1ull << 30), DEF_U(128 * 1024)},
    {"h2_max_concurrent_streams", T_UINT, AT(CONFIG, h2_max_concurrent_streams), RANGE(1, 0x7fffffff),
     DEF_U(100)},
    {"h2_max_resets_per_s", T_UINT, AT(CONFIG, h2_max_resets_per_s), RANGE(1, 1000000), DEF_U(100)},
};
static const struct table limits_table = {FIELDS(limits_fields)};

static const struct field timeouts_fields[] = {
    {"client_header", T_DURATION, AT(CONFIG, client_header_ms), RANGE(1, 24 * MS_PER_H),
     DEF_U(10 * MS_PER_S)},
    {"client_idle", T_DURATION, AT(CONFIG, client_idle_ms), RANGE(1, 24 * MS_PER_H), DEF_U(60 * MS_PER_S)},
    {"upstream_connect", T_DURATION, AT(CONFIG, upstream_connect_ms), RANGE(1, 24 * MS_PER_H),
     DEF_U(2 * MS_PER_S)},
    {"upstream_response", T_DURATION, AT(CONFIG, upstream_response_ms), RANGE(1, 24 * MS_PER_H),
     DEF_U(30 * MS_PER_S)},
    {"tunnel_idle", T_DURATION, AT(CONFIG, tunnel_idle_ms), RANGE(1, 7 * 24 * MS_PER_H), DEF_U(MS_PER_H)},
};
static const struct table timeouts_table = {FIELDS(timeouts_fields)};

/* resolver: embedded in struct tp_config */
static const struct field resolver_fields[] = {
    {"servers", T_CUSTOM, AT(CONFIG, resolver.servers), COUNT(CONFIG, resolver.n_servers),
     CUSTOM(parse_servers)},
    {"timeout", T_DURATION, AT(CONFIG, resolver.timeout_ms), RANGE(10, 60 * MS_PER_S), DEF_U(MS_PER_S)},
};
static const struct table resolver_table = {FIELDS(resolver_fields)};

static const struct field shutdown_fields[] = {
    {"drain_timeout", T_DURATION, AT(CONFIG, drain_timeout_ms), RANGE(0, 24 * MS_PER_H),
     DEF_U(30 * MS_PER_S)},
};
static const struct table shutdown_table = {FIELDS(shutdown_fields)};

/* the top level */
static const struct field root_fields[] = {
    {"workers", T_CUSTOM, AT(CONFIG, workers), CUSTOM(parse_workers), DEF_U(0)},
    {"listeners", T_LIST, AT(CONFIG, listeners), COUNT(CONFIG, n_listeners), SUB(listener_table),
     .flags = F_REQUIRED, .empty = "at least one listener is required"},
    {"admin", T_MAP, .off = 0, SUB(admin_table)},
    {"access_log", T_MAP, .off = 0, SUB(access_log_table)},
    {"limits", T_MAP, .off = 0, SUB(limits_table)},
    {"timeouts", T_MAP, .off = 0, SUB(timeouts_table)},
    {"shutdown", T_MAP, .off = 0, SUB(shutdown_table)},
    {"resolver", T_MAP, .off = 0, SUB(resolver_table)},
    {"upstreams", T_LIST, AT(CONFIG, upstreams), COUNT(CONFIG, n_upstreams), SUB(upstream_table)},
    {"auth", T_LIST, AT(CONFIG, auth), COUNT(CONFIG, n_auth), SUB(auth_table)},
    {"rate_limit_store", T_OBJ, AT(CONFIG, rl_store), SUB(rl_store_table)},
    {"routes", T_LIST, AT(CONFIG, routes), COUNT(CONFIG, n_routes), SUB(route_table)},
};
static const struct table root_table = {FIELDS(root_fields), .begin = root_begin, .end = root_end};

#undef LISTENER
#undef TLS_SERVER
#undef CERT
#undef UPSTREAM
#undef ENDPOINT
#undef UP_TLS
#undef HEALTH
#undef BREAKER
#undef RETRIES
#undef ROUTE
#undef SPLIT
#undef DIRECT
#undef RATE
#undef REWRITE
#undef AUTH
#undef JWT
#undef API_KEY
#undef ROUTE_AUTH
#undef CONFIG
#undef RL_STORE

/* ---- the walker ---- */

static bool walk_table(struct cctx *c, const struct table *t, const struct tp_ynode *n, const char *path,
                       void *obj, struct walk *w);

/* A fresh zeroed struct for <t> with its defaults, and its position. */
static void *new_struct(struct cctx *c, const struct table *t, void *obj, const struct tp_ynode *n)
{
    if (!obj && !(obj = tp_cfg_arena_alloc(c->a, t->size))) {
        oom(c);
        return NULL;
    }
    apply_defaults(t, obj);
    if (t->has_pos)
        *(struct tp_pos *)((char *)obj + t->pos_off) = (struct tp_pos){n->line, n->col};
    return obj;
}

static bool parse_list(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                       void *obj)
{
    const struct table *t = fd->sub;
    char ip[PATH_MAX_LEN];
    struct walk w;

    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0) {
        if (fd->empty)
            err(c, v, "%s: %s", path, fd->empty);
        return !fd->empty;
    }
    char *items = tp_cfg_arena_calloc(c->a, v->n, t->size);
    struct item_state *st = tp_cfg_arena_calloc(c->tmp, v->n, sizeof(*st));
    if (!items || !st) {
        oom(c);
        return false;
    }
    *(void **)((char *)obj + fd->off) = items;
    *(size_t *)((char *)obj + fd->count_off) = v->n;
    for (size_t i = 0; i < v->n; i++) {
        void *item = new_struct(c, t, items + i * t->size, v->items[i]);
        st[i].map = walk_table(c, t, v->items[i], ipath(ip, path, i), item, &w);
        st[i].failed = w.failed;
    }
    if (t->list_end)
        t->list_end(c, v, path, items, st);
    return true;
}

static bool parse_flags(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                        void *obj)
{
    char ip[PATH_MAX_LEN], expected[256];
    uint64_t bits = 0;
    bool ok = true;

    if (!is_seq(c, v, path))
        return false;
    if (v->n == 0 && fd->empty) {
        err(c, v, "%s: %s", path, fd->empty);
        return false;
    }
    join_names(expected, sizeof(expected), fd->names, fd->n_names, "or");
    for (size_t i = 0; i < v->n; i++) {
        int k;
        if (get_enum(c, v->items[i], ipath(ip, path, i), fd->names, fd->n_names, expected, &k))
            bits |= 1ull << k;
        else
            ok = false;
    }
    store_uint((char *)obj + fd->off, fd->size, bits);
    return ok;
}

/* Reads the value <v> of field <fd> (key path <path>) into <obj>. Returns false after an error. */
static bool parse_field(struct cctx *c, const struct field *fd, const struct tp_ynode *v, const char *path,
                        void *obj, struct walk *w)
{
    char *at = (char *)obj + fd->off;
    char lo[32], hi[32], range[80], expected[256];
    struct walk sub;
    uint64_t u;
    int k;

    switch (fd->type) {
    case T_UINT:
        if (!get_uint(c, v, path, fd->lo, fd->hi, &u))
            return false;
        store_uint(at, fd->size, u);
        return true;
    case T_DURATION:
        snprintf(range, sizeof(range), "%s..%s", ms_text(lo, sizeof(lo), fd->lo),
                 ms_text(hi, sizeof(hi), fd->hi));
        return get_duration(c, v, path, fd->lo, fd->hi, range, (uint64_t *)at);
    case T_SIZE:
        snprintf(range, sizeof(range), "%s..%s", size_text(lo, sizeof(lo), fd->lo),
                 size_text(hi, sizeof(hi), fd->hi));
        return get_size(c, v, path, fd->lo, fd->hi, range, (uint64_t *)at);
    case T_RATIO:
        return get_ratio(c, v, path, (double *)at);
    case T_BOOL:
        return get_bool(c, v, path, (bool *)at);
    case T_ENUM:
        join_names(expected, sizeof(expected), fd->names, fd->n_names, "or");
        if (!get_enum(c, v, path, fd->names, fd->n_names, expected, &k))
            return false;
        store_uint(at, fd->size, (uint64_t)k);
        return true;
    case T_FLAGS:
        return parse_flags(c, fd, v, path, obj);
    case T_NAME:
        return (*(char **)at = get_name(c, v, path)) != NULL;
    case T_ADDR:
        return get_addr(c, v, path, (struct tp_addr *)at);
    case T_FILE:
        return (*(char **)at = get_file(c, v, path)) != NULL;
    case T_MAP:
        return walk_table(c, fd->sub, v, path, at, &sub);
    case T_OBJ: {
        /* Allocated only for a mapping: a wrong type leaves the section absent. */
        if (v->kind != TP_Y_MAP)
            return walk_table(c, fd->sub, v, path, NULL, &sub);
        void *o = new_struct(c, fd->sub, NULL, v);
        if (!o)
            return false;
        *(void **)at = o;
        return walk_table(c, fd->sub, v, path, o, &sub);
    }
    case T_LIST:
        return parse_list(c, fd, v, path, obj);
    case T_CUSTOM:
        return fd->parse(c, fd, v, path, obj, w);
    default:
        TP_BUG_ON(!"unknown field type");
        return false;
    }
}

/* Of the keys of group <g> present in <w>, allows one: every further one (in
 * file order) is an error at its key. With none present and the group
 * required, the mapping lacks one. Runs where the group's first field is in
 * table order, so its messages come where the hand-written checks put them. */
static void check_group(struct cctx *c, struct walk *w, unsigned g)
{
    const struct table *t = w->t;
    const char *names[MAX_FIELDS];
    const struct tp_ynode *first = NULL;
    char p[PATH_MAX_LEN], list[256];
    size_t n = 0;

    for (size_t i = 0; i < t->n; i++) {
        if (t->fields[i].group != g)
            continue;
        names[n++] = t->fields[i].name;
        if (w->key[i] && (!first || pos_before(w->key[i], first)))
            first = w->key[i];
    }
    join_names(list, sizeof(list), names, n, "and");
    for (size_t i = 0; i < t->n; i++) {
        if (t->fields[i].group != g || !w->key[i])
            continue;
        w->group_n[g]++;
        if (w->key[i] != first)
            err(c, w->key[i], "%s: only one of %s is allowed", kpath(p, w->path, t->fields[i].name), list);
    }
    if (!w->group_n[g] && t->required_groups & (1u << g))
        err(c, w->map, "%s: needs one of %s", w->path, join_names(list, sizeof(list), names, n, "or"));
}

static bool first_of_group(const struct table *t, size_t i)
{
    for (size_t j = 0; j < i; j++)
        if (t->fields[j].group == t->fields[i].group)
            return false;
    return true;
}

/*
 * Reads mapping <n> (key path <path>) into <obj> with table <t>, leaving the
 * state in <w> for the caller. Every key must be in the table, at most once;
 * then the values are read in table order. Returns false when <n> is not a
 * mapping (nothing was read; <obj> may then be NULL).
 */
static bool walk_table(struct cctx *c, const struct table *t, const struct tp_ynode *n, const char *path,
                       void *obj, struct walk *w)
{
    char p[PATH_MAX_LEN], q[QUOTE_LEN], d[QUOTE_LEN + 2];

    memset(w, 0, sizeof(*w));
    w->t = t;
    w->map = n;
    w->path = path;
    w->obj = obj;
    if (n->kind != TP_Y_MAP) {
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
            if (*path)
                err(c, k, "%s: keys must be strings, got %s", path, describe(d, k));
            else
                err(c, k, "keys must be strings, got %s", describe(d, k));
            continue;
        }
        for (j = 0; j < t->n; j++)
            if (strlen(t->fields[j].name) == k->len && memcmp(t->fields[j].name, k->str, k->len) == 0)
                break;
        if (j == t->n) {
            err(c, k, "%s: unknown key", kpath(p, path, quote(q, k)));
            continue;
        }
        if (w->key[j]) {
            err(c, k, "%s: duplicate key", kpath(p, path, t->fields[j].name));
            continue;
        }
        w->key[j] = k;
        if (t->fields[j].flags & F_UNSUPPORTED) {
            err(c, k, "%s is not supported yet", kpath(p, path, t->fields[j].name));
            continue;
        }
        w->val[j] = n->pairs[i].val;
    }
    if (t->begin)
        t->begin(c, w);
    for (size_t i = 0; i < t->n; i++) {
        const struct field *fd = &t->fields[i];

        if (fd->group && first_of_group(t, i))
            check_group(c, w, fd->group);
        if (w->val[i]) {
            if (!parse_field(c, fd, w->val[i], kpath(p, path, fd->name), obj, w))
                w->failed |= 1ull << i;
        } else if (!w->key[i]) {
            if (fd->flags & F_REQUIRED)
                missing(c, n, path, fd->name);
            if ((fd->flags & F_DEFAULT_PATH) &&
                !(*(char **)((char *)obj + fd->off) = tp_cfg_arena_strndup(c->a, path, strlen(path))))
                oom(c);
        }
    }
    if (t->end)
        t->end(c, w);
    return true;
}

/* ---- the whole file ---- */

struct tp_config *tp_config_parse(const char *name, const char *buf, size_t len, struct tp_diag *diag)
{
    struct cctx c = {.name = name};
    struct tp_cfg_arena *tree = NULL;
    struct tp_ynode *root;
    struct walk w;
    bool empty;

    c.a = tp_cfg_arena_create();
    tree = tp_cfg_arena_create();
    if (!c.a || !tree)
        goto oom;
    c.tmp = tree;
    c.cfg = tp_cfg_arena_alloc(c.a, sizeof(*c.cfg));
    if (!c.cfg)
        goto oom;
    c.cfg->_arena = c.a;
    c.cfg->source = tp_cfg_arena_strndup(c.a, name, strlen(name));
    if (!c.cfg->source || !EVP_Digest(buf, len, c.cfg->sha256, NULL, EVP_sha256(), NULL))
        goto oom;
    apply_defaults(&root_table, c.cfg);

    root = tp_cfg_yaml_parse(buf, len, tree, &c.errs, &empty);
    if (root && root->kind == TP_Y_SCALAR && root->null) /* "---" alone, or "~" */
        empty = true;
    if (empty)
        tp_cfg_errs_add(&c.errs, 1, 1, "the file is empty (expected a mapping with at least \"listeners\")");
    else if (root)
        walk_table(&c, &root_table, root, "", c.cfg, &w);

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
