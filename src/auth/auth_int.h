/* SPDX-License-Identifier: MIT */
/*
 * Private to src/auth: the layout of keysets, verifiers and claims, shared by
 * jwks.c (builds keys), jwt.c (verifies, reads claims) and jwt_cache.c
 * (keeps claims), and the helpers they share (base64url, digests, messages).
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#include <turnpike/auth.h>

/* The signature algorithms of docs/reference.md, in the order of auth_alg_name(). */
enum auth_alg {
    ALG_HS256 = 0,
    ALG_HS384,
    ALG_HS512,
    ALG_RS256,
    ALG_RS384,
    ALG_RS512,
    ALG_PS256,
    ALG_PS384,
    ALG_PS512,
    ALG_ES256,
    ALG_ES384,
    ALG_EDDSA,
    ALG__COUNT
};

/* Key types, from the JWK's kty (and crv: an EC key is one curve's). */
enum auth_kty {
    KTY_OCT = 0, /* shared secret: HS* only */
    KTY_RSA,     /* RS* and PS* */
    KTY_EC256,   /* ES256 */
    KTY_EC384,   /* ES384 */
    KTY_ED25519, /* EdDSA */
    KTY__COUNT
};

struct auth_key {
    char *kid;             /* NULL when the JWK has none */
    enum auth_kty kty;     /* decides which algorithms may use the key */
    int alg;               /* the JWK's "alg" as enum auth_alg, or -1 when absent (any fitting alg) */
    EVP_PKEY *pkey;        /* RSA, EC and OKP keys; NULL for oct */
    unsigned char *secret; /* oct keys only: the HMAC secret */
    size_t secret_len;     /* [bytes] */
    /* oct keys: an HMAC context per HS alg already keyed with <secret>, duplicated per
     * verification (keying and the digest fetch are then paid once, at load). NULL when the
     * secret is shorter than that alg's hash (RFC 7518 3.2 forbids it). */
    EVP_MAC_CTX *hmac[3];
};

struct tp_jwks {
    atomic_uint refs;
    size_t n;
    struct auth_key *keys;
    size_t n_notes;
    char **notes; /* one line per skipped key */
};

struct tp_jwt_verifier {
    uint64_t id;          /* unique per verifier, never reused: cache entries name it */
    struct tp_jwks *keys; /* a reference */
    char *issuer;         /* NULL = not checked */
    char **audiences;     /* n_audiences strings */
    size_t n_audiences;
    int64_t leeway_s;     /* [s] */
    size_t max_token_len; /* [bytes] */
};

struct tp_jwt_claims {
    atomic_uint refs;
    json_t *payload; /* the claims object, read-only once built */
    int64_t exp;     /* [s] */
    size_t tok_len;  /* [bytes] */
    char tok[];      /* the token itself: a cache hit compares it in full */
};

/* Names of enum auth_alg as JOSE writes them ("HS256", ..., "EdDSA"). */
extern const char *const auth_alg_names[ALG__COUNT];

/* The key type that can verify <alg>. */
enum auth_kty auth_alg_kty(enum auth_alg alg);

/* Index in auth_alg_names of the <len> bytes at <name>, or -1. */
int auth_alg_lookup(const char *name, size_t len);

/* Digest of <alg> (SHA-256/384/512), fetched once per process; NULL for EdDSA. */
const EVP_MD *auth_alg_md(enum auth_alg alg);

/* The SHA-256 digest, fetched once per process (NULL only when OpenSSL is broken). */
const EVP_MD *auth_sha256(void);

/* The HMAC method, fetched once per process. */
EVP_MAC *auth_hmac(void);

/*
 * Decodes unpadded base64url (RFC 7515 2 / RFC 4648 5) <in> of <len> bytes
 * into <out> (room for auth_b64_declen(len) bytes). Refuses '=' and every
 * byte outside the alphabet, a length that is 1 mod 4, and unused low bits
 * that are not zero (only one text decodes to given bytes). Returns the
 * decoded length or -1.
 */
long auth_b64url_decode(const char *in, size_t len, unsigned char *out);

/*
 * Encodes <n> bytes of <in> as unpadded base64url into <out> (room for
 * auth_b64_enclen(n) bytes, NUL included). The tests and benches make
 * tokens with it; the gateway only decodes.
 */
void auth_b64url_encode(const unsigned char *in, size_t n, char *out);

static inline size_t auth_b64_enclen(size_t n)
{
    return (n + 2) / 3 * 4 + 1;
}

/* Bytes that auth_b64url_decode() may write for <len> input bytes. */
static inline size_t auth_b64_declen(size_t len)
{
    return len / 4 * 3 + 2;
}

/* snprintf into <buf> of <len> bytes (nothing when len is 0). */
void auth_msg(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Reads the whole file at <path> (at most TP_AUTH_MAX_FILE bytes) into a
 * malloc'd buffer with a NUL after it. Returns 0 or -errno (-EFBIG when too large). */
int auth_read_file(const char *path, char **buf, size_t *len);
