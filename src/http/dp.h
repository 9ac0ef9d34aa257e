/* SPDX-License-Identifier: MIT */
/*
 * The data plane's internal types: one shard's ring, buffers, connections
 * (client side: tp_conn, upstream side: tp_uconn), requests and send queues.
 * Shared by src/rt/shard.c (loop, accept, dispatch), src/http/conn.c (client
 * side), src/http/proxy.c (upstream side) and src/http/h1.c (HTTP/1 heads).
 *
 * Everything here is owned by one shard and touched by that shard's thread
 * only. [shard]
 */
#pragma once

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <llhttp.h>

#include <turnpike/breaker.h>
#include <turnpike/config.h>
#include <turnpike/err.h>
#include <turnpike/timer.h>

#include "rt/snapshot.h"
#include "rt/uring_compat.h"

/* ---- user_data: op (8 bits) | generation (24 bits) | slot (32 bits) ---- */

enum tp_op {
    TP_OP_NONE = 0,
    TP_OP_ACCEPT,   /* slot = accept slot index */
    TP_OP_RECV,     /* client conn */
    TP_OP_SEND,     /* client conn */
    TP_OP_CANCEL,   /* client conn: cancel of its recv (or all its ops) */
    TP_OP_SHUTDOWN, /* client conn: shutdown(SHUT_WR) before a lingering close */
    TP_OP_CLOSE,    /* client conn: close; the slot is freed on its completion */
    TP_OP_URECV,    /* upstream conn */
    TP_OP_USEND,
    TP_OP_UCONNECT,
    TP_OP_UCANCEL,
    TP_OP_UCLOSE,
    TP_OP_WAKE,   /* eventfd read: the control thread has news */
    TP_OP_LOGW,   /* access log write */
    TP_OP_LCLOSE, /* listener close */
    TP_OP_COUNT
};

static inline uint64_t tp_ud(enum tp_op op, uint32_t slot, uint32_t gen)
{
    return ((uint64_t)op << 56) | ((uint64_t)(gen & 0xffffff) << 32) | slot;
}
static inline enum tp_op tp_ud_op(uint64_t ud)
{
    return (enum tp_op)(ud >> 56);
}
static inline uint32_t tp_ud_gen(uint64_t ud)
{
    return (uint32_t)(ud >> 32) & 0xffffff;
}
static inline uint32_t tp_ud_slot(uint64_t ud)
{
    return (uint32_t)ud;
}

/* ---- provided buffers ---- */

#define TP_BGID 0

/** The shard's provided-buffer ring: recv data lands here, bodies are sent from here. */
struct tp_bufs {
    struct io_uring_buf_ring *br;
    uint8_t *mem;   /* count * size bytes */
    uint32_t size;  /* [bytes] per buffer */
    uint32_t count; /* power of two */
    uint32_t held;  /* buffers taken by recvs and not yet returned */
    uint16_t *refs; /* [count] holders of each buffer */
    uint32_t adv;   /* buffers added since the last advance */
};

/* ---- memory blocks for built heads and gateway responses ---- */

#define TP_BLOCK_SIZE 8192

struct tp_block {
    struct tp_block *next; /* free list link */
    uint32_t size;         /* [bytes] of data[]; TP_BLOCK_SIZE for pooled blocks */
    uint32_t len;          /* bytes used */
    uint32_t refs;         /* holders; tp_block_put drops one, the last frees */
    char data[];
};

/* ---- receive queue: received bytes not yet consumed ---- */

#define TP_INQ_INLINE 4

/* Received bytes live in a provided buffer <bid>, or (decrypted TLS) in a block. */
struct tp_rbuf {
    struct tp_block *blk; /* NULL: the provided buffer <bid> */
    uint16_t bid;
    uint32_t off; /* first unconsumed byte in the buffer */
    uint32_t len; /* unconsumed bytes */
};

/** A reference to the buffer some received bytes live in. */
struct tp_bref {
    struct tp_block *blk; /* NULL: the provided buffer <bid> */
    uint16_t bid;
};

