"""The engine driver: a stack of recurrent layers with a dense output layer.

``Network`` owns one flat parameter vector (and one flat gradient vector of
the same layout), with views named as PyTorch names them. It runs the stack
over packed batches (``pyx_rnn.packing``), computes losses and gradients with
full or truncated BPTT, and clips gradients. Optimisers live in
``pyx_rnn.optim``. The layers check every argument (``pyx_rnn._checks``),
except where the network has checked, once per call, everything they would
for all of them (``Network._layer_args_checked``); validation of users' data
formats lives in ``sklearn_rnn``.
"""

import math
import numbers
import threading
from collections import deque
from typing import NamedTuple

import numpy as np

from . import _bookkeeping, _cells, _checks, _dense
from .layers import (
    _EMPTY_STARTS,
    OUTPUT_ACTIVATIONS,
    JordanSpec,
    LayerCache,
    LayerSpec,
    _aligned,
    _empty,
    _layer_backward,
    _layer_forward,
    _new_states,
    _take,
    block_cut,
    default_block_rows,
    fused_weight_gradients,
    jordan_backward,
    jordan_forward,
    layer_backward,
    layer_forward,
)
from .packing import SequenceInput
from .tokens import TokenInput

CELL_NAMES = ("rnn", "jordan", "lstm", "gru")
LOSSES = ("squared_error", "log_loss", "binary_log_loss")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Network:
    """Stacked (optionally bidirectional) recurrent layers and an output layer.

    Parameters
    ----------
    cell : {'rnn', 'jordan', 'lstm', 'gru'}
    n_input : int
        Features per step.
    hidden_sizes : tuple of int
        Hidden units of each stacked layer.
    n_output : int
        Units of the output layer.
    bidirectional : bool, default=False
        Not available for 'jordan'.
    activation : {'tanh', 'relu'}, default='tanh'
        Hidden activation of 'rnn' and 'jordan' cells.
    output_activation : {'identity', 'tanh', 'sigmoid', 'softmax'}
        Applied to the output layer.
    peephole : bool, default=False
        LSTM peephole connections.
    reset_after : bool, default=True
        GRU form: reset gate after (PyTorch, cuDNN) or before the recurrent
        product.
    layer_norm : bool, default=False
        Layer normalisation of every gate's pre-activation.
    embedding_dim : int, optional
        Read token input (``TokenInput``: ids below ``n_input`` and weights)
        through a learned embedding of this size (``embedding.weight``,
        shape ``(n_input, embedding_dim)``).
    token_input : bool, default=False
        Read token input without an embedding: the first layer's input
        projection is then a row gather of its input weights, the product
        with the weighted one-hot vectors of ``n_input`` entries.
    dtype : {numpy.float32, numpy.float64}

    Examples
    --------
    >>> import numpy as np
    >>> from pyx_rnn.network import Network
    >>> from pyx_rnn.packing import pack
    >>> net = Network("lstm", n_input=2, hidden_sizes=(8,), n_output=1)
    >>> net.init_weights(np.random.default_rng(0))
    >>> data, packing = pack([np.ones((5, 2)), np.ones((3, 2))], np.float32)
    >>> Z, Y, cache = net.forward(data, packing)
    >>> Y.shape
    (2, 1)
    """

    def __init__(self, cell, n_input, hidden_sizes, n_output, *,
                 bidirectional=False, activation="tanh",
                 output_activation="identity", peephole=False,
                 reset_after=True, layer_norm=False, embedding_dim=None,
                 token_input=False, dtype=np.float32):
        if cell not in CELL_NAMES:
            raise ValueError(f"cell must be one of {CELL_NAMES}, got {cell!r}")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {tuple(OUTPUT_ACTIVATIONS)}, "
                f"got {output_activation!r}")
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError("hidden_sizes must be a non-empty tuple of positive ints")
        if cell == "jordan" and bidirectional:
            raise ValueError(
                "a Jordan network feeds its output back into its layers, so it "
                "cannot run backwards in time; use bidirectional=False or "
                "another cell")
        if peephole and cell != "lstm":
            raise ValueError("peephole connections exist only for cell='lstm'")
        self.cell = cell
        self.n_input = int(n_input)
        self.hidden_sizes = hidden_sizes
        self.n_output = int(n_output)
        self.bidirectional = bool(bidirectional)
        self.activation = activation
        self.output_activation = output_activation
        self.peephole = bool(peephole)
        self.reset_after = bool(reset_after)
        self.layer_norm = bool(layer_norm)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.token_input = bool(token_input) or self.embedding_dim is not None

        shapes = {}
        n_first = self.n_input
        if self.embedding_dim is not None:
            shapes["embedding.weight"] = (self.n_input, self.embedding_dim)
            n_first = self.embedding_dim
        if cell == "jordan":
            self.jordan = JordanSpec(n_first, hidden_sizes, self.n_output,
                                     activation, output_activation, self.layer_norm)
            self.specs = []
            for k in range(len(hidden_sizes)):
                for name, shape in self.jordan.layer_shapes(k).items():
                    shapes[f"{name}_l{k}"] = shape
        else:
            self.jordan = None
            self.specs = []  # one list of directions per layer
            n_dirs = 2 if self.bidirectional else 1
            n_in = n_first
            for k, h in enumerate(hidden_sizes):
                layer = []
                for reverse in range(n_dirs):
                    spec = LayerSpec(cell, n_in, h, activation, bool(reverse),
                                     self.reset_after, self.peephole,
                                     self.layer_norm)
                    sfx = f"_l{k}" + ("_reverse" if reverse else "")
                    for name, shape in spec.shapes().items():
                        shapes[name + sfx] = shape
                    layer.append((spec, sfx))
                self.specs.append(layer)
                n_in = h * n_dirs
        self.n_top = hidden_sizes[-1] * (2 if self.bidirectional else 1)
        shapes["output.weight"] = (self.n_output, self.n_top)
        shapes["output.bias"] = (self.n_output,)
        self.shapes = shapes
        total = sum(math.prod(s) for s in shapes.values())
        self.params = np.zeros(total, dtype=self.dtype)
        self.grads = np.zeros(total, dtype=self.dtype)
        self.weights = self._views(self.params)
        self.grad_views = self._views(self.grads)
        self._pool = {}  # training buffers reused from batch to batch
        self._local = threading.local()  # prediction buffers, one set per thread
        # each layer's parameters: (name in the layer, name in the network)
        if cell == "jordan":
            names = {f"_l{k}": self.jordan.layer_shapes(k)
                     for k in range(len(hidden_sizes))}
        else:
            names = {sfx: spec.shapes() for layer in self.specs for spec, sfx in layer}
        self._layer_names = {sfx: [(base, base + sfx) for base in bases]
                             for sfx, bases in names.items()}

    def __getstate__(self):
        """The constructor's arguments and the flat parameter vector.

        Plain data only (strings, numbers, a tuple and one array), so that
        safe formats (``skops.io``, ``sklearn_rnn.persistence``) can store a
        network; the layer specifications, views, gradients and buffers are
        rebuilt on load, and the views keep pointing into the parameters.
        """
        state = {key: getattr(self, key) for key in _STATE_CONFIG}
        state["dtype"] = self.dtype.name
        state["params"] = self.params
        return state

    def __setstate__(self, state):
        """Rebuild the network from ``__getstate__``'s dict, checking it.

        Also reads the state of earlier versions (the whole ``__dict__``).

        Raises
        ------
        ValueError
            If an entry is missing or has the wrong type, or the parameter
            vector has the wrong shape or dtype or is not finite.
        """
        config = _check_state_config(state)
        try:
            self.__init__(**config)
        except (TypeError, ValueError, OverflowError, MemoryError) as exc:
            raise ValueError(f"invalid saved Network: {exc}") from exc
        params = state["params"]
        if not isinstance(params, np.ndarray) or params.shape != self.params.shape:
            raise ValueError(
                f"invalid saved Network: params must be an array of shape "
                f"{self.params.shape} for this architecture, got "
                f"{getattr(params, 'shape', type(params).__name__)}")
        if params.dtype != self.dtype:
            raise ValueError(f"invalid saved Network: params has dtype "
                             f"{params.dtype}, expected {self.dtype}")
        if not np.all(np.isfinite(params)):
            raise ValueError("invalid saved Network: params contain NaN or infinity")
        # keep the loaded array itself: an optimiser saved with the network
        # holds the same array, and a read-only memory map is copied by the
        # estimator that owns both
        self.params = params
        self.weights = self._views(self.params)

    def _views(self, flat):
        views, start = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            views[name] = flat[start:start + size].reshape(shape)
            start += size
        return views

    def _layer(self, views, sfx):
        """Parameters (or gradients) of one layer, by their unsuffixed names."""
        return {base: views[name] for base, name in self._layer_names[sfx]}

    # ------------------------------------------------------------------
    # initialisation
    # ------------------------------------------------------------------

    def init_weights(self, rng):
        """Glorot-uniform input weights, orthogonal recurrent weights, zero
        biases except the LSTM forget gate (1), unit layer-norm gains."""
        w = self.weights
        self.params[:] = 0
        for name, shape in self.shapes.items():
            if name == "embedding.weight":
                w[name][...] = rng.standard_normal(shape)  # as torch.nn.Embedding
            elif name.startswith("weight_ih") or name == "output.weight":
                w[name][...] = _glorot(rng, shape)
            elif name.startswith("weight_hh"):
                # one orthogonal block per gate (Jordan: one rectangular block)
                step = shape[0] if self.cell == "jordan" else shape[1]
                for start in range(0, shape[0], step):
                    block = w[name][start:start + step]
                    block[...] = _orthogonal(rng, block.shape)
            elif name.startswith("ln_weight"):
                w[name][...] = 1
            elif name.startswith("bias_ih") and self.cell == "lstm":
                h = shape[0] // 4
                w[name][h:2 * h] = 1

    # ------------------------------------------------------------------
    # forward and backward over a window of steps
    # ------------------------------------------------------------------

    def _draw_masks(self, packing, rng, dropout, recurrent_dropout):
        """Recurrent-dropout masks, one per layer and direction, fixed over time."""
        if not recurrent_dropout:
            return None
        B = packing.n_sequences
        keep = 1.0 - recurrent_dropout
        masks = []
        if self.jordan is not None:
            for f in self.jordan.fed:
                masks.append(_dropout_mask(rng, (B, f), keep, self.dtype))
            return masks
        for layer in self.specs:
            masks.append([_dropout_mask(rng, (B, spec.hidden), keep, self.dtype)
                          for spec, _ in layer])
        return masks

    def _layer_args_checked(self, packing, initial_state, n_threads, block_rows,
                            training):
        """Check here, once per call, what the layers would check of this
        call's arguments, for all of them; True when they may then skip their
        own checks (about 20 µs per layer in the forward pass and 50 in the
        backward pass, several percent of a small training batch). False
        where the layers must check for themselves: a Jordan network, initial
        states in another form than ``_states_as_they_are``'s, a packing or
        a thread count they would refuse, or parameters (or, with
        ``training``, gradients) replaced by arrays of another shape, dtype
        or layout; they then name the problem. The first layer's input is
        checked by ``_input_checked``; everything else the layers receive
        is built by the network itself."""
        if self.jordan is not None:
            return False
        where = "Network"
        bs, off = packing.batch_sizes, packing.offsets
        if not all(type(a) is np.ndarray and a.dtype == np.intp and a.ndim == 1
                   and a.flags.c_contiguous for a in (bs, off)):
            return False
        try:
            _checks._check_n_threads(n_threads, where)
            _checks._check_packing(bs, off, where)
            _checks._check_block_rows(block_rows, bs, where)
        except (TypeError, ValueError, OverflowError):
            return False
        if initial_state is not None and not self._states_as_they_are(
                initial_state, int(bs[0])):
            return False
        good, dtype = _checks._good_param, self.dtype
        for v in (self.weights, self.grad_views) if training else (self.weights,):
            if len(v) != len(self.shapes):
                return False
            for name, shape in self.shapes.items():
                if not good(v.get(name), shape, dtype):
                    return False
        return True

    def _states_as_they_are(self, states, B):
        """Whether initial states are what every layer would accept without
        a copy (see ``_layer_args_checked``): for each layer and direction a
        pair ``(h0, c0)`` of C-contiguous arrays of the network's dtype, of
        ``B`` rows of the layer's width (``c0`` for the LSTM only: the other
        cells ignore it), as ``forward`` and ``loss_gradient`` return them.
        Their values are checked by ``_check_states_finite``."""
        if type(states) not in (list, tuple) or len(states) != len(self.specs):
            return False
        for layer, pairs in zip(self.specs, states):
            if type(pairs) not in (list, tuple) or len(pairs) != len(layer):
                return False
            for (spec, _), pair in zip(layer, pairs):
                if type(pair) not in (list, tuple) or len(pair) != 2:
                    return False
                for a in pair if spec.cell == "lstm" else pair[:1]:
                    if not (type(a) is np.ndarray and a.dtype == self.dtype
                            and a.shape == (B, spec.hidden)
                            and a.flags.c_contiguous):
                        return False
        return True

    def _input_checked(self, X, packing):
        """Whether the first layer's input is what the layers would accept
        without a copy (see ``_layer_args_checked``): token ids and weights
        too, for a token network without an embedding (the ids within the
        vocabulary: the layer's row gather does not check them)."""
        if isinstance(X, SequenceInput):
            return True     # as _read_in_place made it
        if type(X) is TokenInput:
            if not self.token_input or self.embedding_dim is not None:
                return False
            ids, weights, n = X.ids, X.weights, packing.n_rows
            return (type(ids) is np.ndarray and ids.dtype == np.intp
                    and ids.shape == (n,) and ids.flags.c_contiguous
                    and type(weights) is np.ndarray and weights.dtype == self.dtype
                    and weights.shape == (n,) and weights.flags.c_contiguous
                    and weights.flags.writeable
                    and (n == 0 or (int(ids.min()) >= 0 and int(ids.max())
                                    < self.specs[0][0][0].n_input)))
        return (type(X) is np.ndarray and X.shape[:1] == (packing.n_rows,)
                and self._rows_as_they_are(X))

    def _packs_as_they_are(self, data):
        """Whether ``_dense.pack_rows`` copies the rows of ``data`` as they
        are: a 2-D ndarray of the network's dtype and input width,
        C-contiguous (read only: it may be read-only)."""
        return (type(data) is np.ndarray and data.ndim == 2
                and data.dtype == self.dtype and data.shape[1] == self.n_input
                and data.flags.c_contiguous)

    def _rows_as_they_are(self, data):
        """Whether the first layer reads the rows of the 2-D array ``data``
        without a copy: of the network's dtype and input width, C-contiguous
        and writable (the kernels' memoryviews)."""
        return (data.ndim == 2 and data.dtype == self.dtype
                and data.shape[1] == self.specs[0][0][0].n_input
                and data.flags.c_contiguous and data.flags.writeable)

    def _stack_forward(self, X, packing, states, rmasks, dropout, rng, n_threads,
                       block_rows, pool=None, keep_cache=True, checked=False,
                       last_steps=False):
        """Run the stack over packed rows ``X`` (a ``TokenInput`` for token
        networks); returns the top output (the hidden states of the top layer,
        or the output ``Y`` for Jordan), the final states and a cache (for
        the backward pass; not kept with ``keep_cache=False``). ``checked``:
        see ``_layer_args_checked``. With ``last_steps`` (inference, not
        Jordan) the top output is that of each sequence's last step only
        (its final states, ``n_sequences x n_top`` in packed order), and the
        top layer need not keep the others."""
        tokens = None
        if self.embedding_dim is not None:
            table = self.weights["embedding.weight"]
            tokens_in = X
            X = np.empty((len(tokens_in), self.embedding_dim), self.dtype)
            ids, weights = _checks.check_gather_rows_args(
                tokens_in.ids, tokens_in.weights.astype(self.dtype, copy=False),
                table, X, n_threads=n_threads)
            tokens = TokenInput(ids, weights)
            _dense.gather_rows(ids, weights, table, X, n_threads)
        elif self.token_input and isinstance(X, TokenInput):
            # the first layer reads the tokens itself (a row gather)
            X = TokenInput(X.ids, X.weights.astype(self.dtype, copy=False))
        checked = checked and self._input_checked(X, packing)
        if not checked and isinstance(X, SequenceInput):
            X = X.packed(packing)     # for the layers' own checks
        top, new_states, caches = self._layers_forward(
            X, packing, states, rmasks, dropout, rng, n_threads, block_rows, pool,
            keep_cache, checked, last_steps)
        return top, new_states, (caches, tokens, checked)

    def _layers_forward(self, X, packing, states, rmasks, dropout, rng, n_threads,
                        block_rows, pool, keep_cache=True, checked=False,
                        last_steps=False):
        bs, off = packing.batch_sizes, packing.offsets
        keep = 1.0 - dropout
        if self.jordan is not None:
            drop = None
            if dropout:
                drop = [None] + [_dropout_mask(rng, (X.shape[0], h), keep, self.dtype)
                                 for h in self.hidden_sizes[:-1]]
            ws = [self._layer(self.weights, f"_l{k}")
                  for k in range(len(self.hidden_sizes))]
            Y, f_n, cache = jordan_forward(
                self.jordan, ws, self.weights["output.weight"],
                self.weights["output.bias"], X, bs, off, states, drop, rmasks,
                n_threads=n_threads, block_rows=block_rows)
            return Y, f_n, cache
        caches, new_states = [], []
        inp = X
        top = len(self.specs) - 1
        for k, layer in enumerate(self.specs):
            drop = None
            if k > 0 and dropout:
                drop = _dropout_mask(rng, inp.shape, keep, self.dtype)
                inp = inp * drop
            outs, layer_states, layer_caches = [], [], []
            for d, (spec, sfx) in enumerate(layer):
                h0, c0 = (None, None) if states is None else states[k][d]
                mask = None if rmasks is None else rmasks[k][d]
                w = self._layer(self.weights, sfx)
                layer_pool = None if pool is None else pool.setdefault(sfx, {})
                if checked:
                    _checks.check_layer_forward_sizes(
                        spec, int(off[-1]), int(bs[0]),
                        block_rows or default_block_rows(bs),
                        self.dtype, mask=mask is not None,
                        tokens=isinstance(inp, TokenInput), where="Network")
                    H, h_n, c_n, cache = _layer_forward(
                        spec, w, inp, bs, off, h0, c0, mask, n_threads,
                        block_rows, layer_pool, keep_cache,
                        keep_outputs=not (last_steps and top == k))
                else:
                    H, h_n, c_n, cache = layer_forward(
                        spec, w, inp, bs, off, h0, c0, mask,
                        n_threads=n_threads, block_rows=block_rows,
                        pool=layer_pool, keep_cache=keep_cache)
                outs.append(H)
                layer_states.append((h_n, c_n))
                layer_caches.append(cache)
            if last_steps and top == k:
                # the outputs at each sequence's last step: its final states
                outs = [h_n for h_n, _ in layer_states]
            inp = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
            caches.append((layer_caches, drop))
            new_states.append(layer_states)
        return inp, new_states, caches

    def _stack_backward(self, cache, d_top, d_states, t_stop, n_threads,
                        pool=None):
        """Back-propagate ``d_top`` (dL/d top hidden states, or dL/dz of the
        output for Jordan) through the stack, adding to ``self.grad_views``.
        ``d_states`` are dL/d(final states) (None: zeros). Returns dL/d(initial
        states), in the layout of the states."""
        caches, tokens, checked = cache
        d_init, dX = self._layers_backward(caches, d_top, d_states, t_stop,
                                           n_threads, pool, tokens is not None,
                                           checked)
        if tokens is not None:
            table = self.grad_views["embedding.weight"]
            ids, weights, dX = _checks.check_scatter_add_rows_args(
                tokens.ids, tokens.weights, dX, table)
            _dense.scatter_add_rows(ids, weights, dX, table)
        return d_init

    def _layers_backward(self, caches, d_top, d_states, t_stop, n_threads, pool,
                         need_dx, checked=False):
        """``_stack_backward`` without the embedding; also returns dL/dX of
        the first layer when ``need_dx``. ``checked``: the forward pass's
        (see ``_layer_args_checked``)."""
        g = self.grad_views
        if self.jordan is not None:
            L = len(self.hidden_sizes)
            ws = [self._layer(self.weights, f"_l{k}") for k in range(L)]
            gs = [self._layer(g, f"_l{k}") for k in range(L)]
            dX, dF = jordan_backward(
                self.jordan, ws, self.weights["output.weight"], gs,
                {"weight": g["output.weight"], "bias": g["output.bias"]},
                caches, d_top, d_states, t_stop=t_stop, need_dx=need_dx,
                n_threads=n_threads)
            return dF, dX
        d_init = [None] * len(self.specs)
        dH = d_top
        for k in range(len(self.specs) - 1, -1, -1):
            layer = self.specs[k]
            layer_caches, drop = caches[k]
            dX = None
            layer_d = []
            for d, (spec, sfx) in enumerate(layer):
                h = spec.hidden
                dH_d = dH[:, d * h:(d + 1) * h] if len(layer) > 1 else dH
                dh_n, dc_n = (None, None) if d_states is None else d_states[k][d]
                args = (spec, self._layer(self.weights, sfx), self._layer(g, sfx),
                        layer_caches[d], dH_d, dh_n, dc_n)
                layer_pool = None if pool is None else pool.setdefault(sfx, {})
                if checked:
                    c = layer_caches[d]
                    B = int(c.batch_sizes[0])
                    _checks.check_layer_backward_sizes(
                        spec, len(c.X), B, c.block_rows, self.dtype,
                        fused=fused_weight_gradients(spec, self.dtype.itemsize,
                                                     min(B, c.block_rows)),
                        need_dx=k > 0 or need_dx, copy_dh=len(layer) > 1,
                        where="Network")
                    dX_d, dh0, dc0 = _layer_backward(
                        *args, t_stop, k > 0 or need_dx, n_threads, layer_pool)
                else:
                    dX_d, dh0, dc0 = layer_backward(
                        *args, t_stop=t_stop, need_dx=k > 0 or need_dx,
                        n_threads=n_threads, pool=layer_pool)
                layer_d.append((dh0, dc0))
                if dX_d is not None:
                    dX = dX_d if dX is None else dX + dX_d
            d_init[k] = layer_d
            if k > 0:
                dH = dX * drop if drop is not None else dX
        return d_init, dX

    def _head(self, top, rows, pool):
        """Output layer on the given rows of the top output (all of them
        if ``rows`` is None): ``(Z, Y, X)``, ``X`` being those rows (None for
        Jordan networks, whose ``Y`` is the top output); ``pool`` (a dict)
        keeps the packed weights' buffer from call to call."""
        if self.jordan is not None:
            return None, top[rows], None
        W = self.weights["output.weight"]
        # C-contiguous either way
        X = top if rows is None else top.take(rows, axis=0)
        Z = np.empty((len(X), len(W)), self.dtype)
        wpack = _take(pool.setdefault("head", {}), "wpack", (
            _dense.linear_pack_length(W.shape[0], W.shape[1], Z.itemsize),),
            self.dtype)
        return (*self._output(X, Z, wpack), X)

    def _output(self, X, Z, wpack):
        """The output layer (not Jordan) on the rows ``X``: its
        pre-activation into ``Z`` and its output, ``(Z, Y)``; ``wpack``
        holds its packed weights (``_dense.linear_pack_length``). The packed
        kernel, not BLAS: a row's output does not depend on the other rows
        (sklearn's subset and sample-order checks)."""
        _dense.linear(X, self.weights["output.weight"],
                      self.weights["output.bias"], Z, wpack, 1)
        return Z, _activate(Z, self.output_activation)

    def _head_backward(self, X, rows, dZ, n_top_rows, n_threads):
        """Gradient of the output layer, whose input ``X`` (from ``_head``)
        is the top output at ``rows``; returns dL/d(top output) at every
        row."""
        if self.jordan is not None:
            d_top = np.zeros((n_top_rows, self.n_output), self.dtype)
            d_top[rows] = dZ
            return d_top
        d_rows = self._head_gradient(X, dZ, n_threads)
        # reused from batch to batch: no page faults for a large fresh array;
        # zero but for the rows the output layer reads, and only the rows
        # the last call wrote are not zero already
        head = self._pool.setdefault("head", {})
        d_top = _take(head, "d_top", (n_top_rows, self.n_top), self.dtype)
        if head.get("d_top_of") is d_top:
            d_top[head["d_top_rows"]] = 0
        else:
            d_top.fill(0)
        d_top[rows] = d_rows
        head["d_top_of"], head["d_top_rows"] = d_top, rows
        return d_top

    def _head_gradient(self, X, dZ, n_threads):
        """Add the gradient of the output layer (not Jordan), whose input
        was ``X``, to ``grad_views``; returns dL/dX. One compiled call
        (``_dense.linear_backward``), its sums the same on any number of
        threads."""
        g, dtype, W = self.grad_views, self.dtype, self.weights["output.weight"]
        X = np.ascontiguousarray(X, dtype)
        dX = np.empty(X.shape, dtype)
        _dense.linear_backward(X, np.ascontiguousarray(dZ, dtype), W,
                               g["output.weight"], g["output.bias"], dX, n_threads,
                               self._head_work(n_threads))
        return dX

    def _head_work(self, n_threads):
        """The scratch of ``_dense.linear_backward`` for the output layer on
        ``n_threads`` threads, from the pool; None for at most
        ``_dense.NARROW_COLUMNS`` outputs, whose loops need none."""
        W = self.weights["output.weight"]
        if len(W) <= _dense.NARROW_COLUMNS:
            return None
        return _take(self._pool.setdefault("head", {}), "outer_work",
                     (_dense.outer_work_size(W.shape[1], 0, self.dtype.itemsize,
                                             n_threads),), self.dtype)

    def _top_rows(self, packing, return_sequences):
        """Rows of the top output read by the output layer, and for a
        bidirectional sequence-to-one network the rows of the backward half."""
        if return_sequences:
            return np.arange(packing.n_rows), None
        last = packing.last_rows()
        if self.bidirectional:
            return last, np.arange(packing.n_sequences)
        return last, None

    def _gather_top(self, top, packing, return_sequences):
        rows, first = self._top_rows(packing, return_sequences)
        if first is None:
            return top, rows
        # forward half at the last step, backward half at the first step
        h = self.hidden_sizes[-1]
        feats = np.concatenate([top[rows, :h], top[first, h:]], axis=1)
        return feats, np.arange(len(rows))

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------

    def forward(self, X, packing, *, return_sequences=False, initial_state=None,
                n_threads=1, block_rows=None):
        """Predict: outputs for a packed batch (no dropout).

        Parameters
        ----------
        X : ndarray of shape (n_rows, n_input), SequenceInput or TokenInput
            Packed inputs; or a ``SequenceInput``, the batch's steps where
            they lie (the first layer then gathers each step's rows itself,
            with the same results, rather than reading a packed copy); or
            token input for token networks.
        packing : Packing
        return_sequences : bool
            Outputs at every step rather than at each sequence's last.
        initial_state : list, optional
            States to start from (as returned); zeros by default.
        n_threads : int
        block_rows : int, optional
            Sequences per block of the kernels (see ``docs/engine.md``).

        Returns
        -------
        Z : ndarray or None
            Output pre-activation (None for Jordan networks).
        Y : ndarray
            Output, shape (n_rows, n_output) in packed order with
            ``return_sequences``, else (n_sequences, n_output) in packed order.
        states : list
            Final states, to continue the sequences later.
        """
        # buffers reused from call to call, one set per thread: predict is
        # thread-safe, and no buffer escapes (the outputs below are copies)
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        key = _InferencePlan.key_of(self, X, packing, n_threads, block_rows,
                                    return_sequences)
        ready = pool.get("inference")
        if ready is not None and ready.key == key:
            out = ready.run(X, packing, initial_state)
            if out is not None:
                return out
        if isinstance(X, SequenceInput):
            X = self._read_in_place(X, packing)
        else:
            self._check_input(X)
        _check_states_finite(initial_state)
        checked = self._layer_args_checked(packing, initial_state, n_threads,
                                           block_rows, training=False)
        # the output layer reads each sequence's last step only: the final
        # states, and the top layer need not keep its outputs at every step
        last_steps = not return_sequences and self.jordan is None
        with _checks.finite_checks(False):
            top, states, (_, _, checked) = self._stack_forward(
                X, packing, initial_state, None, 0.0, None, n_threads, block_rows,
                pool, keep_cache=False, checked=checked, last_steps=last_steps)
        feats, rows = ((top, None) if last_steps
                       else self._gather_top(top, packing, return_sequences))
        Z, Y, _ = self._head(feats, rows, pool)
        # the next calls like this one (predict's batches) skip the checks
        # and the setup that hold for them too: made at the second call in a
        # row of the same key, so that calls alternating between two batch
        # shapes do not make one at every call
        if key is not None and _InferencePlan.possible(self, pool, X, key,
                                                       checked):
            if pool.get("inference_key") == key:
                pool["inference"] = _InferencePlan(self, pool, packing, key)
            pool["inference_key"] = key
        return Z, Y, states

    def loss_gradient(self, X, packing, targets, loss, *, sample_weight=None,
                      return_sequences=False, alpha=0.0, dropout=0.0,
                      recurrent_dropout=0.0, rng=None, tbptt=None,
                      initial_state=None, n_threads=1, block_rows=None):
        """Loss of a packed batch and its gradient, left in ``self.grads``.

        Parameters
        ----------
        X : ndarray of shape (n_rows, n_input), SequenceInput or TokenInput
            Packed inputs (a ``SequenceInput`` is packed first: the backward
            pass reads the packed rows again).
        packing : Packing
        targets : ndarray
            Per row (n_rows, n_output) in packed order with
            ``return_sequences``, else per sequence (n_sequences, n_output) in
            packed order. One-hot (or multilabel 0/1) for the log losses; for
            ``'log_loss'`` also 1-D integer class indices.
        loss : {'squared_error', 'log_loss', 'binary_log_loss'}
        sample_weight : ndarray of shape (n_sequences,), optional
            Per sequence, in packed order.
        alpha : float
            L2 penalty ``alpha / 2 * ||W||^2`` on the weight matrices,
            divided by the batch's total sample weight, as sklearn's MLP does.
        dropout, recurrent_dropout : float in [0, 1)
            Dropout between layers, and on the recurrent state (same mask at
            every step), with masks drawn from ``rng`` (a
            ``numpy.random.Generator``, needed where either is not 0).
        tbptt : (k1, k2) or None
            Truncated BPTT (docs/engine.md). None is full BPTT.
        initial_state : list, optional
            States to start from (e.g. carried from the previous window of a
            stateful model); zeros by default.

        Returns
        -------
        loss : float
        final_state : list
            The states after the last step (to carry forward).
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if dropout or recurrent_dropout:
            _check_dropout(dropout, recurrent_dropout, rng)
        # batches like the last ones skip the checks and the setup that hold
        # for them too (see _TrainingPlan)
        key = _TrainingPlan.key_of(self, packing, n_threads, block_rows,
                                   return_sequences, dropout, recurrent_dropout,
                                   tbptt, initial_state)
        ready = self._pool.get("training")
        if key is None or ready is None or ready.key != key:
            ready = None
        if isinstance(X, SequenceInput):
            # the backward pass reads the input again: packed rows
            rows = None if ready is None else ready.read(X, packing)
            X = (self._read_in_place(X, packing, pack_threads=n_threads)
                 if rows is None else rows)
        else:
            self._check_input(X)
        _check_states_finite(initial_state)
        if ready is not None:
            out = ready.run(X, packing, targets, loss, sample_weight, alpha,
                            dropout, recurrent_dropout, rng)
            if out is not None:
                return out
        checked = self._layer_args_checked(packing, initial_state, n_threads,
                                           block_rows, training=True)
        with _checks.finite_checks(False):
            out = self._loss_gradient(
                X, packing, targets, loss, sample_weight, return_sequences, alpha,
                dropout, recurrent_dropout, rng, tbptt, initial_state, n_threads,
                block_rows, checked)
        # made at the second call in a row of the same key, as forward's
        # inference plan
        if key is not None and _TrainingPlan.possible(self, X, packing, checked):
            if self._pool.get("training_key") == key:
                self._pool["training"] = _TrainingPlan(self, key, packing)
            self._pool["training_key"] = key
        return out

    def _read_in_place(self, X, packing, pack_threads=None):
        """A ``SequenceInput`` X, checked (finite values included), if the
        first layer may read it in place (see ``_input_checked``), else its
        packed rows, which ``_check_input`` then checks. With
        ``pack_threads`` (training) the packed rows in any case: where the
        rows are of the network's dtype and width and C-contiguous, copied
        by that many threads into a buffer of the pool, reused by every
        call, and checked in the same pass (``_dense.pack_rows``)."""
        if self.token_input:
            raise TypeError("this network reads token input: pass a TokenInput, "
                            "not a SequenceInput")
        data, starts = X.data, X.starts
        if type(data) is not np.ndarray or data.ndim != 2:
            raise ValueError("SequenceInput data must be a 2-D array (n_data_rows, "
                             f"n_features), got {type(data).__name__} of shape "
                             f"{np.shape(data)}")
        if not (type(starts) is np.ndarray and starts.dtype == np.intp
                and starts.flags.c_contiguous):
            starts = np.asarray(starts)
            if starts.dtype.kind not in "iu":
                raise TypeError("SequenceInput starts must be integers, got dtype "
                                f"{starts.dtype}")
            starts = np.ascontiguousarray(starts, dtype=np.intp)
        if starts.shape != (packing.n_sequences,):
            raise ValueError("SequenceInput starts must have one entry per "
                             f"sequence ({packing.n_sequences}), in packed order; "
                             f"got shape {starts.shape}")
        b = _dense.first_sequence_outside(starts, packing.lengths, len(data))
        if b >= 0:
            raise ValueError(
                f"SequenceInput: sequence {b} (packed order) needs rows "
                f"{starts[b]}..{starts[b] + packing.lengths[b] - 1} of data, "
                f"which has {len(data)} rows; starts are in packed order, and "
                f"each sequence must lie wholly in data")
        X = SequenceInput(data, starts)
        if pack_threads is not None and self._packs_as_they_are(data):
            where = "Network.loss_gradient"
            _checks._check_n_threads(pack_threads, where)
            bs, off = _checks._check_packing(packing.batch_sizes, packing.offsets,
                                             where)
            rows = _take(self._pool, "input", (int(off[-1]), data.shape[1]),
                         self.dtype)
            if not _dense.pack_rows(data, starts, bs, off, rows, pack_threads):
                _not_finite()
            return rows
        if not (self.jordan is None and self._rows_as_they_are(data)):
            # in the network's dtype, as the layers would convert packed rows
            X = X.packed(packing).astype(self.dtype, copy=False)
            self._check_input(X)
        elif not _dense.all_finite_rows(data, starts, packing.lengths):
            # the rows read only: data may hold other sequences
            _not_finite()
        return X

    def _check_input(self, X):
        """The user's input must be finite; the layers' own checks of it are
        then switched off, since the intermediate results of a diverging
        network may legitimately overflow (the loss reports it)."""
        values = X.weights if isinstance(X, TokenInput) else X
        if (type(values) is np.ndarray and values.ndim == 2
                and values.dtype in _FLOATS and values.flags.c_contiguous):
            finite = _dense.all_finite(values)
        else:
            finite = np.isfinite(values).all()
        if not finite:
            _not_finite()

    def _loss_gradient(self, X, packing, targets, loss, sample_weight,
                       return_sequences, alpha, dropout, recurrent_dropout, rng,
                       tbptt, initial_state, n_threads, block_rows, checked):
        self.grads[:] = 0
        rmasks = self._draw_masks(packing, rng, dropout, recurrent_dropout)
        n_steps = packing.n_steps
        row_weight, total_weight = _row_weights(packing, sample_weight,
                                                return_sequences, self.dtype)
        if tbptt is None or (tbptt[0] >= n_steps and tbptt[1] >= n_steps):
            windows = [(0, n_steps)]
            k2 = n_steps
        else:
            k1, k2 = tbptt
            if self.bidirectional:
                raise ValueError(
                    "truncated BPTT runs forward in time window by window; it "
                    "cannot be combined with bidirectional layers")
            windows = [(s, min(s + k1, n_steps)) for s in range(0, n_steps, k1)]

        value = 0.0
        state = initial_state
        final_state = None
        kept = deque()   # (start, stop, packing_w, first row, cache, top)
        # buffers: one set per window that can be alive at once, plus backward
        n_slots = 1 if len(windows) == 1 else -(-k2 // tbptt[0]) + 2
        slots = [self._pool.setdefault(("forward", i), {}) for i in range(n_slots)]
        back_pool = self._pool.setdefault("backward", {})
        loss_rows, _ = self._top_rows(packing, return_sequences)
        single = len(windows) == 1
        for i_window, (start, stop) in enumerate(windows):
            if single:
                pw, first, Xw = packing, 0, X
            else:
                pw, first = packing.window(start, stop)
                Xw = X[first:first + pw.n_rows]
            top, new_state, cache = self._stack_forward(
                Xw, pw, state, _slice_masks(rmasks, pw.n_sequences), dropout,
                rng, n_threads, block_rows, slots[i_window % n_slots],
                checked=checked)
            kept.append((start, stop, pw, first, cache, top))
            if single:
                # full BPTT, and every row the output layer reads is here
                truncate_at, idx = None, None
            else:
                # Sequence b back-propagates this window's losses down to
                # step min(start + k1, len_b) - k2: its own window end, so
                # that its gradient does not depend on the other sequences
                # of the batch.
                ends = np.minimum(start + tbptt[0],
                                  packing.lengths[: pw.n_sequences])
                truncate_at = ends - k2
                while kept[0][1] <= truncate_at.min():
                    kept.popleft()
                # the loss terms of this window: rows of the window that the
                # output layer reads
                idx = np.flatnonzero((loss_rows >= first)
                                     & (loss_rows < first + pw.n_rows))
            if idx is None or idx.size:
                rows_w = loss_rows if idx is None else loss_rows[idx] - first
                if self.bidirectional and not return_sequences:
                    # (one window: truncated BPTT excludes bidirectional)
                    feats, _ = self._gather_top(top, pw, False)
                    rows_w = np.arange(len(rows_w))
                else:
                    feats = top
                Z, Y, head_in = self._head(feats, rows_w, self._pool)
                v, dZ = loss_and_gradient(
                    loss, self.output_activation, Z, Y,
                    targets if idx is None else targets[idx],
                    row_weight if idx is None else row_weight[idx], total_weight)
                value += v
                d_top = self._head_backward(head_in, rows_w, dZ, feats.shape[0],
                                            n_threads)
                if self.bidirectional and not return_sequences:
                    d_top = _scatter_bidirectional(d_top, pw, self.hidden_sizes[-1])
                self._backward_span(kept, d_top, truncate_at, n_threads, back_pool)
            final_state = _update_final(final_state, new_state, self)
            state = _carry(new_state, stop, packing, self)
        value += self._penalty(alpha, total_weight)
        return value, final_state

    def _backward_span(self, kept, d_top, truncate_at, n_threads, pool):
        """Back-propagate the newest window's ``d_top`` through the kept
        windows, newest first; sequence ``b`` stops before step
        ``truncate_at[b]`` (absolute steps; one entry per sequence running in
        the newest window; None: one window, full BPTT)."""
        if truncate_at is None:
            self._stack_backward(kept[-1][4], d_top, None, None, n_threads, pool)
            return
        d_states = None
        n_active = len(truncate_at)
        for i in range(len(kept) - 1, -1, -1):
            start, stop, pw, first, cache, top = kept[i]
            if i < len(kept) - 1:
                d_top = np.zeros_like(top)
            # sequences that ended before the newest window get no gradient
            stops = np.full(pw.n_sequences, pw.n_steps, np.intp)
            stops[:n_active] = truncate_at - start
            d_init = self._stack_backward(
                cache, d_top, d_states, stops if stops.max() > 0 else None,
                n_threads, pool)
            if i == 0 or stops.min() >= 0:
                break
            # states at this window's start are the previous window's final
            # states: pad for the sequences that ended in the previous window
            prev_n = kept[i - 1][2].n_sequences
            d_states = _pad_states(d_init, prev_n, self)

    def _penalty(self, alpha, total_weight):
        """Add the L2 penalty's gradient and return its value."""
        if not alpha:
            return 0.0
        value = 0.0
        for name, w in self.weights.items():
            if name.startswith("weight_") or name == "output.weight":
                self.grad_views[name] += (alpha / total_weight) * w
                value += 0.5 * alpha / total_weight * float(np.sum(w * w))
        return value

    def clip_gradients(self, clip_norm=None, clip_value=None):
        """Clip ``self.grads`` in place, by value then by global norm.

        Returns the global norm before clipping by norm.
        """
        g = self.grads
        if clip_value is not None:
            np.clip(g, -clip_value, clip_value, out=g)
        # summed in float64, in one compiled pass (no float64 copy)
        norm = math.sqrt(_dense.sum_squares(g))
        if clip_norm is not None and norm > clip_norm:
            g *= clip_norm / norm
        return norm


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------

