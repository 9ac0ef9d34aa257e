/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the router (src/policy/router.c) against docs/reference.md "Route
 * selection": every ordering rule on small hand-made tables, host
 * normalization, weighted split picks, a 10,000-route table checked against
 * expectations known by construction and against a brute-force reference
 * matcher written from docs/reference.md, and 4 threads sharing one router (this
 * directory also runs under TSan).
 *
 * The YAML loader is written elsewhere, so tables are built by hand: a
 * compact row per route (host, path, methods, headers) becomes a struct
 * tp_cfg_route. Single-threaded except test_concurrent().
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include <turnpike/config.h>
#include <turnpike/err.h>
#include <turnpike/router.h>

#include "policy/router_int.h"
#include "tap.h"

/* ------------------------------------------------------------------------ */
/* tables from compact rows                                                  */

/*
 * One route: <path> "=/x" is `path: /x` (exact), "/x" is `path_prefix: /x`,
 * NULL is the default prefix "/". <methods> "GET,POST" or NULL (any).
 * <hdrs> "name=value;name=value" or NULL.
 */
struct rdef {
    const char *host;
    const char *path;
    const char *methods;
    const char *hdrs;
};

struct tbl {
    struct tp_config cfg;
    struct tp_router *r;
    char **strs; /* everything strdup'ed for the routes, freed with the table */
    size_t n_strs, cap_strs;
};

static char *keep(struct tbl *t, const char *s, size_t n)
{
    if (t->n_strs == t->cap_strs) {
        t->cap_strs = t->cap_strs ? 2 * t->cap_strs : 64;
        t->strs = realloc(t->strs, t->cap_strs * sizeof(*t->strs));
    }
    char *d = malloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    t->strs[t->n_strs++] = d;
    return d;
}

