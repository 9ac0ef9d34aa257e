/* SPDX-License-Identifier: MIT */
/*
 * The router (include/turnpike/router.h, docs/routing.md): which route serves
 * a request, by docs/reference.md "Route selection".
 *
 * tp_router_create() runs on the control thread while a snapshot is built. It
 * uses growable scratch arrays, then lays the result out in ONE allocation of
 * flat arrays linked by 32-bit indices (no pointers inside, so the block is
 * position independent and dense). The router keeps no pointer into the
 * tp_config: host keys, path segments and header names/values are copied into
 * the block (the names lowercased), so it stays valid even if the config were
 * freed first. Only the lookup results (targets) are the caller's pointers.
 *
 * tp_router_lookup() runs on every shard for every request, concurrently on
 * the same router: it only reads, takes no lock and allocates nothing. The host
 * is lowercased into a stack buffer.
 *
 * Layout (all in the one block; big ones are offered to huge pages):
 *   host table  open addressing, XXH3 of the key. Exact hosts are keyed by the
 *               normalized name ("api.example.com"), wildcards by their suffix
 *               with the leading dot (".example.com"). No valid host starts
 *               with '.', so both kinds share the table without confusion.
 *               Wildcards are also listed longest suffix first. Each entry
 *               names the root of its path trie.
 *   any host    one more trie root (routes without match.host).
 *   trie        nodes[]: the children of a node are a contiguous run of ids,
 *               sorted by segment key, each node carrying the key of the
 *               segment that leads to it. Runs are laid out depth first, so
 *               the nodes along one path are near each other. Few children
 *               are scanned, more are binary searched, many also get a hash
 *               index (router_int.h has the thresholds and why).
 *   routes      routes[] in list order: each node owns a run of exact routes
 *               ending there, then "slash" prefixes (written with a trailing
 *               '/'), then plain prefixes, each part in file order.
 *
 * Prefix semantics by segments: a path "/a/b" has the segments [a, b], "/a/"
 * has [a, ""], "/" has [""]. Prefix "/a" (plain, at node [a]) matches a path
 * whose segments start with [a]. Prefix "/a/" (slash, also at node [a])
 * matches a path whose segments start with [a] and that has at least one
 * segment more. Prefix "/" is the slash prefix of the root. This is exactly
 * the byte rule "P == Q, or P starts with Q and Q ends with '/' or the next
 * byte of P is '/'", and a deeper node always holds longer prefixes than its
 * ancestors (a plain prefix ends with a non-empty segment), so "deepest node
 * first, slash before plain" is "longest prefix first".
 */
#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* XXH3 of short keys (hosts, segments) inlined rather than called through
 * the shared library: same function, same values, no call per probe. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <turnpike/err.h>
#include <turnpike/router.h>

#include "policy/router_int.h"

#define NONE UINT32_MAX

/* Route list kinds, in the order they sit in a node's run. */
enum rt_kind {
    RT_EXACT = 0, /* path: P ends at this node */
    RT_SLASH,     /* path_prefix ending in '/': P goes on past this node */
    RT_PLAIN,     /* path_prefix: P ends here or goes on */
    RT_KIND_COUNT
};

/* A route, stored inside the list it belongs to (every route is in exactly
 * one list), so trying a candidate costs no extra indirection. */
struct rt_route {
    uint64_t methods; /* bit (1 << llhttp method); 0 = any */
    void *target;     /* what lookup returns */
    uint32_t hdr_off; /* first of n_hdr entries in hdrs[] */
    uint32_t n_hdr;
    uint32_t idx; /* index in cfg->routes */
    uint32_t _pad;
};

struct rt_hdr {
    uint32_t name_off; /* in strs, lowercased */
    uint32_t name_len;
    uint32_t value_off; /* in strs, as configured */
    uint32_t value_len;
};

/*
 * A trie node with the key of the segment leading to it, so that scanning
 * siblings and then using the match touches the same cache lines.
 */
struct rt_node {
    uint64_t key8;        /* first min(seg_len, 8) bytes of the segment, see seg_key8() */
    uint32_t seg_len;     /* segment bytes, without '/' */
    uint32_t seg_off;     /* whole segment in strs */
    uint32_t first_child; /* children are node ids [first_child, first_child + n_child) */
    uint32_t n_child;
    uint32_t hash_off;  /* in child_hash[]; used when hash_mask != 0 */
    uint32_t hash_mask; /* slots - 1, or 0 when the children are only searched */
    uint32_t list_off;  /* in routes[]: n_exact, then n_slash, then n_plain routes */
    uint32_t n_exact;
    uint32_t n_slash;
    uint32_t n_plain;
    uint32_t up; /* nearest strict ancestor with prefix routes, or NONE */
};

/* Slot of a wide node's child index; the key is repeated so that a probe
 * compares it without touching the node. */
struct rt_cslot {
    uint64_t key8;
    uint32_t len;
    uint32_t node; /* NONE = empty */
};

struct rt_hslot {
    uint64_t hash;    /* XXH3_64bits of the key */
    uint32_t key_off; /* in strs */
    uint32_t key_len;
    uint32_t root; /* trie root; NONE = empty slot */
    uint32_t _pad;
};

struct rt_wild {
    uint32_t key_off; /* ".example.com" in strs */
    uint32_t key_len;
    uint32_t root;
};

struct tp_router {
    const struct rt_route *routes; /* in list order: see rt_node.list_off */
    const struct rt_hdr *hdrs;
    const struct rt_node *nodes;
    const struct rt_cslot *child_hash;
    const struct rt_hslot *hslots; /* hmask + 1 slots, or NULL when no host is named */
    const struct rt_wild *wild;    /* longest key first */
    const char *strs;
    uint32_t hmask;
    uint32_t n_exact;
    uint32_t n_wild;
    uint32_t wild_min; /* shortest and longest wildcard key, to skip probes */
    uint32_t wild_max;
    uint32_t any_root; /* NONE when every route names a host */
    /* statistics only */
    size_t n_routes;
    size_t n_nodes;
    size_t n_hashed;
    size_t max_depth;
    size_t bytes;
    size_t map_len; /* block from block_alloc(): mmap'ed length, 0 = malloc */
};

