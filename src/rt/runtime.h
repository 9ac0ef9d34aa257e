/* SPDX-License-Identifier: MIT */
/*
 * The process at run time: the control thread (src/rt/control.c) and the
 * shards (src/rt/shard.c), and what they share.
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <turnpike/config.h>

struct tp_shard;

enum tp_shard_msg {
    TP_MSG_DRAIN = 1u << 0,     /* stop accepting, finish in-flight, exit */
    TP_MSG_RELOAD = 1u << 1,    /* a new snapshot is published; reconcile listeners */
    TP_MSG_STOP = 1u << 2,      /* drain timeout passed: close everything now */
    TP_MSG_LOGREOPEN = 1u << 3, /* reopen the access log */
    TP_MSG_LEASE = 1u << 4,     /* a lease a request of the shard waits for landed (or failed) */
};

/** A listener change handed from the control thread to a shard. */
struct tp_lis_msg {
    bool add; /* add (fd valid) or remove (by name) */
    int fd;
    char name[64];
    struct tp_addr addr;
    struct tp_lis_stats *stats;
};

#define TP_LIS_MSGS          128
#define TP_MAX_LISTENERS_CTL 64

/** Reasons of turnpike_h2_goaway_total (the HTTP/2 error code sent, RFC 9113 7). */
enum tp_h2_goaway_reason {
    TP_H2_GOAWAY_NO_ERROR = 0,      /* drain, listener removed, idle */
    TP_H2_GOAWAY_PROTOCOL,          /* PROTOCOL_ERROR and other framing errors */
    TP_H2_GOAWAY_FLOW_CONTROL,      /* FLOW_CONTROL_ERROR */
    TP_H2_GOAWAY_COMPRESSION,       /* COMPRESSION_ERROR */
    TP_H2_GOAWAY_ENHANCE_YOUR_CALM, /* resets, floods, header bombs */
    TP_H2_GOAWAY_INTERNAL,          /* INTERNAL_ERROR and anything else */
    TP_H2_GOAWAY_REASONS
};

/** Counters of one listener, by name; owned by the control thread, kept for the process's life. */
struct tp_lis_stats {
    struct tp_lis_stats *next;
    char name[64];
    struct {
        _Atomic uint64_t accepted;   /* turnpike_connections_total */
        _Atomic uint64_t active;     /* turnpike_connections_active (sum over shards, may wrap per shard) */
        _Atomic uint64_t h2_streams; /* turnpike_h2_streams_active (the same) */
        _Atomic uint64_t h2_resets;  /* turnpike_h2_resets_total */
        _Atomic uint64_t h2_goaway[TP_H2_GOAWAY_REASONS]; /* turnpike_h2_goaway_total by reason */
    } __attribute__((aligned(64))) shard[];               /* [n_shards] */
};

/** First of the list of every listener's stats. [control] */
struct tp_lis_stats *tp_lis_stats_list(void);

/** Shared between the control thread and the shards. */
struct tp_runtime {
    unsigned n_shards;
    struct tp_shard **shards;
    const char *config_path;
    _Atomic bool draining;
    _Atomic int64_t conns_open;    /* client connections, for max_connections */
    _Atomic uint64_t max_conns;    /* limits.max_connections of the current config */
    _Atomic uint64_t fd_conns_max; /* client connections the open-files limit leaves room for */
    _Atomic unsigned shards_ready; /* shards that finished their setup */
    _Atomic unsigned shards_done;  /* shards that left their loop */
    _Atomic int shard_error;       /* first setup error of a shard (negative errno) */
    int ctl_wake_fd;               /* eventfd: a shard has news for the control thread */
    bool recv_mshot_limit;         /* the kernel ends a multishot receive at a byte limit (probed) */
    /*
     * limits.max_unsent_bytes: the unsent bytes the kernel may queue on one of
     * our TCP sockets (TCP_NOTSENT_LOWAT; bytes in flight do not count, so a
     * fast peer's window is never cut). Without it the kernel grows a socket's
     * send buffer up to net.ipv4.tcp_wmem's maximum (4 MiB by default, at once
     * on loopback) and takes a whole response from us while the peer reads
     * nothing: 1000 slow readers of a 1 MiB file put 2 GiB in send queues and
     * the host's TCP memory into pressure, which slows every other connection.
     * Set on listeners (accepted sockets inherit it; control re-applies it to
     * the open listeners on reload) and on upstream sockets at connect. 0 = the
     * host's net.ipv4.tcp_notsent_lowat. [control writes, any reads]
     */
    _Atomic uint32_t unsent_max;
};

extern struct tp_runtime tp_rt;

/** Runs turnpike on <cfg> (owned from here on) loaded from <path>; returns the exit code. [control] */
int tp_runtime_run(struct tp_config *cfg, const char *path);

/** Creates shard <id> pinned to <cpu> (-1 = not pinned) with the listener fds <fds> ([n_lis]). */
struct tp_shard *tp_shard_create(unsigned id, int cpu, const struct tp_lis_msg *lis, unsigned n_lis,
                                 int *err);
/** Starts the shard's thread. */
int tp_shard_start(struct tp_shard *sh);
/** Joins the shard's thread and frees it. */
void tp_shard_destroy(struct tp_shard *sh);
/** Frees a shard whose thread never started. */
void tp_shard_free_unstarted(struct tp_shard *sh);
/**
 * Sets up, on the calling thread, what the loop of <sh> needs: its ring
 * (SINGLE_ISSUER binds it to this thread), <buf_count> (a power of two)
 * provided buffers of <buf_size> bytes, the clock and the timer wheel. The
 * shard's thread calls it at start; unit tests call it to run a shard on
 * their own thread. Returns 0 or a negative error (TP_EURING: a feature is
 * missing). [shard]
 */
int tp_shard_setup(struct tp_shard *sh, uint32_t buf_count, uint32_t buf_size);
/**
 * One iteration of the shard's loop: adopt a new snapshot, submit and wait
 * for a completion or the next timer (at most <cap_ms>), dispatch every
 * completion, fire timers, run the tick hooks, return buffers, pass a
 * quiescent state; sets sh->stop once a draining shard is idle. The calling
 * thread must be registered with RCU (qsbr). [shard]
 */
void tp_shard_run_once(struct tp_shard *sh, uint64_t cap_ms);
/** Posts message bits (TP_MSG_*) to a shard and wakes it. [control] */
void tp_shard_post(struct tp_shard *sh, unsigned msgs);
/**
 * Wakes the control thread. On a running shard's thread the eventfd write
 * goes through that shard's ring (submitted at the end of the iteration: no
 * system call on the request path); elsewhere it is a write(2). [any]
 */
void tp_ctl_wake(void);
/** Queues a listener change for a shard (then post TP_MSG_RELOAD). Returns false when the mailbox is full. */
bool tp_shard_post_listener(struct tp_shard *sh, const struct tp_lis_msg *m);

/**
 * Opens a listening socket for <addr> with SO_REUSEPORT (one per shard and
 * listener), TCP_NODELAY and TCP_NOTSENT_LOWAT (tp_rt.unsent_max), which the
 * accepted sockets inherit. Returns the fd or -errno. [control]
 */
int tp_listen_socket(const struct tp_addr *addr, int backlog);

/** Probes io_uring with the flags the shards use, and the optional features the
 * runtime uses where the kernel has them (tp_rt.recv_mshot_limit). Returns 0 or -errno. [control] */
int tp_uring_probe(void);
