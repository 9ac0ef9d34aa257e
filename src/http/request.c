/* SPDX-License-Identifier: MIT */
/*
 * The request layer (see request.h): a request's life from a parsed head to
 * its record, whatever protocol the downstream session speaks. [shard]
 *
 *   session parsed the head ─▶ tp_req_dispatch: ids, path check, route
 *        │                        ├─ no route ─────────────▶ 404 (ds->error)
 *        │                        ├─ rate limit refuses ────▶ 429 (ds->error)
 *        │                        ├─ global limit, lease in flight ─▶ parked (tp_req_park_timer)
 *        │                        ├─ direct_response ──────▶ ds->direct
 *        │                        └─ proxy (proxy.c) ───────▶ upstream exchange
 *        ▼
 *   session ends it ─▶ tp_req_end: upstream side dropped, metrics, access log
 */
#include <stdio.h>
#include <string.h>

#include <turnpike/hash.h>
#include <turnpike/log.h>
#include <turnpike/lease.h>
#include <turnpike/ratelimit.h>
#include <turnpike/router.h>

#include "http/accesslog.h"
#include "http/request.h"

#define FREE_CAP  4096 /* requests kept on the shard's free list */
#define FIELD_MAX 2048 /* [bytes] longest field captured for the access log */

/* ------------------------------------------------------------------ */
/* begin / end                                                         */
/* ------------------------------------------------------------------ */

struct tp_req *tp_req_begin(struct tp_shard *sh, struct tp_ds *ds)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_req *r = hs->req_free;

    if (r) {
        hs->req_free = r->next_free;
        hs->n_req_free--;
    } else {
        r = malloc(sizeof(*r));
        if (!r)
            return NULL;
    }
    memset(r, 0, offsetof(struct tp_req, head));
    tp_head_init(&r->head);
    r->ds = ds;
    r->start_ns = sh->now_ns;
    r->snap = tp_shard_snapshot_enter(sh);
    r->limits = hs->limits;
    r->grpc_status = TP_GRPC_NONE;
    tp_stat_add(&hs->active_requests, 1);
    return r;
}

static void req_record(struct tp_shard *sh, struct tp_req *r);
static void unpark(struct tp_shard *sh, struct tp_req *r);

void tp_req_end(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_http_shard *hs = tp_http_shard(sh);

    if (r->parked)
        unpark(sh, r);
    if (hs->park_cur == r)
        hs->park_cur = NULL;
    if (r->att.conn || r->att.ep || r->counted_up)
        tp_proxy_abort(sh, r);
    /* a request whose head was read but that got no response: the client
     * went away (recorded as 499, as nginx does); an unfinished head is not
     * a request and is not recorded */
    if (!r->status && r->head_parsed)
        r->status = 499;
    if (r->status)
        req_record(sh, r);
    if (r->info) {
        tp_block_put(sh, r->info);
        r->info = NULL;
    }
    if (r->uhead) {
        tp_block_put(sh, r->uhead);
        r->uhead = NULL;
    }
    if (r->names) {
        tp_block_put(sh, r->names);
        r->names = NULL;
    }
    tp_req_auth_release(r);
    tp_head_dispose(sh, &r->head);
    tp_shard_snapshot_leave(sh, r->snap);
    tp_stat_add(&hs->active_requests, (uint64_t)-1);
    if (hs->n_req_free < FREE_CAP) {
        r->next_free = hs->req_free;
        hs->req_free = r;
        hs->n_req_free++;
    } else {
        free(r);
    }
}

void tp_req_error(struct tp_shard *sh, struct tp_req *r, unsigned status, const char *reason, bool close)
{
    if (r->grpc && r->resp_state == TP_RESP_NONE)
        r->grpc_status = (uint8_t)tp_grpc_status(status); /* the answer goes in gRPC form */
    r->ds->ops->error(sh, r, status, reason, close);
}

/* ------------------------------------------------------------------ */
/* ids                                                                 */
/* ------------------------------------------------------------------ */

static bool valid_request_id(const char *v, size_t len)
{
    if (len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            return false;
    }
    return true;
}

static bool is_hex(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
    }
    return true;
}

static bool all_zero(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] != '0')
            return false;
    return true;
}

