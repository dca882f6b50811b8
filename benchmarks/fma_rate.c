/* One core's float32 FMA rate: the ceiling of any product on this CPU.
 *
 * 12 independent chains of vector FMAs (enough to cover the FMA latency of
 * current x86-64 cores with two FMA units), the widest vectors the build
 * allows (AVX-512, else AVX2), one thread. The "SGEMM peak" is
 * NumPy's matmul instead, which on some CPUs reaches well below this rate
 * (benchmarks/OPTIMISATIONS.md, session 15).
 *
 *     gcc -O2 -march=native benchmarks/fma_rate.c -o /tmp/fma_rate
 *     /tmp/fma_rate          # prints GFLOP/s for one core, best of 5
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SPLAT _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define SUM _mm512_reduce_add_ps
#elif defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SPLAT _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float SUM(__m256 v) {
    float x[8], s = 0;
    _mm256_storeu_ps(x, v);
    for (int i = 0; i < 8; i++) s += x[i];
    return s;
}
#else
#error "needs AVX2 and FMA or AVX-512: build with -march=native"
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
    const long n = 100000000;
    double best = 0;
    float check = 0;
    for (int rep = 0; rep < 5; rep++) {
        /* different starting values, so that no two chains are the same */
        vec a0 = SPLAT(1.0f), a1 = SPLAT(1.1f), a2 = SPLAT(1.2f),
            a3 = SPLAT(1.3f), a4 = SPLAT(1.4f), a5 = SPLAT(1.5f),
            a6 = SPLAT(1.6f), a7 = SPLAT(1.7f), a8 = SPLAT(1.8f),
            a9 = SPLAT(1.9f), a10 = SPLAT(2.0f), a11 = SPLAT(2.1f);
        vec b = SPLAT(0.999999f), c = SPLAT(1e-7f);
        double t0 = now();
        for (long i = 0; i < n; i++) {
            a0 = FMA(a0, b, c); a1 = FMA(a1, b, c); a2 = FMA(a2, b, c);
            a3 = FMA(a3, b, c); a4 = FMA(a4, b, c); a5 = FMA(a5, b, c);
            a6 = FMA(a6, b, c); a7 = FMA(a7, b, c); a8 = FMA(a8, b, c);
            a9 = FMA(a9, b, c); a10 = FMA(a10, b, c); a11 = FMA(a11, b, c);
        }
        double gflops = n * 12.0 * LANES * 2 / (now() - t0) / 1e9;
        if (gflops > best) best = gflops;
        /* the results are used, so the loop is not removed */
        check += SUM(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
    printf("%.1f GFLOP/s on one core (%d-lane FMAs; checksum %g)\n", best,
           LANES, check);
    return 0;
}
