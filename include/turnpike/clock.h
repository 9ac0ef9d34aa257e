/* SPDX-License-Identifier: MIT */
/*
 * Clocks. The monotonic clock drives every timeout and the token buckets; the
 * shard loop reads it once per iteration and passes the value down, so the
 * hot path does not call clock_gettime per request (it is a vDSO call, not a
 * syscall, but still ~20 ns).
 */
#pragma once

#include <stdint.h>
#include <time.h>

/** [ns] CLOCK_MONOTONIC. [any] */
static inline uint64_t tp_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/** [ms] CLOCK_MONOTONIC. [any] */
static inline uint64_t tp_clock_ms(void)
{
    return tp_clock_ns() / 1000000ull;
}

/** [ns] CLOCK_REALTIME, for timestamps shown to people. [any] */
static inline uint64_t tp_clock_real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
