"""The float core's compiled inner loops: kernels.c, compiled with the system's C compiler on first use.

Why C through ctypes rather than a JIT: the gradient step's process then holds a few hundred KiB of
machine code instead of a compiler (numba and LLVM keep ~115 MiB resident; docs/results.md,
`memory_floor`), and ctypes releases the GIL during a call, so core.FloatCore runs the loops on groups
of batch rows in threads. The library is built once per source, compiler and CPU (``-march=native``:
the loops vectorise for the CPU at hand) into ``$ECHOFORGE_KERNEL_CACHE`` (default
``~/.cache/echoforge/kernels``), one library per stream type (float32, float64 — the arithmetic is
float64 either way). Every entry point checks the layout of what it is given: a wrong shape or dtype
is a bug here, not a crash in C.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

LINEAR, NONLINEAR = 0, 1
SOURCE = Path(__file__).with_name("kernels.c")
# No -ffast-math, no contraction into fused multiply-adds: every operation rounds as written.
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-fPIC", "-shared", "-std=c11")
STREAM_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_P = ctypes.c_void_p
_I = ctypes.c_int64
_MASK = (ctypes.c_uint64, _I, ctypes.c_uint32, ctypes.c_double)  # a dropout mask's seed, base, threshold, scale
SIGNATURES = {
    "ef_forward": (None, [ctypes.c_int, _P, _I, _I, _I, _P, _P, _P, _P, _P]),
    "ef_echo_chunk": (ctypes.c_int, [ctypes.c_int, _P, _I, _I, _I, _P, _P, _P, ctypes.c_double, _P, _P, _P]),
    "ef_adjoint": (ctypes.c_int, [ctypes.c_int, _P, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P]),
    "ef_tanh": (None, [_I, _P, _P, _P]),
    "ef_atanh_rational": (None, [_I, _P, _P]),
    "ef_exp_neg": (None, [_I, _P, _P]),
    "ef_force_pair": (None, [ctypes.c_int, _P, ctypes.c_int, _P]),
    "ef_dropout": (None, [_I, _P, _P, *_MASK]),
    "ef_glue_skip": (None, [_I, _I, _P, _P, _P]),
    "ef_glue_glu": (None, [_I, _I, _P, _P, _P, _P, *_MASK]),
    "ef_glue_glu_backward": (None, [_I, _I, _P, _P, _P, _I, _P, *_MASK]),
    "ef_glue_skip_backward": (None, [_I, _I, _P, _P, _P, _P, _P]),
    "ef_column_moments": (None, [_I, _I, _P, _P, _P]),
    "ef_column_sums": (None, [_I, _I, _P, _P, _P, _P]),
    "ef_standardize": (None, [_I, _I, _P, _P, _P, _P]),
    "ef_standardize_backward": (None, [_I, _I, _P, _P, _P, _P, _P, _P]),
}


class CompilerMissing(FileNotFoundError):
    """No C compiler to build the kernels with (the CLI reports it in one line)."""


def cache_root() -> Path:
    return Path(os.environ.get("ECHOFORGE_KERNEL_CACHE") or Path.home() / ".cache" / "echoforge" / "kernels")


def _compiler() -> str:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise CompilerMissing(f"echoforge's float core compiles its C kernels on first use and found no C compiler "
                              f"({compiler!r}): install one (Debian/Ubuntu: apt-get install gcc) or set CC")
    return compiler


def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in ("model name", "flags")}))


@cache
def library(stream: str) -> ctypes.CDLL:
    """The compiled kernels for streams of C type `stream` ("float" or "double"), built if not cached."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, stream, version, _cpu()]).encode())
    path = cache_root() / f"kernels-{stream}-{digest.hexdigest()[:16]}.so"
    if not path.exists():
        _build(compiler, stream, path)
    lib = ctypes.CDLL(str(path))
    for name, (result, arguments) in SIGNATURES.items():
        getattr(lib, name).restype, getattr(lib, name).argtypes = result, arguments
    return lib


