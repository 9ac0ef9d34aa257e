/* SPDX-License-Identifier: MIT */
/*
 * router_bench: build time and mean lookup time of the router
 * (src/policy/router.c) on tables of 10, 1,000 and 100,000 routes.
 *
 * The tables mimic a gateway config: a few exact hosts, a few wildcards, the
 * rest any-host; mostly path prefixes like /svc<N>/v1/items, some exact paths,
 * some trailing-slash prefixes, some routes restricted by method or by an
 * x-canary header. Requests are generated up front (hits on random routes in
 * the spelling clients use: mixed case, ports; plus ~15% misses), then looked
 * up in passes; the mean is the elapsed CLOCK_MONOTONIC time over all lookups.
 * The result indexes feed a sink so the compiler cannot drop the calls.
 *
 * Usage: router_bench [passes [routes...]]   (default: 10 passes over 65,536
 * requests per trial, 7 trials, tables of 10, 1000 and 100000 routes; the
 * minimum and the median of the trials are printed)
 * Build with -DCMAKE_BUILD_TYPE=Release and no sanitizer. Single-threaded.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <llhttp.h>

#include <turnpike/config.h>
#include <turnpike/router.h>

#include "policy/router_int.h"

#define N_REQ (1u << 16)

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static uint32_t below(uint32_t n)
{
    return (uint32_t)(rng() % n);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (!d)
        abort();
    memcpy(d, s, n + 1);
    return d;
}

static struct tp_header_kv canary = {"x-canary", 8, "true", 4};

/* A table of <n> routes; host counts grow with the table. */
static struct tp_config *make_config(size_t n, size_t *n_hosts, size_t *n_wild)
{
    struct tp_config *cfg = calloc(1, sizeof(*cfg));
    cfg->routes = calloc(n, sizeof(*cfg->routes));
    cfg->n_routes = n;
    *n_hosts = n / 500 + 1;
    *n_wild = n / 5000 + 1;
    char buf[96];
    for (size_t i = 0; i < n; i++) {
        struct tp_cfg_route *r = &cfg->routes[i];
        uint32_t h = below(100);
        if (h < 60) {
            snprintf(buf, sizeof(buf), "api%u.example.com", below((uint32_t)*n_hosts));
            r->host = xstrdup(buf);
        } else if (h < 75) {
            snprintf(buf, sizeof(buf), "*.tenant%u.example.net", below((uint32_t)*n_wild));
            r->host = xstrdup(buf);
        }
        /* service numbers spread over the table: ~4 routes per service */
        uint32_t svc = (uint32_t)(i / 4), kind = below(100);
        if (kind < 60)
            snprintf(buf, sizeof(buf), "/svc%u/v1/items", svc);
        else if (kind < 75)
            snprintf(buf, sizeof(buf), "/svc%u/v2/", svc);
        else if (kind < 90)
            snprintf(buf, sizeof(buf), "/svc%u/v1/items/%u", svc, below(1000));
        else
            snprintf(buf, sizeof(buf), "/svc%u/health", svc);
        r->path = xstrdup(buf);
        r->path_exact = kind >= 75;
        uint32_t f = below(100);
        if (f < 10)
            r->methods = 1ull << HTTP_GET;
        else if (f < 15)
            r->methods = (1ull << HTTP_POST) | (1ull << HTTP_PUT);
        if (below(100) < 5) {
            r->headers = &canary;
            r->n_headers = 1;
        }
    }
    return cfg;
}

static void free_config(struct tp_config *cfg)
{
    for (size_t i = 0; i < cfg->n_routes; i++) {
        free(cfg->routes[i].host);
        free(cfg->routes[i].path);
    }
    free(cfg->routes);
    free(cfg);
}

struct breq {
    struct tp_route_req req;
    char host[64];
    char path[96];
    bool canary;
};

static const char *hdr_get(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    const struct breq *q = ctx;
    if (q->canary && name_len == 8 && memcmp(name, "x-canary", 8) == 0) {
        *value_len = 4;
        return "true";
    }
    return NULL;
}

