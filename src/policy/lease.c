/* SPDX-License-Identifier: MIT */
/*
 * Pools of leased tokens for global rate limits (include/turnpike/lease.h).
 *
 * A pool is one cache line: the key, TP_LEASE_WORDS lease words, the
 * "asked" flag, the low-water mark and what the store last said about the
 * global bucket. A lease word is
 *
 *     expiry (40 bits, units of 2^20 ns since boot) << 24 | tokens (24 bits)
 *
 * A shard takes a token from the unexpired word that expires first: one CAS
 * that decrements the count, compared against the whole word, so a word the
 * control thread replaced in between (a new lease in an expired or empty
 * word) makes the CAS fail and the take start over. Only the control thread
 * writes a word that is empty or expired, and only shards decrement live
 * ones, so a token is taken at most once and never after its expiry
 * (the expiry is rounded down to a whole unit).
 *
 * Why tokens expire. A token leased at store time t_r and spent at t_s is
 * an admission the store accounted at t_r. If tokens could be kept forever,
 * an instance could hoard a full bucket and spend it when the bucket is full
 * again: 2 x burst at once. With a life of E (measured on this instance from
 * the moment the ask was sent, which precedes t_r), every token spent in a
 * window [a, b] was leased in [a - E, b]; the store's bucket, of capacity
 * C = burst - rate x E, hands out at most C + rate x (b - a + E) =
 * burst + rate x (b - a) tokens in that window. docs/policies.md states it for
 * operators.
 *
 * The request queue: a bounded MPSC ring of slot numbers (sequence-numbered
 * cells). A pool enters it at most once at a time, guarded by its "asked"
 * flag (set by the shard that queues it, cleared by the control thread when
 * the answer came or the ask failed). A full ring clears the flag again: the
 * next take tries once more.
 *
 * Sizing (control thread). Each ask measures what the pool handed out since
 * the previous one (tokens held then + granted since - tokens held now) over
 * the time between them, and averages it with the previous estimate; L is
 * what that rate uses in a token life E. A busy key (L >= 64) gets leases of
 * 3/4 L and asks again when it holds under L / 8: a lease arrives with an
 * eighth of a life of tokens still in the pool and its last token goes about
 * 7/8 of a life after the ask, before it expires, and the key asks about
 * every 3/4 E (5.3 asks per second at E = 250 ms, whatever its rate). A
 * quieter key gets L / 2 with a low-water mark of L / 4 (rounded: 0 for a
 * sparse key, which then asks only when a request finds the pool empty and
 * waits for the lease), which wastes fewer tokens to expiry when its rate
 * moves. A first ask for a pool uses an eighth of the configured rate as its
 * guess. A lease never exceeds half the store bucket's capacity, so one
 * instance cannot take all of it in one go.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/lease.h>

#define CACHELINE  64
#define UNIT_SHIFT 20 /* expiry unit: 2^20 ns, about 1.05 ms */
#define TOK_BITS   24
#define TOK_MASK   ((1ull << TOK_BITS) - 1)
#define QCAP       4096u
#define MIN_SLOTS  16u
#define PROBE      16u
#define BUSY_LIFE  64.0 /* tokens per token life from which a key counts as busy */

struct pool {
    _Atomic uint64_t key; /* XXH3 of the key; 0 = never used */
    _Atomic uint64_t w[TP_LEASE_WORDS];
    _Atomic uint32_t asked; /* queued or in flight */
    _Atomic uint32_t low;   /* low-water mark [tokens] */
    _Atomic uint32_t g_remaining;
    _Atomic uint32_t g_reset_s;
    _Atomic uint32_t g_retry_s;
} __attribute__((aligned(CACHELINE)));

/* What the control thread knows about a pool. */
struct pool_ctl {
    uint64_t key;     /* the key the estimate belongs to */
    double rate;      /* tokens per ns handed out; 0 = not known yet */
    uint64_t last_ns; /* the last ask */
    uint64_t held;    /* tokens held at the last ask + granted since */
    uint64_t not_before_ns;
    uint32_t want; /* of the ask in flight */
    bool deferred;
};

struct qcell {
    _Atomic uint32_t seq;
    uint32_t slot;
};

