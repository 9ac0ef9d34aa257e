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

#include "http/dp.h"

/* ---- recording a head (called from the llhttp callbacks of conn.c / proxy.c) ---- */

void tp_head_init(struct tp_head *h);
/** Frees what <h> allocated and releases its held buffer. */
void tp_head_dispose(struct tp_shard *sh, struct tp_head *h);

int tp_head_on_url(struct tp_head *h, const char *at, size_t len);
int tp_head_on_status(struct tp_head *h, const char *at, size_t len);
int tp_head_on_field(struct tp_head *h, const char *at, size_t len);
int tp_head_on_value(struct tp_head *h, const char *at, size_t len);
int tp_head_on_value_complete(struct tp_head *h);

enum tp_head_rc {
    TP_HEAD_MORE = 0, /* every queued byte consumed, head not complete */
    TP_HEAD_DONE,     /* head complete: h->base valid until tp_head_dispose */
    TP_HEAD_ERROR,    /* malformed: *status says which response */
};

/**
 * Runs <p> over the front of <q> until the head completes. Consumes the head's
 * bytes from <q>. A head longer than <limit> bytes is an error: 414 when the
 * request line alone is over, else 431. <p>'s on_headers_complete must set
 * *<done_flag> and pause. [shard]
 */
enum tp_head_rc tp_head_parse(struct tp_shard *sh, llhttp_t *p, struct tp_head *h, struct tp_inq *q,
                              uint32_t limit, const bool *done_flag, unsigned *status);

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
