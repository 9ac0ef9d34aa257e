/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the circuit breaker (src/policy/breaker.c): transitions on
 * consecutive failures and on the failure ratio, the sliding window, open ->
 * half-open -> closed/open, stale reports, reloads, and races at the
 * transitions (exactly half_open_requests trials, exactly one opener).
 * Runs under ASan and TSan (label tsan).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include <turnpike/breaker.h>

#include "tap.h"

#define T0 1000000ull /* [ms] a start time well away from 0 */

static struct tp_cfg_circuit_breaker defaults(void)
{
    return (struct tp_cfg_circuit_breaker){
        .consecutive_failures = 5,
        .failure_ratio = 0.5,
        .min_requests = 20,
        .window_ms = 10000,
        .open_for_ms = 10000,
        .half_open_requests = 3,
    };
}

static struct tp_breaker *mk(const struct tp_cfg_circuit_breaker *c)
{
    int err = 0;
    struct tp_breaker *b = tp_breaker_create(c, &err);

    if (!b) {
        tap_diag("create failed: %d", err);
        abort();
    }
    return b;
}

/* admit + report, as the data plane does */
static enum tp_breaker_admit run(struct tp_breaker *b, bool success, uint64_t now)
{
    struct tp_breaker_pass p = tp_breaker_admit(b, now);

    tp_breaker_report(b, p, success, now);
    return p.how;
}

/* Opens <b> with consecutive failures at <now>. */
static void trip(struct tp_breaker *b, uint64_t now)
{
    for (int i = 0; i < 100 && tp_breaker_state(b, now) == TP_BREAKER_CLOSED; i++)
        run(b, false, now);
}

static void test_consecutive(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b = mk(&c);
    uint64_t t = T0;

    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "starts closed");
    for (int i = 0; i < 4; i++)
        run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "4 failures: still closed");
    run(b, true, t);
    for (int i = 0; i < 4; i++)
        run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "a success resets the consecutive count");
    is_int(run(b, false, t), TP_BREAKER_ALLOW, "5th failure in a row was allowed");
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "5 in a row: open");
    is_int(tp_breaker_admit(b, t).how, TP_BREAKER_DENY, "open denies");
    ok(!tp_breaker_would_admit(b, t + 9999), "would not admit before open_for");
    is_int(tp_breaker_admit(b, t + 9999).how, TP_BREAKER_DENY, "denies 1 ms before open_for");
    is_int(tp_breaker_admit(b, t - 5).how, TP_BREAKER_DENY, "a clock reading before the opening denies");
    ok(tp_breaker_would_admit(b, t + 10000), "would admit once open_for elapsed");
    is_int(tp_breaker_state(b, t + 10000), TP_BREAKER_OPEN, "open-but-elapsed still reads open");
    tp_breaker_destroy(b);
}

static void test_ratio_and_window(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b;
    uint64_t t = T0;

    c.consecutive_failures = 1000;
    b = mk(&c);
    /* alternate so consecutive never triggers: 10 successes, 9 failures */
    for (int i = 0; i < 19; i++)
        run(b, i % 2 == 0, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "19 requests, 9 failures: below min_requests");
    run(b, false, t + 500);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "20 requests, 10 failures: ratio 0.5 opens");
    tp_breaker_destroy(b);

    /* below the ratio never opens */
    b = mk(&c);
    for (int i = 0; i < 200; i++)
        run(b, i % 3 != 0, t + (uint64_t)i * 10);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "1 in 3 failing (ratio 0.33 < 0.5): closed");
    tp_breaker_destroy(b);

    /* the window slides: failures older than the window age out */
    b = mk(&c);
    for (int i = 0; i < 19; i++)
        run(b, i % 2 == 0, t); /* 9 failures of 19 at T0 */
    run(b, false, t + 11000);
    is_int(tp_breaker_state(b, t + 11000), TP_BREAKER_CLOSED, "11 s later the old requests left the window");
    for (int i = 0; i < 18; i++)
        run(b, true, t + 11000);
    run(b, false, t + 11500);
    is_int(tp_breaker_state(b, t + 11500), TP_BREAKER_CLOSED, "20 in window, 2 failures: closed");
    tp_breaker_destroy(b);

    b = mk(&c);
    for (int i = 0; i < 19; i++)
        run(b, i % 2 == 0, t); /* 9 failures of 19 at T0 */
    run(b, false, t + 9000);
    is_int(tp_breaker_state(b, t + 9000), TP_BREAKER_OPEN, "9 s later they are still in the 10 s window");
    tp_breaker_destroy(b);

    /* a 1 h window uses 60 s buckets */
    c.window_ms = 3600000;
    b = mk(&c);
    for (int i = 0; i < 19; i++)
        run(b, i % 2 == 0, t + (uint64_t)i * 60000);
    run(b, false, t + 30 * 60000);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "1 h window: 20 requests over 30 min, 10 failures");
    tp_breaker_destroy(b);
}

