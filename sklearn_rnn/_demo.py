"""The demo behind ``python -m sklearn_rnn`` (and the ``sklearn-rnn-demo``
command): three small jobs, each next to a simple baseline, in seconds on
an idle 2-core machine, on data that ships with the dependencies (the series
is generated).

1. Classification: scikit-learn's digits, each 8x8 image read as a sequence
   of 8 rows.
2. Forecasting: a synthetic monthly series (trend, yearly season and
   autocorrelated noise), 12 months ahead with conformal intervals.
3. Text generation: a character model of the dataset descriptions that
   scikit-learn ships, sampled at two temperatures.

Loss curves and the forecast are written as PNG files when matplotlib is
installed.
"""

import argparse
import os
import time
from collections import Counter
from importlib import resources

import numpy as np

__all__ = ["main"]


def _header(title):
    print(f"\n=== {title} " + "=" * max(0, 66 - len(title)), flush=True)


def digits_job(quick, n_threads):
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from . import RNNClassifier

    _header("1. digits: each 8x8 image as a sequence of 8 rows")
    digits = load_digits()
    X = digits.images / 16.0                      # (n, 8 steps, 8 features)
    X_tr, X_te, y_tr, y_te = train_test_split(X, digits.target, test_size=0.25,
                                              stratify=digits.target, random_state=0)
    start = time.perf_counter()
    clf = RNNClassifier(cell="gru", hidden_layer_sizes=(32,),
                        learning_rate_init=0.01, max_iter=3 if quick else 25,
                        random_state=0, n_threads=n_threads, verbose=True)
    clf.fit(X_tr, y_tr)
    took = time.perf_counter() - start
    base = LogisticRegression(max_iter=2000).fit(X_tr.reshape(len(X_tr), -1), y_tr)
    print(f"test accuracy: GRU {clf.score(X_te, y_te):.3f} (fitted in {took:.1f}s)"
          f"  |  logistic regression on the 64 pixels "
          f"{base.score(X_te.reshape(len(X_te), -1), y_te):.3f}")
    return clf


def synthetic_series(n=360, seed=0):
    """Monthly: linear trend, a yearly season, AR(1) noise."""
    rng = np.random.RandomState(seed)
    t = np.arange(n)
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.6 * noise[i - 1] + rng.normal(scale=0.5)
    return 10 + 0.05 * t + 2 * np.sin(2 * np.pi * t / 12) + np.cos(
        2 * np.pi * t / 6) + noise


def forecasting_job(quick, n_threads):
    from . import SequenceForecaster

    _header("2. forecasting: a monthly series, 12 months ahead")
    y = synthetic_series()
    n_test, h, season = 48, 12, 12
    n_train = len(y) - n_test
    origins = np.arange(n_train - 1, len(y) - h)
    truth = np.stack([y[t + 1:t + 1 + h] for t in origins])
    start = time.perf_counter()
    fc = SequenceForecaster(window=36, horizon=h, strategy="seq2seq", difference=1,
                            hidden_layer_sizes=(32,), learning_rate_init=0.005,
                            max_iter=3 if quick else 150, early_stopping=not quick,
                            validation_fraction=0.15, n_iter_no_change=15,
                            random_state=0, n_threads=n_threads, verbose=True)
    fc.fit(y[:n_train])
    took = time.perf_counter() - start
    histories = [y[:t + 1] for t in origins]
    pred = fc.predict(h, history=histories)
    lower, upper = fc.predict_interval(h, 0.9, history=histories)
    naive = np.repeat(y[origins][:, None], h, axis=1)
    seasonal = np.stack([[y[t + k - season] for k in range(1, h + 1)]
                         for t in origins])
    mae = {"RNN seq2seq": np.abs(pred - truth).mean(),
           "naive (last value)": np.abs(naive - truth).mean(),
           "seasonal naive (a year ago)": np.abs(seasonal - truth).mean()}
    print(f"fitted in {took:.1f}s; mean absolute error of 12-month forecasts "
          f"from {len(origins)} origins in the last {n_test} months:")
    for name, value in mae.items():
        print(f"  {name:<28} {value:.3f}")
    covered = np.mean((truth >= lower) & (truth <= upper))
    print(f"  90% conformal intervals cover {covered:.3f} of the held-out values")
    return fc, y, n_train


