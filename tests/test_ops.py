"""achilles_fast:: custom ops vs their pure-PyTorch references, per backend.

Backends (the ``backend`` parameter):
- ``cpp``: the C++ CPU kernels (achilles_fast._C or the JIT build), CPU tensors;
- ``triton``: the Triton kernels (``achilles_fast::triton_*``): on CUDA, or on CPU tensors under
  ``TRITON_INTERPRET=1`` (run as a separate invocation: ``TRITON_INTERPRET=1 pytest tests/test_ops.py -m triton``);
- ``cuda``: the compiled CUDA kernels (marked gpu).
Every float output of the kernels is checked with uninitialised memory poisoned (NaN-filled ``empty``), so an
element a kernel fails to write shows up as a mismatch.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import achilles_fast.ops as ops
from achilles_fast.ops import _registry
from achilles_fast.ops import reference as R

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None

BACKENDS = [
    pytest.param("cpp", id="cpp"),
    pytest.param("triton", id="triton", marks=pytest.mark.triton),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def device_of(backend: str) -> torch.device:
    if backend == "cpp":
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    return torch.device("cuda" if HAS_CUDA else "cpu")


def op_for(backend: str, name: str):
    """The op implementing ``name`` on ``backend`` (skips when that backend is unavailable here)."""
    ops.ensure_loaded()
    if backend == "cpp":
        if not _registry.has_kernel(name, "CPU"):
            pytest.skip(f"no C++ CPU kernel for {name}: {ops.backend_info()['error']}")
        return getattr(torch.ops.achilles_fast, name)
    if backend == "cuda":
        if not HAS_CUDA:
            pytest.skip("needs a CUDA device")
        if name not in ops.backend_info()["cuda_ops"]:
            pytest.skip(f"achilles_fast._C was built without CUDA kernels ({name})")
        return getattr(torch.ops.achilles_fast, name)
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    if not HAS_CUDA and not INTERPRET:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (separate pytest run: TRITON_INTERPRET=1 "
                    "pytest tests/test_ops.py -m triton)")
    return getattr(torch.ops.achilles_fast, "triton_" + name)


def shapes_for(backend: str, full):
    """Shapes per backend: the Triton interpreter runs each program in numpy, keep its grids small."""
    return full if not (backend == "triton" and not HAS_CUDA) else full[: max(2, len(full) - 1)]


@contextlib.contextmanager
def poisoned_empty():
    """torch.empty / at::empty return NaN-filled memory inside the block."""
    import torch.utils.deterministic as det
    old_det, old_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _tol(dtype):
    return {torch.float32: (2e-6, 2e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 1e-2)}[dtype]


# ---------------------------------------------------------------------------------------------------------------
# noisy_embeds
# ---------------------------------------------------------------------------------------------------------------
NOISE_SHAPES = [(1, 172), (7, 576), (115, 172), (3, 4099)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_embeds_matches_reference(backend, dtype):
    op = op_for(backend, "noisy_embeds")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(1)
    for T, H in shapes_for(backend, NOISE_SHAPES):
        e = torch.randn(T, H, generator=g).to(dtype)
        for seed, k0, kc in ((0, 0, 2), (2**40 + 7, 3, 1), (2**64 - 1, 1, 2)):
            with poisoned_empty():
                got = op(e.to(dev), 5.0, ops._signed64(seed), k0, kc).cpu()
            want = R.noisy_embeds_ref(e, 5.0, seed, k0, kc)
            assert got.dtype == dtype and got.shape == (kc, T, H)
            assert not got.isnan().any()
            if backend == "cpp":  # integer part in C++, float part with the reference's own ATen ops
                assert torch.equal(got, want), "C++ noisy_embeds must be bit-identical to the CPU reference"
            rtol, atol = _tol(dtype)
            torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_values_match_philox_spec(backend):
    """alpha = 1 on zero embeddings gives the noise itself: every value within ~1e-6 of the reference.

    A wrong Philox word would give an unrelated normal (error O(1)), so this checks the integer stream is exact.
    """
    op = op_for(backend, "noisy_embeds")
    T, H = 5, 333
    e = torch.zeros(T, H)
    for seed in (0, 1234567, 2**33 + 5, 2**63 + 11):
        got = op(e.to(device_of(backend)), 1.0, ops._signed64(seed), 7, 3).cpu()
        want = R.noisy_embeds_ref(e, 1.0, seed, 7, 3)
        err = (got - want).abs() / want.abs().clamp_min(1.0)
        assert err.max().item() < 2e-6, err.max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_reproducible_and_chunk_independent(backend):
    op = op_for(backend, "noisy_embeds")
    dev = device_of(backend)
    e = torch.randn(7, 99, device=dev)
    a = op(e, 3.0, 42, 0, 6)
    assert torch.equal(a, op(e, 3.0, 42, 0, 6)), "same seed must give the same bits"
    parts = torch.cat([op(e, 3.0, 42, 0, 1), op(e, 3.0, 42, 1, 3), op(e, 3.0, 42, 4, 2)])
    assert torch.equal(a, parts), "noise must not depend on how the K samples are chunked"
    assert not torch.equal(a, op(e, 3.0, 43, 0, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_statistics(backend):
    """Standard normal: mean, std, tails, and no correlation across k, t and h."""
    op = op_for(backend, "noisy_embeds")
    K, T, H = (8, 16, 512) if backend == "triton" and not HAS_CUDA else (16, 32, 1024)
    z = op(torch.zeros(T, H, device=device_of(backend)), 1.0, 2024, 0, K).cpu().double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / n ** 0.5
    assert abs(z.std().item() - 1) < 5 * (2 / n) ** 0.5
    assert abs((z.abs() > 1.96).double().mean().item() - 0.05) < 5 * (0.05 * 0.95 / n) ** 0.5
    for a, b in ((z[1:], z[:-1]), (z[:, 1:], z[:, :-1]), (z[:, :, 1:], z[:, :, :-1])):  # along k, t, h
        corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 5 / a.numel() ** 0.5


# ---------------------------------------------------------------------------------------------------------------
# absdiff_accum_
# ---------------------------------------------------------------------------------------------------------------
ABS_SHAPES = [(1, 172), (7, 4099), (115, 576)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_position", [True, False], ids=["per_position", "reduced"])
def test_absdiff_matches_reference(backend, dtype, per_position):
    op = op_for(backend, "absdiff_accum_")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(2)
    for T, C in shapes_for(backend, ABS_SHAPES):
        for K in (1, 5):
            clean = torch.randn(T, C, generator=g).to(dtype)
            noisy = (clean.float() + torch.randn(K, T, C, generator=g)).to(dtype)
            acc0 = torch.rand((T, C) if per_position else (C,), generator=g) * 10  # not zeros: checks +=
            want = R.absdiff_accum_ref(acc0.clone(), clean, noisy)
            acc = acc0.clone().to(dev)
            with poisoned_empty():
                op(acc, clean.to(dev), noisy.to(dev))
            got = acc.cpu()
            assert not got.isnan().any()
            scale = K * (1 if per_position else T)
            torch.testing.assert_close(got, want, rtol=2e-6 * scale, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absdiff_noncontiguous_and_accumulates(backend):
    op = op_for(backend, "absdiff_accum_")
    dev = device_of(backend)
    clean = torch.randn(9, 40, device=dev)
    noisy = torch.randn(40, 9, 3, device=dev).permute(2, 1, 0)  # [3, 9, 40], non-contiguous
    acc = torch.zeros(40, 9, device=dev).t()  # [9, 40] non-contiguous accumulator
    op(acc, clean, noisy)
    op(acc, clean, noisy)
    want = R.absdiff_accum_ref(torch.zeros(9, 40), clean.cpu(), noisy.cpu()) * 2
    torch.testing.assert_close(acc.cpu(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# mask_channels_ / restore_channels_
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mask_restore_exact(backend, dtype):
    mask, restore = op_for(backend, "mask_channels_"), op_for(backend, "restore_channels_")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    for shape, dim in (((576, 1536), 0), ((1536, 576), 1), ((172, 7), 0), ((4099,), 0), ((5, 6, 7), 1)):
        w0 = torch.randn(shape, generator=g).to(dtype)
        n = shape[dim]
        ch = torch.tensor(sorted({0, n - 1, n // 2, 3 % n}) + [n // 2], dtype=torch.long)  # a duplicate too
        w = w0.clone().to(dev)
        with poisoned_empty():
            saved = mask(w, ch.to(dev), dim)
        w_ref = w0.clone()
        saved_ref, _ = R.mask_rows_ref(w_ref, None, ch, dim)
        assert torch.equal(w.cpu(), w_ref), "masked weight differs from the reference"
        assert torch.equal(saved.cpu(), saved_ref), "saved originals differ from the reference"
        assert (w.cpu().index_select(dim, ch) == 0).all()
        restore(w, ch.to(dev), saved, dim)
        assert torch.equal(w.cpu(), w0), "restore is not bit-exact"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_rejects_bad_channel(backend):
    mask = op_for(backend, "mask_channels_")
    dev = device_of(backend)
    w = torch.randn(4, 3, device=dev)
    w0 = w.clone()
    with pytest.raises((RuntimeError, IndexError)):
        mask(w, torch.tensor([1, 4], device=dev), 0)
    assert torch.equal(w, w0), "nothing may change when a channel is out of range"


def test_public_mask_api_with_bias_and_conv1d_layout():
    w0, b0 = torch.randn(10, 6), torch.randn(6)
    w, b = w0.clone(), b0.clone()
    ch = torch.tensor([1, 4])
    sw, sb = ops.mask_channels_(w, b, ch, dim=1)  # GPT-2 Conv1D: columns
    assert (w[:, ch] == 0).all() and (b[ch] == 0).all() and torch.equal(sb, b0[ch])
    ops.restore_channels_(w, b, ch, sw, sb, dim=1)
    assert torch.equal(w, w0) and torch.equal(b, b0)


# ---------------------------------------------------------------------------------------------------------------
# batched_channel_mask
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_channel_mask_exact(backend, dtype):
    op = op_for(backend, "batched_channel_mask")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(4)
    for B, T, C in shapes_for(backend, [(1, 1, 172), (3, 7, 576), (2, 115, 4099)]):
        y = torch.randn(B, T, C, generator=g).to(dtype)
        y[0, 0, 0] = -1.5  # masked negative -> -0.0 like the reference product
        keep = (torch.rand(B, C, generator=g) > 0.3).float()
        keep[0, 0] = 0
        with poisoned_empty():
            got = op(y.to(dev), keep.to(dev)).cpu()
        want = R.batched_channel_mask_ref(y, keep)
        assert got.dtype == dtype and torch.equal(got, want)
        assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                           want.view(torch.int16 if dtype != torch.float32 else torch.int32)), "not bit-identical"


# ---------------------------------------------------------------------------------------------------------------
# token_nll
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_nll_matches_reference(backend, dtype):
    op = op_for(backend, "token_nll")
    dev = device_of(backend)
    g = torch.Generator().manual_seed(5)
    cases = [(1, 64, 97), (7, 40, 1000), (115, 64, 4099)] if not (backend == "triton" and not HAS_CUDA) \
        else [(1, 24, 97), (7, 40, 300)]
    for N, H, V in cases:
        h = torch.randn(N, H, generator=g).to(dtype)
        w = (torch.randn(V, H, generator=g) / H ** 0.5).to(dtype)
        t = torch.randint(0, V, (N,), generator=g)
        if N > 2:
            t[1] = -100  # ignore_index
            t[2] = V - 1
        with poisoned_empty():
            got = op(h.to(dev), w.to(dev), t.to(dev)).cpu()
        want = R.token_nll_ref(h, w, t)
        assert got.dtype == torch.float32 and got.shape == (N,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# opcheck on every op
# ---------------------------------------------------------------------------------------------------------------
def _opcheck_cases(dev):
    g = torch.Generator().manual_seed(6)
    r = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    return {
        "noisy_embeds": (r(7, 33), 5.0, 3, 2, 4),
        "absdiff_accum_": (torch.rand(7, 33, generator=g).to(dev), r(7, 33), r(3, 7, 33)),
        "mask_channels_": (r(20, 9), torch.tensor([3, 5], device=dev), 0),
        "restore_channels_": (r(9, 20), torch.tensor([3, 5], device=dev), r(9, 2), 1),
        "batched_channel_mask": (r(3, 5, 7), (torch.rand(3, 7, generator=g) > 0.5).float().to(dev)),
        "token_nll": (r(20, 40), r(100, 40), torch.randint(0, 100, (20,), generator=g).to(dev)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", _registry.OPS)
def test_opcheck(backend, name):
    op = op_for(backend, name)
    args = _opcheck_cases(device_of(backend))[name]
    torch.library.opcheck(op.default, args)


# ---------------------------------------------------------------------------------------------------------------
# dispatch and fallback
# ---------------------------------------------------------------------------------------------------------------
def test_cpu_kernels_are_used_by_default():
    info = ops.backend_info()
    if not info["cpp"]:
        pytest.skip(f"no compiled CPU kernels here: {info['error']}")
    assert info["source"] in ("extension",) or info["source"].startswith("jit:")
    assert set(info["cpu_ops"]) == set(_registry.OPS)


def test_use_kernels_false_is_the_reference():
    e = torch.randn(5, 17)
    with ops.use_kernels(False):
        assert not ops.kernels_enabled()
        a = ops.noisy_embeds(e, 2.0, 9, 1, 2)
    assert ops.kernels_enabled()
    assert torch.equal(a, R.noisy_embeds_ref(e, 2.0, 9, 1, 2))


def test_no_extension_falls_back_with_one_warning():
    """With no compiled ops at all (no _C, no JIT) the package warns once and every op runs its reference."""
    code = r"""
