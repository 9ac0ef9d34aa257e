/* SPDX-License-Identifier: MIT */
/*
 * Private interface of the config module (the .c files of src/config): the arena that owns
 * a tp_config, the positioned error list, the small YAML tree the schema walk
 * reads, and the string checkers shared by the schema walk and the tests.
 *
 * Why a tree of our own instead of libfyaml's document: the libfyaml of
 * Debian 12 (0.7.12) has no public accessor for the position of a mapping or
 * sequence node (fy_node_get_start_mark came with 0.8), and every message must
 * carry LINE:COLUMN. Its event API (fy_parser_parse) gives a start mark on
 * every event, so yaml.c builds this tree from events. The tree also lets us
 * report duplicate keys ourselves (at the second key, without stopping).
 *
 * Everything here is [control]: one load runs on one thread.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <turnpike/config.h>

/* ---- arena: bump allocation in chunks, freed all at once ---- */

struct tp_cfg_arena;

/** Creates an empty arena, NULL on ENOMEM. */
struct tp_cfg_arena *tp_cfg_arena_create(void);
/** Frees every allocation of <a> and <a> itself. NULL is fine. */
void tp_cfg_arena_destroy(struct tp_cfg_arena *a);
/** Zeroed memory for <n> bytes (aligned for any type), NULL on ENOMEM. */
void *tp_cfg_arena_alloc(struct tp_cfg_arena *a, size_t n);
/** Zeroed array of <n> elements of <size> bytes; NULL on ENOMEM or overflow. */
void *tp_cfg_arena_calloc(struct tp_cfg_arena *a, size_t n, size_t size);
/** NUL-terminated copy of <len> bytes of <s>, NULL on ENOMEM. */
char *tp_cfg_arena_strndup(struct tp_cfg_arena *a, const char *s, size_t len);

/* ---- positioned errors, sorted by position before they reach tp_diag ---- */

struct tp_cfg_err {
    uint32_t line, col; /* 1-based; 0,0 = no position ("FILE: message") */
    uint32_t seq;       /* discovery order, keeps the sort stable */
    char *msg;          /* malloc'd, without the "FILE:L:C: " prefix */
};

struct tp_cfg_errs {
    struct tp_cfg_err *v;
    size_t n, cap;
    bool oom; /* a message could not be stored: report "out of memory" */
};

/** Records an error at <line>:<col> (1-based, 0 = none). */
void tp_cfg_errs_add(struct tp_cfg_errs *e, uint32_t line, uint32_t col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void tp_cfg_errs_vadd(struct tp_cfg_errs *e, uint32_t line, uint32_t col, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
/**
 * Sorts the errors by position and moves them into <diag> (may be NULL) as
 * "NAME:LINE:COL: message", or "NAME: message" without a position. Frees <e>.
 */
void tp_cfg_errs_flush(struct tp_cfg_errs *e, const char *name, struct tp_diag *diag);

/* ---- YAML tree ---- */

enum tp_ynode_kind { TP_Y_SCALAR = 0, TP_Y_MAP, TP_Y_SEQ, TP_Y_KIND_COUNT };

struct tp_ynode;

struct tp_ypair {
    struct tp_ynode *key;
    struct tp_ynode *val;
};

struct tp_ynode {
    enum tp_ynode_kind kind;
    uint32_t line, col; /* 1-based start of the node (or of its key, see yaml.c) */
    bool null;          /* plain "", "~", "null", "Null", "NULL" (YAML 1.2 core schema) */
    bool plain;         /* scalar written without quotes or block indicator */
    const char *str;    /* scalar text, NUL-terminated (may hold NULs: use len) */
    size_t len;
    union {
        struct tp_ypair *pairs;  /* TP_Y_MAP, in file order, duplicates kept */
        struct tp_ynode **items; /* TP_Y_SEQ */
    };
    size_t n;        /* pairs or items */
    uint64_t weight; /* nodes below and including this one, aliases expanded */
};

/**
 * Parses <buf> (YAML 1.2, one document) into a tree allocated in <a>.
 * Returns the root, or NULL when the text is not valid YAML, holds no
 * document, or more than one: the reason is in <errs>. An empty stream
 * gives NULL and sets *<empty>.
 */
struct tp_ynode *tp_cfg_yaml_parse(const char *buf, size_t len, struct tp_cfg_arena *a,
                                   struct tp_cfg_errs *errs, bool *empty);

/* ---- string checkers (values.c): NULL = fine, else a reason for the message ---- */

/** RFC 9110 token: 1+ of ALPHA DIGIT !#$%&'*+-.^_`|~ */
bool tp_cfg_is_token(const char *s, size_t len);
/** Field value: visible ASCII, SP, HTAB, obs-text; no CR/LF/NUL/CTL; no edge whitespace. */
const char *tp_cfg_check_header_value(const char *s, size_t len);
/** match.host: [*.]label(.label)*, letters digits '-', no port. */
const char *tp_cfg_check_host(const char *s, size_t len);
/** Route path: '/', visible ASCII, no dot segments; '?' allowed only when <allow_query>. */
const char *tp_cfg_check_path(const char *s, size_t len, bool allow_query);
/** llhttp method number of <s> (exact, upper case), or -1. */
int tp_cfg_method(const char *s, size_t len);
/**
 * Writes <s> into <out> quoted for a message: printable ASCII kept,
 * '"' and '\\' escaped, other bytes as \xNN, cut with "..." past ~60 bytes.
 */
void tp_cfg_quote(char *out, size_t outsz, const char *s, size_t len);
