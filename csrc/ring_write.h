/* ring_write.h -- the write path's hot half: taking a message's slots,
 * copying it in, publishing it, claiming its offsets. Inline in each file that
 * writes (single appends, sends, batches, loans), so that the per-message path
 * compiles into one function with no call between files; the rare cases (a
 * stalled or dead writer in the slot, padding, a full ring, durable flushes)
 * are out of line in ring_write.c. */
#ifndef GRAFOS_RING_WRITE_H
#define GRAFOS_RING_WRITE_H
#include <string.h>
#include "ring_internal.h"

/* The steps of a write each file keeps one local copy of and calls (span_take,
 * span_publish, slot_publish): out of line, so that append_one stays small
 * enough for the compiler to inline into each send; `unused` because a file
 * that writes no message (loans take and publish spans only) needs no copy. */
#define WRITE_STEP static __attribute__((noinline, unused))

/* The writer of offset n leaves its slot: from "being written" (2n + 1) to
 * `to`, 1 if so. If it was stepped over meanwhile, the slot is handed on as the
 * last offset that gave way to it, a gap (0: the message is not published);
 * a slot whose skips ran out stays out of use until its ring is restarted. */
static inline int seq_leave(gf_ring *r, uint64_t n, uint64_t to)
{
    _Atomic uint64_t *q = seq_at(r, n);
    uint64_t cur = (2 * n + 1) | (to & GF_SEQ_GAP);   /* a continuation is written as one */
    /* seq_cst: a publish is one side of the Dekker with gf_sleep_for (wake_readers) */
    if (__builtin_expect(gf_cas_sc(q, &cur, to), 1))
        return 1;
    return gf_seq_leave_stepped(r, n, q, cur);
}

