/* SPDX-License-Identifier: MIT */
/*
 * The configuration loader: good files parsed field by field (docs/reference.md's
 * example made valid, the repo's conf/turnpike.yaml, a minimal file with
 * every default), and one case per error kind with its exact
 * "FILE:LINE:COLUMN: message" line(s). Runs from the source root (ctest's
 * WORKING_DIRECTORY), so fixtures are named relative to it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>
#include <turnpike/config.h>

#include "tap.h"

#define DATA "tests/unit/config/data/"

/* ---- helpers ---- */

static int port_of(const struct tp_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

/* Parses <yaml> as "t.yaml" and checks that it fails with exactly the
 * messages in <want> (NULL-terminated), in that order. */
/* Parses <yaml>: refused (<accepted> false) or accepted, with exactly the messages <want>. */
static void expect_messages(const char *what, const char *yaml, const char *const *want, bool accepted)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_parse("t.yaml", yaml, strlen(yaml), &d);
    size_t n = 0;

    while (want[n])
        n++;
    if (accepted)
        ok(cfg != NULL, "%s: accepted", what);
    else
        ok(cfg == NULL, "%s: refused", what);
    tp_config_destroy(cfg);
    if (d.n != n) {
        ok(0, "%s: %zu messages, want %zu", what, d.n, n);
        for (size_t i = 0; i < d.n; i++)
            tap_diag("got: %s", d.msgs[i]);
    } else {
        for (size_t i = 0; i < n; i++)
            is_str(d.msgs[i], want[i], "%s: message %zu", what, i);
    }
    tp_diag_dispose(&d);
}

#define EXPECT(what, yaml, ...) expect_messages(what, yaml, (const char *const[]){__VA_ARGS__, NULL}, false)
/* accepted, with exactly these warnings */
#define EXPECT_WARN(what, yaml, ...)                                                                         \
    expect_messages(what, yaml, (const char *const[]){__VA_ARGS__, NULL}, true)

static struct tp_config *parse_ok(const char *what, const char *yaml)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_parse("t.yaml", yaml, strlen(yaml), &d);
    ok(cfg != NULL && d.n == 0, "%s: accepted", what);
    for (size_t i = 0; i < d.n; i++)
        tap_diag("unexpected: %s", d.msgs[i]);
    tp_diag_dispose(&d);
    return cfg;
}

/* Lines 1-7; routes items start on line 8. */
#define BASE                                                                                                 \
    "listeners:\n"                                                                                           \
    "  - address: 127.0.0.1:8080\n"                                                                          \
    "upstreams:\n"                                                                                           \
    "  - name: users\n"                                                                                      \
    "    endpoints:\n"                                                                                       \
    "      - address: 127.0.0.1:9001\n"                                                                      \
    "routes:\n"

/* Lines 1-2; upstreams items start on line 4. */
#define LST                                                                                                  \
    "listeners:\n"                                                                                           \
    "  - address: 127.0.0.1:8080\n"

/* ---- good files ---- */

static void test_full(void)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_load(DATA "full.yaml", &d);

    ok(cfg != NULL && d.n == 0, "full.yaml loads");
    for (size_t i = 0; i < d.n; i++)
        tap_diag("unexpected: %s", d.msgs[i]);
    tp_diag_dispose(&d);
    if (!cfg)
        return;

    is_str(cfg->source, DATA "full.yaml", "source as given");
    is_int(cfg->workers, 4, "workers");

    is_int(cfg->n_listeners, 2, "two listeners");
    is_str(cfg->listeners[0].name, "public", "listener name");
    is_str(cfg->listeners[0].addr.text, "0.0.0.0:8080", "listener address text");
    is_int(cfg->listeners[0].addr.ss.ss_family, AF_INET, "listener family");
    is_int(port_of(&cfg->listeners[0].addr), 8080, "listener port");
    ok(cfg->listeners[0].tls == NULL, "no tls");
    is_int(cfg->listeners[0].pos.line, 6, "listener pos line");
    is_int(cfg->listeners[0].pos.col, 5, "listener pos col");
    is_int(cfg->listeners[0].addr_pos.line, 7, "listener address pos line");
    is_int(cfg->listeners[0].addr_pos.col, 14, "listener address pos col");
    is_str(cfg->listeners[1].name, "listeners[1]", "unnamed listener gets listeners[i]");
    is_str(cfg->listeners[1].addr.text, "[::1]:8443", "ipv6 listener text");
    is_int(cfg->listeners[1].addr.ss.ss_family, AF_INET6, "ipv6 listener family");
    is_int(port_of(&cfg->listeners[1].addr), 8443, "ipv6 listener port");

    ok(cfg->has_admin, "admin");
    is_str(cfg->admin.text, "127.0.0.1:9901", "admin address");
    is_str(cfg->access_log_path, "/var/log/turnpike/access.log", "access log path");
    is_int(cfg->access_log_format, TP_ACCESS_COMBINED, "access log format");

    is_int(cfg->max_connections, 5000, "max_connections");
    is_int(cfg->max_header_bytes, 32768, "max_header_bytes");
    is_int(cfg->max_body_bytes, 1073741824, "max_body_bytes");
    is_int(cfg->client_header_ms, 250, "client_header");
    is_int(cfg->client_idle_ms, 120000, "client_idle");
    is_int(cfg->upstream_connect_ms, 1000, "upstream_connect");
    is_int(cfg->upstream_response_ms, 3600000, "upstream_response");
    is_int(cfg->drain_timeout_ms, 0, "drain_timeout 0s allowed");

    is_int(cfg->n_upstreams, 3, "three upstreams");
    struct tp_cfg_upstream *u = &cfg->upstreams[0];
    is_str(u->name, "users", "upstream name");
    is_int(u->n_endpoints, 2, "two endpoints");
    is_str(u->endpoints[0].addr.text, "127.0.0.1:9001", "endpoint 0");
    is_int(u->endpoints[0].weight, 3, "endpoint 0 weight");
    is_str(u->endpoints[1].addr.text, "127.0.0.1:9002", "endpoint 1");
    is_int(u->endpoints[1].weight, 1, "endpoint weight default 1");
    is_int(u->endpoints[1].pos.line, 36, "endpoint pos");
    is_int(u->balance, TP_BALANCE_HASH, "balance hash");
    is_int(u->hash_key.kind, TP_KEY_HEADER, "hash_key header");
    is_str(u->hash_key.name, "x-user-id", "hash_key header name lowercased");
    is_int(u->hash_key.name_len, 9, "hash_key name_len");
    is_int(u->keepalive, 64, "keepalive");
    ok(u->tls == NULL, "upstream tls absent");
    ok(u->health_check != NULL, "health_check");
    if (u->health_check) {
        is_str(u->health_check->path, "/healthz?full=1", "health path with query");
        is_int(u->health_check->interval_ms, 500, "health interval");
        is_int(u->health_check->timeout_ms, 250, "health timeout");
        is_int(u->health_check->healthy_after, 1, "healthy_after");
        is_int(u->health_check->unhealthy_after, 5, "unhealthy_after");
    }
    ok(u->circuit_breaker != NULL, "circuit_breaker");
    if (u->circuit_breaker) {
        is_int(u->circuit_breaker->consecutive_failures, 7, "consecutive_failures");
        ok(u->circuit_breaker->failure_ratio == 0.25, "failure_ratio");
        is_int(u->circuit_breaker->min_requests, 40, "min_requests");
        is_int(u->circuit_breaker->window_ms, 30000, "window");
        is_int(u->circuit_breaker->open_for_ms, 5000, "open_for");
        is_int(u->circuit_breaker->half_open_requests, 2, "half_open_requests");
    }
    is_int(u->max_concurrent_requests, 10000, "max_concurrent_requests");
    ok(u->retries != NULL, "retries");
    if (u->retries) {
        is_int(u->retries->attempts, 2, "retries attempts");
        is_int(u->retries->on,
               TP_RETRY_CONNECT_FAILURE | TP_RETRY_RESET | TP_RETRY_502 | TP_RETRY_503 | TP_RETRY_504,
               "retries on: all, 503 quoted");
    }

    u = &cfg->upstreams[1];
    is_str(u->name, "users-v1", "second upstream");
    is_int(u->endpoints[0].addr.ss.ss_family, AF_INET6, "ipv6 endpoint");
    is_int(u->balance, TP_BALANCE_LEAST_REQUEST, "least_request");
    is_int(u->hash_key.kind, TP_KEY_NONE, "no hash_key");
    is_int(u->keepalive, 0, "keepalive 0");
    ok(u->health_check && !strcmp(u->health_check->path, "/") && u->health_check->interval_ms == 2000 &&
           u->health_check->timeout_ms == 1000 && u->health_check->healthy_after == 2 &&
           u->health_check->unhealthy_after == 3,
       "health_check {} = defaults");
    ok(u->circuit_breaker && u->circuit_breaker->consecutive_failures == 5 &&
           u->circuit_breaker->failure_ratio == 0.5 && u->circuit_breaker->min_requests == 20 &&
           u->circuit_breaker->window_ms == 10000 && u->circuit_breaker->open_for_ms == 10000 &&
           u->circuit_breaker->half_open_requests == 3,
       "circuit_breaker {} = defaults");
    ok(u->retries && u->retries->attempts == 1 &&
           u->retries->on == (TP_RETRY_CONNECT_FAILURE | TP_RETRY_RESET),
       "retries {} = defaults");
    is_int(u->max_concurrent_requests, 0, "max_concurrent_requests default unlimited");
    is_int(cfg->upstreams[2].endpoints[0].weight, 1000, "flow endpoint weight");
    ok(cfg->upstreams[2].health_check == NULL && cfg->upstreams[2].circuit_breaker == NULL &&
           cfg->upstreams[2].retries == NULL,
       "absent sections are NULL");

    is_int(cfg->n_routes, 4, "four routes");
    struct tp_cfg_route *r = &cfg->routes[0];
    is_str(r->name, "users-api", "route name");
    is_str(r->host, "api.example.com", "host lowercased");
    is_str(r->path, "/users", "path_prefix");
    ok(!r->path_exact, "prefix");
    ok(r->methods == ((1ull << HTTP_GET) | (1ull << HTTP_POST) | (1ull << HTTP_MSEARCH)), "methods bits");
    is_int(r->n_headers, 2, "match headers");
    is_str(r->headers[0].name, "x-canary", "match header name");
    is_str(r->headers[0].value, "true", "quoted value");
    is_str(r->headers[1].name, "X-Plain", "header name case kept");
    is_str(r->headers[1].value, "on", "YAML 1.2: on is the string \"on\"");
    is_int(r->headers[1].value_len, 2, "value_len");
    is_int(r->upstream, 0, "upstream index");
    ok(r->split == NULL && r->direct == NULL, "neither split nor direct");
    is_str(r->strip_prefix, "/users", "strip_prefix");
    ok(r->rate_limit != NULL, "rate_limit");
    if (r->rate_limit) {
        is_int(r->rate_limit->tokens, 100, "rate tokens");
        is_int(r->rate_limit->period_ms, 1000, "rate period");
        is_int(r->rate_limit->burst, 200, "burst");
        is_int(r->rate_limit->key.kind, TP_KEY_HEADER, "rate key header");
        is_str(r->rate_limit->key.name, "x-api-key", "rate key header lowercased");
    }
    is_int(r->request_headers.n_set, 2, "request set");
    is_str(r->request_headers.set[0].name, "x-gateway", "set name");
    is_str(r->request_headers.set[0].value, "turnpike", "set value");
    is_str(r->request_headers.set[1].name, "host", "host may be set on requests");
    is_int(r->request_headers.n_remove, 1, "request remove");
    is_str(r->request_headers.remove[0].name, "x-internal-debug", "remove name");
    ok(r->request_headers.remove[0].value == NULL, "remove has no value");
    is_int(r->response_headers.n_set, 1, "response set");
    is_str(r->response_headers.set[0].value, "max-age=31536000", "response set value");
    is_str(r->response_headers.remove[0].name, "server", "response remove");

    r = &cfg->routes[1];
    is_str(r->name, "routes[1]", "unnamed route gets routes[i]");
    is_str(r->host, "*.example.com", "wildcard host");
    is_str(r->path, "/canary/x", "exact path");
    ok(r->path_exact, "exact");
    is_int(r->methods, 0, "any method");
    is_int(r->upstream, TP_UPSTREAM_NONE, "split route has no single upstream");
    is_int(r->n_split, 3, "three arms");
    if (r->n_split == 3) {
        ok(r->split[0].upstream == 1 && r->split[0].weight == 90, "arm 0");
        ok(r->split[1].upstream == 2 && r->split[1].weight == 10, "arm 1");
        ok(r->split[2].upstream == 0 && r->split[2].weight == 0, "arm 2 weight 0");
    }
    is_str(r->strip_prefix, "/canary", "strip_prefix of an exact path");
    ok(r->rate_limit && r->rate_limit->tokens == 6000 && r->rate_limit->period_ms == 60000 &&
           r->rate_limit->burst == 6000 && r->rate_limit->key.kind == TP_KEY_CLIENT_IP,
       "rate 6000/m, burst defaults to the tokens, key client_ip");

    r = &cfg->routes[2];
    is_str(r->path, "/ping", "ping path");
    ok(r->direct && r->direct->status == 200 && r->direct->body_len == 5 &&
           !memcmp(r->direct->body, "pong\n", 5),
       "direct response");
    is_int(r->upstream, TP_UPSTREAM_NONE, "direct has no upstream");

    r = &cfg->routes[3];
    is_str(r->path, "/", "absent match = /");
    ok(!r->path_exact, "absent match = prefix");
    ok(r->host == NULL, "absent host = any");
    ok(r->direct && r->direct->status == 418 && r->direct->body && r->direct->body_len == 0,
       "direct body defaults to empty, not NULL");
    ok(r->rate_limit && r->rate_limit->key.kind == TP_KEY_ROUTE && r->rate_limit->period_ms == 3600000,
       "key: route");

    tp_config_destroy(cfg);
}

