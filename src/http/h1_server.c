/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/1 server session: client connections speaking HTTP/1.x. It reads
 * and parses requests, applies HTTP/1's own rules (version, Host, framing,
 * Connection), hands each request to the request layer (request.c), and
 * writes what the request layer answers in HTTP/1: struct tp_ds_ops for the
 * request layer, struct tp_transport_ops for its transport. [shard]
 *
 * States and what moves between them:
 *
 * A connection that starts with the HTTP/2 preface on an h2c listener, or
 * whose TLS handshake chose h2 by ALPN, is handed to the HTTP/2 session
 * (h2_server.c) before any request, the way a tunnel takes one over (CS_H2).
 *
 *            accept                 first byte              head complete
 *   (new) ──────────▶ IDLE ───────────────────────▶ HEAD ─────────────────▶ ACTIVE
 *                      ▲  client_idle: close         │ client_header: 408    │
 *                      │                             │ bad head: 400/414/431 │
 *                      │      response complete,     ▼                       │
 *                      └──── keep-alive ────────── LINGER ◀── close after ───┘
 *                                                    │        response
 *                                                    ▼ flushed: shutdown(WR),
 *                                                 CLOSING     read to EOF or 2 s
 *                                                    │ the transport cancels,
 *                                                    ▼ closes, on_closed
 *                                                  (free)
 *
 * One request is served at a time: pipelined requests wait, unparsed, in the
 * receive queue until the previous response has been queued, so responses
 * go out in request order by construction.
 *
 * Bytes stay in the buffers they arrived in: the head is parsed in place
 * (see h1.c), Content-Length bodies are forwarded from those buffers without
 * a copy; chunked request bodies reach the upstream exchange decoded, and it
 * frames them again.
 *
 * Backpressure: when TP_INQ_STOP buffers wait in the receive queue (the
 * upstream cannot take the body fast enough, or a client pipelines a flood),
 * the transport stops reading until the queue has drained.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <turnpike/log.h>
#include <turnpike/tls.h>

#include "http/sessions.h"
#include "transport/transport.h"

#define LINGER_MS         2000 /* [ms] reading after shutdown(SHUT_WR) before close */
#define LINGER_DRAIN_MS   500  /* [ms] the same while shutting down */
#define DISCARD_MAX_BYTES (1u << 20)

enum conn_state {
    CS_IDLE = 0, /* keep-alive: waiting for a request's first byte (client_idle) */
    CS_HEAD,     /* reading a request head (client_header) */
    CS_ACTIVE,   /* a request is being served */
    CS_LINGER,   /* final response queued: flush, shutdown, drain input, close */
    CS_TUNNEL,   /* switched protocols: the transport belongs to a tunnel */
    CS_H2,       /* HTTP/2 (ALPN h2 or the h2c preface): the transport belongs to an h2 session */
    CS_CLOSING,  /* the transport is closing */
};

/* how the current response's body goes to the client */
enum out_mode {
    OM_RAW = 0, /* as the upstream framed it */
    OM_WRAP,    /* close-delimited upstream body, re-chunked for an HTTP/1.1 client */
};

struct tp_conn {
    struct tp_transport t; /* first: the slab header lives in it */
    struct tp_ds ds;
    uint8_t state;    /* enum conn_state */
    uint8_t out_mode; /* enum out_mode of the current response */
    bool drain;       /* close after the current request (shutdown, listener removed) */
    bool linger;      /* closing must drain unread input first (lingering close) */
    bool in_process;  /* inside process_input (no recursion) */
    bool h2c;         /* the listener takes HTTP/2 with prior knowledge */
    bool last_chunk;  /* OM_WRAP: the last chunk (with trailers) is queued, done adds none */
    struct tp_req *req;
    struct h1s_rx *rx; /* request parsing state: only while bytes of a request are in */
    uint32_t requests; /* served on this connection */
};

/*
 * What a connection needs only while it reads a request: allocated (from
 * its own slab) when the first bytes of a request arrive, given back once
 * the connection is idle again with nothing queued. An idle keep-alive
 * connection is the tp_conn alone (docs/internals.md, "Memory").
 */
struct h1s_rx {
    struct tp_slot slot;     /* first: slab header */
    struct tp_h1_parser hp;  /* request parser; its head is req->head */
    struct tp_bref exec_ref; /* buffer being parsed (body slices point into it) */
    struct tp_conn *c;
};

static int slab_rx = -1;

static const struct tp_transport_ops conn_proto;
static const struct tp_ds_ops h1_ds;

static bool ds_congested(const struct tp_req *r);

static void process_input(struct tp_shard *sh, struct tp_conn *c);
static void conn_linger(struct tp_shard *sh, struct tp_conn *c);

static inline struct tp_conn *conn_of(struct tp_transport *t)
{
    return (struct tp_conn *)t;
}

static inline struct tp_conn *conn_of_req(const struct tp_req *r)
{
    return (struct tp_conn *)((char *)r->ds - offsetof(struct tp_conn, ds));
}

size_t tp_h1s_conn_size(void)
{
    return sizeof(struct tp_conn);
}

int tp_h1s_register(void)
{
    if (slab_rx < 0)
        slab_rx = tp_reactor_slab_register(sizeof(struct h1s_rx));
    return slab_rx < 0 ? -1 : 0;
}

static int rq_on_body(struct tp_h1_parser *hp, const char *at, size_t len);

