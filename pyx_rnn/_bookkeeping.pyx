# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""The Python layer's bookkeeping of every batch, in one compiled pass each.

A training batch of variable-length sequences comes with a new packing,
which ``Packing.from_lengths`` sorts and every layer's checks validate, and
the ready-made plans (``network._TrainingPlan``, ``_InferencePlan``) check
at each call that the parameters are laid out as when they were made. In
NumPy each of these is a dozen small calls, 10 to 30 µs a batch; here each
is one pass over a few dozen integers. The checks only say whether all is
well: where it is not, the Python layer finds the problem and names it.
"""
import numpy as np

cimport numpy as cnp

cnp.import_array()


def sort_lengths(const Py_ssize_t[::1] lengths, Py_ssize_t max_steps):
    """``(sorted_lengths, order, batch_sizes, offsets)`` of
    ``packing.Packing`` for sequences of these lengths, or None if one is
    below 1 or above ``max_steps`` (or there are none).

    A counting sort: stable, longest first, as ``np.argsort(-lengths,
    kind="stable")``; ``batch_sizes[t]`` is the number of lengths above
    ``t`` and ``offsets`` its running sum from 0. Time and memory grow with
    the number of sequences and the longest length.
    """
    cdef Py_ssize_t n = lengths.shape[0], b, t, p, n_steps, running
    if n == 0:
        return None
    cdef Py_ssize_t lo = lengths[0], hi = lengths[0]
    for b in range(1, n):
        if lengths[b] < lo:
            lo = lengths[b]
        elif lengths[b] > hi:
            hi = lengths[b]
    if lo < 1 or hi > max_steps:
        return None
    n_steps = hi
    sorted_arr = np.empty(n, dtype=np.intp)
    order_arr = np.empty(n, dtype=np.intp)
    bs_arr = np.empty(n_steps, dtype=np.intp)
    off_arr = np.zeros(n_steps + 1, dtype=np.intp)
    cdef Py_ssize_t[::1] sorted_lengths = sorted_arr, order = order_arr
    cdef Py_ssize_t[::1] batch_sizes = bs_arr, offsets = off_arr
    with nogil:
        # offsets[l]: first the number of sequences of length l
        for b in range(n):
            offsets[lengths[b]] += 1
        running = 0
        for t in range(n_steps - 1, -1, -1):
            running += offsets[t + 1]
            batch_sizes[t] = running
        # then where the next sequence of length l goes: after the longer ones
        offsets[n_steps] = 0
        for t in range(1, n_steps):
            offsets[t] = batch_sizes[t]
        for b in range(n):
            p = offsets[lengths[b]]
            offsets[lengths[b]] = p + 1
            order[p] = b
            sorted_lengths[p] = lengths[b]
        # finally the first row of each step
        offsets[0] = 0
        for t in range(n_steps):
            offsets[t + 1] = offsets[t] + batch_sizes[t]
    return sorted_arr, order_arr, bs_arr, off_arr


def packing_is_valid(const Py_ssize_t[::1] batch_sizes,
                     const Py_ssize_t[::1] offsets, Py_ssize_t max_int):
    """Whether ``batch_sizes`` and ``offsets`` make a packing the kernels
    can read (``_checks._validate_packing`` names what is wrong otherwise):
    at least one step and at most ``max_int`` of them, batch sizes
    non-increasing from at most ``max_int`` down to at least 1, and
    ``offsets`` their running sum from 0, one entry longer."""
    cdef Py_ssize_t T = batch_sizes.shape[0], t
    cdef bint ok = True
    if (T == 0 or T > max_int or offsets.shape[0] != T + 1
            or batch_sizes[0] > max_int or batch_sizes[T - 1] < 1
            or offsets[0] != 0):
        return False
    with nogil:
        for t in range(T):
            # batch sizes are at most max_int (< 2**31): no sum overflows
            if ((t and batch_sizes[t] > batch_sizes[t - 1])
                    or offsets[t + 1] != offsets[t] + batch_sizes[t]):
                ok = False
                break
    return ok


def layout(tuple arrays):
    """Which arrays ``arrays`` are and how they are laid out, as one
    ``bytes``: for each, its address (the same address is the same array
    while the caller keeps a reference to it), its dtype (type and byte
    order), writeable, contiguity and alignment flags, shape and strides.
    None if one is not an ndarray."""
    cdef Py_ssize_t n = len(arrays), i, d, k = 0, size = 0
    cdef cnp.ndarray a
    cdef int flags
    for obj in arrays:
        if not isinstance(obj, cnp.ndarray):
            return None
        size += 4 + 2 * cnp.PyArray_NDIM(<cnp.ndarray> obj)
    out = np.empty(size, dtype=np.intp)
    cdef Py_ssize_t[::1] v = out
    for i in range(n):
        a = <cnp.ndarray> arrays[i]
        flags = cnp.PyArray_FLAGS(a) & (cnp.NPY_ARRAY_WRITEABLE
                                        | cnp.NPY_ARRAY_C_CONTIGUOUS
                                        | cnp.NPY_ARRAY_ALIGNED)
        if cnp.PyArray_ISBYTESWAPPED(a):
            flags |= 1 << 30
        v[k] = <Py_ssize_t> <void*> a
        v[k + 1] = cnp.PyArray_TYPE(a)
        v[k + 2] = flags
        v[k + 3] = cnp.PyArray_NDIM(a)
        k += 4
        for d in range(cnp.PyArray_NDIM(a)):
            v[k] = cnp.PyArray_DIMS(a)[d]
            v[k + 1] = cnp.PyArray_STRIDES(a)[d]
            k += 2
    return out.tobytes()
