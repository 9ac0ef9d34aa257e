/* SPDX-License-Identifier: MIT */
/*
 * The admin listener (docs/reference.md "Admin endpoints"), served by the control
 * thread on its ring: GET /healthz, /readyz, /metrics, /config. Each
 * connection carries one request and is closed after the response; the
 * endpoints are scraped, not hammered, and this keeps the server small.
 * [control]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <turnpike/log.h>

#include "admin/admin.h"
#include "http/h1.h"
#include "rt/control.h"
#include "rt/runtime.h"

#define ADMIN_SLOTS      64
#define ADMIN_REQ_MAX    8192
#define ADMIN_TIMEOUT_MS 10000

struct admin_conn {
    int fd; /* -1 = free slot */
    bool closing;
    unsigned ops;
    uint32_t len; /* request bytes received */
    uint64_t started_ms;
    char req[ADMIN_REQ_MAX];
    struct tp_abuf out;
    size_t sent;
};

static struct {
    int fd;
    bool accept_armed;
    uint64_t retry_ms; /* [ms] re-arm the accept then, after EMFILE/ENFILE (0: not waiting) */
    struct admin_conn conns[ADMIN_SLOTS];
} adm = {.fd = -1};

enum admin_op { OP_ACCEPT = 0, OP_RECV, OP_SEND };
static int adm_svc = -1;

/* ---- growable output buffer ---- */

void tp_abuf_put(struct tp_abuf *b, const void *p, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n > b->cap) {
        size_t ncap = b->cap ? b->cap : 4096;
        while (ncap < b->len + n)
            ncap *= 2;
        char *d = realloc(b->data, ncap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = ncap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void tp_abuf_printf(struct tp_abuf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        tp_abuf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    tp_abuf_put(b, big, (size_t)n);
    free(big);
}

void tp_abuf_json_str(struct tp_abuf *b, const char *s)
{
    tp_abuf_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            tp_abuf_put(b, e, 2);
        } else if (ch < 0x20) {
            tp_abuf_printf(b, "\\u%04x", ch);
        } else {
            tp_abuf_put(b, s, 1);
        }
    }
    tp_abuf_put(b, "\"", 1);
}

