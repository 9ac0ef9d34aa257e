/* SPDX-License-Identifier: MIT */
/*
 * The reactor: one shard's ring, provided buffers, blocks and free lists,
 * slabs of slot+generation objects, timer wheel, listeners and accepts, and
 * the table that maps the op of a completion to the handler a module
 * registered for it. It knows nothing of HTTP: the transport registers its
 * socket ops, the access log its write op, the HTTP layer an acceptor and a
 * set of shard hooks (start, messages, end of iteration, drain, snapshot
 * change), all before the shards start.
 *
 * Everything in struct tp_shard is owned by the shard's thread [shard],
 * except what tp_shard_create/post/destroy touch from the control thread.
 */
#pragma once

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <turnpike/config.h>
#include <turnpike/err.h>
#include <turnpike/timer.h>

#include "rt/queue.h"
#include "rt/snapshot.h"
#include "rt/uring_compat.h"

/* ---- user_data: op (8 bits) | generation (24 bits) | slot (32 bits) ---- */

/** Ops the reactor handles itself; modules register theirs above TP_OP_FIRST_FREE. */
enum tp_op {
    TP_OP_NONE = 0, /* fire and forget: the completion is ignored */
    TP_OP_ACCEPT,   /* slot = accept slot index */
    TP_OP_WAKE,     /* eventfd read: the control thread has news */
    TP_OP_FIRST_FREE,
};

#define TP_OP_MAX 64

static inline uint64_t tp_ud(unsigned op, uint32_t slot, uint32_t gen)
{
    return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffff) << 32) | slot;
}
static inline unsigned tp_ud_op(uint64_t ud)
{
    return (unsigned)(ud >> 56);
}
static inline uint32_t tp_ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0xffffff;
}
static inline uint32_t tp_ud_slot(uint64_t ud)
{
    return (uint32_t)ud;
}

struct tp_shard;
struct io_uring_cqe;

/** Handles one completion of a registered op. [shard] */
typedef void (*tp_op_fn)(struct tp_shard *sh, struct io_uring_cqe *cqe);

/**
 * Registers <fn> for a new op and returns the op number (for tp_ud), or -1
 * when the table is full. Process start only, before any shard runs. [control]
 */
int tp_reactor_op_register(tp_op_fn fn);

/* ---- provided buffers ---- */

#define TP_BGID 0

/**
 * The shard's provided buffers: recv data lands here, bodies are sent from
 * here. <count> buffers exist (address space reserved), but only a window of
 * them is in the kernel's ring at a time: a returned buffer goes onto a LIFO
 * stack of parked buffers, and the end of each iteration tops the ring up to
 * <want> from the top of that stack (the buffers used last, still warm).
 * <want> doubles when an iteration takes more than half of it or a receive
 * finds the ring empty, and halves after a quiet second; parked buffers not
 * used for a second are given back to the kernel (MADV_DONTNEED). So memory
 * follows the load (docs/internals.md, "Memory").
 */
struct tp_bufs {
    struct io_uring_buf_ring *br;
    uint8_t *mem;      /* count * size bytes */
    uint32_t size;     /* [bytes] per buffer */
    uint32_t count;    /* power of two */
    uint32_t held;     /* buffers taken by recvs and not yet returned */
    uint16_t *refs;    /* [count] holders of each buffer */
    uint16_t *stk;     /* [count] parked buffers (neither in the ring nor held), last returned on top */
    uint32_t sp;       /* parked buffers: stk[0 .. sp) */
    uint32_t avail;    /* buffers in the kernel's ring */
    uint32_t want;     /* window: the ring is topped up to this many at the end of an iteration */
    uint32_t taken;    /* taken from the ring in this iteration */
    uint32_t peak;     /* most taken in one iteration since the last trim */
    uint32_t low_sp;   /* lowest sp since the last trim: stk[0 .. low_sp) stayed parked */
    uint32_t dirty_n;  /* buffers touched since their memory was last given back */
    uint8_t *flags;    /* [count] TP_BUF_* */
    uint64_t trim_ms;  /* next trim */
    uint64_t enobufs0; /* sh->enobufs at the last flush */
};

#define TP_BUF_DIRTY  1  /* received into since its memory was last given back */
#define TP_BUF_INRING 2  /* in the kernel's ring */
#define TP_BUFS_MIN   64 /* smallest window */

/* ---- slabs: objects addressed by slot + generation ---- */

/**
 * The header every slab object starts with. A completion names its object by
 * slot and generation; a stale generation (the object was freed, maybe reused)
 * makes tp_slab_lookup return NULL, so no completion ever reaches the wrong
 * object.
 */
