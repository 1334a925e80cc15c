/* fabric.c -- the arena: create/attach/validate, the metadata lock, leases and
 * the allocator, the metadata table. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <pthread.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include "core.h"

#define DEFAULT_LEASE_SLOTS 1024u
#define DEFAULT_META_SLOTS  4096u
#define MAX_LEASE_SLOTS     (1u << 20)
#define MAX_META_SLOTS      (1u << 22)
#define MAX_FABRIC_SIZE     (1ULL << 44)
#define ATTACH_WAIT_NS      2000000000LL   /* how long to wait for a creator to finish */
#define DEFAULT_STALL_NS    500000000LL    /* bounded wait on an unfinished slot: 500 ms (docs/hardening.md) */
#define OWNER_TRIES         64             /* random tokens tried before giving up (each collides
                                            * with a live one at odds of live handles / 2^31) */

/* ---- fault injection (tests) ------------------------------------------------ */
int gf_fault_armed;
static int fault_at, fault_action;

int gf_test_fault(int point, int action)
{
    fault_at = point;
    fault_action = action;
    gf_fault_armed = action != 0;
    return GF_OK;
}

int gf_fault_point(int point)
{
    if (point != fault_at)
        return 0;
    if (fault_action == GF_FAULT_FAIL) {
        gf_fault_armed = 0;     /* once */
        fault_at = 0;
        return 1;
    }
    if (fault_action == GF_FAULT_EXIT)
        _exit(77);
    if (fault_action == GF_FAULT_STOP)
        raise(SIGSTOP);
    return 0;
}

/* ---- errors and clocks --------------------------------------------------- */
static __thread char last_error[512];

const char *gf_last_error(void) { return last_error; }

int gf_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

int gf_fail_prefix(int code, const char *fmt, ...)
{
    char prefix[192], tail[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(tail, last_error, sizeof tail);     /* never format the buffer into itself */
    /* a long message is cut at the buffer's end, as gf_fail's are */
    int n = snprintf(last_error, sizeof last_error, "%s: ", prefix);
    if (n > 0 && (size_t)n < sizeof last_error)
        memcpy(last_error + n, tail, strnlen(tail, sizeof last_error - (size_t)n - 1) + 1);
    last_error[sizeof last_error - 1] = 0;
    return code;
}

static int fail_errno(const char *what)
{
    return gf_fail(GF_E_IO, "%s: %s", what, strerror(errno));
}

int64_t gf_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t gf_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- futex ------------------------------------------------------------------
 * Not FUTEX_PRIVATE: the word lives in a mapping other processes share. */
int gf_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns)
{
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    return (int)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, tsp, NULL, 0);
}

void gf_futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
}

static uint64_t round_page(uint64_t n) { return (n + GF_PAGE - 1) & ~(uint64_t)(GF_PAGE - 1); }

/* ---- space: reserved, not hoped for ---------------------------------------------
 * A sparse file on a full tmpfs gives a SIGBUS at the first store to a missing
 * page. So every page the fabric will write is allocated in the file when it
 * is handed out (the fixed tables at creation, a lease's region at acquire),
 * and a full filesystem is an error there instead. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static int fail_nospace(int fd, int where, const char *what, uint64_t len)
{
    struct statvfs sv;
    unsigned long long avail = fstatvfs(fd, &sv) == 0 ? (unsigned long long)sv.f_bavail * sv.f_frsize : 0;
    const char *advice =
        where == GF_WHERE_SHM
            ? "; /dev/shm is memory sized by its mount: give it more (docker run --shm-size=1g), "
              "share the host's (docker run --ipc=host), or keep the bus in a file on disk "
              "(TopicManager.open(path=...))"
        : where == GF_WHERE_MEMFD ? "; an in-process fabric is memory: free some, or use a smaller fabric"
        : "; free space on that filesystem or put the bus on a larger one";
    return gf_fail(GF_E_NOSPACE, "no space for %s: needs %llu bytes, the filesystem holding the fabric has %llu bytes free%s",
                   what, (unsigned long long)len, avail, advice);
}

/* Allocate [off, off+len) in the backing file. Filesystems without fallocate
 * (rare for tmpfs, ext4, xfs, btrfs) keep the old sparse behaviour. */
