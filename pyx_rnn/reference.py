"""Plain NumPy reference implementation of the recurrent cells.

This module exists only for the tests. It implements, as plainly as possible,
the equations of ``docs/engine.md`` for ONE sequence at a time: an explicit
loop ``for t in range(T)`` for the forward pass and ``for t in reversed(range(T))``
for back-propagation through time (in the style of Karpathy's min-char-rnn).
Nothing is vectorised across time and nothing is clever; derivatives of the
non-linearities are computed from the stored outputs.

Every computation is carried out in the floating-point dtype of the input ``x``
(parameters and initial states are converted to it).

Parameters are dictionaries with PyTorch's names and shapes:

========== =========== ====================================================
key        shape       notes
========== =========== ====================================================
weight_ih  (G*H, I)    gate blocks in PyTorch's order
weight_hh  (G*H, H)    for jordan layers ``(H, F)``
bias_ih    (G*H,)
bias_hh    (G*H,)
peephole   (3*H,)      LSTM only, optional: ``p_i, p_f, p_o``
ln_weight  (G*H,)      only used with ``layer_norm=True``
ln_bias    (G*H,)      only used with ``layer_norm=True``
========== =========== ====================================================

``G`` is 1 for ``rnn`` and ``jordan``, 4 for ``lstm`` (gates i, f, g, o) and 3
for ``gru`` (gates r, z, n).
"""

import numpy as np

__all__ = [
    "rnn_forward",
    "rnn_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "jordan_forward",
    "jordan_backward",
    "init_params",
    "jordan_init",
]

#: Epsilon added to the variance in layer normalisation (as torch.nn.LayerNorm).
LN_EPS = 1e-5

_N_GATES = {"rnn": 1, "lstm": 4, "gru": 3, "jordan": 1}
_BASE_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LN_KEYS = ("ln_weight", "ln_bias")


# ---------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------

def _sigmoid(a):
    """Logistic sigmoid, written with tanh so that it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


def _activation(a, name):
    """Apply the hidden activation ``name`` ('tanh' or 'relu')."""
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0)
    raise ValueError(f"unknown activation {name!r}; expected 'tanh' or 'relu'")


def _activation_backward(dout, out, name):
    """Gradient through the hidden activation, from its stored output ``out``."""
    if name == "tanh":
        return dout * (1 - out * out)
    if name == "relu":
        return dout * (out > 0)
    raise ValueError(f"unknown activation {name!r}; expected 'tanh' or 'relu'")


def _output_activation(a, name):
    """Apply the Jordan output activation."""
    if name == "identity":
        return a.copy()
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        return _sigmoid(a)
    if name == "softmax":
        e = np.exp(a - np.max(a))
        return e / np.sum(e)
    raise ValueError(
        f"unknown output activation {name!r}; expected 'identity', 'tanh', "
        "'sigmoid' or 'softmax'")


def _output_activation_backward(dy, y, name):
    """Gradient through the Jordan output activation, from its output ``y``.

    For softmax this is the Jacobian-vector product
    ``J^T dy = y * (dy - sum(dy * y))``.
    """
    if name == "identity":
        return dy.copy()
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "softmax":
        return y * (dy - np.sum(dy * y))
    raise ValueError(f"unknown output activation {name!r}")


def _layer_norm(s, gamma, beta):
    """Layer normalisation of one gate block ``s`` (a vector of H entries).

    Returns
    -------
    out : ndarray
        ``gamma * (s - mean(s)) / sqrt(var(s) + eps) + beta`` with the biased
        variance.
    cache : tuple
        What :func:`_layer_norm_backward` needs.
    """
    mean = np.mean(s)
    centred = s - mean
    var = np.mean(centred * centred)
    inv_std = 1 / np.sqrt(var + s.dtype.type(LN_EPS))
    s_hat = centred * inv_std
    return gamma * s_hat + beta, (s_hat, inv_std, gamma)


def _layer_norm_backward(dout, cache):
    """Back-propagate through :func:`_layer_norm`.

    Returns
    -------
    ds, dgamma, dbeta : ndarray
    """
    s_hat, inv_std, gamma = cache
    dgamma = dout * s_hat
    dbeta = dout.copy()
    ds_hat = dout * gamma
    ds = inv_std * (ds_hat - np.mean(ds_hat) - s_hat * np.mean(ds_hat * s_hat))
    return ds, dgamma, dbeta


def _norm_block(u, params, k, H, layer_norm):
    """``LN_k(u)`` for gate block ``k`` (identity without layer norm)."""
    if not layer_norm:
        return u, None
    block = slice(k * H, (k + 1) * H)
    return _layer_norm(u, params["ln_weight"][block], params["ln_bias"][block])


def _norm_block_backward(dout, ln_cache, grads, k, H):
    """Gradient through ``LN_k``; accumulates into ``grads['ln_*']``."""
    if ln_cache is None:
        return dout
    block = slice(k * H, (k + 1) * H)
    du, dgamma, dbeta = _layer_norm_backward(dout, ln_cache)
    grads["ln_weight"][block] += dgamma
    grads["ln_bias"][block] += dbeta
    return du


def _prepare(x, params, n_gates, layer_norm, allow_peephole=False, name="cell"):
    """Validate the shapes and convert everything to the dtype of ``x``.

    Returns
    -------
    x : ndarray (T, I)
    params : dict of ndarray, in the dtype of x
    H : int
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (T, I), got {x.shape}")
    dtype = x.dtype
    T, I = x.shape

    allowed = set(_BASE_KEYS) | set(_LN_KEYS)
    if allow_peephole:
        allowed.add("peephole")
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unexpected parameter(s) for {name}: {sorted(unknown)}")
    missing = [k for k in _BASE_KEYS if k not in params]
    if layer_norm:
        missing += [k for k in _LN_KEYS if k not in params]
    if missing:
        raise ValueError(f"missing parameter(s) for {name}: {missing}")

    p = {k: np.asarray(v, dtype=dtype) for k, v in params.items()}
    GH = p["weight_ih"].shape[0]
    if GH % n_gates:
        raise ValueError(f"weight_ih has {GH} rows, not a multiple of {n_gates}")
    H = GH // n_gates
    expected = {
        "weight_ih": (GH, I),
        "weight_hh": (GH, H),
        "bias_ih": (GH,),
        "bias_hh": (GH,),
        "peephole": (3 * H,),
        "ln_weight": (GH,),
        "ln_bias": (GH,),
    }
    for k, v in p.items():
        if v.shape != expected[k]:
            raise ValueError(f"{name} parameter {k} has shape {v.shape}, "
                             f"expected {expected[k]}")
    return x, p, H


