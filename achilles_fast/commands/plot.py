"""``achilles-fast plot result.json [...] --out DIR``: curve and layer map of saved results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import check_output, print_paths, read_text_file, save_output


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot saved results (phase-transition curve, layer x component map)")
    p.add_argument("results", nargs="+", help="result JSON files from `find --out` or `baselines --out`")
    p.add_argument("--out", default="plots", metavar="DIR", help="output folder (PNG and SVG)")
    p.set_defaults(func=run)


def _load(path: str):
    """A result file -> {label: result dict} (one result, or a {method: result} mapping from `baselines`)."""
    try:
        d = json.loads(read_text_file(path, "result"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if isinstance(d, dict) and "curve" in d:
        return {Path(path).stem: d}
    if isinstance(d, dict) and d and all(isinstance(v, dict) and "curve" in v for v in d.values()):
        return d
    raise ValueError(f"{path}: not a result JSON (no 'curve')")


def run(args) -> int:
    from ..studies.plots import curves_figure, plot_result, save
    check_output(args.out, "--out", folder=True)
    loaded = [(path, _load(path)) for path in args.results]  # every input checked before anything is drawn

    def draw(out_dir: str) -> None:
        for path, results in loaded:
            for label, res in results.items():
                stem = Path(path).stem if len(results) == 1 else f"{Path(path).stem}_{label}"
                print_paths(plot_result(res, out_dir, stem), sys.stdout)
            if len(results) > 1:
                print_paths(save(curves_figure(results), out_dir, f"{Path(path).stem}_curves"), sys.stdout)

    return 0 if save_output(args.out, "--out", draw, folder=True) else 2
