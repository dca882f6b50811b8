"""Inference against the anchors in many alternated pairs (issue #7's
inference targets).

``bench_engine.py`` takes each inference ratio within one of a few rounds,
minutes apart. Inference passes are short (0.02 to 1.5 s), so this
benchmark takes many: for each workload of ``bench_torch.WORKLOADS``, on the
same data, float32, 2 threads by default, it alternates a pass of our
engine (``bench_engine._training_epoch``'s inference: the whole data set in
chunks of the batch size) with a pass of PyTorch and one of ONNX Runtime
(``bench_torch.torch_predictor``, ``onnxruntime_predictor``), the order
turned each pair. The anchors run in a process of their own (their OpenMP
runtimes must not share ours), kept for the whole run and driven through a
pipe. Before each side's timed pass: a pause, which lets the other side's
threads stop spinning (libgomp's and PyTorch's wait for more work for a
while after a pass), then an untimed pass, so that each side is timed warm
(its data and weights in the caches, its threads awake), as
``bench_engine.py`` times its repeats.

For each pair: the faster anchor's time over ours. Reported: the median of
the pairs' ratios with their range, how many pairs meet the workload's
target, and the best times (each side's least time, and their ratio).

    python benchmarks/bench_inference.py [--write] [--pairs 30] [--threads 2]

``--write`` stores ``benchmarks/INFERENCE.md`` and
``benchmarks/inference.json``.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_torch import WORKLOADS, get_workload, workload_data  # noqa: E402

#: The issue's inference targets: the faster anchor's time over ours.
TARGETS = {"small-lstm": 1.5, "medium-lstm": 1.2, "medium-gru": 1.2,
           "medium-rnn": 1.2, "large-lstm": 1.0}

#: Seconds to wait before each pass (see above).
PAUSE = 0.3


def serve(name, n_threads):
    """The anchors' side: make the predictors, print ``ready`` (and which
    anchors there are), then for each line ``torch`` or ``onnxruntime``
    read from stdin run one pass and print its seconds."""
    from bench_torch import onnxruntime_predictor, torch_predictor

    workload = get_workload(name)
    X, _, _ = workload_data(workload)
    args = (workload["cell"], X, workload["hidden"], workload["batch"], n_threads)
    predictors = {"torch": torch_predictor(*args)}
    onnx = onnxruntime_predictor(*args)
    if onnx is not None:
        predictors["onnxruntime"] = onnx
    print("ready " + " ".join(predictors), flush=True)
    for line in sys.stdin:
        predict_all = predictors[line.strip()]
        start = time.perf_counter()
        predict_all()
        print(time.perf_counter() - start, flush=True)


def pairs(workload, n_threads, n_pairs):
    """``{"ours": [s, ...], anchor: [s, ...]}``: ``n_pairs`` alternated
    passes of each (see above)."""
    from bench_engine import _timed, _training_epoch

    anchors = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", workload["name"],
         "--threads", str(n_threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        words = anchors.stdout.readline().split()
        if not words or words[0] != "ready":
            raise RuntimeError("the anchors' process did not start")
        names = words[1:]
        _, ours, limits = _training_epoch(workload, n_threads,
                                          data=workload_data(workload))

        def anchor(name):
            anchors.stdin.write(name + "\n")
            anchors.stdin.flush()
            return float(anchors.stdout.readline())

        sides = [("ours", lambda: _timed(ours))] + [
            (name, lambda name=name: anchor(name)) for name in names]
        times = {name: [] for name, _ in sides}
        with limits(limits=1, user_api="blas"):
            ours()   # warm-up: buffers and the inference plan
            for i in range(n_pairs):
                for name, run in (sides[::-1] if i % 2 else sides):
                    time.sleep(PAUSE)
                    run()   # each side warm, as bench_engine times it
                    times[name].append(run())
    finally:
        anchors.stdin.close()
        anchors.wait()
    return times


def summary(name, times):
    """The pairs' ratios (the faster anchor of each pair over ours) and the
    best times."""
    anchors = [key for key in times if key != "ours"]
    ratios = sorted(min(times[a][i] for a in anchors) / ours
                    for i, ours in enumerate(times["ours"]))
    best = {key: min(t) for key, t in times.items()}
    best_anchor = min(best[a] for a in anchors)
    return dict(median=statistics.median(ratios), low=ratios[0], high=ratios[-1],
                meeting=sum(r >= TARGETS[name] for r in ratios), pairs=len(ratios),
                target=TARGETS[name], best=best,
                best_ratio=best_anchor / best["ours"])


def markdown(rows, info, n_pairs):
    lines = [
        "# Inference against the anchors, in alternated pairs", "",
        f"Measured {info['date']} with `python benchmarks/bench_inference.py "
        f"--write`, on {info['processor']}, {info['cpu_count']} cores, "
        f"{info['threads']} threads, float32; Python {info['python']}, "
        f"NumPy {info['numpy']}, PyTorch {info['torch']}, onnxruntime "
        f"{info['onnxruntime']}.", "",
        f"{n_pairs} pairs per workload, each a pass of our engine and one of "
        "each anchor over the whole data set in chunks of the batch size, "
        "seconds apart, the order turned each pair. Ratio: the faster "
        "anchor's time over ours within a pair.", "",
        "| workload | target | median ratio (range) | pairs at the target | "
        "best: ours s | best: PyTorch s | best: onnxruntime s | best over best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        best = s["best"]
        onnx = best.get("onnxruntime")
        lines.append(
            f"| {name} | {s['target']:.1f}× | {s['median']:.2f}× "
            f"({s['low']:.2f}-{s['high']:.2f}) | {s['meeting']} of {s['pairs']} | "
            f"{best['ours']:.3f} | {best['torch']:.3f} | "
            f"{'n/a' if onnx is None else f'{onnx:.3f}'} | {s['best_ratio']:.2f}× |")
    lines += ["", "*best over best*: the faster anchor's least time over ours."]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append",
                        help="a workload name (repeatable); all by default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads)
        return 0
    from bench_engine import machine_info, write_report
    info = machine_info(args.threads)
    rows, results = [], {}
    for name in args.workload or [w["name"] for w in WORKLOADS]:
        times = pairs(get_workload(name), args.threads, args.pairs)
        s = summary(name, times)
        rows.append((name, s))
        results[name] = dict(summary=s, times=times)
        print(f"{name}: median {s['median']:.2f}x ({s['low']:.2f}-{s['high']:.2f}), "
              f"{s['meeting']} of {s['pairs']} pairs at {s['target']}x; best over "
              f"best {s['best_ratio']:.2f}x", flush=True)
    lines = markdown(rows, info, args.pairs)
    print("\n".join(lines))
    if args.write:
        write_report("INFERENCE.md", lines, "inference.json",
                     dict(info=info, pairs=args.pairs, results=results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