static const struct {
    const char *name;
    unsigned num;
} methods_tab[] = {
    {"DELETE", HTTP_DELETE}, {"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},   {"POST", HTTP_POST},
    {"PUT", HTTP_PUT},       {"OPTIONS", HTTP_OPTIONS}, {"PATCH", HTTP_PATCH},
};

static unsigned method_num(const char *name, size_t n)
{
    for (size_t i = 0; i < TP_ARRAY_SIZE(methods_tab); i++)
        if (strlen(methods_tab[i].name) == n && memcmp(methods_tab[i].name, name, n) == 0)
            return methods_tab[i].num;
    fprintf(stderr, "test bug: unknown method %.*s\n", (int)n, name);
    abort();
}

static uint64_t parse_methods(const char *s)
{
    uint64_t m = 0;
    while (s && *s) {
        size_t n = strcspn(s, ",");
        m |= 1ull << method_num(s, n);
        s += n + (s[n] == ',');
    }
    return m;
}

/* Fills cfg route <cr> from <d>. */
static void fill_route(struct tbl *t, struct tp_cfg_route *cr, const struct rdef *d)
{
    memset(cr, 0, sizeof(*cr));
    cr->host = d->host ? keep(t, d->host, strlen(d->host)) : NULL;
    const char *p = d->path ? d->path : "/";
    cr->path_exact = p[0] == '=';
    p += cr->path_exact;
    cr->path = keep(t, p, strlen(p));
    cr->methods = parse_methods(d->methods);
    cr->upstream = 0;
    if (d->hdrs) {
        size_t n = 1;
        for (const char *c = d->hdrs; *c; c++)
            n += *c == ';';
        cr->headers = calloc(n, sizeof(*cr->headers));
        const char *s = d->hdrs;
        for (size_t i = 0; i < n; i++) {
            size_t len = strcspn(s, ";"), eq = strcspn(s, "=");
            struct tp_header_kv *kv = &cr->headers[i];
            kv->name = keep(t, s, eq);
            kv->name_len = eq;
            kv->value = keep(t, s + eq + 1, len - eq - 1);
            kv->value_len = len - eq - 1;
            s += len + (s[len] == ';');
        }
        cr->n_headers = n;
    }
}

static struct tbl *tbl_new(size_t n)
{
    struct tbl *t = calloc(1, sizeof(*t));
    t->cfg.routes = calloc(n ? n : 1, sizeof(*t->cfg.routes));
    t->cfg.n_routes = n;
    return t;
}

/* Builds the router with targets[i] = (void *)(i + 1). Returns the create error. */
static int tbl_build(struct tbl *t)
{
    void **targets = malloc((t->cfg.n_routes + 1) * sizeof(*targets));
    for (size_t i = 0; i < t->cfg.n_routes; i++)
        targets[i] = (void *)(uintptr_t)(i + 1);
    int err = 1;
    t->r = tp_router_create(&t->cfg, targets, &err);
    free(targets);
    return err;
}

static struct tbl *tbl_make(const struct rdef *defs, size_t n)
{
    struct tbl *t = tbl_new(n);
    for (size_t i = 0; i < n; i++)
        fill_route(t, &t->cfg.routes[i], &defs[i]);
    int err = tbl_build(t);
    if (!t->r) {
        fprintf(stderr, "test bug: router create failed: %d\n", err);
        abort();
    }
    return t;
}

static void tbl_free(struct tbl *t)
{
    tp_router_destroy(t->r);
    for (size_t i = 0; i < t->cfg.n_routes; i++)
        free(t->cfg.routes[i].headers);
    for (size_t i = 0; i < t->n_strs; i++)
        free(t->strs[i]);
    free(t->strs);
    free(t->cfg.routes);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* requests                                                                  */

struct hreq {
    const char *hdrs; /* "Name: value\n..." as a client sent them; NULL = none */
    int upper_names;  /* the router asked for a name that is not lowercase */
};

/* Accessor as the data plane provides it: first header whose name equals
 * <name> ignoring case. Also records whether the router kept its promise of
 * lowercase names. */
static const char *hdr_get(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    struct hreq *h = ctx;
    for (size_t i = 0; i < name_len; i++)
        if (name[i] >= 'A' && name[i] <= 'Z')
            h->upper_names++;
    for (const char *s = h->hdrs; s && *s;) {
        size_t line = strcspn(s, "\n"), colon = strcspn(s, ":");
        if (colon < line && colon == name_len && strncasecmp(s, name, name_len) == 0) {
            const char *v = s + colon + 1;
            while (*v == ' ')
                v++;
            *value_len = (size_t)(s + line - v);
            return v;
        }
        s += line + (s[line] == '\n');
    }
    return NULL;
}

/* Route index chosen for the request, or -1. <host> NULL = no Host. The
 * host and path are copied to heap buffers of their exact size, unterminated,
 * so that ASan catches a read past either (the router loads 8 bytes at a
 * time). */
static long look_m(const struct tbl *t, unsigned method, const char *host, const char *path, const char *hdrs)
{
    struct hreq h = {.hdrs = hdrs};
    size_t hl = host ? strlen(host) : 0, pl = strlen(path);
    char *hcopy = host ? malloc(hl ? hl : 1) : NULL, *pcopy = malloc(pl ? pl : 1);
    if (hcopy)
        memcpy(hcopy, host, hl);
    memcpy(pcopy, path, pl);
    struct tp_route_req req = {
        .method = method,
        .host = hcopy,
        .host_len = hl,
        .path = pcopy,
        .path_len = pl,
        .header = hdr_get,
        .header_ctx = &h,
    };
    size_t idx = 12345;
    void *target = tp_router_lookup(t->r, &req, &idx);
    free(hcopy);
    free(pcopy);
    /* the target and the index must agree, and names must come lowercase */
    if (target ? (uintptr_t)target != idx + 1 : idx != (size_t)-1)
        return -100;
    if (h.upper_names)
        return -200;
    return target ? (long)idx : -1;
}

static long look(const struct tbl *t, const char *method, const char *host, const char *path,
                 const char *hdrs)
{
    return look_m(t, method_num(method, strlen(method)), host, path, hdrs);
}

/* ------------------------------------------------------------------------ */
/* ordering rules, one table each                                            */

static void test_host_order(void)
{
    /* exact host before wildcard, whatever the file order */
    static const struct rdef d1[] = {
        {"*.example.com", "/", NULL, NULL},
        {"api.example.com", "/", NULL, NULL},
    };
    struct tbl *t = tbl_make(d1, 2);
    is_int(look(t, "GET", "api.example.com", "/x", NULL), 1, "exact host before wildcard");
    is_int(look(t, "GET", "www.example.com", "/x", NULL), 0, "other names take the wildcard");
    tbl_free(t);

    /* longer wildcard suffix first */
    static const struct rdef d2[] = {
        {"*.example.com", "/", NULL, NULL},
        {"*.api.example.com", "/", NULL, NULL},
    };
    t = tbl_make(d2, 2);
    is_int(look(t, "GET", "a.api.example.com", "/", NULL), 1, "longer wildcard first");
    is_int(look(t, "GET", "x.a.api.example.com", "/", NULL), 1, "longer wildcard, deeper name");
    is_int(look(t, "GET", "api.example.com", "/", NULL), 0,
           "*.api.example.com does not match api.example.com");
    is_int(look(t, "GET", "a.example.com", "/", NULL), 0, "shorter wildcard for the rest");
    tbl_free(t);

    /* wildcard before any host */
    static const struct rdef d3[] = {
        {NULL, "/", NULL, NULL},
        {"*.example.com", "/", NULL, NULL},
    };
    t = tbl_make(d3, 2);
    is_int(look(t, "GET", "a.example.com", "/", NULL), 1, "wildcard before any host");
    is_int(look(t, "GET", "other.org", "/", NULL), 0, "any host for other names");
    is_int(look(t, "GET", "example.com", "/", NULL), 0, "*.example.com does not match example.com");
    is_int(look(t, "GET", "a.b.example.com", "/", NULL), 1, "*.example.com matches a.b.example.com");
    is_int(look(t, "GET", "aexample.com", "/", NULL), 0, "*.example.com needs the dot");
    tbl_free(t);

    /* host precedence beats path precedence: a longer path on a less specific
     * host loses to "/" on the exact host */
    static const struct rdef d4[] = {
        {NULL, "=/users/7", NULL, NULL},
        {"*.example.com", "/users", NULL, NULL},
        {"api.example.com", "/", NULL, NULL},
    };
    t = tbl_make(d4, 3);
    is_int(look(t, "GET", "api.example.com", "/users/7", NULL), 2, "host first, then path");
    is_int(look(t, "GET", "b.example.com", "/users/7", NULL), 1, "wildcard prefix before any-host exact");
    is_int(look(t, "GET", "b.example.org", "/users/7", NULL), 0, "any-host exact path");
    tbl_free(t);
}

static void test_host_forms(void)
{
    static const struct rdef d[] = {
        {"api.example.com", "/", NULL, NULL}, {"*.example.com", "/", NULL, NULL}, {"[::1]", "/", NULL, NULL},
        {"127.0.0.1", "/", NULL, NULL},       {NULL, "/any", NULL, NULL},
    };
    struct tbl *t = tbl_make(d, TP_ARRAY_SIZE(d));
    is_int(look(t, "GET", "API.Example.COM", "/", NULL), 0, "host compare ignores case");
    is_int(look(t, "GET", "api.example.com:8443", "/", NULL), 0, "host compare ignores the port");
    is_int(look(t, "GET", "Api.Example.Com.:80", "/", NULL), 0, "trailing dot and port dropped");
    is_int(look(t, "GET", "WWW.EXAMPLE.COM:1", "/", NULL), 1, "wildcard ignores case and port");
    is_int(look(t, "GET", "[::1]:8080", "/", NULL), 2, "IPv6 literal with port");
    is_int(look(t, "GET", "127.0.0.1:80", "/", NULL), 3, "IPv4 with port");
    /* an invalid or missing Host only reaches any-host routes */
    is_int(look(t, "GET", NULL, "/any", NULL), 4, "no Host: any-host route");
    is_int(look(t, "GET", NULL, "/", NULL), -1, "no Host: named hosts unreachable");
    is_int(look(t, "GET", "api example.com", "/any", NULL), 4, "invalid Host: any-host route");
    is_int(look(t, "GET", "api.example.com:x", "/", NULL), -1, "bad port: invalid Host");
    is_int(look(t, "GET", "", "/", NULL), -1, "empty Host: invalid");
    is_int(look(t, "GET", "api.example.com..", "/", NULL), -1, "two trailing dots: invalid");
    tbl_free(t);
}

static void test_path_order(void)
{
    static const struct rdef d[] = {
        {NULL, "/", NULL, NULL},              /* 0 */
        {NULL, "/users", NULL, NULL},         /* 1 */
        {NULL, "=/users", NULL, NULL},        /* 2 */
        {NULL, "/users/admin", NULL, NULL},   /* 3 */
        {NULL, "/users/", NULL, NULL},        /* 4 */
        {NULL, "=/users/", NULL, NULL},       /* 5 */
        {NULL, "=/", NULL, NULL},             /* 6 */
        {NULL, "/users/admin/x", NULL, NULL}, /* 7 */
    };
    struct tbl *t = tbl_make(d, TP_ARRAY_SIZE(d));
    is_int(look(t, "GET", "h", "/users", NULL), 2, "exact before prefix");
    is_int(look(t, "GET", "h", "/users/", NULL), 5, "exact /users/ for /users/");
    is_int(look(t, "GET", "h", "/users/7", NULL), 4, "prefix /users/ is longer than /users");
    is_int(look(t, "GET", "h", "/users/admin", NULL), 3, "longer prefix first");
    is_int(look(t, "GET", "h", "/users/admin/", NULL), 3, "/users/admin matches /users/admin/");
    is_int(look(t, "GET", "h", "/users/admin/x/y", NULL), 7, "deepest prefix first");
    is_int(look(t, "GET", "h", "/users/admin/xy", NULL), 3, "segment boundary one level up");
    is_int(look(t, "GET", "h", "/users/adminx", NULL), 4, "/users/adminx not under /users/admin");
    is_int(look(t, "GET", "h", "/usersx", NULL), 0, "/usersx not under /users");
    is_int(look(t, "GET", "h", "/", NULL), 6, "exact / before prefix /");
    is_int(look(t, "GET", "h", "/other", NULL), 0, "prefix / matches everything");
    is_int(look(t, "GET", "h", "", NULL), 6, "empty path is /");
    is_int(look(t, "GET", "h", "*", NULL), -1, "a target not starting with / matches nothing");
    tbl_free(t);

    /* the plain list at a node the path ends on, without exact routes there */
    static const struct rdef d2[] = {
        {NULL, "/users/", NULL, NULL},  /* 0 */
        {NULL, "/users", NULL, NULL},   /* 1 */
        {NULL, "=/users/", NULL, NULL}, /* 2 */
    };
    t = tbl_make(d2, 3);
    is_int(look(t, "GET", "h", "/users", NULL), 1, "/users/ does not match /users");
    is_int(look(t, "GET", "h", "/users/", NULL), 2, "exact /users/");
    is_int(look(t, "GET", "h", "/users/x", NULL), 0, "trailing-slash prefix");
    is_int(look(t, "GET", "h", "/users//", NULL), 0, "trailing-slash prefix, empty segment");
    tbl_free(t);

    /* exact matches only itself */
    static const struct rdef d3[] = {
        {NULL, "=/users", NULL, NULL},
    };
    t = tbl_make(d3, 1);
    is_int(look(t, "GET", "h", "/users", NULL), 0, "exact /users");
    is_int(look(t, "GET", "h", "/users/", NULL), -1, "exact /users does not match /users/");
    is_int(look(t, "GET", "h", "/users/7", NULL), -1, "exact /users does not match /users/7");
    is_int(look(t, "GET", "h", "/user", NULL), -1, "exact /users does not match /user");
    tbl_free(t);
}

static void test_raw_paths(void)
{
    static const struct rdef d[] = {
        {NULL, "/a/b", NULL, NULL},    /* 0 */
        {NULL, "=/a%2Fb", NULL, NULL}, /* 1 */
        {NULL, "/a", NULL, NULL},      /* 2 */
        {NULL, "/a/", NULL, NULL},     /* 3 */
        {NULL, "/x%20y", NULL, NULL},  /* 4 */
        {NULL, "/", NULL, NULL},       /* 5 */
    };
    struct tbl *t = tbl_make(d, TP_ARRAY_SIZE(d));
    is_int(look(t, "GET", "h", "/a%2Fb", NULL), 1, "percent-encoded path matches its exact route");
    is_int(look(t, "GET", "h", "/a%2fb", NULL), 5, "escapes compare as bytes (%%2f is not %%2F)");
    is_int(look(t, "GET", "h", "/a%2Fb/c", NULL), 5, "/a%%2Fb/c is not under /a/b nor /a");
    is_int(look(t, "GET", "h", "/a/b/c", NULL), 0, "unencoded path under /a/b");
    is_int(look(t, "GET", "h", "/x%20y/z", NULL), 4, "prefix with an escape");
    is_int(look(t, "GET", "h", "/x y", NULL), 5, "not decoded either way");
    /* empty segments are segments: "//" is not collapsed */
    is_int(look(t, "GET", "h", "/a//b", NULL), 3, "/a//b is not under /a/b, is under /a/");
    is_int(look(t, "GET", "h", "//a/b", NULL), 5, "//a/b is not under /a");
    is_int(look(t, "GET", "h", "/a/b//", NULL), 0, "/a/b// is under /a/b");
    /* the caller hands the path up to '?' */
    struct hreq h = {0};
    const char *target = "/a/b?x=/a%2Fb";
    struct tp_route_req req = {.method = HTTP_GET,
                               .path = target,
                               .path_len = strcspn(target, "?"),
                               .header = hdr_get,
                               .header_ctx = &h};
    size_t idx = 99;
    tp_router_lookup(t->r, &req, &idx);
    is_int((long)idx, 0, "query removed by the caller is ignored");
    tbl_free(t);

    /* exact "/" and prefix "/" with empty segments */
    static const struct rdef d2[] = {
        {NULL, "=/", NULL, NULL},
        {NULL, "=//", NULL, NULL},
    };
    t = tbl_make(d2, 2);
    is_int(look(t, "GET", "h", "/", NULL), 0, "exact /");
    is_int(look(t, "GET", "h", "//", NULL), 1, "exact // is its own path");
    is_int(look(t, "GET", "h", "///", NULL), -1, "/// matches neither");
    tbl_free(t);
}

static void test_filters(void)
{
    /* file order among equally specific routes */
    static const struct rdef d1[] = {
        {NULL, "/a", "GET", NULL},  /* 0 */
        {NULL, "/a", NULL, NULL},   /* 1 */
        {NULL, "/a", "POST", NULL}, /* 2 */
        {NULL, "/a", NULL, NULL},   /* 3 */
    };
    struct tbl *t = tbl_make(d1, 4);
    is_int(look(t, "GET", "h", "/a", NULL), 0, "first in file order");
    is_int(look(t, "POST", "h", "/a", NULL), 1, "file order: methods any before a later POST");
    is_int(look(t, "DELETE", "h", "/a/x", NULL), 1, "file order for other methods");
    tbl_free(t);

    /* fall through to a less specific route when methods or headers do not match */
    static const struct rdef d2[] = {
        {"api.example.com", "=/users", "POST", NULL},         /* 0 */
        {"api.example.com", "/users", NULL, "x-canary=true"}, /* 1 */
        {"*.example.com", "/users", "GET,HEAD", NULL},        /* 2 */
        {NULL, "/", "GET", NULL},                             /* 3 */
        {NULL, "/", NULL, "X-Tenant=a;x-canary=true"},        /* 4 */
    };
    t = tbl_make(d2, TP_ARRAY_SIZE(d2));
    is_int(look(t, "POST", "api.example.com", "/users", NULL), 0, "exact host, exact path, method");
    is_int(look(t, "GET", "api.example.com", "/users", "x-canary: true\n"), 1,
           "exact path method miss -> prefix");
    is_int(look(t, "GET", "api.example.com", "/users", NULL), 2, "header miss -> wildcard host");
    is_int(look(t, "HEAD", "api.example.com", "/users/1", "x-canary: false\n"), 2, "header value differs");
    is_int(look(t, "PUT", "api.example.com", "/users", NULL), -1, "only the method differs: no route (404)");
    is_int(look(t, "GET", "api.example.com", "/other", NULL), 3, "path miss -> any host");
    is_int(look(t, "PUT", "x.org", "/", "X-CANARY: true\nx-tenant: a\n"), 4, "all headers, names any case");
    is_int(look(t, "PUT", "x.org", "/", "x-canary: true\n"), -1, "one header missing");
    is_int(look(t, "PUT", "x.org", "/", "x-canary: True\nx-tenant: a\n"), -1, "values compare exactly");
    is_int(look(t, "PUT", "x.org", "/", "x-canary: true\nx-tenant: a \n"), -1, "no trimming of values here");
    is_int(look(t, "PUT", "api.example.com", "/users", "x-canary: true\n"), 1,
           "headers on the more specific route");
    is_int(look_m(t, 70, "x.org", "/", "x-canary: true\nx-tenant: a\n"), 4,
           "unknown method number: any-method routes");
    is_int(look_m(t, 70, "x.org", "/", NULL), -1, "unknown method number: not in a mask");

    /* no header accessor: header routes never match */
    struct tp_route_req req = {
        .method = HTTP_PUT, .host = "x.org", .host_len = 5, .path = "/", .path_len = 1};
    size_t idx = 0;
    ok(tp_router_lookup(t->r, &req, &idx) == NULL && idx == (size_t)-1,
       "NULL accessor: header routes skipped");
    tbl_free(t);
}

/* The examples table of docs/routing.md, so the documentation cannot drift. */
static void test_doc_examples(void)
{
    static const struct rdef d[] = {
        {"api.example.com", "=/users", "POST", NULL},         /* r0 */
        {"api.example.com", "/users", NULL, "x-canary=true"}, /* r1 */
        {"*.example.com", "/users", "GET,HEAD", NULL},        /* r2 */
        {NULL, "/", "GET", NULL},                             /* r3 */
        {NULL, "/static/", NULL, NULL},                       /* r4 */
    };
    struct tbl *t = tbl_make(d, TP_ARRAY_SIZE(d));
    is_int(look(t, "POST", "api.example.com", "/users", NULL), 0, "doc: exact host, exact path");
    is_int(look(t, "GET", "API.example.com:443", "/users", "x-canary: true\n"), 1,
           "doc: method differs, prefix");
    is_int(look(t, "GET", "api.example.com", "/users/7", NULL), 2, "doc: header missing, wildcard");
    is_int(look(t, "PUT", "api.example.com", "/users", NULL), -1, "doc: 404");
    is_int(look(t, "GET", "www.example.com", "/usersx", NULL), 3, "doc: /usersx not under /users");
    is_int(look(t, "GET", "other.org", "/static/app.js", NULL), 4, "doc: longer prefix");
    is_int(look(t, "GET", "other.org", "/static", NULL), 3, "doc: /static/ needs one more segment");
    is_int(look(t, "GET", "example.com", "/users", NULL), 3, "doc: wildcard not the apex");
    is_int(look(t, "GET", "bad host", "/x", NULL), 3, "doc: invalid Host, any host");
    tbl_free(t);
}

static void test_create(void)
{
    /* targets NULL: lookup returns the config route itself */
    static const struct rdef d[] = {{NULL, "/a", NULL, NULL}, {NULL, "/b", NULL, NULL}};
    struct tbl *t = tbl_new(2);
    for (size_t i = 0; i < 2; i++)
        fill_route(t, &t->cfg.routes[i], &d[i]);
    int err = 1;
    t->r = tp_router_create(&t->cfg, NULL, &err);
    ok(t->r && err == 0, "create with NULL targets");
    struct tp_route_req req = {.method = HTTP_GET, .path = "/b/c", .path_len = 4};
    ok(tp_router_lookup(t->r, &req, NULL) == &t->cfg.routes[1], "NULL targets: returns &cfg->routes[i]");
    tbl_free(t);

    /* an empty table routes nothing */
    t = tbl_new(0);
    is_int(tbl_build(t), 0, "empty table builds");
    is_int(look(t, "GET", "h", "/", NULL), -1, "empty table: no route");
    tbl_free(t);

    /* invalid hosts and paths are refused, not silently unreachable */
    static const struct rdef bad[] = {
        {"*.", "/", NULL, NULL},
        {"exa mple.com", "/", NULL, NULL},
        {"example.com:80", "/", NULL, NULL},
        {"*.example.com:80", "/", NULL, NULL},
        {"a..b", "/", NULL, NULL},
        {NULL, "users", NULL, NULL},
        {NULL, "=", NULL, NULL},
        {"[::1", "/", NULL, NULL},
        {"*", "/", NULL, NULL},
    };
    for (size_t i = 0; i < TP_ARRAY_SIZE(bad); i++) {
        t = tbl_new(1);
        fill_route(t, &t->cfg.routes[0], &bad[i]);
        err = 0;
        int rc = tbl_build(t);
        ok(!t->r && rc == -EINVAL, "refused: host %s path %s", bad[i].host ? bad[i].host : "(any)",
           bad[i].path);
        tbl_free(t);
    }

    /* config hosts are normalized like request hosts */
    static const struct rdef d2[] = {{"API.Example.com.", "/", NULL, NULL},
                                     {"*.Example.COM", "/w", NULL, NULL}};
    t = tbl_make(d2, 2);
    is_int(look(t, "GET", "api.example.com", "/", NULL), 0, "configured host lowercased, dot dropped");
    is_int(look(t, "GET", "a.example.com", "/w", NULL), 1, "configured wildcard lowercased");
    tbl_free(t);
}

/* ------------------------------------------------------------------------ */
/* host normalization                                                        */

static void norm_is(const char *in, size_t len, const char *want, const char *what)
{
    char out[256];
    memset(out, 'Z', sizeof(out));
    int n = tp_router_host_normalize(in, len, out, sizeof(out));
    if (!want) {
        is_int(n, -1, "normalize %s: invalid", what);
        return;
    }
    ok(n == (int)strlen(want) && memcmp(out, want, strlen(want)) == 0 && out[n] == '\0', "normalize %s -> %s",
       what, want);
    if (n != (int)strlen(want))
        tap_diag("got %d", n);
}

static void test_normalize(void)
{
#define NORM(in, want) norm_is(in, strlen(in), want, "\"" in "\"")
    NORM("example.com", "example.com");
    NORM("example.com:8080", "example.com");
    NORM("example.com:", "example.com");
    NORM("EXAMPLE.com.", "example.com");
    NORM("EXAMPLE.com.:443", "example.com");
    NORM("[::1]:80", "[::1]");
    NORM("[::1]", "[::1]");
    NORM("[FE80::AbC:1.2.3.4]:8080", "[fe80::abc:1.2.3.4]");
    NORM("127.0.0.1:8080", "127.0.0.1");
    NORM("my_host-1", "my_host-1");
    NORM("", NULL);
    NORM(":80", NULL);
    NORM(".", NULL);
    NORM("..", NULL);
    NORM(".example.com", NULL);
    NORM("a..b", NULL);
    NORM("a..", NULL);
    NORM("exa mple.com", NULL);
    NORM("ex\x80mple.com", NULL);
    NORM("ex%41mple.com", NULL);
    NORM("a:b", NULL);
    NORM("a:123456", NULL);
    NORM("a:80:80", NULL);
    NORM("::1", NULL);
    NORM("[::1", NULL);
    NORM("[]", NULL);
    NORM("[::1]x", NULL);
    NORM("[::1]:8x", NULL);
    NORM("[::g]", NULL);
    NORM("[fe80::1%25eth0]", NULL);
#undef NORM
    norm_is("a\0b", 3, NULL, "embedded NUL");

    char big[300], out[300];
    memset(big, 'a', sizeof(big));
    is_int(tp_router_host_normalize(big, 255, out, 255), 255, "255-byte host fits a 255-byte buffer");
    is_int(tp_router_host_normalize(big, 256, out, sizeof(out)), -1, "256-byte host is too long");
    big[255] = '.';
    is_int(tp_router_host_normalize(big, 256, out, sizeof(out)), 255, "255 bytes plus the trailing dot");
    /* names that fill <out> exactly: what follows decides */
    memset(big, 'A', sizeof(big));
    memcpy(big + 255, ".:80", 4);
    is_int(tp_router_host_normalize(big, 259, out, 255), 255, "full buffer, trailing dot and port");
    ok(out[0] == 'a' && out[254] == 'a', "full buffer lowercased");
    is_int(tp_router_host_normalize(big + 4, 255, out, 251), 251,
           "full 251-byte buffer, trailing dot and port");
    is_int(tp_router_host_normalize(big, 256, out, 255), 255, "full buffer, trailing dot only");
    memcpy(big + 255, ":80", 3);
    is_int(tp_router_host_normalize(big, 258, out, 255), 255, "full buffer, port");
    memcpy(big + 254, "..", 2);
    is_int(tp_router_host_normalize(big, 256, out, 255), -1, "full buffer, two trailing dots");
    memcpy(big + 254, "ab", 2);
    is_int(tp_router_host_normalize(big, 256, out, 255), -1, "one byte more than the buffer");
    is_int(tp_router_host_normalize("example.com", 11, out, 5), -1, "output capacity respected");
    is_int(tp_router_host_normalize(NULL, 0, out, sizeof(out)), -1, "NULL host");
}

/* ------------------------------------------------------------------------ */
/* split                                                                     */

static void split_sweep(const uint32_t *w, size_t n, const char *what)
{
    struct tp_cfg_split sp[8];
    uint64_t sum = 0, cnt[8] = {0};
    const uint64_t per = 7; /* samples per unit of weight */
    for (size_t i = 0; i < n; i++) {
        sp[i] = (struct tp_cfg_split){.upstream = i, .weight = w[i]};
        sum += w[i];
    }
    /* rnd_j = ceil(j * 2^32 / N), N = sum * per: the j evenly cover [0, 2^32),
     * so each arm must get exactly weight * per of them */
    uint64_t total = sum * per;
    for (uint64_t j = 0; j < total; j++) {
        uint32_t rnd = (uint32_t)(((j << 32) + total - 1) / total);
        size_t a = tp_router_split_pick(sp, n, rnd);
        if (a < n)
            cnt[a]++;
    }
    bool exact = true;
    for (size_t i = 0; i < n; i++)
        if (cnt[i] != w[i] * per) {
            exact = false;
            tap_diag("arm %zu: %" PRIu64 " picks, want %" PRIu64, i, cnt[i], w[i] * per);
        }
    ok(exact, "split %s: exact proportions over a sweep", what);
}

static void test_split(void)
{
    split_sweep((const uint32_t[]){90, 10}, 2, "90/10");
    split_sweep((const uint32_t[]){1, 1, 1}, 3, "1/1/1");
    split_sweep((const uint32_t[]){0, 5, 0, 3, 0}, 5, "with zero weights");
    split_sweep((const uint32_t[]){1000, 1, 999, 0, 1000, 7, 3, 1000}, 8, "8 arms up to 1000");
    split_sweep((const uint32_t[]){1000}, 1, "single arm");

    struct tp_cfg_split sp[4] = {{.weight = 0}, {.weight = 5}, {.weight = 3}, {.weight = 0}};
    is_int(tp_router_split_pick(sp, 4, 0), 1, "rnd 0: first weighted arm");
    is_int(tp_router_split_pick(sp, 4, UINT32_MAX), 2, "rnd max: last weighted arm");
    is_int(tp_router_split_pick(sp, 4, (uint32_t)((5ull << 32) / 8)), 2, "boundary 5/8 belongs to arm 2");
    is_int(tp_router_split_pick(sp, 4, (uint32_t)((5ull << 32) / 8) - 1), 1, "just below 5/8 is arm 1");
    uint64_t x = 0x9e3779b97f4a7c15ull;
    int zero_picked = 0;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t a = tp_router_split_pick(sp, 4, (uint32_t)(x >> 32));
        zero_picked += a == 0 || a == 3;
    }
    is_int(zero_picked, 0, "weight 0 never chosen over random draws");
}

/* ------------------------------------------------------------------------ */
/* the 10,000-route table                                                    */

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64*: deterministic, good enough to pick table rows */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint32_t rnd_below(uint32_t n)
{
    return (uint32_t)(rng() % n);
}

#define N_EXACT_HOSTS 20
#define N_WILD_HOSTS  10
#define N_HOSTKEYS    (N_EXACT_HOSTS + N_WILD_HOSTS + 1) /* + any host */
#define N_PATHS       300
#define N_STRUCT      (N_HOSTKEYS * N_PATHS) /* 9,300 routes known by construction */
#define N_BIG         10000

/* Host key k of the structured part, as configured. */
static void hostkey_name(int k, char *buf, size_t cap)
{
    if (k < N_EXACT_HOSTS)
        snprintf(buf, cap, "h%d.example.com", k);
    else if (k < N_EXACT_HOSTS + N_WILD_HOSTS)
        snprintf(buf, cap, "*.w%d.example.com", k - N_EXACT_HOSTS);
    else
        buf[0] = '\0';
}

/* A request host for host key k, in an awkward but equivalent spelling. */
static void hostkey_req(int k, char *buf, size_t cap)
{
    if (k < N_EXACT_HOSTS)
        snprintf(buf, cap, "H%d.Example.COM:8080", k);
    else if (k < N_EXACT_HOSTS + N_WILD_HOSTS)
        snprintf(buf, cap, "Zz%d.W%d.example.com.", k, k - N_EXACT_HOSTS);
    else
        snprintf(buf, cap, "unknown.test");
}

/*
 * Route of the structured part for host key k, path p: p % 4 picks
 *   0: prefix /svc<p>/v1/items     1: exact /svc<p>/v1/items/<p>
 *   2: prefix /svc<p>/v2/          3: exact /svc<p>
 * Each (host key, path) is unique, so requests built for it have one answer.
 */
static void struct_path(int p, char *buf, size_t cap)
{
    switch (p % 4) {
    case 0:
        snprintf(buf, cap, "/svc%d/v1/items", p);
        break;
    case 1:
        snprintf(buf, cap, "=/svc%d/v1/items/%d", p, p);
        break;
    case 2:
        snprintf(buf, cap, "/svc%d/v2/", p);
        break;
    default:
        snprintf(buf, cap, "=/svc%d", p);
        break;
    }
}

static const char *const noise_hdrs[] = {
    "x-canary=true", "x-canary=false", "x-tenant=t0", "x-tenant=t1", "x-canary=true;x-tenant=t2",
    "X-Tenant=t3",
};
static const char *const noise_methods[] = {"GET", "POST", "GET,HEAD", "PUT,DELETE", "PATCH", "GET,POST,PUT"};

/*
 * Noise routes after the structured part: extra wildcards (longer and
 * shorter), filters, "/" routes, and the /n/<k> level with 20 children
 * (binary searched). Their paths never start with /svc, except "/" ones.
 */
static void noise_route(struct rdef *d, char *hbuf, size_t hcap, char *pbuf, size_t pcap)
{
    uint32_t h = rnd_below(100);
    if (h < 30)
        snprintf(hbuf, hcap, "h%u.example.com", rnd_below(N_EXACT_HOSTS));
    else if (h < 45)
        snprintf(hbuf, hcap, "*.w%u.example.com", rnd_below(N_WILD_HOSTS));
    else if (h < 60)
        snprintf(hbuf, hcap, "*.a.w%u.example.com", rnd_below(N_WILD_HOSTS));
    else if (h < 65)
        snprintf(hbuf, hcap, "*.example.com");
    else if (h < 70)
        snprintf(hbuf, hcap, "*.b.a.w%u.example.com", rnd_below(3));
    else
        hbuf[0] = '\0';
    d->host = hbuf[0] ? hbuf : NULL;

    uint32_t p = rnd_below(100), k = rnd_below(20);
    if (p < 8)
        snprintf(pbuf, pcap, "/");
    else if (p < 12)
        snprintf(pbuf, pcap, "=/");
    else if (p < 30)
        snprintf(pbuf, pcap, "/n");
    else if (p < 50)
        snprintf(pbuf, pcap, "/n/%u", k);
    else if (p < 65)
        snprintf(pbuf, pcap, "/n/%u/", k);
    else if (p < 85)
        snprintf(pbuf, pcap, "=/n/%u/x", k);
    else if (p < 90)
        snprintf(pbuf, pcap, "=/n/%u/", k);
    else
        snprintf(pbuf, pcap, "/n//%u", k);
    d->path = pbuf;

    d->methods = rnd_below(100) < 40 ? noise_methods[rnd_below(TP_ARRAY_SIZE(noise_methods))] : NULL;
    d->hdrs = rnd_below(100) < 30 ? noise_hdrs[rnd_below(TP_ARRAY_SIZE(noise_hdrs))] : NULL;
    /* an unfiltered catch-all would answer every request: keep some misses */
    if (!d->host && !d->methods && !d->hdrs && p < 8)
        d->methods = noise_methods[rnd_below(TP_ARRAY_SIZE(noise_methods))];
}

static struct tbl *big_table(void)
{
    struct tbl *t = tbl_new(N_BIG);
    char hbuf[64], pbuf[64];
    size_t i = 0;
    for (int k = 0; k < N_HOSTKEYS; k++) {
        for (int p = 0; p < N_PATHS; p++, i++) {
            hostkey_name(k, hbuf, sizeof(hbuf));
            struct_path(p, pbuf, sizeof(pbuf));
            struct rdef d = {hbuf[0] ? hbuf : NULL, pbuf, NULL, NULL};
            fill_route(t, &t->cfg.routes[i], &d);
        }
    }
    rng_state = 0x1234567887654321ull;
    for (; i < N_BIG; i++) {
        struct rdef d;
        noise_route(&d, hbuf, sizeof(hbuf), pbuf, sizeof(pbuf));
        fill_route(t, &t->cfg.routes[i], &d);
    }
    int err = tbl_build(t);
    if (!t->r) {
        fprintf(stderr, "test bug: big table create failed: %d\n", err);
        abort();
    }
    return t;
}

/* ---- the reference: docs/reference.md rules, brute force over every route ---- */

/* Lowercases, drops ":port" and one trailing dot; 0 when unusable. Written
 * independently of tp_router_host_normalize for the hosts this test sends. */
static size_t ref_host(const char *in, char *out)
{
    if (!in || !*in || strchr(in, ' '))
        return 0;
    size_t n = strcspn(in, ":");
    for (size_t i = 0; i < n; i++)
        out[i] = (char)((in[i] >= 'A' && in[i] <= 'Z') ? in[i] + 32 : in[i]);
    if (n && out[n - 1] == '.')
        n--;
    out[n] = '\0';
    return n;
}

static bool ref_headers(const struct tp_cfg_route *cr, const char *hdrs)
{
    for (size_t i = 0; i < cr->n_headers; i++) {
        struct hreq h = {.hdrs = hdrs};
        size_t vl = 0;
        char lname[64];
        for (size_t j = 0; j <= cr->headers[i].name_len; j++)
            lname[j] = (char)tolower((unsigned char)cr->headers[i].name[j]);
        const char *v = hdr_get(&h, lname, cr->headers[i].name_len, &vl);
        if (!v || vl != cr->headers[i].value_len || memcmp(v, cr->headers[i].value, vl) != 0)
            return false;
    }
    return true;
}

static long ref_lookup(const struct tp_config *cfg, unsigned method, const char *host, const char *path,
                       const char *hdrs)
{
    char h[300];
    size_t hl = ref_host(host, h), pl = strlen(path);
    long best = -1;
    long bk[4] = {0}; /* host class, -wildcard length, path class, -prefix length: smaller wins */
    if (pl == 0)
        path = "/", pl = 1;
    if (path[0] != '/')
        return -1;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct tp_cfg_route *cr = &cfg->routes[i];
        long k[4];
        /* host */
        if (!cr->host) {
            k[0] = 2, k[1] = 0;
        } else if (cr->host[0] == '*') {
            size_t sl = strlen(cr->host) - 1; /* ".example.com" */
            if (!hl || hl <= sl || memcmp(h + hl - sl, cr->host + 1, sl) != 0)
                continue;
            k[0] = 1, k[1] = -(long)sl;
        } else {
            if (!hl || strcmp(h, cr->host) != 0)
                continue;
            k[0] = 0, k[1] = 0;
        }
        /* path: the byte rule of docs/reference.md */
        size_t ql = strlen(cr->path);
        if (cr->path_exact) {
            if (ql != pl || memcmp(cr->path, path, pl) != 0)
                continue;
            k[2] = 0, k[3] = 0;
        } else {
            if (pl < ql || memcmp(cr->path, path, ql) != 0)
                continue;
            if (pl > ql && cr->path[ql - 1] != '/' && path[ql] != '/')
                continue;
            k[2] = 1, k[3] = -(long)ql;
        }
        /* methods, headers */
        if (cr->methods && (method >= 64 || !(cr->methods & (1ull << method))))
            continue;
        if (!ref_headers(cr, hdrs))
            continue;
        if (best < 0 || memcmp(k, bk, sizeof(k)) != 0) {
            bool better = best < 0;
            for (int j = 0; j < 4 && !better; j++) {
                if (k[j] != bk[j]) {
                    better = k[j] < bk[j];
                    break;
                }
            }
            if (better) {
                best = (long)i;
                memcpy(bk, k, sizeof(k));
            }
        }
    }
    return best;
}

