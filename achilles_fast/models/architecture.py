"""A model's architecture from its config alone (no weights read): parameter names and shapes, built on the meta
device, so checkpoints can be checked for one architecture before any of them loads."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

Shapes = List[Tuple[str, Tuple[int, ...]]]  # (parameter name, shape) in module order


def parameter_shapes(spec, gguf_file: Optional[str] = None, trust_remote_code: bool = False) -> Shapes:
    """(name, shape) of every parameter of the model ``spec`` names (anything ``load_model`` takes), from its
    config: a GGUF file's metadata or a folder's config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .loading import locate
    kind, path, _ = locate(spec, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if kind == "gguf":
        cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def first_difference(a: Shapes, b: Shapes, name_a: str = "a", name_b: str = "b") -> Optional[str]:
    """None when ``a`` and ``b`` are one architecture, else a sentence naming the first differing parameter."""
    sa, sb = dict(a), dict(b)
    for n, shape in a:
        if n not in sb:
            return f"{name_a} has {n} {list(shape)}, which {name_b} lacks"
        if sb[n] != shape:
            return f"{n} is {list(shape)} in {name_a} but {list(sb[n])} in {name_b}"
    for n, shape in b:
        if n not in sa:
            return f"{name_b} has {n} {list(shape)}, which {name_a} lacks"
    return None


def check_same_architecture(shapes: Sequence[Shapes], names: Sequence[str]) -> None:
    """ValueError (one line) naming the first parameter where a checkpoint differs from the first one."""
    for s, n in zip(shapes[1:], names[1:]):
        diff = first_difference(shapes[0], s, names[0], n)
        if diff:
            raise ValueError(f"checkpoints of different architectures: {diff}")
