/* SPDX-License-Identifier: MIT */
/*
 * Client connections: the HTTP/1.1 server side of the proxy. [shard]
 *
 * States (enum tp_conn_state) and what moves between them:
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
 *                                                    │ cancel ops, wait for their
 *                                                    ▼ final CQEs, close(2)
 *                                                  (free)
 *
 * One request is served at a time: pipelined requests wait, unparsed, in the
 * receive queue until the previous response has been queued, so responses
 * go out in request order by construction.
 *
 * The receive side is one multishot recv with provided buffers. Bytes stay
 * in the buffers they arrived in: the head is parsed in place (see h1.c),
 * Content-Length bodies are forwarded from those buffers without a copy.
 * Chunked request bodies are re-framed (decoded by llhttp, re-chunked by us)
 * so the upstream never sees chunk extensions or framing it might read
 * differently from us.
 *
 * Backpressure: when TP_INQ_STOP buffers wait in the receive queue (the
 * upstream cannot take the body fast enough, or a client pipelines a flood),
 * the recv is cancelled and re-armed once the queue has drained.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <turnpike/log.h>
#include <turnpike/ratelimit.h>
#include <turnpike/router.h>
#include <turnpike/tls.h>

#include "admin/accesslog.h"
#include <turnpike/hash.h>
#include "http/dp.h"
#include "http/h1.h"
#include "http/tlsio.h"
#include "rt/runtime.h"

#define LINGER_MS         2000 /* [ms] reading after shutdown(SHUT_WR) before close */
#define LINGER_DRAIN_MS   500  /* [ms] the same while shutting down */
#define DISCARD_MAX_BYTES (1u << 20)

static llhttp_settings_t req_settings;
static pthread_once_t req_settings_once = PTHREAD_ONCE_INIT;

static void process_input(struct tp_shard *sh, struct tp_conn *c);
static void conn_on_timer(struct tp_timer *t, uint64_t now_ms);
static void conn_linger(struct tp_shard *sh, struct tp_conn *c);
static void conn_maybe_finish(struct tp_shard *sh, struct tp_conn *c);
static void req_end(struct tp_shard *sh, struct tp_conn *c);

/* ------------------------------------------------------------------ */
/* llhttp callbacks: the request parser of a client connection        */
/* ------------------------------------------------------------------ */

static inline struct tp_conn *conn_of_parser(llhttp_t *p)
{
    return p->data;
}

static int rq_on_url(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_url(&conn_of_parser(p)->req->head, at, len);
}

static int rq_on_url_complete(llhttp_t *p)
{
    conn_of_parser(p)->req->head.url_done = true;
    return 0;
}

static int rq_on_field(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_field(&conn_of_parser(p)->req->head, at, len);
}

static int rq_on_value(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_value(&conn_of_parser(p)->req->head, at, len);
}

static int rq_on_value_complete(llhttp_t *p)
{
    return tp_head_on_value_complete(&conn_of_parser(p)->req->head);
}

static int rq_on_headers_complete(llhttp_t *p)
{
    conn_of_parser(p)->head_done = true;
    return HPE_PAUSED;
}

static bool flush_chunk(struct tp_shard *sh, struct tp_req *r);

/* Chunked request bodies are copied into blocks; each full block goes out as
 * one chunk at once, the last partial one when the parser stops. */
static int body_copy(struct tp_shard *sh, struct tp_req *r, const char *at, size_t len)
{
    while (len) {
        if (!r->chunk_blk) {
            r->chunk_blk = tp_block_get(sh, TP_BLOCK_SIZE);
            if (!r->chunk_blk)
                return -1;
        }
        struct tp_block *b = r->chunk_blk;
        size_t room = b->size - b->len;
        size_t n = len < room ? len : room;
        memcpy(b->data + b->len, at, n);
        b->len += (uint32_t)n;
        at += n;
        len -= n;
        if (b->len == b->size && !flush_chunk(sh, r))
            return -1;
    }
    return 0;
}

static int rq_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct tp_conn *c = conn_of_parser(p);
    struct tp_req *r = c->req;
    struct tp_shard *sh = tp_self;

    r->body_bytes += len;
    if (r->body_bytes > sh->snap_limits.max_body_bytes) {
        r->body_too_large = true;
        return -1;
    }
    if (r->body_state != TP_BODY_STREAM)
        return 0; /* discarded */
    if (!r->chunked) {
        if (!tp_outq_push_slice(sh, &r->uc->out, c->exec_ref, at, (uint32_t)len))
            return -1;
        r->body_fwd += len;
        return 0;
    }
    r->body_fwd += len;
    return body_copy(sh, r, at, len);
}