def _vector(v, size, dtype, what):
    """``v`` as a vector of ``size`` entries (zeros if None) in ``dtype``."""
    if v is None:
        return np.zeros(size, dtype=dtype)
    v = np.asarray(v, dtype=dtype).reshape(-1)
    if v.shape != (size,):
        raise ValueError(f"{what} must have {size} entries, got {v.size}")
    return v


def _zero_grads(params):
    """A dict of zero arrays with the keys and shapes of ``params``."""
    return {k: np.zeros_like(v) for k, v in params.items()}


def _upstream(dH, T, H, dtype):
    """``dH`` as a (T, H) array (zeros if None)."""
    if dH is None:
        return np.zeros((T, H), dtype=dtype)
    dH = np.asarray(dH, dtype=dtype)
    if dH.shape != (T, H):
        raise ValueError(f"upstream gradient must have shape {(T, H)}, got {dH.shape}")
    return dH


# ---------------------------------------------------------------------------
# Elman RNN
# ---------------------------------------------------------------------------

def rnn_forward(x, params, h0=None, *, activation="tanh", layer_norm=False, mask=None):
    """Forward pass of the Elman RNN over one sequence.

    ``s = W_ih x_t + b_ih + W_hh (m * h_{t-1}) + b_hh``,
    ``h_t = act(LN(s))``.

    Parameters
    ----------
    x : ndarray of shape (T, I)
        The input sequence; its dtype is the compute dtype.
    params : dict
        ``weight_ih`` (H, I), ``weight_hh`` (H, H), ``bias_ih`` (H,),
        ``bias_hh`` (H,) and, with layer norm, ``ln_weight``, ``ln_bias`` (H,).
    h0 : ndarray of shape (H,), optional
        Initial hidden state (zeros by default).
    activation : {'tanh', 'relu'}
    layer_norm : bool
        Normalise the pre-activation before the non-linearity.
    mask : ndarray of shape (H,), optional
        Recurrent-dropout mask ``m`` (ones by default), the same at every step.

    Returns
    -------
    H : ndarray of shape (T, H)
        The hidden states ``h_0 .. h_{T-1}``; ``H[-1]`` is the final state.
    cache : dict
        Everything :func:`rnn_backward` needs.
    """
    x, p, n_hidden = _prepare(x, params, 1, layer_norm, name="rnn")
    _activation(np.zeros(1), activation)  # validate the name early
    dtype = x.dtype
    T = x.shape[0]
    h_prev = _vector(h0, n_hidden, dtype, "h0")
    if mask is not None:
        m = _vector(mask, n_hidden, dtype, "mask")
    else:
        m = np.ones(n_hidden, dtype)

    hs = np.zeros((T, n_hidden), dtype=dtype)
    steps = []
    for t in range(T):
        masked_h_prev = m * h_prev
        s = (p["weight_ih"] @ x[t] + p["bias_ih"]
             + p["weight_hh"] @ masked_h_prev + p["bias_hh"])
        a, ln_cache = _norm_block(s, p, 0, n_hidden, layer_norm)
        h = _activation(a, activation)
        hs[t] = h
        steps.append({"masked_h_prev": masked_h_prev, "ln": ln_cache, "preact": a})
        h_prev = h

    cache = {"x": x, "params": p, "mask": m, "hs": hs, "steps": steps,
             "activation": activation, "layer_norm": layer_norm}
    return hs, cache


