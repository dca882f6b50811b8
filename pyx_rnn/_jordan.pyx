# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Forward and backward kernels of a Jordan network (top-down recurrence).

Layer ``l`` is fed at step ``t - 1`` by the layer above it, and the top layer
by the network's output, so the whole stack and its output layer form one
recurrence and advance together, step by step (docs/engine.md). The cell math
is the Elman row of ``_gates.pxd``; only the wiring differs.

The per-layer arrays are passed as ``intp`` arrays of addresses (one entry per
layer, 0 for an absent array), prepared by ``pyx_rnn.layers``. As in
``_cells.pyx``, the batch is cut into blocks of sequences that depend only on
the batch size, one OpenMP task per block, so results do not depend on the
thread count.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport prange

from ._blas cimport gemm, pack_b, rgemm, sr_pack_length, sr_pgemm_init
from ._gates cimport (
    Dims, RNN, first_stop, make_dims, ptr2, rnn_row, rnn_row_back, output_row,
    output_row_back,
)

# this module's copy of _pgemm.h's dispatch (see _dense)
PGEMM_ISA = sr_pgemm_init()


cdef struct Net:
    int n_layers
    int n_input
    int n_out
    int out_kind
    const Py_ssize_t* hidden     # H_l
    const Py_ssize_t* fed        # F_l: H_{l+1}, or n_out for the top layer


cdef inline floating* at(const Py_ssize_t* addr, int l, floating tag) noexcept nogil:
    # ``tag`` only selects the specialisation
    return <floating*> addr[l]


cdef void forward_block(Net* net, Dims* d, int lo, int hi,
                        const Py_ssize_t* bs, const Py_ssize_t* off,
                        const Py_ssize_t* W_ih, const Py_ssize_t* W_hh,
                        const Py_ssize_t* b_ih, const Py_ssize_t* b_hh,
                        const Py_ssize_t* ln_w, const Py_ssize_t* ln_b,
                        const Py_ssize_t* drop, const Py_ssize_t* rmask,
                        const Py_ssize_t* S, const Py_ssize_t* G,
                        const Py_ssize_t* Hs, const Py_ssize_t* Xin,
                        const Py_ssize_t* Fprev, const Py_ssize_t* xhat,
                        const Py_ssize_t* rstd, const floating* W_out,
                        const floating* b_out, floating* y_state,
                        floating* Y, const Py_ssize_t* P_ih,
                        const Py_ssize_t* P_hh, const floating* P_out) noexcept nogil:
    cdef int L = net.n_layers, n_out = net.n_out
    cdef int step, t, nb, i, j, layer, Hl, Fl, Il
    cdef Py_ssize_t r0, r, b
    cdef floating tag = 0
    cdef floating* fed_state
    cdef floating* mask
    cdef floating* src
    cdef floating* dst
    cdef floating* dmask
    cdef Dims dl = d[0]
    for step in range(d.n_steps):
        t = step
        nb = <int> (min(<Py_ssize_t> hi, bs[t]) - lo)
        if nb <= 0:
            break
        r0 = off[t] + lo
        for layer in range(L):
            Hl = <int> net.hidden[layer]
            Fl = <int> net.fed[layer]
            dl.hidden = Hl
            if layer > 0:
                # input of this layer: h^{l-1}_t, after dropout between layers
                Il = <int> net.hidden[layer - 1]
                src = at(Hs, layer - 1, tag) + r0 * Il
                dst = at(Xin, layer, tag) + r0 * Il
                dmask = at(drop, layer, tag)
                if dmask != NULL:
                    for i in range(nb * Il):
                        dst[i] = src[i] * dmask[r0 * Il + i]
                rgemm(nb, Hl, Il, dst if dmask != NULL else src, Il,
                      at(P_ih, layer, tag), True, at(W_ih, layer, tag), Il,
                      False, at(G, layer, tag) + r0 * Hl, Hl)
            elif at(Xin, 0, tag) != NULL:
                # the network's input: W_ih x_t, computed here row by row
                Il = net.n_input
                rgemm(nb, Hl, Il, at(Xin, 0, tag) + r0 * Il, Il,
                      at(P_ih, 0, tag), True, at(W_ih, 0, tag), Il, False,
                      at(G, 0, tag) + r0 * Hl, Hl)
            # fed-back vector of step t-1, masked
            fed_state = at(S, layer + 1, tag) if layer + 1 < L else y_state
            mask = at(rmask, layer, tag)
            dst = at(Fprev, layer, tag)
            for i in range(nb):
                b = lo + i
                for j in range(Fl):
                    if mask != NULL:
                        dst[(r0 + i) * Fl + j] = (fed_state[b * Fl + j]
                                                  * mask[b * Fl + j])
                    else:
                        dst[(r0 + i) * Fl + j] = fed_state[b * Fl + j]
            rgemm(nb, Hl, Fl, dst + r0 * Fl, Fl, at(P_hh, layer, tag), True,
                  at(W_hh, layer, tag), Fl, True, at(G, layer, tag) + r0 * Hl, Hl)
            for i in range(nb):
                r = r0 + i
                # rnn_row adds its second and third arguments: both biases
                rnn_row(&dl, at(G, layer, tag) + r * Hl, at(b_ih, layer, tag),
                        at(b_hh, layer, tag), at(ln_w, layer, tag),
                        at(ln_b, layer, tag),
                        at(xhat, layer, tag) + r * Hl if d.layer_norm else NULL,
                        at(rstd, layer, tag) + r if d.layer_norm else NULL,
                        at(Hs, layer, tag) + r * Hl,
                        at(S, layer, tag) + (lo + i) * Hl)
        # output layer: y_t = out_act(W_out h^L_t + b_out)
        Hl = <int> net.hidden[L - 1]
        rgemm(nb, n_out, Hl, at(Hs, L - 1, tag) + r0 * Hl, Hl, P_out, True,
              W_out, Hl, False, Y + r0 * n_out, n_out)
        for i in range(nb):
            r = r0 + i
            for j in range(n_out):
                Y[r * n_out + j] = Y[r * n_out + j] + b_out[j]
            output_row(net.out_kind, Y + r * n_out, n_out)
            for j in range(n_out):
                y_state[(lo + i) * n_out + j] = Y[r * n_out + j]


