/* fast_records.c -- what the crossing reads and builds: encoded headers (both
 * ways), a consumer's pool of large values, (partition, Message) pairs from
 * poll rows, and a share group's records. */
#include "fast_internal.h"

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

Py_ssize_t encode_headers(PyObject *h, scratch *s)
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
PyObject *decode_headers(const uint8_t *b, uint32_t len, const char **why)
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

/* ---- a consumer's pool of large values (why: fast_internal.h) ------------------ */
static inline int pool_free_item(const value_pool *pool, uint32_t i)
{
    return !pool->taken[i] && Py_REFCNT(pool->items[i]) == 1;
}

/* gf_poller.value_dest: a free value of exactly len bytes, NULL if none */
uint8_t *pool_dest(void *ctx, uint64_t len, uint32_t *token)
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
void pool_done(gf_poller *p, value_pool *pool)
{
    p->value_dest = NULL;
    p->dest_ctx = NULL;
    if (pool->n)
        memset(pool->taken, 0, pool->n);
}

void pool_clear(value_pool *pool)
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
 * (offset, key, value, timestamp, headers, topic, partition); the pair and the
 * Message share the partition int and every Message of a call the topic str. Its items are ints, bytes, None and
 * tuples of str and bytes, which can never form a cycle, so it is untracked by
 * the garbage collector at once, as CPython does with such tuples itself. */


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

/* A Message is made untracked (PyObject_GC_NewVar), never tracked and then
 * untracked as tp_alloc would have it: no zeroing and no collector list per
 * message, since every item is set here. Python 3.14 gives tuples a hash cache
 * that tp_alloc initialises: there, tp_alloc. */
static inline PyObject *message_alloc(void)
{
#if PY_VERSION_HEX >= 0x030E0000
    PyObject *msg = message_type->tp_alloc(message_type, 7);
    if (msg)
        PyObject_GC_UnTrack(msg);
    return msg;
#else
    return (PyObject *)PyObject_GC_NewVar(PyTupleObject, message_type, 7);
#endif
}

static PyObject *make_message(const gf_msg_meta *m, const uint8_t *b, PyObject *headers, shared_ts *last,
                              value_pool *pool, PyObject *topic, PyObject *part)
{
    PyObject *msg = message_alloc();
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
    PyTuple_SET_ITEM(msg, 5, Py_NewRef(topic));
    PyTuple_SET_ITEM(msg, 6, Py_NewRef(part));
    if (!off || !key || !val || !ts) {
        Py_DECREF(msg);     /* tuple dealloc takes NULL items */
        return NULL;
    }
    return msg;
}

/* rows -> list of pairs. `ids` maps a row's ring index to the partition id it
 * reports (NULL: the index is the id). Rows whose headers do not parse are
 * dropped and counted in cursors[i].corrupt when cursors are given; without
 * cursors (a Batch being iterated) they raise CorruptFabric. `topic` (a str, or
 * None for a reader of bare partitions) goes into every Message. */
PyObject *build(const gf_msg_meta *meta, int64_t n, const uint8_t *buf, uint64_t buf_size,
                PyObject *ids, gf_cursor *cursors, uint32_t nrings, value_pool *pool, PyObject *topic)
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
        PyObject *part;
        if (ids) {
            if ((Py_ssize_t)m->partition >= PyList_GET_SIZE(ids)) {
                Py_DECREF(headers);
                PyErr_SetString(corrupt_error, "poll row names a partition the reader does not have");
                goto fail;
            }
            part = Py_NewRef(PyList_GET_ITEM(ids, m->partition));
        } else if (!(part = PyLong_FromUnsignedLong(m->partition))) {
            Py_DECREF(headers);
            goto fail;
        }
        PyObject *msg = make_message(m, b, headers, &ts_last, pool, topic, part);
        PyObject *pair = msg ? PyTuple_New(2) : NULL;
        if (!pair) {
            Py_DECREF(part);
            Py_XDECREF(msg);
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

/* messages(poller, count, ids, topic) -> [(partition, Message)] for the rows a
 * poll left in the Poller (Reader.poll's blocking path). ids: list or None;
 * topic: str or None. */
PyObject *mod_messages(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 4 || (args[2] != Py_None && !PyList_CheckExact(args[2])) ||
        (args[3] != Py_None && !PyUnicode_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "messages(poller: Poller, count, ids: list | None, topic: str | None)");
        return NULL;
    }
    gf_poller *p = poller_of(args[0]);
    long long n = p ? PyLong_AsLongLong(args[1]) : -1;
    if (n < 0 || (p && n > p->max_batch)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "count out of range");
        return NULL;
    }
    return build(p->meta, n, p->buf, p->buf_size, args[2] == Py_None ? NULL : args[2], p->cursors, p->n, NULL,
                 args[3]);
}

/* decode(meta, data, ids, topic) -> [(partition, Message)] over a copy of poll rows
 * and their bytes (Batch iteration). Malformed headers raise CorruptFabric. */
