/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of runtime snapshots and the state registry (src/rt/snapshot.h):
 *   (a) registry objects are adopted by name across generations (route,
 *       upstream and endpoint states keep their identity and their state:
 *       counters, health bookkeeping, rate-limit buckets); a renamed route and
 *       a changed endpoint get new objects; a dropped endpoint is marked
 *       retired; retired snapshots are freed once nobody holds them;
 *   (c) a build that fails keeps the current snapshot and leaves every
 *       registry count as it was (the reload transaction);
 *   (b) the snapshot lifecycle under concurrency, the way shards use it:
 *       reader threads registered with urcu-qsbr follow tp_snapshot_current,
 *       take a reference on each new snapshot and keep the two previous ones
 *       for a while (requests in flight), check every snapshot they hold is
 *       intact, write per-shard counters and take rate-limit tokens, and pass
 *       quiescent states (going offline now and then, as around the ring
 *       wait); the main thread, acting as the control thread, builds and
 *       publishes thousands of generations and collects. At the end every
 *       retired snapshot has been freed exactly once (ASan) without races
 *       (TSan), and the shared states counted every reader's writes.
 *
 * Configurations come from small YAML strings through tp_config_parse; each
 * generation sets a response header "x-gen: g<N>" so a reader can tell from
 * the bytes of a snapshot which generation it must be.
 *
 * Runs under ASan and TSan (label tsan). Under TSan, the publication of a
 * snapshot goes through liburcu's inline-assembly xchg, which TSan cannot see
 * as a release; the test marks it (see HB_* below) so that only real races
 * are reported.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define _LGPL_SOURCE
#include <urcu-qsbr.h>

#include <turnpike/clock.h>
#include <turnpike/ratelimit.h>

#include "rt/snapshot.h"
#include "tap.h"

/* liburcu 0.13 publishes with an inline-assembly xchg and reads with a plain
 * load (ordered by the data dependency): correct on every CPU, invisible to
 * TSan. tp_snapshot_publish marks the release itself (TP_HB_RELEASE, as the
 * production shards mark their adoption); a reader here acquires right after
 * rcu_dereference. Reports inside liburcu's own reader paths are suppressed
 * by src/rt/snapshot.c for every program that links it. */
#define HB_ACQUIRE(p) TP_HB_ACQUIRE(p)

#ifdef TP_TSAN
#define GENERATIONS 600 /* TSan is ~10x slower; still hundreds of grace periods */
#else
#define GENERATIONS 2000
#endif
#define SYNC_EVERY 100 /* the writer waits for every reader to catch up this often */
#define READERS    4
#define SHARDS     4
#define KEEP_OLD   2 /* older snapshots a reader keeps (requests in flight) */

/* ---- configurations ---- */

static struct tp_config *cfg_make(uint64_t gen, const char *slow_name, const char *ep2)
{
    char y[2048];
    struct tp_diag d = {0};
    int n = snprintf(y, sizeof(y),
                     "listeners:\n"
                     "  - address: 127.0.0.1:8080\n"
                     "upstreams:\n"
                     "  - name: backend\n"
                     "    endpoints:\n"
                     "      - address: 127.0.0.1:9001\n"
                     "      - address: %s\n"
                     "    circuit_breaker: {consecutive_failures: 5}\n"
                     "routes:\n"
                     "  - name: api\n"
                     "    match: {path_prefix: /api}\n"
                     "    upstream: backend\n"
                     "    rate_limit: {rate: 1000000000/s, burst: 1000000000, key: route}\n"
                     "    response_headers:\n"
                     "      set: {x-gen: \"g%llu\"}\n"
                     "  - name: %s\n"
                     "    match: {path: /slow}\n"
                     "    rate_limit: {rate: 1/h, burst: 10, key: route}\n"
                     "    direct_response: {status: 200, body: \"slow\"}\n"
                     "  - name: ping\n"
                     "    match: {path: /ping}\n"
                     "    direct_response: {status: 200, body: \"pong\"}\n",
                     ep2, (unsigned long long)gen, slow_name);
    struct tp_config *cfg = tp_config_parse("gen.yaml", y, (size_t)n, &d);

