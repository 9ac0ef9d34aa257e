/* SPDX-License-Identifier: MIT */
/*
 * Pieces every part of src/auth uses: the algorithm table, OpenSSL methods
 * fetched once per process, strict base64url, the Bearer scheme, status
 * names, and reading a credentials file.
 *
 * Why methods are fetched once: in OpenSSL 3 an implicit fetch (EVP_sha256()
 * passed to an init function, or a digest named in a parameter) looks the
 * method up in the provider store under a lock at every call. Fetching
 * explicitly and keeping the objects for the life of the process takes that
 * off every verification. [any]; the first call may come from any thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/auth_int.h"

const char *const auth_alg_names[ALG__COUNT] = {
    [ALG_HS256] = "HS256", [ALG_HS384] = "HS384", [ALG_HS512] = "HS512", [ALG_RS256] = "RS256",
    [ALG_RS384] = "RS384", [ALG_RS512] = "RS512", [ALG_PS256] = "PS256", [ALG_PS384] = "PS384",
    [ALG_PS512] = "PS512", [ALG_ES256] = "ES256", [ALG_ES384] = "ES384", [ALG_EDDSA] = "EdDSA",
};

static const char *const status_names[TP_AUTH__COUNT] = {
    [TP_AUTH_OK] = "ok",           [TP_AUTH_MISSING] = "missing",     [TP_AUTH_INVALID] = "invalid",
    [TP_AUTH_EXPIRED] = "expired", [TP_AUTH_FORBIDDEN] = "forbidden", [TP_AUTH_INTERNAL] = "internal",
};

const char *tp_auth_status_name(enum tp_auth_status s)
{
    return (unsigned)s < TP_AUTH__COUNT ? status_names[s] : "internal";
}

enum auth_kty auth_alg_kty(enum auth_alg alg)
{
    switch (alg) {
    case ALG_HS256:
    case ALG_HS384:
    case ALG_HS512:
        return KTY_OCT;
    case ALG_ES256:
        return KTY_EC256;
    case ALG_ES384:
        return KTY_EC384;
    case ALG_EDDSA:
        return KTY_ED25519;
    default:
        return KTY_RSA;
    }
}

int auth_alg_lookup(const char *name, size_t len)
{
    for (int i = 0; i < ALG__COUNT; i++)
        if (strlen(auth_alg_names[i]) == len && memcmp(auth_alg_names[i], name, len) == 0)
            return i;
    return -1;
}

static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;
static EVP_MD *md_sha[3]; /* SHA-256, SHA-384, SHA-512 */
static EVP_MAC *mac_hmac;

