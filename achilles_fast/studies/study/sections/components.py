"""Section 3, component ablation: the same budget masked inside each component separately.

Per component kind (q, k, v, o, gate, up, down, the norms: every kind of scope 'all'), the top-N channels by the
shared Stage 1 score within that kind, for N in {|S|, 100, 1000} capped by the kind's channel count; plus N random
down_proj channels (the random baseline ranker, seeded). Prefixes of one ranking per kind are evaluated with
``BatchedMask`` (one batched forward per kind).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np

from ....method.config import FindConfig
from ....method.masking import BatchedMask
from ....method.perplexity import log10_ratio
from ....method.rankers import make_ranker
from ...plots import canvas, epsilon_line
from ....utils import eval_mode
from ..context import StudyContext
from ..section import Param, Section, Stage1, figure, fmt, grid_of, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RANDOM = "random down_proj"


def budgets(component_ns, n_set: int) -> List[int]:
    return sorted({n for n in ((n_set,) if n_set else ()) + tuple(component_ns)})


@register
class Components(Section):
    name = "components"
    title = "Component ablation"
    claim = ("The collapse is specific to the critical neurons' component: masking the same number of top-ranked "
             "channels in up_proj, gate_proj or attention does little (the paper's Table 3), and random channels do "
             "nothing.")
    order = 30
    params = (Param("component_ns", (100, 1000), "budgets N besides |S|",
                    check=grid_of("component_ns", lambda n: FindConfig().replace(max_neurons=n))),)

    def stage1(self, p) -> Stage1:
        return Stage1(all_targets=True)  # every component's scores from the shared pass

    def key_params(self, ctx: StudyContext) -> Dict:
        return dict(super().key_params(ctx), seed=ctx.config.seed)

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        n_set = len(r.neurons)
        ns = budgets(p.component_ns, n_set)
        ctx.prepare_scores([ctx.config.k], union=True)
        kinds: Dict[str, list] = {}
        for t in ctx.all_targets:
            kinds.setdefault(t.kind, []).append(t)
        ev = ctx.evaluator()
        clean = ctx.clean_nll
        rows, data = [], []

        def evaluate(label: str, ranking, size: int) -> None:
            use = sorted({min(n, size) for n in ns})
            with eval_mode(ctx.model), BatchedMask(ranking, max(use)) as bm:
                nll = dict(zip(use, ev.nll_prefixes(bm, use)))
            vals = {n: log10_ratio(nll[min(n, size)], clean) for n in ns}
            data.append({"component": label, "channels": size, "log10_ratio": {str(n): v for n, v in vals.items()},
                         "masked": {str(n): min(n, size) for n in ns}})
            rows.append([label, size] + [fmt(vals[n]) + ("" if n <= size else f" ({size})") for n in ns])

        for kind, ts in kinds.items():
            size = sum(t.num_channels for t in ts)
            evaluate(kind, ctx.ranking(ts, top=min(max(ns), size)), size)
        down = [t for t in ctx.all_targets if t.name in ctx.down_names] or \
            [t for t in ctx.union if t.name in ctx.down_names]
        size = sum(t.num_channels for t in down)
        random_cfg = ctx.config.replace(ranker="random", max_neurons=min(max(ns), size))
        rnd = make_ranker(random_cfg).rank(ctx.model, down, ctx.ids)
        evaluate(RANDOM, rnd, size)
        eps = ctx.config.epsilon
        down_kinds = {t.kind for t in down}
        measured = [f"Top-N channels by Stage 1 score (K = {ctx.config.k}, the pass shared with the critical set) "
                    f"within each component, N in {{{', '.join(str(n) for n in ns)}}} (capped by the component's "
                    f"channel count, shown in brackets); random: {RANDOM} channels drawn with seed {ctx.config.seed}."]
        if n_set:
            at = str(n_set)
            others = [d for d in data if d["component"] not in down_kinds]
            worst = max(others, key=lambda d: d["log10_ratio"][at], default=None)
            down_v = max((d["log10_ratio"][at] for d in data if d["component"] in down_kinds), default=None)
            ok = worst is not None and worst["log10_ratio"][at] < eps and down_v is not None and down_v >= eps
            v = verdict(f"at the same budget (N = |S| = {n_set}) only down_proj reaches epsilon", ok,
                        f"down_proj {fmt(down_v)}; strongest other: {worst['component'] if worst else '-'} "
                        f"{fmt(worst['log10_ratio'][at]) if worst else 'n/a'} (epsilon {eps:g})")
        else:
            v = verdict("at the same budget only down_proj reaches epsilon", None, "no critical set (not converged)")
        big = [d for d in data if d["component"] not in down_kinds and d["component"] != RANDOM
               and d["log10_ratio"][str(max(ns))] >= eps]
        v2 = verdict(f"other components stay below epsilon even at N = {max(ns)}", not big,
                     ", ".join(f"{d['component']} {fmt(d['log10_ratio'][str(max(ns))])}" for d in big) or
                     "none reaches epsilon")
        rand = next(d for d in data if d["component"] == RANDOM)
        v3 = verdict("random down_proj channels do nothing (below epsilon at every N)",
                     all(x < eps for x in rand["log10_ratio"].values()),
                     ", ".join(f"N={n}: {fmt(x)}" for n, x in rand["log10_ratio"].items()))
        return self.block(measured, [v, v2, v3],
                          tables=[table("log10 PPL ratio per component",
                                        ["component", "channels"] + [f"N = {n}" for n in ns], rows)],
                          figures=[figure("components", "log10 PPL ratio when the top-N channels of one component "
                                          "are masked (grouped by N); epsilon dashed.")],
                          data={"ns": ns, "n_critical": n_set, "epsilon": eps, "components": data})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        d = data
        comps = d["components"]
        ns = d["ns"]
        fig = canvas((max(6.4, 0.75 * len(comps) + 2), 4.2))
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(comps))
        w = 0.8 / len(ns)
        for i, n in enumerate(ns):
            ys = [c["log10_ratio"][str(n)] for c in comps]
            ax.bar(x - 0.4 + w * (i + 0.5), ys, width=w * 0.95, label=f"N = {n}", gid=f"bars:{n}")
        epsilon_line(ax, d["epsilon"])
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xticks(x, [c["component"] for c in comps], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("log10(PPL masked / PPL clean)")
        ax.set_title("top-N channels masked per component", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        return [("components", fig)]
