"""WikiText-style windowed perplexity of a corpus, with and without a neuron mask."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch

from .masking import masked
from .perplexity import NLLEvaluator, log10_ppl, log10_ratio
from .text import windows

LN10 = math.log(10.0)


def corpus_windows(tokenizer, corpus: str, window: int = 256, max_windows: Optional[int] = None,
                   bos: bool = True) -> torch.Tensor:
    """Tokenize a whole corpus (no special tokens) and cut it into non-overlapping windows of ``window`` tokens
    ([W, window], or [W, window + 1] with a BOS prefix)."""
    enc = tokenizer(corpus, return_tensors="pt", add_special_tokens=False)
    ids = enc["input_ids"][0]
    bos_id = getattr(tokenizer, "bos_token_id", None) if bos else None
    return windows(ids, window, max_windows=max_windows, bos_id=bos_id)


def evaluate_corpus(model, tokenizer, neurons: Sequence, corpus: str, window: int = 256,
                    max_windows: Optional[int] = None, bos: bool = True,
                    max_batch_tokens: int = 8192) -> Dict[str, Any]:
    """Mean NLL / log10 PPL of the windows, clean and with ``neurons`` masked (weights restored bit-exact)."""
    ids = corpus_windows(tokenizer, corpus, window, max_windows, bos)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ev = NLLEvaluator(model, ids, max_batch_tokens=max_batch_tokens)
            clean = ev.nll()
            with masked(model, neurons) as resolved:
                nll = ev.nll()
    finally:
        model.train(was_training)
    return {"windows": int(ids.shape[0]), "window": window, "bos": ids.shape[1] > window,
            "n_tokens": int(ids.shape[0] * window),
            "n_neurons": len(resolved), "clean_nll": clean, "masked_nll": nll,
            "log10_clean_ppl": log10_ppl(clean), "log10_masked_ppl": log10_ppl(nll),
            "log10_ratio": log10_ratio(nll, clean)}