/* W3C traceparent version 00: "00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>". */
static bool valid_traceparent(const char *v, size_t len)
{
    if (len < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return false;
    if (!is_hex(v, 2) || !is_hex(v + 3, 32) || !is_hex(v + 36, 16) || !is_hex(v + 53, 2))
        return false;
    if (v[0] == 'f' && v[1] == 'f')
        return false;
    if (v[0] == '0' && v[1] == '0' && len != 55)
        return false;
    return !all_zero(v + 3, 32) && !all_zero(v + 36, 16);
}

void tp_req_ids(struct tp_shard *sh, struct tp_req *r, bool from_head)
{
    const struct tp_head *h = &r->head;

    for (uint32_t i = 0; from_head && i < h->n_hdrs && !(r->id_len && r->trace[0]); i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        const char *v = h->base + hd->value.off;
        if (hd->id == TP_H_X_REQUEST_ID && !r->id_len && valid_request_id(v, hd->value.len)) {
            memcpy(r->id, v, hd->value.len);
            r->id_len = (uint8_t)hd->value.len;
        } else if (hd->id == TP_H_TRACEPARENT && !r->trace[0] && valid_traceparent(v, hd->value.len)) {
            memcpy(r->trace, v, 55);
        }
    }
    if (!r->id_len) {
        tp_h1_random_hex(sh, r->id, 16);
        r->id_len = 32;
    }
    if (!r->trace[0]) {
        memcpy(r->trace, "00-", 3);
        tp_h1_random_hex(sh, r->trace + 3, 16);
        r->trace[35] = '-';
        tp_h1_random_hex(sh, r->trace + 36, 8);
        memcpy(r->trace + 52, "-01", 3);
    }
}

/* ------------------------------------------------------------------ */
/* dispatch                                                            */
/* ------------------------------------------------------------------ */

/* "." and ".." segments (also percent-encoded, which upstreams commonly decode) are refused. */
static bool has_dot_segment(const char *p, size_t len)
{
    size_t i = 0;

    while (i < len) {
        if (p[i++] != '/')
            continue;
        size_t s = i, dots = 0;
        while (i < len && p[i] != '/')
            i++;
        /* the segment is p[s, i): count its dots, giving up at any other byte */
        for (size_t k = s; k < i;) {
            if (p[k] == '.') {
                dots++;
                k++;
            } else if (i - k >= 3 && p[k] == '%' && p[k + 1] == '2' && (p[k + 2] | 0x20) == 'e') {
                dots++;
                k += 3;
            } else {
                dots = 3;
                break;
            }
        }
        if (dots == 1 || dots == 2)
            return true;
    }
    return false;
}

static size_t cap_len(size_t n)
{
    return n > FIELD_MAX ? FIELD_MAX : n;
}

/* what a line needs from the request head, copied while the head is alive */
struct alog_info {
    uint16_t method_len, host_len, path_len, target_len, ref_len, ua_len;
    char data[];
};

static void capture(struct tp_shard *sh, struct tp_req *r, const char *path, size_t path_len)
{
    const struct tp_head *h = &r->head;
    size_t ref_len = 0, ua_len = 0;
    const char *ref = NULL, *ua = NULL;
    bool combined;

    if (!tp_accesslog_enabled(&combined))
        return;
    const char *method = llhttp_method_name((llhttp_method_t)r->method);
    size_t mlen = strlen(method);
    const char *host = h->base + r->host_off;
    size_t hlen = cap_len(r->host_len);
    const char *target = h->base + h->url.off;
    size_t tlen = 0;
    path_len = cap_len(path_len);
    if (combined) {
        /* only the combined format shows these */
        tlen = cap_len(h->url.len);
        ref = tp_head_value(h, "referer", 7, &ref_len);
        ua = tp_head_value(h, "user-agent", 10, &ua_len);
    }
    ref_len = ref ? cap_len(ref_len) : 0;
    ua_len = ua ? cap_len(ua_len) : 0;

    struct alog_info *in;
    struct tp_block *b = tp_block_get(sh, sizeof(*in) + mlen + hlen + path_len + tlen + ref_len + ua_len);
    if (!b)
        return;
    in = (struct alog_info *)b->data;
    char *p = in->data;
    in->method_len = (uint16_t)mlen;
    memcpy(p, method, mlen);
    p += mlen;
    in->host_len = (uint16_t)hlen;
    memcpy(p, host, hlen);
    p += hlen;
    in->path_len = (uint16_t)path_len;
    memcpy(p, path, path_len);
    p += path_len;
    in->target_len = (uint16_t)tlen;
    memcpy(p, target, tlen);
    p += tlen;
    in->ref_len = (uint16_t)ref_len;
    if (ref_len)
        memcpy(p, ref, ref_len);
    p += ref_len;
    in->ua_len = (uint16_t)ua_len;
    if (ua_len)
        memcpy(p, ua, ua_len);
    r->info = b;
}

void tp_req_redact_param(struct tp_req *r, const char *name, size_t name_len)
{
    struct alog_info *in = r->info ? (struct alog_info *)r->info->data : NULL;

    if (!in || !in->target_len)
        return;
    char *t = in->data + in->method_len + in->host_len + in->path_len;
    char *e = t + in->target_len, *q = memchr(t, '?', in->target_len);
    for (char *s = q ? q + 1 : e; s < e;) {
        char *amp = memchr(s, '&', (size_t)(e - s));
        char *end = amp ? amp : e;
        char *eq = memchr(s, '=', (size_t)(end - s));
        if (eq && (size_t)(eq - s) == name_len && memcmp(s, name, name_len) == 0 && end - eq > 1) {
            /* the value becomes "*": the rest of the line's fields move up */
            size_t cut = (size_t)(end - eq) - 2;
            char *tail_end = t + in->target_len + in->ref_len + in->ua_len;
            eq[1] = '*';
            memmove(eq + 2, end, (size_t)(tail_end - end));
            in->target_len = (uint16_t)(in->target_len - cut);
            e -= cut;
            end -= cut;
        }
        s = end + 1;
    }
}

static const char *hdr_lookup(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    return tp_head_value(ctx, name, name_len, value_len);
}

/* ---- rate limits ---- */

#define PARK_MAX 1024 /* requests a shard keeps waiting for leases; more get the old answer, 429 */

static uint64_t rate_key(struct tp_req *r, const struct tp_cfg_rate_limit *cfg)
{
    switch (cfg->key.kind) {
    case TP_KEY_CLIENT_IP:
        return tp_hash_bytes(r->ds->peer, r->ds->peer_len);
    case TP_KEY_HEADER: {
        size_t vl = 0;
        const char *v = tp_head_value(&r->head, cfg->key.name, cfg->key.name_len, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    }
    case TP_KEY_CLAIM: {
        /* requests without the claim share one bucket */
        size_t vl = 0;
        const char *v = tp_req_claim(r, cfg->key.name, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    }
    default:
        return 0;
    }
}

/* The store did not give the pool a token in time (down, or slower than its
 * timeout): rate_limit_store.on_failure decides. */
static bool rate_fallback(struct tp_shard *sh, struct tp_req *r, struct tp_rl_result *res)
{
    const struct tp_cfg_rl_store *store = r->snap->cfg->rl_store;

    tp_stat_add(&r->route->st->stats[sh->id].rl_fallback, 1);
    if (store && store->on_failure == TP_STORE_FAIL_ALLOW) {
        res->retry_after_s = 0;
        return true;
    }
    return tp_ratelimit_take(r->route->rl, r->rl_key, sh->now_ns, res);
}

/* The decision made: RateLimit headers ride on every answer of the route; false when a 429 was sent. */
static bool rate_answer(struct tp_shard *sh, struct tp_req *r, bool ok, const struct tp_rl_result *res)
{
    char *x = r->extra_hdrs;
    int n = snprintf(x, sizeof(r->extra_hdrs),
                     "RateLimit-Limit: %llu\r\nRateLimit-Remaining: %llu\r\nRateLimit-Reset: %llu\r\n",
                     (unsigned long long)res->limit, (unsigned long long)res->remaining,
                     (unsigned long long)res->reset_s);
    if (!ok && n > 0 && (size_t)n < sizeof(r->extra_hdrs))
        n += snprintf(x + n, sizeof(r->extra_hdrs) - (size_t)n, "Retry-After: %llu\r\n",
                      (unsigned long long)(res->retry_after_s ? res->retry_after_s : 1));
    r->extra_len = n > 0 && (size_t)n < sizeof(r->extra_hdrs) ? (uint16_t)n : 0;
    if (ok)
        return true;
    tp_stat_add(&r->route->st->stats[sh->id].ratelimited, 1);
    tp_req_error(sh, r, 429, "rate limited", false);
    return false;
}

/* The shard's lists of waiting requests: <park> waits for a lease; <run> is
 * being taken from again (tp_req_park_wake). r->parked says which. */
static void list_push(struct tp_req_list *l, struct tp_req *r)
{
    r->park_next = NULL;
    r->park_prev = l->tail;
    if (l->tail)
        l->tail->park_next = r;
    else
        l->head = r;
    l->tail = r;
}

static void list_del(struct tp_req_list *l, struct tp_req *r)
{
    if (r->park_prev)
        r->park_prev->park_next = r->park_next;
    else
        l->head = r->park_next;
    if (r->park_next)
        r->park_next->park_prev = r->park_prev;
    else
        l->tail = r->park_prev;
    r->park_prev = r->park_next = NULL;
}

/* The backstop: the timer fires when the first waiting request's time is up
 * (the store's answer normally wakes them long before). */
static void park_timer_at(struct tp_shard *sh, uint64_t until_ns)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    uint64_t ms = (until_ns + 999999) / 1000000;

    if (!tp_timer_armed(&hs->park_timer) || ms < hs->park_timer.deadline_ms)
        tp_timer_arm(&sh->wheel, &hs->park_timer, ms);
}

static void park(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    const struct tp_cfg_rl_store *store = r->snap->cfg->rl_store;
    uint64_t timeout_ms = store && store->timeout_ms ? store->timeout_ms : 5;

    r->park_until_ns = sh->now_ns + timeout_ms * 1000000ull;
    r->parked = TP_PARK_WAIT;
    list_push(&hs->park, r);
    hs->n_parked++;
    park_timer_at(sh, r->park_until_ns);
}

static void unpark(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_http_shard *hs = tp_http_shard(sh);

    list_del(r->parked == TP_PARK_RUN ? &hs->park_run : &hs->park, r);
    r->parked = TP_PARK_NONE;
    hs->n_parked--;
    if (!hs->n_parked)
        tp_timer_cancel(&sh->wheel, &hs->park_timer);
}

/* This shard's bit in the pools' waiter marks. */
static inline uint64_t waiter_bit(const struct tp_shard *sh)
{
    return 1ull << (sh->id & 63);
}

enum admit { ADMIT_NO, ADMIT_YES, ADMIT_PARKED };

/*
 * The route's rate limit. scope: global takes a leased token; an empty pool
 * whose lease is asked for or in flight parks the request rather than
 * refusing it (the store's answer wakes the shard: tp_req_park_wake): 429
 * only on the store's word that the bucket is empty, on_failure when it is
 * down or does not answer in time.
 */
static enum admit rate_admit(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_rl_result res;
    bool ok;

    r->rl_key = rate_key(r, r->route->cfg->rate_limit);
    if (!r->route->lease) {
        ok = tp_ratelimit_take(r->route->rl, r->rl_key, sh->now_ns, &res);
        return rate_answer(sh, r, ok, &res) ? ADMIT_YES : ADMIT_NO;
    }
    bool room = tp_http_shard(sh)->n_parked < PARK_MAX;
    enum tp_lease_verdict v =
        tp_lease_take(r->route->lease, r->rl_key, sh->now_ns, room ? waiter_bit(sh) : 0, &res);
    if (v == TP_LEASE_WAIT && room) {
        park(sh, r);
        return ADMIT_PARKED;
    }
    ok = v == TP_LEASE_ADMIT || (v == TP_LEASE_FALLBACK && rate_fallback(sh, r, &res));
    return rate_answer(sh, r, ok, &res) ? ADMIT_YES : ADMIT_NO;
}

static void dispatch_admitted(struct tp_shard *sh, struct tp_req *r);

/*
 * Takes again for every waiting request, oldest first: a token goes on, the
 * store's no is a 429, still no answer after the store's timeout is
 * on_failure; the others wait on. The list is moved aside first, so that what
 * an answer does (a request of the list ending, another one parking) cannot
 * pull the walk's next request away.
 */
void tp_req_park_wake(struct tp_shard *sh)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_req *r;

    if (!hs->park.head)
        return;
    for (r = hs->park.head; r; r = r->park_next)
        r->parked = TP_PARK_RUN;
    hs->park_run = hs->park;
    hs->park.head = hs->park.tail = NULL;
    tp_timer_cancel(&sh->wheel, &hs->park_timer);
    while ((r = hs->park_run.head)) {
        struct tp_rl_result res;
        bool ok;

        if (r->status) { /* answered meanwhile (a timeout): only the end is left */
            unpark(sh, r);
            continue;
        }
        enum tp_lease_verdict v = tp_lease_take(r->route->lease, r->rl_key, sh->now_ns, waiter_bit(sh), &res);
        if (v == TP_LEASE_WAIT && sh->now_ns < r->park_until_ns) {
            list_del(&hs->park_run, r);
            r->parked = TP_PARK_WAIT;
            list_push(&hs->park, r);
            park_timer_at(sh, r->park_until_ns);
            continue;
        }
        unpark(sh, r);
        ok = v == TP_LEASE_ADMIT || (v != TP_LEASE_DENY && rate_fallback(sh, r, &res));
        /* the session kept the head for us: release it once the answer or the
         * proxy started, as the session does, unless the request ended */
        hs->park_cur = r;
        if (rate_answer(sh, r, ok, &res))
            dispatch_admitted(sh, r);
        if (hs->park_cur == r)
            tp_head_release(sh, &r->head);
        hs->park_cur = NULL;
    }
}

void tp_req_park_timer(struct tp_timer *t, uint64_t now_ms)
{
    (void)t;
    (void)now_ms;
    tp_req_park_wake(tp_self);
}

static bool upgrade_allowed(const struct tp_cfg_route *rc, const char *tok, size_t len)
{
    if (len == 3 && strncasecmp(tok, "h2c", 3) == 0)
        return false; /* HTTP/2 is never reached through an HTTP/1.1 upgrade */
    if (!rc->upgrade)
        return len == 9 && strncasecmp(tok, "websocket", 9) == 0; /* the default: [websocket] */
    for (size_t i = 0; i < rc->n_upgrade; i++)
        if (strlen(rc->upgrade[i]) == len && strncasecmp(rc->upgrade[i], tok, len) == 0)
            return true;
    return false;
}

/* An upgrade request: the tokens of its Upgrade headers that the route
 * tunnels go to the upstream (in r->upg); the others are dropped with the
 * rest of the hop-by-hop headers. None left: a plain request. */
static void upgrade_offer(struct tp_req *r)
{
    const struct tp_head *h = &r->head;

    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        if (h->hdrs[i].id != TP_H_UPGRADE)
            continue;
        const char *v = h->base + h->hdrs[i].value.off, *end = v + h->hdrs[i].value.len;
        while (v < end) {
            while (v < end && (*v == ' ' || *v == '\t' || *v == ','))
                v++;
            const char *t = v;
            while (v < end && *v != ',' && *v != ' ' && *v != '\t')
                v++;
            size_t len = (size_t)(v - t);
            if (!len || !upgrade_allowed(r->route->cfg, t, len))
                continue;
            size_t need = (r->upg_len ? 2 : 0) + len;
            if (r->upg_len + need > sizeof(r->upg))
                return; /* a list this long is not a real offer; what fits goes */
            if (r->upg_len) {
                memcpy(r->upg + r->upg_len, ", ", 2);
                r->upg_len += 2;
            }
            memcpy(r->upg + r->upg_len, t, len);
            r->upg_len = (uint8_t)(r->upg_len + len);
        }
    }
}

