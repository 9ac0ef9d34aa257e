/* SPDX-License-Identifier: MIT */
/*
 * The transport of every connection of a shard (see transport.h). [shard]
 *
 * Life of a transport:
 *
 *   init ──(accepted fd)──────────────────────────────▶ open ──▶ closing ──▶ closed
 *   init ──connect──▶ connecting ──(TLS: handshake)──▶ open       │ cancel   │ on_closed:
 *                        │ failure: on_connected(err)    ▲         │ all ops, │ the owner
 *                        └───────────────────────────────┘         │ close(2) │ frees it
 *
 * Receiving: one multishot receive with provided buffers. Plain bytes stay in
 * the buffer they arrived in (an entry of <in>); with TLS the ciphertext is
 * fed to OpenSSL and its buffer returned at once, and the plaintext joins
 * <in> as blocks. The session is told once per completion that brought
 * plaintext, or the peer's close. When the kernel runs out of provided
 * buffers it ends the receive with ENOBUFS; the transport then waits on the
 * shard's starved list and is re-armed once a quarter of the pool is back.
 *
 * Sending: at most one send in flight (docs/internals.md); single-buffer queues go out
 * with IORING_OP_SEND, others with SENDMSG. With TLS, the plaintext queue is
 * encrypted into the wire queue at flush time and the wire queue is sent.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <turnpike/err.h>
#include <turnpike/log.h>

#include "rt/runtime.h"
#include "transport/tlsio.h"
#include "transport/transport.h"

/* the transport's ops in the reactor's table */
static int op_recv = -1, op_send, op_connect, op_cancel, op_shutdown, op_close;
static int ext_idx = -1;

/* per-shard state: receives waiting for buffers, receives stopped by their session */
struct tp_transport_shard {
    struct tp_transport *starved;
    struct tp_transport *stopped; /* doubly linked: sessions stop and resume often */
    bool was_pressed;             /* the pool was pressed at the last tick */
    bool dry;                     /* a receive ran dry since the last sweep */
    uint64_t held_at_ms;          /* when sh->recv_held is summed next */
};

static inline struct tp_transport_shard *tshard(struct tp_shard *sh)
{
    return sh->ext[ext_idx];
}

static void finish(struct tp_shard *sh, struct tp_transport *t);

/* ------------------------------------------------------------------ */
/* setup                                                               */
/* ------------------------------------------------------------------ */

static void transport_on_timer(struct tp_timer *tm, uint64_t now_ms)
{
    struct tp_transport *t = (struct tp_transport *)((char *)tm - offsetof(struct tp_transport, timer));
    struct tp_shard *sh = tp_self;

    if (now_ms < t->deadline_ms) {
        tp_timer_arm(&sh->wheel, tm, t->deadline_ms);
        return;
    }
    if (!t->closing)
        t->proto->on_timeout(sh, t);
}

int tp_transport_init(struct tp_transport *t, int fd, const struct tp_transport_ops *proto, void *ssl)
{
    t->fd = fd;
    t->proto = proto;
    tp_inq_init(&t->in);
    tp_timer_init(&t->timer, transport_on_timer);
    if (ssl) {
        t->tls = tp_tlsio_create(ssl);
        if (!t->tls)
            return -ENOMEM;
    }
    return 0;
}

int tp_transport_connect(struct tp_shard *sh, struct tp_transport *t, const struct tp_addr *a)
{
    int one = 1, lowat = (int)atomic_load_explicit(&tp_rt.unsent_max, memory_order_relaxed);
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    /* socket(2) and setsockopt(2) run once per upstream connection, not per
     * request; the connect itself goes through the ring */
    if (fd == -1)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
    t->fd = fd;
    t->connecting = true;
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&a->ss, a->len);
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_connect, t->slot.slot, t->slot.gen));
    t->ops++;
    return 0;
}

