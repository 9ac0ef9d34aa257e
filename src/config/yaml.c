/* SPDX-License-Identifier: MIT */
/*
 * YAML text -> struct tp_ynode tree, from libfyaml's event parser.
 *
 * Why events and not fy_document: see config_int.h (positions of mappings and
 * sequences are not reachable through the 0.7 document API). The parser runs
 * with YAML 1.2 as the default version and its own diagnostics collected
 * (never printed): a syntax error becomes one positioned message.
 *
 * What the tree keeps: kind, 1-based start position, scalar text and style,
 * map pairs in file order with duplicates (config.c reports them), sequence
 * items. Aliases point at the anchored node (shared, not copied); "weight"
 * counts the nodes a full walk would visit, so an alias bomb ("billion
 * laughs") is refused before the schema walk could spend exponential time on
 * it. Merge keys ("<<") are YAML 1.1 only, so they stay ordinary keys.
 *
 * Called by config.c only. [control]
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libfyaml.h>

#include "config/config_int.h"
#include "core/yaml_guard.h"
#include "core/yaml_text.h"

/* A walk of more nodes than this is refused: a real configuration has a few
 * thousand, an alias bomb has billions. */
#define TP_YAML_MAX_WEIGHT (1u << 20)

struct yframe {
    struct tp_ynode *node;
    struct tp_ynode *key; /* map: key waiting for its value */
    void *v;              /* growing pairs or items (malloc'd until the end event) */
    size_t n, cap;
    char *anchor; /* anchor of this collection (malloc'd), registered when complete */
};

struct yanchor {
    char *name;
    struct tp_ynode *node;
};

struct ybuild {
    struct tp_cfg_arena *a;
    struct tp_cfg_errs *errs;
    struct yframe *st;
    size_t depth, st_cap;
    struct yanchor *anchors;
    size_t n_anchors, anchors_cap;
    struct tp_ynode *root;
    const char *in; /* the text parsed */
    size_t in_len;
    bool failed;
};

static void mark_pos(struct fy_event *fye, struct tp_ynode *n)
{
    const struct fy_mark *m = fy_event_start_mark(fye);

    /* An empty plain scalar (a key with no value) has no token and no mark:
     * add_node() lends it the position of its key or parent instead. */
    if (m && m->line >= 0 && m->column >= 0) {
        n->line = (uint32_t)m->line + 1;
        n->col = (uint32_t)m->column + 1;
    }
}

static char *token_text(struct fy_token *t, size_t *len)
{
    const char *s = t ? fy_token_get_text(t, len) : NULL;
    if (!s) {
        *len = 0;
        return NULL;
    }
    char *c = malloc(*len + 1);
    if (c) {
        memcpy(c, s, *len);
        c[*len] = '\0';
    }
    return c;
}

static bool grow(void **v, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t nc = *cap ? *cap * 2 : 8;
    while (nc < need)
        nc *= 2;
    void *p = realloc(*v, nc * elem);
    if (!p)
        return false;
    *v = p;
    *cap = nc;
    return true;
}

static void oom(struct ybuild *b)
{
    b->errs->oom = true;
    b->failed = true;
}

static bool add_anchor(struct ybuild *b, char *name, struct tp_ynode *node)
{
    if (!name)
        return true;
    if (!grow((void **)&b->anchors, &b->anchors_cap, b->n_anchors + 1, sizeof(*b->anchors))) {
        free(name);
        oom(b);
        return false;
    }
    b->anchors[b->n_anchors++] = (struct yanchor){.name = name, .node = node};
    return true;
}

static struct tp_ynode *find_anchor(struct ybuild *b, const char *name)
{
    /* Newest first: a redefined anchor shadows the older one (YAML 1.2 7.1). */
    for (size_t i = b->n_anchors; i-- > 0;)
        if (strcmp(b->anchors[i].name, name) == 0)
            return b->anchors[i].node;
    return NULL;
}

