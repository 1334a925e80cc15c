/* fabric.c -- the arena: create, attach and validate a fabric file (saying
 * precisely why one is refused), probe one without attaching, close it, and
 * describe it. The platform code is in platform.c, the metadata lock and
 * table in meta.c, leases and their allocator in lease.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include "fabric_internal.h"

#define DEFAULT_LEASE_SLOTS 1024u
#define DEFAULT_META_SLOTS  4096u
#define MAX_LEASE_SLOTS     (1u << 20)
#define MAX_META_SLOTS      (1u << 22)
#define MAX_FABRIC_SIZE     (1ULL << 44)
#define DEFAULT_STALL_NS    500000000LL    /* bounded wait on an unfinished slot: 500 ms (docs/hardening.md) */
static uint32_t hdr_crc(const struct gf_fabric_hdr *h)
{
    return gf_crc32c(~0u, (const uint8_t *)h, offsetof(struct gf_fabric_hdr, hdr_crc)) ^ ~0u;
}

/* ---- open / create / attach ---------------------------------------------- */
static void layout(uint32_t lease_slots, uint32_t meta_slots, uint64_t *lease_off,
                   uint64_t *meta_off, uint64_t *data_off)
{
    *lease_off = GF_HDR_SIZE;
    *meta_off = *lease_off + (uint64_t)lease_slots * sizeof(struct gf_lease);
    *data_off = gf_round_page(*meta_off + (uint64_t)meta_slots * sizeof(struct gf_meta_entry));
}

static int format(gf_fabric *f, uint64_t size, uint32_t lease_slots, uint32_t meta_slots)
{
    struct gf_fabric_hdr *h = (struct gf_fabric_hdr *)f->base;
    uint64_t lo, mo, dO;
    layout(lease_slots, meta_slots, &lo, &mo, &dO);
    h->magic = GF_MAGIC;
    h->version = GF_LAYOUT_VERSION;
    h->hdr_size = GF_HDR_SIZE;
    h->total_size = size;
    h->lease_off = lo;
    h->lease_slots = lease_slots;
    h->meta_slots = meta_slots;
    h->meta_off = mo;
    h->data_off = dO;
    GF_FAULT(GF_FAULT_CREATE_HALF);
    h->hdr_crc = hdr_crc(h);
    h->next_lease_id = 1;
    /* the flag a second process waits for, stored after everything else */
    gf_store_rel(&h->ready, GF_READY);
    return GF_OK;
}

/* Check the header of a mapping of `file_size` bytes. Says precisely why it refuses. */
static int validate(const struct gf_fabric_hdr *h, uint64_t file_size)
{
    if (h->magic != GF_MAGIC)
        return gf_fail(GF_E_CORRUPT, "not a grafos fabric: bad magic 0x%016llx",
                       (unsigned long long)h->magic);
    if (h->version != GF_LAYOUT_VERSION)
        return gf_fail(GF_E_VERSION, "fabric has layout version %u, this grafos reads version %u",
                       h->version, GF_LAYOUT_VERSION);
    uint32_t crc = hdr_crc(h);
    if (crc != h->hdr_crc)
        return gf_fail(GF_E_CORRUPT, "fabric header checksum mismatch (stored 0x%08x, computed 0x%08x)",
                       h->hdr_crc, crc);
    if (h->hdr_size != GF_HDR_SIZE)
        return gf_fail(GF_E_CORRUPT, "fabric header size %u, expected %u", h->hdr_size, GF_HDR_SIZE);
    if (h->total_size != file_size)
        return gf_fail(GF_E_CORRUPT, "fabric file is %llu bytes but its header says %llu (truncated or grown)",
                       (unsigned long long)file_size, (unsigned long long)h->total_size);
    if (h->lease_slots == 0 || h->lease_slots > MAX_LEASE_SLOTS ||
        h->meta_slots == 0 || h->meta_slots > MAX_META_SLOTS)
        return gf_fail(GF_E_CORRUPT, "fabric header has impossible table sizes (%u leases, %u metadata)",
                       h->lease_slots, h->meta_slots);
    uint64_t lo, mo, dO;
    layout(h->lease_slots, h->meta_slots, &lo, &mo, &dO);
    if (h->lease_off != lo || h->meta_off != mo || h->data_off != dO || dO >= h->total_size)
        return gf_fail(GF_E_CORRUPT, "fabric header offsets are inconsistent");
    return GF_OK;
}

