/* SPDX-License-Identifier: MIT */
/*
 * HTTP/1 heads (see h1.h). [shard]
 *
 * llhttp delivers the request line and headers in spans, possibly split
 * across receive buffers. We record every span as an offset into the head's
 * logical byte stream (byte 0 = first byte of the head), never as a pointer:
 * when the head completes inside one buffer, the offsets index that buffer;
 * when it spans buffers, the bytes seen so far are copied into one
 * contiguous allocation and the offsets index that copy. Either way the
 * finished head is read as base + offset with no re-parse.
 *
 * llhttp (built with LLHTTP_STRICT_MODE) rejects most malformed input; two
 * rules it lets through are enforced here: obsolete line folding shows up as
 * a value span that does not start where the value's previous span ended,
 * and an empty header name as a value span that follows no name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <time.h>

#include "http/h1.h"

void tp_head_init(struct tp_head *h)
{
    memset(h, 0, offsetof(struct tp_head, inl));
    h->hdrs = h->inl;
    h->cap_hdrs = TP_HDRS_INLINE;
}

void tp_head_dispose(struct tp_shard *sh, struct tp_head *h)
{
    tp_head_release(sh, h);
    if (h->hdrs != h->inl)
        free(h->hdrs);
    free(h->copy);
    h->hdrs = h->inl;
    h->cap_hdrs = TP_HDRS_INLINE;
    h->copy = NULL;
    h->copy_cap = 0;
    h->n_hdrs = 0;
    h->base = NULL;
}

static inline uint32_t span_off(const struct tp_head *h, const char *at)
{
    return h->exec_off + (uint32_t)(at - h->exec_base);
}

static int tp_head_on_url(struct tp_head *h, const char *at, size_t len)
{
    if (h->url.len == 0)
        h->url.off = span_off(h, at);
    h->url.len += (uint32_t)len;
    return 0;
}

static int tp_head_on_status(struct tp_head *h, const char *at, size_t len)
{
    if (h->reason.len == 0)
        h->reason.off = span_off(h, at);
    h->reason.len += (uint32_t)len;
    return 0;
}

struct tp_hdr *tp_head_new_field(struct tp_head *h)
{
    if (h->n_hdrs == h->cap_hdrs) {
        uint32_t ncap = h->cap_hdrs * 2;
        struct tp_hdr *n = malloc(sizeof(*n) * ncap);
        if (!n)
            return NULL;
        memcpy(n, h->hdrs, sizeof(*n) * h->n_hdrs);
        if (h->hdrs != h->inl)
            free(h->hdrs);
        h->hdrs = n;
        h->cap_hdrs = ncap;
    }
    struct tp_hdr *hd = &h->hdrs[h->n_hdrs++];
    memset(hd, 0, sizeof(*hd));
    return hd;
}

static int tp_head_on_field(struct tp_head *h, const char *at, size_t len)
{
    h->url_done = true;
    if (h->last_cb != 1) {
        struct tp_hdr *hd = tp_head_new_field(h);
        if (!hd)
            return -1;
        hd->name.off = span_off(h, at);
        h->last_cb = 1;
    }
    struct tp_hdr *hd = &h->hdrs[h->n_hdrs - 1];
    if (hd->name.len && span_off(h, at) != hd->name.off + hd->name.len) {
        h->bad = true;
        h->reason_text = "invalid header name";
        return -1;
    }
    hd->name.len += (uint32_t)len;
    return 0;
}

static int tp_head_on_value(struct tp_head *h, const char *at, size_t len)
{
    /* A value span that does not continue a header's name or value is a
     * folded continuation line or a header without a name. */
    if (h->last_cb != 1 && h->last_cb != 2) {
        h->bad = true;
        h->reason_text = h->last_cb == 3 ? "obsolete line folding" : "empty header name";
        return -1;
    }
    struct tp_hdr *hd = &h->hdrs[h->n_hdrs - 1];
    if (h->last_cb == 1) {
        hd->value.off = span_off(h, at);
    } else if (span_off(h, at) != hd->value.off + hd->value.len) {
        /* llhttp continues a value across a folded line without telling:
         * a span that does not start where the previous one ended is one */
        h->bad = true;
        h->reason_text = "obsolete line folding";
        return -1;
    }
    hd->value.len += (uint32_t)len;
    h->last_cb = 2;
    return 0;
}

