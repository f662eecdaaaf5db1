"""Section 7, quantisation: round-to-nearest with and without the critical set kept in full precision.

Every Linear weight in the decoder blocks is replaced by its RTN round trip (symmetric, one scale per output channel
or per ``group_size`` inputs; ``compression.quantize``) at each bit width, with protect = none / critical (the
set's protect list kept in full precision) / random (as many random down_proj channels kept); the log10 PPL of
each on the evaluation text. The weights are restored bit-exact after each setting.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

from ...compression.params import check_bits, check_group_size
from ...compression.quantize import quantized
from ..compressed import logs, new_figure, nll_now, protect_axes, protect_sets, rescue_verdicts, study_check
from ..context import StudyContext
from ..section import Param, Section, figure, fmt, grid_of, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def focus_bits(bits) -> int:
    return 4 if 4 in bits else min(bits)


@register
class Quantization(Section):
    name = "quantization"
    title = "Quantisation"
    claim = ("If a handful of channels holds the model together, a quantiser must not touch them: round-to-nearest "
             "quantisation that keeps the critical set in full precision survives bit widths that break it "
             "otherwise (as keeping one super weight rescues RTN, Yu et al. 2024), and keeping as many random "
             "channels does not.")
    order = 70
    params = (
        Param("bits", (8, 4, 3), "quantization: RTN bit widths in 2..8, e.g. 8,4,3", quick=(8, 4),
              check=grid_of("bits", check_bits), flag="--bits", kind=int),
        Param("group_size", None, "quantization: inputs sharing one scale (default: one scale per output channel)",
              check=study_check(check_group_size), flag="--group-size", kind=int),
    )

    def key_params(self, ctx: StudyContext) -> Dict:
        return dict(super().key_params(ctx), seed=ctx.config.seed)

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        eps = r.epsilon
        if not r.names:
            return self.block(["The search did not converge: there is no critical set to protect."],
                              [verdict(f"protecting the critical set rescues {focus_bits(p.bits)}-bit RTN", None,
                                       "no critical set")])
        prot = protect_sets(ctx, r.names)
        clean = ctx.clean_nll  # before the first edit
        rows: List[Dict] = []
        for bits in p.bits:
            for mode, pl in prot["sets"].items():
                with quantized(ctx.model, bits, p.group_size, pl) as kept:
                    nll = nll_now(ctx)
                rows.append({"bits": bits, "protect": mode, "kept": kept, **logs(nll, clean)})
        scales = "one scale per output channel" if p.group_size is None else f"one scale per {p.group_size} inputs"
        measured = [f"Symmetric round-to-nearest ({scales}) of every Linear weight in the decoder blocks at "
                    f"{', '.join(map(str, p.bits))} bits; protect critical keeps the {len(r.names)} neuron(s)' "
                    f"weights ({prot['sets']['critical'].count():,} values) in full precision, protect random as "
                    f"many random down_proj channels ({prot['sets']['random'].count():,} values). Clean log10 PPL "
                    f"{fmt(r.log10_clean_ppl)} on {int(ctx.eval_ids.numel())} evaluation tokens; epsilon {eps:g}."]
        verdicts = rescue_verdicts(rows, "bits", lambda b: f"{b}-bit RTN", eps, focus_bits(p.bits))
        tab = table("RTN quantisation by protect mode", ["bits", "protect", "kept values", "log10 PPL",
                                                         "log10 ratio"],
                    [[x["bits"], x["protect"], x["kept"], fmt(x["log10_ppl"]), fmt(x["log10_ratio"])] for x in rows])
        return self.block(measured, verdicts, tables=[tab],
                          figures=[figure("quantization", "log10 PPL ratio of RTN quantisation against the bit "
                                          "width, protect none / critical / random; epsilon dashed.")],
                          data={"epsilon": eps, "group_size": p.group_size, "bits": list(p.bits), "rows": rows,
                                "critical": r.names, "random": prot["random_names"],
                                "clean_log10_ppl": r.log10_clean_ppl})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        if not data.get("rows"):
            return []
        fig = new_figure()
        protect_axes(fig.add_subplot(1, 1, 1), data["bits"], data["rows"], "bits", data["epsilon"], "bits",
                     "RTN quantisation: protect none / critical / random")
        return [("quantization", fig)]
