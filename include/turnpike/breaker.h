/* SPDX-License-Identifier: MIT */
/*
 * Circuit breaker of one upstream endpoint (upstreams[].circuit_breaker).
 *
 *   closed --(consecutive_failures in a row, or failure_ratio of at least
 *             min_requests within window)--> open
 *   open --(open_for elapsed; the first admit after it)--> half-open
 *   half-open --(all half_open_requests trials succeed)--> closed
 *   half-open --(any trial fails)--> open (open_for starts again)
 *
 * Every shard calls tp_breaker_admit() before sending a request to the
 * endpoint and tp_breaker_report() with the outcome. The whole state (closed,
 * open since when, half-open with its remaining trial permits and awaited
 * successes) is one atomic word, changed only by CAS, so exactly one thread
 * makes each transition and exactly half_open_requests trials are handed out.
 * The word also holds a generation, bumped by every transition, which admit
 * hands out in the pass and report checks: an outcome that belongs to an
 * earlier state (a request admitted while closed that completes after the
 * breaker opened, or a trial of an earlier half-open period) is ignored.
 *
 * Owner: process (the endpoint state object that survives reloads embeds it).
 * The struct is public so it can be embedded; its fields are private. It is
 * cache-line aligned: the containing object must be allocated with 64-byte
 * alignment (aligned_alloc, posix_memalign), which tp_breaker_init() checks,
 * or use tp_breaker_create(). Times are CLOCK_MONOTONIC milliseconds.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <turnpike/config.h>

/** Buckets of the failure-ratio window: 1 s each for windows up to 60 s. */
#define TP_BREAKER_WINDOW_SLOTS 60
/** half_open_requests above this are clamped to it. */
#define TP_BREAKER_MAX_TRIALS 255
/** A half-open breaker whose trials were all handed out but not all reported
 *  after this long counts the missing ones as failures and opens again. [ms] */
#define TP_BREAKER_TRIAL_TIMEOUT_MS 120000

enum tp_breaker_admit {
    TP_BREAKER_DENY = 0, /* open: answer 503 / pick another endpoint; do not report */
    TP_BREAKER_ALLOW,    /* closed: send, then report the outcome */
    TP_BREAKER_TRIAL,    /* half-open trial: send, then report the outcome (must!) */
};

/** Values of tp_breaker_state(), as the gauge turnpike_circuit_state. */
enum tp_breaker_state {
    TP_BREAKER_CLOSED = 0,
    TP_BREAKER_OPEN = 1,
    TP_BREAKER_HALF_OPEN = 2,
};

/** What admit decided, to be handed back to report. 8 bytes, pass by value. */
struct tp_breaker_pass {
    enum tp_breaker_admit how;
    uint32_t gen; /* generation of the state it was given in */
};

struct tp_breaker_bucket {
    _Atomic uint64_t total; /* (tag << 32) | requests; tag = bucket number + 1 */
    _Atomic uint64_t fail;  /* (tag << 32) | failures */
};

struct tp_breaker {
    /* Read by every admit, written only by transitions and set_config. */
    _Alignas(64) _Atomic uint64_t _state; /* state | generation | payload, see breaker.c */
    _Atomic uint64_t _open_for_ms;        /* [ms] */
    _Atomic uint64_t _window;             /* (bucket width [ms] << 32) | number of buckets */
    _Atomic uint32_t _consecutive_max;    /* 0 = criterion off */
    _Atomic uint32_t _ratio_ppm;          /* failure_ratio in millionths, 1..1000000 */
    _Atomic uint32_t _min_requests;
    _Atomic uint32_t _trials; /* half_open_requests, 1..TP_BREAKER_MAX_TRIALS */
    _Atomic bool _enabled;    /* false: no circuit_breaker configured, always ALLOW */

    /* Written by every report while closed: kept off the line above. */
    _Alignas(64) _Atomic uint32_t _consecutive;
    struct tp_breaker_bucket _win[TP_BREAKER_WINDOW_SLOTS];
};

/**
 * Initializes <b>, closed, with the values of <cfg> copied (NULL = disabled:
 * always ALLOW). <b> must be 64-byte aligned (checked: aborts otherwise).
 * Not concurrent with any other call on <b>. [control]
 */
void tp_breaker_init(struct tp_breaker *b, const struct tp_cfg_circuit_breaker *cfg);

/**
 * Applies a reloaded configuration while shards use <b>: the values are
 * copied, each into its own atomic, so a concurrent admit or report may see a
 * mix of old and new values for an instant (each is valid by itself). The
 * state is kept; a changed window restarts the window's counts; NULL disables
 * the breaker (and closes it). Not concurrent with itself. [control]
 */
void tp_breaker_set_config(struct tp_breaker *b, const struct tp_cfg_circuit_breaker *cfg);

/** Allocates (64-byte aligned) and initializes a breaker; NULL and *<err> = -ENOMEM on failure. [control] */
struct tp_breaker *tp_breaker_create(const struct tp_cfg_circuit_breaker *cfg, int *err);

/** Frees a breaker from tp_breaker_create(). NULL is fine. [control] */
void tp_breaker_destroy(struct tp_breaker *b);

/**
 * Decides whether a request may go to the endpoint at <now_ms>. Closed:
 * ALLOW. Open before open_for has elapsed: DENY. Open after it: the first
 * caller turns it half-open (one CAS) and gets the first TRIAL; then exactly
 * half_open_requests TRIALs in total are handed out across all threads, DENY
 * after that until they are reported. Every ALLOW and TRIAL must be reported
 * exactly once with tp_breaker_report(), a cancelled request as a failure;
 * DENY must not be (reporting it is a no-op). Lock-free, no writes when
 * closed. [any]
 */
struct tp_breaker_pass tp_breaker_admit(struct tp_breaker *b, uint64_t now_ms);

/**
 * Reports the outcome of a request admitted with <pass> (<success> false for
 * a connect failure, reset, timeout or 5xx). Ignored when the breaker's state
 * changed since the admission (the generation differs), so late outcomes of
 * requests admitted while closed never count in half-open or in a later
 * closed period, and a trial of an earlier half-open period does not count
 * for the current one. While closed: counts consecutive failures (reset by a
 * success) and the window, and opens when either criterion is met. While
 * half-open: a failed trial reopens, the last awaited success closes and
 * resets the counters. [any]
 */
void tp_breaker_report(struct tp_breaker *b, struct tp_breaker_pass pass, bool success, uint64_t now_ms);

/**
 * Returns the state as enum tp_breaker_state (0 closed, 1 open, 2 half-open).
 * An open breaker whose open_for has elapsed stays 1 until a request turns it
 * half-open. A disabled breaker is 0. [any]
 */
int tp_breaker_state(const struct tp_breaker *b, uint64_t now_ms);

/**
 * True when tp_breaker_admit() at <now_ms> would not DENY: closed, open with
 * open_for elapsed, or half-open with a trial permit left. Read-only, for
 * balancing (skip endpoints that would deny without consuming a permit). [any]
 */
bool tp_breaker_would_admit(const struct tp_breaker *b, uint64_t now_ms);
