"""Tests of the plain NumPy reference (pyx_rnn/reference.py).

1. Gradients of every cell and option combination agree with central finite
   differences (float64).
2. Forward values and gradients agree with PyTorch: torch.nn.RNN / LSTM / GRU
   (including the reverse direction of a bidirectional layer and a stacked
   bidirectional layer), and, for the options PyTorch lacks (layer norm,
   peepholes, recurrent-dropout masks, GRU with reset before the product,
   Jordan networks), with a direct per-step transcription of docs/engine.md in
   torch autograd.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
from _shared import numerical_gradient
from numpy.testing import assert_allclose

try:
    from pyx_rnn import reference as ref
except ImportError:  # the package __init__ may need compiled modules
    _path = pathlib.Path(__file__).resolve().parents[1] / "pyx_rnn" / "reference.py"
    _spec = importlib.util.spec_from_file_location("_pyx_rnn_reference", _path)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)


T, I, H = 5, 3, 4
FD_EPS = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-8
P_DROP = 0.3


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def make_mask(rng, size):
    """A recurrent-dropout mask with at least one dropped and one kept entry."""
    keep = rng.random(size) > P_DROP
    keep[0], keep[1] = False, True
    return keep / (1 - P_DROP)



def check_gradients(loss, arrays, analytic):
    """Compare ``analytic[name]`` with finite differences for every array."""
    assert set(arrays) == set(analytic), (sorted(arrays), sorted(analytic))
    for name, array in arrays.items():
        assert analytic[name].shape == array.shape, name
        numeric = numerical_gradient(loss, array, FD_EPS)
        assert np.any(numeric != 0), f"{name}: loss does not depend on it"
        assert_allclose(analytic[name], numeric, rtol=FD_RTOL, atol=FD_ATOL,
                        err_msg=f"gradient of {name}")


def cell_forward(cell, x, params, h0, c0, opts):
    """Run the reference forward; returns (hidden states, final states, cache)."""
    if cell == "rnn":
        hs, cache = ref.rnn_forward(x, params, h0, **opts)
        return hs, (hs[-1],), cache
    if cell == "lstm":
        hs, cs, cache = ref.lstm_forward(x, params, h0, c0, **opts)
        return hs, (hs[-1], cs[-1]), cache
    hs, cache = ref.gru_forward(x, params, h0, **opts)
    return hs, (hs[-1],), cache


def cell_backward(cell, dH, d_final, cache):
    if cell == "lstm":
        return ref.lstm_backward(dH, d_final[0], d_final[1], cache)
    backward = ref.rnn_backward if cell == "rnn" else ref.gru_backward
    return backward(dH, d_final[0], cache)


def make_cell_case(cell, seed, *, peephole=False, layer_norm=False, masked=False,
                   n_steps=T, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = ref.init_params(cell, I, H, peephole=peephole, layer_norm=layer_norm,
                             rng=rng, dtype=dtype)
    x = rng.standard_normal((n_steps, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, H).astype(dtype)
    c0 = rng.uniform(-0.5, 0.5, H).astype(dtype) if cell == "lstm" else None
    mask = make_mask(rng, H).astype(dtype) if masked else None
    return rng, params, x, h0, c0, mask


CELL_CASES = (
    [("rnn", dict(activation=act), {}) for act in ("tanh", "relu")]
    + [("lstm", {}, dict(peephole=pp)) for pp in (False, True)]
    + [("gru", dict(reset_after=ra), {}) for ra in (True, False)]
)


def _case_id(case):
    cell, opts, init = case
    return "-".join([cell] + [f"{k}={v}" for k, v in {**opts, **init}.items()])


# ---------------------------------------------------------------------------
# 1. finite differences
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
@pytest.mark.parametrize("case", CELL_CASES, ids=_case_id)
def test_cell_gradients_match_finite_differences(case, layer_norm, masked):
    cell, opts, init = case
    opts = dict(opts, layer_norm=layer_norm)
    for seed in range(100):
        rng, params, x, h0, c0, mask = make_cell_case(
            cell, seed, layer_norm=layer_norm, masked=masked, **init)
        hs, finals, cache = cell_forward(cell, x, params, h0, c0, dict(opts, mask=mask))
        if opts.get("activation") != "relu":
            break
        # finite differences are invalid near the kink of relu
        preacts = np.array([step["preact"] for step in cache["steps"]])
        if np.min(np.abs(preacts)) > 1e-4 and np.mean(hs > 0) > 0.3:
            break
    else:
        pytest.fail("no seed without relu kinks")

    R = rng.standard_normal(hs.shape)
    r_final = [rng.standard_normal(H) for _ in finals]

    arrays = dict(params, x=x, h0=h0)
    if cell == "lstm":
        arrays["c0"] = c0

    def loss():
        hs, finals, _ = cell_forward(cell, x, params, h0, c0, dict(opts, mask=mask))
        return np.sum(R * hs) + sum(np.sum(r * f) for r, f in zip(r_final, finals))

    grads = cell_backward(cell, R, r_final, cache)
    check_gradients(loss, arrays, grads)


JORDAN_CASES = [
    (hidden, out_act)
    for hidden in ((4,), (4, 3))
    for out_act in ("identity", "tanh", "sigmoid", "softmax")
]


def make_jordan_case(seed, hidden, *, layer_norm=False, masked=False, n_out=3,
                     dtype=np.float64):
    rng = np.random.default_rng(seed)
    layers, output = ref.jordan_init(I, hidden, n_out, layer_norm=layer_norm,
                                     rng=rng, dtype=dtype)
    x = rng.standard_normal((T, I)).astype(dtype)
    fed_sizes = list(hidden[1:]) + [n_out]
    f0 = [rng.uniform(-0.5, 0.5, F).astype(dtype) for F in fed_sizes]
    masks = [make_mask(rng, F).astype(dtype) for F in fed_sizes] if masked else None
    return rng, layers, output, x, f0, masks


def _jordan_fd_check(hidden, out_act, layer_norm, masked, activation="tanh"):
    kw = dict(activation=activation, output_activation=out_act, layer_norm=layer_norm)
    for seed in range(100):
        rng, layers, output, x, f0, masks = make_jordan_case(
            seed, hidden, layer_norm=layer_norm, masked=masked)
        Y, Hs, cache = ref.jordan_forward(x, layers, output, masks=masks, f0=f0, **kw)
        if activation != "relu":
            break
        preacts = np.concatenate([a for step in cache["steps"] for a in step["preact"]])
        if np.min(np.abs(preacts)) > 1e-4 and np.mean(preacts > 0) > 0.3:
            break
    else:
        pytest.fail("no seed without relu kinks")
    R = rng.standard_normal(Y.shape)

    def loss():
        Y, _, _ = ref.jordan_forward(x, layers, output, masks=masks, f0=f0, **kw)
        return np.sum(R * Y)

    layer_grads, output_grads, dx, df0 = ref.jordan_backward(R, cache)
    assert len(layer_grads) == len(layers) and len(df0) == len(layers)
    for l, (layer, g) in enumerate(zip(layers, layer_grads)):
        check_gradients(loss, {f"l{l}.{k}": v for k, v in layer.items()},
                        {f"l{l}.{k}": v for k, v in g.items()})
    check_gradients(loss, {f"out.{k}": v for k, v in output.items()},
                    {f"out.{k}": v for k, v in output_grads.items()})
    check_gradients(loss, {"x": x}, {"x": dx})
    check_gradients(loss, {f"f0[{l}]": v for l, v in enumerate(f0)},
                    {f"f0[{l}]": v for l, v in enumerate(df0)})


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
@pytest.mark.parametrize("hidden,out_act", JORDAN_CASES,
                         ids=[f"L{len(h)}-{a}" for h, a in JORDAN_CASES])
def test_jordan_gradients_match_finite_differences(hidden, out_act, layer_norm, masked):
    _jordan_fd_check(hidden, out_act, layer_norm, masked)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["noln", "ln"])
def test_jordan_relu_gradients_match_finite_differences(layer_norm):
    _jordan_fd_check((4, 3), "identity", layer_norm, True, activation="relu")


# ---------------------------------------------------------------------------
# simple properties
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CELL_CASES, ids=_case_id)
def test_mask_of_ones_is_no_mask(case):
    cell, opts, init = case
    _, params, x, h0, c0, _ = make_cell_case(cell, 1, **init)
    hs_a, fin_a, cache_a = cell_forward(cell, x, params, h0, c0, dict(opts, mask=None))
    hs_b, fin_b, cache_b = cell_forward(cell, x, params, h0, c0,
                                        dict(opts, mask=np.ones(H)))
    assert_allclose(hs_a, hs_b, rtol=0, atol=0)
    dH = np.random.default_rng(2).standard_normal(hs_a.shape)
    ga = cell_backward(cell, dH, [None] * len(fin_a), cache_a)
    gb = cell_backward(cell, dH, [None] * len(fin_b), cache_b)
    for k in ga:
        assert_allclose(ga[k], gb[k], rtol=0, atol=0, err_msg=k)


@pytest.mark.parametrize("case", CELL_CASES, ids=_case_id)
def test_mask_changes_the_result(case):
    cell, opts, init = case
    _, params, x, h0, c0, mask = make_cell_case(cell, 3, masked=True, **init)
    hs_a, _, _ = cell_forward(cell, x, params, h0, c0, dict(opts, mask=None))
    hs_b, _, _ = cell_forward(cell, x, params, h0, c0, dict(opts, mask=mask))
    # the first step already sees the masked h0
    assert np.all(np.abs(hs_a - hs_b).max(axis=1) > 1e-6)


def test_zero_peephole_equals_no_peephole():
    _, params, x, h0, c0, _ = make_cell_case("lstm", 4)
    with_pp = dict(params, peephole=np.zeros(3 * H))
    hs_a, cs_a, cache_a = ref.lstm_forward(x, params, h0, c0)
    hs_b, cs_b, cache_b = ref.lstm_forward(x, with_pp, h0, c0)
    assert_allclose(hs_a, hs_b, rtol=0, atol=0)
    assert_allclose(cs_a, cs_b, rtol=0, atol=0)
    dH = np.random.default_rng(5).standard_normal(hs_a.shape)
    ga = ref.lstm_backward(dH, None, None, cache_a)
    gb = ref.lstm_backward(dH, None, None, cache_b)
    assert "peephole" not in ga and gb["peephole"].shape == (3 * H,)
    for k in ga:
        assert_allclose(ga[k], gb[k], rtol=0, atol=0, err_msg=k)


def test_jordan_softmax_outputs_are_distributions_and_y0_is_f0_top():
    rng, layers, output, x, f0, _ = make_jordan_case(6, (4, 3))
    Y, Hs, _ = ref.jordan_forward(x, layers, output, output_activation="softmax", f0=f0)
    assert Y.shape == (T, 3) and [h.shape for h in Hs] == [(T, 4), (T, 3)]
    assert_allclose(Y.sum(axis=1), 1.0, rtol=1e-14)
    assert np.all(Y > 0)
    Y2, _, _ = ref.jordan_forward(x, layers, output, f0[-1],
                                  output_activation="softmax", f0=[f0[0], None])
    assert_allclose(Y, Y2, rtol=0, atol=0)
    with pytest.raises(ValueError):
        ref.jordan_forward(x, layers, output, f0[-1], f0=f0)


@pytest.mark.parametrize("case", CELL_CASES, ids=_case_id)
def test_computes_in_the_dtype_of_x(case):
    cell, opts, init = case
    _, params, x, h0, c0, mask = make_cell_case(cell, 7, masked=True,
                                                layer_norm=True, **init)
    opts = dict(opts, layer_norm=True, mask=mask)
    hs64, fin64, cache64 = cell_forward(cell, x, params, h0, c0, opts)
    x32 = x.astype(np.float32)
    hs32, fin32, cache32 = cell_forward(cell, x32, params, h0, c0, opts)
    assert hs32.dtype == np.float32
    assert_allclose(hs32, hs64, rtol=1e-4, atol=1e-5)
    dH = np.ones_like(hs64)
    g64 = cell_backward(cell, dH, [None] * len(fin64), cache64)
    g32 = cell_backward(cell, dH.astype(np.float32), [None] * len(fin32), cache32)
    for k in g64:
        assert g32[k].dtype == np.float32, k
        assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4, err_msg=k)


# ---------------------------------------------------------------------------
# 2. PyTorch
# ---------------------------------------------------------------------------

TORCH_T = 7
TORCH_CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)]


def _torch_module(torch, cell, activation, **kw):
    if cell == "rnn":
        return torch.nn.RNN(I, H, nonlinearity=activation, **kw).double()
    if cell == "lstm":
        return torch.nn.LSTM(I, H, **kw).double()
    return torch.nn.GRU(I, H, **kw).double()


def _copy_into(torch, module, params, suffix):
    with torch.no_grad():
        for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(module, f"{k}_{suffix}").copy_(torch.from_numpy(params[k]))


def _ref_run(cell, activation, x, params, h0, c0):
    opts = {"activation": activation} if cell == "rnn" else {}
    return cell_forward(cell, x, params, h0, c0, opts)


@pytest.mark.parametrize("cell,activation", TORCH_CELLS,
                         ids=[f"{c}-{a}" if a else c for c, a in TORCH_CELLS])
def test_matches_torch(cell, activation):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _, params, x, h0, c0, _ = make_cell_case(cell, 11, n_steps=TORCH_T)
    rng = np.random.default_rng(12)
    module = _torch_module(torch, cell, activation)
    if cell == "lstm":
        assert module.proj_size == 0  # default options
    _copy_into(torch, module, params, "l0")

    hs, finals, cache = _ref_run(cell, activation, x, params, h0, c0)

    xt = torch.tensor(x[:, None, :], requires_grad=True)
    h0t = torch.tensor(h0[None, None, :], requires_grad=True)
    if cell == "lstm":
        c0t = torch.tensor(c0[None, None, :], requires_grad=True)
        out, (hn, cn) = module(xt, (h0t, c0t))
        t_finals = (hn, cn)
    else:
        out, hn = module(xt, h0t)
        t_finals = (hn,)
    assert_allclose(out.detach().numpy()[:, 0], hs, rtol=0, atol=1e-12)
    for f_ref, f_t in zip(finals, t_finals):
        assert_allclose(f_t.detach().numpy()[0, 0], f_ref, rtol=0, atol=1e-12)

    R = rng.standard_normal(hs.shape)
    r_final = [rng.standard_normal(H) for _ in finals]
    loss = (out[:, 0] * torch.from_numpy(R)).sum()
    for r, f in zip(r_final, t_finals):
        loss = loss + (f[0, 0] * torch.from_numpy(r)).sum()
    loss.backward()
    grads = cell_backward(cell, R, r_final, cache)
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_allclose(grads[k], getattr(module, f"{k}_l0").grad.numpy(),
                        rtol=0, atol=1e-10, err_msg=k)
    assert_allclose(grads["x"], xt.grad.numpy()[:, 0], rtol=0, atol=1e-10)
    assert_allclose(grads["h0"], h0t.grad.numpy()[0, 0], rtol=0, atol=1e-10)
    if cell == "lstm":
        assert_allclose(grads["c0"], c0t.grad.numpy()[0, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell,activation", TORCH_CELLS,
                         ids=[f"{c}-{a}" if a else c for c, a in TORCH_CELLS])
def test_reverse_direction_matches_torch_bidirectional(cell, activation):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _, p_fwd, x, h0, c0, _ = make_cell_case(cell, 21, n_steps=TORCH_T)
    _, p_bwd, _, h0_b, c0_b, _ = make_cell_case(cell, 22, n_steps=TORCH_T)
    module = _torch_module(torch, cell, activation, bidirectional=True)
    _copy_into(torch, module, p_fwd, "l0")
    _copy_into(torch, module, p_bwd, "l0_reverse")

    hs_f, fin_f, _ = _ref_run(cell, activation, x, p_fwd, h0, c0)
    hs_b_flipped, fin_b, cache_b = _ref_run(cell, activation, x[::-1].copy(), p_bwd,
                                            h0_b, c0_b)
    hs_b = hs_b_flipped[::-1]

    xt = torch.tensor(x[:, None, :], requires_grad=True)
    h0t = torch.tensor(np.stack([h0, h0_b])[:, None, :], requires_grad=True)
    if cell == "lstm":
        c0t = torch.tensor(np.stack([c0, c0_b])[:, None, :], requires_grad=True)
        out, (hn, cn) = module(xt, (h0t, c0t))
        t_finals = (hn, cn)
    else:
        out, hn = module(xt, h0t)
        t_finals = (hn,)
    out_np = out.detach().numpy()[:, 0]
    assert_allclose(out_np[:, :H], hs_f, rtol=0, atol=1e-12)
    assert_allclose(out_np[:, H:], hs_b, rtol=0, atol=1e-12)
    for f_ref_f, f_ref_b, f_t in zip(fin_f, fin_b, t_finals):
        assert_allclose(f_t.detach().numpy()[0, 0], f_ref_f, rtol=0, atol=1e-12)
        assert_allclose(f_t.detach().numpy()[1, 0], f_ref_b, rtol=0, atol=1e-12)

    # gradients of a loss on the reverse direction only
    rng = np.random.default_rng(23)
    R = rng.standard_normal((TORCH_T, H))  # indexed by original time
    r_final = [rng.standard_normal(H) for _ in fin_b]
    loss = (out[:, 0, H:] * torch.from_numpy(R)).sum()
    for r, f in zip(r_final, t_finals):
        loss = loss + (f[1, 0] * torch.from_numpy(r)).sum()
    loss.backward()
    grads = cell_backward(cell, R[::-1].copy(), r_final, cache_b)
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_allclose(grads[k], getattr(module, f"{k}_l0_reverse").grad.numpy(),
                        rtol=0, atol=1e-10, err_msg=k)
        assert_allclose(getattr(module, f"{k}_l0").grad.numpy(), 0, atol=0)
    assert_allclose(grads["x"][::-1], xt.grad.numpy()[:, 0], rtol=0, atol=1e-10)
    assert_allclose(grads["h0"], h0t.grad.numpy()[1, 0], rtol=0, atol=1e-10)
    if cell == "lstm":
        assert_allclose(grads["c0"], c0t.grad.numpy()[1, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stacked_bidirectional_matches_torch(cell):
    """Layer 2 reads [h_fwd, h_bwd] of layer 1 (docs: stacks and directions)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    rng = np.random.default_rng(31)
    x = rng.standard_normal((TORCH_T, I))
    module = _torch_module(torch, cell, None, bidirectional=True, num_layers=2)
    layer_params = {}
    for layer, n_in in ((0, I), (1, 2 * H)):
        for suffix in (f"l{layer}", f"l{layer}_reverse"):
            layer_params[suffix] = ref.init_params(cell, n_in, H, rng=rng)
            _copy_into(torch, module, layer_params[suffix], suffix)

    inp = x
    finals = []
    for layer in (0, 1):
        hs_f, fin_f, _ = _ref_run(cell, None, inp, layer_params[f"l{layer}"],
                                  None, None)
        hs_b, fin_b, _ = _ref_run(cell, None, inp[::-1].copy(),
                                  layer_params[f"l{layer}_reverse"], None, None)
        inp = np.concatenate([hs_f, hs_b[::-1]], axis=1)
        finals += [fin_f[0], fin_b[0]]
    out, state = module(torch.from_numpy(x[:, None, :]))
    hn = state[0] if cell == "lstm" else state
    assert_allclose(out.detach().numpy()[:, 0], inp, rtol=0, atol=1e-12)
    assert_allclose(hn.detach().numpy()[:, 0], np.stack(finals), rtol=0, atol=1e-12)


