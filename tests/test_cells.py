"""Tests of the compiled recurrent kernels (pyx_rnn.layers / _cells / _jordan).

1. Kernel == NumPy reference (pyx_rnn/reference.py), one sequence at a time:
   outputs at every step, final states and every gradient, for every cell and
   option combination (rnn tanh/relu, lstm with/without peepholes, gru with the
   reset after/before the product; reverse; layer norm; recurrent mask) and for
   Jordan stacks of 1-3 layers with every output activation, in float64
   (~1e-10) and float32 (float32 tolerances against the float64 reference).
   Jordan between-layer dropout, which the reference lacks, is checked against
   the reference with a column-constant mask (folded into ``weight_ih``), a
   small NumPy forward with row-varying masks, and finite differences.
2. Central finite differences of the kernels themselves (float64).
3. A batch of variable-length sequences == each sequence alone (bitwise with
   ``block_rows=1``, except the last ulp of the rnn/gru/lstm dX: see the test).
4. Results are bitwise independent of the thread count.
5. Truncation (``t_stop``) == the reference on the suffix of the sequence
   (forward direction only: the network refuses TBPTT when bidirectional).
6. Defaults (``h0=None`` ...) == explicit zeros / ones.
"""

import itertools

import numpy as np
import pytest
from _shared import CELL_KINDS, numerical_gradient
from numpy.testing import assert_allclose, assert_array_equal
from threadpoolctl import threadpool_limits

from pyx_rnn import reference as ref
from pyx_rnn.layers import (
    CELLS,
    JordanSpec,
    LayerSpec,
    jordan_backward,
    jordan_forward,
    layer_backward,
    layer_forward,
)
from pyx_rnn.packing import pack, unpack

N_INPUT, HIDDEN, N_OUT = 3, 5, 3
LENGTHS = [6, 3, 6, 1, 4, 2]          # unsorted, with ties and a length-1 sequence
P_DROP = 0.3
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12),
       np.float32: dict(rtol=1e-4, atol=1e-5)}
FD_EPS, FD_RTOL, FD_ATOL = 1e-6, 1e-6, 1e-8


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------


def _kind_id(kind):
    cell, act, reset_after, peephole = kind
    if cell == "rnn":
        return f"rnn-{act}"
    if cell == "lstm":
        return "lstm-peephole" if peephole else "lstm"
    return "gru-reset_after" if reset_after else "gru-reset_before"


def cfg(cell, activation="tanh", reset_after=True, peephole=False, reverse=False,
        layer_norm=False, mask=False):
    return dict(cell=cell, activation=activation, reset_after=reset_after,
                peephole=peephole, reverse=reverse, layer_norm=layer_norm,
                mask=mask)


def cfg_id(c):
    parts = [_kind_id((c["cell"], c["activation"], c["reset_after"], c["peephole"]))]
    parts += [k for k in ("reverse", "layer_norm", "mask") if c[k]]
    return "-".join(parts)


ALL_CONFIGS = [
    cfg(cell, act, ra, peep, reverse=rev, layer_norm=ln, mask=m)
    for (cell, act, ra, peep), rev, ln, m in itertools.product(
        CELL_KINDS, [False, True], [False, True], [False, True])
]

# a few representative configurations of each cell (every option is on in one)
REPRESENTATIVE = [
    cfg("rnn", reverse=True, layer_norm=True, mask=True),
    cfg("rnn", "relu", mask=True),
    cfg("lstm", peephole=True, layer_norm=True, mask=True),
    cfg("lstm", reverse=True),
    cfg("gru", reset_after=False, layer_norm=True, mask=True),
    cfg("gru", reverse=True, layer_norm=True, mask=True),
    cfg("gru", reset_after=False, reverse=True),
]

# Jordan: (hidden sizes, output activation, activation, layer_norm, rmask)
JORDAN_VARIANTS = {
    "plain": dict(activation="tanh", layer_norm=False, rmask=False),
    "ln-mask": dict(activation="tanh", layer_norm=True, rmask=True),
    "relu-ln-mask": dict(activation="relu", layer_norm=True, rmask=True),
}
OUT_ACTS = ["identity", "tanh", "sigmoid", "softmax"]
JORDAN_HIDDEN = [(4,), (4, 3), (3, 4, 5)]


def jcfg(hidden, output_activation="identity", activation="tanh",
         layer_norm=False, rmask=False, drop=False):
    return dict(hidden=tuple(hidden), output_activation=output_activation,
                activation=activation, layer_norm=layer_norm, rmask=rmask,
                drop=drop)


def jcfg_id(c):
    parts = ["x".join(map(str, c["hidden"])), c["output_activation"]]
    if c["activation"] != "tanh":
        parts.append(c["activation"])
    parts += [k for k in ("layer_norm", "rmask", "drop") if c[k]]
    return "-".join(parts)


JORDAN_REPRESENTATIVE = [
    jcfg((4, 3), "softmax", layer_norm=True, rmask=True, drop=True),
    jcfg((3, 4, 5), "tanh", "relu", layer_norm=True, rmask=True, drop=True),
    jcfg((4,), "identity", rmask=True),
    jcfg((4, 3), "sigmoid"),
]


# ---------------------------------------------------------------------------
# random problems
# ---------------------------------------------------------------------------

def make_mask(rng, shape):
    """Dropout mask (0 or 1/(1-p)); every row has a dropped and a kept entry."""
    keep = rng.random(shape) > P_DROP
    keep[..., 0] = False
    keep[..., -1] = True
    return keep / (1 - P_DROP)


def round_to(problem, dtype):
    """The problem with every array rounded to ``dtype`` (but kept float64),
    so that a float32 kernel and the float64 reference see the same values."""
    if isinstance(problem, dict):
        return {k: round_to(v, dtype) for k, v in problem.items()}
    if isinstance(problem, list):
        return [round_to(v, dtype) for v in problem]
    if isinstance(problem, np.ndarray) and problem.dtype == np.float64:
        return problem.astype(dtype).astype(np.float64)
    return problem


def layer_problem(c, lengths=LENGTHS, seed=0, zero_state=False):
    rng = np.random.default_rng(seed)
    lstm = c["cell"] == "lstm"
    B = len(lengths)
    params = ref.init_params(c["cell"], N_INPUT, HIDDEN, peephole=c["peephole"],
                             layer_norm=c["layer_norm"], rng=rng)
    return dict(
        params=params,
        seqs=[rng.standard_normal((n, N_INPUT)) for n in lengths],
        h0=None if zero_state else rng.standard_normal((B, HIDDEN)),
        c0=None if zero_state or not lstm else rng.standard_normal((B, HIDDEN)),
        mask=make_mask(rng, (B, HIDDEN)) if c["mask"] else None,
        dHs=[rng.standard_normal((n, HIDDEN)) for n in lengths],
        dhn=rng.standard_normal((B, HIDDEN)),
        dcn=rng.standard_normal((B, HIDDEN)) if lstm else None,
    )


def spec_of(c):
    return LayerSpec(c["cell"], N_INPUT, HIDDEN, activation=c["activation"],
                     reverse=c["reverse"], reset_after=c["reset_after"],
                     peephole=c["peephole"], layer_norm=c["layer_norm"])


def _sel(a, idx, dtype):
    return None if a is None else np.ascontiguousarray(a[idx], dtype)


def kernel_layer(c, pb, dtype=np.float64, block_rows=2, n_threads=2, t_stop=0,
                 seq_subset=None):
    """Run layer_forward + layer_backward; results in the caller's order."""
    spec = spec_of(c)
    lstm = c["cell"] == "lstm"
    idx = np.arange(len(pb["seqs"])) if seq_subset is None else np.asarray(seq_subset)
    X, pk = pack([pb["seqs"][i] for i in idx], dtype)
    dH, pk2 = pack([pb["dHs"][i] for i in idx], dtype)
    assert_array_equal(pk.offsets, pk2.offsets)
    sel = idx[pk.order]                       # problem index of each packed row
    w = {k: v.astype(dtype) for k, v in pb["params"].items()}
    Hp, hn, cn, cache = layer_forward(
        spec, w, X, pk.batch_sizes, pk.offsets, _sel(pb["h0"], sel, dtype),
        _sel(pb["c0"], sel, dtype), _sel(pb["mask"], sel, dtype),
        block_rows=block_rows, n_threads=n_threads)
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    dX, dh0, dc0 = layer_backward(
        spec, w, grads, cache, dH, _sel(pb["dhn"], sel, dtype),
        _sel(pb["dcn"], sel, dtype), t_stop=t_stop, n_threads=n_threads)
    inv = np.argsort(pk.order)
    out = dict(H=unpack(Hp, pk), hn=hn[inv], dX=unpack(dX, pk), dh0=dh0[inv],
               grads=grads)
    if lstm:
        out.update(cn=cn[inv], dc0=dc0[inv])
    return out, cache, pk


def reference_sequence(c, p, x, h0, c0, m, dH, dhn, dcn):
    """Reference forward + backward of one sequence, in the layer's direction."""
    rev = c["reverse"]
    if rev:
        x, dH = x[::-1], dH[::-1]
    opts = dict(layer_norm=c["layer_norm"], mask=m)
    out = {}
    if c["cell"] == "rnn":
        Hr, cache = ref.rnn_forward(x, p, h0, activation=c["activation"], **opts)
        g = ref.rnn_backward(dH, dhn, cache)
    elif c["cell"] == "lstm":
        Hr, Cr, cache = ref.lstm_forward(x, p, h0, c0, **opts)
        g = ref.lstm_backward(dH, dhn, dcn, cache)
        out.update(cn=Cr[-1], dc0=g.pop("c0"))
    else:
        Hr, cache = ref.gru_forward(x, p, h0, reset_after=c["reset_after"], **opts)
        g = ref.gru_backward(dH, dhn, cache)
    out.update(hn=Hr[-1], dh0=g.pop("h0"))
    dx = g.pop("x")
    out.update(H=Hr[::-1] if rev else Hr, dX=dx[::-1] if rev else dx, grads=g)
    return out


def reference_layer(c, pb):
    B = len(pb["seqs"])
    get = lambda a, i: None if a is None else a[i]  # noqa: E731
    per = [reference_sequence(c, pb["params"], pb["seqs"][i], get(pb["h0"], i),
                              get(pb["c0"], i), get(pb["mask"], i), pb["dHs"][i],
                              pb["dhn"][i], get(pb["dcn"], i)) for i in range(B)]
    out = dict(H=[r["H"] for r in per], hn=np.array([r["hn"] for r in per]),
               dX=[r["dX"] for r in per], dh0=np.array([r["dh0"] for r in per]),
               grads={k: sum(r["grads"][k] for r in per) for k in pb["params"]})
    if c["cell"] == "lstm":
        out.update(cn=np.array([r["cn"] for r in per]),
                   dc0=np.array([r["dc0"] for r in per]))
    return out


# Jordan ---------------------------------------------------------------------

def jspec_of(jc):
    return JordanSpec(N_INPUT, jc["hidden"], N_OUT, jc["activation"],
                      jc["output_activation"], jc["layer_norm"])


