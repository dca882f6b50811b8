"""Export fitted estimators to ONNX, with ONNX's own RNN, LSTM and GRU operators.

``to_onnx(estimator)`` returns an ``onnx.ModelProto`` that onnxruntime (or
any ONNX runtime) runs without sklearn-rnn installed. ``register_skl2onnx()``
teaches skl2onnx to convert the estimators, alone or as the last step of a
``Pipeline`` whose other steps skl2onnx can convert.

Inputs of the exported model (float32, batch first, padded):

* ``X``: ``(n_sequences, n_steps, n_features)``; for token models (fitted on
  :class:`~sklearn_rnn.OneHot` / :class:`~sklearn_rnn.TfidfSequence` output)
  ``ids`` (int64) and ``weights`` (float32), both ``(n_sequences, n_steps)``;
* ``lengths``: int64 ``(n_sequences,)``, the real length of every sequence
  (omitted with ``variable_length=False``; all sequences then have
  ``n_steps`` steps). Padding after a sequence's end is never read.

:func:`to_onnx_inputs` builds these from any X the estimators accept.

Outputs: ``variable`` (regressors; ``(n_sequences, n_outputs)``, or
``(n_sequences, n_steps, n_outputs)`` with ``return_sequences``), or
``label`` and ``probabilities`` (classifiers; per step with
``return_sequences``). Per-step outputs past a sequence's length are padding.

What ONNX's recurrent operators cannot express raises ``NotImplementedError``:
``layer_norm=True`` (no layer normalisation in them). ``cell='jordan'`` is
exported with a ``Scan`` loop instead, since its output is part of the
recurrence. The computation is float32 whatever the estimator's ``dtype``.
"""

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["register_skl2onnx", "to_onnx", "to_onnx_inputs"]

DEFAULT_OPSET = 18
MIN_OPSET = 14

_OPS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
# ONNX's gate order, as indices of PyTorch's gate blocks:
# LSTM i, f, g, o -> i, o, f, c;  GRU r, z, n -> z, r, h
_GATE_ORDER = {"rnn": [0], "lstm": [0, 3, 1, 2], "gru": [1, 0, 2]}
# peepholes: ours p_i, p_f, p_o -> ONNX's P = [p_i, p_o, p_f]
_PEEPHOLE_ORDER = [0, 2, 1]
_ACTIVATION = {"tanh": "Tanh", "relu": "Relu"}
_OUT_ACTIVATION = {"tanh": "Tanh", "sigmoid": "Sigmoid"}


def _import(module):
    """Import an optional dependency, naming the extra that installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the optional package {module.split('.')[0]!r}: "
            "install it with `pip install sklearn-rnn[onnx]` (onnx, onnxruntime "
            "and skl2onnx)") from exc


def _check_exportable(est):
    from ._base import BaseRNN
    if not isinstance(est, BaseRNN):
        raise TypeError(f"to_onnx exports RNNRegressor and RNNClassifier, not "
                        f"{type(est).__name__}")
    check_is_fitted(est, "_network")
    net = est._network
    if net.layer_norm:
        raise NotImplementedError(
            "layer_norm=True cannot be exported to ONNX: its RNN, LSTM and GRU "
            "operators have no layer normalisation of the gates. Fit with "
            "layer_norm=False to export")
    return net


# ----------------------------------------------------------------------
# graph building, independent of where the nodes go
# ----------------------------------------------------------------------

class _Emitter:
    """Adds nodes and constants to a graph under unique names.

    Subclasses implement ``_name``, ``_add_node`` and ``_add_const``.
    """

    # may a node skip an optional input with an empty name?
    empty_inputs = True

    def const(self, array, hint="c"):
        array = np.asarray(array)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)  # shapes, axes, indices: int64
        small = array.size <= 16 and array.dtype.kind in "biuf"
        key = (array.dtype.str, array.shape, array.tobytes()) if small else None
        cache = self.__dict__.setdefault("_consts", {})
        if key in cache:
            return cache[key]
        name = self._name(hint)
        self._add_const(name, array)
        if small:
            cache[key] = name
        return name

    def node(self, op, inputs, hint=None, n_out=1, **attrs):
        outs = [self._name(hint or op.lower()) for _ in range(n_out)]
        self._add_node(op, list(inputs), outs, **attrs)
        return outs[0] if n_out == 1 else outs


class _GraphEmitter(_Emitter):
    """Collects nodes and initializers for ``onnx.helper.make_graph``."""

    def __init__(self):
        self.nodes, self.initializers, self._used = [], [], set()

    def reserve(self, *names):
        """Names the graph's inputs and outputs take, kept from other values."""
        self._used.update(names)

    def _name(self, hint):
        i = 0
        name = hint
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def _add_node(self, op, inputs, outputs, **attrs):
        helper = _import("onnx.helper")
        self.nodes.append(helper.make_node(op, inputs, outputs,
                                           name=self._name(f"n_{op}"), **attrs))

    def _add_const(self, name, array):
        numpy_helper = _import("onnx.numpy_helper")
        if array.dtype.kind in "UO":
            array = array.astype(object)
        self.initializers.append(numpy_helper.from_array(array, name))


