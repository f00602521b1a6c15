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
 * parse_messages(buf, pos, masked, limit, message_cls, events): the
 * protocol's fast path for whole, final, uncompressed text and binary frames
 * under 64 KiB (see below); anything else is left to the Python parser.
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

/* dst[i] = src[i] ^ key[i % 4] for i < n (dst and src may be the same). */
static void
xor_with_key(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char *k)
{
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
    xor_with_key((unsigned char *)PyBytes_AS_STRING(out), (const unsigned char *)data.buf, data.len,
                 (const unsigned char *)key.buf);
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


/* parse_messages(buf, pos, masked, limit, message_cls, events) -> (pos, count, payload_bytes)
 *
 * The protocol's fast path for whole messages: from pos on, take every
 * complete frame that is final, text or binary, with the RSV bits clear,
 * the mask bit equal to `masked`, and a payload of at most `limit` bytes
 * (-1: no limit) and under 64 KiB; append message_cls(payload) (binary) or
 * message_cls(text, payload) (text, strictly valid UTF-8) to events.
 * Stops at the first frame that is anything else, is incomplete, or is not
 * valid UTF-8, and leaves it to the caller's general parser, which then
 * accepts it or raises exactly as it would have. Returns where it stopped,
 * how many messages it took and their payload bytes.
 */
static PyObject *
speedups_parse_messages(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t pos, limit;
    int masked;
    PyObject *message_cls, *events;
    Py_ssize_t count = 0, payload_bytes = 0;
    int failed = 0;

    if (!PyArg_ParseTuple(args, "y*npnOO!:parse_messages", &buf, &pos, &masked, &limit, &message_cls, &PyList_Type,
                          &events)) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)buf.buf;
    Py_ssize_t end = buf.len;
    if (pos < 0 || pos > end) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        return NULL;
    }
    while (end - pos >= 2) {
        unsigned char b0 = data[pos], b1 = data[pos + 1];
        unsigned char opcode = b0 & 0x0F;
        Py_ssize_t length = b1 & 0x7F, start = pos + 2;
        if ((b0 & 0xF0) != 0x80 || (opcode != 0x1 && opcode != 0x2) || ((b1 & 0x80) != 0) != (masked != 0)) {
            break; /* not final, RSV bits, another opcode, or the wrong mask bit: the general parser decides */
        }
        if (length == 127) {
            break; /* 64 KiB or more */
        }
        if (length == 126) {
            if (end - pos < 4) {
                break;
            }
            length = ((Py_ssize_t)data[pos + 2] << 8) | data[pos + 3];
            start = pos + 4;
        }
        if (limit >= 0 && length > limit) {
            break;
        }
        const unsigned char *key = NULL;
        if (masked) {
            if (end - start < 4) {
                break;
            }
            key = data + start;
            start += 4;
        }
        if (end - start < length) {
            break; /* incomplete */
        }
        PyObject *payload = PyBytes_FromStringAndSize(NULL, length);
        if (payload == NULL) {
            failed = 1;
            break;
        }
        if (key != NULL) {
            xor_with_key((unsigned char *)PyBytes_AS_STRING(payload), data + start, length, key);
        } else if (length) {
            memcpy(PyBytes_AS_STRING(payload), data + start, (size_t)length);
        }
        PyObject *message;
        if (opcode == 0x1) {
            PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), length, NULL);
            if (text == NULL) {
                Py_DECREF(payload);
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    failed = 1;
                    break;
                }
                PyErr_Clear(); /* the general parser raises the protocol error for it */
                break;
            }
            message = PyObject_CallFunctionObjArgs(message_cls, text, payload, NULL);
            Py_DECREF(text);
        } else {
            message = PyObject_CallOneArg(message_cls, payload);
        }
        Py_DECREF(payload);
        if (message == NULL) {
            failed = 1;
            break;
        }
        int appended = PyList_Append(events, message);
        Py_DECREF(message);
        if (appended < 0) {
            failed = 1;
            break;
        }
        pos = start + length;
        count += 1;
        payload_bytes += length;
    }
    PyBuffer_Release(&buf);
    if (failed) {
        return NULL;
    }
    return Py_BuildValue("nnn", pos, count, payload_bytes);
}

static PyMethodDef speedups_methods[] = {
    {"mask", speedups_mask, METH_VARARGS,
     "mask(key, data) -> bytes: XOR data (any contiguous buffer) with the 4-byte key repeated."},
    {"send_frame_to_all", speedups_send_frame_to_all, METH_VARARGS,
     "send_frame_to_all(fds, frame) -> [(index, sent)]: send frame to every fd; those that did not take it all."},
    {"parse_messages", speedups_parse_messages, METH_VARARGS,
     "parse_messages(buf, pos, masked, limit, message_cls, events) -> (pos, count, payload_bytes): whole messages."},
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
