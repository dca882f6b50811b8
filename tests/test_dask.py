"""Dask: searches on a real cluster, chunked training and chunked prediction.

A ``LocalCluster`` of two worker processes on loopback runs a GridSearchCV
of a Pipeline through joblib's dask backend; its results must equal the
sequential search's exactly (the estimators give bit-for-bit the same model
for a given random_state, whatever the process or thread count). Chunked
training (partial_fit over chunks, and dask-ml's Incremental on a dask array)
must reach the accuracy of an in-memory fit. Skipped without dask,
distributed and dask-ml.
"""

import os
import pickle

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_rnn import RNNClassifier, RNNRegressor
from sklearn_rnn.chunks import predict_chunks

da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
distributed = pytest.importorskip("distributed")

# Short fits on purpose: their ConvergenceWarning is expected.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Stochastic Optimizer. Maximum iterations:"
    "sklearn.exceptions.ConvergenceWarning")


def sign_data(n, seed, n_steps=8):
    """Univariate sequences (2-D X); label: is the sum positive?"""
    rng = np.random.RandomState(seed)
    X = rng.uniform(-1, 1, (n, n_steps))
    return X, (X.sum(axis=1) > 0).astype(int)


@pytest.fixture(scope="module")
def client():
    # the nanny writes OMP_NUM_THREADS and friends into this process's
    # environment too (for its children): put it back afterwards
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        yield c
    os.environ.clear()
    os.environ.update(environ)


def _worker_threads():
    from pyx_rnn._openmp import effective_n_threads
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "n_threads=None": effective_n_threads(None),
            "pid": os.getpid()}


def test_workers_give_each_fit_one_thread(client):
    # dask's nanny starts every worker process with OMP_NUM_THREADS=1
    # (distributed.nanny.pre-spawn-environ), so n_threads=None resolves to
    # one thread per task: two single-threaded workers never oversubscribe
    seen = client.run(_worker_threads)
    assert len(seen) == 2
    assert len({s["pid"] for s in seen.values()}) == 2
    for s in seen.values():
        assert s["OMP_NUM_THREADS"] == "1"
        assert s["n_threads=None"] == 1
    # and the same holds in the tasks that joblib's dask backend runs
    with joblib.parallel_backend("dask"):
        in_tasks = joblib.Parallel(n_jobs=-1)(
            joblib.delayed(_worker_threads)() for _ in range(4))
    assert {s["n_threads=None"] for s in in_tasks} == {1}


def test_grid_search_on_the_cluster_equals_the_sequential_search(client):
    X, y = sign_data(90, seed=0)
    pipe = Pipeline([
        ("scale", StandardScaler()),
        # n_threads=None: the workers' share (one thread each, see above)
        ("rnn", RNNClassifier(max_iter=8, learning_rate_init=0.02,
                              random_state=0)),
    ])
    grid = {"rnn__cell": ["gru", "lstm"], "rnn__hidden_layer_sizes": [(4,), (8,)]}
    sequential = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(X, y)
    # pre_dispatch="all": the 12 fits go out at once, one task each. By
    # default joblib dispatches a few, and when those come back fast it
    # batches all the rest into one task, which then runs on one worker
    with distributed.get_task_stream(client) as stream, \
            joblib.parallel_backend("dask"):
        distributed_search = GridSearchCV(pipe, grid, cv=3, n_jobs=-1,
                                          pre_dispatch="all").fit(X, y)
    # the fits ran on both workers of the cluster
    workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2

    a, b = sequential.cv_results_, distributed_search.cv_results_
    assert a.keys() == b.keys()
    for key in a:
        if "time" in key:
            continue
        if key == "params":
            assert a[key] == b[key]
        else:
            assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
    assert sequential.best_params_ == distributed_search.best_params_
    assert sequential.best_score_ == distributed_search.best_score_
    X_new, _ = sign_data(30, seed=1)
    assert_array_equal(sequential.predict_proba(X_new),
                       distributed_search.predict_proba(X_new))
    # the scores differ between candidates: the comparison means something
    assert len(set(a["mean_test_score"])) > 1


@pytest.mark.parametrize("Est", [RNNClassifier, RNNRegressor])
def test_estimators_pickle_small(Est):
    # what a cluster ships: unfitted clones to the workers, fitted models
    # back; the size follows the parameters, not the training data
    params = dict(cell="gru", hidden_layer_sizes=(8,), max_iter=2, n_threads=1,
                  random_state=0)
    assert len(pickle.dumps(Est(**params))) < 2000
    sizes = []
    for n in (100, 2000):
        X, y = sign_data(n, seed=0)
        est = Est(**params).fit(X, y)
        sizes.append(len(pickle.dumps(est)))
    n_bytes = est._network.params.nbytes
    # the weights, Adam's two moments and the best epoch's weights, plus a
    # few kB of attributes
    assert sizes[1] <= 4 * n_bytes + 4000
    assert abs(sizes[1] - sizes[0]) < 100


# A sequence's prediction may change in the last bit with the other sequences
# of its batch (the engine's blocks of sequences); chunks make other batches.
# The chunked-prediction tests use float64 models and compare to 1e-12.
CLOSE = dict(rtol=1e-12, atol=1e-14)


