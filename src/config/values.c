/* SPDX-License-Identifier: MIT */
/*
 * Value syntax of the configuration: durations, sizes, rates and addresses
 * (public, declared in turnpike/config.h, also used by the admin API and the
 * tests), the string checkers for header names and values, hosts, paths and
 * methods, and the arena every tp_config lives in. All pure functions of
 * their input; [any] in practice, documented [control] with the module.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "config/config_int.h"

/* ---- arena ---- */

struct arena_chunk {
    struct arena_chunk *next;
    size_t used, size;
    max_align_t data[]; /* aligned for any type */
};

struct tp_cfg_arena {
    struct arena_chunk *head;
};

#define ARENA_CHUNK (16u * 1024u)
#define ARENA_ALIGN (sizeof(max_align_t))

struct tp_cfg_arena *tp_cfg_arena_create(void)
{
    return calloc(1, sizeof(struct tp_cfg_arena));
}

void tp_cfg_arena_destroy(struct tp_cfg_arena *a)
{
    if (!a)
        return;
    for (struct arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

void *tp_cfg_arena_alloc(struct tp_cfg_arena *a, size_t n)
{
    struct arena_chunk *c = a->head;

    if (n > SIZE_MAX - ARENA_CHUNK)
        return NULL;
    n = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    if (!c || c->size - c->used < n) {
        /* A big block gets a chunk of its own, placed behind the head so the
         * head's free space stays usable for the small ones that follow. */
        size_t size = n > ARENA_CHUNK / 4 ? n : ARENA_CHUNK;
        struct arena_chunk *nc = malloc(sizeof(*nc) + size);
        if (!nc)
            return NULL;
        nc->used = 0;
        nc->size = size;
        if (c && size != ARENA_CHUNK) {
            nc->next = c->next;
            c->next = nc;
        } else {
            nc->next = c;
            a->head = nc;
        }
        c = nc;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

void *tp_cfg_arena_calloc(struct tp_cfg_arena *a, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    return tp_cfg_arena_alloc(a, n * size);
}

char *tp_cfg_arena_strndup(struct tp_cfg_arena *a, const char *s, size_t len)
{
    if (len == SIZE_MAX)
        return NULL;
    char *p = tp_cfg_arena_alloc(a, len + 1);
    if (p) {
        memcpy(p, s, len);
        p[len] = '\0';
    }
    return p;
}

/* ---- numbers with units ---- */

/* Reads the leading decimal digits of <s> into *v and points *end past them.
 * Returns 1, 0 when there is no digit, or -ERANGE when the number does not
 * fit in 64 bits (still scanned to its end, so the caller can look at what
 * follows: a bad unit is reported before an overflow). */
static int read_digits(const char *s, uint64_t *v, const char **end)
{
    const char *p = s;
    uint64_t x = 0;
    bool over = false;

    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (over || x > (UINT64_MAX - d) / 10)
            over = true;
        else
            x = x * 10 + d;
    }
    *v = x;
    *end = p;
    if (p == s)
        return 0;
    return over ? -ERANGE : 1;
}

struct unit {
    const char *name;
    uint64_t mult;
};

static int parse_with_unit(const char *s, const struct unit *units, size_t n_units, bool unit_required,
                           uint64_t *out)
{
    uint64_t v;
    const char *u;
    int r;

    if (!s)
        return -EINVAL;
    r = read_digits(s, &v, &u);
    if (r == 0)
        return -EINVAL;
    /* An overflowing number with a bad unit is still a syntax error first. */
    for (size_t i = 0; i < n_units; i++) {
        if (strcmp(u, units[i].name) != 0)
            continue;
        if (r < 0 || (units[i].mult && v > UINT64_MAX / units[i].mult))
            return -ERANGE;
        *out = v * units[i].mult;
        return 0;
    }
    if (*u == '\0' && !unit_required) {
        if (r < 0)
            return -ERANGE;
        *out = v;
        return 0;
    }
    return -EINVAL;
}

int tp_parse_duration_ms(const char *s, uint64_t *out)
{
    static const struct unit units[] = {
        {"ms", 1},
        {"s", 1000},
        {"m", 60 * 1000},
        {"h", 3600 * 1000},
    };
    return parse_with_unit(s, units, sizeof(units) / sizeof(units[0]), true, out);
}

int tp_parse_size(const char *s, uint64_t *out)
{
    static const struct unit units[] = {
        {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},   {"TiB", 1ull << 40},
        {"KB", 1000ull},     {"MB", 1000000ull},  {"GB", 1000000000ull}, {"TB", 1000000000000ull},
    };
    return parse_with_unit(s, units, sizeof(units) / sizeof(units[0]), false, out);
}

/* Tokens per period above this make no sense for a per-key bucket and would
 * overflow the limiter's milli-token arithmetic long before 2^64. */
#define TP_RATE_MAX 1000000000ull

int tp_parse_rate(const char *s, uint64_t *tokens, uint64_t *period_ms)
{
    uint64_t v, p;
    const char *u;
    int r;

    if (!s)
        return -EINVAL;
    r = read_digits(s, &v, &u);
    if (r == 0 || u[0] != '/' || u[1] == '\0' || u[2] != '\0')
        return -EINVAL;
    switch (u[1]) {
    case 's':
        p = 1000;
        break;
    case 'm':
        p = 60 * 1000;
        break;
    case 'h':
        p = 3600 * 1000;
        break;
    default:
        return -EINVAL;
    }
    if (r < 0 || v == 0 || v > TP_RATE_MAX)
        return -ERANGE;
    *tokens = v;
    *period_ms = p;
    return 0;
}

int tp_parse_addr(const char *s, struct tp_addr *out)
{
    char host[64];
    const char *port_s;
    size_t len, hlen;
    uint64_t port;
    const char *end;
    int r;

    if (!s)
        return -EINVAL;
    len = strlen(s);
    if (len == 0 || len >= sizeof(out->text))
        return -EINVAL;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -EINVAL;
        hlen = (size_t)(rb - s - 1);
        memcpy(host, s + 1, hlen);
        port_s = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || memchr(s, ':', (size_t)(colon - s)))
            return -EINVAL; /* no port, or an IPv6 address without brackets */
        hlen = (size_t)(colon - s);
        memcpy(host, s, hlen);
        port_s = colon + 1;
    }
    host[hlen] = '\0';

    r = read_digits(port_s, &port, &end);
    if (r == 0 || *end != '\0')
        return -EINVAL;
    if (r < 0)
        port = 65536; /* out of range below, once the host was checked */

    struct tp_addr a;
    memset(&a, 0, sizeof(a));
    if (s[0] == '[') {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;
        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        a.len = sizeof(*sin6);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        a.len = sizeof(*sin);
    }
    /* The address is checked first so "host:0" says "bad address" when
     * both are wrong; the port range is the finer complaint. */
    if (port == 0 || port > 65535)
        return -ERANGE;
    memcpy(a.text, s, len + 1);
    *out = a;
    return 0;
}

/* ---- string checkers ---- */

bool tp_cfg_is_token(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            continue;
        if (!c || !strchr("!#$%&'*+-.^_`|~", c))
            return false;
    }
    return true;
}