static void test_shipped(void)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_load("conf/turnpike.yaml", &d);

    ok(cfg != NULL && d.n == 0, "conf/turnpike.yaml loads");
    for (size_t i = 0; i < d.n; i++)
        tap_diag("unexpected: %s", d.msgs[i]);
    tp_diag_dispose(&d);
    if (!cfg)
        return;
    is_int(cfg->workers, 0, "workers auto = 0");
    is_int(cfg->n_listeners, 2, "two listeners");
    is_str(cfg->listeners[1].name, "demo-backend", "listener name");
    is_str(cfg->listeners[1].addr.text, "127.0.0.1:8081", "listener address");
    ok(cfg->has_admin && !strcmp(cfg->admin.text, "127.0.0.1:9901"), "admin");
    ok(cfg->access_log_path == NULL, "no access log");
    is_int(cfg->n_upstreams, 1, "one upstream");
    is_str(cfg->upstreams[0].name, "demo", "upstream demo");
    is_int(cfg->upstreams[0].keepalive, 32, "keepalive");
    is_int(cfg->n_routes, 3, "three routes");
    struct tp_cfg_route *r = &cfg->routes[0];
    ok(r->direct && r->direct->status == 200, "demo-backend answers itself");
    ok(r->n_headers == 1 && !strcmp(r->headers[0].name, "x-turnpike-demo") &&
           !strcmp(r->headers[0].value, "backend"),
       "matches on the demo header");
    r = &cfg->routes[1];
    is_str(r->name, "api", "api route");
    ok(r->methods == ((1ull << HTTP_GET) | (1ull << HTTP_HEAD) | (1ull << HTTP_POST)), "api methods");
    is_int(r->upstream, 0, "api -> demo");
    is_str(r->strip_prefix, "/api", "api strip_prefix");
    ok(r->request_headers.n_set == 1 && !strcmp(r->request_headers.set[0].value, "backend"),
       "api request set");
    ok(r->response_headers.n_set == 1 && !strcmp(r->response_headers.set[0].name, "x-served-by"),
       "api response set");
    r = &cfg->routes[2];
    ok(r->path_exact && !strcmp(r->path, "/ping") && r->direct && r->direct->body_len == 5, "ping");

    /* sha256 is of the bytes: compare with OpenSSL over the same file. */
    int nonzero = 0;
    for (int i = 0; i < 32; i++)
        nonzero |= cfg->sha256[i];
    ok(nonzero, "sha256 set");
    tp_config_destroy(cfg);
}

static void test_minimal_defaults(void)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_load(DATA "minimal.yaml", &d);

    ok(cfg != NULL && d.n == 0, "minimal.yaml loads");
    tp_diag_dispose(&d);
    if (!cfg)
        return;
    is_int(cfg->workers, 0, "workers default auto");
    is_int(cfg->n_listeners, 1, "one listener");
    is_str(cfg->listeners[0].name, "listeners[0]", "default listener name");
    ok(!cfg->has_admin, "no admin by default");
    ok(cfg->access_log_path == NULL, "no access log by default");
    is_int(cfg->access_log_format, TP_ACCESS_JSON, "access log format default json");
    is_int(cfg->max_connections, 100000, "max_connections default");
    is_int(cfg->max_header_bytes, 16384, "max_header_bytes default");
    is_int(cfg->max_body_bytes, 10485760, "max_body_bytes default");
    is_int(cfg->max_unsent_bytes, 131072, "max_unsent_bytes default");
    is_int(cfg->h2_max_concurrent_streams, 100, "h2_max_concurrent_streams default");
    is_int(cfg->h2_max_resets_per_s, 100, "h2_max_resets_per_s default");
    ok(!cfg->listeners[0].h2c, "h2c default false");
    is_int(cfg->client_header_ms, 10000, "client_header default");
    is_int(cfg->client_idle_ms, 60000, "client_idle default");
    is_int(cfg->upstream_connect_ms, 2000, "upstream_connect default");
    is_int(cfg->upstream_response_ms, 30000, "upstream_response default");
    is_int(cfg->drain_timeout_ms, 30000, "drain_timeout default");
    is_int(cfg->n_upstreams, 0, "no upstreams");
    ok(cfg->upstreams == NULL, "upstreams NULL");
    is_int(cfg->n_routes, 0, "no routes");
    ok(cfg->routes == NULL, "routes NULL");
    /* sha256 of "listeners:\n  - address: 127.0.0.1:8080\n" (sha256sum) */
    static const uint8_t want[32] = {0x8c, 0xea, 0xd8, 0xf2, 0x5f, 0xf7, 0xc8, 0x02, 0x96, 0xdf, 0xd3,
                                     0x6d, 0xc9, 0x4e, 0x12, 0x17, 0x6a, 0xf4, 0x11, 0x23, 0xeb, 0x47,
                                     0x61, 0x99, 0x67, 0xca, 0x6f, 0x1a, 0x58, 0x31, 0x2a, 0xec};
    ok(memcmp(cfg->sha256, want, 32) == 0, "sha256 of the file's bytes");
    tp_config_destroy(cfg);
}

static void test_small_good(void)
{
    struct tp_config *cfg;

    cfg = parse_ok("workers number", "workers: 1024\n" LST);
    ok(cfg && cfg->workers == 1024, "workers 1024");
    tp_config_destroy(cfg);

    cfg = parse_ok("aliases reuse a header set",
                   LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n"
                       "routes:\n  - upstream: u\n    request_headers: {set: &common {x-a: b}}\n"
                       "  - upstream: u\n    match: {path: /b}\n    request_headers: {set: *common}\n");
    ok(cfg && cfg->routes[1].request_headers.n_set == 1 &&
           !strcmp(cfg->routes[1].request_headers.set[0].value, "b"),
       "alias resolved");
    tp_config_destroy(cfg);

    cfg = parse_ok("strip_prefix / fits any path",
                   BASE "  - upstream: users\n    match: {path_prefix: /a}\n    strip_prefix: /\n");
    tp_config_destroy(cfg);
    cfg = parse_ok("strip_prefix on a trailing-slash prefix",
                   BASE "  - upstream: users\n    match: {path_prefix: /a/}\n    strip_prefix: /a\n");
    tp_config_destroy(cfg);
    cfg = parse_ok("quoted numbers are fine", "workers: \"8\"\n" LST);
    ok(cfg && cfg->workers == 8, "workers \"8\"");
    tp_config_destroy(cfg);
    cfg = parse_ok("empty body", BASE "  - direct_response: {status: 204, body: \"\"}\n");
    tp_config_destroy(cfg);
    cfg = parse_ok("body with NUL", BASE "  - direct_response: {status: 200, body: \"a\\0b\"}\n");
    ok(cfg && cfg->routes[0].direct->body_len == 3, "body_len counts the NUL");
    tp_config_destroy(cfg);
    cfg = parse_ok("admin before listeners, other port", "admin: {address: 127.0.0.1:9901}\n" LST);
    tp_config_destroy(cfg);
}

/* ---- one case per error kind ---- */

static void test_file_errors(void)
{
    struct tp_diag d = {0};

    ok(tp_config_load("tests/unit/config/data/does-not-exist.yaml", &d) == NULL, "missing file");
    ok(d.n == 1 &&
           !strcmp(d.msgs[0], "tests/unit/config/data/does-not-exist.yaml: No such file or directory"),
       "missing file message");
    tp_diag_dispose(&d);
    ok(tp_config_load("tests/unit/config/data", &d) == NULL, "directory");
    ok(d.n == 1 && !strcmp(d.msgs[0], "tests/unit/config/data: Is a directory"), "directory message");
    tp_diag_dispose(&d);
    ok(tp_config_load("tests/unit/config/data/does-not-exist.yaml", NULL) == NULL, "NULL diag is fine");
}

static void test_yaml_errors(void)
{
    EXPECT("empty", "", "t.yaml:1:1: the file is empty (expected a mapping with at least \"listeners\")");
    EXPECT("comment only", "# nothing\n",
           "t.yaml:1:1: the file is empty (expected a mapping with at least \"listeners\")");
    EXPECT("document marker only", "---\n",
           "t.yaml:1:1: the file is empty (expected a mapping with at least \"listeners\")");
    EXPECT("not a mapping: list", "- a\n- b\n",
           "t.yaml:1:1: expected a mapping at the top level, got a list");
    EXPECT("not a mapping: scalar", "hello\n",
           "t.yaml:1:1: expected a mapping at the top level, got \"hello\"");
    EXPECT("syntax: flow", "listeners: [1\nb: 2\n", "t.yaml:3:1: flow sequence without a closing bracket");
    EXPECT("syntax: tab", "listeners:\n\t- a\n", "t.yaml:2:1: tab character may not be used as indentation");
    EXPECT("syntax: escape", LST "workers: \"\\q\"\n",
           "t.yaml:3:11: invalid escape 'q' in double-quoted string");
    EXPECT("two documents", LST "---\n" LST, "t.yaml:3:1: only one YAML document is allowed");
    EXPECT("unknown alias", LST "workers: *w\n", "t.yaml:3:10: unknown alias \"*w\"");
    EXPECT("alias bomb",
           "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
           "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
           "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
           "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n",
           "t.yaml:5:7: document too large: more than 1048576 nodes once aliases are expanded");
    EXPECT("non-string key", "? [a]\n: 1\n" LST, "t.yaml:1:3: keys must be strings, got a list");
    /* libfyaml 0.7.12 would loop forever on the directive; the encoding check comes first */
    EXPECT("not UTF-8 in a directive", "%x\xfa\n" LST,
           "t.yaml:1:3: invalid UTF-8 (byte 0xfa): the file must be UTF-8");
    EXPECT("NUL byte", LST "workers: 1\x01\n",
           "t.yaml:3:11: control character U+0001 is not allowed in YAML");
    EXPECT("not UTF-8 in a value", LST "workers: caf\xe9\n",
           "t.yaml:3:13: invalid UTF-8 (byte 0xe9): the file must be UTF-8");
    EXPECT("merge keys are plain keys in YAML 1.2", "l: &l {address: 127.0.0.1:1}\nlisteners:\n  - <<: *l\n",
           "t.yaml:1:1: l: unknown key", "t.yaml:3:5: listeners[0].<<: unknown key",
           "t.yaml:3:5: listeners[0]: missing required key \"address\"");
}

