/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of JWT verification, JWKS loading and the verified-token cache
 * (src/auth): the worked examples of RFC 7515 appendix A (A.1 HS256, A.2
 * RS256, A.3 ES256, A.4 ES512 which turnpike refuses) and RFC 8037 A.4
 * (Ed25519) with their published keys, then every refusal the module
 * promises, then the cache.
 *
 * Tokens for the refusal cases are made here with HMAC (the A.1 key), so each
 * case changes exactly one thing in an otherwise valid token. The cache
 * tests #include jwt_cache.c to reach its buckets (h2o style): a 64-bit hash
 * collision cannot be produced through the API, so one is planted.
 * Tokens from an independent implementation for every algorithm are in
 * tests/integration/test_auth_vectors.py.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/jwt_cache.c"
#include "tap.h"

/* ---- RFC 7515 appendix A and RFC 8037 A.4, transcribed ---- */

/* A.1-A.3 share this payload: {"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true} */
#define RFC_PAYLOAD                                                                                          \
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
#define RFC_EXP 1300819380
#define RFC_NOW (RFC_EXP - 10)

static const char a1_token[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9." RFC_PAYLOAD ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
#define A1_K   "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
#define A1_JWK "{\"kty\":\"oct\",\"kid\":\"hmac\",\"k\":\"" A1_K "\"}"

static const char a2_token[] =
    "eyJhbGciOiJSUzI1NiJ9." RFC_PAYLOAD ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7"
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4"
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K"
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv"
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB"
    "p0igcN_IoypGlUPQGe77Rw";
#define A2_N                                                                                                 \
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-" \
    "SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"        \
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-"                   \
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
#define A2_JWK "{\"kty\":\"RSA\",\"kid\":\"rsa\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"}"

static const char a3_token[] =
    "eyJhbGciOiJFUzI1NiJ9." RFC_PAYLOAD ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA"
    "pmWQxfKTUJqPP3-Kg6NU1Q";
#define A3_X   "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"
#define A3_Y   "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
#define A3_JWK "{\"kty\":\"EC\",\"kid\":\"ec\",\"crv\":\"P-256\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}"

static const char a4_token[] = "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA."
                               "AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZq"
                               "wqT2SI-KGDKB34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8Kp"
                               "EHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn";
#define A4_JWK                                                                                               \
    "{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":"                                                               \
    "\"AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk\","          \
    "\"y\":\"ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2\"}"

/* RFC 8037 A.4: the payload is the text "Example of Ed25519 signing", not a claims set */
static const char ed_token[] =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
#define ED_JWK                                                                                               \
    "{\"kty\":\"OKP\",\"kid\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"                             \
    "7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"

/* ---- helpers ---- */

static unsigned char a1_key[64];

/* A token with header <hdr> and payload <pay> (JSON text), HMAC-SHA256 with the A.1 key. */
static char *hs256(const char *hdr, const char *pay)
{
    size_t hl = strlen(hdr), pl = strlen(pay);
    char *t = malloc(2 * (hl + pl) + 128);
    unsigned char mac[32];
    unsigned int ml = 32;
    size_t n;

    auth_b64url_encode((const unsigned char *)hdr, hl, t);
    n = strlen(t);
    t[n++] = '.';
    auth_b64url_encode((const unsigned char *)pay, pl, t + n);
    n = strlen(t);
    HMAC(EVP_sha256(), a1_key, sizeof(a1_key), (unsigned char *)t, n, mac, &ml);
    t[n++] = '.';
    auth_b64url_encode(mac, ml, t + n);
    return t;
}

static struct tp_jwks *load(const char *json, char *err, size_t errlen)
{
    return tp_jwks_load_mem(json, strlen(json), err, errlen, NULL);
}

static struct tp_jwt_verifier *verifier(const char *keys_json, const struct tp_jwt_opts *o)
{
    char err[256];
    struct tp_jwks *ks = load(keys_json, err, sizeof(err));
    struct tp_jwt_opts none = {0};

    if (!ks) {
        tap_diag("jwks: %s", err);
        return NULL;
    }
    struct tp_jwt_verifier *v = tp_jwt_verifier_create(ks, o ? o : &none, NULL);
    tp_jwks_put(ks);
    return v;
}

/* Verifies <tok> and returns the status; the reason goes to *<why> when given. */
static enum tp_auth_status check(const struct tp_jwt_verifier *v, const char *tok, int64_t now,
                                 const char **why)
{
    struct tp_jwt_claims *c = NULL;
    const char *reason = NULL;
    enum tp_auth_status st = tp_jwt_verify(v, tok, strlen(tok), now, &c, &reason);

    if ((st == TP_AUTH_OK) != (c != NULL))
        tap_diag("claims and status disagree");
    tp_jwt_claims_put(c);
    if (why)
        *why = reason;
    return st;
}

#define ALL_JWKS "{\"keys\":[" A1_JWK "," A2_JWK "," A3_JWK "," ED_JWK "]}"

/* ---- the RFC examples ---- */

static void test_rfc_examples(void)
{
    struct tp_jwt_verifier *v = verifier(ALL_JWKS, NULL);
    struct tp_jwt_claims *c = NULL;
    const char *why;

    if (!v)
        return;
    is_int(tp_jwt_verify(v, a1_token, strlen(a1_token), RFC_NOW, &c, &why), TP_AUTH_OK, "A.1 HS256 verifies");
    is_str(why, "ok", "A.1 reason");
    if (c) {
        is_str(tp_jwt_claims_str(c, "iss", NULL), "joe", "A.1 iss claim");
        ok(tp_jwt_claims_match(c, "http://example.com/is_root", "true", 4),
           "A.1 boolean claim matches \"true\"");
        ok(!tp_jwt_claims_match(c, "http://example.com/is_root", "false", 5),
           "A.1 boolean claim is not false");
        is_int(tp_jwt_claims_exp(c), RFC_EXP, "A.1 exp");
        ok(tp_jwt_claims_subject(c, NULL) == NULL, "A.1 has no sub");
    }
    tp_jwt_claims_put(c);
    is_int(check(v, a2_token, RFC_NOW, &why), TP_AUTH_OK, "A.2 RS256 verifies (%s)", why);
    is_int(check(v, a3_token, RFC_NOW, &why), TP_AUTH_OK, "A.3 ES256 verifies (%s)", why);
    /* RFC 8037 A.4 signs a text, not a claims set: the signature holds, then the payload is refused */
    is_int(check(v, ed_token, RFC_NOW, &why), TP_AUTH_INVALID, "RFC 8037 A.4 EdDSA: not a JWT");
    is_str(why, "payload is not a JSON object", "RFC 8037 A.4: signature accepted, payload refused");
    {
        char bad[sizeof(ed_token)];
        memcpy(bad, ed_token, sizeof(bad));
        bad[sizeof(bad) - 8] = bad[sizeof(bad) - 8] == 'A' ? 'B' : 'A';
        is_int(check(v, bad, RFC_NOW, &why), TP_AUTH_INVALID, "RFC 8037 A.4 with a changed signature");
        is_str(why, "signature does not verify", "... is a signature failure");
    }
    /* A.4: ES512 is not offered, neither as a key nor as an alg */
    is_int(check(v, a4_token, RFC_NOW, &why), TP_AUTH_INVALID, "A.4 ES512 is refused");
    is_str(why, "alg not supported", "A.4 reason");
    tp_jwt_verifier_destroy(v);

    char err[256];
    struct tp_jwks *ks = load("{\"keys\":[" A4_JWK "]}", err, sizeof(err));
    ok(ks == NULL && strstr(err, "no usable key") && strstr(err, "P-521"),
       "a set with only the A.4 P-521 key: %s", err);
    ks = load("{\"keys\":[" A4_JWK "," A3_JWK "]}", err, sizeof(err));
    ok(ks && tp_jwks_count(ks) == 1 && tp_jwks_note(ks, 0) && strstr(tp_jwks_note(ks, 0), "P-521") &&
           !tp_jwks_note(ks, 1),
       "the P-521 key beside a P-256 one is skipped with a note");
    if (ks)
        tap_diag("note: %s", tp_jwks_note(ks, 0));
    tp_jwks_put(ks);
}

/* ---- refusals ---- */

#define HS_HDR  "{\"alg\":\"HS256\",\"kid\":\"hmac\"}"
#define GOOD    "{\"sub\":\"alice\",\"iss\":\"https://id.example\",\"aud\":\"orders\",\"exp\":2000000000}"
#define NOW     1900000000
#define ISSUER  "https://id.example"
#define OTHER_S "{\"sub\":\"alice\",\"iss\":\"https://id.example\",\"aud\":\"orders\",\"exp\":"

static void refused(const struct tp_jwt_verifier *v, const char *tok, enum tp_auth_status want,
                    const char *reason, const char *what)
{
    const char *why = NULL;
    enum tp_auth_status st = check(v, tok, NOW, &why);

    is_int(st, want, "%s: %s", what, tp_auth_status_name(want));
    if (reason && !(why && strcmp(why, reason) == 0))
        tap_diag("  reason \"%s\", expected \"%s\"", why ? why : "(null)", reason);
    ok(!reason || (why && strcmp(why, reason) == 0), "%s: reason \"%s\"", what, reason ? reason : "-");
}

static void refused_hs(const struct tp_jwt_verifier *v, const char *hdr, const char *pay,
                       enum tp_auth_status want, const char *reason, const char *what)
{
    char *t = hs256(hdr, pay);
    refused(v, t, want, reason, what);
    free(t);
}

static void test_refusals(void)
{
    static const char *const aud[] = {"billing", "orders"};
    struct tp_jwt_opts o = {.issuer = ISSUER, .audiences = aud, .n_audiences = 2, .leeway_s = 30};
    struct tp_jwt_verifier *v = verifier(ALL_JWKS, &o);
    char *t, buf[20000];
    size_t n;

    if (!v)
        return;
    refused_hs(v, HS_HDR, GOOD, TP_AUTH_OK, "ok", "the reference token");
    refused_hs(v, "{\"alg\":\"HS256\"}", GOOD, TP_AUTH_OK, "ok", "no kid: the only oct key");

    /* header */
    refused_hs(v, "{\"alg\":\"none\"}", GOOD, TP_AUTH_INVALID, "alg none is refused", "alg none");
    refused(v, "eyJhbGciOiJub25lIn0.eyJleHAiOjIwMDAwMDAwMDB9.", TP_AUTH_INVALID,
            "no signature (unsecured JWS)", "unsecured JWS, empty signature");
    refused_hs(v, "{\"alg\":\"NONE\"}", GOOD, TP_AUTH_INVALID, "alg not supported", "alg NONE");
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":\"hmac\",\"crit\":[\"exp\"],\"exp\":1}", GOOD, TP_AUTH_INVALID,
               "crit header: no extension is understood", "crit with a member");
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":\"hmac\",\"crit\":[]}", GOOD, TP_AUTH_INVALID,
               "crit header: no extension is understood", "crit, empty");
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":\"nope\"}", GOOD, TP_AUTH_INVALID,
               "kid not found in the key set", "kid not found");
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":7}", GOOD, TP_AUTH_INVALID, "kid is not a string",
               "numeric kid");
    refused_hs(v, "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", GOOD, TP_AUTH_INVALID,
               "header is not a JSON object", "duplicate header member");
    refused_hs(v, "[\"HS256\"]", GOOD, TP_AUTH_INVALID, "header is not a JSON object", "header is an array");
    refused_hs(v, "{\"alg\":\"ES512\",\"kid\":\"ec\"}", GOOD, TP_AUTH_INVALID, "alg not supported", "ES512");

    /* key-type confusion: HS256 naming an RSA, EC or OKP key (HMAC keyed with the public key) */
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":\"rsa\"}", GOOD, TP_AUTH_INVALID,
               "alg does not fit the key named by kid", "HS256 with the RSA key's kid");
    refused_hs(v, "{\"alg\":\"HS256\",\"kid\":\"ec\"}", GOOD, TP_AUTH_INVALID,
               "alg does not fit the key named by kid", "HS256 with the EC key's kid");
    refused_hs(v, "{\"alg\":\"RS256\",\"kid\":\"hmac\"}", GOOD, TP_AUTH_INVALID,
               "alg does not fit the key named by kid", "RS256 with the oct key's kid");
    {
        /* a set of public keys only: no kid, HS256 finds no key at all */
        struct tp_jwt_verifier *pub = verifier("{\"keys\":[" A2_JWK "]}", NULL);
        refused_hs(pub, "{\"alg\":\"HS256\"}", GOOD, TP_AUTH_INVALID, "no key fits the alg",
                   "HS256 against an RSA-only set");
        tp_jwt_verifier_destroy(pub);
        /* several keys of one type: a token without kid is ambiguous */
        pub = verifier("{\"keys\":[" A1_JWK ",{\"kty\":\"oct\",\"k\":\"" A1_K "\"}]}", NULL);
        refused_hs(pub, "{\"alg\":\"HS256\"}", GOOD, TP_AUTH_INVALID, "no kid, and several keys fit the alg",
                   "no kid, two oct keys");
        tp_jwt_verifier_destroy(pub);
        /* a JWK "alg" pins the key */
        pub = verifier("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hmac\",\"alg\":\"HS512\",\"k\":\"" A1_K "\"}]}",
                       NULL);
        refused_hs(pub, HS_HDR, GOOD, TP_AUTH_INVALID, "alg does not fit the key named by kid",
                   "HS256 on a key pinned to HS512");
        tp_jwt_verifier_destroy(pub);
    }

    /* shape and base64url */
    t = hs256(HS_HDR, GOOD);
    n = strlen(t);
    snprintf(buf, sizeof(buf), "%s=", t);
    refused(v, buf, TP_AUTH_INVALID, "signature is not unpadded base64url", "padding on the signature");
    snprintf(buf, sizeof(buf), "%s", t);
    *strchr(buf, '.') = '\0';
    snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), "==%s", strchr(t, '.'));
    refused(v, buf, TP_AUTH_INVALID, "header is not unpadded base64url", "padding on the header");
    snprintf(buf, sizeof(buf), "%s", t);
    buf[2] = '+';
    refused(v, buf, TP_AUTH_INVALID, "header is not unpadded base64url", "'+' (base64, not base64url)");
    snprintf(buf, sizeof(buf), "%s", t);
    {
        /* 43 characters carry 32 bytes and 2 spare bits, which must be zero: setting one gives
         * another text for the same bytes, refused as such before any MAC is computed */
        static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        buf[n - 1] = al[(strchr(al, buf[n - 1]) - al) ^ 1];
        refused(v, buf, TP_AUTH_INVALID, "signature is not unpadded base64url", "non-zero spare bits");
    }
    snprintf(buf, sizeof(buf), "%s.%s", t, "AAAA");
    refused(v, buf, TP_AUTH_INVALID, "more than three parts (JWE and JSON serializations are not supported)",
            "four parts");
    refused(v, "abc.def", TP_AUTH_INVALID, "not three dot-separated parts", "two parts");
    refused(v, "..", TP_AUTH_INVALID, "no signature (unsecured JWS)", "empty parts");
    refused(v, "..x", TP_AUTH_INVALID, "empty header or payload", "empty header and payload");
    refused(v, "", TP_AUTH_MISSING, "empty token", "empty token");
    snprintf(buf, sizeof(buf), "%s", t);
    buf[n - 3] = '*';
    refused(v, buf, TP_AUTH_INVALID, "signature is not unpadded base64url", "'*' in the signature");
    free(t);

    /* signature */
    t = hs256(HS_HDR, GOOD);
    n = strlen(t);
    t[n - 5] = t[n - 5] == 'x' ? 'y' : 'x';
    refused(v, t, TP_AUTH_INVALID, "signature does not verify", "one signature character changed");
    t[n - 3] = '\0'; /* 40 characters: 30 bytes */
    refused(v, t, TP_AUTH_INVALID, "signature length wrong for the alg", "HMAC cut short");
    free(t);
    {
        char es[sizeof(a3_token) + 64];
        struct tp_jwt_verifier *ev = verifier(ALL_JWKS, NULL);
        /* 86 characters = 64 bytes; 84 = 63 bytes; 88 = 66 bytes */
        snprintf(es, sizeof(es), "%.*s", (int)strlen(a3_token) - 2, a3_token);
        refused(ev, es, TP_AUTH_INVALID, "signature length wrong for the alg", "ES256 signature of 63 bytes");
        snprintf(es, sizeof(es), "%sAA", a3_token);
        refused(ev, es, TP_AUTH_INVALID, "signature length wrong for the alg", "ES256 signature of 65 bytes");
        /* the same r and s as DER (what a non-JOSE signer emits): 70+ bytes, refused by length */
        unsigned char raw[64], der[80];
        long rl = auth_b64url_decode(strrchr(a3_token, '.') + 1, 86, raw);
        size_t dl = 0;
        der[dl++] = 0x30;
        der[dl++] = 0;
        for (int half = 0; half < 2 && rl == 64; half++) {
            const unsigned char *x = raw + 32 * half;
            der[dl++] = 0x02;
            der[dl++] = (unsigned char)(32 + (x[0] >> 7));
            if (x[0] & 0x80)
                der[dl++] = 0;
            memcpy(der + dl, x, 32);
            dl += 32;
        }
        der[1] = (unsigned char)(dl - 2);
        char derb[120];
        auth_b64url_encode(der, dl, derb);
        snprintf(es, sizeof(es), "%.*s%s", (int)(strrchr(a3_token, '.') + 1 - a3_token), a3_token, derb);
        refused(ev, es, TP_AUTH_INVALID, "signature length wrong for the alg", "ES256 signature in DER form");
        /* r || s swapped */
        unsigned char sw[64];
        char swb[100];
        memcpy(sw, raw + 32, 32);
        memcpy(sw + 32, raw, 32);
        auth_b64url_encode(sw, 64, swb);
        snprintf(es, sizeof(es), "%.*s%s", (int)(strrchr(a3_token, '.') + 1 - a3_token), a3_token, swb);
        refused(ev, es, TP_AUTH_INVALID, "signature does not verify", "ES256 with r and s swapped");
        /* r = s = 0 (the "psychic signature") */
        memset(sw, 0, sizeof(sw));
        auth_b64url_encode(sw, 64, swb);
        snprintf(es, sizeof(es), "%.*s%s", (int)(strrchr(a3_token, '.') + 1 - a3_token), a3_token, swb);
        refused(ev, es, TP_AUTH_INVALID, "signature does not verify", "ES256 with r = s = 0");
        /* RS256 signature one byte short */
        char rs[sizeof(a2_token)];
        snprintf(rs, sizeof(rs), "%.*s", (int)strlen(a2_token) - 2, a2_token);
        refused(ev, rs, TP_AUTH_INVALID, "signature length wrong for the key", "RS256 signature cut short");
        tp_jwt_verifier_destroy(ev);
    }

    /* claims */
    refused_hs(v, HS_HDR, OTHER_S "1899999970}", TP_AUTH_EXPIRED, "exp has passed",
               "exp 30 s ago (leeway 30)");
    refused_hs(v, HS_HDR, OTHER_S "1899999971}", TP_AUTH_OK, "ok", "exp 29 s ago (leeway 30)");
    refused_hs(v, HS_HDR, OTHER_S "1899999000.5}", TP_AUTH_EXPIRED, "exp has passed", "fractional exp");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"aud\":\"orders\"}", TP_AUTH_INVALID,
               "exp missing", "no exp");
    refused_hs(v, HS_HDR, OTHER_S "\"2000000000\"}", TP_AUTH_INVALID, "exp, nbf or iat is not a NumericDate",
               "exp as a string");
    refused_hs(v, HS_HDR, OTHER_S "1e300}", TP_AUTH_INVALID, "exp, nbf or iat is not a NumericDate",
               "exp out of range");
    refused_hs(v, HS_HDR, OTHER_S "2000000000,\"nbf\":1900000031}", TP_AUTH_INVALID, "nbf is in the future",
               "nbf 31 s ahead");
    refused_hs(v, HS_HDR, OTHER_S "2000000000,\"nbf\":1900000030}", TP_AUTH_OK, "ok",
               "nbf 30 s ahead (leeway)");
    refused_hs(v, HS_HDR, OTHER_S "2000000000,\"iat\":1900000100}", TP_AUTH_INVALID, "iat is in the future",
               "iat ahead");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://evil.example\",\"aud\":\"orders\",\"exp\":2000000000}",
               TP_AUTH_INVALID, "iss is not the configured issuer", "wrong iss");
    refused_hs(v, HS_HDR, "{\"aud\":\"orders\",\"exp\":2000000000}", TP_AUTH_INVALID, "iss missing",
               "no iss");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"aud\":\"shipping\",\"exp\":2000000000}",
               TP_AUTH_INVALID, "aud is not an accepted audience", "wrong aud");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"aud\":[\"x\",\"y\"],\"exp\":2000000000}",
               TP_AUTH_INVALID, "aud holds no accepted audience", "wrong aud array");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"aud\":[\"x\",\"billing\"],\"exp\":2000000000}",
               TP_AUTH_OK, "ok", "aud array holding an accepted audience");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"exp\":2000000000}", TP_AUTH_INVALID,
               "aud missing", "no aud");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://id.example\",\"aud\":[1],\"exp\":2000000000}", TP_AUTH_INVALID,
               "aud array holds a non-string", "aud array with a number");
    refused_hs(v, HS_HDR, OTHER_S "1}", TP_AUTH_EXPIRED, "exp has passed", "expired");
    refused_hs(v, HS_HDR, "{\"iss\":\"https://evil.example\",\"aud\":\"orders\",\"exp\":1}", TP_AUTH_INVALID,
               "iss is not the configured issuer", "expired and wrong iss: not ours first");
    refused_hs(v, HS_HDR, "{\"sub\":5,\"iss\":\"https://id.example\",\"aud\":\"orders\",\"exp\":2000000000}",
               TP_AUTH_INVALID, "iss or sub is not a string", "numeric sub");
    refused_hs(v, HS_HDR, "[1,2]", TP_AUTH_INVALID, "payload is not a JSON object", "payload is an array");
    refused_hs(v, HS_HDR, "{\"exp\":2000000000,\"exp\":1}", TP_AUTH_INVALID, "payload is not a JSON object",
               "duplicate exp in the payload");
    {
        /* a forged token says nothing about its claims: an expired payload with a bad MAC is INVALID */
        t = hs256(HS_HDR, OTHER_S "1}");
        t[strlen(t) - 5] ^= 1;
        refused(v, t, TP_AUTH_INVALID, NULL, "expired claims under a bad signature");
        free(t);
    }

    /* size limit */
    {
        struct tp_jwt_opts small = o;
        small.max_token_len = 200;
        struct tp_jwt_verifier *sv = verifier(ALL_JWKS, &small);
        char pay[400];
        snprintf(pay, sizeof(pay), OTHER_S "2000000000,\"pad\":\"%0120d\"}", 0);
        t = hs256(HS_HDR, pay);
        refused(sv, t, TP_AUTH_INVALID, "token longer than the limit", "token over max_token_len");
        free(t);
        t = hs256(HS_HDR, GOOD);
        ok(strlen(t) <= 200, "reference token fits in 200 bytes");
        refused(sv, t, TP_AUTH_OK, "ok", "token under max_token_len");
        free(t);
        tp_jwt_verifier_destroy(sv);
    }
    tp_jwt_verifier_destroy(v);
}

