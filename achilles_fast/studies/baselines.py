"""Baseline rankers (the paper's comparisons): ``Ranker``s searched by the same Stage 2 as the sensitivity method
(``find_critical(..., ranker="random")``, or ``FindConfig(ranker=...)`` in sweeps).

- ``random``: a seeded random permutation of all channels.
- ``activation``: mean |activation| of each output channel over the text.
- ``gradient``: mean |d loss / d activation| over the text.
- ``taylor``: |sum_t activation * gradient|, the first-order estimate of the loss change when the channel is
  zeroed (activation x gradient attribution).
- ``superweight``: the super-weight heuristic (Yu et al. 2024) on the MLP down projections: in each layer the
  input channel j* with the largest |input| spike, and output channel i scored by max_t |x_t,j*| * |W[i, j*]|,
  the spike routed through candidate super weight W[i, j*] into output i.

The paper's own baselines (qqqqqqqzx/The-Achilles-Heel-of-LLMs, ``comparison/``), next to ours:

- ``activation_signed`` / ``gradient_signed``: every (module, position, channel) entry ranked by its signed value
  (activation y, or d loss / d y), descending, a channel entering at its first entry, ties in entry order; entries
  with |value| <= 1e-6 (activation) / 1e-8 (gradient) are dropped as the paper's scripts drop them. Ours rank
  mean |.| over positions: large negative values count too, and one position does not decide.
- ``random_levels``: the paper's random baseline. Not a ranking searched by Stage 2: ``runs`` random draws of
  ``level`` channels from a pool (``all-linear``: the output channels of every Linear module, ``lm_head``
  included, as the paper draws them; ``targets``: the scanned targets), log10 PPL ratio per draw, mean +- std
  per level. Ours (``random``) is one seeded permutation searched like any ranking.

Gradients are taken with respect to activations only: parameters have ``requires_grad`` switched off for the
pass and restored afterwards; weights and ``.grad`` are never touched.
"""
from __future__ import annotations

import contextlib
import statistics
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..method.api import find_critical
from ..method.masking import BatchedMask
from ..method.perplexity import NLLEvaluator, log10_ratio, ppl_or_none
from ..method.ranking import Ranking, ranking_from_scores, register_ranker
from ..method.result import CriticalResult
from ..method.text import text_ids
from ..models.registry import discover_targets, linear_targets
from ..models.targets import Target
from ..utils import eval_mode, positive_int

DEFAULT_METHODS = ("random", "activation", "gradient", "taylor", "superweight")
SIGNED = {"activation": "activation_signed", "gradient": "gradient_signed"}  # ours -> the paper's variant
METHODS = DEFAULT_METHODS + tuple(SIGNED.values())
SIGNED_MIN = {"activation_signed": 1e-6, "gradient_signed": 1e-8}  # the paper drops entries with |value| <= this
PAPER_LEVELS = tuple(range(100, 1001, 100))
POOLS = ("all-linear", "targets")