static void test_key_errors(void)
{
    EXPECT("unknown top-level key", LST "worker: 2\n", "t.yaml:3:1: worker: unknown key");
    EXPECT("unknown nested key", "listeners:\n  - name: a\n    adress: 0.0.0.0:1\n",
           "t.yaml:2:5: listeners[0]: missing required key \"address\"",
           "t.yaml:3:5: listeners[0].adress: unknown key");
    EXPECT("duplicate key", LST "workers: 1\nworkers: 2\n", "t.yaml:4:1: workers: duplicate key");
    EXPECT("duplicate nested key", "listeners:\n  - address: 127.0.0.1:1\n    address: 127.0.0.1:2\n",
           "t.yaml:3:5: listeners[0].address: duplicate key");
    EXPECT("listeners tls without certificates",
           "listeners:\n  - address: 0.0.0.0:443\n    tls:\n      certificates: []\n",
           "t.yaml:4:21: listeners[0].tls.certificates: at least one certificate is required");
    EXPECT("listeners tls certificate file missing",
           "listeners:\n  - address: 0.0.0.0:443\n    tls:\n      certificates: [{cert: /nonexistent.pem, "
           "key: /x.key}]\n",
           "t.yaml:4:29: listeners[0].tls.certificates[0].cert: cannot read \"/nonexistent.pem\": No such "
           "file or directory",
           "t.yaml:4:52: listeners[0].tls.certificates[0].key: cannot read \"/x.key\": No such file or "
           "directory");
    EXPECT("listeners tls alpn h2c",
           "listeners:\n  - address: 0.0.0.0:443\n    tls: {alpn: [h2, h2c], certificates: []}\n",
           "t.yaml:3:22: listeners[0].tls.alpn[1]: invalid value \"h2c\" (expected h2, http/1.1 or http/1.0)",
           "t.yaml:3:42: listeners[0].tls.certificates: at least one certificate is required");
    EXPECT("upstream tls verify is a boolean",
           LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n    tls: {verify: yes}\n",
           "t.yaml:6:19: upstreams[0].tls.verify: invalid value \"yes\" (expected true or false)");
    EXPECT("missing listeners", "workers: auto\n", "t.yaml:1:1: missing required key \"listeners\"");
    EXPECT("missing upstream name", LST "upstreams:\n  - endpoints: [{address: 127.0.0.1:1}]\n",
           "t.yaml:4:5: upstreams[0]: missing required key \"name\"");
    EXPECT("missing endpoints", LST "upstreams:\n  - name: u\n",
           "t.yaml:4:5: upstreams[0]: missing required key \"endpoints\"");
    EXPECT("missing admin address", LST "admin: {}\n", "t.yaml:3:8: admin: missing required key \"address\"");
    EXPECT("missing access_log path", LST "access_log: {format: json}\n",
           "t.yaml:3:13: access_log: missing required key \"path\"");
    EXPECT("missing status", BASE "  - direct_response: {body: x}\n",
           "t.yaml:8:22: routes[0].direct_response: missing required key \"status\"");
    EXPECT("missing rate", BASE "  - upstream: users\n    rate_limit: {burst: 5}\n",
           "t.yaml:9:17: routes[0].rate_limit: missing required key \"rate\"");
    EXPECT("missing split upstream", BASE "  - split: [{weight: 1}]\n",
           "t.yaml:8:13: routes[0].split[0]: missing required key \"upstream\"");
}

static void test_type_errors(void)
{
    EXPECT("list where a mapping is expected", LST "limits: [1]\n",
           "t.yaml:3:9: limits: expected a mapping, got a list");
    EXPECT("mapping where a list is expected", "listeners: {address: 127.0.0.1:1}\n",
           "t.yaml:1:12: listeners: expected a list, got a mapping");
    EXPECT("scalar item where a mapping is expected", "listeners:\n  - 127.0.0.1:1\n",
           "t.yaml:2:5: listeners[0]: expected a mapping, got \"127.0.0.1:1\"");
    EXPECT("null section", LST "admin:\n", "t.yaml:3:1: admin: expected a mapping, got null");
    EXPECT("null list", "listeners: ~\n", "t.yaml:1:12: listeners: expected a list, got null");
    EXPECT("mapping where a scalar is expected", LST "timeouts: {client_idle: {a: 1}}\n",
           "t.yaml:3:25: timeouts.client_idle: expected a duration, got a mapping");
    EXPECT("null integer", LST "limits:\n  max_connections: null\n",
           "t.yaml:4:20: limits.max_connections: expected an integer, got null");
    EXPECT("workers null", LST "workers:\n", "t.yaml:3:1: workers: expected auto or an integer, got null");
    EXPECT("NUL in a name", "listeners:\n  - name: \"a\\0b\"\n    address: 127.0.0.1:1\n",
           "t.yaml:2:11: listeners[0].name: NUL characters are not allowed");
    EXPECT("name too long",
           "listeners:\n  - address: 127.0.0.1:1\n    name: "
           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
           "aaaaaaaaa"
           "aaaaaaaaaaaaaaaaaaaaaaaa\n",
           "t.yaml:3:11: listeners[0].name: invalid name "
           "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" (expected 1 to 128 "
           "characters, no "
           "control characters)");
    EXPECT("empty name", "listeners:\n  - address: 127.0.0.1:1\n    name: \"\"\n",
           "t.yaml:3:11: listeners[0].name: invalid name \"\" (expected 1 to 128 characters, no control "
           "characters)");
}

static void test_value_errors(void)
{
    EXPECT("workers word", LST "workers: many\n",
           "t.yaml:3:10: workers: invalid value \"many\" (expected auto or 1..1024)");
    EXPECT("workers 0", LST "workers: 0\n", "t.yaml:3:10: workers: 0 is out of range (1..1024)");
    EXPECT("workers 1.5", LST "workers: 1.5\n",
           "t.yaml:3:10: workers: invalid value \"1.5\" (expected auto or 1..1024)");
    EXPECT("integer negative", LST "limits: {max_connections: -1}\n",
           "t.yaml:3:27: limits.max_connections: -1 is out of range (1..10000000)");
    EXPECT("integer overflow", LST "limits: {max_connections: 99999999999999999999999}\n",
           "t.yaml:3:27: limits.max_connections: 99999999999999999999999 is out of range (1..10000000)");
    EXPECT("integer garbage", LST "limits: {max_connections: 10k}\n",
           "t.yaml:3:27: limits.max_connections: invalid integer \"10k\" (expected 1..10000000)");
    EXPECT("duration syntax", LST "timeouts:\n  client_idle: 10 s\n",
           "t.yaml:4:16: timeouts.client_idle: invalid duration \"10 s\" (expected e.g. 250ms, 2s, 1m, 1h)");
    EXPECT("duration fraction", LST "timeouts: {client_idle: 1.5s}\n",
           "t.yaml:3:25: timeouts.client_idle: invalid duration \"1.5s\" (expected e.g. 250ms, 2s, 1m, 1h)");
    EXPECT("duration without unit", LST "timeouts: {client_idle: 10}\n",
           "t.yaml:3:25: timeouts.client_idle: invalid duration \"10\" (expected e.g. 250ms, 2s, 1m, 1h)");
    EXPECT("duration zero", LST "timeouts: {upstream_connect: 0s}\n",
           "t.yaml:3:30: timeouts.upstream_connect: 0s is out of range (1ms..24h)");
    EXPECT("duration too long", LST "timeouts: {upstream_connect: 25h}\n",
           "t.yaml:3:30: timeouts.upstream_connect: 25h is out of range (1ms..24h)");
    EXPECT("duration overflow", LST "shutdown: {drain_timeout: 99999999999999999999h}\n",
           "t.yaml:3:27: shutdown.drain_timeout: 99999999999999999999h is out of range (0s..24h)");
    EXPECT("size syntax", LST "limits: {max_body_bytes: 10 MiB}\n",
           "t.yaml:3:26: limits.max_body_bytes: invalid size \"10 MiB\" (expected e.g. 512, 16KiB, 10MiB)");
    EXPECT("size too small", LST "limits: {max_header_bytes: 512}\n",
           "t.yaml:3:28: limits.max_header_bytes: 512 is out of range (1KiB..1MiB)");
    EXPECT("size too big", LST "limits: {max_body_bytes: 2TiB}\n",
           "t.yaml:3:26: limits.max_body_bytes: 2TiB is out of range (0..1TiB)");
    EXPECT("unsent bound too big", LST "limits: {max_unsent_bytes: 2GiB}\n",
           "t.yaml:3:28: limits.max_unsent_bytes: 2GiB is out of range (0..1GiB)");
    EXPECT("enum", LST "access_log: {path: \"-\", format: xml}\n",
           "t.yaml:3:33: access_log.format: invalid value \"xml\" (expected json or combined)");
    EXPECT("empty access log path", LST "access_log: {path: \"\"}\n",
           "t.yaml:3:20: access_log.path: must not be empty (\"-\" is stdout)");
    EXPECT("address syntax", "listeners:\n  - address: localhost:80\n",
           "t.yaml:2:14: listeners[0].address: invalid address \"localhost:80\" (expected IPv4:port or "
           "[IPv6]:port)");
    EXPECT("address port", "listeners:\n  - address: 127.0.0.1:65536\n",
           "t.yaml:2:14: listeners[0].address: invalid port in \"127.0.0.1:65536\" (expected 1..65535)");
    EXPECT("empty listeners", "listeners: []\n", "t.yaml:1:12: listeners: at least one listener is required");
}

static void test_uniqueness_errors(void)
{
    EXPECT("duplicate listener address",
           "listeners:\n  - address: 127.0.0.1:80\n  - address: 127.0.0.1:080\n",
           "t.yaml:3:14: listeners[1].address: 127.0.0.1:080 is already used by listeners[0]");
    EXPECT("admin clashes with an earlier listener", LST "admin: {address: 127.0.0.1:8080}\n",
           "t.yaml:3:18: admin.address: 127.0.0.1:8080 is already used by listeners[0]");
    EXPECT("listener clashes with an earlier admin",
           "admin: {address: \"[::1]:9\"}\nlisteners:\n  - address: "
           "\"[0::1]:9\"\n",
           "t.yaml:3:14: listeners[0].address: [0::1]:9 is already used by admin.address");
    EXPECT("duplicate listener name",
           "listeners:\n  - {name: a, address: 127.0.0.1:1}\n  - {name: a, address: 127.0.0.1:2}\n",
           "t.yaml:3:12: listeners[1].name: duplicate name \"a\" (already used by listeners[0])");
    EXPECT("explicit name equal to a default name",
           "listeners:\n  - {address: 127.0.0.1:1}\n  - {name: \"listeners[0]\", address: 127.0.0.1:2}\n",
           "t.yaml:3:12: listeners[1].name: duplicate name \"listeners[0]\" (already used by listeners[0])");
    EXPECT("default name equal to an earlier explicit name",
           "listeners:\n  - {name: \"listeners[1]\", address: 127.0.0.1:1}\n  - {address: 127.0.0.1:2}\n",
           "t.yaml:3:5: listeners[1]: duplicate name \"listeners[1]\" (already used by listeners[0])");
    EXPECT("duplicate upstream name",
           LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n"
               "  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n",
           "t.yaml:6:11: upstreams[1].name: duplicate name \"u\" (already used by upstreams[0])");
    EXPECT("duplicate route name", BASE "  - {name: r, upstream: users}\n  - {name: r, upstream: users}\n",
           "t.yaml:9:12: routes[1].name: duplicate name \"r\" (already used by routes[0])");
    EXPECT("duplicate endpoint",
           LST "upstreams:\n  - name: u\n    endpoints:\n      - address: 127.0.0.1:1\n"
               "      - address: 127.0.0.1:1\n",
           "t.yaml:7:18: upstreams[0].endpoints[1].address: 127.0.0.1:1 is already listed as endpoints[0]");
}

static void test_upstream_errors(void)
{
#define UP LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n" /* lines 1-5 */
    EXPECT("no endpoints", LST "upstreams:\n  - name: u\n    endpoints: []\n",
           "t.yaml:5:16: upstreams[0].endpoints: at least one endpoint is required");
    EXPECT("weight 0", LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1, weight: 0}]\n",
           "t.yaml:5:48: upstreams[0].endpoints[0].weight: 0 is out of range (1..1000)");
    EXPECT(
        "balance value", UP "    balance: random\n",
        "t.yaml:6:14: upstreams[0].balance: invalid value \"random\" (expected round_robin, least_request or "
        "hash)");
    EXPECT("hash without hash_key", UP "    balance: hash\n",
           "t.yaml:6:14: upstreams[0].balance: hash needs hash_key");
    /* valid but without effect (the contract's own example has round_robin with a hash_key): a warning */
    EXPECT_WARN("hash_key without hash", UP "    hash_key: client_ip\n",
                "t.yaml:6:5: warning: upstreams[0].hash_key: only used with balance: hash (ignored)");
    EXPECT_WARN("hash_key with round_robin", UP "    balance: round_robin\n    hash_key: header:x-user\n",
                "t.yaml:7:5: warning: upstreams[0].hash_key: only used with balance: hash (ignored)");
    EXPECT("hash_key value", UP "    balance: hash\n    hash_key: route\n",
           "t.yaml:7:15: upstreams[0].hash_key: invalid value \"route\" (expected header:NAME, cookie:NAME, "
           "claim:NAME, client_ip or path)");
    EXPECT(
        "hash_key header name", UP "    balance: hash\n    hash_key: \"header:\"\n",
        "t.yaml:7:15: upstreams[0].hash_key: invalid header name in \"header:\" (expected letters, digits or "
        "!#$%&'*+-.^_`|~)");
    EXPECT("keepalive range", UP "    keepalive: 10001\n",
           "t.yaml:6:16: upstreams[0].keepalive: 10001 is out of range (0..10000)");
    EXPECT("max_concurrent_requests 0", UP "    max_concurrent_requests: 0\n",
           "t.yaml:6:30: upstreams[0].max_concurrent_requests: 0 is out of range (1..10000000)");
    EXPECT("health path", UP "    health_check: {path: health}\n",
           "t.yaml:6:26: upstreams[0].health_check.path: invalid path \"health\" (must start with /)");
    EXPECT("health interval", UP "    health_check: {interval: 1ms}\n",
           "t.yaml:6:30: upstreams[0].health_check.interval: 1ms is out of range (10ms..1h)");
    EXPECT("health thresholds", UP "    health_check: {healthy_after: 0, unhealthy_after: 101}\n",
           "t.yaml:6:35: upstreams[0].health_check.healthy_after: 0 is out of range (1..100)",
           "t.yaml:6:55: upstreams[0].health_check.unhealthy_after: 101 is out of range (1..100)");
    EXPECT("breaker ratio syntax", UP "    circuit_breaker: {failure_ratio: 50%}\n",
           "t.yaml:6:38: upstreams[0].circuit_breaker.failure_ratio: invalid number \"50%\" (expected a "
           "ratio above "
           "0 and at most 1, e.g. 0.5)");
    EXPECT("breaker ratio range", UP "    circuit_breaker: {failure_ratio: 0, consecutive_failures: 0}\n",
           "t.yaml:6:38: upstreams[0].circuit_breaker.failure_ratio: 0 is out of range (above 0, at most 1)",
           "t.yaml:6:63: upstreams[0].circuit_breaker.consecutive_failures: 0 is out of range (1..10000)");
    EXPECT(
        "breaker ratio above 1", UP "    circuit_breaker: {failure_ratio: 1.01}\n",
        "t.yaml:6:38: upstreams[0].circuit_breaker.failure_ratio: 1.01 is out of range (above 0, at most 1)");
    EXPECT("breaker window",
           UP "    circuit_breaker: {window: 500ms, open_for: 0s, half_open_requests: 1001}\n",
           "t.yaml:6:31: upstreams[0].circuit_breaker.window: 500ms is out of range (1s..1h)",
           "t.yaml:6:48: upstreams[0].circuit_breaker.open_for: 0s is out of range (1ms..24h)",
           "t.yaml:6:72: upstreams[0].circuit_breaker.half_open_requests: 1001 is out of range (1..1000)");
    EXPECT("breaker min_requests", UP "    circuit_breaker: {min_requests: 1000001}\n",
           "t.yaml:6:37: upstreams[0].circuit_breaker.min_requests: 1000001 is out of range (1..1000000)");
    EXPECT("retries attempts", UP "    retries: {attempts: 11}\n",
           "t.yaml:6:25: upstreams[0].retries.attempts: 11 is out of range (0..10)");
    EXPECT("retries on", UP "    retries: {on: [reset, 500]}\n",
           "t.yaml:6:27: upstreams[0].retries.on[1]: invalid value \"500\" (expected connect_failure, reset, "
           "502, "
           "503 or 504)");
    EXPECT("retries on not a list", UP "    retries: {on: reset}\n",
           "t.yaml:6:19: upstreams[0].retries.on: expected a list, got \"reset\"");
