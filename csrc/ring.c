/* ring.c -- partition rings: the geometry of a ring region, formatting one
 * (gf_ring_init), and the process-local handle that opening one checks and
 * copies. The write path is in ring_write.h / ring_write.c, sends and the
 * partition pick in send.c, batches in batch.c, reads and peeks in read.c,
 * the futex wait in wait.c, back-pressure in gate.c, loans in loan.c. */
#include <stdlib.h>
#include <string.h>
#include "ring_internal.h"

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
    r->seqs = gf_atomic64_at(r->slots + (uint64_t)c.capacity * c.stride);
    r->max_msg = (uint64_t)c.capacity * c.stride - GF_SLOT_HDR_SIZE;
    r->crc = !(c.flags & GF_RING_NO_CRC);
    r->stream = (uint64_t)c.capacity * c.stride >= GF_STREAM_RING_BYTES;
    gf_faa(&f->refs, 1);
    *err = GF_OK;
    return r;
}

/* A writer's first claim: a write fault on a shared mapping maps one page (a
 * read fault maps up to 16 around it), so a producer attaching a ring another
 * process populated would take a fault per 4 KiB page on its first lap. */
void gf_ring_map(gf_ring *r)
{
    gf_fabric *f = r->f;
    gf_lease_map(f, (uint32_t)(r->lease - f->leases), r->lease_id, (uint64_t)((uint8_t *)r->hdr - f->base),
                 gf_ring_region_size(r->capacity, r->stride));
    gf_store_rlx(&r->mapped, 1);
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
    out->expires_ns = out->alive ? gf_load_acq(&r->lease->expires_ns) : 0;
    if (gf_load_acq(&r->lease->id) != r->lease_id)   /* reclaimed: the region is not ours to read */
        return GF_OK;
    uint64_t tail = gf_load_acq(&r->hdr->tail);
    if (tail > GF_MAX_OFFSET)
        return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)tail);
    out->tail = tail;
    out->lost = tail > r->capacity ? tail - r->capacity : 0;
    out->earliest = out->lost;
    out->abandoned = gf_load_acq(&r->hdr->abandoned);
    return GF_OK;
}

int gf_ring_alive(const gf_ring *r)
{
    return gf_lease_alive(r->lease, r->lease_id, gf_now_ns());
}
