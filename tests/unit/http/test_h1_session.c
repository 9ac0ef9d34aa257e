/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the HTTP/1 server session (src/http/h1_server.c) and the
 * HTTP/1 upstream exchange (src/http/h1_client.c) with the request layer
 * between them, in process: a real shard runs on this thread
 * (fake_reactor.h) with the HTTP layer registered as the runtime registers
 * it (tp_http_register) and a snapshot built from a small configuration and
 * published as the control thread does. Client connections are one end of a
 * socketpair handed to the acceptor (tp_h1s_accept) the way the reactor
 * hands it an accepted socket; upstreams are loopback listeners this test
 * accepts on and answers itself, between loop iterations.
 *
 * Covered: a GET proxied, with the request the upstream gets and the
 * response the client gets compared byte for byte; keep-alive reuse (one
 * upstream connection for two requests); three pipelined requests in one
 * write answered in order; a chunked request body re-framed (extensions
 * dropped), also with a trailer that arrives in a later write; a chunked
 * response whose trailer arrives in a later read, relayed whole; a 404 JSON
 * answer for an unrouted path with X-Request-Id and Date; 502 when the
 * upstream port is closed; 504 when upstream_response passes; a client EOF
 * in the middle of a head (not a request) and in the middle of a body
 * (recorded as 499, upstream connection dropped). After each test no
 * connection is left and no provided buffer held; ASan checks the rest.
 *
 * These overlap some integration tests on purpose: they run in process in
 * about a second (most of it the 504's upstream_response), under the
 * sanitizers, and can look at session state.
 * Exits 77 (skip) when io_uring is unavailable. Single-threaded.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fake_reactor.h"
#include "http/request.h"
#include "http/sessions.h"
#include "tap.h"

#define WAIT  10000 /* [ms] bound of every wait (never reached unless something is broken) */
#define TRACE "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

static struct tp_shard *sh;

/* ------------------------------------------------------------------ */
/* HTTP/1 messages as the test reads them                              */
/* ------------------------------------------------------------------ */

/* The value of header <name> in the head <p>[0, <head_len>), or NULL. */
static const char *hdr(const char *p, size_t head_len, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *line = memchr(p, '\n', head_len);

    while (line && (size_t)(line + 1 - p) < head_len) {
        line++;
        const char *eol = memchr(line, '\r', head_len - (size_t)(line - p));
        if (!eol || eol == line)
            return NULL;
        if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            *vlen = (size_t)(eol - v);
            return v;
        }
        line = memchr(line, '\n', head_len - (size_t)(line - p));
    }
    return NULL;
}

/* Length of the complete message at <p> (Content-Length or chunked body; else none), 0 when incomplete. */
static size_t msg_len(const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    size_t vl;

    if (!e)
        return 0;
    size_t head = (size_t)(e - p) + 4;
    const char *te = hdr(p, head, "transfer-encoding", &vl);
    if (te && vl == 7 && strncasecmp(te, "chunked", 7) == 0) {
        size_t off = head;
        for (;;) {
            const char *eol = memmem(p + off, n - off, "\r\n", 2);
            if (!eol)
                return 0;
            unsigned long size = strtoul(p + off, NULL, 16);
            off = (size_t)(eol - p) + 2;
            if (size == 0)
                break;
            off += size + 2;
            if (off > n)
                return 0;
        }
        for (;;) { /* trailer lines, then the empty line */
            const char *eol = memmem(p + off, n - off, "\r\n", 2);
            if (!eol)
                return 0;
            bool empty = eol == p + off;
            off = (size_t)(eol - p) + 2;
            if (empty)
                return off;
        }
    }
    const char *cl = hdr(p, head, "content-length", &vl);
    if (cl) {
        size_t len = head + strtoul(cl, NULL, 10);
        return len <= n ? len : 0;
    }
    return head;
}

/* The body of the complete message at <p> of length <len>. */
static const char *msg_body(const char *p, size_t len, size_t *blen)
{
    const char *e = memmem(p, len, "\r\n\r\n", 4);
    *blen = len - (size_t)(e + 4 - p);
    return e + 4;
}

