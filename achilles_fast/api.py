"""``find_critical``: the two-stage method end to end."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from . import ops
from .greedy import STRATEGIES
from .masking import masked
from .neurons import Neuron, NeuronIndex
from .perplexity import NLLEvaluator, log10_ratio
from .ranking import RANKINGS, rank_channels
from .registry import discover_targets
from .result import CriticalResult
from .sensitivity import plan_groups, sensitivity_scores
from .stage2 import eval_mode, progress_bar, search_ranked
from .text import tokenize

SCOPES = ("down_proj", "all")


def validate_params(k: int, alpha: float, epsilon: float, step: int, max_neurons: int, scope: str, ranking: str,
                    strategy: str, max_tokens: int, max_score_mb: Optional[float] = None) -> None:
    """Raise ValueError on any bad parameter, before the model is touched."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of noisy samples) must be an integer >= 1, got {k!r}")
    if not alpha > 0:
        raise ValueError(f"alpha (noise scale) must be > 0, got {alpha!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon (log10 PPL ratio threshold) must be > 0, got {epsilon!r}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step!r}")
    if max_neurons < 1:
        raise ValueError(f"max_neurons must be >= 1, got {max_neurons!r}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {ranking!r}: expected one of {', '.join(RANKINGS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens!r}")
    if max_score_mb is not None and not max_score_mb > 0:
        raise ValueError(f"max_score_mb must be > 0, got {max_score_mb!r}")


def _resolve_model(model, tokenizer, device, dtype):
    name = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from .loading import load_model
        model, tok, name = load_model(str(model), dtype=dtype or "float32", device=device or "cpu")
        tokenizer = tokenizer or tok
    else:
        if dtype is not None or device is not None:
            from .loading import parse_dtype
            model.to(device=device, dtype=parse_dtype(dtype))
        if tokenizer is None:
            cfg = getattr(model, "config", None)
            path = getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None)
            if not path:
                raise ValueError("pass tokenizer= (the model object has no local path to load one from)")
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(path)
    if name is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__
    return model, tokenizer, name


