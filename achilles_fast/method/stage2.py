"""Stage 2: the smallest prefix n of a Ranking whose masking crosses log10(PPL_n / PPL_clean) >= epsilon.

Candidates are n = step, 2*step, ... (and max_neurons itself). Several candidates are evaluated in one batched
forward, each batch element with its own prefix mask (``BatchedMask``: element b masks ``rank < n_b``).

- ``first`` (default): the paper's answer, the first crossing, on every curve. Exponential probes (n = step * 1,
  2, 4, ..., and the last candidate; ``batch_size`` per forward) find a crossing fast; then every candidate below
  it that is not yet evaluated is evaluated in increasing order, ``batch_size`` per forward, which certifies that no
  smaller n crosses (stop at the first batch holding a crossing). No search can certify a first crossing without
  evaluating every candidate below it, so this costs what ``linear`` costs plus the probes above the answer
  (at most log2 of the grid).
- ``linear`` (paper): candidates in increasing order, ``batch_size`` per forward, stop at the first batch
  that contains a crossing; the answer is the first crossing. Exactly the paper's n.
- ``bisect``: exponential probes then a (batch_size+1)-ary search inside the first bracketing interval; about
  log2(n) evaluations. The answer n always has n - step evaluated as not crossing (verified), so it equals the
  ``linear`` answer whenever the curve is monotone; on a non-monotone curve it may return a later crossing.

``search_ranking`` runs the search on a model and builds the CriticalResult (shared by every ranker).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..models.loading import model_source
from ..utils import eval_mode, progress_bar
from .config import FindConfig
from .masking import BatchedMask, WeightMask
from .lowprec import LowPrecision
from .perplexity import LN10, NLLEvaluator, log10_ratio
from .ranking import Ranking
from .result import CriticalNeuron, CriticalResult, versions


def default_batches(device: torch.device, strategy: str) -> Tuple[int, int]:
    """(candidates per scan call, per probe call) of Stage 2 when the user gives no ``batch_size``.

    GPU: a forward of 16 sequences costs about one of a single sequence: 16 everywhere. CPU: a shared forward saves
    ~15% per prefix at best (``NLLEvaluator.CPU_SHARED_ROW_COST``) and gives every prefix its own forward's bits, so
    a scan, which evaluates every candidate below a crossing anyway, hands the evaluator a shared forward's size
    (``NLLEvaluator.CPU_SHARED_PREFIXES``) per call (Gemma-3-270M's 589-prefix find: 0.27 -> 0.25 s per prefix; the
    evaluator runs prefixes of different layers alone), while probes and bisect, where a speculative candidate is
    wasted work, take one (bisect at 4 is a 5-ary search: stories260K n=143 took 27 evaluations vs 17).
    """
    if device.type == "cuda":
        return 16, 16
    return (1 if strategy == "bisect" else NLLEvaluator.CPU_SHARED_PREFIXES), 1


def stage2_batches(config: FindConfig, device: torch.device) -> Tuple[int, int]:
    """(candidates per scan call, per probe call): the user's ``batch_size`` for both, else ``default_batches``."""
    return (config.batch_size,) * 2 if config.batch_size else default_batches(device, config.strategy)


@dataclasses.dataclass
class SearchOutcome:
    n: int  # size of the critical set (0 when not converged)
    converged: bool
    curve: Dict[int, float]  # n -> log10(PPL_n / PPL_clean), every evaluated point
    nll: Dict[int, float]  # n -> mean NLL
    evaluations: int  # number of (prefix, text) evaluations
    batches: int  # calls of ``evaluate`` (one batched forward each when the batch fits the token budget)
    verified: bool  # the point n - step was evaluated and does not cross


def _grid(max_n: int, step: int) -> List[int]:
    g = list(range(step, max_n + 1, step))
    if not g or g[-1] != max_n:
        g.append(max_n)
    return g