/* Decodes the chunked body <p> into <out>; returns its length (extensions and trailers dropped). */
static size_t dechunk(const char *p, size_t n, char *out)
{
    size_t off = 0, o = 0;
    for (;;) {
        const char *eol = memmem(p + off, n - off, "\r\n", 2);
        unsigned long size = strtoul(p + off, NULL, 16);
        off = (size_t)(eol - p) + 2;
        if (size == 0)
            return o;
        memcpy(out + o, p + off, size);
        o += size;
        off += size + 2;
    }
}

/* ------------------------------------------------------------------ */
/* the client                                                          */
/* ------------------------------------------------------------------ */

struct client {
    int fd;
    char buf[1 << 18];
    size_t len;
    bool eof;
};

static struct client cl;

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Waits (bounded) until <fd> can take bytes, then writes all of <p>. */
static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (w == -1 && errno != EAGAIN && errno != EINTR)
            abort();
        if (poll(&pfd, 1, WAIT) != 1)
            abort();
    }
}

/* A new client connection, accepted by the HTTP layer as the reactor would. */
static void client_open(void)
{
    int sv[2];
    struct sockaddr_storage peer = {.ss_family = AF_UNIX};

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
        abort();
    memset(&cl, 0, sizeof(cl));
    cl.fd = sv[1];
    set_nonblock(cl.fd);
    fake_reactor_accepted(sh);
    tp_h1s_accept(sh, sv[0], 0, &peer);
}

static void client_send(const char *s)
{
    write_all(cl.fd, s, strlen(s));
}

static void client_pump(void)
{
    while (cl.fd >= 0 && !cl.eof && cl.len < sizeof(cl.buf)) {
        ssize_t n = recv(cl.fd, cl.buf + cl.len, sizeof(cl.buf) - cl.len, MSG_DONTWAIT);
        if (n > 0)
            cl.len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != EINTR))
            cl.eof = true;
        else
            break;
    }
}

/* The complete responses the client has: their start offsets and lengths. */
static int client_responses(size_t *start, size_t *len, int max)
{
    size_t off = 0, m;
    int k = 0;

    while (k < max && off < cl.len && (m = msg_len(cl.buf + off, cl.len - off)) > 0) {
        start[k] = off;
        len[k] = m;
        k++;
        off += m;
    }
    return k;
}

/* ------------------------------------------------------------------ */
/* the upstreams                                                       */
/* ------------------------------------------------------------------ */

#define UP_CONNS 8
#define UP_REQS  16

struct upconn {
    int fd;
    char buf[1 << 16];
    size_t len;
    bool eof;
};

struct upsrv {
    int lfd;
    struct tp_addr addr;
    bool answer; /* false: accept and read, never answer */
    struct upconn c[UP_CONNS];
    int n;        /* connections accepted */
    int requests; /* complete requests read */
    char *req[UP_REQS];
    size_t req_len[UP_REQS];
    int req_conn[UP_REQS];
    const char *fixed; /* the response to every request; NULL: "path=<target>" */
};

static struct upsrv up_ok, up_slow;
static struct tp_addr dead_addr;

static void upsrv_open(struct upsrv *u, bool answer)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&u->addr.ss;

    memset(u, 0, sizeof(*u));
    u->answer = answer;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    u->addr.len = sizeof(*in);
    u->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (u->lfd == -1 || bind(u->lfd, (struct sockaddr *)in, u->addr.len) == -1 || listen(u->lfd, 16) == -1 ||
        getsockname(u->lfd, (struct sockaddr *)in, &u->addr.len) == -1)
        abort();
    snprintf(u->addr.text, sizeof(u->addr.text), "127.0.0.1:%u", ntohs(in->sin_port));
}

/* Forgets the requests and closes the connections of <u> (between tests). */
static void upsrv_reset(struct upsrv *u)
{
    for (int i = 0; i < u->n; i++)
        if (u->c[i].fd >= 0)
            close(u->c[i].fd);
    for (int i = 0; i < u->requests && i < UP_REQS; i++)
        free(u->req[i]);
    int lfd = u->lfd;
    struct tp_addr a = u->addr;
    bool answer = u->answer;
    memset(u, 0, sizeof(*u));
    u->lfd = lfd;
    u->addr = a;
    u->answer = answer;
}

