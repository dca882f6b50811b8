# Gate math of the cells, one row (one sequence at one step) at a time.
# Index arithmetic is in Py_ssize_t: Python builds with -fwrapv, under which
# an int offset such as H + j may wrap, and GCC then leaves the loop scalar.
#
# Every equation of docs/engine.md is written here once, for float and double,
# and shared by the kernels of _cells.pyx (rnn, lstm, gru) and _jordan.pyx.
from cython cimport floating
from libc.math cimport sqrt

from ._math cimport (
    sigmoid, tanh_, exp_, lstm_back_fused, lstm_gates_inplace,
    sigmoid_inplace, tanh_inplace,
)

cdef enum:
    RNN = 0
    LSTM = 1
    GRU = 2
    TANH = 0
    RELU = 1


cdef struct Dims:
    int cell
    int activation
    bint reverse
    bint reset_after
    bint layer_norm
    bint peephole
    bint has_mask
    int n_steps
    int hidden
    int gates


cdef inline floating* ptr1(floating[::1] a) noexcept nogil:
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline floating* ptr2(floating[:, ::1] a) noexcept nogil:
    return &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL


cdef inline int n_gates(int cell) noexcept nogil:
    """Gate blocks of a cell's pre-activations (rows of W_ih and W_hh)."""
    return 1 if cell == RNN else (4 if cell == LSTM else 3)


cdef inline Dims make_dims(int cell, int activation, bint reverse, bint reset_after,
                           bint layer_norm, bint peephole, bint has_mask,
                           int n_steps, int hidden) noexcept:
    cdef Dims d
    d.cell = cell
    d.activation = activation
    d.reverse = reverse
    d.reset_after = reset_after
    d.layer_norm = layer_norm
    d.peephole = peephole
    d.has_mask = has_mask
    d.n_steps = n_steps
    d.hidden = hidden
    d.gates = n_gates(cell)
    return d


cdef inline Py_ssize_t first_stop(const Py_ssize_t* t_stop, int lo,
                                  int hi) noexcept nogil:
    """Smallest truncation step of the sequences ``lo..hi`` (0 without
    truncation): a block's backward pass stops below it."""
    cdef Py_ssize_t b, stop = 0
    if t_stop != NULL:
        stop = t_stop[lo]
        for b in range(lo, hi):
            stop = min(stop, t_stop[b])
    return stop


# --------------------------------------------------------------------------
# Layer normalisation of one gate block (n entries)
# --------------------------------------------------------------------------

cdef inline void ln_forward(floating* s, int n, const floating* w,
                            const floating* b, floating* xhat,
                            floating* rstd) noexcept nogil:
    """Normalise ``s`` in place: ``s = w * (s - mean) / std + b``.

    The mean and variance are accumulated in double whatever the dtype: in
    float32 the squares of deviations above about 1.8e19 would overflow and
    turn every gate into its shift ``b``."""
    cdef Py_ssize_t j
    cdef double mean = 0, var = 0, dev, r
    for j in range(n):
        mean = mean + s[j]
    mean = mean / n
    for j in range(n):
        dev = s[j] - mean
        var = var + dev * dev
    var = var / n
    r = 1 / sqrt(var + 1e-5)
    rstd[0] = <floating> r
    for j in range(n):
        xhat[j] = <floating> ((s[j] - mean) * r)
        s[j] = w[j] * xhat[j] + b[j]


cdef inline void ln_backward(floating* ds, int n, const floating* w,
                             const floating* xhat, floating rstd,
                             floating* dw, floating* db) noexcept nogil:
    """Turn the gradient w.r.t. the normalised output into the gradient w.r.t.
    the input, in place, and accumulate the gain and shift gradients."""
    cdef Py_ssize_t j
    cdef floating m1 = 0, m2 = 0, dx
    for j in range(n):
        dw[j] += ds[j] * xhat[j]
        db[j] += ds[j]
        dx = ds[j] * w[j]
        m1 = m1 + dx
        m2 = m2 + dx * xhat[j]
    m1 = m1 / n
    m2 = m2 / n
    for j in range(n):
        ds[j] = rstd * (ds[j] * w[j] - m1 - xhat[j] * m2)


# --------------------------------------------------------------------------
# Gate math of one row (one sequence at one step)
# --------------------------------------------------------------------------

