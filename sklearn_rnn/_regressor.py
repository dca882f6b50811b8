"""RNNRegressor: recurrent network regression, sequence-to-one or per step."""

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_array

from . import _state
from ._base import BaseRNN
from ._sequences import check_step_targets


class RNNRegressor(RegressorMixin, BaseRNN):
    """Recurrent neural network regressor.

    Reads each sequence with a stack of recurrent layers (Elman, Jordan, LSTM
    or GRU) and predicts from the last step with a dense output layer
    (sequence-to-one), or at every step with ``return_sequences=True``. It is
    trained by backpropagation through time, minimising the squared error
    ``0.5 * mean((y - t)**2)`` with Adam or SGD.

    Parameters
    ----------
    cell : {'lstm', 'gru', 'rnn', 'jordan'}, default='lstm'
        Recurrent cell: 'rnn' is Elman's hidden recurrence, 'jordan' feeds the
        output (and each layer above) back, 'lstm' and 'gru' follow PyTorch.
    hidden_layer_sizes : tuple of int, default=(32,)
        Hidden units of each stacked recurrent layer.
    activation : {'tanh', 'relu'}, default='tanh'
        Hidden activation of 'rnn' and 'jordan' cells.
    output_activation : {'identity', 'sigmoid', 'tanh'}, default='identity'
        Activation of the output layer (sigmoid or tanh bound the targets).
    bidirectional : bool, default=False
        Also read each sequence backwards and concatenate both directions.
    dropout : float, default=0.0
        Dropout between stacked layers during training.
    recurrent_dropout : float, default=0.0
        Dropout on the recurrent state, with one mask per sequence used at
        every step.
    layer_norm : bool, default=False
        Layer normalisation of every gate's pre-activation.
    peephole : bool, default=False
        LSTM peephole connections.
    reset_after : bool, default=True
        GRU: reset gate after the recurrent product (PyTorch) or before it.
    return_sequences : bool, default=False
        Predict at every step; y is then (n_sequences, n_steps[, n_targets])
        or a list of per-sequence arrays.
    solver : {'adam', 'sgd'}, default='adam'
    alpha : float, default=0.0
        L2 penalty on the weight matrices.
    batch_size : int or 'auto', default='auto'
        Sequences per mini-batch; 'auto' is ``min(32, n_sequences)``.
    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule, as in sklearn's MLP.
    learning_rate_init : float, default=0.001
    power_t : float, default=0.5
        Exponent of the 'invscaling' schedule.
    max_iter : int, default=200
        Epochs.
    shuffle : bool, default=True
    random_state : int, RandomState instance or None, default=None
        Weights, shuffling, dropout masks and validation split.
    tol : float, default=1e-4
    verbose : bool, default=False
        Print one progress line per epoch.
    warm_start : bool, default=False
        Continue from the previous fit's weights.
    momentum : float, default=0.9
        SGD momentum.
    nesterovs_momentum : bool, default=True
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the sequences and stop when the
        validation score stops improving; the best weights are kept.
    validation_fraction : float, default=0.1
    beta_1, beta_2, epsilon : float
        Adam's parameters.
    n_iter_no_change : int, default=10
    clip_norm : float or None, default=1.0
        Clip the gradient's global norm (None: no clipping).
    clip_value : float or None, default=None
        Clip every gradient entry to ``[-clip_value, clip_value]``.
    tbptt_k1, tbptt_k2 : int or None, default=None
        Truncated BPTT: every ``tbptt_k1`` steps, back-propagate
        ``tbptt_k2 >= tbptt_k1`` steps. None: full BPTT.
    curriculum : int or None, default=None
        Train the first ``curriculum`` epochs on growing suffixes of the
        sequences, then on whole sequences.
    dtype : {'float32', 'float64'}, default='float32'
    n_threads : int or None, default=None
        OpenMP threads (None: all cores; negative: as in joblib).
    embedding_dim : int or None, default=None
        With token sequences (from :class:`OneHot` or :class:`TfidfSequence`),
        read them through a learned dense embedding of this size. None feeds
        the weighted one-hot steps to the first layer directly.
    embeddings : array-like of shape (n_tokens, embedding_dim), default=None
        Pretrained embeddings (e.g. word2vec or GloVe rows, in the order of
        the transformer's ``get_feature_names_out()``) to start from.
    freeze_embeddings : bool, default=False
        Keep the embeddings fixed during training.

    Attributes
    ----------
    n_features_in_ : int
        Features per step.
    loss_ : float
    loss_curve_ : list of float
        Training loss of every epoch.
    best_loss_ : float
    validation_scores_ : list of float or None
        R² on the validation set of every epoch, with early stopping.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    n_outputs_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_rnn import RNNRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-1, 1, size=(200, 10, 1))
    >>> y = X[:, :, 0].sum(axis=1)
    >>> reg = RNNRegressor(hidden_layer_sizes=(16,), max_iter=30,
    ...                    learning_rate_init=0.01, random_state=0).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
    >>> reg.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {
        **BaseRNN._parameter_constraints,
        "output_activation": [StrOptions({"identity", "sigmoid", "tanh"})],
    }

    def __init__(self, *, cell="lstm", hidden_layer_sizes=(32,), activation="tanh",
                 output_activation="identity", bidirectional=False, dropout=0.0,
                 recurrent_dropout=0.0, layer_norm=False, peephole=False,
                 reset_after=True, return_sequences=False, solver="adam",
                 alpha=0.0, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, clip_norm=1.0, clip_value=None,
                 tbptt_k1=None, tbptt_k2=None, curriculum=None, dtype="float32",
                 n_threads=None, embedding_dim=None, embeddings=None,
                 freeze_embeddings=False):
        super().__init__(
            cell=cell, hidden_layer_sizes=hidden_layer_sizes, activation=activation,
            bidirectional=bidirectional, dropout=dropout,
            recurrent_dropout=recurrent_dropout, layer_norm=layer_norm,
            peephole=peephole, reset_after=reset_after,
            return_sequences=return_sequences, solver=solver, alpha=alpha,
            batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change,
            clip_norm=clip_norm, clip_value=clip_value, tbptt_k1=tbptt_k1,
            tbptt_k2=tbptt_k2, curriculum=curriculum, dtype=dtype,
            n_threads=n_threads, embedding_dim=embedding_dim, embeddings=embeddings,
            freeze_embeddings=freeze_embeddings)
        self.output_activation = output_activation

    _loss = "squared_error"

    @property
    def _out_activation(self):
        return self.output_activation

    def _validate_targets(self, y, seqs, first_call, classes=None):
        if y is None:
            raise ValueError("RNNRegressor requires y to be passed, but the target "
                             "y is None")
        if self.return_sequences:
            targets, one_d = check_step_targets(y, seqs, dtype=np.float64)
        else:
            arr = np.asarray(y)
            if arr.ndim == 0 or arr.ndim > 2:
                raise ValueError(
                    f"y has {arr.ndim} dimensions; expected (n_sequences,) or "
                    "(n_sequences, n_targets). For one target per step use "
                    "return_sequences=True")
            if len(arr) != len(seqs):
                raise ValueError(f"y has {len(arr)} targets but X has {len(seqs)} "
                                 "sequences; they must match")
            one_d = arr.ndim == 1
            targets = check_array(arr.reshape(len(arr), -1), dtype=np.float64,
                                  ensure_all_finite=True, input_name="y")
        if first_call:
            self._y_one_d = one_d
            self.n_outputs_ = targets.shape[1]
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} targets; this estimator was "
                             f"fitted with {self.n_outputs_}")
        return targets

    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_sequences, n_steps, n_features), list of arrays \
of shape (n_steps_i, n_features), or array of shape (n_sequences, n_steps)
        y : array-like of shape (n_sequences,) or (n_sequences, n_targets); with
            ``return_sequences``, (n_sequences, n_steps[, n_targets]) or a list
        sample_weight : array-like of shape (n_sequences,), default=None

        Returns
        -------
        self
        """
        self._fit(X, y, sample_weight)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else np.nan
        return self

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights."""
        self._fit(X, y, sample_weight, incremental=True)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else np.nan
        return self

    def predict(self, X):
        """Predict for each sequence (or each step, with return_sequences).

        Returns
        -------
        y : ndarray of shape (n_sequences,) or (n_sequences, n_targets); with
            ``return_sequences``, (n_sequences, n_steps[, n_targets]) when all
            sequences have the same length, else a list of arrays.
        """
        out = self._forward(X)
        if self.return_sequences:
            out = [o[:, 0] if self._y_one_d else o for o in out]
            lengths = {len(o) for o in out}
            return np.stack(out) if len(lengths) == 1 else out
        return out[:, 0] if self._y_one_d else out

    def score(self, X, y, sample_weight=None):
        """R² of the predictions (over all steps with return_sequences)."""
        if not self.return_sequences:
            return super().score(X, y, sample_weight)
        pred = self.predict(X)
        flat_pred = np.concatenate([np.asarray(p).reshape(len(p), -1) for p in pred])
        flat_true = np.concatenate([np.asarray(t).reshape(len(t), -1) for t in y])
        return r2_score(flat_true, flat_pred)

    def _validation_score(self, seqs, targets, val_idx):
        pred = self._forward_sequences(seqs.subset(val_idx))
        if self.return_sequences:
            return r2_score(targets[seqs.rows(val_idx)], np.concatenate(pred))
        return r2_score(targets[val_idx], pred)

    def _check_fitted_state(self):
        super()._check_fitted_state()
        self._check_input_output_sizes()
        one_d = _state.check_bool(self, "_y_one_d", self.__dict__.get("_y_one_d"))
        if one_d and self.n_outputs_ != 1:
            raise _state.invalid(self, f"_y_one_d=True but n_outputs_="
                                       f"{self.n_outputs_}")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.target_tags.multi_output = True
        return tags
