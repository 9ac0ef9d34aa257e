/* SPDX-License-Identifier: MIT */
/*
 * Value parsers of turnpike/config.h (durations, sizes, rates, addresses), the
 * private string checkers (header names and values, hosts, paths, methods),
 * the message quoting and struct tp_diag. Edge cases first: overflow, zero,
 * missing or wrong units, signs, fractions.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include <llhttp.h>

#include "config/config_int.h"
#include "tap.h"

static void test_duration(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t ms;
    } cases[] = {
        {"250ms", 0, 250},
        {"2s", 0, 2000},
        {"1m", 0, 60000},
        {"1h", 0, 3600000},
        {"0s", 0, 0}, /* syntax is fine; fields reject zero where it makes no sense */
        {"0ms", 0, 0},
        {"007s", 0, 7000},
        {"18446744073709551615ms", 0, UINT64_MAX},
        {"18446744073709551616ms", -ERANGE, 0},   /* 2^64 */
        {"5124095576030432h", -ERANGE, 0},        /* fits alone, overflows times 3600000 */
        {"99999999999999999999999x", -EINVAL, 0}, /* bad unit wins over overflow */
        {"0", -EINVAL, 0},
        {"10", -EINVAL, 0}, /* missing unit */
        {"1.5s", -EINVAL, 0},
        {"-1s", -EINVAL, 0},
        {"+1s", -EINVAL, 0},
        {"10 s", -EINVAL, 0},
        {" 10s", -EINVAL, 0},
        {"10s ", -EINVAL, 0},
        {"10S", -EINVAL, 0},
        {"10sec", -EINVAL, 0},
        {"1h30m", -EINVAL, 0},
        {"10d", -EINVAL, 0},
        {"s", -EINVAL, 0},
        {"", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 12345;
        int rc = tp_parse_duration_ms(cases[i].s, &v);
        is_int(rc, cases[i].rc, "duration \"%s\" rc", cases[i].s);
        if (cases[i].rc == 0)
            ok(v == cases[i].ms, "duration \"%s\" = %llu ms", cases[i].s, (unsigned long long)cases[i].ms);
        else
            is_int(v, 12345, "duration \"%s\" leaves the output alone", cases[i].s);
    }
    is_int(tp_parse_duration_ms(NULL, &(uint64_t){0}), -EINVAL, "duration NULL");
}

static void test_size(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t v;
    } cases[] = {
        {"512", 0, 512},
        {"0", 0, 0},
        {"16KiB", 0, 16384},
        {"10MiB", 0, 10485760},
        {"1GiB", 0, 1073741824},
        {"1TiB", 0, 1ull << 40},
        {"1KB", 0, 1000},
        {"2MB", 0, 2000000},
        {"3GB", 0, 3000000000ull},
        {"1TB", 0, 1000000000000ull},
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551616", -ERANGE, 0},
        {"17179869184GiB", -ERANGE, 0}, /* 2^34 GiB = 2^64 */
        {"16kib", -EINVAL, 0},
        {"16K", -EINVAL, 0},
        {"16 KiB", -EINVAL, 0},
        {"1.5MiB", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"KiB", -EINVAL, 0},
        {"", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t v = 777;
        int rc = tp_parse_size(cases[i].s, &v);
        is_int(rc, cases[i].rc, "size \"%s\" rc", cases[i].s);
        if (cases[i].rc == 0)
            ok(v == cases[i].v, "size \"%s\" = %llu", cases[i].s, (unsigned long long)cases[i].v);
        else
            is_int(v, 777, "size \"%s\" leaves the output alone", cases[i].s);
    }
}

