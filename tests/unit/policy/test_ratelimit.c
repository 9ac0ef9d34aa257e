/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the token-bucket rate limiter (src/policy/ratelimit.c):
 * bucket math on a fake clock, the 429 header values, clock edge cases,
 * reloads, the per-key table, buckets at an arbitrary phase of the limiter's
 * clock (a take from a full bucket banks no fraction), fractional refill,
 * extreme rates, years of idleness, reloads that change the clock's unit, and
 * exactness under concurrent shards.
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

/* The 429 header values for the rates of docs/reference.md. */
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
    /* 10^7 s at 10^12/s = 10^19 units > 2^63: the difference wrapped around */
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

/* ---- the bucket's own phase: a take from a full bucket banks nothing ---- */

/* A time at no particular phase of any token clock used here: the limiter's
 * clock starts at 0 (creation), and this is neither a whole hour nor a whole
 * second after it. */
#define TP (T0 + 2991 * S + 123 * MS)

/* Takes <n> tokens at TP from a fresh <tokens>/<period_ms> burst <burst>
 * limiter, then checks the denied take's headers and when the next token
 * comes: one token interval after the take (not 2 ns before it, nor 1 ms
 * for intervals of a minute or more). */
static void check_empty(uint64_t tokens, uint64_t period_ms, uint64_t burst, uint64_t retry_s,
                        uint64_t reset_s, const char *what)
{
    struct tp_ratelimit *rl = mk(tokens, period_ms, burst, TP_KEY_ROUTE, 0);
    struct tp_rl_result r;
    /* the next token: one interval, rounded up to the ns */
    uint64_t next = (period_ms * MS + tokens - 1) / tokens;
    uint64_t early = next >= 60 * S ? 1 * MS : 2;

    ok(drain(rl, 0, TP, burst + 5) == burst, "%s: a full bucket gives %llu at once", what,
       (unsigned long long)burst);
    ok(!tp_ratelimit_take(rl, 0, TP, &r), "%s: then denied", what);
    ok(r.remaining == 0 && r.retry_after_s == retry_s && r.reset_s == reset_s,
       "%s: retry %llu reset %llu (got remaining %llu retry %llu reset %llu)", what,
       (unsigned long long)retry_s, (unsigned long long)reset_s, (unsigned long long)r.remaining,
       (unsigned long long)r.retry_after_s, (unsigned long long)r.reset_s);
    ok(!tp_ratelimit_take(rl, 0, TP + next - early, NULL), "%s: still empty just before %llu ns", what,
       (unsigned long long)next);
    ok(tp_ratelimit_take(rl, 0, TP + next, &r), "%s: a token at %llu ns", what, (unsigned long long)next);
    ok(!tp_ratelimit_take(rl, 0, TP + next, NULL), "%s: only one", what);
    tp_ratelimit_destroy(rl);
}

static void test_phase(void)
{
    struct tp_ratelimit *rl;
    struct tp_rl_result r;
    uint64_t n;
    bool all;

    /* The integration test's case: at 2991.123 s after a whole hour of the
     * limiter's clock, 609 s were left to the next global tick. */
    check_empty(1, 3600000, 1, 3600, 3600, "1/h burst 1");
    check_empty(1, 60000, 1, 60, 60, "1/m burst 1");
    check_empty(2, 3600000, 1, 1800, 1800, "2/h burst 1");
    check_empty(1, 3600000, 2, 3600, 7200, "1/h burst 2");
    check_empty(10, 60000, 5, 6, 30, "10/m burst 5");
    check_empty(3, 1000, 2, 1, 1, "3/s burst 2");

    /* 1/m burst 1 around a whole minute of the clock: one request, not two */
    rl = mk(1, 60000, 1, TP_KEY_ROUTE, 0);
    ok(tp_ratelimit_take(rl, 0, T0 + 59 * S + 999 * MS, NULL), "1/m: admitted 1 ms before a whole minute");
    ok(!tp_ratelimit_take(rl, 0, T0 + 60 * S + 1 * MS, &r), "1/m: denied 1 ms after it");
    is_int(r.retry_after_s, 60, "1/m: retry 60 (59.998 s rounded up)");
    tp_ratelimit_destroy(rl);

    /* many phases, down to the ns: the next token is one interval after the
     * take, less at most one clock unit (< 2 ns) */
    all = true;
    for (uint64_t i = 0; i < 200; i++) {
        uint64_t t = T0 + (i * 0x9E3779B97F4A7C15ull) % (7200 * S);
        struct tp_rl_result d;

        rl = mk(1, 3600000, 1, TP_KEY_ROUTE, 0);
        all &= tp_ratelimit_take(rl, 0, t, NULL);
        all &= !tp_ratelimit_take(rl, 0, t, &d);
        all &= d.retry_after_s == 3600 && d.reset_s == 3600;
        all &= !tp_ratelimit_take(rl, 0, t + 3600 * S - 2, NULL);
        all &= tp_ratelimit_take(rl, 0, t + 3600 * S, NULL);
        tp_ratelimit_destroy(rl);
        rl = mk(3, 1000, 1, TP_KEY_ROUTE, 0);
        all &= tp_ratelimit_take(rl, 0, t, NULL);
        all &= !tp_ratelimit_take(rl, 0, t + 333333333 - 2, NULL);
        all &= tp_ratelimit_take(rl, 0, t + 333333334, NULL);
        tp_ratelimit_destroy(rl);
    }
    ok(all, "200 phases: 1/h and 3/s buckets refill one interval after the take");

    /* a take from a full bucket drops the fraction, and a steady client at
     * exactly the rate is never denied */
    rl = mk(100, 1000, 1, TP_KEY_ROUTE, 0);
    n = 0;
    for (uint64_t i = 0; i < 1000; i++)
        n += tp_ratelimit_take(rl, 0, TP + 5 * MS + i * 10 * MS, NULL);
    is_int(n, 1000, "100/s burst 1: one request every 10 ms, all admitted");
    ok(!tp_ratelimit_take(rl, 0, TP + 5 * MS + 999 * 10 * MS + 9 * MS, NULL), "and none in between");
    tp_ratelimit_destroy(rl);
}

