/* ring.c -- partition rings: slot writes with per-slot publication, reads that
 * validate before and after the copy, multi-partition poll with futex wake-ups. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define MAX_STRIDE   (16u << 20)
#define MAX_CAPACITY (1u << 30)
#define MAX_OFFSET   (1ULL << GF_OFFSET_BITS)

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
static int seq_skipped(const gf_ring *r, uint64_t n, uint64_t w)
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
static uint64_t seq_skip_word(const gf_ring *r, uint64_t n, uint64_t w)
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

/* The writer of offset n leaves its slot: from "being written" (2n + 1) to
 * `to`, 1 if so. If it was stepped over meanwhile, the slot is handed on as the
 * last offset that gave way to it, a gap (0: the message is not published);
 * a slot whose skips ran out stays out of use until its ring is restarted. */
static int seq_leave_stepped(gf_ring *r, uint64_t n, _Atomic uint64_t *q, uint64_t cur);

static inline int seq_leave(gf_ring *r, uint64_t n, uint64_t to)
{
    _Atomic uint64_t *q = seq_at(r, n);
    uint64_t cur = (2 * n + 1) | (to & GF_SEQ_GAP);   /* a continuation is written as one */
    if (__builtin_expect(cas(q, &cur, to), 1))
        return 1;
    return seq_leave_stepped(r, n, q, cur);
}

static __attribute__((noinline, cold)) int seq_leave_stepped(gf_ring *r, uint64_t n, _Atomic uint64_t *q, uint64_t cur)
{
    for (;;) {
        if ((cur & GF_SEQ_VALUE) != 2 * n + 1)
            return 0;                   /* not ours (a damaged word) */
        uint64_t s = seq_skips(cur);
        if (s == GF_SEQ_SKIP_MAX || s > (MAX_OFFSET - 1 - n) / r->capacity)
            return 0;
        /* the last offset that gave way holds no message: a gap (its own, if none did: abandoned) */
        if (cas(q, &cur, (2 * (n + s * r->capacity) + 2) | (s ? GF_SEQ_GAP : GF_SEQ_ABANDONED)))
            return 0;
    }
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
    return (_Atomic uint64_t *)&slot_at(r, n)->owner;
}

static inline uint64_t owner_word_as(uint64_t token, uint64_t n)
{
    return (token << OWNER_OFF_BITS) | (n & OWNER_OFF_MASK);
}

static inline uint64_t owner_word(const gf_ring *r, uint64_t n) { return owner_word_as(r->f->token, n); }

/* 1 if the writer of offset m, whose slot holds the word w (being written), is
 * known to be dead. A continuation's writer is its message's: the first slot
 * before it not being written as a continuation. 0 when it cannot tell. */
static __attribute__((cold)) int holder_dead(const gf_ring *r, uint64_t m, uint64_t w, uint64_t *head)
{
    uint64_t h = m;
    for (uint32_t i = 0; (w & GF_SEQ_GAP) && i < r->capacity; i++) {
        if (h == 0)
            return 0;
        h--;
        w = ld_acq(seq_at(r, h));
        if ((w & GF_SEQ_VALUE) != 2 * h + 1)
            return 0;
    }
    if (w & GF_SEQ_GAP)
        return 0;
    uint64_t o = ld_acq(owner_at(r, h)), token = o >> OWNER_OFF_BITS;
    if ((o & OWNER_OFF_MASK) != (h & OWNER_OFF_MASK) || token == 0)
        return 0;
    *head = h;
    return token > GF_OWNER_TOKEN_MASK || gf_owner_alive(r->f, (uint32_t)token) == 0;
}

/* The writer of the message at offset h died in it: its slots are free, and
 * read as abandoned (as the offsets that gave way to it, if any). */
static __attribute__((cold)) void release_dead(gf_ring *r, uint64_t h)
{
    uint64_t fresh = 0;
    for (uint32_t k = 1; k < r->capacity; k++) {
        uint64_t i = h + k, w = ld_acq(seq_at(r, i));
        if ((w & GF_SEQ_VALUE) != 2 * i + 1 || !(w & GF_SEQ_GAP))
            break;
        fresh += !(w & GF_SEQ_ABANDONED);
        seq_leave(r, i, (2 * i + 2) | GF_SEQ_ABANDONED);
    }
    uint64_t w = ld_acq(seq_at(r, h));
    if ((w & GF_SEQ_VALUE) == 2 * h + 1) {
        fresh += !(w & GF_SEQ_ABANDONED);
        seq_leave(r, h, (2 * h + 2) | GF_SEQ_ABANDONED);
    }
    if (fresh)
        faa(&r->hdr->abandoned, fresh);
}

static int gave_way(uint64_t n)
{
    return gf_fail(GF_E_ABANDONED, "offset %llu gave way: its slot is held by a writer stalled past "
                   "the bounded wait", (unsigned long long)n);
}

/* The message whose writer we step over runs on in the slots after m: step
 * over those too, so that the next claims give way at once instead of each
 * waiting out the bounded wait again. */
static __attribute__((cold)) void step_over_rest(gf_ring *r, uint64_t m)
{
    for (uint32_t i = 1; i < r->capacity; i++) {
        uint64_t o = m + i, want = (2 * o + 1) | GF_SEQ_GAP;
        if (!cas(seq_at(r, o), &want, want | GF_SEQ_ABANDONED))
            return;
        faa(&r->hdr->abandoned, 1);
    }
}

/* slots a message of `total` payload bytes occupies (its header is in the first) */
static inline uint64_t span_of(const gf_ring *r, uint64_t total)
{
    return total <= r->room ? 1 : (GF_SLOT_HDR_SIZE + total + r->stride - 1) / r->stride;
}

static uint32_t ring_hdr_crc(const struct gf_ring_hdr *h)
{
    /* flags join the sum only when set, so a ring without flags sums [0, 32) alone */
    uint32_t c = gf_crc32c(~0u, (const uint8_t *)h, offsetof(struct gf_ring_hdr, crc));
    if (h->flags)
        c = gf_crc32c(c, (const uint8_t *)&h->flags, sizeof h->flags);
    return c ^ ~0u;
}

uint64_t gf_ring_region_size(uint32_t capacity, uint32_t stride)
{
    return GF_RING_HDR_SIZE + (uint64_t)capacity * stride + (uint64_t)capacity * 8;
}

static int check_geometry(uint32_t capacity, uint32_t stride)
{
    if (capacity == 0 || capacity > MAX_CAPACITY)
        return gf_fail(GF_E_INVAL, "partition capacity %u out of range (1 to %u slots)", capacity, MAX_CAPACITY);
    if (stride < GF_SLOT_HDR_SIZE + 8 || stride > MAX_STRIDE || stride % 8)
        return gf_fail(GF_E_INVAL, "partition stride %u invalid: a multiple of 8 from %u to %u bytes (the slot header alone is %u)",
                       stride, GF_SLOT_HDR_SIZE + 8, MAX_STRIDE, GF_SLOT_HDR_SIZE);
    return GF_OK;
}

int gf_ring_init(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, uint32_t capacity,
                 uint32_t stride, int64_t now_ns, uint32_t checksum)
{
    int rc = check_geometry(capacity, stride);
    if (rc < 0)
        return rc;
    gf_lease_info li;
    if ((rc = gf_lease_get(f, lease_index, lease_id, &li)) < 0)
        return rc;
    if (gf_ring_region_size(capacity, stride) > li.size)
        return gf_fail(GF_E_INVAL, "a ring of %u x %u bytes needs %llu bytes, the lease has %llu",
                       capacity, stride, (unsigned long long)gf_ring_region_size(capacity, stride),
                       (unsigned long long)li.size);
    struct gf_ring_hdr *h = (struct gf_ring_hdr *)(f->base + li.offset);
    memset(h, 0, sizeof *h);
    h->magic = GF_RING_MAGIC;
    h->lease_id = lease_id;
    h->capacity = capacity;
    h->stride = stride;
    h->created_ns = now_ns;
    h->flags = checksum ? 0u : GF_RING_NO_CRC;
    h->crc = ring_hdr_crc(h);
    return GF_OK;
}

gf_ring *gf_ring_open(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, int *err)
{
    gf_lease_info li;
    int rc = gf_lease_get(f, lease_index, lease_id, &li);
    if (rc < 0) { *err = rc; return NULL; }
    if (li.size < GF_RING_HDR_SIZE) {
        *err = gf_fail(GF_E_CORRUPT, "lease %llu is too small to hold a ring", (unsigned long long)lease_id);
        return NULL;
    }
    struct gf_ring_hdr *h = (struct gf_ring_hdr *)(f->base + li.offset);
    /* copy, then check the copy: the shared header may change under us */
    struct gf_ring_hdr c;
    memcpy(&c, h, offsetof(struct gf_ring_hdr, tail));
    if (c.magic != GF_RING_MAGIC || c.lease_id != lease_id || c.crc != ring_hdr_crc(&c) ||
        (c.flags & ~GF_RING_NO_CRC)) {
        *err = gf_fail(GF_E_CORRUPT, "lease %llu does not hold a valid ring header", (unsigned long long)lease_id);
        return NULL;
    }
    if (check_geometry(c.capacity, c.stride) < 0 ||
        gf_ring_region_size(c.capacity, c.stride) > li.size) {
        *err = gf_fail(GF_E_CORRUPT, "ring in lease %llu has impossible geometry (%u x %u in %llu bytes)",
                       (unsigned long long)lease_id, c.capacity, c.stride, (unsigned long long)li.size);
        return NULL;
    }
    gf_ring *r = calloc(1, sizeof *r);
    if (!r) { *err = gf_fail(GF_E_FULL, "out of memory"); return NULL; }
    r->f = f;
    r->hdr = h;
    r->slots = (uint8_t *)h + GF_RING_HDR_SIZE;
    r->lease = &f->leases[lease_index];
    r->lease_id = lease_id;
    r->capacity = c.capacity;
    r->mask = (c.capacity & (c.capacity - 1)) == 0 && c.capacity > 1 ? c.capacity - 1 : 0;
    r->stride = c.stride;
    r->room = c.stride - GF_SLOT_HDR_SIZE;
    r->seqs = (_Atomic uint64_t *)(r->slots + (uint64_t)c.capacity * c.stride);
    r->max_msg = (uint64_t)c.capacity * c.stride - GF_SLOT_HDR_SIZE;
    r->crc = !(c.flags & GF_RING_NO_CRC);
    atomic_fetch_add(&f->refs, 1);
    *err = GF_OK;
    return r;
}

void gf_ring_close(gf_ring *r)
{
    if (!r)
        return;
    gf_fabric_unref(r->f);
    free(r);
}

uint32_t gf_ring_room(gf_ring *r) { return r->room; }
uint64_t gf_ring_max_message(gf_ring *r) { return r->max_msg; }
int gf_ring_checksum(gf_ring *r) { return r->crc; }

