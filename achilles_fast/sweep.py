"""Sweeps: checkpoints x texts x parameter grids, streamed into a SQLite database, locally or on Ray.

Spec (YAML or a dict)::

    db: sweep.db                       # optional; the CLI's --db wins
    checkpoints:                       # local HF folders, .gguf files, named defaults
      - /data/stories260K
      - smollm2-135m
      - {name: tiny, path: ./tiny, dtype: float32, device: auto}
    texts:                             # default: the built-in passage
      - default
      - {name: wiki, file: wiki.txt}
      - {name: hello, text: "Once upon a time ..."}
    params: {max_tokens: 128, k: 20}   # fixed find_critical parameters
    grid: {epsilon: [0.5, 1.0], ranker: [sensitivity, random]}   # every combination
    ray: {num_gpus: 1, num_cpus: 1, retries: 2}

Every job has a key (hash of checkpoint label, text hash and the non-default parameters). A run skips keys
already in the database, so re-running the same command resumes a killed sweep. Locally the jobs of one
checkpoint run in this process; with Ray each checkpoint is one task (a streaming generator) running the very
same ``run_checkpoint`` generator, and the driver writes the rows it yields.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import os
import socket
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from .sweepdb import SweepDB

RANKERS_KEY = "ranker"
DEFAULT_RANKER = "sensitivity"
# find_critical parameters a sweep may set (device/dtype belong to the checkpoint; progress is forced off)
_EXCLUDED = {"model", "tokenizer", "text", "eval_text", "device", "dtype", "progress", "verify"}


def find_params_defaults() -> Dict[str, Any]:
    from .api import find_critical
    sig = inspect.signature(find_critical)
    return {n: p.default for n, p in sig.parameters.items() if n not in _EXCLUDED}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass
class Checkpoint:
    name: str
    path: str
    dtype: str = "float32"
    device: str = "auto"

    @classmethod
    def parse(cls, item: Union[str, Dict[str, Any]], base: Optional[Path] = None) -> "Checkpoint":
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise ValueError(f"checkpoint entry {item!r}: expected a path string or a mapping with 'path'")
        unknown = set(item) - {"name", "path", "dtype", "device"}
        if unknown:
            raise ValueError(f"checkpoint entry {item!r}: unknown keys {sorted(unknown)}")
        path = str(item["path"])
        p = Path(path).expanduser()
        if base is not None and not p.is_absolute() and (base / p).exists():
            path = str((base / p).resolve())
        name = item.get("name") or _default_name(path)
        return cls(name=str(name), path=path, dtype=str(item.get("dtype", "float32")),
                   device=str(item.get("device", "auto")))


def _default_name(path: str) -> str:
    """Label of a checkpoint without a 'name': the folder/file name of a path, else the spec (named models).

    It does not depend on whether the path exists, so a job's key is the same before and after it appears.
    """
    looks_like_path = "/" in path or os.sep in path or path.endswith(".gguf") or Path(path).expanduser().exists()
    return Path(path.rstrip("/")).name if looks_like_path else path


@dataclasses.dataclass
class TextItem:
    name: str
    text: Optional[str]  # None: the built-in default passage

    @property
    def sha(self) -> str:
        return hashlib.sha256((self.text if self.text is not None else "\0default").encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, item: Union[str, Dict[str, Any]], base: Optional[Path] = None) -> "TextItem":
        if item == "default" or item is None:
            return cls("default", None)
        if isinstance(item, str):
            item = {"file": item}
        if "text" in item:
            return cls(str(item.get("name") or "text"), str(item["text"]))
        if "file" in item:
            p = Path(item["file"]).expanduser()
            if base is not None and not p.is_absolute():
                p = base / p
            return cls(str(item.get("name") or p.stem), p.read_text(encoding="utf-8"))
        raise ValueError(f"text entry {item!r}: expected 'default', a file path, or a mapping with 'text' or 'file'")


@dataclasses.dataclass
class Job:
    checkpoint: str
    text: str
    text_sha: str
    params: Dict[str, Any]  # full (defaults filled in); recorded in the row
    key: str  # see job_key
    text_body: Optional[str] = dataclasses.field(default=None, repr=False)


def job_key(checkpoint: str, text_sha: str, params: Dict[str, Any], defaults: Dict[str, Any]) -> str:
    """Hash of checkpoint label, text hash and the parameters that differ from their defaults.

    Leaving defaults out makes "k: 100" written out the same job as k omitted, and keeps the keys of an existing
    database valid when a later version adds a parameter (with a default) to find_critical.
    """
    own = {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}
    blob = json.dumps({"checkpoint": checkpoint, "text_sha": text_sha, "params": own}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclasses.dataclass
class SweepSpec:
    checkpoints: List[Checkpoint]
    texts: List[TextItem]
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    grid: Dict[str, List[Any]] = dataclasses.field(default_factory=dict)
    db: Optional[str] = None
    ray: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], base: Optional[Path] = None) -> "SweepSpec":
        unknown = set(d) - {"checkpoints", "texts", "params", "grid", "db", "ray"}
        if unknown:
            raise ValueError(f"sweep spec: unknown top-level keys {sorted(unknown)}")
        if not d.get("checkpoints"):
            raise ValueError("sweep spec: 'checkpoints' must list at least one checkpoint")
        cks = [Checkpoint.parse(c, base) for c in d["checkpoints"]]
        names = [c.name for c in cks]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sweep spec: duplicate checkpoint names {sorted(dup)}; give each a 'name'")
        texts = [TextItem.parse(t, base) for t in (d.get("texts") or ["default"])]
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in (d.get("grid") or {}).items()}
        db = d.get("db")
        if db and base is not None and not Path(db).is_absolute():
            db = str(base / db)
        spec = cls(cks, texts, dict(d.get("params") or {}), grid, db, dict(d.get("ray") or {}))
        spec.jobs()  # validate parameter names now
        return spec

    @classmethod
    def load(cls, path: str) -> "SweepSpec":
        import yaml
        p = Path(path)
        with open(p, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        return cls.from_dict(d, base=p.resolve().parent)

    def param_sets(self) -> List[Dict[str, Any]]:
        defaults = self.defaults()
        allowed = set(defaults)
        for k in list(self.params) + list(self.grid):
            if k not in allowed:
                raise ValueError(f"sweep spec: unknown parameter {k!r}; allowed: {', '.join(sorted(allowed))}")
        keys = list(self.grid)
        out = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            p = dict(defaults)
            p.update(self.params)
            p.update(dict(zip(keys, combo)))
            out.append(p)
        return out

    @staticmethod
    def defaults() -> Dict[str, Any]:
        return {**find_params_defaults(), RANKERS_KEY: DEFAULT_RANKER}

    def jobs(self) -> List[Job]:
        sets, d = self.param_sets(), self.defaults()
        return [Job(c.name, t.name, t.sha, p, job_key(c.name, t.sha, p, d), t.text)
                for c in self.checkpoints for t in self.texts for p in sets]


# ---- executing jobs (same code locally and in a Ray task) ------------------------------------------------
def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_job(model, tokenizer, job: Job):
    """One job -> CriticalResult (find_critical, or a baseline ranker through the same Stage 2)."""
    p = dict(job.params)
    ranker = p.pop(RANKERS_KEY, DEFAULT_RANKER)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*using the first max_tokens")  # truncation is the spec's
        if ranker == DEFAULT_RANKER:
            from .api import find_critical
            return find_critical(model, tokenizer, job.text_body, progress=False, **p)
        from .baselines import baseline_result
        return baseline_result(model, tokenizer, job.text_body, method=ranker, **p)


def run_checkpoint(ckpt: Dict[str, Any], jobs: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Load one checkpoint and run its jobs; yields one dict per job: a DB row, or {"error": ...}.

    Arguments are plain dicts so the generator can run as a Ray task unchanged.
    """
    from .loading import load_model
    ck = Checkpoint(**ckpt)
    jobs = [Job(**j) for j in jobs]
    device = _device(ck.device)
    t0 = time.perf_counter()
    try:
        model, tok, model_name = load_model(ck.path, dtype=ck.dtype, device=device)
    except Exception as e:
        for j in jobs:
            yield _error(j, e)
        return
    load_s = time.perf_counter() - t0
    for j in jobs:
        started = _now()
        t1 = time.perf_counter()
        try:
            res = run_job(model, tok, j)
        except Exception as e:
            yield _error(j, e)
            continue
        res.model = model_name
        secs = time.perf_counter() - t1
        yield {
            "key": j.key, "checkpoint": j.checkpoint, "checkpoint_path": ck.path, "model": model_name,
            "text": j.text, "text_sha": j.text_sha, "params": j.params, "n_critical": len(res.neurons),
            "converged": res.converged, "log10_ratio": res.log10_ratio, "clean_nll": res.clean_nll,
            "epsilon": res.epsilon, "seconds": secs, "load_seconds": load_s, "started_at": started,
            "finished_at": _now(), "host": socket.gethostname(), "pid": os.getpid(), "device": device,
            "versions": res.versions, "result": res.to_dict(),
        }


