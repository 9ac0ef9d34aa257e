/* SPDX-License-Identifier: MIT */
/*
 * A real shard run on the test's own thread: no control thread, no
 * configuration file, no other thread. tp_shard_create builds the shard (the
 * create hooks of every module the test registered run), tp_shard_setup sets
 * up its ring with the production flags, a small provided-buffer ring (so a
 * test can run it dry) and the timer wheel, and fake_reactor_run turns the
 * production loop (tp_shard_run_once: submit and wait, dispatch every
 * completion through the op table, fire timers, tick hooks, return buffers)
 * until a condition holds. The test drives the other ends of its sockets
 * with plain syscalls between iterations, from the condition callback.
 *
 * Listener 0 exists (named FAKE_LISTENER, no socket) with its counters, so a
 * session accepted "on it" can report its close (tp_shard_conn_closed).
 *
 * Usage: register modules (tp_transport_register, tp_http_register, slabs)
 * first, then fake_reactor_create; exit with 77 (skip) when it returns NULL
 * with *skip set. Single-threaded. [shard: the test's thread is the shard's]
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <urcu-qsbr.h>

#include <turnpike/clock.h>

#include "rt/reactor.h"
#include "rt/runtime.h"

#define FAKE_LISTENER "test"
#define FAKE_TICK_MS  5 /* [ms] longest wait of one iteration: the test's peers get a turn this often */

typedef bool (*fake_until_fn)(struct tp_shard *sh, void *ctx);

/*
 * Creates a shard with <buf_count> (power of two) provided buffers of
 * <buf_size> bytes on this thread, registered with RCU (qsbr). NULL on
 * failure; *<skip> is then true when io_uring itself is unavailable.
 */
static inline struct tp_shard *fake_reactor_create(uint32_t buf_count, uint32_t buf_size, bool *skip)
{
    struct tp_lis_stats *ls = NULL;
    struct tp_shard *sh;
    int err = 0;

    *skip = false;
    sh = tp_shard_create(0, -1, NULL, 0, &err);
    if (!sh)
        return NULL;
    err = tp_shard_setup(sh, buf_count, buf_size);
    if (err) {
        /* no io_uring (ENOSYS, EPERM under seccomp or the sysctl), or a kernel without a feature we need */
        *skip = err == -ENOSYS || err == -EPERM || err == -EINVAL || err == -EOPNOTSUPP || err == TP_EURING;
        tp_shard_free_unstarted(sh);
        return NULL;
    }
    if (posix_memalign((void **)&ls, 64, sizeof(*ls) + sizeof(ls->shard[0])))
        abort();
    memset(ls, 0, sizeof(*ls) + sizeof(ls->shard[0]));
    strcpy(ls->name, FAKE_LISTENER);
    sh->lis[0].fd = -1;
    strcpy(sh->lis[0].name, FAKE_LISTENER);
    sh->lis[0].stats = ls;
    sh->n_lis = 1;
    tp_self = sh;
    rcu_register_thread();
    return sh;
}

/* What the reactor does when it accepts a connection on listener 0, before it calls the acceptor. */
static inline void fake_reactor_accepted(struct tp_shard *sh)
{
    atomic_fetch_add_explicit(&tp_rt.conns_open, 1, memory_order_relaxed);
    tp_stat_add(&sh->lis[0].stats->shard[sh->id].accepted, 1);
    tp_stat_add(&sh->lis[0].stats->shard[sh->id].active, 1);
    sh->lis[0].conns++;
}

/*
 * Runs the loop until <until>(sh, ctx) returns true (checked before every
 * iteration; NULL: never) or <max_ms> pass. Returns whether the condition
 * held. The bound only stops a broken test from hanging: no test asserts
 * how long anything took.
 */
static inline bool fake_reactor_run(struct tp_shard *sh, fake_until_fn until, void *ctx, uint64_t max_ms)
{
    uint64_t end = tp_clock_ms() + max_ms;

    for (;;) {
        if (until && until(sh, ctx))
            return true;
        if (tp_clock_ms() >= end)
            return false;
        tp_shard_run_once(sh, FAKE_TICK_MS);
    }
}

/* Runs <n> iterations that each wait at most <cap_ms> (to see that nothing happens). */
static inline void fake_reactor_spin(struct tp_shard *sh, unsigned n, uint64_t cap_ms)
{
    while (n--)
        tp_shard_run_once(sh, cap_ms);
}

/* Submits what is queued (closes nobody waits for) and frees the shard; the test thread leaves RCU. */
static inline void fake_reactor_destroy(struct tp_shard *sh)
{
    struct tp_lis_stats *ls = sh->lis[0].stats;

    io_uring_submit(&sh->ring);
    for (unsigned i = 0; i < sh->n_retiring; i++)
        tp_snapshot_put(sh->retiring[i]);
    free(sh->retiring);
    sh->retiring = NULL;
    sh->n_retiring = 0;
    if (sh->snap)
        tp_snapshot_put(sh->snap);
    sh->snap = NULL;
    rcu_unregister_thread();
    tp_self = NULL;
    sh->n_lis = 0;
    tp_shard_free_unstarted(sh);
    free(ls);
}