/* Abandoned creation. A creator holds flock(LOCK_EX) on the file from just
 * after making it until the header is ready; every attached handle holds
 * LOCK_SH for its life (so `grafos gc` can tell a bus nobody has open). A file
 * that is not ready while nobody holds the lock was abandoned by a creator
 * that died; if nothing was ever written past the header (the tables are
 * zero: no topic, lease or offset can be lost) a process allowed to create
 * makes it again. */
#define WAIT_REDO 2

static int tables_empty(int fd, uint64_t from, uint64_t to)
{
    static const uint8_t zero[16384];
    uint8_t buf[16384];
    for (uint64_t at = from; at < to; at += sizeof buf) {
        size_t n = to - at < sizeof buf ? (size_t)(to - at) : sizeof buf;
        if (pread(fd, buf, n, (off_t)at) != (ssize_t)n || memcmp(buf, zero, n) != 0)
            return 0;
    }
    return 1;
}

/* GF_OK with *size_out once ready, WAIT_REDO holding LOCK_EX when the file was
 * abandoned and may_redo (tables checked up to `tables_end`), else an error. */
static int wait_ready(int fd, uint64_t *size_out, int may_redo, uint64_t tables_end)
{
    int64_t deadline = gf_mono_ns() + ATTACH_WAIT_NS;
    int abandoned = 0;
    for (;;) {
        struct stat st;
        if (fstat(fd, &st) < 0)
            return gf_fail_errno("fstat");
        if ((uint64_t)st.st_size >= GF_HDR_SIZE) {
            struct gf_fabric_hdr h;
            if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
                return gf_fail_errno("read fabric header");
            /* another layout may keep `ready` elsewhere: refuse by version now, not
             * after the wait (a file being made reads version 0 or ours, never other) */
            if (h.magic == GF_MAGIC && h.version != 0 && h.version != GF_LAYOUT_VERSION)
                return gf_fail(GF_E_VERSION, "fabric has layout version %u, this grafos reads version %u",
                               h.version, GF_LAYOUT_VERSION);
            if (h.ready == GF_READY) {
                *size_out = (uint64_t)st.st_size;
                return GF_OK;
            }
            if (h.magic != GF_MAGIC && h.magic != 0)
                return gf_fail(GF_E_CORRUPT, "not a grafos fabric: bad magic 0x%016llx",
                               (unsigned long long)h.magic);
            /* a creator stores `ready` once, over zeros: any other value is damage, not "not yet" */
            if (h.ready != 0)
                return gf_fail(GF_E_CORRUPT, "fabric header has a damaged ready word 0x%08x",
                               (unsigned)h.ready);
        } else if (st.st_size > 0) {
            /* a creator sizes the file with one ftruncate: a short file is never one being made */
            return gf_fail(GF_E_CORRUPT, "not a grafos fabric: file is %lld bytes, smaller than a header",
                           (long long)st.st_size);
        }
        /* not ready: is anyone making it? */
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            struct gf_fabric_hdr h;
            memset(&h, 0, sizeof h);
            if (pread(fd, &h, sizeof h, 0) < 0)
                memset(&h, 0, sizeof h);
            if (h.ready == GF_READY) {          /* finished just now */
                flock(fd, LOCK_UN);
                continue;
            }
            uint64_t end = (uint64_t)st.st_size < tables_end ? (uint64_t)st.st_size : tables_end;
            if (h.magic == GF_MAGIC && h.data_off > GF_HDR_SIZE && h.data_off < end)
                end = h.data_off > end ? end : h.data_off;
            abandoned = 1;
            if (may_redo && tables_empty(fd, GF_HDR_SIZE, end))
                return WAIT_REDO;
            flock(fd, LOCK_UN);
        }
        if (gf_mono_ns() > deadline) {
            if ((uint64_t)st.st_size < GF_HDR_SIZE && st.st_size > 0)
                return gf_fail(GF_E_CORRUPT, "not a grafos fabric: file is %lld bytes, smaller than a header",
                               (long long)st.st_size);
            if (abandoned && may_redo)
                return gf_fail(GF_E_CORRUPT, "fabric was never finished by its creator (not ready after 2 s, "
                               "and it holds data past its header, so it is not made again over it): "
                               "remove the file (Fabric.unlink(name) for a named bus) and create it again");
            if (abandoned)
                return gf_fail(GF_E_CORRUPT, "fabric was never finished by its creator (not ready after 2 s; "
                               "its creator is gone): open it with create=True and a size to make it again, "
                               "or remove the file (Fabric.unlink(name) for a named bus)");
            return gf_fail(GF_E_CORRUPT, "fabric was never finished by its creator (not ready after 2 s, "
                           "and its creator is still at work)");
        }
        usleep(1000);
    }
}

