/* loan.c -- zero-copy writes: a loan claims and takes a message's slots,
 * writes its key and headers and lends the value's bytes to the caller, who
 * commits (publish) or abandons it. */
#include "ring_write.h"

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
        return rc < 0 ? rc : rc == TAKE_GAVE_WAY ? gf_gave_way((uint64_t)n)
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
    if (gf_load_acq(seq_at(r, l->offset)) != 2 * l->offset + 1) {
        loan_release_slots(r, l);
        return gf_fail(GF_E_ABANDONED, "loan of offset %llu was held past the bounded wait and reclaimed",
                       (unsigned long long)l->offset);
    }
    slot_seal(r, l->offset, l->total);
    rc = span_publish(r, l->offset, l->span);
    wake_readers(r->f);
    if (rc == GF_OK && __builtin_expect(r->f->durable, 0))
        rc = gf_ring_sync(r, l->first, l->offset + l->span - l->first);
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
