"""sensitivity: the Ranker ranks Stage 1's scores by config.ranking; its timing is Stage 1's."""
from __future__ import annotations

import pytest
import torch

from rankers_common import ids_of, tiny

from achilles_fast.method.config import FindConfig
from achilles_fast.method.rankers import make_ranker
from achilles_fast.method.ranking import RANKINGS, rank_channels
from achilles_fast.method.stage1 import sensitivity_scores
from achilles_fast.models.registry import discover_targets


@pytest.mark.parametrize("ranking", RANKINGS)
def test_sensitivity_ranker_ranks_stage1_scores(ranking):
    model, tok = tiny()
    ids = ids_of(tok, 24)
    targets = discover_targets(model, "all")
    r = make_ranker(FindConfig(k=4, ranking=ranking, max_neurons=60)).rank(model, targets, ids)
    with torch.no_grad():
        full = sensitivity_scores(model, targets, ids, k=4, per_position=True)  # [T, C] per target
    ref_ids, ref_vals = rank_channels(full, ranking, top=60)
    assert torch.equal(r.channels, ref_ids)
    assert torch.allclose(r.scores, ref_vals, rtol=1e-6)


def test_sensitivity_ranker_reports_stage1_stats():
    model, tok = tiny()
    ranker = make_ranker(FindConfig(k=5, max_batch_tokens=2 * 24))
    ranker.rank(model, discover_targets(model, "down_proj"), ids_of(tok, 24))
    assert ranker.timing_key == "stage1"
    assert ranker.stats["stage1_chunk"] == 2 and ranker.stats["stage1_forwards"] == 1 + 3  # clean + 3 chunks
