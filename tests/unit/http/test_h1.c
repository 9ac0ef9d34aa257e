/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the HTTP/1 head helpers (src/http/h1.h, src/http/h1.c):
 * recording llhttp spans as slices (tp_head_on_*), tp_head_parse over a
 * receive queue of provided buffers (one buffer, split in 2 and 3, byte by
 * byte, pushed at once and one at a time), value trimming, header ids, the
 * errors (obs-fold, empty name, 414, 431), buffer references after
 * tp_head_release / tp_head_dispose, tp_h1_header_id, tp_eq_nocase,
 * tp_h1_has_token, tp_h1_reason, tp_h1_error_response byte for byte, and the
 * small block writers.
 *
 * The shard is faked (fake_shard.h): buffers live in plain memory and
 * tp_buf_release writes a ring nobody reads, so the test can see which buffer
 * went back and when. llhttp runs with callbacks that forward to tp_head_on_*
 * and pause in on_headers_complete: the wiring of src/http/h1.c that the
 * client and upstream sessions use (tp_h1_parser).
 * Single-threaded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_shard.h"
#include "http/h1.h"
#include "tap.h"

/* One parse: parser, head, queue. */
struct job {
    struct tp_h1_parser hp;
    struct tp_head h;
    struct tp_inq q;
    unsigned status;
};

static void job_init(struct job *j, llhttp_type_t type)
{
    memset(j, 0, sizeof(*j));
    tp_head_init(&j->h);
    tp_h1_parser_init(&j->hp, type, &j->h, NULL);
    tp_inq_init(&j->q);
}

static enum tp_head_rc job_parse(struct tp_shard *sh, struct job *j, uint32_t limit)
{
    j->status = 0;
    return tp_head_parse(sh, &j->hp, &j->q, limit, &j->status);
}

static void job_dispose(struct tp_shard *sh, struct job *j)
{
    tp_head_dispose(sh, &j->h);
    tp_inq_clear(sh, &j->q);
}

static uint16_t next_bid;

/* Queues <len> bytes of <data> in buffers of the sizes in <cuts> (cycled; 0 = all). */
static void push_split(struct tp_shard *sh, struct tp_inq *q, const char *data, size_t len,
                       const size_t *cuts, size_t n_cuts)
{
    size_t off = 0, k = 0;
    while (off < len) {
        size_t n = n_cuts ? cuts[k++ % n_cuts] : len;
        if (n > len - off)
            n = len - off;
        if (!fake_recv_push(sh, q, next_bid, data + off, (uint32_t)n))
            abort();
        next_bid = (uint16_t)((next_bid + 1) & (sh->bufs.count - 1));
        off += n;
    }
}

/* Renders a parsed head as text: the url or reason, then "name: value [id]" lines. */
static void render(const struct tp_head *h, char *out, size_t cap)
{
    int n = snprintf(out, cap, "<%.*s|%.*s>\n", (int)h->url.len, tp_slice_ptr(h, h->url), (int)h->reason.len,
                     tp_slice_ptr(h, h->reason));
    for (uint32_t i = 0; i < h->n_hdrs && n > 0 && (size_t)n < cap; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        n += snprintf(out + n, cap - (size_t)n, "%.*s: %.*s [%u]\n", (int)hd->name.len,
                      tp_slice_ptr(h, hd->name), (int)hd->value.len, tp_slice_ptr(h, hd->value), hd->id);
    }
}

/* ---- the reference request ---- */

static const char REQ_HEAD[] = "GET /api/v1/items?q=1&x=%20 HTTP/1.1\r\n"
                               "Host: example.com\r\n"
                               "Content-Length: 5  \r\n"
                               "Connection: keep-alive, X-Foo\r\n"
                               "X-Request-Id: abc-123\r\n"
                               "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
                               "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"
                               "X-Custom:   spaced value \t \r\n"
                               "Empty:\r\n"
                               "cookie: a=b; c=d\r\n"
                               "KEEP-ALIVE: timeout=5\t\r\n"
                               "x-forwarded-proto: http\r\n"
                               "X-FORWARDED-HOST: example.com\r\n"
                               "Proxy-Connection: close\r\n"
                               "TE: trailers\r\n"
                               "Expect: 100-continue\r\n"
                               "Trailer: X-Sum\r\n"
                               "\r\n";
static const char REQ_BODY[] = "hello";

static const char REQ_RENDERED[] =
    "</api/v1/items?q=1&x=%20|>\n"
    "Host: example.com [1]\n"
    "Content-Length: 5 [2]\n"
    "Connection: keep-alive, X-Foo [4]\n"
    "X-Request-Id: abc-123 [13]\n"
    "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 [14]\n"
    "X-Forwarded-For: 10.0.0.1, 10.0.0.2 [10]\n"
    "X-Custom: spaced value [0]\n"
    "Empty:  [0]\n"
    "cookie: a=b; c=d [16]\n"
    "KEEP-ALIVE: timeout=5 [5]\n"
    "x-forwarded-proto: http [11]\n"
    "X-FORWARDED-HOST: example.com [12]\n"
    "Proxy-Connection: close [6]\n"
    "TE: trailers [7]\n"
    "Expect: 100-continue [15]\n"
    "Trailer: X-Sum [9]\n";

static char full_req[sizeof(REQ_HEAD) + sizeof(REQ_BODY)];
static size_t head_len, full_len;

