"""PyTorch (and ONNX Runtime) side of the engine benchmark.

This module has no dependency on sklearn-rnn: the benchmark driver calls the
functions below for the reference timings and times our engine on the same
data (see :func:`make_data` and :func:`make_lengths`).

Every workload trains ``torch.nn.{LSTM,GRU,RNN}(n_features, hidden,
batch_first=True)`` followed by ``Linear(hidden, 1)`` on the last time step,
with MSE loss, Adam(lr=1e-3), gradient-norm clipping at 1.0 and shuffled
mini-batches, all in float32.

torch, onnx and onnxruntime are imported lazily, so :data:`WORKLOADS`,
:func:`make_data` and :func:`sgemm_peak_gflops` work without them.

Note: the torch wheel ships its own OpenMP runtime.  To avoid two OpenMP
runtimes fighting over the cores, run this module in its own process, e.g.::

    python benchmarks/bench_torch.py --workload medium-lstm --threads 2 --json

Without arguments it times the torch side of "small-lstm" on 2 threads.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

WORKLOADS = [
    dict(name="small-lstm", cell="lstm", n_sequences=7000, n_steps=50,
         n_features=1, hidden=32, batch=32),
    dict(name="medium-lstm", cell="lstm", n_sequences=4096, n_steps=100,
         n_features=32, hidden=128, batch=64),
    dict(name="medium-gru", cell="gru", n_sequences=4096, n_steps=100,
         n_features=32, hidden=128, batch=64),
    dict(name="medium-rnn", cell="rnn", n_sequences=4096, n_steps=100,
         n_features=32, hidden=128, batch=64),
    dict(name="large-lstm", cell="lstm", n_sequences=2048, n_steps=100,
         n_features=128, hidden=512, batch=128),
]  # fmt: skip

CELLS = ("lstm", "gru", "rnn")

# Variable-length batches: lengths drawn uniformly from [LENGTH_MIN, LENGTH_MAX].
LENGTH_MIN = 10
LENGTH_MAX = 100


def get_workload(name):
    """Return the workload dict called ``name``."""
    for workload in WORKLOADS:
        if workload["name"] == name:
            return dict(workload)
    names = ", ".join(w["name"] for w in WORKLOADS)
    raise ValueError(f"Unknown workload {name!r}; choose one of: {names}.")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def make_lengths(n_sequences, low=LENGTH_MIN, high=LENGTH_MAX, seed=0):
    """Sequence lengths drawn uniformly from ``[low, high]`` (int64)."""
    rng = np.random.default_rng(seed)
    return rng.integers(low, high + 1, size=n_sequences, dtype=np.int64)


def make_data(n_sequences, n_steps, n_features, lengths=None, seed=0):
    """Deterministic regression data.

    Parameters
    ----------
    n_sequences, n_steps, n_features : int
        Shape of ``X``.
    lengths : ndarray of shape (n_sequences,), default=None
        If given, steps at and after ``lengths[i]`` are zero padding and the
        target only looks at the first ``lengths[i]`` steps.
    seed : int, default=0

    Returns
    -------
    X : ndarray of shape (n_sequences, n_steps, n_features), float32
        Standard normal, C-contiguous.
    y : ndarray of shape (n_sequences, 1), float32
        Mean of ``X`` over the (valid) steps and the features.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_sequences, n_steps, n_features), dtype=np.float32)
    if lengths is None:
        y = X.mean(axis=(1, 2), dtype=np.float64)
    else:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (n_sequences,) or lengths.min() < 1:
            raise ValueError("lengths must have shape (n_sequences,) and be >= 1.")
        if lengths.max() > n_steps:
            raise ValueError(f"lengths.max()={lengths.max()} > n_steps={n_steps}.")
        mask = np.arange(n_steps)[None, :] < lengths[:, None]
        X *= mask[:, :, None]
        y = X.sum(axis=(1, 2), dtype=np.float64) / (lengths * n_features)
    return X, y.astype(np.float32).reshape(-1, 1)


def workload_lengths(workload, seed=0):
    """The lengths of a workload's variable-length sequences (at most its
    ``n_steps``), as ``workload_data`` draws them."""
    return make_lengths(
        workload["n_sequences"],
        high=min(LENGTH_MAX, workload["n_steps"]),
        seed=seed,
    )


def workload_data(workload, variable_length=False, seed=0):
    """``(X, y, lengths)`` for a workload dict; ``lengths`` is None if fixed."""
    lengths = workload_lengths(workload, seed) if variable_length else None
    X, y = make_data(
        workload["n_sequences"],
        workload["n_steps"],
        workload["n_features"],
        lengths=lengths,
        seed=seed,
    )
    return X, y, lengths


# ---------------------------------------------------------------------------
# Torch models
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(n_threads):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _make_model(cell, n_features, hidden, seed=0):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}.")
    rnn_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # torch.nn.RNN defaults to nonlinearity="tanh".
            self.rnn = rnn_class[cell](n_features, hidden, batch_first=True)
            self.fc = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

        def forward_packed(self, x, lengths):
            packed = pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
            _, h_n = self.rnn(packed)
            if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
                h_n = h_n[0]
            # h_n is in the original batch order and holds each sequence's
            # state at its own last valid step.
            return self.fc(h_n[-1])

    return Net().float()