def jordan_problem(jc, lengths=LENGTHS, seed=0, drop=None, zero_state=False):
    """``drop``: None, 'random' (0 or 1/(1-p) per entry), 'ones', or 'columns'
    (one mask vector per layer, the same for every row)."""
    rng = np.random.default_rng(seed)
    spec = jspec_of(jc)
    B, L = len(lengths), len(jc["hidden"])
    layers, output = ref.jordan_init(N_INPUT, jc["hidden"], N_OUT,
                                     layer_norm=jc["layer_norm"], rng=rng)
    pb = dict(
        layers=layers, output=output,
        seqs=[rng.standard_normal((n, N_INPUT)) for n in lengths],
        f0=None if zero_state else [rng.standard_normal((B, f)) for f in spec.fed],
        rmask=[make_mask(rng, (B, f)) for f in spec.fed] if jc["rmask"] else None,
        dYs=[rng.standard_normal((n, N_OUT)) for n in lengths],
        dfn=[rng.standard_normal((B, f)) for f in spec.fed],
        drop=None, drop_columns=None,
    )
    if drop == "random":
        # drop[li][i]: mask of the input of layer li at every step of sequence i
        pb["drop"] = [None] + [[make_mask(rng, (n, jc["hidden"][li - 1]))
                                for n in lengths] for li in range(1, L)]
    elif drop == "ones":
        pb["drop"] = [None] + [[np.ones((n, jc["hidden"][li - 1])) for n in lengths]
                               for li in range(1, L)]
    elif drop == "columns":
        cols = [None] + [make_mask(rng, jc["hidden"][li - 1]) for li in range(1, L)]
        pb["drop_columns"] = cols
        pb["drop"] = [None] + [[np.tile(cols[li], (n, 1)) for n in lengths]
                               for li in range(1, L)]
    return pb


def out_backward(Y, dY, kind):
    """dL/dz from dL/dy through the output activation (row by row)."""
    if kind == "identity":
        return dY.copy()
    if kind == "tanh":
        return dY * (1 - Y * Y)
    if kind == "sigmoid":
        return dY * Y * (1 - Y)
    return Y * (dY - (dY * Y).sum(-1, keepdims=True))


def kernel_jordan(jc, pb, dtype=np.float64, block_rows=2, n_threads=2, t_stop=0,
                  seq_subset=None, use_dfn=False, drop=True, rmask=True):
    spec = jspec_of(jc)
    L = len(jc["hidden"])
    idx = np.arange(len(pb["seqs"])) if seq_subset is None else np.asarray(seq_subset)
    X, pk = pack([pb["seqs"][i] for i in idx], dtype)
    dY, _ = pack([pb["dYs"][i] for i in idx], dtype)
    sel = idx[pk.order]
    layers = [{k: v.astype(dtype) for k, v in lay.items()} for lay in pb["layers"]]
    w_out = pb["output"]["weight"].astype(dtype)
    b_out = pb["output"]["bias"].astype(dtype)
    f0 = None if pb["f0"] is None else [_sel(f, sel, dtype) for f in pb["f0"]]
    rm = None
    if rmask and pb["rmask"] is not None:
        rm = [_sel(m, sel, dtype) for m in pb["rmask"]]
    dr = None
    if drop and pb["drop"] is not None:
        dr = [None] + [pack([pb["drop"][li][i] for i in idx], dtype)[0]
                       for li in range(1, L)]
    Y, fn, cache = jordan_forward(spec, layers, w_out, b_out, X, pk.batch_sizes,
                                  pk.offsets, f0, dr, rm, block_rows=block_rows,
                                  n_threads=n_threads)
    dZ = out_backward(Y, dY, jc["output_activation"])
    grads = [{k: np.zeros_like(v) for k, v in lay.items()} for lay in layers]
    g_out = {"weight": np.zeros_like(w_out), "bias": np.zeros_like(b_out)}
    dfn = [_sel(f, sel, dtype) for f in pb["dfn"]] if use_dfn else None
    dX, df0 = jordan_backward(spec, layers, w_out, grads, g_out, cache, dZ, dfn,
                              t_stop=t_stop, n_threads=n_threads)
    inv = np.argsort(pk.order)
    out = dict(Y=unpack(Y, pk), fn=[f[inv] for f in fn], dX=unpack(dX, pk),
               df0=[f[inv] for f in df0], grads=grads, g_out=g_out)
    return out, cache, pk


def reference_jordan(jc, pb, layers=None):
    B, L = len(pb["seqs"]), len(jc["hidden"])
    layers = pb["layers"] if layers is None else layers
    out = dict(Y=[], fn=[[] for _ in range(L)], dX=[], df0=[[] for _ in range(L)],
               grads=[{k: np.zeros_like(v) for k, v in lay.items()} for lay in layers],
               g_out={k: np.zeros_like(v) for k, v in pb["output"].items()})
    for i in range(B):
        Y, Hs, cache = ref.jordan_forward(
            pb["seqs"][i], layers, pb["output"], activation=jc["activation"],
            output_activation=jc["output_activation"], layer_norm=jc["layer_norm"],
            masks=None if pb["rmask"] is None else [m[i] for m in pb["rmask"]],
            f0=None if pb["f0"] is None else [f[i] for f in pb["f0"]])
        lg, og, dx, df = ref.jordan_backward(pb["dYs"][i], cache)
        out["Y"].append(Y)
        out["dX"].append(dx)
        for li in range(L):
            out["fn"][li].append(Hs[li + 1][-1] if li + 1 < L else Y[-1])
            out["df0"][li].append(df[li])
            for k in lg[li]:
                out["grads"][li][k] += lg[li][k]
        for k in og:
            out["g_out"][k] += og[k]
    out["fn"] = [np.array(f) for f in out["fn"]]
    out["df0"] = [np.array(f) for f in out["df0"]]
    return out


# ---------------------------------------------------------------------------
# comparison helpers
# ---------------------------------------------------------------------------

def compare(a, b, check, path="out"):
    """Apply ``check(a, b, path)`` to every array of two nested results."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, sorted(a), sorted(b))
        for k in a:
            compare(a[k], b[k], check, f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            compare(x, y, check, f"{path}[{i}]")
    else:
        assert a is not None and b is not None, path
        check(np.asarray(a), np.asarray(b), path)


def assert_close(actual, desired, rtol, atol, nonzero=True):
    def check(a, d, path):
        assert a.shape == d.shape, (path, a.shape, d.shape)
        if nonzero:  # a comparison of two zero arrays would prove nothing
            assert np.any(d != 0), f"{path}: reference is all zeros"
        assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=path)
    compare(actual, desired, check)


def assert_identical(actual, desired):
    def check(a, d, path):
        assert a.dtype == d.dtype, path
        assert_array_equal(a, d, err_msg=path, strict=True)
    compare(actual, desired, check)


def assert_dtype(result, dtype):
    def check(a, _, path):
        assert a.dtype == dtype, (path, a.dtype)
    compare(result, result, check)


# ---------------------------------------------------------------------------
# 1. kernel == reference (float64 to 1e-10, float32 to float32 tolerances)
# ---------------------------------------------------------------------------

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32],
                                 ids=["f64", "f32"])


@DTYPES
@pytest.mark.parametrize("c", ALL_CONFIGS, ids=cfg_id)
def test_layer_matches_reference(c, dtype):
    pb = round_to(layer_problem(c, seed=11), dtype)
    got, _, _ = kernel_layer(c, pb, dtype, block_rows=2, n_threads=2)
    assert_dtype(got, dtype)
    assert_close(got, reference_layer(c, pb), **TOL[dtype])


@DTYPES
@pytest.mark.parametrize("variant", list(JORDAN_VARIANTS))
@pytest.mark.parametrize("output_activation", OUT_ACTS)
@pytest.mark.parametrize("hidden", JORDAN_HIDDEN, ids=lambda h: "x".join(map(str, h)))
def test_jordan_matches_reference(hidden, output_activation, variant, dtype):
    jc = jcfg(hidden, output_activation, **JORDAN_VARIANTS[variant])
    pb = round_to(jordan_problem(jc, seed=12), dtype)
    got, _, _ = kernel_jordan(jc, pb, dtype, block_rows=2, n_threads=2)
    assert_dtype(got, dtype)
    assert_close(got, reference_jordan(jc, pb), **TOL[dtype])


@pytest.mark.parametrize("jc", [
    jcfg((4, 3), "softmax", layer_norm=True, rmask=True),
    jcfg((3, 4, 5), "tanh", "relu", layer_norm=True, rmask=True),
    jcfg((4, 3), "identity"),
], ids=jcfg_id)
def test_jordan_drop_all_ones_is_no_dropout(jc):
    pb = jordan_problem(jc, seed=13, drop="ones")
    with_ones, _, _ = kernel_jordan(jc, pb, use_dfn=True, drop=True)
    without, _, _ = kernel_jordan(jc, pb, use_dfn=True, drop=False)
    assert_identical(with_ones, without)


@DTYPES
@pytest.mark.parametrize("jc", [
    jcfg((4, 3), "softmax", layer_norm=True, rmask=True),
    jcfg((4, 3), "tanh", "relu", layer_norm=True),
    jcfg((3, 4, 5), "sigmoid", rmask=True),
], ids=jcfg_id)
def test_jordan_column_drop_matches_reference(jc, dtype):
    """A dropout mask ``d`` that is the same for every row is a column scaling
    of ``weight_ih``: the reference with ``W' = W * d`` gives the same outputs,
    and ``dL/dW = dL/dW' * d``."""
    pb = round_to(jordan_problem(jc, seed=14, drop="columns"), dtype)
    got, _, _ = kernel_jordan(jc, pb, dtype)
    L = len(jc["hidden"])
    scaled = [dict(lay) for lay in pb["layers"]]
    for li in range(1, L):
        scaled[li]["weight_ih"] = pb["layers"][li]["weight_ih"] * pb["drop_columns"][li]
    want = reference_jordan(jc, pb, layers=scaled)
    for li in range(1, L):
        want["grads"][li]["weight_ih"] *= pb["drop_columns"][li]
    assert_close(got, want, **TOL[dtype])


def numpy_jordan_forward_with_drop(jc, pb, i):
    """Plain forward of sequence ``i`` with row-varying between-layer dropout."""
    act = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}[jc["activation"]]
    L = len(jc["hidden"])
    x = pb["seqs"][i]
    lay, out = pb["layers"], pb["output"]
    fed = [f[i].copy() for f in pb["f0"]]
    Y = np.zeros((len(x), N_OUT))
    for t in range(len(x)):
        inp = x[t]
        new = []
        for li in range(L):
            if li > 0:
                inp = inp * pb["drop"][li][i][t]
            m = 1.0 if pb["rmask"] is None else pb["rmask"][li][i]
            s = (lay[li]["weight_ih"] @ inp + lay[li]["bias_ih"]
                 + lay[li]["weight_hh"] @ (m * fed[li]) + lay[li]["bias_hh"])
            if jc["layer_norm"]:
                s = (s - s.mean()) / np.sqrt(s.var() + 1e-5)
                s = lay[li]["ln_weight"] * s + lay[li]["ln_bias"]
            inp = act(s)
            new.append(inp)
        z = out["weight"] @ inp + out["bias"]
        y = {"identity": lambda z: z, "tanh": np.tanh,
             "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
             "softmax": lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
             }[jc["output_activation"]](z)
        Y[t] = y
        fed = new[1:] + [y]
    return Y, fed


@pytest.mark.parametrize("jc", [j for j in JORDAN_REPRESENTATIVE if j["drop"]],
                         ids=jcfg_id)
def test_jordan_random_drop_forward(jc):
    pb = jordan_problem(jc, seed=15, drop="random")
    got, _, _ = kernel_jordan(jc, pb)
    for i in range(len(LENGTHS)):
        Y, fn = numpy_jordan_forward_with_drop(jc, pb, i)
        assert_allclose(got["Y"][i], Y, rtol=1e-10, atol=1e-12)
        for li in range(len(fn)):
            assert_allclose(got["fn"][li][i], fn[li], rtol=1e-10, atol=1e-12)
    # and the masks matter: without them the output differs
    plain, _, _ = kernel_jordan(jc, pb, drop=False)
    assert max(np.abs(a - b).max() for a, b in zip(plain["Y"], got["Y"])) > 1e-3


# ---------------------------------------------------------------------------
# 2. finite differences of the kernels themselves
# ---------------------------------------------------------------------------

# The forward passes of the finite differences run on one thread: hundreds of
# short OpenMP regions are slow on a busy machine, and the thread count is
# tested separately (bitwise).


