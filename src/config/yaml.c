/* SPDX-License-Identifier: MIT */
/*
 * YAML text -> struct tp_ynode tree, from libfyaml's event parser.
 *
 * Why events and not fy_document: see config_int.h (positions of mappings and
 * sequences are not reachable through the 0.7 document API). The parser runs
 * with YAML 1.2 as the default version and its own diagnostics collected
 * (never printed): a syntax error becomes one positioned message.
 *
 * What the tree keeps: kind, 1-based start position, scalar text and style,
 * map pairs in file order with duplicates (config.c reports them), sequence
 * items. Aliases point at the anchored node (shared, not copied); "weight"
 * counts the nodes a full walk would visit, so an alias bomb ("billion
 * laughs") is refused before the schema walk could spend exponential time on
 * it. Merge keys ("<<") are YAML 1.1 only, so they stay ordinary keys.
 *
 * Called by config.c only. [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libfyaml.h>

#include "config/config_int.h"

/* A walk of more nodes than this is refused: a real configuration has a few
 * thousand, an alias bomb has billions. */
#define TP_YAML_MAX_WEIGHT (1u << 20)

struct yframe {
    struct tp_ynode *node;
    struct tp_ynode *key; /* map: key waiting for its value */
    void *v;              /* growing pairs or items (malloc'd until the end event) */
    size_t n, cap;
    char *anchor; /* anchor of this collection (malloc'd), registered when complete */
};

struct yanchor {
    char *name;
    struct tp_ynode *node;
};

struct ybuild {
    struct tp_cfg_arena *a;
    struct tp_cfg_errs *errs;
    struct yframe *st;
    size_t depth, st_cap;
    struct yanchor *anchors;
    size_t n_anchors, anchors_cap;
    struct tp_ynode *root;
    bool failed;
};

static void mark_pos(struct fy_event *fye, struct tp_ynode *n)
{
    const struct fy_mark *m = fy_event_start_mark(fye);

    /* An empty plain scalar (a key with no value) has no token and no mark:
     * add_node() lends it the position of its key or parent instead. */
    if (m && m->line >= 0 && m->column >= 0) {
        n->line = (uint32_t)m->line + 1;
        n->col = (uint32_t)m->column + 1;
    }
}

static char *token_text(struct fy_token *t, size_t *len)
{
    const char *s = t ? fy_token_get_text(t, len) : NULL;
    if (!s) {
        *len = 0;
        return NULL;
    }
    char *c = malloc(*len + 1);
    if (c) {
        memcpy(c, s, *len);
        c[*len] = '\0';
    }
    return c;
}

static bool grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap * 2 : 8;
    while (nc < need)
        nc *= 2;
    void *p = realloc(*v, nc * elem);
    if (!p)
        return false;
    *v = p;
    *cap = nc;
    return true;
}

static void oom(struct ybuild *b)
{
    b->errs->oom = true;
    b->failed = true;
}

static bool add_anchor(struct ybuild *b, char *name, struct tp_ynode *node)
{
    if (!name)
        return true;
    if (!grow((void **)&b->anchors, &b->anchors_cap, b->n_anchors + 1, sizeof(*b->anchors))) {
        free(name);
        oom(b);
        return false;
    }
    b->anchors[b->n_anchors++] = (struct yanchor){.name = name, .node = node};
    return true;
}

static struct tp_ynode *find_anchor(struct ybuild *b, const char *name)
{
    /* Newest first: a redefined anchor shadows the older one (YAML 1.2 7.1). */
    for (size_t i = b->n_anchors; i-- > 0;)
        if (strcmp(b->anchors[i].name, name) == 0)
            return b->anchors[i].node;
    return NULL;
}

