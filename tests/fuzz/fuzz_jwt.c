/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: src/auth on untrusted bytes. The first byte, modulo 3,
 * chooses:
 *   0: the rest is a token, verified against a fixed JWKS (an HMAC
 *         secret, RSA, P-256 and Ed25519 keys, from RFC 7515 A.1-A.3 and
 *         RFC 8037) through a small cache, at a time when the RFC tokens
 *         are valid; a valid token's claims are read back, and a second
 *         authentication must agree with the first;
 *   1: the rest is a JWKS document, loaded and, when it loads, used to
 *      verify a fixed token;
 *   2: as 0 (API-key files have their own target, fuzz_apikeys: each one
 *      forks the libfyaml guard, which would slow this target down forty
 *      times).
 * Nothing may crash, leak or read out of bounds, and a status must come with
 * a reason. The seeds in tests/fuzz/corpus/fuzz_jwt hold the RFC tokens and sets.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/auth.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RFC_NOW 1300819370

static const char jwks_json[] =
    "{\"keys\":["
    "{\"kty\":\"oct\",\"kid\":\"hmac\",\"k\":"
    "\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"},"
    "{\"kty\":\"RSA\",\"kid\":\"rsa\",\"e\":\"AQAB\",\"n\":"
    "\"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-"
    "SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-"
    "DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ\"},"
    "{\"kty\":\"EC\",\"kid\":\"ec\",\"crv\":\"P-256\",\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
    "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"},"
    "{\"kty\":\"OKP\",\"kid\":\"ed\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_"
    "7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}"
    "]}";

/* RFC 7515 A.1 */
static const char fixed_token[] = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
                                  "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxl"
                                  "LmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

static struct tp_jwt_verifier *verifier;
static struct tp_jwt_cache *cache;

static void setup(void)
{
    struct tp_jwt_opts o = {.leeway_s = 30, .max_token_len = 4096};
    struct tp_jwks *ks = tp_jwks_load_mem(jwks_json, sizeof(jwks_json) - 1, NULL, 0, NULL);

    if (!ks)
        __builtin_trap();
    verifier = tp_jwt_verifier_create(ks, &o, NULL);
    tp_jwks_put(ks);
    cache = tp_jwt_cache_create(64, NULL);
    if (!verifier || !cache)
        __builtin_trap();
}

static void read_claims(const struct tp_jwt_claims *c)
{
    size_t len = 0;
    const char *s = tp_jwt_claims_subject(c, &len);

    if (s && strlen(s) != len) /* no NUL inside a claim string */
        __builtin_trap();
    (void)tp_jwt_claims_str(c, "iss", &len);
    (void)tp_jwt_claims_match(c, "scope", "read", 4);
    (void)tp_jwt_claims_match(c, "aud", "orders", 6);
    (void)tp_jwt_claims_match(c, "http://example.com/is_root", "true", 4);
}

static void fuzz_token(const char *tok, size_t len)
{
    struct tp_jwt_claims *c1 = NULL, *c2 = NULL;
    const char *r1 = NULL, *r2 = NULL;
    enum tp_auth_status s1 = tp_jwt_authenticate(verifier, cache, tok, len, RFC_NOW, &c1, &r1);
    enum tp_auth_status s2 = tp_jwt_authenticate(verifier, cache, tok, len, RFC_NOW, &c2, &r2);

    if (!r1 || !r2 || s1 != s2 || (s1 == TP_AUTH_OK) != (c1 != NULL) || (s2 == TP_AUTH_OK) != (c2 != NULL))
        __builtin_trap();
    if (c1)
        read_claims(c1);
    tp_jwt_claims_put(c1);
    tp_jwt_claims_put(c2);
}

static void fuzz_jwks(const char *json, size_t len)
{
    char err[256];
    struct tp_jwks *ks = tp_jwks_load_mem(json, len, err, sizeof(err), NULL);

    if (!ks)
        return;
    for (size_t i = 0; tp_jwks_note(ks, i); i++)
        (void)strlen(tp_jwks_note(ks, i));
    struct tp_jwt_verifier *v = tp_jwt_verifier_create(ks, &(struct tp_jwt_opts){0}, NULL);
    tp_jwks_put(ks);
    if (v) {
        struct tp_jwt_claims *c = NULL;
        tp_jwt_verify(v, fixed_token, sizeof(fixed_token) - 1, RFC_NOW, &c, NULL);
        tp_jwt_claims_put(c);
        tp_jwt_verifier_destroy(v);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!verifier)
        setup();
    if (size < 1)
        return 0;
    /* copies without a NUL after them, so an over-read shows under ASan */
    char *copy = malloc(size - 1 ? size - 1 : 1);
    if (!copy)
        return 0;
    memcpy(copy, data + 1, size - 1);
    switch (data[0] % 3) {
    case 1:
        fuzz_jwks(copy, size - 1);
        break;
    default:
        fuzz_token(copy, size - 1);
        break;
    }
    free(copy);
    return 0;
}
