/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/2 upstream exchange (upstreams[].protocol: h2c or h2): each
 * attempt of a request is one stream on a connection shared with other
 * requests of the same shard and endpoint. It implements struct tp_ux_ops for
 * the proxy (proxy.c) and struct tp_transport_ops for its connections; results
 * go back through tp_proxy_* as for HTTP/1. [shard]
 *
 * libnghttp2 runs in client mode, in memory, over the transport (the ring
 * keeps all socket I/O, TLS is the transport's): received plaintext goes to
 * nghttp2_session_mem_recv, nghttp2_session_send writes through two callbacks
 * into the transport's send queue (frames copied into blocks, request body
 * DATA as slices of the buffers it arrived in). As on the server side,
 * nothing here sends from inside a call of the request layer: those submit
 * to nghttp2 and put the connection on the shard's kick list, which
 * tp_h2c_tick (end of the loop iteration) and the connection's own transport
 * events send.
 *
 * Connection states:
 *
 *   connect (+ TLS, ALPN h2) ──▶ CONNECTING ──the upstream's SETTINGS──▶ READY ──GOAWAY received,
 *        streams wait in the     │ fail/timeout: waiting streams         │       endpoint retired:
 *        connection's queue      ▼ fail as connect failures              │       no new streams,
 *                              CLOSING ◀── connection error, idle ───────┘       closes when the
 *                                 │        timeout, drain                        last one ends
 *                                 ▼ on_closed: object freed
 *
 * Choosing a connection (pick): per shard and endpoint a list of
 * connections; a READY one with fewer open streams than the upstream's
 * SETTINGS_MAX_CONCURRENT_STREAMS takes the stream; otherwise a CONNECTING
 * one with room in its queue (H2C_CONNECT_QUEUE, or the limit once known);
 * otherwise a new connection. When a connection's SETTINGS arrive, the
 * streams queued beyond the upstream's limit are handed out again (which
 * may open more connections).
 *
 * A stream's failure is that stream's only: RST_STREAM from the upstream
 * (502, or a retry for REFUSED_STREAM), its upstream_response timeout (504,
 * RST_STREAM CANCEL sent). GOAWAY: nghttp2 closes the streams above the last
 * stream id with REFUSED_STREAM; they were not processed and may be retried
 * whatever their method (RFC 9113 6.8). A connection error fails every
 * stream on it: those whose HEADERS never left as "not processed", the
 * others as resets.
 *
 * Backpressure: the response body of a stream goes to the downstream
 * session as received (no copy) while that session is not congested;
 * otherwise it is copied into staged blocks and handed on when the session
 * resumes the exchange. The stream's receive window (our SETTINGS) is
 * reopened (nghttp2_session_consume_stream) only for what the downstream
 * took, so per stream at most H2C_STREAM_WINDOW bytes wait here. The
 * connection window is reopened at once: one slow client never stalls the
 * other streams of the connection.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include <turnpike/log.h>
#include <turnpike/tls.h>

#include "http/sessions.h"
#include "transport/transport.h"

#define H2C_STREAM_WINDOW 65535         /* [bytes] response body a stream may have unconsumed */
#define H2C_CONN_WINDOW   (1u << 24)    /* [bytes] connection window (reopened as data arrives) */
#define H2C_REQ_BUDGET    (64u * 1024u) /* [bytes] request body queued per stream */
#define H2C_PIECES        32            /* request body slices queued per stream */
#define H2C_PIECES_FRAME  8             /* slices one DATA frame takes at most */
#define H2C_SMALL_SLICE   2048          /* [bytes] smaller request body slices are copied */
#define H2C_STAGE         10            /* response body blocks staged per stream */
#define H2C_CONNECT_QUEUE 100           /* streams waiting for a connection's SETTINGS */
#define H2C_POOL_IDLE_MS  15000         /* [ms] a connection without streams lives this long */
#define H2C_RESP_HEAD_MAX (64u * 1024u) /* [bytes] largest response header list */
#define H2C_FREE_CAP      1024          /* stream objects kept on the shard's free list */
#define H2C_MAX_STREAMS   1000          /* streams per connection we use, whatever the upstream allows */

/* the first block may be partly handed on already: its room does not count */
_Static_assert((H2C_STAGE - 1) * TP_BLOCK_SIZE > H2C_STREAM_WINDOW,
               "a stream's window of response body fits its stage");
_Static_assert(H2C_PIECES_FRAME + 2 <= TP_OUTQ_SEGS, "a DATA frame fits an empty send queue");

enum h2c_state {
    HC_CONNECTING = 0, /* connect, TLS handshake, waiting for the upstream's SETTINGS */
    HC_READY,          /* streams go out */
    HC_CLOSING,        /* the transport is closing; no stream left on it */
};

/* One slice of request body: a received buffer or a block (one reference each). */
struct h2c_piece {
    struct tp_bref ref;
    const char *p;
    uint32_t len;
};

struct h2c_stream {
    struct tp_h2c_conn *c;
    struct tp_req *r; /* NULL once detached: the attempt ended */
    struct h2c_stream *next, *prev, *next_free;
    int32_t id;           /* 0 while queued on a connecting connection */
    uint64_t deadline_ms; /* [ms] upstream_response: the stream fails if nothing moves until then */
    /* the request body */
    struct h2c_piece pc[H2C_PIECES];
    uint8_t pc_head, pc_n;
    uint32_t queued;      /* request body bytes in pc[] */
    bool has_body;        /* submitted with a data source */
    bool body_end;        /* the last request body byte is queued */
    bool deferred;        /* the data source said DEFERRED */
    bool want_resume;     /* the queue has room again: read more of the client's body after the send */
    bool headers_sent;    /* our HEADERS left: the upstream may have seen the request */
    struct tp_block *rtr; /* the request's trailers (struct uh layout), submitted at the body's end */
    bool closed;          /* nghttp2 closed the stream */
    /* the response */
    struct tp_block *hblk; /* names and values of the header block being received */
    struct tp_head head;   /* its fields */
    uint32_t hlist;        /* its size as RFC 9113 counts it */
    uint16_t status;
    bool head_bad;   /* too large: the stream fails when the block ends */
    bool got_final;  /* the final response head went to the request layer */
    bool no_body;    /* HEAD, 204, 304: nothing may follow */
    bool resp_ended; /* END_STREAM received */
    bool sent_end;   /* our END_STREAM left: the request is complete */
    bool tr_pending; /* <head> holds the trailers, handed on when the body is */
    struct tp_block *stage[H2C_STAGE];
    uint8_t st_head, st_n;
    uint32_t st_off; /* bytes of stage[st_head] handed on */
    uint32_t staged; /* bytes staged, not yet consumed in flow control */
};

struct tp_h2c_conn {
    struct tp_transport t; /* first: the slab header lives in it */
    uint8_t state;         /* enum h2c_state */
    bool goaway;           /* GOAWAY received or the endpoint retired: no new streams */
    bool in_ng;            /* inside nghttp2 (mem_recv or send): no re-entry */
    bool want_send;        /* output was asked for while in_ng */
    bool kicked;           /* on the shard's kick list */
    bool tls;              /* protocol h2: ALPN must have chosen h2 */
    bool settings;         /* the upstream's SETTINGS arrived */
    bool listed;           /* on its endpoint's list */
    bool idle_counted;     /* counted in the endpoint's idle_count (READY, no stream) */
    bool close_pending;    /* closed while in_ng: the transport closes once nghttp2 returned */
    nghttp2_session *ng;
    struct tp_endpoint_state *eps;
    struct tp_h2c_conn *pnext, *pprev; /* the endpoint's connections on this shard */
    struct tp_h2c_conn *next_kick;
    struct h2c_stream *streams; /* queued, open, and closed ones still draining */
    uint32_t n_streams;         /* in <streams> */
    uint32_t n_attached;        /* of them, those serving a request (st->r) */
    uint32_t n_open;            /* submitted to nghttp2 and not closed */
    uint32_t n_queued;          /* waiting for SETTINGS (id 0) */
    uint32_t max_streams;       /* the upstream's SETTINGS_MAX_CONCURRENT_STREAMS (capped) */
    uint32_t keepalive;         /* upstreams[].keepalive when it opened: connections without a stream kept */
    uint64_t idle_ms;           /* [ms] since when it has no stream (0: has some) */
    uint64_t connect_ms;        /* [ms] CONNECTING: the connect deadline */
    struct tp_block *wbuf;      /* frames being gathered (send_cb) */
    struct tp_bref cur;         /* the received buffer nghttp2 is reading */
    uint32_t served;
};

static const struct tp_transport_ops h2c_proto;

