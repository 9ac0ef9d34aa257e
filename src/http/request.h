/* SPDX-License-Identifier: MIT */
/*
 * The request layer: what happens to a request whatever protocol carries it
 * on either side. Routing, rate limits, the choice of upstream and endpoint,
 * attempts and retries, the header rules (hop-by-hop removal, rewrites,
 * X-Forwarded-*, X-Request-Id, traceparent), gateway-made answers, metrics
 * and the access log are written here once.
 *
 * Two seams connect it to protocols:
 *   - a downstream session (struct tp_ds + struct tp_ds_ops) is the client
 *     side: an HTTP/1 connection (h1_server.c) or an HTTP/2 stream (h2_server.c);
 *   - an upstream exchange (struct tp_ux_ops) is the upstream side of one
 *     attempt: HTTP/1 with keepalive pools today (h1_client.c).
 * Sessions parse and frame; the request layer decides.
 *
 * Ownership: a request belongs to its shard and to its downstream session,
 * which begins and ends it; everything it holds is released by tp_req_end.
 * [shard]
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <turnpike/breaker.h>

#include "http/h1.h"
#include "rt/reactor.h"

struct tp_req;
struct tp_transport;
struct tp_h2_session;
struct tp_h2_stream;
struct tp_h2c_conn;
struct h2c_stream;
struct tp_jwt_claims;
struct tp_apikey;

/* ---- limits and timeouts of one generation, copied where they are used ---- */

struct tp_limits {
    uint64_t max_header_bytes;
    uint64_t max_body_bytes;
    uint64_t client_header_ms;
    uint64_t client_idle_ms;
    uint64_t upstream_connect_ms;
    uint64_t upstream_response_ms;
    uint64_t tunnel_idle_ms;
    uint32_t h2_max_streams;      /* SETTINGS_MAX_CONCURRENT_STREAMS of new HTTP/2 connections */
    uint32_t h2_max_resets_per_s; /* client resets per HTTP/2 connection and second */
};

/* ---- the downstream seam ---- */

/** How the upstream's response body is framed on the wire. */
enum tp_framing {
    TP_FRAME_NONE = 0, /* no body */
    TP_FRAME_LENGTH,   /* Content-Length */
    TP_FRAME_CHUNKED,  /* Transfer-Encoding: chunked */
    TP_FRAME_CLOSE,    /* delimited by the upstream's close */
};

/** What the request layer tells a downstream session about a response head, and what it answers. */
struct tp_resp_info {
    uint8_t framing;     /* in: enum tp_framing of the upstream's body */
    bool head_only;      /* in: a response to HEAD: framing headers kept, no body follows */
    bool want_content;   /* out: deliver the body decoded (chunked framing removed) rather than as received */
    const char *upgrade; /* in, 101 only: the protocol switched to (the Upgrade value to send) */
    uint32_t upgrade_len;
};

/**
 * A downstream session's operations: the client side of a request. The
 * request layer calls these; they never call back into it synchronously
 * except through tp_req_end / tp_req_response_finished as documented.
 */
