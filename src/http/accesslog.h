/* SPDX-License-Identifier: MIT */
/*
 * The access log (docs/reference.md access_log): one line per request, `json` or
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

/**
 * One finished request as the access log sees it: plain values, no
 * reference to connections or requests. Strings are not NUL-terminated
 * unless said; a NULL string is written as null (json) or "-" (combined).
 */
struct tp_access_record {
    const char *client;
    size_t client_len;
    const char *id; /* X-Request-Id */
    size_t id_len;
    const char *trace_id;                                             /* 32 hex digits */
    const char *method, *host, *path, *target, *referer, *user_agent; /* NULL: no parsed request line */
    size_t method_len, host_len, path_len, target_len, referer_len, user_agent_len;
    uint8_t http_minor; /* HTTP/1.<minor> */
    bool h2;            /* HTTP/2 (http_minor is then meaningless) */
    unsigned status;
    uint64_t bytes_in, bytes_out;
    uint64_t body_out;    /* response body bytes (combined format) */
    uint64_t duration_ns; /* [ns] */
    const char *route;    /* NUL-terminated names, or NULL */
    const char *upstream;
    const char *endpoint;
    bool has_upstream_ns;
    uint64_t upstream_ns; /* [ns] */
    int grpc_status;      /* gRPC calls: the response's grpc-status (0..16, 17 another value), -1 none */
    const char *subject;  /* who the credential names (JWT sub, API key name), or NULL */
    size_t subject_len;
    const char *error; /* reason of a gateway-made response, or NULL */
    const char
        *cause; /* the error behind it (e.g. "Connection refused"), or NULL: written as "error: cause" */
};

/** Registers the access log with the control thread and the reactor. Process start. [control] */
int tp_accesslog_register(void);
/** Lines dropped because the log could not keep up (all shards). [control] */
uint64_t tp_accesslog_dropped(void);

/** True when lines are written; <combined> tells the format (what a capture needs). [shard] */
bool tp_accesslog_enabled(bool *combined);
/** Formats the line of a finished request into the shard's buffer. [shard] */
void tp_accesslog_write(struct tp_shard *sh, const struct tp_access_record *rec);
