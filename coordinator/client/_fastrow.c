/* The common case of RingLog.row (coordinator/client/ringlog.py) in one C call, and of the socket path's append.
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
 * Log stands for Run.log and Run._append (coordinator/client/run.py) in a run's __dict__: the same common case
 * reached without the methods' frames (and, for a run whose calls go over the socket, a point appended to its
 * column or a dict's row to its frame in the rank's buffer, as Run.log's Python does), under the buffer's lock
 * taken without blocking, every other call handed to the method. Method stands in a class for Handle.append
 * (coordinator/client/handle.py), which reaches it through the run's Log, and for Run.__getitem__'s lookup of a
 * handle (tests/client/test_fastcalls.py and test_fastsocket.py hold each to the same answers and stored points
 * as the Python methods).
 *
 * Built when a compiler is at hand (an optional extension: pyproject.toml); without it the ring
 * takes the Python path for every row (tests/client/test_fastrow.py holds the two to the same
 * records).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <limits.h>
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

/* A frame of the ring (RingLog._admit): [frame id, framing, last write number, last step, keys, held, solo],
 * indexed as the Python path's list is, its numbers kept in one struct. The C path reads and stores them
 * without boxing: a frame the call did not touch for a while costs one cold line, not six objects'. */
typedef struct {
    PyObject_HEAD
    PyObject *framing; /* f[1]: (struct, record size, ...) from RingRows.frame */
    long long fid, seq, step, nkeys, held, solo; /* f[0], f[2], f[3], f[4], f[5], f[6] */
    long long size; /* framing[1] where it is an int, else -1 (the C path then leaves the frame alone) */
} Frame;

#define FRAME_LEN 7

static long long
framing_size(PyObject *framing)
{
    if (!PyTuple_CheckExact(framing) || PyTuple_GET_SIZE(framing) != 3 ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(framing, 1)))
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
    case 6: return &f->solo;
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
        PyErr_SetString(PyExc_TypeError, "Frame(fid, framing, seq, step, nkeys, held, solo)");
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
    return PyUnicode_FromFormat("Frame(%lld, %R, %lld, %lld, %lld, %lld, %lld)", f->fid, f->framing, f->seq, f->step,
                                f->nkeys, f->held, f->solo);
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
    .tp_doc = "Frame(fid, framing, seq, step, nkeys, held, solo): a ring frame, indexed as RingLog's list.",
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

/* The frame `f`'s row of `data` (a dict of n values, or NULL and `one` the frame's one value) at `step` into the
 * ring; 1: written, 0: the Python path takes the call (nothing changed), -1: an exception. Every object it
 * stores is made before the record is written, so that a failure cannot leave a record published with the
 * writer's position behind it. A `step` of None (a call without one) is the step after the frame's last row,
 * where that row is its keys' last write: the frame solo (none of its keys in another), not held (no write over
 * the socket since), with a row; as RingLog.route numbers it. Any other frame: the Python path numbers it. */
