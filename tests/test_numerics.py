"""Numerical stability for large inputs, and float32 against float64 training.

1. The output activations (sigmoid, tanh, softmax) and the losses of
   ``pyx_rnn.network.loss_and_gradient`` (log-loss, binary log-loss, squared
   error; from the pre-activation, and the clipped form of Jordan networks)
   at pre-activations of +-1e4, +-1e30 and near the largest float: no NaN or
   infinity, and exactly the limits (losses to float rounding).
2. The compiled cells (rnn, lstm with and without peepholes, gru with the
   reset after and before the product) driven to saturation by inputs of
   +-1e4 and +-1e30 in float32 and float64: outputs are exactly the limits
   (0, 1, +-1, tanh of integers), and every gradient through a saturated
   gate is exactly 0, never NaN. Partly saturated layers match the float64
   NumPy reference, huge gradients included.
3. Layer normalisation is scale-invariant: LN(s v) == LN(v) for s up to 1e30,
   in float32 too (its mean and variance are accumulated in double).
4. Whole networks (a huge output layer over a saturated stack, softmax,
   sigmoid and Jordan heads): finite loss equal to the exact value, finite
   gradients.
5. float32 training of a scaled-down benchmark workload ends where float64
   training does, to far less than what another random_state changes
   (benchmarks/bench_precision.py measures the full-size workloads).
"""

import math
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning

from pyx_rnn import reference as ref
from pyx_rnn.layers import LayerSpec, layer_backward, layer_forward
from pyx_rnn.network import Network, _activate, loss_and_gradient
from pyx_rnn.packing import pack, unpack
from sklearn_rnn import RNNRegressor

DTYPES = (np.float32, np.float64)
SCALES = (1e4, 1e30)
# near the largest float of each dtype
HUGE = {np.float32: 3e38, np.float64: 1.5e308}
# numpy must not overflow or divide by zero anywhere (underflow to 0 is the
# right limit of exp(-large), so it is allowed)
STRICT = dict(over="raise", invalid="raise", divide="raise", under="ignore")


def _eps(dtype):
    return float(np.finfo(dtype).eps)


