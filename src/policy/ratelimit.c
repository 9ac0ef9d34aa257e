/* SPDX-License-Identifier: MIT */
/*
 * Token buckets on one 64-bit word each (see include/turnpike/ratelimit.h).
 * Called by every shard per request that matched a rate-limited route
 * ([any]); created, updated and destroyed by the control thread.
 *
 * The encoding. A limiter keeps a "token clock" X(t): how much its rate has
 * produced up to monotonic time t, counted in units of 1/S token,
 *
 *     X(t) = x0 + floor((t - t0) * tokens * S / period_ns)
 *
 * which only depends on the limiter's parameters, not on any bucket. A bucket
 * is then a single value z, the clock reading at which the bucket was (or
 * would have been) empty. Its level at time t, in units, is
 *
 *     L = min(burst * S, X(t) - z)        whole tokens: floor(L / S)
 *
 * so the word packs the token count and the refill timestamp together: the
 * "timestamp" is z, measured in token units instead of nanoseconds, and
 * refilling is implicit (X grows). Taking a token is z' = X - L + S, one CAS.
 * This is GCRA's "theoretical arrival time" expressed in tokens rather than in
 * time, which is what lets a reload change the rate without touching the
 * buckets: X is continuous across the change (t0, x0 are rebased), so every
 * bucket keeps its level and only refills at the new speed from then on.
 *
 * Why units of 1/S token and not whole tokens. A whole-token clock ticks at
 * instants fixed by t0, not by the bucket: the part of the next token already
 * produced when a full bucket was emptied stayed in it, so a 1/h bucket
 * emptied 50 minutes after a tick refilled 10 minutes later. With S units per
 * token, a take from a full bucket sets z' = X - (burst - 1) * S: the bucket
 * holds exactly burst - 1 tokens and its next token comes one full token
 * interval later (less at most one unit, below 2 ns). A partly refilled
 * bucket keeps the fraction it has accrued: L is not rounded.
 *
 * Choosing S. S = 2^s, the largest with rate * S <= 2^30 units per second and
 * burst * S <= 2^60 (s = 0 for rates above 2^30 per second, or huge bursts).
 * 2^30 units per second is a resolution of about 1 ns, as fine as the clock,
 * while keeping the clock slow enough for the wrap guard below. Since S
 * depends on the rate, a reload may change it; see "Rescaling".
 *
 * Exactness. z never decreases and every admission raises it by at least S,
 * while an admission at X requires z' <= X and sets z' >= X - burst * S + S.
 * Thus the admissions whose clock readings lie in [a, b] number at most
 * burst + (X(b) - X(a)) / S <= burst + rate * (b - a) + 1 / S, whatever the
 * number of threads and however their CASes interleave. X is computed exactly
 * (a 128-bit reciprocal rounded up, see token_clock()), so the only rounding
 * is the floor of X: one unit, 1/S token.
 *
 * The word. Bit 0 is the scale tag (see "Rescaling"); bits 63..1 hold z modulo
 * 2^63. Levels are differences X - z taken modulo 2^63 and read as signed
 * 63-bit numbers. A level in [-2^62, -2^61) cannot come from clock skew: it
 * is an idle bucket whose difference wrapped, i.e. a full one. A stored level
 * never exceeds 2^60 (burst * S), so an idle bucket reads as full until its
 * difference passes 3 * 2^61: (3 * 2^61 - 2^60) / 2^30 s, over 170 years at
 * any rate up to 2^30 (1.07 * 10^9) tokens per second, and 5 * 2^60 / rate
 * seconds above that (67 days at 10^12 per second). There is no limit on
 * uptime for used buckets, since only differences matter; never-used ones
 * start 2^60 units "full", good for the same 170 years after boot. A clock
 * reading older than a bucket's state (now going backwards, or a shard whose
 * cached time lags another's) gives a negative level: the bucket reads as
 * empty and nothing is written, so time going backwards can only deny, never
 * admit more; a repeated reading (same ns) adds nothing.
 *
 * Rescaling. A reload that changes S cannot keep bucket words as they are:
 * their units change. tp_ratelimit_update() then publishes the new parameters
 * with the other value of the scale tag plus a conversion (the old and the
 * new clock at the reload instant, and the shift between the scales), and
 * converts every word of the old tag with a CAS (convert()), from the control
 * thread, before it returns. Meanwhile a take that meets a word of the other
 * tag converts it itself, in register, and writes it back with its new tag;
 * both agree, since the conversion depends only on the old word. Old-tag words
 * therefore exist only while one rescaling update runs, and the next update
 * cannot start before that one ends (updates are not concurrent). A take
 * whose parameters are older than the word it loaded notices it by the tag or
 * by the sequence number and starts over with fresh parameters; a take with
 * stale parameters cannot overwrite a converted word, since the CAS compares
 * the tag too. Scaling up is exact; scaling down rounds levels down (less
 * than one new unit). The new clock also jumps by 2^59, so that converting a
 * word back and forth does not give it its old value again (ABA with a take
 * stalled across two rescalings).
 *
 * The per-key table: open addressing over slots {key hash, word}, linear
 * probing of at most TP_RL_PROBE slots from hash & mask. A slot is claimed by a
 * CAS of its key word from 0 (empty). Slots never become empty again; a slot
 * whose bucket is full again (its key was idle long enough to refill) is
 * "stale" and may be taken over by another key with a CAS on the key word, and
 * the full bucket it holds is exactly what a new key must start with. When
 * neither the key nor an empty or stale slot is found, the request is decided
 * by the limiter's shared overflow bucket (same rate and burst): memory never
 * grows, and the requests that could not be tracked together get no more than
 * one key's allowance, so flooding the table with keys cannot switch the limit
 * off.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/ratelimit.h>

#define CACHELINE 64
#define NS_PER_S  1000000000ull
#define NS_PER_MS 1000000ull

/* Clock units per second aimed at (rate * S <= this). */
#define UNITS_PER_S_LOG2 30
/* Largest level a word is given: burst * S never exceeds it, and conversions
 * and new buckets clamp to it, far from the wrap guard below. */
