"""The process that runs raytf: TensorFlow's thread pools, logs and XLA cache for the actors and the
driver, aligned memory for tensors read in place, and private per-user directories.

Shared by every package; may import `raytf.observe` and `raytf.errors` only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from raytf.errors import ClusterError

ALIGN_BYTES = 64  # TensorFlow's EIGEN_MAX_ALIGN_BYTES: its kernels need tensors aligned to it
ALIGNED_COPY_BELOW = 2**20  # unaligned arrays smaller than this are copied by numpy, not TensorFlow


def configure_tensorflow(threads: int) -> None:
    """Pin TensorFlow's thread pools before its runtime starts in this process.

    Each actor gets as many compute threads as the CPUs it reserved, so actors sharing a node do
    not oversubscribe the cores (that costs more than it gains on small machines). TensorFlow's
    native start-up chatter is held back unless verbose output was asked for (`raytf.observe.native_logs`).
    """
    from raytf.observe.native_logs import native_stderr_filtered, verbose_requested

    verbose = verbose_requested()
    _use_compilation_cache()
    keep_freed_memory()
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        # 3 hides C++ errors too: they reach Python as exceptions when they matter, and some are
        # noise (XLA's cache reader logs a parse error for every binary entry it loads).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_stderr_filtered(verbose):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")  # the CUDA probe prints here on machines without one
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # The runtime already started in this (reused) process; keep its settings.
        pass
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass


def _libc():
    """The C library, or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel.

    Every exchange step allocates and frees buffers of a megabyte or so (gathered rows, merged
    gradients, TensorFlow's outputs). By default glibc serves such sizes with fresh mmaps or trims
    them off the heap when freed (each thread has its own arena, trimmed eagerly), so every step
    faults its pages in again: on a VM, ~300 faults per 1.3 MB, over a millisecond per buffer (a
    sparse server's round took 10 ms instead of 2). With the thresholds raised, freed buffers are
    reused; the resident size stays at the step's peak. Tables and slots (larger) are still mmapped.
    A no-op where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)


def release_freed_memory() -> None:
    """Hand the memory freed since `keep_freed_memory` kept it back to the kernel (`malloc_trim`: every
    arena, not only the top of the heap), when a process is done with a run. A no-op where the C library
    is not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25  # linux/mman.h
_HUGE_PAGE = 2 * 2**20


def back_with_huge_pages(array: np.ndarray) -> bool:
    """Back the memory of `array` (a large table, read and written at random rows) with 2 MB pages.

    A step touches thousands of random rows of a table of hundreds of megabytes: with 4 KB pages
    nearly every row costs a TLB miss and a page walk (two levels of them on a VM), with 2 MB pages
    the whole table fits the TLB (a sparse server's update ~20 % faster here). MADV_COLLAPSE
    (Linux 6.1) moves the pages already there now; MADV_HUGEPAGE lets later faults and khugepaged
    use huge pages. Only the 2 MB-aligned interior is advised. False where the kernel refuses
    (older kernels, THP off): the table works as before."""
    import ctypes

    start = -(-array.ctypes.data // _HUGE_PAGE) * _HUGE_PAGE
    end = (array.ctypes.data + array.nbytes) // _HUGE_PAGE * _HUGE_PAGE
    madvise = getattr(_libc(), "madvise", None)
    if end <= start or madvise is None:
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise(start, end - start, _MADV_HUGEPAGE)
    return madvise(start, end - start, _MADV_COLLAPSE) == 0


def _use_compilation_cache() -> None:
    """Keep XLA's compiled steps on disk (per user, 0700), so a step is compiled once per machine,
    not once per worker and run. Must be set before TensorFlow reads its XLA flags."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return  # the user chose a cache (or none) already
    try:
        directory = private_temp_dir("xla-cache")
    except (OSError, ClusterError):
        return  # not ours to fix here: compile without a cache
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


def as_tensor(array, *, read_only: bool = False):
    """A TF tensor over `array`'s memory when possible (no copy), else a copy.

    Exchange buffers are page-aligned slots in shared memory with every variable at a 64-byte
    boundary (raytf.exchange.sharding); DLPack hands them to TensorFlow without the ~3 ms copy per 7 MB that
    `tf.convert_to_tensor` makes. The caller must finish with the tensor before the buffer is
    written again (the exchange protocol guarantees it: a buffer is rewritten only after the call
    that reads it has returned). Memory that is not 64-byte aligned is copied: DLPack would pass it
    through, and TensorFlow's kernels abort the process on an unaligned tensor.

    `read_only`: the tensor is only ever an input to the caller's steps, so read-only memory (an
    object-store buffer, ~2-3 ms to copy) is handed over too. TensorFlow writes into an input's
    buffer only when nothing else references it (buffer forwarding checks the reference count),
    and the caller's tensor is such a reference for as long as the step runs.
    """
    import tensorflow as tf

    if not (array.flags.c_contiguous and array.ctypes.data % ALIGN_BYTES == 0):
        if array.dtype.kind not in "iuf" or array.nbytes > ALIGNED_COPY_BELOW:
            return tf.convert_to_tensor(array)
        # A small array (a batch, a row request's positions): an aligned copy handed over by DLPack
        # costs a few microseconds, tf.convert_to_tensor ~15 (~100 in a busy actor).
        aligned = aligned_bytes(array.nbytes).view(array.dtype).reshape(array.shape)
        np.copyto(aligned, array)
        array = aligned
    if not array.flags.writeable:
        if not read_only:
            return tf.convert_to_tensor(array)
        array = np.asarray(_Borrowed(array))  # DLPack exports writable arrays only
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def tensor_of(array, dtype):
    """`array` (a view of a slot, or a call's argument) as a tensor of `dtype`, without a copy where
    its memory allows (`as_tensor`; the caller only reads it)."""
    import tensorflow as tf

    array = np.asarray(array)
    return as_tensor(array, read_only=True) if array.dtype == dtype else tf.constant(array, dtype)


class _Borrowed:
    """Read-only memory presented as writable to DLPack; holds the owner, so the memory (a pinned
    object-store buffer) lives as long as the tensor made over it."""

    def __init__(self, owner: np.ndarray) -> None:
        self._owner = owner
        interface = dict(owner.__array_interface__)
        interface["data"] = (interface["data"][0], False)
        self.__array_interface__ = interface


def aligned_bytes(nbytes: int) -> np.ndarray:
    """`nbytes` zero bytes whose data starts on a 64-byte boundary (numpy promises 16)."""
    raw = np.zeros(nbytes + ALIGN_BYTES, np.uint8)
    start = -raw.ctypes.data % ALIGN_BYTES
    return raw[start:start + nbytes]


def aligned_zeros(size: int) -> np.ndarray:
    """A float32 buffer of `size` zeros whose data starts on a 64-byte boundary."""
    return aligned_bytes(4 * size).view(np.float32)


def private_temp_root() -> Path:
    """/tmp/raytf-<uid>: Ray makes its temp dir world-writable and keeps its Unix sockets and logs
    there; a parent only this user may enter keeps other local users out of them."""
    return private_dir(Path(f"/tmp/raytf-{os.getuid()}"))


def private_temp_dir(name: str) -> Path:
    """/tmp/raytf-<uid>/<name>, owned by this user with mode 0700 (e.g. XLA's compilation cache)."""
    return private_dir(private_temp_root() / name)


def private_dir(path: Path) -> Path:
    """`path` as a directory owned by this user with mode 0700; refuses one planted by someone else."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ClusterError(
            f"{path} is not a directory owned by you (uid {os.getuid()}); another user may have created it.",
            "Remove it (or have its owner remove it), then retry.",
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path
