/* SPDX-License-Identifier: MIT */
/*
 * The access log (see accesslog.h).
 *
 * Per shard: two 64 KiB buffers. Lines are formatted into the filling
 * buffer; once per loop iteration, when no write is in flight, the filling
 * buffer becomes the writing one and goes out as a single IORING_OP_WRITE.
 * A line that finds both buffers busy and full is dropped and counted.
 * Writes to a regular file opened with O_APPEND land whole; writes to a pipe
 * (path "-" under systemd or a shell pipeline) are cut at line boundaries
 * to PIPE_BUF so no two shards' lines can interleave.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <turnpike/log.h>

#include "http/accesslog.h"
#include "http/h1.h"
#include "rt/control.h"
#include "rt/reactor.h"
#include "rt/runtime.h"

#define ALOG_BUF  (64u * 1024u)
#define ALOG_LINE 8192u /* longest line; longer fields are cut */
#define FIELD_MAX 2048u /* [bytes] longest captured field */

struct alog_shard {
    int fd;
    uint64_t gen;
    char *buf[2];
    uint32_t len[2];
    uint32_t lines[2];
    int cur;         /* buffer being filled */
    bool writing;    /* buf[1 - cur] is being written */
    uint32_t woff;   /* bytes of the writing buffer already written */
    uint32_t wchunk; /* bytes in the write in flight */
    tp_stat_t dropped;
    time_t sec; /* second of the cached time prefix */
    char tsec[32];
    size_t tsec_len;
};

static int ext_idx = -1; /* the shard's struct alog_shard in sh->ext */
static int op_write = -1;

static inline struct alog_shard *alog_of(struct tp_shard *sh)
{
    return sh->ext[ext_idx];
}

static struct {
    pthread_mutex_t lock;
    int fd; /* control's descriptor; shards dup it */
    char *path;
    _Atomic uint64_t gen; /* bumped on every open */
    _Atomic int enabled;
    _Atomic int format;
    _Atomic int pipe; /* not a regular file: PIPE_BUF writes */
} alog = {.lock = PTHREAD_MUTEX_INITIALIZER, .fd = -1};

/* ------------------------------------------------------------------ */
/* control side                                                        */
/* ------------------------------------------------------------------ */

static int open_path(const char *path, int *is_pipe)
{
    struct stat st;
    int fd;

    if (strcmp(path, "-") == 0)
        fd = dup(STDOUT_FILENO);
    else
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd == -1)
        return -errno;
    *is_pipe = fstat(fd, &st) == 0 && !S_ISREG(st.st_mode);
    return fd;
}

static void accesslog_close(void);

static int accesslog_configure(const struct tp_config *cfg)
{
    int is_pipe = 0, fd;

    if (!cfg->access_log_path) {
        accesslog_close(); /* the shards drop their descriptors at the next sync */
        return 0;
    }
    atomic_store(&alog.format, cfg->access_log_format);
    if (alog.path && strcmp(alog.path, cfg->access_log_path) == 0 && alog.fd >= 0)
        return 0;
    fd = open_path(cfg->access_log_path, &is_pipe);
    if (fd < 0) {
        tp_err("%s: access_log.path: cannot open %s: %s", cfg->source, cfg->access_log_path, strerror(-fd));
        return fd;
    }
    pthread_mutex_lock(&alog.lock);
    if (alog.fd >= 0)
        close(alog.fd);
    alog.fd = fd;
    free(alog.path);
    alog.path = strdup(cfg->access_log_path);
    atomic_store(&alog.pipe, is_pipe);
    atomic_store(&alog.enabled, 1);
    atomic_fetch_add(&alog.gen, 1);
    pthread_mutex_unlock(&alog.lock);
    return 0;
}