cdef void backward_block(Net* net, Dims* d, int lo, int hi,
                         const Py_ssize_t* bs, const Py_ssize_t* off,
                         const Py_ssize_t* t_stop, const Py_ssize_t* W_ih,
                         const Py_ssize_t* W_hh, const Py_ssize_t* ln_w,
                         const Py_ssize_t* drop, const Py_ssize_t* rmask,
                         const Py_ssize_t* Hs, const Py_ssize_t* xhat,
                         const Py_ssize_t* rstd, const Py_ssize_t* dF,
                         const Py_ssize_t* dG, const Py_ssize_t* dln_w,
                         const Py_ssize_t* dln_b, const floating* W_out,
                         const floating* Y, const floating* dZ_in,
                         floating* dZ, floating* work, int wstride) noexcept nogil:
    """``dF[l]`` holds, per sequence, dL/d(fed-back vector of layer l) coming
    from the next step: on entry w.r.t. the final states, on exit w.r.t. the
    initial ones. ``dln_w``/``dln_b`` point at this block's partial sums."""
    cdef int L = net.n_layers, n_out = net.n_out
    cdef int step, t, nb, i, j, layer, Hl, Fl, Il
    cdef Py_ssize_t r0, r, b
    cdef floating tag = 0
    cdef floating* dh = work                 # nb x H_l: dL/dh^l_t
    cdef floating* tmp = work + wstride      # nb x F_l
    cdef floating* carry
    cdef floating* mask
    cdef floating* dmask
    cdef floating* dGl
    cdef Dims dl = d[0]
    cdef Py_ssize_t lowest_stop = first_stop(t_stop, lo, hi)
    for step in range(d.n_steps):
        t = d.n_steps - 1 - step
        if t < lowest_stop:
            break
        nb = <int> (min(<Py_ssize_t> hi, bs[t]) - lo)
        if nb <= 0:
            continue
        r0 = off[t] + lo
        # output layer: the loss gradient plus the feedback into step t+1
        carry = at(dF, L - 1, tag)
        for i in range(nb):
            r = r0 + i
            b = lo + i
            if t_stop != NULL and t < t_stop[b]:
                # truncated: nothing flows into this sequence's step t, so
                # with zero carries every gradient below comes out zero
                for layer in range(L):
                    for j in range(<int> net.fed[layer]):
                        at(dF, layer, tag)[b * net.fed[layer] + j] = 0
                for j in range(n_out):
                    dZ[r * n_out + j] = 0
                continue
            for j in range(n_out):
                dZ[r * n_out + j] = dZ_in[r * n_out + j]
            output_row_back(net.out_kind, Y + r * n_out, carry + b * n_out,
                            dZ + r * n_out, n_out)
        Hl = <int> net.hidden[L - 1]
        gemm(False, False, nb, Hl, n_out, <floating> 1, dZ + r0 * n_out, n_out,
             W_out, Hl, <floating> 0, dh, Hl)
        for layer in range(L - 1, -1, -1):
            Hl = <int> net.hidden[layer]
            Fl = <int> net.fed[layer]
            dl.hidden = Hl
            if layer >= 1:
                # h^l_t also feeds layer l-1 at step t+1
                carry = at(dF, layer - 1, tag)
                for i in range(nb * Hl):
                    dh[i] += carry[lo * Hl + i]
            dGl = at(dG, layer, tag)
            for i in range(nb):
                r = r0 + i
                rnn_row_back(&dl, at(Hs, layer, tag) + r * Hl, at(ln_w, layer, tag),
                             at(xhat, layer, tag) + r * Hl if d.layer_norm else NULL,
                             at(rstd, layer, tag)[r] if d.layer_norm else 0,
                             dh + i * Hl, dGl + r * Hl,
                             at(dln_w, layer, tag), at(dln_b, layer, tag))
            # into the fed-back vector of step t-1
            gemm(False, False, nb, Fl, Hl, <floating> 1, dGl + r0 * Hl, Hl,
                 at(W_hh, layer, tag), Fl, <floating> 0, tmp, Fl)
            mask = at(rmask, layer, tag)
            carry = at(dF, layer, tag)
            for i in range(nb):
                b = lo + i
                for j in range(Fl):
                    if mask != NULL:
                        carry[b * Fl + j] = tmp[i * Fl + j] * mask[b * Fl + j]
                    else:
                        carry[b * Fl + j] = tmp[i * Fl + j]
            if layer >= 1:
                # into the input of this layer, h^{l-1}_t
                Il = <int> net.hidden[layer - 1]
                gemm(False, False, nb, Il, Hl, <floating> 1, dGl + r0 * Hl, Hl,
                     at(W_ih, layer, tag), Il, <floating> 0, dh, Il)
                dmask = at(drop, layer, tag)
                if dmask != NULL:
                    for i in range(nb * Il):
                        dh[i] = dh[i] * dmask[r0 * Il + i]


