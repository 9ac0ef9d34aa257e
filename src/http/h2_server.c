/* SPDX-License-Identifier: MIT */
/*
 * The HTTP/2 server session: client connections speaking HTTP/2, over TLS
 * (ALPN h2) or in plain text with prior knowledge (h2c). Each stream is one
 * request of the request layer: a struct tp_h2_stream embeds the struct
 * tp_ds the request layer drives, exactly as it drives an HTTP/1 connection,
 * and the request goes to the upstream through the same exchange. [shard]
 *
 * Framing, HPACK, stream states and flow control are libnghttp2's, driven
 * in memory: received plaintext (t->in) goes to nghttp2_session_mem_recv,
 * and nghttp2_session_send writes through two callbacks into the transport's
 * send queue: frames other than DATA are copied into blocks (send_cb), DATA
 * payloads are queued as slices of the buffers the response arrived in
 * (NGHTTP2_DATA_FLAG_NO_COPY, send_data_cb), so response bodies are relayed
 * without a copy as they are for HTTP/1.
 *
 *   HTTP/1 session (preface or ALPN h2) ──tp_h2_start──▶ OPEN ──drain, listener
 *        keeps its object; gets on_closed back           │     removed: GOAWAY(last id)
 *                                                        ▼
 *      fatal error, abuse: GOAWAY(error) ──▶ CLOSING ◀── no stream left and
 *      (sent first, then the transport closes)    │      nothing to send
 *                                                 ▼ on_closed: streams ended, object freed
 *
 * A stream: HEADERS (headers decoded into one block the request head points
 * into) ─▶ tp_req_dispatch ─▶ request body staged per stream and handed to
 * the exchange as it can take it ─▶ response head held until the first flush
 * (so a failure right behind it can still become a 502) ─▶ DATA from the
 * stream's queue of body slices ─▶ stream closed by nghttp2 ─▶ tp_req_end.
 *
 * Memory bounds (docs/internals.md "HTTP/2"):
 *   - request body: per stream at most its receive window (H2_STREAM_WINDOW),
 *     copied into blocks; the window is reopened (WINDOW_UPDATE) only for
 *     what the upstream exchange took. The connection window is reopened at
 *     once, so one slow upstream never stalls the other streams;
 *   - response body: per stream H2_RESP_BUDGET of queued slices (a quarter
 *     of it while the shard's receive buffers run low), past which the
 *     exchange stops reading its upstream (ds->congested);
 *   - send queue: the connection stops generating frames past TP_OUTQ_BUDGET
 *     queued bytes and stops reading past twice that, until the client reads.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include <turnpike/log.h>

#include "http/sessions.h"
#include "rt/runtime.h"
#include "transport/transport.h"

#define H2_STREAM_WINDOW    65535         /* [bytes] request body a stream may have unconsumed */
#define H2_CONN_WINDOW      (1u << 24)    /* [bytes] connection window (reopened as data arrives) */
#define H2_RESP_BUDGET      (64u * 1024u) /* [bytes] response body queued per stream */
#define H2_RESP_TIGHT       (16u * 1024u) /* [bytes] the same while over half the receive buffers are held */
#define H2_PIECES           32            /* response body slices queued per stream */
#define H2_PIECES_FRAME     8             /* slices one DATA frame takes at most */
#define H2_BODY_BLOCKS      12            /* request body blocks staged per stream */
#define H2_SMALL_SLICE      2048          /* [bytes] smaller response slices are copied, not pinned */
#define H2_HPACK_BOMB       4             /* a header list this many times max_header_bytes: calm */
#define H2_MAX_OUTBOUND_ACK 64            /* SETTINGS/PING acks queued before the client counts as flooding */
#define H2_FREE_CAP         1024          /* stream objects kept on the shard's free list */
#define H2_GOAWAY_LINGER_MS 1000          /* [ms] for a GOAWAY to leave before the connection closes */
#define H2_GAPS             8  /* ranges of stream ids a client skipped, remembered per connection */
#define H2_NG_STREAMS_SLACK 16 /* nghttp2's own stream limit over ours (see tp_h2_start) */

_Static_assert(H2_BODY_BLOCKS *TP_BLOCK_SIZE > H2_STREAM_WINDOW + TP_BLOCK_SIZE,
               "a stream's window of request body fits its staged blocks");
_Static_assert(H2_PIECES_FRAME + 2 <= TP_OUTQ_SEGS, "a DATA frame fits an empty send queue");

/* One slice of response body: a received buffer or a block (one reference each). */
struct h2_piece {
    struct tp_bref ref;
    const char *p;
    uint32_t len;
};

struct tp_h2_stream {
    struct tp_ds ds; /* the request layer's view; ops = h2_ds */
    struct tp_h2_session *s;
    struct tp_req *r; /* NULL once ended */
    struct tp_h2_stream *next, *prev, *next_free;
    int32_t id;
    uint64_t last_ms; /* [ms] the stream last moved (client_idle) */
    /* the request head being decoded */
    struct tp_block *hblk; /* names and values; r->head.base points into it */
    uint64_t hlist;        /* header list size as RFC 9113 counts it */
    uint32_t n_cookie;
    bool too_large;         /* over max_header_bytes: answered 431 */
    bool bad;               /* a field the request layer cannot take: answered 400 */
    bool dispatched;        /* tp_req_dispatch ran */
    bool req_ended;         /* END_STREAM received */
    struct tp_head *req_tr; /* the request's trailer section (copied), NULL: none */
    uint32_t tr_size;       /* its size as RFC 9113 counts it */
    /* request body staged for the upstream */
    struct tp_block *body[H2_BODY_BLOCKS];
    uint8_t body_head, body_n;
    uint32_t body_off;    /* bytes of body[body_head] handed on */
    uint32_t body_staged; /* bytes staged, not handed on (unconsumed in flow control) */
    /* the response */
    struct tp_block *hv_txt, *hv_nv; /* a response head held until the first flush */
    uint32_t hv_n;
    bool head_pending;               /* hv_* waits for the first flush */
    bool resp_body;                  /* the response has DATA */
    bool resp_done;                  /* the last byte of the response is queued */
    bool deferred;                   /* the data source said DEFERRED: resume when bytes come */
    bool submitted;                  /* a response (or a reset) went to nghttp2 */
    bool aborted;                    /* ds_abort: a reset follows, no more DATA */
    bool want_resume;                /* the queue has room again: resume the exchange after the send */
    struct tp_block *tr_txt, *tr_nv; /* response trailers, submitted after the last DATA */
    uint32_t tr_n;
    struct h2_piece pc[H2_PIECES];
    uint8_t pc_head, pc_n;
    uint32_t queued; /* response bytes in pc[] */
};

struct tp_h2_session {
    struct tp_transport *t;
    const struct tp_transport_ops *own; /* the HTTP/1 session's: on_closed frees the connection */
    nghttp2_session *ng;
    struct tp_ds conn; /* peer, listener, tls of the connection */
    struct tp_h2_session *next, *prev;
    struct tp_h2_session
        *next_kick;               /* the shard's sessions with output to write at the end of the iteration */
    struct tp_h2_stream *streams; /* open streams */
    uint32_t n_streams;
    struct tp_block *wbuf; /* control frames being gathered (send_cb) */
    uint64_t client_idle_ms;
    uint32_t max_header_bytes;
    uint32_t max_streams; /* h2_max_concurrent_streams: more open streams are refused here */
    uint32_t ng_streams;  /* the larger limit nghttp2 itself is given (the value patched in send_cb) */
    uint32_t refused;     /* our REFUSED_STREAM resets not sent yet (counted when submitted) */
    uint32_t max_resets;
    uint64_t reset_window; /* [s] second the reset count is for */
    uint32_t resets;
    /* stream ids (RFC 9113 5.1.1): the highest a HEADERS opened, and the ids
     * skipped below it, which were never opened and may not be opened now */
    int32_t max_sid;
    struct {
        int32_t lo, hi;
    } gap[H2_GAPS];
    uint8_t n_gaps, gap_next;
    uint8_t out_seen;   /* bytes of output seen, up to the end of our SETTINGS' first entry */
    uint32_t fail_code; /* a callback's connection error (logged there), or 0 */
    bool in_ng;         /* inside nghttp2 (mem_recv or send): no re-entry */
    bool want_send;     /* output was asked for while in_ng */
    bool goaway;        /* a graceful GOAWAY was submitted (drain, listener removed) */
    bool closing;       /* the transport is closing (or closes once the GOAWAY left) */
    bool linger;        /* close once the send queue is empty */
    bool kicked;        /* on the shard's kick list */
};

static const struct tp_transport_ops h2_proto;
static const struct tp_ds_ops h2_ds;

static void s_send(struct tp_shard *sh, struct tp_h2_session *s);
static inline nghttp2_nv *nv_array(const struct tp_block *b);
static void s_kick(struct tp_shard *sh, struct tp_h2_session *s);
static void s_close(struct tp_shard *sh, struct tp_h2_session *s);
static bool ds_congested(const struct tp_req *r);
static void pump_body(struct tp_shard *sh, struct tp_h2_stream *st);

static inline struct tp_h2_session *session_of(struct tp_transport *t)
{
    return t->user;
}

static inline struct tp_h2_stream *stream_of_req(const struct tp_req *r)
{
    return (struct tp_h2_stream *)((char *)r->ds - offsetof(struct tp_h2_stream, ds));
}