static int reserve(int fd, int where, uint64_t off, uint64_t len, const char *what)
{
    if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0)
        return GF_OK;
    if (errno == ENOSPC || errno == EDQUOT || errno == ENOMEM)
        return fail_nospace(fd, where, what, len);
    if (errno == EOPNOTSUPP || errno == ENOSYS)
        return GF_OK;
    return fail_errno("fallocate");
}

/* Fault the pages in now, so the first lap of a fresh ring costs what later laps do. */
static void populate(uint8_t *p, uint64_t len)
{
    if (madvise(p, len, MADV_POPULATE_WRITE) == 0)
        return;
    for (uint64_t i = 0; i < len; i += GF_PAGE)   /* older kernels: touch each page */
        __atomic_fetch_add(&p[i], 0, __ATOMIC_RELAXED);
}

static uint32_t hdr_crc(const struct gf_fabric_hdr *h)
{
    return gf_crc32c(~0u, (const uint8_t *)h, offsetof(struct gf_fabric_hdr, hdr_crc)) ^ ~0u;
}

/* ---- owners (layout.h): who holds a word, alive or dead ---------------------
 * A handle takes its token when it opens and keeps the OFD lock on the token's
 * byte until its file is closed. The lock sits on a second open file description
 * of the fabric's file that is never mapped: a mapping holds a reference to the
 * description it was made from, and a fork child inherits the mapping. A fork
 * child shares the descriptions of its parent's descriptors too: so every
 * handle is registered, and a fork child gives each one a description and a
 * token of its own (otherwise a child would pass for its parent, and a parent
 * that died holding the lock would look alive for as long as the child lives). */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t reg_once = PTHREAD_ONCE_INIT;
static gf_fabric *reg_head;

/* A new open file description of the file open as fd (through /proc/self/fd,
 * which works for an unlinked file too, or else through path if it still names
 * that file). -1 if neither works. Async-signal-safe (it runs in fork children). */
static int reopen(int fd, const char *path)
{
    char proc[40] = "/proc/self/fd/", digits[16];
    int n = 0, at = 14;
    for (unsigned v = (unsigned)fd; n == 0 || v; v /= 10)
        digits[n++] = (char)('0' + v % 10);
    while (n)
        proc[at++] = digits[--n];
    proc[at] = 0;
    int nfd = open(proc, O_RDWR | O_CLOEXEC);
    if (nfd >= 0 || !path)
        return nfd;
    struct stat a, b;
    nfd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (nfd >= 0 && (fstat(fd, &a) < 0 || fstat(nfd, &b) < 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino)) {
        close(nfd);
        nfd = -1;
    }
    return nfd;
}

static struct flock owner_range(short type, uint32_t token)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)(GF_OWNER_LOCK_BASE + token);
    fl.l_len = 1;
    return fl;
}

/* 1: a live handle holds `token`; 0: nobody does (its handle is closed: the
 * process exited or was killed, or the word is garbage); -1: the kernel did not
 * answer, which callers treat as alive (nothing is taken over on a guess; their
 * wait stays bounded by its timeout). Asked through the mapped descriptor, so
 * the caller's own token (locked on its other description) reads alive too. */
static int owner_alive(int fd, uint32_t token)
{
    struct flock fl = owner_range(F_WRLCK, token);
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -1;
    return fl.l_type != F_UNLCK;
}

int gf_owner_alive(gf_fabric *f, uint32_t token) { return owner_alive(f->fd, token); }

static uint32_t random_token(void)
{
    uint32_t t = 0;
    /* the system call, not glibc's wrapper (2.25+): the wheels target glibc 2.17 */
    if (syscall(SYS_getrandom, &t, sizeof t, GRND_NONBLOCK) != (long)sizeof t) {
        /* no entropy yet: the clock and the pid still differ between takers */
        uint64_t x = (uint64_t)gf_mono_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&t;
        x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
        t = (uint32_t)x;
    }
    return t & GF_OWNER_TOKEN_MASK;
}

