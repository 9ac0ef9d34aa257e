/* SPDX-License-Identifier: MIT */
/*
 * Timer wheel (see include/turnpike/timer.h). Each slot is a circular doubly
 * linked list with a sentinel; a bitmap of possibly non-empty slots lets the
 * loop find its next wake-up without walking empty slots. Bits are set on
 * insert and cleared lazily when a slot is found empty.
 */
#include <turnpike/timer.h>

static inline uint64_t tick_of(uint64_t ms)
{
    return ms / TP_WHEEL_TICK_MS;
}

void tp_wheel_init(struct tp_wheel *w, uint64_t now_ms)
{
    w->tick = tick_of(now_ms);
    w->armed = 0;
    for (size_t i = 0; i < TP_WHEEL_SLOTS; i++)
        w->slot[i].prev = w->slot[i].next = &w->slot[i];
    for (size_t i = 0; i < TP_WHEEL_SLOTS / 64; i++)
        w->used[i] = 0;
}

static void unlink_timer(struct tp_wheel *w, struct tp_timer *t)
{
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = NULL;
    w->armed--;
}

static void link_timer(struct tp_wheel *w, struct tp_timer *t)
{
    uint64_t tk = tick_of(t->deadline_ms);
    size_t idx;

    /* Already due: file it in the next slot so the current run (or the next
     * one) picks it up. Too far: park it in the farthest slot. */
    if (tk <= w->tick)
        tk = w->tick + 1;
    else if (tk - w->tick >= TP_WHEEL_SLOTS)
        tk = w->tick + TP_WHEEL_SLOTS - 1;
    idx = tk % TP_WHEEL_SLOTS;
    struct tp_timer *head = &w->slot[idx];
    t->next = head;
    t->prev = head->prev;
    head->prev->next = t;
    head->prev = t;
    w->used[idx / 64] |= 1ull << (idx % 64);
    w->armed++;
}

void tp_timer_arm(struct tp_wheel *w, struct tp_timer *t, uint64_t deadline_ms)
{
    if (t->next)
        unlink_timer(w, t);
    t->deadline_ms = deadline_ms;
    link_timer(w, t);
}

void tp_timer_cancel(struct tp_wheel *w, struct tp_timer *t)
{
    if (t->next)
        unlink_timer(w, t);
}

size_t tp_wheel_run(struct tp_wheel *w, uint64_t now_ms)
{
    uint64_t target = tick_of(now_ms);
    size_t fired = 0;

    if (target <= w->tick)
        return 0;
    /* After a long stall every slot is visited once; parked timers re-file. */
    uint64_t steps = target - w->tick;
    if (steps > TP_WHEEL_SLOTS)
        steps = TP_WHEEL_SLOTS;
    uint64_t first = target - steps + 1;

    for (uint64_t tk = first; tk <= target; tk++) {
        size_t idx = tk % TP_WHEEL_SLOTS;
        struct tp_timer *head = &w->slot[idx];
        struct tp_timer local;

        if (!(w->used[idx / 64] & (1ull << (idx % 64))))
            continue;
        w->used[idx / 64] &= ~(1ull << (idx % 64));
        if (head->next == head)
            continue;
        /* Move the slot's list to a local sentinel: callbacks may arm timers
         * into this very slot, or cancel timers still on the local list. */
        local.next = head->next;
        local.prev = head->prev;
        local.next->prev = &local;
        local.prev->next = &local;
        head->prev = head->next = head;
        w->tick = tk;
        while (local.next != &local) {
            struct tp_timer *t = local.next;
            t->prev->next = t->next;
            t->next->prev = t->prev;
            t->prev = t->next = NULL;
            w->armed--;
            if (t->deadline_ms <= now_ms) {
                fired++;
                t->fn(t, now_ms);
            } else {
                link_timer(w, t); /* parked far timer, not due yet */
            }
        }
    }
    w->tick = target;
    return fired;
}

uint64_t tp_wheel_next_ms(const struct tp_wheel *w, uint64_t now_ms, uint64_t cap_ms)
{
    uint64_t cap_ticks = cap_ms / TP_WHEEL_TICK_MS + 1;

    if (w->armed == 0)
        return cap_ms;
    if (cap_ticks > TP_WHEEL_SLOTS)
        cap_ticks = TP_WHEEL_SLOTS;
    for (uint64_t d = 1; d <= cap_ticks; d++) {
        size_t idx = (w->tick + d) % TP_WHEEL_SLOTS;
        if (!w->used[idx / 64]) {
            /* skip the rest of an empty 64-slot word */
            uint64_t skip = 63 - (idx % 64);
            d += skip;
            continue;
        }
        if (w->used[idx / 64] & (1ull << (idx % 64))) {
            uint64_t at = (w->tick + d) * TP_WHEEL_TICK_MS;
            return at > now_ms ? (at - now_ms < cap_ms ? at - now_ms : cap_ms) : 0;
        }
    }
    return cap_ms;
}
