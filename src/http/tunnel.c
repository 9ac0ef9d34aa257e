/* SPDX-License-Identifier: MIT */
/*
 * Tunnels: after a 101, the client's transport and the upstream's become one
 * byte pipe owned by the shard (WebSocket and other Upgrade protocols). The
 * tunnel takes both transports over by pointing their ops at its own and
 * keeps the sessions' ops to hand each on_closed back, so the connection
 * objects are freed by the code that allocated them. [shard]
 *
 *   101 relayed ──▶ RELAY ── one side's FIN ──▶ FIN passed on once the other
 *                    │   ▲                      side's queue is sent (half-close;
 *                    │   └── bytes keep flowing the other way)
 *                    │ reset, send error, TLS error, out of memory: both close,
 *                    │ the other side with a reset; FIN both ways, tunnel_idle,
 *                    ▼ drain_timeout: both close
 *                 ENDING ── both transports closed ──▶ the request is recorded
 *                                                     (status 101), freed
 *
 * Relay: received bytes move from one side's receive queue to the other's
 * send queue as slices of the buffers they arrived in (no copy), while that
 * send queue holds less than TUN_BUDGET. Past it the receiving side stops
 * reading, and resumes once its queue has moved on: a slow reader stops the
 * fast writer, and a tunnel holds at most TUN_BUDGET plus what one receive
 * batch brought per direction.
 *
 * Generations: a tunnel holds the snapshot it runs on like a request does,
 * but moves to each new one as the shard adopts it (tp_tunnel_on_snapshot):
 * its route, upstream and endpoint are found again by their state objects,
 * which a reload carries over by name. What a new generation no longer has
 * is let go at once (the tunnel gauge, the concurrency slots), so a
 * long-lived tunnel never keeps an old generation alive. The names its log
 * line needs are copied when it starts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/log.h>

#include "http/request.h"
#include "transport/transport.h"

#define TUN_BUDGET (64u * 1024u) /* [bytes] queued towards one side before the other stops reading */

struct tp_tunnel {
    struct tp_transport *t[2];             /* 0: client, 1: upstream; NULL once closed */
    const struct tp_transport_ops *own[2]; /* the sessions' ops: their on_closed frees the objects */
    struct tp_req *r;                      /* the upgrade request, recorded at the end */
    struct tp_tunnel *next, *prev;         /* the shard's tunnels */
    struct tp_route_stats *stats;          /* tunnels_active of its route; NULL once the route went */
    uint64_t idle_ms;                      /* timeouts.tunnel_idle when it started */
    bool fin[2];                           /* pass a FIN on towards side i once its queue is sent */
    bool ending;                           /* both sides are closing */
};

static const struct tp_transport_ops tunnel_ops;

static inline struct tp_tunnel *tunnel_of(struct tp_transport *t)
{
    return t->user;
}

static inline int side_of(const struct tp_tunnel *tun, const struct tp_transport *t)
{
    return t == tun->t[1];
}

/* Closes both sides (<rst>: with a reset, the peers learn it was cut). */
static void tunnel_end(struct tp_shard *sh, struct tp_tunnel *tun, bool rst)
{
    tun->ending = true;
    for (int i = 0; i < 2; i++) {
        struct tp_transport *t = tun->t[i];
        if (t && !t->closing) {
            t->rst |= rst;
            tp_transport_close(sh, t);
        }
    }
}

/* Any byte either way keeps the tunnel alive for idle_ms more (timers re-arm lazily). */
static inline void touch(struct tp_shard *sh, struct tp_tunnel *tun)
{
    uint64_t d = sh->now_ms + tun->idle_ms;
    if (tun->t[0])
        tun->t[0]->deadline_ms = d;
    if (tun->t[1])
        tun->t[1]->deadline_ms = d;
}

/* Both directions saw their FIN and passed it on: nothing more can flow. */
static bool both_done(const struct tp_tunnel *tun)
{
    for (int i = 0; i < 2; i++) {
        const struct tp_transport *t = tun->t[i];
        if (!t || !t->peer_closed || t->in.n || !t->shut)
            return false;
    }
    return true;
}

