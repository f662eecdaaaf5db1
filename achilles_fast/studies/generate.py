"""Clean vs masked greedy continuations: the collapse made visible.

``generate_pair`` continues a prompt greedily with the clean model and with a neuron set masked in place (weights
restored bit-exact afterwards, also on errors), and scores both continuations under the clean model (mean token
NLL of the generated tokens given the prompt): a fluent continuation scores low, the garbage of a collapsed model
high. ``side_by_side`` formats the pairs as two text columns.
"""
from __future__ import annotations

import math
import textwrap
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..method.masking import masked
from ..method.text import model_context
from ..models.devices import embedding_device
from ..utils import eval_mode, positive_int

DEFAULT_PROMPTS = ("The capital of France is", "Once upon a time, there was a little")
DEFAULT_MAX_NEW_TOKENS = 40


class EmptyPromptError(ValueError):
    """A prompt with no text (or no tokens)."""


class ContextTooShortError(ValueError):
    """The prompt plus the tokens asked for do not fit in the model's context."""


def check_prompts(prompts: Sequence[str]) -> List[str]:
    """Prompts as a list; raises EmptyPromptError on an empty one (before any model work)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    out = list(prompts)
    if not out:
        raise EmptyPromptError("no prompt given")
    for p in out:
        if not isinstance(p, str) or not p.strip():
            raise EmptyPromptError("the prompt is empty: give some text to continue")
    return out


def check_max_new_tokens(n) -> int:
    return positive_int(n, "max_new_tokens")


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """prompt -> ids [1, P] (tokenizer defaults for special tokens)."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.numel() == 0:
        raise EmptyPromptError(f"the prompt {prompt!r} has no tokens")
    return ids


def check_fits(model: nn.Module, ids: torch.Tensor, max_new_tokens: int) -> None:
    """Raise ContextTooShortError when prompt ids [1, P] + ``max_new_tokens`` exceed the model's context."""
    context = model_context(model)
    if context is not None and ids.shape[1] + max_new_tokens > context:
        raise ContextTooShortError(
            f"the prompt ({ids.shape[1]} tokens) + max_new_tokens {max_new_tokens} exceeds the model's context of "
            f"{context} tokens: ask for at most {max(context - ids.shape[1], 0)} new tokens")


def greedy(model: nn.Module, tokenizer, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of ids [1, P] -> new token ids [N] (N <= max_new_tokens; stops at EOS)."""
    from transformers import GenerationConfig
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                           pad_token_id=pad if pad is not None else eos)
    dev = embedding_device(model)
    x = ids.to(dev)
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=cfg)
    return out[0, x.shape[1]:].cpu()


def continuation_nll(model: nn.Module, ids: torch.Tensor, new: torch.Tensor) -> Optional[float]:
    """Mean NLL (natural log) of the tokens ``new`` [N] following ``ids`` [1, P] under ``model``; None if N = 0."""
    if new.numel() == 0:
        return None
    full = torch.cat([ids[0], new]).unsqueeze(0).to(embedding_device(model))  # [1, P + N]
    with torch.no_grad():
        logits = model(input_ids=full, use_cache=False).logits[0, ids.shape[1] - 1:-1].float()  # [N, V]
    return float(F.cross_entropy(logits, new.to(logits.device)))


def _first_difference(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def generate_pair(model: nn.Module, tokenizer, neurons: Sequence, prompt: str,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, discover: bool = False) -> Dict:
    """Greedy continuation of ``prompt``, clean and with ``neurons`` masked (restored after).

    Returns prompt, clean / masked text and token ids, ``diverges_at`` (first generated token that differs, None if
    identical) and the clean model's log10 perplexity of each continuation (``clean_log10_ppl`` /
    ``masked_log10_ppl``: how likely the clean model finds the text; garbage scores high)."""
    check_prompts([prompt])
    check_max_new_tokens(max_new_tokens)
    ids = prompt_ids(tokenizer, prompt)
    check_fits(model, ids, max_new_tokens)
    with eval_mode(model):
        clean = greedy(model, tokenizer, ids, max_new_tokens)
        with masked(model, neurons, discover=discover) as resolved:
            bad = greedy(model, tokenizer, ids, max_new_tokens)
        nll_clean = continuation_nll(model, ids, clean)
        nll_bad = continuation_nll(model, ids, bad)
    l10 = 1 / math.log(10)
    return {
        "prompt": prompt, "max_new_tokens": max_new_tokens, "n_neurons": len(resolved),
        "clean": tokenizer.decode(clean, skip_special_tokens=True),
        "masked": tokenizer.decode(bad, skip_special_tokens=True),
        "clean_ids": clean.tolist(), "masked_ids": bad.tolist(),
        "diverges_at": _first_difference(clean.tolist(), bad.tolist()),
        "clean_log10_ppl": None if nll_clean is None else nll_clean * l10,
        "masked_log10_ppl": None if nll_bad is None else nll_bad * l10,
    }


def generations(model: nn.Module, tokenizer, neurons: Sequence, prompts: Sequence[str] = DEFAULT_PROMPTS,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, discover: bool = False) -> List[Dict]:
    """``generate_pair`` for each prompt (all prompts checked first)."""
    prompts = check_prompts(prompts)
    check_max_new_tokens(max_new_tokens)
    for p in prompts:  # every prompt fits before any is generated
        check_fits(model, prompt_ids(tokenizer, p), max_new_tokens)
    return [generate_pair(model, tokenizer, neurons, p, max_new_tokens, discover) for p in prompts]


def side_by_side(pairs: Sequence[Dict], width: int = 100) -> str:
    """Each pair as ``prompt`` then two wrapped columns, clean | masked."""
    col = max(20, (width - 3) // 2)
    lines: List[str] = []
    for p in pairs:
        lines.append(f"prompt: {p['prompt']!r}  ({p['n_neurons']} neuron(s) masked)")
        left = textwrap.wrap(p["clean"].replace("\n", " ") or "(nothing)", col)
        right = textwrap.wrap(p["masked"].replace("\n", " ") or "(nothing)", col)
        lines.append(f"{'clean':<{col}} | masked")
        lines.append(f"{'-' * col}-+-{'-' * col}")
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ""
            b = right[i] if i < len(right) else ""
            lines.append(f"{a:<{col}} | {b}")
        lp = [f"{v:.2f}" if v is not None else "n/a" for v in (p["clean_log10_ppl"], p["masked_log10_ppl"])]
        lines.append(f"log10 PPL under the clean model: clean {lp[0]}, masked {lp[1]}")
        lines.append("")
    return "\n".join(lines).rstrip()
