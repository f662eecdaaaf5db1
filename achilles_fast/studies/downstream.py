"""Downstream tasks with lm-evaluation-harness: the model clean and with a neuron set masked, side by side.

``evaluate_tasks`` runs ``lm_eval.simple_evaluate`` over ``HFLM(pretrained=model, tokenizer=tok)`` twice, clean
and with the neurons masked in place (``masked``: weights restored bit-exact after, also on errors), and returns
one row per (task, metric): clean, masked, delta. lm-eval is optional: ``pip install 'achilles_fast[eval]'``.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from torch import nn

from ..method.masking import masked
from ..method.ranking import Ranking
from ..models.registry import maskable_targets
from ..utils import eval_mode

INSTALL = "pip install 'achilles_fast[eval]' (or: pip install lm_eval)"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(f"downstream tasks need lm-evaluation-harness ({e.name or 'lm_eval'} is missing): "
                          f"{INSTALL}") from None
    return lm_eval, HFLM, TaskManager


def task_manager(include_path: Union[str, Sequence[str], None] = None):
    """lm-eval's TaskManager over its built-in tasks plus the task YAMLs under ``include_path``."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path)


def check_tasks(tasks: Union[str, Iterable[str]], manager) -> List[str]:
    """Task names (comma-separated or a list; lm-eval globs allowed) -> the list, or a ValueError naming unknown
    ones with the closest known names."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise ValueError("no task given: e.g. --tasks arc_easy,hellaswag")
    known = manager.all_tasks
    unknown = [t for t in names if not manager.match_tasks([t])]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
        hint = "; ".join(f"{t}: did you mean {', '.join(h)}?" for t, h in hints.items() if h)
        raise ValueError(f"unknown lm-eval task(s) {', '.join(unknown)}" + (f" ({hint})" if hint else "") +
                         "; `lm-eval ls tasks` lists them, --include-path DIR adds your own task YAMLs")
    return names


def _numeric(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _finite(obj):
    """lm-eval results made JSON-safe: NaN/inf (e.g. the stderr of one sample) -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def side_by_side(clean: Dict[str, Dict[str, Any]], masked_: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """lm-eval ``results`` of both runs -> rows {task, metric, clean, masked, delta, clean_stderr, masked_stderr}.

    Metric keys are ``name,filter``; the filter is shown when it is not ``none`` (e.g. ``exact_match (flexible)``).
    """
    rows = []
    for task in clean:
        for key, value in clean[task].items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            c, m = _numeric(value), _numeric(masked_.get(task, {}).get(key))
            if c is None and m is None:
                continue
            se = f"{metric}_stderr,{filt}"
            rows.append({"task": task, "metric": metric if filt == "none" else f"{metric} ({filt})", "clean": c,
                         "masked": m, "delta": None if c is None or m is None else m - c,
                         "clean_stderr": _numeric(clean[task].get(se)),
                         "masked_stderr": _numeric(masked_.get(task, {}).get(se))})
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Aligned text table: task, metric, clean, masked, delta."""
    def f(x, sign=False):
        return "n/a" if x is None else (f"{x:+.4f}" if sign else f"{x:.4f}")

    head = ("task", "metric", "clean", "masked", "delta")
    body = [(r["task"], r["metric"], f(r["clean"]), f(r["masked"]), f(r["delta"], True)) for r in rows]
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(5)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def evaluate_tasks(model: nn.Module, tokenizer, neurons: Iterable, tasks: Union[str, Iterable[str]], *,
                   limit: Union[int, float, None] = None, num_fewshot: Optional[int] = None,
                   batch_size: Union[int, str] = 1, include_path=None, discover: bool = False, seed: int = 0,
                   manager=None, **simple_evaluate_kw) -> Dict[str, Any]:
    """lm-eval tasks on ``model`` clean, then with ``neurons`` masked in place (restored bit-exact after).

    Returns {"rows": side-by-side rows, "tasks", "limit", "num_fewshot", "n_masked", "clean" / "masked": lm-eval
    results per task, "n_samples", "lm_eval_version"}. Unknown tasks (ValueError) and unknown neurons (KeyError)
    are refused before anything runs. Extra keywords go to ``lm_eval.simple_evaluate``.
    """
    lm_eval, HFLM, _ = _lm_eval()
    manager = manager or task_manager(include_path)
    names = check_tasks(tasks, manager)
    neurons = Ranking.from_neurons(maskable_targets(model, allow_discovery=discover), neurons).neurons()
    if not neurons:
        raise ValueError("no neurons to mask")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)

    def run():
        return lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                       task_manager=manager, log_samples=False, random_seed=seed,
                                       numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                       **simple_evaluate_kw)

    with eval_mode(model):
        clean = run()
        with masked(model, neurons, discover=discover):
            masked_res = run()
    return {"rows": side_by_side(clean["results"], masked_res["results"]), "tasks": names, "limit": limit,
            "num_fewshot": num_fewshot, "n_masked": len(neurons), "neurons": [n.name for n in neurons],
            "clean": _finite(clean["results"]), "masked": _finite(masked_res["results"]),
            "n_samples": _finite(clean.get("n-samples")),
            "lm_eval_version": getattr(lm_eval, "__version__", None)}