/*
 * A gRPC call's grpc-timeout becomes its deadline: the upstream waits are
 * bounded by it (tp_req_upstream_deadline), and when it passes first the
 * answer is 504, DEADLINE_EXCEEDED in gRPC form. upstream_response still
 * applies as it does to every request. A malformed value is ignored, as
 * Envoy does: the upstream gets the header unchanged and judges it itself.
 */
static void grpc_deadline(struct tp_shard *sh, struct tp_req *r)
{
    size_t len;
    uint64_t ms;
    const char *v = tp_head_value(&r->head, "grpc-timeout", 12, &len);

    if (v && tp_grpc_timeout_parse(v, len, &ms))
        r->deadline_ms = sh->now_ms + ms;
}

void tp_req_dispatch(struct tp_shard *sh, struct tp_req *r, const char *path, size_t path_len)
{
    const char *q = memchr(path, '?', path_len);

    if (q)
        path_len = (size_t)(q - path);
    if (has_dot_segment(path, path_len)) {
        tp_req_error(sh, r, 400, "dot segment in path", true);
        return;
    }
    capture(sh, r, path, path_len);

    struct tp_route_req rq = {
        .method = r->method,
        .host = r->host_len ? r->head.base + r->host_off : NULL,
        .host_len = r->host_len,
        .path = path,
        .path_len = path_len,
        .header = hdr_lookup,
        .header_ctx = &r->head,
    };
    r->route = tp_router_lookup(r->snap->router, &rq, NULL);
    if (!r->route) {
        tp_req_error(sh, r, 404, "no route", false);
        return;
    }
    if (r->route->auth && !tp_req_authenticate(sh, r))
        return;
    if (r->route->rl && rate_admit(sh, r) != ADMIT_YES)
        return; /* refused, or parked: tp_req_park_timer goes on */
    dispatch_admitted(sh, r);
}