static int check_owner(int fd, uint32_t flags)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return gf_fail_errno("fstat");
    if (!S_ISREG(st.st_mode))
        return gf_fail(GF_E_INVAL, "fabric path is not a regular file");
    if (flags & GF_OPEN_TRUST_ANY)
        return GF_OK;
    if (st.st_uid != geteuid())
        return gf_fail(GF_E_PERM, "fabric is owned by uid %u, not by this user (uid %u); pass trust_any=True to attach anyway",
                       (unsigned)st.st_uid, (unsigned)geteuid());
    if (st.st_mode & S_IWOTH)
        return gf_fail(GF_E_PERM, "fabric is writable by other users (mode %03o); pass trust_any=True to attach anyway",
                       (unsigned)(st.st_mode & 0777));
    return GF_OK;
}

/* open_once's error when the file it attached is no longer the one at its path
 * (grafos gc, or anyone, removed it before our shared file lock was in place),
 * or when a file it may make vanished between its create and its attach */
#define OPEN_MOVED 100

/* 1 if `path` no longer names the file open as fd (removed, or another file in its place) */
static int path_moved(int fd, const char *path)
{
    struct stat mine, now;
    if (fstat(fd, &mine) < 0)
        return 0;
    if (lstat(path, &now) < 0)
        return errno == ENOENT;
    return now.st_dev != mine.st_dev || now.st_ino != mine.st_ino;
}

