"""Input formats: sequences in, packed batches out.

Users give sequences as

* a 3-D array ``(n_sequences, n_steps, n_features)``;
* a list of 2-D arrays ``(n_steps_i, n_features)`` of different lengths (1-D
  arrays are univariate sequences);
* a 2-D array ``(n_sequences, n_steps)``: fixed-length univariate sequences.

``check_sequences`` validates any of them into a ``Sequences`` object: all
steps of all sequences concatenated in one C-contiguous array plus their
lengths. ``Sequences.batch`` packs any subset into the layout the engine
takes (``pyx_rnn.packing``), so variable lengths never need padding.
"""

import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.utils import assert_all_finite
from sklearn.utils.validation import check_array

from pyx_rnn.packing import Packing, SequenceInput, rows_from
from pyx_rnn.tokens import TokenInput

from .text import TokenSequences

# Longest sequence accepted: the kernels index steps with C ints.
MAX_STEPS = 2**31 - 1


class Sequences:
    """Validated sequences: ``data`` holds all steps, sequence after sequence.

    Parameters
    ----------
    data : ndarray of shape (total_steps, n_features)
        For token sequences (``n_tokens`` given), two columns: token id and
        weight of every step.
    lengths : ndarray of shape (n_sequences,)
    n_tokens : int, optional
        Vocabulary size of token sequences (the size of their one-hot steps).
    """

    def __init__(self, data, lengths, n_tokens=None):
        self.data = data
        self.lengths = np.asarray(lengths, dtype=np.intp)
        self.starts = np.zeros(len(self.lengths), dtype=np.intp)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        self.fixed_length = bool(np.all(self.lengths == self.lengths[0]))
        self.n_tokens = n_tokens
        # fixed length: the packing of a batch depends on its size only
        self._packings = {}

    def __len__(self):
        return len(self.lengths)

    @property
    def tokens(self):
        return self.n_tokens is not None

    @property
    def n_features(self):
        return self.n_tokens if self.tokens else self.data.shape[1]

    def rows(self, idx):
        """Rows of ``data`` of the sequences ``idx``, in that order."""
        return np.concatenate([np.arange(self.starts[i],
                                         self.starts[i] + self.lengths[i])
                               for i in idx])

    def subset(self, idx):
        """The sequences ``idx`` as a new ``Sequences``."""
        return Sequences(self.data[self.rows(idx)], self.lengths[idx], self.n_tokens)

    def batch(self, idx, dtype=None):
        """Packed rows and packing of the sequences ``idx`` (in that order).

        Token sequences give a ``TokenInput`` (ids and weights of ``dtype``).
        """
        idx = np.asarray(idx, dtype=np.intp)
        packing = self._packing(idx)
        if self.fixed_length:
            T = int(self.lengths[0])
            chosen = idx[packing.order]
            rows = (self.starts[chosen][None, :] + np.arange(T)[:, None]).ravel()
        else:
            rows = self.step_rows(idx, packing)
        data = self.data[rows]
        if self.tokens:
            return TokenInput(data[:, 0].astype(np.intp),
                              data[:, 1].astype(dtype or np.float64)), packing
        return np.ascontiguousarray(data), packing

    def in_place(self, idx):
        """The sequences ``idx`` as a ``SequenceInput`` of ``data`` (read
        where they lie, with no packed copy), and their packing."""
        idx = np.asarray(idx, dtype=np.intp)
        packing = self._packing(idx)
        return SequenceInput(self.data, self.starts[idx[packing.order]]), packing

    def network_input(self, idx, dtype):
        """The sequences ``idx`` as the network reads them, and their packing:
        dense steps as a ``SequenceInput`` (``in_place``: the network
        packs or reads them itself), token sequences as a ``TokenInput``
        of their packed ids and weights of ``dtype`` (``batch``)."""
        return self.batch(idx, dtype) if self.tokens else self.in_place(idx)

    def _packing(self, idx):
        packing = self._packings.get(len(idx)) if self.fixed_length else None
        if packing is None:
            packing = Packing.from_lengths(self.lengths[idx])
            if self.fixed_length:
                # shared by every batch of this size: read-only
                for a in (packing.lengths, packing.order, packing.batch_sizes,
                          packing.offsets):
                    a.flags.writeable = False
                self._packings[len(idx)] = packing
        return packing

    def step_rows(self, idx, packing):
        """For every packed row of ``batch(idx)``, the row in ``data`` (used
        to gather per-step targets)."""
        chosen = np.asarray(idx, dtype=np.intp)[packing.order]
        return rows_from(self.starts[chosen], packing.batch_sizes, packing.offsets)


