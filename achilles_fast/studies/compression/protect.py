"""Protect lists: for a neuron set, one bool tensor per weight tensor, True exactly on the weights producing a
neuron's channel -- what a quantiser or pruner must leave alone.

The geometry comes from each neuron's ``Target`` (``mask_params``: the Linear row, the Conv1D column, the fused
expert's slice, the producer's row for an activation; ``hook`` layout: the norm's weight entry), the same
geometry in-place masking uses: protecting a set covers exactly the values masking it would zero (biases too).
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...models.neurons import NeuronIndex
from ...models.registry import discover_targets, maskable_targets
from ...models.targets import Target
from ...utils import atomic_write, write_json
from .params import CompressionError


@dataclasses.dataclass
class ProtectList:
    """masks: parameter name -> bool tensor shaped like the parameter; entries: one per neuron, naming the weights
    and rows / columns / entries / slices that produce it."""

    masks: Dict[str, torch.Tensor]
    entries: List[Dict]

    @property
    def neurons(self) -> List[str]:
        return [e["neuron"] for e in self.entries]

    def count(self) -> int:
        """Number of protected weight values."""
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def get(self, name: str) -> Optional[torch.Tensor]:
        return self.masks.get(name)

    def to_json(self) -> Dict:
        return {"neurons": self.entries, "tensors": {k: list(v.shape) for k, v in self.masks.items()},
                "protected_values": self.count()}

    def save(self, path) -> Tuple[Path, Path]:
        """Write ``path`` (safetensors: the bool masks) and the same stem with ``.json`` (the naming), each
        atomically; returns both paths."""
        from safetensors.torch import save
        path = Path(path).expanduser()
        jpath = json_path(path)
        atomic_write(path, save({k: v.contiguous().cpu() for k, v in self.masks.items()},
                                metadata={"format": "achilles_fast.protect_list"}))
        write_json(self.to_json(), jpath, indent=1)
        return path, jpath


def json_path(path) -> Path:
    """The naming file written next to a protect list: F.safetensors -> F.json."""
    p = Path(path)
    return p.with_suffix(".json") if p.suffix == ".safetensors" else p.with_name(p.name + ".json")


def _regions(t: Target, c: int) -> List[Tuple[torch.Tensor, int, int]]:
    """(tensor view, dim, index along dim) of every weight producing channel c of target t."""
    params = t.mask_params()
    if params is not None:
        w, b, dim = params
        return [(w, dim, c)] + ([(b, 0, c)] if b is not None else [])
    w = getattr(t.module, "weight", None)
    if t.layout == "hook" and isinstance(w, torch.Tensor) and w.dim() == 1:
        return [(w, 0, c % w.numel())]  # a norm's entry (per-head norms share theirs across heads)
    raise CompressionError(f"{t.name}: no weight produces its channels (layout {t.layout!r}); it cannot be protected")


def _owner(view: torch.Tensor, params: Dict[int, Tuple[str, torch.Tensor]]) -> Tuple[str, torch.Tensor]:
    p = params.get(view.untyped_storage().data_ptr())
    if p is None:
        raise CompressionError("a weight producing a protected channel is not a parameter of the model")
    return p


def protect_list(model: nn.Module, neurons, out=None, discover: bool = False,
                 targets: Optional[Sequence[Target]] = None) -> ProtectList:
    """The protect list of ``neurons`` (names like ``model.layers.2.mlp.down_proj:62``, Neurons, or a
    CriticalResult); ``out``: also save it there (F.safetensors + F.json). Empty or unknown neurons raise before
    anything is built. discover: allow guessed targets for unregistered model types."""
    names = list(getattr(neurons, "names", neurons))
    if not names:
        raise CompressionError("the neuron list is empty: nothing to protect")
    targets = list(targets) if targets is not None else maskable_targets(model, allow_discovery=discover)
    index = NeuronIndex(targets)
    try:
        resolved = list(dict.fromkeys(index.resolve(names)))
    except ValueError as e:
        raise CompressionError(str(e)) from None
    params = {p.untyped_storage().data_ptr(): (n, p) for n, p in model.named_parameters()}
    masks: Dict[str, torch.Tensor] = {}
    entries = []
    for n in resolved:
        t = index.targets[index.by_name[n.module]]
        weights = []
        for view, dim, c in _regions(t, n.channel):
            name, p = _owner(view, params)
            if not p.is_contiguous():
                raise CompressionError(f"{name} is not contiguous: cannot map its protected entries")
            m = masks.get(name)
            if m is None:
                m = masks[name] = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            mv = m.as_strided(view.shape, view.stride(), view.storage_offset() - p.storage_offset())
            mv.select(dim, c).fill_(True)
            weights.append(_describe(name, p, view, dim, c))
        entries.append({"neuron": n.name, "module": n.module, "channel": n.channel, "layer": n.layer,
                        "kind": n.kind, "weights": weights})
    pl = ProtectList(masks, entries)
    if out is not None:
        pl.save(out)
    return pl


def _describe(name: str, p: torch.Tensor, view: torch.Tensor, dim: int, c: int) -> Dict:
    """JSON naming of one protected region: rows / columns of a 2-D weight, entries of a 1-D one, else a slice."""
    d = {"weight": name, "shape": list(p.shape)}
    if view.shape == p.shape and p.dim() == 2:
        d["rows" if dim == 0 else "columns"] = [c]
    elif view.shape == p.shape and p.dim() == 1:
        d["entries"] = [c]
    else:  # a sub-tensor (fused experts): its leading index, then the channel
        lead = (view.storage_offset() - p.storage_offset()) // p.stride(0)
        idx = [str(lead)] + [":"] * view.dim()
        idx[1 + dim] = str(c)
        d["slice"] = "[" + ", ".join(idx) + "]"
    return d


def random_down_proj(model: nn.Module, n: int, seed: int = 0, discover: bool = False) -> List[str]:
    """``n`` distinct random MLP down-projection channels (seeded): the control for a protected set of size n."""
    targets = discover_targets(model, "down_proj", allow_discovery=discover)
    total = sum(t.num_channels for t in targets)
    if not 0 <= n <= total:
        raise CompressionError(f"cannot draw {n} random down_proj channels out of {total}")
    index = NeuronIndex(targets)
    return [index.neuron(i).name for i in sorted(random.Random(seed).sample(range(total), n))]

