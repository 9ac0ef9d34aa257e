/* SPDX-License-Identifier: MIT */
/*
 * Test helper for tests/integration/test_auth_vectors.py: checks credentials
 * made by another implementation against src/auth, one per stdin line.
 *
 *   jwt_tool jwks FILE [--iss ISS] [--aud AUD]... [--leeway S] [--now T] [--max N]
 *       each line is a token; prints "STATUS<TAB>REASON<TAB>SUB" per line
 *       (SUB is "-" when absent or not ok). --now defaults to the real time.
 *   jwt_tool apikeys FILE
 *       each line is a presented key; prints "ok<TAB>NAME<TAB>TENANT" or "missing".
 *
 * A file that does not load prints "load error: MESSAGE" on stderr and exits 2.
 * Single-threaded; not part of the gateway.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <turnpike/auth.h>

#define MAX_AUD 8

static int usage(void)
{
    fprintf(stderr, "usage: jwt_tool jwks FILE [--iss ISS] [--aud AUD]... [--leeway S] [--now T] [--max N]\n"
                    "       jwt_tool apikeys FILE\n");
    return 2;
}

static void chomp(char *line, size_t *len)
{
    while (*len && (line[*len - 1] == '\n' || line[*len - 1] == '\r'))
        line[--*len] = '\0';
}

static int run_apikeys(const char *path)
{
    char err[512], *line = NULL;
    size_t cap = 0;
    ssize_t n;
    struct tp_apikeys *t = tp_apikeys_load_file(path, err, sizeof(err), NULL);

    if (!t) {
        fprintf(stderr, "load error: %s\n", err);
        return 2;
    }
    while ((n = getline(&line, &cap, stdin)) != -1) {
        size_t len = (size_t)n;
        chomp(line, &len);
        const struct tp_apikey *k = tp_apikeys_lookup(t, line, len);
        if (k)
            printf("ok\t%s\t%s\n", tp_apikey_name(k), tp_apikey_tenant(k) ? tp_apikey_tenant(k) : "-");
        else
            printf("missing\n");
    }
    free(line);
    tp_apikeys_destroy(t);
    return 0;
}

static int run_jwks(const char *path, int argc, char **argv)
{
    const char *aud[MAX_AUD];
    struct tp_jwt_opts o = {.audiences = aud};
    int64_t now = (int64_t)time(NULL);
    char err[512], *line = NULL;
    size_t cap = 0;
    ssize_t n;

    for (int i = 0; i < argc; i += 2) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "--iss") == 0)
            o.issuer = argv[i + 1];
        else if (strcmp(argv[i], "--aud") == 0 && o.n_audiences < MAX_AUD)
            aud[o.n_audiences++] = argv[i + 1];
        else if (strcmp(argv[i], "--leeway") == 0)
            o.leeway_s = strtoll(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--now") == 0)
            now = strtoll(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--max") == 0)
            o.max_token_len = strtoull(argv[i + 1], NULL, 10);
        else
            return usage();
    }
    struct tp_jwks *ks = tp_jwks_load_file(path, err, sizeof(err), NULL);
    if (!ks) {
        fprintf(stderr, "load error: %s\n", err);
        return 2;
    }
    for (size_t i = 0; tp_jwks_note(ks, i); i++)
        fprintf(stderr, "note: %s\n", tp_jwks_note(ks, i));
    struct tp_jwt_verifier *v = tp_jwt_verifier_create(ks, &o, NULL);
    tp_jwks_put(ks);
    if (!v) {
        fprintf(stderr, "load error: bad verifier options\n");
        return 2;
    }
    while ((n = getline(&line, &cap, stdin)) != -1) {
        size_t len = (size_t)n, sub_len = 0;
        struct tp_jwt_claims *c;
        const char *reason, *sub;
        chomp(line, &len);
        enum tp_auth_status st = tp_jwt_verify(v, line, len, now, &c, &reason);
        sub = c ? tp_jwt_claims_subject(c, &sub_len) : NULL;
        printf("%s\t%s\t%.*s\n", tp_auth_status_name(st), reason, sub ? (int)sub_len : 1, sub ? sub : "-");
        tp_jwt_claims_put(c);
    }
    free(line);
    tp_jwt_verifier_destroy(v);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    if (strcmp(argv[1], "apikeys") == 0 && argc == 3)
        return run_apikeys(argv[2]);
    if (strcmp(argv[1], "jwks") == 0)
        return run_jwks(argv[2], argc - 3, argv + 3);
    return usage();
}