static inline void wake_readers(gf_fabric *f)
{
    /* seq_cst, Dekker with gf_sleep_for: our publish (seq_leave's seq_cst CAS)
     * is ordered before this load; a sleeper bumps `waiters` before its last
     * look at the slots. */
    if (__builtin_expect(gf_load_sc(&f->hdr->waiters) != 0, 0) &&
        gf_mono_ns() < gf_load_acq(&f->hdr->wait_until) &&   /* not a count left by a dead sleeper */
        gf_xchg_sc(&f->hdr->armed, 0)) {                      /* the first append since it armed */
        gf_faa(&f->hdr->wake, 1);
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
static inline int slot_take_as(gf_ring *r, uint64_t n, int64_t *t0, int plain)
{
    /* the common case inline: the slot's last tenant finished (an even word of an earlier offset) */
    _Atomic uint64_t *q = seq_at(r, n);
    const uint64_t writing = 2 * n + 1;
    uint64_t cur = gf_load_acq(q), c = cur & GF_SEQ_VALUE;
    if (__builtin_expect(!(c & 1) && c < writing, 1)) {
        if (plain) {
            gf_store_rlx(q, writing | GF_SEQ_GAP);   /* ordered before the bytes by slot_header's release fence */
            return GF_OK;
        }
        if (gf_cas(q, &cur, writing))
            return GF_OK;
    }
    return gf_slot_take_slow(r, n, t0, plain);
}

/* From "being written" to `to`; 0 if it was stepped over meanwhile (seq_leave). */
static inline int seq_finish(gf_ring *r, uint64_t n, uint64_t to)
{
    return seq_leave(r, n, to);
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
    uint64_t cur = gf_load_rlx(q);
    if (__builtin_expect(cur != ((2 * m + 1) | GF_SEQ_GAP), 0))
        return (cur & GF_SEQ_VALUE) == 2 * m + 1 ? seq_leave(r, m, (2 * m + 2) | GF_SEQ_GAP) : 0;
    gf_store_rel(q, (2 * m + 2) | GF_SEQ_GAP);
    return 1;
}

/* Take the `span` slots of a message at offset n. GF_OK: all ours, the caller
 * writes and publishes. Otherwise every slot we did take is already released
 * (head abandoned, the rest gaps) and the result says why: TAKE_LAPPED (the
 * ring overwrote the message before it was written), TAKE_GAVE_WAY (a slot is
 * held by a stalled writer) or GF_E_ABANDONED. */
WRITE_STEP int span_take(gf_ring *r, uint64_t n, uint64_t span)
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

/* Publish a written span: the continuations first (a reader landing inside the
 * message steps over them), the head last, by compare-and-swap (whose release
 * orders the continuations' bytes and words before it). GF_E_ABANDONED if
 * a reader or a lap writer took any of its slots meanwhile (the head is then
 * abandoned too). */
WRITE_STEP int span_publish(gf_ring *r, uint64_t n, uint64_t span)
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
    gf_fence_rel();   /* seqlock: the odd seq is visible before any byte below */
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
WRITE_STEP int slot_publish(gf_ring *r, uint64_t n, const uint8_t *key, uint32_t klen, uint32_t flags,
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
        if (__builtin_expect(r->stream, 0))
            gf_copy_stream(p + klen + hlen, val, vlen);
        else if (vlen)
            gf_copy(p + klen + hlen, val, vlen);
        if (st) memcpy(p + klen + hlen + vlen, st, GF_STAMP_SIZE);
        s->crc = 0;
        return span_publish(r, n, span);
    }
    /* the checksum is summed as the bytes are copied: one pass over the payload */
    uint32_t c = gf_slot_crc_seed(n, (const uint8_t *)s + 8);
    if (klen) c = gf_copy_crc(p, key, klen, c);
    if (hlen) c = gf_copy_crc(p + klen, hdrs, hlen, c);
    GF_FAULT(GF_FAULT_COPY);
    if (__builtin_expect(r->stream, 0))
        c = gf_copy_crc_stream(p + klen + hlen, val, vlen, c);
    else if (vlen)
        c = gf_copy_crc(p + klen + hlen, val, vlen, c);
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

static inline int64_t claim(gf_ring *r, uint64_t count)
{
    if (__builtin_expect(!gf_load_rlx(&r->mapped), 0))
        gf_ring_map(r);
    /* Back-pressure costs one load when nobody gates the ring; a gated ring
     * claims with a CAS so that concurrent producers never pass the gate. */
    uint64_t gate = gf_load_acq(&r->hdr->gate), n;
    if (__builtin_expect(gate != 0, 0)) {
        if (count > r->capacity)
            return gf_fail(GF_E_INVAL, "%llu messages for one partition of %u slots can never fit while a reader gates it",
                           (unsigned long long)count, r->capacity);
        n = gf_load_acq(&r->hdr->tail);
        do {
            if (n + count > gate)
                return gf_full_ring(r, count, gate);
        } while (!gf_cas(&r->hdr->tail, &n, n + count));
    } else
        n = gf_faa(&r->hdr->tail, count);
    if (__builtin_expect(n > GF_MAX_OFFSET || count > GF_MAX_OFFSET - n, 0))   /* n + count: the tail after us */
        return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)n);
    return (int64_t)n;
}

/* Claim one message's offsets: a fetch-add for one slot, else gf_claim_spans.
 * *first gets the first offset claimed (where padding, if any, starts). */
static inline int64_t claim_one(gf_ring *r, uint64_t span, uint64_t *first)
{
    if (__builtin_expect(span == 1, 1)) {
        int64_t n = claim(r, 1);
        *first = (uint64_t)n;
        return n;
    }
    uint64_t off;
    int64_t t = gf_claim_spans(r, 1, &span, &off);
    if (t < 0)
        return t;
    *first = (uint64_t)t;
    gf_pad_publish(r, (uint64_t)t, off);
    return (int64_t)off;
}

/* Append one message. *written (when given) says whether it was published,
 * even when the call then fails (a durable flush that failed after it). */
static inline int64_t append_one(gf_ring *r, const uint8_t *key, uint32_t klen, uint32_t flags,
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
            rc = gf_gave_way((uint64_t)n);
            break;
        }
    }
    wake_readers(r->f);
    if (written)
        *written = rc == GF_OK;
    if (__builtin_expect(r->f->durable, 0) && rc == GF_OK)
        rc = gf_ring_sync(r, first, (uint64_t)n + span - first);
    return rc < 0 ? rc : n;
}

#endif
