/* Optional C speedups for tornado_websocket.
 *
 * mask(key, data) -> bytes: XOR any C-contiguous buffer with a 4-byte key
 * (RFC 6455 section 5.3) into a new bytes object, in one pass. Unlike
 * tornado.speedups.websocket_mask it takes bytearray and memoryview too, so
 * a payload is unmasked straight out of a receive buffer without first
 * being copied into bytes. tornado_websocket/frames.py falls back to
 * Tornado's routine, then to pure Python, when this module is not built.
 *
 * send_frame_to_all(fds, frame) -> list: one send() of the same frame to
 * every file descriptor (non-blocking, no SIGPIPE), the broadcast fan-out
 * without a Python call per socket. Returns [(index, sent), ...] for the
 * sockets that did not take the whole frame (sent = bytes taken, or -errno);
 * the caller queues the rest through each connection's normal path.
 *
 * ssl_read_ahead(sslsocket) -> bool: turn on OpenSSL read-ahead for an
 * ssl.SSLSocket (one recv reads many TLS records instead of a header and a
 * body per record). False where it cannot be done safely (another OpenSSL
 * object layout, libssl not found): nothing changes then.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

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

static PyObject *
speedups_send_frame_to_all(PyObject *self, PyObject *args)
{
    PyObject *fds_arg, *fds = NULL, *short_list = NULL;
    Py_buffer frame;
    Py_ssize_t i, count;
    int *raw = NULL;
    ssize_t *result = NULL;

    if (!PyArg_ParseTuple(args, "Oy*:send_frame_to_all", &fds_arg, &frame)) {
        return NULL;
    }
    fds = PySequence_Fast(fds_arg, "fds must be a sequence of file descriptors");
    if (fds == NULL) {
        goto done;
    }
    count = PySequence_Fast_GET_SIZE(fds);
    raw = PyMem_Malloc(sizeof(int) * (size_t)(count ? count : 1));
    result = PyMem_Malloc(sizeof(ssize_t) * (size_t)(count ? count : 1));
    if (raw == NULL || result == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < count; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(fds, i));
        if (fd == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (fd < 0 || fd > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "a file descriptor is out of range");
            goto done;
        }
        raw[i] = (int)fd;
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < count; i++) {
        ssize_t n;
        do {
            n = send(raw[i], frame.buf, (size_t)frame.len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        result[i] = n < 0 ? (errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -(ssize_t)errno) : n;
    }
    Py_END_ALLOW_THREADS
    short_list = PyList_New(0);
    if (short_list == NULL) {
        goto done;
    }
    for (i = 0; i < count; i++) {
        if (result[i] != frame.len) {
            PyObject *item = Py_BuildValue("(nn)", i, (Py_ssize_t)result[i]);
            if (item == NULL || PyList_Append(short_list, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(short_list);
                goto done;
            }
            Py_DECREF(item);
        }
    }
done:
    PyMem_Free(raw);
    PyMem_Free(result);
    Py_XDECREF(fds);
    PyBuffer_Release(&frame);
    return short_list;
}

/* The OpenSSL object behind an ssl.SSLSocket: CPython's _ssl._SSLSocket starts with
 * PyObject_HEAD, a weak reference to the socket, the SSL pointer and the SSLContext object
 * (Modules/_ssl.c, unchanged from 3.7 to 3.14). The context field is compared with the
 * socket's .context before the SSL pointer is trusted. */
typedef struct {
    PyObject_HEAD
    PyObject *socket_ref;
    void *ssl;
    PyObject *context;
} ssl_object_head;

typedef void (*set_read_ahead_fn)(void *ssl, int yes);

static set_read_ahead_fn
find_set_read_ahead(void)
{
    static int looked = 0;
    static set_read_ahead_fn found = NULL;
    static const char *names[] = {"libssl.so.3", "libssl.so.1.1", "libssl.so", NULL};
    int i;

    if (looked) {
        return found;
    }
    looked = 1;
    for (i = 0; names[i] != NULL; i++) {
        /* RTLD_NOLOAD: only the libssl that the ssl module has loaded already. */
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
        if (lib != NULL) {
            found = (set_read_ahead_fn)dlsym(lib, "SSL_set_read_ahead");
            if (found != NULL) {
                break;
            }
        }
    }
    return found;
}

static PyObject *
speedups_ssl_read_ahead(PyObject *self, PyObject *sock)
{
    PyObject *sslobj, *context;
    set_read_ahead_fn set_read_ahead;
    int ok = 0;

    set_read_ahead = find_set_read_ahead();
    if (set_read_ahead == NULL) {
        Py_RETURN_FALSE;
    }
    sslobj = PyObject_GetAttrString(sock, "_sslobj");
    if (sslobj == NULL) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    context = PyObject_GetAttrString(sock, "context");
    if (context == NULL) {
        PyErr_Clear();
        Py_DECREF(sslobj);
        Py_RETURN_FALSE;
    }
    if (sslobj != Py_None && Py_TYPE(sslobj)->tp_basicsize >= (Py_ssize_t)sizeof(ssl_object_head)) {
        ssl_object_head *head = (ssl_object_head *)sslobj;
        if (head->context == context && head->ssl != NULL) {
            set_read_ahead(head->ssl, 1);
            ok = 1;
        }
    }
    Py_DECREF(context);
    Py_DECREF(sslobj);
    return PyBool_FromLong(ok);
}

static PyMethodDef speedups_methods[] = {
    {"mask", speedups_mask, METH_VARARGS,
     "mask(key, data) -> bytes: XOR data (any contiguous buffer) with the 4-byte key repeated."},
    {"send_frame_to_all", speedups_send_frame_to_all, METH_VARARGS,
     "send_frame_to_all(fds, frame) -> [(index, sent)]: send frame to every fd; those that did not take it all."},
    {"ssl_read_ahead", speedups_ssl_read_ahead, METH_O,
     "ssl_read_ahead(sslsocket) -> bool: turn on OpenSSL read-ahead for the socket, if it can be done."},
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
