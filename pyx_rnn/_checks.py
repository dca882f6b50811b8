"""Argument validation for the Python entry points of the compiled kernels.

The kernels (``_cells``, ``_jordan``, ``_dense``) check nothing: they index
raw pointers with the sizes they are given, so an array of the wrong shape,
dtype or layout reads or writes out of bounds and can crash the interpreter.
``pyx_rnn.layers.layer_forward``, ``layer_backward``, ``jordan_forward`` and
``jordan_backward`` therefore call one of the ``check_*_args`` functions below
as their first statement (``check_gather_rows_args`` and
``check_scatter_add_rows_args`` are for the callers of the token kernels
``_dense.gather_rows`` / ``scatter_add_rows``). Each one

* raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape,
  size, value or layout) with a message that names the argument, what was
  expected and how to fix it, before any compiled code runs;
* raises ``MemoryError`` when the buffers the entry point would allocate
  exceed ``MAX_WORKSPACE_BYTES``, and ``ValueError`` when a size would
  overflow the kernels' 32-bit ``int`` indices;
* returns the array arguments fixed up: inputs that are strided, in Fortran
  order or read-only are copied to C-contiguous, writable arrays (the kernels
  need that layout), so such inputs are accepted. Parameters (``w``, ``ws``,
  ``w_out``, ``b_out``) and gradient buffers (``grads``, ``g_out``) are never
  copied: the network hands views into its flat parameter and gradient
  vectors and expects the gradients to be written into them, so a parameter
  or gradient array that is not C-contiguous (or not writable) is rejected.

All checks are vectorised NumPy operations or loops over parameter names and
layers, never over rows or steps, so their cost is small next to the kernels;
the most expensive one is the single pass over every input that rejects NaN
and infinity (see ``finite_checks`` to switch it off).
"""

import math
import operator
import threading
from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from . import _bookkeeping
from ._cells import panel_columns

__all__ = [
    "MAX_THREADS",
    "MAX_WORKSPACE_BYTES",
    "check_jordan_backward_args",
    "check_jordan_forward_args",
    "check_layer_backward_args",
    "check_gather_rows_args",
    "check_layer_forward_args",
    "check_scatter_add_rows_args",
    "finite_checks",
]

# The kernels index with C ``int``: every count and every product of sizes
# that they form in ``int`` arithmetic must stay below 2**31.
INT32_MAX = 2**31 - 1

# Upper bound on the buffers (in bytes) one call may allocate. NumPy does not
# fail early on Linux for a huge request: with memory overcommit the
# allocation succeeds and the process is killed by the OOM killer when the
# kernels touch the pages, which is a crash, not an exception. A fixed cap
# turns such requests into a ``MemoryError`` with an explanation. 8 GiB is far
# above any batch the package is meant for (a batch that large should be split
# or trained with truncated BPTT); raise this module attribute on a machine
# with more memory if needed.
MAX_WORKSPACE_BYTES = 8 * 2**30

# OpenMP creates one thread per requested thread whatever the work; past a few
# tens of thousands the thread creation fails and libgomp crashes the process.
# No machine this targets has more than 1024 hardware threads.
MAX_THREADS = 1024

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_local = threading.local()


def _finite_enabled():
    return getattr(_local, "check_finite", True)


class finite_checks:
    """Turn the NaN/infinity checks on or off in this thread, within a block.

    They are on by default. A caller that feeds the entry points with its own
    intermediate results (a training loop that detects divergence from a NaN
    loss, say) can switch them off for its internal calls::

        with finite_checks(False):
            H, h_n, c_n, cache = layer_forward(...)

    Every other check stays on: non-finite values cannot make the kernels
    read or write out of bounds, they only propagate. (A class rather than a
    generator-based context manager: it is entered at every call of the
    network, and this costs a quarter as much.)
    """

    __slots__ = ("_enabled", "_previous")

    def __init__(self, enabled):
        self._enabled = bool(enabled)

    def __enter__(self):
        self._previous = _finite_enabled()
        _local.check_finite = self._enabled

    def __exit__(self, *exc_info):
        _local.check_finite = self._previous


# --------------------------------------------------------------------------
# scalars
# --------------------------------------------------------------------------


