/* SPDX-License-Identifier: MIT */
/*
 * The sessions as the rest of the HTTP layer sees them: the server sides
 * (h1_server.c, h2_server.c: downstream sessions) and the upstream client
 * sides (h1_client.c, h2_client.c: upstream exchanges with their connection
 * pools), and what the layer's shard hooks (http.c) ask of them. [shard]
 */
#pragma once

#include <stdbool.h>
#include <sys/socket.h>

#include "http/request.h"

/* ---- HTTP/1 server (h1_server.c) ---- */

/** Size of a client connection object (its slab). */
size_t tp_h1s_conn_size(void);
/** Registers the slab of request parsing states (allocated per request, not per connection). Process start.
 */
int tp_h1s_register(void);
/** Takes an accepted connection of listener <listener> (tp_accept_fn). */
void tp_h1s_accept(struct tp_shard *sh, int fd, unsigned listener, const struct sockaddr_storage *peer);
/** Drain: idle connections close now, busy ones after their response; <now>: close every one now. */
void tp_h1s_drain(struct tp_shard *sh, bool now);
/** Connections of listener <idx> finish their request, then close. */
void tp_h1s_listener_closed(struct tp_shard *sh, unsigned idx);
/** Open client connections of the shard. */
uint32_t tp_h1s_count(struct tp_shard *sh);

/* ---- HTTP/2 server (h2_server.c) ---- */

/** The 24 bytes every HTTP/2 connection starts with (RFC 9113 3.4). */
#define TP_H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define TP_H2_PREFACE_LEN 24

/**
 * Takes transport <t> of an HTTP/1 client connection over for HTTP/2 (ALPN
 * h2, or the h2c preface in t->in): <conn> is the connection's downstream
 * identity (peer, listener, TLS), copied into each stream. The HTTP/1
 * session keeps its object and gets its on_closed back once the transport
 * has closed. false: out of memory (the caller closes the connection).
 */
bool tp_h2_start(struct tp_shard *sh, struct tp_transport *t, const struct tp_ds *conn);
/** Drain: GOAWAY with the last stream id, open streams finish (<now>: every connection closes now). */
void tp_h2_drain(struct tp_shard *sh, bool now);
/** Connections of listener <idx>: GOAWAY, then close once their streams finished. */
void tp_h2_listener_closed(struct tp_shard *sh, unsigned idx);
/** End of the loop iteration: HTTP/2 connections write what their streams queued. */
void tp_h2_tick(struct tp_shard *sh);
/** Frees the shard's free list of streams (shard destruction). */
void tp_h2_shard_free(struct tp_http_shard *hs);

/* ---- HTTP/1 upstream exchange (h1_client.c) ---- */

/** Size of an upstream connection object (its slab). */
size_t tp_h1c_conn_size(void);
/** The exchange's operations (struct tp_ux_ops) for HTTP/1 upstreams. */
const struct tp_ux_ops *tp_h1_exchange_ops(void);
/** Closes the shard's idle pooled connections to <eps> (endpoint retired by a reload). */
void tp_h1c_pool_close(struct tp_shard *sh, struct tp_endpoint_state *eps);
/** Closes the pool-bound connections without a request whose endpoint was removed (one walk). [shard] */
void tp_h1c_close_retired(struct tp_shard *sh);
/** Closes the shard's upstream connections: idle ones (<all> false) or every one. */
void tp_h1c_close_all(struct tp_shard *sh, bool all);
/** Open upstream connections of the shard. */
uint32_t tp_h1c_count(struct tp_shard *sh);

/* ---- HTTP/2 upstream exchange (h2_client.c) ---- */

/** Size of an upstream HTTP/2 connection object (its slab). */
size_t tp_h2c_conn_size(void);
/** Sets up what every HTTP/2 upstream session shares (nghttp2 callbacks). Process start; 0 or -1. */
int tp_h2c_init(void);
/** The exchange's operations (struct tp_ux_ops) for upstreams with protocol h2c or h2. */
const struct tp_ux_ops *tp_h2_exchange_ops(void);
/** The shard's HTTP/2 connections to <eps> take no new stream; idle ones close now, busy ones when done. */
void tp_h2c_pool_close(struct tp_shard *sh, struct tp_endpoint_state *eps);
/** Closes the shard's HTTP/2 upstream connections: those without streams (<all> false) or every one. */
void tp_h2c_close_all(struct tp_shard *sh, bool all);
/** Open HTTP/2 upstream connections of the shard. */
uint32_t tp_h2c_count(struct tp_shard *sh);
/** End of the loop iteration: HTTP/2 upstream connections write what their streams queued. */
void tp_h2c_tick(struct tp_shard *sh);
/** Frees the shard's free list of upstream stream objects (shard destruction). */
void tp_h2c_shard_free(struct tp_http_shard *hs);