/* The request parsing state, allocated when needed; NULL when out of memory. */
static struct h1s_rx *rx_get(struct tp_shard *sh, struct tp_conn *c)
{
    if (!c->rx) {
        struct h1s_rx *rx = tp_slab_alloc(sh, (unsigned)slab_rx);
        if (!rx)
            return NULL;
        rx->c = c;
        tp_h1_parser_init(&rx->hp, HTTP_REQUEST, NULL, rq_on_body);
        c->rx = rx;
    }
    return c->rx;
}

/* An idle connection with nothing queued gives its parsing state back. */
static void rx_put(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->rx) {
        tp_h1_parser_dispose(&c->rx->hp); /* a recorded trailer section */
        tp_slab_free(sh, c->rx);
        c->rx = NULL;
    }
}

static inline struct tp_limits *shard_limits(struct tp_shard *sh)
{
    return &tp_http_shard(sh)->limits;
}

/* ------------------------------------------------------------------ */
/* closing                                                             */
/* ------------------------------------------------------------------ */

static void conn_close(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->state == CS_CLOSING)
        return;
    if (c->req) {
        struct tp_req *r = c->req;
        c->req = NULL;
        tp_req_end(sh, r);
        c->requests++;
    }
    c->state = CS_CLOSING;
    tp_transport_close(sh, &c->t);
}

static void conn_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_conn *c = conn_of(t);

    rx_put(sh, c);
    tp_shard_conn_closed(sh, c->ds.listener);
    tp_slab_free(sh, c);
}

/* The final response is queued: once it is flushed, shut down our side,
 * keep reading (and dropping) until the client closes or LINGER_MS pass, so
 * unread request bytes do not turn our close into a reset that destroys the
 * response in flight. */
static void conn_linger(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_transport *t = &c->t;

    if (c->state != CS_LINGER) {
        c->state = CS_LINGER;
        if (t->in.n)
            c->linger = true; /* bytes we will never read: drop them without a reset */
        tp_transport_deadline(sh, t, sh->now_ms + (sh->draining ? LINGER_DRAIN_MS : LINGER_MS));
        tp_inq_clear(sh, &t->in);
        t->discard = true;
    }
    tp_transport_close_notify(sh, t);
    if (tp_transport_pending(t)) {
        tp_transport_flush(sh, t);
        return;
    }
    if (t->peer_closed || !c->linger) {
        /* nothing unread to protect: a plain close sends no reset */
        conn_close(sh, c);
        return;
    }
    tp_transport_shutdown(sh, t);
    tp_transport_resume_recv(sh, t);
}

/* ------------------------------------------------------------------ */
/* requests                                                            */
/* ------------------------------------------------------------------ */

static bool start_request(struct tp_shard *sh, struct tp_conn *c)
{
    struct h1s_rx *rx = rx_get(sh, c);
    struct tp_req *r = rx ? tp_req_begin(sh, &c->ds) : NULL;

    if (!r)
        return false;
    r->resp_close = c->drain;
    c->req = r;
    rx->hp.head = &r->head; /* the parser's state carries over: pipelined requests follow each other */
    rx->hp.head_done = rx->hp.msg_done = false;
    tp_h1_parser_want_trailers(&rx->hp, 0);
    c->state = CS_HEAD;
    tp_transport_deadline(sh, &c->t, sh->now_ms + r->limits.client_header_ms);
    return true;
}

/* The response for the current request is fully queued (and the request fully read). */
static void req_finish(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    bool close = r->resp_close || !r->client_keepalive || sh->draining;

    /* Lingering protects a response from the reset a close with unread input
     * causes. It is needed when the request was not read to its end, or when
     * we close a connection the client meant to keep (it may have pipelined
     * more); a client that asked to close sends nothing more. */
    if (close && ((r->body_state != TP_BODY_DONE && r->body_state != TP_BODY_NONE) || r->client_keepalive))
        c->linger = true;

    r->resp_state = TP_RESP_DONE;
    c->req = NULL;
    tp_req_end(sh, r);
    c->requests++;
    tp_transport_flush(sh, &c->t);
    if (c->state == CS_CLOSING)
        return;
    if (close) {
        conn_linger(sh, c);
        return;
    }
    c->state = CS_IDLE;
    llhttp_resume(&c->rx->hp.p);
    tp_h1_parser_decline_upgrade(&c->rx->hp); /* an upgrade answered without 101: the connection stays HTTP */
    tp_transport_deadline(sh, &c->t, sh->now_ms + shard_limits(sh)->client_idle_ms);
    if (!c->in_process)
        process_input(sh, c);
}

/* The response is complete (queued): finish now, or once the request body is read. */
static void request_done(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;

    r->resp_state = TP_RESP_DONE;
    if (r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE) {
        req_finish(sh, c);
        return;
    }
    if (r->body_state == TP_BODY_DISCARD && r->body_left_ok) {
        /* finish once the rest of the body has been read and dropped */
        if (!c->in_process)
            process_input(sh, c);
        return;
    }
    /* response complete while the request body still streams: the
     * connection cannot be reused */
    r->resp_close = true;
    req_finish(sh, c);
}

/* ------------------------------------------------------------------ */
/* answers (struct tp_ds_ops)                                          */
/* ------------------------------------------------------------------ */

