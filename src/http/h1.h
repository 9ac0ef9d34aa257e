/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1 heads: recording llhttp callbacks as slices, parsing a head out of a
 * receive queue, recognizing the headers turnpike acts on, and writing heads
 * (to upstreams, to clients, gateway-made responses). [shard]
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include <turnpike/err.h>

#include "rt/reactor.h"

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
    TP_H_DATE,
    TP_H_CONTENT_TYPE,
    TP_H_AUTHORIZATION,
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

/* ---- the llhttp wiring of both sides ---- */

struct tp_h1_parser;

/** Body bytes (decoded: chunk framing removed) as llhttp delivers them. Returns 0, or -1 to stop with an
 * error. */
typedef int (*tp_h1_body_fn)(struct tp_h1_parser *hp, const char *at, size_t len);

/**
 * An llhttp parser wired to record heads into <head> (tp_head_on_*), pause
 * at the end of a head and at the end of a message, and hand body bytes to
 * <on_body>. The request parser of client connections, the response parser
 * of upstream connections, the unit tests and the fuzzers all use this one
 * wiring. <on_headers> may override what on_headers_complete returns (a
 * response to HEAD has no body: return 1).
 */
struct tp_h1_parser {
    llhttp_t p;
    struct tp_head *head;
    bool head_done; /* the parser reached the end of a head */
    bool msg_done;  /* the parser reached the end of a message */
    tp_h1_body_fn on_body;
    int (*on_headers)(struct tp_h1_parser *hp); /* NULL: pause */
    /* the trailer section of a chunked body, copied field by field (a trailer
     * may span receive buffers long released by the message's end) */
    struct tp_head *trailers;          /* allocated at the first trailer field, kept for the next messages */
    uint32_t trailer_limit;            /* [bytes] 0: trailers are not recorded; else the most kept */
    const char *exec_start, *exec_end; /* the bytes given to tp_h1_execute */
    const char *tr_last;               /* end of the last trailer value span */
    bool tr_last_at_end;               /* ... which ended its execute's bytes */
};

/**
 * Brings <hp>, paused at the end of a bodiless message's head, to the end
 * of that message and resumes it, so the next message (pipelined request,
 * final response after an interim one) starts from a clean parser.
 */
void tp_h1_parser_finish_message(struct tp_h1_parser *hp);

/**
 * After an upgrade request answered without 101 (or a CONNECT), llhttp
 * waits at its upgrade pause: take the upgrade as declined so the next
 * bytes parse as the next HTTP message. Nothing when no upgrade was asked.
 */
void tp_h1_parser_decline_upgrade(struct tp_h1_parser *hp);

/** Sets up <hp> as a parser of <type> (HTTP_REQUEST / HTTP_RESPONSE) recording into <head>. */
void tp_h1_parser_init(struct tp_h1_parser *hp, llhttp_type_t type, struct tp_head *head,
                       tp_h1_body_fn on_body);

/** Frees what <hp> allocated (its trailer section). */
void tp_h1_parser_dispose(struct tp_h1_parser *hp);

/**
 * Runs <hp> over body bytes (llhttp_execute), telling the trailer recorder
 * where this execute's bytes are, so a trailer value split across receive
 * buffers is told from an obsolete line fold.
 */
llhttp_errno_t tp_h1_execute(struct tp_h1_parser *hp, const char *data, size_t len);

/**
 * Records the trailer section of the next message into hp->trailers (at
 * most <limit> bytes of names and values; more is a parse error), or not
 * (<limit> 0). Forgets the fields of the previous message.
 */
void tp_h1_parser_want_trailers(struct tp_h1_parser *hp, uint32_t limit);

/** The trailer section recorded for the message that just completed, or NULL when it had none. */
static inline const struct tp_head *tp_h1_trailers(const struct tp_h1_parser *hp)
{
    return hp->trailers && hp->trailers->n_hdrs && hp->trailers->base ? hp->trailers : NULL;
}

/* ---- trailer sections held as copies (struct tp_head with <copy> as its bytes) ---- */

/** A new, empty trailer section; NULL when out of memory. Freed by tp_trailers_free. */
/** Appends a zeroed field to <h> (its array grows past the inline ones as needed). NULL: out of memory. */
struct tp_hdr *tp_head_new_field(struct tp_head *h);
struct tp_head *tp_trailers_new(void);
void tp_trailers_free(struct tp_head *h);
/** Forgets the fields, keeps the memory. */
void tp_trailers_reset(struct tp_head *h);
/** Appends field <name>: <value> (copied; <limit> bytes of names and values at most). false: over it, or out
 * of memory. */
bool tp_trailers_add(struct tp_head *h, const char *name, size_t nlen, const char *value, size_t vlen,
                     uint32_t limit);

/* ---- recording a head (called by the parser wiring) ---- */

void tp_head_init(struct tp_head *h);
/** Frees what <h> allocated and releases its held buffer. */
void tp_head_dispose(struct tp_shard *sh, struct tp_head *h);

enum tp_head_rc {
    TP_HEAD_MORE = 0, /* every queued byte consumed, head not complete */
    TP_HEAD_DONE,     /* head complete: h->base valid until tp_head_dispose */
    TP_HEAD_ERROR,    /* malformed: *status says which response */
};

/**
 * Runs <hp> over the front of <q> until its head completes. Consumes the head's
 * bytes from <q>. A head longer than <limit> bytes is an error: 414 when the
 * request line alone is over, else 431. [shard]
 */
