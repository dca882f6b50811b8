"""Token input read by the first layer itself, without an embedding.

A ``TokenInput`` row is the one-hot vector of its id scaled by its weight;
the first layer's input projection is then a gather of the columns of its
input weights (and the weight gradient a scatter-add). These tests check that
the result is the dense weighted one-hot computation, to rounding.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from pyx_rnn import _dense
from pyx_rnn.layers import (
    JordanSpec,
    LayerSpec,
    jordan_backward,
    jordan_forward,
    layer_backward,
    layer_forward,
)
from pyx_rnn.network import Network
from pyx_rnn.packing import Packing
from pyx_rnn.tokens import TokenInput

V = 7
LENGTHS = [6, 2, 5, 4]


def _token_batch(seed=0, lengths=LENGTHS, dtype=np.float64):
    rng = np.random.default_rng(seed)
    pk = Packing.from_lengths(lengths)
    ids = rng.integers(0, V, pk.n_rows)
    weights = rng.uniform(0.3, 1.7, pk.n_rows).astype(dtype)
    X = TokenInput(ids, weights)
    one_hot = np.zeros((pk.n_rows, V), dtype)
    one_hot[np.arange(pk.n_rows), ids] = weights
    return X, one_hot, pk


def _pair(cell, hidden, **kw):
    rng = np.random.default_rng(1)
    tok = Network(cell, V, hidden, 2, token_input=True, dtype=np.float64, **kw)
    tok.init_weights(rng)
    tok.params += 0.1 * rng.standard_normal(tok.params.shape)
    dense = Network(cell, V, hidden, 2, dtype=np.float64, **kw)
    assert dense.shapes == tok.shapes
    dense.params[...] = tok.params
    return tok, dense


CASES = [
    ("lstm", (4, 3), {}),
    ("gru", (4, 3), dict(reset_after=True)),
    ("gru", (4, 3), dict(reset_after=False)),
    ("rnn", (4, 3), {}),
    ("jordan", (4, 3), {}),
    ("lstm", (4, 3), dict(bidirectional=True)),
    ("lstm", (3,), dict(peephole=True, layer_norm=True)),
    ("jordan", (3, 4), dict(layer_norm=True)),
]


@pytest.mark.parametrize("cell, hidden, kw", CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("tbptt", [None, (2, 3)], ids=["full", "tbptt"])
def test_tokens_equal_dense_one_hot(cell, hidden, kw, rs, tbptt):
    if tbptt is not None and kw.get("bidirectional"):
        pytest.skip("truncated BPTT excludes bidirectional layers")
    tok, dense = _pair(cell, hidden, **kw)
    X, one_hot, pk = _token_batch()
    rng = np.random.default_rng(2)
    T = rng.standard_normal((pk.n_rows if rs else pk.n_sequences, 2))
    sw = rng.uniform(0.5, 2.0, pk.n_sequences)
    l1, s1 = tok.loss_gradient(X, pk, T, "squared_error", sample_weight=sw,
                               return_sequences=rs, alpha=0.01, tbptt=tbptt)
    l2, s2 = dense.loss_gradient(one_hot, pk, T, "squared_error", sample_weight=sw,
                                 return_sequences=rs, alpha=0.01, tbptt=tbptt)
    assert_allclose(l1, l2, rtol=1e-12, atol=1e-14)
    for name in dense.shapes:
        assert_allclose(tok.grad_views[name], dense.grad_views[name], rtol=1e-12,
                        atol=1e-12, err_msg=name)
    _, Y1, _ = tok.forward(X, pk, return_sequences=rs)
    _, Y2, _ = dense.forward(one_hot, pk, return_sequences=rs)
    assert_allclose(Y1, Y2, rtol=1e-12, atol=1e-14)


def test_tokens_float32_close_to_dense():
    tok, dense = _pair("gru", (4,))
    tok32 = Network("gru", V, (4,), 2, token_input=True, dtype=np.float32)
    tok32.params[...] = tok.params
    X, one_hot, pk = _token_batch()  # float64 weights: cast by the network
    T = np.random.default_rng(2).standard_normal((pk.n_sequences, 2))
    l1, _ = tok32.loss_gradient(X, pk, T, "squared_error")
    l2, _ = dense.loss_gradient(one_hot, pk, T, "squared_error")
    assert_allclose(l1, l2, rtol=1e-5)
    assert_allclose(tok32.grads, dense.grads, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cell, kw", [("lstm", {}), ("jordan", {}),
                                      ("gru", dict(bidirectional=True))])
def test_tokens_finite_differences(cell, kw):
    tok, _ = _pair(cell, (4, 3), **kw)
    X, _, pk = _token_batch(seed=3, lengths=[5, 3, 4])
    T = np.random.default_rng(4).standard_normal((pk.n_rows, 2))

    def loss():
        return tok.loss_gradient(X, pk, T, "squared_error",
                                 return_sequences=True)[0]

    loss()
    analytic = tok.grads.copy()
    numeric = np.zeros_like(analytic)
    for i in range(len(numeric)):
        old = tok.params[i]
        tok.params[i] = old + 1e-6
        up = loss()
        tok.params[i] = old - 1e-6
        down = loss()
        tok.params[i] = old
        numeric[i] = (up - down) / 2e-6
    # columns of unused tokens get no gradient
    w_ih = tok.grad_views["weight_ih_l0"]
    unused = np.setdiff1d(np.arange(V), X.ids)
    assert np.all(w_ih[:, unused] == 0)
    assert np.abs(numeric - analytic).max() <= 1e-6 * np.abs(numeric).max()


# ---------------------------------------------------------------------------
# argument checks of the layer entry points
# ---------------------------------------------------------------------------

def _layer_setup(dtype=np.float64):
    spec = LayerSpec("gru", V, 3)
    rng = np.random.default_rng(0)
    w = {k: rng.standard_normal(s).astype(dtype) for k, s in spec.shapes().items()}
    pk = Packing.from_lengths([3, 2])
    return spec, w, pk


def _jordan_setup(dtype=np.float64):
    spec = JordanSpec(V, (3, 2), 2)
    rng = np.random.default_rng(0)
    ws = [{k: rng.standard_normal(s).astype(dtype)
           for k, s in spec.layer_shapes(k).items()} for k in range(2)]
    w_out = rng.standard_normal((2, 2))
    b_out = rng.standard_normal(2)
    return spec, ws, w_out, b_out, Packing.from_lengths([3, 2])


def _bad_inputs(n):
    ok_ids = np.arange(n) % V
    ok_w = np.ones(n)
    return [
        (TokenInput(np.r_[-1, ok_ids[1:]], ok_w), ValueError, "X.ids"),
        (TokenInput(np.r_[V, ok_ids[1:]], ok_w), ValueError, "X.ids"),
        (TokenInput(ok_ids, ok_w.astype(np.float32)), TypeError, "dtype"),
        (TokenInput(ok_ids[:-1], ok_w[:-1]), ValueError, "shape"),
        (TokenInput(ok_ids, np.r_[np.nan, ok_w[1:]]), ValueError, "NaN"),
    ]


@pytest.fixture
def no_kernels(monkeypatch):
    """Fail if a token kernel runs: the checks must come first."""
    def boom(*args, **kwargs):
        raise AssertionError("compiled code ran")
    monkeypatch.setattr(_dense, "gather_rows", boom)
    monkeypatch.setattr(_dense, "scatter_add_rows", boom)


def test_layer_forward_rejects_bad_tokens(no_kernels):
    spec, w, pk = _layer_setup()
    for X, exc, match in _bad_inputs(pk.n_rows):
        with pytest.raises(exc, match=match):
            layer_forward(spec, w, X, pk.batch_sizes, pk.offsets)


def test_jordan_forward_rejects_bad_tokens(no_kernels):
    spec, ws, w_out, b_out, pk = _jordan_setup()
    for X, exc, match in _bad_inputs(pk.n_rows):
        with pytest.raises(exc, match=match):
            jordan_forward(spec, ws, w_out, b_out, X, pk.batch_sizes, pk.offsets)


def test_bad_ids_dtype_rejected():
    spec, w, pk = _layer_setup()
    X = TokenInput(np.arange(pk.n_rows), np.ones(pk.n_rows))
    X.ids = np.arange(pk.n_rows).astype(float)   # bypassing the constructor
    with pytest.raises(TypeError, match="integers"):
        layer_forward(spec, w, X, pk.batch_sizes, pk.offsets)


def test_token_layer_backward_and_need_dx():
    spec, w, pk = _layer_setup()
    X = TokenInput(np.arange(pk.n_rows) % V, np.linspace(0.5, 1.5, pk.n_rows))
    H, _, _, cache = layer_forward(spec, w, X, pk.batch_sizes, pk.offsets)
    grads = {k: np.zeros_like(a) for k, a in w.items()}
    dH = np.ones_like(H)
    with pytest.raises(ValueError, match="need_dx"):
        layer_backward(spec, w, grads, cache, dH)
    dX, _, _ = layer_backward(spec, w, grads, cache, dH, need_dx=False)
    assert dX is None
    # the dense computation gives the same weight gradient
    one_hot = np.zeros((pk.n_rows, V))
    one_hot[np.arange(pk.n_rows), X.ids] = X.weights
    H2, _, _, cache2 = layer_forward(spec, w, one_hot, pk.batch_sizes, pk.offsets)
    assert_allclose(H, H2, rtol=1e-13, atol=1e-15)
    grads2 = {k: np.zeros_like(a) for k, a in w.items()}
    layer_backward(spec, w, grads2, cache2, dH, need_dx=False)
    for k in grads:
        assert_allclose(grads[k], grads2[k], rtol=1e-12, atol=1e-14)
    # a cache whose token input lost its length is refused
    cache.X = X[:-1]
    with pytest.raises(ValueError, match="cache.X"):
        layer_backward(spec, w, grads, cache, dH, need_dx=False)


def test_token_jordan_backward_need_dx():
    spec, ws, w_out, b_out, pk = _jordan_setup()
    X = TokenInput(np.arange(pk.n_rows) % V, np.ones(pk.n_rows))
    Y, _, cache = jordan_forward(spec, ws, w_out, b_out, X, pk.batch_sizes,
                                 pk.offsets)
    grads = [{k: np.zeros_like(a) for k, a in w.items()} for w in ws]
    g_out = {"weight": np.zeros_like(w_out), "bias": np.zeros_like(b_out)}
    dZ = np.ones_like(Y)
    with pytest.raises(ValueError, match="need_dx"):
        jordan_backward(spec, ws, w_out, grads, g_out, cache, dZ)
    dX, _ = jordan_backward(spec, ws, w_out, grads, g_out, cache, dZ,
                            need_dx=False)
    assert dX is None
    assert np.abs(grads[0]["weight_ih"]).sum() > 0


def test_network_rejects_out_of_vocabulary_ids():
    tok, _ = _pair("lstm", (3,))
    _, _, pk = _token_batch()
    X = TokenInput(np.full(pk.n_rows, V), np.ones(pk.n_rows))
    T = np.zeros((pk.n_sequences, 2))
    with pytest.raises(ValueError, match="token id"):
        tok.loss_gradient(X, pk, T, "squared_error")
    with pytest.raises(ValueError, match="token id"):
        tok.forward(X, pk)
