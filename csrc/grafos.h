/* grafos.h -- the native core's public API.
 *
 * build_ffi.py feeds the part between the cdef markers to cffi's cdef, so it
 * stays in the C subset cffi parses: no #if, no _Atomic, `...` for values the
 * compiler fills in. The shared-memory layout lives in layout.h.
 */
#ifndef GRAFOS_H
#define GRAFOS_H
#include <stdint.h>

/* cdef-begin */

/* Return codes. Python maps each to one exception class (grafos/_check.py). */
#define GF_OK            0
#define GF_RECOVERED     1    /* gf_lock: taken over from a dead holder */
#define GF_STALE         2    /* gf_gate_publish: the metadata changed since the caller's copy; nothing done */
#define GF_E_INVAL      -1    /* bad argument */
#define GF_E_FULL       -2    /* no room: arena, lease table or metadata table */
#define GF_E_EXPIRED    -3    /* lease expired or gone */
#define GF_E_TOOBIG     -4    /* message larger than the partition's ring */
#define GF_E_CORRUPT    -5    /* shared memory failed validation */
#define GF_E_NOTFOUND   -6
#define GF_E_EXISTS     -7
#define GF_E_IO         -8    /* a system call failed; message has errno text */
#define GF_E_VERSION    -9    /* fabric of another layout version */
#define GF_E_TIMEOUT   -10
#define GF_E_NOLOCK    -11    /* metadata call without holding the lock */
#define GF_E_ABANDONED -12    /* our slot was reclaimed after the bounded wait */
#define GF_E_PERM      -13    /* ownership/permission check refused the fabric */
#define GF_E_BUFFER    -14    /* caller's buffer too small for one message */
#define GF_E_NOSPACE   -15    /* the filesystem holding the fabric cannot reserve the pages */
#define GF_E_FULL_RING -16    /* a gating reader has not read the slot we would overwrite */
#define GF_E_FENCED    -17    /* an idempotent producer's epoch was superseded: nothing written */
#define GF_E_RENEW     -18    /* an idempotent producer's registration is due for renewal (slow path) */
#define GF_E_BUSY      -19    /* another thread's send to this partition is in flight (slow path) */
#define GF_E_DUPLICATE -20    /* a retried sequence older than the last one written */

/* A partition's positions run from 0 to GF_MAX_OFFSET, 2^GF_OFFSET_BITS - 1
 * (inclusive; Python's MAX_OFFSET is this value): a committed offset or a ring's
 * tail is at most GF_MAX_OFFSET, so a message's offset is below it. gf_send packs
 * (partition << GF_OFFSET_BITS | offset) into its result. */
#define GF_OFFSET_BITS  48
#define GF_MAX_OFFSET   281474976710655

/* gf_fabric_open flags */
#define GF_OPEN_CREATE     1  /* create if missing */
#define GF_OPEN_EXCL       2  /* fail if it exists */
#define GF_OPEN_TRUST_ANY  4  /* accept a fabric owned by another user / writable by others */
#define GF_OPEN_HUGE       8  /* advise the mapping for transparent huge pages (MADV_HUGEPAGE) */

/* Partitioners */
#define GF_PART_KEYHASH    0
#define GF_PART_ROUNDROBIN 1

/* What a ring does when the slot to write still holds what a gating reader needs */
#define GF_FULL_OVERWRITE  0
#define GF_FULL_BLOCK      1
#define GF_FULL_RAISE      2

/* Message flags */
#define GF_MSG_HAS_KEY     1
#define GF_MSG_STAMP       2  /* a gf_stamp follows the value: who wrote it (idempotent producers) */
#define GF_MSG_TXN         4  /* written inside a transaction (stamp.txn) */
#define GF_MSG_CONTROL     8  /* a transaction marker (value "C" commit / "A" abort): never handed
                               * to applications, only to readers that ask (gf_cursor.controls) */
#define GF_STAMP_SIZE     24
/* The stamp of a message from an idempotent producer, stored after its value
 * (little-endian, as this struct). A marker's stamp names the transaction. */
typedef struct {
    uint32_t producer;     /* the registration's number */
    uint32_t epoch;
    uint64_t seq;          /* per partition, from 0 in each epoch; a marker's is 0 */
    uint64_t txn;          /* the transaction, 0: none */
} gf_stamp;

typedef struct gf_fabric gf_fabric;
typedef struct gf_ring gf_ring;