static int tp_head_on_value_complete(struct tp_head *h)
{
    if (h->last_cb == 1) {
        /* empty value: no value span was delivered */
        struct tp_hdr *hd = &h->hdrs[h->n_hdrs - 1];
        hd->value.off = hd->name.off + hd->name.len;
        hd->value.len = 0;
    }
    if (h->n_hdrs == 0 || h->hdrs[h->n_hdrs - 1].name.len == 0) {
        h->bad = true;
        h->reason_text = "empty header name";
        return -1;
    }
    h->last_cb = 3;
    return 0;
}

/* The head is complete at <base>: trim values, classify names. */
static void head_finish(struct tp_head *h)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        struct tp_hdr *hd = &h->hdrs[i];
        const char *v = h->base + hd->value.off;
        while (hd->value.len && (v[hd->value.len - 1] == ' ' || v[hd->value.len - 1] == '\t'))
            hd->value.len--;
        hd->id = tp_h1_header_id(h->base + hd->name.off, hd->name.len);
    }
}

static bool head_save(struct tp_head *h, const char *data, uint32_t n, uint32_t limit)
{
    if (!h->copy) {
        h->copy_cap = limit + 1;
        h->copy = malloc(h->copy_cap);
        if (!h->copy)
            return false;
    }
    if (h->len + n > h->copy_cap)
        return false;
    memcpy(h->copy + h->len, data, n);
    return true;
}

/* ---- the parser wiring ---- */

static inline struct tp_h1_parser *hp_of(llhttp_t *p)
{
    return (struct tp_h1_parser *)p; /* the llhttp_t is its first member */
}

static int pw_on_url(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_url(hp_of(p)->head, at, len);
}

static int pw_on_url_complete(llhttp_t *p)
{
    hp_of(p)->head->url_done = true;
    return 0;
}

static int pw_on_status(llhttp_t *p, const char *at, size_t len)
{
    return tp_head_on_status(hp_of(p)->head, at, len);
}

/* ---- trailer sections (copies) ---- */

struct tp_head *tp_trailers_new(void)
{
    struct tp_head *h = malloc(sizeof(*h));

    if (h)
        tp_head_init(h);
    return h;
}

void tp_trailers_free(struct tp_head *h)
{
    if (!h)
        return;
    if (h->hdrs != h->inl)
        free(h->hdrs);
    free(h->copy);
    free(h);
}

void tp_trailers_reset(struct tp_head *h)
{
    h->n_hdrs = 0;
    h->len = 0;
    h->base = NULL;
    h->last_cb = 0;
    h->bad = false;
    h->reason_text = NULL;
}

/* Appends <n> bytes to the copy of <h>; false past <limit> or out of memory. */
static bool tr_put(struct tp_head *h, const char *p, size_t n, uint32_t limit)
{
    if (n == 0)
        return true; /* llhttp reports empty spans (an empty name): nothing to copy, maybe no copy yet */
    if ((uint64_t)h->len + n > limit)
        return false;
    if (h->len + n > h->copy_cap) {
        uint32_t cap = h->copy_cap ? h->copy_cap * 2 : 256;
        while (cap < h->len + n)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        char *c = realloc(h->copy, cap);
        if (!c)
            return false;
        h->copy = c;
        h->copy_cap = cap;
    }
    memcpy(h->copy + h->len, p, n);
    h->len += (uint32_t)n;
    return true;
}

/* A new field in <h>, its name starting at the copy's end. */
static struct tp_hdr *tr_new_field(struct tp_head *h)
{
    struct tp_hdr *hd = tp_head_new_field(h);
    if (hd)
        hd->name.off = h->len;
    return hd;
}

bool tp_trailers_add(struct tp_head *h, const char *name, size_t nlen, const char *value, size_t vlen,
                     uint32_t limit)
{
    struct tp_hdr *hd = tr_new_field(h);

    if (!hd)
        return false;
    if (!tr_put(h, name, nlen, limit)) {
        h->n_hdrs--;
        return false;
    }
    hd->value.off = h->len;
    if (!tr_put(h, value, vlen, limit)) {
        h->len = hd->name.off;
        h->n_hdrs--;
        return false;
    }
    hd->name.len = (uint32_t)nlen;
    hd->value.len = (uint32_t)vlen;
    hd->id = tp_h1_header_id(name, nlen);
    h->base = h->copy;
    return true;
}

