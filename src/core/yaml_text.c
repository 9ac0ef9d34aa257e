/* SPDX-License-Identifier: MIT */
/* The text of a YAML scalar (yaml_text.h). [any] */
#include <stdlib.h>
#include <string.h>

#include "core/yaml_text.h"

static bool is_white(char c)
{
    return c == ' ' || c == '\t';
}

/* Length of the line break at <p> (CR LF, LF or CR), 0 when none. */
static size_t line_break(const char *p, const char *end)
{
    if (*p == '\n')
        return 1;
    if (*p == '\r')
        return p + 1 < end && p[1] == '\n' ? 2 : 1;
    return 0;
}

/*
 * The value of a single-quoted scalar from what lies between its quotes:
 * each '' is one ', and the scalar is folded over its lines as YAML 1.2 folds
 * flow scalars: white space around each line break goes; a break followed by
 * content is one space, and each empty line in between is a newline instead.
 * <out> has room for <n> bytes (the value is never longer). Returns its length.
 */
static size_t single_quoted(const char *raw, size_t n, char *out)
{
    const char *p = raw, *end = raw + n;
    size_t o = 0;

    for (;;) {
        /* the content of this line; the first keeps its leading white space */
        const char *eol = p;
        while (eol < end && !line_break(eol, end))
            eol++;
        const char *last = eol;
        if (eol < end)
            while (last > p && is_white(last[-1]))
                last--; /* the last line keeps its trailing white space */
        for (const char *q = p; q < last; q++) {
            out[o++] = *q;
            if (*q == '\'' && q + 1 < last && q[1] == '\'')
                q++;
        }
        if (eol == end)
            return o;
        /* a break: empty lines after it are newlines, else it is a space */
        size_t empty = 0;
        p = eol + line_break(eol, end);
        for (;;) {
            while (p < end && is_white(*p))
                p++;
            size_t b = p < end ? line_break(p, end) : 0;
            if (!b)
                break;
            empty++;
            p += b;
        }
        if (empty)
            for (size_t i = 0; i < empty; i++)
                out[o++] = '\n';
        else
            out[o++] = ' ';
    }
}

const char *tp_yaml_text(struct fy_token *t, const char *in, size_t in_len, size_t *len, char **own)
{
    *own = NULL;
    if (fy_token_scalar_style(t) == FYSS_SINGLE_QUOTED) {
        /* the marks bracket what lies between the quotes */
        const struct fy_mark *s = fy_token_start_mark(t), *e = fy_token_end_mark(t);
        if (s && e && s->input_pos >= 1 && s->input_pos <= e->input_pos && e->input_pos < in_len &&
            in[s->input_pos - 1] == '\'' && in[e->input_pos] == '\'') {
            const char *raw = in + s->input_pos;
            size_t n = e->input_pos - s->input_pos;
            if (!memchr(raw, '\'', n) && !memchr(raw, '\n', n) && !memchr(raw, '\r', n)) {
                *len = n; /* the text as written */
                return raw;
            }
            char *out = malloc(n ? n : 1);
            if (!out)
                return NULL;
            *own = out;
            *len = single_quoted(raw, n, out);
            return out;
        }
    }
    return fy_token_get_text(t, len);
}
