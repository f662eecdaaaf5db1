"""``achilles-fast study MODEL --out DIR``: the paper's claims and open questions on one model, one report."""
from __future__ import annotations

import sys

from . import add_model_args, add_text_args, load, read_eval_text, read_text


def register(sub) -> None:
    from ..method.config import FindConfig
    from ..studies.study.params import SECTIONS
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
    g.add_argument("--alphas", default=None, help="noise scales, e.g. 0.5,1,2,5,10")
    g.add_argument("--ks", default=None, help="noisy sample counts, e.g. 5,10,20,50,100 (one shared Stage 1 pass)")
    g.add_argument("--lengths", default=None, help="input lengths in tokens, e.g. 8,16,32,64,128,256")
    g.add_argument("--dtypes", default=None, help="precisions, e.g. float32,bfloat16")
    g.add_argument("--prompt", action="append", default=None, help="generation prompt (repeat; default: two "
                   "built-in prompts)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="tokens per generated continuation")
    g.add_argument("--bits", default=None, help="quantization: RTN bit widths in 2..8, e.g. 8,4,3")
    g.add_argument("--group-size", type=int, default=None,
                   help="quantization: inputs sharing one scale (default: one scale per output channel)")
    g.add_argument("--sparsities", default=None, help="pruning: sparsities in (0, 1), e.g. 0.5,0.7")
    FindConfig.add_arguments(p, exclude=["ranker"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.config import FindConfig
    from ..studies.study import StudyParams, study, verdict_lines
    from ..studies.study.params import parse_grid, parse_sections
    from ..studies.study.run import check_out, resolve_texts
    cfg = FindConfig.from_args(args)  # every check before the model loads
    sp = StudyParams.make(args.quick, alphas=parse_grid(args.alphas, float, "--alphas"),
                          ks=parse_grid(args.ks, int, "--ks"), lengths=parse_grid(args.lengths, int, "--lengths"),
                          dtypes=parse_grid(args.dtypes, str, "--dtypes"), prompts=args.prompt,
                          max_new_tokens=args.max_new_tokens, bits=parse_grid(args.bits, int, "--bits"),
                          group_size=args.group_size, sparsities=parse_grid(args.sparsities, float, "--sparsities"))
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