/* Attaches a complete node to the open collection (or makes it the root). */
static void add_node(struct ybuild *b, struct tp_ynode *n)
{
    if (b->depth == 0) {
        b->root = n;
        return;
    }
    struct yframe *f = &b->st[b->depth - 1];
    uint64_t w = f->node->weight + n->weight;
    if (w > TP_YAML_MAX_WEIGHT) {
        tp_cfg_errs_add(b->errs, n->line ? n->line : f->node->line, n->line ? n->col : f->node->col,
                        "document too large: more than %u nodes once aliases are expanded",
                        TP_YAML_MAX_WEIGHT);
        b->failed = true;
        return;
    }
    f->node->weight = w;

    if (f->node->kind == TP_Y_SEQ) {
        if (!n->line) {
            n->line = f->node->line;
            n->col = f->node->col;
        }
        if (!grow(&f->v, &f->cap, f->n + 1, sizeof(struct tp_ynode *)))
            return oom(b);
        ((struct tp_ynode **)f->v)[f->n++] = n;
        return;
    }
    if (!f->key) {
        if (!n->line) { /* "": value -> point at the mapping */
            n->line = f->node->line;
            n->col = f->node->col;
        }
        f->key = n;
        return;
    }
    if (!n->line) { /* "key:" with nothing after it: point at the key */
        n->line = f->key->line;
        n->col = f->key->col;
    }
    if (!grow(&f->v, &f->cap, f->n + 1, sizeof(struct tp_ypair)))
        return oom(b);
    ((struct tp_ypair *)f->v)[f->n++] = (struct tp_ypair){.key = f->key, .val = n};
    f->key = NULL;
}

static struct tp_ynode *new_node(struct ybuild *b, enum tp_ynode_kind kind, struct fy_event *fye)
{
    struct tp_ynode *n = tp_cfg_arena_alloc(b->a, sizeof(*n));
    if (!n) {
        oom(b);
        return NULL;
    }
    n->kind = kind;
    n->weight = 1;
    mark_pos(fye, n);
    return n;
}

static bool is_null_text(const char *s, size_t len)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strlen(nulls[i]) == len && memcmp(nulls[i], s, len) == 0)
            return true;
    return false;
}

static void on_scalar(struct ybuild *b, struct fy_event *fye)
{
    struct tp_ynode *n = new_node(b, TP_Y_SCALAR, fye);
    size_t len = 0;
    const char *s;

    if (!n)
        return;
    char *own;
    s = tp_yaml_text(fye->scalar.value, b->in, b->in_len, &len, &own);
    if (!s) {
        s = "";
        len = 0;
    }
    n->str = tp_cfg_arena_strndup(b->a, s, len);
    free(own);
    if (!n->str)
        return oom(b);
    n->len = len;
    enum fy_scalar_style style = fy_token_scalar_style(fye->scalar.value);
    n->plain = style == FYSS_PLAIN;
    /* libfyaml marks a quoted scalar at its first character inside the
     * quotes; the value as written starts at the quote. */
    if ((style == FYSS_SINGLE_QUOTED || style == FYSS_DOUBLE_QUOTED) && n->col > 1)
        n->col--;
    n->null = n->plain && is_null_text(n->str, len);
    if (fye->scalar.anchor) {
        size_t al;
        if (!add_anchor(b, token_text(fye->scalar.anchor, &al), n))
            return;
    }
    add_node(b, n);
}

static void on_alias(struct ybuild *b, struct fy_event *fye)
{
    size_t len;
    char *name = token_text(fye->alias.anchor, &len);
    const struct fy_mark *m = fy_event_start_mark(fye);
    /* The mark is at the anchor name; the alias as written starts at '*'. */
    uint32_t line = m ? (uint32_t)m->line + 1 : 1, col = m && m->column > 0 ? (uint32_t)m->column : 1;

    if (!name)
        return oom(b);
    struct tp_ynode *target = find_anchor(b, name);
    if (!target) {
        /* Also the case for an alias inside its own anchor's node: refusing
         * it keeps the tree acyclic. */
        tp_cfg_errs_add(b->errs, line, col, "unknown alias \"*%s\"", name);
        b->failed = true;
        free(name);
        return;
    }
    free(name);
    add_node(b, target);
}

