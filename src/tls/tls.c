/* SPDX-License-Identifier: MIT */
/*
 * OpenSSL contexts (see include/turnpike/tls.h). Built on the control thread
 * for each configuration generation; only SSL_new and the SNI/ALPN callbacks
 * run on shards.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <turnpike/tls.h>

struct tp_tls_server {
    SSL_CTX **ctx; /* one per certificate; ctx[0] is the default */
    X509 **leaf;   /* the leaf certificate of each, for SNI matching */
    size_t n;
    unsigned char alpn[256]; /* the server's protocols, wire format */
    size_t alpn_len;
};

struct tp_tls_client {
    SSL_CTX *ctx;
    char *sni;
    int verify;
};

const char *tp_tls_error(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    unsigned long last = e;

    while ((e = ERR_get_error()) != 0)
        last = e;
    if (!last) {
        snprintf(buf, len, "unknown error");
        return buf;
    }
    ERR_error_string_n(last, buf, len);
    return buf;
}

/* ---- server ---- */

/* SNI: the first certificate whose names match; the default otherwise. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct tp_tls_server *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);

    (void)alert;
    if (!name || !*name)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < t->n; i++) {
        if (X509_check_host(t->leaf[i], name, 0, 0, NULL) == 1) {
            if (i)
                SSL_set_SSL_CTX(ssl, t->ctx[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* unknown name: the default certificate */
}

/* ALPN: the first of our protocols the client offers; none in common means
 * no ALPN at all (the client may still speak HTTP/1.1). */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                   unsigned int inlen, void *arg)
{
    struct tp_tls_server *t = arg;
    unsigned char *sel = NULL;

    (void)ssl;
    if (SSL_select_next_proto(&sel, outlen, t->alpn, (unsigned)t->alpn_len, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int proto_bounds(unsigned protocols, int *min, int *max)
{
    *min = protocols & TP_TLS_V1_2 ? TLS1_2_VERSION : TLS1_3_VERSION;
    *max = protocols & TP_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    return 0;
}

static SSL_CTX *server_ctx(struct tp_tls_server *t, const struct tp_cfg_tls_server *cfg,
                           const struct tp_cfg_cert *cert, X509 **leaf, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char e[256];
    int min, max;

    if (!ctx) {
        snprintf(err, errlen, "cannot create a TLS context: %s", tp_tls_error(e, sizeof(e)));
        return NULL;
    }
    proto_bounds(cfg->protocols ? cfg->protocols : TP_TLS_V1_2 | TP_TLS_V1_3, &min, &max);
    SSL_CTX_set_min_proto_version(ctx, min);
    SSL_CTX_set_max_proto_version(ctx, max);
    /* memory BIOs feed whole records in and take them out: partial writes
     * and buffer moves are fine; renegotiation is not something a proxy wants */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx,
                        SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert->cert) != 1) {
        snprintf(err, errlen, "cannot load certificate %s: %s", cert->cert, tp_tls_error(e, sizeof(e)));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cert->key, SSL_FILETYPE_PEM) != 1) {
        unsigned long code = ERR_peek_last_error();
        if (ERR_GET_LIB(code) == ERR_LIB_X509 && ERR_GET_REASON(code) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errlen, "key %s does not match certificate %s", cert->key, cert->cert);
        } else {
            snprintf(err, errlen, "cannot load key %s: %s", cert->key, tp_tls_error(e, sizeof(e)));
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "key %s does not match certificate %s", cert->key, cert->cert);
        goto fail;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, t);
    *leaf = SSL_CTX_get0_certificate(ctx);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

struct tp_tls_server *tp_tls_server_create(const struct tp_cfg_tls_server *cfg, char *err, size_t errlen)
{
    struct tp_tls_server *t = calloc(1, sizeof(*t));

    if (!t || !cfg->n_certs) {
        snprintf(err, errlen, "out of memory or no certificate");
        free(t);
        return NULL;
    }
    t->ctx = calloc(cfg->n_certs, sizeof(*t->ctx));
    t->leaf = calloc(cfg->n_certs, sizeof(*t->leaf));
    if (!t->ctx || !t->leaf) {
        snprintf(err, errlen, "out of memory");
        tp_tls_server_destroy(t);
        return NULL;
    }
    /* ALPN in wire format: length-prefixed protocol names */
    if (cfg->n_alpn == 0) {
        memcpy(t->alpn, "\x08http/1.1", 9);
        t->alpn_len = 9;
    }
    for (size_t i = 0; i < cfg->n_alpn; i++) {
        size_t l = strlen(cfg->alpn[i]);
        if (l == 0 || l > 255 || t->alpn_len + 1 + l > sizeof(t->alpn))
            continue;
        t->alpn[t->alpn_len++] = (unsigned char)l;
        memcpy(t->alpn + t->alpn_len, cfg->alpn[i], l);
        t->alpn_len += l;
    }
    for (size_t i = 0; i < cfg->n_certs; i++) {
        t->ctx[i] = server_ctx(t, cfg, &cfg->certs[i], &t->leaf[i], err, errlen);
        if (!t->ctx[i]) {
            tp_tls_server_destroy(t);
            return NULL;
        }
        t->n++;
    }
    return t;
}

