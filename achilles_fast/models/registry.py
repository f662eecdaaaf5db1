"""Model-type registry: where each family keeps its MLP down projection and other scannable components.

One entry per family, keyed by ``config.model_type``. To add a family::

    from achilles_fast import FamilySpec, register_family
    register_family(FamilySpec(model_types=("my_arch",), down_proj="mlp.w2",
                               components={"mlp.w2": "mlp.w2", "attn.wo": "attn.wo"}))

Component paths are relative to one decoder layer (``<prefix>.<layer index>.``).
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .targets import Target


SCOPES = ("down_proj", "all")  # what discover_targets scans: see its docstring


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
    # path inside a layer ("hook" layout) -> weight value that zeroes an output channel (Target.export_fill)
    export_fills: Dict[str, float] = dataclasses.field(default_factory=dict)
    # more down projections scanned with scope="down_proj": path inside a layer -> kind (e.g. a shared expert)
    more_down_proj: Dict[str, str] = dataclasses.field(default_factory=dict)
    # modules at these paths inside a layer are expanded into targets by ``expand(name, module, layer, scope)``
    # in both scopes (e.g. one target per expert of fused MoE experts), in module order
    expand_paths: Tuple[str, ...] = ()
    expand: Optional[Callable[[str, nn.Module, Optional[int], str], List[Target]]] = None
    # Optional custom discovery: (model, scope) -> extra targets appended after the others
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


_NORMS = {"norm.input": "input_layernorm", "norm.post_attention": "post_attention_layernorm"}
_ATTN = {f"attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
_GLU = {f"mlp.{p}": f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
_LLAMA_COMPONENTS = {**_ATTN, **_GLU, **_NORMS}

# Llama-style decoders: RMSNorm computes w * x, so zeroing w[c] zeroes norm output channel c in place.
register_family(FamilySpec(
    model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "smollm3", "cohere", "stablelm"),
    down_proj="mlp.down_proj",
    components=dict(_LLAMA_COMPONENTS),
))

# Gemma (GeGLU): RMSNorm computes x * (1 + w), so norm outputs are masked by hooks, not by zeroing w.
_GEMMA_NORMS = {**_NORMS, "norm.pre_feedforward": "pre_feedforward_layernorm",
                "norm.post_feedforward": "post_feedforward_layernorm"}
register_family(FamilySpec(
    model_types=("gemma", "gemma2", "gemma3", "gemma3_text"),
    down_proj="mlp.down_proj",
    components={**_ATTN, **_GLU, **_GEMMA_NORMS},
    layouts={path: "hook" for path in _GEMMA_NORMS.values()},
    export_fills={path: -1.0 for path in _GEMMA_NORMS.values()},  # x * (1 + w) with w[c] = -1: channel c is 0
))

# Phi-3: fused qkv_proj and gate_up_proj; down_proj is a plain Linear.
register_family(FamilySpec(
    model_types=("phi3",),
    down_proj="mlp.down_proj",
    components={"attn.qkv_proj": "self_attn.qkv_proj", "attn.o_proj": "self_attn.o_proj",
                "mlp.gate_up_proj": "mlp.gate_up_proj", "mlp.down_proj": "mlp.down_proj", **_NORMS},
))

# GPT-2: Conv1D weights are [in, out].
_GPT2 = {"attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc",
         "mlp.down_proj": "mlp.c_proj", "norm.ln_1": "ln_1", "norm.ln_2": "ln_2"}
register_family(FamilySpec(
    model_types=("gpt2",),
    down_proj="mlp.c_proj",
    components=_GPT2,
    layouts={p: "conv1d" for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
))

# GPT-NeoX / Pythia.
register_family(FamilySpec(
    model_types=("gpt_neox",),
    down_proj="mlp.dense_4h_to_h",
    components={"attn.query_key_value": "attention.query_key_value", "attn.dense": "attention.dense",
                "mlp.dense_h_to_4h": "mlp.dense_h_to_4h", "mlp.down_proj": "mlp.dense_4h_to_h", **_NORMS},
))

# OPT: fc1/fc2 sit directly in the decoder layer (fed flattened [B*T, H] tokens).
register_family(FamilySpec(
    model_types=("opt",),
    down_proj="fc2",
    components={**{f"attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")},
                "mlp.fc1": "fc1", "mlp.down_proj": "fc2", "norm.self_attn": "self_attn_layer_norm",
                "norm.final": "final_layer_norm"},
))


def _moe_experts(name: str, module: nn.Module, layer: Optional[int], scope: str) -> List[Target]:
    """One target per expert: fused experts module (transformers 5) or ModuleList MoE block (transformers 4)."""
    from . import moe
    if moe.is_fused_experts(module):
        return moe.expert_targets(name, module, layer)
    if moe.is_modulelist_moe(module):
        return moe.legacy_expert_targets(name, module, layer)
    return []


# MoE: dense layers' down_proj, the shared expert's down_proj, and every expert's down projection.
_MOE = dict(down_proj="mlp.down_proj", expand=_moe_experts, expand_paths=("mlp.experts", "mlp", "block_sparse_moe"))
register_family(FamilySpec(model_types=("mixtral",), components={**_ATTN, **_NORMS, "mlp.down_proj": "mlp.down_proj"},
                           **_MOE))
register_family(FamilySpec(
    model_types=("qwen2_moe",),
    components={**_ATTN, **_NORMS, **_GLU, "moe.shared_expert.down_proj": "mlp.shared_expert.down_proj"},
    more_down_proj={"mlp.shared_expert.down_proj": "moe.shared_expert.down_proj"},
    **_MOE))
register_family(FamilySpec(model_types=("qwen3_moe",), components={**_ATTN, **_NORMS, **_GLU}, **_MOE))


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


# Discovery without a registry entry (opt-in): in-layer paths that name an MLP down projection in common
# architectures. Attention output projections (o_proj, out_proj, attn.c_proj, dense) are deliberately absent.
DOWN_PROJ_SUFFIXES = ("mlp.down_proj", "mlp.dense_4h_to_h", "mlp.c_proj", "mlp.fc2", "mlp.fc_out", "mlp.w2",
                      "mlp.wo", "feed_forward.w2", "feed_forward.down_proj", "ffn.down_proj", "ffn.w2", "ffn.fc2",
                      "fc2", "mlp.proj")


def _unsupported(mt: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"model_type {mt!r} is not in the achilles_fast registry (known: {', '.join(registered_model_types())}). "
        "Add an entry with achilles_fast.register_family(FamilySpec(model_types=("
        f"{mt!r},), down_proj='<path of the MLP down projection inside one layer>', ...)), or opt in to a "
        "best-effort guess of the down projections with discover=True (find_critical) / --discover (CLI) / "
        "allow_discovery=True (discover_targets), and check the modules it reports.")


def _guessed_targets(model: nn.Module, mt: str) -> List[Target]:
    """Best-effort: every 2-D-weight module whose in-layer path ends like an MLP down projection."""
    targets = []
    for name, module in model.named_modules():
        layer, rest = _layer_of(name)
        w = getattr(module, "weight", None)
        if rest is None or not _text_only(name) or not isinstance(w, torch.Tensor) or w.dim() != 2:
            continue
        if not any(rest == s or rest.endswith("." + s) for s in DOWN_PROJ_SUFFIXES):
            continue
        layout = "conv1d" if type(module).__name__ == "Conv1D" else "linear"
        targets.append(Target(name=name, module=module, layer=layer, kind="mlp.down_proj",
                              num_channels=_num_out_channels(module, layout), layout=layout))
    if not targets:
        raise UnsupportedModelError(f"{_unsupported(mt)} Discovery found no module ending in any of "
                                    f"{', '.join(DOWN_PROJ_SUFFIXES)} inside a numbered layer.")
    warnings.warn(f"model_type {mt!r} is not in the achilles_fast registry: guessed {len(targets)} MLP down "
                  f"projection(s) by name, e.g. {targets[0].name} ({type(targets[0].module).__name__}, layout "
                  f"{targets[0].layout}); register a FamilySpec to make this explicit", UserWarning, stacklevel=3)
    return targets


def _wanted_paths(spec: FamilySpec, scope: str) -> Dict[str, str]:
    """In-layer path -> kind label of the components scanned in ``scope``."""
    if scope == "all":
        return {v: k for k, v in spec.components.items()}
    kind = next((k for k, path in spec.components.items() if path == spec.down_proj), "mlp.down_proj")
    return {spec.down_proj: kind, **spec.more_down_proj}


# Sub-models that a text-only forward never runs (multimodal checkpoints, e.g. Gemma-3 4B+): never scanned.
NON_TEXT_PARTS = frozenset({"vision_tower", "vision_model", "visual", "audio_tower", "audio_model",
                            "multi_modal_projector"})


def _text_only(name: str) -> bool:
    return NON_TEXT_PARTS.isdisjoint(name.split("."))


def discover_targets(model: nn.Module, scope: str = "down_proj", allow_discovery: bool = False) -> List[Target]:
    """All scannable targets of ``model`` in forward (module registration) order.

    scope="down_proj": the MLP down projection of every layer (default; for MoE: every expert's and the shared
    expert's down projection); scope="all": every Linear/norm output of the attention and MLP blocks listed
    by the family entry. allow_discovery: for a model type without a registry entry, guess the down
    projections by module name (with a warning) instead of raising ``UnsupportedModelError``.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    mt = model_type_of(model)
    spec = get_family(mt)
    if spec is None:
        if allow_discovery:
            return _guessed_targets(model, mt)
        raise _unsupported(mt)
    wanted = _wanted_paths(spec, scope)
    targets: List[Target] = []
    for name, module in model.named_modules():
        layer, rest = _layer_of(name)
        if rest is None or not _text_only(name):
            continue
        if spec.expand is not None and rest in spec.expand_paths:
            targets.extend(spec.expand(name, module, layer, scope))
        if rest not in wanted:
            continue
        layout = spec.layouts.get(rest, "linear")
        targets.append(Target(name=name, module=module, layer=layer, kind=wanted[rest],
                              num_channels=_num_out_channels(module, layout), layout=layout,
                              export_fill=spec.export_fills.get(rest)))
    if spec.extra_targets is not None:
        targets.extend(spec.extra_targets(model, scope))
    if not targets:
        raise UnsupportedModelError(
            f"no MLP down projection found in this {mt!r} model (registry path {spec.down_proj!r} inside "
            "each decoder layer matched no module)")
    return targets


def maskable_targets(model: nn.Module, allow_discovery: bool = False) -> List[Target]:
    """Every target a neuron name may refer to (scope='all' plus the down projections)."""
    seen, out = set(), []
    for scope in ("down_proj", "all"):
        for t in discover_targets(model, scope, allow_discovery=allow_discovery):
            if t.name not in seen:
                seen.add(t.name)
                out.append(t)
    return out