    if (!cfg) {
        for (size_t i = 0; i < d.n; i++)
            tap_diag("%s", d.msgs[i]);
        tp_diag_dispose(&d);
        printf("Bail out! test configuration rejected\n");
        exit(1);
    }
    tp_diag_dispose(&d);
    return cfg;
}

static struct tp_snapshot *build(uint64_t gen, const char *slow_name, const char *ep2)
{
    struct tp_diag d = {0};
    struct tp_config *cfg = cfg_make(gen, slow_name, ep2);
    struct tp_snapshot *s = tp_snapshot_build(cfg, SHARDS, gen, &d);

    if (!s) {
        for (size_t i = 0; i < d.n; i++)
            tap_diag("%s", d.msgs[i]);
        tp_config_destroy(cfg);
        printf("Bail out! tp_snapshot_build failed\n");
        exit(1);
    }
    tp_diag_dispose(&d);
    return s;
}

static void publish(struct tp_snapshot *s)
{
    tp_snapshot_publish(s); /* marks the release for TSan itself */
}

static const struct tp_rt_route *route_named(const struct tp_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->n_routes; i++)
        if (strcmp(s->routes[i].cfg->name, name) == 0)
            return &s->routes[i];
    return NULL;
}

/* Whole tokens left in a route's bucket now. */
static uint64_t tokens_left(struct tp_ratelimit *rl)
{
    struct tp_rl_result r;
    tp_ratelimit_peek(rl, 0, tp_clock_ns(), &r);
    return r.remaining;
}

static void count_route(struct tp_route_state *st, void *ctx)
{
    (void)st;
    (*(int *)ctx)++;
}

static void count_endpoint(struct tp_endpoint_state *st, void *ctx)
{
    (void)st;
    (*(int *)ctx)++;
}

/* ---- (a) adoption by name, (c) failed build ---- */

