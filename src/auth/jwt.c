/* SPDX-License-Identifier: MIT */
/*
 * JWT verification (RFC 7519 over a compact JWS, RFC 7515) and the claims a
 * verified token carries.
 *
 * A token is taken apart in the order that exposes the least to a forger:
 *   1. shape: length limit, exactly three dot-separated base64url parts;
 *   2. header: a JSON object (no duplicate members) with a supported "alg",
 *      no "crit" (no extension is understood, so any is refused, as RFC 7515
 *      4.1.11 requires), an optional string "kid"; "jwk", "jku", "x5u" and
 *      "x5c" are never looked at: keys come from the JWKS file only;
 *   3. key: the one named by kid, or the only key that fits the alg, whose
 *      type must fit the alg (an HS alg only ever reaches oct secrets);
 *   4. signature over the ASCII "header.payload";
 *   5. only then the payload: claims types, iss, aud, then exp/nbf/iat.
 * So a forged token is INVALID whatever its claims say, and the JSON parser
 * never sees a payload that the key holder did not sign.
 *
 * Verifiers are immutable once created and read by every shard at once; a
 * verification allocates (decoding, jansson, OpenSSL contexts) and frees all
 * but the claims it returns. Every failure clears the thread's OpenSSL error
 * queue, which the TLS code of the same shard reads. [any]
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include "auth/auth_int.h"

/* A year of leeway is already absurd: larger values only hide a configuration mistake. */
#define MAX_LEEWAY_S (366 * 86400)
/* NumericDate values beyond this are refused rather than converted (doubles up to 2^53 are exact). */
#define MAX_DATE (INT64_C(1) << 53)

static atomic_uint_fast64_t next_verifier_id = 1;

struct tp_jwt_verifier *tp_jwt_verifier_create(struct tp_jwks *keys, const struct tp_jwt_opts *o, int *errp)
{
    struct tp_jwt_verifier *v;
    int err = -ENOMEM;

    if (!keys || o->leeway_s < 0 || o->leeway_s > MAX_LEEWAY_S || (o->n_audiences && !o->audiences)) {
        err = -EINVAL;
        goto fail_early;
    }
    v = calloc(1, sizeof(*v));
    if (!v)
        goto fail_early;
    v->id = atomic_fetch_add_explicit(&next_verifier_id, 1, memory_order_relaxed);
    v->leeway_s = o->leeway_s;
    v->max_token_len = o->max_token_len ? o->max_token_len : TP_JWT_DEFAULT_MAX_LEN;
    if (o->issuer && !(v->issuer = strdup(o->issuer)))
        goto fail;
    if (o->n_audiences) {
        v->audiences = calloc(o->n_audiences, sizeof(*v->audiences));
        if (!v->audiences)
            goto fail;
        v->n_audiences = o->n_audiences;
        for (size_t i = 0; i < o->n_audiences; i++)
            if (!(v->audiences[i] = strdup(o->audiences[i])))
                goto fail;
    }
    v->keys = tp_jwks_get(keys);
    return v;

fail:
    tp_jwt_verifier_destroy(v);
fail_early:
    if (errp)
        *errp = err;
    return NULL;
}

void tp_jwt_verifier_destroy(struct tp_jwt_verifier *v)
{
    if (!v)
        return;
    tp_jwks_put(v->keys);
    free(v->issuer);
    for (size_t i = 0; i < v->n_audiences; i++)
        free(v->audiences[i]);
    free(v->audiences);
    free(v);
}

/* ---- the key ---- */

static bool key_fits(const struct auth_key *k, enum auth_alg alg)
{
    return k->kty == auth_alg_kty(alg) && (k->alg < 0 || k->alg == (int)alg);
}