#define LEVEL_MAX (1ll << 60)
/* A level below -2^61 cannot come from clock skew: it is an idle bucket whose
 * difference wrapped past 2^62, i.e. a full one. */
#define WRAP_GUARD (1ll << 61)
/* Added to the clock when the scale changes (see "Rescaling"). */
#define RESCALE_JUMP (1ull << 59)
/* Initial word of every bucket: level LEVEL_MAX at X = 0, tag 0. */
#define WORD_INIT ((0 - (uint64_t)LEVEL_MAX) << 1)
/* Keeps burst and any level far from the signed limits above. */
#define MAX_BURST (1ull << 60)
#define MIN_SLOTS 16u

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

typedef unsigned __int128 u128;

/* The parameters a take needs, as one consistent snapshot. */
struct rl_params {
    uint32_t seq;       /* sequence number the snapshot was read under */
    uint64_t t0;        /* [ns] when the current rate took effect */
    uint64_t x0;        /* [units] token clock at t0 */
    uint64_t ipart;     /* whole units per ns */
    uint64_t qhi, qlo;  /* ceil(fractional units per ns * 2^128) */
    uint64_t burst;     /* [tokens] bucket size */
    uint64_t tokens;    /* the rate as configured: tokens ... */
    uint64_t period_ns; /* ... per period_ns, for the exact inverse */
    unsigned shift;     /* s: S = 2^s units per token */
    unsigned gen;       /* number of rescalings so far; the tag is gen & 1 */
};

/* The conversion of the last rescaling: a level L (old units) at the old
 * clock reading from_x becomes L scaled by 2^k (new units) at to_x. */
struct rl_conv {
    uint64_t from_x, to_x;
    int k;
};

struct rl_slot {
    _Atomic uint64_t key; /* XXH3 of the key; 0 = never used */
    _Atomic uint64_t w;   /* the bucket word */
};

struct tp_ratelimit {
    /* Read-mostly: the parameters, written only by tp_ratelimit_update()
     * under the sequence lock <seq> (odd while a write is in progress). */
    _Alignas(CACHELINE) _Atomic uint32_t seq;
    _Atomic uint64_t p_t0, p_x0, p_ipart, p_qhi, p_qlo, p_burst, p_tokens, p_period;
    _Atomic uint64_t p_scale;           /* gen << 8 | shift */
    _Atomic uint64_t c_from, c_to, c_k; /* struct rl_conv; read only on a tag mismatch */
    bool keyed;
    uint64_t mask; /* slots - 1 */
    struct rl_slot *slots;

