/* The common case of RingLog.row (coordinator/client/ringlog.py) in one C call.
 *
 * A ring row of a known frame (a dict of plain numbers at a step, the frame admitted and not held)
 * that fits before the writer's room is packed here, as RingWriter.pack_row would pack it
 * (coordinator/transport/ring.py: u32 length | u32 tag | u32 frame id | u32 stamp | i64 step |
 * f64 value x n | u32 tag | u32 length), then published and counted, reading and storing the same
 * attributes of the RingLog and its RingWriter that the Python path does. Every other call goes
 * to that path (the RingLog's own method, given as `fallback`), untouched: this file decides
 * nothing the Python code does not, it only takes its most frequent branch without the
 * interpreter. Nothing is written or changed before every check passed, but the record's bytes
 * past the published position, which no reader looks at until they are published.
 *
 * Built when a compiler is at hand (an optional extension: pyproject.toml); without it the ring
 * takes the Python path for every row (tests/client/test_fastrow.py holds the two to the same
 * records).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define STAMP_SHIFT 20 /* ringrows.STAMP_SHIFT */
#define WRITTEN_AT 64  /* ring._WRITTEN_AT */
#define MARK_MASK 255  /* ringlog._MARK_MASK */
#define HEAD_BYTES 24  /* u32 length, u32 tag, u32 frame id, u32 stamp, i64 step */

typedef struct {
    PyObject_HEAD
    PyObject *owner;    /* the RingLog */
    PyObject *log;      /* its __dict__ */
    PyObject *writer;   /* its RingWriter's __dict__ */
    PyObject *plain;    /* tuple of the value types a row takes besides float, int and bool */
    PyObject *fallback; /* the Python path: RingLog._row */
    PyObject *scalars;  /* key -> its one-key frame, as found in RingLog._frames (which never replaces one) */
} Rows;

static PyObject *s_on, *s_frames, *s_seq, *s_pos, *s_room, *s_base, *s_tally, *s_map;

/* A frame of the ring (RingLog._admit): [frame id, framing, last write number, last step, keys, held],
 * indexed as the Python path's list is, its numbers kept in one struct. The C path reads and stores them
 * without boxing: a frame the call did not touch for a while costs one cold line, not six objects'. */
typedef struct {
    PyObject_HEAD
    PyObject *framing; /* f[1]: (struct, record size, ...) from RingRows.frame */
    long long fid, seq, step, nkeys, held; /* f[0], f[2], f[3], f[4], f[5] */
    long long size; /* framing[1] where it is an int, else -1 (the C path then leaves the frame alone) */
} Frame;

#define FRAME_LEN 6

static long long
framing_size(PyObject *framing)
{
    if (!PyTuple_CheckExact(framing) || PyTuple_GET_SIZE(framing) != 3 || !PyLong_CheckExact(PyTuple_GET_ITEM(framing, 1)))
        return -1;
    long long size = PyLong_AsLongLong(PyTuple_GET_ITEM(framing, 1));
    if (size == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return size;
}

static long long *
frame_slot(Frame *f, Py_ssize_t i)
{
    switch (i) {
    case 0: return &f->fid;
    case 2: return &f->seq;
    case 3: return &f->step;
    case 4: return &f->nkeys;
    case 5: return &f->held;
    default: return NULL;
    }
}

static Py_ssize_t
frame_len(PyObject *Py_UNUSED(self))
{
    return FRAME_LEN;
}

static PyObject *
frame_item(Frame *f, Py_ssize_t i)
{
    if (i < 0 || i >= FRAME_LEN) {
        PyErr_SetString(PyExc_IndexError, "frame index out of range");
        return NULL;
    }
    if (i == 1)
        return Py_NewRef(f->framing);
    return PyLong_FromLongLong(*frame_slot(f, i));
}

static int
frame_ass_item(Frame *f, Py_ssize_t i, PyObject *v)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_TypeError, "a frame's items cannot be deleted");
        return -1;
    }
    if (i < 0 || i >= FRAME_LEN) {
        PyErr_SetString(PyExc_IndexError, "frame assignment index out of range");
        return -1;
    }
    if (i == 1) {
        Py_XSETREF(f->framing, Py_NewRef(v));
        f->size = framing_size(v);
        return 0;
    }
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "a frame's item %zd is an int, not %.100s", i, Py_TYPE(v)->tp_name);
        return -1;
    }
    long long x = PyLong_AsLongLong(v); /* past a long long: OverflowError */
    if (x == -1 && PyErr_Occurred())
        return -1;
    *frame_slot(f, i) = x;
    return 0;
}

