/* SPDX-License-Identifier: MIT */
/*
 * The reactor: a shard is one pinned thread with its own io_uring,
 * provided-buffer ring, timer wheel, SO_REUSEPORT listeners, slabs and free
 * lists (docs/internals.md "Layers", "A shard's loop"). It runs what modules
 * registered: an op -> handler table for completions, shard hooks, an
 * acceptor; it knows no protocol. Everything here runs on the shard's
 * thread, except registration (process start), tp_shard_create/post/destroy
 * (control thread).
 *
 * The loop, one iteration:
 *   1. adopt the published snapshot if it changed (RCU read, one reference);
 *   2. go RCU-offline, submit queued SQEs and wait for at least one CQE or
 *      the next timer (one io_uring_submit_and_wait_timeout), come online;
 *   3. dispatch every ready CQE by the op in its user_data: the reactor's own
 *      (accept, wake-up), the rest through the table (slot + generation find
 *      the object; a stale generation only returns its buffer);
 *   4. fire expired timers;
 *   5. end-of-iteration hooks (starved receives, access log, pools of a
 *      drained shard), then publish returned buffers to the kernel;
 *   6. announce a quiescent state.
 *
 * Buffers: one buffer group of <count> buffers of <size> bytes. A buffer is
 * "held" from the CQE that delivered it until tp_buf_release drops its last
 * reference (receive queue entry, send segment, parsed head); it is then
 * parked, and the end of the iteration puts parked buffers back into the
 * kernel's ring up to a window that follows the load (struct tp_bufs).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#define _LGPL_SOURCE
#include <urcu-qsbr.h>

#include <turnpike/clock.h>
#include <turnpike/log.h>

#include "rt/reactor.h"
#include "rt/runtime.h"

__thread struct tp_shard *tp_self;

/* Under ASan a freed slab object is poisoned past its slot header (which
 * lookups of late completions still read), so a use after free of a
 * connection is reported like one of malloc'd memory. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define SLAB_POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define SLAB_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SLAB_POISON(p, n)   ((void)(p), (void)(n))
#define SLAB_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SQ_ENTRIES 1024
#define CQ_ENTRIES 65536
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define ON_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#else
#define ON_VALGRIND() false
#endif
static bool on_valgrind; /* set by tp_shard_create, before any shard thread starts */

#define BUF_SIZE          16384
#define BUF_COUNT         4096
#define CHUNK_SHIFT       10 /* connections per slab chunk: 1024 */
#define CHUNK_SIZE        (1u << CHUNK_SHIFT)
#define FREE_CAP          4096 /* objects kept on each free list */
#define ACCEPT_BACKOFF_MS 100  /* [ms] accepts rest after EMFILE/ENFILE */

struct tp_shard_ext {
    pthread_t thread;
    bool hooked[TP_SHARD_EXT]; /* create hooks that succeeded (destroy runs for these) */
    pthread_mutex_t mbox_lock;
    struct tp_lis_msg mbox[TP_LIS_MSGS];
    unsigned n_mbox;
    struct tp_lis_msg init_lis[TP_MAX_LISTENERS];
    unsigned n_init_lis;
};

/* ------------------------------------------------------------------ */
/* SQEs, random numbers, free lists                                    */
/* ------------------------------------------------------------------ */

struct io_uring_sqe *tp_sqe(struct tp_shard *sh)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&sh->ring);

    if (TP_UNLIKELY(!sqe)) {
        /* SQ full: hand what is queued to the kernel, then retry */
        io_uring_submit(&sh->ring);
        sqe = io_uring_get_sqe(&sh->ring);
        TP_BUG_ON(!sqe);
    }
    sh->sqes_pending = true;
    tp_stat_add(&sh->ring_sqes, 1);
    return sqe;
}

void tp_close_fd(struct tp_shard *sh, int fd)
{
#ifdef TP_TSAN
    /* ThreadSanitizer does not see io_uring's close (see finish() in src/transport/transport.c) */
    (void)sh;
    close(fd);
#else
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_close(sqe, fd);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_NONE, 0, 0));
#endif
}

void tp_shard_conn_closed(struct tp_shard *sh, unsigned listener)
{
    struct tp_shard_listener *l = &sh->lis[listener];

    l->conns--;
    tp_stat_add(&l->stats->shard[sh->id].active, (uint64_t)-1);
    atomic_fetch_sub_explicit(&tp_rt.conns_open, 1, memory_order_relaxed);
}

uint64_t tp_rand64(struct tp_shard *sh)
{
    /* xorshift128+: fast, good enough for ids and balancing, seeded from getrandom */
    uint64_t s1 = sh->rng[0];
    const uint64_t s0 = sh->rng[1];
    sh->rng[0] = s0;
    s1 ^= s1 << 23;
    sh->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return sh->rng[1] + s0;
}

struct tp_block *tp_block_get(struct tp_shard *sh, size_t need)
{
    struct tp_block *b;

    if (need <= TP_BLOCK_SIZE && sh->blk_free) {
        b = sh->blk_free;
        sh->blk_free = b->next;
        sh->n_blk_free--;
    } else {
        size_t size = need <= TP_BLOCK_SIZE ? TP_BLOCK_SIZE : need;
        b = malloc(sizeof(*b) + size);
        if (!b)
            return NULL;
        b->size = (uint32_t)size;
    }
    b->next = NULL;
    b->len = 0;
    b->refs = 1;
    return b;
}

