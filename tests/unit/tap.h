/* SPDX-License-Identifier: MIT */
/*
 * A tiny TAP harness for the unit tests (Knot DNS style): each check prints
 * "ok N - what" or "not ok N - what" with a diagnostic, tap_done() prints the
 * plan and returns the exit status (0 when every check passed). Exit code 77
 * means "skipped" to ctest (SKIP_RETURN_CODE), e.g. when the kernel lacks a
 * feature.
 */
#pragma once

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("# ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

static inline int tap_ok(int cond, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static inline int tap_ok(int cond, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    if (!cond) {
        tap_failed++;
        printf("#   failed at %s:%d\n", file, line);
    }
    fflush(stdout);
    return cond;
}

#define ok(cond, ...) tap_ok(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

#define is_int(got, want, ...)                                                                               \
    do {                                                                                                     \
        long long g_ = (long long)(got), w_ = (long long)(want);                                             \
        if (!tap_ok(g_ == w_, __FILE__, __LINE__, __VA_ARGS__))                                              \
            tap_diag("got %lld, want %lld", g_, w_);                                                         \
    } while (0)

#define is_str(got, want, ...)                                                                               \
    do {                                                                                                     \
        const char *g_ = (got), *w_ = (want);                                                                \
        int eq_ = (g_ && w_) ? strcmp(g_, w_) == 0 : g_ == w_;                                               \
        if (!tap_ok(eq_, __FILE__, __LINE__, __VA_ARGS__))                                                   \
            tap_diag("got \"%s\", want \"%s\"", g_ ? g_ : "(null)", w_ ? w_ : "(null)");                     \
    } while (0)

static inline int tap_done(void)
{
    printf("1..%d\n", tap_n);
    if (tap_failed)
        printf("# %d of %d checks failed\n", tap_failed, tap_n);
    return tap_failed ? 1 : 0;
}

#define TAP_SKIP_ALL(reason)                                                                                 \
    do {                                                                                                     \
        printf("1..0 # SKIP %s\n", reason);                                                                  \
        return 77;                                                                                           \
    } while (0)