class _InferencePlan:
    """A forward pass made ready for repeated inference calls on batches of
    one shape (``predict``'s batches, a forecaster's windows, a symbol
    model's steps as it generates): the kernel's arguments for each layer of
    a unidirectional stack (not Jordan, no embedding) but the input and the
    states, read once (``_cells.ForwardArgs``), and the output layer's. A
    token network's first layer gathers its input projection from the
    tokens into its ``G`` first, as the general path does.

    ``Network.forward`` makes one after the second call in a row of the same
    ``key`` (``key_of``) whose arguments it checked in full
    (``_layer_args_checked``, ``_input_checked``), from the layers'
    ``_ForwardPlan`` of that call. It uses it for the calls of that key,
    with initial states or without, while the parameters are the same
    arrays, of the same shapes, dtype and strides (their values may
    change); ``run`` checks those, this call's input and its initial
    states, as ``forward`` would (their type, dtype, layout, bounds and
    finite values), and returns None where anything differs: ``forward``
    then takes its general path, which raises the error if there is one.
    The results are the same bits: the same kernels with the same
    arguments.
    """

    def __init__(self, net, pool, packing, key):
        self.net = net
        self.key = key
        _, n_threads, block_rows, self.return_sequences, self.in_place = key
        # the kernels read the plan's own copy of the checked packing
        batch_sizes, offsets = packing.batch_sizes.copy(), packing.offsets.copy()
        block_starts = block_cut(batch_sizes, block_rows)[1]
        self.weights = net.weights
        # held, so that their addresses stay theirs (see run)
        self.arrays = tuple(net.weights.values())
        self.layout = _bookkeeping.layout(self.arrays)
        self.n_sequences = packing.n_sequences
        self.layers = []
        for ((spec, sfx),) in net.specs:
            plan = pool[sfx]["forward_plan"]
            w = net._layer(net.weights, sfx)
            call, rows = plan.ready(w, batch_sizes, offsets, n_threads, block_starts)
            # the input projection's rows where the layer does not compute
            # it (token input), and the outputs: this packing's rows
            G, H = rows[0], rows[1]
            self.layers.append((spec, call, plan, w, G, H))
        self.n_threads = n_threads
        self.head_pack = pool["head"]["wpack"]

    @staticmethod
    def key_of(net, X, packing, n_threads, block_rows, return_sequences):
        """What a call has to share with the checked one for a plan to
        apply: the packing's contents, the thread count, block size and
        output rows, and the input's form. None where no plan can apply: a
        network the plans do not cover (see ``possible``), or a packing
        whose arrays are not of intp, as the checks require."""
        if (net.jordan is not None or net.embedding_dim is not None
                or net.bidirectional):
            return None
        arrays = [getattr(packing, name, None)
                  for name in ("lengths", "batch_sizes", "offsets")]
        if not all(type(a) is np.ndarray and a.dtype == np.intp for a in arrays):
            return None
        return (tuple(a.tobytes() for a in arrays), n_threads, block_rows,
                return_sequences, isinstance(X, SequenceInput))

    @staticmethod
    def possible(net, pool, X, key, checked):
        """Whether the call of ``key`` (not None: a network ``key_of``
        covers) that ``forward`` has just made, its input ``X`` as the first
        layer read it (``checked``: see above), may be made ready: every
        layer computes its input product step by step, but a token
        network's first (from the tokens), and the input was read in the
        form it was given (in place for a ``SequenceInput``, not a packed
        copy of it)."""
        if not checked:
            return False
        plans = [pool[sfx]["forward_plan"] for ((_, sfx),) in net.specs]
        in_place = key[4]   # the form the call gave its input in (key_of)
        return (all(plan.fuse_input for plan in plans[1:])
                and plans[0].fuse_input != net.token_input
                and isinstance(X, SequenceInput) == in_place == plans[0].in_place)

    def _input(self, X, packing):
        """This call's input and its starts, if the first layer reads it as it
        read the checked call's (values checked), else None."""
        net = self.net
        if net.token_input:
            if not (type(X) is TokenInput and net._input_checked(X, packing)
                    and np.isfinite(X.weights).all()):
                return None
            return X, _EMPTY_STARTS
        if self.in_place:
            if type(X) is not SequenceInput:
                return None
            data, starts = X.data, X.starts
            if not (type(data) is np.ndarray and net._rows_as_they_are(data)
                    and type(starts) is np.ndarray and starts.dtype == np.intp
                    and starts.shape == (self.n_sequences,)
                    and starts.flags.c_contiguous):
                return None
            if (_dense.first_sequence_outside(starts, packing.lengths, len(data)) >= 0
                    or not _dense.all_finite_rows(data, starts, packing.lengths)):
                return None
            return data, starts
        if not (net._input_checked(X, packing) and _dense.all_finite(X)):
            return None
        return X, _EMPTY_STARTS

    def run(self, X, packing, initial_state=None):
        """``Network.forward``'s ``(Z, Y, states)`` for a call of this plan's
        key, or None where what was checked no longer holds."""
        net = self.net
        if (net.weights is not self.weights
                or _bookkeeping.layout(tuple(net.weights.values())) != self.layout):
            return None
        inp = self._input(X, packing)
        if inp is None:
            return None
        B, dtype = self.n_sequences, net.dtype
        if initial_state is not None:
            if not net._states_as_they_are(initial_state, B):
                return None
            try:
                _check_states_finite(initial_state)
            except ValueError:
                return None
        X, starts = inp
        states = []
        for k, (spec, call, plan, w, G, H) in enumerate(self.layers):
            plan.put_input(w, X, G, self.n_threads)
            if not plan.fuse_input:
                X = _empty(dtype)   # token input: the kernel reads G
            h, c = _new_states(spec, B, dtype, *(
                (None, None) if initial_state is None else initial_state[k][0]))
            _cells.run_forward(call, X, starts, h, c)
            states.append([(h, c)])
            # the next layer reads this one's outputs, packed
            X, starts = H, _EMPTY_STARTS
        top = H if self.return_sequences else h
        Z = np.empty((len(top), net.n_output), dtype)
        return (*net._output(top, Z, self.head_pack), states)


