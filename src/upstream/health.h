/* SPDX-License-Identifier: MIT */
/*
 * Active health checks (upstreams[].health_check): a service of the control
 * thread that probes endpoints and sets their shared `healthy` flag, which
 * the shards read when they choose an endpoint. [control]
 */
#pragma once

/** Registers the health checker with the control thread (before tp_runtime_run). Returns 0 or -1. [control]
 */
int tp_health_register(void);