def _autocast(model: nn.Module, dtype: Optional[str]):
    """Autocast context for Stage 1 (no-op when dtype is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    from .loading import parse_dtype
    dt = parse_dtype(dtype)
    dev = model.get_input_embeddings().weight.device.type
    return torch.autocast(device_type="cuda" if dev == "cuda" else "cpu", dtype=dt)


def find_critical(
    model: Union[nn.Module, str],
    tokenizer=None,
    text: Optional[str] = None,
    *,
    eval_text: Optional[str] = None,
    max_tokens: int = 512,
    k: int = 100,
    alpha: float = 5.0,
    seed: int = 0,
    epsilon: float = 1.0,
    step: int = 1,
    max_neurons: int = 1000,
    scope: str = "down_proj",
    ranking: str = "per_token",
    strategy: str = "bisect",
    batch_size: Optional[int] = None,
    max_batch_tokens: Optional[int] = None,
    max_score_mb: Optional[float] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    kernels: bool = True,
    verify: bool = True,
    progress: bool = True,
    top_report: int = 50,
    discover: bool = False,
    stage1_dtype: Optional[str] = None,
) -> CriticalResult:
    """Find the critical neurons of a causal LM (arXiv 2510.10238).

    Stage 1 ranks output channels of the scanned modules by mean |f(x) - f(x + alpha*eps)| over ``k`` noisy
    copies of the token embeddings; Stage 2 masks the top-n channels for growing n until
    log10(PPL_masked / PPL_clean) >= ``epsilon`` on ``eval_text`` (default: ``text``).

    model: HF causal LM object, or a local folder / .gguf path / named default ("smollm2-135m").
    text: scoring text (default: a public-domain passage shipped with the package), first ``max_tokens`` tokens.
    strategy: "bisect" (batched exponential + bracketing search, default) or "linear" (the paper's n = 1, 2, ...).
    discover: for a model type without a registry entry, scan modules whose name looks like an MLP down
    projection (best effort, with a warning) instead of raising ``UnsupportedModelError``.
    max_score_mb: memory for Stage 1's clean copies + score accumulators (default: a quarter of free memory);
    above it the targets are scored in groups, one Stage 1 run per group (same scores, more forwards).
    stage1_dtype: "bfloat16"/"float16" runs the Stage 1 forwards under autocast (about 2x faster on CPUs with
    AVX512-BF16; scores then carry ~1e-2 relative rounding, so near-ties may reorder). Stage 2 perplexities always
    use the model's own dtype. Default None: Stage 1 in the model's dtype.
    Returns a ``CriticalResult``; the model's weights are unchanged afterwards (bit-exact), whatever happens.
    """
    validate_params(k, alpha, epsilon, step, max_neurons, scope, ranking, strategy, max_tokens, max_score_mb)
    if stage1_dtype is not None:
        from .loading import parse_dtype
        parse_dtype(stage1_dtype)  # ValueError on an unknown name, before anything runs
    model, tokenizer, name = _resolve_model(model, tokenizer, device, dtype)
    targets = discover_targets(model, scope, allow_discovery=discover)
    ids = tokenize(tokenizer, text, max_tokens, "text")
    eval_ids = ids if eval_text is None else tokenize(tokenizer, eval_text, max_tokens, "eval_text")
    params: Dict[str, Any] = dict(k=k, alpha=alpha, seed=seed, epsilon=epsilon, step=step, max_neurons=max_neurons,
                                  scope=scope, ranking=ranking, strategy=strategy, max_tokens=max_tokens,
                                  n_tokens=int(ids.numel()), n_eval_tokens=int(eval_ids.numel()),
                                  eval_text="same" if eval_text is None else "separate", kernels=bool(kernels),
                                  stage1_dtype=stage1_dtype)
    stats: Dict[str, Any] = {"n_targets": len(targets), "n_channels": sum(t.num_channels for t in targets)}
    timings: Dict[str, float] = {}
    with eval_mode(model), ops.use_kernels(kernels), torch.no_grad():
        # ---- Stage 1 ---------------------------------------------------------------------------
        t0 = time.perf_counter()
        per_position = ranking != "mean"
        groups = plan_groups(model, targets, int(ids.numel()), per_position, max_score_mb)
        with progress_bar(k * len(groups), "Stage 1: noisy samples", "sample", progress) as bar, \
                _autocast(model, stage1_dtype):
            scores = sensitivity_scores(model, targets, ids, k=k, alpha=alpha, seed=seed,
                                        per_position=per_position, max_batch_tokens=max_batch_tokens,
                                        groups=groups, reduce_positions=True,
                                        progress=bar.update if bar is not None else None, stats=stats)
        if ranking == "mean":  # [C] sums over positions -> means
            scores = [sc / ids.numel() for sc in scores]
        index = NeuronIndex(targets)
        flat_ids, flat_scores = rank_channels(scores, ranking, top=max_neurons)
        ranked: List[Neuron] = [index.neuron(int(i)) for i in flat_ids.tolist()]
        ch_scores = flat_scores.tolist()
        del scores
        timings["stage1"] = time.perf_counter() - t0

        # ---- Stage 2 ---------------------------------------------------------------------------
        return search_ranked(model, targets, ranked, ch_scores, eval_ids, epsilon=epsilon, step=step,
                             max_neurons=max_neurons, strategy=strategy, batch_size=batch_size,
                             max_batch_tokens=max_batch_tokens, verify=verify, top_report=top_report,
                             model_name=name, params=params, timings=timings, stats=stats, progress=progress)


def evaluate_mask(model, tokenizer, neurons: Sequence, text: Optional[str] = None, max_tokens: int = 512,
                  ids: Optional[torch.Tensor] = None, discover: bool = False,
                  max_batch_tokens: int = 8192) -> Dict[str, float]:
    """Mean NLL and log10 PPL ratio of ``text`` (or token windows ``ids`` [T] / [W, T]) with ``neurons`` masked in
    place (weights restored after)."""
    if ids is None:
        ids = tokenize(tokenizer, text, max_tokens, "text")
    with eval_mode(model), torch.no_grad():
        ev = NLLEvaluator(model, ids, max_batch_tokens=max_batch_tokens)
        clean = ev.nll()
        with masked(model, neurons, discover=discover) as resolved:
            nll = ev.nll()
    return {"clean_nll": clean, "masked_nll": nll, "log10_ratio": log10_ratio(nll, clean),
            "n_tokens": int(ids.numel()), "n_neurons": len(resolved)}