static void ds_error(struct tp_shard *sh, struct tp_req *r, unsigned status, const char *reason, bool close)
{
    struct tp_conn *c = conn_of_req(r);
    struct tp_block *b;
    char text[160];

    if (!r->id_len)
        tp_req_ids(sh, r, false);
    if (r->resp_state != TP_RESP_NONE) {
        /* a response is already on its way: it cannot be replaced, only cut short */
        c->t.rst = true;
        conn_close(sh, c);
        return;
    }
    if (r->body_state == TP_BODY_STREAM || r->body_state == TP_BODY_DISCARD) {
        /* unread body: small bodies are read and dropped to keep the connection, others close it */
        if (!close && !r->chunked && r->content_length - r->body_bytes <= DISCARD_MAX_BYTES &&
            c->rx->hp.head_done) {
            r->body_state = TP_BODY_DISCARD;
            r->body_left_ok = true;
        } else {
            close = true;
        }
    }
    if (close) {
        r->resp_close = true;
        c->linger = true; /* the client may still be sending what we refused */
    }
    r->status = (uint16_t)status;
    r->error = reason;
    if (r->err) {
        /* the cause goes with the reason, in the body and in the access log alike */
        snprintf(text, sizeof(text), "%s: %s", reason, tp_strerror(r->err));
        reason = text;
    }
    if (r->grpc)
        b = tp_h1_grpc_error_response(sh, status, reason, r->id, r->id_len, r->extra_hdrs, r->extra_len,
                                      r->resp_close || !r->client_keepalive || sh->draining);
    else
        b = tp_h1_error_response(sh, status, reason, r->id, r->id_len, r->extra_hdrs, r->extra_len,
                                 r->resp_close || !r->client_keepalive || sh->draining,
                                 r->method == HTTP_HEAD);
    if (!b || !tp_outq_push_block(sh, &c->t.out, b)) {
        if (b)
            tp_block_put(sh, b);
        c->t.rst = true;
        conn_close(sh, c);
        return;
    }
    r->bytes_out += b->len;
    r->resp_head_len = b->len;
    r->resp_state = TP_RESP_HEAD;
    request_done(sh, c);
    tp_transport_flush(sh, &c->t);
}

static void ds_direct(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_conn *c = conn_of_req(r);
    const struct tp_cfg_direct_response *d = r->route->cfg->direct;
    const struct tp_rt_rewrite *rw = &r->route->resp;
    bool head_only = r->method == HTTP_HEAD;
    bool close = r->resp_close || !r->client_keepalive || sh->draining;
    struct tp_block *b;

    if (r->body_state == TP_BODY_STREAM) {
        /* the body is read and dropped; chunked or large bodies close the connection */
        r->body_state = TP_BODY_DISCARD;
        if (!r->chunked && r->content_length <= DISCARD_MAX_BYTES)
            r->body_left_ok = true;
        else
            r->resp_close = close = true;
    }
    b = tp_block_get(sh, 256 + r->id_len + rw->set_len + r->extra_len + d->body_len);
    if (!b) {
        tp_req_error(sh, r, 503, "out of memory", true);
        return;
    }
    tp_blk_lit(b, "HTTP/1.1 ");
    tp_blk_u64(b, d->status);
    tp_blk_lit(b, " ");
    tp_blk_put(b, tp_h1_reason(d->status), strlen(tp_h1_reason(d->status)));
    tp_blk_lit(b, "\r\nDate: ");
    tp_blk_put(b, tp_h1_date(), 29);
    tp_blk_lit(b, "\r\n");
    if (!r->route->resp_has_ctype)
        tp_blk_lit(b, "Content-Type: text/plain; charset=utf-8\r\n");
    tp_blk_lit(b, "Content-Length: ");
    tp_blk_u64(b, d->body_len);
    tp_blk_lit(b, "\r\nX-Request-Id: ");
    tp_blk_put(b, r->id, r->id_len);
    tp_blk_lit(b, "\r\n");
    tp_blk_put(b, rw->set_block, rw->set_len);
    tp_blk_put(b, r->extra_hdrs, r->extra_len);
    if (close)
        tp_blk_lit(b, "Connection: close\r\n");
    else if (r->http_minor == 0)
        tp_blk_lit(b, "Connection: keep-alive\r\n");
    tp_blk_lit(b, "\r\n");
    if (!head_only)
        tp_blk_put(b, d->body, d->body_len);
    TP_BUG_ON(b->len > b->size);
    r->status = d->status;
    if (close)
        r->resp_close = true;
    r->bytes_out += b->len;
    r->resp_head_len = b->len - (head_only ? 0 : (uint32_t)d->body_len);
    if (!tp_outq_push_block(sh, &c->t.out, b)) {
        tp_block_put(sh, b);
        c->t.rst = true;
        conn_close(sh, c);
        return;
    }
    r->resp_state = TP_RESP_HEAD;
    tp_transport_flush(sh, &c->t);
    request_done(sh, c);
}

static bool ds_head(struct tp_shard *sh, struct tp_req *r, unsigned status, const struct tp_head *h,
                    struct tp_resp_info *ri)
{
    struct tp_conn *c = conn_of_req(r);
    bool http10 = r->http_minor == 0;
    bool chunked_out = false;
    bool upgrade = status == 101;

