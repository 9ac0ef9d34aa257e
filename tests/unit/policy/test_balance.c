/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of endpoint selection (src/upstream/balance.c): the smooth
 * weighted round robin sequence and proportions, power of two choices, and
 * the Maglev table's distribution and remapping when endpoints are removed,
 * added or marked ineligible.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <turnpike/balance.h>

#include "tap.h"

static uint64_t rng_state = 0x1234567887654321ull;

/* splitmix64: reproducible pseudo-random keys */
static uint64_t rnd64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- SWRR ---- */

static void test_swrr(void)
{
    const uint32_t w517[3] = {5, 1, 1};
    const uint32_t w3210[4] = {3, 2, 1, 0};
    const size_t want[7] = {0, 0, 1, 0, 2, 0, 0};
    int64_t cur[4] = {0};
    uint64_t elig[1];
    size_t cnt[4] = {0}, last_b = 0, i;
    bool seq = true, gaps = true;

    for (int round = 0; round < 3; round++)
        for (i = 0; i < 7; i++)
            seq &= tp_swrr_pick(cur, w517, 3, NULL) == want[i];
    ok(seq, "{5,1,1}: a a b a c a a, three times over");

    for (i = 0; i < 4; i++)
        cur[i] = 0;
    for (i = 0; i < 600; i++)
        cnt[tp_swrr_pick(cur, w3210, 4, NULL)]++;
    ok(cnt[0] == 300 && cnt[1] == 200 && cnt[2] == 100 && cnt[3] == 0, "{3,2,1,0}: 300/200/100/0 of 600");

    /* c ineligible: a and b keep the smooth {5,1} sequence (b every 6th) */
    for (i = 0; i < 4; i++)
        cur[i] = cnt[i] = 0;
    for (i = 0; i < 7; i++)
        tp_swrr_pick(cur, w517, 3, NULL);
    elig[0] = 0x3;
    for (i = 1; i <= 600; i++) {
        size_t p = tp_swrr_pick(cur, w517, 3, elig);

        cnt[p]++;
        if (p == 1) {
            if (last_b && i - last_b != 6)
                gaps = false;
            last_b = i;
        }
    }
    ok(cnt[0] == 500 && cnt[1] == 100 && cnt[2] == 0, "c skipped: a 500, b 100, c 0 (got %zu %zu %zu)",
       cnt[0], cnt[1], cnt[2]);
    ok(gaps, "c skipped: b exactly every 6th pick");
    /* c back: proportions of {5,1,1} again */
    elig[0] = 0x7;
    cnt[0] = cnt[1] = cnt[2] = 0;
    for (i = 0; i < 700; i++)
        cnt[tp_swrr_pick(cur, w517, 3, elig)]++;
    ok(cnt[0] >= 498 && cnt[0] <= 502 && cnt[1] >= 98 && cnt[1] <= 102 && cnt[2] >= 98 && cnt[2] <= 102,
       "c back: ~500/100/100 of 700 (got %zu %zu %zu)", cnt[0], cnt[1], cnt[2]);

    elig[0] = 0;
    is_int(tp_swrr_pick(cur, w517, 3, elig), TP_BALANCE_NONE, "none eligible: NONE");
    is_int(tp_swrr_pick(cur, w517, 0, NULL), TP_BALANCE_NONE, "no endpoints: NONE");
    for (i = 0; i < 4; i++)
        cur[i] = 0;
    seq = true;
    for (i = 0; i < 9; i++)
        seq &= tp_swrr_pick(cur, NULL, 3, NULL) == i % 3;
    ok(seq, "weights NULL: plain round robin");
}

/* ---- P2C ---- */

struct loads {
    uint64_t v[130];
    size_t calls;
    size_t called[2];
};

static uint64_t load_of(void *ctx, size_t i)
{
    struct loads *l = ctx;

    if (l->calls < 2)
        l->called[l->calls] = i;
    l->calls++;
    return l->v[i];
}

