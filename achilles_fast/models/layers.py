"""The decoder layer stack of a causal LM, and running it from layer L on recorded layer outputs.

``LayerStack.run(start, standin, record)`` makes layers 0..start-1 stand-ins for one forward: each returns
``standin`` (the recorded output of layer start-1 for this batch, the very object structure the real layer returned:
a tensor in transformers 5, a tuple in 4) without computing anything, so layer ``start`` receives exactly the cached
residual stream while the model's own forward still builds everything around the layers (embeddings and their
scaling, position ids, rotary embeddings, causal / sliding-window masks, the final norm). Layers start.. run for real
and ``record(i, out)`` sees their outputs. Nothing is written to the weights; the layers' own ``forward`` (an
accelerate wrapper included) is put back on exit, also on exceptions.
"""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .families import get_family
from .registry import _text_only, model_type_of

_STACK_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)$")  # the names registry._LAYER_RE accepts


class LayerStack:
    """The decoder layers (``prefix``: their ModuleList's name, e.g. ``model.layers``)."""

    def __init__(self, prefix: str, layers: nn.ModuleList):
        self.prefix = prefix
        self.layers: List[nn.Module] = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def signatures(self, layer_types: Optional[Sequence[str]] = None) -> List[tuple]:
        """Per layer, what picks its kernels' paths: module types, parameter shapes and dtypes, the config's layer
        type (``layer_types``: sliding / full attention). Layers of one signature run the same kernels on a shape."""
        return [(tuple((n, type(m).__name__) for n, m in layer.named_modules()),
                 tuple((n, tuple(p.shape), p.dtype) for n, p in layer.named_parameters()),
                 layer_types[i] if layer_types is not None and i < len(layer_types) else None)
                for i, layer in enumerate(self.layers)]

    def layer_of(self, name: str, layer: Optional[int]) -> Optional[int]:
        """Index of the stack layer holding module ``name`` (a Target's name and layer), None when outside it."""
        if layer is None or not 0 <= layer < len(self) or not name.startswith(f"{self.prefix}.{layer}."):
            return None
        return layer

    @contextlib.contextmanager
    def run(self, start: int, standin, record: Callable[[int, object], None]) -> Iterator[None]:
        """Inside: a forward skips layers 0..start-1 (each returns ``standin``) and calls ``record(i, output)`` for
        every layer i >= start that runs."""
        saved, handles = [], []
        try:
            for i, layer in enumerate(self.layers):
                if i < start:
                    saved.append((layer, layer.__dict__.get("forward")))
                    layer.forward = _standin(standin)
                else:
                    handles.append(layer.register_forward_hook(lambda m, a, out, i=i: record(i, out)))
            yield
        finally:
            for h in handles:
                h.remove()
            for layer, fwd in saved:
                if fwd is None:
                    del layer.forward
                else:
                    layer.forward = fwd


def _standin(out):
    def forward(*args, **kwargs):
        return out
    return forward


def layer_stack(model: nn.Module) -> Union[LayerStack, str]:
    """The model's decoder layer stack, or the reason it cannot be run from a cached residual stream (the family
    entry's ``incremental`` reason, no registry entry, no single numbered layer list)."""
    mt = model_type_of(model)
    spec = get_family(mt)
    if spec is None:
        return f"model_type {mt!r} has no registry entry"
    if spec.incremental is not None:
        return spec.incremental
    found: List[Tuple[str, nn.ModuleList]] = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) and _STACK_RE.search(name) and _text_only(name)]
    if len(found) != 1:
        return f"{len(found)} candidate decoder layer lists ({', '.join(n for n, _ in found) or 'none'})"
    return LayerStack(*found[0])


# ---- layer outputs: one batch element's rows, and a batch from rows -----------------------------------------------
class UnsupportedOutput(TypeError):
    """A layer output holding something other than tensors, tuples/lists of them and None."""


def take_row(out, b: int, batch: int):
    """Batch element ``b`` (of ``batch``) of a layer output, cloned: tensors with ``batch`` rows -> [1, ...]."""
    if out is None:
        return None
    if isinstance(out, torch.Tensor):
        if out.dim() == 0 or out.shape[0] != batch:
            raise UnsupportedOutput(f"a layer output tensor of shape {tuple(out.shape)} has no batch dimension")
        return out[b:b + 1].clone()
    if isinstance(out, (tuple, list)) and type(out) in (tuple, list):
        return type(out)(take_row(o, b, batch) for o in out)
    raise UnsupportedOutput(f"a decoder layer returned {type(out).__name__}")


def stack_rows(rows: List[object]):
    """The batch made of ``take_row`` results (in order): tensors concatenated on dim 0."""
    first = rows[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return first if len(rows) == 1 else torch.cat(rows)
    return type(first)(stack_rows([r[j] for r in rows]) for j in range(len(first)))


def nbytes(out) -> int:
    """Bytes of the tensors in a layer output structure."""
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    if isinstance(out, (tuple, list)):
        return sum(nbytes(o) for o in out)
    return 0
