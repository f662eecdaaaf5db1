"""gradient: mean |d loss / d activation|, against autograd on the real outputs."""
from __future__ import annotations

import torch

from rankers_common import gradient_case, scores


def test_gradient_matches_autograd_reference():
    model, targets, ids, ref = gradient_case()
    g = scores("gradient", model, targets, ids)
    for i, tg in enumerate(targets):
        _, gr = ref[tg.name]
        assert torch.allclose(g[i], gr.abs().mean(0), rtol=1e-4, atol=1e-7)
        assert g[i].abs().sum() > 0
