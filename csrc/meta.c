/* meta.c -- the metadata lock (robust against a dead holder, whichever PID
 * namespace it ran in) and the metadata table it guards: open addressing,
 * linear probing, tombstones, a checksum per entry. */
#define _GNU_SOURCE
#include <string.h>
#include <pthread.h>
#include "fabric_internal.h"

/* ---- the metadata lock --------------------------------------------------------
 * The lock word holds the holder's owner token. A waiter whose kernel says
 * nobody holds that token any more (its handle was closed: the holder exited or
 * was killed) takes the lock over, so a SIGKILLed holder never leaves the bus
 * locked, whichever PID namespace it ran in and whatever its PID names now. A
 * holder that is alive, paused (SIGSTOP, a debugger, a frozen cgroup) or that
 * the kernel cannot answer for is waited for, up to the caller's timeout. The
 * data path never takes this lock. */
static void repair(gf_fabric *f);

int gf_no_token(gf_fabric *f)
{
    return gf_fail(GF_E_IO, "this handle was inherited through fork and could not get an owner token of "
                   "its own (%s): open the bus again in this process", strerror(f->token_err));
}

/* Who holds it, for a LockTimeout message: pid and namespace as the holder wrote them. */
static int lock_timeout(gf_fabric *f, int64_t timeout_ns)
{
    uint32_t pid = gf_load_acq(&f->hdr->lock_pid);
    uint64_t ns = gf_load_acq(&f->hdr->lock_pidns);
    long long ms = (long long)(timeout_ns / 1000000);
    if (ns == f->pidns || ns == 0)
        return gf_fail(GF_E_TIMEOUT, "metadata lock held by live pid %u for longer than %lld ms", pid, ms);
    return gf_fail(GF_E_TIMEOUT, "metadata lock held by a live process of another PID namespace "
                   "(pid %u in pid:[%llu]) for longer than %lld ms", pid, (unsigned long long)ns, ms);
}

static int lock_taken(gf_fabric *f)
{
    f->held = 1;
    f->lock_as = f->token;
    gf_store_rlx(&f->hdr->lock_pid, f->pid);
    gf_store_rlx(&f->hdr->lock_pidns, f->pidns);
    return GF_OK;
}

int gf_lock(gf_fabric *f, int64_t timeout_ns)
{
    uint32_t me = f->token;
    if (!me)
        return gf_no_token(f);
    int64_t deadline = gf_mono_ns() + (timeout_ns < 0 ? (int64_t)1 << 62 : timeout_ns);
    for (int spins = 0;; spins++) {
        uint32_t cur = 0;
        if (gf_cas(&f->hdr->lock, &cur, me))
            return lock_taken(f);
        if (cur == me)
            return gf_fail(GF_E_INVAL, "metadata lock is already held by this handle");
        /* another handle (of this process or any other) has it: wait unless it is gone */
        if (gf_owner_alive_fd(f->fd, cur) == 0) {
            if (gf_cas(&f->hdr->lock, &cur, me)) {
                lock_taken(f);
                gf_faa(&f->hdr->lock_recoveries, 1);
                repair(f);
                return GF_RECOVERED;
            }
            continue;
        }
        if (gf_mono_ns() > deadline)
            return lock_timeout(f, timeout_ns);
        if (spins < 64)
            sched_yield();
        else
            gf_futex_wait(&f->hdr->lock, cur, 1000000);
    }
}

int gf_unlock(gf_fabric *f)
{
    if (!f->held || !f->token || gf_load_acq(&f->hdr->lock) != f->token)
        return gf_fail(GF_E_NOLOCK, "metadata lock is not held by this handle");
    f->held = 0;
    gf_store_rel(&f->hdr->lock, 0);
    gf_futex_wake_all(&f->hdr->lock);
    return GF_OK;
}

int gf_lock_join(gf_fabric *f)
{
    uint32_t cur = gf_load_acq(&f->hdr->lock);
    if (!cur || !gf_reg_holder(f, cur))
        return gf_fail(GF_E_NOLOCK, "no handle of this process holds the metadata lock");
    f->held = 1;
    f->lock_as = cur;
    return GF_OK;
}

int gf_lock_leave(gf_fabric *f)
{
    f->held = 0;
    return GF_OK;
}

int gf_lock_held(gf_fabric *f) { return f->held && f->lock_as && gf_load_acq(&f->hdr->lock) == f->lock_as; }

/* ---- metadata table ------------------------------------------------------------ */
static uint32_t entry_crc(const struct gf_meta_entry *e)
{
    uint32_t c = gf_crc32c(~0u, e->key, e->key_len);
    return gf_crc32c(c, e->val, e->val_len) ^ ~0u;
}

static int entry_sane(const struct gf_meta_entry *e)
{
    return e->key_len <= GF_META_KEY_MAX && e->val_len <= GF_META_VAL_MAX;
}

/* Returns the slot holding key (found=1) or the first reusable slot on its probe path. */
static int64_t meta_find(gf_fabric *f, const char *key, uint32_t klen, uint32_t h, int *found)
{
    int64_t reuse = -1;
    *found = 0;
    for (uint32_t k = 0; k < f->meta_slots; k++) {
        uint32_t i = (h + k) % f->meta_slots;
        struct gf_meta_entry *e = &f->meta[i];
        if (e->state == GF_META_EMPTY)
            return reuse >= 0 ? reuse : i;
        if (e->state != GF_META_USED) {   /* tombstone, or garbage treated as one */
            if (reuse < 0) reuse = i;
            continue;
        }
        if (e->hash == h && e->key_len == klen && entry_sane(e) && memcmp(e->key, key, klen) == 0) {
            *found = 1;
            return i;
        }
    }
    return reuse;
}

