/* The per-step recurrent product with a pre-packed weight matrix.
 *
 * At every time step each block of sequences multiplies its (masked) previous
 * state, a few dozen rows, by the recurrent weight matrix. A BLAS call packs
 * the whole weight matrix again each time, which costs more than the product
 * itself at these sizes. Here the matrix is packed once per layer call
 * (sr_pack_*) into panels of SR_PANEL_BYTES / sizeof(T) output columns,
 * each panel stored reduction-index-major:
 *
 *     P[p * K * NR + k * NR + j] = B(k, p * NR + j)     (0 past the last column)
 *
 * and sr_pgemm_* computes C (=, or +=) A @ B from it with a register-blocked
 * micro-kernel: up to MR rows of A times one panel, accumulated in MR * NV
 * vector registers (AVX-512: 12 x 2 zmm; AVX2: 6 x 2 ymm, each half of the
 * panel's 4 ymm in turn; baseline: 1 x 4 xmm, each half of 8 in turn), a
 * block's rows cut into the fewest such tiles, of sizes that differ by one
 * at most (SR_ROW_TILES). Twelve rows rather than eight read each panel
 * fewer times: 1.15-1.2x the throughput on one core from 16 x 128 x 32 to
 * 64 x 2048 x 512 (benchmarks/OPTIMISATIONS.md).
 *
 * sr_pgemm2_* multiplies [A1 | A2], two row-major matrices side by side, by
 * B1 and B2 packed one below the other (sr_pack_*2): the lstm's and the rnn's
 * step is one product of [x_t | h_{t-1}], without a store and reload of the
 * gate rows between the input and the recurrent product.
 *
 * Exactness: every output element is the sum over k = 0, 1, ..., K-1, in that
 * order, of A[i, k] * B(k, j), accumulated from zero in a single accumulator
 * (a fused multiply-add where the instruction set has one). That order does
 * not depend on the row's position in the block, on the number of rows, on
 * the micro-kernel's row count or on the thread count: a sequence's result is
 * bitwise the same whichever sequences share its block. With accumulate, the
 * finished sum is then added to C.
 *
 * One version of the kernel per instruction set (AVX-512, AVX2 + FMA,
 * baseline) is compiled with GCC's target attribute and picked once at load
 * time (sr_pgemm_init); other compilers get the portable baseline. Each is
 * written once for float and double through the SR_* macros below.
 */
#ifndef SKLEARN_RNN_PGEMM_H
#define SKLEARN_RNN_PGEMM_H

#include <string.h>

#include "_isa.h"

#define SR_PANEL_BYTES 128

/* Length (in elements) of the packing of a K x N matrix of elements of
 * `itemsize` bytes. */
static inline long sr_pack_length(long n, long k, long itemsize) {
    long nr = SR_PANEL_BYTES / itemsize;
    return ((n + nr - 1) / nr) * nr * k;
}

/* B(k, n) = trans ? B[n * ldb + k] : B[k * ldb + n], for k < K, n < N. The
 * *2 versions pack two matrices stacked along k: B1 (K1 rows) then B2 (K2),
 * for a product with [A1 | A2]. Each source run is read in the order it lies
 * in memory: with trans, column n of a panel is row n of B, contiguous in k
 * (a weight matrix packed for x @ W.T); without, row k of a panel is a run
 * of row k of B. Columns past N are zeros. */
#define SR_DEFINE_PACK(NAME, T)                                               \
static void NAME##2(const T *B1, int ldb1, int K1, const T *B2, int ldb2,     \
                    int K2, int trans, int N, T *P) {                         \
    const int nr = SR_PANEL_BYTES / (int) sizeof(T);                          \
    const int K = K1 + K2;                                                    \
    for (int p = 0; p * nr < N; p++) {                                        \
        T *panel = P + (long) p * K * nr;                                     \
        const int nj = N - p * nr < nr ? N - p * nr : nr;                     \
        if (trans) {                                                          \
            for (int j = 0; j < nj; j++) {                                    \
                const long n = (long) p * nr + j;                             \
                const T *b1 = B1 + n * ldb1, *b2 = B2 + n * ldb2;             \
                for (int k = 0; k < K1; k++)                                  \
                    panel[(long) k * nr + j] = b1[k];                         \
                for (int k = 0; k < K2; k++)                                  \
                    panel[(long) (K1 + k) * nr + j] = b2[k];                  \
            }                                                                 \
        } else {                                                              \
            for (int k = 0; k < K; k++) {                                     \
                const T *b = k < K1 ? B1 + (long) k * ldb1                    \
                                    : B2 + (long) (k - K1) * ldb2;            \
                memcpy(panel + (long) k * nr, b + (long) p * nr,              \
                       sizeof(T) * nj);                                       \
            }                                                                 \
        }                                                                     \
        if (nj < nr)                                                          \
            for (int k = 0; k < K; k++)                                       \
                for (int j = nj; j < nr; j++)                                 \
                    panel[(long) k * nr + j] = (T) 0;                         \
    }                                                                         \
}                                                                             \
static void NAME(const T *B, int ldb, int trans, int K, int N, T *P) {        \
    NAME##2(B, ldb, K, B, ldb, 0, trans, N, P);                               \
}

SR_DEFINE_PACK(sr_pack_f, float)
SR_DEFINE_PACK(sr_pack_d, double)

#if defined(__GNUC__)
/* GCC / clang vector extensions, one type per register width: a panel row is
 * NV = SR_PANEL_BYTES / sizeof(V) vectors (a vector type wider than the
 * hardware's would be kept in memory). */
typedef float sr_vf16 __attribute__((vector_size(64)));
typedef double sr_vd8 __attribute__((vector_size(64)));
typedef float sr_vf8 __attribute__((vector_size(32)));
typedef double sr_vd4 __attribute__((vector_size(32)));
typedef float sr_vf4 __attribute__((vector_size(16)));
typedef double sr_vd2 __attribute__((vector_size(16)));

/* Loops over registers are unrolled, so that the accumulators live in
 * registers rather than in an array in memory. */
#define SR_UNROLL _Pragma("GCC unroll 16")

