/* Element-wise sigmoid and tanh over arrays, vectorised.
 *
 * The gate non-linearities dominate the cost of small recurrent layers. Where
 * glibc's vector math library (libmvec) is available, setup.py defines
 * SKLEARN_RNN_LIBMVEC and links it: the declarations below then let GCC turn
 * these loops into calls of libmvec's SIMD tanh/exp (<= 4 ulp), one version
 * per instruction set (AVX-512, AVX2, baseline), picked at load time.
 * Elsewhere the same loops call the scalar libm functions. On x86-64 CPUs
 * with AVX2 (or AVX-512), float sigmoid and tanh are our own vectorised
 * versions below instead. The results do not depend on the thread count
 * either way.
 */
#ifndef SKLEARN_RNN_VECMATH_H
#define SKLEARN_RNN_VECMATH_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "_isa.h"

#if defined(SKLEARN_RNN_LIBMVEC)
__attribute__((simd("notinbranch"))) float tanhf(float);
__attribute__((simd("notinbranch"))) double tanh(double);
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) double exp(double);
#endif

/* sigmoid(x) = 1 / (1 + exp(-x)): exp(-x) may overflow to +inf for very
 * negative x, which correctly gives 0; it never produces NaN. With libmvec
 * on x86-64, each loop is compiled three times (AVX-512, AVX2, baseline:
 * GCC calls libmvec's version of that width), and the widest that the CPU
 * and the environment allow (_isa.h) is picked when the module is loaded. */
#define SR_DEFINE_LIBM_LOOPS(SFX, ATTR)                                       \
ATTR static void sr_sigmoid_f_libm##SFX(float *restrict x, int n) {           \
    for (int i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));           \
}                                                                             \
ATTR static void sr_sigmoid_d##SFX(double *restrict x, int n) {               \
    for (int i = 0; i < n; i++) x[i] = 1.0 / (1.0 + exp(-x[i]));              \
}                                                                             \
ATTR static void sr_tanh_f_libm##SFX(float *restrict x, int n) {              \
    for (int i = 0; i < n; i++) x[i] = tanhf(x[i]);                           \
}                                                                             \
ATTR static void sr_tanh_d##SFX(double *restrict x, int n) {                  \
    for (int i = 0; i < n; i++) x[i] = tanh(x[i]);                            \
}

#if defined(SKLEARN_RNN_LIBMVEC) && defined(__x86_64__) && defined(__GNUC__)
SR_DEFINE_LIBM_LOOPS(_avx512, __attribute__((target("avx512f"))))
SR_DEFINE_LIBM_LOOPS(_avx2, __attribute__((target("avx2,fma"))))
SR_DEFINE_LIBM_LOOPS(_base, )

/* 2: the AVX-512 loops, 1: AVX2, 0: baseline; set when the module is loaded */
static int sr_libm_isa = 0;

__attribute__((constructor)) static void sr_libm_isa_init(void) {
    sr_libm_isa = sr_isa();
}

#define SR_DEFINE_LIBM_DISPATCH(NAME, T)                                      \
static void NAME(T *restrict x, int n) {                                      \
    if (sr_libm_isa == 2) NAME##_avx512(x, n);                                \
    else if (sr_libm_isa == 1) NAME##_avx2(x, n);                             \
    else NAME##_base(x, n);                                                   \
}
SR_DEFINE_LIBM_DISPATCH(sr_sigmoid_f_libm, float)
SR_DEFINE_LIBM_DISPATCH(sr_sigmoid_d, double)
SR_DEFINE_LIBM_DISPATCH(sr_tanh_f_libm, float)
SR_DEFINE_LIBM_DISPATCH(sr_tanh_d, double)
#else
SR_DEFINE_LIBM_LOOPS(, )
#endif

