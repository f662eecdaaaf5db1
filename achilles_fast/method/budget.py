"""Tokens per forward pass: the one default of each stage (``max_batch_tokens=None`` means these); and the memory a
run may hold beyond the model when the user gives no budget (``auto_score_bytes``: Stage 1's scores, Stage 2's layer
cache, weight copies and packed head).

Stage 1 (noisy chunks) sizes its chunks to the device (``auto_batch_tokens``); Stage 2 and every evaluation of a
mask (``NLLEvaluator``) use ``EVAL_BATCH_TOKENS``. A user's ``max_batch_tokens`` sets both.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..utils import available_ram

# Stage 1 at K=100 on 2 cores, alone, by tokens per noisy chunk: SmolLM2-135M paper scope 14.6 s at 16384, 11.6 s at
# 2048, 9.9 s at 1536, 10.1 s at 1024, 11.6 s at 512; Gemma-3-270M down_proj 13.1 s at 16384, 8.7 s at 1536-2048,
# 9.1 s at 1024, 9.2 s at 4096; stories260K 0.34-0.40 s at any. Small chunks keep activations near the caches.
CPU_STAGE1_BATCH_TOKENS = 1536
EVAL_BATCH_TOKENS = 8192  # Stage 2 / evaluation forwards (masks x windows per forward)
HELP = (f"tokens per forward, both stages (default: auto: Stage 1 {CPU_STAGE1_BATCH_TOKENS} on CPU, from free "
        f"memory on CUDA; Stage 2 and evaluations {EVAL_BATCH_TOKENS})")


def auto_batch_tokens(device: torch.device) -> int:
    """Tokens per noisy chunk when the user gives no budget."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # ~64 KiB of transient activations per token per billion params is generous; cap at 64k tokens.
        return int(max(512, min(65536, free // (256 * 1024))))
    return CPU_STAGE1_BATCH_TOKENS


def stage1_batch_tokens(max_batch_tokens: Optional[int], device: torch.device) -> int:
    """Stage 1's tokens per noisy chunk: the user's budget, else ``auto_batch_tokens``."""
    return max_batch_tokens or auto_batch_tokens(device)


def eval_batch_tokens(max_batch_tokens: Optional[int]) -> int:
    """Tokens per Stage 2 / evaluation forward: the user's budget, else ``EVAL_BATCH_TOKENS``."""
    return max_batch_tokens or EVAL_BATCH_TOKENS


def auto_score_bytes(device: torch.device) -> int:
    """Bytes a run may hold beyond the model when the user gives no budget: a quarter of what is free (Stage 1's clean
    copies + score accumulators; Stage 2's layer cache, weight copies and packed LM head)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    return int(available_ram() // 4)
