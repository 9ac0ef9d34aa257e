/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the transport (src/transport/transport.h) over a real shard
 * run on this thread (fake_reactor.h): a dummy session records every
 * callback of struct tp_transport_ops while the test drives the other end
 * of the socket (socketpair or loopback TCP) with plain syscalls.
 *
 * Covered: bytes arrive in t->in in order across many sends; on_input for
 * EOF and for a reset; tp_transport_flush of static, block and slice
 * segments (a slice of a received buffer is sent from that buffer, which
 * goes back to the ring only once the send completed); a queue larger than
 * one send; backpressure (TP_INQ_STOP unconsumed buffers stop the receive,
 * consuming resumes it); starvation (the small buffer ring runs dry, the
 * transport waits on the starved list and is re-armed as soon as buffers
 * come back); the deadline fires on_timeout once; tp_transport_close with
 * operations in flight calls on_closed once, after the last completion,
 * and nothing after it; completions for a freed and reused slot are
 * ignored (their buffer still goes back); connect refused and connect ok;
 * TLS both ways between a client and a server transport, and a failed
 * handshake. Every test ends with no provided buffer held and no
 * connection object left; ASan checks blocks and queues.
 *
 * Exits 77 (skip) when io_uring is unavailable. Single-threaded.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <turnpike/err.h>

#include "fake_reactor.h"
#include "tap.h"
#include "transport/tlsio.h"
#include "transport/transport.h"

#define NBUF  64    /* provided buffers: few, so that the ring can be run dry */
#define BUFSZ 4096  /* [bytes] each */
#define WAIT  10000 /* [ms] bound of every wait (never reached unless something is broken) */

static int slab_id;

/* ------------------------------------------------------------------ */
/* a dummy session                                                     */
/* ------------------------------------------------------------------ */

/* What the session saw; lives outside the connection object, which on_closed may free. */
struct rec {
    int input, sent, connected, timeout, error, closed;
    int connected_err, error_err;
    int eof, reset;       /* on_input calls with peer_closed / reset set */
    int after_close;      /* callbacks other than on_closed once the test asked to close */
    bool closing;         /* the test called tp_transport_close */
    long long sent_bytes; /* sum of positive on_sent results */
    int sent_err;         /* last negative on_sent result */
    int ops_at_closed;
    bool armed_at_closed, busy_at_closed;
    bool timeout_late_ok; /* on_timeout came at or after the deadline */
};

enum mode {
    M_CONSUME = 0,  /* on_input takes every byte (into got) */
    M_HOLD,         /* bytes stay in t->in; no backpressure */
    M_BACKPRESSURE, /* bytes stay in t->in; tp_transport_backpressure after each input */
};

struct tconn {
    struct tp_transport t; /* first: the slab header */
    struct rec *rec;
    int mode;
    bool keep; /* on_closed leaves the object allocated, so any later call would still reach it */
    char *got;
    size_t got_len, got_cap;
};

static void got_append(struct tconn *c, const char *p, size_t n)
{
    if (c->got_len + n > c->got_cap) {
        size_t cap = c->got_cap ? c->got_cap : 4096;
        while (cap < c->got_len + n)
            cap *= 2;
        c->got = realloc(c->got, cap);
        if (!c->got)
            abort();
        c->got_cap = cap;
    }
    memcpy(c->got + c->got_len, p, n);
    c->got_len += n;
}

/* Takes every queued byte, in order, the way a session consumes its input. */
static void take_all(struct tp_shard *sh, struct tconn *c)
{
    struct tp_rbuf *e;

    while ((e = tp_inq_front(&c->t.in))) {
        got_append(c, tp_rbuf_data(sh, e), e->len);
        tp_inq_consume(sh, &c->t.in, e->len);
    }
}

static void note_call(struct tconn *c)
{
    if (c->rec->closing || c->rec->closed)
        c->rec->after_close++;
}

static void s_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tconn *c = (struct tconn *)t;

    note_call(c);
    c->rec->input++;
    if (t->peer_closed)
        c->rec->eof++;
    if (t->reset)
        c->rec->reset++;
    if (c->mode == M_CONSUME)
        take_all(sh, c);
    if (c->mode != M_HOLD)
        tp_transport_backpressure(sh, t);
}

static void s_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tconn *c = (struct tconn *)t;

    note_call(c);
    c->rec->sent++;
    if (res >= 0)
        c->rec->sent_bytes += res;
    else
        c->rec->sent_err = res;
}

static void s_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tconn *c = (struct tconn *)t;

    note_call(c);
    c->rec->connected++;
    c->rec->connected_err = err;
}

static void s_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tconn *c = (struct tconn *)t;

    note_call(c);
    c->rec->timeout++;
    c->rec->timeout_late_ok = sh->now_ms >= t->deadline_ms;
}

static void s_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tconn *c = (struct tconn *)t;

    note_call(c);
    c->rec->error++;
    c->rec->error_err = err;
}

static void s_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tconn *c = (struct tconn *)t;

    c->rec->closed++;
    c->rec->ops_at_closed = t->ops;
    c->rec->armed_at_closed = t->recv_armed;
    c->rec->busy_at_closed = t->send_busy;
    free(c->got);
    c->got = NULL;
    c->got_len = c->got_cap = 0;
    if (!c->keep)
        tp_slab_free(sh, c);
}

static const struct tp_transport_ops dummy_ops = {
    .on_input = s_on_input,
    .on_sent = s_on_sent,
    .on_connected = s_on_connected,
    .on_timeout = s_on_timeout,
    .on_error = s_on_error,
    .on_closed = s_on_closed,
};

/* A connection of the dummy session on <fd> (-1: to be connected); <ssl> makes it TLS. */
static struct tconn *tconn_new(struct tp_shard *sh, int fd, struct rec *r, int mode, SSL *ssl)
{
    struct tconn *c = tp_slab_alloc(sh, (unsigned)slab_id);