/* ---- JWKS loading ---- */

static void jwks_refused(const char *json, const char *needle, const char *what)
{
    char err[256] = "";
    int e = 0;
    struct tp_jwks *ks = tp_jwks_load_mem(json, strlen(json), err, sizeof(err), &e);

    ok(!ks && e == -EINVAL && strstr(err, needle), "jwks %s: \"%s\"", what, err);
    tp_jwks_put(ks);
}

static void test_jwks(void)
{
    char err[256], big[2048];
    struct tp_jwks *ks;
    unsigned char n1024[128];

    jwks_refused("{\"keys\":[" A1_JWK "", "line 1", "truncated JSON");
    jwks_refused("[]", "\"keys\" member is an array", "not an object");
    jwks_refused("{\"keys\":{}}", "\"keys\" member is an array", "keys not an array");
    jwks_refused("{\"keys\":[]}", "no usable key", "empty set");
    jwks_refused("{\"keys\":[" A1_JWK "],\"keys\":[]}", "duplicate", "duplicate member");
    jwks_refused("{\"keys\":[{\"kid\":\"a\"}]}", "key 1 (kid \"a\"): \"kty\" is missing", "no kty");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}", "\"n\" is missing", "RSA without n");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"x\",\"n\":\"" A2_N "=\",\"e\":\"AQAB\"}]}",
                 "\"n\" is not unpadded base64url", "padded n");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"" A2_N "\",\"e\":\"AQAB\",\"d\":\"AQAB\"}]}",
                 "private member \"d\"", "RSA private key");
    jwks_refused("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y
                 "\",\"d\":\"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI\"}]}",
                 "private member \"d\"", "EC private key");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"" A2_N "\",\"e\":\"AQ\"}]}", "exponent", "e = 1");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"n\":\"" A2_N "\",\"e\":\"AQAA\"}]}", "exponent", "even e");
    memset(n1024, 0xc5, sizeof(n1024));
    auth_b64url_encode(n1024, sizeof(n1024), err);
    snprintf(big, sizeof(big), "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\"}]}", err);
    jwks_refused(big, "modulus of 1024 bits", "RSA 1024");
    jwks_refused("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X "\",\"y\":\"" A3_X "\"}]}",
                 "not a point of P-256", "EC point off the curve");
    jwks_refused("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" A3_X "\",\"y\":\"AAAA\"}]}",
                 "must be 32 bytes each", "EC coordinate too short");
    jwks_refused("{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}]}",
                 "P-384 coordinates must be 48 bytes", "P-256 coordinates as P-384");
    jwks_refused("{\"keys\":[{\"kty\":\"EC\",\"x\":\"" A3_X "\",\"y\":\"" A3_Y "\"}]}", "needs \"crv\"",
                 "EC without crv");
    jwks_refused("{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"" A3_X "AAA\"}]}",
                 "is 32 bytes, got 34", "Ed25519 key of 34 bytes");
    jwks_refused("{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}", "at least 32", "short HMAC secret");
    jwks_refused("{\"keys\":[{\"kty\":\"RSA\",\"alg\":\"HS256\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"}]}",
                 "alg \"HS256\" does not fit", "RSA key declared HS256");
    jwks_refused("{\"keys\":[{\"kty\":\"oct\",\"alg\":\"RS256\",\"k\":\"" A1_K "\"}]}",
                 "alg \"RS256\" does not fit", "oct key declared RS256");
    jwks_refused("{\"keys\":[" A1_JWK "," A1_JWK "]}", "same kid", "duplicate kid");
    jwks_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":1,\"k\":\"" A1_K "\"}]}", "\"kid\" must be a string",
                 "numeric kid");
    jwks_refused("{\"keys\":[{\"kty\":\"oct\",\"use\":[\"sig\"],\"k\":\"" A1_K "\"}]}", "\"use\" must be",
                 "use not a string");
    jwks_refused("{\"keys\":[7]}", "key 1 (no kid): not a JSON object", "a number as a key");

    /* skipped, with notes */
    ks =
        load("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"},"
             "{\"kty\":\"RSA\",\"kid\":\"oaep\",\"alg\":\"RSA-OAEP\",\"n\":\"" A2_N "\",\"e\":\"AQAB\"},"
             "{\"kty\":\"oct\",\"key_ops\":[\"sign\"],\"k\":\"" A1_K "\"},"
             "{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"" A3_X "\"},"
             "{\"kty\":\"foo\"}," A2_JWK "]}",
             err, sizeof(err));
    ok(ks && tp_jwks_count(ks) == 1, "one usable key among six");
    for (size_t i = 0; ks && tp_jwks_note(ks, i); i++)
        tap_diag("note %zu: %s", i, tp_jwks_note(ks, i));
    ok(ks && tp_jwks_note(ks, 4) && !tp_jwks_note(ks, 5), "five notes");
    ok(ks && strstr(tp_jwks_note(ks, 0), "kid \"enc\"") && strstr(tp_jwks_note(ks, 0), "\"use\""),
       "the note names the key and the reason");
    tp_jwks_put(ks);

    /* the same kid twice, once on a skipped key: only usable keys must be unique */
    ks = load("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"rsa\",\"use\":\"enc\",\"n\":\"" A2_N
              "\",\"e\":\"AQAB\"}," A2_JWK "]}",
              err, sizeof(err));
    ok(ks && tp_jwks_count(ks) == 1, "a kid shared with a skipped key is fine");
    tp_jwks_put(ks);

    /* files */
    ks = tp_jwks_load_file("/nonexistent/jwks.json", err, sizeof(err), NULL);
    ok(!ks && strstr(err, "/nonexistent/jwks.json: No such file"), "missing file: %s", err);
    char path[] = "/tmp/tp_jwks_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) {
        const char *j = "{\"keys\":[" A3_JWK "]}";
        ok(write(fd, j, strlen(j)) == (ssize_t)strlen(j), "wrote a JWKS file");
        close(fd);
        ks = tp_jwks_load_file(path, err, sizeof(err), NULL);
        ok(ks && tp_jwks_count(ks) == 1, "JWKS file loads");
        tp_jwks_put(ks);
        unlink(path);
    }
    /* the keyset outlives its loader's reference while a verifier holds one */
    ks = load(ALL_JWKS, err, sizeof(err));
    struct tp_jwt_verifier *v = ks ? tp_jwt_verifier_create(ks, &(struct tp_jwt_opts){0}, NULL) : NULL;
    tp_jwks_put(ks);
    ok(v && check(v, a3_token, RFC_NOW, NULL) == TP_AUTH_OK, "a verifier keeps its keyset alive");
    tp_jwt_verifier_destroy(v);
    int e = 0;
    ok(!tp_jwt_verifier_create(NULL, &(struct tp_jwt_opts){0}, &e) && e == -EINVAL, "verifier without keys");
    ks = load(ALL_JWKS, err, sizeof(err));
    ok(!tp_jwt_verifier_create(ks, &(struct tp_jwt_opts){.leeway_s = -1}, &e) && e == -EINVAL,
       "negative leeway");
    tp_jwks_put(ks);
}

