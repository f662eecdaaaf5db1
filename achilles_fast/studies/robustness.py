"""Robustness of critical sets across texts: pairwise Jaccard overlap, intersection and union."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from ..method.api import find_critical
from ..method.result import CriticalResult


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; two empty sets count as identical (1.0)."""
    u = a | b
    return 1.0 if not u else len(a & b) / len(u)


def overlap(sets: Mapping[str, Sequence[str]]) -> Dict[str, Any]:
    """{label: neuron names} -> names, Jaccard matrix, intersection, union and per-neuron frequency."""
    names = list(sets)
    ss = [set(sets[n]) for n in names]
    matrix = [[jaccard(a, b) for b in ss] for a in ss]
    inter = set.intersection(*ss) if ss else set()
    union = set().union(*ss) if ss else set()
    freq = {n: sum(n in s for s in ss) for n in union}
    order = sorted(union, key=lambda n: (-freq[n], n))
    return {"names": names, "sizes": [len(s) for s in ss], "jaccard": matrix,
            "intersection": sorted(inter, key=lambda n: (-freq[n], n)), "union": order,
            "frequency": {n: freq[n] for n in order}}


def critical_overlap(results: Mapping[str, CriticalResult]) -> Dict[str, Any]:
    """Overlap of the critical sets of several results (non-converged results contribute empty sets)."""
    return overlap({k: r.names for k, r in results.items()})


def read_texts(folder: str, pattern: str = "*.txt") -> Dict[str, str]:
    """All text files in a folder, sorted by name -> {file stem: text}."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of texts")
    files = sorted(d.glob(pattern))
    if len(files) < 2:
        raise ValueError(f"{folder}: need at least 2 files matching {pattern!r} to compare, found {len(files)}")
    return {f.stem: f.read_text(encoding="utf-8") for f in files}


def robustness(model, tokenizer, texts: Mapping[str, str], **find_kwargs) -> Dict[str, Any]:
    """find_critical on each text with the same parameters -> overlap report plus the results."""
    find_kwargs.setdefault("progress", False)
    results = {name: find_critical(model, tokenizer, t, **find_kwargs) for name, t in texts.items()}
    rep = critical_overlap(results)
    rep["converged"] = [results[n].converged for n in rep["names"]]
    rep["results"] = {k: r.to_dict() for k, r in results.items()}
    return rep


def format_overlap(rep: Mapping[str, Any]) -> List[str]:
    names = rep["names"]
    w = max(8, *(len(n) for n in names))
    lines = ["Jaccard overlap of critical sets", " " * (w + 2) + " ".join(f"{n[:8]:>8}" for n in names)]
    for n, row in zip(names, rep["jaccard"]):
        lines.append(f"{n:<{w}}  " + " ".join(f"{v:>8.2f}" for v in row))
    lines.append("sizes: " + ", ".join(f"{n}={s}" for n, s in zip(names, rep["sizes"])))
    lines.append(f"in every critical set ({len(rep['intersection'])}): " + (", ".join(rep["intersection"]) or "-"))
    lines.append(f"union: {len(rep['union'])} neuron(s)")
    return lines
