/* batch.c -- batches: many messages, one claim per partition, all or nothing
 * on the checks; a message whose claimed slot gave way to a stalled writer is
 * written again at the tail, keeping each partition's order. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include "ring_write.h"

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
    gf_pad_publish(rings[p], next[p], end[p]);
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
                gf_pad_publish(r, next[p] - 1, (uint64_t)off);
                next[p] = (uint64_t)off + spans[i];
            }
            rc = slot_publish(r, (uint64_t)off, kp, kl, flags, h, NULL, 0, vp, vl, ts, NULL);
            if (rc == TAKE_GAVE_WAY) {
                moved[p] = 1;
                gf_pad_publish(r, next[p], end[p]);
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

/* What a batch returns: its count, the error that stopped it, or GF_E_ABANDONED
 * when some of its messages' slots were reclaimed by readers (the rest landed). */
static int64_t batch_result(int64_t abandoned, uint32_t count)
{
    if (abandoned < 0)
        return abandoned;
    if (abandoned)
        return gf_fail(GF_E_ABANDONED, "%u of %u batch messages were reclaimed by readers after the bounded wait",
                       (uint32_t)abandoned, count);
    return count;
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
        first = gf_claim_spans(r, count, spans, offs);
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
            gf_pad_publish(r, end, off);
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
    if (__builtin_expect(r->f->durable, 0) && (rc = gf_ring_sync(r, (uint64_t)first, end - (uint64_t)first)) < 0)
        return rc;
    return batch_result(abandoned, count);
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
        if (gf_cas(&r->hdr->tail, &e, next[q]))
            continue;
        for (uint64_t o = next[q]; o < end[q]; o++) {
            _Atomic uint64_t *sq = seq_at(r, o);
            uint64_t cur = gf_load_acq(sq);
            while ((cur & GF_SEQ_VALUE) < 2 * o + 1 && !seq_skipped(r, o, cur) &&
                   !gf_cas(sq, &cur, seq_skip_word(r, o, cur)))
                ;
            gf_faa(&r->hdr->abandoned, 1);
        }
    }
}

int64_t gf_send_batch(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr, uint32_t count,
                      const uint8_t *keys, const uint32_t *key_lens,
                      const uint8_t *vals, const uint32_t *val_lens, int64_t ts_ns,
                      uint32_t *out_parts, uint64_t *out_offsets, gf_send_result *res)
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
        uint32_t p = (uint32_t)(gf_plain_faa_rlx(rr, count) % n);
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
                first = gf_claim_spans(rings[p], (uint32_t)k, sp, sp + k);
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
                if (res)
                    res->full_part = p;
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
            gf_pad_publish(rings[p], next[p] - 1, off);
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
                rc = gf_ring_sync(rings[p], 0, rings[p]->capacity);
        free(touched);
        if (rc < 0)
            return rc;
    }
    return batch_result(abandoned, count);
}
