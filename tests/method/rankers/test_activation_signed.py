"""activation_signed: the paper's per-entry signed activation ranking, against its scripts' literal loop."""
from __future__ import annotations

import pytest

from rankers_common import ids_of, literal_signed_ranking, ranked, record, tiny

from achilles_fast.models.registry import discover_targets


@pytest.mark.parametrize("scope", ["down_proj", "paper"])
def test_activation_signed_equals_literal_per_entry_reference(scope):
    model, tok = tiny()
    ids = ids_of(tok, 24)
    targets = discover_targets(model, scope)
    outs = {n: y[0] for n, y in record(model, targets, ids, lambda a, o: o).items()}  # [T, C]
    got, sc = ranked(model, targets, ids, "activation_signed", top=400)
    ref = literal_signed_ranking(outs, targets, 1e-6, 400)
    assert [n.name for n in got] == ref
    assert sc == sorted(sc, reverse=True)
    for n, s in zip(got, sc):  # a channel's score is its largest signed entry, not its largest |entry|
        assert s == outs[n.module][:, n.channel].float().max().item()
    assert any(outs[n.module][:, n.channel].abs().max() > s for n, s in zip(got, sc))
