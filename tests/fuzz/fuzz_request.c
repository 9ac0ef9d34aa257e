/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: request heads and bodies as the client side parses them,
 * split across receive buffers at places the input chooses. Drives llhttp
 * (strict) with turnpike's head recording (src/http/h1.c) over a hand-built
 * shard's buffer pool; every buffer reference must be released at the end.
 * A chunked body's trailer section is recorded as h1_server does
 * (tp_h1_parser_want_trailers, tp_h1_execute); its fields must lie inside
 * their copy.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/fake_shard.h"
#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* body bytes through the production parser wiring (tp_h1_parser) */
static uint64_t body_bytes;
static int on_body(struct tp_h1_parser *hp, const char *at, size_t len)
{
    (void)hp;
    (void)at;
    body_bytes += len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct tp_shard *sh;
    struct tp_head head;
    struct tp_h1_parser hp;
    llhttp_t *p = &hp.p;
    unsigned status = 0;

    if (!sh)
        sh = fake_shard_create(64, 512);
    if (size < 1)
        return 0;
    /* byte 0 chooses the chunk size the bytes arrive in */
    size_t chunk = 1 + data[0] % 97;
    data++;
    size--;

    tp_head_init(&head);
    tp_h1_parser_init(&hp, HTTP_REQUEST, &head, on_body);
    struct tp_inq q;
    tp_inq_init(&q);
    size_t off = 0;
    uint16_t bid = 0;
    enum tp_head_rc rc = TP_HEAD_MORE;
    while (off < size && rc == TP_HEAD_MORE && bid < 64) {
        size_t n = size - off < chunk ? size - off : chunk;
        fake_recv(sh, bid, data + off,
                  (uint32_t)n); /* as a receive completion (the buffer leaves the parked stack) */
        if (!tp_inq_push(&q, bid, (uint32_t)n))
            break;
        off += n;
        bid++;
        rc = tp_head_parse(sh, &hp, &q, 1024, &status);
    }
    if (rc == TP_HEAD_DONE) {
        /* every slice lies inside the head */
        for (uint32_t i = 0; i < head.n_hdrs; i++)
            if (head.hdrs[i].value.off + head.hdrs[i].value.len > head.len ||
                head.hdrs[i].name.off + head.hdrs[i].name.len > head.len)
                __builtin_trap();
        tp_head_release(sh, &head);
        /* the body: whatever is left in the queue */
        if (p->flags & F_CHUNKED)
            tp_h1_parser_want_trailers(&hp, 1024);
        llhttp_resume(p);
        struct tp_rbuf *e;
        while ((e = tp_inq_front(&q))) {
            const char *d = (const char *)tp_buf_ptr(sh, e->bid) + e->off;
            llhttp_errno_t r = tp_h1_execute(&hp, d, e->len);
            uint32_t used = e->len;
            const struct tp_head *t = hp.msg_done ? tp_h1_trailers(&hp) : NULL;
            for (uint32_t i = 0; t && i < t->n_hdrs; i++)
                if (!t->hdrs[i].name.len || t->hdrs[i].name.off + t->hdrs[i].name.len > t->len ||
                    t->hdrs[i].value.off + t->hdrs[i].value.len > t->len || t->len > 1024)
                    __builtin_trap();
            hp.msg_done = false;
            if (r == HPE_PAUSED) {
                used = (uint32_t)(llhttp_get_error_pos(p) - d);
                llhttp_resume(p);
            } else if (r != HPE_OK) {
                break;
            }
            tp_inq_consume(sh, &q, used ? used : e->len);
        }
    }
    tp_inq_clear(sh, &q);
    tp_head_dispose(sh, &head);
    tp_h1_parser_dispose(&hp);
    if (sh->bufs.held != 0)
        __builtin_trap(); /* a buffer reference leaked */
    return 0;
}