class _Skl2onnxEmitter(_Emitter):
    """Adds nodes to a skl2onnx conversion (its scope and container)."""

    # skl2onnx's topological sort reads "" as a value that never comes
    empty_inputs = False

    def __init__(self, scope, container):
        self.scope, self.container = scope, container

    def _name(self, hint):
        return self.scope.get_unique_variable_name(hint)

    def _add_node(self, op, inputs, outputs, **attrs):
        self.container.add_node(op, inputs, outputs,
                                name=self.scope.get_unique_operator_name(op),
                                **attrs)

    def _add_const(self, name, array):
        onnx = _import("onnx")
        if array.dtype.kind in "UO":
            values = [str(v).encode("utf-8") for v in array.ravel()]
            self.container.add_initializer(name, onnx.TensorProto.STRING,
                                           list(array.shape), values)
        else:
            # a TensorProto travels as raw bytes, without a Python list
            tensor = _import("onnx.numpy_helper").from_array(array, name)
            self.container.add_initializer(name, tensor.data_type,
                                           list(array.shape), tensor)


def _reorder(cell, a):
    """Gate blocks of ``a`` (axis 0) from PyTorch's order to ONNX's."""
    blocks = np.split(np.asarray(a), len(_GATE_ORDER[cell]), axis=0)
    return np.concatenate([blocks[i] for i in _GATE_ORDER[cell]], axis=0)


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _emit_network(est, em, x=None, ids=None, weights=None, lengths=None):
    """Nodes of the whole estimator's forward pass.

    ``x`` (float32, (N, T, F)) or ``ids``/``weights`` (token models) and
    ``lengths`` (int64 (N,), or None) are names of existing values. Returns
    the name of the output after the output activation: (N, n_outputs), or
    (N, T, n_outputs) with return_sequences.
    """
    onnx = _import("onnx")
    net = est._network
    w = net.weights
    seq = bool(est.return_sequences)
    lens32 = "" if lengths is None else em.node(
        "Cast", [lengths], "seq_lens", to=onnx.TensorProto.INT32)

    # the first layer's input, time-major (T, N, ·); for token models
    # without an embedding it is already projected by the first layer's
    # input weights (a row gather, as in the engine)
    projected = False
    if net.token_input:
        wcol = em.node("Unsqueeze", [weights, em.const(np.array([2]), "axis2")],
                       "token_weight")
        if net.embedding_dim is not None:
            table = em.const(_f32(w["embedding.weight"]), "embedding")
        else:
            table = em.const(_f32(np.concatenate(
                [_first_layer_ih(net, sfx).T for sfx in _first_suffixes(net)],
                axis=1)), "token_projection")
            projected = True
        rows = em.node("Gather", [table, ids], "token_rows", axis=0)
        inp = em.node("Mul", [rows, wcol], "token_input")
    else:
        inp = x
    inp = em.node("Transpose", [inp], "time_major", perm=[1, 0, 2])

    if net.jordan is not None:
        Y = _emit_jordan(est, em, inp, lengths, projected)
        if not seq:
            return Y
        return em.node("Transpose", [Y], "per_step", perm=[1, 0, 2])

    def flat():
        return em.const(np.array([0, 0, -1], np.int64), "shape_tn")

    Y_h = None
    for k, layer in enumerate(net.specs):
        Y, Y_h = _emit_layer(net, em, k, layer, inp, lens32, projected and k == 0)
        if k < len(net.specs) - 1:
            # (T, dirs, N, H) -> (T, N, dirs * H): [forward, backward]
            inp = em.node("Reshape", [em.node("Transpose", [Y], perm=[0, 2, 1, 3]),
                                      flat()], f"layer{k}_out")
    w_out = _f32(w["output.weight"])
    b_out = em.const(_f32(w["output.bias"]), "output_bias")
    if seq:
        top = em.node("Reshape", [em.node("Transpose", [Y], perm=[2, 0, 1, 3]),
                                  flat()], "top")
        Z = em.node("Add", [em.node("MatMul", [top, em.const(
            np.ascontiguousarray(w_out.T), "output_weight_t")]), b_out], "z")
    else:
        # Y_h holds, per direction, the state after the last real step
        # (forward) and after step 0 (backward): the engine's features
        feats = em.node("Reshape", [
            em.node("Transpose", [Y_h], perm=[1, 0, 2]),
            em.const(np.array([0, -1], np.int64), "shape_n")], "features")
        Z = em.node("Gemm", [feats, em.const(w_out, "output_weight"), b_out], "z",
                    transB=1)
    return _emit_activation(em, Z, net.output_activation)