def _check_step_array(a, dtype, what):
    return check_array(a, dtype=dtype, ensure_2d=True, ensure_all_finite=True,
                       input_name=what)


def check_sequences(X, *, dtype=np.float64, n_features=None, max_steps=MAX_STEPS):
    """Validate sequences in any accepted format into a ``Sequences``.

    Raises ValueError or TypeError naming the problem and the fix.
    """
    if X is None:
        raise ValueError("X is None; pass sequences as a 3-D array "
                         "(n_sequences, n_steps, n_features) or a list of 2-D arrays")
    if sp.issparse(X):
        raise TypeError("Sparse data was passed for X, but dense data is required; "
                        "use X.toarray() to convert it to a dense array")
    if isinstance(X, TokenSequences):
        return _check_tokens(X, n_features)
    if hasattr(X, "__array__") and not isinstance(X, (list, tuple)):
        arr = np.asarray(X)
        if arr.dtype == object:
            seqs = list(arr)
        elif arr.ndim == 3:
            _check_numeric(arr)
            if arr.shape[0] == 0:
                raise ValueError("X has no sequences (0 samples); at least one is "
                                 "required")
            if arr.shape[1] == 0:
                raise ValueError("X's sequences have length 0; every sequence needs "
                                 "at least one step")
            if arr.shape[2] == 0:
                raise ValueError("X has 0 features per step; at least one is required")
            data = np.ascontiguousarray(arr, dtype=dtype).reshape(-1, arr.shape[2])
            assert_all_finite(data, input_name="X")
            seqs = Sequences(data, np.full(arr.shape[0], arr.shape[1]))
            return _finish(seqs, n_features, max_steps)
        elif arr.ndim == 2:
            arr = check_array(arr, dtype=dtype, ensure_all_finite=True, input_name="X",
                              ensure_min_samples=1, ensure_min_features=1)
            data = np.ascontiguousarray(arr).reshape(-1, 1)
            seqs = Sequences(data, np.full(arr.shape[0], arr.shape[1]))
            return _finish(seqs, n_features, max_steps)
        else:
            raise ValueError(
                f"X has {arr.ndim} dimension(s); expected a 3-D array (n_sequences, "
                "n_steps, n_features), a 2-D array (n_sequences, n_steps) of "
                "univariate sequences, or a list of 2-D arrays (n_steps_i, "
                "n_features). Reshape your data, e.g. X.reshape(-1, n_steps, 1).")
    elif isinstance(X, (list, tuple)):
        seqs = list(X)
    else:
        raise TypeError(
            f"X of type {type(X).__name__} is not a sequence container; pass a 3-D "
            "array or a list of 2-D arrays")
    if len(seqs) == 0:
        raise ValueError("X has no sequences (0 samples); at least one is required")
    if all(isinstance(s, numbers.Number) for s in seqs):
        raise ValueError(
            "X is a flat list of numbers; a single univariate sequence should be "
            "passed as [np.array(values)] or np.array(values).reshape(1, -1)")
    arrays = []
    for i, s in enumerate(seqs):
        a = np.asarray(s) if not hasattr(s, "toarray") else None
        if a is None:
            raise TypeError("sparse sequences are not supported; pass dense arrays")
        _check_numeric(a, f"X[{i}]")
        if a.ndim == 1:
            a = a.reshape(-1, 1)
        if a.ndim != 2:
            raise ValueError(
                f"X[{i}] has {a.ndim} dimensions; each sequence must be a 2-D array "
                "(n_steps, n_features) or a 1-D array of univariate steps")
        if a.shape[0] == 0:
            raise ValueError(f"X[{i}] is a sequence of length 0; every sequence "
                             "needs at least one step (drop empty sequences)")
        arrays.append(_check_step_array(a, dtype, f"X[{i}]"))
    widths = {a.shape[1] for a in arrays}
    if len(widths) > 1:
        raise ValueError(
            f"the sequences of X have different numbers of features {sorted(widths)}; "
            "every step of every sequence must have the same features")
    data = np.ascontiguousarray(np.concatenate(arrays, axis=0), dtype=dtype)
    return _finish(Sequences(data, [len(a) for a in arrays]), n_features, max_steps)


