/* share.c -- share groups: many members per partition, a lock and a delivery
 * count per record, in a lease of its own beside the ring (layout.h, "share
 * group state"). Every change is a compare-and-swap on one entry or on the
 * window's two cursors; nothing here takes the metadata lock but init. */
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define LAP_BITS 38
#define LAP_MASK ((1ULL << LAP_BITS) - 1)
#define MAX_DELIVERIES 254u     /* a count of deliveries is 8 bits and saturates at 255 */

struct gf_share {
    gf_fabric *f;
    gf_ring *r;
    struct gf_share_hdr *h;
    struct gf_share_member *members;
    struct gf_share_entry *e;
    struct gf_lease *lease;
    uint64_t lease_id;
    uint64_t cap;
    uint64_t mask;              /* cap - 1 when a power of two (then shift = log2 cap), else 0 */
    uint32_t shift;
    int64_t lock_ns;
    uint32_t max_deliveries;
    /* process-local */
    gf_cursor cur;              /* the frontier's reads: keeps the bounded wait on a dead writer */
    int64_t scan_at;            /* no lock in the window can expire before this (ns) */
    uint64_t released_seen;     /* the header's `released` at the last full scan */
};

/* ---- words ------------------------------------------------------------------ */
#define W_STATE(a)  ((uint32_t)((a) & 3u))
#define W_COUNT(a)  ((uint32_t)(((a) >> 2) & 0xffu))
#define W_MEMBER(a) ((uint32_t)(((a) >> 10) & 0xffffu))
#define W_LAP(a)    ((a) >> 26)

static inline uint64_t mkword(uint32_t state, uint32_t count, uint32_t member, uint64_t lap)
{
    return (uint64_t)state | ((uint64_t)(count & 0xffu) << 2) | ((uint64_t)(member & 0xffffu) << 10) |
           ((lap & LAP_MASK) << 26);
}

/* a shift and a mask where the capacity allows: a 64-bit division costs ~10 ns per record */
static inline uint64_t lap_of(const gf_share *s, uint64_t n)
{
    return ((s->mask ? n >> s->shift : n / s->cap) + 1) & LAP_MASK;
}
static inline struct gf_share_entry *entry(const gf_share *s, uint64_t n)
{
    return &s->e[s->mask ? n & s->mask : n % s->cap];
}
static inline uint64_t tag_of(uint64_t a) { return ((W_LAP(a) & 0xffu) << 8) | W_COUNT(a); }
/* whether deadline word b was written for acquisition a */
static inline int tagged(uint64_t b, uint64_t a) { return (b & 0xffffu) == tag_of(a); }
static inline uint64_t mkdeadline(int64_t deadline_ms, uint64_t a)
{
    return ((uint64_t)deadline_ms << 16) | tag_of(a);
}
static inline int64_t b_deadline_ns(uint64_t b) { return (int64_t)(b >> 16) * 1000000LL; }
static inline int64_t deadline_ms(const gf_share *s, int64_t now)
{
    return (now + s->lock_ns + 999999) / 1000000;   /* rounded up: a lock lasts at least its time */
}

static uint32_t share_hdr_crc(const struct gf_share_hdr *h)
{
    return gf_crc32c(~0u, (const uint8_t *)h, offsetof(struct gf_share_hdr, crc)) ^ ~0u;
}

uint64_t gf_share_region_size(uint32_t capacity)
{
    return GF_SHARE_ENTRIES_OFF + (uint64_t)capacity * sizeof(struct gf_share_entry);
}

