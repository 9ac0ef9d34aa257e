/* SPDX-License-Identifier: MIT */
/*
 * Authentication in the request layer: a route's `auth` decides, after
 * routing and before the rate limit (whose key may be a claim), whether a
 * request goes on. The checks themselves live in src/auth (JWT, JWKS, API
 * keys, the verified-token cache); this file finds the credential in the
 * request, maps the outcome to 401/403/503, and applies what a verified
 * credential brings: claims for keys and headers, the subject for the log,
 * and the removal of the credential and of forged claim headers before the
 * request is forwarded. [shard]
 *
 *   route has auth ─▶ credential found? ─no──────────────▶ 401 missing
 *                          │ yes
 *                          ▼
 *                    verify (cache hit: no signature check) ─bad─▶ 401 invalid / expired
 *                          │ ok
 *                          ▼
 *                    require_claims ─not met─▶ 403 forbidden
 *                          │ met
 *                          ▼
 *                    rate limit, proxy (claims forwarded, credential removed)
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <turnpike/auth.h>
#include <turnpike/clock.h>
#include <turnpike/log.h>

#include "http/request.h"

static const struct tp_cfg_cred_source bearer_source = {.kind = TP_FROM_BEARER};

const char *tp_head_cookie(const struct tp_head *h, const char *name, size_t name_len, size_t *len)
{
    for (uint32_t i = 0; i < h->n_hdrs; i++) {
        if (h->hdrs[i].id != TP_H_COOKIE)
            continue;
        const char *s = h->base + h->hdrs[i].value.off, *e = s + h->hdrs[i].value.len;
        while (s < e) {
            while (s < e && (*s == ' ' || *s == ';'))
                s++;
            const char *eq = memchr(s, '=', (size_t)(e - s));
            const char *end = memchr(s, ';', (size_t)(e - s));
            if (!end)
                end = e;
            if (eq && eq < end && (size_t)(eq - s) == name_len && memcmp(s, name, name_len) == 0) {
                *len = (size_t)(end - eq - 1);
                return eq + 1;
            }
            s = end;
        }
    }
    return NULL;
}

/* The raw value of query parameter <name> in <r>'s target, or NULL. */
static const char *query_param(const struct tp_req *r, const char *name, size_t name_len, size_t *len)
{
    const struct tp_head *h = &r->head;
    const char *u = h->base + h->url.off, *e = u + h->url.len;
    const char *q = memchr(u, '?', h->url.len);

    if (!q)
        return NULL;
    for (const char *s = q + 1; s < e;) {
        const char *amp = memchr(s, '&', (size_t)(e - s));
        const char *end = amp ? amp : e;
        const char *eq = memchr(s, '=', (size_t)(end - s));
        if (eq && (size_t)(eq - s) == name_len && memcmp(s, name, name_len) == 0) {
            *len = (size_t)(end - eq - 1);
            return eq + 1;
        }
        s = end + 1;
    }
    return NULL;
}

static bool name_is(const struct tp_hdr *hd, const struct tp_head *h, const char *lower, size_t len)
{
    return hd->name.len == len && strncasecmp(h->base + hd->name.off, lower, len) == 0;
}

/* The token of a JWT provider: the first of its sources that has one. */
static const char *find_token(struct tp_req *r, const struct tp_cfg_jwt *j, size_t *len, bool *sent)
{
    const struct tp_head *h = &r->head;
    const struct tp_cfg_cred_source *src = j->n_from ? j->from : &bearer_source;
    size_t n = j->n_from ? j->n_from : 1;

    for (size_t i = 0; i < n; i++) {
        const char *v = NULL;
        size_t vl = 0;
        switch (src[i].kind) {
        case TP_FROM_BEARER: {
            const struct tp_hdr *ah = tp_head_find(h, TP_H_AUTHORIZATION);
            if (ah) {
                v = h->base + ah->value.off;
                vl = ah->value.len;
            }
            if (v) {
                const char *tok;
                size_t tl;
                /* another scheme (Basic, ...) is no token of ours: absent, not invalid */
                if (tp_auth_bearer(v, vl, &tok, &tl) < 0) {
                    v = NULL;
                    break;
                }
                v = tok;
                vl = tl;
            }
            break;
        }
        case TP_FROM_HEADER:
            v = tp_head_value(h, src[i].name, src[i].name_len, &vl);
            break;
        case TP_FROM_COOKIE:
            v = tp_head_cookie(h, src[i].name, src[i].name_len, &vl);
            break;
        case TP_FROM_QUERY:
            v = query_param(r, src[i].name, src[i].name_len, &vl);
            break;
        }
        if (v) {
            *sent = true;
            if (!vl)
                continue; /* present but empty: look further, then "missing" */
            r->cred = &src[i];
            *len = vl;
            return v;
        }
    }
    return NULL;
}

