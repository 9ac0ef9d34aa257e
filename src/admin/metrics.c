/* SPDX-License-Identifier: MIT */
/*
 * GET /metrics and GET /config. [control]
 *
 * Every counter is written by one shard in its own memory (per-shard rows in
 * the registry objects, see rt/snapshot.h) and summed here, on the control
 * thread, when the endpoint is scraped: the request path never touches a
 * cache line another shard writes. Label values come from the configuration
 * only (route, upstream, endpoint and listener names), so the series count
 * is bounded by the config, never by request data.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <turnpike/breaker.h>
#include <turnpike/clock.h>
#include <turnpike/lease.h>
#include <turnpike/ratelimit.h>

#include "admin/admin.h"
#include "http/accesslog.h"
#include "http/request.h"
#include "rt/control.h"
#include "rt/runtime.h"
#include "rt/snapshot.h"
#include "store/rlstore.h"

static const char *const class_label[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

/* Label values: backslash, double quote and newline escaped (exposition format 0.0.4). */
static void label(struct tp_abuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            tp_abuf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            tp_abuf_put(b, "\\n", 2);
        else
            tp_abuf_put(b, s, 1);
    }
}

static void family(struct tp_abuf *b, const char *name, const char *type, const char *help)
{
    tp_abuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist_sum(struct tp_hist *out, const struct tp_hist *in)
{
    for (unsigned i = 0; i <= TP_HIST_BUCKETS; i++)
        out->bucket[i] += tp_stat_get(&in->bucket[i]);
    out->sum_us += tp_stat_get(&in->sum_us);
    out->count += tp_stat_get(&in->count);
}

/* Writes the _bucket/_sum/_count series of one histogram; <labels> is "k=\"v\"," or "". */
static void hist_render(struct tp_abuf *b, const char *name, const char *labels, const struct tp_hist *h)
{
    uint64_t cum = 0;
    for (unsigned i = 0; i < TP_HIST_BUCKETS; i++) {
        cum += h->bucket[i];
        uint64_t us = tp_hist_bounds_us[i];
        tp_abuf_printf(b, "%s_bucket{%sle=\"%llu.%06llu\"} %llu\n", name, labels,
                       (unsigned long long)(us / 1000000), (unsigned long long)(us % 1000000),
                       (unsigned long long)cum);
    }
    cum += h->bucket[TP_HIST_BUCKETS];
    tp_abuf_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)cum);
    /* _sum and _count take the labels without the trailing comma the buckets need */
    int n = (int)strlen(labels);
    if (n && labels[n - 1] == ',')
        n--;
    tp_abuf_printf(b, "%s_sum{%.*s} %llu.%06llu\n", name, n, labels,
                   (unsigned long long)(h->sum_us / 1000000), (unsigned long long)(h->sum_us % 1000000));
    tp_abuf_printf(b, "%s_count{%.*s} %llu\n", name, n, labels, (unsigned long long)h->count);
}

/* "k=\"v\"," built with escaping, into a fixed buffer via an abuf */
static void labels_of(struct tp_abuf *tmp, const char *k1, const char *v1, const char *k2, const char *v2)
{
    tmp->len = 0;
    tp_abuf_printf(tmp, "%s=\"", k1);
    label(tmp, v1);
    tp_abuf_put(tmp, "\",", 2);
    if (k2) {
        tp_abuf_printf(tmp, "%s=\"", k2);
        label(tmp, v2);
        tp_abuf_put(tmp, "\",", 2);
    }
    tp_abuf_put(tmp, "", 1);
}

/* One sample line "name{labels} value" from labels built by labels_of(). */
static void sample(struct tp_abuf *b, const char *name, const struct tp_abuf *lb, unsigned long long v)
{
    /* labels_of() leaves a trailing "," and a NUL: neither belongs in the braces */
    tp_abuf_printf(b, "%s{%.*s} %llu\n", name, (int)(lb->len - 2), lb->data, v);
}

/* The per-listener counter at <off> in a shard's slot of struct tp_lis_stats
 * (LIS_FIELD), summed over the <ns> shards: one sample per listener. */
