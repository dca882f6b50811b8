"""How our training epoch's cost follows the real steps (issue #7's
variable-length target).

For each workload of ``bench_torch.WORKLOADS``, on the same data, float32,
2 threads by default: training epochs (``bench_engine._training_epoch``, the
benchmark's own loop) where every sequence is cut to one length L, for L at
1/5, 2/5, ... and all of the workload's steps, and the epoch of the
variable-length data (lengths uniform in 10..100, at most the workload's
steps, as ``bench_engine --packed`` draws them). All of them take the
variable-length path: each batch's sequences are read where they lie and
packed, so that the epochs differ in their lengths only.

The equal-length epochs give a line, fitted by least squares:

    seconds per epoch = a + b * L

``a``, divided by the number of batches, is what a batch costs whatever its
steps (the Python loop, packing, the output layer and loss, clipping and
Adam, the kernels' calls); ``b`` is the cost of one more step in every
sequence. The variable-length epoch is then compared with the line at its
mean length: where padding cost anything, or differing lengths cost more
than their steps, it would lie above the line. Its cost over the
full-length epoch is also given beside its real steps over the padded
ones (what that ratio would be with ``a`` = 0).

Each round runs every workload's epochs in turns, the order reversed each
round, and each epoch's least time over the rounds is kept (see
``summary``).

    python benchmarks/bench_lengths.py [--write] [--rounds 9] [--threads 2]

``--write`` stores ``benchmarks/LENGTHS.md`` and ``benchmarks/lengths.json``.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_engine import (  # noqa: E402
    _timed,
    _training_epoch,
    machine_info,
    write_report,
)
from bench_torch import WORKLOADS, get_workload, workload_data  # noqa: E402

#: The equal lengths of the line, as fractions of the workload's steps.
FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)


def fit_line(lengths, seconds):
    """``(a, b, largest residual over the time)`` of the least-squares line
    ``seconds = a + b * lengths``."""
    x, y = np.asarray(lengths, float), np.asarray(seconds, float)
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b), float(np.max(np.abs(y - (a + b * x)) / y))


def epochs_of(workload, n_threads):
    """``(epochs, mean_length, limits)``: the workload's epochs, ``(key,
    function)`` for each equal length L (key L) and for the variable lengths
    (key "variable"), and threadpoolctl's ``threadpool_limits``."""
    X, y, lengths = workload_data(workload, variable_length=True)
    T = workload["n_steps"]
    epochs = []
    for fraction in FRACTIONS:
        L = max(1, int(round(fraction * T)))
        epoch, _, limits = _training_epoch(
            workload, n_threads, variable_length=True,
            data=(X, y, np.full_like(lengths, L)))
        epochs.append((L, epoch))
    variable, _, _ = _training_epoch(workload, n_threads, variable_length=True,
                                     data=(X, y, lengths))
    epochs.append(("variable", variable))
    return epochs, float(lengths.mean()), limits


def measure(workloads, n_threads, rounds):
    """Seconds per epoch of each workload's equal lengths and variable
    lengths, a list over the rounds each: ``{name: {"equal": {L: [s, ...]},
    "variable": [s, ...], "mean_length": m}}``. Each round runs every
    workload's epochs in turns, the order reversed each round, so that a
    workload's rounds spread over the whole run."""
    made = {w["name"]: epochs_of(w, n_threads) for w in workloads}
    limits = next(iter(made.values()))[2]
    times = {name: {key: [] for key, _ in epochs}
             for name, (epochs, _, _) in made.items()}
    with limits(limits=1, user_api="blas"):
        for epochs, _, _ in made.values():   # warm-up: buffers and plans
            for _, epoch in epochs:
                epoch()
        for r in range(rounds):
            for name, (epochs, _, _) in made.items():
                for key, epoch in (epochs[::-1] if r % 2 else epochs):
                    times[name][key].append(_timed(epoch))
    return {name: dict(equal={L: t for L, t in times[name].items()
                              if L != "variable"},
                       variable=times[name]["variable"],
                       mean_length=made[name][1])
            for name in made}