void tp_transport_deadline(struct tp_shard *sh, struct tp_transport *t, uint64_t ms)
{
    t->deadline_ms = ms;
    if (!tp_timer_armed(&t->timer) || ms < t->timer.deadline_ms)
        tp_timer_arm(&sh->wheel, &t->timer, ms);
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */
/* ------------------------------------------------------------------ */

void tp_transport_recv(struct tp_shard *sh, struct tp_transport *t)
{
    struct io_uring_sqe *sqe;

    if (t->recv_armed || t->recv_stopped || t->starved || t->peer_closed || t->closing || t->fd < 0 ||
        (t->connecting && !t->tls))
        return;
    sqe = tp_sqe(sh);
    /* While the buffer pool is pressed, one buffer per arm. Otherwise multishot,
     * ended by the kernel once it received TP_RECV_MSHOT_BUFS full buffers' worth of
     * bytes where it can
     * (tp_rt.recv_mshot_limit) and armed again by on_recv: an unbounded multishot
     * posts every buffer its socket can fill before a stop's cancel lands, and a
     * relay towards a slow reader then holds the rest of its response in memory. */
    if (tp_bufs_pressed(sh)) {
        io_uring_prep_recv(sqe, t->fd, NULL, 0, 0);
    } else {
        io_uring_prep_recv_multishot(sqe, t->fd, NULL, 0, 0);
        if (tp_rt.recv_mshot_limit)
            tp_sqe_recv_mshot_limit(sqe, TP_RECV_MSHOT_BUFS * sh->bufs.size);
    }
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = TP_BGID;
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_recv, t->slot.slot, t->slot.gen));
    t->recv_armed = true;
    t->ops++;
}

static void stopped_add(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_transport_shard *ts = tshard(sh);

    if (t->on_stopped)
        return;
    t->on_stopped = true;
    t->prev_stopped = NULL;
    t->next_stopped = ts->stopped;
    if (ts->stopped)
        ts->stopped->prev_stopped = t;
    ts->stopped = t;
}

static void stopped_del(struct tp_shard *sh, struct tp_transport *t)
{
    if (!t->on_stopped)
        return;
    if (t->prev_stopped)
        t->prev_stopped->next_stopped = t->next_stopped;
    else
        tshard(sh)->stopped = t->next_stopped;
    if (t->next_stopped)
        t->next_stopped->prev_stopped = t->prev_stopped;
    t->next_stopped = t->prev_stopped = NULL;
    t->on_stopped = false;
}

void tp_transport_stop_recv(struct tp_shard *sh, struct tp_transport *t)
{
    if (t->closing)
        return;
    if (t->recv_stopped) {
        /* buffers the receive posted before its cancel landed, while the pool is short */
        if (tp_bufs_pressed(sh))
            tp_inq_unpin(sh, &t->in);
        return;
    }
    t->recv_stopped = true;
    stopped_add(sh, t);
    /* under pressure a stopped receive keeps one buffer; the rest waits in heap blocks */
    if (tp_bufs_pressed(sh))
        tp_inq_unpin(sh, &t->in);
    if (t->recv_armed) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel64(sqe, tp_ud((unsigned)op_recv, t->slot.slot, t->slot.gen), 0);
        io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_cancel, t->slot.slot, t->slot.gen));
        t->ops++;
    }
}

void tp_transport_resume_recv(struct tp_shard *sh, struct tp_transport *t)
{
    if (!t->recv_stopped)
        return;
    t->recv_stopped = false;
    stopped_del(sh, t);
    tp_transport_recv(sh, t);
}

void tp_transport_backpressure(struct tp_shard *sh, struct tp_transport *t)
{
    if (t->closing)
        return;
    /* under buffer pressure a queue holds two buffers, not TP_INQ_STOP */
    unsigned stop = tp_bufs_pressed(sh) ? 2 : TP_INQ_STOP;

    if (t->in.n >= stop) {
        if (t->recv_stopped && stop == 2)
            tp_inq_unpin(sh, &t->in); /* buffers a multishot posted before its cancel landed */
        tp_transport_stop_recv(sh, t);
    } else if (t->recv_stopped && t->in.n <= stop / 2) {
        tp_transport_resume_recv(sh, t);
    }
}

/* The buffer ring ran dry (-ENOBUFS ended the multishot receive): wait to be re-armed. */
static void starve(struct tp_shard *sh, struct tp_transport *t)
{
    tp_stat_add(&sh->enobufs, 1);
    if (sh->bufs.want >= sh->bufs.count)
        tp_stat_add(&sh->pool_dry, 1); /* not a window to grow: the pool itself */
    tshard(sh)->dry = true;
    if (t->starved)
        return;
    t->starved = true;
    t->next_starved = tshard(sh)->starved;
    tshard(sh)->starved = t;
}

