"""NaN/Inf model outputs: detected on the clean forward, reported in one line naming the first module at fault."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..models.devices import embedding_device


class NonFiniteError(ValueError):
    """The model's loss is not finite (NaN/Inf): a non-finite weight, or an overflow in a low-precision dtype."""


def _has_nonfinite(out) -> bool:
    """Any floating tensor in a module output (tensor, tuple/list, dict or ModelOutput) holding NaN/Inf."""
    if isinstance(out, torch.Tensor):
        return out.is_floating_point() and out.device.type != "meta" and not bool(torch.isfinite(out).all())
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return any(_has_nonfinite(o) for o in out)
    return False


def first_nonfinite_module(model: nn.Module, ids: torch.Tensor) -> Optional[str]:
    """Name of the first module (in execution order) whose output holds NaN/Inf on ``ids`` [T] or [W, T], with
    its type and how many of its own parameters are not finite; None when every module output is finite."""
    found: list = []

    def hook_for(name: str):
        def hook(module, args, out):
            if not found and _has_nonfinite(out):
                found.append((name, module))
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if n]
    ids2 = ids if ids.dim() == 2 else ids.unsqueeze(0)
    try:
        with torch.no_grad():
            model(input_ids=ids2[:1].to(embedding_device(model)), use_cache=False)
    except Exception:  # the forward itself failing is not what we are diagnosing
        pass
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None
    name, module = found[0]
    bad = sum(int((~torch.isfinite(p)).sum()) for p in module.parameters(recurse=False)
              if p.is_floating_point() and p.device.type != "meta")
    held = f"; its weights hold {bad} NaN/Inf value(s)" if bad else ""
    return f"{name} ({type(module).__name__}{held})"


def nonfinite_error(model: nn.Module, ids: torch.Tensor, value: float, what: str = "the text") -> NonFiniteError:
    """The error for a non-finite clean loss on ``ids``: one line naming the first module whose output is not
    finite (one extra forward with hooks on every module)."""
    where = first_nonfinite_module(model, ids)
    at = f"first non-finite output at {where}" if where else "every module output is finite; the loss is not"
    return NonFiniteError(f"the model's loss on {what} is {value} (not finite): {at}. Check the weights, or load "
                          "the model in float32")
