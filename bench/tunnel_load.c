/* SPDX-License-Identifier: MIT */
/*
 * bench/tunnel_load.c: the WebSocket load generator of bench/tunnels.sh. One
 * thread, epoll, non-blocking sockets.
 *
 *   tunnel_load echo HOST PORT CONNS SIZE WARMUP_S DURATION_S [PID...]
 *       CONNS WebSocket connections (GET /echo, Upgrade: websocket, the 101's
 *       Sec-WebSocket-Accept checked), each in a closed loop: one masked
 *       binary frame of SIZE bytes out, wait for its echo (payload checked),
 *       next. After WARMUP_S seconds, DURATION_S seconds are measured:
 *       messages echoed and the round-trip time of each (histogram, 1 us).
 *   tunnel_load bulk HOST PORT WARMUP_S DURATION_S [PID...]
 *       One connection to GET /bulk: counts the bytes received in the
 *       measured seconds (the upstream writes frames as fast as they go),
 *       discarding them in the kernel (MSG_TRUNC) so that the load side
 *       spends as little as it can per byte.
 *
 * With PIDs, their CPU time (utime + stime from /proc/PID/stat) over exactly
 * the measured seconds is reported too (cpu_ticks), and always its own
 * (self_ticks). Prints "TPTUN-START" when the measured seconds begin, then at
 * the end one line:
 *   TPTUN mode=.. conns=.. messages=.. bytes=.. duration_us=.. p50_us=..
 *         p99_us=.. cpu_ticks=.. self_ticks=.. errors=..
 * and exits 1 when setup failed (connect, handshake) or a message came back
 * wrong.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#define HIST_US     1000000 /* round trips up to 1 s in 1 us steps; beyond: the last bucket */
#define SETUP_LIMIT 30.0    /* seconds for every connection to finish its handshake */
#define KEY         "dGJlbmNoIHR1bm5lbCBrZXk="

enum { ST_CONNECTING, ST_HANDSHAKE, ST_RUN };

struct conn {
    int fd;
    int state;
    double sent_at;
    size_t in_len;
    unsigned char *in;
};

static int ep;
static size_t in_cap;
static unsigned char *frame; /* the masked frame every echo connection sends */
static size_t frame_len;
static unsigned char *expect; /* the unmasked frame it must get back */
static size_t expect_len;
static char request[512];
static size_t request_len;
static char accept_want[32];
static uint64_t hist[HIST_US + 1];
static uint64_t messages, bytes, errors;
static int measuring;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

static unsigned long long cpu_ticks(char **pids, int n)
{
    unsigned long long total = 0;

    for (int i = 0; i < n; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%s/stat", pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            continue; /* gone: counts nothing */
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *p = strrchr(buf, ')');
        unsigned long long ut, st;
        /* after the name: state, then fields 4..13, then utime and stime (14, 15) */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
            total += ut + st;
    }
    return total;
}

static void build_frames(size_t size)
{
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t hl = size < 126 ? 2 : 4;

    frame_len = hl + 4 + size;
    expect_len = hl + size;
    frame = malloc(frame_len);
    expect = malloc(expect_len);
    if (!frame || !expect)
        fail("malloc");
    frame[0] = expect[0] = 0x82; /* FIN, binary */
    if (hl == 2) {
        frame[1] = (unsigned char)(0x80 | size);
        expect[1] = (unsigned char)size;
    } else {
        frame[1] = 0x80 | 126;
        expect[1] = 126;
        frame[2] = expect[2] = (unsigned char)(size >> 8);
        frame[3] = expect[3] = (unsigned char)size;
    }
    memcpy(frame + hl, mask, 4);
    for (size_t i = 0; i < size; i++) {
        unsigned char b = (unsigned char)('a' + i % 26);
        expect[hl + i] = b;
        frame[hl + 4 + i] = b ^ mask[i & 3];
    }
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* EAGAIN included: one small message never fills a socket buffer */
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_message(struct conn *c)
{
    c->sent_at = now();
    return write_all(c->fd, frame, frame_len);
}

/* Checks the 101 head in c->in; leaves what follows it. 1: done, 0: more, -1: bad. */
static int handshake(struct conn *c)
{
    unsigned char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!e)
        return c->in_len == in_cap ? -1 : 0;
    size_t hl = (size_t)(e + 4 - c->in);
    char head[4096];
    if (hl >= sizeof head)
        return -1;
    memcpy(head, c->in, hl);
    head[hl] = '\0';
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "tunnel_load: no 101: %.80s\n", head);
        return -1;
    }
    char want[96];
    snprintf(want, sizeof want, "\r\nSec-WebSocket-Accept: %s\r\n", accept_want);
    if (!strcasestr(head, want)) {
        fprintf(stderr, "tunnel_load: 101 without the right Sec-WebSocket-Accept\n");
        return -1;
    }
    memmove(c->in, c->in + hl, c->in_len - hl);
    c->in_len -= hl;
    return 1;
}

/* Echo mode: consumes complete echoed frames; sends the next message. */
static int on_echo_data(struct conn *c)
{
    while (c->in_len >= expect_len) {
        if (memcmp(c->in, expect, expect_len) != 0) {
            errors++;
            fprintf(stderr, "tunnel_load: wrong echo\n");
            return -1;
        }
        memmove(c->in, c->in + expect_len, c->in_len - expect_len);
        c->in_len -= expect_len;
        if (measuring) {
            double us = (now() - c->sent_at) * 1e6;
            hist[us < HIST_US ? (size_t)us : HIST_US]++;
            messages++;
            bytes += expect_len - 2;
        }
        if (send_message(c) < 0)
            return -1;
    }
    return 0;
}