static void unstarve(struct tp_shard *sh, struct tp_transport *t)
{
    if (!t->starved)
        return;
    struct tp_transport **pp = &tshard(sh)->starved;
    while (*pp && *pp != t)
        pp = &(*pp)->next_starved;
    if (*pp)
        *pp = t->next_starved;
    t->next_starved = NULL;
    t->starved = false;
}

/* End of each loop iteration. When the pool has just become pressed, or a receive
 * ran dry while it is, the receives stopped before that give back every buffer but
 * their first (tp_inq_unpin): connections that wait on a slow peer must not hold the
 * pool the others need to read at all (1000 slow readers whose upstream connections
 * had taken eight buffers each emptied a worker's pool and stalled every connection
 * of it). Then re-arm starved receives once a quarter of the pool is back. Buffers
 * returned during this iteration count as back: the reactor puts them into the ring
 * right after the tick hooks (doubling its window after the ENOBUFS), before the
 * re-armed receives are submitted. */
static void transport_tick(struct tp_shard *sh)
{
    struct tp_transport_shard *ts = tshard(sh);
    bool pressed = tp_bufs_pressed(sh);

    if (pressed && (!ts->was_pressed || ts->dry)) {
        for (struct tp_transport *t = ts->stopped; t; t = t->next_stopped)
            tp_inq_unpin(sh, &t->in);
        ts->dry = false;
    }
    ts->was_pressed = pressed;
    if (sh->now_ms >= ts->held_at_ms) {
        /* what connections that wait on a slow peer hold, for the metrics */
        uint64_t held = 0;
        for (struct tp_transport *t = ts->stopped; t; t = t->next_stopped)
            held += t->in.bytes;
        tp_stat_set(&sh->recv_held, held);
        ts->held_at_ms = sh->now_ms + 1000;
    }
    if (!ts->starved || sh->bufs.held > sh->bufs.count - sh->bufs.count / 4)
        return;
    struct tp_transport *t = ts->starved;
    ts->starved = NULL;
    while (t) {
        struct tp_transport *next = t->next_starved;
        t->next_starved = NULL;
        t->starved = false;
        tp_transport_recv(sh, t);
        t = next;
    }
}

/* TLS: ciphertext in, plaintext (if any) into <in>. Returns false when the session was told of a failure. */
static bool tls_input(struct tp_shard *sh, struct tp_transport *t, uint16_t bid, uint32_t len, bool *news)
{
    size_t plain;
    bool was_connecting = t->connecting;
    enum tp_tlsio_rc rc = tp_tlsio_input(sh, t->tls, (const char *)tp_buf_ptr(sh, bid), len, &t->in, &plain);

    tp_buf_release(sh, bid);
    tp_transport_flush(sh, t); /* handshake messages, alerts, post-handshake replies */
    if (t->closing)
        return false;
    if (rc == TP_TLSIO_ERROR) {
        if (was_connecting) {
            t->connecting = false;
            t->proto->on_connected(sh, t, TP_ETLS);
        } else {
            t->proto->on_error(sh, t, TP_ETLS);
        }
        return false;
    }
    if (rc == TP_TLSIO_HS_DONE) {
        t->connecting = false;
        t->proto->on_connected(sh, t, 0);
        if (t->closing)
            return false;
    }
    if (rc == TP_TLSIO_CLOSED)
        t->peer_closed = true; /* close_notify: the end of the stream */
    *news = plain || rc == TP_TLSIO_CLOSED;
    return true;
}

static void on_recv(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    int bid = tp_cqe_buffer(sh, cqe);
    struct tp_transport *t = tp_slab_lookup(sh, tp_ud_slot(cqe->user_data), tp_ud_gen(cqe->user_data));
    int res = cqe->res;
    bool more = cqe->flags & IORING_CQE_F_MORE;
    bool news = false;

    if (!t) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        return;
    }
    if (!more) {
        t->recv_armed = false;
        t->ops--;
    }
    if (t->closing) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        finish(sh, t);
        return;
    }
    if (res > 0 && bid >= 0) {
        if (t->discard) {
            tp_buf_release(sh, (uint16_t)bid); /* lingering: read and drop */
        } else if (t->tls) {
            if (!tls_input(sh, t, (uint16_t)bid, (uint32_t)res, &news))
                return;
        } else if (!tp_inq_push(&t->in, (uint16_t)bid, (uint32_t)res)) {
            tp_buf_release(sh, (uint16_t)bid);
            t->proto->on_error(sh, t, -ENOMEM);
            return;
        } else {
            news = true;
        }
    } else if (res == 0) {
        t->peer_closed = true;
        news = true;
    } else if (res < 0) {
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        if (res == -ENOBUFS) {
            starve(sh, t);
        } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
            t->peer_closed = true;
            t->reset = true;
            news = true;
        }
    }
    if (news && t->connecting) {
        /* the peer went away during the TLS handshake of an upstream connection */
        t->connecting = false;
        t->proto->on_connected(sh, t, t->reset ? -ECONNRESET : TP_ECLOSED);
        return;
    }
    if (news)
        t->proto->on_input(sh, t);
    if (!more && !t->closing)
        tp_transport_recv(sh, t);
}

