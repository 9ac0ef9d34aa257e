/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the receive and send queues (src/rt/queue.c, declared in
 * src/rt/queue.h): tp_inq_push / consume / clear with the inline ring, its
 * wrap-around, the spill to the heap and the shrink back, the capacity
 * limit; tp_outq_push_* / prepare / sent with partial sends, zero-length
 * segments, the iovec limit, the segment ring's capacity and wrap-around,
 * buffer references held by RBUF segments and blocks returned once sent, and
 * tp_outq_clear; the buffer window of the reactor (tp_bufs_flush: the ring
 * topped up to the window, growth on a busy iteration or ENOBUFS, shrink
 * after a quiet second, parked memory given back).
 *
 * Buffer references are checked exactly on a fake shard (fake_shard.h): every
 * release of a last reference parks the buffer on a stack, so the test sees which buffer
 * went back and in which order. Single-threaded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_shard.h"
#include "tap.h"

static char pattern[4096];

/* Fills buffer <bid> with <len> bytes of a pattern tied to the bid and queues it. */
static void recv_push(struct tp_shard *sh, struct tp_inq *q, uint16_t bid, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        pattern[i] = (char)('a' + (bid + i) % 26);
    if (!fake_recv_push(sh, q, bid, pattern, len))
        abort();
}

/* The queue's entries, oldest first, as "bid:off:len " text. */
static void inq_text(const struct tp_inq *q, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = 0;
    for (uint16_t i = 0; i < q->n && n < cap; i++) {
        const struct tp_rbuf *e = &q->e[(q->head + i) & (q->cap - 1)];
        n += (size_t)snprintf(out + n, cap - n, "%u:%u:%u ", e->bid, e->off, e->len);
    }
}

static void test_inq_basic(struct tp_shard *sh)
{
    struct tp_inq q;
    char text[256];

    tp_inq_init(&q);
    ok(q.e == q.inl && q.cap == TP_INQ_INLINE && q.n == 0 && q.bytes == 0, "init: empty inline ring");
    ok(tp_inq_front(&q) == NULL, "init: no front");
    recv_push(sh, &q, 1, 10);
    recv_push(sh, &q, 2, 20);
    recv_push(sh, &q, 3, 30);
    is_int(q.bytes, 60, "3 pushes: 60 bytes");
    is_int(q.n, 3, "3 entries");
    inq_text(&q, text, sizeof(text));
    is_str(text, "1:0:10 2:0:20 3:0:30 ", "entries in order");
    is_int(sh->bufs.held, 3, "3 buffers held");

    tp_inq_consume(sh, &q, 0);
    is_int(q.bytes, 60, "consume 0: nothing changes");
    tp_inq_consume(sh, &q, 5);
    inq_text(&q, text, sizeof(text));
    is_str(text, "1:5:5 2:0:20 3:0:30 ", "consume 5: front advanced");
    is_int(sh->bufs.refs[1], 1, "a partly consumed buffer keeps its reference");
    uint32_t sp = sh->bufs.sp;
    tp_inq_consume(sh, &q, 5);
    is_int(sh->bufs.refs[1], 0, "an emptied buffer is released");
    is_int(sh->bufs.sp, sp + 1, "one buffer returned (parked)");
    ok(fake_returned_is(sh, 1, 1), "buffer 1 went back with its whole memory");
    is_int(sh->bufs.held, 2, "2 buffers held");
    tp_inq_consume(sh, &q, 25);
    inq_text(&q, text, sizeof(text));
    is_str(text, "3:5:25 ", "consume across an entry boundary");
    ok(fake_returned_is(sh, 1, 2), "buffer 2 went back");
    is_int(q.bytes, 25, "25 bytes left");
    tp_inq_consume(sh, &q, 1000);
    is_int(q.n, 0, "consuming more than queued empties the queue");
    is_int(q.bytes, 0, "0 bytes");
    ok(q.e == q.inl && q.head == 0, "empty queue back at the inline start");
    is_int(sh->bufs.held, 0, "no buffer held");
    is_int(fake_refs_total(sh), 0, "no references");
    tp_inq_consume(sh, &q, 7);
    is_int(q.n, 0, "consume on an empty queue is harmless");
}