struct tp_ds_ops {
    /**
     * Answers <r> with a gateway-made error: <status>, JSON body with
     * <reason>, the request id and r->extra_hdrs. <close>: the connection
     * (or stream) ends after it. May end the request.
     */
    void (*error)(struct tp_shard *sh, struct tp_req *r, unsigned status, const char *reason, bool close);
    /** Answers <r> with its route's direct_response. May end the request. */
    void (*direct)(struct tp_shard *sh, struct tp_req *r);
    /**
     * Queues a response head: an interim one (1xx, dropped where the client
     * cannot take it) or the final one, with the headers of <h> that the
     * response rules keep. Returns false when it could not (out of memory,
     * too large): the caller fails the attempt.
     */
    bool (*head)(struct tp_shard *sh, struct tp_req *r, unsigned status, const struct tp_head *h,
                 struct tp_resp_info *ri);
    /** Queues body bytes: a slice of a received buffer (no copy). false: out of memory. */
    bool (*body)(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *p, uint32_t len);
    /** Queues body bytes held in block <b> (reference taken over). false: out of memory. */
    bool (*body_block)(struct tp_shard *sh, struct tp_req *r, struct tp_block *b);
    /**
     * Queues the response's trailer section <h> (after the last body bytes,
     * before done): fields as tp_req_trailer_fields emits them. HTTP/2: a
     * trailing HEADERS frame; HTTP/1.1 client whose response goes chunked:
     * the trailer fields of the last chunk; otherwise they are dropped.
     * <h> is read during the call only. false: out of memory (the caller
     * fails the attempt).
     */
    bool (*trailers)(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h);
    /** The response is complete: finish it (the request may end here). */
    void (*done)(struct tp_shard *sh, struct tp_req *r);
    /** The response cannot complete after it started: cut it short (reset). Ends the request. */
    void (*abort)(struct tp_shard *sh, struct tp_req *r);
    /** Takes back the response head if it was not handed to the kernel yet; true when it was. */
    bool (*unqueue_head)(struct tp_shard *sh, struct tp_req *r);
    /** True while the client's queue is over its budget: the exchange stops relaying until resume. */
    bool (*congested)(const struct tp_req *r);
    /** Hands queued response bytes to the socket. */
    void (*flush)(struct tp_shard *sh, struct tp_req *r);
    /** The upstream side can take request body bytes (again): read on. */
    void (*resume_body)(struct tp_shard *sh, struct tp_req *r);
    /**
     * The 101 head is queued: gives the client connection's transport up to
     * a tunnel. From here the session no longer sees <r>; the tunnel calls
     * the session's on_closed when the transport has closed. NULL when this
     * session cannot be tunnelled.
     */
    struct tp_transport *(*tunnel)(struct tp_shard *sh, struct tp_req *r);
};

/** The part of every downstream session the request layer reads. */
struct tp_ds {
    const struct tp_ds_ops *ops;
    char peer[48]; /* client address text (X-Forwarded-For, client_ip keys, logs) */
    uint8_t peer_len;
    uint8_t listener; /* index into the shard's listeners */
    bool tls;         /* the client connection is TLS (X-Forwarded-Proto) */
};

/* ---- the upstream seam ---- */

/**
 * An upstream exchange's operations: one attempt of <r> towards r->att.ep.
 * Results come back through tp_proxy_* (request.h, proxy.c).
 */
struct tp_ux_ops {
    /**
     * Encodes the request for the upstream (into r->uhead) while its head is
     * alive; every attempt sends that. false: too large (431).
     */
    bool (*prepare)(struct tp_shard *sh, struct tp_req *r);
    /** Starts the attempt: a pooled connection or a new one. */
    void (*start)(struct tp_shard *sh, struct tp_req *r);
    /** Drops the attempt's connection (client gone, failure, retry): closed, never reused. */
    void (*abort)(struct tp_shard *sh, struct tp_req *r);
    /** True when request body bytes can be queued now (connected, under its send budget). */
    bool (*body_ready)(const struct tp_req *r);
    /** Queues request body content (slice of a received buffer, no copy). false: out of memory. */
    bool (*body)(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *p, uint32_t len);
    /**
     * Trailer fields of the request (<h>), after the last body call and
     * before body_end; the exchange copies what it keeps, as
     * tp_req_trailer_fields emits them. HTTP/1: the last chunk of a chunked
     * body (a body sent with Content-Length has no room: dropped); HTTP/2:
     * HEADERS ending the stream. NULL: the protocol cannot carry them.
     * false: out of memory.
     */
    bool (*trailers)(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h);
    /** The request body is complete (after the last body call). false: out of memory. */
    bool (*body_end)(struct tp_shard *sh, struct tp_req *r);
    /** Body bytes were queued, or a pause ended: send them. */
    void (*flush)(struct tp_shard *sh, struct tp_req *r);
    /** The client's queue has room again: continue relaying the response. */
    void (*resume)(struct tp_shard *sh, struct tp_req *r);
};

/* ---- requests ---- */

enum tp_body_state {
    TP_BODY_NONE = 0, /* no request body */
    TP_BODY_STREAM,   /* body bytes are being read and forwarded */
    TP_BODY_DISCARD,  /* body bytes are read and dropped (gateway-made answer) */
    TP_BODY_DONE,     /* message complete */
};

enum tp_resp_state {
    TP_RESP_NONE = 0, /* nothing sent to the client for this request yet */
    TP_RESP_HEAD,     /* head (and maybe body) sent or queued, streaming */
    TP_RESP_DONE,     /* response complete (queued) */
};

