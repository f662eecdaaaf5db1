"""Section 2, cooperativity: is the set needed as a whole? log10 ratios of its proper subsets and of each neuron alone.

|S| <= ``exhaustive_max``: every non-empty proper subset. Larger sets: leave-one-out plus ``subsets_per_size``
random subsets (seeded) of each of at most ``max_sizes`` sizes spread over 1 .. |S|-1. Each subset is zeroed in
place (``WeightMask``: exact restore) and evaluated on the study's evaluation text.
"""
from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import torch

from ....method.ranking import Ranking
from ....utils import progress_bar
from ...plots import canvas, epsilon_line
from ..context import StudyContext
from ..section import Param, Section, figure, fmt, positive_int, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HARMLESS = 0.1  # a subset is "harmless" below this fraction of epsilon


def subset_plan(n: int, exhaustive_max: int, per_size: int, max_sizes: int, seed: int) -> List[Tuple[int, ...]]:
    """Index subsets of range(n) to evaluate (proper, non-empty, distinct), smallest first."""
    if n < 2:
        return []
    if n <= exhaustive_max:
        return [c for size in range(1, n) for c in itertools.combinations(range(n), size)]
    rng = random.Random(seed)
    plan = {tuple(i for i in range(n) if i != j) for j in range(n)}  # leave-one-out
    sizes = sorted({max(1, min(n - 1, round(1 + q * (n - 2) / max(1, max_sizes - 1)))) for q in range(max_sizes)})
    for size in sizes:
        for _ in range(per_size):
            plan.add(tuple(sorted(rng.sample(range(n), size))))
    return sorted(plan, key=lambda s: (len(s), s))