static void c_kick(struct tp_shard *sh, struct tp_h2c_conn *c);
static void c_fail(struct tp_shard *sh, struct tp_h2c_conn *c, enum tp_fail_kind kind, int err);
static void c_close(struct tp_shard *sh, struct tp_h2c_conn *c);
static void c_idle_check(struct tp_shard *sh, struct tp_h2c_conn *c);
static void stream_finish(struct tp_shard *sh, struct h2c_stream *st);
static bool unstage(struct tp_shard *sh, struct h2c_stream *st, bool force);
static bool stream_submit(struct tp_shard *sh, struct tp_h2c_conn *c, struct h2c_stream *st);
static void ux_start(struct tp_shard *sh, struct tp_req *r);

static inline struct tp_h2c_conn *conn_of(struct tp_transport *t)
{
    return (struct tp_h2c_conn *)t;
}

size_t tp_h2c_conn_size(void)
{
    return sizeof(struct tp_h2c_conn);
}

static inline struct tp_ep_shard *ep_shard(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    return &eps->shard[sh->id];
}

/* The pool gauge counts connections that wait without a stream. */
static void idle_count(struct tp_shard *sh, struct tp_h2c_conn *c, bool idle)
{
    if (c->idle_counted == idle)
        return;
    c->idle_counted = idle;
    tp_stat_add(&ep_shard(sh, c->eps)->idle_count, idle ? 1 : (uint64_t)-1);
}

/* ------------------------------------------------------------------ */
/* the request as nghttp2 takes it (r->uhead)                          */
/* ------------------------------------------------------------------ */

/*
 * r->uhead holds, from its first aligned byte: a struct uh, the nghttp2_nv
 * array, then the names and values the array points into. The block never
 * moves, so retries submit the same array. :authority is nv[2]; empty when
 * the client sent no Host (HTTP/1.0): each attempt then names its endpoint.
 */
struct uh {
    uint32_t n;    /* fields in nv[] */
    uint32_t cap;  /* room in nv[] */
    uint32_t text; /* offset of the text area from the struct */
};

static inline struct uh *uh_of(const struct tp_block *b)
{
    uintptr_t p = (uintptr_t)b->data;
    return (struct uh *)((p + _Alignof(nghttp2_nv) - 1) & ~(uintptr_t)(_Alignof(nghttp2_nv) - 1));
}

static inline nghttp2_nv *uh_nv(struct uh *u)
{
    return (nghttp2_nv *)((char *)u +
                          ((sizeof(*u) + _Alignof(nghttp2_nv) - 1) & ~(_Alignof(nghttp2_nv) - 1)));
}

/* Builds the field list into a block: what the sink sees goes through here. */
struct nvw {
    struct tp_block *b;
    struct uh *u;
    nghttp2_nv *nv;
    char *txt, *end; /* text area and its end */
    char *pos;       /* next text byte */
    uint32_t n;      /* fields wanted (may pass cap: counted for the retry) */
    bool over;       /* text did not fit */
    bool skip;       /* the field being written is dropped */
    bool authority;  /* the field being written is the Host: it becomes :authority */
    char *name, *val;
    uint32_t name_len;
};

static void w_put(struct nvw *w, const char *p, size_t n)
{
    if (w->over || (size_t)(w->end - w->pos) < n) {
        w->over = true;
        return;
    }
    memcpy(w->pos, p, n);
    w->pos += n;
}

static void w_field_end(struct nvw *w, uint32_t idx)
{
    if (w->over || idx >= w->u->cap)
        return;
    nghttp2_nv *nv = &w->nv[idx];
    nv->name = (uint8_t *)w->name;
    nv->namelen = w->name_len;
    nv->value = (uint8_t *)w->val;
    nv->valuelen = (size_t)(w->pos - w->val);
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

static void w_add(struct nvw *w, uint32_t idx, const char *name, size_t nlen, const char *v, size_t vlen)
{
    w->name = w->pos;
    w->name_len = (uint32_t)nlen;
    w_put(w, name, nlen);
    w->val = w->pos;
    w_put(w, v, vlen);
    w_field_end(w, idx);
}

static void sink_name(void *ctx, const char *p, size_t n)
{
    struct nvw *w = ctx;
    uint8_t id = tp_h1_header_id(p, n);

    w->authority = id == TP_H_HOST;
    /* connection-specific fields are malformed in HTTP/2 (RFC 9113 8.2.2);
     * the header rules removed the client's, these are the exchange's own */
    w->skip = n == 0 || id == TP_H_CONNECTION || id == TP_H_KEEP_ALIVE || id == TP_H_PROXY_CONNECTION ||
              id == TP_H_TRANSFER_ENCODING || id == TP_H_UPGRADE || id == TP_H_TE ||
              (w->authority && w->nv[2].valuelen);
    w->name = w->pos;
    w->name_len = (uint32_t)n;
    if (w->skip)
        return;
    if (w->authority) {
        w->val = w->pos;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] | 0x20) : p[i];
        w_put(w, &ch, 1);
    }
    w->val = w->pos;
}

static void sink_value(void *ctx, const char *p, size_t n)
{
    struct nvw *w = ctx;

    if (!w->skip)
        w_put(w, p, n);
}

static void sink_end(void *ctx)
{
    struct nvw *w = ctx;

    if (w->skip)
        return;
    if (w->authority) {
        if (!w->over) {
            w->nv[2].value = (uint8_t *)w->val;
            w->nv[2].valuelen = (size_t)(w->pos - w->val);
        }
        return;
    }
    w_field_end(w, w->n++);
}

static const struct tp_hdr_sink nv_sink = {sink_name, sink_value, sink_end};

/* Writes the request's fields into <b> with room for <cap> of them; false when
 * they did not fit (<*need_cap> then says how many there were). */
static bool write_request(struct tp_block *b, struct tp_req *r, uint32_t cap, uint32_t *need_cap)
{
    struct nvw w = {.b = b};
    const char *method = llhttp_method_name((llhttp_method_t)r->method);
    bool tls = r->up->cfg->protocol == TP_UPROTO_H2;

    *need_cap = cap;
    w.u = uh_of(b);
    w.nv = uh_nv(w.u);
    w.txt = (char *)(w.nv + cap);
    w.end = b->data + b->size;
    if (w.txt >= w.end)
        return false;
    w.pos = w.txt;
    w.u->cap = cap;
    w.u->text = (uint32_t)(w.txt - (char *)w.u);
    memset(w.nv, 0, sizeof(*w.nv) * 4);
    w_add(&w, 0, ":method", 7, method, strlen(method));
    w_add(&w, 1, ":scheme", 7, tls ? "https" : "http", tls ? 5 : 4);
    w_add(&w, 2, ":authority", 10, "", 0);
    /* :path, written through the shared target writer into a scratch block view */
    w.name = w.pos;
    w.name_len = 5;
    w_put(&w, ":path", 5);
    w.val = w.pos;
    if (!w.over) {
        /* tp_req_upstream_target appends to a block: lend it the rest of ours */
        uint32_t off = (uint32_t)(w.pos - b->data), keep = b->len;
        b->len = off;
        tp_req_upstream_target(r, b);
        if (b->len > b->size)
            w.over = true;
        else
            w.pos = b->data + b->len;
        b->len = keep;
    }
    w_field_end(&w, 3);
    w.n = 4;
    tp_req_upstream_headers(r, &nv_sink, &w);
    if (!r->chunked && (r->body_state != TP_BODY_NONE || (r->head_cl_seen && r->content_length == 0))) {
        char d[24], *e = d + sizeof(d), *p = tp_fmt_u64(e, r->content_length);
        w_add(&w, w.n++, "content-length", 14, p, (size_t)(e - p));
    }
    /* trailers are relayed (gRPC servers require the field) */
    w_add(&w, w.n++, "te", 2, "trailers", 8);
    w.u->n = w.n;
    *need_cap = w.n;
    return !w.over && w.n <= cap;
}

static bool ux_prepare(struct tp_shard *sh, struct tp_req *r)
{
    uint32_t cap = r->head.n_hdrs + 24 + (r->route->req.cfg ? (uint32_t)r->route->req.cfg->n_set : 0),
             need = 0;
    size_t text = r->head.len + r->route->req.set_len + r->ds->peer_len + r->host_len + 512;

    for (int i = 0; i < 3; i++) {
        struct tp_block *b = tp_block_get(sh, sizeof(struct uh) + 16 + cap * sizeof(nghttp2_nv) + text);
        if (!b)
            return false;
        b->len = 0;
        if (write_request(b, r, cap, &need)) {
            r->uhead = b;
            r->uhead_open = uh_nv(uh_of(b))[2].valuelen == 0;
            return true;
        }
        tp_block_put(sh, b);
        /* the estimate was short (many X-Forwarded-For lines, forward_claims): again, larger */
        cap = (need > cap ? need : cap) + 8;
        text *= 4;
    }
    return false;
}