/**
 * Received buffers not yet consumed, oldest first: a ring that lives inline
 * for the common case (one or two buffers) and spills to the heap while a
 * burst of body data is queued (a multishot recv can post many buffers in
 * one batch before backpressure stops it).
 */
struct tp_inq {
    struct tp_rbuf *e; /* inl, or a heap array of cap entries */
    uint16_t cap;      /* power of two */
    uint16_t head;     /* index of the oldest entry */
    uint16_t n;        /* entries */
    uint32_t bytes;    /* unconsumed bytes in all entries */
    struct tp_rbuf inl[TP_INQ_INLINE];
};

/* stop reading a socket while this many buffers wait to be consumed */
#define TP_INQ_STOP 8

static inline void tp_inq_init(struct tp_inq *q)
{
    q->e = q->inl;
    q->cap = TP_INQ_INLINE;
    q->head = q->n = 0;
    q->bytes = 0;
}

static inline struct tp_rbuf *tp_inq_front(struct tp_inq *q)
{
    return q->n ? &q->e[q->head] : NULL;
}

static inline struct tp_bref tp_rbuf_ref(const struct tp_rbuf *e)
{
    struct tp_bref r = {.blk = e->blk, .bid = e->bid};
    return r;
}

/* ---- send queue: one sendmsg in flight per socket ---- */

enum tp_seg_kind {
    TP_SEG_STATIC = 0, /* constant data */
    TP_SEG_RBUF,       /* slice of a provided buffer: holds one ref on bid */
    TP_SEG_BLOCK,      /* a block, freed once sent */
    TP_SEG_INLINE,     /* up to 16 bytes stored in the segment */
    TP_SEG_MARK,       /* zero bytes: a request/response boundary marker */
};

struct tp_seg {
    const char *p;
    uint32_t len;
    uint8_t kind;
    uint16_t bid;
    struct tp_block *blk;
    char inl[16];
};

#define TP_OUTQ_SEGS    64
#define TP_COALESCE_MAX 2048 /* [bytes] slices copied into a preceding block */
#define TP_SEND_IOV     32

struct tp_outq {
    struct tp_outq *next_free;
    struct tp_seg seg[TP_OUTQ_SEGS];
    uint16_t head, n;   /* ring of queued segments */
    uint16_t sending;   /* segments covered by the sendmsg in flight */
    uint32_t first_off; /* bytes of seg[head] already sent */
    uint64_t bytes;     /* queued, including in flight */
    struct iovec iov[TP_SEND_IOV];
    struct msghdr msg;
};

/* ---- HTTP/1 heads as slices of received bytes ---- */

/** Headers turnpike acts on, recognized once at parse time. */
enum tp_hdr_id {
    TP_H_OTHER = 0,
    TP_H_HOST,
    TP_H_CONTENT_LENGTH,
    TP_H_TRANSFER_ENCODING,
    TP_H_CONNECTION,
    TP_H_KEEP_ALIVE,
    TP_H_PROXY_CONNECTION,
    TP_H_TE,
    TP_H_UPGRADE,
    TP_H_TRAILER,
    TP_H_X_FORWARDED_FOR,
    TP_H_X_FORWARDED_PROTO,
    TP_H_X_FORWARDED_HOST,
    TP_H_X_REQUEST_ID,
    TP_H_TRACEPARENT,
    TP_H_EXPECT,
    TP_H_COOKIE,
    TP_H_COUNT
};

struct tp_slice {
    uint32_t off, len; /* offsets into the head's bytes */
};

struct tp_hdr {
    struct tp_slice name, value;
    uint8_t id;   /* enum tp_hdr_id */
    uint8_t drop; /* not forwarded */
};

#define TP_HDRS_INLINE 48