#if defined(__GNUC__) && defined(__x86_64__) && !defined(SKLEARN_RNN_NO_ISA_DISPATCH)
/* Float sigmoid and tanh of our own, written once with GCC's vector types and
 * compiled for two widths: 8 floats with AVX2 + FMA, 16 with AVX-512. Each
 * value goes through the same operations at either width, so the results
 * are the same bits on both (the tests compare them). On an AMD EPYC (about
 * 2.6 GHz, AVX2), 32 values per call, libmvec's AVX2 versions cost 0.64 ns
 * per value for sigmoid and 0.98 for tanh, about half the time of a small
 * LSTM layer; these take 0.50 and 0.70 (benchmarks/OPTIMISATIONS.md). With
 * AVX-512, libmvec's float sigmoid (expf, then 1 / (1 + e)) also reached
 * 3.1 ulp; these are inlined into the one-pass LSTM and GRU steps below,
 * where a call of libmvec would spill every vector register.
 *
 * exp(y): y = n ln2 + r with |r| <= ln2 / 2, exp(r) = 1 + r + r^2 q(r), q a
 * degree-4 polynomial fitted for minimum relative error (3e-9 in exact
 * arithmetic), times 2^n (sr_scale). y is clamped to [-87.3, 88.3], where
 * 2^n is a normal number.
 * sigmoid(x) = 1 / (1 + exp(-x)), and exactly 0 below x = -88.3 (libm's
 * float version gives 0 from -88.7: exp(-x) overflows there).
 * tanh(x) = x + x^3 p(x^2) for |x| < 0.55 (p of degree 3, fitted: 4e-8
 * relative), else sign(x) (1 - 2 / (exp(2|x|) + 1)), exactly +-1 from
 * |x| = 9.1. Against double precision, over 930,000 floats spread over
 * the whole range: sigmoid within 2.03 ulp (libmvec-based: 2.91 to 3.1),
 * tanh within 1.34 (libmvec: 1.02); below the smallest normal float,
 * sigmoid is within 1e-38. NaN stays NaN. */
#include <immintrin.h>
#define SR_VEC_AVX2 __attribute__((target("avx2,fma")))
#define SR_VEC_AVX512 __attribute__((target("avx512f")))

/* Vectors of 8 and 16 floats (loaded and stored unaligned) and of as many
 * ints; a comparison of float vectors gives an int vector of 0 and -1. */
typedef float sr_f8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef float sr_f16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int sr_i8 __attribute__((vector_size(32)));
typedef int sr_i16 __attribute__((vector_size(64)));
#define SR_LOAD(V, p) (*(const V *) (p))
#define SR_STORE(V, p, v) (*(V *) (p) = (v))
#define SR_SPLAT(V, c) ((V) {0} + (c))
#define SR_SIGN_BIT (-2147483647 - 1)

/* a * b rounded before it is added to anything: GCC would otherwise fuse
 * the multiply and a following add into one FMA, which rounds once */
#define SR_MUL(a, b) __extension__ ({                                         \
    __typeof__((a) * (b)) sr_p_ = (a) * (b);                                  \
    __asm__("" : "+v"(sr_p_));                                                \
    sr_p_; })

/* What the vector types do not spell, per width: a b + c and c - a b each
 * rounded once, min and max (the second operand when one is NaN: NaN stays
 * NaN), rounding to the nearest integer (ties to even). */
#define SR_DEFINE_PRIMITIVES(W, TARGET, M, PFX, ROUND)                        \
TARGET static inline sr_f##W sr_fmadd_##W(sr_f##W a, sr_f##W b, sr_f##W c) {  \
    return (sr_f##W) PFX##_fmadd_ps((M) a, (M) b, (M) c);                     \
}                                                                             \
TARGET static inline sr_f##W sr_fnmadd_##W(sr_f##W a, sr_f##W b, sr_f##W c) { \
    return (sr_f##W) PFX##_fnmadd_ps((M) a, (M) b, (M) c);                    \
}                                                                             \
TARGET static inline sr_f##W sr_min_##W(sr_f##W a, sr_f##W b) {               \
    return (sr_f##W) PFX##_min_ps((M) a, (M) b);                              \
}                                                                             \
TARGET static inline sr_f##W sr_max_##W(sr_f##W a, sr_f##W b) {               \
    return (sr_f##W) PFX##_max_ps((M) a, (M) b);                              \
}                                                                             \
TARGET static inline sr_f##W sr_round_##W(sr_f##W a) {                        \
    return (sr_f##W) ROUND((M) a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); \
}
SR_DEFINE_PRIMITIVES(8, SR_VEC_AVX2, __m256, _mm256, _mm256_round_ps)
SR_DEFINE_PRIMITIVES(16, SR_VEC_AVX512, __m512, _mm512, _mm512_roundscale_ps)