int gf_ring_state_get(gf_ring *r, int64_t now_ns, gf_ring_state *out)
{
    if (!now_ns)
        now_ns = gf_now_ns();
    memset(out, 0, sizeof *out);
    out->capacity = r->capacity;
    out->stride = r->stride;
    out->lease_id = r->lease_id;
    out->alive = (uint32_t)gf_lease_alive_query(r->lease, r->lease_id, now_ns);   /* a state query decides nothing */
    out->expires_ns = out->alive ? ld_acq(&r->lease->expires_ns) : 0;
    if (ld_acq(&r->lease->id) != r->lease_id)   /* reclaimed: the region is not ours to read */
        return GF_OK;
    uint64_t tail = ld_acq(&r->hdr->tail);
    if (tail >= MAX_OFFSET)
        return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)tail);
    out->tail = tail;
    out->lost = tail > r->capacity ? tail - r->capacity : 0;
    out->earliest = out->lost;
    out->abandoned = ld_acq(&r->hdr->abandoned);
    return GF_OK;
}

/* ---- writing ------------------------------------------------------------------ */

static inline void wake_readers(gf_fabric *f)
{
    /* Dekker with sleep_for: our publish (a seq_cst CAS) is ordered before this
     * load; a sleeper bumps `waiters` before its last look at the slots. */
    if (__builtin_expect(atomic_load(&f->hdr->waiters) != 0, 0) &&
        gf_mono_ns() < atomic_load(&f->hdr->wait_until) &&   /* not a count left by a dead sleeper */
        atomic_exchange(&f->hdr->armed, 0)) {                 /* the first append since it armed */
        faa(&f->hdr->wake, 1);
        gf_futex_wake_all(&f->hdr->wake);
    }
}

/* Take offset n's slot for writing: GF_OK (seq is now 2n+1, ours), TAKE_LAPPED
 * (the ring already moved past n: leave the slot alone) or GF_E_ABANDONED (a
 * reader gave up on n before we started). *t0 starts one bounded wait shared
 * by every slot of a message: a multi-slot write waits once, not once per slot.
 * A message's first slot is taken with a compare-and-swap; the slots after it
 * (`plain`) with a load and a store: a 1 MiB message in 512-byte slots has
 * 2,048 of them, and a locked instruction each cost 11 us. The one race the
 * store can lose is to an earlier lap's writer that loaded the word before us
 * and stores after us, a whole lap late; the tail then already marks its
 * message lapped (gap_finish below).
 * A slot whose earlier writer is still in it (an odd word) is taken only once
 * that writer is known dead: after the bounded wait the offset gives way
 * (TAKE_GAVE_WAY: nothing written, readers step over it; the caller claims
 * again). */
#define TAKE_LAPPED 1
#define TAKE_GAVE_WAY 2
static __attribute__((noinline, cold)) int slot_take_slow(gf_ring *r, uint64_t n, int64_t *t0, int plain);

static inline int slot_take_as(gf_ring *r, uint64_t n, int64_t *t0, int plain)
{
    /* the common case inline: the slot's last tenant finished (an even word of an earlier offset) */
    _Atomic uint64_t *q = seq_at(r, n);
    const uint64_t writing = 2 * n + 1;
    uint64_t cur = ld_acq(q), c = cur & GF_SEQ_VALUE;
    if (__builtin_expect(!(c & 1) && c < writing, 1)) {
        if (plain) {
            st_rlx(q, writing | GF_SEQ_GAP);   /* ordered before the bytes by slot_header's release fence */
            return GF_OK;
        }
        if (cas(q, &cur, writing))
            return GF_OK;
    }
    return slot_take_slow(r, n, t0, plain);
}

static int slot_take_slow(gf_ring *r, uint64_t n, int64_t *t0, int plain)
{
    _Atomic uint64_t *q = seq_at(r, n);
    const uint64_t writing = 2 * n + 1, mine = plain ? writing | GF_SEQ_GAP : writing;
    uint64_t cur = ld_acq(q);
    int released = 0;
    for (;;) {
        uint64_t c = cur & GF_SEQ_VALUE;
        if (c == writing + 1 && (cur & GF_SEQ_ABANDONED))
            /* a reader gave up on n before we even started: n is skipped, say so */
            return gf_fail(GF_E_ABANDONED, "offset %llu was reclaimed by a reader after the bounded wait",
                           (unsigned long long)n);
        if (c == writing + 1 && (cur & GF_SEQ_GAP))
            return TAKE_GAVE_WAY;   /* n gave way to a stalled writer, which has left since */
        if (c == writing) {
            /* already ours (a test hook's claim), unless stepped over since */
            if (!(cur & GF_SEQ_ABANDONED))
                return GF_OK;
            seq_leave(r, n, (2 * n + 2) | ((cur & GF_SEQ_GAP) ? GF_SEQ_GAP : GF_SEQ_ABANDONED));
            return gf_fail(GF_E_ABANDONED, "offset %llu was reclaimed by a reader after the bounded wait",
                           (unsigned long long)n);
        }
        if (c > writing)
            return TAKE_LAPPED;   /* lapped before we started: the ring already overwrote n */
        if (c & 1) {
            /* an earlier lap's writer is in this slot: wait for it, boundedly */
            if (!(cur & GF_SEQ_ABANDONED)) {
                int64_t now = gf_mono_ns();
                if (!*t0)
                    *t0 = now;
                if (now - *t0 < r->f->stall_ns) {
                    sched_yield();
                    cur = ld_acq(q);
                    continue;
                }
            }
            if (seq_skipped(r, n, cur))
                return TAKE_GAVE_WAY;
            uint64_t head;
            if (!released && holder_dead(r, c >> 1, cur, &head)) {
                released = 1;
                /* its writer died: its message's slots are free (this one among them) */
                release_dead(r, head);
                cur = ld_acq(q);
                continue;
            }
            /* it may only be paused, and copy on when it resumes: give way */
            uint64_t to = seq_skip_word(r, n, cur);
            if (to & 1) {
                if (!cas(q, &cur, to))
                    continue;
                faa(&r->hdr->abandoned, seq_skip_count(n, cur));
                if (!(cur & GF_SEQ_ABANDONED))
                    step_over_rest(r, c >> 1);
                return TAKE_GAVE_WAY;
            }
            /* a damaged word names no writer: take it */
        }
        if (plain) {
            st_rlx(q, mine);   /* ordered before the bytes by slot_header's release fence */
            return GF_OK;
        }
        if (cas(q, &cur, writing))
            return GF_OK;
    }
}

/* From "being written" to `to`; 0 if it was stepped over meanwhile (seq_leave). */
static inline int seq_finish(gf_ring *r, uint64_t n, uint64_t to)
{
    return seq_leave(r, n, to);
}

static inline int gap_finish(gf_ring *r, uint64_t m);

/* Offsets [from, to) hold no message (padding before the ring's end): taken
 * and published as a message's continuations are, with loads and stores. */
static void pad_publish(gf_ring *r, uint64_t from, uint64_t to)
{
    int64_t t0 = 0;
    for (uint64_t m = from; m < to; m++)
        if (slot_take_as(r, m, &t0, 1) == GF_OK)
            gap_finish(r, m);
}

/* Take the `span` slots of a message at offset n. GF_OK: all ours, the caller
 * writes and publishes. Otherwise every slot we did take is already released
 * (head abandoned, the rest gaps) and the result says why: TAKE_LAPPED (the
 * ring overwrote the message before it was written), TAKE_GAVE_WAY (a slot is
 * held by a stalled writer) or GF_E_ABANDONED. */
static int span_take(gf_ring *r, uint64_t n, uint64_t span)
{
    int64_t t0 = 0;
    int bad = GF_OK;
    uint64_t j = 0;
    for (; j < span; j++) {
        int rc = slot_take_as(r, n + j, &t0, j > 0);
        if (rc != GF_OK) {
            bad = rc;
            break;
        }
    }
    if (bad == GF_OK)
        return GF_OK;
    /* undo: the slots we hold must not keep readers waiting, nor hold a message */
    for (uint64_t i = 0; i < j; i++)
        seq_finish(r, n + i, (2 * (n + i) + 2) | (i ? GF_SEQ_GAP : GF_SEQ_ABANDONED));
    for (uint64_t i = j + 1; i < span; i++)     /* one bounded wait, already spent, covers them */
        if (slot_take_as(r, n + i, &t0, 1) == GF_OK)
            seq_finish(r, n + i, (2 * (n + i) + 2) | GF_SEQ_GAP);
    return bad;
}

/* A continuation slot from "being written" to a gap, 0 if it is no longer ours.
 * A load and a plain store instead of a compare-and-swap: a 1 MiB message in
 * 512-byte slots has 2,048 of them, and a locked instruction each cost as much
 * as copying the message. A slot stepped over meanwhile (flags in its word) is
 * left through seq_leave. The one race, a step-over between the load and the
 * store, is undone by the store: the slot is free again at once, which is all
 * a step-over waits for; only a later lap that gave way within those few
 * instructions, and whose writer has not looked yet, may then write an offset
 * its readers already stepped over. */
static inline int gap_finish(gf_ring *r, uint64_t m)
{
    _Atomic uint64_t *q = seq_at(r, m);
    uint64_t cur = ld_rlx(q);
    if (__builtin_expect(cur != ((2 * m + 1) | GF_SEQ_GAP), 0))
        return (cur & GF_SEQ_VALUE) == 2 * m + 1 ? seq_leave(r, m, (2 * m + 2) | GF_SEQ_GAP) : 0;
    st_rel(q, (2 * m + 2) | GF_SEQ_GAP);
    return 1;
}

/* Publish a written span: the continuations first (a reader landing inside the
 * message steps over them), the head last, by compare-and-swap (whose release
 * orders the continuations' bytes and words before it). GF_E_ABANDONED if
 * a reader or a lap writer took any of its slots meanwhile (the head is then
 * abandoned too). */
static int span_publish(gf_ring *r, uint64_t n, uint64_t span)
{
    int ok = 1;
    for (uint64_t j = 1; j < span; j++)
        ok &= gap_finish(r, n + j);
    if (ok && seq_finish(r, n, 2 * n + 2))
        return GF_OK;
    seq_finish(r, n, (2 * n + 2) | GF_SEQ_ABANDONED);
    return gf_fail(GF_E_ABANDONED, "offset %llu was reclaimed by a reader after the bounded wait",
                   (unsigned long long)n);
}

/* Write the header of a taken slot (crc left for the caller). */
static inline uint8_t *slot_header(gf_ring *r, uint64_t n, uint32_t klen, uint32_t flags,
                                   uint32_t key_hash, uint32_t hlen, uint32_t vlen, int64_t ts)
{
    struct gf_slot *s = slot_at(r, n);
    fence_rel();   /* seqlock: the odd seq is visible before any byte below */
    s->owner = owner_word(r, n);
    s->ts_ns = ts;
    s->key_len = klen;
    s->val_len = vlen;
    s->hdr_len = hlen;
    s->key_hash = key_hash;
    s->flags = flags;
    return (uint8_t *)s + GF_SLOT_HDR_SIZE;
}

static inline void slot_seal(gf_ring *r, uint64_t n, uint64_t total)
{
    struct gf_slot *s = slot_at(r, n);
    s->crc = !r->crc ? 0u : gf_slot_crc(n, (const uint8_t *)s + 8, (const uint8_t *)s + GF_SLOT_HDR_SIZE, total);
}

/* Write the message at offset n (its span claimed). Returns GF_OK,
 * GF_E_ABANDONED if a reader gave up on us (we took longer than the bounded
 * wait) and the message is not delivered, or TAKE_GAVE_WAY if a slot of it is
 * held by a stalled writer (nothing written: the message needs another claim). */