struct tp_lease_table {
    char *name;
    int refs;
    bool keyed;
    uint64_t mask;
    size_t n; /* pools; the last is the route's pool or the overflow pool */
    struct pool *pools;
    struct pool_ctl *ctl;
    _Atomic uint64_t *dry;     /* per pool: [ns] until then the store said its bucket has no token */
    _Atomic uint64_t *waiters; /* per pool: shards (bit id % 64) with a request waiting for its lease */

    uint64_t tokens, period_ms;
    _Atomic uint64_t burst;
    double rate_ns; /* tokens per ns */
    uint64_t ttl_ns;
    double capacity;

    struct qcell *q;
    _Alignas(CACHELINE) _Atomic uint64_t q_enq;
    _Alignas(CACHELINE) uint64_t q_deq;
    uint32_t *deferred;
    size_t n_deferred;

    _Alignas(CACHELINE) _Atomic uint64_t n_asks;
    _Atomic uint64_t n_granted;
    _Atomic uint64_t n_expired;
};

static _Atomic bool store_up;
static void (*ask_notify)(void);

void tp_lease_set_notify(void (*fn)(void))
{
    ask_notify = fn;
}

void tp_lease_set_store_up(bool up)
{
    atomic_store_explicit(&store_up, up, memory_order_relaxed);
}

bool tp_lease_store_up(void)
{
    return atomic_load_explicit(&store_up, memory_order_relaxed);
}

static inline uint64_t w_tokens(uint64_t w)
{
    return w & TOK_MASK;
}

static inline uint64_t w_exp(uint64_t w)
{
    return w >> TOK_BITS;
}

/* ---- parameters ---- */

static int params_set(struct tp_lease_table *t, const struct tp_cfg_rate_limit *cfg)
{
    double rate_s, ttl_s;

    if (!cfg || cfg->tokens == 0 || cfg->period_ms == 0 || cfg->burst == 0)
        return -EINVAL;
    rate_s = (double)cfg->tokens * 1000.0 / (double)cfg->period_ms;
    /* a quarter of the time the bucket takes to fill, at most 250 ms, and
     * short enough that the store's bucket keeps at least one whole token */
    ttl_s = (double)TP_LEASE_TTL_NS / 1e9;
    if ((double)cfg->burst / (4.0 * rate_s) < ttl_s)
        ttl_s = (double)cfg->burst / (4.0 * rate_s);
    if (cfg->burst >= 2 && (double)(cfg->burst - 1) / rate_s < ttl_s)
        ttl_s = (double)(cfg->burst - 1) / rate_s;
    t->tokens = cfg->tokens;
    t->period_ms = cfg->period_ms;
    atomic_store_explicit(&t->burst, cfg->burst, memory_order_relaxed);
    t->rate_ns = rate_s / 1e9;
    t->ttl_ns = (uint64_t)(ttl_s * 1e9);
    t->capacity = (double)cfg->burst - rate_s * ((double)t->ttl_ns / 1e9);
    if (t->capacity < 1.0)
        t->capacity = 1.0; /* burst 1: the store keeps its one token; the bound
                            * loosens by rate x E (under a quarter of a token) */
    return 0;
}

/* ---- the queue ---- */

static bool q_push(struct tp_lease_table *t, uint32_t slot)
{
    uint64_t pos = atomic_load_explicit(&t->q_enq, memory_order_relaxed);

    for (;;) {
        struct qcell *c = &t->q[pos & (QCAP - 1)];
        uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int32_t dif = (int32_t)(seq - (uint32_t)pos);

        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&t->q_enq, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                c->slot = slot;
                atomic_store_explicit(&c->seq, (uint32_t)pos + 1, memory_order_release);
                return true;
            }
        } else if (dif < 0) {
            return false; /* full */
        } else {
            pos = atomic_load_explicit(&t->q_enq, memory_order_relaxed);
        }
    }
}

static bool q_pop(struct tp_lease_table *t, uint32_t *slot)
{
    struct qcell *c = &t->q[t->q_deq & (QCAP - 1)];
    uint32_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);

    if (seq != (uint32_t)t->q_deq + 1)
        return false;
    *slot = c->slot;
    atomic_store_explicit(&c->seq, (uint32_t)t->q_deq + QCAP, memory_order_release);
    t->q_deq++;
    return true;
}

/* ---- create, destroy ---- */