/* ------------------------------------------------------------------------ */
/* host normalization                                                        */

/*
 * Byte classes of a host name: the lowercased byte when it may appear in a
 * reg-name or IPv4 address we accept, 0 otherwise. Accepted: letters, digits,
 * '-', '.', '_' (underscores are not DNS-legal but common in internal names).
 * Everything else (percent escapes, sub-delims, spaces, controls, 8-bit) makes
 * the Host invalid, and an invalid Host only matches any-host routes.
 */
#define HOST_COLON 1 /* ':' ends the name, the port follows */

/* clang-format off */
static const uint8_t host_map[256] = {
    ['-'] = '-', ['.'] = '.', ['_'] = '_', [':'] = HOST_COLON,
    ['0'] = '0', ['1'] = '1', ['2'] = '2', ['3'] = '3', ['4'] = '4',
    ['5'] = '5', ['6'] = '6', ['7'] = '7', ['8'] = '8', ['9'] = '9',
    ['a'] = 'a', ['b'] = 'b', ['c'] = 'c', ['d'] = 'd', ['e'] = 'e', ['f'] = 'f', ['g'] = 'g',
    ['h'] = 'h', ['i'] = 'i', ['j'] = 'j', ['k'] = 'k', ['l'] = 'l', ['m'] = 'm', ['n'] = 'n',
    ['o'] = 'o', ['p'] = 'p', ['q'] = 'q', ['r'] = 'r', ['s'] = 's', ['t'] = 't', ['u'] = 'u',
    ['v'] = 'v', ['w'] = 'w', ['x'] = 'x', ['y'] = 'y', ['z'] = 'z',
    ['A'] = 'a', ['B'] = 'b', ['C'] = 'c', ['D'] = 'd', ['E'] = 'e', ['F'] = 'f', ['G'] = 'g',
    ['H'] = 'h', ['I'] = 'i', ['J'] = 'j', ['K'] = 'k', ['L'] = 'l', ['M'] = 'm', ['N'] = 'n',
    ['O'] = 'o', ['P'] = 'p', ['Q'] = 'q', ['R'] = 'r', ['S'] = 's', ['T'] = 't', ['U'] = 'u',
    ['V'] = 'v', ['W'] = 'w', ['X'] = 'x', ['Y'] = 'y', ['Z'] = 'z',
};
/* clang-format on */

static bool is_ipv6_byte(uint8_t c)
{
    return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') || c == ':' || c == '.';
}

/* A port after ':' is 0..5 digits (RFC 3986 allows an empty one). */
static bool port_ok(const char *p, size_t n)
{
    if (n > 5)
        return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return true;
}

int tp_router_host_normalize(const char *host, size_t len, char *out, size_t cap)
{
    if (!host || len == 0)
        return -1;

    if (host[0] == '[') {
        /* IPv6 literal: "[" hex/colon/dot "]" [":" port]. Zone ids are not accepted. */
        const char *rb = memchr(host, ']', len);
        if (!rb || rb == host + 1)
            return -1;
        size_t hl = (size_t)(rb - host) + 1;
        if (hl < len && (host[hl] != ':' || !port_ok(host + hl + 1, len - hl - 1)))
            return -1;
        if (hl > cap || hl > 255)
            return -1;
        out[0] = '[';
        for (size_t i = 1; i + 1 < hl; i++) {
            uint8_t c = (uint8_t)host[i];
            if (!is_ipv6_byte(c))
                return -1;
            out[i] = (char)(c | (c >= 'A' ? 0x20 : 0)); /* lowercases A-F; digits, ':', '.' unchanged */
        }
        out[hl - 1] = ']';
        if (hl < cap)
            out[hl] = '\0';
        return (int)hl;
    }

    /*
     * reg-name or IPv4, lowercased through the table in one pass that stops at
     * the port's ':'. Letters, digits and '_' map to values >= '0', so the
     * per-byte work is a lookup, a store and one predictable branch; '-', '.',
     * ':' and invalid bytes take the rare path.
     */
    /* last_dot starts as if a dot preceded the name: a leading '.' is an empty label */
    size_t lim = len < cap ? len : cap, i, last_dot = (size_t)-1;
    for (i = 0; i < lim; i++) {
        uint8_t c = host_map[(uint8_t)host[i]];
        if (TP_UNLIKELY(c < '0')) {
            if (c == HOST_COLON)
                break;
            if (c == 0)
                return -1;
            if (c == '.') {
                if (last_dot + 1 == i)
                    return -1; /* empty label */
                last_dot = i;
            }
        }
        out[i] = (char)c;
    }
    size_t n = i;
    if (i == lim && i < len && host[i] == '.') {
        if (last_dot + 1 == n)
            return -1; /* "a.." with the second dot past <out> */
        i++;           /* the trailing dot of a name that fills <out> exactly */
    } else if (n > 0 && last_dot + 1 == n) {
        n--; /* "example.com." is the same name, fully qualified */
    }
    if (i < len && (host[i] != ':' || !port_ok(host + i + 1, len - i - 1)))
        return -1; /* a second ':' or a bad port, or longer than <cap> */
    if (n == 0 || n > 255)
        return -1;
    if (n < cap)
        out[n] = '\0';
    return (int)n;
}

/* ------------------------------------------------------------------------ */
/* lookup                                                                    */

/*
 * The first up-to-8 bytes of a segment as an integer, byte i in bits 8i..8i+7
 * (little-endian order on every host), zero padded: equal keys and lengths
 * mean equal segments up to 8 bytes, so most compares are one integer compare.
 */
static inline uint64_t seg_key8(const char *s, size_t len)
{
    uint64_t k = 0;
    for (size_t i = 0; i < len && i < 8; i++)
        k |= (uint64_t)(uint8_t)s[i] << (8 * i);
    return k;
}

