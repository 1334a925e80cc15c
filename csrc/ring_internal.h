/* ring_internal.h -- what the ring's files share, never part of grafos.h:
 * where offset n's slot, sequence word and owner word are, the words of a
 * writer that was stepped over, and the out-of-line entry points of the write
 * path (ring_write.c), the wait (wait.c) and the back-pressure note (gate.c).
 * Everything here is process-local code over the layout in layout.h. */
#ifndef GRAFOS_RING_INTERNAL_H
#define GRAFOS_RING_INTERNAL_H
#include "core.h"

#define MAX_STRIDE   (16u << 20)
#define MAX_CAPACITY (1u << 30)

static inline void cpu_relax(void)
{
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t slot_index(const gf_ring *r, uint64_t n)
{
    /* a mask where the capacity allows: a 64-bit division costs ~10 ns per slot */
    return r->mask ? (n & r->mask) : n % r->capacity;
}

static inline struct gf_slot *slot_at(const gf_ring *r, uint64_t n)
{
    return (struct gf_slot *)(r->slots + slot_index(r, n) * (uint64_t)r->stride);
}

static inline _Atomic uint64_t *seq_at(const gf_ring *r, uint64_t n)
{
    return &r->seqs[slot_index(r, n)];
}

/* ---- a slot whose writer was stepped over ---------------------------------------
 * A writer paused mid-copy (SIGSTOP, a debugger, a frozen cgroup, swap) is
 * stepped over by readers after the bounded wait, but it may resume and copy on
 * at any time, so its slot is never handed to another writer while its word
 * says it is in (an odd value). Later laps that reach the slot give way instead:
 * their offsets are recorded in the word as skipped (layout.h), readers step
 * over them, and their writers claim again. */

static inline uint64_t seq_skips(uint64_t w) { return (w >> GF_SEQ_SKIP_SHIFT) & GF_SEQ_SKIP_MAX; }

/* 1 if w is a stepped-over writer's word that already says offset n gave way */
static inline int seq_skipped(const gf_ring *r, uint64_t n, uint64_t w)
{
    uint64_t v = w & GF_SEQ_VALUE, m = v >> 1, s = seq_skips(w);
    if (!(v & 1) || !(w & GF_SEQ_ABANDONED) || m >= n || (n - m) % r->capacity)
        return 0;
    return s == GF_SEQ_SKIP_MAX || (n - m) / r->capacity <= s;
}

/* The word that makes offset n skipped, from the slot's word w (a value below
 * n's publication): a slot a writer may still be copying into stays that
 * writer's, flagged abandoned, with n's lap among those that gave way;
 * otherwise n's own word, abandoned. */
static inline uint64_t seq_skip_word(const gf_ring *r, uint64_t n, uint64_t w)
{
    uint64_t v = w & GF_SEQ_VALUE, m = v >> 1;
    if (!(v & 1) || m > n || (n - m) % r->capacity)     /* nobody in it (or a damaged word) */
        return (2 * n + 2) | GF_SEQ_ABANDONED;
    uint64_t k = (n - m) / r->capacity, s = seq_skips(w);
    if (k > GF_SEQ_SKIP_MAX)
        k = GF_SEQ_SKIP_MAX;
    if (k < s)
        k = s;
    return (w & GF_SEQ_GAP) | v | GF_SEQ_ABANDONED | (k << GF_SEQ_SKIP_SHIFT);
}

/* Offsets newly abandoned by replacing w with seq_skip_word(n, w): n, and the
 * writer in the slot when it had not been stepped over yet. */
static inline uint64_t seq_skip_count(uint64_t n, uint64_t w)
{
    uint64_t v = w & GF_SEQ_VALUE;
    return 1 + ((v & 1) && !(w & GF_SEQ_ABANDONED) && (v >> 1) != n);
}

/* Who writes a slot: a message's writer stores its handle's owner token
 * (layout.h, "owners") and the message's offset in the owner word of its first
 * slot (the slot header's first 8 bytes, which readers never use) with the
 * header, so a later lap can tell a paused writer (alive: give way) from a dead
 * one (its slot is free). An owner word that does not name the offset (a writer
 * stopped between its take and its header), or names no token, cannot tell:
 * alive. Stored after the take rather than before it, so that the
 * compare-and-swap does not wait for the slot's line. */
#define OWNER_OFF_BITS 32
#define OWNER_OFF_MASK ((1ULL << OWNER_OFF_BITS) - 1)
#define OWNER_NOBODY (GF_OWNER_TOKEN_MASK + 1ULL)    /* a token no handle has: dead (test hooks) */
static inline _Atomic uint64_t *owner_at(const gf_ring *r, uint64_t n)
{
    return gf_atomic64_at(&slot_at(r, n)->owner);
}

static inline uint64_t owner_word_as(uint64_t token, uint64_t n)
{
    return (token << OWNER_OFF_BITS) | (n & OWNER_OFF_MASK);
}

static inline uint64_t owner_word(const gf_ring *r, uint64_t n) { return owner_word_as(r->f->token, n); }

/* slots a message of `total` payload bytes occupies (its header is in the first) */
static inline uint64_t span_of(const gf_ring *r, uint64_t total)
{
    return total <= r->room ? 1 : (GF_SLOT_HDR_SIZE + total + r->stride - 1) / r->stride;
}

/* slot_take's answers besides GF_OK and errors (ring_write.h) */
#define TAKE_LAPPED 1
#define TAKE_GAVE_WAY 2

/* ---- the write path's out-of-line half (ring_write.c) ---------------------------- */
GF_INTERNAL int gf_seq_leave_stepped(gf_ring *r, uint64_t n, _Atomic uint64_t *q, uint64_t cur);
GF_INTERNAL int gf_slot_take_slow(gf_ring *r, uint64_t n, int64_t *t0, int plain);
/* Offsets [from, to) hold no message (padding before the ring's end): taken
 * and published as a message's continuations are, with loads and stores. */
GF_INTERNAL void gf_pad_publish(gf_ring *r, uint64_t from, uint64_t to);
/* GF_E_ABANDONED: offset n gave way to a stalled writer every time it was claimed */
GF_INTERNAL int gf_gave_way(uint64_t n);
/* GF_E_FULL_RING: no room below the gate for `count` offsets */
GF_INTERNAL int gf_full_ring(const gf_ring *r, uint64_t count, uint64_t gate);
GF_INTERNAL int64_t gf_claim_spans(gf_ring *r, uint32_t count, const uint64_t *spans, uint64_t *offs);
/* Fault the ring into this process's mapping (a writer's first claim, once per handle) */
GF_INTERNAL void gf_ring_map(gf_ring *r);
GF_INTERNAL int gf_ring_sync(gf_ring *r, uint64_t first, uint64_t count);

/* ---- waiting (wait.c) ----------------------------------------------------------- */
/* Sleep on the fabric's wake word until look(ctx, &stalled) finds something
 * (returns nonzero, which is returned) or `deadline` (monotonic ns) passes
 * (returns 0). Wakes at least every 50 ms (leases may expire, writers may die),
 * and never past the time it advertises in wait_until, or producers would
 * stop waking it. `stalled`, set by look, is the deadline of a slot still being
 * written: the sleep ends there to step over it. */
typedef int64_t (*gf_look_fn)(void *ctx, int64_t *stalled);
GF_INTERNAL int64_t gf_sleep_for(gf_fabric *f, int64_t deadline, gf_look_fn look, void *ctx);

#endif
