/* send.c -- a send: the partition pick (Kafka's keyed murmur2 choice, or
 * round robin) and one append, plain or idempotent (stamped, fenced by the
 * registration's epoch, its sequence moved on only once written). */
#include "ring_write.h"

/* Which of n partitions a message goes to: Kafka's keyed choice from its key's
 * murmur2 h, else the next of the round-robin counter rr. */
static inline uint32_t pick(uint32_t mode, uint32_t n, uint64_t *rr, uint32_t h, uint32_t has_key)
{
    if (mode == GF_PART_KEYHASH && has_key)
        return (h & 0x7fffffffu) % n;
    return (uint32_t)(gf_plain_faa_rlx(rr, 1) % n);
}

int64_t gf_send(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr,
                const uint8_t *key, uint32_t klen, uint32_t has_key,
                const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                int64_t ts_ns, gf_send_result *res)
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
    if (__builtin_expect(off == GF_E_FULL_RING, 0) && res)
        res->full_part = p;
    return off < 0 ? off : ((int64_t)p << GF_OFFSET_BITS) | off;
}

/* Idempotent send. The partition's sequence is marked busy for the length of
 * the write, so two threads of one producer never write the same sequence;
 * it moves on only once the message is published, so an attempt that wrote
 * nothing (abandoned by readers, no room) is repeated with the same number.
 * The epoch word is loaded once, before the claim: a producer fenced before
 * that load writes nothing; one fenced during the write is a write in flight,
 * as in any system, and its transaction (if any) is aborted by the fencer.
 * One that fails after its write says so in res (unsure), for the caller to
 * repeat it with the same partition and sequence. */
static int64_t send_idem(gf_sender *s, int again, uint32_t part, uint64_t want, const uint8_t *key,
                         uint32_t klen, uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                         const uint8_t *val, uint32_t vlen, gf_send_result *res)
{
    gf_idem *d = s->idem;
    res->unsure = 0;
    if (!d || !d->word || s->n == 0 || d->n < s->n)
        return gf_fail(GF_E_INVAL, "producer is not bound for idempotent sends");
    int64_t now = gf_now_ns();
    if (now >= d->renew_at_ns)
        return gf_fail(GF_E_RENEW, "producer registration is due for renewal");
    uint32_t cur_epoch = gf_load_acq(gf_atomic32_at(d->word));
    if (cur_epoch != d->epoch)
        return gf_fail(GF_E_FENCED, "producer %u was fenced: its epoch is %u, the registration's %u",
                       d->producer, d->epoch, cur_epoch);
    uint32_t h = has_key ? gf_murmur2(key, klen) : 0;
    uint32_t p = again ? part : pick(s->mode, s->n, &s->rr, h, has_key);
    gf_ring *r = p < s->n ? s->rings[p] : NULL;
    if (!r)
        return gf_fail(GF_E_INVAL, "partition %u is not open", p);
    _Atomic uint64_t *w = gf_atomic64_at(&d->seqs[p]);
    uint64_t seq = gf_load_acq(w);
    if (seq & GF_IDEM_BUSY)
        return gf_fail(GF_E_BUSY, "another send to partition %u is in flight", p);
    if (again && want < seq) {      /* it landed: hand back where, write nothing */
        if (want + 1 != seq || d->last[p] < 0)
            return gf_fail(GF_E_DUPLICATE, "sequence %llu of partition %u is older than the last one written",
                           (unsigned long long)want, p);
        return ((int64_t)p << GF_OFFSET_BITS) | d->last[p];
    }
    if (again && want > seq)
        return gf_fail(GF_E_INVAL, "sequence %llu of partition %u was never attempted", (unsigned long long)want, p);
    if (!gf_cas(w, &seq, seq | GF_IDEM_BUSY))
        return gf_fail(GF_E_BUSY, "another send to partition %u is in flight", p);
    gf_stamp st = {d->producer, d->epoch, seq, d->txn};
    uint32_t flags = GF_MSG_STAMP | (has_key ? GF_MSG_HAS_KEY : 0u) | (d->txn ? GF_MSG_TXN : 0u);
    int written = 0;
    int64_t off = append_one(r, key, klen, flags, h, hdrs, hlen, val, vlen, now, now, &st, &written);
    if (written) {
        /* a write acknowledged late (a durable flush failed after it) still landed */
        d->last[p] = off >= 0 ? off : (int64_t)(gf_load_acq(&r->hdr->tail) - 1);
        gf_store_rel(w, seq + 1);
    } else
        gf_store_rel(w, seq);
    if (__builtin_expect(off == GF_E_FULL_RING, 0))
        res->full_part = p;
    if (off >= 0 && GF_FAULT_FAILS(GF_FAULT_IDEM_WRITTEN))
        off = gf_fail(GF_E_IO, "injected failure after the write of offset %lld", (long long)off);
    if (off < 0 && written) {       /* written, but the caller is told it failed: it may repeat it */
        res->unsure = 1;
        res->unsure_part = p;
        res->unsure_seq = seq;
    }
    return off < 0 ? off : ((int64_t)p << GF_OFFSET_BITS) | off;
}

int64_t gf_send_idem(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key,
                     const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                     gf_send_result *res)
{
    return send_idem(s, 0, 0, 0, key, klen, has_key, hdrs, hlen, val, vlen, res);
}

int64_t gf_send_idem_again(gf_sender *s, uint32_t part, uint64_t seq, const uint8_t *key, uint32_t klen,
                           uint32_t has_key, const uint8_t *hdrs, uint32_t hlen,
                           const uint8_t *val, uint32_t vlen, gf_send_result *res)
{
    return send_idem(s, 1, part, seq, key, klen, has_key, hdrs, hlen, val, vlen, res);
}

uint32_t gf_sender_pick(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key)
{
    if (s->n == 0)
        return 0;
    return pick(s->mode, s->n, &s->rr, has_key ? gf_murmur2(key, klen) : 0, has_key);
}
