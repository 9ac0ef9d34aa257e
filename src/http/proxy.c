/* SPDX-License-Identifier: MIT */
/*
 * The proxy: a request's upstream side, independent of the protocol the
 * upstream speaks. It chooses the upstream (split) and, per attempt, the
 * endpoint (health, breaker, balancing), holds what an attempt holds, hands
 * the attempt to the upstream exchange (h1_client.c or h2_client.c), and turns the
 * exchange's results into the answer: the response relayed, a retry, or a
 * 502/504. [shard]
 *
 * A request's attempts:
 *
 *   tp_proxy_start ─▶ attempt ─▶ pick endpoint ─▶ exchange start
 *        │              ▲  no endpoint: 503            │
 *        │              │  at capacity: 503            ├─ response head ─▶ tp_proxy_response_head
 *        │              │                              │     (retry on status?)   │
 *        │              └──── retry ◀── can_retry ◀────┤                          ▼
 *        │                                             └─ failure ─▶ tp_proxy_failed ─▶ 502/504
 *        ▼                                                                         │ or cut short
 *   tp_proxy_response_done: counters, breaker outcome, downstream done ◀──────────┘
 *
 * An attempt is acquired in attempt_begin (endpoint, least_request count,
 * breaker admission) and released in attempt_end, exactly once, with its
 * outcome. The upstream's max_concurrent_requests slot is held by the
 * request across its attempts and released in upstream_release.
 */
#include <errno.h>
#include <string.h>

#include <turnpike/balance.h>
#include <turnpike/breaker.h>
#include <turnpike/hash.h>
#include <turnpike/log.h>
#include <turnpike/router.h>

#include "http/request.h"
#include "http/sessions.h"

static void attempt(struct tp_shard *sh, struct tp_req *r);

/* The methods a retry may repeat. */
static bool idempotent(unsigned method)
{
    return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_OPTIONS || method == HTTP_TRACE ||
           method == HTTP_PUT || method == HTTP_DELETE;
}

/* ------------------------------------------------------------------ */
/* endpoint choice                                                     */
/* ------------------------------------------------------------------ */

