/* SPDX-License-Identifier: MIT */
/*
 * The upstream side of a request: choosing an endpoint, keepalive pools,
 * connecting, sending the rewritten head and the body, parsing the response
 * and relaying it to the client, retries. [shard]
 *
 * Upstream connection states (enum tp_uconn_state):
 *
 *   socket(2) + connect ──▶ CONNECTING ──ok──▶ ACTIVE ◀──── taken from the pool
 *                              │ fail/timeout    │ response complete, reusable
 *                              ▼                 ▼
 *                           CLOSING ◀──────── IDLE (pooled, LIFO, recv armed:
 *                              │    any byte,        data, EOF or an error
 *                              ▼    EOF, timeout     evicts it at once)
 *                            (free)
 *
 * A request's attempt:
 *   pick endpoint (balance over healthy endpoints whose breaker admits)
 *   -> pooled connection, or a new one (upstream_connect timeout)
 *   -> send head + body (backpressure: the client is read only while the
 *      upstream send queue is under budget)
 *   -> response head: rewrite, queue to the client; body: relay (from the
 *      receive buffers, no copy, unless the framing must change)
 *   -> done: connection back to the pool (or closed), request finished.
 * Failures before any response byte reached the client become 502/504, or a
 * retry when the request can safely be sent again (see can_retry()).
 *
 * Response framing towards the client:
 *   Content-Length         relayed as is
 *   chunked, HTTP/1.1      relayed as is (validated by llhttp on the way)
 *   chunked, HTTP/1.0      decoded, close-delimited
 *   close-delimited, 1.1   re-chunked (each received buffer becomes a chunk)
 *   close-delimited, 1.0   relayed, connection closed after
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <turnpike/balance.h>
#include <turnpike/breaker.h>
#include <turnpike/hash.h>
#include <turnpike/log.h>
#include <turnpike/router.h>
#include <turnpike/tls.h>

#include "http/dp.h"
#include "http/h1.h"
#include "http/tlsio.h"
#include "rt/runtime.h"

#define RESP_HEAD_MAX (64u * 1024u) /* [bytes] largest upstream response head */
#define POOL_IDLE_MS  15000         /* [ms] idle pooled connection lifetime */

enum resp_mode {
    RM_NONE = 0, /* no body */
    RM_RAW,      /* bytes relayed as received */
    RM_DECODE,   /* chunked decoded for an HTTP/1.0 client */
    RM_WRAP,     /* close-delimited re-chunked for an HTTP/1.1 client */
};

enum fail_kind {
    FAIL_CONNECT = 0, /* connect refused / unreachable: nothing was sent */
    FAIL_CONNECT_TIMEOUT,
    FAIL_RESET,   /* EOF or reset before the response was complete */
    FAIL_TIMEOUT, /* upstream_response passed */
    FAIL_INVALID, /* unparsable response */
    FAIL_STATUS,  /* a 502/503/504 that retries.on names */
};

static llhttp_settings_t resp_settings;
static pthread_once_t resp_settings_once = PTHREAD_ONCE_INIT;

static void attempt(struct tp_shard *sh, struct tp_conn *c);
static void process_response(struct tp_shard *sh, struct tp_uconn *uc);
static void upstream_failed(struct tp_shard *sh, struct tp_conn *c, enum fail_kind kind, int err);
static void uconn_flush(struct tp_shard *sh, struct tp_uconn *uc);
static void uconn_maybe_finish(struct tp_shard *sh, struct tp_uconn *uc);
static void uconn_on_timer(struct tp_timer *t, uint64_t now_ms);

/* ------------------------------------------------------------------ */
/* llhttp callbacks: the response parser of an upstream connection    */
/* ------------------------------------------------------------------ */

static int rs_on_status(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_status(&((struct tp_uconn *)p->data)->rhead, at, len);
}

static int rs_on_field(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_field(&((struct tp_uconn *)p->data)->rhead, at, len);
}

static int rs_on_value(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_value(&((struct tp_uconn *)p->data)->rhead, at, len);
}

static int rs_on_value_complete(llhttp_t *p)
{
    return tp_head_on_value_complete(&((struct tp_uconn *)p->data)->rhead);
}

static int rs_on_headers_complete(llhttp_t *p)
{
    struct tp_uconn *uc = p->data;

    uc->head_done = true;
    /* a response to HEAD has no body whatever its headers say: tell llhttp
     * (return 1); it then completes the message, which pauses */
    if (uc->skip_body && p->status_code >= 200)
        return 1;
    return HPE_PAUSED;
}

static int rs_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct tp_uconn *uc = p->data;
    struct tp_shard *sh = tp_self;

    if (uc->mode != RM_DECODE)
        return 0;
    /* HTTP/1.0 client: the decoded bytes are copied into blocks */
    while (len) {
        if (!uc->dec_blk && !(uc->dec_blk = tp_block_get(sh, TP_BLOCK_SIZE)))
            return -1;
        struct tp_block *b = uc->dec_blk;
        size_t n = b->size - b->len < len ? b->size - b->len : len;
        memcpy(b->data + b->len, at, n);
        b->len += (uint32_t)n;
        at += n;
        len -= n;
        if (b->len == b->size) {
            if (!tp_outq_push_block(sh, &uc->conn->out, b)) {
                uc->dec_blk = NULL;
                return -1;
            }
            uc->dec_blk = NULL;
        }
    }
    return 0;
}

static int rs_on_message_complete(llhttp_t *p)
{
    ((struct tp_uconn *)p->data)->msg_done = true;
    return HPE_PAUSED;
}

static void resp_settings_init(void)
{
    llhttp_settings_init(&resp_settings);
    resp_settings.on_status = rs_on_status;
    resp_settings.on_header_field = rs_on_field;
    resp_settings.on_header_value = rs_on_value;
    resp_settings.on_header_value_complete = rs_on_value_complete;
    resp_settings.on_headers_complete = rs_on_headers_complete;
    resp_settings.on_body = rs_on_body;
    resp_settings.on_message_complete = rs_on_message_complete;
}

/* ------------------------------------------------------------------ */
/* upstream connection basics                                          */
/* ------------------------------------------------------------------ */

static inline struct tp_conn *uconn_client(struct tp_shard *sh, struct tp_uconn *uc)
{
    (void)sh;
    if (!uc->conn || uc->conn->gen != uc->conn_gen || uc->conn->in_free)
        return NULL;
    return uc->conn;
}

void tp_uconn_rearm(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct io_uring_sqe *sqe;

    if (uc->recv_armed || uc->recv_stopped || uc->starved || uc->peer_closed || uc->state == TP_US_CLOSING ||
        uc->state == TP_US_CONNECTING)
        return;
    sqe = tp_sqe(sh);
    io_uring_prep_recv_multishot(sqe, uc->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = TP_BGID;
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_URECV, uc->slot, uc->gen));
    uc->recv_armed = true;
    uc->ops++;
}