#undef UP
}

static void test_route_errors(void)
{
    EXPECT("reference", BASE "  - upstream: userz\n",
           "t.yaml:8:15: routes[0].upstream: no upstream named \"userz\"");
    EXPECT("split reference", BASE "  - split:\n      - {upstream: users}\n      - {upstream: nope}\n",
           "t.yaml:10:20: routes[0].split[1].upstream: no upstream named \"nope\"");
    EXPECT("no target", BASE "  - match: {path: /}\n",
           "t.yaml:8:5: routes[0]: needs one of upstream, split or direct_response");
    EXPECT(
        "two targets", BASE "  - upstream: users\n    direct_response: {status: 200}\n",
        "t.yaml:9:5: routes[0].direct_response: only one of upstream, split and direct_response is allowed");
    EXPECT(
        "three targets",
        BASE "  - split: [{upstream: users}]\n    direct_response: {status: 200}\n    upstream: users\n",
        "t.yaml:9:5: routes[0].direct_response: only one of upstream, split and direct_response is allowed",
        "t.yaml:10:5: routes[0].upstream: only one of upstream, split and direct_response is allowed");
    EXPECT("empty split", BASE "  - split: []\n",
           "t.yaml:8:12: routes[0].split: expected at least one upstream");
    EXPECT("split weights 0", BASE "  - split: [{upstream: users, weight: 0}]\n",
           "t.yaml:8:12: routes[0].split: the weights add up to 0 (at least one must be above 0)");
    EXPECT("split weight range", BASE "  - split: [{upstream: users, weight: 1001}]\n",
           "t.yaml:8:39: routes[0].split[0].weight: 1001 is out of range (0..1000)");
    EXPECT("split twice the same upstream", BASE "  - split: [{upstream: users}, {upstream: users}]\n",
           "t.yaml:8:43: routes[0].split[1].upstream: upstream \"users\" is already in split[0]");
    EXPECT("status", BASE "  - direct_response: {status: 99}\n",
           "t.yaml:8:31: routes[0].direct_response.status: 99 is out of range (200..599)");
    EXPECT("body type", BASE "  - direct_response: {status: 200, body: [a]}\n",
           "t.yaml:8:42: routes[0].direct_response.body: expected a string, got a list");
    EXPECT("path and path_prefix", BASE "  - upstream: users\n    match: {path_prefix: /a, path: /a}\n",
           "t.yaml:9:30: routes[0].match.path: only one of path and path_prefix is allowed");
    EXPECT("path relative", BASE "  - upstream: users\n    match: {path: a}\n",
           "t.yaml:9:19: routes[0].match.path: invalid path \"a\" (must start with /)");
    EXPECT("path query", BASE "  - upstream: users\n    match: {path_prefix: /a?b}\n",
           "t.yaml:9:26: routes[0].match.path_prefix: invalid path \"/a?b\" ('?' is not allowed: routes "
           "match the "
           "path without the query)");
    EXPECT("path dots", BASE "  - upstream: users\n    match: {path: /a/../b}\n",
           "t.yaml:9:19: routes[0].match.path: invalid path \"/a/../b\" ('.' and '..' segments are not "
           "allowed)");
    EXPECT("path space", BASE "  - upstream: users\n    match: {path: \"/a b\"}\n",
           "t.yaml:9:19: routes[0].match.path: invalid path \"/a b\" (only visible ASCII is allowed; "
           "percent-encode "
           "other bytes)");
    EXPECT("host", BASE "  - upstream: users\n    match: {host: \"a.*.com\"}\n",
           "t.yaml:9:19: routes[0].match.host: invalid host \"a.*.com\" (\"*\" is allowed only as a leading "
           "\"*.\")");
    EXPECT("host port", BASE "  - upstream: users\n    match: {host: a.com:8080}\n",
           "t.yaml:9:19: routes[0].match.host: invalid host \"a.com:8080\" (a port is not allowed: hosts are "
           "compared without it)");
    EXPECT("methods empty", BASE "  - upstream: users\n    match: {methods: []}\n",
           "t.yaml:9:22: routes[0].match.methods: expected at least one method (leave methods out to match "
           "any)");
    EXPECT("method unknown", BASE "  - upstream: users\n    match: {methods: [GET, get, FOO]}\n",
           "t.yaml:9:28: routes[0].match.methods[1]: unknown method \"get\" (expected an HTTP method in "
           "upper case, "
           "e.g. GET)",
           "t.yaml:9:33: routes[0].match.methods[2]: unknown method \"FOO\" (expected an HTTP method in "
           "upper case, "
           "e.g. GET)");
    EXPECT("match header name", BASE "  - upstream: users\n    match: {headers: {\"x y\": a}}\n",
           "t.yaml:9:23: routes[0].match.headers: invalid header name \"x y\" (expected letters, digits or "
           "!#$%&'*+-.^_`|~)");
    EXPECT("match header duplicate", BASE "  - upstream: users\n    match: {headers: {x-a: a, X-A: b}}\n",
           "t.yaml:9:31: routes[0].match.headers: duplicate header \"X-A\"");
    EXPECT("match header value", BASE "  - upstream: users\n    match: {headers: {x-a: \"a\\r\\nb: c\"}}\n",
           "t.yaml:9:28: routes[0].match.headers.x-a: invalid header value \"a\\x0d\\x0ab: c\" (CR, LF and "
           "NUL are "
           "not allowed)");
    EXPECT("match headers not a map", BASE "  - upstream: users\n    match: {headers: [x-a]}\n",
           "t.yaml:9:22: routes[0].match.headers: expected a mapping of header names to values, got a list");
    EXPECT("match header value not a string",
           BASE "  - upstream: users\n    match: {headers: {x-a: {b: c}}}\n",
           "t.yaml:9:28: routes[0].match.headers.x-a: expected a header value, got a mapping");
}

static void test_strip_and_rewrite_errors(void)
{
    EXPECT("strip with direct", BASE "  - direct_response: {status: 200}\n    strip_prefix: /\n",
           "t.yaml:9:5: routes[0].strip_prefix: not allowed with direct_response");
    EXPECT("strip not a prefix",
           BASE "  - upstream: users\n    match: {path_prefix: /api}\n    strip_prefix: /users\n",
           "t.yaml:10:19: routes[0].strip_prefix: \"/users\" is not a whole-segment prefix of the match path "
           "\"/api\"");
    EXPECT("strip not on a segment",
           BASE "  - upstream: users\n    match: {path: /apix}\n    strip_prefix: /api\n",
           "t.yaml:10:19: routes[0].strip_prefix: \"/api\" is not a whole-segment prefix of the match path "
           "\"/apix\"");
    EXPECT("strip against the default /", BASE "  - upstream: users\n    strip_prefix: /api\n",
           "t.yaml:9:19: routes[0].strip_prefix: \"/api\" is not a whole-segment prefix of the match path "
           "\"/\"");
    EXPECT("strip trailing slash",
           BASE "  - upstream: users\n    match: {path_prefix: /api/}\n    strip_prefix: /api/\n",
           "t.yaml:10:19: routes[0].strip_prefix: invalid path \"/api/\" (must not end with / (the rest of "
           "the path "
           "keeps its leading /))");
    EXPECT("strip relative", BASE "  - upstream: users\n    strip_prefix: api\n",
           "t.yaml:9:19: routes[0].strip_prefix: invalid path \"api\" (must start with /)");
    EXPECT("set framing header",
           BASE "  - upstream: users\n    request_headers: {set: {Content-Length: \"1\"}}\n",
           "t.yaml:9:29: routes[0].request_headers.set: Content-Length cannot be set (framing and hop-by-hop "
           "headers are managed by turnpike)");
    EXPECT("set hop-by-hop header",
           BASE "  - upstream: users\n    response_headers: {set: {connection: close}}\n",
           "t.yaml:9:30: routes[0].response_headers.set: connection cannot be set (framing and hop-by-hop "
           "headers "
           "are managed by turnpike)");
    EXPECT("host in responses", BASE "  - upstream: users\n    response_headers: {set: {Host: x}}\n",
           "t.yaml:9:30: routes[0].response_headers.set: host can only be set in request_headers");
    EXPECT("remove host", BASE "  - upstream: users\n    request_headers: {remove: [host]}\n",
           "t.yaml:9:32: routes[0].request_headers.remove[0]: host cannot be removed (every HTTP/1.1 request "
           "needs "
           "it)");
    EXPECT(
        "remove framing",
        BASE "  - upstream: users\n    response_headers: {remove: [x-a, transfer-encoding]}\n",
        "t.yaml:9:38: routes[0].response_headers.remove[1]: transfer-encoding cannot be removed (framing and "
        "hop-by-hop headers are managed by turnpike)");
    EXPECT("remove duplicate", BASE "  - upstream: users\n    request_headers: {remove: [x-a, X-A]}\n",
           "t.yaml:9:37: routes[0].request_headers.remove[1]: duplicate header \"X-A\"");
    EXPECT("remove and set",
           BASE "  - upstream: users\n    request_headers: {set: {x-a: b}, remove: [x-a]}\n",
           "t.yaml:9:47: routes[0].request_headers.remove[0]: x-a is also in request_headers.set (set "
           "replaces it "
           "already)");
    EXPECT("remove bad name", BASE "  - upstream: users\n    request_headers: {remove: [\"a:b\"]}\n",
           "t.yaml:9:32: routes[0].request_headers.remove[0]: invalid header name \"a:b\" (expected letters, "
           "digits "
           "or !#$%&'*+-.^_`|~)");
    EXPECT(
        "set value", BASE "  - upstream: users\n    request_headers: {set: {x-a: \" b\"}}\n",
        "t.yaml:9:34: routes[0].request_headers.set.x-a: invalid header value \" b\" (leading and trailing "
        "whitespace is not allowed)");
    EXPECT("set null value", BASE "  - upstream: users\n    request_headers:\n      set:\n        x-a:\n",
           "t.yaml:11:9: routes[0].request_headers.set.x-a: expected a header value, got null");
    EXPECT("rewrite unknown key", BASE "  - upstream: users\n    request_headers: {add: {x: y}}\n",
           "t.yaml:9:23: routes[0].request_headers.add: unknown key");
    EXPECT("rate syntax", BASE "  - upstream: users\n    rate_limit: {rate: 10/x}\n",
           "t.yaml:9:24: routes[0].rate_limit.rate: invalid rate \"10/x\" (expected e.g. 100/s, 6000/m, "
           "50000/h)");
    EXPECT("rate zero", BASE "  - upstream: users\n    rate_limit: {rate: 0/s}\n",
           "t.yaml:9:24: routes[0].rate_limit.rate: 0/s is out of range (1..1000000000 per s, m or h)");
    EXPECT("burst zero", BASE "  - upstream: users\n    rate_limit: {rate: 1/s, burst: 0}\n",
           "t.yaml:9:36: routes[0].rate_limit.burst: 0 is out of range (1..1000000000)");
    EXPECT("rate key", BASE "  - upstream: users\n    rate_limit: {rate: 1/s, key: path}\n",
           "t.yaml:9:34: routes[0].rate_limit.key: invalid value \"path\" (expected client_ip, header:NAME, "
           "claim:NAME or route)");
}