/* ---- open ----------------------------------------------------------------------- */
int gf_share_init(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, gf_ring *r, int64_t lock_ns,
                  uint32_t max_deliveries, uint64_t start, int64_t now_ns)
{
    if (!gf_lock_held(f))
        return gf_fail(GF_E_NOLOCK, "%s needs the metadata lock", __func__);
    if (lock_ns <= 0)
        return gf_fail(GF_E_INVAL, "lock time must be positive, got %lld ns", (long long)lock_ns);
    if (max_deliveries < 1 || max_deliveries > MAX_DELIVERIES)
        return gf_fail(GF_E_INVAL, "max_deliveries must be 1 to %u, got %u", MAX_DELIVERIES, max_deliveries);
    if (start > GF_MAX_OFFSET)
        return gf_fail(GF_E_INVAL, "start offset %llu out of range", (unsigned long long)start);
    gf_lease_info li;
    int rc = gf_lease_get(f, lease_index, lease_id, &li);
    if (rc < 0)
        return rc;
    if (gf_share_region_size(r->capacity) > li.size)
        return gf_fail(GF_E_INVAL, "share state for %u records needs %llu bytes, the lease has %llu",
                       r->capacity, (unsigned long long)gf_share_region_size(r->capacity),
                       (unsigned long long)li.size);
    struct gf_share_hdr *h = (struct gf_share_hdr *)(f->base + li.offset);
    memset(f->base + li.offset, 0, gf_share_region_size(r->capacity));
    h->magic = GF_SHARE_MAGIC;
    h->lease_id = lease_id;
    h->ring_lease_id = r->lease_id;
    h->capacity = r->capacity;
    h->max_deliveries = max_deliveries;
    h->lock_ns = lock_ns;
    h->created_ns = now_ns;
    gf_store_rel(&h->floor, start);
    gf_store_rel(&h->next, start);
    h->crc = share_hdr_crc(h);     /* the region is found through a metadata entry written after this */
    return f->durable ? gf_dsync(f, h, GF_SHARE_HDR_SIZE) : GF_OK;
}

gf_share *gf_share_open(gf_fabric *f, uint32_t lease_index, uint64_t lease_id, gf_ring *r, int *err)
{
    gf_lease_info li;
    int rc = gf_lease_get(f, lease_index, lease_id, &li);
    if (rc < 0) { *err = rc; return NULL; }
    if (li.size < GF_SHARE_ENTRIES_OFF) {
        *err = gf_fail(GF_E_CORRUPT, "lease %llu is too small to hold share state", (unsigned long long)lease_id);
        return NULL;
    }
    struct gf_share_hdr *h = (struct gf_share_hdr *)(f->base + li.offset);
    struct gf_share_hdr c;      /* copy, then check the copy */
    memcpy(&c, h, offsetof(struct gf_share_hdr, floor));
    if (c.magic != GF_SHARE_MAGIC || c.lease_id != lease_id || c.crc != share_hdr_crc(&c)) {
        *err = gf_fail(GF_E_CORRUPT, "lease %llu does not hold a valid share state header", (unsigned long long)lease_id);
        return NULL;
    }
    if (c.ring_lease_id != r->lease_id || c.capacity != r->capacity) {
        *err = gf_fail(GF_E_CORRUPT, "share state in lease %llu belongs to another ring (lease %llu, %u slots)",
                       (unsigned long long)lease_id, (unsigned long long)c.ring_lease_id, c.capacity);
        return NULL;
    }
    if (c.max_deliveries < 1 || c.max_deliveries > MAX_DELIVERIES || c.lock_ns <= 0 ||
        gf_share_region_size(c.capacity) > li.size) {
        *err = gf_fail(GF_E_CORRUPT, "share state in lease %llu has impossible settings", (unsigned long long)lease_id);
        return NULL;
    }
    gf_share *s = calloc(1, sizeof *s);
    if (!s) { *err = gf_fail(GF_E_FULL, "out of memory"); return NULL; }
    s->f = f;
    s->r = r;
    s->h = h;
    s->members = (struct gf_share_member *)((uint8_t *)h + GF_SHARE_HDR_SIZE);
    s->e = (struct gf_share_entry *)((uint8_t *)h + GF_SHARE_ENTRIES_OFF);
    s->lease = &f->leases[lease_index];
    s->lease_id = lease_id;
    s->cap = c.capacity;
    if (c.capacity > 1 && (c.capacity & (c.capacity - 1)) == 0) {
        s->mask = c.capacity - 1;
        s->shift = (uint32_t)__builtin_ctzll(c.capacity);
    }
    s->lock_ns = c.lock_ns;
    s->max_deliveries = c.max_deliveries;
    gf_faa(&f->refs, 1);
    *err = GF_OK;
    return s;
}

