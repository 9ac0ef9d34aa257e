/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the HTTP/2 server session (src/http/h2_server.c) in process:
 * a real shard runs on this thread (fake_reactor.h) with the HTTP layer
 * registered and a snapshot whose listener has h2c, as in
 * test_h1_session.c. A client connection is one end of a socketpair handed
 * to the HTTP/1 acceptor (tp_h1s_accept), which sees the preface and hands
 * the connection to tp_h2_start, so the production wiring runs. The client
 * is an nghttp2 client session in this test, driven in memory over the
 * socket between loop iterations (raw bytes where a client session would
 * refuse to send them); upstreams are loopback listeners the test answers.
 *
 * Covered: the SETTINGS the gateway sends first (MAX_CONCURRENT_STREAMS as
 * configured, INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE, ENABLE_PUSH 0) and
 * the connection window it opens; a GET proxied to an HTTP/1.1 upstream
 * (:authority as Host) and a GET no route matches (404 with the JSON body);
 * flow control both ways: a response body stops at the client's stream
 * window until the client consumes, and a request body to an upstream that
 * does not read stalls only its own stream (the window reopens only for
 * what the upstream took) while another stream on the connection completes,
 * then arrives whole; GOAWAY on bytes that are not a frame. After each test
 * no connection is left, no request and no provided buffer; ASan checks the
 * rest. Exits 77 (skip) when io_uring is unavailable. Single-threaded.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "fake_reactor.h"
#include "http/request.h"
#include "http/sessions.h"
#include "tap.h"

#define WAIT         10000 /* [ms] bound of every wait (never reached unless something is broken) */
#define MAX_STREAMS  4     /* h2_max_concurrent_streams of the test configuration */
#define HEADER_BYTES 4096  /* max_header_bytes of the test configuration */
#define BIG_RESP     100000
#define CLIENT_WIN   1024

static struct tp_shard *sh;

/* ------------------------------------------------------------------ */
/* the client: an nghttp2 client session over one end of a socketpair  */
/* ------------------------------------------------------------------ */

struct cstream {
    int32_t id;
    int status;
    char ctype[64];
    char *body;
    size_t body_len, body_cap;
    bool ended;
    uint32_t rst; /* RST_STREAM code + 1, 0: none */
    /* request body from a data provider */
    size_t req_len, req_off;
};

#define CSTREAMS 4

static struct {
    int fd;
    nghttp2_session *ng;
    bool eof;
    bool got_settings;
    nghttp2_settings_entry settings[16];
    size_t n_settings;
    uint32_t goaway; /* error code + 1, 0: none */
    struct cstream st[CSTREAMS];
    int n_st;
    bool auto_consume;
} cl;

static struct cstream *cst(int32_t id)
{
    for (int i = 0; i < cl.n_st; i++)
        if (cl.st[i].id == id)
            return &cl.st[i];
    return NULL;
}

static ssize_t c_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    (void)ng;
    (void)flags;
    (void)user;
    ssize_t w = send(cl.fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0)
        return errno == EAGAIN ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
    return w;
}

static int c_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct cstream *s = cst(f->hd.stream_id);

    (void)ng;
    (void)user;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK) && !cl.got_settings) {
            cl.got_settings = true;
            cl.n_settings = f->settings.niv < 16 ? f->settings.niv : 16;
            memcpy(cl.settings, f->settings.iv, cl.n_settings * sizeof(cl.settings[0]));
        }
        break;
    case NGHTTP2_GOAWAY:
        cl.goaway = f->goaway.error_code + 1;
        break;
    case NGHTTP2_RST_STREAM:
        if (s)
            s->rst = f->rst_stream.error_code + 1;
        break;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (s && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            s->ended = true;
        break;
    default:
        break;
    }
    return 0;
}

static int c_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                    const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct cstream *s = cst(f->hd.stream_id);

    (void)ng;
    (void)flags;
    (void)user;
    if (!s)
        return 0;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0)
        s->status = atoi((const char *)value);
    else if (nlen == 12 && memcmp(name, "content-type", 12) == 0)
        snprintf(s->ctype, sizeof(s->ctype), "%.*s", (int)vlen, value);
    return 0;
}

