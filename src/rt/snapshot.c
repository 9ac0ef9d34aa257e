/* SPDX-License-Identifier: MIT */
/*
 * Runtime snapshots and the state registry (see snapshot.h). [control]
 *
 * Building a snapshot adopts the state objects of the current snapshot by
 * name (route, upstream, "upstream/address" for endpoints), so rate-limit
 * buckets, breakers, health, keepalive pools and counters survive a reload
 * of an unchanged name. Objects are refcounted by the snapshots that use
 * them; both counts and frees happen on the control thread only.
 *
 * Publishing is a transaction: everything is built first, any failure frees
 * the new snapshot and keeps the old one. Then the pointer is exchanged and
 * the control thread waits one RCU grace period, after which every shard
 * that still looks at the old snapshot holds its own reference; the old
 * snapshot goes on the retired list and is freed by tp_snapshot_collect()
 * once the last shard let go of it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define _LGPL_SOURCE
#include <urcu-qsbr.h>

#include <turnpike/auth.h>
#include <turnpike/balance.h>
#include <turnpike/breaker.h>
#include <turnpike/clock.h>
#include <turnpike/err.h>
#include <turnpike/hash.h>
#include <turnpike/log.h>
#include <turnpike/lease.h>
#include <turnpike/ratelimit.h>
#include <turnpike/router.h>
#include <turnpike/tls.h>

#include "rt/snapshot.h"

#if defined(__SANITIZE_THREAD__)
/* TSan builds (the binary and every test that links the reactor):
 * liburcu-qsbr's inlined reader paths (_LGPL_SOURCE in
 * src/rt/shard.c) synchronize their own counters with volatile accesses and
 * fences, which TSan reports as races. These patterns each name a liburcu
 * function, so a race on turnpike's own data is still reported. */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:urcu_qsbr_wake_up_gp\n"
           "race:_urcu_qsbr_quiescent_state\n"
           "race:_urcu_qsbr_thread_offline\n"
           "race:_urcu_qsbr_thread_online\n"
           "race:urcu_qsbr_synchronize_rcu\n";
}
#endif

struct tp_snapshot *tp_snapshot_current;

const uint64_t tp_hist_bounds_us[TP_HIST_BUCKETS] = {
    100,    250,    500,    1000,    2500,    5000,    10000,    25000,    50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};

void tp_hist_observe(struct tp_hist *h, uint64_t us)
{
    unsigned i = 0;
    /* buckets are not cumulative here; /metrics accumulates when rendering */
    while (i < TP_HIST_BUCKETS && us > tp_hist_bounds_us[i])
        i++;
    tp_stat_add(&h->bucket[i], 1);
    tp_stat_add(&h->sum_us, us);
    tp_stat_add(&h->count, 1);
}

static struct {
    unsigned n_shards;
    struct tp_snapshot **retired;
    size_t n_retired, cap_retired;
} reg;

unsigned tp_registry_shards(void)
{
    return reg.n_shards;
}

/* ---- a small name -> object index used while building ---- */

struct name_index {
    const char **keys;
    void **vals;
    size_t cap; /* power of two */
};

static int index_init(struct name_index *ix, size_t n)
{
    ix->cap = 16;
    while (ix->cap < n * 2)
        ix->cap <<= 1;
    ix->keys = calloc(ix->cap, sizeof(*ix->keys));
    ix->vals = calloc(ix->cap, sizeof(*ix->vals));
    return ix->keys && ix->vals ? 0 : -ENOMEM;
}

static void index_dispose(struct name_index *ix)
{
    free(ix->keys);
    free(ix->vals);
}

static void index_put(struct name_index *ix, const char *key, void *val)
{
    size_t i = tp_hash_bytes(key, strlen(key)) & (ix->cap - 1);
    while (ix->keys[i] && strcmp(ix->keys[i], key) != 0)
        i = (i + 1) & (ix->cap - 1);
    ix->keys[i] = key;
    ix->vals[i] = val;
}

