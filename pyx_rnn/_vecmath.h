/* Element-wise sigmoid and tanh over arrays, vectorised.
 *
 * The gate non-linearities dominate the cost of small recurrent layers. Where
 * glibc's vector math library (libmvec) is available, setup.py defines
 * SKLEARN_RNN_LIBMVEC and links it: the declarations below then let GCC turn
 * these loops into calls of libmvec's SIMD tanh/exp (<= 4 ulp), and
 * target_clones compiles one version per instruction set (AVX-512, AVX2,
 * baseline), picked at load time. Elsewhere the same loops call the scalar
 * libm functions. The results do not depend on the thread count either way.
 */
#ifndef SKLEARN_RNN_VECMATH_H
#define SKLEARN_RNN_VECMATH_H

#include <math.h>

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
SR_CLONES static void sr_sigmoid_f(float *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));
}
SR_CLONES static void sr_sigmoid_d(double *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = 1.0 / (1.0 + exp(-x[i]));
}
SR_CLONES static void sr_tanh_f(float *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = tanhf(x[i]);
}
SR_CLONES static void sr_tanh_d(double *restrict x, int n) {
    for (int i = 0; i < n; i++) x[i] = tanh(x[i]);
}

#endif