void gf_share_close(gf_share *s)
{
    if (!s)
        return;
    gf_fabric_unref(s->f);
    free(s);
}

static int alive(gf_share *s, int64_t now)
{
    if (!gf_lease_alive(s->lease, s->lease_id, now))
        return gf_fail(GF_E_EXPIRED, "share state lease %llu has expired", (unsigned long long)s->lease_id);
    return GF_OK;
}

int64_t gf_share_join(gf_share *s, uint32_t pid, const uint8_t *name, uint32_t nlen)
{
    int rc = alive(s, gf_now_ns());
    if (rc < 0)
        return rc;
    uint32_t token = gf_faa(&s->h->members, 1) % 65535u + 1u;
    struct gf_share_member *m = &s->members[token % GF_SHARE_MEMBERS];
    gf_store_rel(&m->token, 0);
    m->pid = pid;
    memset(m->name, 0, sizeof m->name);
    memcpy(m->name, name, nlen < sizeof m->name ? nlen : sizeof m->name);
    gf_store_rel(&m->token, token);
    return token;
}

int gf_share_member_name(gf_share *s, uint32_t token, uint8_t *out, uint32_t cap)
{
    if (token == 0)
        return 0;
    struct gf_share_member *m = &s->members[token % GF_SHARE_MEMBERS];
    uint8_t name[sizeof m->name];
    if (gf_load_acq(&m->token) != token)
        return 0;
    memcpy(name, m->name, sizeof name);
    gf_fence_acq();
    if (gf_load_rlx(&m->token) != token)
        return 0;
    uint32_t n = (uint32_t)strnlen((const char *)name, sizeof name);
    if (n > cap)
        n = cap;
    memcpy(out, name, n);
    return (int)n;
}

uint64_t gf_share_floor(gf_share *s) { return gf_load_acq(&s->h->floor); }

/* ---- the window ---------------------------------------------------------------------
 * A consistent (floor, next): next never runs more than a ring ahead of the
 * floor it was moved from, and floors only rise, so a floor read the same
 * before and after next bounds it. After a jump of the floor (a lap) next may
 * lag it for a moment: it counts as the floor. */
static int window(gf_share *s, uint64_t *fl, uint64_t *nx)
{
    for (int i = 0; i < 1000; i++) {
        uint64_t a = gf_load_acq(&s->h->floor), n = gf_load_acq(&s->h->next), b = gf_load_acq(&s->h->floor);
        if (a != b)
            continue;
        if (a > GF_MAX_OFFSET || n > GF_MAX_OFFSET || (n > a && n - a > s->cap))
            break;
        *fl = a;
        *nx = n < a ? a : n;
        return GF_OK;
    }
    return gf_fail(GF_E_CORRUPT, "share state window is impossible (floor %llu, next %llu, %llu slots)",
                   (unsigned long long)gf_load_acq(&s->h->floor), (unsigned long long)gf_load_acq(&s->h->next),
                   (unsigned long long)s->cap);
}

static inline int finished(const gf_share *s, uint64_t a, uint64_t n)
{
    return W_LAP(a) == lap_of(s, n) && W_STATE(a) >= GF_SH_ACKED;
}

/* The ring's end, checked: it comes from shared memory. */
static int ring_tail(const gf_share *s, uint64_t *tail)
{
    uint64_t t = gf_load_acq(&s->r->hdr->tail);
    if (t > GF_MAX_OFFSET)
        return gf_fail(GF_E_CORRUPT, "ring tail %llu is impossible", (unsigned long long)t);
    *tail = t;
    return GF_OK;
}

/* Move the floor past finished records, and past records the ring overwrote
 * (counted lost). Anyone may: the floor only rises, by compare-and-swap. */
