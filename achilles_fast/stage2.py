"""Stage 2 on any ranking -> CriticalResult: clean NLL, greedy search over batched masks, in-place verification.

Shared by ``find_critical`` (sensitivity ranking) and the baseline rankers, so every ranker is searched and
reported the same way.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from .greedy import greedy_search
from .masking import BatchedMask, WeightMask
from .neurons import Neuron
from .perplexity import NLLEvaluator, log10_ratio
from .result import CriticalNeuron, CriticalResult, versions
from .targets import Target


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    """A tqdm bar (stderr), or a null context yielding None when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """model.eval() inside the block; the caller's train/eval flag is restored afterwards, whatever happens."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def default_batch(device: torch.device) -> int:
    """Stage 2 candidates per forward when the user gives none."""
    # CPU: a batched forward costs ~B single forwards (SmolLM2-135M, T=132: 0.8x per sequence at B=4), so the
    # fewest evaluations win: B=1 makes bisect a plain binary search (stories260K n=143: 17 evaluations vs 27 at
    # B=4). GPU: a forward of 16 sequences costs about one of a single sequence.
    return 16 if device.type == "cuda" else 1


def search_ranked(model: nn.Module, targets: Sequence[Target], ranked: Sequence[Neuron], scores: Sequence[float],
                  eval_ids: torch.Tensor, *, epsilon: float = 1.0, step: int = 1, max_neurons: int = 1000,
                  strategy: str = "bisect", batch_size: Optional[int] = None,
                  max_batch_tokens: Optional[int] = None, verify: bool = True, top_report: int = 50,
                  model_name: str = "", params: Optional[Dict[str, Any]] = None,
                  timings: Optional[Dict[str, float]] = None, stats: Optional[Dict[str, Any]] = None,
                  progress: bool = False) -> CriticalResult:
    """Find the first prefix of ``ranked`` crossing ``epsilon`` on ``eval_ids`` and build the result (weights
    untouched; bit-exact after the in-place verification). ``scores[i]`` is the ranking score of ``ranked[i]``."""
    timings = dict(timings or {})
    stats = dict(stats or {})
    stats.setdefault("n_targets", len(targets))
    stats.setdefault("n_channels", sum(t.num_channels for t in targets))
    t1 = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        ev = NLLEvaluator(model, eval_ids, max_batch_tokens=max_batch_tokens or 8192)
        clean = ev.nll()
        bsz = batch_size or default_batch(ev.device)
        with progress_bar(min(max_neurons, len(ranked)), "Stage 2: greedy", "eval", progress) as bar, \
                BatchedMask(targets) as bm:
            def on_eval(n, lr):
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(n=n, log10_ratio=f"{lr:.3f}")
            out = greedy_search(ev, bm, ranked, clean, epsilon=epsilon, step=step, max_neurons=max_neurons,
                                strategy=strategy, batch_size=bsz, progress=on_eval)
        n_final = out.n if out.converged else max(out.curve, default=0)
        if verify and out.converged:
            with WeightMask(targets).apply(ranked[:n_final]):
                stats["verify_log10_ratio"] = log10_ratio(ev.nll(), clean)
    timings["stage2"] = time.perf_counter() - t1
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    stats.update(stage2_forwards=out.forwards, stage2_evaluations=out.evaluations, stage2_batch=bsz,
                 stage2_verified_prev=out.verified, fused_nll=ev.fused)
    final = out.nll.get(n_final)

    def entry(i: int) -> CriticalNeuron:
        n = ranked[i]
        return CriticalNeuron(name=n.name, module=n.module, channel=n.channel, layer=n.layer, kind=n.kind, rank=i,
                              score=float(scores[i]))

    return CriticalResult(
        model=model_name, neurons=[entry(i) for i in range(out.n)] if out.converged else [],
        converged=out.converged, epsilon=epsilon, clean_nll=clean, final_nll=final,
        log10_ratio=None if final is None else log10_ratio(final, clean),
        curve=[[n, v] for n, v in out.curve.items()], params=dict(params or {}), timings=timings, stats=stats,
        versions=versions(), top_ranked=[entry(i) for i in range(min(top_report, len(ranked)))])
