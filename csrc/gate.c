/* gate.c -- back-pressure: the gate a gating reader stores for its ring,
 * the wait for room below it, and the counters of sends it held up. */
#include <string.h>
#include "ring_internal.h"

/* ---- back-pressure ----------------------------------------------------------------
 * A gating reader (a consumer group, or a consumer that opted in) needs every
 * offset from its position on. Whoever moves a gating reader (a commit, a poll,
 * a reader found stale) stores the ring's gate: the lowest live position plus
 * the capacity, or 0 when nobody gates. Producers claim below the gate only
 * (claim above); one without room sleeps on gate_wake. All of it touches the
 * ring region only while the ring's lease is still the one it was opened for. */

static int ours(const gf_ring *r)
{
    if (gf_load_acq(&r->lease->id) != r->lease_id)
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

/* ---- who waits -----------------------------------------------------------------------
 * The count in `blocked` tells gate setters whether to wake anyone; what is
 * reported as blocked comes from the waiter records (layout.h): the entries
 * whose owner token is alive. A token out of range is no owner (ignored when
 * counting, free to take). The kernel's "cannot tell" counts as alive here as
 * everywhere: a record is taken over only from an owner known dead. */

static int waiter_dead(const gf_ring *r, uint32_t token)
{
    return token > GF_OWNER_TOKEN_MASK || gf_owner_alive(r->f, token) == 0;
}

/* Record the caller as a waiter: the entry it took, or -1 (its handle has no
 * token, or every entry is held by a live waiter: it waits unrecorded). */
static int waiter_enter(const gf_ring *r, uint32_t me)
{
    _Atomic uint32_t *w = r->hdr->waiter_tokens;
    if (!me)
        return -1;
    for (int i = 0; i < (int)GF_RING_WAITERS; i++) {
        uint32_t cur = 0;
        if (gf_load_rlx(&w[i]) == 0 && gf_cas(&w[i], &cur, me))
            return i;
    }
    for (int i = 0; i < (int)GF_RING_WAITERS; i++) {     /* full: a dead waiter's entry */
        uint32_t cur = gf_load_acq(&w[i]);
        if (cur != 0 && waiter_dead(r, cur) && gf_cas(&w[i], &cur, me))
            return i;
    }
    return -1;
}

static void waiter_leave(const gf_ring *r, int i, uint32_t me)
{
    if (i >= 0)     /* by CAS: an entry that is no longer ours (a scribble) stays as it is */
        gf_cas(&r->hdr->waiter_tokens[i], &me, 0);
}

static uint32_t live_waiters(const gf_ring *r)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < GF_RING_WAITERS; i++) {
        uint32_t t = gf_load_acq(&r->hdr->waiter_tokens[i]);
        n += t != 0 && !waiter_dead(r, t);
    }
    return n;
}

int gf_ring_set_gate(gf_ring *r, uint64_t gate)
{
    int rc = ours(r);
    if (rc < 0)
        return rc;
    /* seq_cst, Dekker with gf_ring_wait_room: our store of the gate is ordered
     * before the load of `blocked`; a waiter counts itself before its look at
     * the gate. */
    gf_store_sc(&r->hdr->gate, gate);
    if (gf_load_sc(&r->hdr->blocked)) {
        gf_faa(&r->hdr->gate_wake, 1);
        gf_futex_wake_all(&r->hdr->gate_wake);
    }
    return GF_OK;
}

/* ---- a gating reader's publish from its copy of the records --------------------------
 * The gating records change only under the fabric lock, and every change of
 * the metadata (and of the lease table) bumps its epoch. A reader that kept a
 * copy of its topic's records, and the epoch it read them at, publishes a move
 * in one call: if the epoch is unchanged nobody else changed a record since,
 * so the lowest live position of its copy (with its own move in it) sets the
 * gate as a full recompute would: clamped into the ring, plus the capacity;
 * 0 for a ring whose lease ran out or with no live reader. */
int gf_gate_publish(gf_ring *r, uint64_t epoch, const char *key, uint32_t klen, const uint8_t *val,
                    uint32_t vlen, uint64_t low, uint64_t *epoch_out)
{
    if (!gf_lock_held(r->f))
        return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__);
    if (gf_meta_epoch(r->f) != epoch)
        return GF_STALE;
    gf_ring_state st;       /* the bounds and liveness a full recompute reads */
    int rc = gf_ring_state_get(r, 0, &st);
    if (rc < 0 || (rc = ours(r)) < 0 || (rc = gf_meta_put(r->f, key, klen, val, vlen)) < 0)
        return rc;
    uint64_t gate = 0;
    if (low != GF_GATE_NOBODY && st.alive)
        gate = (low < st.earliest ? st.earliest : low > st.tail ? st.tail : low) + r->capacity;
    rc = gf_ring_set_gate(r, gate);
    *epoch_out = gf_meta_epoch(r->f);
    return rc;
}

int gf_gate_publish_locking(gf_ring *r, int64_t lock_timeout_ns, uint64_t epoch, const char *key,
                            uint32_t klen, const uint8_t *val, uint32_t vlen, uint64_t low,
                            uint64_t *epoch_out, int *recovered)
{
    *recovered = 0;
    int rc = gf_lock(r->f, lock_timeout_ns);
    if (rc < 0)
        return rc;
    *recovered = rc == GF_RECOVERED;
    rc = gf_gate_publish(r, epoch, key, klen, val, vlen, low, epoch_out);
    gf_unlock(r->f);
    return rc;
}

int gf_ring_gate_get(gf_ring *r, gf_gate_state *out)
{
    memset(out, 0, sizeof *out);
    out->capacity = r->capacity;
    int rc = ours(r);
    if (rc < 0)
        return rc;
    out->gate = gf_load_acq(&r->hdr->gate);
    out->tail = gf_load_acq(&r->hdr->tail);
    out->blocked_ns = gf_load_acq(&r->hdr->blocked_ns);
    out->full_raised = gf_load_acq(&r->hdr->full_raised);
    out->blocked = live_waiters(r);
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
    const uint32_t me = r->f->token;
    int entry = -1;                /* our waiter record, once we have one */
    gf_faa_sc(&h->blocked, 1);     /* seq_cst, Dekker with gf_ring_set_gate: before our look at the gate */
    for (;;) {
        if (entry < 0)             /* again after each wake: an entry may have come free */
            entry = waiter_enter(r, me);
        uint32_t w = gf_load_acq(&h->gate_wake);
        uint64_t gate = gf_load_sc(&h->gate), tail = gf_load_acq(&h->tail);
        if (gate == 0 || tail + count <= gate)
            break;
        if (!gf_lease_alive_query(r->lease, r->lease_id, gf_now_ns()))
            break;                             /* the send says why */
        int64_t now = gf_mono_ns();
        if (now >= deadline) {
            rc = gf_full_ring(r, count, gate);
            break;
        }
        gf_futex_wait(&h->gate_wake, w, deadline - now);
    }
    waiter_leave(r, entry, me);
    gf_fsub(&h->blocked, 1);
    gf_faa(&h->blocked_ns, (uint64_t)(gf_mono_ns() - t0));
    return rc;
}

void gf_ring_note_full(gf_ring *r)
{
    if (ours(r) == GF_OK)
        gf_faa(&r->hdr->full_raised, 1);
}