/* Attaches a complete node to the open collection (or makes it the root). */
static void add_node(struct ybuild *b, struct tp_ynode *n)
{
    if (b->depth == 0) {
        b->root = n;
        return;
    }
    struct yframe *f = &b->st[b->depth - 1];
    uint64_t w = f->node->weight + n->weight;
    if (w > TP_YAML_MAX_WEIGHT) {
        tp_cfg_errs_add(b->errs, n->line ? n->line : f->node->line, n->line ? n->col : f->node->col,
                        "document too large: more than %u nodes once aliases are expanded",
                        TP_YAML_MAX_WEIGHT);
        b->failed = true;
        return;
    }
    f->node->weight = w;

    if (f->node->kind == TP_Y_SEQ) {
        if (!n->line) {
            n->line = f->node->line;
            n->col = f->node->col;
        }
        if (!grow(&f->v, &f->cap, f->n + 1, sizeof(struct tp_ynode *)))
            return oom(b);
        ((struct tp_ynode **)f->v)[f->n++] = n;
        return;
    }
    if (!f->key) {
        if (!n->line) { /* "": value -> point at the mapping */
            n->line = f->node->line;
            n->col = f->node->col;
        }
        f->key = n;
        return;
    }
    if (!n->line) { /* "key:" with nothing after it: point at the key */
        n->line = f->key->line;
        n->col = f->key->col;
    }
    if (!grow(&f->v, &f->cap, f->n + 1, sizeof(struct tp_ypair)))
        return oom(b);
    ((struct tp_ypair *)f->v)[f->n++] = (struct tp_ypair){.key = f->key, .val = n};
    f->key = NULL;
}

static struct tp_ynode *new_node(struct ybuild *b, enum tp_ynode_kind kind, struct fy_event *fye)
{
    struct tp_ynode *n = tp_cfg_arena_alloc(b->a, sizeof(*n));
    if (!n) {
        oom(b);
        return NULL;
    }
    n->kind = kind;
    n->weight = 1;
    mark_pos(fye, n);
    return n;
}

static bool is_null_text(const char *s, size_t len)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strlen(nulls[i]) == len && memcmp(nulls[i], s, len) == 0)
            return true;
    return false;
}

static void on_scalar(struct ybuild *b, struct fy_event *fye)
{
    struct tp_ynode *n = new_node(b, TP_Y_SCALAR, fye);
    size_t len = 0;
    const char *s;

    if (!n)
        return;
    s = fy_token_get_text(fye->scalar.value, &len);
    if (!s) {
        s = "";
        len = 0;
    }
    n->str = tp_cfg_arena_strndup(b->a, s, len);
    if (!n->str)
        return oom(b);
    n->len = len;
    enum fy_scalar_style style = fy_token_scalar_style(fye->scalar.value);
    n->plain = style == FYSS_PLAIN;
    /* libfyaml marks a quoted scalar at its first character inside the
     * quotes; the value as written starts at the quote. */
    if ((style == FYSS_SINGLE_QUOTED || style == FYSS_DOUBLE_QUOTED) && n->col > 1)
        n->col--;
    n->null = n->plain && is_null_text(n->str, len);
    if (fye->scalar.anchor) {
        size_t al;
        if (!add_anchor(b, token_text(fye->scalar.anchor, &al), n))
            return;
    }
    add_node(b, n);
}

static void on_alias(struct ybuild *b, struct fy_event *fye)
{
    size_t len;
    char *name = token_text(fye->alias.anchor, &len);
    const struct fy_mark *m = fy_event_start_mark(fye);
    /* The mark is at the anchor name; the alias as written starts at '*'. */
    uint32_t line = m ? (uint32_t)m->line + 1 : 1, col = m && m->column > 0 ? (uint32_t)m->column : 1;

    if (!name)
        return oom(b);
    struct tp_ynode *target = find_anchor(b, name);
    if (!target) {
        /* Also the case for an alias inside its own anchor's node: refusing
         * it keeps the tree acyclic. */
        tp_cfg_errs_add(b->errs, line, col, "unknown alias \"*%s\"", name);
        b->failed = true;
        free(name);
        return;
    }
    free(name);
    add_node(b, target);
}

static void on_start(struct ybuild *b, struct fy_event *fye, enum tp_ynode_kind kind)
{
    struct tp_ynode *n = new_node(b, kind, fye);
    struct fy_token *anchor = kind == TP_Y_MAP ? fye->mapping_start.anchor : fye->sequence_start.anchor;

    if (!n)
        return;
    if (!grow((void **)&b->st, &b->st_cap, b->depth + 1, sizeof(*b->st)))
        return oom(b);
    struct yframe *f = &b->st[b->depth++];
    memset(f, 0, sizeof(*f));
    f->node = n;
    if (anchor) {
        size_t al;
        f->anchor = token_text(anchor, &al);
        if (!f->anchor)
            return oom(b);
    }
}

