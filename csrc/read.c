/* read.c -- reads: one ring from a cursor (validated before and after the
 * copy), a poller's look over its rings with a short spin before the futex
 * wait, and in-place peeks. */
#include <string.h>
#include "ring_internal.h"

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
    int stepped = gf_cas(q, &seq, seq_skip_word(r, pos, seq));
    if (stepped) {
        gf_faa(&r->hdr->abandoned, seq_skip_count(pos, seq));
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
    uint64_t tail = gf_load_acq(&r->hdr->tail);
    if (tail > GF_MAX_OFFSET) {
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
        uint64_t seq = gf_load_acq(q);
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
            gf_fence_acq();   /* seqlock: bytes copied above are validated by the re-reads below */
            if (gf_load_rlx(q) != want)
                goto lapped;
            /* the slots after the first have no word of this message's: a later
             * lap claims them only after the tail passes pos + capacity */
            if (span > 1 && gf_load_rlx(&r->hdr->tail) > pos + cap)
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
            tail = gf_load_acq(&r->hdr->tail);
            uint64_t np = tail > cap ? tail - cap : pos + 1;
            if (np <= pos)
                np = pos + 1;
            c->lost += np - pos;
            pos = np;
            c->stall_since = 0;
            if (tail > GF_MAX_OFFSET)
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
    if (gf_load_acq(&r->lease->id) != r->lease_id) {
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

/* poll_wait's look for gf_sleep_for: its arguments, and the error it met */
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
    return gf_sleep_for(f, deadline, poll_look, &a);
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

/* ---- in place: peeks (zero-copy reads) ------------------------------------------- */

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
    gf_fence_acq();
    int mine = gf_load_acq(&r->lease->id) == r->lease_id;
    uint64_t tail = gf_load_acq(&r->hdr->tail);
    uint32_t bad = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t o = offsets[i];
        intact[i] = mine && o <= GF_MAX_OFFSET && tail <= o + r->capacity && gf_load_acq(seq_at(r, o)) == 2 * o + 2;
        bad += !intact[i];
    }
    return bad;
}
