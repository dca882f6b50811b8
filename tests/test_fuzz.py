"""Robustness of the kernels' Python entry points against bad input.

``layer_forward``, ``layer_backward``, ``jordan_forward`` and
``jordan_backward`` (pyx_rnn.layers) validate their arguments in
``pyx_rnn._checks`` before any compiled code runs: the kernels themselves
check nothing and would read or write out of bounds. These tests drive the
entry points with random shapes, dtypes, strides, lengths and values and
require that every call either succeeds with outputs of the right shapes or
raises ValueError, TypeError or MemoryError, never crashes.

1. Property-based tests (hypothesis, derandomized so that CI is
   reproducible): a random valid problem (cell and options, sizes, lengths,
   dtype, states, masks, block size, threads) is built, then changed by up to
   three *harmless* mutations (strided, Fortran-ordered, read-only or list
   inputs, other thread counts, block sizes, truncation, huge values) and at
   most one *harmful* one (wrong dtype, shape, layout of a parameter, packing,
   NaN or infinity, cache from another spec, bad sizes ...). Harmless changes
   must be accepted, those that only change the layout must give bitwise the
   baseline result, and a harmful change must raise.
2. A crash canary: every mutation of the catalogue, for every cell kind, runs
   in a child Python process (``python tests/test_fuzz.py --canary``), so that
   a segmentation fault fails one test with the name of the case instead of
   killing pytest. The hypothesis tests run in-process: a crash there fails
   the run as well, just less legibly.
3. One explicit test per error message (``pytest.raises(..., match=...)``),
   the checks for the token gather/scatter kernels of ``_dense`` (token ids
   outside the table), and ``pyx_rnn.packing`` input errors.

Observed with huge finite values (1e30 in X and every weight; no error is
raised, by design): float64 results stay finite (1e60 pre-activations
saturate tanh and the sigmoids). In float32 the pre-activations overflow to
inf: without layer normalisation the saturated gates still give finite
states and gradients (tanh(inf) = 1 and its derivative 0), with layer
normalisation every output is NaN (inf - inf in the mean), and relu passes
the inf through. Nothing crashes and no exception is raised.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _shared import CELL_KINDS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from pyx_rnn import _bookkeeping, _checks
from pyx_rnn.layers import (
    JordanSpec,
    LayerSpec,
    jordan_backward,
    jordan_forward,
    layer_backward,
    layer_forward,
)
from pyx_rnn.packing import Packing, pack

ALLOWED = (ValueError, TypeError, MemoryError)
# CI runs a fixed, derandomized set of examples; for a deeper local search:
#   PYX_RNN_FUZZ_EXAMPLES=5000 PYX_RNN_FUZZ_RANDOM=1 pytest tests/test_fuzz.py
# The problems run on one OpenMP thread, except with the "threads_2" mutation:
# on a busy machine, the parallel regions of tiny problems can wait long for a
# core (the whole file takes ~6 s on 2 idle cores, ~15 s on 2 busy ones).
N_EXAMPLES = int(os.environ.get("PYX_RNN_FUZZ_EXAMPLES", "600"))
FUZZ = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("PYX_RNN_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# ---------------------------------------------------------------------------
# valid problems
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """A valid call: ``fwd`` and ``bwd`` are the keyword arguments of the
    forward and backward entry points (``bwd`` filled by ``run_forward``)."""

    kind: str  # 'layer' or 'jordan'
    spec: object
    dtype: type
    B: int
    n_rows: int
    rng: np.random.Generator
    fwd: dict
    bwd: dict = None


def layer_problem(
    kind,
    n_input,
    hidden,
    lengths,
    dtype,
    seed,
    reverse=False,
    layer_norm=False,
    h0=True,
    mask=True,
    block_rows=None,
    n_threads=1,
):
    cell, act, reset_after, peephole = kind
    spec = LayerSpec(
        cell, n_input, hidden, act, reverse, reset_after, peephole, layer_norm
    )
    rng = np.random.default_rng(seed)
    w = {
        k: (0.5 * rng.standard_normal(s)).astype(dtype)
        for k, s in spec.shapes().items()
    }
    X, pk = pack([rng.standard_normal((n, n_input)) for n in lengths], dtype)
    B = pk.n_sequences
    state = lambda: rng.standard_normal((B, hidden)).astype(dtype)  # noqa: E731
    fwd = dict(
        spec=spec,
        w=w,
        X=X,
        batch_sizes=pk.batch_sizes,
        offsets=pk.offsets,
        h0=state() if h0 else None,
        c0=state() if h0 and cell == "lstm" else None,
        mask=((rng.random((B, hidden)) < 0.7) / 0.7).astype(dtype) if mask else None,
        n_threads=n_threads,
        block_rows=block_rows,
    )
    return Problem("layer", spec, dtype, B, pk.n_rows, rng, fwd)


def jordan_problem(
    n_input,
    hidden,
    n_output,
    lengths,
    dtype,
    seed,
    activation="tanh",
    output_activation="identity",
    layer_norm=False,
    f0=True,
    drop=True,
    rmask=True,
    block_rows=None,
    n_threads=1,
):
    spec = JordanSpec(
        n_input, tuple(hidden), n_output, activation, output_activation, layer_norm
    )
    rng = np.random.default_rng(seed)
    L = len(hidden)
    ws = [
        {
            k: (0.5 * rng.standard_normal(s)).astype(dtype)
            for k, s in spec.layer_shapes(k).items()
        }
        for k in range(L)
    ]
    w_out = (0.5 * rng.standard_normal((n_output, hidden[-1]))).astype(dtype)
    b_out = rng.standard_normal(n_output).astype(dtype)
    X, pk = pack([rng.standard_normal((n, n_input)) for n in lengths], dtype)
    B, n = pk.n_sequences, pk.n_rows
    keep = lambda shape: ((rng.random(shape) < 0.7) / 0.7).astype(dtype)  # noqa: E731
    fwd = dict(
        spec=spec,
        ws=ws,
        w_out=w_out,
        b_out=b_out,
        X=X,
        batch_sizes=pk.batch_sizes,
        offsets=pk.offsets,
        f0=[rng.standard_normal((B, f)).astype(dtype) for f in spec.fed]
        if f0
        else None,
        drop=[None] + [keep((n, h)) for h in hidden[:-1]] if drop else None,
        rmask=[keep((B, f)) for f in spec.fed] if rmask else None,
        n_threads=n_threads,
        block_rows=block_rows,
    )
    return Problem("jordan", spec, dtype, B, n, rng, fwd)


def call_forward(p, kw):
    return (layer_forward if p.kind == "layer" else jordan_forward)(**kw)


def call_backward(p, kw):
    kw = dict(kw)
    # gradient buffers are added to: start from zero at every call
    if p.kind == "layer":
        kw["grads"] = kw["grads"]() if callable(kw["grads"]) else kw["grads"]
        return layer_backward(**kw), kw["grads"]
    kw["grads"] = kw["grads"]() if callable(kw["grads"]) else kw["grads"]
    kw["g_out"] = kw["g_out"]() if callable(kw["g_out"]) else kw["g_out"]
    return jordan_backward(**kw), (kw["grads"], kw["g_out"])


def zeros_like_params(p):
    if p.kind == "layer":
        return lambda: {k: np.zeros(s, p.dtype) for k, s in p.spec.shapes().items()}
    return lambda: [
        {k: np.zeros(s, p.dtype) for k, s in p.spec.layer_shapes(k).items()}
        for k in range(len(p.spec.hidden))
    ]


def run_forward(p):
    """The baseline forward pass; fills ``p.bwd`` for the backward pass."""
    out = call_forward(p, p.fwd)
    check_forward_shapes(p, out)
    rng = p.rng
    if p.kind == "layer":
        H, h_n, c_n, cache = out
        lstm = p.spec.cell == "lstm"
        state = lambda: rng.standard_normal((p.B, p.spec.hidden)).astype(p.dtype)  # noqa: E731
        p.bwd = dict(
            spec=p.spec,
            w=p.fwd["w"],
            grads=zeros_like_params(p),
            cache=cache,
            dH=rng.standard_normal(H.shape).astype(p.dtype),
            dh_n=state(),
            dc_n=state() if lstm else None,
            t_stop=None,
            need_dx=True,
            n_threads=1,
        )
    else:
        Y, f_n, cache = out
        s = p.spec
        p.bwd = dict(
            spec=s,
            ws=p.fwd["ws"],
            w_out=p.fwd["w_out"],
            grads=zeros_like_params(p),
            g_out=lambda: {
                "weight": np.zeros((s.n_output, s.hidden[-1]), p.dtype),
                "bias": np.zeros(s.n_output, p.dtype),
            },
            cache=cache,
            dZ_in=rng.standard_normal(Y.shape).astype(p.dtype),
            df_n=[rng.standard_normal((p.B, f)).astype(p.dtype) for f in s.fed],
            t_stop=None,
            need_dx=True,
            n_threads=1,
        )
    return out


def check_forward_shapes(p, out):
    if p.kind == "layer":
        H, h_n, c_n, _ = out
        hidden = p.spec.hidden
        assert H.shape == (p.n_rows, hidden) and H.dtype == p.dtype
        assert h_n.shape == (p.B, hidden)
        assert c_n.shape == ((p.B, hidden) if p.spec.cell == "lstm" else (0, 0))
    else:
        Y, f_n, _ = out
        assert Y.shape == (p.n_rows, p.spec.n_output) and Y.dtype == p.dtype
        assert [f.shape for f in f_n] == [(p.B, f) for f in p.spec.fed]


def check_backward_shapes(p, kw, out):
    if p.kind == "layer":
        dX, dh0, dc0 = out
        hidden = p.spec.hidden
        assert dh0.shape == (p.B, hidden)
        assert dc0.shape == ((p.B, hidden) if p.spec.cell == "lstm" else (0, 0))
    else:
        dX, df0 = out
        assert [f.shape for f in df0] == [(p.B, f) for f in p.spec.fed]
    if kw["need_dx"]:
        assert dX.shape == (p.n_rows, p.spec.n_input) and dX.dtype == p.dtype
    else:
        assert dX is None


# ---------------------------------------------------------------------------
# mutations: f(problem, kwargs) changes kwargs in place; False = not applicable
# ---------------------------------------------------------------------------


def strided(a):
    """Same values, every row and column strided."""
    a = np.asarray(a)
    big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def poke(a, value, rng):
    """A copy of ``a`` with ``value`` at a random place."""
    a = np.array(a)
    a.flat[rng.integers(a.size)] = value
    return a


def first_2d(d):
    return next(k for k in d if np.ndim(d[k]) == 2)


def square_2d(d):
    """A 2-D entry with both sizes > 1 (its Fortran-ordered copy is not
    C-contiguous), or None."""
    return next(
        (k for k in sorted(d) if np.ndim(d[k]) == 2 and min(d[k].shape) > 1), None
    )


def cast(name, dtype):
    def f(p, kw):
        kw[name] = np.asarray(kw[name]).astype(dtype)

    return f


def set_(name, value):
    def f(p, kw):
        kw[name] = value(p, kw) if callable(value) else value

    return f


def each_array(name, fn):
    """Apply ``fn`` to every array of a list argument (None kept)."""

    def f(p, kw):
        if kw[name] is None:
            return False
        kw[name] = [None if a is None else fn(a) for a in kw[name]]

    return f


def param(name, fn, key=None):
    """Change one entry of a parameter dict (``key`` None: a random one), in
    a copy of the dict; for Jordan stacks, in a random layer."""

    def f(p, kw):
        rng = p.rng
        if isinstance(kw[name], list):
            layers = [dict(d) for d in kw[name]]
            d = layers[rng.integers(len(layers))]
            kw[name] = layers
        else:
            d = kw[name] = dict(kw[name])
        k = key(d) if callable(key) else (key or sorted(d)[rng.integers(len(d))])
        if k is None:
            return False
        d[k] = fn(d[k], p)

    return f


def grads_param(fn, key=None):
    """Like ``param`` for the gradient buffers (made at call time)."""

    def f(p, kw):
        make = kw["grads"]

        def grads():
            g = make()
            one = g[p.rng.integers(len(g))] if isinstance(g, list) else g
            k = key(one) if callable(key) else (key or sorted(one)[0])
            one[k] = fn(one[k], p)
            return g

        kw["grads"] = grads

    return f


def drop_key(d):
    d = dict(d)
    d.pop(sorted(d)[0])
    return d


def packing_change(fn):
    """Replace batch_sizes/offsets by fn(bs, off)."""

    def f(p, kw):
        bs, off = np.asarray(kw["batch_sizes"]), np.asarray(kw["offsets"])
        r = fn(bs.copy(), off.copy())
        if r is False:
            return False
        kw["batch_sizes"], kw["offsets"] = r

    return f


def increasing(bs, off):
    if bs.size < 2 or bs[0] == bs[-1]:
        bs = np.concatenate([bs, [bs[-1] + 1]])
    else:
        bs = bs[::-1].copy()
    return bs, np.concatenate([[0], np.cumsum(bs)]).astype(np.intp)


def with_zero_step(bs, off):
    bs = np.concatenate([bs, [0]]).astype(np.intp)
    return bs, np.concatenate([[0], np.cumsum(bs)]).astype(np.intp)


def shifted_offsets(bs, off):
    off = off.copy()
    off[1:] += 1
    return bs, off


def cache_change(**fields):
    def f(p, kw):
        kw["cache"] = dataclasses.replace(
            kw["cache"], **{k: v(p, kw["cache"]) for k, v in fields.items()}
        )

    return f


def other_spec_cache(p, kw):
    """A cache of a forward pass with another spec (layer norm toggled)."""
    if p.kind == "layer":
        s = dataclasses.replace(p.spec, layer_norm=not p.spec.layer_norm)
        w = {k: np.zeros(v, p.dtype) for k, v in s.shapes().items()}
        f = dict(p.fwd, spec=s, w=w)
    else:
        s = dataclasses.replace(p.spec, hidden=tuple(h + 1 for h in p.spec.hidden))
        f = dict(
            p.fwd,
            spec=s,
            f0=None,
            drop=None,
            rmask=None,
            ws=[
                {k: np.zeros(v, p.dtype) for k, v in s.layer_shapes(k).items()}
                for k in range(len(s.hidden))
            ],
            w_out=np.zeros((s.n_output, s.hidden[-1]), p.dtype),
        )
    kw["cache"] = call_forward(p, f)[-1]


def state(p):
    """A valid (batch_sizes[0], hidden) state of a layer problem."""
    return np.zeros((p.B, p.spec.hidden), p.dtype)


def fed_states(p):
    """Valid fed-back vectors of a Jordan problem."""
    return [np.zeros((p.B, f), p.dtype) for f in p.spec.fed]


def wrong_state_shape(a, p):
    a = np.asarray(a)
    return np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)


def wrong_cols(a, p):
    a = np.asarray(a)
    return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)


BAD_DTYPES = [
    np.float16,
    np.int64,
    np.int32,
    object,
    np.complex128,
    bool,
    np.dtype(">f8"),
    np.longdouble,
]


def dtype_label(d):
    d = np.dtype(d)
    return d.name + ("_big_endian" if d.byteorder == ">" else "")


def other_dtype(p):
    return np.float32 if p.dtype == np.float64 else np.float64


# Mutations that must be accepted. SAME: only the layout changes, so the
# results must equal the baseline bitwise.
SAME, OTHER = "same", "other"

LAYER_FWD_OK = {
    "X_strided": (SAME, lambda p, kw: kw.update(X=strided(kw["X"]))),
    "X_fortran": (SAME, lambda p, kw: kw.update(X=np.asfortranarray(kw["X"]))),
    "X_readonly": (SAME, lambda p, kw: kw.update(X=readonly(kw["X"]))),
    "X_list": (
        SAME,
        lambda p, kw: (
            False
            if p.dtype != np.float64
            else kw.update(X=np.asarray(kw["X"]).tolist())
        ),
    ),
    "h0_strided": (
        SAME,
        lambda p, kw: False if kw["h0"] is None else kw.update(h0=strided(kw["h0"])),
    ),
    "c0_fortran": (
        SAME,
        lambda p, kw: (
            False if kw["c0"] is None else kw.update(c0=np.asfortranarray(kw["c0"]))
        ),
    ),
    "mask_readonly": (
        SAME,
        lambda p, kw: (
            False if kw["mask"] is None else kw.update(mask=readonly(kw["mask"]))
        ),
    ),
    "packing_strided": (
        SAME,
        lambda p, kw: kw.update(
            batch_sizes=strided(kw["batch_sizes"]), offsets=strided(kw["offsets"])
        ),
    ),
    "packing_lists": (
        SAME,
        lambda p, kw: kw.update(
            batch_sizes=list(np.asarray(kw["batch_sizes"])),
            offsets=[int(v) for v in kw["offsets"]],
        ),
    ),
    "threads_2": (SAME, set_("n_threads", 2)),
    "threads_np_int": (SAME, set_("n_threads", np.int64(1))),
    "no_h0": (OTHER, set_("h0", None)),
    "no_mask": (OTHER, set_("mask", None)),
    "block_rows_1": (OTHER, set_("block_rows", 1)),
    "block_rows_big": (OTHER, set_("block_rows", 1000)),
    "X_huge": (OTHER, lambda p, kw: kw.update(X=np.asarray(kw["X"]) * 1e30)),
    "w_huge": (OTHER, param("w", lambda a, p: a * a.dtype.type(1e30))),
    "X_zero": (OTHER, lambda p, kw: kw.update(X=np.zeros_like(np.asarray(kw["X"])))),
    "X_tiny": (OTHER, lambda p, kw: kw.update(X=np.asarray(kw["X"]) * 1e-300)),
    "pool": (SAME, set_("pool", lambda p, kw: {})),
}

LAYER_FWD_BAD = {
    **{f"X_dtype_{dtype_label(d)}": cast("X", d) for d in BAD_DTYPES},
    "X_other_dtype": lambda p, kw: kw.update(
        X=np.asarray(kw["X"]).astype(other_dtype(p))
    ),
    "X_1d": lambda p, kw: kw.update(X=np.asarray(kw["X"]).ravel()),
    "X_3d": lambda p, kw: kw.update(X=np.asarray(kw["X"])[None]),
    "X_scalar": set_("X", 1.0),
    "X_none": set_("X", None),
    "X_ragged": set_("X", [[1.0, 2.0], [3.0]]),
    "X_short": lambda p, kw: kw.update(X=np.asarray(kw["X"])[:-1]),
    "X_long": lambda p, kw: kw.update(X=np.vstack([kw["X"], np.asarray(kw["X"])[:1]])),
    "X_cols": lambda p, kw: kw.update(X=wrong_cols(kw["X"], p)),
    "X_nan": lambda p, kw: kw.update(X=poke(kw["X"], np.nan, p.rng)),
    "X_inf": lambda p, kw: kw.update(X=poke(kw["X"], np.inf, p.rng)),
    "X_neg_inf": lambda p, kw: kw.update(X=poke(kw["X"], -np.inf, p.rng)),
    "w_missing": lambda p, kw: kw.update(w=drop_key(kw["w"])),
    "w_extra": lambda p, kw: kw.update(w=dict(kw["w"], bogus=np.zeros(3, p.dtype))),
    "w_not_dict": set_("w", lambda p, kw: list(kw["w"].values())),
    "w_shape": param(
        "w", lambda a, p: np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)
    ),
    "w_3d": param("w", lambda a, p: a[None]),
    "w_dtype": param("w", lambda a, p: a.astype(other_dtype(p))),
    "w_int": param("w", lambda a, p: a.astype(np.int64)),
    "w_strided": param("w", lambda a, p: strided(a), key=first_2d),
    "w_fortran": param("w", lambda a, p: np.asfortranarray(a), key=square_2d),
    "w_readonly": param("w", lambda a, p: readonly(a)),
    "w_list": param("w", lambda a, p: a.tolist()),
    "w_nan": param("w", lambda a, p: poke(a, np.nan, p.rng)),
    "w_inf": param("w", lambda a, p: poke(a, np.inf, p.rng)),
    "h0_shape": lambda p, kw: kw.update(
        h0=wrong_state_shape(
            kw["h0"]
            if kw["h0"] is not None
            else np.zeros((p.B, p.spec.hidden), p.dtype),
            p,
        )
    ),
    "h0_cols": lambda p, kw: kw.update(
        h0=wrong_cols(np.zeros((p.B, p.spec.hidden), p.dtype), p)
    ),
    "h0_1d": lambda p, kw: kw.update(h0=np.zeros(p.spec.hidden, p.dtype)),
    "h0_dtype": lambda p, kw: kw.update(
        h0=np.zeros((p.B, p.spec.hidden), other_dtype(p))
    ),
    "h0_nan": lambda p, kw: kw.update(
        h0=poke(np.zeros((p.B, p.spec.hidden), p.dtype), np.nan, p.rng)
    ),
    "c0_shape": lambda p, kw: (
        False
        if p.spec.cell != "lstm"
        else kw.update(c0=np.zeros((p.B, p.spec.hidden + 1), p.dtype))
    ),
    "c0_inf": lambda p, kw: (
        False
        if p.spec.cell != "lstm"
        else kw.update(c0=poke(np.zeros((p.B, p.spec.hidden), p.dtype), np.inf, p.rng))
    ),
    "mask_shape": lambda p, kw: kw.update(mask=np.ones((1, 1), p.dtype)),
    "mask_dtype": lambda p, kw: kw.update(
        mask=np.ones((p.B, p.spec.hidden), np.float16)
    ),
    "mask_nan": lambda p, kw: kw.update(
        mask=poke(np.ones((p.B, p.spec.hidden), p.dtype), np.nan, p.rng)
    ),
    "bs_int32": packing_change(lambda bs, off: (bs.astype(np.int32), off)),
    "bs_float": packing_change(lambda bs, off: (bs.astype(np.float64), off)),
    "bs_2d": packing_change(lambda bs, off: (bs[None], off)),
    "bs_empty": packing_change(lambda bs, off: (bs[:0], off[:1])),
    "bs_increasing": packing_change(increasing),
    "bs_zero_step": packing_change(with_zero_step),
    "bs_negative": packing_change(lambda bs, off: (-bs, off)),
    "bs_bigger": packing_change(lambda bs, off: (bs * 1000, off)),
    "off_shifted": packing_change(shifted_offsets),
    "off_short": packing_change(lambda bs, off: (bs, off[:-1])),
    "off_int32": packing_change(lambda bs, off: (bs, off.astype(np.int32))),
    "off_huge": packing_change(lambda bs, off: (bs, off * 10**9)),
    "block_rows_0": set_("block_rows", 0),
    "block_rows_neg": set_("block_rows", -4),
    "block_rows_float": set_("block_rows", 2.0),
    "block_rows_int32": set_("block_rows", 2**31 - 1),
    "block_rows_huge": set_("block_rows", 2**62),
    "threads_0": set_("n_threads", 0),
    "threads_neg": set_("n_threads", -1),
    "threads_huge": set_("n_threads", 10**6),
    "threads_none": set_("n_threads", None),
    "threads_float": set_("n_threads", 1.5),
    "spec_cell": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, cell="jordan")
    ),
    "spec_activation": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, activation="sigmoid")
    ),
    "spec_hidden_0": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, hidden=0)
    ),
    "spec_hidden_huge": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, hidden=2**31)
    ),
    "spec_n_input_float": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, n_input=2.5)
    ),
    "spec_not_spec": set_("spec", lambda p, kw: dataclasses.asdict(p.spec)),
    "pool_not_dict": set_("pool", [1, 2]),
    "pool_junk": set_("pool", {"G": "not an array"}),
}

LAYER_BWD_OK = {
    "dH_strided": (SAME, lambda p, kw: kw.update(dH=strided(kw["dH"]))),
    "dH_fortran": (SAME, lambda p, kw: kw.update(dH=np.asfortranarray(kw["dH"]))),
    "dH_readonly": (SAME, lambda p, kw: kw.update(dH=readonly(kw["dH"]))),
    "dh_n_fortran": (
        SAME,
        lambda p, kw: (
            False
            if kw["dh_n"] is None
            else kw.update(dh_n=np.asfortranarray(kw["dh_n"]))
        ),
    ),
    "threads_2": (SAME, set_("n_threads", 2)),
    "no_dh_n": (OTHER, set_("dh_n", None)),
    "no_dx": (OTHER, set_("need_dx", False)),
    "t_stop_int": (OTHER, lambda p, kw: kw.update(t_stop=int(p.rng.integers(-2, 8)))),
    "t_stop_np_int": (OTHER, lambda p, kw: kw.update(t_stop=np.int32(2))),
    "t_stop_array": (OTHER, lambda p, kw: kw.update(t_stop=p.rng.integers(-3, 9, p.B))),
    "t_stop_huge": (OTHER, set_("t_stop", 10**15)),
    "dH_huge": (OTHER, lambda p, kw: kw.update(dH=kw["dH"] * p.dtype(1e30))),
    "pool": (SAME, set_("pool", lambda p, kw: {})),
}

LAYER_BWD_BAD = {
    "dH_short": lambda p, kw: kw.update(dH=np.asarray(kw["dH"])[:-1]),
    "dH_cols": lambda p, kw: kw.update(dH=wrong_cols(kw["dH"], p)),
    "dH_1d": lambda p, kw: kw.update(dH=np.asarray(kw["dH"]).ravel()),
    "dH_dtype": lambda p, kw: kw.update(dH=np.asarray(kw["dH"]).astype(other_dtype(p))),
    "dH_f16": lambda p, kw: kw.update(dH=np.asarray(kw["dH"]).astype(np.float16)),
    "dH_nan": lambda p, kw: kw.update(dH=poke(kw["dH"], np.nan, p.rng)),
    "dh_n_shape": lambda p, kw: kw.update(dh_n=wrong_state_shape(state(p), p)),
    "dh_n_inf": lambda p, kw: kw.update(dh_n=poke(state(p), np.inf, p.rng)),
    "dc_n_shape": lambda p, kw: (
        False if p.spec.cell != "lstm" else kw.update(dc_n=wrong_cols(state(p), p))
    ),
    "grads_missing": lambda p, kw: kw.update(grads=lambda g=kw["grads"]: drop_key(g())),
    "grads_shape": grads_param(
        lambda a, p: np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)
    ),
    "grads_strided": grads_param(lambda a, p: strided(a), key=first_2d),
    "grads_readonly": grads_param(lambda a, p: readonly(a)),
    "grads_dtype": grads_param(lambda a, p: a.astype(other_dtype(p))),
    "grads_not_dict": set_("grads", lambda p, kw: lambda: None),
    "w_shape": param(
        "w", lambda a, p: np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)
    ),
    "w_nan": param("w", lambda a, p: poke(a, np.nan, p.rng)),
    "cache_other_spec": other_spec_cache,
    "cache_none": set_("cache", None),
    "cache_G_short": cache_change(G=lambda p, c: c.G[:-1]),
    "cache_h0": cache_change(h0=lambda p, c: c.h0[:, :-1].copy()),
    "cache_mask": cache_change(mask=lambda p, c: np.ones((1, 1), p.dtype)),
    "cache_dtype": cache_change(H=lambda p, c: c.H.astype(other_dtype(p))),
    "cache_bs": cache_change(batch_sizes=lambda p, c: c.batch_sizes + 1),
    "cache_off": cache_change(offsets=lambda p, c: c.offsets * 2 + 1),
    "cache_block_rows": cache_change(block_rows=lambda p, c: 0),
    "t_stop_float": set_("t_stop", 1.5),
    "t_stop_shape": lambda p, kw: kw.update(t_stop=np.zeros(p.B + 1, np.intp)),
    "t_stop_2d": lambda p, kw: kw.update(t_stop=np.zeros((p.B, 1), np.intp)),
    "t_stop_object": set_("t_stop", 2**70),
    "threads_0": set_("n_threads", 0),
    "spec_other": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, hidden=p.spec.hidden + 1)
    ),
}

JORDAN_FWD_OK = {
    "X_strided": LAYER_FWD_OK["X_strided"],
    "X_fortran": LAYER_FWD_OK["X_fortran"],
    "X_readonly": LAYER_FWD_OK["X_readonly"],
    "X_list": LAYER_FWD_OK["X_list"],
    "f0_strided": (SAME, each_array("f0", strided)),
    "drop_fortran": (SAME, each_array("drop", np.asfortranarray)),
    "rmask_readonly": (SAME, each_array("rmask", readonly)),
    "f0_tuple": (
        SAME,
        lambda p, kw: False if kw["f0"] is None else kw.update(f0=tuple(kw["f0"])),
    ),
    "drop_first_ignored": (
        SAME,
        lambda p, kw: (
            False
            if kw["drop"] is None
            else kw.update(drop=["junk"] + list(kw["drop"][1:]))
        ),
    ),
    "packing_strided": LAYER_FWD_OK["packing_strided"],
    "threads_2": LAYER_FWD_OK["threads_2"],
    "no_f0": (OTHER, set_("f0", None)),
    "no_drop": (OTHER, set_("drop", None)),
    "drop_none_entries": (
        OTHER,
        lambda p, kw: kw.update(drop=[None] * len(p.spec.hidden)),
    ),
    "no_rmask": (OTHER, set_("rmask", None)),
    "block_rows_1": LAYER_FWD_OK["block_rows_1"],
    "block_rows_big": LAYER_FWD_OK["block_rows_big"],
    "X_huge": LAYER_FWD_OK["X_huge"],
    "w_huge": (OTHER, param("ws", lambda a, p: a * a.dtype.type(1e30))),
    "w_out_huge": (OTHER, lambda p, kw: kw.update(w_out=kw["w_out"] * p.dtype(1e30))),
}

JORDAN_FWD_BAD = {
    **{
        k: v
        for k, v in LAYER_FWD_BAD.items()
        if k.startswith(("X_", "bs_", "off_", "block_rows", "threads_"))
    },
    "ws_short": lambda p, kw: kw.update(ws=kw["ws"][:-1]),
    "ws_long": lambda p, kw: kw.update(ws=kw["ws"] + kw["ws"][-1:]),
    "ws_dict": lambda p, kw: kw.update(ws=kw["ws"][0]),
    "ws_missing": lambda p, kw: kw.update(ws=[drop_key(d) for d in kw["ws"]]),
    "ws_shape": param(
        "ws", lambda a, p: np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)
    ),
    "ws_dtype": param("ws", lambda a, p: a.astype(other_dtype(p))),
    "ws_strided": param("ws", lambda a, p: strided(a), key=first_2d),
    "ws_fortran": param("ws", lambda a, p: np.asfortranarray(a), key=square_2d),
    "ws_nan": param("ws", lambda a, p: poke(a, np.nan, p.rng)),
    "w_out_shape": lambda p, kw: kw.update(w_out=np.zeros((1, 1), p.dtype)),
    "w_out_3d": lambda p, kw: kw.update(w_out=kw["w_out"][None]),
    "w_out_dtype": lambda p, kw: kw.update(w_out=kw["w_out"].astype(other_dtype(p))),
    "w_out_strided": lambda p, kw: kw.update(w_out=strided(kw["w_out"])),
    "w_out_readonly": lambda p, kw: kw.update(w_out=readonly(kw["w_out"])),
    "w_out_inf": lambda p, kw: kw.update(w_out=poke(kw["w_out"], np.inf, p.rng)),
    "b_out_shape": lambda p, kw: kw.update(
        b_out=np.zeros(kw["b_out"].size + 1, p.dtype)
    ),
    "b_out_none": set_("b_out", None),
    "b_out_list": lambda p, kw: kw.update(b_out=kw["b_out"].tolist()),
    "f0_short": lambda p, kw: kw.update(
        f0=[np.zeros((p.B, f), p.dtype) for f in p.spec.fed][:-1]
    ),
    "f0_shape": lambda p, kw: kw.update(
        f0=[np.zeros((p.B + 1, f), p.dtype) for f in p.spec.fed]
    ),
    "f0_none_entry": lambda p, kw: kw.update(f0=[None for f in p.spec.fed]),
    "f0_1d": lambda p, kw: kw.update(f0=[np.zeros(f, p.dtype) for f in p.spec.fed]),
    "f0_dtype": lambda p, kw: kw.update(
        f0=[np.zeros((p.B, f), np.float16) for f in p.spec.fed]
    ),
    "f0_nan": lambda p, kw: kw.update(
        f0=[np.full((p.B, f), np.nan, p.dtype) for f in p.spec.fed]
    ),
    "drop_short": lambda p, kw: (
        False if len(p.spec.hidden) < 2 else kw.update(drop=[None])
    ),
    "drop_shape": lambda p, kw: (
        False
        if len(p.spec.hidden) < 2
        else kw.update(
            drop=[None]
            + [np.ones((p.n_rows - 1, h), p.dtype) for h in p.spec.hidden[:-1]]
        )
    ),
    "rmask_short": lambda p, kw: kw.update(
        rmask=[np.ones((p.B, f), p.dtype) for f in p.spec.fed][1:]
    ),
    "rmask_shape": lambda p, kw: kw.update(
        rmask=[np.ones((p.B, f + 1), p.dtype) for f in p.spec.fed]
    ),
    "rmask_not_list": lambda p, kw: kw.update(
        rmask=np.ones((p.B, p.spec.fed[0]), p.dtype)
    ),
    "spec_hidden_empty": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, hidden=())
    ),
    "spec_hidden_0": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, hidden=(0,) + tuple(p.spec.hidden[1:]))
    ),
    "spec_n_output_neg": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, n_output=-1)
    ),
    "spec_out_act": lambda p, kw: kw.update(
        spec=dataclasses.replace(p.spec, output_activation="relu")
    ),
    "spec_layer_spec": lambda p, kw: kw.update(
        spec=LayerSpec("rnn", p.spec.n_input, p.spec.hidden[0])
    ),
}

JORDAN_BWD_OK = {
    "dZ_strided": (SAME, lambda p, kw: kw.update(dZ_in=strided(kw["dZ_in"]))),
    "dZ_fortran": (SAME, lambda p, kw: kw.update(dZ_in=np.asfortranarray(kw["dZ_in"]))),
    "df_n_readonly": (SAME, each_array("df_n", readonly)),
    "threads_2": (SAME, set_("n_threads", 2)),
    "no_df_n": (OTHER, set_("df_n", None)),
    "no_dx": (OTHER, set_("need_dx", False)),
    "t_stop_int": LAYER_BWD_OK["t_stop_int"],
    "t_stop_array": LAYER_BWD_OK["t_stop_array"],
    "dZ_huge": (OTHER, lambda p, kw: kw.update(dZ_in=kw["dZ_in"] * p.dtype(1e30))),
}

JORDAN_BWD_BAD = {
    "dZ_short": lambda p, kw: kw.update(dZ_in=np.asarray(kw["dZ_in"])[:-1]),
    "dZ_cols": lambda p, kw: kw.update(dZ_in=wrong_cols(kw["dZ_in"], p)),
    "dZ_dtype": lambda p, kw: kw.update(
        dZ_in=np.asarray(kw["dZ_in"]).astype(other_dtype(p))
    ),
    "dZ_nan": lambda p, kw: kw.update(dZ_in=poke(kw["dZ_in"], np.nan, p.rng)),
    "df_n_short": lambda p, kw: kw.update(df_n=fed_states(p)[:-1]),
    "df_n_shape": lambda p, kw: kw.update(
        df_n=[wrong_state_shape(a, p) for a in fed_states(p)]
    ),
    "grads_short": lambda p, kw: kw.update(grads=lambda g=kw["grads"]: g()[:-1]),
    "grads_missing": lambda p, kw: kw.update(
        grads=lambda g=kw["grads"]: [drop_key(d) for d in g()]
    ),
    "grads_shape": grads_param(
        lambda a, p: np.zeros(a.shape[:-1] + (a.shape[-1] + 1,), a.dtype)
    ),
    "grads_strided": grads_param(lambda a, p: strided(a), key=first_2d),
    "grads_readonly": grads_param(lambda a, p: readonly(a)),
    "g_out_missing": lambda p, kw: kw.update(g_out=lambda g=kw["g_out"]: drop_key(g())),
    "g_out_shape": lambda p, kw: kw.update(
        g_out=lambda g=kw["g_out"]: dict(g(), weight=np.zeros((1, 1), p.dtype))
    ),
    "ws_short": JORDAN_FWD_BAD["ws_short"],
    "ws_nan": JORDAN_FWD_BAD["ws_nan"],
    "w_out_shape": JORDAN_FWD_BAD["w_out_shape"],
    "cache_other_spec": other_spec_cache,
    "cache_layer_cache": lambda p, kw: kw.update(
        cache=layer_forward(
            LayerSpec("rnn", p.spec.n_input, 2),
            {
                k: np.zeros(s, p.dtype)
                for k, s in LayerSpec("rnn", p.spec.n_input, 2).shapes().items()
            },
            np.zeros((p.n_rows, p.spec.n_input), p.dtype),
            kw["cache"].batch_sizes,
            kw["cache"].offsets,
        )[-1]
    ),
    "cache_Y": cache_change(Y=lambda p, c: c.Y[:-1]),
    "cache_Hs": cache_change(Hs=lambda p, c: c.Hs[:-1]),
    "cache_rmask": cache_change(
        rmask=lambda p, c: [np.ones((p.B + 1, 1), p.dtype)] * len(c.rmask)
    ),
    "cache_bs": cache_change(batch_sizes=lambda p, c: c.batch_sizes[::-1].copy() + 1),
    "t_stop_shape": LAYER_BWD_BAD["t_stop_shape"],
    "t_stop_float": LAYER_BWD_BAD["t_stop_float"],
    "threads_huge": set_("n_threads", 10**5),
}


# ---------------------------------------------------------------------------
# one fuzz case
# ---------------------------------------------------------------------------


def apply(p, kw, mutations, table):
    """Apply the named mutations; False if one is not applicable."""
    kw = dict(kw)
    for name in mutations:
        entry = table[name]
        fn = entry[1] if isinstance(entry, tuple) else entry
        with np.errstate(all="ignore"):  # casts of huge values overflow
            if fn(p, kw) is False:
                return None
    return kw


def expect(call, bad):
    """Run ``call``: it must raise an allowed error if ``bad``, else succeed."""
    try:
        with np.errstate(all="ignore"):  # huge values overflow in NumPy ops
            out = call()
    except ALLOWED as exc:
        if not bad:
            raise AssertionError(f"a valid call raised {exc!r}") from exc
        assert str(exc)  # a message naming the problem
        return None
    assert not bad, "a bad call was accepted"
    return out


def fuzz_forward(p, ok, bad):
    """Forward with harmless mutations ``ok`` and an optional harmful one."""
    ok_table = LAYER_FWD_OK if p.kind == "layer" else JORDAN_FWD_OK
    bad_table = LAYER_FWD_BAD if p.kind == "layer" else JORDAN_FWD_BAD
    base = run_forward(p)
    kw = mutated(p, p.fwd, ok, bad, ok_table, bad_table)
    if kw is None:
        return False
    out = expect(lambda: call_forward(p, kw), bad is not None)
    if out is None:
        return True
    check_forward_shapes(p, out)
    assert_unchanged_by(ok, ok_table, out[:-1], base[:-1])
    return True


def fuzz_backward(p, ok, bad):
    ok_table = LAYER_BWD_OK if p.kind == "layer" else JORDAN_BWD_OK
    bad_table = LAYER_BWD_BAD if p.kind == "layer" else JORDAN_BWD_BAD
    run_forward(p)
    base = call_backward(p, p.bwd)
    check_backward_shapes(p, p.bwd, base[0])
    kw = mutated(p, p.bwd, ok, bad, ok_table, bad_table)
    if kw is None:
        return False
    out = expect(lambda: call_backward(p, kw), bad is not None)
    if out is None:
        return True
    check_backward_shapes(p, kw, out[0])
    assert_unchanged_by(ok, ok_table, out, base)
    return True


def mutated(p, kw, ok, bad, ok_table, bad_table):
    """``kw`` with the harmless mutations ``ok`` and the harmful one ``bad``
    (if any) applied; None when one of them does not apply to ``p``."""
    kw = apply(p, kw, ok, ok_table)
    if kw is not None and bad is not None:
        kw = apply(p, kw, [bad], bad_table)
    return kw


def assert_unchanged_by(ok, ok_table, out, base):
    """Mutations that keep the values (SAME) must give the results bitwise."""
    if all(ok_table[m][0] == SAME for m in ok):
        for a, b in zip(flatten(out), flatten(base)):
            assert_array_equal(a, b)


def flatten(x):
    if isinstance(x, np.ndarray):
        return [x]
    if isinstance(x, dict):
        return [a for k in sorted(x) for a in flatten(x[k])]
    if isinstance(x, (list, tuple)):
        return [a for v in x for a in flatten(v)]
    return []


# ---------------------------------------------------------------------------
# 1. property-based tests
# ---------------------------------------------------------------------------

lengths_st = st.lists(st.integers(1, 6), min_size=1, max_size=5)
dtype_st = st.sampled_from([np.float32, np.float64])


@st.composite
def layer_problems(draw):
    kind = draw(st.sampled_from(CELL_KINDS))
    return layer_problem(
        kind,
        draw(st.integers(1, 4)),
        draw(st.integers(2, 5)),
        draw(lengths_st),
        draw(dtype_st),
        draw(st.integers(0, 2**32 - 1)),
        reverse=draw(st.booleans()),
        layer_norm=draw(st.booleans()),
        h0=draw(st.booleans()),
        mask=draw(st.booleans()),
        block_rows=draw(st.sampled_from([None, 1, 2, 3])),
        n_threads=1,
    )


@st.composite
def jordan_problems(draw):
    return jordan_problem(
        draw(st.integers(1, 4)),
        draw(st.lists(st.integers(2, 5), min_size=1, max_size=3)),
        draw(st.integers(1, 4)),
        draw(lengths_st),
        draw(dtype_st),
        draw(st.integers(0, 2**32 - 1)),
        activation=draw(st.sampled_from(["tanh", "relu"])),
        output_activation=draw(
            st.sampled_from(["identity", "tanh", "sigmoid", "softmax"])
        ),
        layer_norm=draw(st.booleans()),
        f0=draw(st.booleans()),
        drop=draw(st.booleans()),
        rmask=draw(st.booleans()),
        block_rows=draw(st.sampled_from([None, 1, 2, 3])),
        n_threads=1,
    )


def mutations(ok_table, bad_table):
    return st.tuples(
        st.lists(st.sampled_from(sorted(ok_table)), max_size=3, unique=True),
        st.one_of(st.none(), st.sampled_from(sorted(bad_table))),
    )


@FUZZ
@given(layer_problems(), mutations(LAYER_FWD_OK, LAYER_FWD_BAD))
def test_fuzz_layer_forward(p, m):
    assume(fuzz_forward(p, *m))


@FUZZ
@given(layer_problems(), mutations(LAYER_BWD_OK, LAYER_BWD_BAD))
def test_fuzz_layer_backward(p, m):
    assume(fuzz_backward(p, *m))


@FUZZ
@given(jordan_problems(), mutations(JORDAN_FWD_OK, JORDAN_FWD_BAD))
def test_fuzz_jordan_forward(p, m):
    assume(fuzz_forward(p, *m))


@FUZZ
@given(jordan_problems(), mutations(JORDAN_BWD_OK, JORDAN_BWD_BAD))
def test_fuzz_jordan_backward(p, m):
    assume(fuzz_backward(p, *m))


@settings(FUZZ, max_examples=max(1, N_EXAMPLES // 3))
@given(st.data())
def test_fuzz_raw_arguments(data):
    """Arbitrary arrays (any dtype, shape, order) for the array arguments of
    a fixed valid call: accepted only when they happen to be valid."""
    p = layer_problem(
        CELL_KINDS[data.draw(st.integers(0, 5))], 2, 3, [3, 2, 2], np.float64, 0
    )
    run_forward(p)
    name = data.draw(
        st.sampled_from(["X", "h0", "c0", "mask", "batch_sizes", "offsets"])
    )
    shape = tuple(data.draw(st.lists(st.integers(0, 8), max_size=3)))
    dtype = data.draw(
        st.sampled_from(
            [
                np.float64,
                np.float32,
                np.float16,
                np.intp,
                np.int32,
                np.uint8,
                bool,
                object,
            ]
        )
    )
    a = np.asarray(data.draw(st.sampled_from([0, 1, 3, -1, 1e30, np.nan])))
    with np.errstate(all="ignore"):
        a = np.broadcast_to(a, shape).astype(dtype)
    if data.draw(st.booleans()) and a.ndim == 2:
        a = np.asfortranarray(a)
    kw = dict(p.fwd, **{name: a})
    try:
        out = layer_forward(**kw)
    except ALLOWED:
        return
    check_forward_shapes(p, out)


# ---------------------------------------------------------------------------
# 2. crash canary: every mutation, every cell kind, in a child process
# ---------------------------------------------------------------------------


def _canary():
    """Run the whole catalogue; print each case before running it so that a
    crash names the case; exit 1 on a wrong outcome."""
    failures = []

    def run(label, fn, *args):
        print(label, flush=True)
        try:
            fn(*args)
        except Exception as exc:  # a wrong outcome, or an unexpected error type
            failures.append(f"{label}: {type(exc).__name__}: {exc}")

    def problems():
        for i, kind in enumerate(CELL_KINDS):
            for dtype in (np.float32, np.float64):
                yield lambda kind=kind, dtype=dtype, i=i: layer_problem(
                    kind,
                    2,
                    3,
                    [4, 2, 2, 1],
                    dtype,
                    i,
                    reverse=i % 2 == 1,
                    layer_norm=i % 3 == 0,
                )
        for hidden in ((3,), (3, 4), (2, 3, 2)):
            for dtype in (np.float32, np.float64):
                yield lambda hidden=hidden, dtype=dtype: jordan_problem(
                    2,
                    hidden,
                    3,
                    [4, 2, 2, 1],
                    dtype,
                    len(hidden),
                    layer_norm=len(hidden) == 2,
                )

    for make in problems():
        p = make()
        tag = (
            f"{p.kind} {getattr(p.spec, 'cell', p.spec.hidden)} "
            f"{np.dtype(p.dtype).name}"
        )
        fwd_ok, fwd_bad, bwd_ok, bwd_bad = (
            (LAYER_FWD_OK, LAYER_FWD_BAD, LAYER_BWD_OK, LAYER_BWD_BAD)
            if p.kind == "layer"
            else (JORDAN_FWD_OK, JORDAN_FWD_BAD, JORDAN_BWD_OK, JORDAN_BWD_BAD)
        )
        for name in fwd_ok:
            run(f"{tag} forward ok {name}", fuzz_forward, make(), [name], None)
        for name in fwd_bad:
            run(f"{tag} forward bad {name}", fuzz_forward, make(), [], name)
        for name in bwd_ok:
            run(f"{tag} backward ok {name}", fuzz_backward, make(), [name], None)
        for name in bwd_bad:
            run(f"{tag} backward bad {name}", fuzz_backward, make(), [], name)
    print("\n".join(failures) or "canary: all cases passed")
    sys.exit(1 if failures else 0)


def test_crash_canary_in_subprocess():
    import pyx_rnn

    # the child imports the same pyx_rnn as this process: the installed
    # package, or an in-place build
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyx_rnn.__file__)))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
    )
    r = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--canary"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, (
        f"the canary exited with {r.returncode} (negative: killed by that "
        f"signal) after:\n" + "\n".join(lines[-15:]) + "\n" + r.stderr[-3000:]
    )
    assert lines[-1] == "canary: all cases passed"
    assert len(lines) > 1000  # every case ran


# ---------------------------------------------------------------------------
# 3. explicit error messages
# ---------------------------------------------------------------------------


@pytest.fixture
def lstm():
    p = layer_problem(
        ("lstm", "tanh", True, True), 2, 3, [3, 2, 2], np.float64, 0, layer_norm=True
    )
    run_forward(p)
    return p


@pytest.fixture
def jordan():
    p = jordan_problem(2, (3, 4), 2, [3, 2, 2], np.float64, 0, layer_norm=True)
    run_forward(p)
    return p


def fwd(p, **changes):
    return call_forward(p, dict(p.fwd, **changes))


def bwd(p, **changes):
    return call_backward(p, dict(p.bwd, **changes))


@pytest.mark.parametrize("dtype", [np.float16, np.int64, object, np.dtype(">f8")])
def test_X_dtype_message(lstm, dtype):
    with pytest.raises(
        TypeError,
        match=r"layer_forward: X has dtype .*; the "
        r"kernels take float32 or float64",
    ):
        fwd(lstm, X=lstm.fwd["X"].astype(dtype))


def test_mixed_dtypes_message(lstm, jordan):
    X32 = lstm.fwd["X"].astype(np.float32)
    with pytest.raises(
        TypeError,
        match=r"w\['weight_ih'\] has dtype float64 but X has "
        r"dtype float32; .* pass w\['weight_ih'\]\.astype\(np\.float32\)",
    ):
        fwd(lstm, X=X32)
    with pytest.raises(
        TypeError, match=r"h0 has dtype float32 but X has dtype float64"
    ):
        fwd(lstm, h0=lstm.fwd["h0"].astype(np.float32))
    with pytest.raises(
        TypeError, match=r"c0 has dtype float32 but X has dtype float64"
    ):
        fwd(lstm, c0=lstm.fwd["c0"].astype(np.float32))
    with pytest.raises(TypeError, match=r"mask has dtype float32 but X"):
        fwd(lstm, mask=lstm.fwd["mask"].astype(np.float32))
    with pytest.raises(
        TypeError,
        match=r"jordan_forward: ws\[0\]\['weight_ih'\] has dtype "
        r"float64 but X has dtype float32",
    ):
        fwd(jordan, X=jordan.fwd["X"].astype(np.float32))
    with pytest.raises(TypeError, match=r"w_out has dtype float32"):
        fwd(jordan, w_out=jordan.fwd["w_out"].astype(np.float32))
    with pytest.raises(TypeError, match=r"rmask\[0\] has dtype float32"):
        fwd(jordan, rmask=[m.astype(np.float32) for m in jordan.fwd["rmask"]])


def test_ndim_messages(lstm):
    X = lstm.fwd["X"]
    with pytest.raises(
        ValueError,
        match=r"X must be 2-D with shape \(7, 2\) .*got a "
        r"1-D array",
    ):
        fwd(lstm, X=X.ravel())
    with pytest.raises(ValueError, match=r"X must be 2-D .* got a 3-D array"):
        fwd(lstm, X=X[None])


def test_X_shape_messages(lstm):
    X = lstm.fwd["X"]
    with pytest.raises(
        ValueError,
        match=r"X has shape \(7, 3\) but must have shape "
        r"\(7, 2\) \(offsets\[-1\] rows, spec.n_input columns\)",
    ):
        fwd(lstm, X=np.hstack([X, X[:, :1]]))
    with pytest.raises(
        ValueError, match=r"X has shape \(6, 2\) but must have shape \(7, 2\)"
    ):
        fwd(lstm, X=X[:-1])


def test_weight_messages(lstm, jordan):
    w = lstm.fwd["w"]
    with pytest.raises(
        ValueError,
        match=r"w\['weight_hh'\] has shape \(12, 4\) but must "
        r"have shape \(12, 3\) \(from spec.shapes\(\)\)",
    ):
        fwd(lstm, w=dict(w, weight_hh=np.zeros((12, 4))))
    with pytest.raises(ValueError, match=r"w is missing \['peephole'\]"):
        fwd(lstm, w={k: v for k, v in w.items() if k != "peephole"})
    with pytest.raises(ValueError, match=r"w has unexpected entries \['bogus'\]"):
        fwd(lstm, w=dict(w, bogus=np.zeros(2)))
    with pytest.raises(
        ValueError,
        match=r"w\['weight_ih'\] is not C-contiguous .* "
        r"np.ascontiguousarray",
    ):
        fwd(lstm, w=dict(w, weight_ih=np.asfortranarray(w["weight_ih"])))
    with pytest.raises(ValueError, match=r"w\['bias_hh'\] is read-only"):
        fwd(lstm, w=dict(w, bias_hh=readonly(w["bias_hh"])))
    with pytest.raises(
        TypeError, match=r"w\['bias_hh'\] must be a numpy.ndarray, got list"
    ):
        fwd(lstm, w=dict(w, bias_hh=w["bias_hh"].tolist()))
    with pytest.raises(TypeError, match=r"w must be a dict of arrays"):
        fwd(lstm, w=list(w.values()))
    ws = jordan.fwd["ws"]
    with pytest.raises(
        ValueError,
        match=r"ws\[1\]\['weight_hh'\] has shape \(4, 3\) but "
        r"must have shape \(4, 2\) \(from spec.layer_shapes\(1\)\)",
    ):
        fwd(jordan, ws=[ws[0], dict(ws[1], weight_hh=np.zeros((4, 3)))])
    with pytest.raises(
        ValueError, match=r"ws must have one entry per layer \(2\), got 1"
    ):
        fwd(jordan, ws=ws[:1])
    with pytest.raises(
        ValueError,
        match=r"w_out has shape \(4, 2\) but must have shape "
        r"\(2, 4\)",
    ):
        fwd(jordan, w_out=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"b_out has shape \(3,\)"):
        fwd(jordan, b_out=np.zeros(3))


def test_batch_sizes_messages(lstm):
    bs, off = lstm.fwd["batch_sizes"], lstm.fwd["offsets"]
    with pytest.raises(
        TypeError,
        match=r"batch_sizes must have dtype intp \(int64\), "
        r"got int32; .*Packing.from_lengths",
    ):
        fwd(lstm, batch_sizes=bs.astype(np.int32))
    with pytest.raises(
        ValueError, match=r"batch_sizes must be 1-D, got shape \(1, 3\)"
    ):
        fwd(lstm, batch_sizes=bs[None])
    with pytest.raises(ValueError, match=r"batch_sizes is empty"):
        fwd(lstm, batch_sizes=bs[:0], offsets=off[:1])
    with pytest.raises(
        ValueError,
        match=r"batch_sizes must be non-increasing .* "
        r"batch_sizes\[2\] = 3 > batch_sizes\[1\] = 1",
    ):
        fwd(lstm, batch_sizes=np.array([3, 1, 3]), offsets=np.array([0, 3, 4, 7]))
    with pytest.raises(
        ValueError,
        match=r"batch_sizes must be >= 1 at every step, got "
        r"batch_sizes\[3\] = 0",
    ):
        fwd(lstm, batch_sizes=np.array([3, 3, 1, 0]), offsets=np.array([0, 3, 6, 7, 7]))


def test_offsets_messages(lstm):
    off = lstm.fwd["offsets"]
    with pytest.raises(
        ValueError,
        match=r"offsets must be \[0, cumsum\(batch_sizes\)\], "
        r"but offsets\[1\] = 4 where 3 is expected",
    ):
        fwd(lstm, offsets=np.array([0, 4, 6, 7]))
    with pytest.raises(
        ValueError,
        match=r"offsets must have len\(batch_sizes\) \+ 1 = 4 "
        r"entries",
    ):
        fwd(lstm, offsets=off[:-1])
    with pytest.raises(ValueError, match=r"offsets\[0\] = 1 where 0 is expected"):
        fwd(lstm, offsets=off + 1)


def test_state_and_mask_messages(lstm, jordan):
    B, H = lstm.B, lstm.spec.hidden
    for name in ("h0", "c0", "mask"):
        with pytest.raises(
            ValueError,
            match=rf"{name} has shape \(3, 4\) but must have "
            rf"shape \(3, 3\) \(batch_sizes\[0\] sequences, spec.hidden\)",
        ):
            fwd(lstm, **{name: np.zeros((B, H + 1))})
    with pytest.raises(
        ValueError,
        match=r"f0\[1\] has shape \(1, 2\) but must have shape "
        r"\(3, 2\)",
    ):
        fwd(jordan, f0=[np.zeros((3, 4)), np.zeros((1, 2))])
    with pytest.raises(
        ValueError,
        match=r"drop\[1\] has shape \(6, 3\) but must have "
        r"shape \(7, 3\)",
    ):
        fwd(jordan, drop=[None, np.ones((6, 3))])
    with pytest.raises(
        ValueError, match=r"rmask must have one entry per layer \(2\), got 1"
    ):
        fwd(jordan, rmask=[np.ones((3, 4))])


def test_c0_ignored_for_other_cells():
    p = layer_problem(("gru", "tanh", True, False), 2, 3, [3, 2], np.float64, 0)
    H = run_forward(p)[0]
    # the network passes the empty c_n of a gru back as c0: it is ignored
    assert_array_equal(fwd(p, c0=np.empty((0, 0)))[0], H)


def test_backward_shape_messages(lstm, jordan):
    with pytest.raises(
        ValueError,
        match=r"layer_backward: dH has shape \(6, 3\) but must "
        r"have shape \(7, 3\)",
    ):
        bwd(lstm, dH=lstm.bwd["dH"][:-1])
    with pytest.raises(ValueError, match=r"dh_n has shape \(2, 3\)"):
        bwd(lstm, dh_n=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dc_n has shape \(3, 1\)"):
        bwd(lstm, dc_n=np.zeros((3, 1)))
    with pytest.raises(
        ValueError,
        match=r"jordan_backward: dZ_in has shape \(7, 3\) but "
        r"must have shape \(7, 2\) \(one row per packed row, spec.n_output\)",
    ):
        bwd(jordan, dZ_in=np.zeros((7, 3)))
    with pytest.raises(ValueError, match=r"df_n must have one entry per layer"):
        bwd(jordan, df_n=[np.zeros((3, 4))])


def test_grads_messages(lstm, jordan):
    def grads(**changes):
        return lambda: dict(lstm.bwd["grads"](), **changes)

    with pytest.raises(ValueError, match=r"grads\['weight_hh'\] is not C-contiguous"):
        bwd(lstm, grads=grads(weight_hh=np.zeros((3, 12)).T))
    with pytest.raises(ValueError, match=r"grads\['bias_ih'\] is read-only"):
        bwd(lstm, grads=grads(bias_ih=readonly(np.zeros(12))))
    with pytest.raises(
        ValueError,
        match=r"grads\['peephole'\] has shape \(3,\) but must "
        r"have shape \(9,\)",
    ):
        bwd(lstm, grads=grads(peephole=np.zeros(3)))
    with pytest.raises(TypeError, match=r"grads\['bias_ih'\] has dtype float32"):
        bwd(lstm, grads=grads(bias_ih=np.zeros(12, np.float32)))
    with pytest.raises(ValueError, match=r"g_out is missing \['bias'\]"):
        bwd(jordan, g_out=lambda: {"weight": np.zeros((2, 4))})
    with pytest.raises(ValueError, match=r"grads must have one entry per layer"):
        bwd(jordan, grads=lambda: jordan.bwd["grads"]()[:1])


def test_cache_messages(lstm, jordan):
    other = dataclasses.replace(lstm.spec, layer_norm=False)
    w = {k: np.zeros(s) for k, s in other.shapes().items()}
    cache = fwd(lstm, spec=other, w=w)[-1]
    with pytest.raises(
        ValueError,
        match=r"cache.xhat has shape \(0, 0\) where \(7, 12\) "
        r"is expected; the cache must be the one layer_forward returned "
        r"for this same spec",
    ):
        bwd(lstm, cache=cache)
    with pytest.raises(
        TypeError,
        match=r"cache must be the LayerCache returned by "
        r"layer_forward, got JordanCache",
    ):
        bwd(lstm, cache=jordan.bwd["cache"])
    with pytest.raises(
        ValueError, match=r"cache.G has shape \(6, 12\) where \(7, 12\)"
    ):
        bwd(
            lstm,
            cache=dataclasses.replace(lstm.bwd["cache"], G=lstm.bwd["cache"].G[:-1]),
        )
    with pytest.raises(ValueError, match=r"layer_backward \(cache\): offsets must be"):
        c = lstm.bwd["cache"]
        bwd(lstm, cache=dataclasses.replace(c, offsets=c.offsets + 1))
    with pytest.raises(ValueError, match=r"cache.Hs\[1\] has shape .* jordan_forward"):
        c = jordan.bwd["cache"]
        bwd(jordan, cache=dataclasses.replace(c, Hs=[c.Hs[0], c.Hs[0]]))


def test_t_stop_messages(lstm, jordan):
    with pytest.raises(
        ValueError,
        match=r"t_stop must be a scalar or have shape \(3,\) "
        r"\(one entry per sequence, batch_sizes\[0\]\), got shape \(2,\)",
    ):
        bwd(lstm, t_stop=np.array([1, 2]))
    with pytest.raises(TypeError, match=r"t_stop must be an integer"):
        bwd(jordan, t_stop=1.5)
    bwd(lstm, t_stop=np.array([0, 1, 2]))
    bwd(jordan, t_stop=2)


def test_block_rows_and_threads_messages(lstm):
    with pytest.raises(ValueError, match=r"block_rows must be >= 1, got 0"):
        fwd(lstm, block_rows=0)
    with pytest.raises(TypeError, match=r"block_rows must be an integer, got float"):
        fwd(lstm, block_rows=2.0)
    with pytest.raises(ValueError, match=r"n_threads must be >= 1, got 0"):
        fwd(lstm, n_threads=0)
    with pytest.raises(
        ValueError, match=r"n_threads=100000 is too large: the limit is 1024"
    ):
        fwd(lstm, n_threads=100000)
    with pytest.raises(ValueError, match=r"n_threads must be >= 1, got -1"):
        bwd(lstm, n_threads=-1)


def test_spec_messages(lstm, jordan):
    with pytest.raises(
        ValueError,
        match=r"spec.cell='jordan' is not supported; use one of "
        r"\['gru', 'lstm', 'rnn'\]",
    ):
        fwd(lstm, spec=dataclasses.replace(lstm.spec, cell="jordan"))
    with pytest.raises(ValueError, match=r"spec.hidden must be >= 1, got 0"):
        fwd(lstm, spec=dataclasses.replace(lstm.spec, hidden=0))
    with pytest.raises(TypeError, match=r"spec must be a pyx_rnn.layers.LayerSpec"):
        fwd(lstm, spec=jordan.spec)
    with pytest.raises(ValueError, match=r"spec.peephole=True needs cell='lstm'"):
        fwd(lstm, spec=LayerSpec("gru", 2, 3, peephole=True))
    with pytest.raises(
        ValueError, match=r"spec.output_activation='relu' is not supported"
    ):
        fwd(jordan, spec=dataclasses.replace(jordan.spec, output_activation="relu"))
    with pytest.raises(ValueError, match=r"spec.hidden is empty"):
        fwd(jordan, spec=dataclasses.replace(jordan.spec, hidden=()))


def test_non_finite_messages(lstm, jordan):
    with pytest.raises(
        ValueError,
        match=r"layer_forward: X contains NaN or infinity; .*"
        r"np.nan_to_num\(X\)",
    ):
        fwd(lstm, X=poke(lstm.fwd["X"], np.nan, lstm.rng))
    w = lstm.fwd["w"]
    with pytest.raises(ValueError, match=r"w\['weight_hh'\] contains NaN or infinity"):
        fwd(lstm, w=dict(w, weight_hh=poke(w["weight_hh"], np.inf, lstm.rng)))
    with pytest.raises(ValueError, match=r"h0 contains NaN or infinity"):
        fwd(lstm, h0=poke(lstm.fwd["h0"], -np.inf, lstm.rng))
    with pytest.raises(ValueError, match=r"c0 contains NaN or infinity"):
        fwd(lstm, c0=poke(lstm.fwd["c0"], np.nan, lstm.rng))
    with pytest.raises(ValueError, match=r"dH contains NaN or infinity"):
        bwd(lstm, dH=poke(lstm.bwd["dH"], np.nan, lstm.rng))
    with pytest.raises(ValueError, match=r"ws\[1\]\['bias_ih'\] contains NaN"):
        ws = jordan.fwd["ws"]
        fwd(jordan, ws=[ws[0], dict(ws[1], bias_ih=np.full(4, np.nan))])
    with pytest.raises(ValueError, match=r"df_n\[0\] contains NaN"):
        bwd(jordan, df_n=[np.full((3, 4), np.inf), np.zeros((3, 2))])


def test_finite_values_that_overflow_a_sum_are_accepted():
    """The finiteness check sums first: a sum that overflows must fall back to
    the exact test instead of rejecting finite data."""
    p = layer_problem(("rnn", "tanh", True, False), 2, 3, [3, 2], np.float32, 0)
    X = np.full_like(p.fwd["X"], 3e38)
    with np.errstate(all="ignore"):
        H = fwd(p, X=X)[0]
    assert H.shape == (5, 3)


def test_finite_checks_can_be_switched_off(lstm):
    X = poke(lstm.fwd["X"], np.nan, lstm.rng)
    with _checks.finite_checks(False):
        H = fwd(lstm, X=X)[0]
    assert np.isnan(H).any()
    with pytest.raises(ValueError, match="NaN"):
        fwd(lstm, X=X)


def test_memory_cap():
    """Shapes whose buffers would exceed MAX_WORKSPACE_BYTES raise MemoryError
    before anything is allocated (X is a broadcast view: no memory)."""
    spec = LayerSpec("rnn", 1, 8)
    w = {k: np.zeros(s) for k, s in spec.shapes().items()}
    n = 2**27
    X = np.broadcast_to(np.zeros((1, 1)), (n, 1))
    with pytest.raises(
        MemoryError,
        match=r"layer_forward would allocate about .* GiB of buffers "
        r"\(134217728 rows x 8 gate units, 134217728 sequences\), .*"
        r"MAX_WORKSPACE_BYTES = 8 GiB; split the batch",
    ):
        layer_forward(spec, w, X, np.array([n]), np.array([0, n]))
    jspec = JordanSpec(1, (8,), 1)
    ws = [{k: np.zeros(s) for k, s in jspec.layer_shapes(0).items()}]
    with pytest.raises(MemoryError, match=r"jordan_forward would allocate"):
        jordan_forward(
            jspec, ws, np.zeros((1, 8)), np.zeros(1), X, np.array([n]), np.array([0, n])
        )


def test_int32_limits():
    spec = LayerSpec("lstm", 1, 2**29)
    with pytest.raises(
        ValueError,
        match=r"spec.gates \* spec.hidden = 2147483648 exceeds "
        r"2\*\*31 - 1",
    ):
        layer_forward(spec, {}, np.zeros((1, 1)), np.array([1]), np.array([0, 1]))
    spec = LayerSpec("gru", 1, 30000)
    with pytest.raises(
        ValueError,
        match=r"the elements of weight_ih / weight_hh = "
        r"2700000000 exceeds",
    ):
        layer_forward(spec, {}, np.zeros((1, 1)), np.array([1]), np.array([0, 1]))
    p = layer_problem(("lstm", "tanh", True, False), 2, 3, [3, 2], np.float64, 0)
    with pytest.raises(ValueError, match=r"block_rows \* gates \* hidden = .* exceeds"):
        fwd(p, block_rows=2**28)
    with pytest.raises(
        ValueError, match=r"batch_sizes\[0\] \+ block_rows = .* exceeds"
    ):
        fwd(p, block_rows=2**31 - 2)
    # rows * columns of the input projection (the dense kernels' int offsets)
    X = np.broadcast_to(np.zeros((1, 2)), (2**30 + 1, 2))
    n = X.shape[0]
    with pytest.raises(ValueError, match=r"rows \* max\(n_input, gates \* hidden\)"):
        fwd(
            p,
            X=X,
            batch_sizes=np.array([n]),
            offsets=np.array([0, n]),
            h0=None,
            c0=None,
            mask=None,
        )


def test_layout_is_fixed_not_rejected(lstm, jordan):
    """Strided, Fortran-ordered and read-only inputs are copied: same result."""
    H = fwd(lstm)[0].copy()
    assert_array_equal(fwd(lstm, X=strided(lstm.fwd["X"]))[0], H)
    assert_array_equal(
        fwd(
            lstm,
            X=np.asfortranarray(lstm.fwd["X"]),
            h0=readonly(lstm.fwd["h0"]),
            mask=strided(lstm.fwd["mask"]),
        )[0],
        H,
    )
    Y = fwd(jordan)[0]
    assert_array_equal(
        fwd(
            jordan,
            X=readonly(jordan.fwd["X"]),
            f0=[np.asfortranarray(f) for f in jordan.fwd["f0"]],
        )[0],
        Y,
    )


@pytest.mark.parametrize("kind", CELL_KINDS)
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_values_do_not_raise(kind, layer_norm, dtype):
    """1e30 in X and every weight: no exception; what comes out is documented
    in the module docstring."""
    p = layer_problem(kind, 2, 3, [3, 2], dtype, 0, layer_norm=layer_norm)
    X = p.fwd["X"] * dtype(1e30)
    w = {k: v * dtype(1e30) for k, v in p.fwd["w"].items()}
    with np.errstate(all="ignore"):
        H, h_n, c_n, cache = fwd(p, X=X, w=w)
        grads = {k: np.zeros_like(v) for k, v in w.items()}
        dX, dh0, _ = layer_backward(p.spec, w, grads, cache, np.ones_like(H))
    finite = np.isfinite(H).all() and np.isfinite(dX).all()
    if dtype == np.float64 or (not layer_norm and kind[1] == "tanh"):
        assert finite
    elif layer_norm and kind[1] == "tanh":
        assert np.isnan(H).all()  # float32: inf - inf in the normalisation


# ---------------------------------------------------------------------------
# token input: checks for pyx_rnn._dense.gather_rows / scatter_add_rows
# ---------------------------------------------------------------------------


@settings(FUZZ, max_examples=max(1, N_EXAMPLES // 3))
@given(
    st.lists(st.integers(-3, 8), max_size=12),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
)
def test_fuzz_token_rows(ids, dtype, same_dtype):
    """Token ids outside the table are rejected before the kernels, which
    would index out of bounds; accepted calls match NumPy."""
    from pyx_rnn import _dense

    table = np.arange(15, dtype=dtype).reshape(5, 3)
    weights = np.linspace(0.5, 1.5, len(ids)).astype(
        dtype if same_dtype else np.float16
    )
    out = np.empty((len(ids), 3), dtype)
    ids = np.array(ids, np.intp)
    try:
        i, w = _checks.check_gather_rows_args(ids, weights, table, out)
    except ALLOWED:
        assert not same_dtype or ((ids < 0) | (ids >= 5)).any()
        return
    _dense.gather_rows(i, w, table, out, 1)
    assert_array_equal(out, w[:, None] * table[i])
    grad = np.zeros_like(table)
    i, w, src = _checks.check_scatter_add_rows_args(
        ids, weights, np.asfortranarray(out), grad
    )
    _dense.scatter_add_rows(i, w, src, grad)
    expected = np.zeros_like(table)
    np.add.at(expected, i, w[:, None] * out)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_token_rows_messages():
    table = np.zeros((5, 3))
    ids, weights, out = np.array([0, 4, 5]), np.ones(3), np.zeros((3, 3))
    with pytest.raises(
        ValueError,
        match=r"gather_rows: ids\[2\] = 5 is not a row of the "
        r"table \(0 <= id < 5\)",
    ):
        _checks.check_gather_rows_args(ids, weights, table, out)
    with pytest.raises(ValueError, match=r"ids\[0\] = -1 is not a row"):
        _checks.check_scatter_add_rows_args(np.array([-1, 0, 0]), weights, out, table)
    with pytest.raises(TypeError, match=r"ids must have dtype intp"):
        _checks.check_gather_rows_args(ids.astype(np.int32), weights, table, out)
    with pytest.raises(
        ValueError,
        match=r"weights has shape \(2,\) but must have shape "
        r"\(3,\)",
    ):
        _checks.check_gather_rows_args(np.zeros(3, np.intp), weights[:2], table, out)
    with pytest.raises(ValueError, match=r"out has shape \(2, 3\)"):
        _checks.check_gather_rows_args(np.zeros(3, np.intp), weights, table, out[:2])
    with pytest.raises(ValueError, match=r"table must be a C-contiguous writable"):
        _checks.check_scatter_add_rows_args(
            np.zeros(3, np.intp), weights, out, np.zeros((3, 5)).T
        )
    with pytest.raises(ValueError, match=r"src has shape \(3, 2\)"):
        _checks.check_scatter_add_rows_args(
            np.zeros(3, np.intp), weights, np.zeros((3, 2)), table
        )


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        ([], ValueError, r"lengths must be a non-empty 1-D array, got shape \(0,\)"),
        ([[1, 2]], ValueError, r"non-empty 1-D array, got shape \(1, 2\)"),
        ([3, 0], ValueError, r"every sequence needs at least one step, got length 0"),
        ([3, -2], ValueError, r"at least one step, got length -2"),
        ([2.5], ValueError, r"lengths must be whole numbers of steps, got 2.5"),
        ([np.nan], ValueError, r"whole numbers"),
        (["a"], TypeError, r"lengths must be integers, got dtype <U1"),
        ([True], TypeError, r"lengths must be integers, got dtype bool"),
        ("abc", TypeError, r"lengths must be integers, got str"),
        ([2**40], ValueError, r"longer than the kernels can handle"),
    ],
)
def test_from_lengths_rejects(lengths, error, match):
    with pytest.raises(error, match=match):
        Packing.from_lengths(lengths)


def test_from_lengths_accepts_whole_floats_and_unsigned():
    assert_array_equal(Packing.from_lengths([3.0, 1.0]).batch_sizes, [2, 1, 1])
    p = Packing.from_lengths(np.array([1, 3], np.uint8))
    assert p.batch_sizes.dtype == np.intp
    assert_array_equal(p.order, [1, 0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=60), st.booleans())
def test_from_lengths_sorts_longest_first_stably(lengths, strided):
    # the compiled counting sort against its NumPy definition
    raw = np.array(lengths, dtype=np.intp)
    given_ = np.repeat(raw, 2)[::2] if strided else raw   # a strided view too
    p = Packing.from_lengths(given_)
    order = np.argsort(-raw, kind="stable")
    counts = np.bincount(raw[order], minlength=raw.max() + 1)
    batch_sizes = len(raw) - np.cumsum(counts)[: raw.max()]
    for got, want in [(p.order, order), (p.lengths, raw[order]),
                      (p.batch_sizes, batch_sizes),
                      (p.offsets, np.concatenate(([0], np.cumsum(batch_sizes))))]:
        assert got.dtype == np.intp
        assert_array_equal(got, want)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=12),
       st.integers(0, 30), st.integers(-3, 3), st.booleans())
def test_compiled_packing_check_agrees_with_the_messages(lengths, at, by, in_offsets):
    # packings valid, or made wrong by one entry: the compiled check
    # accepts exactly those _validate_packing finds nothing wrong with
    p = Packing.from_lengths(lengths)
    bs, off = p.batch_sizes.copy(), p.offsets.copy()
    a = off if in_offsets else bs
    a[at % len(a)] += by
    try:
        _checks._validate_packing(bs, off, "test")
        valid = True
    except ValueError:
        valid = False
    assert _bookkeeping.packing_is_valid(bs, off, _checks.INT32_MAX) == valid
    if valid:
        # the bound on steps and sequences (the kernels' 32-bit ints)
        bound = max(len(bs), int(bs[0]))
        assert _bookkeeping.packing_is_valid(bs, off, bound)
        assert not _bookkeeping.packing_is_valid(bs, off, bound - 1)
    else:
        with pytest.raises(ValueError, match="test: "):
            _checks._check_packing(bs, off, "test")
    for cut in (bs[:0], bs[:-1]):   # no steps; one entry too few for offsets
        assert not _bookkeeping.packing_is_valid(cut, off, _checks.INT32_MAX)


@pytest.mark.parametrize(
    "sequences, error, match",
    [
        ([], ValueError, r"sequences is empty"),
        (5, TypeError, r"sequences must be a list of \(n_steps, n_features\) arrays"),
        (
            [np.ones(3)],
            ValueError,
            r"sequences\[0\] must be 2-D \(n_steps, n_features\), got "
            r"shape \(3,\); reshape",
        ),
        (
            [np.ones((2, 2)), np.ones((2, 3))],
            ValueError,
            r"sequences\[1\] has 3 features per "
            r"step but sequences\[0\] has 2",
        ),
        ([np.ones((0, 2))], ValueError, r"at least one step"),
    ],
)
def test_pack_rejects(sequences, error, match):
    with pytest.raises(error, match=match):
        pack(sequences)


def test_pack_accepts_a_3d_array():
    data, pk = pack(np.ones((2, 3, 4)))
    assert data.shape == (6, 4) and pk.n_sequences == 2


if __name__ == "__main__" and sys.argv[1:] == ["--canary"]:
    _canary()
elif __name__ == "__main__":
    print(
        textwrap.dedent("""\
        usage: python tests/test_fuzz.py --canary   (run by the test suite)""")
    )
