"""Planned sweeps: units sharing Stage 1, one search per epsilon group, rows identical to one job at a time, stored
rankings reused by later runs, the schema (migration, refusals), bad --db / spec input, NaN checkpoints as error
rows, leases and concurrent workers, prefetch, report --format."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_sweep import db_keys, make_checkpoint, spec_dict

from achilles_fast.cli import main
from achilles_fast.studies.sweep.report import load_rows
from achilles_fast.studies.sweep import SweepSpec, plan_sweep, run_sweep
from achilles_fast.studies.sweep.db import SCHEMA_VERSION, SweepDB, SweepDBError
from achilles_fast.studies.sweep.jobs import run_job
from achilles_fast.models.loading import model_digest, weights_digest
from achilles_fast.studies.sweep.plan import ranking_key

OLD_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, checkpoint TEXT NOT NULL,
    checkpoint_path TEXT, model TEXT, text TEXT NOT NULL, text_sha TEXT NOT NULL, params TEXT NOT NULL,
    n_critical INTEGER, converged INTEGER, log10_ratio REAL, clean_nll REAL, epsilon REAL, seconds REAL,
    load_seconds REAL, started_at TEXT, finished_at TEXT, host TEXT, pid INTEGER, device TEXT, versions TEXT,
    result TEXT NOT NULL);
CREATE TABLE errors (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, checkpoint TEXT, text TEXT,
    params TEXT, error TEXT, at TEXT);
"""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan_ckpts")
    return [make_checkpoint(d / f"tiny{i}", seed=i) for i in range(3)]


def _spec(ckpts, db, eps=(0.01, 0.02, 0.05), **params):
    d = spec_dict(ckpts, db, epsilons=eps)
    d["params"].update(batch_size=1, **params)
    return d


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- planning -------------------------------------------------------------------------------------------------------
def test_units_group_jobs_sharing_stage1(ckpts, tmp_path):
    d = _spec(ckpts[:2], tmp_path / "a.db")
    d["grid"].update(ranker=["sensitivity", "random"], max_neurons=[8, 16])
    units, jobs = plan_sweep(SweepSpec.from_dict(d))
    assert len(jobs) == 2 * 2 * 3 * 2 * 2
    assert len(units) == 2 * 2 * 2  # checkpoint x text x ranker: epsilon and max_neurons share Stage 1
    assert all(len(u.jobs) == 6 for u in units)
    assert [u.checkpoint for u in units] == ["tiny0"] * 4 + ["tiny1"] * 4
    for u in units:
        groups = u.searches()
        assert len(groups) == 2 and all(len(g) == 3 for g in groups)  # one search per max_neurons, 3 epsilons each
    d["grid"]["k"] = ["auto"]
    units, jobs = plan_sweep(SweepSpec.from_dict(d))
    assert len(units) == len(jobs)  # k=auto: the ranking depends on Stage 2, so no sharing


def test_planned_rows_equal_one_job_at_a_time(ckpts, tmp_path):
    spec = _spec(ckpts[:2], tmp_path / "p.db")
    rep = run_sweep(spec, log=None)
    assert rep.complete and rep.written == rep.total == 2 * 2 * 3
    rows = {r["key"]: r for r in load_rows(str(tmp_path / "p.db"))}
    units, jobs = plan_sweep(SweepSpec.from_dict(spec))
    from achilles_fast.models.loading import load_model
    for ck in ckpts[:2]:
        model, tok, _ = load_model(str(ck))
        for j in [j for j in jobs if j.checkpoint == ck.name]:
            alone = run_job(model, tok, j).to_dict()
            got = rows[j.key]["result"]
            for f in ("neurons", "curve", "converged", "log10_ratio", "clean_nll", "final_nll", "top_ranked",
                      "epsilon"):
                assert got[f] == alone[f], (j.key, f)
            assert got["stats"].get("verify_log10_ratio") == alone["stats"].get("verify_log10_ratio")
    # one Stage 1 per unit: every row of a unit carries the same ranking key; one was computed per unit
    by_unit = {}
    for r in rows.values():
        by_unit.setdefault(r["result"]["stats"]["unit"], set()).add(r["result"]["stats"]["ranking_key"])
    assert len(by_unit) == len(units) and all(len(v) == 1 for v in by_unit.values())
    assert sum(r["seconds"] for r in rows.values()) > 0
    with SweepDB(str(tmp_path / "p.db")) as s:
        assert len(s.rankings([u.key for u in units])) == len(units)
        assert s.leases() == []


