"""ONNX export: onnxruntime's outputs equal the estimators' predictions.

Every model gets random weights of a scale that drives the gates well away
from their linear range (set_weights), so a wrong gate order, a wrong
peephole layout, the wrong GRU form or a wrong bidirectional read changes
the outputs far beyond the float32 tolerance (test_a_wrong_gate_order_is_caught
shows it). Each model runs on variable-length sequences (lengths 1..9 in one
padded batch) and on fixed-length ones without a lengths input.

Skipped without onnx and onnxruntime (skl2onnx for its part).
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_rnn import OneHot, RNNClassifier, RNNRegressor, TfidfSequence

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sklearn_rnn.onnx import to_onnx, to_onnx_inputs  # noqa: E402

# float32 end to end: a few ulps per operation over <= 9 steps
RTOL, ATOL = 1e-4, 1e-5
N_FEATURES = 3


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no notes about unused initializers
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def variable_X(n=13, seed=0):
    rng = np.random.RandomState(seed)
    lengths = np.r_[1, 9, rng.randint(1, 10, n - 2)]
    return [rng.normal(size=(k, N_FEATURES)) for k in lengths]


def fixed_X(n=7, n_steps=6, seed=1):
    return np.random.RandomState(seed).normal(size=(n, n_steps, N_FEATURES))


def randomize(est, scale=0.7, seed=0):
    """Weights large enough that every part of the cell matters."""
    rng = np.random.RandomState(seed)
    weights = {k: rng.normal(scale=scale, size=w.shape)
               for k, w in est.get_weights().items()}
    weights["output.bias"][...] = 0  # keep every class in the predictions
    est.set_weights(weights)
    return est


def fit_tiny(est, X, y):
    est.set_params(max_iter=1, n_threads=1, random_state=0)
    return randomize(est.fit(X, y))


def balance(clf, X):
    """Shift the output bias so that every class is predicted for some of X
    (random weights may favour one class everywhere)."""
    proba = clf.predict_proba(X)
    weights = clf.get_weights()
    if proba.shape[1] == 2 and weights["output.bias"].shape == (1,):
        logit = np.log(proba[:, 1]) - np.log(proba[:, 0])
        weights["output.bias"] -= np.median(logit)
    elif clf._multiclass:
        weights["output.bias"] -= np.log(proba).mean(axis=0)
    else:
        weights["output.bias"] -= np.median(np.log(proba) - np.log1p(-proba), axis=0)
    return clf.set_weights(weights)


def per_step_targets(X, rng, kind="regression"):
    if kind == "regression":
        return [rng.normal(size=len(x)) for x in X]
    return [rng.randint(0, 2, len(x)) for x in X]


def assert_outputs_equal(out, expected, lengths):
    """Compare padded ONNX outputs with predictions (per step: the real
    steps of every sequence only)."""
    if lengths is None:
        assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
        return
    for i, n in enumerate(lengths):
        assert_allclose(out[i, :n], np.asarray(expected[i]), rtol=RTOL, atol=ATOL)


REGRESSORS = [
    dict(cell="rnn"),
    dict(cell="rnn", activation="relu"),
    dict(cell="rnn", hidden_layer_sizes=(5, 4), bidirectional=True),
    dict(cell="rnn", activation="relu", bidirectional=True, return_sequences=True),
    dict(cell="lstm"),
    dict(cell="lstm", peephole=True),
    dict(cell="lstm", peephole=True, hidden_layer_sizes=(5, 4), bidirectional=True),
    dict(cell="lstm", hidden_layer_sizes=(4, 3), return_sequences=True),
    dict(cell="lstm", bidirectional=True, return_sequences=True, peephole=True),
    dict(cell="gru"),
    dict(cell="gru", reset_after=False),
    dict(cell="gru", hidden_layer_sizes=(5, 4), bidirectional=True),
    dict(cell="gru", reset_after=False, hidden_layer_sizes=(4, 3),
         bidirectional=True),
    dict(cell="gru", reset_after=False, return_sequences=True),
    dict(cell="jordan"),
    dict(cell="jordan", activation="relu", hidden_layer_sizes=(5, 4, 3)),
    dict(cell="jordan", hidden_layer_sizes=(4, 3), return_sequences=True),
    dict(cell="lstm", output_activation="tanh"),
    dict(cell="gru", output_activation="sigmoid", bidirectional=True),
    dict(cell="jordan", output_activation="sigmoid", return_sequences=True),
    dict(cell="jordan", output_activation="tanh", hidden_layer_sizes=(4, 3)),
    dict(cell="gru", dtype="float64", bidirectional=True),
]


def _name(params):
    return "-".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("params", REGRESSORS, ids=_name)
def test_regressor_parity(params):
    params = {"hidden_layer_sizes": (5,), **params}
    rng = np.random.RandomState(0)
    seq = params.get("return_sequences", False)
    n_out = 2
    # variable lengths, in one padded batch with a lengths input
    X = variable_X()
    y = ([rng.normal(size=(len(x), n_out)) for x in X] if seq
         else rng.normal(size=(len(X), n_out)))
    reg = fit_tiny(RNNRegressor(**params), X, y)
    out, = session(to_onnx(reg)).run(None, to_onnx_inputs(X))
    assert out.dtype == np.float32
    expected = reg.predict(X)
    assert_outputs_equal(out, expected, [len(x) for x in X] if seq else None)
    assert np.std(np.concatenate([np.ravel(e) for e in expected])) > 0.05

    # fixed length, no lengths input
    X3 = fixed_X()
    out, = session(to_onnx(reg, variable_length=False)).run(
        None, to_onnx_inputs(X3, variable_length=False))
    assert_allclose(out, reg.predict(X3), rtol=RTOL, atol=ATOL)


def test_one_dimensional_targets_and_univariate_input():
    # y of shape (n,): the model's output is (n, 1); 2-D X is univariate
    rng = np.random.RandomState(0)
    X = rng.normal(size=(9, 7))
    reg = fit_tiny(RNNRegressor(cell="lstm", hidden_layer_sizes=(4,)), X,
                   rng.normal(size=9))
    model = to_onnx(reg)
    assert [i.name for i in model.graph.input] == ["X", "lengths"]
    assert [o.name for o in model.graph.output] == ["variable"]
    inputs = to_onnx_inputs(X)
    assert inputs["X"].shape == (9, 7, 1)
    out, = session(model).run(None, inputs)
    assert out.shape == (9, 1)
    assert_allclose(out[:, 0], reg.predict(X), rtol=RTOL, atol=ATOL)


CLASSIFIERS = [
    dict(cell="lstm", peephole=True, bidirectional=True),
    dict(cell="gru", hidden_layer_sizes=(5, 4)),
    dict(cell="rnn", reset_after=False),
    dict(cell="jordan", hidden_layer_sizes=(4, 3)),
]
LABELS = ["binary", "multiclass", "multilabel"]


def labels(kind, n, rng):
    if kind == "binary":
        return np.array([3, 7])[rng.randint(0, 2, n)]
    if kind == "multiclass":
        return np.array(["ant", "bee", "cat", "dog"])[rng.randint(0, 4, n)]
    return rng.randint(0, 2, (n, 3))


@pytest.mark.parametrize("kind", LABELS)
@pytest.mark.parametrize("params", CLASSIFIERS, ids=_name)
def test_classifier_parity(params, kind):
    rng = np.random.RandomState(0)
    X = variable_X(n=30)
    y = labels(kind, len(X), rng)
    params = {"hidden_layer_sizes": (5,), **params}
    clf = balance(fit_tiny(RNNClassifier(**params), X, y), X)
    label, proba = session(to_onnx(clf)).run(None, to_onnx_inputs(X))
    assert_allclose(proba, clf.predict_proba(X), rtol=RTOL, atol=ATOL)
    expected = clf.predict(X)
    assert_array_equal(label, expected)
    if kind != "multilabel":
        assert len(set(expected)) > 1  # the test sees more than one label
    X3 = fixed_X()
    label, proba = session(to_onnx(clf, variable_length=False)).run(
        None, to_onnx_inputs(X3, variable_length=False))
    assert_allclose(proba, clf.predict_proba(X3), rtol=RTOL, atol=ATOL)
    assert_array_equal(label, clf.predict(X3))


@pytest.mark.parametrize("cell", ["gru", "jordan"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_per_step_classifier_parity(cell, n_classes):
    rng = np.random.RandomState(0)
    X = variable_X(n=20)
    y = [rng.randint(0, n_classes, len(x)) for x in X]
    clf = fit_tiny(RNNClassifier(cell=cell, hidden_layer_sizes=(5,),
                                 return_sequences=True), X, y)
    label, proba = session(to_onnx(clf)).run(None, to_onnx_inputs(X))
    T = max(len(x) for x in X)
    assert label.shape == (len(X), T) and proba.shape == (len(X), T, n_classes)
    lengths = [len(x) for x in X]
    assert_outputs_equal(proba, clf.predict_proba(X), lengths)
    for i, n in enumerate(lengths):
        assert_array_equal(label[i, :n], clf.predict(X)[i])


@pytest.mark.parametrize("params", [
    dict(cell="gru"), dict(cell="lstm", bidirectional=True),
    dict(cell="jordan"), dict(cell="gru", embedding_dim=4),
    dict(cell="lstm", embedding_dim=4, bidirectional=True,
         hidden_layer_sizes=(4, 3)),
    dict(cell="jordan", embedding_dim=3)], ids=_name)
@pytest.mark.parametrize("Transformer", [OneHot, TfidfSequence])
def test_token_model_parity(params, Transformer):
    docs = ["a good film", "a bad film", "good acting and a good plot",
            "bad plot", "film", "an unusual film with good acting"] * 3
    y = [1, 0, 1, 0, 0, 1] * 3
    Xt = Transformer().fit_transform(docs)
    params = {"hidden_layer_sizes": (5,), **params}
    clf = fit_tiny(RNNClassifier(**params), Xt, y)
    model = to_onnx(clf)
    assert [i.name for i in model.graph.input] == ["ids", "weights", "lengths"]
    inputs = to_onnx_inputs(Xt)
    assert inputs["ids"].dtype == np.int64 and inputs["weights"].dtype == np.float32
    label, proba = session(model).run(None, inputs)
    assert_allclose(proba, clf.predict_proba(Xt), rtol=RTOL, atol=ATOL)
    assert_array_equal(label, clf.predict(Xt))


def test_a_wrong_gate_order_is_caught(monkeypatch):
    # the parity tests would fail on a plausible mistake: PyTorch's LSTM gate
    # order (i, f, g, o) passed to ONNX as is
    import sklearn_rnn.onnx as export
    X = variable_X()
    reg = fit_tiny(RNNRegressor(cell="lstm", hidden_layer_sizes=(5,)), X,
                   np.zeros(len(X)))
    monkeypatch.setitem(export._GATE_ORDER, "lstm", [0, 1, 2, 3])
    out, = session(to_onnx(reg)).run(None, to_onnx_inputs(X))
    assert np.abs(out[:, 0] - reg.predict(X)).max() > 100 * ATOL


def test_what_cannot_be_exported():
    X = variable_X()
    reg = fit_tiny(RNNRegressor(cell="gru", layer_norm=True), X, np.zeros(len(X)))
    with pytest.raises(NotImplementedError, match="layer_norm=True cannot be"):
        to_onnx(reg)
    with pytest.raises(NotFittedError):
        to_onnx(RNNRegressor())
    with pytest.raises(TypeError, match="exports RNNRegressor and RNNClassifier"):
        to_onnx(StandardScaler())
    ok = fit_tiny(RNNRegressor(cell="gru"), X, np.zeros(len(X)))
    with pytest.raises(ValueError, match="target_opset=9 is too old"):
        to_onnx(ok, target_opset=9)


def test_importing_sklearn_rnn_does_not_import_onnx(tmp_path, run_elsewhere):
    code = ("import sys, sklearn_rnn; assert 'onnx' not in sys.modules; "
            "assert 'skl2onnx' not in sys.modules; "
            "assert callable(sklearn_rnn.to_onnx)")
    run_elsewhere(code, tmp_path)


def test_missing_onnx_names_the_extra(monkeypatch):
    import sys

    import sklearn_rnn.onnx as export
    monkeypatch.setitem(sys.modules, "onnx", None)
    reg = fit_tiny(RNNRegressor(cell="gru"), variable_X(), np.zeros(13))
    with pytest.raises(ImportError, match=r"pip install sklearn-rnn\[onnx\]"):
        export.to_onnx(reg)


# ---------------------------------------------------------------------------
# skl2onnx
# ---------------------------------------------------------------------------

@pytest.fixture
def skl2onnx():
    module = pytest.importorskip("skl2onnx")
    from sklearn_rnn.onnx import register_skl2onnx
    register_skl2onnx()
    return module


def test_skl2onnx_estimator_with_lengths(skl2onnx):
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    X = variable_X(n=20)
    rng = np.random.RandomState(0)
    types = [("X", FloatTensorType([None, None, N_FEATURES])),
             ("lengths", Int64TensorType([None]))]
    reg = fit_tiny(RNNRegressor(cell="lstm", peephole=True, bidirectional=True),
                   X, rng.normal(size=20))
    model = skl2onnx.convert_sklearn(reg, initial_types=types, target_opset=18)
    out, = session(model).run(None, to_onnx_inputs(X))
    assert_allclose(out[:, 0], reg.predict(X), rtol=RTOL, atol=ATOL)

    clf = fit_tiny(RNNClassifier(cell="jordan"), X,
                   np.array(["no", "yes"])[rng.randint(0, 2, 20)])
    model = skl2onnx.convert_sklearn(clf, initial_types=types, target_opset=18,
                                     options={RNNClassifier: {"zipmap": False}})
    label, proba = session(model).run(None, to_onnx_inputs(X))
    assert_array_equal(label, clf.predict(X))
    assert_allclose(proba, clf.predict_proba(X), rtol=RTOL, atol=ATOL)


def test_skl2onnx_pipeline_with_a_scaler(skl2onnx):
    # 2-D univariate sequences: sklearn's scaler and our estimator in one graph
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    rng = np.random.RandomState(0)
    X = rng.normal(3, 2, size=(40, 8))
    pipe = make_pipeline(StandardScaler(), RNNRegressor(
        cell="gru", hidden_layer_sizes=(5,), max_iter=1, n_threads=1,
        random_state=0)).fit(X, X.sum(axis=1))
    randomize(pipe[-1])
    model = skl2onnx.convert_sklearn(
        pipe, initial_types=[("X", FloatTensorType([None, 8]))], target_opset=18)
    ops = {n.op_type for n in model.graph.node}
    assert {"Scaler", "GRU"} <= ops or {"Sub", "Div", "GRU"} <= ops
    out, = session(model).run(None, {"X": X.astype(np.float32)})
    assert_allclose(out[:, 0], pipe.predict(X), rtol=RTOL, atol=ATOL)
    # double input is cast to float32 for the recurrent part
    model = skl2onnx.convert_sklearn(
        pipe, initial_types=[("X", DoubleTensorType([None, 8]))], target_opset=18)
    out, = session(model).run(None, {"X": X})
    assert_allclose(out[:, 0], pipe.predict(X), rtol=RTOL, atol=ATOL)


def test_skl2onnx_classifier_pipeline_zipmap(skl2onnx):
    from skl2onnx.common.data_types import FloatTensorType
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 8))
    y = np.array(["a", "b", "c"])[rng.randint(0, 3, 40)]
    # peepholes without lengths: skl2onnx needs the optional inputs spelled out
    pipe = make_pipeline(StandardScaler(), RNNClassifier(
        cell="lstm", peephole=True, hidden_layer_sizes=(5,), max_iter=1,
        n_threads=1, random_state=0)).fit(X, y)
    randomize(pipe[-1])
    types = [("X", FloatTensorType([None, 8]))]
    # skl2onnx's default for classifiers: labels and a list of dicts
    model = skl2onnx.convert_sklearn(pipe, initial_types=types, target_opset=18)
    label, proba = session(model).run(None, {"X": X.astype(np.float32)})
    assert_array_equal(label, pipe.predict(X))
    expected = pipe.predict_proba(X)
    assert_allclose([[p[c] for c in "abc"] for p in proba], expected,
                    rtol=RTOL, atol=ATOL)
    model = skl2onnx.convert_sklearn(pipe, initial_types=types, target_opset=18,
                                     options={RNNClassifier: {"zipmap": False}})
    label, proba = session(model).run(None, {"X": X.astype(np.float32)})
    assert_allclose(proba, expected, rtol=RTOL, atol=ATOL)

    # per-step probabilities do not fit ZipMap: a clear error
    per_step = fit_tiny(RNNClassifier(return_sequences=True), X,
                        (X > 0).astype(int))
    with pytest.raises(NotImplementedError, match="'zipmap': False"):
        skl2onnx.convert_sklearn(per_step, initial_types=types, target_opset=18)


def test_skl2onnx_refuses_text_transformers(skl2onnx):
    from skl2onnx.common.data_types import StringTensorType
    docs = ["a good film", "a bad film"] * 5
    pipe = make_pipeline(OneHot(), RNNClassifier(max_iter=1, n_threads=1)).fit(
        docs, [1, 0] * 5)
    with pytest.raises(NotImplementedError, match="tokenise strings in Python"):
        skl2onnx.convert_sklearn(pipe, initial_types=[("X", StringTensorType([None]))])
    # the documented route: the estimator alone, fed the transformer's output
    label, _ = session(to_onnx(pipe[-1])).run(
        None, to_onnx_inputs(pipe[0].transform(docs)))
    assert_array_equal(label, pipe.predict(docs))

