/* SPDX-License-Identifier: MIT */
/*
 * Edge authentication (docs/reference.md "Round 2 additions", Authentication): JWT
 * (compact JWS) verification against a JWKS file, API keys stored as SHA-256
 * digests, and a per-shard cache of verified tokens.
 *
 * A leaf module: it reads files and checks credentials, and knows nothing of
 * requests, routes or configuration generations. The request layer finds the
 * credential (tp_auth_bearer() for "Authorization: Bearer"), calls
 * tp_jwt_authenticate() or tp_apikeys_lookup(), maps the status to 401/403
 * and a metric reason (tp_auth_status_name()), and reads claims for
 * forward_claims, require_claims and claim:NAME rate-limit keys.
 *
 * Ownership:
 * - struct tp_jwks, struct tp_jwt_verifier, struct tp_apikeys: built on the
 *   control thread (start, reload, -t), immutable afterwards, read by every
 *   shard at once. A keyset is refcounted: each verifier holds a reference.
 * - struct tp_jwt_cache: one per shard, never touched by another thread.
 * - struct tp_jwt_claims: refcounted (atomically), made by a verification on
 *   a shard; the cache holds one reference, each caller that got it holds one.
 *
 * Time: every check takes <now_s>, UNIX time in seconds (CLOCK_REALTIME, as
 * "exp" is), read by the caller; nothing here reads a clock.
 * docs/auth.md describes the behaviour for operators.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Largest token accepted when the verifier options give 0. */
#define TP_JWT_DEFAULT_MAX_LEN 8192u
/** Largest JWKS or API-key file read. */
#define TP_AUTH_MAX_FILE (4u << 20)
/** Slots of a verified-token cache when 0 is given (rounded up to a multiple of 8). */
#define TP_JWT_CACHE_DEFAULT_SLOTS 16384u

/**
 * Outcome of an authentication. OK is 0; MISSING..FORBIDDEN are the values of
 * the `reason` label of turnpike_auth_rejected_total; INTERNAL is not the
 * credential's fault (out of memory) and is answered 503, not counted as a
 * rejection.
 */
enum tp_auth_status {
    TP_AUTH_OK = 0,
    TP_AUTH_MISSING,   /* no credential where the provider looks for one: 401 */
    TP_AUTH_INVALID,   /* malformed, bad signature, unknown key, iss/aud/nbf/iat refused: 401 */
    TP_AUTH_EXPIRED,   /* a genuine token whose exp has passed (beyond the leeway): 401 */
    TP_AUTH_FORBIDDEN, /* valid, but a required claim is missing or different: 403 */
    TP_AUTH_INTERNAL,  /* could not be decided (out of memory): 503 */
    TP_AUTH__COUNT
};

/** "ok", "missing", "invalid", "expired", "forbidden", "internal". [any] */
const char *tp_auth_status_name(enum tp_auth_status s);

/**
 * Finds the token in an Authorization header value <v> of <len> bytes: the
 * scheme "Bearer" (any case), one or more spaces, then the token, with
 * trailing spaces or tabs ignored. Sets *<tok> and *<tok_len> to point into
 * <v>. Returns 0, or -ENOENT when <v> is another scheme or has no token. [any]
 */
int tp_auth_bearer(const char *v, size_t len, const char **tok, size_t *tok_len);

/* ---- JWKS (RFC 7517) ---- */

struct tp_jwks;

/**
 * Parses a JWK Set from <json> (<len> bytes) and builds each key once: RSA
 * (n, e; at least 2048 bits), EC (P-256 or P-384; x, y of the curve's full
 * size, on the curve), OKP (Ed25519; x) and oct (k; at least 32 bytes). A key
 * whose "use" is not "sig", whose "key_ops" lack "verify", whose "alg" is not
 * a signature algorithm turnpike verifies, or whose kty/crv it does not know
 * is skipped, with a note (tp_jwks_note()). Anything malformed fails the whole
 * set: bad JSON, a supported key with a missing or invalid member, a private
 * member ("d", ...) in an RSA/EC/OKP key, two usable keys with the same kid,
 * or no usable key at all.
 * Returns a keyset holding one reference, or NULL with *<err> (if not NULL)
 * set to -EINVAL or -ENOMEM and a one-line message naming the key and the
 * problem in <errbuf> (<errlen> bytes, may be 0). [control]
 */
struct tp_jwks *tp_jwks_load_mem(const char *json, size_t len, char *errbuf, size_t errlen, int *err);

/** As tp_jwks_load_mem() on the file at <path>; the message starts with <path>. [control] */
struct tp_jwks *tp_jwks_load_file(const char *path, char *errbuf, size_t errlen, int *err);

