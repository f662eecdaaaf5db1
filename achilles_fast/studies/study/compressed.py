"""What the compression sections (quantization, pruning, bitflips) share: the model's NLL as it is (the weights
edited in place), the three protect sets (none / the critical set / as many random down_proj channels), the rows
of log10 numbers, the rescue verdicts and the protect-mode figure."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import torch

from ...method.perplexity import log10_ppl, log10_ratio
from ...utils import eval_mode
from ..plots import canvas, epsilon_line
from ..compression.params import PROTECT_MODES
from ..compression.protect import protect_list, random_down_proj
from .context import StudyContext
from .section import StudyError, fmt, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HARM = 0.1  # a compression "harms" the model when its log10 ratio reaches this fraction of epsilon
COLORS = {"none": "tab:red", "critical": "tab:green", "random": "tab:gray"}


def study_check(check):
    """A compression parameter check (``compression.params``) as a study ``Param`` check: StudyError, one line."""
    def wrapped(value) -> None:
        try:
            check(value)
        except ValueError as e:
            raise StudyError(str(e)) from None
    return wrapped


def nll_now(ctx: StudyContext) -> float:
    """Mean NLL on the evaluation text of the model as it is now; +inf when the loss is not finite. A section reads
    ``ctx.clean_nll`` before its first edit (the evaluator measures the clean NLL on first use)."""
    ev = ctx.evaluator()
    with eval_mode(ctx.model), torch.no_grad():
        v = ev.nll_prefixes(None, [0])[0]
    return v if math.isfinite(v) else math.inf


def logs(nll: float, ref: float) -> Dict[str, Optional[float]]:
    """log10 PPL and log10 ratio to ``ref`` (None when the loss is not finite: JSON has no Inf)."""
    if not math.isfinite(nll):
        return {"log10_ppl": None, "log10_ratio": None}
    return {"log10_ppl": log10_ppl(nll), "log10_ratio": log10_ratio(nll, ref)}


def ratio_or_inf(row: Dict) -> float:
    v = row["log10_ratio"]
    return math.inf if v is None else v


def protect_sets(ctx: StudyContext, names: Sequence[str]) -> Dict:
    """{"none": None, "critical": ProtectList of the set, "random": ProtectList of |S| random down_proj channels}
    and the random names (seeded by the study's seed)."""
    rand = random_down_proj(ctx.model, len(names), seed=ctx.config.seed, discover=ctx.config.discover)
    sets = {"none": None, "critical": protect_list(ctx.model, names, discover=ctx.config.discover),
            "random": protect_list(ctx.model, rand, discover=ctx.config.discover)}
    assert tuple(sets) == PROTECT_MODES
    return {"sets": sets, "random_names": rand}


def rescue_verdicts(rows: List[Dict], setting: str, label, eps: float, focus) -> List[Dict]:
    """Verdicts over rows {setting: value, "protect": mode, "log10_ratio": r}: protecting the set rescues the
    ``focus`` setting (unprotected >= epsilon, protected below); across the harmful settings, the critical set
    does better than as many random channels. label(value) names a setting."""
    by = {(r[setting], r["protect"]): ratio_or_inf(r) for r in rows}
    values = list(dict.fromkeys(r[setting] for r in rows))

    def nums(v):
        return ", ".join(f"{m} {fmt(by[(v, m)])}" for m in PROTECT_MODES)

    c1 = f"protecting the critical set rescues {label(focus)}"
    none = by[(focus, "none")]
    if none < eps:
        v1 = verdict(c1, None, f"unprotected {label(focus)} stays below epsilon = {eps:g} (log10 ratio: "
                     f"{nums(focus)}): nothing to rescue")
    else:
        v1 = verdict(c1, by[(focus, "critical")] < eps, f"log10 ratio {nums(focus)}; epsilon = {eps:g}")
    harmful = [v for v in values if by[(v, "none")] >= HARM * eps]
    c2 = "keeping the critical set helps more than keeping as many random down_proj channels"
    if not harmful:
        v2 = verdict(c2, None, f"no setting raises log10 PPL by {HARM:g} epsilon without protection")
    else:
        better = [v for v in harmful if by[(v, "critical")] < by[(v, "random")]]
        v2 = verdict(c2, len(better) == len(harmful), f"critical below random in {len(better)} of {len(harmful)} "
                     f"harmful setting(s): " + "; ".join(f"{label(v)}: {nums(v)}" for v in harmful))
    return [v1, v2]


def protect_axes(ax, xs: Sequence, rows: List[Dict], setting: str, eps: float, xlabel: str, title: str) -> None:
    """One line per protect mode: log10 ratio (non-finite drawn at the top) against the setting."""
    finite = [r["log10_ratio"] for r in rows if r["log10_ratio"] is not None]
    top = max(finite + [eps]) * 1.1 + 1e-3
    for m in PROTECT_MODES:
        ys = [next((top if r["log10_ratio"] is None else r["log10_ratio"]) for r in rows
                   if r[setting] == x and r["protect"] == m) for x in xs]
        ax.plot(range(len(xs)), ys, marker="o", color=COLORS[m], label=f"protect {m}", gid=f"protect-{m}")
    epsilon_line(ax, eps)
    ax.set_ylim(bottom=min([0.0] + finite))
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("log10(PPL compressed / PPL clean)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def new_figure(panels: int = 1) -> Figure:
    return canvas((6.4 * panels, 4.0))