static inline uint64_t load_le64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return le64toh(x);
}

/* Bytes that are 0 in <x> get their high bit set; exact for the lowest one,
 * which is all we use (higher ones may be false positives). */
static inline uint64_t zero_bytes(uint64_t x)
{
    return (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
}

/*
 * Reads the segment at <p>: returns its length (up to the next '/' or <end>)
 * and its seg_key8() in *<key>. One 8-byte load finds both for segments up to
 * 7 bytes, instead of a memchr call and a byte loop; the load never leaves
 * [<base>, <end>): near the end it takes the last 8 bytes and shifts. Paths
 * shorter than 8 bytes use the byte loop.
 */
static inline size_t seg_scan(const char *p, const char *end, const char *base, uint64_t *key)
{
    const uint64_t slashes = 0x2f2f2f2f2f2f2f2full;
    size_t avail = (size_t)(end - p), len;
    uint64_t x, z;

    if (avail >= 8) {
        x = load_le64(p);
        z = zero_bytes(x ^ slashes);
        if (!z) {
            /* 8 bytes or more: the key is the first 8, memchr finds the end */
            const char *q = memchr(p + 8, '/', avail - 8);
            *key = x;
            return q ? (size_t)(q - p) : avail;
        }
        len = (size_t)__builtin_ctzll(z) >> 3;
    } else if (end - base >= 8) {
        if (avail == 0) {
            *key = 0;
            return 0;
        }
        /* the bytes before p are part of the path: load the last 8 and
         * shift p's bytes down; the zeroes shifted in never equal '/' */
        x = load_le64(end - 8) >> (8 * (8 - avail));
        z = zero_bytes(x ^ slashes);
        len = z ? (size_t)__builtin_ctzll(z) >> 3 : avail;
    } else {
        for (len = 0; len < avail && p[len] != '/'; len++)
            ;
        *key = seg_key8(p, len);
        return len;
    }
    *key = x & ((1ull << (8 * len)) - 1); /* len < 8 here */
    return len;
}

/*
 * The order of siblings: by key, then length, then the bytes after the
 * eighth. Only has to be a total order that build and lookup agree on; it is
 * not lexicographic.
 */
static inline int seg_cmp(const struct tp_router *r, uint32_t node, uint64_t k, const char *s, size_t len)
{
    const struct rt_node *sg = &r->nodes[node];
    if (sg->key8 != k)
        return sg->key8 < k ? -1 : 1;
    if (sg->seg_len != len)
        return sg->seg_len < len ? -1 : 1;
    if (len <= 8)
        return 0;
    return memcmp(r->strs + sg->seg_off + 8, s + 8, len - 8);
}

/* The child of <nd> reached by segment <s>, or NONE. */
static inline uint32_t find_child(const struct tp_router *r, const struct rt_node *nd, const char *s,
                                  size_t len, uint64_t k)
{
    if (nd->hash_mask) {
        /* Wide node: one hash, usually one probe, and the probe carries the
         * key so only segments longer than 8 bytes look at strs. */
        uint32_t mask = nd->hash_mask;
        const struct rt_cslot *slots = r->child_hash + nd->hash_off;
        for (uint32_t i = (uint32_t)XXH3_64bits(s, len) & mask;; i = (i + 1) & mask) {
            const struct rt_cslot *cs = &slots[i];
            if (cs->node == NONE)
                return NONE;
            if (cs->key8 == k && cs->len == len &&
                (len <= 8 || memcmp(r->strs + r->nodes[cs->node].seg_off + 8, s + 8, len - 8) == 0))
                return cs->node;
        }
    }

    uint32_t lo = nd->first_child, hi = nd->first_child + nd->n_child;
    if (nd->n_child <= TP_ROUTER_LINEAR_MAX) {
        for (uint32_t c = lo; c < hi; c++)
            if (r->nodes[c].key8 == k && seg_cmp(r, c, k, s, len) == 0)
                return c;
        return NONE;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int d = seg_cmp(r, mid, k, s, len);
        if (d == 0)
            return mid;
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NONE;
}

static inline bool route_ok(const struct tp_router *r, const struct rt_route *rt,
                            const struct tp_route_req *req)
{
    if (rt->methods && (req->method >= 64 || !((rt->methods >> req->method) & 1)))
        return false;
    for (uint32_t i = 0; i < rt->n_hdr; i++) {
        const struct rt_hdr *h = &r->hdrs[rt->hdr_off + i];
        size_t vlen = 0;
        const char *v;
        if (!req->header)
            return false;
        v = req->header(req->header_ctx, r->strs + h->name_off, h->name_len, &vlen);
        if (!v || vlen != h->value_len || memcmp(v, r->strs + h->value_off, vlen) != 0)
            return false;
    }
    return true;
}

/* The first route of routes[off, off + n) that accepts <req>, or NULL. */
static inline const struct rt_route *try_list(const struct tp_router *r, uint32_t off, uint32_t n,
                                              const struct tp_route_req *req)
{
    for (uint32_t i = off; i < off + n; i++)
        if (route_ok(r, &r->routes[i], req))
            return &r->routes[i];
    return NULL;
}

/*
 * Walks the trie of one host entry as deep as <path> goes, then tries the
 * candidate lists from most to least specific (see the file comment).
 */
static const struct rt_route *match_path(const struct tp_router *r, uint32_t root, const char *path,
                                         size_t len, const struct tp_route_req *req)
{
    const char *p = path + 1, *end = path + len;
    const struct rt_node *nd = &r->nodes[root];
    const struct rt_route *rt;
    bool more; /* the path has segments below nd */

    for (;;) {
        if (nd->n_child == 0) {
            more = true; /* we only get here with at least one segment left */
            break;
        }
        uint64_t key;
        const char *q = p + seg_scan(p, end, path, &key);
        uint32_t c = find_child(r, nd, p, (size_t)(q - p), key);
        if (c == NONE) {
            more = true;
            break;
        }
        nd = &r->nodes[c];
        if (q == end) {
            more = false;
            break;
        }
        p = q + 1; /* may equal end: a trailing '/' leaves one empty segment */
    }

    if (more) {
        /* slash and plain prefixes are adjacent: one run */
        rt = try_list(r, nd->list_off + nd->n_exact, nd->n_slash + nd->n_plain, req);
    } else {
        rt = try_list(r, nd->list_off, nd->n_exact, req);
        if (!rt)
            rt = try_list(r, nd->list_off + nd->n_exact + nd->n_slash, nd->n_plain, req);
    }
    /* The path goes on below every strict ancestor: slash and plain apply. */
    for (uint32_t a = nd->up; !rt && a != NONE; a = r->nodes[a].up) {
        const struct rt_node *an = &r->nodes[a];
        rt = try_list(r, an->list_off + an->n_exact, an->n_slash + an->n_plain, req);
    }
    return rt;
}

static inline const struct rt_hslot *host_find(const struct tp_router *r, const char *key, size_t len)
{
    uint64_t h = XXH3_64bits(key, len);
    for (uint32_t i = (uint32_t)h & r->hmask;; i = (i + 1) & r->hmask) {
        const struct rt_hslot *s = &r->hslots[i];
        if (s->root == NONE)
            return NULL;
        if (s->hash == h && s->key_len == len && memcmp(r->strs + s->key_off, key, len) == 0)
            return s;
    }
}

void *tp_router_lookup(const struct tp_router *r, const struct tp_route_req *req, size_t *route_idx)
{
    const char *path = req->path;
    size_t plen = req->path_len;
    const struct rt_route *rt = NULL;

    /* An empty path (absolute-form without one) means "/"; one that does not
     * start with '/' ("*" of OPTIONS) matches no route. */
    if (plen == 0) {
        path = "/";
        plen = 1;
    } else if (path[0] != '/') {
        goto out;
    }

    /* Named hosts first: exact, then wildcards longest suffix first. */
    if (req->host && (r->n_exact || r->n_wild)) {
        char hbuf[256];
        int hl = tp_router_host_normalize(req->host, req->host_len, hbuf, sizeof(hbuf));
        if (hl > 0) {
            size_t n = (size_t)hl;
            const struct rt_hslot *s;
            if (r->n_exact && (s = host_find(r, hbuf, n)) != NULL) {
                if ((rt = match_path(r, s->root, path, plen, req)))
                    goto out;
            }
            if (r->n_wild <= TP_ROUTER_WILD_LINEAR_MAX) {
                for (uint32_t w = 0; w < r->n_wild; w++) {
                    const struct rt_wild *wd = &r->wild[w];
                    /* the key starts with '.', the host never does: n > key_len holds on a match */
                    if (wd->key_len < n &&
                        memcmp(hbuf + n - wd->key_len, r->strs + wd->key_off, wd->key_len) == 0 &&
                        (rt = match_path(r, wd->root, path, plen, req)))
                        goto out;
                }
            } else {
                /* Every suffix starting at a dot, leftmost dot = longest first. */
                for (size_t i = 1; i < n; i++) {
                    size_t sl = n - i;
                    if (sl < r->wild_min)
                        break;
                    if (hbuf[i] != '.' || sl > r->wild_max)
                        continue;
                    if ((s = host_find(r, hbuf + i, sl)) != NULL &&
                        (rt = match_path(r, s->root, path, plen, req)))
                        goto out;
                }
            }
        }
    }
    if (r->any_root != NONE)
        rt = match_path(r, r->any_root, path, plen, req);

out:
    if (route_idx)
        *route_idx = rt ? rt->idx : (size_t)-1;
    return rt ? rt->target : NULL;
}

size_t tp_router_split_pick(const struct tp_cfg_split *split, size_t n_split, uint32_t rnd)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n_split; i++)
        sum += split[i].weight;
    if (sum == 0)
        return 0; /* the loader forbids it; never index past the array */
    /* x is uniform in [0, sum) when rnd is uniform in [0, 2^32); arm i owns
     * [cum_{i-1}, cum_i), empty for a weight of 0. */
    uint64_t x = ((uint64_t)rnd * sum) >> 32, cum = 0;
    for (size_t i = 0; i < n_split; i++) {
        cum += split[i].weight;
        if (x < cum)
            return i;
    }
    return n_split - 1; /* unreachable: x < sum */
}

