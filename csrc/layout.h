/* layout.h -- everything that lives in the shared mapping, and nothing else.
 *
 * A fabric is one mapping:
 *
 *   0            4096                 lease_off + 64*L      meta_off + 256*M        total_size
 *   | fabric hdr | lease table (L x 64 B) | metadata table (M x 256 B) | data area (leased regions) |
 *
 * Every field here may have been written by another process, a bug or a damaged
 * file. Readers copy what they need into process-local structs after checking it
 * against the mapping; the data path never re-reads a size from shared memory.
 */
#ifndef GRAFOS_LAYOUT_H
#define GRAFOS_LAYOUT_H
#include <stdint.h>
#include <stddef.h>
#include "gf_atomics.h"

#define GF_MAGIC          0x314f4641524721ULL  /* "!GRAFO1\0" little-endian */
#define GF_LAYOUT_VERSION 4u
#define GF_READY          0x52454459u          /* "YDER": written last at creation */
#define GF_HDR_SIZE       4096u
#define GF_PAGE           4096u
#define GF_LINE           64u

/* ---- fabric header ---------------------------------------------------- */
struct gf_fabric_hdr {
    /* line 0: identity, immutable after creation, covered by hdr_crc */
    uint64_t magic;            /*  0 */
    uint32_t version;          /*  8 */
    uint32_t hdr_size;         /* 12 */
    uint64_t total_size;       /* 16 */
    uint64_t lease_off;        /* 24 */
    uint32_t lease_slots;      /* 32 */
    uint32_t meta_slots;       /* 36 */
    uint64_t meta_off;         /* 40 */
    uint64_t data_off;         /* 48 */
    uint32_t hdr_crc;          /* 56: crc32c of bytes [0, 56) */
    _Atomic uint32_t ready;    /* 60: GF_READY, stored with release after all else */
    /* line 1: the metadata lock. The holder's owner token (below), 0 when free.
     * lock_pid and lock_pidns say who that is, for messages only: they are
     * written after the lock is taken and never decide anything. */
    _Atomic uint32_t lock;     /* 64 */
    _Atomic uint32_t lock_pid; /* 68: the holder's pid, as its own PID namespace numbers it */
    _Atomic uint64_t lock_recoveries;  /* 72 */
    _Atomic uint64_t lock_pidns;       /* 80: inode of the holder's /proc/self/ns/pid */
    uint8_t pad1b[GF_LINE - 24];
    /* line 2: counters changed under the lock */
    uint64_t next_lease_id;    /* 128 */
    _Atomic uint64_t meta_epoch;  /* 136: bumped by every metadata change */
    uint8_t pad2[GF_LINE - 16];
    /* line 3: wake-ups. Consumers that sleep bump `waiters`; producers look at it
     * (one shared-line load) and only then pay for a futex wake. A sleeper killed
     * in its sleep never takes its count back, so a sleeper also raises
     * `wait_until` (monotonic ns) to the end of its sleep, and producers wake only
     * while that time has not passed: a dead sleeper costs them at most one
     * 50 ms sleep's worth of wake-ups, not one syscall per append forever.
     * `armed` makes it one wake per sleep rather than one per append: a sleeper
     * sets it before its last look, the producer that clears it pays the wake. */
    _Atomic uint32_t wake;     /* 192 */
    _Atomic uint32_t waiters;  /* 196 */
    _Atomic int64_t wait_until;  /* 200 */
    _Atomic uint32_t armed;    /* 208 */
    uint8_t pad3[GF_LINE - 20];
};
_Static_assert(offsetof(struct gf_fabric_hdr, hdr_crc) == 56, "hdr_crc");
_Static_assert(offsetof(struct gf_fabric_hdr, lock) == 64, "lock line");
_Static_assert(offsetof(struct gf_fabric_hdr, lock_pidns) == 80, "lock pidns");
_Static_assert(offsetof(struct gf_fabric_hdr, next_lease_id) == 128, "counter line");
_Static_assert(offsetof(struct gf_fabric_hdr, wake) == 192, "wake line");
_Static_assert(offsetof(struct gf_fabric_hdr, wait_until) == 200, "wait_until");
_Static_assert(offsetof(struct gf_fabric_hdr, armed) == 208, "armed");
_Static_assert(sizeof(struct gf_fabric_hdr) == 256, "fabric hdr");

/* ---- lease table entry --------------------------------------------------
 * id == 0 means free. A lease is alive while expires_ns > now and dead_tag != (uint32_t)id; readers test
 * that without the lock, so the pair (id, expires_ns) is what they trust,
 * and ids are never reused within a fabric (ABA-free). */