def test_rerun_with_new_stage2_params_reuses_stored_rankings(ckpts, tmp_path):
    db = tmp_path / "r.db"
    first = _spec(ckpts[:1], db, eps=(0.02,))
    assert run_sweep(first, log=None).complete
    more = _spec(ckpts[:1], db, eps=(0.02, 0.05, 0.1))
    rep = run_sweep(more, log=None)
    assert rep.skipped == 2 and rep.written == 4
    rows = load_rows(str(db))
    new = [r for r in rows if r["params"]["epsilon"] != 0.02]
    assert len(new) == 4 and all(r["result"]["stats"]["ranking_source"] == "stored" for r in new)
    old = [r for r in rows if r["params"]["epsilon"] == 0.02]
    assert all(r["result"]["stats"]["ranking_source"] == "computed" for r in old)
    assert {r["result"]["stats"]["ranking_key"] for r in new} == {r["result"]["stats"]["ranking_key"] for r in old}
    from achilles_fast.models.loading import load_model
    model, tok, _ = load_model(str(ckpts[0]))
    units, jobs = plan_sweep(SweepSpec.from_dict(more))
    for j in jobs:
        r = next(x for x in rows if x["key"] == j.key)
        assert r["result"]["neurons"] == run_job(model, tok, j).to_dict()["neurons"]
    # a longer max_neurons than stored: Stage 1 again, and the longer ranking replaces the stored one
    longer = _spec(ckpts[:1], db, eps=(0.02,), max_neurons=40)
    run_sweep(longer, log=None)
    got = [r for r in load_rows(str(db)) if r["params"]["max_neurons"] == 40]
    assert len(got) == 2 and all(r["result"]["stats"]["ranking_source"] == "computed" for r in got)
    with SweepDB(str(db)) as s:
        ns = [rec["n"] for rec in s.rankings([u.key for u in units]).values()]
    assert ns and max(ns) == 40


def test_ranking_key_is_content_addressed(ckpts):
    from achilles_fast.models.loading import load_model
    model, _, _ = load_model(str(ckpts[0]))
    h = model_digest(model)
    assert h == weights_digest(ckpts[0])  # a loaded model: the digest of its files
    p = dict(SweepSpec.defaults(), k=3)
    assert ranking_key(h, "t", p, "cpu") == ranking_key(h, "t", dict(p, epsilon=7.0, step=2, max_neurons=9), "cpu")
    assert ranking_key(h, "t", p, "cpu") != ranking_key(h, "t", dict(p, k=4), "cpu")
    assert ranking_key(h, "t", p, "cpu") != ranking_key(h, "u", p, "cpu")
    assert ranking_key(h, "t", p, "cpu") != ranking_key(h, "t", p, "cuda:1")
    del model.achilles_source  # a model built in memory: the digest of its tensors' bytes
    h = model_digest(model)
    with torch.no_grad():
        w = model.model.layers[0].mlp.down_proj.weight
        old = w[0, 0].item()
        w[0, 0] += 1e-3
        assert model_digest(model) != h
        w[0, 0] = old
    assert model_digest(model) == h


# ---- the database: schema, bad files ------------------------------------------------------------------------------
def _old_db(path: Path) -> None:
    c = sqlite3.connect(str(path))
    c.executescript(OLD_SCHEMA)
    c.execute("INSERT INTO runs (key, checkpoint, text, text_sha, params, result) VALUES ('k0', 'c', 't', 's', '{}', "
              "'{}')")
    c.commit()
    c.close()