/* p 2^n for an integral n in [-126, 127] (a normal power of two): one
 * rounding of the exact product either way. AVX2 builds 2^n in the exponent
 * bits and multiplies; AVX-512 has the instruction (vscalefps), three
 * operations fewer per exp (4% of an LSTM step). */
SR_VEC_AVX2 static inline sr_f8 sr_scale_8(sr_f8 p, sr_f8 n) {
    sr_i8 e = (__builtin_convertvector(n, sr_i8) + 127) << 23;
    return p * (sr_f8) e;
}
SR_VEC_AVX512 static inline sr_f16 sr_scale_16(sr_f16 p, sr_f16 n) {
    return (sr_f16) _mm512_scalef_ps((__m512) p, (__m512) n);
}

/* exp, sigmoid and tanh of W floats (see above), and the arrays of them:
 * x[0:n] W at a time, the last n % W through a padded copy, so that every
 * value goes through the same instructions wherever it lies. */
#define SR_DEFINE_ACTIVATIONS(W, TARGET)                                      \
TARGET static inline sr_f##W sr_exp_##W(sr_f##W y) {                          \
    typedef sr_f##W V;                                                        \
    y = sr_max_##W(SR_SPLAT(V, -87.3f), sr_min_##W(SR_SPLAT(V, 88.3f), y));   \
    V n = sr_round_##W(y * 1.44269504f);                                      \
    /* ln 2 in two parts: n * 0.693359375 is exact */                         \
    V r = sr_fnmadd_##W(n, SR_SPLAT(V, 0.693359375f), y);                     \
    r = sr_fnmadd_##W(n, SR_SPLAT(V, -2.12194440e-4f), r);                    \
    V q = SR_SPLAT(V, 0.001381459180265665f);                                 \
    q = sr_fmadd_##W(q, r, SR_SPLAT(V, 0.008368712849915028f));               \
    q = sr_fmadd_##W(q, r, SR_SPLAT(V, 0.04166838899254799f));                \
    q = sr_fmadd_##W(q, r, SR_SPLAT(V, 0.1666652113199234f));                 \
    q = sr_fmadd_##W(q, r, SR_SPLAT(V, 0.4999999403953552f));                 \
    V p = sr_fmadd_##W(q, r * r, r) + 1.0f;                                   \
    return sr_scale_##W(p, n);                                                \
}                                                                             \
TARGET static inline sr_f##W sr_sigmoid_##W(sr_f##W x) {                      \
    sr_f##W s = 1.0f / (1.0f + sr_exp_##W(0.0f - x));                         \
    return (sr_f##W) ((sr_i##W) s & ~(x < -88.3f));                           \
}                                                                             \
TARGET static inline sr_f##W sr_tanh_##W(sr_f##W x) {                         \
    typedef sr_f##W V;                                                        \
    typedef sr_i##W VI;                                                       \
    V a = (V) ((VI) x & ~SR_SIGN_BIT);                                        \
    V x2 = x * x;                                                             \
    V p = SR_SPLAT(V, 0.01643737033009529f);                                  \
    p = sr_fmadd_##W(p, x2, SR_SPLAT(V, -0.05267168954014778f));              \
    p = sr_fmadd_##W(p, x2, SR_SPLAT(V, 0.13320723176002502f));               \
    p = sr_fmadd_##W(p, x2, SR_SPLAT(V, -0.3333294689655304f));               \
    V small = sr_fmadd_##W(p * x2, x, x);                                     \
    V t = 1.0f - 2.0f / (sr_exp_##W(a + a) + 1.0f);                           \
    VI large = (VI) t | ((VI) x & SR_SIGN_BIT);                               \
    VI is_small = a < 0.55f;                                                  \
    return (V) (((VI) small & is_small) | (large & ~is_small));               \
}                                                                             \
SR_DEFINE_ARRAY(sr_sigmoid_f_##W, W, TARGET, sr_sigmoid_##W)                  \
SR_DEFINE_ARRAY(sr_tanh_f_##W, W, TARGET, sr_tanh_##W)

#define SR_DEFINE_ARRAY(NAME, W, TARGET, F)                                   \
TARGET static void NAME(float *restrict x, int n) {                           \
    int i = 0;                                                                \
    for (; i + W <= n; i += W)                                                \
        SR_STORE(sr_f##W, x + i, F(SR_LOAD(sr_f##W, x + i)));                 \
    if (i < n) {                                                              \
        float tail[W] = {0};                                                  \
        memcpy(tail, x + i, sizeof(float) * (size_t) (n - i));                \
        SR_STORE(sr_f##W, tail, F(SR_LOAD(sr_f##W, tail)));                   \
        memcpy(x + i, tail, sizeof(float) * (size_t) (n - i));                \
    }                                                                         \
}

SR_DEFINE_ACTIVATIONS(8, SR_VEC_AVX2)
SR_DEFINE_ACTIVATIONS(16, SR_VEC_AVX512)

/* The four gates of m <= U groups of W units of LSTM rows (group u: units
 * j[u].. of row row[u], rows 4n apart), pre-activations in g plus the bias
 * b unless NULL: sigmoid on the input, forget and output gates, tanh on the
 * candidate; stored back into g and returned in v. The same function per
 * value as the separate calls, so the same bits. Inlined with m a constant,
 * so that the loops over the groups unroll.
 *
 * The four gates of a row at once, n a multiple of W: one group of W units
 * at a time, four independent chains of instructions (one per gate) for
 * the core to overlap.
 *
 * One LSTM step of `rows` consecutive rows without peepholes or layer norm,
 * n a multiple of W, in one pass over W units at a time: g (the 4n gate
 * pre-activations of each row, without the bias b) receives the gate
 * activations i, f, z, o, then c = f c + i z and h = o tanh(c), into h
 * (and h_out, c into c_out, tanh(c) into tc_out, unless NULL); the rows of g
 * are 4n apart, those of the others n. The same values, products and sums,
 * each rounded, as lstm_row_steps's loops. Each block of W units is a
 * long chain of dependent instructions (tanh of c waits for three gates),
 * which the core overlaps poorly with the next block's: U = 4 blocks (of
 * any rows) go through each stage together. On a Zen 4 core, 16 rows of 32
 * or 128 units, this takes 2.0-2.2 ns per unit instead of 3.2-3.4 with
 * AVX-512, and 3.4 instead of 4.5 with AVX2 (U = 2: 4.2, though AVX2 has 16
 * registers only; U = 6 or 8 with AVX-512: 2.2-2.3).
 *
 * The backward step of one LSTM row without peepholes or layer norm, n a
 * multiple of W: from the gate activations g (i, f, z, o), tanh(c_t) tc and
 * c_{t-1} c_prev, dh (dL/dh_t, zeroed on exit) and dc (dL/dc_t so far,
 * dL/dc_{t-1} on exit), fills dg (dL/d gate pre-activations). The same
 * products and sums, each rounded, in the same order, as lstm_row_back's
 * loops. */
#define SR_DEFINE_LSTM_STEPS(W, TARGET, U)                                    \
TARGET static inline __attribute__((always_inline)) void                      \
sr_lstm_gates_blocks_##W(                                                     \
        float *restrict g, const float *restrict b, int n, const int *row,    \
        const int *j, int m, int store, sr_f##W v[4][U]) {                    \
    typedef sr_f##W V;                                                        \
    V a[U];                                                                   \
    for (int k = 0; k < 4; k++) {                                             \
        for (int u = 0; u < m; u++) {                                         \
            a[u] = SR_LOAD(V, g + row[u] * 4 * n + k * n + j[u]);             \
            if (b != NULL) a[u] = a[u] + SR_LOAD(V, b + k * n + j[u]);        \
        }                                                                     \
        for (int u = 0; u < m; u++)                                           \
            v[k][u] = k == 2 ? sr_tanh_##W(a[u]) : sr_sigmoid_##W(a[u]);      \
        for (int u = 0; u < m && store; u++)                                  \
            SR_STORE(V, g + row[u] * 4 * n + k * n + j[u], v[k][u]);          \
    }                                                                         \
}                                                                             \
TARGET static void sr_lstm_gates_f_##W(float *restrict x, int n) {            \
    sr_f##W v[4][U];                                                          \
    const int row = 0;                                                        \
    for (int j = 0; j < n; j += W)                                            \
        sr_lstm_gates_blocks_##W(x, NULL, n, &row, &j, 1, 1, v);              \
}                                                                             \
/* The step of m <= U groups of units (see sr_lstm_gates_blocks) */          \
TARGET static inline __attribute__((always_inline)) void                      \
sr_lstm_cell_blocks_##W(                                                      \
        float *restrict g, const float *restrict b, float *restrict c,        \
        float *restrict c_out, float *restrict tc_out, float *restrict h_out, \
        float *restrict h, int n, const int *row, const int *j, int m,        \
        int keep_gates) {                                                     \
    typedef sr_f##W V;                                                        \
    V v[4][U], cj[U], tc[U];                                                  \
    sr_lstm_gates_blocks_##W(g, b, n, row, j, m, keep_gates, v);              \
    for (int u = 0; u < m; u++)                                               \
        cj[u] = SR_MUL(v[1][u], SR_LOAD(V, c + row[u] * n + j[u]))            \
                + SR_MUL(v[0][u], v[2][u]);                                   \
    for (int u = 0; u < m; u++) {                                             \
        SR_STORE(V, c + row[u] * n + j[u], cj[u]);                            \
        if (c_out != NULL) SR_STORE(V, c_out + row[u] * n + j[u], cj[u]);     \
    }                                                                         \
    for (int u = 0; u < m; u++) tc[u] = sr_tanh_##W(cj[u]);                   \
    for (int u = 0; u < m; u++) {                                             \
        V hj = v[3][u] * tc[u];                                               \
        if (tc_out != NULL) SR_STORE(V, tc_out + row[u] * n + j[u], tc[u]);   \
        if (h_out != NULL) SR_STORE(V, h_out + row[u] * n + j[u], hj);        \
        SR_STORE(V, h + row[u] * n + j[u], hj);                               \
    }                                                                         \
}                                                                             \
TARGET static void sr_lstm_cell_f_##W(                                        \
        float *restrict g, const float *restrict b, float *restrict c,        \
        float *restrict c_out, float *restrict tc_out, float *restrict h_out, \
        float *restrict h, int n, int rows, int keep_gates) {                 \
    int row[U], j[U], m = 0;                                                  \
    for (int r = 0; r < rows; r++)                                            \
        for (int jj = 0; jj < n; jj += W) {                                   \
            row[m] = r;                                                       \
            j[m++] = jj;                                                      \
            if (m == U) {                                                     \
                sr_lstm_cell_blocks_##W(g, b, c, c_out, tc_out, h_out, h, n,  \
                                        row, j, U, keep_gates);               \
                m = 0;                                                        \
            }                                                                 \
        }                                                                     \
    for (int u = 0; u < m; u++)                                               \
        sr_lstm_cell_blocks_##W(g, b, c, c_out, tc_out, h_out, h, n,          \
                                row + u, j + u, 1, keep_gates);               \
}                                                                             \
TARGET static void sr_lstm_back_f_##W(                                        \
        const float *restrict g, const float *restrict tc,                    \
        const float *restrict c_prev, float *restrict dh, float *restrict dc, \
        float *restrict dg, int n) {                                          \
    typedef sr_f##W V;                                                        \
    for (int j = 0; j < n; j += W) {                                          \
        V i = SR_LOAD(V, g + j), f = SR_LOAD(V, g + n + j);                   \
        V z = SR_LOAD(V, g + 2 * n + j), o = SR_LOAD(V, g + 3 * n + j);       \
        V t = SR_LOAD(V, tc + j), d_h = SR_LOAD(V, dh + j);                   \
        SR_STORE(V, dg + 3 * n + j, d_h * t * o * (1.0f - o));                \
        V d_c = SR_LOAD(V, dc + j) + SR_MUL(d_h * o, 1.0f - SR_MUL(t, t));    \
        SR_STORE(V, dg + j, d_c * z * i * (1.0f - i));                        \
        SR_STORE(V, dg + n + j, d_c * SR_LOAD(V, c_prev + j) * f * (1.0f - f)); \
        SR_STORE(V, dg + 2 * n + j, d_c * i * (1.0f - SR_MUL(z, z)));         \
        SR_STORE(V, dc + j, d_c * f);                                         \
        SR_STORE(V, dh + j, (V) {0});                                         \
    }                                                                         \
}
SR_DEFINE_LSTM_STEPS(8, SR_VEC_AVX2, 4)
SR_DEFINE_LSTM_STEPS(16, SR_VEC_AVX512, 4)