/* ---- claims ---- */

static void test_claims(void)
{
    struct tp_jwt_verifier *v = verifier(ALL_JWKS, NULL);
    struct tp_jwt_claims *c = NULL;
    char *t = hs256(HS_HDR, "{\"sub\":\"alice\",\"exp\":2000000000,\"scope\":\"orders:read  orders:write\","
                            "\"roles\":[\"admin\",\"ops\",3],\"tenant\":\"acme\",\"level\":42,\"x\":1.5,"
                            "\"nested\":{\"a\":\"b\"},\"e\":\"\"}");
    size_t len = 0;

    is_int(tp_jwt_verify(v, t, strlen(t), NOW, &c, NULL), TP_AUTH_OK, "claims token verifies");
    if (!c)
        goto out;
    is_str(tp_jwt_claims_subject(c, &len), "alice", "sub");
    is_int(len, 5, "sub length");
    is_str(tp_jwt_claims_str(c, "tenant", NULL), "acme", "string claim");
    ok(!tp_jwt_claims_str(c, "level", NULL), "a number is not a string claim");
    ok(!tp_jwt_claims_str(c, "missing", NULL), "absent claim");
    ok(tp_jwt_claims_match(c, "scope", "orders:read", 11), "scope contains orders:read");
    ok(tp_jwt_claims_match(c, "scope", "orders:write", 12), "scope contains orders:write");
    ok(!tp_jwt_claims_match(c, "scope", "orders", 6), "scope words are whole words");
    ok(!tp_jwt_claims_match(c, "scope", "", 0), "an empty word between two spaces does not count");
    ok(tp_jwt_claims_match(c, "roles", "ops", 3), "array claim contains ops");
    ok(tp_jwt_claims_match(c, "roles", "3", 1), "array claim contains the integer 3");
    ok(!tp_jwt_claims_match(c, "roles", "root", 4), "array claim lacks root");
    ok(tp_jwt_claims_match(c, "tenant", "acme", 4), "string claim equals");
    ok(!tp_jwt_claims_match(c, "tenant", "acm", 3), "string claim prefix is not equal");
    ok(!tp_jwt_claims_match(c, "tenant", "acme corp", 9), "longer value is not equal");
    ok(tp_jwt_claims_match(c, "level", "42", 2), "integer claim equals its decimal text");
    ok(!tp_jwt_claims_match(c, "level", "042", 3), "integer text must be as written");
    ok(!tp_jwt_claims_match(c, "x", "1.5", 3), "real claims never match");
    ok(!tp_jwt_claims_match(c, "nested", "b", 1), "object claims never match");
    ok(!tp_jwt_claims_match(c, "missing", "x", 1), "absent claim never matches");
    ok(tp_jwt_claims_match(c, "e", "", 0), "empty string equals empty value");
    ok(!tp_jwt_claims_match(c, "sub", "alice bob", 9) && tp_jwt_claims_match(c, "sub", "alice", 5),
       "only scope is split on spaces");
    /* references: the claims outlive the verifier */
    struct tp_jwt_claims *c2 = tp_jwt_claims_get(c);
    tp_jwt_claims_put(c);
    tp_jwt_verifier_destroy(v);
    v = NULL;
    is_str(tp_jwt_claims_subject(c2, NULL), "alice", "claims outlive their verifier");
    tp_jwt_claims_put(c2);
out:
    free(t);
    tp_jwt_verifier_destroy(v);
}

