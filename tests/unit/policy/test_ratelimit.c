/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the token-bucket rate limiter (src/policy/ratelimit.c):
 * bucket math on a fake clock, the 429 header values, clock edge cases,
 * reloads, the per-key table, and exactness under concurrent shards.
 * Runs under ASan and TSan (label tsan).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include <turnpike/ratelimit.h>

#include "tap.h"

#define S  1000000000ull
#define MS 1000000ull

/* A start time at which the token clock of every rate used here is an
 * integer (a multiple of an hour), so expectations are exact. */
#define T0 (10ull * 3600 * S)

static struct tp_cfg_rate_limit cfg_of(uint64_t tokens, uint64_t period_ms, uint64_t burst,
                                       enum tp_key_kind kind)
{
    struct tp_cfg_rate_limit c = {.tokens = tokens, .period_ms = period_ms, .burst = burst};
    c.key.kind = kind;
    return c;
}

static struct tp_ratelimit *mk(uint64_t tokens, uint64_t period_ms, uint64_t burst, enum tp_key_kind kind,
                               size_t slots)
{
    struct tp_cfg_rate_limit c = cfg_of(tokens, period_ms, burst, kind);
    int err = 0;
    struct tp_ratelimit *rl = tp_ratelimit_create(&c, slots, &err);

    if (!rl) {
        tap_diag("create failed: %d", err);
        abort();
    }
    return rl;
}

/* Takes until denied (at most <cap> times) at <now>; returns the number admitted. */
static uint64_t drain(struct tp_ratelimit *rl, uint64_t key, uint64_t now, uint64_t cap)
{
    uint64_t n = 0;

    while (n < cap && tp_ratelimit_take(rl, key, now, NULL))
        n++;
    return n;
}

static void test_create_errors(void)
{
    struct tp_cfg_rate_limit c;
    int err = 0;

    c = cfg_of(0, 1000, 1, TP_KEY_ROUTE);
    ok(!tp_ratelimit_create(&c, 0, &err) && err == -EINVAL, "tokens 0 is rejected");
    c = cfg_of(1, 0, 1, TP_KEY_ROUTE);
    err = 0;
    ok(!tp_ratelimit_create(&c, 0, &err) && err == -EINVAL, "period 0 is rejected");
    c = cfg_of(1, 1000, 0, TP_KEY_ROUTE);
    err = 0;
    ok(!tp_ratelimit_create(&c, 0, &err) && err == -EINVAL, "burst 0 is rejected");
    c = cfg_of(1, 1000, 1, TP_KEY_CLIENT_IP);
    err = 0;
    ok(!tp_ratelimit_create(&c, (size_t)TP_RL_MAX_SLOTS + 1, &err) && err == -EINVAL, "too many slots");
}

static void test_basic(void)
{
    struct tp_ratelimit *rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    struct tp_rl_result r;
    uint64_t n;
    bool all = true;

    ok(!tp_ratelimit_keyed(rl), "key route is a single bucket");
    tp_ratelimit_peek(rl, 0, T0, &r);
    is_int(r.remaining, 200, "starts full");
    is_int(r.reset_s, 0, "full: reset 0");
    for (int i = 0; i < 200; i++) {
        all &= tp_ratelimit_take(rl, 0, T0, &r);
        if (r.remaining != (uint64_t)(199 - i))
            all = false;
    }
    ok(all, "burst of 200 admitted, remaining counts down");
    ok(!tp_ratelimit_take(rl, 0, T0, &r), "201st denied");
    is_int(r.limit, 200, "limit = burst");
    is_int(r.remaining, 0, "remaining 0");
    is_int(r.retry_after_s, 1, "retry after 1 s (next token in 10 ms)");
    is_int(r.reset_s, 2, "reset 2 s (200 tokens at 100/s)");
    ok(!tp_ratelimit_take(rl, 0, T0 + 10 * MS - 1, NULL), "no token 1 ns before 10 ms");
    ok(tp_ratelimit_take(rl, 0, T0 + 10 * MS, NULL), "one token at exactly 10 ms");
    ok(!tp_ratelimit_take(rl, 0, T0 + 10 * MS, NULL), "and only one");
    ok(!tp_ratelimit_take(rl, 0, T0 + 20 * MS - 1, NULL), "next not before 20 ms");
    ok(tp_ratelimit_take(rl, 0, T0 + 20 * MS, NULL), "next at 20 ms");
    n = drain(rl, 0, T0 + 1 * S, 1000);
    is_int(n, 98, "by 1 s the rate produced 100 tokens in all");
    n = drain(rl, 0, T0 + 100 * S, 1000);
    is_int(n, 200, "a long pause refills to burst, not beyond");
    tp_ratelimit_destroy(rl);
}

