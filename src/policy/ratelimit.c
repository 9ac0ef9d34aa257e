/* SPDX-License-Identifier: MIT */
/*
 * Token buckets on one 64-bit word each (see include/turnpike/ratelimit.h).
 * Called by every shard per request that matched a rate-limited route
 * ([any]); created, updated and destroyed by the control thread.
 *
 * The encoding. A limiter keeps a "token clock" V(t): the number of whole
 * tokens its rate has produced up to monotonic time t,
 *
 *     V(t) = v0 + floor((t - t0) * tokens / period_ns)
 *
 * which only depends on the limiter's parameters, not on any bucket. A bucket
 * is then a single word z, the value of the token clock at which the bucket
 * was (or would have been) empty. Its level at time t is
 *
 *     level = min(burst, V(t) - z)
 *
 * so the word packs the token count and the refill timestamp together: the
 * "timestamp" is z, measured in tokens instead of nanoseconds, and refilling
 * is implicit (V grows). Taking a token is z' = max(z, V - burst) + 1, one CAS.
 * This is GCRA's "theoretical arrival time" expressed in tokens rather than in
 * time, which is what lets a reload change the rate without touching the
 * buckets: V is continuous across the change (t0, v0 are rebased), so every
 * bucket keeps its level and only refills at the new speed from then on.
 *
 * Exactness. z never decreases and every admission raises it by at least one,
 * while an admission at V requires z' <= V and sets z' >= V - burst + 1. Thus
 * the admissions whose clock readings lie in [a, b] are at most
 * burst + V(b) - V(a) <= burst + rate * (b - a) + 1, whatever the number of
 * threads and however their CASes interleave. V is computed exactly (a
 * 128-bit reciprocal rounded up, see token_clock()), so the only rounding is
 * the floor of V: at most one token.
 *
 * Time and wrap. All arithmetic on V and z is modulo 2^64 and reads the
 * difference V - z as signed. V grows by the rate, so the difference of an
 * idle bucket stays correct while it is below 3 * 2^62 tokens: over 400
 * years at 10^9 tokens per second. There is no limit on uptime, since only
 * differences matter. A clock reading older than a bucket's state (now going
 * backwards, or a shard whose cached time lags another's) gives V < z: the
 * bucket reads as empty and nothing is written, so time going backwards can
 * only deny, never admit more; a repeated reading (same ns) adds nothing.
 * A huge gap simply reads as a full bucket.
 *
 * The per-key table: open addressing over slots {key hash, z}, linear probing
 * of at most TP_RL_PROBE slots from hash & mask. A slot is claimed by a CAS of
 * its key word from 0 (empty). Slots never become empty again; a slot whose
 * bucket is full again (its key was idle long enough to refill) is "stale" and
 * may be taken over by another key with a CAS on the key word, and the full
 * bucket it holds is exactly what a new key must start with. When neither the
 * key nor an empty or stale slot is found, the request is decided by the
 * limiter's shared overflow bucket (same rate and burst): memory never grows,
 * and the requests that could not be tracked together get no more than one
 * key's allowance, so flooding the table with keys cannot switch the limit off.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/ratelimit.h>

#define CACHELINE 64
#define NS_PER_S  1000000000ull
#define NS_PER_MS 1000000ull

/* A difference V - z below -2^62 cannot come from clock skew: it is an idle
 * bucket whose difference wrapped past 2^63, i.e. a full one. */
#define WRAP_GUARD (1ll << 62)
/* Initial z of every bucket: full "since long ago" (V starts near 0). */
#define Z_INIT ((uint64_t)0 - (1ull << 62))
/* Keeps burst + any plausible level far from the signed limits above. */
#define MAX_BURST (1ull << 60)
#define MIN_SLOTS 16u

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* The parameters a take needs, as one consistent snapshot. */
struct rl_params {
    uint64_t t0;        /* [ns] when the current rate took effect */
    uint64_t v0;        /* [tokens] token clock at t0 */
    uint64_t ipart;     /* whole tokens per ns (0 below 10^9/s) */
    uint64_t qhi, qlo;  /* ceil(fractional tokens per ns * 2^128) */
    uint64_t burst;     /* [tokens] bucket size */
    uint64_t tokens;    /* the rate as configured: tokens ... */
    uint64_t period_ns; /* ... per period_ns, for the exact inverse */
};

