"""What the baselines score: each target's activations (and its module's input) or d loss / d activation, from one
forward (and one backward) on the text.

Gradients are taken with respect to activations only: parameters have ``requires_grad`` switched off for the pass
and restored afterwards; weights and ``.grad`` are never touched.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...models.targets import Target


@contextlib.contextmanager
def no_param_grads(model: nn.Module):
    """Switch off requires_grad on every parameter; restore the exact flags afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def activations(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor, want_input: bool = False,
                signed: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """ids [1, T]. Per target name: mean |y| over tokens [C] (signed: y itself, [N, C] over the N tokens); with
    want_input, also max |x| over tokens of the module input [C_in]."""
    mean_abs: Dict[str, torch.Tensor] = {}
    in_max: Dict[str, torch.Tensor] = {}
    hooks = []

    def make(t: Target):
        def hook(module, args, out):
            y = t.output(out).detach().float()
            y2 = y.reshape(-1, y.shape[-1])  # [N, C]
            mean_abs[t.name] = (y2 if signed else y2.abs().mean(0)).cpu()
            if want_input:
                x = args[0].detach().float()
                in_max[t.name] = x.abs().reshape(-1, x.shape[-1]).amax(0).cpu()
        return hook

    try:
        for t in targets:
            hooks.append(t.register_forward_hook(make(t)))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return mean_abs, in_max


def gradients(model: nn.Module, targets: Sequence[Target], ids: torch.Tensor) -> Dict[str, Tuple[torch.Tensor,
                                                                                                 torch.Tensor]]:
    """ids [1, T]. Per target name: (activations y [N, C], d mean-NLL / d y [N, C]) over the N tokens of the text."""
    ys: Dict[str, torch.Tensor] = {}
    zs: Dict[str, torch.Tensor] = {}
    hooks = []

    def make(t: Target):
        def hook(module, args, out):
            y = t.output(out)
            z = torch.zeros_like(y, requires_grad=True)  # d loss / d z == d loss / d y
            ys[t.name], zs[t.name] = y.detach(), z
            return t.with_output(out, y + z)
        return hook

    try:
        for t in targets:
            hooks.append(t.register_forward_hook(make(t)))
        with no_param_grads(model), torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            grads = torch.autograd.grad(loss, [zs[t.name] for t in targets], allow_unused=True)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for t, g in zip(targets, grads):
        y = ys[t.name].float()
        g = torch.zeros_like(y) if g is None else g.float()
        out[t.name] = (y.reshape(-1, y.shape[-1]).cpu(), g.reshape(-1, g.shape[-1]).cpu())
    return out
