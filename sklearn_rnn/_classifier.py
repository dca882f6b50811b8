"""RNNClassifier: recurrent network classification of sequences or steps."""

import warnings

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import assert_all_finite
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

from . import _state
from ._base import BaseRNN
from ._sequences import check_step_targets


class RNNClassifier(ClassifierMixin, BaseRNN):
    """Recurrent neural network classifier.

    Reads each sequence with a stack of recurrent layers (Elman, Jordan, LSTM
    or GRU) and classifies it from the last step (sequence-to-one), or labels
    every step with ``return_sequences=True``. Binary and multilabel targets
    use sigmoid outputs and binary log-loss; multiclass targets use softmax
    and log-loss, as sklearn's MLPClassifier.

    Parameters
    ----------
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes, multiplied into ``sample_weight``
        (sequence-to-one only).
    **other parameters :
        As for :class:`RNNRegressor`, except ``output_activation``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,), or list of arrays (multilabel)
    n_features_in_ : int
        Features per step.
    loss_curve_ : list of float
    best_loss_ : float
    validation_scores_ : list of float or None
        Accuracy on the validation set of every epoch, with early stopping.
    n_iter_ : int
    n_outputs_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_rnn import RNNClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-1, 1, size=(200, 8, 1))
    >>> y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    >>> clf = RNNClassifier(cell="gru", hidden_layer_sizes=(16,), max_iter=30,
    ...                     learning_rate_init=0.01, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3]).shape
    (3, 2)
    >>> clf.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {
        **BaseRNN._parameter_constraints,
        "class_weight": [None, dict, "array-like", str],
    }

    def __init__(self, *, cell="lstm", hidden_layer_sizes=(32,), activation="tanh",
                 bidirectional=False, dropout=0.0, recurrent_dropout=0.0,
                 layer_norm=False, peephole=False, reset_after=True,
                 return_sequences=False, solver="adam", alpha=0.0,
                 batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, clip_norm=1.0, clip_value=None,
                 tbptt_k1=None, tbptt_k2=None, curriculum=None, dtype="float32",
                 n_threads=None, embedding_dim=None, embeddings=None,
                 freeze_embeddings=False, class_weight=None):
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
        self.class_weight = class_weight

    @property
    def _loss(self):
        return "log_loss" if self._multiclass else "binary_log_loss"

    @property
    def _out_activation(self):
        return "softmax" if self._multiclass else "sigmoid"

    def _validate_targets(self, y, seqs, first_call, classes=None):
        if y is None:
            raise ValueError("RNNClassifier requires y to be passed, but the target "
                             "y is None")
        if self.return_sequences:
            labels, _ = check_step_targets(y, seqs)
            if labels.shape[1] != 1:
                raise ValueError("with return_sequences=True, y must hold one label "
                                 "per step")
            labels = labels[:, 0]
        else:
            labels = np.asarray(y)
            if labels.ndim == 2 and labels.shape[1] == 1:
                warnings.warn(
                    "A column-vector y was passed when a 1d array was expected. "
                    "Please change the shape of y to (n_samples,), for example "
                    "using ravel().", DataConversionWarning, stacklevel=5)
                labels = labels[:, 0]
            if labels.ndim == 0 or labels.ndim > 2:
                raise ValueError(f"y has {labels.ndim} dimensions; expected labels "
                                 "(n_sequences,) or a multilabel indicator "
                                 "(n_sequences, n_labels)")
            if len(labels) != len(seqs):
                raise ValueError(f"y has {len(labels)} labels but X has {len(seqs)} "
                                 "sequences; they must match")
        if labels.dtype.kind in "fc":
            # before type_of_target, which casts to int (NaN/inf: warnings)
            assert_all_finite(labels, input_name="y")
        kind = type_of_target(labels, input_name="y")
        if kind not in ("binary", "multiclass", "multilabel-indicator"):
            raise ValueError(
                f"Unknown label type: {kind!r}. RNNClassifier needs class labels "
                "(binary, multiclass) or a multilabel indicator matrix; for "
                "continuous targets use RNNRegressor")
        if first_call:
            binarizer = LabelBinarizer()
            fit_on = labels
            if classes is not None and kind != "multilabel-indicator":
                fit_on = np.asarray(classes)
            binarizer.fit(fit_on)
            if kind != "multilabel-indicator" and len(binarizer.classes_) < 2:
                raise ValueError(
                    f"y has only one class ({binarizer.classes_[0]!r}); a "
                    "classifier needs at least 2 classes")
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
            self._multiclass = kind != "multilabel-indicator" and len(self.classes_) > 2
        else:
            if kind != "multilabel-indicator":
                unseen = np.setdiff1d(np.unique(labels), self.classes_)
                if unseen.size:
                    raise ValueError(
                        f"y contains labels {unseen.tolist()} not seen in the first "
                        "call; pass every class with classes= on the first "
                        "partial_fit")
        targets = self._label_binarizer.transform(labels).astype(np.float64)
        self.n_outputs_ = targets.shape[1]
        self._labels = labels
        return targets

    def _fit(self, X, y, sample_weight=None, *, incremental=False, classes=None):
        if self.class_weight is not None and self.return_sequences:
            raise ValueError("class_weight is supported for sequence-to-one "
                             "classification only (return_sequences=False)")
        if self.class_weight is not None:
            if np.asarray(y).ndim == 2 and np.asarray(y).shape[1] > 1:
                raise ValueError("class_weight is not supported for multilabel y")
            cw = compute_sample_weight(self.class_weight, np.asarray(y))
            sample_weight = (cw if sample_weight is None
                             else cw * np.asarray(sample_weight))
        return super()._fit(X, y, sample_weight, incremental=incremental,
                            classes=classes)

    def _stratify_labels(self, targets):
        labels = self._labels
        if labels.ndim != 1:
            return None
        _, counts = np.unique(labels, return_counts=True)
        return labels if counts.min() >= 2 else None

    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_sequences, n_steps, n_features), list of arrays \
of shape (n_steps_i, n_features), or array of shape (n_sequences, n_steps)
        y : array-like of shape (n_sequences,) or (n_sequences, n_labels); with
            ``return_sequences``, (n_sequences, n_steps) or a list of label arrays
        sample_weight : array-like of shape (n_sequences,), default=None

        Returns
        -------
        self
        """
        self._fit(X, y, sample_weight)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else np.nan
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights.

        ``classes`` (all labels that will ever appear) is required on the
        first call.
        """
        first = not hasattr(self, "_network")
        if first and classes is None and np.asarray(y).ndim == 1:
            raise ValueError("classes must be passed on the first call to "
                             "partial_fit (every label that y may contain)")
        self._fit(X, y, sample_weight, incremental=True,
                  classes=classes if first else None)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else np.nan
        return self

    def _proba(self, out):
        if self._multiclass:
            return out
        if len(self.classes_) == 2 and self._label_binarizer.y_type_ == "binary":
            return np.hstack([1 - out, out])
        return out

    def predict_proba(self, X):
        """Class probabilities, shape (n_sequences, n_classes) (a list or
        stacked array of per-step probabilities with return_sequences)."""
        check_is_fitted(self, "_network")
        out = self._forward(X)
        if self.return_sequences:
            probs = [self._proba(o) for o in out]
            return np.stack(probs) if len({len(p) for p in probs}) == 1 else probs
        return self._proba(out)

    def predict_log_proba(self, X):
        """Logarithm of predict_proba."""
        proba = self.predict_proba(X)
        if isinstance(proba, list):
            return [np.log(p) for p in proba]
        return np.log(proba)

    def _decode(self, out):
        if self._multiclass:
            return self.classes_[np.argmax(out, axis=1)]
        return self._label_binarizer.inverse_transform(out, threshold=0.5)

    def predict(self, X):
        """Predicted labels (per step with return_sequences)."""
        check_is_fitted(self, "_network")
        out = self._forward(X)
        if self.return_sequences:
            labels = [self._decode(o) for o in out]
            return np.stack(labels) if len({len(a) for a in labels}) == 1 else labels
        return self._decode(out)

    def score(self, X, y, sample_weight=None):
        """Accuracy (over all steps with return_sequences)."""
        if not self.return_sequences:
            return super().score(X, y, sample_weight)
        pred = self.predict(X)
        return accuracy_score(np.concatenate([np.ravel(t) for t in y]),
                              np.concatenate([np.ravel(p) for p in pred]))

    def _validation_score(self, seqs, targets, val_idx):
        out = self._forward_sequences(seqs.subset(val_idx))
        if self.return_sequences:
            rows = seqs.rows(val_idx)
            return accuracy_score(self._labels[rows],
                                  self._decode(np.concatenate(out)))
        return accuracy_score(self._labels[val_idx], self._decode(out))

    # the training labels, used during fit only, are not saved with the model
    _unsaved_attributes = ("_labels",)

    def _check_fitted_state(self):
        super()._check_fitted_state()
        self._check_input_output_sizes()
        binarizer = self.__dict__.get("_label_binarizer")
        if not isinstance(binarizer, LabelBinarizer):
            raise _state.invalid(self, "_label_binarizer must be a fitted "
                                       "LabelBinarizer")
        classes = _state.check_array(self, "classes_", self.__dict__.get("classes_"))
        kind = getattr(binarizer, "y_type_", None)
        if (kind not in ("binary", "multiclass", "multilabel-indicator")
                or classes.ndim != 1 or len(classes) < 2
                or not np.array_equal(getattr(binarizer, "classes_", None), classes)):
            raise _state.invalid(self, "classes_ and the label binarizer disagree")
        multilabel = kind == "multilabel-indicator"
        n_outputs = 1 if not multilabel and len(classes) == 2 else len(classes)
        if self.n_outputs_ != n_outputs:
            raise _state.invalid(self, f"{len(classes)} classes need {n_outputs} "
                                       f"outputs, not {self.n_outputs_}")
        multiclass = _state.check_bool(self, "_multiclass",
                                       self.__dict__.get("_multiclass"))
        if multiclass != (not multilabel and len(classes) > 2):
            raise _state.invalid(self, f"_multiclass={multiclass} disagrees with "
                                       f"{len(classes)} {kind} classes")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.classifier_tags.multi_label = True
        return tags