/** Why an attempt failed (decides retries and the 502/504 answer). */
enum tp_fail_kind {
    TP_FAIL_CONNECT = 0, /* connect refused / unreachable / TLS handshake: nothing was sent */
    TP_FAIL_CONNECT_TIMEOUT,
    TP_FAIL_RESET,   /* EOF or reset before the response was complete */
    TP_FAIL_TIMEOUT, /* upstream_response passed */
    TP_FAIL_INVALID, /* unparsable response */
    TP_FAIL_STATUS,  /* a 502/503/504 that retries.on names */
    TP_FAIL_REFUSED, /* HTTP/2: the upstream did not process the stream (REFUSED_STREAM, above a GOAWAY's
                        last stream id, never sent): safe to retry whatever the method (RFC 9113 8.7) */
};

/**
 * What one upstream try holds, acquired in one place (attempt_begin) and
 * released in one place (attempt_end): the endpoint, its in-flight count,
 * the breaker's admission, the exchange's connection.
 */
struct tp_attempt {
    struct tp_rt_endpoint *ep;    /* NULL between attempts */
    void *conn;                   /* the exchange's connection while attached */
    struct tp_breaker_pass bpass; /* what the endpoint's breaker admitted this attempt with */
    uint64_t start_ns;            /* [ns] */
    bool breaker_admitted;
    bool counted_ep; /* holds an endpoint in-flight slot (least_request) */
    bool reused;     /* the connection came from the pool */
    bool resp_bytes; /* the upstream sent response bytes */
    bool req_sent;   /* the request was fully handed to the upstream socket */
};

/** Where a request waiting for a lease is (tp_req.parked). */
enum tp_park { TP_PARK_NONE = 0, TP_PARK_WAIT, TP_PARK_RUN };

struct tp_req;
/** A list of waiting requests, linked through park_prev / park_next. */
struct tp_req_list {
    struct tp_req *head, *tail;
};

struct tp_req {
    struct tp_req *next_free;
    struct tp_ds *ds;           /* the downstream session */
    const struct tp_ux_ops *ux; /* the upstream protocol of <up> */
    struct tp_snapshot *snap;   /* generation the request runs on */
    struct tp_rt_route *route;
    struct tp_rt_upstream *up;
    struct tp_rt_endpoint *last_ep; /* endpoint of the last attempt (access log) */
    struct tp_attempt att;
    struct tp_block *info;  /* method/host/path copies for the access log */
    struct tp_block *uhead; /* the request as the upstream protocol encodes it, kept for retries */
    uint64_t hash_key;      /* balance: hash, computed while the head is alive */
    uint64_t start_ns;
    uint64_t up_ns; /* [ns] total upstream time */
    uint64_t content_length;
    uint64_t body_bytes;    /* request body bytes read so far */
    uint64_t body_fwd;      /* request body bytes handed to the upstream side (a retry cannot resend them) */
    uint64_t bytes_in;      /* head + body from the client */
    uint64_t bytes_out;     /* to the client */
    uint32_t resp_head_len; /* bytes of the response head among bytes_out */
    uint16_t status;        /* status sent to the client */
    uint16_t fail_status;   /* upstream status that triggered a retry */
    uint8_t method;
    uint8_t http_minor;    /* HTTP/1.<minor> of the client */
    uint8_t body_state;    /* enum tp_body_state */
    uint8_t resp_state;    /* enum tp_resp_state */
    uint8_t attempts;      /* upstream attempts so far */
    bool client_keepalive; /* the client allows keep-alive */
    bool chunked;          /* the request body is chunked */
    bool resp_close;       /* close the client connection after this response */
    bool counted_up;       /* holds an upstream in-flight slot (max_concurrent_requests) */
    bool expect_continue;
    bool body_too_large; /* max_body_bytes passed while streaming */
    bool body_left_ok;   /* discarding a small unread body keeps the connection */
    bool aborted;        /* the upstream side failed after the response started */
    bool force_fresh;    /* next attempt on a new connection, not a pooled one */
    bool fresh_retry_done;
    bool head_cl_seen;      /* the client sent Content-Length */
    bool head_parsed;       /* the request head was complete and parsed */
    bool head_unflushed;    /* the response head is the last thing queued, not handed to the kernel */
    bool uhead_open;        /* uhead lacks Host and its end: each attempt adds the endpoint's */
    bool upgrade_req;       /* the client asked to switch protocols (Upgrade + Connection: upgrade) */
    bool counted;           /* metrics recorded already (a tunnel's, at its 101) */
    bool grpc;              /* content-type application/grpc: gateway answers in gRPC form */
    bool h2;                /* the client speaks HTTP/2 (http_minor is then meaningless) */
    uint8_t grpc_status;    /* gRPC calls: the response's grpc-status (0..16, TP_GRPC_OTHER), TP_GRPC_NONE */
    uint64_t deadline_ms;   /* [ms] the call's deadline from its grpc-timeout; 0: none */
    uint8_t upg_len;        /* bytes in upg */
    char upg[63];           /* Upgrade tokens offered to the upstream (the route allows them) */
    struct tp_block *names; /* a tunnel's route, upstream, endpoint and subject names for its log line */
    struct tp_jwt_claims *claims;          /* the JWT's claims (routes with auth), one reference */
    const struct tp_apikey *apikey;        /* the API key (routes with auth), in r->snap's table */
    const struct tp_cfg_cred_source *cred; /* where the JWT was found (removed before forwarding) */
    uint64_t tried[4];                     /* endpoints tried by this request (bit per index) */
    uint16_t extra_len;                    /* bytes in extra_hdrs */
    uint32_t host_off, host_len;           /* Host (or absolute-form authority) within the head */
    uint32_t abs_path_off;                 /* absolute-form: offset of the path within the target */
    struct tp_limits limits;
    const char *error;    /* reason of a gateway-made response */
    int err;              /* the error behind it (-errno or TP_E*), 0 when none */
    char extra_hdrs[160]; /* RateLimit-* / Retry-After lines for the response */
    char id[65];          /* X-Request-Id */
    uint8_t id_len;
    char trace[56]; /* traceparent forwarded */
    /* waiting for a lease (scope: global, empty pool): on a park list of the shard */
    struct tp_req *park_prev, *park_next;
    uint64_t park_until_ns; /* then rate_limit_store.on_failure decides */
    uint64_t rl_key;        /* the rate limit key's hash */
    uint8_t parked;         /* enum tp_park: nonzero while waiting (the session keeps the head) */
    struct tp_head head;    /* request head */
};

