/* Element-wise sigmoid and tanh over arrays, vectorised.
 *
 * The gate non-linearities dominate the cost of small recurrent layers. Where
 * glibc's vector math library (libmvec) is available, setup.py defines
 * SKLEARN_RNN_LIBMVEC and links it: the declarations below then let GCC turn
 * these loops into calls of libmvec's SIMD tanh/exp (<= 4 ulp), and
 * target_clones compiles one version per instruction set (AVX-512, AVX2,
 * baseline), picked at load time. Elsewhere the same loops call the scalar
 * libm functions. On x86-64 CPUs with AVX2 but not AVX-512, float sigmoid and
 * tanh are our own AVX2 versions below instead. The results do not depend on
 * the thread count either way.
 */
#ifndef SKLEARN_RNN_VECMATH_H
#define SKLEARN_RNN_VECMATH_H

#include <math.h>
#include <string.h>

#if defined(SKLEARN_RNN_LIBMVEC)
__attribute__((simd("notinbranch"))) float tanhf(float);
__attribute__((simd("notinbranch"))) double tanh(double);
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) double exp(double);
#endif

#if defined(SKLEARN_RNN_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
#define SR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SR_CLONES
#endif

/* sigmoid(x) = 1 / (1 + exp(-x)): exp(-x) may overflow to +inf for very
 * negative x, which correctly gives 0; it never produces NaN. */
SR_CLONES static void sr_sigmoid_f_libm(float *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));
}
SR_CLONES static void sr_sigmoid_d(double *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = 1.0 / (1.0 + exp(-x[i]));
}
SR_CLONES static void sr_tanh_f_libm(float *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = tanhf(x[i]);
}
SR_CLONES static void sr_tanh_d(double *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = tanh(x[i]);
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(SKLEARN_RNN_NO_ISA_DISPATCH)
/* Float sigmoid and tanh with AVX2 + FMA, used on CPUs that have AVX2 but
 * not AVX-512. On an AMD EPYC (about 2.6 GHz), 32 values per call, libmvec's
 * AVX2 versions cost 0.64 ns per value for sigmoid and 0.98 for tanh, about
 * half the time of a small LSTM layer; these take 0.50 and 0.70
 * (benchmarks/OPTIMISATIONS.md). Where AVX-512 is available libmvec's
 * 16-wide versions are kept: an AVX-512 sigmoid of our own was only 10-20%
 * faster there (0.27-0.30 against 0.34 ns), not worth a third version.
 *
 * exp(y): y = n ln2 + r with |r| <= ln2 / 2, exp(r) = 1 + r + r^2 q(r), q a
 * degree-4 polynomial fitted for minimum relative error (3e-9 in exact
 * arithmetic), times 2^n built in the exponent bits. y is clamped to
 * [-87.3, 88.3], where 2^n is a normal number.
 * sigmoid(x) = 1 / (1 + exp(-x)), and exactly 0 below x = -88.3 (libm's
 * float version gives 0 from -88.7: exp(-x) overflows there).
 * tanh(x) = x + x^3 p(x^2) for |x| < 0.55 (p of degree 3, fitted: 4e-8
 * relative), else sign(x) (1 - 2 / (exp(2|x|) + 1)), exactly +-1 from
 * |x| = 9.1. Against double precision, over 930,000 floats spread over
 * the whole range: sigmoid within 2.03 ulp (libmvec-based: 2.91), tanh
 * within 1.34 (libmvec: 1.02); below the smallest normal float, sigmoid is
 * within 1e-38. NaN stays NaN. */
#include <immintrin.h>
#define SR_VEC_AVX2 __attribute__((target("avx2,fma")))

SR_VEC_AVX2 static inline __m256 sr_exp8(__m256 y) {
    /* min/max return their second operand when one is NaN: NaN stays NaN */
    y = _mm256_max_ps(_mm256_set1_ps(-87.3f),
                      _mm256_min_ps(_mm256_set1_ps(88.3f), y));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* ln 2 in two parts: n * 0.693359375 is exact */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), y);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 q = _mm256_set1_ps(0.001381459180265665f);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.008368712849915028f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.04166838899254799f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.1666652113199234f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(0.4999999403953552f));
    __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r),
                             _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

SR_VEC_AVX2 static inline __m256 sr_sigmoid8(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, sr_exp8(
        _mm256_sub_ps(_mm256_setzero_ps(), x))));
    return _mm256_andnot_ps(
        _mm256_cmp_ps(x, _mm256_set1_ps(-88.3f), _CMP_LT_OQ), s);
}

SR_VEC_AVX2 static inline __m256 sr_tanh8(__m256 x) {
    __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a = _mm256_andnot_ps(sign, x);
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(0.01643737033009529f);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-0.05267168954014778f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(0.13320723176002502f));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-0.3333294689655304f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, x2), x, x);
    __m256 e = sr_exp8(_mm256_add_ps(a, a));
    __m256 t = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_div_ps(
        _mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    __m256 large = _mm256_or_ps(t, _mm256_and_ps(sign, x));
    return _mm256_blendv_ps(large, small,
                            _mm256_cmp_ps(a, _mm256_set1_ps(0.55f), _CMP_LT_OQ));
}