struct tp_lease_table *tp_lease_create(const char *name, const struct tp_cfg_rate_limit *cfg, size_t slots,
                                       int *err)
{
    struct tp_lease_table *t = NULL;
    size_t cap = 0;
    int r = -EINVAL;

    if (!cfg)
        goto fail;
    if (cfg->key.kind != TP_KEY_ROUTE) {
        if (slots == 0)
            slots = TP_RL_DEFAULT_SLOTS;
        if (slots > TP_RL_MAX_SLOTS)
            goto fail;
        cap = MIN_SLOTS;
        while (cap < slots)
            cap <<= 1;
    }
    r = -ENOMEM;
    t = aligned_alloc(CACHELINE, sizeof(*t));
    if (!t)
        goto fail;
    memset(t, 0, sizeof(*t));
    if (params_set(t, cfg) < 0) {
        free(t);
        t = NULL;
        r = -EINVAL;
        goto fail;
    }
    t->refs = 1;
    t->keyed = cap != 0;
    t->mask = cap ? cap - 1 : 0;
    t->n = cap + 1;
    t->name = strdup(name ? name : "");
    t->pools = aligned_alloc(CACHELINE, t->n * sizeof(*t->pools));
    t->ctl = calloc(t->n, sizeof(*t->ctl));
    t->deferred = calloc(t->n, sizeof(*t->deferred));
    t->q = aligned_alloc(CACHELINE, QCAP * sizeof(*t->q));
    t->dry = calloc(t->n, sizeof(*t->dry));
    t->waiters = calloc(t->n, sizeof(*t->waiters));
    if (!t->name || !t->pools || !t->ctl || !t->deferred || !t->q || !t->dry || !t->waiters)
        goto fail;
    for (size_t i = 0; i < t->n; i++) {
        struct pool *p = &t->pools[i];
        atomic_init(&p->key, 0);
        for (unsigned k = 0; k < TP_LEASE_WORDS; k++)
            atomic_init(&p->w[k], 0);
        atomic_init(&p->asked, 0);
        atomic_init(&p->low, 1);
        atomic_init(&p->g_remaining, 0);
        atomic_init(&p->g_reset_s, 0);
        atomic_init(&p->g_retry_s, 1);
        atomic_init(&t->dry[i], 0);
        atomic_init(&t->waiters[i], 0);
    }
    for (uint32_t i = 0; i < QCAP; i++) {
        atomic_init(&t->q[i].seq, i);
        t->q[i].slot = 0;
    }
    atomic_init(&t->q_enq, 0);
    return t;

fail:
    if (t) {
        free(t->name);
        free(t->pools);
        free(t->ctl);
        free(t->deferred);
        free(t->q);
        free(t->dry);
        free(t->waiters);
        free(t);
    }
    if (err)
        *err = r;
    return NULL;
}

void tp_lease_ref(struct tp_lease_table *t)
{
    t->refs++;
}

void tp_lease_unref(struct tp_lease_table *t)
{
    if (!t || --t->refs > 0)
        return;
    free(t->name);
    free(t->pools);
    free(t->ctl);
    free(t->deferred);
    free(t->q);
    free(t->dry);
    free(t->waiters);
    free(t);
}

int tp_lease_update(struct tp_lease_table *t, const struct tp_cfg_rate_limit *cfg)
{
    if (!cfg || (cfg->key.kind != TP_KEY_ROUTE) != t->keyed)
        return -EINVAL;
    return params_set(t, cfg);
}

const char *tp_lease_name(const struct tp_lease_table *t)
{
    return t->name;
}

uint64_t tp_lease_ttl_ns(const struct tp_lease_table *t)
{
    return t->ttl_ns;
}

void tp_lease_stats(const struct tp_lease_table *t, struct tp_lease_stats *out)
{
    out->asks = atomic_load_explicit(&t->n_asks, memory_order_relaxed);
    out->granted = atomic_load_explicit(&t->n_granted, memory_order_relaxed);
    out->expired = atomic_load_explicit(&t->n_expired, memory_order_relaxed);
}

/* ---- the shards' side ---- */

/* Unexpired tokens of <p> at <now_u>. */
static uint64_t pool_held(const struct pool *p, uint64_t now_u)
{
    uint64_t n = 0;

    for (unsigned k = 0; k < TP_LEASE_WORDS; k++) {
        uint64_t w = atomic_load_explicit(&p->w[k], memory_order_relaxed);
        if (w_tokens(w) && now_u < w_exp(w))
            n += w_tokens(w);
    }
    return n;
}

