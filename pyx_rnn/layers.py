"""One recurrent layer in one direction: allocation around the compiled kernels.

``layer_forward`` and ``layer_backward`` (and their Jordan counterparts) take
NumPy arrays, allocate the buffers the kernels fill, and return arrays. Every
argument is checked first (``pyx_rnn._checks``): a bad shape, dtype or value
raises a ValueError or TypeError before any compiled code runs. (``Network``
calls ``_layer_forward`` and ``_layer_backward``, which skip the checks,
after checking the same things itself once per call for all its layers.)
"""

import math
from dataclasses import dataclass

import numpy as np

from . import _cells, _checks, _dense, _jordan
from .packing import SequenceInput, rows_from
from .tokens import TokenInput

CELLS = {"rnn": _cells.CELL_RNN, "lstm": _cells.CELL_LSTM, "gru": _cells.CELL_GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3, "jordan": 1}
ACTIVATIONS = {"tanh": _cells.ACT_TANH, "relu": _cells.ACT_RELU}

_EMPTY = {}
_EMPTY_STARTS = np.empty(0, dtype=np.intp)


def default_block_rows(batch_sizes, cut_by_steps=True):
    """Sequences per parallel block, from a packing's ``batch_sizes``: a
    function of the packing only, so that results do not depend on the
    thread count. Two blocks for batches up to 128 sequences, blocks of 64
    beyond. Fewer rows per block make the product's tiles smaller, and where
    the recurrent product is a BLAS call (above 512 units), that call packs
    the whole recurrent weight matrix for each block and step. Where lengths
    differ, the rnn's, lstm's and gru's blocks are as many but cut by their
    steps (``default_block_starts``); without ``cut_by_steps`` (Jordan
    networks, whose kernels take blocks of ``block_rows`` consecutive
    sequences) they are a quarter of the batch instead (16 to 64
    sequences), taken in turn by whichever thread is free, which evens
    the work out on average (``benchmarks/OPTIMISATIONS.md``, session 15)."""
    B = int(batch_sizes[0])
    if cut_by_steps or int(batch_sizes[-1]) == B:
        return int(min(64, max(16, -(-B // 2))))
    return int(min(64, max(16, -(-B // 4))))


def default_block_starts(batch_sizes, block_rows):
    """Where the blocks of a packed batch start when the caller does not
    choose ``block_rows`` (see ``block_cut``): for lengths that differ, as
    many blocks as ``block_rows`` makes, ``ceil(B / block_rows)``, each
    holding about the same number of steps (``_cells.share_out_steps``)
    rather than of sequences, so that threads given one block each finish
    together; an empty array for equal lengths, whose blocks stay those of
    ``block_rows``. A function of the packing only: results do not depend on
    the thread count.

    A packing puts the longest sequences first: two blocks of 16 of a batch
    of 32 sequences of 10 to 50 steps put a third more steps in the first
    than half the batch's, and the second thread waited for the first; cut
    by steps, they hold about 11 and 21 sequences. Session 15 had evened the
    work out with blocks of a quarter of the batch instead, taken by
    whichever thread is free; the benchmark's variable-length training
    batches took 12% less time on two threads with two blocks cut by steps
    (LSTM, 32 units), 4-5% less with 128 (LSTM, GRU), 2% less (Elman) and
    as long with 512 (``benchmarks/OPTIMISATIONS.md``, session 17)."""
    B = int(batch_sizes[0]) if len(batch_sizes) else 0
    n_blocks = -(-B // block_rows)
    if n_blocks < 2 or int(batch_sizes[-1]) == B:
        return _EMPTY_STARTS
    starts = np.empty(n_blocks + 1, np.intp)
    _cells.share_out_steps(batch_sizes, starts)
    return starts


def block_cut(batch_sizes, block_rows=None):
    """``(block_rows, block_starts)`` for the kernels of a layer of the rnn,
    lstm or gru: ``block_rows`` as given, in blocks of that many sequences
    (``block_starts`` empty); else ``default_block_rows`` and
    ``default_block_starts``."""
    if block_rows is not None:
        return block_rows, _EMPTY_STARTS
    block_rows = default_block_rows(batch_sizes)
    return block_rows, default_block_starts(batch_sizes, block_rows)


#: How the per-step recurrent product ``h_{t-1} @ W_hh.T`` (and its transpose
#: in the backward pass) is computed: "packed" (``pyx_rnn/_pgemm.h``: W_hh is
#: packed once per layer call and every row is summed in a fixed order,
#: whatever the other rows of its block), "blas" (one BLAS call per block and
#: step), or "auto" (packed where it is measured to be faster).
RECURRENT_PRODUCT = "auto"


def use_packed_product(spec, block_rows, backward):
    """Whether the recurrent product of this layer uses the packed kernel;
    depends only on the sizes, never on the thread count.

    Measured (benchmarks/OPTIMISATIONS.md): the packed kernel is faster in
    both passes from 5 to 512 hidden units at blocks of up to 64 rows, and in
    the backward pass at 1024 units; BLAS's cache blocking wins the forward
    product from about 1024 units or 256-row blocks.
    """
    if RECURRENT_PRODUCT != "auto":
        return RECURRENT_PRODUCT == "packed"
    return backward or (spec.hidden <= 512 and block_rows <= 128)


#: Largest weight-gradient partial sum, ``(n_input + hidden) x gates *
#: hidden`` elements, that the backward kernel accumulates block by block and
#: step by step (see ``fused_weight_gradients``).
FUSED_WEIGHT_GRADIENT_BYTES = 1 << 20

#: Bytes of that partial sum per sequence of a block, at most: a block's
#: step reads and writes its whole partial sum to add the outer product of
#: its few rows (see ``fused_weight_gradients``).
FUSED_BYTES_PER_ROW = 48 << 10


def fused_weight_gradients(spec, itemsize, rows):
    """Whether the backward kernel accumulates the weight gradients itself:
    each block of sequences sums ``Hprev.T @ dG`` (and ``X.T @ dG``) over its
    rows step by step, while they are in cache, into a partial sum of its
    own, and the partial sums are added in block order afterwards; ``rows``
    is the number of sequences of a block, ``min(B, block_rows)``. Depends
    only on the sizes and the batch, never on the thread count. Measured
    (benchmarks/OPTIMISATIONS.md): faster than one product over all the rows
    afterwards while the partial sum fits in a core's L2 cache; beyond that
    BLAS's cache blocking wins. And faster only where a block has enough
    rows for the partial sum it reads and writes at every step (at most
    ``FUSED_BYTES_PER_ROW`` a row, session 24): a 128-unit LSTM (320 KB
    of partial sum) trained on one sequence of 100 steps in 671 µs rather
    than 1481 with one product afterwards, on 4 in 1115 rather than 1485,
    on 8 in about the same time, on 16 or more faster fused; a 32-unit one
    (17 KB) is faster fused from one sequence."""
    n = (spec.n_input + spec.hidden) * spec.gates * spec.hidden * itemsize
    return n <= FUSED_WEIGHT_GRADIENT_BYTES and n <= FUSED_BYTES_PER_ROW * rows


def _wpack(spec, block_rows, dtype, pool, backward):
    """The buffer the kernels pack W_hh into (empty: BLAS products)."""
    if not use_packed_product(spec, block_rows, backward):
        return _empty(dtype, 1)
    n = _cells.recurrent_pack_length(CELLS[spec.cell], spec.reset_after,
                                     spec.hidden, np.dtype(dtype).itemsize,
                                     backward)
    return _take(pool, "wpack_b" if backward else "wpack", (n,), dtype)


@dataclass(frozen=True)
class LayerSpec:
    """Static description of one layer in one direction."""

    cell: str
    n_input: int
    hidden: int
    activation: str = "tanh"
    reverse: bool = False
    reset_after: bool = True
    peephole: bool = False
    layer_norm: bool = False

    @property
    def gates(self):
        return GATES[self.cell]

    def shapes(self):
        """Parameter names (PyTorch's, without the layer suffix) and shapes."""
        gh = self.gates * self.hidden
        shapes = {
            "weight_ih": (gh, self.n_input),
            "weight_hh": (gh, self.hidden),
            "bias_ih": (gh,),
            "bias_hh": (gh,),
        }
        if self.peephole:
            shapes["peephole"] = (3 * self.hidden,)
        if self.layer_norm:
            shapes["ln_weight"] = (gh,)
            shapes["ln_bias"] = (gh,)
        return shapes


@dataclass
class LayerCache:
    """What the forward pass keeps for the backward pass (``aux``: the GRU's
    ``a_n`` or ``r * m * h``, the LSTM's ``tanh(c_t)``; see
    ``_cells.recurrent_forward``)."""

    X: np.ndarray
    G: np.ndarray
    H: np.ndarray
    C: np.ndarray
    Hprev: np.ndarray
    aux: np.ndarray
    xhat: np.ndarray
    rstd: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    mask: np.ndarray
    batch_sizes: np.ndarray
    offsets: np.ndarray
    block_rows: int
    block_starts: np.ndarray


def _empty(dtype, ndim=2):
    """A zero-size array, for the kernels' arguments a call does not use
    (one per type and rank, shared: it has no element to write)."""
    key = (dtype, ndim)
    a = _EMPTY.get(key)
    if a is None:
        a = _EMPTY[key] = np.empty((0,) * ndim, dtype=dtype)
    return a


def _aligned(shape, dtype, zero=False):
    """A new C-contiguous array whose data start on a 64-byte boundary (a
    cache line). The kernels' threads write neighbouring rows of the same
    arrays at every step; with rows of whole cache lines, two threads never
    write to one line (NumPy aligns to 16 bytes only)."""
    dtype = np.dtype(dtype)
    size, line = math.prod(shape), 64 // dtype.itemsize
    raw = (np.zeros if zero else np.empty)(size + line, dtype)
    start = -_dense.data_address(raw.view(np.uint8)) % 64 // dtype.itemsize
    return raw[start:start + size].reshape(shape)


def _aligned_pair(shape, dtype):
    """Two new zeroed arrays as ``_aligned`` makes them (an LSTM's states),
    from one allocation."""
    dtype = np.dtype(dtype)
    size, line = math.prod(shape), 64 // dtype.itemsize
    stride = -(-size // line) * line
    both = _aligned((2 * stride,), dtype, zero=True)
    return both[:size].reshape(shape), both[stride:stride + size].reshape(shape)


def _take(pool, key, shape, dtype, zero=False):
    """A buffer of the given shape (aligned, see ``_aligned``): the start of
    the one ``pool`` (a dict) holds under ``key`` when that one is large
    enough, else a new one, kept there. Reuse saves the page faults of fresh
    large allocations at every batch, also when batches differ in size (the
    rows of variable-length batches); callers must not keep two live
    buffers under one key."""
    shape = tuple(map(int, shape))
    if pool is None:
        return _aligned(shape, dtype, zero)
    size = math.prod(shape)
    a = pool.get(key)
    if a is None or a.dtype != dtype or a.size < size:
        a = pool[key] = _aligned((size,), dtype)
    a = a.reshape(-1)[:size].reshape(shape)
    if zero:
        a.fill(0)
    return a


def _param(w, name, dtype, ndim=1):
    return w[name] if name in w else _empty(dtype, ndim)


def _input_product(X, w_ih, G, n_threads):
    """``G = X @ w_ih.T``; for token input (a ``TokenInput``: weighted one-hot
    rows) a gather of the rows of ``w_ih.T``, the same product."""
    if isinstance(X, TokenInput):
        _dense.gather_rows(X.ids, X.weights, np.ascontiguousarray(w_ih.T), G,
                           n_threads)
    else:
        _dense.matmul(X, w_ih, G, True, 0.0, n_threads)


def _accumulate_input_grad(dG, X, g_ih, n_threads, work=None):
    """``g_ih += dG.T @ X``; for token input a scatter-add of the rows of
    ``dG`` into the rows of ``g_ih.T`` (same order, deterministic). ``work``
    is ``accumulate_outer``'s."""
    if isinstance(X, TokenInput):
        dWT = np.zeros((g_ih.shape[1], g_ih.shape[0]), g_ih.dtype)
        _dense.scatter_add_rows(X.ids, X.weights, np.ascontiguousarray(dG), dWT)
        g_ih += dWT.T
    else:
        _dense.accumulate_outer(dG, X, g_ih, n_threads, work)


def _weight_grads_after(spec, cache, dG, dGh, first, grads, n_threads, pool):
    """The weight gradients of a layer too large for the kernel's partial
    sums (``fused_weight_gradients``): products over the rows ``first:`` of
    the batch (those the kernel visited), after the backward kernel."""
    H = spec.hidden
    dG, dGh = dG[first:], dGh[first:]
    outer = _take(pool, "outer", (_dense.outer_work_size(
        spec.n_input, H, dG.itemsize, n_threads),), dG.dtype)
    Hprev = cache.Hprev[first:]
    if spec.cell != "gru" and not isinstance(cache.X, TokenInput):
        # both weight gradients from one product (dGh is dG): dG is read once
        _dense.accumulate_outer2(dG, cache.X[first:], Hprev, grads["weight_ih"],
                                 grads["weight_hh"], n_threads, outer)
        return
    _accumulate_input_grad(dG, cache.X[first:], grads["weight_ih"], n_threads,
                           outer)
    if spec.cell == "gru" and not spec.reset_after:
        # the candidate's recurrent product reads r * m * h, kept in aux
        _dense.accumulate_outer(dGh[:, : 2 * H], Hprev, grads["weight_hh"][: 2 * H],
                                n_threads, outer)
        _dense.accumulate_outer(dGh[:, 2 * H:], cache.aux[first:],
                                grads["weight_hh"][2 * H:], n_threads, outer)
    else:
        _dense.accumulate_outer(dGh, Hprev, grads["weight_hh"], n_threads, outer)


def _stops(t_stop, offsets, n_sequences):
    """Per-sequence truncation steps for the kernels (empty: none), and the
    first packed row the weight gradients need. A scalar applies to all."""
    if t_stop is None:
        return np.empty(0, np.intp), 0
    stops = np.ascontiguousarray(
        np.broadcast_to(np.asarray(t_stop, dtype=np.intp), (n_sequences,)))
    lowest = int(stops.min())
    return stops, int(offsets[min(max(lowest, 0), len(offsets) - 1)])


def layer_forward(spec, w, X, batch_sizes, offsets, h0=None, c0=None,
                  mask=None, *, n_threads=1, block_rows=None, pool=None,
                  keep_cache=True):
    """Forward pass of one layer over a packed batch.

    Parameters
    ----------
    spec : LayerSpec
    w : dict of ndarray
        Parameters by the names of ``spec.shapes()``.
    X : ndarray of shape (n_rows, n_input) or TokenInput
        Packed input; a ``TokenInput`` (ids below ``spec.n_input``, weights
        of the parameters' dtype) stands for its weighted one-hot rows.
    batch_sizes, offsets : ndarray of intp
        The packing (see ``pyx_rnn.packing.Packing``).
    h0, c0 : ndarray of shape (n_sequences, hidden), optional
        Initial states (zeros by default); ``c0`` is for the LSTM only.
    mask : ndarray of shape (n_sequences, hidden), optional
        Recurrent-dropout mask.
    pool : dict, optional
        Buffers to reuse from call to call (see ``_take``); the returned
        arrays then live in it until the next call with the same pool. It
        also records which buffers a call used, for the next call of the
        same layer and sizes.
    keep_cache : bool
        False for inference: what only the backward pass needs (the previous
        states, the cell states) is not stored, and ``cache`` is None.

    Returns
    -------
    H : ndarray of shape (n_rows, hidden)
        Hidden state at every row.
    h_n, c_n : ndarray of shape (n_sequences, hidden)
        State after the last step of every sequence (``c_n`` is empty except
        for the LSTM).
    cache : LayerCache or None
    """
    X, batch_sizes, offsets, h0, c0, mask = _checks.check_layer_forward_args(
        spec, w, X, batch_sizes, offsets, h0, c0, mask, n_threads=n_threads,
        block_rows=block_rows, pool=pool, keep_cache=keep_cache)
    return _layer_forward(spec, w, X, batch_sizes, offsets, h0, c0, mask,
                          n_threads, block_rows, pool, keep_cache)


def _plan(pool, name, kind, spec, key, n_rows):
    """The plan (``_ForwardPlan`` or ``_BackwardPlan``) kept in ``pool``
    under ``name`` if it was made for ``key`` and at least ``n_rows`` rows
    (a call binds the first ``n_rows`` of its buffers of rows), else a new
    one, kept there for the next call: variable-length batches, whose row
    counts differ, share one plan."""
    plan = None if pool is None else pool.get(name)
    if plan is None or plan.key != key or plan.n_rows < n_rows:
        plan = kind(spec, key, n_rows, pool)
        if pool is not None:
            pool[name] = plan
    return plan


class _ForwardPlan:
    """The buffers and fixed kernel arguments of ``_layer_forward`` for calls
    of one layer and shape (``key``), up to ``n_rows`` rows, kept in the pool
    (``"forward_plan"``): a call then only puts in its own arrays (``SLOTS``)
    and the first rows of the buffers of rows (``ROWS``), rather than
    finding a dozen buffers again. The buffers are the pool's own
    (``_take``), the ones it would give."""

    # positions of the per-call arguments of _cells.recurrent_forward
    SLOTS = dict(batch_sizes=6, offsets=7, X=8, x_starts=9, W_ih=11, b_ih=12,
                 W_hh=16, b_hh=17, peep=18, ln_w=19, ln_b=20, mask=21, h=22,
                 c=23, n_threads=33, block_starts=34)
    # positions of the buffers of one row per packed row (G, H, C, Hprev,
    # aux, xhat, rstd), empty where the call keeps none
    ROWS = (14, 24, 25, 26, 27, 28, 29)

    def __init__(self, spec, key, n_rows, pool):
        (_, dtype, B, block_rows, keep_cache, unmasked, tokens, in_place,
         keep_outputs) = key
        self.key, self.spec, self.dtype, self.n_rows = key, spec, dtype, n_rows
        H_, gh = spec.hidden, spec.gates * spec.hidden
        n_blocks = -(-B // block_rows)
        lstm, gru = spec.cell == "lstm", spec.cell == "gru"
        # The input projection is computed by the kernel, step by step, when
        # the recurrent product is packed (the same micro-kernel); token input
        # is gathered over all steps first.
        self.fuse_input = fuse = (not tokens
                                  and use_packed_product(spec, block_rows, False))
        # a SequenceInput is read in place by a kernel that reads its input
        # and keeps no cache of it (else it is packed first)
        self.in_place = in_place = in_place and fuse and not keep_cache
        # each block's gathered input rows of a step
        x_rows = (_take(pool, "x_rows", (n_blocks, block_rows * spec.n_input), dtype)
                  if in_place else _empty(dtype))
        # the rnn and the lstm add both biases to the gates in one pass (the
        # GRU's candidate needs them apart): their sum, made at every call
        self.bias_sum = (_take(pool, "bias_sum", (gh,), dtype)
                         if fuse and not gru else None)
        if fuse:
            wpack_ih = _take(pool, "wpack_ih", (_cells.input_pack_length(
                CELLS[spec.cell], spec.n_input, H_, np.dtype(dtype).itemsize),),
                dtype)
            G = _take(pool, "G", (n_rows, gh), dtype) if keep_cache else _empty(dtype)
            G_block = (_empty(dtype) if keep_cache
                       else _take(pool, "G_block", (n_blocks, block_rows * gh), dtype))
        else:
            wpack_ih, G_block = _empty(dtype, 1), _empty(dtype)
            G = _take(pool, "G", (n_rows, gh), dtype)
        C = (_take(pool, "C", (n_rows, H_), dtype) if lstm and keep_cache
             else _empty(dtype))
        # the gru's work holds its recurrent product: it keeps its outputs
        H = (_take(pool, "H", (n_rows, H_), dtype)
             if keep_outputs or keep_cache or gru else _empty(dtype))
        Hprev = (_take(pool, "Hprev", (n_rows, H_), dtype)
                 if keep_cache or not unmasked else _empty(dtype))
        # the GRU's a_n or r * m * h; the LSTM's tanh(c_t), for the backward
        # pass
        aux = (_take(pool, "aux", (n_rows, H_), dtype)
               if gru or (lstm and keep_cache) else _empty(dtype))
        if spec.layer_norm:
            xhat = _take(pool, "xhat", (n_rows, gh), dtype)
            rstd = _take(pool, "rstd", (n_rows, spec.gates), dtype)
        else:
            xhat = rstd = _empty(dtype)
        work = _take(pool, "work", (n_blocks, block_rows * gh), dtype)
        # the rnn and the lstm pack W_hh into wpack_ih, below W_ih
        wpack = (_wpack(spec, block_rows, dtype, pool, False)
                 if not fuse or gru else _empty(dtype, 1))
        # the parameters the spec has not: empty
        peep = None if spec.peephole else _empty(dtype, 1)
        ln = None if spec.layer_norm else _empty(dtype, 1)
        self.args = [
            CELLS[spec.cell], ACTIVATIONS[spec.activation], spec.reverse,
            spec.reset_after, spec.layer_norm, spec.peephole, None, None,
            None, _EMPTY_STARTS, x_rows, None, None, wpack_ih, G, G_block,
            None, None, peep, ln, ln, None, None, None, H, C, Hprev, aux,
            xhat, rstd, work, wpack, block_rows, None, None]

    def bind(self, w, batch_sizes, offsets, n_threads, block_starts=_EMPTY_STARTS,
             whole=False):
        """The kernel's arguments for a call with these parameters (``w``),
        packing, thread count and cut of the batch (``block_cut``'s
        ``block_starts``): a new list, whose input (``X`` empty,
        ``x_starts`` empty), mask and states are still to be put in
        (``SLOTS``), and whose buffers of rows (``ROWS``, see ``rows``) are
        the first rows of the plan's, one per row of the packing (all of
        them with ``whole``: for ``_cells.ForwardArgs`` that calls on other
        packings will use). The biases are read from ``bias_sum`` where the
        plan has one: see ``add_biases``."""
        args, at = self.args.copy(), self.SLOTS
        spec, dtype = self.spec, self.dtype
        n_rows = int(offsets[-1])
        if n_rows < self.n_rows and not whole:
            for i in self.ROWS:
                if len(args[i]):
                    args[i] = args[i][:n_rows]
        args[at["batch_sizes"]], args[at["offsets"]] = batch_sizes, offsets
        args[at["X"]], args[at["W_ih"]] = _empty(dtype), w["weight_ih"]
        args[at["W_hh"]] = w["weight_hh"]
        if self.bias_sum is not None:
            args[at["b_ih"]], args[at["b_hh"]] = _empty(dtype, 1), self.bias_sum
        elif self.fuse_input:
            args[at["b_ih"]], args[at["b_hh"]] = w["bias_ih"], w["bias_hh"]
        else:
            # the input projection and its bias are in G on entry
            args[at["b_ih"]], args[at["b_hh"]] = _empty(dtype, 1), w["bias_hh"]
        if spec.peephole:
            args[at["peep"]] = w["peephole"]
        if spec.layer_norm:
            args[at["ln_w"]], args[at["ln_b"]] = w["ln_weight"], w["ln_bias"]
        args[at["n_threads"]] = n_threads
        args[at["block_starts"]] = block_starts
        return args

    def ready(self, w, batch_sizes, offsets, n_threads, block_starts=_EMPTY_STARTS,
              whole=False, mask=None):
        """``bind``'s call made ready (``_cells.ForwardArgs``) for
        ``_cells.run_forward``, which supplies the input and the states;
        without a mask, or with ``mask`` (B x hidden, aligned), whose values
        the caller may change between calls. Returns it and its buffers of
        rows (see ``rows``)."""
        args = self.bind(w, batch_sizes, offsets, n_threads, block_starts, whole)
        for name in ("mask", "h", "c"):
            args[self.SLOTS[name]] = _empty(self.dtype)
        if mask is not None:
            args[self.SLOTS["mask"]] = mask
        return _cells.ForwardArgs(args), self.rows(args)

    @classmethod
    def rows(cls, args):
        """The buffers of rows of ``bind``'s arguments: ``G, H, C, Hprev, aux,
        xhat, rstd``."""
        return [args[i] for i in cls.ROWS]

    def add_biases(self, w):
        """Sum the two biases into ``bias_sum`` (the rnn's and the lstm's
        fused input product), from their current values: at every call."""
        if self.bias_sum is not None:
            np.add(w["bias_ih"], w["bias_hh"], out=self.bias_sum)

    def put_input(self, w, X, G, n_threads):
        """What a call puts in place before the kernel runs: where the
        kernel computes the input projection, the sum of the biases
        (``add_biases``); else the projection of the input ``X`` (token
        input) and its bias, in the rows ``G`` the kernel reads it from."""
        if self.fuse_input:
            self.add_biases(w)
        else:
            _input_product(X, w["weight_ih"], G, n_threads)
            G += w["bias_ih"]


def _new_states(spec, B, dtype, h0=None, c0=None):
    """New states ``h`` and ``c`` (empty but for the LSTM) of B sequences,
    as the kernels update them in place: aligned (see ``_aligned``), and
    zero or a copy of the initial states ``h0`` and ``c0`` (the LSTM's
    only) where given."""
    if spec.cell == "lstm":
        h, c = _aligned_pair((B, spec.hidden), dtype)
        if c0 is not None:
            c[...] = c0
    else:
        h, c = _aligned((B, spec.hidden), dtype, zero=True), _empty(dtype)
    if h0 is not None:
        h[...] = h0
    return h, c


def _layer_forward(spec, w, X, batch_sizes, offsets, h0, c0, mask, n_threads,
                   block_rows, pool, keep_cache, keep_outputs=True):
    """``layer_forward`` on arguments already checked: by
    ``check_layer_forward_args``, or by ``Network`` once per call for all its
    layers (see ``Network._layer_args_checked``). Without ``keep_outputs``
    (inference only) the rnn and the lstm keep no outputs: the first value
    returned is then empty, and the outputs at each sequence's last step are
    its final state."""
    dtype = w["weight_ih"].dtype
    B = int(batch_sizes[0])
    block_rows, block_starts = block_cut(batch_sizes, block_rows)
    in_place = isinstance(X, SequenceInput)
    plan = _plan(pool, "forward_plan", _ForwardPlan, spec, (
        spec, dtype, B, block_rows, keep_cache, mask is None,
        isinstance(X, TokenInput), in_place, keep_outputs), int(offsets[-1]))
    x_starts = _EMPTY_STARTS
    if plan.in_place:
        X, x_starts = X.data, X.starts
    elif in_place:
        X = X.data[rows_from(X.starts, batch_sizes, offsets)]
    args = plan.bind(w, batch_sizes, offsets, n_threads, block_starts)
    G, H, C, Hprev, aux, xhat, rstd = plan.rows(args)
    plan.put_input(w, X, G, n_threads)
    h, c = _new_states(spec, B, dtype, h0, c0)
    h0 = h.copy() if keep_cache else None
    if spec.cell == "lstm":
        c0 = c.copy() if keep_cache else None
    else:
        c0 = c
    mask = _empty(dtype) if mask is None else np.ascontiguousarray(mask, dtype)
    at = _ForwardPlan.SLOTS
    if plan.fuse_input:
        args[at["X"]], args[at["x_starts"]] = X, x_starts
    args[at["mask"]], args[at["h"]], args[at["c"]] = mask, h, c
    _cells.recurrent_forward(*args)
    if not keep_cache:
        return H, h, c, None
    cache = LayerCache(X, G, H, C, Hprev, aux, xhat, rstd, h0, c0, mask,
                       batch_sizes, offsets, block_rows, block_starts)
    return H, h, c, cache


def layer_backward(spec, w, grads, cache, dH, dh_n=None, dc_n=None, *,
                   t_stop=None, need_dx=True, n_threads=1, pool=None):
    """Backward pass of one layer; accumulates into ``grads``.

    Parameters
    ----------
    spec, w : as for ``layer_forward``.
    grads : dict of ndarray
        Gradient buffers, same names and shapes as ``w``; added to.
    cache : LayerCache
        From ``layer_forward``.
    dH : ndarray of shape (n_rows, hidden)
        dL/dH from above at every row.
    dh_n, dc_n : ndarray of shape (n_sequences, hidden), optional
        dL/d(final states).
    t_stop : int or ndarray of shape (n_sequences,), optional
        Truncated BPTT: the gradient of sequence ``b`` stops before step
        ``t_stop[b]`` (entries <= 0: not truncated). None: full BPTT.
    need_dx : bool
        Whether to compute dL/dX (not needed for the first layer; must be
        False for token input).
    pool : dict, optional
        Buffers to reuse (see ``layer_forward``); ``dX`` lives in it.

    Returns
    -------
    dX : ndarray of shape (n_rows, n_input) or None
    dh0, dc0 : ndarray of shape (n_sequences, hidden)
        dL/d(initial states); ``dc0`` is empty except for the LSTM.
    """
    dH, dh_n, dc_n = _checks.check_layer_backward_args(
        spec, w, grads, cache, dH, dh_n, dc_n, t_stop=t_stop, need_dx=need_dx,
        n_threads=n_threads, pool=pool)
    return _layer_backward(spec, w, grads, cache, dH, dh_n, dc_n, t_stop,
                           need_dx, n_threads, pool)


class _BackwardPlan:
    """The buffers of ``_layer_backward`` for calls of one layer and shape
    (``key``), up to ``n_rows`` rows, kept in the pool (``"backward_plan"``;
    see ``_ForwardPlan``): the gradients of the gates (a call takes its first
    rows), the kernel's scratch, and its partial sums of the parameters'
    gradients, one row per block of sequences (zeroed at every call)."""

    def __init__(self, spec, key, n_rows, pool):
        _, dtype, B, block_rows, tokens = key
        self.key, self.n_rows = key, n_rows
        H_, gh = spec.hidden, spec.gates * spec.hidden
        n_blocks = -(-B // block_rows)
        self.separate_dgh = spec.cell == "gru" and spec.reset_after
        self.dG = _take(pool, "dG", (n_rows, gh), dtype)
        self.dGh = (_take(pool, "dGh", (n_rows, gh), dtype) if self.separate_dgh
                    else self.dG)
        columns = _cells.backward_work_columns(
            CELLS[spec.cell], H_, block_rows, np.dtype(dtype).itemsize)
        self.work = _take(pool, "backward_work", (n_blocks, columns), dtype)
        self.wpack = _wpack(spec, block_rows, dtype, pool, True)
        self.fused = fused_weight_gradients(spec, np.dtype(dtype).itemsize,
                                            min(B, block_rows))
        if self.fused:
            columns = _cells.panel_columns(np.dtype(dtype).itemsize)
            self.edge = _take(pool, "edge", (n_blocks, block_rows * columns), dtype)
        else:
            self.edge = _empty(dtype)
        self.partials = []

        def partial(name, width, wanted=True):
            if not wanted:
                return _empty(dtype)
            a = _take(pool, name, (n_blocks, width), dtype)
            self.partials.append(a)
            return a
        self.dpeep = partial("dpeep", 3 * H_, spec.peephole)
        self.dln_w = partial("dln_w", gh, spec.layer_norm)
        self.dln_b = partial("dln_b", gh, spec.layer_norm)
        self.dbias_ih = partial("dbias_ih", gh)
        self.dbias_hh = partial("dbias_hh", gh, self.separate_dgh)
        self.dWhh_t = partial("dWhh_t", H_ * gh, self.fused)
        # token input: the input weight gradient is a scatter-add
        self.dWih_t = partial("dWih_t", spec.n_input * gh,
                              self.fused and not tokens)

    def args(self, spec, w, cache, X, dH, dh, dc, dG, dGh, stops, n_threads):
        """``_cells.recurrent_backward``'s arguments for a call on ``cache``
        (its packing, and its buffers of rows), with this plan's scratch and
        partial sums: ``X`` the packed input where the kernel sums the input
        weights' gradient (else empty), ``dH`` dL/dH from above, ``dh`` and
        ``dc`` dL/d(final states) (on exit, dL/d(initial states)), ``dG`` and
        ``dGh`` the gates' gradients, ``stops`` the truncation (``_stops``)."""
        dtype = cache.G.dtype
        return [
            CELLS[spec.cell], ACTIVATIONS[spec.activation], spec.reverse,
            spec.reset_after, spec.layer_norm, spec.peephole, cache.batch_sizes,
            cache.offsets, stops, cache.G, w["weight_hh"],
            _param(w, "peephole", dtype), _param(w, "ln_weight", dtype),
            cache.mask, cache.h0, cache.c0, cache.H, cache.C, cache.Hprev,
            cache.aux, cache.xhat, cache.rstd, dH, dh, dc, dG, dGh, self.dpeep,
            self.dln_w, self.dln_b, self.dbias_ih, self.dbias_hh, X,
            self.dWih_t, self.dWhh_t, self.edge, self.work, self.wpack,
            cache.block_rows, n_threads, cache.block_starts]

    def sum_calls(self, spec, grads, input_weights=True):
        """The ``_dense.add_block_sums`` calls, ``(parts, out,
        transposed)``, that add the kernel's partial sums per block to
        ``grads``, in this order (those of the weights transposed): the
        biases', and where the kernel sums the weights' gradients
        (``fused``), the recurrent weights' and, with ``input_weights``,
        the input weights'; then the peephole's and the layer norm's.
        Every partial sum is in one of them where ``input_weights``."""
        calls = [(self.dbias_ih, grads["bias_ih"], False),
                 (self.dbias_hh if self.separate_dgh else self.dbias_ih,
                  grads["bias_hh"], False)]
        if self.fused:
            calls.append((self.dWhh_t, grads["weight_hh"], True))
            if input_weights:
                calls.append((self.dWih_t, grads["weight_ih"], True))
        if spec.peephole:
            calls.append((self.dpeep, grads["peephole"], False))
        if spec.layer_norm:
            calls += [(self.dln_w, grads["ln_weight"], False),
                      (self.dln_b, grads["ln_bias"], False)]
        return calls

    def add_sums(self, spec, grads, input_weights=True):
        """Add the kernel's partial sums per block to ``grads``, in block
        order (see ``sum_calls``)."""
        _dense.BlockSums(self.sum_calls(spec, grads, input_weights)).add()


def _layer_backward(spec, w, grads, cache, dH, dh_n, dc_n, t_stop, need_dx,
                    n_threads, pool):
    """``layer_backward`` on arguments already checked (see
    ``_layer_forward``); ``dH`` may be a column slice."""
    dtype = cache.G.dtype
    n_rows = len(cache.X)
    B = cache.h0.shape[0]
    H_ = spec.hidden
    tokens = isinstance(cache.X, TokenInput)
    plan = _plan(pool, "backward_plan", _BackwardPlan, spec,
                 (spec, dtype, B, cache.block_rows, tokens), n_rows)
    for a in plan.partials:
        a.fill(0)
    stops, first = _stops(t_stop, cache.offsets, int(cache.batch_sizes[0]))
    dG = plan.dG[:n_rows]
    dGh = plan.dGh[:n_rows] if plan.separate_dgh else dG
    if stops.size > 0 and stops.max() > 0:
        # rows below a block's smallest stop are not written by the kernel
        dG.fill(0)
        if plan.separate_dgh:
            dGh.fill(0)
    dh = np.zeros((B, H_), dtype) if dh_n is None else np.array(dh_n, dtype, order="C")
    if spec.cell == "lstm":
        dc = (np.zeros((B, H_), dtype) if dc_n is None
              else np.array(dc_n, dtype, order="C"))
    else:
        dc = _empty(dtype)
    X_in = cache.X if plan.fused and not tokens else _empty(dtype)
    _cells.recurrent_backward(*plan.args(
        spec, w, cache, X_in, np.ascontiguousarray(dH, dtype), dh, dc, dG, dGh,
        stops, n_threads))
    plan.add_sums(spec, grads, input_weights=not tokens)
    if not plan.fused:
        _weight_grads_after(spec, cache, dG, dGh, first, grads, n_threads, pool)
    elif tokens:
        # the input weight gradient of token input is a scatter-add
        _accumulate_input_grad(dG[first:], cache.X[first:], grads["weight_ih"],
                               n_threads)
    dX = None
    if need_dx:
        dX = _take(pool, "dX", (n_rows, spec.n_input), dtype)
        _dense.matmul(dG, w["weight_ih"], dX, False, 0.0, n_threads)
    return dX, dh, dc


# --------------------------------------------------------------------------
# Jordan networks: the whole stack and its output layer in one recurrence
# --------------------------------------------------------------------------

OUTPUT_ACTIVATIONS = {"identity": 0, "tanh": 1, "sigmoid": 2, "softmax": 3}


@dataclass(frozen=True)
class JordanSpec:
    """Static description of a Jordan stack with its output layer."""

    n_input: int
    hidden: tuple
    n_output: int
    activation: str = "tanh"
    output_activation: str = "identity"
    layer_norm: bool = False

    @property
    def fed(self):
        """Size of the vector fed back into each layer."""
        return tuple(self.hidden[1:]) + (self.n_output,)

    def layer_shapes(self, k):
        n_in = self.n_input if k == 0 else self.hidden[k - 1]
        h = self.hidden[k]
        shapes = {
            "weight_ih": (h, n_in),
            "weight_hh": (h, self.fed[k]),
            "bias_ih": (h,),
            "bias_hh": (h,),
        }
        if self.layer_norm:
            shapes["ln_weight"] = (h,)
            shapes["ln_bias"] = (h,)
        return shapes


@dataclass
class JordanCache:
    X: np.ndarray
    Hs: list
    Xin: list
    Fprev: list
    xhat: list
    rstd: list
    Y: np.ndarray
    drop: list
    rmask: list
    batch_sizes: np.ndarray
    offsets: np.ndarray
    block_rows: int


def _addresses(arrays):
    """Addresses of the arrays' data (0 for None), for the Jordan kernels."""
    return np.array([0 if a is None else a.ctypes.data for a in arrays],
                    dtype=np.intp)


def jordan_forward(spec, ws, w_out, b_out, X, batch_sizes, offsets, f0=None,
                   drop=None, rmask=None, *, n_threads=1, block_rows=None):
    """Forward pass of a Jordan stack and its output layer.

    Parameters
    ----------
    spec : JordanSpec
    ws : list of dict of ndarray
        Parameters of each layer (``spec.layer_shapes(k)``).
    w_out, b_out : ndarray
        Output layer, shapes ``(n_output, hidden[-1])`` and ``(n_output,)``.
    X : ndarray of shape (n_rows, n_input) or TokenInput
        A ``TokenInput`` stands for its weighted one-hot rows (see
        ``layer_forward``).
    f0 : list of ndarray of shape (n_sequences, fed[l]), optional
        Vectors fed back at ``t = -1`` (zeros by default).
    drop : list of ndarray of shape (n_rows, hidden[l-1]) or None, optional
        Dropout masks on the input of layers 1.. (entry 0 is ignored).
    rmask : list of ndarray of shape (n_sequences, fed[l]) or None, optional
        Recurrent-dropout masks.

    Returns
    -------
    Y : ndarray of shape (n_rows, n_output)
        Output (after the output activation) at every row.
    f_n : list of ndarray
        Fed-back vectors after the last step of every sequence.
    cache : JordanCache
    """
    X, batch_sizes, offsets, f0, drop, rmask = _checks.check_jordan_forward_args(
        spec, ws, w_out, b_out, X, batch_sizes, offsets, f0, drop, rmask,
        n_threads=n_threads, block_rows=block_rows)
    dtype = ws[0]["weight_ih"].dtype
    L = len(spec.hidden)
    n_rows = len(X)
    B = int(batch_sizes[0])
    if block_rows is None:
        block_rows = default_block_rows(batch_sizes, cut_by_steps=False)
    drop = [None] * L if drop is None else [None] + list(drop[1:])
    rmask = [None] * L if rmask is None else list(rmask)
    drop = [None if m is None else np.ascontiguousarray(m, dtype) for m in drop]
    rmask = [None if m is None else np.ascontiguousarray(m, dtype) for m in rmask]
    # state buffers: S[l] for layer l, y_state for the output
    S = [np.zeros((B, h), dtype) for h in spec.hidden]
    y_state = np.zeros((B, spec.n_output), dtype)
    if f0 is not None:
        for k in range(L - 1):
            S[k + 1][...] = f0[k]
        y_state[...] = f0[L - 1]
    G = [np.empty((n_rows, h), dtype) for h in spec.hidden]
    tokens = isinstance(X, TokenInput)
    if tokens:
        # dense input is multiplied in the kernel, step by step
        _input_product(X, ws[0]["weight_ih"], G[0], n_threads)
    hidden, fed = np.array(spec.hidden, np.intp), np.array(spec.fed, np.intp)
    wpack = np.empty(_jordan.forward_pack_length(
        spec.n_input, hidden, fed, spec.n_output, np.dtype(dtype).itemsize), dtype)
    Hs = [np.empty((n_rows, h), dtype) for h in spec.hidden]
    Xin = [X] + [Hs[k - 1] if drop[k] is None else np.empty_like(Hs[k - 1])
                 for k in range(1, L)]
    Fprev = [np.empty((n_rows, f), dtype) for f in spec.fed]
    if spec.layer_norm:
        xhat = [np.empty((n_rows, h), dtype) for h in spec.hidden]
        rstd = [np.empty(n_rows, dtype) for _ in spec.hidden]
    else:
        xhat = rstd = [None] * L
    Y = np.empty((n_rows, spec.n_output), dtype)
    get = lambda name: _addresses([w.get(name) for w in ws])  # noqa: E731
    _jordan.jordan_forward(
        ACTIVATIONS[spec.activation], OUTPUT_ACTIVATIONS[spec.output_activation],
        spec.layer_norm, batch_sizes, offsets, hidden, fed, get("weight_ih"),
        get("weight_hh"), get("bias_ih"), get("bias_hh"), get("ln_weight"),
        get("ln_bias"), _addresses(drop), _addresses(rmask), _addresses(S),
        _addresses(G), _addresses(Hs),
        _addresses([None if tokens else X]
                   + [Xin[k] if drop[k] is not None else None for k in range(1, L)]),
        _addresses(Fprev), _addresses(xhat), _addresses(rstd), w_out, b_out,
        y_state, Y, spec.n_input, wpack, block_rows, n_threads,
    )
    f_n = S[1:] + [y_state]
    cache = JordanCache(X, Hs, Xin, Fprev, xhat, rstd, Y, drop, rmask,
                        batch_sizes, offsets, block_rows)
    return Y, f_n, cache


def jordan_backward(spec, ws, w_out, grads, g_out, cache, dZ_in, df_n=None, *,
                    t_stop=None, need_dx=True, n_threads=1):
    """Backward pass of a Jordan stack; accumulates into ``grads``/``g_out``.

    ``dZ_in`` (n_rows, n_output) is dL/d(output pre-activation) from the loss.
    ``df_n`` are dL/d(final fed-back vectors), zeros by default. Returns
    ``dX`` (or None) and dL/d(initial fed-back vectors).
    """
    dZ_in, df_n = _checks.check_jordan_backward_args(
        spec, ws, w_out, grads, g_out, cache, dZ_in, df_n, t_stop=t_stop,
        need_dx=need_dx, n_threads=n_threads)
    dtype = cache.Y.dtype
    L = len(spec.hidden)
    n_rows = len(cache.X)
    B = int(cache.batch_sizes[0])
    block_rows = cache.block_rows
    n_blocks = -(-B // block_rows)
    dF = [np.zeros((B, f), dtype) for f in spec.fed]
    if df_n is not None:
        for k in range(L):
            dF[k][...] = df_n[k]
    stops, first = _stops(t_stop, cache.offsets, int(cache.batch_sizes[0]))
    make = np.zeros if stops.size > 0 and stops.max() > 0 else np.empty
    dG = [make((n_rows, h), dtype) for h in spec.hidden]
    dZ = make((n_rows, spec.n_output), dtype)
    n_ln = spec.hidden if spec.layer_norm else (0,) * L
    dln_w = [np.zeros((n_blocks, n), dtype) for n in n_ln]
    dln_b = [np.zeros((n_blocks, n), dtype) for n in n_ln]

    def block_addresses(parts):
        if not spec.layer_norm:
            return np.zeros((n_blocks, L), np.intp)
        return np.stack([p.ctypes.data + np.arange(n_blocks) * p.strides[0]
                         for p in parts], axis=1).astype(np.intp)

    size = max(max(spec.hidden), spec.n_output)
    work = np.empty((n_blocks, 2 * block_rows * size), dtype)
    get = lambda name: _addresses([w.get(name) for w in ws])  # noqa: E731
    _jordan.jordan_backward(
        ACTIVATIONS[spec.activation], OUTPUT_ACTIVATIONS[spec.output_activation],
        spec.layer_norm, cache.batch_sizes, cache.offsets, stops,
        np.array(spec.hidden, np.intp), np.array(spec.fed, np.intp),
        get("weight_ih"), get("weight_hh"), get("ln_weight"),
        _addresses(cache.drop), _addresses(cache.rmask), _addresses(cache.Hs),
        _addresses(cache.xhat), _addresses(cache.rstd), _addresses(dF),
        _addresses(dG), block_addresses(dln_w), block_addresses(dln_b), w_out,
        cache.Y, np.ascontiguousarray(dZ_in, dtype), dZ, work, block_rows,
        n_threads,
    )
    _dense.accumulate_outer(dZ[first:], cache.Hs[L - 1][first:], g_out["weight"],
                            n_threads)
    _dense.accumulate_column_sums(dZ[first:], g_out["bias"])
    for k in range(L):
        g = grads[k]
        _accumulate_input_grad(dG[k][first:], cache.Xin[k][first:],
                               g["weight_ih"], n_threads)
        _dense.accumulate_outer(dG[k][first:], cache.Fprev[k][first:],
                                g["weight_hh"], n_threads)
        _dense.accumulate_column_sums(dG[k][first:], g["bias_ih"])
        _dense.accumulate_column_sums(dG[k][first:], g["bias_hh"])
        if spec.layer_norm:
            g["ln_weight"] += dln_w[k].sum(axis=0)
            g["ln_bias"] += dln_b[k].sum(axis=0)
    dX = None
    if need_dx:
        dX = np.empty((n_rows, spec.n_input), dtype)
        _dense.matmul(dG[0], ws[0]["weight_ih"], dX, False, 0.0, n_threads)
    return dX, dF
