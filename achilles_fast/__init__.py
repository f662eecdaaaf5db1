"""achilles_fast: find the handful of neurons an LLM cannot live without, fast (arXiv 2510.10238).

Layout: ``method`` (config, Stage 1, rankers, ranking, Stage 2, masking, perplexity, the API), ``models`` (family registry,
targets, neurons, MoE, loading, devices), ``ops`` (the fused kernels), ``studies`` (baselines, robustness, plots,
reports, sweeps), ``commands`` + ``cli`` (the ``achilles-fast`` command), ``bench`` (benchmarks).
"""
from .version import __version__  # noqa: F401

from .method.api import evaluate_corpus, evaluate_mask, find_critical, rank_neurons  # noqa: E402
from .method.config import FindConfig  # noqa: E402
from .method.export import save_masked  # noqa: E402
from .method.masking import masked  # noqa: E402
from .method.rankers import Ranker, register_ranker  # noqa: E402
from .method.ranking import Ranking  # noqa: E402
from .method.result import CriticalResult, read_neurons  # noqa: E402
from .method.stage2 import search_epsilons, search_ranking  # noqa: E402
from .models.loading import load_model  # noqa: E402
from .models.neurons import Neuron  # noqa: E402
from .models.families import FamilySpec, register_family  # noqa: E402
from .studies.baselines import baseline_result, compare_rankers  # noqa: E402
from .studies.robustness import critical_overlap  # noqa: E402
from .studies.sweep import SweepSpec, run_sweep  # noqa: E402


def plot_result(result, out_dir, stem: str = "result", formats=("png", "svg")):
    """Phase-transition curve and layer x component map of a result -> saved file paths (matplotlib is imported
    on first use)."""
    from .studies.plots import plot_result as _plot
    return _plot(result, out_dir, stem, formats)


def study(model, tokenizer=None, text=None, **kwargs):
    """The paper's claims and open questions checked on one model, one report (``achilles_fast.studies.study``;
    matplotlib is imported on first use). See ``achilles_fast.studies.study.study`` for the arguments."""
    from .studies.study import study as _study
    return _study(model, tokenizer, text, **kwargs)


__all__ = ["find_critical", "evaluate_mask", "evaluate_corpus", "masked", "load_model", "FindConfig", "Ranker",
           "Ranking", "register_ranker", "search_ranking", "Neuron", "CriticalResult", "FamilySpec",
           "register_family", "baseline_result", "compare_rankers", "critical_overlap", "SweepSpec", "run_sweep",
           "plot_result", "save_masked", "rank_neurons", "read_neurons", "search_epsilons", "study", "__version__"]
