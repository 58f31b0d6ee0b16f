/* The compiled fast path of the queue messages' entry checks (optional).
 *
 * messages.py is the reference: its _fast_submit, _fast_ack, _fast_assign,
 * _fast_result and _fast_done check the entries of the hot kinds inline. parse() does
 * the same checks in C for the entries those accept as they are, and builds the same
 * NamedTuples; on anything else (a later revision's extra SUBMIT fields, an ASSIGN
 * reply_to not seen before, an ERROR result, any malformed field) it returns None and
 * the Python code decides, so every error is still the Python code's.
 * tests/test_queue_messages.py feeds both the same random entries.
 *
 *   setup(Submit, Ack, Assign, Result, Done, good_groups, limits)
 *       limits: (MAX_TASK_ID, MAX_WORKER_ID, MAX_FUNC, MAX_PAYLOAD, MAX_TIMEOUT_MS,
 *                MAX_ATTEMPT, MAX_WORKERS)
 *   parse(kind, entries) -> list | None      kind: 1 SUBMIT, 2 ACK, 6 ASSIGN,
 *                                            7 RESULT, 8 DONE
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyTypeObject *submit_type, *ack_type, *assign_type, *result_type, *done_type;
static PyObject *good_groups; /* dict: reply_to names the Python path has checked */
static long long max_task_id, max_worker_id, max_func, max_payload, max_timeout_ms,
    max_attempt, max_workers;

/* A str of 1..limit characters (type(v) is str and 0 < len(v) <= limit). */
static int is_name(PyObject *v, long long limit) {
    if (!PyUnicode_CheckExact(v)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(v);
    return n > 0 && n <= limit;
}

/* type(v) is int and 0 <= v <= limit */
static int is_uint(PyObject *v, long long limit) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return x >= 0 && x <= limit;
}

/* None, or an int in 0..limit */
static int is_opt_uint(PyObject *v, long long limit) {
    return v == Py_None || is_uint(v, limit);
}

static int is_payload(PyObject *v) {
    return PyBytes_CheckExact(v) && PyBytes_GET_SIZE(v) <= max_payload;
}

/* A tuple of ``type`` holding ``n`` new references to ``items`` (NULL on failure). */
static PyObject *entry(PyTypeObject *type, PyObject **items, Py_ssize_t n) {
    PyObject *e = type->tp_alloc(type, n);
    if (e == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(e, i, items[i]);
    }
    return e;
}

