/* The compiled fast path of spreadqueue's Spread decoders (optional).
 *
 * decode.py is the reference. Its hot loop, _MessageStream._feed, asks one of the
 * scanners below to decode the run of whole messages at the front of a chunk that take
 * the common path; the scanner stops at the first message that does not (incomplete,
 * malformed, a membership notice, a reject, a control message, a big-endian header, a
 * name not yet cached ...) and the Python code handles that one, raising the very
 * errors it always raises. So the scanners never raise a WireError: every decision
 * they take is one the Python path takes the same way, and for anything else they
 * hand over. tests/test_wire_speedups.py feeds both paths the same random streams and
 * the golden traces.
 *
 *   setup(name_cache, name_of, one_group_cache, one_group_of, group_names,
 *         canonical_cache, RegularMessage, Relay)
 *   scan_client(data, pos, out, max_frame) -> new pos
 *       daemon -> client data messages: RegularMessage frames (ClientDecoder._message)
 *   scan_daemon(data, pos, out, sender_field, strict_size) -> new pos
 *       client -> daemon data messages that can be relayed byte for byte: Relay frames
 *       (DaemonDecoder._check_header + DaemonDecoder._relay)
 *
 * Numbers are those of wire/constants.py and docs/spread-protocol.md.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 48
#define GROUP_FIELD 32
#define ENDIAN_MARKER 0x80000080u
#define REGULAR_MESS 0x3Fu
#define SELF_DISCARD 0x40u
#define REJECT_MESS 0x400000u
#define MAX_GROUPS 100
#define LIBRARY_LIMIT 144000
#define DAEMON_CHECK_LIMIT 143952
#define MAX_MESSAGE_BYTES 143200
#define HINT_ALLOWED 0x80FFFF80u
#define NOT_VERBATIM (0xFFFFFFFFu & ~(0x80000080u | 0x3Fu | 0x40u))

static PyObject *name_cache;      /* dict: 32-byte field -> str */
static PyObject *name_of;         /* callable: field -> str (fills name_cache) */
static PyObject *one_group_cache; /* dict: 32-byte field -> (str,) */
static PyObject *one_group_of;    /* callable: field -> (str,) */
static PyObject *group_names;     /* callable: (buf, start, count) -> tuple of str */
static PyObject *canonical_cache; /* dict: canonical 32-byte field -> str */
static PyTypeObject *regular_type;
static PyTypeObject *relay_type;

/* The last field looked up and what it gave, per cache: the sender and the destination
 * of a stream's messages repeat, and a hit costs a memcmp instead of a bytes object,
 * its hash and a dict lookup. The caches memoise pure functions, so reusing a result
 * for the same 32 bytes gives what the lookup would. */
typedef struct {
    char field[GROUP_FIELD];
    PyObject *value; /* NULL: nothing remembered */
} last_t;
static last_t last_sender, last_dests;
/* Destination lists of several groups: the tuple group_names gives for the fields,
 * by their bytes (group_names is a pure function of them), and the last one seen. A
 * RESULT goes to [sender, Q-mgr] message after message: without this, a Python call
 * building the same tuple per message. */
#define MULTI_CACHE_MAX 4096
#define LAST_MULTI_GROUPS 4
static PyObject *multi_cache; /* dict: fields (32 * n bytes) -> tuple of str */
static char last_multi_field[GROUP_FIELD * LAST_MULTI_GROUPS];
static Py_ssize_t last_multi_len;
static PyObject *last_multi_value;
/* The last destination field found canonical (see scan_daemon). */
static char last_canonical[GROUP_FIELD];
static int have_last_canonical;

static inline uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A tuple of ``type`` (a NamedTuple frame) holding ``n`` new references; what
 * tuple.__new__(type, items) builds, without the argument tuple. Steals the items;
 * on failure releases them. */
