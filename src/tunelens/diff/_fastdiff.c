/* The streaming diff's per-element statistics in one pass (tunelens.diff.stats, "fused kernel").
 *
 * Why: with the page cache warm, the torch path makes ~15 passes over each 256K-element chunk of a changed
 * tensor (copy, subtract, |.|, four masks, two bf16 roundings, a mat-vec, a sum), each a separate kernel of
 * 40-70 us; the diff ran at a quarter of the speed the machine copies the files. Here each element is read once
 * from the checkpoint's own buffer (fp32, fp16 or bf16) and every statistic is updated from registers.
 *
 * What it computes, exactly as DeltaAccumulator's torch path does (tests/test_diff.py pins the two):
 *   w, t converted to fp32 (exact for fp16/bf16), d = t - w in fp32;
 *   sums   ww = sum w*w, wd = sum w*d, dd = sum d*d   (fp32 products and partial sums over blocks of
 *          BLOCK elements in LANES independent lanes, blocks added in double: the torch path's fp32 dot over a
 *          256K chunk is no more exact);
 *   counts d != 0;  |d| > tol_abs;  |d| > tol_rel*|w|;  bf16(w) != bf16(t) compared as floats (round to nearest
 *          even; -0 equals +0; NaN differs from everything), or d != 0 when both were bf16 already;
 *   keep   d written as fp32 when a destination is given.
 * The GIL is released: DeltaAccumulator's worker threads each run a span.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
#define BLOCK 4096

enum { F32 = 0, F16 = 1, BF16 = 2 };

static inline float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* exact for normals, subnormals, infinities and NaNs; plain integer and float operations, so the lanes vectorise
 * (a _Float16 cast becomes a library call per element in gcc 12) */
static inline float from_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7FFFu, u = em << 13;
    float f;
    memcpy(&f, &u, 4);
    f *= 0x1p112f; /* rebias the exponent from 15 to 127; a subnormal becomes the normal of the same value */
    memcpy(&u, &f, 4);
    uint32_t special = 0u - (uint32_t)(em >= 0x7C00u); /* inf, NaN: all ones (no branch: the loop vectorises) */
    u = (u & ~special) | (((em << 13) | 0x7F800000u) & special);
    u |= sign;
    memcpy(&f, &u, 4);
    return f;
}

static inline float load(int dtype, const void *p, Py_ssize_t i) {
    if (dtype == F32) return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dtype == BF16 ? from_bf16(h) : from_f16(h);
}

/* fp32 -> bf16 -> fp32, round to nearest even (torch's conversion); NaN stays NaN */
static inline float round_bf16(float f) {
    uint32_t u, keep_nan = 0u - (uint32_t)(f != f);
    memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    u = (u & keep_nan) | (r & ~keep_nan);
    memcpy(&f, &u, 4);
    return f;
}

#define STATS_LOOP(DT)                                                                                       \
    for (Py_ssize_t b0 = 0; b0 < n; b0 += BLOCK) {                                                          \
        Py_ssize_t b1 = b0 + BLOCK < n ? b0 + BLOCK : n;                                                    \
        float sww[LANES] = {0}, swd[LANES] = {0}, sdd[LANES] = {0};                                         \
        int32_t c0[LANES] = {0}, c1[LANES] = {0}, c2[LANES] = {0}, c3[LANES] = {0};                          \
        Py_ssize_t i = b0;                                                                                  \
        for (; i + LANES <= b1; i += LANES) {                                                               \
            for (int l = 0; l < LANES; l++) {                                                               \
                float w = load(DT, wp, i + l), t = load(DT, tp, i + l), d = t - w, a = fabsf(d);            \
                sww[l] += w * w; swd[l] += w * d; sdd[l] += d * d;                                          \
                c0[l] += d != 0.0f; c1[l] += a > tol_abs; c2[l] += a > fabsf(w) * tol_rel;                  \
                c3[l] += bf16_exact ? (d != 0.0f) : (round_bf16(w) != round_bf16(t));                      \
                if (keep) keep[i + l] = d;                                                                  \
            }                                                                                               \
        }                                                                                                   \
        for (; i < b1; i++) {                                                                               \
            float w = load(DT, wp, i), t = load(DT, tp, i), d = t - w, a = fabsf(d);                        \
            sww[0] += w * w; swd[0] += w * d; sdd[0] += d * d;                                              \
            c0[0] += d != 0.0f; c1[0] += a > tol_abs; c2[0] += a > fabsf(w) * tol_rel;                      \
            c3[0] += bf16_exact ? (d != 0.0f) : (round_bf16(w) != round_bf16(t));                          \
            if (keep) keep[i] = d;                                                                          \
        }                                                                                                   \
        for (int l = 0; l < LANES; l++) {                                                                   \
            out[0] += sww[l]; out[1] += swd[l]; out[2] += sdd[l];                                           \
            out[3] += c0[l]; out[4] += c1[l]; out[5] += c2[l]; out[6] += c3[l];                             \
        }                                                                                                   \
    }

/* one function per input dtype, so the loads are known at compile time and the lanes vectorise */
#define DEFINE_STATS(NAME, DT)                                                                               \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static void NAME(                          \
        const void *wp, const void *tp, Py_ssize_t n, float *keep, int bf16_exact, float tol_abs,            \
        float tol_rel, double *out) {                                                                        \
        STATS_LOOP(DT)                                                                                      \
    }

