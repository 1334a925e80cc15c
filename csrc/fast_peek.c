/* fast_peek.c -- peeks (messages read in place) and Span, the buffer over
 * ring bytes that counts its exports (peeked arrays, a loan's value). */
#include "fast_internal.h"

/* ---- peek: messages read in place ----------------------------------------------------
 * A peek takes its rows once per ring (peek_take) into a Segment, which keeps
 * them with what they point into: the ring, and a buffer over its slot bytes
 * (base: the first slot byte; limit: the bytes after it a message may occupy).
 * What is built from a segment (message objects, arrays of values) and the
 * release check read its rows, which Python cannot change. The core checked
 * every row against the ring; the take checks again against the slot buffer,
 * and every builder here before it points at memory. */
#define ROW ((Py_ssize_t)sizeof(gf_msg_meta))

typedef struct {
    PyObject_VAR_HEAD       /* ob_size: rows */
    Py_buffer slots;        /* the ring's slot bytes: base and limit */
    PyObject *owner;        /* what keeps `ring` open (its Partition) */
    gf_ring *ring;          /* the ring the rows were read from */
    uint64_t stride;
    int checked;            /* flags hold peek_check's answer */
    gf_msg_meta rows[];     /* then a flag byte per row: 1 intact, 0 not */
} Segment;

static uint8_t *seg_flags(Segment *s) { return (uint8_t *)&s->rows[Py_SIZE(s)]; }

static void segment_dealloc(PyObject *o)
{
    PyBuffer_Release(&((Segment *)o)->slots);
    Py_XDECREF(((Segment *)o)->owner);
    PyObject_Free(o);
}

static Py_ssize_t segment_len(PyObject *o) { return Py_SIZE(o); }

static PyObject *segment_get_flags(PyObject *o, void *unused)
{
    Segment *s = (Segment *)o;
    if (!s->checked) {
        PyErr_SetString(PyExc_ValueError, "a segment's flags are known after peek_check");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)seg_flags(s), Py_SIZE(s));
}

static PySequenceMethods segment_as_sequence = {.sq_length = segment_len};
static PyGetSetDef segment_getset[] = {
    {"flags", segment_get_flags, NULL, "after peek_check: a byte per message, 1 intact, 0 not", NULL},
    {NULL},
};

PyTypeObject SegmentType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Segment",
    .tp_basicsize = sizeof(Segment),
    .tp_itemsize = sizeof(gf_msg_meta) + 1,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The rows of one ring's messages in a peek, with the ring and its slot bytes (made by peek_take).",
    .tp_dealloc = segment_dealloc,
    .tp_as_sequence = &segment_as_sequence,
    .tp_getset = segment_getset,
};

static Segment *segment_of(PyObject *o, const char *what)
{
    if (Py_IS_TYPE(o, &SegmentType))
        return (Segment *)o;
    PyErr_Format(PyExc_TypeError, "%s: expected a Segment, not %.100s", what, Py_TYPE(o)->tp_name);
    return NULL;
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

static const uint8_t *seg_row(Segment *s, Py_ssize_t i)
{
    return row_bytes(&s->rows[i], s->slots.buf, (uint64_t)s->slots.len, s->stride, i);
}

/* peek_take(poller, index, max, slots, stride, owner) -> (segment, plain: bool) reads
 * up to `max` messages of the poller's ring `index` in place (gf_ring_peek, from
 * its cursor there); slots: a buffer over the ring's slot bytes, stride: the
 * ring's, owner: what keeps the ring open (the segment holds it).
 * plain: no row has a key or headers (nothing to copy out at once). An int when
 * the core refused: its error code, for the caller to raise. */
PyObject *mod_peek_take(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "peek_take(poller, index, max, slots, stride, owner)");
        return NULL;
    }
    gf_poller *p = poller_of(args[0]);
    if (!p)
        return NULL;
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    long long max = PyErr_Occurred() ? -1 : PyLong_AsLongLong(args[2]);
    long long stride = PyErr_Occurred() ? 0 : PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (i < 0 || (uint64_t)i >= p->n || !p->rings || !p->rings[i] || max < 0 || max > UINT32_MAX || stride <= 0) {
        PyErr_SetString(PyExc_ValueError, "peek_take: argument out of range");
        return NULL;
    }
    Py_buffer slots;
    if (PyObject_GetBuffer(args[3], &slots, PyBUF_SIMPLE) < 0)
        return NULL;
    gf_msg_meta *meta = (gf_msg_meta *)grow(&((Poller *)args[0])->rows, (size_t)(max ? max : 1) * ROW);
    int64_t n = meta ? core->ring_peek(p->rings[i], &p->cursors[i], (uint32_t)max, meta, 0) : 0;
    if (!meta || n < 0) {
        PyBuffer_Release(&slots);
        return meta ? PyLong_FromLongLong(n) : NULL;
    }
    int plain = 1;
    for (int64_t k = 0; k < n; k++) {
        if (!row_bytes(&meta[k], slots.buf, (uint64_t)slots.len, (uint64_t)stride, (Py_ssize_t)k)) {
            PyBuffer_Release(&slots);
            return NULL;
        }
        plain &= meta[k].key_len == 0 && meta[k].hdr_len == 0 && !(meta[k].flags & GF_MSG_HAS_KEY);
    }
    Segment *seg = PyObject_NewVar(Segment, &SegmentType, (Py_ssize_t)n);
    if (!seg) {
        PyBuffer_Release(&slots);
        return NULL;
    }
    seg->slots = slots;     /* released with the segment */
    seg->owner = Py_NewRef(args[5]);
    seg->ring = p->rings[i];
    seg->stride = (uint64_t)stride;
    seg->checked = 0;
    memcpy(seg->rows, meta, (size_t)n * ROW);
    return Py_BuildValue("(NO)", (PyObject *)seg, plain ? Py_True : Py_False);
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

