"""Text into sequences: OneHot and TfidfSequence.

Both turn each document into a sequence whose step ``t`` is token ``t`` of the
document. Steps are never dense: a step is a token id and a weight (1 for
OneHot, the token's tf-idf weight in the document for TfidfSequence), held in
a ``TokenSequences`` container that the estimators read as a row gather of
their input weights (or of an embedding) scaled by the weight, which is
exactly the product with the weighted one-hot vector.

Tokenisation, vocabulary selection (``min_df``, ``max_df``, ``max_features``)
and idf come from scikit-learn's ``CountVectorizer`` and ``TfidfVectorizer``.
"""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.utils import murmurhash3_32
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from pyx_rnn import __version__

from . import _state

__all__ = ["OneHot", "TfidfSequence", "TokenSequences"]


class TokenSequences:
    """Sequences of (token id, weight) steps, indexable like an array.

    ``X[i]`` is document ``i`` as ``(ids, weights)``; ``X[indices]`` (an
    integer array, a boolean mask, a list or a slice) is a new
    ``TokenSequences``, so that cross-validation can split it like any X.

    Parameters
    ----------
    ids : ndarray of int, shape (total_steps,)
    weights : ndarray of float, shape (total_steps,)
    lengths : ndarray of int, shape (n_sequences,)
    n_features : int
        Size of the one-hot vectors (vocabulary plus out-of-vocabulary
        buckets): every id is below it.
    """

    def __init__(self, ids, weights, lengths, n_features):
        self.ids = np.asarray(ids, dtype=np.intp)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.lengths = np.asarray(lengths, dtype=np.intp)
        self.n_features = int(n_features)
        self.starts = np.zeros(len(self.lengths), dtype=np.intp)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        if self.ids.shape != self.weights.shape or self.lengths.sum() != len(self.ids):
            raise ValueError("ids, weights and lengths of TokenSequences disagree")

    @property
    def shape(self):
        return (len(self.lengths),)

    @property
    def ndim(self):
        return 1

    def __len__(self):
        return len(self.lengths)

    def __repr__(self):
        return (f"TokenSequences(n_sequences={len(self)}, "
                f"n_features={self.n_features}, total_steps={len(self.ids)})")

    def __getitem__(self, key):
        if isinstance(key, tuple):
            # sklearn's array indexing passes (indices, Ellipsis)
            key = key[0]
        if isinstance(key, numbers.Integral):
            i = int(key)
            if i < 0:
                i += len(self)
            s, n = self.starts[i], self.lengths[i]
            return self.ids[s:s + n], self.weights[s:s + n]
        idx = np.arange(len(self))[key]
        if len(idx):
            rows = np.concatenate([
                np.arange(self.starts[i], self.starts[i] + self.lengths[i])
                for i in idx])
        else:
            rows = np.zeros(0, np.intp)
        return TokenSequences(self.ids[rows], self.weights[rows], self.lengths[idx],
                              self.n_features)

    def __eq__(self, other):
        return (isinstance(other, TokenSequences)
                and self.n_features == other.n_features
                and np.array_equal(self.lengths, other.lengths)
                and np.array_equal(self.ids, other.ids)
                and np.array_equal(self.weights, other.weights))

    __hash__ = None

    def to_dense(self):
        """The one-hot (weighted) steps as a list of dense arrays.

        Only for small vocabularies: each step becomes a vector of
        ``n_features`` entries.
        """
        out = []
        for i in range(len(self)):
            ids, w = self[i]
            steps = np.zeros((len(ids), self.n_features))
            steps[np.arange(len(ids)), ids] = w
            out.append(steps)
        return out