struct tp_slot {
    uint32_t slot; /* slab id (top 4 bits) | index */
    uint32_t gen;  /* 24 bits, bumped on allocation and on free */
    struct tp_slot *next_free;
    bool in_free;
};

#define TP_SLAB_SHIFT 28 /* slot = slab id << 28 | index */
#define TP_SLABS      4

struct tp_slab {
    void **chunks; /* chunks of 1024 objects, never moved */
    uint32_t cap, used;
    size_t objsize;
    struct tp_slot *free;
    uint32_t live; /* allocated objects */
};

/** Registers a slab of objects of <objsize> bytes (a struct tp_slot first) in every shard; returns its id or
 * -1. Process start. [control] */
int tp_reactor_slab_register(size_t objsize);
/** Allocates a zeroed object of slab <id> (header filled in); NULL when out of memory. [shard] */
void *tp_slab_alloc(struct tp_shard *sh, unsigned id);
/** Frees <o>: its generation changes, so completions still in flight are ignored. [shard] */
void tp_slab_free(struct tp_shard *sh, void *o);
/** The live object at <slot> with generation <gen>, or NULL. [shard] */
void *tp_slab_lookup(struct tp_shard *sh, uint32_t slot, uint32_t gen);
/** The object at index <i> of slab <id> (live or not) for walks; NULL past the end. [shard] */
struct tp_slot *tp_slab_at(struct tp_shard *sh, unsigned id, uint32_t i);

/* ---- listeners ---- */

#define TP_ACCEPTS_PER_LISTENER 8
#define TP_MAX_LISTENERS        64

/** One armed accept: its own address buffer, since the kernel writes it at completion. */
struct tp_accept_slot {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint8_t listener;
    bool armed;
};

struct tp_lis_stats;
struct tp_shard_listener {
    int fd; /* -1 when closed */
    char name[64];
    struct tp_addr addr;
    bool closing;
    uint32_t conns;             /* open connections accepted here (slot reuse waits for 0) */
    struct tp_lis_stats *stats; /* counters by listener name (control-owned) */
};

/**
 * Takes a connection the reactor accepted on listener <listener>; it owns
 * <fd> from here on and calls tp_shard_conn_closed once it is closed. [shard]
 */
typedef void (*tp_accept_fn)(struct tp_shard *sh, int fd, unsigned listener,
                             const struct sockaddr_storage *peer);

/* ---- shard hooks: what a module does at the reactor's points ---- */

struct tp_shard_hooks {
    /** Allocates the module's per-shard state into sh->ext[idx] (control thread, shard creation). */
    int (*create)(struct tp_shard *sh, unsigned idx);
    /** On the shard's thread, after the ring is up and the first snapshot adopted. */
    void (*start)(struct tp_shard *sh);
    /** Messages from the control thread (TP_MSG_* bits, see runtime.h). */
    void (*on_msgs)(struct tp_shard *sh, unsigned msgs);
    /** The shard adopted a new snapshot; <old> is the previous one (NULL at start). */
    void (*on_snapshot)(struct tp_shard *sh, struct tp_snapshot *old);
    /** Listener <idx> stopped accepting (removed by a reload). */
    void (*on_listener_closed)(struct tp_shard *sh, unsigned idx);
    /** Drain: finish what runs, then close (<now> false); or close everything now (<now> true). */
    void (*drain)(struct tp_shard *sh, bool now);
    /** End of every loop iteration, after completions and timers. */
    void (*tick)(struct tp_shard *sh);
    /** True while the module still has work: a draining shard stops once no module is busy. */
    bool (*busy)(struct tp_shard *sh);
    /** Thread exit. */
    void (*stop)(struct tp_shard *sh);
    /** Frees the per-shard state (any thread, after the shard's thread is gone). */
    void (*destroy)(struct tp_shard *sh);
};

#define TP_SHARD_EXT 4

/**
 * Registers <h> (static storage) for every shard created afterwards. Returns
 * the module's index into sh->ext, or -1. Process start only. [control]
 */
int tp_shard_hooks_register(const struct tp_shard_hooks *h);
/** Sets who takes accepted connections (the HTTP layer). Process start only. [control] */
void tp_shard_set_acceptor(tp_accept_fn fn);

/* ---- the shard ---- */

struct tp_shard {
    unsigned id;
    int cpu; /* -1 = not pinned */
    struct io_uring ring;
    struct tp_bufs bufs;
    struct tp_wheel wheel;
    uint64_t now_ms;
    uint64_t now_ns;