/* ------------------------------------------------------------------ */
/* streams                                                             */
/* ------------------------------------------------------------------ */

static struct h2c_stream *stream_new(struct tp_shard *sh, struct tp_h2c_conn *c, struct tp_req *r)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct h2c_stream *st = hs->h2c_free;

    if (st) {
        hs->h2c_free = st->next_free;
        hs->n_h2c_free--;
    } else if (!(st = malloc(sizeof(*st)))) {
        return NULL;
    }
    memset(st, 0, sizeof(*st));
    tp_head_init(&st->head);
    st->c = c;
    st->r = r;
    st->has_body = r->body_state != TP_BODY_NONE;
    st->body_end = r->body_state == TP_BODY_DONE;
    st->no_body = r->method == HTTP_HEAD;
    st->deadline_ms = tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms);
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    c->n_streams++;
    c->n_attached++;
    c->idle_ms = 0;
    idle_count(sh, c, false);
    tp_stat_add(&ep_shard(sh, c->eps)->h2_streams, 1);
    r->att.conn = st;
    return st;
}

static void pieces_clear(struct tp_shard *sh, struct h2c_stream *st)
{
    if (st->rtr)
        tp_block_put(sh, st->rtr);
    st->rtr = NULL;
    while (st->pc_n) {
        tp_bref_put(sh, st->pc[st->pc_head].ref);
        st->pc_head = (uint8_t)((st->pc_head + 1) % H2C_PIECES);
        st->pc_n--;
    }
    st->queued = 0;
}

static void stage_clear(struct tp_shard *sh, struct h2c_stream *st)
{
    while (st->st_n) {
        tp_block_put(sh, st->stage[st->st_head]);
        st->st_head = (uint8_t)((st->st_head + 1) % H2C_STAGE);
        st->st_n--;
    }
    st->st_off = 0;
    st->staged = 0;
}

static void head_clear(struct tp_shard *sh, struct h2c_stream *st)
{
    tp_head_dispose(sh, &st->head);
    tp_head_init(&st->head);
    if (st->hblk)
        tp_block_put(sh, st->hblk);
    st->hblk = NULL;
    st->hlist = 0;
    st->head_bad = false;
}

/*
 * Detaches <st> from its request: from here on neither sees the other.
 *
 * A connection may use its endpoint's state (c->eps, a registry object of the
 * snapshots) only while a request on it holds a snapshot, or while the
 * endpoint is in the shard's current snapshot: so a connection whose last
 * request detaches closes at once when its endpoint was retired
 * (c_idle_check, called while that request is still alive), and
 * tp_h2c_pool_close closes those that have none when the shard moves on.
 */
static struct tp_req *detach(struct h2c_stream *st)
{
    struct tp_req *r = st->r;

    if (r) {
        r->att.conn = NULL;
        st->r = NULL;
        st->c->n_attached--;
    }
    return r;
}

/* Frees <st>: it is detached and nghttp2 no longer knows it. */
static void stream_free(struct tp_shard *sh, struct h2c_stream *st)
{
    struct tp_h2c_conn *c = st->c;
    struct tp_http_shard *hs = tp_http_shard(sh);

    TP_BUG_ON(st->r);
    /* nghttp2 may still know the stream (a frame not sent, a reset under way):
     * it must not hand the freed object to a later callback */
    if (st->id && c->ng)
        nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
    pieces_clear(sh, st);
    stage_clear(sh, st);
    head_clear(sh, st);
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    c->n_streams--;
    tp_stat_add(&ep_shard(sh, c->eps)->h2_streams, (uint64_t)-1);
    if (!st->id)
        c->n_queued--;
    if (hs->n_h2c_free < H2C_FREE_CAP) {
        st->next_free = hs->h2c_free;
        hs->h2c_free = st;
        hs->n_h2c_free++;
    } else {
        free(st);
    }
}

/* nghttp2 knows <st> and may still send from its slices. */
static inline bool ng_open(const struct h2c_stream *st)
{
    return st->id && !st->closed && st->c->state != HC_CLOSING;
}

/* The attempt on <st> failed: the stream is reset (if it is open) and
 * forgotten by its request, and the proxy decides what follows. */
static void stream_fail(struct tp_shard *sh, struct h2c_stream *st, enum tp_fail_kind kind, int err,
                        uint32_t rst)
{
    struct tp_h2c_conn *c = st->c;
    struct tp_req *r = detach(st);

    /* a DATA frame nghttp2 holds (send_data_cb said WOULDBLOCK) is sent
     * later from these slices: they stay until nghttp2 closes the stream */
    if (!ng_open(st))
        pieces_clear(sh, st);
    stage_clear(sh, st);
    if (st->id && !st->closed && c->state != HC_CLOSING) {
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, rst);
        c_kick(sh, c);
    } else if (!st->id || st->closed) {
        if (st->id && c->ng)
            nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        stream_free(sh, st);
    }
    c_idle_check(sh, c); /* while <r> still holds its snapshot */
    if (r)
        tp_proxy_failed(sh, r, kind, err);
}

/* ------------------------------------------------------------------ */
/* connections                                                         */
/* ------------------------------------------------------------------ */

static void list_unlink(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    struct tp_ep_shard *ps;

    if (!c->listed)
        return;
    ps = ep_shard(sh, c->eps);
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        ps->h2 = c->pnext;
    if (c->pnext)
        c->pnext->pprev = c->pprev;
    c->pnext = c->pprev = NULL;
    c->listed = false;
}

/* The earliest moment something of <c> times out: its streams' deadlines,
 * its connect deadline (<connect_ms> sets it when not 0), its idle lifetime.
 * Streams queued on a connecting connection keep their own deadlines (a
 * gRPC call's is often shorter than the connect timeout). */
static void c_deadline(struct tp_shard *sh, struct tp_h2c_conn *c, uint64_t connect_ms)
{
    uint64_t d = UINT64_MAX;

    if (c->state == HC_CONNECTING) {
        if (connect_ms)
            c->connect_ms = connect_ms;
        d = c->connect_ms;
        for (struct h2c_stream *st = c->streams; st; st = st->next)
            if (st->r && !st->id && st->deadline_ms < d)
                d = st->deadline_ms;
        c->t.deadline_ms = 0;
        tp_transport_deadline(sh, &c->t, d);
        return;
    }
    for (struct h2c_stream *st = c->streams; st; st = st->next)
        if (st->r && st->deadline_ms < d)
            d = st->deadline_ms;
    if (!c->n_attached && c->idle_ms)
        d = c->idle_ms + H2C_POOL_IDLE_MS;
    if (d != UINT64_MAX) {
        c->t.deadline_ms = 0; /* tp_transport_deadline takes any moment, earlier or later */
        tp_transport_deadline(sh, &c->t, d);
    }
}

/* Frees the streams of <c> that serve no request (resets on their way out). */
static void drop_detached(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    struct h2c_stream *st = c->streams, *next;

    for (; st; st = next) {
        next = st->next;
        if (st->r)
            continue;
        if (st->id && c->ng)
            nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        stream_free(sh, st);
    }
}

/* The transport of <c> (CLOSING) closes; from inside nghttp2 only once it
 * returned: closing may free the session and the buffer being parsed. */
static void c_transport_close(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    if (c->in_ng) {
        c->close_pending = true;
        return;
    }
    tp_transport_close(sh, &c->t);
}

/* nghttp2 returned: a close asked for meanwhile happens now. */
static bool c_close_pending(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    if (!c->close_pending)
        return false;
    c->close_pending = false;
    tp_transport_close(sh, &c->t);
    return true;
}

/* Closes <c>, which serves no request: streams still being reset go with it. */
static void c_close(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    if (c->state == HC_CLOSING)
        return;
    TP_BUG_ON(c->n_attached);
    drop_detached(sh, c);
    c->state = HC_CLOSING;
    idle_count(sh, c, false);
    list_unlink(sh, c);
    c_transport_close(sh, c);
}

/* <c> may have lost its last request: it closes when it takes no new ones
 * (GOAWAY, retired endpoint, drain, the pool full), else it waits in the pool
 * (streams it reset may still be finishing). */
static void c_idle_check(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    if (c->state == HC_CLOSING || c->n_attached)
        return;
    /* keepalive bounds the connections without a stream, as it bounds HTTP/1 pools */
    if (c->goaway || sh->draining || atomic_load_explicit(&c->eps->retired, memory_order_relaxed) ||
        (!c->idle_counted && c->state == HC_READY &&
         tp_stat_get(&ep_shard(sh, c->eps)->idle_count) >= c->keepalive)) {
        c_close(sh, c);
        return;
    }
    c->idle_ms = sh->now_ms;
    if (c->state == HC_CONNECTING)
        return; /* nobody waits for it any more; the SETTINGS may still make it useful */
    idle_count(sh, c, true);
    c_deadline(sh, c, 0);
}