/* ---- per-shard state of the HTTP layer ---- */

struct tp_http_shard {
    struct tp_limits limits;         /* of sh->snap, for new connections and requests */
    struct tp_route_stats unmatched; /* requests that found no route */
    tp_stat_t active_requests;
    struct tp_req *req_free;
    uint32_t n_req_free;
    int slab_conn, slab_uconn;         /* slab ids of client and upstream connections */
    struct tp_tunnel *tunnels;         /* the shard's tunnels */
    struct tp_jwt_cache *jwt_cache;    /* verified tokens (routes with a JWT provider) */
    struct tp_h2_session *h2_sessions; /* the shard's HTTP/2 client connections */
    struct tp_h2_session *h2_kick;     /* HTTP/2 connections with output to write this iteration */
    struct tp_h2_stream *h2_free;      /* free HTTP/2 stream objects */
    uint32_t n_h2_free;
    int slab_h2c;                 /* slab id of upstream HTTP/2 connections */
    struct tp_h2c_conn *h2c_kick; /* upstream HTTP/2 connections with output to write this iteration */
    struct h2c_stream *h2c_free;  /* free upstream HTTP/2 stream objects */
    uint32_t n_h2c_free;
    /* requests waiting for a lease, oldest first (request.c), those being taken
     * for again, and the timer that ends the wait when the store is too slow */
    struct tp_req_list park, park_run;
    uint32_t n_parked;       /* on either list */
    struct tp_req *park_cur; /* the request being resumed; cleared when it ends meanwhile */
    struct tp_timer park_timer;
};

/** The HTTP layer's state of shard <sh>. [any: counters are read by the control thread] */
struct tp_http_shard *tp_http_shard(const struct tp_shard *sh);

/**
 * Registers the HTTP layer with the reactor (slabs, acceptor, shard hooks),
 * the transport, and the access log with the control thread. Process start,
 * before tp_runtime_run. Returns 0 or -1. [control]
 */
int tp_http_register(void);