static inline struct tp_lis_stats *lis_stats(struct tp_shard *sh, const struct tp_h2_session *s)
{
    return sh->lis[s->conn.listener].stats;
}

/* ------------------------------------------------------------------ */
/* metrics                                                             */
/* ------------------------------------------------------------------ */

static void count_streams(struct tp_shard *sh, struct tp_h2_session *s, int64_t d)
{
    struct tp_lis_stats *ls = lis_stats(sh, s);
    if (ls)
        tp_stat_add(&ls->shard[sh->id].h2_streams, (uint64_t)d);
}

static void count_goaway(struct tp_shard *sh, struct tp_h2_session *s, uint32_t code)
{
    struct tp_lis_stats *ls = lis_stats(sh, s);
    unsigned reason;

    switch (code) {
    case NGHTTP2_NO_ERROR:
        reason = TP_H2_GOAWAY_NO_ERROR;
        break;
    case NGHTTP2_FLOW_CONTROL_ERROR:
        reason = TP_H2_GOAWAY_FLOW_CONTROL;
        break;
    case NGHTTP2_COMPRESSION_ERROR:
        reason = TP_H2_GOAWAY_COMPRESSION;
        break;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        reason = TP_H2_GOAWAY_ENHANCE_YOUR_CALM;
        break;
    case NGHTTP2_INTERNAL_ERROR:
        reason = TP_H2_GOAWAY_INTERNAL;
        break;
    default:
        reason = TP_H2_GOAWAY_PROTOCOL;
        break;
    }
    if (ls)
        tp_stat_add(&ls->shard[sh->id].h2_goaway[reason], 1);
}

/* A client reset, or a stream refused for excess: past h2_max_resets_per_s in
 * one second the connection goes (rapid reset, CVE-2023-44487). */
static void count_reset(struct tp_shard *sh, struct tp_h2_session *s)
{
    struct tp_lis_stats *ls = lis_stats(sh, s);
    uint64_t sec = sh->now_ms / 1000;

    if (ls)
        tp_stat_add(&ls->shard[sh->id].h2_resets, 1);
    if (sec != s->reset_window) {
        s->reset_window = sec;
        s->resets = 0;
    }
    if (++s->resets == s->max_resets + 1) {
        TP_LOG_RL(TP_LOG_INFO, "client %.*s: over %u stream resets per second; closing", s->conn.peer_len,
                  s->conn.peer, s->max_resets);
        nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

/* ------------------------------------------------------------------ */
/* streams                                                             */
/* ------------------------------------------------------------------ */

static struct tp_h2_stream *stream_new(struct tp_shard *sh, struct tp_h2_session *s, int32_t id)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_h2_stream *st = hs->h2_free;

    if (st) {
        hs->h2_free = st->next_free;
        hs->n_h2_free--;
    } else if (!(st = malloc(sizeof(*st)))) {
        return NULL;
    }
    memset(st, 0, sizeof(*st));
    st->ds = s->conn;
    st->ds.ops = &h2_ds;
    st->s = s;
    st->id = id;
    st->last_ms = sh->now_ms;
    st->r = tp_req_begin(sh, &st->ds);
    if (!st->r) {
        st->next_free = hs->h2_free;
        hs->h2_free = st;
        hs->n_h2_free++;
        return NULL;
    }
    st->r->h2 = true;
    st->r->client_keepalive = true;
    st->r->http_minor = 1;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->n_streams++;
    count_streams(sh, s, 1);
    return st;
}

static void pieces_clear(struct tp_shard *sh, struct tp_h2_stream *st)
{
    while (st->pc_n) {
        tp_bref_put(sh, st->pc[st->pc_head].ref);
        st->pc_head = (uint8_t)((st->pc_head + 1) % H2_PIECES);
        st->pc_n--;
    }
    st->queued = 0;
}

static void trailers_drop(struct tp_shard *sh, struct tp_h2_stream *st)
{
    if (st->tr_txt)
        tp_block_put(sh, st->tr_txt);
    if (st->tr_nv)
        tp_block_put(sh, st->tr_nv);
    st->tr_txt = st->tr_nv = NULL;
    st->tr_n = 0;
}

static void head_held_drop(struct tp_shard *sh, struct tp_h2_stream *st)
{
    if (st->hv_txt)
        tp_block_put(sh, st->hv_txt);
    if (st->hv_nv)
        tp_block_put(sh, st->hv_nv);
    st->hv_txt = st->hv_nv = NULL;
    st->head_pending = false;
}

/* The stream is over (closed by nghttp2, or the connection went): the request
 * is recorded and released, what the stream holds goes back. */
static void stream_end(struct tp_shard *sh, struct tp_h2_stream *st)
{
    struct tp_h2_session *s = st->s;
    struct tp_http_shard *hs = tp_http_shard(sh);

    if (st->r) {
        struct tp_req *r = st->r;
        st->r = NULL;
        tp_req_end(sh, r); /* the upstream side of a reset stream is cancelled here */
    }
    pieces_clear(sh, st);
    head_held_drop(sh, st);
    trailers_drop(sh, st);
    if (st->body_staged && s->ng)
        nghttp2_session_consume_connection(s->ng, st->body_staged);
    while (st->body_n) {
        tp_block_put(sh, st->body[st->body_head]);
        st->body_head = (uint8_t)((st->body_head + 1) % H2_BODY_BLOCKS);
        st->body_n--;
    }
    if (st->hblk)
        tp_block_put(sh, st->hblk);
    tp_trailers_free(st->req_tr);
    if (s->ng)
        nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->n_streams--;
    count_streams(sh, s, -1);
    if (hs->n_h2_free < H2_FREE_CAP) {
        st->next_free = hs->h2_free;
        hs->h2_free = st;
        hs->n_h2_free++;
    } else {
        free(st);
    }
}

/* Resets stream <st> with <code>; the stream ends when nghttp2 closes it. */
static void stream_reset(struct tp_h2_stream *st, uint32_t code)
{
    struct tp_h2_session *s = st->s;

    st->submitted = true;
    if (s->ng && nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, code) != 0)
        nghttp2_session_terminate_session(s->ng, NGHTTP2_INTERNAL_ERROR);
}

/* ------------------------------------------------------------------ */
/* the request head                                                    */
/* ------------------------------------------------------------------ */

/* Appends <n> bytes to the stream's head block, growing it (<p> may point
 * into the old block: it is copied before that goes). */
static bool head_put(struct tp_shard *sh, struct tp_h2_stream *st, const void *p, size_t n, uint32_t *off)
{
    struct tp_block *b = st->hblk;

    if (!b || b->len + n > b->size) {
        size_t need = (b ? b->len : 0) + n;
        size_t size = need < TP_BLOCK_SIZE ? TP_BLOCK_SIZE : need * 2;
        struct tp_block *nb = tp_block_get(sh, size);
        if (!nb)
            return false;
        nb->len = 0;
        if (b) {
            memcpy(nb->data, b->data, b->len);
            nb->len = b->len;
        }
        *off = nb->len;
        memcpy(nb->data + nb->len, p, n);
        nb->len += (uint32_t)n;
        if (b)
            tp_block_put(sh, b);
        st->hblk = nb;
        return true;
    }
    *off = b->len;
    memcpy(b->data + b->len, p, n);
    b->len += (uint32_t)n;
    return true;
}

static bool head_add(struct tp_shard *sh, struct tp_h2_stream *st, const char *name, size_t nlen,
                     const char *value, size_t vlen, uint8_t id)
{
    struct tp_head *h = &st->r->head;
    struct tp_hdr *hd;

    hd = tp_head_new_field(h);
    if (!hd)
        return false;
    if (!head_put(sh, st, name, nlen, &hd->name.off) || !head_put(sh, st, value, vlen, &hd->value.off)) {
        h->n_hdrs--; /* the field is not there */
        return false;
    }
    hd->name.len = (uint32_t)nlen;
    hd->value.len = (uint32_t)vlen;
    hd->id = id;
    return true;
}

/* llhttp's number for method <m>, or -1 (an extension method llhttp does not know). */
static int method_id(const char *m, size_t len)
{
    static const struct {
        const char *name;
        uint8_t len, id;
    } common[] = {
        {"GET", 3, HTTP_GET},         {"POST", 4, HTTP_POST},     {"PUT", 3, HTTP_PUT},
        {"HEAD", 4, HTTP_HEAD},       {"DELETE", 6, HTTP_DELETE}, {"PATCH", 5, HTTP_PATCH},
        {"OPTIONS", 7, HTTP_OPTIONS},
    };
    for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
        if (common[i].len == len && memcmp(common[i].name, m, len) == 0)
            return common[i].id;
    /* llhttp_method_name() aborts on a number it does not know, so walk llhttp's own
     * map instead of guessing its range. */
    static const char *const all[] = {
#define TP_METHOD_NAME(num, name, string) [num] = #string,
        HTTP_ALL_METHOD_MAP(TP_METHOD_NAME)
#undef TP_METHOD_NAME
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i] && strlen(all[i]) == len && memcmp(all[i], m, len) == 0)
            return (int)i;
    return -1;
}

/* Connection-specific fields are malformed in HTTP/2 (RFC 9113 8.2.2).
 * nghttp2 refuses them already; this is the same rule stated where we use it. */