/* The route's policies passed: the direct_response or the proxy. */
static void dispatch_admitted(struct tp_shard *sh, struct tp_req *r)
{
    if (r->route->cfg->direct) {
        r->ds->ops->direct(sh, r);
        return;
    }
    if (r->upgrade_req)
        upgrade_offer(r);
    if (r->grpc)
        grpc_deadline(sh, r);
    tp_proxy_start(sh, r);
}

/* ------------------------------------------------------------------ */
/* header rules                                                        */
/* ------------------------------------------------------------------ */

/* Hop-by-hop headers (RFC 9110 7.6.1): never forwarded in either direction;
 * each side writes its own framing and connection handling. */
static bool hop_by_hop(uint8_t id)
{
    switch (id) {
    case TP_H_CONNECTION:
    case TP_H_KEEP_ALIVE:
    case TP_H_PROXY_CONNECTION:
    case TP_H_TE:
    case TP_H_UPGRADE:
    case TP_H_TRANSFER_ENCODING:
        return true;
    default:
        return false;
    }
}

static bool in_names(const struct tp_header_kv *kv, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (kv[i].name_len == len && strncasecmp(kv[i].name, name, len) == 0)
            return true;
    return false;
}

static bool rewritten(const struct tp_header_rewrite *rw, const char *name, size_t len)
{
    return rw && (in_names(rw->remove, rw->n_remove, name, len) || in_names(rw->set, rw->n_set, name, len));
}

