"""Helpers shared by several test modules (imported as ``_shared``: pytest
puts this folder on the path)."""

import numpy as np

# (cell, activation, reset_after, peephole): every kind of layer the kernels
# run
CELL_KINDS = [
    ("rnn", "tanh", True, False),
    ("rnn", "relu", True, False),
    ("lstm", "tanh", True, False),
    ("lstm", "tanh", True, True),
    ("gru", "tanh", True, False),
    ("gru", "tanh", False, False),
]


def numerical_gradient(loss, array, eps=1e-6):
    """Central finite differences of ``loss()`` with respect to every entry
    of ``array`` (perturbed in place, then restored)."""
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        plus = loss()
        array[idx] = old - eps
        minus = loss()
        array[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad
