"""Tests of the engine driver ``pyx_rnn.network.Network`` and the optimisers.

1. Whole-network gradients against central finite differences (float64), for
   every cell, stack, direction, loss / output activation, and option.
2. Truncated BPTT: ``k2 >= T`` is full BPTT; ``k2 < T`` gives the truncated
   gradient of docs/engine.md, computed independently with the plain NumPy
   reference (``pyx_rnn.reference``) window by window; bidirectional refuses it.
3. Final states: carried between two halves of a sequence, they reproduce the
   whole sequence.
4. Gradient clipping by value and by global norm.
5. Reproducibility: same seed -> bitwise the same; thread count irrelevant.
6. Dropout semantics (and finite differences with fixed masks).
7. Optimisers: Adam as PyTorch, SGD (Nesterov) momentum as scikit-learn.
8. float32 against float64.
9. Arguments checked once per call by the network, for all its layers.
10. Input read in place (``SequenceInput``), and sequence-to-one inference
    from the top layer's final states: the bits of packed input and of the
    outputs kept at every step.
11. Repeated inference calls made ready (the inference plan): the bits of
    the general path; the parameters' current values; every input checked;
    the general path wherever a call differs.
12. Repeated training batches made ready (the training plan): the bits of
    the general path, on batches of one size and any lengths; every input
    checked; the general path wherever a call differs.
"""

import pickle

import numpy as np
import pytest
from _shared import numerical_gradient
from numpy.testing import assert_allclose, assert_array_equal

from pyx_rnn import _bookkeeping, _dense
from pyx_rnn import reference as ref
from pyx_rnn.layers import _take, default_block_rows, default_block_starts
from pyx_rnn.network import Network
from pyx_rnn.optim import SGD, Adam
from pyx_rnn.packing import Packing, SequenceInput, pack

CELLS = ("rnn", "jordan", "lstm", "gru")
N_IN = 3
LENGTHS = [6, 2, 5, 4]  # deliberately unsorted: the packing sorts them
FD_EPS = 1e-6
FD_TOL = 1e-6


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def make_net(cell, hidden=(4, 3), n_output=2, *, seed=0, dtype=np.float64,
             noise=0.1, **kw):
    """A network with its default initialisation, perturbed so that no
    parameter (peepholes, biases, layer-norm gains) sits at a special value."""
    net = Network(cell, N_IN, hidden, n_output, dtype=dtype, **kw)
    rng = np.random.default_rng(seed)
    net.init_weights(rng)
    net.params += (noise * rng.standard_normal(net.params.shape)).astype(dtype)
    return net


def make_batch(lengths, seed=1, dtype=np.float64, n_in=N_IN):
    rng = np.random.default_rng(seed)
    return pack([rng.standard_normal((n, n_in)) for n in lengths], dtype)


def make_targets(loss, n, n_out, rng, dtype=np.float64):
    if loss == "squared_error":
        return rng.standard_normal((n, n_out)).astype(dtype)
    if loss == "log_loss":
        return np.eye(n_out, dtype=dtype)[rng.integers(0, n_out, n)]
    # multilabel 0/1 targets, several ones per row allowed
    return rng.integers(0, 2, (n, n_out)).astype(dtype)


def n_targets(packing, return_sequences):
    return packing.n_rows if return_sequences else packing.n_sequences



def assert_fd(net, f, tol=FD_TOL):
    """``net.grads`` after ``f()`` against central finite differences of
    ``f()``, parameter block by parameter block."""
    before = net.params.copy()
    f()
    grad = net.grads.copy()
    num = numerical_gradient(f, net.params, FD_EPS)
    assert_array_equal(net.params, before)
    scale = np.abs(num).max()
    assert scale > 1e-6
    err = np.abs(grad - num) / scale
    worst = {}
    start = 0
    for name, shape in net.shapes.items():
        size = int(np.prod(shape))
        block = slice(start, start + size)
        start += size
        worst[name] = float(err[block].max())
        # every parameter influences the loss: a block that the forward pass
        # ignored would have a zero numerical gradient and pass vacuously
        assert np.abs(num[block]).max() > 1e-9, f"{name} has no effect on the loss"
    bad = {k: v for k, v in worst.items() if v > tol}
    assert not bad, f"relative error above {tol}: {bad}"


def flat_states(states, net):
    """The final states as a flat list of arrays."""
    if net.cell == "jordan":
        return list(states)
    out = []
    for layer in states:
        for h, c in layer:
            out.append(h)
            if c is not None and c.size:
                out.append(c)
    return out


def assert_states_close(a, b, net, rtol=1e-12, atol=1e-14):
    fa, fb = flat_states(a, net), flat_states(b, net)
    assert len(fa) == len(fb) and len(fa) > 0
    for x, y in zip(fa, fb):
        assert_allclose(x, y, rtol=rtol, atol=atol)


def initial_state_for(net, n_sequences, seed=5):
    """A non-zero initial state in the layout ``forward`` returns: the final
    state of a random prefix batch with the same number of sequences."""
    X, pk = make_batch([3] * n_sequences, seed=seed, dtype=net.dtype)
    _, _, states = net.forward(X, pk)
    for a in flat_states(states, net):
        assert np.abs(a).max() > 0
    return states


# ---------------------------------------------------------------------------
# 1. whole-network finite differences
# ---------------------------------------------------------------------------

def _fd_cases():
    cases = []

    def add(id_, **kw):
        cases.append(pytest.param(kw, id=id_))

    for cell in CELLS:
        for rs in (False, True):
            add(f"{cell}-stacked-{'seq' if rs else 'last'}", cell=cell, rs=rs)
    for cell in ("rnn", "lstm", "gru"):
        for rs in (False, True):
            add(f"{cell}-bidirectional-{'seq' if rs else 'last'}", cell=cell,
                rs=rs, net_kw=dict(bidirectional=True))
    losses = [
        ("squared_error", "tanh", True),
        ("squared_error", "sigmoid", False),
        ("squared_error", "softmax", True),
        ("log_loss", "softmax", False),
        ("log_loss", "softmax", True),
        ("binary_log_loss", "sigmoid", False),
        ("binary_log_loss", "sigmoid", True),
    ]
    for cell in CELLS:
        for loss, oa, rs in losses:
            add(f"{cell}-{loss}-{oa}-{'seq' if rs else 'last'}", cell=cell,
                rs=rs, loss=loss, n_output=3, net_kw=dict(output_activation=oa))
    for cell in CELLS:
        add(f"{cell}-layer_norm", cell=cell, rs=True, net_kw=dict(layer_norm=True))
        add(f"{cell}-initial_state", cell=cell, rs=True, init_state=True)
        add(f"{cell}-one-layer", cell=cell, hidden=(5,), rs=False)
        add(f"{cell}-no-weight-no-alpha", cell=cell, rs=True, sw=False, alpha=0.0)
        add(f"{cell}-equal-lengths", cell=cell, lengths=[5, 5, 5])
        add(f"{cell}-length-one", cell=cell, rs=True, lengths=[1, 4, 1, 3])
    add("lstm-peephole", cell="lstm", net_kw=dict(peephole=True))
    add("lstm-peephole-layer_norm-seq", cell="lstm", rs=True,
        net_kw=dict(peephole=True, layer_norm=True))
    add("lstm-bidirectional-peephole-layer_norm", cell="lstm",
        net_kw=dict(peephole=True, layer_norm=True, bidirectional=True))
    add("gru-reset_before", cell="gru", net_kw=dict(reset_after=False))
    add("gru-reset_before-bidirectional-layer_norm-seq", cell="gru", rs=True,
        net_kw=dict(reset_after=False, bidirectional=True, layer_norm=True))
    add("rnn-relu-seq", cell="rnn", rs=True, net_kw=dict(activation="relu"))
    add("jordan-relu-seq", cell="jordan", rs=True, net_kw=dict(activation="relu"))
    add("jordan-three-layers-layer_norm", cell="jordan", hidden=(3, 4, 2),
        net_kw=dict(layer_norm=True))
    add("jordan-three-layers-seq-softmax", cell="jordan", hidden=(3, 4, 2),
        rs=True, loss="log_loss", n_output=3,
        net_kw=dict(output_activation="softmax"))
    add("gru-three-layers-bidirectional", cell="gru", hidden=(2, 3, 2),
        net_kw=dict(bidirectional=True))
    return cases


@pytest.mark.parametrize("case", _fd_cases())
def test_finite_differences(case):
    cell = case["cell"]
    rs = case.get("rs", False)
    loss = case.get("loss", "squared_error")
    n_out = case.get("n_output", 2)
    net = make_net(cell, case.get("hidden", (4, 3)), n_out, **case.get("net_kw", {}))
    X, pk = make_batch(case.get("lengths", LENGTHS))
    rng = np.random.default_rng(2)
    T = make_targets(loss, n_targets(pk, rs), n_out, rng)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences) if case.get("sw", True) else None
    alpha = case.get("alpha", 0.01)
    init = initial_state_for(net, pk.n_sequences) if case.get("init_state") else None

    def f():
        value, _ = net.loss_gradient(X, pk, T, loss, sample_weight=sw,
                                     return_sequences=rs, alpha=alpha,
                                     initial_state=init)
        return value

    assert_fd(net, f)


def test_alpha_penalty_value():
    """The L2 term is alpha / 2 * ||W||^2 / total weight on weight matrices
    only (not biases, not layer-norm or peephole vectors)."""
    net = make_net("lstm", peephole=True, layer_norm=True)
    X, pk = make_batch(LENGTHS)
    rng = np.random.default_rng(3)
    T = make_targets("squared_error", pk.n_sequences, 2, rng)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences)
    l0, _ = net.loss_gradient(X, pk, T, "squared_error", sample_weight=sw)
    g0 = net.grads.copy()
    alpha = 0.3
    l1, _ = net.loss_gradient(X, pk, T, "squared_error", sample_weight=sw, alpha=alpha)
    g1 = net.grads.copy()
    sq = sum(float(np.sum(w * w)) for n, w in net.weights.items()
             if n.startswith("weight_") or n == "output.weight")
    assert_allclose(l1 - l0, 0.5 * alpha * sq / sw.sum(), rtol=1e-12)
    expected = np.zeros_like(g0)
    views = {}
    start = 0
    for name, shape in net.shapes.items():
        size = int(np.prod(shape))
        views[name] = expected[start:start + size].reshape(shape)
        start += size
        if name.startswith("weight_") or name == "output.weight":
            views[name][...] = alpha / sw.sum() * net.weights[name]
    assert_allclose(g1 - g0, expected, rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------
# 2. truncated BPTT
# ---------------------------------------------------------------------------

TB_LENGTHS = [9, 4, 7, 2]


def _tbptt_full_cases():
    cases = []
    for cell in CELLS:
        for rs in (False, True):
            id_ = f"{cell}-{'seq' if rs else 'last'}"
            cases.append(pytest.param(cell, rs, {}, False, id=id_))
    cases += [
        pytest.param("lstm", True, dict(peephole=True, layer_norm=True), False,
                     id="lstm-peephole-layer_norm"),
        pytest.param("gru", True, dict(reset_after=False), False,
                     id="gru-reset_before"),
        pytest.param("jordan", True, dict(layer_norm=True), True,
                     id="jordan-initial_state"),
        pytest.param("lstm", False, {}, True, id="lstm-initial_state"),
        pytest.param("rnn", True, {}, True, id="rnn-initial_state"),
    ]
    return cases


@pytest.mark.parametrize("cell, rs, net_kw, use_init", _tbptt_full_cases())
def test_tbptt_long_k2_is_full_bptt(cell, rs, net_kw, use_init):
    net = make_net(cell, (4, 3), 2, **net_kw)
    X, pk = make_batch(TB_LENGTHS)
    rng = np.random.default_rng(4)
    T = make_targets("squared_error", n_targets(pk, rs), 2, rng)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences)
    init = initial_state_for(net, pk.n_sequences) if use_init else None
    kw = dict(sample_weight=sw, return_sequences=rs, alpha=0.01, initial_state=init)
    l0, s0 = net.loss_gradient(X, pk, T, "squared_error", **kw)
    g0 = net.grads.copy()
    n_steps = pk.n_steps
    for k1 in range(1, n_steps + 2):
        for k2 in (n_steps, n_steps + 3):
            if k1 > k2:
                continue
            l1, s1 = net.loss_gradient(X, pk, T, "squared_error", tbptt=(k1, k2), **kw)
            assert abs(l1 - l0) <= 1e-12 * max(1.0, abs(l0)), (k1, k2)
            assert_allclose(net.grads, g0, rtol=0, atol=1e-12, err_msg=str((k1, k2)))
            assert_states_close(s1, s0, net)


def _layer_params(net, k):
    sfx = f"_l{k}"
    return {name[: -len(sfx)]: net.weights[name] for name in net.shapes
            if name.endswith(sfx)}


def _ref_forward(net, k, x, h0, c0):
    p = _layer_params(net, k)
    if net.cell == "rnn":
        H, cache = ref.rnn_forward(x, p, h0, activation=net.activation,
                                   layer_norm=net.layer_norm)
        return H, None, cache
    if net.cell == "lstm":
        return ref.lstm_forward(x, p, h0, c0, layer_norm=net.layer_norm)
    H, cache = ref.gru_forward(x, p, h0, reset_after=net.reset_after,
                               layer_norm=net.layer_norm)
    return H, None, cache


def _ref_backward(net, dH, cache):
    if net.cell == "rnn":
        return ref.rnn_backward(dH, None, cache)
    if net.cell == "lstm":
        return ref.lstm_backward(dH, None, None, cache)
    return ref.gru_backward(dH, None, cache)


