/* SPDX-License-Identifier: MIT */
/*
 * Configuration: the YAML file of docs/reference.md turned into a validated, typed
 * struct tp_config. Every value keeps its file position for messages.
 *
 * tp_config_load() reads the file with libfyaml (YAML 1.2), checks every key
 * and value, resolves references (routes -> upstreams), and collects every
 * error of the file as "FILE:LINE:COLUMN: message" in a struct tp_diag before
 * it gives up, so an operator sees all mistakes in one run.
 *
 * Ownership: a tp_config owns all of its memory (one arena) and is immutable
 * once loaded; it belongs to the control thread, which builds the runtime
 * snapshot from it. Thread tag: [control] for everything here.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/** Position of a YAML node, 1-based; {0,0} when the value was defaulted. */
struct tp_pos {
    uint32_t line;
    uint32_t col;
};

/** A listen or connect address: "IPv4:port" or "[IPv6]:port". */
struct tp_addr {
    struct sockaddr_storage ss; /* AF_INET or AF_INET6 */
    socklen_t len;              /* of the sockaddr in ss */
    char text[64];              /* as written in the file, NUL-terminated */
};

/* ---- collected diagnostics ---- */

/** The messages of one load, each "FILE:LINE:COLUMN: message" (no newline). */
struct tp_diag {
    char **msgs;
    size_t n;
    size_t cap;
};

