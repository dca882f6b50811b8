"""OpenMP helpers: was the build threaded, and how many threads to use.

The same source compiles with and without ``-fopenmp``: everything that needs
the OpenMP runtime sits behind ``#ifdef _OPENMP`` in C, so the serial build
never references ``omp.h``.  Modelled on ``sklearn/utils/_openmp_helpers.pyx``.
"""

import os
from numbers import Integral

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define SKLEARN_RNN_OPENMP_ENABLED 1
    static int sklearn_rnn_omp_get_max_threads(void) {
        return omp_get_max_threads();
    }
    #else
    #define SKLEARN_RNN_OPENMP_ENABLED 0
    static int sklearn_rnn_omp_get_max_threads(void) {
        return 1;
    }
    #endif
    """
    bint SKLEARN_RNN_OPENMP_ENABLED
    int sklearn_rnn_omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """Return True if the kernels were compiled with OpenMP support.

    Returns
    -------
    enabled : bool
        False for a serial build (no ``-fopenmp``, or ``SKLEARN_RNN_NO_OPENMP=1``
        at build time); the kernels then always run on one thread.

    Examples
    --------
    >>> from pyx_rnn._openmp import openmp_enabled
    >>> isinstance(openmp_enabled(), bool)
    True
    """
    return bool(SKLEARN_RNN_OPENMP_ENABLED)


def _cpu_count():
    """Usable logical CPUs: honours affinity masks and cgroup CPU quotas."""
    try:
        from joblib import cpu_count
    except ImportError:  # pragma: no cover - joblib is a dependency
        return os.cpu_count() or 1
    return max(1, cpu_count(only_physical_cores=False))


def effective_n_threads(n_threads=None):
    """Number of OpenMP threads a kernel should run with.

    Follows scikit-learn's ``_openmp_effective_n_threads``:

    - ``None``: ``omp_get_max_threads()``, capped by the number of usable
      CPUs unless ``OMP_NUM_THREADS`` is set.  ``omp_get_max_threads()`` is
      read on every call, so a ``threadpoolctl.threadpool_limits(...,
      user_api="openmp")`` block is respected.
    - negative values count back from that maximum, as in joblib: ``-1``
      means all of them, ``-2`` all but one, and so on (never fewer than 1).
    - positive values are returned unchanged.

    Parameters
    ----------
    n_threads : int or None, default=None
        Requested number of threads.

    Returns
    -------
    n_threads : int
        Always 1 when the package was built without OpenMP.

    Raises
    ------
    ValueError
        If ``n_threads`` is 0 or not an integer.

    Examples
    --------
    >>> from pyx_rnn._openmp import effective_n_threads
    >>> effective_n_threads(1)
    1
    >>> effective_n_threads(-1) >= 1
    True
    """
    if n_threads is not None and (
        isinstance(n_threads, bool) or not isinstance(n_threads, Integral)
    ):
        raise ValueError(
            f"n_threads must be None or a non-zero integer, got {n_threads!r}. "
            "Use None or -1 for all cores, or a positive count."
        )
    if n_threads == 0:
        raise ValueError(
            "n_threads=0 is invalid. Use None or -1 for all cores, a positive "
            "integer for that many threads, or -2 for all cores but one."
        )

    if not SKLEARN_RNN_OPENMP_ENABLED:
        return 1

    max_n_threads = sklearn_rnn_omp_get_max_threads()
    if not os.environ.get("OMP_NUM_THREADS"):
        # omp_get_max_threads() may report more threads than the process can
        # really use (e.g. a container limited by a CPU quota).
        max_n_threads = min(max_n_threads, _cpu_count())

    if n_threads is None:
        return max_n_threads
    if n_threads < 0:
        return max(1, max_n_threads + int(n_threads) + 1)
    return int(n_threads)