static int rq_on_message_complete(llhttp_t *p)
{
    conn_of_parser(p)->msg_done = true;
    return HPE_PAUSED;
}

static void req_settings_init(void)
{
    llhttp_settings_init(&req_settings);
    req_settings.on_url = rq_on_url;
    req_settings.on_url_complete = rq_on_url_complete;
    req_settings.on_header_field = rq_on_field;
    req_settings.on_header_value = rq_on_value;
    req_settings.on_header_value_complete = rq_on_value_complete;
    req_settings.on_headers_complete = rq_on_headers_complete;
    req_settings.on_body = rq_on_body;
    req_settings.on_message_complete = rq_on_message_complete;
}

/* ------------------------------------------------------------------ */
/* timers                                                              */
/* ------------------------------------------------------------------ */

/* Moves the connection's deadline. Later deadlines are taken lazily: the
 * armed timer fires at the old time and re-arms itself for the new one. */
static void conn_deadline(struct tp_shard *sh, struct tp_conn *c, uint64_t ms)
{
    c->deadline_ms = ms;
    if (!tp_timer_armed(&c->timer) || ms < c->timer.deadline_ms)
        tp_timer_arm(&sh->wheel, &c->timer, ms);
}

static void conn_on_timer(struct tp_timer *t, uint64_t now_ms)
{
    struct tp_conn *c = (struct tp_conn *)((char *)t - offsetof(struct tp_conn, timer));
    struct tp_shard *sh = tp_self;

    if (now_ms < c->deadline_ms) {
        tp_timer_arm(&sh->wheel, t, c->deadline_ms);
        return;
    }
    switch (c->state) {
    case TP_CS_IDLE:
        tp_conn_close(sh, c);
        return;
    case TP_CS_HEAD:
        /* timeouts.client_header passed before the head was complete */
        if (c->req) {
            tp_conn_error(sh, c, 408, "request timeout", true);
        } else {
            tp_conn_close(sh, c);
        }
        return;
    case TP_CS_ACTIVE:
        /* the client stalled: no body bytes read, or no response bytes taken,
         * for client_idle. The request cannot complete: abort it. */
        TP_LOG_RL(TP_LOG_INFO, "client %.*s stalled for %llu ms; closing", c->peer_len, c->peer,
                  (unsigned long long)sh->snap->cfg->client_idle_ms);
        c->rst = true;
        tp_conn_close(sh, c);
        return;
    case TP_CS_LINGER:
    default:
        tp_conn_close(sh, c);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* receive                                                             */
/* ------------------------------------------------------------------ */

void tp_conn_rearm(struct tp_shard *sh, struct tp_conn *c)
{
    struct io_uring_sqe *sqe;

    if (c->recv_armed || c->recv_stopped || c->starved || c->peer_closed || c->state == TP_CS_CLOSING)
        return;
    sqe = tp_sqe(sh);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = TP_BGID;
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_RECV, c->slot, c->gen));
    c->recv_armed = true;
    c->ops++;
}

static void conn_stop_recv(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->recv_stopped)
        return;
    c->recv_stopped = true;
    if (c->recv_armed) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel64(sqe, tp_ud(TP_OP_RECV, c->slot, c->gen), 0);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_CANCEL, c->slot, c->gen));
        c->ops++;
    }
}

static void conn_backpressure(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->in.n >= TP_INQ_STOP) {
        conn_stop_recv(sh, c);
    } else if (c->recv_stopped && c->in.n <= TP_INQ_STOP / 2) {
        c->recv_stopped = false;
        tp_conn_rearm(sh, c);
    }
}