static void *index_get(const struct name_index *ix, const char *key)
{
    size_t i = tp_hash_bytes(key, strlen(key)) & (ix->cap - 1);
    while (ix->keys[i]) {
        if (strcmp(ix->keys[i], key) == 0)
            return ix->vals[i];
        i = (i + 1) & (ix->cap - 1);
    }
    return NULL;
}

/* ---- state objects ---- */

static void *aligned_array(size_t n, size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, TP_CACHELINE, n * size > 0 ? n * size : TP_CACHELINE))
        return NULL;
    memset(p, 0, n * size);
    return p;
}

static struct tp_route_state *route_state_new(const char *name)
{
    struct tp_route_state *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->name = strdup(name);
    st->stats = aligned_array(reg.n_shards, sizeof(*st->stats));
    if (!st->name || !st->stats) {
        free(st->name);
        free(st->stats);
        free(st);
        return NULL;
    }
    return st;
}

static void rl_ref_put(struct tp_rl_ref *r)
{
    if (r && --r->refs == 0) {
        tp_ratelimit_destroy(r->rl);
        tp_lease_unref(r->lease);
        free(r);
    }
}

static bool rl_same_key(const struct tp_rl_ref *r, const struct tp_key *k, bool global)
{
    if (r->kind != k->kind || r->global != global)
        return false;
    /* header:NAME and claim:NAME key by a name too: another name starts over */
    return (k->kind != TP_KEY_HEADER && k->kind != TP_KEY_CLAIM) ||
           (k->name && strcmp(r->name, k->name) == 0);
}

/* The limiter for a route of the new generation: the route's current one when
 * it is keyed the same way (its buckets carry over; the new rate and burst
 * apply at publish), else a fresh one with full buckets. */
static struct tp_rl_ref *rl_for(struct tp_route_state *st, const struct tp_cfg_rate_limit *cfg, int *err)
{
    struct tp_rl_ref *r = st->rl;

    if (r && rl_same_key(r, &cfg->key, cfg->global)) {
        r->refs++;
        return r;
    }
    r = calloc(1, sizeof(*r));
    if (!r || !(r->rl = tp_ratelimit_create(cfg, 0, err)) ||
        (cfg->global && !(r->lease = tp_lease_create(st->name, cfg, 0, err)))) {
        if (r)
            tp_ratelimit_destroy(r->rl);
        free(r);
        return NULL;
    }
    r->global = cfg->global;
    r->kind = cfg->key.kind;
    if (cfg->key.name)
        snprintf(r->name, sizeof(r->name), "%s", cfg->key.name);
    r->refs = 1;
    r->fresh = true;
    return r;
}

static void route_state_put(struct tp_route_state *st)
{
    if (--st->refs > 0)
        return;
    rl_ref_put(st->rl);
    free(st->stats);
    free(st->name);
    free(st);
}

static struct tp_upstream_state *upstream_state_new(const char *name)
{
    struct tp_upstream_state *st = aligned_array(1, sizeof(*st));
    if (!st)
        return NULL;
    st->name = strdup(name);
    if (!st->name) {
        free(st);
        return NULL;
    }
    return st;
}

static void upstream_state_put(struct tp_upstream_state *st)
{
    if (--st->refs > 0)
        return;
    free(st->name);
    free(st);
}

static struct tp_endpoint_state *endpoint_state_new(const char *key, const char *upstream,
                                                    const struct tp_addr *addr)
{
    struct tp_endpoint_state *st = aligned_array(1, sizeof(*st));
    if (!st)
        return NULL;
    st->key = strdup(key);
    st->upstream = strdup(upstream);
    st->addr = *addr;
    st->shard = aligned_array(reg.n_shards, sizeof(*st->shard));
    atomic_store(&st->healthy, 1); /* endpoints start healthy */
    if (!st->key || !st->upstream || !st->shard) {
        free(st->key);
        free(st->upstream);
        free(st->shard);
        free(st);
        return NULL;
    }
    return st;
}

void tp_endpoint_state_get(struct tp_endpoint_state *st)
{
    st->refs++;
}

void tp_endpoint_state_put(struct tp_endpoint_state *st)
{
    if (--st->refs > 0)
        return;
    if (st->breaker)
        tp_breaker_destroy(st->breaker);
    free(st->shard);
    free(st->key);
    free(st->upstream);
    free(st);
}

