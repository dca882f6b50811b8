"""SequenceForecaster: multi-step forecasting of series, and language models
that generate symbol sequences.

Two kinds of data go through the same estimator:

* **Series** (``target_type='continuous'``): one series or a panel of them,
  each ``(n_steps,)`` or ``(n_steps, n_channels)``, optionally with
  exogenous covariates. The estimator cuts the series into windows of
  ``window`` steps itself and learns to forecast ``horizon`` steps ahead with
  one of three strategies (see :class:`SequenceForecaster`).
* **Symbols** (``target_type='symbols'``): text (characters), token sequences
  from :class:`~sklearn_rnn.OneHot` (words) or integer sequences. The network
  models the distribution of the next symbol; ``sample`` generates, ``score``
  reports the cross-entropy in bits per symbol.
"""

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
from pyx_rnn._openmp import effective_n_threads
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from pyx_rnn._checks import finite_checks
from pyx_rnn._threads import single_threaded_blas
from pyx_rnn.packing import Packing, SequenceInput
from pyx_rnn.tokens import TokenInput

from . import _state
from ._base import PREDICT_CHUNK, BaseRNN
from ._sequences import Sequences
from .text import TokenSequences

__all__ = ["SequenceForecaster"]

# BaseRNN parameters that make no sense for a forecaster, fixed here
_FIXED = {"return_sequences", "curriculum", "tbptt_k1", "tbptt_k2", "warm_start",
          "embeddings", "freeze_embeddings"}

# Steps per forward call when scoring one long symbol sequence (the state is
# carried from chunk to chunk, so the result does not depend on it).
_SCORE_CHUNK = 4096


