"""Executing sweep units: the same generators run locally and inside a Ray task.

A unit (see ``plan``) runs one Stage 1 (or takes its stored ranking) and one Stage 2 search per group of jobs that
differ only in epsilon, through ``find_critical(..., ranked=..., epsilon=[...])``: the rows are those of running
each job on its own. Each item yielded is a DB row, an error ({"error": ...}) or a ranking record to store
({"ranking_key": ...}); the caller writes them.
"""
from __future__ import annotations

import math
import os
import socket
import time
import traceback
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ...method.api import find_critical, rank_neurons
from ...method.config import FindConfig
from ...models.loading import load_model, model_digest
from ...models.registry import discover_targets
from .plan import Unit, ranking_from_record, ranking_key, ranking_record
from .spec import Checkpoint, Job, _now


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


class Loaded:
    """A checkpoint loaded for a sweep: model, tokenizer, display name, device, load time; its weights' hash is
    computed on first use."""

    def __init__(self, ck: Checkpoint):
        self.ck = ck
        self.device = _device(ck.device)
        t0 = time.perf_counter()
        self.model, self.tok, self.name = load_model(ck.path, dtype=ck.dtype, device=self.device)
        self.load_s = time.perf_counter() - t0
        self._hash: Optional[str] = None

    @property
    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = model_digest(self.model)
        return self._hash


def run_job(model, tokenizer, job: Job):
    """One job on its own -> CriticalResult (find_critical with the job's FindConfig)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*using the first max_tokens")  # truncation is the spec's
        return find_critical(model, tokenizer, job.text_body, config=FindConfig(**job.params), progress=False)


def _check_finite(res) -> None:
    """A result built on a non-finite forward cannot be a row (NaN/Inf weights or overflow)."""
    if not math.isfinite(res.clean_nll):
        raise ValueError(f"the clean forward is not finite (mean NLL {res.clean_nll}): NaN/Inf in the model's "
                         f"weights or an overflow")


def _ranking(lc: Loaded, unit: Unit, jobs: Sequence[Job], stored: Dict[str, Dict[str, Any]]):
    """(ranking, how, key, record to store or None) for a unit's jobs: the stored one when it is long enough."""
    first = jobs[0]
    max_n = max(int(j.params["max_neurons"]) for j in jobs)
    key = ranking_key(lc.weights_hash, first.text_sha, first.params, lc.device)
    rec = stored.get(key)
    if rec is not None:
        targets = discover_targets(lc.model, first.params["scope"], allow_discovery=first.params["discover"])
        total = sum(t.num_channels for t in targets)
        r = ranking_from_record(rec, targets)
        if r is not None and (len(r) >= max_n or len(r) == total):
            return r, "stored", key, None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*using the first max_tokens")
        r = rank_neurons(lc.model, lc.tok, first.text_body, config=FindConfig(**dict(first.params, max_neurons=max_n)),
                         progress=False)
    finite = bool(r.scores.isfinite().all())
    return r, "computed", key, ranking_record(key, unit, r) if finite else None


def run_unit(lc: Loaded, unit: Unit, jobs: Optional[Sequence[Job]] = None,
             stored: Optional[Dict[str, Dict[str, Any]]] = None) -> Iterator[Dict[str, Any]]:
    """Run ``jobs`` (default: all) of one unit on a loaded checkpoint; yields rows, errors and a ranking record.

    Row ``seconds`` is the job's share of the work: its search group's time split over the group, plus the unit's
    Stage 1 split over the unit's jobs (so the column sums to the time spent)."""
    jobs = list(unit.jobs if jobs is None else jobs)
    if not jobs:
        return
    t0 = time.perf_counter()
    started = _now()
    try:
        ranking, how, rkey, rec = _ranking(lc, unit, jobs, stored or {})
    except Exception as e:
        for j in jobs:
            yield _error(j, e)
        return
    if rec is not None:
        yield rec
    rank_share = (time.perf_counter() - t0) / len(jobs)
    wanted = {j.key for j in jobs}
    for group in unit.searches():
        group = [j for j in group if j.key in wanted]
        if not group:
            continue
        t1 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*using the first max_tokens")
                results = find_critical(lc.model, lc.tok, group[0].text_body, config=FindConfig(**group[0].params),
                                        epsilon=[j.params["epsilon"] for j in group], ranked=ranking,
                                        progress=False)
            for res in results:
                _check_finite(res)
        except Exception as e:
            for j in group:
                yield _error(j, e)
            continue
        share = (time.perf_counter() - t1) / len(group)
        for j, res in zip(group, results):
            res.model = lc.name
            res.stats.pop("ranking_given", None)
            res.stats.update(ranking_source=how, ranking_key=rkey, unit=unit.key, unit_jobs=len(jobs))
            yield _row(lc, j, res, share + rank_share, started)
        started = _now()


def _row(lc: Loaded, j: Job, res, seconds: float, started: str) -> Dict[str, Any]:
    return {
        "key": j.key, "checkpoint": j.checkpoint, "checkpoint_path": lc.ck.path, "model": lc.name,
        "text": j.text, "text_sha": j.text_sha, "params": j.params, "n_critical": len(res.neurons),
        "converged": res.converged, "log10_ratio": res.log10_ratio, "clean_nll": res.clean_nll,
        "epsilon": res.epsilon, "seconds": seconds, "load_seconds": lc.load_s, "started_at": started,
        "finished_at": _now(), "host": socket.gethostname(), "pid": os.getpid(), "device": lc.device,
        "versions": res.versions, "result": res.to_dict(), "weights": lc.weights_hash,
    }


def run_checkpoint(ckpt: Dict[str, Any], units: Sequence[Dict[str, Any]],
                   stored: Optional[Dict[str, Dict[str, Any]]] = None) -> Iterator[Dict[str, Any]]:
    """Load one checkpoint and run its units; yields rows, errors and ranking records.

    Arguments are plain dicts (a unit: {"key", "checkpoint", "jobs": [job dicts]}) so the generator can run as a
    Ray task unchanged."""
    ck = Checkpoint(**ckpt)
    us = [Unit(u["key"], u["checkpoint"], [Job(**j) for j in u["jobs"]]) for u in units]
    try:
        lc = Loaded(ck)
    except Exception as e:
        for u in us:
            for j in u.jobs:
                yield _error(j, e)
        return
    for u in us:
        yield from run_unit(lc, u, stored=stored)


def unit_dict(unit: Unit, jobs: Optional[List[Job]] = None) -> Dict[str, Any]:
    import dataclasses
    return {"key": unit.key, "checkpoint": unit.checkpoint,
            "jobs": [dataclasses.asdict(j) for j in (unit.jobs if jobs is None else jobs)]}


def _error(job: Job, e: BaseException) -> Dict[str, Any]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(), "key": job.key,
            "checkpoint": job.checkpoint, "text": job.text, "params": job.params}