/* Passes a FIN on towards side <j> once everything queued for it is sent. */
static void fin_step(struct tp_shard *sh, struct tp_tunnel *tun, int j)
{
    struct tp_transport *t = tun->t[j];

    if (!tun->fin[j] || t->shut || t->closing)
        return;
    if (tp_transport_pending(t)) {
        tp_transport_flush(sh, t);
        return;
    }
    if (t->tls) {
        /* TLS: close_notify (once) behind the data; the shutdown follows once it is sent */
        tp_transport_close_notify(sh, t);
        if (tp_transport_pending(t)) {
            tp_transport_flush(sh, t);
            return;
        }
    }
    tp_transport_shutdown(sh, t);
}

/*
 * Moves what side <i> received to the other side's send queue while that is
 * under budget, then decides whether side <i> reads on, and passes its FIN
 * on. Returns false when the tunnel is ending.
 */
static bool relay(struct tp_shard *sh, struct tp_tunnel *tun, int i)
{
    struct tp_transport *src = tun->t[i], *dst = tun->t[!i];
    struct tp_rbuf *e;
    uint64_t moved = 0;

    if (tun->ending)
        return false;
    if (dst->closing) {
        /* the other side's transport gave up on its own: its on_closed follows */
        tunnel_end(sh, tun, true);
        return false;
    }
    while ((e = tp_inq_front(&src->in))) {
        if (tp_transport_pending(dst) >= TUN_BUDGET || tp_outq_full(dst->out, 2))
            break;
        uint32_t len = e->len;
        if (!tp_outq_push_slice(sh, &dst->out, tp_rbuf_ref(e), tp_rbuf_data(sh, e), len)) {
            TP_LOG_RL(TP_LOG_ERR, "out of memory relaying a tunnel (request %.*s)", tun->r->id_len,
                      tun->r->id);
            tunnel_end(sh, tun, true);
            return false;
        }
        tp_inq_consume(sh, &src->in, len);
        moved += len;
    }
    if (moved) {
        if (i == 0)
            tun->r->bytes_in += moved;
        else
            tun->r->bytes_out += moved;
        touch(sh, tun);
        tp_transport_flush(sh, dst);
        if (tun->ending || dst->closing)
            return false;
    }
    if (src->in.n) {
        tp_transport_stop_recv(sh, src); /* the other side is slow: resume when it took these */
        return true;
    }
    if (!src->peer_closed) {
        tp_transport_resume_recv(sh, src);
        return true;
    }
    if (src->reset) {
        /* a reset (or a receive error) on one side resets the other */
        tunnel_end(sh, tun, true);
        return false;
    }
    if (!tun->fin[!i]) {
        tun->fin[!i] = true;
        fin_step(sh, tun, !i);
    }
    if (both_done(tun)) {
        tunnel_end(sh, tun, false);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* transport events                                                    */
/* ------------------------------------------------------------------ */

static void tun_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_tunnel *tun = tunnel_of(t);

    relay(sh, tun, side_of(tun, t));
}

static void tun_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tp_tunnel *tun = tunnel_of(t);
    int j = side_of(tun, t);

    if (res < 0) {
        /* that peer is gone (EPIPE, ECONNRESET): nothing more reaches it */
        tunnel_end(sh, tun, true);
        return;
    }
    touch(sh, tun);
    /* room towards side j: move on what the other side has waiting */
    if (!relay(sh, tun, !j))
        return;
    fin_step(sh, tun, j);
    if (both_done(tun))
        tunnel_end(sh, tun, false);
}

static void tun_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    (void)sh;
    (void)t;
    (void)err; /* both sides were connected before the tunnel began */
}

static void tun_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_tunnel *tun = tunnel_of(t);

    /* the deadline is the last byte either way plus tunnel_idle (touch) */
    TP_LOG_RL(TP_LOG_INFO, "tunnel idle for %llu ms; closing (request %.*s)",
              (unsigned long long)tun->idle_ms, tun->r->id_len, tun->r->id);
    tunnel_end(sh, tun, false);
}