def reference_truncated(net, x, t, k1, k2):
    """Loss and truncated-BPTT gradient (docs/engine.md) of ONE sequence with
    return_sequences, squared error and identity output, from the plain NumPy
    reference: for every window [s, e) of k1 steps (the last one may be
    shorter), the window's loss terms are back-propagated through steps
    max(0, e - k2) .. e - 1 only, starting from the (constant) states before
    step e - k2."""
    n_steps = len(x)
    L = len(net.hidden_sizes)
    # row weight / total weight for one sequence, averaged over the outputs
    w = 1.0 / n_steps / net.n_output
    expected = {name: np.zeros(shape) for name, shape in net.shapes.items()}
    windows = [(s, min(s + k1, n_steps)) for s in range(0, n_steps, k1)]

    def add(grads, sfx):
        for name, g in grads.items():
            if name not in ("x", "h0", "c0"):
                expected[name + sfx] += g

    if net.cell == "jordan":
        layers = [_layer_params(net, k) for k in range(L)]
        output = {"weight": net.weights["output.weight"],
                  "bias": net.weights["output.bias"]}
        opts = dict(activation=net.activation, output_activation=net.output_activation,
                    layer_norm=net.layer_norm)
        Y, Hs, _ = ref.jordan_forward(x, layers, output, **opts)
        dY_full = w * (Y - t)
        for s, e in windows:
            a = max(0, e - k2)
            f0 = None
            if a > 0:
                f0 = [Hs[k + 1][a - 1] for k in range(L - 1)] + [Y[a - 1]]
            Yw, _, cache = ref.jordan_forward(x[a:e], layers, output, f0=f0, **opts)
            assert_allclose(Yw, Y[a:e], rtol=1e-13, atol=1e-15)
            dY = np.zeros_like(Yw)
            dY[s - a:] = dY_full[s:e]
            layer_grads, out_grads, _, _ = ref.jordan_backward(dY, cache)
            for k in range(L):
                add(layer_grads[k], f"_l{k}")
            expected["output.weight"] += out_grads["weight"]
            expected["output.bias"] += out_grads["bias"]
    else:
        # full forward pass: the states every window starts from
        states, inp = [], x
        for k in range(L):
            H, C, _ = _ref_forward(net, k, inp, None, None)
            states.append((H, C))
            inp = H
        W_out = net.weights["output.weight"]
        Y = inp @ W_out.T + net.weights["output.bias"]
        dZ = w * (Y - t)
        # the output layer is outside the recurrence: its gradient is full
        expected["output.weight"] += dZ.T @ inp
        expected["output.bias"] += dZ.sum(axis=0)
        for s, e in windows:
            a = max(0, e - k2)
            inp, caches = x[a:e], []
            for k in range(L):
                H, C = states[k]
                h0 = None if a == 0 else H[a - 1]
                c0 = None if a == 0 or C is None else C[a - 1]
                Hw, _, cache = _ref_forward(net, k, inp, h0, c0)
                assert_allclose(Hw, H[a:e], rtol=1e-13, atol=1e-15)
                caches.append(cache)
                inp = Hw
            dH = np.zeros_like(inp)
            dH[s - a:] = dZ[s:e] @ W_out
            for k in range(L - 1, -1, -1):
                grads = _ref_backward(net, dH, caches[k])
                add(grads, f"_l{k}")
                dH = grads["x"]
    value = 0.5 * w * float(np.sum((Y - t) ** 2))
    return value, expected


@pytest.mark.parametrize("k1, k2", [(2, 2), (2, 3), (3, 5), (1, 4), (4, 4), (5, 7)])
@pytest.mark.parametrize("cell, hidden, net_kw", [
    pytest.param("rnn", (4,), {}, id="rnn"),
    pytest.param("lstm", (4,), {}, id="lstm"),
    pytest.param("gru", (4,), {}, id="gru"),
    pytest.param("jordan", (4,), {}, id="jordan"),
    pytest.param("rnn", (4, 3), {}, id="rnn-stacked"),
    pytest.param("lstm", (3, 4), dict(peephole=True, layer_norm=True),
                 id="lstm-stacked-peephole-layer_norm"),
    pytest.param("gru", (4, 3), dict(reset_after=False), id="gru-stacked-reset_before"),
    pytest.param("jordan", (4, 3), {}, id="jordan-stacked"),
])
def test_tbptt_truncated_gradient(cell, hidden, net_kw, k1, k2):
    n_steps = 9
    net = make_net(cell, hidden, 2, noise=0.3, **net_kw)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n_steps, N_IN))
    t = rng.standard_normal((n_steps, 2))
    X, pk = pack([x], np.float64)
    sw = np.array([1.7])

    value, expected = reference_truncated(net, x, t, k1, k2)
    l_full, _ = net.loss_gradient(X, pk, t, "squared_error", sample_weight=sw,
                                  return_sequences=True)
    g_full = net.grads.copy()
    l_tr, _ = net.loss_gradient(X, pk, t, "squared_error", sample_weight=sw,
                                return_sequences=True, tbptt=(k1, k2))
    # the forward pass is not truncated: the loss is the full one
    assert_allclose(l_tr, l_full, rtol=1e-13)
    assert_allclose(l_tr, value, rtol=1e-12)
    for name in net.shapes:
        assert_allclose(net.grad_views[name], expected[name], rtol=1e-10, atol=1e-12,
                        err_msg=name)
    # the truncation matters here: the truncated gradient is not the full one
    assert np.abs(net.grads - g_full).max() > 1e-6


def _batch_vs_single_sequences(cell, rs, k1, k2, lengths):
    """Truncated-BPTT loss and gradient of a batch of variable-length
    sequences, and the weighted sum of those of each sequence run alone."""
    net = make_net(cell, (4, 3), 2, noise=0.2)
    rng = np.random.default_rng(7)
    seqs = [rng.standard_normal((n, N_IN)) for n in lengths]
    targets = [rng.standard_normal((n if rs else 1, 2)) for n in lengths]
    sw = rng.uniform(0.5, 2.0, len(lengths))

    X, pk = pack(seqs, np.float64)
    if rs:
        T = np.concatenate(targets)[pk.flat_index()]
    else:
        T = np.concatenate(targets)[pk.order]
    value, _ = net.loss_gradient(X, pk, T, "squared_error", sample_weight=sw[pk.order],
                                 return_sequences=rs, tbptt=(k1, k2))
    g = net.grads.copy()

    total = sum(w * (n if rs else 1) for w, n in zip(sw, lengths))
    exp_value, exp_g = 0.0, np.zeros_like(g)
    for x, t, w, n in zip(seqs, targets, sw, lengths):
        Xb, pkb = pack([x], np.float64)
        v, _ = net.loss_gradient(Xb, pkb, t, "squared_error", return_sequences=rs,
                                 tbptt=(k1, k2))
        share = w * (n if rs else 1) / total
        exp_value += share * v
        exp_g += share * net.grads
    return value, g, exp_value, exp_g


@pytest.mark.parametrize("k1, k2", [(2, 2), (2, 3), (3, 5), (1, 4)])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_batch_is_weighted_sum_of_sequences(cell, rs, k1, k2):
    """Variable lengths under truncated BPTT: every shorter sequence ends at a
    window boundary (a multiple of k1) or inside the first window, so each
    sequence sees the same windows alone as in the batch; the batch gradient
    is then the weighted sum of the single-sequence truncated gradients."""
    lengths = [9] + [n for n in range(8, 0, -1) if n % k1 == 0 or n <= k1]
    value, g, exp_value, exp_g = _batch_vs_single_sequences(cell, rs, k1, k2, lengths)
    assert_allclose(value, exp_value, rtol=1e-12)
    assert_allclose(g, exp_g, rtol=1e-10, atol=1e-13)


