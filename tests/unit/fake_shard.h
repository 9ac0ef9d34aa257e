/* SPDX-License-Identifier: MIT */
/*
 * A hand-built struct tp_shard for the HTTP unit tests: a provided-buffer
 * pool (memory, refcounts, the parked stack, and a buffer ring in plain
 * memory, not registered with any io_uring), a seeded random generator and
 * empty free lists. This is enough for tp_buf_release (it parks the buffer
 * on the stack), the inq/outq
 * helpers, tp_block_get/put and tp_h1_random_hex. No ring is set up: nothing
 * here may submit I/O. Single-threaded.
 */
#pragma once

#include <stdlib.h>
#include <string.h>

#include "rt/reactor.h"

/* Creates a shard with <count> (power of two) buffers of <size> bytes. */
static inline struct tp_shard *fake_shard_create(uint32_t count, uint32_t size)
{
    struct tp_shard *sh = calloc(1, sizeof(*sh));
    void *br = NULL;

    if (!sh)
        abort();
    sh->bufs.count = count;
    sh->bufs.size = size;
    sh->bufs.mem = malloc((size_t)count * size);
    sh->bufs.refs = calloc(count, sizeof(*sh->bufs.refs));
    sh->bufs.stk = calloc(count, sizeof(*sh->bufs.stk));
    sh->bufs.flags = calloc(count, 1);
    if (posix_memalign(&br, 4096, sizeof(struct io_uring_buf) * count) || !sh->bufs.mem || !sh->bufs.refs ||
        !sh->bufs.stk || !sh->bufs.flags)
        abort();
    memset(br, 0, sizeof(struct io_uring_buf) * count);
    sh->bufs.br = br;
    io_uring_buf_ring_init(sh->bufs.br);
    sh->rng[0] = 0x9e3779b97f4a7c15ull;
    sh->rng[1] = 0xd1b54a32d192ed03ull;
    return sh;
}

static inline void fake_shard_destroy(struct tp_shard *sh)
{
    while (sh->blk_free) {
        struct tp_block *b = sh->blk_free;
        sh->blk_free = b->next;
        free(b);
    }
    while (sh->outq_free) {
        struct tp_outq *q = sh->outq_free;
        sh->outq_free = q->next_free;
        free(q);
    }
    free(sh->bufs.br);
    free(sh->bufs.mem);
    free(sh->bufs.refs);
    free(sh->bufs.stk);
    free(sh->bufs.flags);
    free(sh);
}

/* What a recv completion does: <bid> now holds <len> bytes of <data> and its
 * receiver holds the one reference (as cqe_buffer in src/rt/shard.c). */
static inline void fake_recv(struct tp_shard *sh, uint16_t bid, const void *data, uint32_t len)
{
    if (sh->bufs.refs[bid] != 0 || len > sh->bufs.size)
        abort(); /* a test bug: the buffer is in use */
    memcpy(tp_buf_ptr(sh, bid), data, len);
    /* the kernel takes it from the ring: a parked buffer leaves the stack */
    for (uint32_t i = sh->bufs.sp; i-- > 0;)
        if (sh->bufs.stk[i] == bid) {
            memmove(&sh->bufs.stk[i], &sh->bufs.stk[i + 1], (sh->bufs.sp - i - 1) * sizeof(*sh->bufs.stk));
            sh->bufs.sp--;
            break;
        }
    sh->bufs.held++;
    sh->bufs.refs[bid] = 1;
}

/* Receives <len> bytes into <bid> and queues them on <q>. */
static inline bool fake_recv_push(struct tp_shard *sh, struct tp_inq *q, uint16_t bid, const void *data,
                                  uint32_t len)
{
    fake_recv(sh, bid, data, len);
    return tp_inq_push(q, bid, len);
}

/* Sum of every buffer's references. */
static inline unsigned long fake_refs_total(const struct tp_shard *sh)
{
    unsigned long n = 0;
    for (uint32_t i = 0; i < sh->bufs.count; i++)
        n += sh->bufs.refs[i];
    return n;
}

/* Buffers with at least one reference: must always equal bufs.held. */
static inline uint32_t fake_bufs_in_use(const struct tp_shard *sh)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < sh->bufs.count; i++)
        n += sh->bufs.refs[i] != 0;
    return n;
}

/* True when the <k>-th most recent return (k = 1: the last) parked <bid>;
 * tp_buf_release pushes onto the parked stack and the test never flushes. */
static inline bool fake_returned_is(const struct tp_shard *sh, uint32_t k, uint16_t bid)
{
    return sh->bufs.sp >= k && sh->bufs.stk[sh->bufs.sp - k] == bid;
}