static bool connection_specific(const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen)
{
    switch (tp_h1_header_id((const char *)name, nlen)) {
    case TP_H_CONNECTION:
    case TP_H_KEEP_ALIVE:
    case TP_H_PROXY_CONNECTION:
    case TP_H_TRANSFER_ENCODING:
    case TP_H_UPGRADE:
        return true;
    case TP_H_TE:
        return !tp_eq_nocase((const char *)value, vlen, "trailers", 8);
    default:
        return false;
    }
}

/* A field of the request's trailer section: kept (copied) for the exchange,
 * which sends it after the body when the body goes chunked. */
static int on_trailer(struct tp_h2_session *s, struct tp_h2_stream *st, const uint8_t *name, size_t nlen,
                      const uint8_t *value, size_t vlen)
{
    struct tp_req *r = st->r;

    if (r->body_state != TP_BODY_STREAM)
        return 0; /* the request is not forwarded (any more): nothing to relay them with */
    st->tr_size += (uint32_t)(nlen + vlen + 32);
    if (connection_specific(name, nlen, value, vlen) || st->tr_size > s->max_header_bytes) {
        /* a hop-by-hop field, or a section over max_header_bytes: the stream goes */
        stream_reset(st, st->tr_size > s->max_header_bytes ? NGHTTP2_CANCEL : NGHTTP2_PROTOCOL_ERROR);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if ((!st->req_tr && !(st->req_tr = tp_trailers_new())) ||
        !tp_trailers_add(st->req_tr, (const char *)name, nlen, (const char *)value, vlen,
                         s->max_header_bytes)) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

/* Whether client stream id <id> lies in a range the client skipped (never opened). */
static bool sid_skipped(const struct tp_h2_session *s, int32_t id)
{
    for (unsigned i = 0; i < s->n_gaps; i++)
        if (id >= s->gap[i].lo && id <= s->gap[i].hi)
            return true;
    return false;
}

/*
 * Stream-id bookkeeping nghttp2 leaves out: a HEADERS on an odd id below the
 * highest one the client opened, for which nghttp2 holds no stream, is
 * ignored by nghttp2 (it cannot tell a stream closed long ago from one never
 * opened: with no_closed_streams it keeps neither). An id the client skipped
 * was never opened, so such a HEADERS opens a new stream with a lower id than
 * one already opened: a connection error PROTOCOL_ERROR (RFC 9113 5.1.1).
 * A HEADERS for a stream that was opened and has closed stays ignored (late
 * trailers after our RST_STREAM are legitimate). Skipped ranges are
 * remembered per connection, the H2_GAPS newest; a client that opens its
 * ids in order (every real one) has none. Even ids, DATA or WINDOW_UPDATE on
 * idle streams and the rest of the stream state machine are nghttp2's.
 */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *user)
{
    struct tp_h2_session *s = user;
    int32_t id = hd->stream_id;

    if (hd->type != NGHTTP2_HEADERS || !(id & 1))
        return 0;
    if (id > s->max_sid) {
        if (id > s->max_sid + 2) {
            s->gap[s->gap_next].lo = s->max_sid + 1;
            s->gap[s->gap_next].hi = id - 1;
            s->gap_next = (uint8_t)((s->gap_next + 1) % H2_GAPS);
            if (s->n_gaps < H2_GAPS)
                s->n_gaps++;
        }
        s->max_sid = id;
        return 0;
    }
    if (nghttp2_session_find_stream(ng, id) || !sid_skipped(s, id))
        return 0;
    TP_LOG_RL(TP_LOG_INFO, "client %.*s: HTTP/2: HEADERS opening stream %d after stream %d; closing",
              s->conn.peer_len, s->conn.peer, id, s->max_sid);
    s->fail_code = NGHTTP2_PROTOCOL_ERROR;
    return NGHTTP2_ERR_CALLBACK_FAILURE; /* process_input answers GOAWAY(fail_code) */
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_shard *sh = tp_self;
    struct tp_h2_stream *st;

    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (s->n_streams >= s->max_streams) {
        /* over h2_max_concurrent_streams, whether or not the client has
         * acknowledged it: refused, and counted as a reset at once (a burst
         * of them ends in ENHANCE_YOUR_CALM before nghttp2's wider limit) */
        if (nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        s->refused++;
        count_reset(sh, s);
        return 0; /* no stream object: the header block is decoded and dropped */
    }
    st = stream_new(sh, s, f->hd.stream_id);
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* out of memory: nghttp2 resets the stream */
    nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_shard *sh = tp_self;
    struct tp_h2_stream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);

    (void)flags;
    if (!st || !st->r)
        return 0;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST || st->dispatched)
        return on_trailer(s, st, name, nlen, value, vlen);
    st->hlist += nlen + vlen + 32;
    if (st->hlist > (uint64_t)s->max_header_bytes * H2_HPACK_BOMB + 65536) {
        /* decoding goes on however large the list: a compressed bomb costs the
         * connection, not only the stream */
        TP_LOG_RL(TP_LOG_INFO, "client %.*s: header list over %u bytes; closing", s->conn.peer_len,
                  s->conn.peer, s->max_header_bytes * H2_HPACK_BOMB);
        nghttp2_session_terminate_session(ng, NGHTTP2_ENHANCE_YOUR_CALM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (st->hlist > s->max_header_bytes) {
        st->too_large = true; /* answered 431 once the block is complete */
        return 0;
    }
    if (st->too_large || st->bad)
        return 0;
    if (connection_specific(name, nlen, value, vlen)) {
        stream_reset(st, NGHTTP2_PROTOCOL_ERROR);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }

    struct tp_req *r = st->r;
    struct tp_head *h = &r->head;
    const char *n = (const char *)name, *v = (const char *)value;
    uint32_t off;

    if (nlen && n[0] == ':') {
        /* pseudo-headers come first; nghttp2 checks which and how many */
        if (nlen == 7 && memcmp(n, ":method", 7) == 0) {
            int m = method_id(v, vlen);
            /* PRI only exists as HTTP/2's connection preface: an HTTP/1 upstream's
             * parser takes "PRI " as the start of one, so it is not forwarded */
            if (m < 0 || m == HTTP_CONNECT || m == HTTP_PRI)
                st->bad = true;
            else
                r->method = (uint8_t)m;
        } else if (nlen == 5 && memcmp(n, ":path", 5) == 0) {
            if (!head_put(sh, st, v, vlen, &off))
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            h->url.off = off;
            h->url.len = (uint32_t)vlen;
        } else if (nlen == 10 && memcmp(n, ":authority", 10) == 0) {
            /* the host: kept as a Host field, which the upstream gets */
            if (!head_add(sh, st, "host", 4, v, vlen, TP_H_HOST))
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            r->host_off = h->hdrs[h->n_hdrs - 1].value.off;
            r->host_len = (uint32_t)vlen;
        }
        return 0;
    }
    uint8_t id = tp_h1_header_id(n, nlen);
    switch (id) {
    case TP_H_HOST:
        if (r->host_len)
            return 0; /* :authority wins (RFC 9113 8.3.1) */
        break;
    case TP_H_COOKIE:
        st->n_cookie++;
        break;
    case TP_H_CONTENT_TYPE:
        if (vlen >= 16 && tp_eq_nocase(v, 16, "application/grpc", 16))
            r->grpc = true;
        break;
    case TP_H_CONTENT_LENGTH: {
        uint64_t cl = 0;
        for (size_t i = 0; i < vlen; i++)
            cl = cl * 10 + (uint64_t)(v[i] - '0'); /* nghttp2 checked the digits */
        r->content_length = cl;
        r->head_cl_seen = true;
        break;
    }
    default:
        break;
    }
    if (!head_add(sh, st, n, nlen, v, vlen, id))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (id == TP_H_HOST) {
        r->host_off = h->hdrs[h->n_hdrs - 1].value.off;
        r->host_len = (uint32_t)vlen;
    }
    return 0;
}

/* Cookie fields split by the client (RFC 9113 8.2.3) go upstream as one. */
static bool join_cookies(struct tp_shard *sh, struct tp_h2_stream *st)
{
    struct tp_head *h = &st->r->head;
    uint32_t first = UINT32_MAX, off = 0, len = 0, k = 0;

    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        struct tp_hdr hd = h->hdrs[i];
        if (hd.id == TP_H_COOKIE) {
            uint32_t o;
            if (first != UINT32_MAX && !head_put(sh, st, "; ", 2, &o))
                return false;
            if (!head_put(sh, st, st->hblk->data + hd.value.off, hd.value.len, &o))
                return false;
            if (first == UINT32_MAX) {
                first = k;
                off = o;
            }
            len = o + hd.value.len - off;
            if (first != k)
                continue; /* folded into the first */
        }
        h->hdrs[k++] = hd;
    }
    h->n_hdrs = k;
    h->hdrs[first].value.off = off;
    h->hdrs[first].value.len = len;
    return true;
}

/* The request's header block is complete: check, then hand it to the request layer. */
static void on_request_head(struct tp_shard *sh, struct tp_h2_stream *st, bool end_stream)
{
    struct tp_req *r = st->r;
    struct tp_head *h = &r->head;

    st->dispatched = true;
    r->bytes_in += st->hlist;
    if (end_stream)
        st->req_ended = true;
    if (st->too_large || st->bad || !st->hblk) {
        tp_req_ids(sh, r, false);
        r->body_state = end_stream ? TP_BODY_NONE : TP_BODY_DISCARD;
        tp_req_error(sh, r, st->too_large ? 431 : 400,
                     st->too_large ? "request header fields too large" : "unsupported method", false);
        return;
    }
    if (st->n_cookie > 1 && !join_cookies(sh, st)) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    /* the head owns its block from here: tp_head_dispose drops it */
    h->base = st->hblk->data;
    h->len = st->hblk->len;
    h->hold = true;
    h->hold_ref = (struct tp_bref){.blk = st->hblk};
    st->hblk = NULL;
    r->head_parsed = true;
    tp_req_ids(sh, r, true);

    /* framing: a body with Content-Length keeps it, one without goes upstream chunked */
    if (end_stream || (r->head_cl_seen && r->content_length == 0)) {
        r->body_state = TP_BODY_NONE;
    } else if (r->head_cl_seen) {
        if (r->content_length > r->limits.max_body_bytes) {
            r->body_state = TP_BODY_DISCARD;
            tp_req_error(sh, r, 413, "request body too large", false);
            return;
        }
        r->body_state = TP_BODY_STREAM;
    } else {
        r->chunked = true;
        r->body_state = TP_BODY_STREAM;
    }
    if (!h->url.len || h->base[h->url.off] != '/') {
        /* OPTIONS * and the like: nothing a route can match */
        r->body_state = r->body_state == TP_BODY_NONE ? TP_BODY_NONE : TP_BODY_DISCARD;
        tp_req_error(sh, r, 400, "invalid request target", false);
        return;
    }
    tp_req_dispatch(sh, r, h->base + h->url.off, h->url.len);
    /* the request layer copied what it keeps (the upstream head, the log's fields);
     * a request waiting for a lease still needs its head: the request layer releases it */
    if (st->r && !st->r->parked)
        tp_head_release(sh, &st->r->head);
}

/* ------------------------------------------------------------------ */
/* the request body                                                    */
/* ------------------------------------------------------------------ */

static bool stage_body(struct tp_shard *sh, struct tp_h2_stream *st, const uint8_t *p, size_t len)
{
    while (len) {
        struct tp_block *b = st->body_n ? st->body[(st->body_head + st->body_n - 1) % H2_BODY_BLOCKS] : NULL;
        if (!b || b->len == b->size) {
            if (st->body_n == H2_BODY_BLOCKS || !(b = tp_block_get(sh, TP_BLOCK_SIZE)))
                return false;
            b->len = 0;
            st->body[(st->body_head + st->body_n++) % H2_BODY_BLOCKS] = b;
        }
        size_t n = b->size - b->len < len ? b->size - b->len : len;
        memcpy(b->data + b->len, p, n);
        b->len += (uint32_t)n;
        st->body_staged += (uint32_t)n;
        p += n;
        len -= n;
    }
    return true;
}

/* Hands staged request body to the exchange while it can take it; the
 * client's window reopens by what it took. */
static void pump_body(struct tp_shard *sh, struct tp_h2_stream *st)
{
    struct tp_h2_session *s = st->s;
    struct tp_req *r = st->r;
    uint32_t moved = 0;

    if (!r || r->body_state != TP_BODY_STREAM || !r->att.conn)
        return;
    while (st->body_n && r->ux->body_ready(r)) {
        struct tp_block *b = st->body[st->body_head];
        uint32_t n = b->len - st->body_off;
        if (n) {
            if (!r->ux->body(sh, r, (struct tp_bref){.blk = b}, b->data + st->body_off, n)) {
                r->body_state = TP_BODY_DISCARD;
                stream_reset(st, NGHTTP2_INTERNAL_ERROR);
                s_kick(sh, s);
                return;
            }
            st->body_off += n;
            st->body_staged -= n;
            r->body_fwd += n;
            moved += n;
        }
        if (b->len < b->size)
            break; /* the block being filled stays */
        tp_block_put(sh, b);
        st->body_head = (uint8_t)((st->body_head + 1) % H2_BODY_BLOCKS);
        st->body_n--;
        st->body_off = 0;
    }
    if (moved) {
        nghttp2_session_consume_stream(s->ng, st->id, moved);
        st->last_ms = sh->now_ms;
    }
    if (st->req_ended && !st->body_staged) {
        /* the client's trailer section, for an exchange that can carry it */
        if (st->req_tr && st->req_tr->n_hdrs && r->ux->trailers && !r->ux->trailers(sh, r, st->req_tr)) {
            r->body_state = TP_BODY_DISCARD;
            stream_reset(st, NGHTTP2_INTERNAL_ERROR);
            s_kick(sh, s);
            return;
        }
        if (!r->ux->body_end(sh, r)) {
            r->body_state = TP_BODY_DISCARD;
            stream_reset(st, NGHTTP2_INTERNAL_ERROR);
            s_kick(sh, s);
            return;
        }
        r->body_state = TP_BODY_DONE;
        moved = 1;
    }
    if (moved && r->att.conn)
        r->ux->flush(sh, r);
    if (moved)
        s_kick(sh, s); /* WINDOW_UPDATE */
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                         void *user)
{
    struct tp_shard *sh = tp_self;
    struct tp_h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    struct tp_req *r = st ? st->r : NULL;

    (void)flags;
    (void)user;
    /* the connection window reopens at once; the stream's only for what the upstream took */
    nghttp2_session_consume_connection(ng, len);
    if (!r || r->body_state != TP_BODY_STREAM) {
        nghttp2_session_consume_stream(ng, id, len); /* read and dropped */
        return 0;
    }
    r->body_bytes += len;
    r->bytes_in += len;
    st->last_ms = sh->now_ms;
    if (r->body_bytes > r->limits.max_body_bytes) {
        r->body_too_large = true;
        nghttp2_session_consume_stream(ng, id, len);
        if (r->resp_state == TP_RESP_NONE) {
            /* the upstream side cannot be given the rest: it goes */
            tp_proxy_abort(sh, r);
            r->body_state = TP_BODY_DISCARD;
            tp_req_error(sh, r, 413, "request body too large", false);
        } else {
            stream_reset(st, NGHTTP2_CANCEL);
        }
        return 0;
    }
    if (!stage_body(sh, st, data, len)) {
        nghttp2_session_consume_stream(ng, id, len);
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    pump_body(sh, st);
    return 0;
}

/* ------------------------------------------------------------------ */
/* frames                                                              */
/* ------------------------------------------------------------------ */

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_shard *sh = tp_self;
    struct tp_h2_stream *st;
    bool end = f->hd.flags & NGHTTP2_FLAG_END_STREAM;

    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (!st || !st->r)
            return 0;
        if (!st->dispatched) {
            on_request_head(sh, st, end);
            return 0;
        }
        /* trailers: the end of the request; handed to the exchange after the body (pump_body) */
        if (end) {
            st->req_ended = true;
            if (st->r->body_state == TP_BODY_STREAM)
                pump_body(sh, st);
            else if (st->r->body_state == TP_BODY_DISCARD)
                st->r->body_state = TP_BODY_DONE;
        }
        return 0;
    case NGHTTP2_DATA:
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (st && st->r && end) {
            st->req_ended = true;
            if (st->r->body_state == TP_BODY_STREAM)
                pump_body(sh, st);
            else if (st->r->body_state == TP_BODY_DISCARD)
                st->r->body_state = TP_BODY_DONE;
        }
        return 0;
    case NGHTTP2_RST_STREAM:
        count_reset(sh, s);
        return 0;
    default:
        return 0;
    }
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_shard *sh = tp_self;
    struct tp_h2_stream *st;

    switch (f->hd.type) {
    case NGHTTP2_GOAWAY:
        count_goaway(sh, s, f->goaway.error_code);
        return 0;
    case NGHTTP2_RST_STREAM:
        /* ours were counted when submitted; nghttp2's own (past its wider limit) here */
        if (f->rst_stream.error_code == NGHTTP2_REFUSED_STREAM && !s->refused)
            count_reset(sh, s);
        else if (f->rst_stream.error_code == NGHTTP2_REFUSED_STREAM)
            s->refused--;
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            return 0;
        st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        /* the response is complete while the client still sends: ask it to
         * stop (RFC 9113 8.1), the stream then closes */
        if (st && st->r && !st->req_ended)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
        return 0;
    default:
        return 0;
    }
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user)
{
    struct tp_h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);

    (void)user;
    (void)code;
    if (st)
        stream_end(tp_self, st);
    return 0;
}