static void on_start(struct ybuild *b, struct fy_event *fye, enum tp_ynode_kind kind)
{
    struct tp_ynode *n = new_node(b, kind, fye);
    struct fy_token *anchor = kind == TP_Y_MAP ? fye->mapping_start.anchor : fye->sequence_start.anchor;

    if (!n)
        return;
    if (!grow((void **)&b->st, &b->st_cap, b->depth + 1, sizeof(*b->st)))
        return oom(b);
    struct yframe *f = &b->st[b->depth++];
    memset(f, 0, sizeof(*f));
    f->node = n;
    if (anchor) {
        size_t al;
        f->anchor = token_text(anchor, &al);
        if (!f->anchor)
            return oom(b);
    }
}

static void on_end(struct ybuild *b)
{
    struct yframe *f = &b->st[b->depth - 1];
    struct tp_ynode *n = f->node;

    if (n->kind == TP_Y_MAP) {
        n->pairs = tp_cfg_arena_calloc(b->a, f->n ? f->n : 1, sizeof(struct tp_ypair));
        if (n->pairs && f->n)
            memcpy(n->pairs, f->v, f->n * sizeof(struct tp_ypair));
    } else {
        n->items = tp_cfg_arena_calloc(b->a, f->n ? f->n : 1, sizeof(struct tp_ynode *));
        if (n->items && f->n)
            memcpy(n->items, f->v, f->n * sizeof(struct tp_ynode *));
    }
    n->n = f->n;
    free(f->v);
    char *anchor = f->anchor;
    b->depth--;
    if (!n->pairs) /* same pointer as items */
        return oom(b);
    if (!add_anchor(b, anchor, n))
        return;
    add_node(b, n);
}

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

/*
 * YAML text must be UTF-8 made of printable characters (YAML 1.2
 * "c-printable": tab, line breaks and everything visible; no other control
 * characters). libfyaml 0.7.12 loops forever on a directive line holding
 * bytes that are not UTF-8, and corrupts its heap on some inputs holding a NUL
 * byte, which would hang or crash `turnpike -t` and a reload; checking the
 * text first also gives a positioned message for a file saved in Latin-1.
 */
static bool utf8_valid(const char *buf, size_t len, struct tp_cfg_errs *errs)
{
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t line = 1, col = 1;

    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        bool ok = n != 0 && i + n <= len && !(n == 2 && c < 0xc2) && !(n == 4 && c > 0xf4);
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[i + k] & 0xc0) == 0x80;
        /* overlong 3-byte forms, UTF-16 surrogates, and code points above U+10FFFF */
        if (ok && n == 3 && ((c == 0xe0 && p[i + 1] < 0xa0) || (c == 0xed && p[i + 1] >= 0xa0)))
            ok = false;
        if (ok && n == 4 && ((c == 0xf0 && p[i + 1] < 0x90) || (c == 0xf4 && p[i + 1] >= 0x90)))
            ok = false;
        if (!ok) {
            tp_cfg_errs_add(errs, line, col, "invalid UTF-8 (byte 0x%02x): the file must be UTF-8", c);
            return false;
        }
        uint32_t cp = n == 1 ? c : n == 2 ? (uint32_t)(c & 0x1f) << 6 | (p[i + 1] & 0x3f) : 0;
        bool control = (n == 1 && ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0x7f)) ||
                       (n == 2 && cp >= 0x80 && cp <= 0x9f && cp != 0x85);
        if (control) {
            tp_cfg_errs_add(errs, line, col, "control character U+%04X is not allowed in YAML", cp);
            return false;
        }
        if (c == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
        i += n;
    }
    return true;
}

