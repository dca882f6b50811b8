"""The kernels of the narrower instruction sets, run on this CPU.

The packed products (``pyx_rnn/_pgemm.h``) and the gate functions
(``pyx_rnn/_vecmath.h``) are compiled for AVX-512, for AVX2 with FMA and for
the baseline, and each module picks the widest that the CPU and the
environment allow when it is loaded (``pyx_rnn/_isa.h``):
``SKLEARN_RNN_NO_AVX512`` leaves AVX-512 aside, ``SKLEARN_RNN_NO_AVX2`` both
(the baseline, as on CPUs without AVX2 and on other architectures). Most
laptops and desktops have AVX2 without AVX-512, so a machine with AVX-512
would otherwise test none of what they run.

1. The modules pick what the CPU and the environment say.
2. The kernel tests pass again in a process told to leave each wider set
   that this CPU has aside.
3. float32 results are the same bits with AVX2 as with AVX-512: the gate
   functions over every sampled float, and whole networks' outputs and
   gradients (LSTM, GRU, Elman; 1 and 2 threads). The baseline's (libmvec's
   gate functions, and multiply-adds fused or not, as the compiler chooses)
   and float64's (libmvec's functions of each width) agree to rounding.
"""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

CAPS = ("SKLEARN_RNN_NO_AVX512", "SKLEARN_RNN_NO_AVX2")
#: the kernel tests that a narrower instruction set runs again
KERNEL_TESTS = ("test_cells.py", "test_numerics.py", "test_network.py",
                "test_reference.py", "test_isa.py")

DISPATCHED = sys.platform == "linux" and platform.machine() == "x86_64"
needs_dispatch = pytest.mark.skipif(
    not DISPATCHED, reason="the per-instruction-set kernels are for x86-64 with GCC")


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _expected_isa():
    """The packed products' instruction set this process should run: 2
    (AVX-512), 1 (AVX2 and FMA) or 0 (baseline)."""
    cpu = np._core._multiarray_umath.__cpu_features__
    if cpu["AVX512F"] and not _flag("SKLEARN_RNN_NO_AVX512") and not _flag(
            "SKLEARN_RNN_NO_AVX2"):
        return 2
    return 1 if cpu["AVX2"] and cpu["FMA3"] and not _flag("SKLEARN_RNN_NO_AVX2") else 0


def _capped():
    """Whether this process was told to leave an instruction set aside (it
    is then itself one of the narrower runs)."""
    return any(_flag(name) for name in CAPS)