# ---------------------------------------------------------------------------
# 1. output activations and losses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES + ("huge",))
def test_output_activations_reach_their_limits(dtype, scale):
    s = HUGE[dtype] if scale == "huge" else scale
    Z = np.array([[s, -s, 0], [s, s, -s], [-s, -s, -s]], dtype)
    with np.errstate(**STRICT):
        assert_array_equal(_activate(Z, "sigmoid"),
                           np.array([[1, 0, 0.5], [1, 1, 0], [0, 0, 0]], dtype))
        assert_array_equal(_activate(Z, "tanh"),
                           np.array([[1, -1, 0], [1, 1, -1], [-1, -1, -1]], dtype))
        soft = _activate(Z, "softmax")
    assert soft.dtype == dtype
    assert_array_equal(soft[:2], np.array([[1, 0, 0], [0.5, 0.5, 0]], dtype))
    assert_allclose(soft[2], 1 / 3, rtol=_eps(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_log_losses_are_exact_for_large_preactivations(dtype, scale):
    s = float(dtype(scale))  # the value the network actually holds
    # softmax + log-loss; per row -log p(target): 0, 2s, log 2, s/2 (soft target)
    Z = np.array([[s, -s, 0], [s, -s, 0], [s, s, -s], [s, 0, -s]], dtype)
    T = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0.5, 0.5, 0]], dtype)
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("log_loss", "softmax", Z, _activate(Z, "softmax"),
                                      T, np.ones(4), 4.0)
    assert_allclose(value, (0 + 2 * s + math.log(2) + s / 2) / 4, rtol=4 * _eps(dtype))
    assert dZ.dtype == dtype
    assert_array_equal(dZ, np.array([[0, 0, 0], [1, -1, 0], [-0.5, 0.5, 0],
                                     [0.5, -0.5, 0]], dtype) / 4)

    # the same rows with class indices as targets (language models)
    labels = np.array([0, 1, 0])
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("log_loss", "softmax", Z[:3],
                                      _activate(Z[:3], "softmax"), labels,
                                      np.ones(3), 3.0)
    assert_allclose(value, (0 + 2 * s + math.log(2)) / 3, rtol=4 * _eps(dtype))
    assert_allclose(dZ, np.array([[0, 0, 0], [1, -1, 0], [-0.5, 0.5, 0]]) / 3,
                    rtol=_eps(dtype), atol=0)

    # sigmoid + binary log-loss; per row log(1 + e^z) - t z: 0, s, s, log 2
    Z = np.array([[s], [-s], [s], [0]], dtype)
    T = np.array([[1], [1], [0], [1]], dtype)
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("binary_log_loss", "sigmoid", Z,
                                      _activate(Z, "sigmoid"), T, np.ones(4), 4.0)
    assert_allclose(value, (2 * s + math.log(2)) / 4, rtol=4 * _eps(dtype))
    assert_array_equal(dZ, np.array([[0], [-1], [1], [-0.5]], dtype) / 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_loss_near_the_largest_float(dtype):
    # Z - max(Z) overflows to -inf for the classes far below the target: they
    # have zero target weight and must add 0, not 0 * -inf = NaN
    s = HUGE[dtype]
    Z = np.array([[s, -s, 0], [-s, s, 0]], dtype)
    T = np.array([[1, 0, 0], [0, 1, 0]], dtype)
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("log_loss", "softmax", Z, _activate(Z, "softmax"),
                                      T, np.ones(2), 2.0)
    assert value == 0
    assert_array_equal(dZ, 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_squared_error_through_saturated_outputs(dtype, activation):
    s = 1e30
    Z = np.array([[s, -s], [-s, s]], dtype)
    T = np.array([[0.5, 0.2], [0.1, -0.3]], dtype)
    with np.errstate(**STRICT):
        Y = _activate(Z, activation)
        value, dZ = loss_and_gradient("squared_error", activation, Z, Y, T,
                                      np.ones(2), 2.0)
    expected = 0.5 * np.mean((Y.astype(np.float64) - T) ** 2)
    assert_allclose(value, expected, rtol=4 * _eps(dtype))
    # the output's derivative is exactly 0 at saturation
    assert_array_equal(dZ, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jordan_losses_clip_exact_zeros_and_ones(dtype):
    # Jordan networks give only Y: probabilities of exactly 0 or 1 are
    # clipped, so the loss stays finite (at most -log(tiny) per row)
    tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
    Y = np.array([[1, 0, 0], [0, 1, 0]], dtype)
    T = np.array([[0, 1, 0], [0, 1, 0]], dtype)
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("log_loss", "softmax", None, Y, T,
                                      np.ones(2), 2.0)
    assert_allclose(value, -np.log(tiny) / 2, rtol=4 * _eps(dtype))
    assert_array_equal(dZ, (Y - T) / 2)
    Y = np.array([[1], [0]], dtype)
    T = np.array([[0], [0]], dtype)
    with np.errstate(**STRICT):
        value, dZ = loss_and_gradient("binary_log_loss", "sigmoid", None, Y, T,
                                      np.ones(2), 2.0)
    assert_allclose(value, -np.log1p(-(1 - eps)) / 2, rtol=4 * _eps(dtype))
    assert np.isfinite(value)
    assert_array_equal(dZ, (Y - T) / 2)


# ---------------------------------------------------------------------------
# 2. the compiled cells at saturation
# ---------------------------------------------------------------------------

# (cell, reset_after, peephole)
CELLS = [("rnn", True, False), ("lstm", True, False), ("lstm", True, True),
         ("gru", True, False), ("gru", False, False)]
B, T_STEPS, H = 3, 5, 4


def _identity_layer(cell, reset_after, peephole, dtype, rng, layer_norm=False):
    """A layer whose input weights are the identity: the pre-activation of
    gate unit j is x_j plus a moderate recurrent part (|.| < H + 1)."""
    spec = LayerSpec(cell, 0, H, "tanh", False, reset_after, peephole, layer_norm)
    n_in = spec.gates * H
    spec = LayerSpec(cell, n_in, H, "tanh", False, reset_after, peephole, layer_norm)
    w = {}
    for name, shape in spec.shapes().items():
        w[name] = rng.uniform(-0.5, 0.5, shape).astype(dtype)
    w["weight_ih"] = np.eye(n_in, dtype=dtype)
    if layer_norm:
        w["ln_weight"] = rng.uniform(0.5, 1.5, w["ln_weight"].shape).astype(dtype)
    return spec, w


def _run(spec, w, xs, h0, c0, dtype):
    data, packing = pack(xs, dtype)
    order = packing.order
    H0 = np.ascontiguousarray(h0[order], dtype)
    C0 = np.ascontiguousarray(c0[order], dtype) if spec.cell == "lstm" else None
    with np.errstate(**STRICT):
        Hs, h_n, c_n, cache = layer_forward(spec, w, data, packing.batch_sizes,
                                            packing.offsets, H0, C0)
        grads = {k: np.zeros_like(v) for k, v in w.items()}
        dX, dh0, dc0 = layer_backward(spec, w, grads, cache, np.ones_like(Hs))
    out = dict(H=unpack(Hs, packing), dX=unpack(dX, packing))
    inverse = np.argsort(order)
    out["dh0"] = dh0[inverse]
    out["dc0"] = dc0[inverse] if spec.cell == "lstm" else None
    return out, grads


def _saturating_inputs(cell, rng, s, dtype):
    """Inputs of +-s only, with a chosen sign per gate where it matters."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    x = rng.choice([-s, s], size=(B, T_STEPS, G * H))
    if cell == "lstm":
        x[:, :, :H] = s  # input gate open: c_t = f c_{t-1} + g
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cell, reset_after, peephole", CELLS)
def test_saturated_cells_give_exact_limits_and_zero_gradients(
        cell, reset_after, peephole, scale, dtype):
    rng = np.random.default_rng(0)
    spec, w = _identity_layer(cell, reset_after, peephole, dtype, rng)
    x = _saturating_inputs(cell, rng, scale, dtype)
    h0 = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    c0 = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    out, grads = _run(spec, w, list(x), h0, c0, dtype)

    sign = np.sign(x.astype(np.float64))
    gate = (sign + 1) / 2                      # sigmoid's limits: 0 or 1
    expected_dh0 = np.zeros((B, H))
    if cell == "rnn":
        expected = sign                           # tanh's limits
    elif cell == "lstm":
        f, g, o = gate[..., H:2 * H], sign[..., 2 * H:3 * H], gate[..., 3 * H:]
        c = c0.astype(np.float64)
        expected = np.empty((B, T_STEPS, H))
        for t in range(T_STEPS):
            c = f[:, t] * c + g[:, t]
            expected[:, t] = o[:, t] * np.tanh(c.astype(dtype))
    else:
        z, n = gate[..., H:2 * H], sign[..., 2 * H:]
        h = h0.astype(np.float64)
        expected = np.empty((B, T_STEPS, H))
        for t in range(T_STEPS):
            h = (1 - z[:, t]) * n[:, t] + z[:, t] * h
            expected[:, t] = h
        # dL/dh0 with dL/dh_t = 1 at every step: only the z * h_{t-1} path
        # carries gradient (every gate derivative is 0)
        for t in reversed(range(T_STEPS)):
            expected_dh0 = z[:, t] * (1 + expected_dh0)
    for b in range(B):
        assert out["H"][b].dtype == dtype
        # tanh of a non-integer (LSTM cell states from c0) to a few ulps,
        # everything else exactly
        assert_allclose(out["H"][b], expected[b], rtol=4 * _eps(dtype), atol=0)
        if cell != "lstm":
            assert_array_equal(out["H"][b], expected[b])
        assert_array_equal(out["dX"][b], 0)
    for name, g in grads.items():
        assert_array_equal(g, 0, err_msg=f"gradient of {name}")
    assert_array_equal(out["dh0"], expected_dh0)
    if cell == "lstm":
        # through c_t = f c_{t-1} + i g only: dc0 = sum over t of
        # f_1 ... f_t * o_t * (1 - tanh(c_t)^2), finite
        assert np.all(np.isfinite(out["dc0"]))


def _reference_run(cell, reset_after, w, x, h0, c0, layer_norm=False):
    """float64 reference of one sequence: hidden states and gradients for
    dL/dh_t = 1 at every step."""
    p = {k: v.astype(np.float64) for k, v in w.items()}
    x = x.astype(np.float64)
    dH = np.ones((len(x), H))
    with np.errstate(**STRICT):
        if cell == "rnn":
            hs, cache = ref.rnn_forward(x, p, h0, layer_norm=layer_norm)
            grads = ref.rnn_backward(dH, None, cache)
        elif cell == "lstm":
            hs, _, cache = ref.lstm_forward(x, p, h0, c0, layer_norm=layer_norm)
            grads = ref.lstm_backward(dH, None, None, cache)
        else:
            hs, cache = ref.gru_forward(x, p, h0, reset_after=reset_after,
                                        layer_norm=layer_norm)
            grads = ref.gru_backward(dH, None, cache)
    return hs, grads


TOL = {np.float32: 2e-5, np.float64: 1e-11}


def _close(actual, expected, dtype, what):
    """Relative to the largest entry: gradients here reach 1e30."""
    scale = max(np.max(np.abs(expected)), 1.0)
    assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                    err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cell, reset_after, peephole", CELLS)
def test_partly_saturated_cells_match_the_reference(cell, reset_after, peephole,
                                                    scale, dtype):
    # half the inputs +-scale, half moderate: gate derivatives are 0 or not,
    # and the input-weight gradients multiply moderate derivatives by 1e30
    rng = np.random.default_rng(1)
    spec, w = _identity_layer(cell, reset_after, peephole, dtype, rng)
    x = _saturating_inputs(cell, rng, scale, dtype)
    moderate = rng.random(x.shape) < 0.5
    x[moderate] = rng.standard_normal(moderate.sum())
    h0 = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    c0 = rng.uniform(-0.5, 0.5, (B, H)).astype(dtype)
    out, grads = _run(spec, w, list(x), h0, c0, dtype)
    total = {k: np.zeros(v.shape) for k, v in w.items()}
    for b in range(B):
        hs, g = _reference_run(cell, reset_after, w, x[b], h0[b].astype(np.float64),
                               c0[b].astype(np.float64))
        _close(out["H"][b], hs, dtype, "hidden states")
        _close(out["dX"][b], g["x"], dtype, "dX")
        for k in total:
            total[k] += g[k]
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), k
        _close(g, total[k], dtype, f"gradient of {k}")
    assert np.max(np.abs(grads["weight_ih"])) > scale / 100  # huge, and right


# ---------------------------------------------------------------------------
# 3. layer normalisation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, scale", [
    (np.float32, 1e4), (np.float64, 1e4), (np.float64, 1e30), (np.float32, 1e30)])
@pytest.mark.parametrize("cell, reset_after, peephole",
                         [("rnn", True, False), ("lstm", True, False)])
def test_layer_norm_is_scale_invariant(cell, reset_after, peephole, scale, dtype):
    # LN(s v) = LN(v): inputs of any size give the same (unsaturated) gates
    rng = np.random.default_rng(2)
    spec, w = _identity_layer(cell, reset_after, peephole, dtype, rng,
                              layer_norm=True)
    for name in ("weight_hh", "bias_ih", "bias_hh"):
        w[name][...] = 0  # the pre-activations are the inputs themselves
    v = rng.standard_normal((B, T_STEPS, w["weight_ih"].shape[0]))
    h0 = np.zeros((B, H), dtype)
    small, _ = _run(spec, w, list(v.astype(dtype)), h0, h0, dtype)
    large, grads = _run(spec, w, list((v * scale).astype(dtype)), h0, h0, dtype)
    for b in range(B):
        hs, _ = _reference_run(cell, reset_after, w, (v[b] * scale).astype(dtype),
                               h0[b].astype(np.float64), h0[b].astype(np.float64),
                               layer_norm=True)
        _close(large["H"][b], hs, dtype, "hidden states")
        # up to LN's epsilon (1e-5, added to variances of about 1)
        assert_allclose(large["H"][b], small["H"][b], rtol=0, atol=1e-4)
    for k, g in grads.items():
        assert np.all(np.isfinite(g)), k


# ---------------------------------------------------------------------------
# 4. whole networks
# ---------------------------------------------------------------------------

def _log_softmax(z):
    z = z.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("cell, head", [("lstm", "softmax"), ("gru", "sigmoid"),
                                        ("rnn", "softmax"), ("jordan", "softmax"),
                                        ("jordan", "sigmoid")])
def test_network_with_huge_preactivations_everywhere(cell, head, scale, dtype):
    rng = np.random.default_rng(3)
    n_out = 3 if head == "softmax" else 2
    net = Network(cell, 2, (4, 3), n_out, output_activation=head, dtype=dtype)
    net.init_weights(rng)
    # huge inputs saturate the first layer; huge output weights give output
    # pre-activations of +-scale
    net.weights["output.weight"][...] *= scale
    seqs = [rng.choice([-scale, scale], size=(n, 2)) for n in (5, 3, 4)]
    data, packing = pack(seqs, dtype)
    if head == "softmax":
        T = np.eye(n_out, dtype=dtype)[rng.integers(n_out, size=3)][packing.order]
        loss = "log_loss"
    else:
        T = rng.integers(2, size=(3, n_out)).astype(dtype)[packing.order]
        loss = "binary_log_loss"
    with np.errstate(**STRICT):
        Z, Y, _ = net.forward(data, packing)
        value, _ = net.loss_gradient(data, packing, T, loss)
        norm = net.clip_gradients(clip_norm=1.0)
    assert np.all(np.isfinite(Y))
    assert np.isfinite(value) and np.all(np.isfinite(net.grads)) and np.isfinite(norm)
    if cell == "jordan":
        # the output layer is inside the recurrence: only Y, clipped
        tiny, eps = np.finfo(dtype).tiny, np.finfo(dtype).eps
        Yd = Y.astype(np.float64)
        if head == "softmax":
            expected = -np.sum(T * np.log(np.clip(Yd, tiny, 1))) / 3
        else:
            Yc = np.clip(Yd, tiny, 1 - eps)
            expected = -np.sum(T * np.log(Yc) + (1 - T) * np.log1p(-Yc)) / 3
        assert_allclose(value, expected, rtol=1e-4)
        return
    assert np.max(np.abs(Z)) > scale / 100
    if head == "softmax":
        expected = -np.sum(T * _log_softmax(Z)) / 3
    else:
        z = Z.astype(np.float64)
        expected = np.sum(np.logaddexp(0, z) - T * z) / 3
    # the value is exact up to the rounding of Z itself (relative eps of
    # the largest |Z|, times a few terms)
    assert_allclose(value, expected, rtol=10 * _eps(dtype),
                    atol=10 * _eps(dtype) * np.max(np.abs(Z)))


# ---------------------------------------------------------------------------
# 5. float32 against float64 training
# ---------------------------------------------------------------------------

def _small_lstm_data(n, seed):
    """The benchmark's small-lstm task (benchmarks/bench_torch.make_data),
    with fewer sequences: 50 steps of one standard normal feature, target
    their mean."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 50, 1), dtype=np.float32)
    return X, X.mean(axis=(1, 2), dtype=np.float64)


# float32 rounds every operation to a relative 2**-24 = 6e-8. Training
# propagates those differences (the initial weights themselves differ by that
# much), and 1e-4 allows them to grow by a factor of ~1700 over the run. A
# model from another random_state differs by ~1e-1: 1e-4 is small enough to
# tell a float32 run apart from a different model, as checked below.
PRECISION_RTOL = 1e-4


def test_float32_training_ends_within_tolerance_of_float64():
    # the small-lstm benchmark (hidden 32, batches of 32, Adam at 1e-3,
    # gradient norm clipped at 1), on 512 sequences for 5 epochs
    X, y = _small_lstm_data(512, seed=0)
    X_test, y_test = _small_lstm_data(256, seed=1)
    params = dict(cell="lstm", hidden_layer_sizes=(32,), batch_size=32,
                  learning_rate_init=1e-3, clip_norm=1.0, max_iter=5, tol=0,
                  n_threads=1)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for dtype, seed in (("float32", 0), ("float64", 0), ("float64", 1)):
            fits[dtype, seed] = RNNRegressor(dtype=dtype, random_state=seed,
                                             **params).fit(X, y)
    f32, f64, other = fits["float32", 0], fits["float64", 0], fits["float64", 1]
    # it learned: the loss fell by 10x and more
    assert f64.loss_curve_[-1] < f64.loss_curve_[0] / 10
    assert_allclose(f32.loss_curve_, f64.loss_curve_, rtol=PRECISION_RTOL)
    spread = np.std(y_test)
    p32, p64 = f32.predict(X_test), f64.predict(X_test)
    assert np.max(np.abs(p32 - p64)) < PRECISION_RTOL * spread
    mse32, mse64 = np.mean((p32 - y_test) ** 2), np.mean((p64 - y_test) ** 2)
    assert abs(mse32 - mse64) < PRECISION_RTOL * mse64
    # the tolerance is meaningful: another random_state is far outside it
    assert abs(other.loss_ - f64.loss_) > 100 * PRECISION_RTOL * f64.loss_
    assert np.max(np.abs(other.predict(X_test) - p64)) > 100 * PRECISION_RTOL * spread


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid", "tanh"])
def test_gate_activations_are_accurate_everywhere(sigmoid, dtype):
    """The vectorised sigmoid and tanh the kernels apply to their gates (our
    own float32 versions with AVX2 or AVX-512, else libmvec or libm): within
    3 ulp for ours (2.03 and 1.34 measured) and 4 for libmvec's (glibc's
    bound for it; its float32 sigmoid, ``1 / (1 + expf(-x))``, measured 2.91
    ulp with AVX2 and 3.10 with SSE and AVX-512, its float64 one 3.12) of a
    long-double reference over the whole range, below the smallest normal
    number within it, exact limits, NaN kept, and (float32)
    a value's result independent of its position in the array. A CPU with
    AVX2 runs ours; ``tests/test_isa.py`` runs this test without them."""
    from pyx_rnn import _cells
    info = np.finfo(dtype)
    # every 9973rd bit pattern of the positive floats up to 1e30, both signs
    bits = np.arange(0, np.float32(1e30).view(np.int32), 9973, dtype=np.int64)
    x = bits.astype(np.int32).view(np.float32).astype(dtype)
    x = np.concatenate([x, -x, np.linspace(-20, 20, 40001, dtype=dtype)])
    got = x.copy()
    _cells.gate_activation(got, sigmoid)
    xl = x.astype(np.longdouble)
    with np.errstate(over="ignore"):   # exp(-x) is inf for x below -11356
        want = 1 / (1 + np.exp(-xl)) if sigmoid else np.tanh(xl)
    err = np.abs(got.astype(np.longdouble) - want)
    normal = np.abs(want) >= info.tiny
    ulp = np.spacing(np.abs(want[normal]).astype(dtype)).astype(np.longdouble)
    ours = dtype == np.float32 and _cells.VECTOR_WIDTH > 0
    assert (err[normal] / ulp).max() <= (3 if ours else 4)
    assert err[~normal].max(initial=0) <= info.tiny
    # limits and specials
    special = np.array([np.inf, -np.inf, info.max, -info.max, 1e4, -1e4, 0.0,
                        -0.0, np.nan], dtype)
    out = special.copy()
    _cells.gate_activation(out, sigmoid)
    low = 0 if sigmoid else -1
    assert_array_equal(out[:6], [1, low, 1, low, 1, low])
    assert_array_equal(out[6:8], [0.5, 0.5] if sigmoid else [0, 0])
    assert np.isnan(out[8])
    if not ours:
        # libmvec (and libm for the loop's tail) round some values
        # differently in a vector and in the scalar tail: in float64 about
        # half of tanh's results and a fifth of sigmoid's differ in the last
        # bit. A layer always applies them to rows of the same length, so its
        # results are still the same for any batch and thread count.
        return
    # the same bits wherever a value lies (whole vectors or the array's
    # tail), on values of [-20, 20] (the start of x is tiny: tanh(x) = x)
    start = len(x) - 40001
    for n in (1, 5, 8, 13):
        part = x[start:start + n].copy()
        _cells.gate_activation(part, sigmoid)
        assert_array_equal(part, got[start:start + n])
    shifted = x[start + 3:start + 1000].copy()
    _cells.gate_activation(shifted, sigmoid)
    assert_array_equal(shifted, got[start + 3:start + 1000])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 5, 8, 16, 24, 37, 64])
def test_lstm_gate_activations_equal_the_separate_functions(hidden, dtype):
    """The LSTM row's four gates at once (interleaved, 16 or 8 units of each
    per step, where the hidden size allows): bitwise the sigmoid of the input,
    forget and output gates and the tanh of the candidate."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    x = (rng.standard_normal(4 * hidden) * 6).astype(dtype)
    got = x.copy()
    _cells.lstm_gate_activations(got)
    want = x.copy()
    h = hidden
    for lo, hi, sig in ((0, 2 * h, True), (2 * h, 3 * h, False), (3 * h, 4 * h, True)):
        part = want[lo:hi].copy()
        _cells.gate_activation(part, sig)
        want[lo:hi] = part
    assert_array_equal(got, want)
    with pytest.raises(ValueError, match="4 \\* hidden"):
        _cells.lstm_gate_activations(np.zeros(6, dtype))


def _assert_one_pass_is_the_loops(runs, hidden, dtype):
    """``runs[fused] = (whether the one pass ran, output arrays)``: the one
    pass ran exactly where it exists (float32, AVX2 or AVX-512, hidden a
    multiple of 8) and gave the loops' bits."""
    from pyx_rnn import _cells
    assert not runs[False][0]
    assert runs[True][0] == (_cells.VECTOR_WIDTH > 0 and dtype == np.float32
                             and hidden % 8 == 0)
    for one_pass, loops in zip(runs[True][1], runs[False][1]):
        assert_array_equal(one_pass, loops)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 3, 7])
