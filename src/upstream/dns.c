/* SPDX-License-Identifier: MIT */
/*
 * Service discovery by DNS (upstreams[].endpoints[].address: host:port), a
 * service of the control thread. [control]
 *
 * c-ares resolves; its sockets are polled from the control thread's ring:
 * c-ares says through its socket-state callback which sockets it wants to
 * read or write, each gets a one-shot POLL_ADD on the control ring, and a
 * completion hands the socket back to ares_process_fd(). Query timeouts are
 * driven from the control loop's tick (at most 100 ms apart). No shard ever
 * sees any of this: a shard only adopts the snapshot an answer produced.
 *
 * Each name is queried for A and AAAA at once (ares_getaddrinfo, DNS only,
 * /etc/hosts not consulted) at start, right after every reload, then every
 * resolve_every, or sooner when the answer's smallest TTL is shorter (never
 * more often than once a second for TTL-driven queries). A good answer is
 * stored as the name's address set (sorted, in the registry of rt/snapshot);
 * when it differs from the last one the control thread publishes a snapshot
 * rebuilt from the current configuration (tp_ctl_republish), once per loop
 * iteration whatever the number of answers. A failed or empty answer keeps
 * the last good set, counts in turnpike_dns_failures_total and is tried
 * again after min(resolve_every, 5 s); a name that never resolved leaves its
 * upstream without those endpoints.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>

#include <turnpike/config.h>
#include <turnpike/log.h>

#include "rt/control.h"
#include "rt/snapshot.h"
#include "upstream/dns.h"

enum dns_op { OP_POLL = 0 };

#define MAX_SOCKS     64   /* c-ares sockets at a time (one UDP socket per server, TCP on truncation) */
#define TTL_FLOOR_MS  1000 /* TTL-driven queries at most once a second */
#define RETRY_MAX_MS  5000 /* a failed name is asked again after min(resolve_every, this) */
#define RESOLVE_TRIES 2    /* tries per server (c-ares doubles the timeout each round) */

/* a name of an upstream, as the current configuration has it */
struct dns_name {
    char *upstream;
    char *name; /* host:port */
    char *host;
    uint16_t port;
    uint64_t every_ms;
    uint64_t next_ms; /* next query at */
    uint32_t qid;     /* query in flight (0 = none) */
    bool failing;     /* the last answer failed (logged once until it resolves again) */
    bool answered;    /* an answer (or a failure) came for this configuration's name */
};

/* a socket c-ares asked to have watched */
struct dns_sock {
    int fd;       /* -1: free, or closed while its poll is still in flight */
    bool rd, wr;  /* what c-ares wants */
    bool armed;   /* a POLL_ADD is in flight */
    unsigned ev;  /* its events */
    uint64_t ud;  /* its user_data, to remove it */
    uint32_t seq; /* polls armed on the slot: with the index, the user_data of one poll only */
    bool removing;
};

static struct {
    int svc;
    bool lib;
    ares_channel ch;
    bool have_ch;
    struct dns_name *names;
    size_t n_names;
    struct dns_sock socks[MAX_SOCKS];
    uint32_t last_qid;
    bool dirty; /* a set changed and is not published yet */
} dns = {.svc = -1};

/* ---- sockets: c-ares' wishes on the control ring ---- */

static void sock_arm(uint32_t i)
{
    struct dns_sock *so = &dns.socks[i];
    unsigned ev = (so->rd ? POLLIN : 0) | (so->wr ? POLLOUT : 0);

    if (so->fd < 0 || !ev)
        return;
    if (so->armed) {
        /* a poll for other events is in flight: remove it, re-arm on its completion */
        if ((so->ev & ev) != ev && !so->removing) {
            struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
            io_uring_prep_poll_remove(sqe, so->ud);
            so->removing = true;
        }
        return;
    }
    /* slot = index | seq << 8: a POLL_REMOVE can only ever find the poll it was meant for */
    struct io_uring_sqe *sqe = tp_ctl_sqe(dns.svc, OP_POLL, i | (++so->seq << 8));
    io_uring_prep_poll_add(sqe, so->fd, ev);
    so->ud = sqe->user_data;
    so->ev = ev;
    so->armed = true;
    so->removing = false;
}