void tp_router_stats(const struct tp_router *r, struct tp_router_stats *st)
{
    st->bytes = r->bytes;
    st->n_routes = r->n_routes;
    st->n_exact = r->n_exact;
    st->n_wild = r->n_wild;
    st->has_any = r->any_root != NONE;
    st->n_nodes = r->n_nodes;
    st->n_hashed = r->n_hashed;
    st->host_slots = r->hslots ? (size_t)r->hmask + 1 : 0;
    st->max_depth = r->max_depth;
}

/* ------------------------------------------------------------------------ */
/* build                                                                     */

/* Scratch state of one tp_router_create(); freed before it returns. */
struct bnode {
    uint32_t seg_off; /* in b->sb */
    uint32_t seg_len;
    uint64_t key8;
    uint32_t parent; /* NONE for a root */
    uint32_t first_child;
    uint32_t next_sib;
    uint32_t n_child;
    uint32_t depth;
    uint32_t id;   /* final id (depth-first run layout) */
    uint32_t kids; /* final id of the first child */
    uint32_t cnt[RT_KIND_COUNT];
};

enum bhost_kind {
    BH_EXACT = 0,
    BH_WILD,
    BH_ANY,
};

struct bhost {
    uint32_t key_off; /* in b->sb; ".example.com" for a wildcard */
    uint32_t key_len;
    uint32_t root; /* scratch node */
    enum bhost_kind kind;
};

/* Open-addressing scratch map: hash -> index, equality decided by the caller. */
struct bmap {
    uint64_t *h;
    uint32_t *val; /* NONE = empty */
    size_t mask;
    size_t n;
};

