/* SPDX-License-Identifier: MIT */
/*
 * Circuit breaker state machine on one atomic word (see
 * include/turnpike/breaker.h). admit/report run on every shard ([any]);
 * init and set_config on the control thread.
 *
 * The state word (64 bits):
 *
 *   bits  0..1   state: CLOSED, OPEN, HALF_OPEN
 *   bits  2..23  generation, +1 on every transition (wraps at 2^22)
 *   bits 24..63  payload (40 bits):
 *                  CLOSED     0
 *                  OPEN       [ms] time it opened, modulo 2^40 (34 years)
 *                  HALF_OPEN  bits 0..7 trial permits left, 8..15 successes
 *                             still awaited, 16..39 [s] time it turned
 *                             half-open, modulo 2^24 (194 days)
 *
 * Every transition is a CAS from the exact word that justified it, so of
 * racing threads exactly one wins, and a thread whose view is outdated fails
 * and re-decides. A closed word never changes except by a transition, which
 * is why the generation in a pass identifies the state period it was issued
 * in: a report whose generation differs from the current one is stale and
 * ignored. Permits and awaited successes are counted down in the word itself
 * and fixed when the breaker turns half-open, so a reload that changes
 * half_open_requests only affects the next half-open period.
 *
 * The closed-state counters live outside the word (they are updated on every
 * report, which must not disturb admits reading the word): a consecutive
 * failure counter and a ring of per-second (or wider, for windows over 60 s)
 * buckets, each a pair of tagged words (bucket number + 1 in the high half,
 * count in the low half), restarted by CAS when a new period reaches them.
 * They are evaluated only on failures (a success cannot open the breaker), and
 * reset when the breaker opens and when it closes. With concurrent shards,
 * "consecutive" means consecutive in the order the reports arrive.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/breaker.h>
#include <turnpike/err.h>

#define ST_MASK    3ull
#define GEN_SHIFT  2
#define GEN_MASK   ((1u << 22) - 1)
#define PAY_SHIFT  24
#define PAY40_MASK ((1ull << 40) - 1)

/* half-open payload fields */
#define HO_PERMIT_SHIFT 0
#define HO_NEED_SHIFT   8
#define HO_SINCE_SHIFT  16
#define HO_SINCE_MASK   ((1u << 24) - 1)

#define PPM 1000000u

static inline unsigned st_of(uint64_t w)
{
    return (unsigned)(w & ST_MASK);
}

static inline uint32_t gen_of(uint64_t w)
{
    return (uint32_t)(w >> GEN_SHIFT) & GEN_MASK;
}

static inline uint64_t pay_of(uint64_t w)
{
    return w >> PAY_SHIFT;
}

static inline uint64_t mkword(unsigned st, uint32_t gen, uint64_t pay)
{
    return (uint64_t)st | ((uint64_t)(gen & GEN_MASK) << GEN_SHIFT) | (pay << PAY_SHIFT);
}

static inline unsigned ho_permits(uint64_t w)
{
    return (unsigned)(pay_of(w) >> HO_PERMIT_SHIFT) & 0xff;
}

static inline unsigned ho_need(uint64_t w)
{
    return (unsigned)(pay_of(w) >> HO_NEED_SHIFT) & 0xff;
}

static inline uint64_t ho_payload(unsigned permits, unsigned need, uint64_t now_ms)
{
    return ((uint64_t)permits << HO_PERMIT_SHIFT) | ((uint64_t)need << HO_NEED_SHIFT) |
           ((uint64_t)((now_ms / 1000) & HO_SINCE_MASK) << HO_SINCE_SHIFT);
}

/* Has open_for passed since the OPEN word <w> was made? A reading older than
 * the opening (skew between shards' clocks) has not. */
static bool open_elapsed(uint64_t w, uint64_t now_ms, uint64_t open_for)
{
    uint64_t d = (now_ms - pay_of(w)) & PAY40_MASK;

    if (d >= (1ull << 39))
        return false;
    return d >= open_for;
}

/* Has the HALF_OPEN word <w> waited for its trials for too long? */
static bool trials_lost(uint64_t w, uint64_t now_ms)
{
    uint32_t since = (uint32_t)(pay_of(w) >> HO_SINCE_SHIFT) & HO_SINCE_MASK;
    uint32_t d = ((uint32_t)(now_ms / 1000) - since) & HO_SINCE_MASK;

    if (ho_permits(w) > 0 || d >= (1u << 23))
        return false;
    return (uint64_t)d * 1000 >= TP_BREAKER_TRIAL_TIMEOUT_MS;
}

