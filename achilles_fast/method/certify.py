"""A low-precision Stage 1 (``stage1_dtype``) that keeps the model's-dtype answer wherever it can show it does.

Stage 1 in bf16 (autocast) is 2.5-3.6x faster on AMX / AVX512-BF16 CPUs and on GPUs, but every score rounds: a
channel's bf16 score s~ differs from its float32 score s by a few parts per thousand, mostly the same way in every
noisy sample (the rounded weights act like another model). So the bf16 ranking is used only where no such error
can reorder it:

1. Calibration: the first ``CALIBRATION_SAMPLES`` noisy samples are scored both ways; ``error`` = the largest
   |s~ - s| over every scored entry (position, channel) of every target. ``margin`` = ``SAFETY`` x ``error``.
   Measured (``benchmarks/RESULTS.md``, 2026-12-03): the error of the full K=100 scores was 0.10-0.26x the
   2-sample calibration error on SmolLM2-135M (paper scope) and 0.96x on stories260K, so the margin is 4-40x the
   error it bounds there.
2. ``certified_length``: the leading channels of the bf16 ranking whose scores each lie more than 2 margins above
   the next one's. A channel's score is the max (or mean) of its entries, so it moves by at most the entries'
   error, and these channels have the float32 ranking's order, the same channels in the same places.
3. Stage 2's answer (``Stage2Oracle.within``: the first crossing n for ``first``/``linear``, searched no further
   than that length; every evaluated prefix for ``bisect``) must lie within it, and for ``per_token`` the paper's
   entry count at each answer must be settled (no entry of another channel within 2 margins of the answer's
   score). Then the run is the float32 run: the same prefixes up to the answer, hence the same set and ratio
   (Stage 2 evaluates in the model's dtype; a probe of ``first`` past the answer may evaluate another prefix).
   Otherwise Stage 1 runs again in the model's dtype and that ranking is used (``fallback`` says why).

What remains in the low dtype: the reported scores of the ranked channels and the order of the ranking past the
certified length (``stats["stage1_certified"]``). k="auto" is not certified (it stops on its own rule).
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..models.targets import Target
from .ranking import EntryCount, Ranking
from .stage1 import lowp_forwards, plan_groups, sensitivity_scores

SAFETY = 4.0  # margin = SAFETY x the largest calibration error (x4-40 the full-K error measured, module docstring)
CALIBRATION_SAMPLES = 2  # noisy samples scored both ways (each costs one float32 sample per target group)


def calibration_error(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, config,
                      samples: int = CALIBRATION_SAMPLES) -> float:
    """Largest |low - exact| over every Stage 1 score entry of the first ``samples`` noisy samples, on the scale
    the ranking reads (per_token / max: [T, C] entries; mean: per-position means [C]); inf when a low score is not
    finite. ``config``: the run's FindConfig (alpha, seed, ranking, stage1_dtype, budgets)."""
    per_position = config.ranking != "mean"
    T = int(ids.numel())
    groups = plan_groups(model, targets, T, per_position, config.max_score_mb, accumulators=2)
    kw = dict(k=min(samples, config.k), alpha=config.alpha, seed=config.seed, per_position=per_position,
              max_batch_tokens=config.max_batch_tokens)
    error = 0.0
    with torch.no_grad():
        for group in groups:  # both scorings of a group, then the next: at most two groups' scores held
            part = [targets[i] for i in group]
            one = [list(range(len(part)))]
            exact = sensitivity_scores(model, part, ids, groups=one, **kw)
            with lowp_forwards(model, config.stage1_dtype):
                low = sensitivity_scores(model, part, ids, groups=one, **kw)
            for a, b in zip(low, exact):  # [T, C] or [C] sums
                d = float((a.float() - b.float()).abs().max())
                if not math.isfinite(d):
                    return math.inf
                error = max(error, d)
    return error if per_position else error / T


def certified_length(scores: torch.Tensor, margin: float) -> int:
    """scores [n] (a ranking's, best first) -> how many leading channels score more than 2 ``margin`` above the
    next (the last ranked channel has no known next: never counted)."""
    if not math.isfinite(margin) or scores.numel() < 2:
        return 0
    apart = (scores[:-1] - scores[1:]) > 2 * margin  # [n-1]
    return int(apart.int().cumprod(0).sum())


def certify(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, config, ranking: Ranking,
            entries: Optional[EntryCount], oracle) -> Dict[str, Any]:
    """Whether the low-precision ``ranking`` gives the model's-dtype answer (module docstring). ``oracle``: Stage 2
    (``Stage2Oracle``; None or a plain callable: no answer known, so nothing is certified). -> stats, with
    ``certified`` and, when False, ``fallback`` (the reason)."""
    t0 = time.perf_counter()
    error = calibration_error(model, targets, ids, config)
    margin = SAFETY * error
    length = certified_length(ranking.scores, margin)
    out: Dict[str, Any] = {"dtype": config.stage1_dtype, "calibration_samples": min(CALIBRATION_SAMPLES, config.k),
                           "safety": SAFETY, "max_error": error if math.isfinite(error) else None,
                           "margin": margin if math.isfinite(margin) else None, "length": length,
                           "calibration_s": time.perf_counter() - t0}
    reason = None
    if not math.isfinite(error):
        reason = f"the {config.stage1_dtype} calibration scores are not finite"
    elif length == 0:
        reason = f"the first ranked channel is not {2 * margin:.3g} (2 margins) above the next"
    elif not hasattr(oracle, "within"):
        reason = "no Stage 2 oracle: the prefix the answer depends on is unknown"
    else:
        searches = oracle.within(ranking, length)
        sizes = [o.n for o in searches or [] if o.converged]
        out["sizes"] = sizes
        if searches is None:
            reason = f"Stage 2's answer depends on more than the {length} certified channel(s)"
        elif entries is not None and not all(
                entries.settled(ranking.channels[n - 1], ranking.scores[n - 1], 2 * margin) for n in sizes):
            reason = "the paper's entry count at the answer has other entries within 2 margins"
    out["certified"] = reason is None
    if reason is not None:
        out["fallback"] = reason
    return out