static void uconn_stop_recv(struct tp_shard *sh, struct tp_uconn *uc)
{
    if (uc->recv_stopped)
        return;
    uc->recv_stopped = true;
    if (uc->recv_armed) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel64(sqe, tp_ud(TP_OP_URECV, uc->slot, uc->gen), 0);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_UCANCEL, uc->slot, uc->gen));
        uc->ops++;
    }
}

static void uconn_deadline(struct tp_shard *sh, struct tp_uconn *uc, uint64_t ms)
{
    uc->deadline_ms = ms;
    if (!tp_timer_armed(&uc->timer) || ms < uc->timer.deadline_ms)
        tp_timer_arm(&sh->wheel, &uc->timer, ms);
}

static void pool_unlink(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_ep_shard *ps = &uc->eps->shard[sh->id];

    if (uc->pprev)
        uc->pprev->pnext = uc->pnext;
    else if (ps->idle == uc)
        ps->idle = uc->pnext;
    if (uc->pnext)
        uc->pnext->pprev = uc->pprev;
    uc->pnext = uc->pprev = NULL;
    ps->idle_count--;
}

void tp_uconn_close(struct tp_shard *sh, struct tp_uconn *uc)
{
    if (uc->state == TP_US_CLOSING)
        return;
    if (uc->state == TP_US_IDLE)
        pool_unlink(sh, uc);
    uc->state = TP_US_CLOSING;
    uc->conn = NULL;
    tp_timer_cancel(&sh->wheel, &uc->timer);
    if (uc->starved) {
        struct tp_uconn **pp = &sh->ustarved;
        while (*pp && *pp != uc)
            pp = &(*pp)->next;
        if (*pp)
            *pp = uc->next;
        uc->starved = false;
    }
    if (uc->ops) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel_fd(sqe, uc->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_UCANCEL, uc->slot, uc->gen));
        uc->ops++;
        return;
    }
    uconn_maybe_finish(sh, uc);
}

static void uconn_maybe_finish(struct tp_shard *sh, struct tp_uconn *uc)
{
    if (uc->state != TP_US_CLOSING || uc->ops)
        return;
    tp_inq_clear(sh, &uc->in);
    tp_outq_clear(sh, &uc->out);
    if (uc->tls) {
        tp_tlsio_destroy(sh, uc->tls);
        uc->tls = NULL;
    }
    tp_head_dispose(sh, &uc->rhead);
    if (uc->dec_blk) {
        tp_block_put(sh, uc->dec_blk);
        uc->dec_blk = NULL;
    }
    if (uc->fd < 0) {
        tp_uconn_free(sh, uc);
        return;
    }
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_close(sqe, uc->fd);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_UCLOSE, uc->slot, uc->gen));
    uc->fd = -1;
    uc->ops++;
}

void tp_uconn_on_op_done(struct tp_shard *sh, struct tp_uconn *uc, enum tp_op op, int res)
{
    (void)res;
    uc->ops--;
    if (op == TP_OP_UCLOSE) {
        tp_uconn_free(sh, uc);
        return;
    }
    if (uc->state == TP_US_CLOSING)
        uconn_maybe_finish(sh, uc);
}

void tp_pool_close_idle(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_ep_shard *ps = &eps->shard[sh->id];
    while (ps->idle)
        tp_uconn_close(sh, ps->idle);
}

/* A finished connection goes back to its endpoint's pool, newest first. */
static void pool_put(struct tp_shard *sh, struct tp_uconn *uc, uint32_t keepalive)
{
    struct tp_ep_shard *ps = &uc->eps->shard[sh->id];

    if (sh->draining || ps->idle_count >= keepalive || uc->peer_closed ||
        atomic_load_explicit(&uc->eps->retired, memory_order_relaxed)) {
        tp_uconn_close(sh, uc);
        return;
    }
    uc->state = TP_US_IDLE;
    uc->conn = NULL;
    uc->head_done = uc->msg_done = false;
    llhttp_resume(&uc->parser);
    tp_head_dispose(sh, &uc->rhead);
    tp_head_init(&uc->rhead);
    uc->pprev = NULL;
    uc->pnext = ps->idle;
    if (ps->idle)
        ps->idle->pprev = uc;
    ps->idle = uc;
    ps->idle_count++;
    uconn_deadline(sh, uc, sh->now_ms + POOL_IDLE_MS);
    if (uc->recv_stopped) {
        uc->recv_stopped = false;
        tp_uconn_rearm(sh, uc);
    }
}

static struct tp_uconn *pool_take(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_ep_shard *ps = &eps->shard[sh->id];
    struct tp_uconn *uc = ps->idle;

    if (!uc)
        return NULL;
    pool_unlink(sh, uc);
    uc->state = TP_US_ACTIVE;
    return uc;
}

/* ------------------------------------------------------------------ */
/* endpoint choice                                                     */
/* ------------------------------------------------------------------ */

static bool idempotent(unsigned method)
{
    return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_OPTIONS || method == HTTP_TRACE ||
           method == HTTP_PUT || method == HTTP_DELETE;
}

