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
    void sr_pack_f2(const float* B1, int ldb1, int K1, const float* B2,
                    int ldb2, int K2, int trans, int N, float* P)
    void sr_pack_d2(const double* B1, int ldb1, int K1, const double* B2,
                    int ldb2, int K2, int trans, int N, double* P)
    void sr_pgemm_f2(int m, int n, int K1, const float* A1, int lda1, int K2,
                     const float* A2, int lda2, const float* P, float* C,
                     int ldc, int accumulate)
    void sr_pgemm_d2(int m, int n, int K1, const double* A1, int lda1, int K2,
                     const double* A2, int lda2, const double* P, double* C,
                     int ldc, int accumulate)
    int sr_pgemm_init()
    void sr_gemm_tn_f(int m, int n, int K, const float* A, int lda,
                      const float* B, int ldb, float* C, int ldc, float* edge)
    void sr_gemm_tn_d(int m, int n, int K, const double* A, int lda,
                      const double* B, int ldb, double* C, int ldc,
                      double* edge)
    long sr_outer_work_length(long n1, long n2, long itemsize)
    void sr_outer_f(int m, int n1, int n2, int K, const float* A, long lda,
                    const float* B1, long ldb1, const float* B2, long ldb2,
                    float* C1, long ldc1, float* C2, long ldc2, float* work)
    void sr_outer_d(int m, int n1, int n2, int K, const double* A, long lda,
                    const double* B1, long ldb1, const double* B2, long ldb2,
                    double* C1, long ldc1, double* C2, long ldc2,
                    double* work)
    void sr_add_rows_f(int rows, long n, const float* src, long lds,
                       float* dst)
    void sr_add_rows_d(int rows, long n, const double* src, long lds,
                       double* dst)
    void sr_add_to_rows_f(int rows, long n, const float* src, float* dst,
                          long ldd)
    void sr_add_to_rows_d(int rows, long n, const double* src, double* dst,
                          long ldd)
    void sr_adam_f(long n, float* p, const float* g, float* m, float* v,
                   float b1, float c1, float b2, float c2, float s, float r,
                   float eps)
    void sr_adam_d(long n, double* p, const double* g, double* m, double* v,
                   double b1, double c1, double b2, double c2, double s,
                   double r, double eps)
    void sr_block_sums_f(const float* P, long K, float* Out, long ldo, long R,
                         long C, int transposed)
    void sr_block_sums_d(const double* P, long K, double* Out, long ldo,
                         long R, long C, int transposed)


cdef inline void pack_b(bint trans, int k, int n, const floating* b, int ldb,
                        floating* p) noexcept nogil:
    """Pack ``op(B)`` (``k x n``, row-major; ``op(B) = B.T`` with ``trans``)
    for ``pgemm``, into ``sr_pack_length(n, k, sizeof)`` elements at ``p``."""
    if floating is float:
        sr_pack_f(b, ldb, trans, k, n, p)
    else:
        sr_pack_d(b, ldb, trans, k, n, p)


cdef inline void pack_b2(int k1, const floating* b1, int ldb1, int k2,
                         const floating* b2, int ldb2, int n,
                         floating* p) noexcept nogil:
    """Pack ``[B1.T ; B2.T]`` (``(k1 + k2) x n``; ``B1`` is ``n x k1``,
    ``B2`` is ``n x k2``) for ``pgemm2``, into ``sr_pack_length(n, k1 + k2,
    sizeof)`` elements at ``p``."""
    if floating is float:
        sr_pack_f2(b1, ldb1, k1, b2, ldb2, k2, True, n, p)
    else:
        sr_pack_d2(b1, ldb1, k1, b2, ldb2, k2, True, n, p)


cdef inline void pgemm2(int m, int n, int k1, const floating* a1, int lda1,
                        int k2, const floating* a2, int lda2,
                        const floating* packed, floating* c,
                        int ldc) noexcept nogil:
    """Row-major ``C[m, n] = [A1 | A2] @ B`` with ``B`` packed by
    ``pack_b2``: one sum per element, over ``A1``'s columns then ``A2``'s."""
    if floating is float:
        sr_pgemm_f2(m, n, k1, a1, lda1, k2, a2, lda2, packed, c, ldc, False)
    else:
        sr_pgemm_d2(m, n, k1, a1, lda1, k2, a2, lda2, packed, c, ldc, False)


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