/* ------------------------------------------------------------------ */
/* output                                                              */
/* ------------------------------------------------------------------ */

static bool over_budget(const struct tp_h2_session *s, unsigned segs)
{
    uint64_t w = s->wbuf ? s->wbuf->len : 0;
    return tp_transport_pending(s->t) + w >= TP_OUTQ_BUDGET || tp_outq_full(s->t->out, segs);
}

/* The gathered control frames go to the send queue. */
static bool wbuf_flush(struct tp_shard *sh, struct tp_h2_session *s)
{
    struct tp_block *b = s->wbuf;

    if (!b)
        return true;
    s->wbuf = NULL;
    if (tp_outq_push_block(sh, &s->t->out, b))
        return true;
    tp_block_put(sh, b);
    return false;
}

/*
 * SETTINGS_MAX_CONCURRENT_STREAMS: nghttp2 refuses streams over the limit it
 * announced with REFUSED_STREAM only until the client acknowledged it, and
 * treats them as a connection error after that. The contract wants
 * REFUSED_STREAM (counted as resets) either way, so nghttp2 is given a wider
 * limit (ng_streams: over max_streams by h2_max_resets_per_s and some slack)
 * and on_begin_headers refuses past max_streams itself; the client is told
 * max_streams: the first frame the session sends is our SETTINGS, whose first
 * entry is MAX_CONCURRENT_STREAMS (tp_h2_start), and its value is rewritten
 * as it is copied out. The first call carries that frame whole (nothing is
 * queued yet, so it is never cut); anything else is a bug: the connection fails.
 */
