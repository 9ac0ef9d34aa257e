/* SPDX-License-Identifier: MIT */
/*
 * The access log (CONFIG.md access_log): one line per request, `json` or
 * `combined`. Each shard formats lines into its own buffer and writes whole
 * buffers with the ring (one write in flight per shard), so logging never
 * blocks the loop and lines are never torn or interleaved. When the disk or
 * pipe cannot keep up, lines are dropped and counted, requests never wait.
 *
 * The control thread opens the file (O_APPEND) and reopens it on SIGUSR1;
 * each shard works on its own dup of the descriptor, taken when it is told.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

struct tp_shard;
struct tp_conn;
struct tp_req;

/** Opens (or switches to) the configured log; 0, or -errno with the error logged. [control] */
int tp_accesslog_configure(const struct tp_config *cfg);
/** Reopens the file at the same path (SIGUSR1). [control] */
void tp_accesslog_reopen(void);
/** Periodic work of the control thread. [control] */
void tp_accesslog_tick(uint64_t now_ms);
void tp_accesslog_close(void);
/** Lines dropped because the log could not keep up (all shards). [control] */
uint64_t tp_accesslog_dropped(void);

/** Copies what a line needs from the request head while it is alive. [shard] */
void tp_accesslog_capture(struct tp_shard *sh, struct tp_req *r, const char *path, size_t path_len);
/** Formats the line of a finished request into the shard's buffer. [shard] */
void tp_accesslog_line(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r);
/** Writes the shard's buffered lines (called once per loop iteration). [shard] */
void tp_accesslog_flush(struct tp_shard *sh);
/** A write of the shard completed. [shard] */
void tp_accesslog_on_write(struct tp_shard *sh, int res);
/** Takes the current descriptor (start, SIGUSR1, reload). [shard] */
void tp_accesslog_shard_sync(struct tp_shard *sh);
/** Allocates the shard's log state (at shard creation). [control] */
int tp_accesslog_shard_init(struct tp_shard *sh);
/** True while a write of the shard is in flight. [shard] */
bool tp_accesslog_busy(struct tp_shard *sh);
/** Releases the shard's log state (thread exit). [shard] */
void tp_accesslog_shard_close(struct tp_shard *sh);