def for_tensor(tensor) -> ctypes.CDLL:
    """The kernels for a float32 or float64 torch tensor's elements (the glue's and the norm's passes)."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if np.dtype(dtype) not in STREAM_TYPES:
        raise TypeError(f"the compiled passes run on float32 or float64 tensors, got {dtype}")
    return library(STREAM_TYPES[np.dtype(dtype)])


def _build(compiler: str, stream: str, path: Path) -> None:
    """Compile into a scratch file and move it into place (atomic: processes may build side by side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix="build-") as scratch:
        target = Path(scratch) / path.name
        done = subprocess.run([compiler, *FLAGS, f"-DSTREAM={stream}", str(SOURCE), "-o", str(target), "-lm"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} with {compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(target, path)


def _pointer(array: np.ndarray, dtype) -> int:
    if array.dtype != dtype or not array.flags.c_contiguous:
        raise TypeError(f"a kernel argument must be a C-contiguous {np.dtype(dtype)} array, got "
                        f"{array.dtype} {'contiguous' if array.flags.c_contiguous else 'strided'}")
    return array.ctypes.data


def _streams(*arrays: np.ndarray) -> tuple[ctypes.CDLL, np.dtype]:
    """The library for these streams: float32 if all are float32, else float64."""
    dtype = np.dtype(np.float32) if all(a.dtype == np.float32 for a in arrays) else np.dtype(np.float64)
    return library(STREAM_TYPES[dtype]), dtype


def _widen(array: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def _checked(status: int) -> None:
    if status != 0:
        raise MemoryError("the compiled kernels could not allocate their working memory")


def forward(kind, params, forcing, phi0, pi0, positions, momenta, keep_momenta):
    """Integrate every lane; positions[b, k] is ϕ after consuming forcing[b, k].

    With keep_momenta, momenta[b, k] receives π after step k (BPTT keeps the trajectory; RHEL does not).
    Returns the final (phi, pi), each (B, P).
    """
    outputs = (positions, momenta) if keep_momenta else (positions,)
    lib, dtype = _streams(forcing, *outputs)
    nb, nt, npos = forcing.shape
    phi, pi = np.array(phi0, dtype=np.float64), np.array(pi0, dtype=np.float64)
    written = [o if o.dtype == dtype else np.empty(o.shape, dtype) for o in outputs]
    forcing = _widen(forcing, dtype)  # (held here: a converted copy must outlive the call)
    lib.ef_forward(kind, _pointer(params, np.float64), nb, nt, npos, _pointer(forcing, dtype),
                   _pointer(phi, np.float64), _pointer(pi, np.float64), _pointer(written[0], dtype),
                   _pointer(written[1], dtype) if keep_momenta else None)
    for output, kept in zip(outputs, written):
        if kept is not output:
            output[...] = kept
    return phi, pi


def echo_chunk(kind, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing):
    """The ±ε echoes of RHEL over one chunk of time, latest step first (kernels.c, ef_echo_chunk).

    state (4, B, P) = (ϕ_c, ϕ_d, π_c, π_d) and acc (5, B, P) carry over from chunk to chunk; writes
    grad_forcing, already scaled by −δ/2ε.
    """
    lib, dtype = _streams(forcing, nudges, grad_forcing)
    nb, nt, npos = forcing.shape
    grad = grad_forcing if grad_forcing.dtype == dtype else np.empty(grad_forcing.shape, dtype)
    forcing, nudges = _widen(forcing, dtype), _widen(nudges, dtype)
    _checked(lib.ef_echo_chunk(kind, _pointer(params, np.float64), nb, nt, npos,
                               _pointer(forcing, dtype), _pointer(nudges, dtype),
                               _pointer(nudge_before, np.float64), eps, _pointer(state, np.float64),
                               _pointer(acc, np.float64), _pointer(grad, dtype)))
    if grad is not grad_forcing:
        grad_forcing[...] = grad


def adjoint(kind, params, forcing, phi0, pi0, positions, momenta, grad_positions, grad_forcing, grad_params):
    """BPTT over the stored trajectory (kernels.c, ef_adjoint): writes grad_forcing (B, L, P) and
    grad_params (5, B, P)."""
    lib, dtype = _streams(forcing, positions, momenta, grad_positions, grad_forcing)
    nb, nt, npos = forcing.shape
    grad = grad_forcing if grad_forcing.dtype == dtype else np.empty(grad_forcing.shape, dtype)
    streams = [_widen(a, dtype) for a in (forcing, positions, momenta, grad_positions)]
    pointers = [_pointer(a, dtype) for a in streams]
    _checked(lib.ef_adjoint(kind, _pointer(params, np.float64), nb, nt, npos, pointers[0],
                            _pointer(phi0, np.float64), _pointer(pi0, np.float64), *pointers[1:],
                            _pointer(grad, dtype), _pointer(grad_params, np.float64)))
    if grad is not grad_forcing:
        grad_forcing[...] = grad


def _elementwise(name: str, x: np.ndarray, outputs: int) -> list[np.ndarray]:
    x = _widen(x, np.float64)
    out = [np.empty_like(x) for _ in range(outputs)]
    getattr(library("double"), name)(x.size, x.ctypes.data, *(o.ctypes.data for o in out))
    return out


def tanh(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' tanh of every element, and exp(−2 min(|x|, 20)) (for log cosh)."""
    return tuple(_elementwise("ef_tanh", x, 2))


def atanh_rational(x: np.ndarray) -> np.ndarray:
    """The kernels' atanh of every element (|x| < 0.5)."""
    return _elementwise("ef_atanh_rational", x, 1)[0]


def exp_neg(s: np.ndarray) -> np.ndarray:
    """The kernels' exp(−s) of every element (0 ≤ s ≤ 700)."""
    return _elementwise("ef_exp_neg", s, 1)[0]


def force_pair(kind: int, a, w, b, c, mc, md, f, far_possible: bool) -> np.ndarray:
    """The echo's force pair (centre, half-difference, t_sum, t_diff, lc_diff) at one lane."""
    out = np.empty(5)
    inputs = np.array([a, w, b, c, mc, md, f], dtype=np.float64)
    library("double").ef_force_pair(kind, inputs.ctypes.data, int(far_possible), out.ctypes.data)
    return out
