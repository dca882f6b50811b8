"""Recurrent neural networks with a scikit-learn API.

Compiled Cython/OpenMP kernels (``pyx_rnn``) behind estimators that behave
like any other scikit-learn model.
"""

from pyx_rnn import __version__

from ._classifier import RNNClassifier
from ._regressor import RNNRegressor

__all__ = ["RNNClassifier", "RNNRegressor", "__version__"]