static void test_one_buffer(struct tp_shard *sh)
{
    struct job j;
    char text[4096];
    uint16_t bid = next_bid;
    size_t n;
    const char *v;

    job_init(&j, HTTP_REQUEST);
    push_split(sh, &j.q, full_req, full_len, NULL, 0);
    is_int(job_parse(sh, &j, 4096), TP_HEAD_DONE, "one buffer: head complete");
    ok(j.h.base == (const char *)tp_buf_ptr(sh, bid), "base points into the receive buffer");
    ok(j.h.copy == NULL, "no copy made");
    is_int(j.h.len, head_len, "head length up to the empty line");
    ok(j.h.hold && !j.h.hold_ref.blk && j.h.hold_ref.bid == bid, "the head holds its buffer");
    is_int(sh->bufs.refs[bid], 2, "buffer refs: queue + head");
    is_int(j.q.n, 1, "body bytes stay queued");
    is_int(j.q.bytes, 5, "5 body bytes left");
    is_int(tp_inq_front(&j.q)->off, head_len, "queue front starts after the head");
    is_int(j.h.n_hdrs, 16, "16 headers");
    render(&j.h, text, sizeof(text));
    is_str(text, REQ_RENDERED, "url, names, trimmed values and ids");
    ok(j.h.hdrs[7].value.len == 0 && j.h.hdrs[7].value.off <= j.h.len, "empty value: zero length, in range");

    const struct tp_hdr *hd = tp_head_find(&j.h, TP_H_HOST);
    ok(hd && hd->value.len == 11 && memcmp(tp_slice_ptr(&j.h, hd->value), "example.com", 11) == 0,
       "tp_head_find(HOST)");
    ok(tp_head_find(&j.h, TP_H_UPGRADE) == NULL, "tp_head_find of an absent header: NULL");
    v = tp_head_value(&j.h, "x-custom", 8, &n);
    ok(v && n == 12 && memcmp(v, "spaced value", 12) == 0, "tp_head_value(x-custom)");
    v = tp_head_value(&j.h, "empty", 5, &n);
    ok(v && n == 0, "tp_head_value of an empty value");
    ok(tp_head_value(&j.h, "x-missing", 9, &n) == NULL, "tp_head_value of an absent header: NULL");

    /* the body is consumed: the queue drops its reference, the head keeps one */
    tp_inq_consume(sh, &j.q, 5);
    is_int(sh->bufs.refs[bid], 1, "after consuming the body: the head's reference only");
    is_int(sh->bufs.held, 1, "one buffer held");
    tp_head_release(sh, &j.h);
    is_int(sh->bufs.refs[bid], 0, "tp_head_release drops the last reference");
    ok(fake_returned_is(sh, 1, bid), "the buffer went back to the ring");
    is_int(sh->bufs.held, 0, "no buffer held");
    uint32_t sp = sh->bufs.sp;
    job_dispose(sh, &j);
    is_int(sh->bufs.sp, sp, "dispose after release returns nothing twice");
    ok(j.h.base == NULL && j.h.n_hdrs == 0 && j.h.hdrs == j.h.inl, "dispose resets the head");
}

/* The same request split into buffers of <cuts> bytes, all queued up front
 * (<incremental> false) or one at a time as recvs would deliver them. */
static void test_split(struct tp_shard *sh, const size_t *cuts, size_t n_cuts, bool incremental,
                       const char *what)
{
    struct job j;
    char text[4096];
    enum tp_head_rc rc = TP_HEAD_MORE;
    size_t off = 0, pushes = 0;
    bool more_ok = true;

    job_init(&j, HTTP_REQUEST);
    if (!incremental) {
        push_split(sh, &j.q, full_req, full_len, cuts, n_cuts);
        rc = job_parse(sh, &j, 4096);
    } else {
        for (size_t k = 0; off < full_len && rc == TP_HEAD_MORE && pushes < 10000; k++, pushes++) {
            size_t n = cuts[k % n_cuts] < full_len - off ? cuts[k % n_cuts] : full_len - off;
            push_split(sh, &j.q, full_req + off, n, NULL, 0);
            off += n;
            rc = job_parse(sh, &j, 4096);
            if (rc == TP_HEAD_MORE && (j.q.n != 0 || j.h.len != off))
                more_ok = false; /* MORE means every queued byte was consumed */
        }
    }
    is_int(rc, TP_HEAD_DONE, "%s: head complete", what);
    ok(more_ok, "%s: MORE consumed every queued byte", what);
    ok(j.h.copy && j.h.base == j.h.copy, "%s: base is the copy", what);
    ok(!j.h.hold, "%s: no buffer held by the head", what);
    is_int(j.h.len, head_len, "%s: head length", what);
    ok(memcmp(j.h.base, REQ_HEAD, head_len) == 0, "%s: the copy holds the head's bytes", what);
    render(&j.h, text, sizeof(text));
    is_str(text, REQ_RENDERED, "%s: same slices as in one buffer", what);
    if (!incremental)
        is_int(j.q.bytes, full_len - head_len, "%s: the body stays queued", what);
    is_int(j.q.bytes, (incremental ? off : full_len) - head_len, "%s: queued bytes after the head", what);
    is_int(fake_refs_total(sh), j.q.n, "%s: only queued buffers hold references", what);
    is_int(sh->bufs.held, j.q.n, "%s: held = queued buffers", what);
    job_dispose(sh, &j);
    is_int(fake_refs_total(sh), 0, "%s: no references after dispose", what);
    is_int(sh->bufs.held, 0, "%s: held back to 0", what);
}