def _fit_in_memory(X, y, epochs):
    return RNNClassifier(cell="gru", hidden_layer_sizes=(8,), learning_rate_init=0.01,
                         max_iter=epochs, n_threads=1, random_state=0).fit(X, y)


EPOCHS = 20


def test_partial_fit_over_chunks_reaches_the_in_memory_accuracy():
    X, y = sign_data(400, seed=0)
    X_test, y_test = sign_data(300, seed=1)
    in_memory = _fit_in_memory(X, y, EPOCHS).score(X_test, y_test)

    def chunks():  # e.g. read from disk: one chunk in memory at a time
        for start in range(0, 400, 100):
            yield X[start:start + 100], y[start:start + 100]

    chunked = RNNClassifier(cell="gru", hidden_layer_sizes=(8,),
                            learning_rate_init=0.01, n_threads=1, random_state=0)
    for _ in range(EPOCHS):
        for X_chunk, y_chunk in chunks():
            chunked.partial_fit(X_chunk, y_chunk, classes=[0, 1])
    assert chunked.n_iter_ == EPOCHS * 4
    accuracy = chunked.score(X_test, y_test)
    assert accuracy > 0.9
    assert accuracy >= in_memory - 0.02


def test_incremental_on_a_dask_array_reaches_the_in_memory_accuracy(client):
    Incremental = pytest.importorskip("dask_ml.wrappers").Incremental
    X, y = sign_data(400, seed=0)
    X_test, y_test = sign_data(300, seed=1)
    in_memory = _fit_in_memory(X, y, EPOCHS).score(X_test, y_test)

    # dask-ml's Incremental reads 2-D blocks: univariate sequences
    X_dask = da.from_array(X, chunks=(100, 8))
    y_dask = da.from_array(y, chunks=100)
    inc = Incremental(RNNClassifier(cell="gru", hidden_layer_sizes=(8,),
                                    learning_rate_init=0.01, n_threads=1,
                                    random_state=0),
                      shuffle_blocks=True, random_state=0)
    for _ in range(EPOCHS):
        inc.partial_fit(X_dask, y_dask, classes=[0, 1])
    assert inc.estimator_.n_iter_ == EPOCHS * 4
    accuracy = inc.estimator_.score(X_test, y_test)
    assert accuracy > 0.9
    assert accuracy >= in_memory - 0.02
    # prediction through the wrapper's estimator, chunk by chunk
    pred = predict_chunks(inc.estimator_, da.from_array(X_test, chunks=100))
    assert_array_equal(pred.compute(), inc.estimator_.predict(X_test))


def test_predict_chunks_dask_array(client):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(70, 6, 2))
    labels = np.array(["ant", "bee", "cat"])[rng.randint(0, 3, 70)]
    params = dict(hidden_layer_sizes=(4,), max_iter=1, n_threads=1, random_state=0,
                  dtype="float64")
    clf = RNNClassifier(**params).fit(X, labels)
    X_dask = da.from_array(X, chunks=(16, 3, 2))  # steps are merged back
    lazy = predict_chunks(clf, X_dask)
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == X_dask.chunks[0]
    assert_array_equal(lazy.compute(), clf.predict(X))
    lazy = predict_chunks(clf, X_dask, method="predict_proba")
    assert lazy.shape == (70, 3) and lazy.chunks[0] == X_dask.chunks[0]
    assert_allclose(lazy.compute(), clf.predict_proba(X), **CLOSE)
    # per-step predictions of univariate sequences: a new trailing axis
    per_step = RNNClassifier(return_sequences=True, **params)
    per_step.fit(X[:, :, 0], (X[:, :, 1] > 0).astype(int))
    lazy = predict_chunks(per_step, da.from_array(X[:, :, 0], chunks=20),
                          method="predict_proba")
    assert lazy.shape == (70, 6, 2)
    assert_allclose(lazy.compute(), per_step.predict_proba(X[:, :, 0]), **CLOSE)


def test_predict_chunks_bag_and_generator():
    rng = np.random.RandomState(0)
    X = [rng.normal(size=(n, 2)) for n in rng.randint(1, 12, 40)]
    reg = RNNRegressor(hidden_layer_sizes=(4,), max_iter=1, n_threads=1,
                       random_state=0, return_sequences=True, dtype="float64")
    reg.fit(X, [x[:, 0] for x in X])
    expected = reg.predict(X)
    bag = predict_chunks(reg, db.from_sequence(X, npartitions=5))
    got = bag.compute(scheduler="sync")
    assert len(got) == len(X)
    for g, e in zip(got, expected):
        assert_allclose(g, e, **CLOSE)

    consumed = []

    def chunks():
        for start in range(0, 40, 15):
            consumed.append(start)
            yield X[start:start + 15]

    lazy = predict_chunks(reg, chunks())
    assert consumed == []  # nothing read before it is asked for
    first = next(lazy)
    assert consumed == [0] and len(first) == 15
    rest = [p for part in lazy for p in part]
    for g, e in zip(list(first) + rest, expected):
        assert_allclose(g, e, **CLOSE)

    with pytest.raises(TypeError, match="for one in-memory array"):
        predict_chunks(reg, np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="method must be one of"):
        predict_chunks(reg, [], method="score")
    with pytest.raises(AttributeError, match="RNNRegressor has no predict_proba"):
        predict_chunks(reg, [], method="predict_proba")

