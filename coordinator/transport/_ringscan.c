/* RingReader.span_table's walk over a ring's records (coordinator/transport/ring.py) in one C call.
 *
 * A ring holds records one after the other, each u32 length | u32 tag | body padded to 8 | u32 tag |
 * u32 length, a record that would cross the data area's end put at its start after a skip mark.
 * Finding where each record starts is a walk: a record's length says where the next one is. In
 * Python that walk costs ~1.2 µs a record, which calls of alternating kinds (a dict, then an
 * append(), at every step: a record of another size each time) pay for every row they log.
 *
 * scan() takes the records that read whole, exactly as RingReader.spans's Python loop checks them,
 * and stops at the first one that does not (a tag or length that disagrees, a record past what was
 * written): it decides nothing about that record, which the Python loop then reads again and calls
 * late (not visible yet) or damaged. Built when a compiler is at hand (an optional extension:
 * pyproject.toml); without it, or with COORDINATOR_PUREPYTHON=1, the Python loop walks every record
 * (tests/transport/test_ringscan.py holds the two to the same spans).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_BYTES 256     /* ring.HEADER_BYTES */
#define SKIP 0xFFFFFFFFu     /* ring.SKIP */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ring is little-endian: a big-endian build fails, and the install goes on with the Python loop"
#endif

static uint32_t
u32_at(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* scan(map, cursor, written, capacity) -> (position reached, bytes of int64 triples: body length, first position,
 * count), each triple a run of records of one body length that read whole, from cursor up to written. */
static PyObject *
scan(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *map;
    unsigned long long cursor, written, capacity;
    if (!PyArg_ParseTuple(args, "OKKK", &map, &cursor, &written, &capacity))
        return NULL;
    if (capacity < 4096 || (capacity & (capacity - 1)) || (cursor & 7) || cursor > written) {
        PyErr_SetString(PyExc_ValueError, "scan: capacity not a power of two from 4096, or cursor past written");
        return NULL;
    }
    Py_buffer b;
    if (PyObject_GetBuffer(map, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((unsigned long long)b.len < HEADER_BYTES + capacity) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "scan: the map is shorter than the ring's header and data area");
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)b.buf + HEADER_BYTES;
    const unsigned long long mask = capacity - 1;
    Py_ssize_t cap = 64, used = 0;
    int64_t *out = PyMem_RawMalloc((size_t)cap * 3 * sizeof(int64_t));
    if (out == NULL) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    unsigned long long pos = cursor;
    Py_BEGIN_ALLOW_THREADS
    while (pos < written) {
        unsigned long long offset = pos & mask;
        const unsigned char *at = data + offset;
        uint32_t n = u32_at(at), tag = (uint32_t)(pos >> 3);
        if (u32_at(at + 4) != tag)
            break;
        if (n == SKIP) {
            pos += capacity - offset;
            continue;
        }
        unsigned long long size = 16 + (((unsigned long long)n + 7) & ~7ULL);
        if (n > capacity / 4 || pos + size > written)
            break;
        unsigned long long room = written - pos < capacity - offset ? written - pos : capacity - offset;
        unsigned long long limit = room / size, count = 0;
        while (count < limit) {
            const unsigned char *r = at + count * size;
            uint32_t t = (uint32_t)((pos >> 3) + count * (size >> 3));
            if (u32_at(r) != n || u32_at(r + 4) != t || u32_at(r + size - 8) != t || u32_at(r + size - 4) != n)
                break;
            count++;
        }
        if (count == 0)
            break;
        if (used == cap) {
            int64_t *grown = PyMem_RawRealloc(out, (size_t)cap * 2 * 3 * sizeof(int64_t));
            if (grown == NULL)
                break; /* the spans so far are right: the caller's Python loop goes on from pos */
            out = grown;
            cap *= 2;
        }
        out[3 * used] = (int64_t)n;
        out[3 * used + 1] = (int64_t)pos;
        out[3 * used + 2] = (int64_t)count;
        used++;
        pos += count * size;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    PyObject *spans = PyBytes_FromStringAndSize((const char *)out, used * 3 * (Py_ssize_t)sizeof(int64_t));
    PyMem_RawFree(out);
    if (spans == NULL)
        return NULL;
    return Py_BuildValue("(KN)", pos, spans);
}

static PyMethodDef ringscan_methods[] = {
    {"scan", scan, METH_VARARGS, "Runs of whole records from cursor to written: (position reached, int64 triples)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ringscan_module = {
    PyModuleDef_HEAD_INIT, "coordinator.transport._ringscan", "A ring's records walked in C.", -1, ringscan_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__ringscan(void)
{
    return PyModule_Create(&ringscan_module);
}