static void upsrv_answer(struct upsrv *u, struct upconn *c, const char *req, size_t len)
{
    char out[512];
    int n;

    if (u->fixed) {
        write_all(c->fd, u->fixed, strlen(u->fixed));
        return;
    }
    const char *sp = memchr(req, ' ', len);
    const char *sp2 = memchr(sp + 1, ' ', len - (size_t)(sp + 1 - req));
    int tl = (int)(sp2 - sp - 1);
    n = snprintf(out, sizeof(out), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\npath=%.*s", 5 + tl, tl,
                 sp + 1);
    write_all(c->fd, out, (size_t)n);
}

static void upsrv_pump(struct upsrv *u)
{
    int fd;

    while (u->n < UP_CONNS && (fd = accept4(u->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0) {
        u->c[u->n].fd = fd;
        u->c[u->n].len = 0;
        u->c[u->n].eof = false;
        u->n++;
    }
    for (int i = 0; i < u->n; i++) {
        struct upconn *c = &u->c[i];
        while (c->fd >= 0 && !c->eof && c->len < sizeof(c->buf)) {
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, MSG_DONTWAIT);
            if (r > 0)
                c->len += (size_t)r;
            else if (r == 0 || (errno != EAGAIN && errno != EINTR))
                c->eof = true;
            else
                break;
        }
        size_t m;
        while (c->len && (m = msg_len(c->buf, c->len)) > 0) {
            if (u->requests < UP_REQS) {
                u->req[u->requests] = malloc(m + 1);
                memcpy(u->req[u->requests], c->buf, m);
                u->req[u->requests][m] = 0;
                u->req_len[u->requests] = m;
                u->req_conn[u->requests] = i;
            }
            u->requests++;
            if (u->answer)
                upsrv_answer(u, c, c->buf, m);
            memmove(c->buf, c->buf + m, c->len - m);
            c->len -= m;
        }
    }
}

/* ------------------------------------------------------------------ */
/* waiting                                                             */
/* ------------------------------------------------------------------ */

static bool (*cond)(void);

static bool until_pumped(struct tp_shard *s, void *ctx)
{
    client_pump();
    upsrv_pump(&up_ok);
    upsrv_pump(&up_slow);
    return cond();
}

static bool wait_for(bool (*c)(void))
{
    cond = c;
    return fake_reactor_run(sh, until_pumped, NULL, WAIT);
}

static int want_responses;
static bool have_responses(void)
{
    size_t s[8], l[8];
    return client_responses(s, l, 8) >= want_responses;
}

static bool no_connections(void)
{
    return tp_h1s_count(sh) == 0 && tp_h1c_count(sh) == 0 && sh->bufs.held == 0;
}

/* Ends a test: the client goes, the upstream connections go, nothing may be left. */
static void finish(const char *what)
{
    if (cl.fd >= 0)
        close(cl.fd);
    cl.fd = -1;
    upsrv_reset(&up_ok);
    upsrv_reset(&up_slow);
    tp_h1c_close_all(sh, true);
    ok(wait_for(no_connections), "%s: every connection closed", what);
    is_int(sh->bufs.held, 0, "%s: no provided buffer held", what);
    is_int(tp_stat_get(&tp_http_shard(sh)->active_requests), 0, "%s: no request left", what);
}

/* Requests of route <name> recorded with status class <cls> (0 = 1xx .. 4 = 5xx). */
static uint64_t route_count(const char *name, unsigned cls)
{
    for (size_t i = 0; i < sh->snap->n_routes; i++)
        if (strcmp(sh->snap->routes[i].cfg->name, name) == 0)
            return tp_stat_get(&sh->snap->routes[i].st->stats[sh->id].requests[cls]);
    return (uint64_t)-1;
}

static uint64_t unmatched_count(void)
{
    uint64_t n = 0;
    for (unsigned k = 0; k < 5; k++)
        n += tp_stat_get(&tp_http_shard(sh)->unmatched.requests[k]);
    return n;
}

/* ------------------------------------------------------------------ */
/* tests                                                               */
/* ------------------------------------------------------------------ */

static void test_get_proxied(void)
{
    size_t s[4], l[4];
    const char *resp =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Upstream: u1\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\nhello world\n";
    const char *want_up =
        "GET /api/hello?x=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: unit\r\n"
        "X-Forwarded-For: unknown\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.test\r\n"
        "X-Request-Id: req-1\r\ntraceparent: " TRACE "\r\n\r\n";
    /* the upstream's Date is relayed (one without a Date gets the gateway's: the 404 test) */
    const char *want_client = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n"
                              "X-Upstream: u1\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                              "X-Request-Id: req-1\r\n\r\nhello world\n";

    up_ok.fixed = resp;
    client_open();
    client_send(
        "GET /api/hello?x=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: unit\r\nX-Request-Id: req-1\r\n"
        "traceparent: " TRACE "\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "get: a response");
    is_int(up_ok.requests, 1, "get: the upstream got one request");
    ok(up_ok.requests >= 1 && strcmp(up_ok.req[0], want_up) == 0, "get: the upstream request, byte for byte");
    if (up_ok.requests >= 1 && strcmp(up_ok.req[0], want_up) != 0)
        tap_diag("upstream got: %s", up_ok.req[0]);
    ok(client_responses(s, l, 4) == 1 && l[0] == strlen(want_client) &&
           memcmp(cl.buf, want_client, l[0]) == 0,
       "get: the client response, byte for byte");
    if (cl.len != strlen(want_client) || memcmp(cl.buf, want_client, cl.len) != 0)
        tap_diag("client got: %.*s", (int)cl.len, cl.buf);
    is_int(route_count("api", 1), 1, "get: recorded as a 2xx of route api");
    finish("get");
}

static void test_keepalive_reuse(void)
{
    size_t s[4], l[4], bl;

    client_open();
    client_send("GET /api/one HTTP/1.1\r\nHost: h\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "keepalive: first response");
    client_send("GET /api/two HTTP/1.1\r\nHost: h\r\n\r\n");
    want_responses = 2;
    ok(wait_for(have_responses), "keepalive: second response");
    is_int(up_ok.n, 1, "keepalive: the upstream saw one connection");
    is_int(up_ok.requests, 2, "keepalive: and two requests");
    ok(up_ok.requests == 2 && up_ok.req_conn[0] == up_ok.req_conn[1], "keepalive: both on it");
    int k = client_responses(s, l, 4);
    const char *b = k == 2 ? msg_body(cl.buf + s[1], l[1], &bl) : "";
    ok(k == 2 && bl == 13 && memcmp(b, "path=/api/two", 13) == 0,
       "keepalive: the second answer is the second's");
    is_int(tp_h1s_count(sh), 1, "keepalive: the client connection stays open");
    finish("keepalive");
}

static void test_pipelining(void)
{
    size_t s[4], l[4], bl;
    static const char *const want[3] = {"path=/api/p1", "path=/api/p2", "path=/api/p3"};

    client_open();
    client_send("GET /api/p1 HTTP/1.1\r\nHost: h\r\nX-Request-Id: p1\r\n\r\n"
                "GET /api/p2 HTTP/1.1\r\nHost: h\r\nX-Request-Id: p2\r\n\r\n"
                "GET /api/p3 HTTP/1.1\r\nHost: h\r\nX-Request-Id: p3\r\n\r\n");
    want_responses = 3;
    ok(wait_for(have_responses), "pipelining: three responses");
    int k = client_responses(s, l, 4);
    is_int(k, 3, "pipelining: exactly three");
    for (int i = 0; i < k && i < 3; i++) {
        size_t vl;
        const char *b = msg_body(cl.buf + s[i], l[i], &bl);
        const char *id = hdr(cl.buf + s[i], l[i] - bl, "x-request-id", &vl);
        char idw[4] = {'p', (char)('1' + i), 0};
        ok(bl == strlen(want[i]) && memcmp(b, want[i], bl) == 0 && id && vl == 2 && memcmp(id, idw, 2) == 0,
           "pipelining: response %d answers request %d", i + 1, i + 1);
    }
    is_int(up_ok.requests, 3, "pipelining: the upstream got three requests");
    for (int i = 0; i < up_ok.requests && i < 3; i++) {
        char line[32];
        snprintf(line, sizeof(line), "GET /api/p%d ", i + 1);
        ok(strncmp(up_ok.req[i], line, strlen(line)) == 0, "pipelining: upstream request %d in order", i + 1);
    }
    finish("pipelining");
}

static bool up_has_head(void)
{
    return up_ok.n >= 1 && memmem(up_ok.c[0].buf, up_ok.c[0].len, "\r\n\r\n", 4) != NULL;
}

/* Checks what the upstream got for a chunked request: re-framed, no extension, the decoded body. */
static void check_chunked_upstream(const char *what, const char *body)
{
    size_t vl, bl;

    if (!ok(up_ok.requests == 1, "%s: the upstream got the request", what))
        return;
    const char *r = up_ok.req[0];
    const char *b = msg_body(r, up_ok.req_len[0], &bl);
    const char *te = hdr(r, (size_t)(b - r), "transfer-encoding", &vl);
    ok(te && vl == 7 && memcmp(te, "chunked", 7) == 0, "%s: sent chunked", what);
    ok(!hdr(r, (size_t)(b - r), "content-length", &vl), "%s: no Content-Length", what);
    ok(!memmem(b, bl, ";", 1), "%s: no chunk extension forwarded", what);
    char dec[256];
    size_t n = dechunk(b, bl, dec);
    ok(n == strlen(body) && memcmp(dec, body, n) == 0, "%s: the decoded body arrives whole", what);
    if (n != strlen(body) || memcmp(dec, body, n) != 0)
        tap_diag("upstream body: %.*s", (int)bl, b);
}

static void test_chunked_body(void)
{
    size_t s[4], l[4], bl;

    client_open();
    client_send("POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "chunked: a response");
    check_chunked_upstream("chunked", "hello world");
    int k = client_responses(s, l, 4);
    const char *b = k == 1 ? msg_body(cl.buf, l[0], &bl) : "";
    ok(k == 1 && memcmp(cl.buf, "HTTP/1.1 200 ", 13) == 0 && bl == 16 &&
           memcmp(b, "path=/api/upload", 16) == 0,
       "chunked: the upstream's answer relayed");
    finish("chunked");

    /* the trailer section arrives in a later read than the last chunk */
    client_open();
    client_send("POST /api/upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trai");
    ok(wait_for(up_has_head), "chunked trailer: the upstream got the head");
    client_send("ler: yes\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "chunked trailer: a response");
    ok(memcmp(cl.buf, "HTTP/1.1 200 ", 13) == 0, "chunked trailer: 200, the request was valid");
    if (memcmp(cl.buf, "HTTP/1.1 200 ", 13) != 0)
        tap_diag("client got: %.*s", (int)cl.len, cl.buf);
    check_chunked_upstream("chunked trailer", "hello world");
    finish("chunked trailer");
}

static bool client_has_trailer_start(void)
{
    return memmem(cl.buf, cl.len, "X-Tra", 5) != NULL || cl.eof;
}

static bool response_or_eof(void)
{
    return have_responses() || cl.eof;
}

static void test_chunked_response_trailer(void)
{
    size_t s[4], l[4];
    const char *want = "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nX-Request-Id: req-t\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\n";

    /* relayed as received to an HTTP/1.1 client; the trailer arrives in a later read */
    up_ok.fixed =
        "HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\nX-Tra";
    client_open();
    client_send("GET /api/t HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-t\r\n\r\n");
    ok(wait_for(client_has_trailer_start) && !cl.eof, "response trailer: the first part is relayed");
    write_all(up_ok.c[0].fd, "iler: yes\r\n\r\n", 13);
    want_responses = 1;
    ok(wait_for(response_or_eof), "response trailer: the response ends");
    ok(client_responses(s, l, 4) == 1 && l[0] == strlen(want) && memcmp(cl.buf, want, l[0]) == 0,
       "response trailer: relayed whole, byte for byte");
    if (cl.len != strlen(want) || memcmp(cl.buf, want, cl.len) != 0)
        tap_diag("client got (%s): %.*s", cl.eof ? "closed" : "open", (int)cl.len, cl.buf);
    ok(!cl.eof, "response trailer: the client connection stays open");
    up_ok.fixed = NULL;
    finish("response trailer");
}

/* Checks a gateway-made JSON answer: status line, headers, body, byte for byte except the Date value. */
static void check_error(const char *what, unsigned status, const char *reason, const char *id,
                        const char *err)
{
    size_t s[4], l[4], dl;
    char body[256], want[1024];

    int k = client_responses(s, l, 4);
    if (!ok(k == 1, "%s: one response", what)) {
        tap_diag("client got: %.*s", (int)cl.len, cl.buf);
        return;
    }
    const char *date = hdr(cl.buf, l[0], "date", &dl);
    struct tm tm;
    char dbuf[64] = "";
    if (date && dl < sizeof(dbuf))
        memcpy(dbuf, date, dl);
    const char *end = strptime(dbuf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    ok(date && dl == 29 && end && *end == 0, "%s: an HTTP-date", what);
    int bn = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%u,\"request_id\":\"%s\"}", err,
                      status, id);
    int n =
        snprintf(want, sizeof(want),
                 "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: "
                 "%s\r\nDate: %s\r\n\r\n%s",
                 status, reason, bn, id, dbuf, body);
    ok((size_t)n == l[0] && memcmp(cl.buf, want, l[0]) == 0, "%s: %u with the JSON body, byte for byte", what,
       status);
    if ((size_t)n != l[0] || memcmp(cl.buf, want, l[0]) != 0)
        tap_diag("client got: %.*s", (int)cl.len, cl.buf);
}

static void test_404(void)
{
    uint64_t before = unmatched_count();

    client_open();
    client_send("GET /nowhere HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-404\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "404: a response");
    check_error("404", 404, "Not Found", "req-404", "no route");
    is_int(up_ok.n + up_slow.n, 0, "404: no upstream contacted");
    is_int(unmatched_count(), before + 1, "404: recorded as unmatched");
    /* the connection is kept: a second request is served */
    client_send("GET /api/after HTTP/1.1\r\nHost: h\r\n\r\n");
    want_responses = 2;
    ok(wait_for(have_responses), "404: the connection serves the next request");
    finish("404");
}

static void test_502(void)
{
    client_open();
    client_send("GET /dead/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-502\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "502: a response");
    check_error("502", 502, "Bad Gateway", "req-502", "upstream connect failure: Connection refused");
    is_int(route_count("dead", 4), 1, "502: recorded as a 5xx of route dead");
    finish("502");
}

static void test_504(void)
{
    client_open();
    client_send("GET /slow/x HTTP/1.1\r\nHost: h\r\nX-Request-Id: req-504\r\n\r\n");
    want_responses = 1;
    ok(wait_for(have_responses), "504: a response");
    check_error("504", 504, "Gateway Timeout", "req-504", "upstream timeout: timed out");
    is_int(up_slow.requests, 1, "504: the upstream got the request");
    is_int(route_count("slow", 4), 1, "504: recorded as a 5xx of route slow");
    finish("504");
}

static bool client_conn_gone(void)
{
    return tp_h1s_count(sh) == 0;
}

static bool up_eof(void)
{
    return up_ok.n >= 1 && up_ok.c[0].eof;
}

static void test_client_eof(void)
{
    uint64_t api4 = route_count("api", 3), unmatched = unmatched_count();

    /* in the middle of the head: no request */
    client_open();
    client_send("GET /api/x HTTP/1.1\r\nHo");
    shutdown(cl.fd, SHUT_WR);
    ok(wait_for(client_conn_gone), "eof in head: the connection closes");
    ok(route_count("api", 3) == api4 && unmatched_count() == unmatched,
       "eof in head: not recorded as a request");
    is_int(up_ok.n, 0, "eof in head: no upstream contacted");
    finish("eof in head");

    /* in the middle of the body: recorded as 499, the upstream connection dropped */
    client_open();
    client_send("POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789");
    ok(wait_for(up_has_head), "eof in body: the upstream got the head");
    close(cl.fd);
    cl.fd = -1;
    ok(wait_for(up_eof), "eof in body: the upstream connection is closed");
    ok(wait_for(no_connections), "eof in body: every connection gone");
    is_int(route_count("api", 3), api4 + 1, "eof in body: recorded (499)");
    ok(up_ok.n == 1 && memmem(up_ok.c[0].buf, up_ok.c[0].len, "Content-Length: 100\r\n", 21) != NULL,
       "eof in body: the upstream saw the framing");
    is_int(up_ok.requests, 0, "eof in body: no complete request reached the upstream");
    finish("eof in body");
}

/* ------------------------------------------------------------------ */
/* setup                                                               */
/* ------------------------------------------------------------------ */

static struct tp_snapshot *build_snapshot(void)
{
    char y[2048];
    struct tp_diag d = {0};
    int n = snprintf(y, sizeof(y),
                     "listeners:\n"
                     "  - name: " FAKE_LISTENER "\n"
                     "    address: 127.0.0.1:8080\n"
                     "timeouts:\n"
                     "  upstream_connect: 5s\n"
                     "  upstream_response: 1s\n"
                     "upstreams:\n"
                     "  - name: ok\n"
                     "    endpoints:\n"
                     "      - address: %s\n"
                     "    keepalive: 8\n"
                     "  - name: dead\n"
                     "    endpoints:\n"
                     "      - address: %s\n"
                     "  - name: slow\n"
                     "    endpoints:\n"
                     "      - address: %s\n"
                     "routes:\n"
                     "  - name: api\n"
                     "    match: {path_prefix: /api}\n"
                     "    upstream: ok\n"
                     "  - name: dead\n"
                     "    match: {path_prefix: /dead}\n"
                     "    upstream: dead\n"
                     "  - name: slow\n"
                     "    match: {path_prefix: /slow}\n"
                     "    upstream: slow\n",
                     up_ok.addr.text, dead_addr.text, up_slow.addr.text);
    struct tp_config *cfg = tp_config_parse("test.yaml", y, (size_t)n, &d);
    struct tp_snapshot *s = cfg ? tp_snapshot_build(cfg, 1, 1, &d) : NULL;

    if (!s) {
        for (size_t i = 0; i < d.n; i++)
            tap_diag("%s", d.msgs[i]);
        if (cfg)
            tp_config_destroy(cfg);
    }
    tp_diag_dispose(&d);
    return s;
}

int main(void)
{
    bool skip;

    signal(SIGPIPE, SIG_IGN);
    if (tp_http_register() < 0) {
        printf("Bail out! tp_http_register failed\n");
        return 1;
    }
    sh = fake_reactor_create(64, 4096, &skip);
    if (!sh) {
        printf(skip ? "1..0 # SKIP io_uring unavailable\n" : "Bail out! cannot set up a shard\n");
        return skip ? 77 : 1;
    }
    upsrv_open(&up_ok, true);
    upsrv_open(&up_slow, false);
    struct upsrv *dead = calloc(1, sizeof(*dead));
    upsrv_open(dead, false);
    close(dead->lfd); /* nothing listens there any more */
    dead_addr = dead->addr;
    free(dead);

    struct tp_snapshot *s = build_snapshot();
    if (!s) {
        printf("Bail out! the test configuration was refused\n");
        return 1;
    }
    tp_snapshot_publish(s);
    fake_reactor_spin(sh, 1, 0); /* the loop adopts the published snapshot */
    ok(sh->snap == s, "setup: the shard runs on the published snapshot");
    cl.fd = -1;

    test_get_proxied();
    test_keepalive_reuse();
    test_pipelining();
    test_chunked_body();
    test_chunked_response_trailer();
    test_404();
    test_502();
    test_504();
    test_client_eof();

    close(up_ok.lfd);
    close(up_slow.lfd);
    fake_reactor_destroy(sh);
    tp_snapshot_shutdown();
    return tap_done();
}