static void test_adoption(void)
{
    struct tp_snapshot *s1, *s2, *s3;
    struct tp_rl_result rr;
    int n;

    ok(tp_snapshot_current == NULL, "nothing published yet");
    s1 = build(1, "slow", "127.0.0.1:9002");
    is_int(tp_registry_shards(), SHARDS, "the registry is sized for 4 shards");
    publish(s1);
    ok(tp_snapshot_current == s1, "generation 1 is current");
    is_int(atomic_load(&s1->refs), 1, "current: the control thread's reference only");
    is_int(tp_snapshot_collect(), 0, "nothing retired");

    struct tp_route_state *api = s1->routes[0].st;
    const struct tp_rt_route *slow1 = route_named(s1, "slow");
    struct tp_route_state *slow = slow1->st;
    struct tp_upstream_state *up = s1->ups[0].st;
    struct tp_endpoint_state *ep0 = s1->ups[0].eps[0].st, *ep1 = s1->ups[0].eps[1].st;
    struct tp_ratelimit *slow_rl = slow->rl->rl;
    struct tp_breaker *br0 = ep0->breaker;

    is_str(api->name, "api", "route state named after the route");
    is_str(ep1->key, "backend/127.0.0.1:9002", "endpoint state keyed upstream/address");
    is_str(ep1->upstream, "backend", "endpoint state's upstream label");
    is_str(up->name, "backend", "upstream state name");
    ok(slow1->rl == slow_rl && slow_rl != NULL, "the route's limiter is its state's");
    ok(br0 != NULL && s1->ups[0].eps[0].breaker == br0, "the endpoint's breaker is its state's");
    is_int(api->refs, 1, "route state: one snapshot uses it");
    is_int(ep0->refs, 1, "endpoint state: one snapshot uses it");

    /* state that must survive a reload */
    tp_stat_add(&api->stats[2].requests[1], 7);
    ep0->hc_ok = 5;
    atomic_store(&ep1->healthy, 0);
    for (int i = 0; i < 3; i++)
        tp_ratelimit_take(slow_rl, 0, tp_clock_ns(), &rr);
    is_int(tokens_left(slow_rl), 7, "slow route: 3 of 10 tokens taken");

    /* generation 2: same names */
    s2 = build(2, "slow", "127.0.0.1:9002");
    ok(s2->routes[0].st == api, "gen 2 adopts the api route state");
    ok(route_named(s2, "slow")->st == slow, "gen 2 adopts the slow route state");
    ok(s2->ups[0].st == up, "gen 2 adopts the upstream state");
    ok(s2->ups[0].eps[0].st == ep0 && s2->ups[0].eps[1].st == ep1, "gen 2 adopts both endpoint states");
    ok(route_named(s2, "slow")->rl == slow_rl, "the same limiter");
    ok(s2->ups[0].eps[0].breaker == br0, "the same breaker");
    is_int(api->refs, 2, "built but not published: two snapshots use the route state");
    ok(tp_snapshot_current == s1, "building does not publish");
    publish(s2);
    ok(tp_snapshot_current == s2, "generation 2 is current");
    is_int(tp_snapshot_collect(), 0, "generation 1 was freed at publish (nobody held it)");
    is_int(api->refs, 1, "route state: one snapshot again");
    is_int(tp_stat_get(&api->stats[2].requests[1]), 7, "route counters carried over");
    is_int(ep0->hc_ok, 5, "health bookkeeping carried over");
    is_int(atomic_load(&ep1->healthy), 0, "health status carried over");
    is_int(tokens_left(slow_rl), 7, "rate-limit bucket carried over");
    is_int(ep0->live_gen, 2, "endpoint live in generation 2");
    ok(!atomic_load(&ep0->retired) && !atomic_load(&ep1->retired), "no endpoint retired");

    /* generation 3: the slow route renamed, the second endpoint moved; a
     * shard still holds generation 2 */
    tp_snapshot_get(s2);
    s3 = build(3, "slow-v2", "127.0.0.1:9003");
    const struct tp_rt_route *slow3 = route_named(s3, "slow-v2");
    ok(slow3 && slow3->st != slow, "a renamed route gets a new state");
    is_str(slow3->st->name, "slow-v2", "named after the new name");
    ok(slow3->rl && slow3->rl != slow_rl, "and a new limiter");
    is_int(tokens_left(slow3->rl), 10, "whose bucket starts full");
    is_int(tp_stat_get(&slow3->st->stats[2].requests[1]), 0, "and whose counters start at 0");
    ok(s3->routes[0].st == api, "the unchanged route keeps its state");
    ok(s3->ups[0].eps[0].st == ep0, "the unchanged endpoint keeps its state");
    ok(s3->ups[0].eps[1].st != ep1, "the moved endpoint gets a new state");
    is_str(s3->ups[0].eps[1].st->key, "backend/127.0.0.1:9003", "keyed by its new address");
    is_int(atomic_load(&s3->ups[0].eps[1].st->healthy), 1, "new endpoints start healthy");
    publish(s3);
    is_int(tp_snapshot_collect(), 1, "generation 2 stays retired while a shard holds it");
    ok(atomic_load(&ep1->retired), "the dropped endpoint is marked retired");
    ok(!atomic_load(&ep0->retired) && !atomic_load(&s3->ups[0].eps[1].st->retired), "live endpoints are not");
    is_int(ep0->live_gen, 3, "live endpoints: generation 3");
    is_int(slow->refs, 1, "the old slow route state lives on in generation 2 only");
    is_int(tokens_left(slow_rl), 7, "its bucket is intact while generation 2 lives");
    is_str(route_named(s2, "slow")->cfg->name, "slow", "generation 2 is intact while held");
    n = 0;
    tp_registry_each_route(count_route, &n);
    is_int(n, 3, "registry walk: the current generation's 3 routes");
    n = 0;
    tp_registry_each_endpoint(count_endpoint, &n);
    is_int(n, 2, "registry walk: 2 endpoints");
    tp_snapshot_put(s2);
    is_int(tp_snapshot_collect(), 0, "released: generation 2 freed");
    is_int(api->refs, 1, "api route state: one snapshot");
    is_int(ep0->refs, 1, "endpoint 0 state: one snapshot");
    is_int(tp_stat_get(&api->stats[2].requests[1]), 7, "api counters still carried");

    /* (c) a build that fails half way: the new route's limiter cannot be
     * created (a burst of 0, which validation would have refused: this stands
     * for any failure after the parse, e.g. out of memory) */
    struct tp_diag d = {0};
    struct tp_config *bad = cfg_make(4, "slow-v3", "127.0.0.1:9004");
    for (size_t i = 0; i < bad->n_routes; i++)
        if (strcmp(bad->routes[i].name, "slow-v3") == 0)
            bad->routes[i].rate_limit->burst = 0;
    struct tp_endpoint_state *ep1b = s3->ups[0].eps[1].st;
    struct tp_snapshot *s4 = tp_snapshot_build(bad, SHARDS, 4, &d);
    ok(s4 == NULL, "a failed build returns NULL");
    is_int(d.n, 1, "with one message");
    ok(d.n && strstr(d.msgs[0], "gen.yaml: cannot build the runtime configuration") != NULL,
       "naming the source: %s", d.n ? d.msgs[0] : "");
    ok(tp_snapshot_current == s3, "the current generation is unchanged");
    is_int(atomic_load(&s3->refs), 1, "its references are unchanged");
    is_int(tp_snapshot_collect(), 0, "nothing retired");
    is_int(api->refs, 1, "route state references unchanged");
    is_int(s3->ups[0].st->refs, 1, "upstream state references unchanged");
    is_int(ep0->refs, 1, "endpoint state references unchanged");
    is_int(ep1b->refs, 1, "endpoint 1 state references unchanged");
    ok(!atomic_load(&ep1b->retired), "nothing was retired by the failed build");
    tp_config_destroy(bad); /* still the caller's */
    tp_diag_dispose(&d);

    /* and the next reload works and still adopts */
    struct tp_snapshot *s5 = build(5, "slow-v2", "127.0.0.1:9003");
    ok(s5->routes[0].st == api && s5->ups[0].eps[1].st == ep1b, "after a failed build, adoption as before");
    publish(s5);
    is_int(tp_snapshot_collect(), 0, "generation 3 freed");
    is_int(tp_stat_get(&api->stats[2].requests[1]), 7, "counters survived the failed reload");

    tp_snapshot_shutdown();
    ok(tp_snapshot_current == NULL, "shutdown: nothing current");
    is_int(tp_registry_shards(), 0, "shutdown: registry reset");
}

