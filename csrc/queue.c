/* queue.c -- a multi-producer, multi-consumer queue over one ring (grafos.Queue).
 *
 * The ring holds the items; a small state block in a lease of its own holds
 * what every process shares: the read cursor (`head`, the offset of the next
 * item to hand out), the item count that bounds `maxsize`, the unfinished-task
 * count of a joinable queue, and futex words to sleep on.
 *
 * A getter copies the item at `head` out of the ring and then advances `head`
 * with a compare-and-swap: whoever wins the swap owns the item, the others
 * retry at the new head. Nothing is held while copying, so a getter killed at
 * any point before its swap loses nothing and blocks nobody. The ring's gate
 * stays at `head + capacity`, so producers never overwrite an item not yet
 * handed out; a producer killed half-way through a write leaves an abandoned
 * slot that getters step over after the fabric's bounded wait.
 */
#include <string.h>
#include <unistd.h>
#include "core.h"

#define QSTATE_MAGIC 0x31657565757146ULL   /* "Fquueue1" */
#define QFLAG_JOINABLE 1u
#define QRESV 64                  /* places being put at once that a death can be undone for */

struct gf_qstate {
    _Atomic uint64_t magic;        /* written last: the state is ready once it reads QSTATE_MAGIC */
    uint64_t maxsize;              /* 0: only the ring bounds the queue */
    uint64_t flags;
    _Atomic uint64_t head;         /* next offset to hand out */
    _Atomic uint64_t count;        /* items put and not yet got */
    _Atomic uint64_t unfinished;   /* joinable: items put and not yet task_done */
    _Atomic uint32_t got;          /* futex: bumped by every get */
    _Atomic uint32_t putters;      /* producers asleep on `got` */
    _Atomic uint32_t done;         /* futex: bumped when unfinished reaches 0 */
    uint32_t reserved;
    /* Who holds a counted place with no slots taken yet: the owner token of the
     * putter's handle << 1 | 1 (token << 1 while not yet counted; layout.h,
     * "owners": a PID would say nothing across PID namespaces or after reuse). A putter that finds the queue full gives back the
     * places of dead holders; once a put has its slots, a dead writer's item is
     * uncounted by the getter that steps over them instead. */
    _Atomic uint64_t resv[QRESV];
};

static inline struct gf_qstate *st(const gf_queue *q) { return (struct gf_qstate *)q->state; }

uint64_t gf_queue_state_size(void) { return sizeof(struct gf_qstate); }

static int64_t left_ns(int64_t deadline)
{
    if (deadline == INT64_MAX)
        return -1;
    int64_t l = deadline - gf_mono_ns();
    return l > 0 ? l : 0;
}

static int64_t deadline_of(int64_t timeout_ns)
{
    return timeout_ns < 0 ? INT64_MAX : gf_mono_ns() + timeout_ns;
}

int gf_queue_init(gf_fabric *f, uint32_t index, uint64_t id, gf_ring *ring, uint64_t maxsize,
                  uint32_t flags)
{
    int rc;
    uint8_t *p = gf_lease_addr(f, index, id, sizeof(struct gf_qstate), &rc);
    if (!p)
        return rc;
    struct gf_qstate *s = (struct gf_qstate *)p;
    memset(s, 0, sizeof *s);
    s->maxsize = maxsize;
    s->flags = flags;
    if ((rc = gf_ring_set_on_full(ring, GF_FULL_RAISE)) < 0 ||
        (rc = gf_ring_set_gate(ring, gf_load_acq(&ring->hdr->tail) + ring->capacity)) < 0)
        return rc;
    gf_store_rlx(&s->head, gf_load_acq(&ring->hdr->tail));
    gf_store_rel(&s->magic, QSTATE_MAGIC);
    return GF_OK;
}

int gf_queue_open(gf_fabric *f, uint32_t index, uint64_t id, gf_ring *ring, gf_queue *out)
{
    int rc;
    memset(out, 0, sizeof *out);
    uint8_t *p = gf_lease_addr(f, index, id, sizeof(struct gf_qstate), &rc);
    if (!p)
        return rc;
    struct gf_qstate *s = (struct gf_qstate *)p;
    if (gf_load_acq(&s->magic) != QSTATE_MAGIC)
        return gf_fail(GF_E_CORRUPT, "lease %llu holds no queue state", (unsigned long long)id);
    out->f = f;
    out->ring = ring;
    out->state = s;
    out->maxsize = s->maxsize;        /* copied once: a later scribble cannot change it */
    out->flags = (uint32_t)s->flags;
    out->capacity = ring->capacity;
    return GF_OK;
}