/* The pool of key hash <h>: found, claimed (an empty slot, or a stale one:
 * nothing asked and nothing held), or the overflow pool. Two shards seeing
 * a new key at once may give it two slots; the later goes stale. */
static uint32_t pool_lookup(struct tp_lease_table *t, uint64_t h, uint64_t now_u)
{
    size_t i;

    if (h == 0)
        h = 1; /* 0 marks an empty slot */
    i = (size_t)(h & t->mask);
    for (unsigned n = 0; n < PROBE; n++, i = (i + 1) & t->mask) {
        struct pool *p = &t->pools[i];
        uint64_t k = atomic_load_explicit(&p->key, memory_order_relaxed);

        if (k == h)
            return (uint32_t)i;
        if (k == 0 ||
            (atomic_load_explicit(&p->asked, memory_order_relaxed) == 0 && pool_held(p, now_u) == 0)) {
            if (atomic_compare_exchange_strong_explicit(&p->key, &k, h, memory_order_relaxed,
                                                        memory_order_relaxed) ||
                k == h)
                return (uint32_t)i;
        }
    }
    return (uint32_t)(t->n - 1);
}

/* Takes a token from the unexpired word of <p> that expires first: true when
 * one was taken. *<held>: the unexpired tokens left. */
static inline bool pool_take(struct pool *p, uint64_t now_u, uint64_t *held)
{
    for (;;) {
        uint64_t w[TP_LEASE_WORDS], n = 0;
        int best = -1;

        for (unsigned k = 0; k < TP_LEASE_WORDS; k++) {
            w[k] = atomic_load_explicit(&p->w[k], memory_order_acquire);
            if (w_tokens(w[k]) && now_u < w_exp(w[k])) {
                n += w_tokens(w[k]);
                if (best < 0 || w_exp(w[k]) < w_exp(w[best]))
                    best = (int)k;
            }
        }
        *held = n;
        if (best < 0)
            return false;
        if (atomic_compare_exchange_weak_explicit(&p->w[best], &w[best], w[best] - 1, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
            *held = n - 1;
            return true;
        }
    }
}

static void take_result(struct tp_lease_table *t, struct pool *p, uint64_t held, bool admitted,
                        struct tp_rl_result *out)
{
    uint64_t burst = atomic_load_explicit(&t->burst, memory_order_relaxed);
    uint64_t rem = atomic_load_explicit(&p->g_remaining, memory_order_relaxed) + held;

    out->limit = burst;
    out->remaining = rem < burst ? rem : burst;
    out->reset_s = atomic_load_explicit(&p->g_reset_s, memory_order_relaxed);
    out->retry_after_s = admitted ? 0 : atomic_load_explicit(&p->g_retry_s, memory_order_relaxed);
    if (!admitted && out->retry_after_s == 0)
        out->retry_after_s = 1;
}

enum tp_lease_verdict tp_lease_take(struct tp_lease_table *t, uint64_t key_hash, uint64_t now_ns,
                                    uint64_t waiter, struct tp_rl_result *out)
{
    uint64_t now_u = now_ns >> UNIT_SHIFT, held;
    uint32_t slot = t->keyed ? pool_lookup(t, key_hash, now_u) : 0;
    struct pool *p = &t->pools[slot];
    bool admitted = pool_take(p, now_u, &held);
    enum tp_lease_verdict v = TP_LEASE_ADMIT;

    if ((!admitted || held < atomic_load_explicit(&p->low, memory_order_relaxed)) &&
        atomic_load_explicit(&p->asked, memory_order_relaxed) == 0) {
        uint32_t zero = 0;
        if (atomic_compare_exchange_strong_explicit(&p->asked, &zero, 1, memory_order_relaxed,
                                                    memory_order_relaxed)) {
            if (!q_push(t, slot))
                atomic_store_explicit(&p->asked, 0, memory_order_relaxed);
            else if (ask_notify)
                ask_notify();
        }
    }
    if (!admitted) {
        if (!tp_lease_store_up())
            v = TP_LEASE_FALLBACK;
        /* empty: a 429 only on the store's word; else the lease asked for above
         * (or one in flight, or a deferred one) is worth waiting for. The slot
         * arrays are off the pool's line: read only when dry. */
        else if (now_ns < atomic_load_explicit(&t->dry[slot], memory_order_relaxed))
            v = TP_LEASE_DENY;
        else
            v = TP_LEASE_WAIT;
    }
    if (v == TP_LEASE_WAIT && waiter) {
        /* the caller waits: the grant wakes it. The mark, then a second look:
         * either that look sees a lease placed meanwhile or the grant (which
         * places, then collects the marks) sees the mark. */
        atomic_fetch_or_explicit(&t->waiters[slot], waiter, memory_order_seq_cst);
        atomic_thread_fence(memory_order_seq_cst);
        if ((admitted = pool_take(p, now_u, &held)))
            v = TP_LEASE_ADMIT;
    }
    if (out)
        take_result(t, p, held, admitted, out);
    return v;
}

/* The shards waiting for a lease of <slot>, forgotten: the caller wakes them. */
static uint64_t waiters_take(struct tp_lease_table *t, uint32_t slot)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&t->waiters[slot], memory_order_relaxed) == 0)
        return 0;
    return atomic_exchange_explicit(&t->waiters[slot], 0, memory_order_seq_cst);
}