/* peek_build(segment, partition, cls, topic) -> [cls(partition, offset, timestamp, key,
 * headers, value, topic)], value a read-only memoryview of the slot bytes.
 * Headers that do not parse read as none, as grafos.peek documents. */
PyObject *mod_peek_build(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 4 || !PyType_Check(args[2]) || (args[3] != Py_None && !PyUnicode_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "peek_build(segment, partition, cls, topic: str | None)");
        return NULL;
    }
    Segment *seg = segment_of(args[0], "peek_build");
    if (!seg)
        return NULL;
    PyTypeObject *cls = (PyTypeObject *)args[2];
    int fast = peek_slots(cls);
    Py_ssize_t n = Py_SIZE(seg);
    PyObject *list = PyList_New(n);
    if (!list)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const gf_msg_meta row = seg->rows[i];
        const uint8_t *b = seg_row(seg, i);
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
        PyObject *msg = a[0] && a[1] && a[2] && a[4] ? peek_make(cls, fast, args[1], a, args[3]) : NULL;
        for (int k = 0; k < 5; k++)
            Py_XDECREF(a[k]);
        if (!msg)
            goto fail;
        PyList_SET_ITEM(list, i, msg);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
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
    Py_buffer base;       /* a loan's span: the buffer over its value it was made from */
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

static void span_dealloc(PyObject *o)
{
    Span *self = (Span *)o;
    if (self->base.obj)
        PyBuffer_Release(&self->base);
    PyObject_Free(o);
}

PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Span",
    .tp_basicsize = sizeof(Span),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = span_dealloc,
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
        s->base.obj = NULL;
    }
    return (PyObject *)s;
}

/* span(value) -> a writable Span over a loan's value bytes: `value` is a writable
 * buffer over them (held until the span goes). */
PyObject *mod_span(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "span(value)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    Span *s = (Span *)span_new((const uint8_t *)view.buf, view.len);
    if (!s) {
        PyBuffer_Release(&view);
        return NULL;
    }
    s->writable = 1;
    s->base = view;
    return (PyObject *)s;
}

/* peek_runs(segment) -> [(count, span, value_len, step)]: the segment's rows cut into
 * runs of messages whose values have one length and lie `step` bytes apart in
 * the ring, in order; span: a Span from the first value of the run to the end of
 * its last, for a (count, value_len) array with row stride `step`. A run ends
 * where the lengths change or the ring wraps. */
PyObject *mod_peek_runs(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "peek_runs(segment)");
        return NULL;
    }
    Segment *seg = segment_of(args[0], "peek_runs");
    if (!seg)
        return NULL;
    Py_ssize_t n = Py_SIZE(seg);
    PyObject *out = PyList_New(0);
    const uint8_t *first = NULL;
    uint64_t len = 0, step = 0;
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; out && i <= n; i++) {
        const uint8_t *v = NULL;
        uint32_t vlen = 0;
        if (i < n) {
            const gf_msg_meta *row = &seg->rows[i];
            const uint8_t *b = seg_row(seg, i);
            if (!b) {
                Py_CLEAR(out);
                break;
            }
            v = b + row->key_len + row->hdr_len;
            vlen = row->val_len;
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
    return out;
}

/* peek_check(segment) -> how many of the segment's messages are not intact
 * (gf_ring_intact_many over their offsets); sets the segment's flags. */
PyObject *mod_peek_check(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "peek_check(segment)");
        return NULL;
    }
    Segment *seg = segment_of(args[0], "peek_check");
    if (!seg)
        return NULL;
    Py_ssize_t n = Py_SIZE(seg);
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "peek_check: too many rows");
        return NULL;
    }
    uint64_t stack[64], *offs = n <= 64 ? stack : PyMem_Malloc((size_t)n * sizeof(uint64_t));
    if (!offs)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++)
        offs[i] = seg->rows[i].offset;
    uint32_t bad = core->ring_intact_many(seg->ring, offs, (uint32_t)n, seg_flags(seg));
    seg->checked = 1;
    if (offs != stack)
        PyMem_Free(offs);
    return PyLong_FromUnsignedLong(bad);
}

/* peek_release(messages, start, segment, overwritten) settles the segment's messages,
 * messages[start:start + len(segment)], after peek_check: sets each one's
 * `intact` from the segment's flags, appends those not intact to
 * `overwritten`, and releases each value. Returns how many values could not be
 * released (another object still holds their buffer). */
PyObject *mod_peek_release(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 4 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "peek_release(messages: list, start, segment, overwritten: list)");
        return NULL;
    }
    PyObject *msgs = args[0];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    Segment *seg = segment_of(args[2], "peek_release");
    if (!seg)
        return NULL;
    Py_ssize_t count = Py_SIZE(seg);
    if (!seg->checked) {
        PyErr_SetString(PyExc_ValueError, "peek_release: the segment was not checked (peek_check)");
        return NULL;
    }
    if (start < 0 || start > PyList_GET_SIZE(msgs) || count > PyList_GET_SIZE(msgs) - start) {
        PyErr_SetString(PyExc_ValueError, "peek_release: range out of the list");
        return NULL;
    }
    const uint8_t *flags = seg_flags(seg);
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
        if (!ok && PyList_Append(args[3], msg) < 0) {
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
