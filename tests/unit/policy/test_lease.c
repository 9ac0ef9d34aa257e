/* SPDX-License-Identifier: MIT */
/*
 * Lease pools of global rate limits (src/policy/lease.c): a pool serves
 * exactly the tokens it was granted, never after they expire, asks once for
 * more when it runs low, sizes leases from the rate it sees, and stays exact
 * with shards taking while the control thread grants (also under TSan).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/lease.h>

#include "tap.h"

#define MS (1000000ull)
#define S  (1000ull * MS)

static struct tp_cfg_rate_limit cfg_of(uint64_t tokens, uint64_t burst, enum tp_key_kind kind)
{
    struct tp_cfg_rate_limit c;

    memset(&c, 0, sizeof(c));
    c.tokens = tokens;
    c.period_ms = 1000;
    c.burst = burst;
    c.key.kind = kind;
    c.global = true;
    return c;
}

static void test_basic(void)
{
    struct tp_cfg_rate_limit c = cfg_of(100, 100, TP_KEY_ROUTE);
    struct tp_lease_table *t = tp_lease_create("r", &c, 0, NULL);
    struct tp_lease_ask a;
    struct tp_rl_result res;
    uint64_t now = 10 * S;

    ok(t != NULL, "created");
    is_int(tp_lease_ttl_ns(t), 250 * MS, "token life: burst / (4 rate), at most 250 ms");
    tp_lease_set_store_up(false);
    is_int(tp_lease_take(t, 0, now, 0, NULL), TP_LEASE_FALLBACK, "store down, empty pool: fallback");
    tp_lease_set_store_up(true);
    is_int(tp_lease_take(t, 0, now, 0, &res), TP_LEASE_WAIT,
           "store up, empty pool, nothing heard: wait for the lease");
    ok(res.retry_after_s >= 1 && res.limit == 100, "429 values: limit %llu retry %llu",
       (unsigned long long)res.limit, (unsigned long long)res.retry_after_s);
    ok(tp_lease_next(t, now, &a), "the empty pool asked once");
    ok(!tp_lease_next(t, now, &a), "and only once");
    ok(a.capacity > 74.9 && a.capacity < 75.1, "store capacity = burst - rate x life (%.2f)", a.capacity);
    ok(a.want >= 1 && a.want <= 37, "first lease: a guess under half the capacity (%u)", a.want);
    tp_lease_grant(t, a.slot, now, now + MS, 3, 50, 500, 0);
    for (int i = 0; i < 3; i++)
        is_int(tp_lease_take(t, 0, now + 2 * MS, 0, &res), TP_LEASE_ADMIT, "leased token %d", i);
    is_int(tp_lease_take(t, 0, now + 2 * MS, 0, NULL), TP_LEASE_WAIT, "three granted, three served");

    /* tokens expire a life after the ask was sent */
    ok(tp_lease_next(t, now + 3 * MS, &a), "ran low: asked again");
    tp_lease_grant(t, a.slot, now + 3 * MS, now + 4 * MS, 10, 40, 600, 0);
    is_int(tp_lease_take(t, 0, now + 200 * MS, 0, &res), TP_LEASE_ADMIT, "within its life");
    is_int(res.remaining, 49, "remaining: the store's level plus the pool");
    is_int(res.reset_s, 1, "reset: the store's, rounded up");
    is_int(tp_lease_take(t, 0, now + 3 * MS + 250 * MS, 0, NULL), TP_LEASE_WAIT, "expired at its life");
    tp_lease_unref(t);
}

/* burst 1: tokens still live a while (the store keeps its one token), so a lease serves */
static void test_burst_one(void)
{
    struct tp_cfg_rate_limit c = cfg_of(1, 1, TP_KEY_ROUTE);
    struct tp_lease_table *t = tp_lease_create("r1", &c, 0, NULL);
    struct tp_lease_ask a;
    uint64_t now = 10 * S;

    ok(t != NULL, "burst 1: created");
    is_int(tp_lease_ttl_ns(t), 250 * MS, "burst 1: token life burst / (4 rate), at most 250 ms");
    tp_lease_set_store_up(true);
    is_int(tp_lease_take(t, 0, now, 0, NULL), TP_LEASE_WAIT, "burst 1: empty pool waits for the lease");
    ok(tp_lease_next(t, now, &a), "burst 1: asked");
    ok(a.capacity > 0.99 && a.capacity < 1.01, "burst 1: the store keeps its one token (%.2f)", a.capacity);
    tp_lease_grant(t, a.slot, now, now + MS, 1, 0, 1000, 1000);
    is_int(tp_lease_take(t, 0, now + 2 * MS, 0, NULL), TP_LEASE_ADMIT, "burst 1: the leased token admits");
    tp_lease_unref(t);
}