static uint64_t hash_key_of(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r, const struct tp_key *k)
{
    const struct tp_head *h = &r->head;
    size_t vl = 0;
    const char *v;

    (void)sh;
    switch (k->kind) {
    case TP_KEY_CLIENT_IP:
        return tp_hash_bytes(c->peer, c->peer_len);
    case TP_KEY_HEADER:
        v = tp_head_value(h, k->name, k->name_len, &vl);
        return v ? tp_hash_bytes(v, vl) : 0;
    case TP_KEY_COOKIE: {
        /* cookie:NAME: the value of NAME in any Cookie header */
        for (uint32_t i = 0; i < h->n_hdrs; i++) {
            if (h->hdrs[i].id != TP_H_COOKIE)
                continue;
            const char *s = h->base + h->hdrs[i].value.off, *e = s + h->hdrs[i].value.len;
            while (s < e) {
                while (s < e && (*s == ' ' || *s == ';'))
                    s++;
                const char *eq = memchr(s, '=', (size_t)(e - s));
                const char *end = memchr(s, ';', (size_t)(e - s));
                if (!end)
                    end = e;
                if (eq && eq < end && (size_t)(eq - s) == k->name_len && memcmp(s, k->name, k->name_len) == 0)
                    return tp_hash_bytes(eq + 1, (size_t)(end - eq - 1));
                s = end;
            }
        }
        return 0;
    }
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

static uint64_t tp_endpoint_inflight(void *ctx, size_t i);

/*
 * Chooses an endpoint of <up> for the current attempt: healthy endpoints
 * whose breaker would admit, not already tried by this request when another
 * one exists, balanced per the upstream's `balance`. The breaker admission
 * (which consumes a half-open trial permit) is taken last; a denied
 * endpoint is excluded and the choice repeated.
 */
static struct tp_rt_endpoint *pick_endpoint(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r)
{
    struct tp_rt_upstream *up = r->up;
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
    while (avail) {
        size_t i;
        switch (up->cfg->balance) {
        case TP_BALANCE_LEAST_REQUEST:
            i = tp_p2c_pick(up->weights, n, tp_endpoint_inflight, up, mask, tp_rand64(sh));
            break;
        case TP_BALANCE_HASH:
            i = tp_maglev_pick(up->maglev, hash_key_of(sh, c, r, &up->cfg->hash_key), mask);
            break;
        default:
            i = tp_swrr_pick(up->swrr + sh->id * up->swrr_stride, up->weights, n, mask);
            break;
        }
        if (i == SIZE_MAX)
            return NULL;
        struct tp_rt_endpoint *ep = &up->eps[i];
        if (ep->breaker) {
            struct tp_breaker_pass pass = tp_breaker_admit(ep->breaker, now_ms);
            if (pass.how == TP_BREAKER_DENY) {
                mask[i / 64] &= ~(1ull << (i % 64));
                avail--;
                continue;
            }
            r->bpass = pass;
            r->breaker_admitted = true;
        }
        r->tried[i / 64] |= 1ull << (i % 64);
        return &up->eps[i];
    }
    return NULL;
}

static uint64_t tp_endpoint_inflight(void *ctx, size_t i)
{
    struct tp_rt_upstream *up = ctx;
    return atomic_load_explicit(&up->eps[i].st->inflight, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* the upstream request head                                           */
/* ------------------------------------------------------------------ */

/* Hop-by-hop headers (RFC 9110 7.6.1): never forwarded in either direction;
 * turnpike writes its own framing and connection handling. */
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

/* Writes the request head for the upstream into <b> (b->len says how much it
 * needed, which may exceed b->size: the caller then retries larger). */
static void write_request_head(struct tp_block *b, struct tp_conn *c, struct tp_req *r)
{
    const struct tp_head *h = &r->head;
    const struct tp_rt_route *rt = r->route;
    const struct tp_header_rewrite *rw = rt->req.cfg;
    const char *target = h->base + h->url.off + r->abs_path_off;
    size_t tlen = h->url.len - r->abs_path_off;
    const char *method = llhttp_method_name((llhttp_method_t)r->method);
    bool xff_done = false;

    /* strip_prefix: "/users/7?x" with "/users" -> "/7?x"; "/users" -> "/" */
    if (rt->strip_len && tlen >= rt->strip_len && memcmp(target, rt->cfg->strip_prefix, rt->strip_len) == 0 &&
        (tlen == rt->strip_len || target[rt->strip_len] == '/' || target[rt->strip_len] == '?' ||
         rt->cfg->strip_prefix[rt->strip_len - 1] == '/')) {
        target += rt->strip_len;
        tlen -= rt->strip_len;
        if (rt->cfg->strip_prefix[rt->strip_len - 1] == '/' || tlen == 0 || target[0] == '?') {
            /* keep the path absolute */
            tp_blk_put(b, method, strlen(method));
            tp_blk_lit(b, " /");
            goto target_rest;
        }
    }
    tp_blk_put(b, method, strlen(method));
    tp_blk_lit(b, " ");
    if (tlen == 0 || target[0] == '?')
        tp_blk_lit(b, "/");
target_rest:
    tp_blk_put(b, target, tlen);
    tp_blk_lit(b, " HTTP/1.1\r\n");

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
            tp_blk_lit(b, "X-Forwarded-For: ");
            for (uint32_t k = i; k < h->n_hdrs; k++) {
                if (h->hdrs[k].id != TP_H_X_FORWARDED_FOR)
                    continue;
                tp_blk_put(b, h->base + h->hdrs[k].value.off, h->hdrs[k].value.len);
                tp_blk_lit(b, ", ");
            }
            tp_blk_put(b, c->peer, c->peer_len);
            tp_blk_lit(b, "\r\n");
            continue;
        default:
            break;
        }
        if (hd->drop)
            continue;
        if (rw && (in_names(rw->remove, rw->n_remove, name, hd->name.len) ||
                   in_names(rw->set, rw->n_set, name, hd->name.len)))
            continue;
        tp_blk_put(b, name, hd->name.len);
        tp_blk_lit(b, ": ");
        tp_blk_put(b, h->base + hd->value.off, hd->value.len);
        tp_blk_lit(b, "\r\n");
    }
    if (r->abs_path_off && !(rw && in_names(rw->set, rw->n_set, "host", 4))) {
        tp_blk_lit(b, "Host: ");
        tp_blk_put(b, h->base + r->host_off, r->host_len);
        tp_blk_lit(b, "\r\n");
    }
    tp_blk_put(b, rt->req.set_block, rt->req.set_len);
    if (!xff_done) {
        tp_blk_lit(b, "X-Forwarded-For: ");
        tp_blk_put(b, c->peer, c->peer_len);
        tp_blk_lit(b, "\r\n");
    }
    if (c->tls)
        tp_blk_lit(b, "X-Forwarded-Proto: https\r\n");
    else
        tp_blk_lit(b, "X-Forwarded-Proto: http\r\n");
    if (r->host_len) {
        tp_blk_lit(b, "X-Forwarded-Host: ");
        tp_blk_put(b, h->base + r->host_off, r->host_len);
        tp_blk_lit(b, "\r\n");
    }
    tp_blk_lit(b, "X-Request-Id: ");
    tp_blk_put(b, r->id, r->id_len);
    tp_blk_lit(b, "\r\ntraceparent: ");
    tp_blk_put(b, r->trace, 55);
    tp_blk_lit(b, "\r\n");
    if (r->chunked) {
        tp_blk_lit(b, "Transfer-Encoding: chunked\r\n");
    } else if (r->body_state != TP_BODY_NONE || (r->head_cl_seen && r->content_length == 0)) {
        tp_blk_lit(b, "Content-Length: ");
        tp_blk_u64(b, r->content_length);
        tp_blk_lit(b, "\r\n");
    }
    if (r->up->cfg->keepalive == 0)
        tp_blk_lit(b, "Connection: close\r\n");
    tp_blk_lit(b, "\r\n");
}

/* The upstream request head, in a block kept by the request (a retry sends it again). */
static struct tp_block *build_request_head(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r)
{
    size_t need = r->head.len + r->route->req.set_len + c->peer_len + r->host_len + 384;
    struct tp_block *b = tp_block_get(sh, need);

    if (!b)
        return NULL;
    write_request_head(b, c, r);
    if (b->len > b->size) {
        /* the estimate was short (many X-Forwarded-For lines): write again, exactly sized */
        need = b->len;
        tp_block_put(sh, b);
        b = tp_block_get(sh, need);
        if (!b)
            return NULL;
        write_request_head(b, c, r);
        TP_BUG_ON(b->len > b->size);
    }
    return b;
}

/* ------------------------------------------------------------------ */
/* starting a request                                                  */
/* ------------------------------------------------------------------ */

void tp_proxy_start(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_rt_route *rt = r->route;

    pthread_once(&resp_settings_once, resp_settings_init);
    if (rt->up) {
        r->up = rt->up;
    } else {
        size_t i = tp_router_split_pick(rt->cfg->split, rt->cfg->n_split, (uint32_t)tp_rand64(sh));
        r->up = rt->split[i];
    }
    r->uhead = build_request_head(sh, c, r);
    if (!r->uhead) {
        tp_conn_error(sh, c, 431, "request header fields too large", true);
        return;
    }
    attempt(sh, c);
}

static void attach(struct tp_shard *sh, struct tp_uconn *uc, struct tp_conn *c)
{
    struct tp_req *r = c->req;

    uc->conn = c;
    uc->conn_gen = c->gen;
    uc->skip_body = r->method == HTTP_HEAD;
    uc->head_done = uc->msg_done = false;
    uc->mode = RM_NONE;
    r->uc = uc;
    r->resp_bytes = false;
    r->req_sent = false;
    r->up_start_ns = sh->now_ns;
    tp_outq_push_static(sh, &uc->out, r->uhead->data, r->uhead->len);
}

/* The connection is ready: send the head and whatever body is queued. */
static void uconn_go(struct tp_shard *sh, struct tp_uconn *uc, struct tp_conn *c)
{
    struct tp_req *r = c->req;

    uconn_deadline(sh, uc, sh->now_ms + r->limits.upstream_response_ms);
    uconn_flush(sh, uc);
    if (r->body_state == TP_BODY_STREAM)
        tp_conn_resume_input(sh, c);
}

static void connect_new(struct tp_shard *sh, struct tp_conn *c, struct tp_rt_endpoint *ep)
{
    struct tp_req *r = c->req;
    const struct tp_addr *a = &ep->cfg->addr;
    int one = 1, fd;
    struct tp_uconn *uc;
    struct io_uring_sqe *sqe;

    /* socket(2) and setsockopt(2) run once per upstream connection, not per
     * request; the connect itself goes through the ring */
    fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        TP_LOG_RL(TP_LOG_ERR, "socket for upstream %s: %s", a->text, strerror(errno));
        upstream_failed(sh, c, FAIL_CONNECT, -errno);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uc = tp_uconn_alloc(sh);
    if (!uc) {
        close(fd);
        upstream_failed(sh, c, FAIL_CONNECT, -ENOMEM);
        return;
    }
    uc->fd = fd;
    uc->eps = ep->st;
    uc->state = TP_US_CONNECTING;
    llhttp_init(&uc->parser, HTTP_RESPONSE, &resp_settings);
    uc->parser.data = uc;
    tp_head_init(&uc->rhead);
    tp_timer_init(&uc->timer, uconn_on_timer);
    tp_stat_add(&ep->st->shard[sh->id].connects, 1);
    if (r->up->tls) {
        SSL *ssl = tp_tls_client_ssl(r->up->tls, &ep->cfg->addr);
        uc->tls = ssl ? tp_tlsio_create(ssl) : NULL;
        if (!uc->tls) {
            tp_uconn_free(sh, uc);
            close(fd);
            upstream_failed(sh, c, FAIL_CONNECT, -ENOMEM);
            return;
        }
    }
    attach(sh, uc, c);
    r->reused = false;
    sqe = tp_sqe(sh);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&a->ss, a->len);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_UCONNECT, uc->slot, uc->gen));
    uc->ops++;
    uconn_deadline(sh, uc, sh->now_ms + r->limits.upstream_connect_ms);
}