def _check_tokens(X, n_features):
    """Token sequences from OneHot / TfidfSequence."""
    if len(X) == 0:
        raise ValueError("X has no sequences (0 samples); at least one is required")
    if np.any(X.lengths < 1):
        raise ValueError("X has a sequence of length 0; every sequence needs at "
                         "least one step")
    if X.ids.size and (X.ids.min() < 0 or X.ids.max() >= X.n_features):
        raise ValueError(f"X has token ids outside [0, {X.n_features}); they must "
                         "index the vocabulary")
    if not np.all(np.isfinite(X.weights)):
        raise ValueError("X has NaN or infinite token weights")
    if n_features is not None and X.n_features != n_features:
        raise ValueError(
            f"X has a vocabulary of {X.n_features} tokens, but this estimator was "
            f"fitted with {n_features}; transform with the same fitted transformer")
    data = np.column_stack([X.ids.astype(np.float64), X.weights])
    return Sequences(data, X.lengths, n_tokens=X.n_features)


def _check_numeric(a, what="X"):
    if a.dtype.kind not in "biuf":
        if a.dtype.kind == "c":
            raise ValueError(f"{what} is complex; pass real numbers")
        try:
            a.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{what} has non-numeric data (dtype {a.dtype}): {exc}. Convert it "
                "to numbers first (e.g. one-hot encode text)") from None


def _finish(seqs, n_features, max_steps):
    if n_features is not None and seqs.n_features != n_features:
        raise ValueError(
            f"X has {seqs.n_features} features per step, but this estimator was "
            f"fitted with {n_features} features per step")
    if seqs.lengths.max() > max_steps:
        raise ValueError(
            f"X has a sequence of {seqs.lengths.max()} steps, more than the "
            f"{max_steps} supported; cut it into shorter windows")
    return seqs


def check_step_targets(y, seqs, *, dtype=None):
    """Per-step targets for ``return_sequences=True``, aligned with
    ``seqs.data``: an array (n_sequences, n_steps[, n_targets]) or a list of
    per-sequence arrays (n_steps_i[, n_targets]). Returns a 2-D array
    (total_steps, n_targets) and whether y was 1-D per step."""
    if isinstance(y, (list, tuple)) or (hasattr(y, "dtype")
                                        and np.asarray(y).dtype == object):
        parts = [np.asarray(p) for p in y]
    else:
        arr = np.asarray(y)
        if arr.ndim < 2:
            raise ValueError(
                "with return_sequences=True, y needs one target per step: an array "
                "(n_sequences, n_steps[, n_targets]) or a list of per-sequence arrays")
        parts = list(arr)
    if len(parts) != len(seqs):
        raise ValueError(f"y has {len(parts)} sequences but X has {len(seqs)}")
    ndims = {p.ndim for p in parts}
    if len(ndims) != 1 or ndims.pop() not in (1, 2):
        raise ValueError("each sequence of y must be 1-D (n_steps,) or 2-D "
                         "(n_steps, n_targets), all alike")
    one_d = parts[0].ndim == 1
    for i, (p, n) in enumerate(zip(parts, seqs.lengths)):
        if len(p) != n:
            raise ValueError(
                f"y[{i}] has {len(p)} steps but X[{i}] has {n}; with "
                "return_sequences=True every step needs a target")
    flat = np.concatenate([p.reshape(len(p), -1) for p in parts], axis=0)
    if dtype is not None:
        flat = check_array(flat, dtype=dtype, ensure_all_finite=True, input_name="y")
    return flat, one_d