/* Inline ring wrapping around, then spilling with its entries unrolled in order. */
static void test_inq_wrap_spill(struct tp_shard *sh)
{
    struct tp_inq q;
    char text[512];

    tp_inq_init(&q);
    recv_push(sh, &q, 10, 4);
    recv_push(sh, &q, 11, 4);
    recv_push(sh, &q, 12, 4);
    tp_inq_consume(sh, &q, 6); /* 10 gone, 11 half */
    recv_push(sh, &q, 13, 4);
    recv_push(sh, &q, 14, 4); /* wraps to inl[0] */
    ok(q.e == q.inl && q.n == 4 && q.head == 1, "4 entries in the inline ring, wrapped");
    inq_text(&q, text, sizeof(text));
    is_str(text, "11:2:2 12:0:4 13:0:4 14:0:4 ", "wrapped entries in order");
    recv_push(sh, &q, 15, 4); /* spill */
    ok(q.e != q.inl && q.cap == 8, "fifth entry spills to a heap array of 8");
    is_int(q.head, 0, "unrolled: head at 0");
    inq_text(&q, text, sizeof(text));
    is_str(text, "11:2:2 12:0:4 13:0:4 14:0:4 15:0:4 ", "spilled entries keep their order and offsets");
    is_int(q.bytes, 18, "18 bytes");
    for (uint16_t b = 16; b < 30; b++)
        recv_push(sh, &q, b, 4);
    ok(q.cap == 32 && q.n == 19, "19 entries: grown to 32");
    /* consume partly: stays on the heap, in order */
    tp_inq_consume(sh, &q, 2 + 4 * 3);
    inq_text(&q, text, sizeof(text));
    ok(strncmp(text, "15:0:4 16:0:4 ", 14) == 0, "after consuming 4 entries the front is 15");
    ok(q.e != q.inl, "still on the heap while entries remain");
    /* the order of returns is the order of consumption */
    ok(fake_returned_is(sh, 4, 11) && fake_returned_is(sh, 3, 12) && fake_returned_is(sh, 2, 13) &&
           fake_returned_is(sh, 1, 14),
       "buffers returned oldest first");
    tp_inq_consume(sh, &q, q.bytes);
    ok(q.e == q.inl && q.cap == TP_INQ_INLINE && q.n == 0 && q.head == 0, "drained: back to the inline ring");
    is_int(fake_refs_total(sh), 0, "every buffer released");
    is_int(sh->bufs.held, 0, "none held");
    ok(fake_returned_is(sh, 1, 29), "the last one returned is the newest");

    /* reuse after the shrink */
    recv_push(sh, &q, 40, 8);
    inq_text(&q, text, sizeof(text));
    is_str(text, "40:0:8 ", "usable after the shrink");

    /* clear a spilled queue with partial offsets */
    for (uint16_t b = 41; b < 50; b++)
        recv_push(sh, &q, b, 8);
    tp_inq_consume(sh, &q, 11);
    is_int(q.n, 9, "9 entries before clear");
    tp_inq_clear(sh, &q);
    ok(q.n == 0 && q.bytes == 0 && q.e == q.inl && q.cap == TP_INQ_INLINE, "clear: empty inline ring");
    is_int(fake_refs_total(sh), 0, "clear released every buffer");
    is_int(sh->bufs.held, 0, "none held after clear");
    tp_inq_clear(sh, &q);
    is_int(q.n, 0, "clear on an empty queue is harmless");

    /* a buffer also referenced elsewhere outlives its queue entry */
    recv_push(sh, &q, 60, 8);
    tp_buf_ref(sh, 60);
    tp_inq_clear(sh, &q);
    is_int(sh->bufs.refs[60], 1, "shared buffer: the other reference remains");
    is_int(sh->bufs.held, 1, "shared buffer: still held");
    tp_buf_release(sh, 60);
    is_int(sh->bufs.held, 0, "released by its last holder");
}

/* The ring's index and capacity are 16 bits: 32768 entries at most. */
static void test_inq_capacity(void)
{
    struct tp_shard *big = fake_shard_create(32768, 16);
    struct tp_inq q;
    bool all = true;

    tp_inq_init(&q);
    for (uint32_t b = 0; b < 32768; b++)
        if (!fake_recv_push(big, &q, (uint16_t)b, "0123456789", 10))
            all = false;
    ok(all, "32768 entries fit");
    is_int(q.n, 32768, "n = 32768");
    is_int(q.cap, 32768, "cap = 32768");
    ok(!tp_inq_push(&q, 0, 10), "one more is refused");
    is_int(q.n, 32768, "refused push left n unchanged");
    is_int(q.bytes, 327680, "refused push left bytes unchanged");
    tp_inq_consume(big, &q, 10 * 32767 + 3);
    ok(q.n == 1 && tp_inq_front(&q)->bid == 32767 && tp_inq_front(&q)->off == 3,
       "consumed up to the last entry");
    is_int(big->bufs.held, 1, "one buffer held");
    tp_inq_clear(big, &q);
    is_int(big->bufs.held, 0, "cleared");
    is_int(fake_refs_total(big), 0, "no references");
    fake_shard_destroy(big);
}

