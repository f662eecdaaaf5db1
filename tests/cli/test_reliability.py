"""Issue 20, reliability round 2: each defect found by the adversarial run, as a user meets it. Every bad input
ends in one line and exit 2 on the CLI (a clear exception type in Python), before long work starts."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from conftest import STORIES
from test_bad_inputs import assert_one_line, run

DOWN = "model.layers.0.mlp.down_proj"


def _gguf_str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def huge_array_gguf(path: Path) -> Path:
    """60 bytes: a GGUF v3 header whose one key claims an array of 2^40 uint8 values."""
    body = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gguf_str(b"k") + struct.pack("<I", 9)
            + struct.pack("<IQ", 0, 1 << 40) + b"\x00" * 11)
    path.write_bytes(body)
    return path


def test_gguf_array_length_checked_against_file_size(tmp_path):
    """4. a 60-byte GGUF whose key claims a 2^40-element array: refused at once, nothing allocated."""
    from achilles_fast.models.loading import GGUFError, check_gguf
    p = huge_array_gguf(tmp_path / "huge.gguf")
    assert p.stat().st_size == 60
    t0 = time.perf_counter()
    with pytest.raises(GGUFError, match="huge.gguf.*claims"):
        check_gguf(p)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("counts", [(1 << 50, 0), (0, 1 << 50)])
def test_gguf_header_counts_checked_against_file_size(tmp_path, counts):
    from achilles_fast.models.loading import GGUFError, check_gguf
    p = tmp_path / "counts.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, *counts) + b"\x00" * 40)
    with pytest.raises(GGUFError, match="counts.gguf.*claims"):
        check_gguf(p)


def test_gguf_huge_array_on_the_cli(tmp_path, capsys):
    code, _, err = run(capsys, "find", huge_array_gguf(tmp_path / "huge.gguf"))
    assert_one_line(code, err, "find", "huge.gguf")


def test_generation_beyond_the_context_refused(stories):
    """4. max_new_tokens past the model's context (stories260K: 512): refused before generating."""
    from achilles_fast.studies.generate import ContextTooShortError, generations
    model, tok = stories
    t0 = time.perf_counter()
    with pytest.raises(ContextTooShortError, match="exceeds the model's context of 512 tokens"):
        generations(model, tok, [f"{DOWN}:1"], ["Once upon a time"], max_new_tokens=1_000_000)
    assert time.perf_counter() - t0 < 5


def test_generation_beyond_the_context_on_the_cli(tmp_path, capsys):
    out = tmp_path / "g.json"
    code, _, err = run(capsys, "generate", STORIES, "--neurons", f"{DOWN}:1", "--max-new-tokens", 1_000_000,
                       "--out", out)
    assert_one_line(code, err, "generate", "exceeds the model's context of 512 tokens")
    assert not out.exists()


def test_corpus_record_cut_before_tokenising(stories, wikitext_text):
    """4. one huge JSON-lines record: only about max_tokens worth of characters reaches the tokenizer, and the ids
    are the first max_tokens of the whole record's tokenisation."""
    from achilles_fast.method.text import sample_ids
    _, tok = stories
    seen = []

    def spy(text, **kw):
        seen.append(len(text))
        return tok(text, **kw)

    huge = wikitext_text * 25  # ~5 MB
    ids, skipped = sample_ids(spy, [huge, "a short one, still two tokens or more"], max_tokens=64)
    assert skipped == 0 and ids[0].numel() == 64
    assert max(seen) < 64 * 64, seen
    assert ids[0].tolist() == tok(wikitext_text[:20000], return_tensors="pt")["input_ids"][0][:64].tolist()


@pytest.mark.parametrize("argv,needle", [
    (["find"], "the following arguments are required: model"),
    (["find", "x", "--k", "abc"], "argument --k: invalid int or auto value: 'abc'"),
    (["nope"], "invalid choice: 'nope'"),
])
def test_argparse_errors_are_one_line(argv, needle, capsys):
    """9. an argparse error: its one line (and where to find the usage), not the 22-line usage first."""
    from achilles_fast import cli
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "usage" not in err, err
    assert err.startswith("achilles-fast")


