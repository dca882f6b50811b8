# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Dense products over all time steps at once, split over OpenMP threads.

These are the big GEMMs of a layer: the input projection of every step (where
the recurrent kernel does not compute it itself), the gradient w.r.t. the layer
input and the weight gradients accumulated over all steps. Each product is cut
into blocks of output rows, and every block is one single-threaded BLAS call
(the weight gradients: the packed product of ``_pgemm.h``, or our own loop
for at most four columns), so the result is bitwise the same whatever the
thread count. Also here: the output layer through the packed kernel
(``linear``: a row's output independent of the other rows), the token
gather/scatter and the element-wise Adam update over the flat parameter
vector.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.limits cimport INT_MAX
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy, memset

from ._blas cimport (
    adam, add_rows, block_sums, gemm, outer, pack_b, rgemm, sr_outer_work_length,
    sr_pack_length, sr_pgemm_init,
)

# each extension module has its own copy of _pgemm.h's dispatch: without
# this, the products here would run the baseline kernels
PGEMM_ISA = sr_pgemm_init()

# Rows of the output computed by one BLAS call: large enough to keep BLAS
# efficient, small enough to give both threads work.
cdef int MIN_BLOCK = 64
cdef int MAX_BLOCKS = 16


cdef inline int block_size(Py_ssize_t n_rows) noexcept nogil:
    cdef Py_ssize_t size = (n_rows + MAX_BLOCKS - 1) // MAX_BLOCKS
    if size < MIN_BLOCK:
        size = MIN_BLOCK
    return <int> size


def matmul(floating[:, ::1] A, floating[:, ::1] B, floating[:, ::1] C,
           bint trans_b, floating beta, int n_threads):
    """``C = A @ op(B) + beta * C`` with ``op(B) = B.T`` if ``trans_b``.

    The rows of ``A`` and ``C`` are split into blocks.
    """
    cdef int K = <int> A.shape[1]
    matmul_rows(C.shape[0], <int> C.shape[1], K, &A[0, 0] if K > 0 else NULL,
                &B[0, 0] if K > 0 else NULL, <int> B.shape[1], trans_b, beta,
                &C[0, 0] if C.shape[0] > 0 and C.shape[1] > 0 else NULL,
                n_threads)


cdef void matmul_rows(Py_ssize_t M, int N, int K, const floating* pA,
                      const floating* pB, int ldb, bint trans_b, floating beta,
                      floating* pC, int n_threads) noexcept nogil:
    """``matmul`` on C-contiguous ``A`` (M x K) and ``C`` (M x N): one BLAS
    call per block of rows, the blocks a function of ``M`` only."""
    cdef int size = block_size(M)
    cdef int n_blocks = <int> ((M + size - 1) // size)
    cdef int k, lo, m
    if M == 0 or N == 0:
        return
    if n_blocks == 1 or n_threads <= 1:
        # no parallel region for one thread
        for k in range(n_blocks):
            lo = k * size
            gemm(False, trans_b, <int> min(<Py_ssize_t> size, M - lo), N, K,
                 <floating> 1, pA + lo * K, K, pB, ldb, beta, pC + lo * N, N)
        return
    for k in prange(n_blocks, schedule="static",
                    num_threads=min(n_threads, n_blocks)):
        lo = k * size
        m = <int> min(<Py_ssize_t> size, M - lo)
        gemm(False, trans_b, m, N, K, <floating> 1, pA + lo * K, K, pB, ldb,
             beta, pC + lo * N, N)


def data_address(const unsigned char[::1] a):
    """Address of the first byte of ``a`` (0 when empty); much cheaper than
    ``a.ctypes.data``."""
    return <size_t> &a[0] if a.shape[0] > 0 else 0


def linear_pack_length(int n_out, int n_in, int itemsize):
    """Length of the ``wpack`` buffer of ``linear``."""
    return sr_pack_length(n_out, n_in, itemsize)


def linear(floating[:, ::1] X, floating[:, ::1] W, floating[::1] b,
           floating[:, ::1] out, floating[::1] wpack, int n_threads):
    """``out = X @ W.T + b``, a dense layer over the rows of ``X``.

    ``W`` is packed once into ``wpack`` (``linear_pack_length`` elements)
    and every row goes through the packed kernel of ``pyx_rnn/_pgemm.h``:
    its outputs are bitwise the same whatever rows share the call, which
    BLAS does not promise (OpenBLAS's AVX2 SGEMM and GEMV sum a row
    differently depending on where it falls in the matrix).
    """
    cdef Py_ssize_t M = X.shape[0]
    cdef int K = <int> X.shape[1]
    cdef int N = <int> W.shape[0]
    if M == 0 or N == 0:
        return
    with nogil:
        linear_rows(M, N, K, &X[0, 0] if K > 0 else NULL,
                    &W[0, 0] if K > 0 else NULL, &b[0], &out[0, 0], &wpack[0],
                    n_threads)


cdef void linear_rows(Py_ssize_t M, int N, int K, const floating* pX,
                      const floating* pW, const floating* pb, floating* pO,
                      floating* pP, int n_threads) noexcept nogil:
    """``linear`` on addresses (``M`` and ``N`` above 0; ``pP`` receives
    the packed ``W``)."""
    cdef int size = block_size(M)
    cdef int n_blocks = <int> ((M + size - 1) // size)
    cdef int k
    pack_b(True, K, N, pW, K, pP)
    if n_blocks == 1 or n_threads <= 1:
        # no parallel region for one thread (a few rows: the output layer
        # of a batch at its last steps)
        for k in range(n_blocks):
            linear_block(k * size, <int> min(<Py_ssize_t> size, M - k * size),
                         N, K, pX, pP, pb, pO)
        return
    for k in prange(n_blocks, schedule="static",
                    num_threads=min(n_threads, n_blocks)):
        linear_block(k * size, <int> min(<Py_ssize_t> size, M - k * size), N, K,
                     pX, pP, pb, pO)


cdef inline void linear_block(Py_ssize_t lo, int m, int N, int K,
                              const floating* pX, const floating* pP,
                              const floating* pb, floating* pO) noexcept nogil:
    """Rows ``lo:lo+m`` of ``linear``."""
    cdef Py_ssize_t i
    cdef int j
    rgemm(m, N, K, pX + lo * K, K, pP, True, NULL, 0, False, pO + lo * N, N)
    for i in range(lo, lo + m):
        for j in range(N):
            pO[i * N + j] = pO[i * N + j] + pb[j]


def outer_work_size(Py_ssize_t n1, Py_ssize_t n2, int itemsize, int n_threads):
    """Elements of the ``work`` buffer of ``accumulate_outer`` (``n2 = 0``)
    and ``accumulate_outer2`` on ``n_threads`` threads: each thread's copy
    of one block of rows of ``B1`` and ``B2`` and of one tile of ``A``."""
    return max(1, n_threads) * sr_outer_work_length(n1, n2, itemsize)


# accumulate_outer computes products with at most this many columns with its
# own loop: a panel of the packed product would be mostly zeros there (and
# BLAS took a matrix-vector path, at 4 GFLOP/s on a 1600 x 128 x 1 input-weight
# gradient (a univariate series), against about 40 here)
cdef int NARROW = 4
#: (Python's copy) output layers this narrow need no ``work`` in linear_backward
NARROW_COLUMNS = NARROW
# rows of C per block of the narrow product (its sums stay in L1)
cdef int NARROW_BLOCK = 256
# rows of C per tile of the packed product on AVX-512 (SR_OUTER_MAX_MR): the
# rows of C are split among threads in multiples of it
cdef int OUTER_TILE = 12


cdef void outer_narrow(const floating* A, Py_ssize_t lda, const floating* B,
                       Py_ssize_t ldb, floating* C, Py_ssize_t ldc,
                       Py_ssize_t R, int lo, int m, int N) noexcept nogil:
    """``C[lo:lo+m, :N] += A[:, lo:lo+m].T @ B[:, :N]``: every entry one
    sum over the rows in order, vectorised across the entries of a column."""
    cdef floating acc[256]      # NARROW_BLOCK
    cdef const floating* a
    cdef floating b
    cdef Py_ssize_t r
    cdef int i, j
    for j in range(N):
        for i in range(m):
            acc[i] = 0
        for r in range(R):
            a = A + r * lda + lo
            b = B[r * ldb + j]
            for i in range(m):
                acc[i] += a[i] * b
        for i in range(m):
            C[(lo + i) * ldc + j] += acc[i]


cdef Py_ssize_t row_stride(floating[:, :] M, str name) except -1:
    """Elements between the rows of ``M``, whose rows must be contiguous."""
    if M.shape[0] > 0 and M.shape[1] > 1 and M.strides[1] != sizeof(floating):
        raise ValueError(f"{name} must have contiguous rows")
    return M.strides[0] // sizeof(floating)


def accumulate_outer(floating[:, :] A, floating[:, ::1] B,
                     floating[:, :] C, int n_threads, work=None):
    """``C += A.T @ B``, summing over the rows of ``A`` and ``B``.

    This accumulates a weight gradient over every step of a batch. With at
    most ``NARROW`` columns in ``B`` every entry of ``C`` is one sum over the
    rows, computed here, vectorised over the rows of ``C``. Otherwise the
    packed product (``_pgemm.h``, ``sr_outer``) sums the rows in blocks of
    ``SR_OUTER_KC`` (256), each from zero and in order, and adds each block's
    sum to ``C`` in turn; the rows of ``C`` are split among the threads.
    Either way every entry's sum is the same whatever the thread count.
    ``A`` and ``C`` may be column slices of C-contiguous arrays (rows
    contiguous, any row stride). ``work`` (1-D, ``outer_work_size``
    elements or more, same dtype) is the product's scratch; a new buffer is
    allocated when it is None or too small.
    """
    if B.shape[0] != A.shape[0] or C.shape[0] != A.shape[1] or C.shape[1] != B.shape[1]:
        raise ValueError("accumulate_outer: A (R x m), B (R x n) and C (m x n) "
                         "do not match")
    cdef Py_ssize_t lda = row_stride(A, "A")
    cdef Py_ssize_t ldc = row_stride(C, "C")
    if A.shape[0] == 0 or C.shape[0] == 0 or C.shape[1] == 0:
        return
    outer_into(&A[0, 0], lda, A.shape[0], <int> C.shape[0], &B[0, 0],
               B.shape[1], <int> C.shape[1], &C[0, 0], ldc, n_threads, work)


cdef int outer_into(const floating* pA, Py_ssize_t lda, Py_ssize_t R, int M,
                    const floating* pB, Py_ssize_t ldb, int N, floating* pC,
                    Py_ssize_t ldc, int n_threads, work) except -1:
    """``accumulate_outer`` on pointers (``R``, ``M`` and ``N`` above 0)."""
    cdef int n_blocks, size, k, lo
    if N <= NARROW:
        n_blocks = (M + NARROW_BLOCK - 1) // NARROW_BLOCK
        if M >= 64:   # two blocks, for two threads
            n_blocks = max(n_blocks, 2)
        size = (M + n_blocks - 1) // n_blocks
        for k in prange(n_blocks, nogil=True, schedule="static",
                        num_threads=min(n_threads, n_blocks)):
            lo = k * size
            outer_narrow(pA, lda, pB, ldb, pC, ldc, R, lo, min(size, M - lo), N)
        return 0
    return _outer(pA, lda, R, M, pB, ldb, N, pB, ldb, 0, pC, ldc, pC, ldc,
                  n_threads, work)


def accumulate_outer2(floating[:, :] A, floating[:, ::1] B1,
                      floating[:, ::1] B2, floating[:, :] C1,
                      floating[:, :] C2, int n_threads, work=None):
    """``C1 += A.T @ B1`` and ``C2 += A.T @ B2``: bitwise the same as two
    calls of ``accumulate_outer``, but, unless ``B1`` or ``B2`` has at most
    ``NARROW`` columns, one product that copies the tiles of ``A`` (a
    layer's gate gradients, the largest of the three) once for both.
    ``work`` is as for ``accumulate_outer`` with ``n2`` the columns of
    ``B2``."""
    if B1.shape[0] != A.shape[0] or B2.shape[0] != A.shape[0]:
        raise ValueError("A, B1 and B2 must have the same number of rows")
    if (C1.shape[0] != A.shape[1] or C2.shape[0] != A.shape[1]
            or C1.shape[1] != B1.shape[1] or C2.shape[1] != B2.shape[1]):
        raise ValueError("C1 and C2 must be A.shape[1] x B1.shape[1] and "
                         "A.shape[1] x B2.shape[1]")
    if B1.shape[1] <= NARROW or B2.shape[1] <= NARROW:
        accumulate_outer(A, B1, C1, n_threads, work)
        accumulate_outer(A, B2, C2, n_threads, work)
        return
    cdef Py_ssize_t lda = row_stride(A, "A")
    cdef Py_ssize_t ldc1 = row_stride(C1, "C1")
    cdef Py_ssize_t ldc2 = row_stride(C2, "C2")
    if A.shape[0] == 0 or A.shape[1] == 0:
        return
    _outer(&A[0, 0], lda, A.shape[0], <int> A.shape[1], &B1[0, 0],
           B1.shape[1], <int> B1.shape[1], &B2[0, 0], B2.shape[1],
           <int> B2.shape[1], &C1[0, 0], ldc1, &C2[0, 0], ldc2, n_threads, work)


cdef int _outer(const floating* pA, Py_ssize_t lda, Py_ssize_t R, int M,
                const floating* pB1, Py_ssize_t ldb1, int N1,
                const floating* pB2, Py_ssize_t ldb2, int N2,
                floating* pC1, Py_ssize_t ldc1, floating* pC2,
                Py_ssize_t ldc2, int n_threads, work) except -1:
    """The packed product of ``accumulate_outer2``, the ``M`` rows of
    ``C1`` and ``C2`` cut into one block per thread (whole tiles)."""
    if R > INT_MAX:
        raise ValueError("accumulate_outer: too many rows")
    cdef int tiles = (M + OUTER_TILE - 1) // OUTER_TILE
    cdef int n_blocks = max(1, min(n_threads, tiles))
    cdef int size = (tiles + n_blocks - 1) // n_blocks * OUTER_TILE
    cdef int k, lo
    n_blocks = (M + size - 1) // size
    cdef Py_ssize_t length = sr_outer_work_length(N1, N2, sizeof(floating))
    dtype = np.float32 if floating is float else np.float64
    if (work is None or work.dtype != dtype or work.ndim != 1
            or work.shape[0] < n_blocks * length):
        work = np.empty(n_blocks * length, dtype)
    cdef floating[::1] scratch = work
    cdef floating* pW = &scratch[0]
    for k in prange(n_blocks, nogil=True, schedule="static",
                    num_threads=n_blocks):
        lo = k * size
        outer(min(size, M - lo), N1, N2, <int> R, pA + lo, lda, pB1, ldb1,
              pB2, ldb2, pC1 + lo * ldc1, ldc1, pC2 + lo * ldc2, ldc2,
              pW + k * length)
    return 0


def accumulate_column_sums(floating[:, :] A, floating[::1] out):
    """``out += A.sum(axis=0)``, adding rows in order (a bias gradient),
    vectorised for the CPU (``add_rows``). ``A`` may be a column slice of a
    C-contiguous array (rows contiguous)."""
    if A.shape[0] > 0 and A.shape[1] > 1 and A.strides[1] != sizeof(floating):
        raise ValueError("A must have contiguous rows")
    cdef Py_ssize_t R = A.shape[0], M = A.shape[1]
    if R == 0 or M == 0:
        return
    if out.shape[0] != M:
        raise ValueError(f"out must have A's {M} columns, got {out.shape[0]}")
    with nogil:
        column_sums(&A[0, 0], A.strides[0] // sizeof(floating), R, M, &out[0])


cdef void column_sums(const floating* pA, Py_ssize_t lda, Py_ssize_t R,
                      Py_ssize_t M, floating* pout) noexcept nogil:
    """``accumulate_column_sums`` on pointers."""
    cdef Py_ssize_t r0 = 0, rows
    # add_rows counts rows in an int: chunks of at most INT_MAX rows
    while r0 < R:
        rows = min(R - r0, <Py_ssize_t> INT_MAX)
        add_rows(<int> rows, M, pA + r0 * lda, lda, pout)
        r0 += rows


cdef void narrow_linear_backward(const floating* X, const floating* dZ,
                                 const floating* W, floating* gW, floating* gb,
                                 floating* dX, Py_ssize_t R, int n_in,
                                 int n_out) noexcept nogil:
    """``linear_backward`` for at most ``NARROW`` outputs (a regression's or
    a binary classifier's output layer), in loops of its own rather than
    three calls: each entry of ``gW`` and ``gb`` one sum over the rows in
    order, from zero, then added; each row of ``dX`` a sum over the outputs
    in order."""
    cdef floating acc[256]      # NARROW_BLOCK
    cdef floating b, d
    cdef Py_ssize_t r
    cdef int i, j, k, lo, m
    for k in range(n_out):
        b = 0
        for r in range(R):
            b = b + dZ[r * n_out + k]
        gb[k] = gb[k] + b
        lo = 0
        while lo < n_in:
            m = min(NARROW_BLOCK, n_in - lo)
            for i in range(m):
                acc[i] = 0
            for r in range(R):
                d = dZ[r * n_out + k]
                for i in range(m):
                    acc[i] = acc[i] + d * X[r * n_in + lo + i]
            for i in range(m):
                gW[k * n_in + lo + i] = gW[k * n_in + lo + i] + acc[i]
            lo += m
    for r in range(R):
        for j in range(n_in):
            dX[r * n_in + j] = dZ[r * n_out] * W[j]
        for k in range(1, n_out):
            d = dZ[r * n_out + k]
            for j in range(n_in):
                dX[r * n_in + j] = dX[r * n_in + j] + d * W[k * n_in + j]


def linear_backward(const floating[:, ::1] X, const floating[:, ::1] dZ,
                    const floating[:, ::1] W, floating[:, ::1] gW,
                    floating[::1] gb, floating[:, ::1] dX, int n_threads,
                    work=None):
    """The gradient of ``linear`` (``Z = X @ W.T + b``) from ``dZ``, in one
    call: ``gW += dZ.T @ X``, ``gb += dZ.sum(axis=0)`` and ``dX = dZ @ W``.
    For at most ``NARROW_COLUMNS`` outputs, loops of its own
    (``narrow_linear_backward``: each sum over the rows in order, from
    zero); for more, ``accumulate_outer``'s product, ``accumulate_column_sums``
    and ``matmul``. Either way every sum is the same whatever the thread
    count. ``work`` is ``accumulate_outer``'s, with ``X``'s columns (not
    read for the narrow loops)."""
    cdef Py_ssize_t R = X.shape[0]
    cdef int n_in = <int> X.shape[1], n_out = <int> W.shape[0]
    if (dZ.shape[0] != R or dZ.shape[1] != n_out or W.shape[1] != n_in
            or gW.shape[0] != n_out or gW.shape[1] != n_in
            or gb.shape[0] != n_out or dX.shape[0] != R
            or dX.shape[1] != n_in):
        raise ValueError(
            f"linear_backward: X {(R, n_in)}, dZ {(dZ.shape[0], dZ.shape[1])}, "
            f"W and gW {(n_out, W.shape[1])} and {(gW.shape[0], gW.shape[1])}, "
            f"gb ({gb.shape[0]},) and dX {(dX.shape[0], dX.shape[1])} do not "
            f"match")
    if R == 0 or n_in == 0 or n_out == 0:
        return
    linear_backward_rows(&X[0, 0], &dZ[0, 0], &W[0, 0], &gW[0, 0], &gb[0],
                         &dX[0, 0], R, n_in, n_out, n_threads, work)


cdef int linear_backward_rows(const floating* X, const floating* dZ,
                              const floating* W, floating* gW, floating* gb,
                              floating* dX, Py_ssize_t R, int n_in, int n_out,
                              int n_threads, work) except -1:
    """``linear_backward`` on addresses (``R``, ``n_in`` and ``n_out`` above
    0)."""
    if n_out <= NARROW:
        with nogil:
            narrow_linear_backward(X, dZ, W, gW, gb, dX, R, n_in, n_out)
        return 0
    outer_into(dZ, n_out, R, n_out, X, n_in, n_in, gW, n_in, n_threads, work)
    with nogil:
        column_sums(dZ, n_out, R, n_out, gb)
        matmul_rows(R, n_in, n_out, dZ, W, n_in, False, <floating> 0, dX,
                    n_threads)
    return 0


cdef void check_block_sums(const floating[:, ::1] parts, floating[:, :] out):
    cdef Py_ssize_t R = out.shape[0], C = out.shape[1]
    if parts.shape[1] != R * C:
        raise ValueError(f"parts must hold out's {R * C} entries a row, got "
                         f"{parts.shape[1]}")
    if C > 1 and out.strides[1] != sizeof(floating):
        raise ValueError("out must have contiguous rows")


def add_block_sums(const floating[:, ::1] parts, floating[:, :] out,
                   bint transposed):
    """``out += parts.sum(axis=0)``, with NumPy's bits: each entry's partial
    sums (one row of ``parts`` per block of sequences) added in block order,
    then the total added to ``out``. A row of ``parts`` holds ``out`` in
    row-major order or, with ``transposed``, ``out.T`` (the backward kernel
    sums ``W.T``'s gradient). ``out`` may be a view with contiguous rows."""
    check_block_sums(parts, out)
    if parts.shape[0] == 0 or out.shape[0] == 0 or out.shape[1] == 0:
        return
    with nogil:
        block_sums(&parts[0, 0], parts.shape[0], &out[0, 0],
                   out.strides[0] // sizeof(floating), out.shape[0],
                   out.shape[1], transposed)


cdef class BlockSums:
    """Some ``add_block_sums`` calls made ready for repeated use on the same
    arrays (a training plan's partial sums and gradients), and the zeroing
    of their partial sums: each call's arrays checked and their addresses
    read once. A call's ``out`` may be 1-D (one row).

    ``BlockSums(calls)``, ``calls`` a list of ``(parts, out, transposed)``
    of one dtype; it keeps them alive. The arrays must keep their shapes
    and their data (their values may change).
    """
    def __cinit__(self, calls):
        for _, out, _ in calls:
            if out.ndim == 1 and not out.flags.c_contiguous:
                # its reshape would be a copy
                raise ValueError("BlockSums: a 1-D out must be contiguous")
        calls = [(parts, out.reshape(1, -1) if out.ndim == 1 else out, bool(t))
                 for parts, out, t in calls]
        self.arrays = tuple(calls)
        self.itemsize = calls[0][0].itemsize if calls else 8
        self.calls = <BlockSum*> PyMem_Malloc(max(1, len(calls)) * sizeof(BlockSum))
        if self.calls == NULL:
            raise MemoryError()
        self.n_calls = 0
        for parts, out, transposed in calls:
            if parts.dtype != out.dtype or parts.itemsize != self.itemsize:
                raise TypeError("BlockSums: every array must have one dtype")
            if self.itemsize == sizeof(float):
                self._add_call[float](parts, out, transposed)
            else:
                self._add_call[double](parts, out, transposed)

    cdef void _add_call(self, floating[:, ::1] parts, floating[:, :] out,
                        bint transposed) except *:
        check_block_sums(parts, out)
        cdef BlockSum* c = &self.calls[self.n_calls]
        if parts.shape[0] == 0 or out.shape[0] == 0 or out.shape[1] == 0:
            return
        c.parts, c.out = &parts[0, 0], &out[0, 0]
        c.K, c.R, c.C = parts.shape[0], out.shape[0], out.shape[1]
        c.ldo = out.strides[0] // sizeof(floating)
        c.transposed = transposed
        self.n_calls += 1

    def __dealloc__(self):
        PyMem_Free(self.calls)

    def zero_parts(self):
        """Set every partial sum to zero."""
        self.zero()

    def add(self):
        """Add each call's partial sums to its ``out``, in the order given."""
        with nogil:
            self.add_all()

    cdef void zero(self) noexcept nogil:
        """``zero_parts`` without the GIL."""
        cdef Py_ssize_t i
        cdef BlockSum* c
        for i in range(self.n_calls):
            c = &self.calls[i]
            memset(c.parts, 0, c.K * c.R * c.C * self.itemsize)

    cdef void add_all(self) noexcept nogil:
        """``add`` without the GIL."""
        cdef Py_ssize_t i
        cdef BlockSum* c
        for i in range(self.n_calls):
            c = &self.calls[i]
            if self.itemsize == sizeof(float):
                block_sums(<const float*> c.parts, c.K, <float*> c.out, c.ldo,
                           c.R, c.C, c.transposed)
            else:
                block_sums(<const double*> c.parts, c.K, <double*> c.out,
                           c.ldo, c.R, c.C, c.transposed)


def gather_rows(const Py_ssize_t[::1] ids, floating[::1] weights,
                floating[:, ::1] table, floating[:, ::1] out, int n_threads):
    """``out[r] = weights[r] * table[ids[r]]``: an embedding lookup, or the
    product of weighted one-hot vectors with a weight matrix (stored as its
    transpose, one row per token)."""
    cdef Py_ssize_t R = ids.shape[0], r
    cdef Py_ssize_t M = table.shape[1], j
    cdef floating w
    # one thread for small lookups: a team costs more than it saves
    for r in prange(R, nogil=True, schedule="static",
                    num_threads=n_threads if R * M > 65536 else 1):
        w = weights[r]
        for j in range(M):
            out[r, j] = w * table[ids[r], j]


def scatter_add_rows(const Py_ssize_t[::1] ids, floating[::1] weights,
                     floating[:, ::1] src, floating[:, ::1] table):
    """``table[ids[r]] += weights[r] * src[r]`` for every r, in order: the
    gradient of ``gather_rows`` (deterministic: one thread, fixed order)."""
    cdef Py_ssize_t R = ids.shape[0], r
    cdef Py_ssize_t M = table.shape[1], j
    cdef floating w
    with nogil:
        for r in range(R):
            w = weights[r]
            for j in range(M):
                table[ids[r], j] += w * src[r, j]


def adam_update(floating[::1] params, const floating[::1] grads, floating[::1] m,
                floating[::1] v, double beta_1, double beta_2, double step_size,
                double bias_2, double epsilon):
    """One Adam update of every parameter, in place and in one pass:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= step_size * m / (sqrt(v) / bias_2 + epsilon)

    with ``bias_2 = sqrt(1 - b2^t)`` and ``step_size = lr / (1 - b1^t)``.
    Every scalar is rounded to the parameters' dtype first, and every
    operation is rounded in that dtype, in the order written above
    (``_pgemm.h``'s ``sr_adam``, vectorised for the CPU: the same bits at
    any width). One read and one write of each array, where NumPy
    expressions take a dozen passes. Raises ValueError, before any update,
    where the four arrays differ in length.
    """
    cdef Py_ssize_t n = params.shape[0]
    if grads.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"adam_update: params, grads, m and v must have the "
                         f"same length, got {n}, {grads.shape[0]}, "
                         f"{m.shape[0]} and {v.shape[0]}")
    if n == 0:
        return
    with nogil:
        adam(n, &params[0], &grads[0], &m[0], &v[0], <floating> beta_1,
             <floating> (1 - beta_1), <floating> beta_2, <floating> (1 - beta_2),
             <floating> step_size, <floating> bias_2, <floating> epsilon)


def squared_error(const floating[:, ::1] Y, const floating[:, ::1] T,
                  const floating[::1] weight, double total_weight,
                  floating[:, ::1] dY):
    """Weighted squared error of the rows of ``Y`` against ``T``, averaged
    over the outputs as sklearn's MLP does, and its gradient w.r.t. ``Y``
    into ``dY``, in one pass::

        w_r = weight_r / (total_weight * n_outputs)   (in double, rounded)
        dY = w_r * (Y - T)                            (in the dtype)
        loss = 0.5 * sum_r w_r * sum_j (Y - T)^2      (in double)

    Rows in order, outputs in order: the same bits whatever the thread
    count or the rows around a row. Returns the loss."""
    cdef Py_ssize_t R = Y.shape[0], N = Y.shape[1]
    if (T.shape[0] != R or T.shape[1] != N or weight.shape[0] != R
            or dY.shape[0] != R or dY.shape[1] != N):
        raise ValueError(
            f"squared_error: outputs of shape {(R, N)}, targets of shape "
            f"{(T.shape[0], T.shape[1])}, {weight.shape[0]} weights and a "
            f"gradient of shape {(dY.shape[0], dY.shape[1])}: targets must "
            f"have one row of {N} outputs per loss term")
    cdef double value = 0
    if R == 0 or N == 0:
        return value
    with nogil:
        value = squared_error_rows(&Y[0, 0], &T[0, 0], &weight[0], total_weight,
                                   &dY[0, 0], R, N)
    return value


cdef double squared_error_rows(const floating* Y, const floating* T,
                               const floating* weight, double total_weight,
                               floating* dY, Py_ssize_t R,
                               Py_ssize_t N) noexcept nogil:
    """``squared_error`` on addresses (C-contiguous rows of ``N``)."""
    cdef double value = 0, row, scale = total_weight * N
    cdef floating w, d
    cdef Py_ssize_t r, j
    for r in range(R):
        w = <floating> (weight[r] / scale)
        row = 0
        for j in range(N):
            d = Y[r * N + j] - T[r * N + j]
            dY[r * N + j] = w * d
            row += <double> d * d
        value += w * row
    return 0.5 * value


def sum_squares(const floating[::1] x):
    """``sum(x ** 2)`` in double precision, in one pass and one fixed order
    whatever the thread count: element ``i`` goes to partial sum ``i % 4``
    (each square rounded to double, exact for float32), and the four
    partial sums are added in order at the end. NaN and infinity carry
    through."""
    cdef Py_ssize_t n = x.shape[0], i
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, a
    if n == 0:
        return 0.0
    cdef const floating* p = &x[0]
    with nogil:
        for i in range(0, n - 3, 4):
            a = p[i]
            s0 += a * a
            a = p[i + 1]
            s1 += a * a
            a = p[i + 2]
            s2 += a * a
            a = p[i + 3]
            s3 += a * a
        for i in range(n - n % 4, n):
            a = p[i]
            s0 += a * a
    return ((s0 + s1) + s2) + s3


cdef bint finite_run(const floating* x, Py_ssize_t n) noexcept nogil:
    """Whether none of ``x[:n]`` is NaN or infinite: whether none has all its
    exponent bits set (integer operations, which the compiler vectorises,
    unlike comparisons of floats that must respect NaN)."""
    cdef Py_ssize_t i
    cdef unsigned int bad32 = 0
    cdef unsigned long long bad64 = 0
    cdef const unsigned int* p32
    cdef const unsigned long long* p64
    if floating is float:
        p32 = <const unsigned int*> x
        for i in range(n):
            bad32 |= (p32[i] & 0x7f800000u) == 0x7f800000u
    else:
        p64 = <const unsigned long long*> x
        for i in range(n):
            bad64 |= (p64[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull
    return bad32 == 0 and bad64 == 0


def all_finite(const floating[:, ::1] x):
    """Whether no element of ``x`` is NaN or infinite."""
    cdef bint ok
    if x.shape[0] == 0 or x.shape[1] == 0:
        return True
    with nogil:
        ok = finite_run(&x[0, 0], x.shape[0] * x.shape[1])
    return ok


cdef Py_ssize_t first_outside(const Py_ssize_t[::1] starts,
                              const Py_ssize_t[::1] lengths,
                              Py_ssize_t n_rows) except -2:
    """``first_sequence_outside``, for the functions here."""
    cdef Py_ssize_t b
    if lengths.shape[0] != starts.shape[0]:
        raise ValueError(f"{starts.shape[0]} starts but {lengths.shape[0]} lengths")
    for b in range(starts.shape[0]):
        if starts[b] < 0 or starts[b] > n_rows - lengths[b]:
            return b
    return -1


def first_sequence_outside(const Py_ssize_t[::1] starts,
                           const Py_ssize_t[::1] lengths, Py_ssize_t n_rows):
    """The first ``b`` whose rows ``starts[b]:starts[b] + lengths[b]`` are
    not all within ``n_rows`` rows, or -1 (``lengths`` are positive)."""
    return first_outside(starts, lengths, n_rows)


cdef int pack_step(const floating* data, const Py_ssize_t* starts,
                   Py_ssize_t n, Py_ssize_t t, Py_ssize_t m,
                   floating* out) noexcept nogil:
    """``pack_rows``'s step ``t`` of its ``n`` sequences into ``out``: 1 if a
    value copied is NaN or infinite, else 0."""
    cdef Py_ssize_t b, j
    if m * sizeof(floating) < 64:
        # short rows (a univariate series): a call of memcpy per row costs
        # more than the copy
        for b in range(n):
            for j in range(m):
                out[b * m + j] = data[(starts[b] + t) * m + j]
    else:
        for b in range(n):
            memcpy(out + b * m, data + (starts[b] + t) * m, m * sizeof(floating))
    return 0 if finite_run(out, n * m) else 1


def pack_rows(const floating[:, ::1] data, const Py_ssize_t[::1] starts,
              const Py_ssize_t[::1] batch_sizes, const Py_ssize_t[::1] offsets,
              floating[:, ::1] out, int n_threads):
    """Copy a batch's steps from where they lie into its packed rows: row
    ``offsets[t] + b`` of ``out`` receives row ``starts[b] + t`` of ``data``
    (step ``t`` of the sequence at packed position ``b``, as a
    ``SequenceInput`` reads it), for the packing ``batch_sizes``,
    ``offsets``. Returns whether every value copied is finite, checked on
    the copy in the same pass. The steps are shared out among ``n_threads``
    threads (one for a small batch). Raises ValueError where the sizes do
    not agree or a sequence's rows are not all in ``data``."""
    cdef Py_ssize_t T = batch_sizes.shape[0], B = starts.shape[0]
    cdef Py_ssize_t m = data.shape[1], t, b
    cdef int bad = 0
    if n_threads < 1:
        raise ValueError(f"pack_rows: n_threads must be at least 1, got {n_threads}")
    if (offsets.shape[0] != T + 1 or out.shape[1] != m or T == 0
            or batch_sizes[0] != B or offsets[0] != 0
            or offsets[T] != out.shape[0]):
        raise ValueError(f"pack_rows: {B} starts, {T} batch sizes, "
                         f"{offsets.shape[0]} offsets and out of shape "
                         f"({out.shape[0]}, {out.shape[1]}) do not make one "
                         f"packing of rows of {m} values")
    for t in range(T):
        if (batch_sizes[t] < 1 or batch_sizes[t] > (batch_sizes[t - 1] if t else B)
                or offsets[t + 1] - offsets[t] != batch_sizes[t]):
            raise ValueError("pack_rows: batch_sizes must be positive and "
                             "non-increasing, and offsets their running sum")
    # the sequence at packed position b has as many steps as batch sizes
    # above b; they must lie in data (t stays >= 1: batch_sizes[0] = B > b)
    t = T
    for b in range(B):
        while batch_sizes[t - 1] <= b:
            t -= 1
        if starts[b] < 0 or starts[b] > data.shape[0] - t:
            raise ValueError(f"pack_rows: sequence {b} needs rows {starts[b]}.."
                             f"{starts[b] + t - 1} of data, which has "
                             f"{data.shape[0]} rows")
    if m == 0:
        return True
    if offsets[T] * m <= 65536:
        # one thread for a small batch: a team costs more than it saves
        with nogil:
            for t in range(T):
                bad += pack_step(&data[0, 0], &starts[0], batch_sizes[t], t, m,
                                 &out[offsets[t], 0])
        return bad == 0
    # steps in turn, 8 at a time: variable-length batches' steps shrink
    for t in prange(T, nogil=True, schedule="static", chunksize=8,
                    num_threads=n_threads):
        bad += pack_step(&data[0, 0], &starts[0], batch_sizes[t], t, m,
                         &out[offsets[t], 0])
    return bad == 0


def all_finite_rows(const floating[:, ::1] x, const Py_ssize_t[::1] starts,
                    const Py_ssize_t[::1] lengths):
    """Whether no element of the rows ``starts[b]:starts[b] + lengths[b]`` of
    ``x`` is NaN or infinite (the rows a ``SequenceInput`` reads); raises
    ValueError if any of them is not in ``x``."""
    cdef Py_ssize_t b, m = x.shape[1]
    cdef bint ok = True
    if first_outside(starts, lengths, x.shape[0]) >= 0:
        raise ValueError("rows outside x")
    if m == 0:
        return True
    with nogil:
        for b in range(starts.shape[0]):
            if not finite_run(&x[starts[b], 0], lengths[b] * m):
                ok = False
                break
    return ok