/* Fields after the head are the trailer section of a chunked body. The head's
 * bytes may be gone by then, so they are recorded, when asked for, as copies
 * into their own struct tp_head (hp->trailers); otherwise skipped (a body
 * relayed as received carries them anyway). */
static int tr_on_field(struct tp_h1_parser *hp, const char *at, size_t len)
{
    struct tp_head *h = hp->trailers;

    if (!hp->trailer_limit)
        return 0;
    if (!h && !(h = hp->trailers = tp_trailers_new()))
        return -1;
    if (h->last_cb != 1) {
        if (!tr_new_field(h))
            return -1;
        h->last_cb = 1;
    }
    if (!tr_put(h, at, len, hp->trailer_limit)) {
        h->reason_text = "trailer section too large";
        return -1;
    }
    h->hdrs[h->n_hdrs - 1].name.len += (uint32_t)len;
    return 0;
}

static int tr_on_value(struct tp_h1_parser *hp, const char *at, size_t len)
{
    struct tp_head *h = hp->trailers;

    if (!hp->trailer_limit)
        return 0;
    if (!h || (h->last_cb != 1 && h->last_cb != 2)) {
        if (h)
            h->reason_text = "invalid trailer field";
        return -1;
    }
    struct tp_hdr *hd = &h->hdrs[h->n_hdrs - 1];
    if (h->last_cb == 1) {
        hd->value.off = h->len;
    } else if (at != hp->tr_last && !(hp->tr_last_at_end && at == hp->exec_start)) {
        /* a value continued away from where it stopped: an obsolete line fold */
        h->reason_text = "obsolete line folding";
        return -1;
    }
    if (!tr_put(h, at, len, hp->trailer_limit)) {
        h->reason_text = "trailer section too large";
        return -1;
    }
    hd->value.len += (uint32_t)len;
    hp->tr_last = at + len;
    hp->tr_last_at_end = hp->tr_last == hp->exec_end;
    h->last_cb = 2;
    return 0;
}

static int tr_on_value_complete(struct tp_h1_parser *hp)
{
    struct tp_head *h = hp->trailers;

    if (!hp->trailer_limit)
        return 0;
    if (!h || !h->n_hdrs || h->hdrs[h->n_hdrs - 1].name.len == 0)
        return -1;
    if (h->last_cb == 1) {
        struct tp_hdr *hd = &h->hdrs[h->n_hdrs - 1];
        hd->value.off = h->len;
        hd->value.len = 0;
    }
    h->last_cb = 3;
    return 0;
}

static int pw_on_field(llhttp_t *p, const char *at, size_t len)
{
    return hp_of(p)->head_done ? tr_on_field(hp_of(p), at, len) : tp_head_on_field(hp_of(p)->head, at, len);
}

static int pw_on_value(llhttp_t *p, const char *at, size_t len)
{
    return hp_of(p)->head_done ? tr_on_value(hp_of(p), at, len) : tp_head_on_value(hp_of(p)->head, at, len);
}

static int pw_on_value_complete(llhttp_t *p)
{
    return hp_of(p)->head_done ? tr_on_value_complete(hp_of(p)) : tp_head_on_value_complete(hp_of(p)->head);
}

static int pw_on_headers_complete(llhttp_t *p)
{
    struct tp_h1_parser *hp = hp_of(p);

    hp->head_done = true;
    return hp->on_headers ? hp->on_headers(hp) : HPE_PAUSED;
}

static int pw_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct tp_h1_parser *hp = hp_of(p);
    return hp->on_body ? hp->on_body(hp, at, len) : 0;
}

static int pw_on_message_complete(llhttp_t *p)
{
    struct tp_h1_parser *hp = hp_of(p);
    struct tp_head *t = hp->trailers;

    hp->msg_done = true;
    if (hp->trailer_limit && t && t->n_hdrs) {
        /* the copy is complete (it no longer moves): trim and classify as a head */
        t->base = t->copy;
        head_finish(t);
    }
    return HPE_PAUSED;
}

static llhttp_settings_t pw_settings;
static pthread_once_t pw_once = PTHREAD_ONCE_INIT;