static int advance(gf_share *s)
{
    const uint64_t cap = s->cap;
    for (int i = 0; i < (1 << 22); i++) {
        uint64_t fl, nx, tail;
        int rc = window(s, &fl, &nx);
        if (rc < 0 || (rc = ring_tail(s, &tail)) < 0)
            return rc;
        if (tail > cap && fl < tail - cap) {
            uint64_t nf = tail - cap, upto = nx < nf ? nx : nf, lost = 0;
            for (uint64_t o = fl; o < upto; o++)
                lost += !finished(s, gf_load_acq(&entry(s, o)->a), o);
            if (nf > nx)
                lost += nf - nx;
            if (gf_cas(&s->h->floor, &fl, nf)) {
                gf_faa(&s->h->lost, lost);
                uint64_t cur = gf_load_acq(&s->h->next);
                while (cur < nf && !gf_cas(&s->h->next, &cur, nf))
                    ;
            }
            continue;
        }
        if (fl >= nx || !finished(s, gf_load_acq(&entry(s, fl)->a), fl))
            return GF_OK;
        gf_cas(&s->h->floor, &fl, fl + 1);
    }
    return GF_OK;
}

static inline uint64_t span_of_meta(const gf_ring *r, const gf_msg_meta *m)
{
    uint64_t total = (uint64_t)m->key_len + m->hdr_len + m->val_len + ((m->flags & GF_MSG_STAMP) ? GF_STAMP_SIZE : 0);
    return total <= r->room ? 1 : (GF_SLOT_HDR_SIZE + total + r->stride - 1) / r->stride;
}

/* The deadline word of an acquisition: the acquirer's, or (its acquirer is
 * between its two stores, or died there) now + the lock time, written here. */
static uint64_t lock_word(gf_share *s, struct gf_share_entry *en, uint64_t a, int64_t now)
{
    uint64_t b = gf_load_acq(&en->b);
    while (!tagged(b, a)) {
        uint64_t nb = mkdeadline(deadline_ms(s, now), a);
        if (gf_cas(&en->b, &b, nb))
            return nb;
        if (gf_load_acq(&en->a) != a)
            return b;       /* the acquisition itself has moved on */
    }
    return b;
}

static void set_lock(struct gf_share_entry *en, uint64_t a, int64_t dl_ms)
{
    uint64_t b = gf_load_acq(&en->b), nb = mkdeadline(dl_ms, a);
    while (!tagged(b, a) && !gf_cas(&en->b, &b, nb))
        ;
}

/* Read offset n alone into buf at *used: 1 with meta filled if a message starts
 * there, 0 if n holds none (a continuation, padding, abandoned, damaged or
 * overwritten: *gone says which of the last), GF_E_* on error, 2 if it did not
 * fit the buffer or is still being written (try later). */
static int read_one(gf_share *s, uint64_t n, uint32_t part, gf_msg_meta *meta, uint8_t *buf,
                    uint64_t buf_size, uint64_t *used, int64_t now, int *gone)
{
    gf_cursor c;
    memset(&c, 0, sizeof c);
    c.pos = n;
    int64_t stalled = 0;
    int err = GF_OK;
    uint64_t used0 = *used;
    uint32_t got = gf_ring_read(s->r, &c, part, 1, meta, buf, buf_size, used, now, &stalled, &err);
    *gone = c.lost != 0;
    if (err)
        return err;
    if (c.expired)
        return gf_fail(GF_E_EXPIRED, "the partition's lease has expired");
    if (got == 1 && meta->offset == n)
        return 1;
    *used = used0;
    if (got == 0 && c.pos == n)
        return 2;
    return 0;
}

/* ---- acquire ------------------------------------------------------------------------ */
struct tally { uint64_t delivered, redelivered; };

static int64_t acquire(gf_share *s, uint32_t member, uint32_t max, int64_t now, uint32_t part,
                       gf_share_row *rows, gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size,
                       struct tally *t);