/* One GRU step of one row (reset after the product, as PyTorch's, without
 * layer norm), n a multiple of W, in one pass: g holds the 3n input
 * projections (plus b_ih unless NULL), hh the 3n recurrent products (less
 * b_hh); on exit g holds r, z and the candidate n, aux the candidate's
 * recurrent term a = hh_n + b_hn, h_out and h the new state
 * h = (1 - z) n + z h. The same sums and products, each rounded, in the
 * same order, as gru_rz_row's and gru_n_row's loops (with the input bias
 * added first, as forward_block adds it).
 *
 * Its backward step: from g (r, z, n), aux, h_prev and dh (dL/dh_t, z dh_t
 * on exit), fills dg (the gradients of the three pre-activations) and dgh
 * (the hidden side's: dg_r, dg_z, r dg_n), as gru_n_row_back's and
 * gru_rz_row_back's loops. */
#define SR_DEFINE_GRU_STEPS(W, TARGET)                                        \
TARGET static void sr_gru_cell_f_##W(                                         \
        float *restrict g, const float *restrict b_ih,                        \
        const float *restrict hh, const float *restrict b_hh,                 \
        float *restrict aux, float *restrict h_out, float *restrict h,        \
        int n) {                                                              \
    typedef sr_f##W V;                                                        \
    for (int j = 0; j < n; j += W) {                                          \
        V x_r = SR_LOAD(V, g + j), x_z = SR_LOAD(V, g + n + j);               \
        V x_n = SR_LOAD(V, g + 2 * n + j);                                    \
        if (b_ih != NULL) {                                                   \
            x_r = x_r + SR_LOAD(V, b_ih + j);                                 \
            x_z = x_z + SR_LOAD(V, b_ih + n + j);                             \
            x_n = x_n + SR_LOAD(V, b_ih + 2 * n + j);                         \
        }                                                                     \
        V r = sr_sigmoid_##W(x_r + SR_LOAD(V, hh + j) + SR_LOAD(V, b_hh + j)); \
        V z = sr_sigmoid_##W(x_z + SR_LOAD(V, hh + n + j)                     \
                             + SR_LOAD(V, b_hh + n + j));                     \
        V a = SR_LOAD(V, hh + 2 * n + j) + SR_LOAD(V, b_hh + 2 * n + j);      \
        V c = sr_tanh_##W(x_n + SR_MUL(r, a));                                \
        V hj = SR_MUL(1.0f - z, c) + SR_MUL(z, SR_LOAD(V, h + j));            \
        SR_STORE(V, g + j, r);                                                \
        SR_STORE(V, g + n + j, z);                                            \
        SR_STORE(V, g + 2 * n + j, c);                                        \
        SR_STORE(V, aux + j, a);                                              \
        SR_STORE(V, h_out + j, hj);                                           \
        SR_STORE(V, h + j, hj);                                               \
    }                                                                         \
}                                                                             \
TARGET static void sr_gru_back_f_##W(                                         \
        const float *restrict g, const float *restrict aux,                   \
        const float *restrict h_prev, float *restrict dh, float *restrict dg, \
        float *restrict dgh, int n) {                                         \
    typedef sr_f##W V;                                                        \
    for (int j = 0; j < n; j += W) {                                          \
        V r = SR_LOAD(V, g + j), z = SR_LOAD(V, g + n + j);                   \
        V c = SR_LOAD(V, g + 2 * n + j), d_h = SR_LOAD(V, dh + j);            \
        V dg_n = d_h * (1.0f - z) * (1.0f - SR_MUL(c, c));                    \
        V dg_z = d_h * (SR_LOAD(V, h_prev + j) - c) * z * (1.0f - z);         \
        V dg_r = dg_n * SR_LOAD(V, aux + j) * r * (1.0f - r);                 \
        SR_STORE(V, dg + j, dg_r);                                            \
        SR_STORE(V, dg + n + j, dg_z);                                        \
        SR_STORE(V, dg + 2 * n + j, dg_n);                                    \
        SR_STORE(V, dgh + j, dg_r);                                           \
        SR_STORE(V, dgh + n + j, dg_z);                                       \
        SR_STORE(V, dgh + 2 * n + j, dg_n * r);                               \
        SR_STORE(V, dh + j, d_h * z);                                         \
    }                                                                         \
}
SR_DEFINE_GRU_STEPS(8, SR_VEC_AVX2)
SR_DEFINE_GRU_STEPS(16, SR_VEC_AVX512)

