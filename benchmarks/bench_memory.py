"""Resident memory over repeated fit/predict cycles (a leak check).

Fits and predicts a small model many times and prints the process's resident
set size every 50 cycles; a leak shows as steady growth. Linux only (reads
/proc/self/statm).

    python benchmarks/bench_memory.py --cycles 300
"""

import argparse
import os
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_rnn import RNNClassifier


def rss_mib():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=300)
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    X = [rng.normal(size=(n, 4)) for n in rng.randint(5, 40, size=200)]
    y = np.array([int(x[:, 0].sum() > 0) for x in X])
    warnings.simplefilter("ignore", ConvergenceWarning)
    readings = []
    for cycle in range(1, args.cycles + 1):
        clf = RNNClassifier(cell="lstm", hidden_layer_sizes=(16,), max_iter=2,
                            random_state=cycle).fit(X, y)
        clf.predict_proba(X)
        if cycle == 1 or cycle % 50 == 0:
            readings.append((cycle, rss_mib()))
            print(f"cycle {cycle:4d}: RSS {readings[-1][1]:.1f} MiB", flush=True)
    growth = readings[-1][1] - readings[1][1] if len(readings) > 2 else 0.0
    print(f"growth after cycle 50: {growth:+.1f} MiB over "
          f"{readings[-1][0] - 50} cycles")


if __name__ == "__main__":
    main()
