/* fast_send.c -- SendPath, the base of grafos.mq.producer.Producer: send and
 * send_keyed with their arguments taken in place, and the list batches. */
#include "fast_internal.h"

/* ---- SenderState: a gf_sender the crossing owns ------------------------------------
 * The struct a producer's sends go through lives inside this object. The
 * binding layer fills it in and makes its cold calls with it through the buffer
 * protocol (ffi.from_buffer("gf_sender *", state)); a SendPath bound to it holds
 * the object itself. So no address crosses between cffi and the crossing as an
 * int, and the struct lives as long as anyone sends through it. */
typedef struct {
    PyObject_HEAD
    gf_sender s;
} SenderState;

static int senderstate_getbuffer(SenderState *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, &self->s, (Py_ssize_t)sizeof self->s, 0, flags);
}

static PyBufferProcs senderstate_buffer = {.bf_getbuffer = (getbufferproc)senderstate_getbuffer};

PyTypeObject SenderStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.SenderState",
    .tp_basicsize = sizeof(SenderState),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A producer's gf_sender, owned here: its bytes through the buffer protocol, zeroed when made.",
    .tp_new = PyType_GenericNew,
    .tp_as_buffer = &senderstate_buffer,
};

/* ---- SendPath: the base of grafos.mq.producer.Producer ---------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *mgr;       /* the manager `s` belongs to; NULL while unbound */
    PyObject *own;       /* a bound handle's manager (see with_own); NULL for a plain one */
    PyObject *binding;   /* the topic's Binding */
    PyObject *state;     /* the SenderState `s` lives in */
    PyObject *keep;      /* owns the memory `s` points to (its rings array, an idempotent producer's state) */
    gf_sender *s;
    scratch hdrs;        /* encoded headers of one send */
    scratch batch;       /* keys, values and lengths of one list batch */
    int busy;            /* a batch of this handle runs without the GIL (see core_send_batch) */
} SendPath;

static int sendpath_traverse(SendPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mgr);
    Py_VISIT(self->own);
    Py_VISIT(self->binding);
    Py_VISIT(self->state);
    Py_VISIT(self->keep);
    return 0;
}

