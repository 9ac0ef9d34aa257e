/* SPDX-License-Identifier: MIT */
/*
 * The transport: one object, embedded first in every connection of a shard
 * (client side and upstream side alike), that owns the socket and everything
 * about moving its bytes: the multishot receive into provided buffers, the
 * receive queue, the one send in flight, backpressure, the starved list,
 * connect, the deadline timer, the cancel-then-close teardown, and TLS on
 * memory BIOs. A session above it (HTTP/1 server, HTTP/1 upstream client,
 * later HTTP/2 and tunnels) sees plaintext bytes in <in>, queues plaintext in
 * <out>, and is told what happened through its struct tp_transport_ops.
 *
 * Callbacks are made from completions only, never from inside a call the
 * session made, so a session never finds itself re-entered. A closed
 * transport stays valid until on_closed, which is the owner's cue to free
 * the object. Everything here runs on the shard's thread. [shard]
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <turnpike/timer.h>

#include "rt/reactor.h"

struct tp_transport;
struct tp_tls_conn;
struct tp_addr;

/** What the session above a transport is told. Every member is required. [shard] */
struct tp_transport_ops {
    /**
     * New plaintext bytes wait in t->in, or the peer closed (t->peer_closed;
     * t->reset when it was a reset or a receive error rather than a FIN).
     */
    void (*on_input)(struct tp_shard *sh, struct tp_transport *t);
    /** A send completed: <res> bytes left (the queue has room again), or a negative error. */
    void (*on_sent)(struct tp_shard *sh, struct tp_transport *t, int res);
    /**
     * The connection is usable: connect (and the TLS handshake, if any)
     * finished with <err> 0, or failed with a negative error. A server-side
     * TLS transport gets on_connected(0) when its handshake completes.
     */
    void (*on_connected)(struct tp_shard *sh, struct tp_transport *t, int err);
    /** The deadline set with tp_transport_deadline passed. */
    void (*on_timeout)(struct tp_shard *sh, struct tp_transport *t);
    /** A failure that is not the peer's close (TLS record error, out of memory): <err> negative. */
    void (*on_error)(struct tp_shard *sh, struct tp_transport *t, int err);
    /** Every operation completed and the socket is closed: free the object now. */
    void (*on_closed)(struct tp_shard *sh, struct tp_transport *t);
};

struct tp_transport {
    struct tp_slot slot; /* first: the slab header (slot + generation) */
    int fd;
    uint16_t ops;            /* operations in flight */
    bool recv_armed;         /* a multishot receive is armed */
    bool send_busy;          /* a send is in flight */
    bool recv_stopped;       /* backpressure: not re-armed until the session resumes */
    bool starved;            /* the receive ended with ENOBUFS: re-armed when buffers return */
    bool peer_closed;        /* EOF, reset or receive error */
    bool reset;              /* the peer reset the connection (or a receive error) */
    bool connecting;         /* connect or TLS handshake (client role) not finished */
    bool discard;            /* drop received bytes (lingering close) */
    bool shut;               /* shutdown(SHUT_WR) submitted */
    bool rst;                /* close with a reset (SO_LINGER 0): the response was cut short */
    bool closing;            /* cancel-then-close in progress */
    struct tp_inq in;        /* plaintext received, not consumed */
    struct tp_outq *out;     /* plaintext to send; NULL while empty */
    struct tp_tls_conn *tls; /* NULL = plain */
    bool on_stopped;         /* on the shard's list of stopped receives */
    struct tp_transport *next_starved;
    struct tp_transport *next_stopped, *prev_stopped;
    const struct tp_transport_ops *proto;
    void *user; /* a session that does not embed the transport (a tunnel) finds itself here */
    struct tp_timer timer;
    uint64_t deadline_ms; /* [ms] the timer fires on_timeout at this time */
};

/** Registers the transport's ops and shard hooks with the reactor. Process start. [control] */
int tp_transport_register(void);

/**
 * Sets up <t> (zeroed by tp_slab_alloc) on socket <fd> (-1 before connect)
 * with the session <proto>. <ssl>, when not NULL, makes it a TLS transport
 * (taken over, freed on failure). Returns 0 or -ENOMEM. [shard]
 */
int tp_transport_init(struct tp_transport *t, int fd, const struct tp_transport_ops *proto, void *ssl);

/** Creates a non-blocking TCP socket with TCP_NODELAY for <addr> and connects it through the ring. [shard] */
int tp_transport_connect(struct tp_shard *sh, struct tp_transport *t, const struct tp_addr *addr);

/** Arms the multishot receive unless stopped, starved, closed or connecting. [shard] */
void tp_transport_recv(struct tp_shard *sh, struct tp_transport *t);
/** Stops reading (the armed receive is cancelled) until tp_transport_resume_recv. [shard] */
void tp_transport_stop_recv(struct tp_shard *sh, struct tp_transport *t);
/** Resumes reading after tp_transport_stop_recv. [shard] */
void tp_transport_resume_recv(struct tp_shard *sh, struct tp_transport *t);
/**
 * Stops reading while TP_INQ_STOP buffers wait (2 while the shard's buffer
 * pool is pressed), resumes at half of that. [shard]
 */
void tp_transport_backpressure(struct tp_shard *sh, struct tp_transport *t);

/**
 * Hands queued plaintext to the socket (encrypting first with TLS). Out of
 * memory closes the transport with a reset. [shard]
 */
void tp_transport_flush(struct tp_shard *sh, struct tp_transport *t);
/** Bytes queued and not yet sent, plaintext and ciphertext. */
uint64_t tp_transport_pending(const struct tp_transport *t);

/** Queues a TLS close_notify (before a graceful close); nothing for plain transports. [shard] */
void tp_transport_close_notify(struct tp_shard *sh, struct tp_transport *t);
/** shutdown(SHUT_WR) through the ring (once); a failure closes the transport. [shard] */
void tp_transport_shutdown(struct tp_shard *sh, struct tp_transport *t);

/** Moves the deadline to <ms>. Later deadlines are taken lazily (the timer re-arms when it fires). [shard] */
void tp_transport_deadline(struct tp_shard *sh, struct tp_transport *t, uint64_t ms);

/**
 * Cancels every operation, then closes the socket (with a reset when t->rst)
 * and calls on_closed. Safe to call more than once. [shard]
 */
void tp_transport_close(struct tp_shard *sh, struct tp_transport *t);

/** The protocol ALPN selected on a TLS transport (after the handshake); false when none. [shard] */
bool tp_transport_alpn(const struct tp_transport *t, const char **proto, unsigned *len);

static inline bool tp_transport_is_tls(const struct tp_transport *t)
{
    return t->tls != NULL;
}