/* f over x[0:n], 8 at a time; the last n % 8 through a padded copy, so that
 * every value goes through the same instructions wherever it lies. */
#define SR_DEFINE_ARRAY8(NAME, F)                                             \
SR_VEC_AVX2 static void NAME(float *restrict x, int n) {                      \
    int i = 0;                                                                \
    for (; i + 8 <= n; i += 8)                                                \
        _mm256_storeu_ps(x + i, F(_mm256_loadu_ps(x + i)));                   \
    if (i < n) {                                                              \
        float tail[8] = {0};                                                  \
        memcpy(tail, x + i, sizeof(float) * (size_t) (n - i));                \
        _mm256_storeu_ps(tail, F(_mm256_loadu_ps(tail)));                     \
        memcpy(x + i, tail, sizeof(float) * (size_t) (n - i));                \
    }                                                                         \
}
SR_DEFINE_ARRAY8(sr_sigmoid_f_avx2, sr_sigmoid8)
SR_DEFINE_ARRAY8(sr_tanh_f_avx2, sr_tanh8)

/* 1 where the AVX2 versions are used; set when the module is loaded */
static int sr_act_avx2 = 0;

__attribute__((constructor)) static void sr_act_init(void) {
    __builtin_cpu_init();
    sr_act_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                  && !__builtin_cpu_supports("avx512f");
}

/* Units j..j+7 of the four gates of an LSTM row of 4n pre-activations x
 * (plus the bias b unless NULL): sigmoid on the input, forget and output
 * gates, tanh on the candidate; stored back into x and returned in v. The
 * same functions per value as sr_sigmoid8 and sr_tanh8, so the same bits as
 * separate calls. */
SR_VEC_AVX2 static inline void sr_lstm_gates8(float *restrict x,
                                              const float *restrict b, int n,
                                              int j, __m256 v[4]) {
    for (int k = 0; k < 4; k++) {
        __m256 a = _mm256_loadu_ps(x + k * n + j);
        if (b != NULL) a = _mm256_add_ps(a, _mm256_loadu_ps(b + k * n + j));
        v[k] = k == 2 ? sr_tanh8(a) : sr_sigmoid8(a);
        _mm256_storeu_ps(x + k * n + j, v[k]);
    }
}

/* The four gates of an LSTM row at once, n a multiple of 8 (see
 * sr_lstm_gates_f below): one step of 8 units of each gate per iteration,
 * four independent chains of instructions for the core to overlap. */
SR_VEC_AVX2 static void sr_lstm_gates_f_avx2(float *restrict x, int n) {
    __m256 v[4];
    for (int j = 0; j < n; j += 8) sr_lstm_gates8(x, NULL, n, j, v);
}

/* a * b rounded before it is added to anything: GCC would otherwise fuse
 * the multiply and a following add into one FMA, which rounds once */
SR_VEC_AVX2 static inline __m256 sr_mul8(__m256 a, __m256 b) {
    __m256 p = _mm256_mul_ps(a, b);
    __asm__("" : "+x"(p));
    return p;
}

/* One LSTM step of one row without peepholes or layer norm, n a multiple of
 * 8, in one pass over 8 units at a time: g (the 4n gate pre-activations
 * without the bias b) receives the gate activations i, f, z, o, then
 * c = f c + i z and h = o tanh(c), into h_out and h (and c into c_out,
 * tanh(c) into tc_out, unless NULL). The same values, products and sums,
 * each rounded, as lstm_row's separate loops. */
SR_VEC_AVX2 static void sr_lstm_cell_f_avx2(
        float *restrict g, const float *restrict b, float *restrict c,
        float *restrict c_out, float *restrict tc_out, float *restrict h_out,
        float *restrict h, int n) {
    __m256 v[4];
    for (int j = 0; j < n; j += 8) {
        sr_lstm_gates8(g, b, n, j, v);
        __m256 i = v[0], f = v[1], z = v[2], o = v[3];
        __m256 cj = _mm256_add_ps(sr_mul8(f, _mm256_loadu_ps(c + j)),
                                  sr_mul8(i, z));
        _mm256_storeu_ps(c + j, cj);
        if (c_out != NULL) _mm256_storeu_ps(c_out + j, cj);
        __m256 tc = sr_tanh8(cj);
        if (tc_out != NULL) _mm256_storeu_ps(tc_out + j, tc);
        __m256 hj = _mm256_mul_ps(o, tc);
        _mm256_storeu_ps(h_out + j, hj);
        _mm256_storeu_ps(h + j, hj);
    }
}

/* The backward step of one LSTM row without peepholes or layer norm, n a
 * multiple of 8, 8 units at a time: from the gate activations g (i, f, z, o),
 * tanh(c_t) tc and c_{t-1} c_prev, dh (dL/dh_t, zeroed on exit) and dc
 * (dL/dc_t so far, dL/dc_{t-1} on exit), fills dg (dL/d gate
 * pre-activations). The same products and sums, each rounded, in the same
 * order, as lstm_row_back's loops. */