def rnn_backward(dH, dh_last, cache):
    """Back-propagation through time for :func:`rnn_forward`.

    Parameters
    ----------
    dH : ndarray of shape (T, H) or None
        ``dL/dh_t`` arriving from above at every step.
    dh_last : ndarray of shape (H,) or None
        ``dL/d(final state)``, added to ``dH[-1]``.
    cache : dict
        From :func:`rnn_forward`.

    Returns
    -------
    grads : dict
        One entry per key of ``params`` (same shapes), plus ``'x'`` (T, I)
        and ``'h0'`` (H,).
    """
    x, p, m, hs = cache["x"], cache["params"], cache["mask"], cache["hs"]
    dtype = x.dtype
    T, n_hidden = hs.shape
    dH = _upstream(dH, T, n_hidden, dtype)

    grads = _zero_grads(p)
    dx = np.zeros_like(x)
    dh_next = _vector(dh_last, n_hidden, dtype, "dh_last")  # dL/dh_t from later steps
    for t in reversed(range(T)):
        step = cache["steps"][t]
        dh = dH[t] + dh_next
        da = _activation_backward(dh, hs[t], cache["activation"])
        ds = _norm_block_backward(da, step["ln"], grads, 0, n_hidden)
        grads["weight_ih"] += np.outer(ds, x[t])
        grads["bias_ih"] += ds
        grads["weight_hh"] += np.outer(ds, step["masked_h_prev"])
        grads["bias_hh"] += ds
        dx[t] = p["weight_ih"].T @ ds
        dh_next = m * (p["weight_hh"].T @ ds)
    grads["x"] = dx
    grads["h0"] = dh_next
    return grads


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------

def lstm_forward(x, params, h0=None, c0=None, *, layer_norm=False, mask=None):
    """Forward pass of the LSTM (gate order i, f, g, o) over one sequence.

    ::

        s   = W_ih x_t + b_ih + W_hh (m * h_{t-1}) + b_hh
        i   = sigmoid(LN_i(s_i + p_i * c_{t-1}))
        f   = sigmoid(LN_f(s_f + p_f * c_{t-1}))
        g   = tanh(LN_g(s_g))
        c_t = f * c_{t-1} + i * g
        o   = sigmoid(LN_o(s_o + p_o * c_t))
        h_t = o * tanh(c_t)

    Parameters
    ----------
    x : ndarray of shape (T, I)
    params : dict
        ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih``, ``bias_hh``
        (4H,), optional ``peephole`` (3H,) -- peepholes are used iff this key
        is present -- and, with layer norm, ``ln_weight``, ``ln_bias`` (4H,).
    h0, c0 : ndarray of shape (H,), optional
        Initial hidden and cell states (zeros by default).
    layer_norm : bool
    mask : ndarray of shape (H,), optional
        Recurrent-dropout mask applied to ``h_{t-1}`` in the recurrent product.

    Returns
    -------
    H : ndarray of shape (T, H)
        Hidden states ``h_0 .. h_{T-1}``.
    C : ndarray of shape (T, H)
        Cell states ``c_0 .. c_{T-1}``.
    cache : dict
    """
    x, p, n_hidden = _prepare(x, params, 4, layer_norm, allow_peephole=True,
                              name="lstm")
    dtype = x.dtype
    T = x.shape[0]
    Hn = n_hidden
    h_prev = _vector(h0, Hn, dtype, "h0")
    c_prev = _vector(c0, Hn, dtype, "c0")
    m = _vector(mask, Hn, dtype, "mask") if mask is not None else np.ones(Hn, dtype)
    if "peephole" in p:
        peephole = p["peephole"]
        p_i, p_f, p_o = peephole[:Hn], peephole[Hn:2 * Hn], peephole[2 * Hn:]
    else:
        p_i = p_f = p_o = np.zeros(Hn, dtype=dtype)

    hs = np.zeros((T, Hn), dtype=dtype)
    cs = np.zeros((T, Hn), dtype=dtype)
    steps = []
    for t in range(T):
        masked_h_prev = m * h_prev
        s = (p["weight_ih"] @ x[t] + p["bias_ih"]
             + p["weight_hh"] @ masked_h_prev + p["bias_hh"])
        s_i, s_f, s_g, s_o = s[:Hn], s[Hn:2 * Hn], s[2 * Hn:3 * Hn], s[3 * Hn:]

        a_i, ln_i = _norm_block(s_i + p_i * c_prev, p, 0, Hn, layer_norm)
        a_f, ln_f = _norm_block(s_f + p_f * c_prev, p, 1, Hn, layer_norm)
        a_g, ln_g = _norm_block(s_g, p, 2, Hn, layer_norm)
        i = _sigmoid(a_i)
        f = _sigmoid(a_f)
        g = np.tanh(a_g)
        c = f * c_prev + i * g
        a_o, ln_o = _norm_block(s_o + p_o * c, p, 3, Hn, layer_norm)
        o = _sigmoid(a_o)
        tanh_c = np.tanh(c)
        h = o * tanh_c

        hs[t] = h
        cs[t] = c
        steps.append({"masked_h_prev": masked_h_prev, "c_prev": c_prev,
                      "i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c,
                      "ln": (ln_i, ln_f, ln_g, ln_o)})
        h_prev, c_prev = h, c

    cache = {"x": x, "params": p, "mask": m, "hs": hs, "cs": cs, "steps": steps,
             "peephole": (p_i, p_f, p_o), "has_peephole": "peephole" in p,
             "layer_norm": layer_norm}
    return hs, cs, cache