/* ---- closed-state counters ---- */

static void counters_reset(struct tp_breaker *b)
{
    atomic_store_explicit(&b->_consecutive, 0, memory_order_relaxed);
    for (int i = 0; i < TP_BREAKER_WINDOW_SLOTS; i++) {
        atomic_store_explicit(&b->_win[i].total, 0, memory_order_relaxed);
        atomic_store_explicit(&b->_win[i].fail, 0, memory_order_relaxed);
    }
}

/* Adds one to the tagged count <w> for bucket tag <tag>: restarts the word if
 * it holds an older bucket, drops the count if it holds a newer one (this
 * report's clock lags and its bucket has left the ring). Saturates. */
static void bump(_Atomic uint64_t *w, uint32_t tag)
{
    uint64_t old = atomic_load_explicit(w, memory_order_relaxed), nw;

    do {
        uint32_t ot = (uint32_t)(old >> 32);

        if (ot == tag) {
            if ((uint32_t)old == UINT32_MAX)
                return;
            nw = old + 1;
        } else if (ot == 0 || (int32_t)(tag - ot) > 0) {
            nw = ((uint64_t)tag << 32) | 1;
        } else {
            return;
        }
    } while (!atomic_compare_exchange_weak_explicit(w, &old, nw, memory_order_relaxed, memory_order_relaxed));
}

/* Requests and failures in the buckets of the window ending at <now_ms>. */
static void window_sum(struct tp_breaker *b, uint64_t now_ms, uint64_t *total, uint64_t *fail)
{
    uint64_t wv = atomic_load_explicit(&b->_window, memory_order_relaxed);
    uint64_t width = wv >> 32, ns = (uint32_t)wv;
    uint64_t c = now_ms / width;

    *total = *fail = 0;
    for (uint64_t k = 0; k < ns && k <= c; k++) {
        uint64_t n = c - k;
        uint32_t tag = (uint32_t)(n + 1);
        struct tp_breaker_bucket *bk = &b->_win[n % ns];
        uint64_t t = atomic_load_explicit(&bk->total, memory_order_relaxed);
        uint64_t f = atomic_load_explicit(&bk->fail, memory_order_relaxed);

        if ((uint32_t)(t >> 32) == tag)
            *total += (uint32_t)t;
        if ((uint32_t)(f >> 32) == tag)
            *fail += (uint32_t)f;
    }
}

/* Transition from the exact word *<w> to <nw>; *<w> is the current word
 * afterwards either way. The winner resets the closed counters when the
 * breaker opens or closes. */
static bool transition(struct tp_breaker *b, uint64_t *w, uint64_t nw)
{
    if (!atomic_compare_exchange_strong_explicit(&b->_state, w, nw, memory_order_acq_rel,
                                                 memory_order_acquire))
        return false;
    *w = nw;
    if (st_of(nw) != TP_BREAKER_HALF_OPEN)
        counters_reset(b);
    return true;
}

static void closed_report(struct tp_breaker *b, uint64_t w, bool success, uint64_t now_ms)
{
    uint64_t wv = atomic_load_explicit(&b->_window, memory_order_relaxed);
    uint64_t width = wv >> 32, ns = (uint32_t)wv;
    uint64_t n = now_ms / width;
    struct tp_breaker_bucket *bk = &b->_win[n % ns];
    uint32_t tag = (uint32_t)(n + 1);
    uint32_t c, cmax, ppm, minreq;
    uint64_t total, fail;

    if (success) {
        /* read first: in the steady state nothing is written here */
        if (atomic_load_explicit(&b->_consecutive, memory_order_relaxed) != 0)
            atomic_store_explicit(&b->_consecutive, 0, memory_order_relaxed);
        bump(&bk->total, tag);
        return;
    }
    c = atomic_fetch_add_explicit(&b->_consecutive, 1, memory_order_relaxed) + 1;
    bump(&bk->total, tag);
    bump(&bk->fail, tag);

    cmax = atomic_load_explicit(&b->_consecutive_max, memory_order_relaxed);
    if (cmax != 0 && c >= cmax) {
        transition(b, &w, mkword(TP_BREAKER_OPEN, gen_of(w) + 1, now_ms & PAY40_MASK));
        return;
    }
    window_sum(b, now_ms, &total, &fail);
    ppm = atomic_load_explicit(&b->_ratio_ppm, memory_order_relaxed);
    minreq = atomic_load_explicit(&b->_min_requests, memory_order_relaxed);
    if (total > 0 && total >= minreq && fail * PPM >= (uint64_t)ppm * total)
        transition(b, &w, mkword(TP_BREAKER_OPEN, gen_of(w) + 1, now_ms & PAY40_MASK));
}