void tp_block_put(struct tp_shard *sh, struct tp_block *b)
{
    if (--b->refs)
        return;
    if (b->size == TP_BLOCK_SIZE && sh->n_blk_free < FREE_CAP) {
        b->next = sh->blk_free;
        sh->blk_free = b;
        sh->n_blk_free++;
    } else {
        free(b);
    }
}

struct tp_outq *tp_outq_get(struct tp_shard *sh)
{
    struct tp_outq *q = sh->outq_free;

    if (q) {
        sh->outq_free = q->next_free;
        sh->n_outq_free--;
    } else {
        q = malloc(sizeof(*q));
        if (!q)
            return NULL;
    }
    q->head = q->n = q->sending = 0;
    q->first_off = 0;
    q->bytes = 0;
    return q;
}

void tp_outq_put(struct tp_shard *sh, struct tp_outq *q)
{
    if (sh->n_outq_free < FREE_CAP) {
        q->next_free = sh->outq_free;
        sh->outq_free = q;
        sh->n_outq_free++;
    } else {
        free(q);
    }
}

/* ------------------------------------------------------------------ */
/* connection slabs                                                    */
/* ------------------------------------------------------------------ */

static inline struct tp_slot *slab_obj(struct tp_slab *sl, uint32_t i)
{
    return (struct tp_slot *)((char *)sl->chunks[i >> CHUNK_SHIFT] +
                              (size_t)(i & (CHUNK_SIZE - 1)) * sl->objsize);
}

struct tp_slot *tp_slab_at(struct tp_shard *sh, unsigned id, uint32_t i)
{
    struct tp_slab *sl = &sh->slabs[id];
    return i < sl->used ? slab_obj(sl, i) : NULL;
}

void *tp_slab_lookup(struct tp_shard *sh, uint32_t slot, uint32_t gen)
{
    unsigned id = slot >> TP_SLAB_SHIFT;
    uint32_t i = slot & ((1u << TP_SLAB_SHIFT) - 1);

    if (TP_UNLIKELY(id >= TP_SLABS || i >= sh->slabs[id].used))
        return NULL;
    struct tp_slot *o = slab_obj(&sh->slabs[id], i);
    return o->gen == gen && !o->in_free ? o : NULL;
}

/* Grows a slab by one chunk. Objects are never moved, so pointers stay valid. */
static bool slab_grow(struct tp_slab *sl)
{
    if (sl->used < sl->cap)
        return true;
    uint32_t nchunks = sl->cap >> CHUNK_SHIFT;
    if (sl->cap + CHUNK_SIZE > (1u << TP_SLAB_SHIFT))
        return false;
    void **n = realloc(sl->chunks, sizeof(void *) * (nchunks + 1));
    if (!n)
        return false;
    sl->chunks = n;
    n[nchunks] = calloc(CHUNK_SIZE, sl->objsize);
    if (!n[nchunks])
        return false;
    sl->cap += CHUNK_SIZE;
    return true;
}

void *tp_slab_alloc(struct tp_shard *sh, unsigned id)
{
    struct tp_slab *sl = &sh->slabs[id];
    struct tp_slot *o = sl->free;

    TP_BUG_ON(id >= TP_SLABS || sl->objsize == 0);
    if (o) {
        sl->free = o->next_free;
    } else {
        if (!slab_grow(sl))
            return NULL;
        uint32_t i = sl->used++;
        o = slab_obj(sl, i);
        o->slot = ((uint32_t)id << TP_SLAB_SHIFT) | i;
        o->gen = 0;
    }
    uint32_t slot = o->slot, gen = (o->gen + 1) & 0xffffff;
    SLAB_UNPOISON(o, sl->objsize);
    memset(o, 0, sl->objsize);
    o->slot = slot;
    o->gen = gen;
    sl->live++;
    return o;
}

void tp_slab_free(struct tp_shard *sh, void *obj)
{
    struct tp_slot *o = obj;
    struct tp_slab *sl = &sh->slabs[o->slot >> TP_SLAB_SHIFT];

    TP_BUG_ON(o->in_free);
    o->in_free = true;
    o->gen = (o->gen + 1) & 0xffffff; /* stale CQEs no longer match */
    o->next_free = sl->free;
    sl->free = o;
    sl->live--;
    SLAB_POISON((char *)o + sizeof(*o), sl->objsize - sizeof(*o));
}

/* ------------------------------------------------------------------ */
/* registration: ops, slabs, hooks (process start, before any shard)  */
/* ------------------------------------------------------------------ */

static tp_op_fn op_table[TP_OP_MAX];
static unsigned n_ops = TP_OP_FIRST_FREE;
static size_t slab_sizes[TP_SLABS];
static unsigned n_slabs;
static const struct tp_shard_hooks *hooks[TP_SHARD_EXT];
static unsigned n_hooks;
static tp_accept_fn acceptor;

int tp_reactor_op_register(tp_op_fn fn)
{
    if (n_ops == TP_OP_MAX)
        return -1;
    op_table[n_ops] = fn;
    return (int)n_ops++;
}

int tp_reactor_slab_register(size_t objsize)
{
    if (n_slabs == TP_SLABS || objsize < sizeof(struct tp_slot))
        return -1;
    slab_sizes[n_slabs] = objsize;
    return (int)n_slabs++;
}

int tp_shard_hooks_register(const struct tp_shard_hooks *h)
{
    if (n_hooks == TP_SHARD_EXT)
        return -1;
    hooks[n_hooks] = h;
    return (int)n_hooks++;
}

void tp_shard_set_acceptor(tp_accept_fn fn)
{
    acceptor = fn;
}