typedef struct {
    uint64_t total_size;
    uint64_t data_off;
    uint64_t data_size;
    uint32_t lease_slots;
    uint32_t meta_slots;
    uint32_t version;
    uint32_t created;         /* this open created the fabric */
    uint64_t lock_recoveries; /* times the metadata lock was taken from a dead holder */
    uint64_t meta_epoch;
    uint64_t leases_live;
    uint64_t bytes_leased;
    int64_t blocks;           /* st_blocks of the backing file (512-byte units) */
    int64_t stall_ns;
    uint64_t syncs;           /* msync calls this handle made for durability */
    uint32_t durable;         /* this handle flushes acknowledged writes (gf_fabric_set_durable) */
    uint32_t reserved;
} gf_fabric_info;

typedef struct {
    uint32_t index;
    uint32_t generation;
    uint64_t id;
    uint64_t offset;
    uint64_t size;
    int64_t expires_ns;
    int64_t created_ns;
    uint64_t owner_tag;
    uint32_t dead;            /* someone saw it expired: dead whatever the clock says now */
    uint32_t reserved;
} gf_lease_info;

/* One message in a read batch; the bytes are at buf[pos..pos+key_len+hdr_len+val_len):
 * key, then the encoded headers, then the value. */
typedef struct {
    uint64_t offset;
    int64_t ts_ns;
    uint32_t pos;
    uint32_t key_len;
    uint32_t hdr_len;
    uint32_t val_len;
    uint32_t key_hash;
    uint32_t flags;
    uint32_t partition;   /* index into the rings array of the gf_poller */
    uint32_t reserved;
} gf_msg_meta;

/* A reader's position in one ring, owned by the reader (process-local). */
typedef struct {
    uint64_t pos;          /* next offset to read */
    int64_t stall_since;   /* monotonic ns when pos was first seen unpublished, 0 if not */
    uint64_t lost;         /* messages overwritten before this reader got to them */
    uint64_t abandoned;    /* slots skipped after the bounded wait */
    uint64_t corrupt;      /* slots skipped for a bad checksum or impossible lengths */
    uint32_t expired;      /* 1 if the ring's lease was dead at the last read */
    uint32_t reserved;
    uint64_t stall_tail;   /* ring tail when stall_since was taken: offsets below it were claimed by then */
    uint64_t gaps;         /* offsets passed that hold no message (a multi-slot message's continuation, padding) */
    uint32_t no_verify;    /* 1: do not check slot checksums on read (set by the reader's owner) */
    uint32_t controls;     /* 1: hand transaction markers to the reader too (read_committed) */
} gf_cursor;

typedef struct {
    uint64_t tail;         /* next offset to be claimed */
    uint64_t earliest;     /* oldest offset still in the ring */
    uint64_t lost;         /* offsets overwritten so far: max(0, tail - capacity) */
    uint64_t abandoned;    /* slots marked abandoned */
    uint32_t capacity;
    uint32_t stride;
    int64_t expires_ns;
    uint64_t lease_id;
    uint32_t alive;
    uint32_t reserved;
} gf_ring_state;

/* What `grafos gc` needs to know about a fabric file without attaching to it. */
typedef struct {
    uint64_t size;
    uint64_t leases_live;     /* leases not yet expired */
    uint64_t leases_total;
    int64_t last_expiry_ns;   /* latest expiry among the leases (0 if none) */
    uint32_t in_use;          /* a process has it open (holds its file lock) */
    uint32_t ready;           /* its creator finished it (0: abandoned if not in use) */
    uint32_t lock_pid;        /* pid of the metadata lock's holder (in its PID namespace), 0 if free */
    uint32_t lock_alive;      /* ... and that holder is alive (or the kernel cannot tell) */
    uint32_t removed;         /* it was idle and remove_if_idle removed it */
    uint32_t reserved;
} gf_probe;

const char *gf_last_error(void);
int64_t gf_now_ns(void);

/* Fabric */
gf_fabric *gf_fabric_open(const char *path, uint64_t size, uint32_t mode, uint32_t flags,
                          uint32_t lease_slots, uint32_t meta_slots, int *err);
void gf_fabric_close(gf_fabric *f);
/* Look at the fabric file at `path` without attaching: who holds it, which leases
 * live at now_ns. With remove_if_idle, unlink it (under its file lock) if nobody
 * has it open and no live process holds its metadata lock, and then: 1, if every
 * lease has expired (or it was abandoned before it was ready);
 * GF_PROBE_REMOVE_UNUSED, whatever its leases (a queue's). */
