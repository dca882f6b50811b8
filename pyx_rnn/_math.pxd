# Scalar functions shared by every kernel, written once for float and double.
from cython cimport floating
from libc.math cimport exp, expf, tanh, tanhf, sqrt, sqrtf


cdef inline floating sigmoid(floating x) noexcept nogil:
    # Two branches so that exp never overflows: stable for any finite x.
    cdef floating e, one = 1
    if x >= 0:
        if floating is float:
            e = expf(-x)
        else:
            e = exp(-x)
        return one / (one + e)
    if floating is float:
        e = expf(x)
    else:
        e = exp(x)
    return e / (one + e)


cdef inline floating tanh_(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating exp_(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating sqrt_(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef extern from "_vecmath.h" nogil:
    void sr_sigmoid_f(float* x, int n)
    void sr_sigmoid_d(double* x, int n)
    void sr_tanh_f(float* x, int n)
    void sr_tanh_d(double* x, int n)
    void sr_lstm_gates_f(float* x, int n)
    void sr_lstm_gates_d(double* x, int n)
    int sr_lstm_cell_f(float* g, const float* b, float* c, float* c_out,
                       float* tc_out, float* h_out, float* h, int n, int rows,
                       int keep_gates)
    int sr_lstm_back_f(const float* g, const float* tc, const float* c_prev,
                       float* dh, float* dc, float* dg, int n)
    int sr_vector_width()
    int sr_one_pass(int n)
    int sr_gru_cell_f(float* g, const float* b_ih, const float* hh,
                      const float* b_hh, float* aux, float* h_out, float* h,
                      int n)
    int sr_gru_back_f(const float* g, const float* aux, const float* h_prev,
                      float* dh, float* dg, float* dgh, int n)


cdef inline void sigmoid_inplace(floating* x, int n) noexcept nogil:
    """``x = sigmoid(x)`` over an array, vectorised where possible."""
    if floating is float:
        sr_sigmoid_f(x, n)
    else:
        sr_sigmoid_d(x, n)


cdef inline void tanh_inplace(floating* x, int n) noexcept nogil:
    """``x = tanh(x)`` over an array, vectorised where possible."""
    if floating is float:
        sr_tanh_f(x, n)
    else:
        sr_tanh_d(x, n)


cdef inline void lstm_gates_inplace(floating* x, int n) noexcept nogil:
    """The LSTM's gate non-linearities over one row ``x`` of ``4 n``
    pre-activations, in place: sigmoid on the input, forget and output
    gates, tanh on the cell candidate (the same values as the separate
    calls)."""
    if floating is float:
        sr_lstm_gates_f(x, n)
    else:
        sr_lstm_gates_d(x, n)


cdef inline bint lstm_cell_fused(floating* g, const floating* b, floating* c,
                                 floating* c_out, floating* tc_out,
                                 floating* h_out, floating* h, int n,
                                 int rows, bint keep_gates) noexcept nogil:
    """One LSTM step of ``rows`` consecutive rows (of ``n`` units) without
    peepholes or layer norm in one pass, where there is a vectorised version
    for this type, CPU and ``n``: the gates (pre-activations ``g``, rows
    ``4 n`` apart, less the bias ``b``) activated in place (unless not
    ``keep_gates``: ``g`` is then scratch, and not written), the new cell
    state in ``c`` (and ``c_out`` unless NULL) and its tanh in ``tc_out``
    (unless NULL), the new hidden state in ``h`` and ``h_out`` (unless NULL)
    (rows ``n`` apart). Returns False, having done nothing, where there is none; the
    same bits as ``lstm_row_steps``'s separate loops."""
    if floating is float:
        return sr_lstm_cell_f(g, b, c, c_out, tc_out, h_out, h, n, rows,
                              keep_gates)
    else:
        return False


cdef inline bint lstm_back_fused(const floating* g, const floating* tc,
                                 const floating* c_prev, floating* dh,
                                 floating* dc, floating* dg,
                                 int n) noexcept nogil:
    """The backward step of an LSTM row without peepholes or layer norm in
    one pass, where there is a vectorised version for this type, CPU and
    ``n`` (see ``lstm_row_back``). Returns False, having done nothing, where
    there is none; the same bits as ``lstm_row_back``'s loops."""
    if floating is float:
        return sr_lstm_back_f(g, tc, c_prev, dh, dc, dg, n)
    else:
        return False


cdef inline bint gru_one_pass(const floating* any, int n) noexcept nogil:
    """Whether ``gru_cell_fused`` and ``gru_back_fused`` run for this type,
    CPU and ``n`` (``any``: any array of the type, for its type only)."""
    if floating is float:
        return sr_one_pass(n)
    else:
        return False


cdef inline bint gru_cell_fused(floating* g, const floating* b_ih,
                                const floating* hh, const floating* b_hh,
                                floating* aux, floating* h_out, floating* h,
                                int n) noexcept nogil:
    """One GRU step of a row (reset after, no layer norm) in one pass where
    ``gru_one_pass`` allows it (see ``sr_gru_cell_f``): the same bits as
    ``gru_rz_row`` then ``gru_n_row`` (after ``b_ih``, unless NULL, is
    added to ``g``). Returns False, having done nothing, elsewhere."""
    if floating is float:
        return sr_gru_cell_f(g, b_ih, hh, b_hh, aux, h_out, h, n)
    else:
        return False


cdef inline bint gru_back_fused(const floating* g, const floating* aux,
                                const floating* h_prev, floating* dh,
                                floating* dg, floating* dgh,
                                int n) noexcept nogil:
    """The backward step of a GRU row (reset after, no layer norm) in one
    pass where ``gru_one_pass`` allows it: the same bits as
    ``gru_n_row_back`` then ``gru_rz_row_back``. Returns False, having done
    nothing, elsewhere."""
    if floating is float:
        return sr_gru_back_f(g, aux, h_prev, dh, dg, dgh, n)
    else:
        return False
