/* SPDX-License-Identifier: MIT */
/*
 * JWK Set (RFC 7517) -> struct tp_jwks: every usable key turned into what
 * verification needs (an EVP_PKEY, or keyed HMAC contexts for a shared
 * secret) once, at load, so a verification only looks keys up.
 *
 * The file is parsed with jansson, refusing duplicate member names (two
 * parsers reading one document differently is how such files get abused).
 * What is checked here, and why it matters later:
 * - kty/crv decide which algorithms may ever use a key (auth_alg_kty()): an
 *   RSA, EC or OKP key never gets an HMAC secret, so no token can make one
 *   serve as one (the classic RS256 -> HS256 confusion).
 * - a JWK's own "alg" pins the key to that algorithm, and must fit its type.
 * - sizes: RSA at least 2048 bits (RFC 7518 3.3), at most 16384 (a bigger
 *   modulus only makes each verification slower); EC coordinates of exactly
 *   the curve's size (RFC 7518 6.2.1.2) and on the curve; HMAC secrets of at
 *   least 32 bytes (RFC 7518 3.2 asks for the hash size: shorter secrets are
 *   refused per algorithm at verification, and one too short for every HS
 *   algorithm is refused here).
 * - private members of an asymmetric key mean the wrong file was deployed:
 *   refused rather than kept in a gateway's memory.
 * Keys for encryption or for algorithms turnpike does not verify are common
 * in published sets (identity providers list their encryption keys beside
 * the signing ones), so they are skipped with a note instead of failing.
 *
 * Runs on the control thread (start, reload, -t); the result is read-only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/param_build.h>

#include "auth/auth_int.h"

#define RSA_MIN_BITS    2048
#define RSA_MAX_BITS    16384
#define OCT_MIN_BYTES   32
#define MAX_KEYS        1024 /* a set is a handful of keys; this bounds the work of a bad file */
#define LABEL_KID_CHARS 48

struct jwks_load {
    struct tp_jwks *ks;
    char *errbuf;
    size_t errlen;
    char label[96]; /* "key 3 (kid "abc")" of the key being read */
};

/* Describes key <i> for messages; a kid is shown up to LABEL_KID_CHARS printable characters. */
static void set_label(struct jwks_load *l, size_t i, const char *kid)
{
    char shown[LABEL_KID_CHARS + 4];
    size_t n = 0;

    if (!kid) {
        snprintf(l->label, sizeof(l->label), "key %zu (no kid)", i + 1);
        return;
    }
    for (const char *p = kid; *p && n < LABEL_KID_CHARS; p++)
        shown[n++] = (*p >= 0x20 && *p < 0x7f && *p != '"') ? *p : '?';
    if (kid[n] != '\0' && n == LABEL_KID_CHARS) {
        memcpy(shown + n, "...", 3);
        n += 3;
    }
    shown[n] = '\0';
    snprintf(l->label, sizeof(l->label), "key %zu (kid \"%s\")", i + 1, shown);
}

static int add_note(struct jwks_load *l, const char *why)
{
    char line[256];
    char **notes = realloc(l->ks->notes, (l->ks->n_notes + 1) * sizeof(*notes));

    if (!notes)
        return -ENOMEM;
    l->ks->notes = notes;
    snprintf(line, sizeof(line), "%s: skipped: %s", l->label, why);
    notes[l->ks->n_notes] = strdup(line);
    if (!notes[l->ks->n_notes])
        return -ENOMEM;
    l->ks->n_notes++;
    return 0;
}

/*
 * Decodes the base64url member <name> of <jwk> into a malloc'd buffer.
 * Returns 0, -EINVAL (message set: absent, not a string, not base64url) or -ENOMEM.
 */