def check_fd(loss, arrays, analytic):
    assert set(arrays) == set(analytic)
    for name, array in arrays.items():
        numeric = numerical_gradient(loss, array, FD_EPS)
        assert np.any(numeric != 0), f"{name}: the loss does not depend on it"
        assert_allclose(analytic[name], numeric, rtol=FD_RTOL, atol=FD_ATOL,
                        err_msg=f"gradient of {name}")


@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_layer_finite_differences(c):
    rng = np.random.default_rng(21)
    spec = spec_of(c)
    lstm = c["cell"] == "lstm"
    lengths = [5, 3, 5, 1]
    B = len(lengths)
    w = ref.init_params(c["cell"], N_INPUT, HIDDEN, peephole=c["peephole"],
                        layer_norm=c["layer_norm"], rng=rng)
    X, pk = pack([rng.standard_normal((n, N_INPUT)) for n in lengths])
    h0 = rng.standard_normal((B, HIDDEN))
    c0 = rng.standard_normal((B, HIDDEN)) if lstm else None
    mask = make_mask(rng, (B, HIDDEN)) if c["mask"] else None
    R = rng.standard_normal((pk.n_rows, HIDDEN))
    r = rng.standard_normal((B, HIDDEN))
    rc = rng.standard_normal((B, HIDDEN)) if lstm else None

    def forward():
        return layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, h0, c0, mask,
                             block_rows=2, n_threads=1)

    def loss():
        Hs, hn, cn, _ = forward()
        total = np.sum(R * Hs) + np.sum(r * hn)
        return total + np.sum(rc * cn) if lstm else total

    _, _, _, cache = forward()
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    dX, dh0, dc0 = layer_backward(spec, w, grads, cache, R, r, rc, n_threads=2)
    assert set(grads) == set(spec.shapes())
    arrays = dict(w, X=X, h0=h0)
    analytic = dict(grads, X=dX, h0=dh0)
    if lstm:
        arrays["c0"], analytic["c0"] = c0, dc0
    check_fd(loss, arrays, analytic)


@pytest.mark.parametrize("jc", JORDAN_REPRESENTATIVE, ids=jcfg_id)
def test_jordan_finite_differences(jc):
    rng = np.random.default_rng(22)
    spec = jspec_of(jc)
    L = len(jc["hidden"])
    lengths = [5, 3, 5, 1]
    B = len(lengths)
    layers, output = ref.jordan_init(N_INPUT, jc["hidden"], N_OUT,
                                     layer_norm=jc["layer_norm"], rng=rng)
    X, pk = pack([rng.standard_normal((n, N_INPUT)) for n in lengths])
    f0 = [rng.standard_normal((B, f)) for f in spec.fed]
    rm = [make_mask(rng, (B, f)) for f in spec.fed] if jc["rmask"] else None
    drop = None
    if jc["drop"]:
        drop = [None] + [make_mask(rng, (pk.n_rows, jc["hidden"][li - 1]))
                         for li in range(1, L)]
    R = rng.standard_normal((pk.n_rows, N_OUT))
    r = [rng.standard_normal((B, f)) for f in spec.fed]

    def forward():
        return jordan_forward(spec, layers, output["weight"], output["bias"], X,
                              pk.batch_sizes, pk.offsets, f0, drop, rm,
                              block_rows=2, n_threads=1)

    def loss():
        Y, fn, _ = forward()
        return np.sum(R * Y) + sum(np.sum(a * b) for a, b in zip(r, fn))

    Y, _, cache = forward()
    grads = [{k: np.zeros_like(v) for k, v in lay.items()} for lay in layers]
    g_out = {k: np.zeros_like(v) for k, v in output.items()}
    dX, df0 = jordan_backward(spec, layers, output["weight"], grads, g_out, cache,
                              out_backward(Y, R, jc["output_activation"]), r,
                              n_threads=2)
    arrays, analytic = dict(X=X), dict(X=dX)
    for li in range(L):
        assert set(grads[li]) == set(spec.layer_shapes(li))
        for k in layers[li]:
            arrays[f"l{li}.{k}"], analytic[f"l{li}.{k}"] = layers[li][k], grads[li][k]
        arrays[f"f0[{li}]"], analytic[f"f0[{li}]"] = f0[li], df0[li]
    for k in output:
        arrays[f"out.{k}"], analytic[f"out.{k}"] = output[k], g_out[k]
    check_fd(loss, arrays, analytic)


# ---------------------------------------------------------------------------
# 3. a variable-length batch == every sequence alone
# ---------------------------------------------------------------------------

BATCH_LENGTHS = [7, 3, 7, 1, 5, 2]


def _per_sequence(results, keys_per_seq, keys_summed):
    """Gather single-sequence runs into the layout of one batch run."""
    out = {}
    for k in keys_per_seq:
        first = results[0][k]
        if k in ("fn", "df0"):      # Jordan: one (n_sequences, F_l) array per layer
            out[k] = [np.concatenate([r[k][li] for r in results])
                      for li in range(len(first))]
        elif isinstance(first, list):   # one array per sequence
            out[k] = [r[k][0] for r in results]
        else:                           # one row per sequence
            out[k] = np.concatenate([r[k] for r in results])
    summed = {}
    for k in keys_summed:
        summed[k] = results[0][k]
        for r in results[1:]:
            summed[k] = _add(summed[k], r[k])
    return out, summed


def _add(a, b):
    if isinstance(a, dict):
        return {k: a[k] + b[k] for k in a}
    return [_add(x, y) for x, y in zip(a, b)]


def _split(result, keys_summed):
    return ({k: v for k, v in result.items() if k not in keys_summed},
            {k: result[k] for k in keys_summed})


@pytest.mark.parametrize("block_rows", [1, None], ids=["block_rows=1", "default"])
@pytest.mark.parametrize("c", REPRESENTATIVE + [cfg("rnn")], ids=cfg_id)
def test_layer_batch_equals_sequences_alone(c, block_rows):
    pb = layer_problem(c, BATCH_LENGTHS, seed=31)
    keys = ["H", "hn", "dX", "dh0"] + (["cn", "dc0"] if c["cell"] == "lstm" else [])
    with threadpool_limits(1, user_api="blas"):
        batch, _, _ = kernel_layer(c, pb, block_rows=block_rows, n_threads=2)
        alone = [kernel_layer(c, pb, block_rows=block_rows, n_threads=1,
                              seq_subset=[i])[0] for i in range(len(BATCH_LENGTHS))]
    per_seq, summed = _per_sequence(alone, keys, ["grads"])
    batch_seq, batch_sum = _split(batch, ["grads"])
    if block_rows == 1:
        # dX = dG @ W_ih is one BLAS product over all the rows of the batch
        # (pyx_rnn._dense.matmul), and OpenBLAS's result for a row may depend
        # on the number of rows (it does for K = 4 * hidden = 20): the last
        # ulp of dX is not a property of the recurrent kernel.
        dX, dX_alone = batch_seq.pop("dX"), per_seq.pop("dX")
        assert_identical(batch_seq, per_seq)
        assert_close(dX, dX_alone, rtol=1e-14, atol=1e-15, nonzero=False)
    else:
        assert_close(batch_seq, per_seq, rtol=1e-12, atol=1e-14, nonzero=False)
    assert_close(batch_sum, summed, rtol=1e-12, atol=1e-13, nonzero=False)


@pytest.mark.parametrize("block_rows", [1, None], ids=["block_rows=1", "default"])
@pytest.mark.parametrize("jc", JORDAN_REPRESENTATIVE, ids=jcfg_id)
def test_jordan_batch_equals_sequences_alone(jc, block_rows):
    pb = jordan_problem(jc, BATCH_LENGTHS, seed=32,
                        drop="random" if jc["drop"] else None)
    with threadpool_limits(1, user_api="blas"):
        batch, _, _ = kernel_jordan(jc, pb, block_rows=block_rows, n_threads=2,
                                    use_dfn=True)
        alone = [kernel_jordan(jc, pb, block_rows=block_rows, n_threads=1,
                               seq_subset=[i], use_dfn=True)[0]
                 for i in range(len(BATCH_LENGTHS))]
    per_seq, summed = _per_sequence(alone, ["Y", "fn", "dX", "df0"],
                                    ["grads", "g_out"])
    batch_seq, batch_sum = _split(batch, ["grads", "g_out"])
    if block_rows == 1:
        assert_identical(batch_seq, per_seq)
    else:
        assert_close(batch_seq, per_seq, rtol=1e-12, atol=1e-14, nonzero=False)
    assert_close(batch_sum, summed, rtol=1e-12, atol=1e-13, nonzero=False)


# ---------------------------------------------------------------------------
# 4. bitwise independence of the thread count
# ---------------------------------------------------------------------------

THREAD_LENGTHS = list(np.random.default_rng(40).integers(1, 13, size=40))


@DTYPES
@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_layer_thread_count_independence(c, dtype):
    pb = layer_problem(c, THREAD_LENGTHS, seed=41)
    with threadpool_limits(1, user_api="blas"):
        runs = [kernel_layer(c, pb, dtype, block_rows=8, n_threads=n)[0]
                for n in (1, 2, 3)]
    assert_dtype(runs[0], dtype)
    for other in runs[1:]:
        assert_identical(other, runs[0])


@DTYPES
@pytest.mark.parametrize("c", REPRESENTATIVE + [cfg("lstm"), cfg("gru")],
                         ids=cfg_id)
def test_layer_blocks_cut_where_the_caller_says(c, dtype, monkeypatch):
    """``block_starts``: blocks of any size, also beyond ``block_rows`` (40
    sequences of 1 to 12 steps, ``block_rows`` 20 by default, so two
    blocks). The states, outputs and input and state gradients are bitwise
    those of blocks of 20 consecutive sequences (each row's sums do not
    depend on its block), on 1 and 2 threads; each block's partial sums of
    the bias gradient are those of its own rows (the backward kernel cut the
    batch there), and the parameters' gradients equal the uniform blocks'
    to within rounding. The forward and backward kernels refuse a bad cut."""
    from pyx_rnn import layers
    pb = layer_problem(c, THREAD_LENGTHS, seed=43)
    # another grouping of the same sums: rounding of the largest terms
    eps = 1e-5 if dtype == np.float32 else 1e-13
    with threadpool_limits(1, user_api="blas"):
        base = kernel_layer(c, pb, dtype, block_rows=20, n_threads=2, t_stop=2)[0]
        for cut in ([0, 3, 40], [0, 37, 40]):
            monkeypatch.setattr(layers, "default_block_starts",
                                lambda bs, br, cut=cut: np.array(cut, np.intp))
            runs = []
            for n_threads in (1, 2):
                out, cache, pk = kernel_layer(c, pb, dtype, block_rows=None,
                                              n_threads=n_threads, t_stop=2)
                assert_array_equal(cache.block_starts, cut)
                runs.append(out)
            assert_identical(runs[1], runs[0])
            grads = runs[0].pop("grads")
            assert_identical(runs[0], {k: base[k] for k in runs[0]})
            for k, g in grads.items():
                assert_allclose(g, base["grads"][k], rtol=0, err_msg=k,
                                atol=eps * np.abs(base["grads"][k]).max())
    # the partial sums of one call (2 threads), block by block
    spec = spec_of(c)
    X, pk = pack(pb["seqs"], dtype)
    pool = {}
    w = {k: v.astype(dtype) for k, v in pb["params"].items()}
    monkeypatch.setattr(layers, "default_block_starts",
                        lambda bs, br: np.array([0, 3, 40], np.intp))
    H, _, _, cache = layer_forward(spec, w, X, pk.batch_sizes, pk.offsets,
                                   n_threads=2, pool=pool)
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    layer_backward(spec, w, grads, cache, np.ones_like(H), n_threads=2,
                   pool=pool)
    plan = pool["backward_plan"]
    dG = plan.dG[:pk.n_rows]
    block = np.searchsorted([3], np.concatenate(
        [np.arange(b) for b in pk.batch_sizes]), side="right")
    for k in range(2):
        want = dG[block == k].sum(axis=0)
        assert_allclose(plan.dbias_ih[k], want, rtol=0,
                        atol=eps * np.abs(dG).max() * (block == k).sum())
    assert np.abs(plan.dbias_ih).min(axis=1).max() > 0
    # a bad cut, refused before anything runs
    for bad, match in (([0, 40], "3 entries from 0 to 40"),
                       ([0, 0, 40], "must increase"),
                       ([0, 3, 41], "from 0 to 40")):
        monkeypatch.setattr(layers, "default_block_starts",
                            lambda bs, br, bad=bad: np.array(bad, np.intp))
        with pytest.raises(ValueError, match=match):
            layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, pool={})
        cache.block_starts = np.array(bad, np.intp)
        with pytest.raises(ValueError, match="cache.block_starts"):
            layer_backward(spec, w, grads, cache, np.ones_like(H))