struct gf_lease {
    _Atomic int64_t expires_ns; /*  0 */
    _Atomic uint64_t id;        /*  8 */
    uint64_t offset;            /* 16: from the fabric base, page aligned */
    uint64_t size;              /* 24: page multiple */
    uint64_t owner_tag;         /* 32 */
    int64_t created_ns;         /* 40 */
    uint32_t generation;        /* 48: times this entry was reused */
    /* 52: low 32 bits of the id of a lease that someone saw expired. Expiry is
     * decided once, by the first read, append, renewal or reap that sees
     * expires_ns <= now; from then on the lease is dead whatever a later clock
     * reading says (a clock stepped back never resurrects it). Tagged with the
     * id, so a late store by a slow observer cannot kill the entry's next tenant. */
    _Atomic uint32_t dead_tag;
    /* 56: who may write into the region outside the slot protocol (a reader
     * marking a dead writer's slot abandoned, a MemLease.write): 0 nobody, else
     * the owner token of the handle doing it, GF_PIN_CLOSED once reclaim has begun.
     * A pin is taken by CAS from 0 and then the id checked, and reclaim takes
     * the word by CAS from 0 (or from a dead owner) before it frees the region,
     * so nobody writes into a region after it has been handed to another lease. */
    _Atomic uint32_t pin;
    uint32_t pad2;
};
#define GF_PIN_CLOSED 0xFFFFFFFFu
_Static_assert(offsetof(struct gf_lease, pin) == 56, "lease pin");
_Static_assert(sizeof(struct gf_lease) == 64, "lease entry");

/* ---- owners ---------------------------------------------------------------
 * Whatever a word in the mapping says is held (the metadata lock, a lease's
 * pin) names its holder by an owner token: a number in [1, 2^31) that one open
 * handle chose at random and that it keeps an OFD write lock on, byte
 * GF_OWNER_LOCK_BASE + token of the fabric's file, for the handle's life. The
 * kernel lets that lock go when the handle's file is closed, whoever closes it
 * (exit, SIGKILL), so "is the owner alive" is a question the kernel answers
 * (F_OFD_GETLK) the same way in every PID namespace that shares the file, and a
 * reused PID never answers it. The range lies past any fabric's end. */
#define GF_OWNER_LOCK_BASE (1ULL << 48)
#define GF_OWNER_TOKEN_MASK 0x7FFFFFFFu

/* ---- metadata table entry ----------------------------------------------
 * Open addressing on hash(key), linear probing, tombstones. Small values
 * only (topic configs, lease refs, group claims, offsets). */
#define GF_META_EMPTY 0u
#define GF_META_USED  1u
#define GF_META_TOMB  2u
#define GF_META_KEY_MAX 96
#define GF_META_VAL_MAX 144
struct gf_meta_entry {
    uint32_t state;             /*  0 */
    uint32_t hash;              /*  4 */
    uint16_t key_len;           /*  8 */
    uint16_t val_len;           /* 10 */
    uint32_t crc;               /* 12: crc32c of key and value */
    uint8_t key[GF_META_KEY_MAX];   /* 16 */
    uint8_t val[GF_META_VAL_MAX];   /* 112 */
};
_Static_assert(offsetof(struct gf_meta_entry, key) == 16, "meta key");
_Static_assert(sizeof(struct gf_meta_entry) == 256, "meta entry");

/* ---- partition ring ------------------------------------------------------
 * A ring is a lease region: a 256-byte header, `capacity` slots of `stride`
 * bytes, then `capacity` 8-byte sequence words (seq[i] belongs to slot i).
 * Offset n lives in slot n % capacity.
 *
 *   | ring hdr (256) | slot 0 | slot 1 | ... | slot cap-1 | seq 0 | seq 1 | ... | seq cap-1 |
 *
 * The sequence words live apart from the slots so that a message larger than a
 * slot can run on, contiguous, through the following slots (one memcpy in, one
 * view out) while every offset keeps a publication word no payload can forge. */
