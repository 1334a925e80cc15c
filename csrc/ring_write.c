/* ring_write.c -- the write path's out-of-line half: a slot whose earlier
 * writer is still in it (paused: give way; dead: take its slots), padding,
 * claims of several slots at once, durable flushes; single appends and the
 * test hooks that leave slots as a killed writer would. The hot half is
 * inline in ring_write.h. */
#define _GNU_SOURCE
#include <sched.h>
#include <string.h>
#include "ring_write.h"

__attribute__((noinline, cold)) int gf_seq_leave_stepped(gf_ring *r, uint64_t n, _Atomic uint64_t *q, uint64_t cur)
{
    for (;;) {
        if ((cur & GF_SEQ_VALUE) != 2 * n + 1)
            return 0;                   /* not ours (a damaged word) */
        uint64_t s = seq_skips(cur);
        if (s == GF_SEQ_SKIP_MAX || s > (GF_MAX_OFFSET - 1 - n) / r->capacity)    /* n + s * capacity: an offset */
            return 0;
        /* the last offset that gave way holds no message: a gap (its own, if none did: abandoned) */
        if (gf_cas(q, &cur, (2 * (n + s * r->capacity) + 2) | (s ? GF_SEQ_GAP : GF_SEQ_ABANDONED)))
            return 0;
    }
}

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
        w = gf_load_acq(seq_at(r, h));
        if ((w & GF_SEQ_VALUE) != 2 * h + 1)
            return 0;
    }
    if (w & GF_SEQ_GAP)
        return 0;
    uint64_t o = gf_load_acq(owner_at(r, h)), token = o >> OWNER_OFF_BITS;
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
        uint64_t i = h + k, w = gf_load_acq(seq_at(r, i));
        if ((w & GF_SEQ_VALUE) != 2 * i + 1 || !(w & GF_SEQ_GAP))
            break;
        fresh += !(w & GF_SEQ_ABANDONED);
        seq_leave(r, i, (2 * i + 2) | GF_SEQ_ABANDONED);
    }
    uint64_t w = gf_load_acq(seq_at(r, h));
    if ((w & GF_SEQ_VALUE) == 2 * h + 1) {
        fresh += !(w & GF_SEQ_ABANDONED);
        seq_leave(r, h, (2 * h + 2) | GF_SEQ_ABANDONED);
    }
    if (fresh)
        gf_faa(&r->hdr->abandoned, fresh);
}

int gf_gave_way(uint64_t n)
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
        if (!gf_cas(seq_at(r, o), &want, want | GF_SEQ_ABANDONED))
            return;
        gf_faa(&r->hdr->abandoned, 1);
    }
}

__attribute__((noinline, cold)) int gf_slot_take_slow(gf_ring *r, uint64_t n, int64_t *t0, int plain)
{
    _Atomic uint64_t *q = seq_at(r, n);
    const uint64_t writing = 2 * n + 1, mine = plain ? writing | GF_SEQ_GAP : writing;
    uint64_t cur = gf_load_acq(q);
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
                    cur = gf_load_acq(q);
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
                cur = gf_load_acq(q);
                continue;
            }
            /* it may only be paused, and copy on when it resumes: give way */
            uint64_t to = seq_skip_word(r, n, cur);
            if (to & 1) {
                if (!gf_cas(q, &cur, to))
                    continue;
                gf_faa(&r->hdr->abandoned, seq_skip_count(n, cur));
                if (!(cur & GF_SEQ_ABANDONED))
                    step_over_rest(r, c >> 1);
                return TAKE_GAVE_WAY;
            }
            /* a damaged word names no writer: take it */
        }
        if (plain) {
            gf_store_rlx(q, mine);   /* ordered before the bytes by slot_header's release fence */
            return GF_OK;
        }
        if (gf_cas(q, &cur, writing))
            return GF_OK;
    }
}

/* Offsets [from, to) hold no message (padding before the ring's end): taken
 * and published as a message's continuations are, with loads and stores. */
void gf_pad_publish(gf_ring *r, uint64_t from, uint64_t to)
{
    int64_t t0 = 0;
    for (uint64_t m = from; m < to; m++)
        if (slot_take_as(r, m, &t0, 1) == GF_OK)
            gap_finish(r, m);
}