static const struct auth_key *pick_key(const struct tp_jwks *ks, enum auth_alg alg, json_t *kid,
                                       const char **reason)
{
    const struct auth_key *found = NULL;

    if (kid) {
        for (size_t i = 0; i < ks->n; i++) {
            const struct auth_key *k = &ks->keys[i];
            if (k->kid && strlen(k->kid) == json_string_length(kid) &&
                memcmp(k->kid, json_string_value(kid), json_string_length(kid)) == 0) {
                found = k;
                break;
            }
        }
        if (!found)
            *reason = "kid not found in the key set";
        else if (!key_fits(found, alg))
            *reason = "alg does not fit the key named by kid";
        else
            return found;
        return NULL;
    }
    for (size_t i = 0; i < ks->n; i++) {
        if (!key_fits(&ks->keys[i], alg))
            continue;
        if (found) {
            *reason = "no kid, and several keys fit the alg";
            return NULL;
        }
        found = &ks->keys[i];
    }
    if (!found)
        *reason = "no key fits the alg";
    return found;
}

/* ---- signatures ---- */

/* Appends the DER INTEGER of the unsigned big-endian <v> (<n> bytes) at <out>; returns its size. */
static size_t der_uint(unsigned char *out, const unsigned char *v, size_t n)
{
    size_t pad;

    while (n > 1 && v[0] == 0) { /* minimal encoding: no leading zero octets */
        v++;
        n--;
    }
    pad = (v[0] & 0x80) ? 1 : 0; /* a set top bit would read as negative */
    out[0] = 0x02;
    out[1] = (unsigned char)(n + pad);
    out[2] = 0;
    memcpy(out + 2 + pad, v, n);
    return 2 + pad + n;
}

/*
 * JOSE writes an ECDSA signature as r || s, each the curve's size (RFC 7518
 * 3.4); OpenSSL verifies the DER of SEQUENCE { INTEGER r, INTEGER s }. For
 * P-256 and P-384 the whole DER stays below 128 bytes, so every length is
 * one octet. Returns the DER size, or 0 when <sig_len> is not 2 * <size>.
 */
static size_t ecdsa_to_der(const unsigned char *sig, size_t sig_len, size_t size, unsigned char *der)
{
    size_t n;

    if (sig_len != 2 * size)
        return 0;
    n = der_uint(der + 2, sig, size);
    n += der_uint(der + 2 + n, sig + size, size);
    der[0] = 0x30;
    der[1] = (unsigned char)n;
    return n + 2;
}

static enum tp_auth_status verify_hmac(const struct auth_key *k, enum auth_alg alg, const unsigned char *in,
                                       size_t in_len, const unsigned char *sig, size_t sig_len,
                                       const char **reason)
{
    EVP_MAC_CTX *tmpl = k->hmac[alg - ALG_HS256], *ctx;
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t mac_len = 0;

    if (!tmpl) {
        *reason = "HMAC secret shorter than the alg's hash";
        return TP_AUTH_INVALID;
    }
    ctx = EVP_MAC_CTX_dup(tmpl);
    if (!ctx || EVP_MAC_update(ctx, in, in_len) != 1 || EVP_MAC_final(ctx, mac, &mac_len, sizeof(mac)) != 1) {
        EVP_MAC_CTX_free(ctx);
        ERR_clear_error();
        *reason = "HMAC computation failed";
        return TP_AUTH_INTERNAL;
    }
    EVP_MAC_CTX_free(ctx);
    if (sig_len != mac_len || CRYPTO_memcmp(mac, sig, mac_len) != 0) {
        *reason = sig_len != mac_len ? "signature length wrong for the alg" : "signature does not verify";
        return TP_AUTH_INVALID;
    }
    return TP_AUTH_OK;
}

