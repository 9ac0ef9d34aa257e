/* SPDX-License-Identifier: MIT */
/*
 * The libfyaml guard (yaml_guard.h): a kept helper process, or a child of the
 * caller, parses the text first. [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libfyaml.h>

#include "core/yaml_guard.h"

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    (void)user;
    (void)buf;
    (void)len;
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
 * tp_yaml_guard_use_helper(), starts a helper process (the same binary run
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

/* The event parser (the configuration loader's way) and the document builder
 * (the API-key loader's way) over the text. Returns 1 when the parser refused
 * it (a syntax error: the real parse reports it), 0 otherwise; out of memory
 * here says nothing about the text, so it counts as surviving. */
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
        return 0;
    struct fy_parse_cfg pcfg = {.flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2, .diag = diag};
    fyp = fy_parser_create(&pcfg);
    if (!fyp || fy_parser_set_string(fyp, buf, len) != 0)
        return 0;
    while ((fye = fy_parser_parse(fyp)) != NULL)
        fy_parser_event_free(fyp, fye);
    int bad = fy_parser_get_stream_error(fyp) ? 1 : 0;
    fy_parser_destroy(fyp);
    if (!bad) {
        struct fy_document *fyd = fy_document_build_from_string(&pcfg, buf, len);
        if (fyd)
            fy_document_destroy(fyd);
    }
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

int tp_yaml_guard_helper_main(void)
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
        if (len > TP_YAML_GUARD_MAX)
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

void tp_yaml_guard_use_helper(const char *exe)
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
    char *argv[] = {(char *)"turnpike", (char *)TP_YAML_GUARD_ARG, NULL};
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

enum tp_yaml_guard_rc tp_yaml_guard(const char *buf, size_t len)
{
    int v = -1;

    if (guard.exe && len <= TP_YAML_GUARD_MAX) {
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
        return TP_YAML_HUNG;
    case GUARD_CRASHED:
        return TP_YAML_CRASHED;
    default: /* GUARD_OK, or GUARD_UNKNOWN (cannot check: parse in-process as before) */
        return TP_YAML_SURVIVED;
    }
}

const char *tp_yaml_guard_msg(enum tp_yaml_guard_rc rc)
{
    if (rc == TP_YAML_HUNG)
        return "the YAML parser did not finish on this file; simplify its syntax (explicit \"?\" keys and "
               "tabs are the usual trigger)";
    return "the YAML parser failed on this file; simplify its syntax (explicit \"?\" keys and tabs are the "
           "usual trigger)";
}