import sys, warnings
sys.modules["achilles_fast._C"] = None  # as if the extension was never built
import torch, achilles_fast
import achilles_fast.ops as ops
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    e = torch.randn(4, 8)
    a = ops.noisy_embeds(e, 5.0, 1, 0, 3)
    acc = torch.zeros(4, 8); ops.absdiff_accum_(acc, e, a)
    ops.noisy_embeds(e, 5.0, 1, 0, 3)
msgs = [str(x.message) for x in w if "achilles_fast" in str(x.message)]
assert len(msgs) == 1 and "\n" not in msgs[0] and "reference" in msgs[0], msgs
assert not ops.backend_info()["cpp"]
from achilles_fast.ops import reference as R
assert torch.equal(a, R.noisy_embeds_ref(e, 5.0, 1, 0, 3))
sys.path.insert(0, TESTS)
from test_ops import _opcheck_cases  # the reference kernels behind every schema pass opcheck too
for name, args in _opcheck_cases(torch.device("cpu")).items():
    torch.library.opcheck(getattr(torch.ops.achilles_fast, name).default, args)
print("OK")
"""
    code = f"TESTS = {os.path.dirname(os.path.abspath(__file__))!r}\n" + code
    env = dict(os.environ, ACHILLES_FAST_JIT="0")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_stale_extension_detection(tmp_path):
    """An in-tree extension built from other C++ sources than the checkout's is recognised as stale."""
    from achilles_fast.ops import _loader, _srchash
    src = tmp_path / "csrc"
    (src / "cpu").mkdir(parents=True)
    (src / "common").mkdir()
    (src / "cpu" / "ops_cpu.cpp").write_text("int f() { return 1; }\n")
    (src / "common" / "philox.h").write_text("#pragma once\n")
    ext = tmp_path / "pkg" / "_C.cpython-311-x86_64-linux-gnu.so"
    ext.parent.mkdir()
    ext.write_bytes(b"")
    assert _loader.stale_extension(str(ext), src) is None  # no recorded hash: nothing to compare
    (ext.parent / _srchash.SIDECAR).write_text(_srchash.source_hash(src) + "\n")
    assert _loader.stale_extension(str(ext), src) is None  # built from these sources
    (src / "cpu" / "ops_cpu.cpp").write_text("int f() { return 2; }\n")  # edited after the build
    msg = _loader.stale_extension(str(ext), src)
    assert msg is not None and "build_ext --inplace" in msg
    (src / "cpu" / "ops_cpu.cpp").write_text("int f() { return 1; }\n")
    (src / "cuda").mkdir()
    (src / "cuda" / "ops_cuda.cu").write_text("// new file\n")  # a new build input also counts
    assert _loader.stale_extension(str(ext), src) is not None
    assert _loader.stale_extension(str(ext), tmp_path / "pkg") is None  # shipped copy (not csrc/): not checked
    assert _loader.stale_extension(None, src) is None