/* Marks the headers named in <h>'s Connection headers as hop-by-hop. */
static void mark_connection_tokens(struct tp_head *h)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        if (h->hdrs[i].id != TP_H_CONNECTION)
            continue;
        const char *v = h->base + h->hdrs[i].value.off;
        for (uint32_t k = 0; k < h->n_hdrs; k++)
            if (h->hdrs[k].id == TP_H_OTHER &&
                tp_h1_has_token(v, h->hdrs[i].value.len, h->base + h->hdrs[k].name.off, h->hdrs[k].name.len))
                h->hdrs[k].drop = 1;
    }
}

static inline void emit(const struct tp_hdr_sink *s, void *ctx, const char *name, size_t nlen, const char *v,
                        size_t vlen)
{
    s->name(ctx, name, nlen);
    s->value(ctx, v, vlen);
    s->end(ctx);
}

/* The route's set headers: "Name: value\r\n" lines, emitted one by one. */
static void emit_set(const struct tp_header_rewrite *rw, const struct tp_hdr_sink *s, void *ctx)
{
    for (size_t i = 0; rw && i < rw->n_set; i++)
        emit(s, ctx, rw->set[i].name, rw->set[i].name_len, rw->set[i].value, rw->set[i].value_len);
}

/* A Cookie header without the cookie <name> (the credential): the other
 * pairs as they were, "; " between them; nothing when it was alone. */
