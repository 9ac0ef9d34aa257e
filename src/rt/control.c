/* SPDX-License-Identifier: MIT */
/*
 * The control thread (the process's main thread): startup, signals, reloads,
 * drain, snapshot collection, and the services registered with it (admin
 * endpoints, health checks, the access log's file), on a ring of its own.
 *
 * Startup: probe io_uring, build the first snapshot, bind every listener
 * (one SO_REUSEPORT socket per shard and listener), let the services prepare
 * (the admin socket is bound there), and only then start the shards; any failure exits 1 before anything
 * accepts. READY=1 goes to systemd once every shard has armed its accepts.
 *
 * Reload (SIGHUP) is a transaction: load and validate the file, bind new
 * listeners, build the snapshot; any failure is logged (FILE:LINE:COLUMN
 * lines), counted, and changes nothing. Success publishes the snapshot (RCU
 * exchange + grace period) and then tells the shards about listener changes.
 *
 * Drain (SIGTERM/SIGINT): the shards close their listeners and idle
 * connections and finish what is in flight with Connection: close; the
 * control thread keeps the admin listener (readyz says 503) and after
 * shutdown.drain_timeout tells the shards to stop at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define _LGPL_SOURCE
#include <urcu-qsbr.h>

#include <turnpike/clock.h>
#include <turnpike/err.h>
#include <turnpike/log.h>

#include "rt/control.h"
#include "rt/runtime.h"
#include "rt/snapshot.h"

#define LISTEN_BACKLOG 4096
#define TICK_MS        100

/* valgrind 3.19 keeps its big thread lock across io_uring_enter, so a
 * control thread waiting there starves the workers (bench/instr.sh runs
 * under callgrind). Under valgrind the control thread sleeps 1 ms in
 * nanosleep, which valgrind knows to block in, and then only polls the ring. */
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define ON_VALGRIND() RUNNING_ON_VALGRIND
#else
#define ON_VALGRIND() 0
#endif

struct tp_runtime tp_rt = {.ctl_wake_fd = -1};
struct tp_ctl_info tp_ctl;

/* a listener as the control thread knows it (the sockets belong to the shards) */
struct ctl_listener {
    char name[64];
    struct tp_addr addr;
    int *fds; /* [n_shards] duplicates of the shards' sockets: shutdown() stops listening at once */
};

static struct {
    struct io_uring ring;
    int sig_fd;
    struct signalfd_siginfo sig;
    uint64_t wake_buf;
    uint64_t now_ms;
    struct ctl_listener lis[TP_MAX_LISTENERS_CTL];
    unsigned n_lis;
    int *cpus;
    unsigned n_cpus;
    bool stop;
    uint64_t drain_deadline_ms;
    uint64_t stop_deadline_ms;
    bool stop_sent;
    uint64_t start_deadline_ms; /* READY=1 at the latest then, services ready or not */
    unsigned n_listeners_cfg;
} ctl = {.sig_fd = -1};

#define START_WAIT_MS 10000 /* [ms] longest READY=1 waits for the services' start-up work */

static struct tp_lis_stats *lis_stats;

/* The stats object for listener <name> (created on first use). */
static struct tp_lis_stats *lis_stats_get(const char *name)
{
    struct tp_lis_stats *ls;

    for (ls = lis_stats; ls; ls = ls->next)
        if (strcmp(ls->name, name) == 0)
            return ls;
    if (posix_memalign((void **)&ls, 64, sizeof(*ls) + sizeof(ls->shard[0]) * tp_rt.n_shards))
        return NULL;
    memset(ls, 0, sizeof(*ls) + sizeof(ls->shard[0]) * tp_rt.n_shards);
    snprintf(ls->name, sizeof(ls->name), "%s", name);
    ls->next = lis_stats;
    lis_stats = ls;
    return ls;
}

struct tp_lis_stats *tp_lis_stats_list(void)
{
    return lis_stats;
}

static void lis_stats_free(void)
{
    while (lis_stats) {
        struct tp_lis_stats *n = lis_stats->next;
        free(lis_stats);
        lis_stats = n;
    }
}

