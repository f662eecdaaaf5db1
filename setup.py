"""achilles_fast build script.

Pure-Python package plus optional compiled ops (``achilles_fast._C``):
- C++ CPU kernels (csrc/cpu), built whenever torch is importable at build time;
- CUDA kernels (csrc/cuda), built when ACHILLES_FAST_BUILD_CUDA=1, or =auto (default) with a CUDA torch and nvcc.
Build against the torch you run with: ``pip install --no-build-isolation .``. Plain ``pip install .`` builds in an
isolated env without torch: the package then ships the CPU sources and JIT-compiles them on first use (cached under
~/.cache/achilles_fast), falling back to the PyTorch reference ops with a one-line warning if that fails.
"""
import os

from setuptools import find_packages, setup


def get_extensions():
    """Compiled ops ``achilles_fast._C`` (see achilles_fast/ops/_loader.py for how they are found at run time).

    - C++ CPU kernels (csrc/cpu/*.cpp, OpenMP): whenever torch is importable at build time
      (``pip install --no-build-isolation .``; ``ACHILLES_FAST_BUILD_EXT=0`` skips all compiled code).
    - CUDA kernels (csrc/cuda/*.cu): ``ACHILLES_FAST_BUILD_CUDA=1`` (error if impossible), ``0``, or ``auto``
      (default: when torch is a CUDA build and nvcc is found). Target archs: ``TORCH_CUDA_ARCH_LIST``.
    - Always: build_py ships csrc/{common,cpu} as ``achilles_fast/_csrc``, so an install built without torch
      (plain ``pip install .`` uses an isolated build env) can JIT-compile the CPU kernels once at first use.
    Returns (ext_modules, cmdclass).
    """
    import glob
    import shutil

    from setuptools.command.build_py import build_py

    root = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join(root, "csrc")

    class BuildPyWithSources(build_py):
        def run(self):
            super().run()
            for sub in ("common", "cpu"):
                dst = os.path.join(self.build_lib, "achilles_fast", "_csrc", sub)
                os.makedirs(dst, exist_ok=True)
                for f in glob.glob(os.path.join(csrc, sub, "*.[ch]*")):
                    shutil.copy2(f, dst)

    cmdclass = {"build_py": BuildPyWithSources}
    if os.environ.get("ACHILLES_FAST_BUILD_EXT", "1") == "0":
        return [], cmdclass
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return [], cmdclass

    rel = lambda paths: sorted(os.path.relpath(p, root) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(csrc, "cpu", "*.cpp"))) + ["csrc/python_module.cpp"]
    cuda_sources = rel(glob.glob(os.path.join(csrc, "cuda", "*.cu")) + glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
    mode = os.environ.get("ACHILLES_FAST_BUILD_CUDA", "auto").strip().lower()
    nvcc = None
    if cpp_extension.CUDA_HOME:
        cand = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        nvcc = cand if os.path.exists(cand) else shutil.which("nvcc")
    cuda_ok = torch.version.cuda is not None and nvcc is not None
    if mode == "1" and not cuda_ok:
        raise RuntimeError(f"ACHILLES_FAST_BUILD_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc is missing "
                           f"(CUDA_HOME={cpp_extension.CUDA_HOME})")
    build_cuda = mode == "1" or (mode == "auto" and cuda_ok)
    cxx = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"] if os.name != "nt" else ["/O2", "/openmp"]
    link = ["-fopenmp"] if os.name != "nt" else []
    if build_cuda:
        ext = cpp_extension.CUDAExtension(
            "achilles_fast._C", sources + cuda_sources, define_macros=[("ACHILLES_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]}, extra_link_args=link)
    else:
        ext = cpp_extension.CppExtension("achilles_fast._C", sources, extra_compile_args={"cxx": cxx},
                                         extra_link_args=link)
    import importlib.util
    spec = importlib.util.spec_from_file_location("_srchash", os.path.join(root, "achilles_fast", "ops", "_srchash.py"))
    srchash = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(srchash)

    class BuildExtWithHash(cpp_extension.BuildExtension):
        """Writes the sources' hash next to the extension, so the loader can tell a stale in-tree build."""

        def run(self):
            super().run()
            for e in self.extensions:
                out = os.path.join(os.path.dirname(self.get_ext_fullpath(e.name)), srchash.SIDECAR)
                with open(out, "w") as f:
                    f.write(srchash.source_hash(csrc) + "\n")

    cmdclass["build_ext"] = BuildExtWithHash
    return [ext], cmdclass


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
        "ninja",  # JIT build of the C++ ops when no prebuilt extension loads
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
