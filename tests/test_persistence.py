"""Safe persistence: skops.io and the native format (sklearn_rnn.persistence).

1. Round trips: fitted RNNRegressor / RNNClassifier (binary with string
   labels, multiclass, multilabel, SGD and Adam, per-step output), the text
   transformers and pipelines of them predict bitwise as before, keep their
   fitted attributes, and continue training (partial_fit, warm_start) exactly
   like the original, random stream included.
2. skops: the untrusted types of our models are exactly TRUSTED_TYPES; they
   load with trusted=TRUSTED_TYPES and not without; the checks of our
   ``__setstate__`` also guard skops files.
3. Damaged or tampered native files (not a zip, truncated, a member missing,
   damaged or added, an edit after saving, and deliberate edits that keep the
   digests right: shapes, dtypes, class names, JSON values, NaN) raise a
   ValueError naming the problem; another version warns once.
4. What the native format refuses to save (callables, other sklearn steps)
   is refused with a message that points to skops, and leaves an existing
   file intact; a new BaseRNN subclass is covered by adding it to the
   allow-list.

Everything is tiny and single-threaded.
"""

import copy
import hashlib
import io
import json
import os
import pickle
import re
import warnings
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sklearn_rnn
from pyx_rnn.network import Network
from sklearn_rnn import (
    OneHot,
    RNNClassifier,
    RNNRegressor,
    SequenceForecaster,
    TfidfSequence,
    persistence,
)
from sklearn_rnn.persistence import NATIVE_TYPES, TRUSTED_TYPES, load, save

pytestmark = pytest.mark.filterwarnings(
    "ignore:Stochastic Optimizer. Maximum iterations:"
    "sklearn.exceptions.ConvergenceWarning")

FAST = dict(hidden_layer_sizes=(4,), max_iter=3, n_threads=1, random_state=0)
DOCS = ["a good film", "a bad film", "good acting here", "bad plot",
        "what a great film", "dull and bad"] * 4
DOC_LABELS = [1, 0, 1, 0, 1, 0] * 4


def _data(n=24, steps=5, features=2, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, steps, features))
    return X, X.sum(axis=(1, 2))


def _make(name):
    """A fitted model, its X and y. Shuffling and (recurrent) dropout make
    continued training draw random numbers."""
    X, y = _data()
    if name == "regressor":
        est = RNNRegressor(recurrent_dropout=0.2, **FAST)
    elif name == "regressor-sgd-gru-steps":
        est = RNNRegressor(cell="gru", solver="sgd", return_sequences=True,
                           dtype="float64", **FAST)
        y = np.cumsum(X[:, :, 0], axis=1)
    elif name == "classifier-binary":
        est = RNNClassifier(early_stopping=True, validation_fraction=0.25, **FAST)
        y = np.where(y > 0, "pos", "neg")
    elif name == "classifier-multiclass":
        est = RNNClassifier(cell="rnn", bidirectional=True, **FAST)
        y = np.digitize(y, [-1, 1])
    elif name == "classifier-multilabel":
        est = RNNClassifier(cell="jordan", **FAST)
        y = np.stack([y > 0, X[:, 0, 0] > 0], axis=1).astype(int)
    elif name == "tfidf-pipeline":
        est = make_pipeline(TfidfSequence(),
                            RNNClassifier(embedding_dim=3, dropout=0.1, **FAST))
        X, y = DOCS, DOC_LABELS
    elif name == "onehot-pipeline":
        est = make_pipeline(OneHot(analyzer="char", max_len=8),
                            RNNRegressor(cell="gru", **FAST))
        X, y = DOCS, np.arange(len(DOCS), dtype=float) / len(DOCS)
    else:
        raise ValueError(name)
    return est.fit(X, y), X, y


MODELS = ["regressor", "regressor-sgd-gru-steps", "classifier-binary",
          "classifier-multiclass", "classifier-multilabel", "tfidf-pipeline",
          "onehot-pipeline"]


@pytest.fixture(scope="module")
def fitted():
    return {name: _make(name) for name in MODELS}