static enum tp_auth_status verify_pkey(const struct auth_key *k, enum auth_alg alg, const unsigned char *in,
                                       size_t in_len, const unsigned char *sig, size_t sig_len,
                                       const char **reason)
{
    unsigned char der[2 + 2 * (3 + 48)];
    EVP_PKEY_CTX *pctx = NULL; /* owned by mctx */
    EVP_MD_CTX *mctx;
    int r;

    switch (alg) {
    case ALG_ES256:
    case ALG_ES384:
        sig_len = ecdsa_to_der(sig, sig_len, alg == ALG_ES256 ? 32 : 48, der);
        sig = der;
        if (!sig_len) {
            *reason = "signature length wrong for the alg";
            return TP_AUTH_INVALID;
        }
        break;
    case ALG_EDDSA:
        if (sig_len != 64) {
            *reason = "signature length wrong for the alg";
            return TP_AUTH_INVALID;
        }
        break;
    default: /* RSA: the signature is exactly as long as the modulus (RFC 8017 8.2.2, 8.1.2) */
        if (sig_len != (size_t)EVP_PKEY_get_size(k->pkey)) {
            *reason = "signature length wrong for the key";
            return TP_AUTH_INVALID;
        }
        break;
    }

    mctx = EVP_MD_CTX_new();
    if (!mctx || EVP_DigestVerifyInit(mctx, &pctx, auth_alg_md(alg), NULL, k->pkey) != 1)
        goto internal;
    if (alg >= ALG_PS256 && alg <= ALG_PS512) {
        /* RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash */
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1)
            goto internal;
    }
    r = EVP_DigestVerify(mctx, sig, sig_len, in, in_len);
    EVP_MD_CTX_free(mctx);
    if (r != 1) {
        /* 0 is a mismatch; < 0 is a signature OpenSSL could not even decode: the same to us */
        ERR_clear_error();
        *reason = "signature does not verify";
        return TP_AUTH_INVALID;
    }
    return TP_AUTH_OK;

internal:
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    *reason = "signature check could not run";
    return TP_AUTH_INTERNAL;
}

/* ---- claims ---- */

/* Reads a NumericDate (integer or not, RFC 7519 2) into *<t>, flooring fractions. */
static bool numeric_date(json_t *j, int64_t *t)
{
    if (json_is_integer(j)) {
        json_int_t i = json_integer_value(j);
        if (i > MAX_DATE || i < -MAX_DATE)
            return false;
        *t = (int64_t)i;
        return true;
    }
    if (json_is_real(j)) {
        double d = json_real_value(j);
        if (!(d <= (double)MAX_DATE && d >= -(double)MAX_DATE))
            return false;
        int64_t i = (int64_t)d;
        *t = (d < 0 && (double)i != d) ? i - 1 : i;
        return true;
    }
    return false;
}

static bool aud_ok(const struct tp_jwt_verifier *v, json_t *aud, const char **reason)
{
    size_t i;
    json_t *a;

    if (!aud) {
        *reason = "aud missing";
        return false;
    }
    if (json_is_string(aud)) {
        for (size_t k = 0; k < v->n_audiences; k++)
            if (strcmp(json_string_value(aud), v->audiences[k]) == 0)
                return true;
        *reason = "aud is not an accepted audience";
        return false;
    }
    if (!json_is_array(aud)) {
        *reason = "aud is neither a string nor an array";
        return false;
    }
    json_array_foreach(aud, i, a)
    {
        if (!json_is_string(a)) {
            *reason = "aud array holds a non-string";
            return false;
        }
    }
    json_array_foreach(aud, i, a)
    {
        for (size_t k = 0; k < v->n_audiences; k++)
            if (strcmp(json_string_value(a), v->audiences[k]) == 0)
                return true;
    }
    *reason = "aud holds no accepted audience";
    return false;
}

static enum tp_auth_status check_claims(const struct tp_jwt_verifier *v, json_t *c, int64_t now_s,
                                        int64_t *exp, const char **reason)
{
    json_t *j_exp = json_object_get(c, "exp"), *j_nbf = json_object_get(c, "nbf");
    json_t *j_iat = json_object_get(c, "iat"), *j_iss = json_object_get(c, "iss");
    json_t *j_sub = json_object_get(c, "sub");
    int64_t nbf, iat;

    /* types first: a claim of the wrong type makes the token malformed, whatever it says */
    if (!j_exp) {
        *reason = "exp missing";
        return TP_AUTH_INVALID;
    }
    if (!numeric_date(j_exp, exp) || (j_nbf && !numeric_date(j_nbf, &nbf)) ||
        (j_iat && !numeric_date(j_iat, &iat))) {
        *reason = "exp, nbf or iat is not a NumericDate";
        return TP_AUTH_INVALID;
    }
    if ((j_iss && !json_is_string(j_iss)) || (j_sub && !json_is_string(j_sub))) {
        *reason = "iss or sub is not a string";
        return TP_AUTH_INVALID;
    }
    /* then whether the token is meant for us: one that is not is invalid here, expired or not */
    if (v->issuer && (!j_iss || strcmp(json_string_value(j_iss), v->issuer) != 0)) {
        *reason = j_iss ? "iss is not the configured issuer" : "iss missing";
        return TP_AUTH_INVALID;
    }
    if (v->n_audiences && !aud_ok(v, json_object_get(c, "aud"), reason))
        return TP_AUTH_INVALID;
    /* then time: |now_s| and the leeway are far below 2^62, and dates within 2^53: no overflow */
    if (*exp <= now_s - v->leeway_s) {
        *reason = "exp has passed";
        return TP_AUTH_EXPIRED;
    }
    if (j_nbf && nbf > now_s + v->leeway_s) {
        *reason = "nbf is in the future";
        return TP_AUTH_INVALID;
    }
    if (j_iat && iat > now_s + v->leeway_s) {
        *reason = "iat is in the future";
        return TP_AUTH_INVALID;
    }
    return TP_AUTH_OK;
}

