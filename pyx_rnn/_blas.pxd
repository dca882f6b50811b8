# Fused float/double wrappers over scipy.linalg.cython_blas, row-major.
#
# Kernels call these with the GIL released. They never spawn threads of their
# own beyond what BLAS does; callers limit BLAS to one thread around OpenMP
# regions (see pyx_rnn._threads) so that the two never oversubscribe the cores.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Row-major ``C[m, n] = alpha * op(A) @ op(B) + beta * C``.

    BLAS is column-major, where a row-major matrix reads as its transpose, so
    this computes ``C.T = op(B).T @ op(A).T`` with the operands swapped.
    """
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&ta, &tb, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)