static void emit_cookie_without(const struct tp_hdr_sink *s, void *ctx, const struct tp_head *h,
                                const struct tp_hdr *hd, const char *name, size_t name_len)
{
    const char *p = h->base + hd->value.off, *e = p + hd->value.len;
    bool any = false;

    while (p < e) {
        while (p < e && (*p == ' ' || *p == ';'))
            p++;
        const char *end = memchr(p, ';', (size_t)(e - p));
        if (!end)
            end = e;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        bool cred = eq && (size_t)(eq - p) == name_len && memcmp(p, name, name_len) == 0;
        if (p < end && !cred) {
            if (!any)
                s->name(ctx, h->base + hd->name.off, hd->name.len);
            else
                s->value(ctx, "; ", 2);
            s->value(ctx, p, (size_t)(end - p));
            any = true;
        }
        p = end;
    }
    if (any)
        s->end(ctx);
}

/* The target as it goes out: as received, except that a credential taken
 * from the query string (auth from: query:NAME) is removed from it. */
static void write_target(struct tp_block *b, const struct tp_req *r, const char *target, size_t tlen)
{
    size_t nl;
    const char *name = tp_req_auth_query(r, &nl);
    const char *q = name ? memchr(target, '?', tlen) : NULL;

    if (!q) {
        tp_blk_put(b, target, tlen);
        return;
    }
    const char *e = target + tlen;
    char sep = '?';
    tp_blk_put(b, target, (size_t)(q - target));
    for (const char *s = q + 1; s < e;) {
        const char *amp = memchr(s, '&', (size_t)(e - s));
        const char *end = amp ? amp : e;
        const char *eq = memchr(s, '=', (size_t)(end - s));
        if (!(eq && (size_t)(eq - s) == nl && memcmp(s, name, nl) == 0) && end > s) {
            tp_blk_put(b, &sep, 1);
            tp_blk_put(b, s, (size_t)(end - s));
            sep = '&';
        }
        s = end + 1;
    }
}