    /* The route bucket (key: route), or the overflow bucket of a keyed
     * limiter. Written by every take, so it has its own line. */
    _Alignas(CACHELINE) _Atomic uint64_t shared_w;

    /* Counters, written only on the slow paths. */
    _Alignas(CACHELINE) _Atomic uint64_t n_claimed;
    _Atomic uint64_t n_reclaimed;
    _Atomic uint64_t n_full;
};

/* ---- parameters ---- */

static int params_compute(const struct tp_cfg_rate_limit *cfg, struct rl_params *p)
{
    uint64_t rem, q1, q0, r1, r0;
    u128 n, a, b;
    unsigned s = 0;

    if (!cfg || cfg->tokens == 0 || cfg->period_ms == 0 || cfg->burst == 0 || cfg->burst > MAX_BURST ||
        cfg->period_ms > UINT64_MAX / NS_PER_MS)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->tokens = cfg->tokens;
    p->period_ns = cfg->period_ms * NS_PER_MS;
    p->burst = cfg->burst;

    /* S = 2^s: grow s while rate * 2^(s+1) <= 2^30 per second, i.e.
     * tokens * 10^9 * 2^(s+1) <= 2^30 * period_ns, and burst * 2^(s+1) <= 2^60.
     * Both sides stay below 2^95 in 128 bits; shifting the right-hand side
     * down avoids overflowing the left. */
    a = (u128)p->tokens * NS_PER_S;
    b = (u128)p->period_ns << UNITS_PER_S_LOG2;
    while (s < 62 && a <= (b >> (s + 1)) && p->burst <= ((uint64_t)LEVEL_MAX >> (s + 1)))
        s++;
    p->shift = s;

    /* The clock speed is tokens * 2^s / period_ns units per ns = ipart +
     * rem / period_ns; ipart is at most 1 when s > 0 (rate * S <= 2^30/s)
     * and tokens / period_ns when s = 0, so it fits. The fraction becomes a
     * 128-bit reciprocal Q = ceil(rem * 2^128 / period_ns) by long division in
     * two 64-bit steps (rem < period_ns, so each quotient fits in 64 bits).
     * Rounding Q up makes floor(d * Q / 2^128) equal floor(d * rem / period_ns)
     * for every d < 2^64: the excess d * (Q - exact) / 2^128 is below 2^-64,
     * while a non-integer d * rem / period_ns is at least 1 / period_ns
     * (>= 2^-64) short of the next integer. */
    n = (u128)p->tokens << s;
    p->ipart = (uint64_t)(n / p->period_ns);
    rem = (uint64_t)(n % p->period_ns);
    n = (u128)rem << 64;
    q1 = (uint64_t)(n / p->period_ns);
    r1 = (uint64_t)(n % p->period_ns);
    n = (u128)r1 << 64;
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
        uint64_t sc;

        p->t0 = atomic_load_explicit(&rl->p_t0, memory_order_acquire);
        p->x0 = atomic_load_explicit(&rl->p_x0, memory_order_acquire);
        p->ipart = atomic_load_explicit(&rl->p_ipart, memory_order_acquire);
        p->qhi = atomic_load_explicit(&rl->p_qhi, memory_order_acquire);
        p->qlo = atomic_load_explicit(&rl->p_qlo, memory_order_acquire);
        p->burst = atomic_load_explicit(&rl->p_burst, memory_order_acquire);
        p->tokens = atomic_load_explicit(&rl->p_tokens, memory_order_acquire);
        p->period_ns = atomic_load_explicit(&rl->p_period, memory_order_acquire);
        sc = atomic_load_explicit(&rl->p_scale, memory_order_acquire);
        if (!(s1 & 1) && s1 == atomic_load_explicit(&rl->seq, memory_order_relaxed)) {
            p->seq = s1;
            p->shift = (unsigned)(sc & 0xff);
            p->gen = (unsigned)(sc >> 8);
            return;
        }
        cpu_relax();
    }
}