struct rl_slot {
    _Atomic uint64_t key; /* XXH3 of the key; 0 = never used */
    _Atomic uint64_t z;   /* the bucket word */
};

struct tp_ratelimit {
    /* Read-mostly: the parameters, written only by tp_ratelimit_update()
     * under the sequence lock <seq> (odd while a write is in progress). */
    _Alignas(CACHELINE) _Atomic uint32_t seq;
    _Atomic uint64_t p_t0, p_v0, p_ipart, p_qhi, p_qlo, p_burst, p_tokens, p_period;
    bool keyed;
    uint64_t mask; /* slots - 1 */
    struct rl_slot *slots;

    /* The route bucket (key: route), or the overflow bucket of a keyed
     * limiter. Written by every take, so it has its own line. */
    _Alignas(CACHELINE) _Atomic uint64_t shared_z;

    /* Counters, written only on the slow paths. */
    _Alignas(CACHELINE) _Atomic uint64_t n_claimed;
    _Atomic uint64_t n_reclaimed;
    _Atomic uint64_t n_full;
};

/* ---- parameters ---- */

static int params_compute(const struct tp_cfg_rate_limit *cfg, struct rl_params *p)
{
    uint64_t rem, q1, q0, r1, r0;
    unsigned __int128 n;

    if (!cfg || cfg->tokens == 0 || cfg->period_ms == 0 || cfg->burst == 0 || cfg->burst > MAX_BURST ||
        cfg->period_ms > UINT64_MAX / NS_PER_MS)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->tokens = cfg->tokens;
    p->period_ns = cfg->period_ms * NS_PER_MS;
    p->burst = cfg->burst;

    /* rate = ipart + rem / period_ns tokens per ns. The fraction becomes a
     * 128-bit reciprocal Q = ceil(rem * 2^128 / period_ns) by long division in
     * two 64-bit steps (rem < period_ns, so each quotient fits in 64 bits).
     * Rounding Q up makes floor(d * Q / 2^128) equal floor(d * rem / period_ns)
     * for every d < 2^64: the excess d * (Q - exact) / 2^128 is below 2^-64,
     * while a non-integer d * rem / period_ns is at least 1 / period_ns
     * (>= 2^-64) short of the next integer. */
    p->ipart = p->tokens / p->period_ns;
    rem = p->tokens % p->period_ns;
    n = (unsigned __int128)rem << 64;
    q1 = (uint64_t)(n / p->period_ns);
    r1 = (uint64_t)(n % p->period_ns);
    n = (unsigned __int128)r1 << 64;
    q0 = (uint64_t)(n / p->period_ns);
    r0 = (uint64_t)(n % p->period_ns);
    if (r0 != 0 && ++q0 == 0)
        q1++;
    p->qhi = q1;
    p->qlo = q0;
    return 0;
}

/* Reader side of the sequence lock. Acquire loads keep the second read of
 * <seq> after the field reads, and any field value written by an update makes
 * that second read see the update's odd sequence number (no fences, so TSan
 * understands it). Updates are rare (reloads), so the loop practically never
 * runs twice. */
static void params_load(const struct tp_ratelimit *rl, struct rl_params *p)
{
    for (;;) {
        uint32_t s1 = atomic_load_explicit(&rl->seq, memory_order_acquire);

        p->t0 = atomic_load_explicit(&rl->p_t0, memory_order_acquire);
        p->v0 = atomic_load_explicit(&rl->p_v0, memory_order_acquire);
        p->ipart = atomic_load_explicit(&rl->p_ipart, memory_order_acquire);
        p->qhi = atomic_load_explicit(&rl->p_qhi, memory_order_acquire);
        p->qlo = atomic_load_explicit(&rl->p_qlo, memory_order_acquire);
        p->burst = atomic_load_explicit(&rl->p_burst, memory_order_acquire);
        p->tokens = atomic_load_explicit(&rl->p_tokens, memory_order_acquire);
        p->period_ns = atomic_load_explicit(&rl->p_period, memory_order_acquire);
        if (!(s1 & 1) && s1 == atomic_load_explicit(&rl->seq, memory_order_relaxed))
            return;
        cpu_relax();
    }
}

/* Writer side: odd sequence, release stores of the fields (so a reader that
 * sees one of them also sees the odd sequence), even sequence. [control] */