/* head, checked against the ring: at most `capacity` behind the tail */
static int load_head(const gf_queue *q, uint64_t *head)
{
    struct gf_qstate *s = st(q);
    uint64_t h = gf_load_acq(&s->head), t = gf_load_acq(&q->ring->hdr->tail);
    if (h > t || t - h > q->capacity)
        return gf_fail(GF_E_CORRUPT, "queue head %llu is impossible for a ring whose tail is %llu",
                       (unsigned long long)h, (unsigned long long)t);
    *head = h;
    return GF_OK;
}

/* Keep the gate at head + capacity. Getters race here: each stores, then
 * checks that head did not move meanwhile, so the last store is of the
 * newest head. */
static void move_gate(gf_queue *q)
{
    for (;;) {
        uint64_t h = gf_load_acq(&st(q)->head);
        gf_ring_set_gate(q->ring, h + q->capacity);
        if (gf_load_acq(&st(q)->head) == h)
            return;
    }
}

uint64_t gf_queue_size(gf_queue *q)
{
    uint64_t c = gf_load_acq(&st(q)->count);
    return c > (uint64_t)1 << 62 ? 0 : c;
}

/* offsets a message of `total` bytes needs at the ring's current tail (padding included) */
static uint64_t offsets_needed(const gf_ring *r, uint64_t total)
{
    uint64_t span = total <= r->room ? 1 : (GF_SLOT_HDR_SIZE + total + r->stride - 1) / r->stride;
    uint64_t idx = gf_load_acq(&r->hdr->tail) % r->capacity;
    return span + (idx + span > r->capacity ? r->capacity - idx : 0);
}

static void unreserve(gf_queue *q);

/* Give back the counted places of holders that died before taking their slots. */
static void reclaim_dead(gf_queue *q)
{
    struct gf_qstate *s = st(q);
    for (int i = 0; i < QRESV; i++) {
        uint64_t e = gf_load_acq(&s->resv[i]);
        if ((e & 1) && gf_owner_alive(q->f, (uint32_t)(e >> 1)) == 0 && gf_cas(&s->resv[i], &e, 0))
            unreserve(q);
    }
}

/* The place is no longer only counted: its slots record the item from here, or it is given back. */
static void unrecord(gf_queue *q, int slot)
{
    if (slot >= 0)
        gf_store_rel(&st(q)->resv[slot], 0);
}

/* Count one place (maxsize bounds them), waiting up to the deadline. *slot:
 * the entry of resv recording it (-1 when all are in use: then unrecorded). */
static int reserve(gf_queue *q, int64_t deadline, int *slot)
{
    struct gf_qstate *s = st(q);
    const uint64_t me = (uint64_t)q->f->token << 1;
    *slot = -1;
    for (int i = 0; me && i < QRESV; i++) {      /* no token (a failed fork child): unrecorded */
        uint64_t z = 0;
        if (gf_cas(&s->resv[i], &z, me)) {
            *slot = i;
            break;
        }
    }
    for (int reclaimed = 0;;) {
        uint64_t c = gf_load_acq(&s->count);
        while (q->maxsize == 0 || c < q->maxsize)
            if (gf_cas(&s->count, &c, c + 1)) {
                if (*slot >= 0)
                    gf_store_rel(&s->resv[*slot], me | 1);
                return GF_OK;
            }
        if (!reclaimed++) {            /* once per reserve: a full queue may hold places of the dead */
            reclaim_dead(q);
            continue;
        }
        gf_faa_sc(&s->putters, 1);     /* seq_cst, Dekker with unreserve: before the look at count */
        uint32_t w = gf_load_acq(&s->got);
        int64_t left = left_ns(deadline);
        if (gf_load_sc(&s->count) >= q->maxsize && left != 0)
            gf_futex_wait(&s->got, w, left);
        gf_fsub(&s->putters, 1);
        if (left == 0 && gf_load_acq(&s->count) >= q->maxsize) {
            unrecord(q, *slot);
            return gf_fail(GF_E_FULL, "queue is full (maxsize %llu)", (unsigned long long)q->maxsize);
        }
    }
}

