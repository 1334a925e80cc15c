/* fast.c -- grafos._fast: the CPython crossing for the per-message calls.
 *
 * Only a crossing. It holds no ring or lease logic and links none of the
 * core: it calls the cffi-built core (grafos._native) through the table of
 * entry points bound once at import (crossing.h), so there is one core and
 * one copy of its state. What it does is what a cffi call cannot do cheaply:
 * take bytes, bytearray and memoryview without a copy or an argument tuple,
 * keep the GIL for calls that never block, and build the returned Python
 * objects (pairs, Messages) in C.
 *
 * The fast paths only handle the common, valid case. Anything else (an
 * unbound handle, a type they do not take, an error code from the core)
 * goes to the Python method named in each type below, which checks the
 * arguments and raises the documented grafos exception. So every error
 * message is made in one place, in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include "grafos.h"
#include "crossing.h"

#define MASK48      ((1ULL << GF_OFFSET_BITS) - 1)
#define MAX_HEADERS 1024
#define SLICE_NS    200000000LL   /* a blocking poll looks at signals (Ctrl-C) this often */

static const gf_crossing *core;     /* bound once by bind() */
static PyObject *raise_for;         /* grafos._check.raise_for(rc, context) */
static PyObject *corrupt_error;     /* grafos.errors.CorruptFabric */
static PyTypeObject *message_type;  /* grafos.message.Message, a tuple subclass */
static PyObject *empty_tuple, *str_send_slow, *str_send_keyed_slow, *str_poll_slow, *str_poll_ctx;

static int bound(void)
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

static int get_bytes(PyObject *o, bytes_arg *b)
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

static void put_bytes(bytes_arg *b)
{
    if (b->has_view)
        PyBuffer_Release(&b->view);
}

/* ---- a growable scratch buffer, per handle ------------------------------------- */
typedef struct {
    uint8_t *p;
    size_t cap;
} scratch;

static uint8_t *grow(scratch *s, size_t need)
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

/* ---- headers ----------------------------------------------------------------------
 * The wire form is grafos.message.encode_headers's: u16 count, then per header
 * u16 key length, key (utf-8), u32 value length, value. encode_headers() returns
 * the encoded length, 0 for no headers, or -1 when the headers are not the
 * plain dict / list / tuple of (str | bytes, bytes-like) pairs it takes (no
 * exception set: the slow path encodes them and says what is wrong). */
static int header_pair(PyObject *item, PyObject **k, PyObject **v)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2)
        return 0;
    *k = PyTuple_GET_ITEM(item, 0);
    *v = PyTuple_GET_ITEM(item, 1);
    return 1;
}

static Py_ssize_t header_key(PyObject *k, const char **p)
{
    if (PyUnicode_CheckExact(k)) {
        Py_ssize_t n;
        *p = PyUnicode_AsUTF8AndSize(k, &n);
        if (!*p) {
            PyErr_Clear();
            return -1;
        }
        return n;
    }
    if (PyBytes_CheckExact(k)) {
        *p = PyBytes_AS_STRING(k);
        return PyBytes_GET_SIZE(k);
    }
    return -1;
}

static Py_ssize_t encode_headers(PyObject *h, scratch *s)
{
    Py_ssize_t count;
    int is_dict = PyDict_CheckExact(h);
    if (is_dict)
        count = PyDict_GET_SIZE(h);
    else if (PyList_CheckExact(h) || PyTuple_CheckExact(h))
        count = PySequence_Fast_GET_SIZE(h);
    else
        return -1;
    if (count == 0)
        return 0;
    if (count > MAX_HEADERS)
        return -1;
    /* two passes: size, then copy (no Python code runs in between) */
    size_t total = 2;
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *k, *v;
        if (is_dict)
            PyDict_Next(h, &pos, &k, &v);
        else if (!header_pair(PySequence_Fast_GET_ITEM(h, i), &k, &v))
            return -1;
        const char *kp = NULL;
        Py_ssize_t kl = header_key(k, &kp);
        if (kl < 0 || kl > 0xFFFF)
            return -1;
        Py_ssize_t vl;
        if (PyBytes_CheckExact(v))
            vl = PyBytes_GET_SIZE(v);
        else if (PyByteArray_CheckExact(v))
            vl = PyByteArray_GET_SIZE(v);
        else
            return -1;   /* memoryview values and the rest: the slow path */
        total += 2 + (size_t)kl + 4 + (size_t)vl;
        if (total > UINT32_MAX)
            return -1;
    }
    uint8_t *out = grow(s, total);
    if (!out) {
        PyErr_Clear();
        return -1;
    }
    uint16_t c16 = (uint16_t)count;
    memcpy(out, &c16, 2);
    size_t at = 2;
    pos = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *k, *v;
        if (is_dict)
            PyDict_Next(h, &pos, &k, &v);
        else
            header_pair(PySequence_Fast_GET_ITEM(h, i), &k, &v);
        const char *kp = NULL;
        Py_ssize_t kl = header_key(k, &kp);
        const char *vp = PyBytes_CheckExact(v) ? PyBytes_AS_STRING(v) : PyByteArray_AS_STRING(v);
        uint32_t vl = (uint32_t)(PyBytes_CheckExact(v) ? PyBytes_GET_SIZE(v) : PyByteArray_GET_SIZE(v));
        uint16_t k16 = (uint16_t)kl;
        memcpy(out + at, &k16, 2);
        memcpy(out + at + 2, kp, (size_t)kl);
        at += 2 + (size_t)kl;
        memcpy(out + at, &vl, 4);
        memcpy(out + at + 4, vp, vl);
        at += 4 + vl;
    }
    return (Py_ssize_t)at;
}

/* The inverse, over bytes that came out of shared memory. Returns a new tuple of
 * (str, bytes) pairs, or NULL with *why set (and no exception) when the blob is
 * malformed, or NULL with an exception when memory ran out. */
static PyObject *decode_headers(const uint8_t *b, uint32_t len, const char **why)
{
    *why = NULL;
    if (len < 2) {
        *why = "message headers are malformed: too short for a count";
        return NULL;
    }
    uint16_t n;
    memcpy(&n, b, 2);
    PyObject *out = PyTuple_New(n);
    if (!out)
        return NULL;
    uint64_t pos = 2;
    for (uint16_t i = 0; i < n; i++) {
        uint16_t kl;
        uint32_t vl;
        if (pos + 2 > len)
            goto short_blob;
        memcpy(&kl, b + pos, 2);
        pos += 2;
        const uint8_t *kp = b + pos;
        pos += kl;
        if (pos + 4 > len)
            goto short_blob;
        memcpy(&vl, b + pos, 4);
        pos += 4;
        if (pos + vl > len) {
            *why = "message headers run past their length";
            goto bad;
        }
        PyObject *k = PyUnicode_DecodeUTF8((const char *)kp, kl, "replace");
        PyObject *v = k ? PyBytes_FromStringAndSize((const char *)b + pos, vl) : NULL;
        PyObject *pair = v ? PyTuple_New(2) : NULL;
        if (!pair) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, k);
        PyTuple_SET_ITEM(pair, 1, v);
        PyTuple_SET_ITEM(out, i, pair);
        pos += vl;
    }
    if (pos != len) {
        *why = "message headers have trailing bytes";
        goto bad;
    }
    return out;
short_blob:
    *why = "message headers are malformed: they end inside a length";
bad:
    Py_DECREF(out);
    return NULL;
}

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

static inline int pool_free_item(const value_pool *pool, uint32_t i)
{
    return !pool->taken[i] && Py_REFCNT(pool->items[i]) == 1;
}

/* gf_poller.value_dest: a free value of exactly len bytes, NULL if none */
static uint8_t *pool_dest(void *ctx, uint64_t len, uint32_t *token)
{
    value_pool *pool = ctx;
    for (uint32_t k = 0; k < pool->n; k++) {
        uint32_t i = pool->next + k < pool->n ? pool->next + k : pool->next + k - pool->n;
        PyObject *o = pool->items[i];
        if ((uint64_t)Py_SIZE(o) == len && pool_free_item(pool, i)) {
            pool->taken[i] = 1;
            pool->next = i + 1 < pool->n ? i + 1 : 0;
            _Py_COMP_DIAG_PUSH
            _Py_COMP_DIAG_IGNORE_DEPR_DECLS
            ((PyBytesObject *)o)->ob_shash = -1;   /* its bytes change: forget the hash */
            _Py_COMP_DIAG_POP
            *token = i;
            return (uint8_t *)PyBytes_AS_STRING(o);
        }
    }
    return NULL;
}

/* a value the poll had to allocate: keep it for later polls while room lasts,
 * else in place of a free value (the sizes a consumer sees may change) */