/* ---- building ---- */

static char *render_set(const struct tp_header_rewrite *rw, size_t *len)
{
    size_t n = 0;
    char *buf, *p;

    for (size_t i = 0; i < rw->n_set; i++)
        n += rw->set[i].name_len + 2 + rw->set[i].value_len + 2;
    buf = malloc(n + 1);
    if (!buf)
        return NULL;
    p = buf;
    for (size_t i = 0; i < rw->n_set; i++) {
        memcpy(p, rw->set[i].name, rw->set[i].name_len);
        p += rw->set[i].name_len;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, rw->set[i].value, rw->set[i].value_len);
        p += rw->set[i].value_len;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = 0;
    *len = n;
    return buf;
}

/*
 * What one load of the file made: the configuration and what was built from
 * it and the files it names (listeners' TLS contexts, upstreams' TLS clients,
 * auth providers). A reload makes a new base; a snapshot rebuilt for a DNS
 * answer shares the current one, so no file is read again and a certificate
 * replaced on disk is not picked up by a DNS change. [control refcount]
 */
struct tp_gen_base {
    int refs;
    struct tp_config *cfg;
    struct tp_rt_listener *lis;
    size_t n_lis;
    struct tp_rt_auth *auths;
    size_t n_auths;
    struct tp_tls_client **up_tls; /* [cfg->n_upstreams] */
};

/* Frees <b> with what it built, and its cfg unless <keep_cfg>. */
static void base_free(struct tp_gen_base *b, bool keep_cfg)
{
    for (size_t i = 0; b->lis && i < b->n_lis; i++)
        tp_tls_server_destroy(b->lis[i].tls);
    free(b->lis);
    for (size_t i = 0; b->auths && i < b->n_auths; i++) {
        tp_jwt_verifier_destroy(b->auths[i].jwt);
        tp_apikeys_destroy(b->auths[i].keys);
    }
    free(b->auths);
    for (size_t i = 0; b->up_tls && b->cfg && i < b->cfg->n_upstreams; i++)
        tp_tls_client_destroy(b->up_tls[i]);
    free(b->up_tls);
    if (!keep_cfg)
        tp_config_destroy(b->cfg);
    free(b);
}

static void base_put(struct tp_gen_base *b)
{
    if (b && --b->refs == 0)
        base_free(b, false);
}

/* Builds the base of <cfg>: TLS contexts and auth providers, reading the
 * files they name. NULL on failure, with <diag> saying why; <cfg> stays the
 * caller's then. The base returned holds one reference (the builder's). */
static struct tp_gen_base *base_build(struct tp_config *cfg, struct tp_diag *diag)
{
    struct tp_gen_base *b = calloc(1, sizeof(*b));
    char e[512];

