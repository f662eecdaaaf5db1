"""``achilles-fast study MODEL --out DIR``: the paper's claims and open questions on one model, one report."""
from __future__ import annotations

import sys

from . import add_model_args, add_text_args, load, read_eval_text, read_text


def register(sub) -> None:
    from ..method.config import FindConfig
    from ..studies.study.params import PARAMS, SECTIONS
    p = sub.add_parser("study", help="check the paper's claims on a model: report.md, report.html, study.json and "
                       "figures in --out")
    add_model_args(p)
    add_text_args(p, "scoring text", max_tokens=False)
    p.add_argument("--eval-text-file", default=None, help="evaluation text for Stage 2 (default: the scoring text)")
    p.add_argument("--texts", default=None, metavar="DIR",
                   help="folder of .txt files for the stability-across-texts step (default: built-in genres)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the report, study.json and figures; "
                   "re-running with the same folder reuses finished sections")
    p.add_argument("--quick", action="store_true", help="smaller grids (SmolLM2-135M in about 5 minutes on 2 CPU "
                   "cores)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    g = p.add_argument_group("study grids (default: the paper's; --quick: smaller)")
    for q in PARAMS.values():  # declared on the sections
        if q.flag is not None:
            q.add_argument(g)
    FindConfig.add_arguments(p, exclude=["ranker"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.study import StudyParams, study, verdict_lines
    from ..studies.study.params import PARAMS, parse_sections
    from ..studies.study.run import check_out, resolve_texts
    cfg = FindConfig.from_args(args)  # every check before the model loads
    sp = StudyParams.make(args.quick, **{q.name: q.from_args(args) for q in PARAMS.values() if q.flag is not None})
    parse_sections(args.sections)
    resolve_texts(args.texts, sp)
    check_out(args.out)
    text = read_text(args)
    eval_text = read_eval_text(args)
    model, tok, name = load(args)
    doc = study(model, tok, text, eval_text=eval_text, texts=args.texts, sections=args.sections, out=args.out,
                config=cfg, study_params=sp, progress=not args.quiet)
    print(f"study of {name}: {len(doc['sections'])} section(s), {doc['seconds']:.0f} s")
    for line in verdict_lines(doc):
        print(line)
    print(f"report {args.out}/report.html, {args.out}/report.md; numbers {args.out}/study.json", file=sys.stderr)
    return 0
