/* SPDX-License-Identifier: MIT */
/*
 * Configuration diagnostics: the public struct tp_diag (a growable list of
 * finished "FILE:LINE:COLUMN: message" lines) and the private positioned error
 * list that a load fills in whatever order the checks run, sorted by position
 * at the end so the operator reads them top to bottom. [control]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_int.h"

static int diag_push(struct tp_diag *d, char *msg)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char **v = realloc(d->msgs, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        d->msgs = v;
        d->cap = cap;
    }
    d->msgs[d->n++] = msg;
    return 0;
}

int tp_diag_add(struct tp_diag *d, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    int r = vasprintf(&msg, fmt, ap);
    va_end(ap);
    if (r < 0)
        return -ENOMEM;
    if (diag_push(d, msg) < 0) {
        free(msg);
        return -ENOMEM;
    }
    return 0;
}

void tp_diag_dispose(struct tp_diag *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->msgs[i]);
    free(d->msgs);
    memset(d, 0, sizeof(*d));
}

void tp_cfg_errs_vadd(struct tp_cfg_errs *e, uint32_t line, uint32_t col, const char *fmt, va_list ap)
{
    char *msg;

    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        struct tp_cfg_err *v = realloc(e->v, cap * sizeof(*v));
        if (!v) {
            e->oom = true;
            return;
        }
        e->v = v;
        e->cap = cap;
    }
    if (vasprintf(&msg, fmt, ap) < 0) {
        e->oom = true;
        return;
    }
    e->v[e->n] = (struct tp_cfg_err){.line = line, .col = col, .seq = (uint32_t)e->n, .msg = msg};
    e->n++;
}

void tp_cfg_errs_add(struct tp_cfg_errs *e, uint32_t line, uint32_t col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tp_cfg_errs_vadd(e, line, col, fmt, ap);
    va_end(ap);
}

static int err_cmp(const void *pa, const void *pb)
{
    const struct tp_cfg_err *a = pa, *b = pb;

    if (a->line != b->line)
        return a->line < b->line ? -1 : 1;
    if (a->col != b->col)
        return a->col < b->col ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

void tp_cfg_errs_flush(struct tp_cfg_errs *e, const char *name, struct tp_diag *diag)
{
    /* seq makes the order total, so qsort's instability cannot reorder two
     * messages at one position (e.g. a key reported twice for two reasons). */
    if (e->n > 1)
        qsort(e->v, e->n, sizeof(*e->v), err_cmp);
    for (size_t i = 0; i < e->n; i++) {
        struct tp_cfg_err *x = &e->v[i];
        if (diag) {
            if (x->line)
                tp_diag_add(diag, "%s:%u:%u: %s", name, x->line, x->col, x->msg);
            else
                tp_diag_add(diag, "%s: %s", name, x->msg);
        }
        free(x->msg);
    }
    if (e->oom && diag)
        tp_diag_add(diag, "%s: out of memory", name);
    free(e->v);
    memset(e, 0, sizeof(*e));
}