    if (!c || tp_transport_init(&c->t, fd, &dummy_ops, ssl) < 0)
        abort();
    memset(r, 0, sizeof(*r));
    c->rec = r;
    c->mode = mode;
    return c;
}

/* ------------------------------------------------------------------ */
/* the test's side of the sockets                                      */
/* ------------------------------------------------------------------ */

struct peer {
    int fd;
    const char *out; /* bytes to write */
    size_t out_len, out_off;
    size_t piece; /* write at most this much per send(2) (0: as much as fits) */
    unsigned k;   /* sends so far (varies the piece size) */
    char *in;     /* bytes read */
    size_t in_len, in_cap;
    bool no_read; /* leave received bytes in the socket */
    bool eof;
};

static void peer_init(struct peer *p, int fd)
{
    memset(p, 0, sizeof(*p));
    p->fd = fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void peer_dispose(struct peer *p)
{
    free(p->in);
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
}

/* Writes and reads what the socket allows now, without blocking. */
static void peer_pump(struct peer *p)
{
    while (p->out_off < p->out_len) {
        size_t n = p->out_len - p->out_off;
        if (p->piece) {
            size_t piece = 1 + (p->k++ * 131) % p->piece; /* 1..piece bytes, varying */
            if (n > piece)
                n = piece;
        }
        ssize_t w = send(p->fd, p->out + p->out_off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w <= 0)
            break;
        p->out_off += (size_t)w;
    }
    while (!p->no_read && !p->eof) {
        if (p->in_cap - p->in_len < 65536) {
            p->in_cap = p->in_cap ? p->in_cap * 2 : 1 << 20;
            p->in = realloc(p->in, p->in_cap);
            if (!p->in)
                abort();
        }
        ssize_t n = recv(p->fd, p->in + p->in_len, p->in_cap - p->in_len, MSG_DONTWAIT);
        if (n > 0)
            p->in_len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            p->eof = true;
        else
            break;
    }
}

/* Bytes waiting unread in the socket's receive queue. */
static int unread_bytes(int fd)
{
    int n = -1;
    return ioctl(fd, FIONREAD, &n) == 0 ? n : -1;
}

static void fill_pattern(char *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (char)((i * 131 + (i >> 8) * 7 + seed) & 0xff);
}

/* A socketpair: [0] for the transport (blocking, as the ring wants), [1] for the test's peer. */
static void pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
        abort();
}

/* A loopback TCP listener on an ephemeral port; its address in <a>. */
static int tcp_listener(struct tp_addr *a)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

    memset(a, 0, sizeof(*a));
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a->len = sizeof(*in);
    if (fd == -1 || bind(fd, (struct sockaddr *)in, a->len) == -1 || listen(fd, 16) == -1 ||
        getsockname(fd, (struct sockaddr *)in, &a->len) == -1)
        abort();
    snprintf(a->text, sizeof(a->text), "127.0.0.1:%u", ntohs(in->sin_port));
    return fd;
}

/* Accepts one connection when one is waiting (blocking fd, for a transport); -1 when none. */
static int try_accept(int lfd)
{
    return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

/* A connected TCP pair over loopback: *<a> for the transport, *<b> for the peer. */
static void tcp_pair(int *a, int *b)
{
    struct tp_addr ad;
    int lfd = tcp_listener(&ad);
    struct pollfd pfd = {.fd = lfd, .events = POLLIN};

    *b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*b == -1 || connect(*b, (struct sockaddr *)&ad.ss, ad.len) == -1 || poll(&pfd, 1, WAIT) != 1)
        abort();
    *a = try_accept(lfd);
    if (*a < 0)
        abort();
    close(lfd);
}

/* An address nothing listens on: bound, then closed. */
static void closed_port(struct tp_addr *a)
{
    int fd = tcp_listener(a);
    close(fd);
}

/* ------------------------------------------------------------------ */
/* waiting: the loop turns, the peers are pumped between iterations    */
/* ------------------------------------------------------------------ */

struct w {
    struct peer *p[2];
    bool (*cond)(struct tp_shard *sh, struct w *x);
    struct tconn *c[2];
    struct rec *r[2];
    size_t want;
    int lfd;          /* accept from here into srv (TLS tests) */
    SSL_CTX *srv_ctx; /* NULL: plain */
    struct rec *srv_rec;
    struct tconn *srv;
    struct peer *accept_into; /* plain accept: the accepted fd becomes this peer */
};

static bool w_until(struct tp_shard *sh, void *v)
{
    struct w *x = v;

    if (x->lfd >= 0 && !x->srv && !(x->accept_into && x->accept_into->fd >= 0)) {
        int fd = try_accept(x->lfd);
        if (fd >= 0 && x->accept_into) {
            peer_init(x->accept_into, fd);
        } else if (fd >= 0) {
            SSL *ssl = SSL_new(x->srv_ctx);
            SSL_set_accept_state(ssl);
            x->srv = tconn_new(sh, fd, x->srv_rec, M_CONSUME, ssl);
            tp_transport_recv(sh, &x->srv->t);
        }
    }
    for (int i = 0; i < 2; i++)
        if (x->p[i] && x->p[i]->fd >= 0)
            peer_pump(x->p[i]);
    return x->cond(sh, x);
}

static bool wait_for(struct tp_shard *sh, struct w *x, bool (*cond)(struct tp_shard *, struct w *))
{
    x->cond = cond;
    return fake_reactor_run(sh, w_until, x, WAIT);
}

static void w_init(struct w *x)
{
    memset(x, 0, sizeof(*x));
    x->lfd = -1;
}