/* Requests for the table: mostly aimed at a random route, some misses. */
static struct breq *make_requests(const struct tp_config *cfg, size_t n_hosts)
{
    struct breq *qs = calloc(N_REQ, sizeof(*qs));
    for (size_t i = 0; i < N_REQ; i++) {
        struct breq *q = &qs[i];
        const struct tp_cfg_route *r = &cfg->routes[below((uint32_t)cfg->n_routes)];
        if (below(100) < 85) {
            if (!r->host)
                snprintf(q->host, sizeof(q->host), "www.example.org");
            else if (r->host[0] == '*')
                snprintf(q->host, sizeof(q->host), "eu%s", r->host + 1);
            else
                snprintf(q->host, sizeof(q->host), "%s%s", r->host, below(4) == 0 ? ":8443" : "");
            if (below(4) == 0)
                q->host[0] = (char)(q->host[0] & ~0x20); /* some clients capitalize */
            if (r->path_exact)
                snprintf(q->path, sizeof(q->path), "%s", r->path);
            else
                snprintf(q->path, sizeof(q->path), "%s%s%u", r->path,
                         r->path[strlen(r->path) - 1] == '/' ? "" : "/", below(100000));
            q->req.method = HTTP_GET;
            if (r->methods && !(r->methods & (1ull << HTTP_GET)))
                q->req.method = HTTP_POST;
            q->canary = r->n_headers > 0;
        } else {
            snprintf(q->host, sizeof(q->host), "api%u.example.com", below((uint32_t)n_hosts + 3));
            snprintf(q->path, sizeof(q->path), "/nosuch%u/x", below(1000));
            q->req.method = HTTP_DELETE;
        }
        q->req.host = q->host;
        q->req.host_len = strlen(q->host);
        q->req.path = q->path;
        q->req.path_len = strlen(q->path);
        q->req.header = hdr_get;
        q->req.header_ctx = q;
    }
    return qs;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define TRIALS 7

/*
 * The machine may be shared: every figure is measured TRIALS times and the
 * minimum (least disturbed) and the median are printed.
 */
static void run(size_t n_routes, int passes)
{
    size_t n_hosts, n_wild;
    rng_state = 0x853c49e6748fea9bull ^ n_routes;
    struct tp_config *cfg = make_config(n_routes, &n_hosts, &n_wild);

    /* build time: batches of builds so the clock resolution does not matter */
    int builds = n_routes >= 100000 ? 1 : n_routes >= 1000 ? 20 : 1000;
    double build[TRIALS];
    struct tp_router *r = NULL;
    for (int t = 0; t < TRIALS; t++) {
        double t0 = now_ns();
        for (int b = 0; b < builds; b++) {
            tp_router_destroy(r);
            r = tp_router_create(cfg, NULL, NULL);
            if (!r) {
                fprintf(stderr, "router_bench: create failed\n");
                exit(1);
            }
        }
        build[t] = (now_ns() - t0) / builds / 1e3;
    }

    struct breq *qs = make_requests(cfg, n_hosts);
    uintptr_t sink = 0;
    size_t hits = 0, idx;
    for (size_t i = 0; i < N_REQ; i++) { /* warm-up pass, also counts hits */
        hits += tp_router_lookup(r, &qs[i].req, &idx) != NULL;
        sink += idx;
    }
    double look[TRIALS];
    for (int t = 0; t < TRIALS; t++) {
        double t0 = now_ns();
        for (int p = 0; p < passes; p++)
            for (size_t i = 0; i < N_REQ; i++) {
                sink += (uintptr_t)tp_router_lookup(r, &qs[i].req, &idx);
                sink ^= idx;
            }
        look[t] = (now_ns() - t0) / ((double)passes * N_REQ);
    }
    qsort(build, TRIALS, sizeof(double), cmp_double);
    qsort(look, TRIALS, sizeof(double), cmp_double);

    struct tp_router_stats st;
    tp_router_stats(r, &st);
    printf("%7zu routes  hosts %3zu exact %2zu wild  %6zu nodes (%3zu hashed)  %8zu bytes  "
           "build min %8.1f us med %8.1f us  lookup min %6.1f ns med %6.1f ns  hits %4.1f%%  (sink %02lx)\n",
           n_routes, st.n_exact, st.n_wild, st.n_nodes, st.n_hashed, st.bytes, build[0], build[TRIALS / 2],
           look[0], look[TRIALS / 2], 100.0 * (double)hits / N_REQ, (unsigned long)(sink & 0xff));
    tp_router_destroy(r);
    free(qs);
    free_config(cfg);
}

int main(int argc, char **argv)
{
    int passes = argc > 1 ? atoi(argv[1]) : 10;
    if (passes <= 0)
        passes = 10;
    printf("router_bench: %d passes over %u requests; LINEAR_MAX %d, HASH_MIN %d, WILD_LINEAR_MAX %d\n",
           passes, N_REQ, TP_ROUTER_LINEAR_MAX, TP_ROUTER_HASH_MIN, TP_ROUTER_WILD_LINEAR_MAX);
    if (argc > 2) {
        for (int i = 2; i < argc; i++)
            run((size_t)strtoul(argv[i], NULL, 10), passes);
        return 0;
    }
    run(10, passes);
    run(1000, passes);
    run(100000, passes);
    return 0;
}
