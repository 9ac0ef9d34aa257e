/* SPDX-License-Identifier: MIT */
/*
 * TLS with OpenSSL: contexts built from the configuration (control thread)
 * and the checks `turnpike -t` runs on what a configuration names.
 *
 * Server side (listeners[].tls): one SSL_CTX per certificate; the first is
 * the default, the SNI callback switches to the first certificate whose names
 * (subjectAltName, else CN; wildcards as X509_check_host allows) match the
 * name the client asked for. Protocol versions and ALPN come from the config.
 * Client side (upstreams[].tls): one SSL_CTX per upstream with peer
 * verification against `ca` or the system store, and `sni` as the name sent
 * and checked (the endpoint's IP address is checked when there is no sni).
 *
 * Contexts are immutable once built and shared by every shard (OpenSSL makes
 * SSL_new on a shared SSL_CTX thread-safe); a configuration generation owns
 * them, so certificates are read again on every reload.
 */
#pragma once

#include <stddef.h>

#include <openssl/ssl.h>

#include <turnpike/config.h>

struct tp_tls_server;
struct tp_tls_client;

/** Builds the server contexts of a listener. NULL with a message in <err> on failure. [control] */
struct tp_tls_server *tp_tls_server_create(const struct tp_cfg_tls_server *cfg, char *err, size_t errlen);
void tp_tls_server_destroy(struct tp_tls_server *t);
/** A new server-side SSL (accept state) on the default context. [any] */
SSL *tp_tls_server_ssl(struct tp_tls_server *t);

/** Builds the client context of an upstream. NULL with a message in <err> on failure. [control] */
struct tp_tls_client *tp_tls_client_create(const struct tp_cfg_upstream_tls *cfg, char *err, size_t errlen);
void tp_tls_client_destroy(struct tp_tls_client *t);
/** A new client-side SSL (connect state) for <ep>, with SNI and the name to verify. [any] */
SSL *tp_tls_client_ssl(struct tp_tls_client *t, const struct tp_addr *ep);

/** Loads <cert> (PEM chain) and <key> and checks they belong together. 0, or -1 with <err>. [control] */
int tp_tls_check_pair(const char *cert, const char *key, char *err, size_t errlen);
/** Loads a CA bundle. 0, or -1 with <err>. [control] */
int tp_tls_check_ca(const char *ca, char *err, size_t errlen);

/** The most recent OpenSSL error of this thread as text (and clears the queue). [any] */
const char *tp_tls_error(char *buf, size_t len);