/* The 429 header values for the rates of CONFIG.md. */
static void test_headers(void)
{
    struct tp_ratelimit *rl;
    struct tp_rl_result r;

    /* 6000/m, burst defaulted to tokens */
    rl = mk(6000, 60000, 6000, TP_KEY_ROUTE, 0);
    is_int(drain(rl, 0, T0, 10000), 6000, "6000/m: burst 6000");
    tp_ratelimit_take(rl, 0, T0, &r);
    ok(r.limit == 6000 && r.remaining == 0 && r.retry_after_s == 1 && r.reset_s == 60,
       "6000/m empty: limit 6000 remaining 0 retry 1 reset 60 (got %llu %llu %llu %llu)",
       (unsigned long long)r.limit, (unsigned long long)r.remaining, (unsigned long long)r.retry_after_s,
       (unsigned long long)r.reset_s);
    ok(tp_ratelimit_take(rl, 0, T0 + 1500 * MS, &r), "6000/m: 1.5 s later admitted");
    is_int(r.remaining, 149, "6000/m: 150 tokens refilled, 149 left");
    is_int(r.reset_s, 59, "6000/m: 5851 tokens to full = 58.51 s -> 59");
    is_int(r.retry_after_s, 0, "6000/m: a token left, retry 0");
    tp_ratelimit_destroy(rl);

    /* 50000/h: one token every 72 ms */
    rl = mk(50000, 3600000, 50000, TP_KEY_ROUTE, 0);
    is_int(drain(rl, 0, T0, 100000), 50000, "50000/h: burst 50000");
    tp_ratelimit_take(rl, 0, T0 + 71 * MS, &r);
    ok(r.remaining == 0 && r.retry_after_s == 1 && r.reset_s == 3600,
       "50000/h at 71 ms: remaining 0 retry 1 reset 3600 (got %llu %llu %llu)",
       (unsigned long long)r.remaining, (unsigned long long)r.retry_after_s, (unsigned long long)r.reset_s);
    ok(tp_ratelimit_take(rl, 0, T0 + 72 * MS, &r), "50000/h: a token at 72 ms");
    ok(tp_ratelimit_take(rl, 0, T0 + 10 * S, &r), "50000/h: admitted 10 s later");
    /* 138.9 tokens by 10 s, one taken at 72 ms, one now */
    is_int(r.remaining, 136, "50000/h: remaining after 10 s");
    /* full when the clock reaches z + 50000 = V(T0) + 2 + 50000 -> 3600.144 s after T0 */
    is_int(r.reset_s, 3591, "50000/h: reset");
    tp_ratelimit_destroy(rl);

    /* 1/h, burst 1: Retry-After in the hour */
    rl = mk(1, 3600000, 1, TP_KEY_ROUTE, 0);
    ok(tp_ratelimit_take(rl, 0, T0, &r), "1/h: first admitted");
    is_int(r.reset_s, 3600, "1/h: reset 3600 after taking the only token");
    ok(!tp_ratelimit_take(rl, 0, T0 + 1, &r), "1/h: second denied");
    is_int(r.retry_after_s, 3600, "1/h: retry 3600 (1 ns already passed, rounded up)");
    ok(!tp_ratelimit_take(rl, 0, T0 + 3599 * S + 1, &r), "1/h: denied just under an hour");
    is_int(r.retry_after_s, 1, "1/h: retry 1 near the end");
    ok(tp_ratelimit_take(rl, 0, T0 + 3600 * S, NULL), "1/h: admitted after an hour");
    tp_ratelimit_destroy(rl);

    /* 3/s: a token every 333.33 ms, not a whole number of ns */
    rl = mk(3, 1000, 2, TP_KEY_ROUTE, 0);
    is_int(drain(rl, 0, T0, 10), 2, "3/s: burst 2");
    tp_ratelimit_take(rl, 0, T0, &r);
    ok(r.retry_after_s == 1 && r.reset_s == 1, "3/s: retry 1 reset 1");
    ok(!tp_ratelimit_take(rl, 0, T0 + 333333333, NULL), "3/s: no token at 333333333 ns");
    ok(tp_ratelimit_take(rl, 0, T0 + 333333334, NULL), "3/s: token at 333333334 ns");
    ok(!tp_ratelimit_take(rl, 0, T0 + 666666666, NULL), "3/s: no token at 666666666 ns");
    ok(tp_ratelimit_take(rl, 0, T0 + 666666667, NULL), "3/s: token at 666666667 ns");
    ok(tp_ratelimit_take(rl, 0, T0 + 1 * S, NULL), "3/s: token at exactly 1 s");
    ok(!tp_ratelimit_take(rl, 0, T0 + 1 * S, NULL), "3/s: 3 per second exactly");
    tp_ratelimit_destroy(rl);

    /* 100/s with burst 1: Reset and Retry-After agree */
    rl = mk(100, 1000, 1, TP_KEY_ROUTE, 0);
    tp_ratelimit_take(rl, 0, T0, &r);
    ok(r.remaining == 0 && r.reset_s == 1 && r.retry_after_s == 1, "burst 1: remaining 0 reset 1 retry 1");
    tp_ratelimit_destroy(rl);
}