class _TextSequencer(TransformerMixin, BaseEstimator):
    """Shared logic: vocabulary, tokenisation, ids, truncation."""

    _parameter_constraints = {
        "analyzer": [StrOptions({"word", "char"}), callable],
        "lowercase": ["boolean"],
        "token_pattern": [str, None],
        "stop_words": [StrOptions({"english"}), list, None],
        "max_features": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "min_df": [Interval(numbers.Integral, 1, None, closed="left"),
                   Interval(numbers.Real, 0, 1, closed="both")],
        "max_df": [Interval(numbers.Integral, 1, None, closed="left"),
                   Interval(numbers.Real, 0, 1, closed="both")],
        "vocabulary": ["array-like", dict, None],
        "n_oov_buckets": [Interval(numbers.Integral, 0, None, closed="left")],
        "max_len": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "truncation": [StrOptions({"pre", "post"})],
    }

    def __init__(self, *, analyzer="word", lowercase=True, token_pattern=None,
                 stop_words=None, max_features=None, min_df=1, max_df=1.0,
                 vocabulary=None, n_oov_buckets=1, max_len=None, truncation="pre"):
        self.analyzer = analyzer
        self.lowercase = lowercase
        self.token_pattern = token_pattern
        self.stop_words = stop_words
        self.max_features = max_features
        self.min_df = min_df
        self.max_df = max_df
        self.vocabulary = vocabulary
        self.n_oov_buckets = n_oov_buckets
        self.max_len = max_len
        self.truncation = truncation

    def _vectorizer_params(self):
        analyzer = self.analyzer
        params = dict(lowercase=self.lowercase, max_features=self.max_features,
                      min_df=self.min_df, max_df=self.max_df,
                      vocabulary=self.vocabulary, ngram_range=(1, 1))
        if callable(analyzer):
            params["analyzer"] = analyzer
        else:
            params["analyzer"] = analyzer
            if analyzer == "word":
                params["stop_words"] = self.stop_words
                if self.token_pattern is not None:
                    params["token_pattern"] = self.token_pattern
        return params

    def _check_documents(self, X):
        if isinstance(X, str):
            raise ValueError("X is a single string; pass an iterable of documents, "
                             "e.g. [text]")
        docs = list(X)
        for i, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise TypeError(f"document {i} is a {type(doc).__name__}, not a "
                                "string; pass an iterable of strings")
        return docs

    def _fit_vocabulary(self, vectorizer, docs):
        self._validate_params()
        if not docs:
            raise ValueError("X has no documents; at least one is required")
        vectorizer.fit(docs)
        self._vectorizer = vectorizer
        self.vocabulary_ = dict(vectorizer.vocabulary_)
        tokens = np.empty(len(self.vocabulary_), dtype=object)
        for token, i in self.vocabulary_.items():
            tokens[i] = token
        self._tokens = tokens
        self.n_features_out_ = len(tokens) + self.n_oov_buckets
        self.n_features_in_ = 1
        self._sklearn_rnn_version = __version__
        return self

    # the vectorizer class a fitted transformer holds
    _vectorizer_class = CountVectorizer

    def __setstate__(self, state):
        """Restore a saved state, checking the fitted part of it.

        Warns if the transformer was saved with another version of
        sklearn-rnn.

        Raises
        ------
        ValueError
            If the vocabulary, the token list, the feature count or the idf
            disagree (as a damaged or edited file gives).
        """
        if not isinstance(state, dict):
            raise _state.invalid(self, "the state must be a dict")
        _state.warn_if_other_version(state.get("_sklearn_rnn_version"))
        super().__setstate__(state)
        if "vocabulary_" in self.__dict__:
            self._check_fitted_state()

    def _check_fitted_state(self):
        vocab = self.vocabulary_
        if not isinstance(vocab, dict) or not all(
                isinstance(t, str) and isinstance(i, numbers.Integral)
                for t, i in vocab.items()):
            raise _state.invalid(self, "vocabulary_ must map tokens (str) to ids")
        tokens = _state.check_array(self, "_tokens", self.__dict__.get("_tokens"),
                                    shape=(len(vocab),))
        if sorted(vocab.values()) != list(range(len(vocab))) or any(
                tokens[i] != t for t, i in vocab.items()):
            raise _state.invalid(self, "vocabulary_ and _tokens disagree: the ids "
                                       "must be 0 .. n_tokens - 1, in _tokens' order")
        n_oov = _state.check_int(self, "n_oov_buckets", self.n_oov_buckets)
        n_out = _state.check_int(self, "n_features_out_",
                                 self.__dict__.get("n_features_out_"))
        if n_out != len(vocab) + n_oov:
            raise _state.invalid(self, f"n_features_out_={n_out}, expected "
                                       f"{len(vocab)} tokens + {n_oov} buckets")
        if not isinstance(self.__dict__.get("_vectorizer"), self._vectorizer_class):
            raise _state.invalid(self, f"_vectorizer must be a "
                                       f"{self._vectorizer_class.__name__}")

    def _token_ids(self, tokens):
        """Ids of a document's tokens; unknown tokens hash into the buckets
        (dropped when there are none)."""
        vocab = self.vocabulary_
        V = len(vocab)
        ids = []
        for token in tokens:
            i = vocab.get(token)
            if i is None:
                if not self.n_oov_buckets:
                    continue
                hashed = murmurhash3_32(str(token), seed=0, positive=True)
                i = V + hashed % self.n_oov_buckets
            ids.append(i)
        return ids

    def _truncate(self, values):
        if self.max_len is None or len(values) <= self.max_len:
            return values
        # 'pre' drops from the start (keeps the end of the text), as Keras
        if self.truncation == "pre":
            return values[-self.max_len:]
        return values[:self.max_len]

    def _sequences(self, docs, weight_fn):
        analyze = self._vectorizer.build_analyzer()
        all_ids, all_weights, lengths = [], [], []
        for doc in docs:
            ids = self._truncate(self._token_ids(analyze(doc)))
            if not ids:
                # an empty document is one step of weight 0: a zero input
                ids, weights = [0], [0.0]
            else:
                weights = weight_fn(np.asarray(ids, dtype=np.intp))
            all_ids.extend(ids)
            all_weights.extend(np.asarray(weights, dtype=np.float64).tolist())
            lengths.append(len(ids))
        return TokenSequences(np.asarray(all_ids, np.intp), np.asarray(all_weights),
                              np.asarray(lengths, np.intp), self.n_features_out_)

    def inverse_transform(self, X):
        """Tokens of every sequence (out-of-vocabulary steps become
        ``'<oov_k>'``, zero-weight padding of empty documents is dropped)."""
        check_is_fitted(self, "vocabulary_")
        if not isinstance(X, TokenSequences):
            raise TypeError("inverse_transform takes the TokenSequences that "
                            "transform returns")
        names = self.get_feature_names_out()
        out = []
        for i in range(len(X)):
            ids, w = X[i]
            keep = ~((w == 0) & (len(ids) == 1))
            out.append(np.asarray(names[ids[keep]], dtype=object))
        return out

    def get_feature_names_out(self, input_features=None):
        """Vocabulary tokens, then the out-of-vocabulary buckets."""
        check_is_fitted(self, "vocabulary_")
        oov = [f"<oov_{k}>" for k in range(self.n_oov_buckets)]
        return np.asarray(list(self._tokens) + oov, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = True
        return tags


class OneHot(_TextSequencer):
    """Turn documents into sequences of one-hot token vectors.

    Step ``t`` of document ``d`` is the one-hot vector of its token ``t`` (a
    word or a character), held sparsely as a token id with weight 1. Unknown
    tokens go to ``n_oov_buckets`` hashed buckets after the vocabulary.

    Parameters
    ----------
    analyzer : {'word', 'char'} or callable, default='word'
        Tokens are words (sklearn's ``token_pattern``) or characters; a
        callable maps a document to its list of tokens.
    lowercase : bool, default=True
    token_pattern : str, default=None
        Regular expression of a word (sklearn's default when None).
    stop_words : 'english', list or None, default=None
        Words left out ('word' analyzer only).
    max_features : int, default=None
        Keep the most frequent tokens only.
    min_df, max_df : int or float, default=1 and 1.0
        Document-frequency limits, as in ``CountVectorizer``.
    vocabulary : dict or iterable, default=None
        A fixed vocabulary instead of one learned from the data.
    n_oov_buckets : int, default=1
        Hashed buckets for out-of-vocabulary tokens (0: drop them).
    max_len : int, default=None
        Keep at most this many steps per document.
    truncation : {'pre', 'post'}, default='pre'
        Drop steps from the start ('pre', keeping the end) or the end.

    Attributes
    ----------
    vocabulary_ : dict
        Token to id.
    n_features_out_ : int
        Size of each step's one-hot vector: vocabulary plus buckets.

    Examples
    --------
    >>> from sklearn_rnn import OneHot
    >>> enc = OneHot(analyzer="char").fit(["abc", "cab"])
    >>> X = enc.transform(["bad"])
    >>> X[0][0].tolist()
    [1, 0, 3]
    >>> enc.inverse_transform(X)[0].tolist()
    ['b', 'a', '<oov_0>']
    """

    def fit(self, X, y=None):
        """Learn the vocabulary of the documents X."""
        docs = self._check_documents(X)
        return self._fit_vocabulary(CountVectorizer(**self._vectorizer_params()), docs)

    def transform(self, X):
        """Documents to ``TokenSequences`` of one-hot steps (weight 1)."""
        check_is_fitted(self, "vocabulary_")
        docs = self._check_documents(X)
        return self._sequences(docs, lambda ids: np.ones(len(ids)))


class TfidfSequence(_TextSequencer):
    """Turn documents into sequences of tf-idf-weighted one-hot vectors.

    As :class:`OneHot`, but step ``t`` is scaled by the tf-idf weight of its
    token in the document, ``tf(w, d) * idf(w)``, with sklearn's idf
    (``smooth_idf``, ``sublinear_tf``) and, by default, the l2 normalisation
    of each document's tf-idf vector, as ``TfidfVectorizer`` computes them.
    Out-of-vocabulary buckets get the largest idf of the vocabulary.

    Parameters
    ----------
    norm : {'l2', 'l1'} or None, default='l2'
    use_idf, smooth_idf, sublinear_tf : bool
        As in ``TfidfVectorizer``.
    **other parameters :
        As for :class:`OneHot`.

    Attributes
    ----------
    vocabulary_ : dict
    idf_ : ndarray of shape (n_features_out_,)
    n_features_out_ : int

    Examples
    --------
    >>> from sklearn_rnn import TfidfSequence
    >>> tf = TfidfSequence().fit(["the cat sat", "the dog sat", "a cat ran"])
    >>> ids, weights = tf.transform(["the cat"])[0]
    >>> [tf.get_feature_names_out()[i] for i in ids]
    ['the', 'cat']
    >>> weights.round(3).tolist()
    [0.707, 0.707]
    """

    _parameter_constraints = {
        **_TextSequencer._parameter_constraints,
        "norm": [StrOptions({"l1", "l2"}), None],
        "use_idf": ["boolean"],
        "smooth_idf": ["boolean"],
        "sublinear_tf": ["boolean"],
    }

    def __init__(self, *, analyzer="word", lowercase=True, token_pattern=None,
                 stop_words=None, max_features=None, min_df=1, max_df=1.0,
                 vocabulary=None, n_oov_buckets=1, max_len=None, truncation="pre",
                 norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False):
        super().__init__(
            analyzer=analyzer, lowercase=lowercase, token_pattern=token_pattern,
            stop_words=stop_words, max_features=max_features, min_df=min_df,
            max_df=max_df, vocabulary=vocabulary, n_oov_buckets=n_oov_buckets,
            max_len=max_len, truncation=truncation)
        self.norm = norm
        self.use_idf = use_idf
        self.smooth_idf = smooth_idf
        self.sublinear_tf = sublinear_tf

    def fit(self, X, y=None):
        """Learn the vocabulary and the idf of the documents X."""
        docs = self._check_documents(X)
        vec = TfidfVectorizer(norm=self.norm, use_idf=self.use_idf,
                              smooth_idf=self.smooth_idf,
                              sublinear_tf=self.sublinear_tf,
                              **self._vectorizer_params())
        self._fit_vocabulary(vec, docs)
        if self.use_idf:
            idf = vec.idf_
            oov = np.full(self.n_oov_buckets, idf.max() if idf.size else 1.0)
            self.idf_ = np.concatenate([idf, oov])
        else:
            self.idf_ = np.ones(self.n_features_out_)
        return self

    _vectorizer_class = TfidfVectorizer

    def _check_fitted_state(self):
        super()._check_fitted_state()
        idf = _state.check_array(self, "idf_", self.__dict__.get("idf_"),
                                 shape=(self.n_features_out_,), dtype=np.float64)
        if np.any(idf <= 0):
            raise _state.invalid(self, "idf_ must be positive")

    def _weights(self, ids):
        # tf-idf of each distinct token of the document, normalised over the
        # distinct tokens as TfidfVectorizer does, then read back per step
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        tf = counts.astype(np.float64)
        if self.sublinear_tf:
            tf = 1 + np.log(tf)
        weight = tf * self.idf_[uniq]
        if self.norm == "l2":
            weight /= np.sqrt(np.sum(weight ** 2))
        elif self.norm == "l1":
            weight /= np.sum(np.abs(weight))
        return weight[inverse]

    def transform(self, X):
        """Documents to ``TokenSequences`` of tf-idf-weighted steps."""
        check_is_fitted(self, "vocabulary_")
        docs = self._check_documents(X)
        return self._sequences(docs, self._weights)
