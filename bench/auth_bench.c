/* SPDX-License-Identifier: MIT */
/*
 * Microbenchmark of src/auth: the cost of a cold JWT verification for each
 * algorithm (what a request pays when its token is not in the shard's cache:
 * decoding, two JSON parses, the signature), a warm one (a cache hit), and an
 * API-key lookup. Keys are made at start (RSA 2048, P-256, P-384, Ed25519,
 * a 64-byte HMAC secret), tokens signed here with OpenSSL.
 * Build in Release and run `auth_bench [seconds per case]` (default 0.5).
 * Single-threaded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <turnpike/auth.h>
#include <turnpike/clock.h>

#include "auth/auth_int.h"

#define NOW 1900000000

static double seconds = 0.5;
static volatile uint64_t sink;

static void die(const char *what)
{
    fprintf(stderr, "auth_bench: %s failed\n", what);
    exit(1);
}

struct alg {
    const char *name, *kid, *md; /* md NULL: EdDSA */
    EVP_PKEY *key;               /* NULL: HMAC */
    int pss;
    size_t ec_size; /* ECDSA: bytes of r and of s */
};

static unsigned char secret[64];

/* Signs <in> the JOSE way into base64url at <out>. */
static void sign(const struct alg *a, const char *in, char *out)
{
    unsigned char sig[1024], raw[132];
    size_t n = sizeof(sig);

    if (!a->key) {
        if (!EVP_Q_mac(NULL, "HMAC", NULL, a->md, NULL, secret, sizeof(secret), (const unsigned char *)in,
                       strlen(in), sig, sizeof(sig), &n))
            die("HMAC");
        auth_b64url_encode(sig, n, out);
        return;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    if (!ctx || EVP_DigestSignInit_ex(ctx, &pctx, a->md, NULL, NULL, a->key, NULL) != 1)
        die("sign init");
    if (a->pss && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
                   EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
        die("PSS");
    if (EVP_DigestSign(ctx, sig, &n, (const unsigned char *)in, strlen(in)) != 1)
        die("sign");
    EVP_MD_CTX_free(ctx);
    if (a->ec_size) { /* DER -> r || s */
        const unsigned char *p = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)n);
        if (!es)
            die("DER");
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)a->ec_size);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + a->ec_size, (int)a->ec_size);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 2 * a->ec_size);
        n = 2 * a->ec_size;
    }
    auth_b64url_encode(sig, n, out);
}

static char *make_token(const struct alg *a, int serial)
{
    char hdr[128], pay[256], *t = malloc(4096);
    size_t n;

    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\",\"kid\":\"%s\",\"typ\":\"JWT\"}", a->name, a->kid);
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"user-%d\",\"iss\":\"https://id.example\",\"aud\":\"orders\",\"tenant\":\"acme\","
             "\"scope\":\"orders:read orders:write\",\"iat\":%d,\"exp\":%d}",
             serial, NOW - 10, NOW + 3600);
    auth_b64url_encode((const unsigned char *)hdr, strlen(hdr), t);
    n = strlen(t);
    t[n++] = '.';
    auth_b64url_encode((const unsigned char *)pay, strlen(pay), t + n);
    sign(a, t, t + strlen(t) + 1);
    t[strlen(t)] = '.';
    return t;
}

