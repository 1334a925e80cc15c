/* fast_peek.c -- peeks (messages read in place) and Span, the buffer over
 * ring bytes that counts its exports (peeked arrays, a loan's value). */
#include "fast_internal.h"

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
PyObject *mod_peek_take(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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
static const char *const peek_fields[8] = {"partition", "offset", "timestamp", "key", "headers", "value", "intact",
                                           "topic"};
static PyTypeObject *peek_cls;
static Py_ssize_t peek_slot[8];

static int peek_slots(PyTypeObject *cls)
{
    if (cls == peek_cls)
        return 1;
    if (cls->tp_dictoffset || cls->tp_base != &PyBaseObject_Type)   /* a subclass is called */
        return 0;
    Py_ssize_t off[8];
    for (int k = 0; k < 8; k++) {
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

/* cls(partition, *a[0..4], topic); steals nothing */
static PyObject *peek_make(PyTypeObject *cls, int fast, PyObject *partition, PyObject *const *a, PyObject *topic)
{
    if (!fast) {
        PyObject *args[7] = {partition, a[0], a[1], a[2], a[3], a[4], topic};
        return PyObject_Vectorcall((PyObject *)cls, args, 7, NULL);
    }
    PyObject *o = cls->tp_alloc(cls, 0);
    if (!o)
        return NULL;
    PyObject *vals[8] = {partition, a[0], a[1], a[2], a[3], a[4], Py_None, topic};
    for (int k = 0; k < 8; k++)
        *(PyObject **)((char *)o + peek_slot[k]) = Py_NewRef(vals[k]);
    return o;
}

/* peek_build(rows, base, limit, stride, partition, cls, topic) -> [cls(partition, offset,
 * timestamp, key, headers, value, topic)], value a read-only memoryview of the slot
 * bytes. Headers that do not parse read as none, as grafos.peek documents. */
PyObject *mod_peek_build(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 7 || !PyType_Check(args[5]) || (args[6] != Py_None && !PyUnicode_CheckExact(args[6]))) {
        PyErr_SetString(PyExc_TypeError, "peek_build(rows, base, limit, stride, partition, cls, topic: str | None)");
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
        PyObject *msg = a[0] && a[1] && a[2] && a[4] ? peek_make(cls, fast, args[4], a, args[6]) : NULL;
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
    {"release", span_release, METH_NOARGS,
     "release($self, /)\n--\n\nRefuse the bytes to anyone after this; BufferError while in use."},
    {"revoke", span_revoke, METH_NOARGS,
     "revoke($self, /)\n--\n\nRefuse the bytes to anyone after this; returns the exports still held."},
    {NULL},
};
static PyGetSetDef span_getset[] = {
    {"exports", span_get_exports, NULL, "buffers of this span held now", NULL},
    {NULL},
};

PyTypeObject SpanType = {
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
PyObject *mod_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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
PyObject *mod_peek_runs(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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
PyObject *mod_peek_check(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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

PyObject *mod_peek_release(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
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