def lstm_backward(dH, dh_last, dc_last, cache):
    """Back-propagation through time for :func:`lstm_forward`.

    Parameters
    ----------
    dH : ndarray of shape (T, H) or None
        ``dL/dh_t`` from above at every step.
    dh_last, dc_last : ndarray of shape (H,) or None
        ``dL/d(final hidden state)`` and ``dL/d(final cell state)``.
    cache : dict
        From :func:`lstm_forward`.

    Returns
    -------
    grads : dict
        One entry per key of ``params``, plus ``'x'`` (T, I), ``'h0'`` and
        ``'c0'`` (H,).
    """
    x, p, m, hs = cache["x"], cache["params"], cache["mask"], cache["hs"]
    p_i, p_f, p_o = cache["peephole"]
    dtype = x.dtype
    T, Hn = hs.shape
    dH = _upstream(dH, T, Hn, dtype)

    grads = _zero_grads(p)
    dpeep_i = np.zeros(Hn, dtype=dtype)
    dpeep_f = np.zeros(Hn, dtype=dtype)
    dpeep_o = np.zeros(Hn, dtype=dtype)
    dx = np.zeros_like(x)
    dh_next = _vector(dh_last, Hn, dtype, "dh_last")
    dc_next = _vector(dc_last, Hn, dtype, "dc_last")
    for t in reversed(range(T)):
        st = cache["steps"][t]
        i, f, g, o = st["i"], st["f"], st["g"], st["o"]
        tanh_c, c_prev = st["tanh_c"], st["c_prev"]
        ln_i, ln_f, ln_g, ln_o = st["ln"]
        c = cache["cs"][t]

        dh = dH[t] + dh_next
        dc = dc_next.copy()

        # h = o * tanh(c)
        do = dh * tanh_c
        dc += dh * o * (1 - tanh_c * tanh_c)
        # o = sigmoid(LN_o(s_o + p_o * c))
        du_o = _norm_block_backward(do * o * (1 - o), ln_o, grads, 3, Hn)
        dpeep_o += du_o * c
        dc += du_o * p_o
        # c = f * c_prev + i * g
        di = dc * g
        dg = dc * i
        df = dc * c_prev
        dc_prev = dc * f
        # gates i, f, g
        du_i = _norm_block_backward(di * i * (1 - i), ln_i, grads, 0, Hn)
        du_f = _norm_block_backward(df * f * (1 - f), ln_f, grads, 1, Hn)
        du_g = _norm_block_backward(dg * (1 - g * g), ln_g, grads, 2, Hn)
        dpeep_i += du_i * c_prev
        dpeep_f += du_f * c_prev
        dc_prev += du_i * p_i + du_f * p_f

        ds = np.concatenate([du_i, du_f, du_g, du_o])
        grads["weight_ih"] += np.outer(ds, x[t])
        grads["bias_ih"] += ds
        grads["weight_hh"] += np.outer(ds, st["masked_h_prev"])
        grads["bias_hh"] += ds
        dx[t] = p["weight_ih"].T @ ds
        dh_next = m * (p["weight_hh"].T @ ds)
        dc_next = dc_prev

    if cache["has_peephole"]:
        grads["peephole"] = np.concatenate([dpeep_i, dpeep_f, dpeep_o])
    grads["x"] = dx
    grads["h0"] = dh_next
    grads["c0"] = dc_next
    return grads


# ---------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------