/* c-ares: socket <fd> is to be watched for reading and/or writing, or no longer (both 0) */
static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    uint32_t i, free_i = MAX_SOCKS;

    (void)data;
    for (i = 0; i < MAX_SOCKS; i++) {
        if (dns.socks[i].fd == fd)
            break;
        if (free_i == MAX_SOCKS && dns.socks[i].fd < 0 && !dns.socks[i].armed)
            free_i = i;
    }
    if (i == MAX_SOCKS) {
        if (!readable && !writable)
            return;
        if (free_i == MAX_SOCKS) {
            tp_err("dns: more than %d resolver sockets; a query will time out", MAX_SOCKS);
            return;
        }
        i = free_i;
        dns.socks[i].fd = fd;
    }
    struct dns_sock *so = &dns.socks[i];
    so->rd = readable;
    so->wr = writable;
    if (!readable && !writable) {
        /* closed by c-ares: the slot is free once its poll completed */
        so->fd = -1;
        if (so->armed && !so->removing) {
            struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
            io_uring_prep_poll_remove(sqe, so->ud);
            so->removing = true;
        }
        return;
    }
    sock_arm(i);
}

static void dns_on_cqe(unsigned op, uint32_t ud_slot, int res)
{
    uint32_t slot = ud_slot & 0xff;

    if (op != OP_POLL || slot >= MAX_SOCKS)
        return;
    struct dns_sock *so = &dns.socks[slot];
    int fd = so->fd;

    so->armed = false;
    so->removing = false;
    if (fd < 0 || !dns.have_ch)
        return;
    if (res > 0) {
        bool rd = res & (POLLIN | POLLERR | POLLHUP), wr = res & (POLLOUT | POLLERR | POLLHUP);
        ares_process_fd(dns.ch, rd ? fd : ARES_SOCKET_BAD, wr ? fd : ARES_SOCKET_BAD);
    }
    /* still wanted (c-ares may have closed it, or reused the slot meanwhile) */
    if (so->fd == fd && !so->armed)
        sock_arm(slot);
}

/* ---- answers ---- */

static struct dns_name *name_by_qid(uint32_t qid)
{
    for (size_t i = 0; i < dns.n_names; i++)
        if (dns.names[i].qid == qid)
            return &dns.names[i];
    return NULL;
}

static struct tp_upstream_state *upstream_state(const char *name)
{
    struct tp_snapshot *s = tp_snapshot_current;
    for (size_t u = 0; s && u < s->n_ups; u++)
        if (strcmp(s->ups[u].st->name, name) == 0)
            return s->ups[u].st;
    return NULL;
}

static int addr_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tp_addr *)a)->text, ((const struct tp_addr *)b)->text);
}

/* <n> as an address with <port>; false for a family that is neither */
static bool addr_of(const struct ares_addrinfo_node *n, uint16_t port, struct tp_addr *a)
{
    char ip[INET6_ADDRSTRLEN];

    memset(a, 0, sizeof(*a));
    if (n->ai_family == AF_INET && n->ai_addrlen >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
        memcpy(sin, n->ai_addr, sizeof(*sin));
        sin->sin_port = htons(port);
        a->len = sizeof(*sin);
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(a->text, sizeof(a->text), "%s:%u", ip, port);
        return true;
    }
    if (n->ai_family == AF_INET6 && n->ai_addrlen >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
        memcpy(sin6, n->ai_addr, sizeof(*sin6));
        sin6->sin6_port = htons(port);
        a->len = sizeof(*sin6);
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(a->text, sizeof(a->text), "[%s]:%u", ip, port);
        return true;
    }
    return false;
}

