/* SPDX-License-Identifier: MIT */
/*
 * Receive and send queues of a connection (both sides). [shard]
 *
 * The receive queue lists provided buffers that hold bytes not yet consumed;
 * each entry holds one reference on its buffer. The send queue is a ring of
 * segments drained by one sendmsg at a time (docs/internals.md: at most one send in
 * flight per socket); a segment that points into a provided buffer holds one
 * reference on it, so a body slice is sent straight from the buffer it was
 * received into and the buffer returns to the ring once sent.
 *
 * A send queue is only allocated while it holds data: idle connections own
 * no queue and no buffer.
 */
#include <stdlib.h>
#include <string.h>

#include "rt/reactor.h"

void tp_bref_get(struct tp_shard *sh, struct tp_bref r)
{
    if (r.blk)
        r.blk->refs++;
    else
        tp_buf_ref(sh, r.bid);
}

void tp_bref_put(struct tp_shard *sh, struct tp_bref r)
{
    if (r.blk)
        tp_block_put(sh, r.blk);
    else
        tp_buf_release(sh, r.bid);
}

static bool inq_grow(struct tp_inq *q);

bool tp_inq_push_block(struct tp_inq *q, struct tp_block *b)
{
    if (q->n == q->cap && !inq_grow(q))
        return false;
    struct tp_rbuf *e = &q->e[(q->head + q->n) & (q->cap - 1)];
    e->blk = b;
    e->bid = 0;
    e->off = 0;
    e->len = b->len;
    q->n++;
    q->bytes += b->len;
    return true;
}

static bool inq_grow(struct tp_inq *q)
{
    /* spill: unroll the ring into a heap array twice as large */
    uint16_t ncap = (uint16_t)(q->cap * 2);
    struct tp_rbuf *ne = malloc(sizeof(*ne) * ncap);
    if (!ne || ncap < q->cap) {
        free(ne);
        return false;
    }
    for (uint16_t i = 0; i < q->n; i++)
        ne[i] = q->e[(q->head + i) & (q->cap - 1)];
    if (q->e != q->inl)
        free(q->e);
    q->e = ne;
    q->cap = ncap;
    q->head = 0;
    return true;
}

bool tp_inq_push(struct tp_inq *q, uint16_t bid, uint32_t len)
{
    if (q->n == q->cap && !inq_grow(q))
        return false;
    struct tp_rbuf *e = &q->e[(q->head + q->n) & (q->cap - 1)];
    e->blk = NULL;
    e->bid = bid;
    e->off = 0;
    e->len = len;
    q->n++;
    q->bytes += len;
    return true;
}

/* Back to the inline array once the burst is consumed. */
static void inq_shrink(struct tp_inq *q)
{
    if (q->e != q->inl) {
        free(q->e);
        q->e = q->inl;
        q->cap = TP_INQ_INLINE;
    }
    q->head = 0;
}

void tp_inq_clear(struct tp_shard *sh, struct tp_inq *q)
{
    while (q->n) {
        tp_bref_put(sh, tp_rbuf_ref(&q->e[q->head]));
        q->head = (q->head + 1) & (q->cap - 1);
        q->n--;
    }
    q->bytes = 0;
    inq_shrink(q);
}

void tp_inq_consume(struct tp_shard *sh, struct tp_inq *q, uint32_t n)
{
    while (n && q->n) {
        struct tp_rbuf *e = &q->e[q->head];
        uint32_t take = n < e->len ? n : e->len;

        e->off += take;
        e->len -= take;
        q->bytes -= take;
        n -= take;
        if (e->len == 0) {
            tp_bref_put(sh, tp_rbuf_ref(e));
            q->head = (q->head + 1) & (q->cap - 1);
            q->n--;
        }
    }
    if (q->n == 0)
        inq_shrink(q);
}

unsigned tp_inq_unpin(struct tp_shard *sh, struct tp_inq *q)
{
    unsigned moved = 0;

    for (uint16_t i = 1; i < q->n; i++) {
        struct tp_rbuf *e = &q->e[(q->head + i) & (q->cap - 1)];
        if (e->blk)
            continue;
        struct tp_block *b = tp_block_get(sh, e->len);
        if (!b)
            break;
        memcpy(b->data, tp_rbuf_data(sh, e), e->len);
        b->len = e->len;
        tp_buf_release(sh, e->bid);
        e->blk = b;
        e->bid = 0;
        e->off = 0;
        moved++;
    }
    return moved;
}

bool tp_outq_push(struct tp_shard *sh, struct tp_outq **qp, const struct tp_seg *s)
{
    struct tp_outq *q = *qp;

    if (!q) {
        q = tp_outq_get(sh);
        if (!q)
            return false;
        *qp = q;
    }
    if (q->n >= TP_OUTQ_SEGS)
        return false;
    struct tp_seg *d = &q->seg[(q->head + q->n) % TP_OUTQ_SEGS];
    *d = *s;
    if (s->kind == TP_SEG_INLINE)
        d->p = d->inl;
    q->n++;
    q->bytes += s->len;
    return true;
}

bool tp_outq_push_static(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len)
{
    struct tp_seg s = {.p = p, .len = len, .kind = TP_SEG_STATIC};
    return tp_outq_push(sh, qp, &s);
}

