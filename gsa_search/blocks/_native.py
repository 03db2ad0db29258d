"""Small C kernels compiled on first use: build, cache, load and run them on torch's threads.

Status: stable; shared by the local-window kernel (``_window.py``) and the relative-attention
kernel (``_relative_native.py``).

A :class:`NativeKernel` holds one C source. On first use it is compiled with the system C compiler
(``CC``, else ``cc``/``gcc``/``clang``), cached on disk (``GSA_SEARCH_CACHE_DIR``, default
``~/.cache/gsa_search``, then a private folder in the temporary directory; the file name hashes
the source, compiler and flags) and loaded through :mod:`ctypes`. Built with OpenMP (GCC's
``libgomp`` on Linux, the runtime torch has loaded) a kernel runs on torch's own OpenMP threads
(``torch.set_num_threads`` applies); without, :meth:`NativeKernel.run` splits the rows over Python
threads (ctypes releases the GIL). ``GSA_SEARCH_NATIVE=0`` switches every kernel off; a kernel that
cannot be built warns once and its callers use their PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

__all__ = ["LANE_TRANSPOSES", "NativeKernel", "eager", "native_enabled"]

# -ffp-contract=fast: let the compiler fuse multiply-adds where the CPU flags allow them
FLAGS = ["-O3", "-std=gnu99", "-ffp-contract=fast", "-fopenmp-simd", "-shared", "-fPIC"]
COMPILE_TIMEOUT_S = 300
_pool: ThreadPoolExecutor | None = None


def _reset_pool_after_fork() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's worker threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


# C shared by the kernels whose vectors run across 8 rows (sequences, pixels) instead of along
# channels: the vector types and 8 x 8 / 8 x 4 transposes in registers (GCC >= 12 or clang; without
# them, callers keep scalar loops). ``INLINE`` must be defined before it.
LANE_TRANSPOSES = r"""
typedef float lv_t __attribute__((vector_size(32)));
typedef float k4_t __attribute__((vector_size(16), aligned(4), may_alias));
typedef float k8_t __attribute__((vector_size(32), aligned(4), may_alias));

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define LANE_SHUFFLES 1
#define SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
/* dst[t][j] = src[j][t] for an 8 x 8 tile (rows of 8 floats at any alignment) */
INLINE void transpose8(const float *const *src, float *const *dst) {
    lv_t r[8], t[8], u[8];
    for (int j = 0; j < 8; ++j) r[j] = *(const k8_t *)src[j];
    for (int j = 0; j < 8; j += 2) {
        t[j] = SHUF(r[j], r[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[j + 1] = SHUF(r[j], r[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = SHUF(t[j], t[j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 1] = SHUF(t[j], t[j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[j + 2] = SHUF(t[j + 1], t[j + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 3] = SHUF(t[j + 1], t[j + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int c = 0; c < 4; ++c) {
        *(k8_t *)dst[c] = SHUF(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        *(k8_t *)dst[c + 4] = SHUF(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
/* the same for an 8 x 4 tile one way (8 rows of 4 -> 4 vectors of 8 lanes) or the other: rows j and
   j + 4 share a vector (p[j] | p[j + 4]) on both sides, and the shuffles are their own inverse */
INLINE lv_t pair4(const float *lo, const float *hi) {
    const k4_t a = *(const k4_t *)lo, b = *(const k4_t *)hi;
    return SHUF(a, b, 0, 1, 2, 3, 4, 5, 6, 7);
}
INLINE void transpose4(const lv_t *in, lv_t *out) {
    const lv_t t0 = SHUF(in[0], in[1], 0, 8, 1, 9, 4, 12, 5, 13), t1 = SHUF(in[0], in[1], 2, 10, 3, 11, 6, 14, 7, 15);
    const lv_t t2 = SHUF(in[2], in[3], 0, 8, 1, 9, 4, 12, 5, 13), t3 = SHUF(in[2], in[3], 2, 10, 3, 11, 6, 14, 7, 15);
    out[0] = SHUF(t0, t2, 0, 1, 8, 9, 4, 5, 12, 13);
    out[1] = SHUF(t0, t2, 2, 3, 10, 11, 6, 7, 14, 15);
    out[2] = SHUF(t1, t3, 0, 1, 8, 9, 4, 5, 12, 13);
    out[3] = SHUF(t1, t3, 2, 3, 10, 11, 6, 7, 14, 15);
}
#endif
"""


def eager() -> bool:
    """Plain eager execution: no dispatch mode (FLOP counter, fake tensors) and no compilation, so
    the kernels' custom operators (about 25 us of dispatch a call, more with their autograd
    wrappers) can be skipped and the kernels called directly."""
    # is_compiling first: dynamo cannot trace the dispatch-stack query (a graph break)
    return not torch.compiler.is_compiling() and not torch._C._len_torch_dispatch_stack()


def native_enabled() -> bool:
    """``False`` when ``GSA_SEARCH_NATIVE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get("GSA_SEARCH_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> list[str]:
    """``-mavx2 -mfma`` on x86-64 CPUs that have both (the window kernel's forward ran 1.4x faster
    than with SSE2; full ``-march=native``, i.e. AVX-512, made its backward slower). The flags are
    part of the cache key, so a cache shared by different machines holds one build per instruction set."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= set(flags) else []


def _openmp_flags(compiler: list[str]) -> list[list[str]]:
    """Flag sets to try, best first. OpenMP only where the library will bind to the OpenMP runtime
    torch has already loaded: GCC's ``libgomp.so.1`` on Linux (the dynamic loader reuses the loaded
    soname), so its threads are torch's and never compete with torch's spinning workers. Elsewhere
    (clang's libomp, Intel's libiomp, macOS) a second runtime could clash with torch's, so the rows
    are split over Python threads instead."""
    if not sys.platform.startswith("linux"):
        return [[]]
    try:
        with open("/proc/self/maps") as maps:
            gomp_loaded = any("libgomp" in line for line in maps)
        version = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return [[]]
    is_gcc = "Free Software Foundation" in version and "clang" not in version.lower()
    return [["-fopenmp"], []] if gomp_loaded and is_gcc else [[]]


def _cache_dirs() -> list[Path]:
    """The user's cache (``GSA_SEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/gsa_search``, else
    ``~/.cache/gsa_search``), then a private folder in the temporary directory."""
    root = os.environ.get("GSA_SEARCH_CACHE_DIR")
    if root:
        first = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        first = Path(base).absolute() / "gsa_search"
    user = os.getuid() if hasattr(os, "getuid") else 0
    return [first, Path(tempfile.gettempdir()) / f"gsa_search-{user}"]


def _safe_folder(folder: Path) -> bool:
    """Create ``folder`` (private) if needed; only load libraries from a folder that is ours and that
    nobody else can write to (a shared temporary directory could hold anyone's library)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not hasattr(os, "getuid"):
        return True
    info = folder.stat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022


def _compile(source: str, compiler: list[str], flags: list[str], folder: Path, target: Path) -> str | None:
    """Build ``target`` in ``folder``; the compiler's error on failure."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / f"{target.stem}.c", Path(tmp) / target.name
        src.write_text(source)
        done = subprocess.run(
            [*compiler, *flags, str(src), "-o", str(out)],
            capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False,
        )
        if done.returncode:
            return f"{' '.join(compiler)} failed: {done.stderr.strip()[:300]}"
        os.replace(out, target)  # atomic: concurrent builders all end with a complete file
    return None


def _build(name: str, source: str) -> ctypes.CDLL:
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not compiler or not shutil.which(compiler[0]):
        raise RuntimeError(f"no C compiler found ({'CC=' + compiler[0] if compiler else 'set CC, or install gcc or clang'})")
    suffix = ".dll" if sys.platform == "win32" else ".so"
    errors = []
    for extra in _openmp_flags(compiler):
        flags = [*FLAGS, *_cpu_flags(), *extra]
        key_parts = [source, *compiler, *flags, sys.platform, platform.machine()]
        key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:16]
        for folder in _cache_dirs():
            target = folder / f"{name}_{key}{suffix}"
            try:
                if not _safe_folder(folder):
                    errors.append(f"{folder} is not private to this user")
                    continue
                if not target.exists():
                    error = _compile(source, compiler, flags, folder, target)
                    if error:
                        errors.append(error)
                        break  # these flags fail in any folder: try the next set
                return ctypes.CDLL(str(target))
            except (OSError, subprocess.SubprocessError) as err:  # unwritable folder, a library that will not load
                errors.append(str(err))
    raise RuntimeError("; ".join(errors))


class NativeKernel:
    """One C source, built and loaded on first use (thread-safe), or a recorded failure.

    ``source`` must define ``int <name>_openmp(void)`` (1 when built with OpenMP); ``declare(lib)``
    sets the ``argtypes`` of its functions. ``label`` names the kernel and ``used_for`` what then runs
    the slower PyTorch path, in the warning given when it cannot be built.
    """

    def __init__(self, name: str, source: str, declare: Callable[[ctypes.CDLL], None], *, label: str,
                 used_for: str) -> None:
        self.name, self.source, self.declare = name, source, declare
        self.label, self.used_for = label, used_for
        self.lib: ctypes.CDLL | None = None
        self.failed: str | None = None
        self.openmp = False
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the loaded library or failure (as in a new process; the disk cache stays)."""
        with self._lock:
            self.lib, self.failed, self.openmp = None, None, False

    def library(self) -> ctypes.CDLL | None:
        if self.lib is not None or self.failed is not None:
            return self.lib
        with self._lock:
            if self.lib is None and self.failed is None:
                try:
                    lib = _build(self.name, self.source)
                    self.declare(lib)
                    self.openmp = bool(getattr(lib, f"{self.name}_openmp")())  # before lib: readers skip the lock
                    self.lib = lib
                except Exception as err:  # noqa: BLE001 - any build problem means: use the PyTorch path
                    self.failed = str(err)
                    warnings.warn(
                        f"gsa_search: compiled {self.label} kernel unavailable ({self.failed}); "
                        f"using the slower PyTorch path for {self.used_for}",
                        RuntimeWarning,
                        stacklevel=4,
                    )
        return self.lib

    def available(self) -> bool:
        """Whether the kernel is used for CPU tensors (builds it on first call)."""
        return native_enabled() and self.library() is not None

    def usable(self, *tensors: torch.Tensor) -> bool:
        """Whether the kernel can run on these tensors: CPU, one dtype, float32 or float64, built."""
        dtypes = {t.dtype for t in tensors}
        return (
            len(dtypes) == 1
            and dtypes <= {torch.float32, torch.float64}
            and all(t.device.type == "cpu" for t in tensors)
            and self.available()
        )

    def threads(self, rows: int) -> int:
        """How many threads :meth:`run` uses for ``rows`` rows."""
        return max(1, min(torch.get_num_threads(), rows))

    def run(self, fn: Callable[..., Any], rows: int, *args: Any, slots: bool = False,
            threads: int | None = None) -> None:
        """``fn(*args, threads, lo, hi)`` over rows ``[0, rows)``: one call on ``threads`` (default
        ``self.threads(rows)``) OpenMP threads, or (builds without OpenMP) one single-threaded call per
        Python thread. With ``slots`` a last argument ``slot0`` follows: a thread's private slot is
        ``slot0`` plus its OpenMP thread number, so slots ``0 .. threads-1`` are each used by one
        thread only (pass the ``threads`` the slots were allocated for)."""
        global _pool
        threads = threads or self.threads(rows)
        extra = (0,) if slots else ()
        if threads == 1 or self.openmp:
            fn(*args, threads, 0, rows, *extra)
            return
        pool = _pool
        if pool is None or pool._max_workers < threads:
            pool = _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gsa_search-native")
        bounds = [rows * t // threads for t in range(threads + 1)]
        jobs = [
            pool.submit(fn, *args, 1, lo, hi, *((t + 1,) if slots else ()))
            for t, (lo, hi) in enumerate(zip(bounds[1:-1], bounds[2:]))
        ]
        fn(*args, 1, bounds[0], bounds[1], *extra)  # the calling thread takes the first share
        for job in jobs:
            job.result()

    def call(self, name: str, rows: int, *args: Any, slots: bool = False, threads: int | None = None) -> None:
        """:meth:`run` the library function ``name``, which returns nonzero when it could not
        allocate its buffers: a ``MemoryError`` here."""
        fn = getattr(self.lib, name)
        failed = []

        def checked(*call_args: Any) -> None:
            if fn(*call_args):
                failed.append(True)

        self.run(checked, rows, *args, slots=slots, threads=threads)
        if failed:
            raise MemoryError(f"{name}: the compiled {self.label} kernel could not allocate its buffers")