/* The widest vectors of our own functions on this CPU: 16 (AVX-512), 8
 * (AVX2 and FMA) or 0 (neither: the loops above). Set when the module is
 * loaded, within what the environment allows (_isa.h: SKLEARN_RNN_NO_AVX512
 * and SKLEARN_RNN_NO_AVX2). */
static int sr_width = 0;

__attribute__((constructor)) static void sr_width_init(void) {
    sr_width = (int[]) {0, 8, 16}[sr_isa()];
}

static void sr_sigmoid_f(float *restrict x, int n) {
    if (sr_width == 16) sr_sigmoid_f_16(x, n);
    else if (sr_width == 8) sr_sigmoid_f_8(x, n);
    else sr_sigmoid_f_libm(x, n);
}
static void sr_tanh_f(float *restrict x, int n) {
    if (sr_width == 16) sr_tanh_f_16(x, n);
    else if (sr_width == 8) sr_tanh_f_8(x, n);
    else sr_tanh_f_libm(x, n);
}

/* STEP_16 or STEP_8 (arguments ARGS) where sr_one_pass(n) allows it (16
 * lanes where n is a multiple of 16): an expression, 1 where one of them
 * ran, else 0. */
#define SR_ONE_PASS(STEP, ARGS)                                               \
    (!sr_one_pass(n) ? 0                                                      \
     : sr_width == 16 && n % 16 == 0 ? (STEP##_16 ARGS, 1) : (STEP##_8 ARGS, 1))
#else
static const int sr_width = 0;
#define sr_sigmoid_f sr_sigmoid_f_libm
#define sr_tanh_f sr_tanh_f_libm
#define SR_ONE_PASS(STEP, ARGS) 0
#endif

/* Whether the one-pass steps below run for rows of n units: where the CPU
 * has our vector functions and n is a multiple of 8. The GRU's kernel asks
 * first (it then skips the loops around the step); the LSTM's steps return
 * whether they ran. */
static inline int sr_one_pass(int n) { return sr_width >= 8 && n % 8 == 0; }

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

/* The one-pass versions above where the CPU and n (a multiple of 8) allow
 * them: these return 1, else 0, having done nothing (the caller then runs
 * the step itself). */
static int sr_lstm_gates_f_one_pass(float *restrict x, int n) {
    return SR_ONE_PASS(sr_lstm_gates_f, (x, n));
}

static void sr_lstm_gates_f(float *restrict x, int n) {
    if (!sr_lstm_gates_f_one_pass(x, n)) sr_lstm_gates_f_separate(x, n);
}

static int sr_lstm_back_f(const float *restrict g, const float *restrict tc,
                          const float *restrict c_prev, float *restrict dh,
                          float *restrict dc, float *restrict dg, int n) {
    return SR_ONE_PASS(sr_lstm_back_f, (g, tc, c_prev, dh, dc, dg, n));
}

static int sr_lstm_cell_f(float *restrict g, const float *restrict b,
                          float *restrict c, float *restrict c_out,
                          float *restrict tc_out, float *restrict h_out,
                          float *restrict h, int n, int rows, int keep_gates) {
    return SR_ONE_PASS(sr_lstm_cell_f,
                       (g, b, c, c_out, tc_out, h_out, h, n, rows, keep_gates));
}

static int sr_gru_cell_f(float *restrict g, const float *restrict b_ih,
                         const float *restrict hh, const float *restrict b_hh,
                         float *restrict aux, float *restrict h_out,
                         float *restrict h, int n) {
    return SR_ONE_PASS(sr_gru_cell_f, (g, b_ih, hh, b_hh, aux, h_out, h, n));
}

static int sr_gru_back_f(const float *restrict g, const float *restrict aux,
                         const float *restrict h_prev, float *restrict dh,
                         float *restrict dg, float *restrict dgh, int n) {
    return SR_ONE_PASS(sr_gru_back_f, (g, aux, h_prev, dh, dg, dgh, n));
}

/* The widest vectors of the float gate functions on this CPU (0: none) */
static inline int sr_vector_width(void) { return sr_width; }

#endif
