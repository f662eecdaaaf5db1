"""Section 6, generations: clean vs masked greedy continuations (``studies.generate``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

from ...generate import DEFAULT_PROMPTS, check_max_new_tokens, check_prompts, generations
from ..context import StudyContext
from ..section import Param, Section, fmt, register, table, verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@register
class Generations(Section):
    name = "generations"
    title = "Generations"
    claim = ("With the critical neurons masked the model's language ability collapses: fluent text turns into "
             "garbage.")
    order = 60
    params = (
        Param("prompts", DEFAULT_PROMPTS, "generation prompt (repeat; default: two built-in prompts)",
              check=check_prompts, flag="--prompt", append=True),
        Param("max_new_tokens", 40, "tokens per generated continuation", quick=20, check=check_max_new_tokens,
              flag="--max-new-tokens", kind=int),
    )

    def run(self, ctx: StudyContext, p) -> Dict:
        r = ctx.default_result()
        eps = r.epsilon
        if not r.names:
            return self.block(["The search did not converge: there is no critical set to mask."],
                              [verdict("masked continuations are garbage", None, "no critical set")])
        pairs = generations(ctx.model, ctx.tokenizer, r.names, p.prompts, p.max_new_tokens,
                            discover=ctx.config.discover)
        worse = [p for p in pairs if p["clean_log10_ppl"] is not None and p["masked_log10_ppl"] is not None
                 and p["masked_log10_ppl"] - p["clean_log10_ppl"] >= eps]
        detail = "; ".join(f"{p['prompt']!r}: clean {fmt(p['clean_log10_ppl'], 2)}, masked "
                           f"{fmt(p['masked_log10_ppl'], 2)}" + ("" if p["diverges_at"] is None else
                                                                f", diverges at token {p['diverges_at']}")
                           for p in pairs)
        v = verdict(f"the masked continuation is garbage to the clean model (its log10 PPL exceeds the clean "
                    f"continuation's by >= epsilon = {eps:g}) for every prompt", len(worse) == len(pairs), detail)
        measured = [f"Greedy decoding, {p.max_new_tokens} new tokens per prompt, with the {len(r.names)} "
                    "critical neuron(s) zeroed in place (restored after); each continuation is scored by the clean "
                    "model (log10 PPL of the generated tokens given the prompt)."]
        rows = [[p["prompt"], p["clean"], p["masked"]] for p in pairs]
        return self.block(measured, [v], tables=[table("continuations", ["prompt", "clean", "masked"], rows)],
                          data={"pairs": pairs, "epsilon": eps})

    def figures(self, data: Dict) -> List[Tuple[str, Figure]]:
        return []