#define EACH_HOOK(fn, ...)                                                                                   \
    do {                                                                                                     \
        for (unsigned h_ = 0; h_ < n_hooks; h_++)                                                            \
            if (hooks[h_]->fn)                                                                               \
                hooks[h_]->fn(__VA_ARGS__);                                                                  \
    } while (0)

/* ------------------------------------------------------------------ */
/* provided buffers                                                    */
/* ------------------------------------------------------------------ */

/* Registers the (empty) ring as group TP_BGID. */
static int bufs_register(struct tp_shard *sh)
{
    struct tp_bufs *b = &sh->bufs;
    struct io_uring_buf_reg reg;

    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)b->br;
    reg.ring_entries = b->count;
    reg.bgid = TP_BGID;
    int ret = io_uring_register_buf_ring(&sh->ring, &reg, 0);
    if (ret)
        return ret;
    io_uring_buf_ring_init(b->br);
    b->avail = 0;
    return 0;
}

/* <count> (a power of two) buffers of <size> bytes; the first window goes into the ring. */
static int bufs_setup(struct tp_shard *sh, uint32_t count, uint32_t size)
{
    struct tp_bufs *b = &sh->bufs;
    size_t ring_bytes = sizeof(struct io_uring_buf) * count;
    int ret;

    b->size = size;
    b->count = count;
    b->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (b->br == MAP_FAILED)
        return -errno;
    /* address space only: pages appear as receives touch them */
    b->mem = mmap(NULL, (size_t)b->size * b->count, PROT_READ | PROT_WRITE,
                  MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE, -1, 0);
    if (b->mem == MAP_FAILED)
        return -errno;
    b->refs = calloc(b->count, sizeof(*b->refs));
    b->stk = calloc(b->count, sizeof(*b->stk));
    b->flags = calloc(b->count, 1);
    if (!b->refs || !b->stk || !b->flags)
        return -ENOMEM;
    /* bid 0 on top: the low buffers are used first */
    for (uint32_t i = 0; i < b->count; i++)
        b->stk[i] = (uint16_t)(b->count - 1 - i);
    b->sp = b->low_sp = b->count;
    b->held = 0;
    b->want = TP_BUFS_MIN;
    ret = bufs_register(sh);
    if (ret)
        return ret;
    tp_bufs_flush(sh);
    return 0;
}

/* The single place a buffer goes back: onto the parked stack. */
void tp_buf_release(struct tp_shard *sh, uint16_t bid)
{
    struct tp_bufs *b = &sh->bufs;

    TP_BUG_ON_HOT(b->refs[bid] == 0);
    if (--b->refs[bid])
        return;
    b->stk[b->sp++] = bid;
    b->held--;
}

/* Gives the memory of the buffers parked since before the last trim back to
 * the kernel, and shrinks a window that was far from used. Once a second. */
static void bufs_trim(struct tp_shard *sh)
{
    struct tp_bufs *b = &sh->bufs;

    if (b->peak * 4 < b->want && b->want > TP_BUFS_MIN) {
        b->want /= 2;
        /* The ring may hold far more than the window now (after a burst):
         * take it back whole, by registering the group anew, and let the
         * next flush put a window in. Armed receives look the group up
         * when data arrives, so they take from the new ring; nothing can
         * take from the ring between the two calls (no io_uring_enter).
         * Not while completions wait in the CQ: a receive completed inline
         * by a submit from inside this iteration (SQ full) holds a buffer
         * of the old ring whose CQE is not seen yet. */
        if (b->avail > 2 * b->want && io_uring_cq_ready(&sh->ring) == 0 &&
            io_uring_unregister_buf_ring(&sh->ring, TP_BGID) == 0) {
            /* ring buffers go under the parked ones: they are the coldest */
            uint32_t n = 0;
            for (uint32_t i = 0; i < b->count; i++)
                if (b->flags[i] & TP_BUF_INRING)
                    n++;
            memmove(b->stk + n, b->stk, b->sp * sizeof(*b->stk));
            n = 0;
            for (uint32_t i = 0; i < b->count; i++)
                if (b->flags[i] & TP_BUF_INRING) {
                    b->flags[i] &= (uint8_t)~TP_BUF_INRING;
                    b->stk[n++] = (uint16_t)i;
                }
            b->sp += n;
            b->low_sp = 0;
            if (bufs_register(sh)) {
                tp_err("shard %u: cannot register the buffer ring again; exiting", sh->id);
                abort();
            }
        }
    }
    for (uint32_t k = 0; k < b->low_sp; k++) {
        uint16_t bid = b->stk[k];
        if (b->flags[bid] & TP_BUF_DIRTY) {
            madvise(tp_buf_ptr(sh, bid), b->size, MADV_DONTNEED);
            b->flags[bid] &= (uint8_t)~TP_BUF_DIRTY;
            b->dirty_n--;
        }
    }
    b->low_sp = b->sp;
    b->peak = 0;
    tp_stat_set(&sh->bufs_window, b->want);
    tp_stat_set(&sh->bufs_dirty, b->dirty_n);
}

/* End of an iteration: adapt the window, top the ring up to it from the
 * top of the parked stack, publish with one release store. */