static void test_half_open(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b = mk(&c);
    struct tp_breaker_pass p[4], old;
    uint64_t t = T0;

    trip(b, t);
    t += 10000;
    p[0] = tp_breaker_admit(b, t);
    is_int(p[0].how, TP_BREAKER_TRIAL, "first admit after open_for: trial");
    is_int(tp_breaker_state(b, t), TP_BREAKER_HALF_OPEN, "half-open");
    p[1] = tp_breaker_admit(b, t);
    p[2] = tp_breaker_admit(b, t);
    p[3] = tp_breaker_admit(b, t);
    ok(p[1].how == TP_BREAKER_TRIAL && p[2].how == TP_BREAKER_TRIAL, "3 trials in all");
    is_int(p[3].how, TP_BREAKER_DENY, "4th denied while trials run");
    ok(!tp_breaker_would_admit(b, t), "would_admit false without permits");
    tp_breaker_report(b, p[3], false, t);
    tp_breaker_report(b, p[0], true, t);
    tp_breaker_report(b, p[1], true, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_HALF_OPEN, "2 of 3 succeeded: still half-open");
    tp_breaker_report(b, p[2], true, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "all 3 succeeded: closed");
    is_int(tp_breaker_admit(b, t).how, TP_BREAKER_ALLOW, "closed allows");
    /* counters were reset: 4 failures do not open */
    for (int i = 0; i < 4; i++)
        run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "counters reset on closing");

    /* any trial failure reopens, with a new open_for */
    run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "open again");
    t += 10000;
    p[0] = tp_breaker_admit(b, t);
    p[1] = tp_breaker_admit(b, t);
    tp_breaker_report(b, p[0], true, t);
    tp_breaker_report(b, p[1], false, t + 100);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "one failed trial: open");
    is_int(tp_breaker_admit(b, t + 10099).how, TP_BREAKER_DENY, "open_for counts from the failure");
    p[2] = tp_breaker_admit(b, t + 10100);
    is_int(p[2].how, TP_BREAKER_TRIAL, "half-open again after open_for");

    /* stale trial: the third trial of the previous period reports now */
    old = (struct tp_breaker_pass){TP_BREAKER_TRIAL, p[0].gen};
    tp_breaker_report(b, old, false, t + 10100);
    is_int(tp_breaker_state(b, t + 10100), TP_BREAKER_HALF_OPEN,
           "a failing trial of an earlier period is ignored");
    tp_breaker_report(b, old, true, t + 10100);
    tp_breaker_report(b, old, true, t + 10100);
    tp_breaker_report(b, old, true, t + 10100);
    is_int(tp_breaker_state(b, t + 10100), TP_BREAKER_HALF_OPEN, "succeeding stale trials do not close it");
    tp_breaker_destroy(b);
}

static void test_stale_allow(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b = mk(&c);
    struct tp_breaker_pass late[10], p[3];
    uint64_t t = T0;

    for (int i = 0; i < 10; i++)
        late[i] = tp_breaker_admit(b, t); /* in flight while it opens */
    trip(b, t);
    for (int i = 0; i < 3; i++)
        tp_breaker_report(b, late[i], false, t + 1);
    is_int(tp_breaker_state(b, t + 1), TP_BREAKER_OPEN, "late failures while open: ignored, still open");
    t += 10000;
    for (int i = 0; i < 3; i++)
        p[i] = tp_breaker_admit(b, t);
    tp_breaker_report(b, late[3], true, t);
    tp_breaker_report(b, late[4], true, t);
    tp_breaker_report(b, late[5], true, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_HALF_OPEN, "closed-era successes do not count as trials");
    tp_breaker_report(b, late[6], false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_HALF_OPEN, "closed-era failure does not reopen half-open");
    for (int i = 0; i < 3; i++)
        tp_breaker_report(b, p[i], true, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "closed by its trials");
    for (int i = 6; i < 10; i++)
        tp_breaker_report(b, late[i], false, t);
    run(b, false, t); /* one fresh failure: 1 in a row, not 5 */
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED,
           "failures from before the opening do not count after closing");
    tp_breaker_report(b, (struct tp_breaker_pass){TP_BREAKER_DENY, 0}, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "reporting a DENY is a no-op");
    tp_breaker_destroy(b);
}

