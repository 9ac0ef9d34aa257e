/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: router lookups. A fixed table with exact and wildcard
 * hosts, exact and prefix paths, method and header filters; the input is
 * split into method, Host and path. Lookup must not read out of bounds for
 * any bytes, and must agree with itself (same input, same route).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <turnpike/config.h>
#include <turnpike/router.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char table[] = "listeners: [{address: 127.0.0.1:1}]\n"
                            "upstreams: [{name: u, endpoints: [{address: 127.0.0.1:2}]}]\n"
                            "routes:\n"
                            "  - {match: {host: api.example.com, path_prefix: /users}, upstream: u}\n"
                            "  - {match: {host: '*.example.com', path: /exact}, upstream: u}\n"
                            "  - {match: {host: '*.b.example.com'}, upstream: u}\n"
                            "  - {match: {path_prefix: /a/b/c, methods: [GET, POST]}, upstream: u}\n"
                            "  - {match: {path_prefix: /h, headers: {x-canary: 'true'}}, upstream: u}\n"
                            "  - {match: {path_prefix: /users/}, upstream: u}\n"
                            "  - {match: {path: /}, upstream: u}\n"
                            "  - {match: {path_prefix: /}, upstream: u}\n";

static struct tp_router *router;
static struct tp_config *cfg;

static const char *hdr(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    (void)ctx;
    if (name_len == 8 && memcmp(name, "x-canary", 8) == 0) {
        *value_len = 4;
        return "true";
    }
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!router) {
        struct tp_diag d = {0};
        int err = 0;
        cfg = tp_config_parse("fuzz", table, sizeof(table) - 1, &d);
        if (!cfg)
            __builtin_trap();
        router = tp_router_create(cfg, NULL, &err);
        if (!router)
            __builtin_trap();
    }
    if (size < 2)
        return 0;
    /* byte 0: method; then Host up to the first NUL, the rest is the path */
    unsigned method = data[0] % 46;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    const char *nul = memchr(rest, 0, n);
    size_t hlen = nul ? (size_t)(nul - rest) : 0;
    struct tp_route_req rq = {
        .method = method,
        .host = nul ? rest : NULL,
        .host_len = hlen,
        .path = nul ? nul + 1 : rest,
        .path_len = nul ? n - hlen - 1 : n,
        .header = hdr,
    };
    size_t i1 = 0, i2 = 0;
    void *a = tp_router_lookup(router, &rq, &i1);
    void *b = tp_router_lookup(router, &rq, &i2);
    if (a != b || i1 != i2)
        __builtin_trap();
    char out[256];
    tp_router_host_normalize(rest, n, out, sizeof(out));
    return 0;
}
