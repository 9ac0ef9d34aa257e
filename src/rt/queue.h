/* SPDX-License-Identifier: MIT */
/*
 * Byte queues of the reactor: memory blocks, the receive queue (bytes a
 * connection received and has not consumed yet) and the send queue (segments
 * drained by one send at a time). Provided buffers and blocks are both
 * refcounted, so a slice of received bytes can be queued for sending without
 * a copy. Protocol-neutral: the transport and every session use these.
 *
 * Everything here is owned by one shard and touched by its thread only. [shard]
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct tp_shard;

/* ---- memory blocks for built heads, decrypted bytes and gateway answers ---- */

#define TP_BLOCK_SIZE 8192

struct tp_block {
    struct tp_block *next; /* free list link */
    uint32_t size;         /* [bytes] of data[]; TP_BLOCK_SIZE for pooled blocks */
    uint32_t len;          /* bytes used */
    uint32_t refs;         /* holders; tp_block_put drops one, the last frees */
    char data[];
};

/** A block of at least <need> bytes with one reference; NULL when out of memory. [shard] */
struct tp_block *tp_block_get(struct tp_shard *sh, size_t need);
/** Drops one reference; the last returns the block to the shard's free list. [shard] */
void tp_block_put(struct tp_shard *sh, struct tp_block *b);

/* ---- receive queue: received bytes not yet consumed ---- */

#define TP_INQ_INLINE 4

/* Received bytes live in a provided buffer <bid>, or (decrypted TLS) in a block. */
struct tp_rbuf {
    struct tp_block *blk; /* NULL: the provided buffer <bid> */
    uint16_t bid;
    uint32_t off; /* first unconsumed byte in the buffer */
    uint32_t len; /* unconsumed bytes */
};

/** A reference to the buffer some received bytes live in. */
struct tp_bref {
    struct tp_block *blk; /* NULL: the provided buffer <bid> */
    uint16_t bid;
};

/**
 * Received buffers not yet consumed, oldest first: a ring that lives inline
 * for the common case (one or two buffers) and spills to the heap while a
 * burst of body data is queued (a multishot recv can post many buffers in
 * one batch before backpressure stops it).
 */
struct tp_inq {
    struct tp_rbuf *e; /* inl, or a heap array of cap entries */
    uint16_t cap;      /* power of two */
    uint16_t head;     /* index of the oldest entry */
    uint16_t n;        /* entries */
    uint32_t bytes;    /* unconsumed bytes in all entries */
    struct tp_rbuf inl[TP_INQ_INLINE];
};

/* stop reading a socket while this many buffers wait to be consumed */
#define TP_INQ_STOP 8
/* full buffers' worth of bytes after which the kernel ends a multishot receive (where it
 * can); a peer that trickles small writes makes it take more buffers than this, each part full */
#define TP_RECV_MSHOT_BUFS 8

static inline void tp_inq_init(struct tp_inq *q)
{
    q->e = q->inl;
    q->cap = TP_INQ_INLINE;
    q->head = q->n = 0;
    q->bytes = 0;
}

static inline struct tp_rbuf *tp_inq_front(struct tp_inq *q)
{
    return q->n ? &q->e[q->head] : NULL;
}

static inline struct tp_bref tp_rbuf_ref(const struct tp_rbuf *e)
{
    struct tp_bref r = {.blk = e->blk, .bid = e->bid};
    return r;
}

/** Appends a received buffer; false when memory for the queue ran out. */
bool tp_inq_push(struct tp_inq *q, uint16_t bid, uint32_t len);
/** Appends the <b->len> bytes of a block, taking over the caller's reference on it. */
bool tp_inq_push_block(struct tp_inq *q, struct tp_block *b);
/** Drops every queued buffer. */
void tp_inq_clear(struct tp_shard *sh, struct tp_inq *q);
/** Consumes <n> bytes from the front, releasing emptied buffers. */
void tp_inq_consume(struct tp_shard *sh, struct tp_inq *q, uint32_t n);
/**
 * Copies the unconsumed bytes of every provided buffer queued behind the front
 * entry into a heap block and drops the queue's reference on that buffer, so a
 * connection that cannot make progress stops pinning the shard's receive pool.
 * The front entry stays as it is (a session may be parsing it). Order and
 * bytes are unchanged. Stops at the first block that cannot be allocated.
 * Returns the number of entries moved. [shard]
 */
unsigned tp_inq_unpin(struct tp_shard *sh, struct tp_inq *q);

/** Takes / drops one reference on the buffer of <r>. */
void tp_bref_get(struct tp_shard *sh, struct tp_bref r);
void tp_bref_put(struct tp_shard *sh, struct tp_bref r);

/* ---- send queue: one send in flight per socket ---- */

enum tp_seg_kind {
    TP_SEG_STATIC = 0, /* constant data */
    TP_SEG_RBUF,       /* slice of a provided buffer: holds one ref on bid */
    TP_SEG_BLOCK,      /* a block, freed once sent */
    TP_SEG_INLINE,     /* up to 16 bytes stored in the segment */
    TP_SEG_MARK,       /* zero bytes: a request/response boundary marker */
};

struct tp_seg {
    const char *p;
    uint32_t len;
    uint8_t kind;
    uint16_t bid;
    struct tp_block *blk;
    char inl[16];
};

#define TP_OUTQ_SEGS    64
#define TP_COALESCE_MAX 2048 /* [bytes] slices copied into a preceding block */
#define TP_SEND_IOV     32

struct tp_outq {
    struct tp_outq *next_free;
    struct tp_seg seg[TP_OUTQ_SEGS];
    uint16_t head, n;   /* ring of queued segments */
    uint16_t sending;   /* segments covered by the send in flight */
    uint32_t first_off; /* bytes of seg[head] already sent */
    uint64_t bytes;     /* queued, including in flight */
    struct iovec iov[TP_SEND_IOV];
    struct msghdr msg;
};

/* bytes a connection may have queued towards one peer before the other side stops reading */
#define TP_OUTQ_BUDGET (256u * 1024u)

struct tp_outq *tp_outq_get(struct tp_shard *sh);
void tp_outq_put(struct tp_shard *sh, struct tp_outq *q);

bool tp_outq_push(struct tp_shard *sh, struct tp_outq **qp, const struct tp_seg *s);
bool tp_outq_push_static(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len);
bool tp_outq_push_block(struct tp_shard *sh, struct tp_outq **qp, struct tp_block *b);
bool tp_outq_push_rbuf(struct tp_shard *sh, struct tp_outq **qp, uint16_t bid, const char *p, uint32_t len);
/** Queues <len> received bytes at <p> inside the buffer of <r>, without a copy (one reference taken). */
bool tp_outq_push_slice(struct tp_shard *sh, struct tp_outq **qp, struct tp_bref r, const char *p,
                        uint32_t len);
bool tp_outq_push_inline(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len);
static inline bool tp_outq_full(const struct tp_outq *q, unsigned need)
{
    return q && q->n + need > TP_OUTQ_SEGS;
}
/** Fills q->msg/iov with queued segments; returns bytes, 0 when empty. */
uint32_t tp_outq_prepare(struct tp_outq *q);
/** Consumes <n> sent bytes of the segments in flight; returns true when the queue is empty. */
bool tp_outq_sent(struct tp_shard *sh, struct tp_outq *q, uint32_t n);
/** Takes back the last queued segment unless it is part of the send in flight. */
bool tp_outq_drop_last(struct tp_shard *sh, struct tp_outq *q);
/** Releases every segment and the queue itself. */
void tp_outq_clear(struct tp_shard *sh, struct tp_outq **qp);