void tp_conn_on_recv(struct tp_shard *sh, struct tp_conn *c, struct io_uring_cqe *cqe)
{
    int res = cqe->res;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    int bid = tp_cqe_buffer(sh, cqe);

    if (!more) {
        c->recv_armed = false;
        c->ops--;
    }
    if (c->state == TP_CS_CLOSING) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        conn_maybe_finish(sh, c);
        return;
    }
    if (res > 0 && bid >= 0 && c->tls && c->state != TP_CS_LINGER) {
        /* TLS: the ciphertext goes into OpenSSL and its buffer back to the
         * kernel; what decrypts joins the receive queue as blocks */
        size_t plain;
        enum tp_tlsio_rc rc = tp_tlsio_input(sh, c->tls, (const char *)tp_buf_ptr(sh, (uint16_t)bid),
                                             (size_t)res, &c->in, &plain);
        tp_buf_release(sh, (uint16_t)bid);
        bid = -1;
        tp_conn_flush(sh, c); /* handshake messages, alerts */
        if (rc == TP_TLSIO_ERROR) {
            c->peer_closed = true;
            tp_conn_close(sh, c);
            return;
        }
        if (rc == TP_TLSIO_HS_DONE && c->state == TP_CS_IDLE)
            conn_deadline(sh, c, sh->now_ms + sh->snap_limits.client_idle_ms);
        if (c->in.n) {
            if (c->state == TP_CS_ACTIVE)
                c->deadline_ms = sh->now_ms + sh->snap_limits.client_idle_ms;
            process_input(sh, c);
            if (c->state == TP_CS_CLOSING)
                return;
        }
        if (rc == TP_TLSIO_CLOSED)
            res = 0; /* close_notify: the end of the stream */
    }
    if (res > 0 && bid < 0 && c->tls) {
        /* decrypted and handled above */
    } else if (res > 0 && bid >= 0) {
        if (c->state == TP_CS_LINGER) {
            tp_buf_release(sh, (uint16_t)bid); /* lingering: read and drop */
        } else if (!tp_inq_push(&c->in, (uint16_t)bid, (uint32_t)res)) {
            tp_buf_release(sh, (uint16_t)bid);
            tp_conn_close(sh, c);
            return;
        } else {
            if (c->state == TP_CS_ACTIVE)
                c->deadline_ms = sh->now_ms + sh->snap_limits.client_idle_ms;
            process_input(sh, c);
            if (c->state == TP_CS_CLOSING)
                return;
        }
    } else if (res == 0) {
        c->peer_closed = true;
        /* EOF: a client that half-closes after its request still gets the
         * response; anything else ends the connection. */
        if (c->state == TP_CS_ACTIVE && c->req &&
            (c->req->body_state == TP_BODY_DONE || c->req->body_state == TP_BODY_NONE)) {
            c->req->resp_close = true;
            return;
        }
        if (c->state == TP_CS_LINGER && tp_conn_pending(c)) {
            return; /* still flushing the final response */
        }
        tp_conn_close(sh, c);
        return;
    } else if (res < 0) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        if (res == -ENOBUFS) {
            tp_stat_add(&sh->enobufs, 1);
            if (!c->starved) {
                c->starved = true;
                c->next = sh->starved;
                sh->starved = c;
            }
        } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
            c->peer_closed = true;
            c->rst = true;
            tp_conn_close(sh, c);
            return;
        }
    }
    if (!more)
        tp_conn_rearm(sh, c);
}

/* ------------------------------------------------------------------ */
/* send                                                                */
/* ------------------------------------------------------------------ */

void tp_conn_flush(struct tp_shard *sh, struct tp_conn *c)
{
    struct io_uring_sqe *sqe;
    struct tp_outq **qp = &c->out;

    if (c->state == TP_CS_CLOSING)
        return;
    if (c->tls) {
        /* TLS: plaintext is encrypted into the wire queue, which is sent */
        if (!tp_tlsio_encrypt(sh, c->tls, &c->out)) {
            c->rst = true;
            tp_conn_close(sh, c);
            return;
        }
        qp = &c->tls->wire;
    }
    struct tp_outq *q = *qp;
    if (c->send_busy || !q || q->n == 0)
        return;
    if (tp_outq_prepare(q) == 0) {
        /* only empty marker segments: consume them */
        tp_outq_sent(sh, q, 0);
        if (q->n == 0)
            tp_outq_clear(sh, qp);
        return;
    }
    sqe = tp_sqe(sh);
    /* one buffer: a plain send spares the kernel the msghdr copy */
    if (q->msg.msg_iovlen == 1)
        io_uring_prep_send(sqe, c->fd, q->iov[0].iov_base, q->iov[0].iov_len, MSG_NOSIGNAL | MSG_WAITALL);
    else
        io_uring_prep_sendmsg(sqe, c->fd, &q->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_SEND, c->slot, c->gen));
    c->send_busy = true;
    c->ops++;
}

void tp_conn_on_send(struct tp_shard *sh, struct tp_conn *c, int res)
{
    c->send_busy = false;
    c->ops--;
    if (c->state == TP_CS_CLOSING) {
        conn_maybe_finish(sh, c);
        return;
    }
    if (res < 0) {
        /* client gone (EPIPE, ECONNRESET): nothing more can reach it */
        if (res != -EPIPE && res != -ECONNRESET)
            TP_LOG_RL(TP_LOG_INFO, "send to client %.*s: %s", c->peer_len, c->peer, strerror(-res));
        c->peer_closed = true;
        tp_conn_close(sh, c);
        return;
    }
    struct tp_outq **qp = c->tls ? &c->tls->wire : &c->out;
    if (tp_outq_sent(sh, *qp, (uint32_t)res))
        tp_outq_clear(sh, qp);
    if (c->state == TP_CS_ACTIVE)
        c->deadline_ms = sh->now_ms + sh->snap_limits.client_idle_ms;
    tp_conn_flush(sh, c);
    if (c->state == TP_CS_CLOSING)
        return;
    if (c->state == TP_CS_LINGER && tp_conn_pending(c) == 0) {
        conn_linger(sh, c);
        return;
    }
    /* room again towards the client: let the upstream side continue */
    if (c->req && c->req->uc && tp_conn_pending(c) < TP_OUTQ_BUDGET / 2)
        tp_proxy_client_drained(sh, c);
}