/*
 * Every stream of <c> fails and the connection closes: streams whose
 * HEADERS never left were not processed (a connect failure when the
 * connection never came up), the others fail with <kind>.
 */
static void c_fail(struct tp_shard *sh, struct tp_h2c_conn *c, enum tp_fail_kind kind, int err)
{
    bool up = c->state == HC_READY;

    if (c->state == HC_CLOSING)
        return;
    /* first the streams that serve no request, while the others still hold
     * the snapshot the endpoint's state lives in */
    drop_detached(sh, c);
    c->state = HC_CLOSING;
    idle_count(sh, c, false);
    list_unlink(sh, c);
    while (c->streams) {
        struct h2c_stream *st = c->streams;
        st->closed = true; /* nghttp2 will not close it: freed here */
        if (st->r && st->got_final && st->resp_ended) {
            /* complete (END_STREAM received), its body held for a slow
             * client: handed on whatever the congestion (at most the
             * stream's window), then it finishes as it would have */
            if (unstage(sh, st, true))
                stream_finish(sh, st);
            continue;
        }
        struct tp_req *r = detach(st);
        enum tp_fail_kind k = kind;
        if (!up && (kind == TP_FAIL_RESET || kind == TP_FAIL_INVALID))
            k = TP_FAIL_CONNECT;
        else if (up && !st->headers_sent)
            k = TP_FAIL_REFUSED;
        if (st->id && c->ng)
            nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        stream_free(sh, st);
        if (r)
            tp_proxy_failed(sh, r, k, err);
    }
    c_transport_close(sh, c);
}

static nghttp2_session_callbacks *cbs;

static struct tp_h2c_conn *c_new(struct tp_shard *sh, struct tp_req *r, int *err)
{
    struct tp_rt_endpoint *ep = r->att.ep;
    struct tp_h2c_conn *c = tp_slab_alloc(sh, (unsigned)tp_http_shard(sh)->slab_h2c);
    nghttp2_option *opt = NULL;

    *err = -ENOMEM;
    if (!c || !cbs)
        goto fail_slab;
    SSL *ssl = r->up->tls ? tp_tls_client_ssl(r->up->tls, &ep->cfg->addr) : NULL;
    if (r->up->tls && !ssl)
        goto fail_slab;
    if ((*err = tp_transport_init(&c->t, -1, &h2c_proto, ssl)) != 0)
        goto fail_slab;
    c->eps = ep->st;
    c->state = HC_CONNECTING;
    c->tls = r->up->tls != NULL;
    c->keepalive = r->up->cfg->keepalive;
    c->max_streams = H2C_CONNECT_QUEUE;
    *err = -ENOMEM;
    if (nghttp2_option_new(&opt) != 0)
        goto fail_t;
    /* response bodies: a stream's window reopens only for what the client side took */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, 64);
    nghttp2_option_set_max_settings(opt, 16);
    int rv = nghttp2_session_client_new2(&c->ng, cbs, c, opt);
    nghttp2_option_del(opt);
    if (rv != 0)
        goto fail_t;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2C_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2C_RESP_HEAD_MAX},
    };
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, H2C_CONN_WINDOW) != 0)
        goto fail_t;
    *err = tp_transport_connect(sh, &c->t, &ep->cfg->addr);
    if (*err) {
        TP_LOG_RL(TP_LOG_ERR, "socket for upstream %s: %s", ep->cfg->addr.text, tp_strerror(*err));
        c->state = HC_CLOSING;
        tp_transport_close(sh, &c->t); /* on_closed frees it */
        return NULL;
    }
    tp_stat_add(&ep_shard(sh, ep->st)->connects, 1);
    /* newest first: the choice walks fresh connections before old ones */
    struct tp_ep_shard *ps = ep_shard(sh, ep->st);
    c->pnext = ps->h2;
    if (ps->h2)
        ((struct tp_h2c_conn *)ps->h2)->pprev = c;
    ps->h2 = c;
    c->listed = true;
    c_deadline(sh, c, sh->now_ms + r->limits.upstream_connect_ms);
    return c;
fail_t:
    c->state = HC_CLOSING;
    tp_transport_close(sh, &c->t);
    return NULL;
fail_slab:
    if (c)
        tp_slab_free(sh, c);
    return NULL;
}

/* The connection of <eps> that takes a new stream now, or NULL. */
static struct tp_h2c_conn *pick(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_h2c_conn *wait = NULL;

    for (struct tp_h2c_conn *c = ep_shard(sh, eps)->h2; c; c = c->pnext) {
        if (c->goaway || c->state == HC_CLOSING)
            continue;
        if (c->state == HC_READY && c->n_open + c->n_queued < c->max_streams)
            return c;
        if (c->state == HC_CONNECTING && !wait && c->n_queued < c->max_streams)
            wait = c;
    }
    return wait;
}

/* ------------------------------------------------------------------ */
/* attempts (struct tp_ux_ops)                                         */
/* ------------------------------------------------------------------ */

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                            nghttp2_data_source *src, void *user);

/* Hands <st> to nghttp2: HEADERS (and a data source when a body follows). */
static bool stream_submit(struct tp_shard *sh, struct tp_h2c_conn *c, struct h2c_stream *st)
{
    struct tp_req *r = st->r;
    struct uh *u = uh_of(r->uhead);
    nghttp2_nv *nv = uh_nv(u);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read_cb};
    const uint8_t *auth = nv[2].value;
    size_t auth_len = nv[2].valuelen;

    if (!auth_len) {
        /* no Host from the client (HTTP/1.0): the endpoint's address */
        nv[2].value = (uint8_t *)c->eps->addr.text;
        nv[2].valuelen = strlen(c->eps->addr.text);
    }
    int32_t id = nghttp2_submit_request(c->ng, NULL, nv, u->n, st->has_body ? &prd : NULL, st);
    nv[2].value = (uint8_t *)auth;
    nv[2].valuelen = auth_len;
    if (id < 0) {
        /* stream ids used up, or out of memory: this connection takes no more */
        c->goaway = true;
        return false;
    }
    if (!st->id)
        c->n_queued--;
    st->id = id;
    c->n_open++;
    st->deadline_ms = tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms);
    if (st->deadline_ms < c->t.deadline_ms || !c->t.deadline_ms)
        tp_transport_deadline(sh, &c->t, st->deadline_ms);
    c_kick(sh, c);
    return true;
}

static void ux_start(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_rt_endpoint *ep = r->att.ep;
    /* force_fresh (a refused stream's retry) needs no new connection here:
     * pick takes none that received GOAWAY or is closing, and a connection
     * per refused stream would open N at once when a GOAWAY refuses N */
    struct tp_h2c_conn *c = pick(sh, ep->st);
    struct h2c_stream *st;
    int err = 0;

    if (c) {
        r->att.reused = c->served > 0;
    } else if (!(c = c_new(sh, r, &err))) {
        tp_proxy_failed(sh, r, TP_FAIL_CONNECT, err);
        return;
    }
    if (!(st = stream_new(sh, c, r))) {
        c_idle_check(sh, c);
        tp_proxy_failed(sh, r, TP_FAIL_CONNECT, -ENOMEM);
        return;
    }
    c->served++;
    if (c->state == HC_CONNECTING) {
        c->n_queued++;
        c_deadline(sh, c, 0); /* its own deadline may come before the connect's */
        return;               /* submitted when the upstream's SETTINGS arrive */
    }
    c->n_queued++;
    if (!stream_submit(sh, c, st)) {
        stream_fail(sh, st, TP_FAIL_REFUSED, -ENOMEM, NGHTTP2_NO_ERROR);
        return;
    }
    if (r->body_state == TP_BODY_STREAM)
        r->ds->ops->resume_body(sh, r);
}

/* The client went away or the attempt ends: the stream is reset (CANCEL),
 * the connection stays for the others. */
static void ux_abort(struct tp_shard *sh, struct tp_req *r)
{
    struct h2c_stream *st = r->att.conn;
    struct tp_h2c_conn *c;

    if (!st)
        return;
    c = st->c;
    detach(st);
    if (!ng_open(st))
        pieces_clear(sh, st); /* else kept for a DATA frame nghttp2 may hold (stream_fail) */
    stage_clear(sh, st);
    if (st->id && !st->closed && c->state != HC_CLOSING) {
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        c_kick(sh, c); /* freed when nghttp2 closes it */
    } else {
        if (st->id && c->ng)
            nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        stream_free(sh, st);
    }
    c_idle_check(sh, c);
}

static bool over_budget(const struct tp_h2c_conn *c, unsigned segs)
{
    uint64_t w = c->wbuf ? c->wbuf->len : 0;
    return tp_transport_pending(&c->t) + w >= TP_OUTQ_BUDGET || tp_outq_full(c->t.out, segs);
}

