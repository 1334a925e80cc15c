/* lease.c -- leases: the entries readers test without the lock, expiry
 * decided once, pins against reclaim, the first-fit allocator of the data
 * area, and lease I/O. Mutators need the metadata lock. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mman.h>
#include "fabric_internal.h"

/* ---- leases ------------------------------------------------------------------- */
static inline int lease_dead(const struct gf_lease *l, uint64_t id)
{
    return gf_load_acq(&l->dead_tag) == (uint32_t)id;
}

/* Alive: ours, not yet seen expired, and expiring after now. The first caller
 * that sees it expired tags it dead, so a clock stepped back afterwards (here
 * or in another process) cannot bring it back. */
int gf_lease_alive(struct gf_lease *l, uint64_t id, int64_t now_ns)
{
    if (gf_load_acq(&l->id) != id || lease_dead(l, id))
        return 0;
    if (gf_load_acq(&l->expires_ns) > now_ns)
        return 1;
    gf_store_rel(&l->dead_tag, (uint32_t)id);
    return 0;
}

/* The same answer without deciding anything: for state and info calls, which
 * may be asked about any time (what-if), as MemLease.expired() is. */
int gf_lease_alive_query(const struct gf_lease *l, uint64_t id, int64_t now_ns)
{
    return gf_load_acq(&l->id) == id && !lease_dead(l, id) && gf_load_acq(&l->expires_ns) > now_ns;
}

/* Durability: flush [p, p+len) of the mapping to the file before returning. */
int gf_dsync(gf_fabric *f, const void *p, uint64_t len)
{
    uintptr_t start = (uintptr_t)p & ~(uintptr_t)(GF_PAGE - 1);
    uintptr_t end = (uintptr_t)p + len;
    if (start < (uintptr_t)f->base)
        start = (uintptr_t)f->base;
    if (end > (uintptr_t)f->base + f->size)
        end = (uintptr_t)f->base + f->size;
    if (end <= start)
        return GF_OK;
    gf_faa(&f->syncs, 1);
    if (msync((void *)start, end - start, MS_SYNC) < 0)
        return gf_fail_errno("msync");
    return GF_OK;
}

int gf_fabric_set_durable(gf_fabric *f, uint32_t on)
{
    if (on && fsync(f->fd) < 0)     /* the file's size and what is in it so far */
        return gf_fail_errno("fsync");
    f->durable = on != 0;
    return GF_OK;
}

static void punch(gf_fabric *f, uint64_t off, uint64_t len)
{
    /* Give the pages back: a hole reads as zeros and costs no memory. */
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) == 0)
        return;
    if (madvise(f->base + off, len, MADV_REMOVE) == 0)
        return;
    memset(f->base + off, 0, len);
}

int gf_lease_pin(gf_fabric *f, struct gf_lease *l, uint64_t id)
{
    uint32_t cur = 0, me = f->token;
    if (!me)
        return 0;
    while (!gf_cas(&l->pin, &cur, me))
        if (cur == GF_PIN_CLOSED || cur == me || gf_owner_alive_fd(f->fd, cur) != 0)
            return 0;   /* reclaim has begun, or someone else is writing: not now */
        /* else its holder died mid-write: cur holds that token, take it over */
    if (gf_load_acq(&l->id) == id)
        return 1;
    gf_store_rel(&l->pin, 0);   /* the entry has a new tenant: leave its pin as we found it */
    return 0;
}

void gf_lease_unpin(struct gf_lease *l) { gf_store_rel(&l->pin, 0); }

int gf_test_pin(gf_fabric *f, uint32_t index, uint64_t id)
{
    return index < f->lease_slots ? gf_lease_pin(f, &f->leases[index], id) : GF_E_INVAL;
}

int gf_test_unpin(gf_fabric *f, uint32_t index)
{
    if (index >= f->lease_slots)
        return GF_E_INVAL;
    gf_lease_unpin(&f->leases[index]);
    return GF_OK;
}

/* Take the pin word for reclaim. 0 if a live process holds it: the region stays
 * where it is (dead to readers) until a later reap. */
static int lease_close(gf_fabric *f, struct gf_lease *l)
{
    uint32_t cur = 0;
    for (;;) {
        if (gf_cas(&l->pin, &cur, GF_PIN_CLOSED) || cur == GF_PIN_CLOSED)
            return 1;
        if (cur == f->token || gf_owner_alive_fd(f->fd, cur) != 0)
            return 0;
        /* its holder died mid-write: cur still holds that token, take it over */
    }
}

