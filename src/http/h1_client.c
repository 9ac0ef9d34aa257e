/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1 upstream exchange: keepalive pools, connecting, sending the
 * request head and body, parsing the response and relaying it to the
 * downstream session. It implements struct tp_ux_ops for the proxy
 * (proxy.c) and struct tp_transport_ops for its connections. [shard]
 *
 * Upstream connection states:
 *
 *   connect (transport) ──▶ CONNECTING ──ok──▶ ACTIVE ◀──── taken from the pool
 *                              │ fail/timeout    │ response complete, reusable
 *                              ▼                 ▼
 *                           CLOSING ◀──────── IDLE (pooled, LIFO, receive armed:
 *                              │    any byte,        data, EOF or an error
 *                              ▼    EOF, timeout     evicts it at once)
 *                            (free)
 *
 * A connection serves one request at a time (r->att.conn <-> uc->req).
 * Every way an attempt ends detaches the two first, so neither side ever
 * sees the other after that.
 *
 * Response body relay: bytes go to the client as received (no copy) unless
 * the downstream session asks for content (chunked framing decoded), which
 * is copied into blocks by llhttp's on_body.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <turnpike/log.h>
#include <turnpike/tls.h>

#include "http/sessions.h"
#include "transport/transport.h"

#define RESP_HEAD_MAX (64u * 1024u) /* [bytes] largest upstream response head */
#define POOL_IDLE_MS  15000         /* [ms] idle pooled connection lifetime */
#define SALVAGE_MS    1000          /* [ms] longest wait for the answer to an abandoned request */
#define SALVAGE_BYTES (64u * 1024u) /* [bytes] largest such answer read to keep its connection */

enum uc_state {
    UC_CONNECTING = 0, /* connect and TLS handshake */
    UC_ACTIVE,         /* serving a request */
    UC_IDLE,           /* in the keepalive pool, receive armed */
    UC_TUNNEL,         /* handed to a tunnel after a 101: the tunnel drives it */
    UC_SALVAGE,        /* its request was abandoned: its answer is read and dropped, then pooled */
    UC_CLOSING,
};

enum relay_mode {
    RM_NONE = 0, /* no body */
    RM_RAW,      /* bytes relayed as received */
    RM_CONTENT,  /* chunked framing decoded (into blocks) */
};

struct tp_uconn {
    struct tp_transport t;          /* first: the slab header lives in it */
    uint8_t state;                  /* enum uc_state */
    uint8_t mode;                   /* enum relay_mode */
    uint8_t framing;                /* enum tp_framing of the response */
    bool skip_body;                 /* response to HEAD */
    bool pool_when_sent;            /* response done before our send completed */
    bool last_chunk;                /* the request's last chunk (with its trailers) is queued */
    struct tp_endpoint_state *eps;  /* pool it belongs to */
    struct tp_req *req;             /* request served, while attached */
    struct tp_uconn *pnext, *pprev; /* pool links */
    struct tp_h1_parser hp;         /* response parser */
    struct tp_head rhead;           /* response head being parsed */
    uint32_t pool_keepalive;        /* pool size to honour when pooled after our send */
    struct tp_block *dec_blk;       /* decoded response content being filled */
    struct tp_block *chunk_blk;     /* re-framed request body: the chunk being filled */
    uint32_t served;
    uint32_t salvaged; /* response bytes read and dropped in UC_SALVAGE */
};

static const struct tp_transport_ops uconn_proto;

static void process_response(struct tp_shard *sh, struct tp_uconn *uc);
static enum tp_framing response_framing(const struct tp_uconn *uc);
static bool parse_body(struct tp_uconn *uc, const char *data, uint32_t len, uint32_t *used);

static inline struct tp_uconn *uconn_of(struct tp_transport *t)
{
    return (struct tp_uconn *)t;
}

size_t tp_h1c_conn_size(void)
{
    return sizeof(struct tp_uconn);
}

/* ------------------------------------------------------------------ */
/* the response parser                                                 */
/* ------------------------------------------------------------------ */

static inline struct tp_uconn *uconn_of_parser(struct tp_h1_parser *hp)
{
    return (struct tp_uconn *)((char *)hp - offsetof(struct tp_uconn, hp));
}

/* A response to HEAD has no body whatever its headers say: tell llhttp
 * (return 1); it then completes the message, which pauses. */
static int rs_on_headers(struct tp_h1_parser *hp)
{
    return uconn_of_parser(hp)->skip_body && hp->p.status_code >= 200 ? 1 : HPE_PAUSED;
}

