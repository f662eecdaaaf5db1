"""``achilles-fast mask MODEL --neurons result.json``: re-evaluate PPL with a saved (or listed) neuron set."""
from __future__ import annotations

import math

from . import add_model_args, add_text_args, check_output, load, print_report, read_text


def register(sub) -> None:
    p = sub.add_parser("mask", help="re-evaluate perplexity with a neuron set masked")
    add_model_args(p)
    add_text_args(p, "evaluation text")
    p.add_argument("--neurons", required=True,
                   help="result.json from `find`, or a comma-separated list like model.layers.2.mlp.down_proj:62")
    p.add_argument("--out", default=None, help="write the evaluation as JSON here")
    p.add_argument("--save-pretrained", default=None, metavar="DIR",
                   help="also save the masked model as a Hugging Face checkpoint (channels zeroed in the weights)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save-pretrained folder")
    p.add_argument("--discover", action="store_true",
                   help="model type not in the registry: accept modules named like an MLP down projection")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.api import evaluate_mask
    from ..method.result import read_neurons
    check_output(args.out, "--out")
    names, params = read_neurons(args.neurons)
    if not names:
        raise ValueError(f"{args.neurons} holds no neurons (did `find` converge?)")
    text = read_text(args)
    if args.save_pretrained:
        from ..method.export import check_out_dir
        check_out_dir(args.save_pretrained, args.overwrite)  # before loading anything (inputs: cli.check_outputs)
    model, tok, name = load(args)
    r = evaluate_mask(model, tok, names, text=text, max_tokens=args.max_tokens, discover=args.discover)
    lost = None
    if args.save_pretrained:
        from ..method.export import save_masked
        try:
            r["saved"] = str(save_masked(model, tok, names, args.save_pretrained, overwrite=args.overwrite,
                                         discover=args.discover))
        except OSError as e:  # disk full, folder made read-only meanwhile: the evaluation is still reported
            lost, r["saved"] = f"could not write --save-pretrained {args.save_pretrained} ({e.strerror or e})", None
    r["model"] = name
    dup = len(names) - r["n_neurons"]
    l10 = 1 / math.log(10)
    ok = print_report([("model", name),
                       ("neurons masked", f"{r['n_neurons']}" + (f" ({dup} duplicate name(s) ignored)" if dup else "")),
                       ("tokens", r["n_tokens"]), ("clean log10 PPL", f"{r['clean_nll'] * l10:.4f}"),
                       ("masked log10 PPL", f"{r['masked_nll'] * l10:.4f}"), ("log10 PPL ratio", f"{r['log10_ratio']:.4f}")]
                      + ([("saved checkpoint", r["saved"])] if r.get("saved") else []), r, args.out)
    if lost:
        where = f"the evaluation is in --out {args.out}" if args.out and ok else "the evaluation is printed above"
        raise OSError(f"{lost}; nothing was left there; {where}")
    return 0 if ok else 2
