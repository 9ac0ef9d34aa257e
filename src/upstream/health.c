/* SPDX-License-Identifier: MIT */
/*
 * Active health checks (upstreams[].health_check), run by the control thread
 * on its ring: every `interval`, per endpoint, one HTTP/1.1 GET of `path` on
 * a fresh connection (over TLS, verified as the shards' connections are, when
 * the upstream has `tls`; in HTTP/2 for protocol h2c and h2, encoded and
 * decoded by an nghttp2 client session in memory); an answer with a 2xx status within `timeout` is a
 * success, anything else (refused, reset, timeout, other status) a failure.
 * `unhealthy_after` failures in a row mark the endpoint unhealthy (no more
 * traffic), `healthy_after` successes in a row bring it back. The state
 * lives in the endpoint's registry object, so it survives reloads of an
 * unchanged endpoint; shards read it with one relaxed load per choice.
 * [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include <turnpike/log.h>
#include <turnpike/tls.h>

#include "rt/control.h"
#include "rt/snapshot.h"
#include "upstream/health.h"

enum hc_op { OP_CONNECT = 0, OP_SEND, OP_RECV, OP_POLL };

/* where a TLS probe is: OpenSSL drives the (non-blocking) socket itself, the
 * ring only says when it is readable or writable again */
enum tls_phase { TLS_HANDSHAKE = 0, TLS_WRITE, TLS_READ };
static int hc_svc = -1;

struct probe {
    bool used; /* slot taken (until every op completed) */
    bool done; /* outcome recorded */
    bool closing;
    int fd;
    unsigned ops;
    SSL *ssl;                     /* upstreams[].tls: the probe speaks TLS as the shards do; NULL = plain */
    uint8_t phase;                /* enum tls_phase */
    struct tp_endpoint_state *st; /* holds a reference */
    uint32_t healthy_after, unhealthy_after;
    uint64_t deadline_ms;
    char req[1024];
    size_t req_len, sent;
    char resp[256];
    size_t resp_len;
    nghttp2_session *ng; /* protocol h2c / h2: the probe speaks HTTP/2 (prior knowledge or ALPN) */
    int h2_status;       /* :status of stream 1; 0 until its HEADERS are complete */
    int h2_seen;         /* :status seen in the block being received */
};

static struct {
    struct probe *p;
    size_t n, cap;
} hc;

static void probe_finish(uint32_t slot, bool ok, const char *why)
{
    struct probe *pr = &hc.p[slot];
    struct tp_endpoint_state *st = pr->st;

    if (pr->done)
        return;
    pr->done = true;
    st->hc_running = false;
    if (ok) {
        st->hc_fail = 0;
        if (st->hc_ok < UINT32_MAX)
            st->hc_ok++;
        if (!atomic_load(&st->healthy) && st->hc_ok >= pr->healthy_after) {
            atomic_store(&st->healthy, 1);
            tp_notice("upstream %s endpoint %s is healthy again", st->upstream, st->addr.text);
        }
    } else {
        st->hc_ok = 0;
        if (st->hc_fail < UINT32_MAX)
            st->hc_fail++;
        if (atomic_load(&st->healthy) && st->hc_fail >= pr->unhealthy_after) {
            atomic_store(&st->healthy, 0);
            tp_warn("upstream %s endpoint %s is unhealthy: %s (%u checks in a row)", st->upstream,
                    st->addr.text, why, st->hc_fail);
        }
    }
}

static void probe_release(uint32_t slot)
{
    struct probe *pr = &hc.p[slot];
    if (pr->ng)
        nghttp2_session_del(pr->ng);
    pr->ng = NULL;
    if (pr->ssl)
        SSL_free(pr->ssl);
    pr->ssl = NULL;
    if (pr->fd >= 0)
        close(pr->fd);
    pr->fd = -1;
    tp_endpoint_state_put(pr->st);
    pr->st = NULL;
    pr->used = false;
}

static void probe_close(uint32_t slot, bool ok, const char *why)
{
    struct probe *pr = &hc.p[slot];

    probe_finish(slot, ok, why);
    if (pr->closing)
        return;
    pr->closing = true;
    if (pr->ops) {
        struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
        io_uring_prep_cancel_fd(sqe, pr->fd, IORING_ASYNC_CANCEL_ALL);
        return;
    }
    probe_release(slot);
}

