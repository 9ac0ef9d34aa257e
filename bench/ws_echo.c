/* SPDX-License-Identifier: MIT */
/*
 * bench/ws_echo.c: the WebSocket upstream of bench/tunnels.sh. One thread,
 * epoll, non-blocking sockets, no allocation per message.
 *
 *   ws_echo PORT
 *
 * A GET with "Upgrade: websocket" and a Sec-WebSocket-Key gets a 101 with the
 * matching Sec-WebSocket-Accept (SHA-1 + base64, OpenSSL), then
 *   - path /bulk: an endless stream of unmasked binary frames (65535-byte
 *     payloads), written as fast as the peer reads; what the peer sends is
 *     read and dropped;
 *   - any other path: every client frame (masked) is sent back unmasked with
 *     the same opcode; a close frame ends the connection.
 * Any other request gets 200 with the X-Forwarded-For value as body (or "ok")
 * and the connection is closed: readiness probes and the proxies' /xff check.
 *
 * Minimal on purpose: no fragmentation handling (a fragment is echoed as a
 * fragment), no extensions, frames up to the input buffer size.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#define IN_CAP       (256 * 1024)
#define OUT_CAP      (256 * 1024)
#define BULK_PAYLOAD 65535
#define BULK_FRAMES  4

enum { ST_HEAD, ST_ECHO, ST_BULK };

struct conn {
    int fd;
    int state;
    int want_out; /* EPOLLOUT registered */
    size_t in_len;
    size_t out_off, out_len;
    size_t bulk_off;
    unsigned char in[IN_CAP];
    unsigned char out[OUT_CAP];
};

static int ep;
static unsigned char *bulk;
static size_t bulk_len;

static void fail(const char *what)
{
    perror(what);
    exit(1);
}

/* The value of header NAME in HEAD (NUL-terminated, CRLF lines), copied to
 * OUT; false when absent or too long. */
static int header_value(const char *head, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");

    while (p && p[2] != '\r' && p[2] != '\0') {
        const char *line = p + 2;
        const char *end = strstr(line, "\r\n");
        if (!end)
            return 0;
        if ((size_t)(end - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            size_t n = (size_t)(end - v);
            while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
            if (n >= cap)
                return 0;
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
        p = end;
    }
    return 0;
}

static void ws_accept(const char *key, char out[32])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char buf[160];
    unsigned char md[SHA_DIGEST_LENGTH];
    int n = snprintf(buf, sizeof buf, "%s%s", key, guid);

    SHA1((const unsigned char *)buf, (size_t)n, md);
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
}

static void set_events(struct conn *c, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e) < 0)
        fail("epoll_ctl mod");
}

static void conn_close(struct conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    free(c);
}

/* Writes what is queued in c->out; returns -1 on a dead peer. Registers for
 * EPOLLOUT (and stops reading) while something is left. */
static int flush_out(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->want_out) {
            c->want_out = 0;
            set_events(c, EPOLLIN);
        }
    } else if (!c->want_out) {
        c->want_out = 1;
        set_events(c, EPOLLOUT);
    }
    return 0;
}

static int queue(struct conn *c, const void *p, size_t n)
{
    if (OUT_CAP - c->out_len < n)
        return -1;
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

/* Handles a complete request head (c->in up to and including CRLFCRLF, HEAD_LEN
 * bytes). Returns -1 to close. */
static int on_head(struct conn *c, size_t head_len)
{
    char head[8192], val[256], acc[32], resp[512];
    int n;

    if (head_len >= sizeof head)
        return -1;
    memcpy(head, c->in, head_len);
    head[head_len] = '\0';
    memmove(c->in, c->in + head_len, c->in_len - head_len);
    c->in_len -= head_len;

    if (header_value(head, "Upgrade", val, sizeof val) && strcasecmp(val, "websocket") == 0 &&
        header_value(head, "Sec-WebSocket-Key", val, sizeof val) && strlen(val) < 64) {
        ws_accept(val, acc);
        n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     acc);
        if (queue(c, resp, (size_t)n) < 0)
            return -1;
        c->state = strncmp(head, "GET /bulk", 9) == 0 ? ST_BULK : ST_ECHO;
        return 0;
    }
    const char *body = header_value(head, "X-Forwarded-For", val, sizeof val) ? val : "ok";
    n = snprintf(
        resp, sizeof resp,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
        strlen(body), body);
    /* small enough for an empty socket buffer; then close */
    if (write(c->fd, resp, (size_t)n) < 0)
        return -1;
    return -1;
}

