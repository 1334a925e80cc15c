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
 *
 * This file is the module: what is bound at import, the Binding type, the slow
 * path's call and the module table. The send path is fast_send.c, the poll
 * path fast_poll.c, records and messages fast_records.c, peeks and spans
 * fast_peek.c; fast_internal.h is what they share.
 */
#include "fast_internal.h"

const gf_crossing *core;
PyObject *raise_for;
PyObject *corrupt_error;
PyTypeObject *message_type;
PyObject *empty_tuple, *str_send_slow, *str_send_keyed_slow, *str_poll_slow, *str_poll_ctx;
PyObject *str_intact, *str_value, *str_release;

/* ---- Binding: a topic's validity, shared by the handles bound to it ------------- */
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
     "invalidate($self, /)\n--\n\n"
     "Make every handle bound through this binding take its slow path (re-bind) on its next call."},
    {NULL},
};

static PyGetSetDef binding_getset[] = {
    {"valid", (getter)binding_valid, NULL, "False once invalidated", NULL},
    {NULL},
};

PyTypeObject BindingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Binding",
    .tp_basicsize = sizeof(Binding),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A topic's opened state as handles see it: valid until the manager replaces or drops it.",
    .tp_new = binding_new,
    .tp_methods = binding_methods,
    .tp_getset = binding_getset,
};

/* Call self.<slow>(*args, **kwargs) exactly as the fast method was called. */
PyObject *slow_call(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs,
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

/* ---- module functions ------------------------------------------------------------ */

/* bind(table, raise_for, CorruptFabric, Message): once, at import. table: a
 * buffer over the core's gf_crossing (static in grafos._native, which is never
 * unloaded, so its address outlives the buffer). */
static PyObject *mod_bind(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "bind(table, raise_for, CorruptFabric, Message)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const gf_crossing *t = view.buf;
    Py_ssize_t len = view.len;
    PyBuffer_Release(&view);
    if (len < (Py_ssize_t)sizeof(uint32_t) * 2) {
        PyErr_Format(PyExc_ImportError, "the core's crossing table is %zd bytes, too few for one: reinstall grafos",
                     len);
        return NULL;
    }
    if (t->size != (uint64_t)len || t->size < sizeof(gf_crossing) || t->version != GF_CROSSING_VERSION) {
        PyErr_Format(PyExc_ImportError, "grafos._fast was built for crossing table version %u (%zu bytes), "
                     "the core has version %u (%zd bytes): reinstall grafos", GF_CROSSING_VERSION,
                     sizeof(gf_crossing), t->version, len);
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


static PyMethodDef module_methods[] = {
    {"bind", (PyCFunction)(void (*)(void))mod_bind, METH_FASTCALL,
     "bind($module, table, raise_for, corrupt, message, /)\n--\n\n"
     "Hand over the core's entry points, the error mapper and the classes built here (once, at import)."},
    {"messages", (PyCFunction)(void (*)(void))mod_messages, METH_FASTCALL,
     "messages($module, poller, count, ids, topic, /)\n--\n\n"
     "[(partition, Message)] for the rows a poll left in the poller (ids: list or None)."},
    {"decode", (PyCFunction)(void (*)(void))mod_decode, METH_FASTCALL,
     "decode($module, meta, data, ids, topic, /)\n--\n\n"
     "[(partition, Message)] over a copy of poll rows and their bytes."},
    {"encode_headers", (PyCFunction)mod_encode_headers, METH_O,
     "encode_headers($module, headers, /)\n--\n\n"
     "Headers as bytes, or None when the fast encoder does not take them."},
    {"peek_take", (PyCFunction)(void (*)(void))mod_peek_take, METH_FASTCALL,
     "peek_take($module, poller, index, max, slots, stride, owner, /)\n--\n\n"
     "-> (segment, plain) | int"},
    {"peek_build", (PyCFunction)(void (*)(void))mod_peek_build, METH_FASTCALL,
     "peek_build($module, segment, partition, cls, topic, /)\n--\n\n-> list"},
    {"peek_runs", (PyCFunction)(void (*)(void))mod_peek_runs, METH_FASTCALL,
     "peek_runs($module, segment, /)\n--\n\n-> [(count, span, value_len, step)]"},
    {"peek_check", (PyCFunction)(void (*)(void))mod_peek_check, METH_FASTCALL,
     "peek_check($module, segment, /)\n--\n\n-> how many are not intact"},
    {"peek_release", (PyCFunction)(void (*)(void))mod_peek_release, METH_FASTCALL,
     "peek_release($module, messages, start, segment, overwritten, /)\n--\n\n-> values still in use"},
    {"share_records", (PyCFunction)(void (*)(void))mod_share_records, METH_FASTCALL,
     "share_records($module, rows, meta, buf, buf_size, n, partition, region, cls, out, held, topic, /)\n--\n\n"
     "-> (offsets, words, packed) | None"},
    {"span", (PyCFunction)(void (*)(void))mod_span, METH_FASTCALL,
     "span($module, value, /)\n--\n\n-> a writable Span over a writable buffer"},
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
        PyType_Ready(&SpanType) < 0 || PyType_Ready(&PollerType) < 0 || PyType_Ready(&SegmentType) < 0 ||
        PyType_Ready(&SenderStateType) < 0)
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
        PyModule_AddObjectRef(m, "SenderState", (PyObject *)&SenderStateType) < 0 ||
        PyModule_AddObjectRef(m, "SendPath", (PyObject *)&SendPathType) < 0 ||
        PyModule_AddObjectRef(m, "PollPath", (PyObject *)&PollPathType) < 0 ||
        PyModule_AddObjectRef(m, "Span", (PyObject *)&SpanType) < 0 ||
        PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddObjectRef(m, "Segment", (PyObject *)&SegmentType) < 0 ||
        PyModule_AddIntConstant(m, "OFFSET_BITS", GF_OFFSET_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