/* ---- HTTP/2 probes: one GET on stream 1, encoded and decoded by nghttp2 in memory ---- */

static int h2_on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                        const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct probe *pr = user;

    (void)ng;
    (void)flags;
    if (f->hd.stream_id == 1 && nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3)
        pr->h2_seen = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct probe *pr = user;

    (void)ng;
    /* the final head (an interim 1xx is skipped) */
    if (f->hd.type == NGHTTP2_HEADERS && f->hd.stream_id == 1 && pr->h2_seen >= 200)
        pr->h2_status = pr->h2_seen;
    return 0;
}

static int h2_on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    struct probe *pr = user;

    (void)ng;
    if (id == 1 && !pr->h2_status)
        pr->h2_status = -1; /* reset or closed without a response */
    (void)code;
    return 0;
}

/* Writes the HTTP/2 preface, SETTINGS and the request into pr->req. false: it did not fit. */
static bool h2_request(struct probe *pr, const char *path, bool tls)
{
    static nghttp2_session_callbacks *cbs;
    const char *auth = pr->st->addr.text;
    const nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"GET", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)(tls ? "https" : "http"), 7, tls ? 5 : 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)auth, 10, strlen(auth), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"user-agent", (uint8_t *)"turnpike-health-check", 10, 21, NGHTTP2_NV_FLAG_NONE},
    };
    const uint8_t *out;
    ssize_t n;

    if (!cbs) {
        if (nghttp2_session_callbacks_new(&cbs) != 0)
            return false;
        nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_stream_close);
    }
    if (nghttp2_session_client_new(&pr->ng, cbs, pr) != 0) {
        pr->ng = NULL;
        return false;
    }
    if (nghttp2_submit_settings(pr->ng, NGHTTP2_FLAG_NONE, NULL, 0) != 0 ||
        nghttp2_submit_request(pr->ng, NULL, nv, sizeof(nv) / sizeof(nv[0]), NULL, NULL) < 0)
        return false;
    pr->req_len = 0;
    while ((n = nghttp2_session_mem_send(pr->ng, &out)) > 0) {
        if ((size_t)n > sizeof(pr->req) - pr->req_len)
            return false;
        memcpy(pr->req + pr->req_len, out, (size_t)n);
        pr->req_len += (size_t)n;
    }
    return n == 0;
}

/* Feeds received bytes to an HTTP/2 probe: true once its outcome is known (<ok> says which). */
static bool h2_response(struct probe *pr, size_t len, bool *ok)
{
    ssize_t rv = nghttp2_session_mem_recv(pr->ng, (const uint8_t *)pr->resp, len);

    pr->resp_len = 0; /* consumed: the buffer takes the next bytes */
    if (rv < 0) {
        *ok = false;
        return true;
    }
    if (!pr->h2_status)
        return false;
    *ok = pr->h2_status >= 200 && pr->h2_status < 300;
    return true;
}

static void probe_start(struct tp_endpoint_state *st, const struct tp_cfg_health_check *cfg,
                        struct tp_tls_client *tls, bool h2, uint64_t now_ms)
{
    uint32_t slot;
    int fd, one = 1;

    for (slot = 0; slot < hc.n && hc.p[slot].used; slot++)
        ;
    if (slot == hc.n) {
        if (hc.n == hc.cap) {
            size_t ncap = hc.cap ? hc.cap * 2 : 16;
            struct probe *np = realloc(hc.p, sizeof(*np) * ncap);
            if (!np)
                return;
            hc.p = np;
            hc.cap = ncap;
        }
        hc.n++;
    }
    struct probe *pr = &hc.p[slot];
    memset(pr, 0, sizeof(*pr));
    pr->used = true;
    pr->fd = -1;
    pr->st = st;
    tp_endpoint_state_get(st);
    st->hc_running = true;
    pr->healthy_after = cfg->healthy_after;
    pr->unhealthy_after = cfg->unhealthy_after;
    pr->deadline_ms = now_ms + cfg->timeout_ms;
    if (h2) {
        if (!h2_request(pr, cfg->path, tls != NULL)) {
            probe_close(slot, false, "cannot encode the HTTP/2 request");
            return;
        }
    } else {
        int n = snprintf(
            pr->req, sizeof(pr->req),
            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: turnpike-health-check\r\nConnection: close\r\n\r\n",
            cfg->path, st->addr.text);
        if (n < 0 || (size_t)n >= sizeof(pr->req)) {
            probe_close(slot, false, "path too long");
            return;
        }
        pr->req_len = (size_t)n;
    }
    if (tls && !(pr->ssl = tp_tls_client_ssl(tls, &st->addr))) {
        probe_close(slot, false, "out of memory for TLS");
        return;
    }
    fd = socket(st->addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        probe_close(slot, false, strerror(errno));
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    pr->fd = fd;
    struct io_uring_sqe *sqe = tp_ctl_sqe(hc_svc, OP_CONNECT, slot);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&st->addr.ss, st->addr.len);
    pr->ops++;
}