static int check_key(uint32_t klen, uint32_t vlen)
{
    if (klen == 0 || klen > GF_META_KEY_MAX)
        return gf_fail(GF_E_INVAL, "metadata key of %u bytes (1 to %d allowed)", klen, GF_META_KEY_MAX);
    if (vlen > GF_META_VAL_MAX)
        return gf_fail(GF_E_INVAL, "metadata value of %u bytes (at most %d)", vlen, GF_META_VAL_MAX);
    return GF_OK;
}

/* The lock, the key's limits, its hash and its slot: what every keyed call checks
 * first. Returns an error code, or GF_OK with *h, *i and *found set. */
static int meta_lookup(gf_fabric *f, const char *key, uint32_t klen, uint32_t vlen,
                       uint32_t *h, int64_t *i, int *found)
{
    REQUIRE_LOCK(f);
    int rc = check_key(klen, vlen);
    if (rc < 0)
        return rc;
    *h = gf_murmur2((const uint8_t *)key, klen);
    *i = meta_find(f, key, klen, *h, found);
    return GF_OK;
}

int gf_meta_get(gf_fabric *f, const char *key, uint32_t klen, uint8_t *val, uint32_t cap, uint32_t *vlen)
{
    uint32_t h;
    int64_t i;
    int found, rc = meta_lookup(f, key, klen, 0, &h, &i, &found);
    if (rc < 0)
        return rc;
    if (!found)
        return GF_E_NOTFOUND;
    struct gf_meta_entry e;    /* a copy: a writer that ignores the lock cannot change it under the checks */
    memcpy(&e, &f->meta[i], sizeof e);
    if (!entry_sane(&e) || entry_crc(&e) != e.crc)
        return gf_fail(GF_E_CORRUPT, "metadata entry %.*s failed its checksum", (int)klen, key);
    if (e.val_len > cap)
        return gf_fail(GF_E_BUFFER, "metadata value of %u bytes does not fit a %u-byte buffer", e.val_len, cap);
    memcpy(val, e.val, e.val_len);
    *vlen = e.val_len;
    return GF_OK;
}

int gf_meta_put(gf_fabric *f, const char *key, uint32_t klen, const uint8_t *val, uint32_t vlen)
{
    uint32_t h;
    int64_t i;
    int found, rc = meta_lookup(f, key, klen, vlen, &h, &i, &found);
    if (rc < 0)
        return rc;
    if (i < 0)
        return gf_fail(GF_E_FULL, "metadata table is full (%u entries)", f->meta_slots);
    struct gf_meta_entry *e = &f->meta[i];
    e->hash = h;
    e->key_len = (uint16_t)klen;
    e->val_len = (uint16_t)vlen;
    memcpy(e->key, key, klen);
    memcpy(e->val, val, vlen);
    e->crc = entry_crc(e);
    e->state = GF_META_USED;
    gf_faa(&f->hdr->meta_epoch, 1);
    return f->durable ? gf_dsync(f, e, sizeof *e) : GF_OK;
}

int gf_meta_del(gf_fabric *f, const char *key, uint32_t klen)
{
    uint32_t h;
    int64_t i;
    int found, rc = meta_lookup(f, key, klen, 0, &h, &i, &found);
    if (rc < 0)
        return rc;
    if (!found)
        return GF_E_NOTFOUND;
    f->meta[i].state = GF_META_TOMB;
    gf_faa(&f->hdr->meta_epoch, 1);
    return f->durable ? gf_dsync(f, &f->meta[i], sizeof f->meta[i]) : GF_OK;
}

int gf_meta_next(gf_fabric *f, uint32_t *cursor, const char *prefix, uint32_t plen,
                 uint8_t *key, uint32_t *klen, uint8_t *val, uint32_t *vlen)
{
    REQUIRE_LOCK(f);
    if (plen > GF_META_KEY_MAX)
        return gf_fail(GF_E_INVAL, "metadata prefix of %u bytes (at most %d)", plen, GF_META_KEY_MAX);
    for (uint32_t i = *cursor; i < f->meta_slots; i++) {
        if (f->meta[i].state != GF_META_USED)
            continue;
        struct gf_meta_entry e;    /* check and copy out the same bytes */
        memcpy(&e, &f->meta[i], sizeof e);
        if (e.state != GF_META_USED || !entry_sane(&e) || e.key_len < plen ||
            memcmp(e.key, prefix, plen) != 0 || entry_crc(&e) != e.crc)
            continue;
        memcpy(key, e.key, e.key_len);
        *klen = e.key_len;
        memcpy(val, e.val, e.val_len);
        *vlen = e.val_len;
        *cursor = i + 1;
        return 1;
    }
    *cursor = f->meta_slots;
    return 0;
}

uint64_t gf_meta_epoch(gf_fabric *f) { return gf_load_acq(&f->hdr->meta_epoch); }

/* After taking the lock from a dead holder: whatever it was half-way through
 * must not be trusted. Entries that fail their checks become tombstones. */
static void repair(gf_fabric *f)
{
    for (uint32_t i = 0; i < f->meta_slots; i++) {
        struct gf_meta_entry e;
        memcpy(&e, &f->meta[i], sizeof e);
        if (e.state == GF_META_EMPTY || e.state == GF_META_TOMB)
            continue;
        if (e.state != GF_META_USED || !entry_sane(&e) || entry_crc(&e) != e.crc)
            f->meta[i].state = GF_META_TOMB;
    }
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        uint64_t off, size;
        lease_region(l, &off, &size);
        if (gf_load_acq(&l->id) != 0 && !lease_bounds_ok(f, off, size))
            gf_store_rel(&l->id, 0);
    }
    gf_faa(&f->hdr->meta_epoch, 1);
}
