/* SPDX-License-Identifier: MIT */
/*
 * The two ends of the libfyaml guard (yaml_guard.h) share this: the protocol
 * between the gateway and its helper process, and the parse both a helper
 * and a forked child run. yaml_guard_helper.c needs libc and libfyaml only,
 * so that the small turnpike-yaml-guard program (src/yaml_guard_main.c) is
 * built from it alone.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The helper's socket to the gateway. */
#define TP_YG_FD 3

/* The helper's first byte: it runs (a helper that cannot run never says so). */
#define TP_YG_HELLO 'R'
/* Its answer to each text: one byte, TP_YG_SURVIVED, with TP_YG_LAST set when it
 * exits after this answer (the parser refused the text). */
#define TP_YG_SURVIVED 0x00
#define TP_YG_LAST     0x80

/* Runs libfyaml's event parser and document builder over <buf>. Returns 1 when
 * the parser refused it (a syntax error: the real parse reports it), 0 otherwise. */
int tp_yg_parse(const char *buf, size_t len);

/* read/send all <n> bytes, retrying on EINTR; false on EOF or error. */
bool tp_yg_read_full(int fd, void *p, size_t n);
bool tp_yg_write_full(int fd, const void *p, size_t n);
