"""Transfer: one checkpoint's critical set masked in another checkpoint, against random sets of the same size.

``transfer_column`` takes one loaded model (column j) and every row's set; the caller loads each checkpoint once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ...method.masking import masked
from ...method.perplexity import NLLEvaluator, log10_ratio
from ...method.text import model_context, tokenize
from ...models.registry import discover_targets, maskable_targets
from ...utils import eval_mode


def random_down_proj(model, n: int, seed: int) -> List[str]:
    """``n`` distinct down_proj channels of ``model`` drawn uniformly (deterministic per seed) -> neuron names."""
    targets = discover_targets(model, "down_proj")
    sizes = torch.tensor([t.num_channels for t in targets])
    offsets = torch.cumsum(sizes, 0) - sizes  # [M] first flat id of each target
    g = torch.Generator().manual_seed(int(seed))
    flat = torch.randperm(int(sizes.sum()), generator=g)[:n]  # [n]
    which = torch.searchsorted(offsets, flat, right=True) - 1
    return [f"{targets[int(m)].name}:{int(f - offsets[m])}" for m, f in zip(which, flat)]


@torch.no_grad()
def transfer_column(model, tokenizer, sets: Sequence[Optional[Sequence[str]]], text: Optional[str],
                    max_tokens: int, random_seeds: int, max_batch_tokens: Optional[int], column: int = 0
                    ) -> Tuple[float, List[Optional[float]], List[Optional[float]]]:
    """(clean NLL, log10 ratio of each row's set masked in this model, mean log10 ratio of ``random_seeds``
    random down_proj sets of each row's size). A row that is None (its checkpoint failed) stays None; an empty set
    is 0. Weights are restored bit-exact after every set."""
    ids = tokenize(tokenizer, text, max_tokens, "text", model_context(model), warn_short=False)  # [T]
    targets = maskable_targets(model)
    with eval_mode(model):
        ev = NLLEvaluator(model, ids, max_batch_tokens=max_batch_tokens)
        clean = ev.nll()

        def ratio(names: Sequence[str]) -> float:
            if not names:
                return 0.0
            with masked(model, names, targets=targets) as got:
                return log10_ratio(ev.nll(masked=f"{len(got)} neuron(s)"), clean)

        cells, randoms = [], []
        for i, s in enumerate(sets):
            if s is None:
                cells.append(None)
                randoms.append(None)
                continue
            cells.append(ratio(s))
            draws = [ratio(random_down_proj(model, len(s), seed=1_000_003 * r + 1009 * i + column))
                     for r in range(random_seeds)]
            randoms.append(sum(draws) / len(draws))
    return clean, cells, randoms
