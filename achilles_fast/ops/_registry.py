"""``torch.library`` definitions of the ``achilles_fast::`` ops.

Single source of truth for the schemas. Every op gets
- ``CompositeExplicitAutograd``: the pure-PyTorch reference (``reference.py``), i.e. the fallback for any device
  that has no compiled kernel;
- a fake (meta) implementation (``register_fake``) for torch.compile / FakeTensor / opcheck;
- backend kernels registered elsewhere: C++ CPU (``csrc/cpu``) and CUDA (``csrc/cuda``) through
  ``TORCH_LIBRARY_IMPL(achilles_fast, CPU|CUDA, m)`` when the extension loads, and the Triton kernels for the
  CUDA key when no compiled CUDA kernel exists (``_loader.py``).
A dispatcher backend kernel always wins over CompositeExplicitAutograd, so loading the extension is all it takes.

Each op also has a ``triton_<name>`` twin that always runs the Triton kernel (on CUDA, or on CPU tensors under
``TRITON_INTERPRET=1``): used by the tests and by ``ACHILLES_FAST_CUDA_BACKEND=triton``.
"""
from __future__ import annotations

import torch

from . import reference as ref

NAMESPACE = "achilles_fast"

SCHEMAS = {
    "noisy_embeds": "(Tensor embeds, float alpha, int seed, int k_start, int k_count) -> Tensor",
    "absdiff_accum_": "(Tensor(a!) acc, Tensor clean, Tensor noisy) -> ()",
    "mask_channels_": "(Tensor(a!) weight, Tensor channels, int dim) -> Tensor",
    "restore_channels_": "(Tensor(a!) weight, Tensor channels, Tensor saved, int dim) -> ()",
    "batched_channel_mask": "(Tensor out, Tensor keep) -> Tensor",
    "token_nll": "(Tensor hidden, Tensor lm_weight, Tensor targets) -> Tensor",
}
OPS = tuple(SCHEMAS)


# ---- references with the op signatures ------------------------------------------------------------------------
def _noisy_embeds(embeds, alpha, seed, k_start, k_count):
    return ref.noisy_embeds_ref(embeds, alpha, seed, k_start, k_count)


def _absdiff_accum_(acc, clean, noisy):
    ref.absdiff_accum_ref(acc, clean, noisy)


def _mask_channels_(weight, channels, dim):
    return ref.mask_rows_ref(weight, None, channels, dim)[0]


def _restore_channels_(weight, channels, saved, dim):
    ref.restore_rows_ref(weight, None, channels, saved, None, dim)


def _batched_channel_mask(out, keep):
    return ref.batched_channel_mask_ref(out, keep)


def _token_nll(hidden, lm_weight, targets):
    return ref.token_nll_ref(hidden, lm_weight, targets)


REFERENCE = {
    "noisy_embeds": _noisy_embeds,
    "absdiff_accum_": _absdiff_accum_,
    "mask_channels_": _mask_channels_,
    "restore_channels_": _restore_channels_,
    "batched_channel_mask": _batched_channel_mask,
    "token_nll": _token_nll,
}


# ---- fakes ------------------------------------------------------------------------------------------------------
def _fake_noisy_embeds(embeds, alpha, seed, k_start, k_count):
    torch._check(embeds.dim() == 2)
    return embeds.new_empty((k_count, embeds.shape[0], embeds.shape[1]))


def _fake_absdiff_accum_(acc, clean, noisy):
    return None


def _fake_mask_channels_(weight, channels, dim):
    shape = list(weight.shape)
    shape[dim] = channels.shape[0]
    return weight.new_empty(shape)


def _fake_restore_channels_(weight, channels, saved, dim):
    return None


def _fake_batched_channel_mask(out, keep):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def _fake_token_nll(hidden, lm_weight, targets):
    return hidden.new_empty((hidden.shape[0],), dtype=torch.float32)


FAKE = {
    "noisy_embeds": _fake_noisy_embeds,
    "absdiff_accum_": _fake_absdiff_accum_,
    "mask_channels_": _fake_mask_channels_,
    "restore_channels_": _fake_restore_channels_,
    "batched_channel_mask": _fake_batched_channel_mask,
    "token_nll": _fake_token_nll,
}


def _triton_impl(name):
    def impl(*args):
        from . import triton_kernels  # imported on first use (triton import is slow)
        return getattr(triton_kernels, name)(*args)

    impl.__name__ = f"triton_{name}"
    return impl


def _define() -> torch.library.Library:
    lib = torch.library.Library(NAMESPACE, "DEF")
    for name, sig in SCHEMAS.items():
        for op in (name, "triton_" + name):
            lib.define(op + sig)
            torch.library.register_fake(f"{NAMESPACE}::{op}", FAKE[name], lib=lib)
        lib.impl(name, REFERENCE[name], "CompositeExplicitAutograd")
        lib.impl("triton_" + name, _triton_impl(name), "CompositeExplicitAutograd")
    return lib


LIB = _define()
TRITON_CUDA_LIB: torch.library.Library | None = None  # holds the Triton CUDA registrations (see _loader.py)


def register_triton_for_cuda(names=OPS) -> list:
    """Register the Triton kernels as the CUDA kernels of the main ops (for those without a compiled one)."""
    global TRITON_CUDA_LIB
    done = []
    for name in names:
        if has_kernel(name, "CUDA"):
            continue
        if TRITON_CUDA_LIB is None:
            TRITON_CUDA_LIB = torch.library.Library(NAMESPACE, "IMPL")
        TRITON_CUDA_LIB.impl(name, _triton_impl(name), "CUDA")
        done.append(name)
    return done


def has_kernel(name: str, key: str) -> bool:
    """True when op ``achilles_fast::name`` has a kernel registered for dispatch key ``key`` (e.g. CPU, CUDA)."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{name}", key))
    except Exception:  # pragma: no cover - private API moved
        return False