static bool c_got_want(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->got_len >= x->want;
}
static bool r_eof(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->eof > 0;
}
static bool r_closed(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->closed > 0;
}
static bool r_closed_both(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->closed > 0 && x->r[1]->closed > 0;
}
static bool p_got_want(struct tp_shard *sh, struct w *x)
{
    return x->p[0]->in_len >= x->want;
}
static bool p_eof(struct tp_shard *sh, struct w *x)
{
    return x->p[0]->eof;
}
static bool r_connected(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->connected > 0;
}
static bool r_timeout(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->timeout > 0;
}
static bool out_empty(struct tp_shard *sh, struct w *x)
{
    return !x->c[0]->t.out && !x->c[0]->t.send_busy && x->p[0]->in_len >= x->want;
}

/* Closes <c> the way a session does and waits for on_closed. */
static void close_and_wait(struct tp_shard *sh, struct tconn *c, struct rec *r)
{
    struct w x;

    w_init(&x);
    x.r[0] = r;
    r->closing = true;
    tp_transport_close(sh, &c->t);
    wait_for(sh, &x, r_closed);
}

/* What every test ends with: no buffer held, no connection object left. */
static void check_clean(struct tp_shard *sh, const char *what)
{
    is_int(sh->bufs.held, 0, "%s: no provided buffer held", what);
    is_int(sh->slabs[slab_id].live, 0, "%s: no connection object left", what);
}

static struct tp_shard *reactor(void)
{
    bool skip;
    struct tp_shard *sh = fake_reactor_create(NBUF, BUFSZ, &skip);

    if (!sh && skip) {
        printf("1..0 # SKIP io_uring unavailable\n");
        exit(77);
    }
    if (!sh) {
        printf("Bail out! cannot set up a shard\n");
        exit(1);
    }
    return sh;
}

/* ------------------------------------------------------------------ */
/* receiving                                                           */
/* ------------------------------------------------------------------ */

static void test_recv_in_order(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t total = 300000;
    char *data = malloc(total);

    fill_pattern(data, total, 1);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = data;
    p.out_len = total;
    p.piece = 700; /* many small sends */
    struct tconn *c = tconn_new(sh, sv[0], &r, M_CONSUME, NULL);
    tp_transport_recv(sh, &c->t);

    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    x.want = total;
    ok(wait_for(sh, &x, c_got_want), "recv: %zu bytes arrive", total);
    ok(c->got_len == total && memcmp(c->got, data, total) == 0, "recv: in order, byte for byte (%zu sends)",
       (size_t)p.k);
    ok(r.input > 1, "recv: on_input once per completion (%d)", r.input);
    is_int(r.eof, 0, "recv: no EOF yet");

    shutdown(p.fd, SHUT_WR);
    ok(wait_for(sh, &x, r_eof), "recv: EOF reported");
    ok(c->t.peer_closed && !c->t.reset, "recv: peer_closed, not reset");
    is_int(r.reset, 0, "recv: a FIN is no reset");
    ok(!c->t.recv_armed, "recv: not re-armed after EOF");
    int inputs = r.input;

    close_and_wait(sh, c, &r);
    is_int(r.closed, 1, "recv: on_closed once");
    is_int(r.input, inputs, "recv: no input after close");
    is_int(r.ops_at_closed, 0, "recv: no op in flight at on_closed");
    check_clean(sh, "recv");
    peer_dispose(&p);
    free(data);
    fake_reactor_destroy(sh);
}

