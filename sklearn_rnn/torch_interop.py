"""Weights in and out of PyTorch: ``torch.nn.RNN``, ``LSTM`` and ``GRU``.

:func:`from_torch` builds a ready-to-predict estimator from a PyTorch
recurrent module (or its ``state_dict``) and a ``torch.nn.Linear`` head;
:func:`to_torch` turns a fitted estimator into a PyTorch module
(:class:`SequenceModel`: the recurrent module, the head and the output
activation) that computes the same predictions.

The estimators already name their weights as PyTorch does
(``get_weights()``: ``weight_ih_l0``, ``weight_hh_l0_reverse``, …,
``output.weight``), so no gate reordering happens: the numbers are copied.
What PyTorch's modules cannot express is refused with ``NotImplementedError``:
Jordan cells, LSTM peepholes, the reset-before GRU (``reset_after=False``),
layer normalisation, token input, and stacked layers of different sizes; and,
coming from PyTorch, LSTMs with projections (``proj_size > 0``).

torch is optional: ``pip install sklearn-rnn[torch]``.
"""

import re
from collections.abc import Mapping

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["from_torch", "to_torch"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            "PyTorch exchange needs the optional package 'torch': install it with "
            "`pip install sklearn-rnn[torch]`") from exc
    return torch


def _numpy(a):
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if not a.is_floating_point() or a.dtype not in (_torch().float32,
                                                        _torch().float64):
            a = a.double()
        return a.numpy()
    return np.asarray(a)


def _module_cell(rnn):
    torch = _torch()
    for cls, cell in ((torch.nn.LSTM, "lstm"), (torch.nn.GRU, "gru"),
                      (torch.nn.RNN, "rnn")):
        if isinstance(rnn, cls):
            return cell
    return None


def _read_rnn(rnn, cell, activation):
    """(cell, activation, state dict of arrays, dropout) from a module or a
    state dict."""
    if isinstance(rnn, Mapping):
        if cell not in _GATES:
            raise ValueError("with a state_dict, give cell='rnn', 'lstm' or 'gru'")
        return cell, activation or "tanh", {k: _numpy(v) for k, v in rnn.items()}, 0.0
    module_cell = _module_cell(rnn)
    if module_cell is None:
        raise TypeError(f"rnn must be a torch.nn.RNN, LSTM or GRU, a SequenceModel, "
                        f"or a state_dict; got {type(rnn).__name__}")
    if cell is not None and cell != module_cell:
        raise ValueError(f"cell={cell!r} but rnn is a {type(rnn).__name__}")
    if module_cell == "rnn":
        act = rnn.nonlinearity
        if activation is not None and activation != act:
            raise ValueError(f"activation={activation!r} but the torch.nn.RNN uses "
                             f"{act!r}")
    else:
        act = activation or "tanh"
    return module_cell, act, {k: _numpy(v) for k, v in rnn.state_dict().items()}, \
        float(rnn.dropout)


def _layers(state, cell):
    """Hidden sizes, bidirectional and input size, checked, from the names."""
    if any(k.startswith("weight_hr_l") for k in state):
        raise NotImplementedError("LSTMs with projections (proj_size > 0) have no "
                                  "counterpart here")
    layers = sorted({int(m.group(1)) for k in state
                     for m in [re.fullmatch(r"weight_ih_l(\d+)(_reverse)?", k)] if m})
    if not layers or layers != list(range(len(layers))):
        raise ValueError("the state_dict has no weight_ih_l0, weight_ih_l1, ... "
                         "entries of a torch.nn.RNN, LSTM or GRU")
    bidirectional = "weight_ih_l0_reverse" in state
    g = _GATES[cell]
    sizes = []
    for k in layers:
        w_hh = state[f"weight_hh_l{k}"]
        h = w_hh.shape[1]
        if w_hh.shape != (g * h, h):
            raise ValueError(
                f"weight_hh_l{k} has shape {w_hh.shape}; a {cell} layer of {h} units "
                f"needs {(g * h, h)} (is cell={cell!r} right?)")
        sizes.append(h)
    return tuple(sizes), bidirectional, state["weight_ih_l0"].shape[1]