/* The conversion published with <p>. Returns false when the parameters have
 * changed since <p> was read (the caller then starts over). */
static bool conv_load(const struct tp_ratelimit *rl, const struct rl_params *p, struct rl_conv *c)
{
    c->from_x = atomic_load_explicit(&rl->c_from, memory_order_acquire);
    c->to_x = atomic_load_explicit(&rl->c_to, memory_order_acquire);
    c->k = (int)(int64_t)atomic_load_explicit(&rl->c_k, memory_order_acquire);
    return atomic_load_explicit(&rl->seq, memory_order_relaxed) == p->seq;
}

/* Writer side: odd sequence, release stores of the fields (so a reader that
 * sees one of them also sees the odd sequence), even sequence. [control] */
static void params_store(struct tp_ratelimit *rl, const struct rl_params *p, const struct rl_conv *c)
{
    uint32_t s = atomic_load_explicit(&rl->seq, memory_order_relaxed);

    atomic_store_explicit(&rl->seq, s + 1, memory_order_relaxed);
    atomic_store_explicit(&rl->p_t0, p->t0, memory_order_release);
    atomic_store_explicit(&rl->p_x0, p->x0, memory_order_release);
    atomic_store_explicit(&rl->p_ipart, p->ipart, memory_order_release);
    atomic_store_explicit(&rl->p_qhi, p->qhi, memory_order_release);
    atomic_store_explicit(&rl->p_qlo, p->qlo, memory_order_release);
    atomic_store_explicit(&rl->p_burst, p->burst, memory_order_release);
    atomic_store_explicit(&rl->p_tokens, p->tokens, memory_order_release);
    atomic_store_explicit(&rl->p_period, p->period_ns, memory_order_release);
    atomic_store_explicit(&rl->p_scale, (uint64_t)p->gen << 8 | p->shift, memory_order_release);
    if (c) {
        atomic_store_explicit(&rl->c_from, c->from_x, memory_order_release);
        atomic_store_explicit(&rl->c_to, c->to_x, memory_order_release);
        atomic_store_explicit(&rl->c_k, (uint64_t)(int64_t)c->k, memory_order_release);
    }
    atomic_store_explicit(&rl->seq, s + 2, memory_order_release);
}

/* ---- bucket arithmetic ---- */

static inline uint64_t unit_of(const struct rl_params *p)
{
    return 1ull << p->shift;
}

static inline int64_t burst_units(const struct rl_params *p)
{
    return (int64_t)(p->burst << p->shift);
}

static inline uint64_t tag_of(const struct rl_params *p)
{
    return p->gen & 1u;
}

/* X(now): x0 + ipart * d + floor(d * Q / 2^128), d = now - t0 (0 if before).
 * The 64x128 product is taken as two 64x64 products; the nested floor is
 * exact because d * qhi is an integer. Everything wraps modulo 2^64 (only
 * the low 63 bits are ever used). */
static inline uint64_t token_clock(const struct rl_params *p, uint64_t now)
{
    uint64_t d = now > p->t0 ? now - p->t0 : 0;
    u128 lo = (u128)d * p->qlo;
    u128 hi = (u128)d * p->qhi + (uint64_t)(lo >> 64);

    return p->x0 + p->ipart * d + (uint64_t)(hi >> 64);
}

/* X - z modulo 2^63, as a signed number, for clock <x> and word <w>: both are
 * doubled so that the 64-bit subtraction wraps at 2^63 and the tag drops out;
 * the arithmetic shift halves the result back with its sign. */
static inline int64_t raw_level(uint64_t x, uint64_t w)
{
    return (int64_t)((x << 1) - (w & ~1ull)) >> 1;
}

/* The word of a bucket holding level <lvl> at clock <x>. */
static inline uint64_t make_word(uint64_t x, int64_t lvl, uint64_t tag)
{
    return ((x - (uint64_t)lvl) << 1) | tag;
}

/* Rewrites a word of the previous scale for the current one: its level at the
 * rescaling instant, clamped to [-LEVEL_MAX, LEVEL_MAX] (a wrapped one is
 * full), scaled by 2^k and rounded towards fewer tokens. */