uint64_t tp_ctl_now_ms(void)
{
    return ctl.now_ms;
}

/* ---- services ---- */

/* user_data of the control ring: service + 1 (8 bits; 0 = ignored) | op (8 bits) | slot (32 bits) */
#define CTL_SVC_SIGNAL 0xfe
#define CTL_SVC_WAKE   0xfd

static const struct tp_ctl_service *services[TP_CTL_SERVICES];
static unsigned n_services;

#define EACH_SERVICE(fn, ...)                                                                                \
    do {                                                                                                     \
        for (unsigned s_ = 0; s_ < n_services; s_++)                                                         \
            if (services[s_]->fn)                                                                            \
                services[s_]->fn(__VA_ARGS__);                                                               \
    } while (0)

int tp_ctl_service_register(const struct tp_ctl_service *s)
{
    if (n_services == TP_CTL_SERVICES)
        return -1;
    services[n_services] = s;
    return (int)n_services++;
}

static inline uint64_t ctl_ud(unsigned svc_tag, unsigned op, uint32_t slot)
{
    return ((uint64_t)svc_tag << 56) | ((uint64_t)(op & 0xff) << 48) | slot;
}

struct io_uring_sqe *tp_ctl_sqe(int svc, unsigned op, uint32_t slot)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ctl.ring);
    if (!sqe) {
        io_uring_submit(&ctl.ring);
        sqe = io_uring_get_sqe(&ctl.ring);
        TP_BUG_ON(!sqe);
    }
    io_uring_prep_nop(sqe);
    /* the caller's prep_* keeps user_data: liburing's prep helpers do not touch it */
    io_uring_sqe_set_data64(sqe, ctl_ud(svc < 0 ? 0 : (unsigned)svc + 1, op, slot));
    return sqe;
}

/* Sends <msg> to systemd's NOTIFY_SOCKET when set. */
static void sd_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    socklen_t len;
    int fd;

    if (!path || !*path || strlen(path) >= sizeof(sa.sun_path))
        return;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0; /* abstract namespace */
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return;
    if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) == -1)
        tp_warn("sd_notify: %s", strerror(errno));
    close(fd);
}

/* ------------------------------------------------------------------ */
/* listeners                                                           */
/* ------------------------------------------------------------------ */

static int find_listener(const char *name)
{
    for (unsigned i = 0; i < ctl.n_lis; i++)
        if (strcmp(ctl.lis[i].name, name) == 0)
            return (int)i;
    return -1;
}

static bool same_addr(const struct tp_addr *a, const struct tp_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* Keeps duplicates of a listener's sockets, so the control thread can stop
 * it listening itself, synchronously (see stop_listening). */
static int keep_listener(struct ctl_listener *cl, const char *name, const struct tp_addr *addr,
                         const int *fds)
{
    snprintf(cl->name, sizeof(cl->name), "%s", name);
    cl->addr = *addr;
    cl->fds = malloc(sizeof(int) * tp_rt.n_shards);
    if (!cl->fds)
        return -ENOMEM;
    for (unsigned s = 0; s < tp_rt.n_shards; s++)
        cl->fds[s] = fcntl(fds[s], F_DUPFD_CLOEXEC, 0);
    return 0;
}

/*
 * Stops <cl> listening in every shard now: shutdown(2) on a listening TCP
 * socket takes it out of its SO_REUSEPORT group, so new connections are
 * refused from this moment on (the shards' closes follow asynchronously).
 * Used for removed listeners and the drain, so that what turnpike reports
 * (READY=1 after a reload, /readyz during a drain) is already true.
 */
static void stop_listening(struct ctl_listener *cl, bool release)
{
    for (unsigned s = 0; cl->fds && s < tp_rt.n_shards; s++) {
        if (cl->fds[s] < 0)
            continue;
        shutdown(cl->fds[s], SHUT_RD);
        if (release) {
            close(cl->fds[s]);
            cl->fds[s] = -1;
        }
    }
    if (release) {
        free(cl->fds);
        cl->fds = NULL;
    }
}

/* A changed limits.max_unsent_bytes: later upstream connections take it at
 * connect, and every open listener now (connections accepted from here on
 * inherit it; those already open keep theirs). */
static void apply_unsent_max(uint32_t v)
{
    int lowat = (int)v;

    if (atomic_exchange(&tp_rt.unsent_max, v) == v)
        return;
    for (unsigned j = 0; j < ctl.n_lis; j++)
        for (unsigned s = 0; ctl.lis[j].fds && s < tp_rt.n_shards; s++)
            if (ctl.lis[j].fds[s] >= 0 &&
                setsockopt(ctl.lis[j].fds[s], IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat)) == -1)
                tp_warn("listener %s: TCP_NOTSENT_LOWAT: %s", ctl.lis[j].name, strerror(errno));
}

