/* The recorder's hot path in C: runs of client audio appends turned into spool audio and log lines.

Rules of this module:
- It is an accelerator, never a second definition of the format. ``caller_run`` produces exactly
  the bytes ``SessionWriter._caller_fast`` produces for the same events (tests compare the two on
  generated input); anything it is not certain about stops the run, and the Python paths take
  that event.
- It reads the writer's state as arguments and returns the new state; it keeps none of its own
  but the functions ``setup`` hands it (SHA-256 from the process's libcrypto, pybase64's decoder).
- A run stops before an event that is not a client ``input_audio_buffer.append`` in the compact
  form (``"audio":"<base64>"}`` as the last top-level member, no nested value before it, ASCII
  text, no line break), that does not decode as strict base64 into whole samples, or that would
  open a silence gap longer than ``max_gap`` frames.
*/

#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* libcrypto's low-level SHA-256 (SHA256_Init / _Update / _Final): the one-shot SHA256() of
   OpenSSL 3 fetches the algorithm by name on every call, which costs more than hashing 1 KB. The
   context is opaque here: OpenSSL's SHA256_CTX is 112 bytes, CTX_SPACE leaves room to spare. */
#define CTX_SPACE 256
typedef int (*sha256_init_fn)(void *ctx);
typedef int (*sha256_update_fn)(void *ctx, const void *data, size_t len);
typedef int (*sha256_final_fn)(unsigned char *md, void *ctx);

static sha256_init_fn sha_init_ = NULL;
static sha256_update_fn sha_update_ = NULL;
static sha256_final_fn sha_final_ = NULL;

static int sha256_(const unsigned char *data, size_t len, unsigned char *md) {
    _Alignas(16) unsigned char ctx[CTX_SPACE];
    return sha_init_(ctx) == 1 && sha_update_(ctx, data, len) == 1 && sha_final_(md, ctx) == 1;
}
static PyObject *b64decode_ = NULL;
static PyObject *c2u_ = NULL;
static PyObject *caller_type_ = NULL;
static PyObject *str_type_ = NULL;
static PyObject *str_text_ = NULL;
static PyObject *str_direction_ = NULL;
static PyObject *str_popleft_ = NULL;

static const char HEX[] = "0123456789abcdef";

static void hexlify(const unsigned char *digest, char *out) {
    for (int k = 0; k < 32; k++) {
        out[2 * k] = HEX[digest[k] >> 4];
        out[2 * k + 1] = HEX[digest[k] & 15];
    }
}

