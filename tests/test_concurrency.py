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


def test_single_threaded_blas_limits_and_restores():
    """``single_threaded_blas`` holds every BLAS library to one thread inside
    the block, nested blocks and blocks in other threads included, and
    restores the previous limits when the last block ends, every time (its
    controller of the libraries is made once and reused)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from pyx_rnn._threads import single_threaded_blas

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before
        if set(before.values()) != {2}:
            pytest.skip("BLAS cannot run 2 threads on this machine")
        for _ in range(3):
            with single_threaded_blas():
                assert set(blas_threads().values()) == {1}
                with single_threaded_blas():
                    assert set(blas_threads().values()) == {1}
                assert set(blas_threads().values()) == {1}
                with ThreadPoolExecutor(2) as pool:
                    seen = list(pool.map(lambda _: _inside(single_threaded_blas,
                                                           blas_threads), range(4)))
                assert all(s == {1} for s in seen)
                assert set(blas_threads().values()) == {1}
            assert blas_threads() == before


def _inside(context, probe):
    with context():
        return set(probe().values())