/** A request or response head being parsed, then parsed. */
struct tp_head {
    const char *base; /* bytes of the head once complete (buffer or <copy>) */
    char *copy;       /* malloc'd when the head spans receive buffers */
    uint32_t copy_cap;
    uint32_t len;           /* bytes of head consumed so far */
    uint32_t exec_off;      /* logical offset of the chunk being executed */
    const char *exec_base;  /* start of the chunk being executed */
    struct tp_slice url;    /* request target (requests) */
    struct tp_slice reason; /* reason phrase (responses) */
    struct tp_hdr *hdrs;
    uint32_t n_hdrs, cap_hdrs;
    uint8_t last_cb; /* 1 field, 2 value, 3 value complete */
    bool url_done;
    bool bad;                /* a rule llhttp does not enforce was broken (obs-fold, empty name) */
    const char *reason_text; /* why the head was refused (400 body) */
    bool hold;               /* a reference on hold_ref keeps <base> alive */
    struct tp_bref hold_ref;
    struct tp_hdr inl[TP_HDRS_INLINE];
};

/* ---- limits and timeouts of one generation, copied where they are used ---- */

struct tp_limits {
    uint64_t max_header_bytes;
    uint64_t max_body_bytes;
    uint64_t client_header_ms;
    uint64_t client_idle_ms;
    uint64_t upstream_connect_ms;
    uint64_t upstream_response_ms;
};

/* ---- requests ---- */

enum tp_body_state {
    TP_BODY_NONE = 0, /* no request body */
    TP_BODY_STREAM,   /* body bytes are being read and forwarded */
    TP_BODY_DISCARD,  /* body bytes are read and dropped (direct/gateway response) */
    TP_BODY_DONE,     /* message complete */
};

enum tp_resp_state {
    TP_RESP_NONE = 0, /* nothing sent to the client for this request yet */
    TP_RESP_HEAD,     /* head (and maybe body) sent or queued, streaming */
    TP_RESP_DONE,     /* response complete (queued) */
};

struct tp_uconn;
struct tp_conn;
struct tp_tls_conn;

struct tp_req {
    struct tp_req *next_free;
    struct tp_snapshot *snap; /* generation the request runs on */
    struct tp_rt_route *route;
    struct tp_rt_upstream *up;
    struct tp_rt_endpoint *ep;
    struct tp_rt_endpoint *last_ep; /* endpoint of the last attempt (access log) */
    struct tp_uconn *uc;            /* upstream connection while attached */
    struct tp_block *uhead;         /* built upstream request head, kept for retries */
    struct tp_block *info;          /* method/host/path copies for the access log */
    uint64_t start_ns;
    uint64_t up_start_ns; /* [ns] when the current upstream attempt began */
    uint64_t up_ns;       /* [ns] total upstream time */
    uint64_t content_length;
    uint64_t body_bytes;     /* request body bytes read so far */
    uint64_t bytes_in;       /* head + body from the client */
    uint64_t bytes_out;      /* to the client */
    uint32_t resp_head_len;  /* bytes of the response head among bytes_out */
    uint64_t resp_body_left; /* for Content-Length responses */
    uint16_t status;         /* status sent to the client */
    uint8_t method;
    uint8_t body_state; /* enum tp_body_state */
    uint8_t resp_state; /* enum tp_resp_state */
    uint8_t attempts;   /* upstream attempts so far */
    bool http10;
    bool client_keepalive;        /* client allows keep-alive */
    bool chunked;                 /* request body is chunked */
    bool reused;                  /* current upstream conn came from the pool */
    bool req_sent;                /* request fully handed to the upstream socket */
    bool resp_bytes;              /* upstream sent response bytes in this attempt */
    bool resp_chunked;            /* response re-framed as chunked to the client */
    bool resp_close;              /* close the client connection after this response */
    struct tp_breaker_pass bpass; /* what the endpoint's breaker admitted this attempt with */
    bool counted_up;              /* holds an upstream in-flight slot */
    bool expect_continue;
    bool body_too_large;   /* max_body_bytes passed while streaming */
    bool body_left_ok;     /* discarding a small unread body keeps the connection */
    bool aborted;          /* upstream side failed after the response started */
    bool breaker_admitted; /* the endpoint's breaker admitted this attempt */
    bool counted_ep;       /* holds an endpoint in-flight slot (least_request) */
    bool force_fresh;      /* next attempt on a new connection, not a pooled one */
    bool fresh_retry_done;
    bool head_cl_seen;           /* the client sent Content-Length */
    bool head_parsed;            /* the request head was complete and parsed */
    bool head_unflushed;         /* the response head is the last thing queued, not handed to the kernel */
    uint16_t fail_status;        /* upstream status that triggered a retry */
    uint64_t body_consumed;      /* request body bytes taken from the client queue */
    uint64_t tried[4];           /* endpoints tried by this request (bit per index) */
    uint16_t extra_len;          /* bytes in extra_hdrs */
    uint32_t host_off, host_len; /* Host (or absolute-form authority) within the head */
    uint32_t abs_path_off;       /* absolute-form: offset of the path within the target */
    uint64_t body_fwd;           /* request body bytes handed to the upstream */
    struct tp_block *chunk_blk;  /* re-framing: the chunk being filled */
    struct tp_limits limits;
    const char *error;    /* reason of a gateway-made response */
    char extra_hdrs[160]; /* RateLimit-* / Retry-After lines for the response */
    char id[65];          /* X-Request-Id */
    uint8_t id_len;
    char trace[56];      /* traceparent forwarded */
    struct tp_head head; /* request head */
};