static gf_fabric *open_once(const char *path, uint64_t size, uint32_t mode, uint32_t flags,
                            uint32_t lease_slots, uint32_t meta_slots, int *err)
{
    int rc = GF_OK, fd = -1, created = 0;
    gf_fabric *f = NULL;
    int where = !path ? GF_WHERE_MEMFD : strncmp(path, "/dev/shm/", 9) == 0 ? GF_WHERE_SHM : GF_WHERE_FILE;
    if (!lease_slots) lease_slots = DEFAULT_LEASE_SLOTS;
    if (!meta_slots) meta_slots = DEFAULT_META_SLOTS;
    if (lease_slots > MAX_LEASE_SLOTS || meta_slots > MAX_META_SLOTS) {
        rc = gf_fail(GF_E_INVAL, "lease_slots must be <= %u and meta_slots <= %u", MAX_LEASE_SLOTS, MAX_META_SLOTS);
        goto out;
    }
    uint64_t lo, mo, dO;
    layout(lease_slots, meta_slots, &lo, &mo, &dO);
    if (size) {
        size = gf_round_page(size);
        if (size < dO + GF_PAGE || size > MAX_FABRIC_SIZE) {
            rc = gf_fail(GF_E_INVAL, "fabric size %llu bytes out of range: needs %llu to %llu bytes",
                         (unsigned long long)size, (unsigned long long)(dO + GF_PAGE),
                         (unsigned long long)MAX_FABRIC_SIZE);
            goto out;
        }
    }

    if (!path) {
        if (!size) { rc = gf_fail(GF_E_INVAL, "an in-process fabric needs a size"); goto out; }
        /* the system call, not glibc's wrapper (2.27+): the wheels target glibc 2.17 */
        fd = (int)syscall(SYS_memfd_create, "grafos", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0) { rc = gf_fail_errno("memfd_create"); goto out; }
        created = 1;
    } else {
        if (flags & GF_OPEN_CREATE) {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
            if (fd >= 0) {
                created = 1;
                if (fchmod(fd, mode) < 0) { rc = gf_fail_errno("fchmod"); goto out_unlink; }
            } else if (errno != EEXIST || (flags & GF_OPEN_EXCL)) {
                rc = errno == EEXIST ? gf_fail(GF_E_EXISTS, "fabric %s already exists", path)
                                     : gf_fail_errno(path);
                goto out;
            }
        }
        if (fd < 0) {
            fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
            if (fd < 0 && errno == ENOENT && (flags & GF_OPEN_CREATE)) {
                rc = OPEN_MOVED;    /* it was there a moment ago (O_EXCL said so): make it */
                goto out;
            }
            if (fd < 0) {
                rc = errno == ENOENT ? gf_fail(GF_E_NOTFOUND, "no fabric at %s", path) : gf_fail_errno(path);
                goto out;
            }
        }
        if (created && !size) { rc = gf_fail(GF_E_INVAL, "creating a fabric needs a size"); goto out_unlink; }
    }

    if (created && path) {
        GF_FAULT(GF_FAULT_CREATE_OPENED);
        /* the creator's lock (see wait_ready); someone may have made it again
         * between our open and this lock, taking us for a dead creator */
        struct gf_fabric_hdr h;
        (void)flock(fd, LOCK_EX);   /* where flock is unsupported: no recovery, as before */
        if (pread(fd, &h, sizeof h, 0) == (ssize_t)sizeof h && h.ready == GF_READY) {
            flock(fd, LOCK_UN);
            created = 0;
        }
    }
    if (!created) {
        uint64_t asked = size;
        if ((rc = check_owner(fd, flags)) < 0)
            goto out;
        rc = wait_ready(fd, &size, (flags & GF_OPEN_CREATE) != 0, dO);
        if (rc == WAIT_REDO) {
            /* abandoned by a dead creator, and we hold its lock now: make it again, from zeros */
            struct stat st;
            size = asked ? asked : (fstat(fd, &st) == 0 ? gf_round_page((uint64_t)st.st_size) : 0);
            if (size < dO + GF_PAGE || size > MAX_FABRIC_SIZE) {
                flock(fd, LOCK_UN);
                rc = gf_fail(GF_E_INVAL, "fabric %s was abandoned by its creator before it was sized: "
                             "open it with a size to create it again", path);
                goto out;
            }
            created = 1;
            if (ftruncate(fd, 0) < 0) { rc = gf_fail_errno("ftruncate"); goto out_unlink; }
        } else if (rc < 0) {
            goto out;
        } else if (size < GF_HDR_SIZE + GF_PAGE || size > MAX_FABRIC_SIZE) {
            rc = gf_fail(GF_E_CORRUPT, "fabric file size %llu is out of range", (unsigned long long)size);
            goto out;
        }
    }
    if (created) {
        if (ftruncate(fd, (off_t)size) < 0) {
            rc = gf_fail_errno("ftruncate");
            goto out_unlink;
        }
        GF_FAULT(GF_FAULT_CREATE_SIZED);
        if ((rc = gf_reserve(fd, where, 0, dO, "the fabric's header and tables")) < 0)
            goto out_unlink;
    }
    if (!path)  /* nobody else can shrink an in-process fabric under us */
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);

    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { rc = gf_fail_errno("mmap"); goto out_unlink; }
    f = calloc(1, sizeof *f);
    if (!f) { munmap(base, size); rc = gf_fail(GF_E_FULL, "out of memory"); goto out_unlink; }
    f->base = base;
    f->size = size;
    f->fd = fd;
    f->hdr = (struct gf_fabric_hdr *)base;
    f->created = created;
    f->where = where;
    f->stall_ns = DEFAULT_STALL_NS;
    gf_init(&f->refs, 1);
    struct statfs sfs;
    f->in_memory = where != GF_WHERE_FILE || (fstatfs(fd, &sfs) == 0 && sfs.f_type == TMPFS_MAGIC);
    if (flags & GF_OPEN_HUGE) {
        /* before any page is faulted in, so the pages this mapping allocates can be huge */
        if (madvise(base, size, MADV_HUGEPAGE) < 0) {
            rc = gf_fail(GF_E_IO, "madvise(MADV_HUGEPAGE) on the fabric: %s", strerror(errno));
            munmap(base, size);
            free(f);
            f = NULL;
            goto out_unlink;
        }
        f->huge = 1;
    }
    if (created) {
        gf_populate(f, base, dO);
        GF_FAULT(GF_FAULT_CREATE_MAPPED);
        format(f, size, lease_slots, meta_slots);
    } else if ((rc = validate(f->hdr, size)) < 0) {
        munmap(base, size);
        free(f);
        f = NULL;
        goto out;
    }
    if (path) {
        /* held for the handle's life: converts the creator's exclusive lock */
        flock(fd, LOCK_SH);
        /* gc removes a file only under LOCK_EX, which it cannot take from here on:
         * if the path still names our file, no removal can come between us and it.
         * If not, we opened (or made) a file on its way out: open again by path. */
        if (path_moved(fd, path)) {
            munmap(base, size);
            free(f);
            f = NULL;
            rc = OPEN_MOVED;
            goto out;
        }
    }
    f->owner_fd = gf_reopen(fd, path);
    {
        int e = f->owner_fd < 0 ? (errno ? errno : ENOENT) : gf_owner_take(f, f->hdr);
        if (e) {
            if (f->owner_fd >= 0)
                close(f->owner_fd);
            munmap(base, size);
            free(f);
            f = NULL;
            rc = gf_fail(GF_E_IO, "cannot take an owner token on the fabric's file (reopen and F_OFD_SETLK: %s): "
                         "grafos tells a live lock holder from a dead one by its file lock, so the file "
                         "must be on a filesystem with POSIX file locks (tmpfs /dev/shm, ext4, xfs, ...)",
                         strerror(e));
            goto out_unlink;
        }
    }
    /* from here on only the validated copies are used */
    f->leases = (struct gf_lease *)(base + f->hdr->lease_off);
    f->lease_slots = f->hdr->lease_slots;
    f->meta = (struct gf_meta_entry *)(base + f->hdr->meta_off);
    f->meta_slots = f->hdr->meta_slots;
    f->data_off = f->hdr->data_off;
    f->mapped = calloc(f->lease_slots, sizeof *f->mapped);     /* NULL: regions fault in as touched */
    gf_reg_add(f);
    /* whoever attaches reaps, if the lock is free right now (never waits for it) */
    if (!created && gf_lock(f, 0) >= 0) {
        gf_reap(f, gf_now_ns(), NULL);
        gf_unlock(f);
    }
    *err = GF_OK;
    return f;

