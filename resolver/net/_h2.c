/* The server side of HTTP/2 for DoH, on nghttp2 (the maintained C library unbound, curl and Apache use), sans-IO:
 * the session is fed the bytes TLS decrypted and gives back the bytes to encrypt, and never touches a socket.
 * Built by setup.py when libnghttp2's headers are present; resolver/net/doh.py falls back to the pure-Python `h2`
 * library when they are not.
 *
 * Why C: the pure-Python HTTP/2 stack (framing, HPACK, stream state) costs several times what the DNS work of a
 * request costs. Here nghttp2 does all of HTTP/2, including its checks of each request (pseudo-headers, header
 * names, content-length against the body), and Python sees one tuple per complete request: (stream id, method,
 * path, content type or None, body or None when the body grew past the limit). What a request means, and the
 * response it gets, stays in Python (resolver/net/dohmsg.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <nghttp2/nghttp2.h>
#include <string.h>
#include <time.h>

/* The stream resets on one connection, the client's and ours (nghttp2's own, for a malformed or refused stream,
 * and ours): a burst, then a steady rate, the bucket nghttp2 keeps for a client's resets from 1.57 on (and only
 * for those). Past it the connection ends with GOAWAY ENHANCE_YOUR_CALM: each stream we reset cost us its
 * HEADERS' decoding, which a client can make large (one big HPACK table entry referenced over and over) at no
 * cost to itself, and older nghttp2 releases stop neither kind. doh.py keeps the same bucket for the h2 library. */
#define RESET_BURST 1000.0
#define RESET_RATE 33.0

/* One request stream, from its HEADERS until nghttp2 closes it. */
typedef struct stream {
    struct stream *prev, *next; /* every live stream, so the session's end frees what nghttp2 does not report */
    int32_t id;
    PyObject *method, *path, *ctype; /* str, str, bytes; NULL until their header arrives */
    char *body;
    size_t len, cap;
    size_t header_bytes;
    size_t held;    /* what this stream takes of the connection's upload budget (Server.uploads) */
    int reported;   /* handed to Python: later DATA is ignored */
    int too_large;
    PyObject *out;  /* the response body being sent, and how much of it went */
    Py_ssize_t sent;
} stream;

typedef struct {
    PyObject_HEAD
    nghttp2_session *session;
    stream *streams;
    PyObject *ready;        /* complete requests since the last feed() */
    size_t max_body;
    size_t max_headers;
    size_t uploads, max_uploads; /* bytes held for requests still arriving (bodies, the headers kept), and the cap */
    int failed;             /* a Python allocation failed inside a callback */
    double resets, reset_time;  /* resets left in the bucket, as of reset_time (seconds, monotonic) */
} Server;

static void
stream_free(Server *self, stream *st)
{
    self->uploads -= st->held;
    Py_XDECREF(st->method);
    Py_XDECREF(st->path);
    Py_XDECREF(st->ctype);
    Py_XDECREF(st->out);
    PyMem_Free(st->body);
    PyMem_Free(st);
}

static void
stream_unlink(Server *self, stream *st)
{
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        self->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
}

static int
report(Server *self, stream *st)
{
    st->reported = 1;
    PyObject *body;
    if (st->too_large) {
        body = Py_NewRef(Py_None);
    } else {
        body = PyBytes_FromStringAndSize(st->body != NULL ? st->body : "", (Py_ssize_t)st->len);
        if (body == NULL) {
            return -1;
        }
    }
    PyMem_Free(st->body);
    st->body = NULL;
    self->uploads -= st->held;  /* in Python's hands now, and answered in turn */
    st->held = 0;
    PyObject *item = Py_BuildValue("(iOOON)", st->id, st->method ? st->method : Py_None,
                                   st->path ? st->path : Py_None, st->ctype ? st->ctype : Py_None, body);
    if (item == NULL) {
        return -1;
    }
    int err = PyList_Append(self->ready, item);
    Py_DECREF(item);
    return err;
}