/* Room for what one receive buffer of the client's brings: one slice
 * (content-length), at most 3 (chunked: copied into blocks, ux_body). */
static bool ux_body_ready(const struct tp_req *r)
{
    const struct h2c_stream *st = r->att.conn;

    return st && st->id && st->c->state == HC_READY && st->queued < H2C_REQ_BUDGET &&
           st->pc_n + 4 <= H2C_PIECES;
}

static bool ux_body(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *p, uint32_t len)
{
    struct h2c_stream *st = r->att.conn;

    if (!len)
        return true;
    if (len <= H2C_SMALL_SLICE || r->chunked) {
        /* copied into blocks: small slices so they do not pin whole receive
         * buffers; every slice of a chunked body because the client side
         * hands it on per chunk after one body_ready per 16 KiB receive
         * buffer: filling blocks, such a buffer takes at most 3 slots
         * (the one being filled and two new) whatever its chunks */
        while (len) {
            struct h2c_piece *last = st->pc_n ? &st->pc[(st->pc_head + st->pc_n - 1) % H2C_PIECES] : NULL;
            struct tp_block *b = last ? last->ref.blk : NULL;
            if (b && b->refs == 1 && last->p + last->len == b->data + b->len && b->len < b->size) {
                uint32_t n = b->size - b->len < len ? b->size - b->len : len;
                memcpy(b->data + b->len, p, n);
                b->len += n;
                last->len += n;
                st->queued += n;
                p += n;
                len -= n;
                continue;
            }
            if (st->pc_n == H2C_PIECES || !(b = tp_block_get(sh, TP_BLOCK_SIZE)))
                return false;
            b->len = 0;
            st->pc[(st->pc_head + st->pc_n++) % H2C_PIECES] =
                (struct h2c_piece){.ref = {.blk = b}, .p = b->data, .len = 0};
        }
        return true;
    }
    /* one slice per receive buffer (content-length): kept without a copy */
    if (st->pc_n == H2C_PIECES)
        return false;
    tp_bref_get(sh, ref);
    st->pc[(st->pc_head + st->pc_n++) % H2C_PIECES] = (struct h2c_piece){.ref = ref, .p = p, .len = len};
    st->queued += len;
    return true;
}

/* Builds the request's trailer fields as nghttp2_nv, names lowercased (an
 * HTTP/1 client's may not be), into the text after the array. */
struct trb {
    nghttp2_nv *nv;
    uint32_t n, cap;
    char *txt;
    size_t used, size;
    bool over;
};

static void trb_name(void *ctx, const char *p, size_t n)
{
    struct trb *t = ctx;

    if (t->n == t->cap || t->used + n > t->size) {
        t->over = true;
        return;
    }
    char *d = t->txt + t->used;
    for (size_t i = 0; i < n; i++)
        d[i] = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] | 0x20) : p[i];
    t->nv[t->n] = (nghttp2_nv){(uint8_t *)d, (uint8_t *)d + n, n, 0, NGHTTP2_NV_FLAG_NONE};
    t->used += n;
}

static void trb_value(void *ctx, const char *p, size_t n)
{
    struct trb *t = ctx;

    if (t->over || t->used + n > t->size) {
        t->over = true;
        return;
    }
    memcpy(t->txt + t->used, p, n);
    t->used += n;
    t->nv[t->n].valuelen += n;
}

static void trb_end(void *ctx)
{
    struct trb *t = ctx;

    if (!t->over)
        t->n++;
}

static const struct tp_hdr_sink trb_sink = {trb_name, trb_value, trb_end};

/* The request's trailers: copied as nghttp2 fields, sent as HEADERS with
 * END_STREAM once the body's last DATA left (data_read_cb). */
static bool ux_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h)
{
    struct h2c_stream *st = r->att.conn;
    uint32_t cap = h->n_hdrs;
    struct tp_block *b;

    if (!st || !cap || st->rtr || !st->has_body)
        return true;
    if (!(b = tp_block_get(sh, sizeof(struct uh) + 16 + cap * sizeof(nghttp2_nv) + h->len)))
        return false;
    struct uh *u = uh_of(b);
    nghttp2_nv *nv = uh_nv(u);
    struct trb t = {.nv = nv, .cap = cap, .txt = (char *)(nv + cap), .size = h->len};
    tp_req_trailer_fields(h, &trb_sink, &t);
    if (t.over) {
        tp_block_put(sh, b);
        return false;
    }
    u->n = t.n;
    st->rtr = b;
    return true;
}

static bool ux_body_end(struct tp_shard *sh, struct tp_req *r)
{
    struct h2c_stream *st = r->att.conn;

    (void)sh;
    if (st)
        st->body_end = true;
    return true;
}

static void ux_flush(struct tp_shard *sh, struct tp_req *r)
{
    struct h2c_stream *st = r->att.conn;

    if (!st || !st->id || st->c->state != HC_READY)
        return;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->c->ng, st->id);
    }
    c_kick(sh, st->c);
}

/* Staged response body goes to the client side while it takes it; the
 * stream's window reopens by as much. */
static bool unstage(struct tp_shard *sh, struct h2c_stream *st, bool force)
{
    struct tp_req *r = st->r;
    struct tp_h2c_conn *c = st->c;
    uint32_t moved = 0;

    while (st->r && st->st_n && (force || !r->ds->ops->congested(r))) {
        struct tp_block *b = st->stage[st->st_head];
        uint32_t n = b->len - st->st_off;
        if (n) {
            if (!r->ds->ops->body(sh, r, (struct tp_bref){.blk = b}, b->data + st->st_off, n)) {
                stream_fail(sh, st, TP_FAIL_RESET, -ENOMEM, NGHTTP2_INTERNAL_ERROR);
                return false; /* <st> and <r> may be gone */
            }
            r->bytes_out += n;
            st->st_off += n;
            st->staged -= n;
            moved += n;
        }
        if (st->st_n == 1 && b->len < b->size && !st->resp_ended)
            break; /* the block being filled stays */
        tp_block_put(sh, b);
        st->st_head = (uint8_t)((st->st_head + 1) % H2C_STAGE);
        st->st_n--;
        st->st_off = 0;
    }
    if (moved) {
        r->head_unflushed = false;
        r->ds->ops->flush(sh, r);
        st->deadline_ms = tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms);
        if (!st->closed && c->state != HC_CLOSING) {
            nghttp2_session_consume_stream(c->ng, st->id, moved);
            c_kick(sh, c); /* WINDOW_UPDATE */
        }
    }
    return true;
}

static void ux_resume(struct tp_shard *sh, struct tp_req *r)
{
    struct h2c_stream *st = r->att.conn;

    if (!st || !unstage(sh, st, false))
        return;
    if (st->r && st->resp_ended && !st->st_n)
        stream_finish(sh, st);
}

