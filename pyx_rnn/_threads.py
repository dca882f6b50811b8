"""BLAS held to one thread while kernels run, safely across Python threads.

The kernels call BLAS from their own OpenMP threads, one call per block of
sequences, and must find BLAS single-threaded: otherwise the two kinds of
threads oversubscribe the cores, and OpenBLAS may pick other code paths (and
roundings) from call to call. threadpoolctl's limits are process-wide, so
when several Python threads predict at once, the first one in sets the limit
and the last one out restores it.

The BLAS libraries are found once, at the first use: ``threadpool_limits``
looks through every loaded library at each call (0.7-4 ms, as much as a
whole small batch of predictions), a controller made once limits them in
microseconds. The libraries our code calls (NumPy's and SciPy's, through
``scipy.linalg.cython_blas``) are loaded when ``pyx_rnn`` is imported, so
none of them can be missing from it.
"""

import threading
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

_lock = threading.Lock()
_depth = 0
_limiter = None
_controller = None


@contextmanager
def single_threaded_blas():
    """Hold BLAS to one thread within the block (re-entrant, thread-safe)."""
    global _depth, _limiter, _controller
    with _lock:
        if _depth == 0:
            if _controller is None:
                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