void tp_req_upstream_target(const struct tp_req *r, struct tp_block *b)
{
    const struct tp_head *h = &r->head;
    const struct tp_rt_route *rt = r->route;
    const char *target = h->base + h->url.off + r->abs_path_off;
    size_t tlen = h->url.len - r->abs_path_off;

    /* strip_prefix: "/users/7?x" with "/users" -> "/7?x"; "/users" -> "/" */
    if (rt->strip_len && tlen >= rt->strip_len && memcmp(target, rt->cfg->strip_prefix, rt->strip_len) == 0 &&
        (tlen == rt->strip_len || target[rt->strip_len] == '/' || target[rt->strip_len] == '?' ||
         rt->cfg->strip_prefix[rt->strip_len - 1] == '/')) {
        target += rt->strip_len;
        tlen -= rt->strip_len;
        /* keep the path absolute */
        if (rt->cfg->strip_prefix[rt->strip_len - 1] == '/' || tlen == 0 || target[0] == '?')
            tp_blk_lit(b, "/");
    } else if (tlen == 0 || target[0] == '?') {
        tp_blk_lit(b, "/");
    }
    write_target(b, r, target, tlen);
}

bool tp_req_upstream_headers(const struct tp_req *r, const struct tp_hdr_sink *s, void *ctx)
{
    const struct tp_head *h = &r->head;
    const struct tp_header_rewrite *rw = r->route->req.cfg;
    const struct tp_ds *ds = r->ds;
    bool xff_done = false;

    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        const char *name = h->base + hd->name.off;
        if (hop_by_hop(hd->id))
            continue;
        switch (hd->id) {
        case TP_H_CONTENT_LENGTH:
        case TP_H_X_FORWARDED_PROTO:
        case TP_H_X_FORWARDED_HOST:
        case TP_H_X_REQUEST_ID:
        case TP_H_TRACEPARENT:
            continue;
        case TP_H_HOST:
            if (r->abs_path_off)
                continue; /* absolute-form: the authority is the host, written below */
            break;
        case TP_H_X_FORWARDED_FOR:
            if (xff_done)
                continue;
            /* all X-Forwarded-For lines become one, with the client appended */
            xff_done = true;
            s->name(ctx, "X-Forwarded-For", 15);
            for (uint32_t k = i; k < h->n_hdrs; k++) {
                if (h->hdrs[k].id != TP_H_X_FORWARDED_FOR)
                    continue;
                s->value(ctx, h->base + h->hdrs[k].value.off, h->hdrs[k].value.len);
                s->value(ctx, ", ", 2);
            }
            s->value(ctx, ds->peer, ds->peer_len);
            s->end(ctx);
            continue;
        default:
            break;
        }
        if (hd->drop || rewritten(rw, name, hd->name.len))
            continue;
        if (r->route->auth) {
            /* the credential and client-sent claim headers stay here */
            if (tp_req_auth_drops(r, hd))
                continue;
            size_t cl;
            const char *cookie = hd->id == TP_H_COOKIE ? tp_req_auth_cookie(r, &cl) : NULL;
            if (cookie) {
                emit_cookie_without(s, ctx, h, hd, cookie, cl);
                continue;
            }
        }
        emit(s, ctx, name, hd->name.len, h->base + hd->value.off, hd->value.len);
    }
    bool host_set = rw && in_names(rw->set, rw->n_set, "host", 4);
    if (r->abs_path_off && !host_set)
        emit(s, ctx, "Host", 4, h->base + r->host_off, r->host_len);
    emit_set(rw, s, ctx);
    tp_req_auth_headers(r, s, ctx);
    if (!xff_done)
        emit(s, ctx, "X-Forwarded-For", 15, ds->peer, ds->peer_len);
    if (ds->tls)
        emit(s, ctx, "X-Forwarded-Proto", 17, "https", 5);
    else
        emit(s, ctx, "X-Forwarded-Proto", 17, "http", 4);
    if (r->host_len)
        emit(s, ctx, "X-Forwarded-Host", 16, h->base + r->host_off, r->host_len);
    emit(s, ctx, "X-Request-Id", 12, r->id, r->id_len);
    emit(s, ctx, "traceparent", 11, r->trace, 55);
    if (r->upg_len) {
        /* the upgrade the route allows, offered hop by hop */
        emit(s, ctx, "Upgrade", 7, r->upg, r->upg_len);
        emit(s, ctx, "Connection", 10, "upgrade", 7);
    }
    return r->host_len || host_set;
}

void tp_req_extra_fields(const struct tp_req *r, tp_field_fn field, void *ctx)
{
    /* RateLimit-* lines are kept preformatted: split them back into fields */
    const char *p = r->extra_hdrs, *end = r->extra_hdrs + r->extra_len;

    while (p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!colon || !eol || colon > eol)
            break;
        field(ctx, p, (size_t)(colon - p), colon + 2, (size_t)(eol - colon - 2));
        p = eol + 2;
    }
}

struct sink_ctx {
    const struct tp_hdr_sink *s;
    void *ctx;
};

static void sink_field(void *ctx, const char *name, size_t nlen, const char *v, size_t vlen)
{
    const struct sink_ctx *sc = ctx;
    emit(sc->s, sc->ctx, name, nlen, v, vlen);
}

