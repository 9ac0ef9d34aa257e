/* SPDX-License-Identifier: MIT */
/*
 * The control thread's ring and what runs on it: signals, reloads, snapshot
 * collection, and the registered services (admin endpoints, health checks,
 * access log files). Operations carry user_data = service (8 bits) | op
 * (8 bits) | slot (32 bits); they are not on the request path. [control]
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "rt/uring_compat.h"

struct tp_config;

/**
 * A service of the control thread: admin endpoints, health checks, the
 * access log's file. The control loop knows them only through this table;
 * every hook is optional. [control]
 */
struct tp_ctl_service {
    const char *name;
    /** Startup, before any shard starts: bind, open. Negative fails the start (after saying why on stderr).
     */
    int (*prepare)(const struct tp_config *cfg);
    /** After startup and after every successful reload, with the configuration now current. */
    void (*configure)(const struct tp_config *cfg);
    /** The shards are running. Negative fails the start. */
    int (*started)(void);
    /** A completion of one of the service's ops (<op> as given to tp_ctl_sqe). */
    void (*on_cqe)(unsigned op, uint32_t slot, int res);
    /** Every loop iteration (at least every 100 ms). */
    void (*tick)(uint64_t now_ms, bool draining);
    /** SIGUSR1: reopen files. */
    void (*reopen)(void);
    /** The process is stopping: close what is open. */
    void (*stop)(void);
    /**
     * Optional: true once the service's start-up work is done (DNS: every
     * endpoint name answered once). READY=1 and /readyz wait for every
     * service to say so, at most START_WAIT_MS.
     */
    bool (*ready)(void);
};

#define TP_CTL_SERVICES 8

/** Registers <s> (static storage); returns its id for tp_ctl_sqe, or -1. Before tp_runtime_run. [control] */
int tp_ctl_service_register(const struct tp_ctl_service *s);

/**
 * An SQE on the control ring (a nop until prepared) whose completion goes to
 * service <svc> as (<op>, <slot>). <svc> -1: the completion is ignored. [control]
 */
struct io_uring_sqe *tp_ctl_sqe(int svc, unsigned op, uint32_t slot);

/**
 * Publishes a snapshot rebuilt from the current configuration with the
 * resolved address sets as they are now (a DNS answer changed one), through
 * the same RCU exchange as a reload, without reading any file; the
 * generation goes up by one. -EAGAIN before the shards run or while
 * draining (the caller tries again later), -ENOMEM when the build failed
 * (logged; the current snapshot stays). [control]
 */
int tp_ctl_republish(const char *why);

/** [ms] monotonic time of the current control loop iteration. */
uint64_t tp_ctl_now_ms(void);

/* ---- what the admin endpoints show ---- */

struct tp_ctl_info {
    uint64_t generation;
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    uint64_t loaded_at_real_ns;
    const char *source;
    uint8_t sha256[32];
    bool ready;    /* listening with a valid configuration */
    bool starting; /* ready, but services still finish their start-up work (/readyz says 503) */
    bool draining;
    uint64_t started_real_ns;
};

extern struct tp_ctl_info tp_ctl;