int gf_full_ring(const gf_ring *r, uint64_t count, uint64_t gate)
{
    return gf_fail(GF_E_FULL_RING, "no room for %llu message(s): a gating reader has not read past offset %llu",
                   (unsigned long long)count, (unsigned long long)(gate > r->capacity ? gate - r->capacity : 0));
}

/* Claim the offsets of `count` messages of spans[i] slots each, in order, with
 * one compare-and-swap of the tail: a message that would straddle the ring's
 * end is preceded by padding up to it, so every message is contiguous. (A
 * fetch-add cannot know where the claim lands before it is made.) offs[i] gets
 * each message's first offset; returns the first offset claimed (padding
 * included). */
int64_t gf_claim_spans(gf_ring *r, uint32_t count, const uint64_t *spans, uint64_t *offs)
{
    if (__builtin_expect(!gf_load_rlx(&r->mapped), 0))
        gf_ring_map(r);
    const uint64_t cap = r->capacity;
    uint64_t t = gf_load_acq(&r->hdr->tail);
    for (;;) {
        if (t > GF_MAX_OFFSET)
            return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)t);
        uint64_t pos = t;
        for (uint32_t i = 0; i < count; i++) {
            uint64_t idx = pos % cap;
            if (idx + spans[i] > cap)
                pos += cap - idx;
            offs[i] = pos;
            pos += spans[i];
        }
        if (pos > GF_MAX_OFFSET)          /* the tail after the claim */
            return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)t);
        uint64_t gate = gf_load_acq(&r->hdr->gate);      /* back-pressure: never claim past a gating reader */
        if (gate != 0 && pos > gate)
            return pos - t > cap ? gf_fail(GF_E_INVAL, "%llu offsets for one partition of %u slots can never fit while a reader gates it",
                                           (unsigned long long)(pos - t), r->capacity)
                                 : gf_full_ring(r, pos - t, gate);
        if (gf_cas(&r->hdr->tail, &t, pos))
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
int gf_ring_sync(gf_ring *r, uint64_t first, uint64_t count)
{
    gf_fabric *f = r->f;
    int rc = sync_range(f, r->slots, r->stride, r->capacity, first, count);
    if (rc == GF_OK)
        rc = sync_range(f, (uint8_t *)r->seqs, 8, r->capacity, first, count);
    return rc < 0 ? rc : gf_dsync(f, r->hdr, GF_RING_HDR_SIZE);
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

/* ---- test hooks (grafos_test.h) --------------------------------------------------- */

int64_t gf_test_claim_slot(gf_ring *r)
{
    int64_t n = claim(r, 1);
    if (n < 0)
        return n;
    /* its owner word names a token no handle has: a writer that died */
    gf_store_rlx(owner_at(r, (uint64_t)n), owner_word_as(OWNER_NOBODY, (uint64_t)n));
    gf_store_rel(seq_at(r, (uint64_t)n), 2 * (uint64_t)n + 1);
    return n;
}

int64_t gf_test_claim_span(gf_ring *r, uint32_t span)
{
    if (span == 0 || span > r->capacity)
        return gf_fail(GF_E_INVAL, "span %u out of range (1 to %u slots)", span, r->capacity);
    uint64_t k = span, off;
    int64_t t = gf_claim_spans(r, 1, &k, &off);
    if (t < 0)
        return t;
    gf_pad_publish(r, (uint64_t)t, off);
    int rc = span_take(r, off, k);
    if (rc != GF_OK)
        return rc < 0 ? rc : rc == TAKE_GAVE_WAY ? gf_gave_way(off)
                           : gf_fail(GF_E_ABANDONED, "offset %llu was overwritten at once", (unsigned long long)off);
    gf_store_rlx(owner_at(r, off), owner_word_as(OWNER_NOBODY, off));   /* as a writer that died */
    return (int64_t)off;   /* every slot left "being written" */
}

int gf_test_publish(gf_ring *r, uint64_t n, const uint8_t *val, uint32_t vlen)
{
    int rc = check_msg(r, 0, 0, vlen);
    if (rc < 0)
        return rc;
    rc = slot_publish(r, n, NULL, 0, 0u, 0u, NULL, 0, val, vlen, gf_now_ns(), NULL);
    return rc == TAKE_GAVE_WAY ? gf_gave_way(n) : rc;
}
