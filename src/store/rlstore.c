/* SPDX-License-Identifier: MIT */
/*
 * The rate limit store client (rate_limit_store; docs/policies.md "Global
 * rate limits", docs/internals.md for the thread choice).
 *
 * One hiredis asynchronous connection, driven by the control ring: hiredis's
 * event hooks arm a one-shot POLL_ADD for reading or writing on its socket,
 * and the completion calls redisAsyncHandleRead/Write. Every loop iteration
 * (tick) this service
 *   - fails the connection when a call has waited longer than `timeout`
 *     (hiredis 0.14 has no timeouts of its own),
 *   - connects again when there is no connection, with a backoff from 10 ms
 *     doubling to 1 s,
 *   - takes the pools that asked for tokens from every global limiter of the
 *     current configuration (tp_lease_next) and sends one lease call each:
 *     EVALSHA of the lease script, or EVAL when the server answers NOSCRIPT;
 *     the calls of one tick go out pipelined in one write.
 * A shard that queues an ask wakes the control thread (the eventfd of
 * tp_shard_post, at most once per loop iteration), so an ask goes out at
 * once. A timeout is armed on the ring only while something is timed: the
 * first answer's deadline (store_timer), and every 2 ms while pools are held
 * back after a short lease or a reconnect is due. The answer of a pool some
 * requests wait for wakes their shards (TP_MSG_LEASE).
 * A call holds a reference on its table until the answer (or the failure)
 * arrives. While the store does not answer, the pools say FALLBACK to the
 * shards and `on_failure` decides there. [control]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include <turnpike/clock.h>
#include <turnpike/lease.h>
#include <turnpike/log.h>

#include "rt/control.h"
#include "rt/runtime.h"
#include "rt/snapshot.h"
#include "store/rlstore.h"

enum { OP_POLL_R = 1, OP_POLL_W, OP_TIMER };

#define MAX_CALLS      1024
#define TICK_NS        2000000ll
#define BACKOFF_MIN_MS 10
#define BACKOFF_MAX_MS 1000
#define CONNECT_MIN_MS 250 /* connecting and loading the script may take this long at least */

/*
 * The lease script. KEYS[1] is the bucket: a string "LEVEL LAST", the level
 * in tokens (6 decimals, rounded down) at Redis TIME LAST [us]. ARGV:
 * capacity, tokens, period [us], tokens wanted. The level refills at tokens /
 * period from Redis's clock (a clock going back refills nothing), is capped
 * at the capacity, and gives out whole tokens. Three commands inside: TIME,
 * GET, and SET with PX (the key expires a second after it would be full
 * anyway) only when tokens were granted; a call that grants none leaves the
 * stored pair as it is (the level it implies later is the same). Returns
 * {granted, whole tokens left, ms until full, ms until a whole token}.
 */
static const char script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local cap = tonumber(ARGV[1])\n"
    "local rate = tonumber(ARGV[2]) / tonumber(ARGV[3])\n"
    "local want = tonumber(ARGV[4])\n"
    "local lvl, last = cap, now\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then\n"
    "  local sp = string.find(v, ' ', 1, true)\n"
    "  if sp then lvl = tonumber(string.sub(v, 1, sp - 1)); last = tonumber(string.sub(v, sp + 1)) end\n"
    "  if lvl == nil or last == nil then lvl = cap; last = now end\n"
    "  if now > last then lvl = lvl + (now - last) * rate; last = now end\n"
    "  if lvl > cap then lvl = cap end\n"
    "end\n"
    "local g = math.floor(lvl)\n"
    "if g > want then g = want end\n"
    "if g < 0 then g = 0 end\n"
    "lvl = lvl - g\n"
    "local full = math.ceil((cap - lvl) / rate / 1000)\n"
    "if g > 0 then\n"
    "  redis.call('SET', KEYS[1], string.format('%.6f %d', math.floor(lvl * 1000000) / 1000000, last),"
    " 'PX', full + 1000)\n"
    "end\n"
    "local nxt = 0\n"
    "if lvl < 1 then nxt = math.ceil((1 - lvl) / rate / 1000) end\n"
    "return {g, math.floor(lvl), full, nxt}\n";

struct call {
    bool used;
    bool load;                /* SCRIPT LOAD, not a lease */
    bool retried;             /* sent again as EVAL after NOSCRIPT */
    struct tp_lease_table *t; /* holds a reference */
    uint32_t slot;
    uint64_t sent_ns, deadline_ns;
    char key[320];
    char cap[32], tokens[24], period[24], want[16];
};