/* ---- send queue ---- */

/* The bytes tp_outq_prepare put into the iovec, concatenated. */
static size_t iov_text(const struct tp_outq *q, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < q->msg.msg_iovlen; i++) {
        size_t l = q->iov[i].iov_len;
        if (n + l >= cap)
            l = cap - n - 1;
        memcpy(out + n, q->iov[i].iov_base, l);
        n += l;
    }
    out[n] = 0;
    return n;
}

static struct tp_block *block_with(struct tp_shard *sh, const char *s)
{
    struct tp_block *b = tp_block_get(sh, 64);
    if (!b)
        abort();
    b->len = (uint32_t)strlen(s);
    memcpy(b->data, s, b->len);
    return b;
}

static void test_outq_basic(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    char text[256], src[16];

    ok(tp_outq_push_static(sh, &q, "HTTP/1.1 ", 9), "push static");
    ok(q != NULL, "the first push allocates the queue");
    strcpy(src, "200 OK");
    ok(tp_outq_push_inline(sh, &q, src, 6), "push inline");
    memset(src, 'Z', sizeof(src)); /* inline data was copied */
    ok(tp_outq_push_static(sh, &q, "", 0), "push a zero-length segment");
    ok(tp_outq_push_block(sh, &q, block_with(sh, "\r\nX: 1\r\n\r\n")), "push a block");
    struct tp_seg mark = {.kind = TP_SEG_MARK};
    ok(tp_outq_push(sh, &q, &mark), "push a mark (the slice after it is not copied into the block)");
    fake_recv(sh, 7, "..BODY..", 8);
    ok(tp_outq_push_rbuf(sh, &q, 7, (const char *)tp_buf_ptr(sh, 7) + 2, 4), "push a buffer slice");
    is_int(sh->bufs.refs[7], 2, "the RBUF segment holds a reference");
    is_int(q->n, 6, "6 segments");
    is_int(q->bytes, 9 + 6 + 0 + 0 + 10 + 4, "bytes queued");
    ok(!tp_outq_full(q, 58), "58 more fit");
    ok(tp_outq_full(q, 59), "59 more do not");
    ok(!tp_outq_full(NULL, 1000), "no queue is never full");

    /* the holder of buffer 7's first reference (the receive side) lets go */
    tp_buf_release(sh, 7);
    is_int(sh->bufs.refs[7], 1, "only the segment holds buffer 7");

    is_int(tp_outq_prepare(q), 29, "prepare: 29 bytes");
    is_int(q->msg.msg_iovlen, 4, "zero-length segments take no iovec");
    is_int(q->sending, 6, "all 6 segments are in flight");
    iov_text(q, text, sizeof(text));
    is_str(text, "HTTP/1.1 200 OK\r\nX: 1\r\n\r\nBODY", "iovec bytes");
    ok(q->msg.msg_iov == q->iov && q->msg.msg_name == NULL && q->msg.msg_control == NULL, "msghdr set up");

    /* short send: 12 bytes (inside the inline segment) */
    ok(!tp_outq_sent(sh, q, 12), "short send: not empty");
    is_int(q->n, 5, "the static segment is gone");
    is_int(q->first_off, 3, "3 bytes of the inline segment were sent");
    is_int(q->bytes, 17, "17 bytes left");
    is_int(q->sending, 0, "nothing in flight");
    is_int(tp_outq_prepare(q), 17, "prepare again: 17 bytes");
    iov_text(q, text, sizeof(text));
    is_str(text, " OK\r\nX: 1\r\n\r\nBODY", "resumes inside the inline segment");

    /* send exactly up to the end of the block: the block and the mark go */
    uint32_t nblk = sh->n_blk_free;
    ok(!tp_outq_sent(sh, q, 13), "sent up to the end of the block");
    is_int(sh->n_blk_free, nblk + 1, "the sent block went back to the shard");
    is_int(q->n, 1, "only the buffer slice is left");
    is_int(q->first_off, 0, "at a segment boundary");
    is_int(sh->bufs.refs[7], 1, "buffer 7 still held by its segment");
    is_int(tp_outq_prepare(q), 4, "4 bytes left");
    ok(tp_outq_sent(sh, q, 4), "all sent: empty");
    is_int(sh->bufs.refs[7], 0, "the RBUF segment released buffer 7 once sent");
    ok(fake_returned_is(sh, 1, 7), "buffer 7 went back to the ring");
    is_int(sh->bufs.held, 0, "nothing held");
    ok(q->n == 0 && q->head == 0 && q->bytes == 0, "empty queue reset to the start");
    is_int(tp_outq_prepare(q), 0, "prepare on an empty queue: 0 bytes");
    is_int(q->msg.msg_iovlen, 0, "no iovec");

    tp_outq_clear(sh, &q);
    ok(q == NULL, "clear drops the queue");
    is_int(sh->n_outq_free, 1, "the queue went to the shard's free list");
    tp_outq_clear(sh, &q);
    ok(q == NULL && sh->n_outq_free == 1, "clear of no queue is harmless");

    /* the pooled queue comes back clean */
    ok(tp_outq_push_static(sh, &q, "x", 1), "push reuses a pooled queue");
    is_int(sh->n_outq_free, 0, "taken from the free list");
    ok(q->n == 1 && q->bytes == 1 && q->first_off == 0 && q->sending == 0, "pooled queue starts clean");
    tp_outq_clear(sh, &q);
}