# Truncation points depend only on the sequence's own windows (docs/engine.md),
# so a sequence that ends inside a window gets the gradient it gets alone.
@pytest.mark.parametrize("k1, k2", [(2, 2), (2, 3), (3, 5)])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", CELLS)
def test_tbptt_sequence_ending_mid_window(cell, rs, k1, k2):
    value, g, exp_value, exp_g = _batch_vs_single_sequences(cell, rs, k1, k2, [9, 5, 7])
    assert_allclose(value, exp_value, rtol=1e-12)  # the loss itself agrees
    assert_allclose(g, exp_g, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("tbptt", [(2, 2), (2, 3), (1, 4), (3, 100)])
def test_tbptt_bidirectional_raises(cell, tbptt):
    net = make_net(cell, (3,), 2, bidirectional=True)
    X, pk = make_batch(TB_LENGTHS)
    T = np.zeros((pk.n_sequences, 2))
    with pytest.raises(ValueError, match="bidirectional"):
        net.loss_gradient(X, pk, T, "squared_error", tbptt=tbptt)


def test_jordan_bidirectional_raises():
    with pytest.raises(ValueError):
        Network("jordan", 3, (4,), 2, bidirectional=True)


# ---------------------------------------------------------------------------
# 3. final states carried
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n_seq", [1, 3])
@pytest.mark.parametrize("cell, net_kw", [
    pytest.param("lstm", {}, id="lstm"),
    pytest.param("lstm", dict(peephole=True, layer_norm=True), id="lstm-peephole-ln"),
    pytest.param("gru", {}, id="gru"),
    pytest.param("jordan", {}, id="jordan"),
    pytest.param("jordan", dict(output_activation="tanh"), id="jordan-tanh"),
    pytest.param("rnn", {}, id="rnn"),
])
def test_final_state_carried(cell, net_kw, n_seq):
    n_steps, split = 8, 5
    net = make_net(cell, (4, 3), 2, **net_kw)
    rng = np.random.default_rng(8)
    seqs = [rng.standard_normal((n_steps, N_IN)) for _ in range(n_seq)]
    X, pk = pack(seqs, np.float64)
    X1, pk1 = pack([s[:split] for s in seqs], np.float64)
    X2, pk2 = pack([s[split:] for s in seqs], np.float64)
    _, Y_all, s_all = net.forward(X, pk, return_sequences=True)

    # states returned by loss_gradient (full and truncated BPTT) and forward
    T1 = rng.standard_normal((pk1.n_rows, 2))
    _, s_fwd = net.forward(X1, pk1)[1:]
    _, s_lg = net.loss_gradient(X1, pk1, T1, "squared_error", return_sequences=True)
    _, s_tb = net.loss_gradient(X1, pk1, T1, "squared_error", return_sequences=True,
                                tbptt=(2, 3))
    assert_states_close(s_lg, s_fwd, net)
    assert_states_close(s_tb, s_fwd, net)
    if cell == "lstm":
        assert len(flat_states(s_lg, net)) == 2 * len(net.hidden_sizes)  # h and c

    for state in (s_lg, s_tb):
        _, Y2, s2 = net.forward(X2, pk2, return_sequences=True, initial_state=state)
        # equal lengths: packed row t * n_seq + b holds step t of sequence b
        assert_allclose(Y2, Y_all[split * n_seq:], rtol=1e-12, atol=1e-14)
        assert_states_close(s2, s_all, net)
    # starting the second half from zeros instead gives something else
    _, Y0, _ = net.forward(X2, pk2, return_sequences=True)
    assert np.abs(Y0 - Y_all[split * n_seq:]).max() > 1e-6


def test_last_rows_made_once_and_read_only():
    """``Packing.last_rows`` (the rows the output layer reads): the row of
    each sequence's last step, kept from the first call, read-only."""
    pk = Packing.from_lengths([3, 5, 1, 5, 2])
    rows = pk.last_rows()
    want = [pk.offsets[n - 1] + b for b, n in enumerate(pk.lengths)]
    assert_array_equal(rows, want)
    assert pk.last_rows() is rows
    with pytest.raises(ValueError, match="read-only"):
        rows[0] = 0


@pytest.mark.parametrize("cell", CELLS)
def test_final_states_variable_lengths(cell):
    """Each sequence's final state is the one after its own last step, also
    when truncated BPTT runs window by window."""
    net = make_net(cell, (4, 3), 2)
    X, pk = make_batch(TB_LENGTHS)
    T = np.random.default_rng(9).standard_normal((pk.n_rows, 2))
    _, Y_all, s_fwd = net.forward(X, pk, return_sequences=True)
    _, Y_last, _ = net.forward(X, pk)
    assert_allclose(Y_last, Y_all[pk.last_rows()], rtol=1e-13, atol=1e-15)
    for tbptt in (None, (2, 2), (3, 4), (1, 1)):
        _, s = net.loss_gradient(X, pk, T, "squared_error", return_sequences=True,
                                 tbptt=tbptt)
        assert_states_close(s, s_fwd, net)
    # and each sequence alone ends in the same state
    seqs_rng = np.random.default_rng(1)
    seqs = [seqs_rng.standard_normal((n, N_IN)) for n in TB_LENGTHS]
    for b in range(pk.n_sequences):
        Xb, pkb = pack([seqs[pk.order[b]]], np.float64)
        _, _, sb = net.forward(Xb, pkb)
        for x, y in zip(flat_states(sb, net), flat_states(s_fwd, net)):
            assert_allclose(x[0], y[b], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# 4. gradient clipping
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_buffers_reused_from_batch_to_batch_hold_nothing_over(cell, rs):
    """A network reuses its buffers from batch to batch (the layers' and the
    output layer's, whose gradient at the top is zero but for the rows it
    reads): batches of the same number of rows whose sequences end at other
    rows, in turn, give bitwise the gradients of a network that sees each
    batch first."""
    rng = np.random.default_rng(66)
    batches = []
    for lengths in ([5, 3, 4], [4, 4, 4], [2, 6, 4], [5, 3, 4]):
        data, pk = pack([rng.standard_normal((n, 2)) for n in lengths],
                        np.float32)
        y = rng.standard_normal((pk.n_rows if rs else 3, 1)).astype(np.float32)
        batches.append((data, pk, y))
    net = Network(cell, 2, (5, 4), 1, dtype=np.float32)
    net.init_weights(np.random.default_rng(0))
    for data, pk, y in batches:
        fresh = Network(cell, 2, (5, 4), 1, dtype=np.float32)
        fresh.params[:] = net.params
        got = net.loss_gradient(data, pk, y, "squared_error",
                                return_sequences=rs, n_threads=2)
        want = fresh.loss_gradient(data, pk, y, "squared_error",
                                   return_sequences=rs, n_threads=2)
        assert got[0] == want[0]
        assert_array_equal(net.grads, fresh.grads, strict=True)


def _net_with_grads(seed, scale=1.0):
    net = make_net("gru", (4, 3), 2)
    net.grads[:] = scale * np.random.default_rng(seed).standard_normal(net.grads.shape)
    return net


@pytest.mark.parametrize("clip_norm", [0.1, 1.0, 3.0])
def test_clip_norm_above(clip_norm):
    net = _net_with_grads(0, scale=2.0)
    g = net.grads.copy()
    norm = np.linalg.norm(g)
    assert norm > clip_norm
    grads_obj = net.grads
    returned = net.clip_gradients(clip_norm=clip_norm)
    assert net.grads is grads_obj  # in place: the views still point into it
    assert_allclose(returned, norm, rtol=1e-13)
    new = net.grads
    assert np.linalg.norm(new) <= clip_norm * (1 + 1e-12)
    assert_allclose(np.linalg.norm(new), clip_norm, rtol=1e-12)
    cosine = new @ g / (np.linalg.norm(new) * norm)
    assert_allclose(cosine, 1.0, rtol=1e-13)
    assert_allclose(new, g * clip_norm / norm, rtol=1e-13)
    assert_array_equal(net.grad_views["output.bias"], new[-2:])


def test_clip_norm_just_above():
    net = _net_with_grads(4)
    g = net.grads.copy()
    norm = np.linalg.norm(g)
    c = 0.99 * norm
    assert_allclose(net.clip_gradients(clip_norm=c), norm, rtol=1e-13)
    assert_allclose(net.grads, g * 0.99, rtol=1e-13)


def test_clip_norm_below_does_nothing():
    net = _net_with_grads(1, scale=0.01)
    g = net.grads.copy()
    norm = np.linalg.norm(g)
    returned = net.clip_gradients(clip_norm=norm * 1.01)
    assert_allclose(returned, norm, rtol=1e-13)
    assert_array_equal(net.grads, g)
    returned = net.clip_gradients()  # nothing asked: nothing done
    assert_allclose(returned, norm, rtol=1e-13)
    assert_array_equal(net.grads, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_value(dtype):
    net = make_net("lstm", (4, 3), 2, dtype=dtype)
    net.grads[:] = 2 * np.random.default_rng(2).standard_normal(net.grads.shape)
    g = net.grads.copy()
    v = 0.7
    inside = np.abs(g) <= v
    assert inside.any() and (~inside).any()
    net.clip_gradients(clip_value=v)
    new = net.grads
    assert new.dtype == dtype
    assert np.all(np.abs(new) <= v)
    assert_array_equal(new[inside], g[inside])
    assert_array_equal(new[~inside], np.sign(g[~inside]) * dtype(v))


def test_clip_value_then_norm():
    net = _net_with_grads(3, scale=2.0)
    g = net.grads.copy()
    v, c = 0.5, 1.0
    clipped = np.clip(g, -v, v)
    cnorm = np.linalg.norm(clipped)
    assert cnorm > c  # both act
    returned = net.clip_gradients(clip_norm=c, clip_value=v)
    # the returned norm is the one before clipping by norm, i.e. after value
    assert_allclose(returned, cnorm, rtol=1e-13)
    assert_allclose(net.grads, clipped * (c / cnorm), rtol=1e-13)
    assert_allclose(np.linalg.norm(net.grads), c, rtol=1e-12)
    # the other order would give something else
    other = g * (c / np.linalg.norm(g))
    other = np.clip(other, -v, v)
    assert np.abs(other - net.grads).max() > 1e-3


# ---------------------------------------------------------------------------
# 5. reproducibility
# ---------------------------------------------------------------------------

REPRO_CASES = [
    pytest.param("rnn", False, id="rnn"),
    pytest.param("rnn", True, id="rnn-bidirectional"),
    pytest.param("lstm", False, id="lstm"),
    pytest.param("lstm", True, id="lstm-bidirectional"),
    pytest.param("gru", False, id="gru"),
    pytest.param("gru", True, id="gru-bidirectional"),
    pytest.param("jordan", False, id="jordan"),
]


def _repro_problem(cell, bidirectional, dtype, n_seq=12):
    net = make_net(cell, (5, 4), 3, dtype=dtype, bidirectional=bidirectional,
                   output_activation="softmax")
    rng = np.random.default_rng(10)
    lengths = rng.integers(1, 9, n_seq)
    X, pk = make_batch(lengths, seed=11, dtype=dtype)
    T = make_targets("log_loss", pk.n_rows, 3, rng, dtype)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences).astype(dtype)
    return net, X, pk, T, sw


def _run(net, X, pk, T, sw, seed, **kw):
    rng = None if seed is None else np.random.default_rng(seed)
    opts = dict(dropout=0.3, recurrent_dropout=0.3)
    opts.update(kw)
    value, states = net.loss_gradient(X, pk, T, "log_loss", sample_weight=sw,
                                      return_sequences=True, rng=rng, **opts)
    return value, net.grads.copy(), states


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, bidirectional", REPRO_CASES)
def test_same_seed_same_result(cell, bidirectional, dtype):
    net, X, pk, T, sw = _repro_problem(cell, bidirectional, dtype)
    l1, g1, _ = _run(net, X, pk, T, sw, 123)
    l2, g2, _ = _run(net, X, pk, T, sw, 123)
    assert l1 == l2
    assert_array_equal(g1, g2)
    assert g1.dtype == dtype
    l3, g3, _ = _run(net, X, pk, T, sw, 124)
    assert l3 != l1
    assert np.abs(g3 - g1).max() > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cell, bidirectional, tbptt",
    [pytest.param(*p.values, None, id=p.id) for p in REPRO_CASES]
    + [pytest.param(c, False, (3, 4), id=f"{c}-tbptt") for c in CELLS])
def test_thread_count_does_not_change_results(cell, bidirectional, tbptt, dtype):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    net, X, pk, T, sw = _repro_problem(cell, bidirectional, dtype, n_seq=40)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        r1 = _run(net, X, pk, T, sw, 5, n_threads=1, block_rows=8, tbptt=tbptt)
        r2 = _run(net, X, pk, T, sw, 5, n_threads=2, block_rows=8, tbptt=tbptt)
        f1 = net.forward(X, pk, return_sequences=True, n_threads=1, block_rows=8)
        f2 = net.forward(X, pk, return_sequences=True, n_threads=2, block_rows=8)
    assert r1[0] == r2[0]
    assert_array_equal(r1[1], r2[1])
    for a, b in zip(flat_states(r1[2], net), flat_states(r2[2], net)):
        assert_array_equal(a, b)
    assert_array_equal(f1[1], f2[1])
    for a, b in zip(flat_states(f1[2], net), flat_states(f2[2], net)):
        assert_array_equal(a, b)


def test_default_block_size_follows_the_packing():
    # two blocks up to 128 sequences, of 16 rows at least and 64 at most,
    # whether lengths differ or not (those that differ are then cut by
    # their steps: default_block_starts); for Jordan networks (not cut by
    # steps), lengths that differ: a quarter of the batch, 16 to 64 rows
    def rows(lengths, cut_by_steps=True):
        bs = Packing.from_lengths(lengths).batch_sizes
        return default_block_rows(bs, cut_by_steps)

    for n, want, jordan in [(10, 16, 16), (40, 20, 16), (64, 32, 16),
                            (128, 64, 32), (200, 64, 50), (300, 64, 64)]:
        assert rows(np.full(n, 7)) == want == rows(np.full(n, 7), False), n
        assert rows(np.arange(n) % 9 + 1) == want, n
        assert rows(np.arange(n) % 9 + 1, False) == jordan, n
    # one sequence shorter than the others: cut by steps
    bs = Packing.from_lengths(np.r_[np.full(63, 9), 8]).batch_sizes
    assert_array_equal(default_block_starts(bs, 32), [0, 32, 64])
    assert default_block_starts(Packing.from_lengths(np.full(64, 9)).batch_sizes,
                                32).size == 0


@pytest.mark.parametrize("cell", CELLS)
def test_default_blocks_of_variable_lengths_do_not_change_with_threads(cell):
    """Variable lengths: the default cut (blocks of about as many steps each,
    ``default_block_starts``) gives the same bits on 1 and 2 threads. The
    loss and states are bitwise those of blocks of 32 consecutive sequences
    (each row's sums do not depend on its block), the gradients equal them
    to within rounding (each block's partial sums group other rows)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    net, X, pk, T, sw = _repro_problem(cell, False, np.float32, n_seq=64)
    assert pk.batch_sizes[-1] < pk.batch_sizes[0]        # lengths differ
    starts = default_block_starts(pk.batch_sizes, 32)
    assert default_block_rows(pk.batch_sizes) == 32
    assert len(starts) == 3 and starts[1] < 32
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        runs = [_run(net, X, pk, T, sw, 5, **kw) for kw in (
            dict(n_threads=1), dict(n_threads=2),
            dict(n_threads=2, block_rows=32))]          # the default count
    for r in runs[1:]:
        assert r[0] == runs[0][0]
        for a, b in zip(flat_states(r[2], net), flat_states(runs[0][2], net)):
            assert_array_equal(a, b)
    assert_array_equal(runs[1][1], runs[0][1])
    assert_allclose(runs[2][1], runs[0][1], rtol=1e-5, atol=1e-7)
    assert np.abs(runs[0][1]).max() > 0


def test_default_block_starts_share_out_the_steps():
    """The default cut of variable-length batches: ``ceil(B / block_rows)``
    blocks of at least one sequence each, in order, whose steps are as near
    an equal share as whole sequences allow; equal lengths keep the blocks
    of ``block_rows`` (no cut)."""
    rng = np.random.default_rng(4)
    for B, low, high, br in ((32, 10, 50, 16), (64, 10, 100, 16),
                             (128, 10, 100, 32), (33, 1, 3, 16), (3, 1, 40, 1),
                             (300, 1, 100, 64)):
        pk = Packing.from_lengths(rng.integers(low, high + 1, B))
        starts = default_block_starts(pk.batch_sizes, br)
        n_blocks = -(-B // br)
        assert starts.dtype == np.intp and len(starts) == n_blocks + 1
        assert starts[0] == 0 and starts[-1] == B and (np.diff(starts) > 0).all()
        if n_blocks == B:      # a sequence a block: no choice
            assert_array_equal(starts, np.arange(B + 1))
            continue
        before = np.concatenate(([0], np.cumsum(pk.lengths)))  # longest first
        share = before[-1] * np.arange(1, n_blocks) / n_blocks
        # each cut is the whole sequence nearest its share
        for cut, want in zip(starts[1:-1], share):
            assert abs(before[cut] - want) <= np.abs(before - want).min() + 1e-9
    # the first half of a batch of 32 (10 to 50 steps) holds more than half
    # the steps: its first block holds fewer sequences
    pk = Packing.from_lengths(np.random.default_rng(0).integers(10, 51, 32))
    _, cut, _ = default_block_starts(pk.batch_sizes, 16)
    assert abs(pk.lengths[:cut].sum() - pk.lengths[cut:].sum()) <= pk.lengths.max()
    assert pk.lengths[:16].sum() > 1.2 * pk.lengths[16:].sum()
    assert default_block_starts(Packing.from_lengths(np.full(40, 7)).batch_sizes,
                                16).size == 0
    # the kernel that cuts: not more blocks than sequences
    from pyx_rnn import _cells
    with pytest.raises(ValueError, match="32 sequences cannot fill 33 blocks"):
        _cells.share_out_steps(pk.batch_sizes, np.empty(34, np.intp))


def test_a_pool_buffer_serves_smaller_requests():
    pool = {}
    a = _take(pool, "G", (10, 8), np.float32)
    a.fill(1)
    b = _take(pool, "G", (6, 8), np.float32, zero=True)       # fewer rows
    assert b.shape == (6, 8) and b.flags.c_contiguous and not b.any()
    assert np.shares_memory(a, b) and b.ctypes.data % 64 == 0
    c = _take(pool, "G", (12, 8), np.float32)                # more: new
    assert c.shape == (12, 8) and not np.shares_memory(a, c)
    assert not np.shares_memory(c, _take(pool, "G", (2, 8), np.float64))


@pytest.mark.parametrize("cell", CELLS)
def test_batches_of_other_sizes_in_turn_give_fresh_results(cell):
    # variable-length batches: each call reuses the start of the buffers
    # that a larger batch left behind, and batches of as many sequences
    # (0 and 3: 23 and 9 rows) one forward and one backward plan; nothing
    # of it may leak into results
    batches = [make_batch(lengths, seed=s) for s, lengths in
               enumerate([[7, 3, 5, 6, 2], [2, 4, 1], [8, 8, 1, 6, 5, 3],
                          [1, 3, 2, 1, 2]])]
    rng = np.random.default_rng(3)
    targets = [make_targets("squared_error", pk.n_sequences, 2, rng)
               for _, pk in batches]

    def run(net, i):
        X, pk = batches[i]
        value, states = net.loss_gradient(X, pk, targets[i], "squared_error",
                                          n_threads=2)
        out = net.forward(X, pk, n_threads=2)
        return value, net.grads.copy(), flat_states(states, net), out[1].copy()

    net = make_net(cell, (5, 4))
    order = (2, 1, 0, 3, 1, 3)
    reused = [run(net, i) for i in order]
    for got, i in zip(reused, order):
        want = run(make_net(cell, (5, 4)), i)
        assert got[0] == want[0]
        assert_array_equal(got[1], want[1])
        for a, b in zip(got[2], want[2]):
            assert_array_equal(a, b)
        assert_array_equal(got[3], want[3])


# ---------------------------------------------------------------------------
# 6. dropout semantics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
def test_dropout_only_when_positive(cell):
    net, X, pk, T, sw = _repro_problem(cell, False, np.float64)
    l0, g0, _ = _run(net, X, pk, T, sw, None, dropout=0.0, recurrent_dropout=0.0)
    # p = 0 with an rng: exactly the deterministic result
    l1, g1, _ = _run(net, X, pk, T, sw, 1, dropout=0.0, recurrent_dropout=0.0)
    assert l1 == l0
    assert_array_equal(g1, g0)
    # each kind of dropout, alone, changes the result
    for kw in (dict(dropout=0.3, recurrent_dropout=0.0),
               dict(dropout=0.0, recurrent_dropout=0.3)):
        l2, g2, _ = _run(net, X, pk, T, sw, 1, **kw)
        assert l2 != l0, kw
        assert np.abs(g2 - g0).max() > 1e-8, kw
    # forward (prediction) matches the p = 0 loss and is deterministic
    _, Y, _ = net.forward(X, pk, return_sequences=True)
    _, Y2, _ = net.forward(X, pk, return_sequences=True)
    assert_array_equal(Y, Y2)
    w = sw[np.concatenate([np.arange(b) for b in pk.batch_sizes])]
    value = -np.sum(w[:, None] * T * np.log(Y)) / w.sum()
    assert_allclose(value, l0, rtol=1e-12)


def _probe_net(hidden, seed=0):
    """An Elman network whose states can be read back: no input weights,
    identity recurrent weights (so that every unit is its own recurrence)."""
    net = Network("rnn", N_IN, hidden, 1, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for name, w in net.weights.items():
        w[...] = 0
    b = rng.uniform(0.3, 1.0, hidden[0]) * rng.choice([-1, 1], hidden[0])
    net.weights["bias_ih_l0"][...] = b
    return net, b


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_recurrent_dropout_mask_semantics(p):
    """Recurrent-dropout masks are 0 or 1/(1-p), drawn per sequence and unit
    with probability p of dropping, and the SAME at every step."""
    H, B = 8, 300
    net, b = _probe_net((H,))
    net.weights["weight_hh_l0"][...] = np.eye(H)
    s = 1.0 / (1.0 - p)
    h0 = np.tanh(b)
    # two steps: h_1 = tanh(m * h_0 + b) reveals m
    X, pk = pack([np.zeros((2, N_IN))] * B, np.float64)
    T = np.zeros((B, 1))
    _, states = net.loss_gradient(X, pk, T, "squared_error", recurrent_dropout=p,
                                  rng=np.random.default_rng(1))
    m = (np.arctanh(states[0][0][0]) - b) / h0
    kept = np.abs(m - s) < 1e-8
    dropped = np.abs(m) < 1e-8
    assert np.all(kept | dropped)
    assert abs(dropped.mean() - p) < 0.05
    # drawn per sequence: every unit is dropped in some sequences, not all
    assert 0 < dropped.sum(axis=0).min() and dropped.sum(axis=0).max() < B
    # three steps: the final state is that of a mask constant in time
    X, pk = pack([np.zeros((3, N_IN))] * B, np.float64)
    _, states = net.loss_gradient(X, pk, T, "squared_error", recurrent_dropout=p,
                                  rng=np.random.default_rng(2))
    h2 = states[0][0][0]
    same_kept = np.tanh(s * np.tanh(s * h0 + b) + b)
    same_dropped = np.tanh(b)
    ok = np.isclose(h2, same_kept, rtol=0, atol=1e-12) | np.isclose(
        h2, same_dropped, rtol=0, atol=1e-12)
    assert np.all(ok)
    assert np.isclose(h2, same_kept, rtol=0, atol=1e-12).any()
    assert np.isclose(h2, same_dropped, rtol=0, atol=1e-12).any()


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_dropout_between_layers_mask_semantics(p):
    """Dropout between layers multiplies the input of layer 2 by 0 or
    1/(1-p), element by element, with probability p of dropping."""
    H, B = 8, 300
    net, b = _probe_net((H, H))
    net.weights["weight_ih_l1"][...] = np.eye(H)
    s = 1.0 / (1.0 - p)
    X, pk = pack([np.zeros((3, N_IN))] * B, np.float64)
    T = np.zeros((B, 1))
    _, states = net.loss_gradient(X, pk, T, "squared_error", dropout=p,
                                  rng=np.random.default_rng(3))
    assert_allclose(states[0][0][0], np.tanh(np.broadcast_to(b, (B, H))), rtol=1e-14)
    d = np.arctanh(states[1][0][0]) / np.tanh(b)   # layer 2: tanh(d * h^1)
    kept = np.abs(d - s) < 1e-8
    dropped = np.abs(d) < 1e-8
    assert np.all(kept | dropped)
    assert abs(dropped.mean() - p) < 0.05
    # forward never drops
    _, _, fstates = net.forward(X, pk)
    assert_allclose(fstates[1][0][0], np.tanh(np.tanh(np.broadcast_to(b, (B, H)))),
                    rtol=1e-14)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_dropout_between_layers_is_noop_for_one_layer(cell):
    net = make_net(cell, (5,), 2)
    X, pk = make_batch(LENGTHS)
    T = np.random.default_rng(3).standard_normal((pk.n_sequences, 2))
    l0, _ = net.loss_gradient(X, pk, T, "squared_error")
    g0 = net.grads.copy()
    l1, _ = net.loss_gradient(X, pk, T, "squared_error", dropout=0.5,
                              rng=np.random.default_rng(0))
    assert l1 == l0
    assert_array_equal(net.grads, g0)


@pytest.mark.parametrize("cell, hidden, net_kw", [
    pytest.param("lstm", (4, 3), {}, id="lstm"),
    pytest.param("lstm", (3, 3), dict(bidirectional=True, peephole=True),
                 id="lstm-bidirectional"),
    pytest.param("jordan", (4, 3), {}, id="jordan"),
    pytest.param("jordan", (3, 2, 3), dict(layer_norm=True), id="jordan-three-layers"),
    pytest.param("gru", (4, 3), dict(reset_after=False), id="gru-reset_before"),
])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
def test_finite_differences_with_fixed_dropout_masks(cell, hidden, net_kw, rs):
    net = make_net(cell, hidden, 2, **net_kw)
    X, pk = make_batch(LENGTHS)
    rng = np.random.default_rng(12)
    T = make_targets("squared_error", n_targets(pk, rs), 2, rng)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences)

    def f(p=0.3):
        value, _ = net.loss_gradient(X, pk, T, "squared_error", sample_weight=sw,
                                     return_sequences=rs, alpha=0.01, dropout=p,
                                     recurrent_dropout=p,
                                     rng=np.random.default_rng(77))
        return value

    assert f() != f(0.0)  # the masks do something
    assert_fd(net, f)


# ---------------------------------------------------------------------------
# 7. optimisers
# ---------------------------------------------------------------------------

def _grad_sequence(n_params, n_steps=4, seed=13):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n_params) * 10.0 ** rng.uniform(-3, 1, n_params)
            for _ in range(n_steps)]


def test_adam_one_step_formula():
    net = make_net("lstm", (4,), 2)
    p0 = net.params.copy()
    g = _grad_sequence(net.params.size, 1)[0]
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-3
    opt = Adam(net.params, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    opt.step(g)
    m_hat = (1 - b1) * g / (1 - b1)
    v_hat = (1 - b2) * g * g / (1 - b2)
    assert_allclose(net.params, p0 - lr * m_hat / (np.sqrt(v_hat) + eps), rtol=1e-13)
    # updated in place: the named views see the step
    assert net.weights["output.bias"].base is not None
    assert_array_equal(net.weights["output.bias"], net.params[-2:])


def test_adam_several_steps_formula():
    rng_params = np.random.default_rng(14).standard_normal(50)
    params = rng_params.copy()
    lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
    opt = Adam(params, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    p, m, v = rng_params.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate(_grad_sequence(50), start=1):
        opt.step(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        assert_allclose(params, p, rtol=1e-12, atol=1e-15)


def test_adam_float32_follows_the_formula():
    """The compiled float32 update: every operation rounded in float32."""
    rng = np.random.default_rng(17)
    p0 = rng.standard_normal(1000).astype(np.float32)
    params = p0.copy()
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = Adam(params, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    p, m, v = p0.astype(np.float64), np.zeros(1000), np.zeros(1000)
    for t, g in enumerate(_grad_sequence(1000, 4), start=1):
        g = g.astype(np.float32)
        opt.step(g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
        assert params.dtype == np.float32
        assert_allclose(params, p, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="grads must be a C-contiguous float32"):
        opt.step(np.zeros(1000))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_rounds_each_operation_in_order(dtype):
    """The vectorised update gives the bits of the scalar formula, each
    operation rounded in the parameters' dtype in the documented order (no
    fused multiply-add), at every position of its vectors (1003 elements:
    whole vectors and a tail)."""
    rng = np.random.default_rng(18)
    n = 1003
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 1, n)).astype(dtype)
    m = (0.1 * rng.standard_normal(n)).astype(dtype)
    v = (0.01 * rng.random(n)).astype(dtype)
    b1, b2, step, bias_2, eps = 0.9, 0.999, 0.01 / (1 - 0.9 ** 3), 0.05, 1e-8
    P, M, V = p.copy(), m.copy(), v.copy()
    _dense.adam_update(P, g, M, V, b1, b2, step, bias_2, eps)
    c = dtype  # every scalar rounded to the dtype first
    m_new = m * c(b1) + g * c(1 - b1)
    v_new = v * c(b2) + (g * g) * c(1 - b2)
    d = np.sqrt(v_new) / c(bias_2) + c(eps)
    assert_array_equal(M, m_new)
    assert_array_equal(V, v_new)
    assert_array_equal(P, p - (m_new / d) * c(step))


def test_adam_refuses_arrays_before_updating():
    params = np.ones(5, np.float32)
    opt = Adam(params)
    with pytest.raises(ValueError, match="grads must be a C-contiguous float32"):
        opt.step(np.ones(6, np.float32))
    with pytest.raises(ValueError, match="grads must be a C-contiguous float32"):
        opt.step(np.ones(10, np.float32)[::2])
    assert opt.t == 0 and not opt.m.any() and (params == 1).all()
    with pytest.raises(ValueError, match="same length"):
        _dense.adam_update(params, np.ones(4, np.float32), opt.m, opt.v,
                           0.9, 0.999, 0.1, 0.5, 1e-8)
    assert (params == 1).all()
    opt.step(np.ones(5, np.float32))
    assert opt.t == 1 and (params < 1).all()


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_adam_matches_torch(eps):
    torch = pytest.importorskip("torch")
    p0 = np.random.default_rng(15).standard_normal(60)
    params = p0.copy()
    lr, b1, b2 = 0.02, 0.85, 0.995
    opt = Adam(params, learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    tp = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    topt = torch.optim.Adam([tp], lr=lr, betas=(b1, b2), eps=eps)
    for g in _grad_sequence(60, 5):
        opt.step(g)
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        assert_allclose(params, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_formula(nesterov):
    p0 = np.random.default_rng(16).standard_normal(30)
    params = p0.copy()
    lr, mom = 0.1, 0.7
    opt = SGD(params, learning_rate=lr, momentum=mom, nesterov=nesterov)
    p, v = p0.copy(), np.zeros(30)
    for g in _grad_sequence(30):
        opt.step(g)
        v = mom * v - lr * g
        p = p + (mom * v - lr * g if nesterov else v)
        assert_allclose(params, p, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_sklearn(nesterov, momentum):
    try:
        from sklearn.neural_network._stochastic_optimizers import SGDOptimizer
    except ImportError:
        pytest.skip("sklearn's SGDOptimizer is not importable")
    net = make_net("gru", (3,), 2)
    p0 = net.params.copy()
    lr = 0.05
    opt = SGD(net.params, learning_rate=lr, momentum=momentum, nesterov=nesterov)
    sk_params = [p0.copy()]
    sk = SGDOptimizer(sk_params, learning_rate_init=lr, momentum=momentum,
                      nesterov=nesterov)
    for g in _grad_sequence(net.params.size):
        opt.step(g)
        sk.update_params(sk_params, [g])
        assert_allclose(net.params, sk_params[0], rtol=1e-13, atol=1e-15)
    assert np.abs(net.params - p0).max() > 1e-3


# ---------------------------------------------------------------------------
# 8. float32 against float64
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell, net_kw, loss, oa", [
    pytest.param("rnn", {}, "squared_error", "identity", id="rnn"),
    pytest.param("lstm", dict(peephole=True, layer_norm=True), "log_loss", "softmax",
                 id="lstm-peephole-layer_norm"),
    pytest.param("gru", dict(bidirectional=True), "binary_log_loss", "sigmoid",
                 id="gru-bidirectional"),
    pytest.param("gru", dict(reset_after=False), "squared_error", "tanh",
                 id="gru-reset_before"),
    pytest.param("jordan", {}, "log_loss", "softmax", id="jordan"),
    pytest.param("jordan", dict(layer_norm=True), "squared_error", "sigmoid",
                 id="jordan-layer_norm"),
])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
def test_float32_matches_float64(cell, net_kw, loss, oa, rs):
    net64 = make_net(cell, (5, 4), 3, output_activation=oa, **net_kw)
    net64.params[:] = net64.params.astype(np.float32)  # representable in both
    net32 = Network(cell, N_IN, (5, 4), 3, output_activation=oa, dtype=np.float32,
                    **net_kw)
    net32.params[:] = net64.params
    X32, pk = make_batch(LENGTHS + [7, 3], dtype=np.float32)
    X64 = X32.astype(np.float64)
    rng = np.random.default_rng(17)
    T = make_targets(loss, n_targets(pk, rs), 3, rng)
    sw = rng.uniform(0.5, 2.0, pk.n_sequences)
    kw = dict(return_sequences=rs, alpha=0.01)
    l64, s64 = net64.loss_gradient(X64, pk, T, loss, sample_weight=sw, **kw)
    l32, s32 = net32.loss_gradient(X32, pk, T.astype(np.float32), loss,
                                   sample_weight=sw.astype(np.float32), **kw)
    assert net32.grads.dtype == np.float32
    assert_allclose(l32, l64, rtol=1e-4)
    g32, g64 = net32.grads.astype(np.float64), net64.grads
    assert np.linalg.norm(g32 - g64) <= 1e-4 * np.linalg.norm(g64)
    assert_allclose(g32, g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())
    for a, b in zip(flat_states(s32, net32), flat_states(s64, net64)):
        assert a.dtype == np.float32
        assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    _, Y32, _ = net32.forward(X32, pk, return_sequences=rs)
    _, Y64, _ = net64.forward(X64, pk, return_sequences=rs)
    assert Y32.dtype == np.float32
    assert_allclose(Y32, Y64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# token input through an embedding
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell, net_kw", [
    ("lstm", {}), ("gru", dict(bidirectional=True)), ("jordan", {}),
    ("rnn", dict(layer_norm=True)),
])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
def test_embedding_finite_differences(cell, net_kw, rs):
    """Token rows read through an embedding: every gradient, the embedding's
    included, matches central finite differences."""
    from pyx_rnn.tokens import TokenInput

    rng = np.random.default_rng(3)
    V = 6
    net = Network(cell, V, (4, 3), 2, embedding_dim=3, dtype=np.float64, **net_kw)
    net.init_weights(rng)
    pk = Packing.from_lengths([5, 3, 4])
    X = TokenInput(rng.integers(0, V, pk.n_rows), rng.uniform(0.2, 1.5, pk.n_rows))
    T = rng.standard_normal((pk.n_rows if rs else 3, 2))

    def loss():
        return net.loss_gradient(X, pk, T, "squared_error", return_sequences=rs)[0]

    loss()
    analytic = net.grads.copy()
    numeric = np.zeros_like(analytic)
    for i in range(len(numeric)):
        old = net.params[i]
        net.params[i] = old + 1e-6
        up = loss()
        net.params[i] = old - 1e-6
        down = loss()
        net.params[i] = old
        numeric[i] = (up - down) / 2e-6
    emb = net.grad_views["embedding.weight"]
    used = np.unique(X.ids)
    assert np.all(np.abs(emb[used]).sum(axis=1) > 0)
    unused = np.setdiff1d(np.arange(V), used)
    assert np.all(emb[unused] == 0)
    assert np.abs(numeric - analytic).max() <= 1e-6 * np.abs(numeric).max()


def test_embedding_equals_dense_one_hot_input():
    """An embedding lookup scaled by the weight is the product of the weighted
    one-hot vector with the embedding matrix: same outputs and gradients as
    the dense input ``one_hot @ E`` fed to an embedding-free network."""
    from pyx_rnn.tokens import TokenInput

    rng = np.random.default_rng(4)
    V, D = 5, 3
    tok = Network("gru", V, (4,), 2, embedding_dim=D, dtype=np.float64)
    tok.init_weights(rng)
    dense = Network("gru", D, (4,), 2, dtype=np.float64)
    for name, w in dense.weights.items():
        w[...] = tok.weights[name]
    pk = Packing.from_lengths([4, 2])
    X = TokenInput(rng.integers(0, V, pk.n_rows), rng.uniform(0.5, 2, pk.n_rows))
    one_hot = np.zeros((pk.n_rows, V))
    one_hot[np.arange(pk.n_rows), X.ids] = X.weights
    E = tok.weights["embedding.weight"]
    T = rng.standard_normal((2, 2))
    l1, _ = tok.loss_gradient(X, pk, T, "squared_error")
    l2, _ = dense.loss_gradient(one_hot @ E, pk, T, "squared_error")
    assert_allclose(l1, l2, rtol=1e-13)
    for name, g in dense.grad_views.items():
        assert_allclose(tok.grad_views[name], g, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------
# 9. arguments checked once per call by the network, for all its layers
# ---------------------------------------------------------------------------

CHECKED_CASES = [
    pytest.param("lstm", {}, None, id="lstm"),
    pytest.param("gru", dict(bidirectional=True), None, id="gru-bidirectional"),
    pytest.param("rnn", dict(layer_norm=True), (3, 4), id="rnn-ln-tbptt"),
    pytest.param("lstm", dict(peephole=True), (2, 5), id="lstm-peephole-tbptt"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, kw, tbptt", CHECKED_CASES)
def test_network_checked_layers_give_the_same_bits(cell, kw, tbptt, dtype,
                                                   monkeypatch):
    """With the layer arguments checked once by the network, the layers skip
    their own checks; outputs, losses, gradients and states are bitwise those
    of the layers checking everything."""
    net, X, pk, T, sw = _repro_problem(cell, kw.get("bidirectional", False), dtype)
    if kw:
        net = make_net(cell, (5, 4), 3, dtype=dtype, output_activation="softmax",
                       **kw)
    assert net._layer_args_checked(pk, None, 2, None, training=True)
    assert net._input_checked(X, pk)

    def run():
        loss = _run(net, X, pk, T, sw, 7, n_threads=2, tbptt=tbptt)
        out = net.forward(X, pk, return_sequences=True, n_threads=2)
        return loss, out

    (l1, g1, s1), f1 = run()
    monkeypatch.setattr(Network, "_layer_args_checked",
                        lambda self, *args, **kwargs: False)
    (l2, g2, s2), f2 = run()
    assert l1 == l2
    assert_array_equal(g1, g2)
    assert_array_equal(f1[1], f2[1])
    for a, b in zip(flat_states(s1, net) + flat_states(f1[2], net),
                    flat_states(s2, net) + flat_states(f2[2], net)):
        assert_array_equal(a, b)


@pytest.mark.parametrize("tbptt", [None, (2, 3)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_network_checked_states_and_tokens_give_the_same_bits(cell, tbptt,
                                                             monkeypatch):
    """Initial states in the layers' own form, and token input, are checked
    once by the network too: the same losses, gradients, outputs and states
    as with the layers checking them."""
    from pyx_rnn.tokens import TokenInput
    rng = np.random.default_rng(4)
    X, pk = make_batch([5, 3, 4])
    T = np.eye(2)[rng.integers(0, 2, pk.n_rows)]
    net = make_net(cell, (5, 4), 2, output_activation="softmax")
    states = net.forward(X, pk)[2]
    tokens = Network(cell, 6, (4,), 2, token_input=True,
                     output_activation="softmax", dtype=np.float64)
    tokens.init_weights(np.random.default_rng(1))
    ids = TokenInput(rng.integers(0, 6, pk.n_rows).astype(np.intp),
                     rng.uniform(0.5, 1.5, pk.n_rows))
    token_states = tokens.forward(ids, pk)[2]

    cases = ((net, X, states), (tokens, ids, token_states))
    for model, x, given in cases:
        assert model._layer_args_checked(pk, given, 2, None, training=True)
        assert model._input_checked(x, pk)

    def run():
        out = []
        for model, x, given in cases:
            value, final = model.loss_gradient(
                x, pk, T, "log_loss", return_sequences=True, tbptt=tbptt,
                initial_state=given, n_threads=2)
            out.append((value, model.grads.copy(), flat_states(final, model),
                        model.forward(x, pk, initial_state=given, n_threads=2)))
        return out

    checked = run()
    monkeypatch.setattr(Network, "_layer_args_checked",
                        lambda self, *args, **kwargs: False)
    for model, a, b in zip((net, tokens), checked, run()):
        assert a[0] == b[0]
        assert_array_equal(a[1], b[1])
        for x, y in zip(a[2], b[2], strict=True):
            assert_array_equal(x, y)
        _assert_same_outputs(a[3], b[3], model)


def test_initial_state_must_be_finite():
    """NaN or infinite initial states are refused before any kernel runs,
    by forward and loss_gradient alike (the layers' own finite checks are
    off there), rather than coming out as NaN outputs."""
    net = make_net("lstm", (5,), 2)
    X, pk = make_batch([4, 2, 3])
    good = np.zeros((3, 5))
    for h0, c0 in ((np.full((3, 5), np.nan), good), (good, np.full((3, 5), -np.inf))):
        with pytest.raises(ValueError, match="initial_state contains NaN"):
            net.forward(X, pk, initial_state=[[(h0, c0)]])
        with pytest.raises(ValueError, match="initial_state contains NaN"):
            net.loss_gradient(X, pk, np.zeros((3, 2)), "squared_error",
                              initial_state=[[(h0, c0)]])
        # nested lists of numbers too
        with pytest.raises(ValueError, match="initial_state contains NaN"):
            net.forward(X, pk, initial_state=[[(h0.tolist(), c0.tolist())]])


def test_network_checks_what_the_layers_skip():
    """The layers skip their checks only when the network has checked
    everything they would; otherwise they check, and name the problem."""
    net = make_net("lstm", (5,), 2)
    X, pk = make_batch([4, 2, 3])
    T = np.zeros((3, 2))
    assert net._layer_args_checked(pk, None, 1, None, training=True)
    assert net._input_checked(X, pk)
    # initial states as the layers take them without a copy; not in another
    # form (an LSTM without its cell state, another layout or dtype, another
    # number of sequences or layers)
    state = np.zeros((3, 5))
    assert net._layer_args_checked(pk, [[(state, state)]], 1, None, training=True)
    for bad in ([[(state, None)]], [[(np.asfortranarray(state[:, :3]), state)]],
                [[(state.astype(np.float32), state)]], [[(state[:2], state[:2])]],
                [[(state, state)], [(state, state)]], [(state, state)], "states"):
        assert not net._layer_args_checked(pk, bad, 1, None, training=False)
    # a Jordan network, a strided or invalid packing, a thread count or block
    # size the layers refuse
    assert not make_net("jordan", (5,), 2)._layer_args_checked(
        pk, None, 1, None, training=False)
    strided = Packing(pk.lengths, pk.order, np.repeat(pk.batch_sizes, 2)[::2],
                      pk.offsets)
    assert not net._layer_args_checked(strided, None, 1, None, training=False)
    bad = Packing(pk.lengths, pk.order, pk.batch_sizes[::-1].copy(), pk.offsets)
    assert not net._layer_args_checked(bad, None, 1, None, training=False)
    assert not net._layer_args_checked(pk, None, 0, None, training=False)
    assert not net._layer_args_checked(pk, None, 1, 0, training=False)
    with pytest.raises(ValueError, match="non-increasing"):
        net.forward(X, bad)
    # input the layers would copy (another layout or dtype, read-only), or
    # of another shape
    assert not net._input_checked(np.asfortranarray(X), pk)
    assert not net._input_checked(X.astype(np.float32), pk)
    read_only = X.copy()
    read_only.flags.writeable = False
    assert not net._input_checked(read_only, pk)
    # ... and the layers' own checks then take such input as before
    assert_array_equal(net.forward(read_only, pk)[1], net.forward(X, pk)[1])
    # token input: ids of intp within the vocabulary, weights of the dtype
    from pyx_rnn.tokens import TokenInput
    tokens = Network("gru", 4, (3,), 2, token_input=True, dtype=np.float64)
    ids, weights = np.array([0, 3, 1, 2, 3, 0, 1, 2, 3]), np.ones(9)
    assert tokens._input_checked(TokenInput(ids, weights), pk)
    fixed = weights.copy()
    fixed.flags.writeable = False
    for bad in (TokenInput(np.where(ids == 3, 4, ids), weights),
                TokenInput(np.where(ids == 3, -1, ids), weights),
                TokenInput(ids, weights.astype(np.float32)),
                TokenInput(ids, fixed), TokenInput(ids[:-1], weights[:-1])):
        assert not tokens._input_checked(bad, pk)
    assert not Network("gru", 4, (3,), 2, embedding_dim=2,
                       dtype=np.float64)._input_checked(
        TokenInput(ids, weights), pk)
    assert_array_equal(net.forward(np.asfortranarray(X), pk)[1],
                       net.forward(X, pk)[1])
    assert not net._input_checked(X[:-1], pk)
    assert not net._input_checked(np.tile(X, 2), pk)
    # a parameter or a gradient replaced by an array of another shape: the
    # layer names it
    good = net.weights["weight_hh_l0"]
    net.weights["weight_hh_l0"] = np.zeros((20, 4))
    assert not net._layer_args_checked(pk, None, 1, None, training=False)
    with pytest.raises(ValueError, match=r"weight_hh.*\(20, 5\)"):
        net.forward(X, pk)
    net.weights["weight_hh_l0"] = good
    net.grad_views["bias_ih_l0"] = np.zeros(20, np.float32)
    assert net._layer_args_checked(pk, None, 1, None, training=False)
    assert not net._layer_args_checked(pk, None, 1, None, training=True)
    with pytest.raises(TypeError, match="grads.*bias_ih"):
        net.loss_gradient(X, pk, T, "squared_error")


# ---------------------------------------------------------------------------
# 10. input read in place (SequenceInput)
# ---------------------------------------------------------------------------

def _in_place_problem(lengths, n_in, dtype, seed=3):
    """Packed rows of sequences of ``lengths``, and the same steps stored one
    sequence after another, in a shuffled order and with rows of NaN between
    them that no sequence reads: a SequenceInput of them."""
    rng = np.random.default_rng(seed)
    seqs = [rng.standard_normal((n, n_in)).astype(dtype) for n in lengths]
    X, pk = pack(seqs, dtype)
    where = rng.permutation(len(seqs))
    data, starts, at = [], np.empty(len(seqs), np.intp), 0
    for i in where:
        data.append(np.full((2, n_in), np.nan, dtype))
        at += 2
        starts[i] = at
        data.append(seqs[i])
        at += len(seqs[i])
    data.append(np.full((1, n_in), np.nan, dtype))
    return X, pk, SequenceInput(np.concatenate(data), starts[pk.order])


def _plans_in_place(net):
    """Whether each first-layer direction read its input in place."""
    return [net._local.pool[sfx]["forward_plan"].in_place
            for _, sfx in net.specs[0]]


IN_PLACE_CASES = [
    pytest.param("lstm", {}, id="lstm"),
    pytest.param("rnn", dict(activation="relu"), id="rnn"),
    pytest.param("gru", {}, id="gru"),
    pytest.param("gru", dict(reset_after=False), id="gru-reset-before"),
    pytest.param("lstm", dict(bidirectional=True), id="lstm-bidirectional"),
    pytest.param("lstm", dict(peephole=True, layer_norm=True), id="lstm-ln"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell, kw", IN_PLACE_CASES)
def test_sequence_input_gives_the_same_bits(cell, kw, rs, dtype):
    """The first layer gathering each step's rows itself (several blocks,
    variable lengths, sequences in any order with other rows between them)
    gives the bits of the packed rows, at any thread count; so does the
    training pass, which packs them first."""
    lengths = [7, 3, 9, 1, 5, 9, 2, 6, 4, 8]
    X, pk, inp = _in_place_problem(lengths, 5, dtype)
    net = Network(cell, 5, (8, 6), 2, dtype=dtype, **kw)
    net.init_weights(np.random.default_rng(0))
    for n_threads in (1, 2):
        _, Y1, s1 = net.forward(X, pk, return_sequences=rs, n_threads=n_threads,
                                block_rows=3)
        _, Y2, s2 = net.forward(inp, pk, return_sequences=rs,
                                n_threads=n_threads, block_rows=3)
        assert all(_plans_in_place(net))
        assert_array_equal(Y1, Y2)
        for a, b in zip(flat_states(s1, net), flat_states(s2, net)):
            assert_array_equal(a, b)
    T = np.ones((n_targets(pk, rs), 2), dtype)
    l1, _ = net.loss_gradient(X, pk, T, "squared_error", return_sequences=rs)
    g1 = net.grads.copy()
    for n_threads in (1, 2, 1):
        l2, _ = net.loss_gradient(inp, pk, T, "squared_error", return_sequences=rs,
                                  n_threads=n_threads)
        assert l1 == l2
        assert_array_equal(g1, net.grads)
    # packed by _dense.pack_rows, into the pool's buffer
    assert net._pool["input"].size >= X.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, kw", IN_PLACE_CASES[:4])
def test_sequence_input_evenly_spaced_gives_the_same_bits(cell, kw, dtype):
    """Sequences that lie the same number of rows apart in packed order
    (the chunks of an (n, T, features) array of equal lengths, windows one
    row apart, a padded array sorted longest first) have their steps read
    in place by the packed product, with the bits of the packed rows; so
    do the blocks of sequences that are not evenly spaced, which copy
    them."""
    from pyx_rnn import _cells
    rng = np.random.default_rng(0)
    n_in, T, n = 5, 9, 12
    padded = rng.standard_normal((n, T + 2, n_in)).astype(dtype)
    series = rng.standard_normal((40, n_in)).astype(dtype)
    varied = np.array([9, 9, 8, 7, 7, 6, 5, 4, 3, 2, 2, 1])
    apart = (T + 2) * np.arange(n)
    cases = [  # (data, starts in the caller's order, lengths, evenly spaced)
        (padded.reshape(-1, n_in), apart, np.full(n, T), True),
        (series, np.arange(n), np.full(n, 7), True),   # overlapping windows
        (padded.reshape(-1, n_in), apart, varied, True),
        (padded.reshape(-1, n_in), apart, rng.permutation(varied), False),
    ]
    net = Network(cell, n_in, (8, 6), 2, dtype=dtype, **kw)
    net.init_weights(np.random.default_rng(1))
    for data, starts, lengths, even in cases:
        pk = Packing.from_lengths(lengths)
        inp = SequenceInput(data, np.ascontiguousarray(starts[pk.order]))
        X = inp.packed(pk)
        spaced = [_cells.evenly_spaced(inp.starts[lo:lo + 3], n_in)
                  for lo in range(0, n, 3)]
        assert all(spaced) if even else not all(spaced)
        for n_threads in (1, 2):
            for block_rows in (3, None):
                _, Y1, s1 = net.forward(X, pk, n_threads=n_threads,
                                        block_rows=block_rows)
                _, Y2, s2 = net.forward(inp, pk, n_threads=n_threads,
                                        block_rows=block_rows)
                assert _plans_in_place(net)[0]
                assert_array_equal(Y1, Y2)
                for a, b in zip(flat_states(s1, net), flat_states(s2, net)):
                    assert_array_equal(a, b)


def test_evenly_spaced_steps():
    """What the forward kernel reads in place: the step between sequences
    one after another the same number of rows apart (any step for one
    sequence), 0 otherwise or where the rows of a step overflow an int."""
    from pyx_rnn import _cells
    starts = lambda *s: np.array(s, np.intp)  # noqa: E731
    assert _cells.evenly_spaced(starts(4, 9, 14, 19), 3) == 5
    assert _cells.evenly_spaced(starts(0, 1, 2), 8) == 1
    assert _cells.evenly_spaced(starts(7), 8) == 1
    assert _cells.evenly_spaced(starts(), 8) == 1
    assert _cells.evenly_spaced(starts(0, 5, 11), 3) == 0
    assert _cells.evenly_spaced(starts(9, 4), 3) == 0
    assert _cells.evenly_spaced(starts(3, 3), 3) == 0
    assert _cells.evenly_spaced(starts(0, 2**28), 8) == 0
    assert _cells.evenly_spaced(starts(0, 2**28), 7) == 2**28


@pytest.mark.parametrize("cell", ["jordan", "lstm"])
def test_sequence_input_packed_where_not_read_in_place(cell, monkeypatch):
    """Where the first layer cannot read in place (a Jordan network, the
    input product by BLAS, data of another dtype or layout, read-only data,
    initial states the layers check themselves), the rows are packed first:
    the same results."""
    from pyx_rnn import layers
    X, pk, inp = _in_place_problem([4, 6, 2], N_IN, np.float64)
    net = make_net(cell, (5,), 2)
    Y = net.forward(X, pk)[1]
    read_only = inp.data.copy()
    read_only.flags.writeable = False
    others = [inp, SequenceInput(inp.data.astype(np.float32), inp.starts),
              SequenceInput(np.asfortranarray(inp.data), inp.starts),
              SequenceInput(read_only, inp.starts)]
    T = np.ones((3, 2))
    loss, _ = net.loss_gradient(X, pk, T, "squared_error")
    grads = net.grads.copy()
    for other in others:
        assert_allclose(net.forward(other, pk)[1], Y,
                        rtol=0 if other.data.dtype == np.float64 else 1e-6)
        exact = other.data.dtype == np.float64
        got, _ = net.loss_gradient(other, pk, T, "squared_error")
        assert got == loss if exact else np.isclose(got, loss, rtol=1e-6)
        if exact:
            assert_array_equal(net.grads, grads)
    if cell == "jordan":
        return
    h0 = [[(np.zeros((3, 5)), np.zeros((3, 5)))]]
    assert_array_equal(net.forward(inp, pk, initial_state=h0)[1], Y)
    monkeypatch.setattr(layers, "RECURRENT_PRODUCT", "blas")
    # (the switch is read when buffers and plans are made: none kept)
    net._local.pool = {}
    assert_array_equal(net.forward(inp, pk)[1], net.forward(X, pk)[1])
    assert not any(_plans_in_place(net))


def test_sequence_input_checked():
    """Starts that do not give each sequence its rows within data, and
    non-finite values in the rows read, are refused before any kernel runs;
    non-finite values in rows not read are not looked at."""
    X, pk, inp = _in_place_problem([4, 6, 2], N_IN, np.float64)
    net = make_net("lstm", (5,), 2)
    Y = net.forward(X, pk)[1]
    assert np.isnan(inp.data).any()
    assert_array_equal(net.forward(inp, pk)[1], Y)
    n = len(inp.data)
    bad_starts = [
        (inp.starts[:2], ValueError, "one entry per sequence"),
        (inp.starts.astype(float), TypeError, "must be integers"),
        (np.where(np.arange(3) == 1, -1, inp.starts), ValueError,
         "sequence 1 .* needs rows -1"),
        (np.where(np.arange(3) == 0, n - 5, inp.starts), ValueError,
         f"sequence 0 .*has {n} rows"),
    ]
    for starts, error, match in bad_starts:
        with pytest.raises(error, match=match):
            net.forward(SequenceInput(inp.data, starts), pk)
        with pytest.raises(error, match=match):
            net.loss_gradient(SequenceInput(inp.data, starts), pk,
                              np.zeros((3, 2)), "squared_error")
    with pytest.raises(ValueError, match="2-D array"):
        net.forward(SequenceInput(inp.data.ravel(), inp.starts), pk)
    for value in (np.nan, np.inf):
        data = inp.data.copy()
        data[inp.starts[2] + 1, 1] = value
        with pytest.raises(ValueError, match="NaN or infinity"):
            net.forward(SequenceInput(data, inp.starts), pk)
        for n_threads in (1, 2):
            with pytest.raises(ValueError, match="NaN or infinity"):
                net.loss_gradient(SequenceInput(data, inp.starts), pk,
                                  np.zeros((3, 2)), "squared_error",
                                  n_threads=n_threads)
    with pytest.raises(ValueError, match="n_threads"):
        net.loss_gradient(inp, pk, np.zeros((3, 2)), "squared_error", n_threads=0)
    tokens = Network("lstm", 4, (3,), 1, token_input=True)
    with pytest.raises(TypeError, match="TokenInput"):
        tokens.forward(SequenceInput(np.zeros((12, 4)), [0, 4, 8]), pk)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, kw", IN_PLACE_CASES + [
    pytest.param("gru", dict(bidirectional=True), id="gru-bidirectional")])
def test_forward_reads_the_last_steps_from_the_final_states(cell, kw, dtype):
    """Sequence-to-one inference: the output layer reads the top layer's
    final states, which the rnn and the lstm then keep instead of their
    outputs at every step; the bits of the outputs kept at every step."""
    X, pk, _ = _in_place_problem([7, 3, 9, 1, 5, 9, 2, 6, 4, 8], 5, dtype)
    net = Network(cell, 5, (8, 6), 2, dtype=dtype, **kw)
    net.init_weights(np.random.default_rng(0))
    _, Y, states = net.forward(X, pk, n_threads=2, block_rows=3)
    plans = [net._local.pool[sfx]["forward_plan"] for _, sfx in net.specs[-1]]
    kept = [plan.rows(plan.args)[1].size for plan in plans]
    assert all((n == 0) == (cell != "gru") for n in kept)
    top, states2, _ = net._stack_forward(X, pk, None, None, 0.0, None, 2, 3,
                                         keep_cache=False)
    feats, rows = net._gather_top(top, pk, False)
    assert_array_equal(Y, net._head(feats, rows, {})[1])
    for a, b in zip(flat_states(states, net), flat_states(states2, net)):
        assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# 11. repeated inference calls made ready (Network's inference plan)
# ---------------------------------------------------------------------------

def _forward_ready(net, monkeypatch, *args, **kw):
    """``net.forward`` that must not take the general path: the inference
    plan answers it, or the general path's first check raises."""
    def general(*a, **k):
        raise AssertionError("forward took the general path")
    with monkeypatch.context() as m:
        m.setattr(Network, "_layer_args_checked", general)
        return net.forward(*args, **kw)