struct builder {
    char *sb; /* every string, owned bytes, copied into strs at the end */
    size_t sb_len, sb_cap;
    struct bnode *nodes;
    size_t n_nodes, cap_nodes;
    struct bhost *hosts;
    size_t n_hosts, cap_hosts;
    struct rt_hdr *hdrs;
    size_t n_hdrs, cap_hdrs;
    struct bmap host_map;  /* key -> host */
    struct bmap child_map; /* (parent, segment) -> node */
    uint32_t any_host;
    uint32_t *rnode; /* per route: scratch node */
    uint8_t *rkind;  /* per route: enum rt_kind */
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc *= 2;
    if (nc > UINT32_MAX)
        return -EOVERFLOW; /* every index in the router is 32 bits */
    void *np = realloc(*p, nc * elem);
    if (!np)
        return -ENOMEM;
    *p = np;
    *cap = nc;
    return 0;
}

/* Appends <n> bytes (lowercased when <lower>) to the string buffer. */
static int sb_add(struct builder *b, const char *s, size_t n, bool lower, uint32_t *off)
{
    int rc = grow((void **)&b->sb, &b->sb_cap, b->sb_len + n + 1, 1);
    if (rc)
        return rc;
    char *d = b->sb + b->sb_len;
    for (size_t i = 0; i < n; i++)
        d[i] = lower && s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] | 0x20) : s[i];
    d[n] = '\0';
    *off = (uint32_t)b->sb_len;
    b->sb_len += n + 1;
    return 0;
}

static int bmap_init(struct bmap *m)
{
    m->mask = 63;
    m->n = 0;
    m->h = malloc((m->mask + 1) * sizeof(*m->h));
    m->val = malloc((m->mask + 1) * sizeof(*m->val));
    if (!m->h || !m->val)
        return -ENOMEM;
    memset(m->val, 0xff, (m->mask + 1) * sizeof(*m->val));
    return 0;
}

static void bmap_dispose(struct bmap *m)
{
    free(m->h);
    free(m->val);
}

/* Doubles <m> when it is half full (keeps probe chains short). */
static int bmap_reserve(struct bmap *m)
{
    if ((m->n + 1) * 2 <= m->mask + 1)
        return 0;
    size_t nsz = (m->mask + 1) * 2;
    uint64_t *nh = malloc(nsz * sizeof(*nh));
    uint32_t *nv = malloc(nsz * sizeof(*nv));
    if (!nh || !nv) {
        free(nh);
        free(nv);
        return -ENOMEM;
    }
    memset(nv, 0xff, nsz * sizeof(*nv));
    for (size_t i = 0; i <= m->mask; i++) {
        if (m->val[i] == NONE)
            continue;
        size_t j = m->h[i] & (nsz - 1);
        while (nv[j] != NONE)
            j = (j + 1) & (nsz - 1);
        nh[j] = m->h[i];
        nv[j] = m->val[i];
    }
    bmap_dispose(m);
    m->h = nh;
    m->val = nv;
    m->mask = nsz - 1;
    return 0;
}

static uint32_t host_get(struct builder *b, enum bhost_kind kind, const char *key, size_t len, int *rc)
{
    uint64_t h = XXH3_64bits(key, len);
    size_t i;
    *rc = bmap_reserve(&b->host_map);
    if (*rc)
        return NONE;
    for (i = h & b->host_map.mask; b->host_map.val[i] != NONE; i = (i + 1) & b->host_map.mask) {
        const struct bhost *bh = &b->hosts[b->host_map.val[i]];
        if (b->host_map.h[i] == h && bh->key_len == len && memcmp(b->sb + bh->key_off, key, len) == 0)
            return b->host_map.val[i];
    }
    /* new host entry with an empty root */
    if ((*rc = grow((void **)&b->hosts, &b->cap_hosts, b->n_hosts + 1, sizeof(*b->hosts))) ||
        (*rc = grow((void **)&b->nodes, &b->cap_nodes, b->n_nodes + 1, sizeof(*b->nodes))))
        return NONE;
    struct bhost *bh = &b->hosts[b->n_hosts];
    if ((*rc = sb_add(b, key, len, false, &bh->key_off)))
        return NONE;
    bh->key_len = (uint32_t)len;
    bh->kind = kind;
    bh->root = (uint32_t)b->n_nodes;
    b->nodes[b->n_nodes++] = (struct bnode){.parent = NONE, .first_child = NONE, .next_sib = NONE};
    b->host_map.h[i] = h;
    b->host_map.val[i] = (uint32_t)b->n_hosts;
    b->host_map.n++;
    return (uint32_t)b->n_hosts++;
}

static uint32_t child_get(struct builder *b, uint32_t parent, const char *seg, size_t len, int *rc)
{
    uint64_t h = XXH3_64bits_withSeed(seg, len, parent);
    size_t i;
    *rc = bmap_reserve(&b->child_map);
    if (*rc)
        return NONE;
    for (i = h & b->child_map.mask; b->child_map.val[i] != NONE; i = (i + 1) & b->child_map.mask) {
        const struct bnode *c = &b->nodes[b->child_map.val[i]];
        if (b->child_map.h[i] == h && c->parent == parent && c->seg_len == len &&
            memcmp(b->sb + c->seg_off, seg, len) == 0)
            return b->child_map.val[i];
    }
    if ((*rc = grow((void **)&b->nodes, &b->cap_nodes, b->n_nodes + 1, sizeof(*b->nodes))))
        return NONE;
    uint32_t id = (uint32_t)b->n_nodes;
    struct bnode *c = &b->nodes[id];
    *c = (struct bnode){.seg_len = (uint32_t)len, .key8 = seg_key8(seg, len), .parent = parent};
    if ((*rc = sb_add(b, seg, len, false, &c->seg_off)))
        return NONE;
    /* link in front; the order of siblings is fixed by sorting later */
    struct bnode *pn = &b->nodes[parent];
    c->next_sib = pn->first_child;
    c->depth = pn->depth + 1;
    c->first_child = NONE;
    pn->first_child = id;
    pn->n_child++;
    b->n_nodes++;
    b->child_map.h[i] = h;
    b->child_map.val[i] = id;
    b->child_map.n++;
    return id;
}