static struct {
    int svc;
    bool configured;
    struct tp_addr addr;
    char host[INET6_ADDRSTRLEN];
    int port;
    uint64_t timeout_ns;
    char prefix[128];

    redisAsyncContext *ac;
    uint32_t gen; /* of the connection: completions of older polls are ignored */
    bool want_r, want_w, armed_r, armed_w;
    uint64_t ud_r, ud_w; /* user_data of the armed polls, to remove them */
    bool freeing;        /* we are freeing ac: its callbacks are no news */
    uint64_t next_connect_ms, backoff_ms;
    bool timer_armed;
    uint64_t ud_t;     /* user_data of the armed timeout, to remove it */
    uint64_t timer_at; /* [ns] when it fires */
    struct __kernel_timespec timer_ts;
    bool stopping;
    char sha[41];

    struct call calls[MAX_CALLS];
    unsigned n_calls;

    uint64_t wake; /* waiter bits of shards to wake: their leases landed or failed */

    _Atomic uint64_t errors, answered;
} st = {.svc = -1};

/* a shard queued an ask: the control thread runs its loop (and this tick) now */
static _Atomic bool poked;

void tp_rlstore_stats(struct tp_rlstore_stats *out)
{
    out->configured = st.configured;
    out->up = st.configured && tp_lease_store_up();
    out->errors = atomic_load_explicit(&st.errors, memory_order_relaxed);
    out->calls = atomic_load_explicit(&st.answered, memory_order_relaxed);
}

/* ---- the ring under hiredis ---- */

static void arm(void)
{
    struct io_uring_sqe *sqe;

    if (!st.ac || st.freeing)
        return;
    if (st.want_r && !st.armed_r) {
        sqe = tp_ctl_sqe(st.svc, OP_POLL_R, st.gen);
        io_uring_prep_poll_add(sqe, st.ac->c.fd, POLLIN);
        st.ud_r = sqe->user_data;
        st.armed_r = true;
    }
    if (st.want_w && !st.armed_w) {
        sqe = tp_ctl_sqe(st.svc, OP_POLL_W, st.gen);
        io_uring_prep_poll_add(sqe, st.ac->c.fd, POLLOUT);
        st.ud_w = sqe->user_data;
        st.armed_w = true;
    }
}

static void ev_add_read(void *p)
{
    (void)p;
    st.want_r = true;
    arm();
}

static void ev_del_read(void *p)
{
    (void)p;
    st.want_r = false;
}

/* Output waits for flush_out at the end of the tick or completion (which
 * writes at once), except while connecting: then POLLOUT says connected. */
static void ev_add_write(void *p)
{
    (void)p;
    st.want_w = true;
    if (st.ac && !(st.ac->c.flags & REDIS_CONNECTED))
        arm();
}

static void ev_del_write(void *p)
{
    (void)p;
    st.want_w = false;
}

/* hiredis is done with the socket (it closes it next): the polls go */
static void ev_cleanup(void *p)
{
    (void)p;
    if (st.armed_r)
        io_uring_prep_poll_remove(tp_ctl_sqe(-1, 0, 0), st.ud_r);
    if (st.armed_w)
        io_uring_prep_poll_remove(tp_ctl_sqe(-1, 0, 0), st.ud_w);
    st.armed_r = st.armed_w = st.want_r = st.want_w = false;
    st.gen++;
}

/* ---- waking ---- */

/* [any] A pool queued an ask (lease.c's notify hook): wake the control thread
 * unless a wake is already on its way. The fence pairs with the one in
 * store_tick: either this sees the flag cleared or the tick sees the ask. */
static void ask_notify(void)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (!atomic_exchange_explicit(&poked, true, memory_order_relaxed))
        tp_ctl_wake(); /* from a shard: through its ring */
}

/* The shards whose waiting requests' leases landed or failed take again. */
static void wake_flush(void)
{
    uint64_t m = st.wake;

    st.wake = 0;
    for (unsigned i = 0; m && tp_rt.shards && i < tp_rt.n_shards; i++)
        if ((m & (1ull << (i & 63))) && tp_rt.shards[i])
            tp_shard_post(tp_rt.shards[i], TP_MSG_LEASE);
}

/* Writes what hiredis holds now, on a connected socket (it is writable but
 * for a full send buffer: then, and for the connect, a POLLOUT waits), and
 * arms the polls still wanted. Saves a poll and a loop iteration per batch. */
static void flush_out(void)
{
    if (st.ac && !st.freeing && st.want_w && !st.armed_w && (st.ac->c.flags & REDIS_CONNECTED))
        redisAsyncHandleWrite(st.ac);
    arm();
}