/* Zero-length segments at the front, between and at the end of a send. */
static void test_outq_zero_len(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    struct tp_seg mark = {.kind = TP_SEG_MARK};
    char text[64];

    tp_outq_push(sh, &q, &mark);
    tp_outq_push_static(sh, &q, "ab", 2);
    tp_outq_push(sh, &q, &mark);
    tp_outq_push_static(sh, &q, "", 0);
    tp_outq_push_static(sh, &q, "cd", 2);
    tp_outq_push(sh, &q, &mark);
    is_int(tp_outq_prepare(q), 4, "4 bytes around marks");
    is_int(q->msg.msg_iovlen, 2, "2 iovecs");
    iov_text(q, text, sizeof(text));
    is_str(text, "abcd", "bytes");
    ok(tp_outq_sent(sh, q, 4), "sending the 4 bytes empties the queue, marks included");
    is_int(q->n, 0, "no segment left");

    /* only marks queued: prepare covers them with 0 bytes, a 0-byte send ends them */
    tp_outq_push(sh, &q, &mark);
    tp_outq_push(sh, &q, &mark);
    is_int(tp_outq_prepare(q), 0, "only marks: 0 bytes");
    is_int(q->sending, 2, "both marks covered");
    ok(tp_outq_sent(sh, q, 0), "a 0-byte completion consumes them");

    /* a short send stops before the mark that follows the partly sent segment */
    tp_outq_push_static(sh, &q, "abc", 3);
    tp_outq_push(sh, &q, &mark);
    tp_outq_push_static(sh, &q, "de", 2);
    tp_outq_prepare(q);
    ok(!tp_outq_sent(sh, q, 2), "short send");
    is_int(q->n, 3, "all 3 segments remain");
    is_int(q->first_off, 2, "2 bytes of the first sent");
    tp_outq_prepare(q);
    ok(!tp_outq_sent(sh, q, 1), "the third byte");
    is_int(q->n, 1, "the first segment and the mark are gone");
    tp_outq_clear(sh, &q);
}