static void pool_admit(value_pool *pool, PyObject *v)
{
    uint64_t size = (uint64_t)PyBytes_GET_SIZE(v);
    if (!pool->items) {
        pool->items = PyMem_Calloc(POOL_ITEMS, sizeof(PyObject *));
        pool->taken = PyMem_Calloc(POOL_ITEMS, 1);
        if (!pool->items || !pool->taken) {
            PyMem_Free(pool->items);
            PyMem_Free(pool->taken);
            pool->items = NULL;
            pool->taken = NULL;
            return;     /* no pool: values are allocated per poll */
        }
    }
    if (pool->n < POOL_ITEMS && pool->bytes + size <= POOL_BYTES) {
        pool->items[pool->n++] = Py_NewRef(v);
        pool->bytes += size;
        return;
    }
    for (uint32_t i = 0; i < pool->n; i++) {
        PyObject *old = pool->items[i];
        if (pool_free_item(pool, i) && pool->bytes - (uint64_t)Py_SIZE(old) + size <= POOL_BYTES) {
            pool->bytes = pool->bytes - (uint64_t)Py_SIZE(old) + size;
            pool->items[i] = Py_NewRef(v);
            Py_DECREF(old);
            return;
        }
    }
}

/* the end of a poll: nothing is handed out any more */
static void pool_done(gf_poller *p, value_pool *pool)
{
    p->value_dest = NULL;
    p->dest_ctx = NULL;
    if (pool->n)
        memset(pool->taken, 0, pool->n);
}

static void pool_clear(value_pool *pool)
{
    PyObject **items = pool->items;
    uint32_t n = pool->n;
    PyMem_Free(pool->taken);
    *pool = (value_pool){0};
    for (uint32_t i = 0; i < n; i++)
        Py_DECREF(items[i]);
    PyMem_Free(items);
}

/* ---- building what poll returns ---------------------------------------------------
 * One (partition, Message) pair per meta row. A Message is a tuple subclass of
 * (offset, key, value, timestamp, headers); its items are ints, bytes, None and
 * tuples of str and bytes, which can never form a cycle, so it is untracked by
 * the garbage collector at once, as CPython does with such tuples itself. */

/* The timestamp int of the last message made, shared with the next one when
 * they were sent in one batch (same timestamp). */
typedef struct {
    PyObject *obj;
    int64_t ns;
} shared_ts;

/* A record's headers: () when it has none; NULL when they do not parse, with
 * *why saying how (NULL with *why NULL: out of memory). */
static PyObject *record_headers(const gf_msg_meta *m, const uint8_t *b, const char **why)
{
    *why = NULL;
    if (m->hdr_len == 0)
        return Py_NewRef(empty_tuple);
    return decode_headers(b + m->key_len, m->hdr_len, why);
}

/* A record's key, value and timestamp, as new references (NULL where one could
 * not be made). A value the read copied into the pool is that pooled object. */
static inline void record_fields(const gf_msg_meta *m, const uint8_t *b, shared_ts *last, value_pool *pool,
                                 PyObject **key_out, PyObject **val_out, PyObject **ts_out)
{
    *key_out = (m->flags & GF_MSG_HAS_KEY) ? PyBytes_FromStringAndSize((const char *)b, m->key_len)
                                           : Py_NewRef(Py_None);
    PyObject *val;
    uint32_t t = m->reserved - 1;
    if (pool && m->reserved && t < pool->n && pool->taken[t] && (uint64_t)Py_SIZE(pool->items[t]) == m->val_len)
        val = Py_NewRef(pool->items[t]);     /* copied there by the read */
    else {
        val = PyBytes_FromStringAndSize((const char *)b + m->key_len + m->hdr_len, m->val_len);
        if (val && pool && m->val_len >= GF_DIRECT_MIN)
            pool_admit(pool, val);
    }
    *val_out = val;
    PyObject *ts;
    if (last->obj && last->ns == m->ts_ns)
        ts = Py_NewRef(last->obj);
    else if ((ts = PyLong_FromLongLong(m->ts_ns)) != NULL) {
        Py_XSETREF(last->obj, Py_NewRef(ts));
        last->ns = m->ts_ns;
    }
    *ts_out = ts;
}

static PyObject *make_message(const gf_msg_meta *m, const uint8_t *b, PyObject *headers, shared_ts *last,
                              value_pool *pool)
{
    PyObject *msg = message_type->tp_alloc(message_type, 5);
    if (!msg) {
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *off = PyLong_FromLongLong((int64_t)m->offset);   /* < 2^48: the medium-int fast path */
    PyObject *key, *val, *ts;
    record_fields(m, b, last, pool, &key, &val, &ts);
    PyTuple_SET_ITEM(msg, 0, off);
    PyTuple_SET_ITEM(msg, 1, key);
    PyTuple_SET_ITEM(msg, 2, val);
    PyTuple_SET_ITEM(msg, 3, ts);
    PyTuple_SET_ITEM(msg, 4, headers);
    if (!off || !key || !val || !ts) {
        Py_DECREF(msg);     /* tuple dealloc takes NULL items */
        return NULL;
    }
    PyObject_GC_UnTrack(msg);
    return msg;
}

/* rows -> list of pairs. `ids` maps a row's ring index to the partition id it
 * reports (NULL: the index is the id). Rows whose headers do not parse are
 * dropped and counted in cursors[i].corrupt when cursors are given; without
 * cursors (a Batch being iterated) they raise CorruptFabric. */
static PyObject *build(const gf_msg_meta *meta, int64_t n, const uint8_t *buf, uint64_t buf_size,
                       PyObject *ids, gf_cursor *cursors, uint32_t nrings, value_pool *pool)
{
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    /* Every Message counts towards the collector's threshold as it is made, so
     * a poll of 1000 would run several collections over objects that are
     * untracked anyway: hold collections off for the loop (at most one runs at
     * the next allocation after it). A collector the user disabled stays so. */
    int gc_was = PyGC_Disable();
    shared_ts ts_last = {NULL, 0};
    Py_ssize_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        const gf_msg_meta *m = &meta[i];
        uint64_t end = (uint64_t)m->pos + m->key_len + m->hdr_len + m->val_len;
        if (end > buf_size || (nrings && m->partition >= nrings)) {
            PyErr_Format(corrupt_error, "poll row %lld points outside the read buffer", (long long)i);
            goto fail;
        }
        const uint8_t *b = buf + m->pos;
        const char *why;
        PyObject *headers = record_headers(m, b, &why);
        if (!headers) {
            if (!why)
                goto fail;
            if (!cursors) {
                PyErr_SetString(corrupt_error, why);
                goto fail;
            }
            cursors[m->partition].corrupt++;   /* the checksum only proves it is what was written */
            continue;
        }
        PyObject *msg = make_message(m, b, headers, &ts_last, pool);
        if (!msg)
            goto fail;
        PyObject *part;
        if (ids) {
            if ((Py_ssize_t)m->partition >= PyList_GET_SIZE(ids)) {
                Py_DECREF(msg);
                PyErr_SetString(corrupt_error, "poll row names a partition the reader does not have");
                goto fail;
            }
            part = Py_NewRef(PyList_GET_ITEM(ids, m->partition));
        } else
            part = PyLong_FromUnsignedLong(m->partition);
        PyObject *pair = part ? PyTuple_New(2) : NULL;
        if (!pair) {
            Py_XDECREF(part);
            Py_DECREF(msg);
            goto fail;
        }
        PyTuple_SET_ITEM(pair, 0, part);
        PyTuple_SET_ITEM(pair, 1, msg);
        PyObject_GC_UnTrack(pair);
        PyList_SET_ITEM(list, k, pair);
        k++;
    }
    if (k < n) {
        for (Py_ssize_t j = k; j < n; j++)
            PyList_SET_ITEM(list, j, Py_NewRef(Py_None));
        if (PyList_SetSlice(list, k, n, NULL) < 0)
            goto fail;
    }
    Py_XDECREF(ts_last.obj);
    if (gc_was)
        PyGC_Enable();
    return list;
fail:
    Py_XDECREF(ts_last.obj);
    if (gc_was)
        PyGC_Enable();
    for (Py_ssize_t j = k; j < n; j++)     /* the unfilled tail, so the list can be freed */
        if (!PyList_GET_ITEM(list, j))
            PyList_SET_ITEM(list, j, Py_NewRef(Py_None));
    Py_DECREF(list);
    return NULL;
}

static void *as_pointer(PyObject *o)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "null pointer");
    return p;
}

/* ---- Binding: a topic's validity, shared by the handles bound to it ------------- */
typedef struct {
    PyObject_HEAD
    int valid;
} Binding;

static PyObject *binding_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Binding *b = (Binding *)type->tp_alloc(type, 0);
    if (b)
        b->valid = 1;
    return (PyObject *)b;
}

static PyObject *binding_invalidate(Binding *self, PyObject *unused)
{
    self->valid = 0;
    Py_RETURN_NONE;
}

static PyObject *binding_valid(Binding *self, void *unused) { return PyBool_FromLong(self->valid); }

static PyMethodDef binding_methods[] = {
    {"invalidate", (PyCFunction)binding_invalidate, METH_NOARGS,
     "Make every handle bound through this binding take its slow path (re-bind) on its next call."},
    {NULL},
};

static PyGetSetDef binding_getset[] = {
    {"valid", (getter)binding_valid, NULL, "False once invalidated", NULL},
    {NULL},
};

static PyTypeObject BindingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Binding",
    .tp_basicsize = sizeof(Binding),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A topic's opened state as handles see it: valid until the manager replaces or drops it.",
    .tp_new = binding_new,
    .tp_methods = binding_methods,
    .tp_getset = binding_getset,
};

