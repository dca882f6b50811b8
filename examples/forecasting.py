"""Forecast a real series with SequenceForecaster, against naive baselines.

Monthly CO2 at Mauna Loa (1958-2001, ``--dataset co2``) or yearly sunspot
numbers (1700-2008, ``--dataset sunspots``), both shipped with statsmodels
(an optional dependency: ``pip install statsmodels``).

The last part of the series is held out. From every origin in it the models
forecast ``horizon`` steps ahead knowing only the past (rolling origin), and
the script prints the mean absolute error of each model next to two
baselines:

* naive: the last value, repeated;
* seasonal naive: the value one season earlier (12 months; 11 years for the
  sunspot cycle).

It fits the three multi-step strategies (recursive, direct, seq2seq) and
reports the empirical coverage of the 90% conformal intervals on the held-out
part. ``--quick`` runs a small version in seconds (used by CI).

    python examples/forecasting.py [--dataset co2|sunspots] [--quick] [--plot DIR]
"""

import argparse
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_rnn import SequenceForecaster

DATASETS = {
    # name: (season, horizon, window, test steps, forecaster options)
    "co2": (12, 12, 36, 60, dict(difference=1)),
    "sunspots": (11, 5, 22, 40, dict()),
}


def load(name):
    try:
        import statsmodels.api as sm
    except ImportError:
        sys.exit("this example reads its data from statsmodels: "
                 "pip install statsmodels")
    if name == "co2":
        weekly = sm.datasets.co2.load_pandas().data["co2"]
        # weekly with gaps: monthly means, the few empty months carried forward
        monthly = weekly.resample("MS").mean().ffill()
        return monthly.to_numpy(), monthly.index
    data = sm.datasets.sunspots.load_pandas().data
    return data["SUNACTIVITY"].to_numpy(), data["YEAR"].astype(int).to_numpy()


def rolling_origins(n_train, n, horizon):
    """Origins (index of the last known step) whose next `horizon` steps are
    all in the held-out part."""
    return np.arange(n_train - 1, n - horizon)


def baselines(y, origins, horizon, season):
    naive = np.stack([np.repeat(y[t], horizon) for t in origins])
    # seasonal naive: step t + k takes the value one season before it
    seasonal = np.stack([[y[t + k - season * ((k - 1) // season + 1)]
                          for k in range(1, horizon + 1)] for t in origins])
    return {"naive": naive, f"seasonal naive (m={season})": seasonal}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="co2")
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast run (CI)")
    parser.add_argument("--plot", metavar="DIR",
                        help="write forecast and loss-curve PNGs to DIR "
                             "(needs matplotlib)")
    args = parser.parse_args(argv)
    # --quick caps the epochs; early stopping ends the full runs
    warnings.simplefilter("ignore", ConvergenceWarning)

    y, index = load(args.dataset)
    season, horizon, window, n_test, options = DATASETS[args.dataset]
    n = len(y)
    n_train = n - n_test
    origins = rolling_origins(n_train, n, horizon)
    truth = np.stack([y[t + 1:t + 1 + horizon] for t in origins])
    print(f"{args.dataset}: {n} steps, training on the first {n_train}, "
          f"forecasting {horizon} steps ahead from {len(origins)} origins in the "
          f"last {n_test}")

    results = {name: np.mean(np.abs(pred - truth))
               for name, pred in baselines(y, origins, horizon, season).items()}
    coverage = {}
    max_iter = 5 if args.quick else 300
    fitted = {}
    for strategy in ["recursive", "direct", "seq2seq"]:
        start = time.perf_counter()
        fc = SequenceForecaster(
            window=window, horizon=horizon, strategy=strategy,
            hidden_layer_sizes=(32,), learning_rate_init=0.005,
            max_iter=max_iter, early_stopping=not args.quick,
            validation_fraction=0.15, n_iter_no_change=20, random_state=0,
            **options)
        fc.fit(y[:n_train])
        histories = [y[:t + 1] for t in origins]
        pred = fc.predict(horizon, history=histories)
        lower, upper = fc.predict_interval(horizon, coverage=0.9,
                                           history=histories)
        results[f"RNN {strategy}"] = np.mean(np.abs(pred - truth))
        coverage[strategy] = np.mean((truth >= lower) & (truth <= upper))
        fitted[strategy] = fc
        print(f"  {strategy:<9} fitted in {time.perf_counter() - start:5.1f}s "
              f"({fc.n_iter_} epochs)")

    print(f"\nmean absolute error of {horizon}-step forecasts "
          "(rolling origin, held-out part):")
    best = min(results.values())
    for name, mae in results.items():
        mark = "  <- best" if mae == best else ""
        print(f"  {name:<26} {mae:8.3f}{mark}")
    print("\nempirical coverage of the 90% conformal intervals:")
    for strategy, cov in coverage.items():
        print(f"  RNN {strategy:<22} {cov:8.3f}")

    if args.plot:
        from sklearn_rnn.plotting import ForecastDisplay, LossCurveDisplay

        best_strategy = min(coverage, key=lambda s: results[f"RNN {s}"])
        fc = fitted[best_strategy]
        disp = ForecastDisplay.from_estimator(
            fc, history=y[:n_train], horizon=horizon, coverage=0.9,
            y_true=y[n_train:n_train + horizon], n_history=4 * season)
        disp.figure_.savefig(f"{args.plot}/forecast_{args.dataset}.png", dpi=100)
        curves = LossCurveDisplay.from_estimator(fc)
        curves.figure_.savefig(f"{args.plot}/loss_{args.dataset}.png", dpi=100)
        print(f"\nplots written to {args.plot}/")


if __name__ == "__main__":
    main()