/* ---- timing ---- */

/* One timeout on the ring at now + <in_ns>, or earlier: it wakes the loop so
 * the tick sees an answer's deadline pass, a held-back pool come due or a
 * reconnect. It also completes with the ring's next completion (count 1),
 * normally the answer itself: then it costs neither a wake-up nor a removal,
 * and the tick that follows arms it again if calls are still out. */
static void timer_at(uint64_t now_ns, uint64_t in_ns)
{
    struct io_uring_sqe *sqe;

    if (st.timer_armed && st.timer_at <= now_ns + in_ns)
        return;
    if (st.timer_armed)
        io_uring_prep_timeout_remove(tp_ctl_sqe(-1, 0, 0), st.ud_t, 0);
    st.timer_ts.tv_sec = (long long)(in_ns / 1000000000ull);
    st.timer_ts.tv_nsec = (long long)(in_ns % 1000000000ull);
    sqe = tp_ctl_sqe(st.svc, OP_TIMER, 0);
    io_uring_prep_timeout(sqe, &st.timer_ts, 1, 0);
    st.ud_t = sqe->user_data;
    st.timer_at = now_ns + in_ns;
    st.timer_armed = true;
}

/* ---- connection ---- */

static void store_down(const char *why)
{
    uint64_t now_ms = tp_ctl_now_ms();

    atomic_fetch_add_explicit(&st.errors, 1, memory_order_relaxed);
    if (tp_lease_store_up())
        tp_warn("rate_limit_store %s:%d: %s; global rate limits fall back", st.host, st.port, why);
    tp_lease_set_store_up(false);
    st.wake = ~0ull; /* whoever waits for a lease decides by on_failure now */
    st.next_connect_ms = now_ms + st.backoff_ms;
    st.backoff_ms = st.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : st.backoff_ms * 2;
}

static void store_up(void)
{
    if (!tp_lease_store_up())
        tp_notice("rate_limit_store %s:%d answers; global rate limits are shared", st.host, st.port);
    tp_lease_set_store_up(true);
    st.backoff_ms = BACKOFF_MIN_MS;
}

/* Drops the connection (its calls fail through their callbacks). */
static void conn_drop(const char *why)
{
    redisAsyncContext *ac = st.ac;

    if (!ac)
        return;
    st.freeing = true;
    redisAsyncFree(ac);
    st.freeing = false;
    st.ac = NULL;
    store_down(why);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    (void)status;
    if (st.freeing || ac != st.ac)
        return;
    /* hiredis frees the context after this */
    st.ac = NULL;
    store_down(ac->errstr[0] ? ac->errstr : "connection closed");
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status == REDIS_OK || ac != st.ac)
        return;
    /* hiredis frees the context after this */
    st.ac = NULL;
    store_down(ac->errstr[0] ? ac->errstr : "cannot connect");
}

static struct call *call_new(void)
{
    for (unsigned i = 0; i < MAX_CALLS; i++)
        if (!st.calls[i].used) {
            struct call *c = &st.calls[i];
            memset(c, 0, sizeof(*c));
            c->used = true;
            st.n_calls++;
            return c;
        }
    return NULL;
}

static void call_end(struct call *c)
{
    if (c->t)
        tp_lease_unref(c->t);
    c->t = NULL;
    c->used = false;
    st.n_calls--;
}

static void on_load(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    struct call *c = priv;

    (void)ac;
    call_end(c);
    if (!reply)
        return; /* the connection is gone; whoever dropped it said why */
    if (reply->type == REDIS_REPLY_ERROR) {
        tp_err("rate_limit_store %s:%d: SCRIPT LOAD: %s", st.host, st.port, reply->str);
        conn_drop("the lease script cannot be loaded");
        return;
    }
    store_up();
}

static bool send_lease(struct call *c);

