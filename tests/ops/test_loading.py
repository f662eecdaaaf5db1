"""Loading the compiled ops (achilles_fast._C) and the fallback to the references (achilles_fast/ops/_lib.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import achilles_fast.ops as ops
from achilles_fast.ops import _lib

OP_NAMES = ["noisy_embeds", "absdiff_accum_", "mask_channels_", "restore_channels_", "batched_channel_mask",
            "token_nll"]


def test_every_op_is_registered_once():
    assert list(_lib.OPS) == OP_NAMES
    for name, op in _lib.OPS.items():
        assert callable(op.reference) and callable(op.triton)
        assert _lib.has_kernel(name, "CompositeExplicitAutograd")


def test_cpu_kernels_are_used_by_default():
    info = ops.backend_info()
    if not info["cpp"]:
        pytest.skip(f"no compiled CPU kernels here: {info['error']}")
    assert info["source"] == "extension" and info["error"] is None
    assert info["cpu_ops"] == OP_NAMES


def test_no_extension_falls_back_with_one_warning():
    """Without achilles_fast._C the package warns once (one line) and every op runs its reference."""
    code = r"""
import sys, warnings
sys.modules["achilles_fast._C"] = None  # as if the extension was never built
import torch, achilles_fast
import achilles_fast.ops as ops
from achilles_fast.ops.noise import noisy_embeds_ref
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    e = torch.randn(4, 8)
    a = ops.noisy_embeds(e, 5.0, 1, 0, 3)
    acc = torch.zeros(4, 8); ops.absdiff_accum_(acc, e, a)
    ops.noisy_embeds(e, 5.0, 1, 0, 3)
msgs = [str(x.message) for x in w if "achilles_fast" in str(x.message)]
assert len(msgs) == 1 and "\n" not in msgs[0] and "reference" in msgs[0], msgs
info = ops.backend_info()
assert not info["cpp"] and info["source"] == "reference" and "achilles_fast._C" in info["error"], info
assert torch.equal(a, noisy_embeds_ref(e, 5.0, 1, 0, 3))
sys.path.insert(0, HERE)
from ophelpers import opcheck_args  # the reference kernels behind every schema pass opcheck too
for name, args in opcheck_args(torch.device("cpu")).items():
    torch.library.opcheck(getattr(torch.ops.achilles_fast, name).default, args)
print("OK")
"""
    code = f"HERE = {os.path.dirname(os.path.abspath(__file__))!r}\n" + code
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_works_without_triton():
    """Without triton the package imports and every op runs (compiled or reference); the launchers say why not."""
    code = r"""
import sys
sys.modules["triton"] = None  # as if triton was not installed
import torch
import achilles_fast.ops as ops
from achilles_fast.ops import _lib
assert _lib.triton is None and not ops.backend_info()["triton"]
e = torch.randn(4, 8)
a = ops.noisy_embeds(e, 5.0, 1, 0, 3)
acc = torch.zeros(8); ops.absdiff_accum_(acc, e, a)
w = torch.randn(8, 4); saved, _ = ops.mask_channels_(w, None, torch.tensor([1]), 0)
ops.restore_channels_(w, None, torch.tensor([1]), saved, None, 0)
ops.batched_channel_mask(a, torch.ones(3, 8))
ops.token_nll(e, torch.randn(10, 8), torch.tensor([1, 2, 3, -100]))
try:
    _lib.OPS["token_nll"].triton(e, torch.randn(10, 8), torch.tensor([1, 2, 3, -100]))
    raise AssertionError("the Triton launcher ran without triton")
except RuntimeError as err:
    assert "need triton" in str(err), err
print("OK")
"""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_setup_and_cmake_read_the_one_set_of_flags():
    """setup.py, CMakeLists.txt and the nvcc check script take their flags from csrc/*_flags.txt."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for f, users in (("cxx_flags.txt", ("setup.py", "CMakeLists.txt")),
                     ("nvcc_flags.txt", ("setup.py", "CMakeLists.txt", "csrc/check_cuda_compile.sh"))):
        flags = [x.strip() for x in open(os.path.join(root, "csrc", f)) if x.strip() and not x.startswith("#")]
        assert "-O3" in flags
        for u in users:
            text = open(os.path.join(root, u)).read()
            assert f in text, f"{u} does not read csrc/{f}"
            assert "-ffp-contract" not in text and "--expt-relaxed-constexpr" not in text, f"{u} repeats flags"
