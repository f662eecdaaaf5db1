"""``study()``: every section on one model, one shared Stage 1, cached sections, an atomic report.

Order of work: everything the user gave is validated (sections, grids, texts, prompts, the output folder) before
the model is touched; then one Stage 1 pass covers the default set, the K grid and the component ablation; each
section runs (or is reused from ``DIR/study.json`` when its key matches: weights fingerprint, texts, method and
section parameters), and ``study.json`` is rewritten (atomically) after each one, so an interrupted study resumes
where it stopped. The report files are written last, each atomically.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from ... import ops
from ...method.config import FindConfig
from ...method.result import CriticalResult, versions
from ...method.text import tokenize
from ...models.loading import model_source, resolve_model
from ...utils import atomic_write, check_writable, fallback_path, write_json
from ..robustness import read_texts
from .context import StudyContext, digest
from .genres import GENRES
from .params import StudyError, StudyParams, parse_sections
from .report import figure_paths, render_html, render_markdown, save_figure, verdict_lines
from .section import Section, registered

KEY_VERSION = 1  # part of every section key: bump when a section's numbers change meaning


def study(model, tokenizer=None, text: Optional[str] = None, *, eval_text: Optional[str] = None,
          texts: Union[None, str, Path, Mapping[str, str]] = None, quick: bool = False,
          sections: Union[None, str, Sequence[str]] = None, out: Union[None, str, Path] = None,
          config: Optional[FindConfig] = None, study_params: Optional[StudyParams] = None,
          device: Optional[str] = None, dtype: Optional[str] = None, progress: bool = True,
          **params) -> Dict[str, Any]:
    """Check the paper's claims (and its open questions) on one model; returns the study document (study.json).

    model / tokenizer / text / eval_text / device / dtype: as ``find_critical`` (the default set is found with
    ``config`` and the FindConfig fields among ``params``). texts: a folder of .txt files or {name: text} for the
    stability-across-texts step (default: built-in genres). quick: the smaller preset; ``params`` may also set
    StudyParams fields (alphas, ks, lengths, dtypes, prompts, max_new_tokens, ...). sections: names or
    'a,b' (default: all). out: folder for report.md, report.html, study.json and figures/ (None: nothing written).
    The model's weights are unchanged afterwards (bit-exact), also when interrupted.
    """
    t_start = time.perf_counter()
    find_kw = {k: v for k, v in params.items() if k in FindConfig.names()}
    study_kw = {k: v for k, v in params.items() if k not in find_kw}
    cfg = FindConfig.make(config, **find_kw)
    if cfg.ranker != "sensitivity":
        raise StudyError(f"the study examines the sensitivity ranking (ranker 'sensitivity'), got {cfg.ranker!r}")
    sp = StudyParams.make(quick, **study_kw) if study_params is None else \
        dataclasses.replace(study_params, **{k: tuple(v) if isinstance(v, list) else v for k, v in study_kw.items()})
    names = parse_sections(sections)
    texts_d, texts_source = resolve_texts(texts, sp)
    out_dir = check_out(out)
    model, tokenizer, name = resolve_model(model, tokenizer, device, dtype)
    name = model_source(model).get("name") or name  # load_model's display name
    with warnings.catch_warnings():  # truncation is reported when the text is used
        warnings.simplefilter("ignore")
        for label, t in texts_d.items():
            tokenize(tokenizer, t, cfg.max_tokens, f"text {label!r}")  # empty / too short: fail now
    ctx = StudyContext(model, tokenizer, name, cfg, sp, text, eval_text, texts_d, texts_source, progress)
    previous = _load(out_dir)
    base_key = digest(ctx.base_key())
    registry = registered()
    keys = {s: digest({"base": ctx.base_key(), "section": s, "params": registry[s].key_params(ctx),
                       "version": KEY_VERSION}) for s in registry}
    done = {s: b for s, b in previous.get("sections", {}).items() if s in keys and b.get("key") == keys[s]}
    for s, b in done.items():  # wording from the current code
        b.update(title=registry[s].title, claim=registry[s].claim)
    if previous.get("base", {}).get("key") == base_key:
        ctx.base = CriticalResult.from_dict(previous["base"]["result"])
    todo = [s for s in names if s not in done]
    doc = _document(ctx, base_key, done, todo, t_start)
    lost = None  # (the --out that failed, why): the study goes on in a fallback folder

    def save(doc, final: bool = False) -> None:
        nonlocal out_dir, lost
        try:
            _save_all(out_dir, done, doc, final)
        except OSError as e:  # disk full, folder gone or read-only: everything again in the temp folder
            if lost is not None:
                raise
            lost = (out_dir, e.strerror or str(e))
            out_dir = fallback_path(out_dir.name or "study")
            _save_all(out_dir, done, doc, final)
    with ops.use_kernels(cfg.kernels):
        needs = [n for n in (registry[s].stage1(sp) for s in todo) if n is not None]
        if needs or (todo and ctx.base is None):  # one Stage 1 pass for every section to run
            ctx.prepare_scores(sorted({k for n in needs for k in n.ks}), union=any(n.all_targets for n in needs))
        for i, s in enumerate(todo, 1):
            sec = registry[s]
            if progress:
                print(f"study: {sec.title} ({i}/{len(todo)})", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            b = sec.run(ctx, sp)
            b.update(key=keys[s], params=sec.key_params(ctx), seconds=time.perf_counter() - t0)
            done[s] = b
            if out_dir is not None:
                save(_document(ctx, base_key, done, todo, t_start))
    doc = _document(ctx, base_key, done, todo, t_start, complete=True)
    if out_dir is not None:
        save(doc, final=True)
    if lost is not None:
        raise StudyError(f"could not write --out {lost[0]} ({lost[1]}); the study is saved to {out_dir} instead")
    return doc


def _save_all(out_dir: Path, done: Dict, doc: Dict, final: bool) -> None:
    """Every finished section's figures that are missing, study.json, and when ``final`` the reports (the folder
    made at the first write)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for s in done:
        if any(not p.is_file() for f in done[s]["figures"] for p in figure_paths(out_dir, f["stem"])):
            _save_figures(registered()[s], done[s], out_dir)
    write_json(doc, out_dir / "study.json", indent=1)
    if final:
        atomic_write(out_dir / "report.md", render_markdown(doc))
        atomic_write(out_dir / "report.html", render_html(doc, out_dir))