/* Returns 1 if the entry was freed, 0 if it had to stay (pinned by a live process). */
static int lease_free(gf_fabric *f, struct gf_lease *l)
{
    uint64_t off, size;
    uint64_t id = gf_load_acq(&l->id);
    lease_region(l, &off, &size);
    /* dead to readers first, then the memory goes */
    gf_store_rel(&l->dead_tag, (uint32_t)id);
    gf_store_rel(&l->expires_ns, 0);
    if (!lease_close(f, l))
        return 0;
    gf_store_rel(&l->id, 0);
    if (lease_bounds_ok(f, off, size))
        punch(f, off, size);
    return 1;
}

/* off and size are the caller's checked copies of the entry's region */
static void fill_info(const gf_fabric *f, uint32_t i, const struct gf_lease *l, uint64_t id,
                      uint64_t off, uint64_t size, gf_lease_info *out)
{
    out->index = i;
    out->id = id;
    out->generation = l->generation;
    out->offset = off;
    out->size = size;
    out->expires_ns = gf_load_acq(&l->expires_ns);
    out->created_ns = l->created_ns;
    out->owner_tag = l->owner_tag;
    out->dead = (uint32_t)lease_dead(l, id);
    out->reserved = 0;
    (void)f;
}

int64_t gf_reap(gf_fabric *f, int64_t now_ns, uint64_t *bytes_out)
{
    REQUIRE_LOCK(f);
    int64_t n = 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        uint64_t id = gf_load_acq(&l->id);
        if (id != 0 && (gf_load_acq(&l->expires_ns) <= now_ns || lease_dead(l, id))) {
            uint64_t off, size;
            lease_region(l, &off, &size);
            if (lease_free(f, l)) {
                bytes += lease_bounds_ok(f, off, size) ? size : 0;
                n++;
            }
        }
    }
    if (bytes_out)
        *bytes_out = bytes;
    return n;
}

struct span { uint64_t off, end; };

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

int gf_lease_acquire(gf_fabric *f, uint64_t size, int64_t expires_ns, uint64_t owner_tag,
                     int64_t now_ns, gf_lease_info *out)
{
    REQUIRE_LOCK(f);
    if (size == 0 || size > f->size)
        return gf_fail(GF_E_INVAL, "lease size %llu bytes is out of range (1 to %llu)",
                       (unsigned long long)size, (unsigned long long)f->size);
    if (expires_ns <= now_ns)
        return gf_fail(GF_E_INVAL, "lease expiry is not in the future (expires %lld ns, now %lld ns)",
                       (long long)expires_ns, (long long)now_ns);
    gf_reap(f, now_ns, NULL);
    uint64_t need = gf_round_page(size);
    struct span *sp = malloc(sizeof *sp * (f->lease_slots + 1));
    if (!sp)
        return gf_fail(GF_E_FULL, "out of memory");
    uint32_t ns = 0, free_idx = UINT32_MAX;
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        if (gf_load_acq(&l->id) == 0) {
            if (free_idx == UINT32_MAX)
                free_idx = i;
            continue;
        }
        uint64_t loff, lsize;
        lease_region(l, &loff, &lsize);
        if (!lease_bounds_ok(f, loff, lsize)) {
            /* a damaged entry cannot be used by anyone (readers check the same bounds) */
            gf_store_rel(&l->id, 0);
            if (free_idx == UINT32_MAX)
                free_idx = i;
            continue;
        }
        sp[ns].off = loff;
        sp[ns].end = loff + lsize;
        ns++;
    }
    if (free_idx == UINT32_MAX) {
        free(sp);
        return gf_fail(GF_E_FULL, "lease table is full (%u leases)", f->lease_slots);
    }
    qsort(sp, ns, sizeof *sp, span_cmp);
    uint64_t cursor = f->data_off, at = UINT64_MAX;
    for (uint32_t i = 0; i <= ns; i++) {
        uint64_t next = i < ns ? sp[i].off : f->size;
        if (next > cursor && next - cursor >= need) { at = cursor; break; }
        if (i < ns && sp[i].end > cursor)
            cursor = sp[i].end;
    }
    free(sp);
    if (at == UINT64_MAX)
        return gf_fail(GF_E_FULL, "fabric is full: no free region of %llu bytes in a %llu-byte arena",
                       (unsigned long long)need, (unsigned long long)(f->size - f->data_off));
    punch(f, at, need);     /* nothing of an old tenant reaches the new one */
    if (f->huge)
        gf_populate_huge(f->base + at, need);
    int rc = gf_reserve(f->fd, f->where, at, need, "a lease");
    if (rc < 0) {
        if (f->huge)
            punch(f, at, need);     /* what the populate took before the filesystem ran out */
        return rc;
    }
    gf_populate(f, f->base + at, need);
    struct gf_lease *l = &f->leases[free_idx];
    uint64_t id = f->hdr->next_lease_id++;
    if (id == 0)
        id = f->hdr->next_lease_id++;
    l->offset = at;
    l->size = need;
    l->owner_tag = owner_tag;
    l->created_ns = now_ns;
    l->generation++;
    gf_store_rel(&l->dead_tag, ~(uint32_t)id);   /* whatever tag the last tenant left, not ours */
    gf_store_rel(&l->expires_ns, expires_ns);
    gf_store_rel(&l->pin, 0);
    gf_store_rel(&l->id, id);
    if (f->mapped)      /* populated above, in this mapping */
        gf_store_rlx(&f->mapped[free_idx], id);
    fill_info(f, free_idx, l, id, at, need, out);
    gf_faa(&f->hdr->meta_epoch, 1);
    if (f->durable)
        return gf_dsync(f, f->hdr, GF_HDR_SIZE) < 0 ? GF_E_IO : gf_dsync(f, l, sizeof *l);
    return GF_OK;
}

