/* platform.c -- what the fabric asks of Linux: fault injection for tests,
 * the thread-local error text and the clocks, futexes, reserving a file's
 * pages, and owner tokens (OFD locks the kernel drops with a dead handle),
 * kept across fork by a registry of open handles. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <linux/futex.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include "fabric_internal.h"

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

int gf_fail_errno(const char *what)
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

/* ---- space: reserved, not hoped for ---------------------------------------------
 * A sparse file on a full tmpfs gives a SIGBUS at the first store to a missing
 * page. So every page the fabric will write is allocated in the file when it
 * is handed out (the fixed tables at creation, a lease's region at acquire),
 * and a full filesystem is an error there instead. */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
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
int gf_reserve(int fd, int where, uint64_t off, uint64_t len, const char *what)
{
    if (fallocate(fd, 0, (off_t)off, (off_t)len) == 0)
        return GF_OK;
    if (errno == ENOSPC || errno == EDQUOT || errno == ENOMEM)
        return fail_nospace(fd, where, what, len);
    if (errno == EOPNOTSUPP || errno == ENOSYS)
        return GF_OK;
    return gf_fail_errno("fallocate");
}

/* Fault the pages in now, so the first lap of a fresh ring costs what later laps do.
 * In memory (shmem) a read fault maps up to 16 pages around it, writable, where a
 * write fault maps one: 16 times fewer faults for the same page tables (35 ms
 * against 320 ms for 256 MiB here). A disk file's pages fault in read-only until
 * written, so there the faults are write faults. */
void gf_populate(const gf_fabric *f, uint8_t *p, uint64_t len)
{
    if (madvise(p, len, f->in_memory ? MADV_POPULATE_READ : MADV_POPULATE_WRITE) == 0)
        return;
    for (uint64_t i = 0; i < len; i += GF_PAGE)   /* older kernels: touch each page */
        gf_plain_faa_rlx(&p[i], 0);
}

void gf_populate_huge(uint8_t *p, uint64_t len)
{
    (void)madvise(p, len, MADV_POPULATE_WRITE);     /* no fallback: a store to a page past a full tmpfs is a SIGBUS */
}

/* A second process attaching a ring that another populated has no page table
 * entries for it: a writer takes a fault per 4 KiB page on its first lap (1-5 us
 * each here, up to 80 us per 64 KiB message). Memory-backed fabrics only: on a
 * disk file it would read the whole region from disk. */
void gf_lease_map(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off, uint64_t len)
{
    if (!f->mapped || !f->in_memory || index >= f->lease_slots || gf_load_rlx(&f->mapped[index]) == id)
        return;
    gf_populate(f, f->base + off, len);
    gf_store_rlx(&f->mapped[index], id);
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
int gf_reopen(int fd, const char *path)
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
int gf_owner_alive_fd(int fd, uint32_t token)
{
    struct flock fl = owner_range(F_WRLCK, token);
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -1;
    return fl.l_type != F_UNLCK;
}

int gf_owner_alive(gf_fabric *f, uint32_t token) { return gf_owner_alive_fd(f->fd, token); }

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
int gf_owner_take(gf_fabric *f, const struct gf_fabric_hdr *h)
{
    for (int i = 0; i < OWNER_TRIES; i++) {
        uint32_t t = random_token();
        if (t == 0 || (h && t == gf_load_acq(&h->lock)))
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
    if (f->mapped)      /* fork copies no page table entries of a shared mapping */
        memset((void *)f->mapped, 0, (size_t)f->lease_slots * sizeof *f->mapped);
    int nfd = gf_reopen(f->owner_fd, NULL);
    int e = nfd < 0 ? (errno ? errno : EBADF) : 0;
    close(f->owner_fd);     /* the parent's description: its token stays the parent's alone */
    f->owner_fd = nfd;
    f->token_err = e ? e : gf_owner_take(f, f->hdr);
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

void gf_reg_add(gf_fabric *f)
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

void gf_reg_del(gf_fabric *f)
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

int gf_reg_holder(const gf_fabric *f, uint32_t token)
{
    int found = 0;
    pthread_mutex_lock(&reg_mu);
    for (gf_fabric *g = reg_head; g && !found; g = g->reg_next)
        found = g != f && g->held && g->token && g->token == token && g->lock_as == token;
    pthread_mutex_unlock(&reg_mu);
    return found;
}
