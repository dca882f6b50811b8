"""Micro-benchmark of one recurrent layer: packed recurrent product vs BLAS.

Times ``layer_forward`` (as in inference: buffers reused) and
``layer_backward`` of one layer on the shapes of the engine benchmark's
workloads (one mini-batch), alternating the two ways of computing the per-step
recurrent product (``pyx_rnn.layers.RECURRENT_PRODUCT``) in the same process,
and reports the minimum over ``--repeats`` rounds, which is robust on a
shared machine.

Usage::

    python benchmarks/bench_recurrent.py                  # all shapes, 2 threads
    python benchmarks/bench_recurrent.py --threads 1 --shape small-lstm
    python benchmarks/bench_recurrent.py --only packed --rounds 1   # for callgrind
"""

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from pyx_rnn import layers
from pyx_rnn.layers import LayerSpec, layer_backward, layer_forward
from pyx_rnn.packing import Packing

# name: (cell, sequences per batch, steps, inputs, hidden)
SHAPES = {
    "small-lstm": ("lstm", 32, 50, 1, 32),
    "medium-lstm": ("lstm", 64, 100, 32, 128),
    "medium-gru": ("gru", 64, 100, 32, 128),
    "medium-rnn": ("rnn", 64, 100, 32, 128),
    "large-lstm": ("lstm", 128, 100, 128, 512),
}


def make(name, dtype, seed=0):
    cell, B, T, n_in, H = SHAPES[name]
    spec = LayerSpec(cell, n_in, H)
    rng = np.random.default_rng(seed)
    w = {k: (rng.standard_normal(s) / np.sqrt(H)).astype(dtype)
         for k, s in spec.shapes().items()}
    pk = Packing.from_lengths(np.full(B, T))
    X = rng.standard_normal((pk.n_rows, n_in)).astype(dtype)
    dH = rng.standard_normal((pk.n_rows, H)).astype(dtype)
    return spec, w, pk, X, dH


def run_once(spec, w, pk, X, dH, n_threads, pool, backward):
    grads = {k: np.zeros_like(v) for k, v in w.items()}
    t0 = time.perf_counter()
    _, _, _, cache = layer_forward(spec, w, X, pk.batch_sizes, pk.offsets,
                                   n_threads=n_threads, pool=pool)
    t1 = time.perf_counter()
    if backward:
        layer_backward(spec, w, grads, cache, dH, n_threads=n_threads, pool=pool)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=["packed", "blas"])
    parser.add_argument("--no-backward", action="store_true")
    args = parser.parse_args(argv)
    modes = [args.only] if args.only else ["blas", "packed"]
    names = args.shape or list(SHAPES)
    with threadpool_limits(1, user_api="blas"):
        for name in names:
            spec, w, pk, X, dH = make(name, np.dtype(args.dtype))
            pools = {m: {} for m in modes}
            best = {m: [np.inf, np.inf] for m in modes}
            for _ in range(args.repeats):
                for m in modes:
                    layers.RECURRENT_PRODUCT = m
                    f, b = run_once(spec, w, pk, X, dH, args.threads, pools[m],
                                    not args.no_backward)
                    best[m] = [min(best[m][0], f), min(best[m][1], b)]
            layers.RECURRENT_PRODUCT = "auto"
            line = f"{name:12s} {args.dtype} {args.threads}t"
            for m in modes:
                line += (f" | {m}: fwd {1e3 * best[m][0]:8.2f} ms"
                         f" bwd {1e3 * best[m][1]:8.2f} ms")
            if len(modes) == 2:
                ref, new = best["blas"], best["packed"]
                line += (f" | packed speed-up fwd {ref[0] / new[0]:.2f}x"
                         f" bwd {ref[1] / new[1]:.2f}x")
            print(line, flush=True)


if __name__ == "__main__":
    main()
