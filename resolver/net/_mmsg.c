/* Batched UDP receive and send for the listener: recvmmsg(2) into buffers allocated once, sendmmsg(2) of the
 * replies one batch of queries produced. Built by setup.py beside the mypyc modules when a C compiler is present;
 * resolver/net/mmsg.py falls back to nothing (the listener's recvfrom loop) when it is not.
 *
 * Per datagram the caller gets the payload as bytes and the client's address as text (the text the socket
 * module's recvfrom gives as addr[0]); the raw socket address stays here, in the slot it arrived in, so an answer
 * sent back within the batch costs no address object at all. A datagram longer than a slot is dropped and counted
 * (MSG_TRUNC): no DNS client sends a query that long.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    PyObject_HEAD
    int fd;
    unsigned int size;      /* datagrams per recv(), replies per sendmmsg */
    size_t slot;            /* bytes of one receive buffer */
    char *buffers;
    struct mmsghdr *in;
    struct iovec *in_iov;
    struct sockaddr_storage *in_addr;
    unsigned int *kept;     /* position in recv()'s list -> slot (truncated datagrams are left out) */
    unsigned int received;  /* entries of the last recv()'s list */
    struct mmsghdr *out;
    struct iovec *out_iov;
    struct sockaddr_storage *out_addr;
    PyObject **out_data;    /* the bytes each queued reply points into, held until sent */
    unsigned int queued;
    unsigned int overflowed; /* replies dropped by a send forced by a full queue, reported by the next flush() */
    unsigned long long truncated;
    /* The last client address turned into text, and the text: a batch mostly comes from few clients, and one
     * str object per client also keeps its hash, which the pipeline's per-client lookups then reuse. */
    int last_family;
    unsigned char last_addr[16];
    PyObject *last_host;
} Batch;

/* Every method but the constructor needs the buffers: a Batch made with __new__ alone has none. */
#define READY(self)                                                          \
    do {                                                                     \
        if ((self)->buffers == NULL) {                                       \
            PyErr_SetString(PyExc_RuntimeError, "Batch is not initialised"); \
            return NULL;                                                     \
        }                                                                    \
    } while (0)

static void
drop_queued(Batch *self)
{
    for (unsigned int i = 0; i < self->queued; i++) {
        Py_CLEAR(self->out_data[i]);
    }
    self->queued = 0;
}

static void
Batch_dealloc(Batch *self)
{
    if (self->out_data != NULL) {
        drop_queued(self);
    }
    Py_CLEAR(self->last_host);
    PyMem_Free(self->buffers);
    PyMem_Free(self->in);
    PyMem_Free(self->in_iov);
    PyMem_Free(self->in_addr);
    PyMem_Free(self->kept);
    PyMem_Free(self->out);
    PyMem_Free(self->out_iov);
    PyMem_Free(self->out_addr);
    PyMem_Free(self->out_data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"fd", "size", "slot", NULL};
    int fd;
    unsigned int size = 64;
    Py_ssize_t slot = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|In", names, &fd, &size, &slot)) {
        return -1;
    }
    if (fd < 0 || size < 1 || size > 1024 || slot < 512 || slot > 65536) {
        PyErr_SetString(PyExc_ValueError, "fd >= 0, 1 <= size <= 1024 and 512 <= slot <= 65536");
        return -1;
    }
    if (self->buffers != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Batch is already initialised");
        return -1;
    }
    self->fd = fd;
    self->size = size;
    /* An odd number of cache lines between slots, so the slots' first bytes do not all fall in one cache set. */
    self->slot = (size_t)slot;
    size_t stride = ((size_t)slot + 63) / 64 * 64 + 64;
    self->buffers = PyMem_Malloc(stride * size);
    self->in = PyMem_Calloc(size, sizeof(struct mmsghdr));
    self->in_iov = PyMem_Calloc(size, sizeof(struct iovec));
    self->in_addr = PyMem_Calloc(size, sizeof(struct sockaddr_storage));
    self->kept = PyMem_Calloc(size, sizeof(unsigned int));
    self->out = PyMem_Calloc(size, sizeof(struct mmsghdr));
    self->out_iov = PyMem_Calloc(size, sizeof(struct iovec));
    self->out_addr = PyMem_Calloc(size, sizeof(struct sockaddr_storage));
    self->out_data = PyMem_Calloc(size, sizeof(PyObject *));
    if (!self->buffers || !self->in || !self->in_iov || !self->in_addr || !self->kept || !self->out ||
        !self->out_iov || !self->out_addr || !self->out_data) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < size; i++) {
        self->in_iov[i].iov_base = self->buffers + stride * i;
        self->in_iov[i].iov_len = (size_t)slot;
        self->in[i].msg_hdr.msg_iov = &self->in_iov[i];
        self->in[i].msg_hdr.msg_iovlen = 1;
        self->in[i].msg_hdr.msg_name = &self->in_addr[i];
        self->out[i].msg_hdr.msg_iov = &self->out_iov[i];
        self->out[i].msg_hdr.msg_iovlen = 1;
        self->out[i].msg_hdr.msg_name = &self->out_addr[i];
    }
    self->last_family = AF_UNSPEC;
    return 0;
}

