"""gradient_signed: the paper's per-entry signed gradient ranking, against its scripts' literal loop."""
from __future__ import annotations

from rankers_common import ids_of, literal_signed_ranking, ranked, reference_grads, tiny

from achilles_fast.models.registry import discover_targets


def test_gradient_signed_equals_literal_per_entry_reference():
    model, tok = tiny()
    ids = ids_of(tok, 24)
    targets = discover_targets(model, "down_proj")
    grads = {n: g for n, (_, g) in reference_grads(model, targets, ids).items()}  # [T, C]
    got, _ = ranked(model, targets, ids, "gradient_signed", top=300)
    ref = literal_signed_ranking(grads, targets, 1e-8, 300)
    assert [n.name for n in got] == ref