/* ---- the request layer's API (request.c) ---- */

/** Starts a request on session <ds> (on the shard's current snapshot); NULL when out of memory. */
struct tp_req *tp_req_begin(struct tp_shard *sh, struct tp_ds *ds);
/** Releases everything <r> holds, records it (metrics, access log) and frees it. */
void tp_req_end(struct tp_shard *sh, struct tp_req *r);

/**
 * The head of <r> is parsed and its framing known; the session filled
 * method, host, target, body state. Checks what every protocol shares (ids,
 * path), routes, applies the route's policies and starts the answer: a
 * gateway-made one, the direct_response, or the proxy.
 */
void tp_req_dispatch(struct tp_shard *sh, struct tp_req *r, const char *path, size_t path_len);

/** Shard <sh>'s timer over requests waiting for a lease (set up by the HTTP layer's create hook). */
void tp_req_park_timer(struct tp_timer *t, uint64_t now_ms);

/** A lease for a pool this shard waits on landed (TP_MSG_LEASE): the waiting requests take again. */
void tp_req_park_wake(struct tp_shard *sh);

/** Answers <r> with a gateway-made error (the downstream session writes it). */
void tp_req_error(struct tp_shard *sh, struct tp_req *r, unsigned status, const char *reason, bool close);

/**
 * Sets the request's X-Request-Id and traceparent: the client's when valid
 * and <from_head> (the parsed head is alive), else new ones.
 */
void tp_req_ids(struct tp_shard *sh, struct tp_req *r, bool from_head);

/**
 * Emits the header fields of <r>'s request as the upstream gets them: the
 * client's minus hop-by-hop, framing and the route's removed/set names;
 * X-Forwarded-For merged with the client appended; the route's set headers;
 * X-Forwarded-Proto/Host, X-Request-Id, traceparent. Returns false when no
 * Host field was emitted (an HTTP/1.0 client may send none): the exchange
 * then names the endpoint it connects to. Framing headers are the exchange's.
 */
bool tp_req_upstream_headers(const struct tp_req *r, const struct tp_hdr_sink *s, void *ctx);

/**
 * Appends the request target as the upstream gets it to <b> (tp_blk_put
 * rules): origin-form, the route's strip_prefix removed, a credential taken
 * from the query string (auth from: query:NAME) removed.
 */
void tp_req_upstream_target(const struct tp_req *r, struct tp_block *b);

/** Receives one header field (name, value). */
typedef void (*tp_field_fn)(void *ctx, const char *name, size_t nlen, const char *v, size_t vlen);

/** The answer's own fields kept preformatted in r->extra_hdrs (RateLimit-*, Retry-After, ...), one by one. */
void tp_req_extra_fields(const struct tp_req *r, tp_field_fn field, void *ctx);

/**
 * Emits the header fields of the upstream's response head <h> as the client
 * gets them: minus hop-by-hop (and names listed in its Connection header)
 * and the route's removed/set names; then the route's set headers,
 * RateLimit lines, X-Request-Id. Framing headers are the session's.
 * Returns true when a Date field was among them: a response without one
 * gets the gateway's (RFC 9110 6.6.1: a recipient with a clock adds it).
 */
bool tp_req_response_headers(const struct tp_req *r, struct tp_head *h, const struct tp_hdr_sink *s,
                             void *ctx);

/**
 * Emits the fields of trailer section <h> (either direction) as the other
 * side gets them: all but the fields a trailer must not carry (hop-by-hop
 * and framing fields, Host, TE, Trailer, pseudo-fields) and empty names.
 * The route's header rules apply to heads only, not to trailers.
 */
void tp_req_trailer_fields(const struct tp_head *h, const struct tp_hdr_sink *s, void *ctx);

/* ---- the proxy (proxy.c): attempts, retries, results from the exchange ---- */

/** Forwards <r> to its route's upstream (split chosen here). */
void tp_proxy_start(struct tp_shard *sh, struct tp_req *r);
/** The client went away or the request ends: drop the upstream side. */
void tp_proxy_abort(struct tp_shard *sh, struct tp_req *r);
/** The current attempt failed with <kind> (<err>: the cause): retry, or answer 502/504, or cut short. */
void tp_proxy_failed(struct tp_shard *sh, struct tp_req *r, enum tp_fail_kind kind, int err);
/**
 * A response head (<status>, parsed <h>) arrived for the current attempt.
 * Returns false when the attempt or the request ended (retry on status,
 * refused head).
 */