static void on_end(struct ybuild *b)
{
    struct yframe *f = &b->st[b->depth - 1];
    struct tp_ynode *n = f->node;

    if (n->kind == TP_Y_MAP) {
        n->pairs = tp_cfg_arena_calloc(b->a, f->n ? f->n : 1, sizeof(struct tp_ypair));
        if (n->pairs && f->n)
            memcpy(n->pairs, f->v, f->n * sizeof(struct tp_ypair));
    } else {
        n->items = tp_cfg_arena_calloc(b->a, f->n ? f->n : 1, sizeof(struct tp_ynode *));
        if (n->items && f->n)
            memcpy(n->items, f->v, f->n * sizeof(struct tp_ynode *));
    }
    n->n = f->n;
    free(f->v);
    char *anchor = f->anchor;
    b->depth--;
    if (!n->pairs) /* same pointer as items */
        return oom(b);
    if (!add_anchor(b, anchor, n))
        return;
    add_node(b, n);
}

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

/*
 * YAML text must be UTF-8 made of printable characters (YAML 1.2
 * "c-printable": tab, line breaks and everything visible; no other control
 * characters). libfyaml 0.7.12 loops forever on a directive line holding
 * bytes that are not UTF-8, and corrupts its heap on some inputs holding a NUL
 * byte, which would hang or crash `turnpike -t` and a reload; checking the
 * text first also gives a positioned message for a file saved in Latin-1.
 */
static bool utf8_valid(const char *buf, size_t len, struct tp_cfg_errs *errs)
{
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t line = 1, col = 1;

    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        bool ok = n != 0 && i + n <= len && !(n == 2 && c < 0xc2) && !(n == 4 && c > 0xf4);
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[i + k] & 0xc0) == 0x80;
        /* overlong 3-byte forms, UTF-16 surrogates, and code points above U+10FFFF */
        if (ok && n == 3 && ((c == 0xe0 && p[i + 1] < 0xa0) || (c == 0xed && p[i + 1] >= 0xa0)))
            ok = false;
        if (ok && n == 4 && ((c == 0xf0 && p[i + 1] < 0x90) || (c == 0xf4 && p[i + 1] >= 0x90)))
            ok = false;
        if (!ok) {
            tp_cfg_errs_add(errs, line, col, "invalid UTF-8 (byte 0x%02x): the file must be UTF-8", c);
            return false;
        }
        uint32_t cp = n == 1 ? c : n == 2 ? (uint32_t)(c & 0x1f) << 6 | (p[i + 1] & 0x3f) : 0;
        bool control = (n == 1 && ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0x7f)) ||
                       (n == 2 && cp >= 0x80 && cp <= 0x9f && cp != 0x85);
        if (control) {
            tp_cfg_errs_add(errs, line, col, "control character U+%04X is not allowed in YAML", cp);
            return false;
        }
        if (c == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
        i += n;
    }
    return true;
}

/*
 * libfyaml 0.7.12 corrupts its heap on some malformed inputs (found by
 * tests/fuzz/fuzz_config: an explicit "?" key followed by a tab and another
 * "?"), which would crash or hang the process on `turnpike -t`, at startup,
 * or - worst - on a reload of a running gateway. So the text is first run
 * through the parser in a child process, with a deadline; only when that
 * child comes back clean does the parse happen here.
 *
 * Forking the gateway itself for that is costly: page tables of every
 * worker's buffers and slabs copied, then copy-on-write faults in the
 * workers while the child lives. So the turnpike binary, once it called
 * tp_config_guard_use_helper(), starts a helper process (the same binary run
 * as `turnpike --yaml-guard-helper`, posix_spawn) and keeps it: each check
 * sends the text over a socket pair and the helper parses it and answers.
 * A text the parser refuses (where the corruption comes from) is the
 * helper's last: it answers and exits, and the next check starts a new one,
 * so a valid file is never parsed on a heap a malformed one went through.
 * The helper dying on a text is the "failed" verdict; not answering within
 * 5 s, "did not finish" (it is killed). A helper that had served before and
 * is found dead (killed from outside) is replaced and the text asked again.
 * Without the helper (programs other than turnpike linking the config
 * module, or no helper could be started, or one that never said hello:
 * /proc/self/exe is not turnpike under valgrind) the check forks the
 * caller, as before.
 */
#define GUARD_TIMEOUT_MS 5000
#define GUARD_FD         3

