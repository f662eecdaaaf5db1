"""Issue 20.2: results are reused only for the same content. A checkpoint changed in place is a new sweep job (its
old rows are kept, labelled with their weights digest, never mixed with the new ones); the study's cache key is a
real digest; the digest index is keyed by (device, inode, size, mtime_ns, ctime_ns)."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import torch

from conftest import STORIES

from achilles_fast.bench.checkpoints import save_random_llama


def _ckpt(path, seed):
    if not STORIES.exists():
        pytest.skip("needs ../shared")
    return save_random_llama(path, seed=seed, layers=2, tokenizer_from=STORIES)


def test_digest_is_the_content_and_remembered(tmp_path, monkeypatch):
    from achilles_fast.models import loading
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert loading.file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    calls = []
    real = loading._sha256_of
    monkeypatch.setattr(loading, "_sha256_of", lambda p: calls.append(p) or real(p))
    loading.file_sha256(f)
    assert calls == []  # remembered
    st = f.stat()
    with open(f, "r+b") as fh:  # same size, same mtime (restored): only ctime tells
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert loading.file_sha256(f) == hashlib.sha256(b"b" + b"a" * 999).hexdigest()


def test_weights_digest_of_a_folder_follows_its_weights(tmp_path, monkeypatch):
    from achilles_fast.models.loading import weights_digest
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    a = _ckpt(tmp_path / "a", 0)
    d0 = weights_digest(a)
    assert d0 == weights_digest(a) and len(d0) == 64
    shutil.rmtree(a)
    _ckpt(a, 1)
    assert weights_digest(a) != d0


def spec(ck, db):
    return {"db": str(db), "checkpoints": [{"name": "ck", "path": str(ck)}], "texts": ["default"],
            "params": {"max_tokens": 32, "k": 2, "max_neurons": 8, "batch_size": 4},
            "grid": {"epsilon": [0.01, 0.02]}}


def test_changed_checkpoint_is_a_new_sweep_job(tmp_path, monkeypatch):
    from achilles_fast.studies.sweep.report import load_rows, summarize
    from achilles_fast.studies.sweep import run_sweep
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    ck, db = tmp_path / "ck", tmp_path / "s.db"
    _ckpt(ck, 0)
    first = run_sweep(spec(ck, db), log=None, prefetch=False)
    assert first.written == 2
    again = run_sweep(spec(ck, db), log=None, prefetch=False)
    assert again.written == 0 and again.skipped == 2
    shutil.rmtree(ck)
    _ckpt(ck, 1)  # the checkpoint changed in place
    changed = run_sweep(spec(ck, db), log=None, prefetch=False)
    assert changed.written == 2 and changed.skipped == 0
    rows = load_rows(str(db))
    assert len(rows) == 4 and len({r["weights"] for r in rows}) == 2  # old rows kept, labelled with their digest
    labels = {r["checkpoint"] for r in rows}
    assert len(labels) == 2 and all(lab.startswith("ck@") for lab in labels)  # never mixed in one grid
    assert {s["runs"] for s in summarize(rows)} == {2}


def test_study_key_sees_a_permutation_inside_a_tensor(tmp_path, monkeypatch):
    """A permutation inside one tensor keeps every sum: the study's cache key must still change."""
    from achilles_fast.method.config import FindConfig
    from achilles_fast.models.loading import load_model
    from achilles_fast.studies.study.context import StudyContext
    from achilles_fast.studies.study.params import StudyParams
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    ck = _ckpt(tmp_path / "ck", 0)

    def key():
        model, tok, name = load_model(str(ck))
        ctx = StudyContext(model, tok, name, FindConfig(max_tokens=32), StudyParams(), None, None, {}, "built-in")
        return ctx.base_key()["weights"]

    k0 = key()
    from safetensors.torch import load_file, save_file
    sd = load_file(str(ck / "model.safetensors"))
    w = sd["model.layers.0.mlp.down_proj.weight"]
    sd["model.layers.0.mlp.down_proj.weight"] = w.flip(0).contiguous()
    save_file(sd, str(ck / "model.safetensors"), metadata={"format": "pt"})
    assert key() != k0