/* The client's address as text, as the socket module's recvfrom gives it (addr[0]); a new reference. */
static PyObject *
host_of(Batch *self, const struct sockaddr_storage *addr, socklen_t len)
{
    const void *raw;
    size_t raw_len;
    if (addr->ss_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        raw = &((const struct sockaddr_in *)addr)->sin_addr;
        raw_len = 4;
    } else if (addr->ss_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        raw = &((const struct sockaddr_in6 *)addr)->sin6_addr;
        raw_len = 16;
    } else {
        return PyUnicode_FromString("");
    }
    if (self->last_host != NULL && self->last_family == addr->ss_family && memcmp(self->last_addr, raw, raw_len) == 0) {
        Py_INCREF(self->last_host);
        return self->last_host;
    }
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(addr->ss_family, raw, text, sizeof text) == NULL) {
        return PyUnicode_FromString("");
    }
    PyObject *host = PyUnicode_FromString(text);
    if (host == NULL) {
        return NULL;
    }
    Py_XSETREF(self->last_host, Py_NewRef(host));
    self->last_family = addr->ss_family;
    memcpy(self->last_addr, raw, raw_len);
    return host;
}

static PyObject *
Batch_recv(Batch *self, PyObject *Py_UNUSED(ignored))
{
    READY(self);
    self->received = 0;
    for (unsigned int i = 0; i < self->size; i++) {
        self->in[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
    }
    int n;
    do {
        n = recvmmsg(self->fd, self->in, self->size, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return PyList_New(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    unsigned int kept = 0;
    for (int i = 0; i < n; i++) {
        if (self->in[i].msg_hdr.msg_flags & MSG_TRUNC) {
            self->truncated++;
        } else {
            self->kept[kept++] = (unsigned int)i;
        }
    }
    PyObject *list = PyList_New(kept);
    if (list == NULL) {
        return NULL;
    }
    for (unsigned int k = 0; k < kept; k++) {
        unsigned int i = self->kept[k];
        PyObject *data = PyBytes_FromStringAndSize(self->in_iov[i].iov_base, self->in[i].msg_len);
        PyObject *host = data ? host_of(self, &self->in_addr[i], self->in[i].msg_hdr.msg_namelen) : NULL;
        PyObject *pair = host ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(data);
            Py_XDECREF(host);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, data);
        PyTuple_SET_ITEM(pair, 1, host);
        PyList_SET_ITEM(list, k, pair);
    }
    self->received = kept;
    return list;
}

/* Send what is queued: one sendmmsg, more only when the kernel stops part way. Returns how many were dropped. */
static unsigned int
send_queued(Batch *self)
{
    unsigned int at = 0, dropped = 0;
    while (at < self->queued) {
        int n = sendmmsg(self->fd, self->out + at, self->queued - at, MSG_DONTWAIT);
        if (n > 0) {
            at += (unsigned int)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            /* The send buffer is full: the rest would fail alike; dropped as a full receive buffer drops. */
            dropped += self->queued - at;
            break;
        } else {
            dropped++;  /* this one's address is unusable, say: skip it, send the rest */
            at++;
        }
    }
    drop_queued(self);
    return dropped;
}

static int
enqueue(Batch *self, PyObject *data, const void *addr, socklen_t len)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "a reply must be bytes");
        return -1;
    }
    if (self->queued == self->size) {
        self->overflowed += send_queued(self);  /* more replies than datagrams: send those queued so far */
    }
    unsigned int q = self->queued++;
    self->out_iov[q].iov_base = PyBytes_AS_STRING(data);
    self->out_iov[q].iov_len = (size_t)PyBytes_GET_SIZE(data);
    memcpy(&self->out_addr[q], addr, (size_t)len);
    self->out[q].msg_hdr.msg_namelen = len;
    self->out_data[q] = Py_NewRef(data);
    return 0;
}