void tp_bufs_flush(struct tp_shard *sh)
{
    struct tp_bufs *b = &sh->bufs;
    uint64_t enobufs = tp_stat_get(&sh->enobufs);
    uint32_t n = 0, mask = io_uring_buf_ring_mask(b->count);

    if ((b->taken * 2 > b->want || enobufs != b->enobufs0) && b->want < b->count)
        b->want *= 2;
    b->enobufs0 = enobufs;
    if (b->taken > b->peak)
        b->peak = b->taken;
    b->taken = 0;
    while (b->avail + n < b->want && b->sp) {
        uint16_t bid = b->stk[--b->sp];
        b->flags[bid] |= TP_BUF_INRING;
        io_uring_buf_ring_add(b->br, tp_buf_ptr(sh, bid), b->size, bid, mask, (int)n);
        n++;
    }
    if (b->sp < b->low_sp)
        b->low_sp = b->sp;
    if (n) {
        io_uring_buf_ring_advance(b->br, (int)n);
        b->avail += n;
    }
    if (TP_UNLIKELY(sh->now_ms >= b->trim_ms)) {
        b->trim_ms = sh->now_ms + 1000;
        bufs_trim(sh);
    }
}

/* Takes ownership of the buffer a CQE carries: the receiver holds one reference. */
static inline int cqe_buffer(struct tp_shard *sh, const struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_BUFFER))
        return -1;
    struct tp_bufs *b = &sh->bufs;
    uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    b->held++;
    b->refs[bid] = 1;
    if (b->flags[bid] & TP_BUF_INRING)
        b->avail--;
    b->taken++;
    if (!(b->flags[bid] & TP_BUF_DIRTY))
        b->dirty_n++;
    b->flags[bid] = TP_BUF_DIRTY; /* and no longer in the ring */
    return bid;
}

/* ------------------------------------------------------------------ */
/* listeners and accept                                                */
/* ------------------------------------------------------------------ */

static void accept_arm(struct tp_shard *sh, unsigned idx)
{
    struct tp_accept_slot *as = &sh->acc[idx];
    struct tp_shard_listener *l = &sh->lis[as->listener];
    struct io_uring_sqe *sqe;

    if (as->armed || l->fd < 0 || l->closing || sh->draining)
        return;
    as->addrlen = sizeof(as->addr);
    sqe = tp_sqe(sh);
    /* Single-shot accepts, several armed per listener: a multishot accept
     * overwrites one address buffer per connection, and X-Forwarded-For needs
     * each client's address. */
    io_uring_prep_accept(sqe, l->fd, (struct sockaddr *)&as->addr, &as->addrlen, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_ACCEPT, idx, 0));
    as->armed = true;
}

static unsigned listener_add(struct tp_shard *sh, const struct tp_lis_msg *m)
{
    unsigned i;

    for (i = 0; i < sh->n_lis; i++)
        if (sh->lis[i].fd < 0 && !sh->lis[i].closing && sh->lis[i].conns == 0)
            break;
    if (i == sh->n_lis) {
        if (sh->n_lis == TP_MAX_LISTENERS) {
            tp_err("too many listeners");
            close(m->fd);
            return (unsigned)-1;
        }
        sh->n_lis++;
    }
    struct tp_shard_listener *l = &sh->lis[i];
    memset(l, 0, sizeof(*l));
    l->fd = m->fd;
    snprintf(l->name, sizeof(l->name), "%s", m->name);
    l->addr = m->addr;
    l->stats = m->stats;
    for (unsigned k = 0; k < TP_ACCEPTS_PER_LISTENER; k++) {
        unsigned idx = i * TP_ACCEPTS_PER_LISTENER + k;
        sh->acc[idx].listener = (uint8_t)i;
        sh->acc[idx].armed = false;
        accept_arm(sh, idx);
    }
    return i;
}

/* Stops accepting on listener <i>: cancel its accepts, close its socket when they are gone. */
static void listener_close(struct tp_shard *sh, unsigned i)
{
    struct tp_shard_listener *l = &sh->lis[i];
    struct io_uring_sqe *sqe;

    if (l->fd < 0 || l->closing)
        return;
    l->closing = true;
    sqe = tp_sqe(sh);
    io_uring_prep_cancel_fd(sqe, l->fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_NONE, 0, 0));
    for (unsigned k = 0; k < TP_ACCEPTS_PER_LISTENER; k++)
        if (sh->acc[i * TP_ACCEPTS_PER_LISTENER + k].armed)
            return; /* closed when the last accept completes */
    tp_close_fd(sh, l->fd);
    l->fd = -1;
    l->closing = false;
}

/* The accept backoff ended: every accept slot that is not armed is again. */
static void accept_on_timer(struct tp_timer *t, uint64_t now_ms)
{
    struct tp_shard *sh = tp_self;

    (void)t;
    (void)now_ms;
    sh->accept_paused = false;
    for (unsigned i = 0; i < sh->n_lis * TP_ACCEPTS_PER_LISTENER; i++)
        accept_arm(sh, i);
}