cdef inline void gemm_tn(int m, int n, int k, const floating* a, int lda,
                         const floating* b, int ldb, floating* c, int ldc,
                         floating* edge) noexcept nogil:
    """Row-major ``C[m, n] += A.T @ B`` (``A`` is ``k x m``, ``B`` is ``k x
    n``), unpacked, with the packed kernel's micro-kernels and its fixed
    order of summation; ``edge`` holds ``k * SR_PANEL_BYTES / sizeof``
    elements of scratch."""
    if floating is float:
        sr_gemm_tn_f(m, n, k, a, lda, b, ldb, c, ldc, edge)
    else:
        sr_gemm_tn_d(m, n, k, a, lda, b, ldb, c, ldc, edge)


cdef inline void outer(int m, int n1, int n2, int k, const floating* a,
                       Py_ssize_t lda, const floating* b1, Py_ssize_t ldb1,
                       const floating* b2, Py_ssize_t ldb2, floating* c1,
                       Py_ssize_t ldc1, floating* c2, Py_ssize_t ldc2,
                       floating* work) noexcept nogil:
    """``C1[m, n1] += A.T @ B1`` and ``C2[m, n2] += A.T @ B2`` (``A`` is ``k
    x m``, all row-major) in one product, summed over ``k`` in fixed blocks
    of rows (``SR_OUTER_KC``); ``work`` holds ``sr_outer_work_length(n1,
    n2, sizeof)`` elements."""
    if floating is float:
        sr_outer_f(m, n1, n2, k, a, lda, b1, ldb1, b2, ldb2, c1, ldc1, c2,
                   ldc2, work)
    else:
        sr_outer_d(m, n1, n2, k, a, lda, b1, ldb1, b2, ldb2, c1, ldc1, c2,
                   ldc2, work)


cdef inline void add_rows(int rows, Py_ssize_t n, const floating* src,
                          Py_ssize_t lds, floating* dst) noexcept nogil:
    """``dst[:n] += src[r, :n]`` for each of ``rows`` rows of ``src`` (row
    stride ``lds``) in order, vectorised for the CPU; the same bits as the
    loop."""
    if floating is float:
        sr_add_rows_f(rows, n, src, lds, dst)
    else:
        sr_add_rows_d(rows, n, src, lds, dst)


cdef inline void add_to_rows(int rows, Py_ssize_t n, const floating* src,
                             floating* dst, Py_ssize_t ldd) noexcept nogil:
    """``dst[r, :n] += src[:n]`` for each of ``rows`` rows of ``dst`` (row
    stride ``ldd``), vectorised for the CPU; the same bits as the loop."""
    if floating is float:
        sr_add_to_rows_f(rows, n, src, dst, ldd)
    else:
        sr_add_to_rows_d(rows, n, src, dst, ldd)


cdef inline void adam(Py_ssize_t n, floating* p, const floating* g, floating* m,
                      floating* v, floating b1, floating c1, floating b2,
                      floating c2, floating s, floating r,
                      floating eps) noexcept nogil:
    """Adam's update of ``n`` parameters (``_dense.adam_update``),
    vectorised for the CPU; the same bits as the scalar loop."""
    if floating is float:
        sr_adam_f(n, p, g, m, v, b1, c1, b2, c2, s, r, eps)
    else:
        sr_adam_d(n, p, g, m, v, b1, c1, b2, c2, s, r, eps)


cdef inline void block_sums(const floating* P, Py_ssize_t K, floating* Out,
                            Py_ssize_t ldo, Py_ssize_t R, Py_ssize_t C,
                            bint transposed) noexcept nogil:
    """``K`` blocks' partial sums (rows of ``P``) added up, in block order,
    and into ``Out`` (``_dense.add_block_sums``), vectorised for the CPU;
    the same bits as the scalar loops."""
    if floating is float:
        sr_block_sums_f(P, K, Out, ldo, R, C, transposed)
    else:
        sr_block_sums_d(P, K, Out, ldo, R, C, transposed)