static int c_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    struct cstream *s = cst(id);

    (void)flags;
    (void)user;
    if (s) {
        if (s->body_len + len > s->body_cap) {
            s->body_cap = (s->body_len + len) * 2;
            s->body = realloc(s->body, s->body_cap);
            if (!s->body)
                abort();
        }
        memcpy(s->body + s->body_len, data, len);
        s->body_len += len;
    }
    if (cl.auto_consume)
        nghttp2_session_consume(ng, id, len);
    return 0;
}

static void client_open(uint32_t window)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    int sv[2];
    struct sockaddr_storage peer = {.ss_family = AF_UNIX};

    for (int i = 0; i < cl.n_st; i++)
        free(cl.st[i].body);
    memset(&cl, 0, sizeof(cl));
    cl.auto_consume = true;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
        abort();
    cl.fd = sv[1];
    fcntl(cl.fd, F_SETFL, fcntl(cl.fd, F_GETFL) | O_NONBLOCK);
    fake_reactor_accepted(sh);
    tp_h1s_accept(sh, sv[0], 0, &peer);

    if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        abort();
    nghttp2_session_callbacks_set_send_callback(cbs, c_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, c_frame_recv);
    nghttp2_session_callbacks_set_on_header_callback(cbs, c_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, c_data);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    if (nghttp2_session_client_new2(&cl.ng, cbs, NULL, opt) != 0)
        abort();
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window}};
    if (nghttp2_submit_settings(cl.ng, NGHTTP2_FLAG_NONE, iv, 1) != 0 || nghttp2_session_send(cl.ng) != 0)
        abort();
}

/* Reads what the gateway sent into the client session, and sends what it has. */
static void client_pump(void)
{
    uint8_t buf[65536];

    while (cl.fd >= 0 && !cl.eof) {
        ssize_t n = recv(cl.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            if (nghttp2_session_mem_recv(cl.ng, buf, (size_t)n) < 0)
                cl.eof = true; /* the client session gave up: treated as gone */
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            cl.eof = true;
        } else {
            break;
        }
    }
    if (cl.fd >= 0 && !cl.eof)
        nghttp2_session_send(cl.ng);
}

static ssize_t c_body_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                           nghttp2_data_source *src, void *user)
{
    struct cstream *s = src->ptr;
    size_t n = s->req_len - s->req_off < len ? s->req_len - s->req_off : len;

    (void)ng;
    (void)id;
    (void)user;
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)((s->req_off + i) * 7 + 1); /* a pattern the upstream checks */
    s->req_off += n;
    if (s->req_off == s->req_len)
        *dflags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* Opens a stream: <method> <path> on test.local, with a body of <body_len> bytes when nonzero. */
static struct cstream *client_request(const char *method, const char *path, size_t body_len)
{
    struct cstream *s = &cl.st[cl.n_st++];
    char cl_text[24];
    int cl_len = snprintf(cl_text, sizeof(cl_text), "%zu", body_len);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
        {(uint8_t *)":authority", (uint8_t *)"test.local", 10, 10, 0},
        {(uint8_t *)"content-length", (uint8_t *)cl_text, 14, (size_t)cl_len, 0},
    };
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = c_body_read};

    s->req_len = body_len;
    s->id = nghttp2_submit_request(cl.ng, NULL, nv, body_len ? 5 : 4, body_len ? &dp : NULL, NULL);
    if (s->id < 0)
        abort();
    nghttp2_session_send(cl.ng);
    return s;
}

static void client_close(void)
{
    if (cl.ng)
        nghttp2_session_del(cl.ng);
    cl.ng = NULL;
    if (cl.fd >= 0)
        close(cl.fd);
    cl.fd = -1;
}

/* ------------------------------------------------------------------ */
/* the upstream                                                        */
/* ------------------------------------------------------------------ */

static struct {
    int lfd, fd;
    struct tp_addr addr;
    bool reading;     /* false: accepted connections are not read */
    char head[4096];  /* the last request head */
    size_t head_len;  /* bytes in head[] */
    bool head_done;   /* head[] is complete */
    uint64_t body;    /* body bytes read after the head */
    bool body_ok;     /* every body byte followed the client's pattern */
    uint64_t want;    /* body bytes of the request (0: none); answered when read */
    const char *resp; /* the answer to a complete request */
    size_t resp_len;
} up;

