/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the hashed timer wheel (include/turnpike/timer.h,
 * src/core/timer.c): fire order and exactness, cancel, re-arm from outside
 * and from inside callbacks, far deadlines parked and re-filed (stepping and
 * long jumps), tp_wheel_next_ms as the loop's wait, and 100k random timers.
 *
 * Time is fake: every tp_wheel_run gets an explicit now. The contract checked
 * everywhere is the header's: a timer fires at or after its deadline and at
 * most one tick late. Precisely, for a timer armed (outside a callback) with
 * a deadline after the last run's now, it fires in a run whose now is >= the
 * deadline, and the run before that one had now < the deadline rounded up to
 * a tick boundary (so it cannot have been skipped past). Single-threaded.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/timer.h>

#include "tap.h"

#define TICK TP_WHEEL_TICK_MS

/* A timer with what the test needs to judge its firing. */
struct probe {
    struct tp_timer t;
    unsigned fired;       /* times the callback ran */
    uint64_t fired_at;    /* now of the last firing run */
    uint64_t deadline;    /* deadline the probe expects to fire at */
    unsigned order;       /* global firing sequence number of the last firing */
    struct probe *other;  /* a peer the callback acts on */
    uint64_t rearm_delta; /* self re-arm: ms after now, while rearm_left */
    unsigned rearm_left;
};

#define probe_of(tp) ((struct probe *)((char *)(tp)-offsetof(struct probe, t)))

static struct tp_wheel *W;    /* the wheel under test (64 KiB: on the heap) */
static uint64_t g_prev_now;   /* now of the run before the current one */
static unsigned g_seq;        /* firing sequence counter */
static unsigned long g_early; /* fired before the deadline */
static unsigned long g_late;  /* skipped past the deadline's tick */

static inline uint64_t ceil_tick(uint64_t ms)
{
    return (ms + TICK - 1) / TICK * TICK;
}

/* Records a firing and checks the exactness contract against p->deadline. */
static void note(struct probe *p, uint64_t now)
{
    p->fired++;
    p->fired_at = now;
    p->order = ++g_seq;
    if (now < p->deadline || now < p->t.deadline_ms)
        g_early++;
    if (g_prev_now >= ceil_tick(p->deadline))
        g_late++;
}

static void on_plain(struct tp_timer *t, uint64_t now)
{
    note(probe_of(t), now);
}

/* Re-arms itself rearm_delta ms after now, rearm_left times. */
static void on_periodic(struct tp_timer *t, uint64_t now)
{
    struct probe *p = probe_of(t);

    note(p, now);
    if (p->rearm_left) {
        p->rearm_left--;
        p->deadline = now + p->rearm_delta;
        tp_timer_arm(W, t, p->deadline);
    }
}

/* Cancels its peer. */
static void on_cancel_other(struct tp_timer *t, uint64_t now)
{
    struct probe *p = probe_of(t);

    note(p, now);
    tp_timer_cancel(W, &p->other->t);
}

/* Moves its peer to the peer's ->deadline (set by the test). */
static void on_move_other(struct tp_timer *t, uint64_t now)
{
    struct probe *p = probe_of(t);

    note(p, now);
    tp_timer_arm(W, &p->other->t, p->other->deadline);
}

/* Cancels itself (already unlinked: must be a no-op) and re-arms at its own,
 * past, deadline. */
static void on_self_due(struct tp_timer *t, uint64_t now)
{
    struct probe *p = probe_of(t);

    p->fired++;
    p->fired_at = now;
    p->order = ++g_seq;
    tp_timer_cancel(W, t);
    if (p->rearm_left) {
        p->rearm_left--;
        tp_timer_arm(W, t, t->deadline_ms); /* long due: the next tick runs it */
    }
}

static size_t run(uint64_t now)
{
    size_t n = tp_wheel_run(W, now);
    g_prev_now = now;
    return n;
}

