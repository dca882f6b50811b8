# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Forward and backward (BPTT) kernels of the rnn, lstm and gru cells.

The equations are in ``docs/engine.md``; each is written once here, for float
and double (``cython.floating``). The kernels take the packed, time-major layout
described there and fill caller-allocated arrays. They never allocate, never
raise and never hold the GIL.

Parallelism: sequences are independent, so the batch is cut into blocks of
``block_rows`` sequences (or, for ``recurrent_forward`` and
``recurrent_backward``, as many blocks cut where the caller says:
``block_starts``) and each OpenMP thread runs whole blocks through all time
steps, with its own single-threaded BLAS calls; no more threads than blocks
are started, so that a small batch pays for no idle team. The cut depends
only on the batch and ``block_rows``, never on the thread count, so every
floating-point operation happens in the same order whatever the number of
threads: results are bitwise identical with 1 thread or many.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.limits cimport INT_MAX
from libc.string cimport memcpy, memset

from ._blas cimport (
    add_rows, add_to_rows, gemm_tn, pack_b, pack_b2, pgemm2, rgemm,
    sr_pack_length, sr_pgemm_init,
)
from ._dense cimport (
    BlockSums, linear_backward_rows, linear_rows, matmul_rows, squared_error_rows,
)
from ._gates cimport (
    Dims, RNN, LSTM, GRU, TANH, first_stop, make_dims, n_gates, ptr1, ptr2,
    rnn_row, lstm_row_steps, gru_rz_row, gru_n_row, rnn_row_back, lstm_row_back,
    lstm_row_back_steps, gru_n_row_back, gru_rz_row_back,
)
from ._math cimport (
    gru_back_fused, gru_cell_fused, gru_one_pass, lstm_back_fused,
    lstm_cell_fused, lstm_gates_inplace, sigmoid_inplace, sr_vector_width,
    tanh_inplace,
)

CELL_RNN = 0
CELL_LSTM = 1
CELL_GRU = 2
ACT_TANH = 0
ACT_RELU = 1
PGEMM_ISA = sr_pgemm_init()   # 0 baseline, 1 AVX2 + FMA, 2 AVX-512
# the widest vectors of the float32 gate functions of our own (16 AVX-512, 8
# AVX2 + FMA), 0 where the loops call libm (or libmvec); the LSTM steps in one
# pass run where it is not 0 and the hidden size is a multiple of 8
VECTOR_WIDTH = sr_vector_width()


def gate_activation(floating[::1] x, bint sigmoid):
    """``x = sigmoid(x)`` (or ``tanh(x)``) in place, with the vectorised
    functions the kernels apply to their gates; exposed for the tests."""
    if x.shape[0] > 0:
        if sigmoid:
            sigmoid_inplace(&x[0], <int> x.shape[0])
        else:
            tanh_inplace(&x[0], <int> x.shape[0])