static void test_splits(struct tp_shard *sh)
{
    static const size_t two[] = {100};              /* 2+ buffers: first holds 100 bytes */
    static const size_t three[] = {37, 200};        /* 3 buffers: 37, 200, rest */
    static const size_t bytes[] = {1};              /* one byte per buffer */
    static const size_t odd[] = {3, 1, 4, 1, 5, 9}; /* mixed */
    size_t cut_end[1] = {head_len - 1};             /* the head's last byte in the next buffer */
    size_t cut_exact[1] = {head_len};               /* head ends exactly at a buffer end */
    size_t cut_crlf[2] = {head_len - 2, 1};         /* split inside the final CRLF */

    test_split(sh, two, 1, false, "2 buffers");
    test_split(sh, three, 2, false, "3 buffers");
    test_split(sh, bytes, 1, false, "byte by byte");
    test_split(sh, odd, 6, false, "odd sizes");
    test_split(sh, cut_end, 1, false, "last byte apart");
    test_split(sh, cut_crlf, 2, false, "split in the final CRLF");
    test_split(sh, two, 1, true, "2 buffers, one recv at a time");
    test_split(sh, three, 2, true, "3 buffers, one recv at a time");
    test_split(sh, bytes, 1, true, "byte by byte, one recv at a time");
    test_split(sh, cut_crlf, 2, true, "final CRLF split, one recv at a time");

    /* the head ends exactly at the end of the first buffer: no copy needed */
    struct job j;
    uint16_t bid = next_bid;
    job_init(&j, HTTP_REQUEST);
    push_split(sh, &j.q, full_req, full_len, cut_exact, 1);
    is_int(job_parse(sh, &j, 4096), TP_HEAD_DONE, "head = first buffer: complete");
    ok(j.h.base == (const char *)tp_buf_ptr(sh, bid) && !j.h.copy, "head = first buffer: base in the buffer");
    is_int(sh->bufs.refs[bid], 1, "the queue let go of the consumed buffer, the head holds it");
    is_int(j.q.n, 1, "the body buffer is queued");
    job_dispose(sh, &j);
    is_int(fake_refs_total(sh), 0, "no references after dispose");
    is_int(sh->bufs.held, 0, "held back to 0");
}

/* Two requests in one buffer, then a response head. */
static void test_pipelined_and_response(struct tp_shard *sh)
{
    static const char two[] = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: bb\r\n\r\n";
    struct job j;
    struct tp_head h2;
    char text[512];
    uint16_t bid = next_bid;

    job_init(&j, HTTP_REQUEST);
    push_split(sh, &j.q, two, sizeof(two) - 1, NULL, 0);
    is_int(job_parse(sh, &j, 4096), TP_HEAD_DONE, "pipelined: first head");
    render(&j.h, text, sizeof(text));
    is_str(text, "</a|>\nHost: a [1]\n", "pipelined: first head's slices");
    is_int(j.h.len, 28, "pipelined: first head length");
    tp_head_release(sh, &j.h);
    is_int(sh->bufs.refs[bid], 1, "released first head: the queue's reference remains");

    /* the second head on the same parser, recorded in another head, once the
     * first (bodiless) message is finished as the client session does */
    tp_h1_parser_finish_message(&j.hp);
    tp_head_init(&h2);
    j.hp.head = &h2;
    j.hp.head_done = false;
    unsigned status = 0;
    is_int(tp_head_parse(sh, &j.hp, &j.q, 4096, &status), TP_HEAD_DONE, "pipelined: second head");
    ok(h2.base == (const char *)tp_buf_ptr(sh, bid) + 28,
       "second head's base is at its offset in the buffer");
    render(&h2, text, sizeof(text));
    is_str(text, "</b|>\nHost: bb [1]\n", "pipelined: second head's slices");
    is_int(j.q.n, 0, "queue empty");
    is_int(sh->bufs.refs[bid], 1, "only the second head holds the buffer");
    tp_head_dispose(sh, &h2);
    job_dispose(sh, &j);
    is_int(fake_refs_total(sh), 0, "pipelined: no references left");
    is_int(sh->bufs.held, 0, "pipelined: held 0");

    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\nServer: up\r\nContent-Length: 0\r\n\r\n";
    static const size_t cuts[] = {10};
    for (int split = 0; split < 2; split++) {
        job_init(&j, HTTP_RESPONSE);
        push_split(sh, &j.q, resp, sizeof(resp) - 1, cuts, split ? 1 : 0);
        is_int(job_parse(sh, &j, 4096), TP_HEAD_DONE, "response head (%s)", split ? "split" : "one buffer");
        render(&j.h, text, sizeof(text));
        is_str(text, "<|Service Unavailable>\nServer: up [0]\nContent-Length: 0 [2]\n",
               "response slices (%s)", split ? "split" : "one buffer");
        is_int(llhttp_get_status_code(&j.hp.p), 503, "status code");
        job_dispose(sh, &j);
        is_int(fake_refs_total(sh), 0, "response: no references left");
    }
}

/* An upgrade request answered without 101: the same parser reads the next
 * request once the upgrade is declined; without declining it would stop. */
static void test_declined_upgrade(struct tp_shard *sh)
{
    static const char two[] =
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        "GET /b HTTP/1.1\r\nHost: bb\r\n\r\n";
    struct job j;
    struct tp_head h2;
    char text[512];
    unsigned status = 0;

    job_init(&j, HTTP_REQUEST);
    push_split(sh, &j.q, two, sizeof(two) - 1, NULL, 0);
    is_int(job_parse(sh, &j, 4096), TP_HEAD_DONE, "upgrade request: head");
    ok(j.hp.p.upgrade == 1, "llhttp saw an upgrade request");
    tp_head_release(sh, &j.h);
    tp_h1_parser_finish_message(&j.hp);
    tp_h1_parser_decline_upgrade(&j.hp);
    tp_head_init(&h2);
    j.hp.head = &h2;
    j.hp.head_done = false;
    is_int(tp_head_parse(sh, &j.hp, &j.q, 4096, &status), TP_HEAD_DONE,
           "declined upgrade: the next head parses");
    render(&h2, text, sizeof(text));
    is_str(text, "</b|>\nHost: bb [1]\n", "declined upgrade: the next head's slices");
    ok(j.hp.p.upgrade == 0, "the next request is not an upgrade");
    tp_h1_parser_decline_upgrade(&j.hp); /* nothing to decline: no effect */
    is_int(llhttp_get_errno(&j.hp.p), HPE_PAUSED, "declining without an upgrade leaves the parser as it was");
    tp_head_dispose(sh, &h2);
    job_dispose(sh, &j);
    is_int(fake_refs_total(sh), 0, "declined upgrade: no references left");
}