@DTYPES
@pytest.mark.parametrize("jc", JORDAN_REPRESENTATIVE, ids=jcfg_id)
def test_jordan_thread_count_independence(jc, dtype):
    pb = jordan_problem(jc, THREAD_LENGTHS, seed=42,
                        drop="random" if jc["drop"] else None)
    with threadpool_limits(1, user_api="blas"):
        runs = [kernel_jordan(jc, pb, dtype, block_rows=8, n_threads=n,
                              use_dfn=True)[0] for n in (1, 2, 3)]
    assert_dtype(runs[0], dtype)
    for other in runs[1:]:
        assert_identical(other, runs[0])


# ---------------------------------------------------------------------------
# 5. truncation: t_stop
# ---------------------------------------------------------------------------

TSTOP_LENGTHS = [9, 6, 4, 2]   # with t_stop=4 the last two get no gradient


@pytest.mark.parametrize("t_stop", [1, 4, 8])
@pytest.mark.parametrize("c", [
    cfg("rnn"), cfg("rnn", "relu", layer_norm=True, mask=True),
    cfg("lstm"), cfg("lstm", peephole=True, layer_norm=True, mask=True),
    cfg("gru", mask=True), cfg("gru", reset_after=False, layer_norm=True, mask=True),
], ids=cfg_id)
def test_layer_truncation(c, t_stop, weight_gradients):
    """Only steps >= t_stop are visited: the gradients equal the reference run
    on the suffix x[t_stop:], started from the forward pass's state at step
    t_stop - 1, and the gradient w.r.t. the initial state is the one w.r.t.
    that state."""
    pb = layer_problem(c, TSTOP_LENGTHS, seed=51)
    got, cache, pk = kernel_layer(c, pb, t_stop=t_stop)
    lstm = c["cell"] == "lstm"
    want = {k: np.zeros_like(v) for k, v in pb["params"].items()}
    for b, i in enumerate(pk.order):
        n = TSTOP_LENGTHS[i]
        dX = got["dX"][i]
        assert_array_equal(dX[:t_stop], 0)
        if n <= t_stop:
            assert_array_equal(dX, 0)
            continue
        prev = pk.rows_of(b)[t_stop - 1]
        r = reference_sequence(
            c, pb["params"], pb["seqs"][i][t_stop:], cache.H[prev],
            cache.C[prev] if lstm else None,
            None if pb["mask"] is None else pb["mask"][i],
            pb["dHs"][i][t_stop:], pb["dhn"][i],
            pb["dcn"][i] if lstm else None)
        assert_allclose(dX[t_stop:], r["dX"], rtol=1e-10, atol=1e-12)
        assert_allclose(got["dh0"][i], r["dh0"], rtol=1e-10, atol=1e-12)
        if lstm:
            assert_allclose(got["dc0"][i], r["dc0"], rtol=1e-10, atol=1e-12)
        for k in want:
            want[k] += r["grads"][k]
    assert_close(got["grads"], want, rtol=1e-10, atol=1e-12)
    # and it is a real truncation: the full gradient differs
    full, _, _ = kernel_layer(c, pb)
    assert np.abs(full["grads"]["weight_hh"] - got["grads"]["weight_hh"]).max() > 1e-6


@pytest.mark.parametrize("t_stop", [1, 4, 8])
@pytest.mark.parametrize("jc", [
    jcfg((4,), "tanh"),
    jcfg((4, 3), "softmax", layer_norm=True, rmask=True),
    jcfg((3, 4, 5), "sigmoid", "relu", layer_norm=True),
], ids=jcfg_id)
def test_jordan_truncation(jc, t_stop):
    pb = jordan_problem(jc, TSTOP_LENGTHS, seed=52)
    got, cache, pk = kernel_jordan(jc, pb, t_stop=t_stop)
    L = len(jc["hidden"])
    want = reference_jordan(jc, dict(pb, seqs=[], dYs=[]))  # zero gradients
    for b, i in enumerate(pk.order):
        n = TSTOP_LENGTHS[i]
        dX = got["dX"][i]
        assert_array_equal(dX[:t_stop], 0)
        if n <= t_stop:
            assert_array_equal(dX, 0)
            continue
        prev = pk.rows_of(b)[t_stop - 1]
        f_prev = [cache.Hs[li + 1][prev] for li in range(L - 1)] + [cache.Y[prev]]
        sub = dict(pb, seqs=[pb["seqs"][i][t_stop:]], dYs=[pb["dYs"][i][t_stop:]],
                   f0=[f[None] for f in f_prev],
                   rmask=None if pb["rmask"] is None else [m[i:i + 1]
                                                           for m in pb["rmask"]])
        r = reference_jordan(jc, sub)
        assert_allclose(dX[t_stop:], r["dX"][0], rtol=1e-10, atol=1e-12)
        for li in range(L):
            assert_allclose(got["df0"][li][i], r["df0"][li][0], rtol=1e-10, atol=1e-12)
        want["grads"] = _add(want["grads"], r["grads"])
        want["g_out"] = _add(want["g_out"], r["g_out"])
    assert_close(got["grads"], want["grads"], rtol=1e-10, atol=1e-12)
    assert_close(got["g_out"], want["g_out"], rtol=1e-10, atol=1e-12)
    full, _, _ = kernel_jordan(jc, pb)
    assert np.abs(full["grads"][0]["weight_hh"]
                  - got["grads"][0]["weight_hh"]).max() > 1e-6


# ---------------------------------------------------------------------------
# 6. defaults: no state == zero state, no mask == ones
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c", [cfg("rnn", layer_norm=True),
                               cfg("lstm", peephole=True, reverse=True),
                               cfg("gru", reset_after=False),
                               cfg("gru", reverse=True)], ids=cfg_id)
def test_layer_default_states(c):
    B = len(LENGTHS)
    lstm = c["cell"] == "lstm"
    pb = layer_problem(c, seed=61, zero_state=True)
    none_run, _, _ = kernel_layer(c, pb)
    zeros = dict(pb, h0=np.zeros((B, HIDDEN)),
                 c0=np.zeros((B, HIDDEN)) if lstm else None)
    zero_run, _, _ = kernel_layer(c, zeros)
    assert_identical(none_run, zero_run)
    ones = dict(pb, mask=np.ones((B, HIDDEN)))
    assert_identical(kernel_layer(c, ones)[0], none_run)
    # and the reference agrees that the default state is zero
    assert_close(none_run, reference_layer(c, pb), rtol=1e-10, atol=1e-12)

    # dh_n = None (and dc_n = None) == zeros
    spec = spec_of(c)
    X, pk = pack(pb["seqs"])
    dH, _ = pack(pb["dHs"])
    results = []
    for dh_n, dc_n in [(None, None), (np.zeros((B, HIDDEN)),
                                      np.zeros((B, HIDDEN)) if lstm else None)]:
        _, _, _, cache = layer_forward(spec, pb["params"], X, pk.batch_sizes,
                                       pk.offsets)
        grads = {k: np.zeros_like(v) for k, v in pb["params"].items()}
        dX, dh0, dc0 = layer_backward(spec, pb["params"], grads, cache, dH, dh_n,
                                      dc_n)
        results.append(dict(grads=grads, dX=dX, dh0=dh0, dc0=dc0))
    assert_identical(results[0], results[1])
    # need_dx=False changes nothing but dX
    grads = {k: np.zeros_like(v) for k, v in pb["params"].items()}
    dX, dh0, dc0 = layer_backward(spec, pb["params"], grads, cache, dH,
                                  need_dx=False)
    assert dX is None
    assert_identical(dict(grads=grads, dh0=dh0, dc0=dc0),
                     {k: results[0][k] for k in ("grads", "dh0", "dc0")})


@pytest.mark.parametrize("jc", [jcfg((4,), "tanh"),
                                jcfg((4, 3), "softmax", layer_norm=True),
                                jcfg((3, 4, 5), "sigmoid", "relu")], ids=jcfg_id)
def test_jordan_default_states(jc):
    B = len(LENGTHS)
    spec = jspec_of(jc)
    pb = jordan_problem(jc, seed=62, zero_state=True)
    none_run, _, _ = kernel_jordan(jc, pb)
    zero_run, _, _ = kernel_jordan(jc, dict(pb, f0=[np.zeros((B, f))
                                                    for f in spec.fed]))
    assert_identical(none_run, zero_run)
    ones = dict(pb, rmask=[np.ones((B, f)) for f in spec.fed])
    assert_identical(kernel_jordan(jc, ones)[0], none_run)
    assert_close(none_run, reference_jordan(jc, pb), rtol=1e-10, atol=1e-12)
    # df_n = None == zeros
    with_zero_dfn, _, _ = kernel_jordan(
        jc, dict(pb, dfn=[np.zeros((B, f)) for f in spec.fed]), use_dfn=True)
    assert_identical(with_zero_dfn, none_run)


# ---------------------------------------------------------------------------
# 7. the recurrent product: packed kernel (pyx_rnn/_pgemm.h) and BLAS
# ---------------------------------------------------------------------------

@pytest.fixture(params=["blas", "packed"])
def product(request, monkeypatch):
    from pyx_rnn import layers
    monkeypatch.setattr(layers, "RECURRENT_PRODUCT", request.param)
    return request.param


@pytest.fixture(params=["fused", "after"])
def weight_gradients(request, monkeypatch):
    """The weight gradients summed by the backward kernel block by block
    (``layers.fused_weight_gradients``), or by one product afterwards."""
    from pyx_rnn import layers
    if request.param == "after":
        monkeypatch.setattr(layers, "FUSED_WEIGHT_GRADIENT_BYTES", 0)
    return request.param


@DTYPES
@pytest.mark.parametrize("hidden", [5, 37])
@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_layer_recurrent_product_matches_reference(c, hidden, dtype, product,
                                                    weight_gradients,
                                                    monkeypatch):
    """Both ways of computing the recurrent product, and both ways of
    summing the weight gradients, match the reference, with several column
    panels (37 hidden units: 2 to 10 panels, the last partial), blocks that
    exercise every micro-kernel row count (19 = 8 + 8 + 2 + 1) and as many
    weight-gradient rows (37 = 12 x 3 + 1 and 3 input columns)."""
    monkeypatch.setitem(globals(), "HIDDEN", hidden)
    # short sequences: the relu rnn's gradients grow with the length, past
    # float32's tolerances whatever the product
    lengths = [min(n, 6) for n in THREAD_LENGTHS[:23]]
    pb = round_to(layer_problem(c, lengths, seed=61), dtype)
    got, _, _ = kernel_layer(c, pb, dtype, block_rows=19, n_threads=2)
    assert_dtype(got, dtype)
    assert_close(got, reference_layer(c, pb), **TOL[dtype])


