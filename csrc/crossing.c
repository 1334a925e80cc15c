/* crossing.c -- the entry points grafos._fast calls, as one table (crossing.h). */
#include "crossing.h"

static const gf_crossing table = {
    .size = sizeof(gf_crossing),
    .version = GF_CROSSING_VERSION,
    .send = gf_send,
    .send_batch = gf_send_batch,
    .poller_poll = gf_poller_poll,
    .last_error = gf_last_error,
    .send_idem = gf_send_idem,
    .ring_peek = gf_ring_peek,
    .ring_intact_many = gf_ring_intact_many,
};

const gf_crossing *gf_crossing_table(void) { return &table; }
