"""PyTorch exchange: from_torch and to_torch, both ways and round trips.

The expected values come from PyTorch itself (packed sequences, the final
states of the top layer, a Linear head), computed in each test, never from
sklearn_rnn's SequenceModel. Tolerances: 1e-10 in float64, 1e-5 in float32.
Skipped without torch.
"""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_rnn import RNNClassifier, RNNRegressor

torch = pytest.importorskip("torch")

from sklearn_rnn.torch_interop import from_torch, to_torch  # noqa: E402

TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-5, atol=1e-5)}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sequences(n=9, n_features=3, seed=0, dtype="float64"):
    rng = np.random.RandomState(seed)
    lengths = np.r_[1, 8, rng.randint(1, 9, n - 2)]
    return [rng.normal(size=(k, n_features)).astype(dtype) for k in lengths]


def padded(X):
    T = max(len(x) for x in X)
    out = np.zeros((len(X), T, X[0].shape[1]), X[0].dtype)
    for i, x in enumerate(X):
        out[i, :len(x)] = x
    return torch.from_numpy(out), torch.tensor([len(x) for x in X])


def torch_features(rnn, X, per_step=False):
    """The top layer's output that the head reads, computed by PyTorch."""
    x, lengths = padded(X)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out, state = rnn(packed)
        if per_step:
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
            return out
        h_n = state[0] if isinstance(state, tuple) else state
        h_n = h_n.view(rnn.num_layers, 2 if rnn.bidirectional else 1, len(X), -1)[-1]
        return torch.cat(list(h_n), dim=1)


