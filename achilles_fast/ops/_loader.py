"""Finding and loading the compiled kernels (lazily, at the first op call).

Order:
1. ``achilles_fast._C``: the extension built by setup.py (``pip install --no-build-isolation .`` or ``-e .``):
   C++ CPU kernels, plus CUDA kernels when built with a CUDA torch and nvcc (ACHILLES_FAST_BUILD_CUDA).
2. JIT fallback for the C++ CPU kernels, when (1) is missing or does not load (e.g. a plain ``pip install .``,
   which builds in an isolated environment without torch, or a torch upgraded after the build): the sources
   (``csrc/`` of a source checkout, or the copy shipped as ``achilles_fast/_csrc``) are compiled once with
   ``torch.utils.cpp_extension.load`` (needs a C++ compiler with OpenMP and ninja; about 20-30 s) into
   ``$ACHILLES_FAST_CACHE`` (default ``~/.cache/achilles_fast``), keyed by source hash, torch and Python versions,
   and reused by later processes in ~0.1 s. Also used instead of (1) when (1) is stale: in a source checkout, an
   extension built from older ``csrc/`` (setup.py records the sources' hash beside it) is skipped with a warning.
   ``ACHILLES_FAST_JIT=0`` turns it off, ``=1`` forces it even when (1) loads (for testing the JIT itself).
3. Nothing: one warning line, and every op runs its pure-PyTorch reference (same results, slower).

On CUDA, ops without a compiled CUDA kernel get the Triton kernels when triton is importable.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from . import _registry, _srchash

_lock = threading.Lock()
_state: dict = {"loaded": False, "source": None, "error": None, "triton_cuda": [], "jit_dir": None}

PKG = Path(__file__).resolve().parents[1]


def csrc_dir() -> Path | None:
    for cand in (PKG.parent / "csrc", PKG / "_csrc"):
        if (cand / "cpu" / "ops_cpu.cpp").exists():
            return cand
    return None


def _cache_root() -> Path:
    env = os.environ.get("ACHILLES_FAST_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "achilles_fast"


def stale_extension(ext_origin: str | None, src: Path | None) -> str | None:
    """Why the built extension at ``ext_origin`` does not match the C++ sources in ``src`` (None: it matches, or
    cannot be checked). Only a source checkout is checked: an installed package ships sources and extension from
    one build. The hash is the one setup.py wrote beside the extension (``_C.srchash``)."""
    if not ext_origin or src is None or src.name != "csrc":
        return None
    sidecar = Path(ext_origin).parent / _srchash.SIDECAR
    if not sidecar.exists():
        return None
    built, now = sidecar.read_text().strip(), _srchash.source_hash(src)
    if built == now:
        return None
    return (f"{Path(ext_origin).name} was built from other sources than {src} (hash {built} vs {now}); rebuild "
            "with `python setup.py build_ext --inplace` (or `pip install --no-build-isolation -e .`)")


def _jit_build() -> str:
    src = csrc_dir()
    if src is None:
        raise RuntimeError("no C++ sources to JIT-compile (csrc/ not found)")
    cflags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
    digest = _srchash.source_hash(src, _srchash.CPU_PATTERNS, salt=" ".join(cflags))
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{digest[:12]}"
    build_dir = _cache_root() / "jit" / tag.replace("+", "_")
    build_dir.mkdir(parents=True, exist_ok=True)
    _state["jit_dir"] = str(build_dir)
    if not any(build_dir.glob("*.so")) and os.environ.get("ACHILLES_FAST_QUIET", "0") != "1":
        print(f"achilles_fast: compiling the C++ CPU ops once (~20-60 s), cached in {build_dir}", file=sys.stderr,
              flush=True)
    from torch.utils.cpp_extension import load
    load(name="achilles_fast_cpu_jit", sources=[str(f) for f in _srchash.source_files(src, ("cpu/*.cpp",))],
         extra_cflags=cflags, extra_ldflags=["-fopenmp"],
         build_directory=str(build_dir), is_python_module=False, verbose=False)
    return f"jit:{build_dir}"


def ensure_loaded() -> dict:
    """Load the compiled kernels once per process; returns the loader state."""
    if _state["loaded"]:
        return _state
    with _lock:
        if _state["loaded"]:
            return _state
        jit = os.environ.get("ACHILLES_FAST_JIT", "auto").strip().lower()
        errors = []
        if jit != "1":
            spec = importlib.util.find_spec("achilles_fast._C")
            stale = stale_extension(spec.origin if spec is not None else None, csrc_dir())
            if stale is not None:
                warnings.warn(f"achilles_fast: {stale}; using a JIT build of the current CPU sources meanwhile "
                              "(CUDA ops then come from Triton)", RuntimeWarning, stacklevel=3)
                errors.append("achilles_fast._C: stale")
        if jit != "1" and not errors:
            try:
                import achilles_fast._C  # noqa: F401  (registers the kernels)
                _state["source"] = "extension"
            except Exception as e:  # ImportError, or an undefined symbol from another torch build
                errors.append(f"achilles_fast._C: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if _state["source"] is None and jit not in ("0", "off", "false", "no"):
            try:
                _state["source"] = _jit_build()
            except Exception as e:
                msg = str(e).strip().splitlines()
                errors.append(f"JIT build: {type(e).__name__}: {msg[-1] if msg else ''}")
        if _state["source"] is None:
            _state["error"] = "; ".join(errors)
            warnings.warn("achilles_fast: compiled ops unavailable, using the PyTorch reference ops (same results, "
                          "slower); build them with `pip install --no-build-isolation .` ["
                          + _state["error"] + "]", RuntimeWarning, stacklevel=3)
        if importlib.util.find_spec("triton") is not None and torch.cuda.is_available():
            try:
                _state["triton_cuda"] = _registry.register_triton_for_cuda()
            except Exception as e:  # pragma: no cover
                warnings.warn(f"achilles_fast: Triton kernels not registered for CUDA: {e}", RuntimeWarning)
        _state["loaded"] = True
    return _state