def _corpus():
    """The dataset descriptions shipped with scikit-learn (reStructuredText)."""
    folder = resources.files("sklearn.datasets").joinpath("descr")
    texts = [p.read_text(encoding="utf-8") for p in sorted(
        folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".rst")]
    return "\n".join(texts)


def text_job(quick, n_threads):
    from . import SequenceForecaster

    _header("3. text generation: characters of scikit-learn's dataset docs")
    text = _corpus()
    if quick:
        text = text[:20000]
    cut = int(0.9 * len(text))
    train, valid = text[:cut], text[cut:]
    # characters of the validation text never seen in training can't be
    # scored: keep those of the training alphabet
    alphabet = set(train)
    valid = "".join(c for c in valid if c in alphabet)
    counts = Counter(train)
    p = np.array([counts[c] for c in valid]) / len(train)
    unigram_bits = float(-np.mean(np.log2(p)))
    start = time.perf_counter()
    lm = SequenceForecaster(window=64, hidden_layer_sizes=(128,), batch_size=32,
                            learning_rate_init=0.01, max_iter=1 if quick else 16,
                            random_state=0, n_threads=n_threads, verbose=True)
    lm.fit(train)
    took = time.perf_counter() - start
    bits = lm.bits_per_symbol(valid)
    print(f"{len(train)} training characters, fitted in {took:.1f}s")
    print(f"validation: {bits:.3f} bits per character  |  character frequencies "
          f"alone: {unigram_bits:.3f}")
    for temperature in (0.5, 1.0):
        sample = lm.sample(240, prompt="The data set", temperature=temperature,
                           random_state=0)
        print(f"\n--- sample at temperature {temperature} ---\nThe data set{sample}")
    return lm


def write_plots(output, models, series):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\nmatplotlib is not installed: no plots (pip install matplotlib)")
        return
    from .plotting import ForecastDisplay, LossCurveDisplay

    os.makedirs(output, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (name, model) in zip(axes, models.items()):
        LossCurveDisplay.from_estimator(model, ax=ax)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(os.path.join(output, "loss_curves.png"), dpi=100)
    fc, y, n_train = series
    fig, ax = plt.subplots(figsize=(9, 4))
    ForecastDisplay.from_estimator(fc, history=y[:n_train], horizon=12,
                                   coverage=0.9, y_true=y[n_train:n_train + 12],
                                   n_history=48, ax=ax)
    ax.set_title("12-month forecast with a 90% conformal interval")
    fig.tight_layout()
    fig.savefig(os.path.join(output, "forecast.png"), dpi=100)
    plt.close("all")
    print(f"\nplots: {os.path.join(output, 'loss_curves.png')} and "
          f"{os.path.join(output, 'forecast.png')}")


def main(argv=None):
    """Run the demo; ``argv`` as on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m sklearn_rnn",
        description="sklearn-rnn demo: classification, forecasting and text "
                    "generation, each against a simple baseline.")
    parser.add_argument("--output", default="sklearn_rnn_demo",
                        help="folder for the PNG plots (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller models, for a smoke test (about a second)")
    parser.add_argument("--n-threads", type=int, default=None,
                        help="OpenMP threads (default: all cores)")
    args = parser.parse_args(argv)

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from . import __version__

    print(f"sklearn-rnn {__version__}: recurrent networks with the scikit-learn API")
    start = time.perf_counter()
    with warnings.catch_warnings():
        # epochs are capped to keep the demo short
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = digits_job(args.quick, args.n_threads)
        series = forecasting_job(args.quick, args.n_threads)
        lm = text_job(args.quick, args.n_threads)
    write_plots(args.output, {"digits (GRU)": clf, "forecast (LSTM)": series[0],
                              "characters (LSTM)": lm}, series)
    print(f"\ndone in {time.perf_counter() - start:.0f}s")
    return 0
