"""``achilles-fast protect-list`` and the study's compression flags: the files written, and every bad input as one
line with exit 2 before any model work (the model argument is a folder without a model: a check that came after
loading would report that instead)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import STORIES
from test_bad_inputs import assert_one_line, run

DOWN = "model.layers.2.mlp.down_proj"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "empty_result.json").write_text(json.dumps({"neurons": []}))
    (tmp_path / "broken.json").write_text("{\"neurons\": [")
    (tmp_path / "folder").mkdir()
    (tmp_path / "outdir").mkdir()
    (tmp_path / "readonly").mkdir()
    (tmp_path / "readonly").chmod(0o555)
    yield tmp_path
    (tmp_path / "readonly").chmod(0o755)


def test_protect_list_cli_writes_masks_and_naming(tmp_path, capsys, stories):
    from safetensors.torch import load_file
    from achilles_fast import protect_list
    out = tmp_path / "protect.safetensors"
    code, stdout, err = run(capsys, "protect-list", STORIES, "--neurons", f"{DOWN}:5,{DOWN}:9", "--out", out)
    assert code == 0, err
    masks = load_file(str(out))
    assert list(masks) == [f"{DOWN}.weight"] and masks[f"{DOWN}.weight"].dtype == torch.bool
    assert masks[f"{DOWN}.weight"].nonzero()[:, 0].unique().tolist() == [5, 9]
    assert int(masks[f"{DOWN}.weight"].sum()) == 2 * 172
    d = json.loads((tmp_path / "protect.json").read_text())
    assert [(e["module"], e["channel"], e["weights"][0]["weight"], e["weights"][0]["rows"]) for e in d["neurons"]] == \
        [(DOWN, 5, f"{DOWN}.weight", [5]), (DOWN, 9, f"{DOWN}.weight", [9])]
    model, _ = stories
    assert torch.equal(protect_list(model, [f"{DOWN}:5", f"{DOWN}:9"]).masks[f"{DOWN}.weight"],
                       masks[f"{DOWN}.weight"])
    assert "protected values  344" in stdout


def CASES(f):
    M = f / "folder"  # not a model: any check after loading would fail on it instead
    return [
        # protect-list: the neuron list and --out
        (["protect-list", M, "--neurons", f / "empty.json", "--out", f / "p.safetensors"], "protect-list",
         "holds no neurons"),
        (["protect-list", M, "--neurons", f / "empty_result.json", "--out", f / "p.safetensors"], "protect-list",
         "holds no neurons"),
        (["protect-list", M, "--neurons", "", "--out", f / "p.safetensors"], "protect-list", "--neurons is empty"),
        (["protect-list", M, "--neurons", " , ", "--out", f / "p.safetensors"], "protect-list", "--neurons is empty"),
        (["protect-list", M, "--neurons", f / "broken.json", "--out", f / "p.safetensors"], "protect-list",
         "not a JSON file"),
        (["protect-list", M, "--neurons", f / "missing.json", "--out", f / "p.safetensors"], "protect-list",
         "no such file"),
        (["protect-list", M, "--neurons", f / "folder", "--out", f / "p.safetensors"], "protect-list", "is a folder"),
        (["protect-list", M, "--neurons", f"{DOWN}:1", "--out", f / "missing" / "p.safetensors"], "protect-list",
         "does not exist"),
        (["protect-list", M, "--neurons", f"{DOWN}:1", "--out", f / "outdir"], "protect-list", "is a folder"),
        (["protect-list", M, "--neurons", f"{DOWN}:1", "--out", f / "readonly" / "p.safetensors"], "protect-list",
         "cannot write"),
        (["protect-list", M, "--neurons", f"{DOWN}:1", "--out", "/proc/p.safetensors"], "protect-list",
         "cannot write"),  # not writable even for root
        # study: bits, sparsity, group size
        (["study", M, "--out", f / "s", "--bits", "9"], "study", "bits must be in 2..8, got 9"),
        (["study", M, "--out", f / "s", "--bits", "8,1"], "study", "bits must be in 2..8, got 1"),
        (["study", M, "--out", f / "s", "--bits", "4.5"], "study", "--bits"),
        (["study", M, "--out", f / "s", "--sparsities", "0"], "study", "sparsity must be in (0, 1)"),
        (["study", M, "--out", f / "s", "--sparsities", "0.5,1"], "study", "sparsity must be in (0, 1)"),
        (["study", M, "--out", f / "s", "--sparsities", "1.5"], "study", "sparsity must be in (0, 1)"),
        (["study", M, "--out", f / "s", "--sparsities", "nan"], "study", "must be finite"),
        (["study", M, "--out", f / "s", "--group-size", "0"], "study", "group size must be >= 1"),
        (["study", M, "--out", f / "s", "--prune-methods", "magnitude,sparsegpt"], "study",
         "unknown pruning method 'sparsegpt'"),
        (["study", M, "--out", f / "s", "--flip-trials", "50"], "study", "flip_trials must be >= 100"),
        (["study", M, "--out", f / "s", "--flip-max", "0"], "study", "flip_max must be an integer >= 1"),
        (["study", M, "--out", f / "s", "--sections", "quantisation"], "study", "unknown section(s) quantisation"),
    ]


def test_bad_inputs_one_line_exit_2(files, capsys):
    import os
    for argv, command, needle in CASES(files):
        if "readonly" in str(argv) and os.geteuid() == 0:
            continue  # root writes anywhere
        code, _, err = run(capsys, *argv)
        assert_one_line(code, err, command, needle)
    assert not (files / "p.safetensors").exists() and not (files / "p.json").exists()
