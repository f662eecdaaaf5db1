"""``achilles-fast protect-list MODEL --neurons R --out F.safetensors``: the weights a quantiser or pruner must keep
(one bool tensor per weight tensor, True on the weights producing each neuron) and F.json naming them."""
from __future__ import annotations

from . import add_model_args, check_output, load, print_report


def register(sub) -> None:
    p = sub.add_parser("protect-list", help="bool masks of the weights producing a neuron set (for quantisers and "
                       "pruners): F.safetensors + F.json")
    add_model_args(p)
    p.add_argument("--neurons", required=True,
                   help="result.json from `find`, or a comma-separated list like model.layers.2.mlp.down_proj:62")
    p.add_argument("--out", required=True, metavar="F.safetensors",
                   help="where to write the masks (the naming is written beside it as F.json)")
    p.add_argument("--discover", action="store_true",
                   help="model type not in the registry: accept modules named like an MLP down projection")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.result import read_neurons
    from ..studies.compression.protect import json_path, protect_list
    check_output(args.out, "--out")
    check_output(str(json_path(args.out)), "--out (its .json naming file)")
    names, _ = read_neurons(args.neurons)
    if not names:
        raise ValueError(f"--neurons {args.neurons} holds no neurons (did `find` converge?)")
    model, _, name = load(args)
    pl = protect_list(model, names, discover=args.discover)
    path, jpath = pl.save(args.out)
    print_report([("model", name), ("neurons", len(pl.entries)), ("weight tensors", len(pl.masks)),
                  ("protected values", pl.count()), ("masks", str(path)), ("naming", str(jpath))], None, None)
    return 0