/* Takes n more bytes of the connection's upload budget for st. Past the budget the stream is refused instead
 * (REFUSED_STREAM: nothing of it was processed, a client may retry it) and holds nothing more: without a cap, a
 * client could keep every stream half uploaded, MAX_STREAMS x max_body per connection. */
static int
charge(Server *self, stream *st, size_t n)
{
    if (self->uploads + n <= self->max_uploads) {
        self->uploads += n;
        st->held += n;
        return 0;
    }
    st->reported = 1;  /* never to be reported: what else arrives on it is ignored */
    PyMem_Free(st->body);
    st->body = NULL;
    st->len = st->cap = 0;
    self->uploads -= st->held;
    st->held = 0;
    nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
    return -1;
}

static int
on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    Server *self = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    stream *st = PyMem_Calloc(1, sizeof(stream));
    if (st == NULL) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->id = frame->hd.stream_id;
    if (nghttp2_session_set_stream_user_data(session, st->id, st) != 0) {
        stream_free(self, st);  /* no such stream (refused): nothing will report it closed, so nothing is kept */
        return 0;
    }
    st->next = self->streams;
    if (st->next != NULL) {
        st->next->prev = st;
    }
    self->streams = st;
    return 0;
}

static int
on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
          const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    Server *self = user_data;
    (void)flags;
    stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL || st->reported) {
        return 0;
    }
    /* RFC 9113's size of a header list: what SETTINGS_MAX_HEADER_LIST_SIZE announced; past it, the stream is reset */
    st->header_bytes += namelen + valuelen + 32;
    if (st->header_bytes > self->max_headers) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    PyObject **slot = NULL;
    int text = 1;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        slot = &st->method;
    } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        slot = &st->path;
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
        slot = &st->ctype;
        text = 0;
    }
    if (slot == NULL || *slot != NULL) {  /* a header nobody reads, or a repeated one: the first counts */
        return 0;
    }
    if (charge(self, st, valuelen) < 0) {
        return 0;
    }
    *slot = text ? PyUnicode_DecodeLatin1((const char *)value, (Py_ssize_t)valuelen, NULL)
                 : PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)valuelen);
    if (*slot == NULL) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int
on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
              void *user_data)
{
    Server *self = user_data;
    (void)flags;
    stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL || st->reported || st->too_large) {
        return 0;
    }
    if (st->len + len > self->max_body) {
        /* Reported at once: the 413 goes out while the client is still uploading */
        st->too_large = 1;
        if (report(self, st) < 0) {
            self->failed = 1;
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
    }
    if (st->len + len > st->cap) {
        size_t cap = st->cap ? st->cap : 512;
        while (cap < st->len + len) {
            cap *= 2;
        }
        if (charge(self, st, cap - st->cap) < 0) {
            return 0;
        }
        char *body = PyMem_Realloc(st->body, cap);
        if (body == NULL) {
            self->failed = 1;
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        st->body = body;
        st->cap = cap;
    }
    memcpy(st->body + st->len, data, len);
    st->len += len;
    return 0;
}

static int on_reset(Server *self);

static int
on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    Server *self = user_data;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        return on_reset(self);
    }
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        return 0;
    }
    stream *st = nghttp2_session_get_stream_user_data(session, frame->hd.stream_id);
    if (st == NULL || st->reported) {
        return 0;
    }
    if (report(self, st) < 0) {
        self->failed = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int
on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)
{
    Server *self = user_data;
    (void)error_code;
    stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st != NULL) {
        nghttp2_session_set_stream_user_data(session, stream_id, NULL);
        stream_unlink(self, st);
        stream_free(self, st);
    }
    return 0;
}

static double
monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static int
on_reset(Server *self)
{
    double now = monotonic();
    self->resets += (now - self->reset_time) * RESET_RATE;
    if (self->resets > RESET_BURST) {
        self->resets = RESET_BURST;
    }
    self->reset_time = now;
    self->resets -= 1;
    if (self->resets < 0) {
        nghttp2_session_terminate_session(self->session, NGHTTP2_ENHANCE_YOUR_CALM);
    }
    return 0;
}

static int
on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    return frame->hd.type == NGHTTP2_RST_STREAM ? on_reset(user_data) : 0;
}