static void test_more_errors(void)
{
    EXPECT("null header name", BASE "  - upstream: users\n    match: {headers: {~: a}}\n",
           "t.yaml:9:23: routes[0].match.headers: expected a header name, got null");
    EXPECT("null upstream", BASE "  - upstream: ~\n",
           "t.yaml:8:15: routes[0].upstream: expected an upstream name, got null");
    /* A broken upstreams section is one mistake, not one per route. */
    EXPECT("unusable upstreams section", LST "upstreams: {name: u}\nroutes:\n  - upstream: u\n",
           "t.yaml:3:12: upstreams: expected a list, got a mapping");
    EXPECT("keys must be strings, nested", LST "limits: {[a]: 1}\n",
           "t.yaml:3:10: limits: keys must be strings, got a list");

    /* direct_response.body is capped at 1 MiB. */
    static const char head[] = BASE "  - direct_response:\n      status: 200\n      body: \"";
    size_t body = (1u << 20) + 1;
    char *yaml = malloc(sizeof(head) + body + 3);
    if (yaml) {
        memcpy(yaml, head, sizeof(head) - 1);
        memset(yaml + sizeof(head) - 1, 'x', body);
        memcpy(yaml + sizeof(head) - 1 + body, "\"\n", 3);
        EXPECT("body too long", yaml,
               "t.yaml:10:13: routes[0].direct_response.body: too long (1048577 bytes, at most 1MiB)");
        free(yaml);
    }

    /* No diag: still refused, nothing to report to. */
    ok(tp_config_parse("t.yaml", "workers: 0\n", 11, NULL) == NULL, "NULL diag: refused");
    struct tp_config *cfg = tp_config_parse("t.yaml", LST, strlen(LST), NULL);
    ok(cfg != NULL, "NULL diag: accepted");
    tp_config_destroy(cfg);
    tp_config_destroy(NULL);
}

/* All errors of a file in one run, sorted by position even though the
 * checks run in another order (upstreams before routes, references last). */
static void test_many_errors_in_order(void)
{
    struct tp_diag d = {0};
    static const char *const want[] = {
        DATA "bad_many.yaml:2:10: workers: 0 is out of range (1..1024)",
        DATA "bad_many.yaml:5:5: listeners[0].adress: unknown key",
        DATA "bad_many.yaml:6:10: listeners[0].tls: missing required key \"certificates\"",
        DATA "bad_many.yaml:9:16: timeouts.client_idle: invalid duration \"10 s\" (expected e.g. 250ms, 2s, "
             "1m, 1h)",
        DATA "bad_many.yaml:12:13: routes[0].upstream: no upstream named \"userz\"",
        DATA "bad_many.yaml:13:3: routes[1]: needs one of upstream, split or direct_response",
        DATA "bad_many.yaml:13:17: routes[1].match.path: invalid path \"nope\" (must start with /)",
        DATA "bad_many.yaml:17:18: upstreams[0].endpoints[0].address: invalid host \"local_host\" in "
             "\"local_host:1\" (expected letters, digits, '-' and '.')",
        DATA "bad_many.yaml:19:5: upstreams[0].balance: duplicate key",
    };

    ok(tp_config_load(DATA "bad_many.yaml", &d) == NULL, "bad_many.yaml refused");
    is_int(d.n, sizeof(want) / sizeof(want[0]), "bad_many.yaml: every error reported");
    for (size_t i = 0; i < d.n && i < sizeof(want) / sizeof(want[0]); i++)
        is_str(d.msgs[i], want[i], "bad_many.yaml message %zu", i);
    tp_diag_dispose(&d);
}

/* routes[].upgrade and timeouts.tunnel_idle */
static void test_upgrade(void)
{
    struct tp_config *cfg = parse_ok("upgrade default", BASE "  - upstream: users\n");
    if (cfg) {
        ok(cfg->routes[0].upgrade == NULL, "upgrade absent: the default [websocket]");
        is_int(cfg->tunnel_idle_ms, 3600 * 1000, "tunnel_idle default 1h");
    }
    tp_config_destroy(cfg);

    cfg = parse_ok("upgrade list", "timeouts: {tunnel_idle: 90s}\n" BASE
                                   "  - upstream: users\n    upgrade: [WebSocket, foo/2]\n"
                                   "  - upstream: users\n    match: {path: /none}\n    upgrade: []\n");
    if (cfg) {
        is_int(cfg->routes[0].n_upgrade, 2, "two tokens");
        is_str(cfg->routes[0].upgrade[0], "websocket", "tokens are lowercased");
        is_str(cfg->routes[0].upgrade[1], "foo/2", "a token with a version");
        ok(cfg->routes[1].upgrade != NULL && cfg->routes[1].n_upgrade == 0, "upgrade: [] tunnels nothing");
        is_int(cfg->tunnel_idle_ms, 90 * 1000, "tunnel_idle");
    }
    tp_config_destroy(cfg);

    EXPECT_WARN("h2c is never tunnelled", BASE "  - upstream: users\n    upgrade: [websocket, h2c]\n",
                "t.yaml:9:26: warning: routes[0].upgrade[1]: h2c is never tunnelled (ignored)");
    EXPECT(
        "bad token", BASE "  - upstream: users\n    upgrade: [\"web socket\"]\n",
        "t.yaml:9:15: routes[0].upgrade[0]: invalid upgrade token \"web socket\" (expected a protocol name "
        "such as websocket)");
    EXPECT("duplicate token", BASE "  - upstream: users\n    upgrade: [websocket, WEBSOCKET]\n",
           "t.yaml:9:26: routes[0].upgrade[1]: duplicate upgrade token \"WEBSOCKET\"");
    EXPECT("tunnel_idle zero", "timeouts: {tunnel_idle: 0s}\n" LST,
           "t.yaml:1:25: timeouts.tunnel_idle: 0s is out of range (1ms..168h)");
}

/* claim:NAME as hash_key (tenant pinning) and rate_limit.key */
static void test_claim_keys(void)
{
    struct tp_config *cfg = parse_ok("hash_key claim:NAME",
                                     LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n"
                                         "    balance: hash\n    hash_key: claim:Tenant.Id\n");
    if (cfg) {
        is_int(cfg->upstreams[0].hash_key.kind, TP_KEY_CLAIM, "hash_key kind claim");
        is_str(cfg->upstreams[0].hash_key.name, "Tenant.Id", "claim name as written");
        is_int(cfg->upstreams[0].hash_key.name_len, 9, "claim name_len");
    }
    tp_config_destroy(cfg);
    EXPECT("rate_limit claim without a name",
           BASE "  - upstream: users\n    rate_limit: {rate: 1/s, key: \"claim:\"}\n",
           "t.yaml:9:34: routes[0].rate_limit.key: invalid claim name in \"claim:\" (expected a name after "
           "claim:)");
    EXPECT("hash_key claim without a name",
           LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n    balance: hash\n"
               "    hash_key: \"claim:\"\n",
           "t.yaml:7:15: upstreams[0].hash_key: invalid claim name in \"claim:\" (expected a name after "
           "claim:)");
}

/* ---- authentication: auth[] providers, routes[].auth, claim:NAME keys ---- */

/* Lines 1-3; auth items start on line 4. */
#define AUTH LST "auth:\n"
/* Appended after the auth items: a route that uses provider P (so no "not used" warning). */
#define USE(p)                                                                                               \
    "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\nroutes:\n  - upstream: u\n    auth: " \
    "{provider: " p "}\n"
/* Appended after BASE's routes: providers t (jwt) and p (api_key). */
#define PROVIDERS "auth:\n  - name: t\n    jwt: {keys: /k}\n  - name: p\n    api_key: {keys: /a}\n"