/* The vectors of a panel row that a micro-kernel of MR rows takes at once,
 * on a machine of NREG vector registers: all NV of them where MR * NV
 * accumulators, NV panel vectors and a broadcast fit, else a half, a
 * quarter... (a slice of the panel's columns, one after the other). With
 * AVX2's 16 registers, 3 rows of a whole 4-vector panel row (17 registers)
 * made GCC spill accumulators to the stack at every k. */
#define SR_FITS(MR, NVS, NREG) (((MR) + 1) * (NVS) + 1 <= (NREG))
#define SR_SLICE_VECTORS(MR, NV, NREG)                                        \
    (SR_FITS(MR, NV, NREG) || (NV) < 2 ? (NV)                                 \
     : SR_FITS(MR, (NV) / 2, NREG) || (NV) < 4 ? (NV) / 2                     \
     : SR_FITS(MR, (NV) / 4, NREG) || (NV) < 8 ? (NV) / 4 : (NV) / 8)

/* acc += A[:MR, :K] @ Q[:K, :NVS vectors], with A(r, k) at A[r * rs + k *
 * ks] and row k of the panel's slice at Q + k * ldp; inside a micro-kernel
 * (VL, the elements of a vector, NVS and acc in scope). */
#define SR_ACCUMULATE(T, V, MR, K, A, rs, ks, Q, ldp)                         \
    for (int k = 0; k < (K); k++) {                                           \
        V w[NVS];                                                             \
        SR_UNROLL for (int v = 0; v < NVS; v++)                               \
            memcpy(&w[v], (Q) + (long) k * (ldp) + v * VL, sizeof(V));        \
        SR_UNROLL for (int r = 0; r < MR; r++) {                              \
            T a = (A)[(long) r * (rs) + (long) k * (ks)];                     \
            SR_UNROLL for (int v = 0; v < NVS; v++) acc[r][v] += a * w[v];    \
        }                                                                     \
    }

/* Write the finished sums of one row of a slice, the vectors accs[0:NVS],
 * to c[0:nc] (=, or += with accumulate; nc <= SW). A whole slice is stored
 * vector by vector; only a partial one (the last panel of a row) goes
 * through an array. Every accumulator is read by value: one whose address
 * is taken stays in memory, and GCC then kept accumulators on the stack
 * through the whole loop over k. */
#define SR_STORE_SLICE(T, V, accs, c, nc, accumulate)                         \
    do {                                                                      \
        if ((nc) == SW) {                                                     \
            SR_UNROLL for (int v_ = 0; v_ < NVS; v_++) {                      \
                V x_ = (accs)[v_];                                            \
                if (accumulate) {                                             \
                    V c_;                                                     \
                    memcpy(&c_, (c) + v_ * VL, sizeof(V));                    \
                    x_ = c_ + x_;                                             \
                }                                                             \
                memcpy((c) + v_ * VL, &x_, sizeof(V));                        \
            }                                                                 \
        } else {                                                              \
            T t_[SW];                                                         \
            SR_UNROLL for (int v_ = 0; v_ < NVS; v_++) {                      \
                V x_ = (accs)[v_];                                            \
                memcpy(t_ + v_ * VL, &x_, sizeof(V));                         \
            }                                                                 \
            for (int j_ = 0; j_ < (nc); j_++)                                 \
                (c)[j_] = (accumulate) ? (c)[j_] + t_[j_] : t_[j_];           \
        }                                                                     \
    } while (0)

/* The constants of a micro-kernel: NR columns a panel, NV vectors of VL
 * elements, slices of NVS vectors (SW columns). */
#define SR_MICRO_SIZES(T, V, MR, NREG)                                        \
    enum { NR = SR_PANEL_BYTES / sizeof(T), NV = SR_PANEL_BYTES / sizeof(V),  \
           VL = NR / NV, NVS = SR_SLICE_VECTORS(MR, NV, NREG),                \
           SW = NVS * VL }

/* A micro-kernel's loop over the slices of its panel: the accumulators
 * zeroed, SUMS (the sums over k, of the slice at Pp + s * SW), then each
 * row stored into C (=, or += with accumulate). */
#define SR_MICRO_SLICES(T, V, MR, NREG, SUMS, accumulate)                     \
    SR_MICRO_SIZES(T, V, MR, NREG);                                           \
    SR_UNROLL for (int s = 0; s < NV / NVS; s++) {                            \
        if (s * SW >= ncols) break;                                           \
        V acc[MR][NVS];                                                       \
        SR_UNROLL for (int r = 0; r < MR; r++)                                \
            SR_UNROLL for (int v = 0; v < NVS; v++) acc[r][v] = (V){0};       \
        SUMS;                                                                 \
        int nc = ncols - s * SW < SW ? ncols - s * SW : SW;                   \
        SR_UNROLL for (int r = 0; r < MR; r++)                                \
            SR_STORE_SLICE(T, V, acc[r], C + r * ldc + s * SW, nc,            \
                           accumulate);                                       \
    }

/* MR rows of [A1 | A2] (K1 + K2 columns, strides lda1 and lda2) times one
 * (K1 + K2) x NR panel, a slice of SW columns at a time (the slices past
 * ncols skipped): the sum runs over A1's columns, then A2's. */
#define SR_DEFINE_MICRO(NAME, T, V, MR, NREG, ATTR)                           \
ATTR static inline void NAME(int K1, const T *A1, long lda1, int K2,          \
                             const T *A2, long lda2, const T *Pp, T *C,       \
                             long ldc, int ncols, int accumulate) {           \
    SR_MICRO_SLICES(T, V, MR, NREG,                                           \
        SR_ACCUMULATE(T, V, MR, K1, A1, lda1, 1, Pp + s * SW, NR);            \
        SR_ACCUMULATE(T, V, MR, K2, A2, lda2, 1,                              \
                      Pp + (long) K1 * NR + s * SW, NR),                      \
        accumulate)                                                           \
}
/* C[:MR, :ncols] += A.T[:MR, :K] @ B[:K, :NR], A being K x MR at stride lda
 * (column r of A is row r of the product) and B's rows ldb apart; a slice
 * of SW columns at a time, as above. */