/* ---- random requests ---- */

struct rreq {
    unsigned method;
    char host[64];
    bool no_host;
    char path[128];
    const char *hdrs;
};

static const char *const req_hdrs[] = {
    NULL,
    "x-canary: true\n",
    "x-canary: false\n",
    "X-Tenant: t0\n",
    "x-tenant: t1\nx-canary: true\n",
    "x-canary: true\nX-TENANT: t2\n",
    "x-tenant: t3\n",
    "x-tenant: T3\n",
};

static void random_req(struct rreq *q)
{
    static const unsigned meth[] = {HTTP_GET,    HTTP_GET,  HTTP_POST,  HTTP_PUT,
                                    HTTP_DELETE, HTTP_HEAD, HTTP_PATCH, 70};
    static const char *const segs[] = {"svc", "v1", "v2", "items", "n", "x", "", "itemsx", "a%2Fb", "7"};
    q->method = meth[rnd_below(TP_ARRAY_SIZE(meth))];
    q->no_host = false;
    uint32_t h = rnd_below(100), k = rnd_below(N_EXACT_HOSTS + 2);
    if (h < 30)
        snprintf(q->host, sizeof(q->host), "%s%u.example.com%s", rnd_below(2) ? "H" : "h", k,
                 rnd_below(3) == 0 ? ":81" : "");
    else if (h < 45)
        snprintf(q->host, sizeof(q->host), "q.w%u.example.com", rnd_below(N_WILD_HOSTS + 1));
    else if (h < 55)
        snprintf(q->host, sizeof(q->host), "q.a.w%u.example.com.", rnd_below(N_WILD_HOSTS));
    else if (h < 62)
        snprintf(q->host, sizeof(q->host), "x.b.a.w%u.example.com", rnd_below(4));
    else if (h < 66)
        snprintf(q->host, sizeof(q->host), "a.w%u.example.com", rnd_below(N_WILD_HOSTS)); /* not *.a.wN */
    else if (h < 70)
        snprintf(q->host, sizeof(q->host), "example.com");
    else if (h < 80)
        snprintf(q->host, sizeof(q->host), "unknown.test");
    else if (h < 90)
        snprintf(q->host, sizeof(q->host), "bad host");
    else
        q->no_host = true;

    /* paths: mostly near configured ones, sometimes off by a byte or segment */
    size_t len = 0;
    uint32_t shape = rnd_below(100);
    if (shape < 50) {
        int p = (int)rnd_below(N_PATHS + 10);
        char tmp[64];
        struct_path(p, tmp, sizeof(tmp));
        len = (size_t)snprintf(q->path, sizeof(q->path), "%s", tmp[0] == '=' ? tmp + 1 : tmp);
    } else if (shape < 80) {
        len = (size_t)snprintf(q->path, sizeof(q->path), "/n");
        if (rnd_below(4))
            len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/%u", rnd_below(24));
        if (rnd_below(8) == 0)
            len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/");
    } else {
        len = 0;
    }
    int extra = (int)rnd_below(4);
    for (int i = 0; i < extra && len < 100; i++) {
        const char *s = segs[rnd_below(TP_ARRAY_SIZE(segs))];
        if (strcmp(s, "svc") == 0)
            len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/svc%u", rnd_below(N_PATHS));
        else
            len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/%s", s);
    }
    if (len == 0 || rnd_below(10) == 0)
        len += (size_t)snprintf(q->path + len, sizeof(q->path) - len, "/");
    q->hdrs = req_hdrs[rnd_below(TP_ARRAY_SIZE(req_hdrs))];
}