@pytest.mark.parametrize("hidden", [1, 5, 8, 16, 24, 37, 64])
def test_lstm_cell_in_one_pass_equals_the_separate_loops(hidden, rows, dtype):
    """The LSTM step of some rows in one pass (float32, AVX2 or AVX-512,
    hidden a multiple of 8; blocks of units of several rows interleaved,
    with a remainder of any size): bitwise the gates, cell state, its tanh
    (kept for the backward pass) and hidden state of the separate loops,
    which follow the equations."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    g0 = (rng.standard_normal((rows, 4 * hidden)) * 4).astype(dtype)
    b = rng.standard_normal(4 * hidden).astype(dtype)
    c0, h0 = (rng.standard_normal((2, rows, hidden)) * 3).astype(dtype)
    runs = {}
    for fused in (True, False):
        g, c, h = g0.copy(), c0.copy(), h0.copy()
        c_out, tc_out, h_out = np.full((3, rows, hidden), np.nan, dtype)
        ran = _cells.lstm_cell_step(g, b, c, c_out, tc_out, h_out, h, fused)
        runs[fused] = ran, (g, c, c_out, tc_out, h_out, h)
    _assert_one_pass_is_the_loops(runs, hidden, dtype)
    g, c, c_out, tc_out, h_out, h = runs[True][1]
    assert_array_equal(c_out, c)
    assert_array_equal(h_out, h)
    # inference: the same states, and the one pass leaves g as it was
    g2, c2, h2 = g0.copy(), c0.copy(), h0.copy()
    ran = _cells.lstm_cell_step(g2, b, c2, c_out.copy(), tc_out.copy(),
                                h_out.copy(), h2, True, keep_gates=False)
    assert ran == runs[True][0]
    assert_array_equal(c2, c)
    assert_array_equal(h2, h)
    if ran:
        assert_array_equal(g2, g0)
    for row_c, row_tc in zip(c, tc_out):
        # row by row: float64's vector tanh and its scalar tail may differ
        tanh_c = row_c.copy()
        _cells.gate_activation(tanh_c, False)
        assert_array_equal(row_tc, tanh_c)
    # the equations, to float32's precision
    pre = (g0 + b).astype(np.float64).reshape(rows, 4, hidden)
    i, f, o = (1 / (1 + np.exp(-pre[:, k])) for k in (0, 1, 3))
    z = np.tanh(pre[:, 2])
    c_want = f * c0 + i * z
    assert_allclose(g, np.concatenate([i, f, z, o], axis=1), rtol=1e-6, atol=1e-7)
    assert_allclose(c, c_want, rtol=1e-5, atol=1e-6)
    assert_allclose(h, o * np.tanh(c_want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="4 \\* hidden"):
        _cells.lstm_cell_step(g0[:, 1:].copy(), b, c, c_out, tc_out, h_out, h, True)
    with pytest.raises(ValueError, match="rows of g"):
        _cells.lstm_cell_step(g0, b, c[1:], c_out, tc_out, h_out, h, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 5, 8, 16, 24, 37, 64])
def test_lstm_backward_step_in_one_pass_equals_the_separate_loops(hidden, dtype):
    """The backward step of an LSTM row in one pass (float32, AVX2 or
    AVX-512, hidden a multiple of 8): bitwise the gate gradients and the
    state gradients of the separate loops, which follow the chain rule."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    pre = rng.standard_normal((4, hidden)) * 3
    g = np.concatenate([1 / (1 + np.exp(-pre[0])), 1 / (1 + np.exp(-pre[1])),
                        np.tanh(pre[2]), 1 / (1 + np.exp(-pre[3]))]).astype(dtype)
    c_prev, c_t = (rng.standard_normal((2, hidden)) * 2).astype(dtype)
    tc = np.tanh(c_t).astype(dtype)
    dh0, dc0 = rng.standard_normal((2, hidden)).astype(dtype)
    runs = {}
    for fused in (True, False):
        dh, dc = dh0.copy(), dc0.copy()
        dg = np.full(4 * hidden, np.nan, dtype)
        ran = _cells.lstm_back_step(g, tc, c_prev, dh, dc, dg, fused)
        runs[fused] = ran, (dh, dc, dg)
    _assert_one_pass_is_the_loops(runs, hidden, dtype)
    dh, dc, dg = runs[True][1]
    # the chain rule, to float32's precision
    i, f, z, o = g.astype(np.float64).reshape(4, hidden)
    t = tc.astype(np.float64)
    dc_t = dc0 + dh0 * o * (1 - t * t)
    want = np.concatenate([dc_t * z * i * (1 - i), dc_t * c_prev * f * (1 - f),
                           dc_t * i * (1 - z * z), dh0 * t * o * (1 - o)])
    assert_allclose(dg, want, rtol=1e-5, atol=1e-6)
    assert_allclose(dc, dc_t * f, rtol=1e-5, atol=1e-6)
    assert_array_equal(dh, 0)
    with pytest.raises(ValueError, match="4 \\* hidden"):
        _cells.lstm_back_step(g[1:], tc, c_prev, dh, dc, dg, True)


