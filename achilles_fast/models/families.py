"""Model families: one ``FamilySpec`` per architecture, keyed by ``config.model_type``, saying where each layer keeps
its MLP down projection and the other scannable components. Discovery (``registry.discover_targets``) reads them.

To add a family::

    from achilles_fast import FamilySpec, register_family
    register_family(FamilySpec(model_types=("my_arch",), down_proj="mlp.w2",
                               components={"mlp.w2": "mlp.w2", "attn.wo": "attn.wo"}))

Component paths are relative to one decoder layer (``<prefix>.<layer index>.``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from .targets import Target


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


_REGISTRY: Dict[str, FamilySpec] = {}


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
