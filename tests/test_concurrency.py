"""Thread safety: predicting from several threads at once, and fitting
several estimators in parallel threads, give exactly the sequential results."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from sklearn_rnn import RNNClassifier, RNNRegressor

# The fits are deliberately short. warnings.catch_warnings is not thread-safe,
# so the warning is filtered for the whole module instead.
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=120, seed=0):
    rng = np.random.RandomState(seed)
    X = [rng.normal(size=(k, 3)) for k in rng.randint(3, 25, size=n)]
    y = np.array([x[:, 0].sum() for x in X])
    return X, y


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "jordan"])
def test_concurrent_predict_equals_sequential(cell):
    X, y = _data()
    reg = RNNRegressor(cell=cell, hidden_layer_sizes=(8,), max_iter=3,
                       random_state=0, n_threads=2).fit(X, y)
    chunks = [X[i::4] for i in range(4)]
    expected = [reg.predict(c) for c in chunks]
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(reg.predict, chunks))
        for e, g in zip(expected, got):
            assert_array_equal(e, g)


def test_parallel_fits_equal_sequential_fits():
    X, y = _data(80)
    labels = (y > 0).astype(int)

    def fit(seed):
        clf = RNNClassifier(cell="gru", hidden_layer_sizes=(6,), max_iter=3,
                            random_state=seed, n_threads=1)
        return clf.fit(X, labels).predict_proba(X)

    expected = [fit(seed) for seed in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(fit, range(4)))
    for e, g in zip(expected, got):
        assert_array_equal(e, g)
    assert not np.array_equal(expected[0], expected[1])
