/* gf_atomics.h -- the one place the core spells memory ordering.
 *
 * Shared words are C11 _Atomic objects (layout.h) and every access names its
 * order: acquire loads, release stores, acq_rel read-modify-writes, relaxed
 * where only the value matters. seq_cst is spelled (the *_sc helpers) only
 * where it is load-bearing: the two sides of a Dekker handshake (a waiter
 * counts itself, then looks; a writer changes the state, then looks for
 * waiters), where each side's store must be ordered before its later load of
 * the other side's word; every such use says which handshake it is part of.
 *
 * Two kinds of word are not declared _Atomic: words of process-local structs
 * that cffi must parse (it cannot spell _Atomic: grafos.h), and typed views
 * of raw bytes of the mapping (a ring's sequence words, a slot's owner word,
 * a registration's epoch). The first are accessed with the gf_plain_*
 * helpers (GCC's __atomic builtins, which take plain objects); the second
 * are turned into _Atomic pointers by gf_atomic32_at / gf_atomic64_at, the
 * only casts to _Atomic in the tree. */
#ifndef GRAFOS_ATOMICS_H
#define GRAFOS_ATOMICS_H
#include <stdint.h>
#include <stdatomic.h>

/* ---- _Atomic objects ----------------------------------------------------------- */
#define gf_load_acq(p)       atomic_load_explicit((p), memory_order_acquire)
#define gf_load_rlx(p)       atomic_load_explicit((p), memory_order_relaxed)
#define gf_store_rel(p, v)   atomic_store_explicit((p), (v), memory_order_release)
#define gf_store_rlx(p, v)   atomic_store_explicit((p), (v), memory_order_relaxed)
/* compare-and-swap: *e gets the value found when it fails */
#define gf_cas(p, e, v)      atomic_compare_exchange_strong_explicit((p), (e), (v), \
                                 memory_order_acq_rel, memory_order_acquire)
/* fetch-and-add / fetch-and-subtract: the value before */
#define gf_faa(p, v)         atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define gf_fsub(p, v)        atomic_fetch_sub_explicit((p), (v), memory_order_acq_rel)
#define gf_fence_acq()       atomic_thread_fence(memory_order_acquire)
#define gf_fence_rel()       atomic_thread_fence(memory_order_release)
/* a process-local object's first value, before any other thread sees it */
#define gf_init(p, v)        atomic_init((p), (v))

/* ---- seq_cst: one side of a Dekker handshake (say which at each use) ----------- */
#define gf_load_sc(p)        atomic_load_explicit((p), memory_order_seq_cst)
#define gf_store_sc(p, v)    atomic_store_explicit((p), (v), memory_order_seq_cst)
#define gf_xchg_sc(p, v)     atomic_exchange_explicit((p), (v), memory_order_seq_cst)
#define gf_faa_sc(p, v)      atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define gf_fsub_sc(p, v)     atomic_fetch_sub_explicit((p), (v), memory_order_seq_cst)
#define gf_cas_sc(p, e, v)   atomic_compare_exchange_strong_explicit((p), (e), (v), \
                                 memory_order_seq_cst, memory_order_seq_cst)

/* ---- plain objects shared between threads (structs cffi parses) ---------------- */
#define gf_plain_load_acq(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define gf_plain_load_rlx(p)      __atomic_load_n((p), __ATOMIC_RELAXED)
#define gf_plain_store_rel(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* fetch-and-add, relaxed: a counter whose value alone matters (round robin) */
#define gf_plain_faa_rlx(p, v)    __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)
/* add-and-fetch, acq_rel: the value after */
#define gf_plain_add(p, v)        __atomic_add_fetch((p), (v), __ATOMIC_ACQ_REL)

/* ---- typed views of raw words -------------------------------------------------- */
static inline _Atomic uint32_t *gf_atomic32_at(void *p) { return (_Atomic uint32_t *)p; }
static inline _Atomic uint64_t *gf_atomic64_at(void *p) { return (_Atomic uint64_t *)p; }

#endif
