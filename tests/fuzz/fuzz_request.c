/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: request heads and bodies as the client side parses them,
 * split across receive buffers at places the input chooses. Drives llhttp
 * (strict) with turnpike's head recording (src/http/h1.c) over a hand-built
 * shard's buffer pool; every buffer reference must be released at the end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/http/fake_shard.h"
#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
    struct tp_head head;
    bool done, msg;
    uint64_t body;
};

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_url(&((struct ctx *)p->data)->head, at, len);
}
static int on_field(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_field(&((struct ctx *)p->data)->head, at, len);
}
static int on_value(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_value(&((struct ctx *)p->data)->head, at, len);
}
static int on_value_complete(llhttp_t *p)
{
    return tp_head_on_value_complete(&((struct ctx *)p->data)->head);
}
static int on_headers_complete(llhttp_t *p)
{
    ((struct ctx *)p->data)->done = true;
    return HPE_PAUSED;
}
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    ((struct ctx *)p->data)->body += len;
    return 0;
}
static int on_message_complete(llhttp_t *p)
{
    ((struct ctx *)p->data)->msg = true;
    return HPE_PAUSED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct tp_shard *sh;
    static llhttp_settings_t st;
    struct ctx c;
    llhttp_t p;
    unsigned status = 0;

    if (!sh) {
        sh = fake_shard_create(64, 512);
        llhttp_settings_init(&st);
        st.on_url = on_url;
        st.on_header_field = on_field;
        st.on_header_value = on_value;
        st.on_header_value_complete = on_value_complete;
        st.on_headers_complete = on_headers_complete;
        st.on_body = on_body;
        st.on_message_complete = on_message_complete;
    }
    if (size < 1)
        return 0;
    /* byte 0 chooses the chunk size the bytes arrive in */
    size_t chunk = 1 + data[0] % 97;
    data++;
    size--;

    memset(&c, 0, sizeof(c));
    tp_head_init(&c.head);
    llhttp_init(&p, HTTP_REQUEST, &st);
    p.data = &c;
    struct tp_inq q;
    tp_inq_init(&q);
    size_t off = 0;
    uint16_t bid = 0;
    enum tp_head_rc rc = TP_HEAD_MORE;
    while (off < size && rc == TP_HEAD_MORE && bid < 64) {
        size_t n = size - off < chunk ? size - off : chunk;
        memcpy(tp_buf_ptr(sh, bid), data + off, n);
        sh->bufs.refs[bid] = 1;
        sh->bufs.held++;
        if (!tp_inq_push(&q, bid, (uint32_t)n))
            break;
        off += n;
        bid++;
        rc = tp_head_parse(sh, &p, &c.head, &q, 1024, &c.done, &status);
    }
    if (rc == TP_HEAD_DONE) {
        /* every slice lies inside the head */
        for (uint32_t i = 0; i < c.head.n_hdrs; i++)
            if (c.head.hdrs[i].value.off + c.head.hdrs[i].value.len > c.head.len ||
                c.head.hdrs[i].name.off + c.head.hdrs[i].name.len > c.head.len)
                __builtin_trap();
        tp_head_release(sh, &c.head);
        /* the body: whatever is left in the queue */
        llhttp_resume(&p);
        struct tp_rbuf *e;
        while ((e = tp_inq_front(&q))) {
            const char *d = (const char *)tp_buf_ptr(sh, e->bid) + e->off;
            llhttp_errno_t r = llhttp_execute(&p, d, e->len);
            uint32_t used = e->len;
            if (r == HPE_PAUSED) {
                used = (uint32_t)(llhttp_get_error_pos(&p) - d);
                llhttp_resume(&p);
            } else if (r != HPE_OK) {
                break;
            }
            tp_inq_consume(sh, &q, used ? used : e->len);
        }
    }
    tp_inq_clear(sh, &q);
    tp_head_dispose(sh, &c.head);
    if (sh->bufs.held != 0)
        __builtin_trap(); /* a buffer reference leaked */
    return 0;
}