/** Takes a reference to <ks> and returns it. [any] */
struct tp_jwks *tp_jwks_get(struct tp_jwks *ks);

/** Drops a reference; the last one frees the keyset. NULL is fine. [any] */
void tp_jwks_put(struct tp_jwks *ks);

/** Number of usable keys in <ks>. [any] */
size_t tp_jwks_count(const struct tp_jwks *ks);

/** The <i>th note about a skipped key (for the log), or NULL past the last one. [any] */
const char *tp_jwks_note(const struct tp_jwks *ks, size_t i);

/* ---- JWT verification ---- */

/** What a JWT provider checks besides the signature. */
struct tp_jwt_opts {
    const char *issuer;           /* "iss" must equal it; NULL = not checked */
    const char *const *audiences; /* "aud" must contain one of them */
    size_t n_audiences;           /* 0 = aud not checked */
    int64_t leeway_s;             /* [s] clock skew allowed for exp, nbf and iat (>= 0) */
    size_t max_token_len;         /* [bytes] longer tokens are refused; 0 = TP_JWT_DEFAULT_MAX_LEN */
};

struct tp_jwt_verifier;
struct tp_jwt_claims;

/**
 * Creates a verifier of tokens signed by a key of <keys> (it takes its own
 * reference) and checked against <opts> (copied: nothing of <opts> is
 * referenced after the call). Every verifier gets an identity of its own, so
 * entries a cache holds for one verifier are never returned for another, not
 * even for a later verifier at the same address.
 * Returns NULL and sets *<err> to -EINVAL (negative leeway) or -ENOMEM. [control]
 */
struct tp_jwt_verifier *tp_jwt_verifier_create(struct tp_jwks *keys, const struct tp_jwt_opts *opts,
                                               int *err);

/** Frees <v> and drops its keyset reference; no verification may be running. NULL is fine. [control] */
void tp_jwt_verifier_destroy(struct tp_jwt_verifier *v);

/**
 * Verifies the compact JWS <tok> (<len> bytes) at time <now_s>: structure and
 * base64url, header (alg, kid, crit), the key, the signature, then the
 * claims (exp required, nbf, iat, iss, aud). Claims are looked at only once
 * the signature holds, so a forged token is always INVALID, never EXPIRED.
 * On TP_AUTH_OK, *<out> receives a new reference to the claims (release it
 * with tp_jwt_claims_put()); otherwise *<out> is NULL. *<reason> (if not
 * NULL) always receives a static string for logs ("ok" on success), finer
 * than the status: it may name the check that failed but never echoes the
 * token. Allocates (the JSON of header and payload, OpenSSL contexts); use a
 * cache on the data path. [any]
 */
enum tp_auth_status tp_jwt_verify(const struct tp_jwt_verifier *v, const char *tok, size_t len, int64_t now_s,
                                  struct tp_jwt_claims **out, const char **reason);

/* ---- claims ---- */

/** Takes a reference to <c> and returns it. [any] */
struct tp_jwt_claims *tp_jwt_claims_get(struct tp_jwt_claims *c);

/** Drops a reference; the last one frees the claims. NULL is fine. [any] */
void tp_jwt_claims_put(struct tp_jwt_claims *c);

/**
 * The string claim <name> of <c> (no NUL inside: JSON "\u0000" is refused),
 * with its length in *<len> (if not NULL), or NULL when the claim is absent
 * or not a string. Points into <c>: valid while the caller holds its
 * reference. The value is the issuer's text: a caller that copies it into a
 * header must refuse control characters. Does not allocate. [any]
 */
const char *tp_jwt_claims_str(const struct tp_jwt_claims *c, const char *name, size_t *len);

/** The "sub" claim, as tp_jwt_claims_str(c, "sub", len). [any] */
const char *tp_jwt_claims_subject(const struct tp_jwt_claims *c, size_t *len);

/** [s] The "exp" claim of <c> (always present in verified claims). [any] */
int64_t tp_jwt_claims_exp(const struct tp_jwt_claims *c);

/**
 * The require_claims test: true when claim <name> of <c> equals <value>
 * (<value_len> bytes) - a string with the same bytes, an integer written in
 * decimal as <value>, or a boolean and "true"/"false" - or, for an array
 * claim, when one element does; and for the "scope" claim, a string, when
 * one of its space-separated words does. Does not allocate. [any]
 */
bool tp_jwt_claims_match(const struct tp_jwt_claims *c, const char *name, const char *value,
                         size_t value_len);

/* ---- verified-token cache (one per shard) ---- */

struct tp_jwt_cache;

/**
 * Creates a cache of <slots> verified tokens (0 = TP_JWT_CACHE_DEFAULT_SLOTS;
 * rounded up to a multiple of 8, at most 2^24). Memory: 40 bytes a slot plus
 * the claims and token of each entry. Returns NULL and sets *<err> to -EINVAL
 * or -ENOMEM. [shard] (the shard that will use it)
 */
struct tp_jwt_cache *tp_jwt_cache_create(size_t slots, int *err);

/** Drops every entry's reference and frees <c>. NULL is fine. [shard] */
void tp_jwt_cache_destroy(struct tp_jwt_cache *c);

/**
 * Looks up <tok> (<len> bytes) as verified by <v>, at time <now_s>. A hit
 * needs the same verifier, the same token bytes (compared in full, not only
 * the hash) and an exp that, with <v>'s leeway, has not passed; an entry
 * found expired is dropped. Returns a new reference to the claims (release
 * with tp_jwt_claims_put()) or NULL. Does not allocate. [shard]
 */
struct tp_jwt_claims *tp_jwt_cache_lookup(struct tp_jwt_cache *c, const struct tp_jwt_verifier *v,
                                          const char *tok, size_t len, int64_t now_s);

/**
 * Remembers <claims>, just returned by tp_jwt_verify(<v>, ...) for the token
 * they hold, at time <now_s>; the cache takes its own reference. When the
 * token's 8-slot bucket is full, an expired entry is replaced first, then
 * one not hit since the bucket was last swept, the one expiring soonest among
 * them. Does not allocate. [shard]
 */
void tp_jwt_cache_insert(struct tp_jwt_cache *c, const struct tp_jwt_verifier *v,
                         struct tp_jwt_claims *claims, int64_t now_s);

/** Drops every entry. [shard] */
void tp_jwt_cache_clear(struct tp_jwt_cache *c);

/** Counters of one cache, totals since creation. */
struct tp_jwt_cache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t expired;   /* entries dropped because their exp had passed */
    uint64_t evictions; /* live entries replaced because their bucket was full */
    uint64_t entries;   /* entries held now */
};

/** Copies the counters of <c>. [shard] */
void tp_jwt_cache_stats(const struct tp_jwt_cache *c, struct tp_jwt_cache_stats *out);

/**
 * The data-path entry point: tp_jwt_cache_lookup(), and on a miss
 * tp_jwt_verify() then tp_jwt_cache_insert() of a valid token. <c> may be
 * NULL (no cache). A token of length 0 is TP_AUTH_MISSING. Outputs as for
 * tp_jwt_verify(); on a hit *<reason> is "ok (cached)". [shard]
 */
enum tp_auth_status tp_jwt_authenticate(const struct tp_jwt_verifier *v, struct tp_jwt_cache *c,
                                        const char *tok, size_t len, int64_t now_s,
                                        struct tp_jwt_claims **out, const char **reason);

/* ---- API keys ---- */

struct tp_apikeys;
struct tp_apikey;

/**
 * Parses an API-key file <yaml> (<len> bytes): a YAML sequence of mappings
 * {name, sha256: 64 hex digits, tenant (optional)}. Names and digests must be
 * unique; unknown keys, aliases and non-scalar values are refused; an empty
 * sequence is allowed (no key admits anything). Returns the table, or NULL
 * with *<err> (-EINVAL, -ENOMEM) and a message with line and column in
 * <errbuf>. [control]
 */
struct tp_apikeys *tp_apikeys_load_mem(const char *yaml, size_t len, char *errbuf, size_t errlen, int *err);

/** As tp_apikeys_load_mem() on the file at <path>; the message starts with <path>. [control] */
struct tp_apikeys *tp_apikeys_load_file(const char *path, char *errbuf, size_t errlen, int *err);

/** Frees <t>; no lookup may be running. NULL is fine. [control] */
void tp_apikeys_destroy(struct tp_apikeys *t);

/** Number of keys in <t>. [any] */
size_t tp_apikeys_count(const struct tp_apikeys *t);

/**
 * Hashes the presented <key> (<len> bytes) with SHA-256 and returns its entry,
 * or NULL. Digests are compared with CRYPTO_memcmp (no early exit on the
 * first differing byte). [any]
 */
const struct tp_apikey *tp_apikeys_lookup(const struct tp_apikeys *t, const char *key, size_t len);

/** The entry's name (the access log's subject). Valid as long as its table. [any] */
const char *tp_apikey_name(const struct tp_apikey *k);

/** The entry's tenant, or NULL when the file gives none. [any] */
const char *tp_apikey_tenant(const struct tp_apikey *k);