def torch_network(cell, bidirectional=False, dtype="float64", n_out=2, seed=0,
                  nonlinearity="tanh", num_layers=2, hidden=5, bias=True):
    torch.manual_seed(seed)
    kwargs = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
    rnn = MODULES[cell](3, hidden, num_layers=num_layers, batch_first=True,
                        bidirectional=bidirectional, bias=bias,
                        dtype=TORCH_DTYPE[dtype], **kwargs)
    with torch.no_grad():  # larger than PyTorch's init: every gate matters
        for p in rnn.parameters():
            p.uniform_(-0.8, 0.8)
    head = torch.nn.Linear(hidden * (2 if bidirectional else 1), n_out,
                           dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        head.weight.uniform_(-1, 1)
    return rnn, head


def per_sequence(out, X):
    return [out[i, :len(x)].numpy() for i, x in enumerate(X)]


# ---------------------------------------------------------------------------
# PyTorch -> estimator
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell,nonlinearity", [
    ("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_from_torch_regressor(cell, nonlinearity, bidirectional, dtype):
    rnn, head = torch_network(cell, bidirectional, dtype, nonlinearity=nonlinearity)
    X = sequences(dtype=dtype)
    with torch.no_grad():
        expected = head(torch_features(rnn, X)).numpy()
    reg = from_torch(rnn, head, n_threads=1)
    assert isinstance(reg, RNNRegressor)
    assert reg.dtype == dtype and reg.activation == nonlinearity
    assert reg.hidden_layer_sizes == (5, 5) and reg.bidirectional == bidirectional
    assert reg.n_features_in_ == 3 and reg.n_iter_ == 0
    assert_allclose(reg.predict(X), expected, **TOL[dtype])
    assert np.std(expected) > 0.05


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_from_torch_per_step_with_output_activation(cell):
    rnn, head = torch_network(cell, bidirectional=True, n_out=1)
    X = sequences()
    with torch.no_grad():
        expected = torch.tanh(head(torch_features(rnn, X, per_step=True)))[..., 0]
    reg = from_torch(rnn, head, return_sequences=True, output_activation="tanh",
                     n_threads=1)
    for got, want in zip(reg.predict(X), per_sequence(expected, X)):
        assert_allclose(got, want, **TOL["float64"])


@pytest.mark.parametrize("n_head", [1, 2])
def test_from_torch_binary_classifier(n_head):
    rnn, head = torch_network("gru", n_out=n_head)
    X = sequences(n=30)
    with torch.no_grad():
        # a bias that splits the sequences between the classes, half-way
        # between the two middle ones (torch.median would put one of them on
        # the boundary, where rounding decides its class)
        z = head(torch_features(rnn, X))
        head.bias[-1] -= torch.quantile(z[:, -1] - (z[:, 0] if n_head == 2 else 0),
                                        0.5)
        z = head(torch_features(rnn, X))
        p1 = (torch.sigmoid(z[:, 0]) if n_head == 1
              else torch.softmax(z, dim=1)[:, 1]).numpy()
    clf = from_torch(rnn, head, classes=["no", "yes"], n_threads=1)
    assert clf.n_outputs_ == 1
    assert_allclose(clf.predict_proba(X)[:, 1], p1, **TOL["float64"])
    assert_array_equal(clf.predict(X), np.where(p1 > 0.5, "yes", "no"))
    assert 0 < np.mean(p1 > 0.5) < 1


def test_from_torch_multiclass_and_multilabel():
    rnn, head = torch_network("lstm", bidirectional=True, n_out=3)
    X = sequences(n=30)
    with torch.no_grad():
        z = head(torch_features(rnn, X))
    clf = from_torch(rnn, head, classes=[10, 20, 30], n_threads=1)
    assert_allclose(clf.predict_proba(X), torch.softmax(z, 1).numpy(),
                    **TOL["float64"])
    assert_array_equal(clf.predict(X), np.array([10, 20, 30])[z.argmax(1).numpy()])
    multi = from_torch(rnn, head, multilabel=True, n_threads=1)
    assert_allclose(multi.predict_proba(X), torch.sigmoid(z).numpy(),
                    **TOL["float64"])
    assert_array_equal(multi.predict(X), (z > 0).numpy().astype(int))


def test_from_torch_state_dicts_and_no_bias():
    rnn, head = torch_network("gru", bias=False)
    X = sequences()
    with torch.no_grad():
        expected = head(torch_features(rnn, X)).numpy()
    # the module's and the head's state_dicts
    reg = from_torch(rnn.state_dict(), head.state_dict(), cell="gru", n_threads=1)
    assert_allclose(reg.predict(X), expected, **TOL["float64"])
    # one state_dict with the head inside, as get_weights() names it
    state = dict(rnn.state_dict())
    state["output.weight"], state["output.bias"] = head.weight, head.bias
    reg = from_torch(state, cell="gru", n_threads=1)
    assert_allclose(reg.predict(X), expected, **TOL["float64"])
    assert not reg.get_weights()["bias_ih_l0"].any()


def test_from_torch_continues_training():
    rnn, head = torch_network("lstm", n_out=1)
    X = sequences(n=40)
    y = np.array([x[:, 0].sum() for x in X])
    reg = from_torch(rnn, head, n_threads=1, learning_rate_init=0.01,
                     random_state=0)
    before = reg.get_weights()
    start = np.mean((reg.predict(X) - y) ** 2)
    for _ in range(30):
        reg.partial_fit(X, y)
    assert reg.n_iter_ == 30
    assert not np.array_equal(before["weight_hh_l1"], reg.get_weights()["weight_hh_l1"])
    assert np.mean((reg.predict(X) - y) ** 2) < 0.5 * start


def test_from_torch_errors():
    rnn, head = torch_network("lstm")
    with pytest.raises(ValueError, match="give cell="):
        from_torch(rnn.state_dict(), head)
    with pytest.raises(ValueError, match="cell='gru' but rnn is a LSTM"):
        from_torch(rnn, head, cell="gru")
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(20, 5\)"):
        from_torch(rnn.state_dict(), head, cell="gru")
    with pytest.raises(ValueError, match="3 classes need a head with 3 outputs"):
        from_torch(rnn, head, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="map the top layer's 5 features"):
        from_torch(rnn, torch.nn.Linear(4, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="output.weight and output.bias"):
        from_torch(rnn.state_dict(), cell="lstm")
    with pytest.raises(TypeError, match="torch.nn.RNN, LSTM or GRU"):
        from_torch(torch.nn.Linear(2, 2), head)
    proj = torch.nn.LSTM(3, 5, proj_size=2, batch_first=True)
    with pytest.raises(NotImplementedError, match="proj_size"):
        from_torch(proj, torch.nn.Linear(2, 1))


# ---------------------------------------------------------------------------
# estimator -> PyTorch
# ---------------------------------------------------------------------------

def randomized(est, X, y, seed=0):
    est.set_params(max_iter=1, n_threads=1, random_state=0).fit(X, y)
    rng = np.random.RandomState(seed)
    return est.set_weights({k: rng.normal(scale=0.7, size=w.shape)
                            for k, w in est.get_weights().items()})


ESTIMATORS = [
    ("reg", dict(cell="rnn", activation="relu", bidirectional=True)),
    ("reg", dict(cell="lstm", hidden_layer_sizes=(4, 4), output_activation="sigmoid")),
    ("reg", dict(cell="gru", bidirectional=True, return_sequences=True)),
    ("binary", dict(cell="gru", hidden_layer_sizes=(4, 4), bidirectional=True)),
    ("multiclass", dict(cell="lstm", bidirectional=True)),
    ("multiclass", dict(cell="rnn", return_sequences=True)),
]


def make(kind, params, dtype, X, seed=0):
    rng = np.random.RandomState(seed)
    seq = params.get("return_sequences", False)
    params = {"hidden_layer_sizes": (4,), "dtype": dtype, **params}
    if kind == "reg":
        y = ([rng.normal(size=(len(x), 2)) for x in X] if seq
             else rng.normal(size=(len(X), 2)))
        return randomized(RNNRegressor(**params), X, y)
    n_classes = 2 if kind == "binary" else 3
    y = ([rng.randint(0, n_classes, len(x)) for x in X] if seq
         else rng.randint(0, n_classes, len(X)))
    return randomized(RNNClassifier(**params), X, y)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind,params", ESTIMATORS)
def test_to_torch_and_back(kind, params, dtype):
    X = sequences(n=20, dtype=dtype)
    est = make(kind, params, dtype, X)
    model = to_torch(est)
    assert model.rnn.weight_ih_l0.dtype == TORCH_DTYPE[dtype]
    x, lengths = padded(X)
    with torch.no_grad():
        out = model(x, lengths)
    if kind == "reg":
        expected = est.predict(X)
    else:
        expected = est.predict_proba(X)
        if kind == "binary":
            expected = expected[:, 1:]
    if est.return_sequences:
        for got, want in zip(per_sequence(out, X), expected):
            assert_allclose(got, want, **TOL[dtype])
    else:
        assert_allclose(out.numpy(), expected, **TOL[dtype])
    # PyTorch itself, without the SequenceModel, agrees with the features
    feats = torch_features(model.rnn, X, per_step=est.return_sequences)
    with torch.no_grad():
        assert_allclose(model.output(feats).numpy(), model.logits(x, lengths).numpy(),
                        **TOL[dtype])

    # and back: the same weights, bit for bit, and the same predictions
    classes = getattr(est, "classes_", None)
    back = from_torch(model, classes=classes, n_threads=1)
    assert type(back) is type(est)
    assert back.return_sequences == est.return_sequences and back.dtype == dtype
    for name, w in est.get_weights().items():
        assert_array_equal(back.get_weights()[name], w)
    if kind == "reg":
        assert_array_equal(np.concatenate(back.predict(X)),
                           np.concatenate(est.predict(X)))
    else:
        assert_array_equal(np.concatenate(back.predict_proba(X)),
                           np.concatenate(est.predict_proba(X)))


def test_torch_to_estimator_to_torch_round_trip():
    rnn, head = torch_network("lstm", bidirectional=True)
    model = to_torch(from_torch(rnn, head, n_threads=1))
    expected = {"rnn." + k: v for k, v in rnn.state_dict().items()}
    expected.update({"output." + k: v for k, v in head.state_dict().items()})
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
    # the state_dict of a SequenceModel loads too
    X = sequences()
    reg = from_torch(model.state_dict(), cell="lstm", n_threads=1)
    with torch.no_grad():
        assert_allclose(reg.predict(X), head(torch_features(rnn, X)).numpy(),
                        **TOL["float64"])


@pytest.mark.parametrize("params,match", [
    (dict(cell="jordan"), "no Jordan network"),
    (dict(cell="lstm", peephole=True), "no peepholes"),
    (dict(cell="gru", reset_after=False), "reset_after=False"),
    (dict(cell="gru", layer_norm=True), "layer_norm=True"),
    (dict(cell="gru", hidden_layer_sizes=(4, 3)), r"hidden_layer_sizes=\(4, 3\)"),
])
def test_to_torch_refuses_what_torch_cannot_express(params, match):
    X = sequences()
    est = RNNRegressor(max_iter=1, n_threads=1, random_state=0, **params).fit(
        X, np.zeros(len(X)))
    with pytest.raises(NotImplementedError, match=match):
        to_torch(est)


def test_importing_sklearn_rnn_does_not_import_torch(tmp_path, run_elsewhere):
    code = ("import sys, sklearn_rnn, sklearn_rnn.torch_interop; "
            "assert 'torch' not in sys.modules")
    run_elsewhere(code, tmp_path)