#define LIS_FIELD(f) (offsetof(struct tp_lis_stats, shard[0].f) - offsetof(struct tp_lis_stats, shard))
static void lis_family(struct tp_abuf *b, struct tp_abuf *lb, unsigned ns, const char *name, const char *type,
                       const char *help, size_t off)
{
    family(b, name, type, help);
    for (struct tp_lis_stats *ls = tp_lis_stats_list(); ls; ls = ls->next) {
        uint64_t v = 0;
        for (unsigned sh = 0; sh < ns; sh++)
            v += atomic_load_explicit((_Atomic uint64_t *)((char *)&ls->shard[sh] + off),
                                      memory_order_relaxed);
        labels_of(lb, "listener", ls->name, NULL, NULL);
        sample(b, name, lb, (unsigned long long)v);
    }
}

/* A counter family with one series per endpoint, summed over the shards from
 * the tp_stat_t at <field> of struct tp_ep_shard. */
static void endpoint_family(struct tp_abuf *b, struct tp_abuf *lb, const struct tp_snapshot *s, unsigned ns,
                            const char *name, const char *type, const char *help, size_t field)
{
    family(b, name, type, help);
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_endpoint_state *st = s->ups[u].eps[e].st;
            uint64_t v = 0;
            for (unsigned sh = 0; sh < ns; sh++)
                v += tp_stat_get((const tp_stat_t *)((const char *)&st->shard[sh] + field));
            labels_of(lb, "upstream", st->upstream, "endpoint", st->addr.text);
            sample(b, name, lb, v);
        }
}