class _TrainingPlan:
    """A ``loss_gradient`` call made ready for repeated training batches of
    one number of sequences (``key_of``; their lengths may differ): each
    layer's forward and backward kernel calls on the buffers of its
    ``_ForwardPlan`` and ``_BackwardPlan``, read once
    (``_cells.ForwardArgs``, ``_cells.BackwardArgs``), so that a batch only
    passes the kernels its input and packing, rather than some eighty
    arrays, and skips the checks that hold for it too. A 2-sequence, 1-step
    batch took 45 µs rather than 95, and a 32-unit LSTM benchmark batch
    (with its clipping and Adam step) 13% less time on 2 threads
    (``benchmarks/OPTIMISATIONS.md``, session 18).

    It covers a unidirectional stack (not Jordan, no embedding or token
    input) whose layers compute their input product step by step and sum
    their weights' gradients in the backward kernel (up to about 1 MiB of
    weights, in blocks of enough sequences: ``layers.fused_weight_gradients``),
    trained without truncation
    or initial states: the benchmark's and the estimators' usual batches,
    dropout between layers and recurrent dropout included (the key tells
    calls with recurrent dropout from calls without: the plan binds a mask
    buffer per layer into its kernel calls and draws into it at each
    batch).
    ``loss_gradient`` makes one after the second call in a row of the same
    key whose arguments it checked in full, and uses it while the
    parameters and gradients are the same arrays, of the same shapes,
    dtype and strides, for packings of as many sequences and blocks and
    at most as many rows as its buffers hold; ``run`` returns
    None where any of that fails, and ``loss_gradient`` takes its general
    path, which raises the error if there is one.

    The results are those of the general path: the same kernels on the
    same values. One difference in form: the output layer reads the top
    layer's final states (the outputs at each sequence's last step), and
    its gradient enters the backward kernel as that of the final states
    rather than as rows of a gradient that is zero elsewhere; the sums are
    the same (a zero's sign aside).

    The squared error of an identity output layer without dropout (the
    regressors' batches) runs as one compiled call, ``step``
    (``_cells.TrainingStep``), from the packed input to the gradients;
    the other batches run the steps below in Python.
    """

    def __init__(self, net, key, packing):
        self.net, self.key = net, key
        (self.B, (_, n_threads), (_, block_rows), self.return_sequences,
         self.masked) = key
        self.n_threads, self.block_rows_arg = n_threads, block_rows
        bs, off = packing.batch_sizes, packing.offsets
        self.block_rows, starts = block_cut(bs, block_rows)
        self.weights, self.grad_views = net.weights, net.grad_views
        # held, so that their addresses stay theirs (see _same_arrays)
        self.arrays = tuple(net.weights.values()) + tuple(net.grad_views.values())
        self.layout = _bookkeeping.layout(self.arrays)
        dtype, B = net.dtype, self.B
        slot, back = net._pool[("forward", 0)], net._pool["backward"]
        specs = [spec_sfx for (spec_sfx,) in net.specs]
        fplans = [slot[sfx]["forward_plan"] for _, sfx in specs]
        bplans = [back[sfx]["backward_plan"] for _, sfx in specs]
        self.capacity = min(p.n_rows for p in fplans + bplans)
        # the output layer's packing buffer (_head's), its outputs' buffer,
        # and the loss terms' weights without sample_weight
        self.head_pack = net._pool["head"]["wpack"]
        self.Z = np.empty((self.capacity if self.return_sequences else B,
                           net.n_output), dtype)
        self.unit_weights = np.ones(B, dtype)
        self.unit_weights.flags.writeable = False
        # the packed input rows of a SequenceInput (see read): the pool's
        # buffer, as the general path's _read_in_place uses
        self.input_rows = _take(net._pool, "input", (self.capacity, net.n_input),
                                dtype)
        # dL/d(input) of each layer above the first: the dL/dH of the one below
        d_in = [None] + [_take(back[sfx], "dX", (self.capacity, spec.n_input), dtype)
                         for spec, sfx in specs[1:]]
        self.layers = []
        for k, ((spec, sfx), fplan, bplan) in enumerate(zip(specs, fplans, bplans)):
            w, g = net._layer(net.weights, sfx), net._layer(net.grad_views, sfx)
            # the recurrent-dropout mask, drawn into at each batch
            rmask = _aligned((B, spec.hidden), dtype) if self.masked else None
            forward, rows = fplan.ready(w, bs, off, n_threads, starts, whole=True,
                                        mask=rmask)
            G, H, C, Hprev, aux, xhat, rstd = rows
            # the initial states: zeros, read only
            zeros = _aligned((B, spec.hidden), dtype, zero=True)
            cache = LayerCache(
                np.empty((0, spec.n_input), dtype), G, H, C, Hprev, aux, xhat,
                rstd, zeros, zeros if spec.cell == "lstm" else _empty(dtype),
                _empty(dtype) if rmask is None else rmask, bs, off,
                self.block_rows, starts)
            if k + 1 < len(specs):
                dH = d_in[k + 1]
            elif self.return_sequences:
                dH = _aligned((self.capacity, spec.hidden), dtype)
            else:
                # the output layer's gradient enters as the final states'
                dH = _empty(dtype)
            dh = _aligned((B, spec.hidden), dtype)
            dc = (_aligned((B, spec.hidden), dtype) if spec.cell == "lstm"
                  else _empty(dtype))
            backward = _cells.BackwardArgs(bplan.args(
                spec, w, cache, cache.X if len(bplan.dWih_t) else _empty(dtype),
                dH, dh, dc, bplan.dG, bplan.dGh, np.empty(0, np.intp), n_threads))
            # the partial sums' additions to the gradients, and their zeroing
            # before each batch: every partial sum is in one of the calls
            calls = bplan.sum_calls(spec, g)
            if ({id(a) for a in bplan.partials}
                    != {id(parts) for parts, _, _ in calls}):  # pragma: no cover
                raise AssertionError("sum_calls must cover every partial sum")
            self.layers.append(_PlanLayer(spec, w, g, fplan, bplan, forward,
                                          backward, _dense.BlockSums(calls), H,
                                          dH, dh, dc, d_in[k], rmask))
        self.step = self._compiled_step()

    def _compiled_step(self):
        """The plan's batch in one compiled call (``_cells.TrainingStep``)
        where its key allows one: no recurrent dropout, the output layer
        (identity) on the final states; None otherwise. ``run`` uses it for
        the squared error without dropout."""
        net = self.net
        if self.masked or self.return_sequences or net.output_activation != "identity":
            return None
        layers = [_cells.StepLayer(
            layer.forward, layer.backward, layer.sums,
            (layer.w["bias_ih"], layer.w["bias_hh"], layer.fplan.bias_sum),
            layer.w["weight_ih"], layer.dh, layer.dc, layer.d_in)
            for layer in self.layers]
        head = (net.weights["output.weight"], net.weights["output.bias"],
                net.grad_views["output.weight"], net.grad_views["output.bias"],
                self.head_pack, self.Z, np.empty_like(self.Z),
                net._head_work(self.n_threads))
        return _cells.TrainingStep(layers, net.grads, head, self.n_threads)

    def read(self, X, packing):
        """The packed rows of a ``SequenceInput`` X, copied into the input
        buffer of the pool by ``_dense.pack_rows``, which checks the packing,
        that every sequence lies in the data, and that the values are
        finite; None where the data is not C-contiguous rows of the
        network's dtype and width, or where any check fails (the general
        path, ``_read_in_place``, then names the problem)."""
        net = self.net
        data, starts = X.data, X.starts
        if not (net._packs_as_they_are(data) and type(starts) is np.ndarray
                and starts.dtype == np.intp and starts.shape == (self.B,)
                and starts.flags.c_contiguous and not net.token_input):
            return None
        off = packing.offsets
        if not (type(off) is np.ndarray and off.dtype == np.intp and off.ndim == 1
                and off.size and int(off[-1]) <= self.capacity):
            return None
        rows = self.input_rows[:int(off[-1])]
        try:
            finite = _dense.pack_rows(data, starts, packing.batch_sizes, off, rows,
                                      self.n_threads)
        except ValueError:
            return None
        return rows if finite else None

    def _same_arrays(self):
        """Whether the network's parameters and gradients are still the
        arrays the calls were made ready with, laid out as they were."""
        net = self.net
        return (net.weights is self.weights and net.grad_views is self.grad_views
                and _bookkeeping.layout(tuple(net.weights.values())
                                        + tuple(net.grad_views.values()))
                == self.layout)

    @staticmethod
    def key_of(net, packing, n_threads, block_rows, return_sequences, dropout,
               recurrent_dropout, tbptt, initial_state):
        """What a call has to share with the checked one for a plan to
        apply: the number of sequences, thread count, block size (their
        types too: the checks tell 2 from 2.0), output rows and whether it
        has recurrent dropout. None where
        no plan can apply: a network or a call the plans do not cover (see
        above), or a packing whose ``batch_sizes`` is not a non-empty array
        of intp."""
        if (net.jordan is not None or net.token_input or net.bidirectional
                or tbptt is not None or initial_state is not None):
            return None
        bs = getattr(packing, "batch_sizes", None)
        if not (type(bs) is np.ndarray and bs.dtype == np.intp and bs.ndim == 1
                and bs.size):
            return None
        return (int(bs[0]), (type(n_threads), n_threads),
                (type(block_rows), block_rows), bool(return_sequences),
                bool(recurrent_dropout))

    @staticmethod
    def possible(net, X, packing, checked):
        """Whether the call ``loss_gradient`` has just made, of a key
        ``key_of`` gives, may be made ready: its arguments were checked in
        full (``checked``: see ``_layer_args_checked``), its input read as
        packed rows as given, and every layer computed its input product
        step by step and summed its weights' gradients in the kernel."""
        if not (checked and type(X) is np.ndarray and net._input_checked(X, packing)):
            return False
        slot, back = net._pool[("forward", 0)], net._pool["backward"]
        for ((_, sfx),) in net.specs:
            fplan = slot[sfx]["forward_plan"]
            if not (fplan.fuse_input and not fplan.in_place
                    and back[sfx]["backward_plan"].fused):
                return False
        return True

    def run(self, X, packing, targets, loss, sample_weight, alpha, dropout=0.0,
            recurrent_dropout=0.0, rng=None):
        """``loss_gradient``'s ``(loss, final_state)`` for a call of this
        plan's key on the checked, packed input ``X`` (finite), or None
        where what the plan needs does not hold (see above). Dropout as the
        general path applies it, masks drawn from ``rng`` in its order: the
        recurrent-dropout mask of each layer (the key tells whether there
        are any), then the mask of each layer's input above the first."""
        net = self.net
        if not self._same_arrays():
            return None
        bs, off = packing.batch_sizes, packing.offsets
        if not (type(off) is np.ndarray and off.dtype == np.intp and off.ndim == 1
                and bs.flags.c_contiguous and off.flags.c_contiguous):
            return None
        # (key_of took batch_sizes of intp, 1-D)
        if not _bookkeeping.packing_is_valid(bs, off, _checks.INT32_MAX):
            return None
        n_rows = int(off[-1])
        if int(bs[0]) != self.B or n_rows > self.capacity:
            return None
        block_rows, starts = block_cut(bs, self.block_rows_arg)
        if (block_rows != self.block_rows or type(X) is not np.ndarray
                or not net._input_checked(X, packing)):
            return None
        dtype, n_threads = net.dtype, self.n_threads
        if sample_weight is None and not self.return_sequences:
            row_weight, total_weight = self.unit_weights, float(self.B)
        else:
            row_weight, total_weight = _row_weights(packing, sample_weight,
                                                    self.return_sequences, dtype)
        if (self.step is not None and loss == "squared_error" and not dropout
                and type(targets) is np.ndarray and targets.dtype == dtype
                and targets.shape == self.Z.shape and targets.flags.c_contiguous):
            pairs = [_new_states(layer.spec, self.B, dtype) for layer in self.layers]
            # the weights as loss_and_gradient passes them to squared_error
            value = self.step.run(X, bs, off, starts, targets,
                                  np.ascontiguousarray(row_weight, dtype),
                                  total_weight, pairs)
            return value + net._penalty(alpha, total_weight), [[p] for p in pairs]
        net.grads[:] = 0
        if self.masked:
            for layer in self.layers:
                layer.rmask[...] = _dropout_mask(rng, layer.rmask.shape,
                                                 1.0 - recurrent_dropout, dtype)
        states, inputs, drops, inp = [], [], [], X
        keep = 1.0 - dropout
        for k, layer in enumerate(self.layers):
            drop = None
            if k > 0 and dropout:
                drop = _dropout_mask(rng, inp.shape, keep, dtype)
                inp = inp * drop
            inputs.append(inp)
            drops.append(drop)
            layer.fplan.add_biases(layer.w)
            h, c = _new_states(layer.spec, self.B, dtype)
            _cells.run_forward(layer.forward, inp, _EMPTY_STARTS, h, c, bs, off,
                               starts)
            states.append([(h, c)])
            inp = layer.H[:n_rows]
        top = self.layers[-1]
        feats = top.H[:n_rows] if self.return_sequences else h
        Z, Y = net._output(feats, self.Z[:len(feats)], self.head_pack)
        value, dZ = loss_and_gradient(loss, net.output_activation, Z, Y, targets,
                                      row_weight, total_weight)
        d_feats = net._head_gradient(feats, dZ, n_threads)
        if self.return_sequences:
            top.dH[:n_rows] = d_feats
            top.dh.fill(0)
        else:
            top.dh[...] = d_feats
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            if layer is not top:
                layer.dh.fill(0)
            layer.dc.fill(0)
            layer.sums.zero_parts()
            _cells.run_backward(layer.backward, inputs[k], bs, off, starts)
            layer.sums.add()
            if k > 0:
                d_in = layer.d_in[:n_rows]
                _dense.matmul(layer.bplan.dG[:n_rows], layer.w["weight_ih"],
                              d_in, False, 0.0, n_threads)
                if drops[k] is not None:
                    d_in *= drops[k]
        value += net._penalty(alpha, total_weight)
        return value, states