/* ---- (b) concurrency ---- */

struct reader {
    pthread_t thr;
    unsigned idx;            /* shard index: the stats slot it writes */
    _Atomic uint64_t seen;   /* newest generation adopted */
    unsigned long iters;     /* loop iterations */
    unsigned long switches;  /* snapshots adopted */
    unsigned long bad;       /* snapshots that failed a check */
    unsigned long backwards; /* a newer snapshot had an older generation */
    unsigned long writes;    /* counter increments made */
    unsigned long takes, admitted;
    uint64_t last_gen;
};

static struct reader readers[READERS];
static atomic_bool stop;
static struct tp_route_state *g_api; /* identity every generation must keep */
static struct tp_endpoint_state *g_ep[2];

/* Everything a reader can check about a snapshot it holds. */
static unsigned long check_snapshot(const struct tp_snapshot *s)
{
    char want[64];
    unsigned long bad = 0;
    const struct tp_rt_route *api = &s->routes[0];
    int n = snprintf(want, sizeof(want), "x-gen: g%llu\r\n", (unsigned long long)s->generation);

    bad += s->generation < 1 || s->generation > GENERATIONS;
    bad += s->n_routes != 3 || s->n_ups != 1 || s->ups[0].n_eps != 2;
    bad += s->cfg == NULL || s->cfg->n_routes != 3;
    bad += strcmp(api->cfg->name, "api") != 0;
    bad += api->resp.set_len != (size_t)n || memcmp(api->resp.set_block, want, (size_t)n) != 0;
    bad += api->st != g_api || strcmp(api->st->name, "api") != 0;
    bad += api->up != &s->ups[0] || api->rl != g_api->rl->rl;
    bad += s->ups[0].eps[0].st != g_ep[0] || s->ups[0].eps[1].st != g_ep[1];
    bad += strcmp(s->ups[0].eps[1].cfg->addr.text, "127.0.0.1:9002") != 0;
    bad += s->n_shards != SHARDS;
    return bad;
}

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    struct tp_snapshot *cur = NULL, *old[KEEP_OLD + 1];
    unsigned n_old = 0;

    rcu_register_thread();
    for (unsigned long i = 0; i < 100000000ul && !atomic_load(&stop); i++) {
        struct tp_snapshot *s = rcu_dereference(tp_snapshot_current);

        if (s && s != cur) {
            HB_ACQUIRE(s);
            /* RCU alone keeps <s> alive until the next quiescent state: read
             * it and sometimes yield first, which widens the window in which
             * a publish that did not wait for a grace period would free it */
            rd->bad += check_snapshot(s);
            if (rd->switches % 4 == 0)
                sched_yield();
            tp_snapshot_get(s); /* before the next quiescent state */
            if (cur && s->generation <= cur->generation)
                rd->backwards++;
            if (cur) {
                old[n_old++] = cur;
                if (n_old > KEEP_OLD) {
                    /* the oldest one's last request ended */
                    tp_snapshot_put(old[0]);
                    memmove(old, old + 1, sizeof(old[0]) * --n_old);
                }
            }
            cur = s;
            rd->switches++;
            rd->last_gen = s->generation;
            atomic_store(&rd->seen, s->generation);
        }
        if (cur) {
            /* a request on the current snapshot, and the old ones still intact */
            rd->bad += check_snapshot(cur);
            for (unsigned k = 0; k < n_old; k++)
                rd->bad += check_snapshot(old[k]);
            tp_stat_add(&cur->routes[0].st->stats[rd->idx].requests[1], 1);
            rd->writes++;
            rd->takes++;
            rd->admitted += tp_ratelimit_take(cur->routes[0].rl, 0, tp_clock_ns(), NULL);
        }
        rd->iters++;
        rcu_quiescent_state();
        if (i % 32 == 31) {
            /* the ring wait: offline, holding references but no RCU pointer */
            rcu_thread_offline();
            sched_yield();
            rcu_thread_online();
        } else {
            sched_yield();
        }
    }
    if (cur)
        tp_snapshot_put(cur);
    for (unsigned k = 0; k < n_old; k++)
        tp_snapshot_put(old[k]);
    rcu_thread_offline();
    rcu_unregister_thread();
    return NULL;
}