#define SETTINGS_MCS_VALUE (9 + 2) /* offset of the first entry's value: frame header, entry id */
#define SETTINGS_MCS_END   (SETTINGS_MCS_VALUE + 4)

static bool settings_patch(struct tp_h2_session *s, const uint8_t *data, size_t len)
{
    const uint8_t *v = data + SETTINGS_MCS_VALUE;

    return s->out_seen == 0 && len >= SETTINGS_MCS_END && data[3] == NGHTTP2_SETTINGS && !(data[4] & 1) &&
           data[9] == 0 && data[10] == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS &&
           ((uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3]) == s->ng_streams;
}

/* Frames other than DATA payloads, serialized by nghttp2: copied into blocks. */
static ssize_t send_cb(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_shard *sh = tp_self;
    size_t done = 0;

    (void)ng;
    (void)flags;
    if (over_budget(s, 2))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (s->out_seen < SETTINGS_MCS_END && !settings_patch(s, data, len))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    while (done < len) {
        struct tp_block *b = s->wbuf;
        if (!b || b->len == b->size) {
            if (b && !wbuf_flush(sh, s))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            if (tp_outq_full(s->t->out, 2))
                break;
            if (!(b = s->wbuf = tp_block_get(sh, TP_BLOCK_SIZE)))
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            b->len = 0;
        }
        size_t n = b->size - b->len < len - done ? b->size - b->len : len - done;
        memcpy(b->data + b->len, data + done, n);
        if (s->out_seen < SETTINGS_MCS_END && done == 0 && n >= SETTINGS_MCS_END) {
            /* our first SETTINGS: the client is told h2_max_concurrent_streams */
            uint8_t *v = (uint8_t *)b->data + b->len + SETTINGS_MCS_VALUE;
            v[0] = (uint8_t)(s->max_streams >> 24);
            v[1] = (uint8_t)(s->max_streams >> 16);
            v[2] = (uint8_t)(s->max_streams >> 8);
            v[3] = (uint8_t)s->max_streams;
            s->out_seen = SETTINGS_MCS_END;
        }
        b->len += (uint32_t)n;
        done += n;
    }
    if (s->out_seen < SETTINGS_MCS_END)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* not announced as it must be: never sent */
    return done ? (ssize_t)done : NGHTTP2_ERR_WOULDBLOCK;
}

/* The data source of a response: as much as queued (at most H2_PIECES_FRAME
 * slices per frame), sent without a copy by send_data_cb. */
static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                            nghttp2_data_source *src, void *user)
{
    struct tp_h2_stream *st = src->ptr;
    size_t n = 0;

    (void)id;
    (void)buf;
    (void)user;
    if (st->aborted) {
        /* a reset is on its way: no more of the body */
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    for (unsigned i = 0; i < st->pc_n && i < H2_PIECES_FRAME && n < len; i++)
        n += st->pc[(st->pc_head + i) % H2_PIECES].len;
    if (n > len)
        n = len;
    if (n == 0 && !st->resp_done) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n)
        *dflags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (st->resp_done && n == st->queued) {
        *dflags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->tr_nv) {
            /* the trailers end the stream instead (submitting them from here is
             * allowed; nghttp2 copies the fields); if that fails the stream is
             * reset rather than ended without them (a gRPC status lives there) */
            *dflags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            int rv = nghttp2_submit_trailer(ng, st->id, nv_array(st->tr_nv), st->tr_n);
            trailers_drop(tp_self, st);
            if (rv != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *ng, nghttp2_frame *f, const uint8_t *fh, size_t len,
                        nghttp2_data_source *src, void *user)
{
    struct tp_h2_session *s = user;
    struct tp_h2_stream *st = src->ptr;
    struct tp_shard *sh = tp_self;
    struct tp_outq **q = &s->t->out;

    (void)ng;
    (void)f; /* no padding is ever chosen */
    if (st->queued < len)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* never: the slices of the frame are gone */
    if (over_budget(s, H2_PIECES_FRAME + 3))
        return NGHTTP2_ERR_WOULDBLOCK;
    if (!wbuf_flush(sh, s) || !tp_outq_push_inline(sh, q, (const char *)fh, 9))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    while (len) {
        struct h2_piece *pc = &st->pc[st->pc_head];
        uint32_t n = pc->len < len ? pc->len : (uint32_t)len;
        if (!tp_outq_push_slice(sh, q, pc->ref, pc->p, n))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        pc->p += n;
        pc->len -= n;
        st->queued -= n;
        len -= n;
        if (!pc->len) {
            tp_bref_put(sh, pc->ref);
            st->pc_head = (uint8_t)((st->pc_head + 1) % H2_PIECES);
            st->pc_n--;
        }
    }
    st->last_ms = sh->now_ms;
    /* room in the stream's queue: the exchange reads its upstream again once the send is over */
    st->want_resume = true;
    return 0;
}

/*
 * Lets nghttp2 write what it has, within the send budget, and hands it to the
 * socket; then exchanges whose stream queue drained read their upstream again.
 * Called only where no exchange is on the stack (transport events, the end of
 * the loop iteration), because streams may close in it and end their
 * requests; everything else asks through s_kick.
 */
static void s_send(struct tp_shard *sh, struct tp_h2_session *s)
{
    if (s->in_ng) {
        s->want_send = true;
        return;
    }
    if (s->closing && !s->linger)
        return;
    for (int i = 0; i < 4; i++) {
        s->want_send = false;
        s->in_ng = true;
        int rv = nghttp2_session_send(s->ng);
        s->in_ng = false;
        if (rv != 0 || !wbuf_flush(sh, s)) {
            TP_LOG_RL(TP_LOG_INFO, "client %.*s: HTTP/2: %s", s->conn.peer_len, s->conn.peer,
                      rv ? nghttp2_strerror(rv) : "out of memory");
            s->t->rst = true;
            s_close(sh, s);
            return;
        }
        if (!s->want_send || over_budget(s, 12))
            break;
    }
    tp_transport_flush(sh, s->t);
    if (s->closing)
        return;
    for (struct tp_h2_stream *st = s->streams; st; st = st->next) {
        if (!st->want_resume)
            continue;
        st->want_resume = false;
        if (st->r && st->r->att.conn && !ds_congested(st->r))
            st->r->ux->resume(sh, st->r); /* what it queues is sent through s_kick */
    }
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng)) {
        /* GOAWAY both ways, or every stream done after ours: close once sent */
        s->linger = true;
        s->closing = true;
        tp_transport_close_notify(sh, s->t);
        tp_transport_deadline(sh, s->t, sh->now_ms + H2_GOAWAY_LINGER_MS);
        if (!tp_transport_pending(s->t))
            s_close(sh, s);
    }
}

/* Output is wanted: written at the end of this loop iteration (tp_h2_tick),
 * together with whatever else the session's streams queue until then. */
static void s_kick(struct tp_shard *sh, struct tp_h2_session *s)
{
    struct tp_http_shard *hs = tp_http_shard(sh);

    if (s->in_ng) {
        s->want_send = true;
        return;
    }
    if (s->kicked || s->closing)
        return;
    s->kicked = true;
    s->next_kick = hs->h2_kick;
    hs->h2_kick = s;
}

void tp_h2_tick(struct tp_shard *sh)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    struct tp_h2_session *s;

    while ((s = hs->h2_kick)) {
        hs->h2_kick = s->next_kick;
        s->kicked = false;
        s_send(sh, s);
    }
}

/* ------------------------------------------------------------------ */
/* answers (struct tp_ds_ops)                                          */
/* ------------------------------------------------------------------ */

/* Builds a response head for nghttp2: names lowercased, connection-specific
 * fields dropped, values gathered, each field one nghttp2_nv. */
struct nv_build {
    struct tp_block *txt; /* names and values; never reallocated (nv points into it) */
    struct tp_block *nvb; /* the nghttp2_nv array */
    uint32_t n, cap;
    uint32_t name_off, name_len, val_off;
    bool skip;
};

static bool nvb_init(struct tp_shard *sh, struct nv_build *nb, size_t text, uint32_t fields)
{
    memset(nb, 0, sizeof(*nb));
    nb->txt = tp_block_get(sh, text);
    nb->nvb = tp_block_get(sh, sizeof(nghttp2_nv) * fields + _Alignof(nghttp2_nv));
    if (!nb->txt || !nb->nvb) {
        if (nb->txt)
            tp_block_put(sh, nb->txt);
        if (nb->nvb)
            tp_block_put(sh, nb->nvb);
        return false;
    }
    nb->txt->len = nb->nvb->len = 0;
    nb->cap = fields;
    return true;
}

/* The nghttp2_nv array in a block (whose data[] is not aligned for it). */
static inline nghttp2_nv *nv_array(const struct tp_block *b)
{
    uintptr_t p = (uintptr_t)b->data;
    return (nghttp2_nv *)((p + _Alignof(nghttp2_nv) - 1) & ~(uintptr_t)(_Alignof(nghttp2_nv) - 1));
}