static void test_reset(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int a, b;

    tcp_pair(&a, &b);
    peer_init(&p, b);
    struct tconn *c = tconn_new(sh, a, &r, M_CONSUME, NULL);
    tp_transport_recv(sh, &c->t);
    p.out = "before the reset";
    p.out_len = strlen(p.out);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    x.want = p.out_len;
    ok(wait_for(sh, &x, c_got_want), "reset: data first");

    /* SO_LINGER 0: close sends a RST */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(p.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(p.fd);
    p.fd = -1;
    x.p[0] = NULL;
    ok(wait_for(sh, &x, r_eof), "reset: on_input for the reset");
    ok(c->t.reset && c->t.peer_closed, "reset: t->reset and t->peer_closed");
    ok(r.reset >= 1, "reset: the session saw reset set");
    close_and_wait(sh, c, &r);
    is_int(r.closed, 1, "reset: on_closed once");
    check_clean(sh, "reset");
    peer_dispose(&p);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* sending                                                             */
/* ------------------------------------------------------------------ */

static bool in_has_3000(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->t.in.bytes >= 3000;
}

static bool in_has_want(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->t.in.bytes >= x->want;
}

static bool send_busy_unread(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->t.send_busy && unread_bytes(x->p[0]->fd) > 0;
}

static void test_send_segments(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    char msg[3000];
    size_t big_len = 4u << 20; /* more than the socket buffers take: the send waits for the reader */
    char *big = malloc(big_len);

    fill_pattern(msg, sizeof(msg), 2);
    fill_pattern(big, big_len, 3);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = msg;
    p.out_len = sizeof(msg);
    struct tconn *c = tconn_new(sh, sv[0], &r, M_HOLD, NULL);
    tp_transport_recv(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, in_has_3000), "send: received the bytes to slice");

    struct tp_rbuf *e = tp_inq_front(&c->t.in);
    if (!ok(e->len == sizeof(msg), "send: the bytes came in one buffer"))
        abort(); /* the slice offsets below assume it */
    uint16_t bid = e->bid;
    const char *slice = tp_rbuf_data(sh, e) + 100;
    uint32_t slice_len = e->len - 100 > 2500 ? 2500 : e->len - 100;
    struct tp_block *blk = tp_block_get(sh, 64);
    memcpy(blk->data, "|block|", 7);
    blk->len = 7;

    ok(tp_outq_push_static(sh, &c->t.out, big, (uint32_t)big_len), "send: static segment queued");
    ok(tp_outq_push_static(sh, &c->t.out, "static|", 7), "send: second static segment queued");
    ok(tp_outq_push_slice(sh, &c->t.out, tp_rbuf_ref(e), slice, slice_len), "send: slice queued");
    ok(tp_outq_push_block(sh, &c->t.out, blk), "send: block queued");
    const struct tp_seg *sg = &c->t.out->seg[2];
    ok(sg->kind == TP_SEG_RBUF && sg->p == slice && sg->bid == bid,
       "send: the slice points into the buffer (no copy)");
    is_int(sh->bufs.refs[bid], 2, "send: the buffer has two holders (queue, slice)");
    tp_inq_consume(sh, &c->t.in, c->t.in.bytes);
    is_int(sh->bufs.refs[bid], 1, "send: the receive queue let go, the send queue holds it");
    is_int(sh->bufs.held, 1, "send: one buffer held");

    p.no_read = true; /* the send cannot complete while nobody reads */
    tp_transport_flush(sh, &c->t);
    ok(wait_for(sh, &x, send_busy_unread), "send: in flight, the reader is full");
    fake_reactor_spin(sh, 3, 1);
    ok(c->t.send_busy, "send: still in flight");
    is_int(sh->bufs.refs[bid], 1, "send: the buffer stays held while its bytes are in flight");
    is_int(sh->bufs.held, 1, "send: still one buffer held");
    is_int(r.sent, 0, "send: no on_sent yet");

    size_t total = big_len + 7 + slice_len + 7;
    p.no_read = false;
    x.want = total;
    ok(wait_for(sh, &x, out_empty), "send: everything sent");
    ok(r.sent >= 1 && r.sent_bytes == (long long)total, "send: on_sent reports %lld bytes", r.sent_bytes);
    is_int(sh->bufs.refs[bid], 0, "send: the buffer went back once sent");
    is_int(sh->bufs.held, 0, "send: no buffer held");
    bool same =
        p.in_len == total && memcmp(p.in, big, big_len) == 0 && memcmp(p.in + big_len, "static|", 7) == 0;
    same = same && memcmp(p.in + big_len + 7, msg + 100, slice_len) == 0 &&
           memcmp(p.in + big_len + 7 + slice_len, "|block|", 7) == 0;
    ok(same, "send: the peer got static, static, slice, block in order");
    is_int(tp_transport_pending(&c->t), 0, "send: nothing pending");

    close_and_wait(sh, c, &r);
    check_clean(sh, "send");
    peer_dispose(&p);
    free(big);
    fake_reactor_destroy(sh);
}

static void test_send_large_queue(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    enum { SEGS = 60, SEGLEN = 16384 };
    char *src = malloc((size_t)SEGS * SEGLEN);

    fill_pattern(src, (size_t)SEGS * SEGLEN, 4);
    pair(sv);
    peer_init(&p, sv[1]);
    struct tconn *c = tconn_new(sh, sv[0], &r, M_CONSUME, NULL);
    tp_transport_recv(sh, &c->t);
    bool queued = true;
    for (int i = 0; i < SEGS; i++) {
        if (i % 3 == 1) {
            struct tp_block *b = tp_block_get(sh, SEGLEN);
            memcpy(b->data, src + (size_t)i * SEGLEN, SEGLEN);
            b->len = SEGLEN;
            queued = queued && tp_outq_push_block(sh, &c->t.out, b);
        } else {
            queued = queued && tp_outq_push_static(sh, &c->t.out, src + (size_t)i * SEGLEN, SEGLEN);
        }
    }
    ok(queued, "large: %d segments queued (more than %d per send)", SEGS, TP_SEND_IOV);
    tp_transport_flush(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    x.want = (size_t)SEGS * SEGLEN;
    ok(wait_for(sh, &x, out_empty), "large: the whole queue went out");
    ok(r.sent >= 2, "large: in several sends (%d)", r.sent);
    ok(r.sent_bytes == (long long)x.want, "large: on_sent counted every byte");
    ok(p.in_len == x.want && memcmp(p.in, src, x.want) == 0, "large: the peer got every byte in order");
    close_and_wait(sh, c, &r);
    check_clean(sh, "large");
    peer_dispose(&p);
    free(src);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* backpressure and starvation                                         */
/* ------------------------------------------------------------------ */

static bool stopped_settled(struct tp_shard *sh, struct w *x)
{
    struct tp_transport *t = &x->c[0]->t;
    return t->recv_stopped && !t->recv_armed && x->p[0]->out_off == x->p[0]->out_len;
}

static void test_backpressure(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t first = 20 * BUFSZ, second = 16384;
    char *data = malloc(first + second);

    fill_pattern(data, first + second, 5);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = data;
    p.out_len = first;
    struct tconn *c = tconn_new(sh, sv[0], &r, M_BACKPRESSURE, NULL);
    tp_transport_recv(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, stopped_settled), "backpressure: the receive stopped");
    ok(c->t.in.n >= TP_INQ_STOP, "backpressure: %u buffers wait unconsumed (stop at %d)", c->t.in.n,
       TP_INQ_STOP);

    /* more bytes while stopped: they stay in the kernel */
    int inputs = r.input;
    uint32_t queued = c->t.in.bytes;
    p.out_len = first + second;
    peer_pump(&p);
    fake_reactor_spin(sh, 5, 2);
    is_int(r.input, inputs, "backpressure: no on_input while stopped");
    ok(c->t.in.bytes == queued && !c->t.recv_armed, "backpressure: nothing more received");
    is_int(unread_bytes(c->t.fd), (long long)(first + second - queued),
           "backpressure: the rest waits in the socket");

    /* the session consumes: the receive resumes */
    take_all(sh, c);
    c->mode = M_CONSUME;
    tp_transport_backpressure(sh, &c->t);
    ok(!c->t.recv_stopped, "backpressure: resumed after consuming");
    x.want = first + second;
    ok(wait_for(sh, &x, c_got_want), "backpressure: the rest arrives");
    ok(c->got_len == first + second && memcmp(c->got, data, first + second) == 0,
       "backpressure: every byte, in order");
    close_and_wait(sh, c, &r);
    check_clean(sh, "backpressure");
    peer_dispose(&p);
    free(data);
    fake_reactor_destroy(sh);
}

static bool in_has_two(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->t.in.n >= 2 && x->p[0]->out_off == x->p[0]->out_len;
}

/* While more than half of the pool is held, two waiting buffers stop the
 * receive (instead of TP_INQ_STOP), and it resumes at one. */
static void test_backpressure_pressed(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t len = 2 * BUFSZ;
    char *data = malloc(len);
    uint32_t pressure = sh->bufs.count / 2 + 1;

    fill_pattern(data, len, 7);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = data;
    p.out_len = len;
    struct tconn *c = tconn_new(sh, sv[0], &r, M_HOLD, NULL);
    tp_transport_recv(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, in_has_two), "pressed: two buffers queued");
    ok(!tp_bufs_pressed(sh), "pressed: not yet");
    tp_transport_backpressure(sh, &c->t);
    ok(!c->t.recv_stopped, "pressed: two buffers do not stop an unpressed receive");
    ok(tp_queue_budget(sh, 1024) == 1024, "pressed: the full budget while unpressed");

    sh->bufs.held += pressure; /* as if other connections held most of the pool */
    ok(tp_bufs_pressed(sh), "pressed: over half of the pool held");
    ok(tp_queue_budget(sh, 1024) == 128, "pressed: an eighth of the budget");
    tp_transport_backpressure(sh, &c->t);
    ok(c->t.recv_stopped, "pressed: two buffers stop the receive");
    tp_inq_consume(sh, &c->t.in, tp_inq_front(&c->t.in)->len);
    if (c->t.in.n == 1) {
        tp_transport_backpressure(sh, &c->t);
        ok(!c->t.recv_stopped, "pressed: one buffer left: reading resumes");
    }
    sh->bufs.held -= pressure;

    take_all(sh, c);
    close_and_wait(sh, c, &r);
    check_clean(sh, "pressed");
    peer_dispose(&p);
    free(data);
    fake_reactor_destroy(sh);
}

static unsigned pinned(const struct tp_inq *q)
{
    unsigned n = 0;

    for (uint16_t i = 0; i < q->n; i++)
        n += q->e[(q->head + i) & (q->cap - 1)].blk == NULL;
    return n;
}

/* A receive stopped before the pool became pressed gives back every buffer but its
 * first at the next tick once it is (its bytes move to heap blocks); one that stops
 * while pressed does so at once. The bytes still arrive whole and in order. */
static void test_pressed_unpin(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t first = 20 * BUFSZ, len = first + 6 * BUFSZ;
    char *data = malloc(len);
    uint32_t pressure = sh->bufs.count / 2 + 1;

    fill_pattern(data, len, 9);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = data;
    p.out_len = first;
    struct tconn *c = tconn_new(sh, sv[0], &r, M_BACKPRESSURE, NULL);
    tp_transport_recv(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, stopped_settled), "unpin: the receive stopped");
    uint16_t n = c->t.in.n;
    uint32_t bytes = c->t.in.bytes;
    ok(n >= TP_INQ_STOP && pinned(&c->t.in) == n && sh->bufs.held == n,
       "unpin: %u buffers pinned by the stopped receive, pool not pressed", (unsigned)n);

    sh->bufs.held += pressure; /* as if other connections held most of the pool */
    fake_reactor_spin(sh, 2, 1);
    is_int(pinned(&c->t.in), 1, "unpin: after the tick only the front buffer is pinned");
    is_int(sh->bufs.held - pressure, 1, "unpin: the others went back to the pool");
    ok(c->t.in.n == n && c->t.in.bytes == bytes, "unpin: the same entries and bytes are queued");

    /* consumed and resumed while pressed, more bytes come: it stops at two, and keeps one pinned */
    take_all(sh, c);
    p.out_len = len;
    peer_pump(&p);
    tp_transport_backpressure(sh, &c->t);
    ok(!c->t.recv_stopped, "unpin: resumed after consuming");
    ok(wait_for(sh, &x, stopped_settled), "unpin: stopped again");
    ok(c->t.in.n >= 2 && pinned(&c->t.in) == 1, "unpin: stopped while pressed: %u queued, %u pinned",
       (unsigned)c->t.in.n, pinned(&c->t.in));
    sh->bufs.held -= pressure;

    take_all(sh, c);
    c->mode = M_CONSUME;
    tp_transport_backpressure(sh, &c->t);
    x.want = len;
    ok(wait_for(sh, &x, c_got_want), "unpin: the rest arrives");
    ok(c->got_len == len && memcmp(c->got, data, len) == 0, "unpin: every byte, in order");
    close_and_wait(sh, c, &r);
    check_clean(sh, "unpin");
    peer_dispose(&p);
    free(data);
    fake_reactor_destroy(sh);
}