def _train_epochs(cell, X, y, lengths, hidden, batch, n_threads, repeats, seed):
    import torch

    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1, 1)
    n_sequences = X.shape[0]
    with _torch_threads(n_threads):
        model = _make_model(cell, X.shape[2], hidden, seed=seed)
        model.train()
        params = list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3)
        loss_fn = torch.nn.MSELoss()
        X_t = torch.from_numpy(X)
        y_t = torch.from_numpy(y)
        lengths_t = None
        if lengths is not None:
            lengths_t = torch.as_tensor(lengths, dtype=torch.int64)
        rng = np.random.default_rng(seed)

        times = []
        for epoch in range(1 + repeats):  # epoch 0 is the warm-up
            order = torch.from_numpy(rng.permutation(n_sequences))
            start_time = time.perf_counter()
            for start in range(0, n_sequences, batch):
                idx = order[start : start + batch]
                xb, yb = X_t[idx], y_t[idx]
                optimizer.zero_grad(set_to_none=True)
                if lengths_t is None:
                    pred = model(xb)
                else:
                    pred = model.forward_packed(xb, lengths_t[idx])
                loss = loss_fn(pred, yb)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            elapsed = time.perf_counter() - start_time
            if not np.isfinite(loss.item()):
                raise FloatingPointError(f"torch {cell} training diverged.")
            if epoch > 0:
                times.append(elapsed)
    return times


def torch_train_epoch_time(cell, X, y, hidden, batch, n_threads, repeats=3, seed=0):
    """Seconds per training epoch on fixed-length sequences.

    One warm-up epoch is run first and not counted.

    Returns
    -------
    times : list of float
        ``repeats`` epoch times in seconds.
    """
    return _train_epochs(cell, X, y, None, hidden, batch, n_threads, repeats, seed)


def torch_packed_train_epoch_time(
    cell, X, y, lengths, hidden, batch, n_threads, repeats=3, seed=0
):
    """Seconds per training epoch on variable-length sequences.

    Each mini-batch is packed with ``pack_padded_sequence(enforce_sorted=False)``
    (the packing is part of the timed loop); the head reads each sequence's
    state at its last valid step.  Use :func:`make_lengths` / ``make_data(...,
    lengths=...)`` for the data.

    Returns
    -------
    times : list of float
        ``repeats`` epoch times in seconds, after one warm-up epoch.
    """
    if lengths is None:
        raise ValueError("lengths is required; see make_lengths().")
    return _train_epochs(cell, X, y, lengths, hidden, batch, n_threads, repeats, seed)


def torch_predictor(cell, X, hidden, batch, n_threads, seed=0):
    """A function that predicts the whole of ``X`` in chunks of ``batch``
    with the torch model, under ``torch.inference_mode()``, after one
    warm-up pass. It sets torch's thread count to ``n_threads`` (for the
    process, and again at a call where something changed it), so that
    a call times the predictions only."""
    import torch

    X = np.ascontiguousarray(X, dtype=np.float32)
    torch.set_num_threads(int(n_threads))
    model = _make_model(cell, X.shape[2], hidden, seed=seed).eval()
    X_t = torch.from_numpy(X)

    def predict_all():
        if torch.get_num_threads() != n_threads:
            torch.set_num_threads(int(n_threads))
        with torch.inference_mode():
            for start in range(0, X_t.shape[0], batch):
                model(X_t[start : start + batch])

    predict_all()
    return predict_all


def _median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start_time = time.perf_counter()
        function()
        times.append(time.perf_counter() - start_time)
    return statistics.median(times)


def torch_inference_time(cell, X, hidden, batch, n_threads, repeats=5, seed=0):
    """Median seconds to predict the whole of ``X`` in chunks of ``batch``
    (``torch_predictor``)."""
    predict_all = torch_predictor(cell, X, hidden, batch, n_threads, seed=seed)
    return _median_time(predict_all, repeats)


# ---------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------


def _export_onnx(model, example, path):
    """Export with a dynamic batch axis; returns the path."""
    import torch

    kwargs = dict(input_names=["x"], output_names=["y"])
    with warnings.catch_warnings():
        # The legacy exporter is deprecated (and warns about LSTM batch sizes,
        # which does not apply: we pass no initial state).
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter maps nn.LSTM/GRU/RNN onto the native
            # ONNX LSTM/GRU/RNN operators and needs no extra package.
            torch.onnx.export(
                model,
                (example,),
                path,
                dynamo=False,
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                **kwargs,
            )
        except TypeError:  # a torch without the legacy exporter
            batch_dim = torch.export.Dim("batch")
            torch.onnx.export(
                model,
                (example,),
                path,
                dynamo=True,
                dynamic_shapes=({0: batch_dim},),
                **kwargs,
            )
    return path


