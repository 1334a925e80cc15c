/* fabric_internal.h -- what the fabric's files share, never part of grafos.h:
 * platform calls (platform.c) the open path and the lease code use, the
 * registry of open handles, and the checks of a lease entry's region. */
#ifndef GRAFOS_FABRIC_INTERNAL_H
#define GRAFOS_FABRIC_INTERNAL_H
#include "core.h"

#define ATTACH_WAIT_NS      2000000000LL   /* how long to wait for a creator to finish */

/* the caller's failure `what`, with errno's text */
GF_INTERNAL int gf_fail_errno(const char *what);

static inline uint64_t gf_round_page(uint64_t n) { return (n + GF_PAGE - 1) & ~(uint64_t)(GF_PAGE - 1); }

/* ---- space (platform.c) --------------------------------------------------------- */
/* Allocate [off, off+len) in the backing file (GF_E_NOSPACE, saying where, if it cannot). */
GF_INTERNAL int gf_reserve(int fd, int where, uint64_t off, uint64_t len, const char *what);
/* Fault the pages in now, so the first lap of a fresh ring costs what later laps do. */
GF_INTERNAL void gf_populate(const gf_fabric *f, uint8_t *p, uint64_t len);
/* Allocate the pages through the mapping, never touching one (a missing page
 * stays missing): on a mapping advised for huge pages this takes huge pages
 * where the filesystem only advises them, which fallocate does not. */
GF_INTERNAL void gf_populate_huge(uint8_t *p, uint64_t len);

/* ---- owners (platform.c; layout.h, "owners") ------------------------------------- */
/* A new open file description of the file open as fd: its descriptor, or -1. */
GF_INTERNAL int gf_reopen(int fd, const char *path);
/* 1: a live handle holds `token`; 0: nobody does; -1: the kernel did not answer. */
GF_INTERNAL int gf_owner_alive_fd(int fd, uint32_t token);
/* Take a token for handle f on its descriptor: 0, or an errno. */
GF_INTERNAL int gf_owner_take(gf_fabric *f, const struct gf_fabric_hdr *h);
/* Every open handle of the process is registered, so a fork child can give
 * each one a token of its own. */
GF_INTERNAL void gf_reg_add(gf_fabric *f);
GF_INTERNAL void gf_reg_del(gf_fabric *f);
/* 1 if another registered handle than f holds the metadata lock as `token`. */
GF_INTERNAL int gf_reg_holder(const gf_fabric *f, uint32_t token);

/* ---- the metadata lock (meta.c) ------------------------------------------------- */
/* GF_E_IO: a handle without an owner token (a fork child's failed attempt) cannot lock. */
GF_INTERNAL int gf_no_token(gf_fabric *f);
#define REQUIRE_LOCK(f) \
    do { if (!gf_lock_held(f)) return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__); } while (0)

/* ---- lease entries (lease.c) ---------------------------------------------------- */
static inline int lease_bounds_ok(const gf_fabric *f, uint64_t off, uint64_t size)
{
    return off >= f->data_off && size > 0 && off <= f->size && size <= f->size - off &&
           (off % GF_PAGE) == 0;
}

/* Read an entry's region once. Another process may rewrite the entry at any
 * time: check the copy, then use only the copy (never re-read after the check). */
static inline void lease_region(const struct gf_lease *l, uint64_t *off, uint64_t *size)
{
    *off = gf_plain_load_rlx(&l->offset);
    *size = gf_plain_load_rlx(&l->size);
}

#endif
