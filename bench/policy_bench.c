/* SPDX-License-Identifier: MIT */
/*
 * Microbenchmark of the policy primitives: rate-limit takes (route bucket,
 * keyed table, with and without the 429 values), the take of a global limit
 * from its leased pools beside the local take it replaces (10 busy keys, the
 * RateLimit-* values filled, as request.c does), breaker admit/report and
 * the three balancers, single-threaded and with two threads contending on
 * the same state. Build in Release (-DCMAKE_BUILD_TYPE=Release) and run
 * `policy_bench [iterations]`. Prints ns per operation per thread.
 *
 * The clock passed to the limiter is a fake one advancing 1 ns per call, so
 * the figures exclude clock_gettime (the data plane reads the clock once per
 * loop iteration, not per request).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <turnpike/balance.h>
#include <turnpike/breaker.h>
#include <turnpike/lease.h>
#include <turnpike/ratelimit.h>

#define KEYS 10000

static uint64_t iters = 10000000;
static uint64_t keys[KEYS];
static volatile uint64_t sink;

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

enum op {
    OP_RL_ROUTE = 0,
    OP_RL_ROUTE_OUT,
    OP_RL_ROUTE_DENY,
    OP_RL_KEYED,
    OP_RL_TENANTS,
    OP_LEASE_TENANTS,
    OP_BR_ADMIT,
    OP_BR_ADMIT_REPORT,
    OP_SWRR,
    OP_P2C,
    OP_MAGLEV,
    OP_COUNT
};

static const char *const op_name[OP_COUNT] = {
    "ratelimit take, route bucket",
    "ratelimit take, route, with 429 values",
    "ratelimit take, route, denied",
    "ratelimit take, keyed (10k keys)",
    "ratelimit take, 10 keys, 429 values",
    "lease take (global), 10 keys, 429 values",
    "breaker admit (closed)",
    "breaker admit + report(success)",
    "swrr pick (10 endpoints)",
    "p2c pick (10 endpoints)",
    "maglev pick (10 endpoints)",
};

struct ctx {
    struct tp_ratelimit *rl_fast;  /* always has tokens */
    struct tp_ratelimit *rl_empty; /* always empty */
    struct tp_ratelimit *rl_keyed;
    struct tp_lease_table *lease; /* 10 keys, each with more tokens than the runs take */
    struct tp_breaker *br;
    struct tp_maglev *mg;
    uint32_t weights[10];
    _Atomic uint64_t inflight[10];
};

struct job {
    struct ctx *c;
    enum op op;
    uint64_t start_now;
    uint64_t ns;
};

static uint64_t load_inflight(void *ctx, size_t i)
{
    struct ctx *c = ctx;

    return atomic_load_explicit(&c->inflight[i], memory_order_relaxed);
}

static void *run(void *arg)
{
    struct job *j = arg;
    struct ctx *c = j->c;
    struct tp_rl_result r;
    int64_t cur[10] = {0};
    uint64_t now = j->start_now, acc = 0, t0 = mono_ns();

    switch (j->op) {
    case OP_RL_ROUTE:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_ratelimit_take(c->rl_fast, 0, now++, NULL);
        break;
    case OP_RL_ROUTE_OUT:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_ratelimit_take(c->rl_fast, 0, now++, &r) + r.remaining;
        break;
    case OP_RL_ROUTE_DENY:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_ratelimit_take(c->rl_empty, 0, now++, NULL);
        break;
    case OP_RL_KEYED:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_ratelimit_take(c->rl_keyed, keys[i % KEYS], now++, NULL);
        break;
    case OP_RL_TENANTS:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_ratelimit_take(c->rl_keyed, keys[i % 10], now++, &r) + r.remaining;
        break;
    case OP_LEASE_TENANTS:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_lease_take(c->lease, keys[i % 10], now++, 1, &r) + r.remaining;
        break;
    case OP_BR_ADMIT:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_breaker_admit(c->br, now / 1000000).how;
        break;
    case OP_BR_ADMIT_REPORT:
        for (uint64_t i = 0; i < iters; i++) {
            struct tp_breaker_pass p = tp_breaker_admit(c->br, (now += 1000) / 1000000);

            tp_breaker_report(c->br, p, true, now / 1000000);
            acc += p.how;
        }
        break;
    case OP_SWRR:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_swrr_pick(cur, c->weights, 10, NULL);
        break;
    case OP_P2C:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_p2c_pick(c->weights, 10, load_inflight, c, NULL, mix(i));
        break;
    case OP_MAGLEV:
        for (uint64_t i = 0; i < iters; i++)
            acc += tp_maglev_pick(c->mg, keys[i % KEYS], NULL);
        break;
    default:
        break;
    }
    j->ns = mono_ns() - t0;
    sink += acc;
    return NULL;
}