static inline int binding_ok(PyObject *b) { return b && ((Binding *)b)->valid; }

/* ---- argument parsing for (mgr, a, b=default, ..., *, kw=...) --------------------
 * Fills out[0..npos+nkwonly) from positional args and keywords by name; missing
 * ones stay NULL. Returns 0 when the call does not fit (the slow path, a plain
 * Python method with the same signature, then raises the usual TypeError). */
static int parse(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
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

/* Call self.<slow>(*args, **kwargs) exactly as the fast method was called. */
static PyObject *slow_call(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[8], **all = small;
    if (nargs + nkw + 1 > 8) {
        all = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
        if (!all)
            return PyErr_NoMemory();
    }
    all[0] = self;
    memcpy(all + 1, args, sizeof(PyObject *) * (size_t)(nargs + nkw));
    PyObject *r = PyObject_VectorcallMethod(name, all, (size_t)(nargs + 1), kwnames);
    if (all != small)
        PyMem_Free(all);
    return r;
}

/* A bound handle is given its manager once (`own`, by _own(mgr)): a call whose
 * first argument is that manager is the long spelling; any other call goes
 * without it, and `own` is put first here, so the fast path and the slow one
 * both see (mgr, ...). buf holds at least OWN_ARGS pointers. */
#define OWN_ARGS 8
static int with_own(PyObject *own, PyObject *const **args, Py_ssize_t *nargs, PyObject *kwnames, PyObject **buf)
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

static PyObject *set_own(PyObject **slot, PyObject *mgr)
{
    Py_XSETREF(*slot, Py_NewRef(mgr));
    Py_RETURN_NONE;
}

/* ---- SendPath: the base of grafos.mq.producer.Producer ---------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *mgr;       /* the manager `s` belongs to; NULL while unbound */
    PyObject *own;       /* a bound handle's manager (see with_own); NULL for a plain one */
    PyObject *binding;   /* the topic's Binding */
    PyObject *keep;      /* owns the memory `s` and its rings array live in */
    gf_sender *s;
    scratch hdrs;        /* encoded headers of one send */
    scratch batch;       /* keys, values and lengths of one list batch */
} SendPath;

static int sendpath_traverse(SendPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mgr);
    Py_VISIT(self->own);
    Py_VISIT(self->binding);
    Py_VISIT(self->keep);
    return 0;
}

static int sendpath_clear(SendPath *self)
{
    self->s = NULL;
    Py_CLEAR(self->mgr);
    Py_CLEAR(self->own);
    Py_CLEAR(self->binding);
    Py_CLEAR(self->keep);
    return 0;
}

static void sendpath_dealloc(SendPath *self)
{
    PyObject_GC_UnTrack(self);
    sendpath_clear(self);
    PyMem_Free(self->hdrs.p);
    PyMem_Free(self->batch.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind_fast(mgr, binding, sender_address, keep): route sends to mgr through the
 * gf_sender at sender_address (owned by keep) while binding is valid. */
static PyObject *sendpath_bind(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyObject_TypeCheck(args[1], &BindingType)) {
        PyErr_SetString(PyExc_TypeError, "_bind_fast(mgr, binding, sender_address, keep)");
        return NULL;
    }
    gf_sender *s = as_pointer(args[2]);
    if (!s)
        return NULL;
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep;
    self->mgr = Py_NewRef(args[0]);
    self->binding = Py_NewRef(args[1]);
    self->keep = Py_NewRef(args[3]);
    self->s = s;
    Py_XDECREF(om);     /* after the new state is in place: a dealloc may run code */
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

static PyObject *sendpath_own(SendPath *self, PyObject *mgr)
{
    return set_own(&self->own, mgr);
}

static PyObject *sendpath_unbind(SendPath *self, PyObject *unused)
{
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep;
    self->s = NULL;
    self->mgr = self->binding = self->keep = NULL;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

/* One send: key (NULL: none), value, headers (NULL or None: none). Returns the
 * pair, or NULL with no exception set when the slow path must take the call. */
static PyObject *send_one(SendPath *self, PyObject *key, PyObject *value, PyObject *headers)
{
    gf_sender *s = self->s;
    bytes_arg k = {0}, v;
    int has_key = key && key != Py_None;
    if (has_key && !get_bytes(key, &k))
        return NULL;
    if (!get_bytes(value, &v)) {
        if (has_key)
            put_bytes(&k);
        return NULL;
    }
    const uint8_t *hp = NULL;
    Py_ssize_t hl = 0;
    if (headers && headers != Py_None) {
        hl = encode_headers(headers, &self->hdrs);
        hp = self->hdrs.p;
    }
    PyObject *r = NULL;
    if (hl >= 0) {
        int64_t rc = s->idem
            ? core->send_idem(s, k.p, (uint32_t)k.n, (uint32_t)has_key, hp, (uint32_t)hl, v.p, (uint32_t)v.n)
            : core->send(s->rings, s->n, s->mode, &s->rr, k.p, (uint32_t)k.n, (uint32_t)has_key,
                         hp, (uint32_t)hl, v.p, (uint32_t)v.n, 0);
        if (rc >= 0) {
            PyObject *p = PyLong_FromLongLong(rc >> GF_OFFSET_BITS);
            PyObject *o = PyLong_FromLongLong((int64_t)((uint64_t)rc & MASK48));   /* the medium-int fast path */
            r = p && o ? PyTuple_New(2) : NULL;
            if (r) {
                PyTuple_SET_ITEM(r, 0, p);
                PyTuple_SET_ITEM(r, 1, o);
            } else {
                Py_XDECREF(p);
                Py_XDECREF(o);
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
            }
        }
    }
    if (has_key)
        put_bytes(&k);
    put_bytes(&v);
    return r;
}

static const char *const send_names[] = {"mgr", "value", "headers"};
static const char *const send_keyed_names[] = {"mgr", "key", "value", "headers"};

/* send(mgr, value, headers=None) -> (partition, offset) */
static PyObject *sendpath_send(SendPath *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3], *buf[OWN_ARGS];
    if (!with_own(self->own, &args, &nargs, kwnames, buf))
        return NULL;
    if (self->s && parse(args, nargs, kwnames, send_names, 3, 3, a) && a[0] == self->mgr && a[1] &&
        binding_ok(self->binding)) {
        PyObject *r = send_one(self, NULL, a[1], a[2]);
        if (r || PyErr_Occurred())
            return r;
    }
    return slow_call((PyObject *)self, str_send_slow, args, nargs, kwnames);
}

/* send_keyed(mgr, key, value, headers=None) -> (partition, offset) */
static PyObject *sendpath_send_keyed(SendPath *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    PyObject *a[4], *buf[OWN_ARGS];
    if (!with_own(self->own, &args, &nargs, kwnames, buf))
        return NULL;
    if (self->s && parse(args, nargs, kwnames, send_keyed_names, 4, 4, a) && a[0] == self->mgr &&
        a[1] && a[2] && binding_ok(self->binding)) {
        PyObject *r = send_one(self, a[1], a[2], a[3]);
        if (r || PyErr_Occurred())
            return r;
    }
    return slow_call((PyObject *)self, str_send_keyed_slow, args, nargs, kwnames);
}

/* _send_lists(values, keys, parts, offsets) -> rc, or None when the lists hold
 * something other than bytes / bytearray (the caller's packing path then checks
 * and says what). parts and offsets are writable uint32 / uint64 arrays of the
 * batch's length. Walks the lists into one scratch buffer and hands the batch
 * to the core's send_batch in one call. */
static PyObject *send_lists(SendPath *self, PyObject *vals, PyObject *keys, uint32_t *parts, uint64_t *offs,
                            Py_ssize_t n)
{
    int has_keys = keys != Py_None;
    uint64_t kbytes = 0, vbytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(vals, i);
        if (PyBytes_CheckExact(v))
            vbytes += (uint64_t)PyBytes_GET_SIZE(v);
        else if (PyByteArray_CheckExact(v))
            vbytes += (uint64_t)PyByteArray_GET_SIZE(v);
        else
            Py_RETURN_NONE;
        if (has_keys) {
            PyObject *k = PySequence_Fast_GET_ITEM(keys, i);
            if (PyBytes_CheckExact(k))
                kbytes += (uint64_t)PyBytes_GET_SIZE(k);
            else if (PyByteArray_CheckExact(k))
                kbytes += (uint64_t)PyByteArray_GET_SIZE(k);
            else
                Py_RETURN_NONE;
        }
    }
    if (kbytes > UINT32_MAX || vbytes > UINT32_MAX)
        Py_RETURN_NONE;       /* the packing path refuses it by size */
    size_t lens = (size_t)n * sizeof(uint32_t) * (has_keys ? 2 : 1);
    uint8_t *base = grow(&self->batch, lens + kbytes + vbytes);
    if (!base)
        return NULL;
    uint32_t *vl = (uint32_t *)base, *kl = has_keys ? vl + n : NULL;
    uint8_t *kp0 = base + lens, *vp0 = kp0 + kbytes, *kp = kp0, *vp = vp0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PySequence_Fast_GET_ITEM(vals, i);
        int isb = PyBytes_CheckExact(v);
        size_t b = (size_t)(isb ? PyBytes_GET_SIZE(v) : PyByteArray_GET_SIZE(v));
        memcpy(vp, isb ? PyBytes_AS_STRING(v) : PyByteArray_AS_STRING(v), b);
        vp += b;
        vl[i] = (uint32_t)b;
        if (has_keys) {
            PyObject *k = PySequence_Fast_GET_ITEM(keys, i);
            int kb = PyBytes_CheckExact(k);
            size_t a = (size_t)(kb ? PyBytes_GET_SIZE(k) : PyByteArray_GET_SIZE(k));
            memcpy(kp, kb ? PyBytes_AS_STRING(k) : PyByteArray_AS_STRING(k), a);
            kp += a;
            kl[i] = (uint32_t)a;
        }
    }
    gf_sender *s = self->s;
    int64_t rc = core->send_batch(s->rings, s->n, s->mode, &s->rr, (uint32_t)n,
                                  has_keys ? kp0 : NULL, kl, vp0, vl, 0, parts, offs);
    return PyLong_FromLongLong(rc);
}