static int slot_publish(gf_ring *r, uint64_t n, const uint8_t *key, uint32_t klen, uint32_t flags,
                        uint32_t key_hash, const uint8_t *hdrs, uint32_t hlen,
                        const uint8_t *val, uint32_t vlen, int64_t ts, const gf_stamp *st)
{
    uint64_t total = (uint64_t)klen + hlen + vlen + (st ? GF_STAMP_SIZE : 0), span = span_of(r, total);
    int rc = span_take(r, n, span);
    if (rc != GF_OK)
        return rc == TAKE_LAPPED ? GF_OK : rc;     /* TAKE_GAVE_WAY: claim again */
    uint8_t *p = slot_header(r, n, klen, flags, key_hash, hlen, vlen, ts);
    struct gf_slot *s = slot_at(r, n);
    if (!r->crc) {
        if (klen) memcpy(p, key, klen);
        if (hlen) memcpy(p + klen, hdrs, hlen);
        GF_FAULT(GF_FAULT_COPY);    /* a test stops here: a writer paused mid-copy */
        if (vlen) gf_copy(p + klen + hlen, val, vlen);
        if (st) memcpy(p + klen + hlen + vlen, st, GF_STAMP_SIZE);
        s->crc = 0;
        return span_publish(r, n, span);
    }
    /* the checksum is summed as the bytes are copied: one pass over the payload */
    uint32_t c = gf_slot_crc_seed(n, (const uint8_t *)s + 8);
    if (klen) c = gf_copy_crc(p, key, klen, c);
    if (hlen) c = gf_copy_crc(p + klen, hdrs, hlen, c);
    GF_FAULT(GF_FAULT_COPY);
    if (vlen) c = gf_copy_crc(p + klen + hlen, val, vlen, c);
    if (st) c = gf_copy_crc(p + klen + hlen + vlen, (const uint8_t *)st, GF_STAMP_SIZE, c);
    s->crc = c ^ ~0u;
    return span_publish(r, n, span);
}

static inline int check_total(const gf_ring *r, uint64_t total, uint32_t klen, uint32_t hlen, uint32_t vlen)
{
    if (__builtin_expect(total > r->max_msg, 0))
        return gf_fail(GF_E_TOOBIG, "message of %llu bytes (key %u + headers %u + value %u) is larger than the "
                       "partition's ring: at most %llu bytes (%u slots of %u bytes, less one %u-byte header)",
                       (unsigned long long)total, klen, hlen, vlen, (unsigned long long)r->max_msg,
                       r->capacity, r->stride, GF_SLOT_HDR_SIZE);
    return GF_OK;
}

static inline int check_msg(const gf_ring *r, uint32_t klen, uint32_t hlen, uint32_t vlen)
{
    uint64_t total = (uint64_t)klen + hlen + vlen;
    return check_total(r, total, klen, hlen, vlen);
}

static inline int check_alive(const gf_ring *r, int64_t now)
{
    if (__builtin_expect(!gf_lease_alive(r->lease, r->lease_id, now), 0))
        return gf_fail(GF_E_EXPIRED, "partition lease %llu has expired", (unsigned long long)r->lease_id);
    return GF_OK;
}

/* Which partition the last send of this thread found without room (gf_full_partition). */
static _Thread_local uint32_t full_part;

static int full_ring(const gf_ring *r, uint64_t count, uint64_t gate)
{
    return gf_fail(GF_E_FULL_RING, "no room for %llu message(s): a gating reader has not read past offset %llu",
                   (unsigned long long)count, (unsigned long long)(gate > r->capacity ? gate - r->capacity : 0));
}

static inline int64_t claim(gf_ring *r, uint64_t count)
{
    /* Back-pressure costs one load when nobody gates the ring; a gated ring
     * claims with a CAS so that concurrent producers never pass the gate. */
    uint64_t gate = ld_acq(&r->hdr->gate), n;
    if (__builtin_expect(gate != 0, 0)) {
        if (count > r->capacity)
            return gf_fail(GF_E_INVAL, "%llu messages for one partition of %u slots can never fit while a reader gates it",
                           (unsigned long long)count, r->capacity);
        n = ld_acq(&r->hdr->tail);
        do {
            if (n + count > gate)
                return full_ring(r, count, gate);
        } while (!cas(&r->hdr->tail, &n, n + count));
    } else
        n = faa(&r->hdr->tail, count);
    if (__builtin_expect(n >= MAX_OFFSET || count > MAX_OFFSET - n, 0))
        return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)n);
    return (int64_t)n;
}

/* Claim the offsets of `count` messages of spans[i] slots each, in order, with
 * one compare-and-swap of the tail: a message that would straddle the ring's
 * end is preceded by padding up to it, so every message is contiguous. (A
 * fetch-add cannot know where the claim lands before it is made.) offs[i] gets
 * each message's first offset; returns the first offset claimed (padding
 * included). */
static int64_t claim_spans(gf_ring *r, uint32_t count, const uint64_t *spans, uint64_t *offs)
{
    const uint64_t cap = r->capacity;
    uint64_t t = ld_acq(&r->hdr->tail);
    for (;;) {
        if (t >= MAX_OFFSET)
            return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)t);
        uint64_t pos = t;
        for (uint32_t i = 0; i < count; i++) {
            uint64_t idx = pos % cap;
            if (idx + spans[i] > cap)
                pos += cap - idx;
            offs[i] = pos;
            pos += spans[i];
        }
        if (pos > MAX_OFFSET)
            return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)t);
        uint64_t gate = ld_acq(&r->hdr->gate);      /* back-pressure: never claim past a gating reader */
        if (gate != 0 && pos > gate)
            return pos - t > cap ? gf_fail(GF_E_INVAL, "%llu offsets for one partition of %u slots can never fit while a reader gates it",
                                           (unsigned long long)(pos - t), r->capacity)
                                 : full_ring(r, pos - t, gate);
        if (cas(&r->hdr->tail, &t, pos))
            return (int64_t)t;
    }
}

static int sync_range(gf_fabric *f, uint8_t *base, uint64_t elem, uint64_t cap, uint64_t first, uint64_t count)
{
    uint64_t i = first % cap, n1 = count;
    if (count >= cap)
        return gf_dsync(f, base, cap * elem);
    if (i + n1 > cap)
        n1 = cap - i;
    int rc = gf_dsync(f, base + i * elem, n1 * elem);
    if (rc == GF_OK && n1 < count)
        rc = gf_dsync(f, base, (count - n1) * elem);
    return rc;
}

/* Durable commits: flush the slots and sequence words of offsets
 * [first, first+count) and the ring header (the tail) before the append is
 * acknowledged. */
static int ring_sync(gf_ring *r, uint64_t first, uint64_t count)
{
    gf_fabric *f = r->f;
    int rc = sync_range(f, r->slots, r->stride, r->capacity, first, count);
    if (rc == GF_OK)
        rc = sync_range(f, (uint8_t *)r->seqs, 8, r->capacity, first, count);
    return rc < 0 ? rc : gf_dsync(f, r->hdr, GF_RING_HDR_SIZE);
}

/* Claim one message's offsets: a fetch-add for one slot, else claim_spans.
 * *first gets the first offset claimed (where padding, if any, starts). */
static inline int64_t claim_one(gf_ring *r, uint64_t span, uint64_t *first)
{
    if (__builtin_expect(span == 1, 1)) {
        int64_t n = claim(r, 1);
        *first = (uint64_t)n;
        return n;
    }
    uint64_t off;
    int64_t t = claim_spans(r, 1, &span, &off);
    if (t < 0)
        return t;
    *first = (uint64_t)t;
    pad_publish(r, (uint64_t)t, off);
    return (int64_t)off;
}

/* Append one message. *written (when given) says whether it was published,
 * even when the call then fails (a durable flush that failed after it). */
static int64_t append_one(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t flags,
                          uint32_t key_hash, const uint8_t *hdrs, uint32_t hlen,
                          const uint8_t *val, uint32_t vlen, int64_t ts, int64_t now,
                          const gf_stamp *st, int *written)
{
    int rc;
    uint64_t total = (uint64_t)klen + hlen + vlen + (st ? GF_STAMP_SIZE : 0);
    if ((rc = check_total(r, total, klen, hlen, vlen)) < 0 || (rc = check_alive(r, now)) < 0)
        return rc;
    uint64_t span = span_of(r, total), first;
    int64_t n;
    for (uint32_t tries = 0;; tries++) {
        n = claim_one(r, span, &first);
        if (n < 0)
            return n;
        rc = slot_publish(r, (uint64_t)n, key, klen, flags, key_hash, hdrs, hlen, val, vlen, ts, st);
        if (__builtin_expect(rc != TAKE_GAVE_WAY, 1))
            break;
        if (tries >= r->capacity) {     /* every slot held: say so */
            rc = gave_way((uint64_t)n);
            break;
        }
    }
    wake_readers(r->f);
    if (written)
        *written = rc == GF_OK;
    if (__builtin_expect(r->f->durable, 0) && rc == GF_OK)
        rc = ring_sync(r, first, (uint64_t)n + span - first);
    return rc < 0 ? rc : n;
}

int64_t gf_ring_append(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t has_key,
                       const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                       int64_t ts_ns)
{
    /* ts_ns is the message's event time (data); liveness is judged by the wall clock */
    int64_t now = gf_now_ns();
    if (!ts_ns)
        ts_ns = now;
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    return append_one(r, key, klen, has_key ? GF_MSG_HAS_KEY : 0u, h, hdrs, hlen, val, vlen, ts_ns, now,
                      NULL, NULL);
}

/* Which of n partitions a message goes to: Kafka's keyed choice from its key's
 * murmur2 h, else the next of the round-robin counter rr. */
static inline uint32_t pick(uint32_t mode, uint32_t n, uint64_t *rr, uint32_t h, uint32_t has_key)
{
    if (mode == GF_PART_KEYHASH && has_key)
        return (h & 0x7fffffffu) % n;
    return (uint32_t)(__atomic_fetch_add(rr, 1, __ATOMIC_RELAXED) % n);
}

int64_t gf_send(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr,
                const uint8_t *key, uint32_t klen, uint32_t has_key,
                const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                int64_t ts_ns)
{
    if (n == 0)
        return gf_fail(GF_E_INVAL, "topic has no partitions");
    int64_t now = gf_now_ns();
    if (!ts_ns)
        ts_ns = now;
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    uint32_t p = pick(mode, n, rr, h, has_key);
    gf_ring *r = rings[p];
    if (!r)
        return gf_fail(GF_E_INVAL, "partition %u is not open", p);
    int64_t off = append_one(r, key, klen, has_key ? GF_MSG_HAS_KEY : 0u, h, hdrs, hlen, val, vlen, ts_ns,
                             now, NULL, NULL);
    if (__builtin_expect(off == GF_E_FULL_RING, 0))
        full_part = p;
    return off < 0 ? off : ((int64_t)p << 48) | off;
}

