/* SPDX-License-Identifier: MIT */
/*
 * turnpike's command line (docs/reference.md "Command line"):
 *
 *   turnpike [-c FILE]        run
 *   turnpike -t [-c FILE]     validate FILE and what it names, print "configuration ok"
 *   turnpike --version        versions of turnpike and the libraries it runs with
 */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <llhttp.h>
#include <ares.h>
#include <openssl/crypto.h>
#include <hiredis/hiredis.h>
#include <xxhash.h>
#ifdef TP_WITH_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

#include <turnpike/config.h>
#include <turnpike/log.h>

#include "admin/admin.h"
#include "core/yaml_guard.h"
#include "http/request.h"
#include "rt/runtime.h"
#include "rt/snapshot.h"
#include "store/rlstore.h"
#include "upstream/dns.h"
#include "upstream/health.h"

#define TP_DEFAULT_CONFIG "/etc/turnpike/turnpike.yaml"

#ifdef TP_WITH_JEMALLOC
/* jemalloc gives freed pages back to the kernel only as a side effect of later
 * allocations in the same arena, and a worker's hot path barely allocates: after
 * a burst (a thousand slow readers' heap blocks, say) its RSS stayed at the peak.
 * A background thread purges them on jemalloc's decay schedule (10 s). */
const char *malloc_conf = "background_thread:true";
#endif

static void print_version(void)
{
    unsigned xv = XXH_versionNumber();
    const char *jv = "not linked (sanitizer build)";
#ifdef TP_WITH_JEMALLOC
    size_t len = sizeof(jv);
    if (mallctl("version", &jv, &len, NULL, 0) != 0)
        jv = "unknown";
#endif
    printf("turnpike %s\n", TP_VERSION);
    printf("liburing %s\n", TP_URING_VERSION);
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION_STRING));
    printf("jemalloc %s\n", jv);
    printf("xxHash %u.%u.%u\n", xv / 10000, (xv / 100) % 100, xv % 100);
    printf("liburcu %s\n", TP_URCU_VERSION);
    printf("libfyaml %s\n", TP_FYAML_VERSION);
    printf("c-ares %s\n", ares_version(NULL));
    printf("hiredis %d.%d.%d\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: turnpike [-c FILE]         run (FILE defaults to " TP_DEFAULT_CONFIG ")\n"
               "       turnpike -t [-c FILE]      validate FILE, print \"configuration ok\"\n"
               "       turnpike --version         print versions\n");
}

/* The parser guard's small helper program, next to the real path of this binary
 * (symbolic links resolved); NULL when it is not there or not executable. */
static const char *find_guard_prog(void)
{
    static char path[PATH_MAX];
    struct stat st;
    char *self = realpath("/proc/self/exe", NULL);
    const char *slash = self ? strrchr(self, '/') : NULL;
    int n =
        slash ? snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - self), self, TP_YAML_GUARD_PROG) : -1;

    free(self);
    if (n < 0 || (size_t)n >= sizeof(path))
        return NULL;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || access(path, X_OK) != 0)
        return NULL;
    return path;
}

static struct tp_config *load_or_report(const char *path)
{
    struct tp_diag diag = {0};
    struct tp_config *cfg = tp_config_load(path, &diag);

    for (size_t i = 0; i < diag.n; i++)
        fprintf(stderr, "%s\n", diag.msgs[i]);
    tp_diag_dispose(&diag);
    return cfg;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    const char *path = TP_DEFAULT_CONFIG;
    int test_only = 0, c;

    /* the parser guard's helper (see tp_yaml_guard_use_helper): the small
     * program beside this binary, or this binary where that one is missing */
    if (argc == 2 && strcmp(argv[1], TP_YAML_GUARD_ARG) == 0)
        return tp_yaml_guard_helper_main();
    tp_yaml_guard_use_helper(find_guard_prog(), "/proc/self/exe");

    while ((c = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'V':
            print_version();
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    struct tp_config *cfg = load_or_report(path);
    if (!cfg)
        return 1;
    if (test_only) {
        struct tp_diag diag = {0};
        bool files_ok = tp_snapshot_check_files(cfg, &diag);
        for (size_t i = 0; i < diag.n; i++)
            fprintf(stderr, "%s\n", diag.msgs[i]);
        tp_diag_dispose(&diag);
        if (!files_ok) {
            tp_config_destroy(cfg);
            return 1;
        }
        printf("configuration ok\n");
        tp_config_destroy(cfg);
        return 0;
    }
    /* the modules hook into the reactor and the control thread before anything runs */
    if (tp_http_register() < 0 || tp_admin_register() < 0 || tp_health_register() < 0 ||
        tp_dns_register() < 0 || tp_rlstore_register() < 0) {
        fprintf(stderr, "turnpike: cannot register the runtime's modules\n");
        tp_config_destroy(cfg);
        return 1;
    }
    return tp_runtime_run(cfg, path);
}