static int
frame_init(Frame *f, PyObject *args, PyObject *kwds)
{
    if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
        PyErr_SetString(PyExc_TypeError, "Frame() takes no keyword arguments");
        return -1;
    }
    if (!PyTuple_Check(args) || PyTuple_GET_SIZE(args) != FRAME_LEN) {
        PyErr_SetString(PyExc_TypeError, "Frame(fid, framing, seq, step, nkeys, held)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < FRAME_LEN; i++)
        if (frame_ass_item(f, i, PyTuple_GET_ITEM(args, i)) < 0)
            return -1;
    return 0;
}

static PyObject *
frame_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Frame *f = (Frame *)type->tp_alloc(type, 0);
    if (f != NULL) {
        f->framing = Py_NewRef(Py_None);
        f->size = -1;
    }
    return (PyObject *)f;
}

static void
frame_dealloc(Frame *f)
{
    Py_CLEAR(f->framing);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *
frame_repr(Frame *f)
{
    return PyUnicode_FromFormat("Frame(%lld, %R, %lld, %lld, %lld, %lld)", f->fid, f->framing, f->seq, f->step,
                                f->nkeys, f->held);
}

static PySequenceMethods frame_as_sequence = {
    .sq_length = frame_len,
    .sq_item = (ssizeargfunc)frame_item,
    .sq_ass_item = (ssizeobjargproc)frame_ass_item,
};

static PyTypeObject FrameType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "coordinator.client._fastrow.Frame",
    .tp_basicsize = sizeof(Frame),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Frame(fid, framing, seq, step, nkeys, held): a ring frame, indexed as RingLog's list.",
    .tp_new = frame_new,
    .tp_init = (initproc)frame_init,
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_repr = (reprfunc)frame_repr,
    .tp_as_sequence = &frame_as_sequence,
};
static PyObject *s_confirmed, *s_look;

static int
rows_traverse(Rows *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->log);
    Py_VISIT(self->writer);
    Py_VISIT(self->plain);
    Py_VISIT(self->fallback);
    Py_VISIT(self->scalars);
    return 0;
}

static int
rows_clear(Rows *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->log);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->plain);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->scalars);
    return 0;
}