static int rs_on_body(struct tp_h1_parser *hp, const char *at, size_t len)
{
    struct tp_uconn *uc = uconn_of_parser(hp);
    struct tp_shard *sh = tp_self;

    if (uc->mode != RM_CONTENT)
        return 0;
    /* content wanted: the decoded bytes are copied into blocks */
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
            uc->dec_blk = NULL;
            if (!uc->req->ds->ops->body_block(sh, uc->req, b))
                return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* connections and pools                                               */
/* ------------------------------------------------------------------ */

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
    tp_stat_add(&ps->idle_count, (uint64_t)-1);
}

/* Detaches <uc> from its request: from here on neither sees the other. */
static struct tp_req *detach(struct tp_uconn *uc)
{
    struct tp_req *r = uc->req;

    if (r) {
        r->att.conn = NULL;
        uc->req = NULL;
    }
    return r;
}

/* The endpoint was removed by a reload: its state lives only as long as a
 * generation holding it, so a connection without a request must not keep it. */
static bool ep_retired(const struct tp_uconn *uc)
{
    return atomic_load_explicit(&uc->eps->retired, memory_order_acquire);
}

static void uconn_close(struct tp_shard *sh, struct tp_uconn *uc)
{
    if (uc->state == UC_CLOSING)
        return;
    if (uc->state == UC_IDLE)
        pool_unlink(sh, uc);
    uc->state = UC_CLOSING;
    detach(uc);
    tp_transport_close(sh, &uc->t);
}

/* The attempt on <uc> failed: the connection goes, the proxy decides what follows. */
static void fail(struct tp_shard *sh, struct tp_uconn *uc, enum tp_fail_kind kind, int err)
{
    struct tp_req *r = detach(uc);

    uconn_close(sh, uc);
    if (r)
        tp_proxy_failed(sh, r, kind, err);
}

static void uconn_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_uconn *uc = uconn_of(t);
    struct tp_req *r = detach(uc);

    if (uc->state == UC_IDLE)
        pool_unlink(sh, uc);
    tp_head_dispose(sh, &uc->rhead);
    tp_h1_parser_dispose(&uc->hp);
    if (uc->dec_blk)
        tp_block_put(sh, uc->dec_blk);
    if (uc->chunk_blk)
        tp_block_put(sh, uc->chunk_blk);
    tp_slab_free(sh, uc);
    /* closed under a request (the transport gave up: out of memory) */
    if (r)
        tp_proxy_failed(sh, r, TP_FAIL_RESET, TP_ECLOSED);
}

void tp_h1c_pool_close(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_ep_shard *ps = &eps->shard[sh->id];
    while (ps->idle)
        uconn_close(sh, ps->idle);
}

void tp_h1c_close_retired(struct tp_shard *sh)
{
    /* Connections on their way back to a pool hold no request, so no generation
     * keeps a removed endpoint's state alive for them: those reading an abandoned
     * request's answer, and those waiting for their last send. They close with the
     * pool, in one walk for every endpoint the generation removed. (Later ones
     * never start: ux_abort and response_done check the flag.) */
    unsigned id = (unsigned)tp_http_shard(sh)->slab_uconn;
    struct tp_slot *o;
    for (uint32_t i = 0; (o = tp_slab_at(sh, id, i)); i++) {
        struct tp_uconn *uc = (struct tp_uconn *)o;
        if (!o->in_free && !uc->req && (uc->state == UC_SALVAGE || uc->state == UC_ACTIVE) && ep_retired(uc))
            uconn_close(sh, uc);
    }
}

/* A finished connection goes back to its endpoint's pool, newest first. */
static void pool_put(struct tp_shard *sh, struct tp_uconn *uc, uint32_t keepalive)
{
    struct tp_ep_shard *ps = &uc->eps->shard[sh->id];

    if (sh->draining || tp_stat_get(&ps->idle_count) >= keepalive || uc->t.peer_closed ||
        atomic_load_explicit(&uc->eps->retired, memory_order_relaxed)) {
        uconn_close(sh, uc);
        return;
    }
    uc->state = UC_IDLE;
    uc->hp.head_done = uc->hp.msg_done = false;
    llhttp_resume(&uc->hp.p);
    tp_head_dispose(sh, &uc->rhead);
    tp_head_init(&uc->rhead);
    uc->pprev = NULL;
    uc->pnext = ps->idle;
    if (ps->idle)
        ((struct tp_uconn *)ps->idle)->pprev = uc;
    ps->idle = uc;
    tp_stat_add(&ps->idle_count, 1);
    tp_transport_deadline(sh, &uc->t, sh->now_ms + POOL_IDLE_MS);
    tp_transport_resume_recv(sh, &uc->t);
}

