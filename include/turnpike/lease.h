/* SPDX-License-Identifier: MIT */
/*
 * Token pools of global rate limits (routes[].rate_limit.scope: global).
 *
 * A global bucket lives in a shared store (Redis); an instance takes tokens
 * from it in batches ("leases") and serves requests from a local pool per
 * key. One struct tp_lease_table per route with a global limit: a table of
 * pools indexed by the 64-bit XXH3 hash of the key (or a single pool for
 * key: route), each pool a handful of lease words {expiry, tokens} that the
 * shards decrement with a CAS. A pool that falls under its low-water mark
 * queues itself (a lock-free MPSC ring) for the control thread, which asks
 * the store for the next lease (tp_lease_next), and hands the answer back
 * (tp_lease_grant / tp_lease_failed), which name the shards with a request
 * waiting for that pool so that the caller wakes them. Nothing here does
 * I/O, allocates after creation, or reads a clock. docs/policies.md "Global rate limits"
 * states the bound and why it holds.
 *
 * Owner: process; the reload machinery keeps a table across generations by
 * route name (tp_lease_update applies a new rate or burst). [control] unless
 * marked [any].
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>
#include <turnpike/ratelimit.h>

/** Lease words per pool: leases not yet expired that a pool can hold at once. */
#define TP_LEASE_WORDS 4
/** Largest lease, in tokens (24 bits of a lease word). */
#define TP_LEASE_MAX ((1u << 24) - 1)
/** Longest life of a leased token [ns]; shorter when burst / rate is small. */
#define TP_LEASE_TTL_NS 250000000ull

/** What tp_lease_take decided. */
enum tp_lease_verdict {
    TP_LEASE_DENY = 0,     /* no token in the pool, and the store said none is there yet: 429 */
    TP_LEASE_ADMIT = 1,    /* a leased token was taken */
    TP_LEASE_FALLBACK = 2, /* the store is down and the pool is empty: rate_limit_store.on_failure decides */
    TP_LEASE_WAIT = 3,     /* no token in the pool, a lease is asked for or in flight: take again later */
};

struct tp_lease_table;

/**
 * Creates the pools of route <name> for <cfg> (a global rate limit). <slots>:
 * capacity of the per-key table, rounded up to a power of two (0 = 65,536);
 * ignored for key: route. Returns NULL and sets *<err> to -EINVAL or -ENOMEM.
 * The table starts with one reference.
 */
struct tp_lease_table *tp_lease_create(const char *name, const struct tp_cfg_rate_limit *cfg, size_t slots,
                                       int *err);

/** Another reference (the store holds one per call in flight). */
void tp_lease_ref(struct tp_lease_table *t);

/** Drops a reference; the last one frees <t> (no take may be running or follow). NULL is fine. */
void tp_lease_unref(struct tp_lease_table *t);

/** A reloaded rate or burst: applies to the next leases; pools keep their tokens. Returns 0 or -EINVAL. */
int tp_lease_update(struct tp_lease_table *t, const struct tp_cfg_rate_limit *cfg);

/**
 * Takes a token for <key_hash> at monotonic time <now_ns>: from the pool when
 * it holds an unexpired one (ADMIT). An empty pool: FALLBACK while the store
 * is down; DENY while the store's last answer for the pool (a short lease)
 * said no whole token is in the bucket yet; WAIT otherwise (a lease is asked
 * for or in flight). On WAIT with <waiter> set (the caller's bit, 1 << (shard
 * id % 64)) the pool remembers the caller: the answer to its ask returns that
 * bit (tp_lease_grant, tp_lease_failed) and the caller, woken, takes again;
 * it applies on_failure when no answer came within the store's timeout. A
 * pool under its low-water mark asks for a lease (at most one ask queued or in
 * flight per pool) and calls the notify hook. <out> (may be NULL) receives the
 * RateLimit-* values of the global bucket as far as this instance knows: the
 * store's level at the last lease plus this pool. Lock-free: a few loads and
 * one CAS. [any]
 */
enum tp_lease_verdict tp_lease_take(struct tp_lease_table *t, uint64_t key_hash, uint64_t now_ns,
                                    uint64_t waiter, struct tp_rl_result *out);

/**
 * <fn> is called (on the taking thread) when a pool queued an ask, to wake
 * whoever sends asks; NULL for none. Set before the shards run. [control]
 */
void tp_lease_set_notify(void (*fn)(void));

/** Tells every table whether the store answers (the fallback switch). [control] */
void tp_lease_set_store_up(bool up);
/** [any] */
bool tp_lease_store_up(void);

/* ---- the control side: which pool needs a lease, and its answer ---- */

/** One call to the store: take up to <want> tokens from the bucket of <key_hash>. */
struct tp_lease_ask {
    uint32_t slot;      /* the pool (for grant / failed) */
    uint64_t key_hash;  /* 0 for the route's single pool and the overflow pool */
    bool overflow;      /* the pool of keys that found no slot */
    uint32_t want;      /* tokens */
    double capacity;    /* bucket size in the store: burst - rate * lifetime (see policies.md) */
    uint64_t tokens;    /* the rate: tokens ... */
    uint64_t period_ms; /* ... per period */
};

/**
 * The next pool that asked for a lease at <now_ns>. Pools whose last lease
 * came back short are held back until the store said a token would be there
 * (at least a few ms). Fills <ask> and returns true, or false when none is due.
 */
bool tp_lease_next(struct tp_lease_table *t, uint64_t now_ns, struct tp_lease_ask *ask);

/** True while pools are held back after a short lease (tp_lease_next has asks due later). */
bool tp_lease_deferred(const struct tp_lease_table *t);

/**
 * The store's answer to the ask of <slot> sent at <sent_ns>: <granted> tokens
 * (they expire at sent_ns + lifetime), the bucket's level after it
 * (<remaining>, whole tokens), [ms] until it is full (<full_ms>) and until it
 * holds a whole token (<next_ms>). <now_ns>: when the answer came. Returns the
 * waiter bits of the shards with a request waiting for the pool (to wake).
 */
uint64_t tp_lease_grant(struct tp_lease_table *t, uint32_t slot, uint64_t sent_ns, uint64_t now_ns,
                        uint32_t granted, uint64_t remaining, uint64_t full_ms, uint64_t next_ms);

/** The ask of <slot> failed (no answer, an error): the pool may ask again. Returns the waiters, as grant. */
uint64_t tp_lease_failed(struct tp_lease_table *t, uint32_t slot);

/** The route name the table was created for. */
const char *tp_lease_name(const struct tp_lease_table *t);

/** [ns] life of a leased token under the table's current rate and burst. */
uint64_t tp_lease_ttl_ns(const struct tp_lease_table *t);

/** Totals since creation, for /metrics. [any] */
struct tp_lease_stats {
    uint64_t asks;    /* leases asked for */
    uint64_t granted; /* tokens received */
    uint64_t expired; /* tokens that expired unused (counted when their word is reused) */
};
void tp_lease_stats(const struct tp_lease_table *t, struct tp_lease_stats *out);