    if (upgrade) {
        c->out_mode = OM_RAW;
    } else if (status < 200) {
        /* interim response: relayed to HTTP/1.1 clients, dropped for 1.0, and
         * dropped while the client's queue is congested: an upstream sending
         * interim answers faster than the client reads them must not fill the
         * queue the final answer needs */
        if (http10 || r->resp_state != TP_RESP_NONE || ds_congested(r) || tp_outq_full(c->t.out, 8))
            return true;
    } else {
        /* framing towards the client */
        c->out_mode = OM_RAW;
        c->last_chunk = false;
        if (ri->head_only || ri->framing == TP_FRAME_NONE) {
            /* a HEAD response keeps its framing headers; re-chunked ones say so */
            chunked_out = ri->head_only && ri->framing == TP_FRAME_CHUNKED && !http10;
        } else if (ri->framing == TP_FRAME_CHUNKED) {
            /* relayed as is to HTTP/1.1 clients (validated by llhttp on the
             * way); decoded, then close-delimited for HTTP/1.0 */
            ri->want_content = http10;
            chunked_out = !http10;
            if (http10)
                r->resp_close = true;
        } else if (ri->framing == TP_FRAME_CLOSE) {
            /* close-delimited: re-chunked for HTTP/1.1, relayed then closed for 1.0 */
            c->out_mode = http10 ? OM_RAW : OM_WRAP;
            chunked_out = !http10;
            if (http10)
                r->resp_close = true;
        }
        if (!r->client_keepalive || sh->draining)
            r->resp_close = true;
        if (r->body_state == TP_BODY_STREAM)
            r->resp_close = true; /* early response: the rest of the body is not read */
    }

    struct tp_block *b =
        tp_block_get(sh, h->len + r->route->resp.set_len + r->extra_len + r->id_len + ri->upgrade_len + 192);
    if (!b)
        return false;
    /* the head only shrinks or gains the lines counted above, so the estimate holds */
    tp_blk_lit(b, "HTTP/1.1 ");
    tp_blk_u64(b, status);
    tp_blk_lit(b, " ");
    if (h->reason.len)
        tp_blk_put(b, h->base + h->reason.off, h->reason.len);
    else
        tp_blk_put(b, tp_h1_reason(status), strlen(tp_h1_reason(status)));
    tp_blk_lit(b, "\r\n");
    if (!tp_req_response_headers(r, (struct tp_head *)h, &tp_h1_line_sink, b) && status >= 200) {
        tp_blk_lit(b, "Date: ");
        tp_blk_put(b, tp_h1_date(), 29);
        tp_blk_lit(b, "\r\n");
    }
    if (chunked_out)
        tp_blk_lit(b, "Transfer-Encoding: chunked\r\n");
    if (upgrade) {
        tp_blk_lit(b, "Upgrade: ");
        tp_blk_put(b, ri->upgrade, ri->upgrade_len);
        tp_blk_lit(b, "\r\nConnection: upgrade\r\n");
    }
    if (status >= 200) {
        if (r->resp_close)
            tp_blk_lit(b, "Connection: close\r\n");
        else if (http10)
            tp_blk_lit(b, "Connection: keep-alive\r\n");
    }
    tp_blk_lit(b, "\r\n");
    if (b->len > b->size || !tp_outq_push_block(sh, &c->t.out, b)) {
        tp_block_put(sh, b);
        return false;
    }
    r->bytes_out += b->len;
    if (status < 200 && !upgrade) {
        tp_transport_flush(sh, &c->t);
        return true;
    }
    r->status = (uint16_t)status;
    r->resp_head_len = b->len;
    r->resp_state = TP_RESP_HEAD;
    r->head_unflushed = true;
    return true;
}

static bool ds_body(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *p, uint32_t len)
{
    struct tp_conn *c = conn_of_req(r);

    if (c->out_mode == OM_WRAP) {
        char line[16];
        int n = snprintf(line, sizeof(line), "%x\r\n", len);
        return tp_outq_push_inline(sh, &c->t.out, line, (uint32_t)n) &&
               tp_outq_push_slice(sh, &c->t.out, ref, p, len) &&
               tp_outq_push_static(sh, &c->t.out, "\r\n", 2);
    }
    return tp_outq_push_slice(sh, &c->t.out, ref, p, len);
}

static bool ds_body_block(struct tp_shard *sh, struct tp_req *r, struct tp_block *b)
{
    if (tp_outq_push_block(sh, &conn_of_req(r)->t.out, b))
        return true;
    tp_block_put(sh, b);
    return false;
}

/* Trailers reach an HTTP/1.1 client only in a chunked response: one we
 * re-chunk gets them in its last chunk; one relayed as the upstream framed it
 * carries the upstream's own (they are in the relayed bytes); other
 * responses cannot carry any. */
static bool ds_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h)
{
    struct tp_conn *c = conn_of_req(r);
    struct tp_block *b;

    if (c->out_mode != OM_WRAP || c->last_chunk || r->method == HTTP_HEAD)
        return true;
    if (!(b = tp_block_get(sh, h->len + 4 * h->n_hdrs + 8)))
        return false;
    tp_blk_lit(b, "0\r\n");
    tp_req_trailer_fields(h, &tp_h1_line_sink, b);
    tp_blk_lit(b, "\r\n");
    if (b->len > b->size || !tp_outq_push_block(sh, &c->t.out, b)) {
        tp_block_put(sh, b);
        return false;
    }
    r->bytes_out += b->len;
    c->last_chunk = true;
    return true;
}

static void ds_done(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_conn *c = conn_of_req(r);

    if (c->out_mode == OM_WRAP && !c->last_chunk && !tp_outq_push_static(sh, &c->t.out, "0\r\n\r\n", 5)) {
        c->t.rst = true;
        conn_close(sh, c);
        return;
    }
    tp_transport_flush(sh, &c->t);
    if (c->state == CS_CLOSING)
        return;
    request_done(sh, c);
}

static void ds_abort(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_conn *c = conn_of_req(r);

    c->t.rst = true;
    conn_close(sh, c);
}