bool tp_outq_push_block(struct tp_shard *sh, struct tp_outq **qp, struct tp_block *b)
{
    struct tp_seg s = {.p = b->data, .len = b->len, .kind = TP_SEG_BLOCK, .blk = b};
    if (!tp_outq_push(sh, qp, &s)) {
        tp_block_put(sh, b);
        return false;
    }
    return true;
}

bool tp_outq_push_slice(struct tp_shard *sh, struct tp_outq **qp, struct tp_bref r, const char *p,
                        uint32_t len)
{
    struct tp_outq *q = *qp;

    /* A small slice right after a block we wrote (a response head, say) is
     * copied into that block: one buffer to send instead of two, and the
     * receive buffer goes back at once. Only a block nobody else holds, in
     * a segment that is not part of the send in flight, may grow. */
    if (q && q->n > q->sending && len <= TP_COALESCE_MAX) {
        struct tp_seg *t = &q->seg[(q->head + q->n - 1) % TP_OUTQ_SEGS];
        if (t->kind == TP_SEG_BLOCK && t->blk->refs == 1 && t->p + t->len == t->blk->data + t->blk->len &&
            t->blk->size - t->blk->len >= len) {
            memcpy(t->blk->data + t->blk->len, p, len);
            t->blk->len += len;
            t->len += len;
            q->bytes += len;
            return true;
        }
    }
    /* While the shard's receive buffers run low, a slice that would hold one
     * until a (maybe slow) peer takes it is copied out: the buffer goes back
     * to the kernel now, the bytes wait in ordinary memory. */
    if (!r.blk && tp_bufs_pressed(sh)) {
        struct tp_block *b = tp_block_get(sh, len);
        if (b) {
            memcpy(b->data, p, len);
            b->len = len;
            return tp_outq_push_block(sh, qp, b);
        }
    }
    struct tp_seg s = {
        .p = p, .len = len, .kind = r.blk ? TP_SEG_BLOCK : TP_SEG_RBUF, .bid = r.bid, .blk = r.blk};
    if (!tp_outq_push(sh, qp, &s))
        return false;
    tp_bref_get(sh, r);
    return true;
}

bool tp_outq_push_rbuf(struct tp_shard *sh, struct tp_outq **qp, uint16_t bid, const char *p, uint32_t len)
{
    struct tp_bref r = {.blk = NULL, .bid = bid};
    return tp_outq_push_slice(sh, qp, r, p, len);
}

bool tp_outq_push_inline(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len)
{
    struct tp_seg s = {.len = len, .kind = TP_SEG_INLINE};
    TP_BUG_ON_HOT(len > sizeof(s.inl));
    memcpy(s.inl, p, len);
    return tp_outq_push(sh, qp, &s);
}

uint32_t tp_outq_prepare(struct tp_outq *q)
{
    uint32_t total = 0;
    unsigned niov = 0;

    for (unsigned i = 0; i < q->n && niov < TP_SEND_IOV; i++) {
        struct tp_seg *s = &q->seg[(q->head + i) % TP_OUTQ_SEGS];
        const char *p = s->p;
        uint32_t len = s->len;

        if (i == 0) {
            p += q->first_off;
            len -= q->first_off;
        }
        q->sending = (uint16_t)(i + 1);
        if (len == 0)
            continue;
        q->iov[niov].iov_base = (void *)p;
        q->iov[niov].iov_len = len;
        niov++;
        total += len;
    }
    memset(&q->msg, 0, sizeof(q->msg));
    q->msg.msg_iov = q->iov;
    q->msg.msg_iovlen = niov;
    return total;
}

static void seg_release(struct tp_shard *sh, struct tp_seg *s)
{
    if (s->kind == TP_SEG_RBUF)
        tp_buf_release(sh, s->bid);
    else if (s->kind == TP_SEG_BLOCK)
        tp_block_put(sh, s->blk);
}

bool tp_outq_sent(struct tp_shard *sh, struct tp_outq *q, uint32_t n)
{
    unsigned covered = q->sending;

    q->bytes -= n;
    while (q->n && covered) {
        struct tp_seg *s = &q->seg[q->head];
        uint32_t left = s->len - q->first_off;

        if (n < left) {
            q->first_off += n; /* short send: the rest goes with the next one */
            break;
        }
        n -= left;
        q->first_off = 0;
        seg_release(sh, s);
        q->head = (q->head + 1) % TP_OUTQ_SEGS;
        q->n--;
        covered--;
    }
    q->sending = 0;
    if (q->n == 0)
        q->head = 0;
    return q->n == 0;
}

bool tp_outq_drop_last(struct tp_shard *sh, struct tp_outq *q)
{
    if (!q || q->n == 0 || q->n <= q->sending)
        return false; /* nothing queued, or the last segment is being sent */
    struct tp_seg *s = &q->seg[(q->head + q->n - 1) % TP_OUTQ_SEGS];
    q->bytes -= s->len;
    seg_release(sh, s);
    q->n--;
    return true;
}

void tp_outq_clear(struct tp_shard *sh, struct tp_outq **qp)
{
    struct tp_outq *q = *qp;

    if (!q)
        return;
    while (q->n) {
        seg_release(sh, &q->seg[q->head]);
        q->head = (q->head + 1) % TP_OUTQ_SEGS;
        q->n--;
    }
    q->head = 0;
    q->first_off = 0;
    q->bytes = 0;
    q->sending = 0;
    tp_outq_put(sh, q);
    *qp = NULL;
}