/* The hash key of `balance: hash`, taken while the request head is alive (retries reuse it). */
static uint64_t hash_key_of(const struct tp_req *r, const struct tp_key *k)
{
    const struct tp_head *h = &r->head;
    size_t vl = 0;
    const char *v;

    switch (k->kind) {
    case TP_KEY_CLIENT_IP:
        return tp_hash_bytes(r->ds->peer, r->ds->peer_len);
    case TP_KEY_HEADER:
        v = tp_head_value(h, k->name, k->name_len, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    case TP_KEY_COOKIE:
        /* cookie:NAME: the value of NAME in any Cookie header */
        v = tp_head_cookie(h, k->name, k->name_len, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    case TP_KEY_CLAIM:
        /* claim:NAME: tenant pinning; requests without the claim hash alike */
        v = tp_req_claim(r, k->name, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    case TP_KEY_PATH: {
        const char *u = h->base + h->url.off + r->abs_path_off;
        size_t ul = h->url.len - r->abs_path_off;
        const char *q = memchr(u, '?', ul);
        return tp_hash_bytes(u, q ? (size_t)(q - u) : ul);
    }
    default:
        return 0;
    }
}

static uint64_t endpoint_inflight(void *ctx, size_t i)
{
    struct tp_rt_upstream *up = ctx;
    return atomic_load_explicit(&up->eps[i].st->inflight, memory_order_relaxed);
}

/*
 * Chooses an endpoint of r->up for the next attempt and acquires it:
 * healthy endpoints whose breaker would admit, not already tried by this
 * request when another one exists, balanced per the upstream's `balance`.
 * The breaker admission (which consumes a half-open trial permit) is taken
 * last; a denied endpoint is excluded and the choice repeated. false: none.
 */
static bool attempt_begin(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_rt_upstream *up = r->up;
    struct tp_attempt *a = &r->att;
    uint64_t mask[4] = {0, 0, 0, 0}; /* up to 256 endpoints */
    size_t n = up->n_eps < 256 ? up->n_eps : 256, avail = 0;
    uint64_t now_ms = sh->now_ms;

    for (size_t i = 0; i < n; i++) {
        struct tp_rt_endpoint *ep = &up->eps[i];
        if (!atomic_load_explicit(&ep->st->healthy, memory_order_relaxed))
            continue;
        if (ep->breaker && !tp_breaker_would_admit(ep->breaker, now_ms))
            continue;
        mask[i / 64] |= 1ull << (i % 64);
        avail++;
    }
    /* prefer endpoints this request has not tried yet */
    if (r->tried[0] | r->tried[1] | r->tried[2] | r->tried[3]) {
        uint64_t m2[4];
        size_t left = 0;
        for (int w = 0; w < 4; w++) {
            m2[w] = mask[w] & ~r->tried[w];
            left += (size_t)__builtin_popcountll(m2[w]);
        }
        if (left)
            memcpy(mask, m2, sizeof(mask));
    }
    memset(a, 0, sizeof(*a));
    while (avail) {
        size_t i;
        switch (up->cfg->balance) {
        case TP_BALANCE_LEAST_REQUEST:
            i = tp_p2c_pick(up->weights, n, endpoint_inflight, up, mask, tp_rand64(sh));
            break;
        case TP_BALANCE_HASH:
            i = tp_maglev_pick(up->maglev, r->hash_key, mask);
            break;
        default:
            i = tp_swrr_pick(up->swrr + sh->id * up->swrr_stride, up->weights, n, mask);
            break;
        }
        if (i == SIZE_MAX)
            return false;
        struct tp_rt_endpoint *ep = &up->eps[i];
        if (ep->breaker) {
            struct tp_breaker_pass pass = tp_breaker_admit(ep->breaker, now_ms);
            if (pass.how == TP_BREAKER_DENY) {
                mask[i / 64] &= ~(1ull << (i % 64));
                avail--;
                continue;
            }
            a->bpass = pass;
            a->breaker_admitted = true;
        }
        r->tried[i / 64] |= 1ull << (i % 64);
        a->ep = ep;
        a->start_ns = sh->now_ns;
        r->last_ep = ep;
        if (up->cfg->balance == TP_BALANCE_LEAST_REQUEST) {
            atomic_fetch_add_explicit(&ep->st->inflight, 1, memory_order_relaxed);
            a->counted_ep = true;
        }
        return true;
    }
    return false;
}

/*
 * Releases what the attempt holds: its connection (closed, unless the
 * exchange already released it), the endpoint's in-flight count and the
 * breaker's admission with <outcome> (1 success, 0 failure, -1 unknown: the
 * client left). The upstream time is counted.
 */
static void attempt_end(struct tp_shard *sh, struct tp_req *r, int outcome)
{
    struct tp_attempt *a = &r->att;

    if (a->conn)
        r->ux->abort(sh, r);
    if (!a->ep)
        return;
    r->up_ns += sh->now_ns - a->start_ns;
    if (a->counted_ep)
        atomic_fetch_sub_explicit(&a->ep->st->inflight, 1, memory_order_relaxed);
    /* an abandoned attempt says nothing about the endpoint, except that a
     * half-open trial must not stay unanswered: it counts as failed, as the
     * breaker requires */
    if (a->breaker_admitted && a->ep->breaker && (outcome >= 0 || a->bpass.how == TP_BREAKER_TRIAL))
        tp_breaker_report(a->ep->breaker, a->bpass, outcome == 1, sh->now_ms);
    memset(a, 0, sizeof(*a));
}

/* The upstream's max_concurrent_requests slot, held from the first attempt to the end. */
static void upstream_release(struct tp_req *r)
{
    if (r->counted_up) {
        atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
        r->counted_up = false;
    }
}

/* ------------------------------------------------------------------ */
/* start, attempts, abort                                              */
/* ------------------------------------------------------------------ */

void tp_proxy_start(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_rt_route *rt = r->route;

    if (rt->up) {
        r->up = rt->up;
    } else {
        size_t i = tp_router_split_pick(rt->cfg->split, rt->cfg->n_split, (uint32_t)tp_rand64(sh));
        r->up = rt->split[i];
    }
    r->ux = r->up->cfg->protocol == TP_UPROTO_HTTP1 ? tp_h1_exchange_ops() : tp_h2_exchange_ops();
    if (r->up->cfg->balance == TP_BALANCE_HASH)
        r->hash_key = hash_key_of(r, &r->up->cfg->hash_key);
    if (!r->ux->prepare(sh, r)) {
        tp_req_error(sh, r, 431, "request header fields too large", true);
        return;
    }
    attempt(sh, r);
}

static void attempt(struct tp_shard *sh, struct tp_req *r)
{
    const struct tp_cfg_upstream *cfg = r->up->cfg;

    r->attempts++;
    if (cfg->max_concurrent_requests && !r->counted_up) {
        uint64_t n = atomic_fetch_add_explicit(&r->up->st->inflight, 1, memory_order_relaxed) + 1;
        if (n > cfg->max_concurrent_requests) {
            atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
            tp_req_error(sh, r, 503, "upstream at capacity", false);
            return;
        }
        r->counted_up = true;
    }
    if (!attempt_begin(sh, r)) {
        upstream_release(r);
        /* an upstream whose names never resolved has no endpoint at all */
        tp_req_error(sh, r, 503, r->up->n_eps ? "no healthy endpoint" : "no resolved endpoint", false);
        return;
    }
    r->ux->start(sh, r);
}

void tp_proxy_abort(struct tp_shard *sh, struct tp_req *r)
{
    attempt_end(sh, r, -1);
    upstream_release(r);
}

/* ------------------------------------------------------------------ */
/* failures and retries                                                */
/* ------------------------------------------------------------------ */

/*
 * May this request go out again after <kind>? Only while nothing reached
 * the client, the body (if any) is still unread in the client's queue, and:
 * the failure was a connect failure (nothing was sent), or the method is
 * idempotent. With `retries`, up to 1 + attempts tries for the kinds in
 * `on`; without, one retry on a fresh connection when a pooled one turned
 * out to be dead (the keepalive race: <pooled_silent>, a reused connection
 * that sent nothing).
 */
static bool can_retry(struct tp_req *r, enum tp_fail_kind kind, bool pooled_silent)
{
    const struct tp_cfg_retries *rt = r->up->cfg->retries;
    bool nothing_sent = kind == TP_FAIL_CONNECT || kind == TP_FAIL_CONNECT_TIMEOUT || kind == TP_FAIL_REFUSED;

    if (r->resp_state != TP_RESP_NONE || r->body_fwd)
        return false;
    if (!nothing_sent && !idempotent(r->method))
        return false;
    if (rt) {
        unsigned bit = 0;
        switch (kind) {
        case TP_FAIL_CONNECT:
        case TP_FAIL_CONNECT_TIMEOUT:
            bit = TP_RETRY_CONNECT_FAILURE;
            break;
        case TP_FAIL_RESET:
            bit = TP_RETRY_RESET;
            break;
        case TP_FAIL_REFUSED:
            bit = TP_RETRY_CONNECT_FAILURE | TP_RETRY_RESET;
            break;
        case TP_FAIL_STATUS:
            bit = r->fail_status == 502 ? TP_RETRY_502 : r->fail_status == 503 ? TP_RETRY_503 : TP_RETRY_504;
            break;
        case TP_FAIL_TIMEOUT:
            bit = TP_RETRY_504;
            break;
        default:
            break;
        }
        if ((rt->on & bit) && r->attempts <= rt->attempts)
            return true;
    }
    /* the keepalive race: a reused connection died before answering; and an
     * HTTP/2 stream the upstream did not process (GOAWAY, REFUSED_STREAM) */
    if (((kind == TP_FAIL_RESET && pooled_silent) || kind == TP_FAIL_REFUSED) && !r->fresh_retry_done) {
        r->fresh_retry_done = true;
        r->force_fresh = true;
        return true;
    }
    return false;
}

static const char *fail_text(enum tp_fail_kind kind)
{
    switch (kind) {
    case TP_FAIL_CONNECT:
        return "connect failed";
    case TP_FAIL_CONNECT_TIMEOUT:
        return "connect timed out";
    case TP_FAIL_RESET:
        return "connection reset";
    case TP_FAIL_TIMEOUT:
        return "response timed out";
    case TP_FAIL_STATUS:
        return "error status";
    case TP_FAIL_REFUSED:
        return "stream refused (not processed)";
    default:
        return "invalid response";
    }
}

void tp_proxy_failed(struct tp_shard *sh, struct tp_req *r, enum tp_fail_kind kind, int err)
{
    struct tp_endpoint_state *st = r->att.ep ? r->att.ep->st : NULL;
    const char *what;
    /* the call's own deadline (grpc-timeout) passed: a 504 that says nothing
     * about the endpoint (a client asking for 1 ms must not open breakers),
     * and no retry can help */
    bool deadline = r->deadline_ms && sh->now_ms >= r->deadline_ms &&
                    (kind == TP_FAIL_TIMEOUT || kind == TP_FAIL_CONNECT_TIMEOUT);

    if (st) {
        struct tp_ep_shard *es = &st->shard[sh->id];
        if (kind == TP_FAIL_CONNECT || kind == TP_FAIL_CONNECT_TIMEOUT)
            tp_stat_add(&es->connect_failures, 1);
        else if (kind == TP_FAIL_STATUS)
            tp_stat_add(&es->requests[4], 1);
        if (err)
            TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: %s: %s (request %.*s)", st->upstream,
                      st->addr.text, fail_text(kind), tp_strerror(err), r->id_len, r->id);
        else
            TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: %s (request %.*s)", st->upstream, st->addr.text,
                      fail_text(kind), r->id_len, r->id);
    }
    bool pooled_silent = r->att.reused && !r->att.resp_bytes;
    attempt_end(sh, r, deadline ? -1 : 0);
    if (r->resp_state == TP_RESP_HEAD && r->head_unflushed && r->ds->ops->unqueue_head(sh, r)) {
        /* the upstream failed right behind its head (a bad body in the same
         * read): the head never left, so the client can still get a 502 */
        r->resp_state = TP_RESP_NONE;
        r->bytes_out -= r->resp_head_len;
        r->status = 0;
    }
    r->head_unflushed = false;
    if (r->resp_state != TP_RESP_NONE) {
        /* part of the response already went out: cut the client short so it
         * cannot take a truncated response for a complete one */
        r->aborted = true;
        upstream_release(r);
        r->ds->ops->abort(sh, r);
        return;
    }
    if (!deadline && can_retry(r, kind, pooled_silent)) {
        attempt(sh, r);
        return;
    }
    upstream_release(r);
    bool close = r->body_state == TP_BODY_STREAM;
    if (deadline) {
        tp_req_error(sh, r, 504, "deadline exceeded (grpc-timeout)", close);
        return;
    }
    r->err = err;
    switch (kind) {
    case TP_FAIL_TIMEOUT:
        tp_req_error(sh, r, 504, "upstream timeout", close);
        return;
    case TP_FAIL_STATUS:
        /* retries exhausted on an error status: a gateway error of the same code */
        tp_req_error(sh, r, r->fail_status, "upstream error", close);
        return;
    case TP_FAIL_CONNECT:
    case TP_FAIL_CONNECT_TIMEOUT:
        what = "upstream connect failure";
        break;
    case TP_FAIL_RESET:
        what = "upstream connection reset";
        break;
    case TP_FAIL_REFUSED:
        what = "upstream refused the request";
        break;
    default:
        what = "invalid upstream response";
        break;
    }
    tp_req_error(sh, r, 502, what, close);
}

/* ------------------------------------------------------------------ */
/* results                                                             */
/* ------------------------------------------------------------------ */

/*
 * A 101 is only taken when we offered an upgrade, the request was sent in
 * full, and the upstream names one of the protocols offered (its Upgrade
 * value goes to the client through <ri>).
 */
static bool upgrade_accepted(const struct tp_req *r, const struct tp_head *h, struct tp_resp_info *ri)
{
    const struct tp_hdr *u = tp_head_find(h, TP_H_UPGRADE);

    if (!r->upg_len || !u || (r->body_state != TP_BODY_DONE && r->body_state != TP_BODY_NONE))
        return false;
    const char *v = h->base + u->value.off;
    size_t len = u->value.len;
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    while (len && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    if (!len || !tp_h1_has_token(r->upg, r->upg_len, v, len))
        return false;
    ri->upgrade = v;
    ri->upgrade_len = (uint32_t)len;
    return true;
}

bool tp_proxy_response_head(struct tp_shard *sh, struct tp_req *r, unsigned status, struct tp_head *h,
                            struct tp_resp_info *ri)
{
    if (status == 101) {
        if (!upgrade_accepted(r, h, ri) || !r->ds->ops->tunnel) {
            /* a switch we did not offer (or to a protocol we did not offer) */
            tp_proxy_failed(sh, r, TP_FAIL_INVALID, TP_EUPSTREAM);
            return false;
        }
        if (!r->ds->ops->head(sh, r, status, h, ri)) {
            tp_proxy_failed(sh, r, TP_FAIL_INVALID, -ENOMEM);
            return false;
        }
        return true;
    }
    if (status < 100 || status > 599) {
        /* not a status a client can be given (llhttp takes any three digits) */
        tp_proxy_failed(sh, r, TP_FAIL_INVALID, TP_EUPSTREAM);
        return false;
    }
    if (status < 200) {
        r->ds->ops->head(sh, r, status, h, ri); /* an interim head that cannot go is dropped */
        return true;
    }

    const struct tp_cfg_retries *rt = r->up->cfg->retries;
    if (rt && (status == 502 || status == 503 || status == 504)) {
        unsigned bit = status == 502 ? TP_RETRY_502 : status == 503 ? TP_RETRY_503 : TP_RETRY_504;
        if ((rt->on & bit) && r->attempts <= rt->attempts && r->resp_state == TP_RESP_NONE && !r->body_fwd &&
            idempotent(r->method)) {
            r->fail_status = (uint16_t)status;
            tp_proxy_failed(sh, r, TP_FAIL_STATUS, 0);
            return false;
        }
    }
    if (r->grpc) {
        /* trailers-only (or an HTTP/1 upstream's head): the status is here */
        size_t len;
        const char *v = tp_head_value(h, "grpc-status", 11, &len);
        if (v)
            r->grpc_status = (uint8_t)tp_grpc_status_parse(v, len);
    }
    if (!r->ds->ops->head(sh, r, status, h, ri)) {
        tp_proxy_failed(sh, r, TP_FAIL_INVALID, TP_EUPSTREAM);
        return false;
    }
    return true;
}

bool tp_proxy_response_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h)
{
    if (r->grpc) {
        size_t len;
        const char *v = tp_head_value(h, "grpc-status", 11, &len);
        if (v)
            r->grpc_status = (uint8_t)tp_grpc_status_parse(v, len);
    }
    return r->ds->ops->trailers(sh, r, h);
}

/*
 * The attempt succeeded with a 101: its endpoint counts the response and the
 * breaker hears of the success now; the endpoint's in-flight slot
 * (least_request) and the upstream's (max_concurrent_requests) stay held by
 * the tunnel until it ends.
 */
void tp_proxy_upgraded(struct tp_shard *sh, struct tp_req *r, struct tp_transport *ut)
{
    struct tp_attempt *a = &r->att;
    struct tp_ep_shard *es = &a->ep->st->shard[sh->id];
    struct tp_transport *dt;

    tp_stat_add(&es->requests[0], 1);
    tp_hist_observe(&es->duration, (sh->now_ns - a->start_ns) / 1000);
    if (a->breaker_admitted && a->ep->breaker)
        tp_breaker_report(a->ep->breaker, a->bpass, true, sh->now_ms);
    a->breaker_admitted = false;
    a->conn = NULL;
    dt = r->ds->ops->tunnel(sh, r);
    tp_tunnel_start(sh, r, dt, ut);
}

void tp_proxy_response_done(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_ep_shard *es = &r->att.ep->st->shard[sh->id];

    tp_stat_add(&es->requests[tp_status_class(r->status)], 1);
    tp_hist_observe(&es->duration, (sh->now_ns - r->att.start_ns) / 1000);
    attempt_end(sh, r, r->status >= 500 ? 0 : 1);
    upstream_release(r);
    r->ds->ops->flush(sh, r);
    r->ds->ops->done(sh, r);
}