static void test_clock_edges(void)
{
    struct tp_ratelimit *rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    struct tp_rl_result r;
    uint64_t n;

    /* same ns: no refill */
    ok(tp_ratelimit_take(rl, 0, T0, &r) && r.remaining == 199, "take at T0");
    ok(tp_ratelimit_take(rl, 0, T0, &r) && r.remaining == 198, "same ns: no refill");
    is_int(drain(rl, 0, T0 + 5 * S, 1000), 200, "5 s later: full again (refill capped)");

    /* backwards: an older reading never gains tokens and writes nothing */
    ok(!tp_ratelimit_take(rl, 0, T0, &r), "5 s back in time: denied");
    is_int(r.remaining, 0, "backwards: remaining 0");
    ok(r.retry_after_s >= 5, "backwards: retry counts from the older reading (%llu)",
       (unsigned long long)r.retry_after_s);
    ok(!tp_ratelimit_take(rl, 0, T0 + 5 * S, NULL), "back at the newest time: still empty");
    ok(tp_ratelimit_take(rl, 0, T0 + 5 * S + 10 * MS, NULL), "refill continues from the newest state");

    /* partial bucket read from a slightly older clock: fewer tokens, not more */
    n = drain(rl, 0, T0 + 100 * S, 50);
    is_int(n, 50, "50 taken at T0+100s");
    tp_ratelimit_peek(rl, 0, T0 + 100 * S, &r);
    is_int(r.remaining, 150, "150 left");
    tp_ratelimit_peek(rl, 0, T0 + 100 * S - 100 * MS, &r);
    is_int(r.remaining, 140, "100 ms older reading sees 10 fewer, never more");
    ok(tp_ratelimit_take(rl, 0, T0 + 100 * S - 100 * MS, &r) && r.remaining == 139,
       "taken from the older view");
    tp_ratelimit_peek(rl, 0, T0 + 100 * S, &r);
    is_int(r.remaining, 149, "the newest view lost exactly the one token taken");
    tp_ratelimit_destroy(rl);

    /* huge gaps: 100 years, and a gap whose token difference wraps 2^63 */
    rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    drain(rl, 0, T0, 1000);
    is_int(drain(rl, 0, T0 + 100ull * 365 * 24 * 3600 * S, 1000), 200, "100 years later: full, capped");
    tp_ratelimit_destroy(rl);
    rl = mk(1000000000000ull, 1000, 5, TP_KEY_ROUTE, 0); /* 10^12/s: 1000 tokens per ns */
    is_int(drain(rl, 0, 1 * S, 100), 5, "10^12/s: burst 5");
    is_int(drain(rl, 0, 1 * S, 100), 0, "10^12/s: empty at the same ns");
    ok(tp_ratelimit_take(rl, 0, 1 * S + 1, NULL), "10^12/s: 1 ns later tokens again");
    /* 10^7 s at 10^12/s = 10^19 tokens > 2^63: the difference wrapped */
    is_int(drain(rl, 0, 1 * S + 10000000ull * S, 100), 5, "wrapped difference reads as full");
    tp_ratelimit_destroy(rl);

    /* now = 0 and a clock starting at 0 */
    rl = mk(10, 1000, 3, TP_KEY_ROUTE, 0);
    is_int(drain(rl, 0, 0, 100), 3, "full at now = 0");
    ok(tp_ratelimit_take(rl, 0, 100 * MS, NULL), "refill from 0");
    tp_ratelimit_destroy(rl);
}