int64_t gf_share_acquire(gf_share *s, uint32_t member, uint32_t max, int64_t now, uint32_t part,
                         gf_share_row *rows, gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size)
{
    struct tally t = {0, 0};    /* the shared counters move once per call, not once per record */
    int64_t rc = acquire(s, member, max, now, part, rows, meta, buf, buf_size, &t);
    if (t.delivered)
        gf_faa(&s->h->delivered, t.delivered);
    if (t.redelivered)
        gf_faa(&s->h->redelivered, t.redelivered);
    return rc;
}

static int64_t acquire(gf_share *s, uint32_t member, uint32_t max, int64_t now, uint32_t part,
                       gf_share_row *rows, gf_msg_meta *meta, uint8_t *buf, uint64_t buf_size,
                       struct tally *t)
{
    if (member == 0 || member > 0xffffu)
        return gf_fail(GF_E_INVAL, "member token %u out of range", member);
    if (!now)
        now = gf_now_ns();
    int rc = alive(s, now);
    if (rc < 0)
        return rc;
    if ((rc = advance(s)) < 0)
        return rc;
    if (buf_size > UINT32_MAX)
        buf_size = UINT32_MAX;
    const int64_t dl = deadline_ms(s, now);
    uint32_t got = 0;
    uint64_t used = 0, fl, nx;
    if ((rc = window(s, &fl, &nx)) < 0)
        return rc;

    /* 1. released records, expired locks, and entries their claimer never wrote */
    uint64_t released = gf_load_acq(&s->h->released);
    if (now >= s->scan_at || released != s->released_seen) {
        int64_t next_expiry = now + s->lock_ns;
        int whole = 1;
        for (uint64_t o = fl; o < nx; o++) {
            if (got == max) { whole = 0; break; }
            struct gf_share_entry *en = entry(s, o);
            uint64_t a = gf_load_acq(&en->a), L = lap_of(s, o);
            uint32_t count = 0, last = 0, expired = 0;
            if (W_LAP(a) == L) {
                uint32_t st = W_STATE(a);
                if (st >= GF_SH_ACKED)
                    continue;
                count = W_COUNT(a);
                last = W_MEMBER(a);
                if (st == GF_SH_ACQUIRED) {
                    int64_t d = b_deadline_ns(lock_word(s, en, a, now));
                    if (d > now) {
                        if (d < next_expiry)
                            next_expiry = d;
                        continue;
                    }
                    expired = 1;
                }
            }
            int gone = 0;
            int r1 = read_one(s, o, part, &meta[got], buf, buf_size, &used, now, &gone);
            if (r1 < 0) {
                if (got)
                    break;
                return r1;
            }
            if (r1 == 2) {      /* no room left in the buffer, or a writer still busy */
                whole = 0;
                break;
            }
            if (r1 == 0) {      /* holds no record (or the ring lost it): finished */
                if (gf_cas(&en->a, &a, mkword(gone ? GF_SH_ARCHIVED : GF_SH_ACKED, count, last, L)) && gone)
                    gf_faa(&s->h->lost, 1);
                continue;
            }
            uint32_t dead = count >= s->max_deliveries;
            uint32_t nc = count < 255 ? count + 1 : 255;
            uint64_t w = mkword(GF_SH_ACQUIRED, nc, member, L);
            if (!gf_cas(&en->a, &a, w)) {
                used = meta[got].pos;   /* someone else took it: give its bytes back */
                continue;
            }
            set_lock(en, w, dl);
            if (expired)
                gf_faa(&s->h->expired_locks, 1);
            if (!dead) {
                t->delivered++;
                t->redelivered += count != 0;
            }
            rows[got] = (gf_share_row){o, w, dl * 1000000LL, dead ? count : nc, dead ? GF_SHARE_DEAD : 0,
                                       last, 0};
            got++;
        }
        if (whole) {
            s->scan_at = next_expiry;
            s->released_seen = released;
        } else {
            s->scan_at = 0;
        }
    }