static void health_tick(uint64_t now_ms, bool draining)
{
    struct tp_snapshot *s = tp_snapshot_current;

    /* timeouts of probes in flight */
    for (uint32_t i = 0; i < hc.n; i++)
        if (hc.p[i].used && !hc.p[i].done && now_ms >= hc.p[i].deadline_ms)
            probe_close(i, false, "timed out");
    if (!s || draining)
        return;
    for (size_t u = 0; u < s->n_ups; u++) {
        const struct tp_cfg_health_check *cfg = s->ups[u].cfg->health_check;
        if (!cfg)
            continue;
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_endpoint_state *st = s->ups[u].eps[e].st;
            if (st->hc_running || now_ms < st->hc_next_ms)
                continue;
            st->hc_next_ms = now_ms + cfg->interval_ms;
            probe_start(st, cfg, s->ups[u].tls, s->ups[u].cfg->protocol != TP_UPROTO_HTTP1, now_ms);
        }
    }
}

static bool status_2xx(const char *resp, size_t len, bool *complete)
{
    const char *eol = memchr(resp, '\n', len);
    *complete = eol != NULL;
    if (!eol)
        return false;
    /* "HTTP/1.x NNN ..." */
    if (len < 12 || memcmp(resp, "HTTP/1.", 7) != 0 || resp[8] != ' ')
        return false;
    return resp[9] == '2' && resp[10] >= '0' && resp[10] <= '9' && resp[11] >= '0' && resp[11] <= '9';
}

/* Waits (through the ring) until the socket is <events>-ready, then tls_step runs again. */
static void tls_wait(uint32_t slot, unsigned events)
{
    struct probe *pr = &hc.p[slot];
    struct io_uring_sqe *sqe = tp_ctl_sqe(hc_svc, OP_POLL, slot);
    io_uring_prep_poll_add(sqe, pr->fd, events);
    pr->ops++;
}

/* Advances a TLS probe as far as the socket allows: handshake, request, response. */
static void tls_step(uint32_t slot)
{
    struct probe *pr = &hc.p[slot];
    char err[200], why[160];

    for (;;) {
        int n, e;
        switch (pr->phase) {
        case TLS_HANDSHAKE:
            n = SSL_connect(pr->ssl);
            if (n == 1) {
                pr->phase = TLS_WRITE;
                continue;
            }
            break;
        case TLS_WRITE:
            n = SSL_write(pr->ssl, pr->req + pr->sent, (int)(pr->req_len - pr->sent));
            if (n > 0) {
                pr->sent += (size_t)n;
                if (pr->sent == pr->req_len)
                    pr->phase = TLS_READ;
                continue;
            }
            break;
        default:
            n = SSL_read(pr->ssl, pr->resp + pr->resp_len, (int)(sizeof(pr->resp) - pr->resp_len));
            if (n > 0 && pr->ng) {
                bool ok;
                if (h2_response(pr, (size_t)n, &ok)) {
                    probe_close(slot, ok, ok ? "" : "status not 2xx");
                    return;
                }
                continue;
            }
            if (n > 0) {
                bool complete;
                pr->resp_len += (size_t)n;
                bool ok = status_2xx(pr->resp, pr->resp_len, &complete);
                if (complete || pr->resp_len == sizeof(pr->resp)) {
                    probe_close(slot, ok, ok ? "" : "status not 2xx");
                    return;
                }
                continue;
            }
            break;
        }
        e = SSL_get_error(pr->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            tls_wait(slot, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT);
            return;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && n == 0)) {
            probe_close(slot, false, "closed without a response");
            return;
        }
        snprintf(err, sizeof(err), "TLS %s: %s", pr->phase == TLS_HANDSHAKE ? "handshake" : "error",
                 tp_tls_error(why, sizeof(why)));
        probe_close(slot, false, err);
        return;
    }
}