static void uncount(gf_queue *q);

static void unreserve(gf_queue *q)
{
    struct gf_qstate *s = st(q);
    uint64_t c = gf_load_acq(&s->count);
    while (c > 0 && !gf_cas(&s->count, &c, c - 1))
        ;
    gf_faa_sc(&s->got, 1);     /* seq_cst, Dekker with reserve's sleep: before the look at putters */
    if (gf_load_sc(&s->putters))
        gf_futex_wake_all(&s->got);
}

int64_t gf_queue_put(gf_queue *q, uint32_t n, uint8_t **bufs, const uint64_t *lens, int64_t timeout_ns)
{
    gf_ring *r = q->ring;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (lens[i] > UINT32_MAX - total)
            return gf_fail(GF_E_TOOBIG, "an item of over 4 GiB cannot be queued");
        total += lens[i];
    }
    if (total > r->max_msg)
        return gf_fail(GF_E_TOOBIG, "an item of %llu bytes does not fit the queue's ring (at most %llu bytes)",
                       (unsigned long long)total, (unsigned long long)r->max_msg);
    int64_t deadline = deadline_of(timeout_ns);
    int joinable = q->flags & QFLAG_JOINABLE;
    int rc;
    int slot;
again:
    if ((rc = reserve(q, deadline, &slot)) < 0)
        return rc;
    GF_FAULT(GF_FAULT_QUEUE_RESERVED);
    for (;;) {
        gf_loan l;
        rc = gf_loan_begin(r, NULL, 0, 0, NULL, 0, (uint32_t)total, 0, &l);
        if (rc == GF_OK) {
            unrecord(q, slot);
            /* From here the item is counted: a getter that steps over its slot,
             * abandoned by our death or by a stall past the bounded wait,
             * uncounts it, and the commit then fails: put it again. */
            if (joinable)
                gf_faa(&st(q)->unfinished, 1);
            uint64_t at = 0;
            for (uint32_t i = 0; i < n; i++) {
                if (i == n / 2)
                    GF_FAULT(GF_FAULT_QUEUE_LOANED);
                gf_copy(l.value + at, bufs[i], lens[i]);
                at += lens[i];
            }
            int64_t off = gf_loan_commit(&l);
            if (off == GF_E_ABANDONED)
                goto again;
            return off;
        }
        if (rc != GF_E_FULL_RING)
            break;
        int64_t left = left_ns(deadline);
        if (left == 0)
            break;
        rc = gf_ring_wait_room(r, offsets_needed(r, total), left);
        if (rc < 0 && rc != GF_E_FULL_RING)
            break;
    }
    unrecord(q, slot);
    unreserve(q);
    if (rc == GF_E_FULL_RING)
        return gf_fail(GF_E_FULL, "queue is full: its ring has no room for an item of %llu bytes",
                       (unsigned long long)total);
    return rc;
}

/* One item into buf: its length (> 0, its bytes at buf[0]), 0 when timeout_ns
 * passed with the queue empty, GF_E_BUFFER when buf is too small (out->len:
 * the size needed). */
