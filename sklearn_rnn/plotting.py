"""Plots in scikit-learn's Display style (matplotlib is optional).

Each display is built from data, or fitted estimators via
``from_estimator``, and draws with ``plot(ax=None)``; the matplotlib objects
are left in ``ax_``, ``figure_`` and the line attributes, as in
``sklearn.metrics.RocCurveDisplay``.
"""

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["ForecastDisplay", "LossCurveDisplay"]


def _axes(ax, caller):
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            f"{caller} needs matplotlib, an optional dependency: pip install "
            "matplotlib (or pip install 'sklearn-rnn[plot]')") from exc

    if ax is None:
        _, ax = plt.subplots()
    return ax


class LossCurveDisplay:
    """Training loss per epoch, and the validation score when there is one.

    Parameters
    ----------
    loss_curve : array-like of shape (n_epochs,)
    validation_scores : array-like of shape (n_epochs,), default=None
        Drawn on a second y axis.
    loss_name : str, default='training loss'
    score_name : str, default='validation score'

    Attributes
    ----------
    line_ : matplotlib Line2D
        The loss curve.
    validation_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sklearn_rnn.plotting import LossCurveDisplay
    >>> disp = LossCurveDisplay([0.9, 0.5, 0.4], [0.2, 0.6, 0.7]).plot()
    >>> disp.line_.get_ydata().tolist()
    [0.9, 0.5, 0.4]

    With a fitted estimator: ``LossCurveDisplay.from_estimator(reg)``, then
    ``disp.figure_.savefig("loss.png")``.
    """

    def __init__(self, loss_curve, validation_scores=None, *,
                 loss_name="training loss", score_name="validation score"):
        self.loss_curve = np.asarray(loss_curve, dtype=float)
        self.validation_scores = (None if validation_scores is None
                                  else np.asarray(validation_scores, dtype=float))
        self.loss_name = loss_name
        self.score_name = score_name

    @classmethod
    def from_estimator(cls, estimator, *, ax=None, **kwargs):
        """Plot the ``loss_curve_`` (and ``validation_scores_``) of a fitted
        RNNRegressor, RNNClassifier or SequenceForecaster."""
        check_is_fitted(estimator, "loss_curve_")
        if not estimator.loss_curve_:
            raise ValueError("the estimator has no loss curve: it was fitted for "
                             "0 epochs")
        return cls(estimator.loss_curve_,
                   getattr(estimator, "validation_scores_", None)).plot(ax=ax, **kwargs)

    def plot(self, ax=None, *, log_scale=False, **kwargs):
        """Draw the curves.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            New figure and axes when None.
        log_scale : bool, default=False
            Logarithmic loss axis.
        **kwargs
            Passed to ``ax.plot`` for the loss curve.

        Returns
        -------
        self
        """
        ax = _axes(ax, f"{type(self).__name__}.plot")
        epochs = np.arange(1, len(self.loss_curve) + 1)
        (self.line_,) = ax.plot(epochs, self.loss_curve, label=self.loss_name,
                                **kwargs)
        ax.set_xlabel("epoch")
        ax.set_ylabel(self.loss_name)
        if log_scale:
            ax.set_yscale("log")
        self.validation_line_ = None
        if self.validation_scores is not None and len(self.validation_scores):
            twin = ax.twinx()
            (self.validation_line_,) = twin.plot(
                epochs[:len(self.validation_scores)], self.validation_scores,
                color="tab:orange", label=self.score_name)
            twin.set_ylabel(self.score_name)
            ax.legend(handles=[self.line_, self.validation_line_], loc="best")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self


