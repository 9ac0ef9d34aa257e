/* SPDX-License-Identifier: MIT */
/*
 * liburing 2.3 shim (docs/internals.md "2.3 shim"): constants and helpers of newer
 * kernels and liburing releases that Debian 12's headers lack. Values are the
 * kernel uapi's. Every user checks the feature at run time (params.features,
 * probe) and falls back on -EINVAL.
 */
#pragma once

#include <liburing.h>

#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
#ifndef IOU_PBUF_RING_MMAP
#define IOU_PBUF_RING_MMAP 1
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
#ifndef IORING_TIMEOUT_MULTISHOT
#define IORING_TIMEOUT_MULTISHOT (1U << 6)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_OFF_PBUF_RING
#define IORING_OFF_PBUF_RING 0x80000000ULL
#endif
#ifndef IORING_OFF_PBUF_SHIFT
#define IORING_OFF_PBUF_SHIFT 16
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif

/*
 * A multishot receive that ends (no IORING_CQE_F_MORE) once it has received
 * <bytes> in all: the kernel reads the limit from sqe->optlen, which shares its
 * place with file_index, the name 2.3's struct has. Kernels without it fail the
 * receive with -EINVAL, or ignore the field; tp_uring_probe() finds out which.
 */
static inline void tp_sqe_recv_mshot_limit(struct io_uring_sqe *sqe, uint32_t bytes)
{
    sqe->file_index = bytes;
}

/*
 * liburing 2.3's io_uring_get_sqe() neither clears the SQE nor do the prep
 * helpers set user_data (#848): every SQE we build goes through tp_sqe_get()
 * and gets its user_data set by the caller right after prep.
 */
