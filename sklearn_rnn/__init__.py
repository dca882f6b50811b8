"""Recurrent neural networks with a scikit-learn API.

Compiled Cython/OpenMP kernels (``pyx_rnn``) behind estimators that behave
like any other scikit-learn model.
"""

import os

try:
    from pyx_rnn import _openmp  # noqa: F401  (a compiled module)
except ImportError as exc:
    import pyx_rnn

    raise ImportError(
        f"sklearn_rnn cannot load its compiled kernels: {exc}. The package "
        f"pyx_rnn was imported from {os.path.dirname(pyx_rnn.__file__)}; if that "
        "is a source checkout (Python puts the current folder first on the path, "
        "e.g. for `python -m`), run from another folder or use the "
        "`sklearn-rnn-demo` command; otherwise install with `pip install .`"
    ) from exc

from pyx_rnn import __version__  # noqa: E402

from ._classifier import RNNClassifier  # noqa: E402
from ._regressor import RNNRegressor  # noqa: E402
from .forecast import SequenceForecaster  # noqa: E402
from .text import OneHot, TfidfSequence, TokenSequences  # noqa: E402

__all__ = ["OneHot", "RNNClassifier", "RNNRegressor", "SequenceForecaster",
           "TfidfSequence", "TokenSequences", "__version__"]


def __getattr__(name):
    # optional interop, imported on first use: importing sklearn_rnn never
    # imports onnx or torch
    if name == "to_onnx":
        from .onnx import to_onnx
        return to_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
