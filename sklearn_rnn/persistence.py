"""Safe persistence: ``skops.io``, and a native format of arrays plus JSON.

Pickle (and joblib) can run arbitrary code when loading, so a model file from
an untrusted source must not be unpickled. There are two safe ways to store
sklearn-rnn models:

``skops.io`` (``pip install "sklearn-rnn[skops]"``), the ecosystem's standard
    Fitted estimators, transformers and whole pipelines::

        import skops.io as sio
        from sklearn_rnn.persistence import TRUSTED_TYPES
        sio.dump(model, "model.skops")
        sio.get_untrusted_types(file="model.skops")   # review them
        model = sio.load("model.skops", trusted=TRUSTED_TYPES)

    skops never unpickles; it only rebuilds types that it trusts by default
    (scikit-learn's, NumPy's, builtins) or that the caller trusts explicitly.
    :data:`TRUSTED_TYPES` lists ours: our objects' states are plain data
    (strings, numbers, lists, dicts and arrays), and their ``__setstate__``
    checks them.

:func:`save` / :func:`load`, the native format, with no extra dependency
    A zip archive (an ``.npz``): every array as a ``.npy`` member, read with
    ``np.load(..., allow_pickle=False)``, and the rest (parameters, fitted
    scalars, class labels, vocabularies, the library version) as JSON.
    Objects are rebuilt only from a fixed allow-list of classes
    (:data:`NATIVE_TYPES`: ours, the scikit-learn classes they hold, and
    ``Pipeline``), never by importing a name read from the file. It covers
    RNNRegressor, RNNClassifier, SequenceForecaster, OneHot, TfidfSequence and
    pipelines made of them; other objects (another scikit-learn step, a
    callable analyzer) raise a ValueError at :func:`save` that points to
    skops.

Both formats go through the ``__setstate__`` of our classes, which check the
state: a damaged or edited file raises a ValueError that names the problem,
never a crash or a model that silently predicts something else. The native
format also stores a SHA-256 digest of every member, so any edit made after
saving is reported as such. A model saved with another version of
sklearn-rnn loads with a UserWarning, as with pickle.

Loaded models predict bitwise as the saved ones, and continue training
(``partial_fit``, ``warm_start``) exactly where the saved ones were.

Covering a new estimator (a subclass of the estimators' base class whose
fitted attributes are data, arrays and the types above) takes one line: add
its class to ``_ESTIMATORS``.
"""

