"""Local-window weighted sum, the inner step of local 2D positional attention.

``out[b, i, j, n] = sum_{dy, dx} a[n, b, i, j, dy, dx] * v[b, i + dy - ry, j + dx - rx, n]``
with ``(dy, dx)`` over a ``(2ry+1) x (2rx+1)`` window and keys outside the map counting as zero.
Each output reads only its window: ``(2ry+1)(2rx+1) * d_v`` multiply-adds, where the banded-matmul
form of :func:`~gsa_search.blocks._relative.relative_axis_attention` reads whole rows.

Two implementations with the same results behind one custom operator, ``gsa_search::window_sum``
(so FLOP counters see the same op whatever runs it):

* a small C kernel (forward, and a backward that gathers instead of scattering so it needs no atomics),
  compiled with the system C compiler on first use, cached on disk (``GSA_SEARCH_CACHE_DIR``,
  default ``~/.cache/gsa_search``) and called through :mod:`ctypes`. Built with OpenMP it runs on
  torch's own OpenMP threads (``torch.set_num_threads`` applies); without, rows are split over Python
  threads (ctypes releases the GIL). Used for CPU tensors whenever a compiler is found;
  ``GSA_SEARCH_NATIVE=0`` switches it off.
* plain PyTorch otherwise (CUDA, meta, no compiler): one multiply-add per window offset on the
  overlapping slices.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["window_sum", "native_available"]

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

#define MIN(x, y) ((x) < (y) ? (x) : (y))
#define MAX(x, y) ((x) > (y) ? (x) : (y))

/* a: (N, B, H, W, KY*KX) contiguous; v: (B, H, W, N, D) with strides vs[0..3] and unit last stride;
   out, g, gv: (B, H, W, N, D) contiguous; ga: like a. One call handles rows r = b*H + i in [r0, r1), on nt OpenMP threads.
   DD > 0: D == DD known at compile time, so the loops over D unroll into whole vectors. */
#define WINDOW_KERNELS(T, S, DD)                                                                   \
static void fwd_row_##S##_##DD(const T *restrict a, const T *restrict v, T *restrict out,         \
                               int64_t B, int64_t H, int64_t W, int64_t N, int64_t D0,            \
                               int64_t ry, int64_t rx, const int64_t *restrict vs, int64_t r) {   \
    const int64_t D = DD ? DD : D0, KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, P = B * H * W;        \
    const int64_t b = r / H, i = r % H;                                                            \
    const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i); /* dy with a row */       \
    T acc[DD ? DD : D0];                                                                           \
    for (int64_t j = 0; j < W; ++j) {                                                              \
        const int64_t p = r * W + j, x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);                \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const T *restrict ap = a + (n * P + p) * KK;                                           \
            for (int64_t e = 0; e < D; ++e) acc[e] = 0;                                            \
            for (int64_t dy = y0; dy < y1; ++dy) {                                                 \
                const T *restrict vrow = v + b * vs[0] + (i + dy - ry) * vs[1] + n * vs[3];        \
                for (int64_t dx = x0; dx < x1; ++dx) {                                             \
                    const T w = ap[dy * KX + dx];                                                  \
                    const T *restrict vp = vrow + (j + dx - rx) * vs[2];                           \
                    for (int64_t e = 0; e < D; ++e) acc[e] += w * vp[e];                           \
                }                                                                                  \
            }                                                                                      \
            T *restrict o = out + (p * N + n) * D;                                                 \
            for (int64_t e = 0; e < D; ++e) o[e] = acc[e];                                         \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
/* ga[q, k] = g[q] . v[q + k]; gv[p] = sum_k a[p - k, k] g[p - k] (a gather: no write conflicts) */ \
static void bwd_row_##S##_##DD(const T *restrict a, const T *restrict v, const T *restrict g,     \
                               T *restrict ga, T *restrict gv, int64_t B, int64_t H, int64_t W,   \
                               int64_t N, int64_t D0, int64_t ry, int64_t rx,                     \
                               const int64_t *restrict vs, int64_t r) {                           \
    const int64_t D = DD ? DD : D0, KX = 2 * rx + 1, KK = (2 * ry + 1) * KX, P = B * H * W;        \
    const int64_t b = r / H, i = r % H;                                                            \
    /* key rows i + dy - ry and query rows i - dy + ry inside the map share one dy range */        \
    const int64_t y0 = MAX(0, ry - i), y1 = MIN(2 * ry + 1, H + ry - i);                           \
    const int64_t z0 = MAX(0, i + ry - (H - 1)), z1 = MIN(2 * ry + 1, i + ry + 1);                 \
    T acc[DD ? DD : D0];                                                                           \
    for (int64_t j = 0; j < W; ++j) {                                                              \
        const int64_t p = r * W + j, x0 = MAX(0, rx - j), x1 = MIN(KX, W + rx - j);                \
        const int64_t u0 = MAX(0, j + rx - (W - 1)), u1 = MIN(KX, j + rx + 1);                     \
        for (int64_t n = 0; n < N; ++n) {                                                          \
            const T *restrict gp = g + (p * N + n) * D;                                            \
            T *restrict gap = ga + (n * P + p) * KK;                                               \
            for (int64_t k = 0; k < KK; ++k) gap[k] = 0;                                           \
            for (int64_t dy = y0; dy < y1; ++dy) {                                                 \
                const T *restrict vrow = v + b * vs[0] + (i + dy - ry) * vs[1] + n * vs[3];        \
                for (int64_t dx = x0; dx < x1; ++dx) {                                             \
                    const T *restrict vp = vrow + (j + dx - rx) * vs[2];                           \
                    T s = 0;                                                                       \
                    _Pragma("omp simd reduction(+ : s)")                                           \
                    for (int64_t e = 0; e < D; ++e) s += gp[e] * vp[e];                            \
                    gap[dy * KX + dx] = s;                                                         \
                }                                                                                  \
            }                                                                                      \
            for (int64_t e = 0; e < D; ++e) acc[e] = 0;                                            \
            for (int64_t dy = z0; dy < z1; ++dy) {                                                 \
                const int64_t qrow = (b * H + i - dy + ry) * W; /* the query whose key is (i, j) */ \
                for (int64_t dx = u0; dx < u1; ++dx) {                                             \
                    const int64_t q = qrow + j - dx + rx;                                          \
                    const T w = a[(n * P + q) * KK + dy * KX + dx];                                \
                    const T *restrict gq = g + (q * N + n) * D;                                    \
                    for (int64_t e = 0; e < D; ++e) acc[e] += w * gq[e];                           \
                }                                                                                  \
            }                                                                                      \
            T *restrict gvp = gv + (p * N + n) * D;                                                \
            for (int64_t e = 0; e < D; ++e) gvp[e] = acc[e];                                       \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
void window_fwd_##S##_##DD(const T *a, const T *v, T *out, int64_t B, int64_t H, int64_t W,       \
                           int64_t N, int64_t D, int64_t ry, int64_t rx, const int64_t *vs,        \
                           int64_t nt, int64_t r0, int64_t r1) {                                   \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t r = r0; r < r1; ++r) fwd_row_##S##_##DD(a, v, out, B, H, W, N, D, ry, rx, vs, r); \
}                                                                                                  \
void window_bwd_##S##_##DD(const T *a, const T *v, const T *g, T *ga, T *gv, int64_t B, int64_t H, \
                           int64_t W, int64_t N, int64_t D, int64_t ry, int64_t rx,                \
                           const int64_t *vs, int64_t nt, int64_t r0, int64_t r1) {                \
    _Pragma("omp parallel for schedule(static) num_threads(nt)")                                   \
    for (int64_t r = r0; r < r1; ++r)                                                              \
        bwd_row_##S##_##DD(a, v, g, ga, gv, B, H, W, N, D, ry, rx, vs, r);                         \
}

#ifdef _OPENMP
int window_openmp(void) { return 1; }
#else
int window_openmp(void) { return 0; }
#endif

WINDOW_KERNELS(float, f32, 0)
WINDOW_KERNELS(float, f32, 8)
WINDOW_KERNELS(float, f32, 16)
WINDOW_KERNELS(float, f32, 32)
WINDOW_KERNELS(float, f32, 64)
WINDOW_KERNELS(double, f64, 0)
"""

