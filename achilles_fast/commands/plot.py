"""``achilles-fast plot result.json [...] --out DIR``: curve and layer map of saved results."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot saved results (phase-transition curve, layer x component map)")
    p.add_argument("results", nargs="+", help="result JSON files from `find --out` or `baselines --out`")
    p.add_argument("--out", default="plots", metavar="DIR", help="output folder (PNG and SVG)")
    p.set_defaults(func=run)


def _load(path: str):
    """A result file -> {label: result dict} (one result, or a {method: result} mapping from `baselines`)."""
    with open(path) as f:
        d = json.load(f)
    if isinstance(d, dict) and "curve" in d:
        return {Path(path).stem: d}
    if isinstance(d, dict) and d and all(isinstance(v, dict) and "curve" in v for v in d.values()):
        return d
    raise ValueError(f"{path}: not a result JSON (no 'curve')")


def run(args) -> int:
    from ..studies.plots import curves_figure, plot_result, save
    for path in args.results:
        results = _load(path)
        for label, res in results.items():
            stem = Path(path).stem if len(results) == 1 else f"{Path(path).stem}_{label}"
            for p in plot_result(res, args.out, stem):
                print(f"plot {p}")
        if len(results) > 1:
            for p in save(curves_figure(results), args.out, f"{Path(path).stem}_curves"):
                print(f"plot {p}")
    return 0