def _document(ctx: StudyContext, base_key: str, done: Dict, todo: Sequence[str], t_start: float,
              complete: bool = False) -> Dict[str, Any]:
    return {
        "model": ctx.name, "source": getattr(ctx.model, "achilles_source", None) or {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": complete, "config": ctx.config.params(), "study_params": ctx.params.to_dict(),
        "texts": ctx.texts_source, "key": ctx.base_key(),
        "base": None if ctx.base is None else {"key": base_key, "result": ctx.base.to_dict()},
        "sections": [done[s] for s in registered() if s in done],
        "reused": [s for s in registered() if s in done and s not in todo],
        "seconds": time.perf_counter() - t_start, "timings": dict(ctx.timings), "versions": versions(),
    }


def _save_figures(sec: Section, b: Dict, out_dir: Path) -> None:
    for stem, fig in sec.figures(b["data"]):
        save_figure(fig, out_dir, stem)


def resolve_texts(texts, sp: StudyParams):
    """--texts folder / {name: text} / None (built-in genres) -> ({name: text}, description)."""
    if texts is None:
        keep = sp.genres or tuple(GENRES)
        return {g: GENRES[g] for g in keep}, "built-in genres: " + ", ".join(keep)
    if isinstance(texts, Mapping):
        if not texts:
            raise StudyError("texts is empty")
        return dict(texts), "given texts: " + ", ".join(texts)
    folder = Path(texts)
    if folder.is_dir() and not any(folder.glob("*.txt")):
        raise StudyError(f"{folder}: the texts folder holds no .txt file")
    d = read_texts(str(folder))
    return d, f"{folder}: " + ", ".join(d)


def check_out(out) -> Optional[Path]:
    if out is None:
        return None
    check_writable(out, "--out", folder=True, error=StudyError)  # made by the first write: a failed study leaves none
    return Path(out)


def _load(out_dir: Optional[Path]) -> Dict[str, Any]:
    """The previous study.json in ``out_dir`` (sections as {name: block}), or {} when there is none."""
    if out_dir is None or not (out_dir / "study.json").is_file():
        return {}
    try:
        d = json.loads((out_dir / "study.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    d["sections"] = {b["name"]: b for b in d.get("sections", []) if isinstance(b, dict) and "name" in b}
    d["base"] = d.get("base") or {}
    return d


__all__ = ["study", "verdict_lines"]
