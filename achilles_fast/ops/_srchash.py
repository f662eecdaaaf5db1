"""Hash of the C++/CUDA sources an ``achilles_fast._C`` build is made from (stdlib only: setup.py loads this file
by path at build time, the loader at run time, to spot an extension built from older sources)."""
from __future__ import annotations

import hashlib
from pathlib import Path

PATTERNS = ("common/*.h", "cpu/*.cpp", "cuda/*.cu", "cuda/*.cpp", "python_module.cpp")
SIDECAR = "_C.srchash"  # written next to the built extension


def source_hash(csrc: Path) -> str:
    """sha256 (first 16 hex digits) of every build input under ``csrc``, by relative path and content."""
    h = hashlib.sha256()
    for f in sorted({p for pat in PATTERNS for p in Path(csrc).glob(pat)}):
        h.update(f.relative_to(csrc).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