static void on_lease(redisAsyncContext *ac, void *r, void *priv)
{
    redisReply *reply = r;
    struct call *c = priv;
    uint64_t now = tp_clock_ns();

    (void)ac;
    if (!reply) {
        st.wake |= tp_lease_failed(c->t, c->slot);
        call_end(c);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        if (!c->retried && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
            /* the server lost the script (restart, SCRIPT FLUSH): send it along */
            c->retried = true;
            if (send_lease(c))
                return;
        }
        tp_err("rate_limit_store %s:%d: lease for route %s: %s", st.host, st.port, tp_lease_name(c->t),
               reply->str);
        atomic_fetch_add_explicit(&st.errors, 1, memory_order_relaxed);
        st.wake |= tp_lease_failed(c->t, c->slot);
        call_end(c);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) {
        atomic_fetch_add_explicit(&st.errors, 1, memory_order_relaxed);
        st.wake |= tp_lease_failed(c->t, c->slot);
        call_end(c);
        return;
    }
    long long v[4];
    for (int i = 0; i < 4; i++)
        v[i] = reply->element[i]->type == REDIS_REPLY_INTEGER && reply->element[i]->integer > 0
                   ? reply->element[i]->integer
                   : 0;
    atomic_fetch_add_explicit(&st.answered, 1, memory_order_relaxed);
    st.wake |=
        tp_lease_grant(c->t, c->slot, c->sent_ns, now, (uint32_t)(v[0] > TP_LEASE_MAX ? TP_LEASE_MAX : v[0]),
                       (uint64_t)v[1], (uint64_t)v[2], (uint64_t)v[3]);
    call_end(c);
    store_up();
}

static bool send_lease(struct call *c)
{
    const char *argv[8];
    size_t len[8];

    argv[0] = c->retried ? "EVAL" : "EVALSHA";
    argv[1] = c->retried ? script : st.sha;
    argv[2] = "1";
    argv[3] = c->key;
    argv[4] = c->cap;
    argv[5] = c->tokens;
    argv[6] = c->period;
    argv[7] = c->want;
    for (int i = 0; i < 8; i++)
        len[i] = strlen(argv[i]);
    return redisAsyncCommandArgv(st.ac, on_lease, c, 8, argv, len) == REDIS_OK;
}

static void conn_start(void)
{
    redisAsyncContext *ac = redisAsyncConnect(st.host, st.port);
    struct call *c;

    if (!ac || ac->err) {
        if (ac)
            redisAsyncFree(ac);
        store_down("cannot connect");
        return;
    }
    st.ac = ac;
    st.want_r = st.want_w = st.armed_r = st.armed_w = false;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* the first command makes hiredis wait for the connection to be writable */
    c = call_new();
    if (!c) {
        conn_drop("no call slot");
        return;
    }
    c->load = true;
    c->sent_ns = tp_clock_ns();
    c->deadline_ns = c->sent_ns + (st.timeout_ns > CONNECT_MIN_MS * 1000000ull ? st.timeout_ns
                                                                               : CONNECT_MIN_MS * 1000000ull);
    if (redisAsyncCommand(ac, on_load, c, "SCRIPT LOAD %s", script) != REDIS_OK) {
        call_end(c);
        conn_drop("cannot send");
    }
}

/* ---- leases ---- */

static void lease_send(struct tp_lease_table *t, const struct tp_lease_ask *a, uint64_t now)
{
    struct call *c = call_new();

    if (!c) {
        st.wake |= tp_lease_failed(t, a->slot);
        return;
    }
    tp_lease_ref(t);
    c->t = t;
    c->slot = a->slot;
    c->sent_ns = now;
    c->deadline_ns = now + st.timeout_ns;
    if (a->overflow)
        snprintf(c->key, sizeof(c->key), "%s%s:overflow", st.prefix, tp_lease_name(t));
    else if (a->key_hash)
        snprintf(c->key, sizeof(c->key), "%s%s:%016" PRIx64, st.prefix, tp_lease_name(t), a->key_hash);
    else
        snprintf(c->key, sizeof(c->key), "%s%s", st.prefix, tp_lease_name(t));
    snprintf(c->cap, sizeof(c->cap), "%.6f", a->capacity);
    snprintf(c->tokens, sizeof(c->tokens), "%" PRIu64, a->tokens);
    snprintf(c->period, sizeof(c->period), "%" PRIu64, a->period_ms * 1000);
    snprintf(c->want, sizeof(c->want), "%u", a->want);
    if (!send_lease(c)) {
        st.wake |= tp_lease_failed(t, a->slot);
        call_end(c);
    }
}

/* ---- the service ---- */

static bool has_global(const struct tp_snapshot *s)
{
    for (size_t i = 0; s && i < s->n_routes; i++)
        if (s->routes[i].lease)
            return true;
    return false;
}

/* The timeout runs the tick while something is timed: the first answer's
 * deadline, a pool held back after a short lease, a reconnect (every 2 ms
 * for those two). Asks need none: a shard queueing one wakes the control
 * thread (ask_notify); answers arrive as poll completions. */
static void store_timer(uint64_t now, bool held_back, bool reconnect)
{
    uint64_t first = UINT64_MAX;

    for (unsigned i = 0; st.n_calls && i < MAX_CALLS; i++)
        if (st.calls[i].used && st.calls[i].deadline_ns < first)
            first = st.calls[i].deadline_ns;
    if (held_back || reconnect)
        first = first < now + TICK_NS ? first : now + TICK_NS;
    /* nothing timed: an armed timeout is left to end with the next completion */
    if (first != UINT64_MAX)
        timer_at(now, first > now ? first - now + 100000 : 100000);
}