static bool ds_unqueue_head(struct tp_shard *sh, struct tp_req *r)
{
    return tp_outq_drop_last(sh, conn_of_req(r)->t.out);
}

static bool ds_congested(const struct tp_req *r)
{
    const struct tp_conn *c = conn_of_req(r);
    /* relayed body slices hold receive buffers until sent: less of them while the pool is pressed */
    return tp_transport_pending(&c->t) >= tp_queue_budget(tp_self, TP_OUTQ_BUDGET) ||
           tp_outq_full(c->t.out, 6);
}

static void ds_flush(struct tp_shard *sh, struct tp_req *r)
{
    tp_transport_flush(sh, &conn_of_req(r)->t);
}

static void ds_resume_body(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_conn *c = conn_of_req(r);

    if (!c->in_process)
        process_input(sh, c);
}

/* After the 101: the transport goes to the tunnel; the connection object
 * stays allocated (the transport lives in it) until the tunnel hands
 * on_closed back. */
static struct tp_transport *ds_tunnel(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_conn *c = conn_of_req(r);

    (void)sh;
    c->req = NULL;
    c->state = CS_TUNNEL;
    c->requests++;
    return &c->t;
}

static const struct tp_ds_ops h1_ds = {
    .error = ds_error,
    .direct = ds_direct,
    .head = ds_head,
    .body = ds_body,
    .body_block = ds_body_block,
    .trailers = ds_trailers,
    .done = ds_done,
    .abort = ds_abort,
    .unqueue_head = ds_unqueue_head,
    .congested = ds_congested,
    .flush = ds_flush,
    .resume_body = ds_resume_body,
    .tunnel = ds_tunnel,
};

/* ------------------------------------------------------------------ */
/* the request head                                                    */
/* ------------------------------------------------------------------ */

/* The head is complete and valid HTTP/1: apply HTTP/1's rules, then the request layer's. */
static void on_request_head(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_head *h = &r->head;
    llhttp_t *p = &c->rx->hp.p;
    const char *host = NULL, *url, *path;
    size_t host_len = 0, url_len;
    unsigned n_host = 0, n_te = 0, n_upgrade = 0;
    bool te_bad = false, conn_upgrade = false;

    r->head_parsed = true;
    r->method = p->method;
    r->http_minor = p->http_minor;
    r->head_cl_seen = (p->flags & F_CONTENT_LENGTH) != 0;
    r->bytes_in = h->len;
    r->client_keepalive = llhttp_should_keep_alive(p);
    tp_req_ids(sh, r, true);
    if (p->http_major != 1 || p->http_minor > 1) {
        tp_req_error(sh, r, 400, "unsupported http version", true);
        return;
    }
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        struct tp_hdr *hd = &h->hdrs[i];
        const char *v = h->base + hd->value.off;
        switch (hd->id) {
        case TP_H_HOST:
            n_host++;
            host = v;
            host_len = hd->value.len;
            break;
        case TP_H_TRANSFER_ENCODING:
            n_te++;
            if (!tp_eq_nocase(v, hd->value.len, "chunked", 7))
                te_bad = true;
            break;
        case TP_H_EXPECT:
            if (tp_eq_nocase(v, hd->value.len, "100-continue", 12))
                r->expect_continue = true;
            break;
        case TP_H_UPGRADE:
            n_upgrade++;
            break;
        case TP_H_CONTENT_TYPE:
            if (hd->value.len >= 16 && tp_eq_nocase(v, 16, "application/grpc", 16))
                r->grpc = true;
            break;
        case TP_H_CONNECTION:
            if (tp_h1_has_token(v, hd->value.len, "upgrade", 7))
                conn_upgrade = true;
            /* every header named in Connection is hop-by-hop */
            for (uint32_t k = 0; k < h->n_hdrs; k++)
                if (h->hdrs[k].id == TP_H_OTHER &&
                    tp_h1_has_token(v, hd->value.len, h->base + h->hdrs[k].name.off, h->hdrs[k].name.len))
                    h->hdrs[k].drop = 1;
            break;
        default:
            break;
        }
    }
    if (n_te > 1 || te_bad) {
        tp_req_error(sh, r, 400, "invalid transfer-encoding", true);
        return;
    }
    /* an Upgrade in an HTTP/1.0 request is ignored (RFC 9110 7.8) */
    r->upgrade_req = n_upgrade && conn_upgrade && r->http_minor == 1;
    if (n_host > 1 || (n_host == 0 && r->http_minor != 0)) {
        tp_req_error(sh, r, 400, n_host ? "multiple host headers" : "missing host header", true);
        return;
    }

    /* request target: origin-form, or absolute-form whose authority is the host */
    url = h->base + h->url.off;
    url_len = h->url.len;
    if (url_len && url[0] == '/') {
        path = url;
    } else if (url_len > 7 &&
               (tp_eq_nocase(url, 7, "http://", 7) || (url_len > 8 && tp_eq_nocase(url, 8, "https://", 8)))) {
        size_t skip = url[4] == ':' ? 7 : 8;
        const char *auth = url + skip;
        size_t alen = 0;
        while (skip + alen < url_len && auth[alen] != '/' && auth[alen] != '?')
            alen++;
        host = auth;
        host_len = alen;
        path = auth + alen;
        r->abs_path_off = (uint32_t)(path - url);
    } else {
        tp_req_error(sh, r, 400, "invalid request target", true);
        return;
    }
    r->host_off = host ? (uint32_t)(host - h->base) : 0;
    r->host_len = (uint32_t)host_len;

    /* framing */
    if (p->flags & F_CHUNKED) {
        r->chunked = true;
        r->body_state = TP_BODY_STREAM;
        /* its trailer section goes to the upstream in the last chunk */
        tp_h1_parser_want_trailers(&c->rx->hp, (uint32_t)r->limits.max_header_bytes);
    } else if (p->flags & F_CONTENT_LENGTH) {
        r->content_length = p->content_length;
        if (r->content_length > r->limits.max_body_bytes) {
            /* sent before reading the body; the connection closes after it */
            tp_req_error(sh, r, 413, "request body too large", true);
            return;
        }
        r->body_state = r->content_length ? TP_BODY_STREAM : TP_BODY_NONE;
    } else {
        r->body_state = TP_BODY_NONE;
    }
    if (r->body_state == TP_BODY_NONE)
        tp_h1_parser_finish_message(&c->rx->hp); /* the next pipelined request starts clean */
    tp_req_dispatch(sh, r, path, (size_t)(url + url_len - path));
}

