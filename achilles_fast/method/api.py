"""The method end to end: ``find_critical`` (rank, then search), ``rank_neurons`` (Stage 1 alone), ``evaluate_mask``
and ``evaluate_corpus``."""
from __future__ import annotations

import inspect
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .. import ops
from ..models.loading import resolve_model
from ..models.registry import discover_targets
from ..utils import eval_mode
from .config import FindConfig
from .masking import masked
from .perplexity import NLLEvaluator, log10_ppl, log10_ratio
from .rankers import make_ranker
from .ranking import Ranking
from .result import CriticalResult
from .stage2 import PrefixNLL, Stage2Oracle, search_epsilons
from .text import corpus_windows, model_context, sample_ids, text_ids, tokenize


def _split_epsilons(config: Optional[FindConfig], params: Dict[str, Any]):
    """``epsilon=[...]`` -> (validated list, params with the largest); a single epsilon -> (None, params)."""
    eps = params.get("epsilon")
    if not isinstance(eps, (list, tuple)):
        return None, params
    if not eps:
        raise ValueError("epsilon: the list is empty; give one value > 0 or a list of them")
    vals = [FindConfig.make(config, epsilon=e).epsilon for e in eps]  # each validated like a single epsilon
    return vals, dict(params, epsilon=max(vals))


def _prepare(model, tokenizer, text, eval_text, config, device, dtype, params):
    """Validated parameters, the model, its targets and the token ids, before any long work."""
    epsilons, params = _split_epsilons(config, params)
    cfg = FindConfig.make(config, **params)
    model, tokenizer, name = resolve_model(model, tokenizer, device, dtype)
    targets = discover_targets(model, cfg.scope, allow_discovery=cfg.discover)
    ids, eval_ids = text_ids(model, tokenizer, text, eval_text, cfg.max_tokens)
    return cfg, epsilons or [cfg.epsilon], model, name, targets, ids, eval_ids


def _check_clean(model, cfg: FindConfig, ids: torch.Tensor, eval_ids: Optional[torch.Tensor],
                 pn: Optional[PrefixNLL] = None) -> None:
    """One clean forward per text first: a NaN/Inf model fails here in one line, before Stage 1/2 run. ``pn``:
    Stage 2's evaluator of the evaluation text (``eval_ids``, or ``ids`` when None), whose clean NLL is that
    text's check (one forward fewer per run)."""
    texts = [("the text", ids)] + ([] if eval_ids is None else [("the eval_text", eval_ids)])
    for what, x in texts[:-1] if pn is not None else texts:
        NLLEvaluator(model, x, max_batch_tokens=cfg.max_batch_tokens, fused=False, what=what).nll()
    if pn is not None:
        pn.clean  # noqa: B018 (raises NonFiniteError naming the first non-finite module)


def _rank(model, targets, ids, cfg: FindConfig, epsilons, pn: PrefixNLL, progress: bool) -> Ranking:
    """Run the configured ranker; ``ranking.info`` gets its timings and stats. The ranker gets Stage 2's oracle
    (``Stage2Oracle``: the critical-set sizes for ``epsilons`` of a ranking, evaluated through ``pn``, which the
    final search then reuses); sensitivity with k="auto" stops on them, and a low-precision Stage 1
    (``stage1_dtype``) certifies the prefix they depend on."""
    ranker = make_ranker(cfg, progress)
    oracle = Stage2Oracle(pn, cfg, epsilons)
    ranker.use_stage2(oracle)
    t0 = time.perf_counter()
    ranking = ranker.rank(model, targets, ids)
    timings = {ranker.timing_key: time.perf_counter() - t0}
    ranking.info = {**ranking.info, "timings": timings, "stats": dict(ranker.stats)}
    if cfg.k == "auto":  # its Stage 2 checks are part of the ranking (its time)
        ranking.info["stats"]["auto_k_checks_s"] = oracle.seconds
    elif oracle.seconds:  # a search the final one reuses (certification): Stage 2's time
        timings[ranker.timing_key] -= oracle.seconds
        timings["stage2"] = oracle.seconds
    return ranking


