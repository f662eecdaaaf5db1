"""Input-activation norms of the decoder-block Linear weights on a text: ||X_j||_2 over the text's tokens for every
input feature j (Wanda's activation statistic; the bit-flip search's coordinate order)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from ...utils import eval_mode
from .weights import BlockWeight


def input_norms(model: nn.Module, ids: torch.Tensor, weights: Sequence[BlockWeight]) -> Dict[str, torch.Tensor]:
    """ids [T] -> {weight name: [in] float32 L2 norm of each input feature over the T tokens} (one forward)."""
    sums: Dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # [tokens, in]
            s = x.square().sum(0, dtype=torch.float64)  # [in]
            sums[name] = s if name not in sums else sums[name] + s
        return hook

    handles = [bw.module.register_forward_pre_hook(hook_for(bw.name)) for bw in weights]
    try:
        with eval_mode(model), torch.no_grad():
            dev = next(p.device for p in model.parameters() if p.device.type != "meta")
            model(input_ids=ids.reshape(1, -1).to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [bw.name for bw in weights if bw.name not in sums]
    if missing:
        raise RuntimeError(f"the forward never reached {missing[0]} (and {len(missing) - 1} more)")
    return {k: v.sqrt().float().cpu() for k, v in sums.items()}