def gru_forward(x, params, h0=None, *, reset_after=True, layer_norm=False, mask=None):
    """Forward pass of the GRU (gate order r, z, n) over one sequence.

    With ``reset_after=True`` (PyTorch / cuDNN)::

        (x_r, x_z, x_n) = W_ih x_t + b_ih
        (a_r, a_z, a_n) = W_hh (m * h_{t-1}) + b_hh
        r = sigmoid(LN_r(x_r + a_r)),  z = sigmoid(LN_z(x_z + a_z))
        n = tanh(LN_n(x_n + r * a_n))
        h_t = (1 - z) * n + z * h_{t-1}

    With ``reset_after=False`` (Cho et al. 2014) the candidate is
    ``n = tanh(LN_n(x_n + W_hh[2H:] (r * m * h_{t-1}) + b_hh[2H:]))``.
    The ``z * h_{t-1}`` term always uses the unmasked state.

    Parameters
    ----------
    x : ndarray of shape (T, I)
    params : dict
        ``weight_ih`` (3H, I), ``weight_hh`` (3H, H), ``bias_ih``, ``bias_hh``
        (3H,) and, with layer norm, ``ln_weight``, ``ln_bias`` (3H,).
    h0 : ndarray of shape (H,), optional
    reset_after : bool
    layer_norm : bool
    mask : ndarray of shape (H,), optional

    Returns
    -------
    H : ndarray of shape (T, H)
    cache : dict
    """
    x, p, Hn = _prepare(x, params, 3, layer_norm, name="gru")
    dtype = x.dtype
    T = x.shape[0]
    h_prev = _vector(h0, Hn, dtype, "h0")
    m = _vector(mask, Hn, dtype, "mask") if mask is not None else np.ones(Hn, dtype)
    W_hh, b_hh = p["weight_hh"], p["bias_hh"]

    hs = np.zeros((T, Hn), dtype=dtype)
    steps = []
    for t in range(T):
        masked_h_prev = m * h_prev
        gx = p["weight_ih"] @ x[t] + p["bias_ih"]
        x_r, x_z, x_n = gx[:Hn], gx[Hn:2 * Hn], gx[2 * Hn:]
        a_rz = W_hh[:2 * Hn] @ masked_h_prev + b_hh[:2 * Hn]
        a_r, a_z = a_rz[:Hn], a_rz[Hn:]

        u_r, ln_r = _norm_block(x_r + a_r, p, 0, Hn, layer_norm)
        u_z, ln_z = _norm_block(x_z + a_z, p, 1, Hn, layer_norm)
        r = _sigmoid(u_r)
        z = _sigmoid(u_z)
        if reset_after:
            a_n = W_hh[2 * Hn:] @ masked_h_prev + b_hh[2 * Hn:]
            reset_h = None
            u_n, ln_n = _norm_block(x_n + r * a_n, p, 2, Hn, layer_norm)
        else:
            reset_h = r * masked_h_prev
            a_n = W_hh[2 * Hn:] @ reset_h + b_hh[2 * Hn:]
            u_n, ln_n = _norm_block(x_n + a_n, p, 2, Hn, layer_norm)
        n = np.tanh(u_n)
        h = (1 - z) * n + z * h_prev

        hs[t] = h
        steps.append({"h_prev": h_prev, "masked_h_prev": masked_h_prev,
                      "r": r, "z": z, "n": n, "a_n": a_n, "reset_h": reset_h,
                      "ln": (ln_r, ln_z, ln_n)})
        h_prev = h

    cache = {"x": x, "params": p, "mask": m, "hs": hs, "steps": steps,
             "reset_after": reset_after, "layer_norm": layer_norm}
    return hs, cache


