"""Every bad input of issue 10 as a user types it: exit 2, one line naming the problem, no traceback, and nothing
changed (the model's files, the inputs; no output file left behind). Most run in-process (``cli.main``) on
stories260K; a few run as subprocesses to see exactly what a terminal shows."""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from achilles_fast import cli
from achilles_fast.method.text import DEFAULT_TEXT

from conftest import STORIES

DOWN = "model.layers.0.mlp.down_proj"
LONG_TEXT = DEFAULT_TEXT * 10  # a corpus of several 256-token windows, longer than the 512-token context


def digest(*paths) -> str:
    """sha256 over every file under ``paths`` (names and bytes)."""
    h = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(root.rglob("*")) if root.is_dir() else [root]
        for f in files:
            if f.is_file():
                h.update(str(f).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _hf_handlers():
    import logging
    return [h for h in logging.getLogger("transformers").handlers
            if isinstance(h, logging.StreamHandler) and not type(h).__module__.startswith("_pytest")]


def run(capsys, *args):
    """``achilles-fast ARGS`` in-process -> (exit code, stdout, stderr)."""
    for h in _hf_handlers():  # transformers' handler keeps the stderr it was made with (maybe another test's capture)
        h.stream, h.flush = sys.stderr, sys.stderr.flush
    try:
        code = cli.main([str(a) for a in args])
    finally:
        for h in _hf_handlers():
            h.stream, h.flush = sys.__stderr__, sys.__stderr__.flush
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, command, needle):
    lines = [ln for ln in err.strip().splitlines() if ln.startswith(f"achilles-fast {command}: error: ")]
    assert code == 2, err
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Bad inputs on disk (built once)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "folder").mkdir()
    (d / "no_weights").mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(STORIES / f, d / "no_weights" / f)
    (d / "garbage.gguf").write_bytes(b"\x00\x01 this is not a model " * 50)
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(d / "truncated.gguf"), arch="llama")
    w.add_tensor("t", __import__("numpy").ones(64, dtype="float32"))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    (d / "truncated.gguf").write_bytes((d / "truncated.gguf").read_bytes()[:-100])
    (d / "number.json").write_text("5")
    (d / "wrong_key.json").write_text(json.dumps({"error": "name"}))
    (d / "string.json").write_text(json.dumps({"neurons": "a:1"}))
    (d / "objects.json").write_text(json.dumps({"neurons": [{"nom": f"{DOWN}:1"}]}))
    (d / "broken.json").write_text("{\"neurons\": [")
    (d / "latin1.txt").write_bytes("caf\xe9 au lait, s'il vous pla\xeet".encode("latin-1") * 5)
    (d / "a_file").write_text("x")
    (d / "corpus.txt").write_text(LONG_TEXT, encoding="utf-8")
    # stories260K with one NaN weight in layer 1's down projection
    nan = d / "nan_model"
    shutil.copytree(STORIES, nan)
    from safetensors.torch import load_file, save_file
    sd = load_file(str(nan / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"][7, 3] = float("nan")
    (nan / "model.safetensors").chmod(0o644)
    save_file(sd, str(nan / "model.safetensors"), metadata={"format": "pt"})
    return d


def CASES(b: Path):
    """(argv, command, the line's needle): issue 10 items 2-5 and what a user tries next."""
    S, nan = STORIES, b / "nan_model"
    no_cuda = [] if torch.cuda.is_available() else [
        (["find", S, "--device", "cuda"], "find", "device 'cuda' is not available here"),
        (["mask", S, "--neurons", f"{DOWN}:1", "--device", "cuda:1"], "mask", "device 'cuda:1' is not available"),
        (["find", S, "--device-map", '{"": 3}'], "find", "device_map entry '': device 3 is not available here"),
    ]
    return no_cuda + [
        # 4. devices, files, models
        (["find", S, "--device", "tpu9"], "find", "device 'tpu9' is not a device"),
        (["find", S, "--device-map", '{"": "tpu9"}'], "find", "device_map entry '': device 'tpu9' is not a device"),
        (["find", S, "--device-map", '{"": "disk"}'], "find", "give an offload folder"),
        (["find", S, "--device-map", "[1, 2]"], "find", "device_map '[1, 2]' is not a device"),
        (["find", S, "--text-file", b / "folder"], "find", "is a folder, not a text file"),
        (["find", S, "--text-file", b / "missing.txt"], "find", "missing.txt: no such file"),
        (["find", S, "--text-file", b / "latin1.txt"], "find", "is not UTF-8 text"),
        (["find", S, "--eval-text-file", b / "folder"], "find", "--eval-text-file"),
        (["find", b / "no_weights"], "find", "has a config.json but no weights"),
        (["find", b / "folder"], "find", "has no config.json"),
        (["find", b / "garbage.gguf"], "find", "is not a GGUF file"),
        (["find", b / "truncated.gguf"], "find", "is truncated or corrupt"),
        (["mask", b / "truncated.gguf", "--neurons", f"{DOWN}:1"], "mask", "is truncated"),
        (["mask", S, "--neurons", b / "number.json"], "mask", "must be a JSON list of names, got int 5"),
        (["mask", S, "--neurons", b / "wrong_key.json"], "mask", "no 'neurons' key (keys: error)"),
        (["mask", S, "--neurons", b / "string.json"], "mask", "must be a JSON list of names, got str"),
        (["mask", S, "--neurons", b / "objects.json"], "mask", "an object with a 'name'"),
        (["mask", S, "--neurons", b / "broken.json"], "mask", "not a JSON file"),
        (["mask", S, "--neurons", b / "missing.json"], "mask", "missing.json: no such file"),
        (["mask", S, "--neurons", str(b / "result.json")], "mask", f"--neurons {b / 'result.json'}: no such file"),
        (["mask", S, "--neurons", b / "folder"], "mask", "is a folder"),
        (["evaluate", S, "--neurons", b / "missing.json", "--corpus", b / "latin1.txt"], "evaluate", "no such file"),
        (["evaluate", S, "--neurons", f"{DOWN}:1", "--corpus", b / "folder"], "evaluate", "is a folder"),
        # 5. parameters
        (["find", S, "--epsilon", "inf"], "find", "epsilon (log10 PPL ratio threshold) must be a finite number"),
        (["find", S, "--alpha", "inf"], "find", "alpha (noise scale) must be a finite number > 0, got inf"),
        (["find", S, "--alpha", "nan"], "find", "alpha (noise scale) must be a finite number > 0, got nan"),
        (["find", S, "--batch-size", "0"], "find", "batch_size must be an integer >= 1, got 0"),
        (["find", S, "--max-batch-tokens", "0"], "find", "max_batch_tokens must be an integer >= 1, got 0"),
        (["find", S, "--max-batch-tokens", "-64"], "find", "max_batch_tokens must be an integer >= 1, got -64"),
        (["mask", S, "--neurons", f"{DOWN}:1", "--max-tokens", "1"], "mask", "max_tokens must be >= 2"),
        (["evaluate", S, "--neurons", f"{DOWN}:1", "--corpus", b / "corpus.txt", "--window", "0"], "evaluate",
         "window must be an integer >= 2, got 0"),
        (["evaluate", S, "--neurons", f"{DOWN}:1", "--corpus", b / "corpus.txt", "--window", "100000"], "evaluate",
         "window 100000 + BOS exceeds the model's context of 512 tokens"),
        (["evaluate", S, "--neurons", f"{DOWN}:1", "--corpus", b / "corpus.txt", "--max-windows", "0"], "evaluate",
         "max_windows must be an integer >= 1"),
        # 2. NaN weights: found on the clean forward, before any stage runs
        (["find", nan, "--quiet"], "find", "first non-finite output at model.layers.1.mlp.down_proj (Linear; its "
                                           "weights hold 1 NaN/Inf value(s))"),
        (["mask", nan, "--neurons", f"{DOWN}:1"], "mask", "loss on the text is nan"),
        (["evaluate", nan, "--neurons", f"{DOWN}:1", "--corpus", b / "corpus.txt", "--max-windows", "1"], "evaluate",
         "first non-finite output at model.layers.1.mlp.down_proj"),
        # 3. outputs that cannot be written: refused before the run
        (["find", S, "--out", b / "folder"], "find", "is a folder; give a file name"),
        (["find", S, "--out", b / "nowhere" / "r.json"], "find", "does not exist"),
        (["find", S, "--out", b / "a_file" / "r.json"], "find", "is a file, not a folder"),
        (["find", S, "--plot", b / "a_file"], "find", "exists and is not a folder"),
        (["find", S, "--plot", b / "a_file" / "sub"], "find", "is a file, not a folder"),
        (["mask", S, "--neurons", f"{DOWN}:1", "--out", b / "folder"], "mask", "is a folder"),
        (["evaluate", S, "--neurons", f"{DOWN}:1", "--corpus", b / "corpus.txt", "--out", b / "folder"], "evaluate",
         "is a folder"),
        (["baselines", S, "--out", b / "folder"], "baselines", "is a folder"),
        (["robustness", S, "--texts", b, "--plot", b / "nan_model" / "config.json"], "robustness",
         "exists and is not a folder"),
        (["plot", b / "number.json", "--out", b / "a_file"], "plot", "exists and is not a folder"),
        (["plot", b / "wrong_key.json", "--out", b / "plots"], "plot", "not a result JSON"),
    ]


def test_case_table_covers_every_command_that_reads_user_files():
    cmds = {c[1] for c in CASES(Path("/x"))}
    assert {"find", "mask", "evaluate", "baselines", "robustness", "plot"} <= cmds


@pytest.mark.parametrize("i", range(len(CASES(Path("/x")))))
def test_bad_input(i, bad, capsys):
    argv, command, needle = CASES(bad)[i]
    before = digest(STORIES, bad)
    code, out, err = run(capsys, *argv)
    assert_one_line(code, err, command, needle)
    assert digest(STORIES, bad) == before  # the model's files and every input unchanged, no output written


def test_nan_model_as_a_user_sees_it(bad, tmp_path):
    """`find` on a model with one NaN weight: one line, exit 2, no Stage 1 bar, no result file."""
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "achilles_fast.cli", "find", str(bad / "nan_model"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("achilles-fast find: error: the model's loss on the text is "
                                                        "nan (not finite): first non-finite output at model.layers.1")
    assert "Stage 1" not in p.stderr and "Traceback" not in p.stderr and not out.exists()


def test_output_lost_at_the_end_goes_to_a_fallback(tmp_path, capsys, monkeypatch):
    """--out and --plot checked at the start, but their folder is replaced by a file during the run: the result and
    the plots are saved in the temp folder and the command says where (exit 2)."""
    import tempfile

    import achilles_fast.method.api as api
    fallback = tmp_path / "tmp"
    fallback.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    target = tmp_path / "gone" / "r.json"
    target.parent.mkdir()
    real = api.find_critical

    def find_then_lose_the_folder(*a, **k):
        res = real(*a, **k)
        shutil.rmtree(target.parent)
        target.parent.write_text("a file now stands where the output folder was")
        return res

    monkeypatch.setattr(api, "find_critical", find_then_lose_the_folder)
    code, out, err = run(capsys, "find", STORIES, "--k", 2, "--max-tokens", 32, "--max-neurons", 3, "--quiet",
                         "--out", target, "--plot", tmp_path / "gone" / "plots")
    assert code == 2, err
    saved = list(fallback.glob("achilles-fast-*-r.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["params"]["k"] == 2
    assert f"could not write --out {target}" in err and f"saved to {saved[0]} instead" in err
    plots = list(fallback.glob("achilles-fast-*-plots"))
    assert len(plots) == 1 and len(list(plots[0].glob("*.png"))) == 2


def test_outputs_written_atomically(tmp_path, capsys):
    out = tmp_path / "m.json"
    code, _, err = run(capsys, "mask", STORIES, "--neurons", f"{DOWN}:1", "--out", out)
    assert code == 0, err
    assert json.loads(out.read_text())["n_neurons"] == 1 and [p.name for p in tmp_path.iterdir()] == ["m.json"]
    assert out.stat().st_mode & 0o644 == 0o644


def test_duplicate_neurons_in_mask(tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, err = run(capsys, "mask", STORIES, "--neurons", f"{DOWN}:3,{DOWN}:3", "--out", out)
    assert code == 0, err
    assert "neurons masked    1 (1 duplicate name(s) ignored)" in stdout
    r = json.loads(out.read_text())
    assert r["n_neurons"] == 1 and r["neurons"] == [f"{DOWN}:3"]


def test_max_tokens_beyond_context_clamped(tmp_path, capsys):
    """stories260K has a 512-token context: --max-tokens 100000 on a long text uses 512 tokens, with a warning."""
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="exceeds the model's context of 512 tokens; using the first 512"):
        text = tmp_path / "long.txt"
        text.write_text(LONG_TEXT, encoding="utf-8")
        code, _, err = run(capsys, "find", STORIES, "--text-file", text, "--max-tokens", 100000, "--k", 2,
                           "--max-neurons", 2, "--quiet", "--out", out)
    assert code in (0, 1), err
    assert json.loads(out.read_text())["params"]["n_tokens"] == 512


def _subparsers():
    p = cli.build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_flag_has_help_and_one_default():
    for name, sp in _subparsers().items():
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest} has no help"
            assert a.help.count("(default") <= 1, f"{name} {a.option_strings}: {a.help}"


def test_quiet_silences_the_loading_bar(tmp_path):
    """transformers' weight-loading bar shows without --quiet and not with it."""
    args = [sys.executable, "-m", "achilles_fast.cli", "find", str(STORIES), "--k", "2", "--max-tokens", "32",
            "--max-neurons", "2"]
    loud = subprocess.run(args, capture_output=True, text=True, timeout=300)
    quiet = subprocess.run(args + ["--quiet"], capture_output=True, text=True, timeout=300)
    assert loud.returncode in (0, 1) and quiet.returncode in (0, 1), quiet.stderr
    assert "%|" in loud.stderr  # the bars exist (the test can fail) ...
    assert "%|" not in quiet.stderr and "Loading" not in quiet.stderr, quiet.stderr  # ... and --quiet hides them