static void test_big(void)
{
    struct tbl *t = big_table();
    struct tp_router_stats st;
    tp_router_stats(t->r, &st);
    tap_diag("10k table: %zu bytes, %zu nodes (%zu hashed), %zu exact + %zu wildcard hosts, depth %zu",
             st.bytes, st.n_nodes, st.n_hashed, st.n_exact, st.n_wild, st.max_depth);
    /* the table must exercise every lookup strategy, or the comparison proves less */
    ok(st.n_hashed >= 1, "10k table has hashed nodes");
    ok(st.n_wild > TP_ROUTER_WILD_LINEAR_MAX, "10k table has wildcards beyond the linear scan");
    is_int(st.n_routes, N_BIG, "all routes indexed");

    /* 1. expectations known by construction, over a sample */
    char host[64], path[96], rp[64];
    int bad = 0, checks = 0;
    for (int k = 0; k < N_HOSTKEYS; k++) {
        for (int p = k % 3; p < N_PATHS; p += 7) {
            long want = (long)k * N_PATHS + p;
            hostkey_req(k, host, sizeof(host));
            struct_path(p, rp, sizeof(rp));
            const char *yes[3] = {NULL}, *no[2] = {NULL};
            char y1[96], y2[96], n1[96];
            switch (p % 4) {
            case 0: /* prefix /svcP/v1/items */
                snprintf(y1, sizeof(y1), "%s/", rp);
                snprintf(y2, sizeof(y2), "%s/42/x", rp);
                snprintf(n1, sizeof(n1), "%sx", rp);
                yes[0] = rp, yes[1] = y1, yes[2] = y2, no[0] = n1;
                break;
            case 1: /* exact /svcP/v1/items/P */
                snprintf(n1, sizeof(n1), "%s/", rp + 1);
                yes[0] = rp + 1, no[0] = n1;
                break;
            case 2: /* prefix /svcP/v2/ */
                snprintf(y1, sizeof(y1), "%sx", rp);
                snprintf(n1, sizeof(n1), "%.*s", (int)strlen(rp) - 1, rp);
                yes[0] = rp, yes[1] = y1, no[0] = n1;
                break;
            default: /* exact /svcP */
                snprintf(n1, sizeof(n1), "%s/", rp + 1);
                yes[0] = rp + 1, no[0] = n1;
                break;
            }
            for (int j = 0; j < 3 && yes[j]; j++, checks++) {
                snprintf(path, sizeof(path), "%s", yes[j]);
                long got = look(t, "GET", host, path, NULL);
                if (got != want && bad++ < 5)
                    tap_diag("%s %s: got %ld, want %ld", host, path, got, want);
            }
            for (int j = 0; j < 2 && no[j]; j++, checks++) {
                long got = look(t, "GET", host, no[j], NULL);
                if (got == want && bad++ < 5)
                    tap_diag("%s %s: got route %ld, must not", host, no[j], got);
            }
        }
    }
    ok(bad == 0 && checks > 1000, "sample of %d lookups gives the constructed routes (%d wrong)", checks,
       bad);

    /* 2. random requests against the reference */
    rng_state = 0xfeedfacecafebeefull;
    int mism = 0, hits = 0;
    const int n_req = 4000;
    for (int i = 0; i < n_req; i++) {
        struct rreq q;
        random_req(&q);
        const char *hst = q.no_host ? NULL : q.host;
        long want = ref_lookup(&t->cfg, q.method, hst, q.path, q.hdrs);
        long got = look_m(t, q.method, hst, q.path, q.hdrs);
        hits += want >= 0;
        if (got != want && mism++ < 8)
            tap_diag("method %u host %s path %s hdrs %s: got %ld, reference %ld", q.method,
                     hst ? hst : "(none)", q.path, q.hdrs ? q.hdrs : "-", got, want);
    }
    tap_diag("%d of %d random requests matched a route", hits, n_req);
    ok(mism == 0, "router agrees with the reference on %d random requests (%d differ)", n_req, mism);
    ok(hits > n_req / 4 && hits < n_req, "random requests hit and miss (%d hits)", hits);
    tbl_free(t);
}