/* A partly refilled bucket keeps its fraction of a token. */
static void test_fraction(void)
{
    struct tp_ratelimit *rl = mk(1, 1000, 10, TP_KEY_ROUTE, 0);
    struct tp_rl_result r;

    is_int(drain(rl, 0, TP, 100), 10, "1/s burst 10: 10 at once");
    tp_ratelimit_peek(rl, 0, TP + 2500 * MS, &r);
    ok(r.remaining == 2 && r.reset_s == 8, "2.5 s later: 2 tokens, full in 7.5 s (got %llu, %llu)",
       (unsigned long long)r.remaining, (unsigned long long)r.reset_s);
    is_int(drain(rl, 0, TP + 2500 * MS, 100), 2, "2 taken at 2.5 s");
    tp_ratelimit_take(rl, 0, TP + 2500 * MS, &r);
    ok(r.remaining == 0 && r.retry_after_s == 1 && r.reset_s == 10,
       "half a token left: retry 1 reset 10 (9.5 s)");
    ok(!tp_ratelimit_take(rl, 0, TP + 3000 * MS - 2, NULL), "no third token before 3.0 s");
    ok(tp_ratelimit_take(rl, 0, TP + 3000 * MS, NULL), "the half token counts: a third at 3.0 s");
    ok(!tp_ratelimit_take(rl, 0, TP + 3000 * MS, NULL), "and no more");
    is_int(drain(rl, 0, TP + 13 * S, 100), 10, "full again 10 s later, capped at burst");
    tp_ratelimit_destroy(rl);
}

/* 10^9/s (one token per ns), 1/h and one token per 1000 hours. */
static void test_extreme_rates(void)
{
    struct tp_ratelimit *rl;
    struct tp_rl_result r;
    uint64_t n;

    rl = mk(1000000000ull, 1000, 1000, TP_KEY_ROUTE, 0);
    is_int(drain(rl, 0, TP, 5000), 1000, "10^9/s: burst 1000");
    ok(!tp_ratelimit_take(rl, 0, TP, &r) && r.retry_after_s == 1 && r.reset_s == 1,
       "10^9/s: empty: retry 1 reset 1");
    is_int(drain(rl, 0, TP + 1, 5000), 1, "10^9/s: one token 1 ns later");
    is_int(drain(rl, 0, TP + 501, 5000), 500, "10^9/s: 500 in 500 ns");
    is_int(drain(rl, 0, TP + 1 * S, 5000), 1000, "10^9/s: capped at burst");
    tp_ratelimit_destroy(rl);

    rl = mk(1000000000ull, 1000, 1, TP_KEY_CLIENT_IP, 16);
    n = 0;
    for (uint64_t i = 0; i < 1000; i++)
        n += tp_ratelimit_take(rl, 7, TP + i, NULL);
    is_int(n, 1000, "10^9/s burst 1: a take every ns, all admitted");
    ok(!tp_ratelimit_take(rl, 7, TP + 999, NULL), "and not two in one ns");
    tp_ratelimit_destroy(rl);

    rl = mk(1, 3600000000ull, 1, TP_KEY_ROUTE, 0);
    ok(tp_ratelimit_take(rl, 0, TP, NULL), "1 per 1000 h: first admitted");
    ok(!tp_ratelimit_take(rl, 0, TP + 1 * S, &r) && r.retry_after_s == 3599999 && r.reset_s == 3599999,
       "1 per 1000 h: retry 3599999 s one second later (got %llu %llu)", (unsigned long long)r.retry_after_s,
       (unsigned long long)r.reset_s);
    ok(!tp_ratelimit_take(rl, 0, TP + 3600000 * S - 1 * MS, NULL), "1 per 1000 h: not before 1000 h");
    ok(tp_ratelimit_take(rl, 0, TP + 3600000 * S, NULL), "1 per 1000 h: at 1000 h");
    tp_ratelimit_destroy(rl);

    /* a huge burst forces whole-token units: still exact at the boundary */
    rl = mk(1, 1000, 1ull << 60, TP_KEY_ROUTE, 0);
    ok(tp_ratelimit_take(rl, 0, TP, &r) && r.remaining == (1ull << 60) - 1, "burst 2^60: full at start");
    tp_ratelimit_destroy(rl);
}