    if (!b)
        goto oom;
    b->refs = 1;
    b->cfg = cfg;
    b->lis = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof(*b->lis));
    b->auths = calloc(cfg->n_auth ? cfg->n_auth : 1, sizeof(*b->auths));
    b->up_tls = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof(*b->up_tls));
    if (!b->lis || !b->auths || !b->up_tls)
        goto oom;

    /* listeners: TLS contexts, certificates read again at every load */
    b->n_lis = cfg->n_listeners;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        b->lis[i].cfg = &cfg->listeners[i];
        if (cfg->listeners[i].tls &&
            !(b->lis[i].tls = tp_tls_server_create(cfg->listeners[i].tls, e, sizeof(e)))) {
            tp_diag_add(diag, "%s:%u:%u: listeners[%zu].tls: %s", cfg->source,
                        cfg->listeners[i].tls->pos.line, cfg->listeners[i].tls->pos.col, i, e);
            goto fail;
        }
    }

    /* auth providers: key files read again at every load; one that does not
     * load fails the load (a reload keeps the old keys) */
    b->n_auths = cfg->n_auth;
    for (size_t i = 0; i < cfg->n_auth; i++) {
        const struct tp_cfg_auth *ac = &cfg->auth[i];
        int aerr = 0;
        b->auths[i].cfg = ac;
        if (ac->jwt) {
            const struct tp_cfg_jwt *j = ac->jwt;
            struct tp_jwks *ks = tp_jwks_load_file(j->keys, e, sizeof(e), &aerr);
            if (ks) {
                struct tp_jwt_opts o = {
                    .issuer = j->issuer,
                    .audiences = (const char *const *)j->audiences,
                    .n_audiences = j->n_audiences,
                    .leeway_s = (int64_t)(j->clock_skew_ms / 1000),
                    .max_token_len = cfg->max_header_bytes,
                };
                for (size_t k = 0; tp_jwks_note(ks, k); k++)
                    tp_warn("auth[%zu].jwt.keys: %s", i, tp_jwks_note(ks, k));
                b->auths[i].jwt = tp_jwt_verifier_create(ks, &o, &aerr);
                tp_jwks_put(ks); /* the verifier holds its own reference */
                if (!b->auths[i].jwt)
                    snprintf(e, sizeof(e), "%s", strerror(-aerr));
            }
            if (!b->auths[i].jwt) {
                tp_diag_add(diag, "%s:%u:%u: auth[%zu].jwt.keys: %s", cfg->source, j->keys_pos.line,
                            j->keys_pos.col, i, e);
                goto fail;
            }
        } else if (ac->api_key) {
            const struct tp_cfg_api_key *k = ac->api_key;
            if (!(b->auths[i].keys = tp_apikeys_load_file(k->keys, e, sizeof(e), &aerr))) {
                tp_diag_add(diag, "%s:%u:%u: auth[%zu].api_key.keys: %s", cfg->source, k->keys_pos.line,
                            k->keys_pos.col, i, e);
                goto fail;
            }
        }
    }

    /* upstreams' TLS clients */
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const struct tp_cfg_upstream *uc = &cfg->upstreams[i];
        if (uc->tls && !(b->up_tls[i] = tp_tls_client_create(uc->tls, e, sizeof(e)))) {
            tp_diag_add(diag, "%s:%u:%u: upstreams[%zu].tls: %s", cfg->source, uc->tls->pos.line,
                        uc->tls->pos.col, i, e);
            goto fail;
        }
    }
    return b;

oom:
    tp_diag_add(diag, "%s: cannot build the runtime configuration: %s", cfg->source, strerror(ENOMEM));
fail:
    if (b)
        base_free(b, true); /* cfg stays the caller's */
    return NULL;
}

/* ---- resolved address sets ---- */

struct resolved {
    struct resolved *next;
    char *upstream, *name;
    struct tp_addr *addrs;
    size_t n;
};

static struct resolved *resolved_sets;

static struct resolved *resolved_find(const char *upstream, const char *name)
{
    for (struct resolved *r = resolved_sets; r; r = r->next)
        if (strcmp(r->upstream, upstream) == 0 && strcmp(r->name, name) == 0)
            return r;
    return NULL;
}

int tp_resolved_update(const char *upstream, const char *name, const struct tp_addr *addrs, size_t n)
{
    struct resolved *r = resolved_find(upstream, name);
    struct tp_addr *copy;

    if (r && r->n == n) {
        size_t i = 0;
        while (i < n && strcmp(r->addrs[i].text, addrs[i].text) == 0)
            i++;
        if (i == n)
            return 0;
    }
    if (!(copy = malloc(sizeof(*copy) * (n ? n : 1))))
        return -ENOMEM;
    memcpy(copy, addrs, sizeof(*copy) * n);
    if (!r) {
        if (!(r = calloc(1, sizeof(*r))) || !(r->upstream = strdup(upstream)) || !(r->name = strdup(name))) {
            if (r)
                free(r->upstream);
            free(r);
            free(copy);
            return -ENOMEM;
        }
        r->next = resolved_sets;
        resolved_sets = r;
    }
    free(r->addrs);
    r->addrs = copy;
    r->n = n;
    return 1;
}

const struct tp_addr *tp_resolved_get(const char *upstream, const char *name, size_t *n)
{
    struct resolved *r = resolved_find(upstream, name);
    *n = r ? r->n : 0;
    return r ? r->addrs : NULL;
}