#define GF_RING_MAGIC 0x474e495246475221ULL  /* "!RGFRING" */
#define GF_RING_HDR_SIZE 256u
#define GF_RING_WAITERS 8u      /* waiters a ring records by owner (the rest of line 2) */
struct gf_ring_hdr {
    /* line 0: immutable after init */
    uint64_t magic;             /*  0 */
    uint64_t lease_id;          /*  8: the lease this ring was formatted for */
    uint32_t capacity;          /* 16 */
    uint32_t stride;            /* 20 */
    int64_t created_ns;         /* 24 */
    uint32_t crc;               /* 32: crc32c of bytes [0, 32), then of flags if nonzero */
    uint32_t flags;             /* 36: GF_RING_* (0: slots carry checksums) */
    uint8_t pad0[GF_LINE - 40];
    /* line 1: producers' claim cursor, alone on its line */
    _Atomic uint64_t tail;      /* 64 */
    uint8_t pad1[GF_LINE - 8];
    /* line 2: rarely written: counters, and the producers waiting for room */
    _Atomic uint64_t abandoned; /* 128 */
    /* back-pressure counters, written only by producers that found no room */
    _Atomic uint64_t blocked_ns;   /* 136: total time producers spent waiting for room */
    _Atomic uint64_t full_raised;  /* 144: sends refused for want of room (BufferFull) */
    _Atomic uint32_t blocked;      /* 152: producers waiting for room now, for gate setters to
                                    * decide whether to wake (a killed one never takes its count
                                    * back: it costs them a spurious wake, and is never reported) */
    uint32_t pad2a;
    /* 160: who waits for room: each waiter's owner token ("owners" above), 0 for a
     * free entry. A waiter takes a free entry (or one whose owner is dead) by CAS
     * and clears it when it stops waiting; what the ring reports as blocked is the
     * entries whose owner is alive, so a killed waiter drops out of the count. A
     * waiter that finds every entry held by a live one waits unrecorded: a count
     * of GF_RING_WAITERS means at least that many. */
    _Atomic uint32_t waiter_tokens[GF_RING_WAITERS];
    /* line 3: the gate, read by every append, written when a gating reader
     * commits. gate == 0: nobody gates this ring (the oldest slot is
     * overwritten). Otherwise producers may claim offsets below gate only:
     * gate = the lowest position of the live gating readers + capacity.
     * gate_wake is the futex producers without room sleep on. */
    _Atomic uint64_t gate;         /* 192 */
    _Atomic uint32_t gate_wake;    /* 200 */
    uint32_t on_full;              /* 204: GF_FULL_*, set once at creation (the topic's policy) */
    uint8_t pad3[GF_LINE - 16];
};
#define GF_RING_NO_CRC 1u       /* slots carry no checksum: writers only copy, readers do not verify */
_Static_assert(offsetof(struct gf_ring_hdr, flags) == 36, "ring flags");
_Static_assert(offsetof(struct gf_ring_hdr, tail) == 64, "tail line");
_Static_assert(offsetof(struct gf_ring_hdr, abandoned) == 128, "counter line");
_Static_assert(offsetof(struct gf_ring_hdr, blocked) == 152, "blocked");
_Static_assert(offsetof(struct gf_ring_hdr, waiter_tokens) == 160, "waiter tokens");
_Static_assert(offsetof(struct gf_ring_hdr, gate) == 192, "gate line");
_Static_assert(offsetof(struct gf_ring_hdr, on_full) == 204, "on_full");
_Static_assert(sizeof(struct gf_ring_hdr) == GF_RING_HDR_SIZE, "ring hdr");

/* ---- sequence words ------------------------------------------------------
 * seq[n % capacity] is offset n's publication word (per slot, as in the
 * Disruptor: there is no shared "published" cursor a dead producer could wedge):
 *   0                  never written
 *   2n + 1             offset n is being written (| GAP: as a continuation or padding)
 *   2n + 2             offset n is published: a message starts in its slot
 *   2n + 2 | GAP       offset n holds no message: it continues the message of an
 *                      earlier offset, or pads the ring's end so that a message
 *                      which would straddle it starts at slot 0 instead
 *   bit 63 set         offset n was abandoned by its writer; readers skip it
 *   2m + 1 | ABANDONED | s << 49
 *                      the writer of offset m was stepped over (readers skip m)
 *                      but may still be copying into the slot: the slot stays
 *                      its own, and the offsets m + k * capacity for 1 <= k <= s
 *                      (every k once s is GF_SEQ_SKIP_MAX) gave way to it and
 *                      hold nothing. The writer leaves by storing the last of
 *                      them as a gap; only then does a later lap take the slot.
 * A message's offset is below GF_MAX_OFFSET (2^48 - 1: the largest tail), so
 * 2n + 2 < 2^49 and bits 49 to 63 are free. */