static void attempt(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_rt_upstream *up = r->up;
    const struct tp_cfg_upstream *uc_cfg = up->cfg;

    r->attempts++;
    if (uc_cfg->max_concurrent_requests && !r->counted_up) {
        uint64_t n = atomic_fetch_add_explicit(&up->st->inflight, 1, memory_order_relaxed) + 1;
        if (n > uc_cfg->max_concurrent_requests) {
            atomic_fetch_sub_explicit(&up->st->inflight, 1, memory_order_relaxed);
            tp_conn_error(sh, c, 503, "upstream at capacity", false);
            return;
        }
        r->counted_up = true;
    }
    struct tp_rt_endpoint *ep = pick_endpoint(sh, c, r);
    if (!ep) {
        tp_conn_error(sh, c, 503, "no healthy endpoint", false);
        return;
    }
    r->ep = ep;
    r->last_ep = ep;
    if (uc_cfg->balance == TP_BALANCE_LEAST_REQUEST) {
        atomic_fetch_add_explicit(&ep->st->inflight, 1, memory_order_relaxed);
        r->counted_ep = true;
    }
    struct tp_uconn *uc = r->force_fresh ? NULL : pool_take(sh, ep->st);
    if (uc) {
        attach(sh, uc, c);
        r->reused = true;
        uconn_go(sh, uc, c);
        return;
    }
    connect_new(sh, c, ep);
}

/* Releases what an attempt holds on its endpoint (in-flight counts, breaker). */
static void attempt_release(struct tp_req *r, int outcome /* 1 ok, 0 failure, -1 unknown */, uint64_t now_ms)
{
    if (r->ep) {
        if (r->counted_ep) {
            atomic_fetch_sub_explicit(&r->ep->st->inflight, 1, memory_order_relaxed);
            r->counted_ep = false;
        }
        /* an abandoned attempt (the client left) says nothing about the
         * endpoint, except that a half-open trial must not stay unanswered:
         * it counts as failed, as the breaker requires */
        if (r->breaker_admitted && r->ep->breaker && (outcome >= 0 || r->bpass.how == TP_BREAKER_TRIAL))
            tp_breaker_report(r->ep->breaker, r->bpass, outcome == 1, now_ms);
        r->breaker_admitted = false;
        r->ep = NULL;
    }
}