/* ---- public ---- */

void tp_breaker_set_config(struct tp_breaker *b, const struct tp_cfg_circuit_breaker *cfg)
{
    uint64_t win_ms, width, ns, wv;
    double ratio;
    uint32_t ppm, trials;

    if (!cfg) {
        uint64_t w = atomic_load_explicit(&b->_state, memory_order_acquire);

        atomic_store_explicit(&b->_enabled, false, memory_order_relaxed);
        while (st_of(w) != TP_BREAKER_CLOSED &&
               !transition(b, &w, mkword(TP_BREAKER_CLOSED, gen_of(w) + 1, 0)))
            ;
        return;
    }

    /* Buckets of 1 s, or window/60 rounded up for windows above 60 s. */
    win_ms = cfg->window_ms ? cfg->window_ms : 1000;
    width = (win_ms + TP_BREAKER_WINDOW_SLOTS - 1) / TP_BREAKER_WINDOW_SLOTS;
    if (width < 1000)
        width = 1000;
    if (width > UINT32_MAX)
        width = UINT32_MAX;
    ns = (win_ms + width - 1) / width;
    if (ns < 1)
        ns = 1;
    if (ns > TP_BREAKER_WINDOW_SLOTS)
        ns = TP_BREAKER_WINDOW_SLOTS;
    wv = (width << 32) | ns;

    ratio = cfg->failure_ratio;
    if (!(ratio > 0.0))
        ratio = 0.0;
    if (ratio > 1.0)
        ratio = 1.0;
    ppm = (uint32_t)(ratio * PPM + 0.5);
    if (ppm == 0)
        ppm = 1;
    trials = cfg->half_open_requests;
    if (trials < 1)
        trials = 1;
    if (trials > TP_BREAKER_MAX_TRIALS)
        trials = TP_BREAKER_MAX_TRIALS;

    atomic_store_explicit(&b->_consecutive_max, cfg->consecutive_failures, memory_order_relaxed);
    atomic_store_explicit(&b->_ratio_ppm, ppm, memory_order_relaxed);
    atomic_store_explicit(&b->_min_requests, cfg->min_requests, memory_order_relaxed);
    atomic_store_explicit(&b->_trials, trials, memory_order_relaxed);
    atomic_store_explicit(&b->_open_for_ms,
                          cfg->open_for_ms < (1ull << 39) ? cfg->open_for_ms : (1ull << 39) - 1,
                          memory_order_relaxed);
    if (atomic_exchange_explicit(&b->_window, wv, memory_order_relaxed) != wv) {
        /* bucket numbers mean something else now: restart the window */
        for (int i = 0; i < TP_BREAKER_WINDOW_SLOTS; i++) {
            atomic_store_explicit(&b->_win[i].total, 0, memory_order_relaxed);
            atomic_store_explicit(&b->_win[i].fail, 0, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&b->_enabled, true, memory_order_relaxed);
}

void tp_breaker_init(struct tp_breaker *b, const struct tp_cfg_circuit_breaker *cfg)
{
    TP_BUG_ON(((uintptr_t)b & 63) != 0);
    memset(b, 0, sizeof(*b));
    atomic_init(&b->_state, mkword(TP_BREAKER_CLOSED, 0, 0));
    atomic_init(&b->_window, (1000ull << 32) | 1);
    atomic_init(&b->_enabled, false);
    tp_breaker_set_config(b, cfg);
}

struct tp_breaker *tp_breaker_create(const struct tp_cfg_circuit_breaker *cfg, int *err)
{
    struct tp_breaker *b = aligned_alloc(64, sizeof(*b));

    if (!b) {
        if (err)
            *err = -ENOMEM;
        return NULL;
    }
    tp_breaker_init(b, cfg);
    return b;
}

void tp_breaker_destroy(struct tp_breaker *b)
{
    free(b);
}

struct tp_breaker_pass tp_breaker_admit(struct tp_breaker *b, uint64_t now_ms)
{
    uint64_t w = atomic_load_explicit(&b->_state, memory_order_acquire);

    if (!atomic_load_explicit(&b->_enabled, memory_order_relaxed))
        return (struct tp_breaker_pass){TP_BREAKER_ALLOW, gen_of(w)};
    for (;;) {
        switch (st_of(w)) {
        case TP_BREAKER_CLOSED:
            return (struct tp_breaker_pass){TP_BREAKER_ALLOW, gen_of(w)};

        case TP_BREAKER_OPEN: {
            unsigned n;

            if (!open_elapsed(w, now_ms, atomic_load_explicit(&b->_open_for_ms, memory_order_relaxed)))
                return (struct tp_breaker_pass){TP_BREAKER_DENY, gen_of(w)};
            /* The one thread whose CAS wins turns it half-open and keeps the
             * first permit; the others see the new word and compete for the
             * remaining permits below. */
            n = atomic_load_explicit(&b->_trials, memory_order_relaxed);
            uint64_t nw = mkword(TP_BREAKER_HALF_OPEN, gen_of(w) + 1, ho_payload(n - 1, n, now_ms));
            if (transition(b, &w, nw))
                return (struct tp_breaker_pass){TP_BREAKER_TRIAL, gen_of(nw)};
            break;
        }

        case TP_BREAKER_HALF_OPEN:
            if (ho_permits(w) > 0) {
                if (atomic_compare_exchange_weak_explicit(&b->_state, &w, w - (1ull << PAY_SHIFT),
                                                          memory_order_acq_rel, memory_order_acquire))
                    return (struct tp_breaker_pass){TP_BREAKER_TRIAL, gen_of(w)};
                break;
            }
            if (trials_lost(w, now_ms)) {
                /* trials handed out long ago never all came back: count the
                 * missing ones as failures rather than stay half-open forever */
                transition(b, &w, mkword(TP_BREAKER_OPEN, gen_of(w) + 1, now_ms & PAY40_MASK));
                break;
            }
            return (struct tp_breaker_pass){TP_BREAKER_DENY, gen_of(w)};

        default:
            TP_BUG_ON_HOT(1);
            return (struct tp_breaker_pass){TP_BREAKER_DENY, gen_of(w)};
        }
        /* a CAS failed: <w> holds the current word, decide again */
    }
}

void tp_breaker_report(struct tp_breaker *b, struct tp_breaker_pass pass, bool success, uint64_t now_ms)
{
    uint64_t w;

    if (pass.how == TP_BREAKER_DENY || !atomic_load_explicit(&b->_enabled, memory_order_relaxed))
        return;
    w = atomic_load_explicit(&b->_state, memory_order_acquire);
    if (gen_of(w) != (pass.gen & GEN_MASK))
        return; /* stale: admitted in an earlier state */

    if (pass.how == TP_BREAKER_ALLOW) {
        if (st_of(w) == TP_BREAKER_CLOSED)
            closed_report(b, w, success, now_ms);
        return;
    }

    /* a trial of the current half-open period */
    for (;;) {
        uint64_t nw;

        if (gen_of(w) != (pass.gen & GEN_MASK) || st_of(w) != TP_BREAKER_HALF_OPEN)
            return;
        if (!success)
            nw = mkword(TP_BREAKER_OPEN, gen_of(w) + 1, now_ms & PAY40_MASK);
        else if (ho_need(w) <= 1)
            nw = mkword(TP_BREAKER_CLOSED, gen_of(w) + 1, 0);
        else
            nw = w - (1ull << (PAY_SHIFT + HO_NEED_SHIFT));
        if (transition(b, &w, nw))
            return;
    }
}

int tp_breaker_state(const struct tp_breaker *b, uint64_t now_ms)
{
    (void)now_ms;
    if (!atomic_load_explicit(&b->_enabled, memory_order_relaxed))
        return TP_BREAKER_CLOSED;
    return (int)st_of(atomic_load_explicit(&b->_state, memory_order_acquire));
}

bool tp_breaker_would_admit(const struct tp_breaker *b, uint64_t now_ms)
{
    uint64_t w;

    if (!atomic_load_explicit(&b->_enabled, memory_order_relaxed))
        return true;
    w = atomic_load_explicit(&b->_state, memory_order_acquire);
    switch (st_of(w)) {
    case TP_BREAKER_CLOSED:
        return true;
    case TP_BREAKER_OPEN:
        return open_elapsed(w, now_ms, atomic_load_explicit(&b->_open_for_ms, memory_order_relaxed));
    default:
        return ho_permits(w) > 0;
    }
}