/* ---- the control side ---- */

static void plan(struct tp_lease_table *t, uint32_t slot, uint64_t now_ns, struct tp_lease_ask *ask)
{
    struct pool *p = &t->pools[slot];
    struct pool_ctl *c = &t->ctl[slot];
    uint64_t key = atomic_load_explicit(&p->key, memory_order_relaxed);
    uint64_t held = pool_held(p, now_ns >> UNIT_SHIFT);
    double rate, life, want, low, max;

    if (c->key != key || c->last_ns == 0) {
        c->key = key;
        c->rate = 0;
    } else if (now_ns > c->last_ns) {
        double used = c->held > held ? (double)(c->held - held) : 0;
        double r = used / (double)(now_ns - c->last_ns);
        c->rate = c->rate > 0 ? (c->rate + r) / 2 : r;
    }
    c->last_ns = now_ns;
    c->held = held;
    rate = c->rate > 0 ? c->rate : t->rate_ns / 8;
    life = rate * (double)t->ttl_ns; /* tokens the key uses in a token life */
    if (life >= BUSY_LIFE) {
        /* busy: three quarters of a life per lease, asked for an eighth of a
         * life ahead; the lease's last token goes at 7/8 of its life */
        want = ceil(life * 3 / 4);
        low = floor(life / 8 + 0.5);
    } else {
        want = ceil(life / 2);
        /* rounded, not up: a key that uses under two tokens per token life
         * asks only when a request finds its pool empty (and waits for the
         * lease) instead of holding a token that would mostly expire unused */
        low = floor(life / 4 + 0.5);
    }
    max = floor(t->capacity / 2);
    if (max > TP_LEASE_MAX)
        max = TP_LEASE_MAX;
    if (want > max)
        want = max;
    if (want < 1)
        want = 1;
    if (low > want)
        low = want;
    atomic_store_explicit(&p->low, (uint32_t)low, memory_order_relaxed);
    c->want = (uint32_t)want;
    atomic_fetch_add_explicit(&t->n_asks, 1, memory_order_relaxed);

    ask->slot = slot;
    ask->overflow = t->keyed && slot == t->n - 1;
    ask->key_hash = t->keyed && !ask->overflow ? key : 0;
    ask->want = (uint32_t)want;
    ask->capacity = t->capacity;
    ask->tokens = t->tokens;
    ask->period_ms = t->period_ms;
}

bool tp_lease_deferred(const struct tp_lease_table *t)
{
    return t->n_deferred != 0;
}

bool tp_lease_next(struct tp_lease_table *t, uint64_t now_ns, struct tp_lease_ask *ask)
{
    uint32_t slot;

    /* pools held back after a short lease, in the order they were */
    for (size_t i = 0; i < t->n_deferred; i++) {
        slot = t->deferred[i];
        if (t->ctl[slot].not_before_ns > now_ns)
            continue;
        t->deferred[i] = t->deferred[--t->n_deferred];
        t->ctl[slot].deferred = false;
        plan(t, slot, now_ns, ask);
        return true;
    }
    while (q_pop(t, &slot)) {
        if (slot >= t->n)
            continue;
        if (t->ctl[slot].not_before_ns > now_ns) {
            if (!t->ctl[slot].deferred) {
                t->ctl[slot].deferred = true;
                t->deferred[t->n_deferred++] = slot;
            }
            continue;
        }
        plan(t, slot, now_ns, ask);
        return true;
    }
    return false;
}