/* More headers than the inline array holds. */
static void test_many_headers(struct tp_shard *sh)
{
    char req[8192];
    size_t n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n");
    struct job j;
    bool all = true;

    for (int i = 0; i < 100; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-H%d: v%d\r\n", i, i * 7);
    n += (size_t)snprintf(req + n, sizeof(req) - n, "\r\n");
    for (int split = 0; split < 2; split++) {
        static const size_t cuts[] = {333};
        job_init(&j, HTTP_REQUEST);
        push_split(sh, &j.q, req, n, cuts, split ? 1 : 0);
        is_int(job_parse(sh, &j, 8192), TP_HEAD_DONE, "100 headers (%s)", split ? "split" : "one buffer");
        is_int(j.h.n_hdrs, 100, "100 headers recorded");
        ok(j.h.hdrs != j.h.inl && j.h.cap_hdrs >= 100, "headers spilled to the heap");
        for (uint32_t i = 0; i < j.h.n_hdrs; i++) {
            char name[16], val[16];
            int nl = snprintf(name, sizeof(name), "X-H%u", i), vl = snprintf(val, sizeof(val), "v%u", i * 7);
            const struct tp_hdr *hd = &j.h.hdrs[i];
            if (hd->name.len != (uint32_t)nl || memcmp(tp_slice_ptr(&j.h, hd->name), name, (size_t)nl) ||
                hd->value.len != (uint32_t)vl || memcmp(tp_slice_ptr(&j.h, hd->value), val, (size_t)vl))
                all = false;
        }
        ok(all, "every header's name and value");
        job_dispose(sh, &j);
        ok(j.h.hdrs == j.h.inl && j.h.cap_hdrs == TP_HDRS_INLINE, "dispose goes back to the inline array");
        is_int(fake_refs_total(sh), 0, "no references left");
    }
}

/* Parses <req> in buffers of <cut> bytes (0 = one buffer); returns rc, status through *st. */
static enum tp_head_rc parse_text(struct tp_shard *sh, const char *req, size_t len, size_t cut,
                                  uint32_t limit, unsigned *st, const char **why)
{
    struct job j;
    enum tp_head_rc rc;

    job_init(&j, HTTP_REQUEST);
    push_split(sh, &j.q, req, len, &cut, cut ? 1 : 0);
    rc = job_parse(sh, &j, limit);
    *st = j.status;
    *why = j.h.reason_text;
    job_dispose(sh, &j);
    if (fake_refs_total(sh) != 0 || sh->bufs.held != 0) {
        tap_diag("references left after dispose: %lu, held %u", fake_refs_total(sh), sh->bufs.held);
        *st = 9999;
    }
    return rc;
}

/* Expects error <want> for <req> parsed in one buffer and in small pieces;
 * for a 400, also the reason the JSON body will give (<why>). */
static void expect_error(struct tp_shard *sh, const char *req, size_t len, uint32_t limit, unsigned want,
                         const char *why, const char *what)
{
    static const size_t cuts[] = {0, 1, 2, 7, 64};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        unsigned st = 0;
        const char *got_why = NULL;
        enum tp_head_rc rc = parse_text(sh, req, len, cuts[i], limit, &st, &got_why);
        ok(rc == TP_HEAD_ERROR && st == want, "%s, buffers of %zu: error %u (got rc %d status %u)", what,
           cuts[i], want, rc, st);
        if (want == 400)
            is_str(got_why, why, "%s, buffers of %zu: reason", what, cuts[i]);
    }
}

static void expect_done(struct tp_shard *sh, const char *req, size_t len, uint32_t limit, const char *what)
{
    static const size_t cuts[] = {0, 1, 2, 7, 64};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        unsigned st = 0;
        const char *why = NULL;
        enum tp_head_rc rc = parse_text(sh, req, len, cuts[i], limit, &st, &why);
        ok(rc == TP_HEAD_DONE && st == 0 && why == NULL, "%s, buffers of %zu: complete (got rc %d status %u)",
           what, cuts[i], rc, st);
    }
}