static void on_accept(struct tp_shard *sh, uint32_t idx, int res)
{
    struct tp_accept_slot *as = &sh->acc[idx];
    struct tp_shard_listener *l = &sh->lis[as->listener];

    as->armed = false;
    if (res >= 0) {
        int64_t open = atomic_fetch_add_explicit(&tp_rt.conns_open, 1, memory_order_relaxed) + 1;
        uint64_t max = atomic_load_explicit(&tp_rt.max_conns, memory_order_relaxed);
        uint64_t fd_max = atomic_load_explicit(&tp_rt.fd_conns_max, memory_order_relaxed);
        tp_stat_add(&l->stats->shard[sh->id].accepted, 1);
        if (l->closing || sh->draining || (uint64_t)open > (max < fd_max ? max : fd_max)) {
            /* over max_connections or the open-files limit (or shutting
             * down): closed at once, unread */
            atomic_fetch_sub_explicit(&tp_rt.conns_open, 1, memory_order_relaxed);
            tp_stat_add(&sh->rejected_conns, 1);
            tp_close_fd(sh, res);
        } else {
            l->conns++;
            tp_stat_add(&l->stats->shard[sh->id].active, 1);
            acceptor(sh, res, as->listener, &as->addr);
        }
    } else if (res == -EINVAL) {
        /* the socket stopped listening: the control thread shut it down
         * (drain, listener removed); its message follows */
        listener_close(sh, as->listener);
    } else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
        /* Out of descriptors or memory: retrying at once would spin for as
         * long as the shortage lasts. This slot rests; all resting slots are
         * armed again after ACCEPT_BACKOFF_MS, and the pending connections
         * wait in the listen backlog meanwhile. */
        TP_LOG_RL(TP_LOG_ERR, "accept on %s: %s; pausing accepts for %d ms", l->addr.text, strerror(-res),
                  ACCEPT_BACKOFF_MS);
        tp_stat_add(&sh->accept_paused_n, 1);
        if (!sh->accept_paused) {
            sh->accept_paused = true;
            tp_timer_arm(&sh->wheel, &sh->accept_timer, sh->now_ms + ACCEPT_BACKOFF_MS);
        }
    } else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN && res != -ECONNABORTED) {
        TP_LOG_RL(TP_LOG_ERR, "accept on %s: %s", l->addr.text, strerror(-res));
    }
    if (l->closing) {
        for (unsigned k = 0; k < TP_ACCEPTS_PER_LISTENER; k++)
            if (sh->acc[as->listener * TP_ACCEPTS_PER_LISTENER + k].armed)
                return;
        tp_close_fd(sh, l->fd);
        l->fd = -1;
        l->closing = false;
        return;
    }
    if (!sh->accept_paused)
        accept_arm(sh, idx);
}

/* ------------------------------------------------------------------ */
/* snapshots                                                           */
/* ------------------------------------------------------------------ */

static inline uint32_t *inflight_of(struct tp_snapshot *s, unsigned shard)
{
    return &s->shard_inflight[shard * 16];
}

/* Adopts the published snapshot when it changed; the old one is kept while
 * requests of this shard still run on it. */
static void snapshot_adopt(struct tp_shard *sh)
{
    struct tp_snapshot *cur = rcu_dereference(tp_snapshot_current);

    if (cur == sh->snap)
        return;
    TP_HB_ACQUIRE(cur);
    tp_snapshot_get(cur);
    struct tp_snapshot *old = sh->snap;
    sh->snap = cur;
    atomic_store_explicit(&tp_rt.max_conns, cur->cfg->max_connections, memory_order_relaxed);
    EACH_HOOK(on_snapshot, sh, old);
    if (!old)
        return;
    if (*inflight_of(old, sh->id) == 0) {
        tp_snapshot_put(old);
    } else {
        if (sh->n_retiring == sh->cap_retiring) {
            unsigned ncap = sh->cap_retiring ? sh->cap_retiring * 2 : 4;
            struct tp_snapshot **n = realloc(sh->retiring, sizeof(*n) * ncap);
            if (!n) {
                /* cannot track it: keep the reference for good rather than free it under a request */
                TP_LOG_RL(TP_LOG_ERR, "shard %u: out of memory tracking an old configuration", sh->id);
                return;
            }
            sh->retiring = n;
            sh->cap_retiring = ncap;
        }
        sh->retiring[sh->n_retiring++] = old;
    }
    tp_shard_post(NULL, 0); /* nudge the control thread to collect */
}

struct tp_snapshot *tp_shard_snapshot_enter(struct tp_shard *sh)
{
    (*inflight_of(sh->snap, sh->id))++;
    return sh->snap;
}

void tp_shard_snapshot_leave(struct tp_shard *sh, struct tp_snapshot *s)
{
    uint32_t *n = inflight_of(s, sh->id);
    if (--*n || s == sh->snap)
        return;
    for (unsigned i = 0; i < sh->n_retiring; i++) {
        if (sh->retiring[i] == s) {
            sh->retiring[i] = sh->retiring[--sh->n_retiring];
            tp_snapshot_put(s);
            tp_shard_post(NULL, 0);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* messages from the control thread                                    */
/* ------------------------------------------------------------------ */

static void wake_arm(struct tp_shard *sh)
{
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_read(sqe, sh->wake_fd, &sh->wake_buf, sizeof(sh->wake_buf), 0);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_WAKE, 0, 0));
}

static void reconcile_listeners(struct tp_shard *sh)
{
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);
    struct tp_lis_msg msgs[TP_LIS_MSGS];
    unsigned n;

    pthread_mutex_lock(&x->mbox_lock);
    n = x->n_mbox;
    memcpy(msgs, x->mbox, sizeof(msgs[0]) * n);
    x->n_mbox = 0;
    pthread_mutex_unlock(&x->mbox_lock);
    for (unsigned i = 0; i < n; i++) {
        if (msgs[i].add) {
            if (sh->draining)
                close(msgs[i].fd);
            else
                listener_add(sh, &msgs[i]);
            continue;
        }
        for (unsigned k = 0; k < sh->n_lis; k++) {
            /* by name: the socket may already be closed (the control thread
             * shut it down, and the accepts ended on that) */
            if (strcmp(sh->lis[k].name, msgs[i].name) != 0 || (sh->lis[k].fd < 0 && !sh->lis[k].conns))
                continue;
            listener_close(sh, k);
            /* its connections finish their current request, then close */
            EACH_HOOK(on_listener_closed, sh, k);
        }
    }
}