int64_t gf_ring_append_stamped(gf_ring *r, uint32_t flags, const gf_stamp *st, const uint8_t *key,
                               uint32_t klen, uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                               const uint8_t *val, uint32_t vlen, int64_t ts_ns)
{
    int64_t now = gf_now_ns();
    if (!ts_ns)
        ts_ns = now;
    flags &= GF_MSG_TXN | GF_MSG_CONTROL;
    flags |= GF_MSG_STAMP | (has_key ? GF_MSG_HAS_KEY : 0u);
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    return append_one(r, key, klen, flags, h, hdrs, hlen, val, vlen, ts_ns, now, st, NULL);
}

/* Idempotent send. The partition's sequence is marked busy for the length of
 * the write, so two threads of one producer never write the same sequence;
 * it moves on only once the message is published, so an attempt that wrote
 * nothing (abandoned by readers, no room) is repeated with the same number.
 * The epoch word is loaded once, before the claim: a producer fenced before
 * that load writes nothing; one fenced during the write is a write in flight,
 * as in any system, and its transaction (if any) is aborted by the fencer. */
static _Thread_local const gf_idem *unsure_of;     /* whose last send failed after its write */
static _Thread_local uint32_t unsure_part;
static _Thread_local uint64_t unsure_seq;

int gf_idem_unsure(const gf_idem *d, uint32_t *part, uint64_t *seq)
{
    if (!d || unsure_of != d)
        return 0;
    unsure_of = NULL;
    *part = unsure_part;
    *seq = unsure_seq;
    return 1;
}

static int64_t send_idem(gf_sender *s, int again, uint32_t part, uint64_t want, const uint8_t *key,
                         uint32_t klen, uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                         const uint8_t *val, uint32_t vlen)
{
    gf_idem *d = s->idem;
    if (!d || !d->word || s->n == 0 || d->n < s->n)
        return gf_fail(GF_E_INVAL, "producer is not bound for idempotent sends");
    int64_t now = gf_now_ns();
    if (now >= d->renew_at_ns)
        return gf_fail(GF_E_RENEW, "producer registration is due for renewal");
    uint32_t cur_epoch = ld_acq((_Atomic uint32_t *)d->word);
    if (cur_epoch != d->epoch)
        return gf_fail(GF_E_FENCED, "producer %u was fenced: its epoch is %u, the registration's %u",
                       d->producer, d->epoch, cur_epoch);
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    uint32_t p = again ? part : pick(s->mode, s->n, &s->rr, h, has_key);
    gf_ring *r = p < s->n ? s->rings[p] : NULL;
    if (!r)
        return gf_fail(GF_E_INVAL, "partition %u is not open", p);
    _Atomic uint64_t *w = (_Atomic uint64_t *)&d->seqs[p];
    uint64_t seq = ld_acq(w);
    if (seq & GF_IDEM_BUSY)
        return gf_fail(GF_E_BUSY, "another send to partition %u is in flight", p);
    if (again && want < seq) {      /* it landed: hand back where, write nothing */
        if (want + 1 != seq || d->last[p] < 0)
            return gf_fail(GF_E_DUPLICATE, "sequence %llu of partition %u is older than the last one written",
                           (unsigned long long)want, p);
        return ((int64_t)p << 48) | d->last[p];
    }
    if (again && want > seq)
        return gf_fail(GF_E_INVAL, "sequence %llu of partition %u was never attempted", (unsigned long long)want, p);
    if (!cas(w, &seq, seq | GF_IDEM_BUSY))
        return gf_fail(GF_E_BUSY, "another send to partition %u is in flight", p);
    unsure_of = NULL;
    gf_stamp st = {d->producer, d->epoch, seq, d->txn};
    uint32_t flags = GF_MSG_STAMP | (has_key ? GF_MSG_HAS_KEY : 0u) | (d->txn ? GF_MSG_TXN : 0u);
    int written = 0;
    int64_t off = append_one(r, key, klen, flags, h, hdrs, hlen, val, vlen, now, now, &st, &written);
    if (written) {
        /* a write acknowledged late (a durable flush failed after it) still landed */
        d->last[p] = off >= 0 ? off : (int64_t)(ld_acq(&r->hdr->tail) - 1);
        st_rel(w, seq + 1);
    } else
        st_rel(w, seq);
    if (__builtin_expect(off == GF_E_FULL_RING, 0))
        full_part = p;
    if (off >= 0 && GF_FAULT_FAILS(GF_FAULT_IDEM_WRITTEN))
        off = gf_fail(GF_E_IO, "injected failure after the write of offset %lld", (long long)off);
    if (off < 0 && written) {       /* written, but the caller is told it failed: it may repeat it */
        unsure_of = d;
        unsure_part = p;
        unsure_seq = seq;
    }
    return off < 0 ? off : ((int64_t)p << 48) | off;
}

int64_t gf_send_idem(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key,
                     const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen)
{
    return send_idem(s, 0, 0, 0, key, klen, has_key, hdrs, hlen, val, vlen);
}

int64_t gf_send_idem_again(gf_sender *s, uint32_t part, uint64_t seq, const uint8_t *key, uint32_t klen,
                           uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                           const uint8_t *val, uint32_t vlen)
{
    return send_idem(s, 1, part, seq, key, klen, has_key, hdrs, hlen, val, vlen);
}

/* A message of a batch whose claimed slot gave way to a stalled writer is
 * written as a send is: claimed again, at the ring's tail. A gated ring may
 * have no room for it yet (the batch's own unwritten slots, handed on as gaps,
 * free room as its readers pass them): wait boundedly for room. */
static __attribute__((noinline, cold)) int64_t batch_again(gf_ring *r, const uint8_t *key, uint32_t klen,
                                                          uint32_t flags, uint32_t h, const uint8_t *val,
                                                          uint32_t vlen, int64_t ts, int64_t now)
{
    int64_t t0 = gf_mono_ns();
    for (;;) {
        int64_t n = append_one(r, key, klen, flags, h, NULL, 0, val, vlen, ts, now, NULL, NULL);
        if (n != GF_E_FULL_RING)
            return n;
        if (gf_mono_ns() - t0 >= r->f->stall_ns)
            return gf_fail(GF_E_ABANDONED, "a batch message whose slot gave way to a stalled writer found no "
                           "room to be claimed again: a gating reader has not read far enough");
        sched_yield();
    }
}

/* The rest of a batch, from message i, once message i's claimed slot gave way
 * to a stalled writer (nothing of it written). Kafka's partition order holds:
 * a partition whose message gave way writes it and every later message of the
 * batch at fresh offsets, in order, and hands the offsets it had claimed for
 * them on as gaps; the other partitions write theirs where claimed. parts:
 * each message's partition (NULL: all in rings[0]); next[p]: where partition
 * p's claim has got to, end[p]: where it ends; offs/spans: each message's
 * claimed offset and span when some span several slots (else NULL); the key
 * hashes are in out_offsets when parts is given. Returns the messages a reader
 * gave up on, or an error (the messages from the failing one on not written). */
static __attribute__((noinline, cold)) int64_t batch_rest(gf_ring **rings, uint32_t n, const uint32_t *parts,
                                                         uint32_t i, uint32_t count, const uint8_t *kp,
                                                         const uint32_t *key_lens, const uint8_t *vp,
                                                         const uint32_t *val_lens, uint64_t *next,
                                                         const uint64_t *end, const uint64_t *offs,
                                                         const uint64_t *spans, int64_t ts, int64_t now,
                                                         uint64_t *out_offsets)
{
    uint8_t small[64] = {0}, *moved = n <= sizeof small ? small : calloc(n, 1);
    if (!moved)
        return gf_fail(GF_E_FULL, "out of memory");
    int64_t abandoned = 0, err = 0;
    const uint32_t flags = kp ? GF_MSG_HAS_KEY : 0u;
    uint32_t p = parts ? parts[i] : 0;
    moved[p] = 1;
    pad_publish(rings[p], next[p], end[p]);
    for (int first = 1; i < count; i++, first = 0) {
        uint32_t kl = kp ? key_lens[i] : 0u, vl = val_lens[i];
        uint32_t h = !kp ? 0 : parts ? (uint32_t)out_offsets[i] : gf_murmur2(kp, kl);
        p = parts ? parts[i] : 0;
        gf_ring *r = rings[p];
        int64_t rc = TAKE_GAVE_WAY, off = 0;
        if (!first && !moved[p]) {
            off = (int64_t)next[p]++;
            if (offs) {
                off = (int64_t)offs[i];
                pad_publish(r, next[p] - 1, (uint64_t)off);
                next[p] = (uint64_t)off + spans[i];
            }
            rc = slot_publish(r, (uint64_t)off, kp, kl, flags, h, NULL, 0, vp, vl, ts, NULL);
            if (rc == TAKE_GAVE_WAY) {
                moved[p] = 1;
                pad_publish(r, next[p], end[p]);
            }
        }
        if (rc == TAKE_GAVE_WAY) {
            rc = batch_again(r, kp, kl, flags, h, vp, vl, ts, now);
            if (rc < 0 && rc != GF_E_ABANDONED) {
                err = rc;
                break;
            }
            if (rc >= 0) {
                off = rc;
                rc = GF_OK;
            }
        }
        abandoned += rc != GF_OK;
        out_offsets[i] = (uint64_t)off;
        if (kp)
            kp += kl;
        vp += vl;
    }
    if (moved != small)
        free(moved);
    return err ? gf_fail_prefix((int)err, "batch messages %u to %u were not written (those before them were)",
                                i, count - 1)
               : abandoned;
}

int64_t gf_ring_append_batch(gf_ring *r, uint32_t count, const uint8_t *keys,
                             const uint32_t *key_lens, const uint8_t *vals,
                             const uint32_t *val_lens, int64_t ts_ns, uint64_t *out_offsets)
{
    int rc;
    if (count == 0)
        return gf_fail(GF_E_INVAL, "empty batch");
    int64_t now = gf_now_ns();
    if (!ts_ns)
        ts_ns = now;
    /* all or nothing: check every message before claiming any offset */
    int multi = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t total = (uint64_t)(keys ? key_lens[i] : 0u) + val_lens[i];
        if ((rc = check_msg(r, keys ? key_lens[i] : 0u, 0, val_lens[i])) < 0)
            return gf_fail_prefix(GF_E_TOOBIG, "batch message %u", i);
        multi |= total > r->room;
    }
    if ((rc = check_alive(r, now)) < 0)
        return rc;
    uint64_t *spans = NULL, *offs = NULL;
    int64_t first;
    if (!multi)
        first = claim(r, count);
    else {
        /* messages larger than a slot: claim the batch's spans and padding at once */
        spans = malloc((uint64_t)count * 2 * sizeof *spans);
        if (!spans)
            return gf_fail(GF_E_FULL, "out of memory");
        offs = spans + count;
        for (uint32_t i = 0; i < count; i++)
            spans[i] = span_of(r, (uint64_t)(keys ? key_lens[i] : 0u) + val_lens[i]);
        first = claim_spans(r, count, spans, offs);
    }
    if (first < 0) {
        free(spans);
        return first;
    }
    int64_t abandoned = 0;
    uint64_t end = (uint64_t)first;
    const uint8_t *kp = keys, *vp = vals;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t kl = keys ? key_lens[i] : 0u, vl = val_lens[i];
        uint32_t h = keys ? gf_murmur2(kp, kl) : 0;
        uint64_t off = multi ? offs[i] : (uint64_t)first + i;
        if (multi)
            pad_publish(r, end, off);
        end = off + (multi ? spans[i] : 1);
        rc = slot_publish(r, off, kp, kl, keys ? GF_MSG_HAS_KEY : 0u, h, NULL, 0, vp, vl, ts_ns, NULL);
        if (__builtin_expect(rc != GF_OK, 0)) {
            if (rc == TAKE_GAVE_WAY) {
                uint64_t last = multi ? offs[count - 1] + spans[count - 1] : (uint64_t)first + count;
                int64_t more = batch_rest(&r, 1, NULL, i, count, kp, key_lens, vp, val_lens, &end, &last,
                                          offs, spans, ts_ns, now, out_offsets);
                abandoned = more < 0 ? more : abandoned + more;
                end = last;
                break;
            }
            abandoned++;
        }
        out_offsets[i] = off;
        kp += kl;
        vp += vl;
    }
    free(spans);
    wake_readers(r->f);
    if (__builtin_expect(r->f->durable, 0) && (rc = ring_sync(r, (uint64_t)first, end - (uint64_t)first)) < 0)
        return rc;
    if (abandoned < 0)
        return abandoned;
    if (abandoned)
        return gf_fail(GF_E_ABANDONED, "%u of %u batch messages were reclaimed by readers after the bounded wait",
                       (uint32_t)abandoned, count);
    return count;
}