def gru_backward(dH, dh_last, cache):
    """Back-propagation through time for :func:`gru_forward`.

    Parameters
    ----------
    dH : ndarray of shape (T, H) or None
    dh_last : ndarray of shape (H,) or None
    cache : dict
        From :func:`gru_forward`.

    Returns
    -------
    grads : dict
        One entry per key of ``params``, plus ``'x'`` (T, I) and ``'h0'`` (H,).
    """
    x, p, m, hs = cache["x"], cache["params"], cache["mask"], cache["hs"]
    dtype = x.dtype
    T, Hn = hs.shape
    dH = _upstream(dH, T, Hn, dtype)
    W_hh = p["weight_hh"]
    reset_after = cache["reset_after"]

    grads = _zero_grads(p)
    dx = np.zeros_like(x)
    dh_next = _vector(dh_last, Hn, dtype, "dh_last")
    for t in reversed(range(T)):
        st = cache["steps"][t]
        r, z, n, a_n, h_prev = st["r"], st["z"], st["n"], st["a_n"], st["h_prev"]
        ln_r, ln_z, ln_n = st["ln"]

        dh = dH[t] + dh_next
        # h = (1 - z) * n + z * h_prev   (unmasked h_prev)
        dn = dh * (1 - z)
        dz = dh * (h_prev - n)
        dh_prev = dh * z

        # n = tanh(LN_n(...))
        du_n = _norm_block_backward(dn * (1 - n * n), ln_n, grads, 2, Hn)
        dx_n = du_n
        if reset_after:
            # u_n = x_n + r * a_n,  a_n = W_hh[2H:] (m h_prev) + b_hh[2H:]
            dr = du_n * a_n
            da_n = du_n * r
            grads["weight_hh"][2 * Hn:] += np.outer(da_n, st["masked_h_prev"])
            grads["bias_hh"][2 * Hn:] += da_n
            dh_prev += m * (W_hh[2 * Hn:].T @ da_n)
        else:
            # u_n = x_n + W_hh[2H:] (r * m * h_prev) + b_hh[2H:]
            grads["weight_hh"][2 * Hn:] += np.outer(du_n, st["reset_h"])
            grads["bias_hh"][2 * Hn:] += du_n
            d_reset_h = W_hh[2 * Hn:].T @ du_n
            dr = d_reset_h * st["masked_h_prev"]
            dh_prev += d_reset_h * r * m

        du_r = _norm_block_backward(dr * r * (1 - r), ln_r, grads, 0, Hn)
        du_z = _norm_block_backward(dz * z * (1 - z), ln_z, grads, 1, Hn)

        # input side: (x_r, x_z, x_n) = W_ih x_t + b_ih
        dgx = np.concatenate([du_r, du_z, dx_n])
        grads["weight_ih"] += np.outer(dgx, x[t])
        grads["bias_ih"] += dgx
        dx[t] = p["weight_ih"].T @ dgx
        # recurrent side of r and z: (a_r, a_z) = W_hh[:2H] (m h_prev) + b_hh[:2H]
        da_rz = np.concatenate([du_r, du_z])
        grads["weight_hh"][:2 * Hn] += np.outer(da_rz, st["masked_h_prev"])
        grads["bias_hh"][:2 * Hn] += da_rz
        dh_prev += m * (W_hh[:2 * Hn].T @ da_rz)

        dh_next = dh_prev

    grads["x"] = dx
    grads["h0"] = dh_next
    return grads


# ---------------------------------------------------------------------------
# Jordan network
# ---------------------------------------------------------------------------

