/* SPDX-License-Identifier: MIT */
/*
 * A hashed timer wheel, one per shard (docs/internals.md hot-path rule 7): every
 * timeout of the shard's connections lives here, and the loop's wait timeout
 * is the time to the next non-empty slot. Arming, re-arming and cancelling
 * are O(1) list operations on a node embedded in the owner, so moving a
 * connection's deadline per request costs a few pointer writes.
 *
 * Slots are TP_WHEEL_TICK_MS wide; a deadline beyond one revolution is parked
 * in the farthest slot and re-filed when that slot comes round. A timer
 * fires at or after its deadline, at most one tick late.
 *
 * Ownership: shard (or the control thread, which has its own wheel). Not
 * thread-safe. [shard]
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define TP_WHEEL_TICK_MS 4u
#define TP_WHEEL_SLOTS   2048u /* one revolution = 8.192 s */

struct tp_timer;
/** Called for an expired timer, already unlinked; may re-arm any timer. */
typedef void (*tp_timer_fn)(struct tp_timer *t, uint64_t now_ms);

struct tp_timer {
    struct tp_timer *prev, *next; /* NULL when not armed */
    uint64_t deadline_ms;         /* [ms] monotonic */
    tp_timer_fn fn;
};

struct tp_wheel {
    uint64_t tick;                        /* last tick processed */
    size_t armed;                         /* timers linked */
    struct tp_timer slot[TP_WHEEL_SLOTS]; /* list heads (sentinels) */
    uint64_t used[TP_WHEEL_SLOTS / 64];   /* bit set = slot may be non-empty */
};

/** Prepares <w> with the current time <now_ms>. */
void tp_wheel_init(struct tp_wheel *w, uint64_t now_ms);

/** Prepares an unarmed timer that calls <fn>. */
static inline void tp_timer_init(struct tp_timer *t, tp_timer_fn fn)
{
    t->prev = t->next = NULL;
    t->deadline_ms = 0;
    t->fn = fn;
}

static inline int tp_timer_armed(const struct tp_timer *t)
{
    return t->next != NULL;
}

/** Arms <t> for <deadline_ms>, moving it when already armed. */
void tp_timer_arm(struct tp_wheel *w, struct tp_timer *t, uint64_t deadline_ms);

/** Disarms <t>; fine when not armed. */
void tp_timer_cancel(struct tp_wheel *w, struct tp_timer *t);

/** Fires every timer whose deadline is <= <now_ms>. Returns how many fired. */
size_t tp_wheel_run(struct tp_wheel *w, uint64_t now_ms);

/**
 * Returns the number of ms until the next slot that holds a timer, at most
 * <cap_ms>; <cap_ms> when nothing is armed.
 */
uint64_t tp_wheel_next_ms(const struct tp_wheel *w, uint64_t now_ms, uint64_t cap_ms);