static void tun_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_tunnel *tun = tunnel_of(t);

    if (err != TP_ETLS)
        TP_LOG_RL(TP_LOG_INFO, "tunnel (request %.*s): %s", tun->r->id_len, tun->r->id, tp_strerror(err));
    tunnel_end(sh, tun, true);
}

/* Ends the tunnel's accounting: the request is recorded and freed. */
static void tunnel_free(struct tp_shard *sh, struct tp_tunnel *tun)
{
    struct tp_http_shard *hs = tp_http_shard(sh);

    if (tun->stats)
        tp_stat_add(&tun->stats->tunnels_active, (uint64_t)-1);
    if (tun->prev)
        tun->prev->next = tun->next;
    else
        hs->tunnels = tun->next;
    if (tun->next)
        tun->next->prev = tun->prev;
    if (tun->r)
        tp_req_end(sh, tun->r);
    free(tun);
}

static void tun_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_tunnel *tun = tunnel_of(t);
    int i = side_of(tun, t);

    tun->t[i] = NULL;
    t->user = NULL;
    if (i == 0) {
        /* the request is recorded while the client's session, which it
         * points to (client address), is still there; it also releases the
         * concurrency slots */
        tp_req_end(sh, tun->r);
        tun->r = NULL;
    }
    tun->own[i]->on_closed(sh, t); /* the session frees its connection object */
    if (tun->t[!i]) {
        /* one side closed on its own (its transport gave up): the other follows */
        tunnel_end(sh, tun, true);
        return;
    }
    tunnel_free(sh, tun);
}

static const struct tp_transport_ops tunnel_ops = {
    .on_input = tun_on_input,
    .on_sent = tun_on_sent,
    .on_connected = tun_on_connected,
    .on_timeout = tun_on_timeout,
    .on_error = tun_on_error,
    .on_closed = tun_on_closed,
};

/* ------------------------------------------------------------------ */
/* start, drain, generations                                           */
/* ------------------------------------------------------------------ */

/* The names the log line shows, copied: the tunnel may outlive its generation. */
static struct tp_block *copy_names(struct tp_shard *sh, const struct tp_req *r)
{
    size_t sl = 0;
    const char *sub = tp_req_subject(r, &sl);
    const char *n[4] = {
        r->route ? r->route->cfg->name : "",
        r->up ? r->up->cfg->name : "",
        r->last_ep ? r->last_ep->cfg->addr.text : "",
        sub && !memchr(sub, 0, sl) ? sub : "",
    };
    size_t l[4] = {strlen(n[0]), strlen(n[1]), strlen(n[2]), n[3][0] ? sl : 0}, need = 0;

    for (int i = 0; i < 4; i++)
        need += l[i] + 1;
    struct tp_block *b = tp_block_get(sh, need);
    if (!b)
        return NULL;
    for (int i = 0; i < 4; i++) {
        memcpy(b->data + b->len, n[i], l[i]);
        b->data[b->len + l[i]] = 0;
        b->len += (uint32_t)l[i] + 1;
    }
    return b;
}

void tp_tunnel_start(struct tp_shard *sh, struct tp_req *r, struct tp_transport *dt, struct tp_transport *ut)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_tunnel *tun = dt ? calloc(1, sizeof(*tun)) : NULL;

    if (tun)
        r->names = copy_names(sh, r);
    if (!tun || !r->names) {
        /* nothing to tunnel with: both sides are cut, the sessions free their objects */
        TP_LOG_RL(TP_LOG_ERR, "out of memory for a tunnel (request %.*s)", r->id_len, r->id);
        free(tun);
        ut->rst = true;
        tp_transport_close(sh, ut);
        if (dt) {
            dt->rst = true;
            tp_transport_close(sh, dt);
        }
        tp_req_end(sh, r);
        return;
    }
    tun->r = r;
    tun->t[0] = dt;
    tun->t[1] = ut;
    tun->own[0] = dt->proto;
    tun->own[1] = ut->proto;
    dt->proto = ut->proto = &tunnel_ops;
    dt->user = ut->user = tun;
    tun->idle_ms = r->limits.tunnel_idle_ms;
    tun->next = hs->tunnels;
    if (hs->tunnels)
        hs->tunnels->prev = tun;
    hs->tunnels = tun;

    /* the request is counted now (status 101, time to the switch); its log
     * line waits for the end */
    tp_req_count(sh, r);
    tun->stats = &r->route->st->stats[sh->id];
    tp_stat_add(&tun->stats->tunnels_active, 1);
    tp_stat_add(&tun->stats->tunnels_total, 1);

    touch(sh, tun);
    tp_transport_deadline(sh, dt, dt->deadline_ms);
    tp_transport_deadline(sh, ut, ut->deadline_ms);
    tp_transport_flush(sh, dt); /* the 101 head */
    /* bytes already here: what the client sent behind its request, what the
     * upstream sent behind its 101 */
    if (relay(sh, tun, 1))
        relay(sh, tun, 0);
}

