"""Tune recurrent networks with GridSearchCV, in parallel with n_jobs.

Two searches:

1. An RNNClassifier on variable-length sequences whose label compares their
   first and last steps, over the cell and the hidden size, with 3-fold
   stratified cross-validation.
2. A SequenceForecaster over the look-back window and the strategy, with
   TimeSeriesSplit: each test fold is the continuation of its training fold,
   and ``score`` is the R-squared of rolling forecasts over it.

Both run with ``n_jobs=2``; the result is the same as with ``n_jobs=1``
(every fit is reproducible from ``random_state``).

    python examples/grid_search.py [--quick]
"""

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold, TimeSeriesSplit

from sklearn_rnn import RNNClassifier, SequenceForecaster


def make_sequences(n, rng):
    """Label: whether the first step's value is above the last one's."""
    lengths = rng.randint(10, 30, size=n)
    X = [rng.normal(size=(m, 2)) for m in lengths]
    y = np.array([int(x[0, 0] > x[-1, 0]) for x in X])
    return X, y


def fit_and_report(search, what, score_name, *fit_args):
    """Fit the search and print its time, every candidate's mean test score
    and the best one."""
    start = time.perf_counter()
    search.fit(*fit_args)
    print(f"{what}: {len(search.cv_results_['params'])} candidates in "
          f"{time.perf_counter() - start:.1f}s")
    for params, score in zip(search.cv_results_["params"],
                             search.cv_results_["mean_test_score"]):
        print(f"  {params}  {score_name} {score:.3f}")
    print(f"best: {search.best_params_} ({search.best_score_:.3f})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grids (CI)")
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    max_iter = 3 if args.quick else 30

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        X, y = make_sequences(200 if args.quick else 600, rng)
        grid = {"cell": ["rnn", "gru"] if args.quick else ["rnn", "lstm", "gru"],
                "hidden_layer_sizes": [(8,), (32,)]}
        search = GridSearchCV(
            RNNClassifier(max_iter=max_iter, learning_rate_init=0.01,
                          random_state=0, n_threads=1),
            grid, cv=StratifiedKFold(3, shuffle=True, random_state=0),
            n_jobs=args.n_jobs)
        fit_and_report(search, "classifier search, 3 folds", "accuracy", X, y)
        print()

        t = np.arange(600)
        series = np.sin(2 * np.pi * t / 24) + 0.1 * rng.normal(size=600)
        grid = {"window": [4, 30], "strategy": ["recursive", "seq2seq"]}
        search = GridSearchCV(
            SequenceForecaster(horizon=6, hidden_layer_sizes=(16,),
                               max_iter=max_iter, learning_rate_init=0.01,
                               random_state=0, n_threads=1),
            grid, cv=TimeSeriesSplit(n_splits=3), n_jobs=args.n_jobs)
        fit_and_report(search, "forecaster search with TimeSeriesSplit",
                       "R2 of 6-step forecasts", series)
        print("next 6 steps:", np.round(search.predict(6), 2))


if __name__ == "__main__":
    main()