def _run(cap, args, cwd):
    """Run ``python args`` with the environment variable ``cap`` set (None:
    no cap), importing the package under test (an installed copy or a build
    in place, whatever the child's working directory puts on sys.path)."""
    import pyx_rnn
    where = os.path.dirname(os.path.dirname(os.path.abspath(pyx_rnn.__file__)))
    env = {k: v for k, v in os.environ.items() if k not in CAPS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    if cap is not None:
        env[cap] = "1"
    return subprocess.run([sys.executable, *args], env=env, capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def _narrower(cap):
    """Skip unless this CPU has the instruction set that ``cap`` leaves
    aside, and this process is not capped itself."""
    if not DISPATCHED:
        pytest.skip("the per-instruction-set kernels are for x86-64 with GCC")
    if _capped():
        pytest.skip("a narrower run already")
    cpu = np._core._multiarray_umath.__cpu_features__
    if not (cpu["AVX512F"] if cap == "SKLEARN_RNN_NO_AVX512" else cpu["AVX2"]):
        pytest.skip("this CPU runs that path already")


@needs_dispatch
def test_instruction_sets_follow_the_cpu_and_the_environment():
    from pyx_rnn import _cells, _dense, _jordan
    isa = _expected_isa()
    assert _cells.PGEMM_ISA == _dense.PGEMM_ISA == _jordan.PGEMM_ISA == isa
    assert _cells.VECTOR_WIDTH == {2: 16, 1: 8, 0: 0}[isa]


@pytest.mark.parametrize("cap", CAPS)
def test_kernel_tests_pass_with_a_narrower_instruction_set(cap, tmp_path):
    """The kernel tests (outputs and gradients against the NumPy references
    and finite differences, the one-pass steps against the loops, the
    packed products' order of summation, the gate functions' accuracy) in a
    process whose kernels are those of AVX2 or of the baseline."""
    _narrower(cap)
    here = os.path.dirname(os.path.abspath(__file__))
    done = _run(cap, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                      *(os.path.join(here, name) for name in KERNEL_TESTS)],
                tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout


# The sigmoid and the tanh of the floats in argv[1], saved beside it.
GATES = """
import sys, numpy as np
from pyx_rnn import _cells
x = np.load(sys.argv[1])
for sig in (True, False):
    y = x.copy()
    _cells.gate_activation(y, sig)
    np.save(sys.argv[1][:-4] + str(sig) + ".npy", y)
"""


def test_float32_gates_are_the_same_bits_with_avx2_and_avx512(tmp_path):
    """Every float32 value through the gate functions of 16 and of 8 lanes
    (one in 2^12 of all floats, and the values of [-20, 20] where the gates
    are neither 0 nor +-1)."""
    _narrower("SKLEARN_RNN_NO_AVX512")
    from pyx_rnn import _cells
    assert _cells.VECTOR_WIDTH == 16
    x = np.concatenate([
        np.arange(0, 2**32, 4093, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.linspace(-20, 20, 200_001, dtype=np.float32)])
    path = str(tmp_path / "x.npy")
    np.save(path, x)
    done = _run("SKLEARN_RNN_NO_AVX512", ["-c", GATES, path], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for sig in (True, False):
        y = x.copy()
        _cells.gate_activation(y, sig)
        assert_array_equal(y, np.load(tmp_path / f"x{sig}.npy"))


# Outputs and parameter gradients of two-layer networks on a batch of
# variable lengths, saved to argv[1]: 37 units (the gate functions' loops
# with a remainder) and 128 (whole vectors, the one-pass steps).
NETWORKS = """
import sys, numpy as np
from pyx_rnn import _cells
from pyx_rnn.network import Network
from pyx_rnn.packing import Packing
out = {"isa": np.array(_cells.PGEMM_ISA)}
for dtype in ("float32", "float64"):
    for cell in ("lstm", "gru", "rnn"):
        for hidden in (37, 128):
            rng = np.random.default_rng(hidden)
            net = Network(cell, 5, (hidden, hidden), 2, dtype=dtype)
            net.init_weights(rng)
            lengths = rng.integers(1, 30, size=23)
            packing = Packing.from_lengths(lengths)
            X = rng.standard_normal((int(lengths.sum()), 5)).astype(dtype)
            y = rng.standard_normal((23, 2)).astype(dtype)
            for n_threads in (1, 2):
                key = f"{dtype} {cell} {hidden} {n_threads}"
                out[key + " Y"] = net.forward(X, packing, n_threads=n_threads)[1]
                net.loss_gradient(X, packing, y, "squared_error",
                                  n_threads=n_threads)
                out[key + " grads"] = net.grads.copy()
np.savez(sys.argv[1], **out)
"""


def _networks(cap, tmp_path):
    path = tmp_path / f"{cap}.npz"
    done = _run(cap, ["-c", NETWORKS, str(path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(path)


@pytest.mark.parametrize("cap", CAPS)
def test_networks_agree_across_instruction_sets(cap, tmp_path):
    """float32 networks give the same bits with AVX2 as with AVX-512; the
    baseline's and float64's agree to rounding (a kernel that dropped a
    row, a step or a panel would be far outside)."""
    _narrower(cap)
    wide, narrow = _networks(None, tmp_path), _networks(cap, tmp_path)
    assert int(wide["isa"]) > int(narrow["isa"])
    keys = [k for k in wide.files if k != "isa"]
    assert len(keys) == 2 * 3 * 2 * 2 * 2
    for key in keys:
        a, b = wide[key], narrow[key]
        assert a.dtype == b.dtype == np.dtype(key.split()[0])
        if key.startswith("float32") and cap == "SKLEARN_RNN_NO_AVX512":
            assert_array_equal(b, a, err_msg=key)
        else:
            tol = 1e-5 if key.startswith("float32") else 1e-13
            assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max(), err_msg=key)