static PyObject *new_frame(PyTypeObject *type, PyObject **items, Py_ssize_t n) {
    PyObject *frame = type->tp_alloc(type, n);
    if (frame == NULL) {
        for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(frame, i, items[i]);
    return frame;
}

/* cache.get(key) or fill(key): a new reference, or NULL with an exception set. */
static PyObject *cached(PyObject *cache, PyObject *fill, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(cache, key);
    if (v != NULL && PyObject_IsTrue(v) == 1) {
        Py_INCREF(v);
        return v;
    }
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallOneArg(fill, key);
}

/* remembered(last, cache, fill, field): a new reference to what cache/fill give for
 * the 32 bytes at ``field``. */
static PyObject *remembered(last_t *last, PyObject *cache, PyObject *fill, const char *field) {
    if (last->value != NULL && memcmp(last->field, field, GROUP_FIELD) == 0) {
        Py_INCREF(last->value);
        return last->value;
    }
    PyObject *key = PyBytes_FromStringAndSize(field, GROUP_FIELD);
    if (key == NULL) return NULL;
    PyObject *v = cached(cache, fill, key);
    Py_DECREF(key);
    if (v == NULL) return NULL;
    memcpy(last->field, field, GROUP_FIELD);
    Py_INCREF(v);
    Py_XSETREF(last->value, v);
    return v;
}

/* The destination tuple of the ``num_groups`` fields at buf[goff:] (a new reference). */
static PyObject *multi_groups(PyObject *data, const char *buf, Py_ssize_t goff,
                              Py_ssize_t num_groups) {
    Py_ssize_t len = (Py_ssize_t)GROUP_FIELD * num_groups;
    if (last_multi_value != NULL && last_multi_len == len &&
        memcmp(last_multi_field, buf + goff, (size_t)len) == 0) {
        Py_INCREF(last_multi_value);
        return last_multi_value;
    }
    PyObject *key = PyBytes_FromStringAndSize(buf + goff, len);
    if (key == NULL) return NULL;
    PyObject *v = PyDict_GetItemWithError(multi_cache, key);
    if (v != NULL) {
        Py_INCREF(v);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return NULL;
    } else {
        v = PyObject_CallFunction(group_names, "Onn", data, goff, num_groups);
        if (v != NULL && PyDict_GET_SIZE(multi_cache) < MULTI_CACHE_MAX &&
            PyDict_SetItem(multi_cache, key, v) < 0) {
            Py_CLEAR(v);
        }
    }
    Py_DECREF(key);
    if (v != NULL && len <= (Py_ssize_t)sizeof(last_multi_field)) {
        memcpy(last_multi_field, buf + goff, (size_t)len);
        last_multi_len = len;
        Py_INCREF(v);
        Py_XSETREF(last_multi_value, v);
    }
    return v;
}

static PyObject *sp_setup(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "setup takes 8 arguments");
        return NULL;
    }
    if (!PyDict_Check(args[0]) || !PyDict_Check(args[2]) || !PyDict_Check(args[5]) ||
        !PyType_Check(args[6]) || !PyType_Check(args[7]) ||
        !PyType_IsSubtype((PyTypeObject *)args[6], &PyTuple_Type) ||
        !PyType_IsSubtype((PyTypeObject *)args[7], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup: unexpected argument types");
        return NULL;
    }
    PyObject **slots[] = {&name_cache, &name_of, &one_group_cache, &one_group_of,
                          &group_names, &canonical_cache,
                          (PyObject **)&regular_type, (PyObject **)&relay_type};
    for (int i = 0; i < 8; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_CLEAR(last_sender.value);
    Py_CLEAR(last_dests.value);
    Py_CLEAR(last_multi_value);
    Py_XSETREF(multi_cache, PyDict_New());
    if (multi_cache == NULL) return NULL;
    have_last_canonical = 0;
    Py_RETURN_NONE;
}

static int ready(void) {
    if (regular_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "spreadqueue speedups: setup() was not called");
        return 0;
    }
    return 1;
}

/* Common argument handling: (data: bytes, pos: int, out: list, ...). */
static int scan_args(PyObject *const *args, const char **buf, Py_ssize_t *n, Py_ssize_t *pos) {
    if (!PyBytes_CheckExact(args[0]) || !PyList_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "scan: data must be bytes and out a list");
        return 0;
    }
    *pos = PyLong_AsSsize_t(args[1]);
    if (*pos == -1 && PyErr_Occurred()) return 0;
    *buf = PyBytes_AS_STRING(args[0]);
    *n = PyBytes_GET_SIZE(args[0]);
    if (*pos < 0 || *pos > *n) {
        PyErr_SetString(PyExc_ValueError, "scan: pos outside data");
        return 0;
    }
    return 1;
}