static void on_wake(struct tp_shard *sh)
{
    unsigned msgs = atomic_exchange_explicit(&sh->msgs, 0, memory_order_acq_rel);

    if (msgs & TP_MSG_RELOAD)
        reconcile_listeners(sh);
    EACH_HOOK(on_msgs, sh, msgs);
    if ((msgs & TP_MSG_DRAIN) && !sh->draining) {
        sh->draining = true;
        for (unsigned i = 0; i < sh->n_lis; i++)
            listener_close(sh, i);
        EACH_HOOK(drain, sh, false);
    }
    if (msgs & TP_MSG_STOP) {
        sh->draining = true;
        for (unsigned i = 0; i < sh->n_lis; i++)
            listener_close(sh, i);
        EACH_HOOK(drain, sh, true);
    }
    if (!sh->stop)
        wake_arm(sh);
}

void tp_shard_post(struct tp_shard *sh, unsigned msgs)
{
    uint64_t one = 1;
    int fd;

    if (sh) {
        atomic_fetch_or_explicit(&sh->msgs, msgs, memory_order_acq_rel);
        fd = sh->wake_fd;
    } else {
        fd = tp_rt.ctl_wake_fd; /* to the control thread */
    }
    if (fd >= 0 && write(fd, &one, sizeof(one)) == -1 && errno != EAGAIN)
        TP_LOG_RL(TP_LOG_WARN, "eventfd write: %s", strerror(errno));
}

void tp_ctl_wake(void)
{
    static const uint64_t one = 1; /* read by the kernel whenever the write runs */
    struct tp_shard *sh = tp_self;

    if (!sh || sh->stop || tp_rt.ctl_wake_fd < 0) {
        tp_shard_post(NULL, 0);
        return;
    }
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_write(sqe, tp_rt.ctl_wake_fd, &one, sizeof(one), 0);
    io_uring_sqe_set_data64(sqe, tp_ud(TP_OP_NONE, 0, 0));
}

bool tp_shard_post_listener(struct tp_shard *sh, const struct tp_lis_msg *m)
{
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);
    bool ok = false;

    pthread_mutex_lock(&x->mbox_lock);
    if (x->n_mbox < TP_LIS_MSGS) {
        x->mbox[x->n_mbox++] = *m;
        ok = true;
    }
    pthread_mutex_unlock(&x->mbox_lock);
    return ok;
}

/* ------------------------------------------------------------------ */
/* completions                                                         */
/* ------------------------------------------------------------------ */

/* Completions go by op: the reactor's own, then the table modules filled. */
static inline void dispatch(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    unsigned op = tp_ud_op(cqe->user_data);

    switch (op) {
    case TP_OP_NONE:
        return;
    case TP_OP_ACCEPT:
        on_accept(sh, tp_ud_slot(cqe->user_data), cqe->res);
        return;
    case TP_OP_WAKE:
        on_wake(sh);
        return;
    default:
        if (TP_LIKELY(op < TP_OP_MAX && op_table[op])) {
            op_table[op](sh, cqe);
            return;
        }
        /* not ours: a buffer it carries still goes back */
        int bid = cqe_buffer(sh, cqe);
        if (bid >= 0)
            tp_buf_release(sh, (uint16_t)bid);
        return;
    }
}

int tp_cqe_buffer(struct tp_shard *sh, const struct io_uring_cqe *cqe)
{
    return cqe_buffer(sh, cqe);
}

/* ------------------------------------------------------------------ */
/* the thread                                                          */
/* ------------------------------------------------------------------ */

static bool shard_busy(struct tp_shard *sh)
{
    for (unsigned i = 0; i < n_hooks; i++)
        if (hooks[i]->busy && hooks[i]->busy(sh))
            return true;
    return false;
}

static int ring_setup(struct tp_shard *sh)
{
    struct io_uring_params p;
    int ret;

    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL |
              IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    p.cq_entries = CQ_ENTRIES;
    ret = io_uring_queue_init_params(SQ_ENTRIES, &sh->ring, &p);
    if (ret < 0)
        return ret;
    if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP))
        return TP_EURING;
    ret = io_uring_register_ring_fd(&sh->ring);
    if (ret < 0)
        tp_warn("shard %u: io_uring_register_ring_fd: %s (continuing)", sh->id, strerror(-ret));
    return 0;
}

int tp_shard_setup(struct tp_shard *sh, uint32_t buf_count, uint32_t buf_size)
{
    int ret = ring_setup(sh);

    if (ret == 0)
        ret = bufs_setup(sh, buf_count, buf_size);
    if (ret)
        return ret;
    sh->now_ns = tp_clock_ns();
    sh->now_ms = sh->now_ns / 1000000;
    tp_wheel_init(&sh->wheel, sh->now_ms);
    tp_timer_init(&sh->accept_timer, accept_on_timer);
    return 0;
}