static void test_p2c(void)
{
    struct loads l = {0};
    uint32_t w[130];
    uint64_t elig[TP_ELIGIBLE_WORDS(130)];
    size_t cnt[3] = {0}, p;
    bool good = true, distinct = true;

    for (size_t i = 0; i < 130; i++)
        w[i] = 1;

    /* never an ineligible one; the two candidates are distinct and eligible */
    for (int it = 0; it < 20000; it++) {
        size_t n = 1 + rnd64() % 130, m = 0;

        for (size_t k = 0; k < TP_ELIGIBLE_WORDS(n); k++)
            elig[k] = rnd64() & rnd64();
        if (n % 64)
            elig[n / 64] &= (1ull << (n % 64)) - 1;
        for (size_t i = 0; i < n; i++) {
            l.v[i] = rnd64() % 8;
            m += tp_eligible(elig, i);
        }
        l.calls = 0;
        p = tp_p2c_pick(w, n, load_of, &l, elig, rnd64());
        if (m == 0) {
            good &= p == TP_BALANCE_NONE;
            continue;
        }
        good &= p < n && tp_eligible(elig, p);
        if (m >= 2) {
            distinct &= l.calls == 2 && l.called[0] != l.called[1] && tp_eligible(elig, l.called[0]) &&
                        tp_eligible(elig, l.called[1]);
            good &= l.v[p] == (l.v[l.called[0]] < l.v[l.called[1]] ? l.v[l.called[0]] : l.v[l.called[1]]);
        } else {
            good &= l.calls == 0;
        }
    }
    ok(good, "20000 random picks: always eligible, the less loaded of the two, NONE when none");
    ok(distinct, "the two candidates are distinct and eligible");

    /* prefers lower load: 0 is picked whenever it is a candidate (2/3) */
    l.v[0] = 0;
    l.v[1] = 5;
    l.v[2] = 5;
    for (int it = 0; it < 3000; it++)
        cnt[tp_p2c_pick(w, 3, load_of, &l, NULL, rnd64())]++;
    ok(cnt[0] > 1800 && cnt[0] < 2200, "least loaded of 3 picked ~2/3 of the time (%zu of 3000)", cnt[0]);

    /* weighted: (load + 1) / weight */
    {
        const uint32_t w14[2] = {1, 4};

        l.v[0] = 1;
        l.v[1] = 4; /* 2/1 vs 5/4: the heavier one despite more in flight */
        is_int(tp_p2c_pick(w14, 2, load_of, &l, NULL, 0), 1,
               "weight 4 with 4 in flight beats weight 1 with 1");
        l.v[0] = 0;
        l.v[1] = 0;
        is_int(tp_p2c_pick(w14, 2, load_of, &l, NULL, 0xffffffffull), 1, "idle: the heavier wins");
        l.v[1] = 8; /* 1/1 vs 9/4 */
        is_int(tp_p2c_pick(w14, 2, load_of, &l, NULL, 0), 0, "weight 4 with 8 in flight loses to an idle 1");
    }
    /* ties go to the first candidate: rnd low half selects it */
    l.v[0] = l.v[1] = 3;
    is_int(tp_p2c_pick(NULL, 2, load_of, &l, NULL, 0), 0, "tie: first candidate (0)");
    is_int(tp_p2c_pick(NULL, 2, load_of, &l, NULL, 0xffffffffull), 1, "tie: first candidate (1)");

    l.calls = 0;
    is_int(tp_p2c_pick(NULL, 1, load_of, &l, NULL, 42), 0, "n == 1: that one");
    is_int(l.calls, 0, "n == 1: no load read");
    elig[0] = 1ull << 5;
    elig[1] = elig[2] = 0;
    is_int(tp_p2c_pick(w, 130, load_of, &l, elig, 7), 5, "one eligible of 130: that one");
    elig[0] = 0;
    is_int(tp_p2c_pick(w, 130, load_of, &l, elig, 7), TP_BALANCE_NONE, "none eligible: NONE");
}

/* ---- Maglev ---- */

#define NKEYS 200000

static char names_buf[32][32];
static const char *names[32];

static void mk_names(void)
{
    for (int i = 0; i < 32; i++) {
        snprintf(names_buf[i], sizeof(names_buf[i]), "10.0.%d.%d:8080", i / 7, i * 13 % 250);
        names[i] = names_buf[i];
    }
}

static struct tp_maglev *mk(const char *const *nm, const uint32_t *w, size_t n)
{
    int err = 0;
    struct tp_maglev *m = tp_maglev_create(nm, w, n, 0, &err);

    if (!m) {
        tap_diag("maglev create failed: %d", err);
        abort();
    }
    return m;
}

static void test_maglev_errors(void)
{
    const uint32_t zero[2] = {0, 0};
    int err = 0;

    ok(!tp_maglev_create(names, NULL, 0, 0, &err) && err == -EINVAL, "n 0 refused");
    err = 0;
    ok(!tp_maglev_create(names, zero, 2, 0, &err) && err == -EINVAL, "all weights 0 refused");
    err = 0;
    ok(!tp_maglev_create(names, NULL, 2, 65536, &err) && err == -EINVAL, "non-prime size refused");
    err = 0;
    ok(!tp_maglev_create(names, NULL, 5, 3, &err) && err == -EINVAL, "size below n refused");
}