/*
 * Segment scanning reads 8 bytes at a time: paths from a tiny alphabet (so
 * that routes are prefixes of each other and segments of every length 0..20
 * occur, with bytes >= 0x80) against the reference, any host, no filters.
 */
static void test_segments_random(void)
{
    static const char alpha[] = {'a', 'b', '/', '/', (char)0xff, (char)0x80, 'a', '.'};
    enum { N_R = 300, N_Q = 6000 };
    struct tbl *t = tbl_new(N_R);
    char buf[40];
    rng_state = 0x5eed5eed5eed5eedull;
    for (size_t i = 0; i < N_R; i++) {
        size_t len = 1 + rnd_below(20), j = 0;
        bool exact = rnd_below(2);
        if (exact)
            buf[j++] = '=';
        buf[j++] = '/';
        for (size_t k = 1; k < len; k++)
            buf[j++] = rnd_below(4) ? alpha[rnd_below(sizeof(alpha))] : 'a' + (char)rnd_below(3);
        buf[j] = '\0';
        struct rdef d = {NULL, buf, NULL, NULL};
        fill_route(t, &t->cfg.routes[i], &d);
    }
    is_int(tbl_build(t), 0, "segment table builds");
    int mism = 0, hits = 0;
    for (int i = 0; i < N_Q; i++) {
        size_t len = rnd_below(26), j = 0;
        /* mostly a configured path, mutated at its end */
        if (rnd_below(3)) {
            const struct tp_cfg_route *cr = &t->cfg.routes[rnd_below(N_R)];
            j = (size_t)snprintf(buf, sizeof(buf), "%s", cr->path);
            j = j > 1 && rnd_below(2) ? j - rnd_below((uint32_t)j - 1) : j;
        } else {
            buf[j++] = '/';
        }
        while (j < len)
            buf[j++] = alpha[rnd_below(sizeof(alpha))];
        buf[j] = '\0';
        long want = ref_lookup(&t->cfg, HTTP_GET, NULL, buf, NULL);
        long got = look_m(t, HTTP_GET, NULL, buf, NULL);
        hits += want >= 0;
        if (got != want && mism++ < 5)
            tap_diag("path \"%s\" (len %zu): got %ld, reference %ld", buf, j, got, want);
    }
    ok(mism == 0, "segment scan agrees with the reference on %d paths (%d differ, %d hits)", N_Q, mism, hits);
    tbl_free(t);
}

