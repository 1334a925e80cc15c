/* fast_internal.h -- what the crossing's files share (grafos._fast: fast.c,
 * fast_send.c, fast_poll.c, fast_records.c, fast_peek.c). The helpers every
 * call takes its arguments through are inline here, so that the per-message
 * path (send, poll) makes no call between files. */
#ifndef GRAFOS_FAST_INTERNAL_H
#define GRAFOS_FAST_INTERNAL_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "grafos.h"
#include "crossing.h"

#define MAX_HEADERS 1024
#define SLICE_NS    200000000LL   /* a blocking poll looks at signals (Ctrl-C) this often */

/* shared by the crossing's files only: resolved inside the module */
#define FAST_INTERNAL __attribute__((visibility("hidden")))

/* ---- bound once at import (fast.c) ------------------------------------------------ */
FAST_INTERNAL extern const gf_crossing *core;     /* bound once by bind() */
FAST_INTERNAL extern PyObject *raise_for;         /* grafos._check.raise_for(rc, context) */
FAST_INTERNAL extern PyObject *corrupt_error;     /* grafos.errors.CorruptFabric */
FAST_INTERNAL extern PyTypeObject *message_type;  /* grafos.message.Message, a tuple subclass */
FAST_INTERNAL extern PyObject *empty_tuple, *str_send_slow, *str_send_keyed_slow, *str_poll_slow, *str_poll_ctx;
FAST_INTERNAL extern PyObject *str_intact, *str_value, *str_release;

static inline int bound(void)
{
    if (core)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "grafos._fast is not bound to the core (import grafos first)");
    return 0;
}

/* ---- bytes-like arguments -------------------------------------------------------
 * bytes and bytearray are read in place (the GIL is held for the whole call, so
 * they cannot change under it); a memoryview through its buffer, when it is
 * C-contiguous. Anything else returns 0 and the caller takes the slow path. */
typedef struct {
    const uint8_t *p;
    Py_ssize_t n;
    Py_buffer view;
    int has_view;
} bytes_arg;

static inline int get_bytes(PyObject *o, bytes_arg *b)
{
    b->has_view = 0;
    if (PyBytes_CheckExact(o)) {
        b->p = (const uint8_t *)PyBytes_AS_STRING(o);
        b->n = PyBytes_GET_SIZE(o);
    } else if (PyByteArray_CheckExact(o)) {
        b->p = (const uint8_t *)PyByteArray_AS_STRING(o);
        b->n = PyByteArray_GET_SIZE(o);
    } else if (PyMemoryView_Check(o)) {
        if (PyObject_GetBuffer(o, &b->view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();      /* released or not contiguous: the slow path says why */
            return 0;
        }
        b->has_view = 1;
        b->p = b->view.buf;
        b->n = b->view.len;
    } else
        return 0;
    if ((uint64_t)b->n > UINT32_MAX) {
        if (b->has_view)
            PyBuffer_Release(&b->view);
        return 0;
    }
    return 1;
}

static inline void put_bytes(bytes_arg *b)
{
    if (b->has_view)
        PyBuffer_Release(&b->view);
}

/* ---- a growable scratch buffer, per handle ------------------------------------- */
typedef struct {
    uint8_t *p;
    size_t cap;
} scratch;

static inline uint8_t *grow(scratch *s, size_t need)
{
    if (need > s->cap) {
        size_t cap = need < 4096 ? 4096 : need + need / 2;
        uint8_t *p = PyMem_Realloc(s->p, cap);
        if (!p) {
            PyErr_NoMemory();
            return NULL;
        }
        s->p = p;
        s->cap = cap;
    }
    return s->p;
}

static inline void *as_pointer(PyObject *o)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "null pointer");
    return p;
}

/* ---- Poller: a reader's gf_poller, owned here (fast_poll.c) -------------------------
 * The struct lives inside the Python object, so the crossing never takes its
 * address from Python: cffi views the same bytes through the buffer protocol
 * (ffi.from_buffer("gf_poller *", poller)) to fill it in and to call the core.
 * `keep` owns what its pointers point to (the reader's rings, cursors, rows and
 * buffer); `rows` is where a peek's rows land before they are copied out. */
typedef struct {
    PyObject_HEAD
    PyObject *keep;
    scratch rows;
    gf_poller p;
} Poller;
FAST_INTERNAL extern PyTypeObject PollerType;

/* The gf_poller of a Poller; NULL (TypeError set) for anything else. */
static inline gf_poller *poller_of(PyObject *o)
{
    if (Py_IS_TYPE(o, &PollerType))
        return &((Poller *)o)->p;
    PyErr_Format(PyExc_TypeError, "expected a grafos._fast.Poller, not %.100s", Py_TYPE(o)->tp_name);
    return NULL;
}

