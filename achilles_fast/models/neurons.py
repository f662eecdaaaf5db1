"""Neuron naming: ``<HF module path>:<channel>``, e.g. ``model.layers.2.mlp.down_proj:62``."""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, List, Optional, Sequence

import torch

from .targets import Target


@dataclasses.dataclass(frozen=True)
class Neuron:
    module: str
    channel: int
    layer: Optional[int] = None
    kind: str = ""

    @property
    def name(self) -> str:
        return f"{self.module}:{self.channel}"

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def parse(text: str) -> "Neuron":
        module, sep, ch = str(text).strip().rpartition(":")
        if not sep or not module or not ch.strip().lstrip("-").isdigit():
            raise ValueError(f"bad neuron name {text!r}: expected '<module path>:<channel>'")
        return Neuron(module=module, channel=int(ch))


class NeuronIndex:
    """Maps between neurons and a flat channel id over a list of targets (in scan order)."""

    def __init__(self, targets: Sequence[Target]):
        self.targets = list(targets)
        self.by_name: Dict[str, int] = {t.name: i for i, t in enumerate(self.targets)}
        sizes = [t.num_channels for t in self.targets]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.total = self.offsets[-1]

    def flat_id(self, n: Neuron) -> int:
        return self.offsets[self.by_name[n.module]] + n.channel

    def neuron(self, flat_id: int) -> Neuron:
        ti = int(torch.searchsorted(torch.tensor(self.offsets), torch.tensor(flat_id), right=True)) - 1
        t = self.targets[ti]
        return Neuron(module=t.name, channel=flat_id - self.offsets[ti], layer=t.layer, kind=t.kind)

    def resolve(self, names: Iterable) -> List[Neuron]:
        """Validate neuron names/objects against the targets; fill layer and kind. Clear error if unknown."""
        out = []
        for item in names:
            n = item if isinstance(item, Neuron) else Neuron.parse(item)
            ti = self.by_name.get(n.module)
            if ti is None:
                known = ", ".join(list(self.by_name)[:3])
                raise KeyError(f"neuron {n.name!r}: no scannable module named {n.module!r} in this model "
                               f"(e.g. {known}, ...)")
            t = self.targets[ti]
            if not 0 <= n.channel < t.num_channels:
                raise KeyError(f"neuron {n.name!r}: channel out of range [0, {t.num_channels}) for {t.name}")
            out.append(Neuron(module=t.name, channel=n.channel, layer=t.layer, kind=t.kind))
        return out