static void name_failed(struct dns_name *dn, const char *why)
{
    struct tp_upstream_state *st = upstream_state(dn->upstream);
    size_t n;

    if (st)
        st->dns_failures++;
    dn->next_ms = tp_ctl_now_ms() + (dn->every_ms < RETRY_MAX_MS ? dn->every_ms : RETRY_MAX_MS);
    if (dn->failing)
        return;
    dn->failing = true;
    if (tp_resolved_get(dn->upstream, dn->name, &n))
        tp_warn("upstream %s: %s does not resolve (%s); its last %zu address%s stay", dn->upstream, dn->name,
                why, n, n == 1 ? "" : "es");
    else
        tp_warn("upstream %s: %s does not resolve (%s); it has no endpoints until it does", dn->upstream,
                dn->name, why);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    struct dns_name *dn = name_by_qid((uint32_t)(uintptr_t)arg);
    struct tp_addr *addrs = NULL;
    size_t n = 0, cap = 0;
    int64_t ttl_s = -1;

    (void)timeouts;
    if (!dn)
        goto out; /* the name left the configuration meanwhile */
    dn->qid = 0;
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        dn->next_ms = 0; /* the channel was replaced (reload): ask the new one */
        goto out;
    }
    dn->answered = true;
    if (status != ARES_SUCCESS) {
        name_failed(dn, ares_strerror(status));
        goto out;
    }
    for (struct ares_addrinfo_node *nd = res ? res->nodes : NULL; nd; nd = nd->ai_next) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct tp_addr *na = realloc(addrs, sizeof(*na) * ncap);
            if (!na)
                break;
            addrs = na;
            cap = ncap;
        }
        if (addr_of(nd, dn->port, &addrs[n])) {
            n++;
            if (ttl_s < 0 || nd->ai_ttl < ttl_s)
                ttl_s = nd->ai_ttl < 0 ? 0 : nd->ai_ttl;
        }
    }
    for (struct ares_addrinfo_cname *cn = res ? res->cnames : NULL; cn; cn = cn->next)
        if (ttl_s < 0 || cn->ttl < ttl_s)
            ttl_s = cn->ttl < 0 ? 0 : cn->ttl;
    if (n == 0) {
        name_failed(dn, "no A or AAAA record");
        goto out;
    }
    /* a set: sorted, each address once */
    qsort(addrs, n, sizeof(*addrs), addr_cmp);
    size_t u = 1;
    for (size_t i = 1; i < n; i++)
        if (strcmp(addrs[i].text, addrs[u - 1].text) != 0)
            addrs[u++] = addrs[i];
    n = u;

    uint64_t next = dn->every_ms, ttl_ms = (uint64_t)ttl_s * 1000;
    if (ttl_ms < TTL_FLOOR_MS)
        ttl_ms = TTL_FLOOR_MS;
    if (ttl_ms < next)
        next = ttl_ms;
    dn->next_ms = tp_ctl_now_ms() + next;
    if (dn->failing)
        tp_notice("upstream %s: %s resolves again", dn->upstream, dn->name);
    dn->failing = false;

    int r = tp_resolved_update(dn->upstream, dn->name, addrs, n);
    if (r < 0) {
        tp_err("upstream %s: %s: out of memory storing its addresses", dn->upstream, dn->name);
        dn->next_ms = tp_ctl_now_ms() + TTL_FLOOR_MS;
    } else if (r > 0) {
        char list[512];
        size_t len = 0;
        list[0] = 0;
        for (size_t i = 0; i < n && len < sizeof(list); i++)
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", i ? ", " : "", addrs[i].text);
        tp_info("upstream %s: %s resolves to %s (ttl %llds)", dn->upstream, dn->name, list, (long long)ttl_s);
        dns.dirty = true;
    }
out:
    free(addrs);
    if (res)
        ares_freeaddrinfo(res);
}

static void query(struct dns_name *dn)
{
    struct ares_addrinfo_hints hints;

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC; /* A and AAAA */
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = ARES_AI_NOSORT; /* the set is sorted here; RFC 6724 order means nothing to a balancer */
    if (++dns.last_qid == 0)
        dns.last_qid = 1;
    dn->qid = dns.last_qid;
    /* the answer may come inside this call (an error found at once) */
    ares_getaddrinfo(dns.ch, dn->host, NULL, &hints, on_answer, (void *)(uintptr_t)dn->qid);
}

/* ---- the channel ---- */

static void channel_close(void)
{
    if (!dns.have_ch)
        return;
    dns.have_ch = false; /* completions of its polls are ignored from here */
    ares_destroy(dns.ch);
    for (uint32_t i = 0; i < MAX_SOCKS; i++) {
        struct dns_sock *so = &dns.socks[i];
        if (so->armed && !so->removing) {
            struct io_uring_sqe *sqe = tp_ctl_sqe(-1, 0, 0);
            io_uring_prep_poll_remove(sqe, so->ud);
            so->removing = true;
        }
        so->fd = -1;
    }
}

/* A channel for <cfg>'s resolver section: its servers, or /etc/resolv.conf's (read now). */
static int channel_open(const struct tp_config *cfg)
{
    struct ares_options o;
    char csv[64 * 32];
    size_t len = 0;
    int r;

    memset(&o, 0, sizeof(o));
    o.sock_state_cb = sock_state_cb;
    o.timeout = (int)cfg->resolver.timeout_ms;
    o.tries = RESOLVE_TRIES;
    o.lookups = (char *)"b"; /* DNS only: names of endpoints are not looked up in /etc/hosts */
    r = ares_init_options(&dns.ch, &o,
                          ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS);
    if (r != ARES_SUCCESS) {
        tp_err("dns: cannot set up the resolver: %s", ares_strerror(r));
        return -1;
    }
    dns.have_ch = true;
    if (cfg->resolver.n_servers) {
        for (size_t i = 0; i < cfg->resolver.n_servers && len < sizeof(csv); i++)
            len += (size_t)snprintf(csv + len, sizeof(csv) - len, "%s%s", i ? "," : "",
                                    cfg->resolver.servers[i].text);
        r = ares_set_servers_ports_csv(dns.ch, csv);
        if (r != ARES_SUCCESS) {
            tp_err("dns: cannot use resolver.servers %s: %s", csv, ares_strerror(r));
            channel_close();
            return -1;
        }
    }
    return 0;
}

