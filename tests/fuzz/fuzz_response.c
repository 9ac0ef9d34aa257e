/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: upstream responses, head and body, as the HTTP/1
 * upstream exchange (src/http/h1_client.c) parses them, split across
 * receive buffers at places the input chooses. It uses the production
 * wiring: tp_h1_parser_init(HTTP_RESPONSE) with the exchange's rules (a
 * response to HEAD has no body: on_headers returns 1), tp_head_parse with
 * the 64 KiB response head limit, interim 1xx heads completed with
 * tp_h1_parser_finish_message before the next head, then the body through
 * llhttp as process_response runs it: relayed raw as slices of the receive
 * buffers (queued on a send queue, no copy), or decoded into blocks when
 * the client cannot take chunked framing, then EOF handling (close-delimited
 * bodies end with llhttp_finish; a reset never completes one).
 *
 * Checked: every slice of a parsed head lies inside the head and the head
 * inside the buffer or copy it points to; a relayed slice lies inside its
 * buffer and holds exactly the input bytes that follow the head; body
 * parsing always progresses (a pause with nothing consumed would spin the
 * exchange forever); no buffer reference is left at the end; and where the
 * bytes were split does not change the outcome: each input also runs in
 * full buffers, and both runs must end the same way (with the same bytes
 * relayed and decoded when the response completed). That last check is
 * what catches a rule that only breaks across buffers, such as the trailer
 * fields that used to be recorded into the released head. A chunked body's
 * trailer section is recorded as the exchange records it
 * (tp_h1_parser_want_trailers, tp_h1_execute): its fields must lie inside
 * their copy, and both runs must record the same fields.
 *
 * Input: byte 0 flags (bit 0 the request was HEAD, bit 1 the client is
 * HTTP/1.0 so chunked bodies are decoded, bit 2 the upstream's close is a
 * reset), byte 1 the size of the receive buffers' fill (1..256), then the
 * bytes the upstream sent, followed by its close.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/fake_shard.h"
#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NBUF          256
#define BUFSZ         16384
#define RESP_HEAD_MAX (64u * 1024u) /* as h1_client.c */

#define CHECK(cond)                                                                                          \
    do {                                                                                                     \
        if (!(cond))                                                                                         \
            __builtin_trap();                                                                                \
    } while (0)

enum { RM_NONE = 0, RM_RAW, RM_CONTENT };

struct exchange {
    struct tp_h1_parser hp; /* first: the parser callbacks find the exchange from it */
    struct tp_head head;
    struct tp_inq q;
    struct tp_outq *out;  /* the client's send queue */
    struct tp_block *dec; /* decoded content being filled */
    bool skip_body;       /* the request was HEAD */
    bool http10;          /* the client wants content, not chunked framing */
    int mode;
    uint32_t tr_n;      /* trailer fields recorded at the end of the message */
    uint64_t tr_hash;   /* FNV-1a of their names and values */
    const uint8_t *src; /* the bytes the upstream sent */
    size_t fed;         /* of them, queued so far */
    size_t body_start;  /* input offset of the final response's body */
    size_t relayed;     /* body bytes relayed raw */
    size_t body_in;     /* body bytes consumed */
    size_t decoded;     /* content bytes decoded */
    bool done, failed;
};

static struct tp_shard *sh;

/* Input offset of the first byte not consumed yet. */
static size_t consumed(const struct exchange *x)
{
    return x->fed - x->q.bytes;
}

/* "Sends" the client's queue when it fills up, as the socket would. */
static void out_room(struct exchange *x)
{
    if (tp_outq_full(x->out, 6))
        tp_outq_clear(sh, &x->out);
}

static int on_headers(struct tp_h1_parser *hp)
{
    struct exchange *x = (struct exchange *)hp;
    return x->skip_body && hp->p.status_code >= 200 ? 1 : HPE_PAUSED;
}

static int on_body(struct tp_h1_parser *hp, const char *at, size_t len)
{
    struct exchange *x = (struct exchange *)hp;

    if (x->mode != RM_CONTENT)
        return 0;
    x->decoded += len;
    while (len) {
        if (!x->dec && !(x->dec = tp_block_get(sh, TP_BLOCK_SIZE)))
            return -1;
        struct tp_block *b = x->dec;
        size_t n = b->size - b->len < len ? b->size - b->len : len;
        memcpy(b->data + b->len, at, n);
        b->len += (uint32_t)n;
        at += n;
        len -= n;
        if (b->len == b->size) {
            x->dec = NULL;
            out_room(x);
            if (!tp_outq_push_block(sh, &x->out, b))
                return -1;
        }
    }
    return 0;
}