static void accesslog_reopen(void)
{
    int is_pipe = 0, fd;

    if (!alog.path)
        return;
    fd = open_path(alog.path, &is_pipe);
    if (fd < 0) {
        tp_err("access log: cannot reopen %s: %s (still writing to the old file)", alog.path, strerror(-fd));
        return;
    }
    pthread_mutex_lock(&alog.lock);
    if (alog.fd >= 0)
        close(alog.fd);
    alog.fd = fd;
    atomic_store(&alog.pipe, is_pipe);
    atomic_fetch_add(&alog.gen, 1);
    pthread_mutex_unlock(&alog.lock);
    tp_info("access log reopened: %s", alog.path);
}

static int accesslog_prepare(const struct tp_config *cfg)
{
    return accesslog_configure(cfg);
}

static void accesslog_reconfigure(const struct tp_config *cfg)
{
    accesslog_configure(cfg); /* a file that cannot be opened is logged; the old one stays */
}

static void accesslog_close(void)
{
    pthread_mutex_lock(&alog.lock);
    atomic_store(&alog.enabled, 0);
    if (alog.fd >= 0)
        close(alog.fd);
    alog.fd = -1;
    free(alog.path);
    alog.path = NULL;
    atomic_fetch_add(&alog.gen, 1);
    pthread_mutex_unlock(&alog.lock);
}

uint64_t tp_accesslog_dropped(void)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < tp_rt.n_shards && tp_rt.shards; i++) {
        struct tp_shard *sh = tp_rt.shards[i];
        if (sh && sh->ext[ext_idx])
            n += tp_stat_get(&alog_of(sh)->dropped);
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* shard side                                                          */
/* ------------------------------------------------------------------ */

static int alog_shard_create(struct tp_shard *sh, unsigned idx)
{
    struct alog_shard *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->fd = -1;
    sh->ext[idx] = a;
    return 0;
}

static void alog_shard_destroy(struct tp_shard *sh)
{
    free(sh->ext[ext_idx]);
    sh->ext[ext_idx] = NULL;
}

/* A draining shard stops only once its last write completed. */
static bool alog_shard_busy(struct tp_shard *sh)
{
    struct alog_shard *a = alog_of(sh);
    return a && a->writing;
}

/* Takes the current descriptor (start, SIGUSR1, reload). */
static void alog_shard_sync(struct tp_shard *sh)
{
    struct alog_shard *a = alog_of(sh);
    uint64_t gen = atomic_load(&alog.gen);

    if (!a || gen == a->gen)
        return;
    /* A write in flight holds its own reference to the old file: closing
     * our descriptor now is safe. */
    pthread_mutex_lock(&alog.lock);
    if (a->fd >= 0)
        close(a->fd);
    a->fd = alog.fd >= 0 ? fcntl(alog.fd, F_DUPFD_CLOEXEC, 0) : -1;
    a->gen = atomic_load(&alog.gen);
    pthread_mutex_unlock(&alog.lock);
    if (a->fd >= 0 && !a->buf[0]) {
        a->buf[0] = malloc(ALOG_BUF);
        a->buf[1] = malloc(ALOG_BUF);
        if (!a->buf[0] || !a->buf[1]) {
            free(a->buf[0]);
            free(a->buf[1]);
            a->buf[0] = a->buf[1] = NULL;
        }
    }
}

/* Thread exit: the last lines, and the buffers. */
static void alog_shard_stop(struct tp_shard *sh)
{
    struct alog_shard *a = alog_of(sh);
    if (!a)
        return;
    if (a->fd >= 0) {
        /* last lines, written synchronously: the loop is gone (and waited
         * for its last write, see tp_accesslog_busy) */
        if (a->len[a->cur] && write(a->fd, a->buf[a->cur], a->len[a->cur]) < 0)
            tp_stat_add(&a->dropped, a->lines[a->cur]);
        close(a->fd);
    }
    free(a->buf[0]);
    free(a->buf[1]);
    a->buf[0] = a->buf[1] = NULL;
    a->fd = -1;
}

bool tp_accesslog_enabled(bool *combined)
{
    if (!atomic_load_explicit(&alog.enabled, memory_order_relaxed))
        return false;
    *combined = atomic_load_explicit(&alog.format, memory_order_relaxed) == TP_ACCESS_COMBINED;
    return true;
}

/* ---- formatting ---- */

struct line {
    char *p;
    size_t len, cap;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (l->len + n > l->cap)
        n = l->cap > l->len ? l->cap - l->len : 0;
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

#define PUTS(l, lit) put((l), (lit), sizeof(lit) - 1)

static void put_u64(struct line *l, uint64_t v)
{
    char tmp[24];
    char *p = tp_fmt_u64(tmp + sizeof(tmp), v);
    put(l, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* [ns] as milliseconds with three decimals */
static void put_ms(struct line *l, uint64_t ns)
{
    uint64_t us = ns / 1000;
    char frac[4] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10), (char)('0' + us % 10)};
    put_u64(l, us / 1000);
    put(l, frac, 4);
}

/* JSON string body: quotes, backslashes, control and non-ASCII bytes escaped
 * (bytes >= 0x80 as \u00XX keep the line valid UTF-8 whatever came in); runs
 * of plain bytes are copied at once */
static void put_json(struct line *l, const char *s, size_t n)
{
    static const char hx[] = "0123456789abcdef";
    size_t run = 0;

    PUTS(l, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
            continue;
        put(l, s + run, i - run);
        run = i + 1;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            put(l, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hx[ch >> 4], hx[ch & 15]};
            put(l, e, 6);
        }
    }
    put(l, s + run, n - run);
    PUTS(l, "\"");
}

/* combined format: quotes and unprintable bytes as \xHH (as nginx does) */
static void put_clf(struct line *l, const char *s, size_t n)
{
    static const char hx[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
            char e[4] = {'\\', 'x', hx[ch >> 4], hx[ch & 15]};
            put(l, e, 4);
        } else {
            put(l, (const char *)&ch, 1);
        }
    }
}