static void reset(uint64_t now)
{
    tp_wheel_init(W, now);
    g_prev_now = now;
    g_seq = 0;
    g_early = g_late = 0;
}

static void probe_init(struct probe *p, tp_timer_fn fn)
{
    memset(p, 0, sizeof(*p));
    tp_timer_init(&p->t, fn);
}

static void arm(struct probe *p, uint64_t deadline)
{
    p->deadline = deadline;
    tp_timer_arm(W, &p->t, deadline);
}

/* Runs every ms from <from> to <to> inclusive; returns timers fired. */
static size_t step_ms(uint64_t from, uint64_t to, uint64_t step)
{
    size_t n = 0;
    for (uint64_t now = from; now <= to; now += step)
        n += run(now);
    return n;
}

static void test_basic(void)
{
    struct probe a;
    uint64_t t0 = 1000;

    reset(t0);
    probe_init(&a, on_plain);
    ok(!tp_timer_armed(&a.t), "a fresh timer is not armed");
    arm(&a, t0 + 12);
    ok(tp_timer_armed(&a.t), "armed after tp_timer_arm");
    is_int(W->armed, 1, "wheel counts one armed timer");
    is_int(run(t0 + 5), 0, "not due at +5");
    is_int(run(t0 + 11), 0, "not due at +11");
    is_int(a.fired, 0, "not fired before the deadline");
    is_int(run(t0 + 12), 1, "run at the deadline fires it");
    is_int(a.fired, 1, "fired once");
    is_int(a.fired_at, t0 + 12, "fired at exactly the deadline (tick-aligned)");
    ok(!tp_timer_armed(&a.t), "not armed once fired");
    is_int(W->armed, 0, "wheel is empty");
    is_int(run(t0 + 100), 0, "nothing fires later");
    is_int(a.fired, 1, "still fired once");

    /* a deadline inside a tick fires by the next tick boundary at the latest */
    arm(&a, t0 + 102);
    is_int(run(t0 + 101), 0, "+101: not due");
    is_int(run(t0 + 103) + run(t0 + 104), 1, "fired by +104 (due at +102)");
    ok(a.fired_at >= t0 + 102 && a.fired_at <= t0 + 104, "fired within the deadline's tick");

    /* a deadline in the past fires at the next tick */
    arm(&a, t0);
    is_int(run(t0 + 107), 0, "same tick: the overdue timer waits for the next tick");
    is_int(run(t0 + 108), 1, "next tick: the overdue timer fires");
    is_int(a.fired, 3, "three firings in total");
    is_int(g_early, 0, "never early");
}

/* Deadlines across several ticks, stepping 1 ms: each fires within its tick. */
static void test_order_exact(void)
{
    static const uint64_t dl[] = {7, 3, 4, 5,    100,  99,   98,   97,   96,
                                  1, 8, 8, 2000, 4095, 4096, 4097, 8191, 8192};
    enum { N = sizeof(dl) / sizeof(dl[0]) };
    struct probe p[N];
    uint64_t t0 = 40000;
    bool within = true, ordered = true;

    reset(t0);
    for (unsigned i = 0; i < N; i++) {
        probe_init(&p[i], on_plain);
        arm(&p[i], t0 + dl[i]);
    }
    is_int(W->armed, N, "all armed");
    is_int(step_ms(t0 + 1, t0 + 9000, 1), N, "every timer fired once over 9 s of 1 ms steps");
    for (unsigned i = 0; i < N; i++) {
        if (p[i].fired != 1 || p[i].fired_at < t0 + dl[i] || p[i].fired_at > ceil_tick(t0 + dl[i])) {
            within = false;
            tap_diag("deadline +%llu fired %u times at +%llu", (unsigned long long)dl[i], p[i].fired,
                     (unsigned long long)(p[i].fired_at - t0));
        }
        for (unsigned j = 0; j < N; j++)
            if (ceil_tick(t0 + dl[i]) < t0 + dl[j] && p[i].order > p[j].order)
                ordered = false;
    }
    ok(within, "each fired between its deadline and the end of its tick");
    ok(ordered, "a timer due a tick earlier fires first");
    is_int(g_early, 0, "never early");
    is_int(g_late, 0, "never late");
    is_int(W->armed, 0, "wheel is empty at the end");
}

