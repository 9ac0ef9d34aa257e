/* SPDX-License-Identifier: MIT */
/*
 * bench/reqs.c: sends an exact number of keep-alive HTTP/1.1 GET requests
 * over C connections (one request in flight per connection) and exits when
 * every answer is in. wrk runs for a duration; bench/instr.sh needs a fixed
 * request count so that instructions per request do not depend on timing.
 *
 *   reqs HOST PORT CONNS TOTAL [PATH] [--hold] [--spread[=K]]
 *
 * Prints one line: "REQS done=N ok=N non2xx=N errors=N conns=C us=T".
 * With --hold, after the last answer the connections stay open (idle, one
 * request served on each) until a line arrives on stdin or stdin closes:
 * bench/idle_memory.sh measures the gateway's memory meanwhile, and the line
 * "HELD n" is printed once every connection is idle.
 *
 * Connections beyond 20,000 need more than one source address (the
 * ephemeral port range holds about 28,000): with --spread[=K], connection i
 * is bound to 127.0.0.(2 + (K + i) / 20000) (IP_BIND_ADDRESS_NO_PORT, any
 * port); K lets several reqs processes share the addresses.
 *
 * Responses must carry Content-Length (the bench upstream's do); chunked
 * bodies are not parsed. Epoll, one thread, no dependencies.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    unsigned sent, got; /* requests sent / answers complete */
    unsigned quota;     /* requests this connection sends */
    size_t have;        /* bytes in buf */
    char buf[4096];
};

static char req[512];
static size_t req_len;
static unsigned long ok_n, non2xx, errors;

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int send_req(struct conn *c)
{
    size_t off = 0;
    while (off < req_len) {
        ssize_t n = send(c->fd, req + off, req_len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    c->sent++;
    return 0;
}

/* Consumes complete responses from c->buf; returns how many, -1 on a malformed one. */
static int parse(struct conn *c)
{
    int done = 0;
    for (;;) {
        char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
        if (!end)
            return c->have == sizeof(c->buf) ? -1 : done;
        size_t head = (size_t)(end - c->buf) + 4, body = 0;
        int status = 0;
        if (sscanf(c->buf, "HTTP/1.%*d %d", &status) != 1)
            return -1;
        for (char *p = c->buf; p < end; p++) {
            if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
                body = strtoul(p + 15, NULL, 10);
                break;
            }
        }
        if (head + body > sizeof(c->buf))
            return -1;
        if (c->have < head + body)
            return done;
        memmove(c->buf, c->buf + head + body, c->have - head - body);
        c->have -= head + body;
        c->got++;
        done++;
        if (status >= 200 && status < 400)
            ok_n++;
        else
            non2xx++;
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s HOST PORT CONNS TOTAL [PATH] [--hold] [--spread[=K]]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = "/";
    int port = atoi(argv[2]);
    unsigned nconn = (unsigned)atoi(argv[3]), total = (unsigned)atoi(argv[4]);
    int hold = 0, spread = 0;
    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--hold") == 0)
            hold = 1;
        else if (strncmp(argv[i], "--spread", 8) == 0)
            spread = 1 + (argv[i][8] == '=' ? atoi(argv[i] + 9) : 0);
        else
            path = argv[i];
    }
    if (nconn == 0 || total < nconn) {
        fprintf(stderr, "need CONNS >= 1 and TOTAL >= CONNS\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    req_len = (size_t)snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: reqs\r\n\r\n",
                               path, host, port);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "HOST must be an IPv4 address\n");
        return 2;
    }
    struct conn *cs = calloc(nconn, sizeof(*cs));
    int ep = epoll_create1(0);
    if (!cs || ep < 0) {
        perror("setup");
        return 1;
    }
    long long t0 = now_us();
    unsigned live = 0, idle = 0, next = 0, inflight = 0;
    /* At most WINDOW connections wait for an answer at a time: a proxy
     * opens an upstream connection per concurrent request, and 100,000 at
     * once would need as many. Each connection sends its first request as
     * soon as it is connected. */
    const unsigned window = 512;
    struct epoll_event evs[256];
    for (;;) {
        while (next < nconn && inflight < window) {
            struct conn *c = &cs[next];
            c->quota = total / nconn + (next < total % nconn ? 1 : 0);
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int one = 1;
            if (c->fd < 0) {
                perror("socket");
                return 1;
            }
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            if (spread) {
                struct sockaddr_in src = {.sin_family = AF_INET};
                src.sin_addr.s_addr = htonl(0x7f000002u + (unsigned)(spread - 1 + (int)next) / 20000);
                setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
                if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
                    perror("bind");
                    return 1;
                }
            }
            if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || send_req(c) != 0) {
                errors++;
                close(c->fd);
                c->fd = -1;
                next++;
                continue;
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = next};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            live++;
            inflight++;
            next++;
        }
        if (next == nconn && idle >= live)
            break;
        int n = epoll_wait(ep, evs, 256, 10000);
        if (n == 0) {
            fprintf(stderr, "reqs: no progress for 10 s (%u of %u connections done)\n", idle, live);
            break;
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = &cs[evs[k].data.u32];
            ssize_t r = recv(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, 0);
            int done = r > 0 ? (c->have += (size_t)r, parse(c)) : -1;
            if (done < 0 || (r == 0)) {
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = -1;
                live--;
                inflight--;
                continue;
            }
            if (done == 0 || c->got < c->sent)
                continue;
            if (c->sent < c->quota) {
                if (send_req(c) != 0) {
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    c->fd = -1;
                    live--;
                    inflight--;
                }
            } else {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                idle++;
                inflight--;
            }
        }
    }
    long long us = now_us() - t0;
    printf("REQS done=%lu ok=%lu non2xx=%lu errors=%lu conns=%u us=%lld\n", ok_n + non2xx, ok_n, non2xx,
           errors, live, us);
    fflush(stdout);
    if (hold) {
        printf("HELD %u\n", live);
        fflush(stdout);
        char line[64];
        if (!fgets(line, sizeof(line), stdin)) {
            /* stdin closed: done */
        }
    }
    return errors || idle < live ? 1 : 0;
}