def _first_suffixes(net):
    if net.jordan is not None:
        return ["_l0"]
    return [sfx for _, sfx in net.specs[0]]


def _first_layer_ih(net, sfx):
    """First layer's input weights, gates in ONNX's order."""
    a = net.weights["weight_ih" + sfx]
    return a if net.jordan is not None else _reorder(net.cell, a)


def _emit_activation(em, Z, kind):
    if kind == "identity":
        return Z
    if kind == "softmax":
        return em.node("Softmax", [Z], "y", axis=-1)
    return em.node(_OUT_ACTIVATION[kind], [Z], "y")


def _emit_layer(net, em, k, layer, inp, lens32, projected):
    """One ONNX RNN/LSTM/GRU node for layer ``k``, both directions."""
    w = net.weights
    cell = net.cell
    spec0 = layer[0][0]
    H, gh, dirs = spec0.hidden, spec0.gates * spec0.hidden, len(layer)
    if projected:
        # the input is [proj_fwd, proj_bwd] already; each direction picks
        # its part with an identity block
        W = np.zeros((dirs, gh, dirs * gh), np.float32)
        for d in range(dirs):
            W[d, :, d * gh:(d + 1) * gh] = np.eye(gh)
    else:
        W = np.stack([_reorder(cell, w["weight_ih" + sfx]) for _, sfx in layer])
    R = np.stack([_reorder(cell, w["weight_hh" + sfx]) for _, sfx in layer])
    B = np.stack([np.concatenate([_reorder(cell, w["bias_ih" + sfx]),
                                  _reorder(cell, w["bias_hh" + sfx])])
                  for _, sfx in layer])
    inputs = [inp, em.const(_f32(W), f"W_l{k}"), em.const(_f32(R), f"R_l{k}"),
              em.const(_f32(B), f"B_l{k}"), lens32]
    attrs = dict(hidden_size=H,
                 direction="bidirectional" if dirs == 2 else "forward")
    if cell == "rnn":
        attrs["activations"] = [_ACTIVATION[spec0.activation]] * dirs
    elif cell == "gru":
        attrs["linear_before_reset"] = int(spec0.reset_after)
    elif spec0.peephole:
        P = np.stack([np.concatenate(
            [np.split(w["peephole" + sfx], 3)[i] for i in _PEEPHOLE_ORDER])
            for _, sfx in layer])
        if em.empty_inputs:
            inputs += ["", ""]
        else:
            # the same defaults, spelled out: full lengths, zero states
            shape = em.node("Shape", [inp])
            n = em.node("Slice", [shape, em.const(np.array([1]), "one"),
                                  em.const(np.array([2]), "two")], "batch")
            if inputs[4] == "":
                steps = em.node("Cast", [em.node("Slice", [
                    shape, em.const(np.array([0]), "zero1"),
                    em.const(np.array([1]), "one")])], to=_import(
                    "onnx").TensorProto.INT32)
                inputs[4] = em.node("Expand", [steps, n], "full_lengths")
            zeros = em.node("ConstantOfShape", [em.node("Concat", [
                em.const(np.array([dirs]), "dirs"), n,
                em.const(np.array([H]), "hidden")], axis=0)], "zero_state",
                value=_import("onnx.numpy_helper").from_array(
                    np.zeros(1, np.float32)))
            inputs += [zeros, zeros]
        inputs.append(em.const(_f32(P), f"P_l{k}"))
    while inputs[-1] == "":
        inputs.pop()
    n_out = 3 if cell == "lstm" else 2
    outs = em.node(_OPS[cell], inputs, f"l{k}", n_out=n_out, **attrs)
    return outs[0], outs[1]