#define GF_SEQ_ABANDONED (1ULL << 63)
#define GF_SEQ_GAP       (1ULL << 62)
#define GF_SEQ_FLAGS     (GF_SEQ_ABANDONED | GF_SEQ_GAP)
#define GF_SEQ_SKIP_SHIFT 49
#define GF_SEQ_SKIP_MAX  0x1FFFULL
#define GF_SEQ_VALUE     ((1ULL << GF_SEQ_SKIP_SHIFT) - 1)
_Static_assert(GF_MAX_OFFSET == (1ULL << GF_OFFSET_BITS) - 1, "the largest offset");
_Static_assert(2 * (GF_MAX_OFFSET - 1) + 2 <= GF_SEQ_VALUE, "the last message's word stays below the skip count");

/* ---- slot ----------------------------------------------------------------
 *
 *   0               8               16      20      24      28      32      36      40
 *   +---------------+---------------+-------+-------+-------+-------+-------+-------+--- - -
 *   | owner         | ts_ns         |key_len|val_len|hdr_len|keyhash| flags | crc   | key | headers | value
 *   +---------------+---------------+-------+-------+-------+-------+-------+-------+--- - -
 *
 * A message of key + headers + value bytes needs span = ceil((40 + bytes) /
 * stride) slots; the slots after the first carry no header, only the rest of
 * the payload, and their offsets are GAPs. A span never wraps past the ring's
 * end (the writer pads to it), so a message is one contiguous range.
 * `owner` is token << 32 | (n & (2^32 - 1)): the owner token ("owners"
 * above) of the handle that writes the message, stored with the header (0:
 * none, cannot tell): a later lap that finds the
 * slot still being written tells a paused writer (alive: the slot stays its
 * own) from a dead one (the slot is free). Readers never use it, so it is not
 * summed. crc is crc32c over the offset n, bytes
 * [8, 36) and the payload, so a slot that holds another offset's bytes, or a
 * torn write, never passes. In a ring flagged GF_RING_NO_CRC it is 0 and
 * unchecked: the sequence words alone guard publication. */
#define GF_SLOT_HDR_SIZE 40u
struct gf_slot {
    uint64_t owner;             /*  0 */
    int64_t ts_ns;              /*  8 */
    uint32_t key_len;           /* 16 */
    uint32_t val_len;           /* 20 */
    uint32_t hdr_len;           /* 24 */
    uint32_t key_hash;          /* 28 */
    uint32_t flags;             /* 32 */
    uint32_t crc;               /* 36 */
};
_Static_assert(offsetof(struct gf_slot, crc) == 36, "slot crc");
_Static_assert(sizeof(struct gf_slot) == GF_SLOT_HDR_SIZE, "slot hdr");

/* ---- producer registration ---------------------------------------------------
 * An idempotent producer's registration is a lease of its own (a dead producer's
 * registration expires like everything else). Its region starts with this
 * header; `epoch` is the one word every send of the producer loads: a new
 * instance with the same transactional id raises it (under the metadata lock)
 * and the old instance's next send sees it differ and writes nothing. */
#define GF_PRODUCER_MAGIC 0x444f525046524721ULL  /* "!GRFPROD" */
struct gf_producer_hdr {
    uint64_t magic;             /*  0 */
    uint64_t lease_id;          /*  8: the lease this header was written for */
    uint32_t number;            /* 16: the registration's number, in every stamp */
    uint32_t pad0;
    uint8_t pad0b[GF_LINE - 24];
    _Atomic uint32_t epoch;     /* 64: the current epoch, alone on its line */
    uint8_t pad1[GF_LINE - 4];
};
_Static_assert(offsetof(struct gf_producer_hdr, epoch) == 64, "epoch line");
_Static_assert(sizeof(struct gf_producer_hdr) == 128, "producer hdr");

/* gf_idem.seqs[p]: bit 63 marks a send to partition p in flight */
#define GF_IDEM_BUSY (1ULL << 63)