/* Opens <l>'s socket for every shard into <fds>. Returns 0 or -errno (nothing left open). */
static int open_listener(const struct tp_cfg_listener *l, int *fds)
{
    for (unsigned s = 0; s < tp_rt.n_shards; s++) {
        fds[s] = tp_listen_socket(&l->addr, LISTEN_BACKLOG);
        if (fds[s] < 0) {
            int err = fds[s];
            for (unsigned k = 0; k < s; k++)
                close(fds[k]);
            return err;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* reload                                                              */
/* ------------------------------------------------------------------ */

static void log_diag(struct tp_diag *d)
{
    for (size_t i = 0; i < d->n; i++)
        tp_err("%s", d->msgs[i]);
}

static void reload(void)
{
    struct tp_diag diag = {0};
    struct tp_config *cfg;
    struct tp_snapshot *s;
    char msg[512];
    int(*newfds)[TP_MAX_SHARDS] = NULL;
    bool is_new[TP_MAX_LISTENERS_CTL] = {false};

    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)(tp_clock_ns() / 1000));
    sd_notify(msg);
    tp_info("reloading %s", tp_rt.config_path);

    cfg = tp_config_load(tp_rt.config_path, &diag);
    if (!cfg)
        goto fail;
    for (size_t i = 0; i < diag.n; i++)
        tp_warn("%s", diag.msgs[i]); /* warnings of a valid file */
    tp_diag_dispose(&diag);
    if (cfg->workers && cfg->workers != tp_rt.n_shards)
        tp_warn("%s: workers changed to %u; a restart is needed to apply it (running %u)", cfg->source,
                cfg->workers, tp_rt.n_shards);
    if (cfg->n_listeners > TP_MAX_LISTENERS_CTL) {
        tp_diag_add(&diag, "%s: too many listeners (at most %d)", cfg->source, TP_MAX_LISTENERS_CTL);
        goto fail;
    }
    /* new listeners are bound before anything changes: a listener that cannot
     * bind fails the reload */
    newfds = calloc(cfg->n_listeners ? cfg->n_listeners : 1, sizeof(*newfds));
    if (!newfds) {
        tp_diag_add(&diag, "%s: out of memory", cfg->source);
        goto fail;
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        int k = find_listener(cfg->listeners[i].name);
        if (k >= 0 && same_addr(&ctl.lis[k].addr, &cfg->listeners[i].addr))
            continue;
        /* new, or moved to another address (a listener renamed on the same
         * address joins the old sockets' SO_REUSEPORT group) */
        int err = open_listener(&cfg->listeners[i], newfds[i]);
        if (err) {
            tp_diag_add(&diag, "%s:%u:%u: listeners[%zu].address: cannot listen on %s: %s", cfg->source,
                        cfg->listeners[i].addr_pos.line, cfg->listeners[i].addr_pos.col, i,
                        cfg->listeners[i].addr.text, strerror(-err));
            for (size_t k2 = 0; k2 < i; k2++)
                if (is_new[k2])
                    for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
                        close(newfds[k2][sidx]);
            goto fail;
        }
        is_new[i] = true;
    }
    s = tp_snapshot_build(cfg, tp_rt.n_shards, tp_ctl.generation + 1, &diag);
    if (!s) {
        for (size_t i = 0; i < cfg->n_listeners; i++)
            if (is_new[i])
                for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
                    close(newfds[i][sidx]);
        goto fail;
    }
    tp_snapshot_publish(s); /* s owns cfg from here */

    /* listeners: removed or changed ones close, new ones open, in every shard */
    struct ctl_listener kept[TP_MAX_LISTENERS_CTL];
    unsigned n_kept = 0;
    for (unsigned j = 0; j < ctl.n_lis; j++) {
        bool keep = false;
        for (size_t i = 0; i < s->cfg->n_listeners; i++)
            if (!is_new[i] && strcmp(s->cfg->listeners[i].name, ctl.lis[j].name) == 0)
                keep = true;
        if (keep) {
            kept[n_kept++] = ctl.lis[j];
            continue;
        }
        stop_listening(&ctl.lis[j], true);
        struct tp_lis_msg m = {.add = false, .fd = -1};
        snprintf(m.name, sizeof(m.name), "%s", ctl.lis[j].name);
        for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
            tp_shard_post_listener(tp_rt.shards[sidx], &m);
        tp_info("listener %s (%s) closed", ctl.lis[j].name, ctl.lis[j].addr.text);
    }
    memcpy(ctl.lis, kept, sizeof(kept[0]) * n_kept);
    ctl.n_lis = n_kept;
    for (size_t i = 0; i < s->cfg->n_listeners; i++) {
        if (!is_new[i])
            continue;
        keep_listener(&ctl.lis[ctl.n_lis++], s->cfg->listeners[i].name, &s->cfg->listeners[i].addr,
                      newfds[i]);
        for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++) {
            struct tp_lis_msg m = {.add = true,
                                   .fd = newfds[i][sidx],
                                   .addr = s->cfg->listeners[i].addr,
                                   .stats = lis_stats_get(s->cfg->listeners[i].name)};
            snprintf(m.name, sizeof(m.name), "%s", s->cfg->listeners[i].name);
            if (!m.stats) {
                close(m.fd);
                continue;
            }
            if (!tp_shard_post_listener(tp_rt.shards[sidx], &m))
                close(m.fd);
        }
        tp_info("listener %s on %s opened", s->cfg->listeners[i].name, s->cfg->listeners[i].addr.text);
    }
    apply_unsent_max((uint32_t)s->cfg->max_unsent_bytes);
    for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
        tp_shard_post(tp_rt.shards[sidx], TP_MSG_RELOAD);

    tp_ctl.generation = s->generation;
    tp_ctl.reloads_ok++;
    tp_ctl.loaded_at_real_ns = s->loaded_at_real_ns;
    tp_ctl.source = s->cfg->source;
    memcpy(tp_ctl.sha256, s->cfg->sha256, sizeof(tp_ctl.sha256));
    EACH_SERVICE(configure, s->cfg);
    free(newfds);
    tp_info("configuration generation %llu loaded from %s", (unsigned long long)s->generation,
            s->cfg->source);
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=generation %llu", (unsigned long long)s->generation);
    sd_notify(msg);
    return;

fail:
    free(newfds);
    log_diag(&diag);
    tp_err("reload failed; configuration generation %llu stays", (unsigned long long)tp_ctl.generation);
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=reload failed: %s", diag.n ? diag.msgs[0] : "see the log");
    sd_notify(msg);
    tp_diag_dispose(&diag);
    tp_config_destroy(cfg);
    tp_ctl.reloads_failed++;
}

