/* SPDX-License-Identifier: MIT */
/*
 * Error codes shared by every module.
 *
 * Functions return int: 0 on success, a negative errno (-ENOMEM, -EINVAL, ...)
 * when the failure came from the system, or a TP_E* code at or below -1000 for
 * failures that are turnpike's own. Constructors return NULL and, optionally,
 * the code through an `int *err`. A CQE's res already holds -errno.
 *
 * tp_strerror() is used once, where an error is reported.
 */
#pragma once

#include <stdio.h>
#include <stdlib.h>

enum tp_errcode {
    TP_EOK = 0,
    TP_EBASE = -1000,     /* first turnpike code */
    TP_ECONFIG = -1000,   /* configuration is invalid (diagnostics say why) */
    TP_EURING = -1001,    /* io_uring unavailable or lacks a needed feature */
    TP_ECLOSED = -1002,   /* the peer closed the connection */
    TP_ETIMEOUT = -1003,  /* a timeout passed */
    TP_EUPSTREAM = -1004, /* the upstream sent something invalid */
    TP_ETLS = -1005,      /* TLS handshake or record failure */
    TP_ELAST = -1006,
};

/** Returns a static string for <err> (negative errno or TP_E* code). [any] */
const char *tp_strerror(int err);

/** Aborts with file:line and <msg>: only for broken invariants, never input. */
#define TP_BUG_ON(cond)                                                                                      \
    do {                                                                                                     \
        if (__builtin_expect(!!(cond), 0)) {                                                                 \
            fprintf(stderr, "turnpike: BUG at %s:%d: %s\n", __FILE__, __LINE__, #cond);                      \
            abort();                                                                                         \
        }                                                                                                    \
    } while (0)

/** Like TP_BUG_ON, compiled out of release builds: for checks on the hot path. */
#ifdef NDEBUG
#define TP_BUG_ON_HOT(cond) ((void)0)
#else
#define TP_BUG_ON_HOT(cond) TP_BUG_ON(cond)
#endif

#define TP_LIKELY(x)     __builtin_expect(!!(x), 1)
#define TP_UNLIKELY(x)   __builtin_expect(!!(x), 0)
#define TP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