def _emit_jordan(est, em, inp, lengths, projected):
    """A Jordan network as a Scan over time: the fed-back vectors are the
    loop's state. Returns the outputs per step (T, N, O), or, in
    sequence-to-one mode, the output after each sequence's last step."""
    onnx = _import("onnx")
    helper = _import("onnx.helper")
    numpy_helper = _import("onnx.numpy_helper")
    net = est._network
    spec = net.jordan
    w = net.weights
    L = len(spec.hidden)
    F = onnx.TensorProto.FLOAT

    body_nodes = []
    counter = [0]
    # names inside the loop's body, distinct from every name outside it
    p = em._name("jordan_step")

    def bnode(op, inputs, **attrs):
        counter[0] += 1
        out = f"{p}_b{counter[0]}"
        body_nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def bconst(array):
        counter[0] += 1
        out = f"{p}_c{counter[0]}"
        body_nodes.append(helper.make_node(
            "Constant", [], [out], value=numpy_helper.from_array(_f32(array), out)))
        return out

    states_in = [f"{p}_f{k}_in" for k in range(L)]
    x_t = f"{p}_x_t"
    act = _ACTIVATION[spec.activation]
    hs = []
    below = x_t
    for k in range(L):
        sfx = f"_l{k}"
        if k == 0 and projected:
            s = below
        else:
            s = bnode("MatMul", [below, bconst(w["weight_ih" + sfx].T)])
        s = bnode("Add", [s, bnode("MatMul", [states_in[k],
                                              bconst(w["weight_hh" + sfx].T)])])
        s = bnode("Add", [s, bconst(w["bias_ih" + sfx] + w["bias_hh" + sfx])])
        below = bnode(act, [s])
        hs.append(below)
    z = bnode("Add", [bnode("MatMul", [below, bconst(w["output.weight"].T)]),
                      bconst(w["output.bias"])])
    kind = net.output_activation
    if kind == "identity":
        y = bnode("Identity", [z])
    elif kind == "softmax":
        y = bnode("Softmax", [z], axis=-1)
    else:
        y = bnode(_OUT_ACTIVATION[kind], [z])
    new = hs[1:] + [y]
    body_inputs = [helper.make_tensor_value_info(n, F, ["N", f])
                   for n, f in zip(states_in, spec.fed)]
    body_inputs.append(helper.make_tensor_value_info(x_t, F, ["N", "I"]))
    if lengths is not None:
        # steps past a sequence's end leave its state as it was
        m_t = f"{p}_m_t"
        body_inputs.append(helper.make_tensor_value_info(
            m_t, onnx.TensorProto.BOOL, ["N", 1]))
        new = [bnode("Where", [m_t, n, old]) for n, old in zip(new, states_in)]
    states_out = [f"{p}_f{k}_out" for k in range(L)]
    for n, out in zip(new, states_out):
        body_nodes.append(helper.make_node("Identity", [n], [out]))
    body_nodes.append(helper.make_node("Identity", [y], [f"{p}_y_t"]))
    body_outputs = [helper.make_tensor_value_info(n, F, ["N", f])
                    for n, f in zip(states_out, spec.fed)]
    body_outputs.append(helper.make_tensor_value_info(
        f"{p}_y_t", F, ["N", spec.n_output]))
    body = helper.make_graph(body_nodes, p, body_inputs, body_outputs)

    # zero initial states, (N, F_k)
    n = em.node("Slice", [em.node("Shape", [inp]), em.const(np.array([1]), "one"),
                          em.const(np.array([2]), "two")], "batch")
    inits = [em.node("ConstantOfShape", [em.node(
        "Concat", [n, em.const(np.array([f]), f"fed{k}")], axis=0)],
        f"jordan_init{k}", value=numpy_helper.from_array(np.zeros(1, np.float32)))
        for k, f in enumerate(spec.fed)]
    scan_inputs = [inp]
    if lengths is not None:
        # mask (T, N, 1): step t of sequence b is real
        t = em.node("Range", [em.const(np.array(0, np.int64), "zero"),
                              em.node("Squeeze", [em.node("Slice", [
                                  em.node("Shape", [inp]),
                                  em.const(np.array([0]), "zero1"),
                                  em.const(np.array([1]), "one1")])]),
                              em.const(np.array(1, np.int64), "step")], "steps")
        mask = em.node("Less", [
            em.node("Unsqueeze", [t, em.const(np.array([1, 2]), "axes12")]),
            em.node("Unsqueeze", [lengths, em.const(np.array([1]), "axes1")])],
            "mask")
        scan_inputs.append(mask)
    outs = em.node("Scan", inits + scan_inputs, "jordan", n_out=L + 1, body=body,
                   num_scan_inputs=len(scan_inputs))
    return outs[-1] if est.return_sequences else outs[L - 1]


