"""Thread scaling and peak memory of training (issue #7's last targets).

* **Threads.** Our training epoch on the 128-unit workloads with 1 and with
  2 OpenMP threads (``bench_engine.our_times``), alternated, each in a fresh
  process; the same epochs in pairs, 1 and 2 threads one after the other in
  one process; and their training steps on 8 batches with 1 and 2 threads
  alternated batch by batch in one process (each batch's fastest step).
* **Peak memory.** One training epoch of medium-lstm, ours and PyTorch's,
  each in a fresh process: the growth of the peak resident set size
  (``ru_maxrss``) over the process's size once the data exist.
* **Truncated BPTT.** The same growth for one RNNRegressor epoch on one
  sequence of 1,000 steps and of 100,000 steps with ``tbptt_k1=tbptt_k2=50``:
  the memory of the caches must not grow with the length.

Writes ``benchmarks/SCALING.md`` with ``--write``. Linux only.

    python benchmarks/bench_scaling.py [--write] [--rounds 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _child(kind):
    """Run one measurement in this (fresh) process; print a JSON line."""
    import resource
    import warnings

    import numpy as np

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if kind.startswith("epoch-"):
        # one training epoch (after a warm-up epoch) of a workload
        from bench_engine import our_times
        from bench_torch import get_workload
        _, name, n_threads = kind.split(":")
        seconds = our_times(get_workload(name), int(n_threads), 1)["train_epoch_s"]
        print(json.dumps(dict(kind=kind, seconds=seconds[0])))
        return
    if kind.startswith("pairs-"):
        # whole training epochs with 1 and 2 threads alternated in this one
        # process (two networks from the same weights, on the same data),
        # the order swapped each round: a slow spell of the shared machine
        # then falls on both members of a pair, and the ratio of each pair
        # shows how far it moved them apart
        from bench_engine import _timed, _training_epoch
        from bench_torch import get_workload, workload_data
        _, name, rounds = kind.split(":")
        w = get_workload(name)
        data = workload_data(w)
        epochs = {}
        for n_threads in (1, 2):
            epochs[n_threads], _, threadpool_limits = _training_epoch(
                w, n_threads, data=data)
        times = {1: [], 2: []}
        with threadpool_limits(limits=1, user_api="blas"):
            for n_threads in (1, 2):   # warm-up: buffers and plans
                epochs[n_threads]()
            for r in range(int(rounds)):
                for n_threads in ((2, 1) if r % 2 else (1, 2)):
                    times[n_threads].append(_timed(epochs[n_threads]))
        print(json.dumps(dict(kind=kind, one=times[1], two=times[2])))
        return
    if kind.startswith("steps-"):
        # training steps (loss_gradient, clipping, Adam) on 8 batches of a
        # workload, 1 and 2 threads alternated batch by batch in this one
        # process, over several passes: each batch's fastest step per thread
        # count, summed over the batches
        from bench_torch import get_workload, workload_data
        from threadpoolctl import threadpool_limits

        from pyx_rnn.network import Network
        from pyx_rnn.optim import Adam
        from pyx_rnn.packing import Packing
        _, name, passes = kind.split(":")
        w = get_workload(name)
        X, y, _ = workload_data(w)
        B, T = w["batch"], X.shape[1]
        packing = Packing.from_lengths(np.full(B, T))
        batches = [(np.ascontiguousarray(X[s:s + B].transpose(1, 0, 2)).reshape(
                        B * T, -1), y[s:s + B]) for s in range(0, 8 * B, B)]
        # one network per thread count, so that each one's calls follow one
        # another with the same key and take the training plan, as an
        # epoch's do; trained on the same batches from the same weights,
        # the two stay bitwise equal (checked at the end)
        nets, opts = {}, {}
        for n_threads in (1, 2):
            nets[n_threads] = Network(w["cell"], w["n_features"], (w["hidden"],),
                                      1, dtype=np.float32)
            nets[n_threads].init_weights(np.random.default_rng(0))
            opts[n_threads] = Adam(nets[n_threads].params, 1e-3)

        def step(rows, targets, n_threads):
            net = nets[n_threads]
            net.loss_gradient(rows, packing, targets, "squared_error",
                              n_threads=n_threads)
            net.clip_gradients(clip_norm=1.0)
            opts[n_threads].step(net.grads)

        best = {1: [np.inf] * 8, 2: [np.inf] * 8}
        with threadpool_limits(limits=1, user_api="blas"):
            for n_threads in (1, 1, 2, 2):   # warm-up: buffers and plans
                step(*batches[0], n_threads)
            for _ in range(int(passes)):
                for i, (rows, targets) in enumerate(batches):
                    for n_threads in (1, 2):
                        t0 = time.perf_counter()
                        step(rows, targets, n_threads)
                        best[n_threads][i] = min(best[n_threads][i],
                                                 time.perf_counter() - t0)
        if not np.array_equal(nets[1].params, nets[2].params):
            raise RuntimeError("1 and 2 threads trained different weights")
        print(json.dumps(dict(kind=kind, one=sum(best[1]), two=sum(best[2]))))
        return
    if kind in ("ours", "torch"):
        from bench_torch import get_workload, workload_data
        w = get_workload("medium-lstm")
        X, y, _ = workload_data(w)
        if kind == "torch":
            import torch  # noqa: F401  (its own import is not training memory)
            from bench_torch import torch_train_epoch_time
            base = peak_mib()
            torch_train_epoch_time(w["cell"], X, y, w["hidden"], w["batch"], 2,
                                   repeats=1)
        else:
            from bench_engine import our_times
            base = peak_mib()
            our_times(w, 2, 1, data=(X, y, None))
        print(json.dumps(dict(kind=kind, base_mib=base, peak_mib=peak_mib())))
        return
    from sklearn.exceptions import ConvergenceWarning

    from sklearn_rnn import RNNRegressor
    n_steps = int(kind.split("-")[1])
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1, n_steps, 8)).astype(np.float32)
    y = np.array([0.5])
    reg = RNNRegressor(hidden_layer_sizes=(128,), max_iter=1, tbptt_k1=50,
                       tbptt_k2=50, random_state=0)
    base = peak_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg.fit(X, y)
    print(json.dumps(dict(kind=kind, base_mib=base, peak_mib=peak_mib(),
                          input_mib=X.nbytes / 2**20)))


def _in_child(kind):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                          kind], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternations of 1 and 2 threads per workload")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0


    lines = ["# Thread scaling and memory", "",
             f"Measured {time.strftime('%Y-%m-%d')} with "
             "`python benchmarks/bench_scaling.py --write`, float32, on the "
             "2-core machine of `RESULTS.md`."]

    def thread_table(title, prose, row):
        """A section of ``lines``: a table of 1 and 2 threads, one row
        (``row(name)``: its cells after the workload's) per workload."""
        lines.extend(["", title, ""] + ([prose, ""] if prose else [])
                     + ["| workload | 1 thread | 2 threads | speed-up |",
                        "|---|---|---|---|"])
        for name in ("medium-lstm", "medium-gru", "medium-rnn"):
            lines.append(f"| {name} | {row(name)} |")
            print(lines[-1], flush=True)

    def fresh_processes(name):
        # The thread counts alternate (1, 2, 1, 2, ...), so that both see the
        # same spells of a busy machine, each in a fresh process: on the AMD
        # guest of session 5, a 2-thread GRU epoch took 1.35 s in a fresh
        # process and 1.56-1.81 s after another workload had run in it. The
        # guest of sessions 7-9 sometimes runs 2 threads at about one
        # core's speed for a minute: 5 rounds keep one such spell from
        # setting the median.
        times = {1: [], 2: []}
        for _ in range(args.rounds):
            for n_threads in (1, 2):
                r = _in_child(f"epoch-:{name}:{n_threads}")
                times[n_threads].append(r["seconds"])
        one, two = (statistics.median(times[n]) for n in (1, 2))
        return f"{one:.3f} | {two:.3f} | {one / two:.2f}×"

    def pairs(name):
        r = _in_child(f"pairs-:{name}:{args.rounds}")
        ratios = sorted(a / b for a, b in zip(r["one"], r["two"]))
        return (f"{statistics.median(r['one']):.3f} | "
                f"{statistics.median(r['two']):.3f} | "
                f"{statistics.median(ratios):.2f}× "
                f"({ratios[0]:.2f}-{ratios[-1]:.2f})")

    def interleaved(name):
        r = _in_child(f"steps-:{name}:{2 * args.rounds}")
        return (f"{1e3 * r['one']:.1f} | {1e3 * r['two']:.1f} | "
                f"{r['one'] / r['two']:.2f}×")

    thread_table(f"## Threads: training s/epoch (median of {args.rounds}, "
                 "alternated, each in a fresh process)", None, fresh_processes)
    thread_table(
        "## Threads: training epochs, alternated in one process",
        f"The same epochs, {args.rounds} pairs in one fresh process per "
        "workload (a network per thread count, from the same weights, on "
        "the same data), 1 and 2 threads one after the other, the order "
        "swapped each round. Speed-up: the median of the pairs' ratios "
        "(their range in brackets); the times are medians.", pairs)
    thread_table(
        "## Threads: training steps, interleaved in one process",
        "The same workloads' training step (loss and gradient, clipping, "
        "Adam) on 8 batches, with 1 and 2 threads alternated batch by "
        f"batch in one process over {2 * args.rounds} passes (a network "
        "per thread count, from the same weights: each takes the training "
        "plan, as an epoch's batches do, and the two end bitwise equal): "
        "each batch's fastest step per thread count, summed (ms for the 8 "
        "batches). A slow spell of the shared machine then hits both "
        "thread counts alike, where whole epochs in separate processes can "
        "each land in a different one.", interleaved)

    lines += ["", "## Peak memory of one medium-lstm training epoch", "",
              "Growth of the peak resident set size over the process's size "
              "with the data loaded (fresh process each).", "",
              "| engine | growth MiB |", "|---|---|"]
    for kind in ("ours", "torch"):
        r = _in_child(kind)
        lines.append(f"| {kind} | {r['peak_mib'] - r['base_mib']:.0f} |")
        print(lines[-1], flush=True)

    lines += ["", "## Truncated BPTT (k1 = k2 = 50), one sequence, 128 units", "",
              "| steps | input MiB | peak growth MiB |", "|---|---|---|"]
    for steps in (1000, 100000):
        r = _in_child(f"tbptt-{steps}")
        lines.append(f"| {steps:,} | {r['input_mib']:.1f} | "
                     f"{r['peak_mib'] - r['base_mib']:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", "The growth includes the estimator's float32 copy of the input "
              "(the input MiB column); the network's caches hold only the steps "
              "of the windows in flight, so the rest does not grow with the "
              "length."]
    if args.write:
        with open(os.path.join(HERE, "SCALING.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("wrote benchmarks/SCALING.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
