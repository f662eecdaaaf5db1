"""Independent plain-PyTorch references for the compression tests: RTN and pruning by per-row / per-group loops and
Python sorts, input-activation norms by plain pre-hooks, int8 quantisation and bit flips by uint8 xor on deep
copies. Shared by tests/studies/compression and tests/studies/study."""
from __future__ import annotations

import torch
from torch import nn

from conftest import tiny_model

from achilles_fast.method.text import DEFAULT_TEXT


# ---- independent references -------------------------------------------------------------------------------------
def block_linears(model):
    """(parameter name, module, output dim) of every nn.Linear / Conv1D inside the decoder blocks, by name."""
    out = []
    for name, m in model.named_modules():
        parts = name.split(".")
        if not any(p in ("layers", "h") and i + 1 < len(parts) and parts[i + 1].isdigit()
                   for i, p in enumerate(parts)):
            continue
        if isinstance(m, nn.Linear):
            out.append((name + ".weight", m, 0))
        elif type(m).__name__ == "Conv1D":
            out.append((name + ".weight", m, 1))
    return out


def ref_rtn(w, bits, group, dim, keep=None):
    """Per output channel, per group of inputs: scale = max |w| over the unprotected / qmax, round, clamp."""
    x = w.detach().float().clone()
    k = torch.zeros_like(x, dtype=torch.bool) if keep is None else keep.clone()
    if dim == 1:
        x, k = x.t().contiguous(), k.t().contiguous()
    q = 2 ** (bits - 1) - 1
    out = x.clone()
    C, I = x.shape
    g = group or I
    for c in range(C):
        for s in range(0, I, g):
            seg, ks = x[c, s:s + g], k[c, s:s + g]
            m = seg[~ks].abs().max() if bool((~ks).any()) else torch.tensor(0.0)
            scale = m / q if m > 0 else torch.tensor(1.0)
            out[c, s:s + g] = torch.where(ks, seg, torch.clamp(torch.round(seg / scale), -q, q) * scale)
    out = out.t() if dim == 1 else out
    return out.to(w.dtype)


def ref_prune(w, sparsity, method, dim, norm=None, keep=None):
    """True on the pruned values: the int(sparsity * n) smallest unprotected scores of each group (magnitude: the
    tensor, Wanda: each output channel, score |w| * norm), ties by flat index, by a Python sort."""
    x = w.detach().float().abs()
    k = torch.zeros_like(x, dtype=torch.bool) if keep is None else keep
    if dim == 1:
        x, k = x.t(), k.t()
    if method == "wanda":
        x = x * norm[None, :]
    groups = [(x.flatten(), k.flatten())] if method == "magnitude" else list(zip(x, k))
    rows = []
    for score, prot in groups:
        n = score.numel()
        cand = sorted((float(score[i]), i) for i in range(n) if not bool(prot[i]))
        pr = torch.zeros(n, dtype=torch.bool)
        for _, i in cand[:int(sparsity * n)]:
            pr[i] = True
        rows.append(pr)
    out = rows[0].view(x.shape) if method == "magnitude" else torch.stack(rows)
    return out.t() if dim == 1 else out


def ref_norms(model, ids):
    """{weight name: L2 norm of each input feature over the tokens}, by plain pre-hooks."""
    got, hs = {}, []
    for name, m, _ in block_linears(model):
        hs.append(m.register_forward_pre_hook(
            lambda mod, a, name=name: got.__setitem__(name, torch.linalg.vector_norm(
                a[0].reshape(-1, a[0].shape[-1]).double(), dim=0).float())))
    with torch.no_grad():
        model(input_ids=ids[None], use_cache=False)
    for h in hs:
        h.remove()
    return got


def keep_masks(model, names):
    """{weight name: bool} True on the rows of MLP down-projection neurons (Linear rows / Conv1D columns)."""
    mods = dict(model.named_modules())
    out = {}
    for n in names:
        mod, c = n.rsplit(":", 1)
        w = mods[mod].weight
        m = out.setdefault(mod + ".weight", torch.zeros(w.shape, dtype=torch.bool))
        if type(mods[mod]).__name__ == "Conv1D":
            m[:, int(c)] = True
        else:
            m[int(c)] = True
    return out


def ref_int8(model):
    """Quantise every block Linear of ``model`` (a deep copy) to int8 in place -> {name: (codes, scales [C])}."""
    st = {}
    for name, m, dim in block_linears(model):
        x = m.weight.detach().float()
        x = x.t() if dim == 1 else x
        scale = x.abs().amax(1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.clamp(torch.round(x / scale[:, None]), -127, 127).to(torch.int8)
        deq = codes.float() * scale[:, None]
        with torch.no_grad():
            m.weight.copy_(deq.t() if dim == 1 else deq)
        st[name] = (codes.t() if dim == 1 else codes, scale)
    return st


def ref_flip(model, st, name, index, bit):
    """Flip one bit of one code (uint8 xor) in the deep copy; -> (before, after)."""
    codes, scale = st[name]
    mods = dict(model.named_modules())
    m = mods[name[:-len(".weight")]]
    dim = 1 if type(m).__name__ == "Conv1D" else 0
    before = int(codes[tuple(index)])
    after = int(torch.tensor([before], dtype=torch.int8).view(torch.uint8).bitwise_xor(1 << bit).view(torch.int8))
    codes[tuple(index)] = after
    with torch.no_grad():
        m.weight[tuple(index)] = float(after) * scale[index[dim]]
    return before, after


def stories_ids(tok, n=64):
    return tok(DEFAULT_TEXT, return_tensors="pt")["input_ids"][0][:n]


def model_ids(family, request):
    """(model, ids [T]): stories260K (the shared fixture) or a tiny random model of ``family``."""
    if family == "stories":
        model, tok = request.getfixturevalue("stories")
        return model, stories_ids(tok)
    return tiny_model(family), torch.arange(3, 40)