/* ClientDecoder: regular data messages, little-endian headers. */
static PyObject *sp_scan_client(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    const char *buf;
    Py_ssize_t n, pos;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan_client takes 4 arguments");
        return NULL;
    }
    if (!ready() || !scan_args(args, &buf, &n, &pos)) return NULL;
    long long max_frame = PyLong_AsLongLong(args[3]);
    if (max_frame == -1 && PyErr_Occurred()) return NULL;
    PyObject *data = args[0], *out = args[2];
    while (n - pos >= HEADER_SIZE) {
        const unsigned char *h = (const unsigned char *)buf + pos;
        if (!(h[0] & 0x80 && h[3] & 0x80)) break; /* big-endian: the Python path */
        uint32_t stype = le32(h);
        int32_t num_groups = (int32_t)le32(h + 36);
        int32_t data_len = (int32_t)le32(h + 44);
        if (stype & REJECT_MESS || !(stype & REGULAR_MESS)) break;
        if (num_groups < 0 || data_len < 0) break;
        long long total = HEADER_SIZE + (long long)GROUP_FIELD * num_groups + data_len;
        if (total > max_frame || total > n - pos) break;
        Py_ssize_t goff = pos + HEADER_SIZE;
        Py_ssize_t doff = goff + (Py_ssize_t)GROUP_FIELD * num_groups;
        PyObject *items[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
        items[1] = remembered(&last_sender, name_cache, name_of, (const char *)h + 4);
        if (items[1] == NULL) return NULL;
        if (num_groups == 1) {
            items[2] = remembered(&last_dests, one_group_cache, one_group_of, buf + goff);
        } else {
            items[2] = multi_groups(data, buf, goff, (Py_ssize_t)num_groups);
        }
        if (items[2] == NULL) goto fail;
        /* the hint keeps its writer's byte order (hint_mess_type) */
        int mess_type;
        int big_endian;
        if (h[40] & 0x80 && h[43] & 0x80) {
            mess_type = h[41] | h[42] << 8;
            big_endian = 0;
        } else {
            mess_type = h[41] << 8 | h[42];
            big_endian = 1;
        }
        if (mess_type & 0x8000) mess_type -= 0x10000;
        items[0] = PyLong_FromUnsignedLong(stype & ~ENDIAN_MARKER);
        items[3] = PyLong_FromLong(mess_type);
        items[4] = PyBytes_FromStringAndSize(buf + doff, data_len);
        items[5] = PyBool_FromLong(big_endian);
        if (items[0] == NULL || items[3] == NULL || items[4] == NULL) goto fail;
        PyObject *frame = new_frame(regular_type, items, 6);
        if (frame == NULL) return NULL;
        int err = PyList_Append(out, frame);
        Py_DECREF(frame);
        if (err < 0) return NULL;
        pos += (Py_ssize_t)total;
        continue;
    fail:
        for (int i = 0; i < 6; i++) Py_XDECREF(items[i]);
        return NULL;
    }
    return PyLong_FromSsize_t(pos);
}