static void test_cancel(void)
{
    struct probe a, b, c, never;
    uint64_t t0 = 5000;

    reset(t0);
    probe_init(&a, on_plain);
    probe_init(&b, on_plain);
    probe_init(&c, on_plain);
    probe_init(&never, on_plain);
    arm(&a, t0 + 20);
    arm(&b, t0 + 20); /* same slot as a */
    arm(&c, t0 + 40);
    tp_timer_cancel(W, &b.t);
    ok(!tp_timer_armed(&b.t), "cancelled timer is not armed");
    is_int(W->armed, 2, "two remain armed");
    tp_timer_cancel(W, &b.t);
    tp_timer_cancel(W, &never.t);
    is_int(W->armed, 2, "cancelling an unarmed timer changes nothing");
    is_int(run(t0 + 20), 1, "only a fires at +20");
    is_int(a.fired + b.fired, 1, "b did not fire");
    tp_timer_cancel(W, &c.t);
    is_int(W->armed, 0, "nothing armed");
    is_int(step_ms(t0 + 21, t0 + 9000, 7), 0, "nothing fires afterwards");
    is_int(b.fired + c.fired + never.fired, 0, "cancelled timers never fired");

    /* cancel and re-arm the same timer */
    arm(&b, t0 + 9100);
    tp_timer_cancel(W, &b.t);
    arm(&b, t0 + 9120);
    is_int(run(t0 + 9119), 0, "re-armed after cancel: not due yet");
    is_int(run(t0 + 9120), 1, "re-armed after cancel: fires at the new deadline");
    is_int(b.fired, 1, "once");
}

static void test_rearm_outside(void)
{
    struct probe a, b, c;
    uint64_t t0 = 100000;

    reset(t0);
    probe_init(&a, on_plain);
    probe_init(&b, on_plain);
    probe_init(&c, on_plain);
    arm(&a, t0 + 100);
    arm(&b, t0 + 20);
    arm(&c, t0 + 500);
    arm(&a, t0 + 20);  /* earlier */
    arm(&b, t0 + 200); /* later */
    arm(&c, t0 + 500); /* same deadline again */
    is_int(W->armed, 3, "re-arming does not duplicate");
    is_int(step_ms(t0 + 1, t0 + 19, 1), 0, "nothing before +20");
    is_int(run(t0 + 20), 1, "+20: the timer moved earlier fires");
    is_int(a.fired, 1, "a fired");
    is_int(a.fired_at, t0 + 20, "a at +20");
    is_int(step_ms(t0 + 21, t0 + 199, 1), 0, "nothing between +21 and +199 (b moved later)");
    is_int(run(t0 + 200), 1, "+200: b fires");
    is_int(b.fired_at, t0 + 200, "b at +200");
    is_int(step_ms(t0 + 201, t0 + 600, 1), 1, "c fires once");
    is_int(c.fired_at, t0 + 500, "c at +500");
    is_int(a.fired + b.fired + c.fired, 3, "each fired exactly once");

    /* moving a far (parked) timer close and a close timer far */
    arm(&a, t0 + 600 + 3600000);
    arm(&b, t0 + 610);
    arm(&a, t0 + 640);
    arm(&b, t0 + 600 + 60000);
    is_int(step_ms(t0 + 601, t0 + 700, 1), 1, "a (parked, moved close) fires");
    is_int(a.fired_at, t0 + 640, "a at its new deadline");
    is_int(b.fired, 1, "b (moved far) did not fire at its old deadline");
    is_int(g_early + g_late, 0, "never early or late");
    tp_timer_cancel(W, &b.t);
}

