"""Low-precision copies of a model's Linear weights, swapped in for the duration of a forward (``stage2_dtype``).

Autocast casts every fp32 weight to bf16/fp16 at every forward (on this 2-core CPU that cast costs more than the bf16
GEMM saves: Gemma-3-270M's prefix evaluation was slower under bf16 autocast than in fp32). Keeping one cast copy per
weight and swapping it in removes the per-forward cast; autocast still sees the copy and leaves it as is (with the
bf16 LM head of ``ops.token_nll_lowp``, on a CPU with AMX: one Gemma-3-270M prefix evaluation 0.27 -> 0.13 s).

The model's own Parameters are never written: ``swapped()`` replaces each module's ``weight`` entry by the copy and
puts the original Parameter object back in ``finally`` (an exception or an interrupt inside leaves the model
bit-identical). A weight edited in place since its copy was made (its version counter moved, e.g. a ``masked()``
context) is copied again at the next swap, so a copy is never stale.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..utils import over_budget
from .devices import offloaded


class LowPrecisionWeights:
    """bf16/fp16 copies of the float32 ``nn.Linear`` weights of ``model`` (tied weights copied once)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, budget_bytes: int, skip: Sequence[nn.Module] = ()):
        """``skip``: modules left as they are (e.g. an LM head that Stage 1 never runs)."""
        self.dtype = dtype
        self.modules: List[nn.Linear] = [m for m in model.modules() if isinstance(m, nn.Linear)
                                         and m.weight.dtype == torch.float32 and not offloaded(m)
                                         and not any(m is x for x in skip)]
        self._copies: Dict[int, Tuple[int, int, nn.Parameter]] = {}  # id(weight) -> (version, data_ptr, copy)
        self.reason: Optional[str] = None
        unique = {id(m.weight): m.weight for m in self.modules}.values()
        refused = over_budget(f"the {dtype} weight copies need", sum(w.numel() for w in unique) * dtype.itemsize,
                              budget_bytes)
        if self.modules and refused:
            self.reason = f"{refused}: autocast casts at every forward"
            self.modules = []

    def _copy(self, w: nn.Parameter) -> nn.Parameter:
        """The low-precision copy of ``w`` [out, in], made again when ``w`` changed since."""
        entry = self._copies.get(id(w))
        if entry is None or entry[0] != w._version or entry[1] != w.data_ptr():
            low = nn.Parameter(w.detach().to(self.dtype), requires_grad=False)
            entry = self._copies[id(w)] = (w._version, w.data_ptr(), low)
        return entry[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by the copies (made at the first swap)."""
        return sum(c.numel() * c.element_size() for _, _, c in self._copies.values())

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: every listed module's ``weight`` is its low-precision copy; the originals are back on exit."""
        originals: List[Tuple[nn.Linear, nn.Parameter]] = []
        try:
            for m in self.modules:
                w = m._parameters["weight"]
                low = self._copy(w)
                originals.append((m, w))
                m._parameters["weight"] = low
            yield
        finally:
            for m, w in reversed(originals):
                m._parameters["weight"] = w