def _integer(value, name, where, minimum=1, maximum=INT32_MAX, why=""):
    """``value`` as a Python int in ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be an integer, got the boolean "
                        f"{value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an integer, got "
                        f"{type(value).__name__} {value!r}") from None
    if v < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {v}")
    if v > maximum:
        raise ValueError(f"{where}: {name}={v} is too large: the limit is "
                         f"{maximum}{why}")
    return v


def _int32(value, what, where, fix):
    """Reject a size the kernels would compute in 32-bit ``int``."""
    if value > INT32_MAX:
        raise ValueError(
            f"{where}: {what} = {value} exceeds 2**31 - 1, the largest index "
            f"the compiled kernels can handle (they use 32-bit ints); {fix}")


def _check_n_threads(n_threads, where):
    _integer(n_threads, "n_threads", where, 1, MAX_THREADS,
             " (pyx_rnn._checks.MAX_THREADS); use at most the number of CPU "
             "cores, e.g. os.cpu_count()")


def _check_flag(value, name, where):
    if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, np.integer)) and value in (0, 1)):
        return
    raise TypeError(f"{where}: {name} must be a bool, got "
                    f"{type(value).__name__} {value!r}")


def _choice(value, name, choices, where):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: {name}={value!r} is not supported; use one "
                         f"of {sorted(choices)}")


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------


def _dtype_name(dtype):
    return np.dtype(dtype).name


def _as_array(a, name, where):
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: {name} must be a numpy array, and "
                        f"np.asarray({name}) failed: {exc}") from None


def _check_dtype(a, name, dtype, where, ref="X"):
    if a.dtype != dtype:
        raise TypeError(
            f"{where}: {name} has dtype {a.dtype} but {ref} has dtype "
            f"{_dtype_name(dtype)}; every array of one call must share {ref}'s "
            f"dtype: pass {name}.astype(np.{_dtype_name(dtype)})")


def _check_shape(a, name, shape, where, meaning):
    if a.ndim != len(shape):
        raise ValueError(f"{where}: {name} must be {len(shape)}-D with shape "
                         f"{shape} {meaning}, got a {a.ndim}-D array of shape "
                         f"{a.shape}")
    if a.shape != shape:
        raise ValueError(f"{where}: {name} has shape {a.shape} but must have "
                         f"shape {shape} {meaning}")


def _float_input(a, name, where, dtype, shape, meaning):
    """An input array (copied later if needed): dtype and shape checked.
    ``dtype`` None: any of float32/float64 (this array sets the dtype)."""
    a = _as_array(a, name, where)
    if dtype is None:
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{where}: {name} has dtype {a.dtype}; the kernels take float32 "
                f"or float64 (native byte order) only: convert it first, e.g. "
                f"{name}.astype(np.float64)")
    else:
        _check_dtype(a, name, dtype, where)
    _check_shape(a, name, shape, where, meaning)
    return a


def _needs_copy(a):
    return not (a.flags.c_contiguous and a.flags.writeable)


def _c_writable(a):
    """``a`` itself when C-contiguous and writable, else such a copy."""
    if _needs_copy(a):
        return np.array(a, order="C", copy=True)
    return a


def _check_finite(where, items):
    """Reject NaN and infinity in the ``(name, array)`` pairs of ``items``.

    One pass per array: a sum is finite only when every term is, so only a
    sum that overflowed (or an array that does hold NaN or infinity) needs
    the exact, element-wise test."""
    if not _finite_enabled():
        return
    with np.errstate(all="ignore"):
        for name, a in items:
            if a is None or a.size == 0:
                continue
            if math.isfinite(np.add.reduce(a, axis=None)):
                continue
            if np.isfinite(a).all():
                continue
            raise ValueError(
                f"{where}: {name} contains NaN or infinity; the kernels need "
                f"finite values: clean them (e.g. np.nan_to_num({name})) or "
                f"drop those rows")


def _param_array(a, name, shape, dtype, where, source, writable=True):
    """A parameter or gradient buffer: never copied, so it must already have
    the right type, dtype, shape and layout."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: {name} must be a numpy.ndarray, got "
                        f"{type(a).__name__}")
    _check_dtype(a, name, dtype, where)
    _check_shape(a, name, shape, where, f"(from {source})")
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{where}: {name} is not C-contiguous (strides {a.strides}); "
            f"parameters and gradients are used in place, never copied, so "
            f"pass a C-contiguous array: np.ascontiguousarray({name})")
    if writable and not a.flags.writeable:
        raise ValueError(
            f"{where}: {name} is read-only; the kernels take writable buffers: "
            f"pass a writable copy, {name}.copy()")


def _param_dict(w, name, shapes, dtype, where, source, finite=True):
    """A dict of parameters (or gradients) with exactly the names and shapes
    of ``shapes``."""
    if not isinstance(w, Mapping):
        raise TypeError(f"{where}: {name} must be a dict of arrays, got "
                        f"{type(w).__name__}")
    if len(w) == len(shapes) and all(_good_param(w.get(k), shape, dtype)
                                     for k, shape in shapes.items()):
        pass   # fast path: every entry is right
    else:
        _param_dict_errors(w, name, shapes, dtype, where, source)
    if finite:
        _check_finite(where, [(f"{name}[{k!r}]", w[k]) for k in shapes])


def _good_param(a, shape, dtype):
    if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
        return False
    flags = a.flags
    return flags.c_contiguous and flags.writeable


def _param_dict_errors(w, name, shapes, dtype, where, source):
    """Raise the error that describes what is wrong with ``w``."""
    missing = [k for k in shapes if k not in w]
    if missing:
        raise ValueError(
            f"{where}: {name} is missing {missing} (shapes "
            f"{[shapes[k] for k in missing]}), required by {source}; pass "
            f"every array of {source}")
    extra = [k for k in w if k not in shapes]
    if extra:
        raise ValueError(
            f"{where}: {name} has unexpected entries {extra}; {source} has "
            f"{list(shapes)}: remove them or build the spec with the options "
            f"(peephole, layer_norm) that use them")
    for k, shape in shapes.items():
        _param_array(w[k], f"{name}[{k!r}]", shape, dtype, where, source)


def _sequence(a, name, length, where, what):
    if isinstance(a, (str, bytes, np.ndarray)) or not isinstance(a, Sequence):
        raise TypeError(f"{where}: {name} must be a list of {length} {what}, "
                        f"got {type(a).__name__}")
    if len(a) != length:
        raise ValueError(f"{where}: {name} must have one entry per layer "
                         f"({length}), got {len(a)}")
    return list(a)


# --------------------------------------------------------------------------
# packing, pools, truncation
# --------------------------------------------------------------------------