void tp_abuf_dispose(struct tp_abuf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- connections ---- */

static void arm_accept(void)
{
    if (adm.fd < 0 || adm.accept_armed)
        return;
    struct io_uring_sqe *sqe = tp_ctl_sqe(adm_svc, OP_ACCEPT, 0);
    io_uring_prep_multishot_accept(sqe, adm.fd, NULL, NULL, SOCK_CLOEXEC);
    adm.accept_armed = true;
}

static void conn_recv(uint32_t slot)
{
    struct admin_conn *a = &adm.conns[slot];
    struct io_uring_sqe *sqe = tp_ctl_sqe(adm_svc, OP_RECV, slot);
    io_uring_prep_recv(sqe, a->fd, a->req + a->len, ADMIN_REQ_MAX - 1 - a->len, 0);
    a->ops++;
}

static void conn_close(uint32_t slot)
{
    struct admin_conn *a = &adm.conns[slot];

    if (a->closing)
        return;
    a->closing = true;
    if (a->ops) {
        struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
        io_uring_prep_cancel_fd(sqe, a->fd, IORING_ASYNC_CANCEL_ALL);
        return;
    }
    close(a->fd);
    a->fd = -1;
    tp_abuf_dispose(&a->out);
}

static void conn_send(uint32_t slot)
{
    struct admin_conn *a = &adm.conns[slot];
    struct io_uring_sqe *sqe = tp_ctl_sqe(adm_svc, OP_SEND, slot);
    io_uring_prep_send(sqe, a->fd, a->out.data + a->sent, a->out.len - a->sent, MSG_NOSIGNAL);
    a->ops++;
}

static void respond(struct admin_conn *a, unsigned status, const char *ctype, struct tp_abuf *body, bool head)
{
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable"
                         : status == 400 ? "Bad Request"
                                         : "Error";
    tp_abuf_printf(&a->out,
                   "HTTP/1.1 %u %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                   status, reason, tp_h1_date(), ctype, body->len);
    if (!head)
        tp_abuf_put(&a->out, body->data, body->len);
}

/* Routes one request to its endpoint. */
static void handle(struct admin_conn *a)
{
    struct tp_abuf body = {0};
    char *sp1 = memchr(a->req, ' ', a->len), *sp2;
    unsigned status = 200;
    const char *ctype = "text/plain; charset=utf-8";
    bool head = false;

    if (!sp1 || !(sp2 = memchr(sp1 + 1, ' ', (size_t)(a->req + a->len - sp1 - 1)))) {
        tp_abuf_printf(&body, "bad request\n");
        respond(a, 400, ctype, &body, false);
        tp_abuf_dispose(&body);
        return;
    }
    *sp2 = 0;
    char *path = sp1 + 1, *q = strchr(path, '?');
    if (q)
        *q = 0;
    size_t mlen = (size_t)(sp1 - a->req);
    if (mlen == 4 && memcmp(a->req, "HEAD", 4) == 0)
        head = true;
    else if (!(mlen == 3 && memcmp(a->req, "GET", 3) == 0)) {
        tp_abuf_printf(&body, "only GET and HEAD\n");
        respond(a, 405, ctype, &body, false);
        tp_abuf_dispose(&body);
        return;
    }
    if (strcmp(path, "/healthz") == 0) {
        tp_abuf_printf(&body, "ok\n");
    } else if (strcmp(path, "/readyz") == 0) {
        if (tp_ctl.ready && !tp_ctl.starting && !tp_ctl.draining) {
            tp_abuf_printf(&body, "ready\n");
        } else {
            status = 503;
            tp_abuf_printf(&body, tp_ctl.draining   ? "draining\n"
                                  : tp_ctl.starting ? "starting\n"
                                                    : "not ready\n");
        }
    } else if (strcmp(path, "/metrics") == 0) {
        ctype = "text/plain; version=0.0.4; charset=utf-8";
        tp_metrics_render(&body);
    } else if (strcmp(path, "/config") == 0) {
        ctype = "application/json";
        tp_config_render(&body);
    } else {
        status = 404;
        tp_abuf_printf(&body, "not found: try /healthz /readyz /metrics /config\n");
    }
    if (body.failed) {
        tp_abuf_dispose(&body);
        tp_abuf_printf(&body, "out of memory\n");
        status = 503;
    }
    respond(a, status, ctype, &body, head);
    tp_abuf_dispose(&body);
}

static void admin_on_cqe(unsigned op, uint32_t slot, int res)
{
    if (op == OP_ACCEPT) {
        if (res >= 0) {
            uint32_t i;
            for (i = 0; i < ADMIN_SLOTS && adm.conns[i].fd >= 0; i++)
                ;
            if (i == ADMIN_SLOTS) {
                close(res); /* busy: the scraper retries */
            } else {
                struct admin_conn *a = &adm.conns[i];
                memset(a, 0, offsetof(struct admin_conn, req));
                memset(&a->out, 0, sizeof(a->out));
                a->fd = res;
                a->started_ms = tp_ctl_now_ms();
                conn_recv(i);
            }
        }
        /* a multishot accept ends on error or when the kernel drops it: re-arm */
        adm.accept_armed = adm.accept_armed && res >= 0;
        if (res < 0) {
            adm.accept_armed = false;
            if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM)
                adm.retry_ms = tp_ctl_now_ms() + 100; /* no descriptor to take it: retry from the tick */
            else if (res != -ECANCELED)
                arm_accept();
        }
        return;
    }
    if (slot >= ADMIN_SLOTS)
        return;
    struct admin_conn *a = &adm.conns[slot];
    if (a->fd < 0)
        return;
    a->ops--;
    if (a->closing) {
        if (a->ops == 0) {
            close(a->fd);
            a->fd = -1;
            tp_abuf_dispose(&a->out);
        }
        return;
    }
    if (op == OP_RECV) {
        if (res <= 0) {
            conn_close(slot);
            return;
        }
        a->len += (uint32_t)res;
        a->req[a->len] = 0;
        if (!strstr(a->req, "\r\n\r\n") && !strstr(a->req, "\n\n")) {
            if (a->len >= ADMIN_REQ_MAX - 1) {
                conn_close(slot);
                return;
            }
            conn_recv(slot);
            return;
        }
        handle(a);
        a->sent = 0;
        if (a->out.failed || a->out.len == 0) {
            conn_close(slot);
            return;
        }
        conn_send(slot);
        return;
    }
    if (op == OP_SEND) {
        if (res <= 0) {
            conn_close(slot);
            return;
        }
        a->sent += (size_t)res;
        if (a->sent < a->out.len) {
            conn_send(slot);
            return;
        }
        conn_close(slot);
    }
}

static void admin_tick(uint64_t now_ms, bool draining)
{
    (void)draining;
    if (adm.retry_ms && now_ms >= adm.retry_ms) {
        adm.retry_ms = 0;
        arm_accept();
    }
    /* a client that neither finishes its request nor reads the answer loses its slot */
    for (uint32_t i = 0; i < ADMIN_SLOTS; i++)
        if (adm.conns[i].fd >= 0 && !adm.conns[i].closing &&
            now_ms - adm.conns[i].started_ms > ADMIN_TIMEOUT_MS)
            conn_close(i);
}

/* Binds admin.address before the shards start: a port in use fails the start. */
static int admin_prepare(const struct tp_config *cfg)
{
    for (unsigned i = 0; i < ADMIN_SLOTS; i++)
        adm.conns[i].fd = -1;
    adm.fd = -1;
    if (!cfg->has_admin)
        return 0;
    int fd = tp_listen_socket(&cfg->admin, 128);
    if (fd < 0) {
        fprintf(stderr, "%s: admin.address: cannot listen on %s: %s\n", cfg->source, cfg->admin.text,
                strerror(-fd));
        return fd;
    }
    adm.fd = fd;
    return 0;
}

static int admin_started(void)
{
    arm_accept();
    return 0;
}

static void admin_stop(void)
{
    for (unsigned i = 0; i < ADMIN_SLOTS; i++) {
        if (adm.conns[i].fd >= 0) {
            close(adm.conns[i].fd);
            adm.conns[i].fd = -1;
        }
        tp_abuf_dispose(&adm.conns[i].out);
    }
    if (adm.fd >= 0)
        close(adm.fd);
    adm.fd = -1;
}

static const struct tp_ctl_service admin_service = {
    .name = "admin",
    .prepare = admin_prepare,
    .started = admin_started,
    .on_cqe = admin_on_cqe,
    .tick = admin_tick,
    .stop = admin_stop,
};

int tp_admin_register(void)
{
    adm_svc = tp_ctl_service_register(&admin_service);
    return adm_svc < 0 ? -1 : 0;
}
