"""Hot-path ops used by the driver.

Each public function here dispatches to the fastest available backend (Triton on CUDA, the compiled
CUDA/C++ extension, or the pure-PyTorch reference in ``reference.py``). ``use_kernels(False)`` forces the
reference path everywhere (used by tests to compare end to end).
"""
from __future__ import annotations

import contextlib

import torch

from . import reference as ref

_ENABLED = True


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


def backend_info() -> dict:
    """Which backends are available in this process."""
    return {"kernels_enabled": _ENABLED, "cpp": False, "cuda": False, "triton": False}


def noisy_embeds(embeds: torch.Tensor, alpha: float, seed: int, k_start: int, k_count: int) -> torch.Tensor:
    """embeds [T, H] -> [k_count, T, H]: embeds + alpha * Philox noise of samples k_start..k_start+k_count-1."""
    return ref.noisy_embeds_ref(embeds, alpha, seed, k_start, k_count)


def absdiff_accum_(acc: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """acc [T, C] or [C] fp32 += sum_k |noisy [k, T, C] - clean [T, C]|."""
    return ref.absdiff_accum_ref(acc, clean, noisy)


def mask_channels_(weight: torch.Tensor, bias, channels: torch.Tensor, dim: int = 0):
    """Zero output channels in place; returns saved originals for ``restore_channels_``."""
    return ref.mask_rows_ref(weight, bias, channels, dim)


def restore_channels_(weight, bias, channels, saved_w, saved_b, dim: int = 0) -> None:
    ref.restore_rows_ref(weight, bias, channels, saved_w, saved_b, dim)


def batched_channel_mask(out: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """out [B, T, C] with keep [B, C] applied per batch element (0 -> exact zero)."""
    return ref.batched_channel_mask_ref(out, keep)


def token_nll(hidden: torch.Tensor, lm_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL [N] float32 of hidden [N, H] under lm_weight [V, H]."""
    return ref.token_nll_ref(hidden, lm_weight, targets)
