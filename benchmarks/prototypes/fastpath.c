/* fastpath.c -- PROTOTYPE, benchmarks only: what a hand-written CPython call
 * path into the *same* core functions costs, next to cffi's.
 *
 * It does not link the core: `bind()` takes the addresses of gf_ring_append /
 * gf_ring_append_batch from the loaded grafos._native (ffi.addressof(lib, ...))
 * and the ring pointer, so the C work per message is exactly the library's.
 * What differs from the cffi call is the crossing: METH_FASTCALL (no argument
 * tuple), bytes passed by pointer, no GIL release / errno save around a call
 * that never blocks. append_batch walks the Python lists in C (no b"".join,
 * no numpy length array) into a reused scratch buffer.
 *
 * Built on demand by benchmarks/workloads.py (a C compiler and Python headers
 * are needed; the benchmarks that use it are skipped otherwise).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef int64_t (*append_fn)(void *r, const uint8_t *key, uint32_t klen, uint32_t has_key,
                             const uint8_t *hdrs, uint32_t hlen, const uint8_t *val,
                             uint32_t vlen, int64_t ts_ns);
typedef int64_t (*append_batch_fn)(void *r, uint32_t count, const uint8_t *keys,
                                   const uint32_t *key_lens, const uint8_t *vals,
                                   const uint32_t *val_lens, int64_t ts_ns);

static append_fn g_append;
static append_batch_fn g_append_batch;
static void *g_ring;
static uint8_t *g_scratch;        /* keys then values of one batch */
static size_t g_scratch_cap;
static uint32_t *g_lens;          /* key lens then value lens */
static size_t g_lens_cap;

static PyObject *bind(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "bind(append_addr, append_batch_addr, ring_addr)");
        return NULL;
    }
    g_append = (append_fn)PyLong_AsVoidPtr(args[0]);
    g_append_batch = (append_batch_fn)PyLong_AsVoidPtr(args[1]);
    g_ring = PyLong_AsVoidPtr(args[2]);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *fail(int64_t rc)
{
    PyErr_Format(PyExc_RuntimeError, "grafos core returned %lld", (long long)rc);
    return NULL;
}

/* append(value, key=None) -> offset */
static PyObject *append(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *value = nargs > 0 ? args[0] : NULL, *key = nargs > 1 ? args[1] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "key") == 0)
            key = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "value") == 0)
            value = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "unexpected keyword %U", name);
            return NULL;
        }
    }
    if (!value || !PyBytes_Check(value) || (key != Py_None && !PyBytes_Check(key))) {
        PyErr_SetString(PyExc_TypeError, "append(value: bytes, key: bytes | None = None)");
        return NULL;
    }
    int has_key = key != Py_None;
    int64_t rc = g_append(g_ring, has_key ? (const uint8_t *)PyBytes_AS_STRING(key) : NULL,
                          has_key ? (uint32_t)PyBytes_GET_SIZE(key) : 0u, (uint32_t)has_key, NULL, 0,
                          (const uint8_t *)PyBytes_AS_STRING(value), (uint32_t)PyBytes_GET_SIZE(value), 0);
    if (rc < 0)
        return fail(rc);
    return PyLong_FromLongLong(rc);
}

static int grow(size_t bytes, size_t count)
{
    if (bytes > g_scratch_cap) {
        uint8_t *p = PyMem_Realloc(g_scratch, bytes);
        if (!p) { PyErr_NoMemory(); return -1; }
        g_scratch = p;
        g_scratch_cap = bytes;
    }
    if (2 * count > g_lens_cap) {
        uint32_t *p = PyMem_Realloc(g_lens, 2 * count * sizeof *p);
        if (!p) { PyErr_NoMemory(); return -1; }
        g_lens = p;
        g_lens_cap = 2 * count;
    }
    return 0;
}

/* append_batch(values: list[bytes], keys: list[bytes]) -> first offset */
static PyObject *append_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1]) || PyList_GET_SIZE(args[0]) == 0) {
        PyErr_SetString(PyExc_TypeError, "append_batch(values: list[bytes], keys: list[bytes]), same non-zero length");
        return NULL;
    }
    PyObject *vals = args[0], *keys = args[1];
    Py_ssize_t n = PyList_GET_SIZE(vals);
    size_t kbytes = 0, vbytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i), *v = PyList_GET_ITEM(vals, i);
        if (!PyBytes_Check(k) || !PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "message %zd: keys and values must be bytes", i);
            return NULL;
        }
        kbytes += (size_t)PyBytes_GET_SIZE(k);
        vbytes += (size_t)PyBytes_GET_SIZE(v);
    }
    if (grow(kbytes + vbytes, (size_t)n) < 0)
        return NULL;
    uint8_t *kp = g_scratch, *vp = g_scratch + kbytes;
    uint32_t *kl = g_lens, *vl = g_lens + n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i), *v = PyList_GET_ITEM(vals, i);
        size_t a = (size_t)PyBytes_GET_SIZE(k), b = (size_t)PyBytes_GET_SIZE(v);
        memcpy(kp, PyBytes_AS_STRING(k), a);
        memcpy(vp, PyBytes_AS_STRING(v), b);
        kp += a;
        vp += b;
        kl[i] = (uint32_t)a;
        vl[i] = (uint32_t)b;
    }
    int64_t rc = g_append_batch(g_ring, (uint32_t)n, g_scratch, kl, g_scratch + kbytes, vl, 0);
    if (rc < 0)
        return fail(rc);
    return PyLong_FromLongLong(rc);
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, "bind(append_addr, append_batch_addr, ring_addr)"},
    {"append", (PyCFunction)(void (*)(void))append, METH_FASTCALL | METH_KEYWORDS, "append(value, key=None)"},
    {"append_batch", (PyCFunction)(void (*)(void))append_batch, METH_FASTCALL, "append_batch(values, keys)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_grafos_fastpath", NULL, -1, methods};

PyMODINIT_FUNC PyInit__grafos_fastpath(void) { return PyModule_Create(&module); }