/* a string field: JSON string, or null */
static void put_json_or_null(struct line *l, const char *s, size_t n)
{
    if (s)
        put_json(l, s, n);
    else
        PUTS(l, "null");
}

static void format_json(struct line *l, struct alog_shard *a, const struct tp_access_record *r,
                        struct timespec *ts)
{
    struct tm tm;

    if (ts->tv_sec != a->sec) {
        gmtime_r(&ts->tv_sec, &tm);
        a->tsec_len = strftime(a->tsec, sizeof(a->tsec), "%Y-%m-%dT%H:%M:%S", &tm);
        a->sec = ts->tv_sec;
    }
    long ms = ts->tv_nsec / 1000000;
    char frac[6] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z', '"'};
    PUTS(l, "{\"time\":\"");
    put(l, a->tsec, a->tsec_len);
    put(l, frac, 6);
    PUTS(l, ",\"request_id\":");
    put_json(l, r->id, r->id_len);
    PUTS(l, ",\"trace_id\":");
    put_json(l, r->trace_id, 32);
    PUTS(l, ",\"client\":");
    put_json(l, r->client, r->client_len);
    PUTS(l, ",\"method\":");
    put_json_or_null(l, r->method, r->method_len);
    PUTS(l, ",\"host\":");
    put_json_or_null(l, r->host_len ? r->host : NULL, r->host_len);
    PUTS(l, ",\"path\":");
    put_json_or_null(l, r->path, r->path_len);
    PUTS(l, ",\"protocol\":");
    if (!r->method)
        PUTS(l, "null");
    else if (r->h2)
        PUTS(l, "\"HTTP/2\"");
    else if (r->http_minor)
        PUTS(l, "\"HTTP/1.1\"");
    else
        PUTS(l, "\"HTTP/1.0\"");
    PUTS(l, ",\"status\":");
    put_u64(l, r->status);
    PUTS(l, ",\"bytes_in\":");
    put_u64(l, r->bytes_in);
    PUTS(l, ",\"bytes_out\":");
    put_u64(l, r->bytes_out);
    PUTS(l, ",\"duration_ms\":");
    put_ms(l, r->duration_ns);
    PUTS(l, ",\"route\":");
    put_json_or_null(l, r->route, r->route ? strlen(r->route) : 0);
    PUTS(l, ",\"upstream\":");
    put_json_or_null(l, r->upstream, r->upstream ? strlen(r->upstream) : 0);
    PUTS(l, ",\"endpoint\":");
    put_json_or_null(l, r->endpoint, r->endpoint ? strlen(r->endpoint) : 0);
    PUTS(l, ",\"upstream_ms\":");
    if (r->has_upstream_ns)
        put_ms(l, r->upstream_ns);
    else
        PUTS(l, "null");
    PUTS(l, ",\"subject\":");
    put_json_or_null(l, r->subject, r->subject_len);
    if (r->grpc_status >= 0) {
        /* gRPC calls whose response had a grpc-status: the code, null for a value outside 0..16 */
        PUTS(l, ",\"grpc_status\":");
        if (r->grpc_status <= 16)
            put_u64(l, (uint64_t)r->grpc_status);
        else
            PUTS(l, "null");
    }
    if (r->error) {
        /* the same text as the answer's JSON body: reason, then the cause when there is one */
        PUTS(l, ",\"error\":");
        if (r->cause) {
            char e[256];
            int n = snprintf(e, sizeof(e), "%s: %s", r->error, r->cause);
            put_json(l, e, n > 0 && (size_t)n < sizeof(e) ? (size_t)n : strlen(r->error));
        } else {
            put_json(l, r->error, strlen(r->error));
        }
    }
    PUTS(l, "}\n");
}