/* ---- client connections ---- */

enum tp_conn_state {
    TP_CS_IDLE = 0, /* keep-alive: waiting for a request's first byte (client_idle) */
    TP_CS_HEAD,     /* reading a request head (client_header) */
    TP_CS_ACTIVE,   /* a request is being served */
    TP_CS_LINGER,   /* final response queued: flush, shutdown, drain input, close */
    TP_CS_CLOSING,  /* cancelling operations, then close */
};

struct tp_conn {
    uint32_t slot;
    uint32_t gen;
    int fd;
    uint8_t state;    /* enum tp_conn_state */
    uint8_t listener; /* index into the shard's listeners */
    uint16_t ops;     /* operations in flight */
    bool recv_armed;
    bool send_busy;
    bool recv_stopped; /* backpressure: not re-armed until the queue drains */
    bool starved;      /* recv ended with ENOBUFS: re-arm when buffers return */
    bool peer_closed;  /* EOF from the client */
    bool shut;         /* shutdown(SHUT_WR) submitted */
    bool rst;          /* close with RST (aborted response) */
    bool drain;        /* close after the current request (shutdown, listener removed) */
    bool linger;       /* closing must drain unread input first (lingering close) */
    bool in_free;
    struct tp_timer timer;
    struct tp_inq in;
    struct tp_tls_conn *tls; /* NULL = plain */
    struct tp_outq *out;
    struct tp_req *req;
    struct tp_conn *next; /* free list / starved list link */
    llhttp_t parser;
    bool head_done;          /* parser reached the end of a head */
    bool msg_done;           /* parser reached the end of a message */
    bool in_process;         /* inside process_input (no recursion) */
    struct tp_bref exec_ref; /* buffer being parsed (body slices point into it) */
    uint64_t deadline_ms;
    char peer[48]; /* client address text for X-Forwarded-For */
    uint8_t peer_len;
    uint32_t requests; /* served on this connection */
};

/* ---- upstream connections ---- */

enum tp_uconn_state {
    TP_US_CONNECTING = 0,
    TP_US_HANDSHAKE, /* connected, TLS handshake in progress */
    TP_US_ACTIVE,    /* serving a request */
    TP_US_IDLE,      /* in the keepalive pool, recv armed */
    TP_US_CLOSING,
};

