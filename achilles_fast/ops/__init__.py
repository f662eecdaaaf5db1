"""Hot-path ops used by the driver, as ``torch.library`` custom ops ``achilles_fast::<name>``.

Each public function here calls its custom op, which the PyTorch dispatcher routes by device:
- CPU: the C++ kernels (``csrc/cpu``, vectorised + OpenMP), from ``achilles_fast._C`` or a one-time JIT build;
- CUDA: the compiled CUDA kernels (``csrc/cuda``) when the extension was built with CUDA, else the Triton kernels
  (``triton_kernels.py``); ``ACHILLES_FAST_CUDA_BACKEND=triton`` prefers Triton even when CUDA kernels exist;
- anything else, or no compiled kernel: the pure-PyTorch reference (``reference.py``), registered as the
  CompositeExplicitAutograd kernel of every op.
``use_kernels(False)`` bypasses the ops and calls the references directly (tests compare both end to end).
Schemas, fakes and registrations: ``_registry.py``; loading: ``_loader.py``.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import _registry
from . import reference as ref
from ._loader import ensure_loaded

_ENABLED = True
_OPS = torch.ops.achilles_fast


def kernels_enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def use_kernels(enabled: bool):
    """Temporarily enable/disable the compiled and Triton kernels (reference path when disabled)."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(enabled)
    try:
        yield
    finally:
        _ENABLED = old


def _cuda_backend() -> str:
    return os.environ.get("ACHILLES_FAST_CUDA_BACKEND", "auto").strip().lower()


def _op(name: str, t: torch.Tensor):
    """The op to call for tensor ``t`` (kernels enabled)."""
    ensure_loaded()
    if t.device.type == "cuda":
        b = _cuda_backend()
        if b == "triton":
            return getattr(_OPS, "triton_" + name)
        if b in ("reference", "ref"):
            return None
    return getattr(_OPS, name)


def backend_info() -> dict:
    """Which backends are available in this process (loads the kernels if not done yet)."""
    st = ensure_loaded()
    has = {key: [n for n in _registry.OPS if _registry.has_kernel(n, key)] for key in ("CPU", "CUDA")}
    triton_cuda = list(st["triton_cuda"])
    cuda_compiled = [n for n in has["CUDA"] if n not in triton_cuda]
    try:
        import importlib.util
        triton_ok = importlib.util.find_spec("triton") is not None
    except Exception:  # pragma: no cover
        triton_ok = False
    return {
        "kernels_enabled": _ENABLED,
        "cpp": len(has["CPU"]) == len(_registry.OPS),
        "cuda": len(cuda_compiled) > 0,
        "triton": triton_ok,
        "source": st["source"],
        "error": st["error"],
        "cpu_ops": has["CPU"],
        "cuda_ops": cuda_compiled,
        "triton_cuda_ops": triton_cuda,
        "cuda_backend": _cuda_backend(),
    }


def _signed64(seed: int) -> int:
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= (1 << 63) else s


def noisy_embeds(embeds: torch.Tensor, alpha: float, seed: int, k_start: int, k_count: int) -> torch.Tensor:
    """embeds [T, H] -> [k_count, T, H]: embeds + alpha * Philox noise of samples k_start..k_start+k_count-1."""
    op = _op("noisy_embeds", embeds) if _ENABLED else None
    if op is None:
        return ref.noisy_embeds_ref(embeds, alpha, seed, k_start, k_count)
    return op(embeds, float(alpha), _signed64(seed), int(k_start), int(k_count))


def absdiff_accum_(acc: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """acc [T, C] or [C] fp32 += sum_k |noisy [k, T, C] - clean [T, C]|."""
    op = _op("absdiff_accum_", acc) if _ENABLED else None
    if op is None:
        return ref.absdiff_accum_ref(acc, clean, noisy)
    op(acc, clean, noisy)
    return acc


def mask_channels_(weight: torch.Tensor, bias, channels: torch.Tensor, dim: int = 0):
    """Zero output channels in place; returns saved originals for ``restore_channels_``."""
    op = _op("mask_channels_", weight) if _ENABLED else None
    if op is None:
        return ref.mask_rows_ref(weight, bias, channels, dim)
    saved_w = op(weight, channels, int(dim))
    saved_b = None if bias is None else op(bias, channels, 0)
    return saved_w, saved_b


def restore_channels_(weight, bias, channels, saved_w, saved_b, dim: int = 0) -> None:
    op = _op("restore_channels_", weight) if _ENABLED else None
    if op is None:
        return ref.restore_rows_ref(weight, bias, channels, saved_w, saved_b, dim)
    op(weight, channels, saved_w, int(dim))
    if bias is not None and saved_b is not None:
        op(bias, channels, saved_b, 0)


def batched_channel_mask(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out [B, T, C] with keep [B, C] applied per batch element (0 -> exact zero)."""
    op = _op("batched_channel_mask", out) if _ENABLED else None
    if op is None:
        return ref.batched_channel_mask_ref(out, keep)
    return op(out, keep)


def token_nll(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [N] float32 of hidden [N, H] under lm_weight [V, H]."""
    op = _op("token_nll", hidden) if _ENABLED else None
    if op is None:
        return ref.token_nll_ref(hidden, lm_weight, targets)
    return op(hidden, lm_weight, targets)