/* More segments than one sendmsg's iovec takes; the ring wraps. */
static void test_outq_iov_limit_and_wrap(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    static const char digits[] = "0123456789";
    char want[256], text[256];
    bool pushed = true;

    for (int i = 0; i < 40; i++)
        pushed &= tp_outq_push_static(sh, &q, digits + i % 10, 1);
    ok(pushed, "40 one-byte segments");
    is_int(tp_outq_prepare(q), TP_SEND_IOV, "prepare takes TP_SEND_IOV segments");
    is_int(q->msg.msg_iovlen, TP_SEND_IOV, "iovec full");
    is_int(q->sending, TP_SEND_IOV, "32 in flight");
    ok(!tp_outq_sent(sh, q, TP_SEND_IOV), "sent 32: 8 left");
    is_int(q->n, 8, "8 segments left");
    is_int(q->head, 32, "head advanced");

    /* fill to capacity: the ring wraps around */
    bool all = true;
    for (int i = 0; i < 56; i++)
        all &= tp_outq_push_inline(sh, &q, digits + i % 10, 1);
    ok(all, "56 more: 64 queued");
    is_int(q->n, TP_OUTQ_SEGS, "the ring is full");
    ok(tp_outq_full(q, 1), "full");
    ok(!tp_outq_push_static(sh, &q, "x", 1), "a 65th static segment is refused");
    ok(!tp_outq_push_inline(sh, &q, "x", 1), "a 65th inline segment is refused");
    fake_recv(sh, 9, "R", 1);
    ok(!tp_outq_push_rbuf(sh, &q, 9, (const char *)tp_buf_ptr(sh, 9), 1), "a 65th buffer slice is refused");
    is_int(sh->bufs.refs[9], 1, "a refused slice takes no reference");
    tp_buf_release(sh, 9);
    struct tp_block *b = block_with(sh, "blk");
    uint32_t nblk = sh->n_blk_free;
    ok(!tp_outq_push_block(sh, &q, b), "a 65th block is refused");
    is_int(sh->n_blk_free, nblk + 1, "a refused block is freed by the push (ownership passed)");
    is_int(q->n, TP_OUTQ_SEGS, "still 64");
    is_int(q->bytes, 64, "64 bytes");

    /* drain in sendmsg-sized steps, checking order across the wrap */
    size_t w = 0;
    for (int i = 32; i < 40; i++)
        want[w++] = digits[i % 10];
    for (int i = 0; i < 56; i++)
        want[w++] = digits[i % 10];
    want[w] = 0;
    size_t got = 0;
    bool empty = false;
    for (int iters = 0; !empty && iters < 200; iters++) {
        uint32_t n = tp_outq_prepare(q);
        got += iov_text(q, text + got, sizeof(text) - got);
        /* a short send of all but one byte, then the rest */
        if (n > 1) {
            empty = tp_outq_sent(sh, q, n - 1);
            text[got - 1] = 0;
            got--;
            continue;
        }
        empty = tp_outq_sent(sh, q, n);
    }
    ok(empty, "drained");
    is_str(text, want, "bytes in order across the wrap, with short sends");
    ok(q->head == 0 && q->n == 0 && q->bytes == 0, "empty and reset");
    tp_outq_clear(sh, &q);
}

/* A small buffer slice right after a block is copied into the block
 * (TP_COALESCE_MAX): no segment, no reference; otherwise it is a segment. */
