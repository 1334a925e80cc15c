/* wait.c -- sleeping until there is something to read: the futex protocol
 * on the fabric's wake line (waiters / wait_until / armed / wake), the wait
 * that reads nothing, and the waiter thread an event loop hands its waits to. */
#include <unistd.h>
#include "ring_internal.h"

/* Sleep on the fabric's wake word until look(ctx, &stalled) finds something
 * (returns nonzero, which is returned) or `deadline` (monotonic ns) passes
 * (returns 0). Wakes at least every 50 ms (leases may expire, writers may die),
 * and never past the time it advertises in wait_until, or producers would
 * stop waking it. `stalled`, set by look, is the deadline of a slot still being
 * written: the sleep ends there to step over it. */
int64_t gf_sleep_for(gf_fabric *f, int64_t deadline, gf_look_fn look, void *ctx)
{
    for (;;) {
        int64_t t = gf_mono_ns();
        int64_t until = deadline - t > 50000000 ? t + 50000000 : deadline;
        int64_t cur = gf_load_acq(&f->hdr->wait_until);
        while (cur < until && !gf_cas(&f->hdr->wait_until, &cur, until))
            ;
        /* seq_cst, Dekker with wake_readers (ring_write.h): we count ourselves and
         * arm, then look; a writer publishes, then looks for us */
        gf_faa_sc(&f->hdr->waiters, 1);
        gf_store_sc(&f->hdr->armed, 1);
        uint32_t w = gf_load_acq(&f->hdr->wake);
        int64_t stalled = 0;
        int64_t r = look(ctx, &stalled);
        int64_t mono = gf_mono_ns();
        if (r || mono >= deadline) {
            gf_fsub(&f->hdr->waiters, 1);
            return r;
        }
        if (!gf_load_acq(&f->hdr->armed)) {
            /* a producer disarmed us after we armed: its message may have landed
             * after our look and its wake before our sleep; look again instead */
            gf_fsub(&f->hdr->waiters, 1);
            continue;
        }
        int64_t sleep = until - mono;
        if (stalled && stalled - mono < sleep)
            sleep = stalled - mono;
        if (sleep > 0)
            gf_futex_wait(&f->hdr->wake, w, sleep);
        gf_fsub(&f->hdr->waiters, 1);
    }
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
    uint64_t tail = gf_load_acq(&r->hdr->tail);
    uint64_t pos = c->pos;
    if (tail > GF_MAX_OFFSET)
        return 1;                       /* impossible: the read reports it */
    if (pos >= tail)
        return 0;
    if (tail > r->capacity && pos < tail - r->capacity)
        return 1;                       /* fell behind the ring: the read counts the loss */
    uint64_t w = gf_load_acq(seq_at(r, pos)), seq = w & GF_SEQ_VALUE;
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
    return gf_sleep_for(p->f, deadline, wait_look, p);
}

/* ---- a waiter thread for event loops --------------------------------------------
 * gf_waiter_run is the whole body of a dedicated thread: it takes wait
 * requests (gf_waiter_request, from the event loop's thread), answers each with
 * gf_poller_wait and writes 8 bytes to w->fd (an eventfd the loop watches).
 * It never returns to the caller's runtime between requests, so an answer
 * costs one futex wake-up plus one eventfd wake-up, and no interpreter lock
 * changes hands. The requester keeps every poller it passed alive until the
 * request is answered (w->done). */

int64_t gf_waiter_run(gf_waiter *w)
{
    uint32_t seen = gf_plain_load_acq(&w->done);
    for (;;) {
        if (gf_plain_load_acq(&w->stop))
            return 0;
        uint32_t req = gf_plain_load_acq(&w->req);
        if (req == seen) {
            gf_futex_wait(gf_atomic32_at(&w->req), req, -1);
            continue;
        }
        /* a newer request may overwrite p/timeout while we read them: each value
         * is one the requester keeps valid, and req is re-read after the answer */
        gf_poller *p = gf_plain_load_acq(&w->p);
        int64_t timeout = gf_plain_load_acq(&w->timeout_ns);
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
            if (gf_plain_load_acq(&w->stop))
                return 0;
            if (gf_plain_load_acq(&w->req) != req) {
                superseded = 1;     /* the newer request's answer covers this one */
                break;
            }
        }
        if (superseded)
            continue;
        gf_plain_store_rel(&w->result, r);
        gf_plain_store_rel(&w->done, req);
        seen = req;
        uint64_t one = 1;
        if (write(w->fd, &one, sizeof one) < 0 && !gf_plain_load_acq(&w->stop))
            return gf_fail(GF_E_IO, "waiter: cannot write its eventfd");
    }
}

uint32_t gf_waiter_request(gf_waiter *w, gf_poller *p, int64_t timeout_ns)
{
    gf_plain_store_rel(&w->p, p);
    gf_plain_store_rel(&w->timeout_ns, timeout_ns);
    uint32_t req = gf_plain_add(&w->req, 1);
    gf_futex_wake_all(gf_atomic32_at(&w->req));
    return req;
}

void gf_waiter_stop(gf_waiter *w)
{
    gf_plain_store_rel(&w->stop, 1);
    gf_plain_add(&w->req, 1);
    gf_futex_wake_all(gf_atomic32_at(&w->req));
}