static void test_maglev_distribution(void)
{
    const uint32_t w1234[4] = {1, 2, 3, 4};
    struct tp_maglev *m = mk(names, w1234, 4), *m2;
    size_t cnt[10] = {0}, size = tp_maglev_table_size(m);
    bool same = true, close = true;

    is_int(size, TP_MAGLEV_DEFAULT_SIZE, "default size 65537");
    for (size_t s = 0; s < size; s++)
        cnt[tp_maglev_entry(m, s)]++;
    for (int i = 0; i < 4; i++) {
        double share = (double)cnt[i] / (double)size, want = (i + 1) / 10.0;

        close &= share > want - 0.001 && share < want + 0.001;
    }
    ok(close, "weights 1:2:3:4 -> entries %zu %zu %zu %zu (within 0.1%%)", cnt[0], cnt[1], cnt[2], cnt[3]);
    for (int i = 0; i < 4; i++)
        cnt[i] = 0;
    for (int k = 0; k < NKEYS; k++)
        cnt[tp_maglev_pick(m, rnd64(), NULL)]++;
    close = true;
    for (int i = 0; i < 4; i++) {
        double share = (double)cnt[i] / NKEYS, want = (i + 1) / 10.0;

        close &= share > want * 0.97 && share < want * 1.03;
    }
    ok(close, "random keys follow the weights within 3%% (%zu %zu %zu %zu)", cnt[0], cnt[1], cnt[2], cnt[3]);

    m2 = mk(names, w1234, 4);
    for (size_t s = 0; s < size; s++)
        same &= tp_maglev_entry(m, s) == tp_maglev_entry(m2, s);
    ok(same, "same names and weights: the same table");
    tp_maglev_destroy(m2);
    tp_maglev_destroy(m);

    m = mk(names, NULL, 10);
    for (int i = 0; i < 10; i++)
        cnt[i] = 0;
    for (size_t s = 0; s < size; s++)
        cnt[tp_maglev_entry(m, s)]++;
    close = true;
    for (int i = 0; i < 10; i++)
        close &= cnt[i] == size / 10 || cnt[i] == size / 10 + 1;
    ok(close, "equal weights: entry counts differ by at most one");
    tp_maglev_destroy(m);

    /* a big upstream gets a bigger table */
    {
        static char big_buf[1000][24];
        static const char *big[1000];

        for (int i = 0; i < 1000; i++) {
            snprintf(big_buf[i], sizeof(big_buf[i]), "10.1.%d.%d:80", i / 250, i % 250);
            big[i] = big_buf[i];
        }
        m = mk(big, NULL, 1000);
        ok(tp_maglev_table_size(m) >= 100000, "1000 endpoints: table of %zu entries",
           tp_maglev_table_size(m));
        tp_maglev_destroy(m);
    }
}

/* Fraction of keys whose endpoint (by name) differs between two tables. */
struct remap {
    size_t on_changed, moved_changed; /* keys on the endpoint that left or came */
    size_t others, moved_others;      /* all other keys */
};

