/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: a JWK Set (RFC 7517) as `auth.jwt.keys` names it, the
 * whole input being the document. fuzz_jwt reaches the same loader behind a
 * selector byte and shares its time with tokens and API-key files; this
 * target spends all of it on the key parser and on building the keys (RSA
 * moduli, EC points on P-256/P-384, Ed25519, oct secrets), and its seeds in
 * tests/fuzz/corpus/fuzz_jwks are plain JWKS files of every supported type.
 *
 * A set that loads must be consistent: a count of at least one usable key,
 * notes that are strings, references that balance; it is then used to verify
 * the RFC 7515 A.1-A.3 and RFC 8037 tokens (so kid and alg selection and each
 * signature check run on the fuzzed key), and a token's status must come with
 * a reason. A set that fails must say why. Nothing may crash, leak or read
 * out of bounds (the input is copied without a NUL after it).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <turnpike/auth.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RFC_NOW 1300819370

/* RFC 7515 A.1, HS256 */
static const char tok_hs256[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/* RFC 7515 A.2, RS256 */
static const char tok_rs256[] =
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_"
    "O8W2Fp5jujGbds9uJdbF9CU"
    "Ar7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_"
    "eSN9383LcOLn6_dO"
    "--xi12jzDwusC-"
    "eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_"
    "IoypGlUPQGe77Rw";

/* RFC 7515 A.3, ES256 */
static const char tok_es256[] =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

/* RFC 8037 A.4, EdDSA (no exp: refused after the signature, which still runs) */
static const char tok_eddsa[] =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

static const char *const tokens[] = {tok_hs256, tok_rs256, tok_es256, tok_eddsa};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char errbuf[256];
    int err = 0;
    char *copy = malloc(size ? size : 1);

    if (!copy)
        return 0;
    memcpy(copy, data, size);
    errbuf[0] = '\0';
    struct tp_jwks *ks = tp_jwks_load_mem(copy, size, errbuf, sizeof(errbuf), &err);
    free(copy); /* the keyset must not point into the document */
    if (!ks) {
        if (err == 0 || !errbuf[0] || !memchr(errbuf, '\0', sizeof(errbuf)))
            __builtin_trap();
        return 0;
    }
    if (tp_jwks_count(ks) == 0)
        __builtin_trap();
    for (size_t i = 0; tp_jwks_note(ks, i); i++)
        (void)strlen(tp_jwks_note(ks, i));

    struct tp_jwks *again = tp_jwks_get(ks);
    if (again != ks)
        __builtin_trap();
    struct tp_jwt_verifier *v = tp_jwt_verifier_create(again, &(struct tp_jwt_opts){.leeway_s = 30}, NULL);
    tp_jwks_put(again);
    if (v) {
        for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
            struct tp_jwt_claims *c = NULL;
            const char *reason = NULL;
            enum tp_auth_status st = tp_jwt_verify(v, tokens[i], strlen(tokens[i]), RFC_NOW, &c, &reason);
            if (!reason || (st == TP_AUTH_OK) != (c != NULL))
                __builtin_trap();
            tp_jwt_claims_put(c);
        }
        tp_jwt_verifier_destroy(v);
    }
    tp_jwks_put(ks);
    return 0;
}