void tp_metrics_render(struct tp_abuf *b)
{
    struct tp_snapshot *s = tp_snapshot_current;
    unsigned ns = tp_rt.n_shards;
    struct tp_abuf lb = {0};
    uint64_t now_ms = tp_clock_ms();

    if (!s)
        return;

    /* ---- requests per route ---- */
    family(b, "turnpike_requests_total", "counter", "Requests answered, by route and status class.");
    for (size_t i = 0; i <= s->n_routes; i++) {
        const char *name = i < s->n_routes ? s->routes[i].st->name : "unmatched";
        for (unsigned k = 0; k < 5; k++) {
            uint64_t v = 0;
            for (unsigned sh = 0; sh < ns; sh++)
                v += i < s->n_routes ? tp_stat_get(&s->routes[i].st->stats[sh].requests[k])
                                     : tp_stat_get(&tp_http_shard(tp_rt.shards[sh])->unmatched.requests[k]);
            tp_abuf_put(b, "turnpike_requests_total{route=\"", 31);
            label(b, name);
            tp_abuf_printf(b, "\",code=\"%s\"} %llu\n", class_label[k], (unsigned long long)v);
        }
    }
    family(b, "turnpike_request_duration_seconds", "histogram",
           "Time from a request's first byte to its response queued in full, by route.");
    for (size_t i = 0; i <= s->n_routes; i++) {
        struct tp_hist h;
        memset(&h, 0, sizeof(h));
        for (unsigned sh = 0; sh < ns; sh++)
            hist_sum(&h, i < s->n_routes ? &s->routes[i].st->stats[sh].duration
                                         : &tp_http_shard(tp_rt.shards[sh])->unmatched.duration);
        labels_of(&lb, "route", i < s->n_routes ? s->routes[i].st->name : "unmatched", NULL, NULL);
        hist_render(b, "turnpike_request_duration_seconds", lb.data, &h);
    }
    family(b, "turnpike_ratelimit_rejected_total", "counter",
           "Requests answered 429 by a route's rate limit.");
    for (size_t i = 0; i < s->n_routes; i++) {
        uint64_t v = 0;
        for (unsigned sh = 0; sh < ns; sh++)
            v += tp_stat_get(&s->routes[i].st->stats[sh].ratelimited);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_ratelimit_rejected_total", &lb, v);
    }
    family(b, "turnpike_auth_rejected_total", "counter",
           "Requests refused by a route's auth, by reason (missing, invalid, expired, forbidden).");
    for (size_t i = 0; i < s->n_routes; i++) {
        static const char *const reasons[4] = {"missing", "invalid", "expired", "forbidden"};
        if (!s->routes[i].cfg->auth)
            continue;
        for (unsigned k = 0; k < 4; k++) {
            uint64_t v = 0;
            for (unsigned sh = 0; sh < ns; sh++)
                v += tp_stat_get(&s->routes[i].st->stats[sh].auth_rejected[k]);
            tp_abuf_put(b, "turnpike_auth_rejected_total{route=\"", 36);
            label(b, s->routes[i].st->name);
            tp_abuf_printf(b, "\",reason=\"%s\"} %llu\n", reasons[k], (unsigned long long)v);
        }
    }
    family(b, "turnpike_grpc_responses_total", "counter",
           "gRPC calls answered, by route and grpc-status (0..16, other); a series appears with its first "
           "call.");
    for (size_t i = 0; i <= s->n_routes; i++) {
        const char *name = i < s->n_routes ? s->routes[i].st->name : "unmatched";
        for (unsigned k = 0; k < 18; k++) {
            uint64_t v = 0;
            for (unsigned sh = 0; sh < ns; sh++)
                v += i < s->n_routes ? tp_stat_get(&s->routes[i].st->stats[sh].grpc[k])
                                     : tp_stat_get(&tp_http_shard(tp_rt.shards[sh])->unmatched.grpc[k]);
            if (!v)
                continue; /* 18 series per route for routes that carry no gRPC would be noise */
            tp_abuf_put(b, "turnpike_grpc_responses_total{route=\"", 37);
            label(b, name);
            if (k < 17)
                tp_abuf_printf(b, "\",grpc_status=\"%u\"} %llu\n", k, (unsigned long long)v);
            else
                tp_abuf_printf(b, "\",grpc_status=\"other\"} %llu\n", (unsigned long long)v);
        }
    }
    family(b, "turnpike_tunnels_active", "gauge", "WebSocket/Upgrade tunnels open now, by route.");
    for (size_t i = 0; i < s->n_routes; i++) {
        uint64_t v = 0;
        for (unsigned sh = 0; sh < ns; sh++)
            v += tp_stat_get(&s->routes[i].st->stats[sh].tunnels_active);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_tunnels_active", &lb, (int64_t)v < 0 ? 0 : v);
    }
    family(b, "turnpike_tunnels_total", "counter",
           "WebSocket/Upgrade tunnels opened (101 relayed), by route.");
    for (size_t i = 0; i < s->n_routes; i++) {
        uint64_t v = 0;
        for (unsigned sh = 0; sh < ns; sh++)
            v += tp_stat_get(&s->routes[i].st->stats[sh].tunnels_total);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_tunnels_total", &lb, v);
    }
    family(b, "turnpike_ratelimit_table_full_total", "counter",
           "Rate-limit decisions taken by a route's shared overflow bucket because its key table was full.");
    for (size_t i = 0; i < s->n_routes; i++) {
        if (!s->routes[i].rl)
            continue;
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_ratelimit_table_full_total", &lb,
               (unsigned long long)(tp_ratelimit_table_full_total(s->routes[i].rl)));
    }

    family(b, "turnpike_ratelimit_fallback_total", "counter",
           "Requests of a scope: global rate limit decided by rate_limit_store.on_failure (store down).");
    for (size_t i = 0; i < s->n_routes; i++) {
        uint64_t v = 0;
        if (!s->routes[i].lease)
            continue;
        for (unsigned sh = 0; sh < ns; sh++)
            v += tp_stat_get(&s->routes[i].st->stats[sh].rl_fallback);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_ratelimit_fallback_total", &lb, v);
    }
    family(b, "turnpike_ratelimit_leases_total", "counter",
           "Token leases a scope: global rate limit asked the store for.");
    for (size_t i = 0; i < s->n_routes; i++) {
        struct tp_lease_stats ls;
        if (!s->routes[i].lease)
            continue;
        tp_lease_stats(s->routes[i].lease, &ls);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_ratelimit_leases_total", &lb, ls.asks);
    }
    family(b, "turnpike_ratelimit_leased_tokens_total", "counter",
           "Tokens a scope: global rate limit received from the store.");
    for (size_t i = 0; i < s->n_routes; i++) {
        struct tp_lease_stats ls;
        if (!s->routes[i].lease)
            continue;
        tp_lease_stats(s->routes[i].lease, &ls);
        labels_of(&lb, "route", s->routes[i].st->name, NULL, NULL);
        sample(b, "turnpike_ratelimit_leased_tokens_total", &lb, ls.granted);
    }
    {
        struct tp_rlstore_stats ss;
        tp_rlstore_stats(&ss);
        if (ss.configured) {
            family(b, "turnpike_ratelimit_store_up", "gauge",
                   "1 while the rate_limit_store answers, 0 while global limits fall back to on_failure.");
            tp_abuf_printf(b, "turnpike_ratelimit_store_up %d\n", ss.up ? 1 : 0);
            family(b, "turnpike_ratelimit_store_errors_total", "counter",
                   "Rate limit store failures: connections refused or lost, timeouts, error replies.");
            tp_abuf_printf(b, "turnpike_ratelimit_store_errors_total %llu\n", (unsigned long long)ss.errors);
            family(b, "turnpike_ratelimit_store_calls_total", "counter",
                   "Lease calls the rate limit store answered.");
            tp_abuf_printf(b, "turnpike_ratelimit_store_calls_total %llu\n", (unsigned long long)ss.calls);
        }
    }

    /* ---- upstreams and endpoints ---- */
    family(b, "turnpike_upstream_requests_total", "counter",
           "Responses from upstream endpoints (every attempt, retries included), by status class.");
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_endpoint_state *st = s->ups[u].eps[e].st;
            labels_of(&lb, "upstream", st->upstream, "endpoint", st->addr.text);
            for (unsigned k = 0; k < 5; k++) {
                uint64_t v = 0;
                for (unsigned sh = 0; sh < ns; sh++)
                    v += tp_stat_get(&st->shard[sh].requests[k]);
                tp_abuf_printf(b, "turnpike_upstream_requests_total{%scode=\"%s\"} %llu\n", lb.data,
                               class_label[k], (unsigned long long)v);
            }
        }
    endpoint_family(b, &lb, s, ns, "turnpike_upstream_connect_failures_total", "counter",
                    "Failed or timed-out upstream connects.", offsetof(struct tp_ep_shard, connect_failures));
    endpoint_family(b, &lb, s, ns, "turnpike_upstream_connections_opened_total", "counter",
                    "Upstream connections opened.", offsetof(struct tp_ep_shard, connects));
    endpoint_family(b, &lb, s, ns, "turnpike_upstream_pool_idle_connections", "gauge",
                    "Idle keepalive connections pooled, all shards.",
                    offsetof(struct tp_ep_shard, idle_count));
    endpoint_family(b, &lb, s, ns, "turnpike_upstream_h2_streams_active", "gauge",
                    "Streams on HTTP/2 upstream connections (open or waiting for one), all shards.",
                    offsetof(struct tp_ep_shard, h2_streams));
    family(b, "turnpike_upstream_response_duration_seconds", "histogram",
           "Time from an attempt's start to the upstream response's end, by endpoint.");
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_endpoint_state *st = s->ups[u].eps[e].st;
            struct tp_hist h;
            memset(&h, 0, sizeof(h));
            for (unsigned sh = 0; sh < ns; sh++)
                hist_sum(&h, &st->shard[sh].duration);
            labels_of(&lb, "upstream", st->upstream, "endpoint", st->addr.text);
            hist_render(b, "turnpike_upstream_response_duration_seconds", lb.data, &h);
        }
    family(b, "turnpike_circuit_state", "gauge",
           "Circuit breaker per endpoint: 0 closed, 1 open, 2 half-open.");
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_rt_endpoint *ep = &s->ups[u].eps[e];
            labels_of(&lb, "upstream", ep->st->upstream, "endpoint", ep->st->addr.text);
            sample(b, "turnpike_circuit_state", &lb,
                   (unsigned long long)(ep->breaker ? tp_breaker_state(ep->breaker, now_ms) : 0));
        }
    family(b, "turnpike_endpoint_healthy", "gauge", "Endpoint health: 1 healthy, 0 not.");
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            struct tp_endpoint_state *st = s->ups[u].eps[e].st;
            labels_of(&lb, "upstream", st->upstream, "endpoint", st->addr.text);
            sample(b, "turnpike_endpoint_healthy", &lb, atomic_load(&st->healthy) ? 1 : 0);
        }
    family(b, "turnpike_dns_endpoint_info", "gauge",
           "Endpoints resolved from a name: the name each address came from (always 1).");
    for (size_t u = 0; u < s->n_ups; u++)
        for (size_t e = 0; e < s->ups[u].n_eps; e++) {
            const struct tp_rt_endpoint *ep = &s->ups[u].eps[e];
            if (!ep->cfg->name)
                continue;
            labels_of(&lb, "upstream", ep->st->upstream, "endpoint", ep->st->addr.text);
            tp_abuf_printf(b, "turnpike_dns_endpoint_info{%sname=\"", lb.data);
            label(b, ep->cfg->name);
            tp_abuf_printf(b, "\"} 1\n");
        }
    family(
        b, "turnpike_dns_failures_total", "counter",
        "Failed or empty DNS answers for the endpoint names of an upstream (the last good addresses stay).");
    for (size_t u = 0; u < s->n_ups; u++) {
        bool names = false;
        for (size_t e = 0; e < s->ups[u].cfg->n_endpoints; e++)
            names |= s->ups[u].cfg->endpoints[e].name != NULL;
        if (!names)
            continue;
        labels_of(&lb, "upstream", s->ups[u].st->name, NULL, NULL);
        sample(b, "turnpike_dns_failures_total", &lb, (unsigned long long)s->ups[u].st->dns_failures);
    }
    family(b, "turnpike_upstream_inflight_requests", "gauge",
           "Requests in flight per upstream (counted when max_concurrent_requests is set).");
    for (size_t u = 0; u < s->n_ups; u++) {
        labels_of(&lb, "upstream", s->ups[u].st->name, NULL, NULL);
        sample(b, "turnpike_upstream_inflight_requests", &lb,
               (unsigned long long)(atomic_load(&s->ups[u].st->inflight)));
    }

    /* ---- connections ---- */
    lis_family(b, &lb, ns, "turnpike_connections_active", "gauge", "Open client connections, by listener.",
               LIS_FIELD(active));
    lis_family(b, &lb, ns, "turnpike_connections_total", "counter",
               "Client connections accepted, by listener.", LIS_FIELD(accepted));
    /* ---- HTTP/2 ---- */
    static const char *const goaway_reasons[TP_H2_GOAWAY_REASONS] = {
        "no_error",          "protocol_error",    "flow_control_error",
        "compression_error", "enhance_your_calm", "internal_error",
    };
    lis_family(b, &lb, ns, "turnpike_h2_streams_active", "gauge",
               "Open HTTP/2 streams of client connections, by listener.", LIS_FIELD(h2_streams));
    lis_family(b, &lb, ns, "turnpike_h2_resets_total", "counter",
               "HTTP/2 streams reset by clients or refused for excess, by listener.", LIS_FIELD(h2_resets));
    family(b, "turnpike_h2_goaway_total", "counter",
           "GOAWAY frames sent to HTTP/2 clients, by listener and error code (reason).");
    for (struct tp_lis_stats *ls = tp_lis_stats_list(); ls; ls = ls->next)
        for (unsigned k = 0; k < TP_H2_GOAWAY_REASONS; k++) {
            uint64_t v = 0;
            for (unsigned sh = 0; sh < ns; sh++)
                v += atomic_load_explicit(&ls->shard[sh].h2_goaway[k], memory_order_relaxed);
            labels_of(&lb, "listener", ls->name, "reason", goaway_reasons[k]);
            sample(b, "turnpike_h2_goaway_total", &lb, (unsigned long long)(v));
        }
    uint64_t rejected = 0, enobufs = 0, pool_dry = 0, active = 0, paused = 0, sqes = 0, cqes = 0, waits = 0;
    uint64_t window = 0, resident = 0, held = 0;
    for (unsigned sh = 0; sh < ns; sh++) {
        window += tp_stat_get(&tp_rt.shards[sh]->bufs_window);
        resident += tp_stat_get(&tp_rt.shards[sh]->bufs_dirty) * tp_rt.shards[sh]->bufs.size;
        held += tp_stat_get(&tp_rt.shards[sh]->recv_held);
        sqes += tp_stat_get(&tp_rt.shards[sh]->ring_sqes);
        cqes += tp_stat_get(&tp_rt.shards[sh]->ring_cqes);
        waits += tp_stat_get(&tp_rt.shards[sh]->ring_waits);
        rejected += tp_stat_get(&tp_rt.shards[sh]->rejected_conns);
        paused += tp_stat_get(&tp_rt.shards[sh]->accept_paused_n);
        enobufs += tp_stat_get(&tp_rt.shards[sh]->enobufs);
        pool_dry += tp_stat_get(&tp_rt.shards[sh]->pool_dry);
        active += tp_stat_get(&tp_http_shard(tp_rt.shards[sh])->active_requests);
    }
    family(b, "turnpike_connections_rejected_total", "counter",
           "Connections closed at accept: over limits.max_connections or what the open-files limit leaves "
           "room for, or while draining.");
    tp_abuf_printf(b, "turnpike_connections_rejected_total %llu\n", (unsigned long long)rejected);
    family(
        b, "turnpike_accept_paused_total", "counter",
        "Accepts that failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); accepting "
        "rests for 100 ms after each.");
    tp_abuf_printf(b, "turnpike_accept_paused_total %llu\n", (unsigned long long)paused);
    family(b, "turnpike_requests_active", "gauge", "Requests being served.");
    tp_abuf_printf(b, "turnpike_requests_active %lld\n", (long long)active);
    family(b, "turnpike_buffer_ring_exhausted_total", "counter",
           "Receives that found the provided-buffer ring empty (ENOBUFS) and waited for buffers; while the "
           "ring holds only a window of the pool this is how the window grows.");
    tp_abuf_printf(b, "turnpike_buffer_ring_exhausted_total %llu\n", (unsigned long long)enobufs);
    family(b, "turnpike_buffer_pool_exhausted_total", "counter",
           "Receives that found the ring empty with the whole receive-buffer pool in it: every buffer held.");
    tp_abuf_printf(b, "turnpike_buffer_pool_exhausted_total %llu\n", (unsigned long long)pool_dry);
    family(b, "turnpike_buffer_ring_window", "gauge",
           "Receive buffers the workers keep in their kernel buffer rings (grows with load, shrinks when "
           "quiet).");
    tp_abuf_printf(b, "turnpike_buffer_ring_window %llu\n", (unsigned long long)window);
    family(b, "turnpike_buffer_pool_resident_bytes", "gauge",
           "Receive buffer memory that may be resident (buffers used since their memory was last given "
           "back to the kernel), at most.");
    tp_abuf_printf(b, "turnpike_buffer_pool_resident_bytes %llu\n", (unsigned long long)resident);
    family(b, "turnpike_receive_held_bytes", "gauge",
           "Bytes received on connections whose reading is stopped because their peer is slower (a "
           "relay towards a slow reader, say), held in receive buffers or heap blocks until sent on.");
    tp_abuf_printf(b, "turnpike_receive_held_bytes %llu\n", (unsigned long long)held);
    family(b, "turnpike_ring_sqes_total", "counter",
           "Submission queue entries the workers prepared (every socket operation, cancel and close).");
    tp_abuf_printf(b, "turnpike_ring_sqes_total %llu\n", (unsigned long long)sqes);
    family(b, "turnpike_ring_cqes_total", "counter", "Completions the workers reaped.");
    tp_abuf_printf(b, "turnpike_ring_cqes_total %llu\n", (unsigned long long)cqes);
    family(b, "turnpike_ring_waits_total", "counter",
           "Worker loop iterations: each submits what was prepared and waits for completions (one "
           "io_uring_enter).");
    tp_abuf_printf(b, "turnpike_ring_waits_total %llu\n", (unsigned long long)waits);
    family(b, "turnpike_access_log_dropped_total", "counter",
           "Access log lines dropped because the log could not keep up.");
    tp_abuf_printf(b, "turnpike_access_log_dropped_total %llu\n", (unsigned long long)tp_accesslog_dropped());

    /* ---- configuration ---- */
    family(b, "turnpike_config_generation", "gauge", "Generation of the configuration in use (1 at start).");
    tp_abuf_printf(b, "turnpike_config_generation %llu\n", (unsigned long long)tp_ctl.generation);
    family(b, "turnpike_config_reloads_total", "counter", "Configuration reloads, by result.");
    tp_abuf_printf(b, "turnpike_config_reloads_total{result=\"success\"} %llu\n",
                   (unsigned long long)tp_ctl.reloads_ok);
    tp_abuf_printf(b, "turnpike_config_reloads_total{result=\"failure\"} %llu\n",
                   (unsigned long long)tp_ctl.reloads_failed);
    family(b, "turnpike_shards", "gauge", "Data-plane shards (worker threads).");
    tp_abuf_printf(b, "turnpike_shards %u\n", ns);
    family(b, "turnpike_build_info", "gauge", "Build information.");
    tp_abuf_printf(b, "turnpike_build_info{version=\"%s\"} 1\n", TP_VERSION);
    family(b, "turnpike_start_time_seconds", "gauge", "Start time of the process since the Unix epoch.");
    tp_abuf_printf(b, "turnpike_start_time_seconds %llu\n",
                   (unsigned long long)(tp_ctl.started_real_ns / 1000000000ull));
    tp_abuf_dispose(&lb);
}

