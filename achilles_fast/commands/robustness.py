"""``achilles-fast robustness MODEL --texts DIR``: critical sets on several texts and how much they overlap."""
from __future__ import annotations

import sys

from . import add_model_args, check_output, load, print_paths, save_output, write_json


def register(sub) -> None:
    from ..method.config import FindConfig
    p = sub.add_parser("robustness", help="overlap of critical sets found on several texts (Jaccard)")
    add_model_args(p)
    p.add_argument("--texts", required=True, metavar="DIR", help="folder of UTF-8 text files (one run each)")
    p.add_argument("--pattern", default="*.txt", help="file pattern inside --texts")
    FindConfig.add_arguments(p)
    p.add_argument("--out", default=None, help="write the overlap report (and every result) as JSON")
    p.add_argument("--plot", default=None, metavar="DIR", help="write the Jaccard matrix plot (PNG and SVG)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.robustness import format_overlap, read_texts, robustness
    cfg = FindConfig.from_args(args)
    check_output(args.out, "--out")
    check_output(args.plot, "--plot", folder=True)
    texts = read_texts(args.texts, args.pattern)
    model, tok, name = load(args)
    rep = robustness(model, tok, texts, config=cfg)
    rep["model"] = name
    print(f"model {name}: {len(texts)} text(s)")
    for n, ok, size in zip(rep["names"], rep["converged"], rep["sizes"]):
        print(f"  {n}: {size} neuron(s){'' if ok else ' (NOT converged)'}")
    print("\n".join(format_overlap(rep)))
    ok = True
    if args.out:
        ok &= save_output(args.out, "--out", lambda p: write_json(rep, p))
    if args.plot:
        from ..studies.plots import jaccard_figure, save
        ok &= save_output(args.plot, "--plot", lambda d: print_paths(
            save(jaccard_figure(rep["names"], rep["jaccard"]), d, "robustness_jaccard"), sys.stdout), folder=True)
    return 0 if ok else 2