static void nvb_drop(struct tp_shard *sh, struct nv_build *nb)
{
    tp_block_put(sh, nb->txt);
    tp_block_put(sh, nb->nvb);
    nb->txt = nb->nvb = NULL;
}

static void nv_name(void *ctx, const char *p, size_t n)
{
    struct nv_build *nb = ctx;
    uint8_t id = tp_h1_header_id(p, n);

    nb->skip = id == TP_H_CONNECTION || id == TP_H_KEEP_ALIVE || id == TP_H_PROXY_CONNECTION ||
               id == TP_H_TRANSFER_ENCODING || id == TP_H_UPGRADE || id == TP_H_TE || n == 0;
    if (nb->skip)
        return;
    nb->name_off = nb->txt->len;
    nb->name_len = (uint32_t)n;
    if (nb->txt->len + n <= nb->txt->size)
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            nb->txt->data[nb->txt->len + i] = c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c;
        }
    nb->txt->len += (uint32_t)n;
    nb->val_off = nb->txt->len;
}

static void nv_value(void *ctx, const char *p, size_t n)
{
    struct nv_build *nb = ctx;

    if (!nb->skip)
        tp_blk_put(nb->txt, p, n);
}

static void nv_end(void *ctx)
{
    struct nv_build *nb = ctx;

    if (nb->skip || nb->n == nb->cap || nb->txt->len > nb->txt->size) {
        nb->n += !nb->skip && nb->n == nb->cap; /* over capacity: noticed by nvb_ok */
        return;
    }
    nghttp2_nv *nv = nv_array(nb->nvb) + nb->n++;
    nv->name = (uint8_t *)nb->txt->data + nb->name_off;
    nv->namelen = nb->name_len;
    nv->value = (uint8_t *)nb->txt->data + nb->val_off;
    nv->valuelen = nb->txt->len - nb->val_off;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

static const struct tp_hdr_sink nv_sink = {nv_name, nv_value, nv_end};

static void nvb_add(struct nv_build *nb, const char *name, size_t nlen, const char *v, size_t vlen)
{
    nv_name(nb, name, nlen);
    nv_value(nb, v, vlen);
    nv_end(nb);
}

#define nvb_lit(nb, name, v, vlen) nvb_add((nb), (name), sizeof(name) - 1, (v), (vlen))

static void nvb_status(struct nv_build *nb, unsigned status)
{
    char d[3] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10), (char)('0' + status % 10)};
    nvb_lit(nb, ":status", d, 3);
}

static void nvb_u64(struct nv_build *nb, const char *name, size_t nlen, uint64_t v)
{
    char d[24], *e = d + sizeof(d), *p = tp_fmt_u64(e, v);
    nvb_add(nb, name, nlen, p, (size_t)(e - p));
}

static bool nvb_ok(const struct nv_build *nb)
{
    return nb->txt->len <= nb->txt->size && nb->n <= nb->cap;
}

static void nvb_field(void *ctx, const char *name, size_t nlen, const char *v, size_t vlen)
{
    nvb_add(ctx, name, nlen, v, vlen);
}

/* The preformatted RateLimit-* lines of <r> as fields. */
static void nvb_extra(struct nv_build *nb, const struct tp_req *r)
{
    tp_req_extra_fields(r, nvb_field, nb);
}

/* Queues body bytes on the stream: small slices are copied (into the last
 * block when it has room) so they do not pin whole receive buffers. */
static bool piece_push(struct tp_shard *sh, struct tp_h2_stream *st, struct tp_bref ref, const char *p,
                       uint32_t len, bool take)
{
    struct h2_piece *last = st->pc_n ? &st->pc[(st->pc_head + st->pc_n - 1) % H2_PIECES] : NULL;

    if (!len) {
        if (take)
            tp_bref_put(sh, ref);
        return true;
    }
    if (!take && len <= H2_SMALL_SLICE) {
        struct tp_block *b = last ? last->ref.blk : NULL;
        /* appending is safe only to a block of ours whose bytes end the slice */
        if (b && b->refs == 1 && last->p + last->len == b->data + b->len && b->size - b->len >= len) {
            memcpy(b->data + b->len, p, len);
            b->len += len;
            last->len += len;
            st->queued += len;
            return true;
        }
        if (st->pc_n == H2_PIECES || !(b = tp_block_get(sh, TP_BLOCK_SIZE)))
            return false;
        memcpy(b->data, p, len);
        b->len = len;
        ref = (struct tp_bref){.blk = b};
        p = b->data;
        take = true;
    }
    if (st->pc_n == H2_PIECES) {
        if (take)
            tp_bref_put(sh, ref);
        return false;
    }
    if (!take)
        tp_bref_get(sh, ref);
    st->pc[(st->pc_head + st->pc_n++) % H2_PIECES] = (struct h2_piece){.ref = ref, .p = p, .len = len};
    st->queued += len;
    return true;
}

static void resume_data(struct tp_h2_stream *st)
{
    if (st->deferred && st->submitted) {
        st->deferred = false;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
}

/* Hands a response head to nghttp2, with a data source when a body follows. */
static bool submit_head(struct tp_h2_stream *st, const nghttp2_nv *nv, size_t n)
{
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read_cb};
    int rv = nghttp2_submit_response(st->s->ng, st->id, nv, n, st->resp_body ? &prd : NULL);

    st->submitted = true;
    return rv == 0;
}

static bool submit_held_head(struct tp_shard *sh, struct tp_h2_stream *st)
{
    bool ok;

    if (!st->head_pending)
        return true;
    ok = submit_head(st, nv_array(st->hv_nv), st->hv_n);
    head_held_drop(sh, st);
    return ok;
}

static void ds_error(struct tp_shard *sh, struct tp_req *r, unsigned status, const char *reason, bool close)
{
    struct tp_h2_stream *st = stream_of_req(r);
    struct nv_build nb;
    char text[160];

    (void)close; /* the stream ends after the answer; the connection stays */
    if (!r->id_len)
        tp_req_ids(sh, r, false);
    if (r->resp_state != TP_RESP_NONE || st->submitted) {
        /* a response is already on its way: it cannot be replaced, only cut short */
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        s_kick(sh, st->s);
        return;
    }
    head_held_drop(sh, st);
    if (r->body_state == TP_BODY_STREAM)
        r->body_state = TP_BODY_DISCARD; /* the rest is read and dropped */
    if (r->body_state == TP_BODY_DISCARD && st->body_staged) {
        nghttp2_session_consume_stream(st->s->ng, st->id, st->body_staged);
        st->body_staged = 0;
    }
    r->status = (uint16_t)status;
    r->error = reason;
    if (r->err) {
        snprintf(text, sizeof(text), "%s: %s", reason, tp_strerror(r->err));
        reason = text;
    }
    size_t rlen = strlen(reason);
    struct tp_block *body = NULL;
    if (!nvb_init(sh, &nb, 512 + r->extra_len + r->id_len + 3 * rlen, 16))
        goto fail;
    if (r->grpc) {
        /* trailers-only: the status in HEADERS with END_STREAM */
        nvb_status(&nb, 200);
        nvb_lit(&nb, "content-type", "application/grpc", 16);
        nvb_u64(&nb, "grpc-status", 11, tp_grpc_status(status));
        nv_name(&nb, "grpc-message", 12);
        tp_blk_grpc_message(nb.txt, reason);
        nv_end(&nb);
    } else {
        size_t blen = tp_error_json_len(reason, r->id_len);
        nvb_status(&nb, status);
        nvb_lit(&nb, "content-type", "application/json", 16);
        nvb_u64(&nb, "content-length", 14, blen);
        if (r->method != HTTP_HEAD) {
            if (!(body = tp_block_get(sh, blen)))
                goto fail;
            body->len = 0;
            tp_blk_error_json(body, status, reason, r->id, r->id_len);
        }
    }
    nvb_lit(&nb, "x-request-id", r->id, r->id_len);
    nvb_lit(&nb, "date", tp_h1_date(), 29);
    nvb_extra(&nb, r);
    if (!nvb_ok(&nb))
        goto fail;
    st->resp_body = body != NULL;
    st->resp_done = true;
    if (body && !piece_push(sh, st, (struct tp_bref){.blk = body}, body->data, body->len, true)) {
        body = NULL;
        goto fail;
    }
    body = NULL;
    if (!submit_head(st, nv_array(nb.nvb), nb.n))
        goto fail;
    nvb_drop(sh, &nb);
    r->bytes_out += st->queued;
    r->resp_state = TP_RESP_DONE;
    s_kick(sh, st->s);
    return;
fail:
    if (body)
        tp_block_put(sh, body);
    if (nb.txt)
        nvb_drop(sh, &nb);
    stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    s_kick(sh, st->s);
}