static int get_b64(struct jwks_load *l, json_t *jwk, const char *name, unsigned char **out, size_t *out_len)
{
    json_t *m = json_object_get(jwk, name);
    const char *s;
    size_t len;
    long n;

    if (!m) {
        auth_msg(l->errbuf, l->errlen, "%s: \"%s\" is missing", l->label, name);
        return -EINVAL;
    }
    if (!json_is_string(m)) {
        auth_msg(l->errbuf, l->errlen, "%s: \"%s\" must be a base64url string", l->label, name);
        return -EINVAL;
    }
    s = json_string_value(m);
    len = json_string_length(m);
    *out = malloc(auth_b64_declen(len));
    if (!*out)
        return -ENOMEM;
    n = auth_b64url_decode(s, len, *out);
    if (n <= 0) {
        auth_msg(l->errbuf, l->errlen, "%s: \"%s\" is %s", l->label, name,
                 n == 0 ? "empty" : "not unpadded base64url");
        free(*out);
        *out = NULL;
        return -EINVAL;
    }
    *out_len = (size_t)n;
    return 0;
}

/* -EINVAL with a message when <jwk> holds one of the private members in <names>. */
static int refuse_private(struct jwks_load *l, json_t *jwk, const char *const *names)
{
    for (; *names; names++)
        if (json_object_get(jwk, *names)) {
            auth_msg(
                l->errbuf, l->errlen,
                "%s: holds the private member \"%s\": a JWKS for verification must carry public keys only",
                l->label, *names);
            return -EINVAL;
        }
    return 0;
}

static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    EVP_PKEY *pkey = NULL;

    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1)
        if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
            pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static int build_rsa(struct jwks_load *l, json_t *jwk, struct auth_key *k)
{
    static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth", NULL};
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0, bits;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int err;

    if ((err = refuse_private(l, jwk, priv)) < 0 || (err = get_b64(l, jwk, "n", &n, &n_len)) < 0 ||
        (err = get_b64(l, jwk, "e", &e, &e_len)) < 0)
        goto out;
    err = -EINVAL;
    bn_n = BN_bin2bn(n, (int)n_len, NULL);
    bn_e = BN_bin2bn(e, (int)e_len, NULL);
    if (!bn_n || !bn_e) {
        err = -ENOMEM;
        goto out;
    }
    bits = (size_t)BN_num_bits(bn_n);
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
        auth_msg(l->errbuf, l->errlen, "%s: RSA modulus of %zu bits; %d to %d are accepted", l->label, bits,
                 RSA_MIN_BITS, RSA_MAX_BITS);
        goto out;
    }
    /* An even, 1 or very large exponent is not a real key (and e = 1 verifies anything). */
    if (BN_num_bits(bn_e) > 64 || !BN_is_odd(bn_e) || BN_is_one(bn_e)) {
        auth_msg(l->errbuf, l->errlen, "%s: RSA exponent \"e\" must be odd, above 1 and at most 64 bits",
                 l->label);
        goto out;
    }
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)) {
        err = -ENOMEM;
        goto out;
    }
    k->pkey = pkey_fromdata("RSA", bld);
    if (!k->pkey) {
        auth_msg(l->errbuf, l->errlen, "%s: OpenSSL refused the RSA key", l->label);
        goto out;
    }
    k->kty = KTY_RSA;
    err = 0;
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return err;
}

static int build_ec(struct jwks_load *l, json_t *jwk, struct auth_key *k, enum auth_kty kty)
{
    static const char *const priv[] = {"d", NULL};
    const char *group = kty == KTY_EC256 ? "P-256" : "P-384";
    size_t size = kty == KTY_EC256 ? 32 : 48, x_len = 0, y_len = 0;
    unsigned char *x = NULL, *y = NULL, point[1 + 2 * 48];
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *check = NULL;
    int err;

    if ((err = refuse_private(l, jwk, priv)) < 0 || (err = get_b64(l, jwk, "x", &x, &x_len)) < 0 ||
        (err = get_b64(l, jwk, "y", &y, &y_len)) < 0)
        goto out;
    err = -EINVAL;
    if (x_len != size || y_len != size) {
        auth_msg(l->errbuf, l->errlen, "%s: %s coordinates must be %zu bytes each, got x %zu and y %zu",
                 l->label, group, size, x_len, y_len);
        goto out;
    }
    /* uncompressed point: 0x04 || x || y (SEC 1 2.3.3) */
    point[0] = 0x04;
    memcpy(point + 1, x, size);
    memcpy(point + 1 + size, y, size);
    bld = OSSL_PARAM_BLD_new();
    if (!bld || !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * size)) {
        err = -ENOMEM;
        goto out;
    }
    k->pkey = pkey_fromdata("EC", bld);
    check = k->pkey ? EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL) : NULL;
    if (!k->pkey || !check || EVP_PKEY_public_check(check) != 1) {
        auth_msg(l->errbuf, l->errlen, "%s: (x, y) is not a point of %s", l->label, group);
        goto out;
    }
    k->kty = kty;
    err = 0;