static void test_auth_good(void)
{
    static const char yaml[] = LST                                                                 /* 1-2 */
        "auth:\n"                                                                                  /* 3 */
        "  - name: tenants\n"                                                                      /* 4 */
        "    jwt:\n"                                                                               /* 5 */
        "      keys: /etc/turnpike/jwks.json\n"                                                    /* 6 */
        "      issuer: https://id.example.com\n"                                                   /* 7 */
        "      audiences: [orders-api, \"billing\"]\n"                                             /* 8 */
        "      from: [header:Authorization, header:X-Token, cookie:Session, query:access_token]\n" /* 9 */
        "      clock_skew: 1m\n"                                                                   /* 10 */
        "      forward_claims: {sub: X-User-Id, tenant: x-tenant-id}\n"                            /* 11 */
        "  - name: partners\n"                                                                     /* 12 */
        "    api_key:\n"                                                                           /* 13 */
        "      header: X-Partner-Key\n"                                                            /* 14 */
        "      keys: \"/etc/turnpike/api-keys.yaml\"\n"                                            /* 15 */
        "  - name: jwt-defaults\n"                                                                 /* 16 */
        "    jwt: {keys: /k.json}\n"                                                               /* 17 */
        "  - name: key-defaults\n"                                                                 /* 18 */
        "    api_key: {keys: /a.yaml}\n"                                                           /* 19 */
        "upstreams:\n"                                                                             /* 20 */
        "  - name: orders\n"                                                                       /* 21 */
        "    endpoints: [{address: 127.0.0.1:9001}]\n"                                             /* 22 */
        "    balance: hash\n"                                                                      /* 23 */
        "    hash_key: claim:tenant\n"                                                             /* 24 */
        "routes:\n"                                                                                /* 25 */
        "  - name: orders\n"
        "    match: {path_prefix: /orders}\n"
        "    upstream: orders\n"
        "    auth:\n"
        "      provider: tenants\n"
        "      require_claims: {scope: orders:read, level: 3, admin: true, q: \"07\", e: \"\"}\n"
        "      forward_credential: true\n"
        "    rate_limit: {rate: 100/s, burst: 200, key: claim:tenant}\n"
        "  - upstream: orders\n"
        "    match: {path_prefix: /partners}\n"
        "    auth: {provider: partners}\n"
        "  - upstream: orders\n"
        "    match: {path: /d}\n"
        "    auth: {provider: jwt-defaults, forward_credential: false}\n"
        "    rate_limit: {rate: 1/s, key: claim:sub}\n"
        "  - upstream: orders\n"
        "    match: {path: /k}\n"
        "    auth: {provider: key-defaults}\n"
        "  - upstream: orders\n"
        "    match: {path: /open}\n";
    struct tp_config *cfg = parse_ok("auth: every key", yaml);

    if (!cfg)
        return;
    is_int(cfg->n_auth, 4, "four providers");
    struct tp_cfg_auth *a = &cfg->auth[0];
    is_str(a->name, "tenants", "provider name");
    ok(a->pos.line == 4 && a->pos.col == 5, "provider pos");
    ok(a->jwt != NULL && a->api_key == NULL, "jwt provider");
    struct tp_cfg_jwt *j = a->jwt;
    if (j) {
        is_str(j->keys, "/etc/turnpike/jwks.json", "jwt keys path, not read by the loader");
        ok(j->keys_pos.line == 6 && j->keys_pos.col == 13, "keys_pos is the value's position");
        is_str(j->issuer, "https://id.example.com", "issuer");
        is_int(j->n_audiences, 2, "two audiences");
        if (j->n_audiences == 2) {
            is_str(j->audiences[0], "orders-api", "audience 0");
            is_str(j->audiences[1], "billing", "audience 1");
        }
        is_int(j->n_from, 4, "four sources");
        if (j->n_from == 4) {
            ok(j->from[0].kind == TP_FROM_BEARER && j->from[0].name == NULL && j->from[0].name_len == 0,
               "header:Authorization (any case) is the bearer token");
            ok(j->from[1].kind == TP_FROM_HEADER && !strcmp(j->from[1].name, "x-token") &&
                   j->from[1].name_len == 7,
               "header:NAME lowercased");
            ok(j->from[2].kind == TP_FROM_COOKIE && !strcmp(j->from[2].name, "Session") &&
                   j->from[2].name_len == 7,
               "cookie name as written");
            ok(j->from[3].kind == TP_FROM_QUERY && !strcmp(j->from[3].name, "access_token") &&
                   j->from[3].name_len == 12,
               "query name as written");
        }
        is_int(j->clock_skew_ms, 60000, "clock_skew");
        is_int(j->n_forward_claims, 2, "two forwarded claims");
        if (j->n_forward_claims == 2) {
            ok(!strcmp(j->forward_claims[0].claim, "sub") &&
                   !strcmp(j->forward_claims[0].header, "x-user-id") && j->forward_claims[0].header_len == 9,
               "forward sub, header lowercased");
            ok(!strcmp(j->forward_claims[1].claim, "tenant") &&
                   !strcmp(j->forward_claims[1].header, "x-tenant-id"),
               "forward tenant");
        }
    }
    a = &cfg->auth[1];
    is_str(a->name, "partners", "api key provider name");
    ok(a->api_key != NULL && a->jwt == NULL, "api_key provider");
    if (a->api_key) {
        is_str(a->api_key->header, "x-partner-key", "api key header lowercased");
        is_int(a->api_key->header_len, 13, "api key header_len");
        is_str(a->api_key->keys, "/etc/turnpike/api-keys.yaml", "api key keys path");
        ok(a->api_key->keys_pos.line == 15 && a->api_key->keys_pos.col == 13,
           "keys_pos at the opening quote");
    }
    j = cfg->auth[2].jwt;
    ok(j != NULL, "jwt with defaults");
    if (j) {
        ok(j->issuer == NULL, "no issuer: iss not checked");
        ok(j->audiences == NULL && j->n_audiences == 0, "no audiences: aud not checked");
        ok(j->n_from == 1 && j->from[0].kind == TP_FROM_BEARER && j->from[0].name == NULL,
           "from defaults to [header:authorization]");
        is_int(j->clock_skew_ms, 30000, "clock_skew default 30s");
        ok(j->forward_claims == NULL && j->n_forward_claims == 0, "no forwarded claims");
        ok(j->keys_pos.line == 17 && j->keys_pos.col == 17, "keys_pos in a flow mapping");
    }
    struct tp_cfg_api_key *k = cfg->auth[3].api_key;
    ok(k != NULL, "api_key with defaults");
    if (k) {
        is_str(k->header, "x-api-key", "api key header default");
        is_int(k->header_len, 9, "api key header_len default");
    }

    is_int(cfg->upstreams[0].hash_key.kind, TP_KEY_CLAIM, "hash_key claim:NAME");
    is_str(cfg->upstreams[0].hash_key.name, "tenant", "hash_key claim name");
    is_int(cfg->upstreams[0].hash_key.name_len, 6, "hash_key claim name_len");

    is_int(cfg->n_routes, 5, "five routes");
    struct tp_cfg_route_auth *ra = cfg->routes[0].auth;
    ok(ra != NULL, "route auth");
    if (ra) {
        is_int(ra->provider, 0, "provider index");
        ok(ra->forward_credential, "forward_credential true");
        is_int(ra->n_require_claims, 5, "five required claims");
        if (ra->n_require_claims == 5) {
            ok(!strcmp(ra->require_claims[0].name, "scope") && ra->require_claims[0].name_len == 5 &&
                   !strcmp(ra->require_claims[0].value, "orders:read") &&
                   ra->require_claims[0].value_len == 11,
               "require scope");
            is_str(ra->require_claims[1].value, "3", "a number kept as its text");
            is_str(ra->require_claims[2].value, "true", "a boolean kept as its text");
            is_str(ra->require_claims[3].value, "07", "a quoted number as written");
            ok(ra->require_claims[4].value && ra->require_claims[4].value_len == 0, "an empty string");
        }
    }
    struct tp_cfg_rate_limit *rl = cfg->routes[0].rate_limit;
    ok(rl && rl->key.kind == TP_KEY_CLAIM && !strcmp(rl->key.name, "tenant") && rl->key.name_len == 6,
       "rate_limit.key claim:tenant");
    ra = cfg->routes[1].auth;
    ok(ra && ra->provider == 1 && ra->n_require_claims == 0 && ra->require_claims == NULL &&
           !ra->forward_credential,
       "route auth defaults: forward_credential false, no claims required");
    ok(cfg->routes[2].auth && cfg->routes[2].auth->provider == 2, "third provider");
    ok(cfg->routes[2].rate_limit && cfg->routes[2].rate_limit->key.kind == TP_KEY_CLAIM &&
           !strcmp(cfg->routes[2].rate_limit->key.name, "sub"),
       "claim:sub");
    ok(cfg->routes[4].auth == NULL, "no auth = NULL");
    tp_config_destroy(cfg);

    cfg = parse_ok("auth: [] is fine", LST "auth: []\n");
    ok(cfg && cfg->n_auth == 0 && cfg->auth == NULL, "no providers");
    tp_config_destroy(cfg);

    cfg = parse_ok("clock_skew 0s, sources that differ", AUTH "  - name: a\n    jwt:\n      keys: /k\n"
                                                              "      clock_skew: 0s\n"
                                                              "      from: [cookie:t, cookie:T, query:t, "
                                                              "header:t, \"query:a.b[]\"]\n" USE("a"));
    if (cfg) {
        is_int(cfg->auth[0].jwt->clock_skew_ms, 0, "clock_skew 0s");
        is_int(cfg->auth[0].jwt->n_from, 5, "cookie names are case-sensitive; kinds differ");
        is_str(cfg->auth[0].jwt->from[4].name, "a.b[]", "query name with punctuation");
    }
    tp_config_destroy(cfg);

    cfg = parse_ok("api_key from authorization",
                   AUTH "  - name: a\n    api_key: {header: Authorization, keys: k.yaml}\n" USE("a"));
    ok(cfg && !strcmp(cfg->auth[0].api_key->header, "authorization"), "authorization may carry an api key");
    tp_config_destroy(cfg);
}

static void test_auth_warnings(void)
{
    EXPECT_WARN("provider not used",
                AUTH "  - name: a\n    jwt: {keys: /k}\n  - name: b\n    jwt: {keys: /k}\n" USE("b"),
                "t.yaml:4:5: warning: auth[0]: provider \"a\" is not used by any route");
    EXPECT_WARN(
        "clock_skew in milliseconds", AUTH "  - name: a\n    jwt: {keys: /k, clock_skew: 1500ms}\n" USE("a"),
        "t.yaml:5:33: warning: auth[0].jwt.clock_skew: only whole seconds are used (1500ms counts as 1s)");
    EXPECT_WARN(
        "clock_skew below a second", AUTH "  - name: a\n    jwt: {keys: /k, clock_skew: 250ms}\n" USE("a"),
        "t.yaml:5:33: warning: auth[0].jwt.clock_skew: only whole seconds are used (250ms counts as 0s)");
    /* after an error, "not used" is not said: the references are not all known */
    EXPECT("no unused warning next to an error", AUTH "  - name: a\n    jwt: {keys: /k}\n" USE("b"),
           "t.yaml:11:22: routes[0].auth.provider: unknown auth provider \"b\"");
}

static void test_auth_provider_errors(void)
{
    EXPECT("auth not a list", LST "auth: {name: a}\n" USE("a"),
           "t.yaml:3:7: auth: expected a list, got a mapping");
    EXPECT("provider missing name", AUTH "  - jwt: {keys: /k}\n",
           "t.yaml:4:5: auth[0]: missing required key \"name\"");
    EXPECT(
        "provider invalid name", AUTH "  - name: \"\"\n    jwt: {keys: /k}\n",
        "t.yaml:4:11: auth[0].name: invalid name \"\" (expected 1 to 128 characters, no control characters)");
    EXPECT("provider with neither", AUTH "  - name: a\n", "t.yaml:4:5: auth[0]: needs one of jwt or api_key");
    EXPECT("provider with both", AUTH "  - name: a\n    jwt: {keys: /k}\n    api_key: {keys: /a}\n",
           "t.yaml:6:5: auth[0].api_key: only one of jwt and api_key is allowed");
    EXPECT("provider with both, api_key first",
           AUTH "  - name: a\n    api_key: {keys: /a}\n    jwt: {keys: /k}\n",
           "t.yaml:6:5: auth[0].jwt: only one of jwt and api_key is allowed");
    EXPECT("provider unknown key", AUTH "  - name: a\n    oidc: {}\n",
           "t.yaml:4:5: auth[0]: needs one of jwt or api_key", "t.yaml:5:5: auth[0].oidc: unknown key");
    EXPECT("duplicate provider name",
           AUTH "  - name: a\n    jwt: {keys: /k}\n  - name: a\n    api_key: {keys: /a}\n",
           "t.yaml:6:11: auth[1].name: duplicate name \"a\" (already used by auth[0])");
    EXPECT("jwt not a mapping", AUTH "  - name: a\n    jwt: /k\n",
           "t.yaml:5:10: auth[0].jwt: expected a mapping, got \"/k\"");
    EXPECT("jwt without keys", AUTH "  - name: a\n    jwt: {issuer: x}\n",
           "t.yaml:5:10: auth[0].jwt: missing required key \"keys\"");
    EXPECT("jwt keys empty", AUTH "  - name: a\n    jwt: {keys: \"\"}\n",
           "t.yaml:5:17: auth[0].jwt.keys: must not be empty");
    EXPECT("jwt keys a list", AUTH "  - name: a\n    jwt: {keys: [a]}\n",
           "t.yaml:5:17: auth[0].jwt.keys: expected a file path, got a list");
    EXPECT("jwt unknown key", AUTH "  - name: a\n    jwt: {keys: /k, algorithms: [RS256]}\n",
           "t.yaml:5:21: auth[0].jwt.algorithms: unknown key");
    EXPECT("issuer empty", AUTH "  - name: a\n    jwt: {keys: /k, issuer: \"\"}\n",
           "t.yaml:5:29: auth[0].jwt.issuer: must not be empty");
    EXPECT("issuer null", AUTH "  - name: a\n    jwt:\n      keys: /k\n      issuer:\n",
           "t.yaml:7:7: auth[0].jwt.issuer: expected a string, got null");
    EXPECT(
        "audiences empty", AUTH "  - name: a\n    jwt: {keys: /k, audiences: []}\n",
        "t.yaml:5:32: auth[0].jwt.audiences: expected at least one audience (leave audiences out to accept "
        "any)");
    EXPECT("audiences a string", AUTH "  - name: a\n    jwt: {keys: /k, audiences: x}\n",
           "t.yaml:5:32: auth[0].jwt.audiences: expected a list, got \"x\"");
    EXPECT("audience empty and twice", AUTH "  - name: a\n    jwt: {keys: /k, audiences: [x, \"\", x, {}]}\n",
           "t.yaml:5:36: auth[0].jwt.audiences[1]: must not be empty",
           "t.yaml:5:40: auth[0].jwt.audiences[2]: duplicate audience \"x\"",
           "t.yaml:5:43: auth[0].jwt.audiences[3]: expected a string, got a mapping");
    EXPECT("clock_skew range", AUTH "  - name: a\n    jwt: {keys: /k, clock_skew: 2h}\n",
           "t.yaml:5:33: auth[0].jwt.clock_skew: 2h is out of range (0s..1h)");
    EXPECT("clock_skew syntax", AUTH "  - name: a\n    jwt: {keys: /k, clock_skew: 30}\n",
           "t.yaml:5:33: auth[0].jwt.clock_skew: invalid duration \"30\" (expected e.g. 250ms, 2s, 1m, 1h)");
    EXPECT("api_key not a mapping", AUTH "  - name: a\n    api_key: [x]\n",
           "t.yaml:5:14: auth[0].api_key: expected a mapping, got a list");
    EXPECT("api_key without keys", AUTH "  - name: a\n    api_key: {header: x-key}\n",
           "t.yaml:5:14: auth[0].api_key: missing required key \"keys\"");
    EXPECT("api_key keys empty", AUTH "  - name: a\n    api_key: {keys: \"\"}\n",
           "t.yaml:5:21: auth[0].api_key.keys: must not be empty");
    EXPECT("api_key header name", AUTH "  - name: a\n    api_key: {keys: /a, header: \"x key\"}\n",
           "t.yaml:5:33: auth[0].api_key.header: invalid header name \"x key\" (expected letters, digits or "
           "!#$%&'*+-.^_`|~)");
    EXPECT("api_key header managed", AUTH "  - name: a\n    api_key: {keys: /a, header: Transfer-Encoding}\n",
           "t.yaml:5:33: auth[0].api_key.header: Transfer-Encoding cannot carry a credential (framing and "
           "hop-by-hop headers are managed by turnpike)");
    EXPECT("api_key header null", AUTH "  - name: a\n    api_key:\n      keys: /a\n      header: ~\n",
           "t.yaml:7:15: auth[0].api_key.header: expected a header name, got null");
}

