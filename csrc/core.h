/* core.h -- process-local state shared by the .c files (never in shared memory). */
#ifndef GRAFOS_CORE_H
#define GRAFOS_CORE_H
#include "grafos.h"
#include "grafos_test.h"
#include "layout.h"

/* Entry points shared by the core's files and no one else: resolved inside
 * the module, never through its symbol table (no PLT hop on a hot path). */
#define GF_INTERNAL __attribute__((visibility("hidden")))

struct gf_fabric {
    uint8_t *base;              /* the mapping */
    uint64_t size;              /* validated total size */
    int fd;
    struct gf_fabric_hdr *hdr;
    struct gf_lease *leases;
    uint32_t lease_slots;
    struct gf_meta_entry *meta;
    uint32_t meta_slots;
    uint64_t data_off;
    int64_t stall_ns;           /* bounded wait on an unpublished slot */
    _Atomic int refs;           /* 1 for the open handle + 1 per open ring */
    int created;
    int durable;                /* msync(MS_SYNC) acknowledged appends and metadata changes
                                 * before returning (process-local: each handle opts in) */
    _Atomic uint64_t syncs;     /* msync calls made for durability (observability, tests) */
    int held;                   /* this handle holds the metadata lock, as lock_as */
    uint32_t lock_as;           /* the token the lock word holds while `held`: ours, or that of
                                 * the handle of this process we joined (gf_lock_join) */
    uint32_t token;             /* this handle's owner token (layout.h, "owners"); 0: none */
    int owner_fd;               /* the file again, open only to hold the token's lock: never
                                 * mapped, so a fork child's copy of the mapping keeps no
                                 * reference to it (and a dead holder's token dies with it) */
    int token_err;              /* errno of a fork child's failed attempt to get its own token */
    uint32_t pid;               /* getpid() when the token was taken (for messages) */
    uint64_t pidns;             /* inode of /proc/self/ns/pid then (for messages) */
    struct gf_fabric *reg_next, *reg_prev;   /* every open handle of the process (fork) */
    int where;                  /* GF_WHERE_*: what backs the mapping (for error advice) */
    int in_memory;              /* backed by memory (memfd, tmpfs): a ring is worth faulting in ahead */
    int huge;                   /* the mapping is advised for huge pages (GF_OPEN_HUGE) */
    _Atomic uint64_t *mapped;   /* per lease entry: the id of the lease whose region this mapping has
                                 * faulted in (gf_lease_map), so it is done once; NULL: not kept */
};
#define GF_WHERE_MEMFD 0
#define GF_WHERE_SHM   1        /* under /dev/shm */
#define GF_WHERE_FILE  2

/* A ring handle copies capacity/stride/slot base once, after checking them
 * against the lease, so a later scribble on the ring header cannot move it. */
struct gf_ring {
    gf_fabric *f;
    struct gf_ring_hdr *hdr;
    uint8_t *slots;
    struct gf_lease *lease;
    uint64_t lease_id;
    uint32_t capacity;
    uint64_t mask;              /* capacity - 1 when a power of two, else 0 */
    uint32_t stride;
    uint32_t room;              /* stride - slot header */
    _Atomic uint64_t *seqs;     /* the sequence words, after the slots */
    uint64_t max_msg;           /* largest key + headers + value: the whole ring less one header */
    int crc;                    /* slots carry checksums (the header's GF_RING_NO_CRC clear) */
    int stream;                 /* GF_STREAM_RING_BYTES or more: values are copied in with gf_copy_stream */
    _Atomic int mapped;         /* this handle has written: the ring is in this process's page tables */
};

/* A ring this large copies values in with gf_copy_stream / gf_copy_crc_stream.
 * 64 KiB values streamed ran a third faster across processes from 16 MiB up,
 * but one thread writing 64 of them and reading them back ran a fifth slower
 * at 16-32 MiB (it read them from memory instead of the cache), as fast at 48
 * MiB and faster from 64 MiB: from here neither way loses. */
#define GF_STREAM_RING_BYTES (64ULL << 20)

/* error reporting: a thread-local message for the last failure */
int gf_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "<prefix>: <the last error>": adds context to a failure reported further down */
int gf_fail_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int64_t gf_mono_ns(void);
void gf_fabric_unref(gf_fabric *f);
uint32_t gf_slot_crc(uint64_t n, const uint8_t *hdr28, const uint8_t *payload, uint64_t len);
uint32_t gf_slot_crc_seed(uint64_t n, const uint8_t *hdr28);
int gf_lease_alive(struct gf_lease *l, uint64_t id, int64_t now_ns);
int gf_lease_alive_query(const struct gf_lease *l, uint64_t id, int64_t now_ns);
int gf_dsync(gf_fabric *f, const void *p, uint64_t len);
/* Is the owner named by `token` (layout.h, "owners") alive? 1 yes, 0 no (gone, or
 * garbage), -1 the kernel did not answer (treat as alive). f->token is the
 * caller's own (alive, as long as f is open). */
int gf_owner_alive(gf_fabric *f, uint32_t token);
/* Where lease (index, id) starts in the mapping, after checking it is live
 * there and has at least `need` bytes; NULL and *rc on failure. */
uint8_t *gf_lease_addr(gf_fabric *f, uint32_t index, uint64_t id, uint64_t need, int *rc);
/* One ring's read from cursor c (read.c): what gf_poller_poll does per partition, for share.c */
uint32_t gf_ring_read(gf_ring *r, gf_cursor *c, uint32_t part, uint32_t max, gf_msg_meta *meta,
                      uint8_t *buf, uint64_t buf_size, uint64_t *used, int64_t now,
                      int64_t *stalled, int *err);
/* Pin lease (entry l, id) against reclaim while writing outside the slot protocol:
 * 1 if pinned (the region is that lease's until gf_lease_unpin), 0 if not. */
int gf_lease_pin(gf_fabric *f, struct gf_lease *l, uint64_t id);
void gf_lease_unpin(struct gf_lease *l);
/* Fault the region [off, off+len) of lease entry `index` (lease `id`) into this
 * mapping, once per lease and handle (platform.c). */
void gf_lease_map(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off, uint64_t len);

/* Fault injection for tests (gf_test_fault): stop or exit at a numbered point. */
extern int gf_fault_armed;
int gf_fault_point(int point);
#define GF_FAULT(k) do { if (__builtin_expect(gf_fault_armed, 0)) gf_fault_point(k); } while (0)
/* 1 when point k is armed with GF_FAULT_FAIL: the caller fails as if a system call had */
#define GF_FAULT_FAILS(k) (__builtin_expect(gf_fault_armed, 0) && gf_fault_point(k))
void gf_futex_wake_all(_Atomic uint32_t *word);
int gf_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t timeout_ns);
#endif