out:
    EVP_PKEY_CTX_free(check);
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return err;
}

static int build_ed25519(struct jwks_load *l, json_t *jwk, struct auth_key *k)
{
    static const char *const priv[] = {"d", NULL};
    unsigned char *x = NULL;
    size_t x_len = 0;
    int err;

    if ((err = refuse_private(l, jwk, priv)) < 0 || (err = get_b64(l, jwk, "x", &x, &x_len)) < 0)
        return err;
    err = -EINVAL;
    if (x_len != 32)
        auth_msg(l->errbuf, l->errlen, "%s: an Ed25519 public key \"x\" is 32 bytes, got %zu", l->label,
                 x_len);
    else if (!(k->pkey = EVP_PKEY_new_raw_public_key_ex(NULL, "ED25519", NULL, x, x_len)))
        auth_msg(l->errbuf, l->errlen, "%s: OpenSSL refused the Ed25519 key", l->label);
    else {
        k->kty = KTY_ED25519;
        err = 0;
    }
    free(x);
    return err;
}

static int build_oct(struct jwks_load *l, json_t *jwk, struct auth_key *k)
{
    static const char *const digest[3] = {"SHA2-256", "SHA2-384", "SHA2-512"};
    int err = get_b64(l, jwk, "k", &k->secret, &k->secret_len);

    if (err < 0)
        return err;
    if (k->secret_len < OCT_MIN_BYTES) {
        auth_msg(l->errbuf, l->errlen,
                 "%s: the secret \"k\" is %zu bytes; HMAC keys need at least %d (RFC 7518 3.2)", l->label,
                 k->secret_len, OCT_MIN_BYTES);
        return -EINVAL;
    }
    k->kty = KTY_OCT;
    if (!auth_hmac())
        return -ENOMEM;
    for (int i = 0; i < 3; i++) {
        if (k->secret_len < (size_t)(32 + 16 * i))
            continue; /* too short for this hash: HS384/HS512 tokens are refused for this key */
        OSSL_PARAM params[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest[i], 0),
            OSSL_PARAM_construct_end(),
        };
        k->hmac[i] = EVP_MAC_CTX_new(auth_hmac());
        if (!k->hmac[i] || EVP_MAC_init(k->hmac[i], k->secret, k->secret_len, params) != 1)
            return -ENOMEM;
    }
    return 0;
}

static void key_dispose(struct auth_key *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    for (int i = 0; i < 3; i++)
        EVP_MAC_CTX_free(k->hmac[i]);
    memset(k, 0, sizeof(*k));
}

/* Why a key with this "use"/"key_ops" is not a verification key, or NULL when it is. */
static const char *not_for_verify(json_t *jwk, int *bad)
{
    json_t *use = json_object_get(jwk, "use"), *ops = json_object_get(jwk, "key_ops");
    size_t i;
    json_t *op;

    if (use && !json_is_string(use)) {
        *bad = 1;
        return "\"use\" must be a string";
    }
    if (use && strcmp(json_string_value(use), "sig") != 0)
        return "its \"use\" is not \"sig\"";
    if (ops) {
        if (!json_is_array(ops)) {
            *bad = 1;
            return "\"key_ops\" must be an array";
        }
        json_array_foreach(ops, i, op)
        {
            if (json_is_string(op) && strcmp(json_string_value(op), "verify") == 0)
                return NULL;
        }
        return "its \"key_ops\" do not include \"verify\"";
    }
    return NULL;
}