@pytest.mark.parametrize("k", [2, "auto"])
def test_noise_below_resolution_stops(k):
    """6. alpha 1e-30: every Stage 1 score is 0; no index-order 'critical set' is reported as converged."""
    import achilles_fast as af
    from achilles_fast.method.stage1 import NoiseResolutionError
    from conftest import ToyTokenizer, assert_bit_identical, tiny_model, weights_snapshot
    model = tiny_model("llama", seed=1, initializer_range=0.5)
    snap = weights_snapshot(model)
    with pytest.raises(NoiseResolutionError, match="the noise is below the model's resolution: raise alpha"):
        af.find_critical(model, ToyTokenizer(), "The quick brown fox jumps over the lazy dog, again and again.",
                         k=k, alpha=1e-30, epsilon=0.05, max_neurons=20, progress=False)
    assert_bit_identical(model, snap)


def test_noise_below_resolution_on_the_cli(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, err = run(capsys, "find", STORIES, "--alpha", "1e-30", "--k", 2, "--max-tokens", 32, "--quiet",
                       "--out", out)
    assert_one_line(code, err, "find", "raise alpha")
    assert not out.exists()


@pytest.mark.parametrize("scores,needle", [([0.0, 0.0], "raise alpha"), ([float("nan"), 1.0], "lower alpha"),
                                           ([float("inf"), 1.0], "lower alpha")])
def test_rankings_of_zero_or_non_finite_scores_refused(scores, needle):
    import torch
    from achilles_fast.method.ranking import Ranking
    from achilles_fast.method.stage1 import NoiseResolutionError, check_scores
    r = Ranking([], torch.tensor([0, 1]), torch.tensor(scores))
    with pytest.raises(NoiseResolutionError, match=needle):
        check_scores(r, 1.0)
    assert check_scores(Ranking([], torch.tensor([0, 1]), torch.tensor([2.0, 0.0])), 1.0) is not None


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model fails the test: checks that need only the arguments must come first."""
    from achilles_fast.models import loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.mark.parametrize("flags,needle", [(["--window", "0"], "window must be an integer >= 2, got 0"),
                                          (["--max-windows", "0"], "max_windows must be an integer >= 1, got 0")])
def test_window_checked_before_the_model_loads(no_loading, capsys, flags, needle):
    """6. --window / --max-windows checked before the model loads."""
    from conftest import WIKITEXT, need_wikitext
    need_wikitext()
    code, _, err = run(capsys, "evaluate", STORIES, "--neurons", f"{DOWN}:1", "--corpus", WIKITEXT, *flags)
    assert_one_line(code, err, "evaluate", needle)


@pytest.fixture
def model_copy(tmp_path):
    import shutil
    d = tmp_path / "model"
    shutil.copytree(STORIES, d)
    return d


@pytest.mark.parametrize("where", [".", ".."])
def test_own_folder_save_pretrained_refused_before_the_model_loads(model_copy, no_loading, capsys, where):
    from test_bad_inputs import digest
    before = digest(model_copy)
    code, _, err = run(capsys, "mask", model_copy, "--neurons", f"{DOWN}:1", "--overwrite",
                       "--save-pretrained", model_copy / where if where == "." else model_copy.parent)
    assert_one_line(code, err, "mask", "holds the model")
    assert digest(model_copy) == before


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path):
    """A real (tiny) GGUF file whose 'dequantisation' is stories260K, and a cache under tmp_path."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from achilles_fast.models import loading
    monkeypatch.setenv("ACHILLES_FAST_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tensor("delta", np.ones(64, dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()

    def _load_gguf(p, dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        return AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=dtype), AutoTokenizer.from_pretrained(
            str(STORIES))

    monkeypatch.setattr(loading, "_load_gguf", _load_gguf)
    return path


def test_save_pretrained_into_the_conversion_cache_refused(fake_gguf, capsys):
    """1. the GGUF's conversion-cache folder is what is loaded: saving into it would poison every later load."""
    from achilles_fast.models.loading import cached_gguf_dir
    from test_bad_inputs import digest
    cache = cached_gguf_dir(fake_gguf)
    before = digest(cache)
    code, _, err = run(capsys, "mask", fake_gguf, "--neurons", f"{DOWN}:1", "--overwrite", "--save-pretrained", cache)
    assert_one_line(code, err, "mask", str(cache))
    assert digest(cache) == before


def test_save_masked_into_the_conversion_cache_refused(fake_gguf, tmp_path):
    from achilles_fast import save_masked
    from achilles_fast.method.export import OutputExistsError
    from achilles_fast.models.loading import cached_gguf_dir, load_model
    model, tok, _ = load_model(str(fake_gguf))
    with pytest.raises(OutputExistsError, match="holds the model"):
        save_masked(model, tok, [f"{DOWN}:1"], cached_gguf_dir(fake_gguf), overwrite=True)


def _model_folder(d: Path, weights: bytes, name: str = "model.safetensors") -> Path:
    import shutil
    d.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / f, d / f)
    (d / name).write_bytes(weights)
    return d


def _safetensors_cases(tmp_path: Path):
    import json as _json
    real = (STORIES / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", real[:8])[0]
    header = _json.loads(real[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, len(real) * 4]
    h = _json.dumps(header).encode()
    return {
        "too_large": struct.pack("<Q", 1 << 40) + b"{}",
        "bad_json": struct.pack("<Q", 12) + b"not json!!!!",
        "past_the_end": struct.pack("<Q", len(h)) + h + real[8 + n:],
        "truncated": real[:len(real) // 2],
    }


@pytest.mark.parametrize("case", ["too_large", "bad_json", "past_the_end", "truncated"])
def test_malformed_safetensors_one_line(tmp_path, capsys, case):
    """5. malformed safetensors: one line naming the file, exit 2 (not a traceback with exit 1)."""
    d = _model_folder(tmp_path / case, _safetensors_cases(tmp_path)[case])
    code, _, err = run(capsys, "find", d, "--k", 2, "--max-tokens", 16)
    assert_one_line(code, err, "find", str(d / "model.safetensors"))


def test_pickled_bin_refused_one_line(tmp_path, capsys):
    """5. a pytorch_model.bin holding a pickled object that weights-only loading refuses: one line."""
    import argparse

    import torch
    from safetensors.torch import load_file
    sd = load_file(str(STORIES / "model.safetensors"))
    sd["evil"] = argparse.Namespace(a=1)
    buf = tmp_path / "x.bin"
    torch.save(sd, buf)
    d = _model_folder(tmp_path / "pickled", buf.read_bytes(), "pytorch_model.bin")
    code, _, err = run(capsys, "find", d, "--k", 2, "--max-tokens", 16)
    assert_one_line(code, err, "find", "pytorch_model.bin")


def test_truncated_jsonl_gz_one_line(tmp_path, capsys):
    import gzip
    import json as _json
    p = tmp_path / "c.jsonl.gz"
    data = gzip.compress(b"".join(_json.dumps({"text": f"record {i} " * 50}).encode() + b"\n" for i in range(200)))
    p.write_bytes(data[:len(data) // 2])
    code, _, err = run(capsys, "evaluate", STORIES, "--neurons", f"{DOWN}:1", "--corpus", p)
    assert_one_line(code, err, "evaluate", str(p))


def test_sweep_dry_run_on_an_empty_sqlite_file(tmp_path, capsys):
    import sqlite3
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    spec = tmp_path / "s.yaml"
    spec.write_text(f"db: {db}\ncheckpoints: [{STORIES}]\ntexts: [default]\nparams: {{k: 2}}\n")
    code, out, err = run(capsys, "sweep", spec, "--dry-run")
    if code == 0:  # an empty SQLite file is an empty database: every job pending
        assert "0/1 done" in out
    else:
        assert_one_line(code, err, "sweep", str(db))


def _corrupt_blob(cache: Path, commit: str) -> Path:
    """Flip one byte of the snapshot's weights blob (an LFS object named by its sha256)."""
    blob = (cache / "models--tiny-org--stories260K" / "snapshots" / commit / "model.safetensors").resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: still a well-formed safetensors file
    blob.write_bytes(bytes(data))
    return blob


def test_hub_weights_sha256_is_the_content(hub_cache):
    """2. an edited blob is not reported pristine: its sha256 is read from the content and checked against the
    LFS object id (the blob's name)."""
    import achilles_fast as af
    from achilles_fast.models.hub import HubCacheCorruptError
    cache, (main, _) = hub_cache
    blob = _corrupt_blob(cache, main)
    with pytest.raises(HubCacheCorruptError, match="corrupt"):
        af.load_model("tiny-org/stories260K")
    assert blob.name  # untouched otherwise


def test_hub_corrupt_blob_on_the_cli(hub_cache, capsys):
    cache, (main, _) = hub_cache
    blob = _corrupt_blob(cache, main)
    code, _, err = run(capsys, "mask", "tiny-org/stories260K", "--neurons", f"{DOWN}:1")
    assert_one_line(code, err, "mask", blob.name[:12])


@pytest.mark.parametrize("spec,needle", [("tiny-org/stories260K@..", "revision '..'"),
                                         ("tiny-org/stories260K/../x.gguf", "'..'")])
def test_dot_dot_in_hub_ids_refused(hub_cache, capsys, spec, needle):
    """9. '..' as a revision or in a file path never reaches the file system; the message is about the input."""
    code, _, err = run(capsys, "find", spec)
    assert_one_line(code, err, "find", needle)
    assert "repository owner" not in err and "Is a directory" not in err


def test_short_commit_sha_listed_as_cached_is_accepted(hub_cache):
    """9. the cached listing shows 12-digit commit shas: such a prefix loads that snapshot."""
    import achilles_fast as af
    _, (main, v0) = hub_cache
    model, _, _ = af.load_model(f"tiny-org/stories260K@{v0[:12]}")
    assert model.achilles_source["commit"] == v0


def test_remote_code_refusal_is_one_line(tmp_path, capsys):
    import json as _json
    import shutil
    d = tmp_path / "remote"
    shutil.copytree(STORIES, d)
    cfg = _json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}
    cfg["model_type"] = "x-custom"
    (d / "config.json").write_text(_json.dumps(cfg))
    (d / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")
    code, _, err = run(capsys, "find", d)
    assert_one_line(code, err, "find", "--trust-remote-code")
    assert len(err.strip().splitlines()) == 1, err


def test_epsilon_list_on_the_cli_is_the_api_list(tmp_path, capsys):
    """9. --epsilon "0.5,1": one Stage 1, one result per epsilon (the API's epsilon=[0.5, 1])."""
    import json as _json

    import achilles_fast as af
    out = tmp_path / "r.json"
    code, stdout, err = run(capsys, "find", STORIES, "--epsilon", "0.05,0.1", "--k", 2, "--max-tokens", 32,
                            "--max-neurons", 40, "--quiet", "--out", out)
    assert code in (0, 1), err
    got = _json.loads(out.read_text())
    assert isinstance(got, list) and [r["epsilon"] for r in got] == [0.05, 0.1]
    want = af.find_critical(str(STORIES), epsilon=[0.05, 0.1], k=2, max_tokens=32, max_neurons=40, progress=False)
    assert [len(r["neurons"]) for r in got] == [len(r.neurons) for r in want]


def test_sweep_labels_make_safe_file_names(tmp_path):
    """9. a 300-character label and a label starting with '.': plot files are written, none hidden or too long."""
    from achilles_fast.studies.plots import file_stem
    long_a, long_b = "a" * 300 + "1", "a" * 300 + "2"
    for label in (long_a, ".hidden", "..", "x/../../y"):
        stem = file_stem(label)
        assert stem and not stem.startswith(".") and len(stem.encode()) <= 120 and "/" not in stem
        (tmp_path / f"{stem}_curve.png").write_bytes(b"")  # a file system accepts it
    assert file_stem(long_a) != file_stem(long_b)


def test_failed_study_leaves_no_empty_out_folder(tmp_path, capsys):
    """9. a study whose model is missing creates nothing."""
    out = tmp_path / "new" / "study"
    code, _, err = run(capsys, "study", tmp_path / "no_such_model", "--out", out)
    assert code == 2 and not (tmp_path / "new").exists(), err


def _outputs_over_inputs(m: Path, d: Path):
    """(argv, command, needle): outputs pointed at the command's own inputs (issue 20.1)."""
    r = d / "r.json"
    t = d / "t.txt"
    return [
        (["find", m, "--out", m / "model.safetensors"], "find", "holds the model"),
        (["find", m, "--out", m / "config.json"], "find", "holds the model"),
        (["find", m, "--plot", m], "find", "holds the model"),
        (["find", m, "--text-file", t, "--out", t], "find", "--text-file"),
        (["find", m, "--eval-text-file", t, "--out", t], "find", "--eval-text-file"),
        (["mask", m, "--neurons", r, "--out", r], "mask", "--neurons"),
        (["mask", m, "--neurons", r, "--save-pretrained", d, "--overwrite"], "mask", "--neurons"),
        (["evaluate", m, "--neurons", f"{DOWN}:1", "--corpus", t, "--out", t], "evaluate", "--corpus"),
        (["generate", m, "--neurons", r, "--out", r], "generate", "--neurons"),
        (["study", m, "--out", m], "study", "holds the model"),
        (["report", d / "s.db", "--csv", d / "s.db"], "report", "s.db"),
        (["plot", r, "--out", d], "plot", "r.json"),
    ]


@pytest.mark.parametrize("i", range(12))
def test_outputs_never_overwrite_inputs(model_copy, tmp_path, capsys, no_loading, i):
    """1. every output compared with every input (resolved, symlinks followed) before anything runs."""
    import json as _json
    import sqlite3

    from test_bad_inputs import digest
    d = tmp_path / "in"
    d.mkdir()
    (d / "r.json").write_text(_json.dumps({"neurons": [f"{DOWN}:1"]}))
    (d / "t.txt").write_text("Once upon a time there was a little girl who loved the park. " * 5)
    sqlite3.connect(d / "s.db").close()
    link = tmp_path / "link"
    link.symlink_to(model_copy)  # outputs named through a symlink are the same files
    argv, command, needle = _outputs_over_inputs(model_copy, d)[i]
    argv = [str(a).replace(str(model_copy), str(link)) if j > 1 else a for j, a in enumerate(argv)]
    before = digest(model_copy, d)
    code, _, err = run(capsys, *argv)
    assert_one_line(code, err, command, needle)
    assert digest(model_copy, d) == before


def test_outputs_inside_the_conversion_cache_refused(fake_gguf, tmp_path, capsys):
    from achilles_fast.models.loading import cached_gguf_dir
    from test_bad_inputs import digest
    cache = cached_gguf_dir(fake_gguf)
    before = digest(cache)
    code, _, err = run(capsys, "find", fake_gguf, "--out", cache / "result.json")
    assert_one_line(code, err, "find", "conversion cache")
    assert digest(cache) == before


def test_sweep_db_over_a_checkpoint_refused(model_copy, tmp_path, capsys):
    from test_bad_inputs import digest
    spec = tmp_path / "s.yaml"
    spec.write_text(f"checkpoints: [{model_copy}]\ntexts: [default]\nparams: {{k: 2}}\n")
    before = digest(model_copy)
    code, _, err = run(capsys, "sweep", spec, "--db", model_copy / "model.safetensors")
    assert_one_line(code, err, "sweep", "holds the model")
    code, _, err = run(capsys, "sweep", spec, "--db", spec)
    assert_one_line(code, err, "sweep", "spec")
    assert digest(model_copy) == before


def _enospc(*a, **k):
    import errno
    raise OSError(errno.ENOSPC, "No space left on device")


def test_save_pretrained_on_a_full_disk_keeps_the_evaluation(tmp_path, capsys, monkeypatch):
    """3. the checkpoint cannot be written (disk full): the --out evaluation is still saved, the line says so."""
    import json as _json

    from transformers import PreTrainedModel
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", _enospc)
    out, ckpt = tmp_path / "m.json", tmp_path / "ckpt"
    code, _, err = run(capsys, "mask", STORIES, "--neurons", f"{DOWN}:1", "--max-tokens", 32, "--out", out,
                       "--save-pretrained", ckpt)
    assert_one_line(code, err, "mask", f"could not write --save-pretrained {ckpt}")
    assert "No space left on device" in err and str(out) in err
    assert _json.loads(out.read_text())["n_neurons"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_sweep_on_a_full_disk(tmp_path, capsys, monkeypatch):
    """3. the database cannot take a row (disk full): one line, exit 2; the rows already written stay, the row that
    could not be stored is saved elsewhere and the line says where."""
    import json as _json
    import sqlite3
    import tempfile

    from achilles_fast.studies.sweep.db import SweepDB
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    real, calls = SweepDB.insert, []

    def insert(self, row):
        calls.append(row["key"])
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, row)

    monkeypatch.setattr(SweepDB, "insert", insert)
    db = tmp_path / "s.db"
    spec = tmp_path / "s.yaml"
    spec.write_text(f"db: {db}\ncheckpoints: [{STORIES}]\ntexts: [default]\n"
                    "params: {k: 2, max_tokens: 32, max_neurons: 8}\ngrid: {epsilon: [0.01, 0.02, 0.03]}\n")
    code, _, err = run(capsys, "sweep", spec, "--no-prefetch")
    assert_one_line(code, err, "sweep", "database or disk is full")
    saved = list(fallback.glob("achilles-fast-*.jsonl"))
    assert len(saved) == 1 and str(saved[0]) in err
    assert [_json.loads(x)["key"] for x in saved[0].read_text().splitlines()] == [calls[1]]
    with SweepDB(str(db), readonly=True) as s:
        assert s.done_keys() == {calls[0]}


def test_study_on_a_full_disk_goes_to_a_fallback(stories, tmp_path, monkeypatch):
    """3. the study's --out cannot be written (disk full): the study is finished and saved in the temp folder, and
    the error says where."""
    import errno
    import json as _json
    import tempfile

    import achilles_fast.studies.study.run as run_mod
    from achilles_fast import utils
    from achilles_fast.studies.study import StudyError, StudyParams, study
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    out = tmp_path / "out"
    real = utils.atomic_write

    def full(path, data):
        if str(path).startswith(str(out)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(utils, "atomic_write", full)  # write_json's writer too
    monkeypatch.setattr(run_mod, "atomic_write", full)
    model, tok = stories
    sp = StudyParams(max_new_tokens=4)
    with pytest.raises(StudyError, match="could not write --out .*No space left on device.*saved to") as e:
        study(model, tok, out=out, sections="generations", study_params=sp, progress=False, k=4, max_tokens=32,
              epsilon=0.05, max_neurons=20)
    saved = list(fallback.glob("achilles-fast-*-out"))
    assert len(saved) == 1 and str(saved[0]) in str(e.value)
    doc = _json.loads((saved[0] / "study.json").read_text())
    assert doc["complete"] and (saved[0] / "report.html").is_file()


def test_generate_out_checked_before_the_model_loads(tmp_path, capsys, no_loading):
    """3. generate --out into a missing folder: refused before loading, not after generating."""
    code, _, err = run(capsys, "generate", STORIES, "--neurons", f"{DOWN}:1", "--out", tmp_path / "no" / "g.json")
    assert_one_line(code, err, "generate", "does not exist")


def test_generate_out_on_a_full_disk_goes_to_a_fallback(tmp_path, capsys, monkeypatch):
    import json as _json
    import os as _os
    import tempfile
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    out = tmp_path / "g.json"
    real = _os.replace

    def full(src, dst, *a, **k):
        if str(dst) == str(out):
            _enospc()
        return real(src, dst, *a, **k)

    monkeypatch.setattr(_os, "replace", full)
    code, _, err = run(capsys, "generate", STORIES, "--neurons", f"{DOWN}:1", "--max-new-tokens", 3, "--out", out)
    assert code == 2 and f"could not write --out {out}" in err, err
    saved = list(fallback.glob("achilles-fast-*-g.json"))
    assert len(saved) == 1 and str(saved[0]) in err and _json.loads(saved[0].read_text())["generations"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_study_makes_its_out_folder_when_it_writes(stories, tmp_path):
    from achilles_fast.studies.study import StudyParams, study
    model, tok = stories
    out = tmp_path / "a" / "b"
    study(model, tok, out=out, sections="generations", study_params=StudyParams(max_new_tokens=4), progress=False,
          k=4, max_tokens=32, epsilon=0.05, max_neurons=20)
    assert (out / "study.json").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize("flag", ["--csv", "--summary-csv", "--json", "--plot"])
def test_report_outputs_checked_first(tmp_path, capsys, flag):
    """3. report's outputs are checked before the database is read (one line), not when written."""
    import sqlite3
    db = tmp_path / "s.db"
    sqlite3.connect(db).close()
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" if flag == "--plot" else tmp_path / "no" / "such" / "x"
    code, _, err = run(capsys, "report", db, flag, target)
    assert_one_line(code, err, "report", "exists and is not a folder" if flag == "--plot" else "does not exist")
