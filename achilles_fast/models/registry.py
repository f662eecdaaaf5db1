"""Target discovery: a model's scannable modules from its family entry (``families``: ``FamilySpec``,
``register_family``, re-exported here), the authors' module rule mapped through it, or (opt-in) a guess by name.

Scopes (``discover_targets``): ``down_proj`` (the MLP down projection of every layer), ``all`` (the Linear/norm
outputs of the attention and MLP blocks that the family entry lists) and ``paper``: exactly the modules the authors'
code scans (``PAPER_KEYWORDS``, ``paper_rule``), each mapped through the family entry, MLP activations included.
"""
from __future__ import annotations

import re
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .families import FamilySpec, get_family, register_family, registered_model_types  # noqa: F401 (re-exported)
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


_LAYER_RE = re.compile(r"^(?P<prefix>.*?(?:layers|h|blocks|block|layer))\.(?P<idx>\d+)\.(?P<rest>.+)$")


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