# --- options PyTorch lacks: the equations of docs/engine.md in torch autograd ---

def _torch_ln(torch, s, params, k, layer_norm):
    if not layer_norm:
        return s
    block = slice(k * H, (k + 1) * H)
    return torch.nn.functional.layer_norm(s, (H,), params["ln_weight"][block],
                                          params["ln_bias"][block], eps=1e-5)


def _torch_doc_cell(torch, cell, x, p, h0, c0, mask, *, activation="tanh",
                    layer_norm=False, reset_after=True):
    """docs/engine.md, transcribed literally, one step at a time."""
    sig = torch.sigmoid
    m = torch.ones(H, dtype=torch.float64) if mask is None else torch.from_numpy(mask)
    h, c = h0, c0
    hs, cs = [], []
    for t in range(x.shape[0]):
        if cell == "rnn":
            s = (p["weight_ih"] @ x[t] + p["bias_ih"]
                 + p["weight_hh"] @ (m * h) + p["bias_hh"])
            s = _torch_ln(torch, s, p, 0, layer_norm)
            h = torch.tanh(s) if activation == "tanh" else torch.relu(s)
        elif cell == "lstm":
            s = (p["weight_ih"] @ x[t] + p["bias_ih"]
                 + p["weight_hh"] @ (m * h) + p["bias_hh"])
            s_i, s_f, s_g, s_o = s.split(H)
            pp = p.get("peephole", torch.zeros(3 * H, dtype=torch.float64))
            p_i, p_f, p_o = pp.split(H)
            i = sig(_torch_ln(torch, s_i + p_i * c, p, 0, layer_norm))
            f = sig(_torch_ln(torch, s_f + p_f * c, p, 1, layer_norm))
            g = torch.tanh(_torch_ln(torch, s_g, p, 2, layer_norm))
            c = f * c + i * g
            o = sig(_torch_ln(torch, s_o + p_o * c, p, 3, layer_norm))
            h = o * torch.tanh(c)
            cs.append(c)
        else:
            x_r, x_z, x_n = (p["weight_ih"] @ x[t] + p["bias_ih"]).split(H)
            W, b = p["weight_hh"], p["bias_hh"]
            if reset_after:
                a_r, a_z, a_n = (W @ (m * h) + b).split(H)
            else:
                a_r, a_z = (W[:2 * H] @ (m * h) + b[:2 * H]).split(H)
            r = sig(_torch_ln(torch, x_r + a_r, p, 0, layer_norm))
            z = sig(_torch_ln(torch, x_z + a_z, p, 1, layer_norm))
            if reset_after:
                n = torch.tanh(_torch_ln(torch, x_n + r * a_n, p, 2, layer_norm))
            else:
                s_n = x_n + W[2 * H:] @ (r * m * h) + b[2 * H:]
                n = torch.tanh(_torch_ln(torch, s_n, p, 2, layer_norm))
            h = (1 - z) * n + z * h
        hs.append(h)
    return torch.stack(hs), (torch.stack(cs) if cs else None)


