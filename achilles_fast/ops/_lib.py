"""The ``torch.library`` plumbing the op modules share: one Library, ``define`` (one call per op), the loader.

``define(name, schema, reference, fake, launcher)`` declares ``achilles_fast::<name>`` with
- the pure-PyTorch reference as its ``CompositeExplicitAutograd`` kernel: what runs on any device without a
  compiled kernel;
- the fake (meta) kernel, for FakeTensor / torch.compile / ``opcheck``;
and returns an ``Op`` (which also holds the Triton launcher), whose call is the one preamble of every public
wrapper: the reference directly under ``use_kernels(False)``, else the custom op, which the dispatcher routes by
device.

Loading, at the first op call (or ``backend_info()``): ``import achilles_fast._C`` registers the C++ CPU kernels, and
the CUDA kernels when it was built with CUDA (``TORCH_LIBRARY_IMPL`` in csrc/; a dispatcher backend kernel always
wins over CompositeExplicitAutograd). When it does not load: one warning, and the references run. On CUDA, ops
without a compiled CUDA kernel get their Triton launcher when triton is importable.
``ACHILLES_FAST_CUDA_BACKEND=triton`` (or ``reference``) makes CUDA tensors take the Triton launchers (or the
references) even where compiled CUDA kernels exist (benchmarks and GPU tests compare them).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # not installed (or broken): no Triton kernels then; everything else works
    triton = tl = None

NAMESPACE = "achilles_fast"
LIB = torch.library.Library(NAMESPACE, "DEF")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # Triton kernels on CPU tensors (tests)

OPS: dict[str, "Op"] = {}  # name -> Op, in definition order
_enabled = True
_lock = threading.Lock()
_state: dict = {"loaded": False, "source": None, "error": None, "triton_cuda": []}
_triton_cuda_lib: torch.library.Library | None = None  # holds the Triton CUDA registrations


def jit(fn):
    """``triton.jit``; without triton the plain function (never launched then)."""
    return fn if triton is None else triton.jit(fn)


def check_triton_device(*tensors) -> None:
    """The Triton launchers take CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if triton is None:
        raise RuntimeError("the Triton kernels need triton (pip install triton)")
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not INTERPRET:
            raise RuntimeError("the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")


def cuda_backend() -> str:
    return os.environ.get("ACHILLES_FAST_CUDA_BACKEND", "auto").strip().lower()


@dataclass(frozen=True)
class Op:
    """One custom op: ``achilles_fast::<name>``, its reference and its Triton launcher (same signature)."""
    name: str
    reference: Callable
    triton: Callable

    @property
    def op(self):
        return getattr(torch.ops.achilles_fast, self.name)

    def __call__(self, *args):
        if not _enabled:
            return self.reference(*args)
        ensure_loaded()
        if args[0].device.type == "cuda":
            backend = cuda_backend()
            if backend == "triton":
                return self.triton(*args)
            if backend in ("reference", "ref"):
                return self.reference(*args)
        return self.op(*args)


def define(name: str, schema: str, reference: Callable, fake: Callable, launcher: Callable) -> Op:
    """Declare ``achilles_fast::<name><schema>`` with its reference (CompositeExplicitAutograd) and fake kernels;
    ``launcher`` is its Triton implementation (registered for CUDA at load time where no compiled kernel is)."""
    LIB.define(name + schema)
    LIB.impl(name, reference, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIB)
    OPS[name] = Op(name, reference, launcher)
    return OPS[name]


def has_kernel(name: str, key: str) -> bool:
    """True when ``achilles_fast::name`` has a kernel registered for dispatch key ``key`` (e.g. CPU, CUDA)."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", key))
    except Exception:  # pragma: no cover - private API moved
        return False


def _register_triton_for_cuda() -> list:
    """The Triton launchers become the CUDA kernels of the ops that have no compiled one."""
    global _triton_cuda_lib
    done = []
    for name, op in OPS.items():
        if has_kernel(name, "CUDA"):
            continue
        if _triton_cuda_lib is None:
            _triton_cuda_lib = torch.library.Library(NAMESPACE, "IMPL")
        _triton_cuda_lib.impl(name, op.triton, "CUDA")
        done.append(name)
    return done


def ensure_loaded() -> dict:
    """Load the compiled kernels once per process; returns the loader state."""
    if _state["loaded"]:
        return _state
    with _lock:
        if _state["loaded"]:
            return _state
        try:
            import achilles_fast._C  # noqa: F401  (registers the kernels)
            _state["source"] = "extension"
        except Exception as e:  # ImportError, or an undefined symbol from another torch build
            _state["source"] = "reference"
            _state["error"] = f"achilles_fast._C: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn("achilles_fast: compiled ops unavailable, using the PyTorch reference ops (same results, "
                          "slower); build them with `pip install --no-build-isolation .` [" + _state["error"] + "]",
                          RuntimeWarning, stacklevel=3)
        if triton is not None and torch.cuda.is_available():
            _state["triton_cuda"] = _register_triton_for_cuda()
        _state["loaded"] = True
    return _state


def backend_info() -> dict:
    """Which backends serve the ops in this process (loads the kernels if not done yet)."""
    st = ensure_loaded()
    has = {key: [n for n in OPS if has_kernel(n, key)] for key in ("CPU", "CUDA")}
    cuda_compiled = [n for n in has["CUDA"] if n not in st["triton_cuda"]]
    return {
        "kernels_enabled": _enabled,
        "cpp": len(has["CPU"]) == len(OPS),
        "cuda": len(cuda_compiled) > 0,
        "triton": triton is not None,
        "source": st["source"],  # "extension" (achilles_fast._C loaded) or "reference"
        "error": st["error"],
        "cpu_ops": has["CPU"],
        "cuda_ops": cuda_compiled,
        "triton_cuda_ops": list(st["triton_cuda"]),
        "cuda_backend": cuda_backend(),
    }


def kernels_enabled() -> bool:
    return _enabled


@contextlib.contextmanager
def use_kernels(enabled: bool):
    """Temporarily enable/disable the compiled and Triton kernels (the references run when disabled)."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    try:
        yield
    finally:
        _enabled = old