static PyObject *sendpath_send_lists(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !self->s) {
        PyErr_SetString(PyExc_TypeError, "_send_lists(values, keys, parts, offsets) on a bound sender");
        return NULL;
    }
    PyObject *vals = args[0], *keys = args[1];
    if (!(PyList_CheckExact(vals) || PyTuple_CheckExact(vals)) ||
        (keys != Py_None && !(PyList_CheckExact(keys) || PyTuple_CheckExact(keys))))
        Py_RETURN_NONE;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(vals);
    if (n == 0 || (uint64_t)n > UINT32_MAX || (keys != Py_None && PySequence_Fast_GET_SIZE(keys) != n))
        Py_RETURN_NONE;
    Py_buffer pb, ob;
    if (PyObject_GetBuffer(args[2], &pb, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &ob, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&pb);
        return NULL;
    }
    PyObject *r;
    if (pb.len < n * (Py_ssize_t)sizeof(uint32_t) || ob.len < n * (Py_ssize_t)sizeof(uint64_t)) {
        PyErr_SetString(PyExc_ValueError, "parts / offsets arrays are shorter than the batch");
        r = NULL;
    } else
        r = send_lists(self, vals, keys, pb.buf, ob.buf, n);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&ob);
    return r;
}

/* _send_rows(values, parts, offsets) -> rc, or None for the packing path: values
 * is any object with a C-contiguous 2-D buffer (a numpy array), one message per
 * row, handed to the core in place: the ring's copy is the only one. */
static PyObject *sendpath_send_rows(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !self->s) {
        PyErr_SetString(PyExc_TypeError, "_send_rows(values, parts, offsets) on a bound sender");
        return NULL;
    }
    Py_buffer vb, pb, ob;
    if (PyObject_GetBuffer(args[0], &vb, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();          /* not contiguous, or not a buffer: the packing path says why */
        Py_RETURN_NONE;
    }
    uint64_t n = vb.ndim == 2 ? (uint64_t)vb.shape[0] : 0, width = vb.ndim == 2 ? (uint64_t)vb.shape[1] * (uint64_t)vb.itemsize : 0;
    if (n == 0 || n > UINT32_MAX || width > UINT32_MAX) {
        PyBuffer_Release(&vb);
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(args[1], &pb, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&vb);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &ob, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&vb);
        PyBuffer_Release(&pb);
        return NULL;
    }
    PyObject *r = NULL;
    uint32_t *lens;
    if ((uint64_t)pb.len < n * sizeof(uint32_t) || (uint64_t)ob.len < n * sizeof(uint64_t))
        PyErr_SetString(PyExc_ValueError, "parts / offsets arrays are shorter than the batch");
    else if ((lens = (uint32_t *)grow(&self->batch, n * sizeof(uint32_t))) != NULL) {
        for (uint64_t i = 0; i < n; i++)
            lens[i] = (uint32_t)width;
        gf_sender *s = self->s;
        r = PyLong_FromLongLong(core->send_batch(s->rings, s->n, s->mode, &s->rr, (uint32_t)n, NULL, NULL,
                                                 vb.buf, lens, 0, pb.buf, ob.buf));
    }
    PyBuffer_Release(&vb);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&ob);
    return r;
}

static PyMethodDef sendpath_methods[] = {
    {"send", (PyCFunction)(void (*)(void))sendpath_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, mgr, value, headers=None, *, timeout=...)\n--\n\n"
     "Append value without a key (round robin); returns (partition, offset).\n"
     "value: bytes, bytearray or memoryview. timeout: seconds a send to a full\n"
     "on_full=\"block\" topic waits for room (None: for ever; not given: the\n"
     "producer's timeout)."},
    {"send_keyed", (PyCFunction)(void (*)(void))sendpath_send_keyed, METH_FASTCALL | METH_KEYWORDS,
     "send_keyed($self, mgr, key, value, headers=None, *, timeout=...)\n--\n\n"
     "Append value under key (Kafka's partitioner; key None: round robin); returns\n"
     "(partition, offset). timeout: as for send (not given: the producer's timeout)."},
    {"_bind_fast", (PyCFunction)(void (*)(void))sendpath_bind, METH_FASTCALL, NULL},
    {"_unbind_fast", (PyCFunction)sendpath_unbind, METH_NOARGS, NULL},
    {"_own", (PyCFunction)sendpath_own, METH_O, "_own(mgr): a bound handle's manager (see with_own)"},
    {"_send_lists", (PyCFunction)(void (*)(void))sendpath_send_lists, METH_FASTCALL, NULL},
    {"_send_rows", (PyCFunction)(void (*)(void))sendpath_send_rows, METH_FASTCALL, NULL},
    {NULL},
};

static PyTypeObject SendPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.SendPath",
    .tp_basicsize = sizeof(SendPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The per-message send calls of a Producer, entering the core once per message.",
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)sendpath_traverse,
    .tp_clear = (inquiry)sendpath_clear,
    .tp_dealloc = (destructor)sendpath_dealloc,
    .tp_methods = sendpath_methods,
};

/* ---- PollPath: the base of grafos.mq.consumer.Consumer ----------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *mgr;       /* the manager `p` reads from; NULL while unbound */
    PyObject *own;       /* a bound handle's manager (see with_own); NULL for a plain one */
    PyObject *binding;   /* the topic's Binding */
    PyObject *keep;      /* owns the poller and everything it points to (a Reader) */
    gf_poller *p;
    int holes;           /* an assigned partition was already reclaimed when opened */
    unsigned long long consumed;
    value_pool pool;     /* large values returned before, reused once let go */
} PollPath;

static int pollpath_traverse(PollPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mgr);
    Py_VISIT(self->own);
    Py_VISIT(self->binding);
    Py_VISIT(self->keep);
    return 0;
}

static int pollpath_clear(PollPath *self)
{
    self->p = NULL;
    pool_clear(&self->pool);
    Py_CLEAR(self->mgr);
    Py_CLEAR(self->own);
    Py_CLEAR(self->binding);
    Py_CLEAR(self->keep);
    return 0;
}