    struct tp_snapshot *snap;      /* current for new requests */
    struct tp_snapshot **retiring; /* older snapshots with requests in flight */
    unsigned n_retiring, cap_retiring;

    struct tp_shard_listener lis[TP_MAX_LISTENERS];
    unsigned n_lis;
    struct tp_accept_slot acc[TP_MAX_LISTENERS * TP_ACCEPTS_PER_LISTENER];

    struct tp_slab slabs[TP_SLABS];

    struct tp_outq *outq_free;
    struct tp_block *blk_free;
    uint32_t n_outq_free, n_blk_free;

    int wake_fd; /* eventfd the control thread writes */
    uint64_t wake_buf;
    _Atomic unsigned msgs; /* TP_MSG_* bits from the control thread */
    bool draining;
    bool stop;
    bool sqes_pending;

    uint64_t rng[2]; /* xorshift128+ for ids and balancing */

    void *ext[TP_SHARD_EXT]; /* per-shard state of registered modules */

    struct tp_timer accept_timer; /* re-arms accepts paused on EMFILE/ENFILE */
    bool accept_paused;

    /* counters [written: this shard; read: control] */
    tp_stat_t rejected_conns;  /* over max_connections or the open-files limit */
    tp_stat_t accept_paused_n; /* accepts paused: out of descriptors or memory */
    tp_stat_t enobufs;         /* the ring (its window) ran dry: the window grows */
    tp_stat_t pool_dry;        /* it ran dry with the whole pool in it: no buffer left */
    tp_stat_t ring_sqes;       /* SQEs prepared (tp_sqe) */
    tp_stat_t ring_cqes;       /* completions reaped */
    tp_stat_t ring_waits;      /* loop iterations: one submit-and-wait each */
    tp_stat_t bufs_window;     /* gauge: the buffer ring's window (bufs.want) */
    tp_stat_t bufs_dirty;      /* gauge: buffers whose memory may be resident (bufs.dirty_n) */
    tp_stat_t recv_held;       /* gauge: bytes queued on stopped receives (once a second) */
};

/** The shard running on this thread (NULL on other threads). */
extern __thread struct tp_shard *tp_self;

/** An SQE (submitting the queue first when it is full). [shard] */
struct io_uring_sqe *tp_sqe(struct tp_shard *sh);
/** Queues the close of <fd>, whose completion nobody waits for. [shard] */
void tp_close_fd(struct tp_shard *sh, int fd);

uint64_t tp_rand64(struct tp_shard *sh);

/** The single place a provided buffer is given back once its last reference is dropped (parked). */
void tp_buf_release(struct tp_shard *sh, uint16_t bid);
/** End of an iteration: parked buffers go into the ring up to the window (also adapts and trims it). */
void tp_bufs_flush(struct tp_shard *sh);
/**
 * True while more than half of the shard's provided buffers are held (queued
 * received bytes, relayed slices not yet sent). Queues then take less before
 * their connection stops reading, so slow readers cannot drain the pool that
 * every connection of the shard receives into.
 */
static inline bool tp_bufs_pressed(const struct tp_shard *sh)
{
    return sh->bufs.held > sh->bufs.count / 2;
}

/** <normal> bytes, or an eighth of it while the buffer pool is pressed. */
static inline uint32_t tp_queue_budget(const struct tp_shard *sh, uint32_t normal)
{
    return tp_bufs_pressed(sh) ? normal / 8 : normal;
}

static inline uint8_t *tp_buf_ptr(struct tp_shard *sh, uint16_t bid)
{
    return sh->bufs.mem + (size_t)bid * sh->bufs.size;
}
static inline void tp_buf_ref(struct tp_shard *sh, uint16_t bid)
{
    sh->bufs.refs[bid]++;
}
/** The first unconsumed byte of <e>. */
static inline const char *tp_rbuf_data(struct tp_shard *sh, const struct tp_rbuf *e)
{
    return (e->blk ? e->blk->data : (const char *)tp_buf_ptr(sh, e->bid)) + e->off;
}
/** Takes the buffer a recv CQE carries (one reference for the caller); -1 when none. */
int tp_cqe_buffer(struct tp_shard *sh, const struct io_uring_cqe *cqe);

/** A request starts on the shard's current snapshot / ends on <s> (shard-local counts). */
struct tp_snapshot *tp_shard_snapshot_enter(struct tp_shard *sh);
void tp_shard_snapshot_leave(struct tp_shard *sh, struct tp_snapshot *s);

/** An accepted connection of listener <listener> was closed: its counts go down. [shard] */
void tp_shard_conn_closed(struct tp_shard *sh, unsigned listener);
