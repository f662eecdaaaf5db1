"""What a comparison of critical sets reports, computed from plain data (names, sets, rankings): no model here.

A checkpoint's ranking is ``{neuron name: (rank, score)}`` for the head of its Stage 1 ranking (rank 0-based, as
``CriticalNeuron.rank``); ``None`` stands for a checkpoint that failed (its row and column are ``None``).
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from ..robustness import jaccard as _jaccard

Ranked = Mapping[str, Tuple[int, float]]  # neuron name -> (0-based rank, score)


def jaccard(sets: Sequence[Optional[Set[str]]]) -> List[List[Optional[float]]]:
    """N x N |A & B| / |A | B| (two empty sets: 1); None where either checkpoint failed."""
    return [[None if a is None or b is None else _jaccard(a, b) for b in sets] for a in sets]


def top_k(ranked: Ranked, k: int) -> List[str]:
    """The ``k`` best-ranked neuron names."""
    return [n for n, _ in sorted(ranked.items(), key=lambda kv: kv[1][0])[:k]]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` [n] ascending, ties sharing their average rank (what Spearman's rho needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=float)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Spearman's rank correlation of a [n] and b [n] (Pearson of average ranks); None when undefined."""
    if len(a) < 2:
        return None
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return None if den == 0 else float((ra * rb).sum() / den)


def spearman(rankings: Sequence[Optional[Ranked]], k: int) -> List[List[Optional[float]]]:
    """N x N Spearman correlation of Stage 1 scores over the union of the two checkpoints' top-``k`` channels.

    A channel of the union that one checkpoint's stored ranking does not hold scores below every channel it holds
    (all such channels tie at the bottom)."""
    out = []
    for a in rankings:
        row = []
        for b in rankings:
            if a is None or b is None:
                row.append(None)
                continue
            union = sorted(set(top_k(a, k)) | set(top_k(b, k)))
            row.append(spearman_rho(_scores(a, union), _scores(b, union)))
        out.append(row)
    return out


def _scores(ranked: Ranked, names: Sequence[str]) -> np.ndarray:
    """Scores of ``names`` [n]; names the ranking lacks get one value below all of its scores."""
    held = [s for _, s in ranked.values()]
    floor = (min(held) if held else 0.0) - 1.0
    return np.array([ranked[n][1] if n in ranked else floor for n in names], dtype=float)


def persistence(names: Sequence[str], sets: Sequence[Optional[Sequence[str]]],
                rankings: Sequence[Optional[Ranked]]) -> List[Dict]:
    """One entry per neuron of the union of the critical sets: where it is critical, and its rank and score in
    every checkpoint (None: not in that checkpoint's stored ranking, or the checkpoint failed). Ordered by how
    many checkpoints share it, then by its best rank."""
    union: Dict[str, None] = {}
    for s in sets:
        for n in s or ():
            union.setdefault(n, None)
    entries = []
    for n in union:
        where = [c for c, s in zip(names, sets) if s is not None and n in s]
        got = [None if r is None else r.get(n) for r in rankings]
        entries.append({"neuron": n, "critical_in": where,
                        "rank": {c: None if g is None else int(g[0]) for c, g in zip(names, got)},
                        "score": {c: None if g is None else float(g[1]) for c, g in zip(names, got)}})
    best = {e["neuron"]: min([r for r in e["rank"].values() if r is not None], default=1 << 62) for e in entries}
    return sorted(entries, key=lambda e: (-len(e["critical_in"]), best[e["neuron"]], e["neuron"]))


def series(names: Sequence[str], sets: Sequence[Optional[Sequence[str]]], first_row: Sequence[Optional[float]],
           rankings: Sequence[Optional[Ranked]], k: int) -> Dict:
    """Along the checkpoints in order: |S|, the log10 ratio of the first checkpoint's set (``first_row``: row 0
    of the transfer matrix) and, per neuron of the union of the sets, the first checkpoint where it enters the
    top-``k`` of the ranking (None: never)."""
    tops = [None if r is None else set(top_k(r, k)) for r in rankings]
    union: Dict[str, None] = {}
    for s in sets:
        for n in s or ():
            union.setdefault(n, None)
    enters = {n: next((c for c, t in zip(names, tops) if t is not None and n in t), None) for n in union}
    return {"order": list(names), "n_critical": [None if s is None else len(s) for s in sets],
            "first_set_log10_ratio": list(first_row), "top_k": k, "enters_top_k": enters}


_STEP = re.compile(r"(\d+)")


def revision_key(spec: str) -> Tuple:
    """Sort key of a checkpoint spec by its revision: ``org/name@step1200`` sorts after ``@step300``; the numbers
    in the revision (else in the whole spec) compare as numbers."""
    rev = spec.rsplit("@", 1)[1] if "@" in spec else spec
    return tuple(int(p) if p.isdigit() else p for p in _STEP.split(rev))