#define GF_PROBE_REMOVE_UNUSED 2
int gf_fabric_probe(const char *path, int64_t now_ns, uint32_t remove_if_idle, gf_probe *out);
int gf_fabric_info_get(gf_fabric *f, gf_fabric_info *out);
void gf_fabric_set_stall(gf_fabric *f, int64_t stall_ns);
/* Durable commits (file fabrics): appends and metadata changes are msync'ed
 * (MS_SYNC) before the call returns. Process-local; off by default. */
int gf_fabric_set_durable(gf_fabric *f, uint32_t on);

/* Metadata lock: robust against a dead holder. */
int gf_lock(gf_fabric *f, int64_t timeout_ns);
int gf_unlock(gf_fabric *f);
int gf_lock_held(gf_fabric *f);
/* Another handle of this process holds the lock for the calling thread: let this
 * handle use it too (the Python layer serialises threads per file). */
int gf_lock_join(gf_fabric *f);
int gf_lock_leave(gf_fabric *f);

/* Leases (mutators need the lock) */
int gf_lease_acquire(gf_fabric *f, uint64_t size, int64_t expires_ns, uint64_t owner_tag,
                     int64_t now_ns, gf_lease_info *out);
int gf_lease_renew(gf_fabric *f, uint32_t index, uint64_t id, int64_t expires_ns, int64_t now_ns);
int gf_lease_release(gf_fabric *f, uint32_t index, uint64_t id);
int gf_lease_get(gf_fabric *f, uint32_t index, uint64_t id, gf_lease_info *out);
/* 1 if alive at now_ns, 0 if dead; seeing it expired makes it dead for good (like a read). */
int gf_lease_check(gf_fabric *f, uint32_t index, uint64_t id, int64_t now_ns);
int gf_lease_list(gf_fabric *f, gf_lease_info *out, uint32_t max, uint32_t *count);
int64_t gf_reap(gf_fabric *f, int64_t now_ns, uint64_t *bytes_out);
int gf_lease_write(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off,
                   const uint8_t *buf, uint64_t len, int64_t now_ns);
int gf_lease_read(gf_fabric *f, uint32_t index, uint64_t id, uint64_t off,
                  uint8_t *buf, uint64_t len, int64_t now_ns);

/* Metadata table (needs the lock) */
int gf_meta_get(gf_fabric *f, const char *key, uint32_t klen, uint8_t *val, uint32_t cap,
                uint32_t *vlen);
int gf_meta_put(gf_fabric *f, const char *key, uint32_t klen, const uint8_t *val, uint32_t vlen);
int gf_meta_del(gf_fabric *f, const char *key, uint32_t klen);
int gf_meta_next(gf_fabric *f, uint32_t *cursor, const char *prefix, uint32_t plen,
                 uint8_t *key, uint32_t *klen, uint8_t *val, uint32_t *vlen);
uint64_t gf_meta_epoch(gf_fabric *f);

/* Rings */
uint64_t gf_ring_region_size(uint32_t capacity, uint32_t stride);
/* checksum: 1 slots carry a CRC32C written with the copy and verified on read,
 * 0 they carry none (fixed for the ring's life, in its header) */
int gf_ring_init(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, uint32_t capacity,
                 uint32_t stride, int64_t now_ns, uint32_t checksum);
gf_ring *gf_ring_open(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, int *err);
void gf_ring_close(gf_ring *r);
int gf_ring_state_get(gf_ring *r, int64_t now_ns, gf_ring_state *out);
uint32_t gf_ring_room(gf_ring *r);
/* the largest key + headers + value one message may have: capacity * stride - 40 */
uint64_t gf_ring_max_message(gf_ring *r);
int gf_ring_checksum(gf_ring *r);
int64_t gf_ring_append(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t has_key,
                       const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                       int64_t ts_ns);
/* count messages in order; out_offsets[i] gets message i's offset (offsets
 * rise with i, with gaps where a message spans several slots, where padding
 * keeps one contiguous, or where its claimed slot gave way to a stalled
 * writer). Returns count. */
int64_t gf_ring_append_batch(gf_ring *r, uint32_t count, const uint8_t *keys,
                             const uint32_t *key_lens, const uint8_t *vals,
                             const uint32_t *val_lens, int64_t ts_ns, uint64_t *out_offsets);