void tp_proxy_abort(struct tp_shard *sh, struct tp_req *r)
{
    if (r->uc) {
        struct tp_uconn *uc = r->uc;
        r->uc = NULL;
        uc->conn = NULL;
        tp_uconn_close(sh, uc);
    }
    attempt_release(r, -1, sh->now_ms);
    if (r->counted_up) {
        atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
        r->counted_up = false;
    }
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
 * out to be dead (the keepalive race).
 */
static bool can_retry(struct tp_req *r, enum fail_kind kind)
{
    const struct tp_cfg_retries *rt = r->up->cfg->retries;
    bool nothing_sent = kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT;

    if (r->resp_state != TP_RESP_NONE || r->body_consumed)
        return false;
    if (!nothing_sent && !idempotent(r->method))
        return false;
    if (rt) {
        unsigned bit = 0;
        switch (kind) {
        case FAIL_CONNECT:
        case FAIL_CONNECT_TIMEOUT:
            bit = TP_RETRY_CONNECT_FAILURE;
            break;
        case FAIL_RESET:
            bit = TP_RETRY_RESET;
            break;
        case FAIL_STATUS:
            bit = r->fail_status == 502 ? TP_RETRY_502 : r->fail_status == 503 ? TP_RETRY_503 : TP_RETRY_504;
            break;
        case FAIL_TIMEOUT:
            bit = TP_RETRY_504;
            break;
        default:
            break;
        }
        if ((rt->on & bit) && r->attempts <= rt->attempts)
            return true;
    }
    /* the keepalive race: a reused connection died before answering */
    if (kind == FAIL_RESET && r->reused && !r->resp_bytes && !r->fresh_retry_done) {
        r->fresh_retry_done = true;
        r->force_fresh = true;
        return true;
    }
    return false;
}

static void upstream_failed(struct tp_shard *sh, struct tp_conn *c, enum fail_kind kind, int err)
{
    struct tp_req *r = c->req;
    struct tp_endpoint_state *st = r->ep ? r->ep->st : NULL;
    const char *what;

    if (st) {
        struct tp_ep_shard *es = &st->shard[sh->id];
        if (kind == FAIL_CONNECT || kind == FAIL_CONNECT_TIMEOUT)
            tp_stat_add(&es->connect_failures, 1);
        else if (kind == FAIL_STATUS)
            tp_stat_add(&es->requests[4], 1);
        TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: %s (request %.*s)", st->upstream, st->addr.text,
                  kind == FAIL_CONNECT           ? "connect failed"
                  : kind == FAIL_CONNECT_TIMEOUT ? "connect timed out"
                  : kind == FAIL_RESET           ? "connection reset"
                  : kind == FAIL_TIMEOUT         ? "response timed out"
                  : kind == FAIL_STATUS          ? "error status"
                                                 : "invalid response",
                  r->id_len, r->id);
    }
    (void)err;
    if (r->uc) {
        struct tp_uconn *uc = r->uc;
        r->uc = NULL;
        uc->conn = NULL;
        tp_uconn_close(sh, uc);
    }
    r->up_ns += sh->now_ns - r->up_start_ns;
    attempt_release(r, 0, sh->now_ms);
    if (r->resp_state == TP_RESP_HEAD && r->head_unflushed && tp_outq_drop_last(sh, c->out)) {
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
        c->rst = true;
        tp_conn_close(sh, c);
        return;
    }
    if (can_retry(r, kind)) {
        attempt(sh, c);
        return;
    }
    if (r->counted_up) {
        atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
        r->counted_up = false;
    }
    switch (kind) {
    case FAIL_TIMEOUT:
        what = "upstream timeout";
        tp_conn_error(sh, c, 504, what, r->body_state == TP_BODY_STREAM);
        return;
    case FAIL_STATUS:
        /* retries exhausted on an error status: relay a gateway error of the same code */
        tp_conn_error(sh, c, r->fail_status, "upstream error", r->body_state == TP_BODY_STREAM);
        return;
    case FAIL_CONNECT:
    case FAIL_CONNECT_TIMEOUT:
        what = "upstream connect failure";
        break;
    case FAIL_RESET:
        what = "upstream connection reset";
        break;
    default:
        what = "invalid upstream response";
        break;
    }
    tp_conn_error(sh, c, 502, what, r->body_state == TP_BODY_STREAM);
}

/* ------------------------------------------------------------------ */
/* sending to the upstream                                             */
/* ------------------------------------------------------------------ */

static void uconn_flush(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct io_uring_sqe *sqe;
    struct tp_outq **qp = &uc->out;

    if (uc->state != TP_US_ACTIVE && uc->state != TP_US_HANDSHAKE)
        return;
    if (uc->tls) {
        /* TLS: plaintext (once the handshake is done) is encrypted into the wire queue */
        if (!tp_tlsio_encrypt(sh, uc->tls, uc->state == TP_US_ACTIVE ? &uc->out : NULL))
            return; /* out of memory: the response timeout ends the attempt */
        qp = &uc->tls->wire;
    } else if (uc->state != TP_US_ACTIVE) {
        return;
    }
    struct tp_outq *q = *qp;
    if (uc->send_busy || !q || q->n == 0)
        return;
    if (tp_outq_prepare(q) == 0) {
        tp_outq_sent(sh, q, 0);
        return;
    }
    sqe = tp_sqe(sh);
    /* one buffer: a plain send spares the kernel the msghdr copy */
    if (q->msg.msg_iovlen == 1)
        io_uring_prep_send(sqe, uc->fd, q->iov[0].iov_base, q->iov[0].iov_len, MSG_NOSIGNAL | MSG_WAITALL);
    else
        io_uring_prep_sendmsg(sqe, uc->fd, &q->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_USEND, uc->slot, uc->gen));
    uc->send_busy = true;
    uc->ops++;
}

void tp_proxy_body_queued(struct tp_shard *sh, struct tp_req *r)
{
    if (r->uc)
        uconn_flush(sh, r->uc);
}

void tp_uconn_on_send(struct tp_shard *sh, struct tp_uconn *uc, int res)
{
    struct tp_conn *c;

    uc->send_busy = false;
    uc->ops--;
    if (uc->state == TP_US_CLOSING) {
        uconn_maybe_finish(sh, uc);
        return;
    }
    struct tp_outq **qp = uc->tls ? &uc->tls->wire : &uc->out;
    if (uc->pool_when_sent) {
        uc->pool_when_sent = false;
        if (res >= 0 && tp_outq_sent(sh, *qp, (uint32_t)res) && tp_uconn_pending(uc) == 0) {
            tp_outq_clear(sh, qp);
            pool_put(sh, uc, uc->pool_keepalive);
        } else {
            tp_uconn_close(sh, uc);
        }
        return;
    }
    c = uconn_client(sh, uc);
    if (!c) {
        tp_uconn_close(sh, uc);
        return;
    }
    if (res < 0) {
        upstream_failed(sh, c, FAIL_RESET, res);
        return;
    }
    struct tp_req *r = c->req;
    if (tp_outq_sent(sh, *qp, (uint32_t)res))
        tp_outq_clear(sh, qp);
    uconn_flush(sh, uc);
    if (tp_uconn_pending(uc) == 0 && (r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE))
        r->req_sent = true;
    uconn_deadline(sh, uc, sh->now_ms + r->limits.upstream_response_ms);
    /* room towards the upstream again: read more of the client's body */
    if (r->body_state == TP_BODY_STREAM)
        tp_conn_resume_input(sh, c);
}