def _read_head(output, state):
    """(weight, bias) of the Linear head."""
    if output is None:
        if "output.weight" not in state:
            raise ValueError("give the Linear head as output=, or put "
                             "output.weight and output.bias in the state_dict")
        weight = state["output.weight"]
        bias = state.get("output.bias", np.zeros(weight.shape[0]))
        return weight, bias
    torch = _torch()
    if isinstance(output, torch.nn.Linear):
        weight = _numpy(output.weight)
        bias = (_numpy(output.bias) if output.bias is not None
                else np.zeros(weight.shape[0]))
        return weight, bias
    if isinstance(output, Mapping) and "weight" in output:
        weight = _numpy(output["weight"])
        return weight, (_numpy(output["bias"]) if "bias" in output
                        else np.zeros(weight.shape[0]))
    raise TypeError(f"output must be a torch.nn.Linear or its state_dict; got "
                    f"{type(output).__name__}")


def from_torch(rnn, output=None, *, cell=None, classes=None, multilabel=False,
               activation=None, output_activation=None, return_sequences=None,
               dtype=None, **params):
    """A ready-to-predict estimator with the weights of a PyTorch network.

    Parameters
    ----------
    rnn : torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU, SequenceModel or dict
        The recurrent module, a :class:`SequenceModel` (from :func:`to_torch`,
        head and settings included), or a ``state_dict`` of any of them
        (names ``weight_ih_l0``…, optionally prefixed ``rnn.``, plus
        ``output.weight``/``output.bias`` when ``output`` is None).
    output : torch.nn.Linear or dict, optional
        The head, reading the top layer's features: ``[h_forward,
        h_backward]`` after the last step (forward) and after step 0
        (backward), or every step's output with ``return_sequences=True``.
    cell : {'rnn', 'lstm', 'gru'}, optional
        Needed with a state_dict; checked against a module.
    classes : array-like, optional
        Class labels: gives an :class:`RNNClassifier`. The head has one output
        per class, or for two classes one output (the logit of
        ``classes[1]``) or two (softmax, converted to the equal sigmoid).
    multilabel : bool, default=False
        A multilabel :class:`RNNClassifier` with one sigmoid output per label.
    activation : {'tanh', 'relu'}, optional
        Elman cells' activation, read from a ``torch.nn.RNN`` module.
    output_activation : {'identity', 'tanh', 'sigmoid'}, optional
        Regressors only (default 'identity').
    return_sequences : bool, optional
        Predict at every step (default False, or the SequenceModel's).
    dtype : {'float32', 'float64'}, optional
        Default: float64 if the weights are, else float32.
    **params
        Other estimator parameters (``learning_rate_init``, ``n_threads``…),
        used if the estimator is trained further with ``partial_fit`` or
        ``warm_start``.

    Returns
    -------
    estimator : RNNRegressor or RNNClassifier
        Fitted: it predicts right away; ``n_iter_`` is 0.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_rnn.torch_interop import from_torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> lstm = torch.nn.LSTM(3, 8, num_layers=2, batch_first=True)
    >>> head = torch.nn.Linear(8, 1)
    >>> reg = from_torch(lstm, head, n_threads=1)
    >>> X = np.random.RandomState(0).normal(size=(4, 6, 3)).astype(np.float32)
    >>> with torch.no_grad():
    ...     expected = head(lstm(torch.from_numpy(X))[0][:, -1])[:, 0].numpy()
    >>> bool(np.allclose(reg.predict(X), expected, atol=1e-5))
    True
    """
    from ._classifier import RNNClassifier
    from ._regressor import RNNRegressor
    from ._sequences import check_sequences

    torch_model = None
    if _module_cell(rnn) is None and hasattr(rnn, "rnn") and hasattr(rnn, "output"):
        torch_model = rnn  # a SequenceModel
        if output is not None:
            raise ValueError("a SequenceModel brings its own head; leave output=None")
        rnn, output = torch_model.rnn, torch_model.output
        if return_sequences is None:
            return_sequences = torch_model.return_sequences
        if classes is None and not multilabel and output_activation is None:
            if torch_model.output_activation == "softmax":
                raise ValueError("this SequenceModel ends with a softmax: give its "
                                 "classes=")
            output_activation = torch_model.output_activation
    if isinstance(rnn, Mapping):
        rnn = {k[4:] if k.startswith("rnn.") else k: v for k, v in rnn.items()}
    cell, activation, state, dropout = _read_rnn(rnn, cell, activation)
    weight, bias = _read_head(output, state)
    state = {k: v for k, v in state.items() if not k.startswith("output.")}
    sizes, bidirectional, n_features = _layers(state, cell)
    n_top = sizes[-1] * (2 if bidirectional else 1)
    if weight.ndim != 2 or weight.shape[1] != n_top or bias.shape != weight.shape[:1]:
        raise ValueError(f"the head must map the top layer's {n_top} features: "
                         f"weight ({weight.shape[0] if weight.ndim else '?'}, {n_top}) "
                         f"and bias; got {weight.shape} and {bias.shape}")
    classifier = classes is not None or multilabel
    n_out = weight.shape[0]
    if classifier:
        if output_activation is not None:
            raise ValueError("classifiers choose their output activation (sigmoid or "
                             "softmax); leave output_activation=None")
        if multilabel:
            if classes is not None:
                raise ValueError("a multilabel classifier's classes are its outputs; "
                                 "leave classes=None")
        else:
            classes = np.asarray(classes)
            if classes.ndim != 1 or len(np.unique(classes)) != len(classes) \
                    or len(classes) < 2:
                raise ValueError("classes must be at least two distinct labels")
            if len(classes) == 2 and n_out == 2:
                # softmax over two logits = sigmoid of their difference
                weight = weight[1:] - weight[:1]
                bias = bias[1:] - bias[:1]
                n_out = 1
            expected = 1 if len(classes) == 2 else len(classes)
            if n_out != expected:
                raise ValueError(f"{len(classes)} classes need a head with "
                                 f"{expected} outputs, not {n_out}")
    if dtype is None:
        dtype = ("float64" if all(v.dtype == np.float64 for v in state.values())
                 else "float32")
    kwargs = dict(cell=cell, hidden_layer_sizes=sizes, bidirectional=bidirectional,
                  activation=activation, return_sequences=bool(return_sequences),
                  dtype=dtype, **params)
    if dropout and "dropout" not in params:
        kwargs["dropout"] = dropout
    if classifier:
        est = RNNClassifier(**kwargs)
    else:
        est = RNNRegressor(output_activation=output_activation or "identity", **kwargs)
    est._validate_params()
    sizes = est._check_params()

    # the bookkeeping a fit would do, from one dummy sequence of one step
    seqs = check_sequences(np.zeros((1, 1, n_features)), dtype=dtype)
    est.n_features_in_ = n_features
    if classifier:
        y = np.zeros((1, n_out), int) if multilabel else classes[:1]
        est._validate_targets([y] if est.return_sequences else y, seqs, True,
                              None if multilabel else classes)
    else:
        y = np.zeros(1) if n_out == 1 else np.zeros((1, n_out))
        est._validate_targets([y] if est.return_sequences else y, seqs, True)
        (y, seqs, True)
    est._build(sizes, n_out, check_random_state(0), seqs)

    weights = {name: np.zeros(shape) for name, shape in est._network.shapes.items()}
    unknown = sorted(set(state) - set(weights))
    if unknown:
        raise ValueError(f"unexpected entries in the state_dict: {unknown}")
    for name in weights:
        if name.startswith("output."):
            continue
        if name in state:
            weights[name] = state[name]
        elif not name.startswith("bias_"):
            raise ValueError(f"the state_dict lacks {name}")
        # missing biases: a module built with bias=False
    weights["output.weight"], weights["output.bias"] = weight, bias
    return est.set_weights(weights)