class _PlanLayer(NamedTuple):
    """One layer of a ``_TrainingPlan``: its spec, parameters and gradients,
    plans and prepared calls (the kernels', and ``sums``, the additions of
    the partial sums per block), and the buffers the plan reads or fills: the
    outputs ``H``, dL/dH from above ``dH`` (empty: none but through the
    final states), dL/d(final states) ``dh`` and ``dc`` (overwritten by the
    initial states'), dL/d(input) ``d_in`` (None for the first layer), and
    the recurrent-dropout mask ``rmask`` (None without)."""

    spec: LayerSpec
    w: dict
    g: dict
    fplan: object
    bplan: object
    forward: object
    backward: object
    sums: object
    H: np.ndarray
    dH: np.ndarray
    dh: np.ndarray
    dc: np.ndarray
    d_in: object
    rmask: object


def _not_finite():
    raise ValueError("X contains NaN or infinity; remove or impute those values "
                     "first")


def _check_states_finite(states):
    """Raise ValueError if the initial states (nested lists of arrays or
    of numbers; None: zeros) hold NaN or infinity, before any kernel reads
    them: the layers' own finite checks are off in ``forward`` and
    ``loss_gradient`` (see ``_check_input``), and a NaN state would
    otherwise come out as NaN outputs. Anything else (other types, shapes)
    is left to the layers' checks."""
    if states is None:
        return
    if isinstance(states, (list, tuple)):
        for s in states:
            _check_states_finite(s)
        return
    if isinstance(states, (np.ndarray, float, np.floating)):
        values = np.asarray(states)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise ValueError("initial_state contains NaN or infinity; pass "
                             "the states a previous call returned, or None "
                             "to start from zeros")