/* ---- Binding: a topic's validity, shared by the handles bound to it (fast.c) ------ */
typedef struct {
    PyObject_HEAD
    int valid;
} Binding;
FAST_INTERNAL extern PyTypeObject BindingType;
static inline int binding_ok(PyObject *b) { return b && ((Binding *)b)->valid; }

/* ---- argument parsing for (mgr, a, b=default, ..., *, kw=...) --------------------
 * Fills out[0..npos+nkwonly) from positional args and keywords by name; missing
 * ones stay NULL. Returns 0 when the call does not fit (the slow path, a plain
 * Python method with the same signature, then raises the usual TypeError). */
static inline int parse(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                 int npos, int nall, PyObject **out)
{
    for (int i = 0; i < nall; i++)
        out[i] = NULL;
    if (nargs > npos)
        return 0;
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, j);
        int hit = -1;
        for (int i = 0; i < nall && hit < 0; i++)
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0)
                hit = i;
        if (hit < 0 || out[hit])
            return 0;
        out[hit] = args[nargs + j];
    }
    return 1;
}


/* Call self.<slow>(*args, **kwargs) exactly as the fast method was called (fast.c). */
FAST_INTERNAL PyObject *slow_call(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames);

/* A bound handle is given its manager once (`own`, by _own(mgr)): a call whose
 * first argument is that manager is the long spelling; any other call goes
 * without it, and `own` is put first here, so the fast path and the slow one
 * both see (mgr, ...). buf holds at least OWN_ARGS pointers. */
#define OWN_ARGS 8
static inline int with_own(PyObject *own, PyObject *const **args, Py_ssize_t *nargs, PyObject *kwnames, PyObject **buf)
{
    if (!own || (*nargs > 0 && (*args)[0] == own))
        return 1;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (*nargs + nkw + 1 > OWN_ARGS) {
        PyErr_SetString(PyExc_TypeError, "too many arguments");
        return 0;
    }
    buf[0] = own;
    memcpy(buf + 1, *args, sizeof(PyObject *) * (size_t)(*nargs + nkw));
    *args = buf;
    *nargs += 1;
    return 1;
}

static inline PyObject *set_own(PyObject **slot, PyObject *mgr)
{
    Py_XSETREF(*slot, Py_NewRef(mgr));
    Py_RETURN_NONE;
}

/* ---- records and messages (fast_records.c) ---------------------------------------- */
/* ---- a consumer's pool of large values ----------------------------------------
 * A poll of large messages would allocate a fresh bytes object per value, and
 * glibc hands freed large blocks back to the kernel, so every poll would pay
 * page faults and zeroing on top of its copies. The pool keeps the values a
 * consumer returned; one that only the pool still references (the caller let
 * it go) is unobservable, so the next poll copies a value of the same length
 * straight from the ring into it (without the GIL: no other thread can reach
 * an object only the pool holds), and its hash cache is reset. */
#define POOL_ITEMS 256
#define POOL_BYTES (64ULL << 20)

typedef struct {
    PyObject **items;   /* bytes objects of at least GF_DIRECT_MIN bytes, owned */
    uint8_t *taken;     /* handed out by the poll in progress */
    uint32_t n, next;
    uint64_t bytes;     /* their sizes summed */
} value_pool;

/* The timestamp int of the last message made, shared with the next one when
 * they were sent in one batch (same timestamp). */
typedef struct {
    PyObject *obj;
    int64_t ns;
} shared_ts;

FAST_INTERNAL Py_ssize_t encode_headers(PyObject *h, scratch *s);
FAST_INTERNAL PyObject *decode_headers(const uint8_t *b, uint32_t len, const char **why);
FAST_INTERNAL uint8_t *pool_dest(void *ctx, uint64_t len, uint32_t *token);
FAST_INTERNAL void pool_done(gf_poller *p, value_pool *pool);
FAST_INTERNAL void pool_clear(value_pool *pool);
FAST_INTERNAL PyObject *build(const gf_msg_meta *meta, int64_t n, const uint8_t *buf, uint64_t buf_size,
                              PyObject *ids, gf_cursor *cursors, uint32_t nrings, value_pool *pool,
                              PyObject *topic);
/* ---- the types and module functions each file defines, for the module (fast.c) ---- */
FAST_INTERNAL extern PyTypeObject SenderStateType, SendPathType, PollPathType, SpanType, SegmentType;
FAST_INTERNAL PyObject *mod_messages(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_decode(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_encode_headers(PyObject *m, PyObject *h);
FAST_INTERNAL PyObject *mod_share_records(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_peek_take(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_peek_build(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_peek_runs(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_peek_check(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_peek_release(PyObject *m, PyObject *const *args, Py_ssize_t nargs);
FAST_INTERNAL PyObject *mod_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs);

#endif
