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


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _available(kind: str) -> bool:
    """Whether torch can use devices of type ``kind`` here (cuda, mps, xpu, ...)."""
    for mod in (getattr(torch, kind, None), getattr(torch.backends, kind, None)):
        fn = getattr(mod, "is_available", None)
        if callable(fn):
            return bool(fn())
    return False


def check_device(device, what: str = "device") -> torch.device:
    """A user-given device (``cpu``, ``cuda``, ``cuda:1``, an int = accelerator index) -> ``torch.device``;
    ``ValueError`` (one line) when it is not a device name or not present on this machine."""
    try:
        d = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what} {device!r} is not a device: expected cpu, cuda, cuda:N (or mps, xpu)") from None
    if d.type in ("cpu", "meta"):
        return d
    if not _available(d.type):
        why = (f"this torch ({torch.__version__}) is built without CUDA" if d.type == "cuda" and not torch.version.cuda
               else f"no {d.type} device is visible")
        raise ValueError(f"{what} {device!r} is not available here: {why} (use cpu)")
    count = getattr(getattr(torch, d.type, None), "device_count", None)
    if d.index is not None and callable(count) and d.index >= count():
        raise ValueError(f"{what} {device!r} does not exist: this machine has {count()} {d.type} device(s)")
    return d


def parse_device_map(spec):
    """A device_map as given (a strategy name, a {module: device} dict, or that dict as a JSON string such as the
    CLI's ``--device-map``) -> what from_pretrained takes: JSON decoded, device numbers given as text made ints."""
    if not isinstance(spec, str) or not spec.strip().startswith("{"):
        return spec
    import json
    try:
        dm = json.loads(spec)
    except json.JSONDecodeError as e:
        raise ValueError(f"--device-map: not a JSON object ({e})") from None
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in dm.items()}


def check_placement(device=None, device_map=None, offload_folder=None) -> None:
    """Validate ``device`` / ``device_map`` (a strategy name, a device, or {module: device}) before any weight is
    read; ``ValueError`` (one line) naming the first device that is unknown or absent."""
    if device_map is None:
        if device is not None:
            check_device(device)
        return
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            check_device(device_map, "device_map")
        return
    if not isinstance(device_map, dict):
        raise ValueError(f"device_map must be a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) or a "
                         f"{{module: device}} mapping, got {device_map!r}")
    for module, dev in device_map.items():
        if dev == "disk":
            if offload_folder is None:
                raise ValueError(f"device_map puts {module!r} on 'disk': give an offload folder (--offload-folder)")
            continue
        check_device(dev, f"device_map entry {module!r}: device")
