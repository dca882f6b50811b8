"""scikit-learn's common estimator checks, for every cell.

The checks give 2-D ``X`` of shape (n_samples, n_features); the estimators
read it as ``n_samples`` univariate sequences of ``n_features`` steps. So
``n_features_in_`` is 1 (features per step), not ``X.shape[1]``, and dropping
a column of X shortens every sequence by one step instead of removing a
feature. The few checks built on the other reading are expected to fail and
listed, with the reason, in ``_expected_failed_checks``; every other check
must pass (``xfail_strict=True`` also fails an expected failure that starts to
pass, so the list cannot go stale).

Settings are small but large enough for ``check_regressors_train`` /
``check_classifiers_train`` (R^2 > 0.5, accuracy > 0.83) to pass. A single
Jordan layer carries only its output (one unit for a scalar target) from step
to step, too little memory for the regression check, whose informative
feature sits in the middle of the sequence; two stacked Jordan layers (the
lower one also receives the upper one's state) learn it. ``n_threads=1``
keeps the run short on a loaded machine; thread counts are tested in
test_estimators.py. ``check_sample_weight_equivalence_on_dense_data`` runs on
a float64 copy of the estimator (see ``FLOAT64_CHECKS``).

test_estimators.py::test_2d_X_is_read_as_univariate_sequences checks the
behaviour behind each expected failure, and
test_estimators.py::test_classifiers_train_2d the parts of
``check_classifiers_train`` before the one that cannot hold.
"""

import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_rnn import RNNClassifier, RNNRegressor

CELL_SETTINGS = {
    "rnn": dict(hidden_layer_sizes=(8,), learning_rate_init=0.03, max_iter=40),
    "lstm": dict(hidden_layer_sizes=(8,), learning_rate_init=0.03, max_iter=40),
    "gru": dict(hidden_layer_sizes=(8,), learning_rate_init=0.03, max_iter=40),
    "jordan": dict(hidden_layer_sizes=(8, 8), learning_rate_init=0.01, max_iter=100),
}


# Checks run on a float64 version of the estimator, with at most 20 epochs.
# Fitting with integer sample weights and with the sequences removed /
# repeated accordingly is the same computation, summed in another order. In
# float32 the first epochs already differ by ~1e-7 relative (the check's
# rtol); and even in float64, Adam amplifies rounding exponentially on the
# check's random data (the difference grows from 1e-16 after 5 epochs to
# 1e-11 after 50 and 1e-3 after 100 for the 2-layer Jordan network).
FLOAT64_CHECKS = {"check_sample_weight_equivalence_on_dense_data"}


def _estimators():
    for cell, settings in CELL_SETTINGS.items():
        for Est in (RNNRegressor, RNNClassifier):
            yield Est(cell=cell, random_state=0, n_threads=1, **settings)


def _expected_failed_checks(estimator):
    failed = {
        # 2-D X is (n_sequences, n_steps): one feature per step, so
        # n_features_in_ is 1 and not X.shape[1].
        "check_n_features_in": (
            "2-D X holds univariate sequences: n_features_in_ is the number of "
            "features per step (1), not X.shape[1] (the number of steps)"),
        "check_n_features_in_after_fitting": (
            "2-D X holds univariate sequences: n_features_in_ is 1, and X[:, [1]] "
            "is a valid input (sequences of one step), not a feature mismatch"),
        # X[:, :-1] is the same univariate sequences one step shorter: valid.
        "check_estimators_partial_fit_n_features": (
            "X[:, :-1] is the same univariate sequences with one step less, which "
            "partial_fit rightly accepts; the feature count (1) is unchanged"),
    }
    if isinstance(estimator, RNNClassifier):
        # the check's last part: predict(X.T) must raise; X.T is 2 univariate
        # sequences of 300 steps, a valid input. The part before it (training
        # accuracy > 0.83, predict_proba consistent with predict) is
        # test_estimators.py::test_classifiers_train_2d.
        failed["check_classifiers_train"] = (
            "predict(X.T) is valid (2-D X are univariate sequences of any "
            "length), so it cannot raise a feature-count error")
    return failed


# The checks fit with few epochs on purpose: the ConvergenceWarning for
# reaching max_iter is expected and is no error here (pytest turns warnings
# into errors, pyproject.toml); a diverging fit's warning still is.
@pytest.mark.filterwarnings(
    "ignore:Stochastic Optimizer. Maximum iterations:"
    "sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(
    list(_estimators()),
    expected_failed_checks=_expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_compatible_estimator(estimator, check):
    if getattr(check, "func", check).__name__ in FLOAT64_CHECKS:
        estimator = clone(estimator).set_params(
            dtype="float64", max_iter=min(estimator.max_iter, 20))
    check(estimator)