static void up_open(void)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&up.addr.ss;
    int small = 4096;

    up.fd = -1;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    up.addr.len = sizeof(*in);
    up.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    /* a small receive buffer (inherited by accepted sockets): a body it does not read backs up soon */
    if (up.lfd == -1 || setsockopt(up.lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) == -1 ||
        bind(up.lfd, (struct sockaddr *)in, up.addr.len) == -1 || listen(up.lfd, 16) == -1 ||
        getsockname(up.lfd, (struct sockaddr *)in, &up.addr.len) == -1)
        abort();
    snprintf(up.addr.text, sizeof(up.addr.text), "127.0.0.1:%u", ntohs(in->sin_port));
}

/* Forgets the last request and sets the next answer: <resp>, or "path=<target>" when NULL. */
static void up_reset(const char *resp, size_t resp_len, uint64_t want, bool reading)
{
    if (up.fd >= 0)
        close(up.fd);
    up.fd = -1;
    up.head_len = 0;
    up.head_done = false;
    up.body = 0;
    up.body_ok = true;
    up.want = want;
    up.resp = resp;
    up.resp_len = resp_len;
    up.reading = reading;
}

static void up_answer(void)
{
    char out[512];

    if (up.resp) {
        for (size_t off = 0; off < up.resp_len;) {
            ssize_t w = send(up.fd, up.resp + off, up.resp_len - off, MSG_NOSIGNAL);
            if (w <= 0)
                abort(); /* blocking socket: a short answer only on error */
            off += (size_t)w;
        }
        return;
    }
    const char *sp = memchr(up.head, ' ', up.head_len);
    const char *sp2 = memchr(sp + 1, ' ', up.head_len - (size_t)(sp + 1 - up.head));
    int tl = (int)(sp2 - sp - 1);
    int n = snprintf(out, sizeof(out), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\npath=%.*s", 5 + tl, tl,
                     sp + 1);
    if (send(up.fd, out, (size_t)n, MSG_NOSIGNAL) != n)
        abort();
}