bool tp_proxy_response_head(struct tp_shard *sh, struct tp_req *r, unsigned status, struct tp_head *h,
                            struct tp_resp_info *ri);
/**
 * The response's trailer section <h> arrived (after its body, before
 * tp_proxy_response_done): noted (grpc-status) and handed to the downstream
 * session. Returns false when the session could not take it (out of memory):
 * the exchange fails the attempt.
 */
bool tp_proxy_response_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h);
/** The response is complete; the exchange has released its connection. */
void tp_proxy_response_done(struct tp_shard *sh, struct tp_req *r);
/**
 * The upstream switched protocols (its 101 went to the client through
 * tp_proxy_response_head): the exchange hands over its connection's
 * transport <ut>, detached from <r>; the request becomes a tunnel.
 */
void tp_proxy_upgraded(struct tp_shard *sh, struct tp_req *r, struct tp_transport *ut);

/**
 * When the exchange must have heard from the upstream, counting from
 * <now_ms>: <after_ms> later (upstream_connect or upstream_response), or the
 * call's deadline (grpc-timeout) when that comes first.
 */
static inline uint64_t tp_req_upstream_deadline(const struct tp_req *r, uint64_t now_ms, uint64_t after_ms)
{
    uint64_t d = now_ms + after_ms;
    return r->deadline_ms && r->deadline_ms < d ? r->deadline_ms : d;
}

/** Records <r>'s metrics (route counters, duration) now rather than at its end. */
void tp_req_count(struct tp_shard *sh, struct tp_req *r);

/* ---- authentication (authenticate.c) ---- */

/**
 * The route's auth: finds the credential, verifies it (through the shard's
 * cache of verified tokens) and checks require_claims. Returns true when the
 * request may go on; otherwise it was answered 401, 403 or 503 and counted.
 */
bool tp_req_authenticate(struct tp_shard *sh, struct tp_req *r);
/** Claim <name> of the request's credential (JWT claim; API key: sub/name, tenant), or NULL. */
const char *tp_req_claim(const struct tp_req *r, const char *name, size_t *len);
/** Who the credential names (JWT sub, API key name), or NULL. */
const char *tp_req_subject(const struct tp_req *r, size_t *len);
/** Releases what authentication holds (the claims). */
void tp_req_auth_release(struct tp_req *r);
/**
 * The credential and forward_claims rules of <r>'s route for the upstream
 * headers: true when header <hd> of the request head must not be forwarded
 * (the credential, a forward_claims name the client sent).
 */
bool tp_req_auth_drops(const struct tp_req *r, const struct tp_hdr *hd);
/** Emits the forward_claims headers of <r> (claims that are strings without control characters). */
void tp_req_auth_headers(const struct tp_req *r, const struct tp_hdr_sink *s, void *ctx);
/** The cookie the credential came from, when it must be removed from Cookie headers; else NULL. */
const char *tp_req_auth_cookie(const struct tp_req *r, size_t *len);
/** The query parameter the credential came from, when it must be removed from the target; else NULL. */
const char *tp_req_auth_query(const struct tp_req *r, size_t *len);

/** Replaces the value of query parameter <name> in the target the access log keeps by "*". */
void tp_req_redact_param(struct tp_req *r, const char *name, size_t name_len);

/** The value of cookie <name> in the Cookie headers of <h>, or NULL. */
const char *tp_head_cookie(const struct tp_head *h, const char *name, size_t name_len, size_t *len);

/* ---- tunnels (tunnel.c) ---- */

/**
 * Joins the client transport <dt> and the upstream transport <ut> into a
 * byte tunnel owned by the shard; <r> (answered 101) is recorded when the
 * tunnel ends. The transports' sessions get their on_closed back at the end.
 */
void tp_tunnel_start(struct tp_shard *sh, struct tp_req *r, struct tp_transport *dt, struct tp_transport *ut);
/** Closes every tunnel of the shard (drain_timeout over). */
void tp_tunnel_close_all(struct tp_shard *sh);
/** The shard moved to a new snapshot: tunnels move their references to it. */
void tp_tunnel_on_snapshot(struct tp_shard *sh);