static const char *const deny_text[] = {
    [TP_AUTH_MISSING] = "missing credential",
    [TP_AUTH_INVALID] = "invalid credential",
    [TP_AUTH_EXPIRED] = "expired credential",
    [TP_AUTH_FORBIDDEN] = "insufficient claims",
};

/* Answers a refused credential: 401 (with WWW-Authenticate for JWT providers) or 403, counted. */
static void deny(struct tp_shard *sh, struct tp_req *r, enum tp_auth_status st, bool jwt, bool token_sent,
                 const char *why)
{
    if (st == TP_AUTH_INTERNAL) {
        tp_req_error(sh, r, 503, "authentication unavailable", false);
        return;
    }
    tp_stat_add(&r->route->st->stats[sh->id].auth_rejected[st - 1], 1);
    TP_LOG_RL(TP_LOG_INFO, "route %s: credential refused: %s (request %.*s)", r->route->cfg->name, why,
              r->id_len, r->id);
    if (st != TP_AUTH_FORBIDDEN && jwt) {
        /* RFC 6750 3: a request that carried a token is told it was not good */
        int n = snprintf(r->extra_hdrs, sizeof(r->extra_hdrs), "WWW-Authenticate: Bearer%s\r\n",
                         token_sent ? " error=\"invalid_token\"" : "");
        r->extra_len = n > 0 && (size_t)n < sizeof(r->extra_hdrs) ? (uint16_t)n : 0;
    }
    tp_req_error(sh, r, st == TP_AUTH_FORBIDDEN ? 403 : 401, deny_text[st], false);
}

/* require_claims of the route: every listed claim matches. */
static bool claims_met(const struct tp_req *r, const struct tp_cfg_route_auth *ra)
{
    for (size_t i = 0; i < ra->n_require_claims; i++) {
        const struct tp_header_kv *kv = &ra->require_claims[i];
        if (r->claims) {
            if (!tp_jwt_claims_match(r->claims, kv->name, kv->value, kv->value_len))
                return false;
        } else {
            size_t vl = 0;
            const char *v = tp_req_claim(r, kv->name, &vl);
            if (!v || vl != kv->value_len || memcmp(v, kv->value, vl) != 0)
                return false;
        }
    }
    return true;
}

bool tp_req_authenticate(struct tp_shard *sh, struct tp_req *r)
{
    const struct tp_rt_auth *a = r->route->auth;
    const struct tp_cfg_route_auth *ra = r->route->cfg->auth;
    enum tp_auth_status st;
    const char *why = "no credential";
    bool sent = false;

    if (a->jwt) {
        const struct tp_cfg_jwt *j = a->cfg->jwt;
        size_t len = 0;
        /* a token in the query string must not reach the access log's request line */
        for (size_t i = 0; i < j->n_from; i++)
            if (j->from[i].kind == TP_FROM_QUERY)
                tp_req_redact_param(r, j->from[i].name, j->from[i].name_len);
        const char *tok = find_token(r, j, &len, &sent);
        if (!tok) {
            deny(sh, r, TP_AUTH_MISSING, true, sent, why);
            return false;
        }
        int64_t now_s = (int64_t)(tp_clock_real_ns() / 1000000000ull);
        st = tp_jwt_authenticate(a->jwt, tp_http_shard(sh)->jwt_cache, tok, len, now_s, &r->claims, &why);
    } else {
        const struct tp_cfg_api_key *k = a->cfg->api_key;
        size_t len = 0;
        const char *v = tp_head_value(&r->head, k->header, k->header_len, &len);
        sent = v != NULL;
        if (!v || !len) {
            st = TP_AUTH_MISSING;
        } else if (!(r->apikey = tp_apikeys_lookup(a->keys, v, len))) {
            st = TP_AUTH_INVALID;
            why = "unknown API key";
        } else {
            st = TP_AUTH_OK;
        }
    }
    if (st == TP_AUTH_OK && !claims_met(r, ra)) {
        st = TP_AUTH_FORBIDDEN;
        why = "require_claims not met";
    }
    if (st != TP_AUTH_OK) {
        deny(sh, r, st, a->jwt != NULL, sent, why);
        return false;
    }
    return true;
}