static void test_rearm_inside(void)
{
    struct probe per, mover, early, late, selfdue;
    uint64_t t0 = 7777; /* not tick-aligned on purpose */

    reset(t0);
    /* a periodic timer re-arming itself 10 ms later, 5 times */
    probe_init(&per, on_periodic);
    per.rearm_delta = 10;
    per.rearm_left = 5;
    arm(&per, t0 + 10);
    /* a callback that moves one timer earlier and another later */
    probe_init(&mover, on_move_other);
    probe_init(&early, on_plain);
    arm(&mover, t0 + 30);
    arm(&early, t0 + 500);
    mover.other = &early;
    early.deadline = t0 + 45; /* mover moves early from +500 to +45 */
    is_int(step_ms(t0 + 1, t0 + 29, 1), 2, "periodic fired twice by +29");
    is_int(per.fired, 2, "periodic: 2 so far");
    is_int(step_ms(t0 + 30, t0 + 100, 1), 6, "mover, early and the periodic's last 4 firings");
    is_int(per.fired, 6, "periodic fired 6 times (1 + 5 re-arms)");
    ok(!tp_timer_armed(&per.t), "periodic done");
    is_int(mover.fired, 1, "mover fired once");
    is_int(early.fired, 1, "early fired once");
    ok(early.fired_at >= t0 + 45 && early.fired_at <= ceil_tick(t0 + 45), "early fired at its new deadline");

    /* a callback moving its peer (due in a later slot) to later */
    probe_init(&mover, on_move_other);
    probe_init(&late, on_plain);
    arm(&mover, t0 + 200);
    arm(&late, t0 + 204);
    mover.other = &late;
    late.deadline = t0 + 300;
    is_int(step_ms(t0 + 101, t0 + 299, 1), 1, "only the mover fires before +300");
    is_int(late.fired, 0, "moved-later timer did not fire at its old deadline");
    is_int(step_ms(t0 + 300, t0 + 310, 1), 1, "moved-later timer fires");
    ok(late.fired_at >= t0 + 300 && late.fired_at <= ceil_tick(t0 + 300), "at its new deadline");

    /* a callback re-arming itself as already due: runs again at the next tick */
    probe_init(&selfdue, on_self_due);
    selfdue.rearm_left = 2;
    arm(&selfdue, t0 + 400);
    is_int(step_ms(t0 + 311, t0 + 420, 1), 3, "self re-armed as due: 3 firings");
    is_int(selfdue.fired, 3, "fired 3 times");
    ok(selfdue.fired_at > t0 + 400 && selfdue.fired_at <= ceil_tick(t0 + 400) + 2 * TICK,
       "re-armed due timers run one tick apart");
    /* one run spanning several ticks runs the re-armed timer within that run */
    selfdue.rearm_left = 2;
    arm(&selfdue, t0 + 500);
    is_int(run(t0 + 600), 3, "one long run fires the due re-arms of later ticks too");
    is_int(g_early, 0, "never early");
    is_int(W->armed, 0, "wheel is empty");
}

/* Two timers in one slot, each cancelling the other: exactly one fires. */
static void test_cancel_same_slot(void)
{
    struct probe a, b, c, d;
    uint64_t t0 = 20000;

    reset(t0);
    probe_init(&a, on_cancel_other);
    probe_init(&b, on_cancel_other);
    a.other = &b;
    b.other = &a;
    arm(&a, t0 + 50);
    arm(&b, t0 + 50);
    is_int(run(t0 + 50), 1, "one of two same-slot timers fired");
    is_int(a.fired + b.fired, 1, "the other was cancelled by the first");
    is_int(W->armed, 0, "nothing left armed");
    ok(!tp_timer_armed(&a.t) && !tp_timer_armed(&b.t), "neither is armed");

    /* same slot, different deadlines inside it; the first moves the second
     * to the same slot again but later (it must not fire in this run) */
    probe_init(&c, on_move_other);
    probe_init(&d, on_plain);
    arm(&c, t0 + 100);
    arm(&d, t0 + 101);
    c.other = &d;
    d.deadline = t0 + 103;
    is_int(run(t0 + 101), 1, "+101: only c ran (d was moved to +103)");
    is_int(d.fired, 0, "d not fired");
    is_int(step_ms(t0 + 102, t0 + 110, 1), 1, "d fires after +103");
    ok(d.fired_at >= t0 + 103 && d.fired_at <= t0 + 104, "d within its tick");
    is_int(W->armed, 0, "empty");
}

