"""What the sections share: the model and texts, the one Stage 1 pass, the default critical set, evaluation helpers
and cache keys."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ...method.config import FindConfig
from ...method.masking import WeightMask
from ...method.perplexity import NLLEvaluator, log10_ratio
from ...method.ranking import Ranking
from ...method.result import CriticalResult
from ...method.stage2 import search_ranking
from ...method.text import DEFAULT_TEXT, text_ids
from ...models.loading import model_digest
from ...models.registry import discover_targets
from ...models.targets import Target
from ...utils import eval_mode
from .scores import rank_subset, snapshot_scores


# ---- cache keys ---------------------------------------------------------------------------------------------------
def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the shared state --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StudyContext:
    model: nn.Module
    tokenizer: Any
    name: str
    config: FindConfig
    params: Any  # params.StudyParams (built from the sections, which import this module)
    text: Optional[str]
    eval_text: Optional[str]
    texts: Dict[str, str]  # stability across texts: {name: text}
    texts_source: str  # "built-in" or the folder
    progress: bool = False
    base: Optional[CriticalResult] = None
    _scores: Dict[int, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    _ev: Optional[NLLEvaluator] = None
    _clean: Optional[float] = None

    def __post_init__(self):
        cfg = self.config
        self.ids, self.eval_ids = text_ids(self.model, self.tokenizer, self.text, self.eval_text,
                                           cfg.max_tokens)  # [T], [T']
        self.targets: List[Target] = discover_targets(self.model, cfg.scope, allow_discovery=cfg.discover)
        self.all_targets: List[Target] = discover_targets(self.model, "all", allow_discovery=cfg.discover)
        names = {t.name for t in self.targets}
        self.union: List[Target] = self.targets + [t for t in self.all_targets if t.name not in names]
        self.down_names = {t.name for t in discover_targets(self.model, "down_proj", allow_discovery=cfg.discover)}
        layers = [t.layer for t in self.union if t.layer is not None]
        n_cfg = getattr(getattr(self.model, "config", None), "num_hidden_layers", None)
        self.n_layers = int(n_cfg) if isinstance(n_cfg, int) else (max(layers) + 1 if layers else 0)
        self.timings: Dict[str, float] = {}

    # -- keys ----------------------------------------------------------------------------------------------------
    def base_key(self) -> Dict[str, Any]:
        """What every section's numbers depend on: the model's weights, the texts and the method's parameters."""
        if not hasattr(self, "_base_key"):
            sha = lambda s: hashlib.sha256((s or "").encode()).hexdigest()[:16]  # noqa: E731
            self._base_key = {"model": self.name, "weights": model_digest(self.model),
                              "text": sha(self.text if self.text is not None else DEFAULT_TEXT),
                              "eval_text": None if self.eval_text is None else sha(self.eval_text),
                              "config": self.config.params()}
        return self._base_key

    # -- Stage 1 once ------------------------------------------------------------------------------------------------
    def prepare_scores(self, ks: Sequence[int], union: bool) -> None:
        """Run the one Stage 1 pass (scores at every K in ``ks`` ∪ {config.k}; over the scope='all' targets too when
        ``union``), unless an earlier call already covers it."""
        ks = sorted(set(ks) | {self.config.k})
        have = self._scores.get(self.config.k)
        if have is not None and all(k in self._scores for k in ks) and \
                (not union or all(t.name in have for t in self.union)):
            return
        targets = self.union if union else self.targets
        t0 = time.perf_counter()
        with eval_mode(self.model):
            got = snapshot_scores(self.model, targets, self.ids, ks, self.config, self.progress)
        self.timings["stage1"] = time.perf_counter() - t0
        self._scores = {k: {t.name: s for t, s in zip(targets, got[k])} for k in ks}

    def ranking(self, targets: Optional[Sequence[Target]] = None, k: Optional[int] = None,
                top: Optional[int] = None) -> Ranking:
        """Ranking of ``targets`` (default: the study's scope) from the shared Stage 1 at K = ``k``."""
        k = self.config.k if k is None else k
        if k not in self._scores:
            self.prepare_scores([k], union=False)
        return rank_subset(self.targets if targets is None else targets, self._scores[k], self.config, top)

    # -- Stage 2 -----------------------------------------------------------------------------------------------------
    def search(self, ranking: Ranking, config: Optional[FindConfig] = None, model: Optional[nn.Module] = None,
               eval_ids: Optional[torch.Tensor] = None) -> CriticalResult:
        cfg = config or self.config
        m = model or self.model
        with eval_mode(m):
            return search_ranking(m, ranking, self.eval_ids if eval_ids is None else eval_ids, cfg,
                                  model_name=self.name, params=cfg.params())

    def default_result(self) -> CriticalResult:
        """The default critical set: the study's config, the shared Stage 1, the same Stage 2 as find_critical."""
        if self.base is None:
            self.prepare_scores([self.config.k], union=False)
            t0 = time.perf_counter()
            self.base = self.search(self.ranking())
            self.base.timings = {"stage1": self.timings.get("stage1", 0.0), "stage2": time.perf_counter() - t0}
        return self.base

    # -- evaluation --------------------------------------------------------------------------------------------------
    def evaluator(self) -> NLLEvaluator:
        if self._ev is None:
            self._ev = NLLEvaluator(self.model, self.eval_ids, max_batch_tokens=self.config.max_batch_tokens)
            with eval_mode(self.model), torch.no_grad():
                self._clean = self._ev.nll()
        return self._ev

    @property
    def clean_nll(self) -> float:
        self.evaluator()
        return self._clean  # type: ignore[return-value]

    def masked_ratio(self, ranking: Ranking, n: Optional[int] = None) -> float:
        """log10 PPL ratio on the evaluation text with the first ``n`` channels of ``ranking`` zeroed in place."""
        ev = self.evaluator()
        with eval_mode(self.model), torch.no_grad(), WeightMask(ranking).apply(n):
            return log10_ratio(ev.nll(), self.clean_nll)

    def third(self, layer: Optional[int]) -> str:
        """Place of a layer in the depth: first, middle or last third."""
        if layer is None or self.n_layers <= 0:
            return "-"
        return ("first", "middle", "last")[min(2, (3 * layer) // self.n_layers)]
