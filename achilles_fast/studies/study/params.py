"""The study's own parameters (grids, subset budgets, prompts), the ``--quick`` preset, and their validation.

The method's parameters stay in ``FindConfig`` (the default set is found with it); a grid value is validated by
building the FindConfig it stands for, so the messages are the method's own.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

from ...method.config import FindConfig
from ...models.loading import parse_dtype
from ...utils import positive_int
from ..generate import DEFAULT_PROMPTS, check_max_new_tokens, check_prompts

SECTIONS = ("critical", "cooperativity", "components", "stability", "mechanism", "generations")
STABILITY_GROUPS = ("alpha", "k", "length", "texts", "dtype")


class StudyError(ValueError):
    """Bad study input (unknown section, invalid grid value, ...): one line, exit 2 in the CLI."""


@dataclasses.dataclass(frozen=True)
class StudyParams:
    alphas: Tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    ks: Tuple[int, ...] = (5, 10, 20, 50, 100)
    lengths: Tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    dtypes: Tuple[str, ...] = ("float32", "bfloat16")
    genres: Optional[Tuple[str, ...]] = None  # built-in genres used when no --texts folder is given (None: all)
    component_ns: Tuple[int, ...] = (100, 1000)  # besides |S|
    exhaustive_max: int = 10  # every proper subset when |S| <= this
    subsets_per_size: int = 50  # else: leave-one-out + this many random subsets of each size ...
    max_sizes: int = 10  # ... for at most this many subset sizes, spread over 1 .. |S|-1
    max_singles: int = 100  # each neuron alone, for the first this many neurons of the set
    prompts: Tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 40

    def __post_init__(self):
        cfg = FindConfig()
        for a in self.alphas:
            _check(lambda: cfg.replace(alpha=a), "alphas")
        for k in self.ks:
            _check(lambda: cfg.replace(k=k), "ks")
        for n in self.lengths:
            _check(lambda: cfg.replace(max_tokens=n), "lengths")
        for d in self.dtypes:
            _check(lambda: parse_dtype(d), "dtypes")
        for n in self.component_ns:
            _check(lambda: cfg.replace(max_neurons=n), "component_ns")
        for name in ("exhaustive_max", "subsets_per_size", "max_sizes", "max_singles"):
            try:
                positive_int(getattr(self, name), name)
            except ValueError as e:
                raise StudyError(str(e)) from None
        if self.exhaustive_max > 16:
            raise StudyError(f"exhaustive_max must be <= 16 (2^n - 2 subsets), got {self.exhaustive_max}")
        for name in ("alphas", "ks", "lengths", "dtypes"):
            if not getattr(self, name):
                raise StudyError(f"the {name} grid is empty")
        if self.genres is not None:
            from .genres import GENRES
            bad = [g for g in self.genres if g not in GENRES]
            if bad or not self.genres:
                raise StudyError(f"unknown genre(s) {bad}: expected some of {', '.join(GENRES)}")
        check_prompts(self.prompts)
        check_max_new_tokens(self.max_new_tokens)

    @classmethod
    def make(cls, quick: bool = False, **overrides) -> "StudyParams":
        """The full (default) or ``--quick`` preset with ``overrides`` (None values are ignored)."""
        base = QUICK if quick else {}
        bad = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise TypeError(f"unexpected study parameter(s) {', '.join(bad)}")
        kw = dict(base, **{k: _tuple(v) for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# --quick: SmolLM2 within ~5 minutes on a 2-core CPU (see benchmarks/RESULTS.md)
QUICK: Dict[str, Any] = dict(alphas=(1.0, 5.0, 10.0), ks=(10, 100), lengths=(8, 16, 64), genres=("prose", "code"),
                             exhaustive_max=6, subsets_per_size=10, max_sizes=4, max_singles=20, max_new_tokens=20)


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _check(make, grid: str) -> None:
    try:
        make()
    except (ValueError, TypeError) as e:
        raise StudyError(f"invalid {grid} value: {e}") from None


def parse_sections(spec) -> Tuple[str, ...]:
    """'cooperativity,mechanism' (or a list, or None = all) -> sections in report order; unknown names raise."""
    if spec is None:
        return SECTIONS
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise StudyError(f"unknown section(s) {', '.join(bad) or '(none given)'}: expected some of "
                         f"{', '.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


def parse_grid(spec: Optional[str], kind, flag: str) -> Optional[Tuple]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0) with ``kind`` (float, int or str); None stays None."""
    if spec is None:
        return None
    out = []
    for s in spec.split(","):
        s = s.strip()
        if not s:
            continue
        try:
            v = kind(s)
        except ValueError:
            raise StudyError(f"invalid {flag} value {s!r}: expected {kind.__name__} values separated by commas") \
                from None
        if isinstance(v, float) and not math.isfinite(v):
            raise StudyError(f"invalid {flag} value {s!r}: must be finite")
        out.append(v)
    if not out:
        raise StudyError(f"{flag} is empty")
    return tuple(dict.fromkeys(out))


def stable(j: Optional[float]) -> bool:
    """The stability threshold used by every stability verdict: Jaccard with the default set >= 0.5."""
    return j is not None and j >= STABLE_JACCARD


STABLE_JACCARD = 0.5


def grid_sorted(values: Sequence) -> Tuple:
    return tuple(sorted(dict.fromkeys(values)))