/* What a failed send tells its caller beyond the return code, for the retry:
 * the caller owns it (a stack variable, a cffi allocation), so two threads'
 * or two producers' failures never mix. A send sets full_part when it
 * returns GF_E_FULL_RING (gf_send and gf_send_batch take NULL: not asked); an
 * idempotent send sets unsure on every call (1: it failed after its write, so
 * repeat it with gf_send_idem_again(unsure_part, unsure_seq)). */
typedef struct {
    uint64_t unsure_seq;
    uint32_t unsure_part;
    uint32_t unsure;
    uint32_t full_part;     /* GF_E_FULL_RING: the partition without room */
    uint32_t reserved;
} gf_send_result;

int64_t gf_send(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr,
                const uint8_t *key, uint32_t klen, uint32_t has_key,
                const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                int64_t ts_ns, gf_send_result *res);
int64_t gf_send_batch(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr, uint32_t count,
                      const uint8_t *keys, const uint32_t *key_lens,
                      const uint8_t *vals, const uint32_t *val_lens, int64_t ts_ns,
                      uint32_t *out_parts, uint64_t *out_offsets, gf_send_result *res);
/* A reader's process-local view for gf_poller_poll: its rings and cursors,
 * where the messages go, what it reports back (bytes used in buf, partitions
 * found expired) and what its adaptive spin has learnt. */
typedef struct {
    gf_fabric *f;
    gf_ring **rings;
    gf_cursor *cursors;
    gf_msg_meta *meta;
    uint8_t *buf;
    uint64_t buf_size;
    uint64_t used;
    uint32_t n;
    uint32_t start;
    uint32_t max_batch;
    uint32_t expired;
    int64_t spin_learnt;   /* GF_SPIN_ADAPTIVE: how long the next wait spins before it sleeps, ns */
    /* Where a value of at least GF_DIRECT_MIN bytes is copied instead of buf
     * (NULL: always buf): returns exactly len writable bytes, or NULL for buf,
     * and names them in *token; a kept row carries token + 1 in `reserved`
     * (0: its value is in buf). Called without the GIL. */
    uint8_t *(*value_dest)(void *ctx, uint64_t len, uint32_t *token);
    void *dest_ctx;
} gf_poller;

#define GF_DIRECT_MIN 4096

/* spin_ns for gf_poller_poll: spin before sleeping for as long as recent waits
 * suggest, at most GF_SPIN_MAX_NS, and not at all on a reader that waits long */
#define GF_SPIN_ADAPTIVE -1
#define GF_SPIN_MAX_NS 200000
int64_t gf_poller_poll(gf_poller *p, uint32_t max_msgs, int64_t now_ns, int64_t timeout_ns,
                       int64_t spin_ns);
/* Sleep (futex) until some ring of p has something to read past its cursor:
 * 1, or 0 when timeout_ns passes (< 0: no timeout). Reads nothing, moves no cursor. */
int64_t gf_poller_wait(gf_poller *p, int64_t timeout_ns);

/* A waiter thread for an event loop (process-local): gf_waiter_run serves
 * requests until gf_waiter_stop; each answer is written as an eventfd count to
 * fd, its value (gf_poller_wait's) left in result, its number in done. */
typedef struct {
    gf_poller *p;
    int64_t timeout_ns;
    int64_t result;
    uint32_t req;
    uint32_t done;
    uint32_t stop;
    int32_t fd;
} gf_waiter;

int64_t gf_waiter_run(gf_waiter *w);
uint32_t gf_waiter_request(gf_waiter *w, gf_poller *p, int64_t timeout_ns);
void gf_waiter_stop(gf_waiter *w);

/* An idempotent producer's process-local state (one thread at a time per
 * partition: a send marks its partition's sequence busy while in flight). */
typedef struct {
    void *word;             /* the registration's epoch word in the fabric (gf_idem_bind) */
    uint64_t *seqs;         /* per partition: the next sequence (GF_IDEM_BUSY while a send is in flight) */
    int64_t *last;          /* per partition: offset of the last message written, -1 none */
    uint64_t txn;           /* the open transaction, 0: none */
    int64_t renew_at_ns;    /* wall clock from which sends go to the slow path to renew the registration */
    uint32_t producer;
    uint32_t epoch;
    uint32_t n;             /* partitions: the length of seqs and last */
    uint32_t reserved;
} gf_idem;

