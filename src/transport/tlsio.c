/* SPDX-License-Identifier: MIT */
/* TLS on memory BIOs (see tlsio.h). [shard] */
#include <stdlib.h>

#include <openssl/err.h>

#include <turnpike/log.h>
#include <turnpike/tls.h>

#include "transport/tlsio.h"

#define WIRE_BLOCK (16384 + 512) /* a full record and then some */
#define WRITE_MAX  16384         /* plaintext per SSL_write: one record */

struct tp_tls_conn *tp_tlsio_create(SSL *ssl)
{
    struct tp_tls_conn *t = calloc(1, sizeof(*t));

    if (!t) {
        SSL_free(ssl);
        return NULL;
    }
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(ssl);
        free(t);
        return NULL;
    }
    /* an empty read BIO means "wait for more", not end of file */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(ssl, t->rbio, t->wbio);
    t->ssl = ssl;
    return t;
}

void tp_tlsio_destroy(struct tp_shard *sh, struct tp_tls_conn *t)
{
    if (!t)
        return;
    tp_outq_clear(sh, &t->wire);
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

/* Moves what OpenSSL produced into wire blocks. */
static bool drain_wbio(struct tp_shard *sh, struct tp_tls_conn *t)
{
    while (BIO_ctrl_pending(t->wbio) > 0) {
        size_t want = BIO_ctrl_pending(t->wbio);
        struct tp_block *b = tp_block_get(sh, want < WIRE_BLOCK ? want : WIRE_BLOCK);
        if (!b)
            return false;
        int n = BIO_read(t->wbio, b->data, (int)b->size);
        if (n <= 0) {
            tp_block_put(sh, b);
            break;
        }
        b->len = (uint32_t)n;
        if (!tp_outq_push_block(sh, &t->wire, b))
            return false;
    }
    return true;
}

static enum tp_tlsio_rc hs_step(struct tp_shard *sh, struct tp_tls_conn *t)
{
    int r = SSL_do_handshake(t->ssl);

    if (!drain_wbio(sh, t))
        return TP_TLSIO_ERROR;
    if (r == 1) {
        t->hs_done = true;
        return TP_TLSIO_HS_DONE;
    }
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return TP_TLSIO_OK;
    char buf[200];
    TP_LOG_RL(TP_LOG_INFO, "TLS handshake failed: %s", tp_tls_error(buf, sizeof(buf)));
    ERR_clear_error();
    return TP_TLSIO_ERROR;
}

enum tp_tlsio_rc tp_tlsio_handshake(struct tp_shard *sh, struct tp_tls_conn *t)
{
    return t->hs_done ? TP_TLSIO_OK : hs_step(sh, t);
}

enum tp_tlsio_rc tp_tlsio_input(struct tp_shard *sh, struct tp_tls_conn *t, const char *data, size_t len,
                                struct tp_inq *in, size_t *plain)
{
    enum tp_tlsio_rc rc = TP_TLSIO_OK;

    *plain = 0;
    if (len && BIO_write(t->rbio, data, (int)len) != (int)len)
        return TP_TLSIO_ERROR;
    if (!t->hs_done) {
        rc = hs_step(sh, t);
        if (rc != TP_TLSIO_HS_DONE)
            return rc;
    }
    for (;;) {
        struct tp_block *b = tp_block_get(sh, TP_BLOCK_SIZE);
        if (!b)
            return TP_TLSIO_ERROR;
        int n = SSL_read(t->ssl, b->data, (int)b->size);
        if (n > 0) {
            b->len = (uint32_t)n;
            *plain += (size_t)n;
            if (!in) {
                tp_block_put(sh, b);
                continue;
            }
            if (!tp_inq_push_block(in, b)) {
                tp_block_put(sh, b);
                return TP_TLSIO_ERROR;
            }
            continue;
        }
        tp_block_put(sh, b);
        int e = SSL_get_error(t->ssl, n);
        /* post-handshake messages (session tickets, key updates) may want a reply */
        if (!drain_wbio(sh, t))
            return TP_TLSIO_ERROR;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return rc;
        if (e == SSL_ERROR_ZERO_RETURN)
            return TP_TLSIO_CLOSED;
        char buf[200];
        TP_LOG_RL(TP_LOG_INFO, "TLS record error: %s", tp_tls_error(buf, sizeof(buf)));
        ERR_clear_error();
        return TP_TLSIO_ERROR;
    }
}

bool tp_tlsio_encrypt(struct tp_shard *sh, struct tp_tls_conn *t, struct tp_outq **plain)
{
    struct tp_outq *q = plain ? *plain : NULL;

    if (t->hs_done && q) {
        /* the segments of a plaintext queue are never in flight themselves:
         * each is consumed by SSL_write, whole, and released */
        while (q->n && !tp_outq_full(t->wire, 4) && tp_tlsio_pending(t) < TP_OUTQ_BUDGET) {
            struct tp_seg *s = &q->seg[q->head];
            const char *p = s->p + q->first_off;
            uint32_t left = s->len - q->first_off;
            uint32_t chunk = left < WRITE_MAX ? left : WRITE_MAX;
            if (chunk) {
                int n = SSL_write(t->ssl, p, (int)chunk);
                if (n <= 0)
                    return false; /* memory BIOs never block: this is a real failure */
                chunk = (uint32_t)n;
            }
            q->sending = 1;
            tp_outq_sent(sh, q, chunk);
            if (!drain_wbio(sh, t))
                return false;
        }
        if (q->n == 0)
            tp_outq_clear(sh, plain);
    }
    return drain_wbio(sh, t);
}

void tp_tlsio_shutdown(struct tp_shard *sh, struct tp_tls_conn *t)
{
    if (t->notify_sent || !t->hs_done)
        return;
    t->notify_sent = true;
    SSL_shutdown(t->ssl);
    drain_wbio(sh, t);
}