static uint64_t convert(const struct rl_conv *c, uint64_t w, uint64_t tag)
{
    int64_t l = raw_level(c->from_x, w);
    int k = c->k;

    if (l < -WRAP_GUARD || l > LEVEL_MAX)
        l = LEVEL_MAX;
    else if (l < -LEVEL_MAX)
        l = -LEVEL_MAX;
    if (k > 0) {
        int64_t lim = LEVEL_MAX >> k;

        if (l > lim)
            l = LEVEL_MAX;
        else if (l < -lim)
            l = -LEVEL_MAX;
        else
            l = l < 0 ? -((-l) << k) : l << k;
    } else if (k < 0) {
        /* down: floor for a level, ceiling for a debt (a negative level) */
        l = l >= 0 ? l >> -k : -(((-l) + (1ll << -k) - 1) >> -k);
    }
    return make_word(c->to_x, l, tag);
}

/* The word <w> of the previous scale, converted for <p>. Returns false when
 * <p> is outdated (the word may then be of a newer scale). Cold: only seen
 * while a rescaling update runs. */
static __attribute__((noinline, cold)) bool word_adopt(const struct tp_ratelimit *rl,
                                                       const struct rl_params *p, uint64_t *w)
{
    struct rl_conv c;

    /* With current parameters, a word of the other tag can only be one the
     * running rescaling has not converted yet. */
    if (!conv_load(rl, p, &c))
        return false;
    *w = convert(&c, *w, tag_of(p));
    return true;
}

/* Level in units, at most burst * S, of a bucket with word <w> at clock <x>
 * under <p>; a word of the previous scale is converted on the fly. Returns
 * false when <p> is outdated. */
static inline bool word_level(const struct tp_ratelimit *rl, const struct rl_params *p, uint64_t x,
                              uint64_t w, int64_t *out)
{
    int64_t l, bu = burst_units(p);

    if (__builtin_expect((w & 1) != tag_of(p), 0) && !word_adopt(rl, p, &w))
        return false;
    l = raw_level(x, w);
    if (l < -WRAP_GUARD)
        l = bu; /* idle so long that the difference wrapped: full */
    *out = l < bu ? l : bu;
    return true;
}

/* Takes one token from the bucket word <bw> at clock <x>. Returns 1 when
 * admitted, 0 when denied, -1 when <p> turned out to be outdated (nothing was
 * written; reload the parameters and call again). *<after> receives the level
 * as left by this call (negative: the bucket is behind the clock reading). */
static inline int bucket_take(const struct tp_ratelimit *rl, _Atomic uint64_t *bw, const struct rl_params *p,
                              uint64_t x, int64_t *after)
{
    uint64_t unit = unit_of(p);
    /* Acquire, so that the sequence check below sees any update whose
     * parameters the writer of this word used. */
    uint64_t w = atomic_load_explicit(bw, memory_order_acquire);

    for (;;) {
        int64_t lvl;

        if (atomic_load_explicit(&rl->seq, memory_order_relaxed) != p->seq || !word_level(rl, p, x, w, &lvl))
            return -1;
        if (lvl < (int64_t)unit) {
            *after = lvl;
            return 0;
        }
        /* Keeps lvl - S: a level above burst was clamped first (a full bucket
         * banks nothing), a partial one keeps its fraction. A failed CAS
         * reloads the word and re-decides; the word is the whole state. */
        if (atomic_compare_exchange_weak_explicit(bw, &w, make_word(x, lvl - (int64_t)unit, tag_of(p)),
                                                  memory_order_acq_rel, memory_order_acquire)) {
            *after = lvl - (int64_t)unit;
            return 1;
        }
    }
}

/* Whole seconds, rounded up, from <now> until the clock has gained <u> > 0
 * units over its reading <x> = X(now). With d = now - t0 and the rate
 * num / den units per ns (num = tokens * S, den = period_ns), X(now) - x0 is
 * floor(d * num / den) with remainder r = d * num mod den, and the first e
 * with floor((d + e) * num / den) >= X(now) - x0 + u is
 * ceil((u * den - r) / num): exact, as X is. r is recovered modulo 2^64 from
 * X itself (it is below den < 2^64), without a division. */