uint64_t tp_lease_grant(struct tp_lease_table *t, uint32_t slot, uint64_t sent_ns, uint64_t now_ns,
                        uint32_t granted, uint64_t remaining, uint64_t full_ms, uint64_t next_ms)
{
    struct pool *p = &t->pools[slot];
    struct pool_ctl *c = &t->ctl[slot];
    uint64_t now_u = now_ns >> UNIT_SHIFT, exp = (sent_ns + t->ttl_ns) >> UNIT_SHIFT;

    if (granted > TP_LEASE_MAX)
        granted = TP_LEASE_MAX;
    if (granted && exp > now_u) {
        bool placed = false;
        /* an empty or expired word takes the lease */
        for (unsigned k = 0; k < TP_LEASE_WORDS && !placed; k++) {
            uint64_t w = atomic_load_explicit(&p->w[k], memory_order_acquire);
            while (w_tokens(w) == 0 || now_u >= w_exp(w)) {
                if (atomic_compare_exchange_weak_explicit(&p->w[k], &w, exp << TOK_BITS | granted,
                                                          memory_order_acq_rel, memory_order_acquire)) {
                    atomic_fetch_add_explicit(&t->n_expired, w_tokens(w), memory_order_relaxed);
                    placed = true;
                    break;
                }
            }
        }
        /* all live: merge into the one that expires last, at the earlier expiry */
        for (int last = -1; !placed;) {
            uint64_t w;
            for (unsigned k = 0; k < TP_LEASE_WORDS; k++) {
                w = atomic_load_explicit(&p->w[k], memory_order_relaxed);
                if (last < 0 || w_exp(w) > w_exp(atomic_load_explicit(&p->w[last], memory_order_relaxed)))
                    last = (int)k;
            }
            w = atomic_load_explicit(&p->w[last], memory_order_acquire);
            if (w_tokens(w) == 0 || now_u >= w_exp(w)) {
                last = -1;
                continue; /* it ran out meanwhile: start over (the first loop would take it) */
            }
            uint64_t e = w_exp(w) < exp ? w_exp(w) : exp;
            uint64_t n = w_tokens(w) + granted;
            if (n > TP_LEASE_MAX)
                n = TP_LEASE_MAX;
            placed = atomic_compare_exchange_strong_explicit(&p->w[last], &w, e << TOK_BITS | n,
                                                             memory_order_acq_rel, memory_order_relaxed);
            last = -1;
        }
        atomic_fetch_add_explicit(&t->n_granted, granted, memory_order_relaxed);
    }
    c->held += granted;
    if (granted < c->want) {
        /* the bucket ran short: ask again when the store said a token is
         * there, and not more often than eight times per token life */
        uint64_t wait = next_ms * 1000000ull, min = t->ttl_ns / 8;
        c->not_before_ns = now_ns + (wait > min ? wait : min);
        /* until the next ask the pool is dry: waiting longer than the store's
         * timeout would end in on_failure, not in a lease */
        atomic_store_explicit(&t->dry[slot], c->not_before_ns, memory_order_relaxed);
    } else {
        c->not_before_ns = 0;
        atomic_store_explicit(&t->dry[slot], 0, memory_order_relaxed);
    }
    atomic_store_explicit(&p->g_remaining, remaining > UINT32_MAX ? UINT32_MAX : (uint32_t)remaining,
                          memory_order_relaxed);
    atomic_store_explicit(&p->g_reset_s, (uint32_t)((full_ms + 999) / 1000), memory_order_relaxed);
    atomic_store_explicit(&p->g_retry_s, next_ms ? (uint32_t)((next_ms + 999) / 1000) : 1,
                          memory_order_relaxed);
    atomic_store_explicit(&p->asked, 0, memory_order_release);
    return waiters_take(t, slot);
}

uint64_t tp_lease_failed(struct tp_lease_table *t, uint32_t slot)
{
    atomic_store_explicit(&t->pools[slot].asked, 0, memory_order_release);
    return waiters_take(t, slot);
}
