"""Model-type registry: where each family keeps its MLP down projection and other scannable components.

One entry per family, keyed by ``config.model_type``. To add a family::

    from achilles_fast.registry import FamilySpec, register_family
    register_family(FamilySpec(model_types=("my_arch",), down_proj="mlp.w2",
                               components={"mlp.w2": "mlp.w2", "attn.wo": "attn.wo"}))

Component paths are relative to one decoder layer (``<prefix>.<layer index>.``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from .targets import Target


class UnsupportedModelError(ValueError):
    """The model has no registry entry and no recognisable MLP down projection."""


@dataclasses.dataclass
class FamilySpec:
    model_types: Tuple[str, ...]
    down_proj: str  # path of the MLP down projection inside a layer, e.g. "mlp.down_proj"
    # kind -> path inside a layer, for scope="all" (the paper's setting)
    components: Dict[str, str] = dataclasses.field(default_factory=dict)
    # path inside a layer -> layout, where not "linear"
    layouts: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Optional custom discovery (e.g. MoE experts stored as fused parameters): model -> extra targets
    extra_targets: Optional[Callable[[nn.Module, str], List[Target]]] = None


_REGISTRY: Dict[str, FamilySpec] = {}
_LAYER_RE = re.compile(r"^(?P<prefix>.*?(?:layers|h|blocks|block|layer))\.(?P<idx>\d+)\.(?P<rest>.+)$")


def register_family(spec: FamilySpec) -> FamilySpec:
    for mt in spec.model_types:
        _REGISTRY[mt] = spec
    return spec


def registered_model_types() -> List[str]:
    return sorted(_REGISTRY)


def get_family(model_type: str) -> Optional[FamilySpec]:
    return _REGISTRY.get(model_type)


_LLAMA_COMPONENTS = {
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.o_proj": "self_attn.o_proj",
    "mlp.gate_proj": "mlp.gate_proj",
    "mlp.up_proj": "mlp.up_proj",
    "mlp.down_proj": "mlp.down_proj",
    "norm.input": "input_layernorm",
    "norm.post_attention": "post_attention_layernorm",
}

register_family(FamilySpec(
    model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "smollm3", "cohere", "stablelm"),
    down_proj="mlp.down_proj",
    components=dict(_LLAMA_COMPONENTS),
))


def _layer_of(name: str) -> Tuple[Optional[int], Optional[str]]:
    m = _LAYER_RE.match(name)
    if not m:
        return None, None
    return int(m.group("idx")), m.group("rest")


def _num_out_channels(module: nn.Module, layout: str) -> int:
    w = getattr(module, "weight", None)
    if layout == "conv1d":
        return int(w.shape[1])
    if hasattr(module, "out_features"):
        return int(module.out_features)
    if w is not None:
        return int(w.shape[0])
    raise UnsupportedModelError(f"cannot infer the output width of {type(module).__name__}")


def model_type_of(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "model_type", None) or type(model).__name__


def discover_targets(model: nn.Module, scope: str = "down_proj") -> List[Target]:
    """All scannable targets of ``model`` in forward (module registration) order.

    scope="down_proj": the MLP down projection of every layer (default);
    scope="all": every Linear/norm output of the attention and MLP blocks listed by the family entry.
    """
    if scope not in ("down_proj", "all"):
        raise ValueError(f"unknown scope {scope!r}: expected 'down_proj' or 'all'")
    mt = model_type_of(model)
    spec = get_family(mt)
    if spec is None:
        raise UnsupportedModelError(
            f"model_type {mt!r} is not in the achilles_fast registry (known: {', '.join(registered_model_types())}). "
            "Add an entry with achilles_fast.registry.register_family(FamilySpec(model_types=("
            f"{mt!r},), down_proj='<path of the MLP down projection inside one layer>', ...))."
        )
    wanted = {spec.down_proj: "mlp.down_proj"} if scope == "down_proj" else {v: k for k, v in spec.components.items()}
    if scope == "down_proj":
        # keep the family's own kind label for the down projection if it has one
        for kind, path in spec.components.items():
            if path == spec.down_proj:
                wanted = {path: kind}
    targets: List[Target] = []
    for name, module in model.named_modules():
        layer, rest = _layer_of(name)
        if rest is None or rest not in wanted:
            continue
        layout = spec.layouts.get(rest, "linear")
        targets.append(Target(name=name, module=module, layer=layer, kind=wanted[rest],
                              num_channels=_num_out_channels(module, layout), layout=layout))
    if spec.extra_targets is not None:
        targets.extend(spec.extra_targets(model, scope))
    if not targets:
        raise UnsupportedModelError(
            f"no MLP down projection found in this {mt!r} model (registry path {spec.down_proj!r} inside "
            "each decoder layer matched no module)")
    return targets