static void test_rate(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t tokens, period;
    } cases[] = {
        {"100/s", 0, 100, 1000},
        {"6000/m", 0, 6000, 60000},
        {"50000/h", 0, 50000, 3600000},
        {"1/h", 0, 1, 3600000},
        {"1000000000/s", 0, 1000000000, 1000},
        {"1000000001/s", -ERANGE, 0, 0},
        {"99999999999999999999999/s", -ERANGE, 0, 0},
        {"0/s", -ERANGE, 0, 0},
        {"10/x", -EINVAL, 0, 0},
        {"10/", -EINVAL, 0, 0},
        {"10/ss", -EINVAL, 0, 0},
        {"10/S", -EINVAL, 0, 0},
        {"10", -EINVAL, 0, 0},
        {"/s", -EINVAL, 0, 0},
        {"-1/s", -EINVAL, 0, 0},
        {"1.5/s", -EINVAL, 0, 0},
        {"10 /s", -EINVAL, 0, 0},
        {"", -EINVAL, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t t = 5, p = 5;
        int rc = tp_parse_rate(cases[i].s, &t, &p);
        is_int(rc, cases[i].rc, "rate \"%s\" rc", cases[i].s);
        if (cases[i].rc == 0) {
            ok(t == cases[i].tokens && p == cases[i].period, "rate \"%s\" = %llu per %llu ms", cases[i].s,
               (unsigned long long)cases[i].tokens, (unsigned long long)cases[i].period);
        } else {
            ok(t == 5 && p == 5, "rate \"%s\" leaves the output alone", cases[i].s);
        }
    }
}

static void test_addr(void)
{
    struct tp_addr a;
    const struct sockaddr_in *sin = (const void *)&a.ss;
    const struct sockaddr_in6 *sin6 = (const void *)&a.ss;
    char buf[INET6_ADDRSTRLEN];

    is_int(tp_parse_addr("127.0.0.1:8080", &a), 0, "ipv4 address");
    is_int(a.ss.ss_family, AF_INET, "ipv4 family");
    is_int(a.len, sizeof(struct sockaddr_in), "ipv4 len");
    is_int(ntohs(sin->sin_port), 8080, "ipv4 port");
    is_str(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)), "127.0.0.1", "ipv4 host");
    is_str(a.text, "127.0.0.1:8080", "ipv4 text as written");

    is_int(tp_parse_addr("[::1]:65535", &a), 0, "ipv6 address");
    is_int(a.ss.ss_family, AF_INET6, "ipv6 family");
    is_int(a.len, sizeof(struct sockaddr_in6), "ipv6 len");
    is_int(ntohs(sin6->sin6_port), 65535, "ipv6 port");
    is_str(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)), "::1", "ipv6 host");
    is_str(a.text, "[::1]:65535", "ipv6 text as written");

    is_int(tp_parse_addr("0.0.0.0:1", &a), 0, "wildcard ipv4, port 1");
    is_int(tp_parse_addr("[::]:80", &a), 0, "wildcard ipv6");
    is_int(tp_parse_addr("[2001:db8::ffff:1.2.3.4]:443", &a), 0, "ipv6 with embedded ipv4");
    is_str(a.text, "[2001:db8::ffff:1.2.3.4]:443", "text kept");

    static const struct {
        const char *s;
        int rc;
    } bad[] = {
        {"127.0.0.1:0", -ERANGE},
        {"127.0.0.1:65536", -ERANGE},
        {"[::1]:99999999999999999999999", -ERANGE},
        {"127.0.0.1", -EINVAL},
        {"127.0.0.1:", -EINVAL},
        {":80", -EINVAL},
        {"::1:80", -EINVAL}, /* IPv6 needs brackets */
        {"[::1]80", -EINVAL},
        {"[::1:80", -EINVAL},
        {"[1.2.3.4]:80", -EINVAL},
        {"localhost:80", -EINVAL},
        {"999.1.1.1:80", -EINVAL},
        {"1.2.3.4:80x", -EINVAL},
        {"1.2.3.4:+80", -EINVAL},
        {"1.2.3.4:-80", -EINVAL},
        {"1.2.3.4: 80", -EINVAL},
        {"[fe80::1%eth0]:80", -EINVAL},
        {"[0000:0000:0000:0000:0000:0000:0000:0001]:6553500000000000000000000", -EINVAL}, /* >= 64 chars */
        {"", -EINVAL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&a, 0x5a, sizeof(a));
        is_int(tp_parse_addr(bad[i].s, &a), bad[i].rc, "address \"%s\" rejected", bad[i].s);
        is_int((unsigned char)a.text[0], 0x5a, "address \"%s\" leaves the output alone", bad[i].s);
    }
}