def forward_pack_length(int n_input, const Py_ssize_t[::1] hidden,
                        const Py_ssize_t[::1] fed, int n_out, int itemsize):
    """Length of the ``wpack`` buffer of ``jordan_forward``: every layer's
    ``W_ih`` and ``W_hh`` and the output weights, in the panels of
    ``pyx_rnn/_pgemm.h``."""
    cdef Py_ssize_t n = sr_pack_length(n_out, hidden[hidden.shape[0] - 1], itemsize)
    cdef int layer
    for layer in range(hidden.shape[0]):
        n += sr_pack_length(hidden[layer],
                            n_input if layer == 0 else hidden[layer - 1], itemsize)
        n += sr_pack_length(hidden[layer], fed[layer], itemsize)
    return n


def jordan_forward(int activation, int out_kind, bint layer_norm,
                   const Py_ssize_t[::1] batch_sizes,
                   const Py_ssize_t[::1] offsets,
                   const Py_ssize_t[::1] hidden, const Py_ssize_t[::1] fed,
                   const Py_ssize_t[::1] W_ih, const Py_ssize_t[::1] W_hh,
                   const Py_ssize_t[::1] b_ih, const Py_ssize_t[::1] b_hh,
                   const Py_ssize_t[::1] ln_w, const Py_ssize_t[::1] ln_b,
                   const Py_ssize_t[::1] drop, const Py_ssize_t[::1] rmask,
                   const Py_ssize_t[::1] S, const Py_ssize_t[::1] G,
                   const Py_ssize_t[::1] Hs, const Py_ssize_t[::1] Xin,
                   const Py_ssize_t[::1] Fprev, const Py_ssize_t[::1] xhat,
                   const Py_ssize_t[::1] rstd, floating[:, ::1] W_out,
                   floating[::1] b_out, floating[:, ::1] y_state,
                   floating[:, ::1] Y, int n_input, floating[::1] wpack,
                   int block_rows, int n_threads):
    """Forward pass of a Jordan stack and its output layer over a packed batch.

    With ``Xin[0]`` (the packed input, ``n_input`` features) the kernel
    computes ``W_ih x`` itself, step by step; without it, ``G[0]`` holds
    ``W_ih x`` of every row on entry (no bias). Every product packs its
    weights once into ``wpack`` (``forward_pack_length`` elements), so that a
    sequence's outputs are bitwise the same whichever sequences share its
    block, as in ``_cells``. ``S[l]`` and
    ``y_state`` hold the initial hidden states and output on entry (only
    ``S[1:]`` and ``y_state`` are read: they are the vectors fed back at
    ``t = -1``) and the final ones on exit. ``Hs``, ``Xin`` (layers >= 1),
    ``Fprev``, ``xhat``, ``rstd`` and ``Y`` are filled.
    """
    cdef int n_steps = batch_sizes.shape[0]
    cdef int B = <int> batch_sizes[0] if n_steps > 0 else 0
    cdef Net net
    net.n_layers = hidden.shape[0]
    net.n_input = n_input
    net.n_out = Y.shape[1]
    net.out_kind = out_kind
    net.hidden = &hidden[0]
    net.fed = &fed[0]
    cdef Dims d = make_dims(RNN, activation, False, True, layer_norm, False,
                            False, n_steps, 0)
    cdef int n_blocks = (B + block_rows - 1) // block_rows
    cdef int k, lo, hi, layer, Il
    cdef floating* pWo = ptr2(W_out)
    cdef floating* pbo = &b_out[0]
    # the packed weights: P_ih[l], P_hh[l] and P_out are addresses in wpack
    cdef Py_ssize_t[::1] P_ih = np.zeros(net.n_layers, np.intp)
    cdef Py_ssize_t[::1] P_hh = np.zeros(net.n_layers, np.intp)
    cdef floating* p = &wpack[0]
    for layer in range(net.n_layers):
        Il = n_input if layer == 0 else <int> hidden[layer - 1]
        if layer > 0 or Xin[0] != 0:
            pack_b(True, Il, <int> hidden[layer], <floating*> W_ih[layer], Il, p)
            P_ih[layer] = <Py_ssize_t> p
        p += sr_pack_length(hidden[layer], Il, sizeof(floating))
        pack_b(True, <int> fed[layer], <int> hidden[layer],
               <floating*> W_hh[layer], <int> fed[layer], p)
        P_hh[layer] = <Py_ssize_t> p
        p += sr_pack_length(hidden[layer], fed[layer], sizeof(floating))
    cdef floating* pPo = p
    pack_b(True, <int> W_out.shape[1], net.n_out, pWo, <int> W_out.shape[1], pPo)
    cdef floating* pys = ptr2(y_state)
    cdef floating* pY = ptr2(Y)
    for k in prange(n_blocks, nogil=True, schedule="dynamic",
                    num_threads=min(n_threads, n_blocks)):
        lo = k * block_rows
        hi = min(lo + block_rows, B)
        forward_block(&net, &d, lo, hi, &batch_sizes[0], &offsets[0],
                      &W_ih[0], &W_hh[0], &b_ih[0], &b_hh[0], &ln_w[0],
                      &ln_b[0], &drop[0], &rmask[0], &S[0], &G[0], &Hs[0],
                      &Xin[0], &Fprev[0], &xhat[0], &rstd[0], pWo, pbo, pys,
                      pY, &P_ih[0], &P_hh[0], pPo)