static uint64_t secs_until(const struct rl_params *p, uint64_t x, uint64_t now, uint64_t u)
{
    uint64_t d = now > p->t0 ? now - p->t0 : 0;
    uint64_t base = p->t0 > now ? p->t0 - now : 0; /* X stands still before t0 */
    u128 num = (u128)p->tokens << p->shift;
    uint64_t r = d * (uint64_t)num - (x - p->x0) * p->period_ns;
    u128 need = (u128)u * p->period_ns; /* u < 2^62: no overflow */
    u128 e = need > r ? (need - r + num - 1) / num : 0;
    uint64_t wait;

    if (e > (u128)(UINT64_MAX - base))
        return UINT64_MAX / NS_PER_S; /* beyond the clock's range */
    wait = base + (uint64_t)e;
    return wait / NS_PER_S + (wait % NS_PER_S != 0);
}

/* The 429 values for a bucket at level <lvl> (as word_level() gives it) at
 * clock <x> = X(now). */
static void fill_result(const struct rl_params *p, uint64_t x, int64_t lvl, uint64_t now,
                        struct tp_rl_result *out)
{
    int64_t unit = (int64_t)unit_of(p), bu = burst_units(p);

    out->limit = p->burst;
    out->remaining = lvl > 0 ? (uint64_t)lvl >> p->shift : 0;
    out->reset_s = lvl >= bu ? 0 : secs_until(p, x, now, (uint64_t)(bu - lvl));
    if (lvl >= unit) {
        out->retry_after_s = 0;
    } else {
        out->retry_after_s = secs_until(p, x, now, (uint64_t)(unit - lvl));
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
 * key. A slot whose level cannot be judged with <p> (a rescaling is being
 * published) counts as not stale. */
static _Atomic uint64_t *slot_lookup(struct tp_ratelimit *rl, uint64_t h, const struct rl_params *p,
                                     uint64_t x)
{
    int64_t bu = burst_units(p);

    if (h == 0)
        h = 1; /* 0 marks an empty slot */

    for (int pass = 0; pass < 2; pass++) {
        struct rl_slot *stale = NULL;
        uint64_t stale_key = 0;
        size_t i = (size_t)(h & rl->mask);

        for (unsigned n = 0; n < TP_RL_PROBE; n++, i = (i + 1) & rl->mask) {
            struct rl_slot *s = &rl->slots[i];
            uint64_t k = atomic_load_explicit(&s->key, memory_order_relaxed);
            int64_t lvl;

            if (k == h)
                return &s->w;
            if (k == 0) {
                /* Slots never empty again, so <h> is not further on. Prefer
                 * an earlier stale slot: it keeps probe chains short. */
                if (stale)
                    break;
                if (atomic_compare_exchange_strong_explicit(&s->key, &k, h, memory_order_relaxed,
                                                            memory_order_relaxed)) {
                    atomic_fetch_add_explicit(&rl->n_claimed, 1, memory_order_relaxed);
                    return &s->w; /* a never-used bucket is full (WORD_INIT) */
                }
                if (k == h)
                    return &s->w; /* the same key, inserted by another thread */
                /* another key took it: judge it as an occupied slot */
            }
            if (!stale && word_level(rl, p, x, atomic_load_explicit(&s->w, memory_order_relaxed), &lvl) &&
                lvl >= bu) {
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
            return &stale->w;
        }
        if (stale_key == h)
            return &stale->w;
        /* lost a race for the stale slot: look once more */
    }
    atomic_fetch_add_explicit(&rl->n_full, 1, memory_order_relaxed);
    return &rl->shared_w;
}

/* Read-only lookup for peek: the bucket word of <h>, or NULL if it has none. */
static const _Atomic uint64_t *slot_find(const struct tp_ratelimit *rl, uint64_t h)
{
    size_t i;

    if (h == 0)
        h = 1;
    i = (size_t)(h & rl->mask);
    for (unsigned n = 0; n < TP_RL_PROBE; n++, i = (i + 1) & rl->mask) {
        uint64_t k = atomic_load_explicit(&rl->slots[i].key, memory_order_relaxed);

        if (k == h)
            return &rl->slots[i].w;
        if (k == 0)
            break;
    }
    return NULL;
}

/* Converts the word <bw> to the scale of <p> unless a take already did.
 * [control] */
static void word_rescale(_Atomic uint64_t *bw, const struct rl_conv *c, uint64_t tag)
{
    uint64_t w = atomic_load_explicit(bw, memory_order_acquire);

    while ((w & 1) != tag && !atomic_compare_exchange_weak_explicit(
                                 bw, &w, convert(c, w, tag), memory_order_acq_rel, memory_order_acquire))
        ;
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
    struct rl_conv c = {0, 0, 0};
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
    atomic_init(&rl->shared_w, WORD_INIT);
    atomic_init(&rl->n_claimed, 0);
    atomic_init(&rl->n_reclaimed, 0);
    atomic_init(&rl->n_full, 0);
    /* The token clock starts at X(0) = 0: t0 = 0 means "since boot" for
     * CLOCK_MONOTONIC, so creation needs no clock reading. */
    p.t0 = 0;
    p.x0 = 0;
    p.gen = 0;
    params_store(rl, &p, &c);

    rl->keyed = cfg_keyed(cfg);
    if (rl->keyed) {
        rl->mask = slots - 1;
        rl->slots = aligned_alloc(CACHELINE, slots * sizeof(*rl->slots));
        if (!rl->slots)
            goto fail;
        for (size_t i = 0; i < slots; i++) {
            atomic_init(&rl->slots[i].key, 0);
            atomic_init(&rl->slots[i].w, WORD_INIT);
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
    struct rl_conv c;
    uint64_t t;
    int r = params_compute(cfg, &np);

    if (r)
        return r;
    if (cfg_keyed(cfg) != rl->keyed)
        return -EINVAL;
    params_load(rl, &op);
    t = now_ns > op.t0 ? now_ns : op.t0;
    if (np.shift == op.shift) {
        np.gen = op.gen;
        if (np.tokens == op.tokens && np.period_ns == op.period_ns) {
            np.t0 = op.t0;
            np.x0 = op.x0;
        } else {
            /* Rebase so that X is continuous at t: buckets keep their level.
             * The fraction of a unit produced so far is dropped (at most one
             * unit less, never more). */
            np.t0 = t;
            np.x0 = token_clock(&op, t);
        }
        params_store(rl, &np, NULL);
        return 0;
    }

    /* The scale changes: publish the conversion with the new parameters,
     * then convert every word that no take has converted yet. */
    c.from_x = token_clock(&op, t);
    c.to_x = c.from_x + RESCALE_JUMP;
    c.k = (int)np.shift - (int)op.shift;
    np.t0 = t;
    np.x0 = c.to_x;
    np.gen = op.gen + 1;
    params_store(rl, &np, &c);
    word_rescale(&rl->shared_w, &c, tag_of(&np));
    for (size_t i = 0; rl->keyed && i <= rl->mask; i++)
        word_rescale(&rl->slots[i].w, &c, tag_of(&np));
    return 0;
}

bool tp_ratelimit_take(struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns, struct tp_rl_result *out)
{
    struct rl_params p;
    _Atomic uint64_t *bw;
    uint64_t x;
    int64_t after;
    int ok;

    params_load(rl, &p);
    x = token_clock(&p, now_ns);
    /* The slot does not depend on the parameters: a retry keeps it. */
    bw = rl->keyed ? slot_lookup(rl, key_hash, &p, x) : &rl->shared_w;
    while ((ok = bucket_take(rl, bw, &p, x, &after)) < 0) {
        params_load(rl, &p);
        x = token_clock(&p, now_ns);
    }
    if (out)
        fill_result(&p, x, after, now_ns, out);
    return ok;
}

void tp_ratelimit_peek(const struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns,
                       struct tp_rl_result *out)
{
    struct rl_params p;
    const _Atomic uint64_t *bw = &rl->shared_w;
    uint64_t x;
    int64_t lvl;

    if (rl->keyed)
        bw = slot_find(rl, key_hash);
    do {
        params_load(rl, &p);
        x = token_clock(&p, now_ns);
        lvl = burst_units(&p); /* no bucket yet: a new key starts full */
    } while (bw && !word_level(rl, &p, x, atomic_load_explicit(bw, memory_order_acquire), &lvl));
    fill_result(&p, x, lvl, now_ns, out);
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