def lstm_gate_activations(floating[::1] x):
    """The LSTM's gate non-linearities over one row of ``4 * hidden``
    pre-activations, in place, as the kernel applies them; exposed for the
    tests."""
    if x.shape[0] % 4:
        raise ValueError("x must hold 4 * hidden values")
    if x.shape[0] > 0:
        lstm_gates_inplace(&x[0], <int> (x.shape[0] // 4))


def lstm_cell_step(floating[:, ::1] g, floating[::1] b, floating[:, ::1] c,
                   floating[:, ::1] c_out, floating[:, ::1] tc_out,
                   floating[:, ::1] h_out, floating[:, ::1] h, bint fused,
                   bint keep_gates=True):
    """One LSTM step of some rows without peepholes or layer norm, in place,
    as the kernel runs it: ``g`` (``4 * hidden`` gate pre-activations a row,
    less the bias ``b``) receives the activations (in the one pass, only with
    ``keep_gates``: inference does not keep them), ``c`` and ``c_out`` the
    new cell states, ``tc_out`` their tanh, ``h_out`` and ``h`` the new
    hidden states (``hidden`` a row). With ``fused``, all rows in one pass
    where the CPU, the type and the size allow it; else (or where they do
    not) row by row in separate loops. The arrays must be distinct. Returns
    whether the one pass ran; exposed for the tests."""
    cdef int rows = <int> g.shape[0], H = <int> c.shape[1], i
    cdef Dims d = make_dims(LSTM, TANH, False, False, False, False, False, 1, H)
    if (g.shape[1] != 4 * H or b.shape[0] != 4 * H
            or c_out.shape[0] != rows or c_out.shape[1] != H
            or tc_out.shape[0] != rows or tc_out.shape[1] != H
            or h_out.shape[0] != rows or h_out.shape[1] != H
            or h.shape[0] != rows or h.shape[1] != H or c.shape[0] != rows):
        raise ValueError("g must hold 4 * hidden values a row, b 4 * hidden, "
                         "the states hidden a row, all with the rows of g")
    if H == 0 or rows == 0:
        return False
    if fused and lstm_cell_fused(&g[0, 0], &b[0], &c[0, 0], &c_out[0, 0],
                                 &tc_out[0, 0], &h_out[0, 0], &h[0, 0], H, rows,
                                 keep_gates):
        return True
    for i in range(rows):
        lstm_row_steps(&d, &g[i, 0], NULL, &b[0], NULL, NULL, NULL, NULL, NULL,
                       &h_out[i, 0], &c_out[i, 0], &tc_out[i, 0], &h[i, 0],
                       &c[i, 0])
    return False


def lstm_back_step(floating[::1] g, floating[::1] tc, floating[::1] c_prev,
                   floating[::1] dh, floating[::1] dc, floating[::1] dg,
                   bint fused):
    """The backward step of one LSTM row without peepholes or layer norm, in
    place, as the kernel runs it: from the gate activations ``g`` (``4 *
    hidden``), ``tanh(c_t)`` ``tc`` and ``c_{t-1}`` ``c_prev``, with ``dh``
    and ``dc`` dL/dh_t and dL/dc_t on entry, fills ``dg`` (dL/d gate
    pre-activations), zeroes ``dh`` and leaves dL/dc_{t-1} in ``dc``. With
    ``fused``, in one pass where the CPU, the type and the size allow it;
    else (or where they do not) in separate loops. The arrays must be
    distinct. Returns whether the one pass ran; exposed for the tests."""
    cdef int H = <int> tc.shape[0]
    cdef Dims d = make_dims(LSTM, TANH, False, False, False, False, False, 1, H)
    if (g.shape[0] != 4 * H or dg.shape[0] != 4 * H or c_prev.shape[0] != H
            or dh.shape[0] != H or dc.shape[0] != H):
        raise ValueError("g and dg must hold 4 * hidden values, the states "
                         "hidden")
    if H == 0:
        return False
    if fused and lstm_back_fused(&g[0], &tc[0], &c_prev[0], &dh[0], &dc[0],
                                 &dg[0], H):
        return True
    lstm_row_back_steps(&d, &g[0], NULL, &tc[0], &c_prev[0], NULL, NULL, NULL,
                        NULL, &dh[0], &dc[0], &dg[0], NULL, NULL, NULL)
    return False


def gru_cell_step(floating[::1] g, floating[::1] b_ih, floating[::1] hh,
                  floating[::1] b_hh, floating[::1] aux, floating[::1] h_out,
                  floating[::1] h, bint fused):
    """One GRU step of one row (reset after the product, no layer norm), in
    place, as the kernel runs it: ``g`` (the ``3 * hidden`` input
    projections less the input bias ``b_ih``) receives r, z and the
    candidate, ``aux`` the candidate's recurrent term ``hh_n + b_hn``,
    ``h_out`` and ``h`` the new state, from the recurrent products ``hh``
    (less ``b_hh``). With ``fused``, in one pass where the CPU, the type and
    the size allow it; else (or where they do not) in separate loops. The
    arrays must be distinct. Returns whether the one pass ran; exposed for
    the tests."""
    cdef int H = <int> h.shape[0]
    cdef Py_ssize_t j
    cdef Dims d = make_dims(GRU, TANH, False, True, False, False, False, 1, H)
    if (g.shape[0] != 3 * H or b_ih.shape[0] != 3 * H or hh.shape[0] != 3 * H
            or b_hh.shape[0] != 3 * H or aux.shape[0] != H
            or h_out.shape[0] != H):
        raise ValueError("g, b_ih, hh and b_hh must hold 3 * hidden values, "
                         "the states hidden")
    if H == 0:
        return False
    if fused and gru_one_pass(&g[0], H):
        return gru_cell_fused(&g[0], &b_ih[0], &hh[0], &b_hh[0], &aux[0],
                              &h_out[0], &h[0], H)
    for j in range(3 * H):
        g[j] = g[j] + b_ih[j]
    gru_rz_row(&d, &g[0], &hh[0], &b_hh[0], NULL, NULL, NULL, NULL, &h[0],
               &aux[0])
    gru_n_row(&d, &g[0], &hh[0], &b_hh[0], NULL, NULL, NULL, NULL, &h_out[0],
              &h[0])
    return False


def gru_back_step(floating[::1] g, floating[::1] aux, floating[::1] h_prev,
                  floating[::1] dh, floating[::1] dg, floating[::1] dgh,
                  bint fused):
    """The backward step of one GRU row (reset after, no layer norm), in
    place, as the kernel runs it: from the activations ``g`` (r, z and the
    candidate), ``aux`` and ``h_{t-1}`` ``h_prev``, with ``dh`` dL/dh_t on
    entry, fills ``dg`` and ``dgh`` (the input side's and the hidden side's
    gradients of the pre-activations) and leaves ``z * dh`` in ``dh``. With
    ``fused``, in one pass where the CPU, the type and the size allow it;
    else (or where they do not) in separate loops. The arrays must be
    distinct. Returns whether the one pass ran; exposed for the tests."""
    cdef int H = <int> h_prev.shape[0]
    cdef Dims d = make_dims(GRU, TANH, False, True, False, False, False, 1, H)
    if (g.shape[0] != 3 * H or dg.shape[0] != 3 * H or dgh.shape[0] != 3 * H
            or aux.shape[0] != H or dh.shape[0] != H):
        raise ValueError("g, dg and dgh must hold 3 * hidden values, the "
                         "states hidden")
    if H == 0:
        return False
    if fused and gru_one_pass(&g[0], H):
        return gru_back_fused(&g[0], &aux[0], &h_prev[0], &dh[0], &dg[0],
                              &dgh[0], H)
    gru_n_row_back(&d, &g[0], &h_prev[0], NULL, NULL, NULL, &dh[0], &dg[0],
                   NULL, NULL)
    gru_rz_row_back(&d, &g[0], &aux[0], &h_prev[0], NULL, NULL, NULL, NULL,
                    &dg[0], &dgh[0], NULL, NULL)
    return False


def input_pack_length(int cell, int n_input, int hidden, int itemsize):
    """Length of the ``wpack_ih`` buffer of ``recurrent_forward``: the input
    weights in the panels of ``pyx_rnn/_pgemm.h``, with the recurrent weights
    stacked below them for the rnn and the lstm (one product per step with
    ``[x_t | h_{t-1}]``)."""
    cdef int gates = n_gates(cell)
    if cell == GRU:
        return sr_pack_length(gates * hidden, n_input, itemsize)
    return sr_pack_length(gates * hidden, n_input + hidden, itemsize)


def panel_columns(int itemsize):
    """Columns of one panel of ``pyx_rnn/_pgemm.h`` for this item size."""
    return sr_pack_length(1, 1, itemsize)


def recurrent_pack_length(int cell, bint reset_after, int hidden,
                          int itemsize, bint backward):
    """Length of the ``wpack`` buffer of ``recurrent_forward`` (or, with
    ``backward``, of ``recurrent_backward``) for the packed recurrent product:
    the weight matrix in the panels of ``pyx_rnn/_pgemm.h``."""
    cdef int gates = n_gates(cell)
    cdef int H = hidden
    if cell == GRU and not reset_after:
        if backward:     # W_hh[:2H] (2H x H) and W_hh[2H:] (H x H), untransposed
            return sr_pack_length(H, 2 * H, itemsize) + sr_pack_length(H, H, itemsize)
        return sr_pack_length(2 * H, H, itemsize) + sr_pack_length(H, H, itemsize)
    if backward:
        return sr_pack_length(H, gates * H, itemsize)
    return sr_pack_length(gates * H, H, itemsize)


cdef void pack_recurrent(Dims* d, bint backward, const floating* W_hh,
                         floating* wpack, floating** P1,
                         floating** P2) noexcept nogil:
    """Pack W_hh for the products of the forward pass (``W_hh.T``) or of the
    backward pass (``W_hh``); ``P2`` is the GRU candidate's block when the
    reset is applied before the product."""
    cdef int H = d.hidden, GH = d.gates * d.hidden
    cdef bint two_phase = d.cell == GRU and not d.reset_after
    cdef int n1 = 2 * H if two_phase else GH
    P1[0] = P2[0] = NULL
    if wpack == NULL:
        return
    P1[0] = wpack
    if backward:
        pack_b(False, n1, H, W_hh, H, wpack)
        if two_phase:
            P2[0] = wpack + sr_pack_length(H, n1, sizeof(floating))
            pack_b(False, H, H, W_hh + 2 * H * H, H, P2[0])
    else:
        pack_b(True, H, n1, W_hh, H, wpack)
        if two_phase:
            P2[0] = wpack + sr_pack_length(n1, H, sizeof(floating))
            pack_b(True, H, H, W_hh + 2 * H * H, H, P2[0])

# --------------------------------------------------------------------------
# Forward pass of one block of sequences through all steps
# --------------------------------------------------------------------------

cdef inline const floating* step_input(
        int t, int lo, int nb, Py_ssize_t r0, const floating* X, int n_in,
        const Py_ssize_t* x_starts, floating* x_rows,
        Py_ssize_t x_step) noexcept nogil:
    """The input rows of a block at step ``t``, ``ldx(n_in, x_step)``
    elements apart: in place in the packed ``X``; or, with ``x_starts``
    (``X`` then holds each sequence's steps in consecutive rows, from row
    ``x_starts[b]``), in place where the block's sequences lie ``x_step``
    rows apart (``even_step``), else gathered into ``x_rows``."""
    cdef int i
    if x_starts == NULL:
        return X + r0 * n_in
    if x_step:
        return X + (x_starts[lo] + t) * n_in
    for i in range(nb):
        memcpy(x_rows + i * n_in, X + (x_starts[lo + i] + t) * n_in,
               n_in * sizeof(floating))
    return x_rows


def evenly_spaced(const Py_ssize_t[::1] starts, int n_in):
    """``even_step`` of a block's ``starts``: the rows between its
    sequences where the forward kernel reads their steps in place, 0 where
    it copies them (for tests)."""
    cdef int n = <int> starts.shape[0]
    return even_step(&starts[0] if n else NULL, n, n_in)


cdef inline int ldx(int n_in, Py_ssize_t x_step) noexcept nogil:
    """The distance between the input rows ``step_input`` returns."""
    return <int> (x_step * n_in) if x_step else n_in


cdef Py_ssize_t even_step(const Py_ssize_t* starts, int n,
                          int n_in) noexcept nogil:
    """The step between the ``n`` sequences that start at rows ``starts``,
    if they lie that many rows apart, one after another (as a chunk of a
    ``(n_sequences, n_steps, n_features)`` array of equal lengths does),
    and the rows of the step fit an ``int`` product's stride; else 0. The
    packed product then reads a step's rows where they lie rather than
    from a copy: the same values in the same order, so the same bits.
    That spares a block the copy of each row at each step: 1.3% of the
    128-unit LSTM's inference on one thread, 2.4% of the small LSTM's on
    two (``benchmarks/OPTIMISATIONS.md``, session 25)."""
    cdef Py_ssize_t step
    cdef int i
    if n < 2:
        return 1
    step = starts[1] - starts[0]
    if step < 1 or n_in < 1 or step > INT_MAX // n_in:
        return 0
    for i in range(2, n):
        if starts[i] - starts[i - 1] != step:
            return 0
    return step


cdef void forward_block(Dims* d, int lo, int hi, const Py_ssize_t* bs,
                        const Py_ssize_t* off, const floating* X, int n_in,
                        const Py_ssize_t* x_starts, floating* x_rows,
                        const floating* W_ih, const floating* Pih,
                        const floating* b_ih, floating* G,
                        floating* Gblock, const floating* W_hh,
                        const floating* P1, const floating* P2,
                        const floating* b_hh,
                        const floating* peep, const floating* ln_w,
                        const floating* ln_b, const floating* mask,
                        floating* h, floating* c, floating* H_out,
                        floating* C_out, floating* Hprev, floating* aux,
                        floating* xhat, floating* rstd,
                        floating* work, bint stacked) noexcept nogil:
    cdef int H = d.hidden, GH = d.gates * d.hidden, G_ = d.gates
    cdef int step, t, nb, ncols
    cdef Py_ssize_t r0, r, b, i, j
    cdef bint two_phase = d.cell == GRU and not d.reset_after
    # Hprev NULL (inference without a mask): the product reads h directly
    cdef bint keep = Hprev != NULL
    # rnn and lstm add the product to G in place; the gru needs it apart
    cdef bint fused = d.cell != GRU
    # the gru's step in one pass: the input bias, both gates, the candidate
    # and the new state
    cdef bint gru_fused = (d.cell == GRU and d.reset_after and not d.layer_norm
                           and gru_one_pass(b_hh, d.hidden))
    cdef const floating* A
    cdef const floating* Xt = NULL  # the input rows of the block at this step
    # the block's sequences' distance in X where the packed product reads
    # their rows in place (see step_input); 0: gathered
    cdef Py_ssize_t x_step = (
        even_step(x_starts + lo, hi - lo, n_in)
        if X != NULL and x_starts != NULL and Pih != NULL else 0)
    cdef floating* Gt      # the gate rows of this block at this step
    cdef floating* Ht      # its output rows: H_out's, or scratch in work
    for step in range(d.n_steps):
        t = d.n_steps - 1 - step if d.reverse else step
        nb = <int> (min(<Py_ssize_t> hi, bs[t]) - lo)
        if nb <= 0:
            continue
        r0 = off[t] + lo
        # G NULL (inference): the gate rows live in the block's scratch
        Gt = G + r0 * GH if G != NULL else Gblock
        # H_out NULL (inference of the rnn or the lstm, outputs not kept):
        # the rows go to work, which only the gru uses in this pass
        Ht = H_out + r0 * H if H_out != NULL else work
        if X != NULL:
            Xt = step_input(t, lo, nb, r0, X, n_in, x_starts, x_rows, x_step)
            if not stacked:
                # the input projection of this step's rows, computed here
                # rather than over all steps beforehand: the rows stay in this
                # core's cache
                rgemm(nb, GH, n_in, Xt, ldx(n_in, x_step), Pih, True, W_ih,
                      n_in, False, Gt, GH)
        # The recurrent product reads the masked previous state, which is
        # also kept (Hprev) for the weight gradient.
        if keep:
            if d.has_mask:
                for i in range(nb):
                    b = lo + i
                    for j in range(H):
                        Hprev[(r0 + i) * H + j] = h[b * H + j] * mask[b * H + j]
            else:
                # the block's rows of h and of this step are both consecutive
                memcpy(Hprev + r0 * H, h + lo * H, nb * H * sizeof(floating))
            A = Hprev + r0 * H
        else:
            A = h + lo * H
        ncols = 2 * H if two_phase else GH
        if stacked:
            # both products in one: [x_t | h_{t-1}] @ [W_ih | W_hh].T
            pgemm2(nb, GH, n_in, Xt, ldx(n_in, x_step), H, A, H, Pih, Gt, GH)
        elif fused:
            rgemm(nb, ncols, H, A, H, P1, True, W_hh, H, True, Gt, GH)
        else:
            rgemm(nb, ncols, H, A, H, P1, True, W_hh, H, False, work, GH)
        if X != NULL and b_ih != NULL and not gru_fused:
            # the input bias (the GRU's; the rnn and the lstm pass both biases
            # in b_hh)
            add_to_rows(nb, GH, b_ih, Gt, GH)
        # the LSTM's step of all the block's rows in one pass (the rows of
        # the outputs and states are consecutive); the gate activations are
        # stored for the backward pass only
        if (d.cell == LSTM and not d.peephole and not d.layer_norm
                and lstm_cell_fused(Gt, b_hh, c + lo * H,
                                    C_out + r0 * H if C_out != NULL else NULL,
                                    aux + r0 * H if aux != NULL else NULL,
                                    H_out + r0 * H if H_out != NULL else NULL,
                                    h + lo * H, H, nb, G != NULL)):
            continue
        for i in range(nb):
            r = r0 + i
            b = lo + i
            if d.cell == RNN:
                rnn_row(d, Gt + i * GH, NULL, b_hh, ln_w, ln_b,
                        xhat + r * GH, rstd + r * G_, Ht + i * H, h + b * H)
            elif d.cell == LSTM:
                lstm_row_steps(d, Gt + i * GH, NULL, b_hh, peep, ln_w, ln_b,
                               xhat + r * GH, rstd + r * G_, Ht + i * H,
                               C_out + r * H if C_out != NULL else NULL,
                               aux + r * H if aux != NULL else NULL,
                               h + b * H, c + b * H)
            elif gru_fused:
                gru_cell_fused(Gt + i * GH, b_ih if X != NULL else NULL,
                               work + i * GH, b_hh, aux + r * H, Ht + i * H,
                               h + b * H, H)
            else:
                gru_rz_row(d, Gt + i * GH, work + i * GH, b_hh, ln_w, ln_b,
                           xhat + r * GH, rstd + r * G_, A + i * H,
                           aux + r * H)
        if d.cell != GRU or gru_fused:
            continue
        if two_phase:
            # candidate's recurrent product: W_hn (r * m * h)
            rgemm(nb, H, H, aux + r0 * H, H, P2, True, W_hh + 2 * H * H, H,
                  False, work + 2 * H, GH)
        for i in range(nb):
            r = r0 + i
            gru_n_row(d, Gt + i * GH, work + i * GH, b_hh, ln_w, ln_b,
                      xhat + r * GH, rstd + r * G_, Ht + i * H,
                      h + (lo + i) * H)


# The L1 data cache of current x86 cores is 8- or 12-way, indexed by bits 6-11
# of the address: rows whose stride is a multiple of 4 KiB all fall in one
# set. The packed product reads 12 rows of A at once, so such a stride (the
# LSTM's gate gradients at 256 or 512 units in float32, for example) evicts
# its own rows: 7-10% slower (benchmarks/OPTIMISATIONS.md, session 10).
cdef enum:
    ALIASING_STRIDE = 4096
    CACHE_LINE = 64


cdef inline int spread_stride(int ncols, Py_ssize_t itemsize) noexcept nogil:
    """A row stride (elements) for ``ncols`` columns: whole cache lines, and
    not a multiple of ``ALIASING_STRIDE`` bytes."""
    cdef int line = <int> (CACHE_LINE // itemsize)
    cdef int ld = (ncols + line - 1) // line * line
    if (ld * itemsize) % ALIASING_STRIDE == 0:
        ld += line
    return ld


cdef inline int block_lo(const Py_ssize_t* starts, int k,
                         int block_rows) noexcept nogil:
    """Block ``k``'s first sequence: ``starts[k]`` where the caller cut the
    batch (``starts`` not NULL), else ``k * block_rows``."""
    return <int> starts[k] if starts != NULL else k * block_rows


cdef inline int block_hi(const Py_ssize_t* starts, int k, int block_rows,
                         int B) noexcept nogil:
    """The sequence after block ``k``'s last (see ``block_lo``)."""
    if starts != NULL:
        return <int> starts[k + 1]
    return min((k + 1) * block_rows, B)


cdef inline Py_ssize_t block_part(const Py_ssize_t* starts, int k, int lo,
                                  int block_rows,
                                  Py_ssize_t stride) noexcept nogil:
    """Where block ``k``'s part of a scratch array starts: one row of
    ``stride`` elements per block, room for ``block_rows`` sequences of
    ``stride / block_rows`` elements each. That is row ``k``; where the
    caller cut the batch (``starts``), the room of the block's own
    sequences instead, from sequence ``lo`` on, so that a block of any size
    fits (the array has room for every sequence of the batch)."""
    if starts != NULL:
        return lo * (stride // block_rows)
    return k * stride


cdef int check_block_starts(const Py_ssize_t[::1] starts, Py_ssize_t B,
                            int block_rows, tuple strides,
                            str where) except -1:
    """Check a caller's cut of a batch of ``B`` sequences: ``ceil(B /
    block_rows)`` blocks of at least one sequence, in order, from 0 to
    ``B``; the scratch arrays' row lengths (``strides``, 0 for one not used)
    must hold whole sequences (see ``block_part``)."""
    cdef Py_ssize_t n_blocks = (B + block_rows - 1) // block_rows, k
    if starts.shape[0] != n_blocks + 1 or starts[0] != 0 or starts[n_blocks] != B:
        raise ValueError(f"{where}: block_starts must hold {n_blocks + 1} "
                         f"entries from 0 to {B} (ceil(batch / block_rows) "
                         f"blocks), got {starts.shape[0]}")
    for k in range(n_blocks):
        if starts[k + 1] <= starts[k]:
            raise ValueError(f"{where}: block_starts must increase: block {k} "
                             f"starts at {starts[k]} and ends at "
                             f"{starts[k + 1]}")
    for stride in strides:
        if stride % block_rows:
            raise ValueError(f"{where}: with block_starts, each scratch array "
                             f"must have block_rows * (elements per sequence) "
                             f"columns; one has {stride}, for block_rows "
                             f"{block_rows}")
    return 0


cdef const Py_ssize_t* read_cut(const Py_ssize_t[::1] block_starts, Py_ssize_t B,
                                int block_rows, tuple strides,
                                str where) except? NULL:
    """The address of a caller's cut of a batch (``block_starts``, checked
    by ``check_block_starts``), or NULL for none (None or empty: blocks of
    ``block_rows``). The address is valid while ``block_starts`` is."""
    if block_starts is None or block_starts.shape[0] == 0:
        return NULL
    check_block_starts(block_starts, B, block_rows, strides, where)
    return &block_starts[0]


cdef Py_ssize_t least_rows(tuple rows):
    """The fewest rows among a call's buffers of rows (``rows``: their
    lengths, 0 for one not used), which a call on another packing may not
    exceed (see ``bind_packing``); no limit without any."""
    cdef Py_ssize_t least = PY_SSIZE_T_MAX, n
    for n in rows:
        if 0 < n < least:
            least = n
    return least


cdef Py_ssize_t bind_packing(Dims* d, const Py_ssize_t** bs,
                             const Py_ssize_t** off, const Py_ssize_t** starts,
                             Py_ssize_t B, int block_rows, Py_ssize_t capacity,
                             const Py_ssize_t[::1] batch_sizes,
                             const Py_ssize_t[::1] offsets,
                             const Py_ssize_t[::1] block_starts, tuple strides,
                             str where) except -1:
    """Point a prepared call (``ForwardArgs``, ``BackwardArgs``) at another
    packing: of its ``B`` sequences, in at most ``capacity`` rows (the first
    rows of its buffers), cut by ``block_starts`` (None or empty: blocks of
    ``block_rows``; checked as ``check_block_starts`` does, ``strides``
    being the scratch arrays'); returns its number of rows. The caller
    checks the packing itself, as for the kernels' entry points."""
    cdef Py_ssize_t n_steps
    if batch_sizes is None or offsets is None:
        raise TypeError(f"{where}: pass batch_sizes and offsets together")
    n_steps = batch_sizes.shape[0]
    if (n_steps == 0 or batch_sizes[0] != B or offsets.shape[0] != n_steps + 1
            or offsets[n_steps] > capacity):
        raise ValueError(
            f"{where}: the call was made for {B} sequences in at most "
            f"{capacity} rows; got batch_sizes of {n_steps} steps "
            f"({batch_sizes[0] if n_steps else 0} sequences) and "
            f"{offsets.shape[0]} offsets (one more than the steps, the last "
            f"the number of rows)")
    d.n_steps = <int> n_steps
    bs[0], off[0] = &batch_sizes[0], &offsets[0]
    starts[0] = read_cut(block_starts, B, block_rows, strides, where)
    return offsets[n_steps]


cdef inline Py_ssize_t work_columns(int gates, int hidden, int block_rows,
                                    Py_ssize_t itemsize) noexcept nogil:
    return block_rows * <Py_ssize_t> (
        hidden + spread_stride(gates * hidden, itemsize))


def share_out_steps(const Py_ssize_t[::1] batch_sizes, Py_ssize_t[::1] starts):
    """Cut a packed batch (``batch_sizes``: its sequences longest first) into
    ``len(starts) - 1`` blocks of consecutive sequences holding about the same
    number of steps each: ``starts`` receives where each block starts, and
    the number of sequences last. Each cut is the sequence boundary nearest
    its share of the steps (the later one on a tie), moved only as far as
    it takes to leave every block a sequence. There must be at least as many
    sequences as blocks."""
    cdef Py_ssize_t n_steps = batch_sizes.shape[0]
    cdef Py_ssize_t n_blocks = starts.shape[0] - 1
    cdef Py_ssize_t B = batch_sizes[0] if n_steps > 0 else 0
    cdef Py_ssize_t r, t, k, total = 0, before = 0, steps, cut
    cdef double share
    if n_blocks < 1 or B < n_blocks:
        raise ValueError(f"share_out_steps: {B} sequences cannot fill "
                         f"{n_blocks} blocks")
    for t in range(n_steps):
        total += batch_sizes[t]
    starts[0] = 0
    k = 1
    t = n_steps
    for r in range(B):
        if k == n_blocks:
            break
        # sequence r's steps: the first t, whose batches hold more than r
        # sequences (batch_sizes does not rise)
        while t > 0 and batch_sizes[t - 1] <= r:
            t -= 1
        steps = t
        # the cuts whose share of the steps ends within this sequence's:
        # before it or after it, whichever is nearer
        while k < n_blocks:
            share = <double> total * k / n_blocks
            if before + steps < share:
                break
            cut = r if share - before < before + steps - share else r + 1
            cut = max(cut, starts[k - 1] + 1)
            starts[k] = min(cut, B - (n_blocks - k))
            k += 1
        before += steps
    starts[n_blocks] = B


def backward_work_columns(int cell, int hidden, int block_rows, int itemsize):
    """Columns per block of the ``work`` array of ``recurrent_backward``:
    the recurrent product's ``block_rows x hidden`` result, then room for a
    copy of the gate gradients it reads at a row stride that does not alias
    in the L1 cache (``spread_stride``)."""
    return work_columns(n_gates(cell), hidden, block_rows, itemsize)


cdef inline const floating* spread_rows(const floating* src, Py_ssize_t lds,
                                        int nb, int ncols, floating* scratch,
                                        int* ld) noexcept nogil:
    """The ``nb x ncols`` rows at ``src`` (stride ``lds``) for a product: in
    place, or, when ``lds`` is a multiple of ``ALIASING_STRIDE`` bytes,
    copied into ``scratch`` at stride ``spread_stride`` (``*ld`` receives the
    stride used). Copies change no value."""
    cdef int i
    if (lds * <Py_ssize_t> sizeof(floating)) % ALIASING_STRIDE != 0:
        ld[0] = <int> lds
        return src
    ld[0] = spread_stride(ncols, sizeof(floating))
    for i in range(nb):
        memcpy(scratch + <Py_ssize_t> i * ld[0], src + i * lds,
               ncols * sizeof(floating))
    return scratch


cdef void backward_block(Dims* d, int lo, int hi, const Py_ssize_t* bs,
                         const Py_ssize_t* off, const Py_ssize_t* t_stop,
                         const floating* G,
                         const floating* W_hh, const floating* P1,
                         const floating* P2, const floating* peep,
                         const floating* ln_w, const floating* mask,
                         const floating* h0, const floating* c0,
                         const floating* H_out, const floating* C_out,
                         const floating* Hprev, const floating* aux,
                         const floating* xhat, const floating* rstd,
                         const floating* dH, floating* dh, floating* dc,
                         floating* dG, floating* dGh, floating* dpeep,
                         floating* dln_w, floating* dln_b, floating* db_ih,
                         floating* db_hh, const floating* X, int n_in,
                         floating* dWih_t, floating* dWhh_t, floating* edge,
                         floating* work) noexcept nogil:
    cdef int H = d.hidden, GH = d.gates * d.hidden, G_ = d.gates
    cdef int step, t, nb, i, j, ncols
    cdef Py_ssize_t r0, r, b, prev_row
    cdef const floating* h_prev
    cdef const floating* c_prev
    cdef bint two_phase = d.cell == GRU and not d.reset_after
    cdef bint gru_fused = (d.cell == GRU and d.reset_after and not d.layer_norm
                           and gru_one_pass(G, d.hidden))
    cdef Py_ssize_t lowest_stop = first_stop(t_stop, lo, hi)
    # work: the recurrent product's rows, then the copy made by spread_rows
    cdef floating* spread = work + (hi - lo) * H
    cdef const floating* A
    cdef int lda
    for step in range(d.n_steps):
        t = step if d.reverse else d.n_steps - 1 - step
        if t < lowest_stop:
            break
        nb = <int> (min(<Py_ssize_t> hi, bs[t]) - lo)
        if nb <= 0:
            continue
        r0 = off[t] + lo
        # dL/dh_t from above, for all the block's rows at once (consecutive
        # in dh and in dH; a truncated row's is set to zero below); none
        # with dH empty
        if dH != NULL:
            add_rows(1, nb * H, dH + r0 * H, 0, dh + lo * H)
        for i in range(nb):
            r = r0 + i
            b = lo + i
            if t_stop != NULL and t < t_stop[b]:
                # truncated: this sequence's gradient stops before step t
                for j in range(H):
                    dh[b * H + j] = 0
                if d.cell == LSTM:
                    for j in range(H):
                        dc[b * H + j] = 0
                for j in range(GH):
                    dG[r * GH + j] = 0
                    dGh[r * GH + j] = 0
                continue
            # un-masked previous state of this sequence
            if not d.reverse and t > 0:
                prev_row = off[t - 1] + b
            elif d.reverse and t + 1 < d.n_steps and b < bs[t + 1]:
                prev_row = off[t + 1] + b
            else:
                prev_row = -1
            if prev_row >= 0:
                h_prev = H_out + prev_row * H
                c_prev = C_out + prev_row * H if d.cell == LSTM else NULL
            else:
                h_prev = h0 + b * H
                c_prev = c0 + b * H if d.cell == LSTM else NULL
            if d.cell == RNN:
                rnn_row_back(d, H_out + r * H, ln_w, xhat + r * GH,
                             rstd[r * G_] if d.layer_norm else 0, dh + b * H,
                             dG + r * GH, dln_w, dln_b)
            elif d.cell == LSTM:
                lstm_row_back(d, G + r * GH, C_out + r * H, aux + r * H,
                              c_prev, peep,
                              ln_w, xhat + r * GH, rstd + r * G_, dh + b * H,
                              dc + b * H, dG + r * GH, dpeep, dln_w, dln_b)
            elif gru_fused:
                gru_back_fused(G + r * GH, aux + r * H, h_prev, dh + b * H,
                               dG + r * GH, dGh + r * GH, H)
            else:
                gru_n_row_back(d, G + r * GH, h_prev, ln_w, xhat + r * GH,
                               rstd + r * G_, dh + b * H, dG + r * GH, dln_w,
                               dln_b)
                if not two_phase:
                    gru_rz_row_back(d, G + r * GH, aux + r * H, Hprev + r * H,
                                    NULL, ln_w, xhat + r * GH, rstd + r * G_,
                                    dG + r * GH, dGh + r * GH, dln_w, dln_b)
        ncols = GH
        if two_phase:
            # d(r * m * h) = dg_n @ W_hn, needed by the reset gate
            A = spread_rows(dG + r0 * GH + 2 * H, GH, nb, H, spread, &lda)
            rgemm(nb, H, H, A, lda, P2, False, W_hh + 2 * H * H, H, False,
                  work, H)
            for i in range(nb):
                r = r0 + i
                gru_rz_row_back(d, G + r * GH, aux + r * H, Hprev + r * H,
                                work + i * H, ln_w, xhat + r * GH,
                                rstd + r * G_, dG + r * GH, dGh + r * GH,
                                dln_w, dln_b)
                for j in range(H):
                    work[i * H + j] = work[i * H + j] * G[r * GH + j]
            ncols = 2 * H
        # gradient w.r.t. the masked previous state
        A = spread_rows(dGh + r0 * GH, GH, nb, ncols, spread, &lda)
        rgemm(nb, H, ncols, A, lda, P1, False, W_hh, H, two_phase, work, H)
        if d.has_mask:
            for i in range(nb):
                b = lo + i
                for j in range(H):
                    dh[b * H + j] += work[i * H + j] * mask[b * H + j]
        else:
            add_rows(1, nb * H, work, 0, dh + lo * H)
        # bias gradients: this block's partial sums, while the rows are in cache
        add_rows(nb, GH, dG + r0 * GH, GH, db_ih)
        if db_hh != NULL:
            add_rows(nb, GH, dGh + r0 * GH, GH, db_hh)
        # weight gradients (transposed): this block's partial sums, step by
        # step, while the rows are in cache
        if dWhh_t != NULL:
            if two_phase:
                # the candidate's recurrent product reads r * m * h (aux)
                gemm_tn(H, 2 * H, nb, Hprev + r0 * H, H, dGh + r0 * GH, GH,
                        dWhh_t, GH, edge)
                gemm_tn(H, H, nb, aux + r0 * H, H, dGh + r0 * GH + 2 * H, GH,
                        dWhh_t + 2 * H, GH, edge)
            else:
                gemm_tn(H, GH, nb, Hprev + r0 * H, H, dGh + r0 * GH, GH,
                        dWhh_t, GH, edge)
        if dWih_t != NULL:
            gemm_tn(n_in, GH, nb, X + r0 * n_in, n_in, dG + r0 * GH, GH, dWih_t,
                    GH, edge)


cdef struct ForwardCall:
    # the arguments of recurrent_forward as addresses (of floats or doubles:
    # run_call's type), NULL for an empty array, and the sizes it reads
    Dims d
    int B, block_rows, n_threads, n_in
    const Py_ssize_t* bs
    const Py_ssize_t* off
    const Py_ssize_t* xs
    const Py_ssize_t* starts
    void* X
    void* xr
    void* Wih
    void* bih
    void* Pih
    void* G
    void* Gb
    void* W
    void* b
    void* peep
    void* lnw
    void* lnb
    void* mask
    void* h
    void* c
    void* H
    void* C
    void* Hp
    void* aux
    void* xh
    void* rs
    void* work
    void* wpack
    Py_ssize_t xrstride, gbstride, wstride


cdef tuple forward_strides(ForwardCall* a):
    """The row lengths of a forward call's scratch arrays that a cut
    addresses by sequence (``block_part``), 0 for one not used."""
    return (a.xrstride if a.xr != NULL else 0,
            a.gbstride if a.Gb != NULL else 0, a.wstride)


cdef void run_call(ForwardCall* a, floating* of_type) noexcept:
    """Run ``recurrent_forward``'s call ``a``; ``of_type`` (NULL) gives the
    floating type of its arrays."""
    cdef Dims* d = &a.d
    cdef int n_blocks = (a.B + a.block_rows - 1) // a.block_rows
    cdef int k, lo, hi
    cdef floating* pX = <floating*> a.X
    cdef floating* pxr = <floating*> a.xr
    cdef floating* pWih = <floating*> a.Wih
    cdef floating* pPih = <floating*> a.Pih
    cdef floating* pGb = <floating*> a.Gb
    cdef floating* pW = <floating*> a.W
    cdef floating* pwork = <floating*> a.work
    cdef floating* P1 = NULL
    cdef floating* P2 = NULL
    # the rnn and the lstm with a packed input product: one product per step,
    # with the input and recurrent weights stacked in wpack_ih
    cdef bint stacked = pX != NULL and pPih != NULL and d.cell != GRU
    if stacked:
        pack_b2(a.n_in, pWih, a.n_in, d.hidden, pW, d.hidden,
                d.gates * d.hidden, pPih)
    else:
        pack_recurrent(d, False, pW, <floating*> a.wpack, &P1, &P2)
        if pX != NULL and pPih != NULL:
            pack_b(True, a.n_in, d.gates * d.hidden, pWih, a.n_in, pPih)
    for k in prange(n_blocks, nogil=True, schedule="dynamic",
                    num_threads=min(a.n_threads, n_blocks)):
        lo = block_lo(a.starts, k, a.block_rows)
        hi = block_hi(a.starts, k, a.block_rows, a.B)
        forward_block(d, lo, hi, a.bs, a.off, pX, a.n_in, a.xs,
                      pxr + block_part(a.starts, k, lo, a.block_rows, a.xrstride)
                      if pxr != NULL else NULL,
                      pWih, pPih, <floating*> a.bih, <floating*> a.G,
                      pGb + block_part(a.starts, k, lo, a.block_rows, a.gbstride)
                      if pGb != NULL else NULL, pW, P1, P2,
                      <floating*> a.b, <floating*> a.peep, <floating*> a.lnw,
                      <floating*> a.lnb, <floating*> a.mask, <floating*> a.h,
                      <floating*> a.c, <floating*> a.H, <floating*> a.C,
                      <floating*> a.Hp, <floating*> a.aux, <floating*> a.xh,
                      <floating*> a.rs,
                      pwork + block_part(a.starts, k, lo, a.block_rows, a.wstride),
                      stacked)


# --------------------------------------------------------------------------
# Python entry points. Shapes are checked by the caller (pyx_rnn.layers);
# these only read the sizes they need from the arrays.
# --------------------------------------------------------------------------

cdef class ForwardArgs:
    """A ``recurrent_forward`` call made ready for repeated calls that differ
    only in their input and states (``Network``'s inference plan): the
    addresses of its other arrays, read once, so that ``run_forward`` reads
    four arrays per call rather than about thirty.

    ``ForwardArgs(args)``, ``args`` being ``recurrent_forward``'s arguments;
    the input, its starts and the states in them are placeholders (of the
    right dtype; they may be empty). It keeps them (a tuple), and so its
    arrays, alive; the arrays must keep their shapes and their data (their
    values may change: the weights are read, and packed, at every call).
    """
    cdef ForwardCall a
    cdef readonly tuple args
    cdef Py_ssize_t itemsize, n_rows, capacity, g_rows
    cdef int n_input

    def __init__(self, args):
        self.args = tuple(args)
        recurrent_forward(*self.args, prepare=self)


def recurrent_forward(int cell, int activation, bint reverse, bint reset_after,
                      bint layer_norm, bint peephole,
                      const Py_ssize_t[::1] batch_sizes,
                      const Py_ssize_t[::1] offsets,
                      floating[:, ::1] X, const Py_ssize_t[::1] x_starts,
                      floating[:, ::1] x_rows, floating[:, ::1] W_ih,
                      floating[::1] b_ih, floating[::1] wpack_ih,
                      floating[:, ::1] G, floating[:, ::1] G_block,
                      floating[:, ::1] W_hh,
                      floating[::1] b_hh, floating[::1] peep,
                      floating[::1] ln_w, floating[::1] ln_b,
                      floating[:, ::1] mask, floating[:, ::1] h,
                      floating[:, ::1] c, floating[:, ::1] H_out,
                      floating[:, ::1] C_out, floating[:, ::1] Hprev,
                      floating[:, ::1] aux, floating[:, ::1] xhat,
                      floating[:, ::1] rstd, floating[:, ::1] work,
                      floating[::1] wpack, int block_rows, int n_threads,
                      const Py_ssize_t[::1] block_starts=None,
                      ForwardArgs prepare=None):
    """Run one layer in one direction over a packed batch.

    The input projection ``W_ih x + b_ih`` of every row is either in ``G`` on
    entry (``X`` empty), or computed step by step from the packed input ``X``
    (``n_rows x n_input``) by the thread that runs the row's block, with
    ``W_ih`` packed into ``wpack_ih`` (``input_pack_length``; empty: BLAS);
    for the rnn and the lstm ``W_hh`` is packed there too, below ``W_ih``,
    and each step is one product of ``[x_t | h_{t-1}]`` (``wpack`` is then
    not read and may be empty);
    ``b_ih`` may then be empty, with the rnn and the lstm, when ``b_hh`` holds
    the sum of both biases. ``G`` holds the gate activations of every row on
    exit; for inference it may be empty when ``X`` is given: the gates of a
    step then live in ``G_block`` (``n_blocks x block_rows * gates * hidden``).
    ``h`` (and ``c``) hold the initial state on entry and the final state of
    every sequence on exit. ``H_out``, ``C_out``, ``Hprev``, ``aux``,
    ``xhat`` and ``rstd`` are filled for the backward pass; ``aux`` holds
    the GRU's ``a_n`` (reset after) or ``r * m * h`` (reset before), and
    the LSTM's ``tanh(c_t)``. ``work`` has shape
    ``(n_blocks, block_rows * gates * hidden)``.
    For inference ``Hprev`` may be empty when there is no mask, and ``C_out``
    and the LSTM's ``aux`` may be empty: they are then not kept; so may
    ``H_out`` for the rnn and the lstm (the final states are in ``h``).
    ``wpack`` (``recurrent_pack_length`` elements) receives the packed
    ``W_hh`` for the packed recurrent product; empty: BLAS is used instead.
    With ``x_starts`` not empty, ``X`` is read in place rather than packed:
    sequence ``b`` (packed order) has its steps in consecutive rows of ``X``
    from row ``x_starts[b]``, and each block gathers the rows of a step into
    its row of ``x_rows`` (``n_blocks x block_rows * n_input``) first. The
    caller makes sure that every row read is in ``X``.
    ``block_starts`` (``n_blocks + 1`` increasing entries from 0 to the
    number of sequences), when given and not empty, cuts the batch into
    blocks of any size: block ``k`` holds sequences ``block_starts[k]`` to
    ``block_starts[k + 1]`` (excluded) and uses the part of ``x_rows``,
    ``G_block`` and ``work`` of those sequences (their rows hold
    ``block_rows`` sequences each).
    Arrays a cell does not use may have size zero.
    With ``prepare`` (a new ``ForwardArgs``) nothing runs: the call is made
    ready in it instead, for ``run_forward`` (see ``ForwardArgs``).
    """
    cdef ForwardCall a
    cdef int n_steps = batch_sizes.shape[0]
    a.d = make_dims(cell, activation, reverse, reset_after, layer_norm, peephole,
                    mask.shape[0] > 0, n_steps, W_hh.shape[1])
    a.B = <int> batch_sizes[0] if n_steps > 0 else 0
    a.block_rows, a.n_threads = block_rows, n_threads
    a.bs = &batch_sizes[0] if n_steps > 0 else NULL
    a.off = &offsets[0]
    a.X, a.n_in = ptr2(X), <int> X.shape[1]
    a.xs = &x_starts[0] if x_starts.shape[0] > 0 else NULL
    a.xr, a.xrstride = ptr2(x_rows), x_rows.shape[1]
    a.Wih, a.bih, a.Pih = ptr2(W_ih), ptr1(b_ih), ptr1(wpack_ih)
    a.G, a.Gb, a.gbstride = ptr2(G), ptr2(G_block), G_block.shape[1]
    a.W, a.b, a.peep = ptr2(W_hh), ptr1(b_hh), ptr1(peep)
    a.lnw, a.lnb, a.mask = ptr1(ln_w), ptr1(ln_b), ptr2(mask)
    a.h, a.c, a.H, a.C = ptr2(h), ptr2(c), ptr2(H_out), ptr2(C_out)
    a.Hp, a.aux, a.xh, a.rs = ptr2(Hprev), ptr2(aux), ptr2(xhat), ptr2(rstd)
    a.work, a.wstride, a.wpack = ptr2(work), work.shape[1], ptr1(wpack)
    a.starts = read_cut(block_starts, a.B, block_rows, forward_strides(&a),
                        "recurrent_forward")
    if cell == GRU and a.H == NULL and n_steps > 0:
        raise ValueError("the gru needs H_out: its work holds the recurrent "
                         "product")
    if prepare is None:
        run_call(&a, <floating*> NULL)
        return
    prepare.a = a
    prepare.itemsize = sizeof(floating)
    prepare.n_input = <int> W_ih.shape[1]
    prepare.n_rows = offsets[n_steps]
    prepare.g_rows = G.shape[0]
    prepare.capacity = least_rows((G.shape[0], H_out.shape[0], C_out.shape[0],
                                   Hprev.shape[0], aux.shape[0], xhat.shape[0],
                                   rstd.shape[0]))


def run_forward(ForwardArgs call, floating[:, ::1] X,
                const Py_ssize_t[::1] x_starts, floating[:, ::1] h,
                floating[:, ::1] c, const Py_ssize_t[::1] batch_sizes=None,
                const Py_ssize_t[::1] offsets=None,
                const Py_ssize_t[::1] block_starts=None):
    """Run the call made ready in ``call`` on this input ``X``, its starts
    (empty: ``X`` is packed) and states ``h`` and ``c`` (``c`` empty but for
    the LSTM), as ``recurrent_forward`` does. With ``batch_sizes`` and
    ``offsets``, on that packing rather than the call's own: of as many
    sequences, in no more rows than the call's buffers have (it fills their
    first rows), cut by ``block_starts`` as ``recurrent_forward`` takes it.
    Checks the sizes it reads; the caller makes sure, as for
    ``recurrent_forward``, that the packing is valid and that every row
    ``x_starts`` points the sequences at lies in ``X``. A call whose input
    projection is in ``G`` on entry (one made ready without a packed input
    weight: token input, whose rows the caller gathers into ``G`` first)
    takes an ``X`` of no rows, and empty starts."""
    cdef ForwardCall a = call.a
    cdef Py_ssize_t B = a.B, H = a.d.hidden, n_rows = call.n_rows
    cdef bint in_g = a.Pih == NULL and X.shape[0] == 0 and x_starts.shape[0] == 0
    if sizeof(floating) != call.itemsize:
        raise TypeError(f"run_forward: arrays of {sizeof(floating)}-byte "
                        f"floats, for a call of {call.itemsize}-byte ones")
    if batch_sizes is not None or offsets is not None:
        n_rows = bind_packing(&a.d, &a.bs, &a.off, &a.starts, B, a.block_rows,
                              call.capacity, batch_sizes, offsets, block_starts,
                              forward_strides(&a), "run_forward")
    if in_g:
        # the kernel reads the input projection from G, of at least n_rows
        # rows (the call's own buffer)
        if call.g_rows < n_rows:
            raise ValueError(f"run_forward: no input, and a G of {call.g_rows} "
                             f"rows for {n_rows} packed rows")
    elif X.shape[1] != call.n_input or (
            X.shape[0] < n_rows if x_starts.shape[0] == 0
            else x_starts.shape[0] != B):
        raise ValueError(f"run_forward: X of shape {(X.shape[0], X.shape[1])} and "
                         f"{x_starts.shape[0]} starts for {n_rows} packed "
                         f"rows of {call.n_input} features, {B} sequences")
    if (h.shape[0] != B or h.shape[1] != H or (
            (c.shape[0] != B or c.shape[1] != H) if a.d.cell == LSTM
            else c.shape[0] != 0)):
        raise ValueError(f"run_forward: states of shapes {(h.shape[0], h.shape[1])} "
                         f"and {(c.shape[0], c.shape[1])} for {B} sequences of {H} "
                         f"units")
    if in_g:
        a.X, a.n_in, a.xs = NULL, 0, NULL
    else:
        a.X, a.n_in = ptr2(X), <int> X.shape[1]
        a.xs = &x_starts[0] if x_starts.shape[0] > 0 else NULL
    a.h, a.c = ptr2(h), ptr2(c)
    if a.d.n_steps > 0:
        run_call(&a, <floating*> NULL)


cdef struct BackwardCall:
    # the arguments of recurrent_backward as addresses (see ForwardCall)
    Dims d
    int B, block_rows, n_threads, n_in
    const Py_ssize_t* bs
    const Py_ssize_t* off
    const Py_ssize_t* stop
    const Py_ssize_t* starts
    void* G
    void* W
    void* peep
    void* lnw
    void* mask
    void* h0
    void* c0
    void* H
    void* C
    void* Hp
    void* aux
    void* xh
    void* rs
    void* dH
    void* dh
    void* dc
    void* dG
    void* dGh
    void* dpeep
    void* dlnw
    void* dlnb
    void* dbi
    void* dbh
    void* X
    void* dWi
    void* dWh
    void* edge
    void* work
    void* wpack
    Py_ssize_t wstride, pstride, lstride, bstride, wistride, whstride, estride


cdef tuple backward_strides(BackwardCall* a):
    """The same for a backward call (see ``forward_strides``)."""
    return (a.estride if a.edge != NULL else 0, a.wstride)


cdef void run_backward_call(BackwardCall* a, floating* of_type) noexcept:
    """Run ``recurrent_backward``'s call ``a``; ``of_type`` (NULL) gives the
    floating type of its arrays."""
    cdef Dims* d = &a.d
    cdef int n_blocks = (a.B + a.block_rows - 1) // a.block_rows
    cdef int k, lo, hi
    cdef floating* P1
    cdef floating* P2
    cdef floating* pdpeep = <floating*> a.dpeep
    cdef floating* pdlnw = <floating*> a.dlnw
    cdef floating* pdlnb = <floating*> a.dlnb
    cdef floating* pdbi = <floating*> a.dbi
    cdef floating* pdbh = <floating*> a.dbh
    cdef floating* pX = <floating*> a.X
    cdef floating* pdWi = <floating*> a.dWi
    cdef floating* pdWh = <floating*> a.dWh
    cdef floating* pedge = <floating*> a.edge
    cdef floating* pwork = <floating*> a.work
    pack_recurrent(d, True, <floating*> a.W, <floating*> a.wpack, &P1, &P2)
    for k in prange(n_blocks, nogil=True, schedule="dynamic",
                    num_threads=min(a.n_threads, n_blocks)):
        lo = block_lo(a.starts, k, a.block_rows)
        hi = block_hi(a.starts, k, a.block_rows, a.B)
        backward_block(d, lo, hi, a.bs, a.off, a.stop, <floating*> a.G,
                       <floating*> a.W, P1, P2, <floating*> a.peep,
                       <floating*> a.lnw, <floating*> a.mask, <floating*> a.h0,
                       <floating*> a.c0, <floating*> a.H, <floating*> a.C,
                       <floating*> a.Hp, <floating*> a.aux, <floating*> a.xh,
                       <floating*> a.rs, <floating*> a.dH, <floating*> a.dh,
                       <floating*> a.dc, <floating*> a.dG, <floating*> a.dGh,
                       pdpeep + k * a.pstride if pdpeep != NULL else NULL,
                       pdlnw + k * a.lstride if pdlnw != NULL else NULL,
                       pdlnb + k * a.lstride if pdlnb != NULL else NULL,
                       pdbi + k * a.bstride,
                       pdbh + k * a.bstride if pdbh != NULL else NULL,
                       pX, a.n_in,
                       pdWi + k * a.wistride if pdWi != NULL and pX != NULL else NULL,
                       pdWh + k * a.whstride if pdWh != NULL else NULL,
                       pedge + block_part(a.starts, k, lo, a.block_rows, a.estride)
                       if pedge != NULL else NULL,
                       pwork + block_part(a.starts, k, lo, a.block_rows, a.wstride))


cdef class BackwardArgs:
    """A ``recurrent_backward`` call made ready for repeated calls that
    differ only in their packed input and packing (``Network``'s training
    plan; see ``ForwardArgs``): ``BackwardArgs(args)``, ``args`` being
    ``recurrent_backward``'s arguments, the input a placeholder (of the
    right dtype and width), its buffers those of the most rows a call may
    have. ``run_backward`` then reads one array and the packing per call.
    The arrays must keep their shapes and their data; their values may
    change (the parameters are read, and packed, at every call; the caller
    fills ``dh`` and ``dc`` and zeroes the partial sums).
    """
    cdef BackwardCall a
    cdef readonly tuple args
    cdef Py_ssize_t itemsize, n_rows, capacity

    def __init__(self, args):
        self.args = tuple(args)
        recurrent_backward(*self.args, prepare=self)


def recurrent_backward(int cell, int activation, bint reverse,
                       bint reset_after, bint layer_norm, bint peephole,
                       const Py_ssize_t[::1] batch_sizes,
                       const Py_ssize_t[::1] offsets,
                       const Py_ssize_t[::1] t_stop,
                       floating[:, ::1] G, floating[:, ::1] W_hh,
                       floating[::1] peep, floating[::1] ln_w,
                       floating[:, ::1] mask, floating[:, ::1] h0,
                       floating[:, ::1] c0, floating[:, ::1] H_out,
                       floating[:, ::1] C_out, floating[:, ::1] Hprev,
                       floating[:, ::1] aux, floating[:, ::1] xhat,
                       floating[:, ::1] rstd, floating[:, ::1] dH,
                       floating[:, ::1] dh, floating[:, ::1] dc,
                       floating[:, ::1] dG, floating[:, ::1] dGh,
                       floating[:, ::1] dpeep, floating[:, ::1] dln_w,
                       floating[:, ::1] dln_b, floating[:, ::1] dbias_ih,
                       floating[:, ::1] dbias_hh, floating[:, ::1] X,
                       floating[:, ::1] dWih_t, floating[:, ::1] dWhh_t,
                       floating[:, ::1] edge, floating[:, ::1] work,
                       floating[::1] wpack, int block_rows, int n_threads,
                       const Py_ssize_t[::1] block_starts=None,
                       BackwardArgs prepare=None):
    """Back-propagate one layer in one direction through time.

    ``dH`` is dL/dh at every row from above. ``dh`` (and ``dc``) hold the
    gradient w.r.t. the final states on entry and w.r.t. the initial states on
    exit. ``dG`` receives the gradient w.r.t. the gate pre-activations on the
    input side, ``dGh`` on the recurrent side (pass the same array except for
    the reset-after GRU). Only steps ``t >= t_stop`` are visited (truncation);
    rows of earlier steps of ``dG`` and ``dGh`` are left untouched.
    ``dpeep``, ``dln_w``, ``dln_b``, ``dbias_ih`` and ``dbias_hh`` have one
    row per block and receive partial sums (they must be zero on entry), to be
    added in block order by the caller so that the total does not depend on
    the thread count. ``dbias_ih`` sums the rows of ``dG``, ``dbias_hh`` those
    of ``dGh`` (empty when ``dGh`` is ``dG``: the same sums).
    ``dWhh_t`` (``n_blocks x hidden * gates * hidden``), when not empty,
    receives each block's partial sum of the transposed recurrent weight
    gradient, ``Hprev.T @ dGh`` over the block's rows (``aux`` instead of
    ``Hprev`` for the candidate of the GRU with the reset before the
    product), and ``dWih_t`` (``n_blocks x n_input * gates * hidden``) that of
    the input weight gradient, ``X.T @ dG``, from the packed input ``X``;
    both must be zero on entry and are added in block order by the caller.
    ``edge`` (``n_blocks x block_rows * SR_PANEL_BYTES / itemsize``) is their
    scratch, and ``work`` (``n_blocks x backward_work_columns``) that of the
    recurrent product.
    ``wpack`` is as for ``recurrent_forward`` (with ``backward=True``), and
    so is ``block_starts``: its blocks use the parts of ``edge`` and ``work``
    of their sequences.
    ``dH`` may be empty: no gradient from above but through ``dh`` (a
    sequence-to-one network's top layer, whose output at each sequence's
    last step is its final state).
    With ``prepare`` (a new ``BackwardArgs``) nothing runs: the call is made
    ready in it instead, for ``run_backward``.
    """
    cdef BackwardCall a
    cdef int n_steps = batch_sizes.shape[0]
    a.d = make_dims(cell, activation, reverse, reset_after, layer_norm, peephole,
                    mask.shape[0] > 0, n_steps, W_hh.shape[1])
    a.B = <int> batch_sizes[0] if n_steps > 0 else 0
    a.block_rows, a.n_threads = block_rows, n_threads
    a.bs = &batch_sizes[0] if n_steps > 0 else NULL
    a.off = &offsets[0]
    a.stop = &t_stop[0] if t_stop.shape[0] > 0 else NULL
    a.G, a.W, a.peep, a.lnw = ptr2(G), ptr2(W_hh), ptr1(peep), ptr1(ln_w)
    a.mask, a.h0, a.c0 = ptr2(mask), ptr2(h0), ptr2(c0)
    a.H, a.C, a.Hp, a.aux = ptr2(H_out), ptr2(C_out), ptr2(Hprev), ptr2(aux)
    a.xh, a.rs, a.dH, a.dh, a.dc = ptr2(xhat), ptr2(rstd), ptr2(dH), ptr2(dh), ptr2(dc)
    a.dG, a.dGh = ptr2(dG), ptr2(dGh)
    a.dpeep, a.pstride = ptr2(dpeep), dpeep.shape[1]
    a.dlnw, a.dlnb, a.lstride = ptr2(dln_w), ptr2(dln_b), dln_w.shape[1]
    a.dbi, a.dbh, a.bstride = ptr2(dbias_ih), ptr2(dbias_hh), dbias_ih.shape[1]
    a.X, a.n_in = ptr2(X), <int> X.shape[1]
    a.dWi, a.wistride = ptr2(dWih_t), dWih_t.shape[1]
    a.dWh, a.whstride = ptr2(dWhh_t), dWhh_t.shape[1]
    a.edge, a.estride = ptr2(edge), edge.shape[1]
    a.work, a.wstride, a.wpack = ptr2(work), work.shape[1], ptr1(wpack)
    a.starts = read_cut(block_starts, a.B, block_rows, backward_strides(&a),
                        "recurrent_backward")
    if ((a.dWi != NULL or a.dWh != NULL)
            and a.estride < block_rows * sr_pack_length(1, 1, sizeof(floating))):
        raise ValueError("recurrent_backward: edge must have block_rows * "
                         "SR_PANEL_BYTES / itemsize columns")
    if a.B > 0 and (work.shape[0] < (a.B + block_rows - 1) // block_rows
                    or a.wstride < work_columns(a.d.gates, a.d.hidden, block_rows,
                                                sizeof(floating))):
        raise ValueError("recurrent_backward: work must have n_blocks rows of "
                         "backward_work_columns columns")
    if prepare is None:
        run_backward_call(&a, <floating*> NULL)
        return
    prepare.a = a
    prepare.itemsize = sizeof(floating)
    prepare.n_rows = offsets[n_steps]
    prepare.capacity = least_rows((G.shape[0], H_out.shape[0], C_out.shape[0],
                                   Hprev.shape[0], aux.shape[0], xhat.shape[0],
                                   rstd.shape[0], dH.shape[0], dG.shape[0],
                                   dGh.shape[0]))


def run_backward(BackwardArgs call, floating[:, ::1] X,
                 const Py_ssize_t[::1] batch_sizes=None,
                 const Py_ssize_t[::1] offsets=None,
                 const Py_ssize_t[::1] block_starts=None):
    """Run the call made ready in ``call`` with this packed input ``X`` (read
    where the call sums the input weights' gradient, ``dWih_t`` not empty:
    the placeholder's width; else it may be empty),
    as ``recurrent_backward`` does; on its own packing, or on this one
    (``batch_sizes`` and ``offsets``, cut by ``block_starts``), as
    ``run_forward`` takes one. Checks the sizes it reads."""
    cdef BackwardCall a = call.a
    cdef Py_ssize_t n_rows = call.n_rows
    if sizeof(floating) != call.itemsize:
        raise TypeError(f"run_backward: arrays of {sizeof(floating)}-byte "
                        f"floats, for a call of {call.itemsize}-byte ones")
    if batch_sizes is not None or offsets is not None:
        n_rows = bind_packing(&a.d, &a.bs, &a.off, &a.starts, a.B, a.block_rows,
                              call.capacity, batch_sizes, offsets, block_starts,
                              backward_strides(&a), "run_backward")
    if a.dWi != NULL:
        # the call sums the input weights' gradient: its placeholder input
        # (empty) gave the width
        if X.shape[1] != a.n_in or X.shape[0] < n_rows:
            raise ValueError(f"run_backward: X of shape {(X.shape[0], X.shape[1])} "
                             f"for {n_rows} packed rows of {a.n_in} features")
        a.X = ptr2(X)
    if a.d.n_steps > 0:
        run_backward_call(&a, <floating*> NULL)


# --------------------------------------------------------------------------
# A training batch in one call
# --------------------------------------------------------------------------

cdef void* address(a, dtype, Py_ssize_t size, str name,
                   bint writable=True) except? NULL:
    """The address of the data of ``a``, a C-contiguous (and writable)
    array of ``size`` elements of ``dtype``; NULL where ``size`` is 0."""
    if not (type(a) is np.ndarray and a.dtype == dtype and a.size == size
            and a.flags.c_contiguous and (a.flags.writeable or not writable)):
        raise ValueError(f"TrainingStep: {name} must be a C-contiguous"
                         f"{', writable' if writable else ''} array of {size} "
                         f"{dtype} elements")
    return <void*> <size_t> a.ctypes.data if size else NULL


cdef class StepLayer:
    """One layer of a ``TrainingStep``: its kernel calls and the additions
    of its partial sums (``ForwardArgs``, ``BackwardArgs``,
    ``_dense.BlockSums``), and the addresses of the arrays the step reads
    or fills around them.

    ``StepLayer(forward, backward, sums, biases, weight_ih, dh, dc, d_in)``:
    ``biases`` is ``(bias_ih, bias_hh, bias_sum)``, the layer's two biases
    and the sum of both that its forward call reads (None where the call
    reads the two itself); ``weight_ih`` its input weights (``gates *
    hidden x n_input``); ``dh`` and ``dc`` the gradients of its final
    states that its backward call reads (``dc`` empty but for the LSTM);
    ``d_in`` the gradient of its input that the step fills (the ``dH`` of
    the layer below), None for the first layer. It keeps them alive."""
    cdef ForwardArgs forward
    cdef BackwardArgs backward
    cdef BlockSums sums
    cdef void* bias_ih
    cdef void* bias_hh
    cdef void* bias_sum
    cdef void* W_ih
    cdef void* dh
    cdef void* dc
    cdef void* d_in
    cdef Py_ssize_t n_bias, n_h, n_c, n_in, n_gates, d_in_rows
    cdef readonly tuple arrays

    def __init__(self, ForwardArgs forward, BackwardArgs backward,
                 BlockSums sums, biases, weight_ih, dh, dc, d_in):
        cdef Dims* d = &forward.a.d
        bias_ih, bias_hh, bias_sum = biases
        dtype = weight_ih.dtype
        if sums.n_calls and sums.itemsize != forward.itemsize:
            raise TypeError("StepLayer: the partial sums must be of the "
                            "kernels' dtype")
        if forward.itemsize != dtype.itemsize or backward.itemsize != dtype.itemsize:
            raise TypeError("StepLayer: the kernel calls must be of the "
                            "weights' dtype")
        self.forward, self.backward, self.sums = forward, backward, sums
        self.arrays = (biases, weight_ih, dh, dc, d_in)
        self.n_gates = d.gates * d.hidden
        self.n_in = forward.n_input
        self.n_h = forward.a.B * <Py_ssize_t> d.hidden
        self.n_c = self.n_h if d.cell == LSTM else 0
        self.n_bias = self.n_gates if bias_sum is not None else 0
        if bias_sum is not None:
            self.bias_ih = address(bias_ih, dtype, self.n_gates, "bias_ih",
                                   False)
            self.bias_hh = address(bias_hh, dtype, self.n_gates, "bias_hh",
                                   False)
            self.bias_sum = address(bias_sum, dtype, self.n_gates, "bias_sum")
        self.W_ih = address(weight_ih, dtype, self.n_gates * self.n_in,
                            "weight_ih", False)
        self.dh = address(dh, dtype, self.n_h, "dh")
        self.dc = address(dc, dtype, self.n_c, "dc")
        if d_in is not None:
            if d_in.ndim != 2 or d_in.shape[1] != self.n_in:
                raise ValueError("StepLayer: d_in must have a row of the "
                                 "input's width per packed row")
            self.d_in = address(d_in, dtype, d_in.size, "d_in")
            self.d_in_rows = d_in.shape[0]


cdef class TrainingStep:
    """A ``Network`` training batch made ready for one call, from its packed
    input to the gradients (``Network._TrainingPlan`` without dropout or
    outputs at every step, on the squared error of an identity output
    layer): the gradients zeroed; each layer's biases
    summed and its forward kernel run; the output layer on the top layer's
    final states; the squared error and its gradient; the output layer's
    gradient; then, from the top layer down, each layer's backward kernel,
    the additions of its partial sums and the gradient of its input. The
    same functions in the same order as the plan's steps in Python, so the
    same bits, without the dozen Python calls between them: a one-step
    batch of 32 sequences of the 32-unit benchmark LSTM took 25-27 µs
    rather than 31-32 (``benchmarks/OPTIMISATIONS.md``, session 24).

    ``TrainingStep(layers, grads, head, n_threads)``: ``layers`` a list of
    ``StepLayer`` from the bottom up, ``grads`` the flat gradient vector
    (its views are those the kernels' partial sums and the output layer's
    gradient are added to), ``head`` the output layer's ``(weight, bias,
    weight_grad, bias_grad, wpack, Z, dZ, work)``: its parameters, their
    gradients, ``_dense.linear``'s packing buffer, the buffers of its
    outputs and of their gradient (``B x n_outputs``) and
    ``linear_backward``'s work (None for at most ``_dense.NARROW_COLUMNS``
    outputs).
    """
    cdef list layers
    cdef readonly tuple arrays
    # each layer's calls, bound to the packing of the batch being run
    cdef ForwardCall* forwards
    cdef BackwardCall* backwards
    cdef void* grads
    cdef void* W_out
    cdef void* b_out
    cdef void* gW_out
    cdef void* gb_out
    cdef void* wpack
    cdef void* Z
    cdef void* dZ
    cdef object work
    cdef Py_ssize_t n_grads, itemsize, B, n_out, n_top
    cdef int n_threads

    def __init__(self, list layers, grads, head, int n_threads):
        cdef StepLayer top, layer, below = None
        W, b, gW, gb, wpack, Z, dZ, work = head
        if not layers:
            raise ValueError("TrainingStep: no layers")
        top = layers[len(layers) - 1]
        dtype = grads.dtype
        for layer in layers:
            if layer.forward.itemsize != dtype.itemsize:
                raise TypeError("TrainingStep: the layers must be of the "
                                "gradients' dtype")
            if below is not None and (
                    layer.n_in != below.forward.a.d.hidden or layer.d_in == NULL):
                raise ValueError("TrainingStep: each layer above the first "
                                 "reads the outputs of the one below and "
                                 "fills their gradient")
            below = layer
        self.layers, self.n_threads = layers, n_threads
        self.arrays = (grads, tuple(head))
        self.forwards = <ForwardCall*> PyMem_Malloc(len(layers) * sizeof(ForwardCall))
        self.backwards = <BackwardCall*> PyMem_Malloc(
            len(layers) * sizeof(BackwardCall))
        if self.forwards == NULL or self.backwards == NULL:
            raise MemoryError()
        self.itemsize = dtype.itemsize
        self.B, self.n_top = top.forward.a.B, top.forward.a.d.hidden
        self.n_out = W.shape[0] if W.ndim == 2 else 0
        if (self.n_out == 0 or W.shape[1] != self.n_top
                or Z.shape != (self.B, self.n_out) or dZ.shape != Z.shape):
            raise ValueError("TrainingStep: the output layer must read the top "
                             "layer's final states and fill Z and dZ, B x "
                             "n_outputs")
        self.n_grads = grads.size
        self.grads = address(grads, dtype, self.n_grads, "grads")
        self.W_out = address(W, dtype, W.size, "the output weights", False)
        self.b_out = address(b, dtype, self.n_out, "the output bias", False)
        self.gW_out = address(gW, dtype, W.size, "the output weights' gradient")
        self.gb_out = address(gb, dtype, self.n_out, "the output bias' gradient")
        self.wpack = address(wpack, dtype, wpack.size, "wpack")
        self.Z = address(Z, dtype, Z.size, "Z")
        self.dZ = address(dZ, dtype, dZ.size, "dZ")
        self.work = work

    def __dealloc__(self):
        PyMem_Free(self.forwards)
        PyMem_Free(self.backwards)

    def run(self, X, batch_sizes, offsets, block_starts, targets, weights,
            double total_weight, list states):
        """The loss of a batch, its gradient left in the gradient vector:
        ``X`` its packed rows (``n_rows x n_input``, the dtype's,
        C-contiguous), its packing (``batch_sizes``, ``offsets``, cut by
        ``block_starts`` as ``run_forward`` takes them; valid, as the
        kernels' callers check), ``targets`` (``B x n_outputs``, the
        dtype's, C-contiguous, in packed order), the loss terms' weights
        (``B``, the dtype's) and their total (``_dense.squared_error``'s),
        and ``states``, each layer's ``(h, c)``: zeros on entry, its final
        states on exit (``c`` empty but for the LSTM). Checks the sizes it
        reads, as ``run_forward`` and ``run_backward`` do."""
        if self.itemsize == sizeof(float):
            return self._run[float](X, batch_sizes, offsets, block_starts,
                                    targets, weights, total_weight, states)
        return self._run[double](X, batch_sizes, offsets, block_starts,
                                 targets, weights, total_weight, states)

    cdef double _run(self, floating[:, ::1] X,
                     const Py_ssize_t[::1] batch_sizes,
                     const Py_ssize_t[::1] offsets,
                     const Py_ssize_t[::1] block_starts,
                     const floating[:, ::1] targets,
                     const floating[::1] weights, double total_weight,
                     list states) except? -1:
        cdef Py_ssize_t L = len(self.layers), n_rows = 0, k, j
        cdef StepLayer layer
        cdef ForwardCall* fa
        cdef BackwardCall* ba
        cdef floating[:, ::1] h
        cdef floating[:, ::1] c
        cdef floating* bsum
        cdef floating* bi
        cdef floating* bh
        cdef double value
        if len(states) != L:
            raise ValueError(f"TrainingStep: {len(states)} states for {L} layers")
        if targets.shape[0] != self.B or targets.shape[1] != self.n_out:
            raise ValueError(f"TrainingStep: targets of shape "
                             f"{(targets.shape[0], targets.shape[1])} for "
                             f"{self.B} sequences of {self.n_out} outputs")
        if weights.shape[0] != self.B:
            raise ValueError(f"TrainingStep: {weights.shape[0]} weights for "
                             f"{self.B} sequences")
        # each layer's calls on this packing, input and states, checked
        # before anything changes
        for k in range(L):
            layer = self.layers[k]
            fa, ba = &self.forwards[k], &self.backwards[k]
            fa[0], ba[0] = layer.forward.a, layer.backward.a
            n_rows = bind_packing(&fa.d, &fa.bs, &fa.off, &fa.starts, fa.B,
                                  fa.block_rows, layer.forward.capacity,
                                  batch_sizes, offsets, block_starts,
                                  forward_strides(fa), "TrainingStep")
            bind_packing(&ba.d, &ba.bs, &ba.off, &ba.starts, ba.B, ba.block_rows,
                         layer.backward.capacity, batch_sizes, offsets,
                         block_starts, backward_strides(ba), "TrainingStep")
            if k == 0 and (X.shape[1] != layer.n_in or X.shape[0] < n_rows):
                raise ValueError(f"TrainingStep: X of shape "
                                 f"{(X.shape[0], X.shape[1])} for {n_rows} "
                                 f"packed rows of {layer.n_in} features")
            if k > 0 and layer.d_in_rows < n_rows:
                raise ValueError(f"TrainingStep: d_in of {layer.d_in_rows} rows "
                                 f"for {n_rows} packed rows")
            h, c = states[k]
            if (h.shape[0] != fa.B or h.shape[1] != fa.d.hidden
                    or c.shape[0] * c.shape[1] != layer.n_c
                    or (layer.n_c and c.shape[1] != fa.d.hidden)):
                raise ValueError(f"TrainingStep: states of shapes "
                                 f"{(h.shape[0], h.shape[1])} and "
                                 f"{(c.shape[0], c.shape[1])} for layer {k}")
            # the packed input: X's rows, or the outputs of the layer below
            fa.X = &X[0, 0] if k == 0 else self.forwards[k - 1].H
            fa.n_in, fa.xs = <int> layer.n_in, NULL
            fa.h, fa.c = ptr2(h), ptr2(c)
            if ba.dWi != NULL:
                ba.X = fa.X
        memset(self.grads, 0, self.n_grads * sizeof(floating))
        for k in range(L):
            layer = self.layers[k]
            # the sum of the biases, as _ForwardPlan.add_biases makes it
            bsum, bi = <floating*> layer.bias_sum, <floating*> layer.bias_ih
            bh = <floating*> layer.bias_hh
            for j in range(layer.n_bias):
                bsum[j] = bi[j] + bh[j]
            run_call(&self.forwards[k], <floating*> NULL)
        # the output layer on the top layer's final states, its loss and its
        # gradient (Network._output, loss_and_gradient, _head_gradient), the
        # gradient of the final states going straight into the top layer's dh
        top_h = <floating*> self.forwards[L - 1].h
        layer = self.layers[L - 1]
        with nogil:
            linear_rows(self.B, <int> self.n_out, <int> self.n_top, top_h,
                        <floating*> self.W_out, <floating*> self.b_out,
                        <floating*> self.Z, <floating*> self.wpack, 1)
            value = squared_error_rows(<floating*> self.Z, &targets[0, 0],
                                       &weights[0], total_weight,
                                       <floating*> self.dZ, self.B, self.n_out)
        linear_backward_rows(top_h, <floating*> self.dZ, <floating*> self.W_out,
                             <floating*> self.gW_out, <floating*> self.gb_out,
                             <floating*> layer.dh, self.B, <int> self.n_top,
                             <int> self.n_out, self.n_threads, self.work)
        for k in range(L - 1, -1, -1):
            layer = self.layers[k]
            if k < L - 1:
                memset(layer.dh, 0, layer.n_h * sizeof(floating))
            memset(layer.dc, 0, layer.n_c * sizeof(floating))
            layer.sums.zero()
            run_backward_call(&self.backwards[k], <floating*> NULL)
            with nogil:
                layer.sums.add_all()
                if k > 0:
                    matmul_rows(n_rows, <int> layer.n_in, <int> layer.n_gates,
                                <floating*> self.backwards[k].dG,
                                <floating*> layer.W_ih, <int> layer.n_in, False,
                                <floating> 0, <floating*> layer.d_in,
                                self.n_threads)
        return value