static double percentile(double q)
{
    uint64_t total = 0, seen = 0;
    for (size_t i = 0; i <= HIST_US; i++)
        total += hist[i];
    if (!total)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)total);
    if (rank >= total)
        rank = total - 1;
    for (size_t i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > rank)
            return (double)i + 0.5;
    }
    return HIST_US;
}

static void usage(void)
{
    fprintf(stderr, "usage: tunnel_load echo HOST PORT CONNS SIZE WARMUP_S DURATION_S [PID...]\n"
                    "       tunnel_load bulk HOST PORT WARMUP_S DURATION_S [PID...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    int bulk = strcmp(argv[1], "bulk") == 0;
    if (!bulk && strcmp(argv[1], "echo") != 0)
        usage();
    if (argc < (bulk ? 6 : 8))
        usage();
    const char *host = argv[2];
    int port = atoi(argv[3]);
    int nconns = bulk ? 1 : atoi(argv[4]);
    size_t size = bulk ? 0 : (size_t)atol(argv[5]);
    double warmup = atof(argv[bulk ? 4 : 6]);
    double duration = atof(argv[bulk ? 5 : 7]);
    char **pids = argv + (bulk ? 6 : 8);
    int npids = argc - (bulk ? 6 : 8);
    if (nconns < 1 || duration <= 0 || (!bulk && (size < 1 || size > 65535)))
        usage();
    signal(SIGPIPE, SIG_IGN);

    if (!bulk)
        build_frames(size);
    in_cap = bulk ? 256 * 1024 : (expect_len + 4096);
    {
        static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
        unsigned char md[SHA_DIGEST_LENGTH];
        char kg[128];
        int n = snprintf(kg, sizeof kg, "%s%s", KEY, guid);
        SHA1((const unsigned char *)kg, (size_t)n, md);
        EVP_EncodeBlock((unsigned char *)accept_want, md, SHA_DIGEST_LENGTH);
    }
    request_len =
        (size_t)snprintf(request, sizeof request,
                         "GET /%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         bulk ? "bulk" : "echo", host, port, KEY);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        usage();
    ep = epoll_create1(0);
    if (ep < 0)
        fail("epoll_create1");
    struct conn *conns = calloc((size_t)nconns, sizeof *conns);
    if (!conns)
        fail("calloc");
    int one = 1;
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->in = malloc(in_cap);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (!c->in || c->fd < 0)
            fail("socket");
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
            fail("connect");
        c->state = ST_CONNECTING;
        struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e) < 0)
            fail("epoll_ctl");
    }

    double t_start = now(), t_measure = 0, t_end = 0;
    int ready = 0;
    unsigned long long ticks0 = 0, ticks1 = 0, self0 = 0, self1 = 0;
    char *self = "self";
    struct epoll_event evs[512];
    for (;;) {
        double t = now();
        if (ready < nconns && t - t_start > SETUP_LIMIT) {
            fprintf(stderr, "tunnel_load: only %d of %d connections upgraded within %.0f s\n", ready, nconns,
                    SETUP_LIMIT);
            return 1;
        }
        if (ready == nconns && !t_measure) {
            t_measure = t + warmup;
            t_end = t_measure + duration;
        }
        if (t_measure && !measuring && t >= t_measure) {
            /* tells the script the window begins (it samples the CPUs over it) */
            printf("TPTUN-START\n");
            fflush(stdout);
            ticks0 = cpu_ticks(pids, npids);
            self0 = cpu_ticks(&self, 1);
            t_measure = now();
            t_end = t_measure + duration;
            measuring = 1;
        }
        if (measuring && t >= t_end) {
            t_end = now();
            ticks1 = cpu_ticks(pids, npids);
            self1 = cpu_ticks(&self, 1);
            break;
        }
        int n = epoll_wait(ep, evs, 512, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->state == ST_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                    errno = err;
                    fail("connect");
                }
                if (write_all(c->fd, request, request_len) < 0)
                    fail("write handshake");
                c->state = ST_HANDSHAKE;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
                    fail("epoll_ctl");
                continue;
            }
            ssize_t r;
            for (;;) {
                if (bulk && c->state == ST_RUN) {
                    /* counted, not copied: TCP drops the bytes on MSG_TRUNC */
                    r = recv(c->fd, c->in, in_cap, MSG_TRUNC);
                    if (r > 0 && measuring)
                        bytes += (uint64_t)r;
                } else {
                    r = read(c->fd, c->in + c->in_len, in_cap - c->in_len);
                    if (r > 0)
                        c->in_len += (size_t)r;
                }
                if (r < 0 && errno == EINTR)
                    continue;
                break;
            }
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                fprintf(stderr, "tunnel_load: connection closed by the peer (%s)\n",
                        r == 0 ? "EOF" : strerror(errno));
                return 1;
            }
            if (r < 0)
                continue;
            if (c->state == ST_HANDSHAKE) {
                int h = handshake(c);
                if (h < 0)
                    return 1;
                if (h == 0)
                    continue;
                c->state = ST_RUN;
                ready++;
                if (bulk) {
                    if (measuring)
                        bytes += c->in_len;
                    c->in_len = 0;
                } else if (send_message(c) < 0) {
                    fail("write");
                }
            }
            if (!bulk && c->state == ST_RUN && on_echo_data(c) < 0)
                return 1;
        }
    }

    double secs = t_end - t_measure;
    printf("TPTUN mode=%s conns=%d messages=%llu bytes=%llu duration_us=%.0f p50_us=%.1f p99_us=%.1f "
           "cpu_ticks=%llu self_ticks=%llu errors=%llu\n",
           bulk ? "bulk" : "echo", nconns, (unsigned long long)messages, (unsigned long long)bytes,
           secs * 1e6, percentile(0.50), percentile(0.99), ticks1 - ticks0, self1 - self0,
           (unsigned long long)errors);
    return errors ? 1 : 0;
}
