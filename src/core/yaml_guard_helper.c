/* SPDX-License-Identifier: MIT */
/*
 * The libfyaml guard's helper side (yaml_guard_helper.h): the parse, and the
 * helper process's loop. libc and libfyaml only: the small
 * turnpike-yaml-guard program is this file and src/yaml_guard_main.c. [helper]
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <libfyaml.h>

#include "core/yaml_guard.h"
#include "core/yaml_guard_helper.h"

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    (void)user;
    (void)buf;
    (void)len;
}

/* The event parser (the configuration loader's way) and the document builder
 * (the API-key loader's way) over the text. Out of memory here says nothing
 * about the text, so it counts as surviving. */
int tp_yg_parse(const char *buf, size_t len)
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

bool tp_yg_read_full(int fd, void *p, size_t n)
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

bool tp_yg_write_full(int fd, const void *p, size_t n)
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
    close_range(TP_YG_FD + 1, ~0u, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* It reads text and answers a byte: no privilege of the gateway's (root's,
     * or systemd's AmbientCapabilities=CAP_NET_BIND_SERVICE) is needed here,
     * so every capability goes, for good (no_new_privs: no exec regains one).
     * Defence in depth: the gateway parses the same text itself right after. */
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    struct __user_cap_header_struct caph = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct capd[_LINUX_CAPABILITY_U32S_3] = {{0}};
    syscall(SYS_capset, &caph, capd);
    /* (no getppid() == 1 test for a gateway gone before the prctl: turnpike may be
     * PID 1 in a container; a gone gateway fails the hello's write instead) */
    /* ready: a helper that cannot run (wrong binary behind the path, e.g.
     * under valgrind) never says so, and the gateway does without it */
    unsigned char hello = TP_YG_HELLO;
    if (!tp_yg_write_full(TP_YG_FD, &hello, 1))
        return 0;
    for (;;) {
        uint64_t len;
        if (!tp_yg_read_full(TP_YG_FD, &len, sizeof(len)))
            return 0; /* the gateway closed its end or exited */
        if (len > TP_YAML_GUARD_MAX)
            return 1;
        char *buf = malloc(len ? len : 1);
        if (!buf || !tp_yg_read_full(TP_YG_FD, buf, len))
            return 1;
        /* Follow the CPUs the gateway's control thread may use (it keeps off
         * the workers' CPUs when it can). */
        cpu_set_t set;
        if (sched_getaffinity(getppid(), sizeof(set), &set) == 0)
            sched_setaffinity(0, sizeof(set), &set);
        int bad = tp_yg_parse(buf, len);
        free(buf);
        /* The heap corruption comes with malformed input: after a text the
         * parser refused, this heap is not trusted with the next one. */
        unsigned char verdict = bad ? TP_YG_SURVIVED | TP_YG_LAST : TP_YG_SURVIVED;
        if (!tp_yg_write_full(TP_YG_FD, &verdict, 1) || bad)
            return 0;
    }
}