static struct tconn *starve_conn;
static bool starve_fired;

/* Buffers come back in the middle of an iteration, as when a send completion releases them. */
static void starve_timer(struct tp_timer *tm, uint64_t now_ms)
{
    struct tp_shard *sh = tp_self;

    take_all(sh, starve_conn);
    starve_conn->mode = M_CONSUME;
    starve_fired = true;
}

static bool is_starved(struct tp_shard *sh, struct w *x)
{
    return x->c[0]->t.starved;
}

static bool fired(struct tp_shard *sh, struct w *x)
{
    return starve_fired;
}

static void test_starvation(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t total = (size_t)NBUF * BUFSZ + 50000;
    char *data = malloc(total);
    struct tp_timer tm;

    fill_pattern(data, total, 6);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = data;
    p.out_len = total;
    struct tconn *c = tconn_new(sh, sv[0], &r, M_HOLD, NULL);
    tp_transport_recv(sh, &c->t);
    uint64_t enobufs0 = tp_stat_get(&sh->enobufs);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, is_starved), "starvation: the ring ran dry");
    ok(tp_stat_get(&sh->enobufs) > enobufs0, "starvation: enobufs counted");
    is_int(sh->bufs.held, NBUF, "starvation: every buffer held by the receive queue");
    ok(!c->t.recv_armed, "starvation: the receive is not armed");
    fake_reactor_spin(sh, 3, 1);
    ok(c->t.starved && !c->t.recv_armed, "starvation: it stays on the starved list while no buffer returns");

    starve_conn = c;
    starve_fired = false;
    tp_timer_init(&tm, starve_timer);
    tp_timer_arm(&sh->wheel, &tm, sh->now_ms);
    ok(wait_for(sh, &x, fired), "starvation: buffers returned");
    ok(!c->t.starved && c->t.recv_armed, "starvation: re-armed in the iteration its buffers came back");
    x.want = total;
    ok(wait_for(sh, &x, c_got_want), "starvation: the rest arrives");
    ok(c->got_len == total && memcmp(c->got, data, total) == 0, "starvation: every byte, in order");
    close_and_wait(sh, c, &r);
    check_clean(sh, "starvation");
    peer_dispose(&p);
    free(data);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* deadline                                                            */