static void test_update(void)
{
    struct tp_ratelimit *rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    struct tp_cfg_rate_limit c;
    struct tp_rl_result r;

    drain(rl, 0, T0, 50);
    c = cfg_of(100, 1000, 100, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, T0), 0, "update burst 200 -> 100");
    tp_ratelimit_peek(rl, 0, T0, &r);
    ok(r.remaining == 100 && r.limit == 100, "level 150 clamped to the new burst 100");
    ok(tp_ratelimit_take(rl, 0, T0, &r) && r.remaining == 99, "take after the clamp leaves 99");
    is_int(drain(rl, 0, T0 + 10 * S, 1000), 100, "refills to the new burst only");

    c = cfg_of(100, 1000, 400, TP_KEY_ROUTE);
    drain(rl, 0, T0 + 20 * S, 50); /* level 50 of 100 */
    is_int(tp_ratelimit_update(rl, &c, T0 + 20 * S), 0, "update burst 100 -> 400");
    tp_ratelimit_peek(rl, 0, T0 + 20 * S, &r);
    ok(r.remaining == 50 && r.limit == 400, "a bigger burst keeps the level (50)");
    tp_ratelimit_peek(rl, 0, T0 + 21 * S, &r);
    is_int(r.remaining, 150, "and refills beyond the old burst");
    is_int(drain(rl, 0, T0 + 30 * S, 1000), 400, "up to the new burst");

    /* rate change keeps the level; refill at the new rate from the update on */
    drain(rl, 0, T0 + 40 * S, 350); /* level 50 */
    c = cfg_of(10, 1000, 400, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, T0 + 40 * S), 0, "update rate 100/s -> 10/s");
    tp_ratelimit_peek(rl, 0, T0 + 40 * S, &r);
    is_int(r.remaining, 50, "rate change keeps the level");
    tp_ratelimit_peek(rl, 0, T0 + 41 * S, &r);
    is_int(r.remaining, 60, "refills at 10/s afterwards");
    tp_ratelimit_peek(rl, 0, T0 + 41 * S, &r);
    is_int(r.reset_s, 34, "reset at the new rate: 340 tokens at 10/s");
    c = cfg_of(1000, 60000, 400, TP_KEY_ROUTE); /* 16.67/s, given as /m */
    is_int(tp_ratelimit_update(rl, &c, T0 + 41 * S), 0, "update rate 10/s -> 1000/m");
    tp_ratelimit_peek(rl, 0, T0 + 41 * S, &r);
    is_int(r.remaining, 60, "level kept across a second rate change");
    tp_ratelimit_peek(rl, 0, T0 + 44 * S, &r);
    is_int(r.remaining, 110, "1000/m: 50 tokens in 3 s");

    c = cfg_of(10, 1000, 0, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, T0 + 44 * S), -EINVAL, "invalid update refused");
    c = cfg_of(10, 1000, 400, TP_KEY_CLIENT_IP);
    is_int(tp_ratelimit_update(rl, &c, T0 + 44 * S), -EINVAL, "route -> per-key needs a new limiter");
    tp_ratelimit_peek(rl, 0, T0 + 44 * S, &r);
    ok(r.remaining == 110 && r.limit == 400, "refused updates change nothing");
    tp_ratelimit_destroy(rl);
}

