"""Executing sweep jobs: the same generator runs locally and inside a Ray task."""
from __future__ import annotations

import os
import socket
import time
import traceback
import warnings
from typing import Any, Dict, Iterator, Sequence

from ...method.api import find_critical
from ...method.config import FindConfig
from ...models.loading import load_model
from .spec import Checkpoint, Job, _now


def _device(spec: str) -> str:
    if spec != "auto":
        return spec
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_job(model, tokenizer, job: Job):
    """One job -> CriticalResult (find_critical with the job's FindConfig; ``ranker`` may name a baseline)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*using the first max_tokens")  # truncation is the spec's
        return find_critical(model, tokenizer, job.text_body, config=FindConfig(**job.params), progress=False)


def run_checkpoint(ckpt: Dict[str, Any], jobs: Sequence[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    """Load one checkpoint and run its jobs; yields one dict per job: a DB row, or {"error": ...}.

    Arguments are plain dicts so the generator can run as a Ray task unchanged.
    """
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