enum { GUARD_OK = 0, GUARD_CRASHED = 1, GUARD_HUNG = 2, GUARD_UNKNOWN = 3, GUARD_RETRY = 4 };
#define GUARD_LAST     0x80 /* in the helper's answer: it exits after this one */
#define GUARD_HELLO    'R'  /* the helper's first byte: it runs */
#define GUARD_HELLO_MS 5000

static int guard_parse(const char *buf, size_t len)
{
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag;
    struct fy_parser *fyp;
    struct fy_event *fye;

    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = discard_output;
    diag = fy_diag_create(&dcfg);
    if (!diag)
        return 0; /* out of memory in the child says nothing about the file */
    struct fy_parse_cfg pcfg = {.flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2, .diag = diag};
    fyp = fy_parser_create(&pcfg);
    if (!fyp || fy_parser_set_string(fyp, buf, len) != 0)
        return 0;
    while ((fye = fy_parser_parse(fyp)) != NULL)
        fy_parser_event_free(fyp, fye);
    int bad = fy_parser_get_stream_error(fyp) ? 1 : 0;
    fy_parser_destroy(fyp);
    fy_diag_destroy(diag);
    return bad;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs guard_parse in a forked child of the caller; GUARD_*. */
static int guard_fork(const char *buf, size_t len)
{
    pid_t pid = fork();
    int status = 0;

    if (pid == -1)
        return GUARD_UNKNOWN;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            dup2(fd, STDOUT_FILENO);
        }
        guard_parse(buf, len); /* a syntax error is for the real parse to report */
        _exit(0);
    }
    /* Wait on a pidfd (no polling); without one, poll waitpid with naps. */
    int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
    uint64_t deadline = mono_ms() + GUARD_TIMEOUT_MS;
    for (unsigned nap_us = 50;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r == -1 && errno != EINTR) {
            if (pfd >= 0)
                close(pfd);
            return GUARD_UNKNOWN;
        }
        uint64_t now = mono_ms();
        if (now >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            if (pfd >= 0)
                close(pfd);
            return GUARD_HUNG;
        }
        if (pfd >= 0) {
            struct pollfd p = {.fd = pfd, .events = POLLIN};
            poll(&p, 1, (int)(deadline - now));
            continue;
        }
        struct timespec ts = {0, (long)nap_us * 1000};
        nanosleep(&ts, NULL);
        if (nap_us < 2000)
            nap_us *= 2;
    }
    if (pfd >= 0)
        close(pfd);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? GUARD_OK : GUARD_CRASHED;
}

static bool read_full(int fd, void *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = read(fd, (char *)p + off, n - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        off += (size_t)r;
    }
    return true;
}

static bool write_full(int fd, const void *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = send(fd, (const char *)p + off, n - off, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        off += (size_t)r;
    }
    return true;
}