static void pollpath_dealloc(PollPath *self)
{
    PyObject_GC_UnTrack(self);
    pollpath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind_fast(mgr, binding, poller_address, keep, holes) */
static PyObject *pollpath_bind(PollPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyObject_TypeCheck(args[1], &BindingType)) {
        PyErr_SetString(PyExc_TypeError, "_bind_fast(mgr, binding, poller_address, keep, holes)");
        return NULL;
    }
    gf_poller *p = as_pointer(args[2]);
    int holes = p ? PyObject_IsTrue(args[4]) : -1;
    if (holes < 0)
        return NULL;
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep;
    self->mgr = Py_NewRef(args[0]);
    self->binding = Py_NewRef(args[1]);
    self->keep = Py_NewRef(args[3]);
    self->p = p;
    self->holes = holes;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

static PyObject *pollpath_own(PollPath *self, PyObject *mgr)
{
    return set_own(&self->own, mgr);
}

static PyObject *pollpath_unbind(PollPath *self, PyObject *unused)
{
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep;
    self->p = NULL;
    self->mgr = self->binding = self->keep = NULL;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

/* seconds as a Python number -> ns; returns 0 when o is not a plain finite-or-inf
 * int/float (the slow path validates it). *forever for None and +inf. */
static int seconds_arg(PyObject *o, int64_t *ns, int *forever)
{
    double d;
    *forever = 0;
    if (o == Py_None) {
        *forever = 1;
        return 1;
    }
    if (PyFloat_CheckExact(o))
        d = PyFloat_AS_DOUBLE(o);
    else if (PyLong_CheckExact(o)) {
        d = PyLong_AsDouble(o);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    } else
        return 0;
    if (isnan(d))
        return 0;
    if (d > 9e9) {        /* about 285 years, or inf: forever */
        *forever = 1;
        return 1;
    }
    *ns = d <= 0 ? 0 : (int64_t)(d * 1e9);
    return 1;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *const poll_names[] = {"mgr", "max_messages", "timeout", "spin"};

/* poll(mgr, max_messages=100, timeout=0.0, *, spin=None) -> [(partition, Message)]
 * spin None: adaptive (GF_SPIN_ADAPTIVE); seconds: that long, every wait */
static PyObject *pollpath_poll(PollPath *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[4], *buf[OWN_ARGS];
    if (!with_own(self->own, &args, &nargs, kwnames, buf))
        return NULL;
    long max = 100;
    int64_t timeout_ns = 0, spin_ns = GF_SPIN_ADAPTIVE;
    int forever = 0, spin_forever;
    if (!self->p || !parse(args, nargs, kwnames, poll_names, 3, 4, a) || a[0] != self->mgr ||
        !binding_ok(self->binding))
        goto slow;
    if (a[1]) {
        if (!PyLong_CheckExact(a[1]))
            goto slow;
        max = PyLong_AsLong(a[1]);
        if (max < 1) {
            PyErr_Clear();
            goto slow;
        }
        if (max > UINT32_MAX)
            max = UINT32_MAX;
    }
    if (a[2] && !seconds_arg(a[2], &timeout_ns, &forever))
        goto slow;
    if (a[3] && a[3] != Py_None && (!seconds_arg(a[3], &spin_ns, &spin_forever) || spin_forever))
        goto slow;
    gf_poller *p = self->p;
    int64_t rc;
    /* large values go straight from the ring into pooled bytes objects (set for
     * this call only: the reader's own poll keeps every value in its buffer) */
    if (self->pool.n) {
        p->value_dest = pool_dest;
        p->dest_ctx = &self->pool;
    }
    if (!forever && timeout_ns == 0) {
        rc = core->poller_poll(p, (uint32_t)max, 0, 0, 0);   /* never blocks: keep the GIL */
    } else {
        /* Block in slices with the GIL released, looking at signals between them so
         * Ctrl-C gets through. A partition that reads as expired may be a restart
         * on its way: the slow path looks at the directory. */
        PyObject *keep = Py_NewRef(self->keep);
        int64_t deadline = forever ? INT64_MAX : mono_ns() + timeout_ns;
        for (;;) {
            int64_t now = mono_ns(), left = deadline - now;
            int64_t slice = left < SLICE_NS ? (left > 0 ? left : 0) : SLICE_NS;
            Py_BEGIN_ALLOW_THREADS
            rc = core->poller_poll(p, (uint32_t)max, 0, slice, spin_ns);
            Py_END_ALLOW_THREADS
            if (spin_ns > 0)
                spin_ns = 0;        /* a fixed spin: before the first sleep only */
            if (rc != 0 || mono_ns() >= deadline)
                break;
            if (p->expired || self->holes) {
                /* the rest of the wait, in the slow path: it re-reads the directory */
                pool_done(p, &self->pool);
                Py_DECREF(keep);
                PyObject *mx = PyLong_FromLong(max);
                PyObject *t = !mx ? NULL : forever ? Py_NewRef(Py_None)
                                      : PyFloat_FromDouble((double)(deadline - mono_ns()) / 1e9);
                PyObject *r = NULL;
                if (t) {
                    PyObject *sargs[4] = {(PyObject *)self, a[0], mx, t};
                    r = PyObject_VectorcallMethod(str_poll_slow, sargs, 4, NULL);
                }
                Py_XDECREF(mx);
                Py_XDECREF(t);
                return r;
            }
            if (PyErr_CheckSignals() < 0) {
                pool_done(p, &self->pool);
                Py_DECREF(keep);
                return NULL;
            }
        }
        Py_DECREF(keep);
    }
    if (rc < 0) {
        pool_done(p, &self->pool);
        PyObject *r = PyObject_CallFunction(raise_for, "LO", (long long)rc, str_poll_ctx);
        Py_XDECREF(r);
        return NULL;
    }
    if (rc == 0 && (p->expired || self->holes)) {
        pool_done(p, &self->pool);
        goto slow;     /* nothing, and a partition is gone: the directory may have news */
    }
    PyObject *list = build(p->meta, rc, p->buf, p->buf_size, NULL, p->cursors, p->n, &self->pool);
    pool_done(p, &self->pool);
    if (list)
        self->consumed += (unsigned long long)PyList_GET_SIZE(list);
    return list;
slow:
    return slow_call((PyObject *)self, str_poll_slow, args, nargs, kwnames);
}

static PyMethodDef pollpath_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))pollpath_poll, METH_FASTCALL | METH_KEYWORDS,
     "poll($self, mgr, max_messages=100, timeout=0.0, *, spin=None)\n--\n\n"
     "Up to max_messages as a list of (partition, Message).\n"
     "timeout: 0 returns at once; seconds blocks until a message arrives or the time\n"
     "passes; None blocks until a message arrives. spin: seconds of polling before sleeping\n"
     "(None: adaptive, at most 200 us, none on a consumer that waits long; 0: never)."},
    {"_bind_fast", (PyCFunction)(void (*)(void))pollpath_bind, METH_FASTCALL, NULL},
    {"_unbind_fast", (PyCFunction)pollpath_unbind, METH_NOARGS, NULL},
    {"_own", (PyCFunction)pollpath_own, METH_O, "_own(mgr): a bound handle's manager (see with_own)"},
    {NULL},
};

static PyMemberDef pollpath_members[] = {
    {"consumed", T_ULONGLONG, offsetof(PollPath, consumed), 0, "messages returned by poll calls so far"},
    {NULL},
};

static PyTypeObject PollPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.PollPath",
    .tp_basicsize = sizeof(PollPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The per-message poll call of a Consumer, building its results in C.",
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)pollpath_traverse,
    .tp_clear = (inquiry)pollpath_clear,
    .tp_dealloc = (destructor)pollpath_dealloc,
    .tp_methods = pollpath_methods,
    .tp_members = pollpath_members,
};

/* ---- module functions ------------------------------------------------------------ */

/* bind(table_address, raise_for, CorruptFabric, Message): once, at import. */
static PyObject *mod_bind(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "bind(table_address, raise_for, CorruptFabric, Message)");
        return NULL;
    }
    const gf_crossing *t = as_pointer(args[0]);
    if (!t)
        return NULL;
    if (t->size < sizeof(gf_crossing) || t->version != GF_CROSSING_VERSION) {
        PyErr_Format(PyExc_ImportError, "grafos._fast was built for crossing table version %u, "
                     "the core has version %u: reinstall grafos", GF_CROSSING_VERSION, t->version);
        return NULL;
    }
    if (((PyTypeObject *)args[3])->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "Message must be a tuple subclass without extra fields");
        return NULL;
    }
    Py_XSETREF(raise_for, Py_NewRef(args[1]));
    Py_XSETREF(corrupt_error, Py_NewRef(args[2]));
    Py_XSETREF(message_type, (PyTypeObject *)Py_NewRef(args[3]));
    core = t;
    Py_RETURN_NONE;
}

/* messages(poller_address, count, ids) -> [(partition, Message)] for the rows a
 * poll left in the poller (Reader.poll's blocking path). ids: list or None. */
static PyObject *mod_messages(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 3 || (args[2] != Py_None && !PyList_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "messages(poller_address, count, ids: list | None)");
        return NULL;
    }
    gf_poller *p = as_pointer(args[0]);
    long long n = p ? PyLong_AsLongLong(args[1]) : -1;
    if (n < 0 || (p && n > p->max_batch)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "count out of range");
        return NULL;
    }
    return build(p->meta, n, p->buf, p->buf_size, args[2] == Py_None ? NULL : args[2], p->cursors, p->n, NULL);
}

/* decode(meta, data, ids) -> [(partition, Message)] over a copy of poll rows and
 * their bytes (Batch iteration). Malformed headers raise CorruptFabric. */
static PyObject *mod_decode(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 3 || (args[2] != Py_None && !PyList_CheckExact(args[2]))) {
        PyErr_SetString(PyExc_TypeError, "decode(meta, data, ids: list | None)");
        return NULL;
    }
    Py_buffer mb, db;
    if (PyObject_GetBuffer(args[0], &mb, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &db, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&mb);
        return NULL;
    }
    PyObject *r = NULL;
    if (mb.len % (Py_ssize_t)sizeof(gf_msg_meta))
        PyErr_SetString(PyExc_ValueError, "meta is not a whole number of rows");
    else {
        /* rows may sit at any alignment in a bytes object: copy them out */
        Py_ssize_t n = mb.len / (Py_ssize_t)sizeof(gf_msg_meta);
        gf_msg_meta *rows = PyMem_Malloc(mb.len ? (size_t)mb.len : 1);
        if (!rows)
            PyErr_NoMemory();
        else {
            memcpy(rows, mb.buf, (size_t)mb.len);
            r = build(rows, n, db.buf, (uint64_t)db.len, args[2] == Py_None ? NULL : args[2], NULL, 0, NULL);
            PyMem_Free(rows);
        }
    }
    PyBuffer_Release(&mb);
    PyBuffer_Release(&db);
    return r;
}

/* ---- peek: messages read in place ----------------------------------------------------
 * A peek takes its rows once (peek_take) and keeps them as bytes; what is built
 * from them (message objects, arrays of values) is built from those rows, and
 * the release check reads offsets from them too. A row's bytes sit at
 * base + pos * stride: base is the ring's first slot byte and limit the bytes
 * after it a message may occupy. The core checked every row against the ring;
 * every builder here checks again against base and limit before it points at
 * memory (rows are plain bytes a caller could forge). */