bool tp_req_response_headers(const struct tp_req *r, struct tp_head *h, const struct tp_hdr_sink *s,
                             void *ctx)
{
    const struct tp_header_rewrite *rw = r->route->resp.cfg;
    bool date = rw && in_names(rw->set, rw->n_set, "date", 4);

    mark_connection_tokens(h);
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        const char *name = h->base + hd->name.off;
        if (hop_by_hop(hd->id) || hd->id == TP_H_X_REQUEST_ID || hd->drop ||
            rewritten(rw, name, hd->name.len))
            continue;
        date |= hd->id == TP_H_DATE;
        emit(s, ctx, name, hd->name.len, h->base + hd->value.off, hd->value.len);
    }
    emit_set(rw, s, ctx);
    struct sink_ctx sc = {s, ctx};
    tp_req_extra_fields(r, sink_field, &sc);
    emit(s, ctx, "X-Request-Id", 12, r->id, r->id_len);
    return date;
}

void tp_req_trailer_fields(const struct tp_head *h, const struct tp_hdr_sink *s, void *ctx)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        const char *name = h->base + hd->name.off;
        if (!hd->name.len || name[0] == ':' || hop_by_hop(hd->id) || hd->id == TP_H_HOST ||
            hd->id == TP_H_TRAILER || hd->id == TP_H_CONTENT_LENGTH)
            continue;
        emit(s, ctx, name, hd->name.len, h->base + hd->value.off, hd->value.len);
    }
}

/* ------------------------------------------------------------------ */
/* accounting                                                          */
/* ------------------------------------------------------------------ */

void tp_req_count(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_route_stats *rs = r->route ? &r->route->st->stats[sh->id] : &tp_http_shard(sh)->unmatched;

    if (r->counted)
        return;
    r->counted = true;
    tp_stat_add(&rs->requests[tp_status_class(r->status)], 1);
    if (r->grpc_status != TP_GRPC_NONE)
        tp_stat_add(&rs->grpc[r->grpc_status], 1);
    tp_hist_observe(&rs->duration, (sh->now_ns - r->start_ns) / 1000);
}

static void req_record(struct tp_shard *sh, struct tp_req *r)
{
    uint64_t dur_ns = sh->now_ns - r->start_ns;

    tp_req_count(sh, r);

    bool combined;
    if (!tp_accesslog_enabled(&combined))
        return;
    const struct alog_info *in = r->info ? (const struct alog_info *)r->info->data : NULL;
    struct tp_access_record rec = {
        .client = r->ds->peer,
        .client_len = r->ds->peer_len,
        .id = r->id,
        .id_len = r->id_len,
        .trace_id = r->trace + 3,
        .http_minor = r->http_minor,
        .h2 = r->h2,
        .status = r->status,
        .bytes_in = r->bytes_in,
        .bytes_out = r->bytes_out,
        .body_out = r->bytes_out > r->resp_head_len ? r->bytes_out - r->resp_head_len : 0,
        .duration_ns = dur_ns,
        .route = r->route ? r->route->cfg->name : NULL,
        .upstream = r->up ? r->up->cfg->name : NULL,
        .endpoint = r->last_ep ? r->last_ep->cfg->addr.text : NULL,
        .has_upstream_ns = r->last_ep != NULL || r->names,
        .upstream_ns = r->up_ns,
        .grpc_status = r->grpc_status == TP_GRPC_NONE ? -1 : r->grpc_status,
        .error = r->error,
        .cause = r->error && r->err ? tp_strerror(r->err) : NULL,
    };
    rec.subject = tp_req_subject(r, &rec.subject_len);
    if (r->names) {
        /* a tunnel: its generation may have gone before it ended */
        const char *d = r->names->data;
        rec.route = d;
        rec.upstream = d += strlen(d) + 1;
        rec.endpoint = d += strlen(d) + 1;
        d += strlen(d) + 1;
        rec.subject = *d ? d : NULL;
        rec.subject_len = strlen(d);
    }
    if (in) {
        const char *d = in->data;
        rec.method = d;
        rec.method_len = in->method_len;
        rec.host = d += in->method_len;
        rec.host_len = in->host_len;
        rec.path = d += in->host_len;
        rec.path_len = in->path_len;
        rec.target = d += in->path_len;
        rec.target_len = in->target_len;
        rec.referer = d += in->target_len;
        rec.referer_len = in->ref_len;
        rec.user_agent = d + in->ref_len;
        rec.user_agent_len = in->ua_len;
    }
    tp_accesslog_write(sh, &rec);
}