static void test_errors(struct tp_shard *sh)
{
    char req[2048];
    size_t n;

    static const char fold[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n";
    expect_error(sh, fold, sizeof(fold) - 1, 4096, 400, "obsolete line folding", "obs-fold");
    static const char fold_tab[] = "GET / HTTP/1.1\r\nX-A: b\r\n\tc\r\nHost: a\r\n\r\n";
    expect_error(sh, fold_tab, sizeof(fold_tab) - 1, 4096, 400, "obsolete line folding",
                 "obs-fold with a tab");
    static const char noname[] = "GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n";
    expect_error(sh, noname, sizeof(noname) - 1, 4096, 400, "empty header name", "empty header name");
    static const char noname_first[] = "GET / HTTP/1.1\r\n: v\r\nHost: a\r\n\r\n";
    expect_error(sh, noname_first, sizeof(noname_first) - 1, 4096, 400, "empty header name",
                 "empty first header name");
    static const char space[] = "GET / HTTP/1.1\r\nHo st: a\r\n\r\n";
    expect_error(sh, space, sizeof(space) - 1, 4096, 400, "invalid header", "space in a header name");
    static const char ws_colon[] = "GET / HTTP/1.1\r\nHost : a\r\n\r\n";
    expect_error(sh, ws_colon, sizeof(ws_colon) - 1, 4096, 400, "invalid header", "space before the colon");

    /* limit 128: the request line alone is over it -> 414 */
    n = (size_t)snprintf(req, sizeof(req), "GET /%0200d HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    expect_error(sh, req, n, 128, 414, NULL, "200-byte target, limit 128");
    n = (size_t)snprintf(req, sizeof(req), "GET /%0125d HTTP/1.1\r\n\r\n", 0); /* line without CRLF: 139 */
    expect_error(sh, req, n, 128, 414, NULL, "request line of 139 bytes, limit 128");
    n = (size_t)snprintf(req, sizeof(req), "GET /%0115d HTTP/1.1\r\n\r\n", 0); /* line without CRLF: 129 */
    expect_error(sh, req, n, 128, 414, NULL, "request line of 129 bytes, limit 128");
    /* headers over it -> 431 */
    n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Long: %0200d\r\n\r\n", 0);
    expect_error(sh, req, n, 128, 431, NULL, "200-byte header value, limit 128");
    n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 30; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-%d: y\r\n", i);
    n += (size_t)snprintf(req + n, sizeof(req) - n, "\r\n");
    expect_error(sh, req, n, 128, 431, NULL, "30 short headers, limit 128");
    /* a request line that fits, with headers pushing the head over */
    n = (size_t)snprintf(req, sizeof(req), "GET /%090d HTTP/1.1\r\nHost: example.com.example.org\r\n\r\n", 0);
    expect_error(sh, req, n, 128, 431, NULL, "104-byte request line + Host, limit 128");

    /* exactly at the limit is fine; one byte more is not */
    n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %0101d\r\n\r\n", 0);
    is_int(n, 128, "128-byte head");
    expect_done(sh, req, n, 128, "head of exactly the limit");
    n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nX-Pad: %0102d\r\n\r\n", 0);
    expect_error(sh, req, n, 128, 431, NULL, "head one byte over the limit");
    /* a body after a head of exactly the limit is not counted */
    n = (size_t)snprintf(req, sizeof(req),
                         "POST / HTTP/1.1\r\nContent-Length: 200\r\nX-Pad: %079d\r\n\r\n%0200d", 0, 0);
    expect_done(sh, req, n, 128, "128-byte head followed by a 200-byte body");
}

static void test_header_id(void)
{
    static const struct {
        const char *name;
        uint8_t id;
    } cases[] = {
        {"Host", TP_H_HOST},
        {"HOST", TP_H_HOST},
        {"host", TP_H_HOST},
        {"Content-Length", TP_H_CONTENT_LENGTH},
        {"content-LENGTH", TP_H_CONTENT_LENGTH},
        {"Transfer-Encoding", TP_H_TRANSFER_ENCODING},
        {"Connection", TP_H_CONNECTION},
        {"Keep-Alive", TP_H_KEEP_ALIVE},
        {"Proxy-Connection", TP_H_PROXY_CONNECTION},
        {"TE", TP_H_TE},
        {"Upgrade", TP_H_UPGRADE},
        {"Trailer", TP_H_TRAILER},
        {"X-Forwarded-For", TP_H_X_FORWARDED_FOR},
        {"X-Forwarded-Proto", TP_H_X_FORWARDED_PROTO},
        {"X-Forwarded-Host", TP_H_X_FORWARDED_HOST},
        {"X-Request-Id", TP_H_X_REQUEST_ID},
        {"x-request-id", TP_H_X_REQUEST_ID},
        {"traceparent", TP_H_TRACEPARENT},
        {"Traceparent", TP_H_TRACEPARENT},
        {"Expect", TP_H_EXPECT},
        {"Cookie", TP_H_COOKIE},
        {"Content-Type", TP_H_CONTENT_TYPE},
        {"authorization", TP_H_AUTHORIZATION},
        {"Authorizations", TP_H_OTHER},
        {"Hosts", TP_H_OTHER},
        {"Hos", TP_H_OTHER},
        {"Content-Lengths", TP_H_OTHER},
        {"Content_Length", TP_H_OTHER},
        {"X-Forwarded-Fo", TP_H_OTHER},
        {"X-Forwarded-Port", TP_H_OTHER},
        {"tracestate", TP_H_OTHER},
        {"Set-Cookie", TP_H_OTHER},
        {"T", TP_H_OTHER},
        {"", TP_H_OTHER},
        {"Tf", TP_H_OTHER},
        {"Connectio\xee", TP_H_OTHER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        is_int(tp_h1_header_id(cases[i].name, strlen(cases[i].name)), cases[i].id, "header id of \"%s\"",
               cases[i].name);
    /* only the first len bytes count */
    is_int(tp_h1_header_id("Hostname", 4), TP_H_HOST, "a prefix of the buffer: Host");
}

static void test_eq_has_token(void)
{
    ok(tp_eq_nocase("Host", 4, "host", 4), "eq_nocase Host/host");
    ok(tp_eq_nocase("HOST", 4, "host", 4), "eq_nocase HOST/host");
    ok(tp_eq_nocase("X-Request-ID", 12, "x-request-id", 12), "eq_nocase with dashes");
    ok(!tp_eq_nocase("Host", 4, "hostx", 5), "eq_nocase: lengths differ");
    ok(!tp_eq_nocase("Hosx", 4, "host", 4), "eq_nocase: last byte differs");
    ok(!tp_eq_nocase("host", 4, "HOST", 4), "eq_nocase: the second argument must be lowercase");
    ok(!tp_eq_nocase("@", 1, "`", 1), "eq_nocase: '@' is not a letter ('`' = '@' | 0x20)");
    ok(!tp_eq_nocase("[", 1, "{", 1), "eq_nocase: '[' is not '{'");
    ok(!tp_eq_nocase("\xc9", 1, "\xe9", 1), "eq_nocase: bytes >= 0x80 compare exactly");
    ok(tp_eq_nocase("", 0, "", 0), "eq_nocase: empty strings");

#define HT(list, tok) tp_h1_has_token(list, strlen(list), tok, strlen(tok))
    ok(HT("close", "close"), "token: alone");
    ok(HT("Close", "close"), "token: case-insensitive");
    ok(HT("keep-alive, Upgrade", "upgrade"), "token: second of two");
    ok(HT("keep-alive,upgrade", "upgrade"), "token: no space after comma");
    ok(HT(" \tclose \t", "close"), "token: surrounding blanks");
    ok(HT(",,close,,", "close"), "token: empty list elements");
    ok(HT("a, b ,c", "b"), "token: blank before comma");
    ok(!HT("closed", "close"), "token: longer word");
    ok(!HT("clos", "close"), "token: shorter word");
    ok(!HT("keep-alive", "alive"), "token: suffix is not a token");
    ok(!HT("", "close"), "token: empty list");
    ok(!HT(" , ,", "close"), "token: only separators");
    ok(!HT("clo se", "close"), "token: inner space");
    ok(HT("x, clo se, close", "close"), "token: found after a non-matching element");
    ok(!tp_h1_has_token("close", 4, "close", 5), "token: only len bytes of the list count");
#undef HT
}

static void test_reason(void)
{
    static const struct {
        unsigned st;
        const char *r;
    } cases[] = {
        {100, "Continue"},
        {200, "OK"},
        {204, "No Content"},
        {301, "Moved Permanently"},
        {304, "Not Modified"},
        {400, "Bad Request"},
        {404, "Not Found"},
        {408, "Request Timeout"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {199, "Informational"},
        {299, "Success"},
        {399, "Redirection"},
        {418, "Client Error"},
        {499, "Client Error"},
        {599, "Server Error"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        is_str(tp_h1_reason(cases[i].st), cases[i].r, "reason of %u", cases[i].st);
}

/* Checks the Date line at <at> in <resp> and returns its 29 bytes in <date>. */
static bool date_of(const char *resp, char date[30])
{
    const char *d = strstr(resp, "\r\nDate: ");
    if (!d)
        return false;
    memcpy(date, d + 8, 29);
    date[29] = 0;
    /* "Sun, 06 Nov 1994 08:49:37 GMT" */
    return d[8 + 29] == '\r' && date[3] == ',' && date[4] == ' ' && date[7] == ' ' && date[11] == ' ' &&
           date[16] == ' ' && date[19] == ':' && date[22] == ':' && strcmp(date + 25, " GMT") == 0;
}

static void check_response(struct tp_shard *sh, unsigned status, const char *reason, const char *id,
                           const char *extra, bool close, bool head_only, const char *what)
{
    struct tp_block *b = tp_h1_error_response(sh, status, reason, id, strlen(id), extra,
                                              extra ? strlen(extra) : 0, close, head_only);
    char got[2048], want[2048], body[512], date[30];

    if (!b) {
        ok(0, "%s: response built", what);
        return;
    }
    ok(b->len <= b->size && b->len < sizeof(got), "%s: fits its block", what);
    memcpy(got, b->data, b->len < sizeof(got) ? b->len : sizeof(got) - 1);
    got[b->len < sizeof(got) ? b->len : sizeof(got) - 1] = 0;
    ok(strlen(got) == b->len, "%s: no NUL inside", what);
    ok(date_of(got, date), "%s: a Date header in IMF-fixdate form", what);
    int bl = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%u,\"request_id\":\"%s\"}", reason,
                      status, id);
    snprintf(want, sizeof(want),
             "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: "
             "%s\r\nDate: %s\r\n%s%s\r\n%s",
             status, tp_h1_reason(status), bl, id, date, extra ? extra : "",
             close ? "Connection: close\r\n" : "", head_only ? "" : body);
    is_str(got, want, "%s: exact bytes", what);
    tp_block_put(sh, b);
}

/* <b> holds the literal <lit> somewhere */
#define HAS(lit) (b && memmem(b->data, b->len, lit, sizeof(lit) - 1) != NULL)

static void test_error_response(struct tp_shard *sh)
{
    check_response(sh, 404, "no route", "0123456789abcdef0123456789abcdef", NULL, false, false, "404");
    check_response(
        sh, 429, "rate limited", "req-42",
        "Retry-After: 2\r\nRateLimit-Limit: 10\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 2\r\n", false,
        false, "429 with rate-limit headers");
    check_response(sh, 400, "malformed request", "x", NULL, true, false, "400 with Connection: close");
    check_response(sh, 503, "circuit open", "abc", NULL, false, true, "503 head only (HEAD request)");
    check_response(sh, 431, "request header fields too large", "", NULL, true, false, "431 with an empty id");

    /* the exact 404 without computing anything */
    struct tp_block *b = tp_h1_error_response(sh, 404, "no route", "0123456789abcdef0123456789abcdef", 32,
                                              NULL, 0, false, false);
    static const char body[] =
        "{\"error\":\"no route\",\"status\":404,\"request_id\":\"0123456789abcdef0123456789abcdef\"}";
    ok(b && b->len > sizeof(body) - 1 &&
           memcmp(b->data + b->len - (sizeof(body) - 1), body, sizeof(body) - 1) == 0,
       "404 body bytes");
    ok(HAS("\r\nContent-Length: 81\r\n"), "404 Content-Length: 81");
    ok(b && memcmp(b->data, "HTTP/1.1 404 Not Found\r\n", 24) == 0, "404 status line");
    if (b)
        tp_block_put(sh, b);
    is_int(sh->n_blk_free, 1, "blocks went back to the shard's free list");

    /* gRPC form: 200, the status as grpc-status, the reason percent-encoded, no body */
    static const unsigned http[] = {400, 401, 403, 404, 413, 429, 431, 502, 503, 504, 500};
    static const unsigned grpc[] = {3, 16, 7, 12, 3, 8, 3, 14, 14, 4, 13};
    for (size_t i = 0; i < sizeof(http) / sizeof(http[0]); i++)
        is_int(tp_grpc_status(http[i]), grpc[i], "grpc-status for %u", http[i]);
    b = tp_h1_grpc_error_response(sh, 401, "missing credential 100%", "id-1", 4,
                                  "WWW-Authenticate: Bearer\r\n", 26, false);
    ok(b && memcmp(b->data, "HTTP/1.1 200 OK\r\n", 17) == 0, "gRPC answer: 200");
    ok(HAS("\r\ngrpc-status: 16\r\n"), "gRPC answer: grpc-status 16");
    ok(HAS("\r\ngrpc-message: missing credential 100%25\r\n"), "gRPC answer: grpc-message percent-encoded");
    ok(HAS("\r\nContent-Type: application/grpc\r\n"), "gRPC answer: content-type");
    ok(HAS("\r\nContent-Length: 0\r\n"), "gRPC answer: no body");
    ok(HAS("WWW-Authenticate: Bearer\r\n"), "gRPC answer: extra lines");
    ok(b && b->len >= 4 && memcmp(b->data + b->len - 4, "\r\n\r\n", 4) == 0,
       "gRPC answer: ends with the head");
    if (b)
        tp_block_put(sh, b);
}

static void test_writers(struct tp_shard *sh)
{
    struct tp_block *b = tp_block_get(sh, 64);
    char out[40];

    if (!b) {
        ok(0, "block");
        return;
    }
    b->len = 0;
    tp_blk_u64(b, 0);
    tp_blk_lit(b, ",");
    tp_blk_u64(b, 1234567890);
    tp_blk_lit(b, ",");
    tp_blk_u64(b, UINT64_MAX);
    tp_blk_lit(b, ",");
    tp_blk_hex(b, 0);
    tp_blk_lit(b, ",");
    tp_blk_hex(b, 0xdeadbeef);
    tp_blk_lit(b, ",");
    tp_blk_hex(b, UINT64_MAX);
    is_int(b->len, 61, "writers: length");
    ok(b->len == 61 &&
           memcmp(b->data, "0,1234567890,18446744073709551615,0,deadbeef,ffffffffffffffff", 61) == 0,
       "writers: decimal and hex");
    tp_block_put(sh, b);

    /* bounds: an over-long write is counted, not written */
    struct tp_block *small = malloc(sizeof(*small) + 4);
    if (small) {
        small->size = 4;
        small->len = 0;
        memset(small->data, 'x', 4);
        tp_blk_lit(small, "ab");
        tp_blk_lit(small, "cdef");
        is_int(small->len, 6, "overflow: len counts every byte asked for");
        ok(memcmp(small->data, "abxx", 4) == 0, "overflow: the write that did not fit wrote nothing");
        free(small);
    }

    memset(out, '#', sizeof(out));
    tp_h1_random_hex(sh, out, 16);
    bool hex = true;
    for (int i = 0; i < 32; i++)
        if (!((out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f')))
            hex = false;
    ok(hex, "random_hex: 32 lowercase hex digits");
    ok(out[32] == '#' && out[39] == '#', "random_hex: nothing written past 2n");
    char again[32];
    tp_h1_random_hex(sh, again, 16);
    ok(memcmp(out, again, 32) != 0, "random_hex: two ids differ");
    memset(out, '#', sizeof(out));
    tp_h1_random_hex(sh, out, 0);
    ok(out[0] == '#', "random_hex(0) writes nothing");
}

/* Parses a chunked response: the head from a queue, then the body through
 * tp_h1_execute in pieces of <cut> bytes (separate copies, as separate
 * receive buffers are). Returns the llhttp result of the last execute. */
static llhttp_errno_t parse_chunked(struct tp_shard *sh, struct job *j, const char *body, size_t len,
                                    size_t cut)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    llhttp_errno_t rc = HPE_OK;

    job_init(j, HTTP_RESPONSE);
    push_split(sh, &j->q, head, sizeof(head) - 1, NULL, 0);
    if (job_parse(sh, j, 4096) != TP_HEAD_DONE)
        return HPE_INTERNAL;
    llhttp_resume(&j->hp.p);
    tp_h1_parser_want_trailers(&j->hp, 64);
    for (size_t off = 0; off < len && rc == HPE_OK; off += cut) {
        size_t n = len - off < cut ? len - off : cut;
        char *piece = malloc(n);
        memcpy(piece, body + off, n);
        rc = tp_h1_execute(&j->hp, piece, n);
        free(piece); /* the recorder must have copied what it keeps */
    }
    return rc;
}

static void test_trailers(struct tp_shard *sh)
{
    static const char body[] =
        "5\r\nhello\r\n0\r\ngrpc-status: 0 \r\nGrpc-Message: all good\r\nX-Empty:\r\n\r\n";
    struct job j;

    for (size_t cut = 1; cut <= sizeof(body) - 1; cut++) {
        llhttp_errno_t rc = parse_chunked(sh, &j, body, sizeof(body) - 1, cut);
        const struct tp_head *t = tp_h1_trailers(&j.hp);
        char text[256] = "";
        if (t) {
            int n = 0;
            for (uint32_t i = 0; i < t->n_hdrs; i++)
                n += snprintf(text + n, sizeof(text) - (size_t)n, "%.*s=%.*s;", (int)t->hdrs[i].name.len,
                              t->base + t->hdrs[i].name.off, (int)t->hdrs[i].value.len,
                              t->base + t->hdrs[i].value.off);
        }
        if (rc != HPE_PAUSED || !j.hp.msg_done ||
            strcmp(text, "grpc-status=0;Grpc-Message=all good;X-Empty=;") != 0) {
            ok(0, "trailers cut every %zu bytes: rc %d, %s", cut, rc, text);
            tp_h1_parser_dispose(&j.hp);
            job_dispose(sh, &j);
            return;
        }
        tp_h1_parser_dispose(&j.hp);
        job_dispose(sh, &j);
    }
    ok(1, "trailers recorded whole at every read boundary");

    /* the next message forgets them; not asked for, none are recorded */
    parse_chunked(sh, &j, body, sizeof(body) - 1, 7);
    ok(tp_h1_trailers(&j.hp) != NULL, "recorded");
    tp_h1_parser_want_trailers(&j.hp, 0);
    ok(tp_h1_trailers(&j.hp) == NULL, "forgotten for the next message");
    tp_h1_parser_dispose(&j.hp);
    job_dispose(sh, &j);

    /* an obsolete fold in a trailer, in one buffer and across two */
    static const char fold[] = "0\r\nX-A: one\r\n two\r\n\r\n";
    for (size_t cut = 5; cut <= sizeof(fold) - 1; cut += sizeof(fold) - 6) {
        llhttp_errno_t rc = parse_chunked(sh, &j, fold, sizeof(fold) - 1, cut);
        ok(rc != HPE_OK && rc != HPE_PAUSED, "obs-fold in a trailer refused (cut %zu): rc %d", cut, rc);
        tp_h1_parser_dispose(&j.hp);
        job_dispose(sh, &j);
    }
    /* an empty trailer name (found by fuzz_response: an empty span before any copy existed) */
    static const char noname[] = "0\r\n: v\r\n\r\n";
    for (size_t cut = 1; cut <= 3; cut += 2) {
        llhttp_errno_t rc = parse_chunked(sh, &j, noname, sizeof(noname) - 1, cut);
        ok(rc != HPE_OK && rc != HPE_PAUSED, "empty trailer name refused (cut %zu): rc %d", cut, rc);
        tp_h1_parser_dispose(&j.hp);
        job_dispose(sh, &j);
    }
    /* over the limit (64 bytes of names and values) */
    static const char big[] =
        "0\r\nX-Big: 0123456789012345678901234567890123456789012345678901234567890123\r\n\r\n";
    llhttp_errno_t rc = parse_chunked(sh, &j, big, sizeof(big) - 1, 1000);
    ok(rc != HPE_OK && rc != HPE_PAUSED, "trailer section over its limit refused");
    ok(j.hp.trailers && j.hp.trailers->reason_text &&
           strcmp(j.hp.trailers->reason_text, "trailer section too large") == 0,
       "... as too large");
    tp_h1_parser_dispose(&j.hp);
    job_dispose(sh, &j);

    /* copies: tp_trailers_add */
    struct tp_head *t = tp_trailers_new();
    ok(tp_trailers_add(t, "x-a", 3, "1", 1, 16) && tp_trailers_add(t, "te", 2, "x", 1, 16), "added");
    ok(!tp_trailers_add(t, "x-long", 6, "0123456789", 10, 16), "over the limit refused");
    is_int(t->n_hdrs, 2, "two fields");
    is_int(t->hdrs[1].id, TP_H_TE, "classified");
    tp_trailers_free(t);
}

static void test_grpc_parsers(void)
{
    static const struct {
        const char *v;
        bool ok;
        uint64_t ms;
    } to[] = {
        {"1H", true, 3600000},
        {"2M", true, 120000},
        {"3S", true, 3000},
        {"250m", true, 250},
        {"1500u", true, 2},
        {"1u", true, 1},
        {"1n", true, 1},
        {"0m", true, 0},
        {"99999999H", true, 99999999ull * 3600000},
        {"00000001S", true, 1000},
        {"123456789S", false, 0},
        {"S", false, 0},
        {"1", false, 0},
        {"1s", false, 0},
        {"-1S", false, 0},
        {"1.5S", false, 0},
        {" 1S", false, 0},
        {"1 S", false, 0},
        {"", false, 0},
    };
    for (size_t i = 0; i < sizeof(to) / sizeof(to[0]); i++) {
        uint64_t ms = 12345;
        bool r = tp_grpc_timeout_parse(to[i].v, strlen(to[i].v), &ms);
        ok(r == to[i].ok && (!r || ms == to[i].ms), "grpc-timeout \"%s\": %s %llu", to[i].v,
           r ? "ok" : "refused", (unsigned long long)ms);
    }
    static const struct {
        const char *v;
        unsigned code;
    } gs[] = {{"0", 0},
              {"16", 16},
              {"4 ", 4},
              {"17", TP_GRPC_OTHER},
              {"99", TP_GRPC_OTHER},
              {"", TP_GRPC_OTHER},
              {"x", TP_GRPC_OTHER},
              {"123", TP_GRPC_OTHER},
              {"-1", TP_GRPC_OTHER}};
    for (size_t i = 0; i < sizeof(gs) / sizeof(gs[0]); i++)
        is_int(tp_grpc_status_parse(gs[i].v, strlen(gs[i].v)), gs[i].code, "grpc-status \"%s\"", gs[i].v);
}

int main(void)
{
    struct tp_shard *sh = fake_shard_create(1024, 2048);

    head_len = sizeof(REQ_HEAD) - 1;
    memcpy(full_req, REQ_HEAD, head_len);
    memcpy(full_req + head_len, REQ_BODY, sizeof(REQ_BODY) - 1);
    full_len = head_len + sizeof(REQ_BODY) - 1;

    test_one_buffer(sh);
    test_splits(sh);
    test_pipelined_and_response(sh);
    test_declined_upgrade(sh);
    test_many_headers(sh);
    test_errors(sh);
    test_header_id();
    test_eq_has_token();
    test_reason();
    test_error_response(sh);
    test_writers(sh);
    test_trailers(sh);
    test_grpc_parsers();
    is_int(fake_bufs_in_use(sh), sh->bufs.held, "held matches the buffers in use");
    is_int(fake_refs_total(sh), 0, "no buffer reference left at the end");
    fake_shard_destroy(sh);
    return tap_done();
}
