"""``achilles_fast.study``: the paper's experiments and its open questions on one model, one report.

Sections (one module each in ``sections/``, each a ``section.Section`` registered with ``@register``): ``critical``
(the set, its curve and layer map), ``cooperativity`` (proper subsets), ``components`` (the same budget in every
component), ``stability`` (alpha, K, input length, texts, dtypes), ``mechanism`` (massive activations, super weights,
attention sinks, zero vs mean ablation), ``generations`` (clean vs masked continuations). ``section`` is the
interface (and its ``Param``s, from which ``params.StudyParams`` derives), ``context`` holds what the sections share
(one Stage 1 pass: ``scores``), ``report`` renders Markdown and self-contained HTML, ``run`` orchestrates and caches.
"""
from .params import SECTIONS, StudyError, StudyParams
from .report import verdict_lines
from .run import study
from .section import Param, Section, Stage1, register, registered

__all__ = ["study", "StudyParams", "StudyError", "SECTIONS", "verdict_lines", "Section", "Param", "Stage1",
           "register", "registered"]
