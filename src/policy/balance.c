/* SPDX-License-Identifier: MIT */
/*
 * Endpoint selection (see include/turnpike/balance.h): smooth weighted round
 * robin and power of two choices, called by a shard per request, and the
 * Maglev table, built by the control thread with the snapshot and read by
 * every shard.
 *
 * Maglev (Eisenbud et al., NSDI 2016) in short: with a prime table size M,
 * endpoint i prefers the entries offset_i, offset_i + skip_i, ... (mod M), a
 * permutation of all entries since skip_i is in 1..M-1 and M is prime.
 * Endpoints take turns, each claiming its most preferred entry still free,
 * until the table is full. Because each endpoint's preferences depend only
 * on its own name, removing or adding one endpoint mostly changes the entries
 * it loses or gains, and a lookup is a single array access.
 *
 * Weights: instead of one turn per round, an endpoint accumulates its weight
 * as credit every round and takes a turn per wmax of credit (the heaviest one
 * takes a turn every round), so entry counts follow the weights to within one
 * entry per endpoint.
 *
 * Ineligible endpoints: the table is not rebuilt when health changes (it
 * belongs to the immutable snapshot). A key whose entry belongs to an
 * ineligible endpoint is rehashed with a counter to other entries, which
 * moves only that endpoint's keys and spreads them by the entry shares.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include <turnpike/balance.h>

/* Seeds of the two permutation hashes: fixed, so that tables built by
 * different processes or generations agree. */
#define SEED_OFFSET   0x7470616d6c67766full /* "tpamlgvo" */
#define SEED_SKIP     0x7470616d6c677673ull /* "tpamlgvs" */
#define MAGLEV_PROBES 32
#define EMPTY         UINT32_MAX

struct tp_maglev {
    size_t n;          /* endpoints */
    size_t size;       /* entries, prime */
    uint32_t *table;   /* [size] endpoint index */
    uint64_t *present; /* bitmap [TP_ELIGIBLE_WORDS(n)]: endpoints with entries */
};

/* ---- helpers ---- */

/* Maps a 32-bit random value uniformly onto [0, m) without a division. */
static inline size_t range32(uint32_t x, size_t m)
{
    return (size_t)(((uint64_t)x * m) >> 32);
}

/* Same for a 64-bit hash onto [0, m): takes the high bits of the product. */
static inline size_t range64(uint64_t x, size_t m)
{
    return (size_t)(((unsigned __int128)x * m) >> 64);
}

/* splitmix64's finalizer: a cheap bijective mixer for the probe rehash. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Word <k> of bitmap <mask> restricted to bits below <n> (NULL = all ones). */
static inline uint64_t mask_word(const uint64_t *mask, size_t k, size_t n)
{
    uint64_t w = mask ? mask[k] : ~0ull;
    size_t hi = n - k * 64;

    return hi >= 64 ? w : w & ((1ull << hi) - 1);
}

/* Index of the set bit of rank <rank> (0-based) in the first <n> bits of
 * (<a> & <b>); <b> NULL = all ones. The caller knows it exists. */
static size_t select_bit(const uint64_t *a, const uint64_t *b, size_t n, size_t rank)
{
    for (size_t k = 0; k < TP_ELIGIBLE_WORDS(n); k++) {
        uint64_t w = mask_word(a, k, n) & mask_word(b, k, n);
        size_t c = (size_t)__builtin_popcountll(w);

        if (rank < c) {
            while (rank--)
                w &= w - 1;
            return k * 64 + (size_t)__builtin_ctzll(w);
        }
        rank -= c;
    }
    return TP_BALANCE_NONE;
}

static size_t count_bits(const uint64_t *a, const uint64_t *b, size_t n)
{
    size_t c = 0;

    for (size_t k = 0; k < TP_ELIGIBLE_WORDS(n); k++)
        c += (size_t)__builtin_popcountll(mask_word(a, k, n) & mask_word(b, k, n));
    return c;
}

/* ---- smooth weighted round robin ---- */

size_t tp_swrr_pick(int64_t *current, const uint32_t *weights, size_t n, const uint64_t *eligible)
{
    size_t best = TP_BALANCE_NONE;
    int64_t total = 0;

    for (size_t i = 0; i < n; i++) {
        int64_t w = weights ? weights[i] : 1;

        if (w == 0 || !tp_eligible(eligible, i))
            continue;
        current[i] += w;
        total += w;
        if (best == TP_BALANCE_NONE || current[i] > current[best])
            best = i;
    }
    /* The winner gives back what all of them gained this round: the sum of
     * the currents stays 0 over the eligible set, and each endpoint is picked
     * weight times per sum-of-weights picks, spread out evenly. */
    if (best != TP_BALANCE_NONE)
        current[best] -= total;
    return best;
}

/* ---- power of two choices ---- */

size_t tp_p2c_pick(const uint32_t *weights, size_t n, tp_p2c_load_fn load, void *ctx,
                   const uint64_t *eligible, uint64_t rnd)
{
    size_t m = eligible ? count_bits(eligible, NULL, n) : n;
    size_t r1, r2, a, b;
    uint64_t wa, wb;
    unsigned __int128 ca, cb;

    if (m == 0)
        return TP_BALANCE_NONE;
    if (m == 1)
        return eligible ? select_bit(eligible, NULL, n, 0) : 0;

    /* two distinct ranks among the eligible: the second is drawn from m - 1
     * values and steps over the first */
    r1 = range32((uint32_t)rnd, m);
    r2 = range32((uint32_t)(rnd >> 32), m - 1);
    if (r2 >= r1)
        r2++;
    a = eligible ? select_bit(eligible, NULL, n, r1) : r1;
    b = eligible ? select_bit(eligible, NULL, n, r2) : r2;

    wa = weights && weights[a] ? weights[a] : 1;
    wb = weights && weights[b] ? weights[b] : 1;
    /* (load_a + 1) / wa <= (load_b + 1) / wb, without division or overflow */
    ca = ((unsigned __int128)load(ctx, a) + 1) * wb;
    cb = ((unsigned __int128)load(ctx, b) + 1) * wa;
    return cb < ca ? b : a;
}