static void resolved_free(struct resolved *r)
{
    free(r->addrs);
    free(r->upstream);
    free(r->name);
    free(r);
}

void tp_resolved_prune(const struct tp_config *cfg)
{
    struct resolved **pp = &resolved_sets;

    while (*pp) {
        struct resolved *r = *pp;
        bool keep = false;
        for (size_t u = 0; cfg && !keep && u < cfg->n_upstreams; u++) {
            if (strcmp(cfg->upstreams[u].name, r->upstream) != 0)
                continue;
            for (size_t e = 0; !keep && e < cfg->upstreams[u].n_endpoints; e++)
                keep = cfg->upstreams[u].endpoints[e].name &&
                       strcmp(cfg->upstreams[u].endpoints[e].name, r->name) == 0;
        }
        if (keep) {
            pp = &r->next;
        } else {
            *pp = r->next;
            resolved_free(r);
        }
    }
}

bool tp_snapshot_check_files(const struct tp_config *cfg, struct tp_diag *diag)
{
    /* the base of a load reads every file the configuration names; -t builds
     * it and drops it again (the configuration stays the caller's) */
    struct tp_gen_base *b = base_build((struct tp_config *)cfg, diag);

    if (!b)
        return false;
    base_free(b, true);
    return true;
}

static void snapshot_free(struct tp_snapshot *s)
{
    if (!s)
        return;
    if (s->router)
        tp_router_destroy(s->router);
    for (size_t i = 0; i < s->n_routes; i++) {
        struct tp_rt_route *rt = &s->routes[i];
        free(rt->split);
        free(rt->req.set_block);
        free(rt->resp.set_block);
        rl_ref_put(rt->rlref);
        if (rt->st)
            route_state_put(rt->st);
    }
    free(s->routes);
    for (size_t i = 0; i < s->n_ups; i++) {
        struct tp_rt_upstream *up = &s->ups[i];
        for (size_t e = 0; e < up->n_eps; e++)
            if (up->eps[e].st)
                tp_endpoint_state_put(up->eps[e].st);
        free(up->eps);
        free(up->weights);
        free(up->swrr);
        free(up->resolved);
        if (up->maglev)
            tp_maglev_destroy(up->maglev);
        if (up->st)
            upstream_state_put(up->st);
    }
    free(s->ups);
    free(s->shard_inflight);
    base_put(s->base);
    free(s);
}

/* Is <text> the address of one of the first <n> endpoints of <up>? */
static bool has_endpoint(const struct tp_rt_upstream *up, size_t n, const char *text)
{
    for (size_t e = 0; e < n; e++)
        if (strcmp(up->eps[e].cfg->addr.text, text) == 0)
            return true;
    return false;
}

/*
 * A snapshot on <base> (taking a reference on it) with the resolved address
 * sets as they are now, adopting registry objects by name from the current
 * snapshot. NULL and <diag> on failure (the base's reference is given back).
 */
static struct tp_snapshot *build_on(struct tp_gen_base *base, uint64_t generation, struct tp_diag *diag)
{
    struct tp_snapshot *old = tp_snapshot_current; /* control thread: the writer reads its own pointer */
    const struct tp_config *cfg = base->cfg;
    struct name_index rix = {0}, uix = {0}, eix = {0};
    struct tp_snapshot *s;
    void **targets = NULL;
    int err = -ENOMEM;
    char key[512];

    s = calloc(1, sizeof(*s));
    if (!s)
        goto fail;
    s->base = base;
    base->refs++;
    s->cfg = base->cfg;
    s->lis = base->lis;
    s->n_lis = base->n_lis;
    s->auths = base->auths;
    s->n_auths = base->n_auths;
    s->generation = generation;
    s->loaded_at_real_ns = tp_clock_real_ns();
    s->n_shards = reg.n_shards;
    atomic_store(&s->refs, 1);
    s->shard_inflight = aligned_array((size_t)reg.n_shards * 16, sizeof(uint32_t));
    s->routes = calloc(cfg->n_routes ? cfg->n_routes : 1, sizeof(*s->routes));
    s->ups = calloc(cfg->n_upstreams ? cfg->n_upstreams : 1, sizeof(*s->ups));
    if (!s->shard_inflight || !s->routes || !s->ups)
        goto fail;