int tp_config_guard_helper_main(void)
{
    /* Nothing but the socket to the gateway is ours: drop whatever else was
     * inherited (posix_spawn keeps descriptors without close-on-exec). */
    close_range(GUARD_FD + 1, ~0u, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        return 0;
    /* ready: a helper that cannot run (wrong binary behind the path, e.g.
     * under valgrind) never says so, and the gateway forks instead */
    unsigned char hello = GUARD_HELLO;
    if (!write_full(GUARD_FD, &hello, 1))
        return 0;
    for (;;) {
        uint64_t len;
        if (!read_full(GUARD_FD, &len, sizeof(len)))
            return 0; /* the gateway closed its end or exited */
        if (len > TP_CONFIG_GUARD_MAX)
            return 1;
        char *buf = malloc(len ? len : 1);
        if (!buf || !read_full(GUARD_FD, buf, len))
            return 1;
        /* Follow the CPUs the gateway's control thread may use (it keeps off
         * the workers' CPUs when it can). */
        cpu_set_t set;
        if (sched_getaffinity(getppid(), sizeof(set), &set) == 0)
            sched_setaffinity(0, sizeof(set), &set);
        int bad = guard_parse(buf, len);
        free(buf);
        /* The heap corruption comes with malformed input: after a text the
         * parser refused, this heap is not trusted with the next one. */
        unsigned char verdict = bad ? GUARD_OK | GUARD_LAST : GUARD_OK;
        if (!write_full(GUARD_FD, &verdict, 1) || bad)
            return 0;
    }
}

static struct {
    const char *exe; /* NULL: no helper, fork the caller */
    pid_t pid;       /* running helper, or -1 */
    int fd;          /* our end of the socket pair */
} guard = {NULL, -1, -1};

void tp_config_guard_use_helper(const char *exe)
{
    guard.exe = exe;
}

static void guard_stop(void)
{
    if (guard.fd >= 0)
        close(guard.fd);
    guard.fd = -1;
    if (guard.pid > 0) {
        kill(guard.pid, SIGKILL);
        while (waitpid(guard.pid, NULL, 0) == -1 && errno == EINTR) {
        }
    }
    guard.pid = -1;
}

static bool guard_start(void)
{
    int sv[2];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    char *argv[] = {(char *)"turnpike", (char *)TP_CONFIG_GUARD_ARG, NULL};
    /* every symbol bound at exec, not again in each forked child (lazy binding) */
    char *envp[] = {(char *)"LD_BIND_NOW=1", NULL};
    bool ok = false;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return false;
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGHUP);
    sigaddset(&dfl, SIGINT);
    sigaddset(&dfl, SIGTERM);
    sigaddset(&dfl, SIGUSR1);
    sigaddset(&dfl, SIGPIPE);
    if (posix_spawn_file_actions_init(&fa) != 0) {
        close(sv[0]);
        close(sv[1]);
        return false;
    }
    if (posix_spawnattr_init(&attr) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        close(sv[0]);
        close(sv[1]);
        return false;
    }
    /* dup2 onto GUARD_FD clears close-on-exec on the copy */
    if (posix_spawn_file_actions_adddup2(&fa, sv[1], GUARD_FD) == 0 &&
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0) == 0 &&
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0) == 0 &&
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0) == 0 &&
        posix_spawnattr_setsigmask(&attr, &none) == 0 && posix_spawnattr_setsigdefault(&attr, &dfl) == 0 &&
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) == 0 &&
        posix_spawn(&guard.pid, guard.exe, &fa, &attr, argv, envp) == 0)
        ok = true;
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (!ok) {
        guard.pid = -1;
        close(sv[0]);
        return false;
    }
    guard.fd = sv[0];
    /* wait (bounded) for its hello */
    struct pollfd pfd = {.fd = guard.fd, .events = POLLIN};
    unsigned char hello = 0;
    int r;
    do
        r = poll(&pfd, 1, GUARD_HELLO_MS);
    while (r < 0 && errno == EINTR);
    if (r != 1 || !read_full(guard.fd, &hello, 1) || hello != GUARD_HELLO) {
        guard_stop();
        guard.exe = NULL; /* it will not work better next time: fork from now on */
        return false;
    }
    return true;
}

/*
 * Asks the helper about <buf>: GUARD_OK, GUARD_HUNG (killed at the deadline),
 * GUARD_CRASHED (a helper started for this text died on it), GUARD_RETRY (a
 * helper that had served before was gone: killed from outside?), or -1 when
 * no helper can be started.
 */
static int guard_ask(const char *buf, size_t len)
{
    uint64_t n = len;
    unsigned char verdict;
    bool fresh = guard.pid < 0;

    if (fresh && !guard_start())
        return -1;
    if (!write_full(guard.fd, &n, sizeof(n)) || !write_full(guard.fd, buf, len)) {
        guard_stop();
        return fresh ? GUARD_CRASHED : GUARD_RETRY;
    }
    uint64_t deadline = mono_ms() + GUARD_TIMEOUT_MS;
    for (;;) {
        uint64_t now = mono_ms();
        struct pollfd pfd = {.fd = guard.fd, .events = POLLIN};
        int r = now >= deadline ? 0 : poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            guard_stop(); /* killed: a new one next time */
            return GUARD_HUNG;
        }
        break;
    }
    if (!read_full(guard.fd, &verdict, 1) || (verdict & ~GUARD_LAST) != GUARD_OK) {
        guard_stop();
        return fresh ? GUARD_CRASHED : GUARD_RETRY;
    }
    if (verdict & GUARD_LAST)
        guard_stop(); /* it is exiting: reap it now, start a new one next time */
    return GUARD_OK;
}