static double bench(struct ctx *c, enum op op, int threads)
{
    pthread_t th[2];
    struct job jobs[2];
    double worst = 0;

    for (int t = 0; t < threads; t++) {
        jobs[t] = (struct job){.c = c, .op = op, .start_now = 3600ull * 1000000000ull};
        pthread_create(&th[t], NULL, run, &jobs[t]);
    }
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        if ((double)jobs[t].ns / (double)iters > worst)
            worst = (double)jobs[t].ns / (double)iters;
    }
    return worst;
}

int main(int argc, char **argv)
{
    struct tp_cfg_rate_limit fast = {.tokens = 1000000000000ull, .period_ms = 1000, .burst = 1ull << 40};
    struct tp_cfg_rate_limit slow = {.tokens = 1, .period_ms = 3600000, .burst = 1};
    struct tp_cfg_rate_limit keyed = {.tokens = 1000000000000ull, .period_ms = 1000, .burst = 1ull << 40};
    struct tp_cfg_circuit_breaker cb = {5, 0.5, 20, 10000, 10000, 3};
    const char *names[10] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80",
                             "10.0.0.6:80", "10.0.0.7:80", "10.0.0.8:80", "10.0.0.9:80", "10.0.0.10:80"};
    struct ctx c = {0};
    int err = 0;

    if (argc > 1)
        iters = strtoull(argv[1], NULL, 10);
    fast.key.kind = TP_KEY_ROUTE;
    slow.key.kind = TP_KEY_ROUTE;
    keyed.key.kind = TP_KEY_CLIENT_IP;
    for (int i = 0; i < KEYS; i++)
        keys[i] = mix((uint64_t)i + 1);
    for (int i = 0; i < 10; i++)
        c.weights[i] = 1 + (uint32_t)i % 3;
    c.rl_fast = tp_ratelimit_create(&fast, 0, &err);
    c.rl_empty = tp_ratelimit_create(&slow, 0, &err);
    c.rl_keyed = tp_ratelimit_create(&keyed, 0, &err);
    c.br = tp_breaker_create(&cb, &err);
    c.mg = tp_maglev_create(names, c.weights, 10, 0, &err);
    if (!c.rl_fast || !c.rl_empty || !c.rl_keyed || !c.br || !c.mg) {
        fprintf(stderr, "setup failed: %d\n", err);
        return 1;
    }
    tp_ratelimit_take(c.rl_empty, 0, 0, NULL); /* empty it for good */
    /* the pools of 10 keys filled as the store's answers would: 4 full words each */
    keyed.key.kind = TP_KEY_HEADER;
    keyed.global = true;
    if (!(c.lease = tp_lease_create("bench", &keyed, 0, &err))) {
        fprintf(stderr, "setup failed: %d\n", err);
        return 1;
    }
    tp_lease_set_store_up(true);
    uint64_t t_start = 3600ull * 1000000000ull;
    for (int k = 0; k < 10; k++)
        tp_lease_take(c.lease, keys[k], t_start, 0, NULL);
    for (struct tp_lease_ask a; tp_lease_next(c.lease, t_start, &a);)
        for (int w = 0; w < TP_LEASE_WORDS; w++)
            tp_lease_grant(c.lease, a.slot, t_start, t_start, TP_LEASE_MAX, 1000000, 0, 0);

    printf("%-42s %12s %12s\n", "operation", "1 thread", "2 threads");
    for (int op = 0; op < OP_COUNT; op++) {
        double one = bench(&c, (enum op)op, 1);
        /* balancers keep per-shard state or are read-only: no contention to show */
        double two = op < OP_SWRR ? bench(&c, (enum op)op, 2) : 0;

        if (two > 0)
            printf("%-42s %9.1f ns %9.1f ns\n", op_name[op], one, two);
        else
            printf("%-42s %9.1f ns %12s\n", op_name[op], one, "-");
    }

    tp_maglev_destroy(c.mg);
    tp_breaker_destroy(c.br);
    tp_lease_unref(c.lease);
    tp_ratelimit_destroy(c.rl_keyed);
    tp_ratelimit_destroy(c.rl_empty);
    tp_ratelimit_destroy(c.rl_fast);
    return 0;
}