def test_weight_gradients_fused_by_rows_per_block(monkeypatch):
    """The backward kernel sums the weight gradients itself where a block
    has enough sequences for the partial sum it reads and writes at every
    step (``FUSED_BYTES_PER_ROW`` a sequence) and the partial sum fits in
    L2; else one product afterwards. A 128-unit LSTM's 320 KB partial sum
    (float32) takes 7 sequences a block, float64's 14; a 32-unit one's
    17 KB one. The choice depends on the batch, not on the thread count:
    one sequence of a 128-unit LSTM gets the same bits on 1 and 2 threads,
    and its gradients summed afterwards match those the kernel sums (made
    to, float64)."""
    from pyx_rnn import layers
    from pyx_rnn.network import Network
    from pyx_rnn.packing import pack
    big = Network("lstm", 32, (128,), 1).specs[0][0][0]
    small = Network("lstm", 1, (32,), 1).specs[0][0][0]
    fused = layers.fused_weight_gradients
    assert [fused(big, 4, r) for r in (1, 4, 6, 7, 16)] == [False] * 3 + [True] * 2
    assert [fused(big, 8, r) for r in (13, 14)] == [False, True]
    assert fused(small, 4, 1) and fused(small, 8, 1)
    monkeypatch.setattr(layers, "FUSED_WEIGHT_GRADIENT_BYTES", 300 << 10)
    assert not fused(big, 4, 64) and fused(small, 4, 1)
    monkeypatch.undo()
    rng = np.random.default_rng(71)
    X, pk = pack([rng.standard_normal((9, 32))])
    T = rng.standard_normal((1, 1))

    def grads(dtype, n_threads):
        net = Network("lstm", 32, (128,), 1, dtype=dtype)
        net.init_weights(np.random.default_rng(5))
        net.loss_gradient(X.astype(dtype), pk, T.astype(dtype), "squared_error",
                          n_threads=n_threads)
        sfx = net.specs[0][0][1]
        return net.grads, net._pool["backward"][sfx]["backward_plan"].fused

    (g1, f1), (g2, f2) = grads(np.float32, 1), grads(np.float32, 2)
    assert not f1 and not f2
    assert_array_equal(g1, g2, strict=True)
    after, f = grads(np.float64, 1)
    monkeypatch.setattr(layers, "FUSED_BYTES_PER_ROW", 1 << 30)
    summed, f_kernel = grads(np.float64, 1)
    assert not f and f_kernel
    assert_allclose(after, summed, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("c, hidden, dtype", [
    (cfg("lstm"), 128, np.float64), (cfg("gru", reset_after=False), 512, np.float64),
    (cfg("rnn"), 512, np.float64)], ids=["lstm-128", "gru-before-512", "rnn-512"])
def test_backward_spreads_rows_whose_stride_aliases(c, hidden, dtype, monkeypatch):
    """Gate gradients whose rows are a multiple of 4 KiB apart (these sizes,
    in float64; in float32 the LSTM's at 256 and 512 units) are copied at
    another stride before the backward recurrent product (``spread_rows``;
    the GRU's candidate product too): the gradients still match the
    reference. A work array too small for the copy is refused."""
    monkeypatch.setitem(globals(), "HIDDEN", hidden)
    lengths = [min(n, 3) for n in THREAD_LENGTHS[:23]]
    pb = round_to(layer_problem(c, lengths, seed=67), dtype)
    got, cache, _ = kernel_layer(c, pb, dtype, block_rows=19, n_threads=2)
    assert_close(got, reference_layer(c, pb), **TOL[dtype])
    from pyx_rnn import _cells
    columns = _cells.backward_work_columns
    itemsize = np.dtype(dtype).itemsize
    gh = {"lstm": 4, "gru": 3, "rnn": 1}[c["cell"]] * hidden
    assert columns(CELLS[c["cell"]], hidden, 19, itemsize) > 19 * (hidden + gh)
    monkeypatch.setattr(_cells, "backward_work_columns",
                        lambda *args: columns(*args) - 1)
    with pytest.raises(ValueError, match="backward_work_columns"):
        kernel_layer(c, pb, dtype, block_rows=19, n_threads=2)


@DTYPES
@pytest.mark.parametrize("c", REPRESENTATIVE + [cfg("rnn")], ids=cfg_id)
def test_packed_product_independent_of_batch(c, dtype, monkeypatch):
    """With the packed product every row is summed in a fixed order: a
    sequence's outputs and state gradients are bitwise the same in any batch
    and any block (default block_rows), not only with ``block_rows=1``. (dX
    and the weight gradients are BLAS products over all rows: excluded.)"""
    from pyx_rnn import layers
    monkeypatch.setattr(layers, "RECURRENT_PRODUCT", "packed")
    monkeypatch.setitem(globals(), "HIDDEN", 37)
    pb = layer_problem(c, THREAD_LENGTHS, seed=62)
    keys = ["H", "hn", "dh0"] + (["cn", "dc0"] if c["cell"] == "lstm" else [])
    with threadpool_limits(1, user_api="blas"):
        batch, _, _ = kernel_layer(c, pb, dtype, block_rows=None, n_threads=2)
        subsets = [[0], [5, 17], list(range(3, 40, 3))]
        for subset in subsets:
            part, _, _ = kernel_layer(c, pb, dtype, block_rows=None, n_threads=1,
                                      seq_subset=subset)
            for k in keys:
                if k == "H":       # one array per sequence
                    for i, b in enumerate(subset):
                        assert_array_equal(part[k][i], batch[k][b], err_msg=k,
                                           strict=True)
                else:
                    assert_array_equal(part[k], batch[k][subset], err_msg=k,
                                       strict=True)


@pytest.mark.parametrize("c", REPRESENTATIVE + [cfg("lstm"), cfg("rnn")], ids=cfg_id)
def test_layer_forward_without_cache(c):
    """Inference (``keep_cache=False``) gives bitwise the same outputs and
    final states as the training forward pass, and keeps no cache."""
    pb = layer_problem(c, THREAD_LENGTHS, seed=63)
    spec = spec_of(c)
    X, pk = pack(pb["seqs"], np.float32)
    w = {k: v.astype(np.float32) for k, v in pb["params"].items()}
    args = [_sel(pb[k], pk.order, np.float32) for k in ("h0", "c0", "mask")]
    runs = [layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, *args,
                          n_threads=2, block_rows=8, keep_cache=keep)
            for keep in (True, False)]
    assert runs[1][3] is None
    for a, b in zip(runs[0][:3], runs[1][:3]):
        assert_array_equal(a, b, strict=True)
    with pytest.raises(TypeError, match="keep_cache"):
        layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, keep_cache=None)


@pytest.mark.parametrize("c", REPRESENTATIVE + [cfg("lstm"), cfg("rnn")], ids=cfg_id)
def test_layer_forward_without_outputs(c):
    """Inference keeping no outputs at every step (the rnn and the lstm;
    the gru keeps them, its work holding its product): bitwise the same
    final states, which are the outputs at each sequence's last step; the
    kernel refuses a gru without ``H_out``."""
    from pyx_rnn import _cells, layers
    pb = layer_problem(c, THREAD_LENGTHS, seed=64)
    spec = spec_of(c)
    X, pk = pack(pb["seqs"], np.float32)
    w = {k: v.astype(np.float32) for k, v in pb["params"].items()}
    h0, c0, _ = [_sel(pb[k], pk.order, np.float32) for k in ("h0", "c0", "mask")]
    runs = [layers._layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, h0, c0,
                                  None, 2, 8, {}, False, keep_outputs=keep)
            for keep in (True, False)]
    (H, h_n, c_n, _), (H2, h_n2, c_n2, _) = runs
    assert_array_equal(h_n, h_n2, strict=True)
    assert_array_equal(c_n, c_n2, strict=True)
    if spec.cell == "gru":
        assert_array_equal(H, H2, strict=True)
    else:
        assert H2.size == 0
    # a sequence's last step; for the backward direction, its step 0
    last = (np.arange(pk.n_sequences) if spec.reverse
            else pk.offsets[pk.lengths - 1] + np.arange(pk.n_sequences))
    assert_array_equal(H[last], h_n, strict=True)
    if spec.cell == "gru":
        pool = {}
        layers._layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, h0, c0,
                              None, 1, 8, pool, False)
        plan = pool["forward_plan"]
        args, at = plan.bind(w, pk.batch_sizes, pk.offsets, 1), plan.SLOTS
        at_h = plan.ROWS[1]   # the outputs, H_out
        args[at_h] = np.empty((0, 0), np.float32)
        args[at["X"]], args[at["h"]] = X, h0.copy()
        args[at["mask"]] = args[at["c"]] = np.empty((0, 0), np.float32)
        with pytest.raises(ValueError, match="gru needs H_out"):
            _cells.recurrent_forward(*args)


@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_one_plan_serves_batches_of_fewer_rows(c):
    """Variable-length batches of as many sequences share one plan: a call
    binds the first rows of its buffers, and gets the bits of a fresh
    call, with and without a cache."""
    from pyx_rnn import layers
    spec = spec_of(c)
    problems = [layer_problem(c, lengths, seed=70 + i) for i, lengths in
                enumerate([[9, 7, 5, 8], [4, 2, 3, 1], [6, 9, 2, 2]])]
    w = problems[0]["params"]
    for keep_cache in (True, False):
        pool, plans = {}, []
        for pb in problems:
            X, pk = pack(pb["seqs"], np.float64)
            args = (spec, w, X, pk.batch_sizes, pk.offsets, None, None, None,
                    2, None)
            H, h, cc, cache = layers._layer_forward(*args, pool, keep_cache)
            plans.append(pool["forward_plan"])
            want = layers._layer_forward(*args, {}, keep_cache)
            assert len(H) == pk.n_rows
            for a, b in zip((H, h, cc), want[:3]):
                assert_array_equal(a, b, strict=True)
            if keep_cache:
                assert len(cache.G) == len(cache.Hprev) == pk.n_rows
        assert plans[0] is plans[1] is plans[2]


@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_forward_made_ready(c):
    """A call made ready (``ForwardArgs``) and run on other inputs and
    states (``run_forward``, the network's inference plan) gives the bits of
    ``recurrent_forward`` with those arguments; ``run_forward`` refuses
    arrays of the other dtype and sizes that differ from the call's."""
    from pyx_rnn import _cells, layers
    pb = layer_problem(c, THREAD_LENGTHS, seed=65)
    spec = spec_of(c)
    X, pk = pack(pb["seqs"], np.float32)
    w = {k: v.astype(np.float32) for k, v in pb["params"].items()}
    h0, c0, _ = [_sel(pb[k], pk.order, np.float32) for k in ("h0", "c0", "mask")]
    pool = {}
    layers._layer_forward(spec, w, X, pk.batch_sizes, pk.offsets, None, None,
                          None, 2, 8, pool, False)
    plan, at = pool["forward_plan"], layers._ForwardPlan.SLOTS
    plan.add_biases(w)
    args = plan.bind(w, pk.batch_sizes, pk.offsets, 2)
    empty = np.empty((0, 0), np.float32)
    args[at["mask"]] = args[at["X"]] = args[at["h"]] = args[at["c"]] = empty
    call = _cells.ForwardArgs(args)
    lstm = spec.cell == "lstm"
    for k in range(2):
        Xk = X + k
        h, cc = h0.copy(), (c0.copy() if lstm else empty)
        _cells.run_forward(call, Xk, layers._EMPTY_STARTS, h, cc)
        H = plan.rows(args)[1].copy()
        ref = list(args)
        ref[at["X"]], ref[at["h"]] = Xk, h0.copy()
        ref[at["c"]] = c0.copy() if lstm else empty
        _cells.recurrent_forward(*ref)
        assert_array_equal(h, ref[at["h"]], strict=True)
        assert_array_equal(cc, ref[at["c"]], strict=True)
        assert_array_equal(H, plan.rows(ref)[1], strict=True)
    h, cc = h0.copy(), (c0.copy() if lstm else empty)
    with pytest.raises(TypeError, match="8-byte floats"):
        _cells.run_forward(call, X.astype(np.float64), layers._EMPTY_STARTS,
                           h.astype(np.float64), cc.astype(np.float64))
    starts = np.zeros(pk.n_sequences - 1, np.intp)
    for bad_x, bad_starts in ((X[:-1], layers._EMPTY_STARTS),
                              (X[:, :-1].copy(), layers._EMPTY_STARTS),
                              (X, starts)):
        with pytest.raises(ValueError, match="run_forward: X of shape"):
            _cells.run_forward(call, bad_x, bad_starts, h, cc)
    if plan.fuse_input:
        # no input is for calls whose input projection is in G (token input)
        with pytest.raises(ValueError, match="run_forward: X of shape"):
            _cells.run_forward(call, empty, layers._EMPTY_STARTS, h, cc)
    with pytest.raises(ValueError, match="run_forward: states"):
        _cells.run_forward(call, X, layers._EMPTY_STARTS, h[:-1], cc)
    with pytest.raises(ValueError, match="run_forward: states"):
        _cells.run_forward(call, X, layers._EMPTY_STARTS, h,
                           h0[:, :-1].copy() if lstm else h.copy())


