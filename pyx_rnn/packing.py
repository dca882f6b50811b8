"""Packed, time-major batches of variable-length sequences.

The layout is PyTorch's ``PackedSequence`` (see ``docs/engine.md``): sequences
sorted longest first, step ``t`` of sequence ``b`` at row ``offsets[t] + b``.
Steps past a sequence's end do not exist, so the kernels never compute them.
"""

from dataclasses import dataclass

import numpy as np


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
        lengths = np.asarray(lengths, dtype=np.intp)
        if lengths.ndim != 1 or lengths.size == 0:
            raise ValueError("lengths must be a non-empty 1-D array")
        if lengths.min() < 1:
            raise ValueError("every sequence needs at least one step")
        order = np.argsort(-lengths, kind="stable").astype(np.intp)
        sorted_lengths = lengths[order]
        n_steps = int(sorted_lengths[0])
        # batch_sizes[t] = number of sequences longer than t
        counts = np.bincount(sorted_lengths, minlength=n_steps + 1)
        batch_sizes = (len(lengths) - np.cumsum(counts)[:n_steps]).astype(np.intp)
        offsets = np.zeros(n_steps + 1, dtype=np.intp)
        np.cumsum(batch_sizes, out=offsets[1:])
        return cls(sorted_lengths, order, batch_sizes, offsets)

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
        """Packed row of the last step of each sequence, in packed order."""
        return self.offsets[self.lengths - 1] + np.arange(self.n_sequences)

    def flat_index(self):
        """For every packed row, its row in the caller's sequences concatenated
        in the caller's order (``np.concatenate(sequences)``)."""
        caller_lengths = np.empty_like(self.lengths)
        caller_lengths[self.order] = self.lengths
        starts = np.zeros(self.n_sequences, dtype=np.intp)
        np.cumsum(caller_lengths[:-1], out=starts[1:])
        # packed row offsets[t] + b holds step t of caller sequence order[b]
        b = np.concatenate([np.arange(n, dtype=np.intp) for n in self.batch_sizes])
        t = np.repeat(np.arange(self.n_steps, dtype=np.intp), self.batch_sizes)
        return starts[self.order[b]] + t

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
    lengths = [len(s) for s in sequences]
    packing = Packing.from_lengths(lengths)
    flat = np.concatenate([np.asarray(s) for s in sequences], axis=0)
    data = np.ascontiguousarray(flat[packing.flat_index()], dtype=dtype)
    return data, packing


def unpack(rows, packing):
    """Split packed ``rows`` back into per-sequence arrays, in caller order."""
    out = [None] * packing.n_sequences
    for b in range(packing.n_sequences):
        out[packing.order[b]] = rows[packing.rows_of(b)]
    return out