def test_previous_schema_is_migrated(ckpts, tmp_path):
    db = tmp_path / "old.db"
    _old_db(db)
    with SweepDB(str(db)) as s:
        assert s.migrated_from == 1 and s.version == SCHEMA_VERSION
        assert s.done_keys() == {"k0"}
        assert int(s.conn.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
    with SweepDB(str(db)) as s:
        assert s.migrated_from is None
    # a sweep resumes on it, its rows kept
    spec = _spec(ckpts[:1], db, eps=(0.02,))
    rep = run_sweep(spec, log=None)
    assert rep.complete and len(db_keys(db)) == 1 + rep.total


@pytest.mark.parametrize("kind", ["newer", "foreign", "text", "random_bytes"])
def test_unusable_databases_are_refused_unchanged(ckpts, tmp_path, kind, capsys):
    db = tmp_path / "x.db"
    if kind == "newer":
        _old_db(db)
        c = sqlite3.connect(str(db))
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        c.commit()
        c.close()
        match = "newer"
    elif kind == "foreign":
        c = sqlite3.connect(str(db))
        c.execute("CREATE TABLE notes (x)")
        c.commit()
        c.close()
        match = "not a sweep database"
    elif kind == "text":
        db.write_text("key,value\n1,2\n")
        match = "not an SQLite database"
    else:
        db.write_bytes(os.urandom(4096))
        match = "not an SQLite database"
    before = _sha(db)
    with pytest.raises(SweepDBError, match=match):
        SweepDB(str(db))
    spec = tmp_path / "s.yaml"
    import yaml
    spec.write_text(yaml.safe_dump(_spec(ckpts[:1], db, eps=(0.02,))))
    capsys.readouterr()
    assert main(["sweep", str(spec)]) == 2
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    assert main(["report", str(db)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(match in line for line in err), err
    assert _sha(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml", "x.db"]


def test_bad_db_paths(ckpts, tmp_path, capsys, monkeypatch):
    import yaml
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_spec(ckpts[:1], tmp_path / "unused.db", eps=(0.02,))))
    for db, match in [(tmp_path, "is a folder"), (tmp_path / "no" / "such" / "x.db", "does not exist")]:
        assert main(["sweep", str(spec), "--db", str(db)]) == 2
        assert match in capsys.readouterr().err
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK else real(p, mode))
    assert main(["sweep", str(spec), "--db", str(tmp_path / "ro.db")]) == 2
    assert "not writable" in capsys.readouterr().err
    assert not (tmp_path / "ro.db").exists() and not (tmp_path / "unused.db").exists()


def test_spec_syntax_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("checkpoints: [a, b\nparams: {k: 2}\n")
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "YAML syntax error at line" in err[0]
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    assert main(["sweep", str(tmp_path / "list.yaml")]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err
    (tmp_path / "empty_grid.yaml").write_text("db: x.db\ncheckpoints: [a]\ngrid: {epsilon: []}\n")
    assert main(["sweep", str(tmp_path / "empty_grid.yaml")]) == 2
    assert "lists no values" in capsys.readouterr().err
    (tmp_path / "bad_eps.yaml").write_text("db: x.db\ncheckpoints: [a]\ngrid: {epsilon: [0.5, -1]}\n")
    assert main(["sweep", str(tmp_path / "bad_eps.yaml")]) == 2
    assert "epsilon" in capsys.readouterr().err
    (tmp_path / "bad_k.yaml").write_text("db: x.db\ncheckpoints: [a]\nparams: {k: auto, max_k: 4}\n")
    assert main(["sweep", str(tmp_path / "bad_k.yaml")]) == 2
    assert "max_k >= 8" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "bad_k.yaml"), "--workers", "0"]) == 2
    assert not (tmp_path / "x.db").exists()


def test_dry_run_never_creates_or_changes_the_database(ckpts, tmp_path, capsys):
    import yaml
    db = tmp_path / "d.db"
    spec = tmp_path / "s.yaml"
    d = _spec(ckpts[:1], db, eps=(0.02, 0.05))
    spec.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "0/4 done; 2 Stage 1 unit(s)" in capsys.readouterr().out
    assert not db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    run_sweep({**d, "grid": {"epsilon": [0.02]}}, log=None)
    before = _sha(db)
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "2/4 done" in capsys.readouterr().out
    assert _sha(db) == before