static ssize_t
read_body(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
          nghttp2_data_source *source, void *user_data)
{
    (void)source;
    (void)user_data;
    stream *st = nghttp2_session_get_stream_user_data(session, stream_id);
    if (st == NULL || st->out == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    Py_ssize_t left = PyBytes_GET_SIZE(st->out) - st->sent;
    size_t n = (size_t)left < length ? (size_t)left : length;
    memcpy(buf, PyBytes_AS_STRING(st->out) + st->sent, n);
    st->sent += (Py_ssize_t)n;
    if (st->sent == PyBytes_GET_SIZE(st->out)) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

static int
Server_init(Server *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"max_streams", "max_headers", "max_body", "max_uploads", NULL};
    unsigned int max_streams = 100, max_headers = 16384;
    Py_ssize_t max_body = 65535, max_uploads = 262144;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|IInn", keywords, &max_streams, &max_headers, &max_body,
                                     &max_uploads)) {
        return -1;
    }
    if (self->session != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Server is already initialised");
        return -1;
    }
    if (max_body < 0 || max_uploads < 0) {
        PyErr_SetString(PyExc_ValueError, "max_body and max_uploads must be >= 0");
        return -1;
    }
    self->max_body = (size_t)max_body;
    self->max_uploads = (size_t)max_uploads;
    self->resets = RESET_BURST;
    self->reset_time = monotonic();
    self->max_headers = max_headers;
    self->ready = PyList_New(0);
    if (self->ready == NULL) {
        return -1;
    }
    nghttp2_session_callbacks *callbacks;
    if (nghttp2_session_callbacks_new(&callbacks) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    int rv = nghttp2_session_server_new(&self->session, callbacks, self);
    nghttp2_session_callbacks_del(callbacks);
    if (rv != 0) {
        self->session = NULL;
        PyErr_NoMemory();
        return -1;
    }
    nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_headers},
    };
    if (nghttp2_submit_settings(self->session, NGHTTP2_FLAG_NONE, settings, 2) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "nghttp2 refused the SETTINGS");
        return -1;
    }
    return 0;
}