void tp_uconn_on_connect(struct tp_shard *sh, struct tp_uconn *uc, int res)
{
    struct tp_conn *c;

    uc->ops--;
    if (uc->state == TP_US_CLOSING) {
        uconn_maybe_finish(sh, uc);
        return;
    }
    c = uconn_client(sh, uc);
    if (!c) {
        tp_uconn_close(sh, uc);
        return;
    }
    if (res < 0) {
        upstream_failed(sh, c, FAIL_CONNECT, res);
        return;
    }
    if (uc->tls) {
        /* TLS: the handshake first, still under upstream_connect */
        uc->state = TP_US_HANDSHAKE;
        tp_uconn_rearm(sh, uc);
        if (tp_tlsio_handshake(sh, uc->tls) == TP_TLSIO_ERROR) {
            upstream_failed(sh, c, FAIL_CONNECT, TP_EUPSTREAM);
            return;
        }
        uconn_flush(sh, uc);
        return;
    }
    uc->state = TP_US_ACTIVE;
    tp_uconn_rearm(sh, uc);
    uconn_go(sh, uc, c);
}

/* ------------------------------------------------------------------ */
/* receiving from the upstream                                         */
/* ------------------------------------------------------------------ */

static void uconn_on_timer(struct tp_timer *t, uint64_t now_ms)
{
    struct tp_uconn *uc = (struct tp_uconn *)((char *)t - offsetof(struct tp_uconn, timer));
    struct tp_shard *sh = tp_self;
    struct tp_conn *c;

    if (now_ms < uc->deadline_ms) {
        tp_timer_arm(&sh->wheel, t, uc->deadline_ms);
        return;
    }
    if (uc->state == TP_US_IDLE) {
        tp_uconn_close(sh, uc);
        return;
    }
    c = uconn_client(sh, uc);
    if (!c) {
        tp_uconn_close(sh, uc);
        return;
    }
    upstream_failed(sh, c,
                    uc->state == TP_US_CONNECTING || uc->state == TP_US_HANDSHAKE ? FAIL_CONNECT_TIMEOUT
                                                                                  : FAIL_TIMEOUT,
                    TP_ETIMEOUT);
}

/* The buffer ring ran dry (-ENOBUFS ended the multishot recv): wait to be re-armed. */
static void uconn_starve(struct tp_shard *sh, struct tp_uconn *uc)
{
    tp_stat_add(&sh->enobufs, 1);
    if (uc->starved)
        return;
    uc->starved = true;
    uc->next = sh->ustarved;
    sh->ustarved = uc;
}

void tp_uconn_on_recv(struct tp_shard *sh, struct tp_uconn *uc, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    int bid = tp_cqe_buffer(sh, cqe);
    struct tp_conn *c;

    if (!more) {
        uc->recv_armed = false;
        uc->ops--;
    }
    if (uc->state == TP_US_CLOSING) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        uconn_maybe_finish(sh, uc);
        return;
    }
    if (uc->state == TP_US_IDLE && uc->tls && res > 0 && bid >= 0) {
        /* pooled TLS: session tickets and key updates may arrive; only
         * application data, an alert or a close ends the connection */
        size_t plain;
        enum tp_tlsio_rc rc = tp_tlsio_input(sh, uc->tls, (const char *)tp_buf_ptr(sh, (uint16_t)bid),
                                             (size_t)res, NULL, &plain);
        tp_buf_release(sh, (uint16_t)bid);
        if (rc != TP_TLSIO_OK || plain) {
            tp_uconn_close(sh, uc);
            return;
        }
        uconn_flush(sh, uc);
        if (!more)
            tp_uconn_rearm(sh, uc);
        return;
    }
    if (uc->state == TP_US_IDLE) {
        /* pooled: data, EOF or an error all mean the connection is done */
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        if (res == -ENOBUFS) {
            uconn_starve(sh, uc);
            return;
        }
        if (res != -ECANCELED || !more) {
            if (res == -ECANCELED && uc->recv_stopped)
                return;
            tp_uconn_close(sh, uc);
        }
        return;
    }
    c = uconn_client(sh, uc);
    if (!c) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        tp_uconn_close(sh, uc);
        return;
    }
    if (res > 0 && bid >= 0 && uc->tls) {
        size_t plain;
        enum tp_tlsio_rc rc = tp_tlsio_input(sh, uc->tls, (const char *)tp_buf_ptr(sh, (uint16_t)bid),
                                             (size_t)res, &uc->in, &plain);
        tp_buf_release(sh, (uint16_t)bid);
        if (rc == TP_TLSIO_ERROR) {
            upstream_failed(sh, c, uc->state == TP_US_HANDSHAKE ? FAIL_CONNECT : FAIL_INVALID, TP_EUPSTREAM);
            return;
        }
        if (rc == TP_TLSIO_HS_DONE) {
            uc->state = TP_US_ACTIVE;
            uconn_go(sh, uc, c);
            if (uc->state != TP_US_ACTIVE)
                return;
        } else {
            uconn_flush(sh, uc);
        }
        if (rc == TP_TLSIO_CLOSED) {
            uc->peer_closed = true;
            process_response(sh, uc);
            return;
        }
        if (plain && uc->state == TP_US_ACTIVE) {
            uc->deadline_ms = sh->now_ms + c->req->limits.upstream_response_ms;
            process_response(sh, uc);
            if (uc->state == TP_US_CLOSING || uc->state == TP_US_IDLE)
                return;
        }
    } else if (res > 0 && bid >= 0) {
        if (!tp_inq_push(&uc->in, (uint16_t)bid, (uint32_t)res)) {
            tp_buf_release(sh, (uint16_t)bid);
            upstream_failed(sh, c, FAIL_INVALID, -ENOMEM);
            return;
        }
        uc->deadline_ms = sh->now_ms + c->req->limits.upstream_response_ms;
        process_response(sh, uc);
        if (uc->state == TP_US_CLOSING || uc->state == TP_US_IDLE)
            return;
    } else if (res == 0) {
        uc->peer_closed = true;
        if (uc->state == TP_US_HANDSHAKE) {
            upstream_failed(sh, c, FAIL_CONNECT, TP_ECLOSED);
            return;
        }
        process_response(sh, uc);
        return;
    } else if (res < 0) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        if (res == -ENOBUFS) {
            uconn_starve(sh, uc);
        } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
            uc->peer_closed = true;
            uc->reset = true;
            if (uc->state == TP_US_HANDSHAKE) {
                upstream_failed(sh, c, FAIL_CONNECT, res);
                return;
            }
            process_response(sh, uc);
            return;
        }
    }
    if (!more)
        tp_uconn_rearm(sh, uc);
}