static int
position(Batch *self, PyObject *arg, unsigned int *slot)
{
    Py_ssize_t k = PyLong_AsSsize_t(arg);
    if (k == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (k < 0 || (size_t)k >= self->received) {
        PyErr_SetString(PyExc_IndexError, "no such datagram in the last batch");
        return -1;
    }
    *slot = self->kept[k];
    return 0;
}

static PyObject *
Batch_reply(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned int slot;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "reply(position, data)");
        return NULL;
    }
    if (position(self, args[0], &slot) < 0 ||
        enqueue(self, args[1], &self->in_addr[slot], self->in[slot].msg_hdr.msg_namelen) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Batch_flush(Batch *self, PyObject *Py_UNUSED(ignored))
{
    READY(self);
    unsigned int dropped = send_queued(self) + self->overflowed;
    self->overflowed = 0;
    return PyLong_FromUnsignedLong(dropped);
}

static PyObject *
Batch_peer(Batch *self, PyObject *arg)
{
    unsigned int slot;
    if (position(self, arg, &slot) < 0) {
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)&self->in_addr[slot], self->in[slot].msg_hdr.msg_namelen);
}

static PyObject *
Batch_send_to(Batch *self, PyObject *const *args, Py_ssize_t nargs)
{
    READY(self);
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "send_to(peer: bytes, data: bytes)");
        return NULL;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (len < (Py_ssize_t)sizeof(sa_family_t) || len > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
        PyErr_SetString(PyExc_ValueError, "not a socket address from peer()");
        return NULL;
    }
    ssize_t n;
    do {
        n = sendto(self->fd, PyBytes_AS_STRING(args[1]), (size_t)PyBytes_GET_SIZE(args[1]), MSG_DONTWAIT,
                   (const struct sockaddr *)PyBytes_AS_STRING(args[0]), (socklen_t)len);
    } while (n < 0 && errno == EINTR);
    return PyBool_FromLong(n >= 0);
}

static PyMethodDef Batch_methods[] = {
    {"recv", (PyCFunction)Batch_recv, METH_NOARGS,
     "recv() -> [(data, host), ...]: the datagrams waiting, up to size, in one recvmmsg; [] when none."},
    {"reply", (PyCFunction)(void (*)(void))Batch_reply, METH_FASTCALL,
     "reply(position, data): queue data for the sender of the last recv()'s datagram at position."},
    {"flush", (PyCFunction)Batch_flush, METH_NOARGS,
     "flush() -> dropped: send the queued replies with sendmmsg; how many the kernel refused."},
    {"peer", (PyCFunction)Batch_peer, METH_O,
     "peer(position) -> bytes: the raw socket address of that datagram's sender, for send_to later."},
    {"send_to", (PyCFunction)(void (*)(void))Batch_send_to, METH_FASTCALL,
     "send_to(peer, data) -> bool: send one datagram now to an address from peer(); False when refused."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Batch_members[] = {
    {"truncated", T_ULONGLONG, offsetof(Batch, truncated), 0, "datagrams dropped for being longer than a slot"},
    {"size", T_UINT, offsetof(Batch, size), READONLY, "datagrams per recv()"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "resolver.net._mmsg.Batch",
    .tp_doc = PyDoc_STR("Batch(fd, size=64, slot=4096): recvmmsg/sendmmsg on a non-blocking UDP socket's fd."),
    .tp_basicsize = sizeof(Batch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_members = Batch_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "resolver.net._mmsg",
    .m_doc = "recvmmsg/sendmmsg for the UDP listener (see resolver/net/mmsg.py).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    if (PyType_Ready(&BatchType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
