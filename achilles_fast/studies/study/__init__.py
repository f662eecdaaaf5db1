"""``achilles_fast.study``: the paper's experiments and its open questions on one model, one report.

Sections (one module each): ``critical`` (the set, its curve and layer map), ``cooperativity`` (proper subsets),
``components`` (the same budget in every component), ``stability`` (alpha, K, input length, texts, dtypes),
``mechanism`` (massive activations, super weights, attention sinks, zero vs mean ablation), ``generations``
(clean vs masked continuations), ``quantization`` / ``pruning`` (RTN and magnitude / Wanda pruning with the critical set
kept, or as many random channels, or nothing), ``bitflips`` (int8 single-bit faults aimed at the set vs random;
``compression`` holds the ops). ``context`` holds what they share (one Stage 1 pass: ``scores``), ``report``
renders Markdown and self-contained HTML, ``run`` orchestrates and caches.
"""
from .params import SECTIONS, StudyError, StudyParams
from .report import verdict_lines
from .run import study

__all__ = ["study", "StudyParams", "StudyError", "SECTIONS", "verdict_lines"]