/* Reads key <i>; returns 0 (added or skipped with a note), -EINVAL (message set) or -ENOMEM. */
static int load_key(struct jwks_load *l, size_t i, json_t *jwk)
{
    struct auth_key *k = &l->ks->keys[l->ks->n];
    json_t *kid = json_object_get(jwk, "kid"), *kty = json_object_get(jwk, "kty");
    json_t *alg = json_object_get(jwk, "alg"), *crv = json_object_get(jwk, "crv");
    const char *why, *t, *c = crv && json_is_string(crv) ? json_string_value(crv) : NULL;
    enum auth_kty want;
    int bad = 0, err;

    set_label(l, i, kid && json_is_string(kid) ? json_string_value(kid) : NULL);
    if (!json_is_object(jwk)) {
        auth_msg(l->errbuf, l->errlen, "%s: not a JSON object", l->label);
        return -EINVAL;
    }
    if (kid && !json_is_string(kid)) {
        auth_msg(l->errbuf, l->errlen, "%s: \"kid\" must be a string", l->label);
        return -EINVAL;
    }
    if (!kty || !json_is_string(kty)) {
        auth_msg(l->errbuf, l->errlen, "%s: \"kty\" is missing or not a string", l->label);
        return -EINVAL;
    }
    if (alg && !json_is_string(alg)) {
        auth_msg(l->errbuf, l->errlen, "%s: \"alg\" must be a string", l->label);
        return -EINVAL;
    }
    if (crv && !json_is_string(crv)) {
        auth_msg(l->errbuf, l->errlen, "%s: \"crv\" must be a string", l->label);
        return -EINVAL;
    }
    if ((why = not_for_verify(jwk, &bad)) != NULL) {
        if (bad) {
            auth_msg(l->errbuf, l->errlen, "%s: %s", l->label, why);
            return -EINVAL;
        }
        return add_note(l, why);
    }

    t = json_string_value(kty);
    if (strcmp(t, "RSA") == 0) {
        want = KTY_RSA;
    } else if (strcmp(t, "oct") == 0) {
        want = KTY_OCT;
    } else if (strcmp(t, "EC") == 0 && c && strcmp(c, "P-256") == 0) {
        want = KTY_EC256;
    } else if (strcmp(t, "EC") == 0 && c && strcmp(c, "P-384") == 0) {
        want = KTY_EC384;
    } else if (strcmp(t, "OKP") == 0 && c && strcmp(c, "Ed25519") == 0) {
        want = KTY_ED25519;
    } else if ((strcmp(t, "EC") == 0 || strcmp(t, "OKP") == 0) && !c) {
        auth_msg(l->errbuf, l->errlen, "%s: an %s key needs \"crv\"", l->label, t);
        return -EINVAL;
    } else {
        char note[96];
        snprintf(note, sizeof(note), "kty \"%.16s\"%s%.16s%s is not supported", t, c ? " with crv \"" : "",
                 c ? c : "", c ? "\"" : "");
        return add_note(l, note);
    }

    k->alg = -1;
    if (alg) {
        const char *a = json_string_value(alg);
        k->alg = auth_alg_lookup(a, json_string_length(alg));
        if (k->alg < 0) {
            char note[80];
            snprintf(note, sizeof(note), "alg \"%.24s\" is not a signature algorithm turnpike verifies", a);
            return add_note(l, note);
        }
        if (auth_alg_kty((enum auth_alg)k->alg) != want) {
            auth_msg(l->errbuf, l->errlen, "%s: alg \"%s\" does not fit a key of kty \"%s\"%s%s", l->label, a,
                     t, c ? " crv " : "", c ? c : "");
            return -EINVAL;
        }
    }

    switch (want) {
    case KTY_RSA:
        err = build_rsa(l, jwk, k);
        break;
    case KTY_OCT:
        err = build_oct(l, jwk, k);
        break;
    case KTY_ED25519:
        err = build_ed25519(l, jwk, k);
        break;
    default:
        err = build_ec(l, jwk, k, want);
        break;
    }
    if (err == 0 && kid) {
        for (size_t j = 0; j < l->ks->n; j++)
            if (l->ks->keys[j].kid && strcmp(l->ks->keys[j].kid, json_string_value(kid)) == 0) {
                auth_msg(l->errbuf, l->errlen, "%s: another usable key has the same kid", l->label);
                err = -EINVAL;
                break;
            }
        if (err == 0 && !(k->kid = strdup(json_string_value(kid))))
            err = -ENOMEM;
    }
    if (err < 0) {
        key_dispose(k);
        return err;
    }
    l->ks->n++;
    return 0;
}