import hashlib
import io
import json
import math
import numbers
import os
import tempfile
import warnings
import zipfile

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.feature_extraction.text import (
    CountVectorizer,
    TfidfTransformer,
    TfidfVectorizer,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelBinarizer

from pyx_rnn import __version__
from pyx_rnn.network import Network
from pyx_rnn.optim import SGD, Adam

from ._classifier import RNNClassifier
from ._regressor import RNNRegressor
from ._state import version_message
from .forecast import SequenceForecaster
from .text import OneHot, TfidfSequence

__all__ = ["NATIVE_TYPES", "TRUSTED_TYPES", "load", "save"]


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


# Our estimators and transformers. To cover another estimator (a subclass
# of the estimators' base class, or a transformer, whose state is data,
# arrays and the types below), add its class here: both formats then store
# it, and TRUSTED_TYPES lists it.
_ESTIMATORS = (RNNRegressor, RNNClassifier, SequenceForecaster, OneHot,
               TfidfSequence)
# our types that the estimators hold
_INTERNALS = (Network, Adam, SGD)

#: Fully qualified names of our types, for ``skops.io.load(file,
#: trusted=TRUSTED_TYPES)``. skops trusts scikit-learn's and NumPy's types by
#: default; these are the ones it reports with ``get_untrusted_types`` for a
#: model of ours.
TRUSTED_TYPES = sorted(_type_name(cls) for cls in _ESTIMATORS + _INTERNALS)

# scikit-learn classes that our objects hold (the label binarizer of
# RNNClassifier, the vectorizers of the text transformers), and Pipeline
_SKLEARN_TYPES = (LabelBinarizer, CountVectorizer, TfidfVectorizer,
                  TfidfTransformer, Pipeline)



def _allowed():
    """The allow-list of :func:`load`: fully qualified name -> class."""
    return {_type_name(cls): cls
            for cls in _ESTIMATORS + _INTERNALS + _SKLEARN_TYPES}


#: Fully qualified names of the classes that :func:`load` rebuilds.
NATIVE_TYPES = sorted(_allowed())

FORMAT = "sklearn-rnn"
FORMAT_VERSION = 1
_METADATA = "metadata.json"   # format, versions, digests of the other members
_MODEL = "model.json"         # the object tree; arrays refer to .npy members
# array dtypes the format stores (bool, integers, floats, complex, unicode)
_ARRAY_KINDS = "biufcU"
# scalars and dtypes: bool, integers, floats
_SCALAR_KINDS = "biuf"
_MAX_JSON_BYTES = 1 << 30


# ----------------------------------------------------------------------
# save
# ----------------------------------------------------------------------

def save(obj, file):
    """Save a model in the native format (a zip of ``.npy`` arrays and JSON).

    Parameters
    ----------
    obj : RNNRegressor, RNNClassifier, SequenceForecaster, OneHot, TfidfSequence
        or Pipeline
        Fitted or not. A pipeline's steps must all be of these types.
    file : str, path-like or binary file object
        A path is written atomically: an existing file is replaced only once
        the new one is complete.

    Raises
    ------
    ValueError
        If ``obj`` holds something the format cannot store (another
        scikit-learn step, a callable such as a custom analyzer): the message
        names where it is. Use ``skops.io`` for such models.

    See Also
    --------
    load
    skops.io.dump : with ``trusted=TRUSTED_TYPES`` at load.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn_rnn import OneHot
    >>> from sklearn_rnn.persistence import load, save
    >>> enc = OneHot(analyzer="char").fit(["abc", "cab"])
    >>> path = os.path.join(tempfile.mkdtemp(), "onehot.npz")
    >>> save(enc, path)
    >>> load(path).transform(["bad"]) == enc.transform(["bad"])
    True
    """
    if type(obj) not in _ESTIMATORS + (Pipeline,):
        raise ValueError(
            f"save stores {', '.join(cls.__name__ for cls in _ESTIMATORS)} and "
            f"pipelines of them, not a {type(obj).__name__}; use skops.io or "
            "pickle for other objects")
    encoder = _Encoder()
    tree = encoder.encode(obj, type(obj).__name__)
    model = dict(arrays=encoder.table, root=tree)
    _write_archive(file, model, encoder.arrays)


def _write_archive(file, model, arrays):
    """Write the archive: ``model`` (a JSON-able dict) and the arrays, with
    a metadata member that holds the digests of both."""
    members = {_MODEL: json.dumps(model, allow_nan=False).encode("utf-8")}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, array, allow_pickle=False)
        members[name] = buffer.getvalue()
    metadata = dict(
        format=FORMAT, format_version=FORMAT_VERSION,
        sklearn_rnn_version=__version__,
        sha256={name: hashlib.sha256(data).hexdigest()
                for name, data in members.items()})
    members = {_METADATA: json.dumps(metadata, indent=1).encode("utf-8"),
               **members}
    if isinstance(file, (str, os.PathLike)):
        path = os.fspath(file)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".sklearn-rnn-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                _write_zip(f, members)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    else:
        _write_zip(file, members)


def _write_zip(f, members):
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