def rank_neurons(model: Union[nn.Module, str], tokenizer=None, text: Optional[str] = None, *,
                 eval_text: Optional[str] = None, config: Optional[FindConfig] = None, device: Optional[str] = None,
                 dtype: Optional[str] = None, progress: bool = True, **params) -> Ranking:
    """Stage 1 alone: the ``Ranking`` that ``find_critical(..., ranked=...)`` (or ``search_ranking``) searches, so
    one ranking can serve many searches (other epsilons, steps, strategies, texts to evaluate on).
    ``ranking.info`` holds the ranker's timings and stats. Parameters as ``find_critical``; with ``k="auto"`` the
    ranking depends on Stage 2 too (``eval_text``, ``epsilon``, ``step``, ...)."""
    cfg, epsilons, model, _, targets, ids, eval_ids = _prepare(model, tokenizer, text, eval_text, config, device,
                                                               dtype, params)
    with eval_mode(model), ops.use_kernels(cfg.kernels), torch.no_grad():
        _check_clean(model, cfg, ids, eval_ids if eval_text is not None else None)
        return _rank(model, targets, ids, cfg, epsilons, PrefixNLL(model, eval_ids, cfg), progress)


def find_critical(model: Union[nn.Module, str], tokenizer=None, text: Optional[str] = None, *,
                  eval_text: Optional[str] = None, ranked: Optional[Ranking] = None,
                  config: Optional[FindConfig] = None, device: Optional[str] = None, dtype: Optional[str] = None,
                  progress: bool = True, **params) -> Union[CriticalResult, List[CriticalResult]]:
    """Find the critical neurons of a causal LM (arXiv 2510.10238).

    The ranker (``ranker="sensitivity"``: Stage 1, mean |f(x) - f(x + alpha*eps)| over ``k`` noisy copies of the
    token embeddings; or a baseline) orders the output channels of the scanned modules; Stage 2 masks the top-n
    channels for growing n until log10(PPL_masked / PPL_clean) >= ``epsilon`` on ``eval_text`` (default: ``text``).

    model: HF causal LM object, or a local folder / .gguf path / named default ("smollm2-135m").
    text: scoring text (default: a public-domain passage shipped with the package), first ``max_tokens`` tokens.
    config / params: a ``FindConfig`` and/or its fields as keyword arguments (k, alpha, seed, epsilon, step,
    max_neurons, scope, ranking, strategy, ...; see ``FindConfig``), validated before the model is touched.
    ``epsilon=[0.5, 1, 2]``: one Stage 1 and one search curve for all of them; returns a list, one result per
    epsilon (in the order given), each verified. ``k="auto"``: K chosen by the data (see ``max_k``; the K used is
    ``result.stats["k_used"]``). ``ranked``: a Ranking of this model from ``rank_neurons`` to search instead of
    ranking again (its Stage 1 parameters are the caller's business; ``max_neurons`` truncates it).
    Returns a ``CriticalResult`` (a list for an epsilon list); the model's weights are unchanged afterwards
    (bit-exact), whatever happens.
    """
    cfg, epsilons, model, name, targets, ids, eval_ids = _prepare(model, tokenizer, text, eval_text, config, device,
                                                                  dtype, params)
    if ranked is not None:
        _check_ranking(ranked, targets)
    run_params: Dict[str, Any] = dict(cfg.params(), n_tokens=int(ids.numel()), n_eval_tokens=int(eval_ids.numel()),
                                      eval_text="same" if eval_text is None else "separate")
    stats: Dict[str, Any] = {"n_targets": len(targets), "n_channels": sum(t.num_channels for t in targets)}
    with eval_mode(model), ops.use_kernels(cfg.kernels), torch.no_grad():
        pn = PrefixNLL(model, eval_ids, cfg, what="the text" if eval_text is None else "the eval_text")
        t0 = time.perf_counter()
        _check_clean(model, cfg, ids, eval_ids if eval_text is not None else None, pn)
        checked_s = time.perf_counter() - t0  # the clean checks (Stage 2's clean NLL among them): in its time
        ranking = ranked
        if ranking is None:
            ranking = _rank(model, targets, ids, cfg, epsilons, pn, progress)
        else:
            stats["ranking_given"] = True
        stats.update(ranking.info.get("stats", {}))
        results = search_epsilons(model, ranking.head(cfg.max_neurons), eval_ids, cfg, epsilons, params=run_params,
                                  prefix_nll=pn, model_name=name, stats=stats, progress=progress,
                                  timings={**ranking.info.get("timings", {}),
                                           "stage2": checked_s + ranking.info.get("timings", {}).get("stage2", 0.0)})
    return results if isinstance(params.get("epsilon"), (list, tuple)) else results[0]