static void up_pump(void)
{
    char buf[65536];
    int fd;

    if (up.fd < 0 && (fd = accept4(up.lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
        up.fd = fd; /* blocking: the answers are small or read at once by the gateway */
    if (up.fd < 0 || !up.reading)
        return;
    for (;;) {
        ssize_t n = recv(up.fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
            return;
        size_t off = 0;
        if (!up.head_done) {
            size_t room = sizeof(up.head) - up.head_len;
            size_t take = (size_t)n < room ? (size_t)n : room;
            memcpy(up.head + up.head_len, buf, take);
            const char *e = memmem(up.head, up.head_len + take, "\r\n\r\n", 4);
            if (!e) {
                up.head_len += take;
                continue;
            }
            off = (size_t)(e + 4 - up.head) - up.head_len;
            up.head_len = (size_t)(e + 4 - up.head);
            up.head_done = true;
        }
        for (size_t i = off; i < (size_t)n; i++, up.body++)
            if ((uint8_t)buf[i] != (uint8_t)(up.body * 7 + 1))
                up.body_ok = false;
        if (up.head_done && (!up.want || up.body >= up.want))
            up_answer();
    }
}

/* ------------------------------------------------------------------ */
/* waiting                                                             */
/* ------------------------------------------------------------------ */

static bool (*cond)(void);

static bool until_pumped(struct tp_shard *s, void *ctx)
{
    (void)s;
    (void)ctx;
    client_pump();
    up_pump();
    return cond();
}

static bool wait_for(bool (*c)(void))
{
    cond = c;
    return fake_reactor_run(sh, until_pumped, NULL, WAIT);
}

static bool no_connections(void)
{
    return tp_h1s_count(sh) == 0 && tp_h1c_count(sh) == 0 && sh->bufs.held == 0 &&
           tp_stat_get(&tp_http_shard(sh)->active_requests) == 0;
}

static void finish(const char *what)
{
    client_close();
    up_reset(NULL, 0, 0, true);
    tp_h1c_close_all(sh, true);
    ok(wait_for(no_connections), "%s: every connection closed, no request or buffer left", what);
}

static struct cstream *w_st;
static bool st_done(void)
{
    return w_st->ended || w_st->rst || cl.eof;
}

static bool got_settings(void)
{
    return cl.got_settings;
}

static bool got_goaway(void)
{
    return cl.goaway || cl.eof;
}

/* ------------------------------------------------------------------ */
/* tests                                                               */
/* ------------------------------------------------------------------ */

static uint32_t setting(int32_t id)
{
    for (size_t i = 0; i < cl.n_settings; i++)
        if (cl.settings[i].settings_id == id)
            return cl.settings[i].value;
    return 0xdeadbeef;
}

static void test_settings_on_start(void)
{
    client_open(65535);
    ok(wait_for(got_settings), "settings: the gateway's SETTINGS arrive first");
    is_int(setting(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS), MAX_STREAMS,
           "settings: MAX_CONCURRENT_STREAMS is h2_max_concurrent_streams");
    is_int(setting(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE), 65535, "settings: INITIAL_WINDOW_SIZE 64 KiB");
    is_int(setting(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE), HEADER_BYTES,
           "settings: MAX_HEADER_LIST_SIZE is max_header_bytes");
    is_int(setting(NGHTTP2_SETTINGS_ENABLE_PUSH), 0, "settings: no push");
    /* the WINDOW_UPDATE that follows opens the connection window to 16 MiB */
    w_st = client_request("GET", "/nowhere", 0);
    ok(wait_for(st_done), "settings: a first request is answered");
    is_int(nghttp2_session_get_remote_window_size(cl.ng), 1 << 24, "settings: connection window 16 MiB");
    finish("settings");
}

static void test_get_proxied_and_404(void)
{
    client_open(65535);
    struct cstream *a = client_request("GET", "/api/x?y=1", 0);
    w_st = a;
    ok(wait_for(st_done), "get: the proxied stream ends");
    is_int(a->status, 200, "get: 200 from the upstream");
    ok(a->body_len == 15 && memcmp(a->body, "path=/api/x?y=1", 15) == 0, "get: the upstream's body");
    ok(up.head_done && strncmp(up.head, "GET /api/x?y=1 HTTP/1.1\r\n", 25) == 0,
       "get: the upstream got an HTTP/1.1 request line");
    ok(memmem(up.head, up.head_len, "\r\nhost: test.local\r\n", 20) != NULL ||
           memmem(up.head, up.head_len, "\r\nHost: test.local\r\n", 20) != NULL,
       "get: :authority became Host");

    struct cstream *b = client_request("GET", "/nowhere", 0);
    w_st = b;
    ok(wait_for(st_done) && b->ended, "404: the stream ends");
    is_int(b->status, 404, "404: no route");
    is_str(b->ctype, "application/json", "404: JSON");
    ok(b->body_len && memmem(b->body, b->body_len, "\"error\":\"no route\"", 18) != NULL,
       "404: the JSON error body");
    ok(!cl.goaway && !cl.eof, "404: the connection stays");
    finish("get");
}

static size_t resp_seen;
static int quiet_iters;
static bool resp_window_used(void)
{
    /* the first CLIENT_WIN bytes arrive, then nothing more for a while (the stream window is closed) */
    if (w_st->body_len != resp_seen) {
        resp_seen = w_st->body_len;
        quiet_iters = 0;
    }
    return w_st->body_len >= CLIENT_WIN && ++quiet_iters > 40;
}

static void test_response_flow_control(void)
{
    static char resp[BIG_RESP + 128];
    int hl = snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_RESP);

    memset(resp + hl, 'r', BIG_RESP);
    up_reset(resp, (size_t)hl + BIG_RESP, 0, true);
    client_open(CLIENT_WIN);
    cl.auto_consume = false; /* the client does not open its windows */
    w_st = client_request("GET", "/api/big", 0);
    resp_seen = 0;
    quiet_iters = 0;
    ok(wait_for(resp_window_used), "resp window: the client's window of body arrives");
    is_int(w_st->body_len, CLIENT_WIN, "resp window: exactly the client's stream window, no more");
    ok(!w_st->ended, "resp window: the stream waits for the client");
    /* the client consumes: the rest flows */
    cl.auto_consume = true;
    nghttp2_session_consume(cl.ng, w_st->id, w_st->body_len);
    ok(wait_for(st_done) && w_st->ended, "resp window: the stream ends once the client reads");
    is_int(w_st->body_len, BIG_RESP, "resp window: the whole body");
    finish("resp window");
}

static size_t req_sent;
static bool req_stalled(void)
{
    /* the client sent part of the body and its stream window stays closed */
    struct cstream *s = &cl.st[0];
    if (s->req_off != req_sent) {
        req_sent = s->req_off;
        quiet_iters = 0;
    }
    return nghttp2_session_get_stream_remote_window_size(cl.ng, s->id) == 0 && ++quiet_iters > 40;
}

/* A request body larger than what the kernel buffers between the gateway and
 * an upstream that does not read (the sender's buffer grows up to tcp_wmem's
 * maximum; the receiver's is small), so that the client has to stall. */
static size_t big_body(void)
{
    unsigned long lo, def, max = 4ul << 20;
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");

    if (f) {
        if (fscanf(f, "%lu %lu %lu", &lo, &def, &max) != 3)
            max = 4ul << 20;
        fclose(f);
    }
    size_t n = 2 * (size_t)max + (4u << 20);
    return n < (8u << 20) ? 8u << 20 : n > (200u << 20) ? 200u << 20 : n;
}

static void test_request_flow_control(void)
{
    const size_t big = big_body();

    up_reset(NULL, 0, big, false); /* accepts, does not read */
    client_open(65535);
    struct cstream *post = client_request("POST", "/api/upload", big);
    ok(wait_for(req_stalled), "req window: the body stalls behind an upstream that does not read");
    ok(post->req_off < big, "req window: only part of the body could be sent (%zu of %zu)", post->req_off,
       big);
    ok(nghttp2_session_get_remote_window_size(cl.ng) > (1 << 22),
       "req window: it is the stream's window that holds the client, not the connection's");
    /* another stream on the same connection is not held up by the stalled one */
    w_st = client_request("GET", "/nowhere", 0);
    ok(wait_for(st_done) && w_st->status == 404, "req window: another stream completes meanwhile");
    /* the upstream reads: the rest of the body follows, and the answer comes back */
    up.reading = true;
    w_st = post;
    ok(wait_for(st_done) && post->ended, "req window: the stream ends once the upstream reads");
    is_int(post->req_off, big, "req window: the client could send the whole body");
    is_int(post->status, 200, "req window: 200");
    is_int(up.body, big, "req window: the upstream got every byte");
    ok(up.body_ok, "req window: in order, unchanged");
    finish("req window");
}

static void test_goaway_on_garbage(void)
{
    client_open(65535);
    ok(wait_for(got_settings), "garbage: SETTINGS first");
    /* "this is n" read as a frame header: a length of 7.6 MB, over SETTINGS_MAX_FRAME_SIZE */
    const char junk[] = "this is not a frame at all, just text after the preface";
    if (send(cl.fd, junk, sizeof(junk) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(junk) - 1)
        abort();
    ok(wait_for(got_goaway) && cl.goaway, "garbage: the gateway answers GOAWAY");
    is_int(cl.goaway - 1, NGHTTP2_FRAME_SIZE_ERROR, "garbage: FRAME_SIZE_ERROR");
    ok(wait_for(no_connections), "garbage: the gateway closes the connection");
    finish("garbage");
}

/* ------------------------------------------------------------------ */
/* setup                                                               */
/* ------------------------------------------------------------------ */

static struct tp_snapshot *build_snapshot(void)
{
    char y[1024];
    struct tp_diag d = {0};
    int n = snprintf(y, sizeof(y),
                     "listeners:\n"
                     "  - name: " FAKE_LISTENER "\n"
                     "    address: 127.0.0.1:8080\n"
                     "    h2c: true\n"
                     "limits:\n"
                     "  max_header_bytes: %d\n"
                     "  max_body_bytes: 256MiB\n"
                     "  h2_max_concurrent_streams: %d\n"
                     "timeouts:\n"
                     "  upstream_response: 20s\n"
                     "upstreams:\n"
                     "  - name: up\n"
                     "    endpoints:\n"
                     "      - address: %s\n"
                     "routes:\n"
                     "  - name: api\n"
                     "    match: {path_prefix: /api}\n"
                     "    upstream: up\n",
                     HEADER_BYTES, MAX_STREAMS, up.addr.text);
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
    up_open();
    up_reset(NULL, 0, 0, true);
    struct tp_snapshot *s = build_snapshot();
    if (!s) {
        printf("Bail out! the test configuration was refused\n");
        return 1;
    }
    tp_snapshot_publish(s);
    fake_reactor_spin(sh, 1, 0); /* the loop adopts the published snapshot */
    ok(sh->snap == s, "setup: the shard runs on the published snapshot");
    cl.fd = -1;

    test_settings_on_start();
    test_get_proxied_and_404();
    test_response_flow_control();
    test_request_flow_control();
    test_goaway_on_garbage();

    for (int i = 0; i < cl.n_st; i++)
        free(cl.st[i].body);
    close(up.lfd);
    fake_reactor_destroy(sh);
    tp_snapshot_shutdown();
    return tap_done();
}