def _check_dropout(dropout, recurrent_dropout, rng):
    """Dropout rates in [0, 1), and a generator to draw their masks from."""
    for name, rate in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
        if not (isinstance(rate, numbers.Real) and 0.0 <= rate < 1.0):
            raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("dropout draws its masks from rng: pass a "
                        "numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")


def _dropout_mask(rng, shape, keep, dtype):
    """A dropout mask drawn from ``rng``: each entry ``1 / keep`` with
    probability ``keep``, else 0."""
    return (rng.random(shape) < keep).astype(dtype) / keep


def _is_int(value):
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, (bool, np.bool_)))


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


# what Network.__getstate__ stores besides the parameters: the constructor's
# arguments, with a check of each one's type
_STATE_CONFIG = {
    "cell": lambda v: isinstance(v, str),
    "n_input": _is_int,
    "hidden_sizes": lambda v: isinstance(v, (tuple, list)) and all(map(_is_int, v)),
    "n_output": _is_int,
    "bidirectional": _is_bool,
    "activation": lambda v: isinstance(v, str),
    "output_activation": lambda v: isinstance(v, str),
    "peephole": _is_bool,
    "reset_after": _is_bool,
    "layer_norm": _is_bool,
    "embedding_dim": lambda v: v is None or _is_int(v),
    "token_input": _is_bool,
    "dtype": lambda v: isinstance(v, (str, np.dtype)),
}