def _final(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def _outputs(model, X):
    out = [model.predict(X)]
    if hasattr(model, "predict_proba"):
        out.append(model.predict_proba(X))
    return out


def assert_same_model(loaded, model, X):
    assert type(loaded) is type(model)
    for a, b in zip(_outputs(loaded, X), _outputs(model, X)):
        assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    new, old = _final(loaded), _final(model)
    weights = old.get_weights()
    assert set(new.get_weights()) == set(weights)
    for name, w in new.get_weights().items():
        assert_array_equal(w, weights[name])
        assert w.dtype == weights[name].dtype
    for key in ("loss_curve_", "n_iter_", "t_", "best_loss_", "n_features_in_",
                "n_outputs_", "validation_scores_"):
        assert getattr(new, key) == getattr(old, key)
    if hasattr(old, "classes_"):
        assert_array_equal(new.classes_, old.classes_)
        assert new.classes_.dtype == old.classes_.dtype
    assert _params(loaded) == _params(model)
    if hasattr(model, "steps"):
        text_new, text_old = loaded.steps[0][1], model.steps[0][1]
        assert text_new.vocabulary_ == text_old.vocabulary_
        assert text_new.transform(DOCS) == text_old.transform(DOCS)


def _params(model):
    """repr of the parameters (a RandomState by its state)."""
    return repr({k: (v.get_state()[1].tolist(), v.get_state()[2:])
                 if isinstance(v, np.random.RandomState) else v
                 for k, v in model.get_params().items()})


def assert_continues_identically(loaded, model, X, y):
    """partial_fit, then a warm-started fit, take the same steps."""
    for m in (model, loaded):
        _final(m).partial_fit(_input(m, X), y)
    assert_same_weights(loaded, model)
    for m in (model, loaded):
        m.set_params(**{_prefix(m) + "warm_start": True,
                        _prefix(m) + "max_iter": 2}).fit(X, y)
    assert_same_weights(loaded, model)
    assert _final(loaded).n_iter_ == _final(model).n_iter_


def _input(model, X):
    """What the final estimator of ``model`` reads."""
    if hasattr(model, "steps"):
        return model[:-1].transform(X)
    return X


def _prefix(model):
    return f"{model.steps[-1][0]}__" if hasattr(model, "steps") else ""


def assert_same_weights(a, b):
    wa, wb = _final(a).get_weights(), _final(b).get_weights()
    for name in wb:
        assert_array_equal(wa[name], wb[name])


# ---------------------------------------------------------------------------
# 1. native round trips
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_native_round_trip_predicts_identically_and_trains_on(name, tmp_path):
    model, X, y = _make(name)
    path = tmp_path / "model.npz"
    save(model, path)
    with zipfile.ZipFile(path) as zf:   # no pickled member anywhere
        for member in zf.namelist():
            if member.endswith(".npy"):
                data = io.BytesIO(zf.read(member))
                assert np.load(data, allow_pickle=False) is not None
    loaded = load(path)
    assert_same_model(loaded, model, X)
    assert_continues_identically(loaded, model, X, y)


def test_loaded_optimizer_updates_the_loaded_network(tmp_path):
    model, X, y = _make("regressor")
    save(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert loaded._optimizer.params is loaded._network.params
    before = loaded.get_weights()
    loaded.partial_fit(X, y)
    assert any(not np.array_equal(w, before[k])
               for k, w in loaded.get_weights().items())


def test_unfitted_estimators_and_file_objects(tmp_path):
    for est in (RNNClassifier(cell="gru", class_weight={0: 1.0, 1: 2.5},
                              hidden_layer_sizes=[3, 2]),
                OneHot(stop_words=["a", "the"]), TfidfSequence(norm=None)):
        buffer = io.BytesIO()
        save(est, buffer)
        loaded = load(io.BytesIO(buffer.getvalue()))
        assert type(loaded) is type(est)
        assert _params(loaded) == _params(est)
        assert not hasattr(loaded, "n_features_in_")


def test_random_state_instance_and_numpy_scalars_round_trip(tmp_path):
    X, y = _data()
    est = RNNRegressor(**{**FAST, "random_state": np.random.RandomState(5)},
                       alpha=np.float32(1e-3)).fit(X, y)
    save(est, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert type(loaded.alpha) is np.float32 and loaded.alpha == est.alpha
    state, loaded_state = est.random_state.get_state(), loaded.random_state.get_state()
    assert_array_equal(state[1], loaded_state[1])
    assert state[2:] == loaded_state[2:]
    assert_same_model(loaded, est, X)


def test_saving_and_pickling_leave_the_model_unchanged(fitted):
    # pickling once dropped the random stream of partial_fit from the live
    # model, so a pickled model then continued differently from its twin
    model, X, y = _make("regressor")
    twin, _, _ = _make("regressor")
    pickle.dumps(model)
    save(model, io.BytesIO())
    model.partial_fit(X, y)
    twin.partial_fit(X, y)
    assert_same_weights(model, twin)


def test_old_network_pickle_state_still_loads():
    # the state that Network pickled before (its whole __dict__, less views)
    net = Network("lstm", 2, (3,), 1)
    net.init_weights(np.random.default_rng(0))
    old = {k: v for k, v in vars(net).items()
           if k not in ("weights", "grad_views", "grads", "_pool", "_local")}
    other = Network.__new__(Network)
    other.__setstate__(old)
    assert_array_equal(other.params, net.params)
    assert other.weights["weight_hh_l0"].base is other.params


# ---------------------------------------------------------------------------
# 2. skops
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sio():
    return pytest.importorskip("skops.io")


@pytest.mark.filterwarnings("ignore:only \\d+ forecast origins")
def test_skops_untrusted_types_are_exactly_ours(fitted, sio, tmp_path):
    reported = set()
    models = {**fitted, **_forecasters()}
    for name, (model, X, y) in models.items():
        path = tmp_path / f"{name}.skops"
        sio.dump(model, path)
        untrusted = set(sio.get_untrusted_types(file=path))
        assert untrusted <= set(TRUSTED_TYPES), untrusted - set(TRUSTED_TYPES)
        reported |= untrusted
        with pytest.raises(Exception, match="[Uu]ntrusted"):
            sio.load(path)
    # every name is needed by some model (no type trusted for nothing)
    assert reported == set(TRUSTED_TYPES)


@pytest.mark.parametrize("name", MODELS)
def test_skops_round_trip_predicts_identically_and_trains_on(name, sio, tmp_path):
    model, X, y = _make(name)
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    loaded = sio.load(path, trusted=TRUSTED_TYPES)
    assert_same_model(loaded, model, X)
    assert loaded is not model
    assert_continues_identically(loaded, model, X, y)


def _skops_network_params_member(path):
    with zipfile.ZipFile(path) as zf:
        schema = json.loads(zf.read("schema.json"))

    network = _first_node(schema, lambda node: node.get("__class__") == "Network")
    return network["content"]["content"]["params"]["file"]


def _replace_members(path, replacements):
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members.update(replacements)
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("bad, match", [
    (np.zeros(7, np.float32), r"params must be an array of shape \(\d+,\)"),
    (None, "params has dtype float64, expected float32"),
    ("nan", "params contain NaN"),
])
def test_skops_files_are_checked_by_our_setstate(bad, match, fitted, sio, tmp_path):
    model, X, _ = fitted["regressor"]
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    params = model._network.params
    if bad is None:
        bad = params.astype(np.float64)
    elif isinstance(bad, str):
        bad = params.copy()
        bad[3] = np.nan
    _replace_members(path, {_skops_network_params_member(path): _npy(bad)})
    with pytest.raises(ValueError, match=match):
        sio.load(path, trusted=TRUSTED_TYPES)


# ---------------------------------------------------------------------------
# 3. damaged and tampered native files
# ---------------------------------------------------------------------------

@pytest.fixture
def saved(fitted, tmp_path):
    model, X, _ = fitted["classifier-binary"]
    path = tmp_path / "model.npz"
    save(model, path)
    return path, model, X


def test_not_a_zip_truncated_damaged_or_incomplete(saved, tmp_path):
    path, model, X = saved
    data = path.read_bytes()
    cases = {
        "pickle": (pickle.dumps(model), "not a zip archive"),
        "truncated": (data[: len(data) // 2], "not a zip archive"),
        "empty": (b"", "not a zip archive"),
    }
    # flip a byte inside an array member: the zip's CRC catches it
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("arrays/0.npy")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    cases["bit flip"] = (bytes(flipped), r"member 'arrays/0\.npy' is damaged")
    for name, (content, match) in cases.items():
        bad = tmp_path / f"{name}.npz"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=match):
            load(bad)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.npz")


def _rezip(path, drop=(), add=None, edit=None):
    """Rewrite the archive member by member (valid CRCs, old digests)."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n not in drop}
    if edit:
        members.update(edit(members))
    members.update(add or {})
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_missing_added_or_edited_members(saved):
    path, _, _ = saved
    original = path.read_bytes()
    cases = [
        (dict(drop=["arrays/1.npy"]), r"members \['arrays/1\.npy'\] are missing"),
        (dict(drop=["model.json"]), r"members \['model\.json'\] are missing"),
        (dict(drop=["metadata.json"]), r"member 'metadata\.json' is missing"),
        (dict(add={"extra.py": b"import os"}), r"unexpected members \['extra\.py'\]"),
        (dict(edit=lambda m: {"model.json": m["model.json"].replace(
            b'"n_iter_", 3', b'"n_iter_", 4')}),
         r"member 'model\.json' was changed after saving"),
        (dict(edit=lambda m: {"arrays/0.npy": _npy(np.zeros(3, np.int64))}),
         r"member 'arrays/0\.npy' was changed after saving"),
        (dict(edit=lambda m: {"metadata.json": b"{not json"}),
         r"member 'metadata\.json' is not valid JSON"),
    ]
    for kwargs, match in cases:
        path.write_bytes(original)
        _rezip(path, **kwargs)
        with pytest.raises(ValueError, match=match):
            load(path)


def _tamper(path, edit_model=None, edit_arrays=None):
    """Edit the model and its arrays, and write them back with correct
    digests: what someone who edits the file on purpose does."""
    with zipfile.ZipFile(path) as zf:
        model = json.loads(zf.read("model.json"))
        arrays = {n: np.load(io.BytesIO(zf.read(n)), allow_pickle=False)
                  for n in zf.namelist() if n.endswith(".npy")}
    if edit_model:
        edit_model(model)
    if edit_arrays:
        edit_arrays(model, arrays)
    persistence._write_archive(path, model, arrays)


def _first_node(tree, match):
    """The first dict of a JSON tree (depth first) for which ``match`` is
    true, or None."""
    if isinstance(tree, dict):
        if match(tree):
            return tree
        children = tree.values()
    elif isinstance(tree, list):
        children = tree
    else:
        return None
    for child in children:
        found = _first_node(child, match)
        if found is not None:
            return found
    return None


def _node_of(tree, class_name):
    """The node of the first object of class ``class_name``."""
    return _first_node(tree, lambda node: node.get("__type__") == "object"
                       and node["class"].endswith(class_name))


def _state_of(tree, class_name):
    """The [key, value] items of the first object of class ``class_name``."""
    return _node_of(tree, class_name)["state"]["items"]


def _set(tree, class_name, key, value):
    for item in _state_of(tree["root"], class_name):
        if item[0] == key:
            item[1] = value
            return
    raise KeyError(key)


def _get(tree, class_name, key):
    return dict((k, v) for k, v in _state_of(tree["root"], class_name)
                if isinstance(k, str))[key]


def _member(tree, class_name, key):
    return _get(tree, class_name, key)["member"]


def _replace_array(class_name, key, make):
    def edit(model, arrays):
        name = _member(model, class_name, key)
        arrays[name] = make(arrays[name])
        model["arrays"][name] = {"dtype": arrays[name].dtype.str,
                                 "shape": list(arrays[name].shape)}
    return edit


def _nan_at_3(a):
    a = a.copy()
    a[3] = np.nan
    return a


TAMPERING = [
    # arrays of the wrong shape or dtype, or not finite
    (dict(edit_arrays=_replace_array("Network", "params", lambda a: a[:-2])),
     r"model\._network: invalid saved Network: params must be an array of shape"),
    (dict(edit_arrays=_replace_array("Network", "params",
                                     lambda a: a.astype(np.float64))),
     "params has dtype float64, expected float32"),
    (dict(edit_arrays=_replace_array("Network", "params", _nan_at_3)),
     "params contain NaN or infinity"),
    (dict(edit_arrays=_replace_array("Adam", "m", lambda a: a[:5])),
     r"invalid saved Adam: m must be an array of the parameters' shape"),
    (dict(edit_arrays=_replace_array("RNNClassifier", "_best_params",
                                     lambda a: a.astype(np.float64))),
     r"_best_params has dtype float64, expected float32"),
    # the description of an array disagrees with the array
    (dict(edit_arrays=lambda model, arrays: model["arrays"][
        _member(model, "Network", "params")].update(dtype="<f8")),
     r"holds an array of dtype float32 .* but model\.json says float64"),
    (dict(edit_arrays=lambda model, arrays: model["arrays"][
        _member(model, "Network", "params")].update(dtype="|O")),
     r"array 'arrays/\d+\.npy' has dtype object, which the format does not store"),
    (dict(edit_arrays=lambda model, arrays: arrays.update(
        {_member(model, "Network", "params"): np.array([1.0], np.float32)})),
     r"holds an array of dtype float32 and shape \(1,\)"),
    # classes outside the allow-list
    (dict(edit_model=lambda m: m["root"].update({"class": "os.system"})),
     r"model: unknown class 'os\.system'; the native format loads only"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "_label_binarizer", {
        "__type__": "object", "class": "builtins.eval",
        "state": {"__type__": "dict", "items": []}})),
     r"unknown class 'builtins\.eval'"),
    # JSON values edited
    (dict(edit_model=lambda m: _set(m, "Network", "hidden_sizes",
                                    {"__type__": "tuple", "items": [5]})),
     r"params must be an array of shape \(\d+,\) for this architecture"),
    (dict(edit_model=lambda m: _set(m, "Network", "cell", "lstmx")),
     r"invalid saved Network: cell must be one of"),
    (dict(edit_model=lambda m: _set(m, "Network", "n_input", "2")),
     r"invalid saved Network: n_input='2' has the wrong type"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "n_outputs_", 2)),
     r"invalid saved RNNClassifier: n_outputs_=2 but the network has 1"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "_multiclass", True)),
     r"_multiclass=True disagrees with 2 binary classes"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "classes_", {
        "__type__": "object_array", "shape": [3], "items": ["a", "b", "c"]})),
     "classes_ and the label binarizer disagree"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "n_iter_", 7)),
     r"loss_curve_ must be a list of one loss per epoch"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "_dtype", "float16")),
     r"_dtype='float16' must be float32 or float64"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "learning_rate_init", -1)),
     r"The 'learning_rate_init' parameter of RNNClassifier must be"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "_rng_state", 3)),
     r"_rng_state must be the state of a PCG64 bit generator"),
    (dict(edit_model=lambda m: _set(m, "Adam", "t", -1)),
     r"invalid saved Adam: t=-1 must be a non-negative integer"),
    (dict(edit_model=lambda m: m["root"]["state"]["items"].append(
        [{"__type__": "tuple", "items": []}, 1])),
     r"the state must be a dict with string keys"),
    (dict(edit_model=lambda m: _set(m, "RNNClassifier", "cell", {"__type__": "set"})),
     r"invalid node of type 'set'"),
    (dict(edit_model=lambda m: m.update(extra=1)),
     r"model\.json must hold 'arrays' and 'root'"),
    (dict(edit_model=lambda m: m.update(root=_node_of(m["root"], "Network"))),
     r"the saved object is a Network, not an estimator or a pipeline"),
]


@pytest.mark.parametrize("edits, match", TAMPERING)
def test_tampered_content_is_refused_with_a_clear_error(edits, match, saved):
    path, model, X = saved
    _tamper(path, **edits)
    with pytest.raises(ValueError, match=match):
        load(path)


def test_pickled_members_are_never_unpickled(saved):
    path, model, _ = saved
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    metadata = json.loads(members.pop("metadata.json"))
    name = _member(json.loads(members["model.json"]), "Network", "params")

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo unpickled",))

    buffer = io.BytesIO()
    np.save(buffer, np.array([Boom()], dtype=object), allow_pickle=True)
    for payload in (buffer.getvalue(), pickle.dumps(Boom())):
        members[name] = payload
        metadata["sha256"][name] = hashlib.sha256(payload).hexdigest()
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("metadata.json", json.dumps(metadata))
            for n, data in members.items():
                zf.writestr(n, data)
        with pytest.raises(ValueError, match=rf"member '{name}' \(model\._network"
                                             rf"\.params\) is not a valid \.npy "
                                             rf"array: .*(pickled|allow_pickle=False)"):
            load(path)


def test_tampering_helper_alone_changes_nothing(saved):
    # the checks above fail because of their edits, not because of _tamper
    path, model, X = saved
    _tamper(path)
    assert_array_equal(load(path).predict_proba(X), model.predict_proba(X))


def _duplicate_first_id(model):
    items = _get(model, "TfidfSequence", "vocabulary_")["items"]
    items[0][1] = items[1][1]


def test_text_transformer_tampering(fitted, tmp_path):
    model, X, _ = fitted["tfidf-pipeline"]
    path = tmp_path / "model.npz"
    cases = [
        (lambda m: _set(m, "TfidfSequence", "n_features_out_", 99),
         "n_features_out_=99, expected"),
        (_duplicate_first_id, "vocabulary_ and _tokens disagree"),
        (lambda m: _set(m, "TfidfSequence", "_vectorizer", None),
         "_vectorizer must be a TfidfVectorizer"),
    ]
    for edit, match in cases:
        save(model, path)
        _tamper(path, edit_model=edit)
        with pytest.raises(ValueError, match=match):
            load(path)
    save(model, path)
    _tamper(path, edit_arrays=_replace_array("TfidfSequence", "idf_",
                                             lambda a: a[:-1]))
    with pytest.raises(ValueError, match=r"idf_ has shape \(\d+,\), expected"):
        load(path)


def test_newer_format_is_refused(saved):
    path, _, _ = saved
    _rezip(path, edit=lambda m: {"metadata.json": m["metadata.json"].replace(
        b'"format_version": 1', b'"format_version": 2')})
    with pytest.raises(ValueError, match=r"format version 2 .* upgrade it"):
        load(path)


def test_other_version_warns_once(fitted, saved, monkeypatch, tmp_path):
    path, model, X = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(path)   # same version: silent
    # the file written by another version (its estimator fitted by it too)
    _rezip(path, edit=lambda m: {"metadata.json": m["metadata.json"].replace(
        f'"sklearn_rnn_version": "{sklearn_rnn.__version__}"'.encode(),
        b'"sklearn_rnn_version": "0.0.1"')})
    other = copy.deepcopy(model)
    monkeypatch.setattr(other, "_sklearn_rnn_version", "0.0.1")
    message = (rf"saved with sklearn-rnn 0\.0\.1 and is loaded with "
               rf"{re.escape(sklearn_rnn.__version__)}")
    with pytest.warns(UserWarning, match=message) as record:
        loaded = load(path)
    assert len(record) == 1
    # an estimator fitted with another version, saved with this one
    save(other, tmp_path / "other.npz")
    with pytest.warns(UserWarning, match=message) as record:
        loaded = load(tmp_path / "other.npz")
    assert len(record) == 1
    assert_array_equal(loaded.predict(X), model.predict(X))


# ---------------------------------------------------------------------------
# 4. what the native format refuses; new estimators
# ---------------------------------------------------------------------------

def _tokens(doc):
    return doc.split()


def test_unsupported_objects_are_refused_and_the_old_file_kept(fitted, tmp_path):
    model, X, _ = fitted["regressor"]
    path = tmp_path / "model.npz"
    save(model, path)
    before = path.read_bytes()
    cases = [
        (OneHot(analyzer=_tokens).fit(DOCS),
         r"cannot save OneHot\.analyzer: it is a function or other callable.*skops"),
        (make_pipeline(StandardScaler(), RNNRegressor()),
         r"cannot save Pipeline\.steps\[0\]\[1\]: it is a "
         r"sklearn\.preprocessing\._data\.StandardScaler"),
        ({"model": model}, r"save stores RNNRegressor, RNNClassifier, "
                           r"SequenceForecaster, OneHot, TfidfSequence and "
                           r"pipelines of them, not a dict"),
    ]
    for obj, match in cases:
        with pytest.raises(ValueError, match=match):
            save(obj, path)
        assert path.read_bytes() == before
    assert [f for f in os.listdir(tmp_path) if f != "model.npz"] == []


class _CustomRNN(RNNRegressor):
    """A new estimator, as the forecaster will be."""

    def fit(self, X, y, sample_weight=None):
        super().fit(X, y, sample_weight)
        self.extra_ = [np.arange(3), {"scale": np.float64(2.0)}]
        return self


def test_a_new_estimator_is_covered_by_the_allow_list(monkeypatch, tmp_path):
    X, y = _data()
    est = _CustomRNN(**FAST).fit(X, y)
    with pytest.raises(ValueError, match=r"not a _CustomRNN"):
        save(est, tmp_path / "m.npz")
    monkeypatch.setattr(persistence, "_ESTIMATORS",
                        persistence._ESTIMATORS + (_CustomRNN,))
    save(est, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz")
    assert_same_model(loaded, est, X)
    assert_array_equal(loaded.extra_[0], est.extra_[0])
    assert loaded.extra_[1] == est.extra_[1]


def test_type_lists():
    assert TRUSTED_TYPES == sorted([
        "pyx_rnn.network.Network", "pyx_rnn.optim.Adam", "pyx_rnn.optim.SGD",
        "sklearn_rnn._classifier.RNNClassifier",
        "sklearn_rnn._regressor.RNNRegressor",
        "sklearn_rnn.forecast.SequenceForecaster", "sklearn_rnn.text.OneHot",
        "sklearn_rnn.text.TfidfSequence"])
    assert set(TRUSTED_TYPES) < set(NATIVE_TYPES)
    assert "sklearn.pipeline.Pipeline" in NATIVE_TYPES


# ---------------------------------------------------------------------------
# SequenceForecaster: series (with covariates) and symbols
# ---------------------------------------------------------------------------

def _forecasters():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(120, 2))
    y = np.cumsum(rng.normal(size=120)) + 2 * x[:, 0]
    series = SequenceForecaster(window=6, horizon=3, strategy="seq2seq",
                                difference=1, future_covariates=[0],
                                **FAST).fit(x, y)
    chars = SequenceForecaster(window=5, batch_size=4, **FAST).fit("abcab cabca " * 20)
    panel = SequenceForecaster(window=4, horizon=2, strategy="direct",
                               dtype="float64", **FAST).fit(
        [np.sin(np.arange(60) / 3), np.cos(np.arange(80) / 4)])
    return {"series": (series, x, y), "chars": (chars, None, None),
            "panel": (panel, None, None)}


def _forecaster_outputs(model, x):
    if model.target_type_ == "symbols":
        return [np.array(list(model.sample(20, prompt="ab", random_state=1))),
                np.array([model.bits_per_symbol("abcab cab")])]
    kw = {} if x is None else dict(X_future=x[:3])
    return [model.predict(3 if x is not None else 2, **kw),
            *model.predict_interval(3 if x is not None else 2, 0.8, **kw)]


@pytest.mark.filterwarnings("ignore:only \\d+ forecast origins")
@pytest.mark.parametrize("fmt", ["native", "skops", "pickle"])
def test_forecaster_round_trips(fmt, tmp_path):
    if fmt == "skops":
        sio = pytest.importorskip("skops.io")
    for name, (model, x, _) in _forecasters().items():
        path = tmp_path / f"{name}.bin"
        if fmt == "native":
            save(model, path)
            loaded = load(path)
        elif fmt == "skops":
            sio.dump(model, path)
            assert set(sio.get_untrusted_types(file=path)) <= set(TRUSTED_TYPES)
            loaded = sio.load(path, trusted=TRUSTED_TYPES)
        else:
            loaded = pickle.loads(pickle.dumps(model))
        for a, b in zip(_forecaster_outputs(loaded, x), _forecaster_outputs(model, x)):
            assert_array_equal(a, b)
        assert not hasattr(loaded, "_window_position")


@pytest.mark.filterwarnings("ignore:only \\d+ forecast origins")
def test_forecaster_state_is_checked():
    model = _forecasters()["series"][0]
    state = model.__getstate__()
    for key, value, match in [
            ("_tails", state["_tails"][:0], "_tails must be a list"),
            ("conformity_scores_", -state["conformity_scores_"], "non-negative"),
            ("_future_cols", np.array([1]), "split the"),
            ("target_type_", "text", "target_type_"),
            ("_mean", np.zeros(3), "_mean has shape")]:
        bad = dict(state, **{key: value})
        with pytest.raises(ValueError, match=match):
            pickle.loads(pickle.dumps(model)).__setstate__(bad)