void tp_proxy_client_drained(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_uconn *uc = c->req ? c->req->uc : NULL;

    if (!uc || uc->state != TP_US_ACTIVE)
        return;
    process_response(sh, uc);
}

/* ---- the response head ---- */

static bool resp_in_names(const struct tp_header_rewrite *rw, const char *name, size_t len)
{
    return rw && (in_names(rw->remove, rw->n_remove, name, len) || in_names(rw->set, rw->n_set, name, len));
}

/* Writes the client's response head for the upstream's head <h>. */
static struct tp_block *build_response_head(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h,
                                            unsigned status, bool chunked_out)
{
    const struct tp_rt_route *rt = r->route;
    const struct tp_header_rewrite *rw = rt->resp.cfg;
    struct tp_block *b = tp_block_get(sh, h->len + rt->resp.set_len + r->extra_len + r->id_len + 128);

    if (!b)
        return NULL;
    /* the head only shrinks or gains the lines counted above, so the estimate holds */
    tp_blk_lit(b, "HTTP/1.1 ");
    tp_blk_u64(b, status);
    tp_blk_lit(b, " ");
    if (h->reason.len)
        tp_blk_put(b, h->base + h->reason.off, h->reason.len);
    else
        tp_blk_put(b, tp_h1_reason(status), strlen(tp_h1_reason(status)));
    tp_blk_lit(b, "\r\n");
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        const char *name = h->base + hd->name.off;
        if (hop_by_hop(hd->id) || hd->id == TP_H_X_REQUEST_ID)
            continue;
        if (hd->drop || resp_in_names(rw, name, hd->name.len))
            continue;
        tp_blk_put(b, name, hd->name.len);
        tp_blk_lit(b, ": ");
        tp_blk_put(b, h->base + hd->value.off, hd->value.len);
        tp_blk_lit(b, "\r\n");
    }
    tp_blk_put(b, rt->resp.set_block, rt->resp.set_len);
    tp_blk_put(b, r->extra_hdrs, r->extra_len);
    tp_blk_lit(b, "X-Request-Id: ");
    tp_blk_put(b, r->id, r->id_len);
    tp_blk_lit(b, "\r\n");
    if (chunked_out)
        tp_blk_lit(b, "Transfer-Encoding: chunked\r\n");
    if (status >= 200) {
        if (r->resp_close)
            tp_blk_lit(b, "Connection: close\r\n");
        else if (r->http10)
            tp_blk_lit(b, "Connection: keep-alive\r\n");
    }
    tp_blk_lit(b, "\r\n");
    if (b->len > b->size) {
        tp_block_put(sh, b);
        return NULL;
    }
    return b;
}

/* Marks headers named in the response's Connection header as hop-by-hop. */
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

/* Handles a complete response head. Returns false when the response or the request ended. */
static bool on_response_head(struct tp_shard *sh, struct tp_uconn *uc, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    llhttp_t *p = &uc->parser;
    unsigned status = p->status_code;
    struct tp_head *h = &uc->rhead;
    struct tp_block *b;

    if (status < 100 || status > 599) {
        /* not a status a client can be given (llhttp takes any three digits) */
        upstream_failed(sh, c, FAIL_INVALID, TP_EUPSTREAM);
        return false;
    }
    mark_connection_tokens(h);
    if (status < 200) {
        if (status == 101) {
            upstream_failed(sh, c, FAIL_INVALID, TP_EUPSTREAM); /* we never ask for an upgrade */
            return false;
        }
        /* interim response: relayed to HTTP/1.1 clients, dropped for 1.0 */
        if (!r->http10 && r->resp_state == TP_RESP_NONE) {
            b = build_response_head(sh, r, h, status, false);
            if (b) {
                r->bytes_out += b->len;
                tp_outq_push_block(sh, &c->out, b);
                tp_conn_flush(sh, c);
            }
        }
        tp_head_release(sh, h);
        tp_head_dispose(sh, h);
        tp_head_init(h);
        uc->head_done = false;
        /* complete the interim message so the next execute starts the next head */
        llhttp_resume(p);
        uc->msg_done = false;
        llhttp_execute(p, "", 0);
        if (uc->msg_done) {
            uc->msg_done = false;
            llhttp_resume(p);
        }
        return true;
    }

    const struct tp_cfg_retries *rt = r->up->cfg->retries;
    if (rt && (status == 502 || status == 503 || status == 504)) {
        unsigned bit = status == 502 ? TP_RETRY_502 : status == 503 ? TP_RETRY_503 : TP_RETRY_504;
        if ((rt->on & bit) && r->attempts <= rt->attempts && r->resp_state == TP_RESP_NONE &&
            !r->body_consumed && idempotent(r->method)) {
            r->fail_status = (uint16_t)status;
            tp_head_release(sh, h);
            upstream_failed(sh, c, FAIL_STATUS, 0);
            return false;
        }
    }

    /* framing towards the client */
    bool has_body = !uc->skip_body && status != 204 && status != 304 &&
                    !((p->flags & F_CONTENT_LENGTH) && p->content_length == 0);
    bool chunked_out = false;
    if (!has_body) {
        uc->mode = RM_NONE;
        /* a HEAD response keeps its framing headers; re-chunked ones say so */
        chunked_out = uc->skip_body && (p->flags & F_CHUNKED) && !r->http10;
    } else if (p->flags & F_CHUNKED) {
        uc->mode = r->http10 ? RM_DECODE : RM_RAW;
        chunked_out = !r->http10;
        if (r->http10)
            r->resp_close = true;
    } else if (p->flags & F_CONTENT_LENGTH) {
        uc->mode = RM_RAW;
    } else {
        /* close-delimited */
        uc->mode = r->http10 ? RM_RAW : RM_WRAP;
        chunked_out = !r->http10;
        if (r->http10)
            r->resp_close = true;
    }
    if (!r->client_keepalive || sh->draining)
        r->resp_close = true;
    if (r->body_state == TP_BODY_STREAM)
        r->resp_close = true; /* early response: the rest of the body is not read */

    b = build_response_head(sh, r, h, status, chunked_out);
    tp_head_release(sh, h);
    if (!b) {
        upstream_failed(sh, c, FAIL_INVALID, TP_EUPSTREAM);
        return false;
    }
    r->status = (uint16_t)status;
    r->bytes_out += b->len;
    r->resp_head_len = b->len;
    if (!tp_outq_push_block(sh, &c->out, b)) {
        c->rst = true;
        tp_conn_close(sh, c);
        return false;
    }
    r->resp_state = TP_RESP_HEAD;
    r->head_unflushed = true;
    llhttp_resume(p);
    return true;
}