/* Buckets idle for years read as full, used or not. */
static void test_idle(void)
{
    const uint64_t year = 365ull * 24 * 3600 * S;
    struct tp_ratelimit *rl;
    struct tp_rl_result r;

    rl = mk(1, 3600000, 3, TP_KEY_CLIENT_IP, 0);
    is_int(drain(rl, 0x42, TP, 10), 3, "1/h keyed: emptied");
    tp_ratelimit_peek(rl, 0x42, TP + 10 * year, &r);
    ok(r.remaining == 3 && r.reset_s == 0, "1/h: 10 years idle reads full");
    is_int(drain(rl, 0x42, TP + 10 * year, 10), 3, "and gives burst, no more");
    is_int(drain(rl, 0x43, TP + 10 * year, 10), 3, "a never-used slot after 10 years: full");
    tp_ratelimit_destroy(rl);

    rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    drain(rl, 0, TP, 1000);
    is_int(drain(rl, 0, TP + 150 * year, 1000), 200, "100/s: 150 years idle: full");
    tp_ratelimit_destroy(rl);

    /* 10^9/s has one unit per token: 150 years is 4.7 * 10^18 units, past
     * 2^62, where the difference wraps and the guard reads it as full */
    rl = mk(1000000000ull, 1000, 5, TP_KEY_ROUTE, 0);
    drain(rl, 0, TP, 100);
    is_int(drain(rl, 0, TP + 150 * year, 100), 5, "10^9/s: 150 years idle (wrapped difference): full");
    is_int(drain(rl, 0, TP + 150 * year, 100), 0, "and empty again after that");
    tp_ratelimit_destroy(rl);
}