static int
write_row(Rows *self, Frame *f, PyObject *data, PyObject *one, Py_ssize_t n, PyObject *step_o)
{
    long long step;
    if (step_o == Py_None)
        step = f->solo == 1 && f->seq >= 0 && f->step >= 0 && f->step < LLONG_MAX ? f->step + 1 : -1;
    else if ((step = PyLong_AsLongLong(step_o)) == -1 && PyErr_Occurred()) { /* past a long long: Python says */
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
    double x;
    if (data == NULL) {
        if (n != 1 || !as_double(one, self->plain, &x))
            goto done;
        memcpy(rec + HEAD_BYTES, &x, 8);
        i = 1;
    }
    while (data != NULL && PyDict_Next(data, &it, &k, &v)) {
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

/* write_row's answer, after the work of a mark: every MARK_MASK + 1 rows (2), the count of committed points
 * (RingLog.confirmed) and the ring's fill (RingLog._look_at_fill), as the Python path does them. */
static int
marked(Rows *self, int rc)
{
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

/* 1: the row is written; 0: the Python path takes the call (nothing changed); -1: an exception. A `step_o` of
 * None: a call without a step (write_row). */
static int
fast_row(Rows *self, PyObject *data, PyObject *step_o)
{
    PyObject *on = PyDict_GetItemWithError(self->log, s_on);
    if (on != Py_True || !PyDict_CheckExact(data) || (step_o != Py_None && !PyLong_CheckExact(step_o)))
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
    int rc = write_row(self, (Frame *)f, data, NULL, n, step_o);
    Py_DECREF(f);
    return marked(self, rc);
}

/* The row of one key's `value` (RingLog.row({key: value}, step), as Run._append calls it), without the dict:
 * the key's frame found in the one-key index (a frame not there yet goes to the Python path, which puts it
 * there through fast_row). 1, 0, -1 as fast_row. */
static int
fast_one(Rows *self, PyObject *key, PyObject *value, PyObject *step_o)
{
    PyObject *on = PyDict_GetItemWithError(self->log, s_on);
    if (on != Py_True || !PyUnicode_CheckExact(key) || (step_o != Py_None && !PyLong_CheckExact(step_o)))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *f = PyDict_GetItemWithError(self->scalars, key);
    if (f == NULL || Py_TYPE(f) != &FrameType)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(f);
    int rc = write_row(self, (Frame *)f, NULL, value, 1, step_o);
    Py_DECREF(f);
    return marked(self, rc);
}

static PyObject *
rows_row(Rows *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "row() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    int done = args[1] == Py_None ? 0 : fast_row(self, args[0], args[1]); /* RingLog.row takes a step */
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

/* Run.log (coordinator/client/run.py) for the call a Rows takes, without the interpreter: data an exact dict,
 * step an exact int or None (write_row numbers a call without one), no policy, the run's ring the one this was
 * made for, the buffer's lock free, the run open.
 * As APPEND, Run._append (key, value, step: Handle.append's call) for the same case, without the dict.
 * It takes the lock as the Python method's `with` would (acquire without blocking: a thread holding it sends the
 * call to the Python method, which waits), checks `_closed` under it, and calls the Rows' row directly. A run
 * without a ring, or whose ring is not read (socket_free), has the same calls' common case on the socket path
 * taken here too: into the buffer (socket_one, socket_row). Every other call, and a row the Rows hands back (a new
 * or held frame, a claim, a full ring...), goes to the Python method, given as `fallback`, from the start:
 * nothing is changed before it runs. */
enum { LOG, APPEND };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int call;           /* which method it stands for: LOG or APPEND */
    PyObject *run;      /* the Run's __dict__ */
    PyObject *ring;     /* its RingLog, as Run._ring held it when this was made */
    Rows *rows;         /* that RingLog's Rows; NULL: the run has no ring */
    PyObject *acquire;  /* the buffer lock's bound acquire and release */
    PyObject *release;
    PyObject *fallback; /* the method, bound: the Python path */
    PyObject *buf;      /* the run's Buffer's __dict__: the socket path's columns and frames */
    PyObject *plain;    /* tuple of the value types a column takes besides float, int and bool */
} Log;

static PyObject *s_ring, *s_closed, *s_step, *s_policy, *s_acquire, *s_release;
static PyObject *s_cols, *s_bframes, *s_pending, *s_mark, *s_owned, *s_values, *s_steps;
static PyObject *array_append, *array_fromlist, *minus_one; /* array.array's methods (unbound), the int -1 */

static int
log_traverse(Log *self, visitproc visit, void *arg)
{
    Py_VISIT(self->run);
    Py_VISIT(self->ring);
    Py_VISIT(self->rows);
    Py_VISIT(self->acquire);
    Py_VISIT(self->release);
    Py_VISIT(self->fallback);
    Py_VISIT(self->buf);
    Py_VISIT(self->plain);
    return 0;
}

static int
log_clear(Log *self)
{
    Py_CLEAR(self->run);
    Py_CLEAR(self->ring);
    Py_CLEAR(self->rows);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->release);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->buf);
    Py_CLEAR(self->plain);
    return 0;
}

static void
log_dealloc(Log *self)
{
    PyObject_GC_UnTrack(self);
    log_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The step of a Run.log or Handle.append call (both (x, step=None, *, policy=None)), from its arguments: an exact
 * int, or None (no step); 0: a call the C path does not take (a policy...: the Python one answers it, a bad
 * argument included). */
static int
call_step(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **step)
{
    if (nargs < 1 || nargs > 2)
        return 0;
    *step = nargs == 2 ? args[1] : Py_None;
    Py_ssize_t nk = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
        if (name == s_step && nargs == 1)
            *step = v;
        else if (name != s_policy || v != Py_None) /* names are interned: another spelling takes the Python path */
            return 0;
    }
    return *step == Py_None || PyLong_CheckExact(*step);
}

/* The socket path (Run.log's per-key loop and hotpath.log_frame, for the run's buffer that its sender thread cuts
 * and sends) for the calls its Python takes without a branch: the run has no ring, or one that is not read
 * (RingLog.on false: a rank on another machine than the aggregator, or before the WELCOME) and owns no key, so
 * that RingLog.row and RingLog.route hand the call on unchanged; the buffer below its mark (past it the Python
 * path may wake the sender or wait for room); a scalar into its key's column, or a dict of two keys or more into
 * its key tuple's frame of this generation, each already made (the Python path makes them: a new key is
 * validated there), every value one a column takes as it is (no tensor: its read is deferred in Python).
 * 1: appended, 0: the Python path takes the call (nothing changed), -1: an exception. */
static int
socket_free(Log *self)
{
    if (self->rows == NULL)
        return 1;
    PyObject *on = PyDict_GetItemWithError(self->rows->log, s_on);
    PyObject *owned = on == Py_False ? PyDict_GetItemWithError(self->rows->log, s_owned) : NULL;
    return owned != NULL && PyDict_CheckExact(owned) && PyDict_GET_SIZE(owned) == 0;
}

/* The buffer's pending points if it has room for `n` more before its mark, else -1. */
static long long
below_mark(Log *self)
{
    long long pending, mark;
    if (!get_ll(self->buf, s_pending, &pending) || !get_ll(self->buf, s_mark, &mark) || pending >= mark)
        return -1;
    return pending;
}

/* The step as a column stores it (-1: none, the sender numbers it), or NULL (a borrowed reference): one the
 * Python path checks (below 0, past int64). */
static PyObject *
column_step(PyObject *step_o)
{
    if (step_o == Py_None)
        return minus_one;
    int overflow;
    long long step = PyLong_AsLongLongAndOverflow(step_o, &overflow);
    if (overflow || step < 0) {
        PyErr_Clear();
        return NULL;
    }
    return step_o;
}

static int
counted(Log *self, long long pending, Py_ssize_t n)
{
    PyObject *v = PyLong_FromLongLong(pending + n);
    if (v == NULL)
        return -1;
    int rc = PyDict_SetItem(self->buf, s_pending, v);
    Py_DECREF(v);
    return rc < 0 ? -1 : 1;
}

static int
socket_one(Log *self, PyObject *key, PyObject *value, PyObject *step_o)
{
    double x;
    PyObject *step = column_step(step_o);
    long long pending = below_mark(self);
    if (step == NULL || pending < 0 || !PyUnicode_CheckExact(key) || !as_double(value, self->plain, &x))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *cols = PyDict_GetItemWithError(self->buf, s_cols);
    PyObject *c = cols != NULL && PyDict_CheckExact(cols) ? PyDict_GetItemWithError(cols, key) : NULL;
    if (c == NULL || !PyTuple_CheckExact(c) || PyTuple_GET_SIZE(c) != 2)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(c);
    PyObject *values = PyTuple_GET_ITEM(c, 1);
    PyObject *args[2] = {values, value};
    PyObject *r = PyObject_Vectorcall(array_append, args, 2, NULL);
    if (r != NULL) { /* as_double took the value: only a MemoryError is left, raised as the Python path would */
        Py_DECREF(r);
        args[0] = PyTuple_GET_ITEM(c, 0);
        args[1] = step;
        r = PyObject_Vectorcall(array_append, args, 2, NULL);
        if (r == NULL) /* the value goes too: the point whole or not at all */
            PySequence_DelItem(values, PySequence_Size(values) - 1);
    }
    Py_DECREF(c);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return counted(self, pending, 1);
}

static int
socket_row(Log *self, PyObject *data, PyObject *step_o)
{
    Py_ssize_t n = PyDict_GET_SIZE(data), i = 0, j = 0;
    PyObject *key, *value;
    if (n == 1 && PyDict_Next(data, &i, &key, &value))
        return socket_one(self, key, value, step_o);
    PyObject *step = column_step(step_o);
    long long pending = below_mark(self);
    if (n == 0 || step == NULL || pending < 0)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *frames = PyDict_GetItemWithError(self->buf, s_bframes);
    if (frames == NULL || !PyDict_CheckExact(frames))
        return PyErr_Occurred() ? -1 : 0;
    PyObject *kt = PyTuple_New(n);
    if (kt == NULL)
        return -1;
    double x;
    int ok = 1;
    while (PyDict_Next(data, &i, &key, &value)) {
        ok &= as_double(value, self->plain, &x);
        PyTuple_SET_ITEM(kt, j++, Py_NewRef(key));
    }
    PyObject *fr = ok ? PyDict_GetItemWithError(frames, kt) : NULL;
    Py_DECREF(kt);
    PyObject *values = fr == NULL ? NULL : PyObject_GetAttr(fr, s_values);
    PyObject *steps = values == NULL ? NULL : PyObject_GetAttr(fr, s_steps);
    if (steps == NULL) {
        Py_XDECREF(values);
        if (fr == NULL)
            return PyErr_Occurred() ? -1 : 0;
        return -1;
    }
    Py_ssize_t had = PySequence_Size(values);
    PyObject *row = had < 0 ? NULL : PyDict_Values(data);
    PyObject *args[2] = {values, row};
    PyObject *r = row == NULL ? NULL : PyObject_Vectorcall(array_fromlist, args, 2, NULL);
    Py_XDECREF(row);
    if (r != NULL) {
        Py_DECREF(r);
        args[0] = steps;
        args[1] = step;
        r = PyObject_Vectorcall(array_append, args, 2, NULL);
        if (r == NULL)
            PySequence_DelSlice(values, had, PY_SSIZE_T_MAX); /* the row whole or not at all */
    }
    Py_DECREF(values);
    Py_DECREF(steps);
    if (r == NULL)
        return -1; /* the values were checked: a MemoryError, raised as the Python path would */
    Py_DECREF(r);
    return counted(self, pending, n);
}

/* 1: logged; 0: the Python path takes the call (nothing changed); -1: an exception. With `key` (Run._append's
 * call), `data` is its one value. */
static int
fast_log(Log *self, PyObject *key, PyObject *data, PyObject *step)
{
    PyObject *ring = PyDict_GetItemWithError(self->run, s_ring);
    if (ring != self->ring)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *no = Py_False;
    PyObject *got = PyObject_Vectorcall(self->acquire, &no, 1, NULL);
    if (got == NULL)
        return -1;
    Py_DECREF(got);
    if (got != Py_True)
        return 0; /* held by another thread: the Python path waits for it */
    PyObject *closed = PyDict_GetItemWithError(self->run, s_closed);
    int rc = closed != Py_False  ? (PyErr_Occurred() ? -1 : 0)
             : self->rows == NULL ? 0
             : key != NULL        ? fast_one(self->rows, key, data, step)
                                  : fast_row(self->rows, data, step);
    if (rc == 0 && !PyErr_Occurred() && closed == Py_False && (rc = socket_free(self)) == 1)
        rc = key != NULL ? socket_one(self, key, data, step) : socket_row(self, data, step);
    else if (rc == 0 && PyErr_Occurred())
        rc = -1;
    PyObject *exc_type, *exc, *tb;
    PyErr_Fetch(&exc_type, &exc, &tb); /* the row's error, if any, survives the release */
    PyObject *r = PyObject_CallNoArgs(self->release);
    if (r == NULL) {
        Py_XDECREF(exc_type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return -1;
    }
    Py_DECREF(r);
    PyErr_Restore(exc_type, exc, tb);
    return rc;
}

static PyObject *
log_call(Log *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *step;
    if (self->run == NULL || self->fallback == NULL) {
        PyErr_SetString(PyExc_TypeError, "Log() was not initialised");
        return NULL;
    }
    int done = 0;
    if (self->call == APPEND) {
        if (nargs == 3 && kwnames == NULL)
            done = fast_log(self, args[0], args[1], args[2]);
    }
    else if (call_step(args, nargs, kwnames, &step) && PyDict_CheckExact(args[0]))
        done = fast_log(self, NULL, args[0], step);
    if (done < 0)
        return NULL;
    if (done)
        Py_RETURN_NONE;
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static int
log_init(Log *self, PyObject *args, PyObject *Py_UNUSED(kwds))
{
    PyObject *run, *ring, *rows, *lock, *fallback, *buf, *plain;
    int one;
    if (!PyArg_ParseTuple(args, "OOOOOpOO!:Log", &run, &ring, &rows, &lock, &fallback, &one, &buf, &PyTuple_Type,
                          &plain))
        return -1;
    if (rows != Py_None && Py_TYPE(rows) != &RowsType) {
        PyErr_SetString(PyExc_TypeError, "Log(): rows must be a Rows or None");
        return -1;
    }
    PyObject *bd = PyObject_GenericGetDict(buf, NULL);
    if (bd == NULL)
        return -1;
    PyObject *rd = PyObject_GenericGetDict(run, NULL);
    if (rd == NULL) {
        Py_DECREF(bd);
        return -1;
    }
    PyObject *acquire = PyObject_GetAttr(lock, s_acquire);
    PyObject *release = acquire == NULL ? NULL : PyObject_GetAttr(lock, s_release);
    if (release == NULL) {
        Py_DECREF(rd);
        Py_DECREF(bd);
        Py_XDECREF(acquire);
        return -1;
    }
    Py_XSETREF(self->run, rd);
    Py_XSETREF(self->ring, Py_NewRef(ring));
    Py_XSETREF(self->rows, rows == Py_None ? NULL : (Rows *)Py_NewRef(rows));
    Py_XSETREF(self->buf, bd);
    Py_XSETREF(self->plain, Py_NewRef(plain));
    Py_XSETREF(self->acquire, acquire);
    Py_XSETREF(self->release, release);
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    self->call = one ? APPEND : LOG;
    return 0;
}

static PyObject *
log_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Log *self = (Log *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)log_call; /* not yet initialised: it raises TypeError */
    return (PyObject *)self;
}

/* What inspect and help() read: the Python method's signature and text (inspect follows __wrapped__). */
static PyObject *
log_wrapped(Log *self, void *Py_UNUSED(closure))
{
    if (self->fallback == NULL) {
        PyErr_SetString(PyExc_AttributeError, "__wrapped__");
        return NULL;
    }
    return Py_NewRef(self->fallback);
}

static PyObject *
log_doc(Log *self, void *Py_UNUSED(closure))
{
    if (self->fallback == NULL)
        Py_RETURN_NONE;
    return PyObject_GetAttrString(self->fallback, "__doc__");
}

static PyGetSetDef log_getset[] = {
    {"__wrapped__", (getter)log_wrapped, NULL, "The method it stands for, bound: the Python path.", NULL},
    {"__doc__", (getter)log_doc, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LogType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "coordinator.client._fastrow.Log",
    .tp_basicsize = sizeof(Log),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = log_new,
    .tp_init = (initproc)log_init,
    .tp_dealloc = (destructor)log_dealloc,
    .tp_traverse = (traverseproc)log_traverse,
    .tp_clear = (inquiry)log_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Log, vectorcall),
    .tp_getset = log_getset,
};

/* A method whose common case is one C call, standing in its class for the Python function it is made of (rowpath's
 * c_method decorator): a method descriptor (called with the instance first; read from an instance, bound), which
 * hands every call it does not take to that function, untouched.
 *   ITEM, Run.__getitem__: the handle of a path already asked for (run._handles[path]), without the frame.
 *   HANDLE_APPEND, Handle.append: the ring's common case through its run's Log of Run._append (an exact int step
 *   or none, no policy, a value that is not a str, which is a text's); a run without that Log: the function. */
enum { ITEM, HANDLE_APPEND };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    int kind;           /* ITEM or HANDLE_APPEND */
    PyObject *func;     /* the Python function: every other call */
    PyObject *cls;      /* HANDLE_APPEND: the class whose slots _run and _path are at these offsets; NULL until */
    Py_ssize_t run_at;  /* the first call */
    Py_ssize_t path_at;
} Method;

static PyObject *s_handles, *s_run_attr, *s_path_attr, *s_append_attr;

/* The handle `run` made for `path` (a new reference), or NULL: not made yet, or not a Run as this reads one (the
 * function answers; an error only from a key's own __eq__). */
static PyObject *
known_handle(PyObject *run, PyObject *path)
{
    if (!PyUnicode_CheckExact(path))
        return NULL;
    PyObject *d = PyObject_GenericGetDict(run, NULL);
    if (d == NULL) {
        PyErr_Clear(); /* no __dict__: the function says what is wrong */
        return NULL;
    }
    PyObject *handles = PyDict_GetItemWithError(d, s_handles);
    PyObject *h = handles != NULL && PyDict_CheckExact(handles) ? PyDict_GetItemWithError(handles, path) : NULL;
    Py_XINCREF(h);
    Py_DECREF(d);
    return h;
}

/* The offset of `cls`'s object slot `name` (a member descriptor of __slots__), or -1. */
static Py_ssize_t
slot_at(PyTypeObject *cls, PyObject *name)
{
    PyObject *d = _PyType_Lookup(cls, name);
    if (d == NULL || Py_TYPE(d) != &PyMemberDescr_Type)
        return -1;
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    return m->type == T_OBJECT_EX ? m->offset : -1;
}

/* Handle.append's common case for `handle` (its slots _run and _path), through the run's Log of Run._append: 1, 0
 * (the function takes the call), -1 as fast_log. */
static int
handle_append(Method *self, PyObject *handle, PyObject *value, PyObject *step)
{
    PyTypeObject *cls = Py_TYPE(handle);
    if (self->cls != (PyObject *)cls) { /* the first call, or another class: where its slots are */
        Py_ssize_t run_at = slot_at(cls, s_run_attr), path_at = slot_at(cls, s_path_attr);
        if (run_at < 0 || path_at < 0)
            return 0; /* not a Handle as this reads one: the function says what is wrong */
        self->run_at = run_at; /* before the class: the old one's release may run another thread's call */
        self->path_at = path_at;
        Py_XSETREF(self->cls, Py_NewRef(cls));
    }
    PyObject *run = *(PyObject **)((char *)handle + self->run_at);
    PyObject *path = *(PyObject **)((char *)handle + self->path_at);
    if (run == NULL || path == NULL || !PyUnicode_CheckExact(path))
        return 0;
    PyObject *d = PyObject_GenericGetDict(run, NULL);
    if (d == NULL) {
        PyErr_Clear(); /* a run without a __dict__: the function says what is wrong */
        return 0;
    }
    PyObject *log = PyDict_GetItemWithError(d, s_append_attr);
    int rc = PyErr_Occurred() ? -1 : 0;
    if (log != NULL && Py_TYPE(log) == &LogType && ((Log *)log)->call == APPEND) {
        Py_INCREF(log); /* held, as is the path: the mark inside runs Python code */
        Py_INCREF(path);
        rc = fast_log((Log *)log, path, value, step);
        Py_DECREF(path);
        Py_DECREF(log);
    }
    Py_DECREF(d);
    return rc;
}

static PyObject *
method_call(Method *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->func == NULL) {
        PyErr_SetString(PyExc_TypeError, "Method() was not initialised");
        return NULL;
    }
    if (self->kind == ITEM && nargs == 2 && kwnames == NULL) {
        PyObject *h = known_handle(args[0], args[1]);
        if (h != NULL || PyErr_Occurred())
            return h;
    }
    else if (self->kind == HANDLE_APPEND && nargs >= 2) {
        PyObject *step;
        if (call_step(args + 1, nargs - 1, kwnames, &step) && !PyUnicode_CheckExact(args[1])) {
            int done = handle_append(self, args[0], args[1], step);
            if (done < 0)
                return NULL;
            if (done)
                Py_RETURN_NONE;
        }
    }
    return PyObject_Vectorcall(self->func, args, nargsf, kwnames);
}

static int
method_init(Method *self, PyObject *args, PyObject *Py_UNUSED(kwds))
{
    const char *kind;
    PyObject *func;
    if (!PyArg_ParseTuple(args, "sO:Method", &kind, &func))
        return -1;
    if (strcmp(kind, "item") != 0 && strcmp(kind, "append") != 0) {
        PyErr_Format(PyExc_ValueError, "Method kind %s: not 'item' or 'append'", kind);
        return -1;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "Method() takes a function");
        return -1;
    }
    self->kind = strcmp(kind, "item") == 0 ? ITEM : HANDLE_APPEND;
    Py_XSETREF(self->func, Py_NewRef(func));
    return 0;
}

