"""float32 against float64 training on the benchmark workloads.

For each workload of ``bench_torch.WORKLOADS`` (the data of
``bench_engine.py``: standard normal sequences, the target their mean), this
trains ``RNNRegressor`` as ``bench_engine.py`` trains the engine (shuffled
mini-batches of the workload's batch size, MSE through a linear head,
Adam(lr=1e-3), gradient norm clipped at 1) for ``--epochs`` epochs:

* in float32 and in float64, from the same ``random_state``;
* in float32 from another ``random_state``, the scale of a difference that
  does not matter (another equally good model).

(3 epochs, 1 for large-lstm, so that the whole run takes about 4 minutes
on 2 cores), and reports the final training losses and their relative difference, the
largest relative difference along the loss curves, the mean squared error on
held-out sequences, and the largest difference between the float32 and
float64 predictions relative to the targets' standard deviation. A workload
is within tolerance when both relative differences are below
``PRECISION_RTOL`` (1e-4, the tolerance of
``tests/test_numerics.py::test_float32_training_ends_within_tolerance_of_float64``,
which runs a scaled-down small-lstm).

Usage::

    python benchmarks/bench_precision.py                      # all workloads
    python benchmarks/bench_precision.py --workload small-lstm --epochs 5
    python benchmarks/bench_precision.py --write              # PRECISION.md

``--write`` stores ``benchmarks/precision.json`` and ``benchmarks/PRECISION.md``.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_engine import machine_info  # noqa: E402
from bench_torch import WORKLOADS, get_workload, make_data, workload_data  # noqa: E402

PRECISION_RTOL = 1e-4
N_TEST = 1024
EPOCHS = 3
# large-lstm takes ~20 s per float32 epoch and ~45 s per float64 epoch on
# one core of the reference machine
EPOCHS_OF = {"large-lstm": 1}


def train(workload, dtype, random_state, epochs, n_threads):
    """Fit RNNRegressor on the workload; returns the model and seconds/epoch."""
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_rnn import RNNRegressor
    X, y, _ = workload_data(workload)
    est = RNNRegressor(cell=workload["cell"], hidden_layer_sizes=(workload["hidden"],),
                       batch_size=workload["batch"], learning_rate_init=1e-3,
                       clip_norm=1.0, max_iter=epochs, tol=0, dtype=dtype,
                       random_state=random_state, n_threads=n_threads)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y[:, 0])
    return est, (time.perf_counter() - t0) / epochs


def compare(workload, epochs, n_threads):
    """One row of the results: float32 against float64 on ``workload``."""
    X_test, y_test = make_data(N_TEST, workload["n_steps"], workload["n_features"],
                               seed=1)
    y_test = y_test[:, 0].astype(np.float64)
    f32, t32 = train(workload, "float32", 0, epochs, n_threads)
    f64, t64 = train(workload, "float64", 0, epochs, n_threads)
    other, _ = train(workload, "float32", 1, epochs, n_threads)
    p32, p64, p_other = (m.predict(X_test) for m in (f32, f64, other))
    c32, c64 = np.array(f32.loss_curve_), np.array(f64.loss_curve_)
    spread = float(np.std(y_test))
    row = dict(
        workload=workload["name"], epochs=epochs,
        loss_first=float(c64[0]),
        loss_float32=float(c32[-1]), loss_float64=float(c64[-1]),
        loss_rel_diff=float(abs(c32[-1] - c64[-1]) / c64[-1]),
        curve_max_rel_diff=float(np.max(np.abs(c32 - c64) / c64)),
        test_mse_float32=float(np.mean((p32 - y_test) ** 2)),
        test_mse_float64=float(np.mean((p64 - y_test) ** 2)),
        target_std=spread,
        pred_max_diff_rel=float(np.max(np.abs(p32 - p64)) / spread),
        other_seed_loss_rel_diff=float(abs(other.loss_ - c32[-1]) / c32[-1]),
        other_seed_pred_max_diff_rel=float(np.max(np.abs(p_other - p32)) / spread),
        float32_s_per_epoch=t32, float64_s_per_epoch=t64,
    )
    row["within_tolerance"] = bool(row["curve_max_rel_diff"] < PRECISION_RTOL
                                   and row["pred_max_diff_rel"] < PRECISION_RTOL)
    return row


def markdown(rows, info):
    lines = [
        "# float32 against float64 training",
        "",
        "Reproduce with `python benchmarks/bench_precision.py --write`.",
        "",
        f"Measured {info['date']} on {info['processor']} ({info['cpu_count']} cores), "
        f"{info['threads']} thread(s); Python {info['python']}, NumPy "
        f"{info['numpy']}; whole run {info['total_s']:.0f} s.",
        "",
        "`RNNRegressor` trained on each workload of `bench_engine.py` (same data, "
        "batch size, Adam at 1e-3, gradient norm clipped at 1) in float32 and in "
        "float64 from the same `random_state`. *loss Δ* is the largest relative "
        "difference between the two training-loss curves (every epoch); "
        "*prediction Δ* the largest difference between their predictions on "
        f"{N_TEST} held-out sequences, over the targets' standard deviation. "
        "*other seed* gives the same two figures for float32 models of "
        "`random_state` 0 and 1: the size of a difference that does not matter. "
        f"Tolerance: both Δ below {PRECISION_RTOL:g}. Where a few epochs have "
        "not learned the task yet (held-out MSE above the targets' variance), "
        "the predictions still mostly reflect the initial weights: another "
        "`random_state` then moves them by many standard deviations of the "
        "target, and the float32 prediction Δ, measured against that small "
        "standard deviation, is a strict criterion. Seconds per epoch are "
        "indicative only (`bench_engine.py` measures speed).",
        "",
        "| workload | epochs | loss (first → last epoch, float64) | last loss float32 "
        "| loss Δ | prediction Δ | held-out MSE float32 / float64 (target "
        "variance) | other seed: loss Δ, prediction Δ | within tolerance "
        "| s/epoch float32 / float64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['epochs']} | {r['loss_first']:.4g} → "
            f"{r['loss_float64']:.6g} | {r['loss_float32']:.6g} | "
            f"{r['curve_max_rel_diff']:.1e} | {r['pred_max_diff_rel']:.1e} | "
            f"{r['test_mse_float32']:.5g} / {r['test_mse_float64']:.5g} "
            f"({r['target_std'] ** 2:.2g}) | "
            f"{r['other_seed_loss_rel_diff']:.1e}, "
            f"{r['other_seed_pred_max_diff_rel']:.1e} | "
            f"{'yes' if r['within_tolerance'] else '**no**'} | "
            f"{r['float32_s_per_epoch']:.2f} / {r['float64_s_per_epoch']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append",
                        help="workload name (repeatable); default: all")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs per fit (default {EPOCHS}, large-lstm "
                             f"{EPOCHS_OF['large-lstm']})")
    # the results do not depend on the thread count (bitwise); one thread
    # keeps the run steady on a shared machine
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", action="store_true",
                        help="write precision.json and PRECISION.md")
    args = parser.parse_args(argv)
    names = args.workload or [w["name"] for w in WORKLOADS]
    info = machine_info(args.threads)
    rows = []
    start = time.perf_counter()
    for name in names:
        epochs = args.epochs or EPOCHS_OF.get(name, EPOCHS)
        row = compare(get_workload(name), epochs, args.threads)
        print(json.dumps(row), flush=True)
        rows.append(row)
    info["total_s"] = time.perf_counter() - start
    text = markdown(rows, info)
    print()
    print(text)
    if args.write:
        with open(os.path.join(HERE, "precision.json"), "w") as f:
            json.dump(dict(info=info, tolerance=PRECISION_RTOL, results=rows), f,
                      indent=2)
        with open(os.path.join(HERE, "PRECISION.md"), "w") as f:
            f.write(text)
    return 0 if all(r["within_tolerance"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