cdef inline void rnn_row(Dims* d, floating* g, const floating* hh,
                         const floating* b_hh, const floating* ln_w,
                         const floating* ln_b, floating* xhat, floating* rstd,
                         floating* h_out, floating* h) noexcept nogil:
    """``hh`` NULL: the recurrent product is already added to ``g``."""
    cdef Py_ssize_t j, H = d.hidden
    if hh != NULL:
        for j in range(H):
            g[j] = g[j] + hh[j] + b_hh[j]
    else:
        for j in range(H):
            g[j] = g[j] + b_hh[j]
    if d.layer_norm:
        ln_forward(g, H, ln_w, ln_b, xhat, rstd)
    if d.activation == RELU:
        for j in range(H):
            g[j] = g[j] if g[j] > 0 else 0
    else:
        tanh_inplace(g, H)
    for j in range(H):
        h_out[j] = g[j]
        h[j] = g[j]


cdef inline void lstm_row_steps(Dims* d, floating* g, const floating* hh,
                                const floating* b_hh, const floating* peep,
                                const floating* ln_w, const floating* ln_b,
                                floating* xhat, floating* rstd,
                                floating* h_out, floating* c_out,
                                floating* tc_out, floating* h,
                                floating* c) noexcept nogil:
    """One LSTM row's step in separate loops, for every configuration (the
    kernel runs rows without peepholes or layer norm in one pass where it
    can: ``lstm_cell_fused``). ``hh`` NULL: the recurrent product is already
    added to ``g``; ``c_out`` and ``tc_out`` NULL: the cell state and its
    tanh (for the backward pass) are not kept (inference)."""
    cdef Py_ssize_t j, k, H = d.hidden
    if hh != NULL:
        for j in range(4 * H):
            g[j] = g[j] + hh[j] + b_hh[j]
    else:
        for j in range(4 * H):
            g[j] = g[j] + b_hh[j]
    if d.peephole:
        for j in range(H):
            g[j] = g[j] + peep[j] * c[j]
            g[H + j] = g[H + j] + peep[H + j] * c[j]
    # without peepholes the output gate does not read the new cell state: all
    # four gates at once
    if d.layer_norm:
        for k in range(3 if d.peephole else 4):
            ln_forward(g + k * H, H, ln_w + k * H, ln_b + k * H, xhat + k * H,
                       rstd + k)
    if d.peephole:
        sigmoid_inplace(g, 2 * H)      # i, f
        tanh_inplace(g + 2 * H, H)     # g
    else:
        lstm_gates_inplace(g, H)       # i, f, g, o
    for j in range(H):
        c[j] = g[H + j] * c[j] + g[j] * g[2 * H + j]
    if c_out != NULL:
        for j in range(H):
            c_out[j] = c[j]
    if d.peephole:
        for j in range(H):
            g[3 * H + j] = g[3 * H + j] + peep[2 * H + j] * c[j]
        if d.layer_norm:
            ln_forward(g + 3 * H, H, ln_w + 3 * H, ln_b + 3 * H, xhat + 3 * H,
                       rstd + 3)
        sigmoid_inplace(g + 3 * H, H)  # o
    for j in range(H):
        h_out[j] = c[j]
    tanh_inplace(h_out, H)
    if tc_out != NULL:
        for j in range(H):
            tc_out[j] = h_out[j]
    for j in range(H):
        h_out[j] = g[3 * H + j] * h_out[j]
        h[j] = h_out[j]


cdef inline void gru_rz_row(Dims* d, floating* g, const floating* hh,
                            const floating* b_hh, const floating* ln_w,
                            const floating* ln_b, floating* xhat,
                            floating* rstd, const floating* h_masked,
                            floating* aux) noexcept nogil:
    """Reset and update gates; prepares the candidate's pre-activation.

    reset after: ``aux = a_n`` and ``g_n += r * a_n``.
    reset before: ``aux = r * m * h``, to be multiplied by ``W_hn`` next.
    """
    cdef Py_ssize_t j, H = d.hidden
    for j in range(2 * H):
        g[j] = g[j] + hh[j] + b_hh[j]
    if d.layer_norm:
        ln_forward(g, H, ln_w, ln_b, xhat, rstd)
        ln_forward(g + H, H, ln_w + H, ln_b + H, xhat + H, rstd + 1)
    sigmoid_inplace(g, 2 * H)          # r, z
    if d.reset_after:
        for j in range(H):
            aux[j] = hh[2 * H + j] + b_hh[2 * H + j]
            g[2 * H + j] = g[2 * H + j] + g[j] * aux[j]
    else:
        for j in range(H):
            aux[j] = g[j] * h_masked[j]


cdef inline void gru_n_row(Dims* d, floating* g, const floating* hh,
                           const floating* b_hh, const floating* ln_w,
                           const floating* ln_b, floating* xhat, floating* rstd,
                           floating* h_out, floating* h) noexcept nogil:
    cdef Py_ssize_t j, H = d.hidden
    cdef floating one = 1
    if not d.reset_after:
        for j in range(H):
            g[2 * H + j] = g[2 * H + j] + hh[2 * H + j] + b_hh[2 * H + j]
    if d.layer_norm:
        ln_forward(g + 2 * H, H, ln_w + 2 * H, ln_b + 2 * H, xhat + 2 * H,
                   rstd + 2)
    tanh_inplace(g + 2 * H, H)         # n
    for j in range(H):
        h[j] = (one - g[H + j]) * g[2 * H + j] + g[H + j] * h[j]
        h_out[j] = h[j]