static struct tp_uconn *pool_take(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_uconn *uc = eps->shard[sh->id].idle;

    if (!uc)
        return NULL;
    pool_unlink(sh, uc);
    uc->state = UC_ACTIVE;
    return uc;
}

/* ------------------------------------------------------------------ */
/* the request head                                                    */
/* ------------------------------------------------------------------ */

/* Writes the request head for the upstream into <b> (b->len says how much it
 * needed, which may exceed b->size: the caller then retries larger). The
 * final empty line is left out when no Host was written: each attempt adds
 * its endpoint's. */
static bool write_request_head(struct tp_block *b, struct tp_req *r)
{
    const char *method = llhttp_method_name((llhttp_method_t)r->method);

    tp_blk_put(b, method, strlen(method));
    tp_blk_lit(b, " ");
    tp_req_upstream_target(r, b);
    tp_blk_lit(b, " HTTP/1.1\r\n");

    bool has_host = tp_req_upstream_headers(r, &tp_h1_line_sink, b);
    if (r->chunked) {
        tp_blk_lit(b, "Transfer-Encoding: chunked\r\n");
    } else if (r->body_state != TP_BODY_NONE || (r->head_cl_seen && r->content_length == 0)) {
        tp_blk_lit(b, "Content-Length: ");
        tp_blk_u64(b, r->content_length);
        tp_blk_lit(b, "\r\n");
    }
    if (r->up->cfg->keepalive == 0)
        tp_blk_lit(b, "Connection: close\r\n");
    if (has_host)
        tp_blk_lit(b, "\r\n");
    return has_host;
}

static bool ux_prepare(struct tp_shard *sh, struct tp_req *r)
{
    size_t need = r->head.len + r->route->req.set_len + r->ds->peer_len + r->host_len + 384;
    struct tp_block *b = tp_block_get(sh, need);

    if (!b)
        return false;
    bool has_host = write_request_head(b, r);
    if (b->len > b->size) {
        /* the estimate was short (many X-Forwarded-For lines): write again, exactly sized */
        need = b->len;
        tp_block_put(sh, b);
        b = tp_block_get(sh, need);
        if (!b)
            return false;
        write_request_head(b, r);
        TP_BUG_ON(b->len > b->size);
    }
    r->uhead = b;
    r->uhead_open = !has_host;
    return true;
}

/* ------------------------------------------------------------------ */
/* attempts                                                            */
/* ------------------------------------------------------------------ */

/* Binds <uc> to <r> and queues the request head. false: out of memory. */
static bool attach(struct tp_shard *sh, struct tp_uconn *uc, struct tp_req *r)
{
    struct tp_block *h = r->uhead;
    bool ok;

    uc->req = r;
    uc->skip_body = r->method == HTTP_HEAD;
    uc->hp.head_done = uc->hp.msg_done = false;
    tp_h1_parser_want_trailers(&uc->hp, 0);
    uc->last_chunk = false;
    uc->mode = RM_NONE;
    r->att.conn = uc;
    ok = tp_outq_push_static(sh, &uc->t.out, h->data, h->len);
    if (ok && r->uhead_open) {
        /* no Host from the client (HTTP/1.0): the endpoint's address, then the end of the head */
        const char *a = uc->eps->addr.text;
        ok = tp_outq_push_static(sh, &uc->t.out, "Host: ", 6) &&
             tp_outq_push_static(sh, &uc->t.out, a, (uint32_t)strlen(a)) &&
             tp_outq_push_static(sh, &uc->t.out, "\r\n\r\n", 4);
    }
    return ok;
}

/* The connection is ready: send the head and whatever body is queued. */
static void uconn_go(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_req *r = uc->req;

    tp_transport_deadline(sh, &uc->t,
                          tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms));
    tp_transport_flush(sh, &uc->t);
    if (r->body_state == TP_BODY_STREAM)
        r->ds->ops->resume_body(sh, r);
}