/* A growable byte buffer. */
typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = PyMem_Realloc(b->data, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static void buf_put(Buf *b, const void *src, Py_ssize_t n) {
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
}

static void buf_int(Buf *b, long long v) {
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? (unsigned long long)(-v) : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[n++] = '-';
    while (n)
        b->data[b->len++] = tmp[--n];
}

static const char *last_quote(const char *s, Py_ssize_t n) {
#ifdef __GLIBC__
    return memrchr(s, '"', (size_t)n);
#else
    while (n > 0)
        if (s[--n] == '"')
            return s + n;
    return NULL;
#endif
}

/* The value's start in a compact client append, or -1 (see the module rules). The value is what
   lies between the last two quotes; its characters are checked by the strict decoder (a backslash
   or anything else outside base64 fails it), so no escape can hide in it. */
static Py_ssize_t locate_audio(const char *s, Py_ssize_t n) {
    if (n < 12 || s[n - 1] != '}' || s[n - 2] != '"')
        return -1;
    const char *open = last_quote(s, n - 2);
    if (open == NULL)
        return -1;
    Py_ssize_t i = open - s + 1;
    if (i == n - 2 || i < 10)
        return -1;
    Py_ssize_t k; /* the colon */
    if (s[i - 2] == ':')
        k = i - 2;
    else if (s[i - 2] == ' ' && s[i - 3] == ':')
        k = i - 3;
    else
        return -1;
    if (k < 8 || memcmp(s + k - 7, "\"audio\"", 7) != 0)
        return -1;
    Py_ssize_t q = k - 7; /* the key's opening quote: it must follow '{' or ',' (a space allowed) */
    char c = s[q - 1];
    if (c == ' ' && q >= 2)
        c = s[q - 2];
    if (c != ',' && !(c == '{' && (q - 1 == 0 || (s[q - 1] == ' ' && q - 2 == 0))))
        return -1;
    if (s[0] != '{')
        return -1;
    for (Py_ssize_t j = 0; j < i; j++) {
        char ch = s[j];
        if ((ch == '{' && j > 0) || ch == '[' || ch == '\n' || ch == '\r')
            return -1;
    }
    return i;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    unsigned long long init, update, final;
    PyObject *decoder, *c2u, *caller_type;
    if (!PyArg_ParseTuple(args, "KKKOOU", &init, &update, &final, &decoder, &c2u, &caller_type))
        return NULL;
    if (init == 0 || update == 0 || final == 0 || !PyCallable_Check(decoder)) {
        PyErr_SetString(PyExc_ValueError, "setup needs SHA256_Init/_Update/_Final and a base64 decoder");
        return NULL;
    }
    sha_init_ = (sha256_init_fn)(uintptr_t)init;
    sha_update_ = (sha256_update_fn)(uintptr_t)update;
    sha_final_ = (sha256_final_fn)(uintptr_t)final;
    Py_XSETREF(b64decode_, Py_NewRef(decoder));
    Py_XSETREF(c2u_, Py_NewRef(c2u));
    Py_XSETREF(caller_type_, Py_NewRef(caller_type));
    Py_RETURN_NONE;
}

static PyObject *sha256_hex(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (sha_init_ == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned char md[32];
    char hex[64];
    int ok = sha256_((const unsigned char *)view.buf, (size_t)view.len, md);
    PyBuffer_Release(&view);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto's SHA-256 failed");
        return NULL;
    }
    hexlify(md, hex);
    return PyBytes_FromStringAndSize(hex, 64);
}

/* Decode text[i:n-2] strictly; a new bytes object, or NULL with no error set when it is not
   strict base64 of whole samples (the Python paths decide what to do with it). */
static PyObject *decode(const char *s, Py_ssize_t i, Py_ssize_t end, Py_ssize_t sb) {
    PyObject *view = PyMemoryView_FromMemory((char *)s + i, end - i, PyBUF_READ);
    if (view == NULL)
        return NULL;
    PyObject *argv[3] = {view, Py_None, Py_True};
    PyObject *data = PyObject_Vectorcall(b64decode_, argv, 3, NULL);
    Py_DECREF(view);
    if (data == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError)) /* binascii.Error is a ValueError */
            PyErr_Clear();
        return NULL;
    }
    if (!PyBytes_Check(data) || PyBytes_GET_SIZE(data) == 0 || PyBytes_GET_SIZE(data) % sb != 0) {
        Py_DECREF(data);
        return NULL;
    }
    return data;
}

/* caller_run(q, limit, head, seq, prefix, left_end, tolerance, rate, silence, max_gap)
   -> None | (count, head, seq, lines, audio, first_frame, left_end, frames, last_t_us) */
