"""taylor: |sum_t activation * gradient|, against autograd on the real outputs."""
from __future__ import annotations

import torch

from rankers_common import gradient_case, scores


def test_taylor_matches_autograd_reference():
    model, targets, ids, ref = gradient_case()
    t = scores("taylor", model, targets, ids)
    for i, tg in enumerate(targets):
        y, gr = ref[tg.name]
        assert torch.allclose(t[i], (y * gr).sum(0).abs(), rtol=1e-4, atol=1e-7)
        assert t[i].sum() > 0
