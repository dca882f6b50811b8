"""Engine benchmark: sklearn-rnn against PyTorch (and ONNX Runtime) on CPU.

For each workload of ``bench_torch.WORKLOADS`` this times, in the same run and
on the same data, float32, with the same thread count:

* a training epoch: shuffled mini-batches, MSE on the last step through a
  Linear head, Adam(lr=1e-3), gradient-norm clipping at 1;
* inference over the whole data set in chunks of the batch size;
* optionally (``--packed``) a training epoch on variable-length sequences
  (lengths uniform in 10..100), PyTorch using packed sequences.

Each time is the median of ``--repeats`` runs after a warm-up, over
``--rounds`` rounds in which ours and the anchors take turns. Each ratio is
the anchor's time over ours within a round, the median over the rounds: on a
shared machine whose speed changes from minute to minute (see
``OPTIMISATIONS.md``), the two sides of a round are minutes apart at most,
and one round in another speed does not move the median. PyTorch runs in a
subprocess (its bundled OpenMP runtime must not share a process with ours).
Ratios are anchor time / our time: above 1 means we are faster.

Usage::

    python benchmarks/bench_engine.py                      # all workloads
    python benchmarks/bench_engine.py --workload small-lstm --repeats 3
    python benchmarks/bench_engine.py --write              # update results

``--write`` stores ``benchmarks/results.json`` and ``benchmarks/RESULTS.md``
and the table between the BENCHMARK markers of README.md.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_torch import (  # noqa: E402
    WORKLOADS,
    get_workload,
    sgemm_peak_gflops,
    workload_data,
    workload_lengths,
)


def _our_modules():
    from threadpoolctl import threadpool_limits

    from pyx_rnn.network import Network
    from pyx_rnn.optim import Adam
    from pyx_rnn.packing import Packing, SequenceInput
    return threadpool_limits, Network, Adam, Packing, SequenceInput


def _fixed_packing(n, T, packings, Packing):
    """The packing of ``n`` sequences of ``T`` steps, kept in ``packings`` (a
    dict): it depends on the lengths only, so a caller with fixed-length data
    makes it once per batch size."""
    packing = packings.get(n)
    if packing is None:
        packing = packings[n] = Packing.from_lengths(np.full(n, T))
    return packing


def _training_epoch(workload, n_threads, variable_length=False, seed=0,
                    data=None):
    """``(epoch, inference, threadpool_limits)``: functions that run one
    training epoch of our engine on the workload (fixed or variable
    length; ``data`` is its ``(X, y, lengths)`` if already made) and one
    pass of inference over the fixed-length data, on one network."""
    threadpool_limits, Network, Adam, Packing, SequenceInput = _our_modules()
    X, y, lengths = data or workload_data(workload, variable_length=variable_length)
    n, batch = len(X), workload["batch"]
    # the sequences stored one after another, each batch's steps read where
    # they lie, as RNNRegressor.fit reads its batches: a SequenceInput,
    # whose rows the network packs itself (in parallel, no list of arrays
    # is packed, no (batch, T, features) array is gathered and transposed)
    if variable_length:
        flat = np.concatenate([X[i, : lengths[i]] for i in range(n)])
        starts = np.zeros(n, np.intp)
        np.cumsum(lengths[:-1], out=starts[1:])
    else:
        flat = X.reshape(-1, X.shape[2])
        starts = X.shape[1] * np.arange(n, dtype=np.intp)
    rng = np.random.default_rng(seed)
    net = Network(workload["cell"], workload["n_features"], (workload["hidden"],), 1,
                  dtype=np.float32)
    net.init_weights(rng)
    opt = Adam(net.params, 1e-3)

    packings = {}

    def get_batch(idx):
        packing = (Packing.from_lengths(lengths[idx]) if variable_length
                   else _fixed_packing(len(idx), X.shape[1], packings, Packing))
        return SequenceInput(flat, starts[idx][packing.order]), packing

    def epoch():
        perm = rng.permutation(n)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            data, packing = get_batch(idx)
            net.loss_gradient(data, packing, y[idx][packing.order],
                              "squared_error", n_threads=n_threads)
            net.clip_gradients(clip_norm=1.0)
            opt.step(net.grads)

    def inference():
        # the steps read where they lie, as RNNRegressor.predict does: the
        # chunk of the (n, T, n_features) array as consecutive rows
        T = X.shape[1]
        for s in range(0, n, batch):
            chunk = X[s:s + batch]
            packing = _fixed_packing(len(chunk), T, packings, Packing)
            net.forward(SequenceInput(chunk.reshape(-1, X.shape[2]),
                                      T * packing.order),
                        packing, n_threads=n_threads)

    return epoch, inference, threadpool_limits


def _timed(function):
    t0 = time.perf_counter()
    function()
    return time.perf_counter() - t0


def our_times(workload, n_threads, repeats, variable_length=False, seed=0,
              data=None, inference=True):
    """Training epoch times and (fixed length, unless not ``inference``)
    inference times of our engine; ``data`` is the workload's ``(X, y,
    lengths)`` if already made."""
    epoch, run_inference, threadpool_limits = _training_epoch(
        workload, n_threads, variable_length, seed, data)
    result = {}
    with threadpool_limits(limits=1, user_api="blas"):
        epoch()
        times = [_timed(epoch) for _ in range(repeats)]
        result["packed_train_epoch_s" if variable_length else "train_epoch_s"] = times
        if inference and not variable_length:
            run_inference()
            result["inference_s"] = [_timed(run_inference)
                                     for _ in range(max(repeats, 3))]
    return result


def variable_over_fixed_times(workload, n_threads, repeats, min_pairs=5):
    """Our variable-length epoch, each beside a fixed-length epoch and an
    epoch of equal lengths of as many real steps (every sequence of the
    variable-length data cut to their mean length), run just before or
    just after it, in turns (``paired_packed_epoch_s``,
    ``paired_fixed_epoch_s``, ``paired_mean_epoch_s``): ``repeats``
    triples, at least ``min_pairs``. The first ratio is how far the cost
    follows the real steps; the second, what the lengths' differing costs
    beyond the steps themselves (an epoch of equal lengths has the same
    batches, the same work per step and no padding). Timed minutes apart,
    as the two epochs of ``our_times`` are, they would also measure how
    the shared machine's speed moved in between (run 39, small-lstm: 0.95
    from the medians of the rounds; 0.75-0.78 in epochs alternated in one
    process within the hour before)."""
    fixed, _, threadpool_limits = _training_epoch(workload, n_threads)
    X, y, lengths = workload_data(workload, variable_length=True)
    variable, _, _ = _training_epoch(workload, n_threads, variable_length=True,
                                     data=(X, y, lengths))
    mean_length = min(workload["n_steps"], max(1, int(round(lengths.mean()))))
    mean, _, _ = _training_epoch(workload, n_threads, variable_length=True,
                                 data=(X, y, np.full_like(lengths, mean_length)))
    epochs = (("paired_fixed_epoch_s", fixed), ("paired_mean_epoch_s", mean),
              ("paired_packed_epoch_s", variable))
    times = {key: [] for key, _ in epochs}
    with threadpool_limits(limits=1, user_api="blas"):
        for _, epoch in epochs:
            epoch()
        for r in range(max(repeats, min_pairs)):
            for key, epoch in (epochs[::-1] if r % 2 else epochs):
                times[key].append(_timed(epoch))
    return times


def estimator_epoch_times(workload, n_threads, repeats, min_pairs=5):
    """Seconds per epoch of RNNRegressor.fit on the workload (fixed length),
    ``estimator_epoch_s``, each beside an epoch of the raw engine
    (``our_times``) run just before or just after it, in turns:
    ``estimator_engine_epoch_s``; ``repeats`` pairs, at least
    ``min_pairs``. A pair samples the same spell of the shared machine,
    whose speed can change within a second; a pair is a fraction of a
    second, so a few more of them cost little, and a spike that hits one
    side of a pair (+57, +68 and +91% in 3 of run 36's 9 pairs, +1 to
    +25% in the others) moves their median less."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from sklearn_rnn import RNNRegressor
    data = workload_data(workload)
    X, y, _ = data
    fits, engine = [], []

    def fit(seed):
        est = RNNRegressor(cell=workload["cell"],
                           hidden_layer_sizes=(workload["hidden"],),
                           batch_size=workload["batch"], max_iter=1, clip_norm=1.0,
                           random_state=seed, n_threads=n_threads, tol=0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y[:, 0])
        return time.perf_counter() - t0

    fit(0)   # warm-up
    for r in range(max(repeats, min_pairs)):
        if r % 2:
            fits.append(fit(r + 1))
        engine.append(our_times(workload, n_threads, 1, data=data,
                                inference=False)["train_epoch_s"][0])
        if not r % 2:
            fits.append(fit(r + 1))
    return dict(estimator_epoch_s=fits, estimator_engine_epoch_s=engine)