/* A producer's process-local view of a topic: the hot path's one argument. */
typedef struct {
    gf_ring **rings;
    uint32_t n;
    uint32_t mode;
    uint64_t rr;
    gf_idem *idem;          /* NULL: a plain producer */
} gf_sender;

/* Back-pressure (gate.c): the per-ring gate and the wait for room. */
typedef struct {
    uint64_t gate;          /* 0: ungated; else offsets below it may be claimed */
    uint64_t tail;
    uint64_t blocked_ns;    /* total time producers waited for room */
    uint64_t full_raised;   /* sends refused for want of room */
    uint32_t blocked;       /* live producers waiting for room now, as the ring records them:
                             * at most GF_RING_WAITERS, which means at least that many */
    uint32_t on_full;       /* GF_FULL_* */
    uint32_t capacity;
    uint32_t reserved;
} gf_gate_state;

int gf_ring_set_on_full(gf_ring *r, uint32_t on_full);
int gf_ring_set_gate(gf_ring *r, uint64_t gate);
int gf_ring_gate_get(gf_ring *r, gf_gate_state *out);
/* Under the fabric lock: if the metadata epoch is still `epoch`, put a gating
 * reader's record and store the ring's gate from `low`, the lowest live
 * position of the caller's copy of the records (GF_GATE_NOBODY: none); the
 * epoch after it in *epoch_out. GF_STALE: the epoch moved, nothing done. */
#define GF_GATE_NOBODY 0xFFFFFFFFFFFFFFFF
int gf_gate_publish(gf_ring *r, uint64_t epoch, const char *key, uint32_t klen, const uint8_t *val,
                    uint32_t vlen, uint64_t low, uint64_t *epoch_out);
/* gf_gate_publish with the metadata lock taken (waiting up to lock_timeout_ns,
 * as gf_lock) and given back around it, for a process that does not hold it:
 * one call instead of three, each of which lets another thread take the GIL.
 * *recovered: the lock was taken over from a dead holder. */
int gf_gate_publish_locking(gf_ring *r, int64_t lock_timeout_ns, uint64_t epoch, const char *key,
                            uint32_t klen, const uint8_t *val, uint32_t vlen, uint64_t low,
                            uint64_t *epoch_out, int *recovered);
/* Sleep on the ring's gate futex until `count` offsets fit below the gate, or
 * timeout_ns (>= 0) passes: GF_OK, or GF_E_FULL_RING. Adds the time waited to
 * blocked_ns. Call without the GIL in slices (cffi releases it). */
int gf_ring_wait_room(gf_ring *r, uint64_t count, int64_t timeout_ns);
void gf_ring_note_full(gf_ring *r);

/* The table of per-message entry points for the CPython crossing (crossing.h). */
typedef struct gf_crossing gf_crossing;
const gf_crossing *gf_crossing_table(void);

/* The partition gf_send would pick (advances the round-robin counter). */
uint32_t gf_sender_pick(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key);

/* Idempotent producers (producer.c, send.c). A registration is a small lease
 * holding the producer's number and its current epoch; a send whose epoch is
 * not the word's is fenced. init and fence need the metadata lock. */
int gf_producer_init(gf_fabric *f, uint32_t index, uint64_t id, uint32_t number, uint32_t epoch);
int gf_producer_fence(gf_fabric *f, uint32_t index, uint64_t id, uint32_t epoch);
int64_t gf_producer_epoch(gf_fabric *f, uint32_t index, uint64_t id);
int gf_idem_bind(gf_fabric *f, gf_idem *d, uint32_t index, uint64_t id);
/* One idempotent send: like gf_send, stamped, checked against the epoch; the
 * sequence moves on only once the message is written. */
int64_t gf_send_idem(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key,
                     const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                     gf_send_result *res);
/* The same message again, after an attempt whose outcome is unknown (the call
 * failed after the write, or never returned): to the same partition, with the
 * same sequence. If that sequence landed, its original (partition << GF_OFFSET_BITS |
 * offset) comes back and nothing is written. */
int64_t gf_send_idem_again(gf_sender *s, uint32_t part, uint64_t seq, const uint8_t *key, uint32_t klen,
                           uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                           const uint8_t *val, uint32_t vlen, gf_send_result *res);