static void format_combined(struct line *l, const struct tp_access_record *r, struct timespec *ts)
{
    struct tm tm;
    char tbuf[64];

    gmtime_r(&ts->tv_sec, &tm);
    size_t n = strftime(tbuf, sizeof(tbuf), "[%d/%b/%Y:%H:%M:%S +0000]", &tm);
    put(l, r->client, r->client_len);
    PUTS(l, " - ");
    /* the authenticated subject is the combined format's remote user */
    if (r->subject_len)
        put_clf(l, r->subject, r->subject_len);
    else
        PUTS(l, "-");
    PUTS(l, " ");
    put(l, tbuf, n);
    PUTS(l, " \"");
    if (r->method) {
        put_clf(l, r->method, r->method_len);
        PUTS(l, " ");
        put_clf(l, r->target, r->target_len);
        if (r->h2)
            PUTS(l, " HTTP/2.0"); /* the request line's form; the json format says "HTTP/2" */
        else if (r->http_minor)
            PUTS(l, " HTTP/1.1");
        else
            PUTS(l, " HTTP/1.0");
    } else {
        PUTS(l, "-");
    }
    PUTS(l, "\" ");
    put_u64(l, r->status);
    PUTS(l, " ");
    if (r->body_out)
        put_u64(l, r->body_out);
    else
        PUTS(l, "-");
    PUTS(l, " \"");
    if (r->referer_len)
        put_clf(l, r->referer, r->referer_len);
    else
        PUTS(l, "-");
    PUTS(l, "\" \"");
    if (r->user_agent_len)
        put_clf(l, r->user_agent, r->user_agent_len);
    else
        PUTS(l, "-");
    PUTS(l, "\"\n");
}

static void alog_flush(struct tp_shard *sh);

void tp_accesslog_write(struct tp_shard *sh, const struct tp_access_record *r)
{
    struct alog_shard *a = alog_of(sh);
    struct timespec ts;

    if (!a || a->fd < 0 || !a->buf[0] || !atomic_load_explicit(&alog.enabled, memory_order_relaxed))
        return;
    if (ALOG_BUF - a->len[a->cur] < ALOG_LINE) {
        /* no room for a line of the longest size: hand the buffer to the
         * kernel, or drop the line when both buffers are busy */
        if (a->writing) {
            tp_stat_add(&a->dropped, 1);
            return;
        }
        alog_flush(sh);
    }
    /* the line is formatted in place, at the end of the filling buffer */
    struct line l = {.p = a->buf[a->cur] + a->len[a->cur], .len = 0, .cap = ALOG_LINE - 1};
    clock_gettime(CLOCK_REALTIME, &ts);
    if (atomic_load_explicit(&alog.format, memory_order_relaxed) == TP_ACCESS_COMBINED)
        format_combined(&l, r, &ts);
    else
        format_json(&l, a, r, &ts);
    if (l.len == l.cap)
        l.p[l.len - 1] = '\n'; /* cut: still one line */
    a->len[a->cur] += (uint32_t)l.len;
    a->lines[a->cur]++;
}