/* Key of a configured host: exact names normalized, wildcards as ".suffix". */
static int host_key(const char *host, char *buf, size_t cap, enum bhost_kind *kind, size_t *len)
{
    size_t hl = strlen(host);
    int n;
    if (hl >= 2 && host[0] == '*' && host[1] == '.') {
        /* the suffix must be a plain name: no port, no IPv6 literal */
        if (memchr(host, ':', hl) || host[2] == '[')
            return -EINVAL;
        buf[0] = '.';
        n = tp_router_host_normalize(host + 2, hl - 2, buf + 1, cap - 1);
        if (n <= 0)
            return -EINVAL;
        *kind = BH_WILD;
        *len = (size_t)n + 1;
        return 0;
    }
    /* a port in the configured host would be silently dropped: refuse it */
    const char *rb = host[0] == '[' ? memchr(host, ']', hl) : NULL;
    if (host[0] == '[' ? (!rb || rb != host + hl - 1) : memchr(host, ':', hl) != NULL)
        return -EINVAL;
    n = tp_router_host_normalize(host, hl, buf, cap);
    if (n <= 0)
        return -EINVAL;
    *kind = BH_EXACT;
    *len = (size_t)n;
    return 0;
}

/* Inserts the path of route <i> into the trie of its host entry. */
static int add_route(struct builder *b, const struct tp_cfg_route *cr, size_t i)
{
    char key[258];
    size_t klen = 0;
    enum bhost_kind kind = BH_ANY;
    uint32_t host;
    int rc = 0;

    if (cr->host) {
        if ((rc = host_key(cr->host, key, sizeof(key), &kind, &klen)))
            return rc;
        host = host_get(b, kind, key, klen, &rc);
    } else {
        if (b->any_host == NONE)
            b->any_host = host_get(b, BH_ANY, "", 0, &rc); /* key "" is never a valid host */
        host = b->any_host;
    }
    if (host == NONE)
        return rc;

    const char *path = cr->path ? cr->path : "/";
    size_t plen = strlen(path);
    if (plen == 0 || path[0] != '/')
        return -EINVAL;
    enum rt_kind rk = cr->path_exact ? RT_EXACT : RT_PLAIN;
    if (rk == RT_PLAIN && path[plen - 1] == '/') {
        rk = RT_SLASH; /* "/users/": node [users], path must go on; "/" is the root's */
        plen--;
    }

    uint32_t n = b->hosts[host].root;
    if (rk == RT_EXACT || plen > 0) {
        const char *p = path + 1, *end = path + plen;
        for (;;) {
            const char *q = memchr(p, '/', (size_t)(end - p));
            if (!q)
                q = end;
            n = child_get(b, n, p, (size_t)(q - p), &rc);
            if (n == NONE)
                return rc;
            if (q == end)
                break;
            p = q + 1;
        }
    }
    b->rnode[i] = n;
    b->rkind[i] = (uint8_t)rk;
    b->nodes[n].cnt[rk]++;

    /* match.headers: names lowercased here once, compared per request */
    if ((rc = grow((void **)&b->hdrs, &b->cap_hdrs, b->n_hdrs + cr->n_headers, sizeof(*b->hdrs))))
        return rc;
    for (size_t h = 0; h < cr->n_headers; h++) {
        const struct tp_header_kv *kv = &cr->headers[h];
        struct rt_hdr *rh = &b->hdrs[b->n_hdrs + h];
        if ((rc = sb_add(b, kv->name, kv->name_len, true, &rh->name_off)) ||
            (rc =
                 sb_add(b, kv->value ? kv->value : "", kv->value ? kv->value_len : 0, false, &rh->value_off)))
            return rc;
        rh->name_len = (uint32_t)kv->name_len;
        rh->value_len = kv->value ? (uint32_t)kv->value_len : 0;
    }
    return 0;
}

static int bnode_cmp(const void *a, const void *c, void *ctx)
{
    const struct builder *b = ctx;
    const struct bnode *x = &b->nodes[*(const uint32_t *)a], *y = &b->nodes[*(const uint32_t *)c];
    if (x->key8 != y->key8)
        return x->key8 < y->key8 ? -1 : 1;
    if (x->seg_len != y->seg_len)
        return x->seg_len < y->seg_len ? -1 : 1;
    if (x->seg_len <= 8)
        return 0;
    return memcmp(b->sb + x->seg_off + 8, b->sb + y->seg_off + 8, x->seg_len - 8);
}

static int wild_cmp(const void *a, const void *c)
{
    const struct rt_wild *x = a, *y = c;
    if (x->key_len != y->key_len)
        return x->key_len > y->key_len ? -1 : 1; /* longest first */
    return x->root < y->root ? -1 : x->root > y->root;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 8;
    while (p < n)
        p *= 2;
    return p;
}

/* Carves aligned pieces out of the single router block. */
static void *carve(char **cur, size_t bytes)
{
    void *p = *cur;
    *cur += (bytes + 15) & ~(size_t)15;
    return p;
}

/*
 * The block of a big router (100k routes take ~20 MiB) is read at random by
 * every lookup; with 4 KiB pages most of its cache misses are TLB misses too.
 * So from TP_ROUTER_HUGE_MIN up it is mapped 2 MiB aligned and offered to
 * transparent huge pages (THP "madvise" mode is common). Smaller ones come
 * from malloc. Sets *<map_len> to the mapping's length, or 0 for malloc.
 */
#define HUGE_PAGE (2u << 20)

