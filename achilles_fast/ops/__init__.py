"""Hot-path ops used by the driver, as ``torch.library`` custom ops ``achilles_fast::<name>``.

One module per op (schema, pure-PyTorch reference, fake, Triton kernel and launcher, public wrapper):
``noise.py`` (noisy_embeds), ``absdiff.py`` (absdiff_accum_), ``channel_mask.py`` (mask_channels_ /
restore_channels_), ``batched_mask.py`` (batched_channel_mask), ``nll.py`` (token_nll, and its Python variants
token_nll_lowp and token_nll_packed); ``_lib.py`` registers them and loads the compiled kernels. The PyTorch
dispatcher routes each call by device:
- CPU: the C++ kernels (``csrc/cpu``, vectorised + OpenMP) of the extension ``achilles_fast._C``;
- CUDA: its CUDA kernels (``csrc/cuda``) when built with CUDA, else the Triton kernels;
- no compiled kernel (``_C`` not built: one warning): the reference, the semantics every kernel must match.
``use_kernels(False)`` bypasses the ops and calls the references directly (tests compare both end to end).
"""
from ._lib import backend_info, kernels_enabled, use_kernels
# (in this order, the order of backend_info()'s op lists)
from .noise import noisy_embeds
from .absdiff import absdiff_accum_
from .channel_mask import mask_channels_, restore_channels_
from .batched_mask import batched_channel_mask
from .nll import PackedHead, mkl_packing_available, token_nll, token_nll_lowp, token_nll_packed

__all__ = ["noisy_embeds", "absdiff_accum_", "mask_channels_", "restore_channels_", "batched_channel_mask",
           "token_nll", "token_nll_lowp", "token_nll_packed", "PackedHead", "mkl_packing_available", "use_kernels",
           "kernels_enabled", "backend_info"]