SR_VEC_AVX2 static void sr_lstm_back_f_avx2(
        const float *restrict g, const float *restrict tc,
        const float *restrict c_prev, float *restrict dh, float *restrict dc,
        float *restrict dg, int n) {
    __m256 one = _mm256_set1_ps(1.0f);
    for (int j = 0; j < n; j += 8) {
        __m256 i = _mm256_loadu_ps(g + j), f = _mm256_loadu_ps(g + n + j);
        __m256 z = _mm256_loadu_ps(g + 2 * n + j);
        __m256 o = _mm256_loadu_ps(g + 3 * n + j);
        __m256 t = _mm256_loadu_ps(tc + j), d_h = _mm256_loadu_ps(dh + j);
        _mm256_storeu_ps(dg + 3 * n + j, _mm256_mul_ps(_mm256_mul_ps(
            _mm256_mul_ps(d_h, t), o), _mm256_sub_ps(one, o)));
        __m256 d_c = _mm256_add_ps(_mm256_loadu_ps(dc + j), sr_mul8(
            _mm256_mul_ps(d_h, o), _mm256_sub_ps(one, sr_mul8(t, t))));
        _mm256_storeu_ps(dg + j, _mm256_mul_ps(_mm256_mul_ps(
            _mm256_mul_ps(d_c, z), i), _mm256_sub_ps(one, i)));
        _mm256_storeu_ps(dg + n + j, _mm256_mul_ps(_mm256_mul_ps(
            _mm256_mul_ps(d_c, _mm256_loadu_ps(c_prev + j)), f),
            _mm256_sub_ps(one, f)));
        _mm256_storeu_ps(dg + 2 * n + j, _mm256_mul_ps(
            _mm256_mul_ps(d_c, i), _mm256_sub_ps(one, sr_mul8(z, z))));
        _mm256_storeu_ps(dc + j, _mm256_mul_ps(d_c, f));
        _mm256_storeu_ps(dh + j, _mm256_setzero_ps());
    }
}

static void sr_sigmoid_f(float *restrict x, int n) {
    if (sr_act_avx2) sr_sigmoid_f_avx2(x, n); else sr_sigmoid_f_libm(x, n);
}
static void sr_tanh_f(float *restrict x, int n) {
    if (sr_act_avx2) sr_tanh_f_avx2(x, n); else sr_tanh_f_libm(x, n);
}
#define SR_HAVE_LSTM_GATES_AVX2 1
#else
#define sr_sigmoid_f sr_sigmoid_f_libm
#define sr_tanh_f sr_tanh_f_libm
#endif

/* x[0:2n] = sigmoid (input and forget gates), x[2n:3n] = tanh (cell
 * candidate), x[3n:4n] = sigmoid (output gate): one LSTM row's gates. */
#define SR_DEFINE_LSTM_GATES(NAME, T, SIGMOID, TANH)                          \
static void NAME(T *restrict x, int n) {                                      \
    SIGMOID(x, 2 * n);                                                        \
    TANH(x + 2 * n, n);                                                       \
    SIGMOID(x + 3 * n, n);                                                    \
}
SR_DEFINE_LSTM_GATES(sr_lstm_gates_f_separate, float, sr_sigmoid_f, sr_tanh_f)
SR_DEFINE_LSTM_GATES(sr_lstm_gates_d, double, sr_sigmoid_d, sr_tanh_d)

static void sr_lstm_gates_f(float *restrict x, int n) {
#if defined(SR_HAVE_LSTM_GATES_AVX2)
    if (sr_act_avx2 && n % 8 == 0) {
        sr_lstm_gates_f_avx2(x, n);
        return;
    }
#endif
    sr_lstm_gates_f_separate(x, n);
}

/* sr_lstm_back_f_avx2 where the CPU and n allow it: returns 1, else 0 (the
 * caller then runs the step itself). */
static int sr_lstm_back_f(const float *restrict g, const float *restrict tc,
                          const float *restrict c_prev, float *restrict dh,
                          float *restrict dc, float *restrict dg, int n) {
#if defined(SR_HAVE_LSTM_GATES_AVX2)
    if (sr_act_avx2 && n % 8 == 0) {
        sr_lstm_back_f_avx2(g, tc, c_prev, dh, dc, dg, n);
        return 1;
    }
#endif
    return 0;
}

/* sr_lstm_cell_f_avx2 where the CPU and n allow it: returns 1, else 0 (the
 * caller then runs the step itself). */
static int sr_lstm_cell_f(float *restrict g, const float *restrict b,
                          float *restrict c, float *restrict c_out,
                          float *restrict tc_out, float *restrict h_out,
                          float *restrict h, int n) {
#if defined(SR_HAVE_LSTM_GATES_AVX2)
    if (sr_act_avx2 && n % 8 == 0) {
        sr_lstm_cell_f_avx2(g, b, c, c_out, tc_out, h_out, h, n);
        return 1;
    }
#endif
    return 0;
}

#endif
