"""Prediction over data that does not fit in memory, one chunk at a time.

Training on chunks needs no helper: call ``partial_fit`` on each chunk (one
epoch over that chunk per call), as many passes as wanted, or wrap the
estimator in ``dask_ml.wrappers.Incremental`` (see docs/dask.md).
"""

import numpy as np

__all__ = ["predict_chunks"]

_METHODS = ("predict", "predict_proba", "predict_log_proba")


def predict_chunks(estimator, X, *, method="predict"):
    """Predict chunk by chunk, holding one chunk in memory at a time.

    Parameters
    ----------
    estimator : fitted RNNRegressor or RNNClassifier
    X : dask array, dask bag, or iterable of chunks
        * a ``dask.array.Array`` of fixed-length sequences, 3-D
          ``(n_sequences, n_steps, n_features)`` or 2-D univariate
          ``(n_sequences, n_steps)``, chunked along its first axis (other
          axes are merged into one chunk);
        * a ``dask.bag.Bag`` whose elements are single sequences (2-D
          arrays, possibly of different lengths);
        * any other iterable (list, generator, iterator) whose items are
          chunks of sequences in any format the estimator takes.
    method : {'predict', 'predict_proba', 'predict_log_proba'}, default='predict'

    Returns
    -------
    predictions : dask array, dask bag, or generator
        Lazy: a dask array chunked like X along its first axis; a bag of the
        per-sequence predictions, partitioned like X; or a generator of one
        prediction array (or list, for variable-length per-step
        predictions) per chunk. Nothing is computed until asked for.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_rnn import RNNRegressor
    >>> from sklearn_rnn.chunks import predict_chunks
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(30, 5, 2))
    >>> reg = RNNRegressor(hidden_layer_sizes=(4,), max_iter=1, n_threads=1,
    ...                    random_state=0).fit(X, X.sum(axis=(1, 2)))
    >>> chunks = (X[i:i + 10] for i in range(0, 30, 10))   # a generator
    >>> parts = list(predict_chunks(reg, chunks))
    >>> [len(p) for p in parts]
    [10, 10, 10]
    >>> bool(np.allclose(np.concatenate(parts), reg.predict(X)))
    True
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not hasattr(estimator, method):
        raise AttributeError(f"{type(estimator).__name__} has no {method}")
    kind = _dask_kind(X)
    if kind == "array":
        return _predict_dask_array(estimator, X, method)
    if kind == "bag":
        return X.map_partitions(_predict_partition, estimator, method)
    if isinstance(X, np.ndarray) or not hasattr(X, "__iter__"):
        raise TypeError("X must be a dask array, a dask bag, or an iterable of "
                        "chunks (e.g. a generator of arrays); for one in-memory "
                        f"array call estimator.{method}(X)")
    return (getattr(estimator, method)(chunk) for chunk in X)


def _dask_kind(X):
    module = type(X).__module__
    if not module.startswith("dask"):
        return None
    import dask.array as da
    import dask.bag as db
    if isinstance(X, da.Array):
        return "array"
    if isinstance(X, db.Bag):
        return "bag"
    return None


def _predict_block(block, estimator, method):
    return getattr(estimator, method)(block)


def _predict_partition(sequences, estimator, method):
    sequences = list(sequences)
    if not sequences:
        return []
    return list(getattr(estimator, method)(sequences))


def _predict_dask_array(estimator, X, method):
    if X.ndim not in (2, 3):
        raise ValueError(f"a dask array of sequences is 3-D (n_sequences, n_steps, "
                         f"n_features) or 2-D (univariate); got {X.ndim}-D")
    # whole sequences in every block
    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    # the shape and dtype of the output, from one sequence of zeros
    probe = np.asarray(getattr(estimator, method)(np.zeros((1,) + X.shape[1:],
                                                           X.dtype)))
    out_ndim = probe.ndim
    chunks = (X.chunks[0],) + tuple((n,) for n in probe.shape[1:])
    kwargs = {}
    if out_ndim < X.ndim:
        kwargs["drop_axis"] = list(range(out_ndim, X.ndim))
    elif out_ndim > X.ndim:
        kwargs["new_axis"] = list(range(X.ndim, out_ndim))
    return X.map_blocks(_predict_block, estimator, method, dtype=probe.dtype,
                        chunks=chunks,
                        meta=np.empty((0,) * out_ndim, probe.dtype), **kwargs)