int tp_ctl_republish(const char *why)
{
    struct tp_diag diag = {0};
    struct tp_snapshot *s;

    if (!tp_ctl.ready || tp_ctl.draining || !tp_snapshot_current)
        return -EAGAIN;
    s = tp_snapshot_rebuild(tp_ctl.generation + 1, &diag);
    if (!s) {
        log_diag(&diag);
        tp_diag_dispose(&diag);
        tp_err("%s: cannot rebuild the runtime configuration; generation %llu stays", why,
               (unsigned long long)tp_ctl.generation);
        return -ENOMEM;
    }
    /* endpoints that went are retired here: their pools close, requests on
     * them finish on the old snapshot */
    tp_snapshot_publish(s);
    for (unsigned i = 0; i < tp_rt.n_shards; i++)
        tp_shard_post(tp_rt.shards[i], TP_MSG_RELOAD);
    tp_ctl.generation = s->generation;
    tp_info("configuration generation %llu: %s", (unsigned long long)s->generation, why);
    return 0;
}

/* ------------------------------------------------------------------ */
/* the loop                                                            */
/* ------------------------------------------------------------------ */

static void arm_signal(void)
{
    struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
    io_uring_prep_read(sqe, ctl.sig_fd, &ctl.sig, sizeof(ctl.sig), 0);
    io_uring_sqe_set_data64(sqe, ctl_ud(CTL_SVC_SIGNAL, 0, 0));
}

