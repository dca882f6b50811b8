"""BLAS held to one thread while kernels run, safely across Python threads.

The kernels call BLAS from their own OpenMP threads, one call per block of
sequences, and must find BLAS single-threaded: otherwise the two kinds of
threads oversubscribe the cores, and OpenBLAS may pick other code paths (and
roundings) from call to call. threadpoolctl's limits are process-wide, so
when several Python threads predict at once, the first one in sets the limit
and the last one out restores it.
"""

import threading
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

_lock = threading.Lock()
_depth = 0
_limiter = None


@contextmanager
def single_threaded_blas():
    """Hold BLAS to one thread within the block (re-entrant, thread-safe)."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            _limiter = threadpool_limits(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