/* ------------------------------------------------------------------ */
/* closing                                                             */
/* ------------------------------------------------------------------ */

/* The final response is queued: once it is flushed, shut down our side,
 * keep reading (and dropping) until the client closes or LINGER_MS pass, so
 * unread request bytes do not turn our close into a reset that destroys the
 * response in flight. */
static void conn_linger(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->state != TP_CS_LINGER) {
        c->state = TP_CS_LINGER;
        if (c->in.n)
            c->linger = true; /* bytes we will never read: drop them without a reset */
        conn_deadline(sh, c, sh->now_ms + (sh->draining ? LINGER_DRAIN_MS : LINGER_MS));
        tp_inq_clear(sh, &c->in);
    }
    if (c->tls && !c->peer_closed)
        tp_tlsio_shutdown(sh, c->tls); /* close_notify, sent before our FIN */
    if (tp_conn_pending(c)) {
        tp_conn_flush(sh, c);
        return;
    }
    if (c->peer_closed || (!c->linger && c->in.n == 0)) {
        /* nothing unread to protect: a plain close sends no reset */
        tp_conn_close(sh, c);
        return;
    }
    if (!c->shut) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_SHUTDOWN, c->slot, c->gen));
        c->ops++;
        c->shut = true;
    }
    c->recv_stopped = false;
    tp_conn_rearm(sh, c);
}

void tp_conn_close(struct tp_shard *sh, struct tp_conn *c)
{
    if (c->state == TP_CS_CLOSING)
        return;
    if (c->req)
        req_end(sh, c);
    c->state = TP_CS_CLOSING;
    tp_timer_cancel(&sh->wheel, &c->timer);
    if (c->starved) {
        /* unlink from the starved list */
        struct tp_conn **pp = &sh->starved;
        while (*pp && *pp != c)
            pp = &(*pp)->next;
        if (*pp)
            *pp = c->next;
        c->starved = false;
    }
    if (c->ops) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_CANCEL, c->slot, c->gen));
        c->ops++;
        return;
    }
    conn_maybe_finish(sh, c);
}

/* Once no operation is in flight, queues and buffers can go and the socket is closed. */
static void conn_maybe_finish(struct tp_shard *sh, struct tp_conn *c)
{
    struct io_uring_sqe *sqe;

    if (c->state != TP_CS_CLOSING || c->ops)
        return;
    tp_inq_clear(sh, &c->in);
    tp_outq_clear(sh, &c->out);
    if (c->tls) {
        tp_tlsio_destroy(sh, c->tls);
        c->tls = NULL;
    }
    if (c->fd < 0) {
        tp_conn_free(sh, c);
        return;
    }
    if (c->rst) {
        /* abort: a reset tells the client the response is incomplete */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    sqe = tp_sqe(sh);
    io_uring_prep_close(sqe, c->fd);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_CLOSE, c->slot, c->gen));
    c->fd = -1;
    c->ops++;
}

void tp_conn_on_op_done(struct tp_shard *sh, struct tp_conn *c, enum tp_op op, int res)
{
    c->ops--;
    if (op == TP_OP_CLOSE) {
        sh->lis[c->listener].conns--;
        tp_stat_add(&sh->lis[c->listener].stats->shard[sh->id].active, (uint64_t)-1);
        atomic_fetch_sub_explicit(&tp_rt.conns_open, 1, memory_order_relaxed);
        tp_conn_free(sh, c);
        return;
    }
    if (op == TP_OP_SHUTDOWN && res < 0 && c->state == TP_CS_LINGER) {
        tp_conn_close(sh, c);
        return;
    }
    if (c->state == TP_CS_CLOSING)
        conn_maybe_finish(sh, c);
}

void tp_conn_drain(struct tp_shard *sh, struct tp_conn *c)
{
    c->drain = true;
    if (c->state == TP_CS_IDLE && c->in.n == 0) {
        tp_conn_close(sh, c);
        return;
    }
    if (c->req)
        c->req->resp_close = true;
}

/* ------------------------------------------------------------------ */
/* start                                                               */
/* ------------------------------------------------------------------ */