static void pw_settings_init(void)
{
    llhttp_settings_init(&pw_settings);
    pw_settings.on_url = pw_on_url;
    pw_settings.on_url_complete = pw_on_url_complete;
    pw_settings.on_status = pw_on_status;
    pw_settings.on_header_field = pw_on_field;
    pw_settings.on_header_value = pw_on_value;
    pw_settings.on_header_value_complete = pw_on_value_complete;
    pw_settings.on_headers_complete = pw_on_headers_complete;
    pw_settings.on_body = pw_on_body;
    pw_settings.on_message_complete = pw_on_message_complete;
}

void tp_h1_parser_init(struct tp_h1_parser *hp, llhttp_type_t type, struct tp_head *head,
                       tp_h1_body_fn on_body)
{
    pthread_once(&pw_once, pw_settings_init);
    llhttp_init(&hp->p, type, &pw_settings);
    hp->p.data = hp;
    hp->head = head;
    hp->head_done = hp->msg_done = false;
    hp->on_body = on_body;
    hp->on_headers = NULL;
    hp->trailers = NULL;
    hp->trailer_limit = 0;
    hp->exec_start = hp->exec_end = hp->tr_last = NULL;
    hp->tr_last_at_end = false;
}

void tp_h1_parser_dispose(struct tp_h1_parser *hp)
{
    tp_trailers_free(hp->trailers);
    hp->trailers = NULL;
}

void tp_h1_parser_want_trailers(struct tp_h1_parser *hp, uint32_t limit)
{
    hp->trailer_limit = limit;
    if (hp->trailers)
        tp_trailers_reset(hp->trailers);
}

llhttp_errno_t tp_h1_execute(struct tp_h1_parser *hp, const char *data, size_t len)
{
    hp->exec_start = data;
    hp->exec_end = data + len;
    return llhttp_execute(&hp->p, data, len);
}

void tp_h1_parser_finish_message(struct tp_h1_parser *hp)
{
    llhttp_resume(&hp->p);
    hp->msg_done = false;
    llhttp_execute(&hp->p, "", 0);
    if (hp->msg_done) {
        hp->msg_done = false;
        llhttp_resume(&hp->p);
    }
}

void tp_h1_parser_decline_upgrade(struct tp_h1_parser *hp)
{
    if (!hp->p.upgrade)
        return;
    llhttp_resume(&hp->p);
    if (llhttp_get_errno(&hp->p) == HPE_OK && llhttp_execute(&hp->p, "", 0) == HPE_PAUSED_UPGRADE)
        llhttp_resume_after_upgrade(&hp->p);
}

enum tp_head_rc tp_head_parse(struct tp_shard *sh, struct tp_h1_parser *hp, struct tp_inq *q, uint32_t limit,
                              unsigned *status)
{
    struct tp_rbuf *e;
    llhttp_t *p = &hp->p;
    struct tp_head *h = hp->head;
    const bool *done_flag = &hp->head_done;

    while ((e = tp_inq_front(q))) {
        const char *data = tp_rbuf_data(sh, e);
        uint32_t len = e->len, used;
        /* never let llhttp look further than the limit allows */
        uint32_t room = limit + 1 - h->len;
        if (len > room)
            len = room;

        h->exec_base = data;
        h->exec_off = h->len;
        llhttp_errno_t rc = llhttp_execute(p, data, len);
        if (rc == HPE_PAUSED && *done_flag) {
            used = (uint32_t)(llhttp_get_error_pos(p) - data);
        } else if (rc == HPE_OK) {
            used = len;
        } else {
            *status = 400;
            if (!h->bad)
                h->reason_text = tp_h1_llhttp_reason(rc);
            return TP_HEAD_ERROR;
        }
        if (h->bad) {
            *status = 400;
            return TP_HEAD_ERROR;
        }
        if (h->len + used > limit) {
            /* the request line alone over the limit is 414, else 431 */
            *status = (!h->url_done && !*done_flag) || h->url.off + h->url.len + 10 > limit ? 414 : 431;
            return TP_HEAD_ERROR;
        }
        if (*done_flag) {
            if (h->copy) {
                if (!head_save(h, data, used, limit)) {
                    *status = 431;
                    return TP_HEAD_ERROR;
                }
                h->base = h->copy;
            } else {
                /* whole head in this buffer: keep it alive while the head is used */
                h->base = data;
                h->hold_ref = tp_rbuf_ref(e);
                h->hold = true;
                tp_bref_get(sh, h->hold_ref);
            }
            h->len += used;
            tp_inq_consume(sh, q, used);
            head_finish(h);
            return TP_HEAD_DONE;
        }
        if (!head_save(h, data, used, limit)) {
            *status = 431;
            return TP_HEAD_ERROR;
        }
        h->len += used;
        tp_inq_consume(sh, q, used);
    }
    return TP_HEAD_MORE;
}

