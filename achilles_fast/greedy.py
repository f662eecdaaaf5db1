"""Stage 2: find the smallest prefix n of the ranking whose masking crosses log10(PPL_n / PPL_clean) >= epsilon.

Candidates are n = step, 2*step, ... (and max_neurons itself). Several candidates are evaluated in one batched
forward, each batch element with its own channel mask (``BatchedMask``).

- ``linear`` (paper): candidates in increasing order, ``batch_size`` per forward, stop at the first batch
  that contains a crossing; the answer is the first crossing. Exactly the paper's n.
- ``bisect``: exponential probes (n = step * 1, 2, 4, ...) then a (batch_size+1)-ary search inside the first
  bracketing interval. The answer n always has n - step evaluated as not crossing (verified), so it equals the
  ``linear`` answer whenever the curve is monotone.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

from .masking import BatchedMask
from .neurons import Neuron
from .perplexity import NLLEvaluator, log10_ratio

STRATEGIES = ("linear", "bisect")


@dataclasses.dataclass
class SearchOutcome:
    n: int  # size of the critical set (0 when not converged)
    converged: bool
    curve: Dict[int, float]  # n -> log10(PPL_n / PPL_clean), every evaluated point
    nll: Dict[int, float]  # n -> mean NLL
    evaluations: int  # number of (mask, text) evaluations
    forwards: int  # batched forward passes
    verified: bool  # the point n - step was evaluated and does not cross


def _grid(max_n: int, step: int) -> List[int]:
    g = list(range(step, max_n + 1, step))
    if not g or g[-1] != max_n:
        g.append(max_n)
    return g


def greedy_search(
    evaluator: NLLEvaluator,
    bmask: BatchedMask,
    ranked: Sequence[Neuron],
    nll_clean: float,
    epsilon: float = 1.0,
    step: int = 1,
    max_neurons: int = 1000,
    strategy: str = "bisect",
    batch_size: int = 8,
    progress: Optional[Callable[[int, float], None]] = None,
) -> SearchOutcome:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if step < 1 or max_neurons < 1 or batch_size < 1:
        raise ValueError("step, max_neurons and batch_size must be >= 1")
    max_n = min(max_neurons, len(ranked))
    grid = _grid(max_n, step)
    curve: Dict[int, float] = {}
    nlls: Dict[int, float] = {}
    f0 = evaluator.forwards
    evals = 0

    def evaluate(ns: Sequence[int]) -> None:
        nonlocal evals
        ns = [n for n in ns if n not in curve]
        if not ns:
            return
        vals = evaluator.nll_masked(bmask, [ranked[:n] for n in ns])
        evals += len(ns)
        for n, v in zip(ns, vals):
            nlls[n] = v
            curve[n] = log10_ratio(v, nll_clean)
            if progress is not None:
                progress(n, curve[n])

    def crosses(n: int) -> bool:
        return curve[n] >= epsilon

    def first_cross(ns: Sequence[int]) -> Optional[int]:
        return next((n for n in ns if crosses(n)), None)

    found: Optional[int] = None
    if strategy == "linear":
        for i in range(0, len(grid), batch_size):
            part = grid[i:i + batch_size]
            evaluate(part)
            found = first_cross(part)
            if found is not None:
                break
    else:
        # exponential probes over grid indices 0, 1, 3, 7, ... (n = step, 2 step, 4 step, ...) and the last
        probes = sorted({min((1 << i) - 1, len(grid) - 1) for i in range(len(grid).bit_length() + 1)})
        lo_i, hi_i = -1, None
        for i in range(0, len(probes), batch_size):
            part = probes[i:i + batch_size]
            evaluate([grid[j] for j in part])
            for j in part:
                if crosses(grid[j]):
                    hi_i = j
                    break
                lo_i = j
            if hi_i is not None:
                break
        if hi_i is not None:
            while hi_i - lo_i > 1:
                inner = list(range(lo_i + 1, hi_i))
                if len(inner) > batch_size:  # evenly spaced picks
                    inner = sorted({inner[(len(inner) * (q + 1)) // (batch_size + 1)] for q in range(batch_size)})
                evaluate([grid[j] for j in inner])
                for j in inner:
                    if crosses(grid[j]):
                        hi_i = j
                        break
                    lo_i = j
            found = grid[hi_i]
    n = found or 0
    pos = grid.index(n) if n else -1
    prev = grid[pos - 1] if pos > 0 else None
    verified = bool(n) and (pos == 0 or (prev in curve and not crosses(prev)))
    return SearchOutcome(n=n, converged=found is not None, curve=dict(sorted(curve.items())),
                         nll=dict(sorted(nlls.items())), evaluations=evals,
                         forwards=evaluator.forwards - f0, verified=verified)
