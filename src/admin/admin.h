/* SPDX-License-Identifier: MIT */
/*
 * Admin endpoint content: the output buffer, Prometheus rendering
 * (src/admin/metrics.c) and the /config document. [control]
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/** A growable output buffer; <failed> is set when memory ran out. */
struct tp_abuf {
    char *data;
    size_t len, cap;
    bool failed;
};

void tp_abuf_put(struct tp_abuf *b, const void *p, size_t n);
void tp_abuf_printf(struct tp_abuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Writes <s> as a JSON string literal (quotes included). */
void tp_abuf_json_str(struct tp_abuf *b, const char *s);
void tp_abuf_dispose(struct tp_abuf *b);

/** Renders every metric family in the Prometheus text format 0.0.4. */
void tp_metrics_render(struct tp_abuf *b);
/** Renders GET /config: generation, loaded_at, source, sha256, routes and upstreams with live state. */
void tp_config_render(struct tp_abuf *b);

/** Registers the admin endpoints as a control-thread service (before tp_runtime_run). [control] */
int tp_admin_register(void);
