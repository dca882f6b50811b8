"""Packed, time-major batches of variable-length sequences.

The layout is PyTorch's ``PackedSequence`` (see ``docs/engine.md``): sequences
sorted longest first, step ``t`` of sequence ``b`` at row ``offsets[t] + b``.
Steps past a sequence's end do not exist, so the kernels never compute them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _bookkeeping

# The kernels count steps with 32-bit ints.
_MAX_STEPS = 2**31 - 1


def _check_lengths(lengths):
    """``lengths`` as a 1-D intp array of positive whole numbers."""
    if isinstance(lengths, (str, bytes)):
        raise TypeError(f"lengths must be integers, got {type(lengths).__name__}")
    try:
        raw = np.asarray(lengths)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"lengths must be a 1-D array of integers: {exc}") from None
    if raw.ndim != 1 or raw.size == 0:
        raise ValueError("lengths must be a non-empty 1-D array, got shape "
                         f"{raw.shape}")
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"lengths must be integers, got dtype {raw.dtype}")
    if raw.dtype.kind == "f":
        if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
            raise ValueError("lengths must be whole numbers of steps, got "
                             f"{raw[(raw != np.round(raw)) | ~np.isfinite(raw)][0]}")
    if raw.min() < 1:
        raise ValueError("every sequence needs at least one step, got length "
                         f"{raw.min()}")
    if raw.max() > _MAX_STEPS:
        raise ValueError(f"a sequence of {raw.max()} steps is longer than the "
                         f"kernels can handle ({_MAX_STEPS}); split it")
    return raw.astype(np.intp)


@dataclass(frozen=True)
class Packing:
    """Where every step of every sequence of a batch lives in packed arrays.

    Attributes
    ----------
    lengths : ndarray of shape (n_sequences,)
        Lengths in packed (sorted, longest first) order.
    order : ndarray of shape (n_sequences,)
        ``order[b]`` is the caller's index of the sequence packed at ``b``.
    batch_sizes : ndarray of shape (n_steps,)
        Number of sequences still running at each step (non-increasing).
    offsets : ndarray of shape (n_steps + 1,)
        First packed row of each step; ``offsets[-1]`` is the number of rows.
    """

    lengths: np.ndarray
    order: np.ndarray
    batch_sizes: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lengths(cls, lengths):
        """Sort sequences of the given lengths longest first (stable)."""
        if not (type(lengths) is np.ndarray and lengths.dtype == np.intp
                and lengths.ndim == 1 and lengths.flags.c_contiguous):
            lengths = _check_lengths(lengths)
        # one compiled pass; None for lengths _check_lengths refuses
        arrays = _bookkeeping.sort_lengths(lengths, _MAX_STEPS)
        if arrays is None:
            _check_lengths(lengths)   # raises, naming the bad length
        return cls(*arrays)

    @property
    def n_sequences(self):
        return len(self.lengths)

    @property
    def n_steps(self):
        return len(self.batch_sizes)

    @property
    def n_rows(self):
        return int(self.offsets[-1])

    def rows_of(self, b):
        """Packed rows of the sequence at packed position ``b``, in time order."""
        return self.offsets[: self.lengths[b]] + b

    def last_rows(self):
        """Packed row of the last step of each sequence, in packed order.
        Made at the first call and kept (read-only): a packing, like its
        arrays, is not to be changed once made."""
        rows = self.__dict__.get("_last_rows")
        if rows is None:
            rows = self.offsets[self.lengths - 1] + np.arange(self.n_sequences)
            rows.flags.writeable = False
            object.__setattr__(self, "_last_rows", rows)
        return rows

    def flat_index(self):
        """For every packed row, its row in the caller's sequences concatenated
        in the caller's order (``np.concatenate(sequences)``)."""
        caller_lengths = np.empty_like(self.lengths)
        caller_lengths[self.order] = self.lengths
        starts = np.zeros(self.n_sequences, dtype=np.intp)
        np.cumsum(caller_lengths[:-1], out=starts[1:])
        # packed position b holds caller sequence order[b]
        return rows_from(starts[self.order], self.batch_sizes, self.offsets)

    def window(self, start, stop):
        """The packing of steps ``start:stop`` and its first packed row."""
        bs = self.batch_sizes[start:stop]
        offsets = np.zeros(len(bs) + 1, dtype=np.intp)
        np.cumsum(bs, out=offsets[1:])
        lengths = np.minimum(self.lengths, stop)[: bs[0]] - start
        return Packing(lengths, self.order[: bs[0]], bs, offsets), int(
            self.offsets[start]
        )