/* ---- Maglev ---- */

static bool is_prime(uint64_t x)
{
    if (x < 2)
        return false;
    if (x % 2 == 0)
        return x == 2;
    for (uint64_t d = 3; d * d <= x; d += 2)
        if (x % d == 0)
            return false;
    return true;
}

static size_t next_prime(size_t x)
{
    while (!is_prime(x))
        x++;
    return x;
}

/* Fills <m->table> from the permutations; see the file comment. */
static int maglev_populate(struct tp_maglev *m, const char *const *names, const uint32_t *weights,
                           uint32_t wmax)
{
    size_t n = m->n, size = m->size, filled = 0;
    uint64_t *pos = calloc(n, sizeof(*pos));
    uint64_t *skip = calloc(n, sizeof(*skip));
    uint64_t *credit = calloc(n, sizeof(*credit));

    if (!pos || !skip || !credit) {
        free(pos);
        free(skip);
        free(credit);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);

        pos[i] = XXH3_64bits_withSeed(names[i], len, SEED_OFFSET) % size;
        skip[i] = XXH3_64bits_withSeed(names[i], len, SEED_SKIP) % (size - 1) + 1;
    }
    for (size_t s = 0; s < size; s++)
        m->table[s] = EMPTY;

    /* Rounds of turns until every entry is taken. Each round at least the
     * heaviest endpoint takes an entry, so this ends; an endpoint's walk
     * through its permutation always finds a free entry while any is left. */
    while (filled < size) {
        for (size_t i = 0; i < n && filled < size; i++) {
            uint32_t w = weights ? weights[i] : 1;

            if (w == 0)
                continue;
            credit[i] += w;
            if (credit[i] < wmax)
                continue;
            credit[i] -= wmax;
            while (m->table[pos[i]] != EMPTY) {
                pos[i] += skip[i];
                if (pos[i] >= size)
                    pos[i] -= size;
            }
            m->table[pos[i]] = (uint32_t)i;
            tp_eligible_set(m->present, i, true);
            filled++;
        }
    }
    free(pos);
    free(skip);
    free(credit);
    return 0;
}

struct tp_maglev *tp_maglev_create(const char *const *names, const uint32_t *weights, size_t n,
                                   size_t table_size, int *err)
{
    struct tp_maglev *m = NULL;
    uint32_t wmax = 0;
    size_t size, weighted = 0;
    int r = -EINVAL;

    if (!names || n == 0 || n >= EMPTY)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        uint32_t w = weights ? weights[i] : 1;

        if (!names[i])
            goto fail;
        if (w > wmax)
            wmax = w;
        weighted += w != 0;
    }
    if (wmax == 0)
        goto fail;
    if (table_size == 0) {
        size = weighted <= TP_MAGLEV_DEFAULT_SIZE / 100 ? TP_MAGLEV_DEFAULT_SIZE : weighted * 100;
        if (size > TP_MAGLEV_MAX_SIZE / 2)
            size = TP_MAGLEV_MAX_SIZE / 2;
        size = next_prime(size);
    } else {
        size = table_size;
    }
    if (size > TP_MAGLEV_MAX_SIZE || size < weighted || size < 2 || !is_prime(size))
        goto fail;

    r = -ENOMEM;
    m = calloc(1, sizeof(*m));
    if (!m)
        goto fail;
    m->n = n;
    m->size = size;
    m->table = malloc(size * sizeof(*m->table));
    m->present = calloc(TP_ELIGIBLE_WORDS(n), sizeof(*m->present));
    if (!m->table || !m->present)
        goto fail;
    r = maglev_populate(m, names, weights, wmax);
    if (r)
        goto fail;
    return m;

fail:
    tp_maglev_destroy(m);
    if (err)
        *err = r;
    return NULL;
}

void tp_maglev_destroy(struct tp_maglev *m)
{
    if (!m)
        return;
    free(m->table);
    free(m->present);
    free(m);
}

size_t tp_maglev_pick(const struct tp_maglev *m, uint64_t key_hash, const uint64_t *eligible)
{
    uint32_t e = m->table[range64(key_hash, m->size)];
    size_t cnt;

    if (tp_eligible(eligible, e))
        return e;
    /* The key's endpoint is out: deterministic rehashes of the key land on
     * the other endpoints' entries in proportion to their shares, and the
     * same key always lands on the same one while eligibility stays. */
    for (uint64_t c = 1; c <= MAGLEV_PROBES; c++) {
        e = m->table[range64(mix64(key_hash + c * 0x9e3779b97f4a7c15ull), m->size)];
        if (tp_eligible(eligible, e))
            return e;
    }
    /* Nearly everything is ineligible: choose among what is left. */
    cnt = count_bits(eligible, m->present, m->n);
    if (cnt == 0)
        return TP_BALANCE_NONE;
    return select_bit(eligible, m->present, m->n, range64(mix64(key_hash ^ SEED_SKIP), cnt));
}

size_t tp_maglev_table_size(const struct tp_maglev *m)
{
    return m->size;
}

size_t tp_maglev_entry(const struct tp_maglev *m, size_t slot)
{
    return m->table[slot];
}