static void test_keyed(void)
{
    struct tp_ratelimit *rl = mk(1, 3600000, 3, TP_KEY_CLIENT_IP, 0);
    struct tp_rl_stats st;
    struct tp_rl_result r;
    uint64_t n;

    ok(tp_ratelimit_keyed(rl), "client_ip is keyed");
    tp_ratelimit_stats(rl, &st);
    is_int(st.slots, TP_RL_DEFAULT_SLOTS, "default slots");
    is_int(drain(rl, 0x1111, T0, 10), 3, "key A: burst 3");
    is_int(drain(rl, 0x2222, T0, 10), 3, "key B: its own burst 3");
    is_int(drain(rl, 0x1111, T0, 10), 0, "key A stays empty");
    tp_ratelimit_peek(rl, 0x3333, T0, &r);
    is_int(r.remaining, 3, "unknown key peeks full");
    is_int(drain(rl, 0, T0, 10), 3, "key hash 0 works");
    /* keys colliding on the home slot */
    is_int(drain(rl, 0x1111 + ((uint64_t)TP_RL_DEFAULT_SLOTS << 4), T0, 10), 3, "same home slot, other key");
    is_int(drain(rl, 0x1111, T0, 10), 0, "key A still empty after a neighbour");
    tp_ratelimit_stats(rl, &st);
    is_int(st.slots_used, 4, "4 slots used");
    is_int(st.table_full, 0, "never full");
    tp_ratelimit_destroy(rl);

    /* a 16-slot table: the probe window covers it all */
    rl = mk(1, 3600000, 2, TP_KEY_HEADER, 16);
    tp_ratelimit_stats(rl, &st);
    is_int(st.slots, 16, "16 slots");
    n = 0;
    for (uint64_t k = 1; k <= 16; k++)
        n += tp_ratelimit_take(rl, k * 0x9E3779B97F4A7C15ull, T0, NULL);
    is_int(n, 16, "16 keys take one token each");
    tp_ratelimit_stats(rl, &st);
    ok(st.slots_used == 16 && st.table_full == 0, "table holds 16 keys");
    ok(tp_ratelimit_take(rl, 0xABCDEFull, T0, &r), "17th key: decided by the full overflow bucket");
    is_int(tp_ratelimit_table_full_total(rl), 1, "table_full counted");
    ok(tp_ratelimit_take(rl, 0xABCDF0ull, T0, NULL), "18th key: overflow bucket again");
    ok(!tp_ratelimit_take(rl, 0xABCDF1ull, T0, &r), "19th key: overflow bucket empty, denied");
    ok(r.limit == 2 && r.retry_after_s >= 1, "denied by overflow: headers of the overflow bucket");
    is_int(tp_ratelimit_table_full_total(rl), 3, "each overflowed take counted");
    ok(tp_ratelimit_take(rl, 1 * 0x9E3779B97F4A7C15ull, T0, NULL), "tracked keys keep their own bucket");
    ok(!tp_ratelimit_take(rl, 1 * 0x9E3779B97F4A7C15ull, T0, NULL), "... which is now empty");

    /* an hour: buckets with 1 of 2 tokens refilled to full -> stale */
    ok(tp_ratelimit_take(rl, 0x777, T0 + 3600 * S, NULL), "a new key after the others refilled");
    tp_ratelimit_stats(rl, &st);
    is_int(st.reclaimed, 1, "it reclaimed a stale slot");
    is_int(st.table_full, 3, "not counted as full");
    is_int(drain(rl, 0x777, T0 + 3600 * S, 10), 1, "the reclaimed slot is the key's own bucket (2 - 1)");
    is_int(drain(rl, 1 * 0x9E3779B97F4A7C15ull, T0 + 3600 * S, 10), 1,
           "the emptied key was not stale (1 of 2): kept its bucket, one token refilled");
    tp_ratelimit_destroy(rl);
}

/* ---- concurrency: exactness across threads ---- */

#define NTHREADS 4

struct race {
    struct tp_ratelimit *rl;
    uint64_t key;
    _Atomic uint64_t fake_now; /* shared fake clock; 0 = use CLOCK_MONOTONIC */
    uint64_t step;             /* fake ns per take */
    uint64_t iters;
    _Atomic uint64_t admitted;
    _Atomic int go;
    _Atomic int stop_updates;
};

static uint64_t mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * S + (uint64_t)ts.tv_nsec;
}

