/* SPDX-License-Identifier: MIT */
/*
 * Runtime snapshots and the state registry (docs/internals.md "Configuration
 * snapshots and reload (RCU)").
 *
 * A snapshot is the immutable runtime form of one configuration generation:
 * the router, the routes with their compiled header rewrites, the upstream
 * clusters with their endpoints and balancing tables. It is built on the
 * control thread, published through tp_snapshot_current with RCU, and never
 * modified afterwards (except the per-shard in-flight counters, each written
 * by its own shard only).
 *
 * State that must outlive a generation lives in registry objects keyed by
 * name, refcounted by the snapshots that use them:
 *   tp_route_state     route name          rate limiter, per-shard counters
 *   tp_upstream_state  upstream name       in-flight count (max_concurrent_requests)
 *   tp_endpoint_state  upstream/address    breaker, health, in-flight, per-shard
 *                                          keepalive pools and counters
 * A new snapshot adopts the object of the same name, so buckets, breakers,
 * health, pools and counters carry over a reload.
 *
 * Lifetimes: the control thread holds one reference on the current snapshot;
 * each shard holds one on the snapshot it reads and on each older one that
 * still has requests of that shard in flight. The last reference is dropped
 * by whoever holds it, but memory is freed on the control thread only
 * (tp_snapshot_collect), so registry objects are only touched there.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

/*
 * liburcu publishes with an inline-assembly xchg and readers load with a
 * plain load ordered by the data dependency: correct on every CPU, invisible
 * to ThreadSanitizer. Under TSan the publication is marked as a release and
 * the adoption as an acquire, the ordering rcu_xchg_pointer and
 * rcu_dereference guarantee, so that only real races are reported. Nothing
 * in other builds.
 */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define TP_HB_RELEASE(p) __tsan_release(p)
#define TP_HB_ACQUIRE(p) __tsan_acquire(p)
#else
#define TP_HB_RELEASE(p) ((void)(p))
#define TP_HB_ACQUIRE(p) ((void)(p))
#endif

struct tp_breaker;
struct tp_ratelimit;
struct tp_lease_table;

#define TP_MAX_SHARDS 256
#define TP_CACHELINE  64

/* Histogram bucket bounds [us] for request and upstream durations: 100 us to 30 s. */
#define TP_HIST_BUCKETS 17
extern const uint64_t tp_hist_bounds_us[TP_HIST_BUCKETS];

/** A counter written by one shard and read by the control thread. */
typedef _Atomic uint64_t tp_stat_t;

static inline void tp_stat_add(tp_stat_t *c, uint64_t v)
{
    /* single writer: a plain load/add/store, no locked instruction */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v, memory_order_relaxed);
}