    /* index what the current generation has, to adopt it by name */
    if (index_init(&rix, old ? old->n_routes : 0) || index_init(&uix, old ? old->n_ups : 0))
        goto fail;
    size_t old_eps = 0;
    for (size_t i = 0; old && i < old->n_ups; i++)
        old_eps += old->ups[i].n_eps;
    if (index_init(&eix, old_eps))
        goto fail;
    for (size_t i = 0; old && i < old->n_routes; i++)
        index_put(&rix, old->routes[i].st->name, old->routes[i].st);
    for (size_t i = 0; old && i < old->n_ups; i++) {
        index_put(&uix, old->ups[i].st->name, old->ups[i].st);
        for (size_t e = 0; e < old->ups[i].n_eps; e++)
            index_put(&eix, old->ups[i].eps[e].st->key, old->ups[i].eps[e].st);
    }

    /* upstreams and endpoints: an address is one endpoint, a name one per
     * address of its last good answer (none before the first); an address
     * listed twice that way is used once */
    s->n_ups = cfg->n_upstreams;
    for (size_t i = 0; i < cfg->n_upstreams; i++) {
        const struct tp_cfg_upstream *uc = &cfg->upstreams[i];
        struct tp_rt_upstream *up = &s->ups[i];
        size_t max_eps = 0, n_res = 0, k;
        up->cfg = uc;
        up->tls = base->up_tls[i];
        up->st = index_get(&uix, uc->name);
        if (!up->st && !(up->st = upstream_state_new(uc->name)))
            goto fail;
        up->st->refs++;
        for (size_t e = 0; e < uc->n_endpoints; e++) {
            if (uc->endpoints[e].name) {
                tp_resolved_get(uc->name, uc->endpoints[e].name, &k);
                n_res += k;
                max_eps += k;
            } else {
                max_eps++;
            }
        }
        up->eps = calloc(max_eps ? max_eps : 1, sizeof(*up->eps));
        up->weights = calloc(max_eps ? max_eps : 1, sizeof(*up->weights));
        up->resolved = calloc(n_res ? n_res : 1, sizeof(*up->resolved));
        /* smooth WRR state: one row per shard, each row on its own cache lines */
        up->swrr_stride = (max_eps + 7) & ~(size_t)7;
        up->swrr = aligned_array(up->swrr_stride * reg.n_shards, sizeof(int64_t));
        if (!up->eps || !up->weights || !up->resolved || !up->swrr)
            goto fail;
        n_res = 0;
        for (size_t e = 0; e < uc->n_endpoints; e++) {
            const struct tp_cfg_endpoint *ec = &uc->endpoints[e];
            const struct tp_addr *addrs = &ec->addr;
            size_t n_addrs = 1;
            if (ec->name)
                addrs = tp_resolved_get(uc->name, ec->name, &n_addrs);
            for (size_t a = 0; a < n_addrs; a++) {
                const struct tp_cfg_endpoint *epc = ec;
                if (has_endpoint(up, up->n_eps, addrs[a].text))
                    continue;
                if (ec->name) {
                    struct tp_cfg_endpoint *rc = &up->resolved[n_res++];
                    *rc = *ec;
                    rc->addr = addrs[a];
                    epc = rc;
                }
                struct tp_rt_endpoint *ep = &up->eps[up->n_eps];
                snprintf(key, sizeof(key), "%s/%s", uc->name, epc->addr.text);
                ep->cfg = epc;
                ep->st = index_get(&eix, key);
                if (!ep->st && !(ep->st = endpoint_state_new(key, uc->name, &epc->addr)))
                    goto fail;
                ep->st->refs++;
                up->weights[up->n_eps++] = epc->weight;
                /* breaker state carries over; its new settings apply at publish */
                if (uc->circuit_breaker) {
                    if (!ep->st->breaker && !(ep->st->breaker = tp_breaker_create(uc->circuit_breaker, &err)))
                        goto fail;
                    ep->breaker = ep->st->breaker;
                }
            }
        }
        if (uc->balance == TP_BALANCE_HASH && up->n_eps) {
            /* the table is keyed by address: an address that stays keeps its
             * slots, so a changed answer moves only the keys it must */
            const char **names = calloc(up->n_eps, sizeof(*names));
            if (!names)
                goto fail;
            for (size_t e = 0; e < up->n_eps; e++)
                names[e] = up->eps[e].cfg->addr.text;
            up->maglev = tp_maglev_create(names, up->weights, up->n_eps, 0, &err);
            free(names);
            if (!up->maglev)
                goto fail;
        }
    }

