"""Hash of the C++/CUDA sources an ``achilles_fast._C`` build is made from (stdlib only: setup.py loads this file
by path at build time, the loader at run time, to spot an extension built from older sources)."""
from __future__ import annotations

import hashlib
from pathlib import Path

PATTERNS = ("common/*.h", "cpu/*.cpp", "cuda/*.cu", "cuda/*.cpp", "python_module.cpp")  # inputs of _C
CPU_PATTERNS = ("common/*.h", "cpu/*.cpp")  # inputs of the CPU JIT build
SIDECAR = "_C.srchash"  # written next to the built extension


def source_files(csrc: Path, patterns=PATTERNS) -> list:
    """The files under ``csrc`` matching ``patterns``, sorted."""
    return sorted({p for pat in patterns for p in Path(csrc).glob(pat)})


def source_hash(csrc: Path, patterns=PATTERNS, salt: str = "") -> str:
    """sha256 (first 16 hex digits) of ``salt`` and the matching build inputs, by relative path and content."""
    h = hashlib.sha256(salt.encode())
    for f in source_files(csrc, patterns):
        h.update(f.relative_to(csrc).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