/* ---- bearer and status names ---- */

static void test_bearer(void)
{
    const char *tok;
    size_t len;

    ok(tp_auth_bearer("Bearer abc.def", 14, &tok, &len) == 0 && len == 7 && memcmp(tok, "abc.def", 7) == 0,
       "Bearer token");
    ok(tp_auth_bearer("bEaReR   abc  \t", 15, &tok, &len) == 0 && len == 3 && memcmp(tok, "abc", 3) == 0,
       "scheme in any case, spaces around");
    is_int(tp_auth_bearer("Basic dXNlcjpwYXNz", 18, &tok, &len), -ENOENT, "Basic is not Bearer");
    is_int(tp_auth_bearer("Bearer", 6, &tok, &len), -ENOENT, "scheme alone");
    is_int(tp_auth_bearer("Bearer    ", 10, &tok, &len), -ENOENT, "scheme and spaces");
    is_int(tp_auth_bearer("Bearerabc", 9, &tok, &len), -ENOENT, "no space after the scheme");
    is_str(tp_auth_status_name(TP_AUTH_MISSING), "missing", "status name missing");
    is_str(tp_auth_status_name(TP_AUTH_FORBIDDEN), "forbidden", "status name forbidden");
    is_str(tp_auth_status_name(TP_AUTH__COUNT), "internal", "out-of-range status");
}