# --------------------------------------------------------------------------
# Backward pass of one row. On entry dh holds dL/dh_t (from above and from
# step t+1); on exit it holds the part of dL/dh_{t-1} that bypasses the
# recurrent matrix product (GRU's z * dh_t; zero otherwise).
# --------------------------------------------------------------------------

cdef inline void rnn_row_back(Dims* d, const floating* h_out,
                              const floating* ln_w, const floating* xhat,
                              floating rstd, floating* dh, floating* dg,
                              floating* dln_w, floating* dln_b) noexcept nogil:
    cdef Py_ssize_t j, H = d.hidden
    cdef floating one = 1
    cdef floating v
    # branches outside the loops, so that they vectorise
    if d.activation == RELU:
        for j in range(H):
            dg[j] = dh[j] if h_out[j] > 0 else 0
    else:
        for j in range(H):
            v = h_out[j]
            dg[j] = dh[j] * (one - v * v)
    for j in range(H):
        dh[j] = 0
    if d.layer_norm:
        ln_backward(dg, H, ln_w, xhat, rstd, dln_w, dln_b)


cdef inline void lstm_row_back(Dims* d, const floating* g, const floating* c,
                               const floating* tc,
                               const floating* c_prev, const floating* peep,
                               const floating* ln_w, const floating* xhat,
                               const floating* rstd, floating* dh,
                               floating* dc, floating* dg, floating* dpeep,
                               floating* dln_w, floating* dln_b) noexcept nogil:
    """``dh`` and ``dc``: dL/dh_t and dL/dc_t so far; on exit ``dh`` is zero
    and ``dc`` is dL/dc_{t-1} (less what reaches it through h_{t-1}); ``dg``
    receives dL/d gate pre-activations. ``tc``: tanh(c_t), kept by the
    forward pass."""
    if (not d.peephole and not d.layer_norm
            and lstm_back_fused(g, tc, c_prev, dh, dc, dg, d.hidden)):
        return
    lstm_row_back_steps(d, g, c, tc, c_prev, peep, ln_w, xhat, rstd, dh, dc, dg,
                        dpeep, dln_w, dln_b)


cdef inline void lstm_row_back_steps(Dims* d, const floating* g,
                                     const floating* c, const floating* tc,
                                     const floating* c_prev,
                                     const floating* peep,
                                     const floating* ln_w,
                                     const floating* xhat,
                                     const floating* rstd, floating* dh,
                                     floating* dc, floating* dg,
                                     floating* dpeep, floating* dln_w,
                                     floating* dln_b) noexcept nogil:
    """``lstm_row_back`` in separate loops, for every configuration."""
    cdef Py_ssize_t j, k, H = d.hidden
    cdef floating one = 1
    cdef floating i_, f_, g_, o_, tc_
    for j in range(H):
        o_ = g[3 * H + j]
        dg[3 * H + j] = dh[j] * tc[j] * o_ * (one - o_)
    if d.layer_norm:
        ln_backward(dg + 3 * H, H, ln_w + 3 * H, xhat + 3 * H, rstd[3],
                    dln_w + 3 * H, dln_b + 3 * H)
    # dL/dc_t, accumulated in dc (branches outside the loops, so that they
    # vectorise)
    for j in range(H):
        o_ = g[3 * H + j]
        tc_ = tc[j]
        dc[j] = dc[j] + dh[j] * o_ * (one - tc_ * tc_)
    if d.peephole:
        for j in range(H):
            dc[j] = dc[j] + dg[3 * H + j] * peep[2 * H + j]
            dpeep[2 * H + j] += dg[3 * H + j] * c[j]
    # one output per loop: few enough pointers for GCC to vectorise each
    for j in range(H):
        i_ = g[j]
        dg[j] = dc[j] * g[2 * H + j] * i_ * (one - i_)
    for j in range(H):
        f_ = g[H + j]
        dg[H + j] = dc[j] * c_prev[j] * f_ * (one - f_)
    for j in range(H):
        g_ = g[2 * H + j]
        dg[2 * H + j] = dc[j] * g[j] * (one - g_ * g_)
    for j in range(H):
        dc[j] = dc[j] * g[H + j]
        dh[j] = 0
    if d.layer_norm:
        for k in range(3):
            ln_backward(dg + k * H, H, ln_w + k * H, xhat + k * H, rstd[k],
                        dln_w + k * H, dln_b + k * H)
    if d.peephole:
        for j in range(H):
            dc[j] = dc[j] + dg[j] * peep[j] + dg[H + j] * peep[H + j]
            dpeep[j] += dg[j] * c_prev[j]
            dpeep[H + j] += dg[H + j] * c_prev[j]