/* A batch found partition `upto` full after claiming its share of partitions
 * below it (next[q] holds their first offsets, end[q] where they end): give
 * each share back when no one claimed after us, else mark its slots abandoned
 * so readers skip them at once. Either way no message of the batch becomes
 * readable. */
static void unclaim(gf_ring **rings, const uint64_t *next, const uint64_t *end, uint32_t upto)
{
    for (uint32_t q = 0; q < upto; q++) {
        if (!end[q])
            continue;
        gf_ring *r = rings[q];
        uint64_t e = end[q];
        if (cas(&r->hdr->tail, &e, next[q]))
            continue;
        for (uint64_t o = next[q]; o < end[q]; o++) {
            _Atomic uint64_t *sq = seq_at(r, o);
            uint64_t cur = ld_acq(sq);
            while ((cur & GF_SEQ_VALUE) < 2 * o + 1 && !seq_skipped(r, o, cur) &&
                   !cas(sq, &cur, seq_skip_word(r, o, cur)))
                ;
            faa(&r->hdr->abandoned, 1);
        }
    }
}

int64_t gf_send_batch(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr, uint32_t count,
                      const uint8_t *keys, const uint32_t *key_lens,
                      const uint8_t *vals, const uint32_t *val_lens, int64_t ts_ns,
                      uint32_t *out_parts, uint64_t *out_offsets)
{
    if (n == 0 || count == 0)
        return gf_fail(GF_E_INVAL, n ? "empty batch" : "topic has no partitions");
    int64_t now = gf_now_ns();
    if (!ts_ns)
        ts_ns = now;
    for (uint32_t p = 0; p < n; p++)
        if (!rings[p])
            return gf_fail(GF_E_INVAL, "partition %u is not open", p);
    /* every message must fit every partition it may land on: check against the
     * smallest room once per message, not once per partition (O(count), not O(count * n)) */
    const gf_ring *tightest = rings[0];
    uint32_t room = rings[0]->room;
    for (uint32_t p = 1; p < n; p++) {
        if (rings[p]->max_msg < tightest->max_msg)
            tightest = rings[p];
        if (rings[p]->room < room)
            room = rings[p]->room;
    }
    int multi = 0;   /* some message may need more than one slot */
    for (uint32_t i = 0; i < count; i++) {
        int rc = check_msg(tightest, keys ? key_lens[i] : 0u, 0, val_lens[i]);
        if (rc < 0)
            return gf_fail_prefix(GF_E_TOOBIG, "batch message %u", i);
        multi |= (uint64_t)(keys ? key_lens[i] : 0u) + val_lens[i] > room;
    }
    for (uint32_t p = 0; p < n; p++) {
        int rc = check_alive(rings[p], now);
        if (rc < 0)
            return rc;
    }
    /* Pick every message's partition first, then claim each partition's share
     * with one fetch-add: a batch is contiguous within each partition, and the
     * per-message loop below touches no shared counter. out_offsets holds the
     * key hashes until their slots are written. */
    const int keyed = keys && mode == GF_PART_KEYHASH;
    const uint8_t *kp = keys;
    if (keys) {
        for (uint32_t i = 0; i < count; i++) {
            uint32_t h = gf_murmur2(kp, key_lens[i]);
            out_offsets[i] = h;
            if (keyed)
                out_parts[i] = (h & 0x7fffffffu) % n;
            kp += key_lens[i];
        }
    }
    if (!keyed) {
        uint32_t p = (uint32_t)(__atomic_fetch_add(rr, count, __ATOMIC_RELAXED) % n);
        for (uint32_t i = 0; i < count; i++) {   /* (base + i) % n without a division each */
            out_parts[i] = p;
            if (++p == n)
                p = 0;
        }
    }
    /* next[p]: messages, then first offset, then next offset of partition p's
     * share; took[p]: offsets its claim took (padding included), then where it ends */
    uint64_t small[128];
    uint64_t *next = n <= 64 ? small : calloc(2 * (size_t)n, sizeof *next);
    if (!next)
        return gf_fail(GF_E_FULL, "out of memory");
    if (next == small)
        memset(small, 0, sizeof small);
    uint64_t *took = next + n;
    for (uint32_t i = 0; i < count; i++)
        next[out_parts[i]]++;
    /* with messages larger than a slot, each message's offset and span (moff,
     * mspan) and the padding a partition's share needs are laid out at its claim */
    uint64_t *moff = NULL, *mspan = NULL;
    if (multi) {
        moff = malloc((uint64_t)count * 2 * sizeof *moff);
        if (!moff) {
            if (next != small)
                free(next);
            return gf_fail(GF_E_FULL, "out of memory");
        }
        mspan = moff + count;
        for (uint32_t i = 0; i < count; i++)
            mspan[i] = span_of(rings[out_parts[i]], (uint64_t)(keys ? key_lens[i] : 0u) + val_lens[i]);
    }
    for (uint32_t p = 0; p < n; p++) {
        if (!next[p])
            continue;
        uint64_t share = next[p];
        int64_t first;
        if (!multi) {
            first = claim(rings[p], share);
            took[p] = share;
        } else {
            /* this partition's messages in order: their spans, then one claim */
            uint64_t k = 0, *sp = malloc(share * 2 * sizeof *sp);
            if (!sp) {
                first = gf_fail(GF_E_FULL, "out of memory");
            } else {
                for (uint32_t i = 0; i < count; i++)
                    if (out_parts[i] == p)
                        sp[k++] = mspan[i];
                first = claim_spans(rings[p], (uint32_t)k, sp, sp + k);
                if (first >= 0)      /* padding included: the last message's end */
                    took[p] = sp[share + k - 1] + sp[k - 1] - (uint64_t)first;
                k = 0;
                for (uint32_t i = 0; i < count && first >= 0; i++)
                    if (out_parts[i] == p)
                        moff[i] = sp[share + k++];
                free(sp);
            }
        }
        if (first < 0) {   /* impossible tail: earlier partitions' claims are abandoned by readers */
            if (first == GF_E_FULL_RING) {
                /* a gated partition has no room: the batch writes nothing */
                full_part = p;
                unclaim(rings, next, took, p);
                gf_fail(GF_E_FULL_RING, "partition %u has no room for %llu message(s) of the batch: "
                        "a gating reader has not read far enough", p, (unsigned long long)share);
            }
            if (next != small)
                free(next);
            free(moff);
            return first;
        }
        next[p] = (uint64_t)first;
        took[p] += (uint64_t)first;     /* from here on: where the claim ends */
    }
    kp = keys;
    const uint8_t *vp = vals;
    int64_t abandoned = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t kl = keys ? key_lens[i] : 0u, vl = val_lens[i], p = out_parts[i];
        uint32_t h = keys ? (uint32_t)out_offsets[i] : 0;
        uint64_t off = next[p]++;
        if (multi) {   /* next[p] is where the partition's claim has got to */
            off = moff[i];
            pad_publish(rings[p], next[p] - 1, off);
            next[p] = off + mspan[i];
        }
        int rc = slot_publish(rings[p], off, kp, kl, keys ? GF_MSG_HAS_KEY : 0u, h, NULL, 0, vp, vl, ts_ns, NULL);
        if (__builtin_expect(rc != GF_OK, 0)) {
            if (rc == TAKE_GAVE_WAY) {
                int64_t more = batch_rest(rings, n, out_parts, i, count, kp, key_lens, vp, val_lens, next, took,
                                          moff, mspan, ts_ns, now, out_offsets);
                abandoned = more < 0 ? more : abandoned + more;
                break;
            }
            abandoned++;
        }
        out_offsets[i] = off;
        kp += kl;
        vp += vl;
    }
    if (next != small)
        free(next);
    free(moff);
    wake_readers(rings[0]->f);
    if (__builtin_expect(rings[0]->f->durable, 0)) {
        /* each touched ring once: msync writes back only the dirty pages of the range */
        uint8_t *touched = calloc(n, 1);
        if (!touched)
            return gf_fail(GF_E_FULL, "out of memory");
        int rc = GF_OK;
        for (uint32_t i = 0; i < count; i++)
            touched[out_parts[i]] = 1;
        for (uint32_t p = 0; p < n && rc == GF_OK; p++)
            if (touched[p])
                rc = ring_sync(rings[p], 0, rings[p]->capacity);
        free(touched);
        if (rc < 0)
            return rc;
    }
    if (abandoned < 0)
        return abandoned;
    if (abandoned)
        return gf_fail(GF_E_ABANDONED, "%u of %u batch messages were reclaimed by readers after the bounded wait",
                       (uint32_t)abandoned, count);
    return count;
}

int64_t gf_test_claim_slot(gf_ring *r)
{
    int64_t n = claim(r, 1);
    if (n < 0)
        return n;
    /* its owner word names a token no handle has: a writer that died */
    st_rlx(owner_at(r, (uint64_t)n), owner_word_as(OWNER_NOBODY, (uint64_t)n));
    st_rel(seq_at(r, (uint64_t)n), 2 * (uint64_t)n + 1);
    return n;
}

int64_t gf_test_claim_span(gf_ring *r, uint32_t span)
{
    if (span == 0 || span > r->capacity)
        return gf_fail(GF_E_INVAL, "span %u out of range (1 to %u slots)", span, r->capacity);
    uint64_t k = span, off;
    int64_t t = claim_spans(r, 1, &k, &off);
    if (t < 0)
        return t;
    pad_publish(r, (uint64_t)t, off);
    int rc = span_take(r, off, k);
    if (rc != GF_OK)
        return rc < 0 ? rc : rc == TAKE_GAVE_WAY ? gave_way(off)
                           : gf_fail(GF_E_ABANDONED, "offset %llu was overwritten at once", (unsigned long long)off);
    st_rlx(owner_at(r, off), owner_word_as(OWNER_NOBODY, off));   /* as a writer that died */
    return (int64_t)off;   /* every slot left "being written" */
}

