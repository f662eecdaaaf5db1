"""The compression parameters (bit widths, group size, sparsity, pruning method, protect mode), each checked once.

Every check raises ``CompressionError`` (a ValueError: one line and exit 2 on the CLI) before any model work.
"""
from __future__ import annotations

import math
from typing import Optional

BITS_RANGE = (2, 8)  # RTN bit widths allowed
PRUNE_METHODS = ("magnitude", "wanda")
PROTECT_MODES = ("none", "critical", "random")


class CompressionError(ValueError):
    """Bad compression input (bits, sparsity, group size, method, protect mode, neuron list)."""


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CompressionError(f"{what} must be an integer, got {v!r}")
    return v


def check_bits(bits) -> int:
    """A round-to-nearest bit width: an integer in 2..8."""
    b = _int(bits, "bits")
    lo, hi = BITS_RANGE
    if not lo <= b <= hi:
        raise CompressionError(f"bits must be in {lo}..{hi}, got {b}")
    return b


def check_group_size(group_size) -> Optional[int]:
    """None (one scale per output channel) or a group of >= 1 input entries per scale."""
    if group_size is None:
        return None
    g = _int(group_size, "group size")
    if g < 1:
        raise CompressionError(f"group size must be >= 1 (or none: one scale per output channel), got {g}")
    return g


def check_sparsity(sparsity) -> float:
    """A pruned fraction strictly between 0 and 1."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise CompressionError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not (math.isfinite(s) and 0.0 < s < 1.0):
        raise CompressionError(f"sparsity must be in (0, 1) (exclusive), got {sparsity!r}")
    return s


def check_method(method: str) -> str:
    if method not in PRUNE_METHODS:
        raise CompressionError(f"unknown pruning method {method!r}: expected one of {', '.join(PRUNE_METHODS)}")
    return method


def check_protect_mode(mode: str) -> str:
    if mode not in PROTECT_MODES:
        raise CompressionError(f"unknown protect mode {mode!r}: expected one of {', '.join(PROTECT_MODES)}")
    return mode