/* One stamped message with the given flags (markers, and sends outside the idempotent path) */
int64_t gf_ring_append_stamped(gf_ring *r, uint32_t flags, const gf_stamp *st, const uint8_t *key,
                               uint32_t klen, uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                               const uint8_t *val, uint32_t vlen, int64_t ts_ns);

/* Zero-copy writes: a loan claims and takes the slots of a message of `vlen`
 * value bytes, writes its key and headers, and points `value` at the rest. The
 * caller fills it and commits (publish) or abandons (readers skip it at once).
 * A loan held past the fabric's bounded wait is abandoned by readers: commit
 * then fails with GF_E_ABANDONED. */
typedef struct {
    gf_ring *ring;
    uint64_t offset;       /* the message's offset */
    uint64_t first;        /* first offset claimed (padding before `offset`) */
    uint64_t span;         /* slots */
    uint64_t total;        /* key + headers + value bytes */
    uint8_t *value;        /* where the value's bytes go */
    uint32_t state;        /* 0 open, 1 committed, 2 abandoned */
    uint32_t reserved;
} gf_loan;
int gf_loan_begin(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t has_key,
                  const uint8_t *hdrs, uint32_t hlen, uint32_t vlen, int64_t ts_ns, gf_loan *out);
/* 1 while the ring's lease is alive (its region is surely this ring's), else 0. */
int gf_ring_alive(const gf_ring *r);
/* GF_OK while the loan is open and its partition's lease alive: its bytes are
 * still the caller's to write. */
int gf_loan_check(const gf_loan *l);
int64_t gf_loan_commit(gf_loan *l);
int gf_loan_abandon(gf_loan *l);

/* Zero-copy reads: like gf_poller_poll on one ring without waiting, but each meta
 * row's `pos` is the slot index the message's bytes start in (see
 * gf_ring_slot_data); nothing is copied. gf_ring_intact_many says afterwards
 * which of the messages were left alone by writers. */
int64_t gf_ring_peek(gf_ring *r, gf_cursor *c, uint32_t max, gf_msg_meta *meta, int64_t now_ns);
uint8_t *gf_ring_slot_data(gf_ring *r, uint32_t index);
/* For n offsets read in place: intact[i] 1 if the message at offsets[i] was left
 * alone by writers (and its region is still the ring's), else 0; returns how many are not */
uint32_t gf_ring_intact_many(gf_ring *r, const uint64_t *offsets, uint32_t n, uint8_t *intact);

/* Hashing */
uint32_t gf_murmur2(const uint8_t *data, uint32_t len);
int32_t gf_kafka_partition(const uint8_t *key, uint32_t len, uint32_t num_partitions);
uint32_t gf_crc32c(uint32_t crc, const uint8_t *data, uint64_t len);
/* gf_crc32c over src while copying it to dst: one pass over the bytes */
uint32_t gf_copy_crc(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t crc);
/* memcpy for payloads, without glibc's `rep movsb` slow case (hash.c) */
void gf_copy(uint8_t *dst, const uint8_t *src, uint64_t len);
/* gf_copy and gf_copy_crc with streaming stores where they pay (hash.c says
 * when), fenced before they return: for a ring larger than the caches */
void gf_copy_stream(uint8_t *dst, const uint8_t *src, uint64_t len);
uint32_t gf_copy_crc_stream(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t crc);
void gf_memcpy_bench(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t reps);

/* A multi-producer, multi-consumer queue over one ring (queue.c): the process-
 * local handle, its state block in a lease of its own. */
typedef struct {
    gf_fabric *f;
    gf_ring *ring;
    void *state;
    uint64_t maxsize;
    uint64_t capacity;
    uint32_t flags;           /* 1: joinable (put counts an unfinished task) */
    uint32_t reserved;
    int64_t spin_learnt;      /* how long a get spins before it sleeps (gf_poller's adaptive spin) */
    /* a get's bounded wait on an unfinished slot, kept across its looks (a get waits in slices) */
    uint64_t stall_pos;
    uint64_t stall_tail;
    int64_t stall_since;
} gf_queue;

typedef struct {
    uint64_t pos;
    uint64_t len;             /* GF_E_BUFFER: the buffer size the item needs */
} gf_queue_item;

uint64_t gf_queue_state_size(void);
int gf_queue_init(gf_fabric *f, uint32_t index, uint64_t id, gf_ring *ring, uint64_t maxsize,
                  uint32_t flags);