static void store_tick(uint64_t now_ms, bool draining)
{
    struct tp_snapshot *s = tp_snapshot_current;
    uint64_t now = tp_clock_ns();
    bool global = st.configured && has_global(s), held_back = false;

    (void)draining;
    atomic_store_explicit(&poked, false, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    for (unsigned i = 0; st.ac && st.n_calls && i < MAX_CALLS; i++)
        if (st.calls[i].used && now > st.calls[i].deadline_ns) {
            conn_drop(st.calls[i].load ? "no answer to connecting in time" : "timeout");
            break;
        }
    if (global && !st.stopping) {
        if (!st.ac && now_ms >= st.next_connect_ms)
            conn_start();
        if (st.ac && tp_lease_store_up())
            for (size_t i = 0; i < s->n_routes && st.ac; i++) {
                struct tp_lease_table *t = s->routes[i].lease;
                struct tp_lease_ask a;
                while (t && st.ac && st.n_calls < MAX_CALLS && tp_lease_next(t, now, &a))
                    lease_send(t, &a, now);
                held_back = held_back || (t && tp_lease_deferred(t));
            }
    }
    wake_flush();
    flush_out();
    store_timer(now, held_back, global && !st.ac && !st.stopping);
}

static void store_cqe(unsigned op, uint32_t slot, int res)
{
    if (op == OP_TIMER) {
        if (res != -ECANCELED)
            st.timer_armed = false; /* fired or completed by count (a removed one is replaced) */
        return;
    }
    if (slot != st.gen)
        return; /* a poll of a connection that is gone */
    if (op == OP_POLL_R) {
        st.armed_r = false;
        if (st.ac && st.want_r && res != -ECANCELED)
            redisAsyncHandleRead(st.ac);
    } else if (op == OP_POLL_W) {
        st.armed_w = false;
        if (st.ac && st.want_w && res != -ECANCELED)
            redisAsyncHandleWrite(st.ac);
    }
    flush_out();
    wake_flush();
}

static void store_configure(const struct tp_config *cfg)
{
    const struct tp_cfg_rl_store *c = cfg->rl_store;
    char host[INET6_ADDRSTRLEN] = "";
    int port = 0;

    if (c) {
        if (c->redis.ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&c->redis.ss;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            port = ntohs(a->sin6_port);
        } else {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&c->redis.ss;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
            port = ntohs(a->sin_port);
        }
    }
    /* another store (or none): the leases of the old one are not this one's */
    if (!c || strcmp(host, st.host) != 0 || port != st.port || strcmp(c->prefix, st.prefix) != 0) {
        if (st.ac) {
            conn_drop("rate_limit_store changed");
            atomic_fetch_sub_explicit(&st.errors, 1, memory_order_relaxed); /* not a failure */
        }
        tp_lease_set_store_up(false);
        st.next_connect_ms = 0;
        st.backoff_ms = BACKOFF_MIN_MS;
    }
    wake_flush();
    st.configured = c != NULL;
    if (!c)
        return;
    snprintf(st.host, sizeof(st.host), "%s", host);
    st.port = port;
    snprintf(st.prefix, sizeof(st.prefix), "%s", c->prefix);
    st.timeout_ns = c->timeout_ms * 1000000ull;
}

static int store_prepare(const struct tp_config *cfg)
{
    unsigned char md[SHA_DIGEST_LENGTH];

    SHA1((const unsigned char *)script, strlen(script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(st.sha + 2 * i, 3, "%02x", md[i]);
    st.backoff_ms = BACKOFF_MIN_MS;
    (void)cfg;
    return 0;
}

static void store_stop(void)
{
    st.stopping = true;
    if (st.ac) {
        st.freeing = true;
        redisAsyncFree(st.ac);
        st.freeing = false;
        st.ac = NULL;
    }
    tp_lease_set_store_up(false);
}

static const struct tp_ctl_service store_service = {
    .name = "rate_limit_store",
    .prepare = store_prepare,
    .configure = store_configure,
    .on_cqe = store_cqe,
    .tick = store_tick,
    .stop = store_stop,
};

int tp_rlstore_register(void)
{
    st.svc = tp_ctl_service_register(&store_service);
    if (st.svc < 0)
        return -1;
    tp_lease_set_notify(ask_notify);
    return 0;
}