def torch_times(name, n_threads, repeats, packed, onnx):
    """Run the torch side in its own process; None if torch is missing."""
    try:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            return None
    except ImportError:
        return None
    cmd = [sys.executable, os.path.join(HERE, "bench_torch.py"), "--workload", name,
           "--threads", str(n_threads), "--repeats", str(repeats), "--json"]
    if packed:
        cmd.append("--packed")
    if onnx:
        cmd.append("--onnx")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _median(values):
    return None if not values else statistics.median(values)


def _collect(into, timings):
    """Add one round's timings (``*_s`` keys: lists of seconds, or one
    median) to the lists in ``into``."""
    for key, value in timings.items():
        if not key.endswith("_s") or value is None:
            continue
        into.setdefault(key, []).extend(
            value if isinstance(value, list) else [value])


def _round_ratios(rounds, anchor_keys, our_key):
    """Per round, (the fastest of the anchors' ``anchor_keys`` in that round)
    / (ours in that round); each round is a dict of lists."""
    ratios = []
    for ours, theirs in rounds:
        anchors = [_median(theirs.get(k)) for k in anchor_keys]
        anchors = [a for a in anchors if a]
        mine = _median(ours.get(our_key))
        if anchors and mine:
            ratios.append(min(anchors) / mine)
    return ratios