struct tp_jwks *tp_jwks_load_mem(const char *json, size_t len, char *errbuf, size_t errlen, int *errp)
{
    struct jwks_load l = {.errbuf = errbuf, .errlen = errlen};
    json_error_t jerr;
    json_t *root = NULL, *keys, *jwk;
    size_t i;
    int err = -ENOMEM;

    auth_msg(errbuf, errlen, "out of memory");
    l.ks = calloc(1, sizeof(*l.ks));
    if (!l.ks)
        goto fail;
    atomic_init(&l.ks->refs, 1);
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    err = -EINVAL;
    if (!root) {
        auth_msg(errbuf, errlen, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
        goto fail;
    }
    keys = json_is_object(root) ? json_object_get(root, "keys") : NULL;
    if (!keys || !json_is_array(keys)) {
        auth_msg(errbuf, errlen, "a JWK Set is an object whose \"keys\" member is an array");
        goto fail;
    }
    if (json_array_size(keys) > MAX_KEYS) {
        auth_msg(errbuf, errlen, "%zu keys: at most %d are accepted", json_array_size(keys), MAX_KEYS);
        goto fail;
    }
    l.ks->keys = calloc(json_array_size(keys) + 1, sizeof(*l.ks->keys));
    if (!l.ks->keys) {
        err = -ENOMEM;
        auth_msg(errbuf, errlen, "out of memory");
        goto fail;
    }
    json_array_foreach(keys, i, jwk)
    {
        err = load_key(&l, i, jwk);
        if (err == -ENOMEM)
            auth_msg(errbuf, errlen, "out of memory");
        if (err < 0)
            goto fail;
    }
    if (l.ks->n == 0) {
        err = -EINVAL;
        auth_msg(errbuf, errlen, "no usable key (%zu in the set, %zu skipped%s%s)", json_array_size(keys),
                 l.ks->n_notes, l.ks->n_notes ? ": " : "", l.ks->n_notes ? l.ks->notes[0] : "");
        goto fail;
    }
    json_decref(root);
    ERR_clear_error(); /* refusals inside OpenSSL leave errors in the thread's queue */
    return l.ks;

fail:
    json_decref(root);
    ERR_clear_error();
    if (l.ks) {
        /* one reference: put frees what was built so far */
        tp_jwks_put(l.ks);
    }
    if (errp)
        *errp = err;
    return NULL;
}

struct tp_jwks *tp_jwks_load_file(const char *path, char *errbuf, size_t errlen, int *errp)
{
    char *buf = NULL, msg[512];
    size_t len = 0;
    int err = auth_read_file(path, &buf, &len);
    struct tp_jwks *ks;

    if (err < 0) {
        auth_msg(errbuf, errlen, "%s: %s", path, err == -EFBIG ? "larger than 4 MiB" : strerror(-err));
        if (errp)
            *errp = err;
        return NULL;
    }
    ks = tp_jwks_load_mem(buf, len, msg, sizeof(msg), errp);
    if (!ks)
        auth_msg(errbuf, errlen, "%s: %s", path, msg);
    free(buf);
    return ks;
}

struct tp_jwks *tp_jwks_get(struct tp_jwks *ks)
{
    atomic_fetch_add_explicit(&ks->refs, 1, memory_order_relaxed);
    return ks;
}

void tp_jwks_put(struct tp_jwks *ks)
{
    if (!ks || atomic_fetch_sub_explicit(&ks->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < ks->n; i++)
        key_dispose(&ks->keys[i]);
    free(ks->keys);
    for (size_t i = 0; i < ks->n_notes; i++)
        free(ks->notes[i]);
    free(ks->notes);
    free(ks);
}

size_t tp_jwks_count(const struct tp_jwks *ks)
{
    return ks->n;
}

const char *tp_jwks_note(const struct tp_jwks *ks, size_t i)
{
    return i < ks->n_notes ? ks->notes[i] : NULL;
}