#define ROW ((Py_ssize_t)sizeof(gf_msg_meta))

static int peek_span(PyObject *rows_obj, Py_buffer *rows, const char *what)
{
    if (PyObject_GetBuffer(rows_obj, rows, PyBUF_SIMPLE) < 0)
        return -1;
    if (rows->len % ROW) {
        PyBuffer_Release(rows);
        PyErr_Format(PyExc_ValueError, "%s: rows are not a whole number of gf_msg_meta", what);
        return -1;
    }
    return 0;
}

/* (rows, base, limit, stride) as the builders take them: the rows' buffer (to
 * release) and the ring's first slot byte, its span and its stride */
typedef struct {
    Py_buffer rows;
    Py_ssize_t n;
    const uint8_t *base;
    uint64_t limit, stride;
} peek_args;

static int peek_parse(PyObject *const *args, const char *what, peek_args *pa)
{
    pa->base = as_pointer(args[1]);
    unsigned long long limit = pa->base ? PyLong_AsUnsignedLongLong(args[2]) : 0;
    long long stride = pa->base ? PyLong_AsLongLong(args[3]) : 0;
    if (!pa->base || PyErr_Occurred() || stride <= 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "%s: argument out of range", what);
        return -1;
    }
    pa->limit = limit;
    pa->stride = (uint64_t)stride;
    if (peek_span(args[0], &pa->rows, what) < 0)
        return -1;
    pa->n = pa->rows.len / ROW;
    return 0;
}

/* the row's bytes, NULL (CorruptFabric set) when it points outside the ring */
static const uint8_t *row_bytes(const gf_msg_meta *row, const uint8_t *base, uint64_t limit, uint64_t stride,
                                Py_ssize_t i)
{
    uint64_t at = (uint64_t)row->pos * stride;
    uint64_t total = (uint64_t)row->key_len + row->hdr_len + row->val_len;
    if (at > limit || total > limit - at) {
        PyErr_Format(corrupt_error, "peek row %zd points outside the ring", i);
        return NULL;
    }
    return base + at;
}

/* peek_take(ring, cursor, max, meta, base, limit, stride) -> (rows: bytes, plain: bool)
 * reads up to `max` messages of one ring in place (gf_ring_peek; meta: the
 * address of room for max rows) and returns their rows; plain: no row has a key
 * or headers (nothing to copy out at once). An int when the core refused: its
 * error code, for the caller to raise. */
static PyObject *mod_peek_take(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "peek_take(ring, cursor, max, meta, base, limit, stride)");
        return NULL;
    }
    gf_ring *r = as_pointer(args[0]);
    gf_cursor *c = r ? as_pointer(args[1]) : NULL;
    long long max = c ? PyLong_AsLongLong(args[2]) : -1;
    gf_msg_meta *meta = max >= 0 ? as_pointer(args[3]) : NULL;
    const uint8_t *base = meta ? as_pointer(args[4]) : NULL;
    unsigned long long limit = base ? PyLong_AsUnsignedLongLong(args[5]) : 0;
    long long stride = base ? PyLong_AsLongLong(args[6]) : 0;
    if (!base || PyErr_Occurred() || max > UINT32_MAX || stride <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "peek_take: argument out of range");
        return NULL;
    }
    int64_t n = core->ring_peek(r, c, (uint32_t)max, meta, 0);
    if (n < 0)
        return PyLong_FromLongLong(n);
    int plain = 1;
    for (int64_t i = 0; i < n; i++) {
        if (!row_bytes(&meta[i], base, limit, (uint64_t)stride, (Py_ssize_t)i))
            return NULL;
        plain &= meta[i].key_len == 0 && meta[i].hdr_len == 0 && !(meta[i].flags & GF_MSG_HAS_KEY);
    }
    PyObject *rows = PyBytes_FromStringAndSize((const char *)meta, (Py_ssize_t)n * ROW);
    return rows ? Py_BuildValue("(NO)", rows, plain ? Py_True : Py_False) : NULL;
}

/* Building a peeked message through its class costs a Python __init__ each
 * (~200 ns). The class keeps its fields in __slots__: where each field is a
 * plain object slot, the objects are made here and the fields filled in place,
 * as __init__ would (intact starts None). Any other class is called. */
static const char *const peek_fields[7] = {"partition", "offset", "timestamp", "key", "headers", "value", "intact"};
static PyTypeObject *peek_cls;
static Py_ssize_t peek_slot[7];

static int peek_slots(PyTypeObject *cls)
{
    if (cls == peek_cls)
        return 1;
    if (cls->tp_dictoffset || cls->tp_base != &PyBaseObject_Type)   /* a subclass is called */
        return 0;
    Py_ssize_t off[7];
    for (int k = 0; k < 7; k++) {
        PyObject *d = PyDict_GetItemString(cls->tp_dict, peek_fields[k]);    /* borrowed */
        if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *md = ((PyMemberDescrObject *)d)->d_member;
        if (md->type != T_OBJECT_EX || md->flags & READONLY || md->offset < (Py_ssize_t)sizeof(PyObject) ||
            md->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize)
            return 0;
        off[k] = md->offset;
    }
    memcpy(peek_slot, off, sizeof off);
    Py_XSETREF(peek_cls, (PyTypeObject *)Py_NewRef(cls));
    return 1;
}

/* cls(*a[1..6]) with a[0] unused; steals nothing */
static PyObject *peek_make(PyTypeObject *cls, int fast, PyObject *partition, PyObject *const *a)
{
    if (!fast) {
        PyObject *args[6] = {partition, a[0], a[1], a[2], a[3], a[4]};
        return PyObject_Vectorcall((PyObject *)cls, args, 6, NULL);
    }
    PyObject *o = cls->tp_alloc(cls, 0);
    if (!o)
        return NULL;
    PyObject *vals[7] = {partition, a[0], a[1], a[2], a[3], a[4], Py_None};
    for (int k = 0; k < 7; k++)
        *(PyObject **)((char *)o + peek_slot[k]) = Py_NewRef(vals[k]);
    return o;
}

/* peek_build(rows, base, limit, stride, partition, cls) -> [cls(partition, offset,
 * timestamp, key, headers, value)], value a read-only memoryview of the slot
 * bytes. Headers that do not parse read as none, as grafos.peek documents. */
static PyObject *mod_peek_build(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 6 || !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "peek_build(rows, base, limit, stride, partition, cls)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[5];
    int fast = peek_slots(cls);
    peek_args pa;
    if (peek_parse(args, "peek_build", &pa) < 0)
        return NULL;
    const uint8_t *base = pa.base;
    uint64_t limit = pa.limit, stride = pa.stride;
    Py_ssize_t n = pa.n;
    PyObject *list = PyList_New(n);
    if (!list)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        gf_msg_meta row;
        memcpy(&row, (const uint8_t *)pa.rows.buf + i * ROW, sizeof row);   /* bytes need not be aligned */
        const uint8_t *b = row_bytes(&row, base, limit, stride, i);
        if (!b)
            goto fail;
        PyObject *headers;
        const char *why = NULL;
        if (row.hdr_len == 0)
            headers = Py_NewRef(empty_tuple);
        else if (!(headers = decode_headers(b + row.key_len, row.hdr_len, &why))) {
            if (!why)
                goto fail;
            headers = Py_NewRef(empty_tuple);
        }
        PyObject *a[5];
        a[0] = PyLong_FromUnsignedLongLong(row.offset);
        a[1] = PyLong_FromLongLong(row.ts_ns);
        a[2] = (row.flags & GF_MSG_HAS_KEY) ? PyBytes_FromStringAndSize((const char *)b, row.key_len)
                                             : Py_NewRef(Py_None);
        a[3] = headers;
        a[4] = PyMemoryView_FromMemory((char *)(b + row.key_len + row.hdr_len), row.val_len, PyBUF_READ);
        PyObject *msg = a[0] && a[1] && a[2] && a[4] ? peek_make(cls, fast, args[4], a) : NULL;
        for (int k = 0; k < 5; k++)
            Py_XDECREF(a[k]);
        if (!msg)
            goto fail;
        PyList_SET_ITEM(list, i, msg);
    }
    goto done;
fail:
    Py_CLEAR(list);
done:
    PyBuffer_Release(&pa.rows);
    return list;
}

/* A span of ring bytes that counts its buffer exports: read-only under the arrays
 * of a run of peeked values, writable under a loan's view and arrays. A
 * memoryview will not do: numpy wraps one in a view of its own that shares its
 * buffer, so releasing the first succeeds while an array still reads the ring.
 * release() refuses (BufferError) while anything holds the buffer; revoke()
 * does not, and returns how many exports are still held. After either, nothing
 * can take the buffer again. */
typedef struct {
    PyObject_HEAD
    const uint8_t *p;
    Py_ssize_t len;
    Py_ssize_t exports;
    int released;
    int writable;         /* a loan's span: exported writable; else read-only */
} Span;