out_unlink:
    if (created && path)
        unlink(path);
out:
    if (fd >= 0)
        close(fd);
    *err = rc;
    return NULL;
}

gf_fabric *gf_fabric_open(const char *path, uint64_t size, uint32_t mode, uint32_t flags,
                          uint32_t lease_slots, uint32_t meta_slots, int *err)
{
    int64_t deadline = gf_mono_ns() + ATTACH_WAIT_NS;
    for (;;) {
        gf_fabric *f = open_once(path, size, mode, flags, lease_slots, meta_slots, err);
        if (f || *err != OPEN_MOVED)
            return f;
        if (gf_mono_ns() > deadline) {
            *err = gf_fail(GF_E_IO, "fabric %s was removed or replaced every time it was opened for 2 s "
                           "(grafos gc or Fabric.unlink racing this open)", path);
            return NULL;
        }
    }
}

int gf_fabric_probe(const char *path, int64_t now_ns, uint32_t remove_if_idle, gf_probe *out)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? gf_fail(GF_E_NOTFOUND, "no fabric at %s", path) : gf_fail_errno(path);
    int rc = GF_OK;
    struct stat st;
    struct gf_fabric_hdr h;
    if (fstat(fd, &st) < 0) { rc = gf_fail_errno("fstat"); goto done; }
    if (!S_ISREG(st.st_mode)) { rc = gf_fail(GF_E_INVAL, "%s is not a regular file", path); goto done; }
    out->size = (uint64_t)st.st_size;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK) { rc = gf_fail_errno("flock"); goto done; }
        out->in_use = 1;
    }
    memset(&h, 0, sizeof h);
    if (st.st_size >= (off_t)sizeof h && pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        rc = gf_fail_errno("read fabric header");
        goto done;
    }
    if (h.ready == GF_READY) {
        if ((rc = validate(&h, (uint64_t)st.st_size)) < 0)
            goto done;
        out->ready = 1;
        out->lock_pid = h.lock ? h.lock_pid : 0;
        out->lock_alive = h.lock != 0 && gf_owner_alive_fd(fd, h.lock) != 0;
        struct gf_lease l;
        for (uint32_t i = 0; i < h.lease_slots; i++) {
            if (pread(fd, &l, sizeof l, (off_t)(h.lease_off + (uint64_t)i * sizeof l)) != (ssize_t)sizeof l) {
                rc = gf_fail_errno("read lease table");
                goto done;
            }
            if (l.id == 0)
                continue;
            out->leases_total++;
            if (l.expires_ns > now_ns && l.dead_tag != (uint32_t)l.id)
                out->leases_live++;
            if (l.expires_ns > out->last_expiry_ns)
                out->last_expiry_ns = l.expires_ns;
        }
    } else if (h.magic != GF_MAGIC && h.magic != 0) {
        rc = gf_fail(GF_E_CORRUPT, "not a grafos fabric: bad magic 0x%016llx", (unsigned long long)h.magic);
        goto done;
    } else if (h.magic == GF_MAGIC && h.version != 0 && h.version != GF_LAYOUT_VERSION) {
        rc = gf_fail(GF_E_VERSION, "fabric has layout version %u, this grafos reads version %u",
                     h.version, GF_LAYOUT_VERSION);
        goto done;
    }
    if (remove_if_idle && !out->in_use && !out->lock_alive &&
        (out->leases_live == 0 || remove_if_idle == GF_PROBE_REMOVE_UNUSED)) {
        if (unlink(path) < 0) { rc = gf_fail_errno("unlink"); goto done; }
        out->removed = 1;
    }
