/* SPDX-License-Identifier: MIT */
/*
 * Service discovery by DNS: endpoint addresses written as host:port are
 * resolved (A and AAAA) by the control thread with c-ares, at start, on
 * reload and every resolve_every (or sooner when a TTL says so); an answer
 * that changes an upstream's address set publishes a rebuilt snapshot.
 * [control]
 */
#pragma once

/** Registers the resolver with the control thread. Before tp_runtime_run. */
int tp_dns_register(void);