static void submit_chunk(struct tp_shard *sh, struct alog_shard *a)
{
    int w = 1 - a->cur;
    uint32_t left = a->len[w] - a->woff, n = left;

    if (atomic_load_explicit(&alog.pipe, memory_order_relaxed) && n > PIPE_BUF) {
        /* a pipe: at most PIPE_BUF bytes, ending at a line end */
        n = PIPE_BUF;
        while (n && a->buf[w][a->woff + n - 1] != '\n')
            n--;
        if (!n)
            n = PIPE_BUF; /* one line longer than PIPE_BUF cannot be kept whole */
    }
    struct io_uring_sqe *sqe = tp_sqe(sh);
    io_uring_prep_write(sqe, a->fd, a->buf[w] + a->woff, n, (uint64_t)-1);
    io_uring_sqe_set_data64(sqe, tp_ud((unsigned)op_write, 0, 0));
    a->wchunk = n;
    a->writing = true;
}

/* Once per loop iteration: the filling buffer goes out unless a write is in flight. */
static void alog_flush(struct tp_shard *sh)
{
    struct alog_shard *a = alog_of(sh);

    if (!a || a->writing || a->len[a->cur] == 0 || a->fd < 0)
        return;
    a->cur = 1 - a->cur;
    a->woff = 0;
    submit_chunk(sh, a);
}

static void alog_on_write(struct tp_shard *sh, struct io_uring_cqe *cqe)
{
    struct alog_shard *a = alog_of(sh);
    int res = cqe->res;
    int w;

    if (!a)
        return;
    w = 1 - a->cur;
    a->writing = false;
    if (res < 0 || (uint32_t)res < a->wchunk) {
        /* full disk, closed pipe: what is left of this buffer is dropped and counted */
        uint32_t from = a->woff + (res > 0 ? (uint32_t)res : 0), lost = 0;
        for (uint32_t i = from; i < a->len[w]; i++)
            lost += a->buf[w][i] == '\n';
        tp_stat_add(&a->dropped, lost);
        TP_LOG_RL(TP_LOG_WARN, "access log write: %s; %u lines dropped",
                  res < 0 ? strerror(-res) : "short write", lost);
        a->len[w] = a->lines[w] = 0;
        a->woff = 0;
        return;
    }
    a->woff += (uint32_t)res;
    if (a->woff < a->len[w]) {
        submit_chunk(sh, a);
        return;
    }
    a->len[w] = a->lines[w] = 0;
    a->woff = 0;
}

static void alog_shard_msgs(struct tp_shard *sh, unsigned msgs)
{
    if (msgs & (TP_MSG_RELOAD | TP_MSG_LOGREOPEN))
        alog_shard_sync(sh);
}

static const struct tp_shard_hooks alog_hooks = {
    .create = alog_shard_create,
    .start = alog_shard_sync,
    .on_msgs = alog_shard_msgs,
    .tick = alog_flush,
    .busy = alog_shard_busy,
    .stop = alog_shard_stop,
    .destroy = alog_shard_destroy,
};

static const struct tp_ctl_service alog_service = {
    .name = "access log",
    .prepare = accesslog_prepare,
    .configure = accesslog_reconfigure,
    .reopen = accesslog_reopen,
    .stop = accesslog_close,
};

int tp_accesslog_register(void)
{
    if (ext_idx >= 0)
        return 0;
    ext_idx = tp_shard_hooks_register(&alog_hooks);
    op_write = tp_reactor_op_register(alog_on_write);
    if (ext_idx < 0 || op_write < 0 || tp_ctl_service_register(&alog_service) < 0)
        return -1;
    return 0;
}