static void
rows_dealloc(Rows *self)
{
    PyObject_GC_UnTrack(self);
    rows_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
rows_init(Rows *self, PyObject *args, PyObject *Py_UNUSED(kwds))
{
    PyObject *log, *writer, *plain, *fallback;
    if (!PyArg_ParseTuple(args, "OOO!O:Rows", &log, &writer, &PyTuple_Type, &plain, &fallback))
        return -1;
    PyObject *ld = PyObject_GenericGetDict(log, NULL);
    if (ld == NULL)
        return -1;
    PyObject *wd = PyObject_GenericGetDict(writer, NULL);
    if (wd == NULL) {
        Py_DECREF(ld);
        return -1;
    }
    PyObject *scalars = PyDict_New();
    if (scalars == NULL) {
        Py_DECREF(ld);
        Py_DECREF(wd);
        return -1;
    }
    Py_XSETREF(self->scalars, scalars);
    Py_INCREF(log);
    Py_XSETREF(self->owner, log);
    Py_XSETREF(self->log, ld);
    Py_XSETREF(self->writer, wd);
    Py_INCREF(plain);
    Py_XSETREF(self->plain, plain);
    Py_INCREF(fallback);
    Py_XSETREF(self->fallback, fallback);
    return 0;
}

/* An int attribute of `d` into *out; 0 when it is missing or not an int that fits. */
static int
get_ll(PyObject *d, PyObject *name, long long *out)
{
    PyObject *v = PyDict_GetItemWithError(d, name);
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow && !(*out == -1 && PyErr_Occurred());
}

/* A value as the row's struct's 'd' would pack it, for the types the Python path takes; 0: not one. */
static int
as_double(PyObject *v, PyObject *plain, double *out)
{
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyFloat_Type) {
        *out = PyFloat_AS_DOUBLE(v);
        return 1;
    }
    if (t == &PyBool_Type) {
        *out = v == Py_True ? 1.0 : 0.0;
        return 1;
    }
    int known = t == &PyLong_Type;
    for (Py_ssize_t i = 0; !known && i < PyTuple_GET_SIZE(plain); i++)
        known = (PyObject *)t == PyTuple_GET_ITEM(plain, i);
    if (!known)
        return 0;
    *out = PyFloat_AsDouble(v); /* an int past a float's range: OverflowError, and the Python path says so */
    if (*out == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* The frame `f`'s row of `data` at `step` into the ring; 1: written, 0: the Python path takes the call
 * (nothing changed), -1: an exception. Every object it stores is made before the record is written, so
 * that a failure cannot leave a record published with the writer's position behind it. */
static int
write_row(Rows *self, Frame *f, PyObject *data, Py_ssize_t n, PyObject *step_o)
{
    long long step = PyLong_AsLongLong(step_o);
    if (step == -1 && PyErr_Occurred()) { /* past a long long: the Python path says what it is */
        PyErr_Clear();
        return 0;
    }
    long long size = f->size;
    /* held >= 0: a write of one of its keys over the socket may not be applied yet (the Python path decides) */
    if (f->held >= 0 || f->nkeys != n || step < 0 || f->fid < 0 || f->fid > 0xFFFFFFFFLL ||
        size != HEAD_BYTES + 8 * n + 8)
        return 0;
    long long pos, room, base, tally, seq;
    if (!get_ll(self->writer, s_pos, &pos) || !get_ll(self->writer, s_room, &room) ||
        !get_ll(self->writer, s_base, &base) || !get_ll(self->writer, s_tally, &tally) ||
        !get_ll(self->log, s_seq, &seq))
        return PyErr_Occurred() ? -1 : 0;
    long long end = pos + size;
    if (end > room || pos < 0 || base + pos < WRITTEN_AT + 8)
        return 0; /* a claim: the Python path makes it */
    PyObject *map = PyDict_GetItemWithError(self->writer, s_map);
    if (map == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *end_o = PyLong_FromLongLong(end);
    PyObject *tally_o = PyLong_FromLongLong(tally + n);
    PyObject *seq_o = PyLong_FromLongLong(seq + 1);
    int rc = -1;
    Py_buffer view;
    view.obj = NULL;
    if (end_o == NULL || tally_o == NULL || seq_o == NULL)
        goto done;
    rc = 0;
    if (PyObject_GetBuffer(map, &view, PyBUF_WRITABLE) < 0) {
        PyErr_Clear(); /* a closed map: the Python path says so */
        view.obj = NULL;
        goto done;
    }
    if (base + end > view.len)
        goto done;
    char *rec = (char *)view.buf + base + pos;
    Py_ssize_t it = 0, i = 0;
    PyObject *k, *v;
    while (PyDict_Next(data, &it, &k, &v)) {
        double x;
        if (i >= n || !as_double(v, self->plain, &x))
            goto done;
        memcpy(rec + HEAD_BYTES + 8 * i++, &x, 8);
    }
    if (i != n)
        goto done;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint32_t body = (uint32_t)(size - 16), tag = (uint32_t)((pos >> 3) & 0xFFFFFFFF);
    uint32_t head[4] = {body, tag, (uint32_t)f->fid, (uint32_t)((now >> STAMP_SHIFT) & 0xFFFFFFFF)};
    int64_t st = step;
    uint32_t tail[2] = {tag, body};
    memcpy(rec, head, 16);
    memcpy(rec + 16, &st, 8);
    memcpy(rec + size - 8, tail, 8);
    uint64_t published = (uint64_t)end;
    memcpy((char *)view.buf + WRITTEN_AT, &published, 8); /* after the record: the reader's bound */
    /* Replacing the values of keys these dicts hold allocates nothing. */
    if (PyDict_SetItem(self->writer, s_pos, end_o) < 0 || PyDict_SetItem(self->writer, s_tally, tally_o) < 0 ||
        PyDict_SetItem(self->log, s_seq, seq_o) < 0) {
        rc = -1;
        goto done;
    }
    f->seq = seq + 1;
    f->step = step;
    rc = (seq + 1) & MARK_MASK ? 1 : 2;
done:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    Py_XDECREF(end_o);
    Py_XDECREF(tally_o);
    Py_XDECREF(seq_o);
    return rc;
}

/* `data`'s frame in `frames` (RingLog._frames, keyed by the tuple of its keys), borrowed; NULL: none (or an
 * exception). A one-key frame is looked up by its key in `scalars` first, filled from `frames`: no tuple
 * made, and the key found by identity, not compared through a stored tuple a paced call finds cold. */
static PyObject *
find_frame(Rows *self, PyObject *frames, PyObject *data, Py_ssize_t n)
{
    Py_ssize_t it = 0, i = 0;
    PyObject *k, *v, *f;
    if (n == 1) {
        if (!PyDict_Next(data, &it, &k, &v))
            return NULL;
        if (PyUnicode_CheckExact(k) && ((f = PyDict_GetItemWithError(self->scalars, k)) != NULL || PyErr_Occurred()))
            return f;
        it = 0;
    }
    PyObject *kt = PyTuple_New(n);
    if (kt == NULL)
        return NULL;
    while (i < n && PyDict_Next(data, &it, &k, &v)) {
        Py_INCREF(k);
        PyTuple_SET_ITEM(kt, i++, k);
    }
    f = PyDict_GetItemWithError(frames, kt); /* hashes the keys: str, whose hashes are kept */
    Py_DECREF(kt);
    if (f != NULL && n == 1 && PyUnicode_CheckExact(k) && Py_TYPE(f) == &FrameType &&
        PyDict_SetItem(self->scalars, k, f) < 0)
        return NULL;
    return f;
}

/* 1: the row is written; 0: the Python path takes the call (nothing changed); -1: an exception. */
static int
fast_row(Rows *self, PyObject *data, PyObject *step_o)
{
    PyObject *on = PyDict_GetItemWithError(self->log, s_on);
    if (on != Py_True || !PyDict_CheckExact(data) || !PyLong_CheckExact(step_o))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *frames = PyDict_GetItemWithError(self->log, s_frames);
    if (frames == NULL || !PyDict_CheckExact(frames))
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t n = PyDict_GET_SIZE(data);
    if (n == 0)
        return 0;
    PyObject *f = find_frame(self, frames, data, n);
    if (f == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (Py_TYPE(f) != &FrameType || PyDict_GET_SIZE(data) != n)
        return 0;
    Py_INCREF(f);
    int rc = write_row(self, (Frame *)f, data, n, step_o);
    Py_DECREF(f);
    if (rc == 2) { /* a mark: the count of committed points stays within this many rows */
        PyObject *r = PyObject_CallMethodNoArgs(self->owner, s_confirmed);
        if (r != NULL) {
            Py_DECREF(r);
            r = PyObject_CallMethodNoArgs(self->owner, s_look);
        }
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        rc = 1;
    }
    return rc;
}

static PyObject *
rows_row(Rows *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "row() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int done = fast_row(self, args[0], args[1]);
    if (done < 0)
        return NULL;
    if (done)
        Py_RETURN_TRUE;
    return PyObject_Vectorcall(self->fallback, args, 2, NULL);
}

static PyMethodDef rows_methods[] = {
    {"row", (PyCFunction)(void (*)(void))rows_row, METH_FASTCALL,
     "row(data, step) -> bool: RingLog.row, its common case in C."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RowsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "coordinator.client._fastrow.Rows",
    .tp_basicsize = sizeof(Rows),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Rows(log, writer, plain, fallback): a RingLog's row() with its common case in C.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)rows_init,
    .tp_dealloc = (destructor)rows_dealloc,
    .tp_traverse = (traverseproc)rows_traverse,
    .tp_clear = (inquiry)rows_clear,
    .tp_methods = rows_methods,
};

static struct PyModuleDef fastrow_module = {
    PyModuleDef_HEAD_INIT, "coordinator.client._fastrow", "RingLog.row's common case in C.", -1, NULL, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__fastrow(void)
{
    struct {
        PyObject **slot;
        const char *name;
    } names[] = {
        {&s_on, "on"}, {&s_frames, "_frames"}, {&s_seq, "_seq"}, {&s_pos, "_pos"}, {&s_room, "_room"},
        {&s_base, "_base"}, {&s_tally, "tally"}, {&s_map, "map"}, {&s_confirmed, "confirmed"},
        {&s_look, "_look_at_fill"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    if (PyType_Ready(&RowsType) < 0 || PyType_Ready(&FrameType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastrow_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RowsType);
    if (PyModule_AddObject(m, "Rows", (PyObject *)&RowsType) < 0) {
        Py_DECREF(&RowsType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&FrameType);
    if (PyModule_AddObject(m, "Frame", (PyObject *)&FrameType) < 0) {
        Py_DECREF(&FrameType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