/* ------------------------------------------------------------------ */
/* HTTP/2                                                              */
/* ------------------------------------------------------------------ */

/* Does the connection start with the HTTP/2 preface? 1 yes, 0 no, -1 not
 * enough bytes yet to tell. */
static int h2_preface(struct tp_shard *sh, struct tp_inq *q)
{
    uint32_t seen = 0;

    for (uint16_t i = 0; i < q->n && seen < TP_H2_PREFACE_LEN; i++) {
        const struct tp_rbuf *e = &q->e[(q->head + i) & (q->cap - 1)];
        uint32_t n = e->len < TP_H2_PREFACE_LEN - seen ? e->len : TP_H2_PREFACE_LEN - seen;
        if (memcmp(tp_rbuf_data(sh, e), &TP_H2_PREFACE[seen], n) != 0)
            return 0;
        seen += n;
    }
    return seen == TP_H2_PREFACE_LEN ? 1 : -1;
}

/* The connection speaks HTTP/2 from here: its transport goes to an h2
 * session; this object stays allocated (the transport lives in it) until
 * the session hands on_closed back. */
static void h2_takeover(struct tp_shard *sh, struct tp_conn *c)
{
    c->state = CS_H2;
    if (!tp_h2_start(sh, &c->t, &c->ds)) {
        TP_LOG_RL(TP_LOG_ERR, "out of memory for an HTTP/2 connection");
        c->state = CS_IDLE;
        c->t.rst = true;
        conn_close(sh, c);
    }
}

/* ------------------------------------------------------------------ */
/* the input loop                                                      */
/* ------------------------------------------------------------------ */

/* Request body bytes, decoded, as llhttp delivers them. */
static int rq_on_body(struct tp_h1_parser *hp, const char *at, size_t len)
{
    struct h1s_rx *rx = (struct h1s_rx *)((char *)hp - offsetof(struct h1s_rx, hp));
    struct tp_conn *c = rx->c;
    struct tp_req *r = c->req;
    struct tp_shard *sh = tp_self;

    r->body_bytes += len;
    if (r->body_bytes > shard_limits(sh)->max_body_bytes) {
        r->body_too_large = true;
        return -1;
    }
    if (r->body_state != TP_BODY_STREAM)
        return 0; /* discarded */
    r->body_fwd += len;
    return r->ux->body(sh, r, rx->exec_ref, at, (uint32_t)len) ? 0 : -1;
}

/*
 * Runs the request parser over queued body bytes: forwards them (STREAM) or
 * drops them (DISCARD). Stops at the end of the message, when the upstream
 * cannot take more, or when the input is exhausted. Returns false when the
 * connection was closed.
 */
static bool pump_body(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_transport *t = &c->t;
    struct tp_rbuf *e;
    bool stream = r->body_state == TP_BODY_STREAM;

    if (stream && (!r->ux || !r->ux->body_ready(r)))
        return true; /* not connected yet, or over budget: the body waits in the queue */
    while ((e = tp_inq_front(&t->in))) {
        if (stream && !r->ux->body_ready(r))
            break;
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len, used;
        c->rx->exec_ref = tp_rbuf_ref(e);
        llhttp_errno_t rc = tp_h1_execute(&c->rx->hp, data, len);
        if (rc == HPE_PAUSED) {
            used = (uint32_t)(llhttp_get_error_pos(&c->rx->hp.p) - data);
        } else if (rc == HPE_OK) {
            used = len;
        } else {
            if (r->body_too_large)
                tp_req_error(sh, r, 413, "request body too large", true);
            else if (c->rx->hp.trailers && c->rx->hp.trailers->reason_text)
                tp_req_error(sh, r, 400, c->rx->hp.trailers->reason_text, true);
            else
                tp_req_error(sh, r, 400, tp_h1_llhttp_reason(rc), true);
            return c->state != CS_CLOSING;
        }
        r->bytes_in += used;
        tp_inq_consume(sh, &t->in, used);
        if (c->rx->hp.msg_done) {
            /* the client's trailer section, for an exchange that can carry it */
            const struct tp_head *tr = stream ? tp_h1_trailers(&c->rx->hp) : NULL;
            if ((tr && r->ux->trailers && !r->ux->trailers(sh, r, tr)) ||
                (stream && !r->ux->body_end(sh, r))) {
                t->rst = true;
                conn_close(sh, c);
                return false;
            }
            r->body_state = TP_BODY_DONE;
            break;
        }
    }
    if (stream && r->att.conn)
        r->ux->flush(sh, r);
    if (c->state == CS_CLOSING || !c->req)
        return c->state != CS_CLOSING;
    if (r->body_state == TP_BODY_DONE && r->resp_state == TP_RESP_DONE)
        req_finish(sh, c);
    return c->state != CS_CLOSING;
}