/* Deadlines beyond one revolution: stepping and jumping. */
static void test_far(void)
{
    struct probe m, h, j1, j2, k;
    uint64_t t0 = 123456;
    size_t fired;

    reset(t0);
    probe_init(&m, on_plain);
    probe_init(&h, on_plain);
    arm(&m, t0 + 60000);   /* 60 s: ~7 revolutions */
    arm(&h, t0 + 3600001); /* 1 h and 1 ms */
    fired = step_ms(t0 + 1, t0 + 59999, 1);
    is_int(fired, 0, "60 s timer: nothing fires in 1 ms steps before it");
    is_int(run(t0 + 60000), 1, "60 s timer fires at its deadline");
    is_int(m.fired_at, t0 + 60000, "exactly at 60 s");
    fired = step_ms(t0 + 60007, t0 + 3600000, 7);
    is_int(fired, 0, "1 h timer: nothing fires in 7 ms steps before it");
    is_int(h.fired, 0, "not early");
    fired = step_ms(t0 + 3600001, t0 + 3600010, 1);
    is_int(fired, 1, "1 h timer fires");
    ok(h.fired_at >= t0 + 3600001 && h.fired_at <= ceil_tick(t0 + 3600001), "within its tick");

    /* long jumps: one run covering an hour fires both */
    reset(t0);
    probe_init(&j1, on_plain);
    probe_init(&j2, on_plain);
    probe_init(&k, on_plain);
    arm(&j1, t0 + 60000);
    arm(&j2, t0 + 3600000);
    arm(&k, t0 + 2 * 3600000);
    is_int(run(t0 + 3600000), 2, "a one-hour jump fires the 60 s and 1 h timers");
    is_int(j1.fired + j2.fired, 2, "each once");
    is_int(k.fired, 0, "the 2 h timer did not fire");
    is_int(W->armed, 1, "the 2 h timer is still armed");
    /* jump to just before it, then to it */
    is_int(run(t0 + 2 * 3600000 - 1), 0, "jump to 1 ms before the 2 h timer: not fired");
    is_int(run(t0 + 2 * 3600000), 1, "then it fires at its deadline");

    /* jumps of more than a revolution that land before the deadline */
    reset(t0);
    probe_init(&k, on_plain);
    arm(&k, t0 + 100000);
    fired = 0;
    for (uint64_t now = t0 + 9000; now < t0 + 100000; now += 9000)
        fired += run(now);
    is_int(fired, 0, "9 s jumps: nothing before 100 s");
    is_int(run(t0 + 100000 - 3), 0, "not at 100 s - 3 ms");
    is_int(run(t0 + 100000), 1, "fires at 100 s");
    /* half-revolution jumps past the deadline */
    arm(&k, t0 + 100000 + 50001);
    fired = 0;
    for (uint64_t now = t0 + 100000 + 5000; now <= t0 + 100000 + 60000; now += 5000)
        fired += run(now);
    is_int(fired, 1, "5 s jumps: fired once");
    is_int(k.fired_at, t0 + 100000 + 55000, "at the first run after its deadline");
    is_int(g_early, 0, "never early");
    is_int(g_late, 0, "never skipped past");
}