def greedy_search(evaluate: Callable[[Sequence[int]], List[float]], nll_clean: float, n_ranked: int,
                  epsilon: float = 1.0, step: int = 1, max_neurons: int = 1000, strategy: str = "first",
                  batch_size: int = 8, progress: Optional[Callable[[int, float], None]] = None,
                  probe_batch: Optional[int] = None) -> SearchOutcome:
    """Search prefix sizes of a ranking of ``n_ranked`` channels; ``evaluate(ns)`` -> mean NLL of each prefix.
    ``batch_size``: candidates per ``evaluate`` call; ``probe_batch`` (default ``batch_size``): per call of the
    exponential probes of ``first``."""
    max_n = min(max_neurons, n_ranked)
    grid = _grid(max_n, step)
    curve: Dict[int, float] = {}
    nlls: Dict[int, float] = {}
    counts = {"evals": 0, "batches": 0}

    def run(ns: Sequence[int]) -> None:
        ns = [n for n in ns if n not in curve]
        if not ns:
            return
        vals = evaluate(ns)
        counts["evals"] += len(ns)
        counts["batches"] += 1
        for n, v in zip(ns, vals):
            nlls[n] = v
            curve[n] = log10_ratio(v, nll_clean)
            if progress is not None:
                progress(n, curve[n])

    def crosses(n: int) -> bool:
        return curve[n] >= epsilon

    def first_of(part: Sequence[int]) -> Optional[int]:
        return next((n for n in part if crosses(n)), None)

    def scan(ns: Sequence[int], per_call: int = batch_size) -> Optional[int]:
        """Evaluate ``ns`` (increasing) ``per_call`` at a time; the first crossing, stopping at its batch."""
        for i in range(0, len(ns), per_call):
            part = ns[i:i + per_call]
            run(part)
            hit = first_of(part)
            if hit is not None:
                return hit
        return None

    # exponential probes over grid indices 0, 1, 3, 7, ... (n = step, 2 step, 4 step, ...) and the last
    probes = sorted({min((1 << i) - 1, len(grid) - 1) for i in range(len(grid).bit_length() + 1)})
    found: Optional[int] = None
    if strategy == "linear":
        found = scan(grid)
    elif strategy == "first":
        hi = scan([grid[j] for j in probes], probe_batch or batch_size)  # some crossing, not necessarily the first
        scan([n for n in grid if n not in curve and (hi is None or n < hi)])  # certify: all candidates below hi
        found = first_of(sorted(curve))  # every candidate below it is evaluated and does not cross
    else:
        lo_i, hi_i = -1, None

        def advance(idxs: List[int]) -> None:
            """Evaluate grid[idxs] (increasing) in one batch; lo_i/hi_i move to the first crossing among them."""
            nonlocal lo_i, hi_i
            run([grid[j] for j in idxs])
            for j in idxs:
                if crosses(grid[j]):
                    hi_i = j
                    return
                lo_i = j

        for i in range(0, len(probes), batch_size):
            advance(probes[i:i + batch_size])
            if hi_i is not None:
                break
        if hi_i is not None:
            while hi_i - lo_i > 1:
                inner = list(range(lo_i + 1, hi_i))
                if len(inner) > batch_size:  # evenly spaced picks
                    inner = sorted({inner[(len(inner) * (q + 1)) // (batch_size + 1)] for q in range(batch_size)})
                advance(inner)
            found = grid[hi_i]
    n = found or 0
    pos = grid.index(n) if n else -1
    prev = grid[pos - 1] if pos > 0 else None
    verified = bool(n) and (pos == 0 or (prev in curve and not crosses(prev)))
    return SearchOutcome(n=n, converged=found is not None, curve=dict(sorted(curve.items())),
                         nll=dict(sorted(nlls.items())), evaluations=counts["evals"], batches=counts["batches"],
                         verified=verified)


class PrefixNLL:
    """Mean NLL of ranking prefixes on one evaluation text, each distinct prefix evaluated once.

    Entries are keyed by the prefix's channel set, so the searches for several epsilons on one ranking, and the
    searches of adaptive K on successive rankings that share a head, reuse every evaluation; the clean NLL is
    computed once. On CPU every value is bit-identical to a search of its own (a forward shared by several prefixes
    gives each its own forward's bits, ``NLLEvaluator``); on GPU a value may come from a batch of another composition
    (float rounding).
    The evaluator and the clean NLL are made at first use (``find_critical``: its clean-model check, before Stage 1).
    ``config``: the token budget, ``incremental`` (prefixes run from their first changed layer) and ``stage2_dtype``
    (low-precision evaluations, exact near epsilon: ``LowPrecision``); ``what``: the text's name in error messages.
    """

    def __init__(self, model: nn.Module, eval_ids: torch.Tensor, config: Optional[FindConfig] = None,
                 what: str = "the text"):
        cfg = config or FindConfig()
        self._make = lambda dtype=None: NLLEvaluator(model, eval_ids, max_batch_tokens=cfg.max_batch_tokens,
                                                     incremental=cfg.incremental, dtype=dtype, what=what)
        self._low_dtype = None if cfg.stage2_dtype in (None, "float32") else cfg.stage2_dtype
        self._ev: Optional[NLLEvaluator] = None
        self._low: Optional[LowPrecision] = None
        self._clean: Optional[float] = None
        self._nll: Dict[bytes, float] = {}
        self._approx: Dict[bytes, float] = {}  # key -> low-precision log10 ratio, while its value is not exact
        self._verified: Dict[bytes, float] = {}
        self.reused = 0  # evaluations answered from memory

    @property
    def low(self) -> Optional[LowPrecision]:
        """The low-precision evaluator (``stage2_dtype``; made at first use), None when off."""
        if self._low is None and self._low_dtype is not None:
            self._low = LowPrecision(self._make(self._low_dtype), self._low_dtype)
        return self._low

    @property
    def ev(self) -> NLLEvaluator:
        """The evaluator (made at first use)."""
        if self._ev is None:
            self._ev = self._make()
        return self._ev

    @property
    def clean(self) -> float:
        """Mean NLL of the unmasked model (computed at first use)."""
        if self._clean is None:
            self._clean = self.ev.nll()
        return self._clean

    @staticmethod
    def key(ranking: Ranking, n: int) -> bytes:
        return ranking.channels[:n].sort().values.numpy().tobytes()

    def nll_prefixes(self, bm: BatchedMask, ranking: Ranking, ns: Sequence[int],
                     epsilon: Optional[float] = None) -> List[float]:
        """Mean NLL with the first ``ns[i]`` channels of ``ranking`` masked (``bm``: that ranking's BatchedMask).
        With ``stage2_dtype`` a value is exact (the model's dtype) unless its low-precision log10 ratio lies beyond
        the margin from ``epsilon`` (None: every value exact)."""
        keys = [self.key(ranking, n) for n in ns]
        new: Dict[bytes, int] = {}
        for n, k in zip(ns, keys):
            if k not in self._nll:
                new.setdefault(k, n)
        low = self.low
        if new and low is not None and low.active:
            for k, lr in zip(new, low.log10_ratios(bm, list(new.values()))):
                self._approx[k] = lr
                self._nll[k] = self.clean + lr * LN10  # the low-precision ratio on the exact clean NLL
        elif new:
            for k, v in zip(new, self.ev.nll_prefixes(bm, list(new.values()))):
                self._nll[k] = v
        self.reused += len(ns) - len(new)
        if self._approx:
            exact: Dict[bytes, int] = {}
            for n, k in zip(ns, keys):
                if k in self._approx and not low.decides(self._approx[k], epsilon):
                    exact.setdefault(k, n)
            if exact:
                for k, v in zip(exact, self.ev.nll_prefixes(bm, list(exact.values()))):
                    low.calibrate(self._approx.pop(k), log10_ratio(v, self.clean))
                    self._nll[k] = v
        return [self._nll[k] for k in keys]

    def stats(self) -> Dict[str, Any]:
        """The evaluators' stats: ``lm_head`` (how the head's NLL is computed), ``shared_forwards`` (CPU: forwards of
        several prefixes, ``NLLEvaluator.batch_stats``), ``incremental`` (PrefixCache) and
        ``stage2_dtype`` (LowPrecision), when on."""
        out: Dict[str, Any] = {"lm_head": self.ev.head_stats()}
        shared = self.ev.batch_stats()
        if shared:
            out["shared_forwards"] = shared
        if self.ev.cache is not None:
            out["incremental"] = self.ev.cache.stats()
        if self.low is not None:
            low = out["stage2_dtype"] = self.low.stats()
            if self.low.ev.cache is not None:
                low["incremental"] = self.low.ev.cache.stats()
            shared = self.low.ev.batch_stats()
            if shared:
                low["shared_forwards"] = shared
        return out

    def verify(self, ranking: Ranking, n: int) -> float:
        """log10 ratio with the first ``n`` channels masked in place on the weights (restored bit-exact)."""
        k = self.key(ranking, n)
        if k not in self._verified:
            with WeightMask(ranking).apply(n):
                self._verified[k] = self.ev.nll(masked=f"the {n} critical neuron(s)")
        return log10_ratio(self._verified[k], self.clean)


def _search(pn: PrefixNLL, bm: BatchedMask, ranking: Ranking, cfg: FindConfig, epsilon: float,
            progress: Optional[Callable[[int, float], None]] = None) -> SearchOutcome:
    batch_size, probe_batch = stage2_batches(cfg, pn.ev.device)
    return greedy_search(lambda ns: pn.nll_prefixes(bm, ranking, ns, epsilon), pn.clean, len(ranking), epsilon=epsilon,
                         step=cfg.step, max_neurons=cfg.max_neurons, strategy=cfg.strategy, batch_size=batch_size,
                         progress=progress, probe_batch=probe_batch)


def critical_searches(pn: PrefixNLL, ranking: Ranking, config: FindConfig,
                      epsilons: Sequence[float]) -> List[SearchOutcome]:
    """The search of ``ranking`` for each epsilon, as ``search_ranking`` searches, without verification; every
    evaluation goes through ``pn`` (so ``search_ranking`` on the same ranking later evaluates nothing again)."""
    with BatchedMask(ranking, config.max_neurons) as bm:
        return [_search(pn, bm, ranking, config, e) for e in epsilons]


class Stage2Oracle:
    """What a ranker may ask of Stage 2 before the final search (``Ranker.use_stage2``): called on a ranking ->
    its critical-set size per epsilon (0: not converged); ``within`` -> the searches when their answers depend on
    the ranking's first ``length`` channels only. ``seconds``: the time spent in it."""

    def __init__(self, pn: PrefixNLL, config: FindConfig, epsilons: Sequence[float]):
        self.pn, self.config, self.epsilons = pn, config, list(epsilons)
        self.seconds = 0.0

    def searches(self, ranking: Ranking, config: Optional[FindConfig] = None) -> List[SearchOutcome]:
        t = time.perf_counter()
        try:
            return critical_searches(self.pn, ranking, config or self.config, self.epsilons)
        finally:
            self.seconds += time.perf_counter() - t

    def __call__(self, ranking: Ranking) -> List[int]:
        return [o.n for o in self.searches(ranking)]

    def within(self, ranking: Ranking, length: int) -> Optional[List[SearchOutcome]]:
        """The searches of ``ranking`` when every answer depends on its first ``length`` channels only, else None.
        ``first``/``linear`` look no further than ``length`` (a first crossing there is the first crossing of the
        whole search); ``bisect`` searches in full, and every prefix it evaluated must lie within ``length``."""
        cfg = self.config
        if cfg.strategy != "bisect" and length < min(cfg.max_neurons, len(ranking)):
            limit = length // cfg.step * cfg.step  # the search's own candidates only (n = step, 2 step, ...)
            out = self.searches(ranking, cfg.replace(max_neurons=limit)) if limit else []
            return out if out and all(o.converged for o in out) else None
        out = self.searches(ranking)
        return out if max(max(o.curve, default=0) for o in out) <= length else None


def search_ranking(model: nn.Module, ranking: Ranking, eval_ids: torch.Tensor, config: FindConfig, *,
                   model_name: str = "", params: Optional[Dict[str, Any]] = None,
                   timings: Optional[Dict[str, float]] = None, stats: Optional[Dict[str, Any]] = None,
                   progress: bool = False, prefix_nll: Optional[PrefixNLL] = None) -> CriticalResult:
    """Find the first prefix of ``ranking`` crossing ``config.epsilon`` on ``eval_ids`` [T] and build the result
    (weights untouched; bit-exact after the in-place verification). ``prefix_nll``: evaluations to share with other
    searches on the same text (``search_epsilons``). ``timings``: seconds so far (a "stage2" there, e.g. the clean
    NLL computed before Stage 1, is added to the search's)."""
    cfg = config
    timings = dict(timings or {})
    stats = dict(stats or {})
    stats.setdefault("n_targets", len(ranking.targets))
    stats.setdefault("n_channels", ranking.index.total)
    t1 = time.perf_counter()
    with eval_mode(model), torch.no_grad():
        pn = prefix_nll or PrefixNLL(model, eval_ids, cfg)
        ev, clean = pn.ev, pn.clean
        bsz = stage2_batches(cfg, ev.device)[0]
        f0, r0 = ev.forwards, pn.reused
        with progress_bar(min(cfg.max_neurons, len(ranking)), "Stage 2: greedy", "eval", progress) as bar, \
                BatchedMask(ranking, cfg.max_neurons) as bm:
            def on_eval(n, lr):
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(n=n, log10_ratio=f"{lr:.3f}")
            out = _search(pn, bm, ranking, cfg, cfg.epsilon, progress=on_eval)
            n_final = out.n if out.converged else max(out.curve, default=0)
            if n_final and pn.low is not None:  # the reported value exact (stage2_dtype)
                v = out.nll[n_final] = pn.nll_prefixes(bm, ranking, [n_final])[0]
                out.curve[n_final] = log10_ratio(v, clean)
        forwards = ev.forwards - f0
        if cfg.verify and out.converged:
            stats["verify_log10_ratio"] = pn.verify(ranking, n_final)
    timings["stage2"] = timings.get("stage2", 0.0) + time.perf_counter() - t1  # (+ the work before: clean NLL)
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    stats.update(stage2_forwards=forwards, stage2_evaluations=out.evaluations, stage2_calls=out.batches,
                 stage2_batch=bsz, stage2_verified_prev=out.verified, fused_nll=ev.fused)
    if pn.reused > r0:
        stats["stage2_reused"] = pn.reused - r0
    stats.update(pn.stats())
    pe = ranking.info.get("paper_entries")
    if pe and out.converged and 0 < out.n <= len(pe):  # the paper's unit: per_token entries up to the set's last
        stats["paper_entries"] = pe[out.n - 1]
    final = out.nll.get(n_final)
    scores = ranking.scores.tolist()

    def entries(n: int) -> List[CriticalNeuron]:
        return [CriticalNeuron(name=nr.name, module=nr.module, channel=nr.channel, layer=nr.layer, kind=nr.kind,
                               rank=i, score=float(scores[i])) for i, nr in enumerate(ranking.neurons(n))]

    return CriticalResult(
        model=model_name, neurons=entries(out.n) if out.converged else [],
        converged=out.converged, epsilon=cfg.epsilon, clean_nll=clean, final_nll=final,
        log10_ratio=None if final is None else log10_ratio(final, clean),
        curve=[[n, v] for n, v in out.curve.items()], params=dict(params or {}), timings=timings, stats=stats,
        versions=versions(), top_ranked=entries(cfg.top_report), source=model_source(model))


def search_epsilons(model: nn.Module, ranking: Ranking, eval_ids: torch.Tensor, config: FindConfig,
                    epsilons: Sequence[float], *, params: Optional[Dict[str, Any]] = None,
                    prefix_nll: Optional[PrefixNLL] = None, **kw) -> List[CriticalResult]:
    """``search_ranking`` for each of ``epsilons`` on one ranking and text -> one result per epsilon, in order.

    The largest epsilon is searched first; the smaller ones are mostly answered from the curve it evaluated (every
    prefix is evaluated once, ``PrefixNLL``), and each result is verified in place as ``search_ranking`` verifies.
    """
    with eval_mode(model), torch.no_grad():
        pn = prefix_nll or PrefixNLL(model, eval_ids, config)
        out: List[Optional[CriticalResult]] = [None] * len(epsilons)
        for i in sorted(range(len(epsilons)), key=lambda j: -epsilons[j]):
            cfg = config.replace(epsilon=epsilons[i])
            out[i] = search_ranking(model, ranking, eval_ids, cfg, params=dict(params or {}, epsilon=cfg.epsilon),
                                    prefix_nll=pn, **kw)
    return out
