"""Display classes: what they draw is the estimators' data; a clear error
without matplotlib."""

import sys

import numpy as np
import pytest

from sklearn_rnn import RNNRegressor, SequenceForecaster
from sklearn_rnn.plotting import ForecastDisplay, LossCurveDisplay

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")


def test_missing_matplotlib_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        LossCurveDisplay([1.0, 0.5]).plot()
    with pytest.raises(ImportError, match="pip install matplotlib"):
        ForecastDisplay([1.0, 2.0], [3.0]).plot()


@pytest.fixture
def pyplot():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_loss_curve_display_from_estimator(pyplot):
    X = np.random.RandomState(0).normal(size=(60, 5, 1))
    reg = RNNRegressor(hidden_layer_sizes=(4,), max_iter=4, early_stopping=True,
                       random_state=0, n_threads=1).fit(X, X.sum(axis=(1, 2)))
    disp = LossCurveDisplay.from_estimator(reg)
    np.testing.assert_array_equal(disp.line_.get_ydata(), reg.loss_curve_)
    np.testing.assert_array_equal(disp.line_.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(disp.validation_line_.get_ydata(),
                                  reg.validation_scores_)
    assert disp.figure_ is disp.ax_.figure
    # without validation scores: one line; on given axes
    _, ax = pyplot.subplots()
    disp = LossCurveDisplay([3.0, 2.0, 1.0]).plot(ax=ax, log_scale=True)
    assert disp.ax_ is ax and disp.validation_line_ is None
    assert ax.get_yscale() == "log"


def test_forecast_display_from_estimator(pyplot):
    y = np.sin(2 * np.pi * np.arange(300) / 20)
    fc = SequenceForecaster(window=20, horizon=4, strategy="direct",
                            hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                            n_threads=1).fit(y[:250])
    disp = ForecastDisplay.from_estimator(fc, history=y[:250], coverage=0.8,
                                          y_true=y[250:254], n_history=30)
    np.testing.assert_allclose(disp.forecast_line_.get_ydata(),
                               fc.predict(4, history=y[:250]))
    np.testing.assert_array_equal(disp.history_line_.get_ydata(), y[220:250])
    np.testing.assert_array_equal(disp.forecast_line_.get_xdata(), [30, 31, 32, 33])
    np.testing.assert_array_equal(disp.truth_line_.get_ydata(), y[250:254])
    lower, upper = fc.predict_interval(4, 0.8, history=y[:250])
    np.testing.assert_allclose(disp.lower, lower)
    np.testing.assert_allclose(disp.upper, upper)
    assert disp.interval_ is not None
    assert "80% interval" in [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    # no interval
    disp = ForecastDisplay.from_estimator(fc, coverage=None)
    assert disp.interval_ is None


def test_forecast_display_checks_its_data():
    with pytest.raises(ValueError, match="both lower and upper"):
        ForecastDisplay([1.0], [2.0, 3.0], lower=[1.0, 2.0])
    with pytest.raises(ValueError, match="lower has shape"):
        ForecastDisplay([1.0], [2.0, 3.0], lower=[1.0], upper=[3.0])