static void *race_thread(void *arg)
{
    struct race *rc = arg;
    uint64_t mine = 0;

    while (!atomic_load(&rc->go))
        ;
    for (uint64_t i = 0; i < rc->iters; i++) {
        uint64_t now = rc->step ? atomic_fetch_add(&rc->fake_now, rc->step) : mono_ns();

        mine += tp_ratelimit_take(rc->rl, rc->key, now, NULL);
    }
    atomic_fetch_add(&rc->admitted, mine);
    return NULL;
}

/* Reloads the burst between two values while the takers run (same rate). */
static void *update_thread(void *arg)
{
    struct race *rc = arg;
    uint64_t i = 0;

    while (!atomic_load(&rc->stop_updates)) {
        struct tp_cfg_rate_limit c = cfg_of(1000, 1000, (i++ & 1) ? 50 : 40, TP_KEY_ROUTE);
        uint64_t now = atomic_load(&rc->fake_now);

        tp_ratelimit_update(rc->rl, &c, now);
    }
    return NULL;
}

static uint64_t run_race(struct race *rc, bool with_updates)
{
    pthread_t th[NTHREADS], up;

    atomic_store(&rc->admitted, 0);
    atomic_store(&rc->go, 0);
    atomic_store(&rc->stop_updates, 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, race_thread, rc);
    if (with_updates)
        pthread_create(&up, NULL, update_thread, rc);
    atomic_store(&rc->go, 1);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&rc->stop_updates, 1);
    if (with_updates)
        pthread_join(up, NULL);
    return atomic_load(&rc->admitted);
}

static void test_threads(void)
{
    struct race rc = {0};
    uint64_t start, span, got, bound;

    /* Shared fake clock: every take gets its own time, 1 us apart; 1000/s
     * means one token per 1000 takes. */
    rc.rl = mk(1000, 1000, 50, TP_KEY_ROUTE, 0);
    rc.step = 1000;
    rc.iters = 50000;
    start = T0;
    atomic_store(&rc.fake_now, start);
    got = run_race(&rc, false);
    span = atomic_load(&rc.fake_now) - start;
    bound = 50 + span / 1000000 + 1;
    ok(got <= bound && got >= 50, "fake clock, %d threads: admitted %llu <= burst + rate*t + 1 = %llu",
       NTHREADS, (unsigned long long)got, (unsigned long long)bound);
    tp_ratelimit_destroy(rc.rl);

    /* Same on one key of a keyed table. */
    rc.rl = mk(1000, 1000, 50, TP_KEY_CLIENT_IP, 0);
    rc.key = 0x12345678;
    atomic_store(&rc.fake_now, start);
    got = run_race(&rc, false);
    span = atomic_load(&rc.fake_now) - start;
    bound = 50 + span / 1000000 + 1;
    ok(got <= bound && got >= 50, "keyed, fake clock: admitted %llu <= %llu", (unsigned long long)got,
       (unsigned long long)bound);
    tp_ratelimit_destroy(rc.rl);

    /* Real monotonic clock. */
    rc.rl = mk(1000, 1000, 50, TP_KEY_ROUTE, 0);
    rc.key = 0;
    rc.step = 0;
    rc.iters = 20000;
    start = mono_ns();
    got = run_race(&rc, false);
    span = mono_ns() - start;
    /* takes read the clock inside [start, end] and the bucket started full */
    bound = 50 + (span * 1000) / S + 1;
    ok(got <= bound && got >= 50, "monotonic clock: admitted %llu <= %llu over %llu ns",
       (unsigned long long)got, (unsigned long long)bound, (unsigned long long)span);
    tp_ratelimit_destroy(rc.rl);

    /* Reloads racing with takes: the bigger burst bounds it. */
    rc.rl = mk(1000, 1000, 50, TP_KEY_ROUTE, 0);
    rc.step = 1000;
    rc.iters = 20000;
    atomic_store(&rc.fake_now, start = T0);
    got = run_race(&rc, true);
    span = atomic_load(&rc.fake_now) - start;
    bound = 50 + span / 1000000 + 1;
    ok(got <= bound && got >= 40, "updates racing with takes: admitted %llu <= %llu", (unsigned long long)got,
       (unsigned long long)bound);
    tp_ratelimit_destroy(rc.rl);
}

int main(void)
{
    test_create_errors();
    test_basic();
    test_headers();
    test_clock_edges();
    test_update();
    test_keyed();
    test_threads();
    return tap_done();
}