#define SR_DEFINE_MICRO_TN(NAME, T, V, MR, NREG, ATTR)                        \
ATTR static inline void NAME(int K, const T *A, long lda, const T *Pp,        \
                             long ldb, T *C, long ldc, int ncols) {           \
    SR_MICRO_SLICES(T, V, MR, NREG,                                           \
        SR_ACCUMULATE(T, V, MR, K, A, 1, lda, Pp + s * SW, ldb), 1)           \
}

/* Panels that a micro-kernel of R rows takes at once: with R * NV < 8
 * accumulators a panel (AVX-512: 1 to 3 rows; AVX2: 1), each a chain of
 * dependent fused multiply-adds, the core waits on their latency; up to 4
 * panels side by side give it as many chains again, within NREG registers
 * (the accumulators, a broadcast per row and a panel vector). */
#define SR_WIDE_FITS(R, G, NV, NREG) ((R) * (G) * (NV) + (R) + 1 <= (NREG))
#define SR_WIDE_PANELS(R, NV, NREG)                                           \
    ((R) * (NV) >= 8 ? 1 : SR_WIDE_FITS(R, 4, NV, NREG) ? 4                   \
     : SR_WIDE_FITS(R, 3, NV, NREG) ? 3 : SR_WIDE_FITS(R, 2, NV, NREG) ? 2 : 1)
/* acc += A[:R, :K] @ the K rows of G panels (ldp apart) from Q */
#define SR_WIDE_ACCUMULATE(T, V, R, K, A, lda, Q, ldp)                        \
    for (int k = 0; k < (K); k++) {                                           \
        T a[R];                                                               \
        SR_UNROLL for (int r = 0; r < R; r++) a[r] = (A)[(long) r * (lda) + k]; \
        SR_UNROLL for (int g = 0; g < G; g++)                                 \
            SR_UNROLL for (int v = 0; v < NV; v++) {                          \
                V w;                                                          \
                memcpy(&w, (Q) + g * (ldp) + (long) k * NR + v * VL,          \
                       sizeof(V));                                            \
                SR_UNROLL for (int r = 0; r < R; r++) acc[r][g][v] += a[r] * w; \
            }                                                                 \
    }
/* R rows of [A1 | A2] times G whole panels (ldp elements apart), the sum
 * of every output element as SR_DEFINE_MICRO makes it: over A1's columns,
 * then A2's, in order, from zero, in one accumulator. */
#define SR_DEFINE_MICRO_WIDE(NAME, T, V, R, NREG, ATTR)                       \
ATTR static inline void NAME(int K1, const T *A1, long lda1, int K2,          \
                             const T *A2, long lda2, const T *Pp, long ldp,   \
                             T *C, long ldc, int accumulate) {                \
    enum { NR = SR_PANEL_BYTES / sizeof(T), NV = SR_PANEL_BYTES / sizeof(V),  \
           VL = NR / NV, G = SR_WIDE_PANELS(R, NV, NREG) };                   \
    V acc[R][G][NV];                                                          \
    SR_UNROLL for (int r = 0; r < R; r++)                                     \
        SR_UNROLL for (int g = 0; g < G; g++)                                 \
            SR_UNROLL for (int v = 0; v < NV; v++) acc[r][g][v] = (V){0};     \
    SR_WIDE_ACCUMULATE(T, V, R, K1, A1, lda1, Pp, ldp)                        \
    SR_WIDE_ACCUMULATE(T, V, R, K2, A2, lda2, Pp + (long) K1 * NR, ldp)       \
    SR_UNROLL for (int r = 0; r < R; r++)                                     \
        SR_UNROLL for (int g = 0; g < G; g++)                                 \
            SR_UNROLL for (int v = 0; v < NV; v++) {                          \
                T *c = C + (long) r * ldc + g * NR + v * VL;                  \
                V x = acc[r][g][v];                                           \
                if (accumulate) {                                             \
                    V c0;                                                     \
                    memcpy(&c0, c, sizeof(V));                                \
                    x = c0 + x;                                               \
                }                                                             \
                memcpy(c, &x, sizeof(V));                                     \
            }                                                                 \
}
#else
/* Portable fallback: the same order of operations, one scalar at a time. */
#define SR_DEFINE_MICRO(NAME, T, V, MR, NREG, ATTR)                           \
static void NAME(int K1, const T *A1, long lda1, int K2, const T *A2,         \
                 long lda2, const T *Pp, T *C, long ldc, int ncols,           \
                 int accumulate) {                                            \
    enum { NR = SR_PANEL_BYTES / sizeof(T) };                                 \
    for (int r = 0; r < MR; r++) {                                            \
        T acc[NR];                                                            \
        for (int j = 0; j < NR; j++) acc[j] = 0;                              \
        for (int k = 0; k < K1 + K2; k++) {                                   \
            T a = k < K1 ? A1[r * lda1 + k] : A2[r * lda2 + k - K1];          \
            for (int j = 0; j < NR; j++) acc[j] += a * Pp[(long) k * NR + j]; \
        }                                                                     \
        for (int j = 0; j < ncols; j++)                                       \
            C[r * ldc + j] = accumulate ? C[r * ldc + j] + acc[j] : acc[j];   \
    }                                                                         \
}
#define SR_DEFINE_MICRO_TN(NAME, T, V, MR, NREG, ATTR)                        \
static void NAME(int K, const T *A, long lda, const T *Pp, long ldb, T *C,    \
                 long ldc, int ncols) {                                       \
    enum { NR = SR_PANEL_BYTES / sizeof(T) };                                 \
    for (int r = 0; r < MR; r++) {                                            \
        T acc[NR];                                                            \
        for (int j = 0; j < NR; j++) acc[j] = 0;                              \
        for (int k = 0; k < K; k++) {                                         \
            T a = A[(long) k * lda + r];                                      \
            for (int j = 0; j < NR; j++) acc[j] += a * Pp[(long) k * ldb + j];\
        }                                                                     \
        for (int j = 0; j < ncols; j++) C[r * ldc + j] += acc[j];             \
    }                                                                         \
}
#define SR_WIDE_PANELS(R, NV, NREG) 1
#define SR_DEFINE_MICRO_WIDE(NAME, T, V, R, NREG, ATTR)
typedef float sr_vf4;
typedef double sr_vd2;
#endif

