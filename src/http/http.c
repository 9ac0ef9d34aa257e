/* SPDX-License-Identifier: MIT */
/*
 * The HTTP layer's place in the reactor: its per-shard state, the slabs of
 * client and upstream connections, the acceptor, and what it does at the
 * reactor's hook points (a new snapshot, a removed listener, drain, the end
 * of each loop iteration). tp_http_register wires all of it, and the
 * transport and the access log it depends on, before the shards start.
 * [control] for registration; hooks run on each shard. [shard]
 */
#include <errno.h>
#include <stdlib.h>

#include <turnpike/auth.h>

#include "http/accesslog.h"
#include "http/sessions.h"
#include "rt/runtime.h"
#include "transport/transport.h"

static int ext_idx = -1;
static int slab_conn = -1, slab_uconn = -1, slab_h2c = -1;

struct tp_http_shard *tp_http_shard(const struct tp_shard *sh)
{
    return sh->ext[ext_idx];
}

static int http_create(struct tp_shard *sh, unsigned idx)
{
    struct tp_http_shard *hs = calloc(1, sizeof(*hs));

    if (!hs)
        return -ENOMEM;
    hs->slab_conn = slab_conn;
    hs->slab_uconn = slab_uconn;
    hs->slab_h2c = slab_h2c;
    tp_timer_init(&hs->park_timer, tp_req_park_timer);
    int err = 0;
    if (!(hs->jwt_cache = tp_jwt_cache_create(0, &err))) {
        free(hs);
        return err ? err : -ENOMEM;
    }
    sh->ext[idx] = hs;
    return 0;
}

static void http_destroy(struct tp_shard *sh)
{
    struct tp_http_shard *hs = sh->ext[ext_idx];

    if (!hs)
        return;
    tp_jwt_cache_destroy(hs->jwt_cache);
    tp_h2_shard_free(hs);
    tp_h2c_shard_free(hs);
    while (hs->req_free) {
        struct tp_req *r = hs->req_free;
        hs->req_free = r->next_free;
        free(r);
    }
    free(hs);
    sh->ext[ext_idx] = NULL;
}

/* A new generation: its limits apply to new connections and requests; pools
 * of endpoints it dropped close. */
static void http_on_snapshot(struct tp_shard *sh, struct tp_snapshot *old)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    const struct tp_config *cfg = sh->snap->cfg;

    hs->limits.max_header_bytes = cfg->max_header_bytes;
    hs->limits.max_body_bytes = cfg->max_body_bytes;
    hs->limits.client_header_ms = cfg->client_header_ms;
    hs->limits.client_idle_ms = cfg->client_idle_ms;
    hs->limits.upstream_connect_ms = cfg->upstream_connect_ms;
    hs->limits.upstream_response_ms = cfg->upstream_response_ms;
    hs->limits.tunnel_idle_ms = cfg->tunnel_idle_ms;
    hs->limits.h2_max_streams = cfg->h2_max_concurrent_streams;
    hs->limits.h2_max_resets_per_s = cfg->h2_max_resets_per_s;
    if (!old)
        return;
    tp_tunnel_on_snapshot(sh);
    bool removed = false;
    for (size_t u = 0; u < old->n_ups; u++)
        for (size_t e = 0; e < old->ups[u].n_eps; e++)
            if (atomic_load_explicit(&old->ups[u].eps[e].st->retired, memory_order_acquire)) {
                tp_h1c_pool_close(sh, old->ups[u].eps[e].st);
                tp_h2c_pool_close(sh, old->ups[u].eps[e].st);
                removed = true;
            }
    if (removed)
        tp_h1c_close_retired(sh);
}

/* A listener was removed: its connections finish what they serve, then close. */
static void http_listener_closed(struct tp_shard *sh, unsigned idx)
{
    tp_h2_listener_closed(sh, idx);
    tp_h1s_listener_closed(sh, idx);
}

/* Drain: connections finish their request and close; tunnels live on until
 * drain_timeout is over (<now>). */
static void http_drain(struct tp_shard *sh, bool now)
{
    if (now)
        tp_tunnel_close_all(sh);
    tp_h2_drain(sh, now);
    tp_h1s_drain(sh, now);
    tp_h1c_close_all(sh, now);
    tp_h2c_close_all(sh, now);
}

/* A drained shard: once no client connection is left, the upstream ones go too. */
static void http_tick(struct tp_shard *sh)
{
    tp_h2_tick(sh);
    tp_h2c_tick(sh);
    if (sh->draining && tp_h1s_count(sh) == 0 && tp_h1c_count(sh))
        tp_h1c_close_all(sh, true);
    if (sh->draining && tp_h1s_count(sh) == 0 && tp_h2c_count(sh))
        tp_h2c_close_all(sh, true);
}

/* The store's answer to an ask some request of this shard waits for. */
static void http_msgs(struct tp_shard *sh, unsigned msgs)
{
    if (msgs & TP_MSG_LEASE)
        tp_req_park_wake(sh);
}

static bool http_busy(struct tp_shard *sh)
{
    return tp_h1s_count(sh) || tp_h1c_count(sh) || tp_h2c_count(sh);
}

static const struct tp_shard_hooks http_hooks = {
    .create = http_create,
    .on_snapshot = http_on_snapshot,
    .on_msgs = http_msgs,
    .on_listener_closed = http_listener_closed,
    .drain = http_drain,
    .tick = http_tick,
    .busy = http_busy,
    .destroy = http_destroy,
};

int tp_http_register(void)
{
    if (ext_idx >= 0)
        return 0;
    if (tp_transport_register() < 0 || tp_accesslog_register() < 0)
        return -1;
    slab_conn = tp_reactor_slab_register(tp_h1s_conn_size());
    slab_uconn = tp_reactor_slab_register(tp_h1c_conn_size());
    slab_h2c = tp_reactor_slab_register(tp_h2c_conn_size());
    ext_idx = tp_shard_hooks_register(&http_hooks);
    if (slab_conn < 0 || slab_uconn < 0 || slab_h2c < 0 || ext_idx < 0 || tp_h2c_init() < 0 ||
        tp_h1s_register() < 0)
        return -1;
    tp_shard_set_acceptor(tp_h1s_accept);
    return 0;
}