def test_stale_extension_is_not_loaded():
    """The loader skips a stale _C with one warning (here JIT off, so the reference ops take over) and never
    imports it (its kernels would be registered)."""
    code = r"""
import sys, warnings
import torch
import achilles_fast.ops as ops
from achilles_fast.ops import _loader
_loader.stale_extension = lambda origin, src: "_C.so was built from other sources (test)"
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    ops.noisy_embeds(torch.randn(3, 4), 5.0, 1, 0, 2)
msgs = [str(x.message) for x in w if "achilles_fast" in str(x.message)]
assert any("other sources" in m for m in msgs), msgs
assert "achilles_fast._C" not in sys.modules
assert not ops.backend_info()["cpp"]
print("OK")
"""
    env = dict(os.environ, ACHILLES_FAST_JIT="0")
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def _run_py(code, env, timeout=600, no_site=False, cwd=None):
    env = {**env}
    env.pop("TRITON_INTERPRET", None)
    args = [sys.executable] + (["-S"] if no_site else []) + ["-c", code]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_build_py_ships_cpu_sources(tmp_path):
    """setup.py's build_py copies csrc/{common,cpu} into the package (for the JIT of a plain `pip install .`)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, ACHILLES_FAST_BUILD_EXT="0"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "achilles_fast" / "_csrc" / "cpu" / "ops_cpu.cpp").exists()
    assert (tmp_path / "achilles_fast" / "_csrc" / "common" / "philox.h").exists()


@pytest.mark.slow
def test_jit_build_from_installed_package(tmp_path):
    """A package installed without the extension (plain `pip install .`) JIT-compiles the CPU kernels once."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = tmp_path / "lib"
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=root,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, ACHILLES_FAST_BUILD_EXT="0"))
    assert r.returncode == 0, r.stderr[-2000:]
    code = r"""
import sys, torch
import achilles_fast.ops as ops
assert ops.__file__.startswith(LIB), ops.__file__
info = ops.backend_info()
assert info["cpp"] and info["source"].startswith("jit:"), info
from achilles_fast.ops import reference as R
e = torch.randn(5, 40)
torch.testing.assert_close(ops.noisy_embeds(e, 5.0, 3, 1, 2), R.noisy_embeds_ref(e, 5.0, 3, 1, 2), rtol=0, atol=5e-5)
print("OK", info["source"])
"""
    code = f"LIB = {str(lib)!r}\n" + code
    import sysconfig
    # -S + explicit site-packages: the copy in `lib` is imported, not the editable checkout (its finder is a .pth)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), sysconfig.get_paths()["purelib"]]),
               ACHILLES_FAST_CACHE=str(tmp_path / "cache"), ACHILLES_FAST_JIT="auto")
    r = _run_py(code, env, no_site=True, cwd=str(tmp_path))
    assert r.returncode == 0 and "OK jit:" in r.stdout, (r.stdout + r.stderr)[-3000:]
    r2 = _run_py(code, env, no_site=True, cwd=str(tmp_path))  # second process: cached build, no recompilation
    assert r2.returncode == 0 and "OK jit:" in r2.stdout, (r2.stdout + r2.stderr)[-3000:]