void tp_conn_start(struct tp_shard *sh, int fd, unsigned listener, const struct sockaddr_storage *peer)
{
    struct tp_conn *c;

    pthread_once(&req_settings_once, req_settings_init);
    c = tp_shard_conn_alloc(sh);
    if (!c) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_close(sqe, fd);
        io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_NONE, 0, 0));
        atomic_fetch_sub_explicit(&tp_rt.conns_open, 1, memory_order_relaxed);
        TP_LOG_RL(TP_LOG_ERR, "out of memory for a connection");
        return;
    }
    c->fd = fd;
    c->listener = (uint8_t)listener;
    c->state = TP_CS_IDLE;
    sh->lis[listener].conns++;
    tp_stat_add(&sh->lis[listener].stats->shard[sh->id].active, 1);
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &a->sin_addr, c->peer, sizeof(c->peer));
    } else if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)peer;
        inet_ntop(AF_INET6, &a->sin6_addr, c->peer, sizeof(c->peer));
    } else {
        snprintf(c->peer, sizeof(c->peer), "unknown");
    }
    c->peer_len = (uint8_t)strlen(c->peer);
    llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
    c->parser.data = c;
    tp_timer_init(&c->timer, conn_on_timer);
    struct tp_tls_server *tls = tp_snapshot_listener_tls(sh->snap, sh->lis[listener].name);
    if (tls) {
        /* the handshake counts as part of the first request's head */
        SSL *ssl = tp_tls_server_ssl(tls);
        c->tls = ssl ? tp_tlsio_create(ssl) : NULL;
        if (!c->tls) {
            TP_LOG_RL(TP_LOG_ERR, "out of memory for a TLS connection");
            tp_conn_close(sh, c);
            return;
        }
        conn_deadline(sh, c, sh->now_ms + sh->snap_limits.client_header_ms);
    } else {
        conn_deadline(sh, c, sh->now_ms + sh->snap_limits.client_idle_ms);
    }
    tp_conn_rearm(sh, c);
}

/* ------------------------------------------------------------------ */
/* requests                                                            */
/* ------------------------------------------------------------------ */

static bool start_request(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = tp_req_get(sh);

    if (!r)
        return false;
    tp_head_init(&r->head);
    r->start_ns = sh->now_ns;
    r->snap = tp_shard_snapshot_enter(sh);
    r->limits = sh->snap_limits;
    r->resp_close = c->drain;
    c->req = r;
    c->head_done = false;
    c->msg_done = false;
    c->state = TP_CS_HEAD;
    tp_stat_add(&sh->active_requests, 1);
    conn_deadline(sh, c, sh->now_ms + r->limits.client_header_ms);
    return true;
}

/* Releases everything the current request holds and records it. */
static void req_end(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;

    if (r->uc || r->counted_up || r->ep)
        tp_proxy_abort(sh, r);
    if (r->chunk_blk) {
        tp_block_put(sh, r->chunk_blk);
        r->chunk_blk = NULL;
    }
    if (r->uhead) {
        tp_block_put(sh, r->uhead);
        r->uhead = NULL;
    }
    /* a request whose head was read but that got no response: the client
     * went away (recorded as 499, as nginx does); an unfinished head is not
     * a request and is not recorded */
    if (!r->status && r->head_parsed)
        r->status = 499;
    if (r->status)
        tp_req_record(sh, c, r);
    if (r->info) {
        tp_block_put(sh, r->info);
        r->info = NULL;
    }
    tp_head_dispose(sh, &r->head);
    tp_shard_snapshot_leave(sh, r->snap);
    tp_stat_add(&sh->active_requests, (uint64_t)-1);
    c->req = NULL;
    c->requests++;
    tp_req_put(sh, r);
}

/* The response for the current request is fully queued (and the request fully read). */
void tp_req_finish(struct tp_shard *sh, struct tp_conn *c)
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
    req_end(sh, c);
    tp_conn_flush(sh, c);
    if (close) {
        conn_linger(sh, c);
        return;
    }
    c->state = TP_CS_IDLE;
    llhttp_resume(&c->parser);
    conn_deadline(sh, c, sh->now_ms + sh->snap_limits.client_idle_ms);
    if (!c->in_process)
        process_input(sh, c);
}

