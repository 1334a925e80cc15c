/* producer.c -- idempotent producers' registrations: a small lease whose
 * header holds the producer's number and its current epoch (layout.h). The
 * send path (send.c, gf_send_idem) loads the epoch word once per message. */
#include <string.h>
#include "core.h"

/* The registration's header, checked against the lease: NULL with *rc set if
 * the lease is gone or does not hold a registration written for it. */
static struct gf_producer_hdr *registration(gf_fabric *f, uint32_t index, uint64_t id, int fresh, int *rc)
{
    gf_lease_info li;
    if ((*rc = gf_lease_get(f, index, id, &li)) < 0)
        return NULL;
    if (li.size < sizeof(struct gf_producer_hdr)) {
        *rc = gf_fail(GF_E_CORRUPT, "lease %llu is too small to hold a producer registration",
                      (unsigned long long)id);
        return NULL;
    }
    struct gf_producer_hdr *h = (struct gf_producer_hdr *)(f->base + li.offset);
    if (!fresh && (gf_load_acq(gf_atomic64_at(&h->magic)) != GF_PRODUCER_MAGIC || h->lease_id != id)) {
        *rc = gf_fail(GF_E_CORRUPT, "lease %llu does not hold a producer registration", (unsigned long long)id);
        return NULL;
    }
    return h;
}

int gf_producer_init(gf_fabric *f, uint32_t index, uint64_t id, uint32_t number, uint32_t epoch)
{
    if (!gf_lock_held(f))
        return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__);
    int rc;
    struct gf_producer_hdr *h = registration(f, index, id, 1, &rc);
    if (!h)
        return rc;
    memset(h, 0, sizeof *h);
    h->lease_id = id;
    h->number = number;
    gf_store_rel(&h->epoch, epoch);
    gf_store_rel(gf_atomic64_at(&h->magic), GF_PRODUCER_MAGIC);   /* last: the header is whole */
    return gf_dsync(f, h, sizeof *h);
}

int gf_producer_fence(gf_fabric *f, uint32_t index, uint64_t id, uint32_t epoch)
{
    if (!gf_lock_held(f))
        return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__);
    int rc;
    struct gf_producer_hdr *h = registration(f, index, id, 0, &rc);
    if (!h)
        return rc;
    gf_store_rel(&h->epoch, epoch);
    return gf_dsync(f, h, sizeof *h);
}

int64_t gf_producer_epoch(gf_fabric *f, uint32_t index, uint64_t id)
{
    int rc;
    struct gf_producer_hdr *h = registration(f, index, id, 0, &rc);
    return h ? (int64_t)gf_load_acq(&h->epoch) : rc;
}

int gf_idem_bind(gf_fabric *f, gf_idem *d, uint32_t index, uint64_t id)
{
    int rc;
    struct gf_producer_hdr *h = registration(f, index, id, 0, &rc);
    if (!h)
        return rc;
    if (h->number != d->producer)
        return gf_fail(GF_E_CORRUPT, "producer registration %llu names producer %u, not %u",
                       (unsigned long long)id, h->number, d->producer);
    /* The region stays this registration's while the producer renews it: a
     * send past renew_at_ns goes to the slow path, which renews or is fenced,
     * so the word is never read after the lease could have been reclaimed. */
    d->word = &h->epoch;
    return GF_OK;
}