int64_t gf_queue_get(gf_queue *q, uint8_t *buf, uint64_t buf_size, int64_t timeout_ns, gf_queue_item *out)
{
    struct gf_qstate *s = st(q);
    gf_ring *r = q->ring;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        uint64_t h;
        int rc = load_head(q, &h);
        if (rc < 0)
            return rc;
        gf_cursor c;
        memset(&c, 0, sizeof c);
        c.pos = h;
        if (q->stall_since && q->stall_pos == h) {     /* the wait on this slot goes on */
            c.stall_since = q->stall_since;
            c.stall_tail = q->stall_tail;
        }
        gf_msg_meta m;
        int64_t wait = left_ns(deadline);
        /* a poller of our own for this look, with the handle's adaptive spin: a
         * getter whose items come microseconds apart spins instead of paying a
         * cross-CPU futex wake-up for each */
        gf_poller p = {.f = q->f, .rings = &r, .cursors = &c, .meta = &m, .buf = buf, .buf_size = buf_size,
                       .n = 1, .max_batch = 1, .spin_learnt = q->spin_learnt};
        int64_t got = gf_poller_poll(&p, 1, 0, wait < 0 ? 100000000 : wait, wait == 0 ? 0 : GF_SPIN_ADAPTIVE);
        q->spin_learnt = p.spin_learnt;
        q->stall_since = c.stall_since;
        q->stall_pos = c.pos;
        q->stall_tail = c.stall_tail;
        if (got == GF_E_BUFFER) {
            memset(&c, 0, sizeof c);
            c.pos = h;
            out->pos = out->len = 0;           /* 0: taken meanwhile, look again */
            if (gf_ring_peek(r, &c, 1, &m, 0) == 1) {
                out->len = (uint64_t)m.key_len + m.hdr_len + m.val_len;
                if (out->len > r->max_msg)
                    return gf_fail(GF_E_CORRUPT, "queue item of %llu bytes in a ring that takes %llu",
                                   (unsigned long long)out->len, (unsigned long long)r->max_msg);
            }
            return GF_E_BUFFER;
        }
        if (got < 0)
            return got;
        if (got == 0 && c.pos == h) {
            if (left_ns(deadline) == 0)
                return 0;
            continue;
        }
        if (c.pos <= h || c.pos - h > q->capacity)
            return gf_fail(GF_E_CORRUPT, "queue read moved from %llu to %llu",
                           (unsigned long long)h, (unsigned long long)c.pos);
        if (!gf_cas(&s->head, &h, c.pos))
            continue;                          /* another getter took it: look again */
        move_gate(q);
        /* slots stepped over: a producer's that died or stalled mid-write, or one
         * damaged (a stalled producer's late bytes): items that will never come */
        for (uint64_t k = c.abandoned + c.corrupt + c.lost; k > 0; k--)
            uncount(q);
        if (got == 0)                          /* stepped over abandoned slots or padding */
            continue;
        unreserve(q);
        uint64_t at = (uint64_t)m.pos + m.key_len + m.hdr_len;
        if (at + m.val_len > buf_size || m.val_len == 0)
            return gf_fail(GF_E_CORRUPT, "queue item of %u bytes at %llu", m.val_len, (unsigned long long)at);
        if (at)
            memmove(buf, buf + at, m.val_len);
        return m.val_len;
    }
}

/* The last unfinished task is done: wake join(). */
static void all_done(struct gf_qstate *s)
{
    gf_faa(&s->done, 1);
    gf_futex_wake_all(&s->done);
}

/* One item that will never be got: out of the count and, in a joinable
 * queue, out of the unfinished tasks. */
static void uncount(gf_queue *q)
{
    unreserve(q);
    if (!(q->flags & QFLAG_JOINABLE))
        return;
    struct gf_qstate *s = st(q);
    uint64_t u = gf_load_acq(&s->unfinished);
    while (u > 0 && !gf_cas(&s->unfinished, &u, u - 1))
        ;
    if (u == 1)
        all_done(s);
}

int64_t gf_queue_task_done(gf_queue *q)
{
    struct gf_qstate *s = st(q);
    uint64_t u = gf_load_acq(&s->unfinished);
    do {
        if (u == 0)
            return gf_fail(GF_E_INVAL, "task_done() called too many times");
    } while (!gf_cas(&s->unfinished, &u, u - 1));
    if (u == 1)
        all_done(s);
    return (int64_t)(u - 1);
}

/* 1 once no task is unfinished, 0 when timeout_ns passes first */
int gf_queue_join(gf_queue *q, int64_t timeout_ns)
{
    struct gf_qstate *s = st(q);
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        uint32_t w = gf_load_acq(&s->done);
        if (gf_load_acq(&s->unfinished) == 0)
            return 1;
        int64_t left = left_ns(deadline);
        if (left == 0)
            return 0;
        gf_futex_wait(&s->done, w, left);
    }
}

int64_t gf_queue_put1(gf_queue *q, const uint8_t *buf, uint64_t len, int64_t timeout_ns)
{
    uint8_t *b = (uint8_t *)buf;
    return gf_queue_put(q, 1, &b, &len, timeout_ns);
}
