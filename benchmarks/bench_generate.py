"""Generating symbols one at a time: SequenceForecaster.sample against a
PyTorch loop.

A character model (65 symbols, as in tinyshakespeare; an LSTM of 128
units) generates ``--symbols`` symbols, one forward step per symbol from
the state of the step before, each drawn from the softmax of the output.
Ours is ``SequenceForecaster.sample``; PyTorch's is the loop a PyTorch user
writes: ``nn.LSTM`` over a one-hot step, ``nn.Linear``, ``softmax`` and
``torch.multinomial``, under ``torch.inference_mode``. Both on one thread
(a step of one sequence has no work to share), float32, each side in a
fresh process, the two alternated over ``--rounds`` rounds; each side's
time is the best of ``--repeats`` runs within its round, and the ratio
(PyTorch / ours: above 1, we are faster) is the median of the rounds'.

Writes ``benchmarks/GENERATION.md`` with ``--write``.

    python benchmarks/bench_generate.py [--write] [--rounds 5]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

N_SYMBOLS, HIDDEN = 65, 128


def _text(n, seed=0):
    """``n`` characters drawn from 65 symbols (a training text for the
    model; its contents do not matter to the timing)."""
    import numpy as np
    alphabet = [chr(c) for c in range(48, 48 + N_SYMBOLS)]
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(alphabet, n))


def ours(n_symbols, repeats):
    """Best seconds per symbol of ``SequenceForecaster.sample``."""
    import warnings

    from sklearn_rnn import SequenceForecaster
    model = SequenceForecaster(cell="lstm", hidden_layer_sizes=(HIDDEN,),
                               max_iter=1, n_threads=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(_text(2000))
    assert len(model.symbols_) == N_SYMBOLS
    model.sample(50, random_state=0)    # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        model.sample(n_symbols, random_state=r)
        times.append(time.perf_counter() - t0)
    return min(times) / n_symbols


def theirs(n_symbols, repeats):
    """Best seconds per symbol of the PyTorch loop (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(N_SYMBOLS, HIDDEN, batch_first=True)
    head = torch.nn.Linear(HIDDEN, N_SYMBOLS)
    gen = torch.Generator().manual_seed(0)

    def sample(n):
        x, state, out = torch.tensor([0]), None, []
        with torch.inference_mode():
            for _ in range(n):
                step = torch.nn.functional.one_hot(x, N_SYMBOLS).float()
                y, state = lstm(step.view(1, 1, N_SYMBOLS), state)
                p = torch.softmax(head(y[0, -1]), -1)
                x = torch.multinomial(p, 1, generator=gen)
                out.append(int(x))
        return out

    sample(50)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(n_symbols)
        times.append(time.perf_counter() - t0)
    return min(times) / n_symbols


def _child(side, n_symbols, repeats):
    seconds = (ours if side == "ours" else theirs)(n_symbols, repeats)
    print(json.dumps(dict(side=side, seconds=seconds)))


def _run_child(side, n_symbols, repeats):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", side,
         "--symbols", str(n_symbols), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def _versions():
    import numpy as np
    versions = dict(python=platform.python_version(), numpy=np.__version__)
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return versions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.symbols, args.repeats)
        return
    rounds = []
    for _ in range(args.rounds):
        mine = _run_child("ours", args.symbols, args.repeats)
        anchor = _run_child("torch", args.symbols, args.repeats)
        rounds.append((mine, anchor))
        print(json.dumps(dict(ours_us=mine * 1e6,
                              torch_us=None if anchor is None else anchor * 1e6)),
              flush=True)
    ours_us = statistics.median(m for m, _ in rounds) * 1e6
    ratios = [a / m for m, a in rounds if a is not None]
    lines = [
        "# Generating symbols one at a time",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} with `python "
        f"benchmarks/bench_generate.py --write --rounds {args.rounds}` "
        f"({args.symbols} symbols a run, best of {args.repeats} runs in each "
        f"round; {', '.join(f'{k} {v}' for k, v in _versions().items())}), "
        "one thread, float32, on the 2-core machine of `RESULTS.md`. A "
        f"character model of {N_SYMBOLS} symbols, an LSTM of {HIDDEN} units: "
        "`SequenceForecaster.sample` against a PyTorch loop (`nn.LSTM` over a "
        "one-hot step, `nn.Linear`, `softmax`, `torch.multinomial`), each in "
        "a fresh process, alternated.",
        "",
        "| | µs per symbol (median of the rounds) |",
        "|---|---|",
        f"| ours | {ours_us:.1f} |",
    ]
    if ratios:
        torch_us = statistics.median(a for _, a in rounds if a is not None) * 1e6
        lines += [
            f"| PyTorch | {torch_us:.1f} |",
            "",
            f"PyTorch / ours: {statistics.median(ratios):.2f}× (the median of the "
            f"rounds: {', '.join(f'{r:.2f}' for r in ratios)}).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(os.path.join(HERE, "GENERATION.md"), "w") as f:
            f.write(text)
        print("wrote benchmarks/GENERATION.md")


if __name__ == "__main__":
    main()