static void arm_wake(void)
{
    struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
    io_uring_prep_read(sqe, tp_rt.ctl_wake_fd, &ctl.wake_buf, sizeof(ctl.wake_buf), 0);
    io_uring_sqe_set_data64(sqe, ctl_ud(CTL_SVC_WAKE, 0, 0));
}

static void start_drain(void)
{
    if (tp_ctl.draining) {
        /* a second signal: stop now */
        for (unsigned i = 0; i < tp_rt.n_shards; i++)
            tp_shard_post(tp_rt.shards[i], TP_MSG_STOP);
        ctl.stop_sent = true;
        return;
    }
    tp_ctl.draining = true;
    atomic_store(&tp_rt.draining, true);
    sd_notify("STOPPING=1");
    tp_notice("draining: no new connections; in-flight requests finish (at most %llu ms)",
              (unsigned long long)tp_snapshot_current->cfg->drain_timeout_ms);
    ctl.drain_deadline_ms = ctl.now_ms + tp_snapshot_current->cfg->drain_timeout_ms;
    /* new connections are refused from here on, whatever the shards are busy with */
    for (unsigned j = 0; j < ctl.n_lis; j++)
        stop_listening(&ctl.lis[j], false);
    for (unsigned i = 0; i < tp_rt.n_shards; i++)
        tp_shard_post(tp_rt.shards[i], TP_MSG_DRAIN);
}

static void on_signal(int res)
{
    if (res == (int)sizeof(ctl.sig)) {
        switch (ctl.sig.ssi_signo) {
        case SIGHUP:
            if (!tp_ctl.draining)
                reload();
            break;
        case SIGTERM:
        case SIGINT:
            start_drain();
            break;
        case SIGUSR1:
            EACH_SERVICE(reopen);
            for (unsigned i = 0; i < tp_rt.n_shards; i++)
                tp_shard_post(tp_rt.shards[i], TP_MSG_LOGREOPEN);
            break;
        default:
            break;
        }
    }
    arm_signal();
}

/* Start-up ends once every service with a ready hook says so (or after
 * START_WAIT_MS): then /readyz says ready and systemd hears READY=1. */
static void announce_when_ready(void)
{
    bool all = true;

    for (unsigned k = 0; k < n_services && all; k++)
        all = !services[k]->ready || services[k]->ready();
    if (!all && ctl.now_ms < ctl.start_deadline_ms)
        return;
    if (!all)
        tp_warn("start-up work of the services is not done after %d ms (DNS answers?); ready anyway",
                START_WAIT_MS);
    tp_ctl.starting = false;
    tp_notice("turnpike %s running: %u shard%s, %u listener%s, configuration %s", TP_VERSION, tp_rt.n_shards,
              tp_rt.n_shards == 1 ? "" : "s", ctl.n_listeners_cfg, ctl.n_listeners_cfg == 1 ? "" : "s",
              tp_ctl.source);
    sd_notify("READY=1\nSTATUS=generation 1");
}