# one batch of 24 sequences in three packings: lengths that differ, fewer
# rows, equal lengths (blocks cut by steps, and uniform blocks)
READY_LENGTHS = [THREAD_LENGTHS[:24], [n // 2 + 1 for n in THREAD_LENGTHS[:24]],
                 [5] * 24]


@pytest.mark.parametrize("c", REPRESENTATIVE, ids=cfg_id)
def test_calls_made_ready_run_on_other_packings(c):
    """Forward and backward calls made ready once on their plans' whole
    buffers (``ForwardArgs``, ``BackwardArgs``) and run on other packings of
    the same number of sequences (``run_forward`` and ``run_backward`` with
    a packing: the network's training plan) give the bits of the layer's
    general path on each packing: outputs, final states, the gradients of
    the parameters, of the initial states and of the input. A packing of
    another batch size, of more rows than the buffers, a bad cut or an
    input of the wrong size is refused."""
    from pyx_rnn import _cells, _dense, layers
    spec, dtype, n_threads = spec_of(c), np.float64, 2
    lstm = spec.cell == "lstm"
    rng = np.random.default_rng(71)
    B, H_ = 24, HIDDEN
    w = {k: v.astype(dtype) for k, v in
         layer_problem(c, seed=70)["params"].items()}
    h0, c0 = rng.standard_normal((2, B, H_))
    mask = ((rng.random((B, H_)) < 0.7) / 0.7) if c["mask"] else None
    empty = np.empty((0, 0), dtype)
    problems = []
    for lengths in READY_LENGTHS:
        X, pk = pack([rng.standard_normal((n, N_INPUT)) for n in lengths], dtype)
        problems.append((X, pk, rng.standard_normal((pk.n_rows, H_)),
                         rng.standard_normal((B, H_)), rng.standard_normal((B, H_))))
    # the plans and their buffers: made by the general path on the packing
    # of the most rows
    pool, back = {}, {}
    X, pk, dH, dh_n, dc_n = problems[0]
    general = (spec, w, X, pk.batch_sizes, pk.offsets, h0, c0, mask, n_threads,
               None)
    cache = layers._layer_forward(*general, pool, True)[3]
    layers._layer_backward(spec, w, {k: np.zeros_like(v) for k, v in w.items()},
                           cache, dH, dh_n, dc_n, None, True, n_threads, back)
    fplan, bplan = pool["forward_plan"], back["backward_plan"]
    at = layers._ForwardPlan.SLOTS
    args = fplan.bind(w, pk.batch_sizes, pk.offsets, n_threads, cache.block_starts,
                      whole=True)
    args[at["X"]] = args[at["h"]] = args[at["c"]] = empty
    args[at["mask"]] = empty if mask is None else mask
    forward = _cells.ForwardArgs(args)
    G, H, C, Hprev, aux, xhat, rstd = fplan.rows(args)
    assert len(G) == pk.n_rows     # the whole buffers
    dh, dc = np.empty((B, H_)), (np.empty((B, H_)) if lstm else empty)
    dH_all = np.empty((pk.n_rows, H_))
    ready = layers.LayerCache(
        np.empty((0, N_INPUT)), G, H, C, Hprev, aux, xhat, rstd, h0,
        c0 if lstm else empty, cache.mask, pk.batch_sizes, pk.offsets,
        cache.block_rows, cache.block_starts)
    backward = _cells.BackwardArgs(bplan.args(
        spec, w, ready, ready.X if len(bplan.dWih_t) else empty, dH_all, dh, dc,
        bplan.dG, bplan.dGh, np.empty(0, np.intp), n_threads))
    for X, pk, dH, dh_n, dc_n in problems:
        n = pk.n_rows
        general = (spec, w, X, pk.batch_sizes, pk.offsets, h0, c0, mask,
                   n_threads, None)
        H_want, h_want, c_want, cache = layers._layer_forward(*general, {}, True)
        g_want = {k: np.zeros_like(v) for k, v in w.items()}
        dX_want, dh_want, dc_want = layers._layer_backward(
            spec, w, g_want, cache, dH, dh_n, dc_n, None, True, n_threads, {})
        starts = cache.block_starts
        assert starts.size == (0 if pk.lengths.min() == pk.lengths.max() else 3)
        fplan.add_biases(w)
        h, cc = h0.copy(), (c0.copy() if lstm else empty)
        _cells.run_forward(forward, X, layers._EMPTY_STARTS, h, cc, pk.batch_sizes,
                           pk.offsets, starts)
        assert_array_equal(H[:n], H_want, strict=True)
        assert_array_equal(h, h_want, strict=True)
        assert_array_equal(cc, c_want, strict=True)
        dH_all[:n], dh[...] = dH, dh_n
        if lstm:
            dc[...] = dc_n
        for a in bplan.partials:
            a.fill(0)
        _cells.run_backward(backward, X, pk.batch_sizes, pk.offsets, starts)
        g = {k: np.zeros_like(v) for k, v in w.items()}
        bplan.add_sums(spec, g)
        dX = np.empty((n, N_INPUT))
        _dense.matmul(bplan.dG[:n], w["weight_ih"], dX, False, 0.0, n_threads)
        for k in w:
            assert_array_equal(g[k], g_want[k], strict=True, err_msg=k)
        assert_array_equal(dh, dh_want, strict=True)
        assert_array_equal(dc, dc_want, strict=True)
        assert_array_equal(dX, dX_want, strict=True)
    # refused: another batch size, more rows, a bad cut, a lone packing
    # array, an input of the wrong size
    X, pk = pack([rng.standard_normal((n, N_INPUT)) for n in [12] * 23], dtype)
    h, cc = h0[:23].copy(), (c0[:23].copy() if lstm else empty)
    with pytest.raises(ValueError, match="made for 24 sequences"):
        _cells.run_forward(forward, X, layers._EMPTY_STARTS, h, cc,
                           pk.batch_sizes, pk.offsets)
    with pytest.raises(ValueError, match="made for 24 sequences"):
        _cells.run_backward(backward, X, pk.batch_sizes, pk.offsets)
    X, pk = pack([rng.standard_normal((n, N_INPUT)) for n in [13] * 24], dtype)
    assert pk.n_rows > len(G)
    h, cc = h0.copy(), (c0.copy() if lstm else empty)
    with pytest.raises(ValueError, match=f"at most {len(G)} rows"):
        _cells.run_forward(forward, X, layers._EMPTY_STARTS, h, cc,
                           pk.batch_sizes, pk.offsets)
    with pytest.raises(ValueError, match=f"at most {len(G)} rows"):
        _cells.run_backward(backward, X, pk.batch_sizes, pk.offsets)
    X, pk = problems[1][:2]
    for bad in (np.array([0, 24, 24], np.intp), np.array([0, 24], np.intp)):
        with pytest.raises(ValueError, match="block_starts"):
            _cells.run_forward(forward, X, layers._EMPTY_STARTS, h, cc,
                               pk.batch_sizes, pk.offsets, bad)
        with pytest.raises(ValueError, match="block_starts"):
            _cells.run_backward(backward, X, pk.batch_sizes, pk.offsets, bad)
    with pytest.raises(TypeError, match="together"):
        _cells.run_forward(forward, X, layers._EMPTY_STARTS, h, cc, pk.batch_sizes)
    with pytest.raises(TypeError, match="together"):
        _cells.run_backward(backward, X, None, pk.offsets)
    with pytest.raises(ValueError, match="run_backward: X of shape"):
        _cells.run_backward(backward, X[:-1], pk.batch_sizes, pk.offsets)
    with pytest.raises(TypeError, match="4-byte floats, for a call of 8-byte"):
        _cells.run_backward(backward, X.astype(np.float32), pk.batch_sizes,
                            pk.offsets)


@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (32, 32), (5, 16)])
@DTYPES
def test_lstm_states_made_together_are_apart_and_aligned(shape, dtype):
    """An LSTM layer's two states come from one allocation
    (``layers._aligned_pair``): both zero, of the given shape, each starting
    on a cache line, with no element in common."""
    from pyx_rnn import _dense, layers
    h, c = layers._aligned_pair(shape, dtype)
    for a in (h, c):
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert _dense.data_address(a.view(np.uint8).reshape(-1)) % 64 == 0
        assert not a.any()
    h[...] = 1
    assert not c.any()
    assert not np.shares_memory(h, c)


def test_layers_sharing_a_pool_keep_their_own_buffers():
    """A pool records the buffers of a layer's forward and backward calls
    (its "plans") for its next call of the same shape: layers of other
    sizes or cells that share the pool get their own, the same results as
    with a pool each, and the public entry points accept the records but
    nothing else under their keys."""
    pb = layer_problem(cfg("lstm"), THREAD_LENGTHS, seed=65)
    X, pk = pack(pb["seqs"], np.float32)
    rng = np.random.default_rng(65)
    specs = [LayerSpec("lstm", N_INPUT, HIDDEN), LayerSpec("gru", N_INPUT, HIDDEN),
             LayerSpec("lstm", N_INPUT, HIDDEN + 8)]
    ws = [{k: rng.standard_normal(shape).astype(np.float32)
           for k, shape in spec.shapes().items()} for spec in specs]

    def run(spec, w, pool, backward):
        H, h_n, c_n, cache = layer_forward(spec, w, X, pk.batch_sizes,
                                           pk.offsets, n_threads=2, pool=pool)
        out = [H.copy(), h_n, c_n]
        if backward:
            grads = {k: np.zeros_like(v) for k, v in w.items()}
            dX, dh0, dc0 = layer_backward(spec, w, grads, cache, np.ones_like(H),
                                          n_threads=2, pool=pool)
            out += [dX.copy(), dh0, dc0, *grads.values()]
        return out

    shared = {}
    for backward in (False, True, True):
        for spec, w in zip(specs, ws):
            for a, b in zip(run(spec, w, shared, backward),
                            run(spec, w, {}, backward)):
                assert_array_equal(a, b, strict=True)
    assert {"forward_plan", "backward_plan"} <= set(shared)
    for key in ("forward_plan", "backward_plan"):
        with pytest.raises(ValueError, match=f"pool\\['{key}'\\]"):
            layer_forward(specs[0], ws[0], X, pk.batch_sizes, pk.offsets,
                          pool={key: object()})