def _index_array(a, name, where):
    a = _as_array(a, name, where)
    if a.dtype != np.intp:
        raise TypeError(
            f"{where}: {name} must have dtype intp ({np.dtype(np.intp).name}), "
            f"got {a.dtype}; build the packing with "
            f"pyx_rnn.packing.Packing.from_lengths or convert with "
            f"np.asarray({name}, dtype=np.intp)")
    if a.ndim != 1:
        raise ValueError(f"{where}: {name} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_packing(batch_sizes, offsets, where):
    """Validated, contiguous ``(batch_sizes, offsets)``; see docs/engine.md.
    One compiled pass over them (a training batch of variable lengths
    brings a new packing); where it finds them wrong, ``_validate_packing``
    names what is."""
    bs = _index_array(batch_sizes, "batch_sizes", where)
    off = _index_array(offsets, "offsets", where)
    if not _bookkeeping.packing_is_valid(bs, off, INT32_MAX):
        _validate_packing(bs, off, where)
        raise AssertionError(f"{where}: packing_is_valid refused a packing "
                             f"_validate_packing accepts")   # pragma: no cover
    return bs, off


def _validate_packing(bs, off, where):
    if bs.size == 0:
        raise ValueError(f"{where}: batch_sizes is empty; a batch needs at "
                         f"least one step of one sequence")
    if bs.size > 1 and (bs[1:] > bs[:-1]).any():
        t = int(np.flatnonzero(bs[1:] > bs[:-1])[0]) + 1
        raise ValueError(
            f"{where}: batch_sizes must be non-increasing (sequences sorted "
            f"longest first), but batch_sizes[{t}] = {bs[t]} > "
            f"batch_sizes[{t - 1}] = {bs[t - 1]}; use Packing.from_lengths")
    if bs[-1] < 1:   # non-increasing: the last entry is the smallest
        t = int(np.flatnonzero(bs < 1)[0])
        raise ValueError(
            f"{where}: batch_sizes must be >= 1 at every step, got "
            f"batch_sizes[{t}] = {bs[t]}; steps that no sequence reaches do "
            f"not exist in the packed layout (use Packing.from_lengths)")
    _int32(int(bs.size), "the number of steps len(batch_sizes)", where,
           "split the sequences into shorter windows")
    _int32(int(bs[0]), "the number of sequences batch_sizes[0]", where,
           "use smaller batches")
    if off.size != bs.size + 1:
        raise ValueError(
            f"{where}: offsets must have len(batch_sizes) + 1 = {bs.size + 1} "
            f"entries (the first row of every step, then the number of rows), "
            f"got {off.size}; use Packing.from_lengths")
    expected = np.cumsum(bs)
    if off[0] != 0 or (off[1:] != expected).any():
        bad = np.flatnonzero(np.concatenate(([off[0] != 0], off[1:] != expected)))
        i = int(bad[0])
        e = 0 if i == 0 else int(expected[i - 1])
        raise ValueError(
            f"{where}: offsets must be [0, cumsum(batch_sizes)], but "
            f"offsets[{i}] = {off[i]} where {e} is expected; use "
            f"Packing.from_lengths")


def _check_block_rows(block_rows, batch_sizes, where, cut_by_steps=True):
    """The resolved block size (the default when None, see
    ``layers.default_block_rows``) for a checked packing's ``batch_sizes``."""
    B = int(batch_sizes[0])
    if block_rows is None:
        from .layers import default_block_rows
        block_rows = default_block_rows(batch_sizes, cut_by_steps)
    br = _integer(block_rows, "block_rows", where)
    _int32(B + br, "batch_sizes[0] + block_rows", where, "use a smaller block_rows")
    return br


def _check_pool(pool, where):
    if pool is None:
        return
    if not isinstance(pool, MutableMapping):
        raise TypeError(f"{where}: pool must be None or a dict, got "
                        f"{type(pool).__name__}")
    from .layers import _BackwardPlan, _ForwardPlan
    for key, a in pool.items():
        if (key, type(a)) in (("forward_plan", _ForwardPlan),
                              ("backward_plan", _BackwardPlan)):
            continue   # the layer's own record of its buffers
        if not isinstance(a, np.ndarray) or _needs_copy(a):
            raise ValueError(
                f"{where}: pool[{key!r}] is not a C-contiguous, writable numpy "
                f"array; a pool holds only the buffers the entry points put in "
                f"it: pass an empty dict")


def _check_t_stop(t_stop, B, where):
    if t_stop is None:
        return
    a = _as_array(t_stop, "t_stop", where)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{where}: t_stop must be an integer or an integer array, "
                        f"got dtype {a.dtype}")
    if a.shape not in ((), (B,)):
        raise ValueError(
            f"{where}: t_stop must be a scalar or have shape ({B},) (one entry "
            f"per sequence, batch_sizes[0]), got shape {a.shape}")
    if a.size and (a.max() > np.iinfo(np.intp).max or a.min() < np.iinfo(np.intp).min):
        raise ValueError(f"{where}: t_stop does not fit intp")


def _check_memory(n_elements, itemsize, where, detail):
    """``detail``: a string, or a function that makes it (only on error)."""
    nbytes = int(n_elements) * int(itemsize)
    if nbytes > MAX_WORKSPACE_BYTES:
        if callable(detail):
            detail = detail()
        raise MemoryError(
            f"{where} would allocate about {nbytes / 2**30:.1f} GiB of buffers "
            f"({detail}), more than pyx_rnn._checks.MAX_WORKSPACE_BYTES = "
            f"{MAX_WORKSPACE_BYTES / 2**30:g} GiB; split the batch into smaller "
            f"batches or shorter windows (truncated BPTT), or use smaller "
            f"layers or block_rows. Raise MAX_WORKSPACE_BYTES only if this "
            f"machine has that much memory to spare")


# --------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------


# Specs already found valid (specs are frozen dataclasses: hashable, and
# one that compares equal to a valid spec describes the same layer).
_VALID_SPECS = {}
_MEMO_SIZE = 256


def _check_layer_spec(spec, where):
    """``(n_input, hidden, gates * hidden, spec.shapes())`` of a valid spec."""
    try:
        return _VALID_SPECS[spec]
    except (KeyError, TypeError):
        pass
    result = _validate_layer_spec(spec, where)
    try:
        if len(_VALID_SPECS) >= _MEMO_SIZE:
            _VALID_SPECS.clear()
        _VALID_SPECS[spec] = result
    except TypeError:   # an unhashable field: not memoised
        pass
    return result


def _validate_layer_spec(spec, where):
    from .layers import ACTIVATIONS, CELLS, LayerSpec

    if not isinstance(spec, LayerSpec):
        raise TypeError(f"{where}: spec must be a pyx_rnn.layers.LayerSpec, got "
                        f"{type(spec).__name__}")
    _choice(spec.cell, "spec.cell", CELLS, where)
    _choice(spec.activation, "spec.activation", ACTIVATIONS, where)
    for flag in ("reverse", "reset_after", "peephole", "layer_norm"):
        _check_flag(getattr(spec, flag), f"spec.{flag}", where)
    if spec.peephole and spec.cell != "lstm":
        raise ValueError(f"{where}: spec.peephole=True needs cell='lstm', got "
                         f"cell={spec.cell!r}")
    n_in = _integer(spec.n_input, "spec.n_input", where)
    hidden = _integer(spec.hidden, "spec.hidden", where)
    gh = spec.gates * hidden
    _int32(gh, "spec.gates * spec.hidden", where, "use a smaller hidden size")
    _int32(gh * max(hidden, n_in), "the elements of weight_ih / weight_hh", where,
           "use smaller layers")
    return n_in, hidden, gh, spec.shapes()