static void test_auth_from_errors(void)
{
#define FROM(list)                                                                                           \
    AUTH "  - name: a\n    jwt:\n      keys: /k\n      from: " list "\n" /* from on line 7, col 13 */
    EXPECT("from empty", FROM("[]"),
           "t.yaml:7:13: auth[0].jwt.from: expected at least one source (leave from out for "
           "header:authorization)");
    EXPECT("from a string", FROM("header:authorization"),
           "t.yaml:7:13: auth[0].jwt.from: expected a list, got \"header:authorization\"");
    EXPECT("from unknown kind", FROM("[bearer, \"Header:x\", path]"),
           "t.yaml:7:14: auth[0].jwt.from[0]: invalid value \"bearer\" (expected header:authorization, "
           "header:NAME, cookie:NAME or query:NAME)",
           "t.yaml:7:22: auth[0].jwt.from[1]: invalid value \"Header:x\" (expected header:authorization, "
           "header:NAME, cookie:NAME or query:NAME)",
           "t.yaml:7:34: auth[0].jwt.from[2]: invalid value \"path\" (expected header:authorization, "
           "header:NAME, cookie:NAME or query:NAME)");
    EXPECT(
        "from bad names", FROM("[\"header:x y\", \"cookie:\", \"query:a=b\", \"query:\", {}]"),
        "t.yaml:7:14: auth[0].jwt.from[0]: invalid header name in \"header:x y\" (expected letters, digits "
        "or !#$%&'*+-.^_`|~)",
        "t.yaml:7:28: auth[0].jwt.from[1]: invalid cookie name in \"cookie:\" (expected letters, digits or "
        "!#$%&'*+-.^_`|~)",
        "t.yaml:7:39: auth[0].jwt.from[2]: invalid query parameter name in \"query:a=b\" (expected visible "
        "ASCII without &, = or #)",
        "t.yaml:7:52: auth[0].jwt.from[3]: invalid query parameter name in \"query:\" (expected visible "
        "ASCII without &, = or #)",
        "t.yaml:7:62: auth[0].jwt.from[4]: expected a string, got a mapping");
    EXPECT("from managed header", FROM("[header:Connection]"),
           "t.yaml:7:14: auth[0].jwt.from[0]: Connection cannot carry a credential (framing and hop-by-hop "
           "headers are managed by turnpike)");
    EXPECT("from duplicates",
           FROM("[header:authorization, header:AUTHORIZATION, header:X-T, header:x-t, cookie:s, "
                "cookie:s, query:q, query:q]"),
           "t.yaml:7:36: auth[0].jwt.from[1]: duplicate source \"header:AUTHORIZATION\"",
           "t.yaml:7:70: auth[0].jwt.from[3]: duplicate source \"header:x-t\"",
           "t.yaml:7:92: auth[0].jwt.from[5]: duplicate source \"cookie:s\"",
           "t.yaml:7:111: auth[0].jwt.from[7]: duplicate source \"query:q\"");
#undef FROM
}

static void test_auth_claim_map_errors(void)
{
#define FWD(map)                                                                                             \
    AUTH "  - name: a\n    jwt:\n      keys: /k\n      forward_claims: " map "\n" /* line 7, col 23 */
    EXPECT(
        "forward_claims a list", FWD("[sub]"),
        "t.yaml:7:23: auth[0].jwt.forward_claims: expected a mapping of claim names to header names, got a "
        "list");
    EXPECT(
        "forward_claims empty", FWD("{}"),
        "t.yaml:7:23: auth[0].jwt.forward_claims: expected at least one claim (leave forward_claims out to "
        "forward none)");
    EXPECT("forward_claims header name", FWD("{sub: \"x user\"}"),
           "t.yaml:7:29: auth[0].jwt.forward_claims.sub: invalid header name \"x user\" (expected letters, "
           "digits or !#$%&'*+-.^_`|~)");
    EXPECT(
        "forward_claims framing header", FWD("{sub: Content-Length, iss: upgrade}"),
        "t.yaml:7:29: auth[0].jwt.forward_claims.sub: Content-Length cannot be set (framing and hop-by-hop "
        "headers are managed by turnpike)",
        "t.yaml:7:50: auth[0].jwt.forward_claims.iss: upgrade cannot be set (framing and hop-by-hop headers "
        "are managed by turnpike)");
    EXPECT("forward_claims headers turnpike writes",
           FWD("{a: Host, b: X-Request-Id, c: x-forwarded-user, d: traceparent, e: x-forwarded-}"),
           "t.yaml:7:27: auth[0].jwt.forward_claims.a: Host cannot be set (host, x-request-id, x-forwarded-* "
           "and traceparent are managed by turnpike)",
           "t.yaml:7:36: auth[0].jwt.forward_claims.b: X-Request-Id cannot be set (host, x-request-id, "
           "x-forwarded-* and traceparent are managed by turnpike)",
           "t.yaml:7:53: auth[0].jwt.forward_claims.c: x-forwarded-user cannot be set (host, x-request-id, "
           "x-forwarded-* and traceparent are managed by turnpike)",
           "t.yaml:7:74: auth[0].jwt.forward_claims.d: traceparent cannot be set (host, x-request-id, "
           "x-forwarded-* and traceparent are managed by turnpike)",
           "t.yaml:7:90: auth[0].jwt.forward_claims.e: x-forwarded- cannot be set (host, x-request-id, "
           "x-forwarded-* and traceparent are managed by turnpike)");
    EXPECT("forward_claims header twice", FWD("{sub: x-a, tenant: X-A}"),
           "t.yaml:7:42: auth[0].jwt.forward_claims.tenant: duplicate header \"X-A\"");
    EXPECT("forward_claims claim twice", FWD("{sub: x-a, sub: x-b}"),
           "t.yaml:7:34: auth[0].jwt.forward_claims: duplicate claim \"sub\"");
    EXPECT("forward_claims bad claim names", FWD("{\"\": x-a, ~: x-b, [a]: x-c, \"a\\0b\": x-d}"),
           "t.yaml:7:24: auth[0].jwt.forward_claims: invalid claim name \"\" (must not be empty)",
           "t.yaml:7:33: auth[0].jwt.forward_claims: expected a claim name, got null",
           "t.yaml:7:41: auth[0].jwt.forward_claims: expected a claim name, got a list",
           "t.yaml:7:51: auth[0].jwt.forward_claims: invalid claim name \"a\\x00b\" (NUL characters are not "
           "allowed)");
    EXPECT("forward_claims null header", FWD("{sub: ~}"),
           "t.yaml:7:29: auth[0].jwt.forward_claims.sub: expected a header name, got null");
#undef FWD

#define REQ(map)                                                                                             \
    BASE "  - upstream: users\n    auth:\n      provider: t\n      require_claims: " map "\n" PROVIDERS
    /* require_claims on line 11, col 23 */
    EXPECT("require_claims a list", REQ("[scope]"),
           "t.yaml:11:23: routes[0].auth.require_claims: expected a mapping of claim names to values, got a "
           "list");
    EXPECT(
        "require_claims empty", REQ("{}"),
        "t.yaml:11:23: routes[0].auth.require_claims: expected at least one claim (leave require_claims out "
        "to require none)");
    EXPECT(
        "require_claims value not a scalar", REQ("{scope: [a, b], x: ~, y: {}}"),
        "t.yaml:11:31: routes[0].auth.require_claims.scope: expected a string, number or boolean, got a "
        "list",
        "t.yaml:11:42: routes[0].auth.require_claims.x: expected a string, number or boolean, got null",
        "t.yaml:11:48: routes[0].auth.require_claims.y: expected a string, number or boolean, got a mapping");
    EXPECT("require_claims claim twice", REQ("{scope: a, scope: b}"),
           "t.yaml:11:34: routes[0].auth.require_claims: duplicate claim \"scope\"");
    EXPECT("require_claims empty claim name", REQ("{\"\": a}"),
           "t.yaml:11:24: routes[0].auth.require_claims: invalid claim name \"\" (must not be empty)");
#undef REQ
}

static void test_route_auth_errors(void)
{
    EXPECT("unknown provider", BASE "  - upstream: users\n    auth: {provider: x}\n" PROVIDERS,
           "t.yaml:9:22: routes[0].auth.provider: unknown auth provider \"x\"");
    EXPECT("unknown provider without an auth section", BASE "  - upstream: users\n    auth: {provider: x}\n",
           "t.yaml:9:22: routes[0].auth.provider: unknown auth provider \"x\"");
    EXPECT("provider null", BASE "  - upstream: users\n    auth: {provider: ~}\n" PROVIDERS,
           "t.yaml:9:22: routes[0].auth.provider: expected an auth provider name, got null");
    EXPECT("provider missing", BASE "  - upstream: users\n    auth: {forward_credential: true}\n" PROVIDERS,
           "t.yaml:9:11: routes[0].auth: missing required key \"provider\"");
    EXPECT("auth null", BASE "  - upstream: users\n    auth:\n" PROVIDERS,
           "t.yaml:9:5: routes[0].auth: expected a mapping, got null");
    EXPECT("auth a string", BASE "  - upstream: users\n    auth: t\n" PROVIDERS,
           "t.yaml:9:11: routes[0].auth: expected a mapping, got \"t\"");
    EXPECT("route auth unknown key",
           BASE "  - upstream: users\n    auth: {provider: t, scopes: [a]}\n" PROVIDERS,
           "t.yaml:9:25: routes[0].auth.scopes: unknown key");
    EXPECT("forward_credential",
           BASE "  - upstream: users\n    auth: {provider: t, forward_credential: yes}\n" PROVIDERS,
           "t.yaml:9:45: routes[0].auth.forward_credential: invalid value \"yes\" (expected true or false)");
    EXPECT(
        "rate_limit claim key without auth",
        BASE "  - upstream: users\n    rate_limit: {rate: 1/s, key: claim:tenant}\n",
        "t.yaml:9:34: routes[0].rate_limit.key: claim:tenant needs auth on the route (without a credential "
        "there are no claims to key on)");
    EXPECT("rate_limit claim key, auth broken: one message",
           BASE "  - upstream: users\n    auth: {provider: x}\n    rate_limit: {rate: 1/s, key: "
                "claim:tenant}\n" PROVIDERS,
           "t.yaml:9:22: routes[0].auth.provider: unknown auth provider \"x\"");
    /* a broken auth section is one mistake, not one per route */
    EXPECT("unusable auth section", BASE "  - upstream: users\n    auth: {provider: t}\nauth: t\n",
           "t.yaml:10:7: auth: expected a list, got \"t\"");
}