static int sendpath_clear(SendPath *self)
{
    self->s = NULL;
    Py_CLEAR(self->mgr);
    Py_CLEAR(self->own);
    Py_CLEAR(self->binding);
    Py_CLEAR(self->state);
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

/* _bind_fast(mgr, binding, state, keep): route sends to mgr through the gf_sender
 * in state (a SenderState; keep owns what it points to) while binding is valid. */
static PyObject *sendpath_bind(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyObject_TypeCheck(args[1], &BindingType) || !PyObject_TypeCheck(args[2], &SenderStateType)) {
        PyErr_SetString(PyExc_TypeError, "_bind_fast(mgr, binding, state, keep): a Binding and a SenderState");
        return NULL;
    }
    PyObject *om = self->mgr, *ob = self->binding, *os = self->state, *ok = self->keep;
    self->mgr = Py_NewRef(args[0]);
    self->binding = Py_NewRef(args[1]);
    self->state = Py_NewRef(args[2]);
    self->keep = Py_NewRef(args[3]);
    self->s = &((SenderState *)args[2])->s;
    Py_XDECREF(om);     /* after the new state is in place: a dealloc may run code */
    Py_XDECREF(ob);
    Py_XDECREF(os);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

static PyObject *sendpath_own(SendPath *self, PyObject *mgr)
{
    return set_own(&self->own, mgr);
}

static PyObject *sendpath_unbind(SendPath *self, PyObject *unused)
{
    PyObject *om = self->mgr, *ob = self->binding, *os = self->state, *ok = self->keep;
    self->s = NULL;
    self->mgr = self->binding = self->state = self->keep = NULL;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(os);
    Py_XDECREF(ok);
    Py_RETURN_NONE;
}

/* One send: key (NULL: none), value, headers (NULL or None: none). Returns the
 * pair, or NULL with no exception set when the slow path must take the call
 * (what the core said of the failure is in res). */
static PyObject *send_one(SendPath *self, PyObject *key, PyObject *value, PyObject *headers,
                          gf_send_result *res)
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
            ? core->send_idem(s, k.p, (uint32_t)k.n, (uint32_t)has_key, hp, (uint32_t)hl, v.p, (uint32_t)v.n, res)
            : core->send(s->rings, s->n, s->mode, &s->rr, k.p, (uint32_t)k.n, (uint32_t)has_key,
                         hp, (uint32_t)hl, v.p, (uint32_t)v.n, 0, res);
        if (rc >= 0) {
            PyObject *p = PyLong_FromLongLong(rc >> GF_OFFSET_BITS);
            PyObject *o = PyLong_FromLongLong((int64_t)((uint64_t)rc & GF_MAX_OFFSET));   /* the medium-int fast path */
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

/* An idempotent send of the fast path failed after its write: the slow path
 * repeats it with the same partition and sequence, handed over here (they are
 * this call's alone), as self._send_again(mgr, key, value, headers, part, seq). */
static PyObject *send_again(SendPath *self, PyObject *mgr, PyObject *key, PyObject *value, PyObject *headers,
                            const gf_send_result *res)
{
    static PyObject *name;      /* "_send_again", interned on first use */
    if (!name && !(name = PyUnicode_InternFromString("_send_again")))
        return NULL;
    PyObject *part = PyLong_FromUnsignedLong(res->unsure_part);
    PyObject *seq = PyLong_FromUnsignedLongLong(res->unsure_seq);
    PyObject *r = NULL;
    if (part && seq) {
        PyObject *args[] = {(PyObject *)self, mgr, key ? key : Py_None, value, headers ? headers : Py_None,
                            part, seq};
        r = PyObject_VectorcallMethod(name, args, 7, NULL);
    }
    Py_XDECREF(part);
    Py_XDECREF(seq);
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
        gf_send_result res;
        res.unsure = 0;
        PyObject *r = send_one(self, NULL, a[1], a[2], &res);
        if (r || PyErr_Occurred())
            return r;
        if (res.unsure)
            return send_again(self, a[0], NULL, a[1], a[2], &res);
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
        gf_send_result res;
        res.unsure = 0;
        PyObject *r = send_one(self, a[1], a[2], a[3], &res);
        if (r || PyErr_Occurred())
            return r;
        if (res.unsure)
            return send_again(self, a[0], a[1], a[2], a[3], &res);
    }
    return slow_call((PyObject *)self, str_send_keyed_slow, args, nargs, kwnames);
}

/* A batch's outcome: the core's rc, or (rc, partition) when it found that
 * partition without room (GF_E_FULL_RING), for the caller's wait. */
static PyObject *batch_rc(int64_t rc, const gf_send_result *res)
{
    if (rc == GF_E_FULL_RING)
        return Py_BuildValue("(LI)", (long long)rc, (unsigned int)res->full_part);
    return PyLong_FromLongLong(rc);
}

/* A batch that writes at least this many bytes, counting each message as its
 * bytes plus MESSAGE_COST_BYTES (its header and sequence words, about), is
 * written without the GIL: its copies then overlap another thread's work (a
 * consumer thread building its messages). The release and retake did not show
 * beside one such batch (128 x 64 B, about 5 us, timed both ways). A smaller
 * batch keeps the GIL. */
#define GIL_FREE_BATCH_BYTES (16u << 10)
#define MESSAGE_COST_BYTES 64u

/* The core's send_batch of n messages of `bytes` value and key bytes in all,
 * from the caller's buffers (self->batch included), as batch_rc says. A large
 * batch runs without the GIL, holding its own references to what self->s lives
 * in (another thread may re-bind or unbind the handle meanwhile) and marking the
 * handle busy: a second batch on it takes the packing path instead of writing
 * into self->batch under this one (the callers return None while busy). */
static PyObject *core_send_batch(SendPath *self, uint32_t n, uint64_t bytes, const uint8_t *keys,
                                 const uint32_t *klens, const uint8_t *vals, const uint32_t *vlens,
                                 uint32_t *parts, uint64_t *offs)
{
    gf_sender *s = self->s;
    gf_send_result res;
    PyObject *state = NULL, *keep = NULL;
    PyThreadState *ts = NULL;
    if (bytes + (uint64_t)n * MESSAGE_COST_BYTES >= GIL_FREE_BATCH_BYTES) {
        state = Py_NewRef(self->state);
        keep = Py_NewRef(self->keep);
        self->busy = 1;
        ts = PyEval_SaveThread();
    }
    int64_t rc = core->send_batch(s->rings, s->n, s->mode, &s->rr, n, keys, klens, vals, vlens, 0, parts, offs,
                                  &res);
    if (ts) {
        PyEval_RestoreThread(ts);
        self->busy = 0;
        Py_DECREF(state);
        Py_DECREF(keep);
    }
    return batch_rc(rc, &res);
}

/* _send_lists(values, keys, parts, offsets) -> rc or (rc, partition) (see
 * batch_rc), or None when the lists hold something other than bytes /
 * bytearray (the caller's packing path then checks and says what). parts and
 * offsets are writable uint32 / uint64 arrays of the batch's length. Walks the
 * lists into one scratch buffer and hands the batch to the core's send_batch
 * in one call. */
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
    return core_send_batch(self, (uint32_t)n, kbytes + vbytes, has_keys ? kp0 : NULL, kl, vp0, vl, parts, offs);
}