struct tp_uconn {
    uint32_t slot;
    uint32_t gen;
    int fd;
    uint8_t state;
    uint16_t ops;
    bool recv_armed;
    bool send_busy;
    bool recv_stopped;
    bool starved;
    bool peer_closed;
    bool reusable; /* response complete and framing allows reuse */
    bool in_free;
    struct tp_endpoint_state *eps; /* pool it belongs to */
    struct tp_conn *conn;          /* client connection served, while active */
    uint32_t conn_gen;
    struct tp_timer timer;
    struct tp_inq in;
    struct tp_tls_conn *tls; /* NULL = plain */
    struct tp_outq *out;
    struct tp_uconn *pnext, *pprev; /* pool links */
    struct tp_uconn *next;          /* free / starved list link */
    llhttp_t parser;
    struct tp_head rhead; /* response head being parsed */
    bool head_done, msg_done;
    bool skip_body;      /* response to HEAD */
    bool reset;          /* the upstream reset the connection */
    bool pool_when_sent; /* response done before our send completed */
    uint8_t mode;        /* response body relay mode (proxy.c) */
    uint32_t pool_keepalive;
    struct tp_block *dec_blk; /* decoding a chunked body for an HTTP/1.0 client */
    uint64_t deadline_ms;
    uint32_t served;
};

/* ---- the shard ---- */

struct tp_listener_rt;

#define TP_ACCEPTS_PER_LISTENER 8
#define TP_MAX_LISTENERS        64

/** One armed accept: its own address buffer, since the kernel writes it at completion. */
struct tp_accept_slot {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint8_t listener;
    bool armed;
};

struct tp_lis_stats;
struct tp_shard_listener {
    int fd; /* -1 when closed */
    char name[64];
    struct tp_addr addr;
    bool closing;
    uint32_t conns;             /* open connections accepted here (slot reuse waits for 0) */
    struct tp_lis_stats *stats; /* counters by listener name (control-owned) */
};

struct tp_shard {
    unsigned id;
    int cpu; /* -1 = not pinned */
    struct io_uring ring;
    struct tp_bufs bufs;
    struct tp_wheel wheel;
    uint64_t now_ms;
    uint64_t now_ns;
    struct tp_limits snap_limits;    /* of sh->snap, for new connections and requests */
    struct tp_route_stats unmatched; /* requests that found no route */

    struct tp_snapshot *snap;      /* current for new requests */
    struct tp_snapshot **retiring; /* older snapshots with requests in flight */
    unsigned n_retiring, cap_retiring;

    struct tp_shard_listener lis[TP_MAX_LISTENERS];
    unsigned n_lis;
    struct tp_accept_slot acc[TP_MAX_LISTENERS * TP_ACCEPTS_PER_LISTENER];

    /* connection slabs: chunks of 1024 allocated on demand */
    struct tp_conn **conn_chunks;
    uint32_t conn_cap, conn_used;
    struct tp_conn *conn_free;
    struct tp_uconn **uc_chunks;
    uint32_t uc_cap, uc_used;
    struct tp_uconn *uc_free;
    uint32_t n_conns;  /* open client connections */
    uint32_t n_uconns; /* open upstream connections */

    struct tp_conn *starved; /* conns waiting for buffers to re-arm recv */
    struct tp_uconn *ustarved;

    struct tp_req *req_free;
    struct tp_outq *outq_free;
    struct tp_block *blk_free;
    uint32_t n_req_free, n_outq_free, n_blk_free;

    int wake_fd; /* eventfd the control thread writes */
    uint64_t wake_buf;
    _Atomic unsigned msgs; /* TP_MSG_* bits from the control thread */
    bool draining;
    bool stop;
    bool sqes_pending;

    uint64_t rng[2]; /* xorshift128+ for ids and balancing */
    char *scratch;   /* TP_BLOCK_SIZE bytes for formatting */

    /* access log batch (admin/accesslog.c) */
    void *alog;

    /* counters */
    tp_stat_t rejected_conns; /* over max_connections */
    tp_stat_t enobufs;        /* buffer ring exhaustion events */
    tp_stat_t active_requests;
};

/* ---- shard services used by the HTTP code (src/rt/shard.c) ---- */