/* ------------------------------------------------------------------ */

static bool sentinel_fired;
static void sentinel_fn(struct tp_timer *tm, uint64_t now_ms)
{
    sentinel_fired = true;
}
static bool sentinel(struct tp_shard *sh, struct w *x)
{
    return sentinel_fired;
}

static void test_deadline(void)
{
    struct tp_shard *sh = reactor();
    struct rec r;
    struct w x;
    struct tp_timer tm;
    int sv[2];

    pair(sv);
    struct tconn *c = tconn_new(sh, sv[0], &r, M_CONSUME, NULL);
    tp_transport_recv(sh, &c->t);
    tp_transport_deadline(sh, &c->t, sh->now_ms + 10);
    tp_transport_deadline(sh, &c->t, sh->now_ms + 30); /* later: taken when the timer fires */
    w_init(&x);
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, r_timeout), "deadline: on_timeout");
    ok(r.timeout_late_ok, "deadline: not before the moved deadline");
    sentinel_fired = false;
    tp_timer_init(&tm, sentinel_fn);
    tp_timer_arm(&sh->wheel, &tm, sh->now_ms + 60);
    ok(wait_for(sh, &x, sentinel), "deadline: a later timer fired");
    is_int(r.timeout, 1, "deadline: on_timeout exactly once");
    close_and_wait(sh, c, &r);
    check_clean(sh, "deadline");
    close(sv[1]);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* closing                                                             */
/* ------------------------------------------------------------------ */

static void test_close_inflight(void)
{
    struct tp_shard *sh = reactor();
    struct peer p;
    struct rec r;
    struct w x;
    int sv[2];
    size_t big_len = 4u << 20;
    char *big = malloc(big_len);

    memset(big, 'x', big_len);
    pair(sv);
    peer_init(&p, sv[1]);
    p.out = "some bytes to slice";
    p.out_len = strlen(p.out);
    p.no_read = true;
    struct tconn *c = tconn_new(sh, sv[0], &r, M_HOLD, NULL);
    c->keep = true;
    tp_transport_recv(sh, &c->t);
    w_init(&x);
    x.p[0] = &p;
    x.c[0] = c;
    x.r[0] = &r;
    x.want = p.out_len;
    /* a received buffer (sliced into the send queue too), an armed receive, a send that cannot finish */
    ok(wait_for(sh, &x, in_has_want), "close: bytes received");
    struct tp_rbuf *e = tp_inq_front(&c->t.in);
    tp_outq_push_static(sh, &c->t.out, big, (uint32_t)big_len);
    if (e)
        tp_outq_push_slice(sh, &c->t.out, tp_rbuf_ref(e), tp_rbuf_data(sh, e), e->len);
    tp_transport_flush(sh, &c->t);
    ok(wait_for(sh, &x, send_busy_unread), "close: a send is in flight");
    ok(c->t.recv_armed && c->t.send_busy && c->t.ops >= 2, "close: receive and send in flight (%u ops)",
       c->t.ops);

    r.closing = true;
    tp_transport_close(sh, &c->t);
    tp_transport_close(sh, &c->t); /* twice is fine */
    is_int(r.closed, 0, "close: on_closed waits for the operations");
    ok(wait_for(sh, &x, r_closed), "close: on_closed");
    is_int(r.closed, 1, "close: on_closed once");
    is_int(r.ops_at_closed, 0, "close: after every operation completed");
    ok(!r.armed_at_closed && !r.busy_at_closed, "close: no receive or send left at on_closed");
    fake_reactor_spin(sh, 5, 2);
    is_int(r.closed, 1, "close: still once");
    is_int(r.after_close, 0, "close: the session is never called after the close");
    p.no_read = false;
    ok(wait_for(sh, &x, p_eof), "close: the peer sees the socket closed");
    tp_slab_free(sh, c);
    check_clean(sh, "close");
    peer_dispose(&p);
    free(big);
    fake_reactor_destroy(sh);
}

/* The user_data of the SQE prepared last (not submitted yet). */
static uint64_t last_sqe_ud(struct tp_shard *sh)
{
    struct io_uring_sq *sq = &sh->ring.sq;
    return sq->sqes[(sq->sqe_tail - 1) & sq->ring_mask].user_data;
}

/* The stale receive took the bytes of <stale_fd> and its buffer went back; the new connection's send
 * completed. */