/* One iteration of the loop (the phases are listed at the top of this file). */
void tp_shard_run_once(struct tp_shard *sh, uint64_t cap_ms)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts;
    unsigned head, n = 0;
    int ret;

    snapshot_adopt(sh);

    if (TP_UNLIKELY(on_valgrind)) {
        /* valgrind 3.19 holds its thread lock across io_uring_enter: let
         * the control thread run, and never wait long (bench/instr.sh) */
        sched_yield();
        cap_ms = cap_ms < 10 ? cap_ms : 10;
    }
    uint64_t wait_ms = tp_wheel_next_ms(&sh->wheel, sh->now_ms, cap_ms);
    ts.tv_sec = (long long)(wait_ms / 1000);
    ts.tv_nsec = (long long)(wait_ms % 1000) * 1000000;
    sh->sqes_pending = false;
    rcu_thread_offline();
    ret = io_uring_submit_and_wait_timeout(&sh->ring, &cqe, 1, &ts, NULL);
    rcu_thread_online();
    if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EBUSY) {
        if (ret == -EBADR) {
            tp_err("shard %u: io_uring lost completions (-EBADR); exiting", sh->id);
            abort();
        }
        TP_LOG_RL(TP_LOG_ERR, "shard %u: io_uring_submit_and_wait_timeout: %s", sh->id, strerror(-ret));
    }
    sh->now_ns = tp_clock_ns();
    sh->now_ms = sh->now_ns / 1000000;

    io_uring_for_each_cqe(&sh->ring, head, cqe)
    {
        dispatch(sh, cqe);
        n++;
    }
    io_uring_cq_advance(&sh->ring, n);
    tp_stat_add(&sh->ring_cqes, n);
    tp_stat_add(&sh->ring_waits, 1);

    tp_wheel_run(&sh->wheel, sh->now_ms);
    EACH_HOOK(tick, sh);
    tp_bufs_flush(sh);
    rcu_quiescent_state();

    if (sh->draining && !shard_busy(sh))
        sh->stop = true;
}

static void *shard_main(void *arg)
{
    struct tp_shard *sh = arg;
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);
    char name[32];
    int ret;

    tp_self = sh;
    snprintf(name, sizeof(name), "shard %u", sh->id);
    tp_log_set_thread(name);
    if (sh->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(sh->cpu, &set);
        ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
        if (ret)
            tp_warn("cannot pin to CPU %d: %s", sh->cpu, strerror(ret));
    }
    snprintf(name, sizeof(name), "tp-shard-%u", sh->id);
    pthread_setname_np(pthread_self(), name);

    /* The ring is created here: SINGLE_ISSUER binds it to this thread. */
    ret = tp_shard_setup(sh, BUF_COUNT, BUF_SIZE);
    if (ret) {
        int expected = 0;
        atomic_compare_exchange_strong(&tp_rt.shard_error, &expected, ret);
        atomic_fetch_add(&tp_rt.shards_ready, 1);
        atomic_fetch_add(&tp_rt.shards_done, 1);
        tp_shard_post(NULL, 0);
        return NULL;
    }

    rcu_register_thread();
    snapshot_adopt(sh);
    EACH_HOOK(start, sh);
    for (unsigned i = 0; i < x->n_init_lis; i++)
        listener_add(sh, &x->init_lis[i]);
    wake_arm(sh);
    atomic_fetch_add(&tp_rt.shards_ready, 1);
    tp_shard_post(NULL, 0);

    while (!sh->stop)
        tp_shard_run_once(sh, 1000);

    /* leave: drop snapshot references, flush the last SQEs (closes) */
    io_uring_submit(&sh->ring);
    for (unsigned i = 0; i < sh->n_retiring; i++)
        tp_snapshot_put(sh->retiring[i]);
    sh->n_retiring = 0;
    free(sh->retiring);
    sh->retiring = NULL;
    if (sh->snap)
        tp_snapshot_put(sh->snap);
    sh->snap = NULL;
    rcu_unregister_thread();
    EACH_HOOK(stop, sh);
    atomic_fetch_add(&tp_rt.shards_done, 1);
    tp_shard_post(NULL, 0);
    return NULL;
}

struct tp_shard *tp_shard_create(unsigned id, int cpu, const struct tp_lis_msg *lis, unsigned n_lis, int *err)
{
    struct tp_shard *sh = calloc(1, sizeof(*sh) + sizeof(struct tp_shard_ext));
    struct tp_shard_ext *x;

    if (!sh) {
        *err = -ENOMEM;
        return NULL;
    }
    x = (struct tp_shard_ext *)(sh + 1);
    on_valgrind = ON_VALGRIND();
    sh->id = id;
    sh->cpu = cpu;
    sh->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (sh->wake_fd == -1) {
        *err = -errno;
        free(sh);
        return NULL;
    }
    if (getrandom(sh->rng, sizeof(sh->rng), 0) != sizeof(sh->rng) || (sh->rng[0] | sh->rng[1]) == 0) {
        sh->rng[0] = tp_clock_ns() ^ ((uint64_t)id << 32) ^ 0x9e3779b97f4a7c15ull;
        sh->rng[1] = (uint64_t)(uintptr_t)sh ^ 0xbf58476d1ce4e5b9ull;
    }
    pthread_mutex_init(&x->mbox_lock, NULL);
    for (unsigned i = 0; i < n_slabs; i++)
        sh->slabs[i].objsize = slab_sizes[i];
    for (unsigned i = 0; i < n_hooks; i++) {
        int ret = hooks[i]->create ? hooks[i]->create(sh, i) : 0;
        if (ret < 0) {
            *err = ret;
            tp_shard_free_unstarted(sh);
            return NULL;
        }
        x->hooked[i] = true;
    }
    for (unsigned i = 0; i < n_lis && i < TP_MAX_LISTENERS; i++)
        x->init_lis[x->n_init_lis++] = lis[i];
    return sh;
}

int tp_shard_start(struct tp_shard *sh)
{
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);
    int ret = pthread_create(&x->thread, NULL, shard_main, sh);
    return ret ? -ret : 0;
}

