"""Tiny random Llama checkpoints saved as HF folders, for sweep benchmarks and tests (one builder for both)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Union

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def save_random_llama(folder: Union[str, Path], *, seed: int = 0, layers: int = 2, hidden: int = 32,
                      intermediate: Optional[int] = None, vocab: int = 512, max_positions: int = 256,
                      tokenizer_from: Optional[Union[str, Path]] = None) -> Path:
    """Save a random Llama (``initializer_range`` 0.2, so masking a channel matters) in ``folder`` and return it;
    an existing checkpoint there is kept. ``tokenizer_from``: a folder whose tokenizer files are copied beside the
    weights (e.g. stories260K's, vocab 512)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 3 * hidden // 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                      vocab_size=vocab, max_position_embeddings=max_positions, initializer_range=0.2)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    if tokenizer_from is not None:
        for f in TOKENIZER_FILES:
            if (Path(tokenizer_from) / f).exists():
                shutil.copy(Path(tokenizer_from) / f, folder / f)
    return folder