void tp_tunnel_close_all(struct tp_shard *sh)
{
    for (struct tp_tunnel *tun = tp_http_shard(sh)->tunnels; tun; tun = tun->next)
        if (!tun->ending)
            tunnel_end(sh, tun, false);
}

/* The route, upstream or endpoint of generation <s> whose state object is <st>. */
static struct tp_rt_route *route_in(struct tp_snapshot *s, const struct tp_route_state *st)
{
    for (size_t i = 0; i < s->n_routes; i++)
        if (s->routes[i].st == st)
            return &s->routes[i];
    return NULL;
}

static struct tp_rt_upstream *upstream_in(struct tp_snapshot *s, const struct tp_upstream_state *st)
{
    for (size_t i = 0; i < s->n_ups; i++)
        if (s->ups[i].st == st)
            return &s->ups[i];
    return NULL;
}

static struct tp_rt_endpoint *endpoint_in(struct tp_rt_upstream *up, const struct tp_endpoint_state *st)
{
    for (size_t i = 0; up && i < up->n_eps; i++)
        if (up->eps[i].st == st)
            return &up->eps[i];
    return NULL;
}

/*
 * Moves <tun> from its generation to the shard's current one. Its route,
 * upstream and endpoint are looked up again by state object; one the new
 * generation dropped is let go now: the gauge goes down, the in-flight
 * counts are returned.
 */
static void migrate(struct tp_shard *sh, struct tp_tunnel *tun)
{
    struct tp_req *r = tun->r;

    if (!r || r->snap == sh->snap)
        return; /* recorded already (closing), or current */
    struct tp_snapshot *old = r->snap, *cur = sh->snap;
    struct tp_attempt *a = &r->att;

    r->route = r->route ? route_in(cur, r->route->st) : NULL;
    if (!r->route && tun->stats) {
        tp_stat_add(&tun->stats->tunnels_active, (uint64_t)-1);
        tun->stats = NULL;
    }
    struct tp_rt_upstream *up = r->up ? upstream_in(cur, r->up->st) : NULL;
    if (!up && r->counted_up) {
        atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
        r->counted_up = false;
    }
    if (a->ep) {
        struct tp_rt_endpoint *ep = endpoint_in(up, a->ep->st);
        if (!ep) {
            if (a->counted_ep)
                atomic_fetch_sub_explicit(&a->ep->st->inflight, 1, memory_order_relaxed);
            r->up_ns += sh->now_ns - a->start_ns;
            memset(a, 0, sizeof(*a));
        } else {
            a->ep = ep;
        }
    }
    r->up = up;
    r->last_ep = a->ep;
    /* the API key entry and the credential source live in the old
     * generation's tables; the subject was copied at the start */
    r->apikey = NULL;
    r->cred = NULL;
    r->snap = tp_shard_snapshot_enter(sh);
    tp_shard_snapshot_leave(sh, old);
}

void tp_tunnel_on_snapshot(struct tp_shard *sh)
{
    for (struct tp_tunnel *tun = tp_http_shard(sh)->tunnels; tun; tun = tun->next)
        migrate(sh, tun);
}
