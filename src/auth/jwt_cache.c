/* SPDX-License-Identifier: MIT */
/*
 * The verified-token cache: a shard remembers the tokens it has verified, so
 * a client that sends the same token on every request pays one signature
 * check per token instead of one per request (an RSA or ECDSA check costs
 * tens of microseconds; a hit costs a hash and a memcmp).
 *
 * One cache per shard, touched only by that shard: no locks, no atomics but
 * the claims refcount. Layout: buckets of 8 slots; the 8 hashes of a bucket
 * fill one cache line, so a lookup reads one line of hashes and, only on a
 * hash match, the entry. The hash is XXH3-64 of the token, seeded per cache
 * (from getrandom) and per verifier, so nobody can aim tokens at one bucket
 * and a token is looked for only among the entries of its own verifier.
 * A hash match is never trusted alone: the entry's verifier identity and the
 * whole token, kept in the claims, must match too.
 *
 * Entries honour exp: an entry is valid while now_s < exp + leeway, exactly
 * the window in which tp_jwt_verify() would still accept the token; one found
 * past it is dropped, and the caller verifies again (and gets "expired").
 * A full bucket gives up an expired entry first, then one not hit since the
 * bucket was last swept (CLOCK-style second chance), the one expiring soonest.
 * Nothing is allocated after creation. [shard]
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <turnpike/hash.h>

#include "auth/auth_int.h"

#define BUCKET    8
#define MAX_SLOTS (1u << 24)

struct centry {
    uint64_t vid;                 /* tp_jwt_verifier.id that verified the token */
    int64_t valid_until;          /* [s] exp + the verifier's leeway: a hit needs now_s < valid_until */
    struct tp_jwt_claims *claims; /* one reference; NULL when the slot is free */
    bool hit;                     /* hit since its bucket was last swept */
};

struct tp_jwt_cache {
    uint64_t *hashes; /* per slot; 0 = free (a hash of 0 is stored as 1) */
    struct centry *e; /* per slot */
    size_t n_buckets;
    uint64_t seed;
    struct tp_jwt_cache_stats st;
};

struct tp_jwt_cache *tp_jwt_cache_create(size_t slots, int *errp)
{
    struct tp_jwt_cache *c;
    int err = -ENOMEM;

    if (!slots)
        slots = TP_JWT_CACHE_DEFAULT_SLOTS;
    if (slots > MAX_SLOTS) {
        err = -EINVAL;
        goto fail;
    }
    slots = (slots + BUCKET - 1) / BUCKET * BUCKET;
    c = calloc(1, sizeof(*c));
    if (!c)
        goto fail;
    c->n_buckets = slots / BUCKET;
    c->hashes = aligned_alloc(64, slots * sizeof(*c->hashes));
    c->e = calloc(slots, sizeof(*c->e));
    if (!c->hashes || !c->e) {
        tp_jwt_cache_destroy(c);
        goto fail;
    }
    memset(c->hashes, 0, slots * sizeof(*c->hashes));
    /* Without randomness the cache still works; only bucket aiming gets easier. */
    if (getrandom(&c->seed, sizeof(c->seed), GRND_NONBLOCK) != sizeof(c->seed))
        c->seed = (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ull;
    return c;

fail:
    if (errp)
        *errp = err;
    return NULL;
}

static void drop(struct tp_jwt_cache *c, size_t slot)
{
    tp_jwt_claims_put(c->e[slot].claims);
    c->e[slot].claims = NULL;
    c->hashes[slot] = 0;
    c->st.entries--;
}

void tp_jwt_cache_clear(struct tp_jwt_cache *c)
{
    for (size_t i = 0; i < c->n_buckets * BUCKET; i++)
        if (c->e[i].claims)
            drop(c, i);
}

void tp_jwt_cache_destroy(struct tp_jwt_cache *c)
{
    if (!c)
        return;
    if (c->hashes && c->e)
        tp_jwt_cache_clear(c);
    free(c->hashes);
    free(c->e);
    free(c);
}

static uint64_t token_hash(const struct tp_jwt_cache *c, const struct tp_jwt_verifier *v, const char *tok,
                           size_t len)
{
    uint64_t h = XXH3_64bits_withSeed(tok, len, c->seed ^ (v->id * 0x9e3779b97f4a7c15ull));
    return h ? h : 1;
}

/* First slot of the bucket of <h>: a multiply-shift maps the hash onto any bucket count. */
static size_t bucket_of(const struct tp_jwt_cache *c, uint64_t h)
{
    return (size_t)(((unsigned __int128)h * c->n_buckets) >> 64) * BUCKET;
}

struct tp_jwt_claims *tp_jwt_cache_lookup(struct tp_jwt_cache *c, const struct tp_jwt_verifier *v,
                                          const char *tok, size_t len, int64_t now_s)
{
    uint64_t h = token_hash(c, v, tok, len);
    size_t b = bucket_of(c, h);

    for (size_t i = b; i < b + BUCKET; i++) {
        if (c->hashes[i] != h)
            continue;
        struct centry *e = &c->e[i];
        if (e->vid != v->id || e->claims->tok_len != len || memcmp(e->claims->tok, tok, len) != 0)
            continue; /* a 64-bit collision: not this token */
        if (now_s >= e->valid_until) {
            drop(c, i);
            c->st.expired++;
            break;
        }
        e->hit = true;
        c->st.hits++;
        return tp_jwt_claims_get(e->claims);
    }
    c->st.misses++;
    return NULL;
}

void tp_jwt_cache_insert(struct tp_jwt_cache *c, const struct tp_jwt_verifier *v,
                         struct tp_jwt_claims *claims, int64_t now_s)
{
    uint64_t h = token_hash(c, v, claims->tok, claims->tok_len);
    size_t b = bucket_of(c, h), victim = SIZE_MAX, cold = SIZE_MAX, soonest = SIZE_MAX;
    int64_t until = claims->exp + v->leeway_s; /* exp is within 2^53: no overflow */