def _check_jordan_spec(spec, where):
    from .layers import ACTIVATIONS, OUTPUT_ACTIVATIONS, JordanSpec

    if not isinstance(spec, JordanSpec):
        raise TypeError(f"{where}: spec must be a pyx_rnn.layers.JordanSpec, got "
                        f"{type(spec).__name__}")
    _choice(spec.activation, "spec.activation", ACTIVATIONS, where)
    _choice(spec.output_activation, "spec.output_activation", OUTPUT_ACTIVATIONS,
            where)
    _check_flag(spec.layer_norm, "spec.layer_norm", where)
    if isinstance(spec.hidden, (str, bytes)) or not isinstance(spec.hidden, Sequence):
        raise TypeError(f"{where}: spec.hidden must be a tuple of layer sizes, "
                        f"got {type(spec.hidden).__name__}")
    if len(spec.hidden) == 0:
        raise ValueError(f"{where}: spec.hidden is empty; a Jordan stack needs "
                         f"at least one layer")
    hidden = [_integer(h, f"spec.hidden[{k}]", where)
              for k, h in enumerate(spec.hidden)]
    n_in = _integer(spec.n_input, "spec.n_input", where)
    n_out = _integer(spec.n_output, "spec.n_output", where)
    fed = hidden[1:] + [n_out]
    inputs = [n_in] + hidden[:-1]
    for k in range(len(hidden)):
        _int32(hidden[k] * max(inputs[k], fed[k]),
               f"the elements of layer {k}'s weights", where, "use smaller layers")
    _int32(n_out * hidden[-1], "the elements of w_out", where, "use smaller layers")
    return n_in, hidden, fed, n_out


# --------------------------------------------------------------------------
# token input to the first layer (pyx_rnn.tokens.TokenInput)
# --------------------------------------------------------------------------


def _is_tokens(X):
    from .tokens import TokenInput

    return isinstance(X, TokenInput)


def _check_token_input(X, w, n_rows, n_in, where, wname="w"):
    """A ``TokenInput`` as a layer's X: ids intp in ``[0, n_in)``, weights 1-D
    of the dtype of ``w['weight_ih']`` (which sets the call's dtype), both of
    length ``n_rows``. Returns ``(X, dtype)`` with contiguous arrays."""
    from .tokens import TokenInput

    if not isinstance(w, Mapping) or "weight_ih" not in w:
        raise TypeError(f"{where}: {wname} must be a dict holding 'weight_ih'")
    w_ih = w["weight_ih"]
    if not isinstance(w_ih, np.ndarray) or w_ih.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: {wname}['weight_ih'] must be a float32 or "
                        f"float64 ndarray (with token input it sets the dtype), "
                        f"got {getattr(w_ih, 'dtype', type(w_ih).__name__)}")
    dtype = w_ih.dtype
    ids = _as_array(X.ids, "X.ids", where)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{where}: X.ids must hold integers (token ids), got "
                        f"dtype {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{where}: X.ids must be 1-D, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= n_in):
        bad = int(np.flatnonzero((ids < 0) | (ids >= n_in))[0])
        raise ValueError(
            f"{where}: X.ids[{bad}] = {ids[bad]} is not a token id of this "
            f"layer (0 <= id < spec.n_input = {n_in}); token ids must be below "
            f"the vocabulary size the network was built with")
    if ids.dtype != np.intp:
        ids = ids.astype(np.intp)
    weights = _as_array(X.weights, "X.weights", where)
    if weights.dtype != dtype:
        raise TypeError(
            f"{where}: X.weights has dtype {weights.dtype} but "
            f"{wname}['weight_ih'] has dtype {_dtype_name(dtype)}; with token "
            f"input every array of one call must share the weights' dtype: "
            f"pass X.weights.astype(np.{_dtype_name(dtype)})")
    meaning = "(one per packed row: offsets[-1])"
    _check_shape(ids, "X.ids", (n_rows,), where, meaning)
    _check_shape(weights, "X.weights", (n_rows,), where, meaning)
    ids = np.ascontiguousarray(ids)
    weights = _c_writable(weights)
    return TokenInput(ids, weights), dtype


def _check_cache_tokens(X, n_rows, n_in, where, forward):
    """``cache.X`` that is a ``TokenInput``: returns its weights' dtype."""
    ids, weights = getattr(X, "ids", None), getattr(X, "weights", None)
    if (not isinstance(ids, np.ndarray) or ids.dtype != np.intp
            or not isinstance(weights, np.ndarray)
            or weights.dtype not in FLOAT_DTYPES):
        raise TypeError(f"{where}: cache.X is a TokenInput without intp ids and "
                        f"float32/float64 weights; pass the cache returned by "
                        f"{forward}")
    if ids.shape != (n_rows,) or weights.shape != (n_rows,):
        raise ValueError(f"{where}: cache.X holds {ids.shape} ids and "
                         f"{weights.shape} weights where ({n_rows},) are "
                         f"expected; pass the cache returned by {forward}")
    if not (ids.flags.c_contiguous and weights.flags.c_contiguous):
        raise ValueError(f"{where}: cache.X is not C-contiguous; pass the cache "
                         f"returned by {forward}")
    if ids.size and (ids.min() < 0 or ids.max() >= n_in):
        raise ValueError(f"{where}: cache.X holds token ids outside [0, {n_in}); "
                         f"pass the cache returned by {forward}")
    return weights.dtype


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------