DOC_CASES = [
    (cell, opts, init, ln, masked)
    for (cell, opts, init) in CELL_CASES + [("lstm", {}, dict(peephole=True))]
    for ln in (False, True)
    for masked in (False, True)
]


@pytest.mark.parametrize(
    "cell,opts,init,layer_norm,masked", DOC_CASES,
    ids=[f"{_case_id(c[:3])}-ln={c[3]}-mask={c[4]}" for c in DOC_CASES])
def test_matches_torch_transcription_of_docs(cell, opts, init, layer_norm, masked):
    torch = pytest.importorskip("torch")
    _, params, x, h0, c0, mask = make_cell_case(cell, 41, layer_norm=layer_norm,
                                                masked=masked, n_steps=TORCH_T, **init)
    opts = dict(opts, layer_norm=layer_norm)
    hs, finals, cache = cell_forward(cell, x, params, h0, c0, dict(opts, mask=mask))

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = torch.tensor(c0, requires_grad=True) if cell == "lstm" else None
    hs_t, cs_t = _torch_doc_cell(torch, cell, xt, tp, h0t, c0t, mask, **opts)
    assert_allclose(hs_t.detach().numpy(), hs, rtol=0, atol=1e-12)
    if cell == "lstm":
        assert_allclose(cs_t.detach().numpy(), cache["cs"], rtol=0, atol=1e-12)

    rng = np.random.default_rng(42)
    R = rng.standard_normal(hs.shape)
    r_final = [rng.standard_normal(H) for _ in finals]
    t_finals = [hs_t[-1]] + ([cs_t[-1]] if cell == "lstm" else [])
    loss = (hs_t * torch.from_numpy(R)).sum()
    for r, f in zip(r_final, t_finals):
        loss = loss + (f * torch.from_numpy(r)).sum()
    loss.backward()
    grads = cell_backward(cell, R, r_final, cache)
    expected = {k: v.grad.numpy() for k, v in tp.items()}
    expected.update(x=xt.grad.numpy(), h0=h0t.grad.numpy())
    if cell == "lstm":
        expected["c0"] = c0t.grad.numpy()
    assert set(grads) == set(expected)
    for k in expected:
        assert_allclose(grads[k], expected[k], rtol=0, atol=1e-10, err_msg=k)


