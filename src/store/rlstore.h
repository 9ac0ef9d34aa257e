/* SPDX-License-Identifier: MIT */
/*
 * The rate limit store client (rate_limit_store): a service of the control
 * thread that leases tokens of global rate limits from Redis with hiredis's
 * asynchronous API, driven by POLL_ADD on the control ring. docs/internals.md
 * "Global rate limits" says why it runs there. [control]
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/** Registers the store client with the control thread (before tp_runtime_run). Returns 0 or -1. */
int tp_rlstore_register(void);

/** What /metrics shows. */
struct tp_rlstore_stats {
    bool configured; /* rate_limit_store is set */
    bool up;         /* the store answers */
    uint64_t errors; /* connection failures, timeouts, error replies, lost connections */
    uint64_t calls;  /* lease calls answered */
};
void tp_rlstore_stats(struct tp_rlstore_stats *out);
