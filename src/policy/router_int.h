/* SPDX-License-Identifier: MIT */
/*
 * Router internals shared with its unit test and bench (not part of the
 * module's interface): the tuning thresholds of the child lookup and a
 * statistics call that describes the built structure.
 *
 * Thread: tp_router_stats() only reads the router, [any].
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <turnpike/router.h>

/*
 * Children of a trie node are a sorted array of segment keys. Up to
 * TP_ROUTER_LINEAR_MAX children are scanned linearly (they sit in one or two
 * cache lines), more are binary searched, and a node with more than
 * TP_ROUTER_HASH_MIN children also gets an XXH3-keyed open-addressing index,
 * so a wide level (/svc0 ... /svc99999) costs one hash and about one probe
 * instead of ~17 dependent loads. Values chosen with bench/router_bench.c
 * (docs/routing.md gives the figures); overridable at build time to measure.
 */
#ifndef TP_ROUTER_LINEAR_MAX
#define TP_ROUTER_LINEAR_MAX 8
#endif
#ifndef TP_ROUTER_HASH_MIN
#define TP_ROUTER_HASH_MIN 32
#endif

/*
 * With at most this many wildcard hosts, lookup compares the suffixes one by
 * one (longest first); with more, it hashes each suffix of the request's host
 * that starts at a dot, from the longest, and probes the host table.
 */
#ifndef TP_ROUTER_WILD_LINEAR_MAX
#define TP_ROUTER_WILD_LINEAR_MAX 8
#endif

/* Routers of at least this many bytes are mmap'ed 2 MiB aligned and offered
 * to transparent huge pages (see block_alloc() in router.c). */
#ifndef TP_ROUTER_HUGE_MIN
#define TP_ROUTER_HUGE_MIN (4u << 20)
#endif

/** What tp_router_create() built. */
struct tp_router_stats {
    size_t bytes;      /* the single allocation holding everything */
    size_t n_routes;   /* routes indexed (== cfg->n_routes) */
    size_t n_exact;    /* exact host entries */
    size_t n_wild;     /* wildcard host entries */
    int has_any;       /* 1 when some route has no host */
    size_t n_nodes;    /* trie nodes over all host entries */
    size_t n_hashed;   /* nodes with a child hash index */
    size_t host_slots; /* size of the host hash table */
    size_t max_depth;  /* deepest trie node, in segments */
};

/** Fills <st> for <r>. [any] */
void tp_router_stats(const struct tp_router *r, struct tp_router_stats *st);