static int span_getbuffer(PyObject *o, Py_buffer *view, int flags)
{
    Span *self = (Span *)o;
    if (self->released) {
        PyErr_SetString(PyExc_ValueError, self->writable
                        ? "this loan was published or abandoned: its bytes are no longer the caller's"
                        : "this peek was released: its values are no longer readable");
        return -1;
    }
    if (PyBuffer_FillInfo(view, o, (void *)self->p, self->len, !self->writable, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void span_releasebuffer(PyObject *o, Py_buffer *view)
{
    ((Span *)o)->exports--;
}

static PyObject *span_release(PyObject *o, PyObject *unused)
{
    Span *self = (Span *)o;
    if (self->exports) {
        PyErr_Format(PyExc_BufferError, "%zd buffer(s) of this span are still in use", self->exports);
        return NULL;
    }
    self->released = 1;
    Py_RETURN_NONE;
}

static PyObject *span_revoke(PyObject *o, PyObject *unused)
{
    Span *self = (Span *)o;
    self->released = 1;
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *span_get_exports(PyObject *o, void *unused)
{
    return PyLong_FromSsize_t(((Span *)o)->exports);
}

static PyBufferProcs span_as_buffer = {span_getbuffer, span_releasebuffer};
static PyMethodDef span_methods[] = {
    {"release", span_release, METH_NOARGS, "Refuse the bytes to anyone after this; BufferError while in use."},
    {"revoke", span_revoke, METH_NOARGS, "Refuse the bytes to anyone after this; returns the exports still held."},
    {NULL},
};
static PyGetSetDef span_getset[] = {
    {"exports", span_get_exports, NULL, "buffers of this span held now", NULL},
    {NULL},
};

static PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Span",
    .tp_basicsize = sizeof(Span),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring bytes under peeked arrays or a loan's view; release() and revoke() end access.",
    .tp_as_buffer = &span_as_buffer,
    .tp_methods = span_methods,
    .tp_getset = span_getset,
};

static PyObject *span_new(const uint8_t *p, Py_ssize_t len)
{
    Span *s = PyObject_New(Span, &SpanType);
    if (s) {
        s->p = p;
        s->len = len;
        s->exports = 0;
        s->released = 0;
        s->writable = 0;
    }
    return (PyObject *)s;
}

/* span(address, length) -> a writable Span over a loan's value bytes. */
static PyObject *mod_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "span(address, length)");
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(args[0]);
    Py_ssize_t len = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (!p || len < 0) {
        PyErr_SetString(PyExc_ValueError, "span: a null address or a negative length");
        return NULL;
    }
    Span *s = (Span *)span_new((const uint8_t *)p, len);
    if (s)
        s->writable = 1;
    return (PyObject *)s;
}

/* peek_runs(rows, base, limit, stride) -> [(count, span, value_len, step)]: the
 * rows cut into runs of messages whose values have one length and lie `step`
 * bytes apart in the ring, in order; span: a Span from the first value of the
 * run to the end of its last, for a (count, value_len) array with row stride
 * `step`. A run ends where the lengths change or the
 * ring wraps. */
static PyObject *mod_peek_runs(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "peek_runs(rows, base, limit, stride)");
        return NULL;
    }
    peek_args pa;
    if (peek_parse(args, "peek_runs", &pa) < 0)
        return NULL;
    const uint8_t *base = pa.base;
    uint64_t limit = pa.limit, stride = pa.stride;
    Py_ssize_t n = pa.n;
    PyObject *out = PyList_New(0);
    const uint8_t *first = NULL;
    uint64_t len = 0, step = 0;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; out && i <= n; i++) {
        const uint8_t *v = NULL;
        uint32_t vlen = 0;
        if (i < n) {
            gf_msg_meta row;
            memcpy(&row, (const uint8_t *)pa.rows.buf + i * ROW, sizeof row);
            const uint8_t *b = row_bytes(&row, base, limit, stride, i);
            if (!b) {
                Py_CLEAR(out);
                break;
            }
            v = b + row.key_len + row.hdr_len;
            vlen = row.val_len;
            if (count && vlen == len && v > first + (count - 1) * step &&
                (count == 1 || (uint64_t)(v - first) == count * step)) {
                if (count == 1)
                    step = (uint64_t)(v - first);
                count++;
                continue;
            }
        }
        if (count) {        /* the run before this row ends */
            uint64_t span = (uint64_t)(count - 1) * step + len;
            PyObject *view = span_new(first, (Py_ssize_t)span);
            PyObject *t = view ? Py_BuildValue("(nNKK)", count, view, (unsigned long long)len,
                                               (unsigned long long)(count > 1 ? step : len)) : NULL;
            if (!t || PyList_Append(out, t) < 0)
                Py_CLEAR(out);
            Py_XDECREF(t);
        }
        first = v, len = vlen, step = 0, count = 1;
    }
    PyBuffer_Release(&pa.rows);
    return out;
}

/* peek_check(ring, rows, flags) -> how many of the rows' messages are not intact
 * (gf_ring_intact_many over their offsets); flags: the address of a byte per row,
 * set 1 intact, 0 not. */
static PyObject *mod_peek_check(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "peek_check(ring, rows, flags)");
        return NULL;
    }
    gf_ring *r = as_pointer(args[0]);
    uint8_t *flags = r ? as_pointer(args[2]) : NULL;
    if (!flags)
        return NULL;
    Py_buffer rb;
    if (peek_span(args[1], &rb, "peek_check") < 0)
        return NULL;
    Py_ssize_t n = rb.len / ROW;
    uint64_t stack[64], *offs = n <= 64 ? stack : PyMem_Malloc((size_t)n * sizeof(uint64_t));
    PyObject *result = NULL;
    if (!offs)
        PyErr_NoMemory();
    else if (n > UINT32_MAX)
        PyErr_SetString(PyExc_ValueError, "peek_check: too many rows");
    else {
        for (Py_ssize_t i = 0; i < n; i++)
            memcpy(&offs[i], (const uint8_t *)rb.buf + i * ROW + offsetof(gf_msg_meta, offset), 8);
        result = PyLong_FromUnsignedLong(core->ring_intact_many(r, offs, (uint32_t)n, flags));
    }
    if (offs && offs != stack)
        PyMem_Free(offs);
    PyBuffer_Release(&rb);
    return result;
}

/* peek_release(messages, start, count, flags, overwritten) settles messages
 * [start, start + count) after peek_check: sets each one's `intact` from
 * flags, appends those not intact to `overwritten`, and releases each value.
 * Returns how many values could not be released (another object still holds
 * their buffer). */
static PyObject *str_intact, *str_value, *str_release;

static PyObject *mod_peek_release(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 5 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "peek_release(messages: list, start, count, flags, overwritten: list)");
        return NULL;
    }
    PyObject *msgs = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t count = start >= 0 ? PyLong_AsSsize_t(args[2]) : -1;
    uint8_t *flags = count >= 0 ? as_pointer(args[3]) : NULL;
    if (!flags || start > PyList_GET_SIZE(msgs) || count > PyList_GET_SIZE(msgs) - start) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "peek_release: range out of the list");
        return NULL;
    }
    long in_use = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *msg = PyList_GET_ITEM(msgs, start + i);
        int ok = flags[i] == 1;
        PyObject *v;
        if (Py_TYPE(msg) == peek_cls) {     /* its fields in place, as peek_make filled them */
            PyObject **intact = (PyObject **)((char *)msg + peek_slot[6]);
            Py_XSETREF(*intact, Py_NewRef(ok ? Py_True : Py_False));
            v = *(PyObject **)((char *)msg + peek_slot[5]);
            if (!v) {
                PyErr_SetString(PyExc_AttributeError, "value");
                return NULL;
            }
            Py_INCREF(v);
        } else if (PyObject_SetAttr(msg, str_intact, ok ? Py_True : Py_False) < 0 ||
                   !(v = PyObject_GetAttr(msg, str_value)))
            return NULL;
        if (!ok && PyList_Append(args[4], msg) < 0) {
            Py_DECREF(v);
            return NULL;
        }
        PyObject *rv = PyObject_CallMethodNoArgs(v, str_release);
        Py_DECREF(v);
        if (!rv) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError))
                return NULL;
            PyErr_Clear();
            in_use++;
        }
        Py_XDECREF(rv);
    }
    return PyLong_FromLong(in_use);
}

/* encode_headers(headers) -> bytes, or None when the fast encoder does not take them */
static PyObject *mod_encode_headers(PyObject *m, PyObject *h)
{
    scratch s = {0};
    Py_ssize_t n = encode_headers(h, &s);
    PyObject *r = n < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)s.p, n);
    PyMem_Free(s.p);
    return r;
}

/* ---- share groups: the records of one acquisition --------------------------------
 * share_records(rows, meta, buf, buf_size, n, partition, region, cls, out, held)
 * builds the records of gf_share_acquire's n rows (rows, meta and buf are
 * addresses; rows[i] and meta[i] describe one record): appends to `out` a
 * `cls` tuple (partition, offset, key, value, timestamp, headers,
 * delivery_count, deadline_ns, word, region) per row, sets held[offset] = word,
 * and returns (offsets, words, packed): the offsets and words as lists, and as
 * one bytes object of n native uint64 offsets then n words (the arrays
 * gf_share_settle takes, so settling the batch builds no array). Returns None and builds nothing when a
 * row is flagged (the caller dead-letters those). Malformed headers, or a row
 * pointing outside buf, raise CorruptFabric; nothing is appended then. */