/* A parsed head: its slices inside it, it inside its memory. */
static void check_head(const struct tp_head *h)
{
    CHECK(h->base);
    if (h->hold) {
        const char *buf = (const char *)tp_buf_ptr(sh, h->hold_ref.bid);
        CHECK(!h->hold_ref.blk && sh->bufs.refs[h->hold_ref.bid] > 0);
        CHECK(h->base >= buf && h->base + h->len <= buf + sh->bufs.size);
    } else {
        CHECK(h->copy && h->base == h->copy && h->len < h->copy_cap);
    }
    CHECK(h->len <= RESP_HEAD_MAX);
    CHECK(h->reason.off + h->reason.len <= h->len);
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        CHECK(h->hdrs[i].name.len > 0);
        CHECK(h->hdrs[i].name.off + h->hdrs[i].name.len <= h->len);
        CHECK(h->hdrs[i].value.off + h->hdrs[i].value.len <= h->len);
    }
}

/* on_response_head of h1_client.c (with the proxy's status check). false: the attempt failed. */
static bool response_head(struct exchange *x)
{
    llhttp_t *p = &x->hp.p;
    unsigned status = p->status_code;
    struct tp_head *h = &x->head;
    int framing;

    if (status >= 100 && status < 200 && status != 101) {
        tp_head_release(sh, h);
        tp_head_dispose(sh, h);
        tp_head_init(h);
        x->hp.head_done = false;
        tp_h1_parser_finish_message(&x->hp);
        return true;
    }
    if ((p->flags & F_CHUNKED) && (x->skip_body || (status != 204 && status != 304)))
        framing = 2;
    else if (x->skip_body || status == 204 || status == 304 ||
             ((p->flags & F_CONTENT_LENGTH) && p->content_length == 0))
        framing = 0;
    else if (p->flags & F_CONTENT_LENGTH)
        framing = 1;
    else
        framing = 3;
    tp_head_release(sh, h);
    if (status < 100 || status > 599 || status == 101)
        return false; /* tp_proxy_response_head refuses it */
    bool has_body = !x->skip_body && framing != 0;
    x->mode = !has_body ? RM_NONE : (x->http10 && framing == 2) ? RM_CONTENT : RM_RAW;
    if (has_body && framing == 2)
        tp_h1_parser_want_trailers(&x->hp, RESP_HEAD_MAX);
    llhttp_resume(p);
    return true;
}

/* The trailer section recorded for the completed message: inside its copy; summarized for the comparison. */
static void note_trailers(struct exchange *x)
{
    const struct tp_head *t = tp_h1_trailers(&x->hp);
    uint64_t h = 1469598103934665603ull;

    x->tr_n = t ? t->n_hdrs : 0;
    for (uint32_t i = 0; t && i < t->n_hdrs; i++) {
        const struct tp_hdr *hd = &t->hdrs[i];
        CHECK(hd->name.len > 0 && hd->name.off + hd->name.len <= t->len);
        CHECK(hd->value.off + hd->value.len <= t->len && t->len <= RESP_HEAD_MAX);
        for (uint32_t k = 0; k < hd->name.len; k++)
            h = (h ^ (uint8_t)t->base[hd->name.off + k]) * 1099511628211ull;
        h = (h ^ ':') * 1099511628211ull;
        for (uint32_t k = 0; k < hd->value.len; k++)
            h = (h ^ (uint8_t)t->base[hd->value.off + k]) * 1099511628211ull;
        h = (h ^ '\n') * 1099511628211ull;
    }
    x->tr_hash = h;
}