@register
class Cooperativity(Section):
    name = "cooperativity"
    title = "Cooperativity"
    claim = ("The critical neurons act jointly: masking any proper subset of the set is harmless (the paper's "
             "Table 5); only the whole set collapses the model.")
    order = 20
    params = (
        Param("exhaustive_max", 10, "every proper subset when |S| <= this", quick=6,
              check=positive_int("exhaustive_max", 16, " (2^n - 2 subsets)")),
        Param("subsets_per_size", 50, "else: leave-one-out + this many random subsets of each size ...", quick=10,
              check=positive_int("subsets_per_size")),
        Param("max_sizes", 10, "... for at most this many subset sizes, spread over 1 .. |S|-1", quick=4,
              check=positive_int("max_sizes")),
        Param("max_singles", 100, "each neuron alone, for the first this many neurons of the set", quick=20,
              check=positive_int("max_singles")),
    )

    def key_params(self, ctx: StudyContext) -> Dict:
        return dict(super().key_params(ctx), seed=ctx.config.seed)

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        eps = r.epsilon
        names = r.names
        n = len(names)
        if n == 0:
            return self.block(["The search did not converge: there is no critical set to split."],
                              [verdict("no proper subset reaches epsilon", None, "no critical set")])
        ranking = Ranking.from_neurons(ctx.targets, names)  # flat channel ids of the set, in ranking order
        ids = ranking.channels

        def ratio_of(idx: Sequence[int]) -> float:
            sub = Ranking(ranking.targets, ids[list(idx)], torch.zeros(len(idx)))
            return ctx.masked_ratio(sub)

        plan = subset_plan(n, p.exhaustive_max, p.subsets_per_size, p.max_sizes, ctx.config.seed)
        singles = list(range(min(n, p.max_singles)))
        todo = list(dict.fromkeys(itertools.chain([tuple(range(n))], ((i,) for i in singles), plan)))
        got: Dict[Tuple[int, ...], float] = {}
        with progress_bar(len(todo), "Cooperativity: subsets", "subset", ctx.progress) as bar:
            for s in todo:
                got[s] = ratio_of(s)
                if bar is not None:
                    bar.update(1)
        full = got[tuple(range(n))]
        alone = [{"neuron": names[i], "log10_ratio": got[(i,)]} for i in singles]
        subsets = [{"indices": list(s), "size": len(s), "log10_ratio": got[s]} for s in plan]
        by_size: Dict[int, List[float]] = {}
        for s in subsets:
            by_size.setdefault(s["size"], []).append(s["log10_ratio"])
        rows = [[size, len(v), fmt(sum(v) / len(v)), fmt(max(v)), sum(x >= eps for x in v)]
                for size, v in sorted(by_size.items())]
        mode = ("every proper subset" if n <= p.exhaustive_max else
                f"leave-one-out plus {p.subsets_per_size} random subsets of each of {len(by_size) - 1 or 1} sizes")
        measured = [f"|S| = {n}; full set log10 ratio {fmt(full)} (epsilon {eps:g}). Evaluated {len(subsets)} proper "
                    f"subsets ({mode}) and {len(alone)} neuron(s) alone, each zeroed in place on the evaluation text."]
        worst = max(subsets, key=lambda s: s["log10_ratio"], default=None)
        if n == 1:
            v1 = verdict("no proper subset reaches epsilon", None, "a single neuron has no non-empty proper subset; "
                         f"alone it gives log10 ratio {fmt(full)}")
        else:
            crossing = [s for s in subsets if s["log10_ratio"] >= eps]
            v1 = verdict("no proper subset reaches epsilon", not crossing,
                         f"{len(crossing)} of {len(subsets)} proper subsets reach epsilon = {eps:g}; the largest "
                         f"proper-subset log10 ratio is {fmt(worst['log10_ratio'])} (size {worst['size']}) vs "
                         f"{fmt(full)} for the full set")
        harmless = [s for s in subsets if s["log10_ratio"] < HARMLESS * eps]
        v2 = verdict(f"proper subsets are harmless (log10 ratio < {HARMLESS:g} epsilon)",
                     None if not subsets else len(harmless) == len(subsets),
                     "no proper subset" if not subsets else f"{len(harmless)} of {len(subsets)} below "
                     f"{HARMLESS * eps:g}")
        best_alone = max(alone, key=lambda a: a["log10_ratio"])
        v3 = verdict("no neuron alone reaches epsilon", None if n == 1 else best_alone["log10_ratio"] < eps,
                     f"strongest single neuron {best_alone['neuron']}: log10 ratio {fmt(best_alone['log10_ratio'])}")
        top_alone = sorted(alone, key=lambda a: -a["log10_ratio"])[:20]
        tables = [table("proper subsets by size", ["size", "subsets", "mean log10 ratio", "max log10 ratio",
                                                   "reaching epsilon"], rows)] if rows else []
        tables.append(table("each neuron alone (strongest first)", ["neuron", "log10 ratio"],
                            [[a["neuron"], fmt(a["log10_ratio"])] for a in top_alone]))
        figs = [figure("cooperativity", "log10 PPL ratio of every evaluated proper subset against its size; the "
                       "full set and epsilon marked.")] if subsets else []
        return self.block(measured, [v1, v2, v3], tables=tables, figures=figs,
                          data={"n": n, "epsilon": eps, "full": full, "subsets": subsets, "alone": alone,
                                "exhaustive": n <= p.exhaustive_max})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        d = data
        if not d or not d["subsets"]:
            return []
        fig = canvas((6.4, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        subs = d["subsets"]
        if subs:
            ax.scatter([s["size"] for s in subs], [s["log10_ratio"] for s in subs], s=10, alpha=0.5,
                       label="proper subset", gid="subsets")
        ax.scatter([1] * len(d["alone"]), [a["log10_ratio"] for a in d["alone"]], s=14, marker="x", color="tab:orange",
                   label="neuron alone", gid="alone")
        ax.scatter([d["n"]], [d["full"]], s=40, marker="*", color="tab:red", label="full set", gid="full")
        epsilon_line(ax, d["epsilon"])
        ax.set_xlabel("subset size")
        ax.set_ylabel("log10(PPL masked / PPL clean)")
        ax.set_title("cooperativity: proper subsets vs the full set", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return [("cooperativity", fig)]
