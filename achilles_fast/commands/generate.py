"""``achilles-fast generate MODEL --neurons result.json --prompt "..."``: clean vs masked greedy continuations."""
from __future__ import annotations

from . import add_model_args, check_output, load, save_output, write_json


def register(sub) -> None:
    p = sub.add_parser("generate", help="clean and masked greedy continuations of a prompt, side by side")
    add_model_args(p)
    p.add_argument("--neurons", required=True,
                   help="result.json from `find`, or a comma-separated list like model.layers.2.mlp.down_proj:62")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue (repeat for several prompts; default: two built-in prompts)")
    p.add_argument("--max-new-tokens", type=int, default=40, help="tokens generated per continuation (default: 40)")
    p.add_argument("--out", default="generation.json", help="write the continuations as JSON here "
                   "(default: generation.json)")
    p.add_argument("--discover", action="store_true",
                   help="model type not in the registry: accept modules named like an MLP down projection")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..method.result import read_neurons
    from ..studies.generate import DEFAULT_PROMPTS, check_max_new_tokens, check_prompts, generations, side_by_side
    prompts = check_prompts(args.prompt if args.prompt is not None else DEFAULT_PROMPTS)  # before loading
    check_max_new_tokens(args.max_new_tokens)
    check_output(args.out, "--out")
    names, _ = read_neurons(args.neurons)
    if not names:
        raise ValueError(f"{args.neurons} holds no neurons (did `find` converge?)")
    model, tok, name = load(args)
    pairs = generations(model, tok, names, prompts, args.max_new_tokens, discover=args.discover)
    print(f"model {name}")
    print(side_by_side(pairs))
    doc = {"model": name, "neurons": names, "generations": pairs}
    return 0 if save_output(args.out, "--out", lambda p: write_json(doc, p)) else 2