static void test_outq_coalesce(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    char text[8300];
    static char big[TP_COALESCE_MAX + 1];

    memset(big, 'B', sizeof(big));
    fake_recv(sh, 30, "..body..", 8);
    ok(tp_outq_push_block(sh, &q, block_with(sh, "HEAD\r\n\r\n")), "a head block");
    ok(tp_outq_push_rbuf(sh, &q, 30, (const char *)tp_buf_ptr(sh, 30) + 2, 4), "a 4-byte slice after it");
    is_int(q->n, 1, "copied into the block: still one segment");
    is_int(sh->bufs.refs[30], 1, "no reference taken on the copied buffer");
    is_int(q->bytes, 12, "bytes count the copy");
    tp_buf_release(sh, 30);
    is_int(sh->bufs.held, 0, "the receive buffer can go back at once");
    is_int(tp_outq_prepare(q), 12, "one send of 12 bytes");
    is_int(q->msg.msg_iovlen, 1, "one iovec");
    iov_text(q, text, sizeof(text));
    is_str(text, "HEAD\r\n\r\nbody", "head and body in the block");

    /* the block is in flight now: a slice may not grow it */
    fake_recv(sh, 31, "more", 4);
    ok(tp_outq_push_rbuf(sh, &q, 31, (const char *)tp_buf_ptr(sh, 31), 4),
       "a slice while the block is in flight");
    is_int(q->n, 2, "a separate segment");
    is_int(sh->bufs.refs[31], 2, "holding a reference");
    ok(!tp_outq_sent(sh, q, 5), "short send of the block");
    tp_buf_release(sh, 31);
    tp_outq_clear(sh, &q);
    is_int(fake_refs_total(sh), 0, "clear released the slice");

    ok(tp_outq_push_block(sh, &q, block_with(sh, "HEAD:")), "a block");
    tp_outq_prepare(q);
    ok(!tp_outq_sent(sh, q, 2), "2 bytes of it sent");
    fake_recv(sh, 32, "tail", 4);
    ok(tp_outq_push_rbuf(sh, &q, 32, (const char *)tp_buf_ptr(sh, 32), 4),
       "a slice after a partly sent block");
    is_int(q->n, 1, "copied into the block");
    is_int(q->bytes, 7, "7 bytes left to send");
    is_int(tp_outq_prepare(q), 7, "prepare: 7 bytes");
    iov_text(q, text, sizeof(text));
    is_str(text, "AD:tail", "the unsent part of the block and the copy");
    tp_buf_release(sh, 32);
    ok(tp_outq_sent(sh, q, 7), "all sent");

    /* larger than TP_COALESCE_MAX: a segment */
    ok(tp_outq_push_block(sh, &q, block_with(sh, "H")), "a block");
    fake_recv(sh, 33, big, TP_COALESCE_MAX + 1);
    ok(tp_outq_push_rbuf(sh, &q, 33, (const char *)tp_buf_ptr(sh, 33), TP_COALESCE_MAX + 1), "a big slice");
    is_int(q->n, 2, "over TP_COALESCE_MAX: its own segment");
    is_int(sh->bufs.refs[33], 2, "with a reference");
    tp_buf_release(sh, 33);
    tp_outq_clear(sh, &q);

    /* exactly TP_COALESCE_MAX: copied */
    ok(tp_outq_push_block(sh, &q, block_with(sh, "H")), "a block");
    fake_recv(sh, 34, big, TP_COALESCE_MAX);
    ok(tp_outq_push_rbuf(sh, &q, 34, (const char *)tp_buf_ptr(sh, 34), TP_COALESCE_MAX),
       "a slice of the maximum");
    is_int(q->n, 1, "TP_COALESCE_MAX bytes: copied");
    is_int(q->bytes, 1 + TP_COALESCE_MAX, "bytes");
    tp_buf_release(sh, 34);
    /* the block has TP_BLOCK_SIZE - 1 - TP_COALESCE_MAX bytes of room left:
     * fill it with copies, then the next slice no longer fits */
    uint32_t room = TP_BLOCK_SIZE - 1 - TP_COALESCE_MAX, copied = 0;
    for (int i = 0; i < 10 && room - copied >= TP_COALESCE_MAX; i++) {
        fake_recv(sh, 35, big, TP_COALESCE_MAX);
        tp_outq_push_rbuf(sh, &q, 35, (const char *)tp_buf_ptr(sh, 35), TP_COALESCE_MAX);
        tp_buf_release(sh, 35);
        copied += TP_COALESCE_MAX;
    }
    uint32_t left = room - copied;
    is_int(q->n, 1, "filled by copies");
    fake_recv(sh, 36, big, left);
    ok(tp_outq_push_rbuf(sh, &q, 36, (const char *)tp_buf_ptr(sh, 36), left),
       "a slice of exactly the room left");
    is_int(q->n, 1, "exactly the room: copied, the block is full");
    tp_buf_release(sh, 36);
    fake_recv(sh, 37, "z", 1);
    ok(tp_outq_push_rbuf(sh, &q, 37, (const char *)tp_buf_ptr(sh, 37), 1), "one more byte");
    is_int(q->n, 2, "a full block takes no more: its own segment");
    is_int(sh->bufs.refs[37], 2, "with a reference");
    tp_buf_release(sh, 37);
    is_int(q->bytes, TP_BLOCK_SIZE + 1, "bytes");
    is_int(tp_outq_prepare(q), q->bytes, "prepare sends every queued byte");
    tp_outq_clear(sh, &q);
    is_int(fake_refs_total(sh), 0, "no references left");

    /* a block segment covering only part of its block is not grown */
    struct tp_block *b = block_with(sh, "abcdef");
    struct tp_seg part = {.p = b->data, .len = 3, .kind = TP_SEG_BLOCK, .blk = b};
    ok(tp_outq_push(sh, &q, &part), "a segment of half a block");
    fake_recv(sh, 38, "xy", 2);
    tp_outq_push_rbuf(sh, &q, 38, (const char *)tp_buf_ptr(sh, 38), 2);
    is_int(q->n, 2, "the slice is its own segment");
    is_int(b->len, 6, "the block was not written");
    tp_buf_release(sh, 38);
    is_int(tp_outq_prepare(q), 5, "5 bytes");
    iov_text(q, text, sizeof(text));
    is_str(text, "abcxy", "the half block, then the slice");
    tp_outq_clear(sh, &q);
    is_int(fake_refs_total(sh), 0, "no references left");
    is_int(sh->bufs.held, 0, "none held");
}