# ---- NaN checkpoints ------------------------------------------------------------------------------------------------
def test_nan_checkpoint_becomes_error_rows_and_the_sweep_goes_on(ckpts, tmp_path, capsys):
    from transformers import LlamaForCausalLM
    nan_ck = tmp_path / "nanmodel"
    make_checkpoint(nan_ck, seed=9)
    m = LlamaForCausalLM.from_pretrained(str(nan_ck))
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight[3, 5] = float("nan")
    m.save_pretrained(str(nan_ck))
    db = tmp_path / "n.db"
    import yaml
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(_spec([nan_ck, ckpts[0]], db, eps=(0.02, 0.05))))
    assert main(["sweep", str(spec)]) == 1  # incomplete: the NaN model's jobs failed
    err = capsys.readouterr().err
    rows = load_rows(str(db))
    assert len(rows) == 4 and {r["checkpoint"] for r in rows} == {"tiny0"}
    with SweepDB(str(db)) as s:
        errs = s.errors()
    assert len(errs) == 4 and all(e["checkpoint"] == "nanmodel" for e in errs)
    import re
    assert all(re.search(r"NaN|not finite|non-finite", e["error"]) for e in errs), errs[0]["error"]
    assert "FAILED nanmodel" in err
    assert main(["report", str(db)]) == 0  # the report shows the rows and names the failures


# ---- leases and concurrent workers ------------------------------------------------------------------------------
def test_leases(tmp_path):
    with SweepDB(str(tmp_path / "l.db")) as s:
        assert s.claim("u1", "w1") and s.claim("u1", "w1")  # re-entrant for its holder
        assert not s.claim("u1", "w2")
        s.release("u1", "w2")  # not its lease: no effect
        assert not s.claim("u1", "w2")
        s.conn.execute("UPDATE leases SET heartbeat = heartbeat - 1000 WHERE unit='u1'")
        assert s.claim("u1", "w2", ttl=120)  # stale heartbeat: taken over
        assert not s.claim("u1", "w1")
        s.heartbeat("w2")
        s.release("u1", "w2")
        assert s.claim("u1", "w1")
        # a holder on this host whose process is gone is stale at once
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        s.conn.execute("UPDATE leases SET pid=? WHERE unit='u1'", (dead.pid,))
        assert s.claim("u1", "w3")
        s.release_all("w3")
        assert s.leases() == []


def test_worker_waits_for_a_live_lease_and_takes_over_a_stale_one(ckpts, tmp_path):
    import threading

    from achilles_fast.studies.sweep import _Sink
    from achilles_fast.studies.sweep.worker import run_worker
    db = str(tmp_path / "wait.db")
    spec = SweepSpec.from_dict(_spec(ckpts[:1], db, eps=(0.02,)))
    units, jobs = plan_sweep(spec)
    assert len(units) == 2
    with SweepDB(db) as other:
        assert other.claim(units[0].key, "other-live") and other.claim(units[1].key, "other-dead")
        other.conn.execute("UPDATE leases SET heartbeat = heartbeat - 1000 WHERE worker='other-dead'")
    def let_go():  # the live worker lets go once the stale unit (taken over) is done, and a little later
        with SweepDB(db) as s:
            while not set(units[1].keys) <= s.done_keys():
                time.sleep(0.1)
            time.sleep(1.0)
            s.release_all("other-live")
    t = threading.Thread(target=let_go)
    t.start()
    with SweepDB(db) as store:
        sink = _Sink(store, len(jobs), 0, lambda s: None)
        counts = run_worker(units, {c.name: c for c in spec.checkpoints}, db, sink, poll=0.2)
    t.join()
    assert sink.written == len(jobs) and counts["units"] == 2 and counts["waits"] >= 1
    with SweepDB(db) as store:
        assert store.leases() == [] and len(store.done_keys()) == len(jobs)