void tp_shard_destroy(struct tp_shard *sh)
{
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);

    pthread_join(x->thread, NULL);
    tp_shard_free_unstarted(sh);
}

void tp_shard_free_unstarted(struct tp_shard *sh)
{
    struct tp_shard_ext *x = (struct tp_shard_ext *)(sh + 1);

    /* The ring belongs to the joined thread; tearing it down from here is
     * fine once that thread is gone (no further submissions). */
    if (sh->ring.ring_fd > 0)
        io_uring_queue_exit(&sh->ring);
    for (unsigned i = 0; i < x->n_init_lis; i++)
        if (!sh->n_lis && x->init_lis[i].fd >= 0)
            close(x->init_lis[i].fd); /* never handed to the loop */
    for (unsigned i = 0; i < n_hooks; i++)
        if (x->hooked[i] && hooks[i]->destroy)
            hooks[i]->destroy(sh);
    for (unsigned k = 0; k < TP_SLABS; k++) {
        for (uint32_t i = 0; i < (sh->slabs[k].cap >> CHUNK_SHIFT); i++)
            free(sh->slabs[k].chunks[i]);
        free(sh->slabs[k].chunks);
    }
    while (sh->outq_free) {
        struct tp_outq *q = sh->outq_free;
        sh->outq_free = q->next_free;
        free(q);
    }
    while (sh->blk_free) {
        struct tp_block *b = sh->blk_free;
        sh->blk_free = b->next;
        free(b);
    }
    if (sh->bufs.br && sh->bufs.br != MAP_FAILED)
        munmap(sh->bufs.br, sizeof(struct io_uring_buf) * sh->bufs.count);
    if (sh->bufs.mem && sh->bufs.mem != MAP_FAILED)
        munmap(sh->bufs.mem, (size_t)sh->bufs.size * sh->bufs.count);
    free(sh->bufs.refs);
    free(sh->bufs.stk);
    free(sh->bufs.flags);
    for (unsigned i = 0; i < sh->n_lis; i++)
        if (sh->lis[i].fd >= 0)
            close(sh->lis[i].fd);
    close(sh->wake_fd);
    pthread_mutex_destroy(&x->mbox_lock);
    free(sh);
}

int tp_listen_socket(const struct tp_addr *addr, int backlog)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, lowat = (int)atomic_load_explicit(&tp_rt.unsent_max, memory_order_relaxed);

    if (fd == -1)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat)) == -1)
        goto fail;
    if (addr->ss.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) == -1)
        goto fail;
    if (listen(fd, backlog) == -1)
        goto fail;
    return fd;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

/*
 * Does the kernel end a multishot receive at the byte limit of
 * tp_sqe_recv_mshot_limit()? Three bytes wait on a socket pair, the receive
 * may take one, buffers hold two: a kernel that knows the limit posts 2 bytes
 * and ends the receive; one that does not fails it (-EINVAL) or posts 2 bytes
 * and stays armed (IORING_CQE_F_MORE).
 */
static bool probe_recv_mshot_limit(struct io_uring *ring)
{
    enum { PROBE_BGID = 1, PROBE_BUFS = 2, PROBE_BUF = 2 };
    static char bufs[PROBE_BUFS][PROBE_BUF];
    struct io_uring_buf_ring *br = NULL;
    struct io_uring_buf_reg reg;
    struct __kernel_timespec ts = {.tv_sec = 1};
    struct io_uring_cqe *cqe;
    bool ok = false;
    int sv[2];

    if (posix_memalign((void **)&br, 4096, 4096) != 0)
        return false;
    memset(br, 0, 4096);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uintptr_t)br;
    reg.ring_entries = PROBE_BUFS;
    reg.bgid = PROBE_BGID;
    if (io_uring_register_buf_ring(ring, &reg, 0) != 0) {
        free(br);
        return false;
    }
    io_uring_buf_ring_init(br);
    for (int i = 0; i < PROBE_BUFS; i++)
        io_uring_buf_ring_add(br, bufs[i], PROBE_BUF, (unsigned short)i, PROBE_BUFS - 1, i);
    io_uring_buf_ring_advance(br, PROBE_BUFS);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        goto out;
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe && write(sv[1], "abc", 3) == 3) {
        memset(sqe, 0, sizeof(*sqe));
        io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
        tp_sqe_recv_mshot_limit(sqe, 1);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = PROBE_BGID;
        io_uring_sqe_set_data64(sqe, 1);
        if (io_uring_submit(ring) == 1 && io_uring_wait_cqe_timeout(ring, &cqe, &ts) == 0) {
            /* 2 bytes today (the buffer that crosses the limit is filled); a kernel that
             * cut the last read at the limit would post 1: both end the receive */
            ok = cqe->user_data == 1 && cqe->res >= 1 && cqe->res <= PROBE_BUF &&
                 !(cqe->flags & IORING_CQE_F_MORE);
            io_uring_cqe_seen(ring, cqe);
        }
    }
    close(sv[0]);
    close(sv[1]);
out:
    io_uring_unregister_buf_ring(ring, PROBE_BGID);
    free(br);
    return ok;
}

int tp_uring_probe(void)
{
    struct io_uring ring;
    struct io_uring_params p;
    int ret;

    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    ret = io_uring_queue_init_params(8, &ring, &p);
    if (ret < 0)
        return ret;
    /* the ring goes away with whatever the probe left armed */
    tp_rt.recv_mshot_limit = probe_recv_mshot_limit(&ring);
    io_uring_queue_exit(&ring);
    return 0;
}
