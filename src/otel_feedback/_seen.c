/* Bloom filter insertion for store/seen.py: which of a batch's 64-bit key hashes may have been added before (and a
 * lookup that adds nothing).
 *
 * The compiled twin of seen._probe_python (same bit positions, same answer); see seen.py for the design.
 * Positions: h1 = h, h2 = splitmix64(h) | 1, x_i = (h1 + i * h2) mod 2^64, bit_i = (x_i * nbits) >> 64 for i < k.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

#define MAX_FILTERS 64

/* probe(args, insert): the body of add (insert 1) and contains (insert 0).
 * args: (filters: list of bytes-like, writable to insert; k: int; hashes: uint64 buffer) -> bytes: byte i is 1 where
 * hash i was already in some filter (all k of its bits set; with insert, also where it came earlier in this call).
 * With insert, each hash's bits are then set in the last filter. */
static PyObject *probe(PyObject *args, int insert, const char *name) {
    PyObject *filters;
    int k;
    Py_buffer hashes;
    if (!PyArg_ParseTuple(args, "O!iy*", &PyList_Type, &filters, &k, &hashes)) return NULL;
    Py_ssize_t nf = PyList_GET_SIZE(filters);
    PyObject *out = NULL;
    Py_buffer views[MAX_FILTERS];
    Py_ssize_t opened = 0;
    if (nf < 1 || nf > MAX_FILTERS || k < 1 || k > 32 || hashes.len % 8) {
        PyErr_Format(PyExc_ValueError, "%s: 1-64 filters, k in 1..32, hashes a whole number of uint64", name);
        goto done;
    }
    for (; opened < nf; opened++) {
        int flags = insert ? PyBUF_WRITABLE : PyBUF_SIMPLE;
        if (PyObject_GetBuffer(PyList_GET_ITEM(filters, opened), &views[opened], flags) < 0) goto done;
        if (views[opened].len < 8) {
            opened++;
            PyErr_Format(PyExc_ValueError, "%s: each filter must be at least 8 bytes", name);
            goto done;
        }
    }
    Py_ssize_t n = hashes.len / 8;
    out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) goto done;
    char *mask = PyBytes_AS_STRING(out);
    const uint64_t *h = (const uint64_t *)hashes.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t h1 = h[i], h2 = splitmix64(h1) | 1;
        int seen = 0;
        for (Py_ssize_t f = 0; f < nf && !seen; f++) {
            const uint8_t *bits = (const uint8_t *)views[f].buf;
            uint64_t m = (uint64_t)views[f].len * 8;
            int all = 1;
            for (int j = 0; j < k && all; j++) {
                uint64_t b = (uint64_t)(((unsigned __int128)(h1 + (uint64_t)j * h2) * m) >> 64);
                all = (bits[b >> 3] >> (b & 7)) & 1;
            }
            seen = all;
        }
        if (insert) {
            uint8_t *bits = (uint8_t *)views[nf - 1].buf;
            uint64_t m = (uint64_t)views[nf - 1].len * 8;
            for (int j = 0; j < k; j++) {
                uint64_t b = (uint64_t)(((unsigned __int128)(h1 + (uint64_t)j * h2) * m) >> 64);
                bits[b >> 3] |= (uint8_t)(1u << (b & 7));
            }
        }
        mask[i] = (char)seen;
    }
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t f = 0; f < opened; f++) PyBuffer_Release(&views[f]);
    PyBuffer_Release(&hashes);
    return out;
}

/* add(filters: list of bytearray (the last one takes the keys), k: int, hashes: uint64 buffer) -> bytes:
 * byte i is 1 where hash i was already in some filter (or earlier in this call): all k of its bits were set. */
static PyObject *add(PyObject *self, PyObject *args) { return probe(args, 1, "add"); }

/* contains(filters: list of bytes-like, k: int, hashes: uint64 buffer) -> bytes: byte i is 1 where hash i may have
 * been added (all k of its bits set in some filter); nothing is added. */
static PyObject *contains(PyObject *self, PyObject *args) { return probe(args, 0, "contains"); }

static PyMethodDef METHODS[] = {
    {"add", add, METH_VARARGS,
     "add(filters, k, hashes) -> bytes\n\n"
     "Add the uint64 hashes to the last Bloom filter; byte i of the answer is 1 where hash i may have been\n"
     "added before (to any filter, or earlier in this call)."},
    {"contains", contains, METH_VARARGS,
     "contains(filters, k, hashes) -> bytes\n\n"
     "Byte i of the answer is 1 where the uint64 hash i may have been added to any of the Bloom filters; adds\n"
     "nothing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_seen",
    .m_doc = "Compiled Bloom filter insertion and lookup (otel_feedback.store.seen).",
    .m_size = -1,
    .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__seen(void) { return PyModule_Create(&MODULE); }