done:
    close(fd);     /* lets go of the file lock */
    return rc;
}

void gf_fabric_unref(gf_fabric *f)
{
    if (gf_fsub(&f->refs, 1) == 1) {
        gf_reg_del(f);
        munmap(f->base, f->size);
        if (f->owner_fd >= 0)
            close(f->owner_fd);     /* lets the token go */
        close(f->fd);
        free((void *)f->mapped);
        free(f);
    }
}

void gf_fabric_close(gf_fabric *f)
{
    if (!f)
        return;
    /* a lock held by this handle dies with it, as it would with the process */
    if (f->held && f->token && gf_load_acq(&f->hdr->lock) == f->token) {
        f->held = 0;
        gf_store_rel(&f->hdr->lock, 0);
        gf_futex_wake_all(&f->hdr->lock);
    }
    gf_fabric_unref(f);
}

void gf_fabric_set_stall(gf_fabric *f, int64_t stall_ns)
{
    f->stall_ns = stall_ns > 0 ? stall_ns : DEFAULT_STALL_NS;
}

int gf_fabric_info_get(gf_fabric *f, gf_fabric_info *out)
{
    struct stat st;
    memset(out, 0, sizeof *out);
    out->total_size = f->size;
    out->data_off = f->data_off;
    out->data_size = f->size - f->data_off;
    out->lease_slots = f->lease_slots;
    out->meta_slots = f->meta_slots;
    out->version = GF_LAYOUT_VERSION;
    out->created = (uint32_t)f->created;
    out->lock_recoveries = gf_load_acq(&f->hdr->lock_recoveries);
    out->meta_epoch = gf_load_acq(&f->hdr->meta_epoch);
    out->stall_ns = f->stall_ns;
    out->syncs = gf_load_acq(&f->syncs);
    out->durable = (uint32_t)f->durable;
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        uint64_t off, size;
        lease_region(l, &off, &size);
        if (gf_load_acq(&l->id) != 0 && lease_bounds_ok(f, off, size)) {
            out->leases_live++;
            out->bytes_leased += size;
        }
    }
    out->blocks = fstat(f->fd, &st) == 0 ? (int64_t)st.st_blocks : -1;
    return GF_OK;
}