/* tp_outq_clear with everything still queued, some in flight. */
static void test_outq_clear_all(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    struct tp_block *one = block_with(sh, "one"), *two = block_with(sh, "two");
    uint32_t nblk = sh->n_blk_free;

    fake_recv(sh, 20, "aaaa", 4);
    fake_recv(sh, 21, "bbbb", 4);
    tp_outq_push_rbuf(sh, &q, 20, (const char *)tp_buf_ptr(sh, 20), 4);
    tp_outq_push_block(sh, &q, one);
    tp_outq_push_static(sh, &q, "-", 1); /* keeps the next slice out of the block */
    tp_outq_push_rbuf(sh, &q, 21, (const char *)tp_buf_ptr(sh, 21), 2);
    tp_outq_push_rbuf(sh, &q, 21, (const char *)tp_buf_ptr(sh, 21) + 2, 2);
    tp_outq_push_block(sh, &q, two);
    is_int(q->n, 6, "6 segments");
    tp_buf_release(sh, 20);
    tp_buf_release(sh, 21);
    ok(sh->bufs.refs[20] == 1 && sh->bufs.refs[21] == 2, "segments hold 1 + 2 references");
    tp_outq_prepare(q);
    tp_outq_sent(sh, q, 2); /* partly sent */
    tp_outq_prepare(q);     /* and in flight again */
    tp_outq_clear(sh, &q);
    ok(q == NULL, "cleared");
    is_int(fake_refs_total(sh), 0, "clear released every buffer reference");
    is_int(sh->bufs.held, 0, "nothing held");
    is_int(sh->n_blk_free, nblk + 2, "both blocks freed once");
    ok(fake_returned_is(sh, 2, 20) && fake_returned_is(sh, 1, 21), "buffers returned in queue order");
}

/* Over half of the pool held: a slice is copied into a block and takes no
 * reference, so its receive buffer can go back at once. */
static void test_outq_pressed_copies(struct tp_shard *sh)
{
    struct tp_outq *q = NULL;
    char text[64];
    uint32_t pressure = sh->bufs.count / 2 + 1;

    fake_recv(sh, 40, "0123456789", 10);
    sh->bufs.held += pressure;
    ok(tp_outq_push_rbuf(sh, &q, 40, (const char *)tp_buf_ptr(sh, 40) + 3, 5), "pressed: a slice");
    sh->bufs.held -= pressure;
    is_int(q->n, 1, "pressed: one segment");
    is_int(q->seg[q->head].kind, TP_SEG_BLOCK, "pressed: the slice became a block");
    is_int(sh->bufs.refs[40], 1, "pressed: no reference taken on the buffer");
    tp_buf_release(sh, 40);
    is_int(sh->bufs.held, 0, "pressed: the receive buffer went back");
    is_int(tp_outq_prepare(q), 5, "pressed: 5 bytes to send");
    iov_text(q, text, sizeof(text));
    is_str(text, "34567", "pressed: the bytes were copied");
    tp_outq_clear(sh, &q);

    fake_recv(sh, 41, "abcdef", 6);
    ok(tp_outq_push_rbuf(sh, &q, 41, (const char *)tp_buf_ptr(sh, 41), 6), "unpressed: a slice");
    is_int(q->seg[q->head].kind, TP_SEG_RBUF, "unpressed: the slice refers to the buffer");
    is_int(sh->bufs.refs[41], 2, "unpressed: holding a reference");
    tp_buf_release(sh, 41);
    tp_outq_clear(sh, &q);
    is_int(fake_refs_total(sh), 0, "unpressed: clear released the slice");
}

/* What bufs_setup does on a real shard, on the fake one: every buffer parked, bid 0 on top. */
static void bufs_prime(struct tp_shard *sh)
{
    struct tp_bufs *b = &sh->bufs;
    for (uint32_t i = 0; i < b->count; i++)
        b->stk[i] = (uint16_t)(b->count - 1 - i);
    b->sp = b->low_sp = b->count;
    b->want = TP_BUFS_MIN;
}