/* 0 when libfyaml survives <buf> (core/yaml_guard.h); -1 with a message in <errs> when not. */
static int parser_survives(const char *buf, size_t len, struct tp_cfg_errs *errs)
{
    enum tp_yaml_guard_rc rc = tp_yaml_guard(buf, len);

    if (rc == TP_YAML_SURVIVED)
        return 0;
    tp_cfg_errs_add(errs, 1, 1, "%s", tp_yaml_guard_msg(rc));
    return -1;
}

struct tp_ynode *tp_cfg_yaml_parse(const char *buf, size_t len, struct tp_cfg_arena *a,
                                   struct tp_cfg_errs *errs, bool *empty)
{
    struct ybuild b = {.a = a, .errs = errs, .in = buf, .in_len = len};
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag;
    struct fy_parser *fyp = NULL;
    struct fy_event *fye;
    int docs = 0;

    *empty = false;
    if (!utf8_valid(buf, len, errs) || parser_survives(buf, len, errs) < 0)
        return NULL;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL; /* libfyaml must never print: our caller owns stderr */
    dcfg.output_fn = discard_output;
    dcfg.colorize = false;
    diag = fy_diag_create(&dcfg);
    if (!diag) {
        errs->oom = true;
        return NULL;
    }
    fy_diag_set_collect_errors(diag, true);

    struct fy_parse_cfg pcfg = {
        .flags = FYPCF_QUIET | FYPCF_DEFAULT_VERSION_1_2,
        .diag = diag,
    };
    fyp = fy_parser_create(&pcfg);
    if (!fyp || fy_parser_set_string(fyp, buf, len) != 0) {
        errs->oom = true;
        goto out;
    }

    while (!b.failed && (fye = fy_parser_parse(fyp)) != NULL) {
        switch (fye->type) {
        case FYET_DOCUMENT_START:
            if (++docs > 1) {
                const struct fy_mark *m = fy_event_start_mark(fye);
                tp_cfg_errs_add(errs, m ? (uint32_t)m->line + 1 : 1, m ? (uint32_t)m->column + 1 : 1,
                                "only one YAML document is allowed");
                b.failed = true;
            }
            break;
        case FYET_MAPPING_START:
            on_start(&b, fye, TP_Y_MAP);
            break;
        case FYET_SEQUENCE_START:
            on_start(&b, fye, TP_Y_SEQ);
            break;
        case FYET_MAPPING_END:
        case FYET_SEQUENCE_END:
            if (b.depth)
                on_end(&b);
            break;
        case FYET_SCALAR:
            on_scalar(&b, fye);
            break;
        case FYET_ALIAS:
            on_alias(&b, fye);
            break;
        default: /* stream and document ends, stream start */
            break;
        }
        fy_parser_event_free(fyp, fye);
    }

    if (fy_parser_get_stream_error(fyp)) {
        /* The positions of collected diagnostics are already 1-based. */
        void *it = NULL;
        struct fy_diag_error *de;
        size_t before = errs->n;
        while ((de = fy_diag_errors_iterate(diag, &it)) != NULL) {
            if (de->type < FYET_ERROR)
                continue;
            tp_cfg_errs_add(errs, de->line > 0 ? (uint32_t)de->line : 1,
                            de->column > 0 ? (uint32_t)de->column : 1, "%s",
                            de->msg ? de->msg : "invalid YAML");
        }
        if (errs->n == before)
            tp_cfg_errs_add(errs, 1, 1, "invalid YAML");
        b.failed = true;
    }
    if (!b.failed && docs == 0)
        *empty = true;

out:
    while (b.depth) {
        free(b.st[b.depth - 1].v);
        free(b.st[b.depth - 1].anchor);
        b.depth--;
    }
    free(b.st);
    for (size_t i = 0; i < b.n_anchors; i++)
        free(b.anchors[i].name);
    free(b.anchors);
    if (fyp)
        fy_parser_destroy(fyp);
    fy_diag_destroy(diag);
    return b.failed ? NULL : b.root;
}