static void process_input(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_transport *t = &c->t;

    c->in_process = true;
    for (;;) {
        if (c->state == CS_IDLE) {
            if (t->in.n == 0)
                break;
            if (c->h2c && c->requests == 0) {
                int pre = h2_preface(sh, &t->in);
                if (pre < 0)
                    break; /* a prefix of the preface: wait for the rest */
                c->h2c = false;
                if (pre) {
                    h2_takeover(sh, c);
                    c->in_process = false;
                    return;
                }
            }
            if (!start_request(sh, c)) {
                conn_close(sh, c);
                break;
            }
        }
        if (c->state == CS_HEAD) {
            unsigned status = 400;
            enum tp_head_rc rc =
                tp_head_parse(sh, &c->rx->hp, &t->in, (uint32_t)c->req->limits.max_header_bytes, &status);
            if (rc == TP_HEAD_MORE)
                break;
            c->state = CS_ACTIVE;
            if (rc == TP_HEAD_ERROR) {
                const char *why = c->req->head.reason_text ? c->req->head.reason_text : "malformed request";
                tp_req_error(sh, c->req, status,
                             status == 414   ? "uri too long"
                             : status == 431 ? "request header fields too large"
                                             : why,
                             true);
                break;
            }
            t->deadline_ms = sh->now_ms + c->req->limits.client_idle_ms;
            llhttp_resume(&c->rx->hp.p);
            on_request_head(sh, c);
            if (c->req && !c->req->parked) /* a parked request still needs its head */
                tp_head_release(sh, &c->req->head);
            continue;
        }
        if (c->state == CS_ACTIVE) {
            struct tp_req *r = c->req;
            if (!r)
                break;
            if (r->body_state == TP_BODY_STREAM || r->body_state == TP_BODY_DISCARD) {
                if (!pump_body(sh, c))
                    break;
                if (c->state == CS_ACTIVE)
                    break; /* waiting for the upstream or more bytes */
                continue;
            }
            break; /* waiting for the response; pipelined bytes stay queued */
        }
        if (c->state == CS_LINGER)
            tp_inq_clear(sh, &t->in);
        break;
    }
    c->in_process = false;
    if (c->state == CS_IDLE && t->in.n == 0)
        rx_put(sh, c); /* idle keep-alive: no request state held */
    if (c->state != CS_CLOSING)
        tp_transport_backpressure(sh, t);
}

/* ------------------------------------------------------------------ */
/* transport events                                                    */
/* ------------------------------------------------------------------ */

static void conn_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_conn *c = conn_of(t);

    if (t->in.n && c->state != CS_LINGER) {
        if (c->state == CS_ACTIVE)
            t->deadline_ms = sh->now_ms + shard_limits(sh)->client_idle_ms;
        process_input(sh, c);
        if (c->state == CS_CLOSING)
            return;
    }
    if (!t->peer_closed)
        return;
    if (t->reset) {
        t->rst = true;
        conn_close(sh, c);
        return;
    }
    /* EOF: a client that half-closes after its request still gets the
     * response; anything else ends the connection */
    if (c->state == CS_ACTIVE && c->req &&
        (c->req->body_state == TP_BODY_DONE || c->req->body_state == TP_BODY_NONE)) {
        c->req->resp_close = true;
        return;
    }
    if (c->state == CS_LINGER && tp_transport_pending(t))
        return; /* still flushing the final response */
    conn_close(sh, c);
}

static void conn_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tp_conn *c = conn_of(t);

    if (res < 0) {
        /* client gone (EPIPE, ECONNRESET): nothing more can reach it */
        if (res != -EPIPE && res != -ECONNRESET)
            TP_LOG_RL(TP_LOG_INFO, "send to client %.*s: %s", c->ds.peer_len, c->ds.peer, strerror(-res));
        t->peer_closed = true;
        conn_close(sh, c);
        return;
    }
    if (c->state == CS_ACTIVE)
        t->deadline_ms = sh->now_ms + shard_limits(sh)->client_idle_ms;
    if (c->state == CS_LINGER && tp_transport_pending(t) == 0) {
        conn_linger(sh, c);
        return;
    }
    /* room again towards the client: let the upstream side continue */
    if (c->req && c->req->att.conn && tp_transport_pending(t) < tp_queue_budget(sh, TP_OUTQ_BUDGET) / 2)
        c->req->ux->resume(sh, c->req);
}

/* Server-side TLS: the handshake completed. It counted as part of the first
 * request's head; the connection now waits for that request as an idle one,
 * or speaks HTTP/2 when ALPN chose h2. */
static void conn_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_conn *c = conn_of(t);

    const char *alpn;
    unsigned alpn_len;

    if (err || c->state != CS_IDLE)
        return;
    if (tp_transport_alpn(t, &alpn, &alpn_len) && alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
        h2_takeover(sh, c);
        return;
    }
    tp_transport_deadline(sh, t, sh->now_ms + shard_limits(sh)->client_idle_ms);
}