static void fetch_methods(void)
{
    md_sha[0] = EVP_MD_fetch(NULL, "SHA2-256", NULL);
    md_sha[1] = EVP_MD_fetch(NULL, "SHA2-384", NULL);
    md_sha[2] = EVP_MD_fetch(NULL, "SHA2-512", NULL);
    mac_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

const EVP_MD *auth_alg_md(enum auth_alg alg)
{
    pthread_once(&fetch_once, fetch_methods);
    if (alg == ALG_EDDSA)
        return NULL; /* Ed25519 hashes internally (PureEdDSA) */
    /* HS/RS/PS/ES come in 256/384/512 triples (ES512 is not supported) */
    static const int size_of[ALG__COUNT] = {
        [ALG_HS256] = 0, [ALG_HS384] = 1, [ALG_HS512] = 2, [ALG_RS256] = 0, [ALG_RS384] = 1, [ALG_RS512] = 2,
        [ALG_PS256] = 0, [ALG_PS384] = 1, [ALG_PS512] = 2, [ALG_ES256] = 0, [ALG_ES384] = 1,
    };
    return md_sha[size_of[alg]];
}

const EVP_MD *auth_sha256(void)
{
    pthread_once(&fetch_once, fetch_methods);
    return md_sha[0];
}

EVP_MAC *auth_hmac(void)
{
    pthread_once(&fetch_once, fetch_methods);
    return mac_hmac;
}

/* Value of each base64url alphabet byte. Bytes outside the alphabet ('='
 * included) read 0 like 'A', so b64_member() is asked first. */
static const unsigned char b64_val[256] = {
    ['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,  ['H'] = 7,
    ['I'] = 8,  ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13, ['O'] = 14, ['P'] = 15,
    ['Q'] = 16, ['R'] = 17, ['S'] = 18, ['T'] = 19, ['U'] = 20, ['V'] = 21, ['W'] = 22, ['X'] = 23,
    ['Y'] = 24, ['Z'] = 25, ['a'] = 26, ['b'] = 27, ['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31,
    ['g'] = 32, ['h'] = 33, ['i'] = 34, ['j'] = 35, ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39,
    ['o'] = 40, ['p'] = 41, ['q'] = 42, ['r'] = 43, ['s'] = 44, ['t'] = 45, ['u'] = 46, ['v'] = 47,
    ['w'] = 48, ['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53, ['2'] = 54, ['3'] = 55,
    ['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['-'] = 62, ['_'] = 63,
};

static bool b64_member(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

void auth_b64url_encode(const unsigned char *in, size_t n, char *out)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = al[v >> 18];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = al[(v >> 6) & 63];
        out[o++] = al[v & 63];
    }
    if (n - i == 1) {
        out[o++] = al[in[i] >> 2];
        out[o++] = al[(in[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 8 | in[i + 1];
        out[o++] = al[v >> 10];
        out[o++] = al[(v >> 4) & 63];
        out[o++] = al[(v & 15) << 2];
    }
    out[o] = '\0';
}

long auth_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0, i = 0;

    if (len % 4 == 1)
        return -1; /* 6 bits cannot make a byte */
    for (; i < len; i++)
        if (!b64_member(p[i]))
            return -1;
    for (i = 0; i + 4 <= len; i += 4) {
        uint32_t v = (uint32_t)b64_val[p[i]] << 18 | (uint32_t)b64_val[p[i + 1]] << 12 |
                     (uint32_t)b64_val[p[i + 2]] << 6 | b64_val[p[i + 3]];
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    switch (len - i) {
    case 2: {
        uint32_t v = (uint32_t)b64_val[p[i]] << 6 | b64_val[p[i + 1]];
        if (v & 0xf) /* 12 bits carry 8: the other 4 must be zero */
            return -1;
        out[o++] = (unsigned char)(v >> 4);
        break;
    }
    case 3: {
        uint32_t v = (uint32_t)b64_val[p[i]] << 12 | (uint32_t)b64_val[p[i + 1]] << 6 | b64_val[p[i + 2]];
        if (v & 0x3) /* 18 bits carry 16 */
            return -1;
        out[o++] = (unsigned char)(v >> 10);
        out[o++] = (unsigned char)(v >> 2);
        break;
    }
    default:
        break;
    }
    return (long)o;
}

int tp_auth_bearer(const char *v, size_t len, const char **tok, size_t *tok_len)
{
    size_t i = 6;

    if (len < 7 || strncasecmp(v, "bearer", 6) != 0 || v[6] != ' ')
        return -ENOENT;
    while (i < len && v[i] == ' ')
        i++;
    while (len > i && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (i == len)
        return -ENOENT;
    *tok = v + i;
    *tok_len = len - i;
    return 0;
}

void auth_msg(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;

    if (!len)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

int auth_read_file(const char *path, char **bufp, size_t *lenp)
{
    struct stat st;
    char *buf = NULL;
    size_t n = 0, cap;
    int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

    if (fd == -1)
        return -errno;
    if (fstat(fd, &st) == -1) {
        err = -errno;
        goto fail;
    }
    if (st.st_size > (off_t)TP_AUTH_MAX_FILE) {
        err = -EFBIG;
        goto fail;
    }
    /* Room for one byte more than fstat saw: reaching it means the file grew
     * (or is not a regular file), and the buffer grows up to the limit. */
    cap = (size_t)st.st_size + 1;
    buf = malloc(cap + 1);
    if (!buf) {
        err = -ENOMEM;
        goto fail;
    }
    for (;;) {
        if (n == cap) {
            if (cap > TP_AUTH_MAX_FILE) {
                err = -EFBIG;
                goto fail;
            }
            size_t nc = cap * 2 > TP_AUTH_MAX_FILE + 1 ? TP_AUTH_MAX_FILE + 1 : cap * 2;
            char *nb = realloc(buf, nc + 1);
            if (!nb) {
                err = -ENOMEM;
                goto fail;
            }
            buf = nb;
            cap = nc;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r == -1) {
            if (errno == EINTR)
                continue;
            err = -errno;
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > TP_AUTH_MAX_FILE) {
        err = -EFBIG;
        goto fail;
    }
    close(fd);
    buf[n] = '\0';
    *bufp = buf;
    *lenp = n;
    return 0;

fail:
    free(buf);
    close(fd);
    return err;
}