    /* 2. new records: read from next, then move next past them */
    for (int tries = 0; got < max && tries < 64; tries++) {
        if (tries && (rc = advance(s)) < 0)
            return got ? (int64_t)got : (int64_t)rc;
        if ((rc = window(s, &fl, &nx)) < 0)
            return got ? (int64_t)got : (int64_t)rc;
        const uint64_t limit = fl + s->cap;
        if (nx >= limit)
            break;
        s->cur.pos = nx;
        uint64_t lost0 = s->cur.lost, used0 = used;
        int64_t stalled = 0;
        int err = GF_OK;
        uint32_t n = gf_ring_read(s->r, &s->cur, part, max - got, meta + got, buf, buf_size, &used, now,
                                  &stalled, &err);
        if (err)
            return got ? (int64_t)got : (int64_t)err;
        if (s->cur.expired)
            return got ? (int64_t)got : (int64_t)gf_fail(GF_E_EXPIRED, "the partition's lease has expired");
        if (s->cur.lost != lost0) {     /* the ring lapped the window: advance() moves past it */
            used = used0;
            continue;
        }
        uint64_t np = s->cur.pos;
        if (np == nx)
            break;
        uint32_t k = 0;     /* the records whose every slot lies inside the window */
        while (k < n && meta[got + k].offset + span_of_meta(s->r, &meta[got + k]) <= limit)
            k++;
        if (k < n) {
            np = meta[got + k].offset;
            used = meta[got + k].pos;
        }
        if (np > limit)
            np = limit;
        if (!gf_cas(&s->h->next, &nx, np)) {
            used = used0;
            continue;
        }
        /* ours now: each entry goes from its old tenant's word to ours */
        uint32_t mi = 0, keep = 0;
        for (uint64_t o = nx; o < np; o++) {
            struct gf_share_entry *en = entry(s, o);
            uint64_t a = gf_load_acq(&en->a), L = lap_of(s, o);
            int mine = mi < k && meta[got + mi].offset == o;
            if (mine)
                mi++;
            if (W_LAP(a) == L)
                continue;       /* taken as an unwritten entry by someone else already */
            if (!mine) {
                gf_cas(&en->a, &a, mkword(GF_SH_ACKED, 0, 0, L));   /* no record starts here */
                continue;
            }
            uint64_t w = mkword(GF_SH_ACQUIRED, 1, member, L);
            if (!gf_cas(&en->a, &a, w))
                continue;
            set_lock(en, w, dl);
            t->delivered++;
            meta[got + keep] = meta[got + mi - 1];
            rows[got + keep] = (gf_share_row){o, w, dl * 1000000LL, 1, 0, 0, 0};
            keep++;
        }
        got += keep;
        if (k < n)
            break;      /* the window is full */
    }
    return got;
}

