"""Optimisers over a flat parameter vector, updated in place.

Each works on the whole parameter vector of a ``Network`` at once, so a step
is a handful of vectorised operations whatever the number of layers.
"""

import numpy as np


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
        self._buf = np.empty_like(params)

    def step(self, grads):
        self.t += 1
        b1, b2 = self.beta_1, self.beta_2
        self.m *= b1
        self.m += (1 - b1) * grads
        self.v *= b2
        np.multiply(grads, grads, out=self._buf)
        self._buf *= 1 - b2
        self.v += self._buf
        step_size = self.learning_rate / (1 - b1 ** self.t)
        denom = np.sqrt(self.v, out=self._buf)
        denom /= np.sqrt(1 - b2 ** self.t)
        denom += self.epsilon
        self.params -= step_size * (self.m / denom)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
