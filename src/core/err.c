/* SPDX-License-Identifier: MIT */
/* Strings for turnpike's error codes; system errors go to strerror. */
#include <string.h>

#include <turnpike/err.h>

static const char *const tp_errstr[] = {
    [-(TP_ECONFIG - TP_EBASE)] = "invalid configuration",
    [-(TP_EURING - TP_EBASE)] = "io_uring unavailable",
    [-(TP_ECLOSED - TP_EBASE)] = "connection closed",
    [-(TP_ETIMEOUT - TP_EBASE)] = "timed out",
    [-(TP_EUPSTREAM - TP_EBASE)] = "invalid upstream response",
    [-(TP_ETLS - TP_EBASE)] = "TLS failure",
};

const char *tp_strerror(int err)
{
    if (err == 0)
        return "success";
    if (err <= TP_EBASE && err > TP_ELAST) {
        const char *s = tp_errstr[-(err - TP_EBASE)];
        return s ? s : "unknown error";
    }
    if (err < 0)
        return strerror(-err);
    return "unknown error";
}
