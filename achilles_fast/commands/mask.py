"""``achilles-fast mask MODEL --neurons result.json``: re-evaluate PPL with a saved (or listed) neuron set."""
from __future__ import annotations

import json
import math
from pathlib import Path

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


def read_neurons(spec: str):
    """``--neurons``: a result JSON (``find --out``, or a plain JSON list of names) or comma-separated names ->
    (names, the result's params)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        raise ValueError(f"--neurons {spec} is a folder; give a result JSON file or neuron names")
    if p.is_file():
        return _neurons_from_json(p)
    if spec.strip().lower().endswith(".json") or "/" in spec or "\\" in spec:  # a path, not neuron names
        raise FileNotFoundError(f"--neurons {spec}: no such file")
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("--neurons is empty")
    return names, {}


def _neurons_from_json(path: Path):
    """A result JSON ({"neurons": [{"name": ...} | "name", ...], "params": ...}) or a JSON list of names."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--neurons {path}: not a JSON file ({e})") from None
    params = {}
    if isinstance(d, dict):
        if "neurons" not in d:
            raise ValueError(f"--neurons {path}: no 'neurons' key (keys: {', '.join(map(str, d)) or 'none'}); "
                             "expected a result JSON from `find --out`")
        params = d.get("params") if isinstance(d.get("params"), dict) else {}
        d = d["neurons"]
    if not isinstance(d, list):
        raise ValueError(f"--neurons {path}: the neurons must be a JSON list of names, got {type(d).__name__} {d!r:.60}")
    names = []
    for item in d:
        name = item.get("name") if isinstance(item, dict) else item
        if not isinstance(name, str):
            raise ValueError(f"--neurons {path}: each neuron must be a name like 'model.layers.0.mlp.down_proj:5' "
                             f"or an object with a 'name', got {item!r:.60}")
        names.append(name)
    return names, params


def run(args) -> int:
    from ..method.api import evaluate_mask
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