static void test_sizing(void)
{
    struct tp_cfg_rate_limit c = cfg_of(1000, 1000, TP_KEY_HEADER);
    struct tp_lease_table *t = tp_lease_create("r", &c, 64, NULL);
    struct tp_lease_ask a;
    uint64_t now = 100 * S;
    uint32_t want = 0;

    tp_lease_set_store_up(true);
    /* one key taking 400 tokens per second, a lease per 50 ms */
    tp_lease_take(t, 42, now, 0, NULL);
    for (int round = 0; round < 20; round++) {
        while (tp_lease_next(t, now, &a)) {
            ok(a.key_hash == 42 && !a.overflow, "round %d: key 42 asked", round);
            want = a.want;
            tp_lease_grant(t, a.slot, now, now, a.want, 500, 500, 0);
        }
        for (int i = 0; i < 20; i++)
            tp_lease_take(t, 42, now + (uint64_t)i * 2500000ull, 0, NULL);
        now += 50 * MS;
    }
    ok(want >= 60 && want <= 90,
       "a busy key's lease: 3/4 of a life at the seen rate: %u (400/s x 250 ms x 3/4 = 75)", want);
    /* another key has its own pool */
    is_int(tp_lease_take(t, 7, now, 0, NULL), TP_LEASE_WAIT,
           "a new key starts empty: waits for its first lease");
    ok(tp_lease_next(t, now, &a) && a.key_hash == 7, "and asks for itself");
    tp_lease_failed(t, a.slot);
    /* a short lease holds the pool back until the store expects a token */
    tp_lease_take(t, 7, now, 0, NULL);
    ok(tp_lease_next(t, now, &a), "asked again after a failure");
    tp_lease_grant(t, a.slot, now, now, 0, 0, 1000, 40);
    is_int(tp_lease_take(t, 7, now, 0, NULL), TP_LEASE_DENY, "the store said no token: 429");
    is_int(tp_lease_take(t, 7, now + 39 * MS, 0, NULL), TP_LEASE_DENY, "until the store expects one");
    is_int(tp_lease_take(t, 7, now + 40 * MS, 0, NULL), TP_LEASE_WAIT, "then the next lease is awaited");
    ok(!tp_lease_next(t, now + 10 * MS, &a),
       "nothing granted: not asked again before the store expects a token");
    ok(tp_lease_next(t, now + 41 * MS, &a) && a.key_hash == 7, "asked again after that");
    tp_lease_grant(t, a.slot, now + 41 * MS, now + 42 * MS, 1, 0, 1000, 0);
    is_int(tp_lease_take(t, 7, now + 43 * MS, 0, NULL), TP_LEASE_ADMIT, "a token again");
    is_int(tp_lease_take(t, 7, now + 43 * MS, 0, NULL), TP_LEASE_DENY,
           "a short lease holds the pool back for an eighth of a life: 429 meanwhile, not a wait "
           "longer than the store's timeout");
    ok(!tp_lease_next(t, now + 60 * MS, &a), "not asked again yet");
    ok(tp_lease_next(t, now + 42 * MS + 250 * MS / 8, &a) && a.key_hash == 7, "then asked");
    tp_lease_grant(t, a.slot, now + 80 * MS, now + 81 * MS, a.want, 500, 500, 0);
    is_int(tp_lease_take(t, 7, now + 82 * MS, 0, NULL), TP_LEASE_ADMIT, "and served");
    tp_lease_unref(t);
}

/* ---- shards take while the control thread grants ---- */

#define NTHREADS 4
#define LEASES   400

static struct tp_lease_table *race_t;
static _Atomic bool race_done;
static _Atomic uint64_t race_admitted;