static void control_loop(void)
{
    arm_signal();
    arm_wake();
    while (!ctl.stop) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000LL};
        unsigned head, n = 0;

        if (ON_VALGRIND()) {
            struct timespec nap = {0, 1000000};
            nanosleep(&nap, NULL);
            ts.tv_nsec = 0;
        }

        io_uring_submit_and_wait_timeout(&ctl.ring, &cqe, 1, &ts, NULL);
        ctl.now_ms = tp_clock_ms();
        io_uring_for_each_cqe(&ctl.ring, head, cqe)
        {
            unsigned tag = (unsigned)(cqe->user_data >> 56);
            if (tag == CTL_SVC_SIGNAL)
                on_signal(cqe->res);
            else if (tag == CTL_SVC_WAKE)
                arm_wake();
            else if (tag && tag <= n_services && services[tag - 1]->on_cqe)
                services[tag - 1]->on_cqe((unsigned)(cqe->user_data >> 48) & 0xff, (uint32_t)cqe->user_data,
                                          cqe->res);
            n++;
        }
        io_uring_cq_advance(&ctl.ring, n);

        tp_snapshot_collect();
        EACH_SERVICE(tick, ctl.now_ms, tp_ctl.draining);
        if (tp_ctl.starting)
            announce_when_ready();
        if (tp_ctl.draining) {
            if (atomic_load(&tp_rt.shards_done) == tp_rt.n_shards) {
                ctl.stop = true;
            } else if (!ctl.stop_sent && ctl.now_ms >= ctl.drain_deadline_ms) {
                tp_warn("drain_timeout passed with requests in flight; closing them");
                for (unsigned i = 0; i < tp_rt.n_shards; i++)
                    tp_shard_post(tp_rt.shards[i], TP_MSG_STOP);
                ctl.stop_sent = true;
                ctl.stop_deadline_ms = ctl.now_ms + 5000;
            } else if (ctl.stop_sent && ctl.stop_deadline_ms && ctl.now_ms >= ctl.stop_deadline_ms) {
                tp_err("shards did not stop in time; exiting");
                ctl.stop = true;
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* startup                                                             */
/* ------------------------------------------------------------------ */

static int cpu_list(int **out)
{
    cpu_set_t set;
    int n = 0, *cpus;

    if (sched_getaffinity(0, sizeof(set), &set) == -1)
        return -errno;
    cpus = calloc(CPU_SETSIZE, sizeof(*cpus));
    if (!cpus)
        return -ENOMEM;
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &set))
            cpus[n++] = i;
    *out = cpus;
    return n;
}

/* The control thread (reloads: parse and build; admin, health checks, DNS)
 * moves to the CPUs no worker is pinned to, when there are any: a reload
 * then does not take CPU time from a worker. The shards, created already,
 * pin themselves. */
static void keep_off_shard_cpus(void)
{
    cpu_set_t set;

    if (tp_rt.n_shards >= ctl.n_cpus)
        return;
    CPU_ZERO(&set);
    for (unsigned i = tp_rt.n_shards; i < ctl.n_cpus; i++)
        CPU_SET(ctl.cpus[i], &set);
    int ret = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    if (ret)
        tp_warn("cannot move the control thread off the workers' CPUs: %s", strerror(ret));
}

/* Descriptors kept free of client connections: upstream connections of the
 * requests in flight, the admin listener's 64 connections, health checks,
 * log files, listeners. */
#define FD_HEADROOM 192

/* Raises the open-files limit to its hard limit and derives how many client
 * connections fit: a process that runs out of descriptors can no longer
 * answer its admin endpoints or connect upstream, so connections beyond that
 * are closed at accept like those over max_connections. */
static void raise_nofile(void)
{
    struct rlimit rl;
    uint64_t room = UINT64_MAX;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (rl.rlim_cur != RLIM_INFINITY)
            room = rl.rlim_cur > 2 * FD_HEADROOM ? rl.rlim_cur - FD_HEADROOM : rl.rlim_cur / 2;
    }
    atomic_store(&tp_rt.fd_conns_max, room);
}

