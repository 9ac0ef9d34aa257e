/* SPDX-License-Identifier: MIT */
/* Hashing: XXH3 everywhere a key is hashed (host table, rate-limit keys, consistent hashing). [any] */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static inline uint64_t tp_hash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}