static PyObject *
method_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Method *self = (Method *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->vectorcall = (vectorcallfunc)method_call;
    return (PyObject *)self;
}

static int
method_traverse(Method *self, visitproc visit, void *arg)
{
    Py_VISIT(self->func);
    Py_VISIT(self->cls);
    return 0;
}

static int
method_clear(Method *self)
{
    Py_CLEAR(self->func);
    Py_CLEAR(self->cls);
    return 0;
}

static void
method_dealloc(Method *self)
{
    PyObject_GC_UnTrack(self);
    method_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Read from an instance: bound to it, as a function would be. */
static PyObject *
method_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* The function's own name, text and signature (inspect follows __wrapped__), for help() and documentation. */
static PyObject *
method_attr(Method *self, void *closure)
{
    if (self->func == NULL) {
        PyErr_SetString(PyExc_AttributeError, (const char *)closure);
        return NULL;
    }
    const char *name = closure;
    return strcmp(name, "__wrapped__") == 0 ? Py_NewRef(self->func) : PyObject_GetAttrString(self->func, name);
}

static PyGetSetDef method_getset[] = {
    {"__wrapped__", (getter)method_attr, NULL, "The Python function: every call this does not take.", "__wrapped__"},
    {"__doc__", (getter)method_attr, NULL, NULL, "__doc__"},
    {"__name__", (getter)method_attr, NULL, NULL, "__name__"},
    {"__qualname__", (getter)method_attr, NULL, NULL, "__qualname__"},
    {"__module__", (getter)method_attr, NULL, NULL, "__module__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MethodType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "coordinator.client._fastrow.Method",
    .tp_basicsize = sizeof(Method),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = method_new,
    .tp_init = (initproc)method_init,
    .tp_dealloc = (destructor)method_dealloc,
    .tp_traverse = (traverseproc)method_traverse,
    .tp_clear = (inquiry)method_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Method, vectorcall),
    .tp_descr_get = method_get,
    .tp_getset = method_getset,
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
        {&s_look, "_look_at_fill"}, {&s_ring, "_ring"}, {&s_closed, "_closed"}, {&s_step, "step"},
        {&s_policy, "policy"}, {&s_acquire, "acquire"}, {&s_release, "release"}, {&s_handles, "_handles"},
        {&s_run_attr, "_run"}, {&s_path_attr, "_path"}, {&s_append_attr, "_append"}, {&s_cols, "cols"},
        {&s_bframes, "frames"}, {&s_pending, "pending"}, {&s_mark, "mark"}, {&s_owned, "owned"},
        {&s_values, "values"}, {&s_steps, "steps"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].name)) == NULL)
            return NULL;
    PyObject *array = PyImport_ImportModule("array");
    PyObject *cls = array == NULL ? NULL : PyObject_GetAttrString(array, "array");
    Py_XDECREF(array);
    if (cls == NULL)
        return NULL;
    array_append = PyObject_GetAttrString(cls, "append");
    array_fromlist = PyObject_GetAttrString(cls, "fromlist");
    Py_DECREF(cls);
    if (array_append == NULL || array_fromlist == NULL || (minus_one = PyLong_FromLong(-1)) == NULL)
        return NULL;
    if (PyType_Ready(&RowsType) < 0 || PyType_Ready(&FrameType) < 0 || PyType_Ready(&LogType) < 0 ||
        PyType_Ready(&MethodType) < 0)
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
    Py_INCREF(&LogType);
    if (PyModule_AddObject(m, "Log", (PyObject *)&LogType) < 0) {
        Py_DECREF(&LogType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MethodType);
    if (PyModule_AddObject(m, "Method", (PyObject *)&MethodType) < 0) {
        Py_DECREF(&MethodType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