def jordan_backward(int activation, int out_kind, bint layer_norm,
                    const Py_ssize_t[::1] batch_sizes,
                    const Py_ssize_t[::1] offsets,
                    const Py_ssize_t[::1] t_stop,
                    const Py_ssize_t[::1] hidden, const Py_ssize_t[::1] fed,
                    const Py_ssize_t[::1] W_ih, const Py_ssize_t[::1] W_hh,
                    const Py_ssize_t[::1] ln_w, const Py_ssize_t[::1] drop,
                    const Py_ssize_t[::1] rmask, const Py_ssize_t[::1] Hs,
                    const Py_ssize_t[::1] xhat, const Py_ssize_t[::1] rstd,
                    const Py_ssize_t[::1] dF, const Py_ssize_t[::1] dG,
                    const Py_ssize_t[:, ::1] dln_w,
                    const Py_ssize_t[:, ::1] dln_b, floating[:, ::1] W_out,
                    floating[:, ::1] Y, floating[:, ::1] dZ_in,
                    floating[:, ::1] dZ, floating[:, ::1] work,
                    int block_rows, int n_threads):
    """Back-propagate through a Jordan stack and its output layer.

    ``dZ_in`` is dL/dz (output pre-activation) from the loss at every row;
    ``dZ`` receives the total, feedback included. ``dG[l]`` receives dL/d(pre-
    activation) of layer ``l`` at every row, for the weight gradients.
    ``dF[l]`` holds dL/d(final fed-back vectors) on entry and dL/d(initial
    ones) on exit. ``dln_w``/``dln_b`` hold, per block and layer, the address
    of a zeroed partial-sum buffer. ``work`` has shape ``(n_blocks, 2 *
    block_rows * max_size)``. ``t_stop`` (one entry per sequence, or empty)
    cuts the gradient of sequence ``b`` before step ``t_stop[b]``.
    """
    cdef int n_steps = batch_sizes.shape[0]
    cdef int B = <int> batch_sizes[0] if n_steps > 0 else 0
    cdef Net net
    net.n_layers = hidden.shape[0]
    net.n_out = Y.shape[1]
    net.out_kind = out_kind
    net.hidden = &hidden[0]
    net.fed = &fed[0]
    cdef Dims d = make_dims(RNN, activation, False, True, layer_norm, False,
                            False, n_steps, 0)
    cdef int n_blocks = (B + block_rows - 1) // block_rows
    cdef int k, lo, hi
    cdef int wstride = <int> (work.shape[1] // 2)
    cdef floating* pWo = ptr2(W_out)
    cdef floating* pY = ptr2(Y)
    cdef floating* pdZi = ptr2(dZ_in)
    cdef floating* pdZ = ptr2(dZ)
    cdef floating* pwork = ptr2(work)
    cdef const Py_ssize_t* pstop = &t_stop[0] if t_stop.shape[0] > 0 else NULL
    for k in prange(n_blocks, nogil=True, schedule="dynamic",
                    num_threads=min(n_threads, n_blocks)):
        lo = k * block_rows
        hi = min(lo + block_rows, B)
        backward_block(&net, &d, lo, hi, &batch_sizes[0], &offsets[0], pstop,
                       &W_ih[0], &W_hh[0], &ln_w[0], &drop[0], &rmask[0],
                       &Hs[0], &xhat[0], &rstd[0], &dF[0], &dG[0],
                       &dln_w[k, 0], &dln_b[k, 0], pWo, pY, pdZi, pdZ,
                       pwork + k * work.shape[1], wstride)