/* 0 when the parser survives <buf>; -1 (with a message in <errs>) when it crashed or hung. */
static int parser_survives(const char *buf, size_t len, struct tp_cfg_errs *errs)
{
    int v = -1;

    if (guard.exe && len <= TP_CONFIG_GUARD_MAX) {
        v = guard_ask(buf, len);
        if (v == GUARD_RETRY) /* one more try, with a new helper */
            v = guard_ask(buf, len);
        if (v == GUARD_RETRY)
            v = -1;
    }
    if (v < 0)
        v = guard_fork(buf, len);
    switch (v) {
    case GUARD_HUNG:
        tp_cfg_errs_add(errs, 1, 1,
                        "the YAML parser did not finish on this file; simplify its syntax "
                        "(explicit \"?\" keys and tabs are the usual trigger)");
        return -1;
    case GUARD_CRASHED:
        tp_cfg_errs_add(errs, 1, 1,
                        "the YAML parser failed on this file; simplify its syntax (explicit \"?\" keys "
                        "and tabs are the usual trigger)");
        return -1;
    default: /* GUARD_OK, or GUARD_UNKNOWN (cannot check: parse in-process as before) */
        return 0;
    }
}

struct tp_ynode *tp_cfg_yaml_parse(const char *buf, size_t len, struct tp_cfg_arena *a,
                                   struct tp_cfg_errs *errs, bool *empty)
{
    struct ybuild b = {.a = a, .errs = errs};
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag;
    struct fy_parser *fyp = NULL;
    struct fy_event *fye;
    int docs = 0;

    *empty = false;
    if (!utf8_valid(buf, len, errs) || parser_survives(buf, len, errs) < 0)
        return NULL;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL; /* libfyaml must never print: our caller owns stderr */
    dcfg.output_fn = discard_output;
    dcfg.colorize = false;
    diag = fy_diag_create(&dcfg);
    if (!diag) {
        errs->oom = true;
        return NULL;
    }
    fy_diag_set_collect_errors(diag, true);

    struct fy_parse_cfg pcfg = {
        .flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2,
        .diag = diag,
    };
    fyp = fy_parser_create(&pcfg);
    if (!fyp || fy_parser_set_string(fyp, buf, len) != 0) {
        errs->oom = true;
        goto out;
    }

    while (!b.failed && (fye = fy_parser_parse(fyp)) != NULL) {
        switch (fye->type) {
        case FYET_DOCUMENT_START:
            if (++docs > 1) {
                const struct fy_mark *m = fy_event_start_mark(fye);
                tp_cfg_errs_add(errs, m ? (uint32_t)m->line + 1 : 1, m ? (uint32_t)m->column + 1 : 1,
                                "only one YAML document is allowed");
                b.failed = true;
            }
            break;
        case FYET_MAPPING_START:
            on_start(&b, fye, TP_Y_MAP);
            break;
        case FYET_SEQUENCE_START:
            on_start(&b, fye, TP_Y_SEQ);
            break;
        case FYET_MAPPING_END:
        case FYET_SEQUENCE_END:
            if (b.depth)
                on_end(&b);
            break;
        case FYET_SCALAR:
            on_scalar(&b, fye);
            break;
        case FYET_ALIAS:
            on_alias(&b, fye);
            break;
        default: /* stream and document ends, stream start */
            break;
        }
        fy_parser_event_free(fyp, fye);
    }

    if (fy_parser_get_stream_error(fyp)) {
        /* The positions of collected diagnostics are already 1-based. */
        void *it = NULL;
        struct fy_diag_error *de;
        size_t before = errs->n;
        while ((de = fy_diag_errors_iterate(diag, &it)) != NULL) {
            if (de->type < FYET_ERROR)
                continue;
            tp_cfg_errs_add(errs, de->line > 0 ? (uint32_t)de->line : 1,
                            de->column > 0 ? (uint32_t)de->column : 1, "%s",
                            de->msg ? de->msg : "invalid YAML");
        }
        if (errs->n == before)
            tp_cfg_errs_add(errs, 1, 1, "invalid YAML");
        b.failed = true;
    }
    if (!b.failed && docs == 0)
        *empty = true;

out:
    while (b.depth) {
        free(b.st[b.depth - 1].v);
        free(b.st[b.depth - 1].anchor);
        b.depth--;
    }
    free(b.st);
    for (size_t i = 0; i < b.n_anchors; i++)
        free(b.anchors[i].name);
    free(b.anchors);
    if (fyp)
        fy_parser_destroy(fyp);
    fy_diag_destroy(diag);
    return b.failed ? NULL : b.root;
}