enum tp_head_rc tp_head_parse(struct tp_shard *sh, struct tp_h1_parser *hp, struct tp_inq *q, uint32_t limit,
                              unsigned *status);

/** Releases the receive buffer a finished head points into (after the head was used). */
void tp_head_release(struct tp_shard *sh, struct tp_head *h);

static inline const char *tp_slice_ptr(const struct tp_head *h, struct tp_slice s)
{
    return h->base + s.off;
}

/** A short reason (for the JSON error body) for an llhttp error code. */
const char *tp_h1_llhttp_reason(int err);

/** Classifies a header name (enum tp_hdr_id). */
uint8_t tp_h1_header_id(const char *name, size_t len);

/** Finds the first header with <id>; NULL when absent. */
const struct tp_hdr *tp_head_find(const struct tp_head *h, uint8_t id);
/** Finds the first header named <name> (lowercase); value through <len>. */
const char *tp_head_value(const struct tp_head *h, const char *name, size_t name_len, size_t *len);

/** Case-insensitive comparison of <a> with the lowercase <lower>. */
bool tp_eq_nocase(const char *a, size_t alen, const char *lower, size_t llen);

/** True when <list> (a comma-separated header value) contains <token>, compared case-insensitively. */
bool tp_h1_has_token(const char *list, size_t len, const char *token, size_t tlen);

/** Reason phrase for <status>. */
const char *tp_h1_reason(unsigned status);

/** The HTTP-date of now, cached per second per thread ("Sun, 06 Nov 1994 08:49:37 GMT"). */
const char *tp_h1_date(void);

/**
 * Writes a gateway-made response into a new block: status line, JSON error
 * body {"error","status","request_id"}, Content-Type, Content-Length,
 * X-Request-Id, <extra> header lines ("Name: value\r\n"...), Connection: close
 * when <close>. Returns NULL when out of memory.
 */
struct tp_block *tp_h1_error_response(struct tp_shard *sh, unsigned status, const char *reason,
                                      const char *id, size_t id_len, const char *extra, size_t extra_len,
                                      bool close, bool head_only);

/** Bytes of the JSON body of a gateway-made error (tp_blk_error_json). */
size_t tp_error_json_len(const char *reason, size_t id_len);
/**
 * Appends the JSON body of a gateway-made error, {"error","status","request_id"},
 * the same for every protocol. <reason> and <id> are JSON-safe by construction.
 */
void tp_blk_error_json(struct tp_block *b, unsigned status, const char *reason, const char *id,
                       size_t id_len);
/** Appends <reason> percent-encoded as grpc-message wants it (3 bytes per byte at most). */
void tp_blk_grpc_message(struct tp_block *b, const char *reason);

/** The grpc-status of a gateway-made answer of HTTP <status> (404 -> 12 UNIMPLEMENTED, ...). */
unsigned tp_grpc_status(unsigned status);

#define TP_GRPC_OTHER 17   /* a grpc-status outside 0..16 (metrics label "other") */
#define TP_GRPC_NONE  0xff /* no grpc-status seen */

/** The code of a grpc-status value: 0..16, or TP_GRPC_OTHER (out of range, not a number). */
unsigned tp_grpc_status_parse(const char *v, size_t len);

/**
 * Parses a grpc-timeout value: 1 to 8 digits and a unit (H hours, M minutes,
 * S seconds, m milliseconds, u microseconds, n nanoseconds), into <*ms>
 * rounded up to whole milliseconds. false: malformed.
 */
bool tp_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms);

/**
 * Writes a gateway-made answer to a gRPC request (content-type
 * application/grpc...): 200, content-type application/grpc, no body, and
 * grpc-status / grpc-message (percent-encoded <reason>) as headers, the
 * trailers-only form; X-Request-Id and <extra> lines as tp_h1_error_response.
 */
struct tp_block *tp_h1_grpc_error_response(struct tp_shard *sh, unsigned status, const char *reason,
                                           const char *id, size_t id_len, const char *extra, size_t extra_len,
                                           bool close);

/** Receives the headers of a forwarded head, one at a time: name, value pieces, end. */
struct tp_hdr_sink {
    void (*name)(void *ctx, const char *p, size_t n);
    void (*value)(void *ctx, const char *p, size_t n);
    void (*end)(void *ctx);
};

/** Writes each field into the struct tp_block given as context as an HTTP/1 "Name: value\r\n" line. */
extern const struct tp_hdr_sink tp_h1_line_sink;

/** Appends to a block with bounds checking: the caller checks b->len <= b->size at the end. */
static inline void tp_blk_put(struct tp_block *b, const void *p, size_t n)
{
    if (b->len + n <= b->size) {
        __builtin_memcpy(b->data + b->len, p, n);
    }
    b->len += (uint32_t)n;
}
#define tp_blk_lit(b, s) tp_blk_put((b), (s), sizeof(s) - 1)
void tp_blk_u64(struct tp_block *b, uint64_t v);

/** Writes <v> in decimal so that it ends at <end>; returns where it starts. */
static inline char *tp_fmt_u64(char *end, uint64_t v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}
void tp_blk_hex(struct tp_block *b, uint64_t v);

/** Hex-encodes <n> random bytes into <out> (2n chars, no NUL). */
void tp_h1_random_hex(struct tp_shard *sh, char *out, size_t n);