/* The entry (index, id), with its region copied to *off, *size and checked. */
static struct gf_lease *lease_at(gf_fabric *f, uint32_t index, uint64_t id, int *rc,
                                 uint64_t *off, uint64_t *size)
{
    if (index >= f->lease_slots || id == 0) {
        *rc = gf_fail(GF_E_NOTFOUND, "lease %u/%llu does not exist", index, (unsigned long long)id);
        return NULL;
    }
    struct gf_lease *l = &f->leases[index];
    if (gf_load_acq(&l->id) != id) {
        *rc = gf_fail(GF_E_EXPIRED, "lease %llu is gone (expired and reclaimed, or released)",
                      (unsigned long long)id);
        return NULL;
    }
    lease_region(l, off, size);
    if (!lease_bounds_ok(f, *off, *size)) {
        *rc = gf_fail(GF_E_CORRUPT, "lease %llu has a region outside the fabric", (unsigned long long)id);
        return NULL;
    }
    *rc = GF_OK;
    return l;
}

uint8_t *gf_lease_addr(gf_fabric *f, uint32_t index, uint64_t id, uint64_t need, int *rc)
{
    uint64_t off, size;
    if (!lease_at(f, index, id, rc, &off, &size))
        return NULL;
    if (size < need) {
        *rc = gf_fail(GF_E_CORRUPT, "lease %llu has %llu bytes, not the %llu expected",
                      (unsigned long long)id, (unsigned long long)size, (unsigned long long)need);
        return NULL;
    }
    return f->base + off;
}

int gf_lease_renew(gf_fabric *f, uint32_t index, uint64_t id, int64_t expires_ns, int64_t now_ns)
{
    REQUIRE_LOCK(f);
    int rc;
    uint64_t off, size;
    struct gf_lease *l = lease_at(f, index, id, &rc, &off, &size);
    if (!l)
        return rc;
    int64_t cur = gf_load_acq(&l->expires_ns);
    if (!gf_lease_alive(l, id, now_ns))   /* a dead lease stays dead: renewing cannot resurrect it */
        return cur <= now_ns
            ? gf_fail(GF_E_EXPIRED, "lease %llu expired %.3f s ago and cannot be renewed",
                      (unsigned long long)id, (double)(now_ns - cur) / 1e9)
            : gf_fail(GF_E_EXPIRED, "lease %llu was seen expired (the clock has gone back since) and cannot be renewed",
                      (unsigned long long)id);
    if (expires_ns <= now_ns)
        return gf_fail(GF_E_INVAL, "new expiry is not in the future");
    gf_store_rel(&l->expires_ns, expires_ns);
    return f->durable ? gf_dsync(f, l, sizeof *l) : GF_OK;
}

int gf_lease_release(gf_fabric *f, uint32_t index, uint64_t id)
{
    REQUIRE_LOCK(f);
    int rc;
    uint64_t off, size;
    struct gf_lease *l = lease_at(f, index, id, &rc, &off, &size);
    if (!l)
        return rc;
    lease_free(f, l);
    gf_faa(&f->hdr->meta_epoch, 1);
    return GF_OK;
}