static void params_store(struct tp_ratelimit *rl, const struct rl_params *p)
{
    uint32_t s = atomic_load_explicit(&rl->seq, memory_order_relaxed);

    atomic_store_explicit(&rl->seq, s + 1, memory_order_relaxed);
    atomic_store_explicit(&rl->p_t0, p->t0, memory_order_release);
    atomic_store_explicit(&rl->p_v0, p->v0, memory_order_release);
    atomic_store_explicit(&rl->p_ipart, p->ipart, memory_order_release);
    atomic_store_explicit(&rl->p_qhi, p->qhi, memory_order_release);
    atomic_store_explicit(&rl->p_qlo, p->qlo, memory_order_release);
    atomic_store_explicit(&rl->p_burst, p->burst, memory_order_release);
    atomic_store_explicit(&rl->p_tokens, p->tokens, memory_order_release);
    atomic_store_explicit(&rl->p_period, p->period_ns, memory_order_release);
    atomic_store_explicit(&rl->seq, s + 2, memory_order_release);
}

/* ---- bucket arithmetic ---- */

/* V(now): v0 + ipart * d + floor(d * Q / 2^128), d = now - t0 (0 if before).
 * The 64x128 product is taken as two 64x64 products; the nested floor is
 * exact because d * qhi is an integer. Everything wraps modulo 2^64. */
static inline uint64_t token_clock(const struct rl_params *p, uint64_t now)
{
    uint64_t d = now > p->t0 ? now - p->t0 : 0;
    unsigned __int128 lo = (unsigned __int128)d * p->qlo;
    unsigned __int128 hi = (unsigned __int128)d * p->qhi + (uint64_t)(lo >> 64);

    return p->v0 + p->ipart * d + (uint64_t)(hi >> 64);
}

/* Whole tokens in a bucket with word <z> when the token clock reads <v>. */
static inline uint64_t level_of(uint64_t v, uint64_t z, uint64_t burst)
{
    int64_t s = (int64_t)(v - z);

    if (s >= 0)
        return (uint64_t)s < burst ? (uint64_t)s : burst;
    if (s < -WRAP_GUARD)
        return burst; /* idle so long that the difference wrapped: full */
    return 0;         /* a clock reading older than the bucket's state */
}

/* Takes one token from the bucket word <zw> at token clock <v>. Stores the
 * word as left by this call in *<z_after>. */
static inline bool bucket_take(_Atomic uint64_t *zw, uint64_t v, uint64_t burst, uint64_t *z_after)
{
    uint64_t z = atomic_load_explicit(zw, memory_order_relaxed);

    for (;;) {
        uint64_t lvl = level_of(v, z, burst);
        uint64_t nz;

        if (lvl == 0) {
            *z_after = z;
            return false;
        }
        /* = max(z, v - burst) + 1: a level above burst is clamped first */
        nz = v - lvl + 1;
        /* Relaxed is enough: the word is the whole state, and the CAS alone
         * orders the takes on it. A failed CAS reloads z and re-decides. */
        if (atomic_compare_exchange_weak_explicit(zw, &z, nz, memory_order_relaxed, memory_order_relaxed)) {
            *z_after = nz;
            return true;
        }
    }
}

/* Whole seconds, rounded up, from <now> until the token clock reaches
 * <target> (> V(now)). Inverse of token_clock(): the first d with
 * floor(d * tokens / period_ns) >= target - v0 is ceil((target - v0) *
 * period_ns / tokens), exactly, since V is exact. */
static uint64_t secs_until(const struct rl_params *p, uint64_t target, uint64_t now)
{
    unsigned __int128 num = (unsigned __int128)(target - p->v0) * p->period_ns;
    unsigned __int128 d = num / p->tokens + (num % p->tokens != 0);
    uint64_t t, wait;

    if (d > (unsigned __int128)(UINT64_MAX - p->t0))
        return UINT64_MAX / NS_PER_S; /* beyond the clock's range */
    t = p->t0 + (uint64_t)d;
    if (t <= now)
        return 0;
    wait = t - now;
    return wait / NS_PER_S + (wait % NS_PER_S != 0);
}

static void fill_result(const struct rl_params *p, uint64_t v, uint64_t z, uint64_t now,
                        struct tp_rl_result *out)
{
    uint64_t lvl = level_of(v, z, p->burst);