/* Reloads that change the clock's unit (S) keep every bucket's level. */
static void test_rescale(void)
{
    struct tp_ratelimit *rl;
    struct tp_cfg_rate_limit c;
    struct tp_rl_result r;
    struct tp_rl_stats st;
    bool all;

    /* 100/s -> 1/h: S grows 2^18 times */
    rl = mk(100, 1000, 200, TP_KEY_ROUTE, 0);
    drain(rl, 0, TP, 150);
    c = cfg_of(1, 3600000, 200, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, TP), 0, "update 100/s -> 1/h");
    tp_ratelimit_peek(rl, 0, TP, &r);
    ok(r.remaining == 50 && r.reset_s == 150 * 3600, "level 50 kept, 150 h to full (got %llu %llu)",
       (unsigned long long)r.remaining, (unsigned long long)r.reset_s);
    tp_ratelimit_peek(rl, 0, TP + 3600 * S, &r);
    is_int(r.remaining, 51, "one more an hour later");
    /* 1/h -> 10^9/s: S shrinks to 1 */
    c = cfg_of(1000000000ull, 1000, 200, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, TP + 3600 * S), 0, "update 1/h -> 10^9/s");
    tp_ratelimit_peek(rl, 0, TP + 3600 * S, &r);
    is_int(r.remaining, 51, "level 51 kept");
    tp_ratelimit_peek(rl, 0, TP + 3600 * S + 100, &r);
    is_int(r.remaining, 151, "100 more in 100 ns");
    is_int(drain(rl, 0, TP + 3601 * S, 1000), 200, "full and capped a second later");
    tp_ratelimit_destroy(rl);

    /* fractions: scaling up keeps them exactly, scaling down rounds down */
    rl = mk(1, 1000, 10, TP_KEY_ROUTE, 0);
    drain(rl, 0, TP, 100);
    c = cfg_of(1, 60000, 10, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, TP + 2500 * MS), 0, "update 1/s -> 1/m at level 2.5");
    is_int(drain(rl, 0, TP + 2500 * MS, 100), 2, "2 tokens kept");
    ok(!tp_ratelimit_take(rl, 0, TP + 2500 * MS + 30 * S - 1 * MS, &r), "the half token needs 30 s at 1/m");
    ok(tp_ratelimit_take(rl, 0, TP + 2500 * MS + 30 * S, NULL), "and counts: a token at 30 s");
    c = cfg_of(1000000000ull, 1000, 10, TP_KEY_ROUTE);
    drain(rl, 0, TP + 2500 * MS + 45 * S, 100); /* at 1/m, 15 s: a quarter token */
    is_int(tp_ratelimit_update(rl, &c, TP + 2500 * MS + 45 * S), 0, "update 1/m -> 10^9/s at level 0.25");
    ok(!tp_ratelimit_take(rl, 0, TP + 2500 * MS + 45 * S, NULL),
       "the quarter token is dropped (1 unit = 1 token)");
    ok(tp_ratelimit_take(rl, 0, TP + 2500 * MS + 45 * S + 1, NULL), "a whole token 1 ns later");
    tp_ratelimit_destroy(rl);

    /* a bucket in debt (taken with a newer clock reading than the update's)
     * stays in debt */
    rl = mk(1, 1000, 1, TP_KEY_ROUTE, 0);
    ok(tp_ratelimit_take(rl, 0, TP + 10 * S, NULL), "taken at +10 s");
    c = cfg_of(1, 60000, 1, TP_KEY_ROUTE);
    is_int(tp_ratelimit_update(rl, &c, TP), 0, "update 1/s -> 1/m with an older clock reading");
    ok(!tp_ratelimit_take(rl, 0, TP + 10 * S, &r), "still empty at +10 s");
    ok(r.retry_after_s >= 60, "and no token before a minute at the new rate (%llu)",
       (unsigned long long)r.retry_after_s);
    tp_ratelimit_destroy(rl);

    /* a keyed table: every slot converted, levels kept, table intact */
    rl = mk(10, 1000, 4, TP_KEY_HEADER, 16);
    for (uint64_t k = 1; k <= 8; k++)
        drain(rl, k, TP, (k - 1) % 4 + 1); /* levels 3, 2, 1, 0, 3, 2, 1, 0 */
    for (uint64_t k = 100; k < 107; k++)
        drain(rl, k, TP, 1);
    drain(rl, 9, TP - 1 * S, 1); /* the 16th key, full again at TP */
    c = cfg_of(10, 3600000, 4, TP_KEY_HEADER);
    is_int(tp_ratelimit_update(rl, &c, TP), 0, "keyed: update 10/s -> 10/h");
    all = true;
    for (uint64_t k = 1; k <= 8; k++) {
        tp_ratelimit_peek(rl, k, TP, &r);
        all &= r.remaining == 3 - (k - 1) % 4;
    }
    ok(all, "keyed: every key keeps its level");
    tp_ratelimit_peek(rl, 99, TP, &r);
    is_int(r.remaining, 4, "keyed: an unknown key is full");
    is_int(drain(rl, 4, TP + 179 * S, 10), 0, "keyed: the emptied key refills at 10/h (none in 179 s)");
    tp_ratelimit_stats(rl, &st);
    ok(st.slots_used == 16 && st.table_full == 0, "keyed: 16 slots, all used (%llu)",
       (unsigned long long)st.slots_used);
    ok(tp_ratelimit_take(rl, 200, TP, &r) && r.remaining == 3, "keyed: a 17th key takes over the full slot");
    tp_ratelimit_stats(rl, &st);
    ok(st.reclaimed == 1 && st.table_full == 0, "keyed: reclaimed, not full");
    c = cfg_of(10, 1000, 4, TP_KEY_HEADER);
    is_int(tp_ratelimit_update(rl, &c, TP + 180 * S), 0,
           "keyed: back to 10/s at 180 s (half a token at 10/h)");
    tp_ratelimit_peek(rl, 200, TP + 180 * S, &r);
    is_int(r.remaining, 3, "keyed: level 3.5 of the new key kept");
    tp_ratelimit_peek(rl, 200, TP + 180 * S + 50 * MS, &r);
    is_int(r.remaining, 4, "keyed: and its half token completes in 50 ms at 10/s");
    tp_ratelimit_peek(rl, 4, TP + 180 * S + 49 * MS, &r);
    is_int(r.remaining, 0, "keyed: the emptied key has half a token ...");
    is_int(drain(rl, 4, TP + 180 * S + 50 * MS, 10), 1, "keyed: ... and a whole one 50 ms later");
    tp_ratelimit_destroy(rl);

    /* back and forth many times: the level is kept within rounding */
    rl = mk(1000, 1000, 100, TP_KEY_ROUTE, 0);
    drain(rl, 0, TP, 60); /* level 40 */
    for (int i = 0; i < 40; i++) {
        c = (i & 1) ? cfg_of(1000, 1000, 100, TP_KEY_ROUTE) : cfg_of(1, 3600000, 100, TP_KEY_ROUTE);
        tp_ratelimit_update(rl, &c, TP);
    }
    tp_ratelimit_peek(rl, 0, TP, &r);
    is_int(r.remaining, 40, "40 rescalings at one instant: level 40 kept");
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
    bool rescale; /* updates alternate the rate (1000/s, 10/s) instead of the burst */
    _Atomic uint64_t n_updates;
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