def to_torch(estimator):
    """A PyTorch module computing a fitted estimator's predictions.

    Parameters
    ----------
    estimator : RNNRegressor or RNNClassifier
        Fitted, with cell 'rnn', 'lstm' or 'gru', and equal hidden sizes in
        every layer (as PyTorch's modules have).

    Returns
    -------
    model : SequenceModel
        ``model.rnn`` (``torch.nn.RNN``/``LSTM``/``GRU``, ``batch_first=True``)
        and ``model.output`` (``torch.nn.Linear``) hold copies of the weights,
        in the estimator's dtype. ``model(x, lengths)`` gives ``predict``'s
        values (regressors) or the probabilities (classifiers; for binary
        ones P(classes_[1])); ``model.logits(x, lengths)`` the head's output.
        ``model.state_dict()`` is the weights (names ``rnn.weight_ih_l0``…,
        ``output.weight``).

    Raises
    ------
    NotImplementedError
        For what PyTorch's modules cannot express (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_rnn import RNNRegressor
    >>> from sklearn_rnn.torch_interop import to_torch
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(20, 5, 2))
    >>> reg = RNNRegressor(cell="gru", hidden_layer_sizes=(4, 4), max_iter=1,
    ...                    n_threads=1, random_state=0).fit(X, X.sum(axis=(1, 2)))
    >>> model = to_torch(reg)
    >>> with torch.no_grad():
    ...     out = model(torch.from_numpy(X.astype(np.float32)))
    >>> bool(np.allclose(out[:, 0].numpy(), reg.predict(X), atol=1e-5))
    True
    """
    torch = _torch()
    from ._torch_module import SequenceModel

    check_is_fitted(estimator, "_network")
    net = estimator._network
    problems = []
    if net.cell not in _GATES:
        problems.append(f"cell={net.cell!r} (PyTorch has no Jordan network)")
    if net.peephole:
        problems.append("peephole=True (torch.nn.LSTM has no peepholes)")
    if net.cell == "gru" and not net.reset_after:
        problems.append("reset_after=False (torch.nn.GRU resets after the product)")
    if net.layer_norm:
        problems.append("layer_norm=True")
    if net.token_input:
        problems.append("token input (fitted on OneHot/TfidfSequence output)")
    if len(set(net.hidden_sizes)) > 1:
        problems.append(f"hidden_layer_sizes={net.hidden_sizes} (every layer of a "
                        "PyTorch module has the same size)")
    if problems:
        raise NotImplementedError("this estimator has no PyTorch counterpart: "
                                  + "; ".join(problems))
    dtype = torch.float64 if net.dtype == np.float64 else torch.float32
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[net.cell]
    kwargs = dict(num_layers=len(net.hidden_sizes), batch_first=True,
                  bidirectional=net.bidirectional, dtype=dtype)
    if net.cell == "rnn":
        kwargs["nonlinearity"] = net.activation
    if len(net.hidden_sizes) > 1:
        kwargs["dropout"] = float(estimator.dropout)
    rnn = module(net.n_input, net.hidden_sizes[0], **kwargs)
    head = torch.nn.Linear(net.n_top, net.n_output, dtype=dtype)
    weights = estimator.get_weights()
    with torch.no_grad():
        rnn.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()
                             if not k.startswith("output.")})
        head.weight.copy_(torch.from_numpy(weights["output.weight"]))
        head.bias.copy_(torch.from_numpy(weights["output.bias"]))
    model = SequenceModel(rnn, head, net.output_activation,
                          estimator.return_sequences)
    return model.eval()