    /* routes */
    s->n_routes = cfg->n_routes;
    targets = calloc(cfg->n_routes ? cfg->n_routes : 1, sizeof(*targets));
    if (!targets)
        goto fail;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct tp_cfg_route *rc = &cfg->routes[i];
        struct tp_rt_route *rt = &s->routes[i];
        rt->cfg = rc;
        rt->index = i;
        rt->st = index_get(&rix, rc->name);
        if (!rt->st && !(rt->st = route_state_new(rc->name)))
            goto fail;
        rt->st->refs++;
        /* bucket state carries over; a changed rate or burst applies at publish */
        if (rc->rate_limit) {
            if (!(rt->rlref = rl_for(rt->st, rc->rate_limit, &err)))
                goto fail;
            rt->rl = rt->rlref->rl;
            rt->lease = rt->rlref->lease;
        }
        if (rc->upstream != TP_UPSTREAM_NONE)
            rt->up = &s->ups[rc->upstream];
        if (rc->n_split) {
            rt->split = calloc(rc->n_split, sizeof(*rt->split));
            if (!rt->split)
                goto fail;
            for (size_t k = 0; k < rc->n_split; k++)
                rt->split[k] = &s->ups[rc->split[k].upstream];
        }
        rt->req.cfg = &rc->request_headers;
        rt->resp.cfg = &rc->response_headers;
        if (!(rt->req.set_block = render_set(&rc->request_headers, &rt->req.set_len)) ||
            !(rt->resp.set_block = render_set(&rc->response_headers, &rt->resp.set_len)))
            goto fail;
        for (size_t k = 0; k < rc->response_headers.n_set; k++)
            if (strcasecmp(rc->response_headers.set[k].name, "content-type") == 0)
                rt->resp_has_ctype = true;
        rt->strip_len = rc->strip_prefix ? strlen(rc->strip_prefix) : 0;
        if (rc->auth)
            rt->auth = &s->auths[rc->auth->provider];
        targets[i] = rt;
    }
    s->router = tp_router_create(cfg, targets, &err);
    if (!s->router)
        goto fail;
    free(targets);
    index_dispose(&rix);
    index_dispose(&uix);
    index_dispose(&eix);
    return s;

fail:
    tp_diag_add(diag, "%s: cannot build the runtime configuration: %s", cfg->source, strerror(-err));
    free(targets);
    index_dispose(&rix);
    index_dispose(&uix);
    index_dispose(&eix);
    snapshot_free(s);
    return NULL;
}

struct tp_snapshot *tp_snapshot_build(struct tp_config *cfg, unsigned n_shards, uint64_t generation,
                                      struct tp_diag *diag)
{
    struct tp_gen_base *base;
    struct tp_snapshot *s;

    if (!reg.n_shards)
        reg.n_shards = n_shards;
    if (!(base = base_build(cfg, diag)))
        return NULL;
    s = build_on(base, generation, diag);
    if (!s) {
        base_free(base, true); /* only the builder's reference was left; cfg stays the caller's */
        return NULL;
    }
    base->refs--; /* the snapshot's reference remains */
    return s;
}

struct tp_snapshot *tp_snapshot_rebuild(uint64_t generation, struct tp_diag *diag)
{
    struct tp_snapshot *cur = tp_snapshot_current;

    return cur ? build_on(cur->base, generation, diag) : NULL;
}