def _round_ratio(rounds, anchor_keys, our_key):
    """The median over the rounds of ``_round_ratios``."""
    return _median(_round_ratios(rounds, anchor_keys, our_key))


def run(names, n_threads, repeats, packed, onnx, estimator, rounds=1):
    rows = []
    for name in names:
        w = get_workload(name)
        ours, theirs, per_round = {}, {}, []
        # ours and the anchors take turns, round by round, so that on a
        # shared machine both sample the same busy and quiet spells
        for _ in range(rounds):
            round_ours, round_theirs = {}, {}
            _collect(round_ours, our_times(w, n_threads, repeats))
            if packed:
                _collect(round_ours, our_times(w, n_threads, repeats,
                                               variable_length=True))
                _collect(round_ours, variable_over_fixed_times(w, n_threads,
                                                               repeats))
            if estimator and name == "small-lstm":
                _collect(round_ours, estimator_epoch_times(w, n_threads, repeats))
            _collect(round_theirs, torch_times(name, n_threads, repeats, packed,
                                               onnx) or {})
            per_round.append((round_ours, round_theirs))
            _collect(ours, round_ours)
            _collect(theirs, round_theirs)
        row = dict(workload=name, **{k: _median(v) for k, v in ours.items()})
        for key in ("torch_train_epoch_s", "torch_inference_s",
                    "onnxruntime_inference_s", "torch_packed_train_epoch_s"):
            row[key] = _median(theirs.get(key))
        row["rounds"] = rounds
        # each ratio is the median of the rounds' ratios, which are kept too
        # (results.json), to show how much the machine moved them
        ratios = dict(
            train_ratio=(["torch_train_epoch_s"], "train_epoch_s"),
            inference_ratio=(["torch_inference_s", "onnxruntime_inference_s"],
                             "inference_s"))
        if packed:
            ratios["packed_train_ratio"] = (["torch_packed_train_epoch_s"],
                                            "packed_train_epoch_s")
        for name, (anchor_keys, our_key) in ratios.items():
            per = _round_ratios(per_round, anchor_keys, our_key)
            row[name] = _median(per)
            row[name + "_per_round"] = per
        if packed:
            row["packed_steps_fraction"] = packed_steps_fraction(w)
            # each variable-length epoch over the fixed-length one beside
            # it, the median over the pairs of all the rounds
            pairs = [v / f for r_ours, _ in per_round for v, f in zip(
                r_ours["paired_packed_epoch_s"], r_ours["paired_fixed_epoch_s"])]
            row["packed_over_fixed"] = _median(pairs)
            row["packed_over_fixed_per_pair"] = pairs
            # and over the epoch of equal lengths of as many steps beside it
            pairs = [v / m for r_ours, _ in per_round for v, m in zip(
                r_ours["paired_packed_epoch_s"], r_ours["paired_mean_epoch_s"])]
            row["packed_over_mean"] = _median(pairs)
            row["packed_over_mean_per_pair"] = pairs
        flops = train_flops_per_epoch(w)
        row["train_gflops"] = flops / row["train_epoch_s"] / 1e9
        if row.get("torch_train_epoch_s"):
            row["torch_train_gflops"] = flops / row["torch_train_epoch_s"] / 1e9
        if "estimator_epoch_s" in row:
            # each fit against the raw engine's epoch beside it, the median
            # over the pairs of all the rounds
            pairs = [e / r for r_ours, _ in per_round for e, r in zip(
                r_ours["estimator_epoch_s"], r_ours["estimator_engine_epoch_s"])]
            row["estimator_overhead"] = _median(pairs) - 1
            row["estimator_overhead_per_pair"] = [p - 1 for p in pairs]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def packed_steps_fraction(workload):
    """The variable-length data's real steps over the fixed-length data's
    (its padded steps): what our variable-length epoch would cost, as a
    fraction of the fixed-length one, if the cost followed the real steps."""
    lengths = workload_lengths(workload)
    return float(lengths.sum()) / (len(lengths) * workload["n_steps"])


GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def train_flops_per_epoch(workload):
    """Floating-point operations of one training epoch, counted from the
    GEMMs: per step and sequence, the gates' products cost 2 G (I + H)
    forward (G = gates x hidden), and backward costs twice that (the input
    and recurrent gradients, and the weight gradients). The output layer and
    the element-wise gate math are left out (under 1% here)."""
    G = GATES[workload["cell"]] * workload["hidden"]
    per_row = 3 * 2 * G * (workload["n_features"] + workload["hidden"])
    return per_row * workload["n_sequences"] * workload["n_steps"]


def machine_info(n_threads):
    import numpy
    import scipy
    info = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=platform.platform(),
        processor=_cpu_model(),
        cpu_count=os.cpu_count(),
        threads=n_threads,
        python=platform.python_version(),
        numpy=numpy.__version__,
        scipy=scipy.__version__,
    )
    # versions from the installed metadata: importing torch or onnxruntime
    # would load their threading runtimes into the process that times ours
    for name in ("torch", "onnxruntime"):
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    return info


def _cpu_model():
    """The CPU's model name, with its family and model numbers and its widest
    vector instructions: a virtual machine's name ("AMD EPYC") can stand for
    CPUs of different generations, such as Zen 4 (family 25) and Zen 5 (26)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    name = fields.get("model name", platform.processor())
    flags = fields.get("flags", "").split()
    isa = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
           else None)
    details = [f"family {fields['cpu family']} model {fields['model']}"
               if "cpu family" in fields and "model" in fields else None, isa]
    details = ", ".join(d for d in details if d)
    return f"{name} ({details})" if details else name


def _fmt(value, digits=3, suffix=""):
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _packed_over_fixed(row):
    """Our variable-length epoch over our fixed-length one: paired (see
    ``variable_over_fixed_times``), or from the medians in results of
    runs that did not pair them."""
    if row.get("packed_over_fixed") is not None:
        return row["packed_over_fixed"]
    return row["packed_train_epoch_s"] / row["train_epoch_s"]


def markdown_table(rows, peak=None):
    lines = [
        "| workload | ours train s/epoch | PyTorch train | train ratio "
        "| ours inference s | PyTorch inference | onnxruntime | inference ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {_fmt(r['train_epoch_s'])} | "
            f"{_fmt(r.get('torch_train_epoch_s'))} | "
            f"{_fmt(r['train_ratio'], 2, '×')} | "
            f"{_fmt(r['inference_s'])} | {_fmt(r.get('torch_inference_s'))} | "
            f"{_fmt(r.get('onnxruntime_inference_s'))} | "
            f"{_fmt(r['inference_ratio'], 2, '×')} |")
    packed = [r for r in rows if r.get("packed_train_epoch_s") is not None]
    if packed:
        lines += ["", "Variable-length batches (lengths uniform in 10..100, at most "
                  "the workload's steps: 10..50 for small-lstm), training "
                  "s/epoch; ours against our fixed-length epoch (the median "
                  "over epochs run one beside the other), beside the real "
                  "steps against the padded ones (the cost if it followed the "
                  "real steps exactly), and against our epoch of equal lengths "
                  "of as many real steps (every sequence cut to the mean "
                  "length: the same batches, no padding; 1.00 if differing "
                  "lengths cost nothing beyond their steps):", "",
                  "| workload | ours | PyTorch (packed) | ratio | ours / fixed "
                  "| real / padded steps | ours / equal lengths |",
                  "|---|---|---|---|---|---|---|"]
        for r in packed:
            lines.append(f"| {r['workload']} | {_fmt(r['packed_train_epoch_s'])} | "
                         f"{_fmt(r.get('torch_packed_train_epoch_s'))} | "
                         f"{_fmt(r.get('packed_train_ratio'), 2, '×')} | "
                         f"{_fmt(_packed_over_fixed(r), 2)} | "
                         f"{_fmt(r.get('packed_steps_fraction'), 2)} | "
                         f"{_fmt(r.get('packed_over_mean'), 2)} |")
    if peak:
        lines += ["", f"Training throughput, GFLOP/s (GEMM operations counted "
                  f"analytically), against this machine's SGEMM peak of "
                  f"{peak:.0f} GFLOP/s (NumPy matmul of 2048x2048 float32, same "
                  "threads, same run):", "",
                  "| workload | ours | % of peak | PyTorch | % of peak |",
                  "|---|---|---|---|---|"]
        for r in rows:
            torch_gf = r.get("torch_train_gflops")
            lines.append(
                f"| {r['workload']} | {r['train_gflops']:.0f} | "
                f"{100 * r['train_gflops'] / peak:.0f}% | "
                f"{_fmt(torch_gf, 0)} | "
                f"{'n/a' if torch_gf is None else f'{100 * torch_gf / peak:.0f}%'} |")
    spread = [r for r in rows if len(r.get("train_ratio_per_round") or []) > 1]
    if spread:
        lines += ["", "The ratios of each round (the tables give their median), "
                  "training; inference:", ""]
        for r in spread:
            lines.append(f"* {r['workload']}: " + "; ".join(
                ", ".join(f"{v:.2f}" for v in r.get(key) or [])
                for key in ("train_ratio_per_round", "inference_ratio_per_round")))
    est = [r for r in rows if r.get("estimator_epoch_s") is not None]
    for r in est:
        lines += ["", f"`RNNRegressor.fit` on {r['workload']}: "
                  f"{_fmt(r['estimator_epoch_s'])} s/epoch, "
                  f"{100 * r['estimator_overhead']:+.0f}% against the raw engine "
                  "(the median over fits each timed beside an epoch of the "
                  "raw engine; each pair: "
                  + ", ".join(f"{100 * v:+.0f}%"
                              for v in r["estimator_overhead_per_pair"]) + ")."]
    return "\n".join(lines)


def write_report(markdown_name, lines, json_name, payload):
    """Write a benchmark's markdown ``lines`` and its JSON ``payload`` into
    ``benchmarks/`` (the other benchmarks' ``--write``)."""
    with open(os.path.join(HERE, markdown_name), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(HERE, json_name), "w") as f:
        json.dump(payload, f, indent=1)
    print(f"wrote benchmarks/{markdown_name} and benchmarks/{json_name}")


def write(rows, info):
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(dict(info=info, results=rows), f, indent=2)
    header = (f"Measured {info['date']} on {info['processor']}, {info['cpu_count']} "
              f"cores, {info['threads']} threads, float32; Python {info['python']}, "
              f"NumPy {info['numpy']}, SciPy {info['scipy']}, PyTorch {info['torch']}, "
              f"onnxruntime {info['onnxruntime']}. Ratios are anchor time / our time "
              f"(above 1: we are faster) within each of {info.get('rounds', 1)} "
              "rounds in which ours and the anchors take turns, the median over "
              "the rounds; times are medians of all the rounds' runs.")
    table = header + "\n\n" + markdown_table(rows, info.get("sgemm_peak_gflops"))
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("# Engine benchmark results\n\n"
                "Reproduce with `python benchmarks/bench_engine.py --packed --onnx "
                "--write`.\n\n" + table + "\n")
    readme = os.path.join(HERE, os.pardir, "README.md")
    if os.path.exists(readme):
        text = open(readme).read()
        start, end = "<!-- BENCHMARK START -->", "<!-- BENCHMARK END -->"
        if start in text and end in text:
            before = text.split(start)[0]
            after = text.split(end)[1]
            with open(readme, "w") as f:
                f.write(before + start + "\n" + table + "\n" + end + after)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append",
                        help="workload name (repeatable); default: all")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate ours and the anchors this many times "
                             "per workload (ratios: the median of the rounds' ratios)")
    parser.add_argument("--packed", action="store_true",
                        help="also variable-length training")
    parser.add_argument("--onnx", action="store_true", help="also onnxruntime")
    parser.add_argument("--no-estimator", action="store_true",
                        help="skip the RNNRegressor overhead measurement")
    parser.add_argument("--write", action="store_true",
                        help="write results.json, RESULTS.md and the README table")
    args = parser.parse_args(argv)
    names = args.workload or [w["name"] for w in WORKLOADS]
    info = machine_info(args.threads)
    # measured before and after the workloads, the best of both: on a shared
    # machine a busy spell during one measurement understates the peak
    peak_before = sgemm_peak_gflops(args.threads)
    print(json.dumps(dict(info, sgemm_peak_gflops_before=peak_before)), flush=True)
    info["rounds"] = args.rounds
    rows = run(names, args.threads, args.repeats, args.packed, args.onnx,
               not args.no_estimator, args.rounds)
    info["sgemm_peak_gflops"] = max(peak_before, sgemm_peak_gflops(args.threads))
    print()
    print(markdown_table(rows, info["sgemm_peak_gflops"]))
    if args.write:
        write(rows, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