/* ---- the service ---- */

static void names_free(struct dns_name *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(names[i].upstream);
        free(names[i].name);
        free(names[i].host);
    }
    free(names);
}

/* The names of <cfg>, keeping what is known of those it had already; every
 * one is asked at once (start and reload). */
static void dns_configure(const struct tp_config *cfg)
{
    struct dns_name *names = NULL;
    size_t n = 0, cap = 0;

    for (size_t u = 0; u < cfg->n_upstreams; u++) {
        const struct tp_cfg_upstream *uc = &cfg->upstreams[u];
        for (size_t e = 0; e < uc->n_endpoints; e++) {
            const struct tp_cfg_endpoint *ec = &uc->endpoints[e];
            if (!ec->name)
                continue;
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                struct dns_name *nn = realloc(names, sizeof(*nn) * ncap);
                if (!nn) {
                    tp_err("dns: out of memory; names of upstream %s are not resolved", uc->name);
                    continue;
                }
                names = nn;
                cap = ncap;
            }
            struct dns_name *dn = &names[n];
            memset(dn, 0, sizeof(*dn));
            dn->upstream = strdup(uc->name);
            dn->name = strdup(ec->name);
            dn->host = strdup(ec->host);
            if (!dn->upstream || !dn->name || !dn->host) {
                free(dn->upstream);
                free(dn->name);
                free(dn->host);
                tp_err("dns: out of memory; %s of upstream %s is not resolved", ec->name, uc->name);
                continue;
            }
            dn->port = ec->port;
            dn->every_ms = uc->resolve_every_ms;
            for (size_t k = 0; k < dns.n_names; k++)
                if (strcmp(dns.names[k].upstream, uc->name) == 0 && strcmp(dns.names[k].name, ec->name) == 0)
                    dn->failing = dns.names[k].failing;
            n++;
        }
    }
    /* queries in flight are dropped with the channel; a new channel reads
     * the resolver section (or /etc/resolv.conf) again */
    names_free(dns.names, dns.n_names);
    dns.names = names;
    dns.n_names = n;
    channel_close();
    tp_resolved_prune(cfg);
    if (n && channel_open(cfg) < 0)
        tp_err("dns: %zu endpoint name%s will not be resolved", n, n == 1 ? "" : "s");
}

static void dns_tick(uint64_t now_ms, bool draining)
{
    if (!dns.have_ch)
        return;
    /* timeouts and retransmissions */
    ares_process_fd(dns.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    if (!draining)
        for (size_t i = 0; i < dns.n_names; i++)
            if (!dns.names[i].qid && now_ms >= dns.names[i].next_ms)
                query(&dns.names[i]);
    if (dns.dirty && tp_ctl_republish("resolved endpoints changed") != -EAGAIN)
        dns.dirty = false; /* published, or logged and left to the next answer */
}

/* Start-up is done once every name has its first answer, good or not, and
 * what changed is published: traffic to a named upstream does not meet a
 * 503 just because the gateway was quicker than its DNS server. */
static bool dns_ready(void)
{
    for (size_t i = 0; i < dns.n_names; i++)
        if (!dns.names[i].answered)
            return !dns.have_ch; /* no channel: nothing will answer */
    return !dns.dirty;
}

static int dns_prepare(const struct tp_config *cfg)
{
    int r;

    (void)cfg;
    for (uint32_t i = 0; i < MAX_SOCKS; i++)
        dns.socks[i].fd = -1;
    r = ares_library_init(ARES_LIB_INIT_ALL);
    if (r != ARES_SUCCESS) {
        fprintf(stderr, "turnpike: cannot initialise c-ares: %s\n", ares_strerror(r));
        return -1;
    }
    dns.lib = true;
    return 0;
}

static void dns_stop(void)
{
    channel_close();
    names_free(dns.names, dns.n_names);
    dns.names = NULL;
    dns.n_names = 0;
    if (dns.lib)
        ares_library_cleanup();
    dns.lib = false;
}

static const struct tp_ctl_service dns_service = {
    .name = "dns",
    .prepare = dns_prepare,
    .configure = dns_configure,
    .on_cqe = dns_on_cqe,
    .tick = dns_tick,
    .stop = dns_stop,
    .ready = dns_ready,
};

int tp_dns_register(void)
{
    dns.svc = tp_ctl_service_register(&dns_service);
    return dns.svc < 0 ? -1 : 0;
}