static void test_checkers(void)
{
    ok(tp_cfg_is_token("x-user-id", 9), "token");
    ok(tp_cfg_is_token("!#$%&'*+-.^_`|~09azAZ", 21), "token: all the specials");
    ok(!tp_cfg_is_token("", 0), "token: empty");
    ok(!tp_cfg_is_token("x y", 3), "token: space");
    ok(!tp_cfg_is_token("x:y", 3), "token: colon");
    ok(!tp_cfg_is_token("x\0y", 3), "token: NUL");
    ok(!tp_cfg_is_token("caf\xc3\xa9", 5), "token: non-ASCII");

    ok(!tp_cfg_check_header_value("max-age=31536000; includeSubDomains", 35), "value: ordinary");
    ok(!tp_cfg_check_header_value("", 0), "value: empty");
    ok(!tp_cfg_check_header_value("a\tb c", 5), "value: inner tab and space");
    ok(!tp_cfg_check_header_value("caf\xc3\xa9", 5), "value: obs-text");
    is_str(tp_cfg_check_header_value("a\r\nb", 4), "CR, LF and NUL are not allowed", "value: CRLF");
    is_str(tp_cfg_check_header_value("a\0b", 3), "CR, LF and NUL are not allowed", "value: NUL");
    is_str(tp_cfg_check_header_value("a\x01", 2), "control characters are not allowed", "value: CTL");
    is_str(tp_cfg_check_header_value("a\x7f", 2), "control characters are not allowed", "value: DEL");
    is_str(tp_cfg_check_header_value(" a", 2), "leading and trailing whitespace is not allowed",
           "value: lead");
    is_str(tp_cfg_check_header_value("a\t", 2), "leading and trailing whitespace is not allowed",
           "value: trail");

    ok(!tp_cfg_check_host("api.example.com", 15), "host");
    ok(!tp_cfg_check_host("*.example.com", 13), "host: wildcard");
    ok(!tp_cfg_check_host("localhost", 9), "host: single label");
    ok(!tp_cfg_check_host("127.0.0.1", 9), "host: IPv4 literal");
    ok(!tp_cfg_check_host("Xn--Bcher-Kva.Example", 21), "host: upper case (lowered by the caller)");
    is_str(tp_cfg_check_host("", 0), "empty", "host: empty");
    is_str(tp_cfg_check_host("a.com:80", 8), "a port is not allowed: hosts are compared without it",
           "host: port");
    is_str(tp_cfg_check_host("*", 1), "\"*\" is allowed only as a leading \"*.\"", "host: bare *");
    is_str(tp_cfg_check_host("*.", 2), "a wildcard needs a domain after \"*.\"", "host: *. alone");
    is_str(tp_cfg_check_host("a.*.com", 7), "\"*\" is allowed only as a leading \"*.\"", "host: inner *");
    is_str(tp_cfg_check_host("a..com", 6), "empty label", "host: empty label");
    is_str(tp_cfg_check_host(".a.com", 6), "empty label", "host: leading dot");
    is_str(tp_cfg_check_host("a.com.", 6), "empty label", "host: trailing dot");
    is_str(tp_cfg_check_host("a_b.com", 7), "expected letters, digits, '-' and '.'", "host: underscore");
    char longlabel[80];
    memset(longlabel, 'a', 64);
    is_str(tp_cfg_check_host(longlabel, 64), "label longer than 63 characters", "host: 64-char label");
    ok(!tp_cfg_check_host(longlabel, 63), "host: 63-char label");
    char longhost[300];
    memset(longhost, 'a', sizeof(longhost));
    for (size_t i = 50; i < sizeof(longhost); i += 51)
        longhost[i] = '.';
    is_str(tp_cfg_check_host(longhost, 254), "longer than 253 characters", "host: 254 chars");
    ok(!tp_cfg_check_host(longhost, 253), "host: 253 chars");

    ok(!tp_cfg_check_path("/", 1, false), "path: /");
    ok(!tp_cfg_check_path("/users/", 7, false), "path: trailing slash");
    ok(!tp_cfg_check_path("/a%2Fb/.well-known/x..y/...", 27, false), "path: dots inside segments, escapes");
    is_str(tp_cfg_check_path("", 0, false), "must start with /", "path: empty");
    is_str(tp_cfg_check_path("users", 5, false), "must start with /", "path: relative");
    is_str(tp_cfg_check_path("/a?b", 4, false), "'?' is not allowed: routes match the path without the query",
           "path: query");
    ok(!tp_cfg_check_path("/a?b=1&c=/../", 13, true), "path: query allowed for health checks, dots in it ok");
    is_str(tp_cfg_check_path("/a#b", 4, true), "'#' is not allowed", "path: fragment");
    is_str(tp_cfg_check_path("/a/./b", 6, false), "'.' and '..' segments are not allowed", "path: ./");
    is_str(tp_cfg_check_path("/a/..", 5, false), "'.' and '..' segments are not allowed",
           "path: trailing ..");
    is_str(tp_cfg_check_path("/.", 2, false), "'.' and '..' segments are not allowed", "path: /.");
    is_str(tp_cfg_check_path("/./?x", 5, true), "'.' and '..' segments are not allowed",
           "path: dot before query");
    is_str(tp_cfg_check_path("/a b", 4, false), "only visible ASCII is allowed; percent-encode other bytes",
           "path: space");
    is_str(tp_cfg_check_path("/caf\xc3\xa9", 6, false),
           "only visible ASCII is allowed; percent-encode other bytes", "path: UTF-8");
    is_str(tp_cfg_check_path("/a\tb", 4, false), "only visible ASCII is allowed; percent-encode other bytes",
           "path: tab");

    is_int(tp_cfg_method("GET", 3), HTTP_GET, "method GET");
    is_int(tp_cfg_method("DELETE", 6), HTTP_DELETE, "method DELETE (number 0)");
    is_int(tp_cfg_method("M-SEARCH", 8), HTTP_MSEARCH, "method M-SEARCH by its wire name");
    is_int(tp_cfg_method("SOURCE", 6), HTTP_SOURCE, "method SOURCE");
    is_int(tp_cfg_method("get", 3), -1, "method: lower case");
    is_int(tp_cfg_method("MSEARCH", 7), -1, "method: enum name is not the wire name");
    is_int(tp_cfg_method("DESCRIBE", 8), -1, "method: RTSP only");
    is_int(tp_cfg_method("GETX", 3), HTTP_GET, "method: length is honoured");
}