/* ------------------------------------------------------------------ */
/* sending                                                             */
/* ------------------------------------------------------------------ */

uint64_t tp_transport_pending(const struct tp_transport *t)
{
    return (t->out ? t->out->bytes : 0) + (t->tls ? tp_tlsio_pending(t->tls) : 0);
}

void tp_transport_flush(struct tp_shard *sh, struct tp_transport *t)
{
    struct io_uring_sqe *sqe;
    struct tp_outq **qp = &t->out;

    if (t->closing || t->fd < 0)
        return;
    if (t->tls) {
        /* plaintext waits for the end of the handshake; handshake messages do not */
        if (!tp_tlsio_encrypt(sh, t->tls, t->tls->hs_done ? &t->out : NULL)) {
            t->rst = true;
            tp_transport_close(sh, t);
            return;
        }
        qp = &t->tls->wire;
    } else if (t->connecting) {
        return;
    }
    struct tp_outq *q = *qp;
    if (t->send_busy || !q || q->n == 0)
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
        io_uring_prep_send(sqe, t->fd, q->iov[0].iov_base, q->iov[0].iov_len, MSG_NOSIGNAL | MSG_WAITALL);
    else
        io_uring_prep_sendmsg(sqe, t->fd, &q->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_send, t->slot.slot, t->slot.gen));
    t->send_busy = true;
    t->ops++;
}

static void on_send(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    struct tp_transport *t = tp_slab_lookup(sh, tp_ud_slot(cqe->user_data), tp_ud_gen(cqe->user_data));
    int res = cqe->res;

    if (!t)
        return;
    t->send_busy = false;
    t->ops--;
    if (t->closing) {
        finish(sh, t);
        return;
    }
    if (res >= 0) {
        struct tp_outq **qp = t->tls ? &t->tls->wire : &t->out;
        if (tp_outq_sent(sh, *qp, (uint32_t)res))
            tp_outq_clear(sh, qp);
        tp_transport_flush(sh, t);
        if (t->closing)
            return;
    }
    t->proto->on_sent(sh, t, res);
}

void tp_transport_close_notify(struct tp_shard *sh, struct tp_transport *t)
{
    if (t->tls && !t->peer_closed)
        tp_tlsio_shutdown(sh, t->tls); /* close_notify, sent before our FIN */
}

void tp_transport_shutdown(struct tp_shard *sh, struct tp_transport *t)
{
    if (t->shut || t->closing)
        return;
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_shutdown(sqe, t->fd, SHUT_WR);
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_shutdown, t->slot.slot, t->slot.gen));
    t->ops++;
    t->shut = true;
}

/* ------------------------------------------------------------------ */
/* connect                                                             */
/* ------------------------------------------------------------------ */

static void on_connect(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    struct tp_transport *t = tp_slab_lookup(sh, tp_ud_slot(cqe->user_data), tp_ud_gen(cqe->user_data));
    int res = cqe->res;

    if (!t)
        return;
    t->ops--;
    if (t->closing) {
        finish(sh, t);
        return;
    }
    if (res < 0) {
        t->connecting = false;
        t->proto->on_connected(sh, t, res);
        return;
    }
    if (t->tls) {
        /* TLS: the handshake first; on_connected comes with its last message */
        tp_transport_recv(sh, t);
        if (tp_tlsio_handshake(sh, t->tls) == TP_TLSIO_ERROR) {
            t->connecting = false;
            t->proto->on_connected(sh, t, TP_ETLS);
            return;
        }
        tp_transport_flush(sh, t);
        return;
    }
    t->connecting = false;
    tp_transport_recv(sh, t);
    t->proto->on_connected(sh, t, 0);
}