static char *block_alloc(size_t bytes, size_t *map_len)
{
    bytes = (bytes + 63) & ~(size_t)63;
    *map_len = 0;
    if (bytes < TP_ROUTER_HUGE_MIN)
        return aligned_alloc(64, bytes);
    size_t len = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    char *raw = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return aligned_alloc(64, bytes);
    /* trim to a 2 MiB aligned [p, p + len) */
    char *p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (p > raw)
        munmap(raw, (size_t)(p - raw));
    if (p + len < raw + len + HUGE_PAGE)
        munmap(p + len, (size_t)(raw + len + HUGE_PAGE - (p + len)));
    (void)madvise(p, len, MADV_HUGEPAGE); /* a hint: fine to fail (THP off) */
    *map_len = len;
    return p;
}

static void block_free(void *p, size_t map_len)
{
    if (map_len)
        munmap(p, map_len);
    else
        free(p);
}

static void builder_dispose(struct builder *b)
{
    free(b->sb);
    free(b->nodes);
    free(b->hosts);
    free(b->hdrs);
    free(b->rnode);
    free(b->rkind);
    bmap_dispose(&b->host_map);
    bmap_dispose(&b->child_map);
}

struct tp_router *tp_router_create(const struct tp_config *cfg, void *const *targets, int *err)
{
    struct builder b = {.any_host = NONE};
    struct tp_router *r = NULL;
    uint32_t *order = NULL, *stack = NULL, *hdr_first = NULL, *fill = NULL;
    int rc;
    size_t nr = cfg->n_routes;

    if (nr >= UINT32_MAX) {
        rc = -EOVERFLOW;
        goto fail;
    }
    b.rnode = malloc((nr + 1) * sizeof(*b.rnode));
    b.rkind = malloc(nr + 1);
    hdr_first = malloc((nr + 1) * sizeof(*hdr_first));
    if (!b.rnode || !b.rkind || !hdr_first || bmap_init(&b.host_map) || bmap_init(&b.child_map)) {
        rc = -ENOMEM;
        goto fail;
    }

    /* 1. Scratch trie: every route into the trie of its host entry. */
    for (size_t i = 0; i < nr; i++) {
        hdr_first[i] = (uint32_t)b.n_hdrs;
        if ((rc = add_route(&b, &cfg->routes[i], i)))
            goto fail;
        b.n_hdrs += cfg->routes[i].n_headers;
    }
    if (b.sb_len >= UINT32_MAX || b.n_hdrs >= UINT32_MAX) {
        rc = -EOVERFLOW;
        goto fail;
    }

    /* 2. Final numbering, host by host: visiting a node gives its children
     *    (sorted) consecutive ids, then its first child is visited (depth
     *    first). Children stay contiguous, and the nodes along one path sit
     *    close together, which saves cache misses on big tables. A parent
     *    always gets its id before its children. */
    size_t nn = b.n_nodes, tail = 0, n_hashed = 0, hash_slots = 0, max_depth = 0;
    order = malloc((nn + 1) * sizeof(*order));
    stack = malloc((nn + 1) * sizeof(*stack));
    if (!order || !stack) {
        rc = -ENOMEM;
        goto fail;
    }
    for (size_t h = 0; h < b.n_hosts; h++) {
        size_t sp = 0;
        b.nodes[b.hosts[h].root].id = (uint32_t)tail;
        order[tail++] = b.hosts[h].root;
        stack[sp++] = b.hosts[h].root;
        while (sp > 0) {
            struct bnode *pn = &b.nodes[stack[--sp]];
            size_t first = tail;
            for (uint32_t c = pn->first_child; c != NONE; c = b.nodes[c].next_sib)
                order[tail++] = c;
            qsort_r(order + first, tail - first, sizeof(*order), bnode_cmp, &b);
            for (size_t k = first; k < tail; k++)
                b.nodes[order[k]].id = (uint32_t)k;
            for (size_t k = tail; k > first; k--)
                stack[sp++] = order[k - 1]; /* first child on top */
            pn->kids = (uint32_t)first;
            if (pn->n_child > TP_ROUTER_HASH_MIN) {
                n_hashed++;
                hash_slots += pow2_at_least(2 * (size_t)pn->n_child);
            }
            if (pn->depth > max_depth)
                max_depth = pn->depth;
        }
    }

    size_t n_named = b.n_hosts - (b.any_host != NONE), n_wild = 0;
    for (size_t h = 0; h < b.n_hosts; h++)
        n_wild += b.hosts[h].kind == BH_WILD;
    size_t hslots = n_named ? pow2_at_least(2 * n_named) : 0;

    /* 3. One block for everything. */
    size_t bytes = 0;
#define RT_SIZE(n, type) ((((n) * sizeof(type)) + 15) & ~(size_t)15)
    bytes += RT_SIZE(1, struct tp_router);
    bytes += RT_SIZE(nr, struct rt_route);
    bytes += RT_SIZE(b.n_hdrs, struct rt_hdr);
    bytes += RT_SIZE(nn, struct rt_node);
    bytes += RT_SIZE(hash_slots, struct rt_cslot);
    bytes += RT_SIZE(hslots, struct rt_hslot);
    bytes += RT_SIZE(n_wild, struct rt_wild);
    bytes += RT_SIZE(b.sb_len, char);
#undef RT_SIZE
    /* the route lists need a cursor per node and kind while they are filled */
    fill = malloc((nn + 1) * RT_KIND_COUNT * sizeof(*fill));
    size_t map_len = 0;
    char *block = block_alloc(bytes, &map_len), *cur = block;
    if (!block || !fill) {
        block_free(block, map_len);
        rc = -ENOMEM;
        goto fail;
    }
    r = carve(&cur, sizeof(*r));
    struct rt_route *routes = carve(&cur, nr * sizeof(*routes));
    struct rt_hdr *hdrs = carve(&cur, b.n_hdrs * sizeof(*hdrs));
    struct rt_node *nodes = carve(&cur, nn * sizeof(*nodes));
    struct rt_cslot *child_hash = carve(&cur, hash_slots * sizeof(*child_hash));
    struct rt_hslot *hs = carve(&cur, hslots * sizeof(*hs));
    struct rt_wild *wild = carve(&cur, n_wild * sizeof(*wild));
    char *strs = carve(&cur, b.sb_len);
    if (b.sb_len)
        memcpy(strs, b.sb, b.sb_len);
    if (b.n_hdrs)
        memcpy(hdrs, b.hdrs, b.n_hdrs * sizeof(*hdrs));

