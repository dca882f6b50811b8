/* The widest instruction set the environment lets our kernels use, read by
 * the packed products' dispatch (_pgemm.h) and the gate functions'
 * (_vecmath.h) when a module is loaded:
 *
 *     2  any (the CPU's widest: AVX-512, else AVX2 + FMA, else baseline)
 *     1  SKLEARN_RNN_NO_AVX512 set (and not "0"): AVX2 + FMA at most
 *     0  SKLEARN_RNN_NO_AVX2 set (and not "0"): the portable baseline
 *
 * Most CPUs have AVX2 without AVX-512, and ARM CPUs run the baseline; the
 * tests use these to run those kernels on a CPU that has wider ones. */
#ifndef SKLEARN_RNN_ISA_H
#define SKLEARN_RNN_ISA_H

#include <stdlib.h>
#include <string.h>

static inline int sr_env_flag(const char *name) {
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' && strcmp(v, "0") != 0;
}

static inline int sr_isa_cap(void) {
    return sr_env_flag("SKLEARN_RNN_NO_AVX2") ? 0
           : sr_env_flag("SKLEARN_RNN_NO_AVX512") ? 1 : 2;
}

/* The kernels' instruction set: 2 (AVX-512), 1 (AVX2 + FMA) or 0 (baseline),
 * the CPU's widest within the cap; 0 but on x86-64 with GCC. */
static inline int sr_isa(void) {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    const int cap = sr_isa_cap();
    if (__builtin_cpu_supports("avx512f") && cap >= 2)
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && cap >= 1)
        return 1;
#endif
    return 0;
}

#endif