@pytest.mark.integration
def test_two_sweeps_on_one_database_split_the_work(ckpts, tmp_path):
    import yaml
    db = tmp_path / "c.db"
    d = spec_dict(ckpts, db, epsilons=(0.01, 0.02), rankers=("sensitivity", "random"))
    d["params"].update(k=16)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(d))
    total = len(SweepSpec.from_dict(d).jobs())
    cmd = [sys.executable, "-m", "achilles_fast.cli", "sweep", str(spec)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    keys = db_keys(db)
    assert len(keys) == total == len(set(keys))
    ran = [sum(1 for line in err.splitlines() if line.startswith("[") and "neuron(s)" in line) for _, err in outs]
    assert sum(ran) == total, f"every job ran exactly once across the two workers: {ran}"
    with SweepDB(str(db)) as s:
        assert s.leases() == []


@pytest.mark.integration
def test_local_worker_processes(ckpts, tmp_path, capsys):
    import yaml
    db = tmp_path / "w.db"
    d = spec_dict(ckpts, db, epsilons=(0.01, 0.02), rankers=("sensitivity", "random"))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(d))
    total = len(SweepSpec.from_dict(d).jobs())
    assert main(["sweep", str(spec), "--workers", "2", "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert f"{total} written" in out.out and "by 2 workers x 1 thread(s)" in out.err
    rows = load_rows(str(db))
    assert len(rows) == total == len({r["key"] for r in rows})
    assert os.getpid() not in {r["pid"] for r in rows}
    assert main(["sweep", str(spec), "--workers", "2", "--ray", "local"]) == 2
    # sized (no --threads): cores // 2 threads each, the busy worker takes the idle one's cores; same rows
    d["db"] = str(tmp_path / "sized.db")
    spec.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(spec), "--workers", "2"]) == 0
    def outcome(rs):
        return {r["key"]: ([n["name"] for n in (r["result"] or {}).get("neurons", [])], r["log10_ratio"]) for r in rs}
    assert outcome(load_rows(d["db"])) == outcome(rows)


def test_prefetcher():
    from achilles_fast.studies.sweep.prefetch import Prefetcher
    from achilles_fast.studies.sweep.spec import Checkpoint
    torch.set_num_threads(2)
    loads = []

    def load(ck):
        loads.append(ck.name)
        time.sleep(0.05)
        return (ck.name, torch.get_num_threads())

    pre = Prefetcher(load, available=lambda: 1 << 40)
    pre.fits = lambda ck: True
    a, b = Checkpoint("a", "/x/a"), Checkpoint("b", "/x/b")
    assert pre.start(a) and not pre.start(b)  # one at a time
    assert torch.get_num_threads() == 2
    assert pre.take("a") == ("a", 1)  # loaded with one thread; this thread keeps its two
    assert torch.get_num_threads() == 2
    assert pre.take("a") is None
    assert pre.start(b) and pre.take("a") is None and pre.take("b") is None  # another name drops it
    tight = Prefetcher(load, available=lambda: 0)
    assert tight.fits(a) is False
    assert not tight.start(a) and tight.skipped == 1
    pre.close()


def test_prefetch_in_a_sweep(ckpts, tmp_path):
    from achilles_fast.studies.sweep.worker import run_worker
    spec = SweepSpec.from_dict(_spec(ckpts, tmp_path / "pf.db", eps=(0.02,)))
    units, jobs = plan_sweep(spec)
    with SweepDB(str(tmp_path / "pf.db")) as store:
        from achilles_fast.studies.sweep import _Sink
        sink = _Sink(store, len(jobs), 0, lambda s: None)
        counts = run_worker(units, {c.name: c for c in spec.checkpoints}, str(tmp_path / "pf.db"), sink,
                            log=lambda s: None)
    assert counts["prefetched"] == 2 and sink.written == len(jobs)  # tiny models fit: the 2nd and 3rd prefetched