/* The response is complete: account, recycle the connection, finish the request. */
static void response_done(struct tp_shard *sh, struct tp_uconn *uc, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_ep_shard *es = &uc->eps->shard[sh->id];
    bool body_done = r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE;
    bool reusable = !uc->peer_closed && llhttp_should_keep_alive(&uc->parser) && body_done &&
                    uc->mode != RM_WRAP && uc->in.n == 0;

    if (uc->mode == RM_WRAP)
        tp_outq_push_static(sh, &c->out, "0\r\n\r\n", 5);
    if (uc->dec_blk) {
        tp_outq_push_block(sh, &c->out, uc->dec_blk);
        uc->dec_blk = NULL;
    }
    r->up_ns += sh->now_ns - r->up_start_ns;
    tp_stat_add(&es->requests[tp_status_class(r->status)], 1);
    tp_hist_observe(&es->duration, (sh->now_ns - r->up_start_ns) / 1000);
    attempt_release(r, r->status >= 500 ? 0 : 1, sh->now_ms);
    if (r->counted_up) {
        atomic_fetch_sub_explicit(&r->up->st->inflight, 1, memory_order_relaxed);
        r->counted_up = false;
    }
    r->uc = NULL;
    uc->conn = NULL;
    uc->served++;
    if (!reusable) {
        tp_uconn_close(sh, uc);
    } else if (uc->send_busy) {
        /* our send has not completed yet: pool it when it has */
        uc->pool_when_sent = true;
        uc->pool_keepalive = r->up->cfg->keepalive;
    } else {
        pool_put(sh, uc, r->up->cfg->keepalive);
    }
    tp_conn_flush(sh, c);
    tp_conn_request_done(sh, c);
}

/*
 * Parses and relays what the upstream sent: the head, then the body while
 * the client's send queue is under budget. Called on receive, on EOF and
 * when the client queue drained.
 */
static void process_response(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_conn *c = uconn_client(sh, uc);
    struct tp_rbuf *e;

    if (!c)
        return;
    struct tp_req *r = c->req;
    while (uc->state == TP_US_ACTIVE) {
        if (!uc->head_done) {
            unsigned status = 502;
            enum tp_head_rc rc;
            if (!uc->in.n)
                break;
            r->resp_bytes = true;
            rc = tp_head_parse(sh, &uc->parser, &uc->rhead, &uc->in, RESP_HEAD_MAX, &uc->head_done, &status);
            if (rc == TP_HEAD_MORE)
                break;
            if (rc == TP_HEAD_ERROR) {
                upstream_failed(sh, c, FAIL_INVALID, TP_EUPSTREAM);
                return;
            }
            if (!on_response_head(sh, uc, c))
                return;
            if (!uc->head_done)
                continue; /* an interim response: read the next head */
            if (uc->mode == RM_NONE && !uc->msg_done)
                llhttp_execute(&uc->parser, "", 0); /* bodiless: reach the end of the message */
            if (uc->msg_done || uc->mode == RM_NONE) {
                uc->msg_done = false;
                llhttp_resume(&uc->parser);
                response_done(sh, uc, c);
                return;
            }
            continue;
        }
        /* body */
        if (tp_conn_pending(c) >= TP_OUTQ_BUDGET || tp_outq_full(c->out, 6))
            break;
        e = tp_inq_front(&uc->in);
        if (!e) {
            if (uc->peer_closed) {
                /* EOF: the end of a close-delimited body; anything else was cut short */
                uc->msg_done = false;
                if (!uc->reset)
                    llhttp_finish(&uc->parser);
                if (!uc->msg_done) {
                    upstream_failed(sh, c, FAIL_RESET, TP_ECLOSED);
                    return;
                }
                uc->msg_done = false;
                response_done(sh, uc, c);
                return;
            }
            break;
        }
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len, used;
        struct tp_bref ref = tp_rbuf_ref(e);
        llhttp_errno_t rc = llhttp_execute(&uc->parser, data, len);
        if (rc == HPE_PAUSED)
            used = (uint32_t)(llhttp_get_error_pos(&uc->parser) - data);
        else if (rc == HPE_OK)
            used = len;
        else {
            upstream_failed(sh, c, FAIL_INVALID, TP_EUPSTREAM);
            return;
        }
        if (used) {
            bool ok = true;
            if (uc->mode == RM_RAW) {
                ok = tp_outq_push_slice(sh, &c->out, ref, data, used);
            } else if (uc->mode == RM_WRAP) {
                char line[16];
                int n = snprintf(line, sizeof(line), "%x\r\n", used);
                ok = tp_outq_push_inline(sh, &c->out, line, (uint32_t)n) &&
                     tp_outq_push_slice(sh, &c->out, ref, data, used) &&
                     tp_outq_push_static(sh, &c->out, "\r\n", 2);
            } else if (uc->mode == RM_DECODE && uc->dec_blk && uc->dec_blk->len) {
                ok = tp_outq_push_block(sh, &c->out, uc->dec_blk);
                uc->dec_blk = NULL;
            }
            if (!ok) {
                c->rst = true;
                tp_conn_close(sh, c);
                return;
            }
            r->bytes_out += used;
            tp_inq_consume(sh, &uc->in, used);
        }
        r->head_unflushed = false;
        tp_conn_flush(sh, c);
        if (uc->msg_done) {
            uc->msg_done = false;
            llhttp_resume(&uc->parser);
            response_done(sh, uc, c);
            return;
        }
    }
    if (uc->state != TP_US_ACTIVE)
        return;
    /* EOF before the head */
    if (uc->peer_closed && !uc->head_done && uc->in.n == 0) {
        upstream_failed(sh, c, FAIL_RESET, TP_ECLOSED);
        return;
    }
    if (uc->in.n >= TP_INQ_STOP) {
        uconn_stop_recv(sh, uc);
    } else if (uc->recv_stopped && uc->in.n <= TP_INQ_STOP / 2) {
        uc->recv_stopped = false;
        tp_uconn_rearm(sh, uc);
    }
}
