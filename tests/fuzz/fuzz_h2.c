/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: the downstream HTTP/2 session (src/http/h2_server.c) fed
 * whatever a client may send after the connection preface. A real shard runs
 * on this thread (fake_reactor.h) with the HTTP layer registered and a
 * snapshot whose listener has h2c; each input is one client connection, one
 * end of a socketpair handed to the HTTP/1 acceptor as the reactor would, so
 * the preface check, the hand-over to tp_h2_start, libnghttp2 and every
 * turnpike callback (header copy, request dispatch, gateway answers, resets,
 * GOAWAY, the close) run in production wiring. Routes: /dead goes to an
 * upstream nothing listens on (502 after a refused connect), everything else
 * is a 404 gateway answer.
 *
 * Checked, besides what ASan sees: once the client has gone, every
 * connection closes, no request is left and no provided buffer is held
 * (bounded wait; a session that stays is a trap).
 *
 * Input: the bytes after the 24-byte preface, written in one go while the
 * loop runs and the client side reads (and discards) what it is sent.
 * Exits 0 on every input when io_uring is unavailable (nothing to fuzz).
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

#include "../unit/fake_reactor.h"
#include "http/request.h"
#include "http/sessions.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SETTLE_MS 5000 /* [ms] bound for the connection to go once the client closed */

static struct tp_shard *sh;
static int cl = -1;

/* An address on loopback that refuses connections: bound once, then closed. */
static void dead_address(char *out, size_t n)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        abort();
    close(fd);
    snprintf(out, n, "127.0.0.1:%u", ntohs(a.sin_port));
}

static struct tp_snapshot *build_snapshot(void)
{
    char y[1024], dead[64];
    struct tp_diag d = {0};

    dead_address(dead, sizeof(dead));
    int n = snprintf(y, sizeof(y),
                     "listeners:\n"
                     "  - name: " FAKE_LISTENER "\n"
                     "    address: 127.0.0.1:8080\n"
                     "    h2c: true\n"
                     "limits:\n"
                     "  max_header_bytes: 1024\n"
                     "  h2_max_concurrent_streams: 8\n"
                     "  h2_max_resets_per_s: 20\n"
                     "timeouts:\n"
                     "  upstream_connect: 1s\n"
                     "  upstream_response: 1s\n"
                     "upstreams:\n"
                     "  - name: dead\n"
                     "    endpoints:\n"
                     "      - address: %s\n"
                     "routes:\n"
                     "  - name: dead\n"
                     "    match: {path_prefix: /dead}\n"
                     "    upstream: dead\n",
                     dead);
    struct tp_config *cfg = tp_config_parse("fuzz.yaml", y, (size_t)n, &d);
    struct tp_snapshot *s = cfg ? tp_snapshot_build(cfg, 1, 1, &d) : NULL;

    if (!s) {
        for (size_t i = 0; i < d.n; i++)
            fprintf(stderr, "fuzz_h2: %s\n", d.msgs[i]);
        if (cfg)
            tp_config_destroy(cfg);
    }
    tp_diag_dispose(&d);
    return s;
}

static bool setup(void)
{
    bool skip;

    signal(SIGPIPE, SIG_IGN);
    if (tp_http_register() < 0)
        abort();
    sh = fake_reactor_create(64, 4096, &skip);
    if (!sh) {
        if (!skip)
            abort();
        fprintf(stderr, "fuzz_h2: io_uring unavailable, every input is skipped\n");
        return false;
    }
    struct tp_snapshot *s = build_snapshot();
    if (!s)
        abort();
    tp_snapshot_publish(s);
    fake_reactor_spin(sh, 1, 0); /* the loop adopts the published snapshot */
    if (sh->snap != s)
        abort();
    return true;
}

/* The client reads and drops what the gateway sent. */
static void client_drain(void)
{
    char buf[16384];
    while (cl >= 0 && recv(cl, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
}

static bool all_gone(struct tp_shard *s, void *ctx)
{
    (void)ctx;
    return tp_h1s_count(s) == 0 && tp_h1c_count(s) == 0 && s->bufs.held == 0 &&
           tp_stat_get(&tp_http_shard(s)->active_requests) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int state; /* 0 not set up, 1 running, 2 unavailable */
    int sv[2];
    struct sockaddr_storage peer = {.ss_family = AF_UNIX};

    if (state == 0)
        state = setup() ? 1 : 2;
    if (state == 2)
        return 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
        abort();
    cl = sv[1];
    if (fcntl(cl, F_SETFL, fcntl(cl, F_GETFL) | O_NONBLOCK) == -1)
        abort();
    fake_reactor_accepted(sh);
    tp_h1s_accept(sh, sv[0], 0, &peer);

    /* the preface, then the input, as far as the gateway takes it while it runs */
    uint8_t *msg = malloc(TP_H2_PREFACE_LEN + size);
    if (!msg)
        abort();
    memcpy(msg, TP_H2_PREFACE, TP_H2_PREFACE_LEN);
    memcpy(msg + TP_H2_PREFACE_LEN, data, size);
    size_t off = 0, len = TP_H2_PREFACE_LEN + size;
    for (unsigned spins = 0; off < len && spins < 200; spins++) {
        ssize_t w = send(cl, msg + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w == -1 && errno != EAGAIN && errno != EINTR)
            break; /* the gateway closed */
        tp_shard_run_once(sh, 1);
        client_drain();
    }
    free(msg);
    /* let it answer (responses, 502s, GOAWAY) for a few iterations */
    for (unsigned i = 0; i < 20; i++) {
        tp_shard_run_once(sh, 1);
        client_drain();
    }
    close(cl);
    cl = -1;
    tp_h1c_close_all(sh, true);
    if (!fake_reactor_run(sh, all_gone, NULL, SETTLE_MS))
        __builtin_trap(); /* a connection, request or buffer outlived its client */
    return 0;
}