/* Reloads the burst between two values while the takers run (same rate),
 * or with <rescale> the rate between 1000/s and 10/s, which changes the
 * clock's unit 64-fold and converts every bucket word each time. */
static void *update_thread(void *arg)
{
    struct race *rc = arg;
    enum tp_key_kind kind = tp_ratelimit_keyed(rc->rl) ? TP_KEY_CLIENT_IP : TP_KEY_ROUTE;
    uint64_t i = 0;

    while (!atomic_load(&rc->stop_updates)) {
        struct tp_cfg_rate_limit c = rc->rescale ? cfg_of((i & 1) ? 10 : 1000, 1000, 50, kind)
                                                 : cfg_of(1000, 1000, (i & 1) ? 50 : 40, kind);
        uint64_t now = atomic_load(&rc->fake_now);

        i++;
        tp_ratelimit_update(rc->rl, &c, now);
    }
    atomic_store(&rc->n_updates, i);
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

    /* Rescaling reloads racing with takes, on the route bucket and on one key
     * of a keyed table (the sweep converts all its slots each time): the
     * faster rate bounds it, and the bucket is never corrupted (a word read
     * in the wrong unit would show up as a huge level or a lockout). */
    for (int keyed = 0; keyed < 2; keyed++) {
        struct tp_rl_result r;

        rc.rl = keyed ? mk(1000, 1000, 50, TP_KEY_CLIENT_IP, 16) : mk(1000, 1000, 50, TP_KEY_ROUTE, 0);
        rc.key = keyed ? 0x9999 : 0;
        rc.rescale = true;
        rc.step = 1000;
        rc.iters = 20000;
        atomic_store(&rc.fake_now, start = T0);
        got = run_race(&rc, true);
        span = atomic_load(&rc.fake_now) - start;
        bound = 50 + span / 1000000 + 1;
        ok(got <= bound && got >= 50,
           "%s, rescaling updates racing with takes (%llu updates): admitted %llu <= %llu",
           keyed ? "keyed" : "route", (unsigned long long)atomic_load(&rc.n_updates), (unsigned long long)got,
           (unsigned long long)bound);
        /* settle on 1000/s: 50 ms later at most 50 tokens, 100 ms later full */
        {
            struct tp_cfg_rate_limit c = cfg_of(1000, 1000, 50, keyed ? TP_KEY_CLIENT_IP : TP_KEY_ROUTE);

            tp_ratelimit_update(rc.rl, &c, atomic_load(&rc.fake_now));
        }
        is_int(drain(rc.rl, rc.key, atomic_load(&rc.fake_now) + 100 * MS, 1000), 50,
               keyed ? "keyed: full 100 ms later" : "route: full 100 ms later");
        ok(!tp_ratelimit_take(rc.rl, rc.key, atomic_load(&rc.fake_now) + 101 * MS - 2, &r) &&
               r.retry_after_s == 1 && r.reset_s == 1,
           "%s: then empty, retry 1 reset 1", keyed ? "keyed" : "route");
        is_int(drain(rc.rl, rc.key, atomic_load(&rc.fake_now) + 101 * MS, 1000), 1,
               keyed ? "keyed: one token 1 ms later" : "route: one token 1 ms later");
        tp_ratelimit_destroy(rc.rl);
    }
    rc.rescale = false;
}

int main(void)
{
    test_create_errors();
    test_basic();
    test_headers();
    test_clock_edges();
    test_update();
    test_keyed();
    test_phase();
    test_fraction();
    test_extreme_rates();
    test_idle();
    test_rescale();
    test_threads();
    return tap_done();
}