def _check_state_config(state):
    """The constructor's arguments from a saved state, type-checked."""
    if not isinstance(state, dict):
        raise ValueError(f"invalid saved Network: the state must be a dict, got "
                         f"{type(state).__name__}")
    missing = [key for key in (*_STATE_CONFIG, "params") if key not in state]
    if missing:
        raise ValueError(f"invalid saved Network: missing {missing}")
    config = {}
    for key, valid in _STATE_CONFIG.items():
        if not valid(state[key]):
            raise ValueError(f"invalid saved Network: {key}={state[key]!r} has the "
                             "wrong type")
        config[key] = state[key]
    dtype = config["dtype"]
    if (dtype if isinstance(dtype, str) else dtype.name) not in ("float32", "float64"):
        raise ValueError(f"invalid saved Network: dtype={dtype!r}; expected "
                         "float32 or float64")
    config["hidden_sizes"] = tuple(config["hidden_sizes"])
    return config


def _glorot(rng, shape):
    fan_out, fan_in = shape
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(rng, shape):
    a = rng.standard_normal((max(shape), min(shape)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if shape[0] >= shape[1] else q.T


def _activate(Z, kind):
    if kind == "identity":
        return Z
    if kind == "tanh":
        return np.tanh(Z)
    if kind == "sigmoid":
        return _sigmoid(Z)
    with np.errstate(over="ignore"):
        # Z - max(Z) may overflow to -inf for |Z| near the largest float:
        # exp then gives 0, the right limit
        e = np.exp(Z - Z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid(Z):
    # never overflows: exp of a non-positive number only
    e = np.exp(-np.abs(Z))
    return np.where(Z >= 0, 1 / (1 + e), e / (1 + e))


def loss_and_gradient(loss, output_activation, Z, Y, T, weight, total_weight):
    """Weighted loss of some rows and its gradient w.r.t. the pre-activation.

    The loss is ``sum(weight * per_row_loss) / total_weight``; for squared
    error the per-row loss is ``0.5 * mean((y - t)**2)`` over the outputs
    (sklearn's MLP). Log
    losses are computed from the pre-activation ``Z`` when it is known, which
    is exact for any input; Jordan networks only expose ``Y``, which is then
    clipped away from 0 and 1.
    """
    if loss == "squared_error":
        # averaged over the outputs too, as sklearn's MLP; one compiled pass
        Y = np.ascontiguousarray(Y)
        dY = np.empty(Y.shape, Y.dtype)
        value = _dense.squared_error(
            Y, np.ascontiguousarray(T, Y.dtype),
            np.ascontiguousarray(weight, Y.dtype), total_weight, dY)
        if output_activation == "identity":
            dZ = dY
        elif output_activation == "tanh":
            dZ = dY * (1 - Y * Y)
        elif output_activation == "sigmoid":
            dZ = dY * Y * (1 - Y)
        else:
            dZ = Y * (dY - np.sum(dY * Y, axis=1, keepdims=True))
        return value, dZ
    w = (weight / total_weight).astype(Y.dtype)[:, None]
    if loss == "log_loss":
        if output_activation != "softmax":
            raise ValueError("log_loss needs output_activation='softmax'")
        if Z is not None:
            zmax = Z.max(axis=1, keepdims=True)
            with np.errstate(over="ignore"):  # as in _activate
                shifted = Z - zmax
            log_p = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
        else:
            log_p = np.log(np.clip(Y, np.finfo(Y.dtype).tiny, 1))
        if T.ndim == 1:
            # class indices (e.g. the next symbol of a language model): the
            # one-hot matrix over a large vocabulary is never built
            rows = np.arange(len(T))
            value = -float(np.sum(w[:, 0] * log_p[rows, T]))
            dZ = w * Y
            dZ[rows, T] -= w[:, 0]
            return value, dZ
        # classes of zero target weight add nothing, even where log_p is
        # -inf (Z - zmax overflows for |Z| near the largest float): t log p
        # tends to 0 as t does, and 0 * -inf would make the loss NaN
        terms = np.zeros(log_p.shape, log_p.dtype)
        np.multiply(T, log_p, out=terms, where=T != 0)
        value = -float(np.sum(w * terms))
        return value, w * (Y - T)
    if output_activation != "sigmoid":
        raise ValueError("binary_log_loss needs output_activation='sigmoid'")
    if Z is not None:
        # log(1 + exp(z)) - t z, stable for any z
        per = np.logaddexp(0, Z) - T * Z
    else:
        tiny = np.finfo(Y.dtype).tiny
        Yc = np.clip(Y, tiny, 1 - np.finfo(Y.dtype).eps)
        per = -(T * np.log(Yc) + (1 - T) * np.log1p(-Yc))
    value = float(np.sum(w * per))
    return value, w * (Y - T)


def _row_weights(packing, sample_weight, return_sequences, dtype):
    """The weight of each loss term (each sequence's, or with
    ``return_sequences`` each row's, its sequence's weight; ones without
    ``sample_weight``) and their sum."""
    if sample_weight is None:
        sample_weight = np.ones(packing.n_sequences, dtype)
    if return_sequences:
        row_weight = np.concatenate(
            [sample_weight[: packing.batch_sizes[t]] for t in range(packing.n_steps)])
    else:
        row_weight = sample_weight
    return row_weight, float(row_weight.sum())


def _slice_masks(masks, n):
    """Recurrent masks of the first ``n`` sequences (those still running)."""
    if masks is None:
        return None
    if masks and isinstance(masks[0], list):
        return [[m[:n] for m in layer] for layer in masks]
    return [m[:n] for m in masks]


def _carry(states, stop, packing, net):
    """States to start the window at ``stop`` with: those of the sequences
    still running (the first ``batch_sizes[stop]``)."""
    if stop >= packing.n_steps:
        return states
    n = int(packing.batch_sizes[stop])
    if net.jordan is not None:
        return [s[:n] for s in states]
    return [[(h[:n], c[:n] if c.size else c) for h, c in layer] for layer in states]


def _update_final(final, new, net):
    """Overwrite the final states of the sequences that ran in a window."""
    if final is None:
        return new
    def put(dst, src):
        if src is not None and src.size:
            dst[: src.shape[0]] = src
    if net.jordan is not None:
        for dst, src in zip(final, new):
            put(dst, src)
        return final
    for layer_f, layer_n in zip(final, new):
        for (hf, cf), (hn, cn) in zip(layer_f, layer_n):
            put(hf, hn)
            put(cf, cn)
    return final


def _pad_states(d_init, n, net):
    """Pad gradients w.r.t. a window's initial states to ``n`` sequences."""
    def pad(a):
        if a is None or a.size == 0:
            return a
        out = np.zeros((n,) + a.shape[1:], a.dtype)
        out[: a.shape[0]] = a
        return out
    if net.jordan is not None:
        return [pad(a) for a in d_init]
    return [[(pad(dh), pad(dc)) for dh, dc in layer] for layer in d_init]


def _scatter_bidirectional(d_feats, packing, h):
    """Gradient w.r.t. [h_fwd(last step), h_bwd(first step)] features, put
    back at the rows of the top layer's packed output."""
    d_top = np.zeros((packing.n_rows, 2 * h), d_feats.dtype)
    d_top[packing.last_rows(), :h] = d_feats[:, :h]
    d_top[np.arange(packing.n_sequences), h:] += d_feats[:, h:]
    return d_top
