"""Checkpoints for benchmarks and tests (one builder for both): tiny random Llamas saved as HF folders, and a
genuine huggingface_hub cache layout around any files (revisions as refs)."""
from __future__ import annotations

import hashlib
import io
import os
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


def save_hub_repo(cache: Path, repo_id: str, snapshots) -> list:
    """A genuine huggingface_hub cache layout for ``repo_id`` under ``cache`` (what HF_HUB_CACHE points at):
    ``models--org--name/blobs/<hash>`` (weights named by their sha256, as LFS objects are; other files by their git
    blob sha1), ``snapshots/<commit>/<file>`` relative symlinks into blobs/, and ``refs/<ref>`` holding the commit.

    snapshots: [(refs, {path in repo: source file Path or bytes}), ...]; returns the commit shas in that order.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    commits = []
    for refs, files in snapshots:
        digests = {}
        for rel, src in sorted(files.items()):
            data = src if isinstance(src, bytes) else None
            if rel.endswith((".safetensors", ".gguf", ".bin")):
                h = hashlib.sha256()
                with (open(src, "rb") if data is None else io.BytesIO(data)) as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                digest = h.hexdigest()
            else:
                data = data if data is not None else Path(src).read_bytes()
                digest = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            blob = repo / "blobs" / digest
            if not blob.exists():
                if data is None and Path(src).stat().st_size > 50_000_000:  # big file: link, don't copy
                    blob.symlink_to(Path(src).resolve())
                else:
                    blob.write_bytes(data if data is not None else Path(src).read_bytes())
            digests[rel] = digest
        commit = hashlib.sha1(repr(sorted(digests.items())).encode()).hexdigest()
        for rel, digest in digests.items():
            link = repo / "snapshots" / commit / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(repo / "blobs" / digest, link.parent))
        for ref in refs:
            (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
        commits.append(commit)
    return commits