def _torch_doc_jordan(torch, x, layers, output, f0, masks, activation, out_act,
                      layer_norm):
    L = len(layers)
    act = torch.tanh if activation == "tanh" else torch.relu
    fed = list(f0)  # fed[l] = f^l_{t-1}
    Ys, Hs = [], [[] for _ in range(L)]
    for t in range(x.shape[0]):
        inp = x[t]
        hs_t = []
        for l, p in enumerate(layers):
            m = torch.ones(fed[l].shape[0], dtype=torch.float64) if masks is None \
                else torch.from_numpy(masks[l])
            s = (p["weight_ih"] @ inp + p["bias_ih"]
                 + p["weight_hh"] @ (m * fed[l]) + p["bias_hh"])
            if layer_norm:
                s = torch.nn.functional.layer_norm(s, s.shape, p["ln_weight"],
                                                   p["ln_bias"], eps=1e-5)
            inp = act(s)
            hs_t.append(inp)
            Hs[l].append(inp)
        z = output["weight"] @ inp + output["bias"]
        y = {"identity": lambda v: v, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
             "softmax": lambda v: torch.softmax(v, 0)}[out_act](z)
        Ys.append(y)
        fed = hs_t[1:] + [y]
    return torch.stack(Ys), [torch.stack(h) for h in Hs]