def _error(job: Job, e: BaseException) -> Dict[str, Any]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "key": job.key,
            "checkpoint": job.checkpoint, "text": job.text, "params": job.params}


# ---- the driver ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepReport:
    total: int
    skipped: int  # already in the database when the run started
    written: int
    failed: int
    retries: int = 0

    @property
    def complete(self) -> bool:
        return self.skipped + self.written == self.total


class _Sink:
    """Writes what run_checkpoint yields to the database and reports progress."""

    def __init__(self, db: SweepDB, total: int, done: int, log: Callable[[str], None]):
        self.db, self.total, self.done, self.log = db, total, done, log
        self.written = self.failed = 0

    def __call__(self, item: Dict[str, Any]) -> None:
        if "error" in item:
            self.failed += 1
            self.db.record_error(item["key"], item["checkpoint"], item["text"], item["params"], item["error"], _now())
            self.log(f"FAILED {item['checkpoint']} / {item['text']}: {item['error']}")
            return
        if self.db.insert(item):
            self.written += 1
            self.done += 1
        lr = item["log10_ratio"]
        self.log(f"[{self.done}/{self.total}] {item['checkpoint']} / {item['text']} / "
                 f"{_short_params(item['params'])}: {item['n_critical']} neuron(s)"
                 f"{'' if item['converged'] else ' (not converged)'}, log10 ratio "
                 f"{'n/a' if lr is None else f'{lr:.3f}'} ({item['seconds']:.1f}s)")


