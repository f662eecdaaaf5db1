"""Device placement helpers for models dispatched by accelerate (``device_map``, cpu/disk offload)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def offloaded(module: nn.Module, tensor: Optional[torch.Tensor] = None) -> bool:
    """True when ``module``'s weights are not resident: ``tensor`` (default: ``module.weight``) is on the meta
    device, or an accelerate hook reloads the weights at every forward (cpu/disk offload). In-place edits and
    reads of such weights outside the module's own forward are invalid (lost, or a temporary copy)."""
    t = tensor if tensor is not None else getattr(module, "weight", None)
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        return True
    hook = getattr(module, "_hf_hook", None)
    return any(getattr(h, "offload", False) for h in getattr(hook, "hooks", [hook]) if h is not None)


def embedding_device(model: nn.Module) -> torch.device:
    """Device of the model's input embeddings (cpu when they are offloaded to meta): where inputs go."""
    w = model.get_input_embeddings().weight
    return w.device if w.device.type != "meta" else torch.device("cpu")
