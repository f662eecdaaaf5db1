"""achilles_fast: find the handful of neurons an LLM cannot live without, fast (arXiv 2510.10238)."""
__version__ = "0.1.0"

from .api import evaluate_mask, find_critical  # noqa: E402
from .loading import load_model  # noqa: E402
from .masking import masked  # noqa: E402
from .neurons import Neuron  # noqa: E402
from .registry import FamilySpec, register_family  # noqa: E402
from .result import CriticalResult  # noqa: E402

__all__ = ["find_critical", "evaluate_mask", "masked", "load_model", "Neuron", "CriticalResult", "FamilySpec",
           "register_family", "__version__"]