void tp_head_release(struct tp_shard *sh, struct tp_head *h)
{
    if (h->hold) {
        h->hold = false;
        tp_bref_put(sh, h->hold_ref);
    }
}

const char *tp_h1_llhttp_reason(int err)
{
    switch (err) {
    case HPE_INVALID_METHOD:
        return "invalid method";
    case HPE_INVALID_URL:
        return "invalid request target";
    case HPE_INVALID_VERSION:
        return "invalid http version";
    case HPE_INVALID_HEADER_TOKEN:
        return "invalid header";
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return "conflicting content-length";
    case HPE_INVALID_CONTENT_LENGTH:
        return "invalid content-length";
    case HPE_INVALID_TRANSFER_ENCODING:
        return "invalid transfer-encoding";
    case HPE_INVALID_CHUNK_SIZE:
        return "invalid chunk size";
    case HPE_LF_EXPECTED:
    case HPE_CR_EXPECTED:
        return "invalid line ending";
    case HPE_STRICT:
        return "invalid character";
    default:
        return "malformed request";
    }
}

bool tp_eq_nocase(const char *a, size_t alen, const char *lower, size_t llen)
{
    if (alen != llen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        unsigned char ch = (unsigned char)a[i];
        if (ch >= 'A' && ch <= 'Z')
            ch |= 0x20;
        if (ch != (unsigned char)lower[i])
            return false;
    }
    return true;
}

#define EQ(lit) tp_eq_nocase(name, len, lit, sizeof(lit) - 1)

uint8_t tp_h1_header_id(const char *name, size_t len)
{
    switch (len) {
    case 2:
        return EQ("te") ? TP_H_TE : TP_H_OTHER;
    case 4:
        if (EQ("host"))
            return TP_H_HOST;
        return EQ("date") ? TP_H_DATE : TP_H_OTHER;
    case 6:
        if (EQ("cookie"))
            return TP_H_COOKIE;
        return EQ("expect") ? TP_H_EXPECT : TP_H_OTHER;
    case 7:
        if (EQ("upgrade"))
            return TP_H_UPGRADE;
        return EQ("trailer") ? TP_H_TRAILER : TP_H_OTHER;
    case 10:
        if (EQ("connection"))
            return TP_H_CONNECTION;
        return EQ("keep-alive") ? TP_H_KEEP_ALIVE : TP_H_OTHER;
    case 11:
        return EQ("traceparent") ? TP_H_TRACEPARENT : TP_H_OTHER;
    case 12:
        if (EQ("x-request-id"))
            return TP_H_X_REQUEST_ID;
        return EQ("content-type") ? TP_H_CONTENT_TYPE : TP_H_OTHER;
    case 13:
        return EQ("authorization") ? TP_H_AUTHORIZATION : TP_H_OTHER;
    case 14:
        return EQ("content-length") ? TP_H_CONTENT_LENGTH : TP_H_OTHER;
    case 15:
        return EQ("x-forwarded-for") ? TP_H_X_FORWARDED_FOR : TP_H_OTHER;
    case 16:
        if (EQ("proxy-connection"))
            return TP_H_PROXY_CONNECTION;
        return EQ("x-forwarded-host") ? TP_H_X_FORWARDED_HOST : TP_H_OTHER;
    case 17:
        if (EQ("transfer-encoding"))
            return TP_H_TRANSFER_ENCODING;
        return EQ("x-forwarded-proto") ? TP_H_X_FORWARDED_PROTO : TP_H_OTHER;
    default:
        return TP_H_OTHER;
    }
}
#undef EQ

const struct tp_hdr *tp_head_find(const struct tp_head *h, uint8_t id)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++)
        if (h->hdrs[i].id == id)
            return &h->hdrs[i];
    return NULL;
}