@contextlib.contextmanager
def _no_param_grads(model: nn.Module):
    """Switch off requires_grad on every parameter; restore the exact flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _abs_stats(model, targets: Sequence[Target], ids: torch.Tensor, want_input: bool = False, signed: bool = False):
    """Per target: mean |y| over tokens [C] (signed: y itself, [N, C] over the N tokens); with want_input, also
    max |x| over tokens of the module input."""
    mean_abs: Dict[str, torch.Tensor] = {}
    in_max: Dict[str, torch.Tensor] = {}
    hooks = []

    def make(t: Target):
        def hook(module, args, out):
            y = t.output(out).detach().float()
            y2 = y.reshape(-1, y.shape[-1])  # [N, C]
            mean_abs[t.name] = (y2 if signed else y2.abs().mean(0)).cpu()
            if want_input:
                x = args[0].detach().float()
                in_max[t.name] = x.abs().reshape(-1, x.shape[-1]).amax(0).cpu()
        return hook

    try:
        for t in targets:
            hooks.append(t.register_forward_hook(make(t)))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return mean_abs, in_max


def _grad_stats(model, targets: Sequence[Target], ids: torch.Tensor):
    """Per target: (activations y [N, C], d mean-NLL / d y [N, C]) over the N tokens of the text."""
    ys: Dict[str, torch.Tensor] = {}
    zs: Dict[str, torch.Tensor] = {}
    hooks = []

    def make(t: Target):
        def hook(module, args, out):
            y = t.output(out)
            z = torch.zeros_like(y, requires_grad=True)  # d loss / d z == d loss / d y
            ys[t.name], zs[t.name] = y.detach(), z
            return t.with_output(out, y + z)
        return hook

    try:
        for t in targets:
            hooks.append(t.register_forward_hook(make(t)))
        with _no_param_grads(model), torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            grads = torch.autograd.grad(loss, [zs[t.name] for t in targets], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for t, g in zip(targets, grads):
        y = ys[t.name].float()
        g = torch.zeros_like(y) if g is None else g.float()
        out[t.name] = (y.reshape(-1, y.shape[-1]).cpu(), g.reshape(-1, g.shape[-1]).cpu())
    return out


def _superweight_scores(targets: Sequence[Target], in_max: Dict[str, torch.Tensor], down: set) -> List[torch.Tensor]:
    """Down projections only (``down``: their names); other targets score 0."""
    scores = []
    for t in targets:
        dim = t.weight_dim
        if t.name not in down:
            scores.append(torch.zeros(t.num_channels))
            continue
        if dim is None or not hasattr(t.module, "weight"):
            raise ValueError(f"superweight baseline: {t.name} has no weight matrix layout ({t.layout})")
        x = in_max[t.name]
        j = int(torch.argmax(x))
        w = t.module.weight.detach()
        col = (w[:, j] if dim == 0 else w[j, :]).float().abs().cpu()
        scores.append(col * x[j])
    return scores


def channel_scores(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, method: str,
                   seed: int = 0) -> List[torch.Tensor]:
    """One score per output channel of every target ([C_m] each), higher = masked first; the signed methods give
    one score per (position, channel) entry ([T, C_m] each; dropped entries are -inf)."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}: expected one of {', '.join(METHODS)}")
    dev = model.get_input_embeddings().weight.device
    ids2 = (ids if ids.dim() == 2 else ids.unsqueeze(0)).to(dev)
    if method == "random":
        g = torch.Generator().manual_seed(int(seed))
        total = sum(t.num_channels for t in targets)
        flat = torch.rand(total, generator=g)
        return list(torch.split(flat, [t.num_channels for t in targets]))
    if method == "activation_signed":
        ys, _ = _abs_stats(model, targets, ids2, signed=True)
        return [_drop_small(ys[t.name], SIGNED_MIN[method]) for t in targets]
    if method in ("activation", "superweight"):
        mean_abs, in_max = _abs_stats(model, targets, ids2, want_input=method == "superweight")
        if method == "activation":
            return [mean_abs[t.name] for t in targets]
        try:
            down = {t.name for t in discover_targets(model, "down_proj")}
        except ValueError:  # unregistered family: the caller opted into discovery to get here
            down = {t.name for t in discover_targets(model, "down_proj", allow_discovery=True)}
        return _superweight_scores(targets, in_max, down)
    stats = _grad_stats(model, targets, ids2)
    if method == "gradient_signed":
        return [_drop_small(stats[t.name][1], SIGNED_MIN[method]) for t in targets]
    if method == "gradient":
        return [stats[t.name][1].abs().mean(0) for t in targets]
    return [(stats[t.name][0] * stats[t.name][1]).sum(0).abs() for t in targets]  # taylor


def _drop_small(v: torch.Tensor, floor: float) -> torch.Tensor:
    """Entries with |v| <= floor -> -inf (never ranked), as the paper's scripts skip them."""
    return v.masked_fill(v.abs() <= floor, float("-inf"))