/* process_response of h1_client.c, without the client's backpressure (its queue is always sent). */
static void process(struct exchange *x, bool eof, bool reset)
{
    struct tp_rbuf *e;

    while (!x->done && !x->failed) {
        if (!x->hp.head_done) {
            unsigned status = 502;
            if (!x->q.n)
                break;
            enum tp_head_rc rc = tp_head_parse(sh, &x->hp, &x->q, RESP_HEAD_MAX, &status);
            if (rc == TP_HEAD_MORE)
                break;
            if (rc == TP_HEAD_ERROR) {
                x->failed = true;
                break;
            }
            check_head(&x->head);
            if (!response_head(x)) {
                x->failed = true;
                break;
            }
            if (!x->hp.head_done)
                continue; /* interim: the next head */
            x->body_start = consumed(x);
            if (x->mode == RM_NONE && !x->hp.msg_done)
                llhttp_execute(&x->hp.p, "", 0);
            if (x->hp.msg_done || x->mode == RM_NONE) {
                x->done = true;
                break;
            }
            continue;
        }
        e = tp_inq_front(&x->q);
        if (!e) {
            if (eof) {
                x->hp.msg_done = false;
                if (!reset)
                    llhttp_finish(&x->hp.p);
                if (x->hp.msg_done)
                    x->done = true;
                else
                    x->failed = true;
            }
            break;
        }
        const char *d = tp_rbuf_data(sh, e);
        const char *buf = (const char *)tp_buf_ptr(sh, e->bid);
        uint32_t len = e->len, used;
        struct tp_bref ref = tp_rbuf_ref(e);
        size_t at = consumed(x);
        llhttp_errno_t rc = tp_h1_execute(&x->hp, d, len);
        if (rc == HPE_PAUSED) {
            used = (uint32_t)(llhttp_get_error_pos(&x->hp.p) - d);
        } else if (rc == HPE_OK) {
            used = len;
        } else {
            x->failed = true;
            break;
        }
        CHECK(used <= len);
        CHECK(used > 0 || x->hp.msg_done); /* no progress and no end: the exchange would spin */
        if (used) {
            if (x->mode == RM_RAW) {
                /* the slice relayed: inside its buffer, exactly the input bytes after the head */
                CHECK(!ref.blk && d >= buf && d + used <= buf + sh->bufs.size);
                CHECK(at == x->body_start + x->relayed);
                CHECK(memcmp(d, x->src + at, used) == 0);
                out_room(x);
                if (!tp_outq_push_slice(sh, &x->out, ref, d, used)) {
                    x->failed = true;
                    break;
                }
                x->relayed += used;
            } else if (x->mode == RM_CONTENT && x->dec && x->dec->len) {
                struct tp_block *b = x->dec;
                x->dec = NULL;
                out_room(x);
                if (!tp_outq_push_block(sh, &x->out, b)) {
                    x->failed = true;
                    break;
                }
            }
            x->body_in += used;
            tp_inq_consume(sh, &x->q, used);
        }
        if (x->hp.msg_done) {
            x->done = true;
            note_trailers(x);
        }
    }
    if (eof && !x->hp.head_done && !x->done)
        x->failed = true; /* EOF before the head */
    /* decoding only removes framing (a failed execute may have decoded bytes it did not report as used) */
    CHECK(x->failed || x->decoded <= x->body_in);
}

/* A provided buffer nobody holds, or -1. */
static int free_buffer(void)
{
    static uint32_t next;
    for (uint32_t k = 0; k < NBUF; k++) {
        uint32_t bid = (next + k) % NBUF;
        if (sh->bufs.refs[bid] == 0) {
            next = bid + 1;
            return (int)bid;
        }
    }
    return -1;
}

/* Feeds <size> bytes in buffers of <chunk> bytes, then the close, and releases everything. */
static void run(struct exchange *x, const uint8_t *data, size_t size, uint8_t flags, size_t chunk,
                bool *complete)
{
    memset(x, 0, sizeof(*x));
    x->skip_body = flags & 1;
    x->http10 = flags & 2;
    x->src = data;
    tp_head_init(&x->head);
    tp_h1_parser_init(&x->hp, HTTP_RESPONSE, &x->head, on_body);
    x->hp.on_headers = on_headers;
    tp_inq_init(&x->q);

    size_t off = 0;
    *complete = true;
    while (off < size && !x->done && !x->failed) {
        size_t n = size - off < chunk ? size - off : chunk;
        int bid = free_buffer();
        if (bid < 0) {
            *complete = false; /* out of buffers: not a parse outcome */
            break;
        }
        fake_recv(sh, (uint16_t)bid, data + off, (uint32_t)n);
        if (!tp_inq_push(&x->q, (uint16_t)bid, (uint32_t)n)) {
            tp_buf_release(sh, (uint16_t)bid);
            *complete = false;
            break;
        }
        off += n;
        x->fed += n;
        process(x, false, false);
    }
    if (off == size && !x->done && !x->failed)
        process(x, true, flags & 4);

    tp_outq_clear(sh, &x->out);
    if (x->dec)
        tp_block_put(sh, x->dec);
    tp_inq_clear(sh, &x->q);
    tp_head_dispose(sh, &x->head);
    tp_h1_parser_dispose(&x->hp);
    CHECK(sh->bufs.held == 0);       /* a buffer reference leaked */
    CHECK(fake_refs_total(sh) == 0); /* every count back to zero */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct exchange split, whole;
    bool c1, c2;

    if (!sh)
        sh = fake_shard_create(NBUF, BUFSZ);
    if (size < 2)
        return 0;
    uint8_t flags = data[0];
    size_t chunk = 1 + (size_t)data[1];
    data += 2;
    size -= 2;

    run(&split, data, size, flags, chunk, &c1);
    /* where the bytes were split must not change the outcome: the same input in full buffers */
    run(&whole, data, size, flags, BUFSZ, &c2);
    if (c1 && c2) {
        CHECK(split.done == whole.done && split.failed == whole.failed);
        /* a failure may come after some bytes were relayed (streaming): only complete ones compare */
        CHECK(!split.done || (split.relayed == whole.relayed && split.decoded == whole.decoded &&
                              split.mode == whole.mode && split.body_start == whole.body_start &&
                              split.tr_n == whole.tr_n && split.tr_hash == whole.tr_hash));
    }
    return 0;
}