static void test_quote_and_diag(void)
{
    char q[200];
    char big[300];

    tp_cfg_quote(q, sizeof(q), "a\"b\\c\n\xff", 7);
    is_str(q, "a\\\"b\\\\c\\x0a\\xff", "quote escapes");
    memset(big, 'x', sizeof(big));
    tp_cfg_quote(q, sizeof(q), big, sizeof(big));
    is_int(strlen(q), 63, "quote cuts long text at 60 bytes plus ...");
    ok(strcmp(q + 60, "...") == 0, "quote ends with ...");
    tp_cfg_quote(q, 20, big, sizeof(big));
    ok(strlen(q) < 20, "quote respects a small buffer");

    struct tp_diag d = {0};
    for (int i = 0; i < 20; i++)
        is_int(tp_diag_add(&d, "m%d:%s", i, "x"), 0, "diag add %d", i);
    is_int(d.n, 20, "diag holds 20");
    is_str(d.msgs[19], "m19:x", "diag text");
    tp_diag_dispose(&d);
    ok(d.n == 0 && d.msgs == NULL && d.cap == 0, "diag disposed and zeroed");
    tp_diag_dispose(&d);
    ok(1, "diag dispose twice is fine");
}

static void test_arena(void)
{
    struct tp_cfg_arena *a = tp_cfg_arena_create();
    ok(a != NULL, "arena");
    for (int i = 0; i < 2000; i++) {
        char *p = tp_cfg_arena_alloc(a, (size_t)(i % 97) + 1);
        if (!p || ((uintptr_t)p % _Alignof(max_align_t)) != 0 || p[0] != 0) {
            ok(0, "arena alloc %d aligned and zeroed", i);
            break;
        }
        memset(p, 0xff, (size_t)(i % 97) + 1);
    }
    char *big = tp_cfg_arena_alloc(a, 100000);
    ok(big && big[99999] == 0, "arena big block");
    ok(tp_cfg_arena_calloc(a, SIZE_MAX / 2, 4) == NULL, "arena calloc overflow refused");
    is_str(tp_cfg_arena_strndup(a, "hello world", 5), "hello", "arena strndup");
    tp_cfg_arena_destroy(a);
    tp_cfg_arena_destroy(NULL);
}

int main(void)
{
    test_duration();
    test_size();
    test_rate();
    test_addr();
    test_checkers();
    test_quote_and_diag();
    test_arena();
    return tap_done();
}