int tp_runtime_run(struct tp_config *cfg, const char *path)
{
    struct tp_diag diag = {0};
    struct tp_snapshot *s;
    sigset_t mask;
    int ret, exit_code = 1;
    bool prepared = false;
    int(*fds)[TP_MAX_SHARDS] = NULL;
    unsigned started = 0;

    tp_rt.config_path = path;
    tp_ctl.started_real_ns = tp_clock_real_ns();
    ret = tp_uring_probe();
    if (ret < 0) {
        tp_err("io_uring is not available (%s): turnpike needs it. Check the kernel.io_uring_disabled sysctl "
               "and any seccomp filter (container runtimes block io_uring by default)",
               strerror(-ret));
        tp_config_destroy(cfg);
        return 1;
    }
    if (!tp_rt.recv_mshot_limit)
        tp_warn("io_uring: this kernel cannot end a multishot receive at a byte limit; a connection "
                "relaying to a slow reader may hold more of the response in memory (up to what a "
                "multishot burst takes before its cancel lands)");
    ret = cpu_list(&ctl.cpus);
    if (ret <= 0) {
        tp_err("cannot read the CPU affinity mask: %s", strerror(-ret));
        tp_config_destroy(cfg);
        return 1;
    }
    ctl.n_cpus = (unsigned)ret;
    tp_rt.n_shards = cfg->workers ? cfg->workers : ctl.n_cpus;
    if (tp_rt.n_shards > TP_MAX_SHARDS)
        tp_rt.n_shards = TP_MAX_SHARDS;
    if (cfg->n_listeners > TP_MAX_LISTENERS_CTL) {
        tp_err("%s: too many listeners (at most %d)", cfg->source, TP_MAX_LISTENERS_CTL);
        tp_config_destroy(cfg);
        return 1;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* shards inherit the mask */
    ctl.sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
    tp_rt.ctl_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ctl.sig_fd == -1 || tp_rt.ctl_wake_fd == -1) {
        tp_err("signalfd/eventfd: %s", strerror(errno));
        tp_config_destroy(cfg);
        return 1;
    }
    ret = io_uring_queue_init(256, &ctl.ring, 0);
    if (ret < 0) {
        tp_err("io_uring_queue_init: %s", strerror(-ret));
        tp_config_destroy(cfg);
        return 1;
    }

    s = tp_snapshot_build(cfg, tp_rt.n_shards, 1, &diag);
    if (!s) {
        for (size_t i = 0; i < diag.n; i++)
            fprintf(stderr, "%s\n", diag.msgs[i]);
        tp_diag_dispose(&diag);
        tp_config_destroy(cfg);
        return 1;
    }
    tp_snapshot_publish(s);
    atomic_store(&tp_rt.max_conns, s->cfg->max_connections);
    atomic_store(&tp_rt.unsent_max, (uint32_t)s->cfg->max_unsent_bytes);

    /* bind everything before starting anything */
    fds = calloc(s->cfg->n_listeners, sizeof(*fds));
    if (!fds)
        goto out;
    for (size_t i = 0; i < s->cfg->n_listeners; i++) {
        ret = open_listener(&s->cfg->listeners[i], fds[i]);
        if (ret) {
            fprintf(stderr, "%s:%u:%u: listeners[%zu].address: cannot listen on %s: %s\n", s->cfg->source,
                    s->cfg->listeners[i].addr_pos.line, s->cfg->listeners[i].addr_pos.col, i,
                    s->cfg->listeners[i].addr.text, strerror(-ret));
            for (size_t k = 0; k < i; k++)
                for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
                    close(fds[k][sidx]);
            goto out;
        }
        keep_listener(&ctl.lis[ctl.n_lis++], s->cfg->listeners[i].name, &s->cfg->listeners[i].addr, fds[i]);
    }
    for (unsigned k = 0; k < n_services; k++) {
        if (services[k]->prepare && services[k]->prepare(s->cfg) < 0) {
            for (unsigned j = k; j-- > 0;)
                if (services[j]->stop)
                    services[j]->stop();
            for (size_t i = 0; i < s->cfg->n_listeners; i++)
                for (unsigned sidx = 0; sidx < tp_rt.n_shards; sidx++)
                    close(fds[i][sidx]);
            goto out;
        }
    }
    EACH_SERVICE(configure, s->cfg);
    prepared = true;

    tp_rt.shards = calloc(tp_rt.n_shards, sizeof(*tp_rt.shards));
    if (!tp_rt.shards)
        goto out;
    for (unsigned i = 0; i < tp_rt.n_shards; i++) {
        struct tp_lis_msg lis[TP_MAX_LISTENERS_CTL];
        for (size_t k = 0; k < s->cfg->n_listeners; k++) {
            memset(&lis[k], 0, sizeof(lis[k]));
            lis[k].add = true;
            lis[k].fd = fds[k][i];
            lis[k].addr = s->cfg->listeners[k].addr;
            lis[k].stats = lis_stats_get(s->cfg->listeners[k].name);
            if (!lis[k].stats) {
                tp_err("out of memory");
                goto stop;
            }
            snprintf(lis[k].name, sizeof(lis[k].name), "%s", s->cfg->listeners[k].name);
        }
        int cpu = ctl.cpus[i % ctl.n_cpus];
        tp_rt.shards[i] = tp_shard_create(i, cpu, lis, (unsigned)s->cfg->n_listeners, &ret);
        if (!tp_rt.shards[i]) {
            tp_err("cannot create shard %u: %s", i, strerror(-ret));
            goto stop;
        }
    }
    for (unsigned i = 0; i < tp_rt.n_shards; i++) {
        ret = tp_shard_start(tp_rt.shards[i]);
        if (ret) {
            tp_err("cannot start shard %u: %s", i, strerror(-ret));
            goto stop;
        }
        started++;
    }
    /* wait for the shards' rings and accepts (bounded) */
    for (int i = 0; i < 1000 && atomic_load(&tp_rt.shards_ready) < tp_rt.n_shards; i++)
        usleep(10000);
    if (atomic_load(&tp_rt.shard_error)) {
        ret = atomic_load(&tp_rt.shard_error);
        tp_err("a shard failed to set up its io_uring: %s",
               ret <= TP_EBASE ? tp_strerror(ret) : strerror(-ret));
        goto stop;
    }
    if (atomic_load(&tp_rt.shards_ready) < tp_rt.n_shards) {
        tp_err("shards did not start in time");
        goto stop;
    }
    keep_off_shard_cpus();
    for (unsigned k = 0; k < n_services; k++)
        if (services[k]->started && services[k]->started() < 0)
            goto stop;

    tp_ctl.generation = 1;
    tp_ctl.loaded_at_real_ns = s->loaded_at_real_ns;
    tp_ctl.source = s->cfg->source;
    memcpy(tp_ctl.sha256, s->cfg->sha256, sizeof(tp_ctl.sha256));
    tp_ctl.ready = true;
    tp_ctl.starting = true;
    ctl.n_listeners_cfg = (unsigned)s->cfg->n_listeners;
    ctl.now_ms = tp_clock_ms();
    ctl.start_deadline_ms = ctl.now_ms + START_WAIT_MS;
    announce_when_ready(); /* at once when no service has start-up work */
    control_loop();
    exit_code = 0;
    goto join;

stop:
    atomic_store(&tp_rt.draining, true);
    for (unsigned i = 0; i < started; i++)
        tp_shard_post(tp_rt.shards[i], TP_MSG_STOP);
join:
    for (unsigned i = 0; i < tp_rt.n_shards && tp_rt.shards; i++) {
        if (!tp_rt.shards[i])
            continue;
        if (i < started)
            tp_shard_destroy(tp_rt.shards[i]);
        else
            tp_shard_free_unstarted(tp_rt.shards[i]);
    }
    free(tp_rt.shards);
    tp_rt.shards = NULL;
out:
    if (prepared)
        EACH_SERVICE(stop);
    free(fds);
    tp_snapshot_shutdown();
    io_uring_queue_exit(&ctl.ring);
    close(ctl.sig_fd);
    close(tp_rt.ctl_wake_fd);
    free(ctl.cpus);
    for (unsigned j = 0; j < ctl.n_lis; j++)
        stop_listening(&ctl.lis[j], true);
    ctl.n_lis = 0;
    lis_stats_free();
    if (exit_code == 0)
        tp_notice("stopped");
    return exit_code;
}
