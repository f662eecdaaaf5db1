"""Shared by the op tests (tests/ops/test_<op>.py): backends, NaN-poisoned memory, tolerances, opcheck.

Backends (the ``backend`` parameter of the kernel tests):
- ``cpp``: the C++ CPU kernels of achilles_fast._C (the custom op on CPU tensors);
- ``triton``: the Triton launchers, called directly: on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1``
  (a separate invocation: ``TRITON_INTERPRET=1 pytest tests/ops -m triton``);
- ``cuda``: the compiled CUDA kernels (the custom op on CUDA tensors; marked gpu).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops import _lib

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
SMALL = not HAS_CUDA  # the Triton interpreter runs each program in numpy: keep its grids small

BACKENDS = [
    pytest.param("cpp", id="cpp"),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def device_of(backend: str) -> torch.device:
    if backend == "cpp":
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    return torch.device("cuda" if HAS_CUDA else "cpu")


def kernel(backend: str, name: str):
    """The implementation of op ``name`` on ``backend``, with the op's signature (skips when unavailable here)."""
    info = ops.backend_info()
    if backend == "cpp":
        if name not in info["cpu_ops"]:
            pytest.skip(f"no C++ CPU kernel for {name}: {info['error']}")
        return getattr(torch.ops.achilles_fast, name)
    if backend == "cuda":
        if not HAS_CUDA:
            pytest.skip("needs a CUDA device")
        if name not in info["cuda_ops"]:
            pytest.skip(f"achilles_fast._C was built without CUDA kernels ({name})")
        return getattr(torch.ops.achilles_fast, name)
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not HAS_CUDA and not INTERPRET:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (separate pytest run: TRITON_INTERPRET=1 "
                    "pytest tests/ops -m triton)")
    return _lib.OPS[name].triton


def shapes_for(backend: str, full: list) -> list:
    """Shapes per backend: all but the largest for the Triton interpreter."""
    return full[: max(2, len(full) - 1)] if backend == "triton" and SMALL else full


@contextlib.contextmanager
def poisoned_empty():
    """torch.empty / at::empty return NaN-filled memory inside the block (an element a kernel fails to write then
    shows up as a mismatch)."""
    import torch.utils.deterministic as det
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def tol(dtype) -> tuple[float, float]:
    """(rtol, atol) of a float result rounded to dtype."""
    return {torch.float32: (2e-6, 2e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 1e-2)}[dtype]


def opcheck_args(dev) -> dict:
    """name -> arguments of one ``opcheck`` call per op, on device ``dev``."""
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    return {
        "noisy_embeds": (r(7, 33), 5.0, 3, 2, 4),
        "absdiff_accum_": (torch.rand(7, 33, generator=g).to(dev), r(7, 33), r(3, 7, 33)),
        "mask_channels_": (r(20, 9), torch.tensor([3, 5], device=dev), 0),
        "restore_channels_": (r(9, 20), torch.tensor([3, 5], device=dev), r(9, 2), 1),
        "batched_channel_mask": (r(3, 5, 7), (torch.rand(3, 7, generator=g) > 0.5).float().to(dev)),
        "token_nll": (r(20, 40), r(100, 40), torch.randint(0, 100, (20,), generator=g).to(dev)),
    }


def opcheck(backend: str, name: str) -> None:
    """torch.library.opcheck of ``achilles_fast::name`` running the backend's implementation: the Triton launcher
    is registered for the device's dispatch key for the check only (the previous kernel comes back after)."""
    kernel(backend, name)  # skips when unavailable
    dev = device_of(backend)
    lib = None
    if backend == "triton":
        lib = torch.library.Library("achilles_fast", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Overriding a previously registered kernel"
            lib.impl(name, _lib.OPS[name].triton, "CUDA" if dev.type == "cuda" else "CPU")
    try:
        torch.library.opcheck(getattr(torch.ops.achilles_fast, name).default, opcheck_args(dev)[name])
    finally:
        if lib is not None:
            lib._destroy()
