"""Packed token input: one (token id, weight) pair per packed row.

Row ``r`` stands for the one-hot vector of ``ids[r]`` scaled by
``weights[r]``. The engine never builds those vectors: it reads the row of an
embedding table, or the column of the first layer's input weights, scaled by
the weight (``pyx_rnn._dense.gather_rows``), which is the same product.
"""

import numpy as np


class TokenInput:
    """Packed token steps (see the module docstring).

    Parameters
    ----------
    ids : ndarray of intp, shape (n_rows,)
    weights : ndarray of float, shape (n_rows,)
    """

    __slots__ = ("ids", "weights")

    def __init__(self, ids, weights):
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"TokenInput ids must be integers, got dtype {ids.dtype}")
        self.ids = np.ascontiguousarray(ids, dtype=np.intp)
        self.weights = np.ascontiguousarray(weights)
        if self.ids.ndim != 1 or self.ids.shape != self.weights.shape:
            raise ValueError("TokenInput needs 1-D ids and weights of the same length")

    @property
    def shape(self):
        return (len(self.ids),)

    @property
    def dtype(self):
        return self.weights.dtype

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, rows):
        """The packed rows ``rows`` (a slice or an index array)."""
        return TokenInput(self.ids[rows], self.weights[rows])