/* The hash-walk over wildcard suffixes (more than WILD_LINEAR_MAX wildcards)
 * keeps longest-first order too. */
static void test_many_wildcards(void)
{
    struct rdef d[24];
    char names[24][48];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof(names[i]), "*.z%d.example.com", i);
        d[i] = (struct rdef){names[i], "/", NULL, NULL};
    }
    d[20] = (struct rdef){"*.example.com", "/", NULL, NULL};
    d[21] = (struct rdef){"*.b.z3.example.com", "/", NULL, NULL};
    d[22] = (struct rdef){"*.c.b.z3.example.com", "/only", NULL, NULL};
    d[23] = (struct rdef){"b.z3.example.com", "/", "POST", NULL};
    struct tbl *t = tbl_make(d, 24);
    is_int(look(t, "GET", "a.z5.example.com", "/", NULL), 5, "hash walk: matching wildcard");
    is_int(look(t, "GET", "a.c.b.z3.example.com", "/", NULL), 21,
           "hash walk: falls to shorter suffix on path");
    is_int(look(t, "GET", "a.c.b.z3.example.com", "/only/x", NULL), 22, "hash walk: longest suffix first");
    is_int(look(t, "GET", "b.z3.example.com", "/", NULL), 3, "hash walk: exact host method miss -> wildcard");
    is_int(look(t, "POST", "b.z3.example.com", "/", NULL), 23, "exact host");
    is_int(look(t, "GET", "z3.example.com", "/", NULL), 20, "hash walk: *.z3 does not match z3 itself");
    is_int(look(t, "GET", "example.com", "/", NULL), -1,
           "hash walk: *.example.com does not match example.com");
    is_int(look(t, "GET", "Q.Z19.EXAMPLE.COM:80", "/", NULL), 19, "hash walk: case and port");
    tbl_free(t);
}