int gf_test_publish(gf_ring *r, uint64_t n, const uint8_t *val, uint32_t vlen)
{
    int rc = check_msg(r, 0, 0, vlen);
    if (rc < 0)
        return rc;
    rc = slot_publish(r, n, NULL, 0, 0u, 0u, NULL, 0, val, vlen, gf_now_ns(), NULL);
    return rc == TAKE_GAVE_WAY ? gave_way(n) : rc;
}

/* ---- reading ------------------------------------------------------------------- */

/* A reader steps over offset pos, whose word seq says it is not published:
 * the word becomes seq_skip_word's (a writer in the slot keeps it: it may only
 * be paused), counted as abandoned, or as a gap when pos gave way to an older
 * writer still in the slot. 1 if stepped over, 0 if the word changed meanwhile
 * (look again), -1 if the lease could not be pinned: the region may have been
 * reclaimed and handed on since we looked, and is written only while pinned. */
static __attribute__((noinline, cold)) int read_step_over(gf_ring *r, gf_cursor *c, _Atomic uint64_t *q,
                                                         uint64_t pos, uint64_t seq)
{
    if (!gf_lease_pin(r->f, r->lease, r->lease_id))
        return -1;
    int stepped = cas(q, &seq, seq_skip_word(r, pos, seq));
    if (stepped) {
        faa(&r->hdr->abandoned, seq_skip_count(pos, seq));
        if ((seq & 1) && (seq & GF_SEQ_VALUE) + 1 != 2 * pos + 2)
            c->gaps++;
        else
            c->abandoned++;
    }
    gf_lease_unpin(r->lease);
    return stepped;
}

/* Read up to `max` messages of one ring from cursor c. *stalled is set to the
 * monotonic deadline of a slot we are waiting on (an unfinished write). */
static uint32_t ring_read(gf_ring *r, gf_cursor *c, uint32_t part, uint32_t max, gf_msg_meta *meta,
                          uint8_t *buf, uint64_t buf_size, uint64_t *used, const gf_poller *dest,
                          int64_t now, int64_t *stalled, int *err)
{
    if (!gf_lease_alive(r->lease, r->lease_id, now)) {
        c->expired = 1;
        return 0;
    }
    c->expired = 0;
    const uint64_t cap = r->capacity;
    const int verify = r->crc && !c->no_verify;
    uint64_t tail = ld_acq(&r->hdr->tail);
    if (tail >= MAX_OFFSET) {
        *err = gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)tail);
        return 0;
    }
    uint64_t pos = c->pos, used0 = *used, pos0 = c->pos;
    if (tail > cap && pos < tail - cap) {
        c->lost += tail - cap - pos;
        pos = tail - cap;
        c->stall_since = 0;
    }
    uint32_t got = 0;
    while (got < max && pos < tail) {
        struct gf_slot *s = slot_at(r, pos);
        _Atomic uint64_t *q = seq_at(r, pos);
        const uint64_t want = 2 * pos + 2;
        uint64_t seq = ld_acq(q);
        if (seq == want) {
            struct gf_slot h;
            memcpy((uint8_t *)&h + 8, (uint8_t *)s + 8, GF_SLOT_HDR_SIZE - 8);
            uint64_t total = (uint64_t)h.key_len + h.hdr_len + h.val_len +
                             ((h.flags & GF_MSG_STAMP) ? GF_STAMP_SIZE : 0);
            uint64_t span = span_of(r, total);
            /* a span never straddles the ring's end: longer is hostile or damaged */
            int fits = total <= r->max_msg && slot_index(r, pos) + span <= cap;
            if (fits && buf && *used + total > buf_size) {
                if (got == 0 && *used == 0)
                    *err = gf_fail(GF_E_BUFFER, "a %llu-byte message (offset %llu) does not fit the %llu-byte "
                                   "read buffer: give the reader a buf_size of at least %llu bytes (or max_batch "
                                   "times the slot size, if larger)",
                                   (unsigned long long)total, (unsigned long long)pos,
                                   (unsigned long long)buf_size, (unsigned long long)total);
                break;
            }
            uint32_t crc = 0, token = 0;
            uint8_t *vd = NULL;
            if (fits && buf && dest && h.val_len >= GF_DIRECT_MIN)
                vd = dest->value_dest(dest->dest_ctx, h.val_len, &token);
            if (vd) {
                /* the value straight into its final place; key, headers and stamp
                 * into buf where they would have been, so rows read the same */
                const uint8_t *src = (uint8_t *)s + GF_SLOT_HDR_SIZE;
                uint8_t *d = buf + *used;
                uint64_t pre = (uint64_t)h.key_len + h.hdr_len, post = total - pre - h.val_len;
                if (!verify) {
                    memcpy(d, src, pre);
                    gf_copy(vd, src + pre, h.val_len);
                    memcpy(d + pre + h.val_len, src + pre + h.val_len, post);
                } else {
                    uint32_t k = gf_slot_crc_seed(pos, (const uint8_t *)&h + 8);
                    if (pre)
                        k = gf_copy_crc(d, src, pre, k);
                    k = gf_copy_crc(vd, src + pre, h.val_len, k);
                    if (post)
                        k = gf_copy_crc(d + pre + h.val_len, src + pre + h.val_len, post, k);
                    crc = k ^ ~0u;
                }
            } else if (fits && !buf) {   /* read in place (gf_ring_peek): nothing to copy */
                if (verify)
                    crc = gf_slot_crc(pos, (const uint8_t *)&h + 8, (uint8_t *)s + GF_SLOT_HDR_SIZE, total);
            } else if (fits && !verify)
                gf_copy(buf + *used, (uint8_t *)s + GF_SLOT_HDR_SIZE, total);
            else if (fits)   /* verified: the checksum is summed as the bytes are copied */
                crc = gf_copy_crc(buf + *used, (uint8_t *)s + GF_SLOT_HDR_SIZE, total,
                                  gf_slot_crc_seed(pos, (const uint8_t *)&h + 8)) ^ ~0u;
            fence_acq();   /* seqlock: bytes copied above are validated by the re-reads below */
            if (ld_rlx(q) != want)
                goto lapped;
            /* the slots after the first have no word of this message's: a later
             * lap claims them only after the tail passes pos + capacity */
            if (span > 1 && ld_rlx(&r->hdr->tail) > pos + cap)
                goto lapped;
            if (!fits) {     /* published with impossible lengths: hostile or damaged */
                c->corrupt++;
                pos++;
                continue;
            }
            if (verify && crc != h.crc) {
                c->corrupt++;
                pos++;
                continue;
            }
            if ((h.flags & GF_MSG_CONTROL) && !c->controls) {   /* a transaction marker: not data */
                pos += span;
                c->gaps += span;
                c->stall_since = 0;
                continue;
            }
            gf_msg_meta *m = &meta[got];
            m->offset = pos;
            m->ts_ns = h.ts_ns;
            m->pos = buf ? (uint32_t)*used : (uint32_t)slot_index(r, pos);   /* in place: the slot */
            m->key_len = h.key_len;
            m->hdr_len = h.hdr_len;
            m->val_len = h.val_len;
            m->key_hash = h.key_hash;
            m->flags = h.flags;
            m->partition = part;
            m->reserved = vd ? token + 1 : 0;
            if (buf)
                *used += total;
            got++;
            pos += span;
            c->gaps += span - 1;
            c->stall_since = 0;
            continue;
        }
        if (seq == (want | GF_SEQ_GAP)) {   /* inside a message that began earlier, or padding */
            c->gaps++;
            pos++;
            continue;
        }
        if (seq == (want | GF_SEQ_ABANDONED)) {
            c->abandoned++;
            pos++;
            c->stall_since = 0;
            continue;
        }
        if ((seq & GF_SEQ_VALUE) > want) {
        lapped:
            /* overwritten before or while we read it: the reader learns how many it lost */
            tail = ld_acq(&r->hdr->tail);
            uint64_t np = tail > cap ? tail - cap : pos + 1;
            if (np <= pos)
                np = pos + 1;
            c->lost += np - pos;
            pos = np;
            c->stall_since = 0;
            if (tail >= MAX_OFFSET)
                break;
            continue;
        }
        if ((seq & 1) && (seq & GF_SEQ_ABANDONED)) {
            /* a writer already stepped over, still in the slot: pos is its
             * message (abandoned), or a later lap's offset that gives way to it
             * (no message: its writer claims again; the ring counts it) */
            if ((seq & GF_SEQ_VALUE) + 1 == want) {
                c->abandoned++;
                pos++;
                c->stall_since = 0;
                continue;
            }
            if (seq_skipped(r, pos, seq)) {
                c->gaps++;
                pos++;
                c->stall_since = 0;
                continue;
            }
            int stepped = read_step_over(r, c, q, pos, seq);
            if (stepped < 0)
                break;
            if (stepped) {
                pos++;
                c->stall_since = 0;
            }
            continue;
        }
        /* claimed but not yet published: a writer is busy, or died. Every offset
         * below stall_tail was claimed before stall_since, so one bounded wait
         * covers them all: a batch left half-written by a dead writer costs
         * readers one wait, not one per slot. */
        int64_t mono = gf_mono_ns();
        if (!c->stall_since || pos >= c->stall_tail) {
            c->stall_since = mono;
            c->stall_tail = tail;
        }
        if (mono - c->stall_since >= r->f->stall_ns) {
            GF_FAULT(GF_FAULT_ABANDON);
            int stepped = read_step_over(r, c, q, pos, seq);
            if (stepped < 0)
                break;
            pos += (uint64_t)stepped;
            continue;
        }
        int64_t deadline = c->stall_since + r->f->stall_ns;
        if (!*stalled || deadline < *stalled)
            *stalled = deadline;
        break;
    }
    /* The region was reclaimed and handed to someone else mid-read: nothing we
     * copied can be trusted. (Expiry alone leaves the bytes valid.) */
    if (ld_acq(&r->lease->id) != r->lease_id) {
        *used = used0;
        c->pos = pos0;
        c->expired = 1;
        return 0;
    }
    c->pos = pos;
    return got;
}

uint32_t gf_ring_read(gf_ring *r, gf_cursor *c, uint32_t part, uint32_t max, gf_msg_meta *meta,
                      uint8_t *buf, uint64_t buf_size, uint64_t *used, int64_t now,
                      int64_t *stalled, int *err)
{
    return ring_read(r, c, part, max, meta, buf, buf_size, used, NULL, now, stalled, err);
}

static uint32_t poll_once(gf_ring **rings, gf_cursor *cursors, uint32_t n, uint32_t start, uint32_t max,
                          gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size, const gf_poller *dest,
                          int64_t now, int64_t *stalled, int *err)
{
    uint64_t used = 0;
    uint32_t got = 0;
    if (!now)
        now = gf_now_ns();      /* one clock read per look, not one per partition */
    for (uint32_t k = 0; k < n && got < max && *err == GF_OK; k++) {
        uint32_t i = (start + k) % n;
        if (rings[i])
            got += ring_read(rings[i], &cursors[i], i, max - got, meta + got, buf, buf_size, &used,
                             dest, now, stalled, err);
    }
    return got;
}

/* Sleep on the fabric's wake word until look(ctx, &stalled) finds something
 * (returns nonzero, which is returned) or `deadline` (monotonic ns) passes
 * (returns 0). Wakes at least every 50 ms (leases may expire, writers may die),
 * and never past the time it advertises in wait_until, or producers would
 * stop waking it. `stalled`, set by look, is the deadline of a slot still being
 * written: the sleep ends there to step over it. */