struct io_uring_sqe *tp_sqe(struct tp_shard *sh);
void tp_buf_release(struct tp_shard *sh, uint16_t bid);
static inline uint8_t *tp_buf_ptr(struct tp_shard *sh, uint16_t bid)
{
    return sh->bufs.mem + (size_t)bid * sh->bufs.size;
}
static inline void tp_buf_ref(struct tp_shard *sh, uint16_t bid)
{
    sh->bufs.refs[bid]++;
}
/** The first unconsumed byte of <e>. */
static inline const char *tp_rbuf_data(struct tp_shard *sh, const struct tp_rbuf *e)
{
    return (e->blk ? e->blk->data : (const char *)tp_buf_ptr(sh, e->bid)) + e->off;
}
/** Takes / drops one reference on the buffer of <r>. */
void tp_bref_get(struct tp_shard *sh, struct tp_bref r);
void tp_bref_put(struct tp_shard *sh, struct tp_bref r);
uint64_t tp_rand64(struct tp_shard *sh);
/** Takes the buffer a recv CQE carries (one reference for the caller); -1 when none. */
int tp_cqe_buffer(struct tp_shard *sh, const struct io_uring_cqe *cqe);
/** A request starts on the shard's current snapshot / ends on <s> (shard-local counts). */
struct tp_snapshot *tp_shard_snapshot_enter(struct tp_shard *sh);
void tp_shard_snapshot_leave(struct tp_shard *sh, struct tp_snapshot *s);

struct tp_block *tp_block_get(struct tp_shard *sh, size_t need);
void tp_block_put(struct tp_shard *sh, struct tp_block *b);
struct tp_req *tp_req_get(struct tp_shard *sh);
void tp_req_put(struct tp_shard *sh, struct tp_req *r);
struct tp_outq *tp_outq_get(struct tp_shard *sh);
void tp_outq_put(struct tp_shard *sh, struct tp_outq *q);

struct tp_conn *tp_conn_of(struct tp_shard *sh, uint32_t slot);
struct tp_conn *tp_shard_conn_alloc(struct tp_shard *sh);
struct tp_uconn *tp_uconn_of(struct tp_shard *sh, uint32_t slot);
struct tp_uconn *tp_uconn_alloc(struct tp_shard *sh);
void tp_uconn_free(struct tp_shard *sh, struct tp_uconn *uc);
void tp_conn_free(struct tp_shard *sh, struct tp_conn *c);

/** The shard running on this thread (NULL on other threads). */
extern __thread struct tp_shard *tp_self;

/* ---- inq / outq helpers (src/http/queue.c) ---- */

/** Appends a received buffer; false when memory for the queue ran out. */
bool tp_inq_push(struct tp_inq *q, uint16_t bid, uint32_t len);
/** Appends the <b->len> bytes of a block, taking over the caller's reference on it. */
bool tp_inq_push_block(struct tp_inq *q, struct tp_block *b);
/** Drops every queued buffer. */
void tp_inq_clear(struct tp_shard *sh, struct tp_inq *q);
/** Consumes <n> bytes from the front, releasing emptied buffers. */
void tp_inq_consume(struct tp_shard *sh, struct tp_inq *q, uint32_t n);

bool tp_outq_push(struct tp_shard *sh, struct tp_outq **qp, const struct tp_seg *s);
bool tp_outq_push_static(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len);
bool tp_outq_push_block(struct tp_shard *sh, struct tp_outq **qp, struct tp_block *b);
bool tp_outq_push_rbuf(struct tp_shard *sh, struct tp_outq **qp, uint16_t bid, const char *p, uint32_t len);
/** Queues <len> received bytes at <p> inside the buffer of <r>, without a copy (one reference taken). */
bool tp_outq_push_slice(struct tp_shard *sh, struct tp_outq **qp, struct tp_bref r, const char *p,
                        uint32_t len);
