"""The one file writer (atomic_write, write_json) and the one output-path check (check_writable)."""
from __future__ import annotations

import json
import math
import os
import stat

import pytest

from achilles_fast.utils import atomic_write, check_writable, write_json


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_text_bytes_and_callable(tmp_path):
    atomic_write(tmp_path / "a.txt", "héllo\n")
    assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode("utf-8")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(str(tmp_path / "c.txt"), lambda p: open(p, "w").write("via callable"))
    assert (tmp_path / "c.txt").read_text() == "via callable"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~_umask()  # as open() would make it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.txt"]


def test_atomic_write_leaves_nothing_when_the_writer_raises(tmp_path):
    def half(p):
        with open(p, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "new.json", half)
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "old.json", half)
    assert (tmp_path / "old.json").read_text() == "old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["old.json"]


def test_write_json_matches_json_dumps_and_refuses_nan(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    write_json(obj, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == json.dumps(obj, indent=2) + "\n"
    write_json(obj, tmp_path / "y.json", indent=1)
    assert (tmp_path / "y.json").read_text() == json.dumps(obj, indent=1) + "\n"
    with pytest.raises(ValueError):
        write_json({"x": math.nan}, tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_check_writable_accepts_writable_paths_and_creates_nothing(tmp_path):
    check_writable(tmp_path / "new.json", "--out")
    (tmp_path / "old.json").write_text("x")
    check_writable(tmp_path / "old.json", "--out")
    check_writable(tmp_path / "new" / "deep", "--plot", folder=True)  # made later, with its parents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_check_writable_refusals(tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "folder").mkdir()
    cases = [
        (tmp_path / "folder", {}, "--out", "is a folder; give a file name"),
        (tmp_path / "nowhere" / "r.json", {}, "--out", "folder"),
        (tmp_path / "a_file" / "r.json", {}, "--out", "is a file, not a folder"),
        (tmp_path / "a_file", {"folder": True}, "--plot", "exists and is not a folder"),
        (tmp_path / "a_file" / "sub", {"folder": True}, "--plot", "is a file, not a folder"),
    ]
    for path, kw, what, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            check_writable(path, what, **kw)
        assert str(e.value).startswith(f"{what} {path}") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        check_writable(tmp_path / "nowhere" / "r.json", "--out")

    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match=r"^\S+ is a folder"):  # no prefix: the message starts with the path
        check_writable(tmp_path / "folder", error=MyError)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions are not enforced for root")
def test_check_writable_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "old.json").write_text("x")
    (tmp_path / "locked.json").write_text("x")
    os.chmod(tmp_path / "locked.json", 0o444)
    os.chmod(ro, 0o555)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            check_writable(ro / "new.json", "--out")
        with pytest.raises(ValueError, match="is not writable"):
            check_writable(ro / "sub", "--plot", folder=True)
        with pytest.raises(ValueError, match="the file is not writable"):
            check_writable(tmp_path / "locked.json", "--out")
    finally:
        os.chmod(ro, 0o755)
    assert [p.name for p in ro.iterdir()] == ["old.json"]


def test_check_writable_unwritable_without_permission_bits(tmp_path, monkeypatch):
    """A file system that refuses the probe (read-only mount, full disk) fails the check too."""
    import tempfile

    def refuse(*a, **kw):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"cannot write in .* \(Read-only file system\)"):
        check_writable(tmp_path / "x.json", "--out")


def test_check_writable_read_only_folder_as_any_user(tmp_path, monkeypatch):
    """Read-only folder and file as access(2) reports them (root passes the chmod test above by skipping it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (tmp_path / "locked.json").write_text("x")
    real = os.access
    denied = {str(ro), str(tmp_path / "locked.json")}
    monkeypatch.setattr(os, "access", lambda p, mode: False if mode == os.W_OK and str(p) in denied
                        else real(p, mode))
    with pytest.raises(ValueError, match=f"--out {ro / 'new.json'}: folder {ro} is not writable"):
        check_writable(ro / "new.json", "--out")
    with pytest.raises(ValueError, match="is not writable"):
        check_writable(ro / "sub" / "deeper", "--plot", folder=True)
    with pytest.raises(ValueError, match="the file is not writable"):
        check_writable(tmp_path / "locked.json", "--out")
    assert list(ro.iterdir()) == []