def _emit_classifier_outputs(est, em, P):
    """label and probabilities from the output activations ``P``."""
    onnx = _import("onnx")
    if _multilabel(est):
        label = em.node("Cast", [em.node("Greater", [P, em.const(
            np.array(0.5, np.float32), "half")])], "label", to=onnx.TensorProto.INT64)
        return label, P
    classes = em.const(_label_array(est.classes_), "classes")
    if est._multiclass:
        idx = em.node("ArgMax", [P], "class_index", axis=-1, keepdims=0)
        return em.node("Gather", [classes, idx], "label", axis=0), P
    # binary: one sigmoid output, P(class 1)
    proba = em.node("Concat", [em.node("Sub", [em.const(
        np.array(1, np.float32), "one_f"), P]), P], "probabilities", axis=-1)
    positive = em.node("Greater", [em.node(
        "Squeeze", [P, em.const(np.array([-1]), "last")]), em.const(
        np.array(0.5, np.float32), "half")])
    idx = em.node("Cast", [positive], "class_index", to=onnx.TensorProto.INT64)
    return em.node("Gather", [classes, idx], "label", axis=0), proba


def _label_array(classes):
    classes = np.asarray(classes)
    if classes.dtype.kind in "iub":
        return classes.astype(np.int64)
    if classes.dtype.kind == "f":
        return classes.astype(np.float64)
    if classes.dtype.kind in "UO" and all(isinstance(c, str) for c in classes):
        return classes.astype(object)
    raise NotImplementedError(
        f"classes of dtype {classes.dtype} cannot be ONNX labels; use integer or "
        "string labels")


def _label_elem_type(est):
    onnx = _import("onnx")
    if _multilabel(est):
        return onnx.TensorProto.INT64
    kind = _label_array(est.classes_).dtype.kind
    return {"i": onnx.TensorProto.INT64, "f": onnx.TensorProto.DOUBLE,
            "O": onnx.TensorProto.STRING}[kind]


def _is_classifier(est):
    return hasattr(est, "_label_binarizer")


# ----------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------