static void test_lost_trials(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b = mk(&c);
    uint64_t t = T0;

    trip(b, t);
    t += 10000;
    for (int i = 0; i < 3; i++)
        tp_breaker_admit(b, t); /* never reported */
    is_int(tp_breaker_admit(b, t + TP_BREAKER_TRIAL_TIMEOUT_MS - 1000).how, TP_BREAKER_DENY,
           "unreported trials: denied before the trial timeout");
    is_int(tp_breaker_admit(b, t + TP_BREAKER_TRIAL_TIMEOUT_MS).how, TP_BREAKER_DENY,
           "at the trial timeout: reopened (still denies)");
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "open after lost trials");
    is_int(tp_breaker_admit(b, t + TP_BREAKER_TRIAL_TIMEOUT_MS + 10000).how, TP_BREAKER_TRIAL,
           "trial again after open_for");
    tp_breaker_destroy(b);
}

static void test_config(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct tp_breaker *b = mk(NULL);
    struct tp_breaker_pass p;
    uint64_t t = T0;

    for (int i = 0; i < 100; i++)
        run(b, false, t);
    ok(tp_breaker_state(b, t) == TP_BREAKER_CLOSED && tp_breaker_admit(b, t).how == TP_BREAKER_ALLOW,
       "disabled (NULL config): always allows");
    tp_breaker_set_config(b, &c);
    for (int i = 0; i < 5; i++)
        run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "enabled by a reload: opens");
    tp_breaker_set_config(b, NULL);
    ok(tp_breaker_state(b, t) == TP_BREAKER_CLOSED && tp_breaker_admit(b, t).how == TP_BREAKER_ALLOW,
       "disabled by a reload: closed");

    c.consecutive_failures = 2;
    tp_breaker_set_config(b, &c);
    run(b, false, t);
    run(b, false, t);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "reloaded threshold 2 applies");
    c.half_open_requests = 1;
    c.open_for_ms = 1000;
    tp_breaker_set_config(b, &c);
    is_int(tp_breaker_state(b, t), TP_BREAKER_OPEN, "a reload keeps the state");
    p = tp_breaker_admit(b, t + 1000);
    is_int(p.how, TP_BREAKER_TRIAL, "reloaded open_for applies to the current opening");
    is_int(tp_breaker_admit(b, t + 1000).how, TP_BREAKER_DENY, "reloaded half_open_requests = 1");
    tp_breaker_report(b, p, true, t + 1000);
    is_int(tp_breaker_state(b, t), TP_BREAKER_CLOSED, "one success closes");
    tp_breaker_destroy(b);

    /* an embedded, aligned breaker */
    struct {
        char other[8];
        struct tp_breaker br;
    } *host = aligned_alloc(64, sizeof(*host));
    tp_breaker_init(&host->br, &c);
    ok(((uintptr_t)&host->br & 63) == 0 && tp_breaker_admit(&host->br, t).how == TP_BREAKER_ALLOW,
       "embedded in a 64-byte aligned object");
    free(host);
}

/* ---- races ---- */

#define NTHREADS 8
#define ROUNDS   200

struct race {
    struct tp_breaker *b;
    _Atomic int round;   /* set by the main thread to start a round */
    _Atomic int arrived; /* threads ready for the next round */
    _Atomic int finished;
    _Atomic uint64_t now;
    _Atomic int trials;
    _Atomic int allows;
};

/* The main thread sleeps while the workers run, so both CPUs of a small
 * machine are busy with workers when a round starts. */
static void nap(void)
{
    struct timespec ts = {0, 50000};

    nanosleep(&ts, NULL);
}

/* Spins rather than sleeping in a barrier, so that the threads are running
 * when the round starts and really collide at the transition. */
