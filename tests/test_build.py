"""Checks on the compiled build itself: OpenMP and the thread-count helper."""

import os

import pytest

import pyx_rnn
from pyx_rnn import _openmp

ALLOW_NO_OPENMP = os.environ.get("SKLEARN_RNN_ALLOW_NO_OPENMP", "") == "1"


def test_package_is_compiled():
    # The extension was importable above; make sure it is a real extension
    # module rather than something shadowing it.
    assert _openmp.__file__.endswith((".so", ".pyd")), _openmp.__file__
    assert os.path.dirname(_openmp.__file__) == os.path.dirname(pyx_rnn.__file__)


def test_openmp_enabled():
    if ALLOW_NO_OPENMP:
        pytest.skip("SKLEARN_RNN_ALLOW_NO_OPENMP=1: a serial build is accepted")
    assert _openmp.openmp_enabled() is True, (
        "pyx_rnn was built without OpenMP. Rebuild with an OpenMP-capable "
        "compiler, or set SKLEARN_RNN_ALLOW_NO_OPENMP=1 to accept a serial build."
    )


def test_effective_n_threads_explicit():
    assert _openmp.effective_n_threads(1) == 1
    expected = 2 if _openmp.openmp_enabled() else 1
    assert _openmp.effective_n_threads(2) == expected


def test_effective_n_threads_all_cores():
    if not _openmp.openmp_enabled():
        assert _openmp.effective_n_threads(-1) == 1
        assert _openmp.effective_n_threads(None) == 1
        return
    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: the OpenMP runtime caps the count")
    from joblib import cpu_count

    n_cpus = cpu_count(only_physical_cores=False)
    assert _openmp.effective_n_threads(-1) == n_cpus
    assert _openmp.effective_n_threads(None) == n_cpus
    # joblib convention: -2 is all cores but one, never below 1.
    assert _openmp.effective_n_threads(-2) == max(1, n_cpus - 1)
    assert _openmp.effective_n_threads(-10_000) == 1


@pytest.mark.parametrize("bad", [0, 1.5, "2", True])
def test_effective_n_threads_invalid(bad):
    with pytest.raises(ValueError, match="n_threads"):
        _openmp.effective_n_threads(bad)


def test_effective_n_threads_respects_threadpoolctl():
    if not _openmp.openmp_enabled():
        pytest.skip("serial build")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        assert _openmp.effective_n_threads(None) == 1
        assert _openmp.effective_n_threads(-1) == 1