cdef inline void gru_n_row_back(Dims* d, const floating* g,
                                const floating* h_prev, const floating* ln_w,
                                const floating* xhat, const floating* rstd,
                                floating* dh, floating* dg, floating* dln_w,
                                floating* dln_b) noexcept nogil:
    """Candidate and update gate: fills dg_n (w.r.t. the candidate's
    pre-activation) and dg_z before its layer norm; dh becomes z * dh_t."""
    cdef Py_ssize_t j, H = d.hidden
    cdef floating one = 1
    cdef floating z_, n_
    # one output per loop: few enough pointers for GCC to vectorise each
    for j in range(H):
        n_ = g[2 * H + j]
        dg[2 * H + j] = dh[j] * (one - g[H + j]) * (one - n_ * n_)
    for j in range(H):
        z_ = g[H + j]
        dg[H + j] = dh[j] * (h_prev[j] - g[2 * H + j]) * z_ * (one - z_)
    for j in range(H):
        dh[j] = dh[j] * g[H + j]
    if d.layer_norm:
        ln_backward(dg + 2 * H, H, ln_w + 2 * H, xhat + 2 * H, rstd[2],
                    dln_w + 2 * H, dln_b + 2 * H)


cdef inline void gru_rz_row_back(Dims* d, const floating* g,
                                 const floating* aux, const floating* h_masked,
                                 const floating* d_rh, const floating* ln_w,
                                 const floating* xhat, const floating* rstd,
                                 floating* dg, floating* dgh, floating* dln_w,
                                 floating* dln_b) noexcept nogil:
    """Reset gate, then both layer norms of r and z; fills the hidden-side
    gradient ``dgh`` (equal to ``dg`` except for the reset-after candidate)."""
    cdef Py_ssize_t j, H = d.hidden
    cdef floating one = 1
    cdef floating r_
    if d.reset_after:
        for j in range(H):
            r_ = g[j]
            dg[j] = dg[2 * H + j] * aux[j] * r_ * (one - r_)
            dgh[2 * H + j] = dg[2 * H + j] * r_
    else:
        for j in range(H):
            r_ = g[j]
            dg[j] = d_rh[j] * h_masked[j] * r_ * (one - r_)
    if d.layer_norm:
        ln_backward(dg, H, ln_w, xhat, rstd[0], dln_w, dln_b)
        ln_backward(dg + H, H, ln_w + H, xhat + H, rstd[1], dln_w + H,
                    dln_b + H)
    if d.reset_after:
        for j in range(2 * H):
            dgh[j] = dg[j]


# --------------------------------------------------------------------------
# Output layer of a Jordan network: y = out_act(z), and its backward pass
# --------------------------------------------------------------------------

cdef enum:
    OUT_IDENTITY = 0
    OUT_TANH = 1
    OUT_SIGMOID = 2
    OUT_SOFTMAX = 3


cdef inline void output_row(int kind, floating* z, int n) noexcept nogil:
    """Apply the output activation to ``z`` in place."""
    cdef Py_ssize_t j
    cdef floating top, total
    if kind == OUT_TANH:
        for j in range(n):
            z[j] = tanh_(z[j])
    elif kind == OUT_SIGMOID:
        for j in range(n):
            z[j] = sigmoid(z[j])
    elif kind == OUT_SOFTMAX:
        top = z[0]
        for j in range(1, n):
            if z[j] > top:
                top = z[j]
        total = 0
        for j in range(n):
            z[j] = exp_(z[j] - top)
            total = total + z[j]
        for j in range(n):
            z[j] = z[j] / total


cdef inline void output_row_back(int kind, const floating* y,
                                 const floating* dy, floating* dz,
                                 int n) noexcept nogil:
    """``dz += J(y)^T dy``: the gradient w.r.t. the pre-activation."""
    cdef Py_ssize_t j
    cdef floating one = 1
    cdef floating dot
    if kind == OUT_IDENTITY:
        for j in range(n):
            dz[j] += dy[j]
    elif kind == OUT_TANH:
        for j in range(n):
            dz[j] += dy[j] * (one - y[j] * y[j])
    elif kind == OUT_SIGMOID:
        for j in range(n):
            dz[j] += dy[j] * y[j] * (one - y[j])
    else:
        dot = 0
        for j in range(n):
            dot = dot + dy[j] * y[j]
        for j in range(n):
            dz[j] += y[j] * (dy[j] - dot)