static void ux_start(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_rt_endpoint *ep = r->att.ep;
    struct tp_uconn *uc = r->force_fresh ? NULL : pool_take(sh, ep->st);
    int err;

    if (uc) {
        r->att.reused = true;
        if (!attach(sh, uc, r)) {
            fail(sh, uc, TP_FAIL_CONNECT, -ENOMEM);
            return;
        }
        uconn_go(sh, uc);
        return;
    }
    uc = tp_slab_alloc(sh, (unsigned)tp_http_shard(sh)->slab_uconn);
    if (!uc) {
        tp_proxy_failed(sh, r, TP_FAIL_CONNECT, -ENOMEM);
        return;
    }
    SSL *ssl = r->up->tls ? tp_tls_client_ssl(r->up->tls, &ep->cfg->addr) : NULL;
    err = r->up->tls && !ssl ? -ENOMEM : tp_transport_init(&uc->t, -1, &uconn_proto, ssl);
    if (err) {
        tp_slab_free(sh, uc);
        tp_proxy_failed(sh, r, TP_FAIL_CONNECT, err);
        return;
    }
    uc->eps = ep->st;
    uc->state = UC_CONNECTING;
    tp_head_init(&uc->rhead);
    tp_h1_parser_init(&uc->hp, HTTP_RESPONSE, &uc->rhead, rs_on_body);
    uc->hp.on_headers = rs_on_headers;
    err = tp_transport_connect(sh, &uc->t, &ep->cfg->addr);
    if (err) {
        TP_LOG_RL(TP_LOG_ERR, "socket for upstream %s: %s", ep->cfg->addr.text, tp_strerror(err));
        uconn_close(sh, uc);
        tp_proxy_failed(sh, r, TP_FAIL_CONNECT, err);
        return;
    }
    tp_stat_add(&ep->st->shard[sh->id].connects, 1);
    if (!attach(sh, uc, r)) {
        fail(sh, uc, TP_FAIL_CONNECT, -ENOMEM);
        return;
    }
    tp_transport_deadline(sh, &uc->t, tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_connect_ms));
}

static void salvage_input(struct tp_shard *sh, struct tp_uconn *uc);

/*
 * The request left while its upstream exchange was under way (the client went,
 * or gave up). A request that was sent whole and whose answer's head is not complete
 * keeps its connection for a while: the answer is read and dropped, and the
 * connection pooled if it came whole and small (SALVAGE_MS, SALVAGE_BYTES).
 * Closing it instead cost a new connection to the upstream for every abandoned
 * request: h2load's end (1000 streams reset at once) left the pool empty, and
 * the next burst waited up to seconds on an upstream accepting one connection
 * per event-loop turn. Anything else closes the connection.
 */
static void ux_abort(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_uconn *uc = r->att.conn;

    if (!uc)
        return;
    struct tp_ep_shard *ps = &uc->eps->shard[sh->id];
    if (uc->state != UC_ACTIVE || !r->att.req_sent || uc->hp.head_done || uc->t.send_busy ||
        tp_transport_pending(&uc->t) || uc->t.peer_closed || sh->draining || ep_retired(uc) ||
        tp_stat_get(&ps->idle_count) >= r->up->cfg->keepalive) {
        uconn_close(sh, uc); /* detaches */
        return;
    }
    uint64_t wait = r->limits.upstream_response_ms < SALVAGE_MS ? r->limits.upstream_response_ms : SALVAGE_MS;
    detach(uc);
    uc->state = UC_SALVAGE;
    uc->pool_keepalive = r->up->cfg->keepalive;
    uc->salvaged = 0;
    tp_transport_deadline(sh, &uc->t, sh->now_ms + wait);
    tp_transport_resume_recv(sh, &uc->t);
    salvage_input(sh, uc);
}

/* Reads the answer to an abandoned request (UC_SALVAGE) and drops it; pools the
 * connection once the answer is complete and the connection reusable. */