    /* nodes in final order, each with its run of routes */
    size_t list_off = 0, hash_off = 0;
    for (size_t k = 0; k < nn; k++) {
        const struct bnode *bn = &b.nodes[order[k]];
        struct rt_node *nd = &nodes[k];
        *nd = (struct rt_node){
            .key8 = bn->key8,
            .seg_len = bn->seg_len,
            .seg_off = bn->seg_off,
            .first_child = bn->kids,
            .n_child = bn->n_child,
            .list_off = (uint32_t)list_off,
            .n_exact = bn->cnt[RT_EXACT],
            .n_slash = bn->cnt[RT_SLASH],
            .n_plain = bn->cnt[RT_PLAIN],
            .up = NONE,
        };
        fill[k * RT_KIND_COUNT + RT_EXACT] = (uint32_t)list_off;
        fill[k * RT_KIND_COUNT + RT_SLASH] = (uint32_t)list_off + nd->n_exact;
        fill[k * RT_KIND_COUNT + RT_PLAIN] = (uint32_t)list_off + nd->n_exact + nd->n_slash;
        list_off += (size_t)bn->cnt[RT_EXACT] + bn->cnt[RT_SLASH] + bn->cnt[RT_PLAIN];
        if (bn->parent != NONE) {
            /* the parent has a smaller id: its up is final */
            const struct bnode *bp = &b.nodes[bn->parent];
            const struct rt_node *pn = &nodes[bp->id];
            nd->up = (pn->n_slash + pn->n_plain) ? bp->id : pn->up;
        }
    }
    /* routes visited in file order keep file order inside each list */
    for (size_t i = 0; i < nr; i++) {
        uint32_t pos = fill[b.nodes[b.rnode[i]].id * RT_KIND_COUNT + b.rkind[i]]++;
        routes[pos] = (struct rt_route){
            .methods = cfg->routes[i].methods,
            .target = targets ? targets[i] : (void *)&cfg->routes[i],
            .hdr_off = hdr_first[i],
            .n_hdr = (uint32_t)cfg->routes[i].n_headers,
            .idx = (uint32_t)i,
        };
    }
    /* child hash indexes of wide nodes */
    for (size_t k = 0; k < nn; k++) {
        struct rt_node *nd = &nodes[k];
        if (nd->n_child <= TP_ROUTER_HASH_MIN)
            continue;
        size_t sz = pow2_at_least(2 * (size_t)nd->n_child);
        struct rt_cslot *slots = child_hash + hash_off;
        for (size_t j = 0; j < sz; j++)
            slots[j] = (struct rt_cslot){.node = NONE};
        nd->hash_off = (uint32_t)hash_off;
        nd->hash_mask = (uint32_t)(sz - 1);
        for (uint32_t c = nd->first_child; c < nd->first_child + nd->n_child; c++) {
            size_t j = XXH3_64bits(strs + nodes[c].seg_off, nodes[c].seg_len) & (sz - 1);
            while (slots[j].node != NONE)
                j = (j + 1) & (sz - 1);
            slots[j] = (struct rt_cslot){.key8 = nodes[c].key8, .len = nodes[c].seg_len, .node = c};
        }
        hash_off += sz;
    }

    /* host table and the wildcard list */
    if (hslots)
        memset(hs, 0xff, hslots * sizeof(*hs));
    uint32_t wmin = UINT32_MAX, wmax = 0;
    size_t wi = 0;
    for (size_t h = 0; h < b.n_hosts; h++) {
        const struct bhost *bh = &b.hosts[h];
        uint32_t root = b.nodes[bh->root].id;
        if (bh->kind == BH_ANY)
            continue;
        uint64_t hv = XXH3_64bits(strs + bh->key_off, bh->key_len);
        size_t j = hv & (hslots - 1);
        while (hs[j].root != NONE)
            j = (j + 1) & (hslots - 1);
        hs[j] = (struct rt_hslot){.hash = hv, .key_off = bh->key_off, .key_len = bh->key_len, .root = root};
        if (bh->kind == BH_WILD) {
            wild[wi++] = (struct rt_wild){.key_off = bh->key_off, .key_len = bh->key_len, .root = root};
            wmin = bh->key_len < wmin ? bh->key_len : wmin;
            wmax = bh->key_len > wmax ? bh->key_len : wmax;
        }
    }
    qsort(wild, n_wild, sizeof(*wild), wild_cmp);

    *r = (struct tp_router){
        .routes = routes,
        .hdrs = hdrs,
        .nodes = nodes,
        .child_hash = child_hash,
        .hslots = hslots ? hs : NULL,
        .wild = wild,
        .strs = strs,
        .hmask = hslots ? (uint32_t)(hslots - 1) : 0,
        .n_exact = (uint32_t)(n_named - n_wild),
        .n_wild = (uint32_t)n_wild,
        .wild_min = wmin,
        .wild_max = wmax,
        .any_root = b.any_host != NONE ? b.nodes[b.hosts[b.any_host].root].id : NONE,
        .n_routes = nr,
        .n_nodes = nn,
        .n_hashed = n_hashed,
        .max_depth = max_depth,
        .bytes = bytes,
        .map_len = map_len,
    };
    free(order);
    free(stack);
    free(fill);
    free(hdr_first);
    builder_dispose(&b);
    if (err)
        *err = 0;
    return r;

fail:
    free(order);
    free(stack);
    free(fill);
    free(hdr_first);
    builder_dispose(&b);
    if (err)
        *err = rc;
    return NULL;
}

void tp_router_destroy(struct tp_router *r)
{
    if (r)
        block_free(r, r->map_len); /* the router header is the start of its single block */
}