/* ---- settle -------------------------------------------------------------------------- */
int64_t gf_share_settle(gf_share *s, uint32_t op, const uint64_t *offsets, const uint64_t *words,
                        uint32_t n, int64_t now, uint8_t *ok)
{
    if (op < GF_SHARE_ACK || op > GF_SHARE_RENEW)
        return gf_fail(GF_E_INVAL, "unknown share operation %u", op);
    if (!now)
        now = gf_now_ns();
    int rc = alive(s, now);
    if (rc < 0)
        return rc;
    uint64_t fl, nx;
    if ((rc = window(s, &fl, &nx)) < 0)
        return rc;
    int64_t done = 0;
    const int64_t dl = deadline_ms(s, now);
    _Atomic uint64_t *counter = op == GF_SHARE_ACK ? &s->h->acked : op == GF_SHARE_RELEASE ? &s->h->released
                              : op == GF_SHARE_REJECT ? &s->h->rejected : &s->h->dead;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t o = offsets[i], w = words[i];
        ok[i] = 0;
        if (o < fl || o >= nx) {    /* the floor may have moved since: look again */
            if ((rc = window(s, &fl, &nx)) < 0)
                return rc;
            if (o < fl || o >= nx)
                continue;
        }
        if (W_STATE(w) != GF_SH_ACQUIRED || W_LAP(w) != lap_of(s, o))
            continue;
        struct gf_share_entry *en = entry(s, o);
        uint64_t a = gf_load_acq(&en->a);
        if (a != w)
            continue;
        if (op != GF_SHARE_RELEASE) {
            uint64_t b = gf_load_acq(&en->b);
            if (!tagged(b, w) || b_deadline_ns(b) <= now)
                continue;   /* the lock has run out */
            if (op == GF_SHARE_RENEW) {
                if (gf_cas(&en->b, &b, mkdeadline(dl, w)) && gf_load_acq(&en->a) == w) {
                    ok[i] = 1;
                    done++;
                }
                continue;
            }
        }
        uint32_t c = W_COUNT(w), m = W_MEMBER(w);
        uint64_t L = W_LAP(w);
        uint64_t to = mkword(op == GF_SHARE_ACK ? GF_SH_ACKED : op == GF_SHARE_RELEASE ? GF_SH_AVAIL
                             : GF_SH_ARCHIVED, c, m, L);
        if (gf_cas(&en->a, &w, to)) {
            ok[i] = 1;
            done++;
        }
    }
    if (done && op != GF_SHARE_RENEW)
        gf_faa(counter, (uint64_t)done);
    if (op != GF_SHARE_RENEW && op != GF_SHARE_RELEASE && (rc = advance(s)) < 0)
        return rc;
    return done;
}

/* ---- state ------------------------------------------------------------------------------ */
int gf_share_state_get(gf_share *s, int64_t now, gf_share_state *out)
{
    if (!now)
        now = gf_now_ns();
    memset(out, 0, sizeof *out);
    out->alive = (uint32_t)gf_lease_alive_query(s->lease, s->lease_id, now);
    out->lock_ns = s->lock_ns;
    out->max_deliveries = s->max_deliveries;
    out->capacity = (uint32_t)s->cap;
    if (gf_load_acq(&s->lease->id) != s->lease_id)
        return GF_OK;
    uint64_t fl, nx, tail;
    int rc = window(s, &fl, &nx);
    if (rc < 0 || (rc = ring_tail(s, &tail)) < 0)
        return rc;
    out->floor = fl;
    out->next = nx;
    out->tail = tail;
    int64_t oldest = 0;
    for (uint64_t o = fl; o < nx; o++) {
        struct gf_share_entry *en = entry(s, o);
        uint64_t a = gf_load_acq(&en->a);
        if (W_LAP(a) != lap_of(s, o)) {
            out->available++;
            continue;
        }
        switch (W_STATE(a)) {
        case GF_SH_AVAIL: out->available++; break;
        case GF_SH_ACQUIRED: {
            uint64_t b = gf_load_acq(&en->b);
            int64_t d = b_deadline_ns(b);
            int tag_ok = tagged(b, a);
            if (tag_ok && d <= now) {
                out->available++;
                break;
            }
            out->in_flight++;
            int64_t since = d - s->lock_ns;
            if (tag_ok && (!oldest || since < oldest))
                oldest = since;
            break;
        }
        default: out->finished++;
        }
    }
    uint64_t end = tail < fl + s->cap ? tail : fl + s->cap;
    if (end > nx)
        out->available += end - nx;
    out->oldest_lock_ns = oldest;
    out->delivered = gf_load_acq(&s->h->delivered);
    out->redelivered = gf_load_acq(&s->h->redelivered);
    out->acked = gf_load_acq(&s->h->acked);
    out->released = gf_load_acq(&s->h->released);
    out->rejected = gf_load_acq(&s->h->rejected);
    out->dead = gf_load_acq(&s->h->dead);
    out->lost = gf_load_acq(&s->h->lost);
    out->expired_locks = gf_load_acq(&s->h->expired_locks);
    out->members = gf_load_acq(&s->h->members);
    return GF_OK;
}