/* A receive completion carrying buffer <bid>. */
static int take(struct tp_shard *sh, uint16_t bid)
{
    struct io_uring_cqe cqe = {.res = 1,
                               .flags = IORING_CQE_F_BUFFER | ((uint32_t)bid << IORING_CQE_BUFFER_SHIFT)};
    return tp_cqe_buffer(sh, &cqe);
}

/* The buffer window: the ring gets TP_BUFS_MIN buffers, doubles when an
 * iteration takes more than half, returned buffers are parked, a quiet
 * second halves the window and gives parked memory back. */
static void test_bufs_window(void)
{
    struct tp_shard *sh = fake_shard_create(256, 4096);
    struct tp_bufs *b = &sh->bufs;
    char text[64];

    bufs_prime(sh);
    sh->now_ms = 0;
    tp_bufs_flush(sh);
    is_int(b->avail, TP_BUFS_MIN, "start: a window of TP_BUFS_MIN buffers in the ring");
    is_int(b->sp, 256 - TP_BUFS_MIN, "the rest parked");
    is_int(b->br->tail, TP_BUFS_MIN, "published with one advance");
    snprintf(text, sizeof(text), "%u %u", b->br->bufs[0].bid, b->br->bufs[TP_BUFS_MIN - 1].bid);
    is_str(text, "0 63", "low buffers first, in order");

    for (uint16_t i = 0; i < 40; i++)
        take(sh, i);
    is_int(b->held, 40, "40 taken");
    is_int(b->avail, TP_BUFS_MIN - 40, "24 left in the ring");
    sh->now_ms = 10;
    tp_bufs_flush(sh);
    is_int(b->want, 2 * TP_BUFS_MIN, "more than half taken in one iteration: the window doubles");
    is_int(b->avail, 2 * TP_BUFS_MIN, "ring topped up to the new window");

    for (uint16_t i = 0; i < 40; i++)
        tp_buf_release(sh, i);
    is_int(b->held, 0, "all returned");
    ok(fake_returned_is(sh, 1, 39) && fake_returned_is(sh, 40, 0), "returned buffers parked, last on top");
    tp_bufs_flush(sh);
    is_int(b->avail, 2 * TP_BUFS_MIN, "a full ring takes no parked buffer");
    is_int(b->dirty_n, 40, "40 buffers written");

    sh->now_ms = 1000;
    tp_bufs_flush(sh); /* trim: peak 40 is no quarter of 128 or less: window stays */
    is_int(b->want, 2 * TP_BUFS_MIN, "busy second: the window stays");
    is_int(b->dirty_n, 40, "buffers parked for less than a second keep their memory");
    sh->now_ms = 2000;
    tp_bufs_flush(sh);
    is_int(b->want, TP_BUFS_MIN, "quiet second: the window halves");
    is_int(b->dirty_n, 0, "buffers parked for a whole second are given back");
    is_int(tp_stat_get(&sh->bufs_window), TP_BUFS_MIN, "window gauge");
    is_int(tp_stat_get(&sh->bufs_dirty), 0, "resident gauge");

    /* a receive that found the ring empty doubles the window at once */
    tp_stat_add(&sh->enobufs, 1);
    sh->now_ms = 2100;
    tp_bufs_flush(sh);
    is_int(b->want, 2 * TP_BUFS_MIN, "ENOBUFS: the window doubles");
    is_int(fake_bufs_in_use(sh), 0, "nothing held");
    fake_shard_destroy(sh);
}

int main(void)
{
    struct tp_shard *sh = fake_shard_create(256, 4096);

    test_inq_basic(sh);
    test_inq_wrap_spill(sh);
    test_inq_capacity();
    test_outq_basic(sh);
    test_outq_zero_len(sh);
    test_outq_iov_limit_and_wrap(sh);
    test_outq_coalesce(sh);
    test_outq_pressed_copies(sh);
    test_outq_clear_all(sh);
    test_bufs_window();
    is_int(fake_bufs_in_use(sh), sh->bufs.held, "held matches the buffers in use");
    is_int(fake_refs_total(sh), 0, "no reference left at the end");
    fake_shard_destroy(sh);
    return tap_done();
}
