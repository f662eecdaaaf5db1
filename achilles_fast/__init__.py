"""achilles_fast: find the handful of neurons an LLM cannot live without, fast (arXiv 2510.10238)."""
__version__ = "0.1.0"

from .api import evaluate_mask, find_critical  # noqa: E402
from .loading import load_model  # noqa: E402
from .masking import masked  # noqa: E402
from .neurons import Neuron  # noqa: E402
from .registry import FamilySpec, register_family  # noqa: E402
from .result import CriticalResult  # noqa: E402
from .baselines import baseline_result, compare_rankers  # noqa: E402
from .robustness import critical_overlap  # noqa: E402
from .sweep import SweepSpec, run_sweep  # noqa: E402
from .windowed import evaluate_corpus  # noqa: E402


def plot_result(result, out_dir, stem: str = "result", formats=("png", "svg")):
    """Phase-transition curve and layer x component map of a result -> saved file paths (matplotlib, lazy)."""
    from .plots import plot_result as _plot
    return _plot(result, out_dir, stem, formats)

__all__ = ["find_critical", "evaluate_mask", "masked", "load_model", "Neuron", "CriticalResult", "FamilySpec",
           "register_family", "baseline_result", "compare_rankers", "critical_overlap", "SweepSpec", "run_sweep",
           "evaluate_corpus", "plot_result", "__version__"]