static void conn_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_conn *c = conn_of(t);

    switch (c->state) {
    case CS_HEAD:
        /* timeouts.client_header passed before the head was complete */
        if (c->req)
            tp_req_error(sh, c->req, 408, "request timeout", true);
        else
            conn_close(sh, c);
        return;
    case CS_ACTIVE:
        /* the client stalled: no body bytes read, or no response bytes taken,
         * for client_idle. The request cannot complete: abort it. */
        TP_LOG_RL(TP_LOG_INFO, "client %.*s stalled for %llu ms; closing", c->ds.peer_len, c->ds.peer,
                  (unsigned long long)shard_limits(sh)->client_idle_ms);
        t->rst = true;
        conn_close(sh, c);
        return;
    default:
        conn_close(sh, c); /* idle keep-alive over, or lingering over */
        return;
    }
}

static void conn_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_conn *c = conn_of(t);

    if (err != TP_ETLS)
        TP_LOG_RL(TP_LOG_INFO, "client %.*s: %s", c->ds.peer_len, c->ds.peer, tp_strerror(err));
    t->peer_closed = true; /* nothing more will be read from it */
    conn_close(sh, c);
}

static const struct tp_transport_ops conn_proto = {
    .on_input = conn_on_input,
    .on_sent = conn_on_sent,
    .on_connected = conn_on_connected,
    .on_timeout = conn_on_timeout,
    .on_error = conn_on_error,
    .on_closed = conn_on_closed,
};

/* ------------------------------------------------------------------ */
/* accept, drain                                                       */
/* ------------------------------------------------------------------ */

/* listeners[].h2c of the listener named <name> in <cfg>. */
static bool listener_h2c(const struct tp_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_listeners; i++)
        if (strcmp(cfg->listeners[i].name, name) == 0)
            return cfg->listeners[i].h2c;
    return false;
}

void tp_h1s_accept(struct tp_shard *sh, int fd, unsigned listener, const struct sockaddr_storage *peer)
{
    struct tp_conn *c = tp_slab_alloc(sh, (unsigned)tp_http_shard(sh)->slab_conn);
    struct tp_tls_server *tls = tp_snapshot_listener_tls(sh->snap, sh->lis[listener].name);
    SSL *ssl = NULL;

    if (!c) {
        tp_close_fd(sh, fd);
        tp_shard_conn_closed(sh, listener);
        TP_LOG_RL(TP_LOG_ERR, "out of memory for a connection");
        return;
    }
    if (tls && !(ssl = tp_tls_server_ssl(tls))) {
        tp_slab_free(sh, c);
        tp_close_fd(sh, fd);
        tp_shard_conn_closed(sh, listener);
        TP_LOG_RL(TP_LOG_ERR, "out of memory for a TLS connection");
        return;
    }
    if (tp_transport_init(&c->t, fd, &conn_proto, ssl) < 0) {
        /* the transport freed <ssl>; the connection closes through it */
        TP_LOG_RL(TP_LOG_ERR, "out of memory for a TLS connection");
        c->ds.listener = (uint8_t)listener;
        c->state = CS_CLOSING;
        tp_transport_close(sh, &c->t);
        return;
    }
    c->ds.ops = &h1_ds;
    c->ds.listener = (uint8_t)listener;
    c->ds.tls = tls != NULL;
    c->state = CS_IDLE;
    c->h2c = !tls && listener_h2c(sh->snap->cfg, sh->lis[listener].name);
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &a->sin_addr, c->ds.peer, sizeof(c->ds.peer));
    } else if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &a->sin6_addr, c->ds.peer, sizeof(c->ds.peer));
    } else {
        snprintf(c->ds.peer, sizeof(c->ds.peer), "unknown");
    }
    c->ds.peer_len = (uint8_t)strlen(c->ds.peer);
    /* with TLS, the handshake counts as part of the first request's head */
    tp_transport_deadline(sh, &c->t,
                          sh->now_ms +
                              (tls ? shard_limits(sh)->client_header_ms : shard_limits(sh)->client_idle_ms));
    tp_transport_recv(sh, &c->t);
}

/* Drain: an idle connection closes now; one serving a request closes after its response. */
static void conn_drain(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->state == CS_TUNNEL || c->state == CS_H2)
        return; /* tunnels and HTTP/2 sessions drain on their own */
    c->drain = true;
    if (c->state == CS_IDLE && c->t.in.n == 0) {
        conn_close(sh, c);
        return;
    }
    if (c->req)
        c->req->resp_close = true;
}

void tp_h1s_drain(struct tp_shard *sh, bool now)
{
    unsigned id = (unsigned)tp_http_shard(sh)->slab_conn;
    struct tp_slot *o;

    for (uint32_t i = 0; (o = tp_slab_at(sh, id, i)); i++) {
        struct tp_conn *c = (struct tp_conn *)o;
        if (o->in_free || c->state == CS_CLOSING || c->state == CS_TUNNEL || c->state == CS_H2)
            continue;
        if (now)
            conn_close(sh, c);
        else
            conn_drain(sh, c);
    }
}

void tp_h1s_listener_closed(struct tp_shard *sh, unsigned idx)
{
    unsigned id = (unsigned)tp_http_shard(sh)->slab_conn;
    struct tp_slot *o;

    for (uint32_t i = 0; (o = tp_slab_at(sh, id, i)); i++) {
        struct tp_conn *c = (struct tp_conn *)o;
        if (!o->in_free && c->ds.listener == idx && c->state != CS_CLOSING && c->state != CS_H2)
            conn_drain(sh, c);
    }
}

uint32_t tp_h1s_count(struct tp_shard *sh)
{
    return sh->slabs[tp_http_shard(sh)->slab_conn].live;
}