/* ---- share group state ---------------------------------------------------------
 * A share group (many members per partition, a lock and a delivery count per
 * record) keeps the state of one partition's records in a lease of its own:
 *
 *   | share hdr (512) | entry 0 | entry 1 | ... | entry cap-1 |      (16 B each)
 *
 * Offset n's state lives in entry n % capacity (the ring's capacity) while n is
 * in the window [floor, next): every offset below `floor` is finished (acked,
 * archived, or lost to the ring), every offset at or past `next` was never
 * handed out. The window never spans more than the ring, so an entry has one
 * tenant at a time; on "block"/"raise" topics the group gates producers at
 * floor + capacity, on "overwrite" topics a lap past an unfinished record moves
 * the floor past it and counts it lost.
 *
 * Entry word `a` (changed by compare-and-swap only, never under the metadata lock):
 *   bits  0-1   state: GF_SH_AVAIL, GF_SH_ACQUIRED, GF_SH_ACKED, GF_SH_ARCHIVED
 *   bits  2-9   deliveries so far (saturating at 255)
 *   bits 10-25  the member token of the last holder
 *   bits 26-63  lap: n / capacity + 1 (truncated), so a word left by an earlier
 *               tenant of the entry (or a fresh zero word) never reads as n's.
 * An entry in the window whose lap is not n's is one its claimer has not yet
 * written (or never will: it died): anyone may take it, from the ring.
 * Entry word `b`: the lock's deadline, (deadline_ms << 16) | tag, where tag is
 * the low byte of the lap and the delivery count of the acquisition it belongs
 * to. An acquirer writes it after winning `a`; a reader that finds a tag from
 * another acquisition (the acquirer is between its two stores, or died there)
 * writes now + the group's lock time itself, so no record is locked forever. */
#define GF_SHARE_MAGIC 0x4552414853475221ULL  /* "!RGSHARE" */
#define GF_SHARE_HDR_SIZE 512u
#define GF_SHARE_MEMBERS 64u        /* member names kept for provenance (by token % 64) */
#define GF_SH_AVAIL    0u
#define GF_SH_ACQUIRED 1u
#define GF_SH_ACKED    2u
#define GF_SH_ARCHIVED 3u
struct gf_share_member {
    _Atomic uint32_t token;     /* 0: empty; stored last */
    uint32_t pid;
    uint8_t name[56];
};
_Static_assert(sizeof(struct gf_share_member) == 64, "share member");
struct gf_share_hdr {
    /* line 0: immutable after init */
    uint64_t magic;             /*  0 */
    uint64_t lease_id;          /*  8: the lease this region was formatted for */
    uint64_t ring_lease_id;     /* 16: the partition incarnation it tracks */
    uint32_t capacity;          /* 24: the ring's */
    uint32_t max_deliveries;    /* 28 */
    int64_t lock_ns;            /* 32 */
    int64_t created_ns;         /* 40 */
    uint32_t crc;               /* 48: crc32c of bytes [0, 48) */
    uint32_t pad0;
    uint8_t pad0b[GF_LINE - 56];
    _Atomic uint64_t floor;     /* 64: every offset below is finished */
    uint8_t pad1[GF_LINE - 8];
    _Atomic uint64_t next;      /* 128: the first offset never handed out */
    uint8_t pad2[GF_LINE - 8];
    /* line 3: counters, changed with atomics by whoever makes the change */
    _Atomic uint64_t delivered;     /* 192: acquisitions handed to members */
    _Atomic uint64_t redelivered;   /* 200: ... of which were not the first */
    _Atomic uint64_t acked;         /* 208 */
    _Atomic uint64_t released;      /* 216 */
    _Atomic uint64_t rejected;      /* 224 */
    _Atomic uint64_t dead;          /* 232: archived at the delivery limit */
    _Atomic uint64_t lost;          /* 240: unfinished offsets the ring overwrote */
    _Atomic uint64_t expired_locks; /* 248: locks found expired and taken again */
    _Atomic uint32_t members;       /* 256: tokens handed out */
    uint8_t pad4[GF_LINE - 4];
    uint8_t pad5[GF_SHARE_HDR_SIZE - 320];
};
_Static_assert(offsetof(struct gf_share_hdr, crc) == 48, "share crc");
_Static_assert(offsetof(struct gf_share_hdr, floor) == 64, "share floor line");
_Static_assert(offsetof(struct gf_share_hdr, next) == 128, "share next line");
_Static_assert(offsetof(struct gf_share_hdr, delivered) == 192, "share counters");
_Static_assert(offsetof(struct gf_share_hdr, members) == 256, "share members");
_Static_assert(sizeof(struct gf_share_hdr) == GF_SHARE_HDR_SIZE, "share hdr");
struct gf_share_entry {
    _Atomic uint64_t a;         /* 0: state word */
    _Atomic uint64_t b;         /* 8: lock deadline and tag */
};
_Static_assert(sizeof(struct gf_share_entry) == 16, "share entry");
/* region: header, member names, entries */
#define GF_SHARE_ENTRIES_OFF (GF_SHARE_HDR_SIZE + GF_SHARE_MEMBERS * 64u)

#endif