static uint64_t my_pidns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* Take a token for handle f on its descriptor: 0, or an errno. Avoids the one a
 * dead holder may have left in the lock word (it would make that holder look alive). */
static int owner_take(gf_fabric *f, const struct gf_fabric_hdr *h)
{
    for (int i = 0; i < OWNER_TRIES; i++) {
        uint32_t t = random_token();
        if (t == 0 || (h && t == ld_acq(&h->lock)))
            continue;
        struct flock fl = owner_range(F_WRLCK, t);
        if (fcntl(f->owner_fd, F_OFD_SETLK, &fl) == 0) {
            f->token = t;
            f->pid = (uint32_t)getpid();
            f->pidns = my_pidns();
            return 0;
        }
        if (errno != EAGAIN && errno != EACCES)
            return errno;
    }
    return EAGAIN;
}

static void reg_child_token(gf_fabric *f)
{
    f->held = 0;        /* a lock the parent holds is the parent's */
    f->token = 0;
    int nfd = reopen(f->owner_fd, NULL);
    int e = nfd < 0 ? (errno ? errno : EBADF) : 0;
    close(f->owner_fd);     /* the parent's description: its token stays the parent's alone */
    f->owner_fd = nfd;
    f->token_err = e ? e : owner_take(f, f->hdr);
}

static void reg_prepare(void) { pthread_mutex_lock(&reg_mu); }
static void reg_parent(void) { pthread_mutex_unlock(&reg_mu); }
static void reg_child(void)
{
    for (gf_fabric *f = reg_head; f; f = f->reg_next)
        reg_child_token(f);
    pthread_mutex_unlock(&reg_mu);
}
static void reg_init(void) { pthread_atfork(reg_prepare, reg_parent, reg_child); }

static void reg_add(gf_fabric *f)
{
    pthread_once(&reg_once, reg_init);
    pthread_mutex_lock(&reg_mu);
    f->reg_prev = NULL;
    f->reg_next = reg_head;
    if (reg_head)
        reg_head->reg_prev = f;
    reg_head = f;
    pthread_mutex_unlock(&reg_mu);
}

static void reg_del(gf_fabric *f)
{
    pthread_mutex_lock(&reg_mu);
    if (f->reg_prev)
        f->reg_prev->reg_next = f->reg_next;
    else if (reg_head == f)
        reg_head = f->reg_next;
    if (f->reg_next)
        f->reg_next->reg_prev = f->reg_prev;
    pthread_mutex_unlock(&reg_mu);
}