static const struct tp_ux_ops h2_exchange = {
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

const struct tp_ux_ops *tp_h2_exchange_ops(void)
{
    return &h2_exchange;
}

/* ------------------------------------------------------------------ */
/* the response                                                        */
/* ------------------------------------------------------------------ */

/* The response is complete and its body handed on: the stream is released,
 * then the request finishes. */
static void stream_finish(struct tp_shard *sh, struct h2c_stream *st)
{
    struct tp_h2c_conn *c = st->c;
    struct tp_req *r = st->r;

    if (st->tr_pending) {
        /* the trailers, after the last byte of the body */
        st->tr_pending = false;
        st->head.base = st->hblk ? st->hblk->data : "";
        st->head.len = st->hblk ? st->hblk->len : 0;
        bool ok = tp_proxy_response_trailers(sh, r, &st->head);
        head_clear(sh, st);
        if (!ok) {
            stream_fail(sh, st, TP_FAIL_RESET, -ENOMEM, NGHTTP2_INTERNAL_ERROR);
            return;
        }
    }
    detach(st);
    if (!st->closed && c->state != HC_CLOSING) {
        /* the response ended before our request did: stop sending (RFC 9113 8.1);
         * otherwise nghttp2 closes the stream right after this frame */
        if (!st->sent_end) {
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            c_kick(sh, c);
        }
    } else {
        if (c->ng)
            nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        stream_free(sh, st);
    }
    c_idle_check(sh, c); /* while <r> still holds its snapshot */
    tp_proxy_response_done(sh, r);
}

/* Appends <n> bytes to the stream's header block, growing it. */
static bool head_put(struct tp_shard *sh, struct h2c_stream *st, const void *p, size_t n, uint32_t *off)
{
    struct tp_block *b = st->hblk;

    if (!b || b->len + n > b->size) {
        size_t need = (b ? b->len : 0) + n;
        struct tp_block *nb = tp_block_get(sh, need < TP_BLOCK_SIZE ? TP_BLOCK_SIZE : need * 2);
        if (!nb)
            return false;
        nb->len = 0;
        if (b) {
            memcpy(nb->data, b->data, b->len);
            nb->len = b->len;
            tp_block_put(sh, b);
        }
        st->hblk = b = nb;
    }
    *off = b->len;
    memcpy(b->data + b->len, p, n);
    b->len += (uint32_t)n;
    return true;
}

static bool head_add(struct tp_shard *sh, struct h2c_stream *st, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen)
{
    struct tp_head *h = &st->head;
    struct tp_hdr *hd;

    hd = tp_head_new_field(h);
    if (!hd)
        return false;
    if (!head_put(sh, st, name, nlen, &hd->name.off) || !head_put(sh, st, value, vlen, &hd->value.off)) {
        h->n_hdrs--; /* the field is not there */
        return false;
    }
    hd->name.len = (uint32_t)nlen;
    hd->value.len = (uint32_t)vlen;
    hd->id = tp_h1_header_id((const char *)name, nlen);
    return true;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct h2c_stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    struct tp_shard *sh = tp_self;

    (void)flags;
    (void)user;
    if (!st || !st->r || f->hd.type != NGHTTP2_HEADERS || st->head_bad)
        return 0;
    st->hlist += (uint32_t)(nlen + vlen + 32);
    if (st->hlist > H2C_RESP_HEAD_MAX) {
        st->head_bad = true; /* the stream fails when the block is complete */
        return 0;
    }
    if (nlen && name[0] == ':') {
        /* nghttp2 checked which pseudo-headers and that :status is three digits */
        if (nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3)
            st->status = (uint16_t)((value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0'));
        return 0;
    }
    if (!head_add(sh, st, name, nlen, value, vlen))
        st->head_bad = true;
    return 0;
}

/* A complete header block of the upstream's: an interim head, the final
 * head, or trailers. */
static void on_head_block(struct tp_shard *sh, struct h2c_stream *st, bool end)
{
    struct tp_req *r = st->r;
    struct tp_head *h = &st->head;

    r->att.resp_bytes = true;
    st->deadline_ms = tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms);
    if (st->head_bad) {
        head_clear(sh, st);
        stream_fail(sh, st, TP_FAIL_INVALID, TP_EUPSTREAM, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    h->base = st->hblk ? st->hblk->data : "";
    h->len = st->hblk ? st->hblk->len : 0;
    if (st->got_final) {
        /* trailers: kept until the body before them is handed on (stream_finish) */
        if (h->n_hdrs)
            st->tr_pending = true;
        else
            head_clear(sh, st);
        if (end)
            st->resp_ended = true;
        return;
    }
    unsigned status = st->status;
    struct tp_resp_info ri = {.head_only = st->no_body};
    if (status >= 100 && status < 200) {
        /* interim: handed on, then the next head is read */
        if (!tp_proxy_response_head(sh, r, status, h, &ri))
            return; /* the attempt ended: <st> may be freed (its head with it) */
        head_clear(sh, st);
        st->status = 0;
        return;
    }
    /* content-length tells the client side the length; otherwise the body
     * is delimited by the stream's end, which HTTP/1.1 clients get chunked */
    if (end || st->no_body || status == 204 || status == 304)
        ri.framing = TP_FRAME_NONE;
    else if (tp_head_find(h, TP_H_CONTENT_LENGTH))
        ri.framing = TP_FRAME_LENGTH;
    else
        ri.framing = TP_FRAME_CLOSE;
    if (ri.framing == TP_FRAME_NONE && !end && !st->no_body)
        st->no_body = true; /* 204/304: DATA would be a protocol error nghttp2 reports */
    st->got_final = true;
    if (end)
        st->resp_ended = true;
    /* false: the attempt ended (retry on status, refused head): <st> is
     * detached and may be freed already (stream_free clears its head) */
    if (!tp_proxy_response_head(sh, r, status, h, &ri))
        return;
    head_clear(sh, st);
    if (st->resp_ended && !st->st_n) {
        stream_finish(sh, st);
        return;
    }
    r->head_unflushed = false;
    r->ds->ops->flush(sh, r);
}

static bool stage(struct tp_shard *sh, struct h2c_stream *st, const uint8_t *p, size_t len)
{
    while (len) {
        struct tp_block *b = st->st_n ? st->stage[(st->st_head + st->st_n - 1) % H2C_STAGE] : NULL;
        if (!b || b->len == b->size) {
            if (st->st_n == H2C_STAGE || !(b = tp_block_get(sh, TP_BLOCK_SIZE)))
                return false;
            b->len = 0;
            st->stage[(st->st_head + st->st_n++) % H2C_STAGE] = b;
        }
        size_t n = b->size - b->len < len ? b->size - b->len : len;
        memcpy(b->data + b->len, p, n);
        b->len += (uint32_t)n;
        st->staged += (uint32_t)n;
        p += n;
        len -= n;
    }
    return true;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *user)
{
    struct tp_h2c_conn *c = user;
    struct tp_shard *sh = tp_self;
    struct h2c_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    struct tp_req *r = st ? st->r : NULL;

    (void)flags;
    /* the connection window reopens at once; the stream's for what the client side took */
    nghttp2_session_consume_connection(ng, len);
    if (!r || !st->got_final || st->no_body) {
        nghttp2_session_consume_stream(ng, id, len); /* read and dropped */
        return 0;
    }
    r->att.resp_bytes = true;
    st->deadline_ms = tp_req_upstream_deadline(r, sh->now_ms, r->limits.upstream_response_ms);
    if (!st->staged && !r->ds->ops->congested(r)) {
        /* the client side takes it: relayed without a copy */
        if (!r->ds->ops->body(sh, r, c->cur, (const char *)data, (uint32_t)len)) {
            nghttp2_session_consume_stream(ng, id, len);
            stream_fail(sh, st, TP_FAIL_RESET, -ENOMEM, NGHTTP2_INTERNAL_ERROR);
            return 0;
        }
        r->bytes_out += len;
        r->head_unflushed = false;
        nghttp2_session_consume_stream(ng, id, len);
        r->ds->ops->flush(sh, r);
        return 0;
    }
    /* the client side is behind: held here, within the stream's window */
    if (!stage(sh, st, data, len)) {
        nghttp2_session_consume_stream(ng, id, len);
        stream_fail(sh, st, TP_FAIL_RESET, -ENOMEM, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    /* it may have caught up meanwhile, with nothing queued that would resume us */
    if (!r->ds->ops->congested(r))
        unstage(sh, st, false);
    return 0;
}

/* The upstream's SETTINGS: the connection is up; queued streams go out up
 * to its limit, the rest find another connection. */
static void on_settings(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    uint32_t max = nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);

    c->max_streams = max > H2C_MAX_STREAMS ? H2C_MAX_STREAMS : max;
    if (c->settings)
        return;
    c->settings = true;
    if (c->state != HC_CONNECTING)
        return;
    c->state = HC_READY;
    if (!c->n_attached) {
        c_idle_check(sh, c);
        return;
    }
    /* oldest first: the list is newest first, so walk from its tail; after
     * each stream handled (submitted, failed or moved: it no longer waits)
     * the walk starts again, the calls may have freed others */
    struct h2c_stream *st;
    while (c->state != HC_CLOSING) {
        struct h2c_stream *last = NULL;
        for (st = c->streams; st; st = st->next)
            if (!st->id && st->r)
                last = st;
        if (!(st = last))
            break;
        struct tp_req *r = st->r;
        if (!c->max_streams) {
            /* SETTINGS_MAX_CONCURRENT_STREAMS 0: handing the streams to
             * another connection of this upstream would loop; refused */
            stream_fail(sh, st, TP_FAIL_REFUSED, TP_ECLOSED, NGHTTP2_NO_ERROR);
            continue;
        }
        if (c->n_open < c->max_streams && !c->goaway) {
            if (!stream_submit(sh, c, st)) {
                stream_fail(sh, st, TP_FAIL_REFUSED, -ENOMEM, NGHTTP2_NO_ERROR);
                continue;
            }
            if (r->body_state == TP_BODY_STREAM)
                r->ds->ops->resume_body(sh, r);
            continue;
        }
        /* over the upstream's limit: the request looks for another connection */
        detach(st);
        stream_free(sh, st);
        ux_start(sh, r);
    }
    c_idle_check(sh, c);
    if (c->state != HC_CLOSING)
        c_deadline(sh, c, 0);
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct tp_h2c_conn *c = user;
    struct tp_shard *sh = tp_self;
    struct h2c_stream *st;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;

    if (c->state == HC_CLOSING)
        return 0; /* closed from inside this mem_recv: nothing more to do */
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            on_settings(sh, c);
        return 0;
    case NGHTTP2_HEADERS:
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (st && st->r)
            on_head_block(sh, st, end);
        else if (st)
            head_clear(sh, st);
        /* trailers' END_STREAM: the response is complete once the stage drained */
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (st && st->r && st->got_final && st->resp_ended && !st->st_n)
            stream_finish(sh, st);
        return 0;
    case NGHTTP2_DATA:
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (st && st->r && end && st->got_final) {
            st->resp_ended = true;
            if (!st->st_n)
                stream_finish(sh, st);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        /* no new streams here; nghttp2 closes those above the last stream id
         * with REFUSED_STREAM (retried), the others finish */
        if (!c->goaway)
            TP_LOG_RL(TP_LOG_INFO, "upstream %s endpoint %s: GOAWAY (%s), last stream %d", c->eps->upstream,
                      c->eps->addr.text, nghttp2_http2_strerror(f->goaway.error_code),
                      f->goaway.last_stream_id);
        c->goaway = true;
        return 0;
    default:
        return 0;
    }
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct tp_shard *sh = tp_self;
    struct h2c_stream *st;

    (void)user;
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!st)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS)
        st->headers_sent = true;
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
        st->sent_end = true;
    if (st->r) {
        st->deadline_ms = tp_req_upstream_deadline(st->r, sh->now_ms, st->r->limits.upstream_response_ms);
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
            st->r->att.req_sent = true;
    }
    return 0;
}

/* A frame nghttp2 could not send: our HEADERS (the connection went away
 * underneath, stream ids ran out) means the request was never sent. */
static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *f, int lib_error, void *user)
{
    struct tp_h2c_conn *c = user;
    struct tp_shard *sh = tp_self;

    (void)ng;
    /* only our request HEADERS: trailers that fail are followed by the
     * stream's close (on_stream_close counts it) */
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST || c->state == HC_CLOSING)
        return 0;
    for (struct h2c_stream *st = c->streams; st; st = st->next) {
        if (st->id != f->hd.stream_id || st->closed)
            continue;
        st->closed = true;
        c->n_open--;
        if (st->r) {
            TP_LOG_RL(TP_LOG_INFO, "upstream %s endpoint %s: request not sent: %s", c->eps->upstream,
                      c->eps->addr.text, nghttp2_strerror(lib_error));
            /* a header block over what nghttp2 may send fails the same way
             * on any connection: no retry (502) */
            bool too_large =
                lib_error == NGHTTP2_ERR_FRAME_SIZE_ERROR || lib_error == NGHTTP2_ERR_HEADER_COMP;
            stream_fail(sh, st, too_large ? TP_FAIL_INVALID : TP_FAIL_REFUSED,
                        too_large ? TP_EUPSTREAM : TP_ECLOSED, NGHTTP2_NO_ERROR);
        } else {
            stream_free(sh, st);
            c_idle_check(sh, c);
        }
        return 0;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    struct tp_h2c_conn *c = user;
    struct tp_shard *sh = tp_self;
    struct h2c_stream *st = nghttp2_session_get_stream_user_data(ng, id);

    if (!st || st->closed)
        return 0;
    st->closed = true;
    c->n_open--;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    /* complete; its staged body still goes to the client (then freed),
     * whatever the code of a reset that came after END_STREAM */
    if (st->r && st->resp_ended)
        return 0;
    if (st->r) {
        /* closed before the response was complete: that stream's failure only */
        bool refused = code == NGHTTP2_REFUSED_STREAM;
        /* a reset is the upstream's answer about this stream, not a dead
         * pooled connection: no free retry on a fresh one */
        if (!refused)
            st->r->att.resp_bytes = true;
        TP_LOG_RL(TP_LOG_INFO, "upstream %s endpoint %s: stream %d closed: %s", c->eps->upstream,
                  c->eps->addr.text, id, nghttp2_http2_strerror(code));
        stream_fail(sh, st, refused ? TP_FAIL_REFUSED : TP_FAIL_RESET, refused ? TP_ECLOSED : -ECONNRESET,
                    NGHTTP2_NO_ERROR);
        return 0;
    }
    stream_free(sh, st);
    c_idle_check(sh, c);
    return 0;
}

/* ------------------------------------------------------------------ */
/* output                                                              */
/* ------------------------------------------------------------------ */

static bool wbuf_flush(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    struct tp_block *b = c->wbuf;

    if (!b)
        return true;
    c->wbuf = NULL;
    if (tp_outq_push_block(sh, &c->t.out, b))
        return true;
    tp_block_put(sh, b);
    return false;
}

/* Frames other than DATA payloads: copied into blocks. */
static ssize_t send_cb(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    struct tp_h2c_conn *c = user;
    struct tp_shard *sh = tp_self;
    size_t done = 0;

    (void)ng;
    (void)flags;
    if (over_budget(c, 2))
        return NGHTTP2_ERR_WOULDBLOCK;
    while (done < len) {
        struct tp_block *b = c->wbuf;
        if (!b || b->len == b->size) {
            if (b && !wbuf_flush(sh, c))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            if (tp_outq_full(c->t.out, 2))
                break;
            if (!(b = c->wbuf = tp_block_get(sh, TP_BLOCK_SIZE)))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            b->len = 0;
        }
        size_t n = b->size - b->len < len - done ? b->size - b->len : len - done;
        memcpy(b->data + b->len, data + done, n);
        b->len += (uint32_t)n;
        done += n;
    }
    return done ? (ssize_t)done : NGHTTP2_ERR_WOULDBLOCK;
}

/* The request body's data source: as much as queued, sent without a copy. */
static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                            nghttp2_data_source *src, void *user)
{
    struct h2c_stream *st = src->ptr;
    size_t n = 0;

    (void)buf;
    (void)user;
    if (!st->r) {
        /* detached: a reset is on its way */
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    for (unsigned i = 0; i < st->pc_n && i < H2C_PIECES_FRAME && n < len; i++)
        n += st->pc[(st->pc_head + i) % H2C_PIECES].len;
    if (n > len)
        n = len;
    if (n == 0 && !st->body_end) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n)
        *dflags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->body_end && n == st->queued) {
        *dflags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->rtr) {
            /* the trailers end the stream instead (nghttp2 copies the fields) */
            struct uh *u = uh_of(st->rtr);
            int rv = 0;
            if (u->n) {
                *dflags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                rv = nghttp2_submit_trailer(ng, id, uh_nv(u), u->n);
            }
            tp_block_put(tp_self, st->rtr);
            st->rtr = NULL;
            if (rv != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *ng, nghttp2_frame *f, const uint8_t *fh, size_t len,
                        nghttp2_data_source *src, void *user)
{
    struct tp_h2c_conn *c = user;
    struct h2c_stream *st = src->ptr;
    struct tp_shard *sh = tp_self;
    struct tp_outq **q = &c->t.out;

    (void)ng;
    (void)f;
    if (st->queued < len)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* never: the slices of the frame are gone */
    if (over_budget(c, H2C_PIECES_FRAME + 3))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (!wbuf_flush(sh, c) || !tp_outq_push_inline(sh, q, (const char *)fh, 9))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    while (len) {
        struct h2c_piece *pc = &st->pc[st->pc_head];
        uint32_t n = pc->len < len ? pc->len : (uint32_t)len;
        if (!tp_outq_push_slice(sh, q, pc->ref, pc->p, n))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        pc->p += n;
        pc->len -= n;
        st->queued -= n;
        len -= n;
        if (!pc->len) {
            tp_bref_put(sh, pc->ref);
            st->pc_head = (uint8_t)((st->pc_head + 1) % H2C_PIECES);
            st->pc_n--;
        }
    }
    /* room in the stream's queue: read more of the client's body after the send */
    st->want_resume = true;
    return 0;
}

/* Lets nghttp2 write what it has, within the send budget, and hands it to
 * the socket; then streams whose body queue drained read their client again.
 * Called only where no exchange is on the stack (transport events, the end
 * of the loop iteration). */
static void c_send(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    if (c->in_ng) {
        c->want_send = true;
        return;
    }
    if (c->state == HC_CLOSING || c->t.connecting)
        return;
    for (int i = 0; i < 4; i++) {
        c->want_send = false;
        c->in_ng = true;
        int rv = nghttp2_session_send(c->ng);
        c->in_ng = false;
        if (c_close_pending(sh, c) || c->state == HC_CLOSING)
            return;
        if (rv != 0 || !wbuf_flush(sh, c)) {
            TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: HTTP/2: %s", c->eps->upstream, c->eps->addr.text,
                      rv ? nghttp2_strerror(rv) : "out of memory");
            c_fail(sh, c, TP_FAIL_RESET, rv ? TP_EUPSTREAM : -ENOMEM);
            return;
        }
        if (!c->want_send || over_budget(c, 12))
            break;
    }
    tp_transport_flush(sh, &c->t);
    for (struct h2c_stream *st = c->streams; st && c->state != HC_CLOSING;) {
        if (!st->want_resume) {
            st = st->next;
            continue;
        }
        st->want_resume = false;
        if (st->r && st->r->body_state == TP_BODY_STREAM) {
            st->r->ds->ops->resume_body(sh, st->r);
            st = c->streams; /* the request layer may have freed streams: again from the start */
            continue;
        }
        st = st->next;
    }
    if (c->state != HC_CLOSING && !nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
        /* GOAWAY both ways: nothing more can happen, once the bodies already
         * received reached their clients */
        for (struct h2c_stream *st = c->streams; st; st = st->next)
            if (st->r)
                return;
        c_fail(sh, c, TP_FAIL_RESET, TP_ECLOSED);
    }
}

static void c_kick(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    struct tp_http_shard *hs = tp_http_shard(sh);

    if (c->in_ng) {
        c->want_send = true;
        return;
    }
    if (c->kicked || c->state == HC_CLOSING)
        return;
    c->kicked = true;
    c->next_kick = hs->h2c_kick;
    hs->h2c_kick = c;
}

void tp_h2c_tick(struct tp_shard *sh)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_h2c_conn *c;

    while ((c = hs->h2c_kick)) {
        hs->h2c_kick = c->next_kick;
        c->kicked = false;
        c_send(sh, c);
    }
}