def to_onnx(estimator, *, variable_length=True, target_opset=None, name=None):
    """Export a fitted RNNRegressor or RNNClassifier to ONNX.

    The recurrent layers become ONNX ``RNN``, ``LSTM`` and ``GRU`` nodes
    (stacked and bidirectional layers, tanh or relu Elman cells, GRU in both
    reset forms, LSTM peepholes); ``cell='jordan'`` becomes a ``Scan`` loop.
    The model computes in float32.

    Parameters
    ----------
    estimator : RNNRegressor or RNNClassifier
        Fitted, with ``layer_norm=False``.
    variable_length : bool, default=True
        Add the int64 input ``lengths`` (n_sequences,) so that one padded
        batch holds sequences of different lengths. With False every
        sequence runs for the whole padded length.
    target_opset : int, optional
        ONNX opset of the default domain (at least 14; default 18).
    name : str, optional
        Name of the graph.

    Returns
    -------
    model : onnx.ModelProto
        Inputs ``X`` (float32, (n_sequences, n_steps, n_features)) or, for
        token models, ``ids`` (int64) and ``weights`` (float32), both
        (n_sequences, n_steps); then ``lengths``. Outputs ``variable`` for
        regressors; ``label`` and ``probabilities`` for classifiers.

    Raises
    ------
    NotImplementedError
        For ``layer_norm=True``, which ONNX's operators cannot express.

    Examples
    --------
    >>> import numpy as np
    >>> import onnxruntime as ort
    >>> from sklearn_rnn import RNNRegressor
    >>> from sklearn_rnn.onnx import to_onnx, to_onnx_inputs
    >>> rng = np.random.RandomState(0)
    >>> X = [rng.normal(size=(n, 2)) for n in (5, 3, 7)]
    >>> reg = RNNRegressor(cell="gru", hidden_layer_sizes=(4,), max_iter=1,
    ...                    n_threads=1, random_state=0).fit(X, [0.0, 1.0, 2.0])
    >>> sess = ort.InferenceSession(to_onnx(reg).SerializeToString(),
    ...                             providers=["CPUExecutionProvider"])
    >>> out, = sess.run(None, to_onnx_inputs(X))
    >>> bool(np.allclose(out[:, 0], reg.predict(X), atol=1e-5))
    True
    """
    onnx = _import("onnx")
    helper = _import("onnx.helper")
    _check_exportable(estimator)
    opset = DEFAULT_OPSET if target_opset is None else int(target_opset)
    if opset < MIN_OPSET:
        raise ValueError(f"target_opset={opset} is too old; use {MIN_OPSET} or newer")
    net = estimator._network
    em = _GraphEmitter()
    F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    if net.token_input:
        inputs = [helper.make_tensor_value_info("ids", I64, ["N", "T"]),
                  helper.make_tensor_value_info("weights", F, ["N", "T"])]
        names = dict(ids="ids", weights="weights")
    else:
        inputs = [helper.make_tensor_value_info("X", F, ["N", "T", net.n_input])]
        names = dict(x="X")
    if variable_length:
        inputs.append(helper.make_tensor_value_info("lengths", I64, ["N"]))
        names["lengths"] = "lengths"
    em.reserve(*(v.name for v in inputs), "variable", "label", "probabilities")
    P = _emit_network(estimator, em, **names)
    per = ["N", "T"] if estimator.return_sequences else ["N"]
    if _is_classifier(estimator):
        label, proba = _emit_classifier_outputs(estimator, em, P)
        n_cls = len(estimator.classes_)
        em._add_node("Identity", [label], ["label"])
        em._add_node("Identity", [proba], ["probabilities"])
        extra = [n_cls] if _multilabel(estimator) else []
        outputs = [helper.make_tensor_value_info("label", _label_elem_type(estimator),
                                                 per + extra),
                   helper.make_tensor_value_info("probabilities", F, per + [n_cls])]
    else:
        em._add_node("Identity", [P], ["variable"])
        outputs = [helper.make_tensor_value_info("variable", F,
                                                 per + [net.n_output])]
    graph = helper.make_graph(em.nodes, name or type(estimator).__name__,
                              inputs, outputs, em.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="sklearn-rnn")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def _multilabel(est):
    return est._label_binarizer.y_type_ == "multilabel-indicator"