class SequenceForecaster(BaseRNN):
    """Recurrent forecaster of series, and generator of symbol sequences.

    **Series.** ``fit(y)`` takes one series of shape ``(n_steps,)`` or
    ``(n_steps, n_channels)``, or a list of them (a panel); ``fit(X, y)``
    takes exogenous covariates ``X`` (one row per step of ``y``) as well.
    Windows of ``window`` steps are cut for you. After the target transforms
    (``log``, ``difference``, ``scale``; all inverted on output) the network
    learns, by one of three strategies:

    * ``'recursive'``: a one-step model (trained to predict the next value at
      every step of each window) fed its own predictions ``h`` times; any
      horizon at prediction. It wins when one step explains the dynamics
      (autoregressions, deterministic maps), where its errors compound least.
    * ``'direct'``: the ``horizon`` next values at once, from the state after
      the last step of the window. Nothing compounds, but each window gives
      one training target; it wins when one-step errors would compound (it
      was best on the monthly CO2 series).
    * ``'seq2seq'``: the ``horizon`` next values at every step of the window,
      ``window`` times more training signal than 'direct' from the same
      data; it wins on short series.

    Measurements behind these rules are in ``docs/forecasting.md`` and
    ``benchmarks/STRATEGIES.md``.

    ``predict(h)`` forecasts from the end of the training series (or of a
    ``history`` you give). ``predict_interval`` adds split-conformal
    intervals: the last ``calibration_fraction`` of every series is held out
    of training, and the absolute errors of the forecasts made over it, per
    step ahead and channel, calibrate the interval widths.

    **Symbols.** ``fit(text)`` (a string: characters),
    ``fit(OneHot().fit_transform(docs))`` (words) or ``fit(ids)`` with
    ``target_type='symbols'`` (integers) learns
    the distribution of the next symbol. One long sequence is trained
    statefully: it is cut into ``batch_size`` contiguous streams, read in
    windows of ``window`` steps, and the state is carried from window to
    window (truncated BPTT with ``k1 = k2 = window``). A list of sequences is
    trained as independent sequences. ``sample`` generates, ``score`` is
    minus the cross-entropy in bits per symbol (higher is better, as for
    every scikit-learn score; ``bits_per_symbol`` gives it positive).

    Parameters
    ----------
    window : int, default=24
        Look-back length: steps the network reads before forecasting. For
        symbols, the length of the truncated-BPTT windows.
    horizon : int, default=1
        Steps ahead the model is trained (and conformal intervals are
        calibrated) for. 'direct' and 'seq2seq' forecast at most this far;
        'recursive' forecasts any number of steps.
    strategy : {'recursive', 'direct', 'seq2seq'}, default='recursive'
        Multi-step strategy (above). Ignored for symbols.
    target_type : {'auto', 'continuous', 'symbols'}, default='auto'
        'auto' reads strings and token sequences as symbols and numbers as
        series; integer symbol sequences need 'symbols'.
    scale : bool, default=True
        Standardise every channel (and covariate) with its training mean and
        standard deviation.
    difference : int, default=0
        Order of differencing (0, 1 or 2) applied before scaling: the network
        forecasts changes, which removes trends.
    log : bool, default=False
        Model the log of the series (strictly positive values): multiplicative
        growth and seasonality become additive.
    future_covariates : None, 'all' or array-like of int, default=None
        Columns of the covariates ``X`` known in advance (calendar, planned
        promotions...): the input at step ``s`` holds their values at the
        steps being forecast, and ``predict`` needs them as ``X_future``. The
        other columns are only known up to the forecast origin; they can't
        be used by the 'recursive' strategy, which would need their future.
    calibration_fraction : float, default=0.2
        Fraction of the forecast origins at the end of each series held out
        for the conformal intervals (0: no intervals, all data trains).
    cell, hidden_layer_sizes, activation, bidirectional, dropout, \
recurrent_dropout, layer_norm, peephole, reset_after, solver, alpha, \
batch_size, learning_rate, learning_rate_init, power_t, max_iter, shuffle, \
random_state, tol, verbose, momentum, nesterovs_momentum, early_stopping, \
validation_fraction, beta_1, beta_2, epsilon, n_iter_no_change, clip_norm, \
clip_value, dtype, n_threads, embedding_dim
        As in :class:`~sklearn_rnn.RNNRegressor`. ``bidirectional`` needs
        ``strategy='direct'`` (at every other step the backward direction
        would read the targets). For one long symbol sequence ``batch_size``
        is the number of parallel streams ('auto': 32) and ``shuffle`` has no
        effect; ``early_stopping`` holds out the last ``validation_fraction``
        of the sequence (of the windows, for series) rather than a random
        part.

    Attributes
    ----------
    target_type_ : {'continuous', 'symbols'}
    n_channels_ : int
        Channels of the series (continuous).
    n_series_ : int
        Series seen in fit (continuous).
    conformity_scores_ : ndarray of shape (n_calibration, horizon, n_channels)
        Absolute forecast errors over the held-out ends of the series, or
        None with ``calibration_fraction=0``.
    symbols_ : ndarray
        The alphabet (symbols): characters, integers, or token ids.
    loss_curve_, best_loss_, validation_scores_, best_validation_score_, \
n_iter_
        As in :class:`~sklearn_rnn.RNNRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_rnn import SequenceForecaster
    >>> t = np.arange(400)
    >>> y = np.sin(2 * np.pi * t / 25)
    >>> fc = SequenceForecaster(window=30, horizon=5, strategy="seq2seq",
    ...                         hidden_layer_sizes=(16,), learning_rate_init=0.01,
    ...                         tol=1e-3, random_state=0).fit(y)
    >>> fc.predict(5).shape
    (5,)
    >>> lower, upper = fc.predict_interval(5, coverage=0.9)
    >>> bool(np.all(lower <= upper))
    True
    >>> fc.score(np.sin(2 * np.pi * np.arange(400, 440) / 25)) > 0.99
    True

    A character model:

    >>> lm = SequenceForecaster(window=20, hidden_layer_sizes=(32,), batch_size=4,
    ...                         learning_rate_init=0.01, tol=1e-3,
    ...                         random_state=0).fit("hello world " * 100)
    >>> lm.sample(12, prompt="hel", temperature=0)
    'lo world hel'
    >>> lm.bits_per_symbol("hello world hello") < 0.1
    True
    """

    _parameter_constraints = {
        **{k: v for k, v in BaseRNN._parameter_constraints.items() if k not in _FIXED},
        "window": [Interval(Integral, 1, None, closed="left")],
        "horizon": [Interval(Integral, 1, None, closed="left")],
        "strategy": [StrOptions({"recursive", "direct", "seq2seq"})],
        "target_type": [StrOptions({"auto", "continuous", "symbols"})],
        "scale": ["boolean"],
        "difference": [Interval(Integral, 0, 2, closed="both")],
        "log": ["boolean"],
        "future_covariates": [None, StrOptions({"all"}), "array-like"],
        "calibration_fraction": [Interval(Real, 0, 1, closed="left")],
    }

    # BaseRNN reads these; a forecaster fixes them
    curriculum = None
    tbptt_k1 = None
    tbptt_k2 = None
    warm_start = False
    embeddings = None
    freeze_embeddings = False

    def __init__(self, *, window=24, horizon=1, strategy="recursive",
                 target_type="auto", scale=True, difference=0, log=False,
                 future_covariates=None, calibration_fraction=0.2, cell="lstm",
                 hidden_layer_sizes=(32,), activation="tanh", bidirectional=False,
                 dropout=0.0, recurrent_dropout=0.0, layer_norm=False,
                 peephole=False, reset_after=True, solver="adam", alpha=0.0,
                 batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, clip_norm=1.0, clip_value=None,
                 dtype="float32", n_threads=None, embedding_dim=None):
        self.window = window
        self.horizon = horizon
        self.strategy = strategy
        self.target_type = target_type
        self.scale = scale
        self.difference = difference
        self.log = log
        self.future_covariates = future_covariates
        self.calibration_fraction = calibration_fraction
        self.cell = cell
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.layer_norm = layer_norm
        self.peephole = peephole
        self.reset_after = reset_after
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.dtype = dtype
        self.n_threads = n_threads
        self.embedding_dim = embedding_dim

    # ------------------------------------------------------------------
    # what BaseRNN asks of a subclass
    # ------------------------------------------------------------------

    @property
    def _symbols(self):
        return getattr(self, "target_type_", None) == "symbols"

    @property
    def return_sequences(self):
        # per-step outputs, except for the 'direct' strategy
        return self._symbols or self.strategy != "direct"

    @property
    def _loss(self):
        return "log_loss" if self._symbols else "squared_error"

    @property
    def _out_activation(self):
        return "softmax" if self._symbols else "identity"

    def _split_validation(self, n, targets):
        if self._symbols:
            return super()._split_validation(n, targets)
        # the windows of the latest origins (relative to their series), so
        # that validation looks forward in time as forecasting does
        n_val = int(np.ceil(self.validation_fraction * n))
        order = np.argsort(self._window_position, kind="stable")
        return np.sort(order[:n - n_val]), np.sort(order[n - n_val:])

    def _validation_score(self, seqs, targets, val_idx):
        out = self._forward_sequences(seqs.subset(val_idx))
        if self._symbols:
            probs = np.concatenate(out)
            true = targets[seqs.rows(val_idx)]
            return -_bits(probs, true)
        if self.return_sequences:
            return r2_score(targets[seqs.rows(val_idx)], np.concatenate(out))
        return r2_score(targets[val_idx], out)

    # ------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------

    def fit(self, X, y=None):
        """Fit to a series (or panel) or to symbol sequences.

        Parameters
        ----------
        X : array-like or str or TokenSequences
            Without ``y``: the series to forecast, of shape ``(n_steps,)`` or
            ``(n_steps, n_channels)``, or a list of them; or symbols: a
            string, a list of strings, token sequences from ``OneHot``, or
            (with ``target_type='symbols'``) integer sequences. With ``y``:
            exogenous covariates, ``(n_steps, n_covariates)`` per series.
        y : array-like or list, default=None
            The series, when ``X`` holds covariates.

        Returns
        -------
        self
        """
        self._validate_params()
        sizes = self._check_params()
        if self.bidirectional and self.strategy != "direct":
            raise ValueError(
                f"bidirectional=True reads every window backwards too, so with "
                f"strategy={self.strategy!r} each step would see its own targets; "
                "use strategy='direct' or bidirectional=False")
        series = X if y is None else y
        kind = self._detect_type(series)
        if kind == "symbols":
            if y is not None:
                raise ValueError("symbol sequences take no y: pass the text or the "
                                 "sequences as X")
            if self.bidirectional:
                raise ValueError("a language model reads left to right; set "
                                 "bidirectional=False")
            self.target_type_ = "symbols"
            return self._fit_symbols(X, sizes)
        if self.embedding_dim is not None:
            raise ValueError("embedding_dim applies to symbol sequences; set it to "
                             "None for series")
        self.target_type_ = "continuous"
        return self._fit_series(series, None if y is None else X, sizes)

    def _detect_type(self, data):
        if self.target_type != "auto":
            return self.target_type
        if isinstance(data, (str, TokenSequences)):
            return "symbols"
        if isinstance(data, (list, tuple)) and data and all(
                isinstance(d, str) for d in data):
            return "symbols"
        return "continuous"

    # ------------------------------------------------------------------
    # series
    # ------------------------------------------------------------------

    @property
    def _h_out(self):
        """Steps ahead the network outputs."""
        return 1 if self.strategy == "recursive" else self.horizon

    def _fit_series(self, y, X, sizes):
        series, self._single, self._one_d = _check_series(y, "y" if X is not None
                                                          else "X")
        covs = None if X is None else _check_covariates(X, series, self._single)
        self.n_series_ = len(series)
        self.n_channels_ = series[0].shape[1]
        self.n_covariates_ = 0 if covs is None else covs[0].shape[1]
        self._future_cols, self._past_cols = self._covariate_columns()
        if self.strategy == "recursive" and len(self._past_cols):
            raise ValueError(
                f"strategy='recursive' feeds its own forecasts back, so it needs "
                f"the future of every covariate, but columns "
                f"{list(self._past_cols)} are not in future_covariates; list "
                "them there, or use strategy='direct' or 'seq2seq'")
        d, W = self.difference, self.window
        min_len = W + d + self._h_out
        for i, s in enumerate(series):
            if len(s) < min_len:
                raise ValueError(
                    f"series {i} has {len(s)} steps; window={W}, difference={d} "
                    f"and {self._h_out} step(s) ahead need at least {min_len}. "
                    "Lower window or horizon, or give a longer series")
        if self.log:
            for s in series:
                if np.any(s <= 0):
                    raise ValueError("log=True needs a strictly positive series; it "
                                     "has values <= 0. Shift it, or set log=False")
        self._fit_scalers(series, covs)
        if covs is None:
            covs = [np.zeros((len(s), 0)) for s in series]
        parts = [self._series_windows(s, c) for s, c in zip(series, covs)]
        train = [p[0] for p in parts]
        inputs = np.concatenate([t[0] for t in train])
        if len(inputs) == 0:
            raise ValueError(
                "no training window is left before the calibration part of the "
                "series; lower calibration_fraction, window or horizon")
        targets = np.concatenate([t[1] for t in train])
        self._window_position = np.concatenate([t[2] for t in train])
        n_windows = len(inputs)
        seqs = Sequences(np.ascontiguousarray(inputs.reshape(-1, inputs.shape[2]),
                                              dtype=self.dtype),
                         np.full(n_windows, W, dtype=np.intp))
        self.n_features_in_ = inputs.shape[2]
        self.n_outputs_ = targets.shape[1]
        self._fit_validated(sizes, seqs, targets, None, first_call=True)
        del self._window_position      # only the validation split needs it
        # the ends of the series: predict() forecasts from there
        keep = W + d
        self._tails = [s[-keep:].copy() for s in series]
        self._cov_tails = [c[-keep:].copy() for c in covs]
        self._calibrate(series, covs, [p[1] for p in parts])
        return self

    def _covariate_columns(self):
        k = self.n_covariates_
        fc = self.future_covariates
        if fc is None:
            future = np.zeros(0, np.intp)
        elif isinstance(fc, str):
            future = np.arange(k)
        else:
            future = np.unique(np.asarray(fc, dtype=np.intp).ravel())
            if future.size and (future.min() < 0 or future.max() >= k):
                raise ValueError(
                    f"future_covariates={fc!r} names columns outside the {k} "
                    "covariate columns of X")
        past = np.setdiff1d(np.arange(k), future)
        return future, past

    @property
    def _h_in(self):
        """Future covariate rows read at each step."""
        return self._h_out if len(self._future_cols) else 0

    def _fit_scalers(self, series, covs):
        zs = np.concatenate([self._differenced(s)[0] for s in series])
        if self.scale:
            self._mean = zs.mean(axis=0)
            std = zs.std(axis=0)
            self._std = np.where(std > 0, std, 1.0)
        else:
            self._mean = np.zeros(zs.shape[1])
            self._std = np.ones(zs.shape[1])
        if covs is None or self.n_covariates_ == 0:
            self._cov_mean = np.zeros(0)
            self._cov_std = np.ones(0)
            return
        xs = np.concatenate(covs)
        self._cov_mean = xs.mean(axis=0) if self.scale else np.zeros(xs.shape[1])
        std = xs.std(axis=0) if self.scale else np.ones(xs.shape[1])
        self._cov_std = np.where(std > 0, std, 1.0)

    def _differenced(self, s):
        """(log and) difference a raw series; returns the result, aligned with
        raw rows ``difference:``, and every differencing level (``levels[k]``
        is the k-times differenced series, aligned with raw rows ``k:``)."""
        z = np.log(s) if self.log else s
        levels = []
        for _ in range(self.difference):
            levels.append(z)
            z = np.diff(z, axis=0)
        return z, levels

    def _transform(self, s, c):
        """Network-space series ``u`` and covariates, aligned with raw rows
        ``difference:``, plus the differencing levels."""
        z, levels = self._differenced(s)
        u = (z - self._mean) / self._std
        x = (c[self.difference:] - self._cov_mean) / self._cov_std
        return u, x, levels

    def _series_windows(self, s, c):
        """Training windows of one series (inputs, targets, position) and the
        calibration origins (raw row indices of the last observed steps)."""
        W, H, d = self.window, self._h_out, self.difference
        u, x, _ = self._transform(s, c)
        n = len(u)
        # origins t (index in u) with the H next values known
        origins = np.arange(W - 1, n - H)
        cal = np.zeros(0, np.intp)
        if self.calibration_fraction > 0:
            # calibration origins forecast `horizon` steps with covariates known
            need = max(self.horizon, self._h_in)
            cal_origins = np.arange(W - 1, n - need)
            n_cal = int(np.ceil(self.calibration_fraction * len(cal_origins)))
            if n_cal:
                cal = cal_origins[len(cal_origins) - n_cal:]
                # training targets end before the first calibration target
                origins = origins[origins + H <= cal[0]]
        # per-step targets: row s holds u[s+1 .. s+H] flattened (step, channel)
        steps = _windows(u[1:], H).reshape(n - H, -1)
        X_w = self._window_inputs(_windows(u, W)[origins - W + 1],
                                  _windows(x, W + self._h_in)[origins - W + 1])
        if self.return_sequences:
            T = _windows(steps, W)[origins - W + 1].reshape(-1, steps.shape[1])
        else:
            T = steps[origins]
        position = (origins + 1) / n
        return (X_w, T, position), cal + d

    def _window_inputs(self, U, XS):
        """Network inputs of windows: ``U`` (n, W, C) values, ``XS`` (n, W +
        h_in, K) covariates from the window's first step on. Step s reads its
        value, the past covariates at s, and the future covariates at
        s + 1 .. s + h_in."""
        W = U.shape[1]
        parts = [U]
        if len(self._past_cols):
            parts.append(XS[:, :W, self._past_cols])
        for i in range(1, self._h_in + 1):
            parts.append(XS[:, i:i + W, self._future_cols])
        return np.concatenate(parts, axis=2) if len(parts) > 1 else U

    def _last_outputs(self, inputs):
        """Network outputs after the last step of each window, (n, n_out)."""
        net = self._network
        n, W = inputs.shape[:2]
        out = np.empty((n, net.n_output))
        n_threads = effective_n_threads(self.n_threads)
        with single_threaded_blas():
            for s in range(0, n, PREDICT_CHUNK):
                chunk = inputs[s:s + PREDICT_CHUNK]
                m = len(chunk)
                packing = Packing.from_lengths(np.full(m, W))
                # window b's steps are rows b * W ... of the chunk in 2-D,
                # read where they lie (packed by the network if it must)
                X = SequenceInput(chunk.reshape(-1, chunk.shape[2]),
                                  W * packing.order)
                _, Y, _ = net.forward(X, packing,
                                      return_sequences=self.return_sequences,
                                      n_threads=n_threads)
                out[s:s + m] = Y[-m:] if self.return_sequences else Y
        return out

    def _forecast(self, series, covs, origins, h):
        """Forecasts (n, h, C) on the raw scale from the raw rows ``origins``
        of the raw ``series`` (one series, with its covariates ``covs``
        covering every row the inputs read)."""
        W, d, C = self.window, self.difference, self.n_channels_
        u, x, levels = self._transform(series, covs)
        o = np.asarray(origins) - d          # origins in u
        steps_x = max(h, self._h_in) if self.strategy == "recursive" else self._h_in
        U = _windows(u, W)[o - W + 1]
        # covariates from each window's first step, steps_x rows past its end
        if x.shape[1]:
            XS = _windows(x, W + steps_x)[o - W + 1]
        else:
            XS = np.zeros((len(o), W + steps_x, 0))
        if self.strategy == "recursive":
            # re-read the last `window` values at every step, as in training
            # (where each window starts from a zero state)
            preds = np.empty((len(o), h, C))
            for k in range(h):
                out = self._last_outputs(self._window_inputs(U, XS[:, k:k + W + 1]))
                preds[:, k] = out
                U = np.concatenate([U[:, 1:], out[:, None, :]], axis=1)
        else:
            out = self._last_outputs(self._window_inputs(U, XS))
            preds = out.reshape(len(o), self.horizon, C)[:, :h]
        # back to the raw scale
        z = preds * self._std + self._mean
        for k in reversed(range(d)):
            last = levels[k][o + d - k]          # level k at the origin
            z = last[:, None, :] + np.cumsum(z, axis=1)
        return np.exp(z) if self.log else z

    def _calibrate(self, series, covs, cal_origins):
        self.conformity_scores_ = None
        if self.calibration_fraction == 0:
            return
        scores = []
        H = self.horizon
        for s, c, origins in zip(series, covs, cal_origins):
            if len(origins) == 0:
                continue
            pred = self._forecast(s, c, origins, H)
            truth = _windows(s[1:], H)[origins]
            scores.append(np.abs(truth - pred))
        if not scores:
            raise ValueError(
                "calibration_fraction leaves no forecast origin to calibrate the "
                "intervals on; give longer series or set calibration_fraction=0")
        self.conformity_scores_ = np.concatenate(scores)
        if len(self.conformity_scores_) < 20:
            warnings.warn(
                f"only {len(self.conformity_scores_)} forecast origins calibrate "
                "the intervals; their coverage will be coarse. Raise "
                "calibration_fraction or give longer series", UserWarning)

    # ---- prediction -----------------------------------------------------

    def _check_continuous(self, what):
        check_is_fitted(self, "target_type_")
        if self._symbols:
            raise ValueError(f"{what} forecasts series; this forecaster was fitted "
                             "on symbols: use sample() or bits_per_symbol()")

    def _histories(self, history, X_history, X_future, h):
        """Raw series and covariates to forecast from, one per series."""
        n_fut = max(h, self._h_in) if self.strategy == "recursive" else self._h_in
        need_x = self.n_covariates_ > 0
        if history is None:
            if X_history is not None:
                raise ValueError("X_history goes with history; without a history the "
                                 "forecast starts from the end of the training data")
            series = self._tails
            covs = self._cov_tails
            single = self._single
        else:
            series, single, _ = _check_series(history, "history",
                                              n_channels=self.n_channels_)
            min_len = self.window + self.difference
            for i, s in enumerate(series):
                if len(s) < min_len:
                    raise ValueError(f"history {i} has {len(s)} steps; the forecast "
                                     f"reads window + difference = {min_len}")
                if self.log and np.any(s <= 0):
                    raise ValueError("log=True needs a strictly positive history")
            if need_x:
                if X_history is None:
                    raise ValueError("this forecaster was fitted with covariates: "
                                     "pass X_history with the history")
                covs = _check_covariates(X_history, series, single,
                                         n_covariates=self.n_covariates_)
            else:
                covs = [np.zeros((len(s), 0)) for s in series]
        if need_x and n_fut:
            if X_future is None:
                raise ValueError(
                    f"the forecast reads the future covariates of {n_fut} step(s) "
                    "ahead: pass them as X_future, (n_steps, n_covariates) per series")
            fut = X_future if not single else [X_future]
            if len(fut) != len(series):
                raise ValueError(f"X_future has {len(fut)} series; expected "
                                 f"{len(series)}")
            futs = []
            for i, f in enumerate(fut):
                f = _as_2d(f, "X_future")
                if f.shape[1] != self.n_covariates_ or len(f) < n_fut:
                    raise ValueError(
                        f"X_future of series {i} has shape {f.shape}; expected at "
                        f"least ({n_fut}, {self.n_covariates_})")
                futs.append(f[:n_fut])
            covs = [np.concatenate([c, f]) for c, f in zip(covs, futs)]
        elif not need_x and X_future is not None:
            raise ValueError("X_future was given, but this forecaster was fitted "
                             "without covariates")
        return series, covs, single

    def _check_horizon(self, horizon, interval=False):
        h = self.horizon if horizon is None else horizon
        if not isinstance(h, Integral) or isinstance(h, bool) or h < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        if (interval or self.strategy != "recursive") and h > self.horizon:
            what = ("intervals are calibrated" if interval else
                    f"strategy={self.strategy!r} forecasts")
            raise ValueError(f"{what} up to horizon={self.horizon} steps; got "
                             f"{h}. Refit with a larger horizon")
        return int(h)

    def predict(self, horizon=None, *, history=None, X_history=None, X_future=None):
        """Forecast ``horizon`` steps ahead.

        Parameters
        ----------
        horizon : int, default=None
            Steps to forecast (default: the fitted ``horizon``).
        history : array-like or list, default=None
            Forecast from the end of this series (or list of series) rather
            than from the end of the training series. It needs at least
            ``window + difference`` steps.
        X_history : array-like or list, default=None
            Covariates of the history, when fitted with covariates.
        X_future : array-like or list, default=None
            Covariates of the steps ahead, with all the columns of X (only
            those in ``future_covariates`` are read): ``horizon`` rows for
            'recursive', the fitted ``horizon`` rows otherwise.

        Returns
        -------
        y_pred : ndarray of shape (horizon,) or (horizon, n_channels), or for
            several series (n_series, horizon[, n_channels]).
        For symbols: the greedy continuation of ``history`` (see ``sample``).
        """
        check_is_fitted(self, "target_type_")
        if self._symbols:
            return self.sample(self.horizon if horizon is None else horizon,
                               prompt=history, temperature=0)
        self._check_continuous("predict")
        h = self._check_horizon(horizon)
        series, covs, single = self._histories(history, X_history, X_future, h)
        with np.errstate(over="ignore"):
            out = np.stack([self._forecast(s, c, [len(s) - 1], h)[0]
                            for s, c in zip(series, covs)])
        return self._shape_output(out, single)

    def _shape_output(self, out, single):
        if self._one_d:
            out = out[..., 0]
        return out[0] if single else out

    def predict_interval(self, horizon=None, coverage=0.9, *, history=None,
                         X_history=None, X_future=None):
        """Split-conformal prediction intervals.

        ``forecast ± q``, where ``q`` is, per step ahead and channel, the
        ``ceil((n + 1) * coverage)``-th smallest absolute error of the ``n``
        held-out forecasts (``conformity_scores_``). With exchangeable errors
        the interval covers the truth with probability at least
        ``coverage``.

        Parameters
        ----------
        horizon : int, default=None
            At most the fitted ``horizon``.
        coverage : float, default=0.9
            Target probability, in (0, 1).
        history, X_history, X_future
            As in :meth:`predict`.

        Returns
        -------
        lower, upper : ndarray
            Shaped like :meth:`predict`'s output. Infinite when there are too
            few calibration errors for the coverage asked.
        """
        self._check_continuous("predict_interval")
        if not isinstance(coverage, Real) or not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
        if self.conformity_scores_ is None:
            raise ValueError("no calibration data: fit with calibration_fraction > 0 "
                             "to get intervals")
        h = self._check_horizon(horizon, interval=True)
        pred = self.predict(h, history=history, X_history=X_history,
                            X_future=X_future)
        q = _conformal_quantile(self.conformity_scores_[:, :h], coverage)
        if self._one_d:
            q = q[:, 0]
        return pred - q, pred + q

    def score(self, X, y=None):
        """R² of rolling forecasts over the continuation of the training data
        (series), or minus the bits per symbol (symbols).

        For series, ``X`` (or ``y`` with covariates ``X``) continues the
        series seen in fit, as the test folds of ``TimeSeriesSplit`` do: from
        every origin between the end of the training data and
        ``min(horizon, len(X))`` steps before the end of ``X``, the
        forecaster forecasts that many steps, knowing everything up to the
        origin, and the score is the R² of all those forecasts.
        """
        check_is_fitted(self, "target_type_")
        if self._symbols:
            return -self.bits_per_symbol(X)
        cont = X if y is None else y
        series, single, _ = _check_series(cont, "the continuation",
                                          n_channels=self.n_channels_)
        if len(series) != len(self._tails):
            raise ValueError(f"score needs one continuation per fitted series "
                             f"({len(self._tails)}); got {len(series)}")
        if self.n_covariates_:
            if y is None:
                raise ValueError("fitted with covariates: score(X, y) needs the "
                                 "covariates X of the continuation y")
            covs = _check_covariates(X, series, single, n_covariates=self.n_covariates_)
        else:
            covs = [np.zeros((len(s), 0)) for s in series]
        truths, preds = [], []
        for tail, ctail, s, c in zip(self._tails, self._cov_tails, series, covs):
            full = np.concatenate([tail, s])
            full_c = np.concatenate([ctail, c])
            h = min(self.horizon, len(s))
            # steps after an origin that its forecast reads: truth, and
            # future covariates
            need = max(h, self._h_in)
            origins = np.arange(len(tail) - 1, len(full) - need)
            if self.log and np.any(s <= 0):
                raise ValueError("log=True needs a strictly positive series")
            if len(origins) == 0:
                raise ValueError(f"the continuation has {len(s)} steps; the "
                                 f"forecasts need at least {need}")
            with np.errstate(over="ignore"):
                pred = self._forecast(full, full_c, origins, h)
            preds.append(pred.reshape(-1, self.n_channels_))
            truths.append(_windows(full[1:], h)[origins].reshape(-1, self.n_channels_))
        return r2_score(np.concatenate(truths), np.concatenate(preds))

    # ------------------------------------------------------------------
    # symbols
    # ------------------------------------------------------------------

    def _encode(self, data, fitting):
        """Symbol sequences as a list of id arrays."""
        if isinstance(data, TokenSequences):
            if fitting:
                self._alphabet = "tokens"
                self.symbols_ = np.arange(data.n_features)
            elif self._alphabet != "tokens" or data.n_features != len(self.symbols_):
                raise ValueError(
                    "these token sequences don't match the fitted vocabulary; "
                    "transform with the same fitted OneHot")
            return [data[i][0].copy() for i in range(len(data))]
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, (list, tuple)):
            arr = np.asarray(data)
            data = [arr] if arr.ndim == 1 else list(arr)
        if not data:
            raise ValueError("no symbol sequence given (empty input)")
        text = all(isinstance(d, str) for d in data)
        if fitting:
            self._alphabet = "chars" if text else "integers"
        elif self._alphabet == "tokens":
            raise TypeError("this model was fitted on token sequences: transform "
                            "text with the same fitted OneHot")
        elif text != (self._alphabet == "chars"):
            raise TypeError("this model was fitted on text: pass strings" if not text
                            else "this model was fitted on integer symbols, not text")
        # characters become arrays of one-character strings: both alphabets
        # are then sorted arrays, looked up by binary search
        arrays = [np.array(list(d), dtype="<U1") if text else _check_int_symbols(d)
                  for d in data]
        if fitting:
            self.symbols_ = np.unique(np.concatenate(arrays))
            if len(self.symbols_) < 2:
                raise ValueError("the symbol sequences use a single symbol; a "
                                 "language model needs at least two")
        out = []
        for a in arrays:
            ids = np.minimum(np.searchsorted(self.symbols_, a), len(self.symbols_) - 1)
            unseen = self.symbols_[ids] != a
            if np.any(unseen):
                raise ValueError(f"symbol {a[unseen][0]!r} was never seen in fit")
            out.append(ids.astype(np.intp))
        return out

    def _fit_symbols(self, X, sizes):
        seqs_ids = self._encode(X, fitting=True)
        V = len(self.symbols_)
        self.n_features_in_ = self.n_outputs_ = V
        counts = np.bincount(np.concatenate(seqs_ids), minlength=V)
        self._unigram = counts / counts.sum()
        if len(seqs_ids) == 1:
            ids = seqs_ids[0]
            if len(ids) < 3:
                raise ValueError(f"the sequence has {len(ids)} symbols; a language "
                                 "model needs at least 3")
            return self._fit_stream(ids, sizes)
        kept = [s for s in seqs_ids if len(s) >= 2]
        if not kept:
            raise ValueError("every sequence has a single symbol; at least one needs "
                             "two (an input and the next symbol)")
        inputs = np.concatenate([s[:-1] for s in kept])
        targets = np.concatenate([s[1:] for s in kept])
        data = np.column_stack([inputs.astype(np.float64), np.ones(len(inputs))])
        seqs = Sequences(data, [len(s) - 1 for s in kept], n_tokens=V)
        self._fit_validated(sizes, seqs, targets, None, first_call=True, n_outputs=V)
        return self

    def _stream_batch(self, streams_in, streams_out, start, stop, dtype):
        """Packed window [start, stop) of every stream."""
        B = streams_in.shape[0]
        ids = np.ascontiguousarray(streams_in[:, start:stop].T).ravel()
        targets = np.ascontiguousarray(streams_out[:, start:stop].T).ravel()
        packing = Packing.from_lengths(np.full(B, stop - start))
        return TokenInput(ids, np.ones(len(ids), dtype)), packing, targets

    def _fit_stream(self, ids, sizes):
        """Stateful training over one long sequence (truncated BPTT)."""
        val = None
        if self.early_stopping:
            n_val = int(math.ceil(self.validation_fraction * len(ids)))
            if n_val < 2 or len(ids) - n_val < 3:
                raise ValueError(
                    f"early_stopping holds out validation_fraction="
                    f"{self.validation_fraction} of the {len(ids)} symbols, which "
                    "leaves too little; change it or turn early_stopping off")
            ids, val = ids[:-n_val], ids[-n_val:]
        n_pairs = len(ids) - 1
        B = 32 if self.batch_size == "auto" else self.batch_size
        B = max(1, min(B, n_pairs))
        L = n_pairs // B
        streams_in = ids[:B * L].reshape(B, L)
        streams_out = ids[1:B * L + 1].reshape(B, L)
        seqs = Sequences(np.zeros((1, 2)), [1], n_tokens=len(self.symbols_))
        rng = check_random_state(self.random_state)
        self._build(sizes, len(self.symbols_), rng, seqs)
        self._rng = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))
        self._optimizer = self._make_optimizer()
        n_threads = effective_n_threads(self.n_threads)
        with single_threaded_blas(), finite_checks(False), \
                np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            self._train_stream(streams_in, streams_out, val, n_threads)
        return self

    def _train_stream(self, streams_in, streams_out, val, n_threads):
        net = self._network
        W, L = self.window, streams_in.shape[1]
        spans = [(s, min(s + W, L)) for s in range(0, L, W)]
        start = time.perf_counter()

        def run_epoch(epoch):
            state = None          # every epoch starts from zero states
            total = 0.0
            for i, (a, b) in enumerate(spans):
                X, packing, T = self._stream_batch(streams_in, streams_out, a, b,
                                                   net.dtype)
                value, state = net.loss_gradient(
                    X, packing, T, "log_loss", return_sequences=True,
                    alpha=self.alpha, dropout=self.dropout,
                    recurrent_dropout=self.recurrent_dropout, rng=self._rng,
                    initial_state=state, n_threads=n_threads)
                if not np.isfinite(value):
                    return None
                state = _copy_state(state)
                net.clip_gradients(self.clip_norm, self.clip_value)
                self._optimizer.step(net.grads)
                total += value * (b - a)
                self.t_ += 1
                self._schedule()
                if (self.verbose and len(spans) >= 20
                        and (i + 1) % (len(spans) // 10) == 0):
                    print(f"  epoch {epoch + 1}: {100 * (i + 1) // len(spans)}%, "
                          f"loss {total / b / np.log(2):.3f} bits/symbol, "
                          f"elapsed {time.perf_counter() - start:.0f}s", flush=True)
            return total / L

        def validate():
            return None if val is None else -self._stream_bits(val, n_threads)

        self._run_epochs(self.max_iter, run_epoch, validate,
                         warn_at_max_iter=self.max_iter > 1)

    def _progress_message(self, loss, val_score):
        if not self._symbols:
            return super()._progress_message(loss, val_score)
        msg = (f"Iteration {self.n_iter_}, loss = {loss:.6f} "
               f"({loss / np.log(2):.4f} bits/symbol)")
        if val_score is not None:
            msg += f", validation {-val_score:.4f} bits/symbol"
        return msg

    def _step_distributions(self, ids, state, n_threads, packing=None):
        """Next-symbol log-probabilities after every symbol of ``ids`` (one
        sequence, read from ``state``), and the final state; ``packing``,
        if given, is that sequence's (a caller stepping one symbol at a time
        makes it once)."""
        net = self._network
        X = TokenInput(ids, np.ones(len(ids), net.dtype))
        if packing is None:
            packing = Packing.from_lengths([len(ids)])
        Z, Y, state = net.forward(X, packing, return_sequences=True,
                                  initial_state=state, n_threads=n_threads)
        if Z is not None:
            Z = Z.astype(np.float64)
            zmax = Z.max(axis=1, keepdims=True)
            logp = Z - zmax - np.log(np.exp(Z - zmax).sum(axis=1, keepdims=True))
        else:
            logp = np.log(np.clip(Y.astype(np.float64), np.finfo(np.float64).tiny, 1))
        return logp, _copy_state(state)

    def _stream_bits(self, ids, n_threads):
        """Bits per symbol of predicting ids[1:] from the symbols before."""
        total = 0.0
        state = None
        with single_threaded_blas(), finite_checks(False):
            for s in range(0, len(ids) - 1, _SCORE_CHUNK):
                chunk = ids[s:min(s + _SCORE_CHUNK, len(ids) - 1)]
                nxt = ids[s + 1:s + 1 + len(chunk)]
                logp, state = self._step_distributions(chunk, state, n_threads)
                total -= logp[np.arange(len(chunk)), nxt].sum()
        return total / (len(ids) - 1) / np.log(2)

    def _check_symbols(self, what):
        check_is_fitted(self, "target_type_")
        if not self._symbols:
            raise ValueError(f"{what} needs a model fitted on symbols; this one "
                             "forecasts series (use predict)")

    def bits_per_symbol(self, X):
        """Cross-entropy of the next-symbol predictions, in bits per symbol.

        Every sequence of ``X`` is read from the start; every symbol after its
        first is predicted from those before it.

        Parameters
        ----------
        X : str, list, TokenSequences or array of int
            Held-out symbols, as in fit.

        Returns
        -------
        bits : float
        """
        self._check_symbols("bits_per_symbol")
        seqs_ids = self._encode(X, fitting=False)
        n_threads = effective_n_threads(self.n_threads)
        total, count = 0.0, 0
        for ids in seqs_ids:
            if len(ids) >= 2:
                total += self._stream_bits(ids, n_threads) * (len(ids) - 1)
                count += len(ids) - 1
        if count == 0:
            raise ValueError("no symbol to predict: every sequence has fewer than "
                             "two symbols")
        return float(total / count)

    def sample(self, n_steps, prompt=None, temperature=1.0, random_state=None):
        """Generate symbols.

        Parameters
        ----------
        n_steps : int
            Symbols to generate.
        prompt : str, array of int or TokenSequences, default=None
            Read before generating. None starts from a symbol drawn from the
            training frequencies (the first of the output).
        temperature : float, default=1.0
            Divides the log-probabilities: below 1 is more conservative, above
            1 more varied; 0 takes the most likely symbol every time.
        random_state : int, RandomState instance or None, default=None

        Returns
        -------
        str (text), or ndarray of the symbols (integers, token ids)
        """
        self._check_symbols("sample")
        if (not isinstance(n_steps, Integral) or isinstance(n_steps, bool)
                or n_steps < 1):
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        if not isinstance(temperature, Real) or not temperature >= 0 or \
                not np.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number >= 0, got "
                             f"{temperature!r}")
        rng = check_random_state(random_state)
        n_threads = effective_n_threads(self.n_threads)
        out = []
        if prompt is None or (isinstance(prompt, str) and not prompt):
            first = int(rng.choice(len(self.symbols_), p=self._unigram))
            out.append(first)
            ids = np.array([first], np.intp)
        else:
            if isinstance(prompt, TokenSequences) and len(prompt) != 1:
                raise ValueError("prompt must be one sequence")
            if not isinstance(prompt, (str, TokenSequences)):
                prompt = [np.asarray(prompt)]
            ids = self._encode(prompt, fitting=False)[0]
        state = None
        one_step = Packing.from_lengths([1])
        with single_threaded_blas(), finite_checks(False):
            logp, state = self._step_distributions(ids, state, n_threads)
            logp = logp[-1]
            while len(out) < n_steps:
                nxt = _draw(logp, temperature, rng)
                out.append(nxt)
                if len(out) == n_steps:
                    break
                logp, state = self._step_distributions(
                    np.array([nxt], np.intp), state, n_threads, one_step)
                logp = logp[-1]
        symbols = self.symbols_[np.asarray(out)]
        return "".join(symbols) if self._alphabet == "chars" else symbols


    # ------------------------------------------------------------------
    # saved state
    # ------------------------------------------------------------------

    def _check_fitted_state(self):
        """The checks of a loaded model (see ``BaseRNN.__setstate__``): the
        fitted attributes must agree with each other and with the network,
        so that a damaged or edited file fails to load rather than predict
        garbage."""
        super()._check_fitted_state()
        self._check_input_output_sizes()
        kind = self.__dict__.get("target_type_")
        if kind == "symbols":
            self._check_symbol_state()
        elif kind == "continuous":
            self._check_series_state()
        else:
            raise _state.invalid(self, f"target_type_={kind!r} must be "
                                       "'continuous' or 'symbols'")

    def _check_symbol_state(self):
        d = self.__dict__
        V = self._network.n_output
        if d.get("_alphabet") not in ("chars", "tokens", "integers"):
            raise _state.invalid(self, f"_alphabet={d.get('_alphabet')!r}")
        symbols = _state.check_array(self, "symbols_", d.get("symbols_"), shape=(V,))
        if d["_alphabet"] == "chars" and symbols.dtype.kind != "U":
            raise _state.invalid(self, "symbols_ of a character model must be "
                                       "strings")
        if d["_alphabet"] != "chars" and symbols.dtype.kind not in "iu":
            raise _state.invalid(self, "symbols_ must be integers")
        unigram = _state.check_array(self, "_unigram", d.get("_unigram"), shape=(V,))
        if np.any(unigram < 0) or not np.isclose(unigram.sum(), 1):
            raise _state.invalid(self, "_unigram must be a probability vector")

    def _check_series_state(self):
        d = self.__dict__
        for key in ("n_series_", "n_channels_", "n_covariates_"):
            _state.check_int(self, key, d.get(key), 1 if key != "n_covariates_" else 0)
        C, K = self.n_channels_, self.n_covariates_
        for key in ("_single", "_one_d"):
            _state.check_bool(self, key, d.get(key))
        for key, size in (("_mean", C), ("_std", C), ("_cov_mean", K),
                          ("_cov_std", K)):
            _state.check_array(self, key, d.get(key), shape=(size,))
        future = _state.check_array(self, "_future_cols", d.get("_future_cols"))
        past = _state.check_array(self, "_past_cols", d.get("_past_cols"))
        cols = np.concatenate([future, past])
        if cols.dtype.kind not in "iu" or sorted(cols.tolist()) != list(range(K)):
            raise _state.invalid(self, "_future_cols and _past_cols must split the "
                                       f"{K} covariate columns")
        tails, cov_tails = d.get("_tails"), d.get("_cov_tails")
        keep = self.window + self.difference
        for key, value, width in (("_tails", tails, C), ("_cov_tails", cov_tails, K)):
            if not isinstance(value, list) or len(value) != self.n_series_:
                raise _state.invalid(self, f"{key} must be a list of one array per "
                                           "series")
            for a in value:
                _state.check_array(self, key, a, shape=(keep, width))
        n_in = C + len(past) + len(future) * self._h_in
        if self.n_features_in_ != n_in or self.n_outputs_ != self._h_out * C:
            raise _state.invalid(self, "the network's inputs and outputs do not "
                                       "match the channels, covariates, strategy "
                                       "and horizon")
        scores = d.get("conformity_scores_")
        if scores is not None:
            _state.check_array(self, "conformity_scores_", scores)
            if scores.ndim != 3 or scores.shape[1:] != (self.horizon, C) or \
                    np.any(scores < 0):
                raise _state.invalid(self, "conformity_scores_ must be "
                                           "non-negative, (n, horizon, n_channels)")


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------

def _windows(a, w):
    """All windows of ``w`` consecutive rows of a 2-D array: (n - w + 1, w, k)."""
    return np.lib.stride_tricks.sliding_window_view(a, w, axis=0).transpose(0, 2, 1)


def _as_2d(a, what):
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 1-D (n_steps,) or 2-D (n_steps, "
                         f"n_channels) per series; got {arr.ndim} dimensions")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinity; impute or drop those "
                         "steps first")
    return arr