const char *tp_req_claim(const struct tp_req *r, const char *name, size_t *len)
{
    if (r->claims)
        return tp_jwt_claims_str(r->claims, name, len);
    if (!r->apikey)
        return NULL;
    /* an API key has two claims: its name (as sub or name) and its tenant */
    const char *v = NULL;
    if (strcmp(name, "sub") == 0 || strcmp(name, "name") == 0)
        v = tp_apikey_name(r->apikey);
    else if (strcmp(name, "tenant") == 0)
        v = tp_apikey_tenant(r->apikey);
    if (v)
        *len = strlen(v);
    return v;
}

const char *tp_req_subject(const struct tp_req *r, size_t *len)
{
    if (r->claims)
        return tp_jwt_claims_subject(r->claims, len);
    if (r->apikey) {
        const char *v = tp_apikey_name(r->apikey);
        *len = strlen(v);
        return v;
    }
    return NULL;
}

void tp_req_auth_release(struct tp_req *r)
{
    tp_jwt_claims_put(r->claims);
    r->claims = NULL;
    r->apikey = NULL;
    r->cred = NULL;
}

bool tp_req_auth_drops(const struct tp_req *r, const struct tp_hdr *hd)
{
    const struct tp_rt_auth *a = r->route->auth;
    const struct tp_head *h = &r->head;

    if (!a)
        return false;
    if (a->jwt) {
        const struct tp_cfg_jwt *j = a->cfg->jwt;
        /* headers the claims become are never taken from the client */
        for (size_t i = 0; i < j->n_forward_claims; i++)
            if (name_is(hd, h, j->forward_claims[i].header, j->forward_claims[i].header_len))
                return true;
    }
    if (r->route->cfg->auth->forward_credential)
        return false;
    if (!a->jwt)
        return name_is(hd, h, a->cfg->api_key->header, a->cfg->api_key->header_len);
    if (!r->cred)
        return false;
    if (r->cred->kind == TP_FROM_BEARER)
        return hd->id == TP_H_AUTHORIZATION;
    if (r->cred->kind == TP_FROM_HEADER)
        return name_is(hd, h, r->cred->name, r->cred->name_len);
    return false;
}

void tp_req_auth_headers(const struct tp_req *r, const struct tp_hdr_sink *s, void *ctx)
{
    const struct tp_rt_auth *a = r->route->auth;

    if (!a || !a->jwt || !r->claims)
        return;
    const struct tp_cfg_jwt *j = a->cfg->jwt;
    for (size_t i = 0; i < j->n_forward_claims; i++) {
        size_t len = 0;
        const char *v = tp_jwt_claims_str(r->claims, j->forward_claims[i].claim, &len);
        bool ok = v != NULL;
        /* the issuer's text goes into a header: no control characters */
        for (size_t k = 0; ok && k < len; k++)
            ok = (unsigned char)v[k] >= 0x20 && v[k] != 0x7f;
        if (!ok)
            continue;
        s->name(ctx, j->forward_claims[i].header, j->forward_claims[i].header_len);
        s->value(ctx, v, len);
        s->end(ctx);
    }
}

const char *tp_req_auth_cookie(const struct tp_req *r, size_t *len)
{
    if (!r->cred || r->cred->kind != TP_FROM_COOKIE || r->route->cfg->auth->forward_credential)
        return NULL;
    *len = r->cred->name_len;
    return r->cred->name;
}

const char *tp_req_auth_query(const struct tp_req *r, size_t *len)
{
    if (!r->cred || r->cred->kind != TP_FROM_QUERY || r->route->cfg->auth->forward_credential)
        return NULL;
    *len = r->cred->name_len;
    return r->cred->name;
}
