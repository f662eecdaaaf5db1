"""Every Triton kernel compiles to a cubin for sm_90 and sm_80, without a GPU (Triton's AOT path + bundled ptxas).

The interpreter tests (TRITON_INTERPRET=1 pytest tests/ops -m triton) check what the kernels compute; this checks
that the GPU compiler accepts them (libdevice calls, dtypes, constexpr branches), so a kernel that would only break
on the device fails CI here. Runs in the default (non-interpreter) invocation; skipped under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.triton

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("AOT compile check runs without TRITON_INTERPRET (the kernels are interpreted functions here)",
                allow_module_level=True)

import triton  # noqa: E402

from achilles_fast.ops import absdiff, batched_mask, channel_mask, nll, noise  # noqa: E402

TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _cases(dt):
    """(kernel, signature, constexprs) for every kernel, with storage dtype dt."""
    return [
        (noise._noisy_embeds_kernel,
         dict(e_ptr=f"*{dt}", out_ptr=f"*{dt}", alpha="fp32", seed="i64", base="i64", TH="i32"),
         dict(BLOCK=1024, PRECISE=noise.PRECISE)),
        (absdiff._absdiff_kernel,
         dict(acc_ptr="*fp32", clean_ptr=f"*{dt}", noisy_ptr=f"*{dt}", K="i32", TC="i32", K_PER="i32"),
         dict(PARTIAL=True, BLOCK=512)),
        (absdiff._absdiff_kernel,
         dict(acc_ptr="*fp32", clean_ptr=f"*{dt}", noisy_ptr=f"*{dt}", K="i32", TC="i32", K_PER="i32"),
         dict(PARTIAL=False, BLOCK=512)),
        (channel_mask._gather_channels_kernel,
         dict(w_ptr=f"*{dt}", s_ptr=f"*{dt}", ch_ptr="*i64", N_OUT="i32", M="i32", NCH="i32", INNER="i32"),
         dict(ZERO=False, RESTORE=False, BLOCK=1024)),
        (channel_mask._gather_channels_kernel,
         dict(w_ptr=f"*{dt}", s_ptr=f"*{dt}", ch_ptr="*i64", N_OUT="i32", M="i32", NCH="i32", INNER="i32"),
         dict(ZERO=True, RESTORE=False, BLOCK=1024)),
        (channel_mask._gather_channels_kernel,
         dict(w_ptr=f"*{dt}", s_ptr=f"*{dt}", ch_ptr="*i64", N_OUT="i32", M="i32", NCH="i32", INNER="i32"),
         dict(ZERO=False, RESTORE=True, BLOCK=1024)),
        (batched_mask._batched_mask_kernel,
         dict(y_ptr=f"*{dt}", k_ptr="*fp32", out_ptr=f"*{dt}", N="i32", TC="i32", C="i32"),
         dict(BLOCK=1024)),
        (nll._token_nll_kernel,
         dict(h_ptr=f"*{dt}", w_ptr=f"*{dt}", t_ptr="*i64", m_ptr="*fp32", s_ptr="*fp32", tl_ptr="*fp32", N="i32",
              V="i32", H="i32", V_PER="i32", stride_h="i32", stride_w="i32"),
         dict(BLOCK_N=32, BLOCK_V=128, BLOCK_H=64)),
    ]


def _compile(fn, sig, consts, arch, **opts):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    signature = {**sig, **{k: "constexpr" for k in consts}}
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=dict(consts))
    except (TypeError, KeyError) as e:  # pragma: no cover - another Triton's AOT API
        pytest.skip(f"Triton {triton.__version__} AOT API differs: {e}")
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts or None)


@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
@pytest.mark.parametrize("dtype", list(TYPES), ids=list(TYPES))
def test_triton_kernels_compile_for_gpu(arch, dtype):
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception as e:  # pragma: no cover
        pytest.skip(f"no NVIDIA backend in this Triton: {e}")
    for fn, sig, consts in _cases(TYPES[dtype]):
        opts = {"enable_fp_fusion": False} if fn is noise._noisy_embeds_kernel else {}
        k = _compile(fn, sig, consts, arch, **opts)
        assert k.asm.get("cubin"), f"{fn.__name__}: no cubin for sm_{arch}"
        if fn is noise._noisy_embeds_kernel and noise.PRECISE:
            ptx = k.asm["ptx"]
            assert "cos.approx" not in ptx and "lg2.approx" not in ptx, "noise must use precise log/cos"
