"""Sentiment of short reviews: a recurrent network against tf-idf + logistic regression.

The data are the Sentiment Labelled Sentences of Kotzias, Denil, de Freitas
and Smyth, "From Group to Individual Labels using Deep Features", KDD 2015
(UCI Machine Learning Repository): 3000 sentences from Amazon, IMDb and Yelp
reviews, half positive, half negative, one ``sentence<TAB>label`` a line.

Two models, scored with one and the same StratifiedKFold(5, shuffle=True,
random_state=0):

* ``TfidfVectorizer() + LogisticRegression()``, sklearn's defaults: mean
  accuracy over the five folds;
* ``OneHot(min_df=2, max_len=40) + RNNClassifier(cell='lstm',
  bidirectional=True)`` whose embedding size, learning rate and number of
  epochs are chosen by ``GridSearchCV`` over the same folds: its
  ``best_score_``, the mean accuracy of the best candidate (the choice among
  the candidates is made on the folds that score it; it is not nested).

``OneHot`` turns each sentence into its sequence of word ids; the network
learns a word embedding and reads the sentence in both directions.

Run::

    python examples/sentiment.py            # all 3000 sentences (~40 s on 2 cores)
    python examples/sentiment.py --quick    # a third of them, a small grid (CI)

The data are looked for in ``../shared/data/sentiment`` next to the
repository, or in the folder given with ``--data``.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline

from sklearn_rnn import OneHot, RNNClassifier

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sentiment"


def load_sentiment(directory):
    """Sentences and 0/1 labels of the three ``*_labelled.txt`` files."""
    docs, labels = [], []
    for path in sorted(Path(directory).glob("*_labelled.txt")):
        # split on '\n', not splitlines(): imdb_labelled.txt holds U+0085
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                sentence, label = line.rsplit("\t", 1)
                docs.append(sentence)
                labels.append(int(label))
    return docs, np.array(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a third of the sentences, fewer epochs, a small grid")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of the *_labelled.txt files "
                             f"(default {DEFAULT_DATA})")
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args(argv)

    if not sorted(args.data.glob("*_labelled.txt")):
        sys.exit(f"No *_labelled.txt files in {args.data}: download the Sentiment "
                 "Labelled Sentences (UCI Machine Learning Repository) there, or "
                 "pass --data FOLDER.")
    docs, y = load_sentiment(args.data)
    if args.quick:
        keep = np.random.RandomState(0).permutation(len(docs))[:len(docs) // 3]
        docs, y = [docs[i] for i in keep], y[keep]
        grid = {"rnnclassifier__embedding_dim": [32],
                "rnnclassifier__learning_rate_init": [0.02],
                "rnnclassifier__max_iter": [4, 8]}
    else:
        grid = {"rnnclassifier__embedding_dim": [32, 64],
                "rnnclassifier__learning_rate_init": [0.01, 0.02],
                "rnnclassifier__max_iter": [12, 16]}
    print(f"{len(docs)} sentences, {y.mean():.0%} positive")

    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    t = time.perf_counter()
    lr = cross_val_score(make_pipeline(TfidfVectorizer(), LogisticRegression()),
                         docs, y, cv=cv)
    print(f"TfidfVectorizer + LogisticRegression: {lr.mean():.4f} "
          f"(folds {np.round(lr, 3).tolist()}, {time.perf_counter() - t:.1f} s)")

    pipe = make_pipeline(
        OneHot(min_df=2, max_len=40),
        RNNClassifier(cell="lstm", bidirectional=True, hidden_layer_sizes=(16,),
                      random_state=0, n_threads=1))
    search = GridSearchCV(pipe, grid, cv=cv, refit=False, n_jobs=args.n_jobs)
    t = time.perf_counter()
    with warnings.catch_warnings():
        # a fixed number of epochs is one of the tuned parameters
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(docs, y)
    print(f"OneHot + bidirectional LSTM (GridSearchCV): {search.best_score_:.4f} "
          f"with {search.best_params_} ({time.perf_counter() - t:.1f} s)")
    for params, score in zip(search.cv_results_["params"],
                             search.cv_results_["mean_test_score"]):
        print(f"    {score:.4f}  {params}")
    verdict = "reaches" if search.best_score_ >= lr.mean() else "stays below"
    print(f"The RNN {verdict} the accuracy of logistic regression.")


if __name__ == "__main__":
    main()
