"""Recurrent neural networks with a scikit-learn API.

Compiled Cython/OpenMP kernels (``pyx_rnn``) behind estimators that behave
like any other scikit-learn model.
"""

from pyx_rnn import __version__

from ._classifier import RNNClassifier
from ._regressor import RNNRegressor
from .forecast import SequenceForecaster
from .text import OneHot, TfidfSequence, TokenSequences

__all__ = ["OneHot", "RNNClassifier", "RNNRegressor", "SequenceForecaster",
           "TfidfSequence", "TokenSequences", "__version__"]


def __getattr__(name):
    # optional interop, imported on first use: importing sklearn_rnn never
    # imports onnx or torch
    if name == "to_onnx":
        from .onnx import to_onnx
        return to_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
