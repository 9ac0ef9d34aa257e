/* SPDX-License-Identifier: MIT */
/*
 * The router: which route serves a request (docs/reference.md "Route selection").
 *
 * Built once from a tp_config on the control thread into an immutable
 * structure, then read by every shard with no locks and no writes at all.
 *
 * Structure: a host table (exact hosts in an XXH3-keyed open-addressing hash
 * table; then wildcard suffixes, longest first; then the any-host entry). Each
 * host entry owns a path trie on '/'-separated segments. A trie node holds the
 * routes whose `path` (exact) or `path_prefix` ends there, each list in file
 * order. Lookup walks host candidates from most to least specific; for each,
 * path candidates (exact node first, then prefixes from longest to "/"); for
 * each, routes in file order, returning the first whose methods and headers
 * match. So a request falls through to a less specific route when a more
 * specific one's method or headers do not match.
 *
 * Paths are matched on the raw request target up to '?', not percent-decoded
 * ("/a%2Fb" is one segment). Rejecting "." and ".." segments is the data
 * plane's job (400) and happens before lookup.
 *
 * Ownership: config generation (lives in the snapshot).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

struct tp_router;

/**
 * Header accessor used for `match.headers`: returns the value of the first
 * header named <name> (lowercase, <name_len> bytes) and its length in
 * <value_len>, or NULL when absent. <ctx> is the caller's.
 */
typedef const char *(*tp_router_header_fn)(void *ctx, const char *name, size_t name_len, size_t *value_len);

/** What a lookup looks at. */
struct tp_route_req {
    unsigned method; /* llhttp method number (HTTP_GET ...) */
    const char
        *host; /* Host header or absolute-form authority, raw (any case, may have :port); may be NULL */
    size_t host_len;
    const char *path; /* request target up to, not including, '?' */
    size_t path_len;
    tp_router_header_fn header; /* may be NULL when no route matches on headers */
    void *header_ctx;
};

/**
 * Builds the router for <cfg>. <targets>[i] is what lookup returns for
 * cfg->routes[i]. Returns NULL on allocation failure (and sets *<err> when not
 * NULL). [control]
 */
struct tp_router *tp_router_create(const struct tp_config *cfg, void *const *targets, int *err);

/** Frees <r>. Only once no shard can read it any more. [control] */
void tp_router_destroy(struct tp_router *r);

/**
 * Returns the target of the most specific route matching <req>, or NULL.
 * Writes the index of that route into *<route_idx> when not NULL. No
 * allocation, no locks, no writes to <r>. [any]
 */
void *tp_router_lookup(const struct tp_router *r, const struct tp_route_req *req, size_t *route_idx);

/**
 * Picks a split arm by weight: returns an index into <split> such that arm i
 * is chosen for a share weight_i / sum of <rnd> values uniform in [0, 2^32).
 * [any]
 */
size_t tp_router_split_pick(const struct tp_cfg_split *split, size_t n_split, uint32_t rnd);

/**
 * Normalizes a Host value for matching: drops a ":port" (and the brackets of
 * an IPv6 literal are kept), lowercases into <out> (at most <cap> bytes) and
 * drops one trailing dot. Returns the length, or -1 when the value is not a
 * valid host (empty, too long, bad bytes). [any]
 */
int tp_router_host_normalize(const char *host, size_t len, char *out, size_t cap);
