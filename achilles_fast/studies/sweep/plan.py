"""Sweep planning: jobs that share a Stage 1 form one unit, and rankings are stored content-addressed.

- A **unit** is the jobs of one checkpoint and text whose Stage 1 parameters agree (every FindConfig field outside
  the Stage 2 group and ``top_report``; ``max_neurons`` only truncates the ranking, which is computed once for the
  largest). A unit runs one Stage 1; inside it, jobs that differ only in ``epsilon`` run one Stage 2 search
  (``find_critical(..., epsilon=[...])``). With ``k="auto"`` the ranking depends on Stage 2, so each job is its
  own unit. Units are what workers lease.
- A **ranking record** stores a unit's Ranking under a content key: the weights' hash (of the loaded tensors),
  the text's hash, the Stage 1 parameters (those that differ from the defaults, as in job keys) and the device
  type. Re-running a sweep with new Stage 2 parameters (more epsilons, another step or strategy) finds it and skips
  Stage 1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...method.config import FindConfig
from ...method.ranking import Ranking
from .spec import Job, SweepSpec, _now, job_key

# fields that only Stage 2 (or the result) reads: jobs differing only in these share one Stage 1
STAGE2_FIELDS = tuple(f.name for f in dataclasses.fields(FindConfig)
                      if f.metadata["group"] == "stage2") + ("top_report",)


def stage1_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """The parameters a job's ranking depends on (all of them with k="auto": its K stops on Stage 2's sets)."""
    if params.get("k") == "auto":
        return dict(params)
    return {k: v for k, v in params.items() if k not in STAGE2_FIELDS}


def search_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """Jobs with equal search parameters (all but epsilon) share one Stage 2 search of their unit's ranking."""
    return {k: v for k, v in params.items() if k != "epsilon"}


@dataclasses.dataclass
class Unit:
    """Jobs of one checkpoint sharing one Stage 1 (``key``: what a worker leases)."""

    key: str
    checkpoint: str
    jobs: List[Job]

    @property
    def keys(self) -> List[str]:
        return [j.key for j in self.jobs]

    def searches(self) -> List[List[Job]]:
        """The unit's jobs grouped by search parameters (each group: one search, one epsilon per job)."""
        groups: Dict[str, List[Job]] = {}
        for j in self.jobs:
            groups.setdefault(json.dumps(search_params(j.params), sort_keys=True), []).append(j)
        return list(groups.values())


def unit_key(job: Job, defaults: Dict[str, Any]) -> str:
    return "u" + job_key(job.checkpoint, job.text_sha, stage1_params(job.params), defaults, job.weights)[1:]


def plan_units(jobs: Sequence[Job], checkpoint_order: Optional[Sequence[str]] = None) -> List[Unit]:
    """Group jobs into units, checkpoint by checkpoint (in ``checkpoint_order``), units in first-job order."""
    defaults = FindConfig.defaults()
    units: Dict[str, Unit] = {}
    for j in jobs:
        k = unit_key(j, defaults)
        units.setdefault(k, Unit(k, j.checkpoint, [])).jobs.append(j)
    order = {c: i for i, c in enumerate(checkpoint_order or [])}
    return sorted(units.values(), key=lambda u: order.get(u.checkpoint, len(order)))


# ---- rankings stored with the sweep ---------------------------------------------------------------------------------
def ranking_key(weights: str, text_sha: str, params: Dict[str, Any], device: str) -> str:
    """Content address of a unit's ranking: the weights' digest (``models.loading.model_digest``), text hash,
    Stage 1 parameters (non-default), device."""
    defaults = FindConfig.defaults()
    own = {k: v for k, v in stage1_params(params).items() if k not in defaults or defaults[k] != v}
    blob = json.dumps({"weights": weights, "text_sha": text_sha, "stage1": own,
                       "device": torch.device(device).type}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def ranking_record(key: str, unit: Unit, ranking: Ranking) -> Dict[str, Any]:
    """A Ranking as a database record (channels int64, scores float32 as bytes; target names and sizes)."""
    return {"ranking_key": key, "key": key, "unit": unit.key, "checkpoint": unit.checkpoint, "n": len(ranking),
            "targets": [[t.name, t.num_channels] for t in ranking.targets],
            "channels": ranking.channels.numpy().astype(np.int64).tobytes(),
            "scores": ranking.scores.numpy().astype(np.float32).tobytes(),
            "info": ranking.info, "created_at": _now()}


def ranking_from_record(rec: Dict[str, Any], targets) -> Optional[Ranking]:
    """The stored ranking over this model's ``targets``; None when they differ from the stored ones."""
    if [[t.name, t.num_channels] for t in targets] != [list(x) for x in rec["targets"]]:
        return None
    ch = torch.from_numpy(np.frombuffer(rec["channels"], dtype=np.int64).copy())
    sc = torch.from_numpy(np.frombuffer(rec["scores"], dtype=np.float32).copy())
    return Ranking(list(targets), ch, sc, info=dict(rec.get("info") or {}))


def plan_sweep(spec: SweepSpec) -> Tuple[List[Unit], List[Job]]:
    """The spec's jobs (checked: distinct keys) and their units, checkpoint by checkpoint."""
    jobs = spec.jobs()
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("sweep spec: two jobs have the same key (duplicate texts or grid values?)")
    return plan_units(jobs, [c.name for c in spec.checkpoints]), jobs