/* Waits (bounded) until every reader adopted generation <gen>. */
static bool wait_readers(uint64_t gen)
{
    for (unsigned long spins = 0; spins < 200000000ul; spins++) {
        unsigned done = 0;
        for (unsigned r = 0; r < READERS; r++)
            done += atomic_load(&readers[r].seen) >= gen;
        if (done == READERS)
            return true;
        sched_yield();
    }
    return false;
}

static void test_concurrent(void)
{
    struct tp_snapshot *s;
    bool synced = true, bounds = true;
    size_t max_retired = 0;

    s = build(1, "slow", "127.0.0.1:9002");
    publish(s);
    g_api = s->routes[0].st;
    g_ep[0] = s->ups[0].eps[0].st;
    g_ep[1] = s->ups[0].eps[1].st;
    atomic_store(&stop, false);
    for (unsigned r = 0; r < READERS; r++) {
        memset(&readers[r], 0, sizeof(readers[r]));
        readers[r].idx = r;
        if (pthread_create(&readers[r].thr, NULL, reader_main, &readers[r])) {
            printf("Bail out! pthread_create\n");
            exit(1);
        }
    }
    synced &= wait_readers(1);

    for (uint64_t g = 2; g <= GENERATIONS; g++) {
        s = build(g, "slow", "127.0.0.1:9002");
        publish(s);
        size_t left = tp_snapshot_collect();
        if (left > max_retired)
            max_retired = left;
        if (g % SYNC_EVERY == 0) {
            synced &= wait_readers(g);
            /* every reader now holds g and its previous KEEP_OLD generations */
            left = tp_snapshot_collect();
            if (left < 1 || left > READERS * KEEP_OLD) {
                bounds = false;
                tap_diag("generation %llu: %zu retired snapshots held", (unsigned long long)g, left);
            }
        }
    }
    ok(synced, "every reader caught up at every sync point");
    ok(bounds, "at sync points, 1..%d retired snapshots are held (the readers' old ones)",
       READERS * KEEP_OLD);
    ok(max_retired <= READERS * (KEEP_OLD + 1), "retired snapshots never pile up (max %zu)", max_retired);

    atomic_store(&stop, true);
    for (unsigned r = 0; r < READERS; r++)
        pthread_join(readers[r].thr, NULL);

    unsigned long bad = 0, backwards = 0, writes = 0, takes = 0, admitted = 0, switches = 0;
    bool all_last = true;
    uint64_t counted = 0;
    for (unsigned r = 0; r < READERS; r++) {
        bad += readers[r].bad;
        backwards += readers[r].backwards;
        writes += readers[r].writes;
        takes += readers[r].takes;
        admitted += readers[r].admitted;
        switches += readers[r].switches;
        all_last &= readers[r].last_gen == GENERATIONS;
        counted += tp_stat_get(&g_api->stats[r].requests[1]);
    }
    tap_diag("%d generations, %lu reader iterations, %lu adoptions", GENERATIONS,
             readers[0].iters + readers[1].iters + readers[2].iters + readers[3].iters, switches);
    is_int(bad, 0, "every snapshot a reader held was intact");
    is_int(backwards, 0, "readers saw generations in order");
    ok(all_last, "every reader reached the last generation");
    ok(switches >= READERS * (GENERATIONS / SYNC_EVERY), "readers adopted many generations (%lu)", switches);
    is_int(counted, writes, "the route state counted every reader's increments across all generations");
    is_int(admitted, takes, "the shared bucket admitted every take (huge burst) across reloads");
    is_int(tp_snapshot_collect(), 0, "after the readers let go, every retired snapshot is freed");
    ok(tp_snapshot_current && tp_snapshot_current->generation == GENERATIONS,
       "the last generation is current");
    is_int(atomic_load(&tp_snapshot_current->refs), 1, "held by the control thread only");
    is_int(g_api->refs, 1, "the route state is used by one snapshot");
    is_int(g_ep[0]->refs, 1, "the endpoint state is used by one snapshot");
    tp_snapshot_shutdown();
    ok(tp_snapshot_current == NULL, "shutdown");
}