/* ---- verification ---- */

static json_t *parse_object(const unsigned char *s, size_t len)
{
    json_t *j = json_loadb((const char *)s, len, JSON_REJECT_DUPLICATES, NULL);

    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

enum tp_auth_status tp_jwt_verify(const struct tp_jwt_verifier *v, const char *tok, size_t len, int64_t now_s,
                                  struct tp_jwt_claims **out, const char **reasonp)
{
    const char *dot1, *dot2, *reason = "ok";
    size_t h_len, p_len, s_len;
    unsigned char *buf = NULL, *sig, *pay;
    long hn, sn, pn;
    json_t *hdr = NULL, *payload = NULL, *alg_j, *kid;
    const struct auth_key *key;
    struct tp_jwt_claims *c;
    enum tp_auth_status st = TP_AUTH_INVALID;
    int alg;
    int64_t exp = 0;

    *out = NULL;
    if (len == 0) {
        st = TP_AUTH_MISSING;
        reason = "empty token";
        goto out;
    }
    if (len > v->max_token_len) {
        reason = "token longer than the limit";
        goto out;
    }
    dot1 = memchr(tok, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - tok)) : NULL;
    if (!dot2) {
        reason = "not three dot-separated parts";
        goto out;
    }
    if (memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - tok))) {
        reason = "more than three parts (JWE and JSON serializations are not supported)";
        goto out;
    }
    h_len = (size_t)(dot1 - tok);
    p_len = (size_t)(dot2 - dot1 - 1);
    s_len = len - (size_t)(dot2 + 1 - tok);
    if (!h_len || !p_len || !s_len) {
        reason = s_len ? "empty header or payload" : "no signature (unsecured JWS)";
        goto out;
    }

    /* one buffer for the three decoded parts: header | signature | payload */
    buf = malloc(auth_b64_declen(h_len) + auth_b64_declen(s_len) + auth_b64_declen(p_len));
    if (!buf) {
        st = TP_AUTH_INTERNAL;
        reason = "out of memory";
        goto out;
    }
    hn = auth_b64url_decode(tok, h_len, buf);
    if (hn < 0) {
        reason = "header is not unpadded base64url";
        goto out;
    }
    hdr = parse_object(buf, (size_t)hn);
    if (!hdr) {
        reason = "header is not a JSON object";
        goto out;
    }
    alg_j = json_object_get(hdr, "alg");
    if (!alg_j || !json_is_string(alg_j)) {
        reason = "alg missing or not a string";
        goto out;
    }
    if (strcmp(json_string_value(alg_j), "none") == 0) {
        reason = "alg none is refused";
        goto out;
    }
    alg = auth_alg_lookup(json_string_value(alg_j), json_string_length(alg_j));
    if (alg < 0) {
        reason = "alg not supported";
        goto out;
    }
    if (json_object_get(hdr, "crit")) {
        reason = "crit header: no extension is understood";
        goto out;
    }
    kid = json_object_get(hdr, "kid");
    if (kid && !json_is_string(kid)) {
        reason = "kid is not a string";
        goto out;
    }
    key = pick_key(v->keys, (enum auth_alg)alg, kid, &reason);
    if (!key)
        goto out;

    sig = buf + auth_b64_declen(h_len);
    sn = auth_b64url_decode(dot2 + 1, s_len, sig);
    if (sn < 0) {
        reason = "signature is not unpadded base64url";
        goto out;
    }
    /* the signing input is the text as received: "header.payload" */
    if (key->kty == KTY_OCT)
        st = verify_hmac(key, (enum auth_alg)alg, (const unsigned char *)tok, (size_t)(dot2 - tok), sig,
                         (size_t)sn, &reason);
    else
        st = verify_pkey(key, (enum auth_alg)alg, (const unsigned char *)tok, (size_t)(dot2 - tok), sig,
                         (size_t)sn, &reason);
    if (st != TP_AUTH_OK)
        goto out;

    st = TP_AUTH_INVALID;
    pay = sig + auth_b64_declen(s_len);
    pn = auth_b64url_decode(dot1 + 1, p_len, pay);
    if (pn < 0) {
        reason = "payload is not unpadded base64url";
        goto out;
    }
    payload = parse_object(pay, (size_t)pn);
    if (!payload) {
        reason = "payload is not a JSON object";
        goto out;
    }
    st = check_claims(v, payload, now_s, &exp, &reason);
    if (st != TP_AUTH_OK)
        goto out;

    c = malloc(sizeof(*c) + len + 1);
    if (!c) {
        st = TP_AUTH_INTERNAL;
        reason = "out of memory";
        goto out;
    }
    atomic_init(&c->refs, 1);
    c->payload = payload;
    payload = NULL;
    c->exp = exp;
    c->tok_len = len;
    memcpy(c->tok, tok, len);
    c->tok[len] = '\0';
    *out = c;