/* Echoes every complete frame in c->in while the output has room. */
static int echo_frames(struct conn *c)
{
    size_t pos = 0;

    while (c->in_len - pos >= 2) {
        const unsigned char *p = c->in + pos;
        size_t avail = c->in_len - pos, hl = 2;
        uint64_t len = p[1] & 0x7f;
        int masked = p[1] & 0x80;

        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            hl = 10;
        }
        if (len > IN_CAP - 14)
            return -1; /* larger than this server takes */
        size_t mhl = hl + (masked ? 4 : 0);
        if (avail < mhl + len)
            break;
        if ((p[0] & 0x0f) == 8)
            return -1; /* close */
        size_t ohl = len < 126 ? 2 : len <= 0xffff ? 4 : 10;
        if (OUT_CAP - c->out_len < ohl + len)
            break; /* after the output drains */
        unsigned char *o = c->out + c->out_len;
        o[0] = p[0];
        if (ohl == 2) {
            o[1] = (unsigned char)len;
        } else if (ohl == 4) {
            o[1] = 126;
            o[2] = (unsigned char)(len >> 8);
            o[3] = (unsigned char)len;
        } else {
            o[1] = 127;
            for (int i = 0; i < 8; i++)
                o[2 + i] = (unsigned char)(len >> (56 - 8 * i));
        }
        const unsigned char *src = p + mhl;
        if (masked) {
            const unsigned char *m = p + hl;
            for (size_t i = 0; i < len; i++)
                o[ohl + i] = src[i] ^ m[i & 3];
        } else {
            memcpy(o + ohl, src, len);
        }
        c->out_len += ohl + len;
        pos += mhl + len;
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
    return 0;
}

static int bulk_write(struct conn *c)
{
    for (;;) {
        ssize_t n = write(c->fd, bulk + c->bulk_off, bulk_len - c->bulk_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -1;
        }
        c->bulk_off = (c->bulk_off + (size_t)n) % bulk_len;
    }
}

/* Returns -1 when the connection is to be closed. */
static int on_event(struct conn *c, uint32_t ev)
{
    if (ev & (EPOLLERR | EPOLLHUP) && !(ev & EPOLLIN))
        return -1;
    if (c->state == ST_BULK) {
        if (ev & EPOLLIN) {
            unsigned char sink[16384];
            ssize_t n = read(c->fd, sink, sizeof sink);
            if (n == 0 || (n < 0 && errno != EAGAIN))
                return -1;
        }
        if (c->out_len) {
            if (flush_out(c) < 0)
                return -1;
            if (c->out_len)
                return 0;
            set_events(c, EPOLLIN | EPOLLOUT);
            c->want_out = 1;
        }
        return bulk_write(c);
    }
    if (ev & EPOLLOUT) {
        if (flush_out(c) < 0)
            return -1;
        if (c->out_len)
            return 0;
        if (c->state == ST_ECHO && (echo_frames(c) < 0 || flush_out(c) < 0))
            return -1;
        if (c->out_len)
            return 0;
    }
    while (!c->out_len || c->state == ST_HEAD) {
        ssize_t n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->in_len += (size_t)n;
        if (c->state == ST_HEAD) {
            unsigned char *e = memmem(c->in, c->in_len, "\r\n\r\n", 4);
            if (!e) {
                if (c->in_len == IN_CAP)
                    return -1;
                continue;
            }
            if (on_head(c, (size_t)(e + 4 - c->in)) < 0)
                return -1;
            if (c->state == ST_BULK) {
                if (flush_out(c) < 0)
                    return -1;
                c->want_out = 1;
                set_events(c, EPOLLIN | EPOLLOUT);
                return c->out_len ? 0 : bulk_write(c);
            }
        }
        if (echo_frames(c) < 0)
            return -1;
        if (flush_out(c) < 0)
            return -1;
        if (c->in_len == IN_CAP)
            break; /* a frame larger than the buffer cannot complete */
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: ws_echo PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    bulk_len = (size_t)BULK_FRAMES * (4 + BULK_PAYLOAD);
    bulk = malloc(bulk_len);
    if (!bulk)
        fail("malloc");
    for (size_t f = 0; f < BULK_FRAMES; f++) {
        unsigned char *p = bulk + f * (4 + BULK_PAYLOAD);
        p[0] = 0x82;
        p[1] = 126;
        p[2] = BULK_PAYLOAD >> 8;
        p[3] = BULK_PAYLOAD & 0xff;
        for (size_t i = 0; i < BULK_PAYLOAD; i++)
            p[4 + i] = (unsigned char)(i * 31 + f);
    }

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (ls < 0)
        fail("socket");
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0)
        fail("bind");
    if (listen(ls, 4096) < 0)
        fail("listen");
    ep = epoll_create1(0);
    if (ep < 0)
        fail("epoll_create1");
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &le) < 0)
        fail("epoll_ctl listen");

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct conn *nc = malloc(sizeof *nc);
                    if (!nc)
                        fail("malloc");
                    nc->fd = fd;
                    nc->state = ST_HEAD;
                    nc->want_out = 0;
                    nc->in_len = nc->out_off = nc->out_len = nc->bulk_off = 0;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0)
                        fail("epoll_ctl add");
                }
                if (errno != EAGAIN && errno != ECONNABORTED && errno != EINTR)
                    perror("accept4"); /* e.g. EMFILE: keep serving the others */
                continue;
            }
            if (on_event(c, evs[i].events) < 0)
                conn_close(c);
        }
    }
}