@pytest.mark.parametrize("layer_norm,masked", [(False, False), (True, True)])
@pytest.mark.parametrize("hidden,out_act", JORDAN_CASES,
                         ids=[f"L{len(h)}-{a}" for h, a in JORDAN_CASES])
def test_jordan_matches_torch_transcription_of_docs(hidden, out_act, layer_norm,
                                                    masked):
    torch = pytest.importorskip("torch")
    _, layers, output, x, f0, masks = make_jordan_case(
        51, hidden, layer_norm=layer_norm, masked=masked)
    kw = dict(activation="tanh", output_activation=out_act, layer_norm=layer_norm)
    Y, Hs, cache = ref.jordan_forward(x, layers, output, masks=masks, f0=f0, **kw)

    tl = [{k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
          for p in layers]
    to = {k: torch.tensor(v, requires_grad=True) for k, v in output.items()}
    xt = torch.tensor(x, requires_grad=True)
    f0t = [torch.tensor(f, requires_grad=True) for f in f0]
    Yt, Hst = _torch_doc_jordan(torch, xt, tl, to, f0t, masks, "tanh", out_act,
                                layer_norm)
    assert_allclose(Yt.detach().numpy(), Y, rtol=0, atol=1e-12)
    for h_t, h in zip(Hst, Hs):
        assert_allclose(h_t.detach().numpy(), h, rtol=0, atol=1e-12)

    R = np.random.default_rng(52).standard_normal(Y.shape)
    (Yt * torch.from_numpy(R)).sum().backward()
    layer_grads, output_grads, dx, df0 = ref.jordan_backward(R, cache)
    for p_t, g in zip(tl, layer_grads):
        assert set(p_t) == set(g)
        for k in p_t:
            assert_allclose(g[k], p_t[k].grad.numpy(), rtol=0, atol=1e-10, err_msg=k)
    for k in to:
        assert_allclose(output_grads[k], to[k].grad.numpy(), rtol=0, atol=1e-10,
                        err_msg=k)
    assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-10)
    for d, f_t in zip(df0, f0t):
        assert_allclose(d, f_t.grad.numpy(), rtol=0, atol=1e-10)
