/* SPDX-License-Identifier: MIT */
/*
 * Load balancing over an upstream's endpoints (upstreams[].balance):
 *
 *   round_robin    smooth weighted round robin, state per shard
 *   least_request  power of two choices on in-flight counts, weighted
 *   hash           Maglev consistent hashing of the hash_key's XXH3
 *
 * Pure functions over arrays the caller owns; nothing here allocates except
 * tp_maglev_create(). Endpoints are indices 0..n-1 into the caller's arrays.
 * Which endpoints may be chosen is given as an eligibility bitmap (bit i of
 * word i / 64; NULL = all; bits at n and above must be 0), built by the
 * caller from health, breaker (tp_breaker_would_admit) and connection
 * limits. Every pick returns TP_BALANCE_NONE when no endpoint is eligible.
 *
 * Owner: the swrr state array belongs to one shard; a Maglev table belongs to
 * the configuration snapshot (built by the control thread, read by all
 * shards). Thread tags on each function.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Returned when no endpoint is eligible. */
#define TP_BALANCE_NONE SIZE_MAX
/** Words of an eligibility bitmap for <n> endpoints. */
#define TP_ELIGIBLE_WORDS(n) (((n) + 63) / 64)

/** Default Maglev table size (prime); more for upstreams over 655 endpoints. */
#define TP_MAGLEV_DEFAULT_SIZE 65537u
/** Largest Maglev table accepted. */
#define TP_MAGLEV_MAX_SIZE (1u << 25)

/** True when bit <i> of <eligible> is set, or <eligible> is NULL. [any] */
static inline bool tp_eligible(const uint64_t *eligible, size_t i);
/** Sets or clears bit <i> of <eligible>. [owner of the bitmap] */
static inline void tp_eligible_set(uint64_t *eligible, size_t i, bool on);

/**
 * Smooth weighted round robin (the nginx algorithm): every eligible endpoint
 * adds its weight to its <current> value, the largest current wins (the
 * lowest index on ties) and gives back the sum of the eligible weights. For
 * weights {5,1,1} the picks are a a b a c a a, repeated. Ineligible endpoints
 * and weight 0 are skipped and their current value is left as it is, so the
 * rest keeps the smooth sequence of its own weights.
 * <current> is per shard per upstream, <n> entries, zeroed at first use.
 * <weights> NULL = all 1. O(n). [shard]
 */
size_t tp_swrr_pick(int64_t *current, const uint32_t *weights, size_t n, const uint64_t *eligible);

/** Returns the in-flight request count of endpoint <i> (for tp_p2c_pick). */
typedef uint64_t (*tp_p2c_load_fn)(void *ctx, size_t i);

/**
 * Least request by the power of two choices: two distinct eligible endpoints
 * chosen uniformly with the random bits <rnd>, and the one with the smaller
 * (load(i) + 1) / weight(i) wins (compared by cross-multiplication; the + 1
 * is this request, which also makes the weights count when both are idle);
 * a tie goes to the first choice. One eligible endpoint: that one. Weights
 * must be >= 1 (0 counts as 1); NULL = all 1. <load> is called exactly twice
 * (not at all when only one endpoint is eligible), typically reading a relaxed
 * atomic in-flight counter. O(n / 64) with a bitmap, O(1) without. [shard]
 */
size_t tp_p2c_pick(const uint32_t *weights, size_t n, tp_p2c_load_fn load, void *ctx,
                   const uint64_t *eligible, uint64_t rnd);

struct tp_maglev;

/**
 * Builds a Maglev lookup table of <table_size> entries (a prime; 0 = the
 * smallest prime >= max(65537, 100 * n)) for <n> endpoints named by
 * <names> (their identity, e.g. the address text: an endpoint keeps its
 * share of keys across rebuilds as long as its name stays). Each endpoint's
 * preference order is a permutation derived from XXH3 of its name with two
 * seeds; endpoints take turns claiming their next preferred free entry, an
 * endpoint of weight w taking w turns for every wmax of the heaviest, so
 * entries are shared in proportion to <weights> (NULL = all 1; 0 = none).
 * Returns NULL and *<err> = -EINVAL (n == 0, all weights 0, table_size not
 * prime, smaller than n or too large) or -ENOMEM. <names> are not kept.
 * O(table_size * wmax / wmean) time. [control]
 */
struct tp_maglev *tp_maglev_create(const char *const *names, const uint32_t *weights, size_t n,
                                   size_t table_size, int *err);

/** Frees <m>. NULL is fine. [control, after the snapshot is retired] */
void tp_maglev_destroy(struct tp_maglev *m);

/**
 * The endpoint for <key_hash> (XXH3 of the hash_key value): the table entry
 * the hash selects; if that endpoint is ineligible, entries chosen by
 * rehashing the key with a counter (up to 32), so its keys spread over the
 * others in proportion to their shares while every other key stays where
 * it is; if all of those are ineligible too, an eligible endpoint chosen by
 * the hash among the remaining ones. TP_BALANCE_NONE if none is eligible.
 * O(1) while most endpoints are eligible. [any]
 */
size_t tp_maglev_pick(const struct tp_maglev *m, uint64_t key_hash, const uint64_t *eligible);

/** Table size of <m> (entries). [any] */
size_t tp_maglev_table_size(const struct tp_maglev *m);

/** Endpoint owning entry <slot> (< table size) of <m>. [any] */
size_t tp_maglev_entry(const struct tp_maglev *m, size_t slot);

/* ---- inline definitions ---- */

static inline bool tp_eligible(const uint64_t *eligible, size_t i)
{
    return !eligible || ((eligible[i >> 6] >> (i & 63)) & 1);
}

static inline void tp_eligible_set(uint64_t *eligible, size_t i, bool on)
{
    if (on)
        eligible[i >> 6] |= 1ull << (i & 63);
    else
        eligible[i >> 6] &= ~(1ull << (i & 63));
}
