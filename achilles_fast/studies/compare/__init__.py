"""``compare``: do critical neurons persist, transfer and emerge across checkpoints (fine-tunes, quantisations,
training steps)?

One find per checkpoint through the sweep machinery (a resumable SQLite database, stored rankings, prefetch,
leases, threads sized to cores), then, from the finished rows and stored rankings: Jaccard of the sets and Spearman
of the Stage 1 scores (``metrics``), the transfer matrix with a random-set control (``transfer``: each checkpoint
loaded once, for its column), persistence per neuron and the series along the checkpoints. ``report`` writes
compare.json, report.md, report.html and the figures.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ...method.config import FindConfig
from ..sweep import run_sweep
from ..sweep.db import SweepDB, check_db_path, validate_db
from ..sweep.plan import plan_units
from ..sweep.spec import Checkpoint, SweepSpec, TextItem
from . import metrics
from .transfer import transfer_column

ORDERS = ("given", "revision")
COMPARE_KEYS = ("checkpoints", "jaccard", "spearman", "transfer", "transfer_random", "persistence", "series")


@dataclasses.dataclass(frozen=True)
class CompareParams:
    """What ``compare`` adds to the find parameters, validated once."""

    order: str = "given"  # given, or revision: `...@stepN` revisions sorted numerically
    top_k: int = 100  # channels per checkpoint for Spearman and the series' "enters the top-K"
    random_seeds: int = 3  # random down_proj sets per transfer cell (their mean is the control)

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"unknown order {self.order!r}: expected one of {', '.join(ORDERS)}")
        for name in ("top_k", "random_seeds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")


class CompareError(ValueError):
    """Checkpoints that cannot be compared (one architecture needed, at least two checkpoints, ...)."""


def compare(checkpoints: Optional[Sequence[str]] = None, out: Optional[str] = None, *, db: Optional[str] = None,
            text: Optional[str] = None, order: str = "given", top_k: int = 100, random_seeds: int = 3,
            workers: int = 1, log: Optional[Callable[[str], None]] = print, **params) -> Dict[str, Any]:
    """Compare the critical sets of ``checkpoints`` (anything ``find`` takes: hub ids with revisions, folders, GGUF
    files; one architecture) and write the report into the folder ``out``.

    ``db``: the sweep database (default ``out/compare.db``); re-running with the same ``out``/``db`` reuses finished
    finds and transfer cells. ``checkpoints`` None: compare the finished rows of the existing sweep database ``db``
    (one text and one parameter set). ``params``: FindConfig fields. Returns the compare.json document; failed
    checkpoints are entries with an ``error`` (their rows and columns None)."""
    cp = CompareParams(order=order, top_k=top_k, random_seeds=random_seeds)
    cfg = FindConfig.make(**params)
    log = log or (lambda s: None)
    if out is None:
        raise CompareError("compare needs an output folder (out=, CLI --out)")
    out_dir = Path(out).expanduser()
    _check_out(out_dir)
    t0 = time.perf_counter()
    if checkpoints is not None:
        cks = _checkpoints(checkpoints, cp.order)
        _check_architecture(cks)
        if db is not None:
            check_db_path(db)
        out_dir.mkdir(parents=True, exist_ok=True)
        db = str(db or out_dir / "compare.db")
        validate_db(db)
        item = TextItem("default", None) if text is None else TextItem("text", text)
        spec = SweepSpec.from_dict({"checkpoints": [dataclasses.asdict(c) for c in cks],
                                    "texts": ["default" if item.text is None else {"name": "text", "text": text}],
                                    "params": _own(cfg.params()), "db": db})
        run_sweep(spec, db=db, log=log, workers=workers)
        rows, rankings, errors = _read(db, [j.key for j in spec.jobs()], [c.name for c in cks], spec)
    else:
        if db is None:
            raise CompareError("give at least two checkpoints, or --db DB to compare a sweep's finished rows")
        check_db_path(db, write=False)
        validate_db(db)
        cks, item, cfg, rows, rankings, errors = _from_db(db, text, cp.order)
        out_dir.mkdir(parents=True, exist_ok=True)
    seconds_finds = time.perf_counter() - t0
    names = [c.name for c in cks]
    sets = [None if r is None else [n["name"] for n in r["result"]["neurons"]] for r in rows]
    ranked = [None if r is None else _ranked(rec) for r, rec in zip(rows, rankings)]
    t1 = time.perf_counter()
    transfer, transfer_random = _transfer(cks, rows, sets, item, cfg, cp, out_dir, log)
    doc = {
        "checkpoints": [_entry(c, r, e) for c, r, e in zip(cks, rows, errors)],
        "jaccard": metrics.jaccard([None if s is None else set(s) for s in sets]),
        "spearman": metrics.spearman(ranked, cp.top_k),
        "transfer": transfer,
        "transfer_random": transfer_random,
        "persistence": metrics.persistence(names, sets, ranked),
        "series": metrics.series(names, sets, transfer[0], ranked, cp.top_k),
    }
    run = {"params": cfg.params(), "compare": dataclasses.asdict(cp), "text": item.name, "text_sha": item.sha,
           "db": db, "seconds": {"finds": seconds_finds, "transfer": time.perf_counter() - t1,
                                 "total": time.perf_counter() - t0}}
    from .report import write_report
    write_report(doc, run, out_dir)
    log(f"compare: {len(cks)} checkpoint(s), {sum(e is not None for e in errors)} failed -> {out_dir}")
    return doc


# ---- inputs -------------------------------------------------------------------------------------------------------
def _check_out(out_dir: Path) -> None:
    """The output folder can be made and written (checked before any model work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CompareError(f"--out {out_dir} exists and is not a folder")
    base = out_dir
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise CompareError(f"--out {out_dir}: {base} is a file, not a folder")
    import os
    if not os.access(base, os.W_OK | os.X_OK):
        raise CompareError(f"--out {out_dir}: cannot write in {base} (permission denied)")


def _checkpoints(specs: Sequence[str], order: str) -> List[Checkpoint]:
    specs = [str(s) for s in specs]
    if len(specs) < 2:
        raise CompareError(f"compare needs at least two checkpoints, got {len(specs)}")
    if order == "revision":
        specs = sorted(specs, key=metrics.revision_key)
    cks = [Checkpoint.parse(s) for s in specs]
    labels = [c.name for c in cks]
    dup = sorted({n for n in labels if labels.count(n) > 1})
    if dup:
        raise CompareError(f"two checkpoints share the label {dup[0]!r}: compare needs distinct checkpoints")
    return cks


def _check_architecture(cks: Sequence[Checkpoint]) -> None:
    """One architecture for all (from the configs alone: nothing loads weights). A checkpoint that cannot be found
    is left to its find, which records it as an error row."""
    from ...models.architecture import check_same_architecture, parameter_shapes
    found = []
    for c in cks:
        try:
            found.append((parameter_shapes(c.path), c.name))
        except FileNotFoundError:
            continue
    try:
        check_same_architecture([s for s, _ in found], [n for _, n in found])
    except ValueError as e:
        raise CompareError(str(e)) from None


def _own(params: Dict[str, Any]) -> Dict[str, Any]:
    d = FindConfig.defaults()
    return {k: v for k, v in params.items() if d.get(k) != v}


def _read(db: str, keys: Sequence[str], names: Sequence[str], spec: SweepSpec):
    """Per checkpoint (in ``names`` order): its row (None if it failed), its stored ranking record, its error."""
    units = plan_units(spec.jobs(), names)
    with SweepDB(db, readonly=True) as store:
        by_key = {r["key"]: r for r in store.rows()}
        recs = store.rankings([u.key for u in units])
        errs = {e["key"]: e["error"] for e in store.errors()}
    rows, rankings, errors = [], [], []
    for k in keys:
        r = by_key.get(k)
        rows.append(r)
        rankings.append(None if r is None else recs.get(r["result"]["stats"].get("ranking_key")))
        errors.append(None if r is not None else errs.get(k, "no result (the find did not finish)"))
    return rows, rankings, errors


def _from_db(db: str, text: Optional[str], order: str):
    """Checkpoints, text, parameters, rows, rankings and errors of an existing sweep database (one text, one
    parameter set)."""
    with SweepDB(db, readonly=True) as store:
        rows = store.rows()
        recs_all = store.rankings({r["result"]["stats"].get("unit") for r in rows})
    if not rows:
        raise CompareError(f"--db {db}: no finished rows to compare")
    combos = {(r["text_sha"], json.dumps(r["params"], sort_keys=True)) for r in rows}
    if len(combos) > 1:
        raise CompareError(f"--db {db}: its rows use {len(combos)} texts/parameter sets; compare needs one (run "
                           f"compare on the checkpoints instead)")
    first = {}
    for r in rows:
        first.setdefault(r["checkpoint"], r)
    if len(first) < 2:
        raise CompareError(f"--db {db}: rows of {len(first)} checkpoint(s); compare needs at least two")
    specs = {c: r["checkpoint_path"] for c, r in first.items()}
    names = list(first)
    if order == "revision":
        names.sort(key=lambda c: metrics.revision_key(specs[c]))
    cks = [Checkpoint(name=c, path=specs[c]) for c in names]
    r0 = first[names[0]]
    item = TextItem(r0["text"], None if r0["text"] == "default" and text is None else text)
    if item.sha != r0["text_sha"]:
        raise CompareError(f"--db {db}: its rows were scored on the text {r0['text']!r} (sha {r0['text_sha']}); "
                           f"pass that text with --text-file")
    cfg = FindConfig(**r0["params"])
    rs = [first[c] for c in names]
    return (cks, item, cfg, rs, [recs_all.get(r["result"]["stats"].get("ranking_key")) for r in rs],
            [None] * len(rs))


def _ranked(rec: Optional[Dict[str, Any]]) -> Dict[str, tuple]:
    """A stored ranking record -> {neuron name: (0-based rank, score)}."""
    if rec is None:
        return {}
    sizes = [int(n) for _, n in rec["targets"]]
    offsets = np.cumsum([0] + sizes)
    ch = np.frombuffer(rec["channels"], dtype=np.int64)
    sc = np.frombuffer(rec["scores"], dtype=np.float32)
    which = np.searchsorted(offsets, ch, side="right") - 1
    return {f"{rec['targets'][m][0]}:{int(c - offsets[m])}": (i, float(s))
            for i, (m, c, s) in enumerate(zip(which, ch, sc))}


def _entry(ck: Checkpoint, row: Optional[Dict], error: Optional[str]) -> Dict[str, Any]:
    if row is None:
        return {"name": ck.name, "spec": ck.path, "error": error, "log10_ratio": None, "n_critical": None,
                "neurons": None, "converged": None, "source": None}
    res = row["result"]
    return {"name": ck.name, "spec": ck.path, "error": None, "log10_ratio": row["log10_ratio"],
            "n_critical": row["n_critical"], "neurons": [n["name"] for n in res["neurons"]],
            "converged": row["converged"], "paper_entries": res["stats"].get("paper_entries"),
            "source": res.get("source") or {}}


# ---- transfer, each checkpoint loaded once ------------------------------------------------------------------------
def _transfer(cks, rows, sets, item: TextItem, cfg: FindConfig, cp: CompareParams, out_dir: Path, log):
    """N x N transfer and random-control matrices; cells cached in ``out_dir/transfer_cache.json`` by (column's job
    key, the row's set, text, parameters), so a re-run loads only checkpoints with new cells."""
    from ...models.loading import load_model
    from ...utils import atomic_write
    n = len(cks)
    transfer = [[None] * n for _ in range(n)]
    random_ = [[None] * n for _ in range(n)]
    cache_path = out_dir / "transfer_cache.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    for j, (ck, row) in enumerate(zip(cks, rows)):
        if row is None:
            continue
        keys = [None if s is None else _cell_key(row["key"], s, item, cfg, cp) for s in sets]
        if all(k is None or k in cache for k in keys):
            log(f"transfer: column {ck.name} reused")
        else:
            log(f"transfer: column {ck.name} ({sum(s is not None for s in sets)} set(s))")
            model, tok, _ = load_model(ck.path, dtype=ck.dtype, device=_device(ck.device))
            try:
                _, cells, rnd = transfer_column(model, tok, sets, item.text, cfg.max_tokens, cp.random_seeds, cfg.max_batch_tokens,
                                                column=j)
            finally:
                del model
                gc.collect()
            for k, c, r in zip(keys, cells, rnd):
                if k is not None:
                    cache[k] = [c, r]
            atomic_write(cache_path, json.dumps(cache))
        for i, k in enumerate(keys):
            if k is not None:
                transfer[i][j], random_[i][j] = cache[k]
    return transfer, random_


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _cell_key(column_key: str, names: Sequence[str], item: TextItem, cfg: FindConfig, cp: CompareParams) -> str:
    blob = json.dumps({"column": column_key, "set": sorted(names), "text": item.sha, "max_tokens": cfg.max_tokens,
                       "seeds": cp.random_seeds}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]