static int stale_fd;
static bool stale_done(struct tp_shard *sh, struct w *x)
{
    return unread_bytes(stale_fd) == 0 && sh->bufs.held == 0 && x->r[0]->sent == 1;
}

static void test_stale_generation(void)
{
    struct tp_shard *sh = reactor();
    struct rec ra, rb;
    struct w x;
    int sa[2], sb[2], sc[2];

    pair(sa);
    pair(sb);
    pair(sc);
    struct tconn *a = tconn_new(sh, sa[0], &ra, M_CONSUME, NULL);
    tp_transport_recv(sh, &a->t);
    unsigned op_recv = tp_ud_op(last_sqe_ud(sh));
    uint32_t slot = a->t.slot.slot, gen = a->t.slot.gen;
    close_and_wait(sh, a, &ra);
    is_int(ra.closed, 1, "stale: the first connection closed and was freed");

    struct tconn *b = tconn_new(sh, sb[0], &rb, M_CONSUME, NULL);
    ok(b->t.slot.slot == slot && b->t.slot.gen != gen, "stale: its slot is reused with a new generation");
    tp_transport_recv(sh, &b->t);
    tp_outq_push_static(sh, &b->t.out, "hi", 2);
    tp_transport_flush(sh, &b->t);
    unsigned op_send = tp_ud_op(last_sqe_ud(sh));

    /* completions addressed to the freed object: a receive EOF, a send, and a real receive carrying a buffer
     */
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, tp_ud(op_recv, slot, gen));
    sqe = tp_sqe(sh);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, tp_ud(op_send, slot, gen));
    if (write(sc[1], "stale bytes", 11) != 11)
        abort();
    sqe = tp_sqe(sh);
    io_uring_prep_recv(sqe, sc[0], NULL, BUFSZ, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = TP_BGID;
    io_uring_sqe_set_data64(sqe, tp_ud(op_recv, slot, gen));

    w_init(&x);
    x.r[0] = &rb;
    stale_fd = sc[0];
    ok(wait_for(sh, &x, stale_done), "stale: the stale completions were handled");
    is_int(rb.input, 0, "stale: no input reached the new connection");
    is_int(rb.sent, 1, "stale: only its own send completed");
    ok(b->t.ops == 1 && b->t.recv_armed && !b->t.send_busy, "stale: its op count is intact (%u)", b->t.ops);
    is_int(sh->bufs.held, 0, "stale: the buffer of the stale receive went back");
    char buf[8];
    ok(read(sb[1], buf, sizeof(buf)) == 2, "stale: the new connection's bytes arrived");
    close_and_wait(sh, b, &rb);
    is_int(rb.closed, 1, "stale: the new connection closes normally");
    check_clean(sh, "stale");
    close(sa[1]);
    close(sb[1]);
    close(sc[0]);
    close(sc[1]);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* connect                                                             */
/* ------------------------------------------------------------------ */

static void test_connect(void)
{
    struct tp_shard *sh = reactor();
    struct tp_addr a;
    struct rec r;
    struct w x;
    struct peer p;

    closed_port(&a);
    struct tconn *c = tconn_new(sh, -1, &r, M_CONSUME, NULL);
    is_int(tp_transport_connect(sh, &c->t, &a), 0, "connect: submitted to a closed port");
    w_init(&x);
    x.c[0] = c;
    x.r[0] = &r;
    ok(wait_for(sh, &x, r_connected), "connect refused: on_connected");
    ok(r.connected_err < 0, "connect refused: negative (%s)", tp_strerror(r.connected_err));
    close_and_wait(sh, c, &r);
    is_int(r.closed, 1, "connect refused: closes");
    check_clean(sh, "connect refused");

    int lfd = tcp_listener(&a);
    c = tconn_new(sh, -1, &r, M_CONSUME, NULL);
    is_int(tp_transport_connect(sh, &c->t, &a), 0, "connect: submitted to a listener");
    memset(&p, 0, sizeof(p));
    p.fd = -1;
    w_init(&x);
    x.c[0] = c;
    x.r[0] = &r;
    x.p[0] = &p;
    x.lfd = lfd;
    x.accept_into = &p;
    ok(wait_for(sh, &x, r_connected), "connect ok: on_connected");
    is_int(r.connected_err, 0, "connect ok: 0");
    ok(!c->t.connecting && c->t.recv_armed, "connect ok: receiving");
    tp_outq_push_static(sh, &c->t.out, "hello", 5);
    tp_transport_flush(sh, &c->t);
    x.want = 5;
    ok(wait_for(sh, &x, p_got_want) && memcmp(p.in, "hello", 5) == 0, "connect ok: bytes out");
    p.out = "world";
    p.out_len = 5;
    ok(wait_for(sh, &x, c_got_want) && memcmp(c->got, "world", 5) == 0, "connect ok: bytes in");
    close_and_wait(sh, c, &r);
    check_clean(sh, "connect ok");
    peer_dispose(&p);
    close(lfd);
    fake_reactor_destroy(sh);
}

/* ------------------------------------------------------------------ */
/* TLS                                                                 */
/* ------------------------------------------------------------------ */

static EVP_PKEY *tls_key;
static X509 *tls_cert;
static SSL_CTX *srv_ctx, *cli_ctx, *cli_bad_ctx;

/* A throwaway self-signed certificate for "localhost" and the three contexts. */
static bool tls_setup(void)
{
    tls_key = EVP_EC_gen("P-256");
    tls_cert = X509_new();
    if (!tls_key || !tls_cert)
        return false;
    X509_set_version(tls_cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(tls_cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(tls_cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(tls_cert), 86400);
    X509_set_pubkey(tls_cert, tls_key);
    X509_NAME *n = X509_get_subject_name(tls_cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(tls_cert, n);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "DNS:localhost");
    if (!ext)
        return false;
    X509_add_ext(tls_cert, ext, -1);
    X509_EXTENSION_free(ext);
    if (!X509_sign(tls_cert, tls_key, EVP_sha256()))
        return false;

    srv_ctx = SSL_CTX_new(TLS_server_method());
    cli_ctx = SSL_CTX_new(TLS_client_method());
    cli_bad_ctx = SSL_CTX_new(TLS_client_method());
    if (!srv_ctx || !cli_ctx || !cli_bad_ctx || SSL_CTX_use_certificate(srv_ctx, tls_cert) != 1 ||
        SSL_CTX_use_PrivateKey(srv_ctx, tls_key) != 1)
        return false;
    SSL_CTX_set_verify(cli_ctx, SSL_VERIFY_PEER, NULL);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(cli_ctx), tls_cert);
    SSL_CTX_set_verify(cli_bad_ctx, SSL_VERIFY_PEER, NULL); /* trusts nothing */
    return true;
}

static void tls_teardown(void)
{
    SSL_CTX_free(srv_ctx);
    SSL_CTX_free(cli_ctx);
    SSL_CTX_free(cli_bad_ctx);
    X509_free(tls_cert);
    EVP_PKEY_free(tls_key);
}

static SSL *client_ssl(SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    SSL_set_connect_state(ssl);
    return ssl;
}

static bool both_connected(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->connected > 0 && x->srv && x->srv_rec->connected > 0;
}

static bool both_got(struct tp_shard *sh, struct w *x)
{
    return x->srv->got_len >= x->want && x->c[0]->got_len >= x->want / 2;
}

static bool tls_failed(struct tp_shard *sh, struct w *x)
{
    return x->r[0]->connected > 0 && x->srv && (x->srv_rec->error > 0 || x->srv_rec->eof > 0);
}

static void test_tls(void)
{
    struct tp_shard *sh = reactor();
    struct tp_addr a;
    struct rec rc, rs;
    struct w x;
    size_t n = 100000;
    char *up = malloc(n), *down = malloc(n / 2);

    fill_pattern(up, n, 7);
    fill_pattern(down, n / 2, 8);
    int lfd = tcp_listener(&a);
    struct tconn *c = tconn_new(sh, -1, &rc, M_CONSUME, client_ssl(cli_ctx));
    is_int(tp_transport_connect(sh, &c->t, &a), 0, "tls: connect submitted");
    w_init(&x);
    x.c[0] = c;
    x.r[0] = &rc;
    x.lfd = lfd;
    x.srv_ctx = srv_ctx;
    x.srv_rec = &rs;
    ok(wait_for(sh, &x, both_connected), "tls: both handshakes completed");
    is_int(rc.connected_err, 0, "tls: client on_connected(0)");
    is_int(rs.connected_err, 0, "tls: server on_connected(0)");
    ok(tp_transport_is_tls(&c->t) && c->t.tls->hs_done && x.srv->t.tls->hs_done, "tls: both sides done");

    tp_outq_push_static(sh, &c->t.out, up, (uint32_t)n);
    tp_transport_flush(sh, &c->t);
    tp_outq_push_static(sh, &x.srv->t.out, down, (uint32_t)(n / 2));
    tp_transport_flush(sh, &x.srv->t);
    x.want = n;
    ok(wait_for(sh, &x, both_got), "tls: data both ways");
    ok(x.srv->got_len == n && memcmp(x.srv->got, up, n) == 0, "tls: client to server, decrypted in order");
    ok(c->got_len == n / 2 && memcmp(c->got, down, n / 2) == 0, "tls: server to client, decrypted in order");
    is_int(rc.error + rs.error, 0, "tls: no error");

    struct w y;
    w_init(&y);
    y.r[0] = &rc;
    y.r[1] = &rs;
    rc.closing = rs.closing = true;
    tp_transport_close(sh, &c->t);
    tp_transport_close(sh, &x.srv->t);
    ok(wait_for(sh, &y, r_closed_both), "tls: both close");
    ok(rc.closed == 1 && rs.closed == 1, "tls: on_closed once each");
    check_clean(sh, "tls");

    /* a client that trusts nothing: the handshake fails */
    c = tconn_new(sh, -1, &rc, M_CONSUME, client_ssl(cli_bad_ctx));
    is_int(tp_transport_connect(sh, &c->t, &a), 0, "tls failure: connect submitted");
    w_init(&x);
    x.c[0] = c;
    x.r[0] = &rc;
    x.lfd = lfd;
    x.srv_ctx = srv_ctx;
    x.srv_rec = &rs;
    ok(wait_for(sh, &x, tls_failed), "tls failure: both sides told");
    is_int(rc.connected, 1, "tls failure: client on_connected once");
    is_int(rc.connected_err, TP_ETLS, "tls failure: client on_connected(TP_ETLS)");
    is_int(rs.connected, 0, "tls failure: the server never completed");
    w_init(&y);
    y.r[0] = &rc;
    y.r[1] = &rs;
    rc.closing = rs.closing = true;
    tp_transport_close(sh, &c->t);
    tp_transport_close(sh, &x.srv->t);
    ok(wait_for(sh, &y, r_closed_both), "tls failure: both close");
    check_clean(sh, "tls failure");
    close(lfd);
    free(up);
    free(down);
    fake_reactor_destroy(sh);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (tp_transport_register() < 0 || (slab_id = tp_reactor_slab_register(sizeof(struct tconn))) < 0) {
        printf("Bail out! registration failed\n");
        return 1;
    }
    if (!tls_setup()) {
        printf("Bail out! cannot make a test certificate\n");
        return 1;
    }
    test_recv_in_order();
    test_reset();
    test_send_segments();
    test_send_large_queue();
    test_backpressure();
    test_backpressure_pressed();
    test_pressed_unpin();
    test_starvation();
    test_deadline();
    test_close_inflight();
    test_stale_generation();
    test_connect();
    test_tls();
    tls_teardown();
    return tap_done();
}