static void health_on_cqe(unsigned op, uint32_t slot, int res)
{
    if (slot >= hc.n || !hc.p[slot].used)
        return;
    struct probe *pr = &hc.p[slot];
    struct io_uring_sqe *sqe;

    pr->ops--;
    if (pr->closing) {
        if (pr->ops == 0)
            probe_release(slot);
        return;
    }
    switch (op) {
    case OP_CONNECT:
        if (res < 0) {
            probe_close(slot, false, strerror(-res));
            return;
        }
        if (pr->ssl) {
            /* OpenSSL reads and writes the socket itself; it must not block the control thread */
            int fl = fcntl(pr->fd, F_GETFL);
            if (fl == -1 || fcntl(pr->fd, F_SETFL, fl | O_NONBLOCK) == -1 ||
                SSL_set_fd(pr->ssl, pr->fd) != 1) {
                probe_close(slot, false, "cannot set up TLS on the socket");
                return;
            }
            tls_step(slot);
            return;
        }
        sqe = tp_ctl_sqe(hc_svc, OP_SEND, slot);
        io_uring_prep_send(sqe, pr->fd, pr->req, pr->req_len, MSG_NOSIGNAL);
        pr->ops++;
        return;
    case OP_POLL:
        if (res < 0) {
            probe_close(slot, false, strerror(-res));
            return;
        }
        tls_step(slot);
        return;
    case OP_SEND:
        if (res < 0) {
            probe_close(slot, false, strerror(-res));
            return;
        }
        pr->sent += (size_t)res;
        sqe = tp_ctl_sqe(hc_svc, pr->sent < pr->req_len ? OP_SEND : OP_RECV, slot);
        if (pr->sent < pr->req_len) {
            io_uring_prep_send(sqe, pr->fd, pr->req + pr->sent, pr->req_len - pr->sent, MSG_NOSIGNAL);
        } else {
            io_uring_prep_recv(sqe, pr->fd, pr->resp, sizeof(pr->resp), 0);
        }
        pr->ops++;
        return;
    case OP_RECV: {
        bool complete;
        if (res <= 0) {
            probe_close(slot, false, res == 0 ? "closed without a response" : strerror(-res));
            return;
        }
        if (pr->ng) {
            bool ok;
            if (h2_response(pr, (size_t)res, &ok)) {
                probe_close(slot, ok, ok ? "" : "status not 2xx");
                return;
            }
            sqe = tp_ctl_sqe(hc_svc, OP_RECV, slot);
            io_uring_prep_recv(sqe, pr->fd, pr->resp, sizeof(pr->resp), 0);
            pr->ops++;
            return;
        }
        pr->resp_len += (size_t)res;
        bool ok = status_2xx(pr->resp, pr->resp_len, &complete);
        if (complete || pr->resp_len == sizeof(pr->resp)) {
            probe_close(slot, ok, ok ? "" : "status not 2xx");
            return;
        }
        sqe = tp_ctl_sqe(hc_svc, OP_RECV, slot);
        io_uring_prep_recv(sqe, pr->fd, pr->resp + pr->resp_len, sizeof(pr->resp) - pr->resp_len, 0);
        pr->ops++;
        return;
    }
    default:
        return;
    }
}

static void health_stop(void)
{
    for (uint32_t i = 0; i < hc.n; i++)
        if (hc.p[i].used)
            probe_release(i);
    free(hc.p);
    memset(&hc, 0, sizeof(hc));
}

static const struct tp_ctl_service health_service = {
    .name = "health",
    .on_cqe = health_on_cqe,
    .tick = health_tick,
    .stop = health_stop,
};

int tp_health_register(void)
{
    hc_svc = tp_ctl_service_register(&health_service);
    return hc_svc < 0 ? -1 : 0;
}
