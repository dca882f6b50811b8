"""Checks of saved states, shared by the estimators and the text transformers.

Loading a model (pickle, ``skops.io`` or ``sklearn_rnn.persistence``) goes
through the ``__setstate__`` of each of our classes, which checks the state
with these helpers: a damaged or edited file then fails with a ValueError
naming the attribute, instead of giving a model that predicts garbage.
"""

import numbers
import warnings

import numpy as np

from pyx_rnn import __version__


def version_message(saved):
    """The warning given when a model saved with another version is loaded."""
    return (f"This model was saved with sklearn-rnn {saved} and is loaded with "
            f"{__version__}; results may differ.")


def warn_if_other_version(saved):
    """Warn (UserWarning) if ``saved`` is a version other than this one."""
    if saved is not None and saved != __version__:
        warnings.warn(version_message(saved), UserWarning, stacklevel=3)


def invalid(owner, message):
    """The ValueError of an invalid saved state of ``owner``."""
    return ValueError(f"invalid saved {type(owner).__name__}: {message}")


def check_int(owner, name, value, low=0):
    """``value`` must be an integer (not a bool) of at least ``low``."""
    if (not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_))
            or value < low):
        raise invalid(owner, f"{name}={value!r} must be an integer >= {low}")
    return int(value)


def check_bool(owner, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(owner, f"{name}={value!r} must be True or False")
    return bool(value)


def check_array(owner, name, value, *, shape=None, dtype=None, finite=True):
    """``value`` must be an ndarray of this shape and dtype (None: any)."""
    if not isinstance(value, np.ndarray):
        raise invalid(owner, f"{name} must be an array, got {type(value).__name__}")
    if shape is not None and value.shape != tuple(shape):
        raise invalid(owner, f"{name} has shape {value.shape}, expected {tuple(shape)}")
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise invalid(owner, f"{name} has dtype {value.dtype}, expected "
                             f"{np.dtype(dtype)}")
    if finite and value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        raise invalid(owner, f"{name} contains NaN or infinity")
    return value


def check_number(owner, name, value, *, finite=False):
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise invalid(owner, f"{name}={value!r} must be a number")
    if finite and not np.isfinite(value):
        raise invalid(owner, f"{name}={value!r} must be finite")
    return value
