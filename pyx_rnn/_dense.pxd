# The cores of pyx_rnn/_dense.pyx that another extension module calls on
# addresses: the training step of pyx_rnn/_cells.pyx (TrainingStep) runs the
# output layer, the squared error, the output layer's gradient, the additions
# of the kernels' partial sums and the input gradient of a layer through
# these, with the bits of the Python entry points that call them too.
from cython cimport floating


cdef struct BlockSum:
    # one add_block_sums call on addresses (of floats or doubles)
    void* parts
    void* out
    Py_ssize_t K, ldo, R, C
    bint transposed


cdef class BlockSums:
    cdef BlockSum* calls
    cdef Py_ssize_t n_calls, itemsize
    cdef readonly tuple arrays

    cdef void _add_call(self, floating[:, ::1] parts, floating[:, :] out,
                        bint transposed) except *
    cdef void zero(self) noexcept nogil
    cdef void add_all(self) noexcept nogil


cdef void matmul_rows(Py_ssize_t M, int N, int K, const floating* pA,
                      const floating* pB, int ldb, bint trans_b, floating beta,
                      floating* pC, int n_threads) noexcept nogil

cdef void linear_rows(Py_ssize_t M, int N, int K, const floating* pX,
                      const floating* pW, const floating* pb, floating* pO,
                      floating* pP, int n_threads) noexcept nogil

cdef int linear_backward_rows(const floating* X, const floating* dZ,
                              const floating* W, floating* gW, floating* gb,
                              floating* dX, Py_ssize_t R, int n_in, int n_out,
                              int n_threads, work) except -1

cdef double squared_error_rows(const floating* Y, const floating* T,
                               const floating* weight, double total_weight,
                               floating* dY, Py_ssize_t R,
                               Py_ssize_t N) noexcept nogil
