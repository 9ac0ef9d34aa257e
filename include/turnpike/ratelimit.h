/* SPDX-License-Identifier: MIT */
/*
 * Token-bucket rate limiting (routes[].rate_limit), exact across shards.
 *
 * One struct tp_ratelimit per route that has a rate_limit. With `key: route`
 * it is a single bucket; with any other key kind (client_ip, header:NAME) it is
 * a fixed-capacity open-addressing table of buckets indexed by the 64-bit XXH3
 * hash of the key, which the caller computes. Nothing here allocates after
 * tp_ratelimit_create(), does I/O, or reads a clock: the caller passes the
 * monotonic time in nanoseconds (CLOCK_MONOTONIC), the same clock for every
 * call on one limiter.
 *
 * Owner: process. The reload machinery keeps a limiter alive across
 * generations by route name and calls tp_ratelimit_update() when the rate or
 * burst changed. Shards call tp_ratelimit_take() concurrently; the control
 * thread reads the counters. docs/policies.md describes the behaviour for
 * operators (exactness, a full table, clock edge cases).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

/** Default number of per-key buckets (rounded up to a power of two). */
#define TP_RL_DEFAULT_SLOTS 65536u
/** Largest accepted table: 2^24 slots (16 bytes each, 256 MiB). */
#define TP_RL_MAX_SLOTS (1u << 24)
/** Slots looked at for one key before it falls back to the overflow bucket. */
#define TP_RL_PROBE 16u

/** What a take decided, as the headers of a 429 (docs/reference.md "Defaults and fine print"). */
struct tp_rl_result {
    uint64_t limit;         /* RateLimit-Limit: the burst */
    uint64_t remaining;     /* RateLimit-Remaining: whole tokens left after this request */
    uint64_t reset_s;       /* RateLimit-Reset: [s] until the bucket is full again, rounded up */
    uint64_t retry_after_s; /* Retry-After: [s] until the next request would be admitted,
                               rounded up; >= 1 when denied, 0 when a token is left now */
};

/** Counters of one limiter, for /metrics. All are totals since creation. */
struct tp_rl_stats {
    uint64_t slots;      /* capacity of the per-key table; 0 for key: route */
    uint64_t slots_used; /* slots that ever held a key (they are reused, never freed) */
    uint64_t reclaimed;  /* slots taken over from an idle key whose bucket was full again */
    uint64_t table_full; /* takes decided by the shared overflow bucket (no slot found) */
};

struct tp_ratelimit;

/**
 * Creates a limiter for <cfg> (rate = cfg->tokens per cfg->period_ms, bucket
 * size cfg->burst, key cfg->key.kind). For keyed limiters <key_slots> is the
 * table capacity, rounded up to a power of two (0 = TP_RL_DEFAULT_SLOTS, at
 * most TP_RL_MAX_SLOTS); it is ignored for key: route. Every bucket starts
 * full. <cfg> is not referenced after the call.
 * Returns NULL and sets *<err> (if not NULL) to -EINVAL (tokens, period or
 * burst is 0, burst > 2^60, too many slots) or -ENOMEM. [control]
 */
struct tp_ratelimit *tp_ratelimit_create(const struct tp_cfg_rate_limit *cfg, size_t key_slots, int *err);

/** Frees <rl>; no take may be running or follow. NULL is fine. [control] */
void tp_ratelimit_destroy(struct tp_ratelimit *rl);

/**
 * Applies a reloaded rate and burst at time <now_ns>, while shards keep
 * calling tp_ratelimit_take(). Every bucket keeps its level, fractions of a
 * token included: a rate change only changes how fast it refills from now on,
 * a smaller burst clamps it (seen at its next take; a burst raised again
 * before that gives the old level back). The parameters are published with a
 * sequence lock, so a take sees either all old or all new values. When the
 * new rate or burst needs another resolution of the limiter's token clock
 * (a power of two derived from them, so most rate changes do), the call
 * also converts every bucket word, one CAS each, before it returns: one pass
 * over the table. Returns 0, or -EINVAL when <cfg> is invalid (as for create) or
 * changes the key between `route` and a per-key kind (then create a new
 * limiter); <rl> is then unchanged.
 * Not concurrent with itself. [control]
 */
int tp_ratelimit_update(struct tp_ratelimit *rl, const struct tp_cfg_rate_limit *cfg, uint64_t now_ns);

/**
 * Takes one token at monotonic time <now_ns> from the bucket of <key_hash>
 * (ignored for key: route). Returns true when admitted. If <out> is not NULL
 * it receives the 429 header values (see struct tp_rl_result); computing them
 * costs a 128-bit division, so pass NULL when they are not needed.
 * Lock-free: one load and one CAS of the bucket word when uncontended, plus
 * one probe of the table for per-key limiters. When no slot can be found for
 * a new key within TP_RL_PROBE slots, the request is decided by a single
 * overflow bucket of the limiter (same rate and burst) and counted in
 * tp_rl_stats.table_full. [any]
 */
bool tp_ratelimit_take(struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns, struct tp_rl_result *out);

/**
 * Fills <out> with what the bucket of <key_hash> holds at <now_ns>, without
 * taking a token and without claiming a slot (an unknown key reads as a full
 * bucket). For /config, tests and debugging. [any]
 */
void tp_ratelimit_peek(const struct tp_ratelimit *rl, uint64_t key_hash, uint64_t now_ns,
                       struct tp_rl_result *out);

/** True when <rl> keeps a bucket per key (any key kind but route). [any] */
bool tp_ratelimit_keyed(const struct tp_ratelimit *rl);

/** Copies the counters of <rl> (relaxed reads; each value is exact by itself). [any] */
void tp_ratelimit_stats(const struct tp_ratelimit *rl, struct tp_rl_stats *out);

/** Same as tp_rl_stats.table_full. [any] */
uint64_t tp_ratelimit_table_full_total(const struct tp_ratelimit *rl);