/* ------------------------------------------------------------------ */
/* transport events                                                    */
/* ------------------------------------------------------------------ */

static void h2c_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_h2c_conn *c = conn_of(t);
    const char *proto;
    unsigned len;

    if (err) {
        c_fail(sh, c, TP_FAIL_CONNECT, err);
        return;
    }
    if (c->tls && !(tp_transport_alpn(t, &proto, &len) && len == 2 && memcmp(proto, "h2", 2) == 0)) {
        TP_LOG_RL(TP_LOG_WARN,
                  "upstream %s endpoint %s: TLS handshake did not select h2 by ALPN (protocol: h2)",
                  c->eps->upstream, c->eps->addr.text);
        c_fail(sh, c, TP_FAIL_CONNECT, TP_EUPSTREAM);
        return;
    }
    /* the preface and our SETTINGS; ready once the upstream's SETTINGS come */
    c_send(sh, c);
}

static void process_input(struct tp_shard *sh, struct tp_h2c_conn *c)
{
    struct tp_transport *t = &c->t;
    struct tp_rbuf *e;

    while (c->state != HC_CLOSING && (e = tp_inq_front(&t->in))) {
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len;
        c->cur = tp_rbuf_ref(e);
        c->in_ng = true;
        ssize_t rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)data, len);
        c->in_ng = false;
        if (c_close_pending(sh, c))
            return; /* the input went with the transport */
        if (rv < 0) {
            TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: HTTP/2: %s", c->eps->upstream, c->eps->addr.text,
                      nghttp2_strerror((int)rv));
            tp_inq_clear(sh, &t->in);
            c_fail(sh, c, TP_FAIL_INVALID, TP_EUPSTREAM);
            return;
        }
        tp_inq_consume(sh, &t->in, len);
    }
}