bool tp_outq_push_inline(struct tp_shard *sh, struct tp_outq **qp, const char *p, uint32_t len);
static inline bool tp_outq_full(const struct tp_outq *q, unsigned need)
{
    return q && q->n + need > TP_OUTQ_SEGS;
}
/** Fills q->msg/iov with queued segments; returns bytes, 0 when empty. */
uint32_t tp_outq_prepare(struct tp_outq *q);
/** Consumes <n> sent bytes of the segments in flight; returns true when the queue is empty. */
bool tp_outq_sent(struct tp_shard *sh, struct tp_outq *q, uint32_t n);
/** Takes back the last queued segment unless it is part of the send in flight. */
bool tp_outq_drop_last(struct tp_shard *sh, struct tp_outq *q);
/** Releases every segment and the queue itself. */
void tp_outq_clear(struct tp_shard *sh, struct tp_outq **qp);

/* bytes a connection may have queued towards one peer before the other side stops reading */
#define TP_OUTQ_BUDGET (256u * 1024u)

/* ---- client side (src/http/conn.c) ---- */

void tp_conn_start(struct tp_shard *sh, int fd, unsigned listener, const struct sockaddr_storage *peer);
void tp_conn_on_recv(struct tp_shard *sh, struct tp_conn *c, struct io_uring_cqe *cqe);
void tp_conn_on_send(struct tp_shard *sh, struct tp_conn *c, int res);
void tp_conn_on_op_done(struct tp_shard *sh, struct tp_conn *c, enum tp_op op, int res);
void tp_conn_rearm(struct tp_shard *sh, struct tp_conn *c);
void tp_conn_close(struct tp_shard *sh, struct tp_conn *c);
void tp_conn_drain(struct tp_shard *sh, struct tp_conn *c);
/** Upstream side hands data or completion back to the client side. */
void tp_conn_flush(struct tp_shard *sh, struct tp_conn *c);
void tp_conn_request_done(struct tp_shard *sh, struct tp_conn *c);
void tp_conn_resume_input(struct tp_shard *sh, struct tp_conn *c);
/** Sends a gateway-made response (JSON error body) for the current request. */
void tp_conn_error(struct tp_shard *sh, struct tp_conn *c, unsigned status, const char *reason, bool close);
/** Answers the current request with its route's direct_response. */
void tp_direct_respond(struct tp_shard *sh, struct tp_conn *c);
/** Applies the route's rate limit; false when a 429 was sent. */
bool tp_rate_admit(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r);
/** Counts and logs a finished request (stats, access log). */
void tp_req_record(struct tp_shard *sh, struct tp_conn *c, struct tp_req *r);

/* ---- upstream side (src/http/proxy.c) ---- */

/** Starts forwarding <c>'s current request (head parsed, route chosen). */
void tp_proxy_start(struct tp_shard *sh, struct tp_conn *c);
/** Request body bytes were queued to the upstream connection: send them. */
void tp_proxy_body_queued(struct tp_shard *sh, struct tp_req *r);
/** The client went away: abort the request's upstream side. */
void tp_proxy_abort(struct tp_shard *sh, struct tp_req *r);
/** Client send queue drained below budget: resume reading the upstream. */
void tp_proxy_client_drained(struct tp_shard *sh, struct tp_conn *c);
void tp_uconn_on_recv(struct tp_shard *sh, struct tp_uconn *uc, struct io_uring_cqe *cqe);
void tp_uconn_on_send(struct tp_shard *sh, struct tp_uconn *uc, int res);
void tp_uconn_on_connect(struct tp_shard *sh, struct tp_uconn *uc, int res);
void tp_uconn_on_op_done(struct tp_shard *sh, struct tp_uconn *uc, enum tp_op op, int res);
void tp_uconn_rearm(struct tp_shard *sh, struct tp_uconn *uc);
void tp_uconn_close(struct tp_shard *sh, struct tp_uconn *uc);
/** Closes every idle pooled connection of this shard (drain, retired endpoints). */
void tp_pool_close_idle(struct tp_shard *sh, struct tp_endpoint_state *eps);

/* ---- request lifecycle (src/http/conn.c) ---- */

void tp_req_finish(struct tp_shard *sh, struct tp_conn *c);
