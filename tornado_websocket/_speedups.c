/* Optional C speedups for tornado_websocket.
 *
 * mask(key, data) -> bytes: XOR any C-contiguous buffer with a 4-byte key
 * (RFC 6455 section 5.3) into a new bytes object, in one pass. Unlike
 * tornado.speedups.websocket_mask it takes bytearray and memoryview too, so
 * a payload is unmasked straight out of a receive buffer without first
 * being copied into bytes. tornado_websocket/frames.py falls back to
 * Tornado's routine, then to pure Python, when this module is not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *
speedups_mask(PyObject *self, PyObject *args)
{
    Py_buffer key, data;
    PyObject *out = NULL;

    if (!PyArg_ParseTuple(args, "y*y*:mask", &key, &data)) {
        return NULL;
    }
    if (key.len != 4) {
        PyErr_SetString(PyExc_ValueError, "the masking key must be 4 bytes");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, data.len);
    if (out == NULL) {
        goto done;
    }
    {
        const unsigned char *src = (const unsigned char *)data.buf;
        const unsigned char *k = (const unsigned char *)key.buf;
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
        Py_ssize_t n = data.len;
        Py_ssize_t i = 0;
        uint32_t k32;
        uint64_t k64;

        memcpy(&k32, k, 4);
        k64 = ((uint64_t)k32 << 32) | k32; /* byte order does not matter: the key repeats every 4 bytes */
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, src + i, 8);
            v ^= k64;
            memcpy(dst + i, &v, 8);
        }
        for (; i < n; i++) {
            dst[i] = src[i] ^ k[i & 3];
        }
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef speedups_methods[] = {
    {"mask", speedups_mask, METH_VARARGS,
     "mask(key, data) -> bytes: XOR data (any contiguous buffer) with the 4-byte key repeated."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "tornado_websocket._speedups", NULL, -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
