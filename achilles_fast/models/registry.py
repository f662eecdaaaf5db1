"""Model-type registry: where each family keeps its MLP down projection and other scannable components.

One entry per family, keyed by ``config.model_type``. To add a family::

    from achilles_fast import FamilySpec, register_family
    register_family(FamilySpec(model_types=("my_arch",), down_proj="mlp.w2",
                               components={"mlp.w2": "mlp.w2", "attn.wo": "attn.wo"}))

Component paths are relative to one decoder layer (``<prefix>.<layer index>.``).

Scopes (``discover_targets``): ``down_proj`` (the MLP down projection of every layer), ``all`` (the Linear/norm
outputs of the attention and MLP blocks that the family entry lists) and ``paper``: exactly the modules the authors'
code scans (``PAPER_KEYWORDS``, ``paper_rule``), each mapped through the family entry, MLP activations included.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .targets import Target


SCOPES = ("down_proj", "all", "paper")  # what discover_targets scans: see its docstring

# The authors' module rule (qqqqqqqzx/The-Achilles-Heel-of-LLMs, method/1_importance_evaluation.py, _setup_hooks):
# every module whose lower-cased name contains one of these keywords and that is a leaf or an nn.Linear /
# nn.LayerNorm; of those, the ones whose forward returns a tensor are scanned.
PAPER_KEYWORDS = ("mlp", "ffn", "feed_forward", "attention", "self_attn")


def paper_rule(name: str, module: nn.Module) -> bool:
    """True for the modules the authors' code hooks (``PAPER_KEYWORDS``; leaf, Linear or LayerNorm)."""
    return (any(k in name.lower() for k in PAPER_KEYWORDS)
            and (not list(module.children()) or isinstance(module, (nn.Linear, nn.LayerNorm))))


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
    # MLP activations (GeLU/SiLU output before the down projection; f(0) = 0): path inside a layer -> (path of the
    # module producing its input, whose output channel c is zeroed to mask it in place, and path of the module
    # consuming it, whose input width is its width). Maskable always; scanned by scope "paper".
    acts: Dict[str, Tuple[str, str]] = dataclasses.field(default_factory=dict)
    # scope "paper" only: more Linear components the authors' rule matches (kind -> path inside a layer)
    paper_components: Dict[str, str] = dataclasses.field(default_factory=dict)
    # scope "paper" only: identity modules in eval mode (dropouts) the rule matches -> the path whose output they
    # repeat (masking one equals masking that output, in place through its weights)
    copies: Dict[str, str] = dataclasses.field(default_factory=dict)
    # scope "paper" only: per-head q/k norms -> (the projection they normalise, axis order of their 4-D output:
    # "bthd" [B, T, heads, head_dim] or "bhtd" [B, heads, T, head_dim]); channel = head * head_dim + dim
    head_norms: Dict[str, Tuple[str, str]] = dataclasses.field(default_factory=dict)
    # scope "paper": paths the rule matches that are not scanned, with the reason (e.g. MoE routers return tuples)
    paper_skip: Dict[str, str] = dataclasses.field(default_factory=dict)
    # Stage 2 incremental evaluation (``models/layers.py``): None when layer L's input is layer L-1's output and
    # nothing else crosses layers in a forward (no per-layer inputs, KV sharing or cross-layer router state), so
    # layers L.. can run from recorded layer outputs; else the reason they cannot (full forwards, reason in stats)
    incremental: Optional[str] = None


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

_ACT = {"mlp.act_fn": ("mlp.gate_proj", "mlp.down_proj")}
_QK_NORMS = {"self_attn.q_norm": ("self_attn.q_proj", "bthd"), "self_attn.k_norm": ("self_attn.k_proj", "bthd")}