const char *tp_head_value(const struct tp_head *h, const char *name, size_t name_len, size_t *len)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        const struct tp_hdr *hd = &h->hdrs[i];
        if (tp_eq_nocase(h->base + hd->name.off, hd->name.len, name, name_len)) {
            *len = hd->value.len;
            return h->base + hd->value.off;
        }
    }
    return NULL;
}

bool tp_h1_has_token(const char *list, size_t len, const char *token, size_t tlen)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (list[i] == ' ' || list[i] == '\t' || list[i] == ','))
            i++;
        size_t start = i;
        while (i < len && list[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (list[end - 1] == ' ' || list[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(list + start, token, tlen) == 0)
            return true;
    }
    return false;
}

const char *tp_h1_reason(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        break;
    }
    if (status < 200)
        return "Informational";
    if (status < 300)
        return "Success";
    if (status < 400)
        return "Redirection";
    if (status < 500)
        return "Client Error";
    return "Server Error";
}

const char *tp_h1_date(void)
{
    static __thread char buf[32];
    static __thread time_t last;
    time_t now = time(NULL);

    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return buf;
}

void tp_blk_u64(struct tp_block *b, uint64_t v)
{
    char tmp[24];
    char *p = tp_fmt_u64(tmp + sizeof(tmp), v);
    tp_blk_put(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

void tp_blk_hex(struct tp_block *b, uint64_t v)
{
    static const char hx[] = "0123456789abcdef";
    char tmp[16];
    int n = 0;
    do {
        tmp[sizeof(tmp) - 1 - n++] = hx[v & 15];
        v >>= 4;
    } while (v);
    tp_blk_put(b, tmp + sizeof(tmp) - n, (size_t)n);
}

void tp_h1_random_hex(struct tp_shard *sh, char *out, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    uint64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if ((i & 7) == 0)
            r = tp_rand64(sh);
        uint8_t byte = (uint8_t)r;
        r >>= 8;
        out[2 * i] = hx[byte >> 4];
        out[2 * i + 1] = hx[byte & 15];
    }
}

/* The end of a gateway-made answer's head, after its last own field (the
 * line is still open): X-Request-Id, Date, the <extra> lines, Connection:
 * close when <close>, and the empty line. */
static void error_head_end(struct tp_block *b, const char *id, size_t id_len, const char *extra,
                           size_t extra_len, bool close)
{
    tp_blk_lit(b, "\r\nX-Request-Id: ");
    tp_blk_put(b, id, id_len);
    tp_blk_lit(b, "\r\nDate: ");
    tp_blk_put(b, tp_h1_date(), 29);
    tp_blk_lit(b, "\r\n");
    if (extra_len)
        tp_blk_put(b, extra, extra_len);
    if (close)
        tp_blk_lit(b, "Connection: close\r\n");
    tp_blk_lit(b, "\r\n");
}

size_t tp_error_json_len(const char *reason, size_t id_len)
{
    /* {"error":"<reason>","status":NNN,"request_id":"<id>"}: the status is always three digits */
    return 10 + strlen(reason) + 11 + 3 + 15 + id_len + 2;
}

void tp_blk_error_json(struct tp_block *b, unsigned status, const char *reason, const char *id, size_t id_len)
{
    /* reason and id are JSON-safe by construction (fixed strings; ids are
     * visible ASCII without quotes or backslashes) */
    tp_blk_lit(b, "{\"error\":\"");
    tp_blk_put(b, reason, strlen(reason));
    tp_blk_lit(b, "\",\"status\":");
    tp_blk_u64(b, status);
    tp_blk_lit(b, ",\"request_id\":\"");
    tp_blk_put(b, id, id_len);
    tp_blk_lit(b, "\"}");
}

void tp_blk_grpc_message(struct tp_block *b, const char *reason)
{
    static const char hx[] = "0123456789ABCDEF";

    /* gRPC's percent-encoding: printable ASCII except '%' goes as it is */
    for (const char *p = reason; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
            tp_blk_put(b, p, 1);
        } else {
            char e[3] = {'%', hx[ch >> 4], hx[ch & 15]};
            tp_blk_put(b, e, 3);
        }
    }
}