out:
    json_decref(hdr);
    json_decref(payload);
    free(buf);
    if (reasonp)
        *reasonp = reason;
    return st;
}

/* ---- claims accessors ---- */

struct tp_jwt_claims *tp_jwt_claims_get(struct tp_jwt_claims *c)
{
    atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void tp_jwt_claims_put(struct tp_jwt_claims *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
        return;
    json_decref(c->payload);
    free(c);
}

const char *tp_jwt_claims_str(const struct tp_jwt_claims *c, const char *name, size_t *len)
{
    json_t *j = json_object_get(c->payload, name);

    if (!j || !json_is_string(j))
        return NULL;
    if (len)
        *len = json_string_length(j);
    return json_string_value(j);
}

const char *tp_jwt_claims_subject(const struct tp_jwt_claims *c, size_t *len)
{
    return tp_jwt_claims_str(c, "sub", len);
}

int64_t tp_jwt_claims_exp(const struct tp_jwt_claims *c)
{
    return c->exp;
}

/* One JSON scalar against the configured text: strings byte for byte, integers and booleans as written. */
static bool scalar_is(json_t *j, const char *value, size_t value_len)
{
    char num[24];
    int n;

    switch (json_typeof(j)) {
    case JSON_STRING:
        return json_string_length(j) == value_len && memcmp(json_string_value(j), value, value_len) == 0;
    case JSON_INTEGER:
        n = snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        return n > 0 && (size_t)n == value_len && memcmp(num, value, value_len) == 0;
    case JSON_TRUE:
        return value_len == 4 && memcmp(value, "true", 4) == 0;
    case JSON_FALSE:
        return value_len == 5 && memcmp(value, "false", 5) == 0;
    default:
        return false;
    }
}

bool tp_jwt_claims_match(const struct tp_jwt_claims *c, const char *name, const char *value, size_t value_len)
{
    json_t *j = json_object_get(c->payload, name), *e;
    size_t i;

    if (!j)
        return false;
    if (json_is_array(j)) {
        json_array_foreach(j, i, e)
        {
            if (scalar_is(e, value, value_len))
                return true;
        }
        return false;
    }
    if (json_is_string(j) && strcmp(name, "scope") == 0) {
        /* RFC 6749 3.3: scope is a list of space-delimited words (empty ones never match) */
        const char *s = json_string_value(j), *end = s + json_string_length(j);
        while (s < end) {
            const char *w = memchr(s, ' ', (size_t)(end - s));
            size_t wl = w ? (size_t)(w - s) : (size_t)(end - s);
            if (wl && wl == value_len && memcmp(s, value, wl) == 0)
                return true;
            s += wl + 1;
        }
        return false;
    }
    return scalar_is(j, value, value_len);
}