def _assert_same_outputs(a, b, net):
    for x, y in zip(a[:2], b[:2]):
        assert_array_equal(x, y, strict=True)
    for x, y in zip(flat_states(a[2], net), flat_states(b[2], net)):
        assert_array_equal(x, y, strict=True)


READY_CASES = [
    pytest.param("lstm", (8,), {}, id="lstm"),
    pytest.param("lstm", (8, 6), {}, id="lstm-2-layers"),
    pytest.param("rnn", (8, 6), dict(activation="relu"), id="rnn-relu"),
    pytest.param("gru", (8, 6), {}, id="gru"),
    pytest.param("gru", (8,), dict(reset_after=False), id="gru-reset-before"),
    pytest.param("lstm", (8,), dict(peephole=True, layer_norm=True), id="lstm-ln"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell, hidden, kw", READY_CASES)
def test_inference_plan_gives_the_same_bits(cell, hidden, kw, rs, dtype,
                                            monkeypatch):
    """From the second call in a row of one batch shape, forward runs a plan
    made ready from the checked call: the same bits as the general path (Z,
    Y and every final state), for input in place and packed, at 1 and 2
    threads, on other batches of that shape too; new output arrays at each
    call."""
    lengths = [7, 3, 9, 1, 5, 9, 2, 6, 4, 8]
    X, pk, inp = _in_place_problem(lengths, 5, dtype)
    net = Network(cell, 5, hidden, 2, dtype=dtype, **kw)
    net.init_weights(np.random.default_rng(0))
    for n_threads in (1, 2):
        for given in (inp, X):
            net._local.pool = {}
            args = (given, pk)
            how = dict(return_sequences=rs, n_threads=n_threads, block_rows=3)
            first = net.forward(*args, **how)
            assert net._local.pool.get("inference") is None
            second = net.forward(*args, **how)
            assert net._local.pool["inference"] is not None
            third = _forward_ready(net, monkeypatch, *args, **how)
            _assert_same_outputs(first, second, net)
            _assert_same_outputs(first, third, net)
            assert third[1] is not second[1]
            assert not np.shares_memory(third[2][-1][0][0], second[2][-1][0][0])
    # another batch of the same packing, read in place from other rows
    _, _, other = _in_place_problem(lengths, 5, dtype, seed=4)
    for _ in range(2):
        net.forward(inp, pk, **how)
    ready = _forward_ready(net, monkeypatch, other, pk, **how)
    net._local.pool = {}
    _assert_same_outputs(net.forward(other, pk, **how), ready, net)


def test_inference_plan_follows_the_parameters(monkeypatch):
    """The plan reads the parameters' current values at every call (they
    change in place in training), and is not used once a parameter array
    is replaced, or changes shape or dtype."""
    X, pk, inp = _in_place_problem([4, 6, 2, 5], N_IN, np.float64)
    net = make_net("lstm", (5, 4), 2)
    for _ in range(2):
        net.forward(inp, pk)
    net.params += 0.05
    fresh = make_net("lstm", (5, 4), 2)
    fresh.params[...] = net.params
    _assert_same_outputs(_forward_ready(net, monkeypatch, inp, pk),
                         fresh.forward(inp, pk), net)
    # a replaced array: the general path, with its values
    name = "bias_hh_l1"
    net.weights[name] = net.weights[name] + 1.0
    with pytest.raises(AssertionError, match="general path"):
        _forward_ready(net, monkeypatch, inp, pk)
    fresh.weights[name] += 1.0
    assert_array_equal(net.forward(inp, pk)[1], fresh.forward(inp, pk)[1])
    # made again at the next call of the key, with the new array
    _assert_same_outputs(_forward_ready(net, monkeypatch, inp, pk),
                         fresh.forward(inp, pk), net)
    for change in ("shape", "dtype"):
        other = make_net("lstm", (5, 4), 2)
        for _ in range(2):
            other.forward(inp, pk)
        w = other.weights["weight_hh_l0"]
        if change == "shape":
            w.shape = (5, 20)
        else:
            w.dtype = np.int64
        with pytest.raises((ValueError, TypeError), match="weight_hh"):
            other.forward(inp, pk)


def test_plans_tell_arrays_and_layouts_apart():
    """What the plans compare at each call (``_bookkeeping.layout``): the
    same arrays laid out the same give the same bytes; another array of
    the same layout, the same one reshaped or made read-only, or a view of
    it (byte-swapped, strided, transposed) give others."""
    a, b = np.zeros((4, 6)), np.zeros(5, np.float32)
    same = _bookkeeping.layout((a, b))
    assert _bookkeeping.layout((a, b)) == same
    assert _bookkeeping.layout((a.copy(), b)) != same
    assert _bookkeeping.layout((b, a)) != same
    assert _bookkeeping.layout((a,)) != same
    assert _bookkeeping.layout((a, b, b)) != same
    assert _bookkeeping.layout((a, [0.0])) is None
    a.shape = (6, 4)
    assert _bookkeeping.layout((a, b)) != same
    a.shape = (4, 6)
    assert _bookkeeping.layout((a, b)) == same
    b.flags.writeable = False
    assert _bookkeeping.layout((a, b)) != same
    b.flags.writeable = True
    for other in (a.view(a.dtype.newbyteorder()), a[:, ::2], a.T):
        assert _bookkeeping.layout((other, b)) != _bookkeeping.layout((a, b))
    assert _bookkeeping.layout((a, b)) == same


def test_inference_plan_checks_each_input(monkeypatch):
    """With a plan made, the input of every call is still checked as the
    general path checks it (the same errors); calls that differ from the
    plan's in their packing, thread count, input form or dtype, or that
    give initial states, take the general path, with its results."""
    X, pk, inp = _in_place_problem([4, 6, 2], N_IN, np.float64)
    net = make_net("lstm", (5,), 2)
    for _ in range(2):
        Y = net.forward(inp, pk)[1]
    plan = net._local.pool["inference"]
    n = len(inp.data)
    for starts, match in ((np.where(np.arange(3) == 0, n - 5, inp.starts),
                           f"sequence 0 .*has {n} rows"),
                          (inp.starts[:2], "one entry per sequence")):
        with pytest.raises(ValueError, match=match):
            net.forward(SequenceInput(inp.data, starts), pk)
    data = inp.data.copy()
    data[inp.starts[0] + 5, 0] = np.inf   # the last step of the longest
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.forward(SequenceInput(data, inp.starts), pk)
    assert net._local.pool["inference"] is plan
    # packed input too, with a plan made for it
    packed = make_net("lstm", (5,), 2)
    for _ in range(2):
        packed.forward(X, pk)
    assert packed._local.pool["inference"] is not None
    bad = X.copy()
    bad[-1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        packed.forward(bad, pk)
    general = []
    monkeypatch.setattr(Network, "_layer_args_checked",
                        lambda *a, _f=Network._layer_args_checked, **k:
                        general.append(1) or _f(*a, **k))
    other_pk = Packing.from_lengths([3, 6, 2])   # rows within inp's
    calls = [
        (lambda: net.forward(inp, pk, n_threads=2), Y),
        (lambda: net.forward(X, pk), Y),
        (lambda: net.forward(SequenceInput(inp.data.astype(np.float32),
                                           inp.starts), pk),
         net.forward(SequenceInput(inp.data.astype(np.float32), inp.starts),
                     pk)[1]),
        (lambda: net.forward(inp, other_pk),
         make_net("lstm", (5,), 2).forward(inp.packed(other_pk), other_pk)[1]),
    ]
    for call, expected in calls:
        general.clear()
        net._local.pool["inference_key"] = None
        assert_array_equal(call()[1], expected)
        assert general == [1]
    net._local.pool["inference"] = plan
    general.clear()
    assert_array_equal(net.forward(inp, pk)[1], Y)
    assert general == []
    # initial states: the plan takes them as the layers would, with the
    # general path's bits; in another form, or not finite, the general path
    # (its copy, its error)
    rng = np.random.default_rng(3)
    h0 = [[(rng.standard_normal((3, 5)), rng.standard_normal((3, 5)))]]
    want = make_net("lstm", (5,), 2).forward(inp, pk, initial_state=h0)
    general.clear()
    _assert_same_outputs(net.forward(inp, pk, initial_state=h0), want, net)
    assert general == []
    fortran = [[tuple(np.asfortranarray(a) for a in h0[0][0])]]
    _assert_same_outputs(net.forward(inp, pk, initial_state=fortran), want, net)
    assert general == [1]
    bad = [[(h0[0][0][0], np.where(np.eye(3, 5) > 0, np.nan, 0.0))]]
    with pytest.raises(ValueError, match="initial_state contains NaN"):
        net.forward(inp, pk, initial_state=bad)
    assert net._local.pool["inference"] is plan


def test_inference_plan_only_where_it_applies():
    """No plan for calls alternating between two batch shapes (it would be
    made at every call), nor for a bidirectional or Jordan network, nor one
    with an embedding; a token network has one."""
    X, pk, inp = _in_place_problem([4, 6, 2], N_IN, np.float64)
    X2, pk2, inp2 = _in_place_problem([3, 5], N_IN, np.float64)
    net = make_net("gru", (5,), 2)
    for _ in range(3):
        net.forward(inp, pk)
        net.forward(inp2, pk2)
    assert net._local.pool.get("inference") is None
    for cell, kw in (("lstm", dict(bidirectional=True)), ("jordan", {})):
        other = make_net(cell, (5,), 2, **kw)
        for _ in range(3):
            other.forward(inp, pk)
        assert other._local.pool.get("inference") is None
    from pyx_rnn.tokens import TokenInput
    ids = TokenInput(np.zeros(pk.n_rows, np.intp), np.ones(pk.n_rows))
    for kw, made in ((dict(token_input=True), True), (dict(embedding_dim=2), False)):
        tokens = Network("lstm", 4, (3,), 1, **kw)
        for _ in range(3):
            tokens.forward(ids, pk)
        assert (tokens._local.pool.get("inference") is not None) == made


TOKEN_CASES = [
    pytest.param("lstm", (8,), {}, id="lstm"),
    pytest.param("gru", (8, 6), {}, id="gru-2-layers"),
    pytest.param("rnn", (8,), dict(layer_norm=True), id="rnn-ln"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, hidden, kw", TOKEN_CASES)
def test_inference_plan_takes_tokens_and_states(cell, hidden, kw, dtype,
                                                monkeypatch):
    """A token network's plan gathers its first layer's input from the
    tokens, and any plan starts from the initial states given (a symbol
    model generating, one step a call): the general path's bits (a fresh
    network's), at 1 and 2 threads, with outputs at every step or the last;
    tokens out of the vocabulary, or weights not finite, take the general
    path and its error."""
    from pyx_rnn.tokens import TokenInput
    rng = np.random.default_rng(8)
    V, lengths = 6, [4, 1, 3]
    pk = Packing.from_lengths(lengths)

    def tokens():
        return TokenInput(rng.integers(0, V, pk.n_rows).astype(np.intp),
                          rng.uniform(0.5, 1.5, pk.n_rows).astype(dtype))

    def network():
        net = Network(cell, V, hidden, 3, dtype=dtype, token_input=True, **kw)
        net.init_weights(np.random.default_rng(2))
        return net

    for n_threads in (1, 2):
        for rs in (False, True):
            net = network()
            how = dict(return_sequences=rs, n_threads=n_threads)
            X = tokens()
            states = net.forward(X, pk, **how)[2]
            net.forward(X, pk, initial_state=states, **how)
            assert net._local.pool["inference"] is not None
            for given in (None, states):
                X = tokens()
                got = _forward_ready(net, monkeypatch, X, pk,
                                     initial_state=given, **how)
                want = network().forward(X, pk, initial_state=given, **how)
                _assert_same_outputs(got, want, net)
    plan = net._local.pool["inference"]
    outside = TokenInput(np.full(pk.n_rows, V, np.intp), np.ones(pk.n_rows, dtype))
    with pytest.raises(ValueError, match="X.ids"):
        net.forward(outside, pk)
    bad = tokens()
    bad.weights[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.forward(bad, pk)
    assert net._local.pool["inference"] is plan


# ---------------------------------------------------------------------------
# 12. training plan
# ---------------------------------------------------------------------------

def _loss_gradient_ready(net, monkeypatch, *args, **kw):
    """``net.loss_gradient`` that must not take the general path: the
    training plan answers it, or the general path's first check raises."""
    def general(*a, **k):
        raise AssertionError("loss_gradient took the general path")
    with monkeypatch.context() as m:
        m.setattr(Network, "_layer_args_checked", general)
        return net.loss_gradient(*args, **kw)


def _fresh_result(net, *args, **kw):
    """``loss_gradient`` on a fresh copy of ``net`` (no buffers, no plan):
    the loss, the gradients and the final states."""
    fresh = pickle.loads(pickle.dumps(net))
    for name, w in net.weights.items():
        fresh.weights[name][...] = w     # replaced arrays too
    value, states = fresh.loss_gradient(*args, **kw)
    return value, fresh.grad_views, flat_states(states, fresh)


def _assert_same_training(got, want, net):
    value, states = got
    assert value == want[0]
    for name, g in net.grad_views.items():
        assert_array_equal(g, want[1][name], strict=True, err_msg=name)
    for a, b in zip(flat_states(states, net), want[2], strict=True):
        assert_array_equal(a, b, strict=True)


# a batch size (10 sequences) in three packings: the first's rows are the
# most; fewer rows; equal lengths
PLAN_LENGTHS = ([7, 3, 9, 1, 5, 9, 2, 6, 4, 8], [2, 3, 4, 1, 5, 1, 2, 6, 4, 3],
                [4] * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell, hidden, kw", READY_CASES)
def test_training_plan_gives_the_same_bits(cell, hidden, kw, rs, dtype,
                                           monkeypatch):
    """From the second call in a row of one batch size, loss_gradient runs a
    plan made ready from the checked call: the loss, every gradient and
    every final state are the general path's bits (a fresh network's), on
    batches of that size with other lengths (fewer rows, equal lengths),
    with and without sample weights, with the L2 penalty, after the
    parameters changed in place, at 1 and 2 threads and with a given block
    size, with dropout between layers and with recurrent dropout (the same
    masks: the random stream is left where the general path leaves it);
    the states are new arrays at each call."""
    rng = np.random.default_rng(5)
    batches = [make_batch(lengths, seed=s, dtype=dtype, n_in=5)
               for s, lengths in enumerate(PLAN_LENGTHS)]
    targets = [make_targets("squared_error", n_targets(pk, rs), 2, rng, dtype)
               for _, pk in batches]
    weights = rng.random(10) + 0.5
    net = Network(cell, 5, hidden, 2, dtype=dtype, **kw)
    net.init_weights(rng)
    for n_threads, block_rows, recurrent in ((1, None, 0.0), (2, None, 0.0),
                                             (2, 3, 0.0), (1, None, 0.25),
                                             (2, 3, 0.4)):
        how = dict(return_sequences=rs, alpha=1e-3, n_threads=n_threads,
                   block_rows=block_rows, recurrent_dropout=recurrent)
        net._pool = {}
        (X, pk), T = batches[0], targets[0]
        for _ in range(2):
            net.loss_gradient(X, pk, T, "squared_error",
                              rng=np.random.default_rng(9), **how)
        assert net._pool["training"] is not None
        last = None
        for i, dropout in ((0, 0.0), (1, 0.0), (2, 0.3), (0, 0.5)):
            (X, pk), T = batches[i], targets[i]
            sw = weights if i % 2 else None
            args = (X, pk, T, "squared_error")
            streams = [np.random.default_rng(i) for _ in range(2)]
            got = _loss_gradient_ready(net, monkeypatch, *args, sample_weight=sw,
                                       dropout=dropout, rng=streams[0], **how)
            _assert_same_training(got, _fresh_result(
                net, *args, sample_weight=sw, dropout=dropout, rng=streams[1],
                **how), net)
            assert streams[0].random() == streams[1].random()
            if last is not None:
                assert not np.shares_memory(got[1][-1][0][0], last)
            last = got[1][-1][0][0]
            net.params += (0.01 * rng.standard_normal(net.params.shape)).astype(dtype)


@pytest.mark.parametrize("rs", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("loss, activation",
                         [("log_loss", "softmax"), ("binary_log_loss", "sigmoid"),
                          ("squared_error", "tanh")])
def test_training_plan_takes_every_loss(loss, activation, rs, monkeypatch):
    """The plan's output layer and loss are the general path's, for every
    loss and output activation (class indices for the log loss too)."""
    rng = np.random.default_rng(6)
    net = Network("lstm", 5, (6, 4), 3, output_activation=activation,
                  dtype=np.float64)
    net.init_weights(rng)
    for X, pk in (make_batch(lengths, seed=s, n_in=5)
                  for s, lengths in enumerate(PLAN_LENGTHS)):
        T = make_targets(loss, n_targets(pk, rs), 3, rng)
        for T in ((T, T.argmax(axis=1)) if loss == "log_loss" else (T,)):
            args = (X, pk, T, loss)
            for _ in range(2):
                net.loss_gradient(*args, return_sequences=rs)
            got = _loss_gradient_ready(net, monkeypatch, *args, return_sequences=rs)
            _assert_same_training(got, _fresh_result(net, *args,
                                                     return_sequences=rs), net)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell, hidden, kw", READY_CASES)
def test_training_step_runs_the_batch_in_one_call(cell, hidden, kw, dtype,
                                                  monkeypatch):
    """The plan's common batch (the squared error of an identity output
    layer on the final states, no dropout) is one compiled call,
    ``_cells.TrainingStep``: neither the general path nor the plan's
    Python steps run, and the loss, the gradients and the final states
    are the general path's bits, with the L2 penalty, with sample weights
    and without, at 1 and 2 threads and with a given block size, for a
    narrow output layer (the gradient's own loops) and a wide one (the
    packed product), on packings of fewer rows and of equal lengths. The
    calls the step does not take (dropout, targets of another dtype or
    layout) still get the same bits from the plan."""
    from pyx_rnn import network
    rng = np.random.default_rng(21)
    batches = [make_batch(lengths, seed=s, dtype=dtype, n_in=5)
               for s, lengths in enumerate(PLAN_LENGTHS)]
    python_steps = []
    monkeypatch.setattr(network, "loss_and_gradient",
                        lambda *a, _f=network.loss_and_gradient:
                        python_steps.append(1) or _f(*a))
    for n_out in (2, _dense.NARROW_COLUMNS + 3):
        net = Network(cell, 5, hidden, n_out, dtype=dtype, **kw)
        net.init_weights(rng)
        targets = [rng.standard_normal((10, n_out)).astype(dtype) for _ in batches]
        for n_threads, block_rows in ((1, None), (2, None), (2, 3)):
            how = dict(alpha=1e-3, n_threads=n_threads, block_rows=block_rows)
            net._pool = {}
            for _ in range(2):
                net.loss_gradient(*batches[0], targets[0], "squared_error", **how)
            assert net._pool["training"].step is not None
            for i, ((X, pk), T) in enumerate(zip(batches, targets)):
                sw = rng.random(10) + 0.5 if i % 2 else None
                python_steps.clear()
                got = _loss_gradient_ready(net, monkeypatch, X, pk, T,
                                           "squared_error", sample_weight=sw,
                                           **how)
                assert python_steps == []
                _assert_same_training(got, _fresh_result(
                    net, X, pk, T, "squared_error", sample_weight=sw, **how), net)
                net.params += (0.01 * rng.standard_normal(net.params.shape)
                               ).astype(dtype)
            (X, pk), T = batches[1], targets[1]
            for other in (dict(dropout=0.2, rng=np.random.default_rng(3)),
                          dict(targets=T.astype(np.float32 if dtype == np.float64
                                                else np.float64)),
                          dict(targets=np.asfortranarray(T))):
                args = dict(how, **other)
                target = args.pop("targets", T)
                want = _fresh_result(net, X, pk, target, "squared_error",
                                     **dict(args, rng=np.random.default_rng(3)))
                python_steps.clear()
                got = _loss_gradient_ready(net, monkeypatch, X, pk, target,
                                           "squared_error", **args)
                assert python_steps == [1]
                _assert_same_training(got, want, net)


def test_training_step_checks_what_it_reads():
    """``TrainingStep.run`` checks the sizes it reads before any kernel
    runs (the plan passes only what fits; these are its own guards): the
    targets' shape, a weight per sequence, one pair of states per layer of
    the right shapes, the input's width and rows; the gradients are left as
    they were."""
    X, pk = make_batch([4, 6, 2])
    T = np.zeros((3, 2))
    net = make_net("lstm", (5, 4), 2)
    for _ in range(2):
        value, _ = net.loss_gradient(X, pk, T, "squared_error")
    step = net._pool["training"].step
    grads = net.grads.copy()
    states = [(np.zeros((3, 5)), np.zeros((3, 5))), (np.zeros((3, 4)),
                                                     np.zeros((3, 4)))]
    bs, off, starts = pk.batch_sizes, pk.offsets, np.empty(0, np.intp)
    w = np.ones(3)
    with pytest.raises(ValueError, match=r"targets of shape \(3, 1\)"):
        step.run(X, bs, off, starts, np.zeros((3, 1)), w, 3.0, states)
    with pytest.raises(ValueError, match="2 weights for 3 sequences"):
        step.run(X, bs, off, starts, T, w[:2], 3.0, states)
    with pytest.raises(ValueError, match="1 states for 2 layers"):
        step.run(X, bs, off, starts, T, w, 3.0, states[:1])
    with pytest.raises(ValueError, match="states of shapes"):
        step.run(X, bs, off, starts, T, w, 3.0, [states[0], states[0]])
    with pytest.raises(ValueError, match="for 12 packed rows of 3 features"):
        step.run(X[:11], bs, off, starts, T, w, 3.0, states)
    assert_array_equal(net.grads, grads, strict=True)
    net.grads[:] = 7.0
    assert step.run(X, bs, off, starts, T, w, 3.0, states) == value
    assert_array_equal(net.grads, grads, strict=True)


def test_training_plan_only_where_it_applies(monkeypatch):
    """No plan for calls alternating between two batch sizes, with
    truncated BPTT or initial states, nor for a bidirectional, Jordan or
    token network; a plan serves only calls of its kind (with recurrent
    dropout or without)."""
    X, pk = make_batch([4, 6, 2])
    X2, pk2 = make_batch([3, 5])
    T, T2 = np.zeros((3, 2)), np.zeros((2, 2))
    net = make_net("gru", (5,), 2)
    for _ in range(3):
        net.loss_gradient(X, pk, T, "squared_error")
        net.loss_gradient(X2, pk2, T2, "squared_error")
    assert net._pool.get("training") is None
    h0 = [[(np.zeros((3, 5)), np.zeros((3, 5)))]] * 2
    for kw in (dict(tbptt=(2, 3)), dict(initial_state=h0)):
        other = make_net("lstm", (5, 5), 2)
        for _ in range(3):
            other.loss_gradient(X, pk, T, "squared_error", **kw)
        assert other._pool.get("training") is None, kw
    for cell, kw in (("lstm", dict(bidirectional=True)), ("jordan", {})):
        other = make_net(cell, (5,), 2, **kw)
        for _ in range(3):
            other.loss_gradient(X, pk, T, "squared_error")
        assert other._pool.get("training") is None
    tokens = Network("lstm", 4, (3,), 2, token_input=True)
    from pyx_rnn.tokens import TokenInput
    ids = TokenInput(np.zeros(pk.n_rows, np.intp), np.ones(pk.n_rows))
    for _ in range(3):
        tokens.loss_gradient(ids, pk, T, "squared_error")
    assert tokens._pool.get("training") is None
    net = make_net("lstm", (5,), 2)
    for _ in range(2):
        net.loss_gradient(X, pk, T, "squared_error")
    assert net._pool.get("training") is not None
    with pytest.raises(AssertionError, match="general path"):
        _loss_gradient_ready(net, monkeypatch, X, pk, T, "squared_error",
                             recurrent_dropout=0.1, rng=np.random.default_rng(0))
    masked = dict(recurrent_dropout=0.1, rng=np.random.default_rng(0))
    for _ in range(2):
        net.loss_gradient(X, pk, T, "squared_error", **masked)
    _loss_gradient_ready(net, monkeypatch, X, pk, T, "squared_error", **masked)
    with pytest.raises(AssertionError, match="general path"):
        _loss_gradient_ready(net, monkeypatch, X, pk, T, "squared_error")


def test_dropout_needs_a_rate_below_one_and_a_generator():
    """``loss_gradient`` with dropout refuses a rate outside [0, 1) (a rate
    of 1 would scale the kept units by 1/0) and a missing generator (which
    used to fail with an AttributeError from inside the mask draw, for
    recurrent dropout), naming the fix, before any kernel runs and
    leaving the gradients as they were; without dropout no generator is
    needed."""
    X, pk = make_batch([4, 6, 2])
    T = np.zeros((3, 2))
    net = make_net("lstm", (5,), 2)
    net.loss_gradient(X, pk, T, "squared_error")
    grads = net.grads.copy()
    rng = np.random.default_rng(0)
    for kw in (dict(dropout=1.0), dict(dropout=-0.1), dict(recurrent_dropout=1.0),
               dict(recurrent_dropout="0.5"), dict(dropout=np.nan)):
        with pytest.raises(ValueError, match=r"in \[0, 1\)"):
            net.loss_gradient(X, pk, T, "squared_error", rng=rng, **kw)
    for kw in (dict(dropout=0.2), dict(recurrent_dropout=0.2, rng=0)):
        with pytest.raises(TypeError, match="numpy.random.Generator"):
            net.loss_gradient(X, pk, T, "squared_error", **kw)
    assert_array_equal(net.grads, grads, strict=True)


def test_training_plan_reads_sequences_where_they_lie(monkeypatch):
    """A ``SequenceInput`` batch (as the estimators pass) is packed by the
    plan itself, with the general path's bits; input it cannot read as it
    lies (starts of another integer type, data of another dtype) takes the
    general path, with the same results, and bad input gets the general
    path's errors: a sequence outside the data, NaN."""
    rng = np.random.default_rng(12)
    # the first batch has the most rows: the plan's buffers hold the others
    lengths = [[6, 6, 6, 6], [4, 6, 2, 5], [3, 1, 6, 2]]
    flat = rng.standard_normal((40, N_IN))
    T = rng.standard_normal((4, 2))
    net = make_net("gru", (5,), 2)
    read_in_place = []
    monkeypatch.setattr(Network, "_read_in_place",
                        lambda *a, _f=Network._read_in_place, **k:
                        read_in_place.append(1) or _f(*a, **k))

    def batch(i, starts_dtype=np.intp, data=flat):
        pk = Packing.from_lengths(lengths[i])
        starts = (np.array([0, 10, 20, 30]) + i)[pk.order].astype(starts_dtype)
        return SequenceInput(data, starts), pk

    for _ in range(2):
        net.loss_gradient(*batch(0), T, "squared_error")
    assert net._pool["training"] is not None
    for i in (1, 2, 0):
        want = _fresh_result(net, *batch(i), T, "squared_error")
        read_in_place.clear()
        _assert_same_training(
            _loss_gradient_ready(net, monkeypatch, *batch(i), T, "squared_error"),
            want, net)
        assert read_in_place == []
    for args in (batch(1, np.int32), batch(1, data=np.asfortranarray(flat))):
        want = _fresh_result(net, *args, T, "squared_error")
        read_in_place.clear()
        _assert_same_training(net.loss_gradient(*args, T, "squared_error"), want,
                              net)
        assert read_in_place == [1]
    X, pk = batch(0)
    with pytest.raises(ValueError, match="each sequence must lie wholly in data"):
        net.loss_gradient(SequenceInput(flat[:33], X.starts), pk, T,
                          "squared_error")
    bad = flat.copy()
    bad[21, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.loss_gradient(SequenceInput(bad, X.starts), pk, T, "squared_error")


def test_training_plan_checks_each_call(monkeypatch):
    """With a plan made, each call's input is still checked (the same
    errors: values, dtype); calls it cannot serve take the general path,
    with its results: another thread count, more rows than the plan's
    buffers (the plan is then made again, for them), a replaced parameter
    or gradient array."""
    rng = np.random.default_rng(8)
    (X, pk), (X_long, pk_long) = (make_batch(lengths, seed=s) for s, lengths in
                                  enumerate(([4, 6, 2], [9, 6, 8])))
    T = rng.standard_normal((3, 2))
    net = make_net("lstm", (5, 4), 2)
    for _ in range(2):
        net.loss_gradient(X, pk, T, "squared_error")
    plan = net._pool["training"]
    bad = X.copy()
    bad[-1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.loss_gradient(bad, pk, T, "squared_error")
    with pytest.raises(ValueError, match="NaN or infinity"):
        # the longest sequence read from the last rows
        starts = np.array([len(bad) - pk.lengths[0], 0, 0])
        net.loss_gradient(SequenceInput(bad, starts), pk, T, "squared_error")
    with pytest.raises(TypeError, match="has dtype float32"):
        net.loss_gradient(X.astype(np.float32), pk, T, "squared_error")
    assert net._pool["training"] is plan
    general = []
    monkeypatch.setattr(Network, "_layer_args_checked",
                        lambda *a, _f=Network._layer_args_checked, **k:
                        general.append(1) or _f(*a, **k))
    for args, kw in (((X_long, pk_long), {}), ((X, pk), dict(n_threads=2))):
        want = _fresh_result(net, *args, T, "squared_error", **kw)
        general.clear()
        _assert_same_training(net.loss_gradient(*args, T, "squared_error", **kw),
                              want, net)
        assert general == [1]
        if kw:
            continue
        # made again at once for the longer batch (the plan's key): it
        # serves both
        assert net._pool["training"] is not plan
        for args in ((X_long, pk_long), (X, pk)):
            want = _fresh_result(net, *args, T, "squared_error")
            general.clear()
            _assert_same_training(net.loss_gradient(*args, T, "squared_error"),
                                  want, net)
            assert general == []
    for views in ("weights", "grad_views"):
        name = "bias_hh_l1"
        v = getattr(net, views)
        # (a replaced gradient array is added to, not zeroed first)
        v[name] = v[name].copy() if views == "weights" else np.zeros_like(v[name])
        want = _fresh_result(net, X, pk, T, "squared_error")
        general.clear()
        _assert_same_training(net.loss_gradient(X, pk, T, "squared_error"), want,
                              net)
        assert general == [1]