    out->limit = p->burst;
    out->remaining = lvl;
    /* lvl < burst means z is not in the wrapped region, so z + k > v */
    out->reset_s = lvl >= p->burst ? 0 : secs_until(p, z + p->burst, now);
    if (lvl >= 1) {
        out->retry_after_s = 0;
    } else {
        out->retry_after_s = secs_until(p, z + 1, now);
        if (out->retry_after_s == 0)
            out->retry_after_s = 1;
    }
}

/* ---- per-key table ---- */

/* Finds or claims the slot of key hash <h> and returns its bucket word, or
 * the overflow bucket when the probe window holds neither <h>, an empty slot
 * nor a stale one. See the file comment for the invariants; the races left
 * are benign: two threads inserting the same new key may give it two slots
 * (the later one in probe order goes stale and is reclaimed; at most one token
 * per racing thread is lost track of), and a key whose full bucket is taken
 * over while one of its takes is in flight may charge that token to the new
 * key. */
static _Atomic uint64_t *slot_lookup(struct tp_ratelimit *rl, uint64_t h, uint64_t v, uint64_t burst)
{
    if (h == 0)
        h = 1; /* 0 marks an empty slot */

    for (int pass = 0; pass < 2; pass++) {
        struct rl_slot *stale = NULL;
        uint64_t stale_key = 0;
        size_t i = (size_t)(h & rl->mask);

        for (unsigned p = 0; p < TP_RL_PROBE; p++, i = (i + 1) & rl->mask) {
            struct rl_slot *s = &rl->slots[i];
            uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);

            if (k == h)
                return &s->z;
            if (k == 0) {
                /* Slots never empty again, so <h> is not further on. Prefer
                 * an earlier stale slot: it keeps probe chains short. */
                if (stale)
                    break;
                if (atomic_compare_exchange_strong_explicit(&s->key, &k, h, memory_order_relaxed,
                                                            memory_order_relaxed)) {
                    atomic_fetch_add_explicit(&rl->n_claimed, 1, memory_order_relaxed);
                    return &s->z; /* a never-used bucket is full (Z_INIT) */
                }
                if (k == h)
                    return &s->z; /* the same key, inserted by another thread */
                /* another key took it: judge it as an occupied slot */
            }
            if (!stale && level_of(v, atomic_load_explicit(&s->z, memory_order_relaxed), burst) >= burst) {
                stale = s;
                stale_key = k;
            }
        }
        if (!stale)
            break;
        /* The stale bucket is full, which is the state a new key starts in,
         * so taking over the key word is all there is to do. */
        if (atomic_compare_exchange_strong_explicit(&stale->key, &stale_key, h, memory_order_relaxed,
                                                    memory_order_relaxed)) {
            atomic_fetch_add_explicit(&rl->n_reclaimed, 1, memory_order_relaxed);
            return &stale->z;
        }
        if (stale_key == h)
            return &stale->z;
        /* lost a race for the stale slot: look once more */
    }
    atomic_fetch_add_explicit(&rl->n_full, 1, memory_order_relaxed);
    return &rl->shared_z;
}

/* Read-only lookup for peek: the bucket word of <h>, or NULL if it has none. */
static const _Atomic uint64_t *slot_find(const struct tp_ratelimit *rl, uint64_t h)
{
    size_t i;

    if (h == 0)
        h = 1;
    i = (size_t)(h & rl->mask);
    for (unsigned p = 0; p < TP_RL_PROBE; p++, i = (i + 1) & rl->mask) {
        uint64_t k = atomic_load_explicit(&rl->slots[i].key, memory_order_relaxed);

        if (k == h)
            return &rl->slots[i].z;
        if (k == 0)
            break;
    }
    return NULL;
}

/* ---- public ---- */

static bool cfg_keyed(const struct tp_cfg_rate_limit *cfg)
{
    return cfg->key.kind != TP_KEY_ROUTE;
}

struct tp_ratelimit *tp_ratelimit_create(const struct tp_cfg_rate_limit *cfg, size_t key_slots, int *err)
{
    struct tp_ratelimit *rl = NULL;
    struct rl_params p;
    size_t slots = 0;
    int r;

    r = params_compute(cfg, &p);
    if (r)
        goto fail;
    if (cfg_keyed(cfg)) {
        if (key_slots == 0)
            key_slots = TP_RL_DEFAULT_SLOTS;
        if (key_slots > TP_RL_MAX_SLOTS) {
            r = -EINVAL;
            goto fail;
        }
        slots = MIN_SLOTS;
        while (slots < key_slots)
            slots <<= 1;
    }