def to_onnx_inputs(X, *, variable_length=True):
    """Padded inputs of an exported model, from any X the estimators take.

    Parameters
    ----------
    X : 3-D array, list of 2-D (or 1-D) arrays, 2-D array of univariate
        sequences, or TokenSequences
    variable_length : bool, default=True
        Include ``lengths`` (for models exported with ``variable_length=True``).

    Returns
    -------
    inputs : dict of ndarray
        ``{"X": float32 (n, T, n_features), "lengths": int64 (n,)}``, or for
        TokenSequences ``{"ids": int64 (n, T), "weights": float32 (n, T),
        "lengths": ...}``, with ``T`` the longest length and zeros after each
        sequence's end.
    """
    from ._sequences import check_sequences
    seqs = check_sequences(X, dtype=np.float64)
    T = int(seqs.lengths.max())
    steps = np.arange(T)
    valid = steps[None, :] < seqs.lengths[:, None]
    rows = (seqs.starts[:, None] + np.minimum(steps[None, :],
                                              seqs.lengths[:, None] - 1))
    data = seqs.data[rows]                        # (n, T, columns)
    data[~valid] = 0
    if seqs.tokens:
        out = {"ids": data[:, :, 0].astype(np.int64),
               "weights": data[:, :, 1].astype(np.float32)}
    else:
        out = {"X": data.astype(np.float32)}
    if variable_length:
        out["lengths"] = seqs.lengths.astype(np.int64)
    return out


# ----------------------------------------------------------------------
# skl2onnx
# ----------------------------------------------------------------------

def register_skl2onnx():
    """Register converters with skl2onnx for ``convert_sklearn``.

    After this call, ``skl2onnx.convert_sklearn`` converts RNNRegressor and
    RNNClassifier alone, and as the last step of a ``Pipeline`` whose other
    steps skl2onnx converts (for instance a ``StandardScaler`` on 2-D
    univariate sequences ``(n_sequences, n_steps)``).

    Declare the inputs with ``initial_types``: ``X`` as a float tensor
    ``(None, None, n_features)`` (or ``(None, n_steps)`` for univariate
    sequences), optionally followed by an int64 ``lengths`` ``(None,)`` for
    a lone estimator. Inside a pipeline the estimator receives what the step
    before it produces, and every sequence has the full padded length.

    The text transformers :class:`~sklearn_rnn.OneHot` and
    :class:`~sklearn_rnn.TfidfSequence` tokenise strings in Python and are not
    converted: converting a pipeline that contains them raises
    ``NotImplementedError``. Export the estimator of such a pipeline with
    :func:`to_onnx`, whose model takes the token ``ids`` and ``weights``.

    Examples
    --------
    >>> import numpy as np
    >>> from skl2onnx import convert_sklearn
    >>> from skl2onnx.common.data_types import FloatTensorType
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_rnn import RNNRegressor
    >>> from sklearn_rnn.onnx import register_skl2onnx
    >>> register_skl2onnx()
    >>> X = np.random.RandomState(0).normal(size=(20, 6))   # univariate
    >>> pipe = make_pipeline(StandardScaler(), RNNRegressor(
    ...     hidden_layer_sizes=(4,), max_iter=1, n_threads=1, random_state=0))
    >>> pipe = pipe.fit(X, X.sum(axis=1))
    >>> model = convert_sklearn(pipe, initial_types=[
    ...     ("X", FloatTensorType([None, 6]))], target_opset=18)
    >>> [o.name for o in model.graph.output]
    ['variable']
    """
    _import("skl2onnx")
    from skl2onnx import update_registered_converter

    from ._classifier import RNNClassifier
    from ._regressor import RNNRegressor
    from .text import OneHot, TfidfSequence

    update_registered_converter(RNNRegressor, "SklearnRnnRNNRegressor",
                                _skl2onnx_shape, _skl2onnx_convert)
    update_registered_converter(RNNClassifier, "SklearnRnnRNNClassifier",
                                _skl2onnx_shape, _skl2onnx_convert,
                                options={"zipmap": [True, False, "columns"],
                                         "nocl": [False]})
    for cls in (OneHot, TfidfSequence):
        update_registered_converter(cls, f"SklearnRnn{cls.__name__}",
                                    _text_shape, _text_convert)