class _Encoder:
    """Turns an object tree into JSON-able nodes plus a table of arrays.

    Nodes: JSON primitives (None, bool, int, str, finite float) and lists
    stand for themselves; anything else is a dict with a ``"__type__"``.
    """

    def __init__(self):
        self.arrays = {}   # member name -> array
        self.table = {}    # member name -> {"dtype", "shape"}
        self._names = {}   # id(array) -> member name (shared arrays stay shared)
        self._keep = []    # keeps those ids alive
        self._allowed = _allowed()

    def encode(self, value, path):
        if isinstance(value, np.generic):
            return self._scalar(value, path)
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__type__": "float",
                                                       "value": repr(value)}
        if isinstance(value, np.ndarray):
            return self._array(value, path)
        if isinstance(value, list):
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"__type__": "tuple",
                    "items": [self.encode(v, f"{path}[{i}]")
                              for i, v in enumerate(value)]}
        if isinstance(value, dict):
            return {"__type__": "dict",
                    "items": [[self.encode(k, f"{path} key"),
                               self.encode(v, f"{path}[{k!r}]")]
                              for k, v in value.items()]}
        if isinstance(value, np.dtype):
            return {"__type__": "dtype", "dtype": self._dtype_str(value, path)}
        if isinstance(value, type) and issubclass(value, np.generic):
            return {"__type__": "scalar_type",
                    "dtype": self._dtype_str(np.dtype(value), path)}
        if type(value) is np.random.RandomState:
            return {"__type__": "random_state",
                    "state": self.encode(value.get_state(), f"{path}.get_state()")}
        if _type_name(type(value)) in self._allowed:
            state = value.__getstate__()
            if not isinstance(state, dict):
                raise ValueError(f"cannot save {path}: its state is not a dict")
            return {"__type__": "object", "class": _type_name(type(value)),
                    "state": {"__type__": "dict", "items": [
                        [self.encode(k, f"{path} key"), self.encode(v, f"{path}.{k}")]
                        for k, v in state.items()]}}
        what = ("a function or other callable" if callable(value)
                else f"a {_type_name(type(value))}")
        raise ValueError(
            f"cannot save {path}: it is {what}, which the native format does not "
            "store (it stores data, arrays and the types of "
            "sklearn_rnn.persistence.NATIVE_TYPES only); save this model with "
            "skops.io, or pickle if you trust the reader")

    def _dtype_str(self, dtype, path, kinds=_SCALAR_KINDS):
        if dtype.kind not in kinds:
            raise ValueError(f"cannot save {path}: dtype {dtype} is not stored by "
                             "the native format")
        return dtype.str

    def _scalar(self, value, path):
        if isinstance(value, np.str_):
            return str(value)
        dtype = self._dtype_str(value.dtype, path)
        return {"__type__": "scalar", "dtype": dtype,
                "value": self.encode(value.item(), path)}

    def _array(self, value, path):
        key = id(value)
        if key not in self._names:
            if value.dtype == object:
                return {"__type__": "object_array", "shape": list(value.shape),
                        "items": [self.encode(v, f"{path}[{i}]")
                                  for i, v in enumerate(value.ravel().tolist())]}
            array = np.asarray(value)
            self._dtype_str(array.dtype, path, _ARRAY_KINDS)
            name = f"arrays/{len(self.arrays)}.npy"
            self.arrays[name] = array
            self.table[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
            self._names[key] = name
            self._keep.append(value)
        return {"__type__": "ndarray", "member": self._names[key]}


# ----------------------------------------------------------------------
# load
# ----------------------------------------------------------------------

def load(file):
    """Load a model saved by :func:`save`, without unpickling anything.

    Parameters
    ----------
    file : str, path-like or binary file object

    Returns
    -------
    obj : the saved estimator, transformer or pipeline

    Raises
    ------
    ValueError
        If the file is not a complete sklearn-rnn model file or was changed
        after saving: not a zip archive (truncated or another format), a
        member missing, damaged or added, a digest that does not match,
        invalid JSON, a class outside :data:`NATIVE_TYPES`, an array of
        another shape or dtype than the model needs, or an inconsistent
        fitted state. The message names the problem.

    Warns
    -----
    UserWarning
        If the model was saved with another version of sklearn-rnn.
    """
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{_describe(file)} is not a sklearn-rnn model file: not a "
                         f"zip archive (truncated, or another format): {exc}") from exc
    with zf:
        reader = _Reader(zf, _describe(file))
        return reader.load()


def _describe(file):
    if isinstance(file, (str, os.PathLike)):
        return repr(os.fspath(file))
    return "the file"