struct tp_block *tp_h1_error_response(struct tp_shard *sh, unsigned status, const char *reason,
                                      const char *id, size_t id_len, const char *extra, size_t extra_len,
                                      bool close, bool head_only)
{
    size_t rlen = strlen(reason);
    size_t body_len = tp_error_json_len(reason, id_len);
    size_t need = 256 + extra_len + id_len + 2 * rlen + body_len;
    struct tp_block *b = tp_block_get(sh, need);

    if (!b)
        return NULL;
    b->len = 0;
    tp_blk_lit(b, "HTTP/1.1 ");
    tp_blk_u64(b, status);
    tp_blk_lit(b, " ");
    tp_blk_put(b, tp_h1_reason(status), strlen(tp_h1_reason(status)));
    tp_blk_lit(b, "\r\nContent-Type: application/json\r\nContent-Length: ");
    tp_blk_u64(b, body_len);
    error_head_end(b, id, id_len, extra, extra_len, close);
    if (!head_only) {
        uint32_t before = b->len;
        tp_blk_error_json(b, status, reason, id, id_len);
        TP_BUG_ON(b->len - before != body_len);
    }
    TP_BUG_ON(b->len > b->size);
    return b;
}

unsigned tp_grpc_status_parse(const char *v, size_t len)
{
    unsigned code = 0;

    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || len > 2)
        return TP_GRPC_OTHER;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return TP_GRPC_OTHER;
        code = code * 10 + (unsigned)(v[i] - '0');
    }
    return code <= 16 ? code : TP_GRPC_OTHER;
}

bool tp_grpc_timeout_parse(const char *v, size_t len, uint64_t *ms)
{
    uint64_t n = 0;

    if (len < 2 || len > 9)
        return false;
    for (size_t i = 0; i + 1 < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    switch (v[len - 1]) {
    case 'H':
        *ms = n * 3600000;
        return true;
    case 'M':
        *ms = n * 60000;
        return true;
    case 'S':
        *ms = n * 1000;
        return true;
    case 'm':
        *ms = n;
        return true;
    case 'u':
        *ms = (n + 999) / 1000;
        return true;
    case 'n':
        *ms = (n + 999999) / 1000000;
        return true;
    default:
        return false;
    }
}

unsigned tp_grpc_status(unsigned status)
{
    switch (status) {
    case 400:
    case 413:
    case 431:
        return 3; /* INVALID_ARGUMENT */
    case 401:
        return 16; /* UNAUTHENTICATED */
    case 403:
        return 7; /* PERMISSION_DENIED */
    case 404:
        return 12; /* UNIMPLEMENTED */
    case 429:
        return 8; /* RESOURCE_EXHAUSTED */
    case 502:
    case 503:
        return 14; /* UNAVAILABLE */
    case 504:
        return 4; /* DEADLINE_EXCEEDED */
    default:
        return 13; /* INTERNAL */
    }
}

struct tp_block *tp_h1_grpc_error_response(struct tp_shard *sh, unsigned status, const char *reason,
                                           const char *id, size_t id_len, const char *extra, size_t extra_len,
                                           bool close)
{
    size_t rlen = strlen(reason);
    struct tp_block *b = tp_block_get(sh, 256 + extra_len + id_len + 3 * rlen);

    if (!b)
        return NULL;
    b->len = 0;
    tp_blk_lit(b, "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\ngrpc-status: ");
    tp_blk_u64(b, tp_grpc_status(status));
    tp_blk_lit(b, "\r\ngrpc-message: ");
    tp_blk_grpc_message(b, reason);
    tp_blk_lit(b, "\r\nContent-Length: 0");
    error_head_end(b, id, id_len, extra, extra_len, close);
    TP_BUG_ON(b->len > b->size);
    return b;
}

/* ---- header lines ---- */

static void line_name(void *ctx, const char *p, size_t n)
{
    tp_blk_put(ctx, p, n);
    tp_blk_lit((struct tp_block *)ctx, ": ");
}

static void line_value(void *ctx, const char *p, size_t n)
{
    tp_blk_put(ctx, p, n);
}

static void line_end(void *ctx)
{
    tp_blk_lit((struct tp_block *)ctx, "\r\n");
}

const struct tp_hdr_sink tp_h1_line_sink = {line_name, line_value, line_end};