def _text_shape(operator):
    _text_not_converted()


def _text_convert(scope, operator, container):
    _text_not_converted()


def _text_not_converted():
    raise NotImplementedError(
        "OneHot and TfidfSequence tokenise strings in Python and have no ONNX "
        "conversion. Transform the text with them, export the estimator after "
        "them with sklearn_rnn.onnx.to_onnx, and feed it the token ids and "
        "weights (sklearn_rnn.onnx.to_onnx_inputs(transformer.transform(docs)))")


def _skl2onnx_inputs(operator):
    """The estimator's input variable (and lengths, if given), validated."""
    est = operator.raw_operator
    net = _check_exportable(est)
    if net.token_input:
        raise NotImplementedError(
            "token models (fitted on OneHot/TfidfSequence output) are exported with "
            "sklearn_rnn.onnx.to_onnx, not through skl2onnx")
    if len(operator.inputs) not in (1, 2):
        raise RuntimeError(f"{type(est).__name__} takes X and optionally lengths; "
                           f"got {len(operator.inputs)} inputs")
    x = operator.inputs[0]
    shape = x.type.shape
    if len(shape) == 2 and net.n_input != 1:
        raise RuntimeError(
            f"a 2-D input holds univariate sequences, but the estimator was fitted "
            f"with {net.n_input} features per step; declare X as "
            f"(None, None, {net.n_input})")
    if len(shape) not in (2, 3):
        raise RuntimeError(f"X must be declared 3-D (None, None, n_features) or 2-D "
                           f"(univariate sequences); got shape {shape}")
    return est, x, (operator.inputs[1] if len(operator.inputs) == 2 else None)


def _skl2onnx_shape(operator):
    from skl2onnx.common.data_types import (
        DoubleTensorType,
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )
    est, x, _ = _skl2onnx_inputs(operator)
    n = x.type.shape[0]
    per = [n, None] if est.return_sequences else [n]
    if _is_classifier(est):
        label_type = {"i": Int64TensorType, "f": DoubleTensorType,
                      "O": StringTensorType}[
            "i" if _multilabel(est) else _label_array(est.classes_).dtype.kind]
        n_cls = len(est.classes_)
        operator.outputs[0].type = label_type(
            per + ([n_cls] if _multilabel(est) else []))
        operator.outputs[1].type = FloatTensorType(per + [n_cls])
    else:
        operator.outputs[0].type = FloatTensorType(per + [est._network.n_output])


def _skl2onnx_convert(scope, operator, container):
    onnx = _import("onnx")
    est, x, lengths = _skl2onnx_inputs(operator)
    if container.target_opset < MIN_OPSET:
        raise RuntimeError(f"sklearn-rnn's converter needs target_opset >= {MIN_OPSET}")
    if (_is_classifier(est) and (est.return_sequences or _multilabel(est))
            and container.get_options(est, dict(zipmap=True))["zipmap"]):
        raise NotImplementedError(
            "skl2onnx's ZipMap reads one probability row per sample, not per-step "
            "or multilabel probabilities; pass options={RNNClassifier: "
            "{'zipmap': False}} to convert_sklearn")
    em = _Skl2onnxEmitter(scope, container)
    name = x.full_name
    if x.type.__class__.__name__ != "FloatTensorType":
        name = em.node("Cast", [name], "x_float", to=onnx.TensorProto.FLOAT)
    if len(x.type.shape) == 2:
        name = em.node("Unsqueeze", [name, em.const(np.array([2]), "axis2")],
                       "x_univariate")
    lens = None
    if lengths is not None:
        lens = lengths.full_name
        if lengths.type.__class__.__name__ != "Int64TensorType":
            lens = em.node("Cast", [lens], "lengths_int64", to=onnx.TensorProto.INT64)
    P = _emit_network(est, em, x=name, lengths=lens)
    if _is_classifier(est):
        label, proba = _emit_classifier_outputs(est, em, P)
        em._add_node("Identity", [label], [operator.outputs[0].full_name])
        em._add_node("Identity", [proba], [operator.outputs[1].full_name])
    else:
        em._add_node("Identity", [P], [operator.outputs[0].full_name])