def onnxruntime_predictor(cell, X, hidden, batch, n_threads, seed=0):
    """A function that predicts ``X`` in chunks of ``batch`` with ONNX
    Runtime, after one warm-up pass.

    The same torch model as :func:`torch_predictor` is exported to ONNX
    with a dynamic batch axis and run on the CPU execution provider with
    ``intra_op_num_threads=n_threads``.  The ONNX outputs are checked against
    torch on a full and on a partial chunk.

    Returns
    -------
    predict_all : callable or None
        None when torch, onnx or onnxruntime (or the exporter's own
        dependencies) are not installed.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        import torch
    except ImportError:
        return None

    X = np.ascontiguousarray(X, dtype=np.float32)
    model = _make_model(cell, X.shape[2], hidden, seed=seed).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{cell}.onnx")
        try:
            with _torch_threads(n_threads):
                _export_onnx(model, torch.from_numpy(X[:batch]), path)
        except ImportError:  # e.g. the dynamo exporter without onnxscript
            return None
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(n_threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )

    # Sanity check: same numbers as torch, also for a batch size other than
    # the one used at export time.
    n_check = max(1, min(batch, X.shape[0]) // 2 + 1)
    for chunk in (X[:batch], X[:n_check]):
        with torch.inference_mode():
            expected = model(torch.from_numpy(chunk)).numpy()
        got = session.run(["y"], {"x": chunk})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    def predict_all():
        for start in range(0, X.shape[0], batch):
            session.run(["y"], {"x": X[start : start + batch]})

    predict_all()
    return predict_all


def onnxruntime_inference_time(cell, X, hidden, batch, n_threads, repeats=5, seed=0):
    """Median seconds for ONNX Runtime to predict ``X`` in chunks of
    ``batch`` (``onnxruntime_predictor``), or None where it cannot run."""
    predict_all = onnxruntime_predictor(cell, X, hidden, batch, n_threads, seed=seed)
    return None if predict_all is None else _median_time(predict_all, repeats)


# ---------------------------------------------------------------------------
# Machine peak
# ---------------------------------------------------------------------------


def sgemm_peak_gflops(n_threads, n=2048, repeats=5):
    """GFLOP/s of a float32 ``n x n`` NumPy matmul with ``n_threads`` BLAS threads.

    Best of ``repeats`` runs after one warm-up; a rough ceiling for what the
    GEMM-bound parts of any RNN implementation can reach on this machine.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    with threadpool_limits(limits=int(n_threads), user_api="blas"):
        np.matmul(a, b, out=out)
        best = float("inf")
        for _ in range(repeats):
            start_time = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start_time)
    return 2.0 * n**3 / best / 1e9


# ---------------------------------------------------------------------------
# One workload, all numbers
# ---------------------------------------------------------------------------


def run_workload(
    workload,
    n_threads,
    repeats=3,
    train=True,
    inference=True,
    packed=False,
    onnx=False,
):
    """Time the torch side of one workload; returns a JSON-able dict.

    ``workload`` is a dict from :data:`WORKLOADS` or its name.
    """
    import torch

    if isinstance(workload, str):
        workload = get_workload(workload)
    cell, hidden, batch = workload["cell"], workload["hidden"], workload["batch"]
    result = dict(
        workload=workload["name"],
        n_threads=int(n_threads),
        torch_version=torch.__version__,
    )
    X, y, _ = workload_data(workload)
    if train:
        result["torch_train_epoch_s"] = torch_train_epoch_time(
            cell, X, y, hidden, batch, n_threads, repeats=repeats
        )
    if inference:
        result["torch_inference_s"] = torch_inference_time(
            cell, X, hidden, batch, n_threads, repeats=max(repeats, 3)
        )
    if onnx:
        result["onnxruntime_inference_s"] = onnxruntime_inference_time(
            cell, X, hidden, batch, n_threads, repeats=max(repeats, 3)
        )
    if packed:
        Xp, yp, lengths = workload_data(workload, variable_length=True)
        result["torch_packed_train_epoch_s"] = torch_packed_train_epoch_time(
            cell, Xp, yp, lengths, hidden, batch, n_threads, repeats=repeats
        )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="small-lstm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--packed", action="store_true", help="also packed training")
    parser.add_argument("--onnx", action="store_true", help="also ONNX Runtime")
    parser.add_argument("--sgemm", action="store_true", help="also sgemm peak")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)

    result = run_workload(
        args.workload,
        args.threads,
        repeats=args.repeats,
        packed=args.packed,
        onnx=args.onnx,
    )
    if args.sgemm:
        result["sgemm_peak_gflops"] = sgemm_peak_gflops(args.threads)
    if args.json:
        print(json.dumps(result))
        return 0

    print(f"{result['workload']} (torch {result['torch_version']}, "
          f"{result['n_threads']} threads)")  # fmt: skip
    for key, value in result.items():
        if key in ("workload", "torch_version", "n_threads"):
            continue
        if isinstance(value, list):
            shown = ", ".join(f"{v:.3f}" for v in value)
            print(f"  {key:<28} [{shown}]  median {statistics.median(value):.3f}")
        elif value is None:
            print(f"  {key:<28} n/a")
        else:
            print(f"  {key:<28} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