/* ------------------------------------------------------------------------ */
/* concurrent readers                                                        */

#define N_THREADS 4
#define N_CREQ    2000

struct cshared {
    const struct tbl *t;
    struct rreq req[N_CREQ];
    long want[N_CREQ];
};

struct cthread {
    pthread_t tid;
    const struct cshared *sh;
    int id;
    long mism; /* written by its thread only, read after join */
};

static void *reader(void *arg)
{
    struct cthread *c = arg;
    const struct cshared *sh = c->sh;
    for (int rep = 0; rep < 5; rep++) {
        for (int i = 0; i < N_CREQ; i++) {
            int j = (i * 7 + c->id * 131 + rep) % N_CREQ; /* different orders per thread */
            const struct rreq *q = &sh->req[j];
            long got = look_m(sh->t, q->method, q->no_host ? NULL : q->host, q->path, q->hdrs);
            c->mism += got != sh->want[j];
        }
    }
    return NULL;
}

static void test_concurrent(void)
{
    struct cshared *sh = calloc(1, sizeof(*sh));
    struct tbl *t = big_table();
    sh->t = t;
    rng_state = 0x0badc0ffee0ddf00ull;
    for (int i = 0; i < N_CREQ; i++) {
        random_req(&sh->req[i]);
        sh->want[i] = look_m(t, sh->req[i].method, sh->req[i].no_host ? NULL : sh->req[i].host,
                             sh->req[i].path, sh->req[i].hdrs);
    }
    struct cthread th[N_THREADS];
    int started = 0;
    for (int i = 0; i < N_THREADS; i++) {
        th[i] = (struct cthread){.sh = sh, .id = i};
        if (pthread_create(&th[i].tid, NULL, reader, &th[i]) == 0)
            started++;
        else
            break;
    }
    long mism = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i].tid, NULL);
        mism += th[i].mism;
    }
    is_int(started, N_THREADS, "reader threads started");
    is_int(mism, 0, "%d threads sharing one router agree with a single-threaded run", N_THREADS);
    tbl_free(t);
    free(sh);
}

int main(void)
{
    test_host_order();
    test_host_forms();
    test_path_order();
    test_raw_paths();
    test_filters();
    test_create();
    test_doc_examples();
    test_normalize();
    test_split();
    test_many_wildcards();
    test_segments_random();
    test_big();
    test_concurrent();
    return tap_done();
}
