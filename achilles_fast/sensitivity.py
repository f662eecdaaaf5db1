"""Stage 1: sensitivity scores, streamed over K noisy samples.

score[m][t, c] = mean_k | f_m(x)[t, c] - f_m(x + alpha * eps_k)[t, c] |

One clean forward stores each target's clean output [T, C]. The K noisy samples then run in chunks of ``kb``
sequences (``inputs_embeds`` = clean embeddings + Philox noise made on the device); a forward hook on each
target reduces the chunk's |noisy - clean| into a float32 accumulator as soon as the output exists, so noisy
activations are never stored and peak memory does not grow with K. The forward is cut short after the last
target fires (the LM head and anything after the last scanned module are never computed).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
from torch import nn

from . import ops
from .targets import Target


class _StopForward(Exception):
    """Raised by the last target's hook: nothing after it is needed."""


def auto_batch_tokens(device: torch.device) -> int:
    """Tokens per noisy chunk when the user gives no budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # ~64 KiB of transient activations per token per billion params is generous; cap at 64k tokens.
        return int(max(512, min(65536, free // (256 * 1024))))
    # CPU: 16k tokens per chunk keeps SmolLM2-135M's transient activations under ~0.5 GB
    return 16384


def input_embeddings(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """ids [T] -> embeddings [T, H] from the model's own input embedding layer."""
    emb = model.get_input_embeddings()
    w = getattr(emb, "weight", None)
    dev = w.device if w is not None and w.device.type != "meta" else ids.device
    return emb(ids.to(dev).unsqueeze(0))[0]


class _Capture:
    """Hooks that record the clean output of each target, or reduce noisy outputs into accumulators."""

    def __init__(self, targets: Sequence[Target], stop_early: bool):
        self.targets = list(targets)
        self.stop_early = stop_early
        self.mode = "clean"
        self.clean: List[Optional[torch.Tensor]] = [None] * len(self.targets)
        self.acc: List[Optional[torch.Tensor]] = [None] * len(self.targets)
        self.fired = 0
        self.batch = 1
        self.handles = []

    def __enter__(self):
        for i, t in enumerate(self.targets):
            self.handles.append(t.register_forward_hook(self._hook(i, t)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def _hook(self, i: int, t: Target):
        def hook(module, args, out):
            y = t.output(out)  # [B, T, C], or [B*T, C] for modules fed flattened tokens (MoE experts, OPT fc2)
            if y.dim() == 2:
                y = y.reshape(self.batch, -1, y.shape[-1])
            if self.mode == "clean":
                self.clean[i] = y[0].detach().clone()  # [T, C]
            else:
                ops.absdiff_accum_(self.acc[i], self.clean[i], y.reshape(-1, *self.clean[i].shape))
            self.fired += 1
            if self.stop_early and self.fired == len(self.targets):
                raise _StopForward
            return None

        return hook

    def run(self, model: nn.Module, embeds: torch.Tensor) -> None:
        """One forward of embeds [B, T, H]; stops after the last target."""
        self.fired = 0
        self.batch = embeds.shape[0]
        try:
            model(inputs_embeds=embeds, use_cache=False)
        except _StopForward:
            pass


def sensitivity_scores(
    model: nn.Module,
    targets: Sequence[Target],
    ids: torch.Tensor,
    k: int = 100,
    alpha: float = 5.0,
    seed: int = 0,
    per_position: bool = True,
    max_batch_tokens: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    stats: Optional[dict] = None,
) -> List[torch.Tensor]:
    """Mean |clean - noisy| per target: list of float32 [T, C] (per_position) or [C] (summed over positions).

    ids [T] (long); ``progress(n)`` is called with the number of samples finished after each chunk.
    """
    if k < 1:
        raise ValueError(f"k (number of noisy samples) must be >= 1, got {k}")
    if not alpha > 0:
        raise ValueError(f"alpha (noise scale) must be > 0, got {alpha}")
    T = int(ids.numel())
    embeds = input_embeddings(model, ids)  # [T, H]
    budget = max_batch_tokens or auto_batch_tokens(embeds.device)
    kb = max(1, min(k, budget // T))
    forwards = 0
    with torch.no_grad(), _Capture(targets, stop_early=True) as cap:
        cap.run(model, embeds.unsqueeze(0))
        forwards += 1
        for i, t in enumerate(targets):
            if cap.clean[i] is None:
                raise RuntimeError(f"target {t.name} did not run during the forward pass")
            shape = cap.clean[i].shape if per_position else cap.clean[i].shape[-1:]
            cap.acc[i] = torch.zeros(shape, dtype=torch.float32, device=cap.clean[i].device)
        cap.mode = "noisy"
        for k0 in range(0, k, kb):
            n = min(kb, k - k0)
            x = ops.noisy_embeds(embeds, float(alpha), int(seed), k0, n)  # [n, T, H]
            cap.run(model, x)
            forwards += 1
            if progress is not None:
                progress(n)
        scores = [a.div_(k) for a in cap.acc]
    if stats is not None:
        stats.update(stage1_forwards=forwards, stage1_chunk=kb, stage1_chunks=math.ceil(k / kb))
    return scores
