"""tests/data/stories260K: every file matches the sha256 its SOURCE.txt lists, and ../shared's copy when present."""
from __future__ import annotations

import hashlib

from conftest import SHARED, STORIES


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed() -> dict:
    """{file name: sha256} from the sha256 block at the top of SOURCE.txt."""
    out = {}
    for line in (STORIES / "SOURCE.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64 and all(c in "0123456789abcdef" for c in parts[0]):
            out[parts[1]] = parts[0]
    return out


def test_files_match_their_source_note():
    files = {p.name for p in STORIES.iterdir() if p.is_file()} - {"SOURCE.txt"}
    sums = listed()
    assert set(sums) == files and {"model.safetensors", "config.json", "tokenizer.json"} <= files
    assert {name: _sha256(STORIES / name) for name in files} == sums


def test_identical_to_shared_copy_when_present():
    shared = SHARED / "models" / "stories260K"
    if not shared.exists():
        return  # nothing to compare with on a fresh clone; the sha256 check above still holds
    assert {name: _sha256(shared / name) for name in listed()} == listed()
