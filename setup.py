"""achilles_fast build script.

Pure-Python package plus the compiled ops ``achilles_fast._C`` (C++ CPU kernels, plus CUDA kernels when built with
CUDA), built against the torch you run with: ``pip install --no-build-isolation .`` (or ``-e .``; after editing
csrc/: ``python setup.py build_ext --inplace``). Without them (e.g. a plain ``pip install .``, which builds in an
isolated environment without torch) the ops run their PyTorch references, with a one-line warning at first use.
"""
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def version() -> str:
    """The package's version, read from achilles_fast/version.py (its one place) without importing the package."""
    ns = {}
    with open(os.path.join(ROOT, "achilles_fast", "version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def compiler_flags(name):
    """The flags listed in csrc/<name> (one per line, '#' comments): shared with CMakeLists.txt."""
    with open(os.path.join(ROOT, "csrc", name)) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def get_extensions():
    """``achilles_fast._C``: ([extension], cmdclass), or ([], {}) when it cannot or should not be built.

    - C++ CPU kernels (csrc/cpu/*.cpp, OpenMP): whenever torch is importable at build time
      (``ACHILLES_FAST_BUILD_EXT=0`` skips all compiled code).
    - CUDA kernels (csrc/cuda/*.cu): ``ACHILLES_FAST_BUILD_CUDA=1`` (error if impossible), ``0``, or ``auto``
      (default: when torch is a CUDA build and nvcc is found). Target archs: ``TORCH_CUDA_ARCH_LIST``.
    """
    import glob
    import shutil

    if os.environ.get("ACHILLES_FAST_BUILD_EXT", "1") == "0":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("achilles_fast: torch is not importable at build time, so the compiled ops are not built (the package "
              "will use the PyTorch reference ops); install with `pip install --no-build-isolation .`", file=sys.stderr)
        return [], {}

    rel = lambda paths: sorted(os.path.relpath(p, ROOT) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))) + ["csrc/python_module.cpp"]
    cuda_sources = rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    mode = os.environ.get("ACHILLES_FAST_BUILD_CUDA", "auto").strip().lower()
    nvcc = None
    if cpp_extension.CUDA_HOME:
        cand = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else shutil.which("nvcc")
    cuda_ok = torch.version.cuda is not None and nvcc is not None
    if mode == "1" and not cuda_ok:
        raise RuntimeError(f"ACHILLES_FAST_BUILD_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc is missing "
                           f"(CUDA_HOME={cpp_extension.CUDA_HOME})")
    cxx = compiler_flags("cxx_flags.txt")
    link = [f for f in cxx if f == "-fopenmp"]
    if mode == "1" or (mode == "auto" and cuda_ok):
        ext = cpp_extension.CUDAExtension("achilles_fast._C", sources + cuda_sources, extra_link_args=link,
                                          extra_compile_args={"cxx": cxx, "nvcc": compiler_flags("nvcc_flags.txt")})
    else:
        ext = cpp_extension.CppExtension("achilles_fast._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=link)
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = get_extensions()

setup(
    name="achilles_fast",
    version=version(),
    description="Find the handful of neurons an LLM cannot live without, fast (arXiv 2510.10238)",
    long_description=open(os.path.join(ROOT, "README.md")).read()
    if os.path.exists(os.path.join(ROOT, "README.md")) else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["achilles_fast", "achilles_fast.*"]),
    package_data={"achilles_fast": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=4.50,<6",
        "numpy",
        "safetensors",
        "tqdm",
        "rich",
        "matplotlib",
        "pyyaml",
        "gguf>=0.10",
        "accelerate>=0.26",
        "huggingface_hub",
    ],
    extras_require={
        "triton": ["triton"],
        "ray": ["ray"],
        "tables": ["pandas", "pyarrow"],  # report --format parquet, rows_dataframe
        "test": ["pytest", "pytest-timeout", "psutil"],
        "eval": ["lm_eval>=0.4.5"],
    },
    entry_points={"console_scripts": ["achilles-fast=achilles_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
