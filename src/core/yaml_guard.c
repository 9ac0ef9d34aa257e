/* SPDX-License-Identifier: MIT */
/*
 * The libfyaml guard (yaml_guard.h): a child process parses the text first.
 * [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libfyaml.h>

#include "core/yaml_guard.h"

#define GUARD_TIMEOUT_MS 5000

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    (void)user;
    (void)buf;
    (void)len;
}

/* In the child: the event parser (the configuration loader's way) and the document
 * builder (the API-key loader's way) over the text. Out of memory here says nothing
 * about the text, so it counts as surviving. */
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
    fy_parser_destroy(fyp);
    struct fy_document *fyd = fy_document_build_from_string(&pcfg, buf, len);
    if (fyd)
        fy_document_destroy(fyd);
    fy_diag_destroy(diag);
    return 0;
}

enum tp_yaml_guard_rc tp_yaml_guard(const char *buf, size_t len)
{
    pid_t pid = fork();
    int status = 0;

    if (pid == -1)
        return TP_YAML_SURVIVED; /* cannot check: parse in-process as before */
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            dup2(fd, STDOUT_FILENO);
        }
        _exit(guard_parse(buf, len));
    }
    for (int waited = 0;; waited++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r == -1 && errno != EINTR)
            return TP_YAML_SURVIVED;
        if (waited * 2 >= GUARD_TIMEOUT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return TP_YAML_HUNG;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? TP_YAML_SURVIVED : TP_YAML_CRASHED;
}

const char *tp_yaml_guard_msg(enum tp_yaml_guard_rc rc)
{
    if (rc == TP_YAML_HUNG)
        return "the YAML parser did not finish on this file; simplify its syntax (explicit \"?\" keys and "
               "tabs are the usual trigger)";
    return "the YAML parser failed on this file; simplify its syntax (explicit \"?\" keys and tabs are the "
           "usual trigger)";
}