def summary(workload, result):
    """The line of the equal-length epochs and the variable-length epoch
    against it (see above), from each epoch's least time over the rounds:
    the shared machine's noise only ever slows an epoch down (two threads
    at times run a third slower together for a minute or more, while the
    host runs the two virtual CPUs far apart: ``OPTIMISATIONS.md``,
    session 25), and the rounds spread over minutes."""
    equal = {L: min(t) for L, t in result["equal"].items()}
    variable = min(result["variable"])
    a, b, residual = fit_line(list(equal), list(equal.values()))
    n_batches = -(-workload["n_sequences"] // workload["batch"])
    T, m = workload["n_steps"], result["mean_length"]
    return dict(batch_us=1e6 * a / n_batches, step_us=1e6 * b / n_batches,
                fixed_share=a / equal[T], residual=residual,
                over_line=variable / (a + b * m),
                over_full=variable / equal[T], steps_share=m / T)


def markdown(rows, info, rounds):
    lines = [
        "# Cost against the real steps", "",
        f"Measured {info['date']} with `python benchmarks/bench_lengths.py "
        f"--write`, on {info['processor']}, {info['cpu_count']} cores, "
        f"{info['threads']} threads, float32; Python {info['python']}, "
        f"NumPy {info['numpy']}.", "",
        "Training epochs of the benchmark's loop (`bench_engine.py`) with "
        "every sequence cut to one length L (1/5 to all of the workload's "
        "steps), and the epoch of variable lengths (uniform in 10..100, at "
        "most the workload's steps), all on the same data and the same "
        f"path, in turns over {rounds} rounds; each epoch's least time "
        "over the rounds (the shared machine's noise only ever slows an "
        "epoch down). A line `a + b L` fitted to the equal lengths gives "
        "what a batch costs whatever its steps (`a` over the batches) and "
        "what one more step of every sequence costs a batch (`b` over the "
        "batches).", "",
        "| workload | per batch, µs | per step of a batch, µs | per batch / "
        "full-length epoch | worst fit | variable / line | variable / full "
        "length | real / padded steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['batch_us']:.1f} | {s['step_us']:.2f} | "
            f"{100 * s['fixed_share']:.1f}% | {100 * s['residual']:.1f}% | "
            f"{s['over_line']:.2f} | {s['over_full']:.2f} | "
            f"{s['steps_share']:.2f} |")
    lines += [
        "", "* *worst fit*: the largest distance of an equal-length epoch "
        "from the line, over its time.",
        "* *variable / line*: the variable-length epoch over the line at its "
        "mean length; 1.00 where padding costs nothing and differing "
        "lengths cost what their steps cost.",
        "* *variable / full length* would equal *real / padded steps* if a "
        "batch cost nothing beyond its steps (`a` = 0).",
        "* A per-batch cost near zero, or below it, is within the fit's "
        "error, or a step costing a little more in longer sequences, whose "
        "steps' caches take more of the CPU's.",
    ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append",
                        help="a workload name (repeatable); all by default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    names = args.workload or [w["name"] for w in WORKLOADS]
    info = machine_info(args.threads)
    workloads = [get_workload(name) for name in names]
    measured = measure(workloads, args.threads, args.rounds)
    rows, results = [], {}
    for workload in workloads:
        name = workload["name"]
        result = measured[name]
        s = summary(workload, result)
        rows.append((name, s))
        results[name] = dict(summary=s, **result)
        print(f"{name}: {s['batch_us']:.1f} µs per batch, {s['step_us']:.2f} "
              f"µs per step; variable / line {s['over_line']:.2f}, / full "
              f"length {s['over_full']:.2f} for {s['steps_share']:.2f} of the "
              "steps", flush=True)
    lines = markdown(rows, info, args.rounds)
    print("\n".join(lines))
    if args.write:
        write_report("LENGTHS.md", lines, "lengths.json",
                     dict(info=info, rounds=args.rounds, results=results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