def jordan_forward(x, layers, output, y0=None, *, activation="tanh",
                   output_activation="identity", layer_norm=False, masks=None, f0=None):
    """Forward pass of a Jordan network (top-down recurrence) over one sequence.

    ::

        x^1_t = x_t,  x^l_t = h^{l-1}_t
        f^l_{t-1} = h^{l+1}_{t-1} for l < L,   f^L_{t-1} = y_{t-1}
        h^l_t = act(LN(W^l_ih x^l_t + b^l_ih + W^l_hh (m^l * f^l_{t-1}) + b^l_hh))
        y_t   = out_act(W_out h^L_t + b_out)

    Parameters
    ----------
    x : ndarray of shape (T, I)
    layers : list of dict
        One dict per layer ``l``: ``weight_ih`` (H_l, I_l), ``weight_hh``
        (H_l, F_l), ``bias_ih``, ``bias_hh`` (H_l,) and, with layer norm,
        ``ln_weight``, ``ln_bias`` (H_l,). ``F_l = H_{l+1}``, or ``O`` for the
        top layer.
    output : dict
        ``weight`` (O, H_L) and ``bias`` (O,).
    y0 : ndarray of shape (O,), optional
        Initial output fed back to the top layer (``y_{-1}``). A shorthand for
        the last entry of ``f0``; give one or the other, not both.
    activation : {'tanh', 'relu'}
        Hidden activation.
    output_activation : {'identity', 'tanh', 'sigmoid', 'softmax'}
    layer_norm : bool
    masks : list of (ndarray of shape (F_l,) or None), optional
        Recurrent-dropout mask of each layer, applied to its fed-back vector.
    f0 : list of (ndarray of shape (F_l,) or None), optional
        Initial fed-back vectors ``f^l_{-1}`` (zeros by default).

    Returns
    -------
    Y : ndarray of shape (T, O)
        Outputs ``y_t`` (after the output activation).
    Hs : list of ndarray of shape (T, H_l)
        Hidden states of every layer.
    cache : dict
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (T, I), got {x.shape}")
    dtype = x.dtype
    T = x.shape[0]
    L = len(layers)
    if L < 1:
        raise ValueError("a Jordan network needs at least one layer")
    _activation(np.zeros(1), activation)
    _output_activation(np.zeros(1), output_activation)

    W_out = np.asarray(output["weight"], dtype=dtype)
    b_out = np.asarray(output["bias"], dtype=dtype)
    n_out = W_out.shape[0]

    # validate and convert the layers
    ps = []
    n_in = x.shape[1]
    for l, layer in enumerate(layers):
        H_l = np.shape(layer["weight_ih"])[0]
        F_l = np.shape(layers[l + 1]["weight_ih"])[0] if l < L - 1 else n_out
        p = {k: np.asarray(v, dtype=dtype) for k, v in layer.items()}
        unknown = set(p) - set(_BASE_KEYS) - set(_LN_KEYS)
        if unknown:
            raise ValueError(f"unexpected parameter(s) in layer {l}: {sorted(unknown)}")
        expected = {"weight_ih": (H_l, n_in), "weight_hh": (H_l, F_l),
                    "bias_ih": (H_l,), "bias_hh": (H_l,),
                    "ln_weight": (H_l,), "ln_bias": (H_l,)}
        needed = list(_BASE_KEYS) + (list(_LN_KEYS) if layer_norm else [])
        for k in needed:
            if k not in p:
                raise ValueError(f"layer {l} is missing {k}")
        for k, v in p.items():
            if v.shape != expected[k]:
                raise ValueError(f"layer {l} parameter {k} has shape {v.shape}, "
                                 f"expected {expected[k]}")
        ps.append(p)
        n_in = H_l
    if W_out.shape != (n_out, n_in) or b_out.shape != (n_out,):
        raise ValueError(f"output weight/bias must have shapes {(n_out, n_in)} and "
                         f"{(n_out,)}, got {W_out.shape} and {b_out.shape}")
    fed_sizes = [ps[l]["weight_hh"].shape[1] for l in range(L)]

    # initial fed-back vectors and masks
    if f0 is None:
        f0 = [None] * L
    if len(f0) != L:
        raise ValueError(f"f0 must have one entry per layer ({L}), got {len(f0)}")
    f0 = list(f0)
    if y0 is not None:
        if f0[-1] is not None:
            raise ValueError("give the initial output either as y0 or as f0[-1], "
                             "not both")
        f0[-1] = y0
    f0 = [_vector(f0[l], fed_sizes[l], dtype, f"f0[{l}]") for l in range(L)]
    if masks is None:
        masks = [None] * L
    if len(masks) != L:
        raise ValueError(f"masks must have one entry per layer ({L}), got {len(masks)}")
    ms = [np.ones(fed_sizes[l], dtype) if masks[l] is None
          else _vector(masks[l], fed_sizes[l], dtype, f"masks[{l}]") for l in range(L)]

    Hs = [np.zeros((T, ps[l]["weight_ih"].shape[0]), dtype=dtype) for l in range(L)]
    Y = np.zeros((T, n_out), dtype=dtype)
    steps = []
    for t in range(T):
        step = {"input": [], "masked_fed": [], "ln": [], "preact": []}
        layer_input = x[t]
        for l in range(L):
            # the vector fed back to layer l: h^{l+1}_{t-1},
            # or y_{t-1} for the top layer
            if t == 0:
                fed = f0[l]
            elif l < L - 1:
                fed = Hs[l + 1][t - 1]
            else:
                fed = Y[t - 1]
            p = ps[l]
            masked_fed = ms[l] * fed
            s = (p["weight_ih"] @ layer_input + p["bias_ih"]
                 + p["weight_hh"] @ masked_fed + p["bias_hh"])
            a, ln_cache = _norm_block(s, p, 0, s.shape[0], layer_norm)
            h = _activation(a, activation)
            Hs[l][t] = h
            step["input"].append(layer_input)
            step["masked_fed"].append(masked_fed)
            step["ln"].append(ln_cache)
            step["preact"].append(a)
            layer_input = h
        Y[t] = _output_activation(W_out @ layer_input + b_out, output_activation)
        steps.append(step)

    cache = {"x": x, "layers": ps, "output": {"weight": W_out, "bias": b_out},
             "masks": ms, "Hs": Hs, "Y": Y, "steps": steps, "activation": activation,
             "output_activation": output_activation, "layer_norm": layer_norm}
    return Y, Hs, cache


def jordan_backward(dY, cache):
    """Back-propagation through time for :func:`jordan_forward`.

    The whole network (all layers and the output layer) is one coupled
    recurrence, so at every step (latest first) the gradient flows: output
    layer, then layer L, L-1, ..., 1; the gradient with respect to each
    fed-back vector is carried to the previous step.

    Parameters
    ----------
    dY : ndarray of shape (T, O)
        ``dL/dy_t`` (after the output activation) at every step.
    cache : dict
        From :func:`jordan_forward`.

    Returns
    -------
    layer_grads : list of dict
        Gradients of every layer's parameters (same keys and shapes).
    output_grads : dict
        ``weight`` (O, H_L) and ``bias`` (O,).
    dx : ndarray of shape (T, I)
    df0 : list of ndarray of shape (F_l,)
        Gradients with respect to the initial fed-back vectors ``f0``.
    """
    x, ps, ms = cache["x"], cache["layers"], cache["masks"]
    Hs, Y = cache["Hs"], cache["Y"]
    W_out = cache["output"]["weight"]
    dtype = x.dtype
    T = x.shape[0]
    L = len(ps)
    dY = _upstream(dY, T, Y.shape[1], dtype)

    layer_grads = [_zero_grads(p) for p in ps]
    output_grads = {"weight": np.zeros_like(W_out),
                    "bias": np.zeros_like(cache["output"]["bias"])}
    dx = np.zeros_like(x)
    # dfed[l] = dL/d f^l_t, the gradient arriving from step t + 1 through the
    # vector fed back to layer l (h^{l+1}_t, or y_t for the top layer)
    dfed = [np.zeros(ms[l].shape[0], dtype=dtype) for l in range(L)]
    for t in reversed(range(T)):
        step = cache["steps"][t]
        new_dfed = [None] * L

        # output layer: y_t = out_act(W_out h^L_t + b_out); y_t is fed back to layer L
        dy = dY[t] + dfed[L - 1]
        dz = _output_activation_backward(dy, Y[t], cache["output_activation"])
        output_grads["weight"] += np.outer(dz, Hs[L - 1][t])
        output_grads["bias"] += dz
        dh = W_out.T @ dz  # dL/dh^L_t from the output layer

        for l in reversed(range(L)):
            p, g = ps[l], layer_grads[l]
            if l > 0:
                dh = dh + dfed[l - 1]  # h^l_t is also fed back to layer l-1 at t+1
            da = _activation_backward(dh, Hs[l][t], cache["activation"])
            ds = _norm_block_backward(da, step["ln"][l], g, 0, Hs[l].shape[1])
            g["weight_ih"] += np.outer(ds, step["input"][l])
            g["bias_ih"] += ds
            g["weight_hh"] += np.outer(ds, step["masked_fed"][l])
            g["bias_hh"] += ds
            new_dfed[l] = ms[l] * (p["weight_hh"].T @ ds)
            dh = p["weight_ih"].T @ ds  # dL/d(input of layer l) = dL/dh^{l-1}_t
        dx[t] = dh
        dfed = new_dfed

    return layer_grads, output_grads, dx, dfed


# ---------------------------------------------------------------------------
# Random parameters for tests
# ---------------------------------------------------------------------------

def init_params(cell, n_input, n_hidden, *, peephole=False, layer_norm=False, rng,
                dtype=np.float64):
    """Random parameters of one cell, for tests.

    Parameters
    ----------
    cell : {'rnn', 'lstm', 'gru', 'jordan'}
        For ``'jordan'`` this gives a square ``weight_hh`` (H, H); use
        :func:`jordan_init` for a whole Jordan network.
    n_input, n_hidden : int
    peephole : bool
        Add ``peephole`` (3H,) (LSTM only).
    layer_norm : bool
        Add ``ln_weight`` (close to 1) and ``ln_bias`` (close to 0).
    rng : numpy.random.Generator
    dtype : floating dtype

    Returns
    -------
    params : dict
    """
    if cell not in _N_GATES:
        raise ValueError(f"unknown cell {cell!r}")
    if peephole and cell != "lstm":
        raise ValueError("peephole connections exist only for the lstm cell")
    G = _N_GATES[cell]
    GH = G * n_hidden

    def uniform(*shape):
        return rng.uniform(-0.5, 0.5, size=shape).astype(dtype)

    params = {
        "weight_ih": uniform(GH, n_input),
        "weight_hh": uniform(GH, n_hidden),
        "bias_ih": uniform(GH),
        "bias_hh": uniform(GH),
    }
    if peephole:
        params["peephole"] = uniform(3 * n_hidden)
    if layer_norm:
        params["ln_weight"] = (1 + 0.2 * uniform(GH)).astype(dtype)
        params["ln_bias"] = (0.2 * uniform(GH)).astype(dtype)
    return params


def jordan_init(n_input, hidden_sizes, n_output, *, layer_norm=False, rng,
                dtype=np.float64):
    """Random parameters of a Jordan network, for tests.

    Returns
    -------
    layers : list of dict
        ``weight_hh`` of layer ``l`` has shape ``(H_l, F_l)`` with
        ``F_l = H_{l+1}`` or ``n_output`` for the top layer.
    output : dict
        ``weight`` (n_output, H_L) and ``bias`` (n_output,).
    """
    hidden_sizes = list(hidden_sizes)
    if not hidden_sizes:
        raise ValueError("hidden_sizes must not be empty")

    def uniform(*shape):
        return rng.uniform(-0.5, 0.5, size=shape).astype(dtype)

    layers = []
    n_in = n_input
    for l, H_l in enumerate(hidden_sizes):
        F_l = hidden_sizes[l + 1] if l + 1 < len(hidden_sizes) else n_output
        layer = {
            "weight_ih": uniform(H_l, n_in),
            "weight_hh": uniform(H_l, F_l),
            "bias_ih": uniform(H_l),
            "bias_hh": uniform(H_l),
        }
        if layer_norm:
            layer["ln_weight"] = (1 + 0.2 * uniform(H_l)).astype(dtype)
            layer["ln_bias"] = (0.2 * uniform(H_l)).astype(dtype)
        layers.append(layer)
        n_in = H_l
    output = {"weight": uniform(n_output, n_in), "bias": uniform(n_output)}
    return layers, output