def _sigmoid64(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 5, 8, 16, 24, 37, 64])
def test_gru_cell_in_one_pass_equals_the_separate_loops(hidden, dtype):
    """The GRU step of a row in one pass (reset after, float32, AVX2 or
    AVX-512, hidden a multiple of 8): bitwise the gates, the candidate's
    recurrent term and the new state of the separate loops, which follow
    PyTorch's equations."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    g0, b_ih, hh0, b_hh = (rng.standard_normal((4, 3 * hidden)) * 2).astype(dtype)
    h0 = rng.standard_normal(hidden).astype(dtype)
    runs = {}
    for fused in (True, False):
        g, hh, h = g0.copy(), hh0.copy(), h0.copy()
        aux, h_out = np.full((2, hidden), np.nan, dtype)
        ran = _cells.gru_cell_step(g, b_ih, hh, b_hh, aux, h_out, h, fused)
        runs[fused] = ran, (g, hh, aux, h_out, h)
    _assert_one_pass_is_the_loops(runs, hidden, dtype)
    g, hh, aux, h_out, h = runs[True][1]
    assert_array_equal(hh, hh0)
    assert_array_equal(h_out, h)
    # PyTorch's equations, to float32's precision
    x = (g0.astype(np.float64) + b_ih).reshape(3, hidden)
    rec = (hh0.astype(np.float64) + b_hh).reshape(3, hidden)
    r, z = _sigmoid64(x[0] + rec[0]), _sigmoid64(x[1] + rec[1])
    n = np.tanh(x[2] + r * rec[2])
    assert_allclose(g, np.concatenate([r, z, n]), rtol=1e-5, atol=1e-6)
    assert_allclose(aux, rec[2], rtol=1e-6, atol=1e-6)
    assert_allclose(h, (1 - z) * n + z * h0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 \\* hidden"):
        _cells.gru_cell_step(g0[1:], b_ih, hh, b_hh, aux, h_out, h, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hidden", [1, 5, 8, 16, 24, 37, 64])
def test_gru_backward_step_in_one_pass_equals_the_separate_loops(hidden, dtype):
    """The backward step of a GRU row in one pass (reset after, float32,
    AVX2 or AVX-512, hidden a multiple of 8): bitwise the gradients of the
    separate loops, which follow the chain rule."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(hidden)
    pre = rng.standard_normal((3, hidden)) * 3
    g = np.concatenate([_sigmoid64(pre[0]), _sigmoid64(pre[1]),
                        np.tanh(pre[2])]).astype(dtype)
    aux, h_prev, dh0 = (rng.standard_normal((3, hidden)) * 2).astype(dtype)
    runs = {}
    for fused in (True, False):
        dh = dh0.copy()
        dg, dgh = np.full((2, 3 * hidden), np.nan, dtype)
        ran = _cells.gru_back_step(g, aux, h_prev, dh, dg, dgh, fused)
        runs[fused] = ran, (dh, dg, dgh)
    _assert_one_pass_is_the_loops(runs, hidden, dtype)
    dh, dg, dgh = runs[True][1]
    # the chain rule, to float32's precision
    r, z, n = g.astype(np.float64).reshape(3, hidden)
    dg_n = dh0 * (1 - z) * (1 - n * n)
    dg_r = dg_n * aux * r * (1 - r)
    dg_z = dh0 * (h_prev - n) * z * (1 - z)
    assert_allclose(dg, np.concatenate([dg_r, dg_z, dg_n]), rtol=1e-5, atol=1e-6)
    assert_allclose(dgh, np.concatenate([dg_r, dg_z, dg_n * r]), rtol=1e-5,
                    atol=1e-6)
    assert_allclose(dh, dh0 * z, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="3 \\* hidden"):
        _cells.gru_back_step(g[1:], aux, h_prev, dh, dg, dgh, True)