# Llama-style decoders: RMSNorm computes w * x, so zeroing w[c] zeroes norm output channel c in place.
register_family(FamilySpec(
    model_types=("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "smollm3", "cohere", "stablelm"),
    down_proj="mlp.down_proj",
    components=dict(_LLAMA_COMPONENTS),
    acts=dict(_ACT), head_norms=dict(_QK_NORMS),
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
    acts=dict(_ACT), head_norms={p: (src, "bhtd") for p, (src, _) in _QK_NORMS.items()},
))

# Phi-3: fused qkv_proj and gate_up_proj; down_proj is a plain Linear.
register_family(FamilySpec(
    model_types=("phi3",),
    down_proj="mlp.down_proj",
    components={"attn.qkv_proj": "self_attn.qkv_proj", "attn.o_proj": "self_attn.o_proj",
                "mlp.gate_up_proj": "mlp.gate_up_proj", "mlp.down_proj": "mlp.down_proj", **_NORMS},
    acts={"mlp.activation_fn": ("mlp.gate_up_proj", "mlp.down_proj")},  # the gate is the first half of gate_up
    copies={"resid_mlp_dropout": "mlp.down_proj"},
))

# GPT-2: Conv1D weights are [in, out].
_GPT2 = {"attn.c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "mlp.c_fc",
         "mlp.down_proj": "mlp.c_proj", "norm.ln_1": "ln_1", "norm.ln_2": "ln_2"}
register_family(FamilySpec(
    model_types=("gpt2",),
    down_proj="mlp.c_proj",
    components=_GPT2,
    layouts={p: "conv1d" for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")},
    acts={"mlp.act": ("mlp.c_fc", "mlp.c_proj")}, copies={"mlp.dropout": "mlp.c_proj"},
))

# GPT-NeoX / Pythia.
register_family(FamilySpec(
    model_types=("gpt_neox",),
    down_proj="mlp.dense_4h_to_h",
    components={"attn.query_key_value": "attention.query_key_value", "attn.dense": "attention.dense",
                "mlp.dense_h_to_4h": "mlp.dense_h_to_4h", "mlp.down_proj": "mlp.dense_4h_to_h", **_NORMS},
    acts={"mlp.act": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")},
    copies={"post_attention_dropout": "attention.dense", "post_mlp_dropout": "mlp.dense_4h_to_h"},
))

# OPT: fc1/fc2 sit directly in the decoder layer (fed flattened [B*T, H] tokens).
register_family(FamilySpec(
    model_types=("opt",),
    down_proj="fc2",
    components={**{f"attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "out_proj")},
                "mlp.fc1": "fc1", "mlp.down_proj": "fc2", "norm.self_attn": "self_attn_layer_norm",
                "norm.final": "final_layer_norm"},
    acts={"activation_fn": ("fc1", "fc2")},
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
# Scope "paper": the routers return tuples (the authors' hooks skip them) and the fused experts' shared activation
# sees routed (token, expert) rows, not positions: neither is scanned.
_MOE_SKIP = {"mlp.gate": "the router returns a tuple, which the authors' hooks skip",
             "mlp.experts.act_fn": "called on routed (token, expert) rows, not on positions"}
_MOE = dict(down_proj="mlp.down_proj", expand=_moe_experts, expand_paths=("mlp.experts", "mlp", "block_sparse_moe"),
            acts=dict(_ACT), paper_skip=_MOE_SKIP)
register_family(FamilySpec(model_types=("mixtral",), components={**_ATTN, **_NORMS, "mlp.down_proj": "mlp.down_proj"},
                           **_MOE))
register_family(FamilySpec(
    model_types=("qwen2_moe",),
    components={**_ATTN, **_NORMS, **_GLU, "moe.shared_expert.down_proj": "mlp.shared_expert.down_proj"},
    more_down_proj={"mlp.shared_expert.down_proj": "moe.shared_expert.down_proj"},
    paper_components={"moe.shared_expert.gate_proj": "mlp.shared_expert.gate_proj",
                      "moe.shared_expert.up_proj": "mlp.shared_expert.up_proj",
                      "moe.shared_expert_gate": "mlp.shared_expert_gate"},
    **dict(_MOE, acts={**_ACT, "mlp.shared_expert.act_fn": ("mlp.shared_expert.gate_proj",
                                                            "mlp.shared_expert.down_proj")})))
register_family(FamilySpec(model_types=("qwen3_moe",), components={**_ATTN, **_NORMS, **_GLU},
                           head_norms=dict(_QK_NORMS), **_MOE))


def _layer_of(name: str) -> Tuple[Optional[int], Optional[str]]:
    m = _LAYER_RE.match(name)
    if not m:
        return None, None
    return int(m.group("idx")), m.group("rest")


def _num_out_channels(module: nn.Module, layout: str, side: str = "out") -> int:
    """Output width of a module from its weight layout (side="in": the input width of a Linear-like module)."""
    w = getattr(module, "weight", None)
    d = 0 if side == "out" else 1  # weight dim of that side, nn.Linear layout [out, in]
    if layout == "conv1d":
        return int(w.shape[1 - d])
    if hasattr(module, f"{side}_features"):
        return int(getattr(module, f"{side}_features"))
    if w is not None:
        return int(w.shape[d])
    raise UnsupportedModelError(f"cannot infer the {side}put width of {type(module).__name__}")


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


def _act_kind(path: str) -> str:
    return "moe.shared_expert.act_fn" if "shared_expert" in path else "mlp.act_fn"


def _producer_params(module: nn.Module, layout: str):
    """params callable of a ``producer`` target: (weight, bias or None, channel dim) of the module ``module``."""
    dim = 1 if layout == "conv1d" else 0

    def params():
        b = getattr(module, "bias", None)
        return module.weight, b if isinstance(b, torch.Tensor) else None, dim

    return params


def _act_target(spec: FamilySpec, mods: Dict[str, nn.Module], name: str, module: nn.Module, layer: Optional[int],
                rest: str) -> Optional[Target]:
    """The activation at ``name`` (in-layer path ``rest``, a key of ``spec.acts``) as a ``producer`` target, or None
    when its layer has no such modules (e.g. a sparse MoE layer)."""
    base = name[:len(name) - len(rest)]
    producer, consumer = (mods.get(base + p) for p in spec.acts[rest])
    if not all(isinstance(getattr(m, "weight", None), torch.Tensor) for m in (producer, consumer)):
        return None
    pl, cl = (spec.layouts.get(p, "linear") for p in spec.acts[rest])
    return Target(name=name, module=module, layer=layer, kind=_act_kind(rest),
                  num_channels=_num_out_channels(consumer, cl, "in"), layout="producer",
                  params=_producer_params(producer, pl))


def _head_norm_io(order: str):
    """select / replace for a per-head norm output: 4-D [B, T, h, d] or [B, h, T, d] <-> [B, T, h * d]."""
    t = order == "bhtd"

    def select(raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() != 4:
            return raw
        return (raw.transpose(1, 2) if t else raw).flatten(-2)

    def replace(raw: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        if raw.dim() != 4:
            return new
        if t:
            B, h, T, d = raw.shape
            return new.reshape(B, T, h, d).transpose(1, 2)
        return new.reshape(raw.shape)

    return select, replace


def _paper_target(spec: FamilySpec, mods: Dict[str, nn.Module], comps: Dict[str, str], name: str, module: nn.Module,
                  layer: Optional[int], rest: str) -> Optional[Target]:
    """A module the authors' rule matched, mapped through the family entry (None: no mapping)."""
    base = name[:len(name) - len(rest)]
    if rest in comps:
        layout = spec.layouts.get(rest, "linear")
        return Target(name=name, module=module, layer=layer, kind=comps[rest],
                      num_channels=_num_out_channels(module, layout), layout=layout,
                      export_fill=spec.export_fills.get(rest))
    if rest in spec.acts:
        return _act_target(spec, mods, name, module, layer, rest)
    src, order = spec.copies.get(rest), None
    if src is None and rest in spec.head_norms:
        src, order = spec.head_norms[rest]
    if src is not None and base + src in mods:
        width = _num_out_channels(mods[base + src], spec.layouts.get(src, "linear"))
        if order is None:  # an identity (eval-mode dropout) of ``src``'s output
            return Target(name=name, module=module, layer=layer, kind="copy." + comps.get(src, src),
                          num_channels=width, layout="producer",
                          params=_producer_params(mods[base + src], spec.layouts.get(src, "linear")))
        select, replace = _head_norm_io(order)
        return Target(name=name, module=module, layer=layer, kind="attn." + rest.rsplit(".", 1)[-1],
                      num_channels=width, layout="hook", select=select, replace=replace)
    if isinstance(module, nn.Linear) or (isinstance(module, nn.LayerNorm) and module.weight is not None):
        return Target(name=name, module=module, layer=layer, kind=rest, num_channels=_num_out_channels(module, "linear"))
    return None


def _paper_targets(model: nn.Module, spec: FamilySpec, mt: str) -> List[Target]:
    """scope="paper": every module the authors' rule matches in the text model, in module order, mapped through
    ``spec``; matches the entry skips (``paper_skip``) or cannot map are reported in one warning."""
    mods = dict(model.named_modules())
    comps = {path: kind for kind, path in {**spec.components, **spec.paper_components}.items()}
    targets, unmapped = [], []
    for name, module in mods.items():
        if not _text_only(name) or not paper_rule(name, module):
            continue
        layer, rest = _layer_of(name)
        if rest is not None and rest in spec.paper_skip:
            continue
        t = None if rest is None else _paper_target(spec, mods, comps, name, module, layer, rest)
        if t is None:
            unmapped.append(f"{name} ({type(module).__name__})")
        else:
            targets.append(t)
    if unmapped:
        warnings.warn(f"scope='paper' on {mt!r}: the authors' rule also matches {len(unmapped)} module(s) that the "
                      f"registry cannot map, not scanned: {', '.join(unmapped[:4])}{', ...' if len(unmapped) > 4 else ''}"
                      " (extend the FamilySpec: acts / copies / head_norms / paper_components)", UserWarning,
                      stacklevel=3)
    if not targets:
        raise UnsupportedModelError(f"scope='paper': the authors' rule matches no mappable module in this {mt!r} model")
    return targets


def discover_targets(model: nn.Module, scope: str = "down_proj", allow_discovery: bool = False) -> List[Target]:
    """All scannable targets of ``model`` in forward (module registration) order.

    scope="down_proj": the MLP down projection of every layer (default; for MoE: every expert's and the shared
    expert's down projection); scope="all": every Linear/norm output of the attention and MLP blocks listed
    by the family entry; scope="paper": the modules the authors' code scans (``paper_rule``: name keywords, leaves
    or Linear/LayerNorm), MLP activations included, mapped through the family entry. allow_discovery: for a model
    type without a registry entry, guess the down projections by module name (scope "paper": map the rule's
    Linear/LayerNorm modules) with a warning instead of raising ``UnsupportedModelError``.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    mt = model_type_of(model)
    spec = get_family(mt)
    if spec is None:
        if allow_discovery:
            if scope == "paper":
                return _paper_targets(model, FamilySpec(model_types=(mt,), down_proj=""), mt)
            return _guessed_targets(model, mt)
        raise _unsupported(mt)
    if scope == "paper":
        return _paper_targets(model, spec, mt)
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


def act_targets(model: nn.Module) -> List[Target]:
    """The MLP activation outputs of every layer (hook targets; the family entry's ``acts``), in module order."""
    spec = get_family(model_type_of(model))
    if spec is None or not spec.acts:
        return []
    mods = dict(model.named_modules())
    out = []
    for name, module in mods.items():
        layer, rest = _layer_of(name)
        if rest in spec.acts and _text_only(name):
            t = _act_target(spec, mods, name, module, layer, rest)
            out += [t] if t is not None else []
    return out


def maskable_targets(model: nn.Module, allow_discovery: bool = False) -> List[Target]:
    """Every target a neuron name may refer to (every scope's targets and the MLP activations)."""
    found = discover_targets(model, "down_proj", allow_discovery) + discover_targets(model, "all", allow_discovery)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scope paper's report of the modules it does not map
        found += discover_targets(model, "paper", allow_discovery) + act_targets(model)
    seen, out = set(), []
    for t in found:
        if t.name not in seen:
            seen.add(t.name)
            out.append(t)
    return out


def linear_targets(model: nn.Module) -> List[Target]:
    """Every Linear-like module of the text model (nn.Linear, GPT-2 Conv1D), ``lm_head`` included, in module order:
    the pool of the paper's random baseline. A Linear sharing its weight with the input embeddings (a tied
    ``lm_head``) is masked by a hook, so masking it never touches the embeddings."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = getattr(emb, "weight", None)
    out = []
    for name, module in model.named_modules():
        if not _text_only(name):
            continue
        if isinstance(module, nn.Linear):
            layout = "linear"
        elif type(module).__name__ == "Conv1D":
            layout = "conv1d"
        else:
            continue
        width = _num_out_channels(module, layout)
        out.append(Target(name=name, module=module, layer=_layer_of(name)[0], kind="linear", num_channels=width,
                          layout="hook" if tied is not None and module.weight is tied else layout))
    if not out:
        raise UnsupportedModelError(f"no Linear module in this {model_type_of(model)!r} model")
    return out
