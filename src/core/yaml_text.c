/* SPDX-License-Identifier: MIT */
/* The text of a YAML scalar (yaml_text.h). [any] */
#include <stdlib.h>
#include <string.h>

#include "core/yaml_text.h"

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
            if (!memchr(raw, '\n', n) && !memchr(raw, '\r', n)) {
                const char *q = memchr(raw, '\'', n);
                if (!q) {
                    *len = n;
                    return raw;
                }
                /* each '' stands for one ' (a lone ' cannot occur inside) */
                char *out = malloc(n);
                if (!out)
                    return NULL;
                size_t o = 0;
                for (size_t i = 0; i < n; i++) {
                    out[o++] = raw[i];
                    if (raw[i] == '\'' && i + 1 < n && raw[i + 1] == '\'')
                        i++;
                }
                *own = out;
                *len = o;
                return out;
            }
        }
    }
    return fy_token_get_text(t, len);
}