typedef int64_t (*look_fn)(void *ctx, int64_t *stalled);

static int64_t sleep_for(gf_fabric *f, int64_t deadline, look_fn look, void *ctx)
{
    for (;;) {
        int64_t t = gf_mono_ns();
        int64_t until = deadline - t > 50000000 ? t + 50000000 : deadline;
        int64_t cur = atomic_load(&f->hdr->wait_until);
        while (cur < until && !atomic_compare_exchange_weak(&f->hdr->wait_until, &cur, until))
            ;
        atomic_fetch_add(&f->hdr->waiters, 1);   /* seq_cst: after wait_until, before our last look */
        atomic_store(&f->hdr->armed, 1);
        uint32_t w = atomic_load(&f->hdr->wake);
        int64_t stalled = 0;
        int64_t r = look(ctx, &stalled);
        int64_t mono = gf_mono_ns();
        if (r || mono >= deadline) {
            atomic_fetch_sub(&f->hdr->waiters, 1);
            return r;
        }
        if (!atomic_load(&f->hdr->armed)) {
            /* a producer disarmed us after we armed: its message may have landed
             * after our look and its wake before our sleep; look again instead */
            atomic_fetch_sub(&f->hdr->waiters, 1);
            continue;
        }
        int64_t sleep = until - mono;
        if (stalled && stalled - mono < sleep)
            sleep = stalled - mono;
        if (sleep > 0)
            gf_futex_wait(&f->hdr->wake, w, sleep);
        atomic_fetch_sub(&f->hdr->waiters, 1);
    }
}

/* poll_wait's look for sleep_for: its arguments, and the error it met */
struct poll_look {
    gf_ring **rings;
    gf_cursor *cursors;
    uint32_t n, start, max;
    gf_msg_meta *meta;
    uint8_t *buf;
    uint64_t buf_size;
    const gf_poller *dest;
    int64_t now;
};

static int64_t poll_look(void *ctx, int64_t *stalled)
{
    struct poll_look *a = ctx;
    int err = GF_OK;
    uint32_t got = poll_once(a->rings, a->cursors, a->n, a->start, a->max, a->meta, a->buf, a->buf_size,
                             a->dest, a->now, stalled, &err);
    return err ? (int64_t)err : (int64_t)got;
}

/* Read the rings from their cursors, waiting up to timeout_ns for a message,
 * telling *t0 when it began to wait (0: it found something, or an
 * error, at the first look) */
static int64_t poll_wait(gf_fabric *f, gf_ring **rings, gf_cursor *cursors, uint32_t n, uint32_t start,
                         uint32_t max_msgs, gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size,
                         const gf_poller *dest, int64_t now_ns, int64_t timeout_ns, int64_t spin_ns,
                         int64_t *waited_from)
{
    if (n == 0 || max_msgs == 0)
        return 0;
    if (buf_size > UINT32_MAX)
        buf_size = UINT32_MAX;
    int err = GF_OK;
    int64_t stalled = 0;
    uint32_t got = poll_once(rings, cursors, n, start, max_msgs, meta, buf, buf_size, dest, now_ns, &stalled, &err);
    if (got || err || timeout_ns == 0)
        return err ? (int64_t)err : (int64_t)got;
    const int64_t t0 = *waited_from = gf_mono_ns();
    const int64_t deadline = timeout_ns < 0 ? INT64_MAX : t0 + timeout_ns;
    /* a short spin catches the next message without a sleep/wake round trip
     * (never past the poll's own deadline) */
    if (spin_ns > deadline - t0)
        spin_ns = deadline - t0;
    while (spin_ns > 0 && gf_mono_ns() - t0 < spin_ns) {
        /* a few pauses only: one costs 40-140 cycles on current x86, and each
         * costs the spinning reader latency */
        for (int i = 0; i < 4; i++)
            cpu_relax();
        stalled = 0;
        got = poll_once(rings, cursors, n, start, max_msgs, meta, buf, buf_size, dest, now_ns, &stalled, &err);
        if (got || err)
            return err ? (int64_t)err : (int64_t)got;
    }
    struct poll_look a = {rings, cursors, n, start, max_msgs, meta, buf, buf_size, dest, now_ns};
    return sleep_for(f, deadline, poll_look, &a);
}

/* Adaptive spin: a reader whose messages come a few tens of microseconds apart
 * pays a cross-CPU futex wake-up for each (16-29 us on a VM) unless it spins
 * past the gap; one that waits long should not burn a CPU. After a wait that
 * ended with messages within reach, aim at twice the wait (which includes the
 * wake-up when it slept, so a sleeper learns to spin next time), a quarter of
 * the way at a time; after a longer wait, or none, halve. */
static void spin_learn(gf_poller *p, int64_t waited, int64_t rc)
{
    int64_t target = 2 * waited;
    if (rc > 0 && target <= GF_SPIN_MAX_NS)
        p->spin_learnt += (target - p->spin_learnt) / 4;
    else
        p->spin_learnt /= 2;
    if (p->spin_learnt > GF_SPIN_MAX_NS)
        p->spin_learnt = GF_SPIN_MAX_NS;
    if (p->spin_learnt < 0)
        p->spin_learnt = 0;
}

/* The Python reader's hot path: one struct instead of twelve converted
 * arguments, and the bookkeeping it would otherwise do with cdata reads. */
int64_t gf_poller_poll(gf_poller *p, uint32_t max_msgs, int64_t now_ns, int64_t timeout_ns,
                       int64_t spin_ns)
{
    if (max_msgs > p->max_batch)
        max_msgs = p->max_batch;
    int adaptive = spin_ns == GF_SPIN_ADAPTIVE;
    int64_t t0 = 0;
    int64_t rc = poll_wait(p->f, p->rings, p->cursors, p->n, p->start, max_msgs, p->meta, p->buf,
                           p->buf_size, p->value_dest ? p : NULL, now_ns, timeout_ns, adaptive ? p->spin_learnt : spin_ns < 0 ? 0 : spin_ns,
                           &t0);
    if (adaptive && t0)     /* it waited: learn from how long */
        spin_learn(p, gf_mono_ns() - t0, rc);
    if (p->n > 1)
        p->start = (p->start + 1) % p->n;   /* fairness: the next look starts one further */
    p->used = 0;
    p->expired = 0;
    if (rc > 0) {
        const gf_msg_meta *m = &p->meta[rc - 1];
        p->used = (uint64_t)m->pos + m->key_len + m->hdr_len + m->val_len +
                  ((m->flags & GF_MSG_STAMP) ? GF_STAMP_SIZE : 0);
    } else if (rc == 0) {
        for (uint32_t i = 0; i < p->n; i++)
            if (p->rings[i] && p->cursors[i].expired)
                p->expired++;
    }
    return rc;
}

/* ---- waiting without reading ---------------------------------------------------
 * gf_poller_wait sleeps like gf_poller_poll but never reads: the cursors do not move,
 * so a caller that gives up (an asyncio task cancelled while a helper thread
 * waits for it) leaves the reader exactly where it was. Same futex protocol as
 * gf_poller_poll (waiters / wait_until / armed / wake in the fabric header). */

/* 1 if a read of r from c would do something: return a message, count a lost
 * gap, step over an abandoned or overwritten slot, or start the bounded wait on
 * an unfinished one. Reads the cursor, never writes it. An expired ring is not
 * readable (a restart writes other rings: the caller re-reads the directory on
 * its own schedule). *stalled gets the deadline of a slot still being written. */
static int ring_readable(gf_ring *r, const gf_cursor *c, int64_t now, int64_t mono, int64_t *stalled)
{
    if (!gf_lease_alive_query(r->lease, r->lease_id, now))
        return 0;
    uint64_t tail = ld_acq(&r->hdr->tail);
    uint64_t pos = c->pos;
    if (tail >= MAX_OFFSET)
        return 1;                       /* impossible: the read reports it */
    if (pos >= tail)
        return 0;
    if (tail > r->capacity && pos < tail - r->capacity)
        return 1;                       /* fell behind the ring: the read counts the loss */
    uint64_t w = ld_acq(seq_at(r, pos)), seq = w & GF_SEQ_VALUE;
    if (seq >= 2 * pos + 2)
        return 1;                       /* published, abandoned or overwritten */
    if ((seq & 1) && (w & GF_SEQ_ABANDONED))
        return 1;                       /* its writer was stepped over: the read steps on */
    /* claimed, not yet published: the read starts the bounded wait, then steps over it */
    if (!c->stall_since || pos >= c->stall_tail)
        return 1;
    int64_t deadline = c->stall_since + r->f->stall_ns;
    if (mono >= deadline)
        return 1;
    if (!*stalled || deadline < *stalled)
        *stalled = deadline;
    return 0;
}

static int poller_readable(const gf_poller *p, int64_t *stalled)
{
    int64_t now = gf_now_ns(), mono = gf_mono_ns();
    for (uint32_t i = 0; i < p->n; i++)
        if (p->rings[i] && ring_readable(p->rings[i], &p->cursors[i], now, mono, stalled))
            return 1;
    return 0;
}

/* Block until some ring of p is readable (returns 1) or timeout_ns passes
 * (returns 0; a negative timeout waits for ever). */
static int64_t wait_look(void *ctx, int64_t *stalled)
{
    return poller_readable(ctx, stalled);
}

int64_t gf_poller_wait(gf_poller *p, int64_t timeout_ns)
{
    int64_t stalled = 0;
    if (poller_readable(p, &stalled))
        return 1;
    if (timeout_ns == 0)
        return 0;
    const int64_t deadline = timeout_ns < 0 ? INT64_MAX : gf_mono_ns() + timeout_ns;
    return sleep_for(p->f, deadline, wait_look, p);
}

/* ---- a waiter thread for event loops --------------------------------------------
 * gf_waiter_run is the whole body of a dedicated thread: it takes wait
 * requests (gf_waiter_request, from the event loop's thread), answers each with
 * gf_poller_wait and writes 8 bytes to w->fd (an eventfd the loop watches).
 * It never returns to the caller's runtime between requests, so an answer
 * costs one futex wake-up plus one eventfd wake-up, and no interpreter lock
 * changes hands. The requester keeps every poller it passed alive until the
 * request is answered (w->done). */
#include <unistd.h>