def _check_ranking(ranking: Ranking, targets) -> None:
    """A given ranking must hold this model's targets (the same modules), else masks would go elsewhere."""
    same = len(ranking.targets) == len(targets) and all(
        a.name == b.name and a.module is b.module and a.num_channels == b.num_channels
        for a, b in zip(ranking.targets, targets))
    if not same:
        raise ValueError("ranked: made on another model or scope (its targets are not this model's modules); "
                         "rank this model with rank_neurons(model, ...) and the same scope")


# find_critical's signature as users see it (help(), IDEs): the FindConfig fields as keyword-only parameters
find_critical.__signature__ = inspect.signature(find_critical).replace(parameters=[
    p for p in inspect.signature(find_critical).parameters.values() if p.kind != p.VAR_KEYWORD] + [
    inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in FindConfig.defaults().items()])


def evaluate_mask(model, tokenizer, neurons: Sequence, text: Optional[str] = None, max_tokens: int = 512,
                  ids: Optional[torch.Tensor] = None, discover: bool = False,
                  max_batch_tokens: Optional[int] = None) -> Dict[str, float]:
    """Mean NLL and log10 PPL ratio of ``text`` (or token windows ``ids`` [T] / [W, T]) with ``neurons`` masked in
    place (weights restored after). Duplicate names count once: ``n_neurons`` and ``neurons`` are the distinct
    neurons masked. A loss that is not finite raises ``NonFiniteError``."""
    if ids is None:
        ids = tokenize(tokenizer, text, max_tokens, "text", model_context(model), warn_short=False)
    with eval_mode(model), torch.no_grad():
        ev = NLLEvaluator(model, ids, max_batch_tokens=max_batch_tokens)
        clean = ev.nll()
        with masked(model, neurons, discover=discover) as resolved:
            nll = ev.nll(masked=f"{len(resolved)} neuron(s)")
    return {"clean_nll": clean, "masked_nll": nll, "log10_ratio": log10_ratio(nll, clean),
            "n_tokens": int(ids.numel()), "n_neurons": len(resolved), "neurons": [n.name for n in resolved]}


def evaluate_corpus(model, tokenizer, neurons: Sequence, corpus: Union[str, Sequence[str]], window: int = 256,
                    max_windows: Optional[int] = None, bos: bool = True, max_batch_tokens: Optional[int] = None,
                    max_tokens: int = 512, discover: bool = False) -> Dict[str, Any]:
    """Corpus perplexity, clean and with ``neurons`` masked (weights restored bit-exact).

    corpus a string: WikiText-style, the whole text cut into non-overlapping windows of ``window`` tokens.
    corpus a sequence of strings (samples, e.g. ``read_jsonl_texts``): the paper's C4 evaluator, each sample on its
    own truncated to its first ``max_tokens`` tokens (and to the model's context), samples under 2 tokens skipped,
    NLL weighted by tokens.
    """
    ctx = model_context(model)
    if isinstance(corpus, str):
        ids = corpus_windows(tokenizer, corpus, window, max_windows, bos, ctx)
        r = evaluate_mask(model, tokenizer, neurons, ids=ids, max_batch_tokens=max_batch_tokens, discover=discover)
        r.update(windows=int(ids.shape[0]), window=window, bos=ids.shape[1] > window,
                 n_tokens=int(ids.shape[0] * window))
    else:
        samples, skipped = sample_ids(tokenizer, list(corpus), max_tokens if ctx is None else min(max_tokens, ctx))
        with eval_mode(model), torch.no_grad():
            ev = NLLEvaluator(model, samples[0], max_batch_tokens=max_batch_tokens, what="the corpus")
            clean, n_pred = ev.nll_samples(samples)
            with masked(model, neurons, discover=discover) as resolved:
                nll, _ = ev.nll_samples(samples, masked=f"{len(resolved)} neuron(s)")
        r = {"clean_nll": clean, "masked_nll": nll, "log10_ratio": log10_ratio(nll, clean),
             "n_neurons": len(resolved), "neurons": [n.name for n in resolved], "samples": len(samples),
             "skipped_samples": skipped,
             "max_tokens": max_tokens, "n_tokens": int(sum(s.numel() for s in samples)),
             "n_predicted_tokens": n_pred}
    r.update(log10_clean_ppl=log10_ppl(r["clean_nll"]), log10_masked_ppl=log10_ppl(r["masked_nll"]))
    return r
