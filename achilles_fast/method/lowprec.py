"""Stage 2 prefixes evaluated in a low precision (``stage2_dtype``), exact wherever a decision depends on it.

A prefix's low-precision log10 ratio (masked vs clean NLL, both in the low dtype) decides on its own only when it lies
farther than ``margin`` from epsilon; every other prefix (and one whose low value is not finite) is re-evaluated in
the model's dtype before the search sees it. The margin is calibrated per run: the first ``CALIBRATION`` prefixes
are evaluated both ways, every re-evaluation adds a point, and margin = ``SAFETY`` x the largest difference seen
(at least ``MIN_MARGIN``), so it only grows. ``stats()`` reports it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from .finite import NonFiniteError
from .masking import BatchedMask
from .perplexity import NLLEvaluator, log10_ratio

SAFETY = 4.0  # margin = SAFETY x the largest |low - exact| log10 ratio difference seen
MIN_MARGIN = 0.01  # log10 units
CALIBRATION = 3  # prefixes evaluated both ways before the low precision may decide alone


class LowPrecision:
    """The low-precision evaluator of one text, its clean NLL and the calibrated margin."""

    def __init__(self, ev: NLLEvaluator, dtype: str):
        self.ev, self.dtype = ev, dtype
        self.errors: List[float] = []  # |low - exact| log10 ratio of each prefix evaluated both ways
        self.low_evaluations = 0
        self.exact_evaluations = 0  # prefixes re-evaluated in the model's dtype
        self.reason: Optional[str] = None
        self.clean = math.nan
        try:
            self.clean = ev.nll()
        except NonFiniteError as e:
            self.reason = f"the clean loss in {dtype} is not finite ({e})"

    @property
    def active(self) -> bool:
        return self.reason is None

    @property
    def margin(self) -> float:
        if len(self.errors) < CALIBRATION:
            return math.inf
        return max(MIN_MARGIN, SAFETY * max(self.errors))

    def log10_ratios(self, bmask: BatchedMask, ns: Sequence[int]) -> List[float]:
        """Low-precision log10 ratios of prefixes ``ns`` (not finite ones returned as they are)."""
        self.low_evaluations += len(ns)
        return [log10_ratio(v, self.clean) for v in self.ev.nll_prefixes(bmask, ns, check_finite=False)]

    def decides(self, lr: float, epsilon: Optional[float]) -> bool:
        """True when the low-precision ratio ``lr`` may decide alone against ``epsilon`` (None: never)."""
        return epsilon is not None and math.isfinite(lr) and abs(lr - epsilon) > self.margin

    def calibrate(self, low: float, exact: float) -> None:
        self.exact_evaluations += 1
        if math.isfinite(low) and math.isfinite(exact):
            self.errors.append(abs(low - exact))

    def stats(self) -> Dict[str, object]:
        out: Dict[str, object] = {"dtype": self.dtype, "low_evaluations": self.low_evaluations,
                                  "exact_reevaluations": self.exact_evaluations, "safety": SAFETY,
                                  "max_error": max(self.errors, default=None)}
        out["margin"] = self.margin if math.isfinite(self.margin) else None
        lowp = self.ev.lowp
        out["weight_copy_bytes"] = lowp.nbytes if lowp is not None else 0
        if lowp is not None and lowp.reason is not None:
            out["weight_copies_skipped"] = lowp.reason
        if self.reason is not None:
            out["fallback"] = self.reason
        return out
