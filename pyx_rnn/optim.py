"""Optimisers over a flat parameter vector, updated in place.

Each works on the whole parameter vector of a ``Network`` at once, so a step
is a handful of vectorised operations whatever the number of layers.
"""

import math
import numbers

import numpy as np

from . import _dense


class SGD:
    """Stochastic gradient descent with (Nesterov) momentum, as sklearn's MLP.

    ``v = momentum * v - lr * g``; ``p += v`` (or, with Nesterov,
    ``p += momentum * v - lr * g``).
    """

    def __init__(self, params, learning_rate=0.01, momentum=0.9, nesterov=True):
        self.params = params
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.velocity = np.zeros_like(params)

    def step(self, grads):
        v = self.velocity
        v *= self.momentum
        v -= self.learning_rate * grads
        if self.nesterov:
            self.params += self.momentum * v - self.learning_rate * grads
        else:
            self.params += v

    def __getstate__(self):
        return dict(vars(self))

    def __setstate__(self, state):
        """Restore a saved state, checking its entries (see ``_check_state``)."""
        _check_state(self, state, floats=("learning_rate", "momentum"),
                     bools=("nesterov",), ints=(), moments=("velocity",))


class Adam:
    """Adam (Kingma & Ba, 2015), with PyTorch's and sklearn's defaults.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with bias-corrected moments.
    """

    def __init__(self, params, learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8):
        self.params = params
        self.learning_rate = float(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.t = 0
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)

    def step(self, grads):
        """Update the parameters in place from their gradient ``grads`` (a
        C-contiguous array of their shape and dtype), in one compiled pass
        (``pyx_rnn._dense.adam_update``)."""
        t = self.t + 1
        b1, b2 = self.beta_1, self.beta_2
        try:
            # the compiled call checks the arrays' types and lengths before
            # it updates anything
            _dense.adam_update(self.params, grads, self.m, self.v, b1, b2,
                               self.learning_rate / (1 - b1 ** t),
                               math.sqrt(1 - b2 ** t), self.epsilon)
        except (TypeError, ValueError):
            self._check_arrays(grads)   # raises, naming the problem
            raise
        self.t = t

    def _check_arrays(self, grads):
        if self.params.dtype not in (np.float32, np.float64):
            raise TypeError(f"Adam updates float32 or float64 parameters, got "
                            f"{self.params.dtype}")
        for name, a in (("grads", grads), ("m", self.m), ("v", self.v)):
            if (not isinstance(a, np.ndarray) or a.dtype != self.params.dtype
                    or a.shape != self.params.shape or not a.flags.c_contiguous):
                raise ValueError(
                    f"Adam: {name} must be a C-contiguous {self.params.dtype} "
                    f"array of shape {self.params.shape}")

    def __getstate__(self):
        return dict(vars(self))

    def __setstate__(self, state):
        """Restore a saved state, checking its entries (see ``_check_state``)."""
        _check_state(self, state, floats=("learning_rate", "beta_1", "beta_2",
                                          "epsilon"),
                     bools=(), ints=("t",), moments=("m", "v"), nonnegative=("v",))


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def _check_state(opt, state, *, floats, bools, ints, moments, nonnegative=()):
    """Set an optimiser's saved state after checking it.

    The state holds the parameter vector the optimiser updates (an owner such
    as an estimator points it back at its network's parameters after
    loading), numbers of the right types, and moment arrays of the
    parameters' shape and dtype, all finite (and those in ``nonnegative``
    at least 0).

    Raises
    ------
    ValueError
        Naming the first missing or invalid entry.
    """
    name = type(opt).__name__
    if not isinstance(state, dict):
        raise ValueError(f"invalid saved {name}: the state must be a dict")
    expected = ("params", *floats, *bools, *ints, *moments)
    missing = [key for key in expected if key not in state]
    if missing:
        raise ValueError(f"invalid saved {name}: missing {missing}")
    params = state["params"]
    if not isinstance(params, np.ndarray) or params.ndim != 1 or params.dtype not in (
            np.float32, np.float64):
        raise ValueError(f"invalid saved {name}: params must be a 1-D float array")
    values = {"params": params}
    for key in floats:
        value = state[key]
        if (not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_))
                or not np.isfinite(value)):
            raise ValueError(f"invalid saved {name}: {key}={value!r} must be a "
                             "finite number")
        values[key] = float(value)
    for key in bools:
        if not isinstance(state[key], (bool, np.bool_)):
            raise ValueError(f"invalid saved {name}: {key}={state[key]!r} must be "
                             "a bool")
        values[key] = bool(state[key])
    for key in ints:
        value = state[key]
        if (not isinstance(value, numbers.Integral)
                or isinstance(value, (bool, np.bool_)) or value < 0):
            raise ValueError(f"invalid saved {name}: {key}={value!r} must be a "
                             "non-negative integer")
        values[key] = int(value)
    for key in moments:
        a = state[key]
        if (not isinstance(a, np.ndarray) or a.shape != params.shape
                or a.dtype != params.dtype):
            raise ValueError(
                f"invalid saved {name}: {key} must be an array of the parameters' "
                f"shape {params.shape} and dtype {params.dtype}, got "
                f"{getattr(a, 'shape', type(a).__name__)} "
                f"{getattr(a, 'dtype', '')}".rstrip())
        if not np.all(np.isfinite(a)):
            raise ValueError(f"invalid saved {name}: {key} contains NaN or infinity")
        if key in nonnegative and np.any(a < 0):
            raise ValueError(f"invalid saved {name}: {key} has negative entries")
        values[key] = a
    opt.__dict__.update(values)