/* ---- cache ---- */

static char *token_n(int i, int64_t exp)
{
    char pay[160];
    snprintf(pay, sizeof(pay), "{\"sub\":\"user-%d\",\"exp\":%lld}", i, (long long)exp);
    return hs256(HS_HDR, pay);
}

static void test_cache(void)
{
    struct tp_jwt_opts o = {.leeway_s = 5};
    struct tp_jwt_verifier *v = verifier(ALL_JWKS, &o), *v2 = verifier(ALL_JWKS, &o);
    struct tp_jwt_cache *c = tp_jwt_cache_create(64, NULL);
    struct tp_jwt_cache_stats st;
    struct tp_jwt_claims *cl = NULL;
    const char *why = NULL;
    char *t = token_n(1, NOW + 100);

    if (!v || !v2 || !c)
        goto out;
    /* hit */
    is_int(tp_jwt_authenticate(v, c, t, strlen(t), NOW, &cl, &why), TP_AUTH_OK, "first use verifies");
    is_str(why, "ok", "... by a full verification");
    tp_jwt_claims_put(cl);
    is_int(tp_jwt_authenticate(v, c, t, strlen(t), NOW + 1, &cl, &why), TP_AUTH_OK, "second use");
    is_str(why, "ok (cached)", "... from the cache");
    is_str(cl ? tp_jwt_claims_subject(cl, NULL) : NULL, "user-1", "cached claims");
    tp_jwt_claims_put(cl);
    tp_jwt_cache_stats(c, &st);
    ok(st.hits == 1 && st.misses == 1 && st.entries == 1, "stats: 1 hit, 1 miss, 1 entry");
    /* another verifier (another provider, or a reloaded one) never sees the entry */
    ok(!tp_jwt_cache_lookup(c, v2, t, strlen(t), NOW), "another verifier misses");
    /* a different token of the same length misses */
    {
        char *t2 = strdup(t);
        t2[strlen(t2) - 1] = t2[strlen(t2) - 1] == 'A' ? 'B' : 'A';
        ok(!tp_jwt_cache_lookup(c, v, t2, strlen(t2), NOW), "a changed token misses");
        ok(!tp_jwt_cache_lookup(c, v, t, strlen(t) - 1, NOW), "a prefix of the token misses");
        free(t2);
    }
    /* expiry: valid while now < exp + leeway */
    cl = tp_jwt_cache_lookup(c, v, t, strlen(t), NOW + 104);
    ok(cl != NULL, "hit 1 s before exp + leeway");
    tp_jwt_claims_put(cl);
    ok(!tp_jwt_cache_lookup(c, v, t, strlen(t), NOW + 105), "no hit at exp + leeway");
    tp_jwt_cache_stats(c, &st);
    ok(st.expired == 1 && st.entries == 0, "the expired entry was dropped");
    is_int(tp_jwt_authenticate(v, c, t, strlen(t), NOW + 105, &cl, &why), TP_AUTH_EXPIRED,
           "after expiry the token is verified again: expired");
    ok(cl == NULL, "no claims for an expired token");
    free(t);

    /* collision safety: plant token A's entry under token B's hash, in B's bucket */
    {
        char *a = token_n(2, NOW + 100), *b = token_n(3, NOW + 100);
        struct tp_jwt_claims *ca = NULL;
        tp_jwt_cache_clear(c);
        tp_jwt_verify(v, a, strlen(a), NOW, &ca, NULL);
        uint64_t hb = token_hash(c, v, b, strlen(b));
        size_t slot = bucket_of(c, hb);
        c->hashes[slot] = hb;
        c->e[slot] = (struct centry){.vid = v->id, .valid_until = NOW + 100, .claims = ca};
        c->st.entries++;
        /* same length too, so only the byte comparison can tell them apart */
        ok(strlen(a) == strlen(b), "tokens A and B have the same length");
        ok(!tp_jwt_cache_lookup(c, v, b, strlen(b), NOW), "B misses although A's entry carries B's hash");
        is_int(tp_jwt_authenticate(v, c, b, strlen(b), NOW, &cl, &why), TP_AUTH_OK, "B verifies in full");
        is_str(cl ? tp_jwt_claims_subject(cl, NULL) : NULL, "user-3", "B gets B's claims");
        tp_jwt_claims_put(cl);
        free(a);
        free(b);
    }

    /* eviction: one bucket of 8 slots */
    {
        struct tp_jwt_cache *one = tp_jwt_cache_create(8, NULL);
        char *toks[10];
        for (int i = 0; i < 10; i++)
            toks[i] = token_n(100 + i, NOW + 1000 + i); /* token 0 expires soonest */
        for (int i = 0; i < 8; i++) {
            tp_jwt_authenticate(v, one, toks[i], strlen(toks[i]), NOW, &cl, NULL);
            tp_jwt_claims_put(cl);
        }
        /* hit every entry but 5: 5 is the one without a second chance */
        for (int i = 0; i < 8; i++)
            if (i != 5)
                tp_jwt_claims_put(tp_jwt_cache_lookup(one, v, toks[i], strlen(toks[i]), NOW));
        tp_jwt_authenticate(v, one, toks[8], strlen(toks[8]), NOW, &cl, NULL);
        tp_jwt_claims_put(cl);
        tp_jwt_cache_stats(one, &st);
        ok(st.entries == 8 && st.evictions == 1, "a full bucket evicts one entry (%llu entries)",
           (unsigned long long)st.entries);
        cl = tp_jwt_cache_lookup(one, v, toks[5], strlen(toks[5]), NOW);
        ok(!cl, "the entry not hit since the last sweep was evicted");
        tp_jwt_claims_put(cl);
        cl = tp_jwt_cache_lookup(one, v, toks[0], strlen(toks[0]), NOW);
        ok(cl != NULL, "a recently hit entry stayed");
        tp_jwt_claims_put(cl);
        /* the sweep cleared second chances; entry 0 (just hit again) keeps it, the
         * soonest-expiring among the others (1) goes next */
        tp_jwt_authenticate(v, one, toks[9], strlen(toks[9]), NOW, &cl, NULL);
        tp_jwt_claims_put(cl);
        cl = tp_jwt_cache_lookup(one, v, toks[1], strlen(toks[1]), NOW);
        ok(!cl, "then the soonest-expiring entry without a second chance");
        tp_jwt_claims_put(cl);
        /* an expired entry is replaced before any live one */
        tp_jwt_cache_clear(one);
        for (int i = 0; i < 8; i++) {
            free(toks[i]);
            toks[i] = token_n(200 + i, i == 3 ? NOW + 10 : NOW + 1000);
            tp_jwt_authenticate(v, one, toks[i], strlen(toks[i]), NOW, &cl, NULL);
            tp_jwt_claims_put(cl);
        }
        tp_jwt_cache_stats(one, &st);
        uint64_t ev = st.evictions;
        tp_jwt_authenticate(v, one, toks[8], strlen(toks[8]), NOW + 20, &cl, NULL);
        tp_jwt_claims_put(cl);
        tp_jwt_cache_stats(one, &st);
        ok(st.evictions == ev && st.entries == 8, "an expired entry makes room without an eviction");
        cl = tp_jwt_cache_lookup(one, v, toks[0], strlen(toks[0]), NOW + 20);
        ok(cl != NULL, "live entries stay");
        tp_jwt_claims_put(cl);
        for (int i = 0; i < 10; i++)
            free(toks[i]);
        tp_jwt_cache_destroy(one);
    }

    /* invalid tokens are never cached; oversized ones are never hashed */
    {
        char *bad = token_n(7, NOW + 100);
        bad[strlen(bad) - 3] ^= 1;
        tp_jwt_cache_stats(c, &st);
        uint64_t entries = st.entries;
        tp_jwt_authenticate(v, c, bad, strlen(bad), NOW, &cl, NULL);
        tp_jwt_cache_stats(c, &st);
        ok(st.entries == entries, "an invalid token is not cached");
        free(bad);
        is_int(tp_jwt_authenticate(v, c, "", 0, NOW, &cl, &why), TP_AUTH_MISSING, "empty token: missing");
        is_int(tp_jwt_authenticate(v, NULL, a1_token, strlen(a1_token), RFC_NOW, &cl, &why), TP_AUTH_OK,
               "no cache: verifies each time");
        tp_jwt_claims_put(cl);
    }
    int e = 0;
    ok(!tp_jwt_cache_create((size_t)1 << 25, &e) && e == -EINVAL, "a cache beyond 2^24 slots is refused");
out:
    tp_jwt_cache_destroy(c);
    tp_jwt_verifier_destroy(v);
    tp_jwt_verifier_destroy(v2);
}

int main(void)
{
    long n = auth_b64url_decode(A1_K, strlen(A1_K), a1_key);
    if (n != 64) {
        printf("Bail out! A.1 key does not decode\n");
        return 1;
    }
    test_rfc_examples();
    test_refusals();
    ok(ERR_peek_error() == 0, "refused tokens leave no OpenSSL error in the thread's queue");
    test_jwks();
    ok(ERR_peek_error() == 0, "refused key sets leave no OpenSSL error in the thread's queue");
    test_claims();
    test_bearer();
    test_cache();
    return tap_done();
}