/** Appends a formatted message to <d>. Returns 0 or -ENOMEM. */
int tp_diag_add(struct tp_diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Frees the messages of <d> and zeroes it. */
void tp_diag_dispose(struct tp_diag *d);

/* ---- enums ---- */

/** upstreams[].protocol: what the upstream is spoken to in. */
enum tp_upstream_protocol {
    TP_UPROTO_HTTP1 = 0, /* HTTP/1.1 (default), over TLS when `tls` is set */
    TP_UPROTO_H2C,       /* HTTP/2 in clear text, prior knowledge (RFC 9113 3.3) */
    TP_UPROTO_H2,        /* HTTP/2 over TLS, negotiated by ALPN "h2" */
    TP_UPROTO_COUNT
};

enum tp_balance {
    TP_BALANCE_ROUND_ROBIN = 0, /* smooth weighted round robin (default) */
    TP_BALANCE_LEAST_REQUEST,   /* power of two choices on in-flight counts */
    TP_BALANCE_HASH,            /* consistent hashing of hash_key */
    TP_BALANCE_COUNT
};

/** What a key (hash_key, rate_limit.key) is taken from. */
enum tp_key_kind {
    TP_KEY_NONE = 0,
    TP_KEY_CLIENT_IP, /* client_ip */
    TP_KEY_HEADER,    /* header:NAME */
    TP_KEY_COOKIE,    /* cookie:NAME (hash_key only) */
    TP_KEY_PATH,      /* path (hash_key only) */
    TP_KEY_ROUTE,     /* route: one bucket for the route (rate_limit.key only) */
    TP_KEY_CLAIM,     /* claim:NAME: a claim of the request's credential (routes with auth) */
    TP_KEY_COUNT
};

struct tp_key {
    enum tp_key_kind kind;
    char *name; /* header name lowercased, cookie or claim name as written; NULL otherwise */
    size_t name_len;
};

enum tp_access_format { TP_ACCESS_JSON = 0, TP_ACCESS_COMBINED, TP_ACCESS_FORMAT_COUNT };

/** Bits of tp_cfg_retries.on */
enum tp_retry_on {
    TP_RETRY_CONNECT_FAILURE = 1u << 0,
    TP_RETRY_RESET = 1u << 1,
    TP_RETRY_502 = 1u << 2,
    TP_RETRY_503 = 1u << 3,
    TP_RETRY_504 = 1u << 4,
};

/** Bits of tp_cfg_tls_server.protocols */
enum tp_tls_proto {
    TP_TLS_V1_2 = 1u << 0,
    TP_TLS_V1_3 = 1u << 1,
};

/* ---- sections ---- */

struct tp_cfg_cert {
    char *cert; /* path to a PEM chain */
    char *key;  /* path to a PEM private key */
    struct tp_pos pos;
};

struct tp_cfg_tls_server {
    struct tp_cfg_cert *certs; /* chosen by SNI; certs[0] is the default */
    size_t n_certs;
    unsigned protocols; /* TP_TLS_* bits; default both */
    char **alpn;        /* protocol ids ("h2", "http/1.1", "http/1.0"); default {"http/1.1"} */
    size_t n_alpn;
    struct tp_pos pos;
};

struct tp_cfg_listener {
    char *name; /* default "listeners[i]" */
    struct tp_addr addr;
    struct tp_cfg_tls_server *tls; /* NULL = plain HTTP */
    bool h2c;                      /* plain listener: HTTP/2 with prior knowledge too (default false) */
    struct tp_pos pos;             /* of the list item */
    struct tp_pos addr_pos;
};

struct tp_cfg_endpoint {
    struct tp_addr addr; /* addr.text is the metric label `endpoint`; unset (family 0) for a name */
    uint32_t weight;     /* 1..1000, default 1 */
    struct tp_pos pos;
    /* address: host:port with a DNS name: resolved at run time, every A and AAAA
     * record an endpoint of this weight (src/upstream/dns.c); NULL for an address */
    char *name;    /* "host:port" as written */
    char *host;    /* the host, lowercased */
    uint16_t port; /* 1..65535 */
};

struct tp_cfg_upstream_tls {
    char *sni;    /* NULL = none */
    bool verify;  /* default true */
    char *ca;     /* CA bundle path; NULL = system default */
    bool alpn_h2; /* offer only "h2" by ALPN (protocol: h2); not a YAML key */
    struct tp_pos pos;
};

struct tp_cfg_health_check {
    char *path;               /* default "/" ; must start with '/' */
    uint64_t interval_ms;     /* default 2000 */
    uint64_t timeout_ms;      /* default 1000 */
    uint32_t healthy_after;   /* default 2 */
    uint32_t unhealthy_after; /* default 3 */
};

struct tp_cfg_circuit_breaker {
    uint32_t consecutive_failures; /* default 5 */
    double failure_ratio;          /* (0,1], default 0.5 */
    uint32_t min_requests;         /* default 20 */
    uint64_t window_ms;            /* default 10000; 1s..1h */
    uint64_t open_for_ms;          /* default 10000 */
    uint32_t half_open_requests;   /* default 3 */
};

struct tp_cfg_retries {
    uint32_t attempts; /* extra tries after the first, 0..10; default 1 */
    unsigned on;       /* TP_RETRY_* bits; default connect_failure|reset */
};

struct tp_cfg_upstream {
    char *name;
    struct tp_cfg_endpoint *endpoints;
    size_t n_endpoints; /* >= 1 */
    enum tp_balance balance;
    enum tp_upstream_protocol protocol;             /* default TP_UPROTO_HTTP1 */
    struct tp_key hash_key;                         /* kind != NONE iff balance == HASH */
    uint32_t keepalive;                             /* idle per worker per endpoint, default 32 */
    struct tp_cfg_upstream_tls *tls;                /* NULL = plain */
    struct tp_cfg_health_check *health_check;       /* NULL = none */
    struct tp_cfg_circuit_breaker *circuit_breaker; /* NULL = none */
    uint32_t max_concurrent_requests;               /* 0 = unlimited */
    struct tp_cfg_retries *retries;                 /* NULL = none */
    uint64_t resolve_every_ms; /* names re-resolved this often (shorter TTLs win); 30 s */
    struct tp_pos pos;
};

/** resolver: how endpoint names are resolved. */
struct tp_cfg_resolver {
    struct tp_addr *servers; /* NULL = the servers of /etc/resolv.conf */
    size_t n_servers;
    uint64_t timeout_ms; /* per query try; default 1 s */
};

/** A header name and value; name as written (case kept), compared case-insensitively. */
struct tp_header_kv {
    char *name;
    size_t name_len;
    char *value;
    size_t value_len;
};

/** request_headers / response_headers */
struct tp_header_rewrite {
    struct tp_header_kv *set; /* replace (or add) these */
    size_t n_set;
    struct tp_header_kv *remove; /* names only (value NULL) */
    size_t n_remove;
};

struct tp_cfg_split {
    size_t upstream; /* index into tp_config.upstreams */
    uint32_t weight; /* 0..1000; the sum over a route is > 0 */
    struct tp_pos pos;
};

struct tp_cfg_rate_limit {
    uint64_t tokens;    /* rate = tokens per period_ms ("100/s" -> 100, 1000) */
    uint64_t period_ms; /* 1000, 60000 or 3600000 */
    uint64_t burst;     /* bucket size, >= 1; default tokens */
    struct tp_key key;  /* default client_ip */
    bool global;        /* scope: global (buckets shared through rate_limit_store); default local */
};

/** What a global limit does while the store cannot answer (rate_limit_store.on_failure). */
enum tp_store_failure {
    TP_STORE_FAIL_LOCAL = 0, /* each instance enforces the whole limit alone */
    TP_STORE_FAIL_ALLOW,     /* admit */
    TP_STORE_FAIL_COUNT
};

/** rate_limit_store: where `scope: global` buckets live. */
struct tp_cfg_rl_store {
    struct tp_addr redis;             /* a Redis server (or Redis-protocol endpoint), IP:port */
    uint64_t timeout_ms;              /* a store answer slower than this is a failure; default 5 */
    enum tp_store_failure on_failure; /* default local */
    char *prefix;                     /* of the Redis keys; default "turnpike:rl:" */
    struct tp_pos pos;
};

/* ---- authentication (auth providers, routes[].auth) ---- */

/** Where a JWT provider looks for the token (auth[].jwt.from), in order. */
enum tp_cred_from {
    TP_FROM_BEARER = 1, /* header:authorization: "Authorization: Bearer <token>" */
    TP_FROM_HEADER,     /* header:NAME: the whole value of header NAME */
    TP_FROM_COOKIE,     /* cookie:NAME */
    TP_FROM_QUERY,      /* query:NAME: a query-string parameter (raw, not percent-decoded) */
};

struct tp_cfg_cred_source {
    enum tp_cred_from kind;
    char *name; /* header name lowercased; cookie or query name as written; NULL for BEARER */
    size_t name_len;
};

/** forward_claims: claim -> header set towards the upstream. */
struct tp_cfg_claim_header {
    char *claim;
    char *header; /* lowercased */
    size_t header_len;
};

struct tp_cfg_jwt {
    char *keys;                      /* JWKS file path, read at load and on every reload */
    struct tp_pos keys_pos;          /* of the keys value, for errors of the file */
    char *issuer;                    /* NULL = iss not checked */
    char **audiences;                /* aud must contain one of them */
    size_t n_audiences;              /* 0 = aud not checked */
    struct tp_cfg_cred_source *from; /* default [header:authorization] */
    size_t n_from;
    uint64_t clock_skew_ms; /* default 30 s; whole seconds are used */
    struct tp_cfg_claim_header *forward_claims;
    size_t n_forward_claims;
};

struct tp_cfg_api_key {
    char *header; /* lowercased; default "x-api-key" */
    size_t header_len;
    char *keys; /* key file path: a YAML list of {name, sha256, tenant} */
    struct tp_pos keys_pos;
};

/** auth[]: a named provider; exactly one of jwt and api_key. */
struct tp_cfg_auth {
    char *name;
    struct tp_cfg_jwt *jwt;
    struct tp_cfg_api_key *api_key;
    struct tp_pos pos;
};

/** routes[].auth */
struct tp_cfg_route_auth {
    size_t provider;                     /* index into tp_config.auth */
    struct tp_header_kv *require_claims; /* claim name -> value; name as written */
    size_t n_require_claims;
    bool forward_credential; /* default false: the credential is removed */
};

struct tp_cfg_direct_response {
    uint16_t status; /* 200..599 */
    char *body;      /* may be empty, never NULL */
    size_t body_len;
};

#define TP_UPSTREAM_NONE ((size_t)-1)

struct tp_cfg_route {
    char *name;                   /* default "routes[i]" */
    char *host;                   /* NULL = any; lowercased; "*.example.com" is a wildcard */
    char *path;                   /* "/" when absent */
    bool path_exact;              /* `path:` (true) or `path_prefix:` (false) */
    uint64_t methods;             /* bit (1 << llhttp method); 0 = any */
    struct tp_header_kv *headers; /* match.headers: all must equal */
    size_t n_headers;
    size_t upstream;            /* index, or TP_UPSTREAM_NONE with split/direct */
    struct tp_cfg_split *split; /* NULL unless split */
    size_t n_split;
    char *strip_prefix;                   /* NULL = none */
    struct tp_cfg_rate_limit *rate_limit; /* NULL = none */
    struct tp_header_rewrite request_headers;
    struct tp_header_rewrite response_headers;
    struct tp_cfg_direct_response *direct; /* NULL unless direct_response */
    struct tp_cfg_route_auth *auth;        /* NULL = no authentication */
    char **upgrade;   /* Upgrade tokens tunnelled, lowercase; NULL = the default [websocket] */
    size_t n_upgrade; /* entries of upgrade (0 with upgrade set: none) */
    struct tp_pos pos;
};

struct tp_config {
    char *source;       /* path the file was loaded from, as given */
    uint8_t sha256[32]; /* of the file's bytes */

    uint32_t workers; /* 0 = auto (CPUs in the affinity mask) */

    struct tp_cfg_listener *listeners; /* >= 1 */
    size_t n_listeners;

    bool has_admin;       /* admin section present; absent = no admin listener */
    struct tp_addr admin; /* admin.address */

    char *access_log_path;                   /* NULL = off; "-" = stdout */
    enum tp_access_format access_log_format; /* default json */

    uint64_t max_connections;           /* default 100000 */
    uint64_t max_header_bytes;          /* default 16 KiB; 1 KiB .. 1 MiB */
    uint64_t max_body_bytes;            /* default 10 MiB */
    uint64_t max_unsent_bytes;          /* TCP_NOTSENT_LOWAT of client and upstream sockets; default
                                           128 KiB, 0 = the host's net.ipv4.tcp_notsent_lowat */
    uint32_t h2_max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS; default 100, 1..2^31-1 */
    uint32_t h2_max_resets_per_s;       /* client resets per connection and second; default 100 */

    uint64_t client_header_ms;     /* default 10 s */
    uint64_t client_idle_ms;       /* default 60 s */
    uint64_t upstream_connect_ms;  /* default 2 s */
    uint64_t upstream_response_ms; /* default 30 s */
    uint64_t tunnel_idle_ms;       /* default 1 h: a tunnel with no byte either way this long is closed */
    uint64_t drain_timeout_ms;     /* default 30 s */

    struct tp_cfg_resolver resolver;

    struct tp_cfg_upstream *upstreams;
    size_t n_upstreams;
    struct tp_cfg_route *routes;
    size_t n_routes;
    struct tp_cfg_auth *auth; /* auth providers */
    size_t n_auth;
    struct tp_cfg_rl_store *rl_store; /* rate_limit_store; NULL = none (no route may be scope: global) */

    void *_arena; /* private: owns every pointer above */
};

/**
 * Loads and validates the file at <path>. On success returns the config, and
 * <diag> holds the warnings ("PATH:LINE:COLUMN: warning: ...": a valid key
 * without effect where it stands, e.g. hash_key without balance: hash). On
 * failure returns NULL and
 * appends every error found to <diag>, each "PATH:LINE:COLUMN: message" with
 * PATH as given. An unreadable file gives one message "PATH: <strerror>".
 */
struct tp_config *tp_config_load(const char *path, struct tp_diag *diag);

/** Same as tp_config_load() for a file already in memory; <name> is used in messages. */
struct tp_config *tp_config_parse(const char *name, const char *buf, size_t len, struct tp_diag *diag);

/** Frees <cfg> and everything it owns. NULL is fine. */
void tp_config_destroy(struct tp_config *cfg);

/* ---- value parsers, shared with tests and the admin API ---- */

/** "250ms", "2s", "1m", "1h" -> milliseconds. Returns 0 or -EINVAL / -ERANGE.
 *  One unit exactly; "0s" parses (callers range-check); overflow is -ERANGE. */
int tp_parse_duration_ms(const char *s, uint64_t *out);
/** "512", "16KiB", "10MiB", "1GiB", "1TiB" (also "KB"/"MB"/"GB"/"TB" as powers of 1000) -> bytes.
 *  Returns 0 or -EINVAL / -ERANGE (overflow). */
int tp_parse_size(const char *s, uint64_t *out);
/** "100/s", "6000/m", "50000/h" -> tokens and period. Returns 0, -EINVAL, or -ERANGE
 *  when the count is 0 or above 1e9. */
int tp_parse_rate(const char *s, uint64_t *tokens, uint64_t *period_ms);
/** "127.0.0.1:8080", "[::1]:8080" -> address (port 1..65535). Returns 0, -EINVAL, or
 *  -ERANGE for a valid host with a port outside 1..65535. <out> is untouched on error. */
int tp_parse_addr(const char *s, struct tp_addr *out);