static void ds_direct(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_h2_stream *st = stream_of_req(r);
    const struct tp_cfg_direct_response *d = r->route->cfg->direct;
    const struct tp_header_rewrite *rw = r->route->resp.cfg;
    struct tp_block *body = NULL;
    struct nv_build nb;

    if (r->body_state == TP_BODY_STREAM) {
        r->body_state = TP_BODY_DISCARD;
        if (st->body_staged) {
            nghttp2_session_consume_stream(st->s->ng, st->id, st->body_staged);
            st->body_staged = 0;
        }
    }
    if (!nvb_init(sh, &nb, 512 + r->id_len + r->route->resp.set_len + r->extra_len,
                  16 + (uint32_t)(rw ? rw->n_set : 0))) {
        tp_req_error(sh, r, 503, "out of memory", true);
        return;
    }
    nvb_status(&nb, d->status);
    nvb_lit(&nb, "date", tp_h1_date(), 29);
    if (!r->route->resp_has_ctype)
        nvb_lit(&nb, "content-type", "text/plain; charset=utf-8", 25);
    nvb_u64(&nb, "content-length", 14, d->body_len);
    nvb_lit(&nb, "x-request-id", r->id, r->id_len);
    for (size_t i = 0; rw && i < rw->n_set; i++)
        nvb_add(&nb, rw->set[i].name, rw->set[i].name_len, rw->set[i].value, rw->set[i].value_len);
    nvb_extra(&nb, r);
    if (d->body_len && r->method != HTTP_HEAD) {
        /* copied: the stream may outlive nothing, but a block is what the data path sends */
        if ((body = tp_block_get(sh, d->body_len))) {
            memcpy(body->data, d->body, d->body_len);
            body->len = (uint32_t)d->body_len;
        }
    }
    if (!nvb_ok(&nb) || (d->body_len && r->method != HTTP_HEAD && !body)) {
        if (body)
            tp_block_put(sh, body);
        nvb_drop(sh, &nb);
        tp_req_error(sh, r, 503, "out of memory", true);
        return;
    }
    r->status = d->status;
    st->resp_body = body != NULL;
    st->resp_done = true;
    if ((body && !piece_push(sh, st, (struct tp_bref){.blk = body}, body->data, body->len, true)) ||
        !submit_head(st, nv_array(nb.nvb), nb.n)) {
        nvb_drop(sh, &nb);
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        s_kick(sh, st->s);
        return;
    }
    nvb_drop(sh, &nb);
    r->bytes_out += st->queued;
    r->resp_state = TP_RESP_DONE;
    s_kick(sh, st->s);
}

static bool ds_head(struct tp_shard *sh, struct tp_req *r, unsigned status, const struct tp_head *h,
                    struct tp_resp_info *ri)
{
    struct tp_h2_stream *st = stream_of_req(r);
    const struct tp_header_rewrite *rw = r->route->resp.cfg;
    struct nv_build nb;

    if (status == 101)
        return false; /* no tunnels over HTTP/2 streams (ds->tunnel is NULL) */
    if (status < 200 && (r->resp_state != TP_RESP_NONE || st->head_pending || r->ds->ops->congested(r)))
        return true; /* an interim answer that cannot go is dropped */
    if (!nvb_init(sh, &nb, h->len + r->route->resp.set_len + r->extra_len + r->id_len + 128,
                  h->n_hdrs + 8 + (uint32_t)(rw ? rw->n_set : 0) + 4))
        return false;
    nvb_status(&nb, status);
    if (!tp_req_response_headers(r, (struct tp_head *)h, &nv_sink, &nb) && status >= 200)
        nvb_lit(&nb, "date", tp_h1_date(), 29);
    if (!nvb_ok(&nb)) {
        nvb_drop(sh, &nb);
        return false;
    }
    if (status < 200) {
        /* relayed at once as a non-final HEADERS */
        int rv =
            nghttp2_submit_headers(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NULL, nv_array(nb.nvb), nb.n, NULL);
        nvb_drop(sh, &nb);
        s_kick(sh, st->s);
        return rv >= 0;
    }
    /* the body comes decoded (no chunk framing); it is held until the first flush */
    ri->want_content = true;
    st->resp_body = !ri->head_only && ri->framing != TP_FRAME_NONE;
    st->hv_txt = nb.txt;
    st->hv_nv = nb.nvb;
    st->hv_n = nb.n;
    st->head_pending = true;
    r->status = (uint16_t)status;
    r->resp_head_len = nb.txt->len;
    r->bytes_out += nb.txt->len;
    r->resp_state = TP_RESP_HEAD;
    r->head_unflushed = true;
    return true;
}

static bool ds_body(struct tp_shard *sh, struct tp_req *r, struct tp_bref ref, const char *p, uint32_t len)
{
    struct tp_h2_stream *st = stream_of_req(r);

    if (!st->resp_body)
        return true; /* nothing may follow this head */
    if (!piece_push(sh, st, ref, p, len, false))
        return false;
    st->last_ms = sh->now_ms;
    return true;
}

static bool ds_body_block(struct tp_shard *sh, struct tp_req *r, struct tp_block *b)
{
    struct tp_h2_stream *st = stream_of_req(r);

    if (!st->resp_body) {
        tp_block_put(sh, b);
        return true;
    }
    return piece_push(sh, st, (struct tp_bref){.blk = b}, b->data, b->len, true);
}

/* Response trailers: built now, submitted by the data source once the last
 * DATA is out (a response whose head went with END_STREAM cannot take them). */
static bool ds_trailers(struct tp_shard *sh, struct tp_req *r, const struct tp_head *h)
{
    struct tp_h2_stream *st = stream_of_req(r);
    struct nv_build nb;

    if (st->tr_nv || r->method == HTTP_HEAD || (!st->resp_body && !st->head_pending))
        return true;
    if (!nvb_init(sh, &nb, h->len + 64, h->n_hdrs + 1))
        return false;
    tp_req_trailer_fields(h, &nv_sink, &nb);
    if (!nvb_ok(&nb)) {
        nvb_drop(sh, &nb);
        return false;
    }
    if (!nb.n) {
        nvb_drop(sh, &nb);
        return true;
    }
    /* a head held without a body (trailers-only would have said END_STREAM
     * there): it gets a data source, which sends no DATA, then the trailers */
    st->resp_body = true;
    st->tr_txt = nb.txt;
    st->tr_nv = nb.nvb;
    st->tr_n = nb.n;
    r->bytes_out += nb.txt->len;
    return true;
}

/* Hands the held response head (if any) to nghttp2 and lets the body flow. */
static void flush_stream(struct tp_shard *sh, struct tp_req *r, struct tp_h2_stream *st)
{
    if (!submit_held_head(sh, st)) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    } else {
        r->head_unflushed = false;
        resume_data(st);
    }
    s_kick(sh, st->s);
}

static void ds_flush(struct tp_shard *sh, struct tp_req *r)
{
    flush_stream(sh, r, stream_of_req(r));
}

static void ds_done(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_h2_stream *st = stream_of_req(r);

    st->resp_done = true;
    r->resp_state = TP_RESP_DONE;
    flush_stream(sh, r, st);
}

static void ds_abort(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_h2_stream *st = stream_of_req(r);

    /* a response cut short: the client learns it from the reset. The slices
     * stay until the stream ends: nghttp2 may hold a DATA frame of them
     * (send_data_cb said WOULDBLOCK) and send it before the reset */
    st->aborted = true;
    head_held_drop(sh, st);
    stream_reset(st, NGHTTP2_INTERNAL_ERROR);
    s_kick(sh, st->s);
}

static bool ds_unqueue_head(struct tp_shard *sh, struct tp_req *r)
{
    struct tp_h2_stream *st = stream_of_req(r);

    if (!st->head_pending)
        return false;
    head_held_drop(sh, st);
    pieces_clear(sh, st);
    return true;
}

static bool ds_congested(const struct tp_req *r)
{
    const struct tp_h2_stream *st = stream_of_req(r);
    const struct tp_shard *sh = tp_self;
    uint32_t budget = sh->bufs.held > sh->bufs.count / 2 ? H2_RESP_TIGHT : H2_RESP_BUDGET;

    return st->queued >= budget || st->pc_n + 8 > H2_PIECES;
}

static void ds_resume_body(struct tp_shard *sh, struct tp_req *r)
{
    pump_body(sh, stream_of_req(r));
}

static const struct tp_ds_ops h2_ds = {
    .error = ds_error,
    .direct = ds_direct,
    .head = ds_head,
    .body = ds_body,
    .body_block = ds_body_block,
    .trailers = ds_trailers,
    .done = ds_done,
    .abort = ds_abort,
    .unqueue_head = ds_unqueue_head,
    .congested = ds_congested,
    .flush = ds_flush,
    .resume_body = ds_resume_body,
    .tunnel = NULL,
};

/* ------------------------------------------------------------------ */
/* the connection                                                      */
/* ------------------------------------------------------------------ */

/* Closes the connection: streams end (their upstream requests are cancelled),
 * nghttp2 goes, the transport closes. Never called from inside nghttp2. */
static void s_close(struct tp_shard *sh, struct tp_h2_session *s)
{
    if (s->closing && !s->linger)
        return;
    s->closing = true;
    s->linger = false;
    while (s->streams)
        stream_end(sh, s->streams);
    tp_transport_close(sh, s->t);
}

/* A fatal error of the client's: GOAWAY with <code> if nghttp2 can still
 * send one, then close once it left. */
static void s_fail(struct tp_shard *sh, struct tp_h2_session *s, uint32_t code)
{
    if (nghttp2_session_terminate_session(s->ng, code) != 0) {
        s->t->rst = true;
        s_close(sh, s);
        return;
    }
    s_send(sh, s);
}

