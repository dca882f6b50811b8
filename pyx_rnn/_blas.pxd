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


# The recurrent product with a weight matrix packed once per layer call
# (pyx_rnn/_pgemm.h): register-blocked, and each output element is summed in
# a fixed order whatever the rows around it.
cdef extern from "_pgemm.h" nogil:
    long sr_pack_length(long n, long k, long itemsize)
    void sr_pack_f(const float* B, int ldb, int trans, int K, int N, float* P)
    void sr_pack_d(const double* B, int ldb, int trans, int K, int N, double* P)
    void sr_pgemm_f(int m, int n, int K, const float* A, int lda,
                    const float* P, float* C, int ldc, int accumulate)
    void sr_pgemm_d(int m, int n, int K, const double* A, int lda,
                    const double* P, double* C, int ldc, int accumulate)
    int sr_pgemm_init()


cdef inline void pack_b(bint trans, int k, int n, const floating* b, int ldb,
                        floating* p) noexcept nogil:
    """Pack ``op(B)`` (``k x n``, row-major; ``op(B) = B.T`` with ``trans``)
    for ``pgemm``, into ``sr_pack_length(n, k, sizeof)`` elements at ``p``."""
    if floating is float:
        sr_pack_f(b, ldb, trans, k, n, p)
    else:
        sr_pack_d(b, ldb, trans, k, n, p)


cdef inline void rgemm(int m, int n, int k, const floating* a, int lda,
                       const floating* packed, bint trans_b, const floating* b,
                       int ldb, bint accumulate, floating* c,
                       int ldc) noexcept nogil:
    """Row-major ``C[m, n] (=, or += with accumulate) A @ op(B)``: with the
    packed kernel when ``packed`` (``op(B)`` packed by ``pack_b``) is not
    NULL, else with BLAS."""
    if packed != NULL:
        if floating is float:
            sr_pgemm_f(m, n, k, a, lda, packed, c, ldc, accumulate)
        else:
            sr_pgemm_d(m, n, k, a, lda, packed, c, ldc, accumulate)
    else:
        gemm(False, trans_b, m, n, k, <floating> 1, a, lda, b, ldb,
             <floating> (1 if accumulate else 0), c, ldc)