static void
Server_dealloc(Server *self)
{
    if (self->session != NULL) {
        nghttp2_session_del(self->session);  /* it does not report the streams it drops: they are freed below */
    }
    while (self->streams != NULL) {
        stream *st = self->streams;
        self->streams = st->next;
        stream_free(self, st);
    }
    Py_XDECREF(self->ready);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define READY(self)                                                          \
    do {                                                                     \
        if ((self)->session == NULL) {                                       \
            PyErr_SetString(PyExc_RuntimeError, "Server is not initialised"); \
            return NULL;                                                     \
        }                                                                    \
    } while (0)

static PyObject *
Server_feed(Server *self, PyObject *arg)
{
    READY(self);
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    ssize_t rv = nghttp2_session_mem_recv(self->session, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    PyObject *ready = self->ready;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) {
        return NULL;
    }
    self->ready = fresh;
    if (self->failed) {
        Py_DECREF(ready);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return NULL;
    }
    if (rv < 0) {
        /* A fatal error (bad preface, flood): nghttp2 queued a GOAWAY where it could; the session is over */
        Py_DECREF(ready);
        Py_RETURN_NONE;
    }
    return ready;
}

static PyObject *
Server_output(Server *self, PyObject *Py_UNUSED(ignored))
{
    READY(self);
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(self->session, &data);
    if (n <= 0) {
        return PyBytes_FromStringAndSize("", 0);
    }
    /* mem_send hands out one frame at a time; a batch of answers is many frames, written in one go */
    PyObject *out = PyBytes_FromStringAndSize((const char *)data, n);
    while (out != NULL && (n = nghttp2_session_mem_send(self->session, &data)) > 0) {
        Py_ssize_t size = PyBytes_GET_SIZE(out);
        if (_PyBytes_Resize(&out, size + n) < 0) {
            return NULL;
        }
        memcpy(PyBytes_AS_STRING(out) + size, data, (size_t)n);
    }
    return out;
}

static PyObject *
Server_respond(Server *self, PyObject *args)
{
    READY(self);
    int stream_id, status;
    PyObject *headers, *body;
    if (!PyArg_ParseTuple(args, "iiO!S", &stream_id, &status, &PyList_Type, &headers, &body)) {
        return NULL;
    }
    stream *st = stream_id > 0 ? nghttp2_session_get_stream_user_data(self->session, stream_id) : NULL;
    if (st == NULL || st->out != NULL) {  /* reset by the client meanwhile, or answered already */
        Py_RETURN_FALSE;
    }
    Py_ssize_t count = PyList_GET_SIZE(headers);
    nghttp2_nv *nva = PyMem_Calloc((size_t)count + 1, sizeof(nghttp2_nv));
    if (nva == NULL) {
        return PyErr_NoMemory();
    }
    char code[12];
    int codelen = snprintf(code, sizeof(code), "%d", status);
    nva[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, (size_t)codelen, NGHTTP2_NV_FLAG_NONE};
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyMem_Free(nva);
            PyErr_SetString(PyExc_TypeError, "headers are (bytes, bytes) pairs");
            return NULL;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *value = PyTuple_GET_ITEM(pair, 1);
        nva[i + 1] = (nghttp2_nv){(uint8_t *)PyBytes_AS_STRING(name), (uint8_t *)PyBytes_AS_STRING(value),
                                  (size_t)PyBytes_GET_SIZE(name), (size_t)PyBytes_GET_SIZE(value),
                                  NGHTTP2_NV_FLAG_NONE};  /* copied by nghttp2 */
    }
    nghttp2_data_provider provider = {.source = {.ptr = NULL}, .read_callback = read_body};
    int has_body = PyBytes_GET_SIZE(body) > 0;
    if (has_body) {
        st->out = Py_NewRef(body);
        st->sent = 0;
    }
    int rv = nghttp2_submit_response(self->session, stream_id, nva, (size_t)count + 1, has_body ? &provider : NULL);
    PyMem_Free(nva);
    if (rv != 0) {
        Py_CLEAR(st->out);
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

static PyObject *
Server_reset(Server *self, PyObject *arg)
{
    READY(self);
    long stream_id = PyLong_AsLong(arg);
    if (stream_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (stream_id > 0 && stream_id <= INT32_MAX) {
        nghttp2_submit_rst_stream(self->session, NGHTTP2_FLAG_NONE, (int32_t)stream_id, NGHTTP2_NO_ERROR);
    }
    Py_RETURN_NONE;
}

static PyObject *
Server_done(Server *self, PyObject *Py_UNUSED(ignored))
{
    READY(self);
    return PyBool_FromLong(!nghttp2_session_want_read(self->session) && !nghttp2_session_want_write(self->session));
}

static PyMethodDef Server_methods[] = {
    {"feed", (PyCFunction)Server_feed, METH_O,
     "feed(data) -> complete requests [(stream id, method, path, content type, body)], or None: the session "
     "failed and must close once output() is written."},
    {"output", (PyCFunction)Server_output, METH_NOARGS, "output() -> the bytes to send now (maybe empty)."},
    {"respond", (PyCFunction)Server_respond, METH_VARARGS,
     "respond(stream id, status, headers, body) -> False when the stream is gone or already answered."},
    {"reset", (PyCFunction)Server_reset, METH_O, "reset(stream id): RST_STREAM with NO_ERROR, after the answer."},
    {"done", (PyCFunction)Server_done, METH_NOARGS, "done() -> True when the session wants neither to read nor write."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ServerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resolver.net._h2.Server",
    .tp_doc = "One HTTP/2 server connection on nghttp2, fed and drained as bytes.",
    .tp_basicsize = sizeof(Server),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Server_init,
    .tp_dealloc = (destructor)Server_dealloc,
    .tp_methods = Server_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_h2", "HTTP/2 server sessions on nghttp2, sans-IO.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__h2(void)
{
    if (PyType_Ready(&ServerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Server", (PyObject *)&ServerType) < 0 ||
        PyModule_AddStringConstant(m, "NGHTTP2_VERSION", nghttp2_version(0)->version_str) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