static void salvage_input(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_transport *t = &uc->t;
    struct tp_rbuf *e;

    while (uc->state == UC_SALVAGE) {
        if (!uc->hp.head_done) {
            unsigned status = 502;
            uint32_t before = t->in.bytes;
            if (!t->in.n)
                break;
            enum tp_head_rc rc = tp_head_parse(sh, &uc->hp, &t->in, RESP_HEAD_MAX, &status);
            uc->salvaged += before - t->in.bytes;
            if (rc == TP_HEAD_MORE)
                break;
            llhttp_t *p = &uc->hp.p;
            unsigned code = p->status_code;
            tp_head_release(sh, &uc->rhead);
            if (rc == TP_HEAD_ERROR || code < 100 || code > 599 || code == 101 ||
                uc->salvaged > SALVAGE_BYTES) {
                uconn_close(sh, uc);
                return;
            }
            if (code < 200) {
                /* interim: the next head follows */
                tp_head_dispose(sh, &uc->rhead);
                tp_head_init(&uc->rhead);
                uc->hp.head_done = false;
                tp_h1_parser_finish_message(&uc->hp);
                continue;
            }
            if (response_framing(uc) == TP_FRAME_CLOSE) {
                uconn_close(sh, uc); /* ends at EOF: nothing to keep */
                return;
            }
            uc->mode = RM_RAW; /* the body callback keeps nothing */
            llhttp_resume(p);
            if (!uc->hp.msg_done)
                llhttp_execute(p, "", 0); /* a bodiless answer reaches its end here */
        } else {
            e = tp_inq_front(&t->in);
            if (!e)
                break;
            const char *data = tp_rbuf_data(sh, e);
            uint32_t used;
            if (!parse_body(uc, data, e->len, &used)) {
                uconn_close(sh, uc);
                return;
            }
            uc->salvaged += used;
            tp_inq_consume(sh, &t->in, used);
            if (uc->salvaged > SALVAGE_BYTES) {
                uconn_close(sh, uc);
                return;
            }
        }
        if (uc->hp.msg_done) {
            uc->hp.msg_done = false;
            if (!llhttp_should_keep_alive(&uc->hp.p) || t->in.n || t->peer_closed) {
                uconn_close(sh, uc);
                return;
            }
            pool_put(sh, uc, uc->pool_keepalive);
            return;
        }
    }
    if (uc->state == UC_SALVAGE && t->peer_closed)
        uconn_close(sh, uc);
}

/* ---- request body ---- */

static bool ux_body_ready(const struct tp_req *r)
{
    const struct tp_uconn *uc = r->att.conn;
    return uc && uc->state == UC_ACTIVE &&
           tp_transport_pending(&uc->t) < tp_queue_budget(tp_self, TP_OUTQ_BUDGET) &&
           !tp_outq_full(uc->t.out, 12);
}

/* The re-framed request body's chunk being filled goes out as one chunk. */
static bool flush_chunk(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_block *b = uc->chunk_blk;
    char line[16];
    int n;

    if (!b || b->len == 0)
        return true;
    n = snprintf(line, sizeof(line), "%x\r\n", b->len);
    uc->chunk_blk = NULL;
    return tp_outq_push_inline(sh, &uc->t.out, line, (uint32_t)n) && tp_outq_push_block(sh, &uc->t.out, b) &&
           tp_outq_push_static(sh, &uc->t.out, "\r\n", 2);
}

static bool ux_body(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *at, uint32_t len)
{
    struct tp_uconn *uc = r->att.conn;

    if (!r->chunked)
        return tp_outq_push_slice(sh, &uc->t.out, ref, at, len);
    /* chunked bodies are re-framed so the upstream never sees chunk
     * extensions or framing it might read differently from us: copied into
     * blocks, each full block one chunk */
    while (len) {
        if (!uc->chunk_blk && !(uc->chunk_blk = tp_block_get(sh, TP_BLOCK_SIZE)))
            return false;
        struct tp_block *b = uc->chunk_blk;
        uint32_t room = b->size - b->len;
        uint32_t n = len < room ? len : room;
        memcpy(b->data + b->len, at, n);
        b->len += n;
        at += n;
        len -= n;
        if (b->len == b->size && !flush_chunk(sh, uc))
            return false;
    }
    return true;
}

/* The client's trailer section goes out as the last chunk's; a body sent
 * with Content-Length has no place for trailers: they are dropped. */
static bool ux_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h)
{
    struct tp_uconn *uc = r->att.conn;
    struct tp_block *b;

    if (!r->chunked || !uc || uc->last_chunk)
        return true;
    if (!flush_chunk(sh, uc) || !(b = tp_block_get(sh, h->len + 4 * h->n_hdrs + 8)))
        return false;
    tp_blk_lit(b, "0\r\n");
    tp_req_trailer_fields(h, &tp_h1_line_sink, b);
    tp_blk_lit(b, "\r\n");
    if (b->len > b->size || !tp_outq_push_block(sh, &uc->t.out, b)) {
        tp_block_put(sh, b);
        return false;
    }
    uc->last_chunk = true;
    return true;
}

static bool ux_body_end(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_uconn *uc = r->att.conn;

    if (!r->chunked || uc->last_chunk)
        return true;
    return flush_chunk(sh, uc) && tp_outq_push_static(sh, &uc->t.out, "0\r\n\r\n", 5);
}

static void ux_flush(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_uconn *uc = r->att.conn;

    if (!uc)
        return;
    if (r->chunked && !flush_chunk(sh, uc)) {
        fail(sh, uc, TP_FAIL_RESET, -ENOMEM);
        return;
    }
    tp_transport_flush(sh, &uc->t);
}