int gf_queue_open(gf_fabric *f, uint32_t index, uint64_t id, gf_ring *ring, gf_queue *out);
int64_t gf_queue_put(gf_queue *q, uint32_t n, uint8_t **bufs, const uint64_t *lens, int64_t timeout_ns);
int64_t gf_queue_put1(gf_queue *q, const uint8_t *buf, uint64_t len, int64_t timeout_ns);
int64_t gf_queue_get(gf_queue *q, uint8_t *buf, uint64_t buf_size, int64_t timeout_ns, gf_queue_item *out);
uint64_t gf_queue_size(gf_queue *q);
int64_t gf_queue_task_done(gf_queue *q);
int gf_queue_join(gf_queue *q, int64_t timeout_ns);

/* Share groups (share.c): the per-record state of one (group, partition) in a
 * lease of its own (layout.h). Acquire and settle are one call per batch and
 * take no lock a dead process could leave held. */
typedef struct gf_share gf_share;

/* One acquired record. `word` is the state word this acquisition holds: settle
 * names it, and refuses it once the lock is lost. */
typedef struct {
    uint64_t offset;
    uint64_t word;
    int64_t deadline_ns;    /* the lock's end */
    uint32_t count;         /* deliveries, this one included */
    uint32_t flags;         /* GF_SHARE_DEAD: at the delivery limit: dead-letter it, do not process */
    uint32_t last_member;   /* the token of the member that held it before (0: none) */
    uint32_t reserved;
} gf_share_row;
#define GF_SHARE_DEAD 1

/* settle ops */
#define GF_SHARE_ACK     1   /* processed: never delivered again */
#define GF_SHARE_RELEASE 2   /* available again at once, count kept */
#define GF_SHARE_REJECT  3   /* archived: never delivered again */
#define GF_SHARE_ARCHIVE 4   /* archived at the delivery limit (dead-lettered) */
#define GF_SHARE_RENEW   5   /* the lock runs for the group's lock time from now */

typedef struct {
    uint64_t floor;
    uint64_t next;
    uint64_t tail;          /* the ring's */
    uint64_t in_flight;     /* locked now */
    uint64_t available;     /* may be acquired now (released, expired, never handed out) */
    uint64_t finished;      /* acked or archived, still in the window */
    uint64_t delivered, redelivered, acked, released, rejected, dead, lost, expired_locks;
    int64_t oldest_lock_ns; /* acquisition time of the oldest lock held now (0: none) */
    int64_t lock_ns;
    uint32_t max_deliveries;
    uint32_t members;
    uint32_t capacity;
    uint32_t alive;         /* the region's lease */
} gf_share_state;

uint64_t gf_share_region_size(uint32_t capacity);
/* Format a fresh region (needs the metadata lock) for ring r, starting at `start`. */
int gf_share_init(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, gf_ring *r, int64_t lock_ns,
                  uint32_t max_deliveries, uint64_t start, int64_t now_ns);
gf_share *gf_share_open(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, gf_ring *r, int *err);
void gf_share_close(gf_share *s);
/* A member token (> 0) for a new member; its name is kept for provenance. */
int64_t gf_share_join(gf_share *s, uint32_t pid, const uint8_t *name, uint32_t nlen);
/* The name of member `token`, if still known: its length, 0 if not. */
int gf_share_member_name(gf_share *s, uint32_t token, uint8_t *out, uint32_t cap);
/* Lock up to `max` records for `member` until now + the lock time: first those
 * released or whose lock expired, then new ones from the ring. Each record's
 * bytes are copied to buf as gf_poller_poll does (meta[i] for rows[i], partition `part`);
 * records at the delivery limit come back flagged GF_SHARE_DEAD. */
int64_t gf_share_acquire(gf_share *s, uint32_t member, uint32_t max, int64_t now_ns, uint32_t part,
                         gf_share_row *rows, gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size);
/* Apply `op` to n held records (offsets[i], words[i]): ok[i] = 1 if applied, 0
 * if the lock was lost (expired, or the record taken by another member or the
 * ring). Returns how many were applied. */
int64_t gf_share_settle(gf_share *s, uint32_t op, const uint64_t *offsets, const uint64_t *words,
                        uint32_t n, int64_t now_ns, uint8_t *ok);
int gf_share_state_get(gf_share *s, int64_t now_ns, gf_share_state *out);
/* The lowest unfinished offset (the gate position of the group). */
uint64_t gf_share_floor(gf_share *s);

/* cdef-end */

#endif
