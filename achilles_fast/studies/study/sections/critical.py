"""Section 1, the critical set: phase-transition curve, layer x component map, neuron table, and the paper's three
headline claims (a tiny set, a sharp transition, outer layers / down_proj)."""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Tuple

from ....method.masking import BatchedMask
from ....method.perplexity import log10_ratio
from ....method.result import CriticalResult
from ....utils import eval_mode
from ... import plots
from ..context import StudyContext
from ..section import Section, figure, fmt, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TINY = 0.01  # "ultra-sparse": at most 1% of the scanned channels
MAX_ROWS = 50


def dense_curve(ctx: StudyContext, r: CriticalResult) -> List[List[float]]:
    """The search's curve plus every n up to about 2|S| and a 1-2-5 grid up to max_neurons (one batched
    evaluation): the phase-transition curve drawn densely, not only where the search happened to look."""
    ranking = ctx.ranking()
    cap = min(len(ranking), ctx.config.max_neurons)
    have = {int(n): v for n, v in r.curve}
    n_set = len(r.neurons) or max(have, default=1)
    grid = set(range(1, min(cap, 2 * n_set + 2, 12) + 1))
    grid |= {g * 10 ** e for e in range(7) for g in (1, 2, 5) if g * 10 ** e <= cap}
    todo = sorted(grid - set(have))
    if todo:
        ev = ctx.evaluator()
        with eval_mode(ctx.model), BatchedMask(ranking, max(todo)) as bm:
            for n, nll in zip(todo, ev.nll_prefixes(bm, todo)):
                have[n] = log10_ratio(nll, ctx.clean_nll)
    have.setdefault(0, 0.0)  # nothing masked: the clean model
    return [[n, have[n]] for n in sorted(have)]


def _tiny(r: CriticalResult, n: int, total: int) -> Dict:
    c = "an ultra-sparse set (<= 1% of the scanned channels) raises log10 PPL by >= epsilon"
    if not r.converged:
        return verdict(c, False, f"no prefix of up to {r.params.get('max_neurons')} neurons reached epsilon = "
                       f"{r.epsilon:g} (largest log10 ratio {fmt(max((v for _, v in r.curve), default=None))})")
    share = n / max(1, total)
    return verdict(c, share <= TINY, f"{n} neuron(s) = {100 * share:.3g}% of {total:,} channels; log10 ratio "
                   f"{fmt(r.log10_ratio)} >= epsilon = {r.epsilon:g}")


def _sharp(r: CriticalResult, dense: List[List[float]]) -> Dict:
    c = "sharp phase transition: the last step to the set contributes at least half of its log10 ratio"
    if not r.converged or not r.neurons:
        return verdict(c, None, "the search did not converge")
    n = len(r.neurons)
    curve = {int(k): v for k, v in dense}
    prev = max((k for k in curve if k < n), default=0)
    before = curve.get(prev, 0.0)
    after = curve[n]
    jump = after - before
    return verdict(c, jump >= 0.5 * after, f"log10 ratio {fmt(before)} at n = {prev} -> {fmt(after)} at n = {n} "
                   f"(step of {fmt(jump)})")


def _outer(n: int, thirds: Counter, n_layers: int) -> Dict:
    c = "the neurons sit in the outer layers (first or last third: more than the 2/3 a uniform spread gives)"
    placed = sum(thirds[t] for t in ("first", "middle", "last"))
    if n == 0 or placed == 0:
        return verdict(c, None, "no critical neuron with a layer index")
    outer = thirds["first"] + thirds["last"]
    return verdict(c, outer / placed > 2 / 3, f"first third {thirds['first']}, middle {thirds['middle']}, last "
                   f"{thirds['last']} of {n_layers} layers: {100 * outer / placed:.0f}% outer")


def _down_proj(ctx: StudyContext, n: int, kinds: Counter) -> Dict:
    c = "mostly MLP down_proj"
    down_kinds = {t.kind for t in ctx.targets if t.name in ctx.down_names}
    if {t.kind for t in ctx.targets} <= down_kinds:
        return verdict(c, None, f"scope '{ctx.config.scope}' scans only the down projections; see the component "
                       "ablation section")
    if n == 0:
        return verdict(c, None, "empty critical set")
    down = sum(v for k, v in kinds.items() if k in down_kinds)
    return verdict(c, down / n > 0.5, f"{down} of {n} in down_proj; " +
                   ", ".join(f"{k}: {v}" for k, v in kinds.most_common()))


@register
class CriticalSet(Section):
    name = "critical"
    title = "Critical set"
    claim = ("Masking an ultra-sparse set of neurons (a handful out of millions) collapses the model: perplexity "
             "rises by orders of magnitude, in a sharp phase transition rather than a gradual decline; the neurons sit "
             "in the outer layers, mostly in MLP down_proj.")
    order = 10

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        curve = dense_curve(ctx, r)
        total = sum(t.num_channels for t in ctx.targets)
        n = len(r.neurons)
        thirds = Counter(ctx.third(x.layer) for x in r.neurons)
        kinds = Counter(x.kind for x in r.neurons)
        rows = [[i + 1, x.name, "-" if x.layer is None else x.layer, ctx.third(x.layer), x.kind, float(x.score)]
                for i, x in enumerate(r.neurons[:MAX_ROWS])]
        measured = [
            f"Stage 1 with K = {ctx.config.k}, alpha = {ctx.config.alpha:g} on {int(ctx.ids.numel())} tokens, scope "
            f"'{ctx.config.scope}' ({len(ctx.targets)} modules, {total:,} channels); Stage 2 ({ctx.config.strategy}) "
            f"until log10(PPL masked / PPL clean) >= epsilon = {ctx.config.epsilon:g} on {int(ctx.eval_ids.numel())} "
            f"evaluation tokens.",
            f"Clean log10 PPL {fmt(r.log10_clean_ppl)}; with the set masked {fmt(r.log10_final_ppl)} "
            f"(log10 ratio {fmt(r.log10_ratio)}).",
        ]
        if n > MAX_ROWS:
            measured.append(f"The table lists the first {MAX_ROWS} of {n} neurons (study.json has all).")
        verdicts = [_tiny(r, n, total), _sharp(r, curve), _outer(n, thirds, ctx.n_layers),
                    _down_proj(ctx, n, kinds)]
        return self.block(
            measured, verdicts,
            tables=[table("critical neurons (ranking order)",
                          ["#", "neuron", "layer", "depth", "component", "score"], rows)],
            figures=[figure("critical_curve", "Phase transition: log10 PPL ratio against the number of masked "
                            "ranking-prefix neurons (the search's points, every n up to about 2|S| and a 1-2-5 "
                            "grid)."),
                     figure("critical_layers", "Where the neurons sit: layer x component counts of the critical "
                            "set and of the top-ranked channels.")],
            data={"result": r.to_dict(), "curve": curve, "n_critical": n, "n_channels": total,
                  "n_layers": ctx.n_layers, "thirds": dict(thirds), "kinds": dict(kinds)})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        r = dict(data["result"], curve=data["curve"])
        curve = plots.curve_figure(r, title="phase transition")
        curve.axes[0].set_xscale("symlog", linthresh=1)  # n = 0 (clean) on the same axis as n = 1 .. 1000
        curve.axes[0].set_xlim(left=0)
        return [("critical_curve", curve),
                ("critical_layers", plots.layer_map_figure(r, n_layers=data["n_layers"],
                                                           title="where the neurons sit"))]