    r = -ENOMEM;
    rl = aligned_alloc(CACHELINE, sizeof(*rl));
    if (!rl)
        goto fail;
    memset(rl, 0, sizeof(*rl));
    atomic_init(&rl->seq, 0);
    atomic_init(&rl->shared_z, Z_INIT);
    atomic_init(&rl->n_claimed, 0);
    atomic_init(&rl->n_reclaimed, 0);
    atomic_init(&rl->n_full, 0);
    /* The token clock starts at V(0) = 0: t0 = 0 means "since boot" for
     * CLOCK_MONOTONIC, so creation needs no clock reading. */
    p.t0 = 0;
    p.v0 = 0;
    params_store(rl, &p);

    rl->keyed = cfg_keyed(cfg);
    if (rl->keyed) {
        rl->mask = slots - 1;
        rl->slots = aligned_alloc(CACHELINE, slots * sizeof(*rl->slots));
        if (!rl->slots)
            goto fail;
        for (size_t i = 0; i < slots; i++) {
            atomic_init(&rl->slots[i].key, 0);
            atomic_init(&rl->slots[i].z, Z_INIT);
        }
    }
    return rl;

fail:
    free(rl);
    if (err)
        *err = r;
    return NULL;
}

void tp_ratelimit_destroy(struct tp_ratelimit *rl)
{
    if (!rl)
        return;
    free(rl->slots);
    free(rl);
}

int tp_ratelimit_update(struct tp_ratelimit *rl, const struct tp_cfg_rate_limit *cfg, uint64_t now_ns)
{
    struct rl_params np, op;
    int r = params_compute(cfg, &np);

    if (r)
        return r;
    if (cfg_keyed(cfg) != rl->keyed)
        return -EINVAL;
    params_load(rl, &op);
    if (np.tokens == op.tokens && np.period_ns == op.period_ns) {
        np.t0 = op.t0;
        np.v0 = op.v0;
    } else {
        /* Rebase so that V is continuous at now_ns: buckets keep their
         * level. The fraction of a token produced so far is dropped (at most
         * one token less, never more). */
        np.t0 = now_ns > op.t0 ? now_ns : op.t0;
        np.v0 = token_clock(&op, np.t0);
    }
    params_store(rl, &np);
    return 0;
}

bool tp_ratelimit_take(struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns, struct tp_rl_result *out)
{
    struct rl_params p;
    _Atomic uint64_t *zw;
    uint64_t v, z_after;
    bool ok;

    params_load(rl, &p);
    v = token_clock(&p, now_ns);
    zw = rl->keyed ? slot_lookup(rl, key_hash, v, p.burst) : &rl->shared_z;
    ok = bucket_take(zw, v, p.burst, &z_after);
    if (out)
        fill_result(&p, v, z_after, now_ns, out);
    return ok;
}

void tp_ratelimit_peek(const struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns,
                       struct tp_rl_result *out)
{
    struct rl_params p;
    const _Atomic uint64_t *zw = &rl->shared_z;
    uint64_t v;

    params_load(rl, &p);
    v = token_clock(&p, now_ns);
    if (rl->keyed) {
        zw = slot_find(rl, key_hash);
        if (!zw) {
            /* no bucket yet: a new key starts full */
            fill_result(&p, v, v - p.burst, now_ns, out);
            return;
        }
    }
    fill_result(&p, v, atomic_load_explicit(zw, memory_order_relaxed), now_ns, out);
}

bool tp_ratelimit_keyed(const struct tp_ratelimit *rl)
{
    return rl->keyed;
}

void tp_ratelimit_stats(const struct tp_ratelimit *rl, struct tp_rl_stats *out)
{
    out->slots = rl->keyed ? rl->mask + 1 : 0;
    out->slots_used = atomic_load_explicit(&rl->n_claimed, memory_order_relaxed);
    out->reclaimed = atomic_load_explicit(&rl->n_reclaimed, memory_order_relaxed);
    out->table_full = atomic_load_explicit(&rl->n_full, memory_order_relaxed);
}

uint64_t tp_ratelimit_table_full_total(const struct tp_ratelimit *rl)
{
    return atomic_load_explicit(&rl->n_full, memory_order_relaxed);
}