static PyObject *sendpath_send_lists(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !self->s) {
        PyErr_SetString(PyExc_TypeError, "_send_lists(values, keys, parts, offsets) on a bound sender");
        return NULL;
    }
    if (self->busy)
        Py_RETURN_NONE;     /* another thread's batch on this handle is under way */
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

/* _send_rows(values, parts, offsets) -> as _send_lists, or None for the packing
 * path: values is any object with a C-contiguous 2-D buffer (a numpy array), one
 * message per row, handed to the core in place: the ring's copy is the only one. */
static PyObject *sendpath_send_rows(SendPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !self->s) {
        PyErr_SetString(PyExc_TypeError, "_send_rows(values, parts, offsets) on a bound sender");
        return NULL;
    }
    if (self->busy)
        Py_RETURN_NONE;     /* another thread's batch on this handle is under way */
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
        r = core_send_batch(self, (uint32_t)n, n * width, NULL, NULL, vb.buf, lens, pb.buf, ob.buf);
    }
    PyBuffer_Release(&vb);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&ob);
    return r;
}

static PyMethodDef sendpath_methods[] = {
    {"send", (PyCFunction)(void (*)(void))sendpath_send, METH_FASTCALL | METH_KEYWORDS,
     "send($self, mgr, value, headers=None, *, timeout=grafos._crossing.PRODUCER_TIMEOUT)\n--\n\n"
     "Append value without a key (round robin); returns (partition, offset).\n"
     "value: bytes, bytearray or memoryview. timeout: seconds a send to a full\n"
     "on_full=\"block\" topic waits for room (None: for ever; not given: the\n"
     "producer's timeout)."},
    {"send_keyed", (PyCFunction)(void (*)(void))sendpath_send_keyed, METH_FASTCALL | METH_KEYWORDS,
     "send_keyed($self, mgr, key, value, headers=None, *, timeout=grafos._crossing.PRODUCER_TIMEOUT)\n--\n\n"
     "Append value under key (Kafka's partitioner; key None: round robin); returns\n"
     "(partition, offset). timeout: as for send (not given: the producer's timeout)."},
    {"_bind_fast", (PyCFunction)(void (*)(void))sendpath_bind, METH_FASTCALL, NULL},
    {"_unbind_fast", (PyCFunction)sendpath_unbind, METH_NOARGS, NULL},
    {"_own", (PyCFunction)sendpath_own, METH_O, "_own($self, mgr, /)\n--\n\nA bound handle's manager (see with_own)."},
    {"_send_lists", (PyCFunction)(void (*)(void))sendpath_send_lists, METH_FASTCALL, NULL},
    {"_send_rows", (PyCFunction)(void (*)(void))sendpath_send_rows, METH_FASTCALL, NULL},
    {NULL},
};

PyTypeObject SendPathType = {
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
