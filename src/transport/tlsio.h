/* SPDX-License-Identifier: MIT */
/*
 * TLS inside the transport (src/transport/transport.c), for both sides of
 * the proxy: OpenSSL runs on memory BIOs, so the ring keeps doing
 * every socket operation. Ciphertext received into a provided buffer is
 * written into the read BIO and the buffer returned at once; SSL_read
 * decrypts into blocks that join the connection's receive queue like
 * provided buffers (and are relayed from there without a copy). Plaintext
 * queued for sending is encrypted when the connection flushes: SSL_write
 * consumes it, and what the write BIO holds is moved into blocks of the
 * "wire" queue, which is what the one send in flight sends. [shard]
 */
#pragma once

#include <stdbool.h>

#include <openssl/ssl.h>

#include "rt/reactor.h"

struct tp_tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio;     /* owned by ssl */
    struct tp_outq *wire; /* ciphertext to send */
    bool hs_done;         /* handshake complete */
    bool notify_sent;     /* close_notify queued */
};

enum tp_tlsio_rc {
    TP_TLSIO_OK = 0,  /* bytes taken; plaintext (if any) queued */
    TP_TLSIO_HS_DONE, /* the handshake completed with these bytes */
    TP_TLSIO_CLOSED,  /* the peer sent close_notify */
    TP_TLSIO_ERROR,   /* handshake failure, bad record, out of memory */
};

/** Creates the state for <ssl> (taken over). NULL on allocation failure (ssl freed). */
struct tp_tls_conn *tp_tlsio_create(SSL *ssl);
void tp_tlsio_destroy(struct tp_shard *sh, struct tp_tls_conn *t);

/**
 * Feeds <len> received ciphertext bytes, advances the handshake, decrypts
 * what it can into blocks appended to <in> (nothing when <in> is NULL: the
 * plaintext is then only counted in *<plain>, for idle pooled connections).
 */
enum tp_tlsio_rc tp_tlsio_input(struct tp_shard *sh, struct tp_tls_conn *t, const char *data, size_t len,
                                struct tp_inq *in, size_t *plain);

/** Starts (or continues) the handshake without input: the client's first flight. */
enum tp_tlsio_rc tp_tlsio_handshake(struct tp_shard *sh, struct tp_tls_conn *t);

/**
 * Encrypts the plaintext queued in *<plain> (once the handshake is done;
 * <plain> may be NULL) and moves everything OpenSSL wants sent into the wire
 * queue. Returns false on
 * failure (out of memory).
 */
bool tp_tlsio_encrypt(struct tp_shard *sh, struct tp_tls_conn *t, struct tp_outq **plain);

/** Queues a close_notify alert (before a graceful close). */
void tp_tlsio_shutdown(struct tp_shard *sh, struct tp_tls_conn *t);

/** Bytes waiting in the wire queue. */
static inline uint64_t tp_tlsio_pending(const struct tp_tls_conn *t)
{
    return t->wire ? t->wire->bytes : 0;
}
