/* SPDX-License-Identifier: MIT */
/*
 * The control thread's ring and what runs on it: signals, reloads, the admin
 * listener, health checks. Operations carry user_data = op (8 bits) | slot
 * (32 bits), like the shards'; they are not on the request path. [control]
 */
#pragma once

#include <stdint.h>

#include "rt/uring_compat.h"

enum tp_ctl_op {
    TP_CTL_NONE = 0,
    TP_CTL_SIGNAL, /* signalfd read */
    TP_CTL_WAKE,   /* eventfd read: a shard has news */
    TP_CTL_ADMIN_ACCEPT,
    TP_CTL_ADMIN_RECV, /* slot = admin connection */
    TP_CTL_ADMIN_SEND,
    TP_CTL_ADMIN_CLOSE,
    TP_CTL_HC_CONNECT, /* slot = health check probe */
    TP_CTL_HC_SEND,
    TP_CTL_HC_RECV,
    TP_CTL_HC_CLOSE,
    TP_CTL_HC_CANCEL,
    TP_CTL_LOG_WRITE, /* access log write of the control thread (unused by shards) */
    TP_CTL_COUNT
};

static inline uint64_t tp_ctl_ud(enum tp_ctl_op op, uint32_t slot)
{
    return ((uint64_t)op << 56) | slot;
}

/** An SQE on the control ring, user_data already set. */
struct io_uring_sqe *tp_ctl_sqe(enum tp_ctl_op op, uint32_t slot);

/** [ms] monotonic time of the current control loop iteration. */
uint64_t tp_ctl_now_ms(void);

/** Sends <msg> to systemd's NOTIFY_SOCKET when set. */
void tp_sd_notify(const char *msg);

/* ---- admin (src/admin/admin.c) ---- */

int tp_admin_start(int listen_fd);
void tp_admin_on_cqe(enum tp_ctl_op op, uint32_t slot, int res);
void tp_admin_stop(void);
void tp_admin_tick(uint64_t now_ms);

/* ---- health checks (src/upstream/health.c) ---- */

void tp_health_tick(uint64_t now_ms);
void tp_health_on_cqe(enum tp_ctl_op op, uint32_t slot, int res);
void tp_health_stop(void);

/* ---- what the admin endpoints show ---- */

struct tp_ctl_info {
    uint64_t generation;
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    uint64_t loaded_at_real_ns;
    const char *source;
    uint8_t sha256[32];
    bool ready; /* listening with a valid configuration */
    bool draining;
    uint64_t started_real_ns;
};

extern struct tp_ctl_info tp_ctl;