@pytest.mark.triton
def test_triton_absdiff_k_split(monkeypatch):
    """The K-split path (partial sums over sample slices, used on GPUs for small planes) equals the reference."""
    op_for("triton", "absdiff_accum_")
    from achilles_fast.ops import triton_kernels
    dev = device_of("triton")
    g = torch.Generator().manual_seed(7)
    clean, noisy = torch.randn(7, 172, generator=g), torch.randn(11, 7, 172, generator=g)
    for splits in (2, 3, 11):
        monkeypatch.setattr(triton_kernels, "_ABSDIFF_SPLITS", splits)
        for shape in ((7, 172), (172,)):
            acc = torch.rand(shape, generator=g)
            want = R.absdiff_accum_ref(acc.clone(), clean, noisy)
            got = acc.clone().to(dev)
            torch.ops.achilles_fast.triton_absdiff_accum_(got, clean.to(dev), noisy.to(dev))
            torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.triton
def test_triton_token_nll_vocab_split(monkeypatch):
    """The vocabulary-split path (partial log-sum-exp per slice, used on GPUs for few tokens) equals the reference."""
    op_for("triton", "token_nll")
    from achilles_fast.ops import triton_kernels
    dev = device_of("triton")
    g = torch.Generator().manual_seed(8)
    h, w = torch.randn(9, 24, generator=g), torch.randn(301, 24, generator=g) / 5
    t = torch.randint(0, 301, (9,), generator=g)
    t[0], t[1] = -100, 300
    want = R.token_nll_ref(h, w, t)
    for splits in (2, 3, 10):
        monkeypatch.setattr(triton_kernels, "_NLL_SPLITS", splits)
        got = torch.ops.achilles_fast.triton_token_nll(h.to(dev), w.to(dev), t.to(dev)).cpu()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)