static void process_input(struct tp_shard *sh, struct tp_h2_session *s)
{
    struct tp_transport *t = s->t;
    struct tp_rbuf *e;

    while (!s->closing && (e = tp_inq_front(&t->in))) {
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len;
        s->in_ng = true;
        ssize_t rv = nghttp2_session_mem_recv(s->ng, (const uint8_t *)data, len);
        s->in_ng = false;
        if (rv < 0) {
            if (!s->fail_code)
                TP_LOG_RL(TP_LOG_INFO, "client %.*s: HTTP/2: %s", s->conn.peer_len, s->conn.peer,
                          nghttp2_strerror((int)rv));
            tp_inq_clear(sh, &t->in);
            s_fail(sh, s,
                   s->fail_code                ? s->fail_code
                   : rv == NGHTTP2_ERR_FLOODED ? NGHTTP2_ENHANCE_YOUR_CALM
                                               : NGHTTP2_PROTOCOL_ERROR);
            return;
        }
        tp_inq_consume(sh, &t->in, len);
    }
    s_send(sh, s);
    if (s->closing)
        return;
    /* a client that does not read stops being read */
    if (tp_transport_pending(t) >= 2 * TP_OUTQ_BUDGET)
        tp_transport_stop_recv(sh, t);
}

static void h2_on_input(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2_session *s = session_of(t);

    if (s->closing) {
        tp_inq_clear(sh, &t->in);
        if (t->peer_closed && s->linger)
            s_close(sh, s);
        return;
    }
    if (t->in.n) {
        t->deadline_ms = sh->now_ms + s->client_idle_ms;
        process_input(sh, s);
    }
    if (t->peer_closed && !s->closing) {
        /* the client is gone: nothing more can reach it */
        if (t->reset)
            t->rst = true;
        s_close(sh, s);
    }
}

static void h2_on_sent(struct tp_shard *sh, struct tp_transport *t, int res)
{
    struct tp_h2_session *s = session_of(t);

    if (res < 0) {
        t->peer_closed = true;
        s_close(sh, s);
        return;
    }
    if (s->closing) {
        if (s->linger && !tp_transport_pending(t))
            s_close(sh, s);
        return;
    }
    t->deadline_ms = sh->now_ms + s->client_idle_ms;
    if (tp_transport_pending(t) < TP_OUTQ_BUDGET)
        tp_transport_resume_recv(sh, t);
    s_send(sh, s);
}

static void h2_on_connected(struct tp_shard *sh, struct tp_transport *t, int err)
{
    (void)sh;
    (void)t;
    (void)err; /* the handshake was over before the session took the transport */
}

/* No byte either way for client_idle: an idle connection says GOAWAY and
 * closes; streams the client stalls (a response it does not read, a body it
 * does not send) are reset; streams waiting for their upstream wait on. */
static void h2_on_timeout(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2_session *s = session_of(t);

    if (s->closing) {
        s_close(sh, s);
        return;
    }
    if (!s->n_streams) {
        nghttp2_session_terminate_session(s->ng, NGHTTP2_NO_ERROR);
        s_send(sh, s);
        if (!s->closing) {
            s->linger = s->closing = true;
            tp_transport_deadline(sh, t, sh->now_ms + H2_GOAWAY_LINGER_MS);
        }
        return;
    }
    for (struct tp_h2_stream *st = s->streams; st; st = st->next) {
        struct tp_req *r = st->r;
        bool stalled = st->queued || (r && r->body_state == TP_BODY_STREAM && !st->body_staged &&
                                      r->att.conn && r->ux->body_ready(r));
        if (r && stalled && sh->now_ms - st->last_ms >= s->client_idle_ms) {
            TP_LOG_RL(TP_LOG_INFO, "client %.*s stalled stream %d for %llu ms; resetting", s->conn.peer_len,
                      s->conn.peer, st->id, (unsigned long long)s->client_idle_ms);
            stream_reset(st, NGHTTP2_CANCEL);
        }
    }
    tp_transport_deadline(sh, t, sh->now_ms + s->client_idle_ms);
    s_send(sh, s);
}

static void h2_on_error(struct tp_shard *sh, struct tp_transport *t, int err)
{
    struct tp_h2_session *s = session_of(t);

    if (err != TP_ETLS)
        TP_LOG_RL(TP_LOG_INFO, "client %.*s: %s", s->conn.peer_len, s->conn.peer, tp_strerror(err));
    t->peer_closed = true;
    s_close(sh, s);
}

static void h2_on_closed(struct tp_shard *sh, struct tp_transport *t)
{
    struct tp_h2_session *s = session_of(t);
    struct tp_http_shard *hs = tp_http_shard(sh);

    while (s->streams)
        stream_end(sh, s->streams);
    if (s->ng)
        nghttp2_session_del(s->ng);
    if (s->wbuf)
        tp_block_put(sh, s->wbuf);
    if (s->prev)
        s->prev->next = s->next;
    else
        hs->h2_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->kicked)
        for (struct tp_h2_session **pp = &hs->h2_kick; *pp; pp = &(*pp)->next_kick)
            if (*pp == s) {
                *pp = s->next_kick;
                break;
            }
    t->user = NULL;
    t->proto = s->own;
    s->own->on_closed(sh, t); /* the HTTP/1 session frees its connection object */
    free(s);
}

static const struct tp_transport_ops h2_proto = {
    .on_input = h2_on_input,
    .on_sent = h2_on_sent,
    .on_connected = h2_on_connected,
    .on_timeout = h2_on_timeout,
    .on_error = h2_on_error,
    .on_closed = h2_on_closed,
};

/* ------------------------------------------------------------------ */
/* start, drain                                                        */
/* ------------------------------------------------------------------ */

static pthread_once_t cbs_once = PTHREAD_ONCE_INIT;
static nghttp2_session_callbacks *cbs;

static void cbs_init(void)
{
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cbs, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
}

bool tp_h2_start(struct tp_shard *sh, struct tp_transport *t, const struct tp_ds *conn)
{
    struct tp_http_shard *hs = tp_http_shard(sh);
    const struct tp_limits *lim = &hs->limits;
    struct tp_h2_session *s;
    nghttp2_option *opt = NULL;
    int rv;

    pthread_once(&cbs_once, cbs_init);
    if (!cbs || !(s = calloc(1, sizeof(*s))))
        return false;
    if (nghttp2_option_new(&opt) != 0) {
        free(s);
        return false;
    }
    /* request bodies: the stream's window reopens only for what the upstream took */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
    nghttp2_option_set_max_settings(opt, 16);
    /* our own count (count_reset) decides; nghttp2's bucket stays wider than it */
    nghttp2_option_set_stream_reset_rate_limit(opt, 2ull * lim->h2_max_resets_per_s + 16,
                                               lim->h2_max_resets_per_s + 1);
    rv = nghttp2_session_server_new2(&s->ng, cbs, s, opt);
    nghttp2_option_del(opt);
    if (rv != 0) {
        free(s);
        return false;
    }
    s->max_streams = lim->h2_max_streams;
    s->max_resets = lim->h2_max_resets_per_s;
    uint64_t ngmax = (uint64_t)s->max_streams + s->max_resets + H2_NG_STREAMS_SLACK;
    s->ng_streams = ngmax > INT32_MAX ? INT32_MAX : (uint32_t)ngmax;
    nghttp2_settings_entry iv[] = {
        /* first: send_cb tells the client max_streams instead (settings_patch) */
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->ng_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)lim->max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    if (nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0) {
        nghttp2_session_del(s->ng);
        free(s);
        return false;
    }
    s->t = t;
    s->own = t->proto;
    s->conn = *conn;
    s->client_idle_ms = lim->client_idle_ms;
    s->max_header_bytes = (uint32_t)lim->max_header_bytes;
    s->next = hs->h2_sessions;
    if (hs->h2_sessions)
        hs->h2_sessions->prev = s;
    hs->h2_sessions = s;
    t->proto = &h2_proto;
    t->user = s;
    tp_transport_deadline(sh, t, sh->now_ms + s->client_idle_ms);
    /* the preface (and whatever followed it) may be queued already */
    process_input(sh, s);
    if (!s->closing)
        tp_transport_resume_recv(sh, t);
    return true;
}

/* Graceful GOAWAY: the last stream the client opened still gets its answer,
 * later ones are refused; the connection closes once they are done. */
static void s_goaway(struct tp_shard *sh, struct tp_h2_session *s)
{
    if (s->closing || s->goaway)
        return;
    s->goaway = true;
    if (nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                              NGHTTP2_NO_ERROR, NULL, 0) != 0) {
        s_close(sh, s);
        return;
    }
    s_send(sh, s);
}

void tp_h2_drain(struct tp_shard *sh, bool now)
{
    struct tp_h2_session *s = tp_http_shard(sh)->h2_sessions, *next;

    for (; s; s = next) {
        next = s->next;
        if (now)
            s_close(sh, s);
        else
            s_goaway(sh, s);
    }
}

void tp_h2_listener_closed(struct tp_shard *sh, unsigned idx)
{
    struct tp_h2_session *s = tp_http_shard(sh)->h2_sessions, *next;

    for (; s; s = next) {
        next = s->next;
        if (s->conn.listener == idx)
            s_goaway(sh, s);
    }
}

void tp_h2_shard_free(struct tp_http_shard *hs)
{
    while (hs->h2_free) {
        struct tp_h2_stream *st = hs->h2_free;
        hs->h2_free = st->next_free;
        free(st);
    }
    hs->n_h2_free = 0;
}