static PyObject *share_record(const gf_share_row *r, const gf_msg_meta *m, const uint8_t *b,
                              PyObject *part, PyObject *region, PyTypeObject *cls, shared_ts *last,
                              PyObject **off_out, PyObject **word_out)
{
    const char *why;
    PyObject *headers = record_headers(m, b, &why);
    if (!headers) {
        if (why)
            PyErr_SetString(corrupt_error, why);
        return NULL;
    }
    PyObject *rec = cls->tp_alloc(cls, 10);
    if (!rec) {
        Py_DECREF(headers);
        return NULL;
    }
    PyObject *off = PyLong_FromUnsignedLongLong(r->offset);
    PyObject *key, *val, *ts;
    record_fields(m, b, last, NULL, &key, &val, &ts);
    PyObject *count = PyLong_FromUnsignedLong(r->count);
    PyObject *deadline = PyLong_FromLongLong(r->deadline_ns);
    PyObject *word = PyLong_FromUnsignedLongLong(r->word);
    PyTuple_SET_ITEM(rec, 0, Py_NewRef(part));
    PyTuple_SET_ITEM(rec, 1, off);
    PyTuple_SET_ITEM(rec, 2, key);
    PyTuple_SET_ITEM(rec, 3, val);
    PyTuple_SET_ITEM(rec, 4, ts);
    PyTuple_SET_ITEM(rec, 5, headers);
    PyTuple_SET_ITEM(rec, 6, count);
    PyTuple_SET_ITEM(rec, 7, deadline);
    PyTuple_SET_ITEM(rec, 8, word);
    PyTuple_SET_ITEM(rec, 9, Py_NewRef(region));
    if (!off || !key || !val || !ts || !count || !deadline || !word) {
        Py_DECREF(rec);     /* tuple dealloc takes NULL items */
        return NULL;
    }
    PyObject_GC_UnTrack(rec);
    *off_out = off;
    *word_out = word;
    return rec;
}

static PyObject *mod_share_records(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 10 || !PyType_Check(args[7]) || !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type) ||
        !PyList_CheckExact(args[8]) || !PyDict_CheckExact(args[9])) {
        PyErr_SetString(PyExc_TypeError, "share_records(rows, meta, buf, buf_size, n, partition, region, "
                                         "cls: tuple type, out: list, held: dict)");
        return NULL;
    }
    const gf_share_row *rows = as_pointer(args[0]);
    const gf_msg_meta *meta = rows ? as_pointer(args[1]) : NULL;
    const uint8_t *buf = meta ? as_pointer(args[2]) : NULL;
    if (!buf)
        return NULL;
    unsigned long long buf_size = PyLong_AsUnsignedLongLong(args[3]);
    Py_ssize_t n = buf_size == (unsigned long long)-1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[4]);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "share_records: a negative row count");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rows[i].flags)
            Py_RETURN_NONE;
        const gf_msg_meta *mm = &meta[i];
        uint64_t end = (uint64_t)mm->pos + mm->key_len + mm->hdr_len + mm->val_len;
        if (end > buf_size || mm->offset != rows[i].offset) {
            PyErr_Format(corrupt_error, "share poll row %zd points outside the read buffer", i);
            return NULL;
        }
    }
    PyObject *out = args[8], *held = args[9];
    Py_ssize_t base = PyList_GET_SIZE(out);
    PyObject *offs = PyList_New(n), *words = offs ? PyList_New(n) : NULL;
    if (!words) {
        Py_XDECREF(offs);
        return NULL;
    }
    int gc_was = PyGC_Disable();    /* as build(): the records are untracked */
    shared_ts ts_last = {NULL, 0};
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        PyObject *off, *word;
        PyObject *rec = share_record(&rows[i], &meta[i], buf + meta[i].pos, args[5], args[6],
                                     (PyTypeObject *)args[7], &ts_last, &off, &word);
        if (!rec)
            break;
        PyList_SET_ITEM(offs, i, Py_NewRef(off));
        PyList_SET_ITEM(words, i, Py_NewRef(word));
        int rc = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (rc < 0)
            break;
    }
    Py_XDECREF(ts_last.obj);
    if (gc_was)
        PyGC_Enable();
    if (i < n) {        /* leave `out` and `held` as they were */
        PyList_SetSlice(out, base, PyList_GET_SIZE(out), NULL);
        for (Py_ssize_t j = i; j < n; j++) {    /* fill the lists' holes so they free cleanly */
            PyList_SET_ITEM(offs, j, Py_NewRef(Py_None));
            PyList_SET_ITEM(words, j, Py_NewRef(Py_None));
        }
        Py_DECREF(offs);
        Py_DECREF(words);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (PyDict_SetItem(held, PyList_GET_ITEM(offs, i), PyList_GET_ITEM(words, i)) < 0) {
            Py_DECREF(offs);
            Py_DECREF(words);
            return NULL;
        }
    }
    PyObject *packed = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n * 16);
    PyObject *triple = packed ? PyTuple_New(3) : NULL;
    if (!triple) {
        Py_XDECREF(packed);
        Py_DECREF(offs);
        Py_DECREF(words);
        return NULL;
    }
    uint8_t *pk = (uint8_t *)PyBytes_AS_STRING(packed);
    for (i = 0; i < n; i++) {
        memcpy(pk + (size_t)i * 8, &rows[i].offset, 8);
        memcpy(pk + ((size_t)n + (size_t)i) * 8, &rows[i].word, 8);
    }
    PyTuple_SET_ITEM(triple, 0, offs);
    PyTuple_SET_ITEM(triple, 1, words);
    PyTuple_SET_ITEM(triple, 2, packed);
    return triple;
}

static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))mod_bind, METH_FASTCALL, "bind(table_address, raise_for, CorruptFabric, Message)"},
    {"messages", (PyCFunction)(void (*)(void))mod_messages, METH_FASTCALL, "messages(poller_address, count, ids)"},
    {"decode", (PyCFunction)(void (*)(void))mod_decode, METH_FASTCALL, "decode(meta, data, ids)"},
    {"encode_headers", (PyCFunction)mod_encode_headers, METH_O, "encode_headers(headers) -> bytes | None"},
    {"peek_take", (PyCFunction)(void (*)(void))mod_peek_take, METH_FASTCALL,
     "peek_take(ring, cursor, max, meta, base, limit, stride) -> (rows, plain) | int"},
    {"peek_build", (PyCFunction)(void (*)(void))mod_peek_build, METH_FASTCALL,
     "peek_build(rows, base, limit, stride, partition, cls) -> list"},
    {"peek_runs", (PyCFunction)(void (*)(void))mod_peek_runs, METH_FASTCALL,
     "peek_runs(rows, base, limit, stride) -> [(count, span, value_len, step)]"},
    {"peek_check", (PyCFunction)(void (*)(void))mod_peek_check, METH_FASTCALL,
     "peek_check(ring, rows, flags) -> how many are not intact"},
    {"peek_release", (PyCFunction)(void (*)(void))mod_peek_release, METH_FASTCALL,
     "peek_release(messages, start, count, flags, overwritten) -> values still in use"},
    {"share_records", (PyCFunction)(void (*)(void))mod_share_records, METH_FASTCALL,
     "share_records(rows, meta, buf, buf_size, n, partition, region, cls, out, held) -> (offsets, words, packed) | None"},
    {"span", (PyCFunction)(void (*)(void))mod_span, METH_FASTCALL, "span(address, length) -> a writable Span"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "grafos._fast",
    "The CPython crossing for grafos's per-message calls (send, poll, peek); see csrc/fast.c.",
    -1, module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
    if (PyType_Ready(&BindingType) < 0 || PyType_Ready(&SendPathType) < 0 || PyType_Ready(&PollPathType) < 0 ||
        PyType_Ready(&SpanType) < 0)
        return NULL;
    empty_tuple = PyTuple_New(0);
    str_send_slow = PyUnicode_InternFromString("_send_fallback");
    str_send_keyed_slow = PyUnicode_InternFromString("_send_keyed_fallback");
    str_poll_slow = PyUnicode_InternFromString("_poll_fallback");
    str_poll_ctx = PyUnicode_InternFromString("poll");
    str_intact = PyUnicode_InternFromString("intact");
    str_value = PyUnicode_InternFromString("value");
    str_release = PyUnicode_InternFromString("release");
    if (!empty_tuple || !str_send_slow || !str_send_keyed_slow || !str_poll_slow || !str_poll_ctx ||
        !str_intact || !str_value || !str_release)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Binding", (PyObject *)&BindingType) < 0 ||
        PyModule_AddObjectRef(m, "SendPath", (PyObject *)&SendPathType) < 0 ||
        PyModule_AddObjectRef(m, "PollPath", (PyObject *)&PollPathType) < 0 ||
        PyModule_AddObjectRef(m, "Span", (PyObject *)&SpanType) < 0 ||
        PyModule_AddIntConstant(m, "OFFSET_BITS", GF_OFFSET_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