DEFINE_STATS(stats_f32, F32)
DEFINE_STATS(stats_f16, F16)
DEFINE_STATS(stats_bf16, BF16)

#define DEFINE_SUMSQ(NAME, DT)                                                                               \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"))) static double NAME(const void *wp,         \
                                                                                     Py_ssize_t n) {         \
        double total = 0.0;                                                                                 \
        for (Py_ssize_t b0 = 0; b0 < n; b0 += BLOCK) {                                                      \
            Py_ssize_t b1 = b0 + BLOCK < n ? b0 + BLOCK : n;                                                \
            float s[LANES] = {0};                                                                           \
            Py_ssize_t i = b0;                                                                              \
            for (; i + LANES <= b1; i += LANES)                                                             \
                for (int l = 0; l < LANES; l++) {                                                           \
                    float w = load(DT, wp, i + l);                                                          \
                    s[l] += w * w;                                                                          \
                }                                                                                           \
            for (; i < b1; i++) {                                                                           \
                float w = load(DT, wp, i);                                                                  \
                s[0] += w * w;                                                                              \
            }                                                                                               \
            for (int l = 0; l < LANES; l++) total += s[l];                                                  \
        }                                                                                                   \
        return total;                                                                                       \
    }

DEFINE_SUMSQ(sumsq_f32, F32)
DEFINE_SUMSQ(sumsq_f16, F16)
DEFINE_SUMSQ(sumsq_bf16, BF16)

static int dtype_ok(int dtype) {
    if (dtype >= F32 && dtype <= BF16) return 1;
    PyErr_SetString(PyExc_ValueError, "dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    return 0;
}

/* Whether t equals w bit for bit, block by block (memcmp), and w's sum of squares from the block just compared
 * (still in cache): one read of each for an unchanged span; -1 at the first differing block. */
static double same_sumsq(int dtype, const char *wp, const char *tp, Py_ssize_t n) {
    size_t size = dtype == F32 ? 4 : 2;
    double total = 0.0;
    for (Py_ssize_t b0 = 0; b0 < n; b0 += BLOCK) {
        Py_ssize_t k = b0 + BLOCK < n ? BLOCK : n - b0;
        if (memcmp(wp + b0 * size, tp + b0 * size, k * size)) return -1.0;
        const void *w = wp + b0 * size;
        total += dtype == F32 ? sumsq_f32(w, k) : dtype == F16 ? sumsq_f16(w, k) : sumsq_bf16(w, k);
    }
    return total;
}

static PyObject *py_same_sumsq(PyObject *self, PyObject *args) {
    int dtype;
    unsigned long long w, t;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iKKn", &dtype, &w, &t, &n)) return NULL;
    if (!dtype_ok(dtype)) return NULL;
    double total;
    Py_BEGIN_ALLOW_THREADS
    total = same_sumsq(dtype, (const char *)(uintptr_t)w, (const char *)(uintptr_t)t, n);
    Py_END_ALLOW_THREADS
    if (total < 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(total);
}

static PyObject *py_stats(PyObject *self, PyObject *args) {
    int dtype, bf16_exact;
    unsigned long long w, t, keep, out;
    Py_ssize_t n;
    float tol_abs, tol_rel;
    if (!PyArg_ParseTuple(args, "iKKnKpffK", &dtype, &w, &t, &n, &keep, &bf16_exact, &tol_abs, &tol_rel, &out))
        return NULL;
    if (!dtype_ok(dtype)) return NULL;
    double *o = (double *)(uintptr_t)out;
    Py_BEGIN_ALLOW_THREADS
    const void *wp = (const void *)(uintptr_t)w, *tp = (const void *)(uintptr_t)t;
    float *kp = (float *)(uintptr_t)keep;
    if (dtype == F32) stats_f32(wp, tp, n, kp, bf16_exact, tol_abs, tol_rel, o);
    else if (dtype == F16) stats_f16(wp, tp, n, kp, bf16_exact, tol_abs, tol_rel, o);
    else stats_bf16(wp, tp, n, kp, bf16_exact, tol_abs, tol_rel, o);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_sumsq(PyObject *self, PyObject *args) {
    int dtype;
    unsigned long long w;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iKn", &dtype, &w, &n)) return NULL;
    if (!dtype_ok(dtype)) return NULL;
    double total;
    Py_BEGIN_ALLOW_THREADS
    const void *wp = (const void *)(uintptr_t)w;
    total = dtype == F32 ? sumsq_f32(wp, n) : dtype == F16 ? sumsq_f16(wp, n) : sumsq_bf16(wp, n);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"stats", py_stats, METH_VARARGS,
     "stats(dtype, w_ptr, t_ptr, n, keep_ptr, bf16_exact, tol_abs, tol_rel, out_ptr): add ww, wd, dd and the four "
     "counts of n elements to the 7 doubles at out_ptr; write d to keep_ptr (fp32) unless it is 0"},
    {"sumsq", py_sumsq, METH_VARARGS, "sumsq(dtype, w_ptr, n) -> sum of w*w"},
    {"same_sumsq", py_same_sumsq, METH_VARARGS,
     "same_sumsq(dtype, w_ptr, t_ptr, n) -> sum of w*w if t is w bit for bit, else None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastdiff",
                                    "One-pass weight-diff statistics (see the C source's header)", -1, methods};

PyMODINIT_FUNC PyInit__fastdiff(void) { return PyModule_Create(&module); }