/** A gauge of one writer. */
static inline void tp_stat_set(tp_stat_t *c, uint64_t v)
{
    atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline uint64_t tp_stat_get(const tp_stat_t *c)
{
    return atomic_load_explicit((tp_stat_t *)c, memory_order_relaxed);
}

struct tp_hist {
    tp_stat_t bucket[TP_HIST_BUCKETS + 1]; /* last = +Inf */
    tp_stat_t sum_us;
    tp_stat_t count;
};

void tp_hist_observe(struct tp_hist *h, uint64_t us);

/** Per-shard counters of one route. [written: its shard; read: control] */
struct tp_route_stats {
    tp_stat_t requests[5]; /* by status class 1xx..5xx */
    tp_stat_t ratelimited;
    tp_stat_t rl_fallback;    /* global limit decided by on_failure (store down) */
    tp_stat_t tunnels_active; /* gauge: +1 when a tunnel starts, -1 when it ends (or its route goes) */
    tp_stat_t tunnels_total;
    tp_stat_t auth_rejected[4]; /* by reason: missing, invalid, expired, forbidden */
    tp_stat_t grpc[18];         /* gRPC calls by grpc-status 0..16, [17] any other value */
    struct tp_hist duration;
} __attribute__((aligned(TP_CACHELINE)));

/** Per-shard state of one endpoint. [shard i only, except counters read by control] */
struct tp_ep_shard {
    void *idle;            /* keepalive pool of the shard's upstream exchange (LIFO head) */
    void *h2;              /* the shard's HTTP/2 connections to the endpoint (h2_client.c) */
    tp_stat_t idle_count;  /* connections in it (HTTP/2: connections without a stream) */
    tp_stat_t h2_streams;  /* HTTP/2 streams open or waiting for a connection (gauge) */
    tp_stat_t requests[5]; /* upstream responses by class */
    tp_stat_t connect_failures;
    tp_stat_t connects;      /* connections opened */
    struct tp_hist duration; /* upstream time to response end */
} __attribute__((aligned(TP_CACHELINE)));

/** A rate limiter shared by the generations whose route keys it the same way. [control refcount] */
struct tp_rl_ref {
    struct tp_ratelimit *rl;
    struct tp_lease_table *lease; /* scope: global: the leased pools (rl serves on_failure: local) */
    int refs;                     /* route state + snapshots using it */
    enum tp_key_kind kind;        /* what it is keyed by: a new key starts a new limiter */
    bool global;                  /* scope: a new scope starts a new limiter too */
    char name[128];               /* header name for TP_KEY_HEADER */
    bool fresh;                   /* created by a build not yet published */
};

struct tp_route_state {
    char *name;
    int refs;                     /* snapshots using it [control] */
    struct tp_rl_ref *rl;         /* the route's current limiter; NULL until a generation limits it */
    struct tp_route_stats *stats; /* [n_shards] */
};

struct tp_upstream_state {
    char *name;
    int refs;
    uint64_t dns_failures; /* failed or empty answers for its endpoint names [control] */
    _Atomic uint64_t inflight __attribute__((aligned(TP_CACHELINE)));
};

enum tp_health {
    TP_HEALTH_HEALTHY = 0,
    TP_HEALTH_UNHEALTHY,
};

struct tp_endpoint_state {
    char *key; /* "upstream/address" */
    struct tp_addr addr;
    char *upstream; /* upstream name (label) */
    int refs;
    _Atomic bool retired;       /* no longer in the current snapshot: pools must not keep connections */
    struct tp_breaker *breaker; /* created when a generation first configures one; kept */
    _Atomic int healthy __attribute__((aligned(TP_CACHELINE))); /* 1 healthy, 0 not */
    _Atomic uint64_t inflight __attribute__((aligned(TP_CACHELINE)));
    /* health check bookkeeping [control] */
    uint32_t hc_ok, hc_fail;
    bool hc_running;
    uint64_t hc_next_ms;
    uint64_t live_gen;         /* newest generation using it [control] */
    struct tp_ep_shard *shard; /* [n_shards] */
};

struct tp_rt_endpoint {
    const struct tp_cfg_endpoint *cfg; /* a resolved endpoint's own: cfg->name is the name it came from */
    struct tp_endpoint_state *st;
    struct tp_breaker *breaker; /* st->breaker when this generation's upstream has a circuit_breaker */
};

struct tp_maglev;
struct tp_rt_upstream {
    const struct tp_cfg_upstream *cfg;
    struct tp_upstream_state *st;
    struct tp_rt_endpoint *eps;
    size_t n_eps;
    uint32_t *weights;                /* [n_eps] */
    struct tp_maglev *maglev;         /* balance: hash */
    int64_t *swrr;                    /* [n_shards][swrr_stride] smooth WRR state per shard */
    size_t swrr_stride;               /* entries per shard, padded to a cache line */
    struct tp_tls_client *tls;        /* upstreams[].tls; NULL = plain (owned by the snapshot's base) */
    struct tp_cfg_endpoint *resolved; /* settings of the endpoints resolved from names (owned) */
};

struct tp_tls_server;
struct tp_tls_client;

/** A listener of a generation: its TLS contexts (certificates as read at this load). */
struct tp_rt_listener {
    const struct tp_cfg_listener *cfg;
    struct tp_tls_server *tls; /* NULL = plain HTTP */
};

/** A header set by a rewrite, pre-rendered as "Name: value\r\n". */
struct tp_rt_rewrite {
    const struct tp_header_rewrite *cfg;
    char *set_block; /* all `set` lines concatenated */
    size_t set_len;
};

struct tp_rt_route {
    const struct tp_cfg_route *cfg;
    size_t index;
    struct tp_route_state *st;
    struct tp_rt_upstream *up;     /* upstream: NAME; NULL for split and direct */
    struct tp_rt_upstream **split; /* [cfg->n_split] */
    struct tp_rt_rewrite req, resp;
    size_t strip_len;              /* strlen(cfg->strip_prefix) or 0 */
    struct tp_ratelimit *rl;       /* rlref->rl when this generation's route has a rate_limit */
    struct tp_lease_table *lease;  /* rlref->lease when it is scope: global */
    struct tp_rl_ref *rlref;       /* holds a reference */
    bool resp_has_ctype;           /* response_headers sets Content-Type */
    const struct tp_rt_auth *auth; /* routes[].auth's provider; NULL = none */
};

struct tp_jwt_verifier;
struct tp_apikeys;

/** An auth provider of a generation: its keys as read at this load. */
struct tp_rt_auth {
    const struct tp_cfg_auth *cfg;
    struct tp_jwt_verifier *jwt; /* jwt providers */
    struct tp_apikeys *keys;     /* api_key providers */
};

struct tp_router;
struct tp_gen_base;
struct tp_snapshot {
    uint64_t generation;
    uint64_t loaded_at_real_ns;
    struct tp_config *cfg;    /* base's */
    struct tp_gen_base *base; /* what the load of cfg made (shared by rebuilds, refcounted) */
    struct tp_router *router;
    struct tp_rt_route *routes;
    size_t n_routes;
    struct tp_rt_upstream *ups;
    size_t n_ups;
    struct tp_rt_listener *lis;
    size_t n_lis;
    struct tp_rt_auth *auths;
    size_t n_auths;
    _Atomic long refs;
    unsigned n_shards;
    /* in-flight requests per shard on this snapshot: shard i writes [i*16] only */
    uint32_t *shard_inflight;
};

/** The published snapshot (RCU pointer). Read with rcu_dereference on a registered thread. */
extern struct tp_snapshot *tp_snapshot_current;

/**
 * Builds a snapshot from <cfg> (taking ownership of it on success), adopting
 * registry objects by name. Returns NULL and fills <diag> on failure; <cfg>
 * stays the caller's then. [control]
 */
struct tp_snapshot *tp_snapshot_build(struct tp_config *cfg, unsigned n_shards, uint64_t generation,
                                      struct tp_diag *diag);

/**
 * Loads the files <cfg> names that the loader does not read (the auth
 * providers' JWKS and key files) and drops them again: what `-t` checks
 * beyond the YAML. false: <diag> has the errors, as a load would report them.
 */
bool tp_snapshot_check_files(const struct tp_config *cfg, struct tp_diag *diag);

/**
 * Builds a snapshot from the current one's configuration (no file is read:
 * the configuration, TLS contexts and auth providers are shared with it)
 * with the resolved address sets as they are now. For a change of a resolved
 * set. NULL (and <diag>) on failure; nothing changes then. [control]
 */
struct tp_snapshot *tp_snapshot_rebuild(uint64_t generation, struct tp_diag *diag);

/*
 * Resolved address sets, keyed by upstream and endpoint name: the last good
 * answer for each name (src/upstream/dns.c writes them), which every build
 * expands into endpoints, one per address, with the name's weight. A name
 * without a set has no endpoints. They outlive generations. [control]
 */

/** Sets the addresses of <name> in <upstream> (sorted by the caller). 1 changed, 0 same, -ENOMEM. */
int tp_resolved_update(const char *upstream, const char *name, const struct tp_addr *addrs, size_t n);

/** The addresses of <name> in <upstream>: NULL (never resolved) or the set, <*n> of them. */
const struct tp_addr *tp_resolved_get(const char *upstream, const char *name, size_t *n);

/** Forgets the sets of names <cfg> no longer has (after a reload). */
void tp_resolved_prune(const struct tp_config *cfg);

/** Publishes <s> as current and retires the previous one (synchronize_rcu inside). [control] */
void tp_snapshot_publish(struct tp_snapshot *s);

/** Takes a reference. [any] */
static inline void tp_snapshot_get(struct tp_snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

/** Drops a reference; memory is reclaimed later by tp_snapshot_collect. [any] */
static inline void tp_snapshot_put(struct tp_snapshot *s)
{
    atomic_fetch_sub_explicit(&s->refs, 1, memory_order_release);
}

/** Frees retired snapshots nobody holds any more. Returns how many remain. [control] */
size_t tp_snapshot_collect(void);

/** Drops the current snapshot and frees everything (at exit, after the shards ended). [control] */
void tp_snapshot_shutdown(void);

/** References on an endpoint state held outside snapshots (health probes). [control] */
void tp_endpoint_state_get(struct tp_endpoint_state *st);
void tp_endpoint_state_put(struct tp_endpoint_state *st);

/** Calls <fn> for every live endpoint state / route state (for /metrics). [control] */
void tp_registry_each_endpoint(void (*fn)(struct tp_endpoint_state *st, void *ctx), void *ctx);
void tp_registry_each_route(void (*fn)(struct tp_route_state *st, void *ctx), void *ctx);

/** Number of shards the registry's per-shard arrays are sized for. */
unsigned tp_registry_shards(void);

/** The TLS server of the listener named <name> in <s>, or NULL (plain). [any] */
struct tp_tls_server *tp_snapshot_listener_tls(const struct tp_snapshot *s, const char *name);

/** Status class index 0..4 for 1xx..5xx. */
static inline unsigned tp_status_class(unsigned status)
{
    unsigned c = status / 100;
    return c >= 1 && c <= 5 ? c - 1 : 4;
}