const char *tp_cfg_check_header_value(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == '\0')
            return "CR, LF and NUL are not allowed";
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return "control characters are not allowed";
    }
    /* A parsed field value never has edge whitespace (RFC 9110 5.5), so a
     * match value with it could never match, and a set value would be sent
     * differently from what was written. */
    if (len && (s[0] == ' ' || s[0] == '\t' || s[len - 1] == ' ' || s[len - 1] == '\t'))
        return "leading and trailing whitespace is not allowed";
    return NULL;
}

const char *tp_cfg_check_host(const char *s, size_t len)
{
    size_t i = 0, label = 0;

    if (len == 0)
        return "empty";
    if (len > 253)
        return "longer than 253 characters";
    if (memchr(s, ':', len))
        return "a port is not allowed: hosts are compared without it";
    if (len >= 2 && s[0] == '*' && s[1] == '.')
        i = 2;
    if (i == len)
        return "a wildcard needs a domain after \"*.\"";
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0)
                return "empty label";
            label = 0;
            continue;
        }
        if (c == '*')
            return "\"*\" is allowed only as a leading \"*.\"";
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
            return "expected letters, digits, '-' and '.'";
        if (++label > 63)
            return "label longer than 63 characters";
    }
    if (label == 0)
        return "empty label";
    return NULL;
}

const char *tp_cfg_check_path(const char *s, size_t len, bool allow_query)
{
    size_t end = len;

    if (len == 0 || s[0] != '/')
        return "must start with /";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return "only visible ASCII is allowed; percent-encode other bytes";
        if (c == '#')
            return "'#' is not allowed";
        if (c == '?') {
            if (!allow_query)
                return "'?' is not allowed: routes match the path without the query";
            if (end == len)
                end = i;
        }
    }
    /* Dot segments: requests with them are refused with 400 (docs/reference.md), so a
     * route path with one could never match. */
    for (size_t i = 0; i < end;) {
        size_t j = i + 1;
        while (j < end && s[j] != '/')
            j++;
        size_t seg = j - i - 1;
        if ((seg == 1 && s[i + 1] == '.') || (seg == 2 && s[i + 1] == '.' && s[i + 2] == '.'))
            return "'.' and '..' segments are not allowed";
        i = j;
    }
    return NULL;
}

int tp_cfg_method(const char *s, size_t len)
{
    static const struct {
        int num;
        const char *name;
    } methods[] = {
#define TP_METHOD_ENTRY(num, name, string) {num, #string},
        HTTP_METHOD_MAP(TP_METHOD_ENTRY)
#undef TP_METHOD_ENTRY
    };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (strlen(methods[i].name) == len && memcmp(methods[i].name, s, len) == 0)
            return methods[i].num;
    return -1;
}

void tp_cfg_quote(char *out, size_t outsz, const char *s, size_t len)
{
    size_t o = 0;

    /* Room for the longest escape, the "..." and the NUL. */
    if (outsz < 16) {
        if (outsz)
            out[0] = '\0';
        return;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= outsz || i >= 60) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c >= 0x20 && c < 0x7f) {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, outsz - o, "\\x%02x", c);
        }
    }
    out[o] = '\0';
}