void tp_snapshot_publish(struct tp_snapshot *s)
{
    struct tp_snapshot *old = tp_snapshot_current;

    /* the new generation's settings for state it shares with the old one */
    for (size_t i = 0; i < s->n_routes; i++) {
        struct tp_rt_route *rt = &s->routes[i];
        if (!rt->rlref)
            continue;
        if (rt->rlref->fresh) {
            /* a new limiter (first limit, or a new key) becomes the route's */
            rt->rlref->fresh = false;
            rt->rlref->refs++;
            rl_ref_put(rt->st->rl);
            rt->st->rl = rt->rlref;
        } else if (tp_ratelimit_update(rt->rl, rt->cfg->rate_limit, tp_clock_ns()) < 0 ||
                   (rt->lease && tp_lease_update(rt->lease, rt->cfg->rate_limit) < 0)) {
            tp_err("route %s: cannot apply the new rate limit; the previous one stays", rt->st->name);
        }
    }
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_rt_endpoint *ep = &s->ups[u].eps[e];
            ep->st->live_gen = s->generation;
            atomic_store_explicit(&ep->st->retired, false, memory_order_release);
            if (ep->breaker)
                tp_breaker_set_config(ep->breaker, s->ups[u].cfg->circuit_breaker);
        }
    /* endpoints the new generation drops: their pools must empty now */
    for (size_t u = 0; old && u < old->n_ups; u++)
        for (size_t e = 0; e < old->ups[u].n_eps; e++)
            if (old->ups[u].eps[e].st->live_gen != s->generation)
                atomic_store_explicit(&old->ups[u].eps[e].st->retired, true, memory_order_release);
    TP_HB_RELEASE(s);
    rcu_xchg_pointer(&tp_snapshot_current, s);
    if (!old)
        return;
    /* after the grace period every shard that can see <old> holds a reference */
    synchronize_rcu();
    if (reg.n_retired == reg.cap_retired) {
        size_t ncap = reg.cap_retired ? reg.cap_retired * 2 : 8;
        struct tp_snapshot **n = realloc(reg.retired, sizeof(*n) * ncap);
        if (!n) {
            tp_err("out of memory retiring configuration generation %llu; it is kept",
                   (unsigned long long)old->generation);
            return;
        }
        reg.retired = n;
        reg.cap_retired = ncap;
    }
    reg.retired[reg.n_retired++] = old;
    tp_snapshot_put(old);
    tp_snapshot_collect();
}

size_t tp_snapshot_collect(void)
{
    size_t i = 0;
    while (i < reg.n_retired) {
        struct tp_snapshot *s = reg.retired[i];
        if (atomic_load_explicit(&s->refs, memory_order_acquire) == 0) {
            reg.retired[i] = reg.retired[--reg.n_retired];
            snapshot_free(s);
        } else {
            i++;
        }
    }
    return reg.n_retired;
}

void tp_snapshot_shutdown(void)
{
    struct tp_snapshot *cur = tp_snapshot_current;

    rcu_assign_pointer(tp_snapshot_current, NULL);
    if (cur)
        tp_snapshot_put(cur);
    /* shards are gone: everything left can go */
    for (size_t i = 0; i < reg.n_retired; i++)
        atomic_store(&reg.retired[i]->refs, 0);
    if (cur) {
        atomic_store(&cur->refs, 0);
        snapshot_free(cur);
    }
    for (size_t i = 0; i < reg.n_retired; i++)
        snapshot_free(reg.retired[i]);
    free(reg.retired);
    memset(&reg, 0, sizeof(reg));
    tp_resolved_prune(NULL);
}

struct tp_tls_server *tp_snapshot_listener_tls(const struct tp_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->n_lis; i++)
        if (strcmp(s->lis[i].cfg->name, name) == 0)
            return s->lis[i].tls;
    return NULL;
}

void tp_registry_each_endpoint(void (*fn)(struct tp_endpoint_state *st, void *ctx), void *ctx)
{
    struct tp_snapshot *s = tp_snapshot_current;
    for (size_t u = 0; s && u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++)
            fn(s->ups[u].eps[e].st, ctx);
}

void tp_registry_each_route(void (*fn)(struct tp_route_state *st, void *ctx), void *ctx)
{
    struct tp_snapshot *s = tp_snapshot_current;
    for (size_t i = 0; s && i < s->n_routes; i++)
        fn(s->routes[i].st, ctx);
}