/* C[m, n] (=, or += with accumulate) [A1 | A2] @ B, B ((K1 + K2) x n)
 * packed in P. Panels are the outer loop so that one panel stays in cache
 * across all the rows. */
#define SR_MICRO_CALL(NAME, i, rows)                                          \
    NAME(K1, A1 + (long) (i) * lda1, lda1, K2, A2 + (long) (i) * lda2, lda2,  \
         Pp, Cp + (long) (i) * ldc, ldc, ncols, accumulate)
/* A driver's micro-kernels (DEFINE: SR_DEFINE_MICRO or SR_DEFINE_MICRO_TN),
 * one for each row count from 1 to 12 (SR_MAX_MR); a driver calls those up
 * to its MR, and the compiler drops the others. */
#define SR_MAX_MR 12
#define SR_DEFINE_MICROS(DEFINE, NAME, T, V, NREG, ATTR)                      \
DEFINE(NAME##_m1, T, V, 1, NREG, ATTR)                                        \
DEFINE(NAME##_m2, T, V, 2, NREG, ATTR)                                        \
DEFINE(NAME##_m3, T, V, 3, NREG, ATTR)                                        \
DEFINE(NAME##_m4, T, V, 4, NREG, ATTR)                                        \
DEFINE(NAME##_m5, T, V, 5, NREG, ATTR)                                        \
DEFINE(NAME##_m6, T, V, 6, NREG, ATTR)                                        \
DEFINE(NAME##_m7, T, V, 7, NREG, ATTR)                                        \
DEFINE(NAME##_m8, T, V, 8, NREG, ATTR)                                        \
DEFINE(NAME##_m9, T, V, 9, NREG, ATTR)                                        \
DEFINE(NAME##_m10, T, V, 10, NREG, ATTR)                                      \
DEFINE(NAME##_m11, T, V, 11, NREG, ATTR)                                      \
DEFINE(NAME##_m12, T, V, 12, NREG, ATTR)
/* CALL(kernel, row, rows) with the micro-kernel of `rows` rows (at most
 * MR); the rows <= MR tests are constants. */
#define SR_ROWS_CALL(CALL, NAME, MR, i, rows)                                 \
    switch (rows) {                                                           \
    case 1: CALL(NAME##_m1, i, 1); break;                                     \
    case 2: if (2 <= (MR)) CALL(NAME##_m2, i, 2); break;                      \
    case 3: if (3 <= (MR)) CALL(NAME##_m3, i, 3); break;                      \
    case 4: if (4 <= (MR)) CALL(NAME##_m4, i, 4); break;                      \
    case 5: if (5 <= (MR)) CALL(NAME##_m5, i, 5); break;                      \
    case 6: if (6 <= (MR)) CALL(NAME##_m6, i, 6); break;                      \
    case 7: if (7 <= (MR)) CALL(NAME##_m7, i, 7); break;                      \
    case 8: if (8 <= (MR)) CALL(NAME##_m8, i, 8); break;                      \
    case 9: if (9 <= (MR)) CALL(NAME##_m9, i, 9); break;                      \
    case 10: if (10 <= (MR)) CALL(NAME##_m10, i, 10); break;                  \
    case 11: if (11 <= (MR)) CALL(NAME##_m11, i, 11); break;                  \
    case 12: if (12 <= (MR)) CALL(NAME##_m12, i, 12); break;                  \
    }
/* Rows 0..m in as few tiles of at most MR rows as there can be, of sizes
 * that differ by one at most (CALL(kernel, row, rows of the kernel)). A
 * kernel of fewer than 4 rows waits on its few sums' latency, and a
 * remainder tile of 3, 7 or 11 rows (2 + 1, 4 + 2 + 1, 8 + 2 + 1 before)
 * took longer than one row more: a 15-row block ran 12 + 2 + 1 rows,
 * 638 ns against 569 for 16 rows (32-unit LSTM step, AVX-512). Every
 * sum's order is that of k whatever its tile, so the bits do not change
 * with the tiling. */
#define SR_ROW_TILES(CALL, NAME, MR, m)                                       \
    do {                                                                      \
        const int tiles_ = ((m) + (MR) - 1) / (MR);                           \
        int i = 0;                                                            \
        for (int t_ = 0; t_ < tiles_; t_++) {                                 \
            const int rows_ = ((m) - i) / (tiles_ - t_);                      \
            SR_ROWS_CALL(CALL, NAME, MR, i, rows_);                           \
            i += rows_;                                                       \
        }                                                                     \
    } while (0)

/* A block of 1 to 3 rows goes through wide micro-kernels first (several
 * whole panels at once, where that gives the core more chains of sums:
 * SR_WIDE_PANELS), the panels left (and a partial last one) one at a
 * time; every sum's order is still that of k. One row takes them only
 * where the packed matrix is at most SR_WIDE_ONE_ROW_BYTES: a larger one
 * comes from L2, whose reads bound the product, and one panel at a time
 * read it faster (AVX-512, Zen 5, an LSTM's forward pass over 100 steps:
 * 32 units, 1 sequence 27 -> 24 µs, 2 sequences 33 -> 27-28; 128 units,
 * 3 sequences 421-440 -> 364-370 µs; 1 sequence 288-293 µs, 315-331 with
 * 4 panels at once; benchmarks/OPTIMISATIONS.md, session 24). */
#define SR_WIDE_ONE_ROW_BYTES 32768
#define SR_WIDE_CALL(NAME, NREG, R)                                           \
    if (m == (R) && SR_WIDE_PANELS(R, NV, NREG) > 1                           \
        && ((R) > 1 || (long) (K1 + K2) * n * (long) sizeof(*C)               \
                       <= SR_WIDE_ONE_ROW_BYTES))                             \
        for (; (p + SR_WIDE_PANELS(R, NV, NREG)) * NR <= n;                   \
             p += SR_WIDE_PANELS(R, NV, NREG))                                \
            NAME##_w##R(K1, A1, lda1, K2, A2, lda2,                           \
                        P + (long) p * (K1 + K2) * NR, (long) (K1 + K2) * NR, \
                        C + p * NR, ldc, accumulate)
#define SR_DEFINE_GEMM(NAME, T, V, MR, NREG, ATTR)                            \
SR_DEFINE_MICROS(SR_DEFINE_MICRO, NAME, T, V, NREG, ATTR)                     \
SR_DEFINE_MICRO_WIDE(NAME##_w1, T, V, 1, NREG, ATTR)                          \
SR_DEFINE_MICRO_WIDE(NAME##_w2, T, V, 2, NREG, ATTR)                          \
SR_DEFINE_MICRO_WIDE(NAME##_w3, T, V, 3, NREG, ATTR)                          \
ATTR static void NAME(int m, int n, int K1, const T *A1, int lda1, int K2,    \
                      const T *A2, int lda2, const T *P, T *C, int ldc,       \
                      int accumulate) {                                       \
    enum { NR = SR_PANEL_BYTES / sizeof(T), NV = SR_PANEL_BYTES / sizeof(V) };\
    int p = 0;                                                                \
    SR_WIDE_CALL(NAME, NREG, 1);                                              \
    SR_WIDE_CALL(NAME, NREG, 2);                                              \
    SR_WIDE_CALL(NAME, NREG, 3);                                              \
    for (; p * NR < n; p++) {                                                 \
        const T *Pp = P + (long) p * (K1 + K2) * NR;                          \
        int ncols = n - p * NR < NR ? n - p * NR : NR;                        \
        T *Cp = C + p * NR;                                                   \
        SR_ROW_TILES(SR_MICRO_CALL, NAME, MR, m);                             \
    }                                                                         \
}

/* C[m, n] += A.T @ B, A (K x m) and B (K x n) row-major and unpacked: a
 * panel of B is read in place, NR columns of every row, except the last
 * panel when n is not a multiple of NR, which is first copied, padded with
 * zeros, into `edge` (K * NR elements): nothing past B's n columns is read.
 * Used for weight gradients, step by step, with a few rows (K) at a time. */
#define SR_MICRO_TN_CALL(NAME, i, rows)                                       \
    NAME(K, A + (i), lda, Bp, ldp, Cp + (long) (i) * ldc, ldc, ncols)
#define SR_DEFINE_GEMM_TN(NAME, T, V, MR, NREG, ATTR)                         \
SR_DEFINE_MICROS(SR_DEFINE_MICRO_TN, NAME, T, V, NREG, ATTR)                  \
ATTR static void NAME(int m, int n, int K, const T *A, int lda, const T *B,   \
                      int ldb, T *C, int ldc, T *edge) {                      \
    enum { NR = SR_PANEL_BYTES / sizeof(T) };                                 \
    for (int p = 0; p * NR < n; p++) {                                        \
        int ncols = n - p * NR < NR ? n - p * NR : NR;                        \
        const T *Bp = B + p * NR;                                             \
        long ldp = ldb;                                                       \
        if (ncols < NR) {                                                     \
            for (int k = 0; k < K; k++)                                       \
                for (int j = 0; j < NR; j++)                                  \
                    edge[(long) k * NR + j] =                                 \
                        j < ncols ? Bp[(long) k * ldb + j] : (T) 0;           \
            Bp = edge;                                                        \
            ldp = NR;                                                         \
        }                                                                     \
        T *Cp = C + p * NR;                                                   \
        SR_ROW_TILES(SR_MICRO_TN_CALL, NAME, MR, m);                          \
    }                                                                         \
}

/* C1[m, n1] += A.T @ B1 and C2[m, n2] += A.T @ B2 in one product: A is
 * K x m at row stride lda, B1 and B2 K x n1 and K x n2 (strides ldb1,
 * ldb2), C1 and C2 at strides ldc1, ldc2; all row-major. The weight
 * gradients of a layer over a batch, every row of the batch one k: A holds
 * the gate gradients, B1 the inputs and B2 the previous states, so that A,
 * the largest, is read once for both. (BLAS packs the same matrices; this
 * uses the packed product's micro-kernels, nearer the FMA peak:
 * benchmarks/OPTIMISATIONS.md, session 10.)
 * The sum over k runs in blocks of SR_OUTER_KC rows, in order: each block
 * is summed from zero in registers, in order of k, then added to C1 or C2.
 * Per block, B1's and B2's rows are copied into panels (as sr_pack_*: NR
 * columns, zero past the last; B2's panels start after B1's) and each tile
 * of A's columns into a kc x rows array, so that the micro-kernels read
 * both sequentially. `work` holds sr_outer_work_length(n1, n2, sizeof(T))
 * elements. */
#define SR_OUTER_KC 256
#define SR_OUTER_MAX_MR 12
static inline long sr_outer_work_length(long n1, long n2, long itemsize) {
    return SR_OUTER_KC * (sr_pack_length(n1, 1, itemsize)
                          + sr_pack_length(n2, 1, itemsize) + SR_OUTER_MAX_MR);
}
/* One tile of R columns of A, from column i: packed, then times every panel
 * (a CALL of SR_ROW_TILES). */
#define SR_OUTER_TILE(KERNEL, i, R)                                           \
    do {                                                                      \
        for (int k = 0; k < kc; k++)                                          \
            memcpy(Ap + (long) k * (R), A + (long) (k0 + k) * lda + (i),      \
                   sizeof(*Ap) * (R));                                        \
        for (int p = 0; p < np1 + np2; p++) {                                 \
            int j = (p < np1 ? p : p - np1) * NR, nj = p < np1 ? n1 : n2;     \
            KERNEL(kc, Ap, (R), Bp + (long) p * kc * NR, NR,                  \
                   p < np1 ? C1 + (long) (i) * ldc1 + j                       \
                           : C2 + (long) (i) * ldc2 + j,                      \
                   p < np1 ? ldc1 : ldc2, nj - j < NR ? nj - j : NR);         \
        }                                                                     \
    } while (0)
/* Panel row of a block: NR columns of the row b from column j (of n). */
#define SR_OUTER_PACK_ROW(dst, b, j, n)                                       \
    do {                                                                      \
        if ((j) + NR <= (n))                                                  \
            memcpy((dst), (b) + (j), sizeof(*(dst)) * NR);                    \
        else                                                                  \
            for (int c = 0; c < NR; c++)                                      \
                (dst)[c] = (j) + c < (n) ? (b)[(j) + c] : 0;                  \
    } while (0)
#define SR_DEFINE_OUTER(NAME, TN, T, MR, ATTR)                                \
ATTR static void NAME(int m, int n1, int n2, int K, const T *A, long lda,     \
                      const T *B1, long ldb1, const T *B2, long ldb2, T *C1,  \
                      long ldc1, T *C2, long ldc2, T *work) {                 \
    enum { NR = SR_PANEL_BYTES / sizeof(T) };                                 \
    _Static_assert((MR) <= SR_OUTER_MAX_MR, "a tile of A fits in work");      \
    const int np1 = (n1 + NR - 1) / NR, np2 = (n2 + NR - 1) / NR;             \
    T *Bp = work, *Ap = work + (long) SR_OUTER_KC * (np1 + np2) * NR;         \
    for (int k0 = 0; k0 < K; k0 += SR_OUTER_KC) {                             \
        const int kc = K - k0 < SR_OUTER_KC ? K - k0 : SR_OUTER_KC;           \
        for (int p = 0; p < np1 + np2; p++)                                   \
            for (int k = 0; k < kc; k++) {                                    \
                T *dst = Bp + ((long) p * kc + k) * NR;                       \
                if (p < np1)                                                  \
                    SR_OUTER_PACK_ROW(dst, B1 + (long) (k0 + k) * ldb1,       \
                                      p * NR, n1);                            \
                else                                                          \
                    SR_OUTER_PACK_ROW(dst, B2 + (long) (k0 + k) * ldb2,       \
                                      (p - np1) * NR, n2);                    \
            }                                                                 \
        SR_ROW_TILES(SR_OUTER_TILE, TN, MR, m);                               \
    }                                                                         \
}

SR_DEFINE_GEMM(sr_pgemm_f_base, float, sr_vf4, 1, 16, )
SR_DEFINE_GEMM(sr_pgemm_d_base, double, sr_vd2, 1, 16, )
SR_DEFINE_GEMM_TN(sr_gemm_tn_f_base, float, sr_vf4, 1, 16, )
SR_DEFINE_GEMM_TN(sr_gemm_tn_d_base, double, sr_vd2, 1, 16, )
SR_DEFINE_OUTER(sr_outer_f_base, sr_gemm_tn_f_base, float, 1, )
SR_DEFINE_OUTER(sr_outer_d_base, sr_gemm_tn_d_base, double, 1, )

/* The element-wise sums of the kernels' steps, vectorised by the compiler
 * for each instruction set like the products (the extension itself is
 * compiled for baseline x86-64): sr_add_rows_* adds each of `rows` rows of
 * `src` (stride lds), in order, to dst[0:n] (the bias gradients' partial
 * sums, or one block of state gradients with rows = 1); sr_add_to_rows_*
 * adds src[0:n] to each of `rows` rows of dst (stride ldd; a bias). Every
 * element is one addition per row, in row order, at any width: the same
 * bits as the scalar loops. */
#define SR_DEFINE_ADDS(SFX, T, ATTR)                                          \
ATTR static void sr_add_rows_##SFX(int rows, long n, const T *restrict src,   \
                                   long lds, T *restrict dst) {               \
    for (int r = 0; r < rows; r++)                                            \
        for (long j = 0; j < n; j++) dst[j] += src[(long) r * lds + j];       \
}                                                                             \
ATTR static void sr_add_to_rows_##SFX(int rows, long n, const T *restrict src,\
                                      T *restrict dst, long ldd) {            \
    for (int r = 0; r < rows; r++)                                            \
        for (long j = 0; j < n; j++) dst[(long) r * ldd + j] += src[j];       \
}
SR_DEFINE_ADDS(f_base, float, )
SR_DEFINE_ADDS(d_base, double, )

/* Adam's update of n parameters in one pass (see _dense.adam_update):
 *     m = b1 m + c1 g;  v = b2 v + c2 g^2;  p -= s m / (sqrt(v) / r + eps)
 * each operation rounded in T, in the order of the statements below, none
 * contracted into a fused multiply-add: the AVX2 and AVX-512 versions give
 * the baseline's bits (IEEE rounds sqrt and division exactly at any
 * width). */
#define SR_SQRT_float __builtin_sqrtf
#define SR_SQRT_double __builtin_sqrt
#define SR_DEFINE_ADAM(SFX, T, ATTR)                                          \
ATTR __attribute__((optimize("fp-contract=off"))) static void                 \
sr_adam_##SFX(long n, T *restrict p, const T *restrict g, T *restrict m,      \
              T *restrict v, T b1, T c1, T b2, T c2, T s, T r, T eps) {       \
    for (long i = 0; i < n; i++) {                                            \
        T gi = g[i], t, mi, vi, d;                                            \
        mi = m[i] * b1;                                                       \
        t = gi * c1;                                                          \
        mi = mi + t;                                                          \
        m[i] = mi;                                                            \
        vi = v[i] * b2;                                                       \
        t = gi * gi;                                                          \
        t = t * c2;                                                           \
        vi = vi + t;                                                          \
        v[i] = vi;                                                            \
        d = SR_SQRT_##T(vi);                                                  \
        d = d / r;                                                            \
        d = d + eps;                                                          \
        d = mi / d;                                                           \
        d = d * s;                                                            \
        p[i] = p[i] - d;                                                      \
    }                                                                         \
}
/* The partial sums of K blocks (rows of P, N = R * C entries each: Out's
 * R x C entries, or with `transposed` those of Out.T) added up and into Out
 * (rows ldo apart): each entry's K parts summed in block order, from the
 * first, then the total added to Out. Tiles of 16 x 16 entries: summed
 * along P's rows (contiguous, vectorised), then added to Out along either
 * axis. Additions only: the same bits at any width. */
#define SR_SUM_TILE 16
#define SR_DEFINE_BLOCK_SUMS(SFX, T, ATTR)                                    \
ATTR static void sr_block_sums_##SFX(const T *restrict P, long K,             \
                                     T *restrict Out, long ldo, long R,       \
                                     long C, int transposed) {                \
    long N = R * C, n_a = transposed ? C : R, n_b = transposed ? R : C;       \
    T tile[SR_SUM_TILE * SR_SUM_TILE];                                        \
    for (long a0 = 0; a0 < n_a; a0 += SR_SUM_TILE) {                          \
        long a1 = a0 + SR_SUM_TILE < n_a ? a0 + SR_SUM_TILE : n_a;            \
        for (long b0 = 0; b0 < n_b; b0 += SR_SUM_TILE) {                      \
            long nb = b0 + SR_SUM_TILE < n_b ? SR_SUM_TILE : n_b - b0;        \
            for (long a = a0; a < a1; a++) {                                  \
                T *restrict t = tile + (a - a0) * SR_SUM_TILE;                \
                const T *restrict row = P + a * n_b + b0;                     \
                for (long b = 0; b < nb; b++) t[b] = row[b];                  \
                for (long k = 1; k < K; k++) {                                \
                    row = P + k * N + a * n_b + b0;                           \
                    for (long b = 0; b < nb; b++) t[b] += row[b];             \
                }                                                             \
            }                                                                 \
            if (transposed) {                                                 \
                for (long b = 0; b < nb; b++)                                 \
                    for (long a = a0; a < a1; a++)                            \
                        Out[(b0 + b) * ldo + a] +=                            \
                            tile[(a - a0) * SR_SUM_TILE + b];                 \
            } else {                                                          \
                for (long a = a0; a < a1; a++)                                \
                    for (long b = 0; b < nb; b++)                             \
                        Out[a * ldo + b0 + b] +=                              \
                            tile[(a - a0) * SR_SUM_TILE + b];                 \
            }                                                                 \
        }                                                                     \
    }                                                                         \
}
SR_DEFINE_ADAM(f_base, float, )
SR_DEFINE_ADAM(d_base, double, )
SR_DEFINE_BLOCK_SUMS(f_base, float, )
SR_DEFINE_BLOCK_SUMS(d_base, double, )

#if defined(__GNUC__) && defined(__x86_64__) && !defined(SKLEARN_RNN_NO_ISA_DISPATCH)
#define SR_PGEMM_DISPATCH 1
#define SR_AVX2 __attribute__((target("avx2,fma")))
#define SR_AVX512 __attribute__((target("avx512f,fma")))
/* AVX2 rows per tile: 6 by half a panel ran the 128-unit LSTM's product at
 * 83.7 GFLOP/s a Zen 3 core, 4 at 80.0, 8 (a quarter panel) at 69.0
 * (benchmarks/OPTIMISATIONS.md, session 16) */
#define SR_AVX2_MR 6
SR_DEFINE_GEMM(sr_pgemm_f_avx2, float, sr_vf8, SR_AVX2_MR, 16, SR_AVX2)
SR_DEFINE_GEMM(sr_pgemm_d_avx2, double, sr_vd4, SR_AVX2_MR, 16, SR_AVX2)
SR_DEFINE_GEMM(sr_pgemm_f_avx512, float, sr_vf16, 12, 32, SR_AVX512)
SR_DEFINE_GEMM(sr_pgemm_d_avx512, double, sr_vd8, 12, 32, SR_AVX512)
SR_DEFINE_GEMM_TN(sr_gemm_tn_f_avx2, float, sr_vf8, SR_AVX2_MR, 16, SR_AVX2)
SR_DEFINE_GEMM_TN(sr_gemm_tn_d_avx2, double, sr_vd4, SR_AVX2_MR, 16, SR_AVX2)
SR_DEFINE_GEMM_TN(sr_gemm_tn_f_avx512, float, sr_vf16, 12, 32, SR_AVX512)
SR_DEFINE_GEMM_TN(sr_gemm_tn_d_avx512, double, sr_vd8, 12, 32, SR_AVX512)
SR_DEFINE_OUTER(sr_outer_f_avx2, sr_gemm_tn_f_avx2, float, SR_AVX2_MR, SR_AVX2)
SR_DEFINE_OUTER(sr_outer_d_avx2, sr_gemm_tn_d_avx2, double, SR_AVX2_MR, SR_AVX2)
SR_DEFINE_OUTER(sr_outer_f_avx512, sr_gemm_tn_f_avx512, float, 12, SR_AVX512)
SR_DEFINE_OUTER(sr_outer_d_avx512, sr_gemm_tn_d_avx512, double, 12, SR_AVX512)
/* The element-wise loops above (DEFINE(SFX, T, ATTR)), for both dtypes and
 * both instruction sets. */
#define SR_DEFINE_FOR_ISAS(DEFINE)                                            \
DEFINE(f_avx2, float, SR_AVX2)                                                \
DEFINE(d_avx2, double, SR_AVX2)                                               \
DEFINE(f_avx512, float, SR_AVX512)                                            \
DEFINE(d_avx512, double, SR_AVX512)
SR_DEFINE_FOR_ISAS(SR_DEFINE_ADDS)
SR_DEFINE_FOR_ISAS(SR_DEFINE_ADAM)
SR_DEFINE_FOR_ISAS(SR_DEFINE_BLOCK_SUMS)
#endif

/* 0: baseline, 1: AVX2 + FMA, 2: AVX-512. Set once at module load. */
static int sr_pgemm_isa = 0;

static inline int sr_pgemm_init(void) {
#if defined(SR_PGEMM_DISPATCH)
    sr_pgemm_isa = sr_isa();
#endif
    return sr_pgemm_isa;
}

/* sr_pgemm_f / sr_pgemm_d: the kernel of the instruction set picked at load. */
#if defined(SR_PGEMM_DISPATCH)
#define SR_DISPATCH(NAME, ...)                                                \
    do {                                                                      \
        if (sr_pgemm_isa == 2) { NAME##_avx512(__VA_ARGS__); return; }        \
        if (sr_pgemm_isa == 1) { NAME##_avx2(__VA_ARGS__); return; }          \
    } while (0)
#else
#define SR_DISPATCH(NAME, ...) do { } while (0)
#endif

/* sr_pgemm2_*: [A1 | A2] @ B, B packed by sr_pack_*2; sr_pgemm_*: A @ B. */
#define SR_DEFINE_PGEMM(NAME, T)                                              \
static void NAME##2(int m, int n, int K1, const T *A1, int lda1, int K2,      \
                    const T *A2, int lda2, const T *P, T *C, int ldc,         \
                    int accumulate) {                                         \
    if (m <= 0 || n <= 0) return;                                             \
    SR_DISPATCH(NAME, m, n, K1, A1, lda1, K2, A2, lda2, P, C, ldc,            \
                accumulate);                                                  \
    NAME##_base(m, n, K1, A1, lda1, K2, A2, lda2, P, C, ldc, accumulate);     \
}                                                                             \
static void NAME(int m, int n, int K, const T *A, int lda, const T *P, T *C,  \
                 int ldc, int accumulate) {                                   \
    NAME##2(m, n, 0, A, lda, K, A, lda, P, C, ldc, accumulate);               \
}

SR_DEFINE_PGEMM(sr_pgemm_f, float)
SR_DEFINE_PGEMM(sr_pgemm_d, double)

/* sr_gemm_tn_*: C += A.T @ B (see SR_DEFINE_GEMM_TN). */
#define SR_DEFINE_TN(NAME, T)                                                 \
static void NAME(int m, int n, int K, const T *A, int lda, const T *B,        \
                 int ldb, T *C, int ldc, T *edge) {                           \
    if (m <= 0 || n <= 0 || K <= 0) return;                                   \
    SR_DISPATCH(NAME, m, n, K, A, lda, B, ldb, C, ldc, edge);                 \
    NAME##_base(m, n, K, A, lda, B, ldb, C, ldc, edge);                       \
}

SR_DEFINE_TN(sr_gemm_tn_f, float)
SR_DEFINE_TN(sr_gemm_tn_d, double)

/* sr_outer_*: C1 += A.T @ B1, C2 += A.T @ B2 (see SR_DEFINE_OUTER). */
#define SR_DEFINE_OUTER_DISPATCH(NAME, T)                                     \
static void NAME(int m, int n1, int n2, int K, const T *A, long lda,          \
                 const T *B1, long ldb1, const T *B2, long ldb2, T *C1,       \
                 long ldc1, T *C2, long ldc2, T *work) {                      \
    if (m <= 0 || n1 + n2 <= 0 || K <= 0) return;                             \
    SR_DISPATCH(NAME, m, n1, n2, K, A, lda, B1, ldb1, B2, ldb2, C1, ldc1, C2, \
                ldc2, work);                                                  \
    NAME##_base(m, n1, n2, K, A, lda, B1, ldb1, B2, ldb2, C1, ldc1, C2, ldc2, \
                work);                                                        \
}

SR_DEFINE_OUTER_DISPATCH(sr_outer_f, float)
SR_DEFINE_OUTER_DISPATCH(sr_outer_d, double)

/* sr_add_rows_* and sr_add_to_rows_* (see SR_DEFINE_ADDS) */
#define SR_DEFINE_ADD_DISPATCH(SFX, T)                                        \
static void sr_add_rows_##SFX(int rows, long n, const T *src, long lds,       \
                              T *dst) {                                       \
    if (rows <= 0 || n <= 0) return;                                          \
    SR_DISPATCH(sr_add_rows_##SFX, rows, n, src, lds, dst);                   \
    sr_add_rows_##SFX##_base(rows, n, src, lds, dst);                         \
}                                                                             \
static void sr_add_to_rows_##SFX(int rows, long n, const T *src, T *dst,      \
                                 long ldd) {                                  \
    if (rows <= 0 || n <= 0) return;                                          \
    SR_DISPATCH(sr_add_to_rows_##SFX, rows, n, src, dst, ldd);                \
    sr_add_to_rows_##SFX##_base(rows, n, src, dst, ldd);                      \
}

SR_DEFINE_ADD_DISPATCH(f, float)
SR_DEFINE_ADD_DISPATCH(d, double)

/* sr_adam_* (see SR_DEFINE_ADAM) */
#define SR_DEFINE_ADAM_DISPATCH(SFX, T)                                       \
static void sr_adam_##SFX(long n, T *p, const T *g, T *m, T *v, T b1, T c1,   \
                          T b2, T c2, T s, T r, T eps) {                      \
    if (n <= 0) return;                                                       \
    SR_DISPATCH(sr_adam_##SFX, n, p, g, m, v, b1, c1, b2, c2, s, r, eps);     \
    sr_adam_##SFX##_base(n, p, g, m, v, b1, c1, b2, c2, s, r, eps);           \
}

SR_DEFINE_ADAM_DISPATCH(f, float)
SR_DEFINE_ADAM_DISPATCH(d, double)

/* sr_block_sums_* (see SR_DEFINE_BLOCK_SUMS) */
#define SR_DEFINE_BLOCK_SUMS_DISPATCH(SFX, T)                                 \
static void sr_block_sums_##SFX(const T *P, long K, T *Out, long ldo, long R, \
                                long C, int transposed) {                     \
    if (K <= 0 || R <= 0 || C <= 0) return;                                  \
    SR_DISPATCH(sr_block_sums_##SFX, P, K, Out, ldo, R, C, transposed);       \
    sr_block_sums_##SFX##_base(P, K, Out, ldo, R, C, transposed);             \
}

SR_DEFINE_BLOCK_SUMS_DISPATCH(f, float)
SR_DEFINE_BLOCK_SUMS_DISPATCH(d, double)

#endif