static void h2c_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2c_conn *c = conn_of(t);

    if (c->state == HC_CLOSING) {
        tp_inq_clear(sh, &t->in);
        return;
    }
    process_input(sh, c);
    if (c->state == HC_CLOSING)
        return;
    if (t->peer_closed) {
        if (c->n_streams)
            TP_LOG_RL(TP_LOG_WARN, "upstream %s endpoint %s: HTTP/2 connection %s with %u streams open",
                      c->eps->upstream, c->eps->addr.text, t->reset ? "reset" : "closed", c->n_streams);
        c_fail(sh, c, TP_FAIL_RESET, t->reset ? -ECONNRESET : TP_ECLOSED);
        return;
    }
    c_send(sh, c);
}

static void h2c_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tp_h2c_conn *c = conn_of(t);

    if (c->state == HC_CLOSING)
        return;
    if (res < 0) {
        c_fail(sh, c, TP_FAIL_RESET, res);
        return;
    }
    c_send(sh, c);
}

static void h2c_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2c_conn *c = conn_of(t);

    if (c->state == HC_CLOSING)
        return;
    if (c->state == HC_CONNECTING) {
        if (sh->now_ms >= c->connect_ms) {
            c_fail(sh, c, TP_FAIL_CONNECT_TIMEOUT, TP_ETIMEOUT);
            return;
        }
        /* queued streams whose own deadline passed fail alone (504); the
         * connection goes on coming up for the others */
        struct h2c_stream *st = c->streams;
        while (st && c->state == HC_CONNECTING) {
            if (st->r && !st->id && sh->now_ms >= st->deadline_ms) {
                stream_fail(sh, st, TP_FAIL_TIMEOUT, TP_ETIMEOUT, NGHTTP2_CANCEL);
                st = c->streams;
                continue;
            }
            st = st->next;
        }
        if (c->state == HC_CONNECTING)
            c_deadline(sh, c, 0);
        return;
    }
    if (!c->n_attached) {
        if (c->idle_ms && sh->now_ms >= c->idle_ms + H2C_POOL_IDLE_MS)
            c_close(sh, c); /* pooled too long */
        else
            c_deadline(sh, c, 0);
        return;
    }
    /* the streams whose upstream_response passed fail alone (504) */
    struct h2c_stream *st = c->streams;
    while (st && c->state != HC_CLOSING) {
        if (st->r && sh->now_ms >= st->deadline_ms) {
            stream_fail(sh, st, TP_FAIL_TIMEOUT, TP_ETIMEOUT, NGHTTP2_CANCEL);
            /* the proxy may have freed other streams (or added a retry): again
             * from the start; the failed one serves no request any more */
            st = c->streams;
            continue;
        }
        st = st->next;
    }
    if (c->state != HC_CLOSING)
        c_deadline(sh, c, 0);
}

static void h2c_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    c_fail(sh, conn_of(t), TP_FAIL_INVALID, err);
}

static void h2c_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2c_conn *c = conn_of(t);
    struct tp_http_shard *hs = tp_http_shard(sh);

    /* closed by the transport itself (out of memory): as a connection error */
    if (c->state != HC_CLOSING)
        c_fail(sh, c, TP_FAIL_RESET, TP_ECLOSED);
    TP_BUG_ON(c->streams || c->listed || c->idle_counted);
    if (c->ng)
        nghttp2_session_del(c->ng);
    c->ng = NULL;
    if (c->wbuf)
        tp_block_put(sh, c->wbuf);
    c->wbuf = NULL;
    if (c->kicked)
        for (struct tp_h2c_conn **pp = &hs->h2c_kick; *pp; pp = &(*pp)->next_kick)
            if (*pp == c) {
                *pp = c->next_kick;
                break;
            }
    tp_slab_free(sh, c);
}

static const struct tp_transport_ops h2c_proto = {
    .on_input = h2c_on_input,
    .on_sent = h2c_on_sent,
    .on_connected = h2c_on_connected,
    .on_timeout = h2c_on_timeout,
    .on_error = h2c_on_error,
    .on_closed = h2c_on_closed,
};

/* ------------------------------------------------------------------ */
/* the shard's connections                                             */
/* ------------------------------------------------------------------ */

int tp_h2c_init(void)
{
    if (cbs)
        return 0;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return -1;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    return 0;
}

void tp_h2c_pool_close(struct tp_shard *sh, struct tp_endpoint_state *eps)
{
    struct tp_h2c_conn *c = ep_shard(sh, eps)->h2, *next;

    for (; c; c = next) {
        next = c->pnext;
        c->goaway = true; /* takes no new stream; closes when its last one ends */
        c_idle_check(sh, c);
    }
}

void tp_h2c_close_all(struct tp_shard *sh, bool all)
{
    unsigned id = (unsigned)tp_http_shard(sh)->slab_h2c;
    struct tp_slot *o;

    for (uint32_t i = 0; (o = tp_slab_at(sh, id, i)); i++) {
        struct tp_h2c_conn *c = (struct tp_h2c_conn *)o;
        if (o->in_free || c->state == HC_CLOSING)
            continue;
        if (all)
            c_fail(sh, c, TP_FAIL_RESET, TP_ECLOSED);
        else if (!c->n_attached)
            c_close(sh, c);
    }
}

uint32_t tp_h2c_count(struct tp_shard *sh)
{
    return sh->slabs[tp_http_shard(sh)->slab_h2c].live;
}

void tp_h2c_shard_free(struct tp_http_shard *hs)
{
    while (hs->h2c_free) {
        struct h2c_stream *st = hs->h2c_free;
        hs->h2c_free = st->next_free;
        free(st);
    }
    hs->n_h2c_free = 0;
}