_VARIANTS = ("f32_0", "f32_8", "f32_16", "f32_32", "f32_64", "f64_0")
# -ffp-contract=fast: let the compiler fuse multiply-adds where the CPU flags allow them
_FLAGS = ["-O3", "-std=c99", "-ffp-contract=fast", "-fopenmp-simd", "-shared", "-fPIC"]
_COMPILE_TIMEOUT_S = 300
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None
_pool: ThreadPoolExecutor | None = None
_openmp = False


def _reset_pool_after_fork() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's worker threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


def _cpu_flags() -> list[str]:
    """``-mavx2 -mfma`` on x86-64 CPUs that have both (forward 1.4x faster than SSE2 here; full
    ``-march=native``, i.e. AVX-512, made the backward slower). The flags are part of the cache key,
    so a cache shared by different machines holds one build per instruction set."""
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
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
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


def _compile(compiler: list[str], flags: list[str], folder: Path, target: Path) -> str | None:
    """Build ``target`` in ``folder``; the compiler's error on failure."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, out = Path(tmp) / "window.c", Path(tmp) / target.name
        src.write_text(_SOURCE)
        done = subprocess.run(
            [*compiler, *flags, str(src), "-o", str(out)], capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S
        )
        if done.returncode:
            return f"{' '.join(compiler)} failed: {done.stderr.strip()[:300]}"
        os.replace(out, target)  # atomic: concurrent builders all end with a complete file
    return None


def _build() -> ctypes.CDLL:
    found = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not compiler or not shutil.which(compiler[0]):
        raise RuntimeError(f"no C compiler found ({'CC=' + compiler[0] if compiler else 'set CC, or install gcc or clang'})")
    suffix = ".dll" if sys.platform == "win32" else ".so"
    errors = []
    for extra in _openmp_flags(compiler):
        flags = [*_FLAGS, *_cpu_flags(), *extra]
        key_parts = [_SOURCE, *compiler, *flags, sys.platform, platform.machine()]
        key = hashlib.sha256("\0".join(key_parts).encode()).hexdigest()[:16]
        for folder in _cache_dirs():
            target = folder / f"window_{key}{suffix}"
            try:
                if not _safe_folder(folder):
                    errors.append(f"{folder} is not private to this user")
                    continue
                if not target.exists():
                    error = _compile(compiler, flags, folder, target)
                    if error:
                        errors.append(error)
                        break  # these flags fail in any folder: try the next set
                return ctypes.CDLL(str(target))
            except (OSError, subprocess.SubprocessError) as err:  # unwritable folder, a library that will not load
                errors.append(str(err))
    raise RuntimeError("; ".join(errors))


def _library() -> ctypes.CDLL | None:
    global _lib, _failed, _openmp
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is None and _failed is None:
            try:
                lib = _build()
                i64, ptr, strides = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
                for s in _VARIANTS:
                    getattr(lib, f"window_fwd_{s}").argtypes = [ptr] * 3 + [i64] * 7 + [strides, i64, i64, i64]
                    getattr(lib, f"window_bwd_{s}").argtypes = [ptr] * 5 + [i64] * 7 + [strides, i64, i64, i64]
                _openmp = bool(lib.window_openmp())  # before _lib: readers check _lib without the lock
                _lib = lib
            except Exception as err:  # noqa: BLE001 - any build problem means: use the PyTorch path
                _failed = str(err)
                warnings.warn(
                    f"gsa_search: compiled local-window kernel unavailable ({_failed}); "
                    "using the slower PyTorch path for local 2D positional attention",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _lib


def native_available() -> bool:
    """Whether the compiled kernel is used for CPU tensors (builds it on first call)."""
    if os.environ.get("GSA_SEARCH_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return _library() is not None


def _parallel_rows(fn, rows: int, *args) -> None:
    """``fn(*args, threads, lo, hi)`` over rows ``[0, rows)``: one call on ``torch.get_num_threads()``
    OpenMP threads, or (builds without OpenMP) one single-threaded call per Python thread."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), rows))
    if threads == 1 or _openmp:
        fn(*args, threads, 0, rows)
        return
    pool = _pool
    if pool is None or pool._max_workers < threads:  # noqa: SLF001
        pool = _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gsa_search-window")
    bounds = [rows * t // threads for t in range(threads + 1)]
    jobs = [pool.submit(fn, *args, 1, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    fn(*args, 1, bounds[0], bounds[1])  # the calling thread takes the first share
    for job in jobs:
        job.result()


def _variant(v: torch.Tensor) -> str:
    if v.dtype == torch.float64:
        return "f64_0"
    return f"f32_{v.shape[-1]}" if f"f32_{v.shape[-1]}" in _VARIANTS else "f32_0"


def _native_forward(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    b, h, w, n, d = v.shape
    out = torch.empty(b, h, w, n, d, dtype=v.dtype)
    if out.numel():
        strides = (ctypes.c_int64 * 4)(*v.stride()[:4])
        fn = getattr(_lib, f"window_fwd_{_variant(v)}")
        _parallel_rows(fn, b * h, a.data_ptr(), v.data_ptr(), out.data_ptr(), b, h, w, n, d, ry, rx, strides)
    return out


def _native_backward(
    a: torch.Tensor, v: torch.Tensor, g: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w, n, d = v.shape
    ga, gv = torch.empty_like(a), torch.empty(b, h, w, n, d, dtype=v.dtype)
    if not gv.numel():
        return ga.zero_(), gv
    strides = (ctypes.c_int64 * 4)(*v.stride()[:4])
    fn = getattr(_lib, f"window_bwd_{_variant(v)}")
    args = (a.data_ptr(), v.data_ptr(), g.data_ptr(), ga.data_ptr(), gv.data_ptr(), b, h, w, n, d, ry, rx, strides)
    _parallel_rows(fn, b * h, *args)
    return ga, gv


def _overlaps(h: int, w: int, ry: int, rx: int):
    """``(k, query slices, key slices)`` for every window offset ``k`` that overlaps the map."""
    for dy in range(2 * ry + 1):
        oy = dy - ry
        qy, ky = slice(max(0, -oy), min(h, h - oy)), slice(max(0, oy), min(h, h + oy))
        if qy.start >= qy.stop:
            continue
        for dx in range(2 * rx + 1):
            ox = dx - rx
            qx, kx = slice(max(0, -ox), min(w, w - ox)), slice(max(0, ox), min(w, w + ox))
            if qx.start < qx.stop:
                yield dy * (2 * rx + 1) + dx, (slice(None), qy, qx), (slice(None), ky, kx)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """Sums over the window run in float32 for half-precision inputs (CUDA autocast)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _torch_forward(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    b, h, w, n, d = v.shape
    weights = a.permute(1, 2, 3, 0, 4)  # (B, H, W, N, K)
    out = torch.zeros(b, h, w, n, d, dtype=_accumulator(v.dtype), device=v.device)
    for k, q, key in _overlaps(h, w, ry, rx):
        out[q].addcmul_(weights[q][..., k, None], v[key])
    return out.to(v.dtype)


def _torch_backward(
    a: torch.Tensor, v: torch.Tensor, g: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = a.permute(1, 2, 3, 0, 4)
    ga = torch.zeros_like(a)
    gv = torch.zeros(v.shape, dtype=_accumulator(v.dtype), device=v.device)
    ga_view = ga.permute(1, 2, 3, 0, 4)
    for k, q, key in _overlaps(v.shape[1], v.shape[2], ry, rx):
        ga_view[q][..., k] = torch.linalg.vecdot(g[q], v[key])
        gv[key].addcmul_(weights[q][..., k, None], g[q])
    return ga, gv.to(v.dtype)


def _use_native(*tensors: torch.Tensor) -> bool:
    return (
        all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors)
        and native_available()
    )


def _check(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int, grad: torch.Tensor | None = None) -> None:
    """Shapes and dtypes the kernel relies on (it reads raw memory): checked in the operators
    themselves, so calling ``torch.ops.gsa_search.window_sum`` directly is as safe as the wrapper."""
    if ry < 0 or rx < 0:
        raise ValueError(f"window_sum: window radii must be >= 0, got ({ry}, {rx})")
    if a.dim() != 5 or v.dim() != 5:
        raise ValueError(f"window_sum: weights (N, B, H, W, K) and values (B, H, W, N, d_v), got {tuple(a.shape)} and {tuple(v.shape)}")
    n, b, h, w, k = a.shape
    if tuple(v.shape[:4]) != (b, h, w, n) or k != (2 * ry + 1) * (2 * rx + 1):
        raise ValueError(
            f"window_sum: weights {tuple(a.shape)} do not fit values {tuple(v.shape)} and window ({ry}, {rx})"
        )
    if grad is not None and grad.shape != v.shape:
        raise ValueError(f"window_sum: gradient {tuple(grad.shape)} does not match values {tuple(v.shape)}")
    dtypes = {t.dtype for t in (a, v, grad) if t is not None}
    if len(dtypes) != 1:
        raise ValueError(f"window_sum: weights, values (and gradient) must share a dtype, got {sorted(map(str, dtypes))}")


# A custom operator (not an autograd.Function), so FLOP counters (fvcore's trace and
# torch.utils.flop_counter), torch.compile and the meta device all see one opaque op.
@torch.library.custom_op("gsa_search::window_sum", mutates_args=())
def _window_sum_op(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    _check(a, v, ry, rx)
    a = a.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    return (_native_forward if _use_native(a, v) else _torch_forward)(a, v, ry, rx)


@_window_sum_op.register_fake
def _(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    _check(a, v, ry, rx)
    return v.new_empty(v.shape)


@torch.library.custom_op("gsa_search::window_sum_backward", mutates_args=())
def _window_sum_backward_op(
    a: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, ry: int, rx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, v, ry, rx, grad)
    a, grad = a.contiguous(), grad.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    return (_native_backward if _use_native(a, v, grad) else _torch_backward)(a, v, grad, ry, rx)


@_window_sum_backward_op.register_fake
def _(a: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, ry: int, rx: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check(a, v, ry, rx, grad)
    return a.new_empty(a.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    a, v, ry, rx = inputs
    ctx.save_for_backward(a, v)
    ctx.window = (ry, rx)


def _backward(ctx, grad: torch.Tensor):
    a, v = ctx.saved_tensors
    ga, gv = _window_sum_backward_op(a, v, grad, *ctx.window)
    return ga, gv, None, None


_window_sum_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    # torch counts 2 FLOPs per multiply-add; the backward does the forward's work twice (a and v)
    def forward_flops(a_shape, v_shape, *args, **kwargs) -> int:
        return 2 * math.prod(a_shape) * v_shape[-1]

    def backward_flops(a_shape, v_shape, *args, **kwargs) -> int:
        return 4 * math.prod(a_shape) * v_shape[-1]

    for op, formula in ((torch.ops.gsa_search.window_sum, forward_flops),
                        (torch.ops.gsa_search.window_sum_backward, backward_flops)):
        if op not in flop_registry:
            register_flop_formula(op)(formula)


_register_flop_formulas()


def window_sum(a: torch.Tensor, v: torch.Tensor, ry: int, rx: int) -> torch.Tensor:
    """``out[b, i, j, n] = sum_k a[n, b, i, j, k] * v[b, i + dy_k - ry, j + dx_k - rx, n]``.

    ``a``: ``(N, B, H, W, (2ry+1)(2rx+1))`` weights, offsets row-major (``k = dy * (2rx+1) + dx``);
    ``v``: ``(B, H, W, N, d_v)`` values (any strides, cast to ``a``'s dtype); keys outside the map
    are zero. Returns ``(B, H, W, N, d_v)``, contiguous. Differentiable in ``a`` and ``v``.

    Example:
        >>> a, v = torch.ones(1, 1, 3, 3, 9), torch.arange(9.0).view(1, 3, 3, 1, 1)
        >>> window_sum(a, v, 1, 1)[0, :, :, 0, 0]  # 3x3 box sums, zero outside the map
        tensor([[ 8., 15., 12.],
                [21., 36., 27.],
                [20., 33., 24.]])
    """
    if v.dtype != a.dtype:
        v = v.to(a.dtype)
    if a.device.type == "cpu" and a.dtype in (torch.bfloat16, torch.float16) and native_available():
        # the compiled kernel runs in float32 (CPU autocast hands it bfloat16)
        return _window_sum_op(a.float(), v.float(), ry, rx).to(a.dtype)
    return _window_sum_op(a, v, ry, rx)