void tp_conn_request_done(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;

    r->resp_state = TP_RESP_DONE;
    if (r->body_state == TP_BODY_DONE || r->body_state == TP_BODY_NONE) {
        tp_req_finish(sh, c);
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
    tp_req_finish(sh, c);
}

void tp_conn_error(struct tp_shard *sh, struct tp_conn *c, unsigned status, const char *reason, bool close)
{
    struct tp_req *r = c->req;
    struct tp_block *b;

    if (!r->id_len) {
        tp_h1_random_hex(sh, r->id, 16);
        r->id_len = 32;
    }
    if (r->resp_state != TP_RESP_NONE) {
        /* a response is already on its way: it cannot be replaced, only cut short */
        c->rst = true;
        tp_conn_close(sh, c);
        return;
    }
    if (r->body_state == TP_BODY_STREAM || r->body_state == TP_BODY_DISCARD) {
        /* unread body: small bodies are read and dropped to keep the connection, others close it */
        if (!close && !r->chunked && r->content_length - r->body_bytes <= DISCARD_MAX_BYTES && c->head_done) {
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
    b = tp_h1_error_response(sh, status, reason, r->id, r->id_len, r->extra_hdrs, r->extra_len,
                             r->resp_close || !r->client_keepalive || sh->draining, r->method == HTTP_HEAD);
    if (!b || !tp_outq_push_block(sh, &c->out, b)) {
        c->rst = true;
        tp_conn_close(sh, c);
        return;
    }
    r->bytes_out += b->len;
    r->resp_head_len = b->len;
    r->resp_state = TP_RESP_HEAD;
    tp_conn_request_done(sh, c);
    tp_conn_flush(sh, c);
}

/* ---- request head checks ---- */

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

static const char *hdr_lookup(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    return tp_head_value(ctx, name, name_len, value_len);
}

/* The head is complete and valid HTTP/1: apply turnpike's rules, route, dispatch. */
static void on_request_head(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_head *h = &r->head;
    llhttp_t *p = &c->parser;
    const char *host = NULL, *url, *path;
    size_t host_len = 0, url_len, path_len;
    unsigned n_host = 0, n_te = 0;
    bool te_bad = false;

    r->head_parsed = true;
    r->method = p->method;
    r->http10 = p->http_minor == 0;
    r->head_cl_seen = (p->flags & F_CONTENT_LENGTH) != 0;
    r->bytes_in = h->len;
    r->client_keepalive = llhttp_should_keep_alive(p);
    if (p->http_major != 1 || p->http_minor > 1) {
        tp_conn_error(sh, c, 400, "unsupported http version", true);
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
        case TP_H_X_REQUEST_ID:
            if (!r->id_len && valid_request_id(v, hd->value.len)) {
                memcpy(r->id, v, hd->value.len);
                r->id_len = (uint8_t)hd->value.len;
            }
            break;
        case TP_H_TRACEPARENT:
            if (!r->trace[0] && valid_traceparent(v, hd->value.len))
                memcpy(r->trace, v, 55);
            break;
        case TP_H_EXPECT:
            if (tp_eq_nocase(v, hd->value.len, "100-continue", 12))
                r->expect_continue = true;
            break;
        case TP_H_CONNECTION:
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
    if (n_te > 1 || te_bad) {
        tp_conn_error(sh, c, 400, "invalid transfer-encoding", true);
        return;
    }
    if (n_host > 1 || (n_host == 0 && !r->http10)) {
        tp_conn_error(sh, c, 400, n_host ? "multiple host headers" : "missing host header", true);
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
        tp_conn_error(sh, c, 400, "invalid request target", true);
        return;
    }
    path_len = (size_t)(url + url_len - path);
    {
        const char *q = memchr(path, '?', path_len);
        size_t plen = q ? (size_t)(q - path) : path_len;
        if (has_dot_segment(path, plen)) {
            tp_conn_error(sh, c, 400, "dot segment in path", true);
            return;
        }
        path_len = plen;
    }
    r->host_off = host ? (uint32_t)(host - h->base) : 0;
    r->host_len = (uint32_t)host_len;

    /* framing */
    if (p->flags & F_CHUNKED) {
        r->chunked = true;
        r->body_state = TP_BODY_STREAM;
    } else if (p->flags & F_CONTENT_LENGTH) {
        r->content_length = p->content_length;
        if (r->content_length > r->limits.max_body_bytes) {
            /* sent before reading the body; the connection closes after it */
            tp_conn_error(sh, c, 413, "request body too large", true);
            return;
        }
        r->body_state = r->content_length ? TP_BODY_STREAM : TP_BODY_NONE;
    } else {
        r->body_state = TP_BODY_NONE;
    }
    if (r->body_state == TP_BODY_NONE) {
        /* no body: let llhttp reach the end of the message now, so the next
         * pipelined request starts from a clean parser */
        c->msg_done = false;
        llhttp_execute(p, h->base, 0);
        if (c->msg_done)
            llhttp_resume(p);
    }

    tp_accesslog_capture(sh, r, path, path_len);

    /* route */
    struct tp_route_req rq = {
        .method = r->method,
        .host = host,
        .host_len = host_len,
        .path = path,
        .path_len = path_len,
        .header = hdr_lookup,
        .header_ctx = h,
    };
    r->route = tp_router_lookup(r->snap->router, &rq, NULL);
    if (!r->route) {
        tp_conn_error(sh, c, 404, "no route", false);
        return;
    }

    /* rate limit */
    if (r->route->rl && !tp_rate_admit(sh, c, r))
        return;

    const struct tp_cfg_route *rc = r->route->cfg;
    if (rc->direct) {
        tp_direct_respond(sh, c);
        return;
    }
    tp_proxy_start(sh, c);
}

/* ---- accounting ---- */

void tp_req_record(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r)
{
    struct tp_route_stats *rs = r->route ? &r->route->st->stats[sh->id] : &sh->unmatched;

    tp_stat_add(&rs->requests[tp_status_class(r->status)], 1);
    tp_hist_observe(&rs->duration, (sh->now_ns - r->start_ns) / 1000);
    if (sh->alog)
        tp_accesslog_line(sh, c, r);
}

/* ---- rate limiting: 429 with RateLimit headers ---- */

bool tp_rate_admit(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r)
{
    const struct tp_cfg_rate_limit *cfg = r->route->cfg->rate_limit;
    struct tp_rl_result res;
    uint64_t key = 0;

    switch (cfg->key.kind) {
    case TP_KEY_CLIENT_IP:
        key = tp_hash_bytes(c->peer, c->peer_len);
        break;
    case TP_KEY_HEADER: {
        size_t vl = 0;
        const char *v = tp_head_value(&r->head, cfg->key.name, cfg->key.name_len, &vl);
        key = v ? tp_hash_bytes(v, vl) : 0;
        break;
    }
    default:
        break;
    }
    bool ok = tp_ratelimit_take(r->route->rl, key, sh->now_ns, &res);
    /* RateLimit headers ride on every response of a limited route */
    char *x = r->extra_hdrs;
    int n = snprintf(x, sizeof(r->extra_hdrs),
                     "RateLimit-Limit: %llu\r\nRateLimit-Remaining: %llu\r\nRateLimit-Reset: %llu\r\n",
                     (unsigned long long)res.limit, (unsigned long long)res.remaining,
                     (unsigned long long)res.reset_s);
    if (!ok && n > 0 && (size_t)n < sizeof(r->extra_hdrs))
        n += snprintf(x + n, sizeof(r->extra_hdrs) - (size_t)n, "Retry-After: %llu\r\n",
                      (unsigned long long)(res.retry_after_s ? res.retry_after_s : 1));
    r->extra_len = n > 0 && (size_t)n < sizeof(r->extra_hdrs) ? (uint16_t)n : 0;
    if (ok)
        return true;
    tp_stat_add(&r->route->st->stats[sh->id].ratelimited, 1);
    tp_conn_error(sh, c, 429, "rate limited", false);
    return false;
}

/* ---- direct_response ---- */

void tp_direct_respond(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    const struct tp_cfg_direct_response *d = r->route->cfg->direct;
    const struct tp_rt_rewrite *rw = &r->route->resp;
    bool head_only = r->method == HTTP_HEAD;
    bool close = r->resp_close || !r->client_keepalive || sh->draining;
    struct tp_block *b;

    if (r->body_state == TP_BODY_STREAM) {
        /* the body is read and dropped; chunked or large bodies close the connection */
        if (!r->chunked && r->content_length <= DISCARD_MAX_BYTES) {
            r->body_state = TP_BODY_DISCARD;
            r->body_left_ok = true;
        } else {
            r->body_state = TP_BODY_DISCARD;
            r->resp_close = close = true;
        }
    }
    b = tp_block_get(sh, 256 + r->id_len + rw->set_len + r->extra_len + d->body_len);
    if (!b) {
        tp_conn_error(sh, c, 503, "out of memory", true);
        return;
    }
    tp_blk_lit(b, "HTTP/1.1 ");
    tp_blk_u64(b, d->status);
    tp_blk_lit(b, " ");
    tp_blk_put(b, tp_h1_reason(d->status), strlen(tp_h1_reason(d->status)));
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
    else if (r->http10)
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
    if (!tp_outq_push_block(sh, &c->out, b)) {
        c->rst = true;
        tp_conn_close(sh, c);
        return;
    }
    r->resp_state = TP_RESP_HEAD;
    tp_conn_flush(sh, c);
    tp_conn_request_done(sh, c);
}

/* ------------------------------------------------------------------ */
/* the input loop                                                      */
/* ------------------------------------------------------------------ */

/* Flushes the chunk block of a re-framed request body to the upstream. */
static bool flush_chunk(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_block *b = r->chunk_blk;
    char line[16];
    int n;

    if (!b || b->len == 0)
        return true;
    n = snprintf(line, sizeof(line), "%x\r\n", b->len);
    r->chunk_blk = NULL;
    if (!tp_outq_push_inline(sh, &r->uc->out, line, (uint32_t)n) || !tp_outq_push_block(sh, &r->uc->out, b) ||
        !tp_outq_push_static(sh, &r->uc->out, "\r\n", 2))
        return false;
    return true;
}

/*
 * Runs the request parser over queued body bytes: forwards them (STREAM) or
 * drops them (DISCARD). Stops at the end of the message, when the upstream's
 * send queue is over budget, or when the input is exhausted. Returns false
 * when the connection was closed.
 */
static bool pump_body(struct tp_shard *sh, struct tp_conn *c)
{
    struct tp_req *r = c->req;
    struct tp_rbuf *e;
    bool stream = r->body_state == TP_BODY_STREAM;

    if (stream && (!r->uc || r->uc->state != TP_US_ACTIVE))
        return true; /* not connected yet: the body waits in the queue */
    while ((e = tp_inq_front(&c->in))) {
        if (stream && (tp_uconn_pending(r->uc) >= TP_OUTQ_BUDGET || tp_outq_full(r->uc->out, 12)))
            break;
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len, used;
        c->exec_ref = tp_rbuf_ref(e);
        llhttp_errno_t rc = llhttp_execute(&c->parser, data, len);
        if (rc == HPE_PAUSED) {
            used = (uint32_t)(llhttp_get_error_pos(&c->parser) - data);
        } else if (rc == HPE_OK) {
            used = len;
        } else {
            if (r->body_too_large)
                tp_conn_error(sh, c, 413, "request body too large", true);
            else
                tp_conn_error(sh, c, 400, tp_h1_llhttp_reason(rc), true);
            return c->state != TP_CS_CLOSING;
        }
        r->bytes_in += used;
        tp_inq_consume(sh, &c->in, used);
        if (r->chunked && stream && !flush_chunk(sh, r)) {
            c->rst = true;
            tp_conn_close(sh, c);
            return false;
        }
        if (c->msg_done) {
            if (stream && r->chunked && !tp_outq_push_static(sh, &r->uc->out, "0\r\n\r\n", 5)) {
                c->rst = true;
                tp_conn_close(sh, c);
                return false;
            }
            r->body_state = TP_BODY_DONE;
            break;
        }
    }
    if (stream && r->uc)
        tp_proxy_body_queued(sh, r);
    if (r->body_state == TP_BODY_DONE && r->resp_state == TP_RESP_DONE)
        tp_req_finish(sh, c);
    return c->state != TP_CS_CLOSING;
}

void tp_conn_resume_input(struct tp_shard *sh, struct tp_conn *c)
{
    if (!c->in_process)
        process_input(sh, c);
}

static void process_input(struct tp_shard *sh, struct tp_conn *c)
{
    c->in_process = true;
    for (;;) {
        if (c->state == TP_CS_IDLE) {
            if (c->in.n == 0)
                break;
            if (!start_request(sh, c)) {
                tp_conn_close(sh, c);
                break;
            }
        }
        if (c->state == TP_CS_HEAD) {
            unsigned status = 400;
            enum tp_head_rc rc =
                tp_head_parse(sh, &c->parser, &c->req->head, &c->in,
                              (uint32_t)c->req->limits.max_header_bytes, &c->head_done, &status);
            if (rc == TP_HEAD_MORE)
                break;
            c->state = TP_CS_ACTIVE;
            if (rc == TP_HEAD_ERROR) {
                const char *why = c->req->head.reason_text ? c->req->head.reason_text : "malformed request";
                tp_conn_error(sh, c, status,
                              status == 414   ? "uri too long"
                              : status == 431 ? "request header fields too large"
                                              : why,
                              true);
                break;
            }
            c->deadline_ms = sh->now_ms + c->req->limits.client_idle_ms;
            llhttp_resume(&c->parser);
            on_request_head(sh, c);
            if (c->req)
                tp_head_release(sh, &c->req->head);
            continue;
        }
        if (c->state == TP_CS_ACTIVE) {
            struct tp_req *r = c->req;
            if (!r)
                break;
            if (r->body_state == TP_BODY_STREAM || r->body_state == TP_BODY_DISCARD) {
                if (!pump_body(sh, c))
                    break;
                if (c->state == TP_CS_ACTIVE)
                    break; /* waiting for the upstream or more bytes */
                continue;
            }
            break; /* waiting for the response; pipelined bytes stay queued */
        }
        if (c->state == TP_CS_LINGER)
            tp_inq_clear(sh, &c->in);
        break;
    }
    c->in_process = false;
    if (c->state != TP_CS_CLOSING)
        conn_backpressure(sh, c);
}