    if (now_s >= until)
        return;
    for (size_t i = b; i < b + BUCKET; i++) {
        struct centry *e = &c->e[i];
        if (!e->claims) {
            if (victim == SIZE_MAX)
                victim = i;
            continue;
        }
        if (c->hashes[i] == h && e->vid == v->id && e->claims->tok_len == claims->tok_len &&
            memcmp(e->claims->tok, claims->tok, claims->tok_len) == 0) {
            victim = i; /* the same token again: replace it in place */
            break;
        }
        if (now_s >= e->valid_until) {
            drop(c, i);
            c->st.expired++;
            if (victim == SIZE_MAX)
                victim = i;
            continue;
        }
        if (!e->hit && (cold == SIZE_MAX || e->valid_until < c->e[cold].valid_until))
            cold = i;
        if (soonest == SIZE_MAX || e->valid_until < c->e[soonest].valid_until)
            soonest = i;
    }
    if (victim == SIZE_MAX) {
        /* a full bucket of live entries: sweep it (second chance ends), evict one */
        victim = cold != SIZE_MAX ? cold : soonest;
        for (size_t i = b; i < b + BUCKET; i++)
            c->e[i].hit = false;
        c->st.evictions++;
    }
    if (c->e[victim].claims)
        drop(c, victim);
    c->hashes[victim] = h;
    c->e[victim] = (struct centry){
        .vid = v->id,
        .valid_until = until,
        .claims = tp_jwt_claims_get(claims),
    };
    c->st.entries++;
}

void tp_jwt_cache_stats(const struct tp_jwt_cache *c, struct tp_jwt_cache_stats *out)
{
    *out = c->st;
}

enum tp_auth_status tp_jwt_authenticate(const struct tp_jwt_verifier *v, struct tp_jwt_cache *c,
                                        const char *tok, size_t len, int64_t now_s,
                                        struct tp_jwt_claims **out, const char **reason)
{
    enum tp_auth_status st;

    /* an oversized token is never cached: refuse it without hashing it */
    if (c && len && len <= v->max_token_len) {
        *out = tp_jwt_cache_lookup(c, v, tok, len, now_s);
        if (*out) {
            if (reason)
                *reason = "ok (cached)";
            return TP_AUTH_OK;
        }
    }
    st = tp_jwt_verify(v, tok, len, now_s, out, reason);
    if (st == TP_AUTH_OK && c)
        tp_jwt_cache_insert(c, v, *out, now_s);
    return st;
}
