"""Export a masked model: a complete Hugging Face checkpoint (safetensors, config, tokenizer) whose weights have
the neurons' output channels zeroed, loadable by plain ``AutoModelForCausalLM.from_pretrained(dir)``.

The channels are zeroed in place exactly as ``masked`` does (``WeightMask``: Linear rows, Conv1D columns, a fused
expert's slice) while ``save_pretrained`` writes them, then restored bit-exact. Targets masked by a hook have no
weight to zero, except where the family names a weight value that zeroes the output (``Target.export_fill``:
w[c] = -1 in Gemma's RMSNorm x * (1 + w)); the others, and offloaded weights, are refused before anything is written.
The folder is written beside ``out_dir`` and renamed into place: never half-written.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, List, Optional

import torch
from torch import nn

from ..models.devices import offloaded
from ..models.loading import loaded_inputs, make_portable, model_source
from ..models.registry import maskable_targets
from ..utils import check_not_input, check_writable, replace_dir, temp_dir_beside, write_json
from .masking import WeightMask
from .ranking import Ranking
from .result import versions

SIDECAR = "achilles_fast_mask.json"  # what was masked, and the source model, beside the weights


class OutputExistsError(FileExistsError, ValueError):
    """The export folder exists and is not empty (pass overwrite=True / --overwrite)."""


def check_out_dir(out_dir, overwrite: bool = False) -> Path:
    """Refuse a file, or a non-empty folder unless ``overwrite``: checked before any long work."""
    out = Path(out_dir).expanduser()
    check_writable(out, folder=True, error=OutputExistsError)  # a file there, no permission: before any work
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} is not empty: pass --overwrite (overwrite=True) to replace it")
    return out


def _channels(ranking: Ranking):
    """(target, channels [m]) of every target holding a masked channel."""
    for t, rank in zip(ranking.targets, ranking.rank_tensors()):
        channels = (rank < len(ranking)).nonzero().flatten()
        if channels.numel():
            yield t, channels


def _check_exportable(ranking: Ranking) -> None:
    for t, _ in _channels(ranking):
        params = t.mask_params()
        weight = params[0] if params is not None else getattr(t.module, "weight", None)
        if params is None and (t.export_fill is None or not isinstance(weight, torch.Tensor)):
            raise ValueError(f"cannot export {t.name}: its channels are masked by a forward hook ({t.layout} layout), "
                             "and no weight value zeroes them; a saved checkpoint cannot carry this mask")
        if offloaded(t.module, weight):
            raise ValueError(f"cannot export {t.name}: its weights are offloaded (device_map cpu/disk); load the "
                             "model without --device-map / device_map to save a masked checkpoint")


@contextlib.contextmanager
def weights_masked(ranking: Ranking):
    """Zero the ranking's channels in the weights themselves (hook-layout targets through ``export_fill``) inside
    the block; every weight is restored bit-exact on exit, whatever happens."""
    _check_exportable(ranking)
    filled: List[tuple] = []  # (weight, channels, originals)
    with WeightMask(ranking) as wm:
        try:
            wm.apply()
            for t, channels in _channels(ranking):
                if t.mask_params() is None:
                    w = t.module.weight
                    idx = channels.to(w.device)
                    with torch.no_grad():
                        filled.append((w, idx, w.data.index_select(0, idx).clone()))
                        w.data.index_fill_(0, idx, t.export_fill)
            yield
        finally:
            with torch.no_grad():
                while filled:
                    w, idx, saved = filled.pop()
                    w.data.index_copy_(0, idx, saved)


def _guard_source(model: nn.Module, out: Path) -> None:
    """Never write into what the model was loaded from (its folder, a folder holding it, its conversion cache)."""
    check_not_input(out, loaded_inputs(model), error=OutputExistsError)


def save_masked(model: nn.Module, tokenizer, neurons: Iterable, out_dir, *, overwrite: bool = False,
                discover: bool = False, max_shard_size: Optional[str] = None) -> Path:
    """Save ``model`` with ``neurons`` (names like ``model.layers.2.mlp.down_proj:62``, Neurons, or a
    CriticalResult's ``names``) zeroed in the weights as a complete HF checkpoint in ``out_dir``; returns its path.

    ``AutoModelForCausalLM.from_pretrained(out_dir)`` then gives the masked model (same log10 PPL ratio as
    ``masked`` / ``achilles-fast mask``). The model's own weights are unchanged afterwards (bit-exact). Refused
    before anything is written: a non-empty ``out_dir`` without ``overwrite`` (OutputExistsError), unknown neurons
    (KeyError), hook-masked targets without a weight equivalent or offloaded weights (ValueError).
    """
    out = check_out_dir(out_dir, overwrite)
    _guard_source(model, out)
    if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError("save_masked needs the model's Hugging Face tokenizer (it is saved beside the weights)")
    ranking = Ranking.from_neurons(maskable_targets(model, allow_discovery=discover), neurons)
    if len(ranking) == 0:
        raise ValueError("no neurons to mask: the export would be the unmodified model")
    _check_exportable(ranking)
    with temp_dir_beside(out) as tmp:  # leftovers of interrupted saves removed first; ours on errors and signals
        kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        with weights_masked(ranking):
            model.save_pretrained(str(tmp), **kw)
        tokenizer.save_pretrained(str(tmp))
        make_portable(tmp)
        meta = {"masked_neurons": [n.name for n in ranking.neurons()], "n_masked": len(ranking),
                "how": "output channels zeroed in the weights by achilles_fast.save_masked",
                "source": model_source(model), "versions": versions()}
        write_json(meta, tmp / SIDECAR)
        replace_dir(tmp, out)
    return out