static void ux_resume(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_uconn *uc = r->att.conn;

    if (uc && uc->state == UC_ACTIVE)
        process_response(sh, uc);
}

static const struct tp_ux_ops h1_exchange = {
    .prepare = ux_prepare,
    .start = ux_start,
    .abort = ux_abort,
    .body_ready = ux_body_ready,
    .body = ux_body,
    .trailers = ux_trailers,
    .body_end = ux_body_end,
    .flush = ux_flush,
    .resume = ux_resume,
};

const struct tp_ux_ops *tp_h1_exchange_ops(void)
{
    return &h1_exchange;
}

/* ------------------------------------------------------------------ */
/* transport events                                                    */
/* ------------------------------------------------------------------ */

static void uconn_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_uconn *uc = uconn_of(t);

    if (err) {
        fail(sh, uc, TP_FAIL_CONNECT, err);
        return;
    }
    if (!uc->req) {
        uconn_close(sh, uc);
        return;
    }
    uc->state = UC_ACTIVE;
    uconn_go(sh, uc);
}

static void uconn_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tp_uconn *uc = uconn_of(t);
    struct tp_req *r = uc->req;

    if (uc->pool_when_sent) {
        uc->pool_when_sent = false;
        if (res >= 0 && tp_transport_pending(t) == 0)
            pool_put(sh, uc, uc->pool_keepalive);
        else
            uconn_close(sh, uc);
        return;
    }
    if (!r) {
        uconn_close(sh, uc);
        return;
    }
    if (res < 0) {
        fail(sh, uc, TP_FAIL_RESET, res);
        return;
    }
    if (uc->state != UC_ACTIVE)
        return; /* a TLS handshake message: the handshake stays under upstream_connect */
    if (tp_transport_pending(t) == 0 && (r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE))
        r->att.req_sent = true;
    tp_transport_deadline(sh, t, tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms));
    /* room towards the upstream again: read more of the client's body */
    if (r->body_state == TP_BODY_STREAM)
        r->ds->ops->resume_body(sh, r);
}

static void uconn_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_uconn *uc = uconn_of(t);

    if (!uc->req) {
        uconn_close(sh, uc); /* pooled too long, or nobody waits for it */
        return;
    }
    if (uc->state == UC_ACTIVE && t->recv_stopped) {
        /* We stopped reading because the client is slower: the upstream is not the one
         * keeping us waiting (the client's own timeouts watch the client). Only a
         * request deadline (grpc-timeout) that passed still ends the exchange. */
        uint64_t next = tp_req_upstream_deadline(uc->req, sh->now_ms, uc->req->limits.upstream_response_ms);
        if (next > sh->now_ms) {
            tp_transport_deadline(sh, t, next);
            return;
        }
    }
    fail(sh, uc, uc->state == UC_CONNECTING ? TP_FAIL_CONNECT_TIMEOUT : TP_FAIL_TIMEOUT, TP_ETIMEOUT);
}

static void uconn_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_uconn *uc = uconn_of(t);

    if (uc->req)
        fail(sh, uc, TP_FAIL_INVALID, err);
    else
        uconn_close(sh, uc);
}

static void uconn_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_uconn *uc = uconn_of(t);

    if (uc->state == UC_SALVAGE) {
        salvage_input(sh, uc);
        return;
    }
    if (uc->state == UC_IDLE || !uc->req) {
        /* pooled: data, EOF or an error all mean the connection is done
         * (TLS session tickets decrypt to nothing and never get here) */
        uconn_close(sh, uc);
        return;
    }
    if (t->in.n)
        t->deadline_ms = tp_req_upstream_deadline(uc->req, sh->now_ms, uc->req->limits.upstream_response_ms);
    process_response(sh, uc);
}

static const struct tp_transport_ops uconn_proto = {
    .on_input = uconn_on_input,
    .on_sent = uconn_on_sent,
    .on_connected = uconn_on_connected,
    .on_timeout = uconn_on_timeout,
    .on_error = uconn_on_error,
    .on_closed = uconn_on_closed,
};

/* ------------------------------------------------------------------ */
/* the response                                                        */
/* ------------------------------------------------------------------ */

/* How the body of the response whose head <uc> just parsed is delimited. */
static enum tp_framing response_framing(const struct tp_uconn *uc)
{
    const llhttp_t *p = &uc->hp.p;
    unsigned status = p->status_code;