/* tp_wheel_next_ms as the shard loop uses it. */
static void test_next_ms(void)
{
    struct probe a, b, f;
    uint64_t t0 = 80000; /* tick-aligned */

    reset(t0);
    is_int(tp_wheel_next_ms(W, t0, 1000), 1000, "empty: the cap");
    is_int(tp_wheel_next_ms(W, t0, 0), 0, "empty: cap 0");
    is_int(tp_wheel_next_ms(W, t0, 123456), 123456, "empty: a cap beyond one revolution");
    probe_init(&a, on_plain);
    probe_init(&b, on_plain);
    arm(&a, t0 + 100);
    arm(&b, t0 + 500);
    is_int(tp_wheel_next_ms(W, t0, 1000), 100, "100 ms to the first timer's slot");
    is_int(tp_wheel_next_ms(W, t0, 50), 50, "capped at 50");
    is_int(tp_wheel_next_ms(W, t0 + 1, 1000), 99, "1 ms later: 99");
    is_int(tp_wheel_next_ms(W, t0 + 150, 1000), 0, "overdue (no run yet): 0");
    tp_timer_cancel(W, &a.t);
    ok(tp_wheel_next_ms(W, t0, 1000) <= 100, "after a cancel: never later than the next live slot");
    is_int(run(t0 + 100), 0, "the cancelled timer's slot passes");
    is_int(tp_wheel_next_ms(W, t0 + 100, 1000), 400, "then 400 ms to b");
    is_int(tp_wheel_next_ms(W, t0 + 100, 300), 300, "capped at 300");
    tp_timer_cancel(W, &b.t);
    is_int(tp_wheel_next_ms(W, t0 + 100, 777), 777, "nothing armed: the cap");

    /* unaligned deadline: the wait ends at the slot start, before the deadline */
    arm(&a, t0 + 203);
    is_int(tp_wheel_next_ms(W, t0 + 101, 1000), 99, "to the slot holding +203 (starts at +200)");
    tp_timer_cancel(W, &a.t);
    is_int(run(t0 + 504), 0, "the cancelled timers' slots pass");

    /* a far timer: the wait is capped, never beyond the deadline */
    probe_init(&f, on_plain);
    arm(&f, t0 + 504 + 10000);
    ok(tp_wheel_next_ms(W, t0 + 504, 60000) <= 10000, "far timer: wait <= 10 s");
    is_int(tp_wheel_next_ms(W, t0 + 504, 1000), 1000, "far timer: capped at 1 s");

    /* the shard loop: sleep next_ms, run; the deadline is never overslept */
    uint64_t now = t0 + 504;
    unsigned iters = 0;
    size_t fired = 0;
    while (!f.fired && iters < 100) {
        now += tp_wheel_next_ms(W, now, 1000);
        fired += run(now);
        iters++;
    }
    is_int(fired, 1, "loop: the far timer fired");
    ok(f.fired_at >= t0 + 10504 && f.fired_at <= ceil_tick(t0 + 10504), "loop: fired within its tick");
    ok(iters <= 12, "loop: about one wake-up per second (%u)", iters);

    /* overdue timer armed from outside: at most one tick to wait */
    arm(&a, now - 50);
    ok(tp_wheel_next_ms(W, now, 1000) <= TICK, "overdue timer: wait at most one tick");
    is_int(run(now + TICK), 1, "and it fires one tick later");

    /* the bitmap is scanned a 64-slot word at a time: timers at the edges of
     * words must not be skipped. The wheel stands at a tick that is slot 10
     * of its word. */
    static const uint64_t ahead[] = {53, 54, 55, 117, 118, 1, 2047};
    uint64_t tw = 4 * (64000 + 10);
    for (unsigned i = 0; i < sizeof(ahead) / sizeof(ahead[0]); i++) {
        reset(tw);
        probe_init(&a, on_plain);
        arm(&a, tw + ahead[i] * TICK);
        is_int(tp_wheel_next_ms(W, tw, 10000), ahead[i] * TICK, "timer %llu ticks ahead: exact wait",
               (unsigned long long)ahead[i]);
        tp_timer_cancel(W, &a.t);
    }
}

