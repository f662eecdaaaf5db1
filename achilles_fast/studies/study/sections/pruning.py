"""Section 8, pruning: unstructured magnitude and Wanda pruning with and without the critical set kept.

Every Linear weight in the decoder blocks is pruned (``compression.prune``: magnitude = the smallest |W| of each
tensor, Wanda = the smallest |W| x input-activation norm of each output channel, the norms measured on the scoring
text) at each sparsity, with protect = none / critical / random; the log10 PPL of each on the evaluation text.
The weights are restored bit-exact after each setting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

from ...compression.activations import input_norms
from ...compression.params import PRUNE_METHODS, check_method, check_sparsity
from ...compression.prune import pruned
from ...compression.weights import block_weights
from ..compressed import logs, new_figure, nll_now, protect_axes, protect_sets, rescue_verdicts
from ..context import StudyContext
from ..section import Param, Section, figure, fmt, grid_of, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def label(setting: str) -> str:
    method, s = setting.split("@")
    return f"{method} pruning at {100 * float(s):g}% sparsity"


@register
class Pruning(Section):
    name = "pruning"
    title = "Pruning"
    claim = ("A pruner must leave the critical set alone: unstructured pruning (magnitude, Wanda) that keeps the "
             "critical neurons' weights survives sparsities that break the model otherwise, and keeping as many "
             "random channels does not (outliers set how much a layer can be pruned: OWL, Yin et al. 2024).")
    order = 80
    params = (
        Param("sparsities", (0.5, 0.7), "pruning: sparsities in (0, 1), e.g. 0.5,0.7", quick=(0.5,),
              check=grid_of("sparsities", check_sparsity), flag="--sparsities", kind=float),
        Param("prune_methods", PRUNE_METHODS, "pruning: methods, e.g. magnitude,wanda",
              check=grid_of("prune_methods", check_method), flag="--prune-methods", kind=str),
    )

    def key_params(self, ctx: StudyContext) -> Dict:
        return dict(super().key_params(ctx), seed=ctx.config.seed)

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        eps = r.epsilon
        settings = [f"{m}@{s:g}" for m in p.prune_methods for s in p.sparsities]
        focus = "wanda@0.5" if "wanda@0.5" in settings else settings[0]
        if not r.names:
            return self.block(["The search did not converge: there is no critical set to protect."],
                              [verdict(f"protecting the critical set rescues {label(focus)}", None,
                                       "no critical set")])
        prot = protect_sets(ctx, r.names)
        norms = input_norms(ctx.model, ctx.ids, block_weights(ctx.model)) if "wanda" in p.prune_methods else None
        clean = ctx.clean_nll  # before the first edit
        rows: List[Dict] = []
        for m in p.prune_methods:
            for s in p.sparsities:
                for mode, pl in prot["sets"].items():
                    with pruned(ctx.model, s, m, pl, norms) as zeroed:
                        nll = nll_now(ctx)
                    rows.append({"setting": f"{m}@{s:g}", "method": m, "sparsity": s, "protect": mode,
                                 "zeroed": zeroed, **logs(nll, clean)})
        measured = [f"Unstructured {' and '.join(p.prune_methods)} pruning of every Linear weight in the decoder "
                    f"blocks at {', '.join(f'{100 * s:g}%' for s in p.sparsities)} sparsity (Wanda: |W| x the "
                    f"input-activation L2 norm on the {int(ctx.ids.numel())} scoring tokens, per output channel; "
                    f"magnitude: per tensor). Protected values are never pruned "
                    f"({prot['sets']['critical'].count():,} for the {len(r.names)} critical neuron(s), "
                    f"{prot['sets']['random'].count():,} for as many random down_proj channels). Clean log10 PPL "
                    f"{fmt(r.log10_clean_ppl)}; epsilon {eps:g}."]
        verdicts = rescue_verdicts(rows, "setting", label, eps, focus)
        tab = table("unstructured pruning by protect mode",
                    ["method", "sparsity", "protect", "zeroed fraction", "log10 PPL", "log10 ratio"],
                    [[x["method"], x["sparsity"], x["protect"], fmt(x["zeroed"], 4), fmt(x["log10_ppl"]),
                      fmt(x["log10_ratio"])] for x in rows])
        return self.block(measured, verdicts, tables=[tab],
                          figures=[figure("pruning", "log10 PPL ratio of unstructured pruning against the sparsity, "
                                          "one panel per method, protect none / critical / random; epsilon "
                                          "dashed.")],
                          data={"epsilon": eps, "methods": list(p.prune_methods), "sparsities": list(p.sparsities),
                                "rows": rows, "critical": r.names, "random": prot["random_names"],
                                "clean_log10_ppl": r.log10_clean_ppl})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        if not data.get("rows"):
            return []
        fig = new_figure(len(data["methods"]))
        for i, m in enumerate(data["methods"], 1):
            rows = [x for x in data["rows"] if x["method"] == m]
            protect_axes(fig.add_subplot(1, len(data["methods"]), i), data["sparsities"], rows, "sparsity",
                         data["epsilon"], "sparsity", f"{m} pruning")
        return [("pruning", fig)]
