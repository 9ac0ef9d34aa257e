/* SPDX-License-Identifier: MIT */
/*
 * The libfyaml guard (yaml_guard.h): a kept helper process, or a child of the
 * caller, parses the text first. [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

#include "core/yaml_guard.h"
#include "core/yaml_guard_helper.h"

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
 * tp_yaml_guard_use_helper(), starts a helper process (posix_spawn) and
 * keeps it: each check sends the text over a socket pair and the helper
 * parses it and answers. A text the parser refuses (where the corruption
 * comes from) is the helper's last: it answers and exits, and the next check
 * starts a new one, so a valid file is never parsed on a heap a malformed
 * one went through. The helper dying on a text is the "failed" verdict; not
 * answering within 5 s, "did not finish" (it is killed). A helper that had
 * served before and is found dead (killed from outside) is replaced and the
 * text asked again.
 *
 * The helper is the small turnpike-yaml-guard program installed next to
 * turnpike (libc and libfyaml, yaml_guard_helper.c): the turnpike binary
 * itself maps OpenSSL, nghttp2, c-ares, jemalloc and the rest, and its
 * relocations and allocator start touch pages of all of them: 6.7 MiB of RSS
 * (1 MiB private) for a process that only ever runs libfyaml, against 2 MiB
 * (0.14 MiB private) for the small program. Where it is missing, the
 * turnpike binary runs as `turnpike --yaml-guard-helper` instead; a program
 * that cannot be started, exits without its hello, or misses it (5 s) three
 * times in a row is dropped for the next one (one miss: this text is checked
 * by a fork, the program is tried again next time).
 * Without any helper (programs other than turnpike linking the config module,
 * or none could be started: /proc/self/exe is not turnpike under valgrind)
 * the check forks the caller, as before.
 */
#define GUARD_TIMEOUT_MS 5000
#define GUARD_HELLO_MS   5000

enum { GUARD_OK = 0, GUARD_CRASHED = 1, GUARD_HUNG = 2, GUARD_UNKNOWN = 3, GUARD_RETRY = 4 };

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Runs tp_yg_parse in a forked child of the caller; GUARD_*. */
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
        tp_yg_parse(buf, len); /* a syntax error is for the real parse to report */
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

/* The programs a helper can be started from, in order of preference. */
static struct guard_prog {
    const char *path; /* NULL: not (or no longer) tried */
    const char *argv0;
    unsigned silent; /* hellos it missed in a row (slow, not broken: a busy host) */
} progs[2] = {{NULL, TP_YAML_GUARD_PROG, 0}, {NULL, "turnpike", 0}};

static struct {
    pid_t pid; /* running helper, or -1 */
    int fd;    /* our end of the socket pair */
} guard = {-1, -1};

void tp_yaml_guard_use_helper(const char *prog, const char *self)
{
    progs[0].path = prog;
    progs[1].path = self;
}

/* The program to start a helper from; NULL: none, fork the caller. */
static struct guard_prog *guard_prog(void)
{
    for (size_t i = 0; i < sizeof(progs) / sizeof(progs[0]); i++)
        if (progs[i].path)
            return &progs[i];
    return NULL;
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

/* Helpers of one program that missed their hello in a row before that program
 * is given up: a loaded host may be slow once, a program that never answers
 * should not cost every reload the wait. */
#define GUARD_SILENT_MAX 3

/* Starts a helper from <prog> and waits for its hello: 0 when it runs, -1 when
 * <prog> cannot run one (it exited, or missed GUARD_SILENT_MAX hellos in a row:
 * it will not work better next time), -2 when the system is short of something
 * (processes, memory, descriptors) or the helper was too slow this time. */
static int guard_spawn(struct guard_prog *prog)
{
    int sv[2], err = 0;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, dfl;
    char *argv[] = {(char *)prog->argv0, (char *)TP_YAML_GUARD_ARG, NULL};
    /* every symbol bound at exec, not again in each forked child (lazy binding) */
    char *envp[] = {(char *)"LD_BIND_NOW=1", NULL};

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -2;
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
        return -2;
    }
    if (posix_spawnattr_init(&attr) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        close(sv[0]);
        close(sv[1]);
        return -2;
    }
    /* dup2 onto TP_YG_FD clears close-on-exec on the copy */
    if (posix_spawn_file_actions_adddup2(&fa, sv[1], TP_YG_FD) != 0 ||
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0) != 0 ||
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0) != 0 ||
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0) != 0 ||
        posix_spawnattr_setsigmask(&attr, &none) != 0 || posix_spawnattr_setsigdefault(&attr, &dfl) != 0 ||
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) != 0)
        err = ENOMEM;
    else
        err = posix_spawn(&guard.pid, prog->path, &fa, &attr, argv, envp);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (err != 0) {
        guard.pid = -1;
        close(sv[0]);
        /* the exec failed (missing, not executable, wrong format, ...) or the
         * system is short of resources for now */
        return err == EAGAIN || err == ENOMEM || err == EMFILE || err == ENFILE ? -2 : -1;
    }
    guard.fd = sv[0];
    /* wait (bounded) for its hello */
    struct pollfd pfd = {.fd = guard.fd, .events = POLLIN};
    unsigned char hello = 0;
    int r;
    do
        r = poll(&pfd, 1, GUARD_HELLO_MS);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
        guard_stop();
        return ++prog->silent < GUARD_SILENT_MAX ? -2 : -1;
    }
    if (r != 1 || !tp_yg_read_full(guard.fd, &hello, 1) || hello != TP_YG_HELLO) {
        guard_stop();
        return -1;
    }
    prog->silent = 0;
    return 0;
}

/* Starts a helper from the first program that can run one. */
static bool guard_start(void)
{
    struct guard_prog *prog;

    while ((prog = guard_prog()) != NULL) {
        int r = guard_spawn(prog);
        if (r == 0)
            return true;
        if (r == -2)
            return false;  /* fork this time, try again next time */
        prog->path = NULL; /* the next program from now on */
    }
    return false;
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
    if (!tp_yg_write_full(guard.fd, &n, sizeof(n)) || !tp_yg_write_full(guard.fd, buf, len)) {
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
    if (!tp_yg_read_full(guard.fd, &verdict, 1) || (verdict & ~TP_YG_LAST) != TP_YG_SURVIVED) {
        guard_stop();
        return fresh ? GUARD_CRASHED : GUARD_RETRY;
    }
    if (verdict & TP_YG_LAST)
        guard_stop(); /* it is exiting: reap it now, start a new one next time */
    return GUARD_OK;
}

enum tp_yaml_guard_rc tp_yaml_guard(const char *buf, size_t len)
{
    int v = -1;

    if (guard_prog() && len <= TP_YAML_GUARD_MAX) {
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