/* ---- (d) endpoint names: resolved sets expanded, rebuilt without the file ---- */

static struct tp_addr addr_of(const char *text)
{
    struct tp_addr a;
    if (tp_parse_addr(text, &a) != 0) {
        printf("Bail out! bad address %s\n", text);
        exit(1);
    }
    return a;
}

static const struct tp_rt_endpoint *ep_at(const struct tp_snapshot *s, const char *addr)
{
    for (size_t e = 0; e < s->ups[0].n_eps; e++)
        if (strcmp(s->ups[0].eps[e].cfg->addr.text, addr) == 0)
            return &s->ups[0].eps[e];
    return NULL;
}

static void test_resolved(void)
{
    static const char yaml[] = "listeners: [{address: 127.0.0.1:8080}]\n"
                               "upstreams:\n"
                               "  - name: u\n"
                               "    balance: hash\n"
                               "    hash_key: path\n"
                               "    endpoints:\n"
                               "      - {address: api.test:80, weight: 7}\n"
                               "      - {address: 10.0.0.9:80}\n"
                               "routes: [{upstream: u}]\n";
    struct tp_diag d = {0};
    struct tp_config *cfg = tp_config_parse("r.yaml", yaml, strlen(yaml), &d);
    struct tp_snapshot *s1, *s2, *s3, *s4;

    ok(cfg != NULL, "config with a name");
    tp_diag_dispose(&d);
    if (!cfg)
        return;
    s1 = tp_snapshot_build(cfg, SHARDS, 1, &d);
    ok(s1 != NULL, "built before any answer");
    publish(s1);
    is_int(s1->ups[0].n_eps, 1, "a name without answer has no endpoint");
    ok(ep_at(s1, "10.0.0.9:80") != NULL, "the address is there");

    struct tp_addr set[3] = {addr_of("10.0.0.1:80"), addr_of("10.0.0.2:80"), addr_of("10.0.0.9:80")};
    is_int(tp_resolved_update("u", "api.test:80", set, 2), 1, "a first answer is a change");
    is_int(tp_resolved_update("u", "api.test:80", set, 2), 0, "the same answer is not");
    s2 = tp_snapshot_rebuild(2, &d);
    ok(s2 != NULL, "rebuilt");
    ok(s2->cfg == s1->cfg && s2->base == s1->base, "the rebuild shares the configuration, not a copy");
    is_int(s2->ups[0].n_eps, 3, "two resolved + one address");
    const struct tp_rt_endpoint *e1 = ep_at(s2, "10.0.0.1:80");
    ok(e1 && e1->cfg->weight == 7 && strcmp(e1->cfg->name, "api.test:80") == 0,
       "weight and name of the name");
    ok(ep_at(s2, "10.0.0.9:80")->st == ep_at(s1, "10.0.0.9:80")->st, "the address keeps its state");
    ok(s2->ups[0].maglev != NULL, "hash table rebuilt");
    publish(s2);
    struct tp_endpoint_state *kept = ep_at(s2, "10.0.0.2:80")->st, *gone = e1->st;
    atomic_store(&kept->healthy, 0);
    tp_stat_add(&kept->shard[0].requests[1], 5);

    /* 10.0.0.1 goes, 10.0.0.9 (also a numeric endpoint) appears: used once */
    is_int(tp_resolved_update("u", "api.test:80", set + 1, 2), 1, "a changed answer");
    s3 = tp_snapshot_rebuild(3, &d);
    ok(s3 != NULL, "rebuilt again");
    is_int(s3->ups[0].n_eps, 2, "an address reached twice is one endpoint");
    ok(ep_at(s3, "10.0.0.1:80") == NULL, "the address that went is gone");
    ok(ep_at(s3, "10.0.0.2:80")->st == kept, "an address that stays keeps its state object");
    tp_endpoint_state_get(gone); /* look at it after the publish */
    publish(s3);
    ok(atomic_load(&gone->retired), "the address that went is retired (its pools close)");
    ok(!atomic_load(&kept->retired), "the one that stays is not");
    is_int(atomic_load(&kept->healthy), 0, "health kept");
    is_int(tp_stat_get(&kept->shard[0].requests[1]), 5, "counters kept");
    tp_endpoint_state_put(gone);

    /* a reload of the same names keeps the stored sets; prune forgets names that left */
    tp_resolved_prune(s3->cfg);
    size_t n;
    ok(tp_resolved_get("u", "api.test:80", &n) && n == 2, "prune keeps the names in use");
    tp_resolved_prune(NULL);
    ok(tp_resolved_get("u", "api.test:80", &n) == NULL, "and forgets the others");
    s4 = tp_snapshot_rebuild(4, &d);
    ok(s4 && s4->ups[0].n_eps == 1 && s4->ups[0].eps[0].st == ep_at(s3, "10.0.0.9:80")->st,
       "without a set, only the address is left");
    publish(s4);
    tp_diag_dispose(&d);
    tp_snapshot_shutdown();
}

int main(void)
{
    test_adoption();
    test_resolved();
    test_concurrent();
    return tap_done();
}