/* Appends the public JWK of <a> to <out>. */
static void jwk(const struct alg *a, char *out, size_t cap)
{
    unsigned char buf[1024];
    char x[1400], y[200];
    size_t n = 0;
    BIGNUM *bn = NULL;

    if (!a->key) {
        auth_b64url_encode(secret, sizeof(secret), x);
        snprintf(out, cap, "{\"kty\":\"oct\",\"kid\":\"%s\",\"k\":\"%s\"}", a->kid, x);
    } else if (a->ec_size) {
        if (!EVP_PKEY_get_octet_string_param(a->key, OSSL_PKEY_PARAM_PUB_KEY, buf, sizeof(buf), &n) ||
            n != 1 + 2 * a->ec_size)
            die("EC export");
        auth_b64url_encode(buf + 1, a->ec_size, x);
        auth_b64url_encode(buf + 1 + a->ec_size, a->ec_size, y);
        snprintf(out, cap, "{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"}", a->kid,
                 a->ec_size == 32 ? "P-256" : "P-384", x, y);
    } else if (!a->md) {
        n = sizeof(buf);
        if (!EVP_PKEY_get_raw_public_key(a->key, buf, &n))
            die("Ed25519 export");
        auth_b64url_encode(buf, n, x);
        snprintf(out, cap, "{\"kty\":\"OKP\",\"kid\":\"%s\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", a->kid, x);
    } else {
        if (!EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_RSA_N, &bn))
            die("RSA export");
        n = (size_t)BN_bn2bin(bn, buf);
        BN_free(bn);
        auth_b64url_encode(buf, n, x);
        snprintf(out, cap, "{\"kty\":\"RSA\",\"kid\":\"%s\",\"e\":\"AQAB\",\"n\":\"%s\"}", a->kid, x);
    }
}

/* Runs <fn> in batches until <seconds> have passed; returns ns per call. */
#define TIMED(iters_out, body)                                                                               \
    do {                                                                                                     \
        uint64_t t0_ = tp_clock_ns(), n_ = 0, lim_ = (uint64_t)(seconds * 1e9);                              \
        while (tp_clock_ns() - t0_ < lim_) {                                                                 \
            for (int k_ = 0; k_ < 64; k_++) {                                                                \
                body;                                                                                        \
            }                                                                                                \
            n_ += 64;                                                                                        \
        }                                                                                                    \
        iters_out = (double)(tp_clock_ns() - t0_) / (double)n_;                                              \
    } while (0)

