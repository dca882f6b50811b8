"""Digits as sequences: each 8x8 image read row by row by a recurrent network.

Compares the four cells of RNNClassifier with scikit-learn's
LogisticRegression and MLPClassifier on the flattened pixels, on the same
stratified split, and prints test accuracy and fit time.

    python examples/digits.py [--quick] [--plot DIR]
"""

import argparse
import time
import warnings

from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from sklearn_rnn import RNNClassifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs (CI)")
    parser.add_argument("--plot", metavar="DIR",
                        help="write the loss curves to DIR/digits_loss.png")
    args = parser.parse_args(argv)

    digits = load_digits()
    X = digits.images / 16.0          # (1797, 8 steps, 8 features)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    flat_tr, flat_te = X_tr.reshape(len(X_tr), -1), X_te.reshape(len(X_te), -1)
    max_iter = 3 if args.quick else 40

    models = {
        "logistic regression (pixels)": (LogisticRegression(max_iter=2000), True),
        "MLP, 64 units (pixels)": (MLPClassifier((64,), max_iter=max_iter * 5,
                                                 random_state=0), True),
    }
    for cell in ["rnn", "jordan", "lstm", "gru"]:
        models[f"RNNClassifier cell={cell!r}"] = (RNNClassifier(
            cell=cell, hidden_layer_sizes=(64,), learning_rate_init=0.01,
            max_iter=max_iter, random_state=0), False)

    fitted = {}
    print(f"{'model':<34} {'test accuracy':>13} {'fit s':>7}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, (model, flat) in models.items():
            start = time.perf_counter()
            model.fit(flat_tr if flat else X_tr, y_tr)
            took = time.perf_counter() - start
            acc = model.score(flat_te if flat else X_te, y_te)
            fitted[name] = model
            print(f"{name:<34} {acc:13.3f} {took:7.1f}", flush=True)

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sklearn_rnn.plotting import LossCurveDisplay

        fig, ax = plt.subplots()
        for name, model in fitted.items():
            if name.startswith("RNN"):
                LossCurveDisplay.from_estimator(model, ax=ax, label=name)
        ax.legend()
        fig.savefig(f"{args.plot}/digits_loss.png", dpi=100)
        print(f"wrote {args.plot}/digits_loss.png")


if __name__ == "__main__":
    main()