/* One entry of ``kind``: 1 built (*out set), 0 handed to Python, -1 error. */
static int one(long kind, PyObject *e, PyObject **out) {
    if (!PyList_CheckExact(e)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(e);
    PyObject **f = ((PyListObject *)e)->ob_item;
    if (kind == 7) { /* RESULT: task_id, worker_id, final, status, payload */
        if (n < 5 || !is_name(f[0], max_task_id) || !is_name(f[1], max_worker_id) ||
            !PyBool_Check(f[2]) || !PyLong_CheckExact(f[3]))
            return 0;
        int overflow = 0;
        long long status = PyLong_AsLongLongAndOverflow(f[3], &overflow);
        if (overflow || (status == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (status == 0) {
            if (!is_payload(f[4])) return 0;
        } else if (status == 3) {
            if (f[4] != Py_None) return 0;
        } else {
            return 0; /* errors are rare: the Python path */
        }
        *out = entry(result_type, f, 5);
    } else if (kind == 1) { /* SUBMIT: task_id, func, args, timeout_ms[, ack_ms] */
        if (n < 4 || n > 5 || !is_name(f[0], max_task_id) || !is_name(f[1], max_func) ||
            !is_payload(f[2]) || !is_opt_uint(f[3], max_timeout_ms))
            return 0;
        PyObject *items[10] = {f[0], f[1], f[2], f[3], Py_None, Py_None, Py_None,
                               Py_None, Py_None, Py_None};
        if (n > 4 && is_uint(f[4], max_timeout_ms)) items[4] = f[4];
        *out = entry(submit_type, items, 10);
    } else if (kind == 6) { /* ASSIGN */
        if (n < 7 || !is_name(f[0], max_worker_id) || !is_name(f[1], max_task_id) ||
            !is_name(f[2], max_func) || !is_payload(f[3]) || !is_uint(f[5], max_attempt) ||
            !is_opt_uint(f[6], max_timeout_ms) || !PyUnicode_CheckExact(f[4]))
            return 0;
        int good = PyDict_Contains(good_groups, f[4]);
        if (good < 0) return -1;
        if (!good) return 0; /* not checked yet: the Python path checks (and remembers) */
        *out = entry(assign_type, f, 7);
    } else if (kind == 2) { /* ACK: task_id[, workers] */
        if (n < 1 || !is_name(f[0], max_task_id)) return 0;
        PyObject *items[2] = {f[0], Py_None};
        if (n > 1 && is_uint(f[1], max_workers)) items[1] = f[1];
        *out = entry(ack_type, items, 2);
    } else if (kind == 8) { /* DONE: worker_id, task_id */
        if (n < 2 || !is_name(f[0], max_worker_id) || !is_name(f[1], max_task_id)) return 0;
        *out = entry(done_type, f, 2);
    } else {
        return 0;
    }
    return *out == NULL ? -1 : 1;
}

static PyObject *qe_parse(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "parse(kind, entries: list)");
        return NULL;
    }
    if (submit_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "spreadqueue entries: setup() was not called");
        return NULL;
    }
    long kind = PyLong_AsLong(args[0]);
    if (kind == -1 && PyErr_Occurred()) return NULL;
    PyObject *entries = args[1];
    Py_ssize_t count = PyList_GET_SIZE(entries);
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *built = NULL;
        int r = one(kind, PyList_GET_ITEM(entries, i), &built);
        if (r <= 0) {
            Py_DECREF(out);
            if (r < 0) return NULL;
            Py_RETURN_NONE;
        }
        PyList_SET_ITEM(out, i, built);
    }
    return out;
}

static PyObject *qe_setup(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyDict_Check(args[5]) || !PyTuple_Check(args[6]) ||
        PyTuple_GET_SIZE(args[6]) != 7) {
        PyErr_SetString(PyExc_TypeError, "setup(Submit, Ack, Assign, Result, Done, good, limits)");
        return NULL;
    }
    for (int i = 0; i < 5; i++) {
        if (!PyType_Check(args[i]) || !PyType_IsSubtype((PyTypeObject *)args[i], &PyTuple_Type)) {
            PyErr_SetString(PyExc_TypeError, "setup: entry types must be tuple subclasses");
            return NULL;
        }
    }
    long long limits[7];
    for (int i = 0; i < 7; i++) {
        limits[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(args[6], i));
        if (limits[i] == -1 && PyErr_Occurred()) return NULL;
    }
    PyTypeObject **types[] = {&submit_type, &ack_type, &assign_type, &result_type, &done_type};
    for (int i = 0; i < 5; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*types[i], (PyTypeObject *)args[i]);
    }
    Py_INCREF(args[5]);
    Py_XSETREF(good_groups, args[5]);
    max_task_id = limits[0];
    max_worker_id = limits[1];
    max_func = limits[2];
    max_payload = limits[3];
    max_timeout_ms = limits[4];
    max_attempt = limits[5];
    max_workers = limits[6];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))qe_setup, METH_FASTCALL,
     "setup(Submit, Ack, Assign, Result, Done, good_groups, limits)"},
    {"parse", (PyCFunction)(void (*)(void))qe_parse, METH_FASTCALL,
     "parse(kind, entries) -> the entries built, or None: the Python path decides"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "spreadqueue._queue._entries",
    "The compiled fast path of the queue messages' entry checks (see messages.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__entries(void) { return PyModule_Create(&module); }