    if ((p->flags & F_CHUNKED) && (uc->skip_body || (status != 204 && status != 304)))
        return TP_FRAME_CHUNKED;
    if (uc->skip_body || status == 204 || status == 304 ||
        ((p->flags & F_CONTENT_LENGTH) && p->content_length == 0))
        return TP_FRAME_NONE;
    return p->flags & F_CONTENT_LENGTH ? TP_FRAME_LENGTH : TP_FRAME_CLOSE;
}

/* Runs the response parser over <len> bytes at <data>; *<used> says how many it
 * took (it pauses at the end of the message). false: the bytes are malformed. */
static bool parse_body(struct tp_uconn *uc, const char *data, uint32_t len, uint32_t *used)
{
    llhttp_errno_t rc = tp_h1_execute(&uc->hp, data, len);

    if (rc == HPE_PAUSED)
        *used = (uint32_t)(llhttp_get_error_pos(&uc->hp.p) - data);
    else if (rc == HPE_OK)
        *used = len;
    return rc == HPE_PAUSED || rc == HPE_OK;
}

/* Handles a complete response head. Returns false when the response or the request ended. */
static bool on_response_head(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_req *r = uc->req;
    llhttp_t *p = &uc->hp.p;
    unsigned status = p->status_code;
    struct tp_head *h = &uc->rhead;
    struct tp_resp_info ri = {.head_only = uc->skip_body};

    if (status == 101) {
        /* switching protocols: the head goes to the client, then this
         * connection leaves the exchange for a tunnel; what the upstream sent
         * after the head stays queued for it */
        bool ok = tp_proxy_response_head(sh, r, status, h, &ri);
        tp_head_release(sh, h);
        if (!ok)
            return false;
        detach(uc);
        uc->state = UC_TUNNEL;
        tp_proxy_upgraded(sh, r, &uc->t);
        return false;
    }
    if (status >= 100 && status < 200) {
        /* interim response: handed on, then the next head is read */
        tp_proxy_response_head(sh, r, status, h, &ri);
        tp_head_release(sh, h);
        tp_head_dispose(sh, h);
        tp_head_init(h);
        uc->hp.head_done = false;
        /* complete the interim message so the next execute starts the next head */
        tp_h1_parser_finish_message(&uc->hp);
        return true;
    }
    ri.framing = response_framing(uc);
    uc->framing = ri.framing;

    bool ok = tp_proxy_response_head(sh, r, status, h, &ri);
    tp_head_release(sh, h);
    if (!ok)
        return false;
    bool has_body = !uc->skip_body && ri.framing != TP_FRAME_NONE;
    uc->mode = !has_body ? RM_NONE : ri.want_content ? RM_CONTENT : RM_RAW;
    /* a chunked body may end in trailers: recorded for the request layer
     * (grpc-status) and for clients that get them as fields (HTTP/2) */
    if (has_body && ri.framing == TP_FRAME_CHUNKED)
        tp_h1_parser_want_trailers(&uc->hp, RESP_HEAD_MAX);
    llhttp_resume(p);
    return true;
}

/* The response is complete: the connection is released, then the request finishes. */
static void response_done(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_req *r = uc->req;
    bool body_done = r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE;
    bool reusable = !uc->t.peer_closed && llhttp_should_keep_alive(&uc->hp.p) && body_done &&
                    uc->framing != TP_FRAME_CLOSE && uc->t.in.n == 0;

    if (uc->dec_blk) {
        struct tp_block *b = uc->dec_blk;
        uc->dec_blk = NULL;
        if (!r->ds->ops->body_block(sh, r, b)) {
            fail(sh, uc, TP_FAIL_RESET, -ENOMEM);
            return;
        }
    }
    const struct tp_head *tr = tp_h1_trailers(&uc->hp);
    if (tr && !tp_proxy_response_trailers(sh, r, tr)) {
        fail(sh, uc, TP_FAIL_RESET, -ENOMEM);
        return;
    }
    detach(uc);
    uc->served++;
    if (!reusable || ep_retired(uc)) {
        uconn_close(sh, uc); /* a removed endpoint's state may be gone before our send */
    } else if (uc->t.send_busy) {
        /* our send has not completed yet: pool it when it has */
        uc->pool_when_sent = true;
        uc->pool_keepalive = r->up->cfg->keepalive;
    } else {
        pool_put(sh, uc, r->up->cfg->keepalive);
    }
    tp_proxy_response_done(sh, r);
}

/*
 * Parses and relays what the upstream sent: the head, then the body while
 * the client's queue is under budget. Called on input, on EOF and when the
 * client's queue drained.
 */