int64_t gf_waiter_run(gf_waiter *w)
{
    uint32_t seen = __atomic_load_n(&w->done, __ATOMIC_ACQUIRE);
    for (;;) {
        if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
            return 0;
        uint32_t req = __atomic_load_n(&w->req, __ATOMIC_ACQUIRE);
        if (req == seen) {
            gf_futex_wait((_Atomic uint32_t *)&w->req, req, -1);
            continue;
        }
        /* a newer request may overwrite p/timeout while we read them: each value
         * is one the requester keeps valid, and req is re-read after the answer */
        gf_poller *p = __atomic_load_n(&w->p, __ATOMIC_ACQUIRE);
        int64_t timeout = __atomic_load_n(&w->timeout_ns, __ATOMIC_ACQUIRE);
        const int64_t deadline = timeout < 0 ? INT64_MAX : gf_mono_ns() + timeout;
        int64_t r = 0;
        int superseded = 0;
        while (p) {
            /* in slices, so a stop or a newer request (a cancelled await) need not
             * wait for this request's whole timeout */
            int64_t left = deadline - gf_mono_ns();
            if (left < 0)
                left = 0;
            int64_t slice = left > 50000000 ? 50000000 : left;
            r = gf_poller_wait(p, slice);
            if (r || slice == left)
                break;
            if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
                return 0;
            if (__atomic_load_n(&w->req, __ATOMIC_ACQUIRE) != req) {
                superseded = 1;     /* the newer request's answer covers this one */
                break;
            }
        }
        if (superseded)
            continue;
        __atomic_store_n(&w->result, r, __ATOMIC_RELEASE);
        __atomic_store_n(&w->done, req, __ATOMIC_RELEASE);
        seen = req;
        uint64_t one = 1;
        if (write(w->fd, &one, sizeof one) < 0 && !__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
            return gf_fail(GF_E_IO, "waiter: cannot write its eventfd");
    }
}

uint32_t gf_waiter_request(gf_waiter *w, gf_poller *p, int64_t timeout_ns)
{
    __atomic_store_n(&w->p, p, __ATOMIC_RELEASE);
    __atomic_store_n(&w->timeout_ns, timeout_ns, __ATOMIC_RELEASE);
    uint32_t req = __atomic_add_fetch(&w->req, 1, __ATOMIC_ACQ_REL);
    gf_futex_wake_all((_Atomic uint32_t *)&w->req);
    return req;
}

void gf_waiter_stop(gf_waiter *w)
{
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&w->req, 1, __ATOMIC_ACQ_REL);
    gf_futex_wake_all((_Atomic uint32_t *)&w->req);
}

/* ---- back-pressure ----------------------------------------------------------------
 * A gating reader (a consumer group, or a consumer that opted in) needs every
 * offset from its position on. Whoever moves a gating reader (a commit, a poll,
 * a reader found stale) stores the ring's gate: the lowest live position plus
 * the capacity, or 0 when nobody gates. Producers claim below the gate only
 * (claim above); one without room sleeps on gate_wake. All of it touches the
 * ring region only while the ring's lease is still the one it was opened for. */

static int ours(const gf_ring *r)
{
    if (ld_acq(&r->lease->id) != r->lease_id)
        return gf_fail(GF_E_EXPIRED, "partition lease %llu is gone", (unsigned long long)r->lease_id);
    return GF_OK;
}

int gf_ring_set_on_full(gf_ring *r, uint32_t on_full)
{
    if (on_full > GF_FULL_RAISE)
        return gf_fail(GF_E_INVAL, "on_full %u is not overwrite (0), block (1) or raise (2)", on_full);
    int rc = ours(r);
    if (rc == GF_OK)
        r->hdr->on_full = on_full;
    return rc;
}

int gf_ring_set_gate(gf_ring *r, uint64_t gate)
{
    int rc = ours(r);
    if (rc < 0)
        return rc;
    /* Dekker with gf_ring_wait_room: our store (seq_cst) is ordered before the
     * load of `blocked`; a waiter counts itself before its look at the gate. */
    atomic_store(&r->hdr->gate, gate);
    if (atomic_load(&r->hdr->blocked)) {
        faa(&r->hdr->gate_wake, 1);
        gf_futex_wake_all(&r->hdr->gate_wake);
    }
    return GF_OK;
}

int gf_ring_gate_get(gf_ring *r, gf_gate_state *out)
{
    memset(out, 0, sizeof *out);
    out->capacity = r->capacity;
    int rc = ours(r);
    if (rc < 0)
        return rc;
    out->gate = ld_acq(&r->hdr->gate);
    out->tail = ld_acq(&r->hdr->tail);
    out->blocked_ns = ld_acq(&r->hdr->blocked_ns);
    out->full_raised = ld_acq(&r->hdr->full_raised);
    out->blocked = ld_acq(&r->hdr->blocked);
    out->on_full = r->hdr->on_full;
    return GF_OK;
}

int gf_ring_wait_room(gf_ring *r, uint64_t count, int64_t timeout_ns)
{
    int rc = ours(r);
    if (rc < 0)
        return rc;
    struct gf_ring_hdr *h = r->hdr;
    const int64_t t0 = gf_mono_ns();
    const int64_t deadline = timeout_ns < 0 ? INT64_MAX : t0 + timeout_ns;
    atomic_fetch_add(&h->blocked, 1);          /* seq_cst: before our look at the gate */
    for (;;) {
        uint32_t w = atomic_load(&h->gate_wake);
        uint64_t gate = atomic_load(&h->gate), tail = atomic_load(&h->tail);
        if (gate == 0 || tail + count <= gate)
            break;
        if (!gf_lease_alive_query(r->lease, r->lease_id, gf_now_ns()))
            break;                             /* the send says why */
        int64_t now = gf_mono_ns();
        if (now >= deadline) {
            rc = full_ring(r, count, gate);
            break;
        }
        gf_futex_wait(&h->gate_wake, w, deadline - now);
    }
    atomic_fetch_sub(&h->blocked, 1);
    faa(&h->blocked_ns, (uint64_t)(gf_mono_ns() - t0));
    return rc;
}

uint32_t gf_full_partition(void) { return full_part; }

void gf_ring_note_full(gf_ring *r)
{
    if (ours(r) == GF_OK)
        faa(&r->hdr->full_raised, 1);
}

/* ---- in place: loans (zero-copy writes) and peeks (zero-copy reads) ----------- */

uint8_t *gf_ring_slot_data(gf_ring *r, uint32_t index)
{
    if (index >= r->capacity)
        return NULL;
    return r->slots + (uint64_t)index * r->stride + GF_SLOT_HDR_SIZE;
}

int64_t gf_ring_peek(gf_ring *r, gf_cursor *c, uint32_t max, gf_msg_meta *meta, int64_t now_ns)
{
    if (max == 0)
        return 0;
    int err = GF_OK;
    int64_t stalled = 0;
    uint64_t used = 0;
    uint32_t got = ring_read(r, c, 0, max, meta, NULL, 0, &used, NULL, now_ns ? now_ns : gf_now_ns(),
                             &stalled, &err);
    return err ? (int64_t)err : (int64_t)got;
}

uint32_t gf_ring_intact_many(gf_ring *r, const uint64_t *offsets, uint32_t n, uint8_t *intact)
{
    /* Read in place: the bytes of the message at offsets[i] were untouched while
     * in use iff no writer has claimed an offset that maps onto its slots
     * (offset + capacity or later), and the region is still this ring's. One
     * crossing for a whole peek, one look at the lease and tail. */
    fence_acq();
    int mine = ld_acq(&r->lease->id) == r->lease_id;
    uint64_t tail = ld_acq(&r->hdr->tail);
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t o = offsets[i];
        intact[i] = mine && o < MAX_OFFSET && tail <= o + r->capacity && ld_acq(seq_at(r, o)) == 2 * o + 2;
        bad += !intact[i];
    }
    return bad;
}

int gf_loan_begin(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t has_key,
                  const uint8_t *hdrs, uint32_t hlen, uint32_t vlen, int64_t ts_ns, gf_loan *out)
{
    int rc;
    int64_t now = gf_now_ns();
    memset(out, 0, sizeof *out);
    if ((rc = check_msg(r, klen, hlen, vlen)) < 0 || (rc = check_alive(r, now)) < 0)
        return rc;
    uint64_t total = (uint64_t)klen + hlen + vlen, span = span_of(r, total), first;
    int64_t n;
    for (uint32_t tries = 0;; tries++) {
        n = claim_one(r, span, &first);
        if (n < 0)
            return (int)n;
        rc = span_take(r, (uint64_t)n, span);
        if (rc != TAKE_GAVE_WAY || tries >= r->capacity)
            break;
    }
    if (rc != GF_OK)
        return rc < 0 ? rc : rc == TAKE_GAVE_WAY ? gave_way((uint64_t)n)
                           : gf_fail(GF_E_ABANDONED, "offset %llu was overwritten before it could be loaned",
                                     (unsigned long long)n);
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    uint8_t *p = slot_header(r, (uint64_t)n, klen, has_key ? GF_MSG_HAS_KEY : 0u, h, hlen, vlen,
                             ts_ns ? ts_ns : now);
    if (klen) memcpy(p, key, klen);
    if (hlen) memcpy(p + klen, hdrs, hlen);
    out->ring = r;
    out->offset = (uint64_t)n;
    out->first = first;
    out->span = span;
    out->total = total;
    out->value = p + klen + hlen;
    out->state = 0;
    return GF_OK;
}

static void loan_release_slots(gf_ring *r, gf_loan *l)
{
    /* only the slots still ours change: seq_finish expects "being written by us" */
    for (uint64_t j = 1; j < l->span; j++)
        seq_finish(r, l->offset + j, (2 * (l->offset + j) + 2) | GF_SEQ_GAP);
    seq_finish(r, l->offset, (2 * l->offset + 2) | GF_SEQ_ABANDONED);
    wake_readers(r->f);
}

int gf_ring_alive(const gf_ring *r)
{
    return gf_lease_alive(r->lease, r->lease_id, gf_now_ns());
}

int gf_loan_check(const gf_loan *l)
{
    if (l->state != 0)
        return gf_fail(GF_E_INVAL, "the loan of offset %llu is no longer open (%s)", (unsigned long long)l->offset,
                       l->state == 1 ? "committed" : "abandoned");
    return check_alive(l->ring, gf_now_ns());
}

int64_t gf_loan_commit(gf_loan *l)
{
    if (l->state != 0)
        return gf_fail(GF_E_INVAL, "loan of offset %llu was already %s", (unsigned long long)l->offset,
                       l->state == 1 ? "committed" : "abandoned");
    gf_ring *r = l->ring;
    /* a dead lease's region may already be another ring's: touch nothing */
    int rc = check_alive(r, gf_now_ns());
    if (rc < 0) {
        l->state = 2;
        return rc;
    }
    l->state = 1;
    /* a loan held past the bounded wait may have lost its first slot to a reader
     * or to the next lap's writer: then touch nothing, not even the checksum (a
     * lost later slot is found by span_publish, which then abandons the head) */
    if (ld_acq(seq_at(r, l->offset)) != 2 * l->offset + 1) {
        loan_release_slots(r, l);
        return gf_fail(GF_E_ABANDONED, "loan of offset %llu was held past the bounded wait and reclaimed",
                       (unsigned long long)l->offset);
    }
    slot_seal(r, l->offset, l->total);
    rc = span_publish(r, l->offset, l->span);
    wake_readers(r->f);
    if (rc == GF_OK && __builtin_expect(r->f->durable, 0))
        rc = ring_sync(r, l->first, l->offset + l->span - l->first);
    return rc < 0 ? rc : (int64_t)l->offset;
}

int gf_loan_abandon(gf_loan *l)
{
    if (l->state != 0)
        return GF_OK;
    l->state = 2;
    if (!gf_ring_alive(l->ring))
        return GF_OK;       /* a dead lease's region may already be another ring's */
    /* readers step over it at once: no bounded wait for a write that will not come */
    loan_release_slots(l->ring, l);
    return GF_OK;
}

uint32_t gf_sender_pick(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key)
{
    if (s->n == 0)
        return 0;
    return pick(s->mode, s->n, &s->rr, has_key ? gf_murmur2(key, klen) : 0, has_key);
}