/* rate_limit_store and rate_limit.scope */
static void test_rl_store(void)
{
    struct tp_config *cfg;

    cfg = parse_ok("store defaults", BASE "  - upstream: users\n    rate_limit: {rate: 1000/s, key: "
                                          "header:x-tenant, scope: global}\n"
                                          "rate_limit_store:\n  redis: 127.0.0.1:6390\n");
    if (cfg) {
        ok(cfg->rl_store != NULL, "store present");
        if (cfg->rl_store) {
            is_int(port_of(&cfg->rl_store->redis), 6390, "store port");
            is_int(cfg->rl_store->timeout_ms, 5, "timeout defaults to 5ms");
            is_int(cfg->rl_store->on_failure, TP_STORE_FAIL_LOCAL, "on_failure defaults to local");
            is_str(cfg->rl_store->prefix, "turnpike:rl:", "prefix default");
        }
        ok(cfg->routes[0].rate_limit && cfg->routes[0].rate_limit->global, "scope: global");
        tp_config_destroy(cfg);
    }
    cfg = parse_ok("store set", BASE "  - upstream: users\n    rate_limit: {rate: 10/s, scope: local}\n"
                                     "rate_limit_store: {redis: '[::1]:7000', timeout: 250ms, on_failure: "
                                     "allow, prefix: 'prod:'}\n");
    if (cfg) {
        ok(cfg->rl_store && cfg->rl_store->timeout_ms == 250 &&
               cfg->rl_store->on_failure == TP_STORE_FAIL_ALLOW &&
               strcmp(cfg->rl_store->prefix, "prod:") == 0 && port_of(&cfg->rl_store->redis) == 7000,
           "timeout, on_failure, prefix, IPv6 address");
        ok(cfg->routes[0].rate_limit && !cfg->routes[0].rate_limit->global, "scope: local");
        tp_config_destroy(cfg);
    }
    cfg = parse_ok("no store", BASE "  - upstream: users\n    rate_limit: {rate: 10/s}\n");
    if (cfg) {
        ok(cfg->rl_store == NULL && !cfg->routes[0].rate_limit->global, "no store, scope defaults to local");
        tp_config_destroy(cfg);
    }

    EXPECT("global without store", BASE "  - upstream: users\n    rate_limit: {rate: 1/s, scope: global}\n",
           "t.yaml:9:36: routes[0].rate_limit.scope: global needs a rate_limit_store (where the instances "
           "share the bucket)");
    EXPECT("scope value",
           BASE "  - upstream: users\n    rate_limit: {rate: 1/s, scope: cluster}\n"
                "rate_limit_store: {redis: 127.0.0.1:6379}\n",
           "t.yaml:9:36: routes[0].rate_limit.scope: invalid value \"cluster\" (expected local or global)");
    EXPECT("store without redis",
           BASE "  - upstream: users\n"
                "rate_limit_store: {timeout: 5ms}\n",
           "t.yaml:9:19: rate_limit_store: missing required key \"redis\"");
    EXPECT("store address",
           BASE "  - upstream: users\n"
                "rate_limit_store: {redis: localhost:6379}\n",
           "t.yaml:9:27: rate_limit_store.redis: invalid address \"localhost:6379\" (expected IPv4:port or "
           "[IPv6]:port)");
    EXPECT("store timeout zero",
           BASE "  - upstream: users\n"
                "rate_limit_store: {redis: 127.0.0.1:1, timeout: 0ms}\n",
           "t.yaml:9:49: rate_limit_store.timeout: 0ms is out of range (1ms..10s)");
    EXPECT("store on_failure",
           BASE "  - upstream: users\n"
                "rate_limit_store: {redis: 127.0.0.1:1, on_failure: deny}\n",
           "t.yaml:9:52: rate_limit_store.on_failure: invalid value \"deny\" (expected local or allow)");
    EXPECT("store unknown key",
           BASE "  - upstream: users\n"
                "rate_limit_store: {redis: 127.0.0.1:1, password: x}\n",
           "t.yaml:9:40: rate_limit_store.password: unknown key");
    /* a broken store is one mistake, not one per global route */
    EXPECT("broken store, global route",
           BASE "  - upstream: users\n    rate_limit: {rate: 1/s, scope: global}\n"
                "rate_limit_store: 127.0.0.1:6379\n",
           "t.yaml:10:19: rate_limit_store: expected a mapping, got \"127.0.0.1:6379\"");
}

/* Endpoint names (host:port), resolve_every and the resolver section: syntax only, no DNS query. */
static void test_dns_names(void)
{
    struct tp_config *cfg;

    cfg = parse_ok("endpoint names",
                   "resolver:\n  servers: [127.0.0.1:5353, \"[::1]:53\"]\n  timeout: 250ms\n" LST
                   "upstreams:\n  - name: u\n    endpoints:\n"
                   "      - address: Users.Default.svc.cluster.local:8080\n        weight: 3\n"
                   "      - address: 127.0.0.1:9001\n"
                   "      - address: localhost:9002\n"
                   "    resolve_every: 5s\n");
    if (cfg) {
        const struct tp_cfg_upstream *u = &cfg->upstreams[0];
        is_int(cfg->resolver.n_servers, 2, "two resolver servers");
        is_str(cfg->resolver.servers[0].text, "127.0.0.1:5353", "resolver server 0");
        is_int(port_of(&cfg->resolver.servers[1]), 53, "resolver server 1 port");
        is_int(cfg->resolver.timeout_ms, 250, "resolver timeout");
        is_int(u->n_endpoints, 3, "three endpoints");
        is_str(u->endpoints[0].name, "users.default.svc.cluster.local:8080", "name lowercased with port");
        is_str(u->endpoints[0].host, "users.default.svc.cluster.local", "host");
        is_int(u->endpoints[0].port, 8080, "port");
        is_int(u->endpoints[0].weight, 3, "weight of a name");
        is_int(u->endpoints[0].addr.ss.ss_family, 0, "a name has no address yet");
        ok(u->endpoints[1].name == NULL, "an address is not a name");
        is_str(u->endpoints[1].addr.text, "127.0.0.1:9001", "address kept");
        is_str(u->endpoints[2].host, "localhost", "single-label name");
        is_int(u->resolve_every_ms, 5000, "resolve_every");
        tp_config_destroy(cfg);
    }
    cfg = parse_ok("resolver defaults",
                   LST "upstreams:\n  - name: u\n    endpoints: [{address: a.example:1}]\n");
    if (cfg) {
        is_int(cfg->resolver.n_servers, 0, "no servers: /etc/resolv.conf");
        ok(cfg->resolver.servers == NULL, "servers NULL");
        is_int(cfg->resolver.timeout_ms, 1000, "resolver timeout default 1s");
        is_int(cfg->upstreams[0].resolve_every_ms, 30000, "resolve_every default 30s");
        tp_config_destroy(cfg);
    }

#define UPN(addr) LST "upstreams:\n  - name: u\n    endpoints: [{address: " addr "}]\n" /* lines 1-5 */
    EXPECT(
        "name with underscore", UPN("a_b.example:80"),
        "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid host \"a_b.example\" in \"a_b.example:80\" "
        "(expected letters, digits, '-' and '.')");
    EXPECT("name with empty label", UPN("a..example:80"),
           "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid host \"a..example\" in \"a..example:80\" "
           "(empty label)");
    EXPECT(
        "wildcard name", UPN("\"*.example:80\""),
        "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid host \"*.example\" in \"*.example:80\" (a "
        "name, not a wildcard)");
    EXPECT("name without port", UPN("users.example"),
           "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid address \"users.example\" (expected "
           "IPv4:port, [IPv6]:port or host:port)");
    EXPECT("name with port 0", UPN("users.example:0"),
           "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid port in \"users.example:0\" (expected "
           "1..65535)");
    EXPECT(
        "name with port too large", UPN("users.example:70000"),
        "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid port in \"users.example:70000\" (expected "
        "1..65535)");
    EXPECT("broken IPv4 is not a name", UPN("10.0.0.300:80"),
           "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid address \"10.0.0.300:80\" (expected "
           "IPv4:port, [IPv6]:port or host:port)");
    EXPECT("label too long",
           UPN("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example:80"),
           "t.yaml:5:27: upstreams[0].endpoints[0].address: invalid host "
           "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" in "
           "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" (label longer than 63 "
           "characters)");
#undef UPN
    EXPECT("same name twice",
           LST "upstreams:\n  - name: u\n    endpoints:\n      - address: a.example:1\n"
               "      - address: A.example:1\n",
           "t.yaml:7:18: upstreams[0].endpoints[1].address: a.example:1 is already listed as endpoints[0]");
    EXPECT("resolve_every too short",
           LST "upstreams:\n  - name: u\n    endpoints: [{address: a.example:1}]\n    resolve_every: 10ms\n",
           "t.yaml:6:20: upstreams[0].resolve_every: 10ms is out of range (100ms..24h)");
    EXPECT("resolver servers empty", "resolver: {servers: []}\n" LST,
           "t.yaml:1:21: resolver.servers: at least one server is required (leave the key out to use "
           "/etc/resolv.conf)");
    EXPECT("resolver server is a name", "resolver: {servers: [dns.example:53]}\n" LST,
           "t.yaml:1:22: resolver.servers[0]: invalid address \"dns.example:53\" (expected IPv4:port or "
           "[IPv6]:port)");
    EXPECT("resolver servers not a list", "resolver: {servers: 10.0.0.2:53}\n" LST,
           "t.yaml:1:21: resolver.servers: expected a list, got \"10.0.0.2:53\"");
    EXPECT("resolver unknown key", "resolver: {server: [10.0.0.2:53]}\n" LST,
           "t.yaml:1:12: resolver.server: unknown key");
}

static void test_h2(void)
{
    struct tp_config *cfg = parse_ok("h2 keys", "listeners:\n  - address: 127.0.0.1:8080\n    h2c: true\n"
                                                "limits: {h2_max_concurrent_streams: 2147483647, "
                                                "h2_max_resets_per_s: 7}\n");
    if (cfg) {
        ok(cfg->listeners[0].h2c, "h2c true");
        is_int(cfg->h2_max_concurrent_streams, 2147483647, "h2_max_concurrent_streams");
        is_int(cfg->h2_max_resets_per_s, 7, "h2_max_resets_per_s");
    }
    tp_config_destroy(cfg);
    EXPECT("h2c is a boolean", "listeners:\n  - address: 127.0.0.1:8080\n    h2c: yes\n",
           "t.yaml:3:10: listeners[0].h2c: invalid value \"yes\" (expected true or false)");
    EXPECT("h2_max_concurrent_streams 0", LST "limits: {h2_max_concurrent_streams: 0}\n",
           "t.yaml:3:37: limits.h2_max_concurrent_streams: 0 is out of range (1..2147483647)");
    EXPECT("h2_max_concurrent_streams 2^31", LST "limits: {h2_max_concurrent_streams: 2147483648}\n",
           "t.yaml:3:37: limits.h2_max_concurrent_streams: 2147483648 is out of range (1..2147483647)");
    EXPECT("h2_max_resets_per_s 0", LST "limits: {h2_max_resets_per_s: 0}\n",
           "t.yaml:3:31: limits.h2_max_resets_per_s: 0 is out of range (1..1000000)");
}

static void test_upstream_protocol(void)
{
    struct tp_config *cfg =
        parse_ok("upstream protocols",
                 LST "upstreams:\n"
                     "  - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n"
                     "  - {name: b, protocol: h2c, endpoints: [{address: 127.0.0.1:2}]}\n"
                     "  - {name: c, protocol: h2, endpoints: [{address: 127.0.0.1:3}]}\n"
                     "  - {name: d, protocol: h2, tls: {sni: d.test, verify: false},\n"
                     "     endpoints: [{address: 127.0.0.1:4}]}\n"
                     "  - {name: e, protocol: http1, tls: {}, endpoints: [{address: 127.0.0.1:5}]}\n");
    if (cfg) {
        is_int(cfg->upstreams[0].protocol, TP_UPROTO_HTTP1, "default http1");
        ok(cfg->upstreams[0].tls == NULL, "http1 without tls is plain");
        is_int(cfg->upstreams[1].protocol, TP_UPROTO_H2C, "h2c");
        ok(cfg->upstreams[1].tls == NULL, "h2c is plain");
        is_int(cfg->upstreams[2].protocol, TP_UPROTO_H2, "h2");
        ok(cfg->upstreams[2].tls && cfg->upstreams[2].tls->verify && cfg->upstreams[2].tls->alpn_h2 &&
               !cfg->upstreams[2].tls->sni && !cfg->upstreams[2].tls->ca,
           "h2 without tls: TLS with the defaults, ALPN h2");
        ok(cfg->upstreams[3].tls && !cfg->upstreams[3].tls->verify && cfg->upstreams[3].tls->alpn_h2 &&
               !strcmp(cfg->upstreams[3].tls->sni, "d.test"),
           "h2 with tls keeps its settings, ALPN h2");
        ok(cfg->upstreams[4].tls && !cfg->upstreams[4].tls->alpn_h2, "http1 over tls: no ALPN h2");
    }
    tp_config_destroy(cfg);
#define UP LST "upstreams:\n  - name: u\n    endpoints: [{address: 127.0.0.1:1}]\n" /* lines 1-5 */
    EXPECT("protocol value", UP "    protocol: h3\n",
           "t.yaml:6:15: upstreams[0].protocol: invalid value \"h3\" (expected http1, h2c or h2)");
    EXPECT("h2c with tls", UP "    protocol: h2c\n    tls: {}\n",
           "t.yaml:7:5: upstreams[0].tls: h2c is HTTP/2 in clear text; use protocol: h2 for HTTP/2 over TLS");
#undef UP
}

int main(void)
{
    test_full();
    test_shipped();
    test_minimal_defaults();
    test_small_good();
    test_file_errors();
    test_yaml_errors();
    test_key_errors();
    test_type_errors();
    test_value_errors();
    test_uniqueness_errors();
    test_upstream_errors();
    test_route_errors();
    test_strip_and_rewrite_errors();
    test_more_errors();
    test_many_errors_in_order();
    test_upgrade();
    test_claim_keys();
    test_auth_good();
    test_auth_warnings();
    test_auth_provider_errors();
    test_auth_from_errors();
    test_auth_claim_map_errors();
    test_route_auth_errors();
    test_rl_store();
    test_dns_names();
    test_h2();
    test_upstream_protocol();
    return tap_done();
}
