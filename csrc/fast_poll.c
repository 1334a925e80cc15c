/* fast_poll.c -- PollPath, the base of grafos.mq.consumer.Consumer: one
 * crossing per poll, in slices that look at signals while it blocks. */
#include "fast_internal.h"

/* ---- Poller: a reader's gf_poller, inside a Python object -------------------------- */
/* Poller(keep): a zeroed gf_poller; keep owns what the reader points it at. */
static PyObject *poller_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *keep;
    if (kw && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Poller(keep) takes no keywords");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Poller", 1, 1, &keep))
        return NULL;
    Poller *self = (Poller *)type->tp_alloc(type, 0);    /* zeroed: the struct too */
    if (self)
        self->keep = Py_NewRef(keep);
    return (PyObject *)self;
}

static int poller_traverse(Poller *self, visitproc visit, void *arg)
{
    Py_VISIT(self->keep);
    return 0;
}

static int poller_clear(Poller *self)
{
    Py_CLEAR(self->keep);
    return 0;
}

static void poller_dealloc(Poller *self)
{
    PyObject_GC_UnTrack(self);
    poller_clear(self);
    PyMem_Free(self->rows.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* the struct's bytes, writable, for cffi (exactly sizeof(gf_poller)) */
static int poller_getbuffer(PyObject *o, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, o, &((Poller *)o)->p, (Py_ssize_t)sizeof(gf_poller), 0, flags);
}

static PyBufferProcs poller_as_buffer = {poller_getbuffer, NULL};

PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "grafos._fast.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Poller(keep, /)\n--\n\n"
              "A reader's gf_poller, held here and exported as its bytes (ffi.from_buffer); "
              "keep owns what it points to.",
    .tp_new = poller_new,
    .tp_traverse = (traverseproc)poller_traverse,
    .tp_clear = (inquiry)poller_clear,
    .tp_dealloc = (destructor)poller_dealloc,
    .tp_as_buffer = &poller_as_buffer,
};

/* ---- PollPath: the base of grafos.mq.consumer.Consumer ----------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *mgr;       /* the manager `p` reads from; NULL while unbound */
    PyObject *own;       /* a bound handle's manager (see with_own); NULL for a plain one */
    PyObject *binding;   /* the topic's Binding */
    PyObject *keep;      /* the reader `p` belongs to */
    PyObject *poller;    /* the Poller `p` lives in */
    PyObject *topic;     /* the topic's name, put in every Message */
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
    Py_VISIT(self->poller);
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
    Py_CLEAR(self->poller);
    Py_CLEAR(self->topic);
    return 0;
}

static void pollpath_dealloc(PollPath *self)
{
    PyObject_GC_UnTrack(self);
    pollpath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* _bind_fast(mgr, binding, poller, keep, holes, topic) */
static PyObject *pollpath_bind(PollPath *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6 || !PyObject_TypeCheck(args[1], &BindingType) || !PyUnicode_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "_bind_fast(mgr, binding, poller: Poller, keep, holes, topic: str)");
        return NULL;
    }
    gf_poller *p = poller_of(args[2]);
    int holes = p ? PyObject_IsTrue(args[4]) : -1;
    if (holes < 0)
        return NULL;
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep, *op = self->poller;
    self->mgr = Py_NewRef(args[0]);
    self->binding = Py_NewRef(args[1]);
    self->keep = Py_NewRef(args[3]);
    self->poller = Py_NewRef(args[2]);
    Py_XSETREF(self->topic, Py_NewRef(args[5]));
    self->p = p;
    self->holes = holes;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_XDECREF(op);
    Py_RETURN_NONE;
}

static PyObject *pollpath_own(PollPath *self, PyObject *mgr)
{
    return set_own(&self->own, mgr);
}

static PyObject *pollpath_unbind(PollPath *self, PyObject *unused)
{
    PyObject *om = self->mgr, *ob = self->binding, *ok = self->keep, *op = self->poller;
    self->p = NULL;
    self->mgr = self->binding = self->keep = self->poller = NULL;
    Py_XDECREF(om);
    Py_XDECREF(ob);
    Py_XDECREF(ok);
    Py_XDECREF(op);
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
    PyObject *list = build(p->meta, rc, p->buf, p->buf_size, NULL, p->cursors, p->n, &self->pool, self->topic);
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
    {"_own", (PyCFunction)pollpath_own, METH_O, "_own($self, mgr, /)\n--\n\nA bound handle's manager (see with_own)."},
    {NULL},
};

static PyMemberDef pollpath_members[] = {
    {"consumed", T_ULONGLONG, offsetof(PollPath, consumed), 0, "messages returned by poll calls so far"},
    {NULL},
};

PyTypeObject PollPathType = {
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