def _check_series(data, what, n_channels=None):
    """One series or a list of them, as a list of (n_steps, n_channels)
    float64 arrays; also whether it was one series and whether 1-D."""
    if data is None:
        raise ValueError(f"{what} is None; pass a series")
    if isinstance(data, str):
        raise TypeError(f"{what} is a string; for text set target_type='symbols' "
                        "(or 'auto')")
    if isinstance(data, (list, tuple)) and data and not np.isscalar(data[0]):
        single = False
        series = [_as_2d(s, what) for s in data]
    else:
        single = True
        series = [_as_2d(data, what)]
    if not series or any(len(s) == 0 for s in series):
        raise ValueError(f"{what} has an empty series; each needs steps")
    one_d = all(np.ndim(s) == 1 for s in ([data] if single else data))
    channels = {s.shape[1] for s in series}
    if len(channels) > 1:
        raise ValueError(f"the series of {what} have different channel counts "
                         f"{sorted(channels)}; they must agree")
    if n_channels is not None and series[0].shape[1] != n_channels:
        raise ValueError(f"{what} has {series[0].shape[1]} channels; the forecaster "
                         f"was fitted with {n_channels}")
    return series, single, one_d


def _check_covariates(X, series, single, n_covariates=None):
    covs = [X] if single else X
    if not single and not isinstance(X, (list, tuple)):
        raise ValueError("with a list of series, X must be a list of covariate "
                         "arrays, one per series")
    if len(covs) != len(series):
        raise ValueError(f"X has covariates for {len(covs)} series; y has "
                         f"{len(series)}")
    out = []
    for i, (c, s) in enumerate(zip(covs, series)):
        c = _as_2d(c, "X")
        if len(c) != len(s):
            raise ValueError(f"X (covariates) of series {i} has {len(c)} steps and "
                             f"the series {len(s)}; give one row per step")
        if n_covariates is not None and c.shape[1] != n_covariates:
            raise ValueError(f"X has {c.shape[1]} covariates; the forecaster was "
                             f"fitted with {n_covariates}")
        out.append(c)
    if len({c.shape[1] for c in out}) > 1:
        raise ValueError("the covariate arrays have different column counts")
    return out


def _check_int_symbols(d):
    a = np.asarray(d)
    if a.ndim != 1 or a.size == 0:
        raise ValueError("integer symbol sequences must be non-empty 1-D arrays")
    if a.dtype.kind not in "iu":
        raise TypeError(f"symbol sequences must be integers (or strings); got dtype "
                        f"{a.dtype}. For real-valued series use "
                        "target_type='continuous'")
    return a


def _conformal_quantile(scores, coverage):
    """Per (step, channel): the ceil((n+1) coverage)-th smallest score, or
    inf when n is too small."""
    n = scores.shape[0]
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
        return np.full(scores.shape[1:], np.inf)
    return np.sort(scores, axis=0)[rank - 1]


def _bits(probs, true):
    p = probs[np.arange(len(true)), true]
    return float(-np.mean(np.log2(np.clip(p, np.finfo(np.float64).tiny, 1))))


def _copy_state(state):
    """A deep copy of the engine's nested state lists (they may live in
    buffers the next call reuses)."""
    if isinstance(state, np.ndarray):
        return state.copy()
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(s) for s in state)
    return state


def _draw(logp, temperature, rng):
    if temperature == 0:
        return int(np.argmax(logp))
    z = logp / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(len(p), p=p))