int main(int argc, char **argv)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *p384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    struct alg algs[] = {
        {"HS256", "hmac", "SHA256", NULL, 0, 0},  {"HS384", "hmac", "SHA384", NULL, 0, 0},
        {"HS512", "hmac", "SHA512", NULL, 0, 0},  {"RS256", "rsa", "SHA256", rsa, 0, 0},
        {"RS384", "rsa", "SHA384", rsa, 0, 0},    {"RS512", "rsa", "SHA512", rsa, 0, 0},
        {"PS256", "rsa", "SHA256", rsa, 1, 0},    {"PS384", "rsa", "SHA384", rsa, 1, 0},
        {"PS512", "rsa", "SHA512", rsa, 1, 0},    {"ES256", "p256", "SHA256", p256, 0, 32},
        {"ES384", "p384", "SHA384", p384, 0, 48}, {"EdDSA", "ed", NULL, ed, 0, 0},
    };
    static const char *const aud[] = {"orders"};
    struct tp_jwt_opts o = {
        .issuer = "https://id.example", .audiences = aud, .n_audiences = 1, .leeway_s = 30};
    char json[16384] = "{\"keys\":[", one[2048], err[256];
    double ns;

    if (argc > 1)
        seconds = atof(argv[1]);
    if (!rsa || !p256 || !p384 || !ed || RAND_bytes(secret, sizeof(secret)) != 1)
        die("keygen");
    /* one JWK per kid: the HMAC and RSA entries repeat, take each once */
    const int firsts[] = {0, 3, 9, 10, 11};
    for (size_t i = 0; i < sizeof(firsts) / sizeof(firsts[0]); i++) {
        jwk(&algs[firsts[i]], one, sizeof(one));
        strcat(json, i ? "," : "");
        strcat(json, one);
    }
    strcat(json, "]}");
    struct tp_jwks *ks = tp_jwks_load_mem(json, strlen(json), err, sizeof(err), NULL);
    if (!ks) {
        fprintf(stderr, "jwks: %s\n", err);
        return 1;
    }
    struct tp_jwt_verifier *v = tp_jwt_verifier_create(ks, &o, NULL);
    tp_jwks_put(ks);
    struct tp_jwt_cache *cache = tp_jwt_cache_create(4096, NULL);

    printf("%-8s %10s %14s %14s\n", "alg", "token B", "cold [us]", "cached [ns]");
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        char *t = make_token(&algs[i], (int)i);
        size_t len = strlen(t);
        struct tp_jwt_claims *c;
        const char *why;
        double cold, warm;

        if (tp_jwt_verify(v, t, len, NOW, &c, &why) != TP_AUTH_OK) {
            fprintf(stderr, "%s: %s\n", algs[i].name, why);
            return 1;
        }
        tp_jwt_claims_put(c);
        TIMED(cold, {
            tp_jwt_verify(v, t, len, NOW, &c, NULL);
            sink += (uintptr_t)c;
            tp_jwt_claims_put(c);
        });
        tp_jwt_authenticate(v, cache, t, len, NOW, &c, NULL);
        tp_jwt_claims_put(c);
        TIMED(warm, {
            tp_jwt_authenticate(v, cache, t, len, NOW, &c, NULL);
            sink += (uintptr_t)c;
            tp_jwt_claims_put(c);
        });
        printf("%-8s %10zu %14.2f %14.1f\n", algs[i].name, len, cold / 1000.0, warm);
        free(t);
    }

    /* a full cache: 4096 distinct tokens, looked up round robin (misses in L1/L2) */
    {
        enum { N = 4096 };
        char **toks = malloc(N * sizeof(*toks));
        struct tp_jwt_claims *c;
        size_t k = 0;
        struct tp_jwt_cache *big = tp_jwt_cache_create(2 * N, NULL);
        for (int i = 0; i < N; i++) {
            toks[i] = make_token(&algs[0], 1000 + i);
            tp_jwt_authenticate(v, big, toks[i], strlen(toks[i]), NOW, &c, NULL);
            tp_jwt_claims_put(c);
        }
        TIMED(ns, {
            c = tp_jwt_cache_lookup(big, v, toks[k], strlen(toks[k]), NOW);
            sink += (uintptr_t)c;
            tp_jwt_claims_put(c);
            k = (k + 1) % N;
        });
        struct tp_jwt_cache_stats st;
        tp_jwt_cache_stats(big, &st);
        printf("cache lookup, 4096 tokens round robin: %.1f ns (hits %llu, misses %llu)\n", ns,
               (unsigned long long)st.hits, (unsigned long long)st.misses);
        for (int i = 0; i < N; i++)
            free(toks[i]);
        free(toks);
        tp_jwt_cache_destroy(big);
    }

    /* API keys: 1000 entries */
    {
        size_t cap = 1000 * 128, off = 0;
        char *yaml = malloc(cap), key[32], (*keys)[16] = malloc(1000 * sizeof(*keys));
        unsigned char d[32];
        unsigned int dl;
        for (int i = 0; i < 1000; i++) {
            snprintf(keys[i], sizeof(keys[i]), "key-%08d", i);
            snprintf(key, sizeof(key), "%s", keys[i]);
            EVP_Digest(key, strlen(key), d, &dl, EVP_sha256(), NULL);
            off += (size_t)snprintf(yaml + off, cap - off, "- {name: n%d, sha256: ", i);
            for (int j = 0; j < 32; j++)
                off += (size_t)snprintf(yaml + off, cap - off, "%02x", d[j]);
            off += (size_t)snprintf(yaml + off, cap - off, "}\n");
        }
        struct tp_apikeys *t = tp_apikeys_load_mem(yaml, off, err, sizeof(err), NULL);
        if (!t) {
            fprintf(stderr, "apikeys: %s\n", err);
            return 1;
        }
        int i = 0;
        TIMED(ns, {
            sink += (uintptr_t)tp_apikeys_lookup(t, keys[i], 12);
            i = (i + 1) % 1000;
        });
        printf("API key lookup (SHA-256 + table), 1000 keys: %.1f ns\n", ns);
        tp_apikeys_destroy(t);
        free(keys);
        free(yaml);
    }
    tp_jwt_cache_destroy(cache);
    tp_jwt_verifier_destroy(v);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(p256);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(ed);
    return 0;
}
