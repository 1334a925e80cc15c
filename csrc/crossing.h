/* crossing.h -- the table of core entry points the CPython crossing calls.
 *
 * The core is compiled once, by cffi, into grafos._native. The per-message
 * calls (send, poll, peek) reach it from grafos._fast through this table, handed
 * over once at import, so there is one core and one copy of its
 * process-local state (the thread-local error text included). The crossing
 * checks `size` and `version` before it uses a field.
 */
#ifndef GRAFOS_CROSSING_H
#define GRAFOS_CROSSING_H
#include "grafos.h"

#define GF_CROSSING_VERSION 5u

typedef struct gf_crossing {
    uint32_t size;          /* sizeof(gf_crossing) as the core was built */
    uint32_t version;       /* GF_CROSSING_VERSION */
    int64_t (*send)(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr,
                    const uint8_t *key, uint32_t klen, uint32_t has_key,
                    const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                    int64_t ts_ns, gf_send_result *res);
    int64_t (*send_batch)(gf_ring **rings, uint32_t n, uint32_t mode, uint64_t *rr, uint32_t count,
                          const uint8_t *keys, const uint32_t *key_lens,
                          const uint8_t *vals, const uint32_t *val_lens, int64_t ts_ns,
                          uint32_t *out_parts, uint64_t *out_offsets, gf_send_result *res);
    int64_t (*poller_poll)(gf_poller *p, uint32_t max_msgs, int64_t now_ns, int64_t timeout_ns,
                           int64_t spin_ns);
    const char *(*last_error)(void);
    int64_t (*send_idem)(gf_sender *s, const uint8_t *key, uint32_t klen, uint32_t has_key,
                         const uint8_t *hdrs, uint32_t hlen, const uint8_t *val, uint32_t vlen,
                         gf_send_result *res);
    int64_t (*ring_peek)(gf_ring *r, gf_cursor *c, uint32_t max, gf_msg_meta *meta, int64_t now_ns);
    uint32_t (*ring_intact_many)(gf_ring *r, const uint64_t *offsets, uint32_t n, uint8_t *intact);
} gf_crossing;

#endif