@DTYPES
@pytest.mark.parametrize("n_blocks", [1, 2, 3, 5])
def test_add_block_sums_has_numpys_bits(n_blocks, dtype):
    """The backward pass's partial sums per block, added to a gradient
    (``_dense.add_block_sums``): bitwise ``out += parts.sum(axis=0)``,
    with ``out`` as is or transposed, also into a view with a row stride,
    and one column of sums (a bias) through a 1-row view."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(n_blocks)
    # magnitudes far apart: another order of the additions changes the bits
    parts = (rng.standard_normal((n_blocks, 6 * 7))
             * 10.0 ** rng.integers(-4, 5, size=(n_blocks, 1))).astype(dtype)
    base = rng.standard_normal((6, 9)).astype(dtype)
    for transposed in (False, True):
        out = base.copy()
        _dense.add_block_sums(parts, out[:, 2:], transposed)
        total = parts.sum(axis=0)
        want = base.copy()
        want[:, 2:] += total.reshape(7, 6).T if transposed else total.reshape(6, 7)
        assert_array_equal(out, want, strict=True)
    bias, columns = base[0].copy(), parts[:, :9].copy()
    _dense.add_block_sums(columns, bias.reshape(1, -1), False)
    assert_array_equal(bias, base[0] + columns.sum(axis=0), strict=True)
    with pytest.raises(ValueError, match="36 entries a row, got 42"):
        _dense.add_block_sums(parts, np.zeros((6, 6), dtype), False)


@DTYPES
def test_block_sums_made_ready_give_the_same_bits(dtype):
    """``_dense.BlockSums`` (the training plan's additions of the partial
    sums): each prepared call, run again and again, gives the bits of
    ``add_block_sums`` on the arrays' values of the time (a 2-D ``out``,
    transposed or not, a view with a row stride, a 1-D bias), in the order
    given (a second call on the same ``out`` adds to the first's result);
    ``zero_parts`` zeroes every partial sum and nothing else. Arrays of
    another dtype or of the wrong size, and a 1-D ``out`` with a stride
    (whose reshape to one row would be a copy), are refused."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(3)

    def parts(width):
        return (rng.standard_normal((3, width))
                * 10.0 ** rng.integers(-4, 5, size=(3, 1))).astype(dtype)
    grads = rng.standard_normal((6, 9)).astype(dtype)
    bias = rng.standard_normal(9).astype(dtype)
    p1, p2, p3, p4 = parts(42), parts(42), parts(9), parts(9)
    sums = _dense.BlockSums([(p1, grads[:, 2:], True), (p2, grads[:, 2:], False),
                             (p3, bias, False), (p4, bias, False)])
    for _ in range(2):
        want_grads, want_bias = grads.copy(), bias.copy()
        _dense.add_block_sums(p1, want_grads[:, 2:], True)
        _dense.add_block_sums(p2, want_grads[:, 2:], False)
        _dense.add_block_sums(p3, want_bias.reshape(1, -1), False)
        _dense.add_block_sums(p4, want_bias.reshape(1, -1), False)
        sums.add()
        assert_array_equal(grads, want_grads, strict=True)
        assert_array_equal(bias, want_bias, strict=True)
        p1 *= 3   # new values in the same arrays
    grads_before, bias_before = grads.copy(), bias.copy()
    sums.zero_parts()
    for p in (p1, p2, p3, p4):
        assert_array_equal(p, np.zeros_like(p), strict=True)
    assert_array_equal(grads, grads_before, strict=True)
    assert_array_equal(bias, bias_before, strict=True)
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises(TypeError, match="one dtype"):
        _dense.BlockSums([(p1, grads.astype(other), False)])
    with pytest.raises(ValueError, match="54 entries a row, got 42"):
        _dense.BlockSums([(p1, grads, False)])
    with pytest.raises(ValueError, match="1-D out must be contiguous"):
        _dense.BlockSums([(p3, grads[0, ::2], False)])


@DTYPES
@pytest.mark.parametrize("n_rows", [0, 1, 7, 300])
def test_accumulate_column_sums_adds_rows_in_order(n_rows, dtype):
    """``_dense.accumulate_column_sums`` (the Jordan kernel's bias
    gradients): bitwise ``out += row`` for each row in order, from a column
    slice of a wider array, with magnitudes far apart (another order of the
    additions changes the bits); an ``out`` of the wrong length is refused."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(n_rows)
    wide = (rng.standard_normal((n_rows, 45))
            * 10.0 ** rng.integers(-4, 5, size=(n_rows, 1))).astype(dtype)
    A = wide[:, 3:40]
    out = rng.standard_normal(37).astype(dtype)
    want = out.copy()
    for row in A:
        want += row
    _dense.accumulate_column_sums(A, out)
    assert_array_equal(out, want, strict=True)
    if n_rows:
        with pytest.raises(ValueError, match="A's 37 columns"):
            _dense.accumulate_column_sums(A, np.zeros(36, dtype))


@DTYPES
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 11, 4099])
def test_sum_squares_in_double(n, dtype):
    """``_dense.sum_squares`` (the gradient norm of ``clip_gradients``): the
    sum of squares in double precision, as NumPy's within rounding, with
    every remainder of its four partial sums; infinity and NaN carry
    through, and float32 values past sqrt(float32 max) do not overflow."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, size=n)).astype(dtype)
    want = float(np.sum(x.astype(np.float64) ** 2))
    assert_allclose(_dense.sum_squares(x), want, rtol=1e-14, atol=0)
    if n == 0:
        return
    big = np.full(n, np.finfo(np.float32).max, dtype)
    assert_allclose(_dense.sum_squares(big), n * float(big[0]) ** 2, rtol=1e-13)
    for bad, expected in ((np.inf, np.inf), (-np.inf, np.inf), (np.nan, None)):
        y = x.copy()
        y[-1] = bad
        got = _dense.sum_squares(y)
        assert np.isnan(got) if expected is None else got == expected


@DTYPES
@pytest.mark.parametrize("shape", [(0, 3), (1, 1), (7, 3), (50, 33)])
def test_all_finite_finds_every_nan_and_infinity(shape, dtype):
    """``_dense.all_finite`` (the check of a network's input) against
    ``np.isfinite``: a NaN or an infinity of either sign at any position
    is found; the largest and the smallest values, subnormals and -0 are
    finite."""
    from pyx_rnn import _dense
    info = np.finfo(dtype)
    x = np.random.default_rng(shape[0]).standard_normal(shape).astype(dtype)
    assert _dense.all_finite(x)
    if x.size == 0:
        return
    flat = x.reshape(-1)
    for special in (info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0):
        flat[len(flat) // 2] = special
        assert _dense.all_finite(x)
    for bad in (np.nan, np.inf, -np.inf, -np.nan):
        for i in sorted({0, len(flat) // 3, len(flat) - 1}):
            y = x.copy()
            y.reshape(-1)[i] = bad
            assert not _dense.all_finite(y)
            assert _dense.all_finite(y) == np.isfinite(y).all()


@DTYPES
@pytest.mark.parametrize("n_in", [1, 5, 40])
def test_pack_rows_copies_and_checks_the_rows_read(n_in, dtype):
    """``_dense.pack_rows`` (a training batch read where it lies) gives the
    rows NumPy's gather gives, at any thread count, for variable lengths
    with rows that no sequence reads between the sequences (also a batch
    big enough for a team of threads); it finds a NaN or an infinity in
    any row read (the first, a middle and the last steps of a sequence)
    and ignores those of the rows not read; it refuses sizes that do not
    make one packing and sequences whose rows are not all in the data."""
    from pyx_rnn import _dense
    from pyx_rnn.packing import Packing, SequenceInput
    rng = np.random.default_rng(n_in)
    for n_seq in (3, 700):
        lengths = rng.integers(1, 30, n_seq)
        gaps = rng.integers(0, 3, n_seq)
        first = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths[:-1])])
        data = np.full((first[-1] + lengths[-1] + 2, n_in), np.nan, dtype)
        for i in range(n_seq):
            data[first[i]:first[i] + lengths[i]] = rng.standard_normal(
                (lengths[i], n_in))
        pk = Packing.from_lengths(lengths)
        starts = first[pk.order].astype(np.intp)
        want = SequenceInput(data, starts).packed(pk)
        assert np.isfinite(want).all() and np.isnan(data).any()
        for n_threads in (1, 2, 3):
            out = np.full_like(want, 7.0)
            assert _dense.pack_rows(data, starts, pk.batch_sizes, pk.offsets,
                                    out, n_threads) is True
            assert_array_equal(out, want)
    b = n_seq // 2                      # a sequence of the last batch
    for bad in (np.nan, np.inf, -np.inf):
        for step in sorted({0, pk.lengths[b] // 2, pk.lengths[b] - 1}):
            y = data.copy()
            y[starts[b] + step, n_in - 1] = bad
            for n_threads in (1, 2):
                assert _dense.pack_rows(y, starts, pk.batch_sizes, pk.offsets,
                                        out, n_threads) is False
    bs, off = pk.batch_sizes, pk.offsets
    wrong = [
        (data, starts[:-1], bs, off, out, "do not make one packing"),
        (data, starts, bs, off[:-1], out, "do not make one packing"),
        (data, starts, bs, off, out[:-1], "do not make one packing"),
        (data[:, :0], starts, bs, off, out, "do not make one packing"),
        (data, starts, np.where(np.arange(len(bs)) == len(bs) - 1, 0, bs), off,
         out, "positive and non-increasing"),
        (data, starts, bs, off + (np.arange(len(off)) == 1), out,
         "offsets their running sum"),
        (data, np.where(np.arange(n_seq) == b, -1, starts), bs, off, out,
         f"sequence {b} needs rows -1"),
        (data, np.where(np.arange(n_seq) == b, len(data) - pk.lengths[b] + 1,
                        starts), bs, off, out,
         f"sequence {b} needs rows {len(data) - pk.lengths[b] + 1}"),
    ]
    for args in wrong:
        with pytest.raises(ValueError, match=args[-1]):
            _dense.pack_rows(*args[:-1], 1)
    with pytest.raises(ValueError, match="n_threads must be at least 1"):
        _dense.pack_rows(data, starts, bs, off, out, 0)


# ---------------------------------------------------------------------------
# 8. weight gradients over all steps: pyx_rnn._dense.accumulate_outer
# ---------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("n_rows", [100, 4096, 9001],
                         ids=["one block of rows", "16 blocks", "36 blocks"])
@pytest.mark.parametrize("m, n", [(70, 9), (70, 1), (300, 4), (37, 70)],
                         ids=["packed", "narrow", "narrow, 2 blocks", "3 panels"])
def test_accumulate_outer(n_rows, m, n, dtype):
    """``C += A.T @ B`` (``m x n``) over column slices, by the packed product
    (its sum over rows in blocks of 256, the last one shorter) or by our own
    loop (at most 4 columns): matches float64 and is bitwise the same for 1,
    2 and 3 threads."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(64)
    A_full = rng.standard_normal((n_rows, m + 5)).astype(dtype)
    B = rng.standard_normal((n_rows, n)).astype(dtype)
    C0 = rng.standard_normal((m, n + 3)).astype(dtype)
    A = A_full[:, 5:]                 # a column slice: row stride m + 5
    expected = C0[:, 3:].astype(np.float64) + A.T.astype(np.float64) @ B
    results = []
    for n_threads in (1, 2, 3):
        C = C0.copy()
        _dense.accumulate_outer(A, B, C[:, 3:], n_threads)
        assert_array_equal(C[:, :3], C0[:, :3])   # outside the slice
        results.append(C[:, 3:])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert_allclose(results[0], expected, rtol=tol, atol=tol * np.sqrt(n_rows))
    for other in results[1:]:
        assert_array_equal(other, results[0], strict=True)


def test_accumulate_outer_sums_blocks_of_rows_in_order():
    """The packed weight-gradient product's order of summation, bit for
    bit (float32): each block of 256 rows summed from zero in order of the
    rows, one rounding per multiply-add (the AVX2 and AVX-512 kernels use
    FMA; float64 emulates it: the product of two floats is exact there),
    then added to ``C``. Summing all rows in one chain, or blocks of
    another size, changes most of the entries."""
    from pyx_rnn import _cells, _dense
    if _cells.PGEMM_ISA == 0:
        pytest.skip("the baseline kernel's rounding (multiply-adds fused or "
                    "not) is the compiler's choice")
    rng = np.random.default_rng(65)
    R, m, n = 600, 13, 35
    A = rng.standard_normal((R, m)).astype(np.float32)
    B = rng.standard_normal((R, n)).astype(np.float32)
    C = rng.standard_normal((m, n)).astype(np.float32)
    expected = C.copy()
    for k0 in range(0, R, 256):
        acc = np.zeros((m, n), np.float32)
        for k in range(k0, min(k0 + 256, R)):
            prod = np.outer(A[k].astype(np.float64), B[k].astype(np.float64))
            acc = (acc.astype(np.float64) + prod).astype(np.float32)
        expected = expected + acc
    _dense.accumulate_outer(A, B, C, 2)
    assert_array_equal(C, expected, strict=True)


@DTYPES
@pytest.mark.parametrize("n1, n2", [(9, 37), (64, 32), (3, 37), (9, 2)],
                         ids=["packed", "whole panels", "narrow B1", "narrow B2"])
def test_accumulate_outer2_is_two_accumulate_outer(n1, n2, dtype):
    """Both weight gradients of a layer from one product (``dG`` read once)
    give the same bits as one product each, into column slices of larger
    arrays, with 1 and 2 threads; mismatched shapes are refused."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(66)
    R, m = 700, 29
    A = rng.standard_normal((R, m + 2)).astype(dtype)[:, 2:]
    B1 = rng.standard_normal((R, n1)).astype(dtype)
    B2 = rng.standard_normal((R, n2)).astype(dtype)
    C0 = rng.standard_normal((m, n1 + n2 + 1)).astype(dtype)
    expected = C0.copy()
    _dense.accumulate_outer(A, B1, expected[:, :n1], 1)
    _dense.accumulate_outer(A, B2, expected[:, n1:n1 + n2], 1)
    for n_threads in (1, 2):
        C = C0.copy()
        _dense.accumulate_outer2(A, B1, B2, C[:, :n1], C[:, n1:n1 + n2], n_threads)
        assert_array_equal(C, expected, strict=True)
    with pytest.raises(ValueError, match="same number of rows"):
        _dense.accumulate_outer2(A, B1[1:], B2, C[:, :n1], C[:, n1:n1 + n2], 1)
    with pytest.raises(ValueError, match="C1 and C2"):
        _dense.accumulate_outer2(A, B1, B2, C[:, :n1 - 1], C[:, n1:n1 + n2], 1)
    with pytest.raises(ValueError, match="do not match"):
        _dense.accumulate_outer(A, B1, C[:, :n1 - 1], 1)


@DTYPES
@pytest.mark.parametrize("n_rows, n_in, n_out", [
    (32, 32, 1), (7, 300, 3), (5000, 40, 2), (50, 33, 9), (4096, 64, 65)],
    ids=["regression", "narrow, 2 column blocks", "narrow, many rows",
         "packed", "packed, 16 row blocks"])
def test_linear_backward(n_rows, n_in, n_out, dtype):
    """The output layer's gradient in one call: ``gW += dZ.T @ X``,
    ``gb += dZ.sum(0)``, ``dX = dZ @ W``, against float64, bitwise the same
    for 1 and 2 threads; in the narrow loops (at most 4 outputs) each
    weight's and bias's sum runs over the rows in order, from zero."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(67)
    X = rng.standard_normal((n_rows, n_in)).astype(dtype)
    dZ = rng.standard_normal((n_rows, n_out)).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    gW0 = rng.standard_normal((n_out, n_in)).astype(dtype)
    gb0 = rng.standard_normal(n_out).astype(dtype)
    X64, dZ64 = X.astype(np.float64), dZ.astype(np.float64)
    results = []
    for n_threads in (1, 2):
        gW, gb = gW0.copy(), gb0.copy()
        dX = np.full((n_rows, n_in), np.nan, dtype)
        _dense.linear_backward(X, dZ, W, gW, gb, dX, n_threads)
        results.append((gW, gb, dX))
    tol = 1e-12 if dtype == np.float64 else 3e-5
    gW, gb, dX = results[0]
    assert_allclose(gW, gW0 + dZ64.T @ X64, rtol=tol, atol=tol * np.sqrt(n_rows))
    assert_allclose(gb, gb0 + dZ64.sum(axis=0), rtol=tol, atol=tol * np.sqrt(n_rows))
    assert_allclose(dX, dZ64 @ W.astype(np.float64), rtol=tol, atol=tol * 10)
    for other in results[1]:
        assert other.dtype == dtype
    for a, b in zip(results[1], results[0]):
        assert_array_equal(a, b, strict=True)
    if n_out <= _dense.NARROW_COLUMNS:
        # rows in order, from zero: the bits of a running sum in the dtype
        acc_b = np.zeros(n_out, dtype)
        acc_w = np.zeros((n_out, n_in), dtype)
        for r in range(n_rows):
            acc_b = acc_b + dZ[r]
            acc_w = acc_w + dZ[r][:, None] * X[r]
        assert_array_equal(gb, gb0 + acc_b)
        assert_array_equal(gW, gW0 + acc_w)
    with pytest.raises(ValueError, match="do not match"):
        _dense.linear_backward(X, dZ[1:], W, gW, gb, dX, 1)


@DTYPES
def test_squared_error_loss_and_gradient(dtype):
    """The weighted squared error in one pass: the gradient rounded as
    documented (each row's weight over the total and the outputs, in double,
    rounded once), the loss summed in double; mismatched targets refused."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(68)
    Y = rng.standard_normal((37, 3)).astype(dtype)
    T = rng.standard_normal((37, 3)).astype(dtype)
    weight = rng.random(37).astype(dtype)
    total = float(weight.sum()) * 1.5
    dY = np.empty_like(Y)
    value = _dense.squared_error(Y, T, weight, total, dY)
    w = (weight.astype(np.float64) / (total * 3)).astype(dtype)
    assert_array_equal(dY, w[:, None] * (Y - T))
    diff = Y.astype(np.float64) - T
    expected = 0.5 * np.sum(weight[:, None] * diff ** 2) / (total * 3)
    assert_allclose(value, expected, rtol=1e-6 if dtype == np.float32 else 1e-14)
    with pytest.raises(ValueError, match="one row of 3 outputs per loss term"):
        _dense.squared_error(Y, T[:, :2].copy(), weight, total, dY)


def test_every_module_dispatches_the_products():
    """Each extension module has its own copy of the packed product's
    instruction-set dispatch: all three pick the same kernels (the output
    layer and the weight gradients in ``_dense``, the Jordan network in
    ``_jordan``; they ran the baseline kernels before session 10)."""
    from pyx_rnn import _cells, _dense, _jordan
    assert _dense.PGEMM_ISA == _jordan.PGEMM_ISA == _cells.PGEMM_ISA


@DTYPES
@pytest.mark.parametrize("n_out", [1, 3, 40])
def test_linear_rows_do_not_depend_on_each_other(n_out, dtype):
    """The output layer (``_dense.linear``): ``X @ W.T + b`` within rounding,
    and every row bitwise the same computed alone, in any subset or order,
    with any thread count (BLAS does not promise this)."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(5)
    X = rng.standard_normal((150, 17)).astype(dtype)
    W = rng.standard_normal((n_out, 17)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)

    def linear(rows, n_threads=1):
        out = np.empty((len(rows), n_out), dtype)
        wpack = np.empty(_dense.linear_pack_length(n_out, 17, X.itemsize), dtype)
        _dense.linear(np.ascontiguousarray(X[rows]), W, b, out, wpack, n_threads)
        return out

    full = linear(np.arange(150))
    expected = X.astype(np.float64) @ W.T.astype(np.float64) + b
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert_allclose(full, expected, rtol=tol, atol=tol * 10)
    alone = np.vstack([linear([i]) for i in range(150)])
    assert_array_equal(alone, full, strict=True)
    order = rng.permutation(150)
    assert_array_equal(linear(order, n_threads=2), full[order], strict=True)
    assert_array_equal(linear(order[:7], n_threads=3), full[order[:7]], strict=True)


@pytest.mark.parametrize("N", [45, 173])
@pytest.mark.parametrize("n_rows", [*range(1, 14), 23, 40])
def test_packed_product_sums_in_order_of_k(n_rows, N):
    """The packed product's order of summation, bit for bit (float32,
    through ``_dense.linear``): each output summed from zero in order of k,
    one rounding per multiply-add, then the bias added. 45 columns are a
    whole panel and part of one (of which the AVX2 kernel's second half is
    skipped); 173 are five whole panels and part of one, of which 1 to 3
    rows take four at once (AVX-512; AVX2: 1 row, three at once), then
    one by one. Up to 12 rows (AVX-512; 6 for AVX2) are one tile of as many
    rows, so that 1 to 13 rows call every micro-kernel; 23 and 40 rows are
    tiles of sizes that differ by one. A micro-kernel that kept half of its
    sums elsewhere, or stored a partial panel's columns out of place, or a
    tiling that skipped or repeated a row or a panel, fails."""
    from pyx_rnn import _cells, _dense
    if _cells.PGEMM_ISA == 0:
        pytest.skip("the baseline kernel's rounding (multiply-adds fused or "
                    "not) is the compiler's choice")
    rng = np.random.default_rng(67)
    K = 19
    X = rng.standard_normal((n_rows, K)).astype(np.float32)
    W = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    acc = np.zeros((n_rows, N), np.float32)
    for k in range(K):
        prod = np.outer(X[:, k].astype(np.float64), W[:, k].astype(np.float64))
        acc = (acc.astype(np.float64) + prod).astype(np.float32)
    expected = acc + b
    out = np.full((n_rows, N), np.nan, np.float32)
    wpack = np.empty(_dense.linear_pack_length(N, K, 4), np.float32)
    _dense.linear(X, W, b, out, wpack, 1)
    assert_array_equal(out, expected, strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 16, 45, 64])
def test_weights_packed_in_panels(N, dtype):
    """A weight matrix W (N x K) packed for ``x @ W.T`` (here by
    ``_dense.linear``): panels of 128 bytes of columns, one after the other,
    each K rows of its columns, column n of the packing being row n of W,
    and zeros past the last column. Every element of the buffer is written."""
    from pyx_rnn import _dense
    rng = np.random.default_rng(N)
    K, nr = 7, 128 // np.dtype(dtype).itemsize
    W = rng.standard_normal((N, K)).astype(dtype)
    n_panels = -(-N // nr)
    wpack = np.full(_dense.linear_pack_length(N, K, W.itemsize), np.nan, dtype)
    assert len(wpack) == n_panels * K * nr
    _dense.linear(np.ones((1, K), dtype), W, np.zeros(N, dtype),
                  np.empty((1, N), dtype), wpack, 1)
    padded = np.zeros((n_panels * nr, K), dtype)
    padded[:N] = W
    want = padded.reshape(n_panels, nr, K).transpose(0, 2, 1).ravel()
    assert_array_equal(wpack, want, strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [5, 8])
@pytest.mark.parametrize("peephole", [False, True])
def test_lstm_cache_keeps_tanh_of_the_cell_state(peephole, hidden, dtype):
    """In training the LSTM's forward pass keeps tanh(c_t) for the backward
    pass (``cache.aux``): bitwise the kernels' tanh of the kept cell states,
    whether the step ran in one pass (float32, hidden 8, no peepholes) or in
    the loops."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    spec = LayerSpec("lstm", N_INPUT, hidden, peephole=peephole)
    w = {k: (rng.standard_normal(s) * 0.8).astype(dtype)
         for k, s in spec.shapes().items()}
    X, pk = pack([rng.standard_normal((n, N_INPUT)) * 2 for n in (6, 4, 4, 1)],
                 dtype)
    _, _, _, cache = layer_forward(spec, w, X, pk.batch_sizes, pk.offsets,
                                   block_rows=2, n_threads=2)
    # row by row, as the kernels apply it (libmvec's float64 tanh may round
    # a value differently in a vector's lanes and in the scalar tail)
    want = cache.C.copy()
    for row in want:
        _cells.gate_activation(row, False)
    assert_array_equal(cache.aux, want)
    assert np.abs(cache.C).max() > 1     # tanh is not the identity here
    _, _, _, kept = layer_forward(spec, w, X, pk.batch_sizes, pk.offsets,
                                  keep_cache=False)
    assert kept is None