/* xorshift64*: deterministic random numbers */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* 100k timers at random deadlines (some beyond a revolution, some an hour
 * out), random run steps and jumps, cancels and re-arms half way. */
static void test_many(void)
{
    enum { N = 100000 };
    struct probe *p = calloc(N, sizeof(*p));
    bool *live = calloc(N, sizeof(*live));
    uint64_t t0 = 1000003, now = t0, end, total = 0;
    unsigned long cancelled = 0, moved = 0, wrong = 0, never = 0;
    bool rearmed = false;
    unsigned long runs = 0;

    if (!p || !live) {
        ok(0, "allocation");
        return;
    }
    reset(t0);
    for (unsigned i = 0; i < N; i++) {
        uint64_t r = rnd();
        uint64_t d = (r % 100 == 0) ? rnd() % 3600000 : (r % 10 < 3) ? rnd() % 30000 : rnd() % 8000;
        probe_init(&p[i], on_plain);
        arm(&p[i], t0 + 1 + d);
        live[i] = true;
    }
    is_int(W->armed, N, "100k armed");
    end = t0 + 3600000 + 10;
    while (now < end && runs < 2000000) {
        uint64_t r = rnd() % 1000;
        /* small steps for the first 10 s; then sometimes a jump of 1..41 s */
        now += r < 995 || now < t0 + 10000 ? 1 + r % 13 : 1000 + rnd() % 40000;
        if (now > end)
            now = end;
        total += run(now);
        runs++;
        if (!rearmed && now >= t0 + 4000) {
            /* from outside: cancel every 7th live timer, move every 5th */
            for (unsigned i = 0; i < N; i++) {
                if (!tp_timer_armed(&p[i].t))
                    continue;
                if (i % 7 == 0) {
                    tp_timer_cancel(W, &p[i].t);
                    live[i] = false;
                    cancelled++;
                } else if (i % 5 == 0) {
                    arm(&p[i], now + 1 + rnd() % 20000);
                    moved++;
                }
            }
            rearmed = true;
        }
    }
    is_int(now, end, "reached the end in bounded runs");
    for (unsigned i = 0; i < N; i++) {
        if (p[i].fired > 1)
            wrong++;
        if (live[i] && p[i].fired == 0)
            never++;
    }
    /* only armed timers were cancelled, so a cancelled one never fired */
    unsigned long fired_total = 0, expected = 0, fired_cancelled = 0;
    for (unsigned i = 0; i < N; i++) {
        fired_total += p[i].fired;
        expected += live[i];
        fired_cancelled += !live[i] && p[i].fired;
    }
    is_int(fired_cancelled, 0, "no cancelled timer fired");
    ok(cancelled > 1000 && moved > 1000, "cancelled %lu, moved %lu", cancelled, moved);
    is_int(wrong, 0, "no timer fired twice");
    is_int(never, 0, "every live timer fired");
    is_int(fired_total, expected, "fired exactly the live ones");
    is_int(total, fired_total, "tp_wheel_run counted every firing");
    is_int(g_early, 0, "none fired before its deadline");
    is_int(g_late, 0, "none skipped past its tick");
    is_int(W->armed, 0, "wheel empty at the end");
    is_int(tp_wheel_next_ms(W, now, 1000), 1000, "next_ms: the cap once empty");
    free(p);
    free(live);
}

int main(void)
{
    W = malloc(sizeof(*W));
    if (!W)
        return 1;
    test_basic();
    test_order_exact();
    test_cancel();
    test_rearm_outside();
    test_rearm_inside();
    test_cancel_same_slot();
    test_far();
    test_next_ms();
    test_many();
    free(W);
    return tap_done();
}