def check_layer_forward_sizes(spec, n_rows, B, br, dtype, *, mask=False,
                              tokens=False, copy_x=False, where="layer_forward"):
    """The sizes of a forward pass fit the kernels' 32-bit ints, and its
    buffers ``MAX_WORKSPACE_BYTES`` (``mask``: a recurrent-dropout mask;
    ``copy_x``: the input is copied first)."""
    n_in, hidden, gh = spec.n_input, spec.hidden, spec.gates * spec.hidden
    lstm, gru = spec.cell == "lstm", spec.cell == "gru"
    _int32(br * gh, "block_rows * gates * hidden", where, "use a smaller block_rows")
    _int32(n_rows * max(n_in, gh), "rows * max(n_input, gates * hidden)", where,
           "split the batch")
    n_blocks = -(-B // br)
    n = (n_rows * gh                                  # G
         + n_rows * hidden * (2 + 2 * lstm + gru)     # H, Hprev, C, aux
         + (n_rows * (gh + spec.gates) if spec.layer_norm else 0)
         + n_blocks * br * gh                         # work
         + B * hidden * (2 + 2 * lstm + mask)
         + (n_in * gh if tokens else                  # W_ih transposed
            n_rows * n_in if copy_x else 0))
    _check_memory(n, np.dtype(dtype).itemsize, where,
                  lambda: f"{n_rows} rows x {gh} gate units, {B} sequences")


def check_layer_forward_args(spec, w, X, batch_sizes, offsets, h0=None, c0=None,
                             mask=None, *, n_threads=1, block_rows=None,
                             pool=None, keep_cache=True):
    """Validate the arguments of ``layer_forward``.

    Returns ``X, batch_sizes, offsets, h0, c0, mask``: C-contiguous writable
    copies where the originals are not. ``c0`` is returned unchanged (and not
    checked) for cells other than the LSTM, which ignore it.
    """
    where = "layer_forward"
    n_in, hidden, gh, shapes = _check_layer_spec(spec, where)
    _check_n_threads(n_threads, where)
    bs, off = _check_packing(batch_sizes, offsets, where)
    B, n_rows = int(bs[0]), int(off[-1])
    br = _check_block_rows(block_rows, bs, where)
    tokens = _is_tokens(X)
    if tokens:
        X, dtype = _check_token_input(X, w, n_rows, n_in, where)
    else:
        X = _float_input(X, "X", where, None, (n_rows, n_in),
                         "(offsets[-1] rows, spec.n_input columns)")
        dtype = X.dtype
    _param_dict(w, "w", shapes, dtype, where, "spec.shapes()", finite=False)
    lstm = spec.cell == "lstm"
    state = "(batch_sizes[0] sequences, spec.hidden)"
    if h0 is not None:
        h0 = _float_input(h0, "h0", where, dtype, (B, hidden), state)
    if lstm and c0 is not None:
        c0 = _float_input(c0, "c0", where, dtype, (B, hidden), state)
    if mask is not None:
        mask = _float_input(mask, "mask", where, dtype, (B, hidden), state)
    _check_pool(pool, where)
    if not isinstance(keep_cache, (bool, np.bool_)):
        raise TypeError(f"{where}: keep_cache must be a bool, got "
                        f"{type(keep_cache).__name__} {keep_cache!r}")

    check_layer_forward_sizes(
        spec, n_rows, B, br, dtype, mask=mask is not None, tokens=tokens,
        copy_x=not tokens and _needs_copy(X))

    if not tokens:
        X = _c_writable(X)
    if h0 is not None:
        h0 = _c_writable(h0)
    if lstm and c0 is not None:
        c0 = _c_writable(c0)
    if mask is not None:
        mask = _c_writable(mask)
    x_item = ("X.weights", X.weights) if tokens else ("X", X)
    _check_finite(where, [x_item] + [(f"w[{k!r}]", w[k]) for k in shapes]
                  + [("h0", h0), ("c0", c0 if lstm else None), ("mask", mask)])
    return X, bs, off, h0, c0, mask


class _CacheHint:
    """The end of a cache error message, formatted only when raised (the
    repr of a spec is slow next to the checks)."""

    def __init__(self, forward, spec):
        self.forward, self.spec = forward, spec

    def __format__(self, format_spec):
        return (f"; the cache must be the one {self.forward} returned for "
                f"this same spec ({self.spec})")


def _check_cache_header(cache, cls, forward, n_in, where):
    """The parts every cache shares: its type, its input (an array or token
    rows), its packing and block size. Returns ``X, dtype, batch_sizes,
    offsets, n_sequences, n_rows, block_rows``."""
    if not isinstance(cache, cls):
        raise TypeError(f"{where}: cache must be the {cls.__name__} returned by "
                        f"{forward}, got {type(cache).__name__}")
    X = cache.X
    tokens = _is_tokens(X)
    if not tokens and (not isinstance(X, np.ndarray)
                       or X.dtype not in FLOAT_DTYPES):
        raise TypeError(f"{where}: cache.X is not a float32/float64 array; pass "
                        f"the cache returned by {forward}")
    bs, off = _check_packing(cache.batch_sizes, cache.offsets, where + " (cache)")
    B, n_rows = int(bs[0]), int(off[-1])
    if tokens:
        dtype = _check_cache_tokens(X, n_rows, n_in, where, forward)
    else:
        dtype = X.dtype
    br = _integer(cache.block_rows, "cache.block_rows", where)
    _int32(B + br, "batch_sizes[0] + block_rows", where, "use a smaller block_rows")
    return X, dtype, bs, off, B, n_rows, br


def _check_layer_cache(cache, spec, n_in, hidden, gh, where):
    from .layers import LayerCache

    X, dtype, bs, off, B, n_rows, br = _check_cache_header(
        cache, LayerCache, "layer_forward", n_in, where)
    tokens = _is_tokens(X)
    lstm, gru, ln = spec.cell == "lstm", spec.cell == "gru", spec.layer_norm
    fix = _CacheHint("layer_forward", spec)
    expected = {
        "X": (n_rows, n_in), "G": (n_rows, gh), "H": (n_rows, hidden),
        "Hprev": (n_rows, hidden),
        "C": (n_rows, hidden) if lstm else None,
        "aux": (n_rows, hidden) if gru or lstm else None,
        "xhat": (n_rows, gh) if ln else None,
        "rstd": (n_rows, spec.gates) if ln else None,
        "h0": (B, hidden), "c0": (B, hidden) if lstm else None,
        "mask": "mask",
    }
    if tokens:
        del expected["X"]
    for name, shape in expected.items():
        a = getattr(cache, name)
        full = f"cache.{name}"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{where}: {full} is not an array{fix}")
        if a.dtype != dtype:
            raise TypeError(f"{where}: {full} has dtype {a.dtype} but cache.X "
                            f"has dtype {dtype}{fix}")
        if shape == "mask":
            ok = a.ndim == 2 and (a.shape[0] == 0 or a.shape == (B, hidden))
            shape = (B, hidden)
        elif shape is None:
            ok = a.ndim == 2 and a.size == 0
            shape = "empty"
        else:
            ok = a.shape == shape
        if not ok:
            raise ValueError(f"{where}: {full} has shape {a.shape} where "
                             f"{shape} is expected{fix}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{where}: {full} is not a C-contiguous writable "
                             f"array{fix}")
    _check_block_starts(cache.block_starts, B, br, where, fix)
    return dtype, bs, off, B, n_rows, br


def _check_block_starts(starts, B, br, where, fix):
    """A cache's cut of its batch (``layers.block_cut``): empty (blocks of
    ``br`` sequences), or ``ceil(B / br) + 1`` increasing intp entries from 0
    to ``B``."""
    n_blocks = -(-B // br)
    if not (isinstance(starts, np.ndarray) and starts.dtype == np.intp
            and starts.ndim == 1 and starts.flags.c_contiguous):
        raise TypeError(f"{where}: cache.block_starts is not a C-contiguous "
                        f"1-D intp array{fix}")
    if starts.size and not (
            starts.size == n_blocks + 1 and starts[0] == 0 and starts[-1] == B
            and (np.diff(starts) > 0).all()):
        raise ValueError(f"{where}: cache.block_starts must be empty or hold "
                         f"{n_blocks + 1} increasing entries from 0 to {B}"
                         f"{fix}")


def check_layer_backward_sizes(spec, n_rows, B, br, dtype, *, fused,
                               need_dx=True, tokens=False, copy_dh=False,
                               where="layer_backward"):
    """As ``check_layer_forward_sizes``, for a backward pass (``copy_dh``:
    dL/dH is copied first; ``fused``: the kernel sums the weight gradients,
    ``layers.fused_weight_gradients``)."""
    n_in, hidden, gh = spec.n_input, spec.hidden, spec.gates * spec.hidden
    itemsize = np.dtype(dtype).itemsize
    _int32(br * gh, "block_rows * gates * hidden", where, "use a smaller block_rows")
    _int32(n_rows * max(n_in, gh), "rows * max(n_input, gates * hidden)", where,
           "split the batch")
    n_blocks = -(-B // br)
    separate = spec.cell == "gru" and spec.reset_after
    n = (n_rows * gh * (1 + separate)                 # dG, dGh
         + B * hidden * (1 + (spec.cell == "lstm"))   # dh, dc
         + n_blocks * (3 * hidden * spec.peephole + 2 * gh * spec.layer_norm)
         + n_blocks * br * gh                         # work
         + (n_rows * n_in if need_dx else 0)          # dX
         + (n_in * gh if tokens else 0)               # dW_ih transposed
         + (n_rows * hidden if copy_dh else 0))
    if fused:                                         # partial sums, scratch
        n += n_blocks * ((n_in + hidden) * gh + br * panel_columns(itemsize))
    _check_memory(n, itemsize, where,
                  f"{n_rows} rows x {gh} gate units, {B} sequences")


def check_layer_backward_args(spec, w, grads, cache, dH, dh_n=None, dc_n=None, *,
                              t_stop=None, need_dx=True, n_threads=1, pool=None):
    """Validate the arguments of ``layer_backward``.

    Returns ``dH, dh_n, dc_n``, copied to C-contiguous writable arrays where
    needed (``dc_n`` is returned unchanged for cells other than the LSTM,
    which ignore it).
    """
    where = "layer_backward"
    n_in, hidden, gh, shapes = _check_layer_spec(spec, where)
    _check_n_threads(n_threads, where)
    dtype, bs, off, B, n_rows, br = _check_layer_cache(cache, spec, n_in, hidden,
                                                       gh, where)
    _param_dict(w, "w", shapes, dtype, where, "spec.shapes()", finite=False)
    _param_dict(grads, "grads", shapes, dtype, where, "spec.shapes()",
                finite=False)
    tokens = _is_tokens(cache.X)
    if tokens and need_dx:
        raise ValueError(f"{where}: need_dx=True with token input (cache.X is a "
                         f"TokenInput): token ids have no gradient; pass "
                         f"need_dx=False")
    lstm = spec.cell == "lstm"
    dH = _float_input(dH, "dH", where, dtype, (n_rows, hidden),
                      "(one row per packed row, spec.hidden)")
    state = "(batch_sizes[0] sequences, spec.hidden)"
    if dh_n is not None:
        dh_n = _float_input(dh_n, "dh_n", where, dtype, (B, hidden), state)
    if lstm and dc_n is not None:
        dc_n = _float_input(dc_n, "dc_n", where, dtype, (B, hidden), state)
    _check_t_stop(t_stop, B, where)
    _check_pool(pool, where)

    from .layers import fused_weight_gradients
    check_layer_backward_sizes(
        spec, n_rows, B, br, dtype, fused=fused_weight_gradients(
            spec, dtype.itemsize, min(B, br)), need_dx=need_dx, tokens=tokens,
        copy_dh=_needs_copy(dH))

    dH = _c_writable(dH)
    if dh_n is not None:
        dh_n = _c_writable(dh_n)
    if lstm and dc_n is not None:
        dc_n = _c_writable(dc_n)
    _check_finite(where, [("dH", dH)] + [(f"w[{k!r}]", w[k]) for k in shapes]
                  + [("dh_n", dh_n), ("dc_n", dc_n if lstm else None)])
    return dH, dh_n, dc_n


def _check_jordan_params(spec, ws, w_out, b_out, dtype, hidden, n_out, where,
                         name="ws"):
    L = len(hidden)
    ws = _sequence(ws, name, L, where, "dicts of layer parameters")
    for k in range(L):
        _param_dict(ws[k], f"{name}[{k}]", spec.layer_shapes(k), dtype, where,
                    f"spec.layer_shapes({k})", finite=False)
    src = "(spec.n_output, spec.hidden[-1])"
    _param_array(w_out, "w_out", (n_out, hidden[-1]), dtype, where, src)
    if b_out is not None:
        _param_array(b_out, "b_out", (n_out,), dtype, where, "(spec.n_output,)")
    return ws


def _jordan_param_items(spec, ws, w_out, b_out, name="ws"):
    """``(name, array)`` pairs of the parameters, for ``_check_finite``."""
    items = [(f"{name}[{k}][{key!r}]", wk[key])
             for k, wk in enumerate(ws) for key in spec.layer_shapes(k)]
    return items + [("w_out", w_out), ("b_out", b_out)]


def _optional_list(items, name, shapes, dtype, where, meaning, skip_first=False):
    """None, or a list with one optional array per layer, checked against
    ``shapes``; entries stay as given (None allowed) except ``skip_first``."""
    if items is None:
        return None
    items = _sequence(items, name, len(shapes), where, "arrays (or None)")
    out = []
    for k, (a, shape) in enumerate(zip(items, shapes)):
        if a is None or (skip_first and k == 0):
            out.append(None if skip_first and k == 0 else a)
            continue
        out.append(_float_input(a, f"{name}[{k}]", where, dtype, shape, meaning))
    return out


def check_jordan_forward_args(spec, ws, w_out, b_out, X, batch_sizes, offsets,
                              f0=None, drop=None, rmask=None, *, n_threads=1,
                              block_rows=None):
    """Validate the arguments of ``jordan_forward``.

    Returns ``X, batch_sizes, offsets, f0, drop, rmask``; arrays are copied to
    C-contiguous writable ones where needed, ``drop[0]`` (ignored) becomes
    None.
    """
    where = "jordan_forward"
    n_in, hidden, fed, n_out = _check_jordan_spec(spec, where)
    L = len(hidden)
    _check_n_threads(n_threads, where)
    bs, off = _check_packing(batch_sizes, offsets, where)
    B, n_rows = int(bs[0]), int(off[-1])
    br = _check_block_rows(block_rows, bs, where, cut_by_steps=False)
    tokens = _is_tokens(X)
    if tokens:
        w0 = _sequence(ws, "ws", L, where, "dicts of layer parameters")[0]
        X, dtype = _check_token_input(X, w0, n_rows, n_in, where, "ws[0]")
    else:
        X = _float_input(X, "X", where, None, (n_rows, n_in),
                         "(offsets[-1] rows, spec.n_input columns)")
        dtype = X.dtype
    if b_out is None:
        raise TypeError(f"{where}: b_out must be an array of shape ({n_out},)")
    ws = _check_jordan_params(spec, ws, w_out, b_out, dtype, hidden, n_out, where)
    state = "(batch_sizes[0] sequences, spec.fed[k])"
    if f0 is not None:
        f0 = _sequence(f0, "f0", L, where, "arrays")
        if any(a is None for a in f0):
            raise TypeError(f"{where}: f0 must be None or a list of {L} arrays "
                            f"(no None entries)")
    f0 = _optional_list(f0, "f0", [(B, f) for f in fed], dtype, where, state)
    drop = _optional_list(drop, "drop", [None] + [(n_rows, h) for h in hidden[:-1]],
                          dtype, where, "(one row per packed row, spec.hidden[k-1])",
                          skip_first=True)
    rmask = _optional_list(rmask, "rmask", [(B, f) for f in fed], dtype, where,
                           state)

    size = max(max(hidden), n_out)
    _int32(2 * br * size, "2 * block_rows * max(hidden, n_output)", where,
           "use a smaller block_rows")
    _int32(B * max(size, max(fed)), "sequences * max(hidden, n_output)", where,
           "use smaller batches")
    _int32(n_rows * max(n_in, hidden[0]), "rows * max(n_input, hidden[0])", where,
           "split the batch")
    n = ((B + 2 * n_rows) * sum(hidden) + B * n_out   # S, y_state, G, Hs
         + (n_rows * sum(hidden[:-1]) if drop is not None else 0)   # Xin
         + n_rows * sum(fed)                          # Fprev
         + (n_rows * (sum(hidden) + L) if spec.layer_norm else 0)
         + n_rows * n_out                             # Y
         + (n_in * hidden[0] if tokens else            # W_ih transposed
            n_rows * n_in if _needs_copy(X) else 0))
    _check_memory(n, dtype.itemsize, where,
                  f"{n_rows} rows x {sum(hidden)} hidden units, {B} sequences")

    if not tokens:
        X = _c_writable(X)
    x_item = ("X.weights", X.weights) if tokens else ("X", X)
    finite = [x_item] + _jordan_param_items(spec, ws, w_out, b_out)
    for name, items in (("f0", f0), ("drop", drop), ("rmask", rmask)):
        if items is None:
            continue
        for k, a in enumerate(items):
            if a is not None:
                items[k] = _c_writable(a)
                finite.append((f"{name}[{k}]", items[k]))
    _check_finite(where, finite)
    return X, bs, off, f0, drop, rmask


def _check_jordan_cache(cache, spec, n_in, hidden, fed, n_out, where):
    from .layers import JordanCache

    X, dtype, bs, off, B, n_rows, br = _check_cache_header(
        cache, JordanCache, "jordan_forward", n_in, where)
    tokens = _is_tokens(X)
    L = len(hidden)
    ln = spec.layer_norm
    fix = _CacheHint("jordan_forward", spec)

    def arr(a, name, shape, optional=False):
        if a is None and optional:
            return
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{where}: {name} is not an array{fix}")
        if a.dtype != dtype:
            raise TypeError(f"{where}: {name} has dtype {a.dtype} but cache.X "
                            f"has dtype {dtype}{fix}")
        if a.shape != shape:
            raise ValueError(f"{where}: {name} has shape {a.shape} where "
                             f"{shape} is expected{fix}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{where}: {name} is not a C-contiguous writable "
                             f"array{fix}")

    def lst(items, name):
        if not isinstance(items, list) or len(items) != L:
            raise ValueError(f"{where}: cache.{name} must be a list of {L} "
                             f"entries{fix}")
        return items

    if not tokens:
        arr(X, "cache.X", (n_rows, n_in))
    arr(cache.Y, "cache.Y", (n_rows, n_out))
    for k in range(L):
        arr(lst(cache.Hs, "Hs")[k], f"cache.Hs[{k}]", (n_rows, hidden[k]))
        arr(lst(cache.Fprev, "Fprev")[k], f"cache.Fprev[{k}]", (n_rows, fed[k]))
        if k == 0 and tokens:
            if lst(cache.Xin, "Xin")[0] is not X:
                raise ValueError(f"{where}: cache.Xin[0] must be cache.X{fix}")
            continue
        arr(lst(cache.Xin, "Xin")[k], f"cache.Xin[{k}]",
            (n_rows, n_in if k == 0 else hidden[k - 1]))
        if ln:
            arr(lst(cache.xhat, "xhat")[k], f"cache.xhat[{k}]", (n_rows, hidden[k]))
            arr(lst(cache.rstd, "rstd")[k], f"cache.rstd[{k}]", (n_rows,))
        drop = lst(cache.drop, "drop")[k]
        if k == 0 and drop is not None:
            raise ValueError(f"{where}: cache.drop[0] must be None{fix}")
        if k > 0:
            arr(drop, f"cache.drop[{k}]", (n_rows, hidden[k - 1]), optional=True)
        arr(lst(cache.rmask, "rmask")[k], f"cache.rmask[{k}]", (B, fed[k]),
            optional=True)
    return dtype, bs, off, B, n_rows, br


def check_jordan_backward_args(spec, ws, w_out, grads, g_out, cache, dZ_in,
                               df_n=None, *, t_stop=None, need_dx=True,
                               n_threads=1):
    """Validate the arguments of ``jordan_backward``.

    Returns ``dZ_in, df_n``, copied to C-contiguous writable arrays where
    needed.
    """
    where = "jordan_backward"
    n_in, hidden, fed, n_out = _check_jordan_spec(spec, where)
    L = len(hidden)
    _check_n_threads(n_threads, where)
    dtype, bs, off, B, n_rows, br = _check_jordan_cache(cache, spec, n_in, hidden,
                                                        fed, n_out, where)
    ws = _check_jordan_params(spec, ws, w_out, None, dtype, hidden, n_out, where)
    grads = _sequence(grads, "grads", L, where, "dicts of gradient buffers")
    for k in range(L):
        _param_dict(grads[k], f"grads[{k}]", spec.layer_shapes(k), dtype, where,
                    f"spec.layer_shapes({k})", finite=False)
    _param_dict(g_out, "g_out", {"weight": (n_out, hidden[-1]), "bias": (n_out,)},
                dtype, where, "the output layer", finite=False)
    tokens = _is_tokens(cache.X)
    if tokens and need_dx:
        raise ValueError(f"{where}: need_dx=True with token input (cache.X is a "
                         f"TokenInput): token ids have no gradient; pass "
                         f"need_dx=False")
    dZ_in = _float_input(dZ_in, "dZ_in", where, dtype, (n_rows, n_out),
                         "(one row per packed row, spec.n_output)")
    if df_n is not None:
        df_n = _sequence(df_n, "df_n", L, where, "arrays")
        if any(a is None for a in df_n):
            raise TypeError(f"{where}: df_n must be None or a list of {L} arrays "
                            f"(no None entries)")
    df_n = _optional_list(df_n, "df_n", [(B, f) for f in fed], dtype, where,
                          "(batch_sizes[0] sequences, spec.fed[k])")
    _check_t_stop(t_stop, B, where)

    size = max(max(hidden), n_out)
    _int32(2 * br * size, "2 * block_rows * max(hidden, n_output)", where,
           "use a smaller block_rows")
    _int32(B * max(size, max(fed)), "sequences * max(hidden, n_output)", where,
           "use smaller batches")
    _int32(n_rows * max(n_in, hidden[0]), "rows * max(n_input, hidden[0])", where,
           "split the batch")
    n_blocks = -(-B // br)
    n = (B * sum(fed) + n_rows * (sum(hidden) + n_out)     # dF, dG, dZ
         + (2 * n_blocks * sum(hidden) if spec.layer_norm else 0)
         + n_blocks * 2 * br * size                        # work
         + (n_rows * n_in if need_dx else 0)
         + (n_in * hidden[0] if tokens else 0)     # dW_ih transposed
         + (n_rows * n_out if _needs_copy(dZ_in) else 0))
    _check_memory(n, dtype.itemsize, where,
                  f"{n_rows} rows x {sum(hidden)} hidden units, {B} sequences")

    dZ_in = _c_writable(dZ_in)
    finite = [("dZ_in", dZ_in)] + _jordan_param_items(spec, ws, w_out, None)
    if df_n is not None:
        for k, a in enumerate(df_n):
            df_n[k] = _c_writable(a)
            finite.append((f"df_n[{k}]", df_n[k]))
    _check_finite(where, finite)
    return dZ_in, df_n


# --------------------------------------------------------------------------
# token input: pyx_rnn._dense.gather_rows / scatter_add_rows
# --------------------------------------------------------------------------


def _check_token_rows(ids, weights, table, where):
    """Validated ``ids`` (contiguous intp), ``weights`` (contiguous, the
    table's dtype) against ``table`` (a parameter or gradient: not copied)."""
    if not isinstance(table, np.ndarray) or table.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: table must be a float32 or float64 ndarray, "
                        f"got {getattr(table, 'dtype', type(table).__name__)}")
    if table.ndim != 2:
        raise ValueError(f"{where}: table must be 2-D (n_tokens, n_columns), got "
                         f"shape {table.shape}")
    if not table.flags.c_contiguous or not table.flags.writeable:
        raise ValueError(f"{where}: table must be a C-contiguous writable array "
                         f"(it is used in place): pass np.ascontiguousarray(table)")
    ids = _index_array(ids, "ids", where)
    weights = _as_array(weights, "weights", where)
    _check_dtype(weights, "weights", table.dtype, where, ref="table")
    _check_shape(weights, "weights", ids.shape, where, "(one weight per id)")
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        bad = int(np.flatnonzero((ids < 0) | (ids >= table.shape[0]))[0])
        raise ValueError(
            f"{where}: ids[{bad}] = {ids[bad]} is not a row of the table "
            f"(0 <= id < {table.shape[0]}); token ids must be below the "
            f"vocabulary size the network was built with")
    weights = _c_writable(weights)
    _check_finite(where, [("weights", weights)])
    return ids, weights


def check_gather_rows_args(ids, weights, table, out, *, n_threads=1):
    """Validate the arguments of ``_dense.gather_rows`` (``out[r] =
    weights[r] * table[ids[r]]``); returns ``ids, weights``. ``out`` must be
    a C-contiguous writable ``(len(ids), table.shape[1])`` array."""
    where = "gather_rows"
    _check_n_threads(n_threads, where)
    ids, weights = _check_token_rows(ids, weights, table, where)
    _param_array(out, "out", (ids.size, table.shape[1]), table.dtype, where,
                 "(len(ids), table.shape[1])")
    _check_finite(where, [("table", table)])
    return ids, weights


def check_scatter_add_rows_args(ids, weights, src, table):
    """Validate the arguments of ``_dense.scatter_add_rows`` (``table[ids[r]]
    += weights[r] * src[r]``); returns ``ids, weights, src`` (``src`` copied to
    C order if needed)."""
    where = "scatter_add_rows"
    ids, weights = _check_token_rows(ids, weights, table, where)
    src = _float_input(src, "src", where, table.dtype, (ids.size, table.shape[1]),
                       "(len(ids), table.shape[1])")
    src = _c_writable(src)
    _check_finite(where, [("src", src)])
    return ids, weights, src