static void test_maglev_remap(void)
{
    const size_t N = 10;
    const char *without[9], *with11[11];
    struct tp_maglev *m10 = mk(names, NULL, N), *m9, *m11;
    uint64_t elig[1] = {((1ull << N) - 1) & ~(1ull << 3)};
    struct remap rm = {0}, ra = {0}, ri = {0};
    size_t spread[10] = {0};
    bool spread_ok = true;
    uint64_t seed = rng_state;

    for (size_t i = 0, j = 0; i < N; i++)
        if (i != 3)
            without[j++] = names[i];
    for (size_t i = 0; i < 11; i++)
        with11[i] = names[i];
    m9 = mk(without, NULL, 9);
    m11 = mk(with11, NULL, 11);

    for (int k = 0; k < NKEYS; k++) {
        uint64_t h = rnd64();
        const char *before = names[tp_maglev_pick(m10, h, NULL)];
        const char *after_rm = without[tp_maglev_pick(m9, h, NULL)];
        const char *after_add = with11[tp_maglev_pick(m11, h, NULL)];
        size_t inel = tp_maglev_pick(m10, h, elig);

        /* removal of endpoint 3 */
        if (before == names[3]) {
            rm.on_changed++;
            rm.moved_changed++;
        } else {
            rm.others++;
            rm.moved_others += before != after_rm;
        }
        /* addition of endpoint 10 */
        if (after_add == names[10]) {
            ra.on_changed++;
        } else {
            ra.others++;
            ra.moved_others += before != after_add;
        }
        /* endpoint 3 ineligible */
        if (before == names[3]) {
            ri.on_changed++;
            spread[inel]++;
        } else {
            ri.others++;
            ri.moved_others += names[inel] != before;
        }
    }
    tap_diag("remove 1 of 10: %.2f%% of keys were on it, %.2f%% of the others moved",
             100.0 * (double)rm.on_changed / NKEYS, 100.0 * (double)rm.moved_others / (double)rm.others);
    tap_diag("add an 11th: %.2f%% of keys go to it, %.2f%% of the others moved",
             100.0 * (double)ra.on_changed / NKEYS, 100.0 * (double)ra.moved_others / (double)ra.others);
    ok(rm.on_changed > NKEYS * 0.09 && rm.on_changed < NKEYS * 0.11,
       "removed endpoint held ~1/10 of the keys");
    ok(rm.moved_others < rm.others * 0.02, "removing 1 of 10: >= 98%% of the other keys stay put");
    ok(ra.on_changed > NKEYS * 0.085 && ra.on_changed < NKEYS * 0.097,
       "adding an 11th takes ~1/11 of the keys");
    ok(ra.moved_others < ra.others * 0.02, "adding an 11th: >= 98%% of the keys not taken by it stay put");
    is_int(ri.moved_others, 0, "endpoint 3 ineligible: every other key stays put");
    is_int(spread[3], 0, "no key goes to the ineligible endpoint");
    for (size_t i = 0; i < N; i++) {
        double share = (double)spread[i] / (double)ri.on_changed;

        if (i != 3)
            spread_ok &= share > 1.0 / 9 * 0.85 && share < 1.0 / 9 * 1.15;
    }
    ok(spread_ok, "its keys spread evenly over the other 9 (within 15%%)");

    /* same key, same fallback: deterministic */
    rng_state = seed;
    spread_ok = true;
    for (int k = 0; k < 1000; k++) {
        uint64_t h = rnd64();

        spread_ok &= tp_maglev_pick(m10, h, elig) == tp_maglev_pick(m10, h, elig);
    }
    ok(spread_ok, "rehashing is deterministic");

    /* only one eligible, none eligible */
    elig[0] = 1ull << 7;
    spread_ok = true;
    for (int k = 0; k < 1000; k++)
        spread_ok &= tp_maglev_pick(m10, rnd64(), elig) == 7;
    ok(spread_ok, "one eligible endpoint gets every key");
    elig[0] = 0;
    is_int(tp_maglev_pick(m10, rnd64(), elig), TP_BALANCE_NONE, "none eligible: NONE");

    tp_maglev_destroy(m9);
    tp_maglev_destroy(m10);
    tp_maglev_destroy(m11);
}

static void test_maglev_weights_zero(void)
{
    const uint32_t w[3] = {1, 0, 1};
    struct tp_maglev *m = mk(names, w, 3);
    uint64_t elig[1] = {0x2};
    bool none = true;

    for (size_t s = 0; s < tp_maglev_table_size(m); s++)
        none &= tp_maglev_entry(m, s) != 1;
    ok(none, "weight 0: no entries");
    is_int(tp_maglev_pick(m, 12345, elig), TP_BALANCE_NONE, "only a weight-0 endpoint eligible: NONE");
    tp_maglev_destroy(m);

    /* small explicit prime table */
    {
        int err = 0;
        struct tp_maglev *s = tp_maglev_create(names, NULL, 3, 7, &err);
        size_t cnt[3] = {0};

        ok(s && tp_maglev_table_size(s) == 7, "explicit size 7");
        if (s) {
            for (size_t i = 0; i < 7; i++)
                cnt[tp_maglev_entry(s, i)]++;
            ok(cnt[0] >= 2 && cnt[1] >= 2 && cnt[2] >= 2, "7 entries over 3: 3/2/2");
        }
        tp_maglev_destroy(s);
    }
}

int main(void)
{
    mk_names();
    test_swrr();
    test_p2c();
    test_maglev_errors();
    test_maglev_distribution();
    test_maglev_remap();
    test_maglev_weights_zero();
    return tap_done();
}
