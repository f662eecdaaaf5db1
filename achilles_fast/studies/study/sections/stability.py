"""Section 4, stability: the critical set under other noise scales, sample counts, input lengths, texts and
precisions, each compared with the default set (size, Jaccard overlap).

- alpha: Stage 1 again at each alpha (K and the text unchanged); Stage 2 as the default set.
- K: the scores at each K come from the one shared Stage 1 pass (prefix means; no extra forwards).
- input length L: Stage 1 on the first L tokens of the scoring text (extended by built-in passages when it is
  shorter than the longest L); Stage 2 on the study's evaluation text, so only the ranking input changes.
- texts: ``find_critical`` on each text (scoring and evaluation on that text), as ``achilles-fast robustness``.
- dtype: both stages on a copy of the model in that dtype (the model itself is never cast).
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import torch

from ....method.api import find_critical
from ....method.config import FindConfig
from ....method.rankers import make_ranker
from ....method.result import CriticalResult
from ....method.text import DEFAULT_TEXT, tokenize
from ....models.loading import parse_dtype
from ....models.registry import discover_targets
from ....utils import eval_mode, progress_bar
from ... import plots
from ...robustness import jaccard
from ..context import StudyContext, digest
from ..genres import EXTENSION, GENRES
from ..section import Param, Section, Stage1, StudyError, figure, fmt, grid_of, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STABLE_JACCARD = 0.5  # stable: Jaccard overlap with the default set >= this
GROUPS = (("alpha", "noise scale alpha"), ("k", "noisy samples K"), ("length", "input length (tokens)"),
          ("texts", "text"), ("dtype", "precision"))


def _check_genres(genres) -> None:
    if genres is None:
        return
    bad = [g for g in genres if g not in GENRES]
    if bad or not genres:
        raise StudyError(f"unknown genre(s) {bad}: expected some of {', '.join(GENRES)}")


def long_ids(ctx: StudyContext, n: int) -> Tuple[torch.Tensor, int]:
    """The scoring text's ids, extended by built-in passages to at least ``n`` tokens when shorter -> (ids [<= n],
    number of tokens that come from the scoring text)."""
    text = ctx.text if ctx.text is not None else DEFAULT_TEXT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        count = lambda s: int(tokenize(ctx.tokenizer, s, 1 << 30).numel())  # noqa: E731
        own = count(text)
        for g in EXTENSION:
            if count(text) >= n:
                break
            text = text + "\n\n" + GENRES[g]
        return tokenize(ctx.tokenizer, text, n), own


def _row(group: str, label: str, value, res: Optional[CriticalResult], default: set, note: str = "") -> Dict:
    if res is None:
        return {"group": group, "label": label, "value": value, "n": None, "converged": None, "log10_ratio": None,
                "jaccard": None, "neurons": [], "note": note}
    names = res.names
    return {"group": group, "label": label, "value": value, "n": len(names), "converged": res.converged,
            "log10_ratio": res.log10_ratio, "jaccard": jaccard(set(names), default), "neurons": names, "note": note}


def _in_dtype(ctx: StudyContext, dt: torch.dtype) -> CriticalResult:
    """Both stages on a copy of the model cast to ``dt`` (freed afterwards)."""
    m = copy.deepcopy(ctx.model).to(dt)
    try:
        targets = discover_targets(m, ctx.config.scope, allow_discovery=ctx.config.discover)
        with eval_mode(m):
            ranking = make_ranker(ctx.config).rank(m, targets, ctx.ids)
        return ctx.search(ranking, model=m)
    finally:
        del m


def _verdict(rows: List[Dict], group: str, claim: str, applies) -> Dict:
    rs = [r for r in rows if r["group"] == group and r["n"] is not None and applies(r["value"])]
    if not rs:
        return verdict(claim, None, "no variant of this kind was run")
    bad = [r for r in rs if not (r["jaccard"] is not None and r["jaccard"] >= STABLE_JACCARD)]
    detail = ", ".join(f"{r['label']}: J={fmt(r['jaccard'], 2)} (n={r['n']})" for r in rs)
    return verdict(claim, not bad, detail)


@register
class Stability(Section):
    name = "stability"
    title = "Stability"
    claim = ("The critical set is stable: for noise scales alpha >= 5, across the number of noisy samples K, for "
             "inputs longer than about 10 tokens, across text genres and across precisions (the paper's Figures 4 and "
             "7 and its robustness tables).")
    order = 40
    params = (
        Param("alphas", (0.5, 1.0, 2.0, 5.0, 10.0), "noise scales, e.g. 0.5,1,2,5,10", quick=(1.0, 5.0, 10.0),
              check=grid_of("alphas", lambda a: FindConfig().replace(alpha=a)), flag="--alphas", kind=float),
        Param("ks", (5, 10, 20, 50, 100), "noisy sample counts, e.g. 5,10,20,50,100 (one shared Stage 1 pass)",
              quick=(10, 100), check=grid_of("ks", lambda k: FindConfig().replace(k=k)), flag="--ks", kind=int),
        Param("lengths", (8, 16, 32, 64, 128, 256), "input lengths in tokens, e.g. 8,16,32,64,128,256",
              quick=(8, 16, 64), check=grid_of("lengths", lambda n: FindConfig().replace(max_tokens=n)),
              flag="--lengths", kind=int),
        Param("dtypes", ("float32", "bfloat16"), "precisions, e.g. float32,bfloat16",
              check=grid_of("dtypes", parse_dtype), flag="--dtypes", kind=str),
        Param("genres", None, "built-in genres used when no --texts folder is given (None: all)",
              quick=("prose", "code"), check=_check_genres),
    )

    def stage1(self, p) -> Stage1:
        return Stage1(ks=tuple(p.ks))  # the K grid: prefix means of the shared pass

    def key_params(self, ctx: StudyContext) -> Dict:
        p = ctx.params  # the texts themselves (by digest), not the genre names
        return {"alphas": list(p.alphas), "ks": list(p.ks), "lengths": list(p.lengths), "dtypes": list(p.dtypes),
                "texts": {k: digest(v) for k, v in ctx.texts.items()}}

    def run(self, ctx: StudyContext, p) -> Dict:
        base = ctx.default_result()
        cfg = ctx.config
        default = set(base.names)
        rows: List[Dict] = []
        n_steps = len(p.alphas) + len(p.ks) + len(p.lengths) + len(ctx.texts) + len(p.dtypes)
        with progress_bar(n_steps, "Stability", "set", ctx.progress) as bar:
            def add(*a, **kw):
                rows.append(_row(*a, **kw))
                if bar is not None:
                    bar.update(1)

            for a in p.alphas:
                if a == cfg.alpha:
                    add("alpha", f"alpha={a:g}", a, base, default, "the default set")
                    continue
                ca = cfg.replace(alpha=a)
                with eval_mode(ctx.model):
                    ranking = make_ranker(ca).rank(ctx.model, ctx.targets, ctx.ids)
                add("alpha", f"alpha={a:g}", a, ctx.search(ranking, ca), default)
            ctx.prepare_scores(p.ks, union=False)
            for k in p.ks:
                res = base if k == cfg.k else ctx.search(ctx.ranking(k=k), cfg.replace(k=k))
                add("k", f"K={k}", k, res, default, "the default set" if k == cfg.k else "scores from the shared pass")
            ids, own = long_ids(ctx, max(p.lengths))
            for n in p.lengths:
                if n > ids.numel():
                    add("length", f"L={n}", n, None, default, f"skipped: only {ids.numel()} tokens available")
                    continue
                with eval_mode(ctx.model):
                    ranking = make_ranker(cfg).rank(ctx.model, ctx.targets, ids[:n])
                note = "" if n <= own else f"tokens {own + 1}-{n} from built-in passages"
                add("length", f"L={n}", n, ctx.search(ranking), default, note)
            for name, text in ctx.texts.items():
                add("texts", f"text:{name}", name, find_critical(ctx.model, ctx.tokenizer, text, config=cfg,
                                                                   progress=False), default)
            cur = next(ctx.model.parameters()).dtype
            for d in p.dtypes:
                dt = parse_dtype(d)
                if dt == cur:
                    add("dtype", d, d, base, default, "the default set")
                elif getattr(ctx.model, "hf_device_map", None):
                    add("dtype", d, d, None, default, "skipped: the model is spread over devices (no copy is made)")
                else:
                    add("dtype", d, d, _in_dtype(ctx, dt), default, "both stages on a copy of the model in this dtype")
        labels = ["default"] + [r["label"] for r in rows if r["n"] is not None]
        sets = [default] + [set(r["neurons"]) for r in rows if r["n"] is not None]
        matrix = [[jaccard(a, b) for b in sets] for a in sets]
        verdicts = [_verdict(rows, "alpha", "stable for alpha >= 5", lambda v: v >= 5),
                    _verdict(rows, "k", "stable across K", lambda v: True),
                    _verdict(rows, "length", "stable for inputs longer than ~10 tokens", lambda v: v > 10),
                    _verdict(rows, "texts", f"stable across texts ({ctx.texts_source})", lambda v: True),
                    _verdict(rows, "dtype", "stable across precisions", lambda v: True)]
        measured = [f"Each variant changes one thing of the default run (alpha {cfg.alpha:g}, K {cfg.k}, "
                    f"{int(ctx.ids.numel())} tokens, {next(ctx.model.parameters()).dtype}) and is compared with the "
                    f"default set ({len(default)} neuron(s)) by Jaccard overlap; stable means Jaccard >= "
                    f"{STABLE_JACCARD:g}. K values come from the one shared Stage 1 pass; lengths are prefixes of the "
                    "scoring text, evaluated on the study's evaluation text; each text is scored and evaluated on "
                    "itself."]
        tab = [[r["group"], r["label"], "-" if r["n"] is None else r["n"], fmt(r["log10_ratio"]), fmt(r["jaccard"], 2),
                r["note"]] for r in rows]
        return self.block(measured, verdicts,
                          tables=[table("variants", ["group", "variant", "set size", "log10 ratio",
                                                     "Jaccard vs default", "note"], tab)],
                          figures=[figure("stability_lines", "Set size (bars, left axis) and Jaccard overlap with "
                                          "the default set (line, right axis) along each grid."),
                                   figure("stability_matrix", "Jaccard overlap between every pair of sets.")],
                          data={"rows": rows, "labels": labels, "jaccard": matrix, "threshold": STABLE_JACCARD})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        rows = data["rows"]
        fig = plots.canvas((13, 3.8))
        axes = fig.subplots(1, len(GROUPS), squeeze=False)[0]
        for ax, (group, xlabel) in zip(axes, GROUPS):
            rs = [r for r in rows if r["group"] == group and r["n"] is not None]
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
            if not rs:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
                continue
            x = np.arange(len(rs))
            ax.bar(x, [r["n"] for r in rs], color="tab:blue", alpha=0.45, gid=f"size:{group}")
            ax.set_xticks(x, [str(r["value"]) for r in rs], rotation=30 if group == "texts" else 0, fontsize=7)
            ax.set_ylabel("set size", fontsize=8, color="tab:blue")
            ax2 = ax.twinx()
            ax2.plot(x, [r["jaccard"] for r in rs], marker="o", color="tab:red", gid=f"jaccard:{group}")
            ax2.axhline(data["threshold"], color="tab:red", ls=":", lw=0.8)
            ax2.set_ylim(-0.05, 1.05)
            ax2.set_ylabel("Jaccard vs default", fontsize=8, color="tab:red")
            ax2.tick_params(labelsize=7)
        fig.suptitle("stability of the critical set", fontsize=10)
        mat = plots.jaccard_figure(data["labels"], data["jaccard"], title="Jaccard overlap of critical sets")
        return [("stability_lines", fig), ("stability_matrix", mat)]