def pack(sequences, dtype=None):
    """Pack a list of ``(n_steps_i, n_features)`` arrays.

    Returns
    -------
    data : ndarray of shape (sum of n_steps_i, n_features)
    packing : Packing
    """
    if isinstance(sequences, np.ndarray) and sequences.ndim == 3:
        sequences = list(sequences)   # equal-length sequences, stacked
    if isinstance(sequences, (str, bytes, np.ndarray)) or not isinstance(
            sequences, Sequence):
        raise TypeError("sequences must be a list of (n_steps, n_features) "
                        f"arrays (or one 3-D array), got {type(sequences).__name__}")
    if len(sequences) == 0:
        raise ValueError("sequences is empty: pack needs at least one sequence")
    arrays = [np.asarray(s) for s in sequences]
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(
                f"sequences[{i}] must be 2-D (n_steps, n_features), got shape "
                f"{a.shape}; reshape univariate sequences with s.reshape(-1, 1)")
        if a.shape[1] != arrays[0].shape[1]:
            raise ValueError(
                f"sequences[{i}] has {a.shape[1]} features per step but "
                f"sequences[0] has {arrays[0].shape[1]}; every sequence needs "
                f"the same number of features")
    lengths = [a.shape[0] for a in arrays]
    packing = Packing.from_lengths(lengths)
    flat = np.concatenate(arrays, axis=0)
    data = np.ascontiguousarray(flat[packing.flat_index()], dtype=dtype)
    return data, packing


def unpack(rows, packing):
    """Split packed ``rows`` back into per-sequence arrays, in caller order."""
    out = [None] * packing.n_sequences
    for b in range(packing.n_sequences):
        out[packing.order[b]] = rows[packing.rows_of(b)]
    return out


def rows_from(starts, batch_sizes, offsets):
    """For every packed row of the packing ``batch_sizes``, ``offsets``, its
    row in an array that holds the steps of the sequence at packed position
    ``b`` in consecutive rows from row ``starts[b]`` (see ``SequenceInput``)."""
    t = np.repeat(np.arange(len(batch_sizes), dtype=np.intp), batch_sizes)
    b = np.arange(len(t), dtype=np.intp) - offsets[t]
    return np.asarray(starts, dtype=np.intp)[b] + t


class SequenceInput:
    """A batch's input read where it lies, rather than copied into packed rows.

    The steps of the sequence at packed position ``b`` of the batch's
    ``Packing`` are the consecutive rows ``starts[b]``, ``starts[b] + 1``, ...
    of ``data``: the layout of sequences stored one after the other, or of a
    ``(n_sequences, n_steps, n_features)`` array of equal-length sequences
    reshaped to 2-D. ``Network.forward`` reads it in place: the first layer
    gathers the rows of each step itself (``_cells.recurrent_forward``),
    which saves writing and reading again a packed copy of the batch.
    Where the first layer cannot (training, a Jordan network), the packed
    rows are made first (``packed``), with the same results.

    Parameters
    ----------
    data : ndarray of shape (n_data_rows, n_features)
    starts : array of int, shape (n_sequences,)
        In packed order, as the packing's ``order``.

    Examples
    --------
    >>> import numpy as np
    >>> from pyx_rnn.packing import Packing, SequenceInput
    >>> X = np.arange(12.0).reshape(3, 2, 2)       # 3 sequences of 2 steps
    >>> packing = Packing.from_lengths([2, 2, 2])
    >>> inp = SequenceInput(X.reshape(-1, 2), 2 * packing.order)
    >>> inp.packed(packing)[:3]                    # step 0 of each sequence
    array([[0., 1.],
           [4., 5.],
           [8., 9.]])
    """

    __slots__ = ("data", "starts")

    def __init__(self, data, starts):
        self.data = data
        self.starts = starts

    def packed(self, packing):
        """The packed rows (``n_rows x n_features``) of the batch."""
        rows = rows_from(self.starts, packing.batch_sizes, packing.offsets)
        return np.ascontiguousarray(np.asarray(self.data)[rows])