PyObject *mod_decode(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 4 || (args[2] != Py_None && !PyList_CheckExact(args[2])) ||
        (args[3] != Py_None && !PyUnicode_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError, "decode(meta, data, ids: list | None, topic: str | None)");
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
            r = build(rows, n, db.buf, (uint64_t)db.len, args[2] == Py_None ? NULL : args[2], NULL, 0, NULL,
                      args[3]);
            PyMem_Free(rows);
        }
    }
    PyBuffer_Release(&mb);
    PyBuffer_Release(&db);
    return r;
}

/* encode_headers(headers) -> bytes, or None when the fast encoder does not take them */
PyObject *mod_encode_headers(PyObject *m, PyObject *h)
{
    scratch s = {0};
    Py_ssize_t n = encode_headers(h, &s);
    PyObject *r = n < 0 ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize((const char *)s.p, n);
    PyMem_Free(s.p);
    return r;
}

/* ---- share groups: the records of one acquisition --------------------------------
 * share_records(rows, meta, buf, buf_size, n, partition, region, cls, out, held, topic)
 * builds the records of gf_share_acquire's n rows (rows, meta and buf are the
 * buffers it filled, each checked to hold what n and buf_size say; rows[i] and
 * meta[i] describe one record): appends to `out` a
 * `cls` tuple (partition, offset, key, value, timestamp, headers,
 * delivery_count, deadline_ns, word, region, topic) per row, sets held[offset] = word,
 * and returns (offsets, words, packed): the offsets and words as lists, and as
 * one bytes object of n native uint64 offsets then n words (the arrays
 * gf_share_settle takes, so settling the batch builds no array). Returns None and builds nothing when a
 * row is flagged (the caller dead-letters those). Malformed headers, or a row
 * pointing outside buf, raise CorruptFabric; nothing is appended then. */
static PyObject *share_record(const gf_share_row *r, const gf_msg_meta *m, const uint8_t *b,
                              PyObject *part, PyObject *region, PyTypeObject *cls, PyObject *topic,
                              shared_ts *last, PyObject **off_out, PyObject **word_out)
{
    const char *why;
    PyObject *headers = record_headers(m, b, &why);
    if (!headers) {
        if (why)
            PyErr_SetString(corrupt_error, why);
        return NULL;
    }
    PyObject *rec = cls->tp_alloc(cls, 11);
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
    PyTuple_SET_ITEM(rec, 10, Py_NewRef(topic));
    if (!off || !key || !val || !ts || !count || !deadline || !word) {
        Py_DECREF(rec);     /* tuple dealloc takes NULL items */
        return NULL;
    }
    PyObject_GC_UnTrack(rec);
    *off_out = off;
    *word_out = word;
    return rec;
}

static PyObject *share_build(const gf_share_row *rows, const gf_msg_meta *meta, const uint8_t *buf,
                             unsigned long long buf_size, Py_ssize_t n, PyObject *const *args);

PyObject *mod_share_records(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    if (!bound())
        return NULL;
    if (nargs != 11 || !PyType_Check(args[7]) || !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type) ||
        !PyList_CheckExact(args[8]) || !PyDict_CheckExact(args[9]) || !PyUnicode_CheckExact(args[10])) {
        PyErr_SetString(PyExc_TypeError, "share_records(rows, meta, buf, buf_size, n, partition, region, "
                                         "cls: tuple type, out: list, held: dict, topic: str)");
        return NULL;
    }
    unsigned long long buf_size = PyLong_AsUnsignedLongLong(args[3]);
    Py_ssize_t n = buf_size == (unsigned long long)-1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[4]);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "share_records: a negative row count");
        return NULL;
    }
    Py_buffer views[3];
    int got = 0;
    for (; got < 3; got++)
        if (PyObject_GetBuffer(args[got], &views[got], PyBUF_SIMPLE) < 0)
            break;
    PyObject *r = NULL;
    if (got < 3)
        ;
    else if ((uint64_t)views[0].len / sizeof(gf_share_row) < (uint64_t)n ||
             (uint64_t)views[1].len / sizeof(gf_msg_meta) < (uint64_t)n || (uint64_t)views[2].len < buf_size)
        PyErr_SetString(PyExc_ValueError, "share_records: rows, meta or buf is smaller than n and buf_size say");
    else if (((uintptr_t)views[0].buf | (uintptr_t)views[1].buf) % _Alignof(uint64_t))
        PyErr_SetString(PyExc_ValueError, "share_records: rows and meta must be aligned as their structs");
    else
        r = share_build(views[0].buf, views[1].buf, views[2].buf, buf_size, n, args);
    while (got--)
        PyBuffer_Release(&views[got]);
    return r;
}

/* share_records' work, over its checked buffers */
static PyObject *share_build(const gf_share_row *rows, const gf_msg_meta *meta, const uint8_t *buf,
                             unsigned long long buf_size, Py_ssize_t n, PyObject *const *args)
{
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
                                     (PyTypeObject *)args[7], args[10], &ts_last, &off, &word);
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
