"""When does each multi-step strategy of SequenceForecaster win?

Fits the recursive, direct and seq2seq strategies on synthetic series whose
character is known (smooth or noisy, short or long, linear or chaotic), with
the same network and training budget, and measures the mean absolute error
of h-step forecasts from every origin of a held-out continuation (rolling
origin, as ``SequenceForecaster.score`` does), averaged over 3 seeds.
Writes ``benchmarks/STRATEGIES.md`` with ``--write``.

    python benchmarks/bench_strategies.py [--write] [--quick]
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_rnn import SequenceForecaster

HERE = os.path.dirname(os.path.abspath(__file__))


def smooth(n, rng):
    """Two sines and a little noise: every strategy has the information."""
    t = np.arange(n)
    return (np.sin(2 * np.pi * t / 30) + 0.5 * np.sin(2 * np.pi * t / 7)
            + 0.05 * rng.normal(size=n))


def noisy_ar(n, rng):
    """AR(2) with strong noise: one-step errors are large relative to the
    signal, and feeding them back compounds them."""
    y = np.zeros(n)
    e = rng.normal(size=n)
    for t in range(2, n):
        y[t] = 1.3 * y[t - 1] - 0.5 * y[t - 2] + e[t]
    return y


def chaotic(n, rng):
    """The logistic map at r = 3.9: deterministic, but small errors grow
    exponentially under iteration."""
    y = np.empty(n)
    y[0] = rng.uniform(0.1, 0.9)
    for t in range(1, n):
        y[t] = 3.9 * y[t - 1] * (1 - y[t - 1])
    return y


# name: (generator, series length, test steps, horizon, window)
TASKS = {
    "smooth, long series, h=5": (smooth, 3000, 500, 5, 40),
    "smooth, short series, h=5": (smooth, 250, 100, 5, 40),
    "noisy AR(2), h=10": (noisy_ar, 3000, 500, 10, 20),
    "chaotic map, h=5": (chaotic, 3000, 500, 5, 10),
}
STRATEGIES = ("recursive", "direct", "seq2seq")


def evaluate(strategy, y, n_test, h, window, seed, max_iter):
    n_train = len(y) - n_test
    fc = SequenceForecaster(window=window, horizon=h, strategy=strategy,
                            hidden_layer_sizes=(32,), learning_rate_init=0.005,
                            max_iter=max_iter, calibration_fraction=0,
                            random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fc.fit(y[:n_train])
    took = time.perf_counter() - start
    origins = np.arange(n_train - 1, len(y) - h)
    pred = fc.predict(h, history=[y[:t + 1] for t in origins])
    truth = np.stack([y[t + 1:t + 1 + h] for t in origins])
    return np.abs(pred - truth).mean(axis=0), took, fc.n_iter_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="write benchmarks/STRATEGIES.md")
    parser.add_argument("--quick", action="store_true", help="1 seed, 5 epochs")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [0, 1, 2]
    max_iter = 5 if args.quick else 40

    rows = []
    for task, (gen, n, n_test, h, window) in TASKS.items():
        results = {}
        for strategy in STRATEGIES:
            maes, times, epochs = [], [], []
            for seed in seeds:
                y = gen(n, np.random.RandomState(seed))
                mae, took, n_iter = evaluate(strategy, y, n_test, h, window, seed,
                                             max_iter)
                maes.append(mae)
                times.append(took)
                epochs.append(n_iter)
            results[strategy] = (np.mean(maes, axis=0), np.mean(times),
                                 np.mean(epochs))
        best = min(results, key=lambda s: results[s][0].mean())
        for strategy, (mae, took, n_iter) in results.items():
            rows.append((task, strategy, mae[0], mae[-1], mae.mean(), took, n_iter,
                         strategy == best))
            print(f"{task:<28} {strategy:<9} MAE step 1 {mae[0]:.4f}, step {h} "
                  f"{mae[-1]:.4f}, mean {mae.mean():.4f}  fit {took:5.1f}s, "
                  f"{n_iter:.0f} epochs"
                  + ("  <- best" if strategy == best else ""), flush=True)

    if args.write:
        lines = [
            "# Multi-step strategies compared",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} with "
            f"`python benchmarks/bench_strategies.py --write` on "
            f"{platform.processor() or platform.machine()}: LSTM with 32 units, "
            f"{max_iter} epochs of Adam (learning rate 0.005), mean absolute "
            "error of the forecasts from every origin of the held-out part, "
            f"averaged over {len(seeds)} seeds (the series and the weights). "
            "Training stops early when the loss stops improving (tol=1e-4 for "
            "10 epochs), so the epochs differ; fit times are wall-clock on a "
            "shared machine.",
            "",
            "| task | strategy | MAE, 1 step ahead | MAE, h steps ahead | "
            "mean MAE | epochs | fit s |",
            "|---|---|---|---|---|---|---|",
        ]
        for task, strategy, first, last, mean, took, n_iter, best in rows:
            mark = "**" if best else ""
            lines.append(f"| {task} | {mark}{strategy}{mark} | {first:.4f} | "
                         f"{last:.4f} | {mark}{mean:.4f}{mark} | {n_iter:.0f} | "
                         f"{took:.1f} |")
        with open(os.path.join(HERE, "STRATEGIES.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("wrote benchmarks/STRATEGIES.md")


if __name__ == "__main__":
    main()