static void *admit_thread(void *arg)
{
    struct race *rc = arg;

    for (int r = 1; r <= ROUNDS; r++) {
        atomic_fetch_add(&rc->arrived, 1);
        while (atomic_load(&rc->round) < r)
            sched_yield();
        for (int i = 0; i < 4; i++) {
            struct tp_breaker_pass p = tp_breaker_admit(rc->b, atomic_load(&rc->now));

            if (p.how == TP_BREAKER_TRIAL)
                atomic_fetch_add(&rc->trials, 1);
            else if (p.how == TP_BREAKER_ALLOW)
                atomic_fetch_add(&rc->allows, 1);
        }
        atomic_fetch_add(&rc->finished, 1);
    }
    return NULL;
}

static void test_race_trials(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct race rc = {0};
    pthread_t th[NTHREADS];
    bool exact = true;
    uint64_t t = T0;

    rc.b = mk(&c);
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, admit_thread, &rc);
    for (int r = 1; r <= ROUNDS; r++) {
        trip(rc.b, t);
        if (tp_breaker_state(rc.b, t) != TP_BREAKER_OPEN)
            exact = false;
        t += 10000;
        atomic_store(&rc.now, t);
        atomic_store(&rc.trials, 0);
        atomic_store(&rc.allows, 0);
        while (atomic_load(&rc.arrived) < r * NTHREADS)
            nap();
        atomic_store(&rc.round, r); /* all threads admit at the transition */
        while (atomic_load(&rc.finished) < r * NTHREADS)
            nap();
        if (atomic_load(&rc.trials) != 3 || atomic_load(&rc.allows) != 0) {
            tap_diag("round %d: %d trials, %d allows", r, atomic_load(&rc.trials), atomic_load(&rc.allows));
            exact = false;
        }
        /* back to closed for the next round: force it via a reload */
        tp_breaker_set_config(rc.b, NULL);
        tp_breaker_set_config(rc.b, &c);
        t += 1;
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    ok(exact, "%d rounds of %d threads racing at the transition: exactly 3 trials each", ROUNDS, NTHREADS);
    tp_breaker_destroy(rc.b);
}

struct reporters {
    struct tp_breaker *b;
    struct tp_breaker_pass pass;
    uint64_t now;
    _Atomic int go;
};

static void *report_thread(void *arg)
{
    struct reporters *rp = arg;

    while (!atomic_load(&rp->go))
        ;
    for (int i = 0; i < 50; i++)
        tp_breaker_report(rp->b, rp->pass, false, rp->now);
    return NULL;
}

/* Many failing reports at once: exactly one transition to open (the
 * generation moves by exactly one). */
static void test_race_reports(void)
{
    struct tp_cfg_circuit_breaker c = defaults();
    struct reporters rp = {0};
    pthread_t th[NTHREADS];
    struct tp_breaker_pass p0, p1;

    rp.b = mk(&c);
    rp.now = T0;
    p0 = tp_breaker_admit(rp.b, T0);
    rp.pass = p0;
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&th[i], NULL, report_thread, &rp);
    atomic_store(&rp.go, 1);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    is_int(tp_breaker_state(rp.b, T0), TP_BREAKER_OPEN, "racing failures opened it");
    p1 = tp_breaker_admit(rp.b, T0 + 10000);
    ok(p1.how == TP_BREAKER_TRIAL && p1.gen == p0.gen + 2,
       "exactly one opening: generation %u -> %u (open, half-open)", p0.gen, p1.gen);

    /* the trials succeed: the last one closes it, one more transition */
    rp.pass = p1;
    rp.now = T0 + 10000;
    atomic_store(&rp.go, 0);
    {
        struct tp_breaker_pass p2 = tp_breaker_admit(rp.b, rp.now);
        struct tp_breaker_pass p3 = tp_breaker_admit(rp.b, rp.now);

        tp_breaker_report(rp.b, p2, true, rp.now);
        tp_breaker_report(rp.b, p3, true, rp.now);
        tp_breaker_report(rp.b, p1, true, rp.now);
        ok(tp_breaker_state(rp.b, rp.now) == TP_BREAKER_CLOSED &&
               tp_breaker_admit(rp.b, rp.now).gen == p0.gen + 3,
           "closed by its trials: generation +1");
    }
    tp_breaker_destroy(rp.b);
}

int main(void)
{
    test_consecutive();
    test_ratio_and_window();
    test_half_open();
    test_stale_allow();
    test_lost_trials();
    test_config();
    test_race_trials();
    test_race_reports();
    return tap_done();
}