class ForecastDisplay:
    """A series' recent history, a forecast, its interval and the truth.

    Parameters
    ----------
    history : array-like of shape (n_history,)
        The last observed steps (one channel).
    forecast : array-like of shape (horizon,)
    lower, upper : array-like of shape (horizon,), default=None
        Interval bounds.
    y_true : array-like of shape (<= horizon,), default=None
        What happened, when known.
    coverage : float, default=None
        Nominal coverage of the interval, for the legend.

    Attributes
    ----------
    history_line_, forecast_line_, truth_line_ : matplotlib Line2D
    interval_ : matplotlib PolyCollection or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, history, forecast, lower=None, upper=None, y_true=None,
                 coverage=None):
        self.history = np.asarray(history, dtype=float).ravel()
        self.forecast = np.asarray(forecast, dtype=float).ravel()
        self.lower, self.upper, self.y_true = (
            None if a is None else np.asarray(a, dtype=float).ravel()
            for a in (lower, upper, y_true))
        self.coverage = coverage
        if (self.lower is None) != (self.upper is None):
            raise ValueError("give both lower and upper, or neither")
        for name in ("lower", "upper"):
            bound = getattr(self, name)
            if bound is not None and bound.shape != self.forecast.shape:
                raise ValueError(f"{name} has shape {bound.shape}; the forecast "
                                 f"has {self.forecast.shape}")

    @classmethod
    def from_estimator(cls, forecaster, *, history=None, horizon=None, coverage=0.9,
                       y_true=None, n_history=None, channel=0, ax=None):
        """Forecast with a fitted SequenceForecaster and plot it.

        Parameters
        ----------
        forecaster : SequenceForecaster
            Fitted on one series.
        history : array-like, default=None
            Forecast from the end of this series. None forecasts from the end
            of the training series, of which the forecaster keeps (and this
            draws) only the last ``window + difference`` steps.
        horizon : int, default=None
            The forecaster's horizon when None.
        coverage : float or None, default=0.9
            Interval coverage; None draws no interval.
        y_true : array-like, default=None
            The actual continuation, drawn for comparison.
        n_history : int, default=None
            Steps of history to draw (all when None).
        channel : int, default=0
            The channel to draw, for several channels.
        ax : matplotlib Axes, default=None

        Returns
        -------
        display : ForecastDisplay
        """
        check_is_fitted(forecaster, "target_type_")
        pred = forecaster.predict(horizon, history=history)
        if np.ndim(pred) > 2 or (np.ndim(pred) == 2 and forecaster._one_d):
            raise ValueError("ForecastDisplay draws one series; give one history")
        lower = upper = None
        if coverage is not None:
            lower, upper = forecaster.predict_interval(horizon, coverage,
                                                       history=history)
        past = np.asarray(forecaster._tails[0] if history is None else history,
                          dtype=float)
        if past.ndim == 1:
            past = past[:, None]

        def pick(a):
            a = None if a is None else np.asarray(a, dtype=float)
            return a if a is None or a.ndim == 1 else a[:, channel]

        if n_history is not None:
            past = past[-n_history:]
        return cls(past[:, channel], pick(pred), pick(lower), pick(upper),
                   pick(y_true), coverage).plot(ax=ax)

    def plot(self, ax=None):
        """Draw history, forecast, interval and truth.

        Returns
        -------
        self
        """
        ax = _axes(ax, f"{type(self).__name__}.plot")
        n = len(self.history)
        past = np.arange(n)
        ahead = np.arange(n, n + len(self.forecast))
        (self.history_line_,) = ax.plot(past, self.history, color="black",
                                        label="history")
        (self.forecast_line_,) = ax.plot(ahead, self.forecast, color="tab:blue",
                                         marker=".", label="forecast")
        self.interval_ = None
        if self.lower is not None:
            label = ("interval" if self.coverage is None
                     else f"{100 * self.coverage:.0f}% interval")
            self.interval_ = ax.fill_between(ahead, self.lower, self.upper,
                                             color="tab:blue", alpha=0.2, label=label)
        self.truth_line_ = None
        if self.y_true is not None:
            (self.truth_line_,) = ax.plot(ahead[:len(self.y_true)], self.y_true,
                                          color="tab:green", marker=".",
                                          label="actual")
        ax.axvline(n - 0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("step")
        ax.legend(loc="best")
        self.ax_ = ax
        self.figure_ = ax.figure
        return self