int gf_lease_get(gf_fabric *f, uint32_t index, uint64_t id, gf_lease_info *out)
{
    int rc;
    uint64_t off, size;
    struct gf_lease *l = lease_at(f, index, id, &rc, &off, &size);
    if (!l)
        return rc;
    fill_info(f, index, l, id, off, size, out);
    if (gf_load_acq(&l->id) != id)
        return gf_fail(GF_E_EXPIRED, "lease %llu was reclaimed while being read", (unsigned long long)id);
    return GF_OK;
}

int gf_lease_check(gf_fabric *f, uint32_t index, uint64_t id, int64_t now_ns)
{
    int rc;
    uint64_t off, size;
    struct gf_lease *l = lease_at(f, index, id, &rc, &off, &size);
    if (!l)
        return rc == GF_E_EXPIRED || rc == GF_E_NOTFOUND ? 0 : rc;
    return gf_lease_alive(l, id, now_ns);
}

int gf_lease_list(gf_fabric *f, gf_lease_info *out, uint32_t max, uint32_t *count)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < f->lease_slots && n < max; i++) {
        struct gf_lease *l = &f->leases[i];
        uint64_t id = gf_load_acq(&l->id), off, size;
        lease_region(l, &off, &size);
        if (id == 0 || !lease_bounds_ok(f, off, size))
            continue;
        fill_info(f, i, l, id, off, size, &out[n]);
        if (gf_load_acq(&l->id) == id)
            n++;
    }
    *count = n;
    return GF_OK;
}

/* Checks a lease I/O of [off, off+len) and returns where it starts in the mapping. */
static int lease_io(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off, uint64_t len,
                    int64_t now_ns, struct gf_lease **lo, uint64_t *at)
{
    int rc;
    uint64_t loff, lsize;
    struct gf_lease *l = lease_at(f, index, id, &rc, &loff, &lsize);
    if (!l)
        return rc;
    if (!gf_lease_alive(l, id, now_ns))
        return gf_fail(GF_E_EXPIRED, "lease %llu has expired", (unsigned long long)id);
    if (off > lsize || len > lsize - off)
        return gf_fail(GF_E_INVAL, "range [%llu, %llu) is outside the lease's %llu bytes",
                       (unsigned long long)off, (unsigned long long)(off + len),
                       (unsigned long long)lsize);
    *lo = l;
    *at = loff + off;
    return GF_OK;
}

int gf_lease_write(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off, const uint8_t *buf,
                   uint64_t len, int64_t now_ns)
{
    struct gf_lease *l = NULL;
    uint64_t at = 0;
    if (!f->token)
        return gf_no_token(f);
    int rc = lease_io(f, index, id, off, len, now_ns, &l, &at);
    if (rc < 0)
        return rc;
    /* another write holds the pin for one copy: wait for it, boundedly */
    for (int64_t t0 = gf_mono_ns(); !gf_lease_pin(f, l, id);) {
        uint32_t p = gf_load_acq(&l->pin);
        if (p == GF_PIN_CLOSED || gf_load_acq(&l->id) != id)
            return gf_fail(GF_E_EXPIRED, "lease %llu is being reclaimed", (unsigned long long)id);
        if (gf_mono_ns() - t0 > ATTACH_WAIT_NS)
            return gf_fail(GF_E_TIMEOUT, "lease %llu: owner %u has held its write pin for over 2 s",
                           (unsigned long long)id, p);
        sched_yield();
    }
    if (!gf_lease_alive(l, id, now_ns)) {
        gf_lease_unpin(l);
        return gf_fail(GF_E_EXPIRED, "lease %llu has expired", (unsigned long long)id);
    }
    memcpy(f->base + at, buf, len);
    gf_lease_unpin(l);
    return f->durable ? gf_dsync(f, f->base + at, len) : GF_OK;
}

int gf_lease_read(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off, uint8_t *buf,
                  uint64_t len, int64_t now_ns)
{
    struct gf_lease *l = NULL;
    uint64_t at = 0;
    int rc = lease_io(f, index, id, off, len, now_ns, &l, &at);
    if (rc < 0)
        return rc;
    memcpy(buf, f->base + at, len);
    if (!gf_lease_alive(l, id, now_ns))
        return gf_fail(GF_E_EXPIRED, "lease %llu was reclaimed during the read", (unsigned long long)id);
    return GF_OK;
}
