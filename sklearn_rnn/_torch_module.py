"""The PyTorch module that ``sklearn_rnn.torch_interop.to_torch`` returns.

Imported only by ``torch_interop``, after torch has been found.
"""

import torch

__all__ = ["SequenceModel"]


class SequenceModel(torch.nn.Module):
    """A torch.nn.RNN, LSTM or GRU with a Linear head: the estimators' network.

    Parameters
    ----------
    rnn : torch.nn.RNN, torch.nn.LSTM or torch.nn.GRU
        With ``batch_first=True``.
    output : torch.nn.Linear
    output_activation : {'identity', 'tanh', 'sigmoid', 'softmax'}
    return_sequences : bool
        Apply the head at every step, or to the features after the last step
        (forward direction) and after step 0 (backward direction).

    ``forward(x, lengths=None)`` takes a padded batch ``x`` of shape
    ``(n_sequences, n_steps, n_features)`` and optionally the length of each
    sequence, and returns what the estimator's ``predict`` (regressors) or
    ``predict_proba`` (multiclass and multilabel classifiers; binary ones
    give P(classes_[1]) only) return. ``logits(x, lengths)`` returns the
    head's output before the activation, for training with PyTorch's losses.
    """

    def __init__(self, rnn, output, output_activation="identity",
                 return_sequences=False):
        super().__init__()
        if not getattr(rnn, "batch_first", False):
            raise ValueError("rnn must be built with batch_first=True")
        if output_activation not in ("identity", "tanh", "sigmoid", "softmax"):
            raise ValueError(f"unknown output_activation {output_activation!r}")
        self.rnn = rnn
        self.output = output
        self.output_activation = output_activation
        self.return_sequences = bool(return_sequences)

    def features(self, x, lengths=None):
        """What the head reads: per step (N, T, D) or per sequence (N, D)."""
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.int64).cpu()
            x = torch.nn.utils.rnn.pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(x)
        if self.return_sequences:
            if lengths is not None:
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(
                    out, batch_first=True, total_length=int(lengths.max()))
            return out
        h_n = state[0] if isinstance(state, tuple) else state
        # the top layer's final states: forward after the last real step,
        # backward after step 0
        if self.rnn.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=1)
        return h_n[-1]

    def logits(self, x, lengths=None):
        return self.output(self.features(x, lengths))

    def forward(self, x, lengths=None):
        z = self.logits(x, lengths)
        if self.output_activation == "tanh":
            return torch.tanh(z)
        if self.output_activation == "sigmoid":
            return torch.sigmoid(z)
        if self.output_activation == "softmax":
            return torch.softmax(z, dim=-1)
        return z
