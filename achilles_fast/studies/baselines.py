"""Rankers side by side (the paper's comparisons): every registered ranker (``method.rankers``: the sensitivity
method and the baselines) searched by the same Stage 2 (``compare_rankers``), the paper's random baseline
(``random_levels``), and the comparison table and record the ``baselines`` command prints and writes.

- ``random_levels``: the paper's random baseline. Not a ranking searched by Stage 2: ``runs`` random draws of
  ``level`` channels from a pool (``all-linear``: the output channels of every Linear module, ``lm_head``
  included, as the paper draws them; ``targets``: the scanned targets), log10 PPL ratio per draw, mean +- std
  per level. Ours (ranker ``random``) is one seeded permutation searched like any ranking.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..method.api import find_critical
from ..method.masking import BatchedMask
from ..method.perplexity import NLLEvaluator, log10_ratio, ppl_or_none
from ..method.rankers import paper_variants, ranker_names
from ..method.ranking import Ranking
from ..method.result import CriticalResult
from ..method.text import text_ids
from ..models.registry import discover_targets, linear_targets
from ..utils import eval_mode, positive_int

PAPER_LEVELS = tuple(range(100, 1001, 100))
POOLS = ("all-linear", "targets")


def default_methods() -> List[str]:
    """Every registered ranker but the paper's variants (they replace theirs with ``signed_per_entry``)."""
    variants = set(paper_variants().values())
    return [m for m in ranker_names() if m not in variants]


def select_methods(methods: Sequence[str], signed_per_entry: bool = False) -> List[str]:
    """Validated ranker names (duplicates once); ``signed_per_entry``: each ranker replaced by the paper's variant
    of it where there is one (activation -> activation_signed, ...)."""
    bad = [m for m in methods if m not in ranker_names()]
    if bad:
        raise ValueError(f"unknown ranker(s) {', '.join(bad)}: expected one of {', '.join(ranker_names())}")
    if signed_per_entry:
        methods = [paper_variants().get(m, m) for m in methods]
    return list(dict.fromkeys(methods))


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
    """``find_critical`` with the ranker ``method`` (same Stage 2, same parameters; no progress bars).

    The result's ``curve`` is the method's phase-transition curve; ``params["ranker"]`` names the method.
    """
    params.setdefault("progress", False)
    return find_critical(model, tokenizer, text, ranker=method, **params)


def compare_rankers(model: nn.Module, tokenizer, text: Optional[str] = None,
                    methods: Optional[Sequence[str]] = None, **params) -> Dict[str, CriticalResult]:
    """find_critical with each ranker (default: every registered one) and the same Stage 2 settings ->
    {method: result}."""
    params.setdefault("progress", False)
    return {m: find_critical(model, tokenizer, text, ranker=m, **params)
            for m in (ranker_names() if methods is None else methods)}


def comparison_table(results: Dict[str, CriticalResult], random: Optional[Dict[str, Any]] = None, *,
                     model_name: str, epsilon: float, max_neurons: int) -> str:
    """The side-by-side text table: per ranker its critical-set size, log10 ratio and evaluated points; then the
    paper's random baseline (``random_levels``) per level, when given."""
    lines = [f"model {model_name}  (epsilon {epsilon}, max {max_neurons} neurons)",
             f"{'ranker':<18} {'critical':>8}  {'log10 ratio':>11}  {'evaluated points':>16}"]
    for m, r in results.items():
        n = str(len(r.neurons)) if r.converged else f">{max_neurons}"
        lr = "n/a" if r.log10_ratio is None else f"{r.log10_ratio:.3f}"
        lines.append(f"{m:<18} {n:>8}  {lr:>11}  {len(r.curve):>16}")
    if random is not None:
        lines.append(f"random ({random['pool']} pool: {random['pool_channels']} channels in "
                     f"{random['pool_modules']} modules; {random['runs']} runs per level): log10 PPL ratio mean +- std")
        for lv, mu, sd in zip(random["levels"], random["log10_ratio_mean"], random["log10_ratio_std"]):
            lines.append(f"  {lv:>6}  {mu:.4f} +- {sd:.4f}")
    return "\n".join(lines)


def comparison_record(results: Dict[str, CriticalResult], random: Optional[Dict[str, Any]] = None, *,
                      model_name: str) -> Dict[str, Any]:
    """{ranker: result dict} (+ ``random``: the paper's random baseline), JSON-ready, each naming ``model_name``."""
    out: Dict[str, Any] = {m: dict(r.to_dict(), model=model_name) for m, r in results.items()}
    if random is not None:
        out["random"] = dict(random, model=model_name)
    return out
