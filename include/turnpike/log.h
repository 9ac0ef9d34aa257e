/* SPDX-License-Identifier: MIT */
/*
 * The error log: leveled lines on stderr in a form journald understands.
 *
 * Each line starts with a syslog priority prefix ("<3>" ... "<7>") when stderr
 * is the journal (JOURNAL_STREAM matches stderr's device and inode), so
 * journald stores the level; otherwise it starts with an ISO time and the
 * level word. A line is written with one write(2) so lines from shards never
 * interleave.
 *
 * Hot paths use TP_LOG_RL(): at most <burst> lines per second per call site,
 * the number suppressed is reported with the next line that gets through.
 */
#pragma once

#include <stdarg.h>
#include <stdint.h>

enum tp_log_level {
    TP_LOG_ERR = 0,
    TP_LOG_WARN,
    TP_LOG_NOTICE,
    TP_LOG_INFO,
    TP_LOG_DEBUG,
    TP_LOG_LEVEL_COUNT
};

/** Rate limit state of one call site (a static in the macro). */
struct tp_log_rl {
    int64_t window_s;    /* [s] monotonic second of the current window */
    uint32_t count;      /* lines in the current window */
    uint32_t suppressed; /* lines dropped since the last one written */
};

/** Returns nonzero when <level> would be written. [any] */
int tp_log_enabled(enum tp_log_level level);

/** Names the calling thread in log lines ("main", "shard 3"). [any, per thread] */
void tp_log_set_thread(const char *name);

/** Writes one line. [any] */
void tp_log(enum tp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Writes one line unless <rl> has passed <burst> lines this second. [any, rl owned by caller's thread] */
void tp_log_rl(struct tp_log_rl *rl, uint32_t burst, enum tp_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define tp_err(...)    tp_log(TP_LOG_ERR, __VA_ARGS__)
#define tp_warn(...)   tp_log(TP_LOG_WARN, __VA_ARGS__)
#define tp_notice(...) tp_log(TP_LOG_NOTICE, __VA_ARGS__)
#define tp_info(...)   tp_log(TP_LOG_INFO, __VA_ARGS__)
#define tp_debug(...)                                                                                        \
    do {                                                                                                     \
        if (tp_log_enabled(TP_LOG_DEBUG))                                                                    \
            tp_log(TP_LOG_DEBUG, __VA_ARGS__);                                                               \
    } while (0)

/** Rate-limited log for hot paths: at most 10 lines per second per call site and thread. */
#define TP_LOG_RL(level, ...)                                                                                \
    do {                                                                                                     \
        static __thread struct tp_log_rl tp_rl_;                                                             \
        if (tp_log_enabled(level))                                                                           \
            tp_log_rl(&tp_rl_, 10, level, __VA_ARGS__);                                                      \
    } while (0)