/* ------------------------------------------------------------------ */
/* closing                                                             */
/* ------------------------------------------------------------------ */

void tp_transport_close(struct tp_shard *sh, struct tp_transport *t)
{
    if (t->closing)
        return;
    t->closing = true;
    tp_timer_cancel(&sh->wheel, &t->timer);
    unstarve(sh, t);
    stopped_del(sh, t);
    if (t->ops) {
        struct io_uring_sqe *sqe = tp_sqe(sh);
        io_uring_prep_cancel_fd(sqe, t->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_cancel, t->slot.slot, t->slot.gen));
        t->ops++;
        return;
    }
    finish(sh, t);
}

/* Once no operation is in flight, queues and buffers go and the socket is closed. */
static void finish(struct tp_shard *sh, struct tp_transport *t)
{
    if (!t->closing || t->ops)
        return;
    tp_inq_clear(sh, &t->in);
    tp_outq_clear(sh, &t->out);
    if (t->tls) {
        tp_tlsio_destroy(sh, t->tls);
        t->tls = NULL;
    }
    if (t->fd < 0) {
        t->proto->on_closed(sh, t);
        return;
    }
    if (t->rst) {
        /* abort: a reset tells the peer the message is incomplete */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(t->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    struct io_uring_sqe *sqe = tp_sqe(sh);
#ifdef TP_TSAN
    /* ThreadSanitizer sees neither io_uring's accept nor its close: a socket
     * number another thread gets next would look like a race on the fd.
     * close(2) lets its interceptor forget the fd; the completion still comes
     * through the ring (a NOP) as in production. */
    close(t->fd);
    io_uring_prep_nop(sqe);
#else
    io_uring_prep_close(sqe, t->fd);
#endif
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_close, t->slot.slot, t->slot.gen));
    t->fd = -1;
    t->ops++;
}

/* cancel and shutdown completions */
static void on_op_done(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    struct tp_transport *t = tp_slab_lookup(sh, tp_ud_slot(cqe->user_data), tp_ud_gen(cqe->user_data));

    if (!t)
        return;
    t->ops--;
    if (tp_ud_op(cqe->user_data) == (unsigned)op_shutdown && cqe->res < 0 && !t->closing) {
        tp_transport_close(sh, t);
        return;
    }
    finish(sh, t);
}

static void on_close(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    struct tp_transport *t = tp_slab_lookup(sh, tp_ud_slot(cqe->user_data), tp_ud_gen(cqe->user_data));

    if (!t)
        return;
    t->ops--;
    t->proto->on_closed(sh, t);
}

/* ------------------------------------------------------------------ */
/* registration                                                        */
/* ------------------------------------------------------------------ */

static int transport_create(struct tp_shard *sh, unsigned idx)
{
    sh->ext[idx] = calloc(1, sizeof(struct tp_transport_shard));
    return sh->ext[idx] ? 0 : -ENOMEM;
}

static void transport_destroy(struct tp_shard *sh)
{
    free(sh->ext[ext_idx]);
    sh->ext[ext_idx] = NULL;
}

static const struct tp_shard_hooks transport_hooks = {
    .create = transport_create,
    .tick = transport_tick,
    .destroy = transport_destroy,
};

int tp_transport_register(void)
{
    if (op_recv >= 0)
        return 0;
    op_recv = tp_reactor_op_register(on_recv);
    op_send = tp_reactor_op_register(on_send);
    op_connect = tp_reactor_op_register(on_connect);
    op_cancel = tp_reactor_op_register(on_op_done);
    op_shutdown = tp_reactor_op_register(on_op_done);
    op_close = tp_reactor_op_register(on_close);
    ext_idx = tp_shard_hooks_register(&transport_hooks);
    if (op_recv < 0 || op_send < 0 || op_connect < 0 || op_cancel < 0 || op_shutdown < 0 || op_close < 0 ||
        ext_idx < 0)
        return -1;
    return 0;
}

bool tp_transport_alpn(const struct tp_transport *t, const char **proto, unsigned *len)
{
    const unsigned char *p = NULL;

    *len = 0;
    if (t->tls)
        SSL_get0_alpn_selected(t->tls->ssl, &p, len);
    *proto = (const char *)p;
    return p && *len;
}