static PyObject *caller_run(PyObject *self, PyObject *args) {
    PyObject *q, *head_obj, *prefix_obj, *silence_obj;
    Py_ssize_t limit;
    long long seq, left_end, tolerance, rate, max_gap;
    if (!PyArg_ParseTuple(args, "OnSLSLLLSL", &q, &limit, &head_obj, &seq, &prefix_obj, &left_end,
                          &tolerance, &rate, &silence_obj, &max_gap))
        return NULL;
    if (sha_init_ == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "setup() was not called");
        return NULL;
    }
    if (PyBytes_GET_SIZE(head_obj) != 32) {
        PyErr_SetString(PyExc_ValueError, "head must be a 32-byte digest");
        return NULL;
    }
    const char *prefix = PyBytes_AS_STRING(prefix_obj);
    Py_ssize_t prefix_len = PyBytes_GET_SIZE(prefix_obj);
    const char *silence = PyBytes_AS_STRING(silence_obj);
    Py_ssize_t sb = PyBytes_GET_SIZE(silence_obj);
    if (sb < 1 || sb > 4 || rate <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad sample format");
        return NULL;
    }
    unsigned char head[32];
    memcpy(head, PyBytes_AS_STRING(head_obj), 32);

    Buf lines = {0}, audio = {0}, chain = {0};
    long long first_frame = left_end, frames = 0, last_t = -1;
    Py_ssize_t count = 0;
    PyObject *result = NULL;

    while (count < limit && PyObject_Length(q) > 0) {
        PyObject *item = PySequence_GetItem(q, 0);
        if (item == NULL)
            goto fail;
        PyObject *ev = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 3 ? PyTuple_GET_ITEM(item, 0) : NULL;
        PyObject *t_obj = ev ? PyTuple_GET_ITEM(item, 2) : NULL;
        PyObject *etype = NULL, *dir = NULL, *text = NULL, *data = NULL;
        int ok = ev != NULL && !PyUnicode_Check(ev) && PyLong_CheckExact(t_obj);
        if (ok) {
            etype = PyObject_GetAttr(ev, str_type_);
            if (etype == NULL) {
                Py_DECREF(item);
                goto fail;
            }
            ok = PyUnicode_Check(etype) && PyUnicode_Compare(etype, caller_type_) == 0;
            Py_DECREF(etype);
            if (ok) {
                dir = PyObject_GetAttr(ev, str_direction_);
                if (dir == NULL) {
                    Py_DECREF(item);
                    goto fail;
                }
                ok = dir == c2u_;
                Py_DECREF(dir);
            }
            if (ok) {
                text = PyObject_GetAttr(ev, str_text_);
                if (text == NULL) {
                    Py_DECREF(item);
                    goto fail;
                }
                ok = PyUnicode_CheckExact(text) && PyUnicode_IS_COMPACT_ASCII(text);
            }
            if (PyErr_Occurred()) {
                PyErr_Clear();
                ok = 0;
            }
        }
        long long t_us = ok ? PyLong_AsLongLong(t_obj) : -1;
        if (t_us < 0) {
            PyErr_Clear();
            ok = 0;
        }
        const char *s = NULL;
        Py_ssize_t n = 0, i = -1;
        if (ok) {
            s = (const char *)PyUnicode_DATA(text);
            n = PyUnicode_GET_LENGTH(text);
            i = locate_audio(s, n);
            ok = i > 0;
        }
        if (ok) {
            data = decode(s, i, n - 2, sb);
            if (data == NULL && PyErr_Occurred()) {
                Py_DECREF(text);
                Py_DECREF(item);
                goto fail;
            }
            ok = data != NULL;
        }
        long long nframes = 0, start = 0, gap = 0;
        if (ok) {
            nframes = PyBytes_GET_SIZE(data) / sb;
            long long at = t_us * rate / 1000000; /* t_us >= 0: floor division */
            long long ideal = at - nframes;
            start = ideal > left_end + tolerance ? ideal : left_end;
            gap = start - left_end;
            ok = gap <= max_gap;
        }
        Py_DECREF(item);
        if (!ok) {
            Py_XDECREF(text);
            Py_XDECREF(data);
            break;
        }
        /* Committed: take the item off the queue, lay the audio, write the line. */
        PyObject *popped = PyObject_CallMethodNoArgs(q, str_popleft_);
        if (popped == NULL) {
            Py_DECREF(text);
            Py_DECREF(data);
            goto fail;
        }
        Py_DECREF(popped);
        Py_ssize_t nbytes = PyBytes_GET_SIZE(data);
        Py_ssize_t pre_len = i - 1; /* the text before the value's opening quote */
        if (buf_reserve(&audio, (Py_ssize_t)gap * sb + nbytes) < 0 ||
            buf_reserve(&chain, 512 + prefix_len + pre_len) < 0) {
            Py_DECREF(text);
            Py_DECREF(data);
            goto fail;
        }
        if (sb == 1) {
            memset(audio.data + audio.len, silence[0], (size_t)gap);
            audio.len += (Py_ssize_t)gap;
        } else {
            for (long long g = 0; g < gap; g++)
                buf_put(&audio, silence, sb);
        }
        buf_put(&audio, PyBytes_AS_STRING(data), nbytes);

        unsigned char md[32];
        char hex[64];
        int hashed = sha256_((const unsigned char *)PyBytes_AS_STRING(data), (size_t)nbytes, md);
        hexlify(md, hex);
        Py_DECREF(data);
        if (!hashed) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_RuntimeError, "libcrypto's SHA-256 failed");
            goto fail;
        }

        /* chain.data holds: head (32 bytes) + body + "}" : the chain hash's input. */
        chain.len = 0;
        buf_put(&chain, head, 32);
        Py_ssize_t body_at = chain.len;
        buf_put(&chain, "{\"seq\":", 7);
        buf_int(&chain, seq);
        buf_put(&chain, ",\"t_us\":", 8);
        buf_int(&chain, t_us);
        buf_put(&chain, prefix, prefix_len);
        buf_put(&chain, s, pre_len);
        buf_put(&chain, "{\"track\":\"caller\",\"offset\":", 27);
        buf_int(&chain, start);
        buf_put(&chain, ",\"duration\":", 12);
        buf_int(&chain, nframes);
        buf_put(&chain, ",\"bytes\":", 9);
        buf_int(&chain, nbytes);
        buf_put(&chain, ",\"sha256\":\"", 11);
        buf_put(&chain, hex, 64);
        buf_put(&chain, "\"}}", 3);
        Py_DECREF(text);
        Py_ssize_t body_len = chain.len - body_at;
        buf_put(&chain, "}", 1);
        if (!sha256_((const unsigned char *)chain.data, (size_t)chain.len, head)) {
            PyErr_SetString(PyExc_RuntimeError, "libcrypto's SHA-256 failed");
            goto fail;
        }
        hexlify(head, hex);

        if (buf_reserve(&lines, body_len + 80) < 0)
            goto fail;
        buf_put(&lines, chain.data + body_at, body_len);
        buf_put(&lines, ",\"hash\":\"", 9);
        buf_put(&lines, hex, 64);
        buf_put(&lines, "\"}\n", 3);

        seq += 1;
        left_end = start + nframes;
        frames += nframes;
        if (t_us > last_t)
            last_t = t_us;
        count++;
    }
    if (count == 0) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue("(ny#Ly#y#LLLL)", count, (const char *)head, (Py_ssize_t)32, seq, lines.data,
                               lines.len, audio.data, audio.len, first_frame, left_end, frames, last_t);
    }
fail:
    PyMem_Free(lines.data);
    PyMem_Free(audio.data);
    PyMem_Free(chain.data);
    return result;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, "setup(sha256_init, sha256_update, sha256_final, b64decode, c2u, caller_type): addresses"},
    {"caller_run", caller_run, METH_VARARGS, "A run of client audio appends: see the module rules."},
    {"sha256_hex", sha256_hex, METH_O, "The hex SHA-256 of a bytes-like object (checks setup)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    str_type_ = PyUnicode_InternFromString("type");
    str_text_ = PyUnicode_InternFromString("text");
    str_direction_ = PyUnicode_InternFromString("direction");
    str_popleft_ = PyUnicode_InternFromString("popleft");
    if (!str_type_ || !str_text_ || !str_direction_ || !str_popleft_)
        return NULL;
    return PyModule_Create(&module);
}