void tp_tls_server_destroy(struct tp_tls_server *t)
{
    if (!t)
        return;
    for (size_t i = 0; t->ctx && i < t->n; i++)
        SSL_CTX_free(t->ctx[i]); /* live connections hold their own references */
    free(t->ctx);
    free(t->leaf);
    free(t);
}

SSL *tp_tls_server_ssl(struct tp_tls_server *t)
{
    SSL *ssl = SSL_new(t->ctx[0]);
    if (ssl)
        SSL_set_accept_state(ssl);
    return ssl;
}

/* ---- client ---- */

struct tp_tls_client *tp_tls_client_create(const struct tp_cfg_upstream_tls *cfg, char *err, size_t errlen)
{
    struct tp_tls_client *t = calloc(1, sizeof(*t));
    char e[256];

    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        snprintf(err, errlen, "cannot create a TLS context: %s", tp_tls_error(e, sizeof(e)));
        free(t);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    t->verify = cfg->verify;
    if (cfg->verify) {
        int ok = cfg->ca ? SSL_CTX_load_verify_locations(t->ctx, cfg->ca, NULL)
                         : SSL_CTX_set_default_verify_paths(t->ctx);
        if (ok != 1) {
            snprintf(err, errlen, "cannot load CA %s: %s", cfg->ca ? cfg->ca : "(system default)",
                     tp_tls_error(e, sizeof(e)));
            tp_tls_client_destroy(t);
            return NULL;
        }
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
    }
    /* protocol: h2: HTTP/2 or nothing (the exchange fails an attempt whose handshake chose otherwise) */
    if (cfg->alpn_h2 && SSL_CTX_set_alpn_protos(t->ctx, (const unsigned char *)"\x02h2", 3) != 0) {
        snprintf(err, errlen, "cannot set ALPN: %s", tp_tls_error(e, sizeof(e)));
        tp_tls_client_destroy(t);
        return NULL;
    }
    if (cfg->sni && !(t->sni = strdup(cfg->sni))) {
        snprintf(err, errlen, "out of memory");
        tp_tls_client_destroy(t);
        return NULL;
    }
    return t;
}

void tp_tls_client_destroy(struct tp_tls_client *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->sni);
    free(t);
}

SSL *tp_tls_client_ssl(struct tp_tls_client *t, const struct tp_addr *ep)
{
    SSL *ssl = SSL_new(t->ctx);
    char ip[64];

    if (!ssl)
        return NULL;
    SSL_set_connect_state(ssl);
    if (t->sni)
        SSL_set_tlsext_host_name(ssl, t->sni);
    if (t->verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (t->sni) {
            X509_VERIFY_PARAM_set1_host(vp, t->sni, 0);
        } else {
            /* no name to check: the certificate must be for the endpoint's address */
            const void *a = ep->ss.ss_family == AF_INET6
                                ? (const void *)&((const struct sockaddr_in6 *)&ep->ss)->sin6_addr
                                : (const void *)&((const struct sockaddr_in *)&ep->ss)->sin_addr;
            if (inet_ntop(ep->ss.ss_family, a, ip, sizeof(ip)))
                X509_VERIFY_PARAM_set1_ip_asc(vp, ip);
        }
    }
    return ssl;
}

/* ---- checks for turnpike -t ---- */

int tp_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen)
{
    struct tp_cfg_cert c = {.cert = (char *)cert, .key = (char *)key};
    struct tp_cfg_tls_server cfg = {.certs = &c, .n_certs = 1};
    struct tp_tls_server *t = tp_tls_server_create(&cfg, err, errlen);

    if (!t)
        return -1;
    tp_tls_server_destroy(t);
    return 0;
}

int tp_tls_check_ca(const char *ca, char *err, size_t errlen)
{
    struct tp_cfg_upstream_tls cfg = {.verify = true, .ca = (char *)ca};
    struct tp_tls_client *t = tp_tls_client_create(&cfg, err, errlen);

    if (!t)
        return -1;
    tp_tls_client_destroy(t);
    return 0;
}