/* ---- /config ---- */

static void rfc3339(char *out, size_t cap, uint64_t real_ns)
{
    time_t t = (time_t)(real_ns / 1000000000ull);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03lluZ", (unsigned long long)(real_ns / 1000000ull % 1000));
}

static const char *protocol_name(enum tp_upstream_protocol p)
{
    return p == TP_UPROTO_H2C ? "h2c" : p == TP_UPROTO_H2 ? "h2" : "http1";
}

static const char *balance_name(enum tp_balance b)
{
    return b == TP_BALANCE_LEAST_REQUEST ? "least_request" : b == TP_BALANCE_HASH ? "hash" : "round_robin";
}

void tp_config_render(struct tp_abuf *b)
{
    struct tp_snapshot *s = tp_snapshot_current;
    uint64_t now_ms = tp_clock_ms();
    char when[48];

    if (!s) {
        tp_abuf_printf(b, "{}");
        return;
    }
    rfc3339(when, sizeof(when), tp_ctl.loaded_at_real_ns);
    tp_abuf_printf(b, "{\"generation\":%llu,\"loaded_at\":\"%s\",\"source\":",
                   (unsigned long long)tp_ctl.generation, when);
    tp_abuf_json_str(b, tp_ctl.source ? tp_ctl.source : "");
    tp_abuf_printf(b, ",\"sha256\":\"");
    for (int i = 0; i < 32; i++)
        tp_abuf_printf(b, "%02x", tp_ctl.sha256[i]);
    tp_abuf_printf(b, "\",\"draining\":%s,\"workers\":%u", tp_ctl.draining ? "true" : "false",
                   tp_rt.n_shards);

    tp_abuf_printf(b, ",\"listeners\":[");
    for (size_t i = 0; i < s->cfg->n_listeners; i++) {
        tp_abuf_printf(b, "%s{\"name\":", i ? "," : "");
        tp_abuf_json_str(b, s->cfg->listeners[i].name);
        tp_abuf_printf(b, ",\"address\":");
        tp_abuf_json_str(b, s->cfg->listeners[i].addr.text);
        tp_abuf_printf(b, "}");
    }
    tp_abuf_printf(b, "],\"routes\":[");
    for (size_t i = 0; i < s->n_routes; i++) {
        const struct tp_cfg_route *rc = s->routes[i].cfg;
        tp_abuf_printf(b, "%s{\"name\":", i ? "," : "");
        tp_abuf_json_str(b, rc->name);
        tp_abuf_printf(b, ",\"match\":{\"host\":");
        if (rc->host)
            tp_abuf_json_str(b, rc->host);
        else
            tp_abuf_printf(b, "null");
        tp_abuf_printf(b, ",\"%s\":", rc->path_exact ? "path" : "path_prefix");
        tp_abuf_json_str(b, rc->path);
        tp_abuf_printf(b, ",\"methods\":");
        if (rc->methods) {
            tp_abuf_printf(b, "[");
            int first = 1;
            for (unsigned m = 0; m < 64; m++)
                if (rc->methods & (1ull << m)) {
                    tp_abuf_printf(b, "%s", first ? "" : ",");
                    tp_abuf_json_str(b, llhttp_method_name((llhttp_method_t)m));
                    first = 0;
                }
            tp_abuf_printf(b, "]");
        } else {
            tp_abuf_printf(b, "null");
        }
        tp_abuf_printf(b, ",\"headers\":{");
        for (size_t k = 0; k < rc->n_headers; k++) {
            tp_abuf_printf(b, "%s", k ? "," : "");
            tp_abuf_json_str(b, rc->headers[k].name);
            tp_abuf_printf(b, ":");
            tp_abuf_json_str(b, rc->headers[k].value);
        }
        tp_abuf_printf(b, "}}");
        if (rc->direct) {
            tp_abuf_printf(b, ",\"direct_response\":{\"status\":%u}", rc->direct->status);
        } else if (rc->n_split) {
            tp_abuf_printf(b, ",\"split\":[");
            for (size_t k = 0; k < rc->n_split; k++) {
                tp_abuf_printf(b, "%s{\"upstream\":", k ? "," : "");
                tp_abuf_json_str(b, s->cfg->upstreams[rc->split[k].upstream].name);
                tp_abuf_printf(b, ",\"weight\":%u}", rc->split[k].weight);
            }
            tp_abuf_printf(b, "]");
        } else {
            tp_abuf_printf(b, ",\"upstream\":");
            tp_abuf_json_str(b, s->cfg->upstreams[rc->upstream].name);
        }
        if (rc->rate_limit)
            tp_abuf_printf(b, ",\"rate_limit\":{\"tokens\":%llu,\"period_ms\":%llu,\"burst\":%llu}",
                           (unsigned long long)rc->rate_limit->tokens,
                           (unsigned long long)rc->rate_limit->period_ms,
                           (unsigned long long)rc->rate_limit->burst);
        tp_abuf_printf(b, "}");
    }
    tp_abuf_printf(b, "],\"upstreams\":[");
    for (size_t u = 0; u < s->n_ups; u++) {
        const struct tp_rt_upstream *up = &s->ups[u];
        tp_abuf_printf(b, "%s{\"name\":", u ? "," : "");
        tp_abuf_json_str(b, up->cfg->name);
        tp_abuf_printf(b,
                       ",\"protocol\":\"%s\",\"balance\":\"%s\",\"keepalive\":%u,\"health_check\":%s,"
                       "\"circuit_breaker\":%s,\"endpoints\":[",
                       protocol_name(up->cfg->protocol), balance_name(up->cfg->balance), up->cfg->keepalive,
                       up->cfg->health_check ? "true" : "false", up->cfg->circuit_breaker ? "true" : "false");
        for (size_t e = 0; e < up->n_eps; e++) {
            const struct tp_rt_endpoint *ep = &up->eps[e];
            int cs = ep->breaker ? tp_breaker_state(ep->breaker, now_ms) : 0;
            tp_abuf_printf(b, "%s{\"address\":", e ? "," : "");
            tp_abuf_json_str(b, ep->cfg->addr.text);
            if (ep->cfg->name) {
                tp_abuf_printf(b, ",\"name\":");
                tp_abuf_json_str(b, ep->cfg->name);
            }
            tp_abuf_printf(b, ",\"weight\":%u,\"healthy\":%s,\"circuit\":\"%s\"}", ep->cfg->weight,
                           atomic_load(&ep->st->healthy) ? "true" : "false",
                           cs == 1   ? "open"
                           : cs == 2 ? "half_open"
                                     : "closed");
        }
        tp_abuf_printf(b, "]}");
    }
    tp_abuf_printf(b, "]}\n");
}