static void process_response(struct tp_shard *sh, struct tp_uconn *uc)
{
    struct tp_req *r = uc->req;
    struct tp_transport *t = &uc->t;
    struct tp_rbuf *e;

    while (uc->state == UC_ACTIVE && uc->req) {
        if (!uc->hp.head_done) {
            unsigned status = 502;
            enum tp_head_rc rc;
            if (!t->in.n)
                break;
            r->att.resp_bytes = true;
            rc = tp_head_parse(sh, &uc->hp, &t->in, RESP_HEAD_MAX, &status);
            if (rc == TP_HEAD_MORE)
                break;
            if (rc == TP_HEAD_ERROR) {
                fail(sh, uc, TP_FAIL_INVALID, TP_EUPSTREAM);
                return;
            }
            if (!on_response_head(sh, uc))
                return;
            if (!uc->hp.head_done)
                continue; /* an interim response: read the next head */
            if (uc->mode == RM_NONE && !uc->hp.msg_done)
                llhttp_execute(&uc->hp.p, "", 0); /* bodiless: reach the end of the message */
            if (uc->hp.msg_done || uc->mode == RM_NONE) {
                uc->hp.msg_done = false;
                llhttp_resume(&uc->hp.p);
                response_done(sh, uc);
                return;
            }
            continue;
        }
        /* body */
        if (r->ds->ops->congested(r)) {
            /* stop reading now, not once TP_INQ_STOP buffers wait: the client is slower
             * than the upstream, and the response waits best in the upstream's socket */
            tp_transport_stop_recv(sh, t);
            return;
        }
        e = tp_inq_front(&t->in);
        if (!e) {
            if (t->peer_closed) {
                /* EOF: the end of a close-delimited body; anything else was cut short */
                uc->hp.msg_done = false;
                if (!t->reset)
                    llhttp_finish(&uc->hp.p);
                if (!uc->hp.msg_done) {
                    fail(sh, uc, TP_FAIL_RESET, t->reset ? -ECONNRESET : TP_ECLOSED);
                    return;
                }
                uc->hp.msg_done = false;
                response_done(sh, uc);
                return;
            }
            break;
        }
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len, used;
        struct tp_bref ref = tp_rbuf_ref(e);
        if (!parse_body(uc, data, len, &used)) {
            fail(sh, uc, TP_FAIL_INVALID, TP_EUPSTREAM);
            return;
        }
        if (used) {
            bool ok = true;
            if (uc->mode == RM_RAW) {
                ok = r->ds->ops->body(sh, r, ref, data, used);
            } else if (uc->mode == RM_CONTENT && uc->dec_blk && uc->dec_blk->len) {
                struct tp_block *b = uc->dec_blk;
                uc->dec_blk = NULL;
                ok = r->ds->ops->body_block(sh, r, b);
            }
            if (!ok) {
                fail(sh, uc, TP_FAIL_RESET, -ENOMEM);
                return;
            }
            r->bytes_out += used;
            tp_inq_consume(sh, &t->in, used);
        }
        r->head_unflushed = false;
        r->ds->ops->flush(sh, r);
        if (uc->hp.msg_done) {
            uc->hp.msg_done = false;
            llhttp_resume(&uc->hp.p);
            response_done(sh, uc);
            return;
        }
    }
    if (uc->state != UC_ACTIVE || !uc->req)
        return;
    /* EOF before the head */
    if (t->peer_closed && !uc->hp.head_done && t->in.n == 0) {
        fail(sh, uc, TP_FAIL_RESET, t->reset ? -ECONNRESET : TP_ECLOSED);
        return;
    }
    tp_transport_backpressure(sh, t);
}

/* ------------------------------------------------------------------ */
/* the shard's connections                                             */
/* ------------------------------------------------------------------ */

void tp_h1c_close_all(struct tp_shard *sh, bool all)
{
    unsigned id = (unsigned)tp_http_shard(sh)->slab_uconn;
    struct tp_slot *o;

    for (uint32_t i = 0; (o = tp_slab_at(sh, id, i)); i++) {
        struct tp_uconn *uc = (struct tp_uconn *)o;
        if (o->in_free || uc->state == UC_CLOSING || uc->state == UC_TUNNEL)
            continue; /* tunnels close through their own drain */
        if (all || uc->state == UC_IDLE || uc->state == UC_SALVAGE)
            uconn_close(sh, uc);
    }
}

uint32_t tp_h1c_count(struct tp_shard *sh)
{
    return sh->slabs[tp_http_shard(sh)->slab_uconn].live;
}