class BaselineRanker:
    """A baseline ``method`` as a Ranker: one score per output channel, ranked descending (ties by channel order),
    at most ``config.max_neurons`` channels; the signed methods rank (position, channel) entries (``per_token``)."""

    def __init__(self, method: str, config, progress: bool = False):
        self.name = method
        self.config = config

    def rank(self, model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Ranking:
        with eval_mode(model):
            scores = channel_scores(model, targets, ids, self.name, self.config.seed)
        if self.name not in SIGNED_MIN:
            return ranking_from_scores(targets, scores, "max", self.config.max_neurons)
        r = ranking_from_scores(targets, scores, "per_token", self.config.max_neurons)
        keep = torch.isfinite(r.scores)  # channels whose every entry was dropped come last: cut them
        return r if bool(keep.all()) else Ranking(r.targets, r.channels[keep], r.scores[keep])


for _m in METHODS:
    register_ranker(_m, lambda config, progress=False, _m=_m: BaselineRanker(_m, config, progress))


def random_levels(model: nn.Module, tokenizer, text: Optional[str] = None, *, levels: Sequence[int] = PAPER_LEVELS,
                  runs: int = 10, pool: str = "all-linear", seed: int = 0, scope: str = "down_proj",
                  max_tokens: int = 512, eval_text: Optional[str] = None, max_batch_tokens: Optional[int] = None,
                  discover: bool = False) -> Dict[str, Any]:
    """The paper's random baseline: for each run, a random order of the pool's channels (seeded by (seed, run));
    level L masks its first L channels, so each level's set is a uniform random L-subset as in the paper (the
    levels of one run are nested, which lets one batched pass evaluate them all). Weights are never touched.

    pool: ``all-linear`` (output channels of every Linear, ``lm_head`` included) or ``targets`` (the channels
    scanned with ``scope``). Returns per level the log10 PPL ratio of every run, their mean and std (n - 1), and
    the same for PPL (None where it overflows a float).
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: expected one of {', '.join(POOLS)}")
    positive_int(runs, "runs")
    levels = sorted({positive_int(x, "each level") for x in levels})
    if not levels:
        raise ValueError("levels: none given")
    targets = linear_targets(model) if pool == "all-linear" else discover_targets(model, scope, discover)
    total = sum(t.num_channels for t in targets)
    if levels[-1] > total:
        raise ValueError(f"level {levels[-1]} exceeds the {total} channels of the {pool!r} pool")
    ids, eval_ids = text_ids(model, tokenizer, text, eval_text, max_tokens)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    fused = False if any(t.module is head for t in targets) else None  # the fused NLL path skips lm_head's hooks
    per_run: List[List[float]] = []
    with eval_mode(model), torch.no_grad():
        ev = NLLEvaluator(model, eval_ids, max_batch_tokens=max_batch_tokens, fused=fused)
        clean = ev.nll()
        for r in range(runs):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + r)
            order = torch.randperm(total, generator=g)[:levels[-1]]
            with BatchedMask(Ranking(targets, order, torch.zeros(order.numel())), levels[-1]) as bm:
                per_run.append(ev.nll_prefixes(bm, levels))  # mean NLL per level
    nlls = [[run[i] for run in per_run] for i in range(len(levels))]  # [level][run]
    by_level = [[log10_ratio(v, clean) for v in row] for row in nlls]
    ppl = [[ppl_or_none(v) for v in row] for row in nlls]

    def mean_std(xs):
        if any(x is None for x in xs):
            return None, None
        return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0

    return {"pool": pool, "pool_channels": total, "pool_modules": len(targets), "runs": runs, "seed": seed,
            "levels": levels, "clean_nll": clean, "clean_ppl": ppl_or_none(clean), "log10_ratio": by_level,
            "log10_ratio_mean": [mean_std(x)[0] for x in by_level], "log10_ratio_std": [mean_std(x)[1] for x in by_level],
            "ppl_mean": [mean_std(x)[0] for x in ppl], "ppl_std": [mean_std(x)[1] for x in ppl],
            "n_tokens": int(eval_ids.numel())}


def baseline_result(model: nn.Module, tokenizer, text: Optional[str] = None, method: str = "random",
                    **params) -> CriticalResult:
    """``find_critical`` with the baseline ranker ``method`` (same Stage 2, same parameters; no progress bars).

    The result's ``curve`` is the method's phase-transition curve; ``params["ranker"]`` names the method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}: expected one of {', '.join(METHODS)}")
    params.setdefault("progress", False)
    return find_critical(model, tokenizer, text, ranker=method, **params)


def compare_rankers(model: nn.Module, tokenizer, text: Optional[str] = None,
                    methods: Sequence[str] = ("sensitivity",) + METHODS, **params) -> Dict[str, CriticalResult]:
    """find_critical with each ranker and the same Stage 2 settings -> {method: result}."""
    params.setdefault("progress", False)
    return {m: find_critical(model, tokenizer, text, ranker=m, **params) for m in methods}