def test_sized_worker_rebalances_between_forwards(ckpts, tmp_path):
    """A worker with a core share is marked busy while a unit runs and rebalances before the method's forwards
    (the between-forwards callback); a worker without one never does."""
    from achilles_fast.studies.sweep import _Sink
    from achilles_fast.studies.sweep.worker import run_worker
    from achilles_fast.threads import CoreShare

    class Spy(CoreShare):
        calls = 0

        def rebalance(self, force: bool = False) -> None:
            if not force:
                assert self.marker.exists()  # only inside a unit
                Spy.calls += 1
            super().rebalance(force)

    spec = SweepSpec.from_dict(_spec(ckpts[:1], tmp_path / "cs.db", eps=(0.02,)))
    units, jobs = plan_sweep(spec)
    (tmp_path / "cores").mkdir()
    share = Spy(str(tmp_path / "cores"), n_cores=torch.get_num_threads())  # one busy worker: threads unchanged
    with SweepDB(str(tmp_path / "cs.db")) as store:
        sink = _Sink(store, len(jobs), 0, lambda s: None)
        run_worker(units, {c.name: c for c in spec.checkpoints}, str(tmp_path / "cs.db"), sink, log=lambda s: None,
                   prefetch=False, share=share)
    assert sink.written == len(jobs) and Spy.calls > len(jobs)  # several forwards per job
    assert not share.marker.exists()


# ---- report --format ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_db(ckpts, tmp_path_factory):
    db = tmp_path_factory.mktemp("fmt") / "f.db"
    d = _spec(ckpts[:1], db, eps=(0.02, 0.05))
    d["grid"]["k"] = [2, "auto"]
    d["params"]["max_k"] = 8
    assert run_sweep(d, log=None).complete
    return db


def test_report_formats(small_db, tmp_path, capsys):
    import csv
    before = _sha(small_db)
    assert main(["report", str(small_db), "--format", "csv"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(rows) == 8 and {r["k"] for r in rows} == {"2", "auto"}
    assert all(r["k_used"] for r in rows if r["k"] == "auto")
    assert main(["report", str(small_db), "--format", "json", "--out", str(tmp_path / "r.json")]) == 0
    recs = json.loads((tmp_path / "r.json").read_text())
    assert len(recs) == 8 and {r["checkpoint"] for r in recs} == {"tiny0"}
    assert main(["report", str(small_db), "--format", "parquet"]) == 2  # needs --out
    assert _sha(small_db) == before


def test_report_parquet(small_db, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["report", str(small_db), "--format", "parquet", "--out", str(tmp_path / "r.parquet")]) == 0
    t = pq.read_table(str(tmp_path / "r.parquet"))
    assert t.num_rows == 8 and "n_critical" in t.column_names
    assert sorted(set(t.column("k").to_pylist())) == ["2", "auto"]  # one type per column


def test_report_parquet_without_pyarrow(small_db, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["report", str(small_db), "--format", "parquet", "--out", str(tmp_path / "r.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install pyarrow" in err[0]
    assert not (tmp_path / "r.parquet").exists()
    from achilles_fast.studies.sweep.report import rows_dataframe
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        rows_dataframe(load_rows(str(small_db)))


def test_dry_run_lines_match_the_plan_and_the_database(ckpts, tmp_path, capsys):
    """The library's dry run: one line per job (pending / done, in plan order) and the count; the CLI prints it."""
    from achilles_fast.studies.sweep.dry_run import dry_run
    db = tmp_path / "d.db"
    d = _spec(ckpts[:1], db, eps=(0.02, 0.05))
    spec = SweepSpec.from_dict(d)
    units, jobs = plan_sweep(spec)
    lines = dry_run(spec, str(db))
    assert len(lines) == len(jobs) + 1 and lines[-1] == f"0/{len(jobs)} done; {len(units)} Stage 1 unit(s)"
    assert [ln.split()[:2] for ln in lines[:-1]] == [["pending", j.key] for u in units for j in u.jobs]
    assert not db.exists()
    run_sweep({**d, "grid": {"epsilon": [0.02]}}, log=None)
    done = set(db_keys(db))
    lines = dry_run(spec, str(db))
    assert [ln.split()[0] == "done" for ln in lines[:-1]] == [j.key in done for u in units for j in u.jobs]
    assert lines[-1].startswith(f"{len(done)}/{len(jobs)} done")
    import yaml
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    capsys.readouterr()
    assert main(["sweep", str(tmp_path / "s.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
