"""A sweep's dry run: its jobs, their Stage 1 units and which are already in the database; runs and creates
nothing (an existing database is opened read-only)."""
from __future__ import annotations

import os
from typing import List

from .db import SweepDB
from .spec import SweepSpec


def dry_run(spec: SweepSpec, db: str) -> List[str]:
    """One line per job (done or pending, key, checkpoint / text / its grid values, its Stage 1 unit), then a
    count of done jobs and units."""
    from . import plan_sweep  # the package's planner (it imports this module's siblings)
    units, jobs = plan_sweep(spec)
    done = set()
    if os.path.exists(db):  # read-only: a dry run never creates or changes the database
        with SweepDB(db, readonly=True) as store:
            done = store.done_keys([j.key for j in jobs])
    lines = [f"{'done   ' if j.key in done else 'pending'} {j.key} {j.checkpoint} / {j.text} / "
             f"{ {k: v for k, v in j.params.items() if k in spec.grid} } [unit {u.key[:8]}]"
             for u in units for j in u.jobs]
    return lines + [f"{len(done)}/{len(jobs)} done; {len(units)} Stage 1 unit(s)"]