class _Reader:
    def __init__(self, zf, where):
        self.zf = zf
        self.where = where
        self.arrays = {}
        self.allowed = _allowed()

    def error(self, message):
        return ValueError(f"{self.where}: {message}")

    def read(self, name, limit):
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise self.error(f"member {name!r} is missing (truncated or edited "
                             "file)") from None
        if info.file_size > limit:
            raise self.error(f"member {name!r} is {info.file_size} bytes, more than "
                             f"the {limit} it can be")
        try:
            return self.zf.read(name)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            # a CRC mismatch, or a member cut short
            raise self.error(f"member {name!r} is damaged: {exc}") from exc

    def load(self):
        metadata = self.json(_METADATA)
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise self.error(f"not a {FORMAT} model file ({_METADATA} does not say "
                             f"format={FORMAT!r})")
        version = metadata.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise self.error(f"{_METADATA}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise self.error(
                f"written in format version {version} by sklearn-rnn "
                f"{metadata.get('sklearn_rnn_version')}; this sklearn-rnn "
                f"{__version__} reads up to version {FORMAT_VERSION}: upgrade it")
        saved = metadata.get("sklearn_rnn_version")
        if not isinstance(saved, str):
            raise self.error(f"{_METADATA}: sklearn_rnn_version must be a string")
        digests = metadata.get("sha256")
        if not isinstance(digests, dict) or _MODEL not in digests:
            raise self.error(f"{_METADATA}: no digests of the members")
        members = set(self.zf.namelist()) - {_METADATA}
        unexpected = sorted(members - set(digests))
        if unexpected:
            raise self.error(f"unexpected members {unexpected} (added after saving)")
        missing = sorted(set(digests) - members)
        if missing:
            raise self.error(f"members {missing} are missing (truncated or edited "
                             "file)")
        self.digests = digests
        model = self.json(_MODEL)
        if not isinstance(model, dict) or set(model) != {"arrays", "root"}:
            raise self.error(f"{_MODEL} must hold 'arrays' and 'root'")
        self.table = self.check_table(model["arrays"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if saved != __version__:
                warnings.warn(version_message(saved), UserWarning)
            obj = self.decode(model["root"], "model")
        if type(obj) not in _ESTIMATORS + (Pipeline,):
            raise self.error(f"the saved object is a {type(obj).__name__}, not an "
                             "estimator or a pipeline")
        # once each: an estimator's own version stamp repeats the file's
        seen = set()
        for w in caught:
            key = (w.category, str(w.message))
            if key not in seen:
                seen.add(key)
                warnings.warn(w.message, stacklevel=3)
        return obj

    def verified(self, name, limit):
        data = self.read(name, limit)
        digest = self.digests.get(name)
        if name != _METADATA and hashlib.sha256(data).hexdigest() != digest:
            raise self.error(f"member {name!r} was changed after saving (its SHA-256 "
                             f"digest does not match {_METADATA})")
        return data

    def json(self, name):
        data = (self.read(name, _MAX_JSON_BYTES) if name == _METADATA
                else self.verified(name, _MAX_JSON_BYTES))
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.error(f"member {name!r} is not valid JSON: {exc}") from exc

    def check_table(self, table):
        if not isinstance(table, dict):
            raise self.error(f"{_MODEL}: 'arrays' must be a dict")
        checked = {}
        for name, spec in table.items():
            if name not in self.digests or name in (_MODEL, _METADATA):
                raise self.error(f"{_MODEL} refers to array member {name!r}, which "
                                 f"is not in {_METADATA}")
            if (not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}
                    or not isinstance(spec["dtype"], str)
                    or not isinstance(spec["shape"], list)
                    or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                               for n in spec["shape"])):
                raise self.error(f"{_MODEL}: invalid description of array {name!r}: "
                                 f"{spec!r}")
            try:
                dtype = np.dtype(spec["dtype"])
            except (TypeError, ValueError) as exc:
                raise self.error(f"{_MODEL}: array {name!r} has an invalid dtype "
                                 f"{spec['dtype']!r}") from exc
            if dtype.kind not in _ARRAY_KINDS:
                raise self.error(f"{_MODEL}: array {name!r} has dtype {dtype}, which "
                                 "the format does not store")
            checked[name] = (dtype, tuple(spec["shape"]))
        return checked

    def array(self, name, path):
        if name in self.arrays:
            return self.arrays[name]
        if not isinstance(name, str) or name not in self.table:
            raise self.error(f"{path} refers to array {name!r}, which {_MODEL} does "
                             "not describe")
        dtype, shape = self.table[name]
        nbytes = dtype.itemsize * math.prod(shape)
        data = self.verified(name, nbytes + 65536)
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise self.error(f"member {name!r} ({path}) is not a valid .npy array: "
                             f"{exc}") from exc
        if not isinstance(array, np.ndarray):
            raise self.error(f"member {name!r} ({path}) is not a .npy array")
        if array.dtype != dtype or array.shape != shape:
            raise self.error(
                f"member {name!r} ({path}) holds an array of dtype {array.dtype} and "
                f"shape {array.shape}, but {_MODEL} says {dtype} and {shape}")
        self.arrays[name] = array
        return array

    def decode(self, node, path):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if not isinstance(node, dict) or "__type__" not in node:
            raise self.error(f"{path}: invalid node {node!r}")
        kind = node["__type__"]
        fields = _NODE_FIELDS.get(kind)
        if fields is None or set(node) != {"__type__", *fields}:
            raise self.error(f"{path}: invalid node of type {kind!r}: {sorted(node)}")
        try:
            return getattr(self, f"_decode_{kind}")(node, path)
        except RecursionError:
            raise self.error(f"{path}: nested too deeply") from None

    def _decode_float(self, node, path):
        if node["value"] not in ("inf", "-inf", "nan"):
            raise self.error(f"{path}: invalid float {node['value']!r}")
        return float(node["value"])

    def _decode_tuple(self, node, path):
        items = node["items"]
        if not isinstance(items, list):
            raise self.error(f"{path}: tuple items must be a list")
        return tuple(self.decode(v, f"{path}[{i}]") for i, v in enumerate(items))

    def _decode_dict(self, node, path, attributes=False):
        items = node["items"]
        if not isinstance(items, list) or not all(
                isinstance(kv, list) and len(kv) == 2 for kv in items):
            raise self.error(f"{path}: dict items must be [key, value] pairs")
        out = {}
        for k, v in items:
            key = self.decode(k, f"{path} key")
            where = f"{path}.{key}" if attributes else f"{path}[{key!r}]"
            value = self.decode(v, where)
            try:
                out[key] = value
            except TypeError:
                raise self.error(f"{path}: unhashable key {key!r}") from None
        return out

    def _dtype(self, node, path, kinds=_SCALAR_KINDS):
        try:
            dtype = np.dtype(node["dtype"])
        except (TypeError, ValueError):
            raise self.error(f"{path}: invalid dtype {node['dtype']!r}") from None
        if dtype.kind not in kinds:
            raise self.error(f"{path}: dtype {dtype} is not allowed here")
        return dtype

    def _decode_dtype(self, node, path):
        return self._dtype(node, path)

    def _decode_scalar_type(self, node, path):
        return self._dtype(node, path).type

    def _decode_scalar(self, node, path):
        dtype = self._dtype(node, path)
        value = self.decode(node["value"], path)
        valid = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float)}[dtype.kind]
        if not isinstance(value, valid) or (
                dtype.kind != "b" and isinstance(value, bool)):
            raise self.error(f"{path}: invalid {dtype} scalar {value!r}")
        try:
            with np.errstate(over="raise"):
                return np.array(value, dtype=dtype)[()]
        except (OverflowError, FloatingPointError):
            raise self.error(f"{path}: {value!r} does not fit in {dtype}") from None

    def _decode_ndarray(self, node, path):
        return self.array(node["member"], path)

    def _decode_object_array(self, node, path):
        shape, items = node["shape"], node["items"]
        if (not isinstance(shape, list) or not isinstance(items, list)
                or not all(isinstance(n, int) and n >= 0 for n in shape)
                or math.prod(shape) != len(items)):
            raise self.error(f"{path}: invalid object array")
        out = np.empty(len(items), dtype=object)
        for i, v in enumerate(items):
            out[i] = self.decode(v, f"{path}[{i}]")
        return out.reshape(shape)

    def _decode_random_state(self, node, path):
        state = self.decode(node["state"], path)
        rs = np.random.RandomState()
        try:
            rs.set_state(state)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise self.error(f"{path}: invalid RandomState state: {exc}") from None
        return rs

    def _decode_object(self, node, path):
        name = node["class"]
        cls = self.allowed.get(name) if isinstance(name, str) else None
        if cls is None:
            raise self.error(
                f"{path}: unknown class {name!r}; the native format loads only "
                f"{NATIVE_TYPES}")
        state = node["state"]
        if not isinstance(state, dict) or state.get("__type__") != "dict":
            raise self.error(f"{path}: the state must be a dict")
        state = self._decode_dict(state, path, attributes=True)
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise self.error(f"{path}: the state must be a dict with string keys")
        obj = cls.__new__(cls)
        try:
            obj.__setstate__(state)
            if isinstance(obj, BaseEstimator):
                missing = sorted(set(obj._get_param_names()) - set(vars(obj)))
                if missing:
                    raise ValueError(f"parameters {missing} are missing")
                obj._validate_params()
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self.error(f"{path}: {exc}") from exc
        return obj


# the fields of each kind of node besides "__type__"
_NODE_FIELDS = {
    "float": ("value",), "tuple": ("items",), "dict": ("items",),
    "dtype": ("dtype",), "scalar_type": ("dtype",), "scalar": ("dtype", "value"),
    "ndarray": ("member",), "object_array": ("shape", "items"),
    "random_state": ("state",), "object": ("class", "state"),
}
