"""WikiText-style windowed perplexity of a corpus, with and without a neuron mask."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch

from .perplexity import log10_ppl
from .text import windows


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
    from .api import evaluate_mask
    ids = corpus_windows(tokenizer, corpus, window, max_windows, bos)
    r = evaluate_mask(model, tokenizer, neurons, ids=ids, max_batch_tokens=max_batch_tokens)
    r.update(windows=int(ids.shape[0]), window=window, bos=ids.shape[1] > window,
             n_tokens=int(ids.shape[0] * window), log10_clean_ppl=log10_ppl(r["clean_nll"]),
             log10_masked_ppl=log10_ppl(r["masked_nll"]))
    return r