def _short_params(p: Dict[str, Any]) -> str:
    keys = ("ranker", "epsilon", "k", "alpha", "seed", "max_neurons", "scope", "max_tokens")
    return " ".join(f"{k}={p[k]}" for k in keys if k in p)


def _by_checkpoint(spec: SweepSpec, pending: List[Job]):
    out = []
    for c in spec.checkpoints:
        js = [dataclasses.asdict(j) for j in pending if j.checkpoint == c.name]
        if js:
            out.append((dataclasses.asdict(c), js))
    return out


def run_sweep(spec: Union[SweepSpec, Dict[str, Any], str], db: Optional[str] = None, ray_address: Optional[str] = None,
              num_gpus: Optional[float] = None, num_cpus: Optional[float] = None, retries: Optional[int] = None,
              log: Optional[Callable[[str], None]] = print) -> SweepReport:
    """Run (or resume) a sweep; rows go to the SQLite file ``db`` (default: the spec's ``db``).

    ray_address: None runs locally in this process; "auto"/"ray://..."/an address connects to a Ray cluster,
    "local" starts one here (an already initialised Ray is reused). One Ray task per checkpoint.
    """
    if isinstance(spec, str):
        spec = SweepSpec.load(spec)
    elif isinstance(spec, dict):
        spec = SweepSpec.from_dict(spec)
    db = db or spec.db
    if not db:
        raise ValueError("no database: pass db= (CLI --db) or set 'db' in the spec")
    log = log or (lambda s: None)
    jobs = spec.jobs()
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("sweep spec: two jobs have the same key (duplicate texts or grid values?)")
    with SweepDB(db) as store:
        done = store.done_keys(keys)
        pending = [j for j in jobs if j.key not in done]
        log(f"sweep: {len(jobs)} job(s), {len(done)} already in {db}, {len(pending)} to run"
            f"{'' if ray_address is None else f' on Ray ({ray_address})'}")
        sink = _Sink(store, len(jobs), len(done), log)
        groups = _by_checkpoint(spec, pending)
        rcfg = dict(spec.ray)
        retries = int(rcfg.get("retries", 2) if retries is None else retries)
        n_retries = 0
        if ray_address is None:
            for ck, js in groups:
                for item in run_checkpoint(ck, js):
                    sink(item)
        else:
            from .sweep_ray import run_on_ray
            n_retries = run_on_ray(groups, sink, store, ray_address,
                                   num_gpus=float(rcfg.get("num_gpus", 0) if num_gpus is None else num_gpus),
                                   num_cpus=float(rcfg.get("num_cpus", 1) if num_cpus is None else num_cpus),
                                   retries=retries, log=log)
        return SweepReport(total=len(jobs), skipped=len(done), written=sink.written, failed=sink.failed,
                           retries=n_retries)