/* DaemonDecoder with relay=True: data messages it forwards byte for byte. */
static PyObject *sp_scan_daemon(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    const char *buf;
    Py_ssize_t n, pos;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_daemon takes 5 arguments");
        return NULL;
    }
    if (!ready() || !scan_args(args, &buf, &n, &pos)) return NULL;
    PyObject *data = args[0], *out = args[2], *sender = args[3];
    if (!PyBytes_CheckExact(sender) || PyBytes_GET_SIZE(sender) != GROUP_FIELD) {
        /* not accepted yet, or an odd field: nothing is relayed */
        return PyLong_FromSsize_t(pos);
    }
    int strict = PyObject_IsTrue(args[4]);
    if (strict < 0) return NULL;
    const char *sender_field = PyBytes_AS_STRING(sender);
    while (n - pos >= HEADER_SIZE) {
        const unsigned char *h = (const unsigned char *)buf + pos;
        if (!(h[0] & 0x80 && h[3] & 0x80)) break;
        uint32_t stype = le32(h);
        int32_t num_groups = (int32_t)le32(h + 36);
        uint32_t hint = le32(h + 40);
        int32_t data_len = (int32_t)le32(h + 44);
        /* _check_header, for the messages _relay takes: one service bit, nothing else
         * but SELF_DISCARD and the marker; the session's own sender field; the limits. */
        uint32_t kinds = stype & REGULAR_MESS;
        if (stype & NOT_VERBATIM || kinds == 0 || kinds & (kinds - 1)) break;
        if (memcmp(h + 4, sender_field, GROUP_FIELD) != 0) break;
        if (num_groups < 0 || num_groups > MAX_GROUPS) break;
        if (hint & ~HINT_ALLOWED) break;
        if (data_len < 0 || data_len > LIBRARY_LIMIT ||
            data_len + GROUP_FIELD * num_groups > DAEMON_CHECK_LIMIT)
            break;
        Py_ssize_t total = HEADER_SIZE + (Py_ssize_t)GROUP_FIELD * num_groups + data_len;
        if (strict && total > MAX_MESSAGE_BYTES) break;
        if (total > n - pos) break;
        Py_ssize_t goff = pos + HEADER_SIZE;
        /* every destination field a cached canonical name (a name the Python path has
         * seen: anything else goes there, which also fills the cache) */
        PyObject *blob = PyBytes_FromStringAndSize(buf + goff, (Py_ssize_t)GROUP_FIELD * num_groups);
        if (blob == NULL) return NULL;
        int canonical = 1;
        if (num_groups == 1) {
            if (have_last_canonical && memcmp(last_canonical, buf + goff, GROUP_FIELD) == 0) {
                canonical = 1;
            } else {
                canonical = PyDict_Contains(canonical_cache, blob);
                if (canonical == 1) {
                    memcpy(last_canonical, buf + goff, GROUP_FIELD);
                    have_last_canonical = 1;
                }
            }
        } else {
            for (int32_t i = 0; i < num_groups && canonical == 1; i++) {
                PyObject *field = PyBytes_FromStringAndSize(buf + goff + GROUP_FIELD * i, GROUP_FIELD);
                if (field == NULL) {
                    canonical = -1;
                    break;
                }
                canonical = PyDict_Contains(canonical_cache, field);
                Py_DECREF(field);
            }
        }
        if (canonical != 1) {
            Py_DECREF(blob);
            if (canonical < 0) return NULL;
            break;
        }
        PyObject *items[4];
        items[0] = PyLong_FromUnsignedLong(stype & ~ENDIAN_MARKER);
        items[1] = blob;
        items[2] = PyLong_FromLong(num_groups);
        if (pos == 0 && total == n) {
            Py_INCREF(data);
            items[3] = data;
        } else {
            items[3] = PyBytes_FromStringAndSize(buf + pos, total);
        }
        if (items[0] == NULL || items[2] == NULL || items[3] == NULL) {
            for (int i = 0; i < 4; i++) Py_XDECREF(items[i]);
            return NULL;
        }
        PyObject *frame = new_frame(relay_type, items, 4);
        if (frame == NULL) return NULL;
        int err = PyList_Append(out, frame);
        Py_DECREF(frame);
        if (err < 0) return NULL;
        pos += total;
    }
    return PyLong_FromSsize_t(pos);
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))sp_setup, METH_FASTCALL,
     "setup(name_cache, name_of, one_group_cache, one_group_of, group_names, "
     "canonical_cache, RegularMessage, Relay): what the scanners build with"},
    {"scan_client", (PyCFunction)(void (*)(void))sp_scan_client, METH_FASTCALL,
     "scan_client(data, pos, out, max_frame) -> pos: append the RegularMessage frames of "
     "the whole common-path messages at data[pos:]; return where it stopped"},
    {"scan_daemon", (PyCFunction)(void (*)(void))sp_scan_daemon, METH_FASTCALL,
     "scan_daemon(data, pos, out, sender_field, strict_size) -> pos: append the Relay "
     "frames of the whole relayable messages at data[pos:]; return where it stopped"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "spreadqueue._spread.wire._speedups",
    "The compiled fast path of the Spread decoders (see decode.py, the reference).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
