/* SPDX-License-Identifier: MIT */
/*
 * The error log (see include/turnpike/log.h). Called from every thread; each
 * line is formatted into a stack buffer and written with a single write(2) to
 * stderr, which POSIX keeps atomic for pipes up to PIPE_BUF and which journald
 * and files receive whole in practice. Nothing here allocates.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <turnpike/log.h>

/* -1 unknown, 0 no, 1 stderr is the journal; found out by whichever thread logs first
 * (every thread finds the same answer, so a race only repeats the check) */
static atomic_int log_journal = -1;
static __thread char log_thread[24] = "main";

static const char *const level_word[TP_LOG_LEVEL_COUNT] = {"error", "warn", "notice", "info", "debug"};
static const int level_prio[TP_LOG_LEVEL_COUNT] = {3, 4, 5, 6, 7};

int tp_log_enabled(enum tp_log_level level)
{
    return level <= TP_LOG_INFO; /* debug lines are compiled in but not written */
}

void tp_log_set_thread(const char *name)
{
    snprintf(log_thread, sizeof(log_thread), "%s", name);
}

/* journald sets JOURNAL_STREAM=dev:ino for the stream it gave us as stderr. */
static int detect_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    struct stat st;
    unsigned long long dev, ino;

    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) == -1)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static void log_write(enum tp_log_level level, const char *suffix, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void log_write(enum tp_log_level level, const char *suffix, const char *fmt, va_list ap)
{
    char line[2048];
    size_t n = 0;
    int r;

    int journal = atomic_load_explicit(&log_journal, memory_order_relaxed);

    if (journal < 0) {
        journal = detect_journal();
        atomic_store_explicit(&log_journal, journal, memory_order_relaxed);
    }
    if (journal) {
        r = snprintf(line, sizeof(line), "<%d>[%s] ", level_prio[level], log_thread);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        r = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s [%s] ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_word[level], log_thread);
    }
    if (r > 0)
        n = (size_t)r < sizeof(line) ? (size_t)r : sizeof(line) - 1;
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (r > 0)
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    if (suffix) {
        r = snprintf(line + n, sizeof(line) - n, "%s", suffix);
        if (r > 0)
            n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    }
    /* Control characters from input must not split or forge log lines. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    while (write(STDERR_FILENO, line, n) == -1 && errno == EINTR)
        ;
}

static void logv(enum tp_log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void logv(enum tp_log_level level, const char *fmt, va_list ap)
{
    if (!tp_log_enabled(level))
        return;
    log_write(level, NULL, fmt, ap);
}

void tp_log(enum tp_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    logv(level, fmt, ap);
    va_end(ap);
}

void tp_log_rl(struct tp_log_rl *rl, uint32_t burst, enum tp_log_level level, const char *fmt, ...)
{
    struct timespec ts;
    char suffix[64];
    va_list ap;

    if (!tp_log_enabled(level))
        return;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    if (ts.tv_sec != rl->window_s) {
        rl->window_s = ts.tv_sec;
        rl->count = 0;
    }
    if (rl->count >= burst) {
        rl->suppressed++;
        return;
    }
    rl->count++;
    suffix[0] = 0;
    if (rl->suppressed) {
        snprintf(suffix, sizeof(suffix), " (%u similar lines suppressed)", rl->suppressed);
        rl->suppressed = 0;
    }
    va_start(ap, fmt);
    log_write(level, suffix[0] ? suffix : NULL, fmt, ap);
    va_end(ap);
}
