/* grafos_test.h -- hooks the tests use to leave the shared state as a killed,
 * paused or failing process would. Not part of the API (grafos.h): compiled
 * into grafos._native, which build_ffi.py gives this header's cdef too, so
 * tests reach them through lib. The fault points are also where the core's
 * files call GF_FAULT (core.h).
 *
 * The part between the cdef markers stays in the C subset cffi parses.
 */
#ifndef GRAFOS_TEST_H
#define GRAFOS_TEST_H
#include "grafos.h"

/* cdef-begin */

/* Leave a slot half-written, as a killed process would: the claimed offset is
 * left "being written" by an owner no handle has. */
int64_t gf_test_claim_slot(gf_ring *r);
/* as gf_test_claim_slot for a message of `span` slots: claimed (with any padding), every slot taken */
int64_t gf_test_claim_span(gf_ring *r, uint32_t span);
/* Finish the write of a claimed offset, as a writer descheduled after its claim would. */
int gf_test_publish(gf_ring *r, uint64_t n, const uint8_t *val, uint32_t vlen);
/* At fault point `point` (GF_FAULT_*), `action`: 0 nothing, GF_FAULT_EXIT _exit(77),
 * GF_FAULT_STOP raise SIGSTOP (a parent continues it). One point at a time. */
int gf_test_fault(int point, int action);
/* Hold / let go the write pin of lease (index, id) as a reader mid-abandon would. */
int gf_test_pin(gf_fabric *f, uint32_t index, uint64_t id);
int gf_test_unpin(gf_fabric *f, uint32_t index);
#define GF_FAULT_EXIT 1
#define GF_FAULT_STOP 2
#define GF_FAULT_FAIL 3   /* the call fails as if a system call had, once (then the point disarms) */
#define GF_FAULT_ABANDON        1   /* a reader about to mark a dead writer's slot abandoned */
#define GF_FAULT_CREATE_OPENED  10  /* fabric creation: file made, nothing else */
#define GF_FAULT_CREATE_SIZED   11  /* ... sized (ftruncate) */
#define GF_FAULT_CREATE_MAPPED  12  /* ... tables reserved and mapped */
#define GF_FAULT_CREATE_HALF    13  /* ... header half written, not ready */
#define GF_FAULT_IDEM_WRITTEN   20  /* an idempotent send: the message is written, the call not returned */
#define GF_FAULT_QUEUE_RESERVED 31  /* a queue put: its place counted, no slots taken yet */
#define GF_FAULT_QUEUE_LOANED   30  /* a queue put: slots taken, the item half copied, not published */
#define GF_FAULT_COPY           32  /* a write: its slots taken, its header written, its value not yet copied */

/* cdef-end */

#endif