/* ---- open / create / attach ---------------------------------------------- */
static void layout(uint32_t lease_slots, uint32_t meta_slots, uint64_t *lease_off,
                   uint64_t *meta_off, uint64_t *data_off)
{
    *lease_off = GF_HDR_SIZE;
    *meta_off = *lease_off + (uint64_t)lease_slots * sizeof(struct gf_lease);
    *data_off = round_page(*meta_off + (uint64_t)meta_slots * sizeof(struct gf_meta_entry));
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
    st_rel(&h->ready, GF_READY);
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
            return fail_errno("fstat");
        if ((uint64_t)st.st_size >= GF_HDR_SIZE) {
            struct gf_fabric_hdr h;
            if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
                return fail_errno("read fabric header");
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
        return fail_errno("fstat");
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
        size = round_page(size);
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
        if (fd < 0) { rc = fail_errno("memfd_create"); goto out; }
        created = 1;
    } else {
        if (flags & GF_OPEN_CREATE) {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
            if (fd >= 0) {
                created = 1;
                if (fchmod(fd, mode) < 0) { rc = fail_errno("fchmod"); goto out_unlink; }
            } else if (errno != EEXIST || (flags & GF_OPEN_EXCL)) {
                rc = errno == EEXIST ? gf_fail(GF_E_EXISTS, "fabric %s already exists", path)
                                     : fail_errno(path);
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
                rc = errno == ENOENT ? gf_fail(GF_E_NOTFOUND, "no fabric at %s", path) : fail_errno(path);
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
            size = asked ? asked : (fstat(fd, &st) == 0 ? round_page((uint64_t)st.st_size) : 0);
            if (size < dO + GF_PAGE || size > MAX_FABRIC_SIZE) {
                flock(fd, LOCK_UN);
                rc = gf_fail(GF_E_INVAL, "fabric %s was abandoned by its creator before it was sized: "
                             "open it with a size to create it again", path);
                goto out;
            }
            created = 1;
            if (ftruncate(fd, 0) < 0) { rc = fail_errno("ftruncate"); goto out_unlink; }
        } else if (rc < 0) {
            goto out;
        } else if (size < GF_HDR_SIZE + GF_PAGE || size > MAX_FABRIC_SIZE) {
            rc = gf_fail(GF_E_CORRUPT, "fabric file size %llu is out of range", (unsigned long long)size);
            goto out;
        }
    }
    if (created) {
        if (ftruncate(fd, (off_t)size) < 0) {
            rc = fail_errno("ftruncate");
            goto out_unlink;
        }
        GF_FAULT(GF_FAULT_CREATE_SIZED);
        if ((rc = reserve(fd, where, 0, dO, "the fabric's header and tables")) < 0)
            goto out_unlink;
    }
    if (!path)  /* nobody else can shrink an in-process fabric under us */
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);

    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) { rc = fail_errno("mmap"); goto out_unlink; }
    f = calloc(1, sizeof *f);
    if (!f) { munmap(base, size); rc = gf_fail(GF_E_FULL, "out of memory"); goto out_unlink; }
    f->base = base;
    f->size = size;
    f->fd = fd;
    f->hdr = (struct gf_fabric_hdr *)base;
    f->created = created;
    f->where = where;
    f->stall_ns = DEFAULT_STALL_NS;
    atomic_init(&f->refs, 1);
    if (created) {
        populate(base, dO);
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
    f->owner_fd = reopen(fd, path);
    {
        int e = f->owner_fd < 0 ? (errno ? errno : ENOENT) : owner_take(f, f->hdr);
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
    reg_add(f);
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
        return errno == ENOENT ? gf_fail(GF_E_NOTFOUND, "no fabric at %s", path) : fail_errno(path);
    int rc = GF_OK;
    struct stat st;
    struct gf_fabric_hdr h;
    if (fstat(fd, &st) < 0) { rc = fail_errno("fstat"); goto done; }
    if (!S_ISREG(st.st_mode)) { rc = gf_fail(GF_E_INVAL, "%s is not a regular file", path); goto done; }
    out->size = (uint64_t)st.st_size;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK) { rc = fail_errno("flock"); goto done; }
        out->in_use = 1;
    }
    memset(&h, 0, sizeof h);
    if (st.st_size >= (off_t)sizeof h && pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        rc = fail_errno("read fabric header");
        goto done;
    }
    if (h.ready == GF_READY) {
        if ((rc = validate(&h, (uint64_t)st.st_size)) < 0)
            goto done;
        out->ready = 1;
        out->lock_pid = h.lock ? h.lock_pid : 0;
        out->lock_alive = h.lock != 0 && owner_alive(fd, h.lock) != 0;
        struct gf_lease l;
        for (uint32_t i = 0; i < h.lease_slots; i++) {
            if (pread(fd, &l, sizeof l, (off_t)(h.lease_off + (uint64_t)i * sizeof l)) != (ssize_t)sizeof l) {
                rc = fail_errno("read lease table");
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
        if (unlink(path) < 0) { rc = fail_errno("unlink"); goto done; }
        out->removed = 1;
    }
done:
    close(fd);     /* lets go of the file lock */
    return rc;
}

void gf_fabric_unref(gf_fabric *f)
{
    if (atomic_fetch_sub(&f->refs, 1) == 1) {
        reg_del(f);
        munmap(f->base, f->size);
        if (f->owner_fd >= 0)
            close(f->owner_fd);     /* lets the token go */
        close(f->fd);
        free(f);
    }
}

void gf_fabric_close(gf_fabric *f)
{
    if (!f)
        return;
    /* a lock held by this handle dies with it, as it would with the process */
    if (f->held && f->token && ld_acq(&f->hdr->lock) == f->token) {
        f->held = 0;
        st_rel(&f->hdr->lock, 0);
        gf_futex_wake_all(&f->hdr->lock);
    }
    gf_fabric_unref(f);
}

void gf_fabric_set_stall(gf_fabric *f, int64_t stall_ns)
{
    f->stall_ns = stall_ns > 0 ? stall_ns : DEFAULT_STALL_NS;
}

/* ---- the metadata lock --------------------------------------------------------
 * The lock word holds the holder's owner token. A waiter whose kernel says
 * nobody holds that token any more (its handle was closed: the holder exited or
 * was killed) takes the lock over, so a SIGKILLed holder never leaves the bus
 * locked, whichever PID namespace it ran in and whatever its PID names now. A
 * holder that is alive, paused (SIGSTOP, a debugger, a frozen cgroup) or that
 * the kernel cannot answer for is waited for, up to the caller's timeout. The
 * data path never takes this lock. */
static void repair(gf_fabric *f);

static int no_token(gf_fabric *f)
{
    return gf_fail(GF_E_IO, "this handle was inherited through fork and could not get an owner token of "
                   "its own (%s): open the bus again in this process", strerror(f->token_err));
}

/* Who holds it, for a LockTimeout message: pid and namespace as the holder wrote them. */
static int lock_timeout(gf_fabric *f, int64_t timeout_ns)
{
    uint32_t pid = ld_acq(&f->hdr->lock_pid);
    uint64_t ns = ld_acq(&f->hdr->lock_pidns);
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
    st_rlx(&f->hdr->lock_pid, f->pid);
    st_rlx(&f->hdr->lock_pidns, f->pidns);
    return GF_OK;
}

int gf_lock(gf_fabric *f, int64_t timeout_ns)
{
    uint32_t me = f->token;
    if (!me)
        return no_token(f);
    int64_t deadline = gf_mono_ns() + (timeout_ns < 0 ? (int64_t)1 << 62 : timeout_ns);
    for (int spins = 0;; spins++) {
        uint32_t cur = 0;
        if (cas(&f->hdr->lock, &cur, me))
            return lock_taken(f);
        if (cur == me)
            return gf_fail(GF_E_INVAL, "metadata lock is already held by this handle");
        /* another handle (of this process or any other) has it: wait unless it is gone */
        if (owner_alive(f->fd, cur) == 0) {
            if (cas(&f->hdr->lock, &cur, me)) {
                lock_taken(f);
                faa(&f->hdr->lock_recoveries, 1);
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
    if (!f->held || !f->token || ld_acq(&f->hdr->lock) != f->token)
        return gf_fail(GF_E_NOLOCK, "metadata lock is not held by this handle");
    f->held = 0;
    st_rel(&f->hdr->lock, 0);
    gf_futex_wake_all(&f->hdr->lock);
    return GF_OK;
}

int gf_lock_join(gf_fabric *f)
{
    uint32_t cur = ld_acq(&f->hdr->lock);
    int ours = 0;
    pthread_mutex_lock(&reg_mu);
    for (gf_fabric *g = reg_head; g && !ours; g = g->reg_next)
        ours = g != f && g->held && g->token && g->token == cur && g->lock_as == cur;
    pthread_mutex_unlock(&reg_mu);
    if (!cur || !ours)
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

int gf_lock_held(gf_fabric *f) { return f->held && f->lock_as && ld_acq(&f->hdr->lock) == f->lock_as; }

#define REQUIRE_LOCK(f) \
    do { if (!gf_lock_held(f)) return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__); } while (0)

/* ---- leases ------------------------------------------------------------------- */
static int lease_bounds_ok(const gf_fabric *f, uint64_t off, uint64_t size)
{
    return off >= f->data_off && size > 0 && off <= f->size && size <= f->size - off &&
           (off % GF_PAGE) == 0;
}

/* Read an entry's region once. Another process may rewrite the entry at any
 * time: check the copy, then use only the copy (never re-read after the check). */
static inline void lease_region(const struct gf_lease *l, uint64_t *off, uint64_t *size)
{
    *off = __atomic_load_n(&l->offset, __ATOMIC_RELAXED);
    *size = __atomic_load_n(&l->size, __ATOMIC_RELAXED);
}

static inline int lease_dead(const struct gf_lease *l, uint64_t id)
{
    return ld_acq(&l->dead_tag) == (uint32_t)id;
}

/* Alive: ours, not yet seen expired, and expiring after now. The first caller
 * that sees it expired tags it dead, so a clock stepped back afterwards (here
 * or in another process) cannot bring it back. */
int gf_lease_alive(struct gf_lease *l, uint64_t id, int64_t now_ns)
{
    if (ld_acq(&l->id) != id || lease_dead(l, id))
        return 0;
    if (ld_acq(&l->expires_ns) > now_ns)
        return 1;
    st_rel(&l->dead_tag, (uint32_t)id);
    return 0;
}

/* The same answer without deciding anything: for state and info calls, which
 * may be asked about any time (what-if), as MemLease.expired() is. */
int gf_lease_alive_query(const struct gf_lease *l, uint64_t id, int64_t now_ns)
{
    return ld_acq(&l->id) == id && !lease_dead(l, id) && ld_acq(&l->expires_ns) > now_ns;
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
    faa(&f->syncs, 1);
    if (msync((void *)start, end - start, MS_SYNC) < 0)
        return fail_errno("msync");
    return GF_OK;
}

int gf_fabric_set_durable(gf_fabric *f, uint32_t on)
{
    if (on && fsync(f->fd) < 0)     /* the file's size and what is in it so far */
        return fail_errno("fsync");
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
    while (!atomic_compare_exchange_strong(&l->pin, &cur, me))
        if (cur == GF_PIN_CLOSED || cur == me || owner_alive(f->fd, cur) != 0)
            return 0;   /* reclaim has begun, or someone else is writing: not now */
        /* else its holder died mid-write: cur holds that token, take it over */
    if (atomic_load(&l->id) == id)
        return 1;
    atomic_store(&l->pin, 0);   /* the entry has a new tenant: leave its pin as we found it */
    return 0;
}

void gf_lease_unpin(struct gf_lease *l) { atomic_store(&l->pin, 0); }

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
        if (atomic_compare_exchange_strong(&l->pin, &cur, GF_PIN_CLOSED) || cur == GF_PIN_CLOSED)
            return 1;
        if (cur == f->token || owner_alive(f->fd, cur) != 0)
            return 0;
        /* its holder died mid-write: cur still holds that token, take it over */
    }
}

/* Returns 1 if the entry was freed, 0 if it had to stay (pinned by a live process). */
static int lease_free(gf_fabric *f, struct gf_lease *l)
{
    uint64_t off, size;
    uint64_t id = ld_acq(&l->id);
    lease_region(l, &off, &size);
    /* dead to readers first, then the memory goes */
    st_rel(&l->dead_tag, (uint32_t)id);
    st_rel(&l->expires_ns, 0);
    if (!lease_close(f, l))
        return 0;
    st_rel(&l->id, 0);
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
    out->expires_ns = ld_acq(&l->expires_ns);
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
        uint64_t id = ld_acq(&l->id);
        if (id != 0 && (ld_acq(&l->expires_ns) <= now_ns || lease_dead(l, id))) {
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
    uint64_t need = round_page(size);
    struct span *sp = malloc(sizeof *sp * (f->lease_slots + 1));
    if (!sp)
        return gf_fail(GF_E_FULL, "out of memory");
    uint32_t ns = 0, free_idx = UINT32_MAX;
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        if (ld_acq(&l->id) == 0) {
            if (free_idx == UINT32_MAX)
                free_idx = i;
            continue;
        }
        uint64_t loff, lsize;
        lease_region(l, &loff, &lsize);
        if (!lease_bounds_ok(f, loff, lsize)) {
            /* a damaged entry cannot be used by anyone (readers check the same bounds) */
            st_rel(&l->id, 0);
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
    int rc = reserve(f->fd, f->where, at, need, "a lease");
    if (rc < 0)
        return rc;
    populate(f->base + at, need);
    struct gf_lease *l = &f->leases[free_idx];
    uint64_t id = f->hdr->next_lease_id++;
    if (id == 0)
        id = f->hdr->next_lease_id++;
    l->offset = at;
    l->size = need;
    l->owner_tag = owner_tag;
    l->created_ns = now_ns;
    l->generation++;
    st_rel(&l->dead_tag, ~(uint32_t)id);   /* whatever tag the last tenant left, not ours */
    st_rel(&l->expires_ns, expires_ns);
    st_rel(&l->pin, 0);
    st_rel(&l->id, id);
    fill_info(f, free_idx, l, id, at, need, out);
    faa(&f->hdr->meta_epoch, 1);
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
    if (ld_acq(&l->id) != id) {
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
    int64_t cur = ld_acq(&l->expires_ns);
    if (!gf_lease_alive(l, id, now_ns))   /* a dead lease stays dead: renewing cannot resurrect it */
        return cur <= now_ns
            ? gf_fail(GF_E_EXPIRED, "lease %llu expired %.3f s ago and cannot be renewed",
                      (unsigned long long)id, (double)(now_ns - cur) / 1e9)
            : gf_fail(GF_E_EXPIRED, "lease %llu was seen expired (the clock has gone back since) and cannot be renewed",
                      (unsigned long long)id);
    if (expires_ns <= now_ns)
        return gf_fail(GF_E_INVAL, "new expiry is not in the future");
    st_rel(&l->expires_ns, expires_ns);
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
    faa(&f->hdr->meta_epoch, 1);
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
    if (ld_acq(&l->id) != id)
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
        uint64_t id = ld_acq(&l->id), off, size;
        lease_region(l, &off, &size);
        if (id == 0 || !lease_bounds_ok(f, off, size))
            continue;
        fill_info(f, i, l, id, off, size, &out[n]);
        if (ld_acq(&l->id) == id)
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
        return no_token(f);
    int rc = lease_io(f, index, id, off, len, now_ns, &l, &at);
    if (rc < 0)
        return rc;
    /* another write holds the pin for one copy: wait for it, boundedly */
    for (int64_t t0 = gf_mono_ns(); !gf_lease_pin(f, l, id);) {
        uint32_t p = ld_acq(&l->pin);
        if (p == GF_PIN_CLOSED || ld_acq(&l->id) != id)
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
    faa(&f->hdr->meta_epoch, 1);
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
    faa(&f->hdr->meta_epoch, 1);
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

uint64_t gf_meta_epoch(gf_fabric *f) { return ld_acq(&f->hdr->meta_epoch); }

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
        if (ld_acq(&l->id) != 0 && !lease_bounds_ok(f, off, size))
            st_rel(&l->id, 0);
    }
    faa(&f->hdr->meta_epoch, 1);
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
    out->lock_recoveries = ld_acq(&f->hdr->lock_recoveries);
    out->meta_epoch = ld_acq(&f->hdr->meta_epoch);
    out->stall_ns = f->stall_ns;
    out->syncs = ld_acq(&f->syncs);
    out->durable = (uint32_t)f->durable;
    for (uint32_t i = 0; i < f->lease_slots; i++) {
        struct gf_lease *l = &f->leases[i];
        uint64_t off, size;
        lease_region(l, &off, &size);
        if (ld_acq(&l->id) != 0 && lease_bounds_ok(f, off, size)) {
            out->leases_live++;
            out->bytes_leased += size;
        }
    }
    out->blocks = fstat(f->fd, &st) == 0 ? (int64_t)st.st_blocks : -1;
    return GF_OK;
}