static void *race_thread(void *arg)
{
    uint64_t key = (uint64_t)(uintptr_t)arg % 3 + 1, n = 0;

    for (;;) {
        bool done = atomic_load(&race_done);
        int r = tp_lease_take(race_t, key, 5 * S, 0, NULL);
        if (r == TP_LEASE_ADMIT)
            n++;
        else if (done)
            break;
        else
            sched_yield(); /* empty pool: let the granting thread run (2 CPUs under TSan) */
    }
    atomic_fetch_add(&race_admitted, n);
    return NULL;
}

static void test_race(void)
{
    struct tp_cfg_rate_limit c = cfg_of(1000, 1000, TP_KEY_HEADER);
    struct tp_lease_ask a;
    pthread_t th[NTHREADS];
    uint64_t granted = 0;

    race_t = tp_lease_create("r", &c, 64, NULL);
    tp_lease_set_store_up(true);
    for (uintptr_t i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, race_thread, (void *)i);
    for (int i = 0; i < LEASES;) {
        if (!tp_lease_next(race_t, 5 * S, &a)) {
            sched_yield();
            continue;
        }
        uint32_t n = a.want + (uint32_t)(i % 7); /* at least what was asked: never held back */
        tp_lease_grant(race_t, a.slot, 5 * S, 5 * S, n, 0, 0, 0);
        granted += n;
        i++;
    }
    atomic_store(&race_done, true);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    is_int(atomic_load(&race_admitted), granted, "every granted token served exactly once");
    tp_lease_unref(race_t);
}

/* ---- waiting for a lease: who is woken ---- */

static int notified;

static void count_notify(void)
{
    notified++;
}

static void test_waiters(void)
{
    struct tp_cfg_rate_limit c = cfg_of(100, 100, TP_KEY_HEADER);
    struct tp_lease_table *t = tp_lease_create("r", &c, 64, NULL);
    struct tp_lease_ask a;
    struct tp_rl_result res;
    uint64_t now = 20 * S;

    tp_lease_set_store_up(true);
    tp_lease_set_notify(count_notify);
    is_int(tp_lease_take(t, 5, now, 1u << 2, &res), TP_LEASE_WAIT, "shard 2 waits for key 5");
    is_int(notified, 1, "the ask woke the sender");
    is_int(tp_lease_take(t, 5, now, 1u << 0, NULL), TP_LEASE_WAIT, "shard 0 too");
    is_int(notified, 1, "one ask in flight: no second one, no second wake");
    is_int(tp_lease_take(t, 9, now, 0, NULL), TP_LEASE_WAIT, "key 9: a caller that does not wait");
    ok(tp_lease_next(t, now, &a) && a.key_hash == 5, "key 5 asked");
    is_int(tp_lease_grant(t, a.slot, now, now + MS, 2, 10, 100, 0), (1u << 2) | (1u << 0),
           "its grant names both waiting shards");
    is_int(tp_lease_take(t, 5, now + MS, 1u << 2, NULL), TP_LEASE_ADMIT, "shard 2 takes");
    is_int(tp_lease_take(t, 5, now + MS, 1u << 0, NULL), TP_LEASE_ADMIT, "shard 0 takes");
    ok(tp_lease_next(t, now, &a) && a.key_hash == 9, "key 9 asked");
    is_int(tp_lease_failed(t, a.slot), 0, "nobody waits for key 9: nobody to wake");
    ok(tp_lease_next(t, now, &a) && a.key_hash == 5, "key 5 ran low again: asked");
    is_int(tp_lease_failed(t, a.slot), 0, "nobody waits for it");
    /* a failed ask wakes its waiters too: they take again (and fall back, or ask again) */
    tp_lease_take(t, 9, now, 1u << 3, NULL);
    ok(tp_lease_next(t, now, &a) && a.key_hash == 9, "key 9 asked again");
    is_int(tp_lease_failed(t, a.slot), 1u << 3, "the failure wakes shard 3");
    is_int(tp_lease_failed(t, a.slot), 0, "once");
    tp_lease_set_notify(NULL);
    tp_lease_unref(t);
}

int main(void)
{
    test_basic();
    test_burst_one();
    test_sizing();
    test_waiters();
    test_race();
    return tap_done();
}
