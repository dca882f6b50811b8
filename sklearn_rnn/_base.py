"""Shared estimator logic: parameters, validation, the training loop, weights."""

import time
import warnings
from numbers import Integral, Real

import numpy as np
from pyx_rnn._openmp import effective_n_threads
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from pyx_rnn import __version__
from pyx_rnn._checks import finite_checks
from pyx_rnn._threads import single_threaded_blas
from pyx_rnn.network import Network
from pyx_rnn.optim import SGD, Adam

from . import _state
from ._sequences import Sequences, check_sequences
from ._state import warn_if_other_version

# Sequences per forward pass at prediction: bounds the memory of the caches.
PREDICT_CHUNK = 256


class BaseRNN(BaseEstimator):
    """Base class of RNNRegressor and RNNClassifier. Not for direct use."""

    _parameter_constraints = {
        "cell": [StrOptions({"rnn", "jordan", "lstm", "gru"})],
        "hidden_layer_sizes": [
            "array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"tanh", "relu"})],
        "bidirectional": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "recurrent_dropout": [Interval(Real, 0, 1, closed="left")],
        "layer_norm": ["boolean"],
        "peephole": ["boolean"],
        "reset_after": ["boolean"],
        "return_sequences": ["boolean"],
        "solver": [StrOptions({"adam", "sgd"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [
            StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "clip_norm": [None, Interval(Real, 0, None, closed="neither")],
        "clip_value": [None, Interval(Real, 0, None, closed="neither")],
        "tbptt_k1": [None, Interval(Integral, 1, None, closed="left")],
        "tbptt_k2": [None, Interval(Integral, 1, None, closed="left")],
        "curriculum": [None, Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "n_threads": [None, Integral],
        "embedding_dim": [None, Interval(Integral, 1, None, closed="left")],
        "embeddings": [None, "array-like"],
        "freeze_embeddings": ["boolean"],
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
                 freeze_embeddings=False):
        self.cell = cell
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.layer_norm = layer_norm
        self.peephole = peephole
        self.reset_after = reset_after
        self.return_sequences = return_sequences
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
        self.warm_start = warm_start
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
        self.tbptt_k1 = tbptt_k1
        self.tbptt_k2 = tbptt_k2
        self.curriculum = curriculum
        self.dtype = dtype
        self.n_threads = n_threads
        self.embedding_dim = embedding_dim
        self.embeddings = embeddings
        self.freeze_embeddings = freeze_embeddings

    # ------------------------------------------------------------------
    # hooks for subclasses
    # ------------------------------------------------------------------

    _loss = None          # set by the subclass from the targets
    _out_activation = None

    def _validate_targets(self, y, seqs, first_call, classes=None):
        """Return (targets, per_step) with targets an array of shape
        (n_sequences or total_steps, n_outputs)."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------

    def _check_params(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, Integral):
            sizes = (sizes,)
        sizes = tuple(sizes)
        if not sizes or any(not isinstance(h, Integral) or h < 1 for h in sizes):
            raise ValueError(
                f"hidden_layer_sizes must be a non-empty tuple of positive integers, "
                f"got {self.hidden_layer_sizes!r}")
        if self.cell == "jordan" and self.bidirectional:
            raise ValueError("cell='jordan' feeds its output back and cannot be "
                             "bidirectional; set bidirectional=False")
        if self.peephole and self.cell != "lstm":
            raise ValueError("peephole=True needs cell='lstm'")
        if (self.tbptt_k1 is None) != (self.tbptt_k2 is None):
            raise ValueError("set both tbptt_k1 and tbptt_k2 (or neither)")
        if self.tbptt_k1 is not None:
            if self.tbptt_k1 > self.tbptt_k2:
                raise ValueError(
                    f"tbptt_k1={self.tbptt_k1} must be <= tbptt_k2={self.tbptt_k2}: "
                    "every k1 steps, gradients flow back k2 >= k1 steps")
            if self.bidirectional:
                raise ValueError("truncated BPTT (tbptt_k1/tbptt_k2) cannot be "
                                 "combined with bidirectional=True")
        if self.n_threads == 0:
            raise ValueError("n_threads=0 is invalid; use None (all cores), a "
                             "positive count, or a negative count as in joblib")
        return sizes

    def _validate_X(self, X, reset):
        if reset:
            seqs = check_sequences(X, dtype=self.dtype)
            self.n_features_in_ = seqs.n_features
        else:
            seqs = check_sequences(X, dtype=self._dtype,
                                   n_features=self.n_features_in_)
        return seqs

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------

    def _build(self, sizes, n_outputs, rng, seqs):
        self._dtype = np.dtype(self.dtype)
        embedding_dim, embeddings = self._check_embeddings(seqs)
        self._network = Network(
            self.cell, self.n_features_in_, sizes, n_outputs,
            bidirectional=self.bidirectional, activation=self.activation,
            output_activation=self._out_activation, peephole=self.peephole,
            reset_after=self.reset_after, layer_norm=self.layer_norm,
            embedding_dim=embedding_dim, token_input=seqs.tokens,
            dtype=self._dtype)
        self._network.init_weights(rng)
        if embeddings is not None:
            self._network.weights["embedding.weight"][...] = embeddings
        self._optimizer = None
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_ = []
        self.best_loss_ = np.inf
        self._no_improvement_count = 0
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None
        self._best_params = None
        self._best_loss_params = None
        self._lr = self.learning_rate_init
        self._sklearn_rnn_version = __version__

    def _check_embeddings(self, seqs):
        """Embedding size and pretrained matrix (or None), validated."""
        if self.embeddings is None and self.embedding_dim is None:
            # token sequences without an embedding: the first layer reads the
            # (weighted) one-hot vectors itself, as a row gather
            if self.freeze_embeddings:
                raise ValueError("freeze_embeddings=True needs an embedding: set "
                                 "embeddings= (a pretrained matrix) or embedding_dim")
            return None, None
        if not seqs.tokens:
            raise ValueError(
                "an embedding (embedding_dim or embeddings) reads token sequences; "
                "transform text with sklearn_rnn.OneHot or TfidfSequence first")
        if self.embeddings is None:
            return self.embedding_dim, None
        emb = np.asarray(self.embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != seqs.n_tokens:
            raise ValueError(
                f"embeddings must have shape (n_tokens, embedding_dim) = "
                f"({seqs.n_tokens}, d), one row per token of the transformer's "
                f"get_feature_names_out(); got {emb.shape}")
        if self.embedding_dim is not None and self.embedding_dim != emb.shape[1]:
            raise ValueError(f"embedding_dim={self.embedding_dim} disagrees with "
                             f"embeddings of width {emb.shape[1]}")
        if not np.all(np.isfinite(emb)):
            raise ValueError("embeddings contain NaN or infinity")
        return emb.shape[1], emb

    def _make_optimizer(self):
        params = self._network.params
        if self.solver == "adam":
            return Adam(params, self._lr, self.beta_1, self.beta_2, self.epsilon)
        return SGD(params, self._lr, self.momentum, self.nesterovs_momentum)

    def _fit(self, X, y, sample_weight=None, *, incremental=False, classes=None):
        self._validate_params()
        sizes = self._check_params()
        first_call = (not (incremental or self.warm_start)
                      or not hasattr(self, "_network"))
        seqs = self._validate_X(X, reset=first_call)
        targets = self._validate_targets(y, seqs, first_call, classes)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != (len(seqs),):
                raise ValueError(
                    f"sample_weight has shape {sample_weight.shape}; expected one "
                    f"weight per sequence, shape ({len(seqs)},)")
            if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
                raise ValueError("sample_weight must be finite and non-negative")
            if not np.any(sample_weight > 0):
                raise ValueError("Sample weights must contain at least one non-zero "
                                 "number; all sample_weight are zero")
        return self._fit_validated(sizes, seqs, targets, sample_weight,
                                   first_call=first_call, incremental=incremental)

    def _fit_validated(self, sizes, seqs, targets, sample_weight, *, first_call,
                       incremental=False, n_outputs=None):
        """Build (on the first call) and train the network on validated
        sequences and targets; ``n_outputs`` defaults to ``targets.shape[1]``
        (1-D targets are class indices)."""
        rng = check_random_state(self.random_state)
        if first_call:
            if n_outputs is None:
                n_outputs = targets.shape[1]
            self._build(sizes, n_outputs, rng, seqs)
        elif self.warm_start and not incremental:
            self._check_same_architecture(sizes)
        self._rng = getattr(self, "_rng", None) if incremental else None
        if self._rng is None:
            # one stream for shuffling and dropout masks, derived from random_state
            self._rng = np.random.default_rng(rng.randint(np.iinfo(np.int32).max))
        n_threads = effective_n_threads(self.n_threads)
        with single_threaded_blas():
            self._train(seqs, targets, sample_weight, incremental, n_threads)
        return self

    def _check_same_architecture(self, sizes):
        net = self._network
        if (net.cell, net.hidden_sizes, net.bidirectional) != (
                self.cell, sizes, bool(self.bidirectional)):
            raise ValueError(
                "warm_start=True continues from the fitted weights, so cell, "
                "hidden_layer_sizes and bidirectional cannot change; set "
                "warm_start=False to fit a new network")

    def _batch_size(self, n):
        if self.batch_size == "auto":
            return min(32, n)
        if self.batch_size > n:
            warnings.warn(
                f"batch_size={self.batch_size} is larger than the {n} training "
                "sequences; using all of them in every batch", UserWarning)
        return min(self.batch_size, n)

    def _batches(self, seqs, idx, batch_size):
        """Mini-batches of sequence indices. With variable lengths, sequences
        of similar length go together (bucketing), so that every batch's
        sequences finish at about the same step."""
        idx = np.asarray(idx)
        if self.shuffle:
            idx = self._rng.permutation(idx)
        if not seqs.fixed_length:
            # sort by length, random order within equal lengths, then cut
            idx = idx[np.argsort(-seqs.lengths[idx], kind="stable")]
        batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
        if self.shuffle and not seqs.fixed_length:
            batches = [batches[i] for i in self._rng.permutation(len(batches))]
        return batches

    def _train(self, seqs, targets, sample_weight, incremental, n_threads):
        n = len(seqs)
        if self.early_stopping and not incremental:
            # train_test_split takes ceil(fraction * n) for validation; check
            # first, as it refuses test_size=0 with a message about itself
            n_val = int(np.ceil(self.validation_fraction * n))
            if n_val == 0 or n_val >= n:
                raise ValueError(
                    f"early_stopping needs a validation set, but validation_fraction="
                    f"{self.validation_fraction} of {n} sequences leaves "
                    f"{'no validation' if n_val == 0 else 'no training'} sequence; "
                    "change validation_fraction or turn early_stopping off")
            train_idx, val_idx = self._split_validation(n, targets)
        else:
            train_idx, val_idx = np.arange(n), None
        batch_size = self._batch_size(len(train_idx))
        if self._optimizer is None:
            self._optimizer = self._make_optimizer()
        tbptt = None if self.tbptt_k1 is None else (self.tbptt_k1, self.tbptt_k2)
        max_iter = 1 if incremental else self.max_iter
        # A diverging fit overflows: the loss is checked after every batch and
        # the parameters after every epoch, and divergence is reported once
        # as a ConvergenceWarning, not as NumPy's overflow RuntimeWarnings nor
        # as the kernels' errors on non-finite intermediate results (inputs
        # and parameters are finite when training starts).
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                finite_checks(False):
            self._train_epochs(seqs, targets, sample_weight, incremental, n_threads,
                               train_idx, val_idx, batch_size, tbptt, max_iter)

    def _train_epochs(self, seqs, targets, sample_weight, incremental, n_threads,
                      train_idx, val_idx, batch_size, tbptt, max_iter):
        def run_epoch(epoch):
            limit = self._curriculum_length(seqs, epoch, max_iter, incremental)
            total, weight = 0.0, 0.0
            for b in self._batches(seqs, train_idx, batch_size):
                value, w = self._step(seqs, targets, sample_weight, b, tbptt,
                                      n_threads, limit)
                if not np.isfinite(value):
                    return None
                total += value * w
                weight += w
                self.t_ += len(b)
                self._schedule()
            return total / max(weight, 1e-300)

        def validate():
            if val_idx is None:
                return None
            return self._validation_score(seqs, targets, val_idx)

        self._run_epochs(max_iter, run_epoch, validate,
                         warn_at_max_iter=not incremental and self.max_iter > 1)

    def _run_epochs(self, max_iter, run_epoch, validate, *, warn_at_max_iter):
        """The epoch loop of every way of training.

        ``run_epoch(epoch)`` trains one epoch and returns its loss, or None
        when a batch's loss was not finite; ``validate()`` returns the
        validation score, or None without a validation set. Divergence
        restores the weights of the epoch's start and warns; the loss curve,
        the stopping rule and the progress lines are kept here; a
        KeyboardInterrupt keeps the best weights so far.
        """
        net = self._network
        start = time.perf_counter()
        try:
            for epoch in range(max_iter):
                params_before = net.params.copy()
                epoch_loss = run_epoch(epoch)
                # a non-finite loss, or a last step that overflowed after a
                # finite one
                if epoch_loss is None or not np.all(np.isfinite(net.params)):
                    net.params[:] = params_before
                    self._diverged()
                    return
                self.n_iter_ += 1
                self.loss_curve_.append(epoch_loss)
                val_score = validate()
                if val_score is not None:
                    self.validation_scores_.append(val_score)
                stop = self._update_no_improvement(epoch_loss, val_score)
                if self.verbose:
                    elapsed = time.perf_counter() - start
                    eta = elapsed / (epoch + 1) * (max_iter - epoch - 1)
                    print(f"{self._progress_message(epoch_loss, val_score)}, "
                          f"elapsed {elapsed:.1f}s, ETA {eta:.1f}s", flush=True)
                if stop:
                    break
            else:
                if warn_at_max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                        "reached and the optimization hasn't converged yet.",
                        ConvergenceWarning)
        except KeyboardInterrupt:
            # the weights of the best epoch: by validation score with early
            # stopping, else by training loss
            best = self._best_params if self.early_stopping else self._best_loss_params
            if best is not None:
                net.params[:] = best
            warnings.warn("Training interrupted by the user; keeping the best "
                          "weights found so far.", UserWarning)
            return
        if self.early_stopping and self._best_params is not None:
            net.params[:] = self._best_params

    def _progress_message(self, loss, val_score):
        """The verbose line of an epoch (without the timings)."""
        msg = f"Iteration {self.n_iter_}, loss = {loss:.8f}"
        if val_score is not None:
            msg += f", validation score = {val_score:.6f}"
        return msg

    def _split_validation(self, n, targets):
        """Indices of the training and validation sequences (early stopping):
        a random split, stratified by class for classifiers."""
        stratify = self._stratify_labels(targets) if not self.return_sequences else None
        return train_test_split(
            np.arange(n), test_size=self.validation_fraction,
            random_state=self._rng.integers(np.iinfo(np.int32).max),
            stratify=stratify)

    def _curriculum_length(self, seqs, epoch, max_iter, incremental):
        """With ``curriculum=k``, the first k epochs see only the last
        ``T * (stage + 1) / (k + 1)`` steps of each sequence, growing to the
        full length; None (or partial_fit) uses whole sequences."""
        if self.curriculum is None or incremental or epoch >= self.curriculum:
            return None
        longest = int(seqs.lengths.max())
        return max(1, int(np.ceil(longest * (epoch + 1) / (self.curriculum + 1))))

    def _step(self, seqs, targets, sample_weight, b, tbptt, n_threads, limit):
        net = self._network
        X, packing, T, sw = self._batch_arrays(seqs, targets, sample_weight, b, limit)
        if sw is not None and not np.any(sw > 0):
            # every sequence of the batch has zero weight: nothing to learn
            # (the engine would divide by a total weight of 0)
            return 0.0, 0.0
        value, _ = net.loss_gradient(
            X, packing, T, self._loss, sample_weight=sw,
            return_sequences=self.return_sequences, alpha=self.alpha,
            dropout=self.dropout, recurrent_dropout=self.recurrent_dropout,
            rng=self._rng, tbptt=tbptt, n_threads=n_threads)
        if not np.isfinite(value):
            return value, 0.0
        if self.freeze_embeddings and "embedding.weight" in net.grad_views:
            net.grad_views["embedding.weight"][...] = 0
        net.clip_gradients(self.clip_norm, self.clip_value)
        self._optimizer.step(net.grads)
        return value, float(len(b) if sw is None else sw.sum())

    def _batch_arrays(self, seqs, targets, sample_weight, b, limit=None):
        """The network's input (``Sequences.network_input``), packing,
        targets and weights of the sequences ``b`` (None
        without sample weights: the engine's default, all ones); with a
        curriculum ``limit``, only their last ``limit`` steps."""
        b = np.asarray(b)
        if limit is None:
            X, packing = seqs.network_input(b, self._dtype)
            if self.return_sequences:
                rows = seqs.step_rows(b, packing)
        else:
            part, source_rows = _suffixes(seqs, b, limit)
            local = np.arange(len(b))
            X, packing = part.network_input(local, self._dtype)
            if self.return_sequences:
                rows = source_rows[part.step_rows(local, packing)]
        chosen = b[packing.order]
        T = targets[rows] if self.return_sequences else targets[chosen]
        sw = (None if sample_weight is None
              else sample_weight[chosen].astype(self._dtype))
        # class indices stay integers; anything else is cast to the dtype
        T = np.ascontiguousarray(T, np.intp if T.dtype.kind in "iu" else self._dtype)
        return X, packing, T, sw

    def _schedule(self):
        if self.learning_rate == "invscaling":
            self._lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            self._optimizer.learning_rate = self._lr

    def _update_no_improvement(self, loss, val_score):
        """sklearn MLP's stopping rule. Returns True to stop."""
        net = self._network
        if val_score is not None:
            if val_score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if val_score > self.best_validation_score_:
                self.best_validation_score_ = val_score
                self._best_params = net.params.copy()
        else:
            if loss > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
        if loss < self.best_loss_:
            self.best_loss_ = loss
            if val_score is None:
                self._best_loss_params = net.params.copy()
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        if self.learning_rate == "adaptive" and self._lr > 1e-6:
            self._lr /= 5.0
            self._optimizer.learning_rate = self._lr
            self._no_improvement_count = 0
            if self.verbose:
                print(f"Setting learning rate to {self._lr:f}")
            return False
        if self.verbose:
            what = "Validation score" if val_score is not None else "Training loss"
            print(f"{what} did not improve more than tol={self.tol} for "
                  f"{self.n_iter_no_change} consecutive epochs. Stopping.")
        return True

    def _diverged(self):
        warnings.warn(
            "The training loss became NaN or infinite; training stopped and the "
            "weights of the last finite epoch were restored. Lower "
            "learning_rate_init, or set clip_norm / clip_value.", ConvergenceWarning)

    def _stratify_labels(self, targets):
        return None

    def _validation_score(self, seqs, targets, val_idx):
        raise NotImplementedError

    # ------------------------------------------------------------------
    # prediction
    # ------------------------------------------------------------------

    def _forward(self, X):
        """Network output for X: (n_sequences, n_outputs), or a list of
        (n_steps_i, n_outputs) arrays with return_sequences."""
        check_is_fitted(self, "_network")
        seqs = self._validate_X(X, reset=False)
        return self._forward_sequences(seqs)

    def _forward_sequences(self, seqs):
        net = self._network
        n_threads = effective_n_threads(self.n_threads)
        n = len(seqs)
        # longest first, so that each chunk holds sequences of similar length
        order = np.argsort(-seqs.lengths, kind="stable")
        # float64 out whatever the network's dtype, as every sklearn estimator
        out = [None] * n if self.return_sequences else np.empty((n, net.n_output),
                                                                 np.float64)
        with single_threaded_blas():
            for s in range(0, n, PREDICT_CHUNK):
                idx = order[s:s + PREDICT_CHUNK]
                # dense steps are read where they lie: no packed copy
                X, packing = seqs.network_input(idx, net.dtype)
                _, Y, _ = net.forward(X, packing,
                                      return_sequences=self.return_sequences,
                                      n_threads=n_threads)
                chosen = idx[packing.order]
                if self.return_sequences:
                    for b in range(packing.n_sequences):
                        out[chosen[b]] = Y[packing.rows_of(b)].astype(np.float64)
                else:
                    out[chosen] = Y
        return out

    # ------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------

    def get_weights(self):
        """Weights as a dict of arrays, named and shaped as in PyTorch.

        ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
        ``bias_hh_l{k}`` (suffix ``_reverse`` for the backward direction),
        ``output.weight`` and ``output.bias``; plus ``peephole_l{k}`` and
        ``ln_weight_l{k}``/``ln_bias_l{k}`` when those options are on.
        """
        check_is_fitted(self, "_network")
        return {name: w.copy() for name, w in self._network.weights.items()}

    def set_weights(self, weights):
        """Replace the weights of a fitted estimator.

        Parameters
        ----------
        weights : dict of array-like
            Every name of ``get_weights()``, with the same shapes.

        Returns
        -------
        self
        """
        check_is_fitted(self, "_network")
        current = self._network.weights
        missing = sorted(set(current) - set(weights))
        extra = sorted(set(weights) - set(current))
        if missing or extra:
            raise ValueError(
                f"set_weights needs exactly the names of get_weights(); missing "
                f"{missing}, unexpected {extra}")
        new = {}
        for name, w in weights.items():
            a = np.asarray(w, dtype=np.float64)
            if a.shape != current[name].shape:
                raise ValueError(f"{name} has shape {a.shape}; expected "
                                 f"{current[name].shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or infinity")
            new[name] = a
        for name, a in new.items():
            current[name][...] = a
        return self

    # attributes that only a running fit uses, left out of saved models
    _unsaved_attributes = ()

    def __getstate__(self):
        """Parameters and fitted attributes, as plain data.

        A copy of ``__dict__`` in which the dtype is a string and the random
        stream of ``partial_fit`` is its bit generator's state (a dict of
        integers), so that safe formats (``skops.io``,
        ``sklearn_rnn.persistence``) store only data, arrays and our own
        types (``sklearn_rnn.persistence.TRUSTED_TYPES``).
        """
        state = dict(super().__getstate__())  # a copy: never change self
        for key in self._unsaved_attributes:
            state.pop(key, None)
        if isinstance(state.get("_dtype"), np.dtype):
            state["_dtype"] = state["_dtype"].name
        rng = state.pop("_rng", None)
        if rng is not None:
            state["_rng_state"] = rng.bit_generator.state
        return state

    def __setstate__(self, state):
        """Restore a saved state, checking the fitted part of it.

        Warns if the model was saved with another version of sklearn-rnn.

        Raises
        ------
        ValueError
            If the state is inconsistent (as a damaged or edited file gives):
            the message names the attribute.
        """
        if not isinstance(state, dict):
            raise ValueError(f"invalid saved {type(self).__name__}: the state must "
                             f"be a dict, got {type(state).__name__}")
        warn_if_other_version(state.get("_sklearn_rnn_version"))
        state = dict(state)
        if "_rng_state" in state:
            state["_rng"] = _generator_from_state(self, state.pop("_rng_state"))
        if "_dtype" in state:
            dtype = state["_dtype"]
            if not isinstance(dtype, (str, np.dtype)) or str(dtype) not in (
                    "float32", "float64"):
                raise _state.invalid(self, f"_dtype={dtype!r} must be float32 or "
                                           "float64")
            state["_dtype"] = np.dtype(dtype)
        super().__setstate__(state)
        net = self.__dict__.get("_network")
        if net is None:
            return
        if not isinstance(net, Network):
            raise _state.invalid(self, f"_network is a {type(net).__name__}, not a "
                                       "pyx_rnn Network")
        if not net.params.flags.writeable:
            # loaded from a read-only memory map (joblib.load(mmap_mode='r')):
            # the kernels and the optimiser write into the parameters, so work
            # on a copy
            net_state = net.__getstate__()
            net_state["params"] = np.array(net.params)
            net.__setstate__(net_state)
        opt = self.__dict__.get("_optimizer")
        if opt is not None:
            for key, value in vars(opt).items():
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    setattr(opt, key, np.array(value))
        self._check_fitted_state()
        if opt is not None:
            # the optimiser updates the network's parameters in place
            opt.params = net.params

    def _check_fitted_state(self):
        """Check that the fitted attributes of the training loop agree with
        each other and with the network; subclasses add their own checks.

        Raises
        ------
        ValueError
            Naming the first attribute that disagrees.
        """
        net = self._network
        missing = [key for key in ("_dtype", "_optimizer", "n_iter_", "t_",
                                   "loss_curve_", "_lr") if key not in self.__dict__]
        if missing:
            raise _state.invalid(self, f"a fitted model needs {missing}")
        if self._dtype != net.dtype:
            raise _state.invalid(self, f"_dtype={self._dtype} but the network is "
                                       f"{net.dtype}")
        for key in ("_best_params", "_best_loss_params"):
            value = self.__dict__.get(key)
            if value is not None:
                _state.check_array(self, key, value, shape=net.params.shape,
                                   dtype=net.dtype)
        opt = self._optimizer
        if opt is not None:
            if not isinstance(opt, (SGD, Adam)):
                raise _state.invalid(self, f"_optimizer is a {type(opt).__name__}")
            if opt.params.shape != net.params.shape or opt.params.dtype != net.dtype:
                raise _state.invalid(self, "the optimiser's state does not match the "
                                           "network's parameters")
        _state.check_int(self, "n_iter_", self.n_iter_)
        _state.check_int(self, "t_", self.t_)
        _state.check_number(self, "_lr", self._lr, finite=True)
        if (not isinstance(self.loss_curve_, list)
                or len(self.loss_curve_) != self.n_iter_):
            raise _state.invalid(self, "loss_curve_ must be a list of one loss per "
                                       "epoch (n_iter_)")
        for value in self.loss_curve_:
            _state.check_number(self, "loss_curve_", value)

    def _check_input_output_sizes(self):
        """``n_features_in_`` and ``n_outputs_`` must be the network's (for
        estimators whose network reads the features and predicts the outputs
        directly)."""
        net = self._network
        for key, size in (("n_features_in_", net.n_input),
                          ("n_outputs_", net.n_output)):
            if key not in self.__dict__:
                raise _state.invalid(self, f"a fitted model needs {key}")
            if _state.check_int(self, key, self.__dict__[key], 1) != size:
                raise _state.invalid(self, f"{key}={self.__dict__[key]} but the "
                                           f"network has {size}")


def _generator_from_state(owner, state):
    """The random stream of ``partial_fit`` from its saved bit-generator state."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise _state.invalid(owner, "_rng_state must be the state of a PCG64 bit "
                                    "generator")
    bit_generator = np.random.PCG64()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise _state.invalid(owner, f"_rng_state: {exc}") from exc
    return np.random.Generator(bit_generator)


def _suffixes(seqs, idx, limit):
    """The last ``limit`` steps of the sequences ``idx`` (curriculum), and the
    rows of ``seqs.data`` they come from."""
    starts = seqs.starts[idx]
    lengths = seqs.lengths[idx]
    keep = np.minimum(lengths, limit)
    rows = np.concatenate([np.arange(s + n - k, s + n) for s, n, k in
                           zip(starts, lengths, keep)])
    return Sequences(np.ascontiguousarray(seqs.data[rows]), keep, seqs.n_tokens), rows
